defmodule Shoal.Batcher do
  @moduledoc """
  Items pushed one by one, cut into batches (at `:limit` items, `:timeout` ms after a
  batch's first item, or on `flush/1`) and handled one batch at a time, in order: the
  Elixir face of `:shoal_batcher` (see its docs and `docs/tools.md`), in place of
  `use Poolder.Batcher`.

      defmodule MyApp.EventSink do
        use Shoal.Batcher, name: :events, limit: 500, timeout: 1_000, retry: [count: 3]

        @impl true
        def init(repo), do: {:ok, repo}

        @impl true
        def handle_batch(events, repo) do
          repo.insert_all(events)
          {:ok, repo}
        end
      end

      children = [{MyApp.EventSink, args: MyApp.Repo}]
      :ok = MyApp.EventSink.push(%{type: :click})

  `use Shoal.Batcher` makes the module the batcher's `:handler` (`@behaviour
  :shoal_batcher`: `init/1` and `handle_batch/2` are required; an overridable default
  `handle_error/4` retries after the configured backoff, as when there is none) and defines
  `start_link(opts \\\\ [])`, `child_spec(opts)`, `push(item)`, `flush(timeout \\\\ 5000)`,
  `stats()` and `stop()` on the batcher named by `:name` (default: the module's name).

  Options of `use` (see `:shoal_batcher.start_link/2`): `:name`, `:args` (given to
  `init/1`), `:limit`, `:timeout`, `:order` (`:fifo` or `:lifo`), `:retry`,
  `:hibernate_after`, `:max_pending`; evaluated when the batcher starts.
  """

  @typedoc "A batcher's registered name."
  @type name :: atom()

  @doc false
  defmacro __using__(opts) do
    name = Shoal.Face.name_ast(opts)

    quote location: :keep do
      @behaviour :shoal_batcher

      @doc false
      def __shoal_options__, do: Keyword.merge(unquote(opts), handler: __MODULE__)

      @doc "The name of the batcher this module's functions address."
      @spec batcher_name() :: atom()
      def batcher_name, do: unquote(name)

      @doc "The child spec of this batcher: the options given to `use`, `opts` over them."
      @spec child_spec(keyword()) :: Supervisor.child_spec()
      def child_spec(opts \\ []), do: Shoal.Batcher.child_spec(__shoal_opts__(opts))

      @doc "Starts this batcher and links it to the caller."
      @spec start_link(keyword()) :: {:ok, pid()} | {:error, term()}
      def start_link(opts \\ []), do: Shoal.Batcher.start_link(__shoal_opts__(opts))

      @doc "Adds `item` to the current batch (`{:error, :overloaded}` past `:max_pending`)."
      @spec push(term()) :: :ok | {:error, term()}
      def push(item), do: Shoal.Batcher.push(batcher_name(), item)

      @doc "Cuts the current batch and returns once every batch cut so far is handled."
      @spec flush(timeout()) :: :ok | {:error, term()}
      def flush(timeout \\ 5000), do: Shoal.Batcher.flush(batcher_name(), timeout)

      @doc "The batcher's counters (see `Shoal.Batcher.stats/1`)."
      @spec stats() :: map() | {:error, term()}
      def stats, do: Shoal.Batcher.stats(batcher_name())

      @doc "Flushes, then stops the batcher."
      @spec stop() :: :ok | {:error, term()}
      def stop, do: Shoal.Batcher.stop(batcher_name())

      @doc false
      def handle_error(_batch, _attempt, _error, _state), do: :configured_backoff

      defoverridable handle_error: 4

      defp __shoal_opts__(opts), do: Shoal.Face.merge(__shoal_options__(), batcher_name(), opts)
    end
  end

  @doc "The child spec of a batcher: `{Shoal.Batcher, name: ..., handler: ...}`."
  @spec child_spec(keyword() | map()) :: Supervisor.child_spec()
  def child_spec(opts), do: :shoal_batcher.child_spec(opts)

  @doc "Starts a batcher from options with a `:name`; `{:error, reason}` for bad options."
  @spec start_link(keyword() | map()) :: {:ok, pid()} | {:error, term()}
  def start_link(opts) do
    {name, rest} = :shoal_tools_opts.split_name(opts)
    :shoal_batcher.start_link(name, rest)
  end

  @doc "Adds `item` to the current batch of batcher `name`."
  @spec push(name, term()) :: :ok | {:error, term()}
  def push(name, item), do: :shoal_batcher.push(name, item)

  @doc "Cuts the current batch of `name` and returns once every batch cut so far is handled."
  @spec flush(name, timeout()) :: :ok | {:error, term()}
  def flush(name, timeout \\ 5000), do: :shoal_batcher.flush(name, timeout)

  @doc """
  Counters of batcher `name`: `:buffered`, `:pending`, `:batches`, `:handled`, `:failed`,
  `:retries`.
  """
  @spec stats(name) :: map() | {:error, term()}
  def stats(name), do: :shoal_batcher.stats(name)

  @doc "Flushes batcher `name`, then stops it."
  @spec stop(name) :: :ok | {:error, term()}
  def stop(name), do: :shoal_batcher.stop(name)
end
