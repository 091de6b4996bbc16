%% shoal_super_SUITE: groups, chains and standalone workers on one node. Each case starts
%% its own supervisor (named after the case) and stops it at the end.
%%
%% The seed's defects are pinned by four cases that fail on its behaviour:
%%   * a crash in one group killing other groups   -> one_for_all_crash_restarts_exactly_its_group
%%   * broadcast timing out                        -> broadcast_never_waits_for_a_member
%%   * random send crashing the supervisor         -> send_to_random_never_crashes_the_supervisor
%%   * one_for_all restart path crashing           -> one_for_all_restart_survives_simultaneous_crashes
%%
%% Chains: every case collects the outcomes on_finish gets and checks that each accepted
%% item got exactly one. Step workers are made slow or blocked with gates (atomics the step
%% function polls), never with sleeps in the test itself; waits are bounded polls.
-module(shoal_super_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, groups/0, suite/0, init_per_suite/1, end_per_suite/1,
         init_per_testcase/2, end_per_testcase/2]).
-export([declared_opts_load_the_same_shapes_as_the_run_time_api/1,
         a_bad_declaration_fails_the_start_and_leaves_nothing/1,
         child_spec_runs_it_in_your_own_tree/1,
         unknown_ids_are_errors_never_crashes_nor_timeouts/1,
         bad_specs_and_options_are_errors/1,
         one_for_all_crash_restarts_exactly_its_group/1,
         one_for_one_restarts_just_the_worker/1,
         a_group_past_its_intensity_ends_alone/1,
         one_for_all_restart_survives_simultaneous_crashes/1,
         broadcast_never_waits_for_a_member/1,
         send_to_random_never_crashes_the_supervisor/1,
         adding_and_removing_restarts_nothing_else/1,
         members_message_their_own_group_from_inside/1,
         steps_pass_results_on_and_on_finish_gets_every_outcome/1,
         a_stop_result_stops_the_chain_and_reports_every_item/1,
         a_crashing_step_retries_the_item_once_then_reports_it/1,
         back_pressure_waits_then_says_overloaded/1,
         items_of_a_killed_worker_are_reported_lost_at_most_once/1,
         items_of_a_killed_worker_are_sent_again_at_least_once/1,
         one_for_all_chain_restart_hands_queued_items_on/1,
         dispatch_modes_share_items_as_documented/1,
         send_to_step_enters_mid_chain/1,
         auto_scaling_grows_under_load_and_shrinks_when_idle/1,
         removing_a_chain_reports_its_items_stopped/1,
         a_chain_past_its_intensity_ends_alone/1,
         a_standalone_crash_affects_no_one/1,
         standalone_restart_policies/1,
         the_docs_examples_run/1]).
-export([echo/1, classify/1]).

suite() -> [{timetrap, {seconds, 60}}].

all() -> [{group, supervisor}, {group, groups}, {group, chains}, {group, standalone},
          the_docs_examples_run].

groups() ->
    [{supervisor, [], [declared_opts_load_the_same_shapes_as_the_run_time_api,
                       a_bad_declaration_fails_the_start_and_leaves_nothing,
                       child_spec_runs_it_in_your_own_tree,
                       unknown_ids_are_errors_never_crashes_nor_timeouts,
                       bad_specs_and_options_are_errors]},
     {groups, [], [one_for_all_crash_restarts_exactly_its_group,
                   one_for_one_restarts_just_the_worker,
                   a_group_past_its_intensity_ends_alone,
                   one_for_all_restart_survives_simultaneous_crashes,
                   broadcast_never_waits_for_a_member,
                   send_to_random_never_crashes_the_supervisor,
                   adding_and_removing_restarts_nothing_else,
                   members_message_their_own_group_from_inside]},
     {chains, [], [steps_pass_results_on_and_on_finish_gets_every_outcome,
                   a_stop_result_stops_the_chain_and_reports_every_item,
                   a_crashing_step_retries_the_item_once_then_reports_it,
                   back_pressure_waits_then_says_overloaded,
                   items_of_a_killed_worker_are_reported_lost_at_most_once,
                   items_of_a_killed_worker_are_sent_again_at_least_once,
                   one_for_all_chain_restart_hands_queued_items_on,
                   dispatch_modes_share_items_as_documented,
                   send_to_step_enters_mid_chain,
                   auto_scaling_grows_under_load_and_shrinks_when_idle,
                   removing_a_chain_reports_its_items_stopped,
                   a_chain_past_its_intensity_ends_alone]},
     {standalone, [], [a_standalone_crash_affects_no_one,
                       standalone_restart_policies]}].

init_per_suite(Config) ->
    {ok, _} = application:ensure_all_started(shoal),
    %% Crash reports of the crashes we cause on purpose are noise here.
    logger:set_primary_config(level, list_to_atom(os:getenv("SS_LOG", "critical"))),
    Config.

end_per_suite(_Config) ->
    logger:set_primary_config(level, notice),
    ok.

init_per_testcase(Case, Config) -> [{sup, Case} | Config].

end_per_testcase(_Case, Config) ->
    _ = shoal_super:stop(?config(sup, Config)),
    ok.

%%% Helpers ------------------------------------------------------------------------------

%% A member body: answers pings, crashes or exits on demand, runs funs inside itself.
echo(Tag) ->
    receive
        {ping, From} -> From ! {pong, Tag, self()}, echo(Tag);
        {inside, From, F} -> From ! {inside, Tag, F()}, echo(Tag);
        crash -> exit(crash);
        {exit, R} -> exit(R);
        _ -> echo(Tag)
    end.

