%% shoal_cluster_bench: cluster-wide pools on three local nodes against what a user would
%% pick instead, in one run.
%%
%%   1. cluster-wide registrations per second: shoal workers spawned from all three nodes
%%      (done when every node counts them all) vs pg:join (done when every node sees every
%%      group) vs global:register_name, each registering a fresh process per key.
%%   2. a cross-node shoal:call/3 by key vs gen_server:call/2 on the remote pid in hand.
%%   3. draining a node that holds ?DRAIN_N workers while clients call keys all over the
%%      cluster: time until it is empty, calls failed meanwhile; then the same drain with
%%      no clients (the move machinery alone).
%%   4. replica memory per worker entry, on a node that holds only replicas.
%%
%% The three nodes are OTP peers of this (controller) node, which is connected to them but
%% is not a pool member. Each part runs SHOAL_CLUSTER_ROUNDS rounds (default 3; the call 7),
%% reported as median (min–max). Writes cluster.md and its CSVs (the drain's counts over
%% time included) into SHOAL_BENCH_RESULTS. scripts/bench.sh runs it after the single-node
%% bench; SHOAL_CLUSTER_N scales part 1 (default 150000), SHOAL_DRAIN_N part 3 (default
%% 100000).
-module(shoal_cluster_bench).

-export([main/0]).
%% shoal_worker, run on the peers
-export([init/2, handle_call/3, handle_cast/2]).
%% helpers run on the peers
-export([spawn_keys/3, pg_joins/4, global_regs/4, kill_idle/0, wait_count/3, call_loop/4,
         caller/4, mem_total/0, idle_proc/0]).

-define(POOL, bench_cluster).
-define(SCOPE, bench_pg).

init(_Key, _Args) -> {ok, 0}.
handle_call(ping, _From, N) -> {reply, pong, N + 1};
handle_call(_, _From, N) -> {reply, N, N}.
handle_cast(_, N) -> {noreply, N + 1}.

main() ->
    ok = io:setopts(standard_io, [{encoding, unicode}]),
    N = env_int("SHOAL_CLUSTER_N", 150000),
    DrainN = env_int("SHOAL_DRAIN_N", 100000),
    Rounds = env_int("SHOAL_CLUSTER_ROUNDS", 3),
    Dir = case os:getenv("SHOAL_BENCH_RESULTS") of false -> "bench/results"; D -> D end,
    GlobalN = max(300, min(N, 3000)),
    Nodes = start_peers(),
    [A, B, C] = Nodes,
    io:format("~n## Cluster: three local nodes (~s)~n~n", [lists:join(", ", [atom_to_list(X) || X <- Nodes])]),

    %% 1. registrations: the three sides in alternating order, Rounds times
    Sides = [shoal, pg, global],
    RegRuns = [begin
                   {Bf, Af} = lists:split((R - 1) rem 3, Sides),
                   [{Side, registrations(Side, Nodes, N, GlobalN, R)} || Side <- Af ++ Bf]
               end || R <- lists:seq(1, Rounds)],
    RegRates = fun(Side) -> [Rate || Run <- RegRuns, {S1, {_, _, Rate}} <- Run, S1 =:= Side] end,
    PerRound = fun(Side) ->
                       [begin
                            {_, {_, _, Sh}} = lists:keyfind(shoal, 1, Run),
                            {_, {_, _, X}} = lists:keyfind(Side, 1, Run),
                            Sh / X
                        end || Run <- RegRuns]
               end,
    Reg = [{"shoal workers (spawn + cluster-wide registration)", N, spread(RegRates(shoal))},
           {"pg:join (spawn + join, seen on every node)", N, spread(RegRates(pg))},
           {"global:register_name (spawn + register)", GlobalN, spread(RegRates(global))}],
    RegRatios = {spread(PerRound(pg)), spread(PerRound(global))},
    print_registrations(Reg, RegRatios, Rounds),

    %% 2. cross-node call
    start_pools(Nodes),
    Key = key_on(B, A),
    {ok, Pid} = erpc:call(A, shoal, ensure_started, [?POOL, Key]),
    ok = wait_until(fun() -> erpc:call(A, shoal, whereis, [?POOL, Key]) =:= Pid end, 5000),
    Calls = 20000,
    %% A warm-up round, then the two sides in alternating order, so neither always runs
    %% right after the other (background work of the previous phases settles meanwhile).
    _ = erpc:call(A, ?MODULE, call_loop, [gen, Pid, Key, Calls], infinity),
    _ = erpc:call(A, ?MODULE, call_loop, [shoal, Pid, Key, Calls], infinity),
    Runs = [begin
                Order = case I rem 2 of 0 -> [gen, shoal]; 1 -> [shoal, gen] end,
                R = maps:from_list([{W, erpc:call(A, ?MODULE, call_loop, [W, Pid, Key, Calls],
                                                  infinity)} || W <- Order]),
                {maps:get(gen, R), maps:get(shoal, R)}
            end || I <- lists:seq(1, 7)],
    Gen = spread([G || {G, _} <- Runs]), Sh = spread([S || {_, S} <- Runs]),
    CallRatio = spread([S / G || {G, S} <- Runs]),
    io:format("### Cross-node call (caller on ~s, worker on ~s)~n~n", [A, B]),
    io:format("~ts", [call_table(Gen, Sh, CallRatio, Calls)]),
    stop_pools(Nodes),

    %% 3. drain a node holding DrainN workers, under call load, Rounds times; every node's
    %% own count sampled meanwhile
    Drains = [drain_round(Nodes, DrainN, R, true) || R <- lists:seq(1, Rounds)],
    io:format("### Draining a node under call load~n~n~ts", [drain_table(Drains)]),
    Idle = [drain_round(Nodes, DrainN, R, false) || R <- lists:seq(1, Rounds)],
    io:format("### Draining a node, no load~n~n~ts", [idle_table(Idle)]),

    %% 4. replica memory: workers only on A, measured on B
    Mem = spread([replica_bytes(Nodes, DrainN) || _ <- lists:seq(1, Rounds)]),
    io:format("### Replica memory~n~n~ts", [mem_table(Mem, DrainN)]),
    _ = C,
    write_results(Dir, Reg, RegRatios, Rounds, {Gen, Sh, CallRatio, Calls}, {Drains, Idle},
                  {Mem, DrainN}),
    ok.

