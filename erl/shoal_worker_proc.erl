%% @doc The process around a user's shoal_worker module: a gen_server that runs the lazy
%% `load', offloads itself when idle, hands queued messages on when it stops, and takes
%% its part in moves and conflicts (docs/protocol.md, "Moves" and "Conflicts").
%%
%% Workers are spawned by whoever holds the key's claim (a caller, or a member) and link to
%% their segment (shoal_segment), which is their supervisor: it is recorded as the
%% gen_server parent, so a segment shutdown stops the worker like a supervisor would. A
%% worker is registered before its init/2 runs (so no second spawn can be arbitrated
%% meanwhile); it runs init/2 only once it finds itself registered.
%%
%% After a move or a lost conflict the process forwards everything to the newer incarnation
%% (never to an older one) until it retires, except the requests of Shoal's own callers,
%% which it answers with the newer incarnation for them to ask (redirected/1).
-module(shoal_worker_proc).
-behaviour(gen_server).

-include("shoal_int.hrl").

-export([spawn_worker/4, init_it/6, key_of/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, handle_continue/2,
         terminate/2, code_change/3, format_status/1]).

%% The worker's pool and key in its process dictionary (key_of/1, crash reports).
-define(KEY_ENTRY, '$shoal_key').
-define(PEER_WAIT, 10000).  %% migrate_/2: how long to wait for our member to meet the target's

-record(w, {cfg :: #shoal_cfg{},
            key :: term(),
            st :: term(),
            loaded :: boolean(),
            user_timeout = false :: boolean(),
            %% After a move or a lost conflict: the newer incarnation everything goes to,
            %% watched by `fwd_mon'.
            forward = undefined :: undefined | pid(),
            fwd_mon = undefined :: undefined | reference(),
            %% A conflict loser waits for the winner's ack and for the grace to pass.
            merge = none :: none | waiting | acked,
            graced = false :: boolean(),
            %% During a batched move: state handed off, messages held until the successor
            %% is known (newest first).
            frozen = false :: boolean(),
            %% The freeze's own thaw timer (see freeze/1): a timer left from an earlier
            %% freeze must not thaw a later one.
            thaw_timer = undefined :: undefined | reference(),
            vsn = 0 :: shoal_nif:version(),     %% our version when the move began
            held = [] :: [{call, gen_server:from(), term()} | {cast, term()} | {info, term()}],
            %% stop_worker/2's caller, answered once terminate/2 has run and we have left
            %% the table.
            stopper = undefined :: undefined | gen_server:from()}).

