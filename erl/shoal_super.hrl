%% Internal records of shoal_super (groups, chains and standalone workers). Not part of the
%% public API.

%% One running supervisor, kept in persistent_term under {shoal_super, Id} by its server.
-record(ss, {
    id       :: atom(),                  %% the supervisor's id (its registered name)
    tab      :: ets:tid(),               %% the registry (see shoal_super_reg)
    server   :: pid(),
    cluster  :: atom() | undefined       %% the Shoal pool that hosts remote members/steps
}).

%% What every process of one chain needs to know about it (workers carry it in their
%% state; the ingress reads it from the registry).
-record(sc, {
    sup       :: atom(),
    chain     :: term(),
    owner     :: node(),                 %% the node the chain's supervisor runs on
    mgr       :: pid(),                  %% the chain manager (on the owner node)
    ledger    :: ets:tid(),              %% items in flight (owner node only)
    flow      :: atomics:atomics_ref(),  %% 1: items in flight, 2: senders waiting, 3: stopping
    max_queue :: pos_integer(),
    on_finish :: undefined | fun((term()) -> term()) | {module(), atom(), list()},
    delivery  :: at_most_once | at_least_once,
    reg       :: ets:tid(),              %% the supervisor's registry
    waiters   :: ets:tid()               %% senders waiting for room, oldest first
}).

%% Where items for one step go: its live workers and how to pick one.
-record(route, {
    idx      :: pos_integer(),           %% the step's position in the chain
    step     :: term(),                  %% the step's id
    pids     :: tuple(),                 %% live workers (may be empty)
    dispatch :: random | round_robin | hash | broadcast,
    rr       :: atomics:atomics_ref() | undefined   %% round-robin counter for the ingress
}).

-define(SS_KEY(Id), {shoal_super, Id}).
-define(DEFAULT_TIMEOUT, 5000).
