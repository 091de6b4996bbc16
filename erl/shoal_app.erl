%% @doc The shoal application: a top supervisor under which pools started with
%% shoal:start_pool/2 live.
-module(shoal_app).
-behaviour(application).
-export([start/2, stop/1]).

-spec start(application:start_type(), term()) -> {ok, pid()} | {error, term()}.
start(_Type, _Args) ->
    ok = shoal_log:show_in_default_handler(),
    shoal_sup:start_link().

-spec stop(term()) -> ok.
stop(_State) -> ok.
