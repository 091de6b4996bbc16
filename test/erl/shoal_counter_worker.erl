%% @doc The worker of shoal_cluster_SUITE: a counter that every `incr' call bumps and
%% returns, with every optional callback exported and reported.
%%
%% Args (a map, the pool's `args'):
%%   store => Node | undefined   where the counter is persisted: the public ETS table
%%                               `shoal_test_store' on Node, reached with erpc (so a
%%                               worker on any member reads and writes the same store).
%%                               `load' reads it back, `incr' writes it before replying.
%%
%% Every callback records an event in this node's public ETS table `shoal_test_events'
%% (owned by the suite's collector process on the node): {Event, Key, Pid, Extra}. The
%% collector also monitors every incarnation (init and takeover tell it to), so the exit
%% reason of each worker is recorded as {down, Key, Pid, Reason}.
%%
%% Calls: `incr', `{slow_incr, Ms}' (the same after Ms), `get', `marks', `whoami', and
%% `{block, Pid}' (tells Pid `{blocked, self()}' and answers once sent `unblock').
%%
%% State: #{key, n (the counter), marks (cast ids in arrival order, newest first)}.
-module(shoal_counter_worker).
-behaviour(shoal_worker).

-export([init/2, load/2, handle_call/3, handle_cast/2, handle_info/2, handoff/1,
         takeover/3, conflict/3]).

-define(EVENTS, shoal_test_events).
-define(STORE, shoal_test_store).
-define(COLLECTOR, shoal_test_collector).

init(Key, Args) ->
    event(init, Key, Args),
    watch(Key),
    {ok, #{key => Key, n => 0, marks => [], store => store(Args)}}.

load(Key, #{store := undefined} = St) ->
    event(load, Key, undefined),
    {ok, St};
load(Key, #{store := Node} = St) ->
    try erpc:call(Node, ets, lookup, [?STORE, Key], 5000) of
        [{_, N}] -> event(load, Key, N), {ok, St#{n := N}};
        [] -> event(load, Key, 0), {ok, St}
    catch
        error:Reason -> {error, {store_unreachable, Reason}}
    end.

handle_call(incr, _From, #{key := Key, n := N, store := Store} = St) ->
    persist(Store, Key, N + 1),
    {reply, N + 1, St#{n := N + 1}};
handle_call({slow_incr, Ms}, From, St) ->
    timer:sleep(Ms),
    handle_call(incr, From, St);
handle_call({block, Pid}, _From, St) ->
    Pid ! {blocked, self()},
    receive unblock -> {reply, unblocked, St} end;
handle_call(get, _From, #{n := N} = St) ->
    {reply, N, St};
handle_call(marks, _From, #{marks := Ms} = St) ->
    {reply, lists:reverse(Ms), St};
handle_call(whoami, _From, St) ->
    {reply, {self(), node()}, St}.

handle_cast({mark, Id}, #{marks := Ms} = St) ->
    {noreply, St#{marks := [Id | Ms]}}.

handle_info(_Info, St) ->
    {noreply, St}.

handoff(#{key := Key, n := N} = St) ->
    event(handoff, Key, N),
    {ok, St}.

takeover(Key, Transfer, _Args) ->
    stall_if_asked(Key),
    event(takeover, Key, maps:get(n, Transfer)),
    watch(Key),
    {ok, Transfer}.

conflict(Key, Winner, #{n := N}) ->
    event(conflict, Key, {Winner, N}),
    ok.

%% --- helpers ------------------------------------------------------------------------------

%% A test can make takeovers on this node hang (so that a move is caught half done): with
%% {'$stall_takeovers_after', M} in this node's store, every takeover after the first M
%% records {stalled, Key, Pid, _} and never returns; with {{'$stall_takeover', Key}} the
%% takeover of Key does.
stall_if_asked(Key) ->
    try ets:member(?STORE, {'$stall_takeover', Key}) of
        true -> event(stalled, Key, undefined), receive after infinity -> ok end;
        false -> stall_if_counted(Key)
    catch error:badarg -> ok
    end.

stall_if_counted(Key) ->
    try ets:lookup(?STORE, '$stall_takeovers_after') of
        [{_, M}] ->
            case ets:update_counter(?STORE, '$takeovers', 1, {'$takeovers', 0}) > M of
                true -> event(stalled, Key, undefined), receive after infinity -> ok end;
                false -> ok
            end;
        [] -> ok
    catch error:badarg -> ok
    end.

store(Args) when is_map(Args) -> maps:get(store, Args, undefined);
store(_) -> undefined.

persist(undefined, _Key, _N) -> ok;
persist(Node, Key, N) ->
    true = erpc:call(Node, ets, insert, [?STORE, {Key, N}], 5000),
    ok.

event(Event, Key, Extra) ->
    try ets:insert(?EVENTS, {Event, Key, self(), Extra}) catch error:badarg -> ok end,
    ok.

watch(Key) ->
    case whereis(?COLLECTOR) of
        undefined -> ok;
        Pid -> Pid ! {watch, Key, self()}, ok
    end.
