%% @doc shoal_cron with `cluster => true' on three real peer nodes (OTP `peer', real
%% distribution). The manual clock and the event collector live on the CT node, which
%% is connected to every peer but runs no pool, so killing a peer never takes them along.
%%
%% What is asserted is the documented claim, firing by firing: every firing runs exactly
%% once in the cluster, through a drain of the scheduler's node as well; when the node
%% hosting the scheduler dies, the run it had in progress runs again on a survivor (for
%% the same firing), the firings due while no node hosted the scheduler run once (for the
%% first of them), and every later firing runs exactly once.
%%
%% Before a case starts, it waits until shoal:nodes/1 agrees on every peer and every peer
%% resolves the scheduler to the same single pid (see the report printed by wait_single_host/2
%% for duplicates seen while the cluster formed).
-module(shoal_cron_cluster_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

-define(S, cluster_cron).
-define(T0, 1704067200000).
-define(WAIT, 15000).

suite() -> [{timetrap, {seconds, 180}}].

all() ->
    [every_firing_runs_once_in_the_cluster_and_through_a_drain,
     the_loss_of_the_hosting_node_reruns_its_run_and_collapses_the_gap].

init_per_suite(Config) ->
    {ok, _} = application:ensure_all_started(shoal),   % for the code paths only
    Paths = lists:usort([code:lib_dir(shoal, ebin), filename:dirname(code:which(?MODULE))]),
    [{paths, Paths} | Config].

end_per_suite(_Config) -> ok.

init_per_testcase(Case, Config) ->
    Peers = start_peers(Config, Case),
    {ok, C} = shoal_manual_clock:start(?T0 + 400),
    [{peers, Peers}, {clock, C} | Config].

end_per_testcase(_Case, Config) ->
    [catch peer:stop(P) || {P, _} <- ?config(peers, Config)],
    shoal_manual_clock:stop(?config(clock, Config)).

%%% Peers ---------------------------------------------------------------------------------

start_peers(Config, Tag) ->
    Base = lists:concat(["shoal_cron_", os:getpid(), "_", erlang:unique_integer([positive]), "_", Tag]),
    Args = ["-setcookie", atom_to_list(erlang:get_cookie())
            | lists:append([["-pa", P] || P <- ?config(paths, Config)])],
    Peers = [begin
                 {ok, Pid, Node} = peer:start(#{name => list_to_atom(Base ++ [$_, $a + I - 1]),
                                                args => Args}),
                 {Pid, Node}
             end || I <- [1, 2, 3]],
    Nodes = [N || {_, N} <- Peers],
    [true = erpc:call(N, net_kernel, connect_node, [M]) || N <- Nodes, M <- Nodes, M > N],
    [ok = erpc:call(N, logger, set_primary_config, [level, critical]) || N <- Nodes],
    Peers.

nodes_of(Config) -> [N || {_, N} <- ?config(peers, Config)].

%% On a peer: start the scheduler under a process that lives as long as the node.
p_start(Name, Opts) ->
    Self = self(),
    spawn(fun() ->
                  R = shoal_cron:start_link(Name, Opts),
                  Self ! {started, R},
                  receive never -> ok end
          end),
    receive {started, R} -> R end.

start_everywhere(Config, Jobs) ->
    Opts = #{cluster => true, clock => {shoal_manual_clock, ?config(clock, Config)},
             notify => self(), jobs => Jobs},
    [{ok, _} = erpc:call(N, ?MODULE, p_start, [?S, Opts]) || N <- nodes_of(Config)],
    Pool = shoal_cron:pool_name(?S),
    Nodes = lists:sort(nodes_of(Config)),
    wait_until(fun() -> [lists:sort(erpc:call(N, shoal, nodes, [Pool])) || N <- Nodes] =:=
                            [Nodes, Nodes, Nodes] end, members_agree),
    wait_single_host(Config, Pool).

%% Every peer resolves the scheduler to one and the same pid, and that pid is the only
%% worker of the internal pool.
wait_single_host(Config, Pool) ->
    Seen = wait_single_host(Config, Pool, erlang:monotonic_time(millisecond) + ?WAIT, []),
    Host = erpc:call(hd(nodes_of(Config)), shoal, whereis, [Pool, ?S]),
    ct:pal("scheduler hosted on ~p; distinct hosts seen while the cluster formed: ~p",
           [node(Host), Seen]),
    Host.

