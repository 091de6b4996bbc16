%% shoal_member_bench: what the member protocol costs, on three local peer nodes, through the
%% public API only (so the same module measures an older Shoal too: `make bench-member'
%% runs it against this checkout; run it with another checkout's ebin on the path to compare):
%%
%%   1. synchronous cluster-wide spawns: ensure_started/2 of fresh keys from 12 callers (4 on
%%      each node), until every one returned; beside it, in the same rounds, pg:join of a fresh
%%      process per key from the same 12 callers (what a user would pick for a cluster-wide
%%      group of processes; it does not arbitrate anything), the same pg:join made after
%%      one gen_server:call round trip to the key's home (what asking a home costs alone),
%%      and a process spawned and joined on the key's home by a server there, asked in one
%%      gen_server:call (what asking a home that also places the process costs: Shoal's
%%      default placement puts a key's worker on its home);
%%      then all four again with 48 callers (16 on each node), since a caller that waits for
%%      its spawn makes the rate follow the number of callers;
%%   2. the latency of one spawn whose home is another node, one caller at a time, against a
%%      gen_server:call round trip from the same node to a server on that node;
%%   3. whereis/2 on a member of a key whose worker is on another node against a key whose
%%      worker is local (100 k workers spread over the three nodes; as many distinct keys on
%%      each side), with ets:lookup/2 of the remote keys in a table of {Key, Pid} beside them.
%%
%% Each part runs its sides in alternating order over SHOAL_MEMBER_ROUNDS rounds (default 5)
%% and reports medians with min..max. SHOAL_MEMBER_N scales part 1 (default 60000 keys a
%% round). Results: $SHOAL_BENCH_RESULTS/member.md (default bench/results, or
%% build/bench/scratch when either knob is set).
-module(shoal_member_bench).

-export([main/0]).
%% shoal_worker, run on the peers
-export([init/2, handle_call/3, handle_cast/2]).
%% run on the peers
-export([sync_spawns/3, sync_spawns/4, pg_spawns/4, pg_spawns/5, pg_spawns/6, start_echo/0, stop_echo/0, pg_stop/1, spawn_latency/4, lookups/3, lookups/4, echo/0, idle/0]).
-export([syn_spawns/4, syn_stop/0, syn_register_local/3, idle_syn/0]).

-define(POOL, bench_member).
-define(ECHO, bench_member_echo).

init(_Key, _Args) -> {ok, 0}.
handle_call(_, _From, N) -> {reply, N, N}.
handle_cast(_, N) -> {noreply, N}.

main() ->
    ok = io:setopts(standard_io, [{encoding, unicode}]),
    N = env_int("SHOAL_MEMBER_N", 60000),
    Rounds = env_int("SHOAL_MEMBER_ROUNDS", 5),
    %% A reduced run (either knob set) never writes over the committed results.
    Reduced = os:getenv("SHOAL_MEMBER_N") =/= false orelse os:getenv("SHOAL_MEMBER_ROUNDS") =/= false,
    Dir = case {os:getenv("SHOAL_BENCH_RESULTS"), Reduced} of
              {false, false} -> "bench/results";
              {false, true} -> "build/bench/scratch";
              {D, _} -> D
          end,
    Syn = syn_ebin(),
    Nodes = start_peers(Syn),
    [A | _] = Nodes,
    SynVsn = case Syn of
                 false -> none;
                 _ -> {ok, SV} = erpc:call(A, application, get_key, [syn, vsn]), SV
             end,
    Vsn = erpc:call(A, application, get_key, [shoal, vsn]),
    Commit = string:trim(os:cmd("git rev-parse --short HEAD 2>/dev/null")),
    io:format("~n## The member protocol: three local nodes~n~n"),

    %% 1. synchronous spawns against pg:join, alternating
    %% (each caller waits for its spawn, so the rate follows the number of callers: the
    %% same with 16 callers a node shows how far)
    {ShoalRate, PgRate, SyncRatio, HomeRate, HomeRatio, PlacedRate, PlacedRatio, Cpu, SynRes} =
        sync_rounds(Nodes, N, Rounds, 4, Syn =/= false),
    {ShoalRate16, PgRate16, SyncRatio16, HomeRate16, HomeRatio16, PlacedRate16, PlacedRatio16,
     Cpu16, SynRes16} = sync_rounds(Nodes, N, Rounds, 16, Syn =/= false),

    %% 2. latency of a spawn whose home is another node, against a call round trip
    start_pools(Nodes),
    Lat = [begin
               Sides = [spawn, call, spawned, call_one],
               Order = lists:sublist(Sides ++ Sides, R rem 4 + 1, 4),
               maps:from_list([{Side, erpc:call(A, ?MODULE, spawn_latency, [Side, ?POOL, R, 300], infinity)}
                               || Side <- Order])
           end || R <- lists:seq(1, Rounds)],
    SpawnUs = spread([maps:get(spawn, L) || L <- Lat]),
    CallUs = spread([maps:get(call, L) || L <- Lat]),
    SpawnedUs = spread([maps:get(spawned, L) || L <- Lat]),
    OneUs = spread([maps:get(call_one, L) || L <- Lat]),
    OneRatio = spread([maps:get(spawn, L) / maps:get(call_one, L) || L <- Lat]),
    LatRatio = spread([maps:get(spawn, L) / maps:get(call, L) || L <- Lat]),
    SpawnedRatio = spread([maps:get(spawn, L) / maps:get(spawned, L) || L <- Lat]),
    stop_pools(Nodes),

    %% 3. whereis of remote and local keys, with ets:lookup beside them
    start_pools(Nodes),
    Keys = 100000,
    ok = erpc:call(A, ?MODULE, sync_spawns, [?POOL, {w, 0}, Keys], infinity),
    ok = wait_counts(Nodes, Keys),
    SynScope = case Syn of
                   false -> none;
                   _ -> Sc = bench_member_syn_lookups,
                        [ok = erpc:call(Nd, syn, add_node_to_scopes, [[Sc]]) || Nd <- Nodes],
                        _ = par([{Nd, ?MODULE, syn_register_local, [?POOL, Sc, Keys]} || Nd <- Nodes]),
                        ok = wait_until(fun() -> erpc:call(A, syn, registry_count, [Sc]) >= Keys end, 120000),
                        Sc
               end,
    Look = [erpc:call(A, ?MODULE, lookups, [?POOL, Keys, R, SynScope], infinity) || R <- lists:seq(1, Rounds)],
    Local = spread([maps:get(local, L) || L <- Look]),
    Remote = spread([maps:get(remote, L) || L <- Look]),
    Ets = spread([maps:get(ets, L) || L <- Look]),
    LookRatio = spread([maps:get(remote, L) / maps:get(local, L) || L <- Look]),
    stop_pools(Nodes),

    Md = [io_lib:format("Shoal ~ts (commit ~ts), ~b rounds, sides in alternating order: median "
                        "(min–max).~ts~n~n",
                        [element(2, Vsn), Commit, Rounds,
                         case peer_args() of
                             [] -> "";
                             Args -> [" The three nodes ran with `", lists:join(" ", Args),
                                      "` (`SHOAL_BENCH_PEER_ARGS`)."]
                         end]),
          "### Synchronous cluster-wide spawns\n\n",
          io_lib:format("`ensure_started/2` of ~b fresh keys a round from 12 callers (4 on each "
                        "node), until all returned, against `pg:join/3` of a fresh process per "
                        "key from the same 12 callers, against the same `pg:join/3` made "
                        "after one `gen_server:call/2` round trip to an echo server on the "
                        "key's home (Shoal's home for the key, another node for two keys in "
                        "three): what any registry that asks a key's home before it answers "
                        "pays, and nothing more; and against a process that the server on the "
                        "key's home spawns there and joins, in the same call: what a registry "
                        "that also places the process on the key's home pays (Shoal's default "
                        "placement puts a key's worker on its home).~n~n"
                        "| what | per second | CPU µs per key (three nodes) |~n|---|---:|---:|~n"
                        "| shoal:ensure_started/2 | ~ts | ~ts |~n| pg:join/3 (spawn + join) | ~ts | ~ts |~n"
                        "| pg:join/3 after a round trip to the key's home | ~ts | ~ts |~n"
                        "| spawned and pg:join/3ed on the key's home, in a round trip | ~ts | ~ts |~n~ts~n"
                        "~tsshoal / pg: **~ts**~ts; shoal / (pg after a round trip "
                        "to the home): **~ts**; shoal / (placed on the home in a round trip): "
                        "**~ts**. Every side kept ~ts of the machine's two cores "
                        "busy, so a rate here is the inverse of its CPU per key: the round trip "
                        "to the home is what costs (the third row against the second), more so "
                        "when the process is spawned at the far end (the fourth row).~n~n"
                        "pg arbitrates nothing (every node may join "
                        "any number of processes to a group) and replicates asynchronously; "
                        "~ts"
                        "Shoal's strict arbitration asks the key's home before it "
                        "answers; the third row shows what that round trip alone costs on "
                        "this machine, where three nodes share two cores and a caller that "
                        "waits for another node leaves its schedulers spinning and waking.~n~n"
                        "Each caller waits for its own spawn (a round trip to the key's home "
                        "for two keys in three), so the rate follows the number of callers. "
                        "The same with 48 callers (16 on each node):~n~n"
                        "| what | per second | CPU µs per key (three nodes) |~n|---|---:|---:|~n"
                        "| shoal:ensure_started/2 | ~ts | ~ts |~n| pg:join/3 (spawn + join) | ~ts | ~ts |~n"
                        "| pg:join/3 after a round trip to the key's home | ~ts | ~ts |~n"
                        "| spawned and pg:join/3ed on the key's home, in a round trip | ~ts | ~ts |~n~ts~n"
                        "~tsshoal / pg: **~ts**; shoal / (pg after a round trip to the home): "
                        "**~ts**; shoal / (placed on the home in a round trip): **~ts**.~n~n",
                        [N, rate(ShoalRate), us(maps:get(shoal, Cpu)), rate(PgRate),
                         us(maps:get(pg, Cpu)), rate(HomeRate), us(maps:get(pg_home, Cpu)),
                         rate(PlacedRate), us(maps:get(pg_placed, Cpu)),
                         syn_row(SynRes, Cpu), syn_ratio(SynRes, " (target: 0.5x)"), x(SyncRatio),
                         case SynRes of none -> " (target: 0.5x syn)"; _ -> "" end,
                         x(HomeRatio), x(PlacedRatio), cores(maps:get(cores, Cpu)),
                         syn_para(SynVsn),
                         rate(ShoalRate16), us(maps:get(shoal, Cpu16)), rate(PgRate16),
                         us(maps:get(pg, Cpu16)), rate(HomeRate16), us(maps:get(pg_home, Cpu16)),
                         rate(PlacedRate16), us(maps:get(pg_placed, Cpu16)),
                         syn_row(SynRes16, Cpu16), syn_ratio(SynRes16, ""),
                         x(SyncRatio16), x(HomeRatio16), x(PlacedRatio16)]),
          "### One spawn whose home is another node\n\n",
          io_lib:format("A single caller on the first node, 300 fresh keys a round whose home "
                        "is another member, one at a time (their homes alternate between the "
                        "two other nodes at random); against `gen_server:call/2` from the same "
                        "node to an echo server on the home of each of the same keys, in the "
                        "same order (the round trip to the key's home the spawn is held to), and "
                        "against the same calls answered by a process that the server spawns "
                        "for each: what a registry that starts the process on the key's home "
                        "and answers from it pays, and nothing more. The last row calls a "
                        "server on one other node every time, as this bench did before: a node "
                        "that was just used answers faster than one that has been idle.~n~n"
                        "| what | µs |~n|---|---:|~n| ensure_started/2 | ~ts |~n"
                        "| gen_server:call/2 round trip to the key's home | ~ts |~n"
                        "| the same, answered by a process spawned for it | ~ts |~n"
                        "| gen_server:call/2 round trip to one other node, every time | ~ts |~n~n"
                        "spawn / round trip to the key's home: **~ts** (target: within 2x); "
                        "spawn / (answered by a process spawned for it): **~ts**; spawn / "
                        "(round trip to one other node): **~ts**~n~n",
                        [us(SpawnUs), us(CallUs), us(SpawnedUs), us(OneUs), x(LatRatio),
                         x(SpawnedRatio), x(OneRatio)]),
          "### whereis/2 of a remote key and of a local one\n\n",
          io_lib:format("~b workers spread over the three nodes; on the first node, 200 000 "
                        "lookups in random order of keys whose worker is local, then of as many "
                        "distinct keys whose worker is on another node, and `ets:lookup/2` of "
                        "the remote keys in a table of `{Key, Pid}`.~n~n"
                        "| what | ns per lookup |~n|---|---:|~n| whereis, local worker | ~ts |~n"
                        "| whereis, remote worker | ~ts |~n| ets:lookup, the same keys | ~ts |~n~ts~n"
                        "remote / local: **~ts** (target: within 1.2x). A local pid is an "
                        "immediate term; a remote one is built on the caller's heap and "
                        "references its node's entry, whoever returns it: compare the remote "
                        "row with ets:lookup/2 of the same pids.~ts~n~n",
                        [Keys, ns(Local), ns(Remote), ns(Ets), syn_look_rows(Look),
                         x(LookRatio), syn_look_ratio(Look)])],
    io:format("~ts", [Md]),
    ok = filelib:ensure_dir(filename:join(Dir, "x")),
    ok = file:write_file(filename:join(Dir, "member.md"),
                         unicode:characters_to_binary(
                           ["# The member protocol on three local nodes\n\nProduced by "
                            "`make bench-member` (bench/shoal_member_bench.erl).\n\n" | Md])),
    ok.

