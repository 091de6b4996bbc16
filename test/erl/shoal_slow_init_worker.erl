%% @doc A test worker whose init/2 takes a while and then succeeds or fails, as its pool's
%% args say: `#{delay => Ms, outcome => ok | {stop, Reason}}'. Every init records
%% `{init, Key, Pid, Node}' in the collector's `shoal_test_events' table when there is one.
-module(shoal_slow_init_worker).
-behaviour(shoal_worker).

-export([init/2, handle_call/3, handle_cast/2]).

init(Key, #{delay := Delay, outcome := Outcome}) ->
    try ets:insert(shoal_test_events, {init, Key, self(), node()}) catch error:badarg -> ok end,
    timer:sleep(Delay),
    case Outcome of
        ok -> {ok, Key};
        {stop, Reason} -> {stop, Reason}
    end.

handle_call(whoami, _From, St) -> {reply, {self(), node()}, St}.

handle_cast(_Msg, St) -> {noreply, St}.