wait_single_host(Config, Pool, Deadline, Seen) ->
    Views = [erpc:call(N, shoal, whereis, [Pool, ?S]) || N <- nodes_of(Config)],
    Counts = [erpc:call(N, shoal, count, [Pool, N]) || N <- nodes_of(Config)],
    Seen1 = lists:usort([V || V <- Views, is_pid(V)] ++ Seen),
    case lists:usort(Views) of
        [P] when is_pid(P), Counts =/= [] ->
            case lists:sum(Counts) of
                1 -> Seen1;
                _ -> retry_host(Config, Pool, Deadline, Seen1)
            end;
        _ -> retry_host(Config, Pool, Deadline, Seen1)
    end.

retry_host(Config, Pool, Deadline, Seen) ->
    case erlang:monotonic_time(millisecond) > Deadline of
        true -> ct:fail({no_single_host, Seen});
        false -> receive after 10 -> wait_single_host(Config, Pool, Deadline, Seen) end
    end.

wait_until(F, What) -> wait_until(F, What, erlang:monotonic_time(millisecond) + ?WAIT).
wait_until(F, What, Deadline) ->
    case catch F() of
        true -> ok;
        _ ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true -> ct:fail({timeout_waiting_for, What});
                false -> receive after 10 -> wait_until(F, What, Deadline) end
            end
    end.

%%% The clock and the events --------------------------------------------------------------

