%% shoal_super_bench: chains (shoal_super) against the same pipeline written as plain linked
%% gen_servers with gen_server:call hand-off, in one run, on the same items.
%%
%%   1. Local: items per second through a 3-step chain (back-pressure on: max_queue 1000)
%%      vs three gen_servers, each replying to its caller at once and then calling the next
%%      (so stages work in parallel and a full stage holds its caller back).
%%   2. Over three peer nodes: the same, one worker per step on three different nodes (the
%%      pipeline crosses a node at every hop) vs the three gen_servers placed alike; and
%%      `spread' (three workers per step, one on each node) vs three such gen_server lanes.
%%      The cross-node cost per hop is (1 / rate over nodes - 1 / rate local) / 3 hops.
%%   3. Auto-scaling: a step whose items take ~1 ms, `workers => #{min => 1, max => 8}',
%%      hit by a load step of ~3000 items/s: time until it first grows, until it reaches
%%      the count it settles at, and (load gone) until it is back to one worker.
%%
%% Each comparison runs in rounds that alternate which side goes first; the table gives the
%% median of the per-round ratios with their min..max, and the median rates.
%%   SHOAL_SUPER_BENCH_N (default 200000 items a local round; a node round gets a fifth),
%%   SHOAL_SUPER_BENCH_ROUNDS (default 7), SHOAL_SUPER_BENCH_OUT (default bench/results/super.md).
-module(shoal_super_bench).

-export([main/0]).
-export([init/1, handle_call/3, handle_cast/2]).                  %% the baseline stages
-export([start_sup/2, collector/2, produce/4, baseline/4, chain_rate/5, stop_baseline/1,
         scale_round/1]).                                          %% run on the peers

-define(SUP, bench_super).
-define(POOL, bench_super_hosts).

main() ->
    N = env_int("SHOAL_SUPER_BENCH_N", 200000),
    Rounds = env_int("SHOAL_SUPER_BENCH_ROUNDS", 7),
    Out = env_str("SHOAL_SUPER_BENCH_OUT", "bench/results/super.md"),
    {ok, _} = application:ensure_all_started(shoal),
    logger:set_primary_config(level, error),
    io:format("~n## shoal_super chains (N = ~b per local round, ~b rounds)~n~n", [N, Rounds]),
    Local = compare(Rounds, fun() -> rate(node(), chain, [node(), node(), node()], 1, N) end,
                    fun() -> rate(node(), baseline, [node(), node(), node()], 1, N) end),
    print_cmp("Local, 3 steps, 1 worker each", Local),
    Nodes = start_peers(),
    [A, B, C] = Nodes,
    NN = max(1000, N div 5),
    Line = compare(Rounds, fun() -> rate(A, chain, [B, C, A], 1, NN) end,
                   fun() -> rate(A, baseline, [B, C, A], 1, NN) end),
    print_cmp("3 nodes, one step per node (every hop crosses a node)", Line),
    Spread = compare(Rounds, fun() -> rate(A, chain, spread, 3, NN) end,
                     fun() -> rate(A, baseline, spread, 3, NN) end),
    print_cmp("3 nodes, `spread`: 3 workers per step, one per node", Spread),
    Hop = hop_costs(Local, Line),
    Scale = [erpc:call(A, ?MODULE, scale_round, [I], 120000) || I <- lists:seq(1, 3)],
    stop_peers(Nodes),
    Md = report(N, NN, Rounds, Local, Line, Spread, Hop, Scale),
    io:format("~ts", [Md]),
    ok = filelib:ensure_dir(Out),
    ok = file:write_file(Out, Md),
    io:format("~nwritten to ~s~n", [Out]),
    ok.

%%% Comparisons ---------------------------------------------------------------------------

%% Rounds alternating which side runs first; each side's items/s per round.
compare(Rounds, Chain, Base) ->
    _ = Chain(), _ = Base(),                          %% warm-up
    [begin
         {Ch, Ba} = case I rem 2 of
                        0 -> X = Chain(), {X, Base()};
                        1 -> Y = Base(), {Chain(), Y}
                    end,
         io:format("  round ~b: chain ~s/s, gen_server ~s/s~n", [I, fmt(Ch), fmt(Ba)]),
         {Ch, Ba}
     end || I <- lists:seq(1, Rounds)].

%% Items per second through one side, driven by a producer on Owner.
rate(Owner, Side, Placement, Workers, N) ->
    erpc:call(Owner, ?MODULE, chain_rate, [Side, Placement, Workers, N, self()], 120000).

