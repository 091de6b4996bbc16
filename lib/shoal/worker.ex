defmodule Shoal.Worker do
  @moduledoc """
  The behaviour of a Shoal worker, for Elixir modules: `use Shoal.Worker`.

  A worker is one long-lived process per key, a GenServer to anyone holding its pid. It
  implements `init(key, args)` (`{:ok, state}` or `{:stop, reason}`) and the GenServer
  callbacks it needs:

      defmodule MyApp.Session do
        use Shoal.Worker

        @impl true
        def init(user_id, _args), do: {:ok, %{user: user_id, seen: 0}}

        @impl true
        def handle_call(:seen, _from, s), do: {:reply, s.seen, s}

        @impl true
        def handle_cast(:touch, s), do: {:noreply, %{s | seen: s.seen + 1}}
      end

  `use Shoal.Worker` sets `@behaviour :shoal_worker` (so `@impl` is checked against Shoal's
  callbacks) and defines overridable defaults for `handle_call/3`, `handle_cast/2` and
  `handle_info/2` in the spirit of `use GenServer`'s: an unexpected call or cast is logged
  and stops the worker with reason `{:bad_call, msg}` / `{:bad_cast, msg}` (the caller of a
  call exits with it); an unexpected message is logged and dropped.

  The other optional callbacks get no default on purpose, because Shoal looks at whether a
  worker exports them: `load/2` (lazy load before the first message), `idle/1` (veto an idle
  offload), `terminate/2` (when exported the worker traps exits, so it also runs on pool
  shutdown, stop, offload and migration), `handoff/1` and `takeover/3` (what a migration
  carries; by default the state itself), `conflict/3` (this worker lost a post-partition
  duplicate), `code_change/3` (a release upgrade of the module), `format_status/1` (how
  `:sys.get_status/1` and crash reports show the state). Define the ones you need, with
  `@impl true`. See `:shoal_worker` for their contracts.

  What OTP tools see of a worker: its initial call is `{YourModule, :init, 2}`,
  `:sys.get_status/1` and crash reports show your state (formatted by your
  `format_status/1` if you define one), and `Shoal.key_of/1` maps its pid to its pool and
  key. `:sys.get_state/1` returns your state and `:sys.replace_state/2` replaces it, as
  for any GenServer. An `init/2` that raises
  makes `Shoal.ensure_started/2` return `{:error, {exception, stacktrace}}`, the shape
  Elixir formats as an exception; the failure is logged (`worker_init_failed`, at most 10
  lines a second per pool).
  """

  @doc false
  defmacro __using__(_opts) do
    quote location: :keep do
      @behaviour :shoal_worker

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

      defoverridable handle_call: 3, handle_cast: 2, handle_info: 2
    end
  end

  @doc false
  # What `use GenServer`'s defaults log for an unhandled message, in Shoal's log domain.
  # (No `label` key: Elixir's Logger translator drops reports with labels it does not know.)
  @spec __unexpected__(module, atom, term) :: :ok
  def __unexpected__(module, callback, msg) do
    :logger.error(
      %{what: :unexpected_message, worker: module, callback: callback, msg: msg},
      %{domain: [:shoal], report_cb: &Shoal.Worker.__format__/1}
    )
  end

  @doc false
  @spec __format__(map) :: {charlist, [term]}
  def __format__(%{worker: module, callback: callback, msg: msg}) do
    {~c"~ts ~ts/~B received an unexpected message: ~tp",
     [inspect(module), Atom.to_string(callback), arity(callback), msg]}
  end

  defp arity(:handle_call), do: 3
  defp arity(_), do: 2
end