%% One side's registrations, from a clean start; {Count, Seconds, PerSecond}.
registrations(shoal, Nodes, N, _, _Round) ->
    start_pools(Nodes),
    T = timed(fun() -> par([{Nd, ?MODULE, spawn_keys, [?POOL, I, N]} || {I, Nd} <- idx(Nodes)]),
                       [ok = erpc:call(Nd, ?MODULE, wait_count, [?POOL, N, 300000]) || Nd <- Nodes]
              end),
    stop_pools(Nodes),
    {N, T, N / T};
registrations(pg, Nodes, N, _, Round) ->
    Scope = scope(Round),
    [{ok, _} = erpc:call(Nd, pg, start, [Scope]) || Nd <- Nodes],
    T = timed(fun() -> par([{Nd, ?MODULE, pg_joins, [Scope, I, N, length(Nodes)]}
                            || {I, Nd} <- idx(Nodes)]) end),
    [ok = erpc:call(Nd, ?MODULE, kill_idle, []) || Nd <- Nodes],
    {N, T, N / T};
registrations(global, Nodes, _, GlobalN, Round) ->
    T = timed(fun() -> par([{Nd, ?MODULE, global_regs, [Round, I, GlobalN, length(Nodes)]}
                            || {I, Nd} <- idx(Nodes)]) end),
    [ok = erpc:call(Nd, ?MODULE, kill_idle, []) || Nd <- Nodes],
    {GlobalN, T, GlobalN / T}.

scope(Round) -> list_to_atom(atom_to_list(?SCOPE) ++ "_" ++ integer_to_list(Round)).

