defmodule ShoalTest do
  # Shoal used from Elixir the way the README tells an Elixir user to: the Erlang API as
  # `:shoal.*`, a worker module written in Elixir, pools under `:shoal` or under the user's
  # own Supervisor.
  use ExUnit.Case, async: false
  @moduletag :capture_log

  alias ShoalElixirTest.CounterWorker

  setup context do
    pool = :"elixir_pool_#{System.unique_integer([:positive])}"
    extra = context[:pool_opts] || %{}
    args = [test_pid: self()] ++ Map.get(extra, :args, [])
    opts = Map.merge(%{worker: CounterWorker}, extra) |> Map.put(:args, args)

    if context[:no_pool] do
      {:ok, pool: pool, opts: opts}
    else
      {:ok, _pid} = :shoal.start_pool(pool, opts)
      on_exit(fn -> :shoal.stop_pool(pool) end)
      {:ok, pool: pool, opts: opts}
    end
  end

  # Polls `fun` until it returns a truthy value (or fails after `ms`).
  defp eventually(fun, ms \\ 2_000) do
    deadline = System.monotonic_time(:millisecond) + ms
    poll(fun, deadline)
  end

  defp poll(fun, deadline) do
    cond do
      result = fun.() -> result
      System.monotonic_time(:millisecond) > deadline -> flunk("condition not met in time")
      true -> Process.sleep(10) && poll(fun, deadline)
    end
  end

  describe "routing" do
    test "the first call spawns the worker and later calls reach the same state", %{pool: pool} do
      assert :shoal.whereis(pool, "alice") == :undefined
      assert :shoal.count(pool) == 0

      assert :shoal.call(pool, "alice", {:add, 1}) == 1
      assert :shoal.call(pool, "alice", {:add, 2}) == 3
      assert :shoal.call(pool, "bob", :get) == 0

      pid = :shoal.whereis(pool, "alice")
      assert is_pid(pid) and Process.alive?(pid)
      assert :shoal.call(pool, "alice", :self) == pid
      assert :shoal.count(pool) == 2
    end

    test "any term is a key: tuples, integers, binaries stay distinct", %{pool: pool} do
      keys = [{:user, 1}, 1, "1", :one, [1], 1.0]
      for {k, i} <- Enum.with_index(keys, 1), do: assert(:shoal.call(pool, k, {:add, i}) == i)
      for {k, i} <- Enum.with_index(keys, 1), do: assert(:shoal.call(pool, k, :get) == i)
      assert :shoal.count(pool) == length(keys)
    end

    test "cast spawns the worker and is delivered before a later call", %{pool: pool} do
      assert :shoal.cast(pool, "carol", {:add, 5}) == :ok
      assert :shoal.cast(pool, "carol", {:add, 5}) == :ok
      assert :shoal.call(pool, "carol", :get) == 10
    end

    test "plain messages sent to the pid reach handle_info", %{pool: pool} do
      {:ok, pid} = :shoal.ensure_started(pool, "dave")
      send(pid, {:add, 7})
      assert :shoal.call(pool, "dave", :get) == 7
      # and the worker is a GenServer to anyone holding its pid
      assert GenServer.call(pid, {:add, 1}) == 8
    end

    test "call_existing and cast_existing never spawn", %{pool: pool} do
      assert :shoal.call_existing(pool, "ghost", :get) == {:error, :not_found}
      assert :shoal.call_existing(pool, "ghost", :get, 1_000) == {:error, :not_found}
      assert :shoal.cast_existing(pool, "ghost", {:add, 1}) == {:error, :not_found}
      assert :shoal.whereis(pool, "ghost") == :undefined
      assert :shoal.count(pool) == 0

      assert :shoal.call(pool, "ghost", {:add, 1}) == 1
      assert :shoal.cast_existing(pool, "ghost", {:add, 1}) == :ok
      assert :shoal.call_existing(pool, "ghost", :get) == 2
    end

    test "a call that outlives its timeout exits like GenServer.call", %{pool: pool} do
      assert {:timeout, _} = catch_exit(:shoal.call(pool, "slow", {:sleep, 300}, 50))
      # the worker itself is fine and answers the next call
      assert :shoal.call(pool, "slow", :get, 5_000) == 0
    end
  end

  describe "spawning" do
    test "ensure_started returns the live pid, and the same one every time", %{pool: pool} do
      assert {:ok, pid} = :shoal.ensure_started(pool, "erin")
      assert {:ok, ^pid} = :shoal.ensure_started(pool, "erin")
      assert :shoal.whereis(pool, "erin") == pid
    end

    test "ensure_started_async returns at once and the worker appears", %{pool: pool} do
      assert :shoal.ensure_started_async(pool, "frank") == :ok
      pid = eventually(fn -> pid_or_nil(:shoal.whereis(pool, "frank")) end)
      assert :shoal.call(pool, "frank", :self) == pid
    end

    test "many Tasks racing on one key all get the same pid", %{pool: pool} do
      racers = 2 * System.schedulers_online() * 50

      pids =
        1..racers
        |> Enum.map(fn i ->
          Task.async(fn ->
            if rem(i, 2) == 0,
              do: elem(:shoal.ensure_started(pool, "hot"), 1),
              else: :shoal.call(pool, "hot", :self)
          end)
        end)
        |> Task.await_many(10_000)

      assert [pid] = Enum.uniq(pids)
      assert :shoal.whereis(pool, "hot") == pid
      assert :shoal.count(pool) == 1
      assert :shoal.stats(pool).spawns == 1
    end

    test "racing Tasks on many keys: every increment lands, one worker per key", %{pool: pool} do
      keys = for i <- 1..200, do: {:room, i}

      1..8
      |> Enum.map(fn _ ->
        Task.async(fn -> for k <- Enum.shuffle(keys), do: :shoal.call(pool, k, {:add, 1}) end)
      end)
      |> Task.await_many(20_000)

      assert :shoal.count(pool) == 200
      for k <- keys, do: assert(:shoal.call(pool, k, :get) == 8)
      assert :shoal.stats(pool).spawns == 200
    end
  end

  describe "worker life cycle" do
    test "load/2 runs once, before the first message, not at spawn", %{pool: pool} do
      {:ok, _pid} = :shoal.ensure_started(pool, "gina")
      refute_receive {:loaded, "gina"}, 100

      assert :shoal.call(pool, "gina", :loaded?) == true
      assert_received {:loaded, "gina"}
      assert :shoal.call(pool, "gina", :get) == 0
      refute_receive {:loaded, "gina"}, 50
    end

    @tag pool_opts: %{args: [fail_load: ["mallory"]]}
    test "a failing load/2 surfaces in the caller's exit and stops the worker", %{pool: pool} do
      {:ok, pid} = :shoal.ensure_started(pool, "mallory")
      ref = Process.monitor(pid)

      assert {{:shutdown, {:load_failed, :no_such_account}}, _} =
               catch_exit(:shoal.call(pool, "mallory", :get))

      assert_receive {:DOWN, ^ref, :process, ^pid, _}, 1_000
      eventually(fn -> :shoal.whereis(pool, "mallory") == :undefined end)
      assert :shoal.call(pool, "somebody_else", :get) == 0
    end

    test "stop_worker stops gracefully and the next call starts afresh", %{pool: pool} do
      assert :shoal.call(pool, "hank", {:add, 3}) == 3
      pid = :shoal.whereis(pool, "hank")

      assert :shoal.stop_worker(pool, "hank") == :ok
      assert_receive {:terminated, "hank", _reason}, 1_000
      refute Process.alive?(pid)
      eventually(fn -> :shoal.whereis(pool, "hank") == :undefined end)
      assert :shoal.stop_worker(pool, "hank") == {:error, :not_found}

      assert :shoal.call(pool, "hank", :get) == 0
      refute :shoal.whereis(pool, "hank") == pid
    end

    test "a worker that stops itself leaves no entry behind", %{pool: pool} do
      assert :shoal.call(pool, "ivan", :stop) == :ok
      eventually(fn -> :shoal.whereis(pool, "ivan") == :undefined end)
      assert :shoal.count(pool) == 0
      # the segment counts the exit when it handles it, after the table forgot the worker
      eventually(fn -> :shoal.stats(pool).normal_exits >= 1 end)
    end

    test "a crashed worker comes back lazily on its next message (restart: temporary)",
         %{pool: pool} do
      assert :shoal.call(pool, "judy", {:add, 4}) == 4
      pid = :shoal.whereis(pool, "judy")

      assert {{%RuntimeError{message: "boom"}, _}, _} = catch_exit(:shoal.call(pool, "judy", :crash))
      eventually(fn -> :shoal.whereis(pool, "judy") != pid end)

      assert :shoal.call(pool, "judy", :get) == 0
      assert :shoal.whereis(pool, "judy") != pid
      eventually(fn -> :shoal.stats(pool).crashes == 1 end)
    end

    test "killing a worker from outside: the next call gets a new one", %{pool: pool} do
      {:ok, pid} = :shoal.ensure_started(pool, "kim")
      Process.exit(pid, :kill)
      eventually(fn -> :shoal.whereis(pool, "kim") != pid end)
      new = :shoal.call(pool, "kim", :self)
      assert is_pid(new) and new != pid
    end

    @tag pool_opts: %{restart: :permanent}
    test "restart: :permanent brings a killed worker back without waiting for a message",
         %{pool: pool} do
      {:ok, pid} = :shoal.ensure_started(pool, "pat")
      Process.exit(pid, :kill)
      new = eventually(fn -> pid_or_nil(:shoal.whereis(pool, "pat")) |> then(&(&1 != pid && &1)) end)
      assert is_pid(new) and Process.alive?(new)
      assert :shoal.call(pool, "pat", :get) == 0
    end

    @tag pool_opts: %{restart: :transient}
    test "restart: :transient restarts a crash but not a normal stop", %{pool: pool} do
      {:ok, pid} = :shoal.ensure_started(pool, "quinn")
      Process.exit(pid, :kill)
      eventually(fn -> pid_or_nil(:shoal.whereis(pool, "quinn")) |> then(&(&1 != pid && &1)) end)

      assert :shoal.call(pool, "quinn", :stop) == :ok
      eventually(fn -> :shoal.whereis(pool, "quinn") == :undefined end)
      Process.sleep(100)
      assert :shoal.whereis(pool, "quinn") == :undefined
    end

    @tag pool_opts: %{idle_timeout: 150, args: [keep_idle: ["liam"]]}
    test "idle workers are offloaded unless idle/1 keeps them", %{pool: pool} do
      for k <- ["liam", "mia", "noah"], do: assert(:shoal.call(pool, k, {:add, 1}) == 1)
      assert :shoal.count(pool) == 3

      eventually(fn -> :shoal.count(pool) == 1 end)
      assert_receive {:idle, "mia"}, 1_000
      assert_receive {:idle, "liam"}, 1_000
      assert is_pid(:shoal.whereis(pool, "liam"))
      assert :shoal.whereis(pool, "mia") == :undefined
      assert :shoal.stats(pool).idle_offloads == 2
      # an offloaded key simply comes back on its next message
      assert :shoal.call(pool, "mia", :get) == 0
    end
  end

  describe "nothing lost in motion" do
    test "calls racing with stop_worker all get a reply", %{pool: pool} do
      callers =
        for _ <- 1..4 do
          Task.async(fn ->
            for _ <- 1..2_000, do: :shoal.call(pool, "busy", {:add, 1})
          end)
        end

      stopper =
        Task.async(fn ->
          for _ <- 1..100 do
            :shoal.stop_worker(pool, "busy")
            Process.sleep(1)
          end
        end)

      replies = callers |> Task.await_many(30_000) |> List.flatten()
      Task.await(stopper, 30_000)
      assert length(replies) == 8_000
      assert Enum.all?(replies, &is_integer/1)
    end

    @tag pool_opts: %{idle_timeout: 1}
    test "calls racing with idle offload all get a reply", %{pool: pool} do
      replies =
        for i <- 1..2_000 do
          if rem(i, 50) == 0, do: Process.sleep(2)
          :shoal.call(pool, rem(i, 7), {:add, 1})
        end

      assert Enum.all?(replies, &is_integer/1)
      eventually(fn -> :shoal.count(pool) == 0 end)
      assert :shoal.stats(pool).idle_offloads > 0
    end

    test "casts racing with stop_worker are each delivered once", %{pool: pool} do
      # every cast lands in exactly one incarnation; terminate/2 reports each one's count
      for i <- 1..3_000 do
        :ok = :shoal.cast(pool, "tally", {:add, 1})
        if rem(i, 300) == 0, do: :shoal.stop_worker(pool, "tally")
      end

      last = :shoal.call(pool, "tally", :get)
      :ok = :shoal.stop_worker(pool, "tally")
      assert_receive {:terminated, "tally", _}, 1_000
      counted = collect_terminated("tally", 0)
      assert counted == 3_000, "#{counted} of 3000 casts counted (last incarnation had #{last})"
    end
  end

  describe "pools" do
    test "stats reports every counter", %{pool: pool} do
      for i <- 1..10, do: :shoal.call(pool, i, :get)
      :shoal.stop_worker(pool, 1)
      eventually(fn -> :shoal.count(pool) == 9 end)

      stats = :shoal.stats(pool)

      for k <- [:live, :spawns, :normal_exits, :crashes, :crashes_per_minute, :idle_offloads, :call_timeouts],
          do: assert(Map.has_key?(stats, k), "stats lacks #{k}")

      assert stats.live == 9
      assert stats.spawns == 10
      assert stats.crashes == 0
    end

    test "stop_pool stops every worker", %{pool: pool} do
      pids = for i <- 1..50, do: elem(:shoal.ensure_started(pool, i), 1)
      assert :shoal.stop_pool(pool) == :ok
      refute Enum.any?(pids, &Process.alive?/1)
      assert :shoal.stop_pool(pool) == {:error, {:no_such_pool, pool}}
    end

    @tag :no_pool
    test "an unknown pool is an error, and call/cast exit", %{pool: pool} do
      assert :shoal.stop_pool(pool) == {:error, {:no_such_pool, pool}}
      assert catch_exit(:shoal.call(pool, "k", :get)) != nil
    end

    @tag :no_pool
    test "a pool lives in the user's own Supervisor via :shoal_pool.child_spec/2",
         %{pool: pool, opts: opts} do
      {:ok, sup} = Supervisor.start_link([:shoal_pool.child_spec(pool, opts)], strategy: :one_for_one)

      assert :shoal.call(pool, "olga", {:add, 2}) == 2
      assert [{_id, pool_pid, _type, _mods}] = Supervisor.which_children(sup)
      assert is_pid(pool_pid)
      worker = :shoal.whereis(pool, "olga")

      Process.unlink(sup)
      ref = Process.monitor(sup)
      Supervisor.stop(sup)
      assert_receive {:DOWN, ^ref, :process, ^sup, _}
      refute Process.alive?(worker)
      assert catch_exit(:shoal.call(pool, "olga", :get)) != nil
    end
  end

  # Sums the final counts that terminate/2 reported for Key (see CounterWorker).
  defp collect_terminated(key, acc) do
    receive do
      {:final_count, ^key, n} -> collect_terminated(key, acc + n)
    after
      200 -> acc
    end
  end

  defp pid_or_nil(pid) when is_pid(pid), do: pid
  defp pid_or_nil(_), do: nil
end
