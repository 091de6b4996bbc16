%% @doc A pool's worker table on this node: the one owner of the table NIFs.
%%
%% Every read and write of a pool's table goes through here, so the table has one owner in
%% Erlang as it has one in C (c_src/core/registry.c). The functions take the pool's
%% configuration (the hot paths read it from persistent_term once and pass it down) and map
%% one to one onto shoal_nif, except that `node()' is spelt `local' where the NIF wants it
%% and that replicas naming this node are refused (a member is the authority on its own
%% workers; a relay about one of them is never stored as a replica).
-module(shoal_registry).

-include("shoal_int.hrl").

-export([new/1, delete/1, whereis/2, lookup/2, route/3, claim/3, release_claim/3,
         register/4, unregister/3, set_moving/4, put_remote/6, put_successor/6, put_synced/7,
         remove_remote/4,
         set_listener/2, admit/3, count/1, count/2, info/1, owned/1, dump/1, keys_on/2,
         purge_node/2, sweep_node/4, sweep_tombs/2, worker/2, hlc/0, observe/1]).

%% @doc A new table.
-spec new(0..16) -> shoal_nif:table().
new(Bits) -> shoal_nif:new(Bits).

%% @doc Empty the table for good.
-spec delete(shoal_nif:table()) -> ok.
delete(T) -> shoal_nif:delete(T).

