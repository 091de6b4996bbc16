%% shoal_super_cluster_SUITE: groups and chains placed over a Shoal cluster of three real
%% OTP `peer' nodes (real distribution, real epmd). The supervisor runs on the first peer
%% (the owner); the CT node is connected to the peers (so on_finish and members can send
%% to the test process) but is not a member of the host pool.
%%
%% Before any traffic, every case waits until shoal:nodes(Pool) is the same three nodes on
%% every peer (placement only uses members the owner knows, and the cases expect steps and
%% workers on all three).
%%
%% Node loss is a `kill -9' of the peer's OS process while items flow, and the claim of
%% docs/tools.md is checked item by item: every accepted item gets exactly one outcome;
%% with at_most_once, those the dead node held are reported `lost' and no step ran twice
%% for any item; with at_least_once, every item ends `ok'.
-module(shoal_super_cluster_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, groups/0, suite/0, init_per_suite/1, end_per_suite/1, init_per_group/2,
         end_per_group/2, init_per_testcase/2, end_per_testcase/2]).
-export([spread_members_run_on_every_node_and_get_messages/1,
         pinned_members_run_where_asked/1,
         a_one_for_all_group_across_nodes_restarts_together/1,
         chain_hand_off_crosses_nodes/1,
         an_auto_scaled_step_grows_onto_other_nodes_and_shrinks_back/1,
         drain_moves_members_and_steps_without_dropping_queued_items/1,
         lost_node_members_restart_on_survivors/1,
         node_killed_mid_traffic_at_most_once/1,
         node_killed_mid_traffic_at_least_once/1]).
%% Run on the peers.
-export([p_start/2, echo/1, producer/5]).

-define(POOL, ss_hosts).
-define(SUP, ss_cluster).

suite() -> [{timetrap, {seconds, 120}}].

all() -> [{group, mesh}, {group, failures}].

groups() ->
    [{mesh, [], [spread_members_run_on_every_node_and_get_messages,
                 pinned_members_run_where_asked,
                 a_one_for_all_group_across_nodes_restarts_together,
                 chain_hand_off_crosses_nodes,
                 an_auto_scaled_step_grows_onto_other_nodes_and_shrinks_back,
                 drain_moves_members_and_steps_without_dropping_queued_items]},
     %% These kill a node: each starts its own three.
     {failures, [], [lost_node_members_restart_on_survivors,
                     node_killed_mid_traffic_at_most_once,
                     node_killed_mid_traffic_at_least_once]}].

init_per_suite(Config) ->
    case is_alive() of
        false -> {skip, "the CT node must be distributed (scripts/erl_test.sh starts it so)"};
        true ->
            {ok, _} = application:ensure_all_started(shoal),
            Paths = lists:usort([code:lib_dir(shoal, ebin), filename:dirname(code:which(?MODULE))]),
            [{paths, Paths} | Config]
    end.

end_per_suite(_Config) -> ok.

init_per_group(mesh, Config) -> [{peers, start_cluster(Config)} | Config];
init_per_group(_, Config) -> Config.

end_per_group(mesh, Config) -> stop_cluster(?config(peers, Config));
end_per_group(_, _Config) -> ok.