%% On the owner node.
chain_rate(chain, Placement, Workers, N, _) ->
    Done = counters:new(1, []),
    Self = self(),
    OnFinish = fun(_) -> case counters:get(Done, 1) + 1 of
                             N -> counters:add(Done, 1, 1), Self ! finished;
                             _ -> counters:add(Done, 1, 1)
                         end
               end,
    {ok, Pid} = start_sup(?SUP, #{cluster => cluster()}),
    ChainPl = case Placement of spread -> spread; _ -> local end,
    ok = shoal_super:add_chain(?SUP, c, #{on_finish => OnFinish, max_queue => 1000,
                                         placement => ChainPl}),
    [ok = shoal_super:add_chain_step(?SUP, c, fun(X) -> X + 1 end,
                                     #{id => I, workers => Workers, placement => step_pl(Placement, I)})
     || I <- [1, 2, 3]],
    T = timed(fun() -> produce(chain, c, N, none), receive finished -> ok end end),
    ok = shoal_super:stop(?SUP),
    _ = Pid,
    N / T;
chain_rate(baseline, Placement, Lanes, N, _) ->
    Coll = spawn_link(?MODULE, collector, [self(), N]),
    Stages = baseline(Placement, Lanes, Coll, node()),
    Heads = list_to_tuple([S1 || [S1 | _] <- Stages]),
    T = timed(fun() -> produce(baseline, Heads, N, none), receive finished -> ok end end),
    stop_baseline(Stages),
    N / T.

cluster() ->
    case whereis(shoal_sup) =/= undefined andalso lists:member(?POOL, pools()) of
        true -> ?POOL;
        false -> undefined
    end.

pools() ->
    try shoal:nodes(?POOL) of _ -> [?POOL]
    catch exit:_ -> []
    end.

step_pl([_, _, _] = Nodes, I) ->
    case lists:nth(I, Nodes) of
        N when N =:= node() -> local;
        N -> #{node => N}
    end;
step_pl(spread, _) -> spread.

%% Send 1..N: into the chain (waiting for room as long as it takes), or round-robin over
%% the baseline lanes' first stages with gen_server:call.
produce(_, _, 0, _) -> ok;
produce(chain, C, N, X) ->
    ok = shoal_super:send_to_chain(?SUP, C, N, infinity),
    produce(chain, C, N - 1, X);
produce(baseline, Heads, N, X) ->
    ok = gen_server:call(element(N rem tuple_size(Heads) + 1, Heads), {item, N}, infinity),
    produce(baseline, Heads, N - 1, X).

%% Counts the baseline's finished items; tells To when N are done.
collector(To, N) ->
    lists:foreach(fun(_) -> receive done -> ok end end, lists:seq(1, N)),
    To ! finished.

%% Lanes of three linked gen_servers (stage 3 reports to Coll). Placement: the node of
%% each stage, or `spread' (lane I's stages on nodes I, I+1, I+2 of the host pool).
baseline(Placement, Lanes, Coll, _Here) ->
    Nodes = case Placement of
                spread -> lists:sort(shoal:nodes(?POOL));
                _ -> Placement
            end,
    [begin
         Ns = case Placement of
                  spread -> [lists:nth((L + K) rem 3 + 1, Nodes) || K <- [0, 1, 2]];
                  _ -> Nodes
              end,
         [N1, N2, N3] = Ns,
         S3 = start_stage(N3, none, Coll),
         S2 = start_stage(N2, S3, Coll),
         S1 = start_stage(N1, S2, Coll),
         [S1, S2, S3]
     end || L <- lists:seq(1, Lanes)].

start_stage(Node, Next, Coll) ->
    {ok, Pid} = erpc:call(Node, gen_server, start, [?MODULE, {Next, Coll}, []]),
    Pid.

stop_baseline(Stages) ->
    [gen_server:stop(S) || Lane <- Stages, S <- Lane],
    ok.

%% A baseline stage: reply at once, do the step, call the next stage (or report).
init({Next, Coll}) -> {ok, {Next, Coll}}.
handle_call({item, X}, From, {Next, Coll} = S) ->
    gen_server:reply(From, ok),
    Y = X + 1,
    _ = case Next of
            none -> Coll ! done;
            _ -> gen_server:call(Next, {item, Y}, infinity)
        end,
    {noreply, S}.
handle_cast(_, S) -> {noreply, S}.

start_sup(Id, Opts) ->
    {ok, Pid} = shoal_super:start_link(Id, Opts),
    unlink(Pid),
    {ok, Pid}.

%%% Auto-scaling --------------------------------------------------------------------------

%% One load step against an auto-scaled step; times in ms from the start of the load.
scale_round(_I) ->
    {ok, _} = start_sup(?SUP, #{}),
    ok = shoal_super:add_chain(?SUP, s, #{max_queue => 100000}),
    ok = shoal_super:add_chain_step(?SUP, s, fun(X) -> timer:sleep(1), X end,
                                    #{id => work, workers => #{min => 1, max => 8}}),
    Rate = 3000, Seconds = 4,
    T0 = now_ms(),
    Loader = spawn_link(fun() -> load(Rate, Seconds * 1000, T0) end),
    Samples = watch(T0, Seconds * 1000, []),
    unlink(Loader),
    LoadEnd = now_ms(),
    Shrunk = wait_workers(1, 30000),
    ok = shoal_super:stop(?SUP),
    Grown = [T || {T, W, _} <- lists:reverse(Samples), W > 1],
    Peak = lists:max([W || {_, W, _} <- Samples]),
    Settled = hd([T || {T, W, _} <- lists:reverse(Samples), W =:= Peak]),
    #{first_growth => case Grown of [] -> undefined; [G | _] -> G end,
      peak_workers => Peak, peak_at => Settled,
      shrunk_after => case Shrunk of timeout -> undefined; TS -> TS - LoadEnd end}.

load(Rate, Ms, T0) ->
    Now = now_ms() - T0,
    case Now >= Ms of
        true -> ok;
        false ->
            Due = Rate * Now div 1000,
            load_send(Due, Rate, Ms, T0, 0)
    end.

load_send(Due, Rate, Ms, T0, Sent) when Sent < Due ->
    _ = shoal_super:send_to_chain(?SUP, s, Sent, infinity),
    load_send(Due, Rate, Ms, T0, Sent + 1);
load_send(_Due, Rate, Ms, T0, Sent) ->
    timer:sleep(5),
    Now = now_ms() - T0,
    case Now >= Ms of
        true -> ok;
        false -> load_send(Rate * Now div 1000, Rate, Ms, T0, Sent)
    end.

watch(T0, Ms, Acc) ->
    Now = now_ms() - T0,
    case Now >= Ms of
        true -> Acc;
        false ->
            {ok, #{steps := [#{workers := W, queue := Q}]}} = shoal_super:chain_info(?SUP, s),
            timer:sleep(10),
            watch(T0, Ms, [{Now, W, Q} | Acc])
    end.

wait_workers(Target, Ms) ->
    Deadline = now_ms() + Ms,
    wait_workers_(Target, Deadline).
wait_workers_(Target, Deadline) ->
    {ok, #{steps := [#{workers := W}]}} = shoal_super:chain_info(?SUP, s),
    case W =< Target of
        true -> now_ms();
        false ->
            case now_ms() > Deadline of
                true -> timeout;
                false -> timer:sleep(20), wait_workers_(Target, Deadline)
            end
    end.

%%% Peers ---------------------------------------------------------------------------------

start_peers() ->
    Paths = lists:append([["-pa", D] || D <- [filename:dirname(code:which(shoal)),
                                              filename:dirname(code:which(?MODULE))]]),
    Cookie = atom_to_list(erlang:get_cookie()),
    Nodes = [begin
                 {ok, _P, Node} = peer:start_link(#{name => peer:random_name(bench_super),
                                                    args => ["-setcookie", Cookie | Paths]}),
                 Node
             end || _ <- [1, 2, 3]],
    [true = erpc:call(X, net_kernel, connect_node, [Y]) || X <- Nodes, Y <- Nodes, Y > X],
    [ok = erpc:call(X, shoal_super, start_host_pool, [?POOL]) || X <- Nodes],
    All = lists:sort(Nodes),
    ok = wait(fun() -> lists:all(fun(X) -> erpc:call(X, shoal, nodes, [?POOL]) =:= All end, Nodes) end,
              20000),
    [erpc:call(X, logger, set_primary_config, [level, error]) || X <- Nodes],
    Nodes.

stop_peers(Nodes) ->
    [catch erpc:call(X, init, stop, []) || X <- Nodes],
    ok.

wait(F, Ms) ->
    case F() of
        true -> ok;
        false when Ms > 0 -> timer:sleep(50), wait(F, Ms - 50);
        false -> error(cluster_did_not_form)
    end.

%%% Report --------------------------------------------------------------------------------

hop_costs(Local, Line) ->
    Us = fun(R) -> 1.0e6 / R end,
    Ch = (Us(median([C || {C, _} <- Line])) - Us(median([C || {C, _} <- Local]))) / 3,
    Ba = (Us(median([B || {_, B} <- Line])) - Us(median([B || {_, B} <- Local]))) / 3,
    {Ch, Ba}.

print_cmp(Title, Runs) ->
    {Med, Min, Max} = ratio(Runs),
    io:format("~s: chain / gen_server ~.2fx (~.2f..~.2f)~n~n", [Title, Med, Min, Max]).

ratio(Runs) ->
    Rs = [C / B || {C, B} <- Runs],
    {median(Rs), lists:min(Rs), lists:max(Rs)}.

report(N, NN, Rounds, Local, Line, Spread, {HopCh, HopBa}, Scale) ->
    Row = fun(What, Items, Runs) ->
                  {Med, Min, Max} = ratio(Runs),
                  io_lib:format("| ~s | ~b | ~s | ~s | **~.2fx** (~.2f..~.2f) |~n",
                                [What, Items, fmt(median([C || {C, _} <- Runs])),
                                 fmt(median([B || {_, B} <- Runs])), Med, Min, Max])
          end,
    Ms = fun(K) -> case [V || #{K := V} <- Scale, is_integer(V)] of
                       [] -> "n/a";
                       Vs -> io_lib:format("~b (~b..~b)", [median(Vs), lists:min(Vs), lists:max(Vs)])
                   end
         end,
    unicode:characters_to_binary(
      ["# shoal_super benchmark (one 2-core machine)\n\n",
       "Produced by `make bench-super` (also part of `make bench`; bench/shoal_super_bench.erl).\n\n",
       "## Items per second through a 3-step chain\n\n",
       "Each step adds one to the item. shoal_super: `send_to_chain/4` into a chain with ",
       "`max_queue => 1000` (back-pressure on), items counted in `on_finish`. gen_server: the ",
       "same three steps as linked gen_servers, each replying to its caller at once and then ",
       "handing the item on with `gen_server:call` (a full stage holds its caller back); the ",
       "producer calls the first. One producer on the owner node. ",
       io_lib:format("Median of ~b rounds alternating which side runs first; ratio = chain / gen_server, ", [Rounds]),
       "median of the per-round ratios (min..max).\n\n",
       "| placement | items per round | chain items/s | gen_server items/s | ratio |\n|---|---|---|---|---|\n",
       Row("one node", N, Local),
       Row("3 nodes, one step per node (every hop crosses nodes)", NN, Line),
       Row("3 nodes, `spread`: 3 workers per step, one per node (gen_server: 3 lanes)", NN, Spread),
       io_lib:format("~nCross-node cost per hop (from the first two rows): chain **~.1f µs**, "
                     "gen_server call hand-off **~.1f µs**. A chain hop that leaves the owner "
                     "node also tells the owner's ledger where the item went (one more small "
                     "message, see docs/tools.md).~n~n", [HopCh, HopBa]),
       "## Auto-scaling reaction to a load step\n\n",
       "A step whose items take about 1 ms (`timer:sleep(1)`), `workers => #{min => 1, max => 8}` ",
       "with the default `scale_interval` (100 ms), `scale_up_queue` (4) and `idle_after` ",
       "(2000 ms); a load of 3000 items/s starts at 0 and lasts 4 s. Milliseconds, median of ",
       io_lib:format("~b rounds (min..max).~n~n", [length(Scale)]),
       "| first growth | peak workers | peak reached at | back to 1 worker after the load ends |\n|---|---|---|---|\n",
       io_lib:format("| ~s | ~s | ~s | ~s |~n", [Ms(first_growth), Ms(peak_workers), Ms(peak_at), Ms(shrunk_after)]),
       io_lib:format("~nItems per local round: ~b; per node round: ~b.~n", [N, NN])]).

%%% Helpers -------------------------------------------------------------------------------

timed(F) ->
    T0 = erlang:monotonic_time(microsecond),
    F(),
    (erlang:monotonic_time(microsecond) - T0) / 1.0e6.

now_ms() -> erlang:monotonic_time(millisecond).

median(L) -> lists:nth((length(L) + 1) div 2, lists:sort(L)).

fmt(R) when R >= 1.0e6 -> io_lib:format("~.2f M", [R / 1.0e6]);
fmt(R) when R >= 1.0e3 -> io_lib:format("~.1f k", [R / 1.0e3]);
fmt(R) -> io_lib:format("~.0f", [R * 1.0]).

env_int(K, D) ->
    case os:getenv(K) of
        false -> D;
        V -> list_to_integer(V)
    end.

env_str(K, D) ->
    case os:getenv(K) of
        false -> D;
        V -> V
    end.
