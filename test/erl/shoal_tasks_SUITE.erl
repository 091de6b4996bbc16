%% @doc shoal_tasks, one behaviour per case: the concurrency limit, the queue bound,
%% results correlated with their requests (Poolder's await), errors to their awaiter only,
%% a dead caller's queued tasks cancelled, hibernation (Poolder's crash on wake-up).
-module(shoal_tasks_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).
-import(shoal_tools_test_lib, [none/1, wait_until/1]).

-define(T, tasks_test_runner).
-define(WAIT, 5000).

all() ->
    [at_most_limit_tasks_run_at_once, beyond_max_queue_run_is_overloaded,
     regression_poolder_await_returns_the_result_of_its_own_task,
     await_many_answers_in_the_order_of_the_refs,
     a_raising_task_gives_its_error_to_its_awaiter_only, a_killed_task_is_an_error,
     await_timeout_leaves_no_late_result_behind,
     a_dead_callers_queued_tasks_are_cancelled,
     regression_poolder_runner_works_after_hibernating,
     run_and_forget_and_mfa_tasks_run, stopping_fails_running_and_queued_tasks,
     lives_in_a_user_supervisor, bad_input_is_an_error].

end_per_testcase(_Case, _Config) ->
    _ = shoal_tasks:stop(?T),
    ok.

start(Opts) ->
    {ok, Pid} = shoal_tasks:start_link(?T, Opts),
    unlink(Pid),
    Pid.

recv(Tag) ->
    receive Msg when element(1, Msg) =:= Tag -> Msg
    after ?WAIT -> ct:fail({nothing_received, Tag, erlang:process_info(self(), messages),
                            catch shoal_tasks:stats(?T)})
    end.

