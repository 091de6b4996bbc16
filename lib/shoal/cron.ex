defmodule Shoal.Cron do
  @moduledoc """
  A cron scheduler: named jobs with cron strings, intervals or `:second | :minute | :hour |
  :day | :week`, runtime control, retries, and `cluster: true` for one firing per cluster.
  The Elixir face of `:shoal_cron` (see its docs and `docs/tools.md`), in place of
  `use Poolder.Scheduler`.

      defmodule MyApp.Schedule do
        use Shoal.Cron,
          name: :schedule,
          retry: [count: 2, backoff: 100],
          jobs: [
            {:heartbeat, 5_000, &MyApp.Health.beat/0},
            {:nightly, "0 0 3 * * *", {MyApp.Reports, :nightly, []}}
          ]

        # optional: how to go on after a job raised (default: retry after the backoff)
        @impl true
        def handle_error(:nightly, _attempt, _error, _state), do: :halt
        def handle_error(_job, _attempt, _error, _state), do: :configured_backoff
      end

      children = [MyApp.Schedule]
      :ok = MyApp.Schedule.add(:cleanup, "*/10 * * * *", fn -> MyApp.cleanup() end)

  `use Shoal.Cron` makes the module the scheduler's `:handler` (`@behaviour :shoal_cron`,
  with an overridable default `handle_error/4` that retries after the configured backoff, as
  when there is none) and defines `start_link(opts \\\\ [])`, `child_spec(opts)`,
  `add(job, spec, task)`, `reschedule(job, spec)`, `cancel(job)`, `jobs()` and `stop()`
  on the scheduler named by `:name` (default: the module's name).

  Options of `use` (see `:shoal_cron.start_link/2`): `:name`, `:jobs` (`{name, spec, task}`
  with a task a fun of arity 0 or `{m, f, a}`), `:retry`, `:overlap`, `:tz`, `:cluster`,
  `:args` (the `state` given to `handle_error/4`), `:clock`, `:notify`. They are evaluated
  when the scheduler starts, so `:jobs` may hold anonymous functions.
  """

  @typedoc "A scheduler's registered name."
  @type name :: atom()
  @typedoc "A cron string, an interval in ms, or `:second | :minute | :hour | :day | :week`."
  @type spec :: String.t() | charlist() | pos_integer() | atom()
  @typedoc "What a job runs: a fun of arity 0 or `{module, function, args}`."
  @type task :: (-> term()) | {module(), atom(), [term()]}

  @doc false
  defmacro __using__(opts) do
    name = Shoal.Face.name_ast(opts)

    quote location: :keep do
      @behaviour :shoal_cron

      @doc false
      def __shoal_options__, do: Keyword.merge(unquote(opts), handler: __MODULE__)

      @doc "The name of the scheduler this module's functions address."
      @spec scheduler_name() :: atom()
      def scheduler_name, do: unquote(name)

      @doc "The child spec of this scheduler: the options given to `use`, `opts` over them."
      @spec child_spec(keyword()) :: Supervisor.child_spec()
      def child_spec(opts \\ []), do: Shoal.Cron.child_spec(__shoal_opts__(opts))

      @doc "Starts this scheduler and links it to the caller."
      @spec start_link(keyword()) :: {:ok, pid()} | {:error, term()}
      def start_link(opts \\ []), do: Shoal.Cron.start_link(__shoal_opts__(opts))

      @doc "Adds job `job` (see `Shoal.Cron.add/4`)."
      @spec add(atom(), Shoal.Cron.spec(), Shoal.Cron.task()) :: :ok | {:error, term()}
      def add(job, spec, task), do: Shoal.Cron.add(scheduler_name(), job, spec, task)

      @doc "Gives job `job` a new spec, for every later firing."
      @spec reschedule(atom(), Shoal.Cron.spec()) :: :ok | {:error, term()}
      def reschedule(job, spec), do: Shoal.Cron.reschedule(scheduler_name(), job, spec)

      @doc "Removes job `job`."
      @spec cancel(atom()) :: :ok | {:error, term()}
      def cancel(job), do: Shoal.Cron.cancel(scheduler_name(), job)

      @doc "The jobs, sorted by name (see `Shoal.Cron.jobs/1`)."
      @spec jobs() :: [map()] | {:error, term()}
      def jobs, do: Shoal.Cron.jobs(scheduler_name())

      @doc "Stops this scheduler (on this node)."
      @spec stop() :: :ok | {:error, term()}
      def stop, do: Shoal.Cron.stop(scheduler_name())

      @doc false
      def handle_error(_job, _attempt, _error, _state), do: :configured_backoff

      defoverridable handle_error: 4

      defp __shoal_opts__(opts), do: Shoal.Face.merge(__shoal_options__(), scheduler_name(), opts)
    end
  end

  @doc "The child spec of a scheduler: `{Shoal.Cron, name: ..., jobs: [...]}`."
  @spec child_spec(keyword() | map()) :: Supervisor.child_spec()
  def child_spec(opts), do: :shoal_cron.child_spec(opts)

  @doc "Starts a scheduler from options with a `:name`; `{:error, reason}` for bad options."
  @spec start_link(keyword() | map()) :: {:ok, pid()} | {:error, term()}
  def start_link(opts) do
    {name, rest} = :shoal_tools_opts.split_name(opts)
    :shoal_cron.start_link(name, rest)
  end

  @doc """
  The first firing of `spec` strictly after `datetime` (pure): an Erlang datetime
  `{{y, m, d}, {h, mi, s}}` or a `NaiveDateTime`, answered in the same shape.
  """
  @spec next(spec, :calendar.datetime() | NaiveDateTime.t()) ::
          :calendar.datetime() | NaiveDateTime.t() | {:error, term()}
  def next(spec, %NaiveDateTime{} = dt) do
    case :shoal_cron.next(spec, NaiveDateTime.to_erl(dt)) do
      {{_, _, _}, {_, _, _}} = next -> NaiveDateTime.from_erl!(next)
      error -> error
    end
  end

  def next(spec, datetime), do: :shoal_cron.next(spec, datetime)

  @doc "Adds job `job` to scheduler `name`: `{:error, {:already_exists, job}}` if it has one."
  @spec add(name, atom(), spec, task) :: :ok | {:error, term()}
  def add(name, job, spec, task), do: :shoal_cron.add(name, job, spec, task)

  @doc "Gives job `job` of scheduler `name` a new spec, for every later firing."
  @spec reschedule(name, atom(), spec) :: :ok | {:error, term()}
  def reschedule(name, job, spec), do: :shoal_cron.reschedule(name, job, spec)

  @doc "Removes job `job` from scheduler `name` (a run in progress finishes)."
  @spec cancel(name, atom()) :: :ok | {:error, term()}
  def cancel(name, job), do: :shoal_cron.cancel(name, job)

  @doc """
  The jobs of scheduler `name`, sorted by name: maps with `:name`, `:spec`, `:next` (an
  Erlang datetime in the scheduler's time zone), `:next_ms` and `:running`.
  """
  @spec jobs(name) :: [map()] | {:error, term()}
  def jobs(name), do: :shoal_cron.jobs(name)

  @doc "Stops scheduler `name` on this node."
  @spec stop(name) :: :ok | {:error, term()}
  def stop(name), do: :shoal_cron.stop(name)
end
