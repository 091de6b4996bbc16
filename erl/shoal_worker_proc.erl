%% @doc The process around a user's shoal_worker module: a gen_server that runs the lazy
%% `load', offloads itself when idle, and hands queued messages on when it stops.
%%
%% Workers are spawned by the caller that claimed the key (never by a pool server) and
%% link to their segment (shoal_segment), which is their supervisor: it is recorded as the
%% gen_server parent, so a segment shutdown stops the worker like a supervisor would.
-module(shoal_worker_proc).
-behaviour(gen_server).

-include("shoal_int.hrl").

-export([spawn_worker/4, init_it/6]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, handle_continue/2,
         terminate/2, code_change/3]).

-record(w, {cfg :: #shoal_cfg{},
            key :: term(),
            st :: term(),
            loaded :: boolean(),
            user_timeout = false :: boolean(),
            %% After a migration (or a lost conflict): the successor everything goes to.
            forward = undefined :: undefined | pid(),
            %% During a batched move: state handed off, messages held until the successor
            %% is known (newest first).
            frozen = false :: boolean(),
            held = [] :: [{call, gen_server:from(), term()} | {cast, term()} | {info, term()}]}).

-type extra() :: timeout() | hibernate | {continue, term()}.
-type noreply_result() :: {noreply, #w{}} | {noreply, #w{}, extra()} | {stop, term(), #w{}}.
-type callback_result() :: {reply, term(), #w{}} | {reply, term(), #w{}, extra()} |
                           {stop, term(), term(), #w{}} | noreply_result().

%% @doc Spawn the worker for Key. `Ack' is `none', or `{Pid, Ref}' to be sent
%% `{'$shoal_started', Ref, ok | {error, Reason}}' once its state is set up: by init/2, or
%% with `{takeover, Transfer}' by takeover/3 (the end of a migration).
-spec spawn_worker(#shoal_cfg{}, term(), none | {pid(), reference()},
                   init | {takeover, term()}) -> pid().
spawn_worker(#shoal_cfg{segs = Segs, spawn_opts = SOpts} = Cfg, Key, Ack, How) ->
    Seg = element(erlang:phash2(Key, tuple_size(Segs)) + 1, Segs),
    proc_lib:spawn_opt(?MODULE, init_it, [Cfg, Key, Seg, self(), Ack, How], SOpts).

%% @private
-spec init_it(#shoal_cfg{}, term(), atom(), pid(), none | {pid(), reference()},
              init | {takeover, term()}) -> no_return().
init_it(#shoal_cfg{worker = Mod, args = Args, restart = Restart, trap_exit = Trap,
                   has_load = HasLoad, idle_timeout = Idle} = Cfg, Key, SegName, Spawner, Ack,
        How) ->
    SegPid = case whereis(SegName) of
                 undefined -> exit({shutdown, pool_stopping});
                 P -> P
             end,
    put('$ancestors', [SegPid]),
    link(SegPid),
    Trap andalso process_flag(trap_exit, true),
    Result = try first_state(Mod, Key, Args, How) of
                 {ok, St} -> {ok, St};
                 {stop, Reason} -> {stop, Reason};
                 Other -> {stop, {bad_return_value, Other}}
             catch
                 Class:Reason:Stack -> {stop, {Class, Reason, Stack}}
             end,
    case Result of
        {ok, State} ->
            ack(Ack, ok),
            Restart =/= temporary andalso gen_server:cast(SegPid, {track, self(), Key}),
            How =:= init andalso still_wanted(Cfg, Key, Spawner),
            W = #w{cfg = Cfg, key = Key, st = State, loaded = How =/= init orelse not HasLoad},
            gen_server:enter_loop(?MODULE, [], W, Idle);
        {stop, Why} ->
            ack(Ack, {error, Why}),
            exit(Why)
    end.

first_state(Mod, Key, Args, init) -> Mod:init(Key, Args);
first_state(Mod, Key, Args, {takeover, Transfer}) ->
    case erlang:function_exported(Mod, takeover, 3) of
        true -> Mod:takeover(Key, Transfer, Args);
        false -> {ok, Transfer}
    end.

ack(none, _) -> ok;
ack({Pid, Ref}, Result) -> Pid ! {'$shoal_started', Ref, Result}, ok.

%% A worker whose spawner died before registering it is reachable by nobody: leave.
still_wanted(#shoal_cfg{table = T}, Key, Spawner) ->
    Self = self(),
    case shoal_nif:lookup(T, Key) of
        {active, Self, _} -> ok;
        {claimed, Spawner} -> ok;
        _ -> exit(normal)
    end.

%% @private Never called: workers enter the loop through init_it/5.
-spec init(term()) -> ignore.
init(_) -> ignore.

%% @private
-spec handle_call(term(), gen_server:from(), #w{}) -> callback_result().
handle_call(Msg, From, #w{forward = To} = W) when is_pid(To) ->
    To ! {'$gen_call', From, Msg},
    {noreply, W};
handle_call(Msg, From, #w{frozen = true, held = H} = W) ->
    {noreply, W#w{held = [{call, From, Msg} | H]}};
handle_call('$shoal_freeze', _From, W) ->
    freeze(W);
handle_call('$shoal_stop', _From, W) ->
    unregister_self(W),
    {stop, {shutdown, shoal_stopped}, ok, W};
handle_call({'$shoal_migrate', Node}, _From, W) ->
    migrate(Node, W);
handle_call(Msg, From, W0) ->
    with_loaded(W0, fun(#w{cfg = #shoal_cfg{worker = Mod}, st = St} = W) ->
                            ret(Mod:handle_call(Msg, From, St), W)
                    end).

%% @private
-spec handle_cast(term(), #w{}) -> noreply_result().
handle_cast(Msg, #w{forward = To} = W) when is_pid(To) ->
    To ! {'$gen_cast', Msg},
    {noreply, W};
handle_cast(Msg, #w{frozen = true, held = H} = W) ->
    {noreply, W#w{held = [{cast, Msg} | H]}};
handle_cast(Msg, W0) ->
    with_loaded(W0, fun(#w{cfg = #shoal_cfg{worker = Mod}, st = St} = W) ->
                            ret(Mod:handle_cast(Msg, St), W)
                    end).

%% @private
-spec handle_info(term(), #w{}) -> noreply_result().
handle_info('$shoal_retire', #w{forward = To} = W) when is_pid(To) ->
    {stop, {shutdown, {shoal_moved, node(To)}}, W};
handle_info(Info, #w{forward = To} = W) when is_pid(To) ->
    To ! Info,
    {noreply, W};
handle_info({'$shoal_moved', Node, NewPid, Inc}, #w{frozen = true} = W) ->
    moved(Node, NewPid, Inc, W);
handle_info('$shoal_thaw', #w{frozen = true} = W) ->
    thaw(W);
handle_info(Info, #w{frozen = true, held = H} = W) ->
    {noreply, W#w{held = [{info, Info} | H]}};
handle_info('$shoal_thaw', W) ->
    {noreply, W, idle_of(W)};
handle_info({'$shoal_conflict', Node, Winner}, W) ->
    lose_conflict(Node, Winner, W);
handle_info(timeout, #w{user_timeout = false} = W) ->
    idle(W);
handle_info(Info, W0) ->
    with_loaded(W0#w{user_timeout = false},
                fun(#w{cfg = #shoal_cfg{worker = Mod}, st = St} = W) ->
                        case erlang:function_exported(Mod, handle_info, 2) of
                            true -> ret(Mod:handle_info(Info, St), W);
                            false -> ret({noreply, St}, W)
                        end
                end).

%% @private
-spec handle_continue(term(), #w{}) -> noreply_result().
handle_continue(C, #w{cfg = #shoal_cfg{worker = Mod}, st = St} = W) ->
    ret(Mod:handle_continue(C, St), W).

%% @private
-spec terminate(term(), #w{}) -> ok.
terminate(_Reason, #w{forward = To}) when is_pid(To) ->
    %% The state lives on in the successor: saving it here would overwrite newer state.
    ok;
terminate(Reason, #w{cfg = #shoal_cfg{worker = Mod}, st = St, loaded = Loaded} = W) ->
    case erlang:function_exported(Mod, terminate, 2) andalso Loaded of
        true -> _ = Mod:terminate(Reason, St), ok;
        false -> ok
    end,
    case Reason of
        {shutdown, shoal_stopped} -> reroute_mailbox(W#w.cfg, W#w.key);
        {shutdown, shoal_offloaded} -> reroute_mailbox(W#w.cfg, W#w.key);
        _ -> ok
    end.

%% @private
-spec code_change(term(), #w{}, term()) -> {ok, #w{}}.
code_change(_Old, W, _Extra) -> {ok, W}.

%% --- internals --------------------------------------------------------------------------

%% Move to Node: freeze (we are inside a call, so nothing else is handled meanwhile), hand
%% the state over, start the successor there, point our own table at it, and from then on
%% forward everything to it until the grace period ends.
migrate(Node, #w{cfg = #shoal_cfg{pool = Pool, table = T, grace = Grace}, key = Key} = W0) ->
    case hand_off(W0) of
        {ok, Transfer, W} ->
            Result = try erpc:call(Node, shoal_cluster, takeover_here,
                                   [Pool, Key, Transfer], 30000)
                     catch
                         error:{erpc, R} -> {error, R};
                         error:{exception, R, _} -> {error, R};
                         exit:R -> {error, R}
                     end,
            case Result of
                {ok, NewPid, Inc} ->
                    _ = shoal_nif:put_remote(T, Key, Node, NewPid, Inc),
                    erlang:send_after(Grace, self(), '$shoal_retire'),
                    {reply, {ok, NewPid}, W#w{forward = NewPid}};
                {error, Reason} ->
                    W1 = reclaim(W),
                    {reply, {error, Reason}, W1, idle_of(W1)}
            end;
        Stop ->
            Stop
    end.

%% Both kinds of move start alike: load if need be, mark the entry as moving (a replica of
%% the successor may replace it) and take the state to transfer.
hand_off(#w{cfg = #shoal_cfg{table = T, worker = Mod}, key = Key} = W0) ->
    case with_loaded(W0, fun(W) -> {ok, W} end) of
        {ok, #w{st = St} = W} ->
            ok = shoal_nif:set_moving(T, Key, self(), true),
            {ok, Transfer} = case erlang:function_exported(Mod, handoff, 1) of
                                 true -> Mod:handoff(St);
                                 false -> {ok, St}
                             end,
            {ok, Transfer, W};
        Stop ->
            Stop
    end.

idle_of(#w{cfg = #shoal_cfg{idle_timeout = I}}) -> I.

%% The first half of a batched move (shoal_cluster:move_batch/3): hand the state over and
%% hold every message until the mover says where the successor is (or thaws us; a mover
%% that vanishes cannot leave us frozen for more than ?THAW_AFTER).
-define(THAW_AFTER, 30000).
freeze(W0) ->
    case hand_off(W0) of
        {ok, Transfer, W} ->
            erlang:send_after(?THAW_AFTER, self(), '$shoal_thaw'),
            {reply, {ok, Transfer}, W#w{frozen = true, held = []}};
        Stop ->
            Stop
    end.

%% The successor runs: point our table at it, hand it what we held, in order, and forward.
moved(Node, NewPid, Inc, #w{cfg = #shoal_cfg{table = T, grace = Grace}, key = Key, held = H} = W) ->
    _ = shoal_nif:put_remote(T, Key, Node, NewPid, Inc),
    lists:foreach(fun({call, From, M}) -> NewPid ! {'$gen_call', From, M};
                     ({cast, M}) -> NewPid ! {'$gen_cast', M};
                     ({info, M}) -> NewPid ! M
                  end, lists:reverse(H)),
    erlang:send_after(Grace, self(), '$shoal_retire'),
    {noreply, W#w{frozen = false, held = [], forward = NewPid}}.

%% The move failed: carry on here, handling what we held first.
thaw(#w{held = H} = W0) ->
    W = reclaim(W0),
    _ = [self() ! case E of
                  {call, From, M} -> {'$gen_call', From, M};
                  {cast, M} -> {'$gen_cast', M};
                  {info, M} -> M
              end || E <- lists:reverse(H)],
    {noreply, W#w{frozen = false, held = []}, idle_of(W)}.

%% A move that failed leaves us the worker for our key. The target may have registered the
%% successor before it failed (died before answering): its replica then replaced our
%% moving entry here, and goes when that node does. Take the entry back over the replica
%% (a successor still alive meets us in the conflict rule); without this we would live on
%% unreachable and the next call would spawn a fresh worker without our state. Should a
%% fresh local worker have taken the key meanwhile, step aside for it as a moved worker.
reclaim(#w{cfg = #shoal_cfg{table = T, grace = Grace}, key = Key} = W) ->
    case shoal_nif:set_moving(T, Key, self(), false) of
        ok -> W;
        not_found ->
            case shoal_nif:register(T, Key, self(), true) of
                {ok, _} -> W;
                {error, {already_registered, Other}} ->
                    erlang:send_after(Grace, self(), '$shoal_retire'),
                    W#w{forward = Other};
                {error, _} -> W
            end
    end.

%% Another node's worker for our key won (after a partition healed): run the loser's
%% callback, step aside for the winner and hand it what is queued here.
lose_conflict(Node, Winner, #w{cfg = #shoal_cfg{table = T, worker = Mod, grace = Grace},
                               key = Key, st = St} = W) ->
    case erlang:function_exported(Mod, conflict, 3) of
        true -> _ = Mod:conflict(Key, Winner, St), ok;
        false -> ok
    end,
    ok = shoal_nif:set_moving(T, Key, self(), true),
    _ = shoal_nif:put_remote(T, Key, Node, Winner, 0),
    erlang:send_after(min(Grace, 1000), self(), '$shoal_retire'),
    {noreply, W#w{forward = Winner}}.

with_loaded(#w{loaded = true} = W, Fun) -> Fun(W);
with_loaded(#w{cfg = #shoal_cfg{worker = Mod}, key = Key, st = St} = W, Fun) ->
    case Mod:load(Key, St) of
        {ok, St1} -> Fun(W#w{st = St1, loaded = true});
        {error, Reason} -> {stop, {shutdown, {load_failed, Reason}}, W};
        Other -> {stop, {bad_return_value, Other}, W}
    end.

ret({reply, R, S}, #w{cfg = #shoal_cfg{idle_timeout = I}} = W) -> {reply, R, W#w{st = S}, I};
ret({reply, R, S, X}, W) -> {reply, R, W#w{st = S, user_timeout = is_integer(X)}, X};
ret({noreply, S}, #w{cfg = #shoal_cfg{idle_timeout = I}} = W) -> {noreply, W#w{st = S}, I};
ret({noreply, S, X}, W) -> {noreply, W#w{st = S, user_timeout = is_integer(X)}, X};
ret({stop, Why, R, S}, W) -> {stop, Why, R, W#w{st = S}};
ret({stop, Why, S}, W) -> {stop, Why, W#w{st = S}};
ret(Other, W) -> {stop, {bad_return_value, Other}, W}.

idle(#w{cfg = #shoal_cfg{has_idle = HasIdle, worker = Mod, idle_timeout = I}, st = St} = W) ->
    case HasIdle of
        true ->
            case Mod:idle(St) of
                {keep, St1} -> {noreply, W#w{st = St1}, I};
                {offload, St1} -> offload(W#w{st = St1});
                Other -> {stop, {bad_return_value, Other}, W}
            end;
        false ->
            offload(W)
    end.

%% Leave the table first, so nobody new finds us; a message that slipped in between the
%% timeout and that moment cancels the offload if the key is still free.
offload(#w{cfg = #shoal_cfg{table = T, counters = C, idle_timeout = I}, key = Key} = W) ->
    unregister_self(W),
    case process_info(self(), message_queue_len) of
        {message_queue_len, 0} ->
            counters:add(C, ?C_IDLE_OFFLOADS, 1),
            {stop, {shutdown, shoal_offloaded}, W};
        _ ->
            case shoal_nif:register(T, Key, self()) of
                {ok, _} -> {noreply, W, I};
                {error, _} ->
                    counters:add(C, ?C_IDLE_OFFLOADS, 1),
                    {stop, {shutdown, shoal_offloaded}, W}
            end
    end.

unregister_self(#w{cfg = #shoal_cfg{table = T}, key = Key}) ->
    _ = shoal_nif:unregister(T, Key, self()),
    ok.

%% After terminate/2 ran (the state is saved), what is still queued goes to the key's next
%% incarnation, spawned if need be: calls keep their From, so their callers get the reply.
reroute_mailbox(Cfg, Key) ->
    receive
        {'$gen_call', _From, _Msg} = M -> forward(Cfg, Key, M), reroute_mailbox(Cfg, Key);
        {'$gen_cast', _Msg} = M -> forward(Cfg, Key, M), reroute_mailbox(Cfg, Key)
    after 0 -> ok
    end.

forward(Cfg, Key, M) ->
    try shoal:resolve(Cfg, Key) of
        {ok, Pid} -> Pid ! M, ok;
        _ -> ok
    catch _:_ -> ok
    end.
