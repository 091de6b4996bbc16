%% Internal records shared by the shoal modules. Not part of the public API.

%% A pool's configuration, kept in persistent_term under {shoal_pool, Pool}: read on every
%% call, written only when the pool starts or stops.
-record(shoal_cfg, {
    pool         :: atom(),
    table        :: shoal_nif:table() | undefined,     %% undefined only until the server starts
    counters     :: counters:counters_ref() | undefined,
    meter        :: shoal_nif:meter() | undefined,
    worker       :: module(),
    args         :: term(),
    segs         :: tuple(),                 %% registered names of the segment processes
    restart      :: temporary | transient | permanent,
    idle_timeout :: timeout(),
    has_load     :: boolean(),
    has_idle     :: boolean(),
    trap_exit    :: boolean(),                %% worker exports terminate/2
    spawn_opts   :: [term()],
    table_bits   :: 0..16,                   %% log2 of the table's lock segments
    ctab         :: ets:tid() | undefined,   %% cluster view: members, peers, windows, drains
    asks         :: ets:tid() | undefined,   %% requests waiting on a peer (shoal_view:ask/3)
    intake       :: ets:tid() | undefined,   %% ensure_started_async keys for the member
    intake_flag  :: atomics:atomics_ref() | undefined, %% 1: the member has been woken for them
    gate         :: atomics:atomics_ref() | undefined, %% the view gate (shoal_view)
    server       :: atom(),                  %% registered name of the pool's member
    grace        :: non_neg_integer(),       %% ms a migrated worker forwards to its successor
    quorum = 1   :: pos_integer()            %% members an agreed view needs to place new keys
}).

-define(PT_KEY(Pool), {shoal_pool, Pool}).

%% A call from Shoal's own callers (shoal:call/4, call_existing/4) to a worker, and the
%% answer of a worker that moved or stepped aside: ask its successor (docs/protocol.md,
%% "Calls that follow a worker"). A worker that forwards never forwards these requests, so
%% a caller that sees it exit knows its request never ran.
-define(SHOAL_CALL(Msg), {'$shoal_call', Msg}).
-define(REDIRECT(Pid), {'$shoal_redirect', Pid}).

%% Counter slots in #shoal_cfg.counters.
-define(C_SPAWNS, 1).
-define(C_NORMAL_EXITS, 2).
-define(C_CRASHES, 3).
-define(C_IDLE_OFFLOADS, 4).
-define(C_CALL_TIMEOUTS, 5).
-define(C_RESTARTS, 6).
-define(C_COUNT, 6).