%% A task that says it started, then waits for `go' and returns I.
gated(I) ->
    Self = self(),
    fun() -> Self ! {started, I, self()}, receive go -> I end end.

%% Let N gated tasks finish, one at a time, as they start.
release(0) -> ok;
release(N) ->
    {started, _, P} = recv(started),
    P ! go,
    release(N - 1).

%%% Cases ---------------------------------------------------------------------------------

at_most_limit_tasks_run_at_once(_Config) ->
    start(#{limit => 3}),
    Refs = [shoal_tasks:run(?T, gated(I)) || I <- lists:seq(1, 10)],
    Running = [recv(started) || _ <- [1, 2, 3]],
    none(started),
    ?assertMatch(#{running := 3, queued := 7}, shoal_tasks:stats(?T)),
    %% Each finishing task lets exactly one more start, in submission order.
    Go = fun({started, I, P}) -> P ! go, I end,
    [1, 2, 3] = lists:sort([Go(S) || S <- Running]),
    Next = [recv(started) || _ <- [1, 2, 3]],
    ?assertEqual([4, 5, 6], lists:sort([I || {started, I, _} <- Next])),
    none(started),
    [Go(S) || S <- Next],
    release(4),
    ?assertEqual([{ok, I} || I <- lists:seq(1, 10)], shoal_tasks:await_many(?T, Refs, ?WAIT)),
    ?assertMatch(#{running := 0, queued := 0, done := 10, failed := 0}, shoal_tasks:stats(?T)).

beyond_max_queue_run_is_overloaded(_Config) ->
    start(#{limit => 2, max_queue => 3}),
    Refs = [shoal_tasks:run(?T, gated(I)) || I <- lists:seq(1, 5)],
    ?assert(lists:all(fun is_reference/1, Refs)),
    ?assertEqual({error, overloaded}, shoal_tasks:run(?T, gated(6))),
    ?assertEqual({error, overloaded}, shoal_tasks:run_and_forget(?T, gated(7))),
    release(5),
    ?assertEqual([{ok, I} || I <- lists:seq(1, 5)], shoal_tasks:await_many(?T, Refs, ?WAIT)),
    %% room again
    R = shoal_tasks:run(?T, fun() -> again end),
    ?assertEqual({ok, again}, shoal_tasks:await(?T, R, ?WAIT)).

%% Poolder 0.1.7: await returned results not correlated with the request awaited.
regression_poolder_await_returns_the_result_of_its_own_task(_Config) ->
    start(#{limit => 50}),
    Refs = [{I, shoal_tasks:run(?T, gated(I))} || I <- lists:seq(1, 50)],
    Started = [recv(started) || _ <- Refs],
    %% Let them finish in the reverse order, then await in submission order.
    [P ! go || {started, _, P} <- lists:reverse(lists:keysort(2, Started))],
    [?assertEqual({ok, I}, shoal_tasks:await(?T, R, ?WAIT)) || {I, R} <- Refs].

await_many_answers_in_the_order_of_the_refs(_Config) ->
    start(#{limit => 4}),
    Refs = [shoal_tasks:run(?T, fun() -> I * I end) || I <- lists:seq(1, 20)],
    Shuffled = [R || {_, R} <- lists:sort([{rand:uniform(), R} || R <- Refs])],
    Results = shoal_tasks:await_many(?T, Shuffled, ?WAIT),
    ?assertEqual([shoal_tasks:await(?T, R, 0) =:= {error, timeout} || R <- Shuffled],
                 [true || _ <- Shuffled]),
    ByRef = maps:from_list(lists:zip(Refs, [{ok, I * I} || I <- lists:seq(1, 20)])),
    ?assertEqual([maps:get(R, ByRef) || R <- Shuffled], Results),
    %% One not done by the deadline: timeout in its place, the others answered.
    Slow = shoal_tasks:run(?T, gated(slow)),
    Quick = shoal_tasks:run(?T, fun() -> quick end),
    ?assertEqual([{error, timeout}, {ok, quick}], shoal_tasks:await_many(?T, [Slow, Quick], 100)),
    {started, slow, P} = recv(started),
    P ! go.

a_raising_task_gives_its_error_to_its_awaiter_only(_Config) ->
    start(#{limit => 2}),
    Bad = shoal_tasks:run(?T, fun() -> error(boom) end),
    Thrown = shoal_tasks:run(?T, fun() -> throw(ball) end),
    Good = shoal_tasks:run(?T, fun() -> fine end),
    ?assertMatch({error, {error, boom, [_ | _]}}, shoal_tasks:await(?T, Bad, ?WAIT)),
    ?assertMatch({error, {throw, ball, _}}, shoal_tasks:await(?T, Thrown, ?WAIT)),
    ?assertEqual({ok, fine}, shoal_tasks:await(?T, Good, ?WAIT)),
    ?assert(is_process_alive(whereis(?T))),
    ?assertMatch(#{done := 3, failed := 2}, shoal_tasks:stats(?T)).

a_killed_task_is_an_error(_Config) ->
    start(#{limit => 1}),
    R = shoal_tasks:run(?T, gated(1)),
    {started, 1, P} = recv(started),
    exit(P, kill),
    ?assertEqual({error, {exit, killed, []}}, shoal_tasks:await(?T, R, ?WAIT)),
    R2 = shoal_tasks:run(?T, fun() -> next end),
    ?assertEqual({ok, next}, shoal_tasks:await(?T, R2, ?WAIT)).

await_timeout_leaves_no_late_result_behind(_Config) ->
    start(#{limit => 1}),
    R = shoal_tasks:run(?T, gated(1)),
    ?assertEqual({error, timeout}, shoal_tasks:await(?T, R, 50)),
    {started, 1, P} = recv(started),
    Mon = erlang:monitor(process, P),
    P ! go,
    receive {'DOWN', Mon, _, _, _} -> ok end,
    wait_until(fun() -> maps:get(done, shoal_tasks:stats(?T)) =:= 1 end),
    {messages, Msgs} = erlang:process_info(self(), messages),
    ?assertEqual([], [M || M <- Msgs, element(1, M) =:= R]).

a_dead_callers_queued_tasks_are_cancelled(_Config) ->
    start(#{limit => 1}),
    Self = self(),
    Blocker = shoal_tasks:run(?T, gated(blocker)),
    {started, blocker, BP} = recv(started),
    {Caller, Mon} = spawn_monitor(fun() ->
                                          [shoal_tasks:run(?T, fun() -> Self ! {ran, doomed} end)
                                           || _ <- lists:seq(1, 5)],
                                          Self ! {queued}
                                  end),
    recv(queued),
    receive {'DOWN', Mon, process, Caller, normal} -> ok end,
    Survivor = shoal_tasks:run(?T, fun() -> survived end),
    wait_until(fun() -> maps:get(cancelled, shoal_tasks:stats(?T)) =:= 5 end),
    BP ! go,
    ?assertEqual({ok, blocker}, shoal_tasks:await(?T, Blocker, ?WAIT)),
    ?assertEqual({ok, survived}, shoal_tasks:await(?T, Survivor, ?WAIT)),
    none(ran),
    ?assertMatch(#{queued := 0, running := 0, cancelled := 5}, shoal_tasks:stats(?T)).

%% Poolder 0.1.7: the task runner crashed when it woke from hibernation.
regression_poolder_runner_works_after_hibernating(_Config) ->
    Pid = start(#{limit => 2, hibernate_after => 10}),
    [begin
         wait_until(fun() -> erlang:process_info(Pid, current_function) =:=
                                 {current_function, {erlang, hibernate, 3}} end),
         Refs = [shoal_tasks:run(?T, fun() -> {Round, I} end) || I <- [1, 2, 3]],
         ?assertEqual([{ok, {Round, I}} || I <- [1, 2, 3]], shoal_tasks:await_many(?T, Refs, ?WAIT))
     end || Round <- [1, 2, 3]],
    ?assertEqual(Pid, whereis(?T)).

run_and_forget_and_mfa_tasks_run(_Config) ->
    start(#{}),
    Self = self(),
    ok = shoal_tasks:run_and_forget(?T, fun() -> Self ! {forgotten} end),
    recv(forgotten),
    R = shoal_tasks:run(?T, {lists, seq, [1, 3]}),
    ?assertEqual({ok, [1, 2, 3]}, shoal_tasks:await(?T, R, ?WAIT)),
    ok = shoal_tasks:run_and_forget(?T, {erlang, send, [Self, {mfa_forgotten}]}),
    recv(mfa_forgotten).

stopping_fails_running_and_queued_tasks(_Config) ->
    start(#{limit => 1}),
    Running = shoal_tasks:run(?T, gated(1)),
    Queued = shoal_tasks:run(?T, gated(2)),
    {started, 1, P} = recv(started),
    Mon = erlang:monitor(process, P),
    ok = shoal_tasks:stop(?T),
    receive {'DOWN', Mon, process, P, shutdown} -> ok after ?WAIT -> ct:fail(task_outlived_runner) end,
    ?assertEqual({error, {exit, shutdown, []}}, shoal_tasks:await(?T, Running, ?WAIT)),
    ?assertEqual({error, {exit, shutdown, []}}, shoal_tasks:await(?T, Queued, ?WAIT)).

lives_in_a_user_supervisor(_Config) ->
    {ok, Sup} = supervisor:start_link(shoal_test_sup, [shoal_tasks:child_spec(#{name => ?T, limit => 2})]),
    R = shoal_tasks:run(?T, fun() -> supervised end),
    ?assertEqual({ok, supervised}, shoal_tasks:await(?T, R, ?WAIT)),
    [{{shoal_tasks, ?T}, Pid, worker, _}] = supervisor:which_children(Sup),
    ?assertEqual(Pid, whereis(?T)),
    unlink(Sup), exit(Sup, shutdown),
    wait_until(fun() -> whereis(?T) =:= undefined end).

bad_input_is_an_error(_Config) ->
    [?assertEqual({error, Why}, shoal_tasks:start_link(?T, Opts))
     || {Opts, Why} <- [{#{limit => 0}, {bad_option, limit, 0}},
                        {#{max_queue => -1}, {bad_option, max_queue, -1}},
                        {#{speed => 3}, {unknown_option, speed}},
                        {[{limit, 2} | bad], {bad_options, [{limit, 2} | bad]}}]],
    ?assertEqual({error, {bad_name, "t"}}, shoal_tasks:start_link("t", #{})),
    ?assertEqual({error, {no_such_runner, nope}}, shoal_tasks:run(nope, fun() -> x end)),
    ?assertEqual({error, {no_such_runner, nope}}, shoal_tasks:run_and_forget(nope, fun() -> x end)),
    ?assertEqual({error, {no_such_runner, nope}}, shoal_tasks:stats(nope)),
    start(#{}),
    ?assertMatch({error, {bad_task, _}}, shoal_tasks:run(?T, fun(_) -> x end)),
    ?assertEqual({error, {bad_task, not_a_task}}, shoal_tasks:run(?T, not_a_task)),
    %% what run/2 returned on overload is no reference to await
    ?assertEqual({error, {bad_ref, {error, overloaded}}}, shoal_tasks:await(?T, {error, overloaded}, 10)),
    R = shoal_tasks:run(?T, fun() -> ok end),
    ?assertEqual([{ok, ok}, {error, {bad_ref, x}}], shoal_tasks:await_many(?T, [R, x], 1000)).

