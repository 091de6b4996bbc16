%% @doc The NIF set: worker tables, key hashing, the node's clock and rate meters
%% (c_src/nif/, over the registry core in c_src/core/registry.c).
%%
%% Everything here is a thin stub; the real work is C. A missing or broken shared object
%% makes every function raise `{shoal_nif_not_loaded, Function}', so the failure is obvious.
%% Bad arguments of any kind (a wrong or deleted table, a fun as a key, a key over 64 KiB
%% or nested deeper than 64, a map key with more entries than fit) raise `badarg'.
%%
%% A table holds at most one entry per key, in one of these states (docs/protocol.md):
%% <ul>
%% <li>`claimed': a local process (the claimer) is arbitrating a spawn of the key; other
%%     local processes may queue behind it as waiters;</li>
%% <li>`local': a worker of this node (monitored: when it dies the entry goes by itself,
%%     with no Erlang process involved), with its version and a `moving' flag;</li>
%% <li>`remote': the replica of another node's worker: owner node, pid, version;</li>
%% <li>`tomb': the key's last known incarnation died; blocks replicas that are not newer.
%%     A tomb counts as absent for every reader.</li>
%% </ul>
%%
%% Versions are 64-bit hybrid-logical-clock values (`hlc/0'); "newer" compares
%% `{Vsn, Node}' pairs, so equal versions from two nodes are ordered by node name. Every
%% version a table is given (put_remote, remove_remote, register over) is observed by the
%% clock, so versions the node hands out later are above it.
%%
%% The table's listener (set_listener/2) is sent, for every change of a local entry:
%% `{'$shoal_up', Key, Pid, Vsn}' when a local worker is registered;
%% `{'$shoal_down', Key, Pid, Vsn}' when a local worker's entry goes (it died, or was
%% unregistered); `{'$shoal_replaced', Key, Pid, Vsn, Node, NewPid, NewVsn}' when a local
%% (moving) entry is replaced in place by a newer replica.
%%
%% Waiters of a claim are sent `{'$shoal_claim', Ref, Result}' once, when the claim
%% resolves: `{ok, Pid}' (a worker was registered or a replica stored over the claim),
%% `retry' (the claim was given up or its claimer died) or `{error, Reason}' (given up with
%% that reason).
%%
%% A claim made over a tomb keeps the tomb's `{Vsn, Node}': a replica that is not newer
%% than it does not resolve the claim (put_remote says `stale'), a remove_remote that is
%% newer raises it, and a claim given up (release_claim, or unregister of a dead claimer)
%% becomes that tomb again, its age counted from then.
%%
%% Node names are kept per table as long as an entry names them (a replica, a tomb, or a
%% claim that kept a tomb): there is no limit on how many distinct nodes a table sees over
%% its life.
%%
%% A replica's pid is kept as a term in a store per node, so whereis/2 answers a replica
%% from the key's slot like a local worker, with one copy of the pid. Replicas that go
%% leave dead terms behind; when a store holds more dead than live ones (and at least
%% 4096), the put_remote/6, remove_remote/4, register/4 or removing fold/3 that tipped it
%% returns only after compacting that store on a dirty scheduler (a walk of the table).
-module(shoal_nif).

-export([new/1, delete/1,
         whereis/2, lookup/2, route/3,
         claim/3, release_claim/3, register/4, unregister/3, set_moving/4,
         put_remote/6, put_successor/6, put_synced/7, remove_remote/4,
         set_listener/2, admit/3, count/1, count/2, info/1, fold/3,
         hlc/0, observe/1, canonical/1, hash/1, meter_new/0, meter_add/2, meter_sum/2, load_info/0]).
-export_type([table/0, meter/0, version/0, entry/0]).

-on_load(init/0).

-opaque table() :: reference().
-opaque meter() :: reference().
-type version() :: non_neg_integer().
-type entry() :: {local, pid(), version(), Moving :: boolean()}
               | {remote, node(), pid(), version()}
               | {claimed, pid()}
               | {tomb, version()}.

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

%% @doc The worker for Key, local or remote, or `undefined' (absent, claimed, tomb).
%% The hot path: a remote worker is answered about as fast as a local one.
-spec whereis(table(), term()) -> pid() | undefined.
whereis(_T, _Key) -> ?NOT_LOADED.

%% @doc The entry for Key, or `undefined' when there is none. A tomb is reported as
%% `{tomb, Vsn}' here (and only here: every other reader takes it for absent).
-spec lookup(table(), term()) -> entry() | undefined.
lookup(_T, _Key) -> ?NOT_LOADED.

%% @doc Look Key up and send Msg to its local worker (moving or not) in the same call:
%% `ok' when sent, `{remote, Pid}' for a replica (the caller sends), `undefined' otherwise.
-spec route(table(), term(), term()) -> ok | {remote, pid()} | undefined.
route(_T, _Key, _Msg) -> ?NOT_LOADED.

%% @doc Claim Key for the calling process (insert-if-absent; a tomb counts as absent).
%% `claimed': the caller holds the claim (also when it already held it). `{wait, Claimer}':
%% another process holds it; given a Ref the caller is queued as a waiter and will get
%% `{'$shoal_claim', Ref, Result}' (given `nowait' it is told nothing). `{ok, Pid}': the key
%% has a worker (local or remote). Claims are not monitored: a waiter watches the claimer
%% and, should it die, removes the claim with unregister/3 (its waiters get `retry').
-spec claim(table(), term(), reference() | nowait) -> claimed | {wait, pid()} | {ok, pid()}.
claim(_T, _Key, _Ref) -> ?NOT_LOADED.

%% @doc Give up the caller's claim on Key; its waiters get Result.
-spec release_claim(table(), term(), retry | {error, term()}) -> ok | not_found.
release_claim(_T, _Key, _Result) -> ?NOT_LOADED.

%% @doc Make local process Pid the worker for Key and return the version it was given
%% (the clock's next value, above anything the entry replaced). The entry goes by itself
%% when Pid dies (then the listener gets `$shoal_down').
%%
%% `claim': Key must be claimed by the calling process; the claim's waiters get
%% `{ok, Pid}'. Errors: `not_claimed' (absent or tomb), `{claimed, Other}',
%% `{already_registered, Worker}' (a local or remote worker is there).
%%
%% Claim mode with Pid already the key's worker is `{already_registered, Pid}'.
%%
%% `{over, MaxVsn, Node}' (a migration's takeover, or a worker taking its key back):
%% replaces an absent entry, a tomb, a replica whose version is at most MaxVsn, or any
%% replica owned by Node (`none' for no such node); the new version is above MaxVsn and
%% above what it replaced. If the entry is already Pid's own, its moving flag is cleared and
%% it takes a fresh version (above everything the clock has seen: a take-back), which the
%% listener gets as `$shoal_up'. Errors: `{claimed, Claimer}', `{already_registered, Other}' (another
%% local worker), `{newer, Node, Pid, Vsn}' (a newer replica).
%%
%% `{error, noproc}' if Pid is not alive.
-spec register(table(), term(), pid(), claim | {over, version(), node() | none}) ->
          {ok, version()}
        | {error, noproc | not_claimed | {claimed, pid()} | {already_registered, pid()}
                  | {newer, node(), pid(), version()}}.
register(_T, _Key, _Pid, _Mode) -> ?NOT_LOADED.

%% @doc Remove Key's entry if it is local worker Pid (the listener gets `$shoal_down') or a
%% claim held by Pid (its waiters get `retry').
-spec unregister(table(), term(), pid()) -> ok | not_found.
unregister(_T, _Key, _Pid) -> ?NOT_LOADED.

%% @doc Mark local worker Pid of Key as moving (a newer replica may then replace it), or
%% clear the mark: `{ok, Vsn}' with the entry's version, or `not_found' if Key's entry is
%% not local worker Pid.
-spec set_moving(table(), term(), pid(), boolean()) -> {ok, version()} | not_found.
set_moving(_T, _Key, _Pid, _On) -> ?NOT_LOADED.

%% @doc Store the replica of Node's worker Pid for Key at version Vsn, if it is newer than
%% what the entry holds. `stored': it replaced nothing, a claim (whose waiters get
%% `{ok, Pid}'), a tomb or an older replica. `stale': the entry is newer (or the same
%% replica: then only its mark is updated), or is a local worker that is moving (replaced by
%% its move's outcome only: put_successor/6). `{conflict, LocalPid, LocalVsn}': a live, not
%% moving local worker is older; the entry is left alone for the caller to resolve. Mark (0..2^32-1; 0 = none) tags the
%% stored or confirmed replica for fold/3's `sweep_node'; confirming with Mark 0 leaves the
%% replica's mark as it was. A tie with a local entry's version is broken by the names of
%% Node and of the local worker's node.
-spec put_remote(table(), term(), node(), pid(), version(), non_neg_integer()) ->
          stored | stale | {conflict, pid(), version()}.
put_remote(_T, _Key, _Node, _Pid, _Vsn, _Mark) -> ?NOT_LOADED.

%% @doc put_remote/6 for a move's outcome: the successor that now holds Key (or the winner
%% of a conflict a local worker steps aside for). The same, except that an older local
%% worker that is moving is replaced too (`stored'; the listener gets `$shoal_replaced').
-spec put_successor(table(), term(), node(), pid(), version(), non_neg_integer()) ->
          stored | stale | {conflict, pid(), version()}.
put_successor(_T, _Key, _Node, _Pid, _Vsn, _Mark) -> ?NOT_LOADED.

%% @doc put_remote/6 for an entry of Node's sync, whose walk of its table began when its
%% clock read Before (a positive integer): the same, except that a tomb of another node
%% whose version is below Before (a tomb entry, or the tomb a claim keeps) does not refuse
%% it. That tomb is of an incarnation that died while this one, which Node still holds,
%% lived: its twin across a partition.
-spec put_synced(table(), term(), node(), pid(), version(), non_neg_integer(), pos_integer()) ->
          stored | stale | {conflict, pid(), version()}.
put_synced(_T, _Key, _Node, _Pid, _Vsn, _Mark, _Before) -> ?NOT_LOADED.

%% @doc Node says its worker for Key, at version Vsn, is gone: a replica that is not newer
%% than `{Vsn, Node}' becomes a tomb at Vsn (`removed'); an absent entry or an older tomb
%% becomes a tomb at Vsn (`tombstoned'); anything newer, a local worker or a claim is left
%% alone (`stale'; a claim keeps `{Vsn, Node}' as its tomb, see the module doc). Versions
%% decide: the gone worker's pid is not needed.
-spec remove_remote(table(), term(), node(), version()) -> removed | tombstoned | stale.
remove_remote(_T, _Key, _Node, _Vsn) -> ?NOT_LOADED.

%% @doc The process told of every change of a local entry (see the module doc).
-spec set_listener(table(), pid() | undefined) -> ok.
set_listener(_T, _Pid) -> ?NOT_LOADED.

%% @doc From the first call on, the table stores replicas (put_remote/6) only of the nodes
%% admitted (`true') and not dismissed (`false') since: the member admits a peer before
%% their syncs and dismisses it before it purges its replicas, so no replica of a node that
%% has left, however late its news arrives (a caller's read-your-writes, a mover), can stay.
-spec admit(table(), node(), boolean()) -> ok.
admit(_T, _Node, _On) -> ?NOT_LOADED.

%% @doc Live workers in the table (local and replicated; no claims, no tombs).
-spec count(table()) -> non_neg_integer().
count(_T) -> ?NOT_LOADED.

%% @doc This node's own workers (`local') or the replicas of Node's workers (0 for a node
%% the table has no entry of).
-spec count(table(), node() | local) -> non_neg_integer().
count(_T, _Node) -> ?NOT_LOADED.

%% @doc Entry and memory figures for the table: `entries' counts every entry (workers,
%% claims and tombs); `nodes' the node names the table keeps (see the module doc);
%% `table_bytes' the table's own structures plus an estimate of its entries.
-spec info(table()) -> #{entries := non_neg_integer(), workers := non_neg_integer(),
                         local_workers := non_neg_integer(),
                         remote_workers := non_neg_integer(), claims := non_neg_integer(),
                         tombs := non_neg_integer(), nodes := non_neg_integer(),
                         table_bytes := non_neg_integer()}.
info(_T) -> ?NOT_LOADED.

%% @doc Yielding walks over the whole table (each segment read or changed under one hold of
%% its lock, so no entry present for the whole walk is missed or seen twice):
%% <ul>
%% <li>`owned' (Arg ignored): `[{Key, Pid, Vsn}]' of the local workers;</li>
%% <li>`dump' (Arg ignored): `[{Key, Node, Pid, Vsn}]' of every worker (local ones with
%%     `node()');</li>
%% <li>`keys_on', Node or `local': the keys of Node's replicas, or of the local workers;</li>
%% <li>`purge_node', Node: removes every replica of Node, returns how many;</li>
%% <li>`sweep_node', `{Node, Mark, Before}': removes Node's replicas whose mark is not Mark
%%     and whose version is below Before, returns how many;</li>
%% <li>`sweep_tombs', AgeMs: removes tombs at least AgeMs milliseconds old (0: every tomb),
%%     returns how many.</li>
%% </ul>
%% Lists come in no particular order. `dump' names local workers with the node's name at
%% the start of the walk. A segment's lock is held for one pass over that segment, so keep
%% segments to a few thousand entries (2^8 segments up to about a million entries).
-spec fold(table(), owned | dump | keys_on | purge_node | sweep_node | sweep_tombs, term()) ->
          [{term(), pid(), version()}] | [{term(), node(), pid(), version()}] | [term()]
        | non_neg_integer().
fold(_T, _Op, _Arg) -> ?NOT_LOADED.

%% @doc The node's clock: strictly increasing, `erlang:system_time(microsecond)' or above,
%% and above every version any table of this node has been given. One clock per VM, kept
%% across a library upgrade. It saturates at 2^64-1 rather than wrap (only an absurd
%% version given to a table can take it there).
-spec hlc() -> version().
hlc() -> ?NOT_LOADED.

%% @doc Make the node's clock exceed Vsn, so versions it hands out later are above it (a
%% host told of a dead incarnation it has not heard of itself).
-spec observe(version()) -> ok.
observe(_Vsn) -> ?NOT_LOADED.

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
