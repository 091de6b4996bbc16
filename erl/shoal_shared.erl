%% @doc A pooled server: a gen_server-shaped behaviour served by `size' worker processes
%% that take requests from one client queue, with back-pressure, and (by default) one
%% state shared by the whole pool with true atomicity.
%%
%% The callback module implements `init/1', `handle_call/3' and optionally `handle_cast/2',
%% `handle_info/2', `handle_continue/2' and `terminate/2', with gen_server's return shapes
%% (timeouts, `hibernate' and `{continue, C}' included; `throw(Ret)' counts as returning
%% `Ret', as in gen_server). A `{continue, C}' runs in the worker that returned it, before
%% that worker takes another request. `From' is gen_server's: a callback may return
%% `{noreply, S}' and answer later with gen_server:reply/2 (or reply/2 here).
%%
%% <b>The client queue.</b> call/2,3 and cast/2 put the request in the pool's queue (an
%% ETS ordered_set: `fifo' takes the oldest first, `filo' the newest) and wake an idle
%% worker if there is one; a busy worker takes the next request as soon as it is done, so
%% no dispatcher process sits between callers and workers. Back-pressure: with `max => M',
%% a request that finds M requests already queued gets `{error, too_many_requests}' at
%% once; with `queue_timeout => T', a call still queued after T ms returns
%% `{error, queue_timeout}' and a cast queued that long is dropped (both counted in
%% stats/1). A request is never lost while queued: when a worker dies, the requests still
%% queued stay in the queue for the other workers, and the call the dead worker was running
%% fails back to its caller, which exits with the worker's exit reason, as a
%% gen_server:call/3 to a crashing server does.
%%
%% <b>Shared state</b> (`shared_state => true', the default): init/1 runs once, when the
%% pool starts, and terminate/2 once, when it stops. Every callback is atomic: it runs
%% against the latest committed state and its new state is committed only if no other
%% worker committed in between. How: the committed state and its version live in an ETS
%% row; each worker keeps a copy and refreshes it when the version moved (one ETS read of
%% an integer per request when it did not). A callback that returns its state unchanged (a
%% read: the same term, compared with `=:=') commits nothing, so reads run in parallel on
%% all workers, on the worker's copy, with no lock. A callback that changes the state takes
%% the pool's write lock (an ETS row created with insert_new), checks the version, and
%% commits; if another worker committed since the copy was taken, the callback is run
%% again, under the lock, on the latest state, and that run's result counts. So a callback
%% that changes the state may run twice (never more); its reply, new state and actions are
%% those of the run that committed, and side effects inside it (sending messages, writing
%% files) should tolerate a discarded first run. Each commit copies the new state into ETS,
%% and each worker copies it out once per version: writes cost O(state size).
%%
%% With `shared_state => false' each worker has its own state from its own init/1, like a
%% plain pool of gen_servers sharing one queue.
%%
%% A worker that crashes is restarted by the pool's supervisor and takes requests again as
%% soon as it is up (shared state: it carries on from the committed state; init/1 does not
%% run again).
-module(shoal_shared).

-include("shoal_shared.hrl").

-export([start_link/4, child_spec/1, child_spec/4, stop/1, call/2, call/3, cast/2,
         reply/2, get_state/1, workers/1, stats/1]).

-export_type([name/0, options/0]).

-type name() :: atom().
-type options() :: #{size => pos_integer(),
                     shared_state => boolean(),
                     queue => fifo | filo,
                     queue_timeout => timeout(),
                     max => non_neg_integer() | infinity}
                 | [{atom(), term()}].

-callback init(Args :: term()) -> {ok, State :: term()} | {stop, Reason :: term()}.
-callback handle_call(Request :: term(), From :: gen_server:from(), State :: term()) ->
    {reply, Reply :: term(), NewState :: term()} |
    {reply, Reply :: term(), NewState :: term(), timeout() | hibernate | {continue, term()}} |
    {noreply, NewState :: term()} |
    {noreply, NewState :: term(), timeout() | hibernate | {continue, term()}} |
    {stop, Reason :: term(), Reply :: term(), NewState :: term()} |
    {stop, Reason :: term(), NewState :: term()}.
-callback handle_cast(Request :: term(), State :: term()) ->
    {noreply, NewState :: term()} |
    {noreply, NewState :: term(), timeout() | hibernate | {continue, term()}} |
    {stop, Reason :: term(), NewState :: term()}.
-callback handle_info(Info :: term(), State :: term()) ->
    {noreply, NewState :: term()} |
    {noreply, NewState :: term(), timeout() | hibernate | {continue, term()}} |
    {stop, Reason :: term(), NewState :: term()}.
-callback handle_continue(Continue :: term(), State :: term()) ->
    {noreply, NewState :: term()} |
    {noreply, NewState :: term(), timeout() | hibernate | {continue, term()}} |
    {stop, Reason :: term(), NewState :: term()}.
-callback terminate(Reason :: term(), State :: term()) -> term().
-optional_callbacks([handle_cast/2, handle_info/2, handle_continue/2, terminate/2]).

-define(KNOWN, [size, shared_state, queue, queue_timeout, max]).
%% gen's reply tag for an alias, `[alias | Alias]', is an improper list on purpose: it is
%% what gen_server:reply/2 recognises.
-dialyzer({no_improper_lists, do_call/3}).
-define(DEFAULT_TIMEOUT, 5000).

%%% Life cycle ----------------------------------------------------------------------------

%% @doc Start pool `Name' (its supervisor is registered as `Name') served by `Module'
%% (`Args' go to init/1). `Opts' (map or proplist): `size' (workers, default: the number of
%% schedulers), `shared_state' (default `true'), `queue' (`fifo', the default, or `filo'),
%% `queue_timeout' (ms, default `infinity'), `max' (queued requests beyond which requests
%% are refused, default `infinity').
-spec start_link(name(), module(), term(), options()) -> {ok, pid()} | {error, term()}.
start_link(Name, Module, Args, Opts) ->
    case validate(Name, Module, Args, Opts) of
        {ok, #{size := N} = Cfg} ->
            shoal_tools_sup:start_link(Cfg, shoal_shared_owner,
                                       {shoal_shared_worker, lists:seq(1, N)}, permanent);
        {error, _} = E -> E
    end.

%% @doc child_spec/4 from `{Name, Module, Args, Opts}' (Elixir's `{Module, Arg}' shape).
-spec child_spec({name(), module(), term(), options()}) -> supervisor:child_spec().
child_spec({Name, Module, Args, Opts}) -> child_spec(Name, Module, Args, Opts).

%% @doc A child spec for the user's supervision tree (see start_link/4).
-spec child_spec(name(), module(), term(), options()) -> supervisor:child_spec().
child_spec(Name, Module, Args, Opts) ->
    #{id => {?MODULE, Name},
      start => {?MODULE, start_link, [Name, Module, Args, Opts]},
      type => supervisor,
      restart => permanent,
      shutdown => infinity}.

%% @doc Stop the pool: queued calls fail with `shutdown', queued casts are dropped, and
%% with shared state terminate/2 runs once with the committed state.
-spec stop(name()) -> ok | {error, {no_such_pool, name()}}.
stop(Name) ->
    try gen_server:stop(Name, normal, infinity)
    catch exit:_ -> {error, {no_such_pool, Name}}
    end.

%%% Requests ------------------------------------------------------------------------------

%% @equiv call(Name, Request, 5000)
-spec call(name(), term()) -> term().
call(Name, Request) -> call(Name, Request, ?DEFAULT_TIMEOUT).

%% @doc Run `handle_call(Request, From, State)' on a worker and return its reply.
%% `{error, too_many_requests}' at once when the queue is full, `{error, queue_timeout}'
%% when no worker took the request within `queue_timeout'. Exits like gen_server:call/3,
%% with `{Reason, {shoal_shared, call, [Name, Request, Timeout]}}', on a timeout or when
%% the worker running it dies.
-spec call(name(), term(), timeout()) -> term().
call(Name, Request, Timeout) ->
    case persistent_term:get(?SHARED_KEY(Name), undefined) of
        #shoal_shared{} = P ->
            case admit(P) of
                true -> do_call(P, Request, Timeout);
                false -> {error, too_many_requests}
            end;
        undefined ->
            {error, {no_such_pool, Name}}
    end.

%% @doc Queue `handle_cast(Request, State)' for a worker. `ok', or
%% `{error, too_many_requests}' when the queue is full.
-spec cast(name(), term()) -> ok | {error, term()}.
cast(Name, Request) ->
    case persistent_term:get(?SHARED_KEY(Name), undefined) of
        #shoal_shared{queue = Q, queue_timeout = QT} = P ->
            case admit(P) of
                true ->
                    true = ets:insert(Q, {erlang:unique_integer([monotonic]), cast, Request,
                                          undefined, deadline(QT)}),
                    wake(P);
                false ->
                    {error, too_many_requests}
            end;
        undefined ->
            {error, {no_such_pool, Name}}
    end.

%% @doc Answer a call whose callback returned `noreply' (gen_server:reply/2).
-spec reply(gen_server:from(), term()) -> ok.
reply(From, Reply) -> gen_server:reply(From, Reply).

%% @doc The pool's state: the committed state with shared state, else the list of the
%% workers' states (asked from each worker with sys:get_state/1).
-spec get_state(name()) -> term() | {error, term()}.
get_state(Name) ->
    case persistent_term:get(?SHARED_KEY(Name), undefined) of
        #shoal_shared{state = undefined, pids = Pids} ->
            [sys:get_state(P) || P <- tuple_to_list(Pids), is_pid(P)];
        #shoal_shared{state = ST} ->
            ets:lookup_element(ST, state, 3);
        undefined ->
            {error, {no_such_pool, Name}}
    end.

%% @doc The pool's worker pids, in worker order.
-spec workers(name()) -> [pid()] | {error, term()}.
workers(Name) ->
    case persistent_term:get(?SHARED_KEY(Name), undefined) of
        #shoal_shared{pids = Pids} -> [P || P <- tuple_to_list(Pids), is_pid(P)];
        undefined -> {error, {no_such_pool, Name}}
    end.

%% @doc Counters: `calls', `casts' (handled), `rejected' (too_many_requests), `expired'
%% (queue_timeout), `reruns' (callbacks run again after a conflicting write), `crashes'
%% (workers that died), and the current `queued' and `idle' (idle workers).
-spec stats(name()) -> map() | {error, term()}.
stats(Name) ->
    case persistent_term:get(?SHARED_KEY(Name), undefined) of
        #shoal_shared{stats = C, atomics = A, size = N} ->
            #{size => N, calls => counters:get(C, ?S_CALLS), casts => counters:get(C, ?S_CASTS),
              rejected => counters:get(C, ?S_REJECTED), expired => counters:get(C, ?S_EXPIRED),
              reruns => counters:get(C, ?S_RERUNS), crashes => counters:get(C, ?S_CRASHES),
              queued => atomics:get(A, ?A_QUEUED), idle => atomics:get(A, ?A_IDLE)};
        undefined ->
            {error, {no_such_pool, Name}}
    end.

%%% Internals -----------------------------------------------------------------------------

admit(#shoal_shared{atomics = A, max = infinity}) ->
    atomics:add(A, ?A_QUEUED, 1),
    true;
admit(#shoal_shared{atomics = A, max = Max, stats = C}) ->
    case atomics:add_get(A, ?A_QUEUED, 1) > Max of
        false -> true;
        true ->
            atomics:sub(A, ?A_QUEUED, 1),
            counters:add(C, ?S_REJECTED, 1),
            false
    end.

deadline(infinity) -> infinity;
deadline(QT) -> erlang:monotonic_time(millisecond) + QT.

%% Wake one idle worker, if any: claim its idle flag (1 -> 0) so that no other caller wakes
%% it too, then message it. The pid is read after the claim: a restarted worker sets its
%% flag only after its pid is published.
wake(#shoal_shared{atomics = A} = P) ->
    case atomics:get(A, ?A_IDLE) of
        0 -> ok;
        _ -> claim(P, 1)
    end.

claim(#shoal_shared{size = N}, I) when I > N -> ok;
claim(#shoal_shared{atomics = A, name = Name} = P, I) ->
    case atomics:compare_exchange(A, ?A_IDLE_FLAG(I), 1, 0) of
        ok ->
            atomics:sub(A, ?A_IDLE, 1),
            case persistent_term:get(?SHARED_KEY(Name), undefined) of
                #shoal_shared{pids = Pids} when is_pid(element(I, Pids)) ->
                    erlang:send(element(I, Pids), '$shoal_wake'),
                    ok;
                _ ->
                    ok
            end;
        _ ->
            claim(P, I + 1)
    end.

do_call(#shoal_shared{queue = Q, queue_timeout = QT} = P, Request, Timeout) ->
    Alias = erlang:alias([reply]),
    Tag = [alias | Alias],
    Seq = erlang:unique_integer([monotonic]),
    true = ets:insert(Q, {Seq, call, Request, {self(), Tag}, deadline(QT)}),
    ok = wake(P),
    case QT =/= infinity andalso (Timeout =:= infinity orelse QT < Timeout) of
        true ->
            receive
                {Tag, Reply} -> Reply;
                {'$shoal_shared_down', Alias, Reason} -> call_exit(P, Reason, Request, Timeout)
            after QT ->
                    case take_back(P, Seq) of
                        true ->
                            counters:add(P#shoal_shared.stats, ?S_EXPIRED, 1),
                            abandon(Alias, Tag, {error, queue_timeout});
                        false ->
                            await(P, Seq, Alias, Tag, Request, Timeout,
                                  case Timeout of infinity -> infinity; _ -> Timeout - QT end)
                    end
            end;
        false ->
            await(P, Seq, Alias, Tag, Request, Timeout, Timeout)
    end.

await(P, Seq, Alias, Tag, Request, Timeout, Wait) ->
    receive
        {Tag, Reply} -> Reply;
        {'$shoal_shared_down', Alias, Reason} -> call_exit(P, Reason, Request, Timeout)
    after Wait ->
            _ = take_back(P, Seq),
            case abandon(Alias, Tag, '$timeout') of
                '$timeout' -> call_exit(P, timeout, Request, Timeout);
                Reply -> Reply
            end
    end.

%% The request is still queued: take it back (it never ran).
take_back(#shoal_shared{queue = Q, atomics = A}, Seq) ->
    case ets:take(Q, Seq) of
        [_] -> atomics:sub(A, ?A_QUEUED, 1), true;
        [] -> false
    end.

%% Stop listening on the alias; a reply that made it in the meantime wins (like gen).
abandon(Alias, Tag, Default) ->
    erlang:unalias(Alias),
    receive
        {Tag, Reply} -> Reply;
        {'$shoal_shared_down', Alias, _} -> Default
    after 0 -> Default
    end.

-spec call_exit(#shoal_shared{}, term(), term(), timeout()) -> no_return().
call_exit(#shoal_shared{name = Name}, Reason, Request, Timeout) ->
    exit({Reason, {?MODULE, call, [Name, Request, Timeout]}}).

validate(Name, _, _, _) when not is_atom(Name) -> {error, {bad_name, Name}};
validate(Name, Module, Args, Opts0) ->
    case shoal_tools_opts:to_map(Opts0, ?KNOWN) of
        {ok, Opts} ->
            try
                Mod = shoal_tools_opts:callback_module(module, #{module => Module},
                                                       [{init, 1}, {handle_call, 3}]),
                V = fun(K, D, F) -> shoal_tools_opts:get(K, Opts, D, F) end,
                {ok, #{name => Name, module => Mod, args => Args,
                       size => V(size, erlang:system_info(schedulers),
                                 fun(N) -> is_integer(N) andalso N >= 1 end),
                       shared => V(shared_state, true, fun is_boolean/1),
                       order => V(queue, fifo, fun(Q) -> Q =:= fifo orelse Q =:= filo end),
                       queue_timeout => V(queue_timeout, infinity, fun timeout_ok/1),
                       max => V(max, infinity,
                                fun(M) -> M =:= infinity orelse
                                              (is_integer(M) andalso M >= 0) end)}}
            catch throw:Reason -> {error, Reason}
            end;
        {error, _} = E ->
            E
    end.

timeout_ok(infinity) -> true;
timeout_ok(T) -> is_integer(T) andalso T >= 0.
