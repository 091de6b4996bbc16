defmodule ShoalToolsFaceTest do
  # The `use` faces of the pool tools (Shoal.Fixed, Shoal.Cron, Shoal.Batcher, Shoal.Tasks,
  # Shoal.Shared) used as their docs tell an Elixir user to: a module with `use`, put in a
  # supervision tree as `Module` or `{Module, overrides}`, driven through the functions the
  # `use` defined; plus the name-taking functions of each face for a second instance.
  use ExUnit.Case, async: false
  import ExUnit.CaptureIO
  import ExUnit.CaptureLog

  alias ShoalElixirTest.{Thumbs, Schedule, Sink, Crawler, Stock}

  describe "use Shoal.Fixed" do
    test "a child in a supervision tree, called through the module" do
      start_supervised!({Thumbs, callbacks: %{deliver: {:erlang, :send}}})
      assert Thumbs.pool_name() == :face_thumbs
      assert Thumbs.size() == 3
      assert Thumbs.call({:resize, 640, 480}) == {320, 240}
      assert Thumbs.call({:resize, 10, 10}, 1_000) == {5, 5}
      assert :ok = Thumbs.cast({:notify, self(), :hello})
      assert_receive :hello
      i = Thumbs.call_key({:user, 42}, :whoami)
      assert Thumbs.call_key({:user, 42}, :whoami, 1_000) == i
      assert Thumbs.cast_key({:user, 42}, {:notify, self(), :again}) == :ok
      assert_receive :again
      assert Thumbs.cast_to(2, {:notify, self(), :two}) == :ok
      assert_receive :two
      assert is_pid(Thumbs.pid(0))
      assert %{size: 3, live: 3} = Thumbs.stats()
    end

    test "the default handle_error/4 retries after the configured backoff, as without one" do
      start_supervised!(Thumbs)

      log =
        capture_log(fn ->
          assert {:error, {:job_failed, {:error, %RuntimeError{message: "flaky"}, _}}} =
                   Thumbs.call({:flaky, self()})
        end)

      assert_receive {:attempt, _}
      assert_receive {:attempt, _}
      refute_receive {:attempt, _}, 100
      assert %{failed: 1, retries: 1} = Thumbs.stats()
      assert is_binary(log)
    end

    test "options given at start go over those of use; another name is another pool" do
      start_supervised!({Thumbs, name: :face_thumbs_2, size: 2, mode: :hash}, id: :second)
      assert Shoal.Fixed.size(:face_thumbs_2) == 2
      assert Shoal.Fixed.call(:face_thumbs_2, {:resize, 4, 4}) == {2, 2}
      assert Shoal.Fixed.stats(:face_thumbs_2).size == 2
      assert Thumbs.size() == {:error, {:no_such_pool, :face_thumbs}}
      assert Shoal.Fixed.stop(:face_thumbs_2) == :ok
    end

    test "bad options are an error from start_link" do
      assert Thumbs.start_link(mode: :sideways) == {:error, {:bad_option, :mode, :sideways}}
    end

    test "@impl is checked against :shoal_fixed's callbacks" do
      src = """
      defmodule ShoalToolsFaceTest.FixedImpl do
        use Shoal.Fixed, size: 1
        @impl true
        def init(i, _), do: {:ok, i}
        @impl true
        def handle_jobb(j, s), do: {:reply, j, s}
      end
      """

      warnings = capture_io(:stderr, fn -> Code.compile_string(src) end)
      assert warnings =~ "handle_jobb/2"
      assert warnings =~ "function handle_job/2 required by behaviour :shoal_fixed is not implemented"
    end
  end

  describe "use Shoal.Cron" do
    setup do
      Process.register(self(), :face_schedule_sink)
      :ok
    end

    test "jobs given to use (anonymous functions) fire; runtime control through the module" do
      start_supervised!({Schedule, notify: self()})
      assert_receive :beat, 2_000
      assert_receive {:handle_error, :fails, 1, :error}, 2_000
      assert_receive {:shoal_cron, :face_schedule, {:failed, :fails, _, {:error, %RuntimeError{}, _}}}, 2_000

      assert :ok = Schedule.add(:nightly, "0 0 3 * * *", {:io, :format, ["nightly~n"]})
      assert [%{name: :beat}, %{name: :fails}, %{name: :nightly, next: {_, {3, 0, 0}}}] = Schedule.jobs()
      assert :ok = Schedule.cancel(:fails)
      assert :ok = Schedule.reschedule(:beat, :minute)
      assert [:beat, :nightly] == Enum.map(Schedule.jobs(), & &1.name)
      assert Schedule.add(:nightly, 1_000, fn -> :ok end) == {:error, {:already_exists, :nightly}}
      assert Schedule.stop() == :ok
    end

    test "next/2 with Erlang datetimes and NaiveDateTime" do
      assert Shoal.Cron.next("30 9 * * MON-FRI", {{2023, 12, 29}, {9, 30, 0}}) == {{2024, 1, 1}, {9, 30, 0}}
      assert Shoal.Cron.next("0 0 29 2 *", ~N[2024-01-01 00:00:00]) == ~N[2024-02-29 00:00:00]
      assert {:error, {:bad_spec, _}} = Shoal.Cron.next("0 0 30 2 *", ~N[2024-01-01 00:00:00])
    end
  end

  describe "use Shoal.Batcher" do
    test "items are cut into batches handled in order" do
      start_supervised!({Sink, args: self()})
      for item <- [:a, :b, :c, :d], do: assert(Sink.push(item) == :ok)
      assert_receive {:batch, [:a, :b, :c]}
      assert Sink.flush() == :ok
      assert_received {:batch, [:d]}
      assert %{batches: 2, handled: 2, pending: 0} = Sink.stats()
      assert Shoal.Batcher.push(:face_nothing, :e) == {:error, {:no_such_batcher, :face_nothing}}
    end
  end

  describe "use Shoal.Tasks" do
    test "bounded tasks, results to the caller, a raise as an error" do
      start_supervised!(Crawler)
      refs = for n <- 1..10, do: Crawler.run(fn -> n * n end)
      assert Crawler.await_many(refs, 5_000) == for(n <- 1..10, do: {:ok, n * n})
      bad = Crawler.run(fn -> raise ArgumentError, "bad url" end)
      assert {:error, {:error, %ArgumentError{message: "bad url"}, [_ | _]}} = Crawler.await(bad)
      assert Crawler.run_and_forget({:erlang, :send, [self(), :forgotten]}) == :ok
      assert_receive :forgotten
      assert %{done: 12, failed: 1} = Crawler.stats()
      assert Crawler.run(:not_a_task) == {:error, {:bad_task, :not_a_task}}
    end
  end

  describe "use Shoal.Shared" do
    test "one atomic state served by several processes" do
      start_supervised!({Stock, args: %{apple: 100}})
      assert length(Stock.workers()) == 4

      took =
        1..150
        |> Enum.map(fn _ -> Task.async(fn -> Stock.call({:take, :apple}) end) end)
        |> Task.await_many(10_000)

      assert Enum.count(took, &(&1 == :ok)) == 100
      assert Enum.count(took, &(&1 == :sold_out)) == 50
      assert Stock.call({:count, :apple}) == 0
      assert Stock.get_state() == %{apple: 0}
      assert %{calls: calls} = Stock.stats()
      assert calls >= 151
    end

    test "an unexpected cast is logged and restarts the worker that got it" do
      start_supervised!({Stock, args: %{}, size: 1})
      [pid] = Stock.workers()
      ref = Process.monitor(pid)

      log =
        capture_log(fn ->
          assert Stock.cast(:nonsense) == :ok
          assert_receive {:DOWN, ^ref, :process, ^pid, {:bad_cast, :nonsense}}, 2_000
        end)

      assert log =~ "handle_cast/2 received an unexpected message: :nonsense"
      assert Stock.call({:count, :pear}) == 0
    end
  end

  test "every public function of the faces has a doc" do
    for mod <- [Shoal.Fixed, Shoal.Cron, Shoal.Batcher, Shoal.Tasks, Shoal.Shared] do
      {:docs_v1, _, _, _, moddoc, _, docs} = Code.fetch_docs(mod)
      assert is_map(moddoc), "#{inspect(mod)} has no module doc"

      undocumented =
        for {{:function, name, arity}, _, _, :none, _} <- docs, do: {name, arity}

      assert undocumented == [], "#{inspect(mod)}: no doc for #{inspect(undocumented)}"
    end
  end
end
