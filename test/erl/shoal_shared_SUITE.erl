%% @doc shoal_shared, one behaviour per case: atomic shared state under contention
%% (GenPool's lost updates), parallel reads, `{continue, _}' in the right process (GenPool),
%% restarted workers taking requests again (GenPool), the client queue (fifo, filo, max,
%% queue timeout), crashes failing back only the call in service, gen_server shapes.
-module(shoal_shared_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).
-import(shoal_tools_test_lib, [recv/1, recv/2, wait_until/1]).

-define(P, shared_test_pool).
-define(M, shoal_tools_test_shared).
-define(WAIT, 5000).

all() ->
    [regression_genpool_shared_state_loses_no_update, casts_are_atomic_too,
     reads_run_in_parallel_on_every_worker,
     regression_genpool_continue_runs_in_the_worker_that_returned_it,
     regression_genpool_restarted_workers_take_requests_again,
     max_refuses_at_once_with_too_many_requests, queue_timeout_expires_waiting_requests,
     fifo_serves_the_oldest_first, filo_serves_the_newest_first,
     a_killed_worker_fails_only_its_call_and_the_queue_survives,
     a_raising_callback_fails_its_caller_and_keeps_the_state,
     noreply_and_a_later_reply, timeout_return_sends_timeout_to_that_worker,
     hibernate_return_hibernates_the_worker, stop_return_restarts_the_worker,
     throw_is_a_return_value, bad_return_fails_the_caller,
     unshared_state_is_per_worker, infos_reach_the_worker_they_are_sent_to,
     stop_runs_terminate_once_and_fails_queued_calls, lives_in_a_user_supervisor,
     bad_options_are_errors, unknown_pool_is_an_error].

init_per_suite(Config) ->
    logger:set_primary_config(level, critical),
    Config.

end_per_suite(_Config) ->
    logger:set_primary_config(level, notice).

end_per_testcase(_Case, _Config) ->
    _ = shoal_shared:stop(?P),
    persistent_term:erase(shoal_tools_test_terminate_to),
    ok.

%%% Helpers -------------------------------------------------------------------------------

start(Args, Opts) ->
    {ok, Sup} = shoal_shared:start_link(?P, ?M, Args, maps:merge(#{size => 8}, Opts)),
    unlink(Sup),
    Sup.

%% Run Fun in a new process; its result comes back as {Tag, Result}.
async(Tag, Fun) ->
    Self = self(),
    spawn(fun() -> Self ! {Tag, try Fun() catch C:R -> {caught, C, R} end} end).

%% Occupy every worker with a held request; returns the workers' pids.
hold_all(N) ->
    [async(held, fun() -> shoal_shared:call(?P, {hold, tester()}, 30000) end)
     || _ <- lists:seq(1, N)],
    [element(2, recv(holding)) || _ <- lists:seq(1, N)].

tester() -> persistent_term:get(shoal_tools_test_self).

%%% Shared state --------------------------------------------------------------------------

%% GenPool 0.1.0 read-modify-wrote one ETS key from every worker and lost updates:
%% 50 callers doing 100,000 concurrent {add, 1} on a pool of 8 must end at exactly 100,000.
regression_genpool_shared_state_loses_no_update(_Config) ->
    start(0, #{}),
    Self = self(),
    [spawn_link(fun() ->
                        [shoal_shared:call(?P, {add, 1}, 60000) || _ <- lists:seq(1, 2000)],
                        Self ! {added}
                end) || _ <- lists:seq(1, 50)],
    [recv(added, 120000) || _ <- lists:seq(1, 50)],
    ?assertEqual(100000, shoal_shared:get_state(?P)),
    ?assertEqual(100000, shoal_shared:call(?P, get)),
    #{calls := Calls, reruns := Reruns} = shoal_shared:stats(?P),
    ?assertEqual(100001, Calls),
    ct:pal("100,000 concurrent adds on 8 workers: ~p reran after a conflicting write", [Reruns]).

casts_are_atomic_too(_Config) ->
    start(0, #{}),
    Self = self(),
    [spawn_link(fun() -> [ok = shoal_shared:cast(?P, {add, 1}) || _ <- lists:seq(1, 1000)],
                         Self ! {cast_done} end) || _ <- lists:seq(1, 10)],
    [recv(cast_done) || _ <- lists:seq(1, 10)],
    wait_until(fun() -> shoal_shared:get_state(?P) =:= 10000 end),
    ?assertEqual(10000, shoal_shared:call(?P, get)).

reads_run_in_parallel_on_every_worker(_Config) ->
    %% Eight reads that each wait until released are all in progress at once.
    persistent_term:put(shoal_tools_test_self, self()),
    start(41, #{}),
    Holders = hold_all(8),
    ?assertEqual(8, length(lists:usort(Holders))),
    ?assertEqual(lists:sort(shoal_shared:workers(?P)), lists:sort(Holders)),
    [H ! release || H <- Holders],
    Released = [element(2, recv(held)) || _ <- Holders],
    ?assertEqual(lists:sort([{released, H} || H <- Holders]), lists:sort(Released)),
    #{reruns := 0} = shoal_shared:stats(?P),
    ?assertEqual(41, shoal_shared:get_state(?P)).

%% GenPool 0.1.0 ran a worker's {continue, _} in another process.
regression_genpool_continue_runs_in_the_worker_that_returned_it(_Config) ->
    start(0, #{}),
    Self = self(),
    [spawn_link(fun() ->
                        [begin
                             W = shoal_shared:call(?P, {continue, self()}),
                             receive {continued, C} -> Self ! {pair, W, C} end
                         end || _ <- lists:seq(1, 50)]
                end) || _ <- lists:seq(1, 8)],
    Pairs = [recv(pair) || _ <- lists:seq(1, 400)],
    ?assertEqual([], [P || {pair, W, C} = P <- Pairs, W =/= C]).

%% GenPool 0.1.0 never re-added a restarted worker: after every worker was killed, the
%% pool must still serve eight requests at once, on eight new workers.
regression_genpool_restarted_workers_take_requests_again(_Config) ->
    persistent_term:put(shoal_tools_test_self, self()),
    start(0, #{}),
    Old = shoal_shared:workers(?P),
    [begin Ref = erlang:monitor(process, W), exit(W, kill),
           receive {'DOWN', Ref, _, _, _} -> ok end end || W <- Old],
    wait_until(fun() -> W = shoal_shared:workers(?P),
                        length(W) =:= 8 andalso W -- Old =:= W end),
    Holders = hold_all(8),
    ?assertEqual(lists:sort(shoal_shared:workers(?P)), lists:sort(Holders)),
    ?assertEqual([], Holders -- (Holders -- Old)),
    [H ! release || H <- Holders],
    [recv(held) || _ <- Holders],
    ?assertMatch(#{crashes := 8}, shoal_shared:stats(?P)).

%%% The client queue ----------------------------------------------------------------------

max_refuses_at_once_with_too_many_requests(_Config) ->
    persistent_term:put(shoal_tools_test_self, self()),
    start(0, #{size => 1, max => 3}),
    [W] = hold_all(1),
    [async(queued, fun() -> shoal_shared:call(?P, get) end) || _ <- [1, 2, 3]],
    wait_until(fun() -> maps:get(queued, shoal_shared:stats(?P)) =:= 3 end),
    ?assertEqual({error, too_many_requests}, shoal_shared:call(?P, get)),
    ?assertEqual({error, too_many_requests}, shoal_shared:cast(?P, {add, 1})),
    W ! release,
    [{queued, 0} = recv(queued) || _ <- [1, 2, 3]],
    ?assertMatch(#{rejected := 2, queued := 0}, shoal_shared:stats(?P)),
    ?assertEqual(0, shoal_shared:call(?P, get)).

queue_timeout_expires_waiting_requests(_Config) ->
    persistent_term:put(shoal_tools_test_self, self()),
    start(0, #{size => 1, queue_timeout => 100}),
    [W] = hold_all(1),
    ok = shoal_shared:cast(?P, {add, 5}),
    ?assertEqual({error, queue_timeout}, shoal_shared:call(?P, get, 5000)),
    %% A call whose own timeout is shorter exits like gen_server:call and is taken back.
    ?assertExit({timeout, {shoal_shared, call, [?P, get, 50]}}, shoal_shared:call(?P, get, 50)),
    W ! release,
    recv(held),
    %% The cast waited past the queue timeout: dropped, not run.
    ?assertEqual(0, shoal_shared:call(?P, get)),
    ?assertMatch(#{expired := 2, queued := 0}, shoal_shared:stats(?P)).

fifo_serves_the_oldest_first(_Config) ->
    ?assertEqual([a, b, c, d], order_served(fifo)).

filo_serves_the_newest_first(_Config) ->
    ?assertEqual([d, c, b, a], order_served(filo)).

order_served(Queue) ->
    persistent_term:put(shoal_tools_test_self, self()),
    start(0, #{size => 1, queue => Queue}),
    [W] = hold_all(1),
    [ok = shoal_shared:cast(?P, {log, self(), T}) || T <- [a, b, c, d]],
    W ! release,
    recv(held),
    Order = [element(2, recv(cast_ran)) || _ <- [a, b, c, d]],
    ok = shoal_shared:stop(?P),
    Order.

a_killed_worker_fails_only_its_call_and_the_queue_survives(_Config) ->
    persistent_term:put(shoal_tools_test_self, self()),
    start(7, #{size => 1}),
    [W] = hold_all(1),
    [async({queued, I}, fun() -> shoal_shared:call(?P, {add, 1}) end) || I <- [1, 2, 3]],
    wait_until(fun() -> maps:get(queued, shoal_shared:stats(?P)) =:= 3 end),
    ok = shoal_shared:cast(?P, {add, 100}),
    exit(W, kill),
    %% The call in service fails back with the reason...
    {held, {caught, exit, {killed, {shoal_shared, call, [?P, {hold, _}, 30000]}}}} = recv(held),
    %% ...and the queued ones are served by the restarted worker.
    Replies = lists:sort([receive {{queued, I}, R} -> R after ?WAIT -> ct:fail(lost) end
                          || I <- [1, 2, 3]]),
    ?assertEqual([8, 9, 10], Replies),
    wait_until(fun() -> shoal_shared:get_state(?P) =:= 110 end),
    [W2] = shoal_shared:workers(?P),
    ?assertNotEqual(W, W2).

a_raising_callback_fails_its_caller_and_keeps_the_state(_Config) ->
    start(3, #{size => 2}),
    ?assertExit({{planned_crash, [_ | _]}, {shoal_shared, call, [?P, crash, 5000]}},
                shoal_shared:call(?P, crash)),
    ?assertEqual(3, shoal_shared:call(?P, get)),
    wait_until(fun() -> length(shoal_shared:workers(?P)) =:= 2 andalso
                            lists:all(fun erlang:is_process_alive/1, shoal_shared:workers(?P)) end),
    ?assertEqual(5, shoal_shared:call(?P, {add, 2})).

%%% gen_server shapes ---------------------------------------------------------------------

noreply_and_a_later_reply(_Config) ->
    start(0, #{}),
    Self = self(),
    async(later, fun() -> shoal_shared:call(?P, {later, Self}) end),
    {reply_later, From} = recv(reply_later),
    ok = shoal_shared:reply(From, answered),
    {later, answered} = recv(later).

timeout_return_sends_timeout_to_that_worker(_Config) ->
    start(0, #{}),
    W = shoal_shared:call(?P, {timeout_in, 20, self()}),
    {timed_out, W} = recv(timed_out).

hibernate_return_hibernates_the_worker(_Config) ->
    start(0, #{size => 1}),
    W = shoal_shared:call(?P, hibernate),
    wait_until(fun() -> erlang:process_info(W, current_function) =:= {current_function, {erlang, hibernate, 3}} end),
    ?assertEqual(1, shoal_shared:call(?P, {add, 1})),
    ?assertEqual(W, shoal_shared:call(?P, whoami)).

stop_return_restarts_the_worker(_Config) ->
    start(5, #{size => 1}),
    W = shoal_shared:call(?P, whoami),
    ?assertEqual(stopping, shoal_shared:call(?P, {stop, normal})),
    wait_until(fun() -> shoal_shared:workers(?P) =/= [W] end),
    ?assertNotEqual(W, shoal_shared:call(?P, whoami)),
    ?assertEqual(5, shoal_shared:call(?P, get)).

throw_is_a_return_value(_Config) ->
    start(1, #{}),
    ?assertEqual(thrown, shoal_shared:call(?P, {throw, {reply, thrown, 1}})),
    ?assertEqual(2, shoal_shared:call(?P, {throw, {reply, 2, 2}})),
    ?assertEqual(2, shoal_shared:get_state(?P)).

bad_return_fails_the_caller(_Config) ->
    start(1, #{}),
    ?assertExit({{bad_return_value, nonsense}, _}, shoal_shared:call(?P, bad_return)),
    ?assertEqual(1, shoal_shared:call(?P, get)).

unshared_state_is_per_worker(_Config) ->
    start(10, #{size => 3, shared_state => false}),
    %% Each worker adds to its own copy: three workers, three states.
    [shoal_shared:call(?P, {add, 1}) || _ <- lists:seq(1, 30)],
    States = shoal_shared:get_state(?P),
    ?assertEqual(3, length(States)),
    ?assertEqual(60, lists:sum(States)).

infos_reach_the_worker_they_are_sent_to(_Config) ->
    start(0, #{size => 4}),
    [begin W ! {ping, self()}, {pong, W} = recv(pong) end || W <- shoal_shared:workers(?P)].

%%% Life cycle ----------------------------------------------------------------------------

stop_runs_terminate_once_and_fails_queued_calls(_Config) ->
    persistent_term:put(shoal_tools_test_terminate_to, self()),
    start(0, #{size => 1}),
    7 = shoal_shared:call(?P, {add, 7}),
    %% A suspended worker takes no request: the call stays queued until the stop.
    [W] = shoal_shared:workers(?P),
    ok = sys:suspend(W),
    async(queued, fun() -> shoal_shared:call(?P, get, infinity) end),
    wait_until(fun() -> maps:get(queued, shoal_shared:stats(?P)) =:= 1 end),
    ok = shoal_shared:stop(?P),
    {queued, {caught, exit, {shutdown, {shoal_shared, call, [?P, get, infinity]}}}} = recv(queued),
    {terminated, shutdown, 7} = recv(terminated),
    receive {terminated, _, _} = T -> ct:fail({twice, T}) after 100 -> ok end.

lives_in_a_user_supervisor(_Config) ->
    {ok, Sup} = supervisor:start_link(shoal_test_sup,
                                      [shoal_shared:child_spec({?P, ?M, 0, [{size, 2}]})]),
    ?assertEqual(1, shoal_shared:call(?P, {add, 1})),
    [{{shoal_shared, ?P}, Pool, supervisor, _}] = supervisor:which_children(Sup),
    ?assertEqual(Pool, whereis(?P)),
    unlink(Sup), exit(Sup, shutdown),
    wait_until(fun() -> whereis(?P) =:= undefined end).

bad_options_are_errors(_Config) ->
    [?assertEqual({error, Why}, shoal_shared:start_link(?P, Mod, 0, Opts))
     || {Mod, Opts, Why} <- [{nosuch_xyz, #{}, {module_not_loadable, nosuch_xyz, nofile}},
                             {lists, #{}, {missing_callback, lists, init, 1}},
                             {?M, #{size => 0}, {bad_option, size, 0}},
                             {?M, #{queue => lifo}, {bad_option, queue, lifo}},
                             {?M, #{max => -1}, {bad_option, max, -1}},
                             {?M, #{queue_timeout => x}, {bad_option, queue_timeout, x}},
                             {?M, #{shared_state => yes}, {bad_option, shared_state, yes}},
                             {?M, #{colour => red}, {unknown_option, colour}}]],
    %% init/1 refusing: start_link returns the error (and, as in OTP, its linked caller
    %% gets the exit signal: trapped here).
    process_flag(trap_exit, true),
    ?assertMatch({error, {shutdown, {failed_to_start_child, owner, no}}},
                 shoal_shared:start_link(?P, ?M, {crash, no}, #{})),
    ?assertEqual(undefined, whereis(?P)).

unknown_pool_is_an_error(_Config) ->
    E = {error, {no_such_pool, nope}},
    [?assertEqual(E, R) || R <- [shoal_shared:call(nope, x), shoal_shared:cast(nope, x),
                                 shoal_shared:get_state(nope), shoal_shared:workers(nope),
                                 shoal_shared:stats(nope), shoal_shared:stop(nope)]].
