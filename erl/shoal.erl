%% @doc Shoal: millions of long-lived, addressable workers, one per key.
%%
%% A pool maps keys to worker processes (one per key), spawning a worker on the first
%% message for its key. Resolving a key is a read of a NIF table on the caller's node; a
%% spawn is claimed in that table (insert-if-absent), so concurrent callers of a new key
%% all get the same worker, and the spawn runs in the caller's process, not in a server.
%%
%% Calls are rerouted: if the worker was gone before it received the call (it died, was
%% offloaded or stopped), the call resolves the key again (spawning where allowed) and is
%% sent once more, so such a race is never a timeout.
-module(shoal).

-include("shoal_int.hrl").

-export([start_pool/2, stop_pool/1,
         call/3, call/4, cast/3, call_existing/3, call_existing/4, cast_existing/3,
         ensure_started/2, ensure_started_async/2, whereis/2, count/1, stop_worker/2,
         stats/1]).
%% The cluster.
-export([nodes/1, lookup/2, count/2, migrate/3, drain/2, undrain/2, set_target/3,
         rebalance/1, health/1]).
%% Used by the other shoal modules.
-export([cfg/1, resolve/2, resolve_local/3, spawn_async/2, spawn_claimed/3, await_started/2,
         await_claim/5]).

-export_type([pool/0, key/0, options/0, stats/0]).

-type pool() :: atom().
-type key() :: term().
-type options() :: #{worker := module(),
                     args => term(),
                     segments => pos_integer(),
                     restart => temporary | transient | permanent,
                     idle_timeout => timeout(),
                     table_segments_log2 => 0..16,
                     spawn_opts => [term()],
                     handoff_grace => non_neg_integer()}.
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
%% The pool's configuration on the hot paths: the error's arguments are only built when
%% the pool is missing (a function would build them on every call).
-define(pool_cfg(Pool, Fun, Args),
        case persistent_term:get(?PT_KEY(Pool), undefined) of
            #shoal_cfg{} = C__ -> C__;
            _ -> cfg(Pool, Fun, Args)
        end).

%%% Pools ---------------------------------------------------------------------------------

%% @doc Start pool `Pool' under the shoal application (started if need be).
%% Options: `worker' (required, a shoal_worker module), `args' (given to init/2, default
%% `undefined'), `segments' (segment supervisors, default 4 per scheduler), `restart'
%% (`temporary', the default: a crashed worker comes back on its next message;
%% `transient': restarted at once after a crash; `permanent': after any exit Shoal did not
%% ask for), `idle_timeout' (ms without a message before a worker is offloaded, default
%% `infinity'), `table_segments_log2' (lock segments of the table, default 8),
%% `spawn_opts' (for the worker processes), `handoff_grace' (ms a migrated worker keeps
%% forwarding to its successor, default 5000).
%%
%% Starting a pool of the same name on connected nodes forms one cluster-wide pool.
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