init_per_testcase(_Case, Config0) ->
    Config = case proplists:get_value(peers, Config0) of
                 undefined -> [{peers, start_cluster(Config0)}, {own_peers, true} | Config0];
                 _ -> Config0
             end,
    [A | _] = nodes_of(Config),
    {ok, _} = erpc:call(A, ?MODULE, p_start, [?SUP, #{cluster => ?POOL}]),
    Config.

end_per_testcase(_Case, Config) ->
    [A | _] = nodes_of(Config),
    catch erpc:call(A, shoal_super, stop, [?SUP]),
    case proplists:get_value(own_peers, Config) of
        true -> stop_cluster(?config(peers, Config));
        _ -> ok
    end.

%%% The cluster ---------------------------------------------------------------------------

%% Three peers, connected pairwise, each running the host pool; returns once every peer's
%% shoal:nodes/1 lists all three.
start_cluster(Config) ->
    Args = ["-setcookie", atom_to_list(erlang:get_cookie()),
            "-kernel", "prevent_overlapping_partitions", "false"
            | lists:append([["-pa", P] || P <- ?config(paths, Config)])],
    Peers = [begin
                 {ok, Pid, Node} = peer:start(#{name => peer:random_name(ss_cl), args => Args}),
                 {Pid, Node}
             end || _ <- [1, 2, 3]],
    Nodes = [N || {_, N} <- Peers],
    [true = erpc:call(N, net_kernel, connect_node, [M]) || N <- Nodes, M <- Nodes, M > N],
    [ok = erpc:call(N, shoal_super, start_host_pool, [?POOL]) || N <- Nodes],
    All = lists:sort(Nodes),
    [wait_until(fun() -> erpc:call(N, shoal, nodes, [?POOL]) =:= All end, 10000, {members, N})
     || N <- Nodes],
    Peers.

stop_cluster(Peers) ->
    [catch peer:stop(P) || {P, _} <- Peers],
    ok.

nodes_of(Config) -> [N || {_, N} <- ?config(peers, Config)].

%% kill -9 the peer running Node.
kill_node(Node) ->
    OsPid = erpc:call(Node, os, getpid, []),
    _ = os:cmd("kill -9 " ++ OsPid),
    wait_until(fun() -> not lists:member(Node, nodes()) end, 10000, {dead, Node}).

%% Start the supervisor on a peer, not linked to the erpc process that asks.
p_start(Id, Opts) ->
    {ok, Pid} = shoal_super:start_link(Id, Opts),
    unlink(Pid),
    {ok, Pid}.

%% A member: answers pings with its node, runs funs inside itself.
echo(Tag) ->
    receive
        {ping, From} -> From ! {pong, Tag, node(), self()}, echo(Tag);
        {inside, From, F} -> From ! {inside, Tag, F()}, echo(Tag);
        crash -> exit(crash);
        _ -> echo(Tag)
    end.

call(Config, M, F, A) ->
    [Owner | _] = nodes_of(Config),
    erpc:call(Owner, M, F, A, 30000).

super(Config, F, A) -> call(Config, shoal_super, F, [?SUP | A]).

members(Config, G) ->
    {ok, Ws} = super(Config, group_workers, [G]),
    Ws.

ping(Pid) ->
    Pid ! {ping, self()},
    receive {pong, _, Node, Pid} -> Node after 10000 -> ct:fail({no_pong, Pid}) end.

wait_until(F, Ms, What) ->
    Deadline = erlang:monotonic_time(millisecond) + Ms,
    wait_until_(F, Deadline, What).
wait_until_(F, Deadline, What) ->
    case catch F() of
        true -> ok;
        _ ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true -> ct:fail({timeout_waiting_for, What});
                false -> timer:sleep(20), wait_until_(F, Deadline, What)
            end
    end.

collector() -> Self = self(), fun(O) -> Self ! {fin, O} end.

collect(0, _) -> [];
collect(N, T) ->
    receive {fin, O} -> [O | collect(N - 1, T)]
    after T -> ct:fail({outcomes_missing, N})
    end.

no_more_outcomes() ->
    receive {fin, O} -> ct:fail({extra_outcome, O}) after 500 -> ok end.

step_nodes(Config, C, S) ->
    {ok, #{steps := Steps}} = super(Config, chain_info, [C]),
    #{nodes := Ns, workers := W} = hd([X || #{id := Id} = X <- Steps, Id =:= S]),
    {W, Ns}.

%%% The mesh ------------------------------------------------------------------------------

spread_members_run_on_every_node_and_get_messages(Config) ->
    Nodes = nodes_of(Config),
    ok = super(Config, add_group, [g, #{placement => spread}]),
    [{ok, _} = super(Config, add_group_worker, [g, {?MODULE, echo, [W]}, #{id => W}]) || W <- [a, b, c]],
    Ws = members(Config, g),
    ?assertEqual(lists:sort(Nodes), lists:sort([node(P) || {_, P} <- Ws])),
    %% Direct, random and broadcast messages reach them wherever they run.
    [?assertEqual(node(P), ping(P)) || {_, P} <- Ws],
    ok = super(Config, send_to_group, [g, b, {ping, self()}]),
    {b, B} = lists:keyfind(b, 1, Ws),
    receive {pong, b, _, B} -> ok after 10000 -> ct:fail(no_pong) end,
    ok = super(Config, broadcast, [g, {ping, self()}]),
    ?assertEqual([a, b, c], lists:sort([receive {pong, T, _, _} -> T after 10000 -> ct:fail(no_pong) end
                                        || _ <- [1, 2, 3]])),
    [ok = super(Config, send_to_random, [g, {ping, self()}]) || _ <- lists:seq(1, 60)],
    ?assertEqual([a, b, c], lists:usort([receive {pong, T, _, _} -> T after 10000 -> ct:fail(no_pong) end
                                         || _ <- lists:seq(1, 60)])),
    %% From inside a remote member: its context, a sibling, the whole group.
    {a, A} = lists:keyfind(a, 1, Ws),
    Self = self(),
    Inside = fun(P, F) -> P ! {inside, Self, F}, receive {inside, _, R} -> R after 10000 -> ct:fail(no_answer) end end,
    [Owner | _] = Nodes,
    ?assertEqual({ok, #{sup => ?SUP, owner => Owner, group => g, id => c}},
                 Inside(element(2, lists:keyfind(c, 1, Ws)), fun shoal_super:my_group/0)),
    ?assertEqual(ok, Inside(element(2, lists:keyfind(c, 1, Ws)),
                            fun() -> shoal_super:send_to_my_group(a, {ping, Self}) end)),
    receive {pong, a, _, A} -> ok after 10000 -> ct:fail(no_sibling_pong) end,
    ?assertEqual(ok, Inside(B, fun() -> shoal_super:broadcast_to_my_group({ping, Self}) end)),
    ?assertEqual([a, b, c], lists:sort([receive {pong, T, _, _} -> T after 10000 -> ct:fail(no_pong) end
                                        || _ <- [1, 2, 3]])),
    [?assertEqual(ok, Inside(B, fun() -> shoal_super:send_to_random_sibling({ping, Self}) end))
     || _ <- lists:seq(1, 30)],
    ?assertEqual([a, c], lists:usort([receive {pong, T, _, _} -> T after 10000 -> ct:fail(no_pong) end
                                      || _ <- lists:seq(1, 30)])).

pinned_members_run_where_asked(Config) ->
    [_, _, C] = nodes_of(Config),
    ok = super(Config, add_group, [g, #{placement => #{node => C}}]),
    [{ok, _} = super(Config, add_group_worker, [g, {?MODULE, echo, [W]}, #{id => W}]) || W <- [a, b]],
    %% A member may choose its own placement.
    {ok, L} = super(Config, add_group_worker, [g, {?MODULE, echo, [l]}, #{id => l, placement => local}]),
    [Owner | _] = nodes_of(Config),
    ?assertEqual(Owner, node(L)),
    ?assertEqual([C, C, Owner], [node(P) || {_, P} <- members(Config, g)]),
    [?assertEqual(node(P), ping(P)) || {_, P} <- members(Config, g)].

a_one_for_all_group_across_nodes_restarts_together(Config) ->
    ok = super(Config, add_group, [g, #{restart => one_for_all, placement => spread}]),
    [{ok, _} = super(Config, add_group_worker, [g, {?MODULE, echo, [W]}, #{id => W}]) || W <- [a, b, c]],
    ok = super(Config, add_group, [other, #{placement => spread}]),
    {ok, O} = super(Config, add_group_worker, [other, {?MODULE, echo, [o]}, #{id => o}]),
    Old = [P || {_, P} <- members(Config, g)],
    %% A crash on a remote node takes exactly its group down, on every node.
    [Remote | _] = [P || P <- Old, node(P) =/= hd(nodes_of(Config))],
    Remote ! crash,
    wait_until(fun() ->
                       New = [P || {_, P} <- members(Config, g)],
                       length(New) =:= 3 andalso lists:all(fun is_pid/1, New) andalso
                           [P || P <- New, lists:member(P, Old)] =:= []
               end, 20000, restarted),
    [ok = case rpc:call(node(P), erlang, is_process_alive, [P]) of false -> ok; true -> {alive, P} end
     || P <- Old],
    [_ = ping(P) || {_, P} <- members(Config, g)],
    ?assertEqual([{o, O}], members(Config, other)).

chain_hand_off_crosses_nodes(Config) ->
    Nodes = nodes_of(Config),
    Self = self(),
    ok = super(Config, add_chain, [c, #{placement => spread, on_finish => collector()}]),
    [ok = super(Config, add_chain_step, [c, fun(X) -> [{S, node()} | X] end, #{id => S, workers => 3}])
     || S <- [s1, s2, s3]],
    [?assertEqual({3, lists:sort(Nodes)}, step_nodes(Config, c, S)) || S <- [s1, s2, s3]],
    N = 300,
    [ok = super(Config, send_to_chain, [c, []]) || _ <- lists:seq(1, N)],
    Outcomes = collect(N, 20000),
    Paths = [lists:reverse(P) || {ok, P} <- Outcomes],
    ?assertEqual(N, length(Paths)),
    ?assertEqual([[s1, s2, s3]], lists:usort([[S || {S, _} <- P] || P <- Paths])),
    %% Items went through every node, and hopped between nodes.
    ?assertEqual(lists:sort(Nodes), lists:usort([Nd || P <- Paths, {_, Nd} <- P])),
    ?assert(lists:any(fun([{_, X}, {_, Y} | _]) -> X =/= Y end, Paths)),
    %% A step added later on a given node joins the chain.
    [_, _, C] = Nodes,
    ok = super(Config, add_chain_step, [c, fun(X) -> {tail, node(), X} end, #{id => tail, placement => #{node => C}}]),
    ok = super(Config, send_to_chain, [c, []]),
    ?assertMatch([{ok, {tail, C, [_, _, _]}}], collect(1, 10000)),
    no_more_outcomes(),
    {ok, #{in_flight := 0}} = super(Config, chain_info, [c]),
    _ = Self.

an_auto_scaled_step_grows_onto_other_nodes_and_shrinks_back(Config) ->
    Nodes = nodes_of(Config),
    ok = super(Config, add_chain, [c, #{placement => spread, on_finish => collector(), max_queue => 5000}]),
    ok = super(Config, add_chain_step, [c, fun(X) -> timer:sleep(2), X end,
                                        #{id => s, workers => #{min => 1, max => 3, scale_interval => 50,
                                                                idle_after => 300}}]),
    {1, _} = step_nodes(Config, c, s),
    N = 2000,
    [ok = super(Config, send_to_chain, [c, I]) || I <- lists:seq(1, N)],
    wait_until(fun() -> step_nodes(Config, c, s) =:= {3, lists:sort(Nodes)} end, 20000, grown),
    ?assertEqual(lists:seq(1, N), lists:sort([X || {ok, X} <- collect(N, 60000)])),
    %% Idle: the remote workers retire (each after its senders switched), back to one.
    wait_until(fun() -> element(1, step_nodes(Config, c, s)) =:= 1 end, 20000, shrunk),
    [ok = super(Config, send_to_chain, [c, I]) || I <- lists:seq(1, 100)],
    ?assertEqual(lists:seq(1, 100), lists:sort([X || {ok, X} <- collect(100, 20000)])),
    no_more_outcomes(),
    {ok, #{in_flight := 0}} = super(Config, chain_info, [c]).

%% Drain a node while its step workers hold queued items and a group has members there:
%% the items are all delivered (exactly once), and nothing of ours is left on it.
drain_moves_members_and_steps_without_dropping_queued_items(Config) ->
    [_, _, C] = Nodes = nodes_of(Config),
    ok = super(Config, add_group, [g, #{placement => #{node => C}}]),
    [{ok, _} = super(Config, add_group_worker, [g, {?MODULE, echo, [W]}, #{id => W}]) || W <- [a, b]],
    ok = super(Config, add_chain, [c, #{placement => spread, on_finish => collector(), max_queue => 5000}]),
    ok = super(Config, add_chain_step, [c, fun(X) -> X end, #{id => in, workers => 3}]),
    ok = super(Config, add_chain_step, [c, fun(X) -> timer:sleep(2), {X, node()} end, #{id => slow, workers => 3}]),
    {3, _} = step_nodes(Config, c, slow),
    N = 1500,
    [ok = super(Config, send_to_chain, [c, I]) || I <- lists:seq(1, N)],
    %% Items are queued on C when the drain starts.
    ok = call(Config, shoal, drain, [?POOL, C]),
    Outcomes = collect(N, 60000),
    ?assertEqual(lists:seq(1, N), lists:sort([X || {ok, {X, _}} <- Outcomes])),
    no_more_outcomes(),
    ?assert(lists:any(fun({ok, {_, Nd}}) -> Nd =:= C end, Outcomes)),     %% C had work
    [?assertMatch({3, Ns} when Ns =/= [], step_nodes(Config, c, S)) || S <- [in, slow]],
    [?assertNot(lists:member(C, element(2, step_nodes(Config, c, S)))) || S <- [in, slow]],
    Members = members(Config, g),
    ?assertEqual([], [P || {_, P} <- Members, node(P) =:= C]),
    [_ = ping(P) || {_, P} <- Members],
    %% The chain still runs, off C.
    [ok = super(Config, send_to_chain, [c, I]) || I <- lists:seq(1, 30)],
    ?assertEqual([], [Nd || {ok, {_, Nd}} <- collect(30, 20000), Nd =:= C]),
    ok = call(Config, shoal, undrain, [?POOL, C]),
    _ = Nodes.

%%% Failures ------------------------------------------------------------------------------

lost_node_members_restart_on_survivors(Config) ->
    [A, B, C] = nodes_of(Config),
    ok = super(Config, add_group, [one, #{restart => one_for_one, placement => spread}]),
    ok = super(Config, add_group, [all, #{restart => one_for_all, placement => spread}]),
    [{ok, _} = super(Config, add_group_worker, [G, {?MODULE, echo, [W]}, #{id => W}])
     || G <- [one, all], W <- [x, y, z]],
    One = members(Config, one),
    All = members(Config, all),
    [OnC] = [W || {W, P} <- One, node(P) =:= C],
    kill_node(C),
    %% one_for_one: just the member that was on C, now on a survivor.
    wait_until(fun() ->
                       Now = members(Config, one),
                       {OnC, P} = lists:keyfind(OnC, 1, Now),
                       is_pid(P) andalso lists:member(node(P), [A, B])
               end, 20000, one_for_one_back),
    ?assertEqual([P || {W, P} <- One, W =/= OnC], [P || {W, P} <- members(Config, one), W =/= OnC]),
    %% one_for_all: the whole group, all on survivors.
    wait_until(fun() ->
                       Now = [P || {_, P} <- members(Config, all)],
                       length(Now) =:= 3 andalso lists:all(fun is_pid/1, Now) andalso
                           [P || {_, P} <- All, lists:member(P, Now)] =:= [] andalso
                           lists:all(fun(P) -> lists:member(node(P), [A, B]) end, Now)
               end, 20000, one_for_all_back),
    [_ = ping(P) || G <- [one, all], {_, P} <- members(Config, G)].

node_killed_mid_traffic_at_most_once(Config) ->
    killed_mid_traffic(Config, at_most_once).

node_killed_mid_traffic_at_least_once(Config) ->
    killed_mid_traffic(Config, at_least_once).

%% Three steps with three workers each, one on each node; a producer on the owner sends N
%% items; the third node is killed when a third of them are in.
killed_mid_traffic(Config, Delivery) ->
    [A, B, C] = nodes_of(Config),
    Self = self(),
    Step = fun(S) -> fun(X) -> Self ! {ran, S, X}, timer:sleep(1), X end end,
    ok = super(Config, add_chain, [c, #{placement => spread, on_finish => collector(),
                                       max_queue => 300, delivery => Delivery}]),
    [ok = super(Config, add_chain_step, [c, Step(S), #{id => S, workers => 3}]) || S <- [s1, s2, s3]],
    [?assertEqual({3, lists:sort([A, B, C])}, begin {W, Ns} = step_nodes(Config, c, S), {W, lists:sort(Ns)} end)
     || S <- [s1, s2, s3]],
    N = 3000,
    Mark = N div 3,
    _ = erpc:call(A, erlang, spawn, [?MODULE, producer, [?SUP, c, N, Self, Mark]]),
    receive {produced, Mark} -> ok after 60000 -> ct:fail(producer_slow) end,
    kill_node(C),
    receive {produced, done, Results} -> ?assertEqual([ok], lists:usort(Results))
    after 60000 -> ct:fail(producer_stuck)
    end,
    Outcomes = collect(N, 60000),
    no_more_outcomes(),
    Ran = ran(),
    ByItem = lists:foldl(fun(O, Acc) -> maps:update_with(item(O), fun(L) -> [O | L] end, [O], Acc) end,
                         #{}, Outcomes),
    %% Every accepted item: exactly one outcome.
    ?assertEqual(lists:seq(1, N), lists:sort(maps:keys(ByItem))),
    ?assertEqual([1], lists:usort([length(L) || L <- maps:values(ByItem)])),
    Lost = [X || {lost, _, _, X} <- Outcomes],
    ct:pal("~p: ~b items, ~b lost with ~p, ~b step runs repeated",
           [Delivery, N, length(Lost), C, length([K || {K, R} <- maps:to_list(Ran), R > 1])]),
    case Delivery of
        at_most_once ->
            ?assert(Lost =/= []),
            ?assertEqual([{nodedown, C}], lists:usort([Why || {lost, _, Why, _} <- Outcomes])),
            ?assertEqual(lists:seq(1, N), lists:sort(Lost ++ [X || {ok, X} <- Outcomes])),
            %% At most once: no step ran twice for any item.
            ?assertEqual([], [K || {K, R} <- maps:to_list(Ran), R > 1]);
        at_least_once ->
            ?assertEqual([], Lost),
            ?assertEqual(lists:seq(1, N), lists:sort([X || {ok, X} <- Outcomes]))
    end,
    %% The chain is whole again, on the survivors.
    wait_until(fun() ->
                       lists:all(fun(S) -> {W, Ns} = step_nodes(Config, c, S),
                                           W =:= 3 andalso lists:usort(Ns -- [A, B]) =:= []
                                 end, [s1, s2, s3])
               end, 20000, chain_whole),
    {ok, #{in_flight := 0}} = super(Config, chain_info, [c]).

item({ok, X}) -> X;
item({lost, _, _, X}) -> X;
item(Other) -> ct:fail({unexpected_outcome, Other}).

%% How often each (step, item) ran, from the {ran, S, X} messages that arrived.
ran() -> ran(#{}).
ran(Acc) ->
    receive {ran, S, X} -> ran(maps:update_with({S, X}, fun(K) -> K + 1 end, 1, Acc))
    after 0 -> Acc
    end.

%% On the owner: send 1..N into chain C (waiting for room as long as it takes), telling
%% To when Mark items are in, and the results at the end.
producer(Sup, C, N, To, Mark) ->
    Results = [begin
                   R = shoal_super:send_to_chain(Sup, C, I, infinity),
                   I =:= Mark andalso (To ! {produced, Mark}),
                   R
               end || I <- lists:seq(1, N)],
    To ! {produced, done, Results}.
