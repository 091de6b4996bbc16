%% @doc A bounded task runner: at most `limit' tasks run at once; the rest wait in a FIFO
%% queue of at most `max_queue' tasks, beyond which run/2 returns `{error, overloaded}'.
%%
%% run/2 returns a reference; the task's result goes to the process that called run/2 and
%% to nobody else, and await/3 or await_many/3 there pick it by that reference: `{ok,
%% Value}', or `{error, {Class, Reason, Stacktrace}}' if the task raised (the runner and
%% the other tasks are not affected). The reference is an alias that is deactivated once
%% its result is taken, or when await gives up, so a late result never reaches the
%% caller's mailbox. A caller that dies cancels its queued tasks (running ones finish).
%%
%% The runner is a gen_server registered as the name; tasks are processes linked to it,
%% so stopping the runner (or its supervisor) stops them; their awaiters then get
%% `{error, {exit, shutdown, []}}', as do those of tasks still queued.
-module(shoal_tasks).
-behaviour(gen_server).

-export([start_link/2, child_spec/1, child_spec/2, stop/1, run/2, run_and_forget/2,
         await/3, await_many/3, stats/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-export_type([name/0, task/0, result/0]).

-type name() :: atom().
-type task() :: fun(() -> term()) | {module(), atom(), [term()]}.
-type result() :: {ok, term()} | {error, {error | exit | throw, term(), list()}}
                | {error, timeout}.

-define(KEY(Name), {shoal_tasks, Name}).
-define(KNOWN, [limit, max_queue, hibernate_after]).
%% atomics: tasks admitted and not yet finished (queued + running)
-define(A_PENDING, 1).

-record(st, {name :: atom(),
             limit :: pos_integer(),
             pending :: atomics:atomics_ref(),
             running = #{} :: #{pid() => reference() | undefined},
             queue = queue:new() :: queue:queue(integer()),
             entries = #{} :: #{integer() => {pid(), reference() | undefined, task()}},
             callers = #{} :: #{pid() => {reference(), pos_integer()}}, % queued per caller
             done = 0 :: non_neg_integer(),
             failed = 0 :: non_neg_integer(),
             cancelled = 0 :: non_neg_integer()}).

%%% API -----------------------------------------------------------------------------------

%% @doc Start runner `Name' (registered locally). `Opts' (map or proplist): `limit' (tasks
%% running at once, default: the number of schedulers), `max_queue' (tasks waiting beyond
%% those, default `infinity'), `hibernate_after' (ms idle before the runner hibernates,
%% default `infinity').
-spec start_link(name(), map() | list()) -> {ok, pid()} | {error, term()}.
start_link(Name, Opts0) when is_atom(Name) ->
    case shoal_tools_opts:to_map(Opts0, ?KNOWN) of
        {ok, Opts} ->
            try
                Limit = shoal_tools_opts:get(limit, Opts, erlang:system_info(schedulers),
                                             fun(N) -> is_integer(N) andalso N >= 1 end),
                MaxQ = shoal_tools_opts:get(max_queue, Opts, infinity,
                                            fun(N) -> N =:= infinity orelse
                                                          (is_integer(N) andalso N >= 0) end),
                Hib = shoal_tools_opts:get(hibernate_after, Opts, infinity,
                                           fun(N) -> N =:= infinity orelse
                                                         (is_integer(N) andalso N >= 0) end),
                gen_server:start_link({local, Name}, ?MODULE, {Name, Limit, MaxQ},
                                      [{hibernate_after, Hib}])
            catch throw:Reason -> {error, Reason}
            end;
        {error, _} = E ->
            E
    end;
start_link(Name, _Opts) ->
    {error, {bad_name, Name}}.

%% @doc child_spec/2 from `{Name, Opts}' or options with a `name' key.
-spec child_spec({name(), map() | list()} | map() | list()) -> supervisor:child_spec().
child_spec({Name, Opts}) -> child_spec(Name, Opts);
child_spec(Opts) ->
    {Name, Rest} = shoal_tools_opts:split_name(Opts),
    child_spec(Name, Rest).

%% @doc A child spec for the user's supervision tree (see start_link/2).
-spec child_spec(name(), map() | list()) -> supervisor:child_spec().
child_spec(Name, Opts) ->
    #{id => {?MODULE, Name}, start => {?MODULE, start_link, [Name, Opts]},
      restart => permanent, shutdown => 5000}.

%% @doc Stop the runner and its running tasks.
-spec stop(name()) -> ok | {error, {no_such_runner, name()}}.
stop(Name) ->
    try gen_server:stop(Name, normal, infinity)
    catch exit:_ -> {error, {no_such_runner, Name}}
    end.

