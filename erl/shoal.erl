%% @doc Shoal: millions of long-lived, addressable workers, one per key.
%%
%% A pool maps keys to worker processes (one per key), spawning a worker on the first
%% message for its key. Resolving a key is a read of a NIF table on the caller's node; a
%% key with no worker is arbitrated by its home member (docs/protocol.md), so concurrent
%% callers anywhere in the cluster all get the same worker.
%%
%% Calls are rerouted: if the worker was gone before it received the call (it died, was
%% offloaded, stopped or moved), the call finds the key's current worker (spawning where
%% allowed) and is sent again, so such a race is never a timeout.
-module(shoal).

-include("shoal_int.hrl").

-export([start_pool/2, stop_pool/1,
         call/3, call/4, cast/3, call_existing/3, call_existing/4, cast_existing/3,
         ensure_started/2, ensure_started_async/2, whereis/2, count/1, stop_worker/2,
         stats/1, key_of/1]).
%% The cluster.
-export([nodes/1, ready/1, await_ready/2, view/1, lookup/2, count/2, migrate/3, drain/2,
         undrain/2, set_target/3, rebalance/1, rebalance/2, health/1]).

-export_type([pool/0, key/0, options/0, stats/0]).

-type pool() :: atom().
-type key() :: term().
%% A map, or a proplist with the same keys (an Elixir keyword list; the first of repeated
%% keys wins).
-type options() :: #{worker := module(),
                     args => term(),
                     segments => pos_integer(),
                     restart => temporary | transient | permanent,
                     idle_timeout => timeout(),
                     table_segments_log2 => 0..16,
                     spawn_opts => [term()],
                     handoff_grace => non_neg_integer(),
                     quorum => pos_integer()}
                 | [{atom(), term()}].
-type stats() :: #{live := non_neg_integer(),
                   spawns := non_neg_integer(),
                   normal_exits := non_neg_integer(),
                   crashes := non_neg_integer(),
                   crashes_per_minute := non_neg_integer(),
                   crashes_per_second := non_neg_integer(),
                   idle_offloads := non_neg_integer(),
                   call_timeouts := non_neg_integer(),
                   restarts := non_neg_integer()}.

-define(DEFAULT_TIMEOUT, 5000).
-define(valid_timeout(T), (T =:= infinity orelse (is_integer(T) andalso T >= 0))).
%% The pool's configuration on the hot paths: the error's arguments are only built when
%% the pool is missing (a function would build them on every call).
-define(pool_cfg(Pool, Fun, Args),
        case persistent_term:get(?PT_KEY(Pool), undefined) of
            #shoal_cfg{} = C__ -> C__;
            _ -> cfg(Pool, Fun, Args)
        end).

%%% Pools ---------------------------------------------------------------------------------

%% @doc Start pool `Pool' under the shoal application (started if need be).
%% Options (a map or a proplist): `worker' (required, a shoal_worker module), `args' (given to init/2, default
%% `undefined'), `segments' (segment supervisors, default 4 per scheduler), `restart'
%% (`temporary', the default: a crashed worker comes back on its next message;
%% `transient': restarted at once after a crash; `permanent': after any exit Shoal did not
%% ask for), `idle_timeout' (ms without a message before a worker is offloaded, default
%% `infinity'), `table_segments_log2' (lock segments of the table, default 8),
%% `spawn_opts' (for the worker processes), `handoff_grace' (ms a migrated worker keeps
%% forwarding to its successor, default 5000), `quorum' (how many members must agree on
%% the member list before this node places a new key, default 1: with the cluster's size,
%% or a majority of it, a node that is alone or on the small side of a partition waits
%% instead of spawning a second worker).
%%
%% Starting a pool of the same name on connected nodes forms one cluster-wide pool. Start it
%% with the same `worker', `restart', `idle_timeout', `quorum' and `handoff_grace' on every
%% node: a member that meets one started with others logs an `options_differ' warning.
-spec start_pool(pool(), options()) -> {ok, pid()} | {error, term()}.
start_pool(Pool, Opts) ->
    case shoal_pool:validate(Pool, Opts) of
        {ok, _} ->
            {ok, _} = application:ensure_all_started(shoal),
            case supervisor:start_child(shoal_sup, shoal_pool:child_spec(Pool, Opts)) of
                {ok, Pid} -> {ok, Pid};
                {error, {already_started, Pid}} -> {error, {already_started, Pid}};
                {error, already_present} ->
                    _ = supervisor:delete_child(shoal_sup, {shoal_pool, Pool}),
                    start_pool(Pool, Opts);
                {error, {{shutdown, {failed_to_start_child, server, {already_started, _}}}, _}} ->
                    {error, {already_started, Pool}};
                {error, _} = E -> E
            end;
        {error, _} = E ->
            E
    end.

%% @doc Stop pool `Pool' and every worker in it (each gets its terminate/2 if it has one).
-spec stop_pool(pool()) -> ok | {error, {no_such_pool, pool()}}.
stop_pool(Pool) ->
    case whereis(shoal_sup) =/= undefined andalso
        supervisor:terminate_child(shoal_sup, {shoal_pool, Pool}) of
        ok ->
            _ = supervisor:delete_child(shoal_sup, {shoal_pool, Pool}),
            ok;
        _ ->
            {error, {no_such_pool, Pool}}
    end.

