%% @doc A shoal_worker for the test suites, with every optional callback exported and its
%% behaviour driven by the pool's `args' (a map):
%%   notify => Pid        sent {shoal_test, Event, Key, self()} for init, load,
%%                        {terminate, Reason} and idle
%%   fail_init => [Key]   init/2 returns {stop, init_failed} for these keys
%%   fail_load => [Key]   load/2 returns {error, no_such_record} for these keys
%%   idle => keep | offload (default offload)
%%   store => Tab         load/2 takes the sum saved for the key in ETS table Tab (if any),
%%                        terminate/2 saves it there
%%   slow_terminate => Ms terminate/2 waits Ms (after its notify, before it saves)
%% The state counts what `{add, N}' casts and calls added (a call answers the new sum); `get'
%% returns it.
-module(shoal_test_worker).
-behaviour(shoal_worker).

-export([init/2, handle_call/3, handle_cast/2, handle_info/2, load/2, idle/1,
         terminate/2]).

init(Key, Args) ->
    notify(Args, init, Key),
    case lists:member(Key, opt(fail_init, Args, [])) of
        true -> {stop, init_failed};
        false -> {ok, #{key => Key, args => Args, n => 0, loaded => false}}
    end.

load(Key, #{args := Args} = St) ->
    notify(Args, load, Key),
    case lists:member(Key, opt(fail_load, Args, [])) of
        true -> {error, no_such_record};
        false ->
            N = case opt(store, Args, undefined) of
                    undefined -> 0;
                    Tab -> case ets:lookup(Tab, Key) of [{_, V}] -> V; [] -> 0 end
                end,
            {ok, St#{loaded => true, n => N}}
    end.

idle(#{key := Key, args := Args} = St) ->
    notify(Args, idle, Key),
    case opt(idle, Args, offload) of
        keep -> {keep, St};
        offload -> {offload, St}
    end.

handle_call(ping, _From, St) -> {reply, {pong, self()}, St};
handle_call(get, _From, #{n := N} = St) -> {reply, N, St};
handle_call({add, K}, _From, #{n := N} = St) -> {reply, N + K, St#{n => N + K}};
handle_call({record, Tab, Id}, _From, St) ->
    %% Counts each run of a call in the caller's public table (it must run once).
    {reply, ets:update_counter(Tab, Id, 1, {Id, 0}), St};
handle_call(loaded, _From, #{loaded := L} = St) -> {reply, L, St};
handle_call({echo, X}, _From, St) -> {reply, X, St};
handle_call(noreply, _From, St) -> {noreply, St};
handle_call({stop, Reason}, _From, St) -> {stop, Reason, ok, St};
handle_call({crash, Reason}, _From, _St) -> exit(Reason);
handle_call({block, Pid}, _From, St) ->
    Pid ! {blocked, self()},
    receive unblock -> {reply, unblocked, St} end.

handle_cast({add, K}, #{n := N} = St) -> {noreply, St#{n => N + K}};
handle_cast({crash, Reason}, _St) -> exit(Reason);
handle_cast({stop, Reason}, St) -> {stop, Reason, St}.

handle_info(_Info, St) -> {noreply, St}.

terminate(Reason, #{key := Key, args := Args} = St) ->
    notify(Args, {terminate, Reason}, Key),
    timer:sleep(opt(slow_terminate, Args, 0)),
    case opt(store, Args, undefined) of
        undefined -> ok;
        Tab -> ets:insert(Tab, {Key, maps:get(n, St)}), ok
    end.

notify(Args, Event, Key) ->
    case opt(notify, Args, undefined) of
        Pid when is_pid(Pid) -> Pid ! {shoal_test, Event, Key, self()}, ok;
        _ -> ok
    end.

opt(K, Args, Default) when is_map(Args) -> maps:get(K, Args, Default);
opt(_, _, Default) -> Default.
