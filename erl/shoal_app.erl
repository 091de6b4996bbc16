%% @doc The shoal application: a top supervisor under which pools started with
%% shoal:start_pool/2 live.
-module(shoal_app).
-behaviour(application).
-export([start/2, stop/1]).

-spec start(application:start_type(), term()) -> {ok, pid()} | {error, term()}.
start(_Type, _Args) ->
    ok = shoal_log:show_in_default_handler(),
    case shoal_sup:start_link() of
        {ok, Sup} ->
            {ok, _} = supervisor:start_child(shoal_sup, shoal_telemetry_probe:child_spec()),
            {ok, Sup};
        Other ->
            Other
    end.

-spec stop(term()) -> ok.
stop(_State) -> ok.
