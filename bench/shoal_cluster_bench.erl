%% shoal_cluster_bench: cluster-wide pools on three local nodes against what a user would
%% pick instead, in one run.
%%
%%   1. cluster-wide registrations per second: shoal workers spawned from all three nodes
%%      (done when every node counts them all) vs pg:join (done when every node sees every
%%      group) vs global:register_name, each registering a fresh process per key.
%%   2. a cross-node shoal:call/3 by key vs gen_server:call/2 on the remote pid in hand.
%%   3. draining a node that holds ?DRAIN_N workers while clients call keys all over the
%%      cluster: time until it is empty, calls failed meanwhile.
%%   4. replica memory per worker entry, on a node that holds only replicas.
%%
%% The three nodes are OTP peers of this (controller) node, which is connected to them but
%% is not a pool member. scripts/bench.sh runs it after the single-node bench;
%% SHOAL_CLUSTER_N scales part 1 (default 150000), SHOAL_DRAIN_N part 3 (default 100000).
-module(shoal_cluster_bench).

-export([main/0]).
%% shoal_worker, run on the peers
-export([init/2, handle_call/3, handle_cast/2]).
%% helpers run on the peers
-export([spawn_keys/3, pg_joins/3, global_regs/3, wait_count/3, call_loop/4, caller/4,
         mem_total/0, idle_proc/0]).

-define(POOL, bench_cluster).
-define(SCOPE, bench_pg).

init(_Key, _Args) -> {ok, 0}.
handle_call(ping, _From, N) -> {reply, pong, N + 1};
handle_call(_, _From, N) -> {reply, N, N}.
handle_cast(_, N) -> {noreply, N + 1}.