%%% Messages ------------------------------------------------------------------------------

%% @equiv call(Pool, Key, Msg, 5000)
-spec call(pool(), key(), term()) -> term().
call(Pool, Key, Msg) -> call(Pool, Key, Msg, ?DEFAULT_TIMEOUT).

%% @doc Call the worker for `Key', spawning it first if there is none. The call runs at
%% most once: if the worker moved, stopped or offloaded itself before it had the call, the
%% call follows the key to its current worker, with up to `Timeout' more for that. Exits like
%% gen_server:call/3 on failure, with `{Reason, {shoal, call, [Pool, Key, Msg, Timeout]}}';
%% a Timeout that is neither `infinity' nor a non-negative integer exits with
%% `{{bad_timeout, Timeout}, ...}' before anything is spawned. While somebody listens to
%% them (shoal_telemetry:call_events/0), the call is a `[shoal, call]' span of events.
-spec call(pool(), key(), term(), timeout()) -> term().
call(Pool, Key, Msg, Timeout) ->
    Cfg = ?pool_cfg(Pool, call, [Pool, Key, Msg, Timeout]),
    ?valid_timeout(Timeout) orelse exit({{bad_timeout, Timeout}, {?MODULE, call, [Pool, Key, Msg, Timeout]}}),
    case shoal_telemetry:call_events() of
        false -> call_spawning(Cfg, Key, Msg, Timeout);
        true -> observed(Pool, Key, fun() -> call_spawning(Cfg, Key, Msg, Timeout) end)
    end.

