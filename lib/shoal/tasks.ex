defmodule Shoal.Tasks do
  @moduledoc """
  A bounded task runner: at most `:limit` tasks run at once, the rest wait in a FIFO queue
  of at most `:max_queue`. The Elixir face of `:shoal_tasks` (see its docs and
  `docs/tools.md`), in place of `Poolder.Tasker` or `Task.async_stream/3`.

      defmodule MyApp.Crawler do
        use Shoal.Tasks, name: :crawler, limit: 8, max_queue: 1_000
      end

      children = [MyApp.Crawler]
      refs = for url <- urls, do: MyApp.Crawler.run(fn -> fetch(url) end)
      results = MyApp.Crawler.await_many(refs, 10_000)   # [{:ok, page} | {:error, _}]

  `use Shoal.Tasks` defines `start_link(opts \\\\ [])`, `child_spec(opts)`, `run(task)`,
  `run_and_forget(task)`, `await(ref, timeout \\\\ 5000)`,
  `await_many(refs, timeout \\\\ 5000)`, `stats()` and `stop()` on the runner named by
  `:name` (default: the module's name). A task is a fun of arity 0 or `{m, f, a}`; its
  result goes only to the process that called `run/1`.

  Options of `use` (see `:shoal_tasks.start_link/2`): `:name`, `:limit`, `:max_queue`,
  `:hibernate_after`.
  """

  @typedoc "A runner's registered name."
  @type name :: atom()
  @typedoc "A task: a fun of arity 0 or `{module, function, args}`."
  @type task :: (-> term()) | {module(), atom(), [term()]}
  @typedoc "A task's result: its value, or what it raised as `{kind, reason, stacktrace}`."
  @type result :: {:ok, term()} | {:error, {:error | :exit | :throw, term(), list()}} |
                  {:error, :timeout}

  @doc false
  defmacro __using__(opts) do
    name = Shoal.Face.name_ast(opts)

    quote location: :keep do
      @doc false
      def __shoal_options__, do: unquote(opts)

      @doc "The name of the runner this module's functions address."
      @spec runner_name() :: atom()
      def runner_name, do: unquote(name)

      @doc "The child spec of this runner: the options given to `use`, `opts` over them."
      @spec child_spec(keyword()) :: Supervisor.child_spec()
      def child_spec(opts \\ []), do: Shoal.Tasks.child_spec(__shoal_opts__(opts))

      @doc "Starts this runner and links it to the caller."
      @spec start_link(keyword()) :: {:ok, pid()} | {:error, term()}
      def start_link(opts \\ []), do: Shoal.Tasks.start_link(__shoal_opts__(opts))

      @doc "Runs `task` as soon as fewer than `:limit` run: the reference to await."
      @spec run(Shoal.Tasks.task()) :: reference() | {:error, term()}
      def run(task), do: Shoal.Tasks.run(runner_name(), task)

      @doc "Runs `task`; nobody gets its result."
      @spec run_and_forget(Shoal.Tasks.task()) :: :ok | {:error, term()}
      def run_and_forget(task), do: Shoal.Tasks.run_and_forget(runner_name(), task)

      @doc "The result of the task `ref` (from `run/1` in this process)."
      @spec await(reference(), timeout()) :: Shoal.Tasks.result() | {:error, term()}
      def await(ref, timeout \\ 5000), do: Shoal.Tasks.await(runner_name(), ref, timeout)

      @doc "The results of `refs`, in their order, within one deadline."
      @spec await_many([reference()], timeout()) :: [Shoal.Tasks.result() | {:error, term()}]
      def await_many(refs, timeout \\ 5000), do: Shoal.Tasks.await_many(runner_name(), refs, timeout)

      @doc "The runner's counters (see `Shoal.Tasks.stats/1`)."
      @spec stats() :: map() | {:error, term()}
      def stats, do: Shoal.Tasks.stats(runner_name())

      @doc "Stops the runner and its running tasks."
      @spec stop() :: :ok | {:error, term()}
      def stop, do: Shoal.Tasks.stop(runner_name())

      defp __shoal_opts__(opts), do: Shoal.Face.merge(__shoal_options__(), runner_name(), opts)
    end
  end

  @doc "The child spec of a runner: `{Shoal.Tasks, name: ..., limit: ...}`."
  @spec child_spec(keyword() | map()) :: Supervisor.child_spec()
  def child_spec(opts), do: :shoal_tasks.child_spec(opts)

  @doc "Starts a runner from options with a `:name`; `{:error, reason}` for bad options."
  @spec start_link(keyword() | map()) :: {:ok, pid()} | {:error, term()}
  def start_link(opts) do
    {name, rest} = :shoal_tools_opts.split_name(opts)
    :shoal_tasks.start_link(name, rest)
  end

  @doc "Runs `task` on runner `name`: the reference to await, or `{:error, :overloaded}`."
  @spec run(name, task) :: reference() | {:error, term()}
  def run(name, task), do: :shoal_tasks.run(name, task)

  @doc "Runs `task` on runner `name`; nobody gets its result."
  @spec run_and_forget(name, task) :: :ok | {:error, term()}
  def run_and_forget(name, task), do: :shoal_tasks.run_and_forget(name, task)

  @doc """
  The result of task `ref`: `{:ok, value}`, `{:error, {kind, reason, stacktrace}}` if it
  raised, `{:error, :timeout}` if it did not finish in `timeout` ms.
  """
  @spec await(name, reference(), timeout()) :: result | {:error, term()}
  def await(name, ref, timeout \\ 5000), do: :shoal_tasks.await(name, ref, timeout)

  @doc "The results of `refs`, in the order of `refs`, waiting at most `timeout` ms in all."
  @spec await_many(name, [reference()], timeout()) :: [result | {:error, term()}]
  def await_many(name, refs, timeout \\ 5000), do: :shoal_tasks.await_many(name, refs, timeout)

  @doc "Counters of runner `name`: `:running`, `:queued`, `:done`, `:failed`, `:cancelled`."
  @spec stats(name) :: map() | {:error, term()}
  def stats(name), do: :shoal_tasks.stats(name)

  @doc "Stops runner `name` and its running tasks."
  @spec stop(name) :: :ok | {:error, term()}
  def stop(name), do: :shoal_tasks.stop(name)
end
