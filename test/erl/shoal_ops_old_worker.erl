%% @doc A worker of shoal_ops_SUITE with the older format_status/2 and no code_change/3.
-module(shoal_ops_old_worker).
-behaviour(shoal_worker).

-export([init/2, handle_call/3, handle_cast/2, format_status/2]).

init(Key, _Args) -> {ok, {Key, password}}.

handle_call(get, _From, St) -> {reply, St, St}.

handle_cast(_Msg, St) -> {noreply, St}.

format_status(Opt, [_PDict, {Key, _}]) -> {Opt, Key, '***'}.
