%% shoal_cluster_demo: the cluster half of `make demo`.
%%
%% Three local nodes form one pool; a million workers are placed across them; one node is
%% drained live while clients keep calling; then a node is killed and its keys are served
%% again by the survivors, their state restored through the worker's load/2 hook from a
%% store. Per-node counts are shown as they change.
%%
%% This controller node is connected to the three but is not a pool member; it also hosts
%% the demo's "user store" (a process holding counters), standing in for a database.
-module(shoal_cluster_demo).

-export([main/0]).
%% shoal_worker (runs on the peers)
-export([init/2, load/2, handle_call/3, handle_cast/2]).
%% store and helpers
-export([store/1, spawn_share/3, client/3]).

-define(POOL, demo_cluster).
-define(STORE, shoal_demo_store).
-define(TRACKED, 20000). %% keys the clients call; their counters are saved in the store

%%% The worker: a counter per key. Tracked keys save every change to the store, and load
%%% it back when (re)spawned, wherever that happens.

init(Key, Store) -> {ok, {Key, Store, 0}}.

load({k, I} = Key, {Key, Store, _}) when I =< ?TRACKED ->
    {ok, {Key, Store, gen_server:call({?STORE, Store}, {get, Key})}};
load(_Key, State) -> {ok, State}.

handle_call(incr, _From, {Key, Store, N}) ->
    erlang:send({?STORE, Store}, {put, Key, N + 1}),
    {reply, N + 1, {Key, Store, N + 1}};
handle_call(get, _From, {_, _, N} = S) ->
    {reply, N, S}.

handle_cast(_, S) -> {noreply, S}.

%%% The demo