call_spawning(#shoal_cfg{pool = Pool} = Cfg, Key, Msg, Timeout) ->
    Pid = case shoal_registry:whereis(Cfg, Key) of
              undefined -> resolve_or_exit(Cfg, Key, Timeout, call, [Pool, Key, Msg, Timeout]);
              P -> P
          end,
    do_call(call_of(Cfg, Key, Msg, Timeout, spawn, call), Pid, 0, 0).

%% @equiv call_existing(Pool, Key, Msg, 5000)
-spec call_existing(pool(), key(), term()) -> term() | {error, not_found}.
call_existing(Pool, Key, Msg) -> call_existing(Pool, Key, Msg, ?DEFAULT_TIMEOUT).

%% @doc Call the worker for `Key' only if it is live: `{error, not_found}' otherwise.
-spec call_existing(pool(), key(), term(), timeout()) -> term() | {error, not_found}.
call_existing(Pool, Key, Msg, Timeout) ->
    Cfg = ?pool_cfg(Pool, call_existing, [Pool, Key, Msg, Timeout]),
    ?valid_timeout(Timeout) orelse
        exit({{bad_timeout, Timeout}, {?MODULE, call_existing, [Pool, Key, Msg, Timeout]}}),
    case shoal_telemetry:call_events() of
        false -> call_live(Cfg, Key, Msg, Timeout);
        true -> observed(Pool, Key, fun() -> call_live(Cfg, Key, Msg, Timeout) end)
    end.

call_live(Cfg, Key, Msg, Timeout) ->
    case shoal_registry:whereis(Cfg, Key) of
        undefined -> {error, not_found};
        Pid -> do_call(call_of(Cfg, Key, Msg, Timeout, existing, call_existing), Pid, 0, 0)
    end.

%% A call as a `[shoal, call]' span (only built when somebody listens: see
%% shoal_telemetry:call_events/0).
observed(Pool, Key, Call) ->
    shoal_telemetry:span([shoal, call], #{pool => Pool, key => Key, node => node()},
                         fun() -> {Call(), #{}} end).

%% @doc Send `Msg' to the worker for `Key' (gen_server:cast semantics), spawning it first if
%% there is none. Always `ok' for a running pool (a key that cannot be placed within 5 s,
%% for want of capacity or of an agreed view, drops the message).
-spec cast(pool(), key(), term()) -> ok.
cast(Pool, Key, Msg) ->
    Cfg = ?pool_cfg(Pool, cast, [Pool, Key, Msg]),
    case shoal_registry:route(Cfg, Key, {'$gen_cast', Msg}) of
        ok -> ok;
        {remote, Pid} -> gen_server:cast(Pid, Msg);
        undefined ->
            case shoal_arbiter:resolve(Cfg, Key, call, ?DEFAULT_TIMEOUT) of
                {ok, Pid} -> gen_server:cast(Pid, Msg);
                {error, _} -> ok
            end
    end.

%% @doc Cast to the worker for `Key' only if it is live.
-spec cast_existing(pool(), key(), term()) -> ok | {error, not_found}.
cast_existing(Pool, Key, Msg) ->
    Cfg = ?pool_cfg(Pool, cast_existing, [Pool, Key, Msg]),
    case shoal_registry:route(Cfg, Key, {'$gen_cast', Msg}) of
        ok -> ok;
        {remote, Pid} -> gen_server:cast(Pid, Msg);
        undefined -> {error, not_found}
    end.

%%% Workers -------------------------------------------------------------------------------

%% @doc Synchronous spawn: returns `{ok, Pid}' once the worker for `Key' exists and its
%% init/2 has returned `{ok, _}', and every concurrent caller, on any node, gets the same
%% answer; `{error, Reason}' if init/2 failed (or `{error, not_ready}' if the cluster did not
%% agree on its members within 5 s). For a worker that already exists this asks it whether
%% its init/2 is done (one message to the worker, on its node).
-spec ensure_started(pool(), key()) -> {ok, pid()} | {error, term()}.
ensure_started(Pool, Key) ->
    Cfg = cfg(Pool, ensure_started, [Pool, Key]),
    case shoal_registry:whereis(Cfg, Key) of
        undefined -> shoal_arbiter:resolve(Cfg, Key, sync, ?DEFAULT_TIMEOUT);
        Pid -> shoal_arbiter:ready_or_resolve(Cfg, Key, Pid, ?DEFAULT_TIMEOUT)
    end.

%% @doc Asynchronous spawn: starts the worker for `Key' if there is none and returns `ok'
%% at once, without waiting for its init/2 nor for a racing spawner.
-spec ensure_started_async(pool(), key()) -> ok.
ensure_started_async(Pool, Key) ->
    shoal_arbiter:spawn_async(cfg(Pool, ensure_started_async, [Pool, Key]), Key).

%% @doc The worker for `Key' (on any node), or `undefined'. A NIF table read on this node;
%% no process is involved.
-spec whereis(pool(), key()) -> pid() | undefined.
whereis(Pool, Key) ->
    shoal_registry:whereis(?pool_cfg(Pool, whereis, [Pool, Key]), Key).

%% @doc The number of live workers in the pool, cluster-wide, from this node's table.
-spec count(pool()) -> non_neg_integer().
count(Pool) -> shoal_registry:count(cfg(Pool, count, [Pool])).

