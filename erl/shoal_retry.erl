%% @doc The retry policy shared by shoal_fixed, shoal_batcher and shoal_cron.
%%
%% `retry => #{count => C, backoff => Ms}' (or a proplist with the same keys): `count' is the
%% number of retries after the first attempt (default 0: every job still runs once),
%% `backoff' the pause in ms before each retry (default 0). When the callback module exports
%% `handle_error(Item, Attempt, Error, State)', it is called after every failed attempt
%% (`Attempt' counts from 1) and chooses how to go on while retries remain:
%% `{retry, NewState}' retries at once with `NewState', `{backoff, Ms}' retries after `Ms',
%% `halt' gives up now; any other answer retries after the configured backoff. Once
%% `count' retries have failed the item fails whatever `handle_error' answers.
-module(shoal_retry).

-export([parse/1, decide/6]).

-export_type([policy/0, error/0]).

-type policy() :: #{count := non_neg_integer(), backoff := non_neg_integer()}.
%% What a failed attempt raised (or `{error, {bad_return, Value}, []}').
-type error() :: {error | exit | throw, term(), list()}.

%% @doc The policy from the `retry' option (`undefined' gives the default: no retry).
-spec parse(term()) -> {ok, policy()} | {error, term()}.
parse(undefined) -> {ok, #{count => 0, backoff => 0}};
parse(R) ->
    case shoal_tools_opts:to_map(R, [count, backoff]) of
        {ok, M} ->
            C = maps:get(count, M, 0),
            B = maps:get(backoff, M, 0),
            case is_integer(C) andalso C >= 0 andalso is_integer(B) andalso B >= 0 of
                true -> {ok, #{count => C, backoff => B}};
                false -> {error, {bad_option, retry, R}}
            end;
        {error, _} ->
            {error, {bad_option, retry, R}}
    end.

%% @doc After attempt `Attempt' of `Item' failed with `Error': `{retry, DelayMs, State}' or
%% `{give_up, State}'. `Mod' is the callback module (`undefined' when there is none);
%% `handle_error/4' runs in the caller's process.
-spec decide(module() | undefined, policy(), term(), pos_integer(), error(), term()) ->
          {retry, non_neg_integer(), term()} | {give_up, term()}.
decide(Mod, #{count := Count, backoff := Backoff}, Item, Attempt, Error, State) ->
    Answer = case Mod =/= undefined andalso erlang:function_exported(Mod, handle_error, 4) of
                 true ->
                     try Mod:handle_error(Item, Attempt, Error, State)
                     catch C:R:St ->
                             logger:error("~p:handle_error/4 raised ~p:~p~n~p", [Mod, C, R, St]),
                             default
                     end;
                 false -> default
             end,
    State1 = case Answer of {retry, S} -> S; _ -> State end,
    case {Attempt =< Count, Answer} of
        {false, _} -> {give_up, State1};
        {true, halt} -> {give_up, State1};
        {true, {retry, _}} -> {retry, 0, State1};
        {true, {backoff, Ms}} when is_integer(Ms), Ms >= 0 -> {retry, Ms, State1};
        {true, _} -> {retry, Backoff, State1}
    end.
