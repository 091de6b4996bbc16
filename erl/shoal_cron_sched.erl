%% @doc The scheduling logic of shoal_cron, shared by the local scheduler process
%% (shoal_cron_server) and the cluster-wide one (shoal_cron_host, a Shoal keyed worker):
%% the jobs, their next firings, timers armed through the clock, the runs (one process
%% each, so a long job never blocks the scheduler), overlap, what a job's return value does,
%% and, in cluster mode, replication of the durable part to every member's keeper.
%%
%% Times are ms of the clock (UTC since the epoch). An interval job fires at A + k*I where A
%% is the whole second at which the job was added or rescheduled; a cron job at the wall
%% times its spec gives, in UTC or in the node's local time (`tz => local'; a local time
%% that does not exist, in the hour skipped when daylight saving starts, does not fire, and
%% one that occurs twice fires at its first occurrence only). Each next firing is computed
%% from the firing before it, never from when a run ended, so firings do not drift. A
%% firing that comes late (the scheduler was busy, suspended, or had no host) runs once;
%% the firings it missed meanwhile do not run, and the next one is the first after now.
-module(shoal_cron_sched).

-export([new/4, start/1, handle/2, tick/3, done/5, down/3, add/4, reschedule/3, cancel/2, jobs/1,
         durable/1, restore/2, stop_runs/1, name/1, hello/1, is_stopped/1]).
%% The process a run happens in.
-export([run/8]).

-export_type([sched/0, task/0]).

-type task() :: fun(() -> term()) | {module(), atom(), [term()]}.