%% Rounds of synchronous spawns from Per callers on each node, the sides in rotating order:
%% {Shoal, Pg, Shoal / Pg, Pg after a round trip to the home, Shoal / that, Pg placed on the
%% home in a round trip, Shoal / that, CPU per key of each side, and with syn on the path
%% {syn's rate, Shoal / syn} (else `none')}, each a spread over the rounds.
sync_rounds(Nodes, N, Rounds, Per, WithSyn) ->
    Sides = [shoal, pg, pg_home, pg_placed] ++ [syn || WithSyn],
    Len = length(Sides),
    Runs = [begin
                %% rotate the order of the sides from round to round
                Order = lists:sublist(Sides ++ Sides, R rem Len + 1, Len),
                maps:from_list([{Side, spawns(Side, Nodes, N, {Per, R}, Per)} || Side <- Order])
            end || R <- lists:seq(1, Rounds)],
    Sync = [maps:map(fun(_, {Rate, _Cpu, _Cores}) -> Rate end, Run) || Run <- Runs],
    Cpu = fun(Side) -> spread([element(2, maps:get(Side, Run)) || Run <- Runs]) end,
    Cores = spread([element(3, C) || Run <- Runs, C <- maps:values(Run)]),
    {spread([maps:get(shoal, S) || S <- Sync]), spread([maps:get(pg, S) || S <- Sync]),
     spread([maps:get(shoal, S) / maps:get(pg, S) || S <- Sync]),
     spread([maps:get(pg_home, S) || S <- Sync]),
     spread([maps:get(shoal, S) / maps:get(pg_home, S) || S <- Sync]),
     spread([maps:get(pg_placed, S) || S <- Sync]),
     spread([maps:get(shoal, S) / maps:get(pg_placed, S) || S <- Sync]),
     #{shoal => Cpu(shoal), pg => Cpu(pg), pg_home => Cpu(pg_home), pg_placed => Cpu(pg_placed),
       cores => Cores},
     case WithSyn of
         false -> none;
         true -> {spread([maps:get(syn, S) || S <- Sync]),
                  spread([maps:get(shoal, S) / maps:get(syn, S) || S <- Sync]), Cpu(syn)}
     end}.