drain_round(Nodes, DrainN, Round, Load) ->
    [A, B, C] = Nodes,
    start_pools(Nodes),
    Total = DrainN * length(Nodes),
    par([{Nd, ?MODULE, spawn_keys, [?POOL, 100 + I, Total]} || {I, Nd} <- idx(Nodes)]),
    [ok = erpc:call(Nd, ?MODULE, wait_count, [?POOL, Total, 300000]) || Nd <- Nodes],
    OnC = erpc:call(A, shoal, count, [?POOL, C]),
    Self = self(),
    Callers = [spawn_link(Nd, ?MODULE, caller, [Self, ?POOL, Total, 100 * Round + I])
               || Load, {I, Nd} <- idx([A, B])],
    Sampler = spawn_link(fun() -> sampler(Self, Nodes, erlang:monotonic_time(millisecond), []) end),
    timer:sleep(500),
    T0 = erlang:monotonic_time(millisecond),
    DrainT = timed(fun() -> ok = erpc:call(A, shoal, drain, [?POOL, C], infinity) end),
    timer:sleep(500),
    Sampler ! {stop, self()},
    Timeline = receive {samples, Sampler, S} -> [{T - T0, Nd, Cn} || {T, Nd, Cn} <- S] end,
    [P ! stop || P <- Callers],
    Res = [receive {calls, P, Ok, Failed} -> {Ok, Failed} end || P <- Callers],
    Left = erpc:call(A, shoal, count, [?POOL, C]),
    stop_pools(Nodes),
    #{on_drained => OnC, secs => DrainT, left => Left,
      ok => lists:sum([O || {O, _} <- Res]), failed => lists:sum([F || {_, F} <- Res]),
      timeline => Timeline, drained => C}.

%% Every node's own count of the pool, every 50 ms, until told to stop.
sampler(Parent, Nodes, T, Acc) ->
    Now = erlang:monotonic_time(millisecond),
    S = [{Now, Nd, catch erpc:call(Nd, shoal, count, [?POOL, Nd], 5000)} || Nd <- Nodes],
    receive {stop, Parent} -> Parent ! {samples, self(), lists:reverse(S ++ Acc)}
    after max(0, T + 50 - erlang:monotonic_time(millisecond)) ->
            sampler(Parent, Nodes, T + 50, lists:reverse(S) ++ Acc)
    end.

