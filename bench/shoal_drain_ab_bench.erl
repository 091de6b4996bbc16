%% shoal_drain_ab_bench: the drain of one node, this checkout against another, in one run,
%% the two sides taking turns round by round (`make bench-drain-ab BASE=../other').
%%
%% On this 2-core machine three local nodes share the CPU with whatever else runs, and its
%% speed drifts by more than a code change moves a drain: two runs of one commit an hour
%% apart differ by up to a second (bench/results/cluster.md). So this bench pairs the
%% sides: round R runs side A then side B (B then A in even rounds) on fresh peers, each
%% side's peers loading only that side's Shoal, and reports each side's seconds and the
%% CPU the three nodes spent, with the ratio taken within each round.
%%
%% A round: three peers, the pool started on each, SHOAL_DRAIN_AB_N keys started from each
%% node (default 100000, so about as many live on each node), then `shoal:drain/2' of the
%% third node, timed from the call to its return. With SHOAL_DRAIN_AB_LOAD=1 a client on
%% each of the two other nodes calls random keys meanwhile. The pool's `handoff_grace' is
%% SHOAL_DRAIN_AB_GRACE ms (default 2000, as `make bench' sets it). SHOAL_DRAIN_AB_ROUNDS
%% (default 4) rounds. Only the public API is used, so the other side may be any checkout
%% whose `make' has built its `_build/default/lib/shoal/ebin'.
%%
%% Results: $SHOAL_BENCH_RESULTS/drain_ab.md, or drain_ab_load.md with the clients
%% (default build/bench/scratch: the figures
%% depend on the other side, so a run never writes over committed results by itself).
-module(shoal_drain_ab_bench).

-export([main/0]).
%% run on the peers
-export([spawn_keys/3, caller/3]).
%% the worker (shoal_worker callbacks)
-export([init/2, handle_call/3, handle_cast/2]).

-define(POOL, bench_drain_ab).

init(_Key, _Args) -> {ok, 0}.
handle_call(_, _From, N) -> {reply, N, N}.
handle_cast(_, N) -> {noreply, N}.

main() ->
    ok = io:setopts(standard_io, [{encoding, unicode}]),
    Base = case os:getenv("SHOAL_DRAIN_AB_BASE") of
               false -> erlang:error({missing, "SHOAL_DRAIN_AB_BASE (make bench-drain-ab BASE=dir)"});
               B -> filename:absname(B)
           end,
    Here = filename:absname("."),
    Sides = [{"this", Here}, {"base", Base}],
    [case filelib:is_regular(filename:join(ebin(Dir), "shoal.beam")) of
         true -> ok;
         false -> erlang:error({not_built, ebin(Dir)})
     end || {_, Dir} <- Sides],
    Rounds = env_int("SHOAL_DRAIN_AB_ROUNDS", 4),
    N = env_int("SHOAL_DRAIN_AB_N", 100000),
    Grace = env_int("SHOAL_DRAIN_AB_GRACE", 2000),
    Load = os:getenv("SHOAL_DRAIN_AB_LOAD", "0") =:= "1",
    Dir = os:getenv("SHOAL_BENCH_RESULTS", "build/bench/scratch"),
    Results = [begin
                   Order = case R rem 2 of 1 -> Sides; 0 -> lists:reverse(Sides) end,
                   maps:from_list([{Name, drain_round(Name, SideDir, N, Grace, Load, R)}
                                   || {Name, SideDir} <- Order])
               end || R <- lists:seq(1, Rounds)],
    Report = report(Sides, Results, #{rounds => Rounds, n => N, grace => Grace, load => Load}),
    io:format("~n~ts", [Report]),
    File = filename:join(Dir, case Load of true -> "drain_ab_load.md"; false -> "drain_ab.md" end),
    ok = filelib:ensure_dir(File),
    ok = file:write_file(File, unicode:characters_to_binary(Report)),
    io:format("bench: wrote ~ts~n", [File]),
    ok.

ebin(Dir) -> filename:join([Dir, "_build", "default", "lib", "shoal", "ebin"]).

%% One drain on fresh peers running the Shoal of SideDir: #{secs, ticks, moved, ok}.
drain_round(Name, SideDir, N, Grace, Load, Round) ->
    Paths = [ebin(SideDir), filename:dirname(code:which(?MODULE))],
    Peers = [begin
                 PName = peer:random_name(list_to_atom("drain_ab_" ++ integer_to_list(I))),
                 {ok, P, Node} = peer:start_link(#{name => PName,
                                                  args => ["+P", "2000000"
                                                           | lists:append([["-pa", D] || D <- Paths])]}),
                 {P, Node}
             end || I <- [1, 2, 3]],
    Nodes = [A, B, C] = [Nd || {_, Nd} <- Peers],
    try
        [{ok, _} = erpc:call(Nd, application, ensure_all_started, [shoal]) || Nd <- Nodes],
        [true = erpc:call(X, net_kernel, connect_node, [Y]) || X <- Nodes, Y <- Nodes, X < Y],
        [{ok, _} = erpc:call(Nd, shoal, start_pool, [?POOL, #{worker => ?MODULE, handoff_grace => Grace}])
         || Nd <- Nodes],
        ok = wait(fun() -> lists:all(fun(Nd) -> length(erpc:call(Nd, shoal, nodes, [?POOL])) =:= 3 end,
                                     Nodes) end, 30000),
        Self = self(),
        Spawners = [spawn_link(fun() ->
                                       ok = erpc:call(Nd, ?MODULE, spawn_keys, [?POOL, I, N], infinity),
                                       Self ! {spawned, self()}
                               end) || {I, Nd} <- lists:zip([1, 2, 3], Nodes)],
        [receive {spawned, S} -> ok end || S <- Spawners],
        ok = wait(fun() -> lists:all(fun(Nd) -> erpc:call(Nd, shoal, count, [?POOL]) >= 3 * N end,
                                     Nodes) end, 300000),
        OnC = erpc:call(A, shoal, count, [?POOL, C]),
        Callers = [spawn(Nd, ?MODULE, caller, [?POOL, N, 10 * Round + I])
                   || Load, {I, Nd} <- lists:zip([1, 2], [A, B])],
        timer:sleep(500),
        C0 = calls(Callers),
        T0s = [erpc:call(Nd, shoal_bench_cpu, ticks, []) || Nd <- Nodes],
        T0 = erlang:monotonic_time(microsecond),
        Res = erpc:call(A, shoal, drain, [?POOL, C], infinity),
        Secs = (erlang:monotonic_time(microsecond) - T0) / 1.0e6,
        T1s = [erpc:call(Nd, shoal_bench_cpu, ticks, []) || Nd <- Nodes],
        {Ok, Failed, Lats} = sub(calls(Callers), C0),
        [exit(P, kill) || P <- Callers],
        Left = erpc:call(A, shoal, count, [?POOL, C]),
        Ticks = lists:sum([Y - X || {X, Y} <- lists:zip(T0s, T1s)]),
        io:format("round ~b, ~s: ~b workers drained in ~.2f s (~p, ~b left), ~b CPU ticks on the "
                  "three nodes, ~b calls answered meanwhile, ~b failed~n",
                  [Round, Name, OnC, Secs, Res, Left, Ticks, Ok, Failed]),
        #{secs => Secs, ticks => Ticks, moved => OnC - Left, ok => Res =:= ok andalso Left =:= 0,
          calls => Ok / Secs, failed => Failed, p50 => pct(50, Lats), p99 => pct(99, Lats),
          pmax => pct(100, Lats)}
    after
        [catch peer:stop(P) || {P, _} <- Peers]
    end.

%% The callers' counts of answered and failed calls so far, summed.
calls(Callers) ->
    [P ! {count, self()} || P <- Callers],
    lists:foldl(fun(P, {O, F, L}) ->
                        receive {calls, P, O1, F1, L1} -> {O + O1, F + F1, L1 ++ L}
                        after 30000 -> erlang:error({no_count, P})
                        end
                end, {0, 0, []}, Callers).

%% Calls answered and failed between two counts, and the latencies of the later one's.
sub({O1, F1, L}, {O0, F0, _}) -> {O1 - O0, F1 - F0, L}.

%% The p-th percentile of a non-empty list (0 for an empty one).
pct(_, []) -> 0;
pct(P, L) ->
    S = lists:sort(L),
    lists:nth(max(1, min(length(S), round(P / 100 * length(S)))), S).

%%% On the peers ---------------------------------------------------------------------------

-spec spawn_keys(atom(), pos_integer(), pos_integer()) -> ok.
spawn_keys(Pool, Tag, N) ->
    lists:foreach(fun(J) -> _ = shoal:ensure_started_async(Pool, {Tag, J}) end,
                  lists:seq(1, N)).

-spec caller(atom(), pos_integer(), integer()) -> no_return().
caller(Pool, N, Seed) ->
    rand:seed(exsss, {Seed, Seed, Seed}),
    caller_loop(Pool, N, 0, 0, []).

%% Calls one key at a time. Asked, answers {calls, self(), Ok, Failed, Lats}: the calls
%% answered and failed so far, and the latencies (us) of the calls answered since it was
%% last asked.
caller_loop(Pool, N, Ok, Failed, Lats) ->
    receive
        {count, From} ->
            From ! {calls, self(), Ok, Failed, Lats},
            caller_loop(Pool, N, Ok, Failed, [])
    after 0 -> ok
    end,
    T0 = erlang:monotonic_time(microsecond),
    case catch shoal:call(Pool, {rand:uniform(3), rand:uniform(N)}, ping) of
        R when is_integer(R) ->
            caller_loop(Pool, N, Ok + 1, Failed, [erlang:monotonic_time(microsecond) - T0 | Lats]);
        _ -> caller_loop(Pool, N, Ok, Failed + 1, Lats)
    end.


%%% Report ---------------------------------------------------------------------------------

report(Sides, Results, #{rounds := Rounds, n := N, grace := Grace, load := Load}) ->
    [{This, _}, {BaseName, BaseDir}] = Sides,
    Commit = fun(D) -> string:trim(os:cmd("git -C '" ++ D ++ "' rev-parse --short HEAD 2>/dev/null")) end,
    Row = fun(Name) ->
                  Secs = [maps:get(secs, maps:get(Name, R)) || R <- Results],
                  Ticks = [maps:get(ticks, maps:get(Name, R)) || R <- Results],
                  Calls = [maps:get(calls, maps:get(Name, R)) || R <- Results],
                  Failed = lists:sum([maps:get(failed, maps:get(Name, R)) || R <- Results]),
                  Lat = fun(K) -> spread("~b", [maps:get(K, maps:get(Name, R)) || R <- Results]) end,
                  io_lib:format("| ~s (~s) | ~ts | ~ts | ~ts |~n",
                                [Name, Commit(case Name of This -> "."; _ -> BaseDir end),
                                 spread("~.2f", Secs), spread("~b", Ticks),
                                 case Load of
                                     true ->
                                         io_lib:format("~ts | ~ts | ~ts | ~ts | ~b",
                                                       [spread("~b", [round(C) || C <- Calls]),
                                                        Lat(p50), Lat(p99), Lat(pmax), Failed]);
                                     false -> "– | – | – | – | –"
                                 end])
          end,
    Ratio = fun(Key) -> [maps:get(Key, maps:get(This, R)) / maps:get(Key, maps:get(BaseName, R))
                         || R <- Results] end,
    AllOk = lists:all(fun(R) -> maps:get(ok, maps:get(This, R)) andalso maps:get(ok, maps:get(BaseName, R)) end,
                      Results),
    [io_lib:format("# Drain: this checkout against ~ts~n~n", [BaseDir]),
     io_lib:format("Produced by `make bench-drain-ab BASE=...` (bench/shoal_drain_ab_bench.erl). "
                   "~b rounds; in each the two sides drain in turn (order alternating), each on "
                   "three fresh peers loading only its own Shoal: ~b keys started from each node, "
                   "then `shoal:drain/2` of the third, timed to its return; handoff_grace ~b ms; ~s. "
                   "CPU: user + system clock ticks (1/100 s) of the three nodes over the drain. "
                   "Median (min–max); ratios are taken within each round.~n~n",
                   [Rounds, N, Grace,
                    case Load of
                        true -> "a client on each other node calls random keys throughout";
                        false -> "no load"
                    end]),
     "| side | seconds to empty | CPU ticks | calls answered per second meanwhile "
     "| call latency p50 (us) | p99 | max | calls failed |\n"
     "|---|---:|---:|---:|---:|---:|---:|---:|\n",
     Row(This), Row(BaseName),
     io_lib:format("~nthis / base, seconds: **~ts**; CPU: **~ts**. Every drain emptied its node: ~s.~n",
                   [spread("~.2fx", Ratio(secs)), spread("~.2fx", Ratio(ticks)), AllOk])].

spread(Fmt, L) ->
    S = lists:sort(L),
    Med = lists:nth((length(S) + 1) div 2, S),
    io_lib:format(Fmt ++ " (" ++ Fmt ++ "–" ++ Fmt ++ ")", [Med, hd(S), lists:last(S)]).

wait(F, Timeout) -> wait(F, Timeout, erlang:monotonic_time(millisecond) + Timeout).
wait(F, Timeout, Deadline) ->
    case F() of
        true -> ok;
        false ->
            erlang:monotonic_time(millisecond) > Deadline andalso erlang:error({timeout, Timeout}),
            timer:sleep(50),
            wait(F, Timeout, Deadline)
    end.

env_int(Name, Default) ->
    case os:getenv(Name) of
        false -> Default;
        V -> list_to_integer(V)
    end.