start(Config) -> start(Config, #{}).
start(Config, Opts) ->
    {ok, Pid} = shoal_super:start_link(?config(sup, Config), Opts),
    unlink(Pid),
    Pid.

member(Sup, G, W) ->
    {ok, Ws} = shoal_super:group_workers(Sup, G),
    {W, Pid} = lists:keyfind(W, 1, Ws),
    Pid.

pids(Sup, G) ->
    {ok, Ws} = shoal_super:group_workers(Sup, G),
    [P || {_, P} <- Ws].

ping(Pid) ->
    Pid ! {ping, self()},
    receive {pong, _, Pid} -> ok after 5000 -> ct:fail({no_pong, Pid}) end.

wait_until(F, Ms, What) ->
    Deadline = erlang:monotonic_time(millisecond) + Ms,
    wait_until_(F, Deadline, What).
wait_until_(F, Deadline, What) ->
    case catch F() of
        true -> ok;
        _ ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true -> ct:fail({timeout_waiting_for, explain(What)});
                false -> timer:sleep(10), wait_until_(F, Deadline, What)
            end
    end.

explain({What, F}) when is_function(F, 0) -> {What, F()};
explain(What) -> What.

%% All members of group G are running with new pids (none of Old).
restarted(Sup, G, Old) ->
    wait_until(fun() ->
                       Now = pids(Sup, G),
                       length(Now) =:= length(Old) andalso
                           lists:all(fun is_pid/1, Now) andalso
                           [P || P <- Now, lists:member(P, Old)] =:= []
               end, 5000, {restarted, G}).

collector() -> Self = self(), fun(O) -> Self ! {fin, O} end.

collect(N) -> collect(N, 10000).
collect(0, _) -> [];
collect(N, T) ->
    receive {fin, O} -> [O | collect(N - 1, T)]
    after T -> ct:fail({outcomes_missing, N})
    end.

%% Nothing more reaches on_finish (each item was reported once).
no_more_outcomes() ->
    receive {fin, O} -> ct:fail({extra_outcome, O}) after 200 -> ok end.

gate() -> atomics:new(1, []).
open(G) -> atomics:put(G, 1, 1).
pass(G) ->
    case atomics:get(G, 1) of
        0 -> timer:sleep(1), pass(G);
        _ -> ok
    end.

info(Sup, C) -> {ok, I} = shoal_super:chain_info(Sup, C), I.
step_info(Sup, C, S) ->
    #{steps := Steps} = info(Sup, C),
    hd([X || #{id := Id} = X <- Steps, Id =:= S]).

in_flight_is_zero(Sup, C) ->
    wait_until(fun() -> maps:get(in_flight, info(Sup, C)) =:= 0 end, 5000, {in_flight, C}).

%%% The supervisor ------------------------------------------------------------------------

declared_opts_load_the_same_shapes_as_the_run_time_api(Config) ->
    Sup = ?config(sup, Config),
    _ = start(Config, #{groups => [{g, #{restart => one_for_all},
                                    [{{?MODULE, echo, [a]}, #{id => a}},
                                     {{gen_server, shoal_super_test_gs, b}, #{id => b}}]}],
                        chains => [{c, #{on_finish => collector()},
                                    [{fun(X) -> X + 1 end, #{id => inc}},
                                     {{erlang, '*', [10]}, #{id => times10, workers => 2}}]}],
                        workers => [{fun() -> echo(w) end, #{id => w}}]}),
    [ok = ping(P) || P <- pids(Sup, g)],
    ?assertEqual([a, b], [W || {W, _} <- element(2, shoal_super:group_workers(Sup, g))]),
    ok = shoal_super:send_to_chain(Sup, c, 4),
    ?assertEqual([{ok, 50}], collect(1)),
    ?assertMatch(#{steps := [#{id := inc, workers := 1}, #{id := times10, workers := 2}]},
                 info(Sup, c)),
    {ok, [{w, W}]} = shoal_super:workers(Sup),
    ok = ping(W).

a_bad_declaration_fails_the_start_and_leaves_nothing(Config) ->
    Sup = ?config(sup, Config),
    %% Refused before anything starts:
    ?assertEqual({error, {bad_option, restart, sometimes}},
                 shoal_super:start_link(Sup, #{groups => [{g, #{restart => sometimes}, []}]})),
    ?assertEqual({error, {missing_option, id}},
                 shoal_super:start_link(Sup, #{workers => [{fun() -> ok end, #{}}]})),
    %% Refused while loading (a duplicate id): the supervisor is stopped again.
    ?assertEqual({error, {declaration, {group_worker, g, a}, {already_exists, a}}},
                 shoal_super:start_link(Sup, #{groups => [{g, #{},
                                                           [{fun() -> echo(a) end, #{id => a}},
                                                            {fun() -> echo(a) end, #{id => a}}]}]})),
    ?assertEqual(undefined, whereis(Sup)),
    ?assertEqual({error, {no_such_supervisor, Sup}}, shoal_super:group_workers(Sup, g)).

child_spec_runs_it_in_your_own_tree(Config) ->
    Sup = ?config(sup, Config),
    Spec = shoal_super:child_spec(Sup, #{groups => [{g, #{}, [{fun() -> echo(a) end, #{id => a}}]}]}),
    {ok, Top} = supervisor:start_link(shoal_test_sup, [Spec]),
    unlink(Top),
    First = whereis(Sup),
    ok = ping(member(Sup, g, a)),
    %% Our supervisor restarts it, declarations and all.
    exit(First, kill),
    wait_until(fun() -> is_pid(whereis(Sup)) andalso whereis(Sup) =/= First end, 5000, restart),
    wait_until(fun() -> is_pid(member(Sup, g, a)) end, 5000, member_back),
    ok = ping(member(Sup, g, a)),
    exit(Top, shutdown).

unknown_ids_are_errors_never_crashes_nor_timeouts(Config) ->
    Sup = ?config(sup, Config),
    NoSup = no_such_sup_here,
    [?assertEqual({error, {no_such_supervisor, NoSup}}, Call)
     || Call <- [shoal_super:add_group(NoSup, g, #{}),
                 shoal_super:remove_group(NoSup, g),
                 shoal_super:add_group_worker(NoSup, g, fun() -> ok end, #{id => a}),
                 shoal_super:remove_group_worker(NoSup, g, a),
                 shoal_super:group_workers(NoSup, g),
                 shoal_super:send_to_group(NoSup, g, a, hi),
                 shoal_super:send_to_random(NoSup, g, hi),
                 shoal_super:broadcast(NoSup, g, hi),
                 shoal_super:add_chain(NoSup, c, #{}),
                 shoal_super:remove_chain(NoSup, c),
                 shoal_super:add_chain_step(NoSup, c, fun(X) -> X end, #{id => s}),
                 shoal_super:send_to_chain(NoSup, c, 1),
                 shoal_super:send_to_step(NoSup, c, s, 1),
                 shoal_super:chain_info(NoSup, c),
                 shoal_super:add_worker(NoSup, fun() -> ok end, #{id => w}),
                 shoal_super:send_to_worker(NoSup, w, hi),
                 shoal_super:remove_worker(NoSup, w),
                 shoal_super:workers(NoSup),
                 shoal_super:stop(NoSup)]],
    ?assertEqual({error, {no_such_supervisor, "not an atom"}}, shoal_super:send_to_group("not an atom", g, a, hi)),
    SupPid = start(Config),
    ok = shoal_super:add_group(Sup, g, #{}),
    ok = shoal_super:add_chain(Sup, c, #{}),
    [?assertEqual(Expected, Call)
     || {Expected, Call} <-
            [{{error, {no_such_group, nog}}, shoal_super:remove_group(Sup, nog)},
             {{error, {no_such_group, nog}}, shoal_super:add_group_worker(Sup, nog, fun() -> ok end, #{id => a})},
             {{error, {no_such_group, nog}}, shoal_super:remove_group_worker(Sup, nog, a)},
             {{error, {no_such_group, nog}}, shoal_super:group_workers(Sup, nog)},
             {{error, {no_such_group, nog}}, shoal_super:send_to_group(Sup, nog, a, hi)},
             {{error, {no_such_group, nog}}, shoal_super:send_to_random(Sup, nog, hi)},
             {{error, {no_such_group, nog}}, shoal_super:broadcast(Sup, nog, hi)},
             {{error, {no_such_worker, now}}, shoal_super:send_to_group(Sup, g, now, hi)},
             {{error, {no_such_worker, now}}, shoal_super:remove_group_worker(Sup, g, now)},
             {{error, {no_such_chain, noc}}, shoal_super:remove_chain(Sup, noc)},
             {{error, {no_such_chain, noc}}, shoal_super:add_chain_step(Sup, noc, fun(X) -> X end, #{id => s})},
             {{error, {no_such_chain, noc}}, shoal_super:send_to_chain(Sup, noc, 1)},
             {{error, {no_such_chain, noc}}, shoal_super:send_to_step(Sup, noc, s, 1)},
             {{error, {no_such_chain, noc}}, shoal_super:chain_info(Sup, noc)},
             {{error, {no_such_step, nos}}, shoal_super:send_to_step(Sup, c, nos, 1)},
             {{error, {no_steps, c}}, shoal_super:send_to_chain(Sup, c, 1)},
             {{error, {no_such_worker, now}}, shoal_super:send_to_worker(Sup, now, hi)},
             {{error, {no_such_worker, now}}, shoal_super:remove_worker(Sup, now)},
             {{error, {already_exists, g}}, shoal_super:add_group(Sup, g, #{})},
             {{error, {already_exists, c}}, shoal_super:add_chain(Sup, c, #{})},
             {{error, no_cluster}, shoal_super:add_group(Sup, g2, #{placement => spread})},
             {{error, no_cluster}, shoal_super:add_chain(Sup, c2, #{placement => spread})}]],
    ?assertEqual(SupPid, whereis(Sup)).

bad_specs_and_options_are_errors(Config) ->
    Sup = ?config(sup, Config),
    SupPid = start(Config),
    ok = shoal_super:add_group(Sup, g, #{}),
    ok = shoal_super:add_chain(Sup, c, #{}),
    Arity0 = fun() -> ok end,
    [?assertEqual(Expected, Call)
     || {Expected, Call} <-
            [{{error, {bad_worker_spec, "x"}}, shoal_super:add_group_worker(Sup, g, "x", #{id => a})},
             {{error, {bad_worker_spec, fun lists:sort/1}}, shoal_super:add_worker(Sup, fun lists:sort/1, #{id => a})},
             {{error, {bad_step_spec, Arity0}}, shoal_super:add_chain_step(Sup, c, Arity0, #{id => s})},
             {{error, {missing_option, id}}, shoal_super:add_group_worker(Sup, g, fun() -> ok end, #{})},
             {{error, {unknown_option, colour}}, shoal_super:add_group(Sup, g2, #{colour => red})},
             {{error, {bad_option, max_queue, 0}}, shoal_super:add_chain(Sup, c2, #{max_queue => 0})},
             {{error, {bad_option, dispatch, sideways}}, shoal_super:add_chain(Sup, c2, #{dispatch => sideways})},
             {{error, {bad_option, workers, #{min => 3, max => 2}}},
              shoal_super:add_chain_step(Sup, c, fun(X) -> X end, #{id => s, workers => #{min => 3, max => 2}})},
             {{error, {bad_option, placement, elsewhere}}, shoal_super:add_group(Sup, g2, #{placement => elsewhere})},
             {{error, {bad_options, []}}, shoal_super:add_group(Sup, g2, [])},
             {{error, {bad_id, "s"}}, shoal_super:start_link("s", #{})}]],
    %% A member whose start fails is an error, and the group is still there.
    ?assertMatch({error, _}, shoal_super:add_group_worker(Sup, g, {gen_server, no_such_module, []}, #{id => a})),
    ?assertEqual({ok, []}, shoal_super:group_workers(Sup, g)),
    ?assertEqual(SupPid, whereis(Sup)).

%%% Groups --------------------------------------------------------------------------------

%% Seed defect: a crash in one group killed every other group.
one_for_all_crash_restarts_exactly_its_group(Config) ->
    Sup = ?config(sup, Config),
    _ = start(Config),
    ok = shoal_super:add_group(Sup, g1, #{restart => one_for_all}),
    ok = shoal_super:add_group(Sup, g2, #{restart => one_for_all}),
    ok = shoal_super:add_group(Sup, g3, #{restart => one_for_one}),
    [{ok, _} = shoal_super:add_group_worker(Sup, G, fun() -> echo(W) end, #{id => W})
     || G <- [g1, g2, g3], W <- [a, b, c]],
    ok = shoal_super:add_chain(Sup, ch, #{on_finish => collector()}),
    ok = shoal_super:add_chain_step(Sup, ch, fun(X) -> X end, #{id => s}),
    {ok, Solo} = shoal_super:add_worker(Sup, fun() -> echo(solo) end, #{id => solo}),
    [G1, G2, G3] = [pids(Sup, G) || G <- [g1, g2, g3]],
    Info = info(Sup, ch),
    hd(G1) ! crash,
    restarted(Sup, g1, G1),
    ?assertEqual(G2, pids(Sup, g2)),
    ?assertEqual(G3, pids(Sup, g3)),
    ?assert(is_process_alive(Solo)),
    ?assertEqual(maps:get(steps, Info), maps:get(steps, info(Sup, ch))),
    ok = shoal_super:send_to_chain(Sup, ch, 1),
    ?assertEqual([{ok, 1}], collect(1)),
    [ok = ping(P) || G <- [g1, g2, g3], P <- pids(Sup, G)].

one_for_one_restarts_just_the_worker(Config) ->
    Sup = ?config(sup, Config),
    _ = start(Config),
    ok = shoal_super:add_group(Sup, g, #{restart => one_for_one}),
    [{ok, _} = shoal_super:add_group_worker(Sup, g, fun() -> echo(W) end, #{id => W}) || W <- [a, b, c]],
    [A, B, C] = pids(Sup, g),
    A ! crash,
    wait_until(fun() -> P = member(Sup, g, a), is_pid(P) andalso P =/= A end, 5000, a_back),
    ?assertEqual([B, C], tl(pids(Sup, g))),
    ok = shoal_super:send_to_group(Sup, g, a, {ping, self()}),
    receive {pong, a, _} -> ok after 5000 -> ct:fail(no_pong) end.

a_group_past_its_intensity_ends_alone(Config) ->
    Sup = ?config(sup, Config),
    SupPid = start(Config),
    ok = shoal_super:add_group(Sup, fragile, #{restart => one_for_all, max_restarts => 2, max_seconds => 60}),
    ok = shoal_super:add_group(Sup, steady, #{restart => one_for_all}),
    [{ok, _} = shoal_super:add_group_worker(Sup, G, fun() -> echo(W) end, #{id => W})
     || G <- [fragile, steady], W <- [a, b]],
    {ok, Solo} = shoal_super:add_worker(Sup, fun() -> echo(solo) end, #{id => solo}),
    Steady = pids(Sup, steady),
    %% Two crashes are within the intensity; the third ends the group.
    lists:foreach(fun(_) ->
                          Old = pids(Sup, fragile),
                          hd(Old) ! crash,
                          restarted(Sup, fragile, Old)
                  end, [1, 2]),
    member(Sup, fragile, a) ! crash,
    wait_until(fun() -> shoal_super:group_workers(Sup, fragile) =:= {error, {no_such_group, fragile}} end,
               5000, fragile_gone),
    ?assertEqual({error, {no_such_group, fragile}}, shoal_super:send_to_group(Sup, fragile, a, hi)),
    ?assertEqual(Steady, pids(Sup, steady)),
    ?assert(is_process_alive(Solo)),
    ?assertEqual(SupPid, whereis(Sup)),
    %% The name can be used again.
    ok = shoal_super:add_group(Sup, fragile, #{}),
    {ok, _} = shoal_super:add_group_worker(Sup, fragile, fun() -> echo(a) end, #{id => a}),
    ok = ping(member(Sup, fragile, a)).

%% Seed defect: the one_for_all restart path crashed the supervisor.
one_for_all_restart_survives_simultaneous_crashes(Config) ->
    Sup = ?config(sup, Config),
    SupPid = start(Config),
    ok = shoal_super:add_group(Sup, g, #{restart => one_for_all, max_restarts => 50, max_seconds => 60}),
    {ok, _} = shoal_super:add_group_worker(Sup, g, fun() -> echo(a) end, #{id => a}),
    {ok, _} = shoal_super:add_group_worker(Sup, g, {gen_server, shoal_super_test_gs, b}, #{id => b}),
    {ok, _} = shoal_super:add_group_worker(Sup, g, fun() -> echo(c) end, #{id => c, restart => transient}),
    {ok, _} = shoal_super:add_group_worker(Sup, g, fun() -> echo(d) end, #{id => d, restart => temporary}),
    ok = shoal_super:add_group(Sup, other, #{restart => one_for_all}),
    {ok, Other} = shoal_super:add_group_worker(Sup, other, fun() -> echo(o) end, #{id => o}),
    %% Repeatedly: every member killed at once, from several processes.
    lists:foreach(
      fun(Round) ->
              Old = [P || {_, P} <- element(2, shoal_super:group_workers(Sup, g)), is_pid(P)],
              [spawn(fun() -> exit(P, kill) end) || P <- Old],
              wait_until(fun() ->
                                 Now = [P || {W, P} <- element(2, shoal_super:group_workers(Sup, g)),
                                             W =/= d],
                                 length(Now) =:= 3 andalso lists:all(fun is_pid/1, Now) andalso
                                     [P || P <- Now, lists:member(P, Old)] =:= []
                         end, 5000, {round, Round})
      end, lists:seq(1, 5)),
    %% A transient member that exits normally is not restarted and takes no one down.
    Before = pids(Sup, g),
    member(Sup, g, c) ! {exit, normal},
    wait_until(fun() -> member(Sup, g, c) =:= undefined end, 5000, c_done),
    ?assertEqual(Before -- [lists:nth(3, Before)], [P || P <- pids(Sup, g), is_pid(P)]),
    [ok = ping(member(Sup, g, W)) || W <- [a, b]],
    ?assertEqual([{o, Other}], element(2, shoal_super:group_workers(Sup, other))),
    ?assertEqual(SupPid, whereis(Sup)).

%% Seed defect: broadcast (and sends) timed out when a member was busy.
broadcast_never_waits_for_a_member(Config) ->
    Sup = ?config(sup, Config),
    _ = start(Config),
    ok = shoal_super:add_group(Sup, g, #{}),
    ?assertEqual(ok, shoal_super:broadcast(Sup, g, {ping, self()})),   %% no member yet
    {ok, Busy} = shoal_super:add_group_worker(Sup, g, {gen_server, shoal_super_test_gs, busy}, #{id => busy}),
    {ok, _} = shoal_super:add_group_worker(Sup, g, fun() -> echo(a) end, #{id => a}),
    {ok, _} = shoal_super:add_group_worker(Sup, g, fun() -> echo(b) end, #{id => b}),
    %% Blocked in a call, with a mailbox nobody reads.
    spawn(fun() -> gen_server:call(Busy, block, infinity) end),
    wait_until(fun() -> element(2, process_info(Busy, status)) =:= waiting andalso
                            element(2, process_info(Busy, current_function)) =/= {gen_server, loop, 7}
               end, 5000, busy_blocked),
    Self = self(),
    Caller = spawn(fun() -> Self ! {result, [shoal_super:broadcast(Sup, g, {ping, Self}) || _ <- lists:seq(1, 100)]} end),
    receive {result, Rs} -> ?assertEqual(lists:duplicate(100, ok), Rs)
    after 5000 -> exit(Caller, kill), ct:fail(broadcast_waited)
    end,
    Pongs = [receive {pong, T, _} -> T after 5000 -> ct:fail(no_pong) end || _ <- lists:seq(1, 200)],
    ?assertEqual([a, b], lists:usort(Pongs)),
    %% The busy one gets them all once it is free.
    Busy ! unblock,
    BusyPongs = [receive {pong, busy, _} -> busy after 5000 -> ct:fail(no_busy_pong) end || _ <- lists:seq(1, 100)],
    ?assertEqual(100, length(BusyPongs)).

%% Seed defect: a random send to an empty group crashed the supervisor.
send_to_random_never_crashes_the_supervisor(Config) ->
    Sup = ?config(sup, Config),
    SupPid = start(Config),
    ok = shoal_super:add_group(Sup, g, #{}),
    ?assertEqual({error, no_workers}, shoal_super:send_to_random(Sup, g, hi)),
    ?assertEqual({error, {no_such_group, nog}}, shoal_super:send_to_random(Sup, nog, hi)),
    [{ok, _} = shoal_super:add_group_worker(Sup, g, fun() -> echo(W) end, #{id => W, restart => temporary})
     || W <- [a, b, c]],
    [ok = shoal_super:send_to_random(Sup, g, {ping, self()}) || _ <- lists:seq(1, 300)],
    Tags = [receive {pong, T, _} -> T after 5000 -> ct:fail(no_pong) end || _ <- lists:seq(1, 300)],
    ?assertEqual([a, b, c], lists:usort(Tags)),
    %% Every member gone (temporary: not restarted): an error, not a crash.
    [begin P ! {exit, normal} end || P <- pids(Sup, g)],
    wait_until(fun() -> shoal_super:send_to_random(Sup, g, hi) =:= {error, no_workers} end, 5000, all_gone),
    ?assertEqual(SupPid, whereis(Sup)),
    ?assertEqual(ok, shoal_super:add_group(Sup, g2, #{})).

adding_and_removing_restarts_nothing_else(Config) ->
    Sup = ?config(sup, Config),
    _ = start(Config),
    ok = shoal_super:add_group(Sup, g, #{restart => one_for_all}),
    [{ok, _} = shoal_super:add_group_worker(Sup, g, fun() -> echo(W) end, #{id => W}) || W <- [a, b]],
    ok = shoal_super:add_chain(Sup, ch, #{on_finish => collector()}),
    ok = shoal_super:add_chain_step(Sup, ch, fun(X) -> X end, #{id => s}),
    {ok, Solo} = shoal_super:add_worker(Sup, fun() -> echo(solo) end, #{id => solo}),
    G = pids(Sup, g),
    %% Adding to and removing from a one_for_all group restarts no other member.
    {ok, C} = shoal_super:add_group_worker(Sup, g, fun() -> echo(c) end, #{id => c}),
    ?assertEqual(G ++ [C], pids(Sup, g)),
    ok = shoal_super:remove_group_worker(Sup, g, a),
    ?assertEqual(tl(G) ++ [C], pids(Sup, g)),
    ?assertEqual({error, {no_such_worker, a}}, shoal_super:send_to_group(Sup, g, a, hi)),
    %% Other groups, chains and workers come and go; nothing else moves.
    ok = shoal_super:add_group(Sup, g2, #{}),
    {ok, _} = shoal_super:add_group_worker(Sup, g2, fun() -> echo(x) end, #{id => x}),
    ok = shoal_super:add_chain(Sup, ch2, #{}),
    ok = shoal_super:add_chain_step(Sup, ch2, fun(X) -> X end, #{id => s}),
    {ok, Solo2} = shoal_super:add_worker(Sup, fun() -> echo(solo2) end, #{id => solo2}),
    ok = shoal_super:remove_group(Sup, g2),
    ok = shoal_super:remove_chain(Sup, ch2),
    ok = shoal_super:remove_worker(Sup, solo2),
    ?assertNot(is_process_alive(Solo2)),
    ?assertEqual(tl(G) ++ [C], pids(Sup, g)),
    ?assert(is_process_alive(Solo)),
    ok = shoal_super:send_to_chain(Sup, ch, 7),
    ?assertEqual([{ok, 7}], collect(1)),
    ?assertEqual({error, {no_such_group, g2}}, shoal_super:group_workers(Sup, g2)),
    ?assertEqual({error, {no_such_chain, ch2}}, shoal_super:chain_info(Sup, ch2)).

members_message_their_own_group_from_inside(Config) ->
    Sup = ?config(sup, Config),
    _ = start(Config),
    ok = shoal_super:add_group(Sup, g, #{}),
    {ok, A} = shoal_super:add_group_worker(Sup, g, fun() -> echo(a) end, #{id => a}),
    {ok, B} = shoal_super:add_group_worker(Sup, g, {gen_server, shoal_super_test_gs, b}, #{id => b}),
    {ok, _} = shoal_super:add_group_worker(Sup, g, fun() -> echo(c) end, #{id => c}),
    ?assertEqual({ok, #{sup => Sup, owner => node(), group => g, id => b}},
                 gen_server:call(B, whoami)),
    Self = self(),
    Inside = fun(P, F) -> P ! {inside, Self, F}, receive {inside, _, R} -> R after 5000 -> ct:fail(no_answer) end end,
    ?assertEqual({ok, #{sup => Sup, owner => node(), group => g, id => a}},
                 Inside(A, fun shoal_super:my_group/0)),
    %% a -> b
    ?assertEqual(ok, Inside(A, fun() -> shoal_super:send_to_my_group(b, {ping, Self}) end)),
    receive {pong, b, B} -> ok after 5000 -> ct:fail(no_pong_b) end,
    %% b -> a random sibling: never b itself.
    [?assertEqual(ok, Inside(B, fun() -> shoal_super:send_to_random_sibling({ping, Self}) end))
     || _ <- lists:seq(1, 100)],
    Tags = [receive {pong, T, _} -> T after 5000 -> ct:fail(no_pong) end || _ <- lists:seq(1, 100)],
    ?assertEqual([a, c], lists:usort(Tags)),
    %% broadcast from c reaches everyone, c included.
    ?assertEqual(ok, Inside(member(Sup, g, c), fun() -> shoal_super:broadcast_to_my_group({ping, Self}) end)),
    ?assertEqual([a, b, c], lists:sort([receive {pong, T, _} -> T after 5000 -> ct:fail(no_pong) end
                                        || _ <- [1, 2, 3]])),
    %% Not a member: an error.
    ?assertEqual({error, not_a_group_member}, shoal_super:send_to_my_group(a, hi)),
    ?assertEqual({error, not_a_group_member}, shoal_super:send_to_random_sibling(hi)),
    %% Alone: no sibling.
    ok = shoal_super:add_group(Sup, solo, #{}),
    {ok, S} = shoal_super:add_group_worker(Sup, solo, fun() -> echo(s) end, #{id => s}),
    ?assertEqual({error, no_workers}, Inside(S, fun() -> shoal_super:send_to_random_sibling(hi) end)).

%%% Chains --------------------------------------------------------------------------------

steps_pass_results_on_and_on_finish_gets_every_outcome(Config) ->
    Sup = ?config(sup, Config),
    _ = start(Config),
    ok = shoal_super:add_chain(Sup, c, #{on_finish => collector()}),
    ok = shoal_super:add_chain_step(Sup, c, fun(X) -> {next, X + 1} end, #{id => inc}),
    ok = shoal_super:add_chain_step(Sup, c, {?MODULE, classify, []}, #{id => classify, workers => 3}),
    ok = shoal_super:add_chain_step(Sup, c, fun(X) -> {done, X} end, #{id => last}),
    [ok = shoal_super:send_to_chain(Sup, c, X) || X <- [1, 2, 3, 4, 5]],
    ?assertEqual(lists:sort([{ok, {done, 2}},                       %% 1 + 1 = 2: plain value on
                             {dropped, classify, three, 3},
                             {error, classify, four, 4},
                             {ok, {done, 5}},                       %% {next, 5}
                             {ok, {done, {next, 6}}}]),             %% only a step's own result is unwrapped
                 lists:sort(collect(5))),
    no_more_outcomes(),
    in_flight_is_zero(Sup, c).

classify(2) -> 2;
classify(3) -> {drop, three};
classify(4) -> {error, four};
classify(5) -> {next, 5};
classify(6) -> {next, {next, 6}}.

a_stop_result_stops_the_chain_and_reports_every_item(Config) ->
    Sup = ?config(sup, Config),
    _ = start(Config),
    Gate = gate(),
    ok = shoal_super:add_chain(Sup, c, #{on_finish => collector(), max_queue => 100}),
    ok = shoal_super:add_chain_step(Sup, c, fun(stop) -> {stop, enough}; (X) -> X end, #{id => first}),
    ok = shoal_super:add_chain_step(Sup, c, fun(X) -> pass(Gate), X end, #{id => slow}),
    [ok = shoal_super:send_to_chain(Sup, c, I) || I <- lists:seq(1, 20)],
    wait_until(fun() -> maps:get(queue, step_info(Sup, c, slow)) =:= 19 end, 5000, queued),
    ok = shoal_super:send_to_chain(Sup, c, stop),
    ?assertEqual([{stopped, first, enough, stop}], collect(1)),
    wait_until(fun() -> maps:get(status, info(Sup, c)) =:= stopping end, 5000, stopping),
    %% The item in hand may finish; the 19 queued behind it are handed back and reported
    %% stopped. Every item is reported exactly once.
    open(Gate),
    Outcomes = collect(20),
    Stopped = [D || {stopped, slow, {stopped, enough}, D} <- Outcomes],
    ?assertEqual(lists:seq(1, 20), lists:sort(Stopped ++ [D || {ok, D} <- Outcomes])),
    ?assert(length(Stopped) >= 19),
    no_more_outcomes(),
    wait_until(fun() -> shoal_super:chain_info(Sup, c) =:= {error, {no_such_chain, c}} end, 5000, chain_gone),
    ?assertEqual({error, {no_such_chain, c}}, shoal_super:send_to_chain(Sup, c, 1)),
    %% The supervisor goes on; the chain can be added again.
    ok = shoal_super:add_chain(Sup, c, #{}).

a_crashing_step_retries_the_item_once_then_reports_it(Config) ->
    Sup = ?config(sup, Config),
    _ = start(Config),
    Tries = ets:new(tries, [public, set]),
    Self = self(),
    Step = fun(X) ->
                   Self ! {worker, self()},
                   N = ets:update_counter(Tries, X, 1, {X, 0}),
                   case X of
                       flaky when N =:= 1 -> error(first_time_only);
                       always -> exit(never_works);
                       _ -> {X, N}
                   end
           end,
    ok = shoal_super:add_chain(Sup, c, #{on_finish => collector()}),
    ok = shoal_super:add_chain_step(Sup, c, Step, #{id => s}),
    [ok = shoal_super:send_to_chain(Sup, c, X) || X <- [flaky, always, after_it]],
    Outcomes = collect(3),
    ?assertEqual(lists:sort([{ok, {flaky, 2}},
                             {crashed, s, {exit, never_works}, always},
                             {ok, {after_it, 1}}]), lists:sort(Outcomes)),
    ?assertEqual([{after_it, 1}, {always, 2}, {flaky, 2}], lists:sort(ets:tab2list(Tries))),
    %% One worker did it all: a raising step function does not take its worker down.
    Workers = lists:usort([receive {worker, P} -> P after 1000 -> ct:fail(no_worker) end
                           || _ <- lists:seq(1, 5)]),
    ?assertMatch([_], Workers),
    ?assert(is_process_alive(hd(Workers))),
    no_more_outcomes().

back_pressure_waits_then_says_overloaded(Config) ->
    Sup = ?config(sup, Config),
    _ = start(Config),
    Gate = gate(),
    ok = shoal_super:add_chain(Sup, c, #{on_finish => collector(), max_queue => 5}),
    ok = shoal_super:add_chain_step(Sup, c, fun(X) -> pass(Gate), X end, #{id => s}),
    [ok = shoal_super:send_to_chain(Sup, c, I, 0) || I <- lists:seq(1, 5)],
    ?assertEqual(5, maps:get(in_flight, info(Sup, c))),
    ?assertEqual({error, overloaded}, shoal_super:send_to_chain(Sup, c, 6, 0)),
    ?assertEqual({error, overloaded}, shoal_super:send_to_chain(Sup, c, 6, 50)),
    ?assertEqual({error, overloaded}, shoal_super:send_to_step(Sup, c, s, 6, 50)),
    %% Senders waiting with a long timeout get in once items leave.
    Self = self(),
    Waiters = [spawn(fun() -> Self ! {sent, I, shoal_super:send_to_chain(Sup, c, I, 30000)} end)
               || I <- lists:seq(6, 15)],
    wait_until(fun() -> lists:all(fun(P) -> process_info(P, status) =:= {status, waiting} end, Waiters) end,
               5000, waiters_waiting),
    open(Gate),
    ?assertEqual([ok], lists:usort([receive {sent, _, R} -> R after 10000 -> ct:fail(waiter_stuck) end
                                     || _ <- Waiters])),
    ?assertEqual(lists:seq(1, 15), lists:sort([X || {ok, X} <- collect(15)])),
    no_more_outcomes(),
    in_flight_is_zero(Sup, c).

%% Kill a worker holding queued items; each accepted item is reported exactly once,
%% those the dead worker held as `lost' (at_most_once), every other one `ok'.
items_of_a_killed_worker_are_reported_lost_at_most_once(Config) ->
    killed_worker(Config, at_most_once).

items_of_a_killed_worker_are_sent_again_at_least_once(Config) ->
    killed_worker(Config, at_least_once).

killed_worker(Config, Delivery) ->
    Sup = ?config(sup, Config),
    _ = start(Config),
    lists:foreach(fun(Round) -> killed_worker_round(Sup, Delivery, Round) end, lists:seq(1, 3)).

killed_worker_round(Sup, Delivery, Round) ->
    C = {c, Round},
    Gate = gate(),
    Self = self(),
    ok = shoal_super:add_chain(Sup, C, #{on_finish => collector(), max_queue => 1000,
                                        delivery => Delivery}),
    ok = shoal_super:add_chain_step(Sup, C, fun(X) -> X end, #{id => fast, workers => 2}),
    ok = shoal_super:add_chain_step(Sup, C, fun(X) -> Self ! {holder, self()}, pass(Gate), X end,
                                    #{id => slow, workers => 3}),
    ok = shoal_super:add_chain_step(Sup, C, fun(X) -> X end, #{id => last}),
    N = 300,
    [ok = shoal_super:send_to_chain(Sup, C, I) || I <- lists:seq(1, N)],
    %% Each slow worker has one item in hand and more queued.
    Holders = lists:usort([receive {holder, P} -> P after 5000 -> ct:fail(no_holder) end || _ <- [1, 2, 3]]),
    wait_until(fun() -> maps:get(queue, step_info(Sup, C, slow)) + 3 >= N end, 5000, queued),
    Victim = hd(Holders),
    {message_queue_len, Queued} = process_info(Victim, message_queue_len),
    exit(Victim, kill),
    open(Gate),
    Outcomes = collect(N),
    no_more_outcomes(),
    Oks = lists:sort([X || {ok, X} <- Outcomes]),
    Lost = lists:sort([X || {lost, slow, {worker_exit, killed}, X} <- Outcomes]),
    ?assertEqual(N, length(Outcomes)),
    case Delivery of
        at_most_once ->
            %% What it had in hand and queued: reported, never run again.
            ?assert(length(Lost) >= Queued),
            ?assertEqual(lists:seq(1, N), lists:sort(Oks ++ Lost));
        at_least_once ->
            ?assertEqual([], Lost),
            ?assertEqual(lists:seq(1, N), Oks)
    end,
    flush_holders(),
    in_flight_is_zero(Sup, C),
    ok = shoal_super:remove_chain(Sup, C).

flush_holders() -> receive {holder, _} -> flush_holders() after 0 -> ok end.

one_for_all_chain_restart_hands_queued_items_on(Config) ->
    Sup = ?config(sup, Config),
    _ = start(Config),
    Gate = gate(),
    Self = self(),
    ok = shoal_super:add_chain(Sup, c, #{on_finish => collector(), restart => one_for_all,
                                        delivery => at_least_once}),
    ok = shoal_super:add_chain_step(Sup, c, fun(X) -> Self ! {first, self()}, pass(Gate), X end,
                                    #{id => first}),
    ok = shoal_super:add_chain_step(Sup, c, fun(X) -> X * 2 end, #{id => second, workers => 2}),
    [ok = shoal_super:send_to_chain(Sup, c, I) || I <- lists:seq(1, 50)],
    First = receive {first, P} -> P after 5000 -> ct:fail(no_first) end,
    wait_until(fun() -> maps:get(queue, step_info(Sup, c, first)) >= 49 end, 5000, queued),
    %% A second-step worker is killed: one_for_all restarts every worker; the queued items
    %% of the first step are handed back and on again, none is lost.
    open(Gate),
    exit(hd([P || P <- element(2, process_info(whereis_workers(Sup, c), links)), is_pid(P),
                  P =/= First, node(P) =:= node(), is_step_worker(P)]), kill),
    Outcomes = collect(50),
    ?assertEqual([I * 2 || I <- lists:seq(1, 50)], lists:sort([X || {ok, X} <- Outcomes])),
    no_more_outcomes(),
    in_flight_is_zero(Sup, c).

%% The workers' supervisor of chain C (to find the worker processes).
whereis_workers(Sup, C) ->
    {chains, Chains, _, _} = lists:keyfind(chains, 1, supervisor:which_children(Sup)),
    {C, Chain, _, _} = lists:keyfind(C, 1, supervisor:which_children(Chains)),
    {workers, W, _, _} = lists:keyfind(workers, 1, supervisor:which_children(Chain)),
    W.

is_step_worker(P) ->
    case process_info(P, dictionary) of
        {dictionary, D} -> proplists:get_value('$initial_call', D) =:= {shoal_super_step, init_it, 4};
        _ -> false
    end.

dispatch_modes_share_items_as_documented(Config) ->
    Sup = ?config(sup, Config),
    _ = start(Config),
    Self = self(),
    Tag = fun(X) -> {X, self()} end,
    lists:foreach(
      fun(D) ->
              ok = shoal_super:add_chain(Sup, D, #{on_finish => collector(), dispatch => D}),
              ok = shoal_super:add_chain_step(Sup, D, fun(X) -> X end, #{id => entry}),
              ok = shoal_super:add_chain_step(Sup, D, Tag, #{id => spread, workers => 4})
      end, [round_robin, random, hash, broadcast]),
    N = 400,
    [ok = shoal_super:send_to_chain(Sup, round_robin, I) || I <- lists:seq(1, N)],
    RR = count_by_worker(collect(N)),
    ?assertEqual([N div 4], lists:usort(maps:values(RR))),
    [ok = shoal_super:send_to_chain(Sup, random, I) || I <- lists:seq(1, N)],
    ?assertEqual(4, map_size(count_by_worker(collect(N)))),
    [ok = shoal_super:send_to_chain(Sup, hash, I rem 10) || I <- lists:seq(1, N)],
    ByData = lists:foldl(fun({ok, {X, P}}, Acc) -> maps:update_with(X, fun(S) -> lists:usort([P | S]) end, [P], Acc) end,
                         #{}, collect(N)),
    ?assertEqual([1], lists:usort([length(Ps) || Ps <- maps:values(ByData)])),   %% one worker per data
    %% broadcast: each of the 4 workers gets its copy; on_finish gets one outcome per copy.
    [ok = shoal_super:send_to_chain(Sup, broadcast, I) || I <- lists:seq(1, 10)],
    Copies = collect(40),
    ?assertEqual(lists:sort([{I, 4} || I <- lists:seq(1, 10)]),
                 lists:sort(maps:to_list(lists:foldl(fun({ok, {X, _}}, Acc) -> maps:update_with(X, fun(K) -> K + 1 end, 1, Acc) end,
                                                     #{}, Copies)))),
    ?assertEqual(4, map_size(count_by_worker(Copies))),
    no_more_outcomes(),
    [in_flight_is_zero(Sup, D) || D <- [round_robin, random, hash, broadcast]],
    _ = Self.

count_by_worker(Outcomes) ->
    lists:foldl(fun({ok, {_, P}}, Acc) -> maps:update_with(P, fun(K) -> K + 1 end, 1, Acc) end,
                #{}, Outcomes).

send_to_step_enters_mid_chain(Config) ->
    Sup = ?config(sup, Config),
    _ = start(Config),
    ok = shoal_super:add_chain(Sup, c, #{on_finish => collector()}),
    ok = shoal_super:add_chain_step(Sup, c, fun(X) -> [a | X] end, #{id => a}),
    ok = shoal_super:add_chain_step(Sup, c, fun(X) -> [b | X] end, #{id => b}),
    ok = shoal_super:add_chain_step(Sup, c, fun(X) -> [c | X] end, #{id => c}),
    ok = shoal_super:send_to_chain(Sup, c, []),
    ok = shoal_super:send_to_step(Sup, c, b, []),
    ok = shoal_super:send_to_step(Sup, c, c, []),
    ?assertEqual(lists:sort([{ok, [c, b, a]}, {ok, [c, b]}, {ok, [c]}]), lists:sort(collect(3))).

auto_scaling_grows_under_load_and_shrinks_when_idle(Config) ->
    Sup = ?config(sup, Config),
    _ = start(Config),
    ok = shoal_super:add_chain(Sup, c, #{on_finish => collector(), max_queue => 10000}),
    ok = shoal_super:add_chain_step(Sup, c, fun(X) -> timer:sleep(2), X end,
                                    #{id => s, workers => #{min => 1, max => 4, scale_interval => 50,
                                                            idle_after => 300}}),
    ?assertMatch(#{workers := 1, min := 1, max := 4}, step_info(Sup, c, s)),
    N = 1500,
    [ok = shoal_super:send_to_chain(Sup, c, I) || I <- lists:seq(1, N)],
    wait_until(fun() -> maps:get(workers, step_info(Sup, c, s)) =:= 4 end, 10000, grown),
    #{throughput := T} = step_info(Sup, c, s),
    ?assert(T > 0),
    ?assertEqual(lists:seq(1, N), lists:sort([X || {ok, X} <- collect(N, 30000)])),
    %% Idle: back to min, one worker at a time, and nothing is lost on the way down.
    wait_until(fun() -> maps:get(workers, step_info(Sup, c, s)) =:= 1 end, 10000, shrunk),
    [ok = shoal_super:send_to_chain(Sup, c, I) || I <- lists:seq(1, 100)],
    ?assertEqual(lists:seq(1, 100), lists:sort([X || {ok, X} <- collect(100)])),
    #{processed := P} = step_info(Sup, c, s),
    ?assert(P >= N),
    no_more_outcomes(),
    in_flight_is_zero(Sup, c).

removing_a_chain_reports_its_items_stopped(Config) ->
    Sup = ?config(sup, Config),
    _ = start(Config),
    Gate = gate(),
    ok = shoal_super:add_chain(Sup, c, #{on_finish => collector()}),
    ok = shoal_super:add_chain_step(Sup, c, fun(X) -> pass(Gate), X end, #{id => s, workers => 2}),
    ok = shoal_super:add_chain_step(Sup, c, fun(X) -> X end, #{id => t}),
    [ok = shoal_super:send_to_chain(Sup, c, I) || I <- lists:seq(1, 30)],
    wait_until(fun() -> maps:get(queue, step_info(Sup, c, s)) =:= 28 end, 5000, queued),
    Remover = spawn(fun() -> ok = shoal_super:remove_chain(Sup, c) end),
    wait_until(fun() -> maps:get(status, info(Sup, c)) =:= stopping end, 5000, stopping),
    %% The two items in hand may finish (shutdown waits for them); the rest is stopped.
    open(Gate),
    Outcomes = collect(30),
    Stopped = [X || {stopped, _, removed, X} <- Outcomes],
    ?assertEqual(lists:seq(1, 30), lists:sort(Stopped ++ [X || {ok, X} <- Outcomes])),
    ?assert(length(Stopped) >= 28),
    no_more_outcomes(),
    wait_until(fun() -> not is_process_alive(Remover) end, 5000, removed),
    ?assertEqual({error, {no_such_chain, c}}, shoal_super:chain_info(Sup, c)).

a_chain_past_its_intensity_ends_alone(Config) ->
    Sup = ?config(sup, Config),
    SupPid = start(Config),
    Self = self(),
    Gate = gate(),
    ok = shoal_super:add_group(Sup, g, #{}),
    {ok, Member} = shoal_super:add_group_worker(Sup, g, fun() -> echo(m) end, #{id => m}),
    ok = shoal_super:add_chain(Sup, steady, #{on_finish => collector()}),
    ok = shoal_super:add_chain_step(Sup, steady, fun(X) -> X end, #{id => s}),
    ok = shoal_super:add_chain(Sup, fragile, #{on_finish => collector(), max_restarts => 2,
                                              max_seconds => 60}),
    ok = shoal_super:add_chain_step(Sup, fragile, fun(X) -> Self ! {holder, self()}, pass(Gate), X end,
                                    #{id => s}),
    %% Each time, its worker is killed holding an item; the third kill is past its
    %% intensity (two restarts): the chain ends.
    Kill = fun(I) ->
                   ok = shoal_super:send_to_chain(Sup, fragile, I),
                   P = receive {holder, H} -> H after 5000 -> ct:fail(no_holder) end,
                   exit(P, kill)
           end,
    %% (Each time, the item's outcome tells that the dead worker is out of the route.)
    Kill(1),
    ?assertMatch([{lost, s, {worker_exit, killed}, 1}], collect(1)),
    Kill(2),
    ?assertMatch([{lost, s, {worker_exit, killed}, 2}], collect(1)),
    Kill(3),
    wait_until(fun() -> shoal_super:chain_info(Sup, fragile) =:= {error, {no_such_chain, fragile}} end,
               5000, fragile_gone),
    %% The last item too was reported, once: lost with its worker, or stopped with the chain.
    ?assertMatch([{K, s, _, 3}] when K =:= lost; K =:= stopped, collect(1)),
    no_more_outcomes(),
    open(Gate),
    ?assertEqual(SupPid, whereis(Sup)),
    ?assert(is_process_alive(Member)),
    ok = shoal_super:send_to_chain(Sup, steady, 1),
    ?assertEqual([{ok, 1}], collect(1)).

%%% Standalone workers --------------------------------------------------------------------

a_standalone_crash_affects_no_one(Config) ->
    Sup = ?config(sup, Config),
    SupPid = start(Config),
    ok = shoal_super:add_group(Sup, g, #{restart => one_for_all}),
    [{ok, _} = shoal_super:add_group_worker(Sup, g, fun() -> echo(W) end, #{id => W}) || W <- [a, b]],
    {ok, W1} = shoal_super:add_worker(Sup, fun() -> echo(w1) end, #{id => w1, max_restarts => 1, max_seconds => 60}),
    {ok, W2} = shoal_super:add_worker(Sup, {gen_server, shoal_super_test_gs, w2}, #{id => w2}),
    G = pids(Sup, g),
    W1 ! crash,
    wait_until(fun() -> {ok, Ws} = shoal_super:workers(Sup),
                        {w1, P} = lists:keyfind(w1, 1, Ws), P =/= W1 end, 5000, w1_back),
    ok = shoal_super:send_to_worker(Sup, w1, {ping, self()}),
    receive {pong, w1, _} -> ok after 5000 -> ct:fail(no_pong) end,
    %% Past its intensity: it ends, alone.
    {ok, Ws1} = shoal_super:workers(Sup),
    {w1, W1b} = lists:keyfind(w1, 1, Ws1),
    W1b ! crash,
    wait_until(fun() -> shoal_super:send_to_worker(Sup, w1, hi) =:= {error, {no_such_worker, w1}} end,
               5000, w1_gone),
    ?assertEqual(G, pids(Sup, g)),
    ?assert(is_process_alive(W2)),
    ?assertEqual(SupPid, whereis(Sup)).

standalone_restart_policies(Config) ->
    Sup = ?config(sup, Config),
    _ = start(Config),
    {ok, P} = shoal_super:add_worker(Sup, fun() -> echo(p) end, #{id => p}),
    {ok, T} = shoal_super:add_worker(Sup, fun() -> echo(t) end, #{id => t, restart => transient}),
    {ok, Tmp} = shoal_super:add_worker(Sup, fun() -> echo(tmp) end, #{id => tmp, restart => temporary}),
    {ok, T2} = shoal_super:add_worker(Sup, fun() -> echo(t2) end, #{id => t2, restart => transient}),
    ?assertEqual({error, {already_exists, p}}, shoal_super:add_worker(Sup, fun() -> ok end, #{id => p})),
    P ! {exit, normal},            %% permanent: back even after a normal exit
    T ! {exit, normal},            %% transient, normal exit: done, forgotten
    Tmp ! crash,                   %% temporary: done, forgotten
    T2 ! crash,                    %% transient, crash: back
    wait_until(fun() -> {ok, Ws} = shoal_super:workers(Sup),
                        lists:sort([W || {W, _} <- Ws]) =:= [p, t2] andalso
                            not lists:member(P, [X || {_, X} <- Ws]) andalso
                            not lists:member(T2, [X || {_, X} <- Ws])
               end, 5000, policies),
    ?assertEqual({error, {no_such_worker, t}}, shoal_super:send_to_worker(Sup, t, hi)),
    ?assertEqual({error, {no_such_worker, tmp}}, shoal_super:remove_worker(Sup, tmp)),
    ok = shoal_super:remove_worker(Sup, p),
    ?assertEqual({error, {no_such_worker, p}}, shoal_super:send_to_worker(Sup, p, hi)).

%%% Docs ----------------------------------------------------------------------------------

%% Every ```erlang block of the "Groups, chains and standalone workers" section of
%% docs/tools.md (from its heading to the end of the file) runs as it stands, as in the
%% shell: each `.'-terminated expression in turn, bindings carried over, in a fresh process
%% with shoal started; a `{ok, _} = ...' that does not match fails the example. (The pool
%% tools' sections are shoal_tools_docs_SUITE's.)
the_docs_examples_run(_Config) ->
    Src = proplists:get_value(source, ?MODULE:module_info(compile)),
    Doc = filename:join([filename:dirname(Src), "..", "..", "docs", "tools.md"]),
    {ok, Bin} = file:read_file(Doc),
    [_, Section] = binary:split(Bin, <<"\n## Groups, chains and standalone workers\n">>),
    Blocks = erlang_blocks(binary:split(Section, <<"\n">>, [global]), none, []),
    ?assert(length(Blocks) >= 3),
    lists:foreach(fun(Code) -> ok = run_block(Code) end, Blocks).

erlang_blocks([], _, Acc) -> lists:reverse(Acc);
erlang_blocks([<<"```erlang">> | Rest], none, Acc) -> erlang_blocks(Rest, [], Acc);
erlang_blocks([<<"```", _/binary>> | Rest], Lines, Acc) when is_list(Lines) ->
    erlang_blocks(Rest, none, [iolist_to_binary(lists:join("\n", lists:reverse(Lines))) | Acc]);
erlang_blocks([L | Rest], Lines, Acc) when is_list(Lines) -> erlang_blocks(Rest, [L | Lines], Acc);
erlang_blocks([_ | Rest], none, Acc) -> erlang_blocks(Rest, none, Acc).

run_block(Code) ->
    Self = self(),
    {Pid, Ref} = spawn_monitor(fun() -> Self ! {block, self(), eval_all(binary_to_list(Code), [])} end),
    receive
        {block, Pid, ok} -> erlang:demonitor(Ref, [flush]), ok;
        {'DOWN', Ref, process, Pid, Why} -> ct:fail({doc_example_failed, Why, Code})
    after 30000 -> exit(Pid, kill), ct:fail({doc_example_stuck, Code})
    end.

eval_all(Chars, Bindings) ->
    case erl_scan:tokens([], Chars, 1) of
        {done, {ok, Toks, _}, Rest} ->
            {ok, Exprs} = erl_parse:parse_exprs(Toks),
            {value, _, B1} = erl_eval:exprs(Exprs, case Bindings of [] -> erl_eval:new_bindings(); _ -> Bindings end),
            eval_all(Rest, B1);
        {more, _} -> ok;
        {done, {eof, _}, _} -> ok
    end.