%% @doc Stop the worker for `Key' gracefully: it runs terminate/2, then leaves the table
%% (so the key's next incarnation starts only once the state is saved), and anything still
%% queued for it goes to that next incarnation. Returns once terminate/2 has run. `{error, not_found}' if
%% there is no worker (or it was gone before it had the request); `{error, {nodedown,
%% Node}}' if the connection to the worker's node was lost before it answered (the node
%% died, with the worker, or was cut off: then the worker may still run over there).
-spec stop_worker(pool(), key()) -> ok | {error, not_found | {nodedown, node()}}.
stop_worker(Pool, Key) ->
    Cfg = cfg(Pool, stop_worker, [Pool, Key]),
    case shoal_registry:whereis(Cfg, Key) of
        undefined -> {error, not_found};
        Pid ->
            stop_pid(Pool, Key, Pid)
    end.

stop_pid(Pool, Key, Pid) ->
    try gen_server:call(Pid, '$shoal_stop', infinity) of
        ?REDIRECT(To) -> stop_pid(Pool, Key, To);
        ok -> ok
    catch exit:{R, _} when R =:= noproc; R =:= normal;
                           R =:= {shutdown, shoal_stopped};
                           R =:= {shutdown, shoal_offloaded} ->
            {error, not_found};
          exit:{{shutdown, {shoal_moved, _}}, _} ->
            %% It moved before it had our request (a worker that forwards answers with
            %% where it went instead): ask where the key is now.
            stop_worker(Pool, Key);
          exit:{{nodedown, Node}, _} ->
            {error, {nodedown, Node}}
    end.

%% @doc Counters of the pool on this node: live workers (cluster-wide), spawns, normal
%% exits, crashes (with the crash rate over the last second and minute), idle offloads,
%% restarts and call timeouts.
-spec stats(pool()) -> stats().
stats(Pool) ->
    #shoal_cfg{counters = C, meter = M} = Cfg = cfg(Pool, stats, [Pool]),
    #{live => shoal_registry:count(Cfg),
      spawns => counters:get(C, ?C_SPAWNS),
      normal_exits => counters:get(C, ?C_NORMAL_EXITS),
      crashes => counters:get(C, ?C_CRASHES),
      crashes_per_minute => shoal_nif:meter_sum(M, 60),
      crashes_per_second => shoal_nif:meter_sum(M, 1),
      idle_offloads => counters:get(C, ?C_IDLE_OFFLOADS),
      call_timeouts => counters:get(C, ?C_CALL_TIMEOUTS),
      restarts => counters:get(C, ?C_RESTARTS)}.

%% @doc The pool and key of a worker process: `{ok, Pool, Key}', or `undefined' if `Pid' is
%% not a live Shoal worker. For a pid of this node, a read of its process dictionary; for a
%% pid of another node, the same read there (one erpc round trip, at most 5 s; `undefined'
%% if that node cannot be reached or does not run Shoal).
-spec key_of(pid()) -> {ok, pool(), key()} | undefined.
key_of(Pid) when is_pid(Pid), node(Pid) =:= node() -> shoal_worker_proc:key_of(Pid);
key_of(Pid) when is_pid(Pid) ->
    try erpc:call(node(Pid), shoal_worker_proc, key_of, [Pid], 5000)
    catch _:_ -> undefined
    end.

%%% The cluster ---------------------------------------------------------------------------

%% @doc The member nodes of the pool as this node sees them: itself and every node whose
%% member it has met (its proposed view). See view/1 for whether they agree.
-spec nodes(pool()) -> [node(), ...].
nodes(Pool) -> shoal_view:members(cfg(Pool, nodes, [Pool])).

%% @doc Whether this node's member is active: every member it sees has acknowledged the
%% same member list, so new keys can be placed. Lookups and calls to existing workers work
%% whether or not it is.
-spec ready(pool()) -> boolean().
ready(Pool) -> shoal_view:active(cfg(Pool, ready, [Pool])) =/= inactive.

%% @doc Wait until this node's member is active: `ok', or `{error, not_ready}' after
%% Timeout ms.
-spec await_ready(pool(), timeout()) -> ok | {error, not_ready}.
await_ready(Pool, Timeout) -> shoal_view:await_active(cfg(Pool, await_ready, [Pool, Timeout]), Timeout).

%% @doc This node's view of the pool's membership: `members' (its proposed view),
%% `agreed' (whether it is active), `active' (the agreed member list or `none'),
%% `changes' (how many times it became active), `peers' and `probing' (connected nodes
%% it has not heard from yet), and `protocol': the member protocol version it speaks with
%% each peer (the newest both speak) and, under its own node name, the newest it speaks
%% itself (see the application's `protocol_vsn' in docs/operations.md).
-spec view(pool()) -> #{members := [node()], agreed := boolean(), active := [node()] | none,
                        changes := non_neg_integer(), peers := [node()], probing := [node()],
                        protocol := #{node() => pos_integer()}}.
view(Pool) ->
    #shoal_cfg{server = Name} = cfg(Pool, view, [Pool]),
    gen_server:call(Name, view).

%% @doc Where the worker for `Key' lives, from this node's table.
-spec lookup(pool(), key()) -> {ok, node(), pid()} | {error, not_found}.
lookup(Pool, Key) ->
    case whereis(Pool, Key) of
        undefined -> {error, not_found};
        Pid -> {ok, node(Pid), Pid}
    end.

%% @doc The number of live workers of the pool on `Node', from this node's table.
-spec count(pool(), node()) -> non_neg_integer().
count(Pool, Node) -> shoal_registry:count(cfg(Pool, count, [Pool, Node]), Node).

