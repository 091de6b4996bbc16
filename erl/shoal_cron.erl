%% @doc A cron scheduler: named jobs, each with a spec (an interval in ms, a 5- or
%% 6-field cron string, or `second | minute | hour | day | week'; see shoal_cron_spec),
%% run in their own process at each firing, with runtime control, retries, and, with
%% `cluster => true', one scheduler for the whole cluster.
%%
%% A job is a fun of arity 0 or `{M, F, A}'. What it returns decides what comes next:
%% `{set, Spec}' reschedules the job for good; `{set, Other, Spec}' reschedules job `Other'
%% (adding it, with this job's function, if there is none); `{set, Other, Spec, Fun}' adds
%% (or replaces) `Other' with `Fun'; `exit' cancels the job; `stop' stops the scheduler;
%% anything else keeps it. A job that raises is retried per the `retry' option, and the
%% optional `handle_error(JobName, Attempt, Error, State)' of the `handler' module (this
%% behaviour; `State' is the `args' option) chooses how, as in shoal_fixed. A job still
%% running when its next firing comes is skipped for that firing unless `overlap => true'.
%%
%% Firings are computed from the previous firing, not from when a run ended, and land on
%% whole seconds of the wall clock (intervals: at A + k*I ms, A the whole second the job
%% was added at), so they do not drift. A scheduler that falls behind (busy, suspended)
%% runs a late firing once and does not replay the ones it missed.
%%
%% <b>Cluster-wide</b> (`cluster => true', started on every node that should take part):
%% the scheduler runs as the Shoal keyed worker for key `Name' in an internal pool
%% (pool_name/1), so there is one for the cluster, and runs happen on its node. It follows
%% drains and migrations with its state. Each node's keeper holds a replica of the
%% schedule, updated on every member before each run starts and after it ends; when the
%% scheduler's node dies, the keepers start it again on a survivor from that replica.
%% Which firings can be missed or doubled, exactly:
%% <ul>
%% <li>firings due while no node hosted the scheduler (from its node's death until a
%%     survivor has started it again, a matter of the nodedown detection plus
%%     milliseconds) run once, when it starts, for the first firing missed; the later
%%     missed firings of that gap do not run;</li>
%% <li>a run in progress on the node that died, whose result had not come back, runs again
%%     on the survivor for the same firing (so a job that had done its work is doubled);
%%     likewise a run that finished while no node hosted the scheduler;</li>
%% <li>while the cluster is partitioned, each side hosts a scheduler and runs every firing;
%%     the same briefly when Shoal starts a duplicate worker while members do not agree
%%     yet (nodes joining);</li>
%% <li>otherwise, drains and migrations included, every firing runs exactly once.</li>
%% </ul>
-module(shoal_cron).

-export([start_link/2, child_spec/1, child_spec/2, stop/1, next/2, add/4, reschedule/3,
         cancel/2, jobs/1, pool_name/1]).
-export_type([name/0, options/0]).

-type name() :: atom().
-type options() :: #{jobs => [{atom(), shoal_cron_spec:spec(), shoal_cron_sched:task()}],
                     retry => #{count => non_neg_integer(), backoff => non_neg_integer()},
                     overlap => boolean(),
                     tz => utc | local,
                     cluster => boolean(),
                     handler => module(),
                     args => term(),
                     clock => shoal_clock:clock(),
                     notify => pid()}
                 | [{atom(), term()}].

-callback handle_error(JobName :: atom(), Attempt :: pos_integer(),
                       Error :: shoal_retry:error(), State :: term()) ->
    {retry, NewState :: term()} | {backoff, Ms :: non_neg_integer()} | halt | term().
-optional_callbacks([handle_error/4]).

-define(KNOWN, [jobs, retry, overlap, tz, cluster, handler, args, clock, notify]).
-define(MODE(Name), {shoal_cron, Name}).
-define(TIMEOUT, 15000).

%%% Life cycle ----------------------------------------------------------------------------

%% @doc Start scheduler `Name'. `Opts' (map or proplist): `jobs' (`[{JobName, Spec,
%% Fun | {M, F, A}}]'), `retry' (`#{count, backoff}'), `overlap' (default `false'), `tz'
%% (`utc', the default, or `local'), `cluster' (default `false'), `handler' (a module with
%% handle_error/4), `args' (its state), `clock' (a shoal_clock, default the system clock),
%% `notify' (a pid that gets `{shoal_cron, Name, Event}' for each `{started, Job,
%% ScheduledMs}', `{done, Job, ScheduledMs, Value}', `{failed, Job, ScheduledMs, Error}',
%% `{skipped, Job, ScheduledMs}' and `{rerun, Job, ScheduledMs}').
%% Locally, `Name' is the scheduler process; with `cluster => true' it is this node's
%% supervisor of the keeper and the internal pool.
-spec start_link(name(), options()) -> {ok, pid()} | {error, term()}.
start_link(Name, Opts) ->
    case validate(Name, Opts) of
        {ok, #{cluster := false} = Cfg} ->
            persistent_term:put(?MODE(Name), local),
            shoal_cron_server:start_link(Name, Cfg);
        {ok, #{cluster := true} = Cfg} ->
            {ok, _} = application:ensure_all_started(shoal),
            persistent_term:put(?MODE(Name), {cluster, pool_name(Name)}),
            shoal_cron_sup:start_link(Name, Cfg);
        {error, _} = E ->
            E
    end.

%% @doc child_spec/2 from `{Name, Opts}' or options with a `name' key.
-spec child_spec({name(), options()} | map() | list()) -> supervisor:child_spec().
child_spec({Name, Opts}) -> child_spec(Name, Opts);
child_spec(Opts) ->
    {Name, Rest} = shoal_tools_opts:split_name(Opts),
    child_spec(Name, Rest).

%% @doc A child spec for the user's supervision tree. `transient': a scheduler stopped by
%% a job's `stop' is not restarted.
-spec child_spec(name(), options()) -> supervisor:child_spec().
child_spec(Name, Opts) ->
    #{id => {?MODULE, Name}, start => {?MODULE, start_link, [Name, Opts]},
      restart => transient, shutdown => infinity,
      type => case opts_cluster(Opts) of true -> supervisor; false -> worker end}.

opts_cluster(Opts) when is_map(Opts) -> maps:get(cluster, Opts, false) =:= true;
opts_cluster(Opts) when is_list(Opts) -> proplists:get_value(cluster, Opts, false) =:= true;
opts_cluster(_) -> false.

%% @doc Stop scheduler `Name' on this node (runs in progress are stopped). A cluster-wide
%% scheduler goes on on the other members; stop it on each, or return `stop' from a job.
-spec stop(name()) -> ok | {error, term()}.
stop(Name) ->
    try gen_server:stop(Name, normal, infinity)
    catch exit:_ -> {error, {no_such_scheduler, Name}}
    end.

%%% The parser ----------------------------------------------------------------------------

%% @doc The first firing of `Spec' strictly after `DateTime' (pure; see shoal_cron_spec).
-spec next(shoal_cron_spec:spec(), calendar:datetime()) ->
          calendar:datetime() | {error, {bad_spec | bad_time, term()}}.
next(Spec, DateTime) -> shoal_cron_spec:next(Spec, DateTime).

%%% Runtime control -----------------------------------------------------------------------

%% @doc Add job `JobName'. `{error, {already_exists, JobName}}', `{error, {bad_spec, _}}'.
-spec add(name(), atom(), shoal_cron_spec:spec(), shoal_cron_sched:task()) -> ok | {error, term()}.
add(Name, JobName, Spec, Task) -> request(Name, {add, JobName, Spec, Task}).

%% @doc Give job `JobName' a new spec, for every later firing.
-spec reschedule(name(), atom(), shoal_cron_spec:spec()) -> ok | {error, term()}.
reschedule(Name, JobName, Spec) -> request(Name, {reschedule, JobName, Spec}).

%% @doc Remove job `JobName' (a run in progress finishes).
-spec cancel(name(), atom()) -> ok | {error, term()}.
cancel(Name, JobName) -> request(Name, {cancel, JobName}).

%% @doc The jobs, sorted by name, as maps with `name', `spec', `next' (datetime in the
%% scheduler's time zone), `next_ms' and `running'.
-spec jobs(name()) -> [map()] | {error, term()}.
jobs(Name) -> request(Name, jobs).

%% @doc The internal Shoal pool of cluster-wide scheduler `Name'.
-spec pool_name(name()) -> atom().
pool_name(Name) -> shoal_cron_replica:pool_name(Name).

request(Name, Req) ->
    try
        case persistent_term:get(?MODE(Name), undefined) of
            local -> gen_server:call(Name, Req, ?TIMEOUT);
            {cluster, Pool} -> shoal:call(Pool, Name, Req, ?TIMEOUT);
            undefined -> {error, {no_such_scheduler, Name}}
        end
    catch exit:{R, _} when R =:= noproc; element(1, R) =:= no_such_pool ->
            {error, {no_such_scheduler, Name}}
    end.

validate(Name, _) when not is_atom(Name) -> {error, {bad_name, Name}};
validate(Name, Opts0) ->
    case shoal_tools_opts:to_map(Opts0, ?KNOWN) of
        {ok, Opts} ->
            try
                V = fun(K, D, F) -> shoal_tools_opts:get(K, Opts, D, F) end,
                Retry = case shoal_retry:parse(maps:get(retry, Opts, undefined)) of
                            {ok, R} -> R;
                            {error, Why} -> throw(Why)
                        end,
                Handler = case maps:is_key(handler, Opts) of
                              true -> shoal_tools_opts:callback_module(handler, Opts, []);
                              false -> undefined
                          end,
                {ok, #{name => Name, jobs => V(jobs, [], fun is_list/1), retry => Retry,
                       overlap => V(overlap, false, fun is_boolean/1),
                       tz => V(tz, utc, fun(T) -> T =:= utc orelse T =:= local end),
                       cluster => V(cluster, false, fun is_boolean/1),
                       handler => Handler, args => maps:get(args, Opts, undefined),
                       clock => V(clock, {shoal_clock, system},
                                  fun({M, _}) -> is_atom(M); (_) -> false end),
                       notify => V(notify, undefined, fun is_pid/1)}}
            catch throw:Reason -> {error, Reason}
            end;
        {error, _} = E ->
            E
    end.
