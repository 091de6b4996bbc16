%% @doc A pool's cluster view on this node, as its member publishes it: the agreed view
%% and the gate that fences arbitration (docs/protocol.md, "Membership and views"), the
%% proposed member list, the peers' member pids, and the placement configuration (windows,
%% drains).
%%
%% The member (shoal_member) is the only writer; everything here is a read or the two gate
%% operations an arbitration brackets its table write with, except the asks table: a
%% caller that asks a peer's member notes the request there (ask/3, asked/2), and the
%% member answers `retry' to every request noted for a peer it loses (fail_asks/2), so the
%% caller needs no monitor of the peer (a remote monitor is two more messages on the wire). The gate is an `atomics' array:
%% slot 1 is the number of the active view (0 while the member is not active), slot 2
%% counts arbitrations between their check and their table write. The member closes the
%% gate (slot 1 := 0) and waits for slot 2 to drain before it proposes a new view.
-module(shoal_view).

-include("shoal_int.hrl").

-export([new_gate/0, enter/1, leave/1, active/1, await_active/2, close/1, open/3, inflight/1]).
-export([members/1, peer/2, await_peer/3, await_dropped/4, window/2, drained/2, candidates/1, candidates/2, plain/1,
         placement_changed/1]).
-export([register_over/5]).
-export([ask/3, asked/2, fail_asks/2]).

-define(G_VIEW, 1).
-define(G_INFLIGHT, 2).

%% @doc A closed gate.
-spec new_gate() -> atomics:atomics_ref().
new_gate() -> atomics:new(2, [{signed, true}]).

