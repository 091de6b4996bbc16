%% @doc Validation of shoal_super's options and specs. Every shape a run-time call takes is
%% checked here, and the declarative `Opts' of shoal_super:start_link/2 are checked with the
%% same functions, so a declaration is accepted exactly when the run-time call would be.
%% Each function returns the options with their defaults filled in, or
%% `{error, Reason}' with Reason one of `{bad_option, Key, Value}', `{unknown_option, Key}',
%% `{missing_option, Key}', `{bad_worker_spec, Spec}', `{bad_step_spec, Spec}',
%% `{bad_declaration, Term}'.
-module(shoal_super_opts).

-export([super/1, group/1, member/1, worker/1, chain/1, step/1, worker_spec/1, step_spec/1,
         placement/1]).

-export_type([placement/0, worker_spec/0, step_spec/0]).

-type placement() :: local | spread | #{node := node()}.
-type worker_spec() :: {gen_server, module(), term()} | {module(), atom(), list()} |
                       fun(() -> term()).
-type step_spec() :: fun((term()) -> term()) | {module(), atom(), list()}.

-define(RESTARTS, [permanent, transient, temporary]).
-define(DISPATCH, [random, round_robin, hash, broadcast]).

%% @doc The supervisor's own options: `groups', `chains', `workers' (declarations in the
%% shapes the run-time calls take) and `cluster' (the Shoal pool hosting remote placements).
-spec super(term()) -> {ok, map()} | {error, term()}.
super(Opts) when is_map(Opts) ->
    check(fun() ->
                  known(Opts, [groups, chains, workers, cluster]),
                  Groups = [decl_group(G) || G <- list_opt(groups, Opts)],
                  Chains = [decl_chain(C) || C <- list_opt(chains, Opts)],
                  Workers = [decl_worker(W) || W <- list_opt(workers, Opts)],
                  Cluster = opt(cluster, Opts, undefined,
                                fun(P) -> P =:= undefined orelse is_atom(P) end),
                  #{groups => Groups, chains => Chains, workers => Workers, cluster => Cluster}
          end);
super(Opts) -> {error, {bad_options, Opts}}.

%% @doc `add_group/3' options: `restart' (`one_for_one', the default, or `one_for_all'),
%% `max_restarts' (default 3), `max_seconds' (default 5), `placement' (default `local').
-spec group(term()) -> {ok, map()} | {error, term()}.
group(Opts) -> check(fun() -> do_group(Opts) end).

%% @doc `add_group_worker/4' options: `id' (required), `restart' (`permanent', the default,
%% `transient' or `temporary'), `shutdown' (ms, default 5000), `placement' (default: the
%% group's).
-spec member(term()) -> {ok, map()} | {error, term()}.
member(Opts) -> check(fun() -> do_member(Opts) end).

%% @doc `add_worker/3' options: `id' (required), `restart' (default `permanent'),
%% `max_restarts' (default 3), `max_seconds' (default 5), `shutdown' (default 5000).
-spec worker(term()) -> {ok, map()} | {error, term()}.
worker(Opts) -> check(fun() -> do_worker(Opts) end).

%% @doc `add_chain/3' options: `restart' (`one_for_one' or `one_for_all': what an exit of a
%% step worker process restarts), `max_restarts' (default 10), `max_seconds' (default 5),
%% `on_finish' (fun/1 or `{M, F, A}', default none), `max_queue' (items in flight, default
%% 1000), `dispatch' (default `round_robin'), `delivery' (`at_most_once', the default, or
%% `at_least_once'), `placement' (default `local').
-spec chain(term()) -> {ok, map()} | {error, term()}.
chain(Opts) -> check(fun() -> do_chain(Opts) end).

%% @doc `add_chain_step/4' options: `id' (required), `workers' (a count, default 1, or
%% `#{min, max}' with optional `scale_up_queue' (default 4 queued items per worker),
%% `scale_interval' (ms, default 100) and `idle_after' (ms, default 2000): every
%% scale_interval the step's queue is sampled; two samples in a row above scale_up_queue
%% per worker add half as many workers again (at least one, at most up to max); a step
%% that handled nothing and had nothing queued for idle_after goes back to min),
%% `dispatch' and `placement' (default: the chain's).
-spec step(term()) -> {ok, map()} | {error, term()}.
step(Opts) -> check(fun() -> do_step(Opts) end).

%% @doc Check a group or standalone worker spec.
-spec worker_spec(term()) -> ok | {error, {bad_worker_spec, term()}}.
worker_spec({gen_server, M, _A}) when is_atom(M) -> ok;
worker_spec({M, F, A}) when is_atom(M), is_atom(F), is_list(A) -> ok;
worker_spec(F) when is_function(F, 0) -> ok;
worker_spec(S) -> {error, {bad_worker_spec, S}}.

%% @doc Check a chain step spec.
-spec step_spec(term()) -> ok | {error, {bad_step_spec, term()}}.
step_spec({M, F, A}) when is_atom(M), is_atom(F), is_list(A) -> ok;
step_spec(F) when is_function(F, 1) -> ok;
step_spec(S) -> {error, {bad_step_spec, S}}.

%% @doc Check a placement.
-spec placement(term()) -> boolean().
placement(local) -> true;
placement(spread) -> true;
placement(#{node := N} = P) when is_atom(N), map_size(P) =:= 1 -> true;
placement(_) -> false.

%%% Internals ------------------------------------------------------------------------------

check(Fun) ->
    try {ok, Fun()}
    catch throw:{shoal_super_opts, Reason} -> {error, Reason}
    end.

-spec fail(term()) -> no_return().
fail(Reason) -> throw({shoal_super_opts, Reason}).

do_group(Opts) ->
    is_map(Opts) orelse fail({bad_options, Opts}),
    known(Opts, [restart, max_restarts, max_seconds, placement]),
    #{restart => opt(restart, Opts, one_for_one, in([one_for_one, one_for_all])),
      max_restarts => opt(max_restarts, Opts, 3, fun non_neg/1),
      max_seconds => opt(max_seconds, Opts, 5, fun pos/1),
      placement => opt(placement, Opts, local, fun placement/1)}.

do_member(Opts) ->
    is_map(Opts) orelse fail({bad_options, Opts}),
    known(Opts, [id, restart, shutdown, placement]),
    #{id => required(id, Opts),
      restart => opt(restart, Opts, permanent, in(?RESTARTS)),
      shutdown => opt(shutdown, Opts, 5000, fun shutdown/1),
      placement => opt(placement, Opts, default,
                       fun(P) -> P =:= default orelse placement(P) end)}.

do_worker(Opts) ->
    is_map(Opts) orelse fail({bad_options, Opts}),
    known(Opts, [id, restart, max_restarts, max_seconds, shutdown]),
    #{id => required(id, Opts),
      restart => opt(restart, Opts, permanent, in(?RESTARTS)),
      max_restarts => opt(max_restarts, Opts, 3, fun non_neg/1),
      max_seconds => opt(max_seconds, Opts, 5, fun pos/1),
      shutdown => opt(shutdown, Opts, 5000, fun shutdown/1)}.

