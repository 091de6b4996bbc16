%% @doc A shoal_shared callback module for the suites: a counter (or any term) as state.
-module(shoal_tools_test_shared).
-behaviour(shoal_shared).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, handle_continue/2,
         terminate/2]).

init({crash, R}) -> {stop, R};
init(#{} = Args) -> {ok, maps:get(state, Args, 0)};
init(N) -> {ok, N}.

handle_call({add, X}, _From, N) -> {reply, N + X, N + X};
handle_call(get, _From, S) -> {reply, S, S};
handle_call(whoami, _From, S) -> {reply, self(), S};
handle_call({continue, To}, _From, S) -> {reply, self(), S, {continue, {tell, To}}};
%% A read that waits: it keeps the state, so it runs in parallel with other reads.
handle_call({hold, To}, _From, S) ->
    To ! {holding, self()},
    receive release -> ok end,
    {reply, {released, self()}, S};
handle_call({hold_then_crash, To}, _From, _S) ->
    To ! {holding, self()},
    receive release -> ok end,
    error(planned_crash);
handle_call(crash, _From, _S) -> error(planned_crash);
handle_call({later, To}, From, S) -> To ! {reply_later, From}, {noreply, S};
handle_call({timeout_in, Ms, To}, _From, S) -> put(timeout_to, To), {reply, self(), S, Ms};
handle_call(hibernate, _From, S) -> {reply, self(), S, hibernate};
handle_call({stop, Reason}, _From, S) -> {stop, Reason, stopping, S};
handle_call({throw, V}, _From, _S) -> throw(V);
handle_call(bad_return, _From, _S) -> nonsense.

handle_cast({add, X}, N) -> {noreply, N + X};
handle_cast({log, To, Tag}, S) -> To ! {cast_ran, Tag}, {noreply, S};
handle_cast({hold, To}, S) -> To ! {holding, self()}, receive release -> ok end, {noreply, S}.

handle_info(timeout, S) ->
    case get(timeout_to) of
        To when is_pid(To) -> To ! {timed_out, self()};
        _ -> ok
    end,
    {noreply, S};
handle_info({ping, To}, S) -> To ! {pong, self()}, {noreply, S};
handle_info(_, S) -> {noreply, S}.

handle_continue({tell, To}, S) -> To ! {continued, self()}, {noreply, S}.

terminate(Reason, S) ->
    case persistent_term:get(shoal_tools_test_terminate_to, undefined) of
        Pid when is_pid(Pid) -> Pid ! {terminated, Reason, S};
        _ -> ok
    end.
