%% @doc A shoal_fixed worker for the suites. Args: `#{notify => Pid, policy => P}'; the
%% policy is what handle_error/4 answers (`default', `halt', `{backoff, Ms}', `retry').
-module(shoal_tools_test_fixed).
-behaviour(shoal_fixed).
-export([init/2, handle_job/2, handle_error/4, pool_ready/1, relay/2]).

init(Ix, Args) ->
    notify(Args, {fixed_init, Ix, self()}),
    {ok, #{ix => Ix, n => 0, args => Args, retried => 0}}.

pool_ready(Sup) ->
    case persistent_term:get(shoal_tools_test_ready_to, undefined) of
        Pid when is_pid(Pid) -> Pid ! {pool_ready, Sup};
        _ -> ok
    end.

handle_job(whoami, #{ix := Ix} = S) -> {reply, {Ix, self()}, S};
handle_job({echo, X}, S) -> {reply, X, S};
handle_job(count, #{n := N} = S) -> {reply, N + 1, S#{n := N + 1}};
handle_job(retried, #{retried := R} = S) -> {reply, R, S};
handle_job({record, Tag}, #{ix := Ix, args := A} = S) ->
    notify(A, {ran, Tag, Ix, self()}),
    {noreply, S};
%% Fails its first N attempts (counted per Key in the public ETS table of the test).
handle_job({fail_times, N, Key}, S) ->
    Attempt = ets:update_counter(shoal_tools_test_attempts, Key, 1, {Key, 0}),
    case Attempt =< N of
        true -> error({planned, Attempt});
        false -> {reply, {succeeded_at, Attempt}, S}
    end;
handle_job({relay, Args}, S) -> {relay, Args, S};
handle_job({nowhere, Args}, S) -> {nowhere, Args, S};
handle_job(bad_shape, S) -> {what, is, this, S};
handle_job(exit, S) -> {exit, S};
handle_job(stop, S) -> {stop, S};
handle_job({block, Pid}, S) ->
    Pid ! {blocked, self()},
    receive release -> ok end,
    {reply, {released, self()}, S}.

handle_error(Job, Attempt, _Error, #{args := A, retried := R} = S) ->
    notify(A, {handle_error, Job, Attempt}),
    case maps:get(policy, A, default) of
        default -> default;
        halt -> halt;
        {backoff, Ms} -> {backoff, Ms};
        retry -> {retry, S#{retried := R + 1}}
    end.

%% The callback a `{relay, Args, S}' result invokes in the suites.
relay(To, Msg) -> To ! {relayed, Msg}, {relayed, Msg}.

notify(#{notify := P}, Msg) -> P ! Msg;
notify(_, _) -> ok.
