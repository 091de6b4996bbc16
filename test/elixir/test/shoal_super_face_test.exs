defmodule ShoalSuperFaceTest do
  # Shoal.Super, the Elixir face of :shoal_super, used as its docs tell an Elixir user to:
  # `use Shoal.Super` and `{Shoal.Super, name: ...}` as children of an ExUnit supervisor,
  # GenServer modules as group members and standalone workers, keyword options at every
  # level, real crashes and restarts, a chain with back-pressure and every on_finish
  # outcome. Waits are bounded polls; steps are held with an atomics gate, never a sleep.
  use ExUnit.Case, async: false
  @moduletag :capture_log

  # How long a message may take to arrive on a loaded machine (not a performance bound).
  @wait 2_000

  alias ShoalElixirTest.{Game, Player, SuperBodies}

  describe "use Shoal.Super" do
    setup do
      Process.register(self(), :face_game_outcomes)
      :ok
    end

    test "a child of an ExUnit supervisor: what use declares runs, driven through the module" do
      pid = start_supervised!(Game)
      assert Game.super_name() == :face_game
      assert Process.whereis(:face_game) == pid
      assert Game.child_spec([]).id == {:shoal_super, :face_game}

      # group members declared as {GenServer, arg} and as a bare GenServer module
      assert {:ok, [host: host, guest: guest]} = Game.group_workers(:lobby)
      assert GenServer.call(host, :label) == :host
      assert GenServer.call(guest, :label) == []
      assert Game.broadcast(:lobby, {:ping, self()}) == :ok
      assert_receive {:pong, :host, ^host}, @wait
      assert_receive {:pong, :guest, ^guest}, @wait
      assert Game.send_to_group(:arena, :referee, {:ping, self()}) == :ok
      assert_receive {:pong, :referee, _}, @wait
      assert Game.send_to_random(:arena, {:ping, self()}) == :ok
      assert_receive {:pong, :referee, _}, @wait

      # the declared chain: a fun step with two workers, then an {m, f, a} step
      for n <- 1..20, do: assert(Game.send_to_chain(:scores, n) == :ok)
      outcomes = for _ <- 1..20, do: assert_receive({:ok, {:score, _}}, @wait) |> elem(1)
      assert Enum.sort(outcomes) == for(n <- 1..20, do: {:score, 2 * n})
      assert Game.send_to_step(:scores, :tag, :skipped, 1_000) == :ok
      assert_receive {:ok, {:score, :skipped}}, @wait
      assert {:ok, %{in_flight: 0, steps: [%{id: :double, workers: 2}, %{id: :tag, workers: 1}]}} =
               Game.chain_info(:scores)

      # the declared standalone worker, and run-time additions through the module
      assert {:ok, [janitor: _]} = Game.workers()
      assert Game.send_to_worker(:janitor, {:ping, self()}) == :ok
      assert_receive {:pong, :janitor, _}, @wait
      assert :ok = Game.add_group(:bench)
      assert {:ok, sub} = Game.add_group_worker(:bench, {Player, :sub}, id: :sub)
      assert Game.remove_group_worker(:bench, :sub) == :ok
      refute Process.alive?(sub)
      assert Game.remove_group(:bench) == :ok
      assert Game.add_chain(:more) == :ok
      assert Game.add_chain_step(:more, &(&1 + 1), id: :inc) == :ok
      assert Game.remove_chain(:more) == :ok
      assert {:ok, w} = Game.add_worker({SuperBodies, :echo, [:extra]}, id: :extra)
      assert Game.remove_worker(:extra) == :ok
      refute Process.alive?(w)

      assert stop_supervised({:shoal_super, :face_game}) == :ok
      assert Game.workers() == {:error, {:no_such_supervisor, :face_game}}
    end

    test "a crash in a GenServer member restarts exactly its one_for_all group" do
      start_supervised!(Game)
      {:ok, [host: host, guest: guest]} = Game.group_workers(:lobby)
      {:ok, [referee: referee]} = Game.group_workers(:arena)
      {:ok, [janitor: janitor]} = Game.workers()
      ref = Process.monitor(guest)

      send(host, :crash)
      assert_receive {:DOWN, ^ref, :process, ^guest, :shutdown}, @wait

      {:ok, [host: host2, guest: guest2]} =
        eventually(fn ->
          case Game.group_workers(:lobby) do
            {:ok, [host: h, guest: g]} = ok when is_pid(h) and is_pid(g) and h != host -> ok
            _ -> nil
          end
        end)

      assert Process.alive?(host2) and Process.alive?(guest2) and guest2 != guest
      assert GenServer.call(host2, :label) == :host
      assert Game.group_workers(:arena) == {:ok, [referee: referee]}
      assert Game.workers() == {:ok, [janitor: janitor]}
      assert Process.alive?(referee) and Process.alive?(janitor)
    end

    test "GenServer members reach their own group from inside" do
      start_supervised!(Game)
      {:ok, [host: host, guest: guest]} = Game.group_workers(:lobby)

      send(host, {:whoami, self()})
      assert_receive {:me, {:ok, %{sup: :face_game, group: :lobby, id: :host, owner: owner}}, :host}, @wait
      assert owner == node()

      send(host, {:ping_sibling, self()})
      assert_receive {:sent, :ok}, @wait
      assert_receive {:pong, :guest, ^guest}, @wait

      send(guest, {:ping_member, :host, self()})
      assert_receive {:sent, :ok}, @wait
      assert_receive {:pong, :host, ^host}, @wait

      send(guest, {:ping_all, self()})
      assert_receive {:sent, :ok}, @wait
      assert_receive {:pong, :host, ^host}, @wait
      assert_receive {:pong, :guest, ^guest}, @wait

      assert Shoal.Super.my_group() == {:error, :not_a_group_member}
      assert Shoal.Super.send_to_random_sibling(:x) == {:error, :not_a_group_member}
    end

    test "options given at start go over those of use; a bad declaration starts nothing" do
      start_supervised!({Game, name: :face_game_2, groups: [], workers: []}, id: :second)
      assert Shoal.Super.workers(:face_game_2) == {:ok, []}
      assert Shoal.Super.group_workers(:face_game_2, :lobby) == {:error, {:no_such_group, :lobby}}
      assert {:ok, %{steps: [_, _]}} = Shoal.Super.chain_info(:face_game_2, :scores)
      assert Game.workers() == {:error, {:no_such_supervisor, :face_game}}

      # refused before anything starts, as the run-time call would refuse it
      assert Game.start_link(name: :face_game_3, workers: [{Enum, [id: :x]}]) ==
               {:error, {:bad_worker_spec, Enum}}

      assert Game.start_link(name: :face_game_3, chains: [{:c, [max_queue: 0], []}]) ==
               {:error, {:bad_option, :max_queue, 0}}

      # refused while loading: the supervisor is stopped again
      twice = [{Player, [id: :a]}, {{Player, :again}, [id: :a]}]

      assert Game.start_link(name: :face_game_3, groups: [{:g, [], twice}]) ==
               {:error, {:declaration, {:group_worker, :g, :a}, {:already_exists, :a}}}

      assert Process.whereis(:face_game_3) == nil
    end
  end

  describe "groups" do
    setup do
      start_supervised!({Shoal.Super, name: :face_groups})
      :ok
    end

    test "one_for_one restarts just the member; a transient member that ends is nil" do
      assert Shoal.Super.add_group(:face_groups, :room) == :ok
      {:ok, a} = Shoal.Super.add_group_worker(:face_groups, :room, {Player, :a}, id: :a)
      {:ok, b} = Shoal.Super.add_group_worker(:face_groups, :room, Player, id: :b, restart: :transient)
      {:ok, c} = Shoal.Super.add_group_worker(:face_groups, :room, fn -> SuperBodies.echo(:c) end, id: :c)

      Process.exit(a, :kill)

      {:ok, [a: a2, b: ^b, c: ^c]} =
        eventually(fn ->
          case Shoal.Super.group_workers(:face_groups, :room) do
            {:ok, [a: p, b: _, c: _]} = ok when is_pid(p) and p != a -> ok
            _ -> nil
          end
        end)

      assert GenServer.call(a2, :label) == :a
      assert Shoal.Super.send_to_group(:face_groups, :room, :c, {:ping, self()}) == :ok
      assert_receive {:pong, :c, ^c}, @wait

      ref = Process.monitor(b)
      send(b, :done)
      assert_receive {:DOWN, ^ref, :process, ^b, :normal}, @wait
      # (the group's supervisor hears of the exit in its own time)
      eventually(fn -> Shoal.Super.group_workers(:face_groups, :room) == {:ok, [a: a2, b: nil, c: c]} end)
      assert Shoal.Super.send_to_group(:face_groups, :room, :b, :hello) == {:error, {:not_running, :b}}
      assert Shoal.Super.remove_group_worker(:face_groups, :room, :b) == :ok
      assert {:ok, [a: ^a2, c: ^c]} = Shoal.Super.group_workers(:face_groups, :room)
    end

    test "a group past its intensity ends alone" do
      :ok = Shoal.Super.add_group(:face_groups, :fragile, restart: :one_for_all, max_restarts: 0)
      :ok = Shoal.Super.add_group(:face_groups, :sturdy, %{})
      {:ok, f} = Shoal.Super.add_group_worker(:face_groups, :fragile, {Player, :f}, id: :f)
      {:ok, s} = Shoal.Super.add_group_worker(:face_groups, :sturdy, {Player, :s}, id: :s)

      send(f, :crash)

      eventually(fn ->
        Shoal.Super.send_to_random(:face_groups, :fragile, :x) == {:error, {:no_such_group, :fragile}}
      end)

      assert Shoal.Super.group_workers(:face_groups, :sturdy) == {:ok, [s: s]}
      assert Process.alive?(s)
    end

    test "bad input is an error, never a crash" do
      sup = :face_groups
      assert Shoal.Super.add_group(sup, :g, colour: :red) == {:error, {:unknown_option, :colour}}
      assert Shoal.Super.add_group(sup, :g, restart: :rest_for_one) ==
               {:error, {:bad_option, :restart, :rest_for_one}}
      assert Shoal.Super.add_group(sup, :g, "fast") == {:error, {:bad_options, "fast"}}
      assert Shoal.Super.add_group(sup, :g, placement: [node: node()]) == {:error, :no_cluster}
      assert Shoal.Super.add_group(sup, :g) == :ok
      assert Shoal.Super.add_group(sup, :g) == {:error, {:already_exists, :g}}
      assert Shoal.Super.add_group_worker(sup, :g, Player, []) == {:error, {:missing_option, :id}}
      assert Shoal.Super.add_group_worker(sup, :g, Enum, id: 1) == {:error, {:bad_worker_spec, Enum}}
      assert Shoal.Super.add_group_worker(sup, :g, {Enum, 1}, id: 1) ==
               {:error, {:bad_worker_spec, {Enum, 1}}}
      one_arg = fn _ -> :ok end
      assert Shoal.Super.add_group_worker(sup, :g, one_arg, id: 1) == {:error, {:bad_worker_spec, one_arg}}
      assert Shoal.Super.add_group_worker(sup, :nope, Player, id: 1) == {:error, {:no_such_group, :nope}}
      assert Shoal.Super.send_to_random(sup, :g, :x) == {:error, :no_workers}
      assert Shoal.Super.send_to_group(sup, :g, :w, :x) == {:error, {:no_such_worker, :w}}
      assert Shoal.Super.broadcast(:nope, :g, :x) == {:error, {:no_such_supervisor, :nope}}
      assert Shoal.Super.add_chain_step(sup, :c, :not_a_fun, id: :s) == {:error, {:bad_step_spec, :not_a_fun}}
      assert Shoal.Super.start_link(groups: []) == {:error, {:missing_option, :name}}
      assert Shoal.Super.start_link(nil) == {:error, {:bad_id, nil}}
      assert Shoal.Super.start_link(:face_groups) == {:error, {:already_started, Process.whereis(sup)}}
      assert_raise ArgumentError, fn -> Shoal.Super.child_spec(groups: []) end

      # nil where Erlang says undefined: no on_finish, no cluster
      assert Shoal.Super.add_chain(sup, :quiet, on_finish: nil) == :ok
      start_supervised!({Shoal.Super, name: :face_no_cluster, cluster: nil}, id: :no_cluster)
      assert Shoal.Super.add_group(:face_no_cluster, :g, placement: :spread) == {:error, :no_cluster}
      assert is_pid(Process.whereis(sup))
    end
  end

  describe "chains" do
    setup do
      start_supervised!({Shoal.Super, name: :face_chains})
      gate = :atomics.new(1, [])
      {:ok, gate: gate}
    end

    test "back-pressure at max_queue, and on_finish gets every outcome exactly once", %{gate: gate} do
      me = self()

      classify = fn
        {:drop, why} -> {:drop, why}
        {:fail, why} -> {:error, why}
        {:halt, why} -> {:stop, why}
        {:raise, _} -> raise "bad item"
        n when is_integer(n) -> wait(gate) && {:next, n}
      end

      :ok = Shoal.Super.add_chain(:face_chains, :orders, max_queue: 4, on_finish: &send(me, {:outcome, &1}))
      :ok = Shoal.Super.add_chain_step(:face_chains, :orders, classify, id: :classify)
      :ok = Shoal.Super.add_chain_step(:face_chains, :orders, fn n -> n * n end, id: :square)

      for item <- [{:drop, :dup}, {:fail, :invalid}, {:raise, 1}],
          do: assert(Shoal.Super.send_to_chain(:face_chains, :orders, item) == :ok)

      assert_receive {:outcome, {:dropped, :classify, :dup, {:drop, :dup}}}, @wait
      assert_receive {:outcome, {:error, :classify, :invalid, {:fail, :invalid}}}, @wait
      assert_receive {:outcome, {:crashed, :classify, {:error, %RuntimeError{message: "bad item"}}, {:raise, 1}}},
                     @wait

      # the gate is shut: four items fill the chain, a fifth is refused after its timeout
      for n <- 1..4, do: assert(Shoal.Super.send_to_chain(:face_chains, :orders, n) == :ok)
      assert Shoal.Super.send_to_chain(:face_chains, :orders, 5, 50) == {:error, :overloaded}
      assert {:ok, %{in_flight: 4, max_queue: 4}} = Shoal.Super.chain_info(:face_chains, :orders)

      # a sender that waits is let in once room frees
      waiting = Task.async(fn -> Shoal.Super.send_to_chain(:face_chains, :orders, 6, 5_000) end)
      refute Task.yield(waiting, 50)
      :atomics.put(gate, 1, 1)
      assert Task.await(waiting) == :ok

      oks = for _ <- 1..5, do: assert_receive({:outcome, {:ok, _}}, @wait) |> elem(1) |> elem(1)
      assert Enum.sort(oks) == [1, 4, 9, 16, 36]

      # entering mid-chain skips the steps before
      assert Shoal.Super.send_to_step(:face_chains, :orders, :square, 7) == :ok
      assert_receive {:outcome, {:ok, 49}}, @wait

      # {:stop, reason} ends the item and the chain
      assert Shoal.Super.send_to_chain(:face_chains, :orders, {:halt, :enough}) == :ok
      assert_receive {:outcome, {:stopped, :classify, :enough, {:halt, :enough}}}, @wait

      eventually(fn ->
        Shoal.Super.chain_info(:face_chains, :orders) == {:error, {:no_such_chain, :orders}}
      end)

      refute_receive {:outcome, _}, 100
    end

    test "a step auto-scales from workers: [min:, max:] and shrinks back when idle", %{gate: gate} do
      me = self()

      :ok = Shoal.Super.add_chain(:face_chains, :burst, on_finish: fn o -> send(me, o) end, max_queue: 100)

      :ok =
        Shoal.Super.add_chain_step(:face_chains, :burst, fn n -> wait(gate) && n end,
          id: :slow, workers: [min: 1, max: 3, scale_interval: 20, idle_after: 200])

      for n <- 1..30, do: :ok = Shoal.Super.send_to_chain(:face_chains, :burst, n)

      eventually(fn ->
        match?({:ok, %{steps: [%{workers: 3, min: 1, max: 3}]}}, Shoal.Super.chain_info(:face_chains, :burst))
      end)

      :atomics.put(gate, 1, 1)
      done = for _ <- 1..30, do: assert_receive({:ok, _}, @wait) |> elem(1)
      assert Enum.sort(done) == Enum.to_list(1..30)

      eventually(fn ->
        match?({:ok, %{steps: [%{workers: 1, processed: 30}]}}, Shoal.Super.chain_info(:face_chains, :burst))
      end)
    end
  end

  describe "standalone workers" do
    setup do
      start_supervised!({Shoal.Super, name: :face_solo})
      :ok
    end

    test "a GenServer worker: a crash restarts it alone, a transient one that ends is forgotten" do
      {:ok, p} = Shoal.Super.add_worker(:face_solo, {Player, :p}, id: :p, restart: :transient)
      {:ok, q} = Shoal.Super.add_worker(:face_solo, {SuperBodies, :echo, [:q]}, id: :q)
      ref = Process.monitor(p)

      send(p, :crash)
      assert_receive {:DOWN, ^ref, :process, ^p, {%RuntimeError{message: "player crashed"}, _}}, @wait

      p2 =
        eventually(fn ->
          with {:ok, ws} <- Shoal.Super.workers(:face_solo),
               %{p: p2, q: ^q} when p2 != p <- Map.new(ws),
               do: p2,
               else: (_ -> nil)
        end)

      assert GenServer.call(p2, :label) == :p
      assert Shoal.Super.send_to_worker(:face_solo, :p, {:ping, self()}) == :ok
      assert_receive {:pong, :standalone, ^p2}, @wait

      ref2 = Process.monitor(p2)
      send(p2, :done)
      assert_receive {:DOWN, ^ref2, :process, ^p2, :normal}, @wait

      eventually(fn ->
        Shoal.Super.send_to_worker(:face_solo, :p, :hi) == {:error, {:no_such_worker, :p}}
      end)

      assert Shoal.Super.workers(:face_solo) == {:ok, [q: q]}
      assert Shoal.Super.remove_worker(:face_solo, :q) == :ok
      assert Shoal.Super.workers(:face_solo) == {:ok, []}
      assert Shoal.Super.remove_worker(:face_solo, :q) == {:error, {:no_such_worker, :q}}
    end

    test "a worker past its intensity ends alone" do
      {:ok, fragile} = Shoal.Super.add_worker(:face_solo, Player, id: :fragile, max_restarts: 0)
      {:ok, other} = Shoal.Super.add_worker(:face_solo, Player, id: :other)
      send(fragile, :crash)
      eventually(fn -> Shoal.Super.workers(:face_solo) == {:ok, [other: other]} end)
      assert Process.alive?(other)
    end
  end

  test "cluster: a member placed through the host pool is a worker of that Shoal pool" do
    pool = :"face_hosts_#{System.unique_integer([:positive])}"
    assert Shoal.Super.start_host_pool(pool) == :ok
    on_exit(fn -> Shoal.stop_pool(pool) end)
    start_supervised!({Shoal.Super, name: :face_hosted, cluster: pool})

    :ok = Shoal.Super.add_group(:face_hosted, :far, placement: [node: node()])
    {:ok, m} = Shoal.Super.add_group_worker(:face_hosted, :far, {Player, :far}, id: :m)
    # the member runs under a worker of the host pool, which relays its messages
    {:dictionary, dict} = Process.info(m, :dictionary)
    [host | _] = dict[:"$ancestors"]
    assert {:ok, ^pool, _key} = Shoal.key_of(host)
    assert GenServer.call(m, :label) == :far
    assert Shoal.Super.send_to_group(:face_hosted, :far, :m, {:whoami, self()}) == :ok
    assert_receive {:me, {:ok, %{sup: :face_hosted, group: :far, id: :m}}, :far}, @wait
  end

  test "the module doc's example runs as written (Player for MyApp.Player)" do
    {:ok, _} = Shoal.Super.start_link(:shop)
    me = self()
    :ok = Shoal.Super.add_chain(:shop, :orders, on_finish: &send(me, &1), max_queue: 100)
    :ok = Shoal.Super.add_chain_step(:shop, :orders, &(&1 * 2), id: :double)
    :ok = Shoal.Super.add_chain_step(:shop, :orders, {Integer, :to_string, []},
            id: :format, workers: [min: 1, max: 4])
    :ok = Shoal.Super.send_to_chain(:shop, :orders, 21)
    assert_receive {:ok, "42"}, @wait

    :ok = Shoal.Super.add_group(:shop, :lobby, restart: :one_for_all)
    {:ok, pid} = Shoal.Super.add_group_worker(:shop, :lobby, {Player, :ann}, id: :ann)
    :ok = Shoal.Super.broadcast(:shop, :lobby, {:ping, self()})
    assert_receive {:pong, :ann, ^pid}, @wait
    assert Shoal.Super.stop(:shop) == :ok
    assert Shoal.Super.stop(:shop) == {:error, {:no_such_supervisor, :shop}}
  end

  test "every public function has a doc and a spec" do
    for mod <- [Shoal.Super, Game] do
      {:docs_v1, _, _, _, moddoc, _, docs} = Code.fetch_docs(mod)
      {:ok, specs} = Code.Typespec.fetch_specs(mod)
      specced = for {{name, arity}, _} <- specs, do: {name, arity}

      public =
        for {{:function, name, arity}, _, _, doc, _} <- docs, doc != :hidden, do: {name, arity, doc}

      assert is_map(moddoc) or mod == Game
      assert [] == for({n, a, :none} <- public, do: {n, a}), "#{inspect(mod)}: undocumented"
      assert [] == for({n, a, _} <- public, {n, a} not in specced, do: {n, a}), "#{inspect(mod)}: no spec"
    end

    {:docs_v1, _, _, _, _, _, docs} = Code.fetch_docs(Shoal.Super)
    assert [%{"en" => doc}] = for({{:function, :add_chain, 3}, _, _, d, _} <- docs, do: d)
    assert doc =~ "on_finish"
  end

  # Polls `fun` until it returns a truthy value (returned), for up to 5 s.
  defp eventually(fun, tries \\ 500) do
    case fun.() do
      result when result not in [nil, false] ->
        result

      _ when tries > 0 ->
        Process.sleep(10)
        eventually(fun, tries - 1)

      _ ->
        flunk("condition not reached in 5 s")
    end
  end

  # A step held until the test opens the gate.
  defp wait(gate) do
    if :atomics.get(gate, 1) == 1 do
      true
    else
      Process.sleep(1)
      wait(gate)
    end
  end
end
