%% @doc The NIF set: worker tables, key hashing and rate meters (c_src/nif/shoal_nif.c).
%%
%% Everything here is a thin stub; the real work is C. A missing or broken shared object
%% makes every function raise `{shoal_nif_not_loaded, Function}', so the failure is obvious.
%% Bad arguments of any kind (a wrong or deleted table, a fun as a key, a key over 64 KiB
%% or nested deeper than 64) raise `badarg'.
-module(shoal_nif).

-export([new/1, delete/1, whereis/2, lookup/2, route/3, claim/3, register/3, register/4,
         unregister/3, release_claim/2, put_remote/5, delete_remote/3, set_moving/4,
         set_listener/2, count/1, count/2, info/1, fold/3,
         canonical/1, hash/1, meter_new/0, meter_add/2, meter_sum/2, load_info/0]).
-export_type([table/0, meter/0]).

-on_load(init/0).

-opaque table() :: reference().
-opaque meter() :: reference().

-define(NOT_LOADED, erlang:nif_error({shoal_nif_not_loaded, ?FUNCTION_NAME})).

init() ->
    Dir = case code:priv_dir(shoal) of
              {error, _} ->
                  filename:join(filename:dirname(filename:dirname(code:which(?MODULE))), "priv");
              D -> D
          end,
    erlang:load_nif(filename:join(Dir, "shoal_nif"), 0).

%% @doc A new table with 2^SegmentsLog2 independently locked segments (0..16).
-spec new(0..16) -> table().
new(_SegmentsLog2) -> ?NOT_LOADED.

%% @doc Empty the table and make it unusable: every later call on it raises badarg.
-spec delete(table()) -> ok.
delete(_T) -> ?NOT_LOADED.

%% @doc The worker for Key (local or replicated), or undefined. Claims count as absent.
-spec whereis(table(), term()) -> pid() | undefined.
whereis(_T, _Key) -> ?NOT_LOADED.

%% @doc The entry for Key: a worker, a claim being spawned, or nothing.
-spec lookup(table(), term()) ->
          {active, pid(), Incarnation :: non_neg_integer()} | {claimed, pid()} | undefined.
lookup(_T, _Key) -> ?NOT_LOADED.

%% @doc Look Key up and send Msg to its local worker in one call.
-spec route(table(), term(), term()) -> ok | undefined | {remote, pid()}.
route(_T, _Key, _Msg) -> ?NOT_LOADED.

%% @doc Claim Key for the caller (insert-if-absent). On `{wait, Claimer}' another process
%% holds the claim and, given a Ref, the caller will receive
%% ``{'$shoal_claim', Ref, {ok, Pid} | retry}'' (given `nowait', nothing). Claims are not
%% monitored: a waiter watches Claimer and, should it die, calls unregister(T, Key, Claimer).
-spec claim(table(), term(), reference() | nowait) -> claimed | {wait, pid()} | {ok, pid()}.
claim(_T, _Key, _Ref) -> ?NOT_LOADED.

%% @doc Make local Pid the worker for Key, replacing any claim and telling its waiters.
%% The entry goes away by itself when Pid dies.
-spec register(table(), term(), pid()) ->
          {ok, non_neg_integer()} | {error, noproc | {already_registered, pid()}}.
register(_T, _Key, _Pid) -> ?NOT_LOADED.

%% @doc register/3, and with `Over = true' also replacing a replica of a remote worker (the
%% takeover at the end of a migration).
-spec register(table(), term(), pid(), boolean()) ->
          {ok, non_neg_integer()} | {error, noproc | {already_registered, pid()}}.
register(_T, _Key, _Pid, _Over) -> ?NOT_LOADED.

%% @doc Mark the local worker Pid of Key as migrating (a replica of its successor may then
%% replace it), or clear the mark.
-spec set_moving(table(), term(), pid(), boolean()) -> ok | not_found.
set_moving(_T, _Key, _Pid, _On) -> ?NOT_LOADED.

%% @doc The process told ``{'$shoal_up', Key, Pid, Inc}'' and ``{'$shoal_down', Key, Pid}'' of
%% every local worker registered or removed (the pool server, in a cluster).
-spec set_listener(table(), pid() | undefined) -> ok.
set_listener(_T, _Pid) -> ?NOT_LOADED.

%% @doc Remove Key if its entry (claim or worker) belongs to Pid.
-spec unregister(table(), term(), pid()) -> ok | not_found.
unregister(_T, _Key, _Pid) -> ?NOT_LOADED.

%% @doc Give up the caller's claim on Key; its waiters are told to retry.
-spec release_claim(table(), term()) -> ok | not_found.
release_claim(_T, _Key) -> ?NOT_LOADED.

%% @doc Store the replica of a worker that lives on another node, replacing an older
%% replica, a claim (its waiters get the pid) or a local worker marked as moving. A live
%% local worker is left alone: `{error, {local, Pid}}' is a conflict for the caller.
-spec put_remote(table(), term(), node(), pid(), non_neg_integer()) ->
          new | replaced | {error, {local, pid()}}.
put_remote(_T, _Key, _Node, _Pid, _Inc) -> ?NOT_LOADED.

%% @doc Drop the replica of Key if it still names Pid.
-spec delete_remote(table(), term(), pid()) -> ok | not_found.
delete_remote(_T, _Key, _Pid) -> ?NOT_LOADED.

%% @doc Live workers in the table (local and replicated).
-spec count(table()) -> non_neg_integer().
count(_T) -> ?NOT_LOADED.

%% @doc This node's own workers (`local') or the replicas of Node's workers.
-spec count(table(), node() | local) -> non_neg_integer().
count(_T, _Node) -> ?NOT_LOADED.

%% @doc Entry and memory figures for the table.
-spec info(table()) -> #{entries := non_neg_integer(), workers := non_neg_integer(),
                         local_workers := non_neg_integer(), table_bytes := non_neg_integer()}.
info(_T) -> ?NOT_LOADED.

%% @doc Yielding walk over the whole table: `dump' lists `{Key, Pid}' of every worker,
%% `keys_on' the keys on a node (`local' for this node's own), `purge_node' removes every
%% replica of a node and returns how many.
-spec fold(table(), dump | keys_on | purge_node, term()) ->
          [{term(), pid()}] | [term()] | non_neg_integer().
fold(_T, _Op, _Arg) -> ?NOT_LOADED.

%% @doc The canonical bytes of a key (see c_src/core/keyhash.h).
-spec canonical(term()) -> binary().
canonical(_Key) -> ?NOT_LOADED.

%% @doc The 64-bit key hash, equal to shoal_keyhash:hash/1 and to the C node's.
-spec hash(term()) -> non_neg_integer().
hash(_Key) -> ?NOT_LOADED.

%% @doc A sliding-window event meter (60 one-second buckets).
-spec meter_new() -> meter().
meter_new() -> ?NOT_LOADED.

%% @doc Record N events now.
-spec meter_add(meter(), non_neg_integer()) -> ok.
meter_add(_M, _N) -> ?NOT_LOADED.

%% @doc Events recorded in the last Seconds seconds (1..60).
-spec meter_sum(meter(), 1..60) -> non_neg_integer().
meter_sum(_M, _Seconds) -> ?NOT_LOADED.

%% @doc How many instances of the library are loaded (2 during an upgrade).
-spec load_info() -> non_neg_integer().
load_info() -> ?NOT_LOADED.