%% @doc Run `Task' (a fun of arity 0 or `{M, F, A}') as soon as fewer than `limit' tasks
%% run. Returns the reference to await, or `{error, overloaded}' when `max_queue' tasks are
%% already waiting.
-spec run(name(), task()) -> reference() | {error, term()}.
run(Name, Task) ->
    case valid_task(Task) of
        true -> submit(Name, Task, erlang:alias([reply]));
        false -> {error, {bad_task, Task}}
    end.

%% @doc Like run/2, but nobody gets the result: `ok' or `{error, overloaded}'.
-spec run_and_forget(name(), task()) -> ok | {error, term()}.
run_and_forget(Name, Task) ->
    case valid_task(Task) andalso submit(Name, Task, undefined) of
        false -> {error, {bad_task, Task}};
        undefined -> ok;
        {error, _} = E -> E
    end.

%% @doc The result of the task `Ref' (from run/2 in this process): `{ok, Value}',
%% `{error, {Class, Reason, Stacktrace}}', or `{error, timeout}' if it did not finish in
%% `Timeout' ms (the task goes on; its result is then dropped).
-spec await(name(), reference(), timeout()) -> result() | {error, {bad_ref, term()}}.
await(_Name, Ref, _Timeout) when not is_reference(Ref) ->
    {error, {bad_ref, Ref}};
await(_Name, Ref, Timeout) ->
    receive
        {Ref, Result} -> Result
    after Timeout ->
            give_up(Ref)
    end.

%% @doc The results of `Refs', in the order of `Refs', waiting at most `Timeout' ms in
%% all; a task not finished by then gives `{error, timeout}' in its place.
-spec await_many(name(), [reference()], timeout()) -> [result() | {error, {bad_ref, term()}}].
await_many(Name, Refs, infinity) ->
    [await(Name, R, infinity) || R <- Refs];
await_many(Name, Refs, Timeout) ->
    Deadline = erlang:monotonic_time(millisecond) + Timeout,
    [await(Name, R, max(0, Deadline - erlang:monotonic_time(millisecond))) || R <- Refs].

%% @doc `running', `queued', `done' (finished, raising or not), `failed' (raised), and
%% `cancelled' (queued tasks dropped because their caller died).
-spec stats(name()) -> map() | {error, term()}.
stats(Name) ->
    try gen_server:call(Name, stats)
    catch exit:_ -> {error, {no_such_runner, Name}}
    end.

%%% Internals of the API ------------------------------------------------------------------

submit(Name, Task, Ref) ->
    case persistent_term:get(?KEY(Name), undefined) of
        {A, Bound} ->
            case atomics:add_get(A, ?A_PENDING, 1) > Bound of
                true ->
                    atomics:sub(A, ?A_PENDING, 1),
                    _ = Ref =/= undefined andalso erlang:unalias(Ref),
                    {error, overloaded};
                false ->
                    try erlang:send(Name, {'$shoal_task', self(), Ref, Task}) of
                        _ -> Ref
                    catch error:badarg ->
                            atomics:sub(A, ?A_PENDING, 1),
                            _ = Ref =/= undefined andalso erlang:unalias(Ref),
                            {error, {no_such_runner, Name}}
                    end
            end;
        undefined ->
            _ = Ref =/= undefined andalso erlang:unalias(Ref),
            {error, {no_such_runner, Name}}
    end.

valid_task(F) when is_function(F, 0) -> true;
valid_task({M, F, A}) when is_atom(M), is_atom(F), is_list(A) -> true;
valid_task(_) -> false.

give_up(Ref) ->
    erlang:unalias(Ref),
    receive {Ref, Result} -> Result
    after 0 -> {error, timeout}
    end.

%%% gen_server ----------------------------------------------------------------------------

