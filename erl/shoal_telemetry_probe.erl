%% @doc Looks every second whether anybody listens to the `[shoal, call | _]' events through
%% the `telemetry' library (shoal_telemetry:probe/0), so that a handler attached with
%% `telemetry:attach/4' starts getting call events within a second, while `shoal:call' reads
%% one flag instead of asking telemetry on every call. Handlers attached with
%% shoal_telemetry:attach/4 need no probe: they set the flag themselves.
%%
%% A child of shoal_sup, started with the shoal application.
-module(shoal_telemetry_probe).
-behaviour(gen_server).

-export([start_link/0, child_spec/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-define(EVERY_MS, 1000).

%% @doc The probe as a child of shoal_sup.
-spec child_spec() -> supervisor:child_spec().
child_spec() ->
    #{id => ?MODULE, start => {?MODULE, start_link, []}, shutdown => 1000}.

%% @doc Start the probe, registered as `shoal_telemetry_probe'.
-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() -> gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @private
-spec init([]) -> {ok, undefined}.
init([]) ->
    self() ! probe,
    {ok, undefined}.

%% @private
-spec handle_call(term(), gen_server:from(), undefined) -> {reply, {error, unknown_call}, undefined}.
handle_call(_Req, _From, S) -> {reply, {error, unknown_call}, S}.

%% @private
-spec handle_cast(term(), undefined) -> {noreply, undefined}.
handle_cast(_Msg, S) -> {noreply, S}.

%% @private
-spec handle_info(term(), undefined) -> {noreply, undefined}.
handle_info(probe, S) ->
    ok = shoal_telemetry:probe(),
    erlang:send_after(?EVERY_MS, self(), probe),
    {noreply, S};
handle_info(_Info, S) -> {noreply, S}.