-type extra() :: timeout() | hibernate | {continue, term()}.
-type ack() :: {pid(), reference()} | {claimed, shoal_proto:caller()}.
-export_type([ack/0]).
-type w_noreply() :: {noreply, #w{}} | {noreply, #w{}, extra()} | {stop, term(), #w{}}.
-type w_result() :: {reply, term(), #w{}} | {reply, term(), #w{}, extra()} |
                    {stop, term(), term(), #w{}} | w_noreply().
-type noreply_result() :: {noreply, term()} | {noreply, term(), extra()} | {stop, term(), term()}.
-type callback_result() :: {reply, term(), term()} | {reply, term(), term(), extra()} |
                           {stop, term(), term(), term()} | noreply_result().

%% @doc Spawn the worker for Key. Each of `Acks' is told once the state is set up: by
%% init/2, or with `{takeover, Transfer}' by takeover/3 (the end of a migration). A `{Pid,
%% Ref}' (possibly on another node) is sent `{'$shoal_started', Ref, ok | {error, Reason}}';
%% a `{claimed, Caller}' (a caller that asked a member for this spawn) gets the member's
%% answer, `claimed' with `{ok, node(), self(), Vsn}' and `started', or `{error, Reason}'
%% (from our segment, with our exit reason, if we die before we answer).
%% With `init' the spawner must hold the key's claim, register the worker, and then send it
%% `{'$shoal_go', Vsn}' with the version it registered.
-spec spawn_worker(#shoal_cfg{}, term(), [ack()], init | {takeover, term()}) -> pid().
spawn_worker(#shoal_cfg{spawn_opts = SOpts} = Cfg, Key, Acks, How) ->
    proc_lib:spawn_opt(?MODULE, init_it, [Cfg, Key, seg_of(Cfg, Key), self(), Acks, How], SOpts).

%% The segment Key's worker links to (its registered name, also its table's).
seg_of(#shoal_cfg{segs = Segs}, Key) -> element(erlang:phash2(Key, tuple_size(Segs)) + 1, Segs).

%% @private
-spec init_it(#shoal_cfg{}, term(), atom(), pid(), [ack()],
              init | {takeover, term()}) -> no_return().
init_it(#shoal_cfg{pool = Pool, worker = Mod, args = Args, restart = Restart, trap_exit = Trap,
                   has_load = HasLoad, idle_timeout = Idle} = Cfg, Key, SegName, Spawner, Acks,
        How) ->
    SegPid = case whereis(SegName) of
                 undefined -> exit({shutdown, pool_stopping});
                 P -> P
             end,
    put('$ancestors', [SegPid]),
    %% What crash reports and observer show: the user's module, and which key this is.
    put('$initial_call', {Mod, init, 2}),
    put(?KEY_ENTRY, {Pool, Key}),
    link(SegPid),
    %% Our row in the segment's table, so it knows our key whatever makes us exit
    %% (shoal_segment), and the callers we owe our init outcome (ack/4), whom it answers
    %% should we die before we do; a segment that is gone has killed us through the link
    %% already.
    Owed = [C || {claimed, C} <- Acks],
    try ets:insert(SegName, {self(), Key, false, false, Owed})
    catch error:badarg -> exit({shutdown, pool_stopping})
    end,
    Vsn = case How of
              init -> await_registered(Cfg, Key, Spawner);
              _ -> 0
          end,
    Trap andalso process_flag(trap_exit, true),
    %% As gen_server's init: a throw is a return value, an error exits with
    %% {Reason, Stacktrace} (which Elixir formats as the exception it was).
    Result = try first_state(Mod, Key, Args, How) of
                 {ok, St} -> {ok, St};
                 {stop, Reason} -> {stop, Reason};
                 Other -> {stop, {bad_return_value, Other}}
             catch
                 throw:{ok, St} -> {ok, St};
                 throw:{stop, Reason} -> {stop, Reason};
                 throw:Other -> {stop, {bad_return_value, Other}};
                 error:Reason:Stack -> {stop, {Reason, Stack}};
                 exit:Reason -> {stop, Reason}
             end,
    case Result of
        {ok, State} ->
            ack(Cfg, Acks, ok, Vsn),
            case {Restart =/= temporary, Owed =/= []} of
                {false, false} -> true;
                {true, false} -> ets:update_element(SegName, self(), {3, true});
                {false, true} -> ets:update_element(SegName, self(), {5, []});
                {true, true} -> ets:update_element(SegName, self(), [{3, true}, {5, []}])
            end,
            shoal_telemetry:execute([shoal, worker, spawn], #{system_time => erlang:system_time()},
                                    #{pool => Pool, key => Key, node => node(), pid => self(),
                                      how => how(How)}),
            W = #w{cfg = Cfg, key = Key, st = State, loaded = How =/= init orelse not HasLoad},
            %% Named by its pid: saves gen_server a process_info/2 of its registered name.
            gen_server:enter_loop(?MODULE, [], keep(W), self(), Idle);
        {stop, Why} ->
            ack(Cfg, Acks, {error, Why}, Vsn),
            Owed =/= [] andalso ets:update_element(SegName, self(), {5, []}),
            init_failed(Cfg, Key, how(How), Why),
            reported(SegName, Why),
            exit(Why)
    end.

first_state(Mod, Key, Args, init) -> Mod:init(Key, Args);
first_state(Mod, Key, Args, {takeover, Transfer}) ->
    case erlang:function_exported(Mod, takeover, 3) of
        true -> Mod:takeover(Key, Transfer, Args);
        false -> {ok, Transfer}
    end.

how(init) -> init;
how({takeover, _}) -> takeover.

%% init/2, takeover/3 or load/2 failed: one line, rate-limited per pool.
init_failed(#shoal_cfg{pool = Pool}, Key, Callback, Why) ->
    shoal_log:log_limited(error, worker_init_failed, #{pool => Pool, key => Key},
                          #{callback => Callback, reason => Why, pid => self()}).

%% Tell our segment that OTP or Shoal logs this exit (a crash a segment sees without this
%% was an exit signal, which nobody else reports).
reported(SegName, Why) ->
    _ = is_crash(Why) andalso
        (catch ets:update_element(SegName, self(), {4, true})),
    ok.

is_crash(normal) -> false;
is_crash(shutdown) -> false;
is_crash({shutdown, _}) -> false;
is_crash(_) -> true.

%% @doc The pool and key of a local worker process, from its process dictionary:
%% `{ok, Pool, Key}', or `undefined' for a process that is not a Shoal worker (or is gone).
-spec key_of(pid()) -> {ok, atom(), term()} | undefined.
key_of(Pid) when node(Pid) =:= node() ->
    case erlang:process_info(Pid, dictionary) of
        {dictionary, D} ->
            case lists:keyfind(?KEY_ENTRY, 1, D) of
                {_, {Pool, Key}} -> {ok, Pool, Key};
                false -> undefined
            end;
        undefined -> undefined
    end.

ack(#shoal_cfg{pool = Pool}, Acks, Result, Vsn) ->
    _ = [case A of
             {claimed, Caller} ->
                 %% A failure carries the version we were registered at: the claimer
                 %% raises its clock past it before it gives its claim up, so the next
                 %% spawn of the key is newer than us (our `up' may still be on its way).
                 Answer = case Result of
                              ok -> [{ok, node(), self(), Vsn}, started];
                              {error, _} -> [Result, {failed, Vsn}]
                          end,
                 shoal_proto:reply(Caller, Pool, claimed, Answer);
             {Pid, Ref} ->
                 Pid ! {'$shoal_started', Ref, Result}
         end || A <- Acks],
    ok.

%% Run init/2 only once registered: the spawner registers us right after spawning us and
%% then says so. Should it die in between, we look for ourselves in the table after a
%% while; if it gave up its claim instead, it kills us.
await_registered(Cfg, Key, _Spawner) ->
    receive
        {'$shoal_go', Vsn} -> Vsn
    after 5000 ->
            Self = self(),
            case shoal_registry:lookup(Cfg, Key) of
                {local, Self, Vsn, _} -> Vsn;
                _ -> exit(normal)
            end
    end.


%%% gen_server callbacks -------------------------------------------------------------------
%%
%% The gen_server state is the user's state, so what sys:get_state/1 and
%% sys:replace_state/2 see and change is theirs; this wrapper's record lives in the process
%% dictionary, and the state gen_server hands a callback is put back into it (in/1) before
%% the w_* function runs, then taken out again (out/1).

-define(W_KEY, '$shoal_w').

%% gen_server hands us the state keep/1 gave it: the very term in the record, which then
%% needs no copy (a match of identical terms costs one comparison of words). Only a state
%% set by sys:replace_state/2 differs, and is put into a copy of the record.
in(St) ->
    case get(?W_KEY) of
        #w{st = St} = W -> W;
        W -> W#w{st = St}
    end.

out({reply, R, W}) -> {reply, R, keep(W)};
out({reply, R, W, X}) -> {reply, R, keep(W), X};
out({noreply, W}) -> {noreply, keep(W)};
out({noreply, W, X}) -> {noreply, keep(W), X};
out({stop, Why, R, W}) -> {stop, Why, R, keep(W)};
out({stop, Why, W}) -> {stop, Why, keep(W)}.

keep(#w{st = St} = W) ->
    put(?W_KEY, W),
    St.

%% @private
-spec handle_call(term(), gen_server:from(), term()) -> callback_result().
handle_call(Msg, From, St) -> out(w_call(Msg, From, in(St))).

%% @private
-spec handle_cast(term(), term()) -> noreply_result().
handle_cast(Msg, St) -> out(w_cast(Msg, in(St))).

%% @private
-spec handle_info(term(), term()) -> noreply_result().
handle_info(Info, St) -> out(w_info(Info, in(St))).

%% @private
-spec handle_continue(term(), term()) -> noreply_result().
handle_continue(C, St) -> out(w_continue(C, in(St))).

%% @private
-spec terminate(term(), term()) -> ok.
terminate(Reason, St) -> w_terminate(Reason, in(St)).

%% @private A release upgrade that changes the worker module: its code_change/3, when it
%% exports one, turns the user's state; otherwise the state is kept as it is.
-spec code_change(term(), term(), term()) -> {ok, term()} | {error, term()}.
code_change(Old, St, Extra) ->
    case w_code_change(Old, in(St), Extra) of
        {ok, W} -> {ok, keep(W)};
        Error -> Error
    end.

%% @private What sys:get_status/1 and crash reports show: the user's state, as the worker
%% module's format_status/1 (or format_status/2) formats it when it exports one.
-spec format_status(gen_server:format_status()) -> gen_server:format_status().
format_status(#{state := St} = Status) ->
    case get(?W_KEY) of
        #w{cfg = #shoal_cfg{worker = Mod}} -> w_format_status(Mod, St, Status);
        _ -> Status
    end;
format_status(Status) ->
    Status.

%% @private Never called: workers enter the loop through init_it/6.
-spec init(term()) -> ignore.
init(_) -> ignore.

-spec w_call(term(), gen_server:from(), #w{}) -> w_result().
w_call(Msg, From, #w{forward = To} = W) when is_pid(To) ->
    case redirected(Msg) of
        true -> {reply, ?REDIRECT(To), W};
        false -> To ! {'$gen_call', From, Msg}, {noreply, watch(W)}
    end;
w_call(Msg, From, #w{frozen = true, held = H} = W) ->
    {noreply, W#w{held = [{call, From, Msg} | H]}};
w_call('$shoal_ready', _From, W) ->
    {reply, ok, W, idle_of(W)};
w_call('$shoal_freeze', _From, W) ->
    freeze(W);
w_call('$shoal_stop', From, W) ->
    %% We stay in the table until terminate/2 has run (terminate_/2), so the key's next
    %% incarnation cannot start (and load/2 a state) before ours is saved.
    {stop, {shutdown, shoal_stopped}, W#w{stopper = From}};
w_call({'$shoal_migrate', Node}, _From, W) when Node =:= node() ->
    %% Reached through a stale replica that still named our predecessor: already there.
    {reply, {ok, self()}, W, idle_of(W)};
w_call({'$shoal_migrate', Node}, _From, W) ->
    migrate(Node, W);
w_call(?SHOAL_CALL(Msg), From, W) ->
    user_call(Msg, From, W);
w_call(Msg, From, W) ->
    user_call(Msg, From, W).

user_call(Msg, From, W0) ->
    with_loaded(W0, fun(#w{cfg = #shoal_cfg{worker = Mod}, st = St} = W) ->
                            ret(Mod:handle_call(Msg, From, St), W)
                    end).

-spec w_cast(term(), #w{}) -> w_noreply().
w_cast(Msg, #w{forward = To} = W) when is_pid(To) ->
    To ! {'$gen_cast', Msg},
    {noreply, watch(W)};
w_cast(Msg, #w{frozen = true, held = H} = W) ->
    {noreply, W#w{held = [{cast, Msg} | H]}};
w_cast(Msg, W0) ->
    with_loaded(W0, fun(#w{cfg = #shoal_cfg{worker = Mod}, st = St} = W) ->
                            ret(Mod:handle_cast(Msg, St), W)
                    end).

-spec w_info(term(), #w{}) -> w_noreply().
w_info({'DOWN', Ref, process, _, _}, #w{fwd_mon = Ref} = W) ->
    successor_down(W);
w_info('$shoal_retire', #w{forward = To} = W) when is_pid(To) ->
    maybe_retire(W#w{graced = true});
w_info({'$shoal_merged_ack', _}, #w{merge = waiting} = W) ->
    maybe_retire(W#w{merge = acked});
w_info({'$shoal_merged', Loser}, #w{forward = undefined} = W) ->
    %% We won a conflict: everything the loser forwarded before this is handled.
    Loser ! {'$shoal_merged_ack', self()},
    {noreply, W, idle_of(W)};
w_info({'$shoal_yield', _, _, _, _}, #w{forward = To} = W) when is_pid(To) ->
    %% A newer replica our member saw while we moved (most often our own successor's
    %% `up'): the key is no longer ours to weigh it for; the successor's member sees the
    %% same replica itself.
    {noreply, W};
w_info(Info, #w{forward = To} = W) when is_pid(To) ->
    %% A move's or a merge's answer meant for us (a late thaw, a mover's second word)
    %% would be taken by the successor as its own: it stays here.
    case control(Info) of
        true -> {noreply, W};
        false -> To ! Info, {noreply, watch(W)}
    end;
w_info({'$shoal_moved', Node, NewPid, Vsn}, #w{frozen = true} = W) ->
    moved(Node, NewPid, Vsn, W);
w_info({'$shoal_moved', _Node, NewPid, _Vsn, stored}, #w{frozen = true} = W) ->
    %% The mover pointed the table at the successor already.
    forward_to(NewPid, W);
w_info({'$shoal_thaw', Failed}, #w{frozen = true} = W) ->
    thaw(Failed, W);
w_info({'$shoal_thaw_after', T}, #w{frozen = true, thaw_timer = T} = W) ->
    thaw(none, W);
w_info({'$shoal_thaw_after', _}, #w{frozen = true} = W) ->
    %% An earlier freeze's timer: this freeze has its own.
    {noreply, W};
w_info(Info, #w{frozen = true, held = H} = W) ->
    {noreply, W#w{held = [{info, Info} | H]}};
w_info(Stale, W) when Stale =:= '$shoal_retire';
                      element(1, Stale) =:= '$shoal_thaw';
                      element(1, Stale) =:= '$shoal_thaw_after';
                      element(1, Stale) =:= '$shoal_merged_ack' ->
    %% A timer or an answer that outlived the state it was for.
    {noreply, W, idle_of(W)};
w_info({'$shoal_yield', Node, Winner, Vsn, Mark}, W) ->
    yield(Node, Winner, Vsn, Mark, W);
w_info(timeout, #w{user_timeout = false} = W) ->
    idle(W);
w_info(Info, W0) ->
    with_loaded(W0#w{user_timeout = false},
                fun(#w{cfg = #shoal_cfg{worker = Mod}, st = St} = W) ->
                        case erlang:function_exported(Mod, handle_info, 2) of
                            true -> ret(Mod:handle_info(Info, St), W);
                            false -> ret({noreply, St}, W)
                        end
                end).

-spec w_continue(term(), #w{}) -> w_noreply().
w_continue(C, #w{cfg = #shoal_cfg{worker = Mod}, st = St} = W) ->
    ret(Mod:handle_continue(C, St), W).

-spec w_terminate(term(), #w{}) -> ok.
w_terminate(Reason, #w{cfg = Cfg, key = Key} = W) ->
    %% gen_server logs an abnormal Reason once terminate/2 returns.
    reported(seg_of(Cfg, Key), Reason),
    terminate_(Reason, W).

terminate_(_Reason, #w{forward = To}) when is_pid(To) ->
    %% The state lives on in the newer incarnation: saving it here would overwrite it.
    ok;
terminate_(Reason, #w{cfg = #shoal_cfg{worker = Mod}, st = St, loaded = Loaded} = W) ->
    try
        case erlang:function_exported(Mod, terminate, 2) andalso Loaded of
            true -> _ = Mod:terminate(Reason, St), ok;
            false -> ok
        end
    after
        %% A stop or an offload leaves the table only now, with the state saved: whoever
        %% found us meanwhile queued here, and what is queued goes to the key's next
        %% incarnation (even if terminate/2 crashed: the stop's caller still gets `ok').
        case Reason of
            {shutdown, R} when R =:= shoal_stopped; R =:= shoal_offloaded ->
                unregister_self(W),
                W#w.stopper =:= undefined orelse gen_server:reply(W#w.stopper, ok),
                reroute_mailbox(W);
            _ -> ok
        end
    end.

%% @private A release upgrade that changes the worker module: its code_change/3, when it
%% exports one, turns the user's state; otherwise the state is kept as it is.
-spec w_code_change(term(), #w{}, term()) -> {ok, #w{}} | {error, term()}.
w_code_change(Old, #w{cfg = #shoal_cfg{worker = Mod}, st = St} = W, Extra) ->
    case erlang:function_exported(Mod, code_change, 3) of
        true ->
            case Mod:code_change(Old, St, Extra) of
                {ok, St1} -> {ok, W#w{st = St1}};
                Error -> Error
            end;
        false ->
            {ok, W}
    end.

%% @private What sys:get_status/1 and crash reports show: the user's state (not this
%% wrapper's record), as the worker module's format_status/1 (or format_status/2) formats
%% it when it exports one.
-spec w_format_status(module(), term(), gen_server:format_status()) -> gen_server:format_status().
w_format_status(Mod, St, Status) ->
    User = Status#{state => St},
    case {erlang:function_exported(Mod, format_status, 1),
          erlang:function_exported(Mod, format_status, 2)} of
        {true, _} ->
            try Mod:format_status(User) of
                #{} = Formatted -> maps:merge(Status, Formatted);
                _ -> User
            catch _:_ -> User
            end;
        {false, true} ->
            Opt = case maps:is_key(reason, Status) of true -> terminate; false -> normal end,
            try Mod:format_status(Opt, [get(), St]) of
                Formatted -> Status#{state => Formatted}
            catch _:_ -> User
            end;
        {false, false} ->
            User
    end.

%% --- moves ------------------------------------------------------------------------------

%% Move to Node (migrate/3): we are inside a call, so nothing else is handled meanwhile.
%% Hand the state over, have Node's member start and register the successor, point our
%% table at it, and from then on forward everything to it until we retire.
migrate(Node, #w{cfg = #shoal_cfg{pool = Pool}, key = Key} = W0) ->
    shoal_telemetry:span([shoal, move],
                         #{pool => Pool, key => Key, node => node(), to => Node, cause => migrate},
                         fun() ->
                                 Reply = migrate_(Node, W0),
                                 Result = case Reply of
                                              {reply, {ok, _}, _} -> ok;
                                              {reply, {error, R}, _, _} -> {error, R};
                                              _ -> {error, stopped}
                                          end,
                                 shoal_log:log(debug, worker_moved, #{pool => Pool, key => Key},
                                               #{to => Node, cause => migrate, result => Result}),
                                 {Reply, #{result => Result}}
                         end).

migrate_(Node, #w{cfg = Cfg} = W0) ->
    %% The caller's node has met Node's member; ours may not have yet (a node that just
    %% joined): wait for it, since a take-back after Node failed must be fenced against what
    %% that member sent ours (shoal_view:await_dropped/4).
    case shoal_view:await_peer(Cfg, Node, ?PEER_WAIT) of
        undefined -> {reply, {error, {not_a_member, Node}}, W0, idle_of(W0)};
        Member -> migrate_(Node, Member, W0)
    end.

migrate_(Node, Member, #w{cfg = #shoal_cfg{pool = Pool, server = Name} = Cfg, key = Key} = W0) ->
    case hand_off(W0) of
        {ok, Transfer, Vsn, W} ->
            %% Addressed by name: a target without the pool answers with a `DOWN'. Should the
            %% target go down, we take our key back only once our member has dropped it.
            Ref = shoal_proto:request_ref(),
            Mref = erlang:monitor(process, {Name, Node}),
            shoal_proto:send_node(Node, Name, Pool, {takeover, [{Key, Transfer, Vsn}], {self(), Ref}}),
            Result = receive
                         {'$shoal', _, Pool, {taken, Ref, [{Key, R}]}} ->
                             erlang:demonitor(Mref, [flush]),
                             R;
                         {'DOWN', Mref, process, _, Why} ->
                             shoal_proto:drop_ref(Ref),
                             _ = shoal_view:await_dropped(Cfg, Node, Member, 60000),
                             {error, {target_down, Node, Why}}
                     after 60000 ->
                             erlang:demonitor(Mref, [flush]),
                             shoal_proto:drop_ref(Ref),
                             {error, timeout}
                     end,
            case Result of
                {ok, Node, NewPid, NewVsn} ->
                    {noreply, W1} = moved(Node, NewPid, NewVsn, W),
                    {reply, {ok, NewPid}, W1};
                {error, Reason} ->
                    W1 = reclaim(Vsn, Node, W),
                    {reply, {error, Reason}, W1, idle_of(W1)}
            end;
        Stop ->
            Stop
    end.

%% Both kinds of move start alike: load if need be, mark the entry as moving (a newer
%% replica may replace it) and take the state to transfer and our version.
hand_off(#w{cfg = #shoal_cfg{worker = Mod} = Cfg, key = Key} = W0) ->
    case with_loaded(W0, fun(W) -> {ok, W} end) of
        {ok, #w{st = St} = W} ->
            {ok, Vsn} = shoal_registry:set_moving(Cfg, Key, self(), true),
            {ok, Transfer} = case erlang:function_exported(Mod, handoff, 1) of
                                 true -> Mod:handoff(St);
                                 false -> {ok, St}
                             end,
            {ok, Transfer, Vsn, W};
        Stop ->
            Stop
    end.

idle_of(#w{cfg = #shoal_cfg{idle_timeout = I}}) -> I.

%% The first half of a batched move (shoal_mover): hand the state over and hold every
%% message until the mover says where the successor is (or thaws us; a mover that vanishes
%% cannot leave us frozen for more than ?THAW_AFTER).
-define(THAW_AFTER, 90000).
freeze(W0) ->
    case hand_off(W0) of
        {ok, Transfer, Vsn, W} ->
            T = make_ref(),
            _ = erlang:send_after(?THAW_AFTER, self(), {'$shoal_thaw_after', T}),
            {reply, {ok, Transfer, Vsn},
             W#w{frozen = true, held = [], vsn = Vsn, thaw_timer = T}};
        Stop ->
            Stop
    end.

%% The successor runs: point our table at it (the mover may have done it already), hand it
%% what we held, in order, and forward until we retire. Should the successor die, there is
%% nothing left to forward to: we exit, and callers resolve the key afresh.
moved(Node, NewPid, Vsn, #w{cfg = Cfg, key = Key} = W) ->
    _ = shoal_registry:put_successor(Cfg, Key, Node, NewPid, Vsn, 0),
    forward_to(NewPid, W).

forward_to(NewPid, #w{cfg = #shoal_cfg{grace = Grace}, held = H0} = W) ->
    %% The conflicts held while we moved are not ours to weigh any more (see w_info/2).
    H = [E || E <- H0, not is_yield(E)],
    send_held(NewPid, H),
    erlang:send_after(Grace, self(), '$shoal_retire'),
    W1 = W#w{frozen = false, held = [], thaw_timer = undefined, forward = NewPid,
             fwd_mon = undefined, merge = acked},
    {noreply, case H of [] -> W1; _ -> watch(W1) end}.

%% We forward to a successor: watch it from the first message we forward (so that should
%% it die, we stop, and a caller that reached us through a stale replica learns `noproc'
%% instead of waiting for a reply that cannot come). Only then: a drain moves thousands of
%% workers that are sent nothing during their grace, and a monitor of a process on another
%% node costs a message each way.
watch(#w{fwd_mon = undefined, forward = To} = W) when is_pid(To) ->
    W#w{fwd_mon = erlang:monitor(process, To)};
watch(W) ->
    W.

is_yield({info, {'$shoal_yield', _, _, _, _}}) -> true;
is_yield(_) -> false.

%% The requests of Shoal's own callers, which a worker that forwards answers with where it
%% forwards to instead of forwarding them: their callers ask there. Forwarded, such a
%% request could run in the successor and have its caller see us exit before the
%% successor's reply came, and send it again (it would run twice); answered so, a request
%% whose caller sees us exit never ran, and is sent again safely. A mover's freeze is
%% meant for the incarnation it found in its table: handed on (forwarded, or rerouted to a
%% new incarnation after a stop), it would freeze a worker whose thaw goes to us.
redirected(?SHOAL_CALL(_)) -> true;
redirected('$shoal_stop') -> true;
redirected('$shoal_freeze') -> true;
redirected('$shoal_ready') -> true;
redirected({'$shoal_migrate', _}) -> true;
redirected(_) -> false.

%% The messages of a move or a merge that are answers to us: a worker that forwards keeps
%% them (see w_info/2).
control({'$shoal_thaw', _}) -> true;
control({'$shoal_thaw_after', _}) -> true;
control({'$shoal_moved', _, _, _}) -> true;
control({'$shoal_moved', _, _, _, _}) -> true;
control({'$shoal_merged_ack', _}) -> true;
control(_) -> false.

%% A call we hand to To: forwarded, or answered with To for those of Shoal's callers.
hand_call(To, From, Msg) ->
    _ = case redirected(Msg) of
            true -> gen_server:reply(From, ?REDIRECT(To));
            false -> To ! {'$gen_call', From, Msg}
        end,
    ok.

send_held(To, Held) ->
    lists:foreach(fun({call, From, M}) -> hand_call(To, From, M);
                     ({cast, M}) -> To ! {'$gen_cast', M};
                     ({info, M}) -> To ! M
                  end, lists:reverse(Held)).

%% The move failed: carry on here, handling what we held first. Failed is the target,
%% whose successor's replica (if it registered one before it failed) we take over.
thaw(Failed, #w{held = H, vsn = Vsn} = W0) ->
    W = reclaim(Vsn, Failed, W0),
    _ = [self() ! case E of
                  {call, From, M} -> {'$gen_call', From, M};
                  {cast, M} -> {'$gen_cast', M};
                  {info, M} -> M
              end || E <- lists:reverse(H)],
    {noreply, W#w{frozen = false, held = [], thaw_timer = undefined}, idle_of(W)}.

%% A move that failed, or a winner that went down before it acknowledged our hand-off,
%% leaves us the worker for our key: take the entry back (over the replica of a successor
%% that Failed may have registered before it failed, or over anything up to Vsn). Should a
%% newer incarnation hold the key, step aside for it as a conflict's loser would.
reclaim(Vsn, Failed, #w{cfg = Cfg, key = Key, fwd_mon = Mon} = W) ->
    is_reference(Mon) andalso erlang:demonitor(Mon, [flush]),
    case shoal_view:register_over(Cfg, Key, self(), {Vsn, Failed}, 30000) of
        {ok, _} -> W#w{forward = undefined, fwd_mon = undefined, merge = none};
        {error, {newer, Node, Pid, NewVsn}} -> step_aside(Node, Pid, NewVsn, 0, W);
        {error, {already_registered, Other}} -> step_aside(node(Other), Other, 0, 0, W);
        {error, _} -> W
    end.

successor_down(#w{forward = To, merge = waiting, cfg = Cfg, key = Key} = W) ->
    %% The winner of our conflict died before it took our hand-off: we still hold the
    %% state, so the key is ours again.
    {Node, Vsn} = case shoal_registry:lookup(Cfg, Key) of
                      {remote, N, To, V} -> {N, V};
                      _ -> {node(To), 0}
                  end,
    W1 = reclaim(Vsn, Node, W#w{fwd_mon = undefined, forward = undefined}),
    {noreply, W1, idle_of(W1)};
successor_down(#w{forward = To} = W) ->
    retire(To, W).

maybe_retire(#w{merge = acked, graced = true, forward = To} = W) ->
    retire(To, W);
maybe_retire(W) ->
    {noreply, W}.

%% A forwarder's end: forward what is queued, then exit `{shutdown, {shoal_moved, Node}}'.
%% Its terminate/2 would do nothing (the state lives on in the newer incarnation), so a
%% worker that does not trap exits sends itself that exit signal rather than going through
%% gen_server's and proc_lib's exit path, which in a drain costs every retiring worker a
%% garbage collection and a few microseconds; it dies before it takes another message,
%% with the same reason for its links and monitors.
retire(To, W) ->
    drain_forward(To),
    Reason = {shutdown, {shoal_moved, node(To)}},
    case erlang:process_info(self(), trap_exit) of
        {trap_exit, false} ->
            exit(self(), Reason),
            {noreply, W};
        _ ->
            {stop, Reason, W}
    end.

%% Forward what is still queued before exiting: those messages never ran here.
drain_forward(To) ->
    receive
        {'$gen_call', From, Msg} -> hand_call(To, From, Msg), drain_forward(To);
        {'$gen_cast', _} = M -> To ! M, drain_forward(To);
        {'$shoal_merged', _} = M -> To ! M, drain_forward(To)
    after 0 -> ok
    end.

%% --- conflicts --------------------------------------------------------------------------

%% Our member found a newer live incarnation of our key on Node (the sides of a partition
%% met): run the loser's callback and step aside for it, keeping our state until it has
%% acknowledged the hand-off. An announcement that is not newer than us is stale: ignored.
yield(Node, Winner, Vsn, Mark, #w{cfg = Cfg, key = Key, st = St} = W) ->
    Self = self(),
    case shoal_registry:lookup(Cfg, Key) of
        {local, Self, MyVsn, _} when {Vsn, Node} > {MyVsn, node()} ->
            #shoal_cfg{worker = Mod, pool = Pool} = W#w.cfg,
            shoal_log:log_limited(warning, conflict_resolved, #{pool => Pool, key => Key},
                                  #{winner => Winner, winner_node => Node, loser => self()}),
            _ = case erlang:function_exported(Mod, conflict, 3) of
                    true -> Mod:conflict(Key, Winner, St);
                    false -> ok
                end,
            W1 = step_aside(Node, Winner, Vsn, Mark, W),
            {noreply, W1};
        _ ->
            {noreply, W, idle_of(W)}
    end.

step_aside(Node, Winner, Vsn, Mark, #w{cfg = #shoal_cfg{grace = Grace} = Cfg, key = Key} = W) ->
    _ = shoal_registry:set_moving(Cfg, Key, self(), true),
    _ = Vsn > 0 andalso shoal_registry:put_successor(Cfg, Key, Node, Winner, Vsn, Mark),
    Winner ! {'$shoal_merged', self()},
    erlang:send_after(Grace, self(), '$shoal_retire'),
    W#w{forward = Winner, fwd_mon = erlang:monitor(process, Winner), merge = waiting,
        graced = false}.

%% --- the user's callbacks ----------------------------------------------------------------

with_loaded(#w{loaded = true} = W, Fun) -> Fun(W);
with_loaded(#w{cfg = #shoal_cfg{worker = Mod}, key = Key, st = St} = W, Fun) ->
    case Mod:load(Key, St) of
        {ok, St1} -> Fun(W#w{st = St1, loaded = true});
        {error, Reason} ->
            init_failed(W#w.cfg, Key, load, {load_failed, Reason}),
            {stop, {shutdown, {load_failed, Reason}}, W};
        Other ->
            init_failed(W#w.cfg, Key, load, {bad_return_value, Other}),
            {stop, {bad_return_value, Other}, W}
    end.

ret({reply, R, S}, #w{cfg = #shoal_cfg{idle_timeout = I}} = W) -> {reply, R, W#w{st = S}, I};
ret({reply, R, S, X}, W) -> {reply, R, W#w{st = S, user_timeout = is_integer(X)}, X};
ret({noreply, S}, #w{cfg = #shoal_cfg{idle_timeout = I}} = W) -> {noreply, W#w{st = S}, I};
ret({noreply, S, X}, W) -> {noreply, W#w{st = S, user_timeout = is_integer(X)}, X};
ret({stop, Why, R, S}, W) -> {stop, Why, R, W#w{st = S}};
ret({stop, Why, S}, W) -> {stop, Why, W#w{st = S}};
ret(Other, W) -> {stop, {bad_return_value, Other}, W}.

%% --- idle offload and stop -------------------------------------------------------------

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

%% We leave the table once terminate/2 has run (terminate_/2), so the key's next
%% incarnation cannot load/2 a state before ours is saved; whatever reaches us meanwhile
%% goes to it after (reroute_mailbox/1).
offload(#w{cfg = #shoal_cfg{counters = C, pool = Pool}, key = Key} = W) ->
    counters:add(C, ?C_IDLE_OFFLOADS, 1),
    shoal_telemetry:execute([shoal, worker, offload], #{system_time => erlang:system_time()},
                            #{pool => Pool, key => Key, node => node(), pid => self()}),
    {stop, {shutdown, shoal_offloaded}, W}.

unregister_self(#w{cfg = Cfg, key = Key}) ->
    _ = shoal_registry:unregister(Cfg, Key, self()),
    ok.

%% After terminate/2 ran (the state is saved) and we left the table, what is still queued
%% goes to the key's next incarnation, spawned if need be: our member resolves the key and forwards, and calls
%% keep their From, so their callers get the reply. Not the calls of Shoal's own callers:
%% those see us exit with `shoal_stopped' or `shoal_offloaded' and send them again
%% (handed on as well, they would run twice).
reroute_mailbox(#w{cfg = #shoal_cfg{pool = Pool, server = Name}, key = Key}) ->
    case collect_mailbox([]) of
        [] -> ok;
        Msgs ->
            case whereis(Name) of
                undefined -> ok;
                Member -> shoal_proto:send(Member, Pool, {reroute, Key, Msgs})
            end
    end.

collect_mailbox(Acc) ->
    receive
        {'$gen_call', _From, Msg} = M ->
            case redirected(Msg) of
                true -> collect_mailbox(Acc);
                false -> collect_mailbox([M | Acc])
            end;
        {'$gen_cast', _Msg} = M -> collect_mailbox([M | Acc])
    after 0 -> lists:reverse(Acc)
    end.
