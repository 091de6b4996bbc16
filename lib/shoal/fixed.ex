defmodule Shoal.Fixed do
  @moduledoc """
  A fixed pool of N long-lived workers with dispatch modes (`:round_robin`, `:random`,
  `:monotonic`, `:hash`, `:broadcast`), retries and backoff: the Elixir face of
  `:shoal_fixed` (see its docs and `docs/tools.md`), in place of `use Poolder.Worker` or
  poolboy.

      defmodule MyApp.Thumbs do
        use Shoal.Fixed, name: :thumbs, size: 4, mode: :round_robin, retry: [count: 2]

        @impl true
        def init(index, _args), do: {:ok, %{index: index}}

        @impl true
        def handle_job({:resize, w, h}, state), do: {:reply, {div(w, 2), div(h, 2)}, state}
      end

      children = [MyApp.Thumbs]                      # or {MyApp.Thumbs, size: 8}
      {320, 240} = MyApp.Thumbs.call({:resize, 640, 480})
      :ok = MyApp.Thumbs.cast({:resize, 10, 10})

  `use Shoal.Fixed` sets `@behaviour :shoal_fixed` (`init/2` and `handle_job/2` are
  required; `@impl` is checked against its callbacks), defines overridable defaults for the
  optional `handle_error/4` (retry after the configured backoff, as when it is absent) and
  `pool_ready/1` (does nothing), and defines in the module:

    * `start_link(opts \\\\ [])` and `child_spec(opts)`: the options given to `use`, with
      `opts` over them (`:worker` is the module itself);
    * `call(job, timeout \\\\ 5000)`, `cast(job)`, `call_key(key, job, timeout \\\\ 5000)`,
      `cast_key(key, job)`, `cast_to(index, job)`, `pid(index)`, `size()`, `stats()`,
      `stop()`, on the pool named by `:name` (default: the module's name).

  Options of `use` (a keyword list; see `:shoal_fixed.start_link/2`): `:name`, `:size`,
  `:mode`, `:args`, `:retry` (`[count: c, backoff: ms]`), `:callbacks`. They are evaluated
  when the pool starts, so they may hold anonymous functions or runtime values. A pool
  started with another `:name` (say, a second instance of the same module) is reached with
  the functions of this module, which take the pool's name first.
  """

  @typedoc "A pool's registered name."
  @type name :: atom()

  @default_timeout 5000

  @doc false
  defmacro __using__(opts) do
    name = Shoal.Face.name_ast(opts)

    quote location: :keep do
      @behaviour :shoal_fixed

      @doc false
      def __shoal_options__, do: Keyword.merge(unquote(opts), worker: __MODULE__)

      @doc "The name of the pool this module's functions address."
      @spec pool_name() :: atom()
      def pool_name, do: unquote(name)

      @doc "The child spec for this pool: the options given to `use`, with `opts` over them."
      @spec child_spec(keyword()) :: Supervisor.child_spec()
      def child_spec(opts \\ []), do: Shoal.Fixed.child_spec(__shoal_opts__(opts))

      @doc "Starts this pool and links it to the caller (see `Shoal.Fixed.start_link/1`)."
      @spec start_link(keyword()) :: {:ok, pid()} | {:error, term()}
      def start_link(opts \\ []), do: Shoal.Fixed.start_link(__shoal_opts__(opts))

      @doc "Runs `job` on a worker chosen by the pool's mode and returns its reply."
      @spec call(term(), timeout()) :: term()
      def call(job, timeout \\ unquote(@default_timeout)),
        do: Shoal.Fixed.call(pool_name(), job, timeout)

      @doc "Queues `job` on a worker chosen by the pool's mode (every worker in `:broadcast`)."
      @spec cast(term()) :: :ok | {:error, term()}
      def cast(job), do: Shoal.Fixed.cast(pool_name(), job)

      @doc "Runs `job` on the worker `key` maps to, whatever the mode."
      @spec call_key(term(), term(), timeout()) :: term()
      def call_key(key, job, timeout \\ unquote(@default_timeout)),
        do: Shoal.Fixed.call_key(pool_name(), key, job, timeout)

      @doc "Queues `job` on the worker `key` maps to."
      @spec cast_key(term(), term()) :: :ok | {:error, term()}
      def cast_key(key, job), do: Shoal.Fixed.cast_key(pool_name(), key, job)

      @doc "Queues `job` on worker `index` (0-based)."
      @spec cast_to(non_neg_integer(), term()) :: :ok | {:error, term()}
      def cast_to(index, job), do: Shoal.Fixed.cast_to(pool_name(), index, job)

      @doc "The pid of worker `index`, or `nil` while it restarts."
      @spec pid(non_neg_integer()) :: pid() | nil | {:error, term()}
      def pid(index), do: Shoal.Fixed.pid(pool_name(), index)

      @doc "The pool's configured size."
      @spec size() :: pos_integer() | {:error, term()}
      def size, do: Shoal.Fixed.size(pool_name())

      @doc "The pool's counters (see `Shoal.Fixed.stats/1`)."
      @spec stats() :: map() | {:error, term()}
      def stats, do: Shoal.Fixed.stats(pool_name())

      @doc "Stops the pool and its workers."
      @spec stop() :: :ok | {:error, term()}
      def stop, do: Shoal.Fixed.stop(pool_name())

      @doc false
      def handle_error(_job, _attempt, _error, _state), do: :configured_backoff

      @doc false
      def pool_ready(_sup), do: :ok

      defoverridable handle_error: 4, pool_ready: 1

      defp __shoal_opts__(opts), do: Shoal.Face.merge(__shoal_options__(), pool_name(), opts)
    end
  end

  @doc """
  The child spec of a pool: `{Shoal.Fixed, name: ..., worker: ..., size: ...}` in a
  supervisor's children (a `:transient` supervisor child: a pool that stops for good is not
  restarted).
  """
  @spec child_spec(keyword() | map()) :: Supervisor.child_spec()
  def child_spec(opts), do: :shoal_fixed.child_spec(opts)

  @doc """
  Starts a pool from options with a `:name` (see `:shoal_fixed.start_link/2` for the
  others); `{:error, reason}` for bad options.
  """
  @spec start_link(keyword() | map()) :: {:ok, pid()} | {:error, term()}
  def start_link(opts) do
    {name, rest} = :shoal_tools_opts.split_name(opts)
    :shoal_fixed.start_link(name, rest)
  end

  @doc "Runs `job` on a worker of pool `name` chosen by its mode and returns the reply."
  @spec call(name, term(), timeout()) :: term()
  def call(name, job, timeout \\ @default_timeout), do: :shoal_fixed.call(name, job, timeout)

  @doc "Queues `job` on a worker of pool `name` chosen by its mode."
  @spec cast(name, term()) :: :ok | {:error, term()}
  def cast(name, job), do: :shoal_fixed.cast(name, job)

  @doc "Runs `job` on the worker of pool `name` that `key` maps to."
  @spec call_key(name, term(), term(), timeout()) :: term()
  def call_key(name, key, job, timeout \\ @default_timeout),
    do: :shoal_fixed.call_key(name, key, job, timeout)

  @doc "Queues `job` on the worker of pool `name` that `key` maps to."
  @spec cast_key(name, term(), term()) :: :ok | {:error, term()}
  def cast_key(name, key, job), do: :shoal_fixed.cast_key(name, key, job)

  @doc "Queues `job` on worker `index` (0-based) of pool `name`."
  @spec cast_to(name, non_neg_integer(), term()) :: :ok | {:error, term()}
  def cast_to(name, index, job), do: :shoal_fixed.cast_to(name, index, job)

  @doc "The pid of worker `index` of pool `name`, or `nil` while it restarts."
  @spec pid(name, non_neg_integer()) :: pid() | nil | {:error, term()}
  def pid(name, index) do
    case :shoal_fixed.pid(name, index) do
      :undefined -> nil
      other -> other
    end
  end

  @doc "The configured size of pool `name`."
  @spec size(name) :: pos_integer() | {:error, term()}
  def size(name), do: :shoal_fixed.size(name)

  @doc """
  Counters of pool `name`: `:size`, `:live`, `:done`, `:failed`, `:retries`,
  `:restarts`, `:exited`, `:queued`.
  """
  @spec stats(name) :: map() | {:error, term()}
  def stats(name), do: :shoal_fixed.stats(name)

  @doc "Stops pool `name` and its workers."
  @spec stop(name) :: :ok | {:error, term()}
  def stop(name), do: :shoal_fixed.stop(name)
end
