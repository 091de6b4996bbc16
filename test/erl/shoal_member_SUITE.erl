%% shoal_member_SUITE: the member protocol's guarantees while membership changes
%% (docs/protocol.md), on real OTP peer nodes (shoal_test_cluster).
%%
%% The scenarios a user meets after every deploy are repeated ?REPEAT times each (50 by
%% default; SHOAL_REPEAT overrides): callers racing on a cluster whose mesh is still
%% forming, nodes that start their pool before they are connected (with a quorum), and
%% migrations racing a node's join. The other cases pin down read-your-writes, the
%% ensure_started/2 contract, re-learning a dead replica, hidden members and the smaller
%% contracts of issue #7.
-module(shoal_member_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, groups/0, suite/0, init_per_suite/1, end_per_suite/1, init_per_group/2,
         end_per_group/2, init_per_testcase/2, end_per_testcase/2]).
-export([callers_racing_a_forming_mesh_get_one_worker/1,
         nodes_started_apart_with_a_quorum_get_one_worker/1,
         a_stale_announcement_never_displaces_a_successor/1,
         a_remote_spawn_reads_its_own_writes/1,
         ensure_started_racers_all_get_the_init_failure/1,
         ensure_started_racers_all_wait_for_a_slow_init/1,
         a_remote_caller_whose_worker_is_killed_in_init_gets_the_reason/1,
         a_bad_timeout_fails_before_anything_is_spawned/1,
         concurrent_migrations_to_one_node_agree/1, a_call_a_moved_worker_held_runs_once/1,
         calls_racing_migrations_run_once/1,
         a_dead_pid_in_a_replica_is_relearnt/1,
         a_hidden_node_becomes_a_member/1,
         an_ei_node_that_cannot_answer_does_not_hold_agreement_back/1,
         membership_agreement_is_observable/1,
         a_caller_whose_home_dies_mid_spawn_starts_over/1,
         a_replica_of_a_lost_node_no_longer_hides_an_older_owner/1,
         a_move_whose_target_dies_after_registering_a_successor_keeps_its_worker/1]).
-export([p_put_newer/5, p_idle/0, p_lookup/2, p_member/2, p_move_batch/3]).
-export([a_member_pinned_to_version_1_converges_through_drains_and_moves/1]).
-export([p_start_all/2, p_local_keys/1, p_dump/1, p_call_all/2]).
-export([p_start_and_race/5, p_race/5, p_hammer/3, p_stop/1, p_poke_stale/3, p_put_stale/4,
         p_migrate_when_member/3, p_spawn_on/3, p_call_held_by_a_move/3,
         p_call_loop/3, p_stop_loop/1, p_bounce/4, p_ballast/2, p_timed_ensure/2]).

-define(WORKER, shoal_counter_worker).
-define(CALL_TIMEOUT, 60000).

suite() -> [{timetrap, {minutes, 5}}].

all() -> [{group, forming}, {group, formed}, {group, hidden}, {group, loss}].

groups() ->
    [{forming, [],
      [callers_racing_a_forming_mesh_get_one_worker,
       nodes_started_apart_with_a_quorum_get_one_worker,
       a_stale_announcement_never_displaces_a_successor]},
     {formed, [],
      [a_remote_spawn_reads_its_own_writes,
       ensure_started_racers_all_get_the_init_failure,
       ensure_started_racers_all_wait_for_a_slow_init,
       a_remote_caller_whose_worker_is_killed_in_init_gets_the_reason,
       a_bad_timeout_fails_before_anything_is_spawned,
       concurrent_migrations_to_one_node_agree,
       a_call_a_moved_worker_held_runs_once,
       calls_racing_migrations_run_once,
       a_dead_pid_in_a_replica_is_relearnt,
       membership_agreement_is_observable,
       a_member_pinned_to_version_1_converges_through_drains_and_moves]},
     {hidden, [], [a_hidden_node_becomes_a_member,
                   an_ei_node_that_cannot_answer_does_not_hold_agreement_back]},
     {loss, [], [a_caller_whose_home_dies_mid_spawn_starts_over,
                 a_replica_of_a_lost_node_no_longer_hides_an_older_owner,
                 a_move_whose_target_dies_after_registering_a_successor_keeps_its_worker]}].

init_per_suite(Config) ->
    Paths = shoal_test_cluster:code_paths([?MODULE, ?WORKER, shoal_slow_init_worker,
                                           shoal_chaos_worker]),
    Repeat = case os:getenv("SHOAL_REPEAT") of
                 false -> 50;
                 N -> list_to_integer(N)
             end,
    [{paths, Paths}, {repeat, Repeat} | Config].

end_per_suite(_Config) -> ok.

init_per_group(hidden, Config) ->
    Config;
init_per_group(loss, Config) ->
    Config;
init_per_group(Group, Config) ->
    Peers = shoal_test_cluster:start_peers(Group, 3, ?config(paths, Config)),
    ok = shoal_test_cluster:connect_all(Peers),
    [{peers, Peers} | Config].

end_per_group(hidden, _Config) -> ok;
end_per_group(loss, _Config) -> ok;
end_per_group(_, Config) -> shoal_test_cluster:stop_peers(?config(peers, Config)).

init_per_testcase(Case, Config) ->
    case lists:member(Case, element(3, lists:keyfind(formed, 1, groups()))) of
        true ->
            Pool = Case,
            Opts = maps:merge(#{worker => worker_of(Case), args => args_of(Case)},
                              opts_of(Case)),
            [ok = pcall(P, application, set_env, [shoal, protocol_vsn, V])
             || {P, V} <- pinned_of(Case, peers(Config))],
            [{ok, _} = pcall(P, shoal, start_pool, [Pool, Opts])
             || {P, _} <- peers(Config)],
            [ok = pcall(P, shoal, await_ready, [Pool, 5000]) || {P, _} <- peers(Config)],
            All = nodes_of(Config),
            [wait_until(fun() -> pcall(P, shoal, nodes, [Pool]) =:= All end, 5000, {members, N})
             || {P, N} <- peers(Config)],
            [{pool, Pool} | Config];
        false ->
            Config
    end.

end_per_testcase(Case, Config) ->
    case proplists:get_value(pool, Config) of
        undefined -> ok;
        Pool -> [catch pcall(P, shoal, stop_pool, [Pool]) || {P, _} <- peers(Config)], ok
    end,
    [catch pcall(P, application, unset_env, [shoal, protocol_vsn])
     || {P, _} <- pinned_of(Case, proplists:get_value(peers, Config, []))],
    ok.

%% The peers whose members a case starts speaking an older protocol version (a node of a
%% cluster being upgraded): [{Peer, Vsn}].
pinned_of(a_member_pinned_to_version_1_converges_through_drains_and_moves, [_, _, {PC, _}]) ->
    [{PC, 1}];
pinned_of(_, _) -> [].

opts_of(a_call_a_moved_worker_held_runs_once) -> #{handoff_grace => 100};
opts_of(calls_racing_migrations_run_once) -> #{handoff_grace => 0};
opts_of(_) -> #{}.

