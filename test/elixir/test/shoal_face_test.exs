defmodule ShoalFaceTest do
  # The Elixir face (lib/ of the Shoal repository) used the way its docs tell an Elixir user
  # to: `Shoal.*` with keyword options, `{Shoal.Pool, ...}` children, `use Shoal.Worker`,
  # `{:via, Shoal, {pool, key}}` names, and `h` for both the Elixir and the Erlang modules.
  use ExUnit.Case, async: false
  import ExUnit.CaptureIO
  import ExUnit.CaptureLog

  alias ShoalElixirTest.FaceWorker

  defp unique_pool, do: :"face_pool_#{System.unique_integer([:positive])}"

  setup context do
    pool = unique_pool()

    unless context[:no_pool] do
      {:ok, _} = Shoal.start_pool(pool, worker: FaceWorker)
      on_exit(fn -> Shoal.stop_pool(pool) end)
    end

    {:ok, pool: pool}
  end

  describe "Shoal, the API in Elixir spelling" do
    test "call, cast and whereis, with nil where Erlang says :undefined", %{pool: pool} do
      assert Shoal.whereis(pool, "ann") == nil
      assert Shoal.call(pool, "ann", {:add, 2}) == 2
      assert Shoal.cast(pool, "ann", {:add, 3}) == :ok
      assert Shoal.call(pool, "ann", :get, 1_000) == 5
      pid = Shoal.whereis(pool, "ann")
      assert is_pid(pid)
      assert Shoal.lookup(pool, "ann") == {:ok, node(), pid}
      assert Shoal.lookup(pool, "nobody") == {:error, :not_found}
      assert Shoal.count(pool) == 1
      assert Shoal.count(pool, node()) == 1
      assert Shoal.stats(pool).spawns == 1
      assert Shoal.nodes(pool) == [node()]
    end

    test "the *_existing calls never spawn", %{pool: pool} do
      assert Shoal.call_existing(pool, "ghost", :get) == {:error, :not_found}
      assert Shoal.cast_existing(pool, "ghost", {:add, 1}) == {:error, :not_found}
      assert Shoal.whereis(pool, "ghost") == nil
      assert {:ok, pid} = Shoal.ensure_started(pool, "ghost")
      assert Shoal.ensure_started_async(pool, "ghost") == :ok
      assert Shoal.cast_existing(pool, "ghost", {:add, 1}) == :ok
      assert Shoal.call_existing(pool, "ghost", :get, 1_000) == 1
      assert Shoal.stop_worker(pool, "ghost") == :ok
      refute Process.alive?(pid)
      assert Shoal.stop_worker(pool, "ghost") == {:error, :not_found}
    end

    @tag :no_pool
    test "start_pool takes a keyword list or a map, and says what is wrong", %{pool: pool} do
      assert {:ok, _} = Shoal.start_pool(pool, worker: FaceWorker, segments: 2, idle_timeout: 60_000)
      assert Shoal.call(pool, 1, :get) == 0
      assert {:error, {:already_started, _}} = Shoal.start_pool(pool, %{worker: FaceWorker})
      assert Shoal.stop_pool(pool) == :ok
      assert Shoal.stop_pool(pool) == {:error, {:no_such_pool, pool}}

      assert Shoal.start_pool(pool, []) == {:error, {:missing_option, :worker}}
      assert Shoal.start_pool(pool, worker: FaceWorker, colour: :red) == {:error, {:unknown_option, :colour}}
      assert Shoal.start_pool(pool, worker: FaceWorker, restart: :sometimes) ==
               {:error, {:bad_option, :restart, :sometimes}}
      assert Shoal.start_pool(pool, [:worker]) == {:error, {:bad_options, [:worker]}}
      assert Shoal.start_pool(pool, 42) == {:error, {:bad_options, 42}}
      assert Shoal.start_pool("pool", worker: FaceWorker) == {:error, {:bad_pool_name, "pool"}}
    end

    @tag :no_pool
    test "the Erlang API takes a keyword list too", %{pool: pool} do
      assert {:ok, _} = :shoal.start_pool(pool, worker: FaceWorker)
      assert :shoal.call(pool, :k, {:add, 1}) == 1
      assert :shoal.stop_pool(pool) == :ok
    end

    test "set_target takes a keyword list", %{pool: pool} do
      assert Shoal.set_target(pool, node(), target: 100, high: 200) == :ok
      assert %{total: 0, nodes: %{} = nodes} = Shoal.health(pool)
      assert nodes[node()].window == %{low: 0, target: 100, high: 200}
      assert Shoal.set_target(pool, node(), low: -1) == {:error, {:bad_window, %{low: -1}}}
      assert Shoal.set_target(pool, node(), [:high]) == {:error, {:bad_window, [:high]}}
    end

    test "the single-node cluster operations answer", %{pool: pool} do
      {:ok, pid} = Shoal.ensure_started(pool, "here")
      assert Shoal.migrate(pool, "here", node()) == {:ok, pid}
      assert Shoal.migrate(pool, "here", :nowhere@nohost) == {:error, {:not_a_member, :nowhere@nohost}}
      assert Shoal.undrain(pool, node()) == :ok
      assert {:ok, %{moved: 0}} = Shoal.rebalance(pool)
    end
  end

  describe "Shoal.Pool as a child spec" do
    @tag :no_pool
    test "{Shoal.Pool, name: ..., worker: ...} runs pools in the user's supervisor", %{pool: pool} do
      other = unique_pool()

      children = [
        {Shoal.Pool, name: pool, worker: FaceWorker},
        {Shoal.Pool, name: other, worker: FaceWorker, idle_timeout: 60_000}
      ]

      {:ok, sup} = Supervisor.start_link(children, strategy: :one_for_one)
      assert Shoal.call(pool, "x", {:add, 1}) == 1
      assert Shoal.call(other, "x", {:add, 5}) == 5
      ids = for {id, pid, :supervisor, _} <- Supervisor.which_children(sup), is_pid(pid), do: id
      assert Enum.sort(ids) == Enum.sort([{:shoal_pool, pool}, {:shoal_pool, other}])

      worker = Shoal.whereis(pool, "x")
      Process.unlink(sup)
      ref = Process.monitor(sup)
      Supervisor.stop(sup)
      assert_receive {:DOWN, ^ref, :process, ^sup, _}
      refute Process.alive?(worker)
    end

    test "a spec without a name raises, bad options fail the start" do
      assert_raise ArgumentError, ~r/name/, fn -> Shoal.Pool.child_spec(worker: FaceWorker) end
      assert Shoal.Pool.start_link(name: :face_bad_pool, worker: FaceWorker, segments: 0) ==
               {:error, {:bad_option, :segments, 0}}
    end

    test "segments answer Supervisor.count_children/1 and which_children/1", %{pool: pool} do
      for i <- 1..10, do: Shoal.call(pool, i, :get)
      [{_, pool_sup, :supervisor, _}] =
        for {{:shoal_pool, ^pool}, _, _, _} = c <- Supervisor.which_children(:shoal_sup), do: c

      segs = for {{:segment, _}, pid, :supervisor, _} <- Supervisor.which_children(pool_sup), do: pid
      counts = Enum.map(segs, &Supervisor.count_children/1)
      assert Enum.sum(Enum.map(counts, & &1.workers)) == 10
      assert Enum.all?(counts, &(&1.supervisors == 0 and &1.specs == 1))
      kids = Enum.flat_map(segs, &Supervisor.which_children/1)
      assert length(kids) == 10
      assert Enum.all?(kids, &match?({:undefined, pid, :worker, [FaceWorker]} when is_pid(pid), &1))
    end
  end

  describe "use Shoal.Worker" do
    setup %{pool: pool} do
      # a second pool whose worker defines init/2 only
      minimal = :"#{pool}_minimal"
      {:ok, _} = Shoal.start_pool(minimal, worker: ShoalElixirTest.MinimalWorker)
      on_exit(fn -> Shoal.stop_pool(minimal) end)
      {:ok, pool: minimal}
    end

    test "an unexpected call stops the worker with {:bad_call, msg}, and is logged", %{pool: pool} do
      {:ok, pid} = Shoal.ensure_started(pool, "w")

      log =
        capture_log(fn ->
          assert {{:bad_call, :nonsense}, _} = catch_exit(Shoal.call(pool, "w", :nonsense))
        end)

      assert log =~ "handle_call/3 received an unexpected message: :nonsense"
      refute Process.alive?(pid)
      assert {:ok, new} = Shoal.ensure_started(pool, "w")
      assert new != pid
    end

    test "an unexpected cast stops the worker with {:bad_cast, msg}", %{pool: pool} do
      {:ok, pid} = Shoal.ensure_started(pool, "c")
      ref = Process.monitor(pid)

      log =
        capture_log(fn ->
          Shoal.cast(pool, "c", :nonsense)
          assert_receive {:DOWN, ^ref, :process, ^pid, {:bad_cast, :nonsense}}, 1_000
        end)

      assert log =~ "handle_cast/2 received an unexpected message: :nonsense"
    end

    test "an unexpected message is logged and dropped; the worker goes on", %{pool: pool} do
      {:ok, pid} = Shoal.ensure_started(pool, "i")

      log =
        capture_log(fn ->
          send(pid, :stray)
          # a call that round-trips the worker after the stray message was handled
          assert :sys.get_state(pid) != nil
        end)

      assert log =~ "handle_info/2 received an unexpected message: :stray"
      assert Shoal.whereis(pool, "i") == pid
    end

    test "it makes @impl checked against :shoal_worker's callbacks" do
      src = """
      defmodule ShoalFaceTest.ImplChecked do
        use Shoal.Worker
        @impl true
        def init(_key, _args), do: {:ok, nil}
        @impl true
        def not_a_callback(x), do: x
      end
      """

      warnings = capture_io(:stderr, fn -> Code.compile_string(src) end)
      assert warnings =~ ~s(got "@impl true" for function not_a_callback/1 but no behaviour specifies such callback)
    end

    test "it warns when the required init/2 is missing" do
      src = "defmodule ShoalFaceTest.NoInit do\n  use Shoal.Worker\nend\n"
      warnings = capture_io(:stderr, fn -> Code.compile_string(src) end)
      assert warnings =~ "function init/2 required by behaviour :shoal_worker is not implemented"
    end

    test "it defines no optional callback whose presence changes Shoal's behaviour" do
      exported = FaceWorker.__info__(:functions)
      for f <- [load: 2, idle: 1, terminate: 2, handoff: 1, takeover: 3, conflict: 3],
          do: refute(f in exported, "use Shoal.Worker must not define #{inspect(f)}")
    end
  end

  describe "{:via, Shoal, {pool, key}}" do
    test "GenServer.call/cast/whereis reach the key's worker, starting it", %{pool: pool} do
      name = {:via, Shoal, {pool, "v"}}
      assert Shoal.whereis(pool, "v") == nil
      assert GenServer.call(name, {:add, 4}) == 4
      assert GenServer.cast(name, {:add, 1}) == :ok
      assert GenServer.call(name, :get) == 5
      assert GenServer.whereis(name) == Shoal.whereis(pool, "v")
      assert GenServer.call({:via, Shoal, {pool, "fresh"}}, :key) == "fresh"
    end

    test "a name whose worker cannot exist is :undefined: noproc, badarg", %{pool: pool} do
      missing = {:via, Shoal, {:face_no_such_pool, "k"}}
      assert Shoal.whereis_name({:face_no_such_pool, "k"}) == :undefined
      assert Shoal.whereis_name(:not_a_pair) == :undefined
      assert {:noproc, _} = catch_exit(GenServer.call(missing, :get))
      assert GenServer.whereis(missing) == nil
      assert {:badarg, {{:face_no_such_pool, "k"}, :hi}} = catch_exit(Shoal.send({:face_no_such_pool, "k"}, :hi))
      assert Shoal.send({pool, "s"}, {:"$gen_cast", {:add, 2}}) == Shoal.whereis(pool, "s")
      assert Shoal.call(pool, "s", :get) == 2
    end

    test "register_name/2 answers :no, so a process started elsewhere cannot take the name",
         %{pool: pool} do
      assert Shoal.register_name({pool, "r"}, self()) == :no
      assert Shoal.unregister_name({pool, "r"}) == :ok

      assert {:error, {:already_started, pid}} =
               Agent.start_link(fn -> :mine end, name: {:via, Shoal, {pool, "r"}})

      assert pid == Shoal.whereis(pool, "r")
    end
  end

  describe "docs" do
    test "h Shoal.call shows the doc and the spec" do
      out = capture_io(fn -> require IEx.Helpers; IEx.Helpers.h(Shoal.call()) end)
      assert out =~ "def call(pool, key, msg, timeout \\\\ 5000)"
      assert out =~ "Calls the worker for `key`, spawning it first if there is none."
      assert out =~ "@spec call(pool(), key(), term(), timeout()) :: term()"
    end

    test "h shows the Erlang modules' docs (doc chunks from the edoc)" do
      out = capture_io(fn -> require IEx.Helpers; IEx.Helpers.h(:shoal.call()) end)
      assert out =~ "Call the worker for"
      out = capture_io(fn -> require IEx.Helpers; IEx.Helpers.h(:shoal_pool) end)
      assert out =~ "One pool's supervisor"
    end

    test "every public function of the Elixir and Erlang APIs has a doc" do
      for mod <- [Shoal, Shoal.Pool, Shoal.Worker, :shoal, :shoal_pool, :shoal_worker] do
        {:docs_v1, _, _, _, moddoc, _, docs} = Code.fetch_docs(mod)
        assert is_map(moddoc), "#{inspect(mod)} has no module doc"

        undocumented =
          for {{kind, name, arity}, _, _, doc, _} <- docs,
              kind == :function,
              doc == :none,
              do: {name, arity}

        assert undocumented == [], "#{inspect(mod)}: no doc for #{inspect(undocumented)}"
      end
    end
  end
end
