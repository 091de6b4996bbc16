%% @doc The per-node member of a cluster-wide shoal_cron scheduler (`cluster => true').
%%
%% The scheduler itself runs as the Shoal keyed worker (shoal_cron_host) for key `Name' in
%% the internal pool shoal_cron:pool_name(Name): one in the whole cluster. The keeper on
%% each node holds a replica of the scheduler's durable state (jobs, next firings, runs in
%% progress), which the scheduler updates synchronously on every member before it goes on
%% (before a run starts, after it ends, on every control change), in an ETS table a new
%% scheduler reads when it starts on this node. The keeper also makes sure a scheduler
%% exists: it starts one when it comes up, and when the one it watches goes away (its node
%% died, it was moved by a drain) it waits for Shoal to drop the old entry and asks for
%% one again; Shoal's one-worker-per-key arbitration makes every keeper get the same one.
-module(shoal_cron_keeper).
-behaviour(gen_server).

-export([start_link/3]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, handle_continue/2]).

-define(REHOST_POLL_MS, 20).
-define(REHOST_WAIT_MS, 5000).

-record(st, {name :: atom(), pool :: atom(), tab :: ets:tid() | atom(),
             version = 0 :: non_neg_integer(), stopped = false :: boolean(),
             host :: pid() | undefined}).

%% @doc Start the keeper of scheduler `Name' on this node; `Cfg' is shoal_cron's validated
%% configuration (its jobs are the initial state if no scheduler runs yet).
-spec start_link(atom(), atom(), map()) -> {ok, pid()} | {error, term()}.
start_link(Name, Pool, Cfg) ->
    gen_server:start_link({local, shoal_cron_replica:reg_name(Name)}, ?MODULE, {Name, Pool, Cfg}, []).

%% @private
-spec init({atom(), atom(), map()}) -> {ok, #st{}, {continue, ensure}} | {stop, term()}.
init({Name, Pool, #{jobs := Jobs} = Cfg}) ->
    case shoal_cron_sched:new(Name, {cluster, Pool}, Cfg, Jobs) of
        {ok, S} ->
            Tab = ets:new(shoal_cron_replica:reg_name(Name), [named_table, protected, set, {read_concurrency, true}]),
            true = ets:insert(Tab, {replica, 0, shoal_cron_sched:durable(S)}),
            {ok, #st{name = Name, pool = Pool, tab = Tab}, {continue, ensure}};
        {error, R} ->
            {stop, R}
    end.

%% @private Wait for the local pool (started after this process), then find or start
%% the scheduler.
-spec handle_continue(ensure, #st{}) -> {noreply, #st{}}.
handle_continue(ensure, #st{pool = Pool} = S) ->
    wait_for_pool(Pool, 250),
    {noreply, ensure_host(S)}.

wait_for_pool(_Pool, 0) -> ok;
wait_for_pool(Pool, N) ->
    case catch shoal:nodes(Pool) of
        L when is_list(L) -> ok;
        _ -> timer:sleep(?REHOST_POLL_MS), wait_for_pool(Pool, N - 1)
    end.

ensure_host(#st{stopped = true} = S) -> S;
ensure_host(#st{name = Name, pool = Pool} = S) ->
    case catch shoal:ensure_started(Pool, Name) of
        {ok, Pid} ->
            _ = erlang:monitor(process, Pid),
            shoal:cast(Pool, Name, '$shoal_cron_hello'),
            S#st{host = Pid};
        Other ->
            logger:warning("shoal_cron ~p: no scheduler yet (~0p); trying again", [Name, Other]),
            _ = erlang:send_after(500, self(), ensure),
            S
    end.

%% @private
-spec handle_call(term(), gen_server:from(), #st{}) -> {reply, term(), #st{}}.
handle_call({replica, V, D}, _From, #st{tab = Tab, version = V0} = S) when V > V0 ->
    true = ets:insert(Tab, {replica, V, D}),
    case shoal_cron_sched:is_stopped(D) of
        true ->
            %% A job returned `stop': this member goes too.
            Name = S#st.name,
            _ = spawn(fun() -> catch gen_server:stop(Name, normal, infinity) end),
            {reply, ok, S#st{version = V, stopped = true}};
        false ->
            {reply, ok, S#st{version = V}}
    end;
handle_call({replica, _, _}, _From, S) ->
    {reply, ok, S};
handle_call(_Other, _From, S) ->
    {reply, {error, unknown_call}, S}.

%% @private
-spec handle_cast(term(), #st{}) -> {noreply, #st{}}.
handle_cast(_Msg, S) -> {noreply, S}.

%% @private
-spec handle_info(term(), #st{}) -> {noreply, #st{}}.
handle_info({'DOWN', _, process, Pid, _}, #st{host = Pid} = S) ->
    self() ! {rehost, Pid, erlang:monotonic_time(millisecond) + ?REHOST_WAIT_MS},
    {noreply, S#st{host = undefined}};
handle_info({rehost, Old, Deadline}, #st{name = Name, pool = Pool, host = undefined} = S) ->
    %% Until Shoal has dropped the dead one (its node's entries are purged on nodedown; a
    %% moved one's entry points at its successor), ensure_started would return it.
    case (catch shoal:whereis(Pool, Name)) =:= Old andalso
        erlang:monotonic_time(millisecond) < Deadline of
        true ->
            _ = erlang:send_after(?REHOST_POLL_MS, self(), {rehost, Old, Deadline}),
            {noreply, S};
        false ->
            {noreply, ensure_host(S)}
    end;
handle_info(ensure, #st{host = undefined} = S) ->
    {noreply, ensure_host(S)};
handle_info(_Other, S) ->
    {noreply, S}.