worker_of(Case) when Case =:= ensure_started_racers_all_get_the_init_failure;
                     Case =:= ensure_started_racers_all_wait_for_a_slow_init;
                     Case =:= a_remote_caller_whose_worker_is_killed_in_init_gets_the_reason ->
    shoal_slow_init_worker;
worker_of(calls_racing_migrations_run_once) -> shoal_chaos_worker;
worker_of(_) -> ?WORKER.

args_of(ensure_started_racers_all_get_the_init_failure) ->
    #{delay => 150, outcome => {stop, boom}};
args_of(ensure_started_racers_all_wait_for_a_slow_init) ->
    #{delay => 150, outcome => ok};
args_of(a_remote_caller_whose_worker_is_killed_in_init_gets_the_reason) ->
    #{delay => 3000, outcome => ok};
args_of(_) -> #{}.

%%% Forming clusters ----------------------------------------------------------------------

%% The deploy case of issue #7: B is connected to A and to C, but A and C are not connected
%% yet (OTP peers connect to each other some time after they connect to the first node).
%% The pool starts on all three at once; as soon as each has met B's member (so none is
%% alone: a pool that meets nobody is a cluster of its own, see the `quorum' case below),
%% 100 callers on each node call a key nobody has spawned, while the members' views still
%% disagree (A sees A and B, C sees B and C, B sees all three); A and C connect a few ms
%% later. Every caller gets the same worker, and its init/2 ran once in the whole cluster.
%% Repeated with a fresh pool each round.
callers_racing_a_forming_mesh_get_one_worker(Config) ->
    [{PA, A}, {_, B}, {PC, C}] = Peers = peers(Config),
    Rounds = ?config(repeat, Config),
    Times = [begin
                 Pool = list_to_atom("mesh_" ++ integer_to_list(R)),
                 shoal_test_cluster:disconnect(PA, C),
                 shoal_test_cluster:wait_connected(PA, [B]),
                 shoal_test_cluster:wait_connected(PC, [B]),
                 Key = {mesh, R},
                 Delay = rand:uniform(30) - 1,
                 T0 = erlang:monotonic_time(millisecond),
                 Racers = [race_async(P, Pool, #{}, Key, 100, meet(N, B, [A, C]))
                           || {P, N} <- Peers],
                 timer:sleep(Delay),
                 shoal_test_cluster:connect(PA, C),
                 Results = lists:append([collect(R1) || R1 <- Racers]),
                 T1 = erlang:monotonic_time(millisecond),
                 one_worker(Peers, Key, Results),
                 [ok = pcall(P, shoal, stop_pool, [Pool]) || {P, _} <- Peers],
                 T1 - T0
             end || R <- lists:seq(1, Rounds)],
    ct:pal("~b rounds, each 300 callers on a forming mesh: one worker every time; "
           "race took ~p ms (median), ~p ms (max)", [Rounds, median(Times), lists:max(Times)]),
    ok.

%% Nodes that start their pool before they are connected to each other are separate
%% clusters (each would spawn its own worker) unless the pool has a quorum: with
%% `quorum => 3' no node places a new key until three members agree. All three links are
%% cut, the pool starts on each, 100 callers per node call one key, and the links come up
%% one by one in a random order: one worker, one init.
nodes_started_apart_with_a_quorum_get_one_worker(Config) ->
    [{PA, A}, {PB, B}, {_, C}] = Peers = peers(Config),
    Links = [{PA, B}, {PB, C}, {PA, C}],
    Rounds = ?config(repeat, Config),
    Waits = [begin
                 Pool = list_to_atom("apart_" ++ integer_to_list(R)),
                 [shoal_test_cluster:disconnect(P, N) || {P, N} <- Links],
                 [shoal_test_cluster:wait_connected(P, []) || {P, _} <- Peers],
                 Key = {apart, R},
                 T0 = erlang:monotonic_time(millisecond),
                 Racers = [race_async(P, Pool, #{quorum => 3}, Key, 100, none) || {P, _} <- Peers],
                 [begin timer:sleep(rand:uniform(20)), shoal_test_cluster:connect(P, N) end
                  || {_, {P, N}} <- lists:sort([{rand:uniform(), L} || L <- Links])],
                 Results = lists:append([collect(R1) || R1 <- Racers]),
                 one_worker(Peers, Key, Results),
                 [ok = pcall(P, shoal, stop_pool, [Pool]) || {P, _} <- Peers],
                 erlang:monotonic_time(millisecond) - T0
             end || R <- lists:seq(1, Rounds)],
    shoal_test_cluster:connect_all(Peers),
    _ = [A, B, C],
    ct:pal("~b rounds: one worker every time; callers waited ~p ms (median), ~p (max)",
           [Rounds, median(Waits), lists:max(Waits)]),
    ok.

%% The migration case of issue #7: A and B run the pool, 20 workers live on A (B takes
%% none) and a client keeps calling them. C starts the pool and, as soon as it is a member,
%% every worker is migrated from A to C — while A's sync to C (sent when they met, listing
%% the workers at their old version) may still be on its way. A stale announcement must
%% never make a successor step aside: afterwards every key has exactly one live worker, on
%% C; no conflict was ever detected; every acknowledged call is in the counters; and no
%% call failed.
a_stale_announcement_never_displaces_a_successor(Config) ->
    [{PA, A}, {PB, B}, {PC, C}] = Peers = peers(Config),
    shoal_test_cluster:connect_all(Peers),
    Rounds = ?config(repeat, Config),
    [pcall(P, ets, delete_all_objects, [shoal_test_events]) || {P, _} <- Peers],
    Keys = [{moving, I} || I <- lists:seq(1, 20)],
    lists:foreach(
      fun(R) ->
              Pool = list_to_atom("stale_" ++ integer_to_list(R)),
              [{ok, _} = pcall(P, shoal, start_pool, [Pool, #{worker => ?WORKER}])
               || P <- [PA, PB]],
              wait_until(fun() -> pcall(PA, shoal, nodes, [Pool]) =:= [A, B] end, 5000, ab),
              ok = pcall(PA, shoal, set_target, [Pool, B, #{high => 0}]),
              wait_until(fun() -> maps:get(high, shoal_view_window(PB, Pool, B)) =:= 0 end,
                         2000, window),
              [1 = pcall(PA, shoal, call, [Pool, K, incr]) || K <- Keys],
              %% Ballast: A's sync to C then takes a while, so migrations of the keys that
              %% come late in it overtake their entries.
              ok = pcall(PA, ?MODULE, p_ballast, [Pool, 20000]),
              [{ok, A, _} = pcall(PA, shoal, lookup, [Pool, K]) || K <- Keys],
              Hammer = pcall(PB, ?MODULE, p_hammer, [Pool, Keys, 10000]),
              Mover = pcall(PB, ?MODULE, p_migrate_when_member, [Pool, Keys, C]),
              {ok, _} = pcall(PC, shoal, start_pool, [Pool, #{worker => ?WORKER}]),
              Moves = p_stop_remote(PB, Mover),
              #{acked := Acked, per_key := PerKey, errors := Errors} = p_stop_remote(PB, Hammer),
              ?assertEqual({R, []}, {R, [M || {_, M} <- Moves, element(1, M) =/= ok]}),
              ?assertEqual({R, []}, {R, Errors}),
              [wait_until(fun() -> lists:usort([pcall(P, shoal, lookup, [Pool, K]) || {P, _} <- Peers])
                                       =:= [pcall(PC, shoal, lookup, [Pool, K])] end,
                          5000, {agreed, R, K}) || K <- Keys],
              Live = lists:append([pcall(P, ?MODULE, p_poke_stale, [Pool, Keys, moving]) || {P, _} <- Peers]),
              ?assertEqual({R, lists:sort(Keys)}, {R, lists:sort([K || {K, _} <- Live])}),
              ?assertEqual({R, [C]}, {R, lists:usort([node(P) || {_, P} <- Live])}),
              Conflicts = [E || {P, _} <- Peers, {conflict, K, _, _} = E <- pcall(P, ets, lookup, [shoal_test_events, conflict]),
                                lists:member(K, Keys)],
              ?assertEqual({R, []}, {R, Conflicts}),
              Values = [pcall(PC, shoal, call, [Pool, K, get]) || K <- Keys],
              ?assertEqual({R, [1 + maps:get(K, PerKey, 0) || K <- Keys]}, {R, Values}),
              Acked > 0 orelse ct:pal("round ~b: no call landed during the moves", [R]),
              [ok = pcall(P, shoal, stop_pool, [Pool]) || {P, _} <- Peers],
              [pcall(P, ets, delete_all_objects, [shoal_test_events]) || {P, _} <- Peers]
      end, lists:seq(1, Rounds)),
    ok.

%%% A formed cluster ----------------------------------------------------------------------

%% A call from A whose worker is placed on B or C returns only once A's own table has it:
%% whereis, lookup, count, migrate (to where it is) and stop_worker on A see it at once.
a_remote_spawn_reads_its_own_writes(Config) ->
    Pool = ?config(pool, Config),
    [{PA, A} | _] = peers(Config),
    Results = pcall(PA, ?MODULE, p_poke_stale, [Pool, [{rw, I} || I <- lists:seq(1, 300)], rw]),
    Remote = [K || {K, P} <- Results, node(P) =/= A],
    ct:pal("~b of 300 keys were placed on another node", [length(Remote)]),
    ?assert(length(Remote) > 100),
    ok.

%% 30 callers on each node call ensure_started/2 on a key whose init/2 fails after 150 ms:
%% every one of the 90 gets {error, boom}, none gets a pid.
ensure_started_racers_all_get_the_init_failure(Config) ->
    Pool = ?config(pool, Config),
    Results = race(Config, Pool, {failing, 1}, ensure_started, 30),
    ?assertEqual([{error, boom}], lists:usort(Results)),
    ok.

%% The same with an init/2 that succeeds after 150 ms: every caller gets the same pid, and
%% none returns before that init/2 is done (each answer comes at least 150 ms after the
%% race began).
ensure_started_racers_all_wait_for_a_slow_init(Config) ->
    Pool = ?config(pool, Config),
    Timed = race(Config, Pool, {slow, 1}, timed_ensure_started, 30),
    [{ok, Pid}] = lists:usort([R || {R, _} <- Timed]),
    ?assert(is_pid(Pid)),
    Early = [T || {_, T} <- Timed, T < 150],
    ?assertEqual([], Early),
    Inits = lists:append([pcall(P, ets, lookup, [shoal_test_events, init]) || {P, _} <- peers(Config)]),
    ?assertEqual(1, length([x || {init, {slow, 1}, _, _} <- Inits])),
    ok.

%% A caller on A starts a key whose home is C; C spawns the worker, which is killed while
%% its init/2 runs (3 s). The caller is owed an answer by the home, not by the worker (it
%% never got to answer): it gets the exit reason, `{error, killed}', not a timeout, and well
%% before the init/2 would have returned. 5 keys, one after another.
a_remote_caller_whose_worker_is_killed_in_init_gets_the_reason(Config) ->
    Pool = ?config(pool, Config),
    [{PA, _}, _, {PC, C}] = peers(Config),
    All = nodes_of(Config),
    Keys = lists:sublist([K || I <- lists:seq(1, 1000), K <- [{killed_in_init, I}],
                               pcall(PA, shoal_placement, home, [K, All]) =:= C], 5),
    lists:foreach(
      fun(Key) ->
              Self = self(),
              Caller = spawn_link(fun() ->
                                          Self ! {self(), pcall(PA, ?MODULE, p_timed_ensure,
                                                                [Pool, Key])}
                                  end),
              wait_until(fun() -> is_pid(pcall(PC, shoal, whereis, [Pool, Key])) end, 5000,
                         {spawned_on_home, Key}),
              Pid = pcall(PC, shoal, whereis, [Pool, Key]),
              true = pcall(PC, erlang, exit, [Pid, kill]),
              {Result, Ms} = receive {Caller, R} -> R end,
              ct:pal("~p: ~p after ~b ms", [Key, Result, Ms]),
              ?assertEqual({error, killed}, Result),
              ?assert(Ms < 3000)
      end, Keys).

%% call/4 with a timeout that is neither infinity nor a non-negative integer exits before
%% it does anything: no worker is spawned.
a_bad_timeout_fails_before_anything_is_spawned(Config) ->
    Pool = ?config(pool, Config),
    [{PA, _} | _] = peers(Config),
    #{spawns := Before} = pcall(PA, shoal, stats, [Pool]),
    Exit = pcall(PA, ?MODULE, p_race, [Pool, {bad_timeout}, bad_timeout, 1, now_ms()]),
    ?assertMatch([{exit, {{bad_timeout, -5}, {shoal, call, _}}}], Exit),
    ?assertEqual(undefined, pcall(PA, shoal, whereis, [Pool, {bad_timeout}])),
    #{spawns := Before} = pcall(PA, shoal, stats, [Pool]),
    ok.

%% A worker on A, known on B, is migrated to C from A and from B at the same moment, 20 times: both get
%% {ok, Pid} for the same pid on C (B's migrate may reach the old incarnation through a
%% replica that still names it: it follows it to the successor, which is already on C).
concurrent_migrations_to_one_node_agree(Config) ->
    Pool = ?config(pool, Config),
    [{PA, A}, {PB, _}, {PC, C}] = peers(Config),
    lists:foreach(
      fun(I) ->
              Key = {mig, I},
              {Old, A} = pcall(PA, ?MODULE, p_spawn_on, [Pool, Key, A]),
              %% Both nodes know the worker (replication takes a millisecond or so).
              wait_until(fun() -> pcall(PB, shoal, whereis, [Pool, Key]) =:= Old end, 5000,
                         {replicated, Key}),
              Self = self(),
              Ms = [spawn_link(fun() -> Self ! {self(), pcall(P, shoal, migrate, [Pool, Key, C])} end)
                    || P <- [PA, PB]],
              Rs = [receive {M, R} -> R end || M <- Ms],
              [{ok, Pid}] = lists:usort(Rs),
              ?assertEqual(C, node(Pid)),
              ?assertEqual({ok, C, Pid}, pcall(PC, shoal, lookup, [Pool, Key]))
      end, lists:seq(1, 20)),
    ok.

%% A call that reached a worker while it moved runs once, in its successor, however long
%% the successor takes to answer. The call waits in A's worker while the worker is busy and
%% then moves to B (grace 100 ms); the successor takes 400 ms over it. Before, the old
%% worker forwarded the call and retired when its grace ran out; its caller, told
%% `{shutdown, {shoal_moved, B}}' before the successor's reply came, sent the call again
%% and it ran twice (the caller saw 2). Now the old worker answers Shoal's callers with
%% where the key went, and they ask there.
a_call_a_moved_worker_held_runs_once(Config) ->
    Pool = ?config(pool, Config),
    [{PA, A}, {_, B} | _] = peers(Config),
    [begin
         Key = {held, I},
         {Old, A} = pcall(PA, ?MODULE, p_spawn_on, [Pool, Key, A]),
         ?assertEqual([1, 1, 1], pcall(PA, ?MODULE, p_call_held_by_a_move, [Pool, Key, B])),
         ?assertNotEqual(Old, pcall(PA, shoal, whereis, [Pool, Key]))
     end || I <- lists:seq(1, 10)],
    ok.

%% Callers on A and C call three keys over and over while A migrates their workers back
%% and forth between B and C, 40 times each, with no grace (a moved worker forwards what it
%% had queued and retires at once, the case most exposed to a reply racing its exit): every acknowledged call
%% is in its key's state, and none twice (the state, the ids of the calls in the order they
%% ran, moves with the worker).
calls_racing_migrations_run_once(Config) ->
    Pool = ?config(pool, Config),
    [{PA, A}, {_, B}, {PC, C}] = peers(Config),
    Keys = [{hot, I} || I <- [1, 2, 3]],
    [begin
         {ok, _} = pcall(PA, shoal, ensure_started, [Pool, K]),
         {ok, W} = pcall(PA, shoal, migrate, [Pool, K, B]),
         B = node(W)
     end || K <- Keys],
    Callers = [{P, pcall(P, ?MODULE, p_call_loop, [Pool, Keys, {N, I}])}
               || {P, N} <- [{PA, A}, {PC, C}], I <- [1, 2]],
    Moves = pcall(PA, ?MODULE, p_bounce, [Pool, Keys, [C, B], 40]),
    Acked = lists:append([pcall(P, ?MODULE, p_stop_loop, [W]) || {P, W} <- Callers]),
    Final = maps:from_list([{K, pcall(PA, shoal, call, [Pool, K, ids])} || K <- Keys]),
    Twice = [{K, Id} || {K, Ids} <- maps:to_list(Final), Id <- Ids -- lists:usort(Ids)],
    Missing = [{K, Id} || {K, Id} <- Acked, not lists:member(Id, maps:get(K, Final))],
    Homes = [{K, pcall(PA, shoal_placement, home, [K, lists:sort([A, B, C])])} || K <- Keys],
    ct:pal("~b moves, ~b calls acknowledged; homes ~p; spawns on A ~p",
           [Moves, length(Acked), Homes, maps:get(spawns, pcall(PA, shoal, stats, [Pool]))]),
    ?assert(Moves >= 200),
    ?assertEqual([], Twice),
    ?assertEqual([], Missing).

%% A rolling upgrade: C's member speaks protocol version 1 only (the application's
%% `protocol_vsn', as on a node not upgraded yet; it drops what comes in a later version),
%% A and B speak version 2, whose replication ops are shorter, with each other. With 3000
%% workers spread over the three, A is drained (its relays go to B in version 2's forms and
%% to C in version 1's), 200 of C's workers move to B and 200 of B's to C, and B is drained
%% too: afterwards every member's table is the union of the owners' (the test fails if A or
%% B sends C anything of version 2, which C drops), and every key still answers, once.
a_member_pinned_to_version_1_converges_through_drains_and_moves(Config) ->
    Pool = ?config(pool, Config),
    [{PA, A}, {PB, B}, {PC, C}] = Ps = peers(Config),
    ?assertEqual(#{A => 2, B => 2, C => 1}, maps:get(protocol, pcall(PA, shoal, view, [Pool]))),
    ?assertEqual(#{A => 1, B => 1, C => 1}, maps:get(protocol, pcall(PC, shoal, view, [Pool]))),
    Keys = [{mixed, I} || I <- lists:seq(1, 3000)],
    [ok = pcall(P, ?MODULE, p_start_all, [Pool, Part])
     || {{P, _}, Part} <- lists:zip(Ps, shoal_test_cluster:split(Keys, 3))],
    wait_until(fun() -> [pcall(P, shoal, count, [Pool]) || {P, _} <- Ps] =:= [3000, 3000, 3000] end,
               10000, counted),
    ok = shoal_test_cluster:pcall(PA, shoal, drain, [Pool, A], 60000),
    OnC = lists:sublist(pcall(PC, ?MODULE, p_local_keys, [Pool]), 200),
    OnB = lists:sublist(pcall(PB, ?MODULE, p_local_keys, [Pool]), 200),
    ?assertEqual(0, pcall(PC, ?MODULE, p_move_batch, [Pool, OnC, B])),
    ?assertEqual(0, pcall(PB, ?MODULE, p_move_batch, [Pool, OnB, C])),
    ok = shoal_test_cluster:pcall(PB, shoal, drain, [Pool, B], 60000),
    ?assertEqual(ok, converged(Ps, Pool, 10000)),
    ?assertEqual([0, 0, 3000], [pcall(PA, shoal, count, [Pool, N]) || N <- [A, B, C]]),
    Who = pcall(PA, ?MODULE, p_call_all, [Pool, Keys]),
    ?assertEqual(3000, length(lists:usort([Pid || {Pid, _} <- Who]))),
    ?assertEqual([C], lists:usort([N || {_, N} <- Who])).

%% Every member's table equals the union of what each owns, within Ms: ok or the differences.
converged(Ps, Pool, Ms) ->
    Deadline = erlang:monotonic_time(millisecond) + Ms,
    converged_loop(Ps, Pool, Deadline).

converged_loop(Ps, Pool, Deadline) ->
    Dumps = [{N, pcall(P, ?MODULE, p_dump, [Pool])} || {P, N} <- Ps],
    Owned = lists:usort(lists:append([[E || {_, EN, _} = E <- D, EN =:= N] || {N, D} <- Dumps])),
    case [{N, length(D -- Owned), length(Owned -- D)} || {N, D} <- Dumps, D =/= Owned] of
        [] -> ok;
        Diff ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true -> {not_converged, Diff};
                false -> timer:sleep(50), converged_loop(Ps, Pool, Deadline)
            end
    end.

%% A replica that names a dead process (as if its removal had been lost) is found out by
%% the first call that meets it: the call exits noproc inside shoal:call, which asks the
%% dead pid's node where the key is now, stores the answer and sends the call there (here
%% it spawns a fresh worker). The caller sees only the reply.
a_dead_pid_in_a_replica_is_relearnt(Config) ->
    Pool = ?config(pool, Config),
    [{PA, _}, {PB, B} | _] = peers(Config),
    Dead = pcall(PB, erlang, spawn, [erlang, is_atom, [x]]),
    wait_until(fun() -> not pcall(PB, erlang, is_process_alive, [Dead]) end, 1000, dead),
    Key = {relearn, 1},
    stored = pcall(PA, ?MODULE, p_put_stale, [Pool, Key, B, Dead]),
    ?assertEqual(Dead, pcall(PA, shoal, whereis, [Pool, Key])),
    ?assertEqual(1, pcall(PA, shoal, call, [Pool, Key, incr])),
    Now = pcall(PA, shoal, whereis, [Pool, Key]),
    ?assert(is_pid(Now) andalso Now =/= Dead),
    [wait_until(fun() -> pcall(P, shoal, whereis, [Pool, Key]) =:= Now end, 2000, {agreed, N})
     || {P, N} <- peers(Config)],
    ok.

%% shoal:ready/1, await_ready/2 and view/1 say when the members agree.
membership_agreement_is_observable(Config) ->
    Pool = ?config(pool, Config),
    All = nodes_of(Config),
    [begin
         ?assert(pcall(P, shoal, ready, [Pool])),
         #{members := All, agreed := true, active := All} = pcall(P, shoal, view, [Pool])
     end || {P, _} <- peers(Config)],
    ok.

%%% Hidden nodes ----------------------------------------------------------------------------

%% A caller on A asks home C for a key whose worker's init/2 takes 1.5 s; C halts while the
%% worker runs it. The caller does not monitor C's member (its own member answers `retry' for
%% the requests to a peer it loses): it starts over in the view without C and gets a worker
%% on a survivor, well inside ensure_started's 5 s (waiting for C's answer would time out).
%% Repeated with fresh nodes, 3 times.
a_caller_whose_home_dies_mid_spawn_starts_over(Config) ->
    lists:foreach(
      fun(Round) ->
              Peers = shoal_test_cluster:start_peers(loss, 3, ?config(paths, Config)),
              try
                  ok = shoal_test_cluster:connect_all(Peers),
                  [{PA, A}, {_, B}, {PC, C}] = Peers,
                  Pool = home_dies,
                  [{ok, _} = pcall(P, shoal, start_pool,
                                   [Pool, #{worker => shoal_slow_init_worker,
                                            args => #{delay => 1500, outcome => ok}}])
                   || {P, _} <- Peers],
                  [ok = pcall(P, shoal, await_ready, [Pool, 5000]) || {P, _} <- Peers],
                  All = lists:sort([A, B, C]),
                  [wait_until(fun() -> pcall(P, shoal, nodes, [Pool]) =:= All end, 5000,
                              {members, N}) || {P, N} <- Peers],
                  Key = hd([K || I <- lists:seq(1, 1000), K <- [{home_dies, Round, I}],
                                 pcall(PA, shoal_placement, home, [K, All]) =:= C]),
                  Self = self(),
                  Caller = spawn_link(fun() ->
                                              Self ! {self(), pcall(PA, ?MODULE, p_timed_ensure,
                                                                    [Pool, Key])}
                                      end),
                  %% C's worker is in its init/2 when C goes.
                  wait_until(fun() -> is_pid(pcall(PC, shoal, whereis, [Pool, Key])) end, 5000,
                             {spawned_on_home, Key}),
                  peer:cast(PC, erlang, halt, []),
                  {Result, Ms} = receive {Caller, R} -> R end,
                  ct:pal("round ~b: ~p after ~b ms", [Round, Result, Ms]),
                  ?assertMatch({ok, _}, Result),
                  {ok, Pid} = Result,
                  ?assert(lists:member(node(Pid), [A, B]))
              after
                  shoal_test_cluster:stop_peers(Peers)
              end
      end, lists:seq(1, 3)).

%% The state a migration whose target dies can leave (issue #7's model finding F7): C holds
%% a replica naming a worker on B at a version above the one A's live worker has (the
%% successor B registered before it died; A's worker took its key back at a lower version
%% and C refused A's `up' as older). Here that replica is put in place directly, with a real
%% process on B. When B goes, C purges B's replicas and asks the other peers to announce
%% again what they own of those keys: C finds A's live worker again. Without the refresh
%% C's table would have no entry for the key while the worker lives on A (and C, the key's
%% home in the view without B, could spawn a second one).
a_replica_of_a_lost_node_no_longer_hides_an_older_owner(Config) ->
    Peers = shoal_test_cluster:start_peers(loss, 3, ?config(paths, Config)),
    try
        [{PA, A}, {PB, B}, {PC, C}] = Peers,
        Pool = hidden_owner,
        formed_pool(Peers, Pool),
        Key = hidden_key,
        {W1, A} = pcall(PA, ?MODULE, p_spawn_on, [Pool, Key, A]),
        wait_until(fun() -> pcall(PC, shoal, whereis, [Pool, Key]) =:= W1 end, 5000, {on_c, W1}),
        {local, W1, V1, false} = pcall(PA, ?MODULE, p_lookup, [Pool, Key]),
        Ghost = pcall(PB, erlang, spawn, [?MODULE, p_idle, []]),
        stored = pcall(PC, ?MODULE, p_put_newer, [Pool, Key, B, Ghost, V1 + 1000000]),
        ?assertEqual(Ghost, pcall(PC, shoal, whereis, [Pool, Key])),
        peer:cast(PB, erlang, halt, []),
        wait_until(fun() -> pcall(PC, shoal, nodes, [Pool]) =:= lists:sort([A, C]) end, 10000,
                   {b_gone, C}),
        wait_until(fun() -> pcall(PC, shoal, whereis, [Pool, Key]) =:= W1 end, 5000,
                   {relearnt_on_c, W1}),
        %% And the key's calls from C reach the one worker, with its state.
        N0 = pcall(PA, shoal, call, [Pool, Key, incr]),
        ?assertEqual(N0 + 1, pcall(PC, shoal, call, [Pool, Key, incr])),
        ?assertEqual(W1, pcall(PC, shoal, whereis, [Pool, Key]))
    after
        shoal_test_cluster:stop_peers(Peers)
    end.

%% F8 of the model (docs/protocol.md, "Moves"): A moves K1 and K2 to B in one batch. B
%% starts and registers K1's successor (its `up' goes to A and C) and is stuck in K2's
%% takeover when it halts, so `taken' never comes. A's member is held (sys:suspend) until B
%% is gone, so it applies B's `up' of K1's successor only after the mover saw B's 'DOWN':
%% the worst order; and B's clock is ahead of A's. K1's worker must take its key back above
%% that successor's version and
%% never treat the dead successor as a conflict's winner: no conflict/3 runs, both workers
%% keep their pids and their counts, and A and C agree on them. Without the take-back's
%% wait for A's member to drop B (or with a take-back that keeps its old version) K1's
%% worker yields to the dead successor. Repeated 3 times with fresh nodes.
a_move_whose_target_dies_after_registering_a_successor_keeps_its_worker(Config) ->
    [lost_successor_round(Config, R) || R <- lists:seq(1, 3)],
    ok.

lost_successor_round(Config, R) ->
    Peers = shoal_test_cluster:start_peers(list_to_atom("f8_" ++ integer_to_list(R)), 3,
                                           ?config(paths, Config)),
    try
        [{PA, A}, {PB, B}, {PC, C}] = Peers,
        Pool = lost_successor,
        formed_pool(Peers, Pool),
        {K1, K2} = {{lost, R, 1}, {lost, R, 2}},
        {W1, A} = pcall(PA, ?MODULE, p_spawn_on, [Pool, K1, A]),
        {W2, A} = pcall(PA, ?MODULE, p_spawn_on, [Pool, K2, A]),
        [{1, 2}, {1, 2}] = [{pcall(PA, shoal, call, [Pool, K, incr]),
                             pcall(PC, shoal, call, [Pool, K, incr])} || K <- [K1, K2]],
        true = pcall(PB, ets, insert, [shoal_test_store, {{'$stall_takeover', K2}}]),
        %% B's clock runs a minute ahead of A's (clock skew, as between machines): the
        %% successor's version is above anything A's clock would give a take-back by itself.
        ok = pcall(PB, shoal_registry, observe, [pcall(PB, shoal_registry, hlc, []) + 60000000]),
        MemberA = pcall(PA, ?MODULE, p_member, [Pool, suspend]),
        Self = self(),
        Mover = spawn_link(fun() ->
                                   Self ! {moved, pcall(PA, ?MODULE, p_move_batch, [Pool, [K1, K2], B])}
                           end),
        %% K1's successor is registered on B (and announced), K2's takeover is stuck.
        wait_until(fun() -> element(1, pcall(PB, ?MODULE, p_lookup, [Pool, K1])) =:= local end,
                   5000, {successor_on_b, K1}),
        wait_until(fun() -> pcall(PB, ets, match_object,
                                  [shoal_test_events, {stalled, K2, '_', '_'}]) =/= [] end,
                   5000, {stalled, K2}),
        timer:sleep(50),
        peer:cast(PB, erlang, halt, []),
        wait_until(fun() -> not lists:member(B, pcall(PA, erlang, nodes, [])) end, 5000,
                   {b_gone, A}),
        timer:sleep(300),
        MemberA = pcall(PA, ?MODULE, p_member, [Pool, resume]),
        receive {moved, Failed} -> ?assertEqual(2, Failed) after 60000 -> error(mover_stuck) end,
        unlink(Mover),
        AC = lists:sort([A, C]),
        [wait_until(fun() -> pcall(P, shoal, nodes, [Pool]) =:= AC end, 10000, {b_left, N})
         || {P, N} <- [{PA, A}, {PC, C}]],
        [wait_until(fun() -> pcall(P, shoal, whereis, [Pool, K]) =:= W end, 5000, {K, N, W})
         || {P, N} <- [{PA, A}, {PC, C}], {K, W} <- [{K1, W1}, {K2, W2}]],
        ?assertEqual([], pcall(PA, ets, match_object, [shoal_test_events, {conflict, '_', '_', '_'}])),
        ?assertEqual([3, 3], [pcall(PC, shoal, call, [Pool, K, incr]) || K <- [K1, K2]]),
        ?assertEqual([W1, W2], [pcall(PC, shoal, whereis, [Pool, K]) || K <- [K1, K2]]),
        ?assertEqual(2, pcall(PC, shoal, count, [Pool]))
    after
        shoal_test_cluster:stop_peers(Peers)
    end.

%% A node started with -hidden (as every C node is) is greeted like any other: it becomes
%% a member, and keys placed on it or elsewhere are reached from both sides.
a_hidden_node_becomes_a_member(Config) ->
    Paths = ?config(paths, Config),
    [{PA, A}, {PB, B}] = Peers = shoal_test_cluster:start_peers(hidden, 2, Paths),
    {ok, PH, H} = peer:start(#{name => peer:random_name(shoal_hidden), connection => standard_io,
                               args => ["-hidden" | shoal_test_cluster:peer_args(Paths)]}),
    try
        ok = pcall(PH, shoal_test_cluster, peer_init, []),
        ok = shoal_test_cluster:connect_all(Peers),
        Pool = hidden_pool,
        [{ok, _} = pcall(P, shoal, start_pool, [Pool, #{worker => ?WORKER}]) || P <- [PA, PB, PH]],
        shoal_test_cluster:connect(PH, A),
        shoal_test_cluster:connect(PH, B),
        ?assertEqual([], pcall(PA, erlang, nodes, [])-- [B]),  %% H is not visible
        ?assert(lists:member(H, pcall(PA, erlang, nodes, [hidden]))),
        All = lists:sort([A, B, H]),
        [wait_until(fun() -> pcall(P, shoal, nodes, [Pool]) =:= All end, 5000, {members, P})
         || P <- [PA, PB, PH]],
        [ok = pcall(P, shoal, await_ready, [Pool, 5000]) || P <- [PA, PB, PH]],
        Keys = [{h, I} || I <- lists:seq(1, 60)],
        [1 = pcall(PH, shoal, call, [Pool, K, incr]) || K <- Keys],
        [2 = pcall(PA, shoal, call, [Pool, K, incr]) || K <- Keys],
        Hosts = lists:usort([node(pcall(PB, shoal, whereis, [Pool, K])) || K <- Keys]),
        ?assertEqual(All, Hosts)
    after
        catch peer:stop(PH),
        shoal_test_cluster:stop_peers(Peers)
    end.

%% erl_call is a C node (ei): it connects as a hidden node and cannot answer a monitor by
%% name, so a member's probe of it never resolves. A pool started and used from erl_call
%% (what `bin/myapp eval' in a release does) must still become ready: the probe is closed
%% after its timeout, and the call is answered.
an_ei_node_that_cannot_answer_does_not_hold_agreement_back(Config) ->
    [{P, N}] = shoal_test_cluster:start_peers(ei, 1, ?config(paths, Config)),
    try
        ErlCall = filename:join([code:lib_dir(erl_interface), "bin", "erl_call"]),
        [Name, _] = string:split(atom_to_list(N), "@"),
        Expr = "{ok, _} = shoal:start_pool(ei_pool, #{worker => shoal_counter_worker}), "
               "shoal:call(ei_pool, k, incr).",
        Cmd = lists:flatten(io_lib:format("echo '~s' | ~s -sname ~s -c shoal_test -e",
                                          [Expr, ErlCall, Name])),
        Out = string:trim(os:cmd(Cmd)),
        ct:pal("erl_call answered ~s", [Out]),
        ?assertEqual("{ok,1}", [C || C <- Out, C =/= $\s]),
        ?assert(pcall(P, shoal, ready, [ei_pool]))
    after
        shoal_test_cluster:stop_peers([{P, N}])
    end.

%%% On the peers ---------------------------------------------------------------------------

%% @private Start Pool here (with Opts), wait until it has met Meet's member (unless Meet
%% is `none'), and release N callers of Key at once; every result.
p_start_and_race(Pool, Opts, Key, N, Meet) ->
    {ok, _} = shoal:start_pool(Pool, Opts#{worker => ?WORKER}),
    Meet =:= none orelse wait_member(Pool, Meet),
    p_race(Pool, Key, call, N, now_ms()).

%% @private N callers of Key released together at wall-clock time StartAt (ms; the same
%% instant on every node of this machine): their results (Kind says which call; a timed
%% one also says how many ms after StartAt it returned).
p_race(Pool, Key, Kind, N, StartAt) ->
    Self = self(),
    Pids = [spawn(fun() ->
                          receive go -> ok end,
                          timer:sleep(max(0, StartAt - now_ms())),
                          R = try one(Kind, Pool, Key) catch Class:Reason -> {Class, Reason} end,
                          Self ! {raced, self(), result(Kind, R, StartAt)}
                  end) || _ <- lists:seq(1, N)],
    [P ! go || P <- Pids],
    [receive {raced, P, R} -> R after 30000 -> {no_answer, P} end || P <- Pids].

now_ms() -> os:system_time(millisecond).

one(call, Pool, Key) -> {ok, shoal:call(Pool, Key, whoami, 20000)};
one(ensure_started, Pool, Key) -> shoal:ensure_started(Pool, Key);
one(timed_ensure_started, Pool, Key) -> shoal:ensure_started(Pool, Key);
one(bad_timeout, Pool, Key) -> shoal:call(Pool, Key, whoami, -5).

result(timed_ensure_started, R, T0) -> {R, now_ms() - T0};
result(_, R, _) -> R.

%% @private A client calling incr on Keys round robin until stopped (p_stop/1 answers
%% #{acked, per_key, errors}).
p_hammer(Pool, Keys, Timeout) ->
    spawn(fun() -> hammer(Pool, Keys, Keys, Timeout, 0, #{}, []) end).

hammer(Pool, [], All, Timeout, Acked, Per, Errs) -> hammer(Pool, All, All, Timeout, Acked, Per, Errs);
hammer(Pool, [K | Ks], All, Timeout, Acked, Per, Errs) ->
    receive
        {stop, From} ->
            From ! {stopped, self(), #{acked => Acked, per_key => Per, errors => lists:reverse(Errs)}}
    after 0 ->
            try shoal:call(Pool, K, incr, Timeout) of
                N when is_integer(N) ->
                    hammer(Pool, Ks, All, Timeout, Acked + 1,
                           maps:update_with(K, fun(X) -> X + 1 end, 1, Per), Errs)
            catch
                Class:Reason ->
                    hammer(Pool, Ks, All, Timeout, Acked, Per, [{K, {Class, Reason}} | Errs])
            end
    end.

%% @private Migrate each of Keys to Node, in parallel, as soon as Node is a member here;
%% a process whose result p_stop/1 collects: [{Key, Result}].
p_migrate_when_member(Pool, Keys, Node) ->
    spawn(fun() ->
                  wait_member(Pool, Node),
                  Self = self(),
                  Ps = [spawn_link(fun() -> Self ! {self(), K, shoal:migrate(Pool, K, Node)} end)
                        || K <- Keys],
                  Rs = [receive {P, K, R} -> {K, R} end || P <- Ps],
                  receive {stop, From} -> From ! {stopped, self(), Rs} end
          end).

wait_member(Pool, Node) ->
    case lists:member(Node, shoal:nodes(Pool)) of
        true -> ok;
        false -> erlang:yield(), wait_member(Pool, Node)
    end.

%% @private Stop a helper and return its answer.
p_stop(Pid) ->
    Pid ! {stop, self()},
    receive {stopped, Pid, R} -> R after 30000 -> {no_answer, Pid} end.

%% @private For `moving': the live counter workers here among Keys, [{Key, Pid}] (a worker
%% that moved away is alive for its grace but forwards: it is not counted, its entry here
%% is a replica). For `rw': call each key, then check at once that this node's reads see
%% the worker the call reached; returns [{Key, Pid}].
p_poke_stale(Pool, Keys, moving) ->
    [{K, P} || K <- Keys, {local, P, _, false} <- [shoal_registry:lookup(cfg(Pool), K)]];
p_poke_stale(Pool, Keys, rw) ->
    lists:map(
      fun(K) ->
              {Pid, Node} = shoal:call(Pool, K, whoami),
              Pid = shoal:whereis(Pool, K),
              {ok, Node, Pid} = shoal:lookup(Pool, K),
              true = shoal:count(Pool) > 0,
              {ok, Pid} = shoal:migrate(Pool, K, Node),
              case erlang:phash2(K, 3) of
                  0 -> ok = shoal:stop_worker(Pool, K);
                  _ -> ok
              end,
              {K, Pid}
      end, Keys).

%% @private N idle workers spawned here (keys {ballast, I}), once every one is up.
p_ballast(Pool, N) ->
    [shoal:ensure_started_async(Pool, {ballast, I}) || I <- lists:seq(1, N)],
    wait_count(Pool, N).

wait_count(Pool, N) ->
    case shoal:count(Pool) >= N of
        true -> ok;
        false -> timer:sleep(5), wait_count(Pool, N)
    end.

%% @private Spawn Key's worker and move it to Node: {Pid, Node}.
%% @private ensure_started/2 with its default timeout, and how long it took (ms).
p_timed_ensure(Pool, Key) ->
    T0 = erlang:monotonic_time(millisecond),
    R = shoal:ensure_started(Pool, Key),
    {R, erlang:monotonic_time(millisecond) - T0}.

%% @private Block Key's worker (here), queue a migration to Node and then a slow call
%% behind it, unblock, and answer [the slow call's reply, the counter after it, the
%% counter once the grace is long over].
p_call_held_by_a_move(Pool, Key, Node) ->
    Self = self(),
    Old = shoal:whereis(Pool, Key),
    spawn_link(fun() -> Self ! {blocked_reply, shoal:call(Pool, Key, {block, Self})} end),
    receive {blocked, Old} -> ok end,
    spawn_link(fun() -> Self ! {migrate_reply, shoal:migrate(Pool, Key, Node)} end),
    wait_until(fun() -> queue_len(Old) =:= 1 end, 5000, migrate_queued),
    spawn_link(fun() -> Self ! {slow_reply, shoal:call(Pool, Key, {slow_incr, 400})} end),
    wait_until(fun() -> queue_len(Old) =:= 2 end, 5000, call_queued),
    Old ! unblock,
    unblocked = receive {blocked_reply, R1} -> R1 end,
    {ok, New} = receive {migrate_reply, R2} -> R2 end,
    Node = node(New),
    Slow = receive {slow_reply, R3} -> R3 end,
    After = shoal:call(Pool, Key, get),
    timer:sleep(600),
    [Slow, After, shoal:call(Pool, Key, get)].

queue_len(Pid) ->
    case process_info(Pid, message_queue_len) of
        {message_queue_len, N} -> N;
        undefined -> dead
    end.

%% @private A process calling Keys in turn with `{incr, {Tag, I}}' until p_stop_loop/1.
p_call_loop(Pool, Keys, Tag) ->
    spawn(fun() -> call_loop(Pool, Keys, Tag, 0, []) end).

call_loop(Pool, Keys, Tag, I, Acked) ->
    receive {stop, From} -> From ! {acked, self(), Acked}
    after 0 ->
            K = lists:nth(I rem length(Keys) + 1, Keys),
            Id = {Tag, I},
            _ = shoal:call(Pool, K, {incr, Id}, 10000),
            call_loop(Pool, Keys, Tag, I + 1, [{K, Id} | Acked])
    end.

%% @private The [{Key, Id}] a p_call_loop/3 process had acknowledged when it stopped.
p_stop_loop(Pid) ->
    Pid ! {stop, self()},
    receive {acked, Pid, Acked} -> Acked after 30000 -> error(no_answer) end.

%% @private Migrate every key of Keys to each node of Nodes in turn, Rounds times; the
%% number of moves that succeeded.
p_bounce(Pool, Keys, Nodes, Rounds) ->
    lists:sum([length([ok || K <- Keys, {ok, _} <- [shoal:migrate(Pool, K, N)]])
               || _ <- lists:seq(1, Rounds), N <- Nodes]).

p_spawn_on(Pool, Key, Node) ->
    _ = shoal:call(Pool, Key, whoami),
    {ok, Pid} = shoal:migrate(Pool, Key, Node),
    {Pid, node(Pid)}.

%% @private Store a replica of Key naming Dead on Node at the oldest version (as if its
%% removal had been lost).
p_put_stale(Pool, Key, Node, Dead) ->
    shoal_registry:put_remote(cfg(Pool), Key, Node, Dead, 1, 0).

cfg(Pool) -> persistent_term:get({shoal_pool, Pool}).

%% @private Store a replica of Key naming Pid on Node at version Vsn (newer than ours).
p_put_newer(Pool, Key, Node, Pid, Vsn) ->
    shoal_registry:put_remote(cfg(Pool), Key, Node, Pid, Vsn, 0).

%% @private A process that waits for nothing.
p_idle() -> receive stop -> ok end.

%% @private Suspend or resume this node's member of Pool; its pid.
p_member(Pool, How) ->
    Member = shoal_view:peer(cfg(Pool), node()),
    ok = sys:How(Member),
    Member.

%% @private A batched move of this node's workers of Keys to Node (shoal_mover): how many
%% failed to move.
p_move_batch(Pool, Keys, Node) -> shoal_mover:move_batch(cfg(Pool), Keys, Node).

%% @private This node's entry for Key.
p_lookup(Pool, Key) -> shoal_registry:lookup(cfg(Pool), Key).

%% @private Start the workers of Keys (from this node), each before returning.
p_start_all(Pool, Keys) ->
    lists:foreach(fun(K) -> {ok, _} = shoal:ensure_started(Pool, K) end, Keys).

%% @private The keys of this node's own workers.
p_local_keys(Pool) -> shoal_registry:keys_on(cfg(Pool), node()).

%% @private This node's table as [{Key, Node, Pid}], sorted.
p_dump(Pool) -> lists:sort([{K, N, P} || {K, N, P, _} <- shoal_registry:dump(cfg(Pool))]).

%% @private Who answers a call to each of Keys: [{Pid, Node}].
p_call_all(Pool, Keys) -> [shoal:call(Pool, K, whoami) || K <- Keys].

%%% CT side ---------------------------------------------------------------------------------

%% Connect Peers, start Pool on each and wait until every member is ready in the view of all.
formed_pool(Peers, Pool) ->
    ok = shoal_test_cluster:connect_all(Peers),
    [{ok, _} = pcall(P, shoal, start_pool, [Pool, #{worker => ?WORKER}]) || {P, _} <- Peers],
    [ok = pcall(P, shoal, await_ready, [Pool, 5000]) || {P, _} <- Peers],
    All = lists:sort([N || {_, N} <- Peers]),
    [wait_until(fun() -> pcall(P, shoal, nodes, [Pool]) =:= All end, 5000, {members, N})
     || {P, N} <- Peers],
    ok.

peers(Config) -> ?config(peers, Config).
nodes_of(Config) -> lists:sort([N || {_, N} <- peers(Config)]).
pcall(P, M, F, A) -> shoal_test_cluster:pcall(P, M, F, A).
wait_until(Fun, Ms, What) -> shoal_test_cluster:wait_until(Fun, Ms, What).

race_async(P, Pool, Opts, Key, N, Meet) ->
    Self = self(),
    spawn_link(fun() ->
                       Self ! {self(), pcall(P, ?MODULE, p_start_and_race, [Pool, Opts, Key, N, Meet])}
               end).

%% Whom each node's pool waits to meet before its callers go: A and C wait for B; B for
%% A (it then has at least one peer; C may come before or after).
meet(B, B, [A, _C]) -> A;
meet(_N, B, _) -> B.

collect(Racer) -> receive {Racer, R} -> R end.

race(Config, Pool, Key, Kind, PerNode) ->
    Self = self(),
    StartAt = now_ms() + 300,
    Rs = [spawn_link(fun() -> Self ! {self(), pcall(P, ?MODULE, p_race, [Pool, Key, Kind, PerNode, StartAt])} end)
          || {P, _} <- peers(Config)],
    lists:append([collect(R) || R <- Rs]).

%% Every result names one worker, and that worker's init/2 ran once in the cluster.
one_worker(Peers, Key, Results) ->
    ?assertEqual({Key, 300}, {Key, length(Results)}),
    case lists:usort(Results) of
        [{ok, {Pid, Host}}] -> ?assertEqual(Host, node(Pid));
        Many -> ct:fail({Key, more_than_one_answer, Many})
    end,
    Inits = lists:append([pcall(P, ets, lookup, [shoal_test_events, init]) || {P, _} <- Peers]),
    ?assertEqual({Key, 1}, {Key, length([x || {init, K, _, _} <- Inits, K =:= Key])}).

p_stop_remote(P, Pid) -> pcall(P, ?MODULE, p_stop, [Pid]).

shoal_view_window(P, Pool, Node) ->
    #{nodes := #{Node := #{window := W}}} = pcall(P, shoal, health, [Pool]),
    W.

median(L) -> lists:nth((length(L) + 1) div 2, lists:sort(L)).
