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
%% Used by shoal_segment and shoal_worker_proc.
-export([resolve/2, spawn_async/2]).

-export_type([pool/0, key/0, options/0, stats/0]).

-type pool() :: atom().
-type key() :: term().
-type options() :: #{worker := module(),
                     args => term(),
                     segments => pos_integer(),
                     restart => temporary | transient | permanent,
                     idle_timeout => timeout(),
                     table_segments_log2 => 0..16,
                     spawn_opts => [term()]}.
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

%%% Pools ---------------------------------------------------------------------------------

%% @doc Start pool `Pool' under the shoal application (started if need be).
%% Options: `worker' (required, a shoal_worker module), `args' (given to init/2, default
%% `undefined'), `segments' (segment supervisors, default 4 per scheduler), `restart'
%% (`temporary', the default: a crashed worker comes back on its next message;
%% `transient': restarted at once after a crash; `permanent': after any exit Shoal did not
%% ask for), `idle_timeout' (ms without a message before a worker is offloaded, default
%% `infinity'), `table_segments_log2' (lock segments of the table, default 8),
%% `spawn_opts' (for the worker processes).
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
    Cfg = cfg(Pool, call, [Pool, Key, Msg, Timeout]),
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
    Cfg = cfg(Pool, call_existing, [Pool, Key, Msg, Timeout]),
    case shoal_nif:whereis(Cfg#shoal_cfg.table, Key) of
        undefined -> {error, not_found};
        Pid -> do_call(Cfg, Key, Pid, Msg, Timeout, existing, call_existing)
    end.

%% @doc Send `Msg' to the worker for `Key' (gen_server:cast semantics), spawning it first if
%% there is none. Always `ok' for a running pool.
-spec cast(pool(), key(), term()) -> ok.
cast(Pool, Key, Msg) ->
    #shoal_cfg{table = T} = Cfg = cfg(Pool, cast, [Pool, Key, Msg]),
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
    #shoal_cfg{table = T} = cfg(Pool, cast_existing, [Pool, Key, Msg]),
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
    shoal_nif:whereis((cfg(Pool, whereis, [Pool, Key]))#shoal_cfg.table, Key).

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

%%% Internals -----------------------------------------------------------------------------

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
    _ = node(Dead) =:= node() andalso shoal_nif:unregister(T, Key, Dead),
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

call_failed(#shoal_cfg{counters = C}, Reason, Fun, Args) ->
    Reason =:= timeout andalso counters:add(C, ?C_CALL_TIMEOUTS, 1),
    exit({Reason, {?MODULE, Fun, Args}}).

resolve_or_exit(Cfg, Key, Fun, Args) ->
    case resolve(Cfg, Key) of
        {ok, Pid} -> Pid;
        {error, Reason} -> exit({Reason, {?MODULE, Fun, Args}})
    end.

%% @private The worker for Key, spawned by this process if there is none.
-spec resolve(#shoal_cfg{}, key()) -> {ok, pid()} | {error, term()}.
resolve(Cfg, Key) -> resolve(Cfg, Key, nowait).

resolve(#shoal_cfg{table = T} = Cfg, Key, Wait) ->
    Ref = make_ref(),
    case shoal_nif:claim(T, Key, Ref) of
        {ok, Pid} -> {ok, Pid};
        claimed -> spawn_claimed(Cfg, Key, Wait);
        {wait, Claimer} ->
            Mref = erlang:monitor(process, Claimer),
            receive
                {'$shoal_claim', Ref, {ok, Pid}} ->
                    erlang:demonitor(Mref, [flush]),
                    {ok, Pid};
                {'$shoal_claim', Ref, retry} ->
                    erlang:demonitor(Mref, [flush]),
                    resolve(Cfg, Key, Wait);
                {'DOWN', Mref, process, Claimer, _} ->
                    %% The claimer died mid-spawn: clear its claim (telling the other
                    %% waiters) and race again.
                    _ = shoal_nif:unregister(T, Key, Claimer),
                    flush_claim(Ref),
                    resolve(Cfg, Key, Wait)
            end
    end.

flush_claim(Ref) ->
    receive {'$shoal_claim', Ref, _} -> ok after 0 -> ok end.

%% We hold the claim: spawn, register (which wakes every waiter), and with `sync' wait
%% for init/2.
spawn_claimed(#shoal_cfg{table = T, counters = C} = Cfg, Key, Wait) ->
    Ack = case Wait of
              sync -> {self(), make_ref()};
              nowait -> none
          end,
    Pid = shoal_worker_proc:spawn_worker(Cfg, Key, Ack),
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
            case shoal_nif:claim(T, Key, nowait) of
                claimed -> spawn_claimed(Cfg, Key, nowait);
                {ok, _} -> ok;
                {wait, _} -> ok  %% someone else is spawning it; we are not told when
            end;
        _ -> ok
    end.
