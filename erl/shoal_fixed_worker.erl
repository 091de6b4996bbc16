%% @doc One worker of a shoal_fixed pool: a gen_server around the user's shoal_fixed
%% callback module. It runs each job, applies the retry policy (a backoff is a timer, so
%% the worker keeps handling other jobs), invokes the configured callbacks, and carries out
%% `{exit, S}' (leave the pool for good, handing its queued casts to the other workers) and
%% `{stop, S}' (stop the whole pool).
-module(shoal_fixed_worker).
-behaviour(gen_server).

-include("shoal_fixed.hrl").

-export([start_link/2]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-record(st, {name :: atom(),
             index :: non_neg_integer(),
             mod :: module(),
             ustate :: term(),
             retry :: shoal_retry:policy(),
             error_mod :: module() | undefined,   % Mod if it exports handle_error/4
             callbacks :: #{atom() => {module(), atom()}},
             stats :: counters:counters_ref(),
             owner :: pid(),
             sup :: pid(),
             pending = #{} :: #{reference() => {term(), gen_server:from() | undefined,
                                                pos_integer()}}}).

%% @doc Start worker `Index' of pool `Cfg'.
-spec start_link(map(), non_neg_integer()) -> {ok, pid()} | {error, term()}.
start_link(Cfg, Index) -> gen_server:start_link(?MODULE, {Cfg, Index}, []).

%% @private
-spec init({map(), non_neg_integer()}) -> {ok, #st{}} | {stop, term()}.
init({#{name := Name, worker := Mod, args := Args, retry := Retry, callbacks := CBs}, Ix}) ->
    #shoal_fixed{owner = Owner, sup = Sup, stats = Stats} =
        persistent_term:get(?FIXED_KEY(Name)),
    case Mod:init(Ix, Args) of
        {ok, US} ->
            ok = shoal_fixed_table:register(Owner, Ix, self()),
            ErrMod = case erlang:function_exported(Mod, handle_error, 4) of
                         true -> Mod;
                         false -> undefined
                     end,
            {ok, #st{name = Name, index = Ix, mod = Mod, ustate = US, retry = Retry,
                     error_mod = ErrMod, callbacks = CBs, stats = Stats, owner = Owner,
                     sup = Sup}};
        {stop, Reason} ->
            {stop, Reason};
        Other ->
            {stop, {bad_return_value, Other}}
    end.

%% @private
-spec handle_call(term(), gen_server:from(), #st{}) ->
          {noreply, #st{}} | {stop, normal, #st{}} | {reply, term(), #st{}}.
handle_call({'$shoal_job', Job}, From, S) -> run(Job, From, 1, S);
handle_call(_Other, _From, S) -> {reply, {error, unknown_call}, S}.

%% @private
-spec handle_cast(term(), #st{}) -> {noreply, #st{}} | {stop, normal, #st{}}.
handle_cast({'$shoal_job', Job}, S) -> run(Job, undefined, 1, S);
handle_cast(_Other, S) -> {noreply, S}.

%% @private
-spec handle_info(term(), #st{}) -> {noreply, #st{}} | {stop, normal, #st{}}.
handle_info({'$shoal_retry', Ref}, #st{pending = P} = S) ->
    case maps:take(Ref, P) of
        {{Job, From, Attempt}, P1} -> run(Job, From, Attempt, S#st{pending = P1});
        error -> {noreply, S}
    end;
handle_info(_Other, S) ->
    {noreply, S}.

%%% Running a job -------------------------------------------------------------------------

run(Job, From, Attempt, #st{mod = Mod, ustate = US} = S) ->
    try Mod:handle_job(Job, US) of
        {reply, R, US1} -> done(From, R, S#st{ustate = US1});
        {noreply, US1} -> done(From, ok, S#st{ustate = US1});
        {exit, US1} -> leave(From, S#st{ustate = US1});
        {stop, US1} -> stop_pool(From, S#st{ustate = US1});
        {CB, Args, US1} when is_atom(CB) -> callback(Job, From, Attempt, CB, Args,
                                                     S#st{ustate = US1});
        Other -> failed(Job, From, Attempt, {error, {bad_return, Other}, []}, S)
    catch C:R:St ->
            failed(Job, From, Attempt, {C, R, St}, S)
    end.

callback(Job, From, Attempt, CB, Args, #st{callbacks = CBs} = S) ->
    case CBs of
        #{CB := {M, F}} ->
            try erlang:apply(M, F, if is_list(Args) -> Args; true -> [Args] end) of
                Result -> done(From, Result, S)
            catch C:R:St -> failed(Job, From, Attempt, {C, R, St}, S)
            end;
        _ ->
            failed(Job, From, Attempt, {error, {unknown_callback, CB}, []}, S)
    end.

done(From, Reply, #st{stats = C} = S) ->
    counters:add(C, ?ST_DONE, 1),
    reply(From, Reply),
    {noreply, S}.

failed(Job, From, Attempt, Error, #st{error_mod = EM, retry = Policy, ustate = US,
                                      stats = C, pending = P} = S) ->
    case shoal_retry:decide(EM, Policy, Job, Attempt, Error, US) of
        {retry, 0, US1} ->
            counters:add(C, ?ST_RETRIES, 1),
            run(Job, From, Attempt + 1, S#st{ustate = US1});
        {retry, Ms, US1} ->
            counters:add(C, ?ST_RETRIES, 1),
            Ref = make_ref(),
            _ = erlang:send_after(Ms, self(), {'$shoal_retry', Ref}),
            {noreply, S#st{ustate = US1, pending = P#{Ref => {Job, From, Attempt + 1}}}};
        {give_up, US1} ->
            counters:add(C, ?ST_FAILED, 1),
            case From of
                undefined ->
                    logger:error("shoal_fixed ~p: job ~0p failed after ~b attempt(s): ~0p",
                                 [S#st.name, Job, Attempt, Error]);
                _ ->
                    reply(From, {error, {job_failed, Error}})
            end,
            {noreply, S#st{ustate = US1}}
    end.

%% {exit, S}: out of the dispatch table first, so no new job is sent here; then what was
%% still queued goes to the other workers (casts) or fails back to its caller (retries
%% waiting for their backoff). Queued calls fail over by themselves: their callers see this
%% worker exit `normal' before it took their job.
leave(From, #st{name = Name, index = Ix, owner = Owner, stats = C, pending = P} = S) ->
    counters:add(C, ?ST_DONE, 1),
    reply(From, ok),
    ok = shoal_fixed_table:leave(Owner, Ix),
    _ = [reply(F, {error, {job_failed, {exit, worker_exited, []}}}) || {_, F, _} <- maps:values(P)],
    forward_casts(Name),
    {stop, normal, S#st{pending = #{}}}.

forward_casts(Name) ->
    receive
        {'$gen_cast', {'$shoal_job', Job}} ->
            _ = shoal_fixed:cast(Name, Job),
            forward_casts(Name)
    after 0 ->
            ok
    end.

stop_pool(From, #st{sup = Sup, stats = C} = S) ->
    counters:add(C, ?ST_DONE, 1),
    reply(From, ok),
    _ = spawn(fun() -> catch gen_server:stop(Sup, normal, infinity) end),
    {noreply, S}.

reply(undefined, _) -> ok;
reply(From, Reply) -> gen_server:reply(From, Reply).
