%% @doc The owner of a shoal_shared pool: it creates the pool's queue, state and serving
%% tables and its atomics, runs init/1 and terminate/2 of a shared state, publishes the
%% pool's record (the only writer of it), and watches the workers. When a worker dies it
%% releases the write lock the worker may hold and fails the call the worker was running
%% back to its caller with the exit reason; the requests still queued stay queued. It is
%% on no request's path.
-module(shoal_shared_owner).
-behaviour(gen_server).

-include("shoal_shared.hrl").

-export([start_link/2, register/3]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-record(st, {p :: #shoal_shared{}, mons = #{} :: #{reference() => {pos_integer(), pid()}}}).

%% @doc Start the owner of pool `Cfg' (`_Sup' is the pool's supervisor).
-spec start_link(map(), pid()) -> {ok, pid()} | {error, term()}.
start_link(Cfg, _Sup) -> gen_server:start_link(?MODULE, Cfg, []).

%% @doc Worker `Index' (1-based) is up as `Pid' (called from the worker's init).
-spec register(pid(), pos_integer(), pid()) -> ok.
register(Owner, Index, Pid) -> gen_server:call(Owner, {register, Index, Pid}, infinity).

%%% gen_server ----------------------------------------------------------------------------

%% @private
-spec init(map()) -> {ok, #st{}} | {stop, term()}.
init(#{name := Name, module := Mod, args := Args, size := N, shared := Shared, order := Order,
       queue_timeout := QT, max := Max}) ->
    process_flag(trap_exit, true),
    %% The queue's size is never read (the atomics count it): no decentralized counters,
    %% which makes every insert and take cheaper.
    Queue = ets:new(shoal_shared_queue, [ordered_set, public, {write_concurrency, true},
                                         {decentralized_counters, false}]),
    Serving = ets:new(shoal_shared_serving, [set, public, {write_concurrency, true}]),
    StateTab = case Shared of
                   true -> ets:new(shoal_shared_state, [set, public, {read_concurrency, true}]);
                   false -> undefined
               end,
    P = #shoal_shared{name = Name, module = Mod, size = N, queue = Queue, state = StateTab,
                      serving = Serving, atomics = atomics:new(2 + N, []),
                      stats = counters:new(?S_N, [write_concurrency]),
                      pids = erlang:make_tuple(N, undefined), order = Order,
                      queue_timeout = QT, max = Max, owner = self()},
    case init_state(Shared, Mod, Args, StateTab) of
        ok ->
            persistent_term:put(?SHARED_KEY(Name), P),
            {ok, #st{p = P}};
        {stop, _} = Stop ->
            Stop
    end.

init_state(false, _, _, _) -> ok;
init_state(true, Mod, Args, StateTab) ->
    case Mod:init(Args) of
        {ok, S} -> true = ets:insert(StateTab, {state, 0, S}), ok;
        {ok, S, _} -> true = ets:insert(StateTab, {state, 0, S}), ok;
        {stop, Reason} -> {stop, Reason};
        Other -> {stop, {bad_return_value, Other}}
    end.

%% @private
-spec handle_call(term(), gen_server:from(), #st{}) -> {reply, term(), #st{}}.
handle_call({register, I, Pid}, _From, #st{p = #shoal_shared{atomics = A} = P, mons = M} = S) ->
    %% A predecessor that died while idle left its flag set: clear it before the new
    %% worker can set its own.
    case atomics:compare_exchange(A, ?A_IDLE_FLAG(I), 1, 0) of
        ok -> atomics:sub(A, ?A_IDLE, 1);
        _ -> ok
    end,
    P1 = P#shoal_shared{pids = setelement(I, P#shoal_shared.pids, Pid)},
    persistent_term:put(?SHARED_KEY(P#shoal_shared.name), P1),
    Mon = erlang:monitor(process, Pid),
    {reply, ok, S#st{p = P1, mons = M#{Mon => {I, Pid}}}};
handle_call(_Other, _From, S) ->
    {reply, {error, unknown_call}, S}.

%% @private
-spec handle_cast(term(), #st{}) -> {noreply, #st{}}.
handle_cast(_Other, S) -> {noreply, S}.

%% @private
-spec handle_info(term(), #st{}) -> {noreply, #st{}}.
handle_info({'DOWN', Mon, process, Pid, Reason}, #st{p = P, mons = M} = S) ->
    case maps:take(Mon, M) of
        {{_I, Pid}, M1} ->
            #shoal_shared{state = ST, serving = Serving, stats = C} = P,
            _ = ST =/= undefined andalso ets:delete_object(ST, {lock, Pid}),
            case ets:take(Serving, Pid) of
                [{Pid, From}] -> fail(From, Reason);
                [] -> ok
            end,
            _ = abnormal(Reason) andalso counters:add(C, ?S_CRASHES, 1) =:= ok,
            {noreply, S#st{mons = M1}};
        error ->
            {noreply, S}
    end;
handle_info(_Other, S) ->
    {noreply, S}.

%% @private
-spec terminate(term(), #st{}) -> ok.
terminate(Reason, #st{p = #shoal_shared{name = Name, module = Mod, state = ST, queue = Q}}) ->
    _ = [fail(From, shutdown) || {_, call, _, From, _} <- ets:tab2list(Q)],
    case ST =/= undefined andalso erlang:function_exported(Mod, terminate, 2) of
        true ->
            try Mod:terminate(Reason, ets:lookup_element(ST, state, 3))
            catch C:R:St -> logger:error("~p:terminate/2 raised ~p:~p~n~p", [Mod, C, R, St])
            end;
        false -> ok
    end,
    shoal_tools_opts:erase_own(?SHARED_KEY(Name), #shoal_shared.owner).

abnormal(normal) -> false;
abnormal(shutdown) -> false;
abnormal({shutdown, _}) -> false;
abnormal(_) -> true.

%% The caller of a call that can no longer be answered exits with Reason (see
%% shoal_shared:call/3). Its alias is deactivated once it got a reply, so a stale From
%% (a call already answered) drops this message.
fail({_Pid, [alias | Alias]}, Reason) ->
    _ = erlang:send(Alias, {'$shoal_shared_down', Alias, Reason}),
    ok;
fail(_, _) ->
    ok.