%% @doc The worker for Key on any node, from this node's table.
-spec whereis(#shoal_cfg{}, term()) -> pid() | undefined.
whereis(#shoal_cfg{table = T}, Key) -> shoal_nif:whereis(T, Key).

%% @doc Key's entry.
-spec lookup(#shoal_cfg{}, term()) -> shoal_nif:entry() | undefined.
lookup(#shoal_cfg{table = T}, Key) -> shoal_nif:lookup(T, Key).

%% @doc Send Msg to Key's local worker, or say where it is.
-spec route(#shoal_cfg{}, term(), term()) -> ok | {remote, pid()} | undefined.
route(#shoal_cfg{table = T}, Key, Msg) -> shoal_nif:route(T, Key, Msg).

%% @doc Claim Key for the calling process.
-spec claim(#shoal_cfg{}, term(), reference() | nowait) -> claimed | {wait, pid()} | {ok, pid()}.
claim(#shoal_cfg{table = T}, Key, Ref) -> shoal_nif:claim(T, Key, Ref).

%% @doc Give up the caller's claim; its waiters get Result.
-spec release_claim(#shoal_cfg{}, term(), retry | {error, term()}) -> ok | not_found.
release_claim(#shoal_cfg{table = T}, Key, Result) -> shoal_nif:release_claim(T, Key, Result).

%% @doc Register local worker Pid for Key (see shoal_nif:register/4).
-spec register(#shoal_cfg{}, term(), pid(), claim | {over, shoal_nif:version(), node() | none}) ->
          {ok, shoal_nif:version()} | {error, term()}.
register(#shoal_cfg{table = T}, Key, Pid, Mode) -> shoal_nif:register(T, Key, Pid, Mode).

%% @doc Remove Pid's entry (a local worker or a claim) for Key.
-spec unregister(#shoal_cfg{}, term(), pid()) -> ok | not_found.
unregister(#shoal_cfg{table = T}, Key, Pid) -> shoal_nif:unregister(T, Key, Pid).

%% @doc Mark local worker Pid of Key as moving, or clear the mark: `{ok, Vsn}' with its
%% version, or `not_found'.
-spec set_moving(#shoal_cfg{}, term(), pid(), boolean()) -> {ok, shoal_nif:version()} | not_found.
set_moving(#shoal_cfg{table = T}, Key, Pid, On) -> shoal_nif:set_moving(T, Key, Pid, On).

%% @doc Store a replica if it is newer (see shoal_nif:put_remote/6). A replica of one of
%% this node's own workers is never stored: `stale'.
-spec put_remote(#shoal_cfg{}, term(), node(), pid(), shoal_nif:version(), non_neg_integer()) ->
          stored | stale | {conflict, pid(), shoal_nif:version()}.
put_remote(_Cfg, _Key, Node, _Pid, _Vsn, _Mark) when Node =:= node() -> stale;
put_remote(#shoal_cfg{table = T}, Key, Node, Pid, Vsn, Mark) ->
    shoal_nif:put_remote(T, Key, Node, Pid, Vsn, Mark).

%% @doc Store the successor of a move (or a conflict's winner) over a moving local worker
%% (see shoal_nif:put_successor/6).
-spec put_successor(#shoal_cfg{}, term(), node(), pid(), shoal_nif:version(),
                    non_neg_integer()) -> stored | stale | {conflict, pid(), shoal_nif:version()}.
put_successor(_Cfg, _Key, Node, _Pid, _Vsn, _Mark) when Node =:= node() -> stale;
put_successor(#shoal_cfg{table = T}, Key, Node, Pid, Vsn, Mark) ->
    shoal_nif:put_successor(T, Key, Node, Pid, Vsn, Mark).

%% @doc Store a replica from Node's sync, whose walk began at Before (see
%% shoal_nif:put_synced/7).
-spec put_synced(#shoal_cfg{}, term(), node(), pid(), shoal_nif:version(), non_neg_integer(),
                 pos_integer()) -> stored | stale | {conflict, pid(), shoal_nif:version()}.
put_synced(_Cfg, _Key, Node, _Pid, _Vsn, _Mark, _Before) when Node =:= node() -> stale;
put_synced(#shoal_cfg{table = T}, Key, Node, Pid, Vsn, Mark, Before) ->
    shoal_nif:put_synced(T, Key, Node, Pid, Vsn, Mark, Before).

%% @doc Node says its worker for Key at Vsn is gone.
-spec remove_remote(#shoal_cfg{}, term(), node(), shoal_nif:version()) ->
          removed | tombstoned | stale.
remove_remote(_Cfg, _Key, Node, _Vsn) when Node =:= node() -> stale;
remove_remote(#shoal_cfg{table = T}, Key, Node, Vsn) ->
    shoal_nif:remove_remote(T, Key, Node, Vsn).

%% @doc Who is told of local changes.
-spec set_listener(#shoal_cfg{}, pid() | undefined) -> ok.
set_listener(#shoal_cfg{table = T}, Pid) -> shoal_nif:set_listener(T, Pid).

%% @doc Let the table store replicas of Node, or stop it (see shoal_nif:admit/3).
-spec admit(#shoal_cfg{}, node(), boolean()) -> ok.
admit(#shoal_cfg{table = T}, Node, On) -> shoal_nif:admit(T, Node, On).

%% @doc Live workers in the table.
-spec count(#shoal_cfg{}) -> non_neg_integer().
count(#shoal_cfg{table = T}) -> shoal_nif:count(T).

%% @doc Live workers on Node, as this table knows them.
-spec count(#shoal_cfg{}, node()) -> non_neg_integer().
count(#shoal_cfg{table = T}, Node) when Node =:= node() -> shoal_nif:count(T, local);
count(#shoal_cfg{table = T}, Node) -> shoal_nif:count(T, Node).

%% @doc Entry and memory figures.
-spec info(#shoal_cfg{}) -> map().
info(#shoal_cfg{table = T}) -> shoal_nif:info(T).

%% @doc This node's workers: `[{Key, Pid, Vsn}]'.
-spec owned(#shoal_cfg{}) -> [{term(), pid(), shoal_nif:version()}].
owned(#shoal_cfg{table = T}) -> shoal_nif:fold(T, owned, none).

%% @doc Every worker the table knows: `[{Key, Node, Pid, Vsn}]'.
-spec dump(#shoal_cfg{}) -> [{term(), node(), pid(), shoal_nif:version()}].
dump(#shoal_cfg{table = T}) -> shoal_nif:fold(T, dump, none).

%% @doc The keys of Node's workers.
-spec keys_on(#shoal_cfg{}, node()) -> [term()].
keys_on(#shoal_cfg{table = T}, Node) when Node =:= node() -> shoal_nif:fold(T, keys_on, local);
keys_on(#shoal_cfg{table = T}, Node) -> shoal_nif:fold(T, keys_on, Node).

%% @doc Drop every replica of Node.
-spec purge_node(#shoal_cfg{}, node()) -> non_neg_integer().
purge_node(#shoal_cfg{table = T}, Node) -> shoal_nif:fold(T, purge_node, Node).

%% @doc Drop Node's replicas not confirmed by sync Mark and older than Before.
-spec sweep_node(#shoal_cfg{}, node(), non_neg_integer(), shoal_nif:version()) ->
          non_neg_integer().
sweep_node(#shoal_cfg{table = T}, Node, Mark, Before) ->
    shoal_nif:fold(T, sweep_node, {Node, Mark, Before}).

%% @doc Drop tombs older than AgeMs.
-spec sweep_tombs(#shoal_cfg{}, non_neg_integer()) -> non_neg_integer().
sweep_tombs(#shoal_cfg{table = T}, AgeMs) -> shoal_nif:fold(T, sweep_tombs, AgeMs).

%% @doc Key's worker with its node and version (local or remote), or `undefined'.
-spec worker(#shoal_cfg{}, term()) -> {node(), pid(), shoal_nif:version()} | undefined.
worker(Cfg, Key) ->
    case lookup(Cfg, Key) of
        {local, P, V, _} -> {node(), P, V};
        {remote, N, P, V} -> {N, P, V};
        _ -> undefined
    end.

%% @doc The node's clock.
-spec hlc() -> shoal_nif:version().
hlc() -> shoal_nif:hlc().

%% @doc Make the node's clock exceed Vsn.
-spec observe(shoal_nif:version()) -> ok.
observe(Vsn) -> shoal_nif:observe(Vsn).
