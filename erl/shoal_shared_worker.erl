%% @doc One worker of a shoal_shared pool: a proc_lib process (sys-compliant, so `sys',
%% supervisors and release handling treat it like a gen_server) that takes requests from
%% the pool's queue, runs the user's callback as an atomic transaction on the shared state
%% (see shoal_shared for the protocol), and goes idle when the queue is empty.
%%
%% Idle protocol (no wake-up is lost): an idle worker sets its idle flag and bumps the idle
%% count, then looks at the queue once more before it waits; a caller inserts its request
%% first, then claims a set flag (1 -> 0) and messages that worker. If the worker finds work
%% on its second look it clears its own flag, unless a caller claimed it already, in which
%% case it takes the wake-up message that caller sends. A worker leaving its wait for any
%% other reason does the same, so a flag is set only while its worker waits.
-module(shoal_shared_worker).

-include("shoal_shared.hrl").

-export([start_link/2, init/3, wait/1]).
%% sys
-export([system_continue/3, system_terminate/4, system_get_state/1, system_replace_state/2,
         system_code_change/4]).

-record(w, {parent :: pid(),
            index :: pos_integer(),
            mod :: module(),
            p :: #shoal_shared{},
            shared :: boolean(),
            vsn = -1 :: integer(),         % version of the cached shared state
            ustate :: term(),              % the user's state (the cached copy if shared)
            timeout = infinity :: timeout(),
            hibernate = false :: boolean(),
            debug = [] :: [sys:dbg_opt()]}).

%% @doc Start worker `Index' (1-based) of pool `Cfg'.
-spec start_link(map(), pos_integer()) -> {ok, pid()} | {error, term()}.
start_link(Cfg, Index) -> proc_lib:start_link(?MODULE, init, [self(), Cfg, Index]).

%% @private
-spec init(pid(), map(), pos_integer()) -> no_return().
init(Parent, #{name := Name, module := Mod, args := Args, shared := Shared}, I) ->
    process_flag(trap_exit, true),
    #shoal_shared{owner = Owner} = P = persistent_term:get(?SHARED_KEY(Name)),
    Init = case Shared of
               true -> {ok, undefined};
               false -> try Mod:init(Args) catch throw:R -> R end
           end,
    case Init of
        {ok, US} -> start(Parent, Owner, I, Mod, P, Shared, US);
        {ok, US, _} -> start(Parent, Owner, I, Mod, P, Shared, US);
        {stop, Reason} -> proc_lib:init_ack(Parent, {error, Reason}), exit(Reason);
        Other -> proc_lib:init_ack(Parent, {error, {bad_return_value, Other}}),
                 exit({bad_return_value, Other})
    end.

start(Parent, Owner, I, Mod, P, Shared, US) ->
    ok = shoal_shared_owner:register(Owner, I, self()),
    proc_lib:init_ack(Parent, {ok, self()}),
    loop(#w{parent = Parent, index = I, mod = Mod, p = P, shared = Shared, ustate = US}).

%%% The loop ------------------------------------------------------------------------------

%% Messages first (system messages, infos), then the queue.
loop(W) ->
    receive
        Msg -> handle_msg(Msg, W)
    after 0 ->
            work(W)
    end.

work(#w{p = #shoal_shared{queue = Q, order = O, atomics = A}} = W) ->
    case take(Q, O, first(Q, O)) of
        empty -> idle(W);
        Entry ->
            atomics:sub(A, ?A_QUEUED, 1),
            loop(serve(Entry, W#w{timeout = infinity}))
    end.

first(Q, fifo) -> ets:first(Q);
first(Q, filo) -> ets:last(Q).

take(_Q, _O, '$end_of_table') -> empty;
take(Q, O, K) ->
    case ets:take(Q, K) of
        [E] -> E;
        [] -> take(Q, O, first(Q, O))     % another worker took it first
    end.

idle(#w{index = I, p = #shoal_shared{atomics = A, queue = Q}} = W) ->
    atomics:put(A, ?A_IDLE_FLAG(I), 1),
    atomics:add(A, ?A_IDLE, 1),
    case ets:first(Q) of
        '$end_of_table' -> wait(W);
        _ -> loop(unidle(W))
    end.

unidle(#w{index = I, p = #shoal_shared{atomics = A}} = W) ->
    case atomics:compare_exchange(A, ?A_IDLE_FLAG(I), 1, 0) of
        ok -> atomics:sub(A, ?A_IDLE, 1);
        _ -> receive '$shoal_wake' -> ok end   % a caller claimed us: its message is coming
    end,
    W.

%% @private Waiting for work (also where a hibernating worker resumes).
-spec wait(#w{}) -> no_return().
wait(#w{hibernate = true} = W) ->
    proc_lib:hibernate(?MODULE, wait, [W#w{hibernate = false}]);
wait(#w{timeout = T} = W) ->
    receive
        '$shoal_wake' -> loop(W#w{timeout = infinity});
        Msg -> handle_msg(Msg, unidle(W#w{timeout = infinity}))
    after T ->
            W1 = unidle(W#w{timeout = infinity}),
            loop(run(info, timeout, W1))
    end.

handle_msg('$shoal_wake', W) ->
    loop(W);
handle_msg({system, From, Req}, #w{parent = Parent, debug = Debug} = W) ->
    sys:handle_system_msg(Req, From, Parent, ?MODULE, Debug, W);
handle_msg({'EXIT', Parent, Reason}, #w{parent = Parent} = W) ->
    terminate(Reason, W);
handle_msg(Info, W) ->
    loop(run(info, Info, W)).

%%% Serving a request ---------------------------------------------------------------------

serve({_Seq, Kind, Req, From, Deadline}, #w{p = P} = W) ->
    case Deadline =/= infinity andalso erlang:monotonic_time(millisecond) > Deadline of
        true ->
            counters:add(P#shoal_shared.stats, ?S_EXPIRED, 1),
            _ = Kind =:= call andalso gen_server:reply(From, {error, queue_timeout}) =:= ok,
            W;
        false when Kind =:= call ->
            true = ets:insert(P#shoal_shared.serving, {self(), From}),
            counters:add(P#shoal_shared.stats, ?S_CALLS, 1),
            run({call, From}, Req, W);
        false ->
            counters:add(P#shoal_shared.stats, ?S_CASTS, 1),
            run(cast, Req, W)
    end.

%% Run one callback as a transaction and act on its result.
run(Kind, Msg, W) ->
    try transact(Kind, Msg, W) of
        {Ret, W1} -> act(Ret, Kind, W1)
    catch
        exit:{'$shoal_bad_return', Ret} ->
            crash(Kind, Msg, exit, {bad_return_value, Ret}, [], W);
        C:R:St ->
            crash(Kind, Msg, C, R, St, W)
    end.

callback({call, From}, Req, Mod, S) -> Mod:handle_call(Req, From, S);
callback(cast, Req, Mod, S) -> Mod:handle_cast(Req, S);
callback(info, Info, Mod, S) ->
    case erlang:function_exported(Mod, handle_info, 2) of
        true -> Mod:handle_info(Info, S);
        false ->
            logger:warning("~p: unexpected message ~0p", [Mod, Info]),
            {noreply, S}
    end;
callback(continue, C, Mod, S) -> Mod:handle_continue(C, S).

apply_cb(Kind, Msg, Mod, S) ->
    try callback(Kind, Msg, Mod, S)
    catch throw:Ret -> Ret      % gen_server: a thrown value is the callback's return
    end.

transact(Kind, Msg, #w{shared = false, mod = Mod, ustate = S} = W) ->
    Ret = apply_cb(Kind, Msg, Mod, S),
    {Ret, W#w{ustate = state_of(Ret)}};
transact(Kind, Msg, #w{mod = Mod} = W0) ->
    #w{vsn = V, ustate = S} = W = refresh(W0),
    Ret = apply_cb(Kind, Msg, Mod, S),
    case state_of(Ret) of
        S -> {Ret, W};                                  % a read: nothing to commit
        NewS -> commit(Kind, Msg, V, NewS, Ret, W)
    end.

%% The cached copy of the shared state, refreshed when its version moved.
refresh(#w{p = #shoal_shared{state = ST}, vsn = V} = W) ->
    case ets:lookup_element(ST, state, 2) of
        V -> W;
        _ ->
            [{state, V1, S1}] = ets:lookup(ST, state),
            W#w{vsn = V1, ustate = S1}
    end.

commit(Kind, Msg, V, NewS, Ret, #w{mod = Mod, p = #shoal_shared{state = ST, stats = C}} = W) ->
    lock(ST),
    try ets:lookup_element(ST, state, 2) of
        V ->
            true = ets:insert(ST, {state, V + 1, NewS}),
            {Ret, W#w{vsn = V + 1, ustate = NewS}};
        _ ->
            %% Another worker committed since our copy: run again, under the lock, on the
            %% latest state; this run cannot conflict.
            counters:add(C, ?S_RERUNS, 1),
            [{state, V2, S2}] = ets:lookup(ST, state),
            Ret2 = apply_cb(Kind, Msg, Mod, S2),
            case state_of(Ret2) of
                S2 -> {Ret2, W#w{vsn = V2, ustate = S2}};
                NewS2 ->
                    true = ets:insert(ST, {state, V2 + 1, NewS2}),
                    {Ret2, W#w{vsn = V2 + 1, ustate = NewS2}}
            end
    after
        unlock(ST)
    end.

lock(ST) ->
    case ets:insert_new(ST, {lock, self()}) of
        true -> ok;
        false -> erlang:yield(), lock(ST)
    end.

unlock(ST) -> true = ets:delete_object(ST, {lock, self()}).

state_of({reply, _, S}) -> S;
state_of({reply, _, S, _}) -> S;
state_of({noreply, S}) -> S;
state_of({noreply, S, _}) -> S;
state_of({stop, _, _, S}) -> S;
state_of({stop, _, S}) -> S;
state_of(Other) -> exit({'$shoal_bad_return', Other}).

act({reply, R, _}, {call, From}, W) -> gen_server:reply(From, R), W;
act({reply, R, _, Next}, {call, From}, W) -> gen_server:reply(From, R), next(Next, W);
act({noreply, _}, _, W) -> W;
act({noreply, _, Next}, _, W) -> next(Next, W);
act({stop, Reason, R, _}, {call, From}, W) -> gen_server:reply(From, R), terminate(Reason, W);
act({stop, Reason, _}, _, W) -> terminate(Reason, W);
act(Ret, Kind, W) -> crash(Kind, undefined, exit, {bad_return_value, Ret}, [], W).

next(T, W) when is_integer(T), T >= 0 -> W#w{timeout = T};
next(infinity, W) -> W;
next(hibernate, W) -> W#w{hibernate = true};
next({continue, C}, W) -> run(continue, C, W);
next(Other, W) -> crash(continue, undefined, exit, {bad_return_value, Other}, [], W).

%% A callback raised: report it like gen_server does and exit; the owner fails the call we
%% were running back to its caller with this reason, and the supervisor restarts us.
-spec crash(atom() | tuple(), term(), error | exit | throw, term(), list(), #w{}) -> no_return().
crash(Kind, Msg, Class, Reason, Stack, #w{mod = Mod} = W) ->
    ExitReason = case Class of
                     error -> {Reason, Stack};
                     exit -> Reason;
                     throw -> {{nocatch, Reason}, Stack}
                 end,
    logger:error("shoal_shared worker ~p (~p) terminating on ~0p ~0p~nReason: ~p",
                 [self(), Mod, Kind, Msg, ExitReason]),
    terminate(ExitReason, W).

-spec terminate(term(), #w{}) -> no_return().
terminate(Reason, #w{shared = false, mod = Mod, ustate = S}) ->
    _ = erlang:function_exported(Mod, terminate, 2) andalso
        (catch Mod:terminate(Reason, S)) =:= ok,
    exit(Reason);
terminate(Reason, _W) ->
    exit(Reason).

%%% sys -----------------------------------------------------------------------------------

%% @private
-spec system_continue(pid(), [sys:dbg_opt()], #w{}) -> no_return().
system_continue(_Parent, Debug, W) -> loop(W#w{debug = Debug}).

%% @private
-spec system_terminate(term(), pid(), [sys:dbg_opt()], #w{}) -> no_return().
system_terminate(Reason, _Parent, _Debug, W) -> terminate(Reason, W).

%% @private The user's state (the committed one with shared state).
-spec system_get_state(#w{}) -> {ok, term()}.
system_get_state(#w{shared = true} = W) -> {ok, (refresh(W))#w.ustate};
system_get_state(#w{ustate = S}) -> {ok, S}.

%% @private
-spec system_replace_state(fun((term()) -> term()), #w{}) -> {ok, term(), #w{}}.
system_replace_state(F, #w{shared = false, ustate = S} = W) ->
    S1 = F(S),
    {ok, S1, W#w{ustate = S1}};
system_replace_state(F, #w{p = #shoal_shared{state = ST}} = W) ->
    lock(ST),
    try ets:lookup(ST, state) of
        [{state, V, S}] ->
            S1 = F(S),
            true = ets:insert(ST, {state, V + 1, S1}),
            {ok, S1, W#w{vsn = V + 1, ustate = S1}}
    after
        unlock(ST)
    end.

%% @private
-spec system_code_change(#w{}, module(), term(), term()) -> {ok, #w{}}.
system_code_change(W, _Module, _OldVsn, _Extra) -> {ok, W}.