do_chain(Opts) ->
    is_map(Opts) orelse fail({bad_options, Opts}),
    known(Opts, [restart, max_restarts, max_seconds, on_finish, max_queue, dispatch,
                 delivery, placement]),
    #{restart => opt(restart, Opts, one_for_one, in([one_for_one, one_for_all])),
      max_restarts => opt(max_restarts, Opts, 10, fun non_neg/1),
      max_seconds => opt(max_seconds, Opts, 5, fun pos/1),
      on_finish => opt(on_finish, Opts, undefined, fun on_finish/1),
      max_queue => opt(max_queue, Opts, 1000, fun pos/1),
      dispatch => opt(dispatch, Opts, round_robin, in(?DISPATCH)),
      delivery => opt(delivery, Opts, at_most_once, in([at_most_once, at_least_once])),
      placement => opt(placement, Opts, local, fun placement/1)}.

do_step(Opts) ->
    is_map(Opts) orelse fail({bad_options, Opts}),
    known(Opts, [id, workers, dispatch, placement]),
    W = case maps:get(workers, Opts, 1) of
            N when is_integer(N), N >= 1 -> #{min => N, max => N, auto => false};
            #{min := Min, max := Max} = M when is_integer(Min), is_integer(Max), Min >= 1,
                                               Max >= Min ->
                known(M, [min, max, scale_up_queue, scale_interval, idle_after]),
                #{min => Min, max => Max, auto => Max > Min,
                  scale_up_queue => opt(scale_up_queue, M, 4, fun pos/1),
                  scale_interval => opt(scale_interval, M, 100, fun pos/1),
                  idle_after => opt(idle_after, M, 2000, fun pos/1)};
            Bad -> fail({bad_option, workers, Bad})
        end,
    #{id => required(id, Opts),
      workers => W,
      dispatch => opt(dispatch, Opts, default, fun(D) -> D =:= default orelse lists:member(D, ?DISPATCH) end),
      placement => opt(placement, Opts, default,
                       fun(P) -> P =:= default orelse placement(P) end)}.

