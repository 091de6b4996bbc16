%% @doc shoal_fixed, one behaviour per case: the dispatch modes, retries and backoff,
%% callbacks, a worker leaving or stopping the pool, restarts put back in the dispatch
%% table (GenPool's defect), calls that fail over while workers are killed, bad input.
-module(shoal_fixed_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).
-import(shoal_tools_test_lib, [kill/1, none/1, recv/1, recv/2, wait_until/1]).

-define(P, fixed_test_pool).
-define(W, shoal_tools_test_fixed).
-define(WAIT, 5000).

all() ->
    [round_robin_visits_every_worker_in_turn, random_and_monotonic_reach_only_live_workers,
     hash_mode_sends_a_job_to_one_worker, call_key_picks_by_key_whatever_the_mode,
     broadcast_call_answers_per_worker_with_errors_in_place, broadcast_cast_reaches_every_worker,
     cast_to_and_pid_address_a_worker_by_index, callbacks_run_from_a_job_result,
     regression_poolder_default_retry_runs_every_job_once,
     retries_then_job_failed_counted_in_stats, a_retry_within_count_succeeds,
     handle_error_halt_stops_retrying, handle_error_retry_updates_the_state,
     backoff_does_not_block_the_workers_other_jobs,
     a_bad_result_shape_is_a_failed_job,
     exit_takes_the_worker_out_for_good_and_hands_on_its_queued_casts,
     stop_job_stops_the_whole_pool, pool_ready_gets_the_supervisor,
     regression_genpool_restarted_worker_is_back_in_dispatch,
     a_call_to_a_dead_worker_goes_to_its_successor, a_keyed_cast_waits_for_a_restarting_worker,
     calls_under_repeated_worker_kills_are_never_silent,
     lives_in_a_user_supervisor, options_as_a_proplist, bad_options_are_errors,
     unknown_pool_is_an_error].

init_per_suite(Config) ->
    logger:set_primary_config(level, critical),   % the kills below are on purpose
    Config.

end_per_suite(_Config) ->
    logger:set_primary_config(level, notice).

init_per_testcase(_Case, Config) ->
    _ = ets:new(shoal_tools_test_attempts, [named_table, public]),
    Config.

end_per_testcase(_Case, _Config) ->
    _ = shoal_fixed:stop(?P),
    persistent_term:erase(shoal_tools_test_ready_to),
    ok.

%%% Helpers -------------------------------------------------------------------------------

start(Opts) ->
    {ok, Sup} = shoal_fixed:start_link(?P, maps:merge(#{worker => ?W, size => 4,
                                                        args => #{notify => self()}}, Opts)),
    unlink(Sup),
    Sup.

%%% Dispatch modes ------------------------------------------------------------------------

round_robin_visits_every_worker_in_turn(_Config) ->
    start(#{}),
    Ixs = [element(1, shoal_fixed:call(?P, whoami)) || _ <- lists:seq(1, 12)],
    %% Each window of 4 consecutive calls sees every worker once, in the same order.
    [?assertEqual([0, 1, 2, 3], lists:sort(lists:sublist(Ixs, I, 4))) || I <- [1, 5, 9]],
    ?assertEqual(lists:sublist(Ixs, 1, 4), lists:sublist(Ixs, 5, 4)).

random_and_monotonic_reach_only_live_workers(_Config) ->
    lists:foreach(
      fun(Mode) ->
              start(#{mode => Mode}),
              Pids = [shoal_fixed:pid(?P, I) || I <- lists:seq(0, 3)],
              Seen = lists:usort([element(2, shoal_fixed:call(?P, whoami)) || _ <- lists:seq(1, 200)]),
              ?assertEqual([], Seen -- Pids),
              ?assert(length(Seen) >= 2),
              ok = shoal_fixed:stop(?P)
      end, [random, monotonic]).

hash_mode_sends_a_job_to_one_worker(_Config) ->
    start(#{mode => hash}),
    [begin
         Job = {echo, K},
         Owners = lists:usort([begin ok = shoal_fixed:cast(?P, {record, K}),
                                     {ran, K, _, Pid} = recv(ran), Pid end || _ <- [1, 2, 3]]),
         ?assertEqual(1, length(Owners)),
         ?assertEqual(K, shoal_fixed:call(?P, Job))
     end || K <- lists:seq(1, 20)],
    %% The same job always lands on the same worker: calls with one job agree.
    ?assertEqual(1, length(lists:usort([shoal_fixed:call(?P, whoami) || _ <- lists:seq(1, 10)]))).

call_key_picks_by_key_whatever_the_mode(_Config) ->
    start(#{mode => round_robin}),
    [begin
         Pids = lists:usort([element(2, shoal_fixed:call_key(?P, K, whoami)) || _ <- lists:seq(1, 8)]),
         ?assertEqual(1, length(Pids)),
         ok = shoal_fixed:cast_key(?P, K, {record, K}),
         {ran, K, _, P} = recv(ran),
         ?assertEqual(Pids, [P])
     end || K <- [a, b, {user, 1}, <<"k">>, 42]],
    %% Keys spread: 40 keys reach more than one worker.
    ?assert(length(lists:usort([shoal_fixed:call_key(?P, K, whoami) || K <- lists:seq(1, 40)])) > 1).

broadcast_call_answers_per_worker_with_errors_in_place(_Config) ->
    start(#{mode => broadcast}),
    ?assertEqual([{I, shoal_fixed:pid(?P, I)} || I <- [0, 1, 2, 3]], shoal_fixed:call(?P, whoami)),
    %% One worker busy: its place says timeout, the others answer.
    Busy = shoal_fixed:pid(?P, 2),
    ok = shoal_fixed:cast_to(?P, 2, {block, self()}),
    {blocked, Busy} = recv(blocked),
    R = shoal_fixed:call(?P, {echo, hi}, 300),
    ?assertEqual([hi, hi, {error, timeout}, hi], R),
    Busy ! release,
    %% A failing job fails in every place.
    [?assertMatch({error, {job_failed, {error, {planned, _}, _}}}, E)
     || E <- shoal_fixed:call(?P, {fail_times, 100, k})].

broadcast_cast_reaches_every_worker(_Config) ->
    start(#{mode => broadcast}),
    ok = shoal_fixed:cast(?P, {record, all}),
    Ixs = lists:sort([element(3, recv(ran)) || _ <- [1, 2, 3, 4]]),
    ?assertEqual([0, 1, 2, 3], Ixs),
    none(ran).

cast_to_and_pid_address_a_worker_by_index(_Config) ->
    start(#{}),
    [begin
         ok = shoal_fixed:cast_to(?P, I, {record, I}),
         {ran, I, I, Pid} = recv(ran),
         ?assertEqual(shoal_fixed:pid(?P, I), Pid)
     end || I <- [3, 0, 2, 1]],
    ?assertEqual(4, shoal_fixed:size(?P)),
    ?assertEqual({error, {bad_index, 4}}, shoal_fixed:pid(?P, 4)),
    ?assertEqual({error, {bad_index, -1}}, shoal_fixed:cast_to(?P, -1, x)),
    ?assertEqual({error, {bad_index, x}}, shoal_fixed:pid(?P, x)).

callbacks_run_from_a_job_result(_Config) ->
    start(#{callbacks => #{relay => {?W, relay}}}),
    ?assertEqual({relayed, hello}, shoal_fixed:call(?P, {relay, [self(), hello]})),
    {relayed, hello} = recv(relayed),
    ok = shoal_fixed:cast(?P, {relay, [self(), cast]}),
    {relayed, cast} = recv(relayed),
    ?assertMatch({error, {job_failed, {error, {unknown_callback, nowhere}, _}}},
                 shoal_fixed:call(?P, {nowhere, []})).

%%% Retries -------------------------------------------------------------------------------

%% Poolder 0.1.7: with the default retry option jobs never ran.
regression_poolder_default_retry_runs_every_job_once(_Config) ->
    start(#{}),
    [ok = shoal_fixed:cast(?P, {record, I}) || I <- lists:seq(1, 20)],
    Ran = lists:sort([element(2, recv(ran)) || _ <- lists:seq(1, 20)]),
    ?assertEqual(lists:seq(1, 20), Ran),
    none(ran),
    %% and a failing job runs exactly once: no retry by default.
    ?assertMatch({error, {job_failed, _}}, shoal_fixed:call(?P, {fail_times, 1, once})),
    ?assertEqual([{once, 1}], ets:lookup(shoal_tools_test_attempts, once)).

retries_then_job_failed_counted_in_stats(_Config) ->
    start(#{retry => #{count => 2}, size => 1}),
    ?assertMatch({error, {job_failed, {error, {planned, 3}, [_ | _]}}},
                 shoal_fixed:call(?P, {fail_times, 10, k})),
    ?assertEqual([{k, 3}], ets:lookup(shoal_tools_test_attempts, k)),
    [{handle_error, _, 1}, {handle_error, _, 2}, {handle_error, _, 3}] =
        [recv(handle_error) || _ <- [1, 2, 3]],
    ?assertMatch(#{failed := 1, retries := 2, done := 0}, shoal_fixed:stats(?P)).

a_retry_within_count_succeeds(_Config) ->
    start(#{retry => [{count, 3}], size => 2}),
    ?assertEqual({succeeded_at, 3}, shoal_fixed:call(?P, {fail_times, 2, k})),
    ?assertMatch(#{failed := 0, retries := 2, done := 1}, shoal_fixed:stats(?P)).

handle_error_halt_stops_retrying(_Config) ->
    start(#{retry => #{count => 5}, args => #{notify => self(), policy => halt}}),
    ?assertMatch({error, {job_failed, _}}, shoal_fixed:call(?P, {fail_times, 10, k})),
    ?assertEqual([{k, 1}], ets:lookup(shoal_tools_test_attempts, k)).

handle_error_retry_updates_the_state(_Config) ->
    start(#{size => 1, retry => #{count => 5}, args => #{notify => self(), policy => retry}}),
    ?assertEqual({succeeded_at, 4}, shoal_fixed:call(?P, {fail_times, 3, k})),
    ?assertEqual(3, shoal_fixed:call(?P, retried)).

backoff_does_not_block_the_workers_other_jobs(_Config) ->
    %% One worker; the first job fails once and backs off 300 ms. A job sent after it is
    %% answered first: the backoff is a timer, not a sleep in the worker.
    start(#{size => 1, retry => #{count => 1},
            args => #{notify => self(), policy => {backoff, 300}}}),
    Self = self(),
    spawn_link(fun() -> Self ! {slow, shoal_fixed:call(?P, {fail_times, 1, k})} end),
    {handle_error, _, 1} = recv(handle_error),
    ?assertEqual(quick, shoal_fixed:call(?P, {echo, quick})),
    receive {slow, _} -> ct:fail(backoff_blocked_the_worker) after 0 -> ok end,
    {slow, {succeeded_at, 2}} = recv(slow).

a_bad_result_shape_is_a_failed_job(_Config) ->
    start(#{}),
    ?assertMatch({error, {job_failed, {error, {bad_return, {what, is, this, _}}, []}}},
                 shoal_fixed:call(?P, bad_shape)),
    ?assertEqual(hi, shoal_fixed:call(?P, {echo, hi})).

%%% Workers leaving, the pool stopping ---------------------------------------------------

exit_takes_the_worker_out_for_good_and_hands_on_its_queued_casts(_Config) ->
    start(#{}),
    W1 = shoal_fixed:pid(?P, 1),
    Mon = erlang:monitor(process, W1),
    ok = shoal_fixed:cast_to(?P, 1, {block, self()}),
    {blocked, W1} = recv(blocked),
    ok = shoal_fixed:cast_to(?P, 1, exit),
    [ok = shoal_fixed:cast_to(?P, 1, {record, I}) || I <- [a, b, c]],
    W1 ! release,
    {'DOWN', Mon, process, W1, normal} = recv('DOWN'),
    %% The casts queued behind `exit' ran on the other workers.
    Ran = [recv(ran) || _ <- [a, b, c]],
    ?assertEqual([a, b, c], lists:sort([T || {ran, T, _, _} <- Ran])),
    ?assertEqual([], [P || {ran, _, _, P} <- Ran, P =:= W1]),
    ?assertEqual(undefined, shoal_fixed:pid(?P, 1)),
    ?assertEqual({error, {worker_exited, 1}}, shoal_fixed:cast_to(?P, 1, x)),
    ?assertMatch(#{size := 4, live := 3, exited := 1, restarts := 0}, shoal_fixed:stats(?P)),
    ?assertEqual([0, 2, 3], lists:usort([element(1, shoal_fixed:call(?P, whoami))
                                         || _ <- lists:seq(1, 9)])),
    %% Keys that hashed to the worker that left are served by the others.
    [?assertNotEqual(W1, element(2, shoal_fixed:call_key(?P, K, whoami))) || K <- lists:seq(1, 30)].

stop_job_stops_the_whole_pool(_Config) ->
    Sup = start(#{}),
    Mon = erlang:monitor(process, Sup),
    ?assertEqual(ok, shoal_fixed:call(?P, stop)),
    {'DOWN', Mon, process, Sup, normal} = recv('DOWN'),
    ?assertEqual(undefined, whereis(?P)),
    ?assertEqual({error, {no_such_pool, ?P}}, shoal_fixed:call(?P, whoami)).

pool_ready_gets_the_supervisor(_Config) ->
    persistent_term:put(shoal_tools_test_ready_to, self()),
    Sup = start(#{}),
    {pool_ready, Sup} = recv(pool_ready),
    %% every worker had started by then
    ?assertEqual(4, length([recv(fixed_init) || _ <- [1, 2, 3, 4]])).

%%% Restarts ------------------------------------------------------------------------------

%% GenPool 0.1.0: a restarted worker was never re-added to the pool.
regression_genpool_restarted_worker_is_back_in_dispatch(_Config) ->
    start(#{}),
    Old = [shoal_fixed:pid(?P, I) || I <- [0, 1, 2, 3]],
    [kill(P) || P <- Old],
    Slots = fun() -> [shoal_fixed:pid(?P, I) || I <- [0, 1, 2, 3]] end,
    wait_until(fun() -> lists:all(fun(P) -> not lists:member(P, Old) end, Slots()) andalso
                            maps:get(live, shoal_fixed:stats(?P)) =:= 4 end),
    New = [shoal_fixed:pid(?P, I) || I <- [0, 1, 2, 3]],
    %% Round robin reaches every new worker, and only new ones.
    Served = lists:usort([element(2, shoal_fixed:call(?P, whoami)) || _ <- lists:seq(1, 8)]),
    ?assertEqual(lists:sort(New), Served),
    ?assertMatch(#{restarts := 4, live := 4}, shoal_fixed:stats(?P)).

a_call_to_a_dead_worker_goes_to_its_successor(_Config) ->
    start(#{}),
    Key = some_key,
    {Ix, Old} = shoal_fixed:call_key(?P, Key, whoami),
    kill(Old),
    %% Sent right away, while the supervisor restarts the worker: answered by the successor.
    {Ix, New} = shoal_fixed:call_key(?P, Key, whoami),
    ?assertNotEqual(Old, New),
    ?assertEqual(New, shoal_fixed:pid(?P, Ix)).

a_keyed_cast_waits_for_a_restarting_worker(_Config) ->
    start(#{}),
    {Ix, Old} = shoal_fixed:call_key(?P, k, whoami),
    kill(Old),
    ok = shoal_fixed:cast_key(?P, k, {record, after_kill}),
    {ran, after_kill, Ix, New} = recv(ran),
    ?assertNotEqual(Old, New).

%% Callers hammer call_key while workers are killed over and over (faster than the worker
%% supervisor's restart intensity allows, so it escalates and is restarted too): every call
%% returns the worker's reply or exits with the reason its worker died with after the call
%% reached it (`killed', or `shutdown' when the supervisor restarted them all); none is lost
%% to a timeout.
calls_under_repeated_worker_kills_are_never_silent(_Config) ->
    start(#{size => 4}),
    Self = self(),
    Callers = [spawn_link(fun() -> Self ! {caller_done, caller(C, 0, [])} end)
               || C <- lists:seq(1, 16)],
    killer(30),
    [C ! stop || C <- Callers],
    Results = lists:append([element(2, recv(caller_done, 60000)) || _ <- Callers]),
    Bad = [R || R <- Results, R =/= ok, R =/= killed, R =/= shutdown],
    ?assertEqual([], Bad),
    #{restarts := Restarts} = shoal_fixed:stats(?P),
    ?assert(Restarts >= 30),
    ct:pal("~p calls, ~p exited with their killed worker, ~p with shutdown; ~p restarts",
           [length(Results), length([R || R <- Results, R =:= killed]),
            length([R || R <- Results, R =:= shutdown]), Restarts]).

caller(C, N, Acc) ->
    receive stop -> Acc
    after 0 ->
            R = try shoal_fixed:call_key(?P, {C, N}, {echo, N}, 2000) of
                    N -> ok;
                    Other -> {wrong, Other}
                catch exit:{Reason, {shoal_fixed, call_key, _}} -> Reason
                end,
            caller(C, N + 1, [R | Acc])
    end.

%% Kill N workers, one every few ms, each after its successor is in place.
killer(0) -> ok;
killer(N) ->
    receive after 5 -> ok end,
    Ix = rand:uniform(4) - 1,
    case shoal_fixed:pid(?P, Ix) of
        P when is_pid(P) ->
            kill(P),
            wait_until(fun() -> is_pid(shoal_fixed:pid(?P, Ix)) andalso
                                    shoal_fixed:pid(?P, Ix) =/= P end);
        _ -> ok
    end,
    killer(N - 1).

%%% Supervision and options --------------------------------------------------------------

lives_in_a_user_supervisor(_Config) ->
    {ok, Sup} = supervisor:start_link(shoal_test_sup,
                                      [shoal_fixed:child_spec({?P, #{worker => ?W, size => 2}})]),
    ?assertMatch({_, _}, shoal_fixed:call(?P, whoami)),
    [{{shoal_fixed, ?P}, Pool, supervisor, _}] = supervisor:which_children(Sup),
    ?assertEqual(Pool, whereis(?P)),
    %% A pool that stops for good is not restarted (transient).
    ok = shoal_fixed:call(?P, stop),
    wait_until(fun() -> whereis(?P) =:= undefined end),
    ?assertMatch([{_, undefined, _, _}], supervisor:which_children(Sup)),
    unlink(Sup), exit(Sup, shutdown).

options_as_a_proplist(_Config) ->
    {ok, Sup} = shoal_fixed:start_link(?P, [{worker, ?W}, {size, 3}, {mode, hash},
                                            {retry, [{count, 1}, {backoff, 0}]},
                                            {callbacks, [{relay, {?W, relay}}]}]),
    unlink(Sup),
    ?assertEqual(3, shoal_fixed:size(?P)),
    ?assertEqual({succeeded_at, 2}, shoal_fixed:call(?P, {fail_times, 1, k})),
    ?assertEqual({relayed, x}, shoal_fixed:call(?P, {relay, [self(), x]})).

bad_options_are_errors(_Config) ->
    Bad = [{#{}, {missing_option, worker}},
           {#{worker => nosuchmodule_xyz}, {module_not_loadable, nosuchmodule_xyz, nofile}},
           {#{worker => lists}, {missing_callback, lists, init, 2}},
           {#{worker => ?W, size => 0}, {bad_option, size, 0}},
           {#{worker => ?W, mode => sideways}, {bad_option, mode, sideways}},
           {#{worker => ?W, retry => #{count => -1}}, {bad_option, retry, #{count => -1}}},
           {#{worker => ?W, callbacks => #{reply => {m, f}}}, {reserved_callback_name, reply}},
           {#{worker => ?W, callbacks => #{cb => notmf}}, {bad_option, callbacks, {cb, notmf}}},
           {#{worker => ?W, colour => blue}, {unknown_option, colour}},
           {[{worker, ?W}, 42], {bad_options, [{worker, ?W}, 42]}},
           {not_options, {bad_options, not_options}}],
    [?assertEqual({error, Why}, shoal_fixed:start_link(?P, Opts)) || {Opts, Why} <- Bad],
    ?assertEqual({error, {bad_name, "p"}}, shoal_fixed:start_link("p", #{worker => ?W})),
    Sup = start(#{}),
    ?assertEqual({error, {already_started, Sup}}, shoal_fixed:start_link(?P, #{worker => ?W})).

unknown_pool_is_an_error(_Config) ->
    E = {error, {no_such_pool, nope}},
    ?assertEqual(E, shoal_fixed:cast(nope, x)),
    ?assertEqual(E, shoal_fixed:call(nope, x)),
    ?assertEqual(E, shoal_fixed:call_key(nope, k, x)),
    ?assertEqual(E, shoal_fixed:cast_key(nope, k, x)),
    ?assertEqual(E, shoal_fixed:cast_to(nope, 0, x)),
    ?assertEqual(E, shoal_fixed:pid(nope, 0)),
    ?assertEqual(E, shoal_fixed:size(nope)),
    ?assertEqual(E, shoal_fixed:stats(nope)),
    ?assertEqual(E, shoal_fixed:stop(nope)).