%% Move the clock to the scheduler's next firing (asked on any peer); return the events
%% that came, once every started run of the jobs in `Await' has reported.
step(Config, Await) ->
    C = ?config(clock, Config),
    Jobs = erpc:call(hd(alive(Config)), shoal_cron, jobs, [?S]),
    Next = lists:min([N || #{next_ms := N} <- Jobs]),
    shoal_manual_clock:advance(C, Next - shoal_manual_clock:now_ms(C)),
    Events = drain(),
    Ended = [{J, T} || {E, J, T, _} <- Events, E =:= done orelse E =:= failed],
    Ends = [await_end(Config, J, T) || {started, J, T} <- Events, lists:member(J, Await),
                                       not lists:member({J, T}, Ended)],
    Events ++ Ends.

alive(Config) -> [N || N <- nodes_of(Config), lists:member(N, nodes())].

drain() ->
    receive {shoal_cron, ?S, Event} -> [Event | drain()]
    after 0 -> []
    end.

await_end(Config, J, T) ->
    receive
        {shoal_cron, ?S, {done, J, T, _} = E} -> E;
        {shoal_cron, ?S, {failed, J, T, _} = E} -> E
    after ?WAIT ->
            Pool = shoal_cron:pool_name(?S),
            ct:fail({no_end, J, T, erlang:process_info(self(), messages),
                     [{N, catch erpc:call(N, shoal_cron, jobs, [?S]),
                       catch erpc:call(N, shoal, whereis, [Pool, ?S]),
                       catch erpc:call(N, shoal, count, [Pool, N])} || N <- alive(Config)]})
    end.

%% The events until every one of Preds has accepted one of them (in whatever order they
%% come), all of them.
await_events([]) -> [];
await_events(Preds) ->
    receive
        {shoal_cron, ?S, Event} ->
            [Event | await_events([P || P <- Preds, not P(Event)])]
    after ?WAIT -> ct:fail({events_never_came, length(Preds)})
    end.

rel(Events) -> [setelement(3, E, element(3, E) - ?T0) || E <- Events].

ran_on() -> {ran_on, node()}.

%%% Cases ---------------------------------------------------------------------------------

every_firing_runs_once_in_the_cluster_and_through_a_drain(Config) ->
    Host = start_everywhere(Config, [{tick, 1000, {?MODULE, ran_on, []}}]),
    H = node(Host),
    Before = lists:append([step(Config, [tick]) || _ <- [1, 2, 3]]),
    %% Drain the scheduler's node: it moves with its state.
    Pool = shoal_cron:pool_name(?S),
    ok = erpc:call(H, shoal, drain, [Pool, H]),
    wait_until(fun() -> case lists:usort([erpc:call(N, shoal, whereis, [Pool, ?S])
                                          || N <- nodes_of(Config)]) of
                            [P] when is_pid(P) -> node(P) =/= H;
                            _ -> false
                        end end, moved),
    H2 = node(erpc:call(H, shoal, whereis, [Pool, ?S])),
    ?assertNotEqual(H, H2),
    %% Control from any node reaches the one scheduler.
    [Other | _] = nodes_of(Config) -- [H2],
    ok = erpc:call(Other, shoal_cron, add, [?S, added, 3000, {?MODULE, ran_on, []}]),
    After = lists:append([step(Config, [tick, added]) || _ <- [1, 2, 3]]),
    ?assertEqual([added, tick], lists:sort([N || #{name := N} <- erpc:call(H, shoal_cron, jobs, [?S])])),
    Started = [{J, T} || {started, J, T} <- rel(Before ++ After)],
    ?assertEqual([{tick, T} || T <- [1000, 2000, 3000, 4000, 5000, 6000]],
                 [S || {tick, _} = S <- Started]),
    ?assertEqual([{added, 6000}], [S || {added, _} = S <- Started]),
    Where = [{J, T, N} || {done, J, T, {ran_on, N}} <- rel(Before ++ After)],
    ?assertEqual([H, H, H], [N || {tick, T, N} <- Where, T =< 3000]),
    ?assertEqual([H2, H2, H2], [N || {tick, T, N} <- Where, T > 3000]),
    ?assertEqual([], [E || E <- Before ++ After, element(1, E) =:= skipped orelse element(1, E) =:= rerun]).

the_loss_of_the_hosting_node_reruns_its_run_and_collapses_the_gap(Config) ->
    Collector = self(),
    Slow = fun() -> Collector ! {slow_running, node(), self()}, receive never -> ok end end,
    Host = start_everywhere(Config, [{tick, 1000, {?MODULE, ran_on, []}}, {slow, 5000, Slow}]),
    H = node(Host),
    Before = lists:append([step(Config, [tick]) || _ <- [1, 2, 3, 4, 5]]),
    {slow_running, H, _} = receive {slow_running, _, _} = M -> M after ?WAIT -> ct:fail(no_slow) end,
    %% The clock moves on to T0 + 8.5 s while nobody looks, and the hosting node dies.
    C = ?config(clock, Config),
    ok = shoal_manual_clock:set(C, ?T0 + 8500),
    Survivors = nodes_of(Config) -- [H],
    {HostPeer, H} = lists:keyfind(H, 2, ?config(peers, Config)),
    Mon = erlang:monitor_node(H, true),
    erpc:cast(H, erlang, halt, []),
    receive {nodedown, H} -> ok after ?WAIT -> ct:fail(node_did_not_die) end,
    _ = {Mon, HostPeer},
    %% A survivor takes over: it reruns the interrupted run of `slow' (T0 + 5 s) and runs
    %% `tick' once for the first firing it missed (T0 + 6 s); 7 s and 8 s do not run.
    Gap = await_events([fun(E) -> element(1, E) =:= rerun end,
                        fun(E) -> element(1, E) =:= done andalso element(2, E) =:= tick end]),
    {slow_running, H2, _} = receive {slow_running, _, _} = M2 -> M2 after ?WAIT -> ct:fail(no_rerun) end,
    ?assert(lists:member(H2, Survivors)),
    After = lists:append([step(Config, [tick]) || _ <- [1, 2, 3]]),
    All = rel(Before ++ Gap ++ After),
    ct:pal("events: ~p", [All]),
    ?assertEqual([1000, 2000, 3000, 4000, 5000, 6000, 9000, 10000, 11000],
                 [T || {started, tick, T} <- All]),
    ?assertEqual([{1000, H}, {2000, H}, {3000, H}, {4000, H}, {5000, H}, {6000, H2},
                  {9000, H2}, {10000, H2}, {11000, H2}],
                 [{T, N} || {done, tick, T, {ran_on, N}} <- All]),
    ?assertEqual([5000], [T || {started, slow, T} <- All]),
    ?assertEqual([5000], [T || {rerun, slow, T} <- All]),
    ?assertEqual([10000], [T || {skipped, slow, T} <- All]),
    ?assertMatch([#{name := slow, running := 1}, #{name := tick, next_ms := ?T0 + 12000}],
                 erpc:call(hd(Survivors), shoal_cron, jobs, [?S])).