main() ->
    N = env_int("SHOAL_CLUSTER_N", 150000),
    DrainN = env_int("SHOAL_DRAIN_N", 100000),
    GlobalN = max(300, min(N, 3000)),
    Nodes = start_peers(),
    [A, B, C] = Nodes,
    io:format("~n## Cluster: three local nodes (~s)~n~n", [lists:join(", ", [atom_to_list(X) || X <- Nodes])]),
    start_pools(Nodes),

    %% 1. registrations
    ShoalT = timed(fun() -> par([{Nd, ?MODULE, spawn_keys, [?POOL, I, N]} || {I, Nd} <- idx(Nodes)]),
                            [ok = erpc:call(Nd, ?MODULE, wait_count, [?POOL, N, 300000]) || Nd <- Nodes]
                   end),
    stop_pools(Nodes),
    PgT = timed(fun() -> par([{Nd, ?MODULE, pg_joins, [I, N, length(Nodes)]} || {I, Nd} <- idx(Nodes)]) end),
    GlobalT = timed(fun() -> par([{Nd, ?MODULE, global_regs, [I, GlobalN, length(Nodes)]}
                                  || {I, Nd} <- idx(Nodes)]) end),
    ShoalR = N / ShoalT, PgR = N / PgT, GlobalR = GlobalN / GlobalT,
    Reg = [{"shoal workers (spawn + cluster-wide registration)", N, ShoalT, ShoalR},
           {"pg:join (spawn + join, seen on every node)", N, PgT, PgR},
           {"global:register_name (spawn + register)", GlobalN, GlobalT, GlobalR}],
    io:format("### Cluster-wide registrations per second~n~n"
              "| what | registrations | seconds | per second |~n|---|---|---|---|~n"),
    [io:format("| ~s | ~b | ~.2f | ~s |~n", [W, K, T, fmt(R)]) || {W, K, T, R} <- Reg],
    io:format("~nshoal / pg: **~.2fx**; shoal / global: **~.1fx** (targets: > 1x, >= 50x)~n~n",
              [ShoalR / PgR, ShoalR / GlobalR]),

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
    GMed = median([G || {G, _} <- Runs]), SMed = median([S || {_, S} <- Runs]),
    io:format("### Cross-node call (caller on ~s, worker on ~s)~n~n"
              "| what | ns per call (median of 7 x ~b) |~n|---|---|~n"
              "| gen_server:call/2, remote pid in hand | ~b |~n"
              "| shoal:call/3 by key | ~b |~n~nratio shoal / gen_server: **~.3fx** (target <= 1.1x)~n~n",
              [A, B, Calls, round(GMed), round(SMed), SMed / GMed]),

    %% 3. drain a node holding DrainN workers
    Total = DrainN * length(Nodes),
    par([{Nd, ?MODULE, spawn_keys, [?POOL, 100 + I, Total]} || {I, Nd} <- idx(Nodes)]),
    [ok = erpc:call(Nd, ?MODULE, wait_count, [?POOL, Total + 1, 300000]) || Nd <- Nodes],
    OnC = erpc:call(A, shoal, count, [?POOL, C]),
    Self = self(),
    Callers = [spawn_link(Nd, ?MODULE, caller, [Self, ?POOL, Total, 100 + I])
               || {I, Nd} <- idx([A, B])],
    timer:sleep(500),
    DrainT = timed(fun() -> ok = erpc:call(A, shoal, drain, [?POOL, C], infinity) end),
    [P ! stop || P <- Callers],
    Res = [receive {calls, P, Ok, Failed} -> {Ok, Failed} end || P <- Callers],
    Ok = lists:sum([O || {O, _} <- Res]), Failed = lists:sum([F || {_, F} <- Res]),
    Left = erpc:call(A, shoal, count, [?POOL, C]),
    io:format("### Draining a node under call load~n~n"
              "| workers on the drained node | seconds to empty | left | calls answered meanwhile | calls failed |~n"
              "|---|---|---|---|---|~n| ~b | ~.2f | ~b | ~b | ~b |~n~n"
              "targets: under 10 s, zero failed calls~n~n", [OnC, DrainT, Left, Ok, Failed]),
    stop_pools(Nodes),

    %% 4. replica memory: workers only on A, measured on B
    start_pools(Nodes),
    [ok = erpc:call(A, shoal, set_target, [?POOL, Nd, #{high => 0}]) || Nd <- [B, C]],
    timer:sleep(200),
    M = DrainN,
    Before = erpc:call(B, ?MODULE, mem_total, []),
    [ok = erpc:call(A, ?MODULE, spawn_keys, [?POOL, I, M]) || I <- [0, 1, 2]],
    ok = erpc:call(B, ?MODULE, wait_count, [?POOL, M, 300000]),
    After = erpc:call(B, ?MODULE, mem_total, []),
    PerEntry = (After - Before) / M,
    Info = erpc:call(B, shoal_nif, info, [element(3, erpc:call(B, shoal, cfg, [?POOL]))]),
    io:format("### Replica memory~n~n| what | bytes per worker |~n|---|---|~n"
              "| erlang:memory(total) growth on a node holding only replicas | ~b |~n~n"
              "(~b replicas; the table itself: ~p bytes)~n~n",
              [round(PerEntry), M, maps:get(table_bytes, Info)]),
    stop_pools(Nodes),
    write_results(Reg, ShoalR / PgR, ShoalR / GlobalR, GMed, SMed, {OnC, DrainT, Left, Ok, Failed},
                  PerEntry),
    ok.

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

pg_joins(I, N, Nodes) ->
    Keys = lists:seq(I rem Nodes + 1, N, Nodes),
    [begin P = spawn(?MODULE, idle_proc, []), ok = pg:join(?SCOPE, {k, K}, P) end || K <- Keys],
    wait_until(fun() -> length(pg:which_groups(?SCOPE)) >= N end, 300000).

global_regs(I, N, Nodes) ->
    Keys = lists:seq(I rem Nodes + 1, N, Nodes),
    [begin P = spawn(?MODULE, idle_proc, []), yes = global:register_name({bench, K}, P) end
     || K <- Keys],
    ok.

idle_proc() -> receive stop -> ok end.

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
    [erpc:call(Nd, pg, start, [?SCOPE]) || Nd <- Nodes],
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

write_results(Reg, PgRatio, GlobalRatio, GMed, SMed, {OnC, DrainT, Left, Ok, Failed}, PerEntry) ->
    Text = [io_lib:format("# Cluster benchmark (three local nodes, one 2-core machine)~n~n"
                          "Produced by `make bench` (bench/shoal_cluster_bench.erl).~n~n"
                          "## Cluster-wide registrations per second~n~n"
                          "| what | registrations | seconds | per second |~n|---|---|---|---|~n", []),
            [io_lib:format("| ~s | ~b | ~.2f | ~s |~n", [W, K, T, fmt(R)]) || {W, K, T, R} <- Reg],
            io_lib:format("~nshoal / pg: **~.2fx**; shoal / global: **~.1fx** (targets: > 1x, >= 50x)~n~n"
                          "## Cross-node call~n~n| what | ns per call |~n|---|---|~n"
                          "| gen_server:call/2, remote pid in hand | ~b |~n| shoal:call/3 by key | ~b |~n~n"
                          "ratio: **~.3fx** (target <= 1.1x)~n~n"
                          "## Drain under call load~n~n"
                          "| workers on the drained node | seconds to empty | left | calls answered | calls failed |~n"
                          "|---|---|---|---|---|~n| ~b | ~.2f | ~b | ~b | ~b |~n~n"
                          "## Replica memory~n~n~b bytes per worker entry on a node holding only replicas.~n",
                          [PgRatio, GlobalRatio, round(GMed), round(SMed), SMed / GMed,
                           OnC, DrainT, Left, Ok, Failed, round(PerEntry)])],
    ok = file:write_file("bench/results/cluster.md", Text).
