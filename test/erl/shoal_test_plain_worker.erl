%% @doc The smallest shoal_worker: only the required callbacks, no load/idle/terminate
%% (so it does not trap exits). Used where the suites count spawns and exits in bulk.
-module(shoal_test_plain_worker).
-behaviour(shoal_worker).

-export([init/2, handle_call/3, handle_cast/2]).

init(Key, _Args) -> {ok, Key}.

handle_call(ping, _From, Key) -> {reply, {pong, self()}, Key};
handle_call({stop, Reason}, _From, Key) -> {stop, Reason, ok, Key}.

handle_cast({stop, Reason}, Key) -> {stop, Reason, Key};
handle_cast(_Msg, Key) -> {noreply, Key}.
