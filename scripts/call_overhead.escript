#!/usr/bin/env escript
%%! +P 1000000
%% What the `[shoal, call]' telemetry span costs `shoal:call/3' when nobody listens: the
%% current shoal:call against the shoal.erl of a commit before the span (compiled here as
%% module `shoal_before', so both run in one VM, on one pool, one worker, alternating over
%% rounds), with a plain gen_server:call to the same worker and shoal:call with a handler
%% attached beside them. Run from the repository root after `make`:
%%
%%   escript scripts/call_overhead.escript [Rounds [CallsPerRound [BeforeRef]]]
%%
%% BeforeRef defaults to the parent of the commit that put the span into erl/shoal.erl.
%% Prints ns per call (median and min..max over rounds) and the ratio current/before per
%% round (median, min..max).
-mode(compile).

main(Args) ->
    {Rounds, N, Ref} = case Args of
                           [] -> {11, 200000, default};
                           [R] -> {list_to_integer(R), 200000, default};
                           [R, C] -> {list_to_integer(R), list_to_integer(C), default};
                           [R, C, G] -> {list_to_integer(R), list_to_integer(C), G}
                       end,
    Before = before_ref(Ref),
    true = code:add_patha("_build/default/lib/shoal/ebin"),
    ok = load_before(Before),
    ok = load_worker(),
    {ok, _} = application:ensure_all_started(shoal),
    {ok, _} = shoal:start_pool(call_overhead, #{worker => call_overhead_worker}),
    Pid = shoal:call(call_overhead, k, self_pid),
    false = shoal_telemetry:call_events(),
    Cases = [{"shoal:call, no handler (current)", fun() -> shoal:call(call_overhead, k, ping) end},
             {"shoal:call, no handler (before the span)",
              fun() -> shoal_before:call(call_overhead, k, ping) end},
             {"gen_server:call to the worker's pid", fun() -> gen_server:call(Pid, ping) end},
             {"shoal:call, one handler attached", attached}],
    [run(Fun, 2000) || {_, Fun} <- Cases, is_function(Fun)],
    Results = [round_of(rotate(Cases, I), N) || I <- lists:seq(1, Rounds)],
    io:format("shoal:call/3 overhead, ~b rounds x ~b calls, before = ~s, ~s, ~b schedulers~n",
              [Rounds, N, Before, erlang:system_info(otp_release),
               erlang:system_info(schedulers_online)]),
    io:format("load average at the end: ~s~n", [string:trim(os:cmd("cut -d' ' -f1-3 /proc/loadavg"))]),
    io:format("~-45s ~10s ~22s~n", ["case", "ns/call", "min..max"]),
    [begin
         Ts = [proplists:get_value(Name, R) || R <- Results],
         io:format("~-45s ~10.1f ~10.1f..~.1f~n", [Name, median(Ts), lists:min(Ts), lists:max(Ts)])
     end || {Name, _} <- Cases],
    Check = [check_ns(N) || _ <- lists:seq(1, Rounds)],
    io:format("~-45s ~10.1f ~10.1f..~.1f~n", ["the flag check alone (call_events/0)", median(Check),
                                             lists:min(Check), lists:max(Check)]),
    Ratio = [proplists:get_value("shoal:call, no handler (current)", R) /
                 proplists:get_value("shoal:call, no handler (before the span)", R) || R <- Results],
    io:format("current / before, per round: median ~.3f (~.3f..~.3f)~n",
              [median(Ratio), lists:min(Ratio), lists:max(Ratio)]),
    halt(0).

%% ns per shoal_telemetry:call_events/0, over an empty loop of the same length.
check_ns(N) ->
    T0 = erlang:monotonic_time(nanosecond),
    ok = checks(N),
    T1 = erlang:monotonic_time(nanosecond),
    ok = empty(N),
    T2 = erlang:monotonic_time(nanosecond),
    ((T1 - T0) - (T2 - T1)) / N.

checks(0) -> ok;
checks(N) -> case shoal_telemetry:call_events() of false -> checks(N - 1); true -> error end.

empty(0) -> ok;
empty(N) -> case N of -1 -> error; _ -> empty(N - 1) end.

before_ref(default) ->
    Intro = string:trim(os:cmd("git log --format=%H -S'shoal_telemetry:call_events' -- erl/shoal.erl | tail -1")),
    case Intro of
        "" -> "HEAD";
        _ -> Intro ++ "^"
    end;
before_ref(Ref) -> Ref.

load_before(Ref) ->
    Src = os:cmd("git show " ++ Ref ++ ":erl/shoal.erl"),
    Renamed = re:replace(Src, "^-module\\(shoal\\)\\.", "-module(shoal_before).",
                         [multiline, {return, list}]),
    Dir = "build/call_overhead",
    ok = filelib:ensure_dir(Dir ++ "/x"),
    File = Dir ++ "/shoal_before.erl",
    ok = file:write_file(File, Renamed),
    {ok, shoal_before, Bin} = compile:file(File, [binary, {i, "erl"}, {i, "include"}, return_errors]),
    {module, _} = code:load_binary(shoal_before, File, Bin),
    ok.

load_worker() ->
    Forms = [{attribute, 1, module, call_overhead_worker},
             {attribute, 2, export, [{init, 2}, {handle_call, 3}, {handle_cast, 2}]},
             {function, 3, init, 2, [{clause, 3, [{var, 3, 'K'}, {var, 3, '_'}], [],
                                      [{tuple, 3, [{atom, 3, ok}, {var, 3, 'K'}]}]}]},
             {function, 4, handle_call, 3,
              [{clause, 4, [{atom, 4, self_pid}, {var, 4, '_'}, {var, 4, 'S'}], [],
                [{tuple, 4, [{atom, 4, reply}, {call, 4, {atom, 4, self}, []}, {var, 4, 'S'}]}]},
               {clause, 5, [{var, 5, 'M'}, {var, 5, '_'}, {var, 5, 'S'}], [],
                [{tuple, 5, [{atom, 5, reply}, {var, 5, 'M'}, {var, 5, 'S'}]}]}]},
             {function, 6, handle_cast, 2, [{clause, 6, [{var, 6, '_'}, {var, 6, 'S'}], [],
                                             [{tuple, 6, [{atom, 6, noreply}, {var, 6, 'S'}]}]}]}],
    {ok, M, Bin} = compile:forms(Forms, [binary]),
    {module, M} = code:load_binary(M, "call_overhead_worker.erl", Bin),
    ok.

%% One round: N calls per case, made in blocks of ?BLOCK calls that take turns between the
%% cases, so that what the rest of the machine does weighs on every case alike; then the
%% handler case, with a handler attached for its blocks only.
-define(BLOCK, 1000).
round_of(Cases, N) ->
    erlang:garbage_collect(),
    Plain = [C || {_, F} = C <- Cases, is_function(F)],
    Totals = block(Plain, N div ?BLOCK, #{}),
    Id = {call_overhead, make_ref()},
    ok = shoal_telemetry:attach_many(Id, [[shoal, call, stop]], fun(_, _, _, _) -> ok end, []),
    Attached = try block([{A, fun() -> shoal:call(call_overhead, k, ping) end}
                          || {A, attached} <- Cases], N div ?BLOCK, Totals)
               after shoal_telemetry:detach(Id)
               end,
    [{Name, maps:get(Name, Attached) / (N div ?BLOCK * ?BLOCK)} || {Name, _} <- Cases].

block(_Cases, 0, Acc) -> Acc;
block(Cases, K, Acc) ->
    block(Cases, K - 1,
          lists:foldl(fun({Name, Fun}, A) ->
                              T = timed(Fun),
                              maps:update_with(Name, fun(Sum) -> Sum + T end, T, A)
                      end, Acc, Cases)).

timed(Fun) ->
    T0 = erlang:monotonic_time(nanosecond),
    run(Fun, ?BLOCK),
    erlang:monotonic_time(nanosecond) - T0.

run(_Fun, 0) -> ok;
run(Fun, N) -> ping = Fun(), run(Fun, N - 1).

rotate(L, I) ->
    K = I rem length(L),
    {A, B} = lists:split(K, L),
    B ++ A.

median(L) ->
    S = lists:sort(L),
    Len = length(S),
    case Len rem 2 of
        1 -> lists:nth(Len div 2 + 1, S);
        0 -> (lists:nth(Len div 2, S) + lists:nth(Len div 2 + 1, S)) / 2
    end.
