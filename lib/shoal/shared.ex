defmodule Shoal.Shared do
  @moduledoc """
  A GenServer-shaped module served by several processes that take requests from one
  queue, with back-pressure and (by default) one state shared atomically by all of them:
  the Elixir face of `:shoal_shared` (see its docs and `docs/tools.md`), in place of
  `use GenPool, pool_size: ..., shared_state?: ...`.

      defmodule MyApp.Stock do
        use Shoal.Shared, name: :stock, size: 4, shared_state: true, max: 1_000

        @impl true
        def init(stock), do: {:ok, stock}

        @impl true
        def handle_call({:take, item}, _from, stock) do
          case Map.get(stock, item, 0) do
            0 -> {:reply, :sold_out, stock}
            n -> {:reply, :ok, Map.put(stock, item, n - 1)}
          end
        end

        @impl true
        def handle_cast({:restock, item, n}, stock),
          do: {:noreply, Map.update(stock, item, n, &(&1 + n))}
      end

      children = [{MyApp.Stock, args: %{apple: 100}}]
      :ok = MyApp.Stock.call({:take, :apple})

  Every callback runs atomically against the latest committed state; one that changes the
  state may run twice (see `:shoal_shared`), so keep side effects out of those.

  `use Shoal.Shared` sets `@behaviour :shoal_shared` (`init/1` is required) and defines
  overridable defaults in the spirit of `use GenServer`'s: an unexpected call or cast is
  logged and stops the worker that got it with `{:bad_call, msg}` / `{:bad_cast, msg}` (it is
  restarted; a caller exits with that reason), an unexpected message is logged and dropped,
  and `terminate/2` does nothing. It defines `start_link(opts \\\\ [])`, `child_spec(opts)`,
  `call(request, timeout \\\\ 5000)`, `cast(request)`, `get_state()`, `workers()`,
  `stats()` and `stop()` on the pool named by `:name` (default: the module's name).

  Options of `use`: `:name`, `:args` (given to `init/1`), and the pool options of
  `:shoal_shared.start_link/4`: `:size`, `:shared_state`, `:queue` (`:fifo` or `:filo`),
  `:queue_timeout`, `:max`; evaluated when the pool starts.
  """

  @typedoc "A pool's registered name."
  @type name :: atom()

  @doc false
  defmacro __using__(opts) do
    name = Shoal.Face.name_ast(opts)

    quote location: :keep do
      @behaviour :shoal_shared

      @doc false
      def __shoal_options__, do: Keyword.merge(unquote(opts), module: __MODULE__)

      @doc "The name of the pool this module's functions address."
      @spec pool_name() :: atom()
      def pool_name, do: unquote(name)

      @doc "The child spec of this pool: the options given to `use`, `opts` over them."
      @spec child_spec(keyword()) :: Supervisor.child_spec()
      def child_spec(opts \\ []), do: Shoal.Shared.child_spec(__shoal_opts__(opts))

      @doc "Starts this pool and links it to the caller."
      @spec start_link(keyword()) :: {:ok, pid()} | {:error, term()}
      def start_link(opts \\ []), do: Shoal.Shared.start_link(__shoal_opts__(opts))

      @doc "Runs `handle_call(request, from, state)` on a worker and returns its reply."
      @spec call(term(), timeout()) :: term()
      def call(request, timeout \\ 5000), do: Shoal.Shared.call(pool_name(), request, timeout)

      @doc "Queues `handle_cast(request, state)` for a worker."
      @spec cast(term()) :: :ok | {:error, term()}
      def cast(request), do: Shoal.Shared.cast(pool_name(), request)

      @doc "The committed state (with `shared_state: false`, the list of the workers' states)."
      @spec get_state() :: term()
      def get_state, do: Shoal.Shared.get_state(pool_name())

      @doc "The pool's worker pids, in worker order."
      @spec workers() :: [pid()] | {:error, term()}
      def workers, do: Shoal.Shared.workers(pool_name())

      @doc "The pool's counters (see `Shoal.Shared.stats/1`)."
      @spec stats() :: map() | {:error, term()}
      def stats, do: Shoal.Shared.stats(pool_name())

      @doc "Stops the pool."
      @spec stop() :: :ok | {:error, term()}
      def stop, do: Shoal.Shared.stop(pool_name())

      @doc false
      def handle_call(msg, _from, state) do
        Shoal.Worker.__unexpected__(__MODULE__, :handle_call, msg)
        {:stop, {:bad_call, msg}, state}
      end

      @doc false
      def handle_cast(msg, state) do
        Shoal.Worker.__unexpected__(__MODULE__, :handle_cast, msg)
        {:stop, {:bad_cast, msg}, state}
      end

      @doc false
      def handle_info(msg, state) do
        Shoal.Worker.__unexpected__(__MODULE__, :handle_info, msg)
        {:noreply, state}
      end

      @doc false
      def terminate(_reason, _state), do: :ok

      defoverridable handle_call: 3, handle_cast: 2, handle_info: 2, terminate: 2

      defp __shoal_opts__(opts), do: Shoal.Face.merge(__shoal_options__(), pool_name(), opts)
    end
  end

  @doc """
  The child spec of a pool: `{Shoal.Shared, name: ..., module: ..., args: ..., size: ...}`
  (`:module` the callback module; `:args` given to its `init/1`; the rest pool options).
  """
  @spec child_spec(keyword()) :: Supervisor.child_spec()
  def child_spec(opts) do
    {name, module, args, pool_opts} = split(opts)
    :shoal_shared.child_spec(name, module, args, pool_opts)
  end

  @doc "Starts a pool from the options of `child_spec/1`; `{:error, reason}` for bad ones."
  @spec start_link(keyword()) :: {:ok, pid()} | {:error, term()}
  def start_link(opts) do
    {name, module, args, pool_opts} = split(opts)
    :shoal_shared.start_link(name, module, args, pool_opts)
  end

  defp split(opts) do
    {name, opts} = Keyword.pop(opts, :name)
    {module, opts} = Keyword.pop(opts, :module)
    {args, opts} = Keyword.pop(opts, :args)
    {name, module, args, opts}
  end

  @doc """
  Runs `handle_call(request, from, state)` on a worker of pool `name`: its reply,
  `{:error, :too_many_requests}` when the queue is full, `{:error, :queue_timeout}` when no
  worker took it within `:queue_timeout`.
  """
  @spec call(name, term(), timeout()) :: term()
  def call(name, request, timeout \\ 5000), do: :shoal_shared.call(name, request, timeout)

  @doc "Queues `handle_cast(request, state)` for a worker of pool `name`."
  @spec cast(name, term()) :: :ok | {:error, term()}
  def cast(name, request), do: :shoal_shared.cast(name, request)

  @doc "Answers a call whose callback returned `{:noreply, state}` (as `GenServer.reply/2`)."
  @spec reply(GenServer.from(), term()) :: :ok
  def reply(from, reply), do: :shoal_shared.reply(from, reply)

  @doc "The committed state of pool `name` (with `shared_state: false`, the workers' states)."
  @spec get_state(name) :: term()
  def get_state(name), do: :shoal_shared.get_state(name)

  @doc "The worker pids of pool `name`, in worker order."
  @spec workers(name) :: [pid()] | {:error, term()}
  def workers(name), do: :shoal_shared.workers(name)

  @doc """
  Counters of pool `name`: `:calls`, `:casts`, `:rejected`, `:expired`, `:reruns`,
  `:crashes`, `:queued`, `:idle`.
  """
  @spec stats(name) :: map() | {:error, term()}
  def stats(name), do: :shoal_shared.stats(name)

  @doc "Stops pool `name` (with shared state, `terminate/2` runs once)."
  @spec stop(name) :: :ok | {:error, term()}
  def stop(name), do: :shoal_shared.stop(name)
end