decl_group({G, GOpts, Members}) when is_list(Members) ->
    NG = ok_or_fail(group(GOpts)),
    {G, NG, [decl_member(M) || M <- Members]};
decl_group(Other) -> fail({bad_declaration, {group, Other}}).

decl_member({Spec, MOpts}) ->
    ok = ok_or_fail(worker_spec(Spec)),
    {Spec, ok_or_fail(member(MOpts))};
decl_member(Other) -> fail({bad_declaration, {group_worker, Other}}).

decl_chain({C, COpts, Steps}) when is_list(Steps) ->
    NC = ok_or_fail(chain(COpts)),
    {C, NC, [decl_step(S) || S <- Steps]};
decl_chain(Other) -> fail({bad_declaration, {chain, Other}}).

decl_step({Spec, SOpts}) ->
    ok = ok_or_fail(step_spec(Spec)),
    {Spec, ok_or_fail(step(SOpts))};
decl_step(Other) -> fail({bad_declaration, {chain_step, Other}}).

decl_worker({Spec, WOpts}) ->
    ok = ok_or_fail(worker_spec(Spec)),
    {Spec, ok_or_fail(worker(WOpts))};
decl_worker(Other) -> fail({bad_declaration, {worker, Other}}).

ok_or_fail(ok) -> ok;
ok_or_fail({ok, V}) -> V;
ok_or_fail({error, R}) -> fail(R).

list_opt(K, Opts) ->
    case maps:get(K, Opts, []) of
        L when is_list(L) -> L;
        V -> fail({bad_option, K, V})
    end.

known(Opts, Keys) ->
    [fail({unknown_option, K}) || K <- maps:keys(Opts), not lists:member(K, Keys)],
    ok.

required(K, Opts) ->
    case maps:find(K, Opts) of
        {ok, V} -> V;
        error -> fail({missing_option, K})
    end.

opt(K, Opts, Default, Valid) ->
    V = maps:get(K, Opts, Default),
    case Valid(V) of
        true -> V;
        false -> fail({bad_option, K, V})
    end.

in(L) -> fun(V) -> lists:member(V, L) end.
non_neg(N) -> is_integer(N) andalso N >= 0.
pos(N) -> is_integer(N) andalso N > 0.
shutdown(brutal_kill) -> true;
shutdown(infinity) -> true;
shutdown(N) -> non_neg(N).
on_finish(undefined) -> true;
on_finish(F) when is_function(F, 1) -> true;
on_finish({M, F, A}) -> is_atom(M) andalso is_atom(F) andalso is_list(A);
on_finish(_) -> false.