%% One side's round of synchronous spawns: registrations per second.
spawns(shoal, Nodes, N, R, Per) ->
    start_pools(Nodes),
    Res = timed_cpu(Nodes, N, fun() -> par([{Nd, ?MODULE, sync_spawns, [?POOL, {s, R, I}, N div 3, Per]}
                                            || {I, Nd} <- idx(Nodes)]) end),
    stop_pools(Nodes),
    Res;
spawns(syn, Nodes, N, {Per, R}, Per) ->
    Scope = list_to_atom(lists:concat(["bench_member_syn_", Per, "_", R])),
    [ok = erpc:call(Nd, syn, add_node_to_scopes, [[Scope]]) || Nd <- Nodes],
    Res = timed_cpu(Nodes, N, fun() -> par([{Nd, ?MODULE, syn_spawns, [Scope, {y, Per, R, I}, N div 3, Per]}
                                            || {I, Nd} <- idx(Nodes)]) end),
    [erpc:call(Nd, ?MODULE, syn_stop, []) || Nd <- Nodes],
    %% syn drops the names of the dead asynchronously: the next side starts after that
    ok = wait_until(fun() -> lists:all(fun(Nd) -> erpc:call(Nd, syn, registry_count, [Scope]) =:= 0 end,
                                       Nodes) end, 120000),
    Res;
