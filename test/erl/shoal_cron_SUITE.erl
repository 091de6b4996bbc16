%% @doc shoal_cron on one node, driven by a manual clock (shoal_manual_clock): no case
%% sleeps or depends on how fast the machine is. Firings on whole seconds and without
%% drift, overlap, what a job's return value does (Poolder's `{set, ...}' defects),
%% runtime control under any name (Poolder's name = module defect), retries, late
%% firings, local time with daylight saving (on a peer node with its own TZ).
-module(shoal_cron_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

-define(S, cron_test).
-define(T0, 1704067200000).          % 2024-01-01T00:00:00Z, a Monday
-define(WAIT, 5000).

all() ->
    [interval_job_fires_every_period_on_whole_seconds, cron_job_fires_at_its_spec_times,
     firings_do_not_drift_when_a_run_is_slow, a_running_job_skips_its_next_firing,
     overlap_true_runs_firings_side_by_side,
     regression_poolder_set_spec_is_permanent,
     regression_poolder_set_other_job_keeps_firing, set_with_a_fun_adds_that_job,
     exit_cancels_the_job, stop_stops_the_scheduler,
     runtime_control_adds_reschedules_cancels_and_lists,
     regression_poolder_control_works_when_the_name_is_not_a_module,
     regression_poolder_default_retry_runs_every_job, retries_then_succeeds,
     handle_error_halt_fails_the_firing, a_late_firing_runs_once_and_skips_the_missed,
     mfa_jobs_run, local_time_follows_daylight_saving, stop_stops_runs_in_progress,
     lives_in_a_user_supervisor, bad_input_is_an_error].

init_per_suite(Config) ->
    logger:set_primary_config(level, critical),
    Config.

end_per_suite(_Config) ->
    logger:set_primary_config(level, notice).

init_per_testcase(_Case, Config) ->
    {ok, C} = shoal_manual_clock:start(?T0 + 400),
    [{clock, C} | Config].

end_per_testcase(_Case, Config) ->
    [catch gen_server:stop(N) || N <- [?S, cron_a, cron_b]],
    shoal_manual_clock:stop(?config(clock, Config)).

%%% Helpers -------------------------------------------------------------------------------

start(Config, Opts) -> start(?S, Config, Opts).
start(Name, Config, Opts) ->
    {ok, Pid} = shoal_cron:start_link(Name, maps:merge(#{clock => {shoal_manual_clock, ?config(clock, Config)},
                                                         notify => self()}, Opts)),
    unlink(Pid),
    Pid.

now_ms(Config) -> shoal_manual_clock:now_ms(?config(clock, Config)).

%% Move the clock to the earliest next firing of scheduler Name; return the firings that
%% started (or were skipped) then, as {Event, Job, ScheduledMs - T0}, once every run that
%% started has reported back.
step(Config) -> step(?S, Config).
step(Name, Config) ->
    C = ?config(clock, Config),
    Next = lists:min([N || #{next_ms := N} <- shoal_cron:jobs(Name)]),
    shoal_manual_clock:advance(C, Next - shoal_manual_clock:now_ms(C)),
    Events = drain(Name),
    %% A run may have ended already (then drain/1 took its end: put it back in order).
    Ended = [{J, T} || {E, J, T, _} <- Events, E =:= done orelse E =:= failed],
    [await_end(Name, J, T) || {started, J, T} <- Events, not lists:member({J, T}, Ended)],
    [{E, J, T - ?T0} || {E, J, T} <- Events].

%% Every firing event (started, skipped, rerun) the scheduler has sent so far; the ends of
%% runs (done, failed) that came along are returned as 4-tuples.
drain(Name) ->
    receive {shoal_cron, Name, Event} -> [Event | drain(Name)]
    after 0 -> []
    end.

await_end(Name, J, T) ->
    receive
        {shoal_cron, Name, {done, J, T, V}} -> {done, V};
        {shoal_cron, Name, {failed, J, T, E}} -> {failed, E}
    after ?WAIT -> ct:fail({no_end, J, T})
    end.

steps(Config, N) -> lists:append([step(Config) || _ <- lists:seq(1, N)]).

recv(Tag) ->
    receive Msg when element(1, Msg) =:= Tag -> Msg
    after ?WAIT -> ct:fail({nothing_received, Tag})
    end.

%% A fun that counts its runs in a counters ref and returns Answer(RunNumber).
counting(Answer) ->
    Ref = counters:new(1, []),
    {Ref, fun() -> counters:add(Ref, 1, 1), Answer(counters:get(Ref, 1)) end}.

%%% Firings -------------------------------------------------------------------------------

interval_job_fires_every_period_on_whole_seconds(Config) ->
    %% added at T0 + 400 ms: firings at T0 + k seconds
    start(Config, #{jobs => [{tick, 1000, fun() -> ok end}]}),
    ?assertEqual([{started, tick, 1000}, {started, tick, 2000}, {started, tick, 3000}],
                 steps(Config, 3)),
    [#{name := tick, spec := 1000, next := Next, next_ms := NextMs, running := 0}] =
        shoal_cron:jobs(?S),
    ?assertEqual(?T0 + 4000, NextMs),
    ?assertEqual({{2024, 1, 1}, {0, 0, 4}}, Next).

cron_job_fires_at_its_spec_times(Config) ->
    start(Config, #{jobs => [{five, "*/5 * * * * *", fun() -> ok end},
                             {minutely, minute, fun() -> ok end}]}),
    Got = steps(Config, 13),
    ?assertEqual([{started, five, S * 1000} || S <- lists:seq(5, 60, 5)] ++
                     [{started, minutely, 60000}] ++ [{started, five, 65000}],
                 lists:sort(fun({_, J1, T1}, {_, J2, T2}) -> {T1, J1} =< {T2, J2} end, Got)).

firings_do_not_drift_when_a_run_is_slow(Config) ->
    Self = self(),
    start(Config, #{jobs => [{slow, 1000, fun() -> Self ! {running, self()},
                                                   receive go -> ok end end}]}),
    C = ?config(clock, Config),
    shoal_manual_clock:advance(C, 600),                  % T0 + 1000: fires
    [{started, slow, _}] = drain(?S),
    {running, R} = recv(running),
    shoal_manual_clock:advance(C, 700),                  % T0 + 1700: the run is slow
    R ! go,
    {done, ok} = await_end(?S, slow, ?T0 + 1000),
    %% The next firing stays at T0 + 2000, not 1700 + 1000.
    ?assertMatch([#{next_ms := ?T0 + 2000}], shoal_cron:jobs(?S)),
    shoal_manual_clock:advance(C, 300),
    [{started, slow, T}] = drain(?S),
    ?assertEqual(?T0 + 2000, T),
    {running, R2} = recv(running),
    R2 ! go.

a_running_job_skips_its_next_firing(Config) ->
    Self = self(),
    start(Config, #{jobs => [{slow, 1000, fun() -> Self ! {running, self()},
                                                   receive go -> ok end end}]}),
    [{started, slow, _}] = advance_and_drain(Config, 600),
    {running, R} = recv(running),
    ?assertEqual([{skipped, slow, ?T0 + 2000}, {skipped, slow, ?T0 + 3000}],
                 advance_and_drain(Config, 2000)),
    R ! go,
    {done, ok} = await_end(?S, slow, ?T0 + 1000),
    [{started, slow, T}] = advance_and_drain(Config, 1000),
    ?assertEqual(?T0 + 4000, T),
    {running, R2} = recv(running),
    R2 ! go.

advance_and_drain(Config, Ms) ->
    shoal_manual_clock:advance(?config(clock, Config), Ms),
    drain(?S).

overlap_true_runs_firings_side_by_side(Config) ->
    Self = self(),
    start(Config, #{overlap => true,
                    jobs => [{slow, 1000, fun() -> Self ! {running, self()},
                                                   receive go -> ok end end}]}),
    ?assertEqual([started, started], [E || {E, _, _} <- advance_and_drain(Config, 1600)]),
    Runs = [element(2, recv(running)) || _ <- [1, 2]],
    ?assertMatch([#{running := 2}], shoal_cron:jobs(?S)),
    [R ! go || R <- Runs].

%%% What a job returns --------------------------------------------------------------------

%% Poolder 0.1.7: {set, Spec} changed the next firing only.
regression_poolder_set_spec_is_permanent(Config) ->
    {_, Fun} = counting(fun(1) -> {set, 3000}; (_) -> ok end),
    start(Config, #{jobs => [{switch, 1000, Fun}]}),
    ?assertEqual([{started, switch, 1000}], step(Config)),
    %% rescheduled at T0 + 1000: every 3 s from there, for good
    ?assertEqual([{started, switch, 4000}, {started, switch, 7000}, {started, switch, 10000}],
                 steps(Config, 3)),
    ?assertMatch([#{spec := 3000}], shoal_cron:jobs(?S)).

%% Poolder 0.1.7: a job added with {set, Name, Spec} fired once.
regression_poolder_set_other_job_keeps_firing(Config) ->
    {_, Fun} = counting(fun(1) -> {set, other, 2000}; (_) -> ok end),
    start(Config, #{jobs => [{spawner, 1000, Fun}]}),
    ?assertEqual([{started, spawner, 1000}], step(Config)),
    Got = steps(Config, 6),
    ?assertEqual([{started, other, T} || T <- [3000, 5000, 7000]],
                 [E || {_, other, _} = E <- Got]),
    %% and {set, Existing, Spec} reschedules the existing job
    {_, Fun2} = counting(fun(1) -> {set, spawner, 5000}; (_) -> ok end),
    ok = shoal_cron:add(?S, resetter, 1000, Fun2),
    _ = step(Config),
    ?assertMatch(#{spec := 5000}, hd([J || #{name := spawner} = J <- shoal_cron:jobs(?S)])).

set_with_a_fun_adds_that_job(Config) ->
    Self = self(),
    start(Config, #{jobs => [{parent, 1000, fun() -> {set, child, 500, fun() -> Self ! {child_ran}, ok end} end}]}),
    [{started, parent, 1000}] = step(Config),
    [{started, child, 1500}] = step(Config),
    recv(child_ran),
    ?assertEqual([child, parent], [N || #{name := N} <- shoal_cron:jobs(?S)]).

exit_cancels_the_job(Config) ->
    {_, Fun} = counting(fun(2) -> exit; (_) -> ok end),
    start(Config, #{jobs => [{twice, 1000, Fun}, {keep, 5000, fun() -> ok end}]}),
    [{started, twice, 1000}] = step(Config),
    [{started, twice, 2000}] = step(Config),
    ?assertEqual([keep], [N || #{name := N} <- shoal_cron:jobs(?S)]).

stop_stops_the_scheduler(Config) ->
    Pid = start(Config, #{jobs => [{stopper, 1000, fun() -> stop end}]}),
    Mon = erlang:monitor(process, Pid),
    [{started, stopper, 1000}] = step(Config),
    receive {'DOWN', Mon, process, Pid, normal} -> ok after ?WAIT -> ct:fail(still_running) end,
    ?assertEqual({error, {no_such_scheduler, ?S}}, shoal_cron:jobs(?S)).

%%% Runtime control -----------------------------------------------------------------------

runtime_control_adds_reschedules_cancels_and_lists(Config) ->
    start(Config, #{}),
    ?assertEqual([], shoal_cron:jobs(?S)),
    ok = shoal_cron:add(?S, a, 2000, fun() -> ok end),
    ok = shoal_cron:add(?S, b, "30 * * * * *", {erlang, system_time, []}),
    ?assertEqual({error, {already_exists, a}}, shoal_cron:add(?S, a, 1000, fun() -> ok end)),
    ?assertMatch({error, {bad_spec, _}}, shoal_cron:add(?S, c, "61 * * * *", fun() -> ok end)),
    ?assertMatch({error, {bad_spec, never_fires}}, shoal_cron:add(?S, c, "0 0 30 2 *", fun() -> ok end)),
    ?assertEqual({error, {bad_task, nope}}, shoal_cron:add(?S, c, 1000, nope)),
    ?assertEqual([#{name => a, spec => 2000, next => {{2024, 1, 1}, {0, 0, 2}}, next_ms => ?T0 + 2000, running => 0},
                  #{name => b, spec => "30 * * * * *", next => {{2024, 1, 1}, {0, 0, 30}}, next_ms => ?T0 + 30000, running => 0}],
                 shoal_cron:jobs(?S)),
    ok = shoal_cron:reschedule(?S, b, 1000),
    ?assertEqual({error, {no_such_job, z}}, shoal_cron:reschedule(?S, z, 1000)),
    ?assertMatch({error, {bad_spec, _}}, shoal_cron:reschedule(?S, b, "nope")),
    ?assertEqual([{started, b, 1000}], step(Config)),
    ok = shoal_cron:cancel(?S, a),
    ?assertEqual({error, {no_such_job, a}}, shoal_cron:cancel(?S, a)),
    ?assertEqual([{started, b, 2000}], step(Config)),
    ?assertEqual([b], [N || #{name := N} <- shoal_cron:jobs(?S)]).

%% Poolder 0.1.7: push/1 and scheduler control only worked when the name was the module.
regression_poolder_control_works_when_the_name_is_not_a_module(Config) ->
    start(cron_a, Config, #{}),
    start(cron_b, Config, #{}),
    ok = shoal_cron:add(cron_a, only_a, 1000, fun() -> ok end),
    ok = shoal_cron:add(cron_b, only_b, 1000, fun() -> ok end),
    ?assertEqual([only_a], [N || #{name := N} <- shoal_cron:jobs(cron_a)]),
    ?assertEqual([only_b], [N || #{name := N} <- shoal_cron:jobs(cron_b)]),
    ok = shoal_cron:cancel(cron_a, only_a),
    ?assertEqual([], shoal_cron:jobs(cron_a)),
    ?assertEqual([only_b], [N || #{name := N} <- shoal_cron:jobs(cron_b)]),
    ?assertEqual({error, {no_such_scheduler, shoal_cron}}, shoal_cron:jobs(shoal_cron)).

%%% Errors and retries --------------------------------------------------------------------

%% Poolder 0.1.7: with the default retry option jobs never ran.
regression_poolder_default_retry_runs_every_job(Config) ->
    {Ref, Fun} = counting(fun(_) -> ok end),
    {FRef, Failing} = counting(fun(_) -> error(planned) end),
    start(Config, #{jobs => [{runs, 1000, Fun}, {fails, 1000, Failing}]}),
    [step(Config) || _ <- [1, 2, 3]],
    ?assertEqual(3, counters:get(Ref, 1)),
    ?assertEqual(3, counters:get(FRef, 1)),     % once per firing: no retry by default
    ok.

retries_then_succeeds(Config) ->
    {Ref, Fun} = counting(fun(N) when N =< 2 -> error({planned, N}); (N) -> {ran, N} end),
    start(Config, #{retry => #{count => 3}, jobs => [{flaky, 1000, Fun}]}),
    shoal_manual_clock:advance(?config(clock, Config), 600),
    ?assertEqual({done, {ran, 3}}, await_end(?S, flaky, ?T0 + 1000)),
    ?assertEqual(3, counters:get(Ref, 1)).

handle_error_halt_fails_the_firing(Config) ->
    {Ref, Fun} = counting(fun(_) -> error(planned) end),
    start(Config, #{retry => #{count => 5}, handler => shoal_tools_test_cron,
                    args => #{to => self(), policy => halt}, jobs => [{bad, 1000, Fun}]}),
    shoal_manual_clock:advance(?config(clock, Config), 600),
    ?assertMatch({failed, {error, planned, _}}, await_end(?S, bad, ?T0 + 1000)),
    {handle_error, bad, 1} = recv(handle_error),
    ?assertEqual(1, counters:get(Ref, 1)).

a_late_firing_runs_once_and_skips_the_missed(Config) ->
    {Ref, Fun} = counting(fun(_) -> ok end),
    start(Config, #{jobs => [{tick, 1000, Fun}]}),
    %% The scheduler was suspended past five firings: the first runs, late, once.
    ok = shoal_manual_clock:set(?config(clock, Config), ?T0 + 5500),
    Events = advance_and_drain(Config, 0),
    [{started, tick, T}] = [E || {started, _, _} = E <- Events],
    ?assertEqual(?T0 + 1000, T),
    _ = [{done, tick, T, ok}] =:= [E || {done, _, _, _} = E <- Events]
        orelse {done, ok} =:= await_end(?S, tick, T),
    ?assertMatch([#{next_ms := ?T0 + 6000}], shoal_cron:jobs(?S)),
    ?assertEqual(1, counters:get(Ref, 1)).

mfa_jobs_run(Config) ->
    start(Config, #{jobs => [{mfa, 1000, {erlang, send, [self(), {mfa_ran}]}}]}),
    [{started, mfa, 1000}] = step(Config),
    recv(mfa_ran).

%%% Local time ----------------------------------------------------------------------------

%% On a node whose TZ is Europe/Berlin: 02:30 local does not exist on 2024-03-31 (skipped)
%% and occurs twice on 2024-10-27 (fires at its first occurrence only).
local_time_follows_daylight_saving(_Config) ->
    {ok, Peer, _Node} = peer:start_link(#{name => peer:random_name(cron_tz),
                                          env => [{"TZ", "Europe/Berlin"}],
                                          connection => standard_io,
                                          args => ["-pa" | code:get_path()]}),
    try
        Spring = peer:call(Peer, ?MODULE, p_local_firings,
                           [ms({{2024, 3, 30}, {12, 0, 0}}), "0 30 2 * * *", 2]),
        ?assertEqual([{{2024, 4, 1}, {0, 30, 0}}, {{2024, 4, 2}, {0, 30, 0}}], Spring),
        Autumn = peer:call(Peer, ?MODULE, p_local_firings,
                           [ms({{2024, 10, 26}, {12, 0, 0}}), "0 30 2 * * *", 2]),
        ?assertEqual([{{2024, 10, 27}, {0, 30, 0}}, {{2024, 10, 28}, {1, 30, 0}}], Autumn),
        %% the same spec in UTC, on the same node: no shift
        Utc = peer:call(Peer, ?MODULE, p_utc_firings,
                        [ms({{2024, 3, 30}, {12, 0, 0}}), "0 30 2 * * *", 2]),
        ?assertEqual([{{2024, 3, 31}, {2, 30, 0}}, {{2024, 4, 1}, {2, 30, 0}}], Utc)
    after
        peer:stop(Peer)
    end.

ms(UtcDT) -> (calendar:datetime_to_gregorian_seconds(UtcDT) - 62167219200) * 1000.

p_local_firings(Start, Spec, N) -> p_firings(Start, Spec, N, local).
p_utc_firings(Start, Spec, N) -> p_firings(Start, Spec, N, utc).

%% On the peer: the UTC times of the first N firings.
p_firings(Start, Spec, N, Tz) ->
    {ok, C} = shoal_manual_clock:start(Start),
    {ok, _} = shoal_cron:start_link(p_cron, #{clock => {shoal_manual_clock, C}, tz => Tz,
                                       notify => self(), jobs => [{j, Spec, fun() -> ok end}]}),
    Times = [begin
                 [#{next_ms := Next}] = shoal_cron:jobs(p_cron),
                 shoal_manual_clock:advance(C, Next - shoal_manual_clock:now_ms(C)),
                 receive {shoal_cron, p_cron, {done, j, T, _}} -> T end,
                 calendar:system_time_to_universal_time(T, millisecond)
             end || _ <- lists:seq(1, N)],
    ok = shoal_cron:stop(p_cron),
    Times.

%%% Life cycle and input ------------------------------------------------------------------

stop_stops_runs_in_progress(Config) ->
    Self = self(),
    start(Config, #{jobs => [{slow, 1000, fun() -> Self ! {running, self()},
                                                   receive go -> ok end end}]}),
    [{started, slow, _}] = advance_and_drain(Config, 600),
    {running, R} = recv(running),
    Mon = erlang:monitor(process, R),
    ok = shoal_cron:stop(?S),
    receive {'DOWN', Mon, process, R, shutdown} -> ok after ?WAIT -> ct:fail(run_outlived) end.

lives_in_a_user_supervisor(Config) ->
    Clock = {shoal_manual_clock, ?config(clock, Config)},
    {ok, Sup} = supervisor:start_link(shoal_test_sup,
                                      [shoal_cron:child_spec({?S, [{clock, Clock}, {notify, self()},
                                                                   {jobs, [{stopper, 1000, fun() -> stop end}]}]})]),
    [{{shoal_cron, ?S}, Pid, worker, _}] = supervisor:which_children(Sup),
    Mon = erlang:monitor(process, Pid),
    [{started, stopper, 1000}] = step(Config),
    receive {'DOWN', Mon, process, Pid, normal} -> ok end,
    %% transient: a scheduler a job stopped stays stopped
    ?assertMatch([{_, undefined, worker, _}], supervisor:which_children(Sup)),
    unlink(Sup), exit(Sup, shutdown).

bad_input_is_an_error(Config) ->
    Clock = {shoal_manual_clock, ?config(clock, Config)},
    [?assertEqual({error, Why}, shoal_cron:start_link(?S, Opts))
     || {Opts, Why} <- [{#{tz => mars}, {bad_option, tz, mars}},
                        {#{overlap => maybe}, {bad_option, overlap, maybe}},
                        {#{retry => #{count => x}}, {bad_option, retry, #{count => x}}},
                        {#{handler => nosuch_xyz}, {module_not_loadable, nosuch_xyz, nofile}},
                        {#{notify => self}, {bad_option, notify, self}},
                        {#{colour => red}, {unknown_option, colour}}]],
    process_flag(trap_exit, true),
    ?assertMatch({error, {bad_spec, _}},
                 shoal_cron:start_link(?S, #{clock => Clock, jobs => [{j, "nope", fun() -> ok end}]})),
    ?assertEqual({error, {duplicate_job, j}},
                 shoal_cron:start_link(?S, #{clock => Clock, jobs => [{j, 1000, fun() -> ok end},
                                                                      {j, 2000, fun() -> ok end}]})),
    ?assertEqual({error, {bad_job, {j, 1000}}},
                 shoal_cron:start_link(?S, #{clock => Clock, jobs => [{j, 1000}]})),
    E = {error, {no_such_scheduler, nope}},
    [?assertEqual(E, R) || R <- [shoal_cron:jobs(nope), shoal_cron:add(nope, j, 1000, fun() -> ok end),
                                 shoal_cron:cancel(nope, j), shoal_cron:reschedule(nope, j, 1),
                                 shoal_cron:stop(nope)]].
