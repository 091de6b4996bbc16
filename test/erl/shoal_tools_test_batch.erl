%% @doc A shoal_batcher handler for the suites. Args: `#{to => Pid, fail => Fail,
%% policy => P, jitter => true}'. Each handled batch goes to `to' as `{batch, self(),
%% Batch}'; `Fail(Batch, Attempt)' says whether this attempt raises.
-module(shoal_tools_test_batch).
-behaviour(shoal_batcher).
-export([init/1, handle_batch/2, handle_error/4]).

init(Args) -> {ok, Args}.

%% Attempts are counted in the process dictionary: a raising attempt loses its state.
handle_batch(Batch, #{to := To} = S) ->
    N = case get({attempts, Batch}) of undefined -> 1; A -> A + 1 end,
    put({attempts, Batch}, N),
    case maps:get(jitter, S, false) andalso rand:uniform(4) =:= 1 of
        true -> timer:sleep(rand:uniform(2) - 1);
        false -> ok
    end,
    case maps:get(block, S, false) of
        true -> To ! {blocked_on, self(), Batch}, receive release -> ok end;
        false -> ok
    end,
    Fail = maps:get(fail, S, fun(_, _) -> false end),
    case Fail(Batch, N) of
        true -> To ! {attempt_failed, Batch, N}, error({planned, N});
        false -> To ! {batch, self(), Batch}, {ok, S}
    end.

handle_error(Batch, Attempt, _Error, #{to := To} = S) ->
    To ! {handle_error, Batch, Attempt},
    maps:get(policy, S, default).