main() ->
    N = env_int("SHOAL_DEMO_N", 1000000),
    banner("Cluster: three nodes, one pool"),
    register(?STORE, spawn_link(?MODULE, store, [#{}])),
    Nodes = start_peers(),
    [A, B, C] = Nodes,
    [pong = erpc:call(X, net_adm, ping, [Y]) || X <- Nodes, Y <- Nodes],
    [{ok, _} = erpc:call(Nd, shoal, start_pool, [?POOL, #{worker => ?MODULE, args => node(),
                                                          handoff_grace => 2000}])
     || Nd <- Nodes],
    wait(fun() -> [length(erpc:call(Nd, shoal, nodes, [?POOL])) || Nd <- Nodes] =:= [3, 3, 3] end),
    io:format("members (as each node sees them): ~p~n", [erpc:call(A, shoal, nodes, [?POOL])]),

    banner(io_lib:format("Placing ~s workers across the cluster", [thousands(N)])),
    T0 = now_ms(),
    Spawners = [spawn_link(Nd, ?MODULE, spawn_share, [I, N, self()]) || {I, Nd} <- idx(Nodes)],
    watch(A, Nodes, fun() -> erpc:call(A, shoal, count, [?POOL]) >= N end),
    [receive {spawned, P} -> ok end || P <- Spawners],
    Secs = (now_ms() - T0) / 1000,
    io:format("~s workers placed in ~.1f s (~s per second), every node agrees on the count: ~p~n",
              [thousands(N), Secs, thousands(round(N / Secs)),
               lists:usort([erpc:call(Nd, shoal, count, [?POOL]) || Nd <- Nodes])]),

    banner(io_lib:format("Clients calling ~s keys from ~s and ~s", [thousands(?TRACKED), A, B])),
    Clients = [spawn_link(Nd, ?MODULE, client, [self(), ?TRACKED, I]) || {I, Nd} <- idx([A, B])],
    timer:sleep(1000),

    banner(io_lib:format("Draining ~s live (its workers move with their state)", [C])),
    Drainer = self(),
    spawn_link(fun() -> T = now_ms(), ok = erpc:call(A, shoal, drain, [?POOL, C], infinity),
                        Drainer ! {drained, now_ms() - T} end),
    watch(A, Nodes, fun() -> false end, drained),
    DrainMs = receive {drained, Ms} -> Ms end,
    {Ok1, Fail1} = client_totals(Clients),
    io:format("~s is empty after ~.1f s; calls so far: ~s answered, ~b failed~n",
              [C, DrainMs / 1000, thousands(Ok1), Fail1]),
    ok = erpc:call(A, shoal, undrain, [?POOL, C]),

    banner(io_lib:format("Killing ~s while the clients keep calling", [B])),
    Sample = sample_key_on(A, B),
    Before = erpc:call(A, shoal, call, [?POOL, Sample, get]),
    io:format("~p lives on ~s with counter ~b~n", [Sample, B, Before]),
    [P ! stop || P <- Clients],
    _ = client_totals(Clients),
    Clients2 = [spawn_link(A, ?MODULE, client, [self(), ?TRACKED, 9])],
    erpc:cast(B, erlang, halt, []),
    Survivors = [A, C],
    watch(A, Survivors, fun() ->
                                lists:all(fun(Nd) -> erpc:call(Nd, shoal, count, [?POOL, B]) =:= 0 end,
                                          Survivors)
                        end),
    After = erpc:call(A, shoal, call, [?POOL, Sample, get]),
    {ok, NewNode, _} = erpc:call(A, shoal, lookup, [?POOL, Sample]),
    io:format("~s's workers are gone from every replica; ~p is served again on ~s with "
              "counter ~b (loaded from the store)~n", [B, Sample, NewNode, After]),
    timer:sleep(1000),
    [P ! stop || P <- Clients2],
    {Ok2, Fail2} = client_totals(Clients2),
    io:format("calls after the kill: ~s answered, ~b failed (in flight to ~s as it died)~n",
              [thousands(Ok2), Fail2, B]),

    banner("Health"),
    #{nodes := H, total := Total} = erpc:call(A, shoal, health, [?POOL]),
    io:format("~-22s ~10s ~8s ~12s~n", ["node", "workers", "drained", "crashes/min"]),
    [io:format("~-22s ~10s ~8s ~12w~n", [Nd, thousands(Cnt), atom_to_list(D), Cpm])
     || {Nd, #{count := Cnt, drained := D, crashes_per_minute := Cpm}} <- lists:sort(maps:to_list(H))],
    io:format("~-22s ~10s~n", ["total", thousands(Total)]),
    [catch peer_stop(Nd) || Nd <- Survivors],
    ok.

%%% On the peers

spawn_share(I, N, Parent) ->
    Self = self(),
    Ps = [spawn_link(fun() ->
                             [shoal:ensure_started_async(?POOL, {k, K}) || K <- lists:seq(J, N, 12)],
                             Self ! {part, self()}
                     end) || J <- lists:seq(I, 12, 3)],
    [receive {part, P} -> ok end || P <- Ps],
    Parent ! {spawned, self()}.

client(Parent, Keys, Seed) ->
    rand:seed(exsss, {Seed, Seed, Seed}),
    client_loop(Parent, Keys, 0, 0).

client_loop(Parent, Keys, Ok, Failed) ->
    receive
        stop -> Parent ! {client, self(), Ok, Failed};
        {totals, From} -> From ! {client, self(), Ok, Failed}, client_loop(Parent, Keys, Ok, Failed)
    after 0 ->
            case catch shoal:call(?POOL, {k, rand:uniform(Keys)}, incr) of
                X when is_integer(X) -> client_loop(Parent, Keys, Ok + 1, Failed);
                _ -> client_loop(Parent, Keys, Ok, Failed + 1)
            end
    end.

%%% The store (on this node)

store(M) ->
    receive
        {put, K, V} -> store(M#{K => V});
        {'$gen_call', From, {get, K}} -> gen_server:reply(From, maps:get(K, M, 0)), store(M)
    end.

%%% Helpers

start_peers() ->
    Paths = ["-pa", filename:dirname(code:which(shoal)), "-pa", filename:dirname(code:which(?MODULE))],
    Cookie = atom_to_list(erlang:get_cookie()),
    [begin
         {ok, _P, Node} = peer:start(#{name => list_to_atom("demo" ++ integer_to_list(I)),
                                       args => ["-setcookie", Cookie, "+P", "2000000",
                                                "-kernel", "prevent_overlapping_partitions", "false"
                                                | Paths]}),
         Node
     end || I <- [1, 2, 3]].

peer_stop(Node) -> erpc:cast(Node, init, stop, []).

%% Print the per-node counts (as node From sees them) on one line, every 250 ms, until
%% Done() is true or (with a Tag) a message {Tag, _} is waiting.
watch(From, Nodes, Done) -> watch(From, Nodes, Done, none).
watch(From, Nodes, Done, Tag) ->
    Counts = [{Nd, catch erpc:call(From, shoal, count, [?POOL, Nd])} || Nd <- Nodes],
    counts_line(false, Counts),
    Waiting = Tag =/= none andalso element(2, process_info(self(), messages)) =/= []
        andalso lists:any(fun(M) -> is_tuple(M) andalso element(1, M) =:= Tag end,
                          element(2, process_info(self(), messages))),
    case Waiting orelse Done() of
        true ->
            Final = [{Nd, catch erpc:call(From, shoal, count, [?POOL, Nd])} || Nd <- Nodes],
            counts_line(true, Final),
            shoal_demo:end_live();
        false -> timer:sleep(250), watch(From, Nodes, Done, Tag)
    end.

counts_line(Final, Counts) ->
    shoal_demo:live(Final, "  ~s      ",
                    [lists:join("   ", [io_lib:format("~s: ~9s", [short(Nd), thousands(Cn)])
                                        || {Nd, Cn} <- Counts])]).

client_totals(Clients) ->
    [P ! {totals, self()} || P <- Clients],
    Rs = [receive {client, P, O, F} -> {O, F} end || P <- Clients],
    {lists:sum([O || {O, _} <- Rs]), lists:sum([F || {_, F} <- Rs])}.

sample_key_on(From, Node) -> sample_key_on(From, Node, 1).
sample_key_on(From, Node, I) ->
    case erpc:call(From, shoal, lookup, [?POOL, {k, I}]) of
        {ok, Node, _} -> {k, I};
        _ -> sample_key_on(From, Node, I + 1)
    end.

wait(F) -> case F() of true -> ok; false -> timer:sleep(50), wait(F) end.

banner(Text) -> io:format("~n== ~s~n", [Text]).

short(Node) -> hd(string:split(atom_to_list(Node), "@")).

idx(L) -> lists:zip(lists:seq(1, length(L)), L).

now_ms() -> erlang:monotonic_time(millisecond).

thousands(N) when is_integer(N), N < 0 -> "-" ++ thousands(-N);
thousands(N) when is_integer(N) ->
    S = integer_to_list(N),
    lists:reverse(string:join(chunk3(lists:reverse(S)), ","));
thousands(X) -> io_lib:format("~p", [X]).

chunk3([A, B, C | R]) when R =/= [] -> [[A, B, C] | chunk3(R)];
chunk3(R) -> [R].

env_int(Name, Default) ->
    case os:getenv(Name) of
        false -> Default;
        V -> list_to_integer(V)
    end.
