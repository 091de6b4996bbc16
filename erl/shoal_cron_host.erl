%% @doc The cluster-wide shoal_cron scheduler: a Shoal keyed worker (key: the scheduler's
%% name) of the internal pool shoal_cron_replica:pool_name(Name), so there is one in the cluster,
%% it moves with drains and migrations (handoff/takeover carry its state), and after its
%% node dies the keepers start it again on a survivor from their replica (see
%% shoal_cron_keeper). Runs report back with shoal:cast/3, so a result reaches whichever
%% incarnation holds the schedule.
-module(shoal_cron_host).
-behaviour(shoal_worker).

-export([init/2, handle_call/3, handle_cast/2, handle_info/2, handoff/1, takeover/3,
         conflict/3]).

%% @private From this node's replica. Arming (and the replication it starts) waits for the
%% first message: a keeper may be blocked in shoal:ensure_started/2 on this very init.
-spec init(atom(), term()) -> {ok, shoal_cron_sched:sched()}.
init(Name, _Args) ->
    self() ! '$shoal_cron_start',
    {ok, shoal_cron_sched:restore(shoal_cron_replica:replica(Name),
                                  {cluster, shoal_cron_replica:pool_name(Name)})}.

%% @private
-spec handle_call(term(), gen_server:from(), shoal_cron_sched:sched()) ->
          {reply, term(), shoal_cron_sched:sched()}.
handle_call(Req, _From, S) ->
    case shoal_cron_sched:handle(Req, S) of
        {reply, Reply, S1} -> {reply, Reply, S1};
        _ -> {reply, {error, unknown_request}, S}
    end.

%% @private Runs report with shoal:cast/3, so their results come as casts.
-spec handle_cast(term(), shoal_cron_sched:sched()) ->
          {noreply, shoal_cron_sched:sched()} | {stop, normal, shoal_cron_sched:sched()}.
handle_cast('$shoal_cron_hello', S) -> {noreply, shoal_cron_sched:hello(S)};
handle_cast(Msg, S) -> handle_info(Msg, S).

%% @private
-spec handle_info(term(), shoal_cron_sched:sched()) ->
          {noreply, shoal_cron_sched:sched()} | {stop, normal, shoal_cron_sched:sched()}.
handle_info('$shoal_cron_start', S) ->
    {noreply, shoal_cron_sched:start(S)};
handle_info(Msg, S) ->
    case shoal_cron_sched:handle(Msg, S) of
        {ok, S1} -> {noreply, S1};
        {stop, S1} -> {stop, normal, S1};
        _ -> {noreply, S}
    end.

%% @private Moving (drain, migrate): the durable state goes; timers are armed again there.
-spec handoff(shoal_cron_sched:sched()) -> {ok, shoal_cron_sched:sched()}.
handoff(S) -> {ok, shoal_cron_sched:durable(S)}.

%% @private
-spec takeover(atom(), shoal_cron_sched:sched(), term()) -> {ok, shoal_cron_sched:sched()}.
takeover(Name, Durable, _Args) ->
    self() ! '$shoal_cron_start',
    {ok, shoal_cron_sched:restore(Durable, {cluster, shoal_cron_replica:pool_name(Name)})}.

%% @private This one lost a duplicate (after a partition): the winner's schedule stays.
-spec conflict(atom(), pid(), shoal_cron_sched:sched()) -> ok.
conflict(_Name, _Winner, _S) -> ok.