%% @doc Enter the gate: `{ok, Members}' of the active view, to be left with leave/1 once
%% the arbitration's table write is done; `inactive' (nothing to leave) otherwise.
-spec enter(#shoal_cfg{}) -> {ok, [node(), ...]} | inactive.
enter(#shoal_cfg{gate = G, ctab = CTab}) ->
    atomics:add(G, ?G_INFLIGHT, 1),
    case atomics:get(G, ?G_VIEW) of
        0 ->
            atomics:sub(G, ?G_INFLIGHT, 1),
            inactive;
        N ->
            %% The member writes the view before it opens the gate on it, and cannot
            %% replace it while we are inside.
            [{_, Members}] = ets:lookup(CTab, {view, N}),
            {ok, Members}
    end.

%% @doc Leave the gate entered with enter/1.
-spec leave(#shoal_cfg{}) -> ok.
leave(#shoal_cfg{gate = G}) ->
    atomics:sub(G, ?G_INFLIGHT, 1),
    ok.

%% @doc The members of the active view, or `inactive'. A read without entering: good for
%% answering users, not for arbitrating.
-spec active(#shoal_cfg{}) -> [node(), ...] | inactive.
active(#shoal_cfg{gate = G, ctab = CTab}) ->
    case atomics:get(G, ?G_VIEW) of
        0 -> inactive;
        N ->
            case ets:lookup(CTab, {view, N}) of
                [{_, Members}] -> Members;
                [] -> inactive
            end
    end.

%% @doc Wait until the member is active (or answer at once if it is): `ok', or
%% `{error, not_ready}' after Timeout.
-spec await_active(#shoal_cfg{}, timeout()) -> ok | {error, not_ready}.
await_active(#shoal_cfg{server = Name} = Cfg, Timeout) ->
    case active(Cfg) of
        inactive ->
            try gen_server:call(Name, await_active, Timeout)
            catch exit:_ -> {error, not_ready}
            end;
        _ -> ok
    end.

%% @doc Close the gate (member only). Arbitrations already inside finish; new ones see
%% `inactive'.
-spec close(#shoal_cfg{}) -> ok.
close(#shoal_cfg{gate = G}) ->
    atomics:put(G, ?G_VIEW, 0),
    ok.

%% @doc Open the gate on view number N with Members (member only).
-spec open(#shoal_cfg{}, pos_integer(), [node(), ...]) -> ok.
open(#shoal_cfg{gate = G, ctab = CTab}, N, Members) ->
    ets:insert(CTab, {{view, N}, Members}),
    ets:select_delete(CTab, [{{{view, '$1'}, '_'}, [{'=/=', '$1', N}], [true]}]),
    atomics:put(G, ?G_VIEW, N),
    ok.

%% @doc Arbitrations inside the gate right now.
-spec inflight(#shoal_cfg{}) -> integer().
inflight(#shoal_cfg{gate = G}) -> atomics:get(G, ?G_INFLIGHT).

%% @doc Register local worker Pid for Key `{over, MaxVsn, Node}' (a migration's successor,
%% a worker taking its key back) inside the gate, waiting up to Timeout ms for the member to
%% be active: a worker registered under a view the member has left could be unknown to a
%% home of the next view (docs/protocol.md, "Moves").
-spec register_over(#shoal_cfg{}, term(), pid(), {shoal_nif:version(), node() | none},
                    timeout()) -> {ok, shoal_nif:version()} | {error, term()}.
register_over(Cfg, Key, Pid, {MaxVsn, Node}, Timeout) ->
    register_over_loop(Cfg, Key, Pid, MaxVsn, Node,
                       case Timeout of
                           infinity -> infinity;
                           _ -> erlang:monotonic_time(millisecond) + Timeout
                       end).

register_over_loop(Cfg, Key, Pid, MaxVsn, Node, Deadline) ->
    case enter(Cfg) of
        {ok, _} ->
            try shoal_registry:register(Cfg, Key, Pid, {over, MaxVsn, Node})
            after leave(Cfg)
            end;
        inactive ->
            case await_active(Cfg, remaining(Deadline)) of
                ok -> register_over_loop(Cfg, Key, Pid, MaxVsn, Node, Deadline);
                {error, _} = E -> E
            end
    end.

remaining(infinity) -> infinity;
remaining(Deadline) -> max(0, Deadline - erlang:monotonic_time(millisecond)).

%% @doc The proposed member list: this node and its peers, sorted.
-spec members(#shoal_cfg{}) -> [node(), ...].
members(#shoal_cfg{ctab = CTab}) ->
    case ets:lookup(CTab, members) of
        [{members, Ms}] -> Ms;
        [] -> [node()]
    end.

%% @doc The member process of Pool on Node, if Node is a peer (or this node).
-spec peer(#shoal_cfg{}, node()) -> pid() | undefined.
peer(#shoal_cfg{server = Name}, Node) when Node =:= node() -> whereis(Name);
peer(#shoal_cfg{ctab = CTab}, Node) ->
    case ets:lookup(CTab, {peer, Node}) of
        [{_, Pid}] -> Pid;
        [] -> undefined
    end.

%% @doc Node's member as peer/2 gives it, waiting up to Timeout ms for this node's member
%% to meet it (a node that has just joined); `undefined' if it has not by then.
-spec await_peer(#shoal_cfg{}, node(), non_neg_integer()) -> pid() | undefined.
await_peer(Cfg, Node, Timeout) ->
    await_peer(Cfg, Node, erlang:monotonic_time(millisecond) + Timeout, 1).

await_peer(Cfg, Node, Deadline, Sleep) ->
    case peer(Cfg, Node) of
        undefined ->
            case erlang:monotonic_time(millisecond) >= Deadline of
                true -> undefined;
                false ->
                    timer:sleep(Sleep),
                    await_peer(Cfg, Node, Deadline, min(2 * Sleep, 50))
            end;
        Member ->
            Member
    end.

%% @doc Wait until this node's member has dropped Member, Node's member as peer/2 gave it
%% before a move to Node whose target then went down (that member is no longer the peer
%% listed for Node): by then our member has applied everything Member sent it, and our
%% clock has passed every version in it, so a take-back that follows is above the version
%% of any successor the lost target registered (docs/protocol.md, "Moves", F8). `ok', or
%% `{error, timeout}' after Timeout ms (our member is stuck: the caller goes on anyway).
-spec await_dropped(#shoal_cfg{}, node(), pid() | undefined, non_neg_integer()) ->
          ok | {error, timeout}.
await_dropped(Cfg, Node, Member, Timeout) ->
    await_dropped(Cfg, Node, Member, erlang:monotonic_time(millisecond) + Timeout, 1).

await_dropped(_Cfg, _Node, undefined, _Deadline, _Sleep) -> ok;
await_dropped(Cfg, Node, Member, Deadline, Sleep) ->
    case peer(Cfg, Node) =:= Member of
        false -> ok;
        true ->
            case erlang:monotonic_time(millisecond) >= Deadline of
                true -> {error, timeout};
                false ->
                    timer:sleep(Sleep),
                    await_dropped(Cfg, Node, Member, Deadline, min(2 * Sleep, 50))
            end
    end.

%% @doc Note a request with reply alias Ref about to go to Node's member: that member's pid,
%% or `undefined' (not a peer: nothing noted). Until asked/2, losing the peer answers the
%% request `retry' (fail_asks/2). Noted before the peer is looked up, so the member, which
%% drops a peer before it fails its requests, either fails this one or was not dropped yet.
-spec ask(#shoal_cfg{}, reference(), node()) -> pid() | undefined.
ask(#shoal_cfg{asks = Asks} = Cfg, Ref, Node) ->
    true = ets:insert(Asks, {Ref, Node}),
    case peer(Cfg, Node) of
        undefined ->
            true = ets:delete(Asks, Ref),
            undefined;
        Pid ->
            Pid
    end.

%% @doc The request with reply alias Ref is answered or given up.
-spec asked(#shoal_cfg{}, reference()) -> ok.
asked(#shoal_cfg{asks = Asks}, Ref) ->
    true = ets:delete(Asks, Ref),
    ok.

%% @doc (The member, once Node is no peer any more.) Answer `retry' to every request noted
%% for Node.
-spec fail_asks(#shoal_cfg{}, node()) -> ok.
fail_asks(#shoal_cfg{asks = Asks, pool = Pool}, Node) ->
    Refs = ets:select(Asks, [{{'$1', Node}, [], ['$1']}]),
    _ = [begin
             ets:delete(Asks, Ref),
             shoal_proto:reply({self(), Ref}, Pool, claimed, [retry, false])
         end || Ref <- Refs],
    ok.

%% @doc Node's placement window.
-spec window(#shoal_cfg{}, node()) -> shoal_placement:window().
window(#shoal_cfg{ctab = CTab}, Node) ->
    case ets:lookup(CTab, {window, Node}) of
        [{_, W}] -> W;
        [] -> shoal_placement:default_window()
    end.

%% @doc Whether Node is drained.
-spec drained(#shoal_cfg{}, node()) -> boolean().
drained(#shoal_cfg{ctab = CTab}, Node) -> ets:member(CTab, {drained, Node}).

%% @doc Whether no member has a window or is drained: then a new worker's host is its
%% home (shoal_placement:choose/2 with equal weights picks the highest rank).
-spec plain(#shoal_cfg{}) -> boolean().
plain(#shoal_cfg{ctab = CTab}) -> not ets:member(CTab, custom_placement).

%% @doc (The member, after it changed a window or a drain.) Note whether any is set.
-spec placement_changed(#shoal_cfg{}) -> ok.
placement_changed(#shoal_cfg{ctab = CTab}) ->
    case ets:match(CTab, {{window, '_'}, '_'}, 1) =/= '$end_of_table' orelse
        ets:match(CTab, {{drained, '_'}, '_'}, 1) =/= '$end_of_table' of
        true -> true = ets:insert(CTab, {custom_placement, true});
        false -> true = ets:delete(CTab, custom_placement)
    end,
    ok.

%% @doc Placement candidates among Members: node, worker count, window, drained.
-spec candidates(#shoal_cfg{}) -> [shoal_placement:candidate()].
candidates(Cfg) -> candidates(Cfg, members(Cfg)).

%% @doc Placement candidates among the given members.
-spec candidates(#shoal_cfg{}, [node()]) -> [shoal_placement:candidate()].
candidates(Cfg, Members) ->
    [{N, shoal_registry:count(Cfg, N), window(Cfg, N), drained(Cfg, N)} || N <- Members].
