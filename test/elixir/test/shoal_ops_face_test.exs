defmodule ShoalOpsFaceTest do
  # What an Elixir team sees of Shoal's workers in operation: init failures as exceptions,
  # in the log (Elixir's Logger) with pool and key metadata; the user's state in
  # :sys.get_status/1; Shoal.key_of/1; events through :shoal_telemetry; rebalance(:even).
  use ExUnit.Case, async: false
  import ExUnit.CaptureLog
  @moduletag :capture_log

  alias ShoalElixirTest.OpsWorker

  setup do
    pool = :"ops_face_#{System.unique_integer([:positive])}"
    {:ok, _} = Shoal.start_pool(pool, worker: OpsWorker)
    on_exit(fn -> Shoal.stop_pool(pool) end)
    {:ok, pool: pool}
  end

  test "an init/2 that raises is an exception to the caller and a log line", %{pool: pool} do
    log =
      capture_log([metadata: [:pool, :key]], fn ->
        assert {:error, {%ArgumentError{message: "no such account"}, [_ | _]}} =
                 Shoal.ensure_started(pool, {:raise, 1})

        exit = catch_exit(Shoal.call(pool, {:raise, 2}, :get))
        assert {{%ArgumentError{message: "no such account"}, _}, {:shoal, :call, _}} = exit
        assert Exception.format_exit(exit) =~ "** (ArgumentError) no such account"
      end)

    # the report's own line names pool and key (Elixir's Logger inspects them in Elixir
    # syntax); the pool is Logger metadata too
    assert log =~ ~r/shoal pool :#{pool} key {:raise,\s*1} on :#{node()}: worker_init_failed/
    assert log =~ "ArgumentError"
    assert log =~ "pool=#{pool}"
  end

  test ":sys.get_status/1 shows the user's state, formatted by its format_status/1", %{pool: pool} do
    {:ok, pid} = Shoal.ensure_started(pool, "ann")
    {:status, ^pid, _, [_pdict, _, _, _, misc]} = :sys.get_status(pid)
    assert [%{key: "ann", token: "***"}] = for({:data, d} <- misc, {~c"State", s} <- d, do: s)
    assert Shoal.call(pool, "ann", :get).token == "secret"
  end

  test "key_of/1 maps a worker's pid to its pool and key, nil otherwise", %{pool: pool} do
    {:ok, pid} = Shoal.ensure_started(pool, {:user, 7})
    assert Shoal.key_of(pid) == {:ok, pool, {:user, 7}}
    assert Shoal.key_of(self()) == nil
    assert :proc_lib.translate_initial_call(pid) == {OpsWorker, :init, 2}
  end

  test "events reach a handler attached from Elixir", %{pool: pool} do
    me = self()
    id = {__MODULE__, pool}

    :ok =
      :shoal_telemetry.attach_many(id, [[:shoal, :worker, :spawn], [:shoal, :call, :stop]],
        fn event, measurements, meta, _ -> send(me, {event, measurements, meta}) end, nil)

    try do
      assert Shoal.call(pool, "bob", :get).key == "bob"
      assert_receive {[:shoal, :worker, :spawn], %{system_time: _}, %{pool: ^pool, key: "bob"}}
      assert_receive {[:shoal, :call, :stop], %{duration: d}, %{pool: ^pool, key: "bob"}}
      assert d >= 0
    after
      :shoal_telemetry.detach(id)
    end
  end

  test "rebalance takes :windows or :even", %{pool: pool} do
    assert Shoal.rebalance(pool) == {:ok, %{moved: 0}}
    assert Shoal.rebalance(pool, :even) == {:ok, %{moved: 0}}
    assert Shoal.rebalance(pool, :sideways) == {:error, {:bad_rebalance, :sideways}}
  end
end
