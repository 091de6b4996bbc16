defmodule Shoal do
  @moduledoc """
  Millions of long-lived, addressable workers, one per key, across a BEAM cluster.

  This is the Elixir face of the Erlang application `:shoal`: the same functions as
  `:shoal`, in Elixir spelling. `nil` stands where Erlang says `:undefined`, and options
  are accepted as a keyword list or a map.

      defmodule Counter do
        use Shoal.Worker

        @impl true
        def init(_key, _args), do: {:ok, 0}

        @impl true
        def handle_call(:get, _from, n), do: {:reply, n, n}

        @impl true
        def handle_cast(:incr, n), do: {:noreply, n + 1}
      end

      {:ok, _} = Shoal.start_pool(:counters, worker: Counter)
      :ok = Shoal.cast(:counters, {:user, 42}, :incr)   # spawns the worker for {:user, 42}
      1 = Shoal.call(:counters, {:user, 42}, :get)

  A pool in your own supervision tree: `{Shoal.Pool, name: :counters, worker: Counter}`.

  Workers can also be addressed with `{:via, Shoal, {pool, key}}` names, so
  `GenServer.call({:via, Shoal, {:counters, {:user, 42}}}, :get)` works; see
  `whereis_name/1`.
  """

  @typedoc "A pool's name."
  @type pool :: atom()
  @typedoc "A worker's key: any term."
  @type key :: term()
  @typedoc """
  Pool options, as a keyword list or a map: `:worker` (required, a module that implements
  `:shoal_worker`, e.g. with `use Shoal.Worker`), `:args`, `:restart`, `:idle_timeout`,
  `:segments`, `:handoff_grace`, `:table_segments_log2`, `:spawn_opts`, `:quorum`
  (see `:shoal.start_pool/2`).
  """
  @type options :: keyword() | map()
  @typedoc "A node's placement window: `:low`, `:target`, `:high`, as a keyword list or a map."
  @type window :: keyword() | map()

  @default_timeout 5000

  # --- Pools ------------------------------------------------------------------------------

  @doc """
  Starts pool `pool` under the `:shoal` application (started if need be).

  Returns `{:error, reason}` for invalid options, e.g. `{:error, {:missing_option, :worker}}`.
  Starting a pool of the same name on connected nodes forms one cluster-wide pool.
  """
  @spec start_pool(pool, options) :: {:ok, pid} | {:error, term}
  def start_pool(pool, opts), do: :shoal.start_pool(pool, options(opts))

  @doc "Stops pool `pool` and every worker in it."
  @spec stop_pool(pool) :: :ok | {:error, {:no_such_pool, pool}}
  def stop_pool(pool), do: :shoal.stop_pool(pool)

  # --- Messages ---------------------------------------------------------------------------

  @doc """
  Calls the worker for `key`, spawning it first if there is none.

  Exits like `GenServer.call/3` on failure, with `{reason, {:shoal, :call, args}}` (a worker
  whose `init/2` raised: `reason` is `{exception, stacktrace}`). A call
  that finds its worker gone before it was handled (stopped, offloaded, crashed) is sent
  again to the key's next worker, so such a race is never a timeout.
  """
  @spec call(pool, key, term, timeout) :: term
  def call(pool, key, msg, timeout \\ @default_timeout), do: :shoal.call(pool, key, msg, timeout)

  @doc "Calls the worker for `key` only if it is live: `{:error, :not_found}` otherwise."
  @spec call_existing(pool, key, term, timeout) :: term | {:error, :not_found}
  def call_existing(pool, key, msg, timeout \\ @default_timeout),
    do: :shoal.call_existing(pool, key, msg, timeout)

  @doc """
  Casts `msg` to the worker for `key` (`GenServer.cast/2` semantics), spawning it first if
  there is none. Always `:ok` for a running pool.
  """
  @spec cast(pool, key, term) :: :ok
  def cast(pool, key, msg), do: :shoal.cast(pool, key, msg)

  @doc "Casts to the worker for `key` only if it is live: `{:error, :not_found}` otherwise."
  @spec cast_existing(pool, key, term) :: :ok | {:error, :not_found}
  def cast_existing(pool, key, msg), do: :shoal.cast_existing(pool, key, msg)

  # --- Workers ----------------------------------------------------------------------------

  @doc """
  Starts the worker for `key` if there is none and waits until its `init/2` has run.
  Every concurrent caller gets the same pid. `{:error, reason}` if `init/2` failed; if it
  raised, `reason` is `{exception, stacktrace}` (as a GenServer's init exit reason), which
  `Exception.format_exit/1` shows as the exception.
  """
  @spec ensure_started(pool, key) :: {:ok, pid} | {:error, term}
  def ensure_started(pool, key), do: :shoal.ensure_started(pool, key)

  @doc "Starts the worker for `key` if there is none, without waiting: `:ok` at once."
  @spec ensure_started_async(pool, key) :: :ok
  def ensure_started_async(pool, key), do: :shoal.ensure_started_async(pool, key)

  @doc """
  The worker for `key`, or `nil`. A read of a NIF table on this node: no process is
  involved and nothing is spawned.
  """
  @spec whereis(pool, key) :: pid | nil
  def whereis(pool, key), do: nil_for_undefined(:shoal.whereis(pool, key))

  @doc "Where the worker for `key` lives: `{:ok, node, pid}` or `{:error, :not_found}`."
  @spec lookup(pool, key) :: {:ok, node, pid} | {:error, :not_found}
  def lookup(pool, key), do: :shoal.lookup(pool, key)

  @doc "Stops the worker for `key` gracefully, once its `terminate/2` has run; what is queued for it goes to its next worker."
  @spec stop_worker(pool, key) :: :ok | {:error, :not_found | {:nodedown, node()}}
  def stop_worker(pool, key), do: :shoal.stop_worker(pool, key)

  @doc """
  The pool and key of a worker process: `{:ok, pool, key}`, or `nil` if `pid` is not a live
  Shoal worker. A pid of another node is asked about on that node (one round trip).
  """
  @spec key_of(pid) :: {:ok, pool, key} | nil
  def key_of(pid), do: nil_for_undefined(:shoal.key_of(pid))

  @doc "The number of live workers in the pool, cluster-wide."
  @spec count(pool) :: non_neg_integer
  def count(pool), do: :shoal.count(pool)

  @doc "The number of live workers of the pool on `node` (a read on this node)."
  @spec count(pool, node) :: non_neg_integer
  def count(pool, node), do: :shoal.count(pool, node)

  @doc """
  This node's counters for the pool: `:live`, `:spawns`, `:normal_exits`, `:crashes`,
  `:crashes_per_second`, `:crashes_per_minute`, `:idle_offloads`, `:call_timeouts`,
  `:restarts`.
  """
  @spec stats(pool) :: map
  def stats(pool), do: :shoal.stats(pool)

  # --- The cluster ------------------------------------------------------------------------

  @doc "The member nodes of the pool, as this node sees them."
  @spec nodes(pool) :: [node, ...]
  def nodes(pool), do: :shoal.nodes(pool)

  @doc "Moves the worker for `key` to `node` with its state: `{:ok, new_pid}`."
  @spec migrate(pool, key, node) :: {:ok, pid} | {:error, term}
  def migrate(pool, key, node), do: :shoal.migrate(pool, key, node)

  @doc "Stops placing workers on `node` and moves its workers away, keeping their state."
  @spec drain(pool, node) :: :ok | {:error, term}
  def drain(pool, node), do: :shoal.drain(pool, node)

  @doc "Lets `node` take new workers again."
  @spec undrain(pool, node) :: :ok
  def undrain(pool, node), do: :shoal.undrain(pool, node)

  @doc """
  Sets `node`'s placement window (`low:`, `target:`, `high:`; missing ones keep their
  defaults 0, `:infinity`, `:infinity`).
  """
  @spec set_target(pool, node, window) :: :ok | {:error, term}
  def set_target(pool, node, window), do: :shoal.set_target(pool, node, options(window))

  @doc """
  Moves the fewest workers that bring every member inside its window (see `set_target/3`;
  with the default windows nothing moves). `rebalance(pool, :even)` instead moves the
  fewest workers that leave every member that is not drained within one of the average.
  """
  @spec rebalance(pool, :windows | :even) :: {:ok, %{moved: non_neg_integer}} | {:error, term}
  def rebalance(pool, how \\ :windows), do: :shoal.rebalance(pool, how)

  @doc """
  Per member node: `:count`, `:window`, `:fill`, `:drained`, `:crashes_per_minute`,
  `:reachable`; and the cluster `:total`.
  """
  @spec health(pool) :: %{nodes: %{node => map}, total: non_neg_integer}
  def health(pool), do: :shoal.health(pool)

  # --- {:via, Shoal, {pool, key}} -----------------------------------------------------------

  @doc """
  The pid for a `{:via, Shoal, {pool, key}}` name, starting the key's worker if it is not
  running (as the first message to any Shoal key does); `:undefined` if there is no such
  pool or the worker's `init/2` failed (the via protocol's answer, which makes
  `GenServer.call/3` exit with `:noproc`).

  So `GenServer.call({:via, Shoal, {pool, key}}, msg)` and `GenServer.cast/2` reach the
  worker like `call/3` and `cast/3` do, except that `call/3` also re-sends a call whose
  worker went away before handling it. Use `whereis/2` to look without starting anything.
  """
  @spec whereis_name({pool, key}) :: pid | :undefined
  def whereis_name({pool, key}) when is_atom(pool) do
    case :shoal.ensure_started(pool, key) do
      {:ok, pid} -> pid
      {:error, _} -> :undefined
    end
  catch
    :exit, {{:no_such_pool, ^pool}, _} -> :undefined
  end

  def whereis_name(_name), do: :undefined

  @doc """
  Sends `msg` to the worker of a `{:via, Shoal, {pool, key}}` name, starting it if need be
  (this is what `GenServer.cast/2` and `send/2` to a via name use). Exits with
  `{:badarg, {name, msg}}` if the worker cannot be started, as `:global.send/2` does.
  """
  @spec send({pool, key}, term) :: pid
  def send(name, msg) do
    case whereis_name(name) do
      :undefined -> exit({:badarg, {name, msg}})
      pid -> Kernel.send(pid, msg)
      pid
    end
  end

  @doc """
  Always `:no`: a Shoal worker is registered by Shoal itself, when the first message for
  its key spawns it under the pool (one per key, cluster-wide). A process started
  elsewhere, e.g. `GenServer.start_link(M, a, name: {:via, Shoal, {pool, key}})`, cannot
  take a key's name, so that start fails with `{:error, {:already_started, pid}}`, where
  pid is the key's worker.
  """
  @spec register_name({pool, key}, pid) :: :no
  def register_name(_name, _pid), do: :no

  @doc """
  `:ok`, and does nothing: since `register_name/2` never registers anything, there is no
  name to remove. Stop a key's worker with `stop_worker/2`.
  """
  @spec unregister_name({pool, key}) :: :ok
  def unregister_name(_name), do: :ok

  # --- Helpers ----------------------------------------------------------------------------

  @doc false
  # A keyword list becomes the map the Erlang API takes (the first of repeated keys wins, as
  # with Keyword.get/2); anything else goes through as it is, so a bad value gets the Erlang
  # API's own `{:error, ...}` answer.
  @spec options(term) :: term
  def options(opts) when is_list(opts) do
    if Keyword.keyword?(opts), do: opts |> Enum.reverse() |> Map.new(), else: opts
  end

  def options(opts), do: opts

  defp nil_for_undefined(:undefined), do: nil
  defp nil_for_undefined(pid), do: pid
end
