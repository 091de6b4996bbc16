%% @doc shoal_batcher, one behaviour per case: cuts by limit, timeout and flush, batches
%% handled in the order cut (Poolder's out-of-order batches), retries that keep the order,
%% no item lost when the handler dies, back-pressure, names that are not module names
%% (Poolder's push/1), hibernation.
-module(shoal_batcher_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).
-import(shoal_tools_test_lib, [none/1, recv/1, recv/2, wait_until/1]).

-define(B, batcher_test).
-define(H, shoal_tools_test_batch).
-define(WAIT, 5000).

all() ->
    [regression_poolder_batches_arrive_in_the_order_cut, batches_are_cut_at_limit,
     timeout_cuts_a_partial_batch, flush_cuts_and_waits_until_handled,
     lifo_reverses_each_batch, regression_poolder_default_retry_handles_every_batch_once,
     a_failing_batch_is_retried_and_the_next_ones_wait,
     a_batch_that_keeps_failing_is_reported_and_the_rest_go_on,
     handle_error_backoff_keeps_the_order,
     a_killed_handler_loses_no_cut_batch, max_pending_refuses_pushes_with_overloaded,
     regression_poolder_push_works_when_the_name_is_not_the_module,
     works_after_hibernating, lives_in_a_user_supervisor, bad_input_is_an_error].

init_per_suite(Config) ->
    logger:set_primary_config(level, critical),
    Config.

end_per_suite(_Config) ->
    logger:set_primary_config(level, notice).

end_per_testcase(_Case, _Config) ->
    [catch gen_server:stop(N) || N <- [?B, batcher_a, batcher_b]],
    ok.

start(Opts) -> start(?B, Opts).
start(Name, Opts) ->
    {ok, Sup} = shoal_batcher:start_link(Name, maps:merge(#{handler => ?H, args => #{to => self()},
                                                            timeout => infinity}, Opts)),
    unlink(Sup),
    Sup.

batches(N) -> [element(3, recv(batch)) || _ <- lists:seq(1, N)].

%%% Cases ---------------------------------------------------------------------------------

%% Poolder 0.1.7 handed batches to concurrent processes: they arrived out of order.
regression_poolder_batches_arrive_in_the_order_cut(_Config) ->
    start(#{limit => 7, args => #{to => self(), jitter => true}}),
    Items = lists:seq(1, 10000),
    [ok = shoal_batcher:push(?B, I) || I <- Items],
    ok = shoal_batcher:flush(?B, 60000),
    Got = batches(10000 div 7 + 1),
    none(batch),
    ?assertEqual(Items, lists:append(Got)),
    ?assert(lists:all(fun(B) -> length(B) =< 7 end, Got)).

batches_are_cut_at_limit(_Config) ->
    start(#{limit => 3}),
    [ok = shoal_batcher:push(?B, I) || I <- lists:seq(1, 7)],
    ?assertEqual([[1, 2, 3], [4, 5, 6]], batches(2)),
    none(batch),
    ?assertMatch(#{buffered := 1, batches := 2, handled := 2}, shoal_batcher:stats(?B)).

timeout_cuts_a_partial_batch(_Config) ->
    start(#{limit => 100, timeout => 50}),
    [ok = shoal_batcher:push(?B, I) || I <- [a, b, c]],
    ?assertEqual([[a, b, c]], batches(1)),
    %% the timer restarts with the next batch's first item
    ok = shoal_batcher:push(?B, d),
    ?assertEqual([[d]], batches(1)).

flush_cuts_and_waits_until_handled(_Config) ->
    start(#{limit => 100}),
    [ok = shoal_batcher:push(?B, I) || I <- [1, 2]],
    ok = shoal_batcher:flush(?B),
    %% handled before flush returned: already in the mailbox
    receive {batch, _, [1, 2]} -> ok after 0 -> ct:fail(flush_returned_early) end,
    ok = shoal_batcher:flush(?B),   % nothing buffered: returns at once
    none(batch).

lifo_reverses_each_batch(_Config) ->
    start(#{limit => 3, order => lifo}),
    [ok = shoal_batcher:push(?B, I) || I <- lists:seq(1, 6)],
    ?assertEqual([[3, 2, 1], [6, 5, 4]], batches(2)).

%% Poolder 0.1.7: with the default retry option nothing ran.
regression_poolder_default_retry_handles_every_batch_once(_Config) ->
    start(#{limit => 2, args => #{to => self(), fail => fun([x, _], 1) -> true; (_, _) -> false end}}),
    [ok = shoal_batcher:push(?B, I) || I <- [1, 2, x, 3, 4, 5]],
    ok = shoal_batcher:flush(?B),
    ?assertEqual([[1, 2], [4, 5]], batches(2)),
    %% the failing one was attempted once, no retry by default
    {attempt_failed, [x, 3], 1} = recv(attempt_failed),
    none(attempt_failed),
    ?assertMatch(#{failed := 1, retries := 0, handled := 2}, shoal_batcher:stats(?B)).

a_failing_batch_is_retried_and_the_next_ones_wait(_Config) ->
    Fail = fun([1, 2], N) -> N =< 2; (_, _) -> false end,
    start(#{limit => 2, retry => #{count => 3}, args => #{to => self(), fail => Fail}}),
    [ok = shoal_batcher:push(?B, I) || I <- lists:seq(1, 6)],
    ok = shoal_batcher:flush(?B),
    ?assertEqual([[1, 2], [3, 4], [5, 6]], batches(3)),
    ?assertMatch(#{failed := 0, retries := 2, handled := 3, pending := 0}, shoal_batcher:stats(?B)).

a_batch_that_keeps_failing_is_reported_and_the_rest_go_on(_Config) ->
    Fail = fun([3, 4], _) -> true; (_, _) -> false end,
    start(#{limit => 2, retry => #{count => 2}, args => #{to => self(), fail => Fail}}),
    [ok = shoal_batcher:push(?B, I) || I <- lists:seq(1, 6)],
    ok = shoal_batcher:flush(?B),
    ?assertEqual([[1, 2], [5, 6]], batches(2)),
    ?assertEqual([1, 2, 3], [N || {attempt_failed, [3, 4], N} <- [recv(attempt_failed) || _ <- [1, 2, 3]]]),
    ?assertMatch(#{failed := 1, retries := 2, handled := 2}, shoal_batcher:stats(?B)).

handle_error_backoff_keeps_the_order(_Config) ->
    Fail = fun([1], N) -> N =:= 1; (_, _) -> false end,
    start(#{limit => 1, retry => #{count => 1},
            args => #{to => self(), fail => Fail, policy => {backoff, 100}}}),
    [ok = shoal_batcher:push(?B, I) || I <- [1, 2, 3]],
    {handle_error, [1], 1} = recv(handle_error),
    ok = shoal_batcher:flush(?B),
    ?assertEqual([[1], [2], [3]], batches(3)).

a_killed_handler_loses_no_cut_batch(_Config) ->
    start(#{limit => 1, args => #{to => self(), block => true}}),
    [ok = shoal_batcher:push(?B, I) || I <- [1, 2, 3]],
    {blocked_on, H, [1]} = recv(blocked_on),
    Mon = erlang:monitor(process, H),
    exit(H, kill),
    receive {'DOWN', Mon, _, _, _} -> ok end,
    %% The restarted handler gets batch 1 again, then 2 and 3.
    Seen = [begin {blocked_on, H2, B} = recv(blocked_on), H2 ! release, B end || _ <- [1, 2, 3]],
    ?assertEqual([[1], [2], [3]], Seen),
    ?assertEqual([[1], [2], [3]], batches(3)).

max_pending_refuses_pushes_with_overloaded(_Config) ->
    start(#{limit => 1, max_pending => 2, args => #{to => self(), block => true}}),
    ok = shoal_batcher:push(?B, 1),
    {blocked_on, H, [1]} = recv(blocked_on),
    ok = shoal_batcher:push(?B, 2),
    wait_until(fun() -> maps:get(pending, shoal_batcher:stats(?B)) =:= 2 end),
    ?assertEqual({error, overloaded}, shoal_batcher:push(?B, 3)),
    H ! release,
    {blocked_on, H, [2]} = recv(blocked_on),
    H ! release,
    wait_until(fun() -> maps:get(pending, shoal_batcher:stats(?B)) =:= 0 end),
    ok = shoal_batcher:push(?B, 4),
    {blocked_on, H, [4]} = recv(blocked_on),
    H ! release,
    ?assertEqual([[1], [2], [4]], batches(3)).

%% Poolder 0.1.7: push/1 only worked when the batcher's name was its module.
regression_poolder_push_works_when_the_name_is_not_the_module(_Config) ->
    start(batcher_a, #{limit => 2}),
    start(batcher_b, #{limit => 2}),
    ok = shoal_batcher:push(batcher_a, a1),
    ok = shoal_batcher:push(batcher_b, b1),
    ok = shoal_batcher:push(batcher_a, a2),
    ok = shoal_batcher:push(batcher_b, b2),
    ?assertEqual(lists:sort([[a1, a2], [b1, b2]]), lists:sort(batches(2))),
    ?assertEqual({error, {no_such_batcher, ?H}}, shoal_batcher:push(?H, x)).

works_after_hibernating(_Config) ->
    start(#{limit => 2, hibernate_after => 10}),
    #{} = shoal_batcher:stats(?B),
    [begin
         wait_until(fun() -> hibernating(?B) end),
         ok = shoal_batcher:push(?B, {R, 1}),
         ok = shoal_batcher:push(?B, {R, 2}),
         ?assertEqual([[{R, 1}, {R, 2}]], batches(1))
     end || R <- [1, 2, 3]].

hibernating(Name) ->
    Children = supervisor:which_children(Name),
    lists:all(fun({_, P, _, _}) -> erlang:process_info(P, current_function) =:=
                                       {current_function, {erlang, hibernate, 3}} end, Children).

lives_in_a_user_supervisor(_Config) ->
    {ok, Sup} = supervisor:start_link(shoal_test_sup,
                                      [shoal_batcher:child_spec([{name, ?B}, {handler, ?H},
                                                                 {args, #{to => self()}},
                                                                 {limit, 2}])]),
    ok = shoal_batcher:push(?B, 1),
    ok = shoal_batcher:push(?B, 2),
    ?assertEqual([[1, 2]], batches(1)),
    unlink(Sup), exit(Sup, shutdown),
    wait_until(fun() -> whereis(?B) =:= undefined end).

bad_input_is_an_error(_Config) ->
    [?assertEqual({error, Why}, shoal_batcher:start_link(?B, Opts))
     || {Opts, Why} <- [{#{}, {missing_option, handler}},
                        {#{handler => lists}, {missing_callback, lists, init, 1}},
                        {#{handler => ?H, limit => 0}, {bad_option, limit, 0}},
                        {#{handler => ?H, timeout => -1}, {bad_option, timeout, -1}},
                        {#{handler => ?H, order => random}, {bad_option, order, random}},
                        {#{handler => ?H, max_pending => 0}, {bad_option, max_pending, 0}},
                        {#{handler => ?H, reverse => true}, {unknown_option, reverse}}]],
    E = {error, {no_such_batcher, nope}},
    [?assertEqual(E, R) || R <- [shoal_batcher:push(nope, 1), shoal_batcher:flush(nope),
                                 shoal_batcher:stats(nope), shoal_batcher:stop(nope)]].
