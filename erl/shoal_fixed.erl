%% @doc Fixed pools: N long-lived workers started together, jobs dispatched to them by a
%% mode (round robin, random, monotonic, hash, broadcast), with retries, backoff and named
%% callbacks a job's result can invoke.
%%
%% A worker implements this behaviour:
%% <ul>
%% <li>`init(Index, Args) -> {ok, State} | {stop, Reason}': `Index' is the worker's place
%%     in the pool, 0-based.</li>
%% <li>`handle_job(Job, State)' returns `{reply, Reply, State}' (a `call' gets `Reply'),
%%     `{noreply, State}' (a `call' gets `ok'), `{CallbackName, Args, State}' (runs the
%%     callback `{M, F}' configured under that name as `apply(M, F, Args)'; a `call' gets
%%     its result), `{exit, State}' (this worker stops for good; a `call' gets `ok') or
%%     `{stop, State}' (the whole pool stops; a `call' gets `ok').</li>
%% <li>optional `handle_error(Job, Attempt, Error, State)' returns `{retry, State}',
%%     `{backoff, Ms}' or `halt' (see shoal_retry).</li>
%% <li>optional `pool_ready(SupPid)': runs once every worker has started, in the process
%%     that called start_link/2, before it returns.</li>
%% </ul>
%%
%% A job fails when handle_job/2 raises, returns another shape, or names a callback that is
%% not configured or raises. It is then retried per the `retry' option: `count' retries
%% after the first attempt (default 0: every job still runs exactly once), each after
%% `backoff' ms (default 0) unless handle_error/4 says otherwise. A backoff is a timer: the
%% worker handles its other jobs meanwhile. When the retries are exhausted, or handle_error/4
%% answers `halt', a `call' gets `{error, {job_failed, Error}}' (`Error' is
%% `{Class, Reason, Stacktrace}' of the last attempt), a `cast' job is logged, and the pool's
%% stats count it as failed.
%%
%% Dispatch runs in the caller: the pool's pids and its round-robin counter live in a
%% persistent_term record and an `atomics' array, so picking a worker is a persistent_term
%% read and an atomic add, never a message to a process. The pool is an OTP supervision
%% tree (shoal_tools_sup: a supervisor registered as the pool's name, a table owner, a
%% worker supervisor);
%% a worker that crashes is restarted by its supervisor and put back in the dispatch table
%% as soon as its init/2 has returned. Calls that find the worker dead (the job never ran)
%% wait for the restarted worker and are sent again; a cast to a worker that just crashed
%% is lost with that worker's mailbox, as with any gen_server, except in the key-bound
%% modes, where casts that find the key's worker dead are held until it is back.
-module(shoal_fixed).

-include("shoal_fixed.hrl").

-export([start_link/2, child_spec/1, child_spec/2, stop/1,
         cast/2, call/2, call/3, cast_key/3, call_key/3, call_key/4, cast_to/3,
         pid/2, size/1, stats/1]).
%% Used by the pool's own processes.

-export_type([name/0, mode/0, options/0, stats/0]).

-type name() :: atom().
-type mode() :: round_robin | random | monotonic | hash | broadcast.
-type options() :: #{worker := module(),
                     size => pos_integer(),
                     args => term(),
                     mode => mode(),
                     retry => #{count => non_neg_integer(), backoff => non_neg_integer()},
                     callbacks => #{atom() => {module(), atom()}}}
                 | [{atom(), term()}].
-type stats() :: #{size := pos_integer(), live := non_neg_integer(),
                   done := non_neg_integer(), failed := non_neg_integer(),
                   retries := non_neg_integer(), restarts := non_neg_integer(),
                   exited := non_neg_integer(), queued := non_neg_integer()}.

-callback init(Index :: non_neg_integer(), Args :: term()) ->
    {ok, State :: term()} | {stop, Reason :: term()}.
-callback handle_job(Job :: term(), State :: term()) ->
    {reply, Reply :: term(), NewState :: term()} |
    {noreply, NewState :: term()} |
    {exit, NewState :: term()} |
    {stop, NewState :: term()} |
    {Callback :: atom(), Args :: [term()], NewState :: term()}.
-callback handle_error(Job :: term(), Attempt :: pos_integer(), Error :: shoal_retry:error(),
                       State :: term()) ->
    {retry, NewState :: term()} | {backoff, Ms :: non_neg_integer()} | halt | term().
-callback pool_ready(SupPid :: pid()) -> term().
-optional_callbacks([handle_error/4, pool_ready/1]).

-define(KNOWN, [worker, size, args, mode, retry, callbacks]).
-define(MODES, [round_robin, random, monotonic, hash, broadcast]).
-define(RESERVED, [reply, noreply, exit, stop]).
-define(DEFAULT_TIMEOUT, 5000).
-define(MAX_FAILOVERS, 8).

%%% Life cycle ----------------------------------------------------------------------------

%% @doc Start pool `Name' (registered locally as `Name': the pool's supervisor) and all its
%% workers. `Opts' (map or proplist): `worker' (required: the callback module), `size'
%% (default: the number of schedulers), `args' (given to init/2), `mode' (`round_robin',
%% the default, `random', `monotonic', `hash' or `broadcast'), `retry'
%% (`#{count, backoff}'), `callbacks' (`#{Name => {M, F}}' targets a job's result can
%% invoke; `reply', `noreply', `exit' and `stop' cannot be callback names).
%% `{error, Reason}' for bad options, `{error, {already_started, Pid}}' if the name is taken.
-spec start_link(name(), options()) -> {ok, pid()} | {error, term()}.
start_link(Name, Opts) ->
    case validate(Name, Opts) of
        {ok, #{worker := Mod} = Cfg} ->
            case shoal_tools_sup:start_link(Cfg, shoal_fixed_table,
                                            {shoal_fixed_worker, lists:seq(0, maps:get(size, Cfg) - 1)},
                                            transient) of
                {ok, Sup} ->
                    _ = erlang:function_exported(Mod, pool_ready, 1) andalso
                        pool_ready(Mod, Sup),
                    {ok, Sup};
                Other ->
                    Other
            end;
        {error, _} = E ->
            E
    end.

pool_ready(Mod, Sup) ->
    try Mod:pool_ready(Sup)
    catch C:R:St -> logger:error("~p:pool_ready/1 raised ~p:~p~n~p", [Mod, C, R, St])
    end.

%% @doc A child spec for the user's supervision tree; the argument is `{Name, Opts}' or
%% options with a `name' key (the shape Elixir's `{Module, Arg}' child tuples give).
-spec child_spec({name(), options()} | map() | list()) -> supervisor:child_spec().
child_spec({Name, Opts}) -> child_spec(Name, Opts);
child_spec(Opts) ->
    {Name, Rest} = shoal_tools_opts:split_name(Opts),
    child_spec(Name, Rest).

%% @doc A child spec that starts pool `Name' with `Opts' (see start_link/2). The child is
%% `transient': a pool that stops for good (stop/1, a job's `{stop, S}') is not restarted.
-spec child_spec(name(), options()) -> supervisor:child_spec().
child_spec(Name, Opts) ->
    #{id => {?MODULE, Name},
      start => {?MODULE, start_link, [Name, Opts]},
      type => supervisor,
      restart => transient,
      shutdown => infinity}.

%% @doc Stop the pool and its workers.
-spec stop(name()) -> ok | {error, {no_such_pool, name()}}.
stop(Name) ->
    try gen_server:stop(Name, normal, infinity)
    catch exit:_ -> {error, {no_such_pool, Name}}
    end.

%%% Dispatch ------------------------------------------------------------------------------

%% @doc Send `Job' to a worker picked by the pool's mode (to every worker in `broadcast'
%% mode). `{error, no_workers}' once every worker has exited for good.
-spec cast(name(), term()) -> ok | {error, term()}.
cast(Name, Job) -> shoal_fixed_table:cast(Name, Job).

%% @equiv call(Name, Job, 5000)
-spec call(name(), term()) -> term().
call(Name, Job) -> call(Name, Job, ?DEFAULT_TIMEOUT).

%% @doc Run `Job' on a worker picked by the pool's mode and return its reply. In
%% `broadcast' mode: a list with one element per live worker, in index order, each the
%% worker's reply or `{error, Reason}' (`timeout' included) in its place. A failed job
%% gives `{error, {job_failed, Error}}'. Exits like gen_server:call/3 on a timeout or when
%% the worker dies after the job reached it (queued in its mailbox or running), with
%% `{Reason, {shoal_fixed, call, Args}}'. A worker found dead before the job reached it
%% (`noproc') is no error: the call waits for its successor and is sent again.
-spec call(name(), term(), timeout()) -> term().
call(Name, Job, Timeout) ->
    case persistent_term:get(?FIXED_KEY(Name), undefined) of
        #shoal_fixed{mode = broadcast, live = Live} ->
            broadcast_call(Live, Job, Timeout);
        #shoal_fixed{mode = hash} = T ->
            call_keyed(T, Job, Job, Timeout, call, [Name, Job, Timeout]);
        #shoal_fixed{} = T ->
            case shoal_fixed_table:pick(T, Job) of
                none -> {error, no_workers};
                Pid -> call_pid(T, Pid, Job, Timeout, 0, call, [Name, Job, Timeout])
            end;
        undefined ->
            {error, {no_such_pool, Name}}
    end.

%% @doc Send `Job' to the worker `Key' hashes to (`hash' semantics whatever the mode): the
%% same key always reaches the same worker while the pool's workers stay the same.
-spec cast_key(name(), term(), term()) -> ok | {error, term()}.
cast_key(Name, Key, Job) ->
    case persistent_term:get(?FIXED_KEY(Name), undefined) of
        #shoal_fixed{} = T -> shoal_fixed_table:send_keyed(T, Key, {'$gen_cast', ?JOB(Job)});
        undefined -> {error, {no_such_pool, Name}}
    end.

%% @equiv call_key(Name, Key, Job, 5000)
-spec call_key(name(), term(), term()) -> term().
call_key(Name, Key, Job) -> call_key(Name, Key, Job, ?DEFAULT_TIMEOUT).

%% @doc call/3 to the worker `Key' hashes to (see cast_key/3).
-spec call_key(name(), term(), term(), timeout()) -> term().
call_key(Name, Key, Job, Timeout) ->
    case persistent_term:get(?FIXED_KEY(Name), undefined) of
        #shoal_fixed{} = T -> call_keyed(T, Key, Job, Timeout, call_key, [Name, Key, Job, Timeout]);
        undefined -> {error, {no_such_pool, Name}}
    end.

%% @doc Send `Job' to the worker at `Index' (0-based). A worker being restarted gets it
%% once it is back; `{error, {worker_exited, Index}}' if it left for good.
-spec cast_to(name(), non_neg_integer(), term()) -> ok | {error, term()}.
cast_to(Name, Index, Job) ->
    case persistent_term:get(?FIXED_KEY(Name), undefined) of
        #shoal_fixed{size = N} when not is_integer(Index); Index < 0; Index >= N ->
            {error, {bad_index, Index}};
        #shoal_fixed{slots = Slots} = T ->
            case element(Index + 1, Slots) of
                undefined -> {error, {worker_exited, Index}};
                Pid -> shoal_fixed_table:send_slot(T, Index, Pid, {'$gen_cast', ?JOB(Job)})
            end;
        undefined ->
            {error, {no_such_pool, Name}}
    end.

%% @doc The pid of the worker at `Index' (0-based), `undefined' if it left for good.
-spec pid(name(), non_neg_integer()) -> pid() | undefined | {error, term()}.
pid(Name, Index) ->
    case persistent_term:get(?FIXED_KEY(Name), undefined) of
        #shoal_fixed{size = N} when not is_integer(Index); Index < 0; Index >= N ->
            {error, {bad_index, Index}};
        #shoal_fixed{slots = Slots} -> element(Index + 1, Slots);
        undefined -> {error, {no_such_pool, Name}}
    end.

%% @doc The configured number of workers (`size' option).
-spec size(name()) -> pos_integer() | {error, term()}.
size(Name) ->
    case persistent_term:get(?FIXED_KEY(Name), undefined) of
        #shoal_fixed{size = N} -> N;
        undefined -> {error, {no_such_pool, Name}}
    end.

%% @doc Counters of the pool: `size', `live' (workers taking jobs now), `done' (jobs that
%% completed), `failed' (jobs that failed for good), `retries', `restarts' (workers
%% restarted after a crash), `exited' (workers that left for good) and `queued' (messages
%% waiting in the workers' mailboxes).
-spec stats(name()) -> stats() | {error, term()}.
stats(Name) ->
    case persistent_term:get(?FIXED_KEY(Name), undefined) of
        #shoal_fixed{size = N, live = Live, stats = C} ->
            Queued = lists:sum([case erlang:process_info(P, message_queue_len) of
                                    {message_queue_len, Q} -> Q;
                                    undefined -> 0
                                end || P <- tuple_to_list(Live)]),
            #{size => N, live => tuple_size(Live),
              done => counters:get(C, ?ST_DONE), failed => counters:get(C, ?ST_FAILED),
              retries => counters:get(C, ?ST_RETRIES),
              restarts => counters:get(C, ?ST_RESTARTS),
              exited => counters:get(C, ?ST_EXITED), queued => Queued};
        undefined ->
            {error, {no_such_pool, Name}}
    end.

%%% Internals -----------------------------------------------------------------------------

call_keyed(T, Key, Job, Timeout, Fun, ErrArgs) ->
    case shoal_fixed_table:keyed(T, Key) of
        none -> {error, no_workers};
        {_, Pid} -> call_pid(T, Pid, Job, Timeout, 0, Fun, ErrArgs)
    end.

call_pid(T, Pid, Job, Timeout, Failovers, Fun, ErrArgs) ->
    try gen_server:call(Pid, ?JOB(Job), Timeout)
    catch
        exit:{R, _} when (R =:= noproc orelse R =:= normal), Failovers < ?MAX_FAILOVERS ->
            %% The worker was gone (or left for good) before it took the job: the job
            %% never ran, so it may go to the worker's successor.
            failover(T, Pid, Job, Timeout, Failovers + 1, Fun, ErrArgs);
        exit:{R, _} ->
            exit({R, {?MODULE, Fun, ErrArgs}})
    end.

failover(#shoal_fixed{name = Name, slots = Slots, owner = Owner} = T, Pid, Job, Timeout,
         Failovers, Fun, ErrArgs) ->
    Ix = index_of(Pid, Slots, 1),
    Next = case Ix of
               undefined -> repick;   % not in this table (a `live' fallback): pick again
               _ -> shoal_fixed_table:await(Owner, Ix, Pid, Timeout)
           end,
    case {Next, persistent_term:get(?FIXED_KEY(Name), undefined)} of
        {_, undefined} -> {error, {no_such_pool, Name}};
        {{ok, NewPid}, T1} -> call_pid(T1, NewPid, Job, Timeout, Failovers, Fun, ErrArgs);
        {timeout, _} -> exit({timeout, {?MODULE, Fun, ErrArgs}});
        {no_pool, _} -> {error, {no_such_pool, Name}};
        {_, T1} ->
            %% The worker left for good: whoever now gets the job by the same rule.
            Picked = case Fun of
                         call when T#shoal_fixed.mode =/= hash -> shoal_fixed_table:pick(T1, Job);
                         call -> keyed1(T1, Job);
                         call_key -> keyed1(T1, hd(tl(ErrArgs)))
                     end,
            case Picked of
                none -> {error, no_workers};
                P -> call_pid(T1, P, Job, Timeout, Failovers, Fun, ErrArgs)
            end
    end.

keyed1(T, Key) ->
    case shoal_fixed_table:keyed(T, Key) of
        none -> none;
        {_, P} -> P
    end.

index_of(_, Slots, I) when I > tuple_size(Slots) -> undefined;
index_of(Pid, Slots, I) ->
    case element(I, Slots) of
        Pid -> I - 1;
        _ -> index_of(Pid, Slots, I + 1)
    end.

broadcast_call(Live, Job, Timeout) ->
    Reqs = [gen_server:send_request(P, ?JOB(Job)) || P <- tuple_to_list(Live)],
    Deadline = case Timeout of
                   infinity -> infinity;
                   _ -> {abs, erlang:monotonic_time(millisecond) + Timeout}
               end,
    [case gen_server:receive_response(R, Deadline) of
         {reply, Reply} -> Reply;
         {error, {Reason, _}} -> {error, Reason};
         timeout -> {error, timeout}
     end || R <- Reqs].

validate(Name, _) when not is_atom(Name) -> {error, {bad_name, Name}};
validate(Name, Opts0) ->
    case shoal_tools_opts:to_map(Opts0, ?KNOWN) of
        {ok, Opts} ->
            try
                Mod = shoal_tools_opts:callback_module(worker, Opts,
                                                       [{init, 2}, {handle_job, 2}]),
                Size = shoal_tools_opts:get(size, Opts, erlang:system_info(schedulers),
                                            fun(N) -> is_integer(N) andalso N >= 1 end),
                Mode = shoal_tools_opts:get(mode, Opts, round_robin,
                                            fun(M) -> lists:member(M, ?MODES) end),
                Retry = case shoal_retry:parse(maps:get(retry, Opts, undefined)) of
                            {ok, R} -> R;
                            {error, Why} -> throw(Why)
                        end,
                Callbacks = callbacks(maps:get(callbacks, Opts, #{})),
                {ok, #{name => Name, worker => Mod, size => Size, mode => Mode,
                       args => maps:get(args, Opts, undefined), retry => Retry,
                       callbacks => Callbacks}}
            catch throw:Reason -> {error, Reason}
            end;
        {error, _} = E ->
            E
    end.

callbacks(CBs) when is_map(CBs) -> check_callbacks(CBs);
callbacks(CBs) when is_list(CBs) ->
    case lists:all(fun(E) -> is_tuple(E) andalso tuple_size(E) =:= 2 end, CBs) of
        true -> check_callbacks(maps:from_list(CBs));
        false -> throw({bad_option, callbacks, CBs})
    end;
callbacks(CBs) -> throw({bad_option, callbacks, CBs}).

check_callbacks(M) ->
    maps:foreach(fun(K, V) ->
                         case {lists:member(K, ?RESERVED), V} of
                             {true, _} -> throw({reserved_callback_name, K});
                             {false, {Mo, F}} when is_atom(K), is_atom(Mo), is_atom(F) -> ok;
                             _ -> throw({bad_option, callbacks, {K, V}})
                         end
                 end, M),
    M.