spawns(Side, Nodes, N, {Per, R}, Per) ->
    Scope = list_to_atom(lists:concat(["bench_member_", Side, "_", Per, "_", R])),
    [{ok, _} = erpc:call(Nd, pg, start, [Scope]) || Nd <- Nodes],
    {Home, Where} = case Side of
                        pg -> {none, here};
                        _ -> [erpc:call(Nd, ?MODULE, start_echo, []) || Nd <- Nodes],
                             {lists:sort(Nodes), case Side of pg_home -> here; pg_placed -> home end}
                    end,
    Res = timed_cpu(Nodes, N, fun() -> par([{Nd, ?MODULE, pg_spawns, [Scope, {p, Per, R, I}, N div 3, Per, Home, Where]}
                                            || {I, Nd} <- idx(Nodes)]) end),
    [erpc:call(Nd, ?MODULE, pg_stop, [Scope]) || Nd <- Nodes],
    Home =/= none andalso [erpc:call(Nd, ?MODULE, stop_echo, []) || Nd <- Nodes],
    Res.

%% Run F, which makes N registrations: {per second, microseconds of CPU (user + system, the
%% three peers together) per registration, cores the peers kept busy meanwhile}.
timed_cpu(Nodes, N, F) ->
    C0 = lists:sum([erpc:call(Nd, shoal_bench_cpu, ticks, []) || Nd <- Nodes]),
    T = timed(F),
    C1 = lists:sum([erpc:call(Nd, shoal_bench_cpu, ticks, []) || Nd <- Nodes]),
    CpuSecs = (C1 - C0) / 100,
    {N / T, CpuSecs * 1.0e6 / N, CpuSecs / T}.