%% @doc Call the worker for `Key', spawning it first if there is none. Exits like
%% gen_server:call/3 on failure, with `{Reason, {shoal, call, [Pool, Key, Msg, Timeout]}}'.
-spec call(pool(), key(), term(), timeout()) -> term().
call(Pool, Key, Msg, Timeout) ->
    Cfg = ?pool_cfg(Pool, call, [Pool, Key, Msg, Timeout]),
    Pid = case shoal_nif:whereis(Cfg#shoal_cfg.table, Key) of
              undefined -> resolve_or_exit(Cfg, Key, call, [Pool, Key, Msg, Timeout]);
              P -> P
          end,
    do_call(Cfg, Key, Pid, Msg, Timeout, spawn, call).

%% @equiv call_existing(Pool, Key, Msg, 5000)
-spec call_existing(pool(), key(), term()) -> term() | {error, not_found}.
call_existing(Pool, Key, Msg) -> call_existing(Pool, Key, Msg, ?DEFAULT_TIMEOUT).

%% @doc Call the worker for `Key' only if it is live: `{error, not_found}' otherwise.
-spec call_existing(pool(), key(), term(), timeout()) -> term() | {error, not_found}.
call_existing(Pool, Key, Msg, Timeout) ->
    Cfg = ?pool_cfg(Pool, call_existing, [Pool, Key, Msg, Timeout]),
    case shoal_nif:whereis(Cfg#shoal_cfg.table, Key) of
        undefined -> {error, not_found};
        Pid -> do_call(Cfg, Key, Pid, Msg, Timeout, existing, call_existing)
    end.

%% @doc Send `Msg' to the worker for `Key' (gen_server:cast semantics), spawning it first if
%% there is none. Always `ok' for a running pool.
-spec cast(pool(), key(), term()) -> ok.
cast(Pool, Key, Msg) ->
    #shoal_cfg{table = T} = Cfg = ?pool_cfg(Pool, cast, [Pool, Key, Msg]),
    case shoal_nif:route(T, Key, {'$gen_cast', Msg}) of
        ok -> ok;
        {remote, Pid} -> gen_server:cast(Pid, Msg);
        undefined ->
            case resolve(Cfg, Key) of
                {ok, Pid} -> gen_server:cast(Pid, Msg);
                {error, _} -> ok
            end
    end.

%% @doc Cast to the worker for `Key' only if it is live.
-spec cast_existing(pool(), key(), term()) -> ok | {error, not_found}.
cast_existing(Pool, Key, Msg) ->
    #shoal_cfg{table = T} = ?pool_cfg(Pool, cast_existing, [Pool, Key, Msg]),
    case shoal_nif:route(T, Key, {'$gen_cast', Msg}) of
        ok -> ok;
        {remote, Pid} -> gen_server:cast(Pid, Msg);
        undefined -> {error, not_found}
    end.

%%% Workers -------------------------------------------------------------------------------

%% @doc Synchronous spawn: returns once the worker for `Key' exists and its init/2 has
%% run; every concurrent caller gets the same pid. `{error, Reason}' if init/2 failed.
-spec ensure_started(pool(), key()) -> {ok, pid()} | {error, term()}.
ensure_started(Pool, Key) ->
    Cfg = cfg(Pool, ensure_started, [Pool, Key]),
    case shoal_nif:whereis(Cfg#shoal_cfg.table, Key) of
        undefined -> resolve(Cfg, Key, sync);
        Pid -> {ok, Pid}
    end.

%% @doc Asynchronous spawn: starts the worker for `Key' if there is none and returns `ok'
%% at once, without waiting for its init/2 nor for a racing spawner.
-spec ensure_started_async(pool(), key()) -> ok.
ensure_started_async(Pool, Key) ->
    Cfg = cfg(Pool, ensure_started_async, [Pool, Key]),
    _ = spawn_async(Cfg, Key),
    ok.

%% @doc The worker for `Key', or `undefined'. A NIF table read on this node; no process
%% is involved.
-spec whereis(pool(), key()) -> pid() | undefined.
whereis(Pool, Key) ->
    #shoal_cfg{table = T} = ?pool_cfg(Pool, whereis, [Pool, Key]),
    shoal_nif:whereis(T, Key).

%% @doc The number of live workers in the pool.
-spec count(pool()) -> non_neg_integer().
count(Pool) -> shoal_nif:count((cfg(Pool, count, [Pool]))#shoal_cfg.table).

%% @doc Stop the worker for `Key' gracefully: it leaves the table, runs terminate/2, and
%% anything still queued for it goes to the key's next incarnation.
-spec stop_worker(pool(), key()) -> ok | {error, not_found}.
stop_worker(Pool, Key) ->
    Cfg = cfg(Pool, stop_worker, [Pool, Key]),
    case shoal_nif:whereis(Cfg#shoal_cfg.table, Key) of
        undefined -> {error, not_found};
        Pid ->
            try gen_server:call(Pid, '$shoal_stop', infinity)
            catch exit:{R, _} when R =:= noproc; R =:= normal;
                                   R =:= {shutdown, shoal_stopped};
                                   R =:= {shutdown, shoal_offloaded} ->
                    {error, not_found}
            end
    end.

%% @doc Counters of the pool: live workers, spawns, normal exits, crashes (with the crash
%% rate over the last second and minute), idle offloads, restarts and call timeouts.
-spec stats(pool()) -> stats().
stats(Pool) ->
    #shoal_cfg{table = T, counters = C, meter = M} = cfg(Pool, stats, [Pool]),
    #{live => shoal_nif:count(T),
      spawns => counters:get(C, ?C_SPAWNS),
      normal_exits => counters:get(C, ?C_NORMAL_EXITS),
      crashes => counters:get(C, ?C_CRASHES),
      crashes_per_minute => shoal_nif:meter_sum(M, 60),
      crashes_per_second => shoal_nif:meter_sum(M, 1),
      idle_offloads => counters:get(C, ?C_IDLE_OFFLOADS),
      call_timeouts => counters:get(C, ?C_CALL_TIMEOUTS),
      restarts => counters:get(C, ?C_RESTARTS)}.

%%% The cluster ---------------------------------------------------------------------------

%% @doc The member nodes of the pool, as this node sees them.
-spec nodes(pool()) -> [node(), ...].
nodes(Pool) -> shoal_cluster:members(cfg(Pool, nodes, [Pool])).

%% @doc Where the worker for `Key' lives, from this node's replica.
-spec lookup(pool(), key()) -> {ok, node(), pid()} | {error, not_found}.
lookup(Pool, Key) ->
    case whereis(Pool, Key) of
        undefined -> {error, not_found};
        Pid -> {ok, node(Pid), Pid}
    end.

%% @doc The number of live workers of the pool on `Node' (a local read).
-spec count(pool(), node()) -> non_neg_integer().
count(Pool, Node) ->
    #shoal_cfg{table = T} = cfg(Pool, count, [Pool, Node]),
    case Node =:= node() of
        true -> shoal_nif:count(T, local);
        false -> shoal_nif:count(T, Node)
    end.

%% @doc Move the worker for `Key' to `Node' with its state (handoff/1, takeover/3).
%% Messages that reach the old process meanwhile are handed to the new one.
-spec migrate(pool(), key(), node()) -> {ok, pid()} | {error, term()}.
migrate(Pool, Key, Node) ->
    Cfg = cfg(Pool, migrate, [Pool, Key, Node]),
    case lists:member(Node, shoal_cluster:members(Cfg)) of
        false -> {error, {not_a_member, Node}};
        true ->
            case shoal_nif:whereis(Cfg#shoal_cfg.table, Key) of
                undefined -> {error, not_found};
                Pid when node(Pid) =:= Node -> {ok, Pid};
                Pid ->
                    try gen_server:call(Pid, {'$shoal_migrate', Node}, 60000)
                    catch exit:{Reason, _} -> {error, Reason}
                    end
            end
    end.

%% @doc Stop placing new workers on `Node' and move its workers to the other members,
%% keeping their state. Returns once `Node' holds no worker of the pool.
-spec drain(pool(), node()) -> ok | {error, term()}.
drain(Pool, Node) ->
    Cfg = cfg(Pool, drain, [Pool, Node]),
    case lists:member(Node, shoal_cluster:members(Cfg)) of
        false -> {error, {not_a_member, Node}};
        true ->
            ok = gen_server:call(Cfg#shoal_cfg.server, {config, {drained, Node, true}}),
            try erpc:call(Node, shoal_cluster, evacuate, [Pool], infinity)
            catch error:{erpc, R} -> {error, R}
            end
    end.

%% @doc Let `Node' take new workers again.
-spec undrain(pool(), node()) -> ok.
undrain(Pool, Node) ->
    Cfg = cfg(Pool, undrain, [Pool, Node]),
    gen_server:call(Cfg#shoal_cfg.server, {config, {drained, Node, false}}).

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
            gen_server:call(Cfg#shoal_cfg.server, {config, {window, Node, W}});
        _ ->
            {error, {bad_window, Window}}
    end;
set_target(_Pool, _Node, Window) ->
    {error, {bad_window, Window}}.

%% @doc Move the fewest workers that bring every member inside its window.
-spec rebalance(pool()) -> {ok, #{moved := non_neg_integer()}}.
rebalance(Pool) ->
    _ = cfg(Pool, rebalance, [Pool]),
    shoal_cluster:rebalance(Pool).

%% @doc Per member: workers, window, fill, drained, crashes per minute; plus the total.
-spec health(pool()) -> #{nodes := #{node() => map()}, total := non_neg_integer()}.
health(Pool) ->
    _ = cfg(Pool, health, [Pool]),
    shoal_cluster:health(Pool).

%%% Internals -----------------------------------------------------------------------------

%% @private The configuration of a running pool (exits if there is none).
-spec cfg(pool()) -> #shoal_cfg{}.
cfg(Pool) -> cfg(Pool, cfg, [Pool]).

cfg(Pool, Fun, Args) ->
    case persistent_term:get(?PT_KEY(Pool), undefined) of
        #shoal_cfg{} = Cfg -> Cfg;
        undefined -> exit({{no_such_pool, Pool}, {?MODULE, Fun, Args}})
    end.

%% Reasons with which a call provably never reached a worker's callbacks: it may be sent
%% again. A worker that stops or offloads itself hands over what it had queued first.
retryable(noproc) -> true;
retryable({shutdown, shoal_stopped}) -> true;
retryable({shutdown, shoal_offloaded}) -> true;
retryable(_) -> false.

do_call(Cfg, Key, Pid, Msg, Timeout, Mode, Fun) ->
    try
        gen_server:call(Pid, Msg, Timeout)
    catch
        exit:{Reason, _} ->
            Args = [Cfg#shoal_cfg.pool, Key, Msg, Timeout],
            case retryable(Reason) of
                true -> retry_call(Cfg, Key, Pid, Msg, Timeout, Mode, Fun, Args);
                false -> call_failed(Cfg, Reason, Fun, Args)
            end
    end.

retry_call(#shoal_cfg{table = T} = Cfg, Key, Dead, Msg, Timeout, Mode, Fun, Args) ->
    _ = case node(Dead) =:= node() of
            true -> shoal_nif:unregister(T, Key, Dead);
            false -> shoal_nif:delete_remote(T, Key, Dead)
        end,
    Next = case Mode of
               spawn -> resolve(Cfg, Key);
               existing ->
                   case shoal_nif:whereis(T, Key) of
                       undefined -> {error, not_found};
                       P -> {ok, P}
                   end
           end,
    case Next of
        {ok, Pid} ->
            try gen_server:call(Pid, Msg, Timeout)
            catch exit:{Reason, _} -> call_failed(Cfg, Reason, Fun, Args)
            end;
        {error, not_found} when Mode =:= existing -> {error, not_found};
        {error, Reason} -> call_failed(Cfg, Reason, Fun, Args)
    end.

-spec call_failed(#shoal_cfg{}, term(), atom(), list()) -> no_return().
call_failed(#shoal_cfg{counters = C}, Reason, Fun, Args) ->
    Reason =:= timeout andalso counters:add(C, ?C_CALL_TIMEOUTS, 1),
    exit({Reason, {?MODULE, Fun, Args}}).

resolve_or_exit(Cfg, Key, Fun, Args) ->
    case resolve(Cfg, Key) of
        {ok, Pid} -> Pid;
        {error, Reason} -> exit({Reason, {?MODULE, Fun, Args}})
    end.

%% @private The worker for Key, spawned if there is none (by this process on a single
%% node; in a cluster, where the key's home node places it).
-spec resolve(#shoal_cfg{}, key()) -> {ok, pid()} | {error, term()}.
resolve(Cfg, Key) -> resolve(Cfg, Key, nowait).

resolve(Cfg, Key, Wait) -> shoal_cluster:resolve(Cfg, Key, Wait).

%% @private Resolve Key on this node only: claim it here and spawn it here.
-spec resolve_local(#shoal_cfg{}, key(), sync | nowait) -> {ok, pid()} | {error, term()}.
resolve_local(#shoal_cfg{table = T} = Cfg, Key, Wait) ->
    Ref = make_ref(),
    case shoal_nif:claim(T, Key, Ref) of
        {ok, Pid} -> {ok, Pid};
        claimed -> spawn_claimed(Cfg, Key, Wait);
        {wait, Claimer} ->
            await_claim(Cfg, Key, Ref, Claimer, fun() -> resolve_local(Cfg, Key, Wait) end)
    end.

%% @private Another process holds the claim on Key: wait until it resolves, or until it
%% dies (then clear its claim, telling the other waiters, and race again with Retry).
-spec await_claim(#shoal_cfg{}, key(), reference(), pid(),
                  fun(() -> {ok, pid()} | {error, term()})) -> {ok, pid()} | {error, term()}.
await_claim(#shoal_cfg{table = T}, Key, Ref, Claimer, Retry) ->
    Mref = erlang:monitor(process, Claimer),
    receive
        {'$shoal_claim', Ref, {ok, Pid}} ->
            erlang:demonitor(Mref, [flush]),
            {ok, Pid};
        {'$shoal_claim', Ref, retry} ->
            erlang:demonitor(Mref, [flush]),
            Retry();
        {'DOWN', Mref, process, Claimer, _} ->
            _ = shoal_nif:unregister(T, Key, Claimer),
            flush_claim(Ref),
            Retry()
    end.

flush_claim(Ref) ->
    receive {'$shoal_claim', Ref, _} -> ok after 0 -> ok end.

%% @private We hold the claim on Key: spawn here, register (which wakes every waiter),
%% and with `sync' wait for init/2.
-spec spawn_claimed(#shoal_cfg{}, key(), sync | nowait) -> {ok, pid()} | {error, term()}.
spawn_claimed(#shoal_cfg{table = T, counters = C} = Cfg, Key, Wait) ->
    Ack = case Wait of
              sync -> {self(), make_ref()};
              nowait -> none
          end,
    Pid = shoal_worker_proc:spawn_worker(Cfg, Key, Ack, init),
    counters:add(C, ?C_SPAWNS, 1),
    case shoal_nif:register(T, Key, Pid) of
        {ok, _} when Wait =:= sync -> await_started(Pid, Ack);
        {ok, _} -> {ok, Pid};
        {error, noproc} ->
            _ = shoal_nif:release_claim(T, Key),
            await_started(Pid, Ack);
        {error, {already_registered, Other}} ->
            exit(Pid, kill),
            {ok, Other}
    end.

%% @private Wait for the init ack of a worker spawned with Ack.
-spec await_started(pid(), none | {pid(), reference()}) -> {ok, pid()} | {error, term()}.
await_started(Pid, none) ->
    {error, {worker_exited, Pid}};
await_started(Pid, {_, Ref}) ->
    Mref = erlang:monitor(process, Pid),
    receive
        {'$shoal_started', Ref, ok} -> erlang:demonitor(Mref, [flush]), {ok, Pid};
        {'$shoal_started', Ref, {error, R}} -> erlang:demonitor(Mref, [flush]), {error, R};
        {'DOWN', Mref, process, Pid, R} -> {error, R}
    end.

%% @private Spawn the worker for Key unless it exists or another process is spawning it.
-spec spawn_async(#shoal_cfg{}, key()) -> ok | {ok, pid()} | {error, term()}.
spawn_async(#shoal_cfg{table = T} = Cfg, Key) ->
    case shoal_nif:whereis(T, Key) of
        undefined ->
            case shoal_cluster:members(Cfg) of
                [_] -> spawn_async_local(Cfg, Key);
                _ -> shoal_cluster:place_async(Cfg, Key)
            end;
        _ -> ok
    end.

spawn_async_local(#shoal_cfg{table = T} = Cfg, Key) ->
    case shoal_nif:claim(T, Key, nowait) of
        claimed -> spawn_claimed(Cfg, Key, nowait);
        {ok, _} -> ok;
        {wait, _} -> ok  %% someone else is spawning it; we are not told when
    end.
