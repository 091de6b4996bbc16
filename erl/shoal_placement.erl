%% @doc Where keys live: the home node that arbitrates a key's spawn, and the host node a
%% new worker is placed on.
%%
%% Both are rendezvous (highest random weight) hashes over the canonical key hash, so every
%% node computes the same answer from the same member list, and a member joining or leaving
%% moves only the keys whose winner changed. The host choice is weighted by how far each
%% node is below its window: see choose/2.
-module(shoal_placement).

-export([home/2, rank/2, choose/2, default_window/0]).
-export_type([window/0, candidate/0]).

-type window() :: #{low := non_neg_integer(), target := non_neg_integer() | infinity,
                    high := non_neg_integer() | infinity}.
-type candidate() :: {node(), Count :: non_neg_integer(), window(), Drained :: boolean()}.

-define(TWO64, 18446744073709551616).

%% @doc The window a node has until set_target/3 says otherwise: no limits.
-spec default_window() -> window().
default_window() -> #{low => 0, target => infinity, high => infinity}.

%% @doc The member that arbitrates Key: the highest rank.
-spec home(term(), [node(), ...]) -> node().
home(_Key, [N]) -> N;
home(Key, [N | Ns]) ->
    element(2, lists:max([{rank(Key, M), M} || M <- [N | Ns]])).

%% @doc Node's rendezvous score for Key (also the tie-break of conflicts: higher wins).
-spec rank(term(), node()) -> non_neg_integer().
rank(Key, Node) -> shoal_nif:hash({Key, Node}).

%% @doc The node a new worker for Key goes to. Nodes that are drained, or at or over
%% `high', take none. Among nodes below `target', the choice is a weighted rendezvous hash
%% with weight `target - count' (so the node furthest below target is the most likely, yet
%% concurrent spawns from several nodes do not all pile onto it, and equal windows spread
%% keys evenly); if every node has reached its target, the same over `high - count'.
-spec choose(term(), [candidate()]) -> {ok, node()} | {error, no_capacity}.
choose(Key, Candidates) ->
    Open = [C || {_, Count, #{high := H}, Drained} = C <- Candidates,
                 not Drained, H =:= infinity orelse Count < H],
    Below = [{N, room(T, Count)} || {N, Count, #{target := T}, _} <- Open,
                                    T =:= infinity orelse Count < T],
    case Below of
        [_ | _] -> {ok, weighted(Key, Below)};
        [] ->
            case [{N, room(H, Count)} || {N, Count, #{high := H}, _} <- Open] of
                [] -> {error, no_capacity};
                Rooms -> {ok, weighted(Key, Rooms)}
            end
    end.

room(infinity, _) -> 1.0e12;
room(Limit, Count) -> float(Limit - Count).

weighted(Key, NodeWeights) ->
    {_, Node} = lists:max([{W / -math:log((rank(Key, N) + 1) / (?TWO64 + 1)), N}
                           || {N, W} <- NodeWeights]),
    Node.