%%% On the peers ---------------------------------------------------------------------------

%% ensure_started of N keys {Tag, J} from Per local processes.
sync_spawns(Pool, Tag, N) -> sync_spawns(Pool, Tag, N, 4).

sync_spawns(Pool, Tag, N, Per) ->
    par_local(Per, N, fun(J) -> {ok, _} = shoal:ensure_started(Pool, {Tag, J}) end).

%% A fresh process per key, joined to group {Tag, J} (this node's share). pg:join/3 returns
%% once the local scope has it; the other nodes learn it asynchronously. With Members (the
%% `pg_home' side), a key whose home among them (shoal_placement:home/2, as Shoal's) is
%% another node first costs a gen_server:call round trip to an echo server there: what any
%% registry that asks a key's home before it answers pays, and nothing else. With Where
%% `home' (the `pg_placed' side), the echo server on such a key's home spawns the process
%% there and joins it in the same call: what a registry that also places the process on the
%% key's home pays (Shoal's default placement).
pg_spawns(Scope, Tag, N, Per) -> pg_spawns(Scope, Tag, N, Per, none).

pg_spawns(Scope, Tag, N, Per, Members) -> pg_spawns(Scope, Tag, N, Per, Members, here).

pg_spawns(Scope, Tag, N, Per, Members, Where) ->
    par_local(Per, N, fun(J) ->
                              K = {Tag, J},
                              case ask_home(K, Members, Scope, Where) of
                                  here -> ok = pg:join(Scope, K, spawn(?MODULE, idle, []));
                                  placed -> ok
                              end
                      end).

ask_home(_K, none, _Scope, _Where) -> here;
ask_home(K, Members, Scope, Where) ->
    case shoal_placement:home(K, Members) of
        Home when Home =:= node() -> here;
        Home when Where =:= here -> pong = gen_server:call({?ECHO, Home}, ping), here;
        Home -> ok = gen_server:call({?ECHO, Home}, {place, Scope, K}), placed
    end.

