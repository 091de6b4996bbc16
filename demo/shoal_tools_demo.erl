%% shoal_tools_demo: the pool tools at work, in a few seconds (the last part of `make demo').
%%
%%   1. shoal_fixed: a pool of 4, calls spread round robin, a worker killed and back in the
%%      dispatch table, a flaky job retried;
%%   2. shoal_shared: 50 callers, 100,000 concurrent increments of one shared state;
%%      back-pressure with `max';
%%   3. shoal_tasks: 20 tasks with at most 4 at once;
%%   4. shoal_batcher: 1,000 pushes handled as 10 batches, in order;
%%   5. shoal_cron: the parser, a day of a quarter-hourly job on a manual clock, a real
%%      job firing on whole seconds, and (when this node is distributed) one scheduler for
%%      three nodes that survives the death of the node hosting it.
%%
%% This module is also the demo's callback module for shoal_fixed (init/2, handle_job/2),
%% shoal_shared (init/1, handle_call/3, handle_cast/2) and shoal_batcher (init/1,
%% handle_batch/2).
-module(shoal_tools_demo).

-export([main/0]).
-export([init/1, init/2, handle_job/2, handle_call/3, handle_cast/2, handle_batch/2]).
%% run on the peers of the cluster part
-export([p_start_cron/2, ran_on/1]).

%%% Callbacks -----------------------------------------------------------------------------

init(Args) -> {ok, Args}.
init(Index, _Args) -> {ok, Index}.

handle_job(whoami, I) -> {reply, I, I};
handle_job({flaky, Ctr}, I) ->
    counters:add(Ctr, 1, 1),
    case counters:get(Ctr, 1) < 3 of
        true -> error(not_yet);
        false -> {reply, {worked_on_attempt, counters:get(Ctr, 1)}, I}
    end.

handle_call(incr, _From, N) -> {reply, N + 1, N + 1};
handle_call(get, _From, N) -> {reply, N, N};
handle_call({hold, Ms}, _From, N) -> timer:sleep(Ms), {reply, ok, N}.

handle_cast(_, N) -> {noreply, N}.

handle_batch(Batch, To) -> To ! {batch, Batch}, {ok, To}.

%%% Running -------------------------------------------------------------------------------

main() ->
    ok = io:setopts(standard_io, [{encoding, unicode}]),
    {ok, _} = application:ensure_all_started(shoal),
    logger:set_primary_config(level, critical),
    T0 = erlang:monotonic_time(millisecond),
    say("~nPool tools~n", []),
    Steps = [{"shoal_fixed: a fixed pool", fun fixed/0},
             {"shoal_shared: one atomic state, many workers", fun shared/0},
             {"shoal_tasks: a bounded task runner", fun tasks/0},
             {"shoal_batcher: batches in order", fun batcher/0},
             {"shoal_cron: schedules", fun cron/0},
             {"shoal_cron, cluster => true: one scheduler for three nodes", fun cluster_cron/0}],
    Failed = [Title || {Title, Fun} <- Steps, not step(Title, Fun)],
    say("~nTools demo done in ~.1f s~s~n",
        [(erlang:monotonic_time(millisecond) - T0) / 1000,
         case Failed of [] -> "."; _ -> io_lib:format("; FAILED: ~p", [Failed]) end]),
    case Failed of [] -> ok; _ -> error end.

step(Title, Fun) ->
    say("~n== ~s~n", [Title]),
    try Fun(), true
    catch C:R:St -> say("   FAILED: ~p:~p~n   ~p~n", [C, R, St]), false
    end.

%%% 1. Fixed pool -------------------------------------------------------------------------

fixed() ->
    {ok, Sup} = shoal_fixed:start_link(demo_fixed, #{worker => ?MODULE, size => 4,
                                                     retry => #{count => 3}}),
    unlink(Sup),
    Seen = [shoal_fixed:call(demo_fixed, whoami) || _ <- lists:seq(1, 10000)],
    say("   10,000 calls, round robin, per worker: ~w~n",
        [[{I, length([x || J <- Seen, J =:= I])} || I <- [0, 1, 2, 3]]]),
    Old = shoal_fixed:pid(demo_fixed, 2),
    exit(Old, kill),
    New = wait_for(fun() -> case shoal_fixed:pid(demo_fixed, 2) of
                                Old -> false;
                                P -> is_pid(P) andalso P
                            end end),
    Again = lists:usort([shoal_fixed:call(demo_fixed, whoami) || _ <- lists:seq(1, 8)]),
    say("   killed worker 2 (~p); its successor ~p is back in the dispatch table: "
        "calls reach workers ~w~n", [Old, New, Again]),
    Ctr = counters:new(1, []),
    say("   a job that fails twice, with retry count 3: ~w~n",
        [shoal_fixed:call(demo_fixed, {flaky, Ctr})]),
    say("   stats: ~w~n", [shoal_fixed:stats(demo_fixed)]),
    ok = shoal_fixed:stop(demo_fixed).

%%% 2. Shared state -----------------------------------------------------------------------

shared() ->
    {ok, Sup} = shoal_shared:start_link(demo_shared, ?MODULE, 0, #{size => 8}),
    unlink(Sup),
    T0 = erlang:monotonic_time(millisecond),
    par(50, fun() -> [shoal_shared:call(demo_shared, incr, 60000) || _ <- lists:seq(1, 400)] end),
    say("   50 callers x 400 concurrent incr on 8 workers: state = ~w (not one lost; ~b ms)~n",
        [shoal_shared:get_state(demo_shared), erlang:monotonic_time(millisecond) - T0]),
    ok = shoal_shared:stop(demo_shared),
    {ok, Sup2} = shoal_shared:start_link(demo_shared, ?MODULE, 0, #{size => 1, max => 5}),
    unlink(Sup2),
    Self = self(),
    [spawn(fun() -> Self ! {bp, shoal_shared:call(demo_shared, {hold, 200})} end) || _ <- lists:seq(1, 10)],
    Answers = [receive {bp, A} -> A end || _ <- lists:seq(1, 10)],
    say("   1 worker, max 5 queued, 10 slow calls at once: ~b ok, ~b {error, too_many_requests}~n",
        [length([a || ok <- Answers]), length([a || {error, too_many_requests} <- Answers])]),
    ok = shoal_shared:stop(demo_shared).

%%% 3. Tasks ------------------------------------------------------------------------------

tasks() ->
    {ok, Pid} = shoal_tasks:start_link(demo_tasks, #{limit => 4}),
    unlink(Pid),
    Running = counters:new(2, []),
    Task = fun(I) -> fun() ->
                             counters:add(Running, 1, 1),
                             Now = counters:get(Running, 1),
                             Max = counters:get(Running, 2),
                             Now > Max andalso counters:put(Running, 2, Now),
                             timer:sleep(20),
                             counters:sub(Running, 1, 1),
                             I * I
                     end end,
    Refs = [shoal_tasks:run(demo_tasks, Task(I)) || I <- lists:seq(1, 20)],
    Results = shoal_tasks:await_many(demo_tasks, Refs, 5000),
    say("   20 tasks, limit 4: at most ~b ran at once; results in request order: ~w...~n",
        [counters:get(Running, 2), lists:sublist(Results, 5)]),
    Bad = shoal_tasks:run(demo_tasks, fun() -> error(boom) end),
    {error, {C, R, _}} = shoal_tasks:await(demo_tasks, Bad, 5000),
    say("   a task that raises gives its awaiter {error, {~p, ~p, Stack}}~n", [C, R]),
    ok = shoal_tasks:stop(demo_tasks).

%%% 4. Batcher ----------------------------------------------------------------------------

batcher() ->
    {ok, Sup} = shoal_batcher:start_link(demo_batcher, #{handler => ?MODULE, args => self(),
                                                         limit => 100, timeout => 1000}),
    unlink(Sup),
    [ok = shoal_batcher:push(demo_batcher, I) || I <- lists:seq(1, 1000)],
    ok = shoal_batcher:flush(demo_batcher),
    Batches = collect_batches(),
    say("   1,000 pushes, limit 100: ~b batches, in order: ~w~n",
        [length(Batches), lists:append(Batches) =:= lists:seq(1, 1000)]),
    ok = shoal_batcher:stop(demo_batcher).

collect_batches() ->
    receive {batch, B} -> [B | collect_batches()]
    after 0 -> []
    end.

%%% 5. Cron -------------------------------------------------------------------------------

cron() ->
    Fri = {{2023, 12, 29}, {9, 30, 0}},
    say("   next \"30 9 * * MON-FRI\" after Friday ~w: ~w~n",
        [Fri, shoal_cron:next("30 9 * * MON-FRI", Fri)]),
    say("   next \"0 0 29 2 *\" after 2024-03-01: ~w~n",
        [shoal_cron:next("0 0 29 2 *", {{2024, 3, 1}, {0, 0, 0}})]),
    %% A whole day of a quarter-hourly job, on a manual clock: no waiting.
    {ok, Clock} = shoal_manual_clock:start(1704067200000),
    {ok, P} = shoal_cron:start_link(demo_day, #{clock => {shoal_manual_clock, Clock},
                                                jobs => [{quarterly, "*/15 * * * *", fun() -> ok end}]}),
    unlink(P),
    N = shoal_manual_clock:advance(Clock, 24 * 3600 * 1000),
    say("   a day of \"*/15 * * * *\" on a manual clock: ~b firings~n", [N]),
    ok = shoal_cron:stop(demo_day),
    ok = shoal_manual_clock:stop(Clock),
    %% A real one: firings land on whole seconds.
    Self = self(),
    {ok, P2} = shoal_cron:start_link(demo_real, #{jobs => [{tick, 500, fun() -> Self ! {tick, os:system_time(millisecond)} end}]}),
    unlink(P2),
    Ticks = [receive {tick, T} -> T after 3000 -> timeout end || _ <- [1, 2, 3]],
    say("   a 500 ms job, ms past the whole second at each firing: ~w~n",
        [[T rem 1000 || T <- Ticks, is_integer(T)]]),
    ok = shoal_cron:stop(demo_real).

%%% 6. Cluster cron -----------------------------------------------------------------------

cluster_cron() ->
    case node() of
        nonode@nohost -> say("   (skipped: this node is not distributed)~n", []);
        _ -> cluster_cron_on_peers()
    end.

cluster_cron_on_peers() ->
    Path = filename:dirname(code:which(?MODULE)),
    Args = ["-setcookie", atom_to_list(erlang:get_cookie()),
            "-pa", code:lib_dir(shoal, ebin), "-pa", Path],
    Peers = [begin
                 Name = list_to_atom(lists:concat(["shoal_tools_demo_", os:getpid(), "_", I])),
                 {ok, Peer, Node} = peer:start(#{name => Name, args => Args}),
                 {Peer, Node}
             end || I <- [1, 2, 3]],
    Nodes = [N || {_, N} <- Peers],
    try
        [ok = erpc:call(N, logger, set_primary_config, [level, critical]) || N <- Nodes],
        [true = erpc:call(A, net_kernel, connect_node, [B]) || A <- Nodes, B <- Nodes, A < B],
        Opts = #{cluster => true,
                 jobs => [{heartbeat, 500, {?MODULE, ran_on, [self()]}}]},
        [ok = erpc:call(N, ?MODULE, p_start_cron, [demo_cluster_cron, Opts]) || N <- Nodes],
        Pool = shoal_cron:pool_name(demo_cluster_cron),
        Host = wait_for(fun() ->
                                Views = [catch erpc:call(N, shoal, whereis, [Pool, demo_cluster_cron]) || N <- Nodes],
                                case lists:usort(Views) of [H] when is_pid(H) -> H; _ -> false end
                        end),
        say("   started on 3 nodes; the one scheduler lives on ~p~n", [node(Host)]),
        Before = ran_ons(4),
        say("   4 firings ran on: ~w~n", [Before]),
        true = erlang:monitor_node(node(Host), true),
        erpc:cast(node(Host), erlang, halt, []),
        receive {nodedown, _} -> ok after 10000 -> error(node_did_not_go_down) end,
        say("   halted ~p (the scheduler's node)~n", [node(Host)]),
        flush_ran_ons(),
        After = ran_ons(4),
        say("   the next 4 firings ran on: ~w~n", [After]),
        true = lists:all(fun(N) -> N =/= node(Host) end, After)
    after
        [catch peer:stop(Peer) || {Peer, _} <- Peers]
    end.

p_start_cron(Name, Opts) ->
    Self = self(),
    spawn(fun() -> {ok, _} = shoal_cron:start_link(Name, Opts), Self ! started,
                   receive never -> ok end end),
    receive started -> ok end.

ran_on(To) -> To ! {ran_on, node()}, ok.

ran_ons(N) -> [receive {ran_on, Node} -> Node after 10000 -> timeout end || _ <- lists:seq(1, N)].

flush_ran_ons() ->
    receive {ran_on, _} -> flush_ran_ons()
    after 0 -> ok
    end.

%%% Helpers -------------------------------------------------------------------------------

par(N, Fun) ->
    Self = self(),
    Pids = [spawn_link(fun() -> Fun(), Self ! {done, self()} end) || _ <- lists:seq(1, N)],
    [receive {done, P} -> ok end || P <- Pids],
    ok.

wait_for(F) -> wait_for(F, 500).
wait_for(_F, 0) -> error(timeout);
wait_for(F, N) ->
    case F() of
        false -> timer:sleep(10), wait_for(F, N - 1);
        V -> V
    end.

say(Fmt, Args) -> io:format(Fmt, Args).
