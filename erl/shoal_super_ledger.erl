%% @doc The ledger of one chain: the items it has accepted and not yet ended, and where each
%% one is. A public ETS table on the owner node, created and owned by the chain's manager;
%% this module is the only one that knows its layout:
%% `{Seq, {Attempt, Hop}, Holder, EntryIdx, EntryData, Via}'
%% <ul>
%% <li>`Holder': the worker the item was last handed to (or the manager, holding it);</li>
%% <li>`Via': the node of the process that made that hand-off (the owner node when the
%%     owner made it): if that node dies, the hand-off may not have arrived (see
%%     shoal_super_chain_mgr, probes);</li>
%% <li>`{Attempt, Hop}' orders the news about an item: a hand-off is applied only if it is
%%     newer than what the ledger holds, and an item sent again gets a new attempt;</li>
%% <li>`EntryIdx', `EntryData': the step where the item entered the chain, and its data
%%     then (what a re-send and a `lost' report use).</li>
%% </ul>
%% Writers: callers of send_to_chain (enter), step workers on the owner node (moves,
%% takes), the manager (moves reported by other nodes, takes, re-sends).
-module(shoal_super_ledger).

-export([new/0, enter/6, move_here/5, move/5, take/2, retry/3, relocate/3,
         held_by/2, on_node/2, handed_by/2, current/3, all/1]).

-export_type([entry/0]).

-type key() :: {non_neg_integer(), non_neg_integer()}.
-type entry() :: {integer(), key(), pid(), pos_integer(), term(), node()}.

%% @doc A new, empty ledger.
-spec new() -> ets:tid().
new() -> ets:new(shoal_super_ledger, [set, public, {write_concurrency, true}]).

%% @doc Item Seq enters the chain at step Idx with Data, handed to Holder by a process of
%% node Via.
-spec enter(ets:tid(), integer(), pid(), pos_integer(), term(), node()) -> true.
enter(L, Seq, Holder, Idx, Data, Via) ->
    ets:insert(L, {Seq, {0, 0}, Holder, Idx, Data, Via}).

%% @doc On the owner node, by the process that holds item Seq: it hands it to Holder as
%% `{Att, Hop}'. `false' if the item has ended meanwhile; with `Check', also if a newer
%% attempt of it exists (the caller then drops its copy).
-spec move_here(ets:tid(), integer(), key(), pid(), boolean()) -> boolean().
move_here(L, Seq, Key, Holder, false) ->
    ets:update_element(L, Seq, [{2, Key}, {3, Holder}, {6, node()}]);
move_here(L, Seq, {Att, _} = Key, Holder, true) ->
    try ets:lookup_element(L, Seq, 2) of
        {A, _} when A > Att -> false;
        _ -> move_here(L, Seq, Key, Holder, false)
    catch error:badarg -> false
    end.

%% @doc News from elsewhere (node Via handed item Seq to Holder as Key): applied only if
%% newer than what the ledger holds. Returns `ok', `stale' or `gone'.
-spec move(ets:tid(), integer(), key(), pid(), node()) -> ok | stale | gone.
move(L, Seq, Key, Holder, Via) ->
    case ets:lookup(L, Seq) of
        [{_, Old, _, _, _, _}] when Old < Key ->
            %% The item may end (on this node) between the lookup and the update.
            case ets:update_element(L, Seq, [{2, Key}, {3, Holder}, {6, Via}]) of
                true -> ok;
                false -> gone
            end;
        [_] -> stale;
        [] -> gone
    end.

%% @doc Item Seq ends: its entry, if it was still there (whoever takes it reports it).
-spec take(ets:tid(), integer()) -> [entry()].
take(L, Seq) -> ets:take(L, Seq).

%% @doc Item Seq is to be sent again, as attempt Att, by the caller (the manager).
-spec retry(ets:tid(), integer(), non_neg_integer()) -> boolean().
retry(L, Seq, Att) ->
    ets:update_element(L, Seq, [{2, {Att, 0}}, {3, self()}, {6, node()}]).

%% @doc What the ledger has at Old is at New (a worker that moved to another node).
-spec relocate(ets:tid(), pid(), pid()) -> ok.
relocate(L, Old, New) ->
    _ = [ets:update_element(L, Seq, {3, New})
         || Seq <- ets:select(L, [{{'$1', '_', Old, '_', '_', '_'}, [], ['$1']}])],
    ok.

%% @doc The entries held by Pid.
-spec held_by(ets:tid(), pid()) -> [entry()].
held_by(L, Pid) -> ets:select(L, [{{'_', '_', Pid, '_', '_', '_'}, [], ['$_']}]).

%% @doc The entries held on node N.
-spec on_node(ets:tid(), node()) -> [entry()].
on_node(L, N) ->
    ets:select(L, [{{'_', '_', '$1', '_', '_', '_'}, [{'=:=', {node, '$1'}, N}], ['$_']}]).

%% @doc The entries last handed on by a process of node N to a holder on another node.
-spec handed_by(ets:tid(), node()) -> [entry()].
handed_by(L, N) ->
    ets:select(L, [{{'_', '_', '$1', '_', '_', N}, [{'=/=', {node, '$1'}, N}], ['$_']}]).

%% @doc Whether item Seq is still at Holder as Key (nothing newer was heard of it).
-spec current(ets:tid(), integer(), {key(), pid()}) -> [entry()].
current(L, Seq, {Key, Holder}) ->
    case ets:lookup(L, Seq) of
        [{_, Key, Holder, _, _, _}] = E -> E;
        _ -> []
    end.

%% @doc Every entry.
-spec all(ets:tid()) -> [entry()].
all(L) -> ets:tab2list(L).