%% @private
-spec init({name(), pos_integer(), non_neg_integer() | infinity}) -> {ok, #st{}}.
init({Name, Limit, MaxQ}) ->
    process_flag(trap_exit, true),
    A = atomics:new(1, []),
    Bound = case MaxQ of infinity -> 1 bsl 62; _ -> Limit + MaxQ end,
    persistent_term:put(?KEY(Name), {A, Bound}),
    {ok, #st{name = Name, limit = Limit, pending = A}}.

%% @private
-spec handle_call(term(), gen_server:from(), #st{}) -> {reply, term(), #st{}}.
handle_call(stats, _From, S) ->
    {reply, #{running => map_size(S#st.running), queued => map_size(S#st.entries),
              done => S#st.done, failed => S#st.failed, cancelled => S#st.cancelled}, S};
handle_call(_Other, _From, S) ->
    {reply, {error, unknown_call}, S}.

%% @private
-spec handle_cast(term(), #st{}) -> {noreply, #st{}}.
handle_cast(_Other, S) -> {noreply, S}.

%% @private
-spec handle_info(term(), #st{}) -> {noreply, #st{}}.
handle_info({'$shoal_task', Caller, Ref, Task}, #st{running = R, limit = L} = S) ->
    case map_size(R) < L of
        true -> {noreply, start_task(Ref, Task, S)};
        false -> {noreply, enqueue(Caller, Ref, Task, S)}
    end;
handle_info({'$shoal_task_done', Pid, Failed}, #st{running = R} = S) ->
    %% The task reported its result; its exit follows and is ignored.
    case maps:is_key(Pid, R) of
        true -> {noreply, finished(Pid, Failed, S)};
        false -> {noreply, S}
    end;
handle_info({'EXIT', Pid, Reason}, #st{running = R} = S) ->
    case maps:find(Pid, R) of
        {ok, Ref} when Reason =/= normal ->
            %% Killed before it could report.
            reply(Ref, {error, {exit, Reason, []}}),
            {noreply, finished(Pid, true, S)};
        _ ->
            {noreply, S}
    end;
handle_info({'DOWN', _Mon, process, Caller, _}, #st{callers = C, entries = E, pending = A} = S) ->
    case maps:take(Caller, C) of
        {{_, N}, C1} ->
            atomics:sub(A, ?A_PENDING, N),
            E1 = maps:filter(fun(_, {From, _, _}) -> From =/= Caller end, E),
            {noreply, S#st{callers = C1, entries = E1, cancelled = S#st.cancelled + N}};
        error ->
            {noreply, S}
    end;
handle_info(_Other, S) ->
    {noreply, S}.

%% @private
-spec terminate(term(), #st{}) -> ok.
terminate(_Reason, #st{name = Name, running = R, entries = E}) ->
    %% Linked tasks would ignore a `normal' exit of the runner: stop them explicitly.
    _ = [exit(Pid, shutdown) || Pid <- maps:keys(R)],
    _ = [reply(Ref, {error, {exit, shutdown, []}}) || Ref <- maps:values(R)],
    _ = [reply(Ref, {error, {exit, shutdown, []}}) || {_, Ref, _} <- maps:values(E)],
    _ = persistent_term:erase(?KEY(Name)),
    ok.

start_task(Ref, Task, #st{running = R} = S) ->
    Runner = self(),
    Pid = proc_lib:spawn_link(fun() -> exec(Runner, Ref, Task) end),
    S#st{running = R#{Pid => Ref}}.

exec(Runner, Ref, Task) ->
    Result = try {ok, case Task of
                          {M, F, A} -> erlang:apply(M, F, A);
                          Fun -> Fun()
                      end}
             catch C:R:St -> {error, {C, R, St}}
             end,
    reply(Ref, Result),
    Runner ! {'$shoal_task_done', self(), element(1, Result) =:= error}.

reply(undefined, _) -> ok;
reply(Ref, Result) -> erlang:send(Ref, {Ref, Result}), ok.

finished(Pid, Failed, #st{running = R, pending = A} = S) ->
    atomics:sub(A, ?A_PENDING, 1),
    S1 = S#st{running = maps:remove(Pid, R), done = S#st.done + 1,
              failed = S#st.failed + (case Failed of true -> 1; false -> 0 end)},
    next(S1).

next(#st{queue = Q, entries = E} = S) ->
    case queue:out(Q) of
        {empty, _} -> S;
        {{value, Seq}, Q1} ->
            case maps:take(Seq, E) of
                {{Caller, Ref, Task}, E1} ->
                    S1 = dequeued(Caller, S#st{queue = Q1, entries = E1}),
                    start_task(Ref, Task, S1);
                error ->
                    next(S#st{queue = Q1})     % cancelled
            end
    end.

enqueue(Caller, Ref, Task, #st{queue = Q, entries = E, callers = C} = S) ->
    Seq = erlang:unique_integer([monotonic]),
    C1 = case C of
             #{Caller := {Mon, N}} -> C#{Caller := {Mon, N + 1}};
             _ -> C#{Caller => {erlang:monitor(process, Caller), 1}}
         end,
    S#st{queue = queue:in(Seq, Q), entries = E#{Seq => {Caller, Ref, Task}}, callers = C1}.

dequeued(Caller, #st{callers = C} = S) ->
    case C of
        #{Caller := {Mon, 1}} ->
            erlang:demonitor(Mon, [flush]),
            S#st{callers = maps:remove(Caller, C)};
        #{Caller := {Mon, N}} ->
            S#st{callers = C#{Caller := {Mon, N - 1}}};
        _ ->
            S
    end.