%% A fresh process per key, registered under the key in syn's Scope from Per local
%% processes (this node's share). syn:register/3 returns once the local scope process has
%% it; the other nodes learn it asynchronously, as with pg.
syn_spawns(Scope, Tag, N, Per) ->
    par_local(Per, N, fun(J) -> ok = syn:register(Scope, {Tag, J}, spawn(?MODULE, idle_syn, [])) end).

idle_syn() -> receive stop -> ok end.

%% This node's processes of syn_spawns/4, gone (syn drops their names when they die).
syn_stop() ->
    [exit(P, kill) || P <- processes(),
                      erlang:process_info(P, initial_call) =:= {initial_call, {?MODULE, idle_syn, 0}}],
    ok.

%% Registers in syn's Scope this node's workers among keys {{w, 0}, 1..Keys} of Pool.
syn_register_local(Pool, Scope, Keys) ->
    Me = node(),
    _ = [ok = syn:register(Scope, K, P) || J <- lists:seq(1, Keys), K <- [{{w, 0}, J}],
                                           P <- [shoal:whereis(Pool, K)], node(P) =:= Me],
    ok.

%% The echo server pg_home's callers ask, registered on each node.
start_echo() ->
    Pid = spawn(?MODULE, echo, []),
    true = register(?ECHO, Pid),
    ok.

stop_echo() ->
    exit(whereis(?ECHO), kill),
    ok.

%% Microseconds, median over Count: one ensure_started/2 of a fresh key whose home is
%% another member (`spawn'); one gen_server:call/2 to an echo server on the home of each of
%% the same keys, in the same order (`call'), or answered by a process that server spawns
%% (`spawned'); or one gen_server:call/2 to an echo server on one other member (`call_one').
%% The keys' homes alternate between the other members at random, and a round trip to a
%% node that was idle since the one before last costs more than one to the node just used.
spawn_latency(spawn, Pool, R, Count) ->
    Members = shoal:nodes(Pool),
    Keys = remote_home_keys(Members, {l, R}, Count),
    median([begin
                T0 = erlang:monotonic_time(nanosecond),
                {ok, _} = shoal:ensure_started(Pool, K),
                (erlang:monotonic_time(nanosecond) - T0) / 1000
            end || K <- Keys]);
spawn_latency(call_one, Pool, _R, Count) ->
    [Other | _] = shoal:nodes(Pool) -- [node()],
    round_trips([Other || _ <- lists:seq(1, Count)], ping);
spawn_latency(Side, Pool, R, Count) when Side =:= call; Side =:= spawned ->
    Members = shoal:nodes(Pool),
    Homes = [shoal_placement:home(K, Members) || K <- remote_home_keys(Members, {l, R}, Count)],
    round_trips(Homes, case Side of call -> ping; spawned -> spawn_reply end).

%% The median of one gen_server:call/2 with Req to an echo server on each of Nodes in turn.
round_trips(Nodes, Req) ->
    Echoes = maps:from_list([{N, erpc:call(N, erlang, spawn, [?MODULE, echo, []])}
                             || N <- lists:usort(Nodes)]),
    Us = [begin
              Echo = maps:get(N, Echoes),
              T0 = erlang:monotonic_time(nanosecond),
              pong = gen_server:call(Echo, Req),
              (erlang:monotonic_time(nanosecond) - T0) / 1000
          end || N <- Nodes],
    _ = [exit(E, kill) || E <- maps:values(Echoes)],
    median(Us).

remote_home_keys(Members, Tag, Count) ->
    remote_home_keys(Members, Tag, Count, 0, []).

remote_home_keys(_Members, _Tag, 0, _J, Acc) -> lists:reverse(Acc);
remote_home_keys(Members, Tag, Count, J, Acc) ->
    K = {Tag, J},
    case shoal_placement:home(K, Members) =:= node() of
        true -> remote_home_keys(Members, Tag, Count, J + 1, Acc);
        false -> remote_home_keys(Members, Tag, Count - 1, J + 1, [K | Acc])
    end.

%% A gen_server-compatible echo: answers every call `pong', but `{place, Scope, Key}' with
%% `ok' once it has spawned a process here and joined it to group Key of Scope.
echo() ->
    receive
        {'$gen_call', From, {place, Scope, K}} ->
            gen_server:reply(From, pg:join(Scope, K, spawn(?MODULE, idle, []))),
            echo();
        {'$gen_call', From, spawn_reply} ->
            _ = spawn(fun() -> gen_server:reply(From, pong) end),
            echo();
        {'$gen_call', From, _} -> gen_server:reply(From, pong), echo()
    end.

idle() -> receive stop -> ok end.

%% The scope's local members and the scope itself, gone.
pg_stop(Scope) ->
    [exit(P, kill) || G <- pg:which_groups(Scope), P <- pg:get_local_members(Scope, G)],
    exit(whereis(Scope), kill),
    ok.

%% ns per lookup: {local whereis, remote whereis, ets:lookup of the same keys}.
lookups(Pool, Keys, Round) ->
    #{local := L, remote := Rm, ets := E} = lookups(Pool, Keys, Round, none),
    {L, Rm, E}.

%% ns per lookup, a map: local and remote whereis, ets:lookup of the remote keys, and with a
%% syn scope holding the same keys (else `none'), syn:lookup/2 of the local and remote keys.
lookups(Pool, Keys, Round, SynScope) ->
    All = [{{w, 0}, J} || J <- lists:seq(1, Keys)],
    Pairs = [{K, shoal:whereis(Pool, K)} || K <- All],
    Tab = ets:new(bench_member_ets, [set, public]),
    true = ets:insert(Tab, Pairs),
    Me = node(),
    %% As many distinct keys on each side (a third of the keys are local, two thirds
    %% remote): a bigger set of keys would also be a bigger working set for the caches.
    Local0 = shuffle([K || {K, P} <- Pairs, node(P) =:= Me], Round),
    Remote0 = shuffle([K || {K, P} <- Pairs, node(P) =/= Me], Round),
    Same = min(length(Local0), length(Remote0)),
    LocalKs = lists:sublist(Local0, Same),
    RemoteKs = lists:sublist(Remote0, Same),
    Samples = 200000,
    L = take_cycle(LocalKs, Samples),
    Rm = take_cycle(RemoteKs, Samples),
    Sides0 = [local, remote, ets] ++ [S || SynScope =/= none, S <- [syn_local, syn_remote]],
    Sides = case Round rem 2 of
                0 -> Sides0;
                1 -> lists:reverse(Sides0)
            end,
    R = maps:from_list([{S, time_lookups(S, {Pool, SynScope}, Tab,
                                         case S of local -> L; syn_local -> L; _ -> Rm end)}
                        || S <- Sides]),
    ets:delete(Tab),
    R.

time_lookups(ets, _, Tab, Ks) ->
    T0 = erlang:monotonic_time(nanosecond),
    lists:foreach(fun(K) -> [_] = ets:lookup(Tab, K) end, Ks),
    (erlang:monotonic_time(nanosecond) - T0) / length(Ks);
time_lookups(S, {_, Scope}, _Tab, Ks) when S =:= syn_local; S =:= syn_remote ->
    T0 = erlang:monotonic_time(nanosecond),
    lists:foreach(fun(K) -> {P, _} = syn:lookup(Scope, K), true = is_pid(P) end, Ks),
    (erlang:monotonic_time(nanosecond) - T0) / length(Ks);
time_lookups(_, {Pool, _}, _Tab, Ks) ->
    T0 = erlang:monotonic_time(nanosecond),
    lists:foreach(fun(K) -> true = is_pid(shoal:whereis(Pool, K)) end, Ks),
    (erlang:monotonic_time(nanosecond) - T0) / length(Ks).

take_cycle(L, N) when length(L) >= N -> lists:sublist(L, N);
take_cycle(L, N) -> take_cycle(L ++ L, N).

shuffle(L, Seed) ->
    rand:seed(exsss, {Seed, 17, 31}),
    [X || {_, X} <- lists:sort([{rand:uniform(), X} || X <- L])].

par_local(Procs, N, F) ->
    Parts = [lists:seq(P, N, Procs) || P <- lists:seq(1, Procs)],
    Self = self(),
    Ps = [spawn_link(fun() -> lists:foreach(F, Part), Self ! {done, self()} end) || Part <- Parts],
    [receive {done, P} -> ok end || P <- Ps],
    ok.

%%% Controller ------------------------------------------------------------------------------

start_peers(Syn) ->
    Paths = [filename:dirname(code:which(M)) || M <- [shoal, ?MODULE]] ++ [Syn || Syn =/= false],
    Nodes = [begin
                 Name = peer:random_name(list_to_atom("bench_member_" ++ integer_to_list(I))),
                 {ok, _P, Node} = peer:start_link(#{name => Name,
                                                    args => ["+P", "2000000" | peer_args()] ++
                                                        lists:append([["-pa", D] || D <- Paths])}),
                 Node
             end || I <- [1, 2, 3]],
    [erpc:call(Nd, application, ensure_all_started, [shoal]) || Nd <- Nodes],
    [{ok, _} = erpc:call(Nd, application, ensure_all_started, [syn]) || Syn =/= false, Nd <- Nodes],
    %% (syn reports every scope's discovery and sync as a notice)
    [ok = erpc:call(Nd, logger, set_application_level, [syn, warning]) || Syn =/= false, Nd <- Nodes],
    [true = erpc:call(X, net_kernel, connect_node, [Y]) || X <- Nodes, Y <- Nodes, X < Y],
    Nodes.

%% Emulator flags for the three peers, from SHOAL_BENCH_PEER_ARGS (space-separated), e.g.
%% "+sbwt none +sbwtdcpu none +sbwtdio none": three nodes on one small machine share its
%% cores, so a scheduler that spins waiting for work takes CPU its neighbours need, which
%% separate machines would not.
peer_args() ->
    string:lexemes(os:getenv("SHOAL_BENCH_PEER_ARGS", ""), " ").

start_pools(Nodes) ->
    [{ok, _} = erpc:call(Nd, shoal, start_pool, [?POOL, #{worker => ?MODULE}]) || Nd <- Nodes],
    All = lists:sort(Nodes),
    ok = wait_until(fun() -> lists:all(fun(Nd) -> erpc:call(Nd, shoal, nodes, [?POOL]) =:= All end, Nodes) end,
                    10000),
    %% A Shoal that says when its members agree: wait for that too.
    [catch erpc:call(Nd, shoal, await_ready, [?POOL, 10000]) || Nd <- Nodes],
    ok.

stop_pools(Nodes) ->
    [ok = erpc:call(Nd, shoal, stop_pool, [?POOL], 60000) || Nd <- Nodes],
    ok.

wait_counts(Nodes, N) ->
    wait_until(fun() -> lists:all(fun(Nd) -> erpc:call(Nd, shoal, count, [?POOL]) >= N end, Nodes) end,
               120000).

wait_until(F, Timeout) ->
    Deadline = erlang:monotonic_time(millisecond) + Timeout,
    wait_loop(F, Deadline).

wait_loop(F, Deadline) ->
    case F() of
        true -> ok;
        false ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true -> timeout;
                false -> timer:sleep(10), wait_loop(F, Deadline)
            end
    end.

par(Calls) ->
    Self = self(),
    Ps = [spawn_link(fun() -> Self ! {done, self(), erpc:call(Nd, M, F, A, infinity)} end)
          || {Nd, M, F, A} <- Calls],
    [receive {done, P, R} -> R end || P <- Ps].

timed(F) ->
    T0 = erlang:monotonic_time(microsecond),
    _ = F(),
    (erlang:monotonic_time(microsecond) - T0) / 1.0e6.

idx(L) -> lists:zip(lists:seq(1, length(L)), L).

median(L) -> lists:nth((length(L) + 1) div 2, lists:sort(L)).

spread(L) -> #{med => median(L), min => lists:min(L), max => lists:max(L)}.

rate(#{med := M, min := Lo, max := Hi}) ->
    io_lib:format("~.1f k (~.1f–~.1f k)", [M / 1000, Lo / 1000, Hi / 1000]).
us(#{med := M, min := Lo, max := Hi}) -> io_lib:format("~b (~b–~b)", [round(M), round(Lo), round(Hi)]).
ns(S) -> us(S).
cores(#{med := M, min := Lo, max := Hi}) -> io_lib:format("~.2f (~.2f–~.2f)", [M, Lo, Hi]).
x(#{med := M, min := Lo, max := Hi}) -> io_lib:format("~.2fx (~.2f–~.2f)", [M, Lo, Hi]).

%% syn's ebin directory, from SHOAL_SYN_EBIN (syn is not packaged for Debian: a user who
%% has a build of it points the bench at it), or false.
syn_ebin() ->
    case os:getenv("SHOAL_SYN_EBIN", "") of
        "" -> false;
        Dir ->
            filelib:is_regular(filename:join(Dir, "syn.app")) orelse
                error({no_syn_app_in, Dir}),
            filename:absname(Dir)
    end.

syn_row(none, _Cpu) -> "";
syn_row({Rate, _Ratio, SynCpu}, _Cpu) ->
    io_lib:format("| syn:register/3 (spawn + register) | ~ts | ~ts |~n", [rate(Rate), us(SynCpu)]).

syn_ratio(none, _Target) -> "";
syn_ratio({_Rate, Ratio, _}, Target) -> io_lib:format("shoal / syn: **~ts**~ts; ", [x(Ratio), Target]).

syn_para(none) ->
    "syn 3.4, the registry the issue measured (39.2 k/s), is not packaged for Debian, so pg "
    "stands in for it (`SHOAL_SYN_EBIN=/path/to/syn/ebin` adds it as a side). ";
syn_para(Vsn) ->
    io_lib:format("syn ~ts (from `SHOAL_SYN_EBIN`) registers a fresh process per key from "
                  "the same callers in a fresh scope a round; like pg it returns once the "
                  "local scope process has the name, and tells the other nodes "
                  "asynchronously; a name taken on two nodes at once is resolved after the "
                  "fact. ", [Vsn]).

syn_look_rows([#{syn_local := _} | _] = Look) ->
    io_lib:format("| syn:lookup/2, local worker | ~ts |~n| syn:lookup/2, remote worker | ~ts |~n",
                  [ns(spread([maps:get(syn_local, L) || L <- Look])),
                   ns(spread([maps:get(syn_remote, L) || L <- Look]))]);
syn_look_rows(_) -> "".

syn_look_ratio([#{syn_local := _} | _] = Look) ->
    io_lib:format(" Shoal / syn: local **~ts**, remote **~ts** (time per lookup; below 1 is "
                  "faster).",
                  [x(spread([maps:get(local, L) / maps:get(syn_local, L) || L <- Look])),
                   x(spread([maps:get(remote, L) / maps:get(syn_remote, L) || L <- Look]))]);
syn_look_ratio(_) -> "".

env_int(Name, Default) ->
    case os:getenv(Name) of
        false -> Default;
        V -> list_to_integer(V)
    end.
