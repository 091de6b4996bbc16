%% shoal_ops_SUITE: what an operator and a metrics system see of Shoal (docs/telemetry.md,
%% docs/operations.md): every event and log line where it is emitted, with real workers, on
%% this node and on three real peer nodes (node up/down, moves, drains, rebalances,
%% conflicts, pools started with different options); the worker process as OTP tools see it
%% (sys:get_status/1, crash reports, $initial_call, code_change, shoal:key_of/1); init
%% failures and their exit reasons; rebalance(Pool, even).
-module(shoal_ops_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([sys_get_state_and_replace_state_see_the_users_state/1]).
-export([all/0, groups/0, suite/0, init_per_suite/1, end_per_suite/1, init_per_group/2,
         end_per_group/2, init_per_testcase/2, end_per_testcase/2]).
-export([worker_events_carry_pool_key_node/1,
         a_killed_worker_is_logged_by_its_segment_a_crash_otp_reports_is_not/1,
         a_call_is_a_span_only_while_somebody_listens/1,
         telemetry_handlers_are_found_by_the_probe/1,
         init_failures_are_logged_rate_limited_with_exception_shaped_reasons/1,
         a_failing_load_is_logged/1,
         status_and_crash_reports_show_the_users_state/1,
         initial_call_and_key_of_name_the_users_worker/1,
         code_change_reaches_the_users_callback/1,
         options_and_rebalance_arguments_are_checked/1,
         node_up_and_down_are_events_and_notices/1,
         moves_drains_and_rebalances_are_events_and_notices/1,
         rebalance_even_moves_the_fewest_to_within_one_of_the_average/1,
         a_conflict_is_a_warning_on_the_losers_node/1,
         a_member_with_other_options_is_warned_about/1]).
%% On the peers, and the logger handler.
-export([p_listen/0, p_events/1, p_logs/1, p_spawn/3, p_window/2, log/2]).

-define(W, shoal_ops_worker).
-define(EVENTS, shoal_test_events).

suite() -> [{timetrap, {minutes, 3}}].

all() -> [{group, local}, {group, cluster}].

groups() ->
    [{local, [],
      [worker_events_carry_pool_key_node,
       a_killed_worker_is_logged_by_its_segment_a_crash_otp_reports_is_not,
       a_call_is_a_span_only_while_somebody_listens,
       telemetry_handlers_are_found_by_the_probe,
       init_failures_are_logged_rate_limited_with_exception_shaped_reasons,
       a_failing_load_is_logged,
       status_and_crash_reports_show_the_users_state,
       sys_get_state_and_replace_state_see_the_users_state,
       initial_call_and_key_of_name_the_users_worker,
       code_change_reaches_the_users_callback,
       options_and_rebalance_arguments_are_checked]},
     {cluster, [],
      [node_up_and_down_are_events_and_notices,
       moves_drains_and_rebalances_are_events_and_notices,
       rebalance_even_moves_the_fewest_to_within_one_of_the_average,
       a_conflict_is_a_warning_on_the_losers_node,
       a_member_with_other_options_is_warned_about]}].

init_per_suite(Config) ->
    Paths = shoal_test_cluster:code_paths([?MODULE, ?W, shoal_ops_old_worker]),
    [{paths, Paths} | Config].

end_per_suite(_Config) -> ok.

init_per_group(cluster, Config) ->
    Peers = shoal_test_cluster:start_peers(ops, 3, ?config(paths, Config)),
    ok = shoal_test_cluster:connect_all(Peers),
    [ok = pcall(P, ?MODULE, p_listen, []) || {P, _} <- Peers],
    [{peers, Peers} | Config];
init_per_group(local, Config) ->
    Config.

end_per_group(cluster, Config) -> shoal_test_cluster:stop_peers(?config(peers, Config));
end_per_group(local, _Config) -> ok.

init_per_testcase(Case, Config) ->
    case ?config(peers, Config) of
        undefined ->
            Pool = Case,
            {ok, _} = shoal:start_pool(Pool, #{worker => ?W, idle_timeout => idle_of(Case)}),
            Id = {?MODULE, Case},
            ok = shoal_telemetry:attach_many(Id, [E || {E, _, _} <- shoal_telemetry:events()],
                                             fun forward/4, self()),
            LogId = log_to_me(),
            [{pool, Pool}, {handler, Id}, {log_handler, LogId} | Config];
        _ ->
            Config
    end.

end_per_testcase(_Case, Config) ->
    _ = [shoal:stop_pool(P) || P <- [proplists:get_value(pool, Config)], P =/= undefined],
    _ = [shoal_telemetry:detach(Id) || Id <- [proplists:get_value(handler, Config)],
                                       Id =/= undefined],
    _ = [logger:remove_handler(L) || L <- [proplists:get_value(log_handler, Config)],
                                     L =/= undefined],
    ok.

idle_of(worker_events_carry_pool_key_node) -> 200;
idle_of(_) -> infinity.

%%% On this node ----------------------------------------------------------------------------

%% spawn (init and takeover), offload and crash, each with pool, key, node and pid.
worker_events_carry_pool_key_node(Config) ->
    Pool = ?config(pool, Config),
    Node = node(),
    1 = shoal:call(Pool, a, incr),
    Pid = shoal:whereis(Pool, a),
    {event, [shoal, worker, spawn], #{system_time := _},
     #{pool := Pool, key := a, node := Node, pid := Pid, how := init}} = next_event(worker),
    %% idle_timeout 200: the worker offloads itself
    {event, [shoal, worker, offload], #{system_time := _},
     #{pool := Pool, key := a, node := Node, pid := Pid}} = next_event(worker),
    {ok, P2} = shoal:ensure_started(Pool, b),
    _ = next_event(worker),
    ?assertExit({{crashed, _}, _}, shoal:call(Pool, b, crash)),
    {event, [shoal, worker, crash], _,
     #{pool := Pool, key := b, node := Node, pid := P2, reason := {crashed, [_ | _]}}} =
        next_event(worker),
    ?assertEqual(none, next_event(worker, 300)).

%% An exit signal leaves no report of OTP's: the segment writes `worker_crashed' (with the
%% key). A crash inside a callback is reported by gen_server: no second line from Shoal.
a_killed_worker_is_logged_by_its_segment_a_crash_otp_reports_is_not(Config) ->
    Pool = ?config(pool, Config),
    {ok, Pid} = shoal:ensure_started(Pool, victim),
    exit(Pid, kill),
    {event, [shoal, worker, crash], _, #{key := victim, reason := killed}} =
        next_event([shoal, worker, crash]),
    {log, error, #{what := worker_crashed, pool := Pool, key := victim, pid := Pid,
                   reason := killed}, #{domain := [shoal], pool := Pool, key := victim}} =
        next_log(worker_crashed),
    {ok, _} = shoal:ensure_started(Pool, crasher),
    ?assertExit(_, shoal:call(Pool, crasher, crash)),
    {event, [shoal, worker, crash], _, #{key := crasher}} = next_event([shoal, worker, crash]),
    ?assertEqual(none, next_log(worker_crashed, 300)).

%% No handler: shoal:call builds no span (the flag is off). A handler: start and stop share
%% a span context and stop has the duration; a call that fails is an exception event.
a_call_is_a_span_only_while_somebody_listens(Config) ->
    Pool = ?config(pool, Config),
    Id = ?config(handler, Config),
    ?assert(shoal_telemetry:call_events()),
    1 = shoal:call(Pool, k, incr),
    {event, [shoal, call, start], #{system_time := _, monotonic_time := _},
     #{pool := Pool, key := k, node := _, telemetry_span_context := Ctx}} = next_event(call),
    {event, [shoal, call, stop], #{duration := D},
     #{pool := Pool, key := k, telemetry_span_context := Ctx}} = next_event(call),
    ?assert(is_integer(D) andalso D >= 0),
    {error, not_found} = shoal:call_existing(Pool, nobody, incr),
    {event, [shoal, call, start], _, #{key := nobody}} = next_event(call),
    {event, [shoal, call, stop], _, #{key := nobody}} = next_event(call),
    ?assertExit({timeout, _}, shoal:call(Pool, k, {sleep, 300}, 10)),
    {event, [shoal, call, start], _, _} = next_event(call),
    {event, [shoal, call, exception], #{duration := _},
     #{kind := exit, reason := {timeout, _}, key := k}} = next_event(call),
    %% detached: the flag is off and nothing is emitted
    ok = shoal_telemetry:detach(Id),
    ?assertNot(shoal_telemetry:call_events()),
    2 = shoal:call(Pool, k, incr),
    ?assertEqual(none, next_event(call, 200)),
    %% a handler for other events only does not turn the call span on
    ok = shoal_telemetry:attach(Id, [shoal, worker, spawn], fun forward/4, self()),
    ?assertNot(shoal_telemetry:call_events()).

%% A `telemetry' library with a handler for the call events turns them on within a second
%% (the probe); with no handler of its for them, they stay off.
telemetry_handlers_are_found_by_the_probe(Config) ->
    Pool = ?config(pool, Config),
    ok = shoal_telemetry:detach(?config(handler, Config)),
    ?assertNot(shoal_telemetry:call_events()),
    persistent_term:put(shoal_ops_fake_telemetry, {self(), []}),
    load_fake_telemetry(),
    try
        ok = shoal_telemetry:probe(),
        ?assertNot(shoal_telemetry:call_events()),
        %% a telemetry handler for [shoal, call, stop] appears; the probe process sees it
        persistent_term:put(shoal_ops_fake_telemetry, {self(), [#{id => h}]}),
        ok = shoal_test_cluster:wait_until(fun shoal_telemetry:call_events/0, 3000, probe),
        1 = shoal:call(Pool, t, incr),
        {telemetry, [shoal, call, start], _, #{key := t}} = recv_telemetry(),
        {telemetry, [shoal, call, stop], _, #{key := t}} = recv_telemetry(),
        %% the other events go to a loaded telemetry whatever its handlers
        {telemetry, [shoal, worker, spawn], _, #{key := t}} = recv_telemetry(spawn),
        persistent_term:put(shoal_ops_fake_telemetry, {self(), []}),
        ok = shoal_test_cluster:wait_until(fun() -> not shoal_telemetry:call_events() end,
                                           3000, probe_off)
    after
        unload_fake_telemetry(),
        persistent_term:erase(shoal_ops_fake_telemetry),
        shoal_telemetry:probe()
    end.

%% An init/2 that raises: the caller of ensure_started/2 gets {error, {Reason, Stack}} and a
%% call exits with it (the shapes Elixir formats as the exception); one worker_init_failed
%% line per failure, at most 10 a second per pool, the next line counting those dropped.
init_failures_are_logged_rate_limited_with_exception_shaped_reasons(Config) ->
    Pool = ?config(pool, Config),
    {error, {boom, [{?W, init, 2, _} | _]}} = shoal:ensure_started(Pool, {raise, 0}),
    ?assertExit({{boom, [_ | _]}, {shoal, call, _}}, shoal:call(Pool, {raise, 0}, incr)),
    {ok, _} = shoal:ensure_started(Pool, {throw_ok, 1}),
    %% a flood through casts (a cast never says what happened to it); every crash of this
    %% pool is a failed init (the first two keys made one or two: a call may be answered
    %% with the failure of the init it raced with, or spawn its own)
    [ok = shoal:cast(Pool, {raise, I}, hi) || I <- lists:seq(1, 40)],
    ok = shoal_test_cluster:wait_until(
           fun() -> maps:get(crashes, shoal:stats(Pool)) >= 41 end, 5000, crashes),
    timer:sleep(200),
    Failures = maps:get(crashes, shoal:stats(Pool)),
    Lines = logs(worker_init_failed),
    ct:pal("~b init failures gave ~b lines", [Failures, length(Lines)]),
    ?assert(length(Lines) =< 20),        % 10 a second, in at most two windows
    [#{callback := init, reason := {boom, _}, pid := _} = R || {log, error, R, _} <- Lines],
    [#{domain := [shoal], pool := Pool, key := {raise, _}} = M || {log, _, _, M} <- Lines],
    %% a second later, the next failure's line says how many were dropped
    timer:sleep(1100),
    {error, _} = shoal:ensure_started(Pool, {raise, last}),
    {log, error, #{key := {raise, last}} = Last, _} = next_log(worker_init_failed),
    Suppressed = maps:get(suppressed, Last, 0) +
        lists:sum([maps:get(suppressed, R, 0) || {log, _, R, _} <- Lines]),
    ?assertEqual(Failures, length(Lines) + Suppressed),
    %% OTP reports these exits itself: no worker_crashed on top
    ?assertEqual([], logs(worker_crashed)).

a_failing_load_is_logged(Config) ->
    Pool = ?config(pool, Config),
    ?assertExit({{shutdown, {load_failed, not_in_store}}, _}, shoal:call(Pool, {no_load, 1}, get)),
    {log, error, #{what := worker_init_failed, key := {no_load, 1}, callback := load,
                   reason := {load_failed, not_in_store}}, _} = next_log(worker_init_failed).

%% sys:get_status/1 and gen_server's crash report show the worker's own state, as its
%% format_status/1 (or format_status/2) makes it; never Shoal's record.
status_and_crash_reports_show_the_users_state(Config) ->
    Pool = ?config(pool, Config),
    {ok, Pid} = shoal:ensure_started(Pool, s),
    ?assertEqual(#{key => s, n => 0, secret => '***'}, status_state(Pid)),
    _ = (catch shoal:call(Pool, s, crash)),
    {log, error, #{label := {gen_server, terminate}, state := Shown}, _} =
        next_log({gen_server, terminate}),
    ?assertEqual(#{key => s, n => 0, secret => '***'}, Shown),
    %% format_status/2
    Old = list_to_atom(atom_to_list(Pool) ++ "_old"),
    {ok, _} = shoal:start_pool(Old, #{worker => shoal_ops_old_worker}),
    try
        {ok, P2} = shoal:ensure_started(Old, o),
        ?assertEqual({normal, o, '***'}, status_state(P2))
    after shoal:stop_pool(Old)
    end,
    %% without format_status: the state as it is
    Plain = list_to_atom(atom_to_list(Pool) ++ "_plain"),
    {ok, _} = shoal:start_pool(Plain, #{worker => shoal_test_plain_worker}),
    try
        {ok, P3} = shoal:ensure_started(Plain, p),
        ?assertEqual(p, status_state(P3))
    after shoal:stop_pool(Plain)
    end.

%% sys:get_state/1 is the user's state, and sys:replace_state/2 changes what the worker's
%% callbacks see next (as with any gen_server), never Shoal's record.
sys_get_state_and_replace_state_see_the_users_state(Config) ->
    Pool = ?config(pool, Config),
    {ok, Pid} = shoal:ensure_started(Pool, st),
    ?assertEqual(#{key => st, n => 0, secret => hidden}, sys:get_state(Pid)),
    New = sys:replace_state(Pid, fun(#{n := N} = S) -> S#{n := N + 41} end),
    ?assertEqual(#{key => st, n => 41, secret => hidden}, New),
    ?assertEqual(42, shoal:call(Pool, st, incr)),
    ?assertEqual(#{key => st, n => 42, secret => hidden}, sys:get_state(Pid)),
    %% A suspended worker resumes with the state it had.
    ok = sys:suspend(Pid),
    ok = sys:resume(Pid),
    ?assertEqual(43, shoal:call(Pool, st, incr)).

initial_call_and_key_of_name_the_users_worker(Config) ->
    Pool = ?config(pool, Config),
    {ok, Pid} = shoal:ensure_started(Pool, {user, 42}),
    ?assertEqual({?W, init, 2}, proc_lib:translate_initial_call(Pid)),
    ?assertEqual({ok, Pool, {user, 42}}, shoal:key_of(Pid)),
    ?assertEqual(undefined, shoal:key_of(self())),
    Ref = monitor(process, Pid),
    ok = shoal:stop_worker(Pool, {user, 42}),
    receive {'DOWN', Ref, process, Pid, _} -> ok end,
    ?assertEqual(undefined, shoal:key_of(Pid)).

%% A release upgrade's code change (suspend, change_code, resume, as release_handler does)
%% runs the worker module's code_change/3 on the user's state.
code_change_reaches_the_users_callback(Config) ->
    Pool = ?config(pool, Config),
    {ok, Pid} = shoal:ensure_started(Pool, c),
    1 = shoal:call(Pool, c, incr),
    ok = sys:suspend(Pid),
    ok = sys:change_code(Pid, ?W, "1.0", extra),
    ok = sys:resume(Pid),
    ?assertMatch(#{n := 1, upgraded_from := "1.0", extra := extra}, shoal:call(Pool, c, get)),
    %% a worker module without code_change/3 keeps its state
    Plain = list_to_atom(atom_to_list(Pool) ++ "_plain"),
    {ok, _} = shoal:start_pool(Plain, #{worker => shoal_test_plain_worker}),
    try
        {ok, P2} = shoal:ensure_started(Plain, p),
        ok = sys:suspend(P2),
        ok = sys:change_code(P2, shoal_test_plain_worker, "1.0", extra),
        ok = sys:resume(P2),
        ?assertEqual(p, status_state(P2))
    after shoal:stop_pool(Plain)
    end.

options_and_rebalance_arguments_are_checked(Config) ->
    Pool = ?config(pool, Config),
    ?assertEqual({error, {bad_rebalance, sideways}}, shoal:rebalance(Pool, sideways)),
    ?assertEqual({ok, #{moved => 0}}, shoal:rebalance(Pool, even)),
    ?assertEqual({ok, #{moved => 0}}, shoal:rebalance(Pool, windows)),
    {log, notice, #{what := rebalance_done, how := even, moved := 0}, _} = next_log(rebalance_done),
    P2 = list_to_atom(atom_to_list(Pool) ++ "_proplist"),
    {ok, _} = shoal:start_pool(P2, [{worker, ?W}, {idle_timeout, 60000}]),
    ok = shoal:stop_pool(P2).

%%% On three peers --------------------------------------------------------------------------

%% A member that joins is a `[shoal, node, up]' event and a node_up notice on the others;
%% one whose pool stops, `[shoal, node, down]' with the reason and a node_down notice.
node_up_and_down_are_events_and_notices(Config) ->
    [{PA, _A}, {PB, B}, {PC, C}] = peers(Config),
    Pool = ops_nodes,
    start_everywhere(Config, Pool, #{worker => ?W}),
    Ups = [N || {ev, [shoal, node, up], #{pool := P, node := N}} <- pcall(PA, ?MODULE, p_events, [ev]),
                P =:= Pool],
    ?assertEqual([B, C], lists:sort(Ups)),
    ?assertEqual([B, C], lists:sort([N || #{what := node_up, pool := P, node := N} <- logs_on(PA, node_up),
                                          P =:= Pool])),
    ok = pcall(PC, shoal, stop_pool, [Pool]),
    wait_until(fun() -> [ok || {ev, [shoal, node, down], #{pool := P, node := N, reason := _}}
                                   <- pcall(PA, ?MODULE, p_events, [ev]), P =:= Pool, N =:= C] =/= []
               end, 5000, node_down_event),
    [#{level := notice, reason := _}] =
        [R#{level => L} || {log, L, #{what := node_down, pool := P, node := N} = R, _}
                               <- pcall(PB, ?MODULE, p_logs, [node_down]), P =:= Pool, N =:= C],
    [ok = pcall(P, shoal, stop_pool, [Pool]) || P <- [PA, PB]].

%% migrate/3, drain/2 and rebalance/1,2 move workers: a `[shoal, move]' span per worker on
%% the node it leaves, with its cause; drain_started and drain_done on the drained node,
%% rebalance_done where the rebalance was asked.
moves_drains_and_rebalances_are_events_and_notices(Config) ->
    [{PA, A}, {PB, B}, {PC, C}] = peers(Config),
    Pool = ops_moves,
    start_everywhere(Config, Pool, #{worker => ?W}),
    Keys = lists:seq(1, 30),
    ok = pcall(PA, ?MODULE, p_spawn, [Pool, Keys, any]),
    %% migrate one key from wherever it is to another node
    {ok, From, _} = pcall(PA, shoal, lookup, [Pool, 1]),
    To = hd([A, B, C] -- [From]),
    {ok, NewPid} = pcall(PA, shoal, migrate, [Pool, 1, To]),
    ?assertEqual(To, node(NewPid)),
    %% key_of/1 of a pid on another node asks that node
    [{ok, Pool, 1} = pcall(P, shoal, key_of, [NewPid]) || {P, N} <- peers(Config), N =/= To],
    PFrom = peer_of(Config, From),
    wait_until(fun() -> moves(PFrom, Pool, migrate) =/= [] end, 5000, migrate_events),
    [{1, To, ok}] = moves(PFrom, Pool, migrate),
    %% the successor's spawn event says it took the state over
    [NewPid] = [Pid || {ev, [shoal, worker, spawn], #{pool := Po, key := 1, how := takeover,
                                                      pid := Pid}}
                           <- pcall(peer_of(Config, To), ?MODULE, p_events, [ev]), Po =:= Pool],
    %% drain B: every worker B had moves, with cause drain, from B
    OnB = pcall(PB, shoal, count, [Pool, B]),
    ok = pcall(PA, shoal, drain, [Pool, B]),
    Drained = moves(PB, Pool, drain),
    ?assertEqual(OnB, length([K || {K, _, ok} <- Drained])),
    [#{workers := OnB}] = [R || {log, notice, #{pool := P} = R, _} <- pcall(PB, ?MODULE, p_logs, [drain_started]),
                                P =:= Pool],
    [#{workers := OnB, result := ok}] =
        [R || {log, notice, #{pool := P} = R, _} <- pcall(PB, ?MODULE, p_logs, [drain_done]),
              P =:= Pool],
    ok = pcall(PA, shoal, undrain, [Pool, B]),
    wait_until(fun() -> pcall(PC, shoal, count, [Pool, B]) =:= 0 andalso
                            pcall(PC, shoal, count, [Pool]) =:= 30 end, 5000, c_sees_the_drain),
    %% 30 workers on three members: 10 each; B gets 10, and A or C the share it lacks
    Before = [pcall(PC, shoal, count, [Pool, N]) || N <- [A, B, C]],
    {ok, #{moved := Moved}} = pcall(PC, shoal, rebalance, [Pool, even]),
    ?assertEqual(lists:sum([max(0, 10 - N) || N <- Before]), Moved),
    wait_until(fun() -> [pcall(PC, shoal, count, [Pool, N]) || N <- [A, B, C]] =:= [10, 10, 10] end,
               5000, even),
    Rebalanced = moves(PA, Pool, rebalance) ++ moves(PC, Pool, rebalance),
    ?assertEqual(Moved, length([K || {K, _, ok} <- Rebalanced])),
    ?assertEqual(10, length([K || {K, B1, ok} <- Rebalanced, B1 =:= B])),
    [#{how := even, moved := Moved}] =
        [R || {log, notice, #{pool := P} = R, _} <- pcall(PC, ?MODULE, p_logs, [rebalance_done]),
              P =:= Pool],
    stop_everywhere(Config, Pool).

%% 31 workers all on A: rebalance(Pool, even) leaves 11 on A and 10 on B and C (A held the
%% most, so it keeps the extra one), moving 20; a second one moves nothing. A drained member
%% gets no share: with C drained, A and B hold 16 and 15.
rebalance_even_moves_the_fewest_to_within_one_of_the_average(Config) ->
    [{PA, A}, {PB, B}, {PC, C}] = peers(Config),
    Pool = ops_even,
    start_everywhere(Config, Pool, #{worker => ?W}),
    Nodes = [A, B, C],
    Windows = fun(High) ->
                      [ok = pcall(PA, shoal, set_target, [Pool, N, #{high => High}]) || N <- [B, C]],
                      wait_until(fun() -> lists:all(fun(#{high := H}) -> H =:= High end,
                                                    [pcall(P, ?MODULE, p_window, [Pool, N])
                                                     || {P, _} <- peers(Config), N <- [B, C]])
                                 end, 5000, {windows, High})
              end,
    Windows(0),
    ok = pcall(PA, ?MODULE, p_spawn, [Pool, lists:seq(1, 31), any]),
    ?assertEqual(31, pcall(PA, shoal, count, [Pool, A])),
    Windows(infinity),
    CountsOn = fun(P) -> [pcall(P, shoal, count, [Pool, N]) || N <- Nodes] end,
    SeenBy = fun(Expected) -> wait_until(fun() -> lists:all(fun({P, _}) -> CountsOn(P) =:= Expected end,
                                                            peers(Config)) end, 5000, {counts, Expected})
             end,
    SeenBy([31, 0, 0]),
    %% windows allow anything: the window rebalance moves nothing
    {ok, #{moved := 0}} = pcall(PB, shoal, rebalance, [Pool]),
    {ok, #{moved := 20}} = pcall(PB, shoal, rebalance, [Pool, even]),
    SeenBy([11, 10, 10]),
    {ok, #{moved := 0}} = pcall(PC, shoal, rebalance, [Pool, even]),
    Counts = fun() -> CountsOn(PA) end,
    ok = pcall(PA, shoal, drain, [Pool, C]),
    wait_until(fun() -> lists:sum(Counts()) =:= 31 andalso lists:last(Counts()) =:= 0 end,
               5000, drained),
    {ok, #{moved := M}} = pcall(PA, shoal, rebalance, [Pool, even]),
    wait_until(fun() -> [15, 16] =:= lists:sort(lists:droplast(Counts())) end, 5000, even_after_drain),
    0 = lists:last(Counts()),
    ct:pal("after draining C: ~p, even moved ~b", [Counts(), M]),
    [1 = pcall(PA, shoal, call, [Pool, K, incr]) || K <- lists:seq(1, 31)],
    stop_everywhere(Config, Pool).

%% {A, B} | {C}: both sides spawn a worker for one key; when they heal, the loser's node
%% logs conflict_resolved (warning) with the key, the winner's pid and node.
a_conflict_is_a_warning_on_the_losers_node(Config) ->
    [{PA, A}, {PB, B}, {PC, C}] = Peers = peers(Config),
    Pool = ops_conflict,
    start_everywhere(Config, Pool, #{worker => ?W}),
    try
        true = pcall(PA, erlang, disconnect_node, [C]),
        true = pcall(PB, erlang, disconnect_node, [C]),
        wait_until(fun() -> pcall(PA, shoal, nodes, [Pool]) =:= [A, B] andalso
                                pcall(PC, shoal, nodes, [Pool]) =:= [C] end, 5000, split),
        1 = pcall(PA, shoal, call, [Pool, dup, incr]),
        1 = pcall(PC, shoal, call, [Pool, dup, incr]),
        true = pcall(PA, net_kernel, connect_node, [C]),
        true = pcall(PB, net_kernel, connect_node, [C]),
        wait_until(fun() -> length(lists:usort([pcall(P, shoal, whereis, [Pool, dup])
                                                || {P, _} <- Peers])) =:= 1 end,
                   5000, one_worker),
        Winner = pcall(PA, shoal, whereis, [Pool, dup]),
        wait_until(fun() -> conflict_logs(Peers, Pool) =/= [] end, 5000, conflict_logged),
        [{Loser, #{key := dup, winner := Winner, winner_node := WNode, loser := _}}] =
            conflict_logs(Peers, Pool),
        ?assertEqual(node(Winner), WNode),
        ?assertNotEqual(WNode, Loser)
    after
        shoal_test_cluster:connect_all(Peers),
        stop_everywhere(Config, Pool)
    end.

%% A and B start one pool with different idle timeouts: each logs options_differ (warning)
%% naming the other when they meet; C, started like A, warns about B only.
a_member_with_other_options_is_warned_about(Config) ->
    [{PA, A}, {PB, B}, {PC, C}] = Peers = peers(Config),
    Pool = ops_options,
    {ok, _} = pcall(PA, shoal, start_pool, [Pool, #{worker => ?W, idle_timeout => 60000}]),
    {ok, _} = pcall(PB, shoal, start_pool, [Pool, #{worker => ?W}]),
    {ok, _} = pcall(PC, shoal, start_pool, [Pool, [{worker, ?W}, {idle_timeout, 60000}]]),
    wait_until(fun() -> lists:all(fun({P, _}) -> pcall(P, shoal, nodes, [Pool]) =:= [A, B, C] end,
                                  Peers) end, 5000, members),
    Differ = fun(P) -> lists:usort([Peer || {log, warning, #{what := options_differ, pool := Po,
                                                             peer := Peer}, _}
                                                <- pcall(P, ?MODULE, p_logs, [options_differ]),
                                            Po =:= Pool]) end,
    wait_until(fun() -> Differ(PA) =:= [B] andalso Differ(PB) =:= [A, C] andalso Differ(PC) =:= [B]
               end, 5000, options_differ),
    [{log, warning, #{options := #{idle_timeout := infinity}}, _} | _] =
        [L || {log, _, #{pool := Po}, _} = L <- pcall(PB, ?MODULE, p_logs, [options_differ]), Po =:= Pool],
    stop_everywhere(Config, Pool).

%%% Helpers ---------------------------------------------------------------------------------

peers(Config) -> ?config(peers, Config).

pcall(P, M, F, A) -> shoal_test_cluster:pcall(P, M, F, A).

wait_until(Fun, Ms, What) -> shoal_test_cluster:wait_until(Fun, Ms, What).

peer_of(Config, Node) -> hd([P || {P, N} <- peers(Config), N =:= Node]).

start_everywhere(Config, Pool, Opts) ->
    All = [N || {_, N} <- peers(Config)],
    [{ok, _} = pcall(P, shoal, start_pool, [Pool, Opts]) || {P, _} <- peers(Config)],
    [ok = pcall(P, shoal, await_ready, [Pool, 5000]) || {P, _} <- peers(Config)],
    wait_until(fun() -> lists:all(fun({P, _}) -> pcall(P, shoal, nodes, [Pool]) =:= All end,
                                  peers(Config)) end, 5000, {members, Pool}).

stop_everywhere(Config, Pool) ->
    [catch pcall(P, shoal, stop_pool, [Pool]) || {P, _} <- peers(Config)],
    ok.

%% The moves a peer emitted for Pool with Cause: [{Key, To, Result}].
moves(P, Pool, Cause) ->
    [{K, To, R} || {ev, [shoal, move, stop], #{pool := Po, key := K, to := To, cause := Ca,
                                                result := R}} <- pcall(P, ?MODULE, p_events, [ev]),
                   Po =:= Pool, Ca =:= Cause].

logs_on(P, What) -> [R || {log, _, R, _} <- pcall(P, ?MODULE, p_logs, [What])].

conflict_logs(Peers, Pool) ->
    [{N, R} || {P, N} <- Peers,
               {log, warning, #{pool := Po} = R, _} <- pcall(P, ?MODULE, p_logs, [conflict_resolved]),
               Po =:= Pool].

status_state(Pid) ->
    {status, Pid, _, [_PDict, _SysState, _Parent, _Dbg, Misc]} = sys:get_status(Pid),
    hd([S || {data, D} <- Misc, {"State", S} <- D]).

forward(Event, Measurements, Meta, To) -> To ! {event, Event, Measurements, Meta}.

%% The next event whose name starts with [shoal, Group] (or is Event).
next_event(What) -> next_event(What, 2000).
next_event(What, T) ->
    receive
        {event, E, _, _} = M when E =:= What; tl(E) =/= [], hd(tl(E)) =:= What -> M
    after T -> none
    end.

recv_telemetry() ->
    receive {telemetry, [shoal, call, _], _, _} = M -> M after 2000 -> none end.

recv_telemetry(spawn) ->
    receive {telemetry, [shoal, worker, spawn], _, _} = M -> M after 2000 -> none end.

%% Logs: a logger handler on this node that sends every event to the test process.
log_to_me() ->
    Id = list_to_atom("shoal_ops_log_" ++ integer_to_list(erlang:unique_integer([positive]))),
    ok = logger:add_handler(Id, ?MODULE, #{config => #{pid => self()}, level => all}),
    Id.

%% @private logger handler: to a test process on this node, or into the peer's events table.
log(#{level := L, msg := {report, R}, meta := Meta}, #{config := Cfg}) when is_map(R) ->
    What = maps:get(what, R, maps:get(label, R, undefined)),
    case Cfg of
        #{pid := Pid} -> Pid ! {log, What, {log, L, R, Meta}};
        #{table := T} -> ets:insert(T, {{log, What}, {log, L, R, Meta}})
    end,
    ok;
log(_, _) -> ok.

next_log(What) -> next_log(What, 2000).
next_log(What, T) ->
    receive {log, What, Log} -> Log after T -> none end.

logs(What) ->
    receive {log, What, Log} -> [Log | logs(What)] after 0 -> [] end.

%%% On the peers ----------------------------------------------------------------------------

%% @private Record every Shoal event and every Shoal/OTP report of this node in the
%% collector's table.
p_listen() ->
    ok = shoal_telemetry:attach_many(shoal_ops, [E || {E, _, _} <- shoal_telemetry:events()],
                                     fun(E, _M, Meta, _) -> ets:insert(?EVENTS, {ev, E, Meta}) end,
                                     []),
    ok = logger:add_handler(shoal_ops_log, ?MODULE, #{config => #{table => ?EVENTS}, level => all}).

%% @private
p_events(ev) -> [{ev, E, M} || {ev, E, M} <- ets:lookup(?EVENTS, ev)].

%% @private
p_logs(What) -> [L || {_, L} <- ets:lookup(?EVENTS, {log, What})].

%% @private Node's window as this node's member knows it.
p_window(Pool, Node) -> shoal_view:window(persistent_term:get({shoal_pool, Pool}), Node).

%% @private Start the workers of Keys (calls from this node).
p_spawn(Pool, Keys, any) ->
    [{ok, _} = shoal:ensure_started(Pool, K) || K <- Keys],
    ok.

%%% A fake `telemetry' module (the real one is not in Debian) --------------------------------

load_fake_telemetry() ->
    Src = "-module(telemetry).\n-export([execute/3, list_handlers/1]).\n"
          "execute(E, M, Meta) -> {To, _} = persistent_term:get(shoal_ops_fake_telemetry),"
          " To ! {telemetry, E, M, Meta}, ok.\n"
          "list_handlers(_Prefix) -> element(2, persistent_term:get(shoal_ops_fake_telemetry)).\n",
    {ok, Tokens, _} = erl_scan:string(Src),
    Forms = [begin {ok, F} = erl_parse:parse_form(Ts), F end || Ts <- split_forms(Tokens, [])],
    {ok, telemetry, Bin} = compile:forms(Forms, [binary, return_errors]),
    {module, telemetry} = code:load_binary(telemetry, "fake_telemetry.erl", Bin),
    ok.

split_forms([], []) -> [];
split_forms([{dot, _} = D | Rest], Acc) -> [lists:reverse([D | Acc]) | split_forms(Rest, [])];
split_forms([T | Rest], Acc) -> split_forms(Rest, [T | Acc]).

unload_fake_telemetry() ->
    _ = code:purge(telemetry), _ = code:delete(telemetry), _ = code:purge(telemetry),
    ok.