%% @doc Move the worker for `Key' to `Node' with its state (handoff/1, takeover/3).
%% Messages that reach the old process meanwhile are handed to the new one.
-spec migrate(pool(), key(), node()) -> {ok, pid()} | {error, term()}.
migrate(Pool, Key, Node) -> shoal_mover:migrate(cfg(Pool, migrate, [Pool, Key, Node]), Key, Node).

%% @doc Stop placing new workers on `Node' and move its workers to the other members,
%% keeping their state. Returns once `Node' holds no worker of the pool. Draining the only
%% member that is not drained is refused: `{error, {no_other_member, Node}}'. A drain fills
%% no member past its `high' (set_target/3): the workers that find no room stay on `Node',
%% working, and the answer is `{error, {stuck, N}}' with how many.
-spec drain(pool(), node()) -> ok | {error, term()}.
drain(Pool, Node) ->
    Cfg = cfg(Pool, drain, [Pool, Node]),
    Members = shoal_view:members(Cfg),
    Others = [N || N <- Members, N =/= Node, not shoal_view:drained(Cfg, N)],
    case {lists:member(Node, Members), Others} of
        {false, _} -> {error, {not_a_member, Node}};
        {true, []} -> {error, {no_other_member, Node}};
        {true, _} ->
            ok = config(Cfg, {drained, Node, true}),
            shoal_mover:drain(Cfg, Node)
    end.

%% @doc Let `Node' take new workers again.
-spec undrain(pool(), node()) -> ok | {error, {not_a_member, node()}}.
undrain(Pool, Node) ->
    Cfg = cfg(Pool, undrain, [Pool, Node]),
    case lists:member(Node, shoal_view:members(Cfg)) of
        true -> config(Cfg, {drained, Node, false});
        false -> {error, {not_a_member, Node}}
    end.

%% @doc Set `Node''s placement window. New workers go to the node furthest below its
%% `target'; a node at or over `high' (`high => 0' included) takes none. Missing keys keep
%% their defaults (`low' 0, `target' and `high' infinity).
-spec set_target(pool(), node(), map()) -> ok | {error, term()}.
set_target(Pool, Node, Window) when is_map(Window) ->
    Cfg = cfg(Pool, set_target, [Pool, Node, Window]),
    W = maps:merge(shoal_placement:default_window(), Window),
    case W of
        #{low := L, target := T, high := H} when map_size(W) =:= 3, is_integer(L), L >= 0,
                                                 (T =:= infinity orelse is_integer(T)),
                                                 (H =:= infinity orelse is_integer(H)) ->
            case lists:member(Node, shoal_view:members(Cfg)) of
                true -> config(Cfg, {window, Node, W});
                false -> {error, {not_a_member, Node}}
            end;
        _ ->
            {error, {bad_window, Window}}
    end;
set_target(_Pool, _Node, Window) ->
    {error, {bad_window, Window}}.

%% @doc Move the fewest workers that bring every member inside its window (see
%% set_target/3; with the default windows, nothing moves).
-spec rebalance(pool()) -> {ok, #{moved := non_neg_integer()}}.
rebalance(Pool) -> shoal_mover:rebalance(cfg(Pool, rebalance, [Pool])).

%% @doc rebalance/1 with `windows'; with `even', move the fewest workers that leave every
%% member that is not drained within one of the average (with T workers and A such
%% members, each holds T div A or T div A + 1), whatever the windows say, and move a
%% drained member's workers away. Counts are those of this node's table; workers spawned
%% or stopped meanwhile are not accounted for. `{ok, #{moved => N}}', the workers moved.
-spec rebalance(pool(), windows | even) -> {ok, #{moved := non_neg_integer()}} | {error, term()}.
rebalance(Pool, How) when How =:= windows; How =:= even ->
    shoal_mover:rebalance(cfg(Pool, rebalance, [Pool, How]), How);
rebalance(_Pool, How) ->
    {error, {bad_rebalance, How}}.

%% @doc Per member: workers, window, fill, drained, crashes per minute; plus the total.
-spec health(pool()) -> #{nodes := #{node() => map()}, total := non_neg_integer()}.
health(Pool) -> shoal_health:health(cfg(Pool, health, [Pool])).

%%% Internals -----------------------------------------------------------------------------

cfg(Pool, Fun, Args) ->
    case persistent_term:get(?PT_KEY(Pool), undefined) of
        #shoal_cfg{} = Cfg -> Cfg;
        undefined -> exit({{no_such_pool, Pool}, {?MODULE, Fun, Args}})
    end.

config(#shoal_cfg{server = Name}, Item) -> gen_server:call(Name, {config, Item}).

%% A reroute learns a newer incarnation or resolves the key afresh; a call after a burst of
%% moves with a short handoff_grace may meet several retired incarnations in turn, so the
%% bound is not tight (it was 3: one call in 339 thousand of a chaos run exited `noproc'
%% after a re-learning fix). The call's deadline bounds the reroutes in time as well.
-define(MAX_REROUTES, 10).
%% Each redirect names a strictly newer incarnation, so a chain ends; this only bounds it.
-define(MAX_REDIRECTS, 64).

