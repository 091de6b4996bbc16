%% @doc A shoal_cron scheduler on one node: a gen_server registered as the scheduler's
%% name, around shoal_cron_sched.
-module(shoal_cron_server).
-behaviour(gen_server).

-export([start_link/2]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

%% @doc Start scheduler `Name' with the validated configuration `Cfg'.
-spec start_link(atom(), map()) -> {ok, pid()} | {error, term()}.
start_link(Name, Cfg) -> gen_server:start_link({local, Name}, ?MODULE, {Name, Cfg}, []).

%% @private
-spec init({atom(), map()}) -> {ok, shoal_cron_sched:sched()} | {stop, term()}.
init({Name, #{jobs := Jobs} = Cfg}) ->
    process_flag(trap_exit, true),
    case shoal_cron_sched:new(Name, local, Cfg, Jobs) of
        {ok, S} -> {ok, shoal_cron_sched:start(S)};
        {error, R} -> {stop, R}
    end.

%% @private
-spec handle_call(term(), gen_server:from(), shoal_cron_sched:sched()) ->
          {reply, term(), shoal_cron_sched:sched()}.
handle_call(Req, _From, S) ->
    case shoal_cron_sched:handle(Req, S) of
        {reply, Reply, S1} -> {reply, Reply, S1};
        _ -> {reply, {error, unknown_request}, S}
    end.

%% @private
-spec handle_cast(term(), shoal_cron_sched:sched()) -> {noreply, shoal_cron_sched:sched()}.
handle_cast(_Msg, S) -> {noreply, S}.

%% @private
-spec handle_info(term(), shoal_cron_sched:sched()) ->
          {noreply, shoal_cron_sched:sched()} | {stop, normal, shoal_cron_sched:sched()}.
handle_info(Msg, S) ->
    case shoal_cron_sched:handle(Msg, S) of
        {ok, S1} -> {noreply, S1};
        {stop, S1} -> {stop, normal, S1};
        _ -> {noreply, S}
    end.

%% @private
-spec terminate(term(), shoal_cron_sched:sched()) -> ok.
terminate(_Reason, S) -> shoal_cron_sched:stop_runs(S).
