%% @doc EUnit: a pool's tree answers the supervisor calls tools make, and pool options may be
%% a proplist (an Elixir keyword list) as well as a map.
-module(shoal_supervision_tests).

-include_lib("eunit/include/eunit.hrl").

-define(W, shoal_test_plain_worker).

pool() -> list_to_atom("shoal_sup_t_" ++ integer_to_list(erlang:unique_integer([positive]))).

with_pool(Opts, Fun) ->
    {ok, _} = application:ensure_all_started(shoal),
    Pool = pool(),
    {ok, _} = shoal:start_pool(Pool, Opts),
    try Fun(Pool) after shoal:stop_pool(Pool) end.

%% The pool's supervisor and its segments, found the way release_handler walks a tree.
segments(Pool) ->
    [PoolSup] = [P || {{shoal_pool, Id}, P, supervisor, _} <- supervisor:which_children(shoal_sup),
                      Id =:= Pool],
    [P || {{segment, _}, P, supervisor, _} <- supervisor:which_children(PoolSup)].

%%% Segments as supervisors ----------------------------------------------------------------

segments_count_and_list_their_workers_test() ->
    with_pool(#{worker => ?W, segments => 2}, fun(Pool) ->
        Segs = segments(Pool),
        ?assertEqual(2, length(Segs)),
        ?assertEqual([0, 0], [proplists:get_value(workers, supervisor:count_children(S))
                              || S <- Segs]),
        Pids = [begin {ok, P} = shoal:ensure_started(Pool, K), P end || K <- lists:seq(1, 50)],
        Counts = [supervisor:count_children(S) || S <- Segs],
        ?assertEqual(50, lists:sum([proplists:get_value(workers, C) || C <- Counts])),
        ?assertEqual(50, lists:sum([proplists:get_value(active, C) || C <- Counts])),
        ?assertEqual([0, 0], [proplists:get_value(supervisors, C) || C <- Counts]),
        Children = lists:append([supervisor:which_children(S) || S <- Segs]),
        ?assertEqual(lists:sort(Pids), lists:sort([P || {undefined, P, worker, [?W]} <- Children])),
        %% a stopped worker is no longer a child
        ok = shoal:stop_worker(Pool, 1),
        wait_until(fun() ->
            49 =:= lists:sum([proplists:get_value(workers, supervisor:count_children(S))
                              || S <- Segs])
        end)
    end).

segments_give_their_callback_module_like_supervisors_test() ->
    %% release_handler and observer read a supervisor's callback module from its status
    with_pool(#{worker => ?W, segments => 1}, fun(Pool) ->
        [Seg] = segments(Pool),
        ?assertEqual(shoal_segment, supervisor:get_callback_module(Seg)),
        {status, Seg, {module, gen_server}, [_, _, _, _, Misc]} = sys:get_status(Seg),
        [State] = [S || {data, [{"State", S}]} <- Misc],
        ?assertMatch(#{pool := Pool}, State)
    end).

segments_refuse_child_changes_with_an_error_test() ->
    with_pool(#{worker => ?W, segments => 1}, fun(Pool) ->
        [Seg] = segments(Pool),
        {ok, W} = shoal:ensure_started(Pool, k),
        ?assertEqual({error, not_supported}, supervisor:start_child(Seg, [])),
        ?assertEqual({error, not_supported}, supervisor:terminate_child(Seg, W)),
        ?assertEqual({error, not_supported}, supervisor:restart_child(Seg, W)),
        ?assertEqual({error, not_supported}, supervisor:delete_child(Seg, W)),
        ?assertEqual({error, not_found}, supervisor:get_childspec(Seg, W)),
        ?assert(is_process_alive(W)),
        ?assert(is_process_alive(Seg))
    end).

the_whole_tree_answers_a_release_handler_walk_test() ->
    %% every supervisor-typed child, recursively, answers which_children and has a callback
    %% module, from shoal_sup down to the workers
    with_pool(#{worker => ?W, segments => 3}, fun(Pool) ->
        [{ok, _} = shoal:ensure_started(Pool, K) || K <- lists:seq(1, 20)],
        Workers = walk(whereis(shoal_sup)),
        ?assert(length(Workers) >= 20)
    end).

walk(Sup) ->
    _ = supervisor:get_callback_module(Sup),
    lists:append([case Type of
                      supervisor -> walk(P);
                      worker -> [P]
                  end || {_, P, Type, _} <- supervisor:which_children(Sup), is_pid(P)]).

%%% Options as a proplist ------------------------------------------------------------------

a_proplist_is_accepted_as_options_test() ->
    with_pool([{worker, ?W}, {segments, 3}], fun(Pool) ->
        ?assertMatch({pong, _}, shoal:call(Pool, a, ping)),
        ?assertEqual(3, length(segments(Pool)))
    end).

the_first_of_repeated_keys_wins_test() ->
    with_pool([{worker, ?W}, {segments, 2}, {segments, 5}], fun(Pool) ->
        ?assertEqual(2, length(segments(Pool)))
    end).

bad_proplists_are_errors_test() ->
    P = pool(),
    ?assertEqual({error, {bad_options, [worker]}}, shoal:start_pool(P, [worker])),
    ?assertEqual({error, {bad_options, [{"worker", ?W}]}}, shoal:start_pool(P, [{"worker", ?W}])),
    ?assertEqual({error, {bad_options, [{worker, ?W} | x]}}, shoal:start_pool(P, [{worker, ?W} | x])),
    ?assertEqual({error, {unknown_option, colour}}, shoal:start_pool(P, [{worker, ?W}, {colour, red}])),
    ?assertEqual({error, {missing_option, worker}}, shoal:start_pool(P, [])),
    ?assertEqual({error, {bad_options, 42}}, shoal:start_pool(P, 42)),
    ?assertEqual({error, {no_such_pool, P}}, shoal:stop_pool(P)).

a_proplist_child_spec_starts_under_a_users_supervisor_test() ->
    Pool = pool(),
    {ok, Sup} = supervisor:start_link(shoal_test_sup, [shoal_pool:child_spec(Pool, [{worker, ?W}])]),
    try ?assertMatch({pong, _}, shoal:call(Pool, b, ping))
    after unlink(Sup), exit(Sup, shutdown), wait_until(fun() -> not is_process_alive(Sup) end)
    end.

wait_until(F) -> wait_until(F, 200).
wait_until(F, 0) -> ?assert(F());
wait_until(F, N) ->
    case F() of
        true -> ok;
        false -> timer:sleep(10), wait_until(F, N - 1)
    end.
