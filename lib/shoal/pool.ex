defmodule Shoal.Pool do
  @moduledoc """
  A Shoal pool as a child of your own supervisor.

      children = [
        {Shoal.Pool, name: :sessions, worker: MyApp.Session, idle_timeout: :timer.minutes(10)}
      ]

      Supervisor.start_link(children, strategy: :one_for_one)

  `:name` is the pool's name (an atom); every other option is a pool option of
  `Shoal.start_pool/2`. The child's id is `{Shoal.Pool, name}`, so one supervisor can hold
  several pools. Starting the same pool on connected nodes forms one cluster-wide pool.
  """

  @doc """
  The child spec for `{Shoal.Pool, opts}`: a supervisor child (the pool's own supervisor)
  with `shutdown: :infinity`, so every worker gets to run its `terminate/2`.
  """
  @spec child_spec(keyword | map) :: Supervisor.child_spec()
  def child_spec(opts) do
    {pool, pool_opts} = split(opts)
    :shoal_pool.child_spec(pool, pool_opts)
  end

  @doc "Starts the pool and links it to the caller; `{:error, reason}` for bad options."
  @spec start_link(keyword | map) :: {:ok, pid} | {:error, term}
  def start_link(opts) do
    {pool, pool_opts} = split(opts)
    :shoal_pool.start_link(pool, pool_opts)
  end

  defp split(opts) do
    opts = Shoal.options(opts)

    case opts do
      %{name: pool} when is_atom(pool) -> {pool, Map.delete(opts, :name)}
      _ -> raise ArgumentError, "Shoal.Pool expects name: an atom, got: #{inspect(opts)}"
    end
  end
end
