defmodule ShoalElixirTest.FaceWorker do
  @moduledoc """
  A worker written with `use Shoal.Worker`: it handles `:get`, `{:add, n}` calls and
  `{:add, n}` casts, and leaves everything else to the defaults `use Shoal.Worker` gives.
  """
  use Shoal.Worker

  @impl true
  def init(key, _args), do: {:ok, %{key: key, n: 0}}

  @impl true
  def handle_call(:get, _from, s), do: {:reply, s.n, s}
  def handle_call(:key, _from, s), do: {:reply, s.key, s}
  def handle_call({:add, n}, _from, s), do: {:reply, s.n + n, %{s | n: s.n + n}}

  @impl true
  def handle_cast({:add, n}, s), do: {:noreply, %{s | n: s.n + n}}
end

defmodule ShoalElixirTest.MinimalWorker do
  @moduledoc "A worker with `init/2` only: every message goes to `use Shoal.Worker`'s defaults."
  use Shoal.Worker

  @impl true
  def init(key, _args), do: {:ok, key}
end