replica_bytes(Nodes, M) ->
    [A, B, C] = Nodes,
    start_pools(Nodes),
    [ok = erpc:call(A, shoal, set_target, [?POOL, Nd, #{high => 0}]) || Nd <- [B, C]],
    timer:sleep(200),
    Before = erpc:call(B, ?MODULE, mem_total, []),
    [ok = erpc:call(A, ?MODULE, spawn_keys, [?POOL, I, M]) || I <- [0, 1, 2]],
    ok = erpc:call(B, ?MODULE, wait_count, [?POOL, M, 300000]),
    After = erpc:call(B, ?MODULE, mem_total, []),
    stop_pools(Nodes),
    (After - Before) / M.

%%% Tables (printed, and written to cluster.md) ----------------------------------------------

print_registrations(Reg, Ratios, Rounds) ->
    io:format("### Cluster-wide registrations per second~n~n~ts", [reg_table(Reg, Ratios, Rounds)]).

reg_table(Reg, {PgRatio, GlobalRatio}, Rounds) ->
    [io_lib:format("~b rounds, the sides in alternating order; per second: median (min–max); "
                   "ratios per round. Data: `cluster_registrations.csv`.~n~n"
                   "| what | registrations | per second |~n|---|---:|---:|~n", [Rounds]),
     [io_lib:format("| ~ts | ~b | ~ts (~ts–~ts) |~n",
                    [W, K, fmt(maps:get(med, R)), fmt(maps:get(min, R)), fmt(maps:get(max, R))])
      || {W, K, R} <- Reg],
     io_lib:format("~nshoal / pg: **~ts**; shoal / global: **~ts** (targets: > 1x, >= 50x)~n~n",
                   [ratio(PgRatio, 2), ratio(GlobalRatio, 1)])].

call_table(Gen, Sh, Ratio, Calls) ->
    io_lib:format("7 rounds of ~b calls, the sides in alternating order: ns per call, median "
                  "(min–max); the ratio per round. Data: `cluster_call.csv`.~n~n"
                  "| what | ns per call |~n|---|---:|~n"
                  "| gen_server:call/2, remote pid in hand | ~ts |~n"
                  "| shoal:call/3 by key | ~ts |~n~nratio shoal / gen_server: **~ts** (target <= 1.1x)~n~n",
                  [Calls, ns(Gen), ns(Sh), ratio(Ratio, 3)]).

drain_table(Drains) ->
    Secs = spread([maps:get(secs, D) || D <- Drains]),
    [io_lib:format("~b rounds, each from a fresh pool: clients on two nodes call random keys while "
                   "the third node is drained. Counts over time (every node's own count, every "
                   "50 ms) in `drain.png`; data: `cluster_drain.csv`, `cluster_drain_timeline.csv`."
                   "~n~n| round | workers on the drained node | seconds to empty | left | "
                   "calls answered meanwhile | calls failed |~n|---|---:|---:|---:|---:|---:|~n",
                   [length(Drains)]),
     [io_lib:format("| ~b | ~b | ~.2f | ~b | ~b | ~b |~n",
                    [I, On, S, L, Ok, F])
      || {I, #{on_drained := On, secs := S, left := L, ok := Ok, failed := F}}
             <- lists:zip(lists:seq(1, length(Drains)), Drains)],
     io_lib:format("~nseconds to empty: ~.2f (~.2f–~.2f); failed calls in all rounds: ~b. "
                   "Targets: under 10 s, zero failed calls.~n~n",
                   [maps:get(med, Secs), maps:get(min, Secs), maps:get(max, Secs),
                    lists:sum([maps:get(failed, D) || D <- Drains])])].

idle_table(Idle) ->
    Secs = spread([maps:get(secs, D) || D <- Idle]),
    [io_lib:format("~b rounds, each from a fresh pool, as above but with no clients. Data: "
                   "`cluster_drain_idle.csv`.~n~n| round | workers on the drained node | "
                   "seconds to empty | left |~n|---|---:|---:|---:|~n", [length(Idle)]),
     [io_lib:format("| ~b | ~b | ~.2f | ~b |~n", [I, On, S, L])
      || {I, #{on_drained := On, secs := S, left := L}} <- lists:zip(lists:seq(1, length(Idle)), Idle)],
     io_lib:format("~nseconds to empty: ~.2f (~.2f–~.2f)~n~n",
                   [maps:get(med, Secs), maps:get(min, Secs), maps:get(max, Secs)])].

mem_table(Mem, M) ->
    io_lib:format("`erlang:memory(total)` growth on a node holding only replicas of ~b workers, "
                  "per worker entry: **~b** bytes, median of ~b rounds (~b–~b).~n~n",
                  [M, round(maps:get(med, Mem)), maps:get(n, Mem), round(maps:get(min, Mem)),
                   round(maps:get(max, Mem))]).

ns(#{med := M, min := Lo, max := Hi}) ->
    io_lib:format("~b (~b–~b)", [round(M), round(Lo), round(Hi)]).

ratio(#{med := M, min := Lo, max := Hi}, D) ->
    F = "~." ++ integer_to_list(D) ++ "f",
    io_lib:format(F ++ "x (" ++ F ++ "–" ++ F ++ ")", [M, Lo, Hi]).

spread(L) -> #{med => median(L), min => lists:min(L), max => lists:max(L), n => length(L)}.

%%% On the peers ----------------------------------------------------------------------------

%% Spawn the keys of this node's share (every Nth starting at I) from 4 local processes.
spawn_keys(Pool, I, N) ->
    Keys = [{k, K} || K <- lists:seq(I rem 3 + 1, N, 3)],
    Parts = split(Keys, 4),
    Self = self(),
    Ps = [spawn_link(fun() -> [shoal:ensure_started_async(Pool, K) || K <- Part], Self ! {done, self()} end)
          || Part <- Parts],
    [receive {done, P} -> ok end || P <- Ps],
    ok.

wait_count(Pool, N, Timeout) ->
    wait_until(fun() -> shoal:count(Pool) >= N end, Timeout).

pg_joins(Scope, I, N, Nodes) ->
    Keys = lists:seq(I rem Nodes + 1, N, Nodes),
    [begin P = spawn(?MODULE, idle_proc, []), ok = pg:join(Scope, {k, K}, P) end || K <- Keys],
    wait_until(fun() -> length(pg:which_groups(Scope)) >= N end, 300000).

global_regs(Round, I, N, Nodes) ->
    Keys = lists:seq(I rem Nodes + 1, N, Nodes),
    [begin P = spawn(?MODULE, idle_proc, []), yes = global:register_name({bench, Round, K}, P) end
     || K <- Keys],
    ok.

idle_proc() -> receive stop -> ok end.

%% Ends this node's idle processes (their pg groups and global names go with them).
kill_idle() ->
    Ps = [P || P <- processes(),
               erlang:process_info(P, initial_call) =:= {initial_call, {?MODULE, idle_proc, 0}}],
    Refs = [erlang:monitor(process, P) || P <- Ps],
    [exit(P, kill) || P <- Ps],
    [receive {'DOWN', R, process, _, _} -> ok end || R <- Refs],
    ok.

call_loop(gen, Pid, _Key, N) ->
    T0 = erlang:monotonic_time(nanosecond),
    [pong = gen_server:call(Pid, ping) || _ <- lists:seq(1, N)],
    (erlang:monotonic_time(nanosecond) - T0) / N;
call_loop(shoal, _Pid, Key, N) ->
    T0 = erlang:monotonic_time(nanosecond),
    [pong = shoal:call(?POOL, Key, ping) || _ <- lists:seq(1, N)],
    (erlang:monotonic_time(nanosecond) - T0) / N.

%% Call random existing keys until told to stop; report answered and failed calls.
caller(Parent, Pool, Total, Seed) ->
    rand:seed(exsss, {Seed, Seed, Seed}),
    caller_loop(Parent, Pool, Total, 0, 0).

caller_loop(Parent, Pool, Total, Ok, Failed) ->
    receive stop -> Parent ! {calls, self(), Ok, Failed}
    after 0 ->
            K = {k, rand:uniform(Total)},
            case catch shoal:call(Pool, K, ping) of
                pong -> caller_loop(Parent, Pool, Total, Ok + 1, Failed);
                _ -> caller_loop(Parent, Pool, Total, Ok, Failed + 1)
            end
    end.

mem_total() ->
    [garbage_collect(P) || P <- processes()],
    timer:sleep(100),
    erlang:memory(total).

%%% Controller helpers ----------------------------------------------------------------------

start_peers() ->
    Paths = lists:append([["-pa", D] || D <- [filename:dirname(code:which(shoal)),
                                              filename:dirname(code:which(?MODULE))]]),
    Cookie = atom_to_list(erlang:get_cookie()),
    [begin
         {ok, _P, Node} = peer:start_link(#{name => list_to_atom("bench_n" ++ integer_to_list(I)),
                                            args => ["-setcookie", Cookie, "+P", "4000000" | Paths]}),
         Node
     end || I <- [1, 2, 3]].

start_pools(Nodes) ->
    [pong = erpc:call(X, net_adm, ping, [Y]) || X <- Nodes, Y <- Nodes],
    [{ok, _} = erpc:call(Nd, shoal, start_pool, [?POOL, #{worker => ?MODULE, handoff_grace => 2000}])
     || Nd <- Nodes],
    ok = wait_until(fun() -> lists:all(fun(Nd) -> length(erpc:call(Nd, shoal, nodes, [?POOL])) =:= 3 end,
                                       Nodes) end, 10000),
    ok.

stop_pools(Nodes) ->
    [ok = erpc:call(Nd, shoal, stop_pool, [?POOL], infinity) || Nd <- Nodes],
    [erpc:call(Nd, erlang, garbage_collect, []) || Nd <- Nodes],
    ok.

%% A key whose worker the home/placement puts on Node: ask until one lands there.
key_on(Node, From) -> key_on(Node, From, 1).
key_on(Node, From, I) ->
    {ok, P} = erpc:call(From, shoal, ensure_started, [?POOL, {probe, I}]),
    case node(P) of
        Node -> {probe, I};
        _ -> key_on(Node, From, I + 1)
    end.

par(Calls) ->
    Self = self(),
    Ps = [spawn_link(fun() -> Self ! {par, self(), erpc:call(Nd, M, F, A, infinity)} end)
          || {Nd, M, F, A} <- Calls],
    [receive {par, P, R} -> R end || P <- Ps].

timed(F) ->
    T0 = erlang:monotonic_time(microsecond),
    F(),
    (erlang:monotonic_time(microsecond) - T0) / 1.0e6.

wait_until(F, Timeout) ->
    Deadline = erlang:monotonic_time(millisecond) + Timeout,
    wait_until1(F, Deadline).
wait_until1(F, Deadline) ->
    case F() of
        true -> ok;
        false ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true -> timeout;
                false -> timer:sleep(5), wait_until1(F, Deadline)
            end
    end.

idx(L) -> lists:zip(lists:seq(1, length(L)), L).

split(L, N) ->
    {_, M} = lists:foldl(fun(X, {I, Acc}) -> {(I + 1) rem N, maps:update_with(I, fun(V) -> [X | V] end, [X], Acc)} end,
                         {0, #{}}, L),
    maps:values(M).

median(L) -> lists:nth((length(L) + 1) div 2, lists:sort(L)).

fmt(R) when R >= 1000 -> io_lib:format("~.1f k", [R / 1000]);
fmt(R) -> integer_to_list(round(R)).

env_int(Name, Default) ->
    case os:getenv(Name) of
        false -> Default;
        V -> list_to_integer(V)
    end.

write_results(Dir, Reg, RegRatios, Rounds, {Gen, Sh, CallRatio, Calls}, {Drains, Idle}, {Mem, M}) ->
    Text = ["# Cluster benchmark (three local nodes, one 2-core machine)\n\n"
            "Produced by `make bench` (bench/shoal_cluster_bench.erl). Every figure is taken "
            "over rounds and given as the median with its range (min–max). Load average at "
            "the end: ", loadavg(), ".\n\n"
            "## Cluster-wide registrations per second\n\n", reg_table(Reg, RegRatios, Rounds),
            "## Cross-node call\n\n", call_table(Gen, Sh, CallRatio, Calls),
            "## Drain under call load\n\n", drain_table(Drains),
            "## Drain with no load\n\n", idle_table(Idle),
            "## Replica memory\n\n", mem_table(Mem, M)],
    ok = filelib:ensure_dir(filename:join(Dir, "x")),
    ok = file:write_file(filename:join(Dir, "cluster.md"), unicode:characters_to_binary(Text)),
    Csv = fun(Name, Rows) ->
                  ok = file:write_file(filename:join(Dir, Name),
                                       [[lists:join($,, [col(C) || C <- Row]), $\n] || Row <- Rows])
          end,
    Csv("cluster_registrations.csv",
        [["side", "registrations", "per_s_median", "per_s_min", "per_s_max"]
         | [[W, K, maps:get(med, R), maps:get(min, R), maps:get(max, R)] || {W, K, R} <- Reg]]),
    Csv("cluster_call.csv",
        [["side", "ns_median", "ns_min", "ns_max"],
         ["gen_server_call", maps:get(med, Gen), maps:get(min, Gen), maps:get(max, Gen)],
         ["shoal_call", maps:get(med, Sh), maps:get(min, Sh), maps:get(max, Sh)]]),
    Csv("cluster_drain.csv",
        [["round", "workers_on_drained_node", "seconds_to_empty", "left", "calls_ok", "calls_failed"]
         | [[I, On, S, L, Ok, F]
            || {I, #{on_drained := On, secs := S, left := L, ok := Ok, failed := F}}
                   <- lists:zip(lists:seq(1, length(Drains)), Drains)]]),
    Csv("cluster_drain_idle.csv",
        [["round", "workers_on_drained_node", "seconds_to_empty", "left"]
         | [[I, On, S, L] || {I, #{on_drained := On, secs := S, left := L}}
                                <- lists:zip(lists:seq(1, length(Idle)), Idle)]]),
    %% Grouped by round and node, in time order: one line per node in the plot. Nodes are
    %% named by role: the drained one, and the two others.
    Csv("cluster_drain_timeline.csv",
        [["round", "t_ms", "node", "count"]
         | [[I, T, role(Nd, Drained, Nodes), Cn]
            || {I, #{timeline := Tl, drained := Drained}} <- lists:zip(lists:seq(1, length(Drains)), Drains),
               Nodes <- [lists:usort([Nd || {_, Nd, _} <- Tl])],
               Nd0 <- Nodes, {T, Nd, Cn} <- Tl, Nd =:= Nd0, is_integer(Cn)]]),
    ok.

loadavg() ->
    case file:read_file("/proc/loadavg") of
        {ok, B} -> lists:join(" / ", lists:sublist(string:lexemes(binary_to_list(B), " "), 3));
        _ -> "?"
    end.

role(Nd, Nd, _) -> "drained";
role(Nd, Drained, Nodes) ->
    "other_" ++ integer_to_list(length(lists:takewhile(fun(X) -> X =/= Nd end, Nodes -- [Drained])) + 1).

col(F) when is_float(F) -> float_to_list(F, [{decimals, 3}]);
col(I) when is_integer(I) -> integer_to_list(I);
col(S) -> [$", S, $"].