%% One call of shoal:call/4 or call_existing/4 on its way. The first attempt waits up to
%% Timeout; the first redirect or reroute sets a deadline Timeout ahead, which all the
%% attempts after it share (reading the clock costs a fast local call some 4%, so the first
%% attempt does not).
-record(call, {cfg :: #shoal_cfg{},
               key :: key(),
               msg :: term(),
               timeout :: timeout(),
               deadline = none :: integer() | infinity | none,
               mode :: spawn | existing,
               name :: call | call_existing}).

call_of(Cfg, Key, Msg, Timeout, Mode, Name) ->
    #call{cfg = Cfg, key = Key, msg = Msg, timeout = Timeout, mode = Mode, name = Name}.

remaining(#call{deadline = infinity}) -> infinity;
remaining(#call{deadline = none, timeout = T}) -> T;
remaining(#call{deadline = D}) -> max(0, D - erlang:monotonic_time(millisecond)).

%% Past the first attempt: the deadline the later ones share.
later(#call{deadline = none, timeout = infinity} = C) -> C#call{deadline = infinity};
later(#call{deadline = none, timeout = T} = C) ->
    C#call{deadline = erlang:monotonic_time(millisecond) + T};
later(C) -> C.

do_call(#call{msg = Msg} = C, Pid, Tries, Hops) ->
    try gen_server:call(Pid, ?SHOAL_CALL(Msg), remaining(C)) of
        ?REDIRECT(To) when Hops < ?MAX_REDIRECTS -> do_call(later(C), To, Tries, Hops + 1);
        ?REDIRECT(_) -> call_failed(C, too_many_redirects);
        Reply -> Reply
    catch
        exit:{Reason, _} ->
            %% A call that provably never ran (shoal_arbiter:never_ran/1) may be sent again.
            case shoal_arbiter:never_ran(Reason) andalso Tries < ?MAX_REROUTES of
                true -> reroute(later(C), Pid, Tries);
                false -> call_failed(C, Reason)
            end
    end.

%% The worker was gone before it handled the call: learn the key's current worker (the
%% dead one's node knows it), spawn one if allowed, and send the call again.
reroute(#call{cfg = Cfg, key = Key, mode = Mode} = C, Dead, Tries) ->
    _ = case node(Dead) =:= node() of
            true -> shoal_registry:unregister(Cfg, Key, Dead);
            false -> shoal_arbiter:relearn(Cfg, Key, Dead)
        end,
    Next = case shoal_registry:whereis(Cfg, Key) of
               undefined when Mode =:= spawn -> shoal_arbiter:resolve(Cfg, Key, call, remaining(C));
               undefined -> {error, not_found};
               P -> {ok, P}
           end,
    case Next of
        {ok, Pid} -> do_call(C, Pid, Tries + 1, 0);
        {error, not_found} when Mode =:= existing -> {error, not_found};
        {error, Reason} -> call_failed(C, Reason)
    end.

-spec call_failed(#call{}, term()) -> no_return().
call_failed(#call{cfg = #shoal_cfg{counters = Cs, pool = Pool}, key = Key, msg = Msg,
                  timeout = Timeout, name = Name}, Reason) ->
    Reason =:= timeout andalso counters:add(Cs, ?C_CALL_TIMEOUTS, 1),
    exit({Reason, {?MODULE, Name, [Pool, Key, Msg, Timeout]}}).

resolve_or_exit(Cfg, Key, Timeout, Fun, Args) ->
    case shoal_arbiter:resolve(Cfg, Key, call, Timeout) of
        {ok, Pid} -> Pid;
        {error, Reason} -> exit({Reason, {?MODULE, Fun, Args}})
    end.