-record(job, {name :: atom(),
              spec :: term(),                        % as given
              parsed :: shoal_cron_spec:parsed(),
              task :: task(),
              anchor :: integer(),                   % interval jobs: ms, a whole second
              next :: integer() | undefined,         % ms of the next firing
              token :: reference() | undefined,      % of the armed timer's message
              tref :: term(),                        % the clock's timer
              running = #{} :: #{reference() => {integer(), pid()}}}).   % RunRef => ...

-record(sched, {name :: atom(),
                mode :: local | {cluster, atom()},
                clock :: shoal_clock:clock(),
                tz :: utc | local,
                retry :: shoal_retry:policy(),
                overlap :: boolean(),
                handler :: module() | undefined,
                args :: term(),
                notify :: pid() | undefined,
                jobs = #{} :: #{atom() => #job{}},
                mons = #{} :: #{reference() => {atom(), reference()}},
                version = 0 :: non_neg_integer(),
                stopped = false :: boolean()}).

-opaque sched() :: #sched{}.

-define(EPOCH, 62167219200).   % gregorian seconds of 1970-01-01T00:00:00

%%% Building ------------------------------------------------------------------------------

%% @doc A scheduler with `Jobs' (`[{Name, Spec, Task}]'); nothing is armed yet (start/1).
-spec new(atom(), local | {cluster, atom()}, map(), list()) -> {ok, sched()} | {error, term()}.
new(Name, Mode, Cfg, Jobs) ->
    S = #sched{name = Name, mode = Mode, clock = maps:get(clock, Cfg),
               tz = maps:get(tz, Cfg), retry = maps:get(retry, Cfg),
               overlap = maps:get(overlap, Cfg), handler = maps:get(handler, Cfg),
               args = maps:get(args, Cfg), notify = maps:get(notify, Cfg)},
    Now = now(S),
    try lists:foldl(fun({JN, Spec, Task}, #sched{jobs = J} = Acc) when is_atom(JN) ->
                            case maps:is_key(JN, J) of
                                true -> throw({duplicate_job, JN});
                                false -> ok
                            end,
                            case make_job(JN, Spec, Task, Now) of
                                {ok, Job} -> Acc#sched{jobs = J#{JN => Job}};
                                {error, R} -> throw(R)
                            end;
                       (Other, _) -> throw({bad_job, Other})
                    end, S, Jobs) of
        S1 -> {ok, S1}
    catch throw:R -> {error, R}
    end.

%% @doc Arm every job: a job whose recorded next firing has passed (a scheduler restored
%% after a gap) fires once now; runs recorded as running are watched (and run again if
%% their process turns out to be gone without a result: see down/3).
-spec start(sched()) -> sched().
start(#sched{jobs = Jobs} = S0) ->
    Now = now(S0),
    S1 = maps:fold(fun(JN, J, S) -> watch_runs(JN, J, S) end, S0, Jobs),
    changed(maps:fold(fun(JN, #job{next = Next} = J, S) ->
                      case Next =/= undefined andalso Next =< Now of
                          true -> fire(JN, S);
                          false ->
                              Next1 = case Next of
                                          undefined -> next_after(J, Now, S#sched.tz);
                                          _ -> Next
                                      end,
                              set_job(arm(J#job{next = Next1}, S), S)
                      end
              end, S1, S1#sched.jobs)).

watch_runs(JN, #job{running = R}, S) ->
    maps:fold(fun(RunRef, {_Sched, Pid}, #sched{mons = M} = Acc) ->
                      Mon = erlang:monitor(process, Pid),
                      Acc#sched{mons = M#{Mon => {JN, RunRef}}}
              end, S, R).

%%% Events --------------------------------------------------------------------------------

%% @doc A message for the scheduler, whichever process hosts it: a timer, a run's result,
%% a run's monitor, or a control request from shoal_cron (answered with
%% `{reply, Reply, S}'). `unknown' for anything else.
-spec handle(term(), sched()) ->
          {ok, sched()} | {stop, sched()} | {reply, term(), sched()} | unknown.
handle({'$shoal_cron_tick', JN, Token}, S) -> {ok, tick(S, JN, Token)};
handle({'$shoal_cron_done', JN, RunRef, Scheduled, Result}, S) ->
    done(S, JN, RunRef, Scheduled, Result);
handle({'DOWN', Mon, process, _, Reason}, S) -> {ok, down(S, Mon, Reason)};
handle({add, JN, Spec, Task}, S) -> reply(add(S, JN, Spec, Task));
handle({reschedule, JN, Spec}, S) -> reply(reschedule(S, JN, Spec));
handle({cancel, JN}, S) -> reply(cancel(S, JN));
handle(jobs, S) -> {reply, jobs(S), S};
handle(_, _S) -> unknown.

reply({Reply, S}) -> {reply, Reply, S}.

%% @doc A timer message `{'$shoal_cron_tick', JobName, Token}' came.
-spec tick(sched(), atom(), reference()) -> sched().
tick(#sched{jobs = Jobs} = S, JN, Token) ->
    case Jobs of
        #{JN := #job{token = Token, next = Next} = J} ->
            case now(S) >= Next of
                true -> fire(JN, S);
                false -> set_job(arm(J, S), S)     % early (the clock was set back): again
            end;
        _ ->
            S                                      % stale timer: cancelled or re-armed
    end.

%% The job's due firing: run it (or skip it if the last run is still going), then arm the
%% next one.
fire(JN, #sched{jobs = Jobs, overlap = Overlap} = S) ->
    #job{next = Scheduled, running = R} = J = maps:get(JN, Jobs),
    Now = now(S),
    J1 = J#job{next = next_after(J, max(Now, Scheduled), S#sched.tz)},
    case map_size(R) > 0 andalso not Overlap of
        true ->
            S1 = changed(set_job(arm(J1, S), S)),
            notify(S1, {skipped, JN, Scheduled}),
            S1;
        false ->
            {J2, S1} = spawn_run(J1, Scheduled, S),
            S2 = changed(set_job(arm(J2, S1), S1)),
            notify(S2, {started, JN, Scheduled}),
            S2
    end.

spawn_run(#job{name = JN, task = Task, running = R} = J, Scheduled,
          #sched{mons = M, name = Name, retry = Retry, handler = H, args = A, mode = Mode} = S) ->
    RunRef = make_ref(),
    Report = case Mode of
                 local -> {pid, self()};
                 {cluster, Pool} -> {shoal, Pool, Name}
             end,
    {Pid, Mon} = spawn_monitor(?MODULE, run, [Report, JN, Task, Scheduled, RunRef, Retry, H, A]),
    {J#job{running = R#{RunRef => {Scheduled, Pid}}}, S#sched{mons = M#{Mon => {JN, RunRef}}}}.

%% @private The run's process: the task with its retries, then the result to the scheduler.
-spec run(term(), atom(), task(), integer(), reference(), shoal_retry:policy(),
          module() | undefined, term()) -> ok.
run(Report, JN, Task, Scheduled, RunRef, Retry, H, A) ->
    Result = attempt(JN, Task, 1, Retry, H, A),
    Msg = {'$shoal_cron_done', JN, RunRef, Scheduled, Result},
    _ = case Report of
            {pid, Pid} -> Pid ! Msg;
            {shoal, Pool, Name} -> shoal:cast(Pool, Name, Msg)
        end,
    ok.

attempt(JN, Task, Attempt, Retry, H, A) ->
    try {ok, case Task of
                 {M, F, Args} -> erlang:apply(M, F, Args);
                 Fun -> Fun()
             end}
    catch C:R:St ->
            case shoal_retry:decide(H, Retry, JN, Attempt, {C, R, St}, A) of
                {retry, Ms, A1} ->
                    _ = Ms > 0 andalso timer:sleep(Ms),
                    attempt(JN, Task, Attempt + 1, Retry, H, A1);
                {give_up, _} ->
                    {failed, {C, R, St}}
            end
    end.

%% @doc A run reported its result: act on what the job returned. `{stop, S}' when the job
%% asked to stop the scheduler.
-spec done(sched(), atom(), reference(), integer(), term()) -> {ok, sched()} | {stop, sched()}.
done(#sched{jobs = Jobs} = S, JN, RunRef, Scheduled, Result) ->
    case Jobs of
        #{JN := #job{running = #{RunRef := _} = R} = J} ->
            S1 = set_job(J#job{running = maps:remove(RunRef, R)}, S),
            %% The event goes out once the outcome is in place (and, in cluster mode,
            %% replicated): whoever sees it can rely on it.
            {_, S2} = Out = outcome(JN, Result, S1),
            case Result of
                {failed, Error} -> notify(S2, {failed, JN, Scheduled, Error});
                {ok, V} -> notify(S2, {done, JN, Scheduled, V})
            end,
            Out;
        _ ->
            {ok, S}                                % cancelled meanwhile, or unknown
    end.

outcome(JN, {ok, {set, Spec}}, S) ->
    case reschedule(S, JN, Spec) of
        {ok, S1} -> {ok, S1};
        {{error, R}, S1} -> bad_set(JN, R, S1)
    end;
outcome(JN, {ok, {set, Other, Spec}}, #sched{jobs = Jobs} = S) when is_atom(Other) ->
    R = case Jobs of
            #{Other := _} -> reschedule(S, Other, Spec);
            _ -> add(S, Other, Spec, (maps:get(JN, Jobs))#job.task)
        end,
    case R of
        {ok, S1} -> {ok, S1};
        {{error, Why}, S1} -> bad_set(JN, Why, S1)
    end;
outcome(JN, {ok, {set, Other, Spec, Task}}, S) when is_atom(Other) ->
    S1 = case cancel(S, Other) of {_, Sc} -> Sc end,
    case add(S1, Other, Spec, Task) of
        {ok, S2} -> {ok, S2};
        {{error, Why}, S2} -> bad_set(JN, Why, S2)
    end;
outcome(JN, {ok, exit}, S) ->
    {_, S1} = cancel(S, JN),
    {ok, S1};
outcome(_JN, {ok, stop}, S) ->
    {stop, changed(S#sched{stopped = true})};
outcome(_JN, _, S) ->
    {ok, changed(S)}.

bad_set(JN, Why, S) ->
    logger:error("shoal_cron ~p: job ~p returned a bad {set, ...}: ~p", [S#sched.name, JN, Why]),
    {ok, changed(S)}.

%% @doc A monitored run's process went down. A run that ends normally has reported
%% already; one that died on its own failed; one whose node went away (`noconnection') or
%% that was gone when a new scheduler took over (`noproc') without a result is run again,
%% once, for the same firing.
-spec down(sched(), reference(), term()) -> sched().
down(#sched{mons = M, jobs = Jobs} = S, Mon, Reason) ->
    case maps:take(Mon, M) of
        {{JN, RunRef}, M1} ->
            S1 = S#sched{mons = M1},
            case Jobs of
                #{JN := #job{running = #{RunRef := {Scheduled, _}} = R} = J} ->
                    J1 = J#job{running = maps:remove(RunRef, R)},
                    case Reason of
                        _ when Reason =:= noconnection; Reason =:= noproc ->
                            {J2, S2} = spawn_run(J1, Scheduled, S1),
                            S3 = changed(set_job(J2, S2)),
                            notify(S3, {rerun, JN, Scheduled}),
                            S3;
                        normal ->
                            changed(set_job(J1, S1));
                        _ ->
                            S2 = changed(set_job(J1, S1)),
                            notify(S2, {failed, JN, Scheduled, {exit, Reason, []}}),
                            S2
                    end;
                _ ->
                    S1
            end;
        error ->
            S
    end.

%%% Control -------------------------------------------------------------------------------

%% @doc Add job `JN'. `{error, {already_exists, JN}}' or `{error, {bad_spec, _}}'.
-spec add(sched(), atom(), term(), task()) -> {ok | {error, term()}, sched()}.
add(#sched{jobs = Jobs} = S, JN, Spec, Task) when is_atom(JN) ->
    case {maps:is_key(JN, Jobs), valid_task(Task)} of
        {true, _} -> {{error, {already_exists, JN}}, S};
        {_, false} -> {{error, {bad_task, Task}}, S};
        {false, true} ->
            case make_job(JN, Spec, Task, now(S)) of
                {ok, J} ->
                    J1 = J#job{next = next_after(J, now(S), S#sched.tz)},
                    {ok, changed(set_job(arm(J1, S), S))};
                {error, _} = E ->
                    {E, S}
            end
    end;
add(S, JN, _, _) ->
    {{error, {bad_job_name, JN}}, S}.

%% @doc Give job `JN' a new spec, for good: every later firing follows it.
-spec reschedule(sched(), atom(), term()) -> {ok | {error, term()}, sched()}.
reschedule(#sched{jobs = Jobs} = S, JN, Spec) ->
    case Jobs of
        #{JN := #job{task = Task, running = R} = Old} ->
            case make_job(JN, Spec, Task, now(S)) of
                {ok, J} ->
                    disarm(Old, S),
                    J1 = J#job{running = R, next = next_after(J, now(S), S#sched.tz)},
                    {ok, changed(set_job(arm(J1, S), S))};
                {error, _} = E ->
                    {E, S}
            end;
        _ ->
            {{error, {no_such_job, JN}}, S}
    end.

%% @doc Remove job `JN' (a run in progress finishes; its result is ignored).
-spec cancel(sched(), atom()) -> {ok | {error, term()}, sched()}.
cancel(#sched{jobs = Jobs} = S, JN) ->
    case maps:take(JN, Jobs) of
        {J, Jobs1} -> disarm(J, S), {ok, changed(S#sched{jobs = Jobs1})};
        error -> {{error, {no_such_job, JN}}, S}
    end.

%% @doc The jobs, sorted by name: `name', `spec', `next' (the next firing as a datetime in
%% the scheduler's time zone), `next_ms' (the same in ms since the epoch) and `running'
%% (runs in progress).
-spec jobs(sched()) -> [map()].
jobs(#sched{jobs = Jobs, tz = Tz}) ->
    [#{name => JN, spec => Spec, next => to_datetime(Next, Tz), next_ms => Next,
       running => map_size(R)}
     || {JN, #job{spec = Spec, next = Next, running = R}} <- lists:sort(maps:to_list(Jobs))].

%% @doc The scheduler's name.
-spec name(sched()) -> atom().
name(#sched{name = N}) -> N.

%% @doc Did a job ask the scheduler to stop?
-spec is_stopped(sched()) -> boolean().
is_stopped(#sched{stopped = B}) -> B.

%% @doc A keeper joined (cluster mode): send it the current state.
-spec hello(sched()) -> sched().
hello(S) -> changed(S).

%% @doc What survives the scheduler's process: everything but timers and monitors.
-spec durable(sched()) -> sched().
durable(#sched{jobs = Jobs} = S) ->
    S#sched{mons = #{},
            jobs = maps:map(fun(_, J) -> J#job{token = undefined, tref = undefined} end, Jobs)}.

%% @doc A scheduler from a durable state, for the mode of the process taking it over;
%% start/1 then arms it.
-spec restore(sched(), local | {cluster, atom()}) -> sched().
restore(#sched{} = S, Mode) -> S#sched{mode = Mode, mons = #{}}.

%% @doc Stop every run in progress (the scheduler is stopping for good).
-spec stop_runs(sched()) -> ok.
stop_runs(#sched{jobs = Jobs}) ->
    _ = [exit(Pid, shutdown) || #job{running = R} <- maps:values(Jobs), {_, Pid} <- maps:values(R)],
    ok.

%%% Internals -----------------------------------------------------------------------------

make_job(JN, Spec, Task, Now) ->
    case {shoal_cron_spec:parse(Spec), valid_task(Task)} of
        {{error, _} = E, _} -> E;
        {_, false} -> {error, {bad_task, Task}};
        {{ok, P}, true} ->
            J = #job{name = JN, spec = Spec, parsed = P, task = Task,
                     anchor = (Now div 1000) * 1000},
            %% A spec that can never fire is refused here.
            case next_after(J, Now, utc) of
                {error, _} = E -> E;
                _ -> {ok, J}
            end
    end.

valid_task(F) when is_function(F, 0) -> true;
valid_task({M, F, A}) when is_atom(M), is_atom(F), is_list(A) -> true;
valid_task(_) -> false.

%% The first firing of job J strictly after `After' (ms).
next_after(#job{parsed = P, anchor = A}, After, Tz) ->
    case shoal_cron_spec:is_interval(P) of
        false -> next_wall(P, After, Tz, to_datetime(After, Tz));
        I -> A + ((After - A) div I + 1) * I
    end.

next_wall(P, _After, utc, From) ->
    case shoal_cron_spec:next(P, From) of
        {error, _} = E -> E;
        DT -> (calendar:datetime_to_gregorian_seconds(DT) - ?EPOCH) * 1000
    end;
next_wall(P, After, local, From) ->
    case shoal_cron_spec:next(P, From) of
        {error, _} = E -> E;
        DT ->
            case calendar:local_time_to_universal_time_dst(DT) of
                [] -> next_wall(P, After, local, DT);       % skipped by daylight saving
                [U | _] ->
                    Ms = (calendar:datetime_to_gregorian_seconds(U) - ?EPOCH) * 1000,
                    case Ms > After of
                        true -> Ms;
                        false -> next_wall(P, After, local, DT)   % its first occurrence passed
                    end
            end
    end.

to_datetime(undefined, _) -> undefined;
to_datetime(Ms, utc) -> calendar:system_time_to_universal_time(Ms div 1000, second);
to_datetime(Ms, local) -> calendar:system_time_to_local_time(Ms div 1000, second).

now(#sched{clock = {M, R}}) -> M:now_ms(R).

arm(#job{name = JN, next = Next} = J, #sched{clock = {M, R}} = S) ->
    disarm(J, S),
    Token = make_ref(),
    TRef = M:send_at(R, Next, self(), {'$shoal_cron_tick', JN, Token}),
    J#job{token = Token, tref = TRef}.

disarm(#job{tref = undefined}, _) -> ok;
disarm(#job{tref = TRef}, #sched{clock = {M, R}}) -> M:cancel(R, TRef).

set_job(#job{name = JN} = J, #sched{jobs = Jobs} = S) -> S#sched{jobs = Jobs#{JN => J}}.

notify(#sched{notify = undefined}, _) -> ok;
notify(#sched{notify = Pid, name = Name}, Event) -> Pid ! {shoal_cron, Name, Event}, ok.

%% The durable state changed: in cluster mode every member's keeper gets the new version
%% before the scheduler goes on.
changed(#sched{mode = local} = S) -> S;
changed(#sched{mode = {cluster, Pool}, version = V, name = Name} = S) ->
    S1 = S#sched{version = V + 1},
    shoal_cron_replica:replicate(Name, Pool, V + 1, durable(S1)),
    S1.
