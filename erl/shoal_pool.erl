%% @doc One pool's supervisor: the pool's member (owner of the table and the configuration,
%% see shoal_member) and N segment processes that the pool's workers link to.
%%
%% `child_spec/2' lets a pool live in the user's own supervision tree instead of under the
%% shoal application; shoal:start_pool/2 uses the same spec under shoal_sup.
-module(shoal_pool).
-behaviour(supervisor).

-include("shoal_int.hrl").

-export([child_spec/2, start_link/2, validate/2, init/1, seg_name/2]).

-define(KNOWN_OPTS, [worker, args, segments, restart, idle_timeout, table_segments_log2,
                     spawn_opts, handoff_grace, quorum]).

%% @doc A supervisor child spec that starts pool Pool with Opts (see shoal:start_pool/2).
-spec child_spec(atom(), shoal:options()) -> supervisor:child_spec().
child_spec(Pool, Opts) ->
    #{id => {shoal_pool, Pool},
      start => {?MODULE, start_link, [Pool, Opts]},
      type => supervisor,
      restart => permanent,
      shutdown => infinity}.

%% @doc Start the pool's supervisor; `{error, Reason}' for invalid options.
-spec start_link(atom(), shoal:options()) -> {ok, pid()} | {error, term()}.
start_link(Pool, Opts) ->
    case validate(Pool, Opts) of
        {ok, Cfg} ->
            supervisor:start_link({local, sup_name(Pool)}, ?MODULE, Cfg);
        {error, _} = E ->
            E
    end.

%% @doc Check a pool name and options (a map, or a proplist such as an Elixir keyword list,
%% where the first of repeated keys wins); returns the configuration the pool will use.
-spec validate(term(), term()) -> {ok, #shoal_cfg{}} | {error, term()}.
validate(Pool, _) when not is_atom(Pool) -> {error, {bad_pool_name, Pool}};
validate(Pool, Opts) when is_list(Opts) ->
    case proplist_to_map(Opts) of
        {ok, Map} -> validate(Pool, Map);
        error -> {error, {bad_options, Opts}}
    end;
validate(_, Opts) when not is_map(Opts) -> {error, {bad_options, Opts}};
validate(Pool, Opts) ->
    try
        [throw({unknown_option, K}) || K <- maps:keys(Opts), not lists:member(K, ?KNOWN_OPTS)],
        Mod = case maps:find(worker, Opts) of
                  {ok, M} when is_atom(M) -> M;
                  {ok, M} -> throw({bad_worker, M});
                  error -> throw({missing_option, worker})
              end,
        case code:ensure_loaded(Mod) of
            {module, Mod} -> ok;
            {error, Why} -> throw({worker_not_loadable, Mod, Why})
        end,
        [throw({worker_missing_callback, Mod, F, A})
         || {F, A} <- [{init, 2}, {handle_call, 3}, {handle_cast, 2}],
            not erlang:function_exported(Mod, F, A)],
        NSegs = opt(segments, Opts, erlang:system_info(schedulers) * 4,
                    fun(N) -> is_integer(N) andalso N >= 1 andalso N =< 4096 end),
        Restart = opt(restart, Opts, temporary,
                      fun(R) -> lists:member(R, [temporary, transient, permanent]) end),
        Idle = opt(idle_timeout, Opts, infinity,
                   fun(T) -> T =:= infinity orelse (is_integer(T) andalso T > 0) end),
        Bits = opt(table_segments_log2, Opts, 8,
                fun(B) -> is_integer(B) andalso B >= 0 andalso B =< 16 end),
        SpawnOpts = opt(spawn_opts, Opts, [], fun is_list/1),
        Grace = opt(handoff_grace, Opts, 5000,
                    fun(G) -> is_integer(G) andalso G >= 0 end),
        Quorum = opt(quorum, Opts, 1, fun(Q) -> is_integer(Q) andalso Q >= 1 end),
        {ok, #shoal_cfg{pool = Pool, worker = Mod, args = maps:get(args, Opts, undefined),
                        segs = list_to_tuple([seg_name(Pool, I) || I <- lists:seq(1, NSegs)]),
                        restart = Restart, idle_timeout = Idle,
                        has_load = erlang:function_exported(Mod, load, 2),
                        has_idle = erlang:function_exported(Mod, idle, 1),
                        trap_exit = erlang:function_exported(Mod, terminate, 2),
                        spawn_opts = SpawnOpts, table_bits = Bits, grace = Grace,
                        quorum = Quorum,
                        %% filled in by the member when it starts:
                        table = undefined, counters = undefined, meter = undefined}}
    catch
        throw:Reason -> {error, Reason}
    end.

%% A proper list of {Key, Value} pairs with atom keys (the first of repeated keys wins), else
%% error. Bare atoms are rejected: no pool option is a flag.
proplist_to_map(L) ->
    try lists:foldr(fun({K, V}, M) when is_atom(K) -> M#{K => V} end, #{}, L) of
        Map -> {ok, Map}
    catch error:_ -> error
    end.

opt(Key, Opts, Default, Valid) ->
    V = maps:get(Key, Opts, Default),
    case Valid(V) of
        true -> V;
        false -> throw({bad_option, Key, V})
    end.

%% @private
-spec init(#shoal_cfg{}) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init(#shoal_cfg{pool = Pool, segs = Segs} = Cfg) ->
    Server = #{id => server, start => {shoal_member, start_link, [Cfg]},
               shutdown => 5000},
    SegSpecs = [#{id => {segment, I},
                  start => {shoal_segment, start_link, [Pool, element(I, Segs)]},
                  type => supervisor, shutdown => infinity}
                || I <- lists:seq(1, tuple_size(Segs))],
    %% The member starts last, once every worker it may be asked to start has its segment,
    %% and so stops first: its peers drop its replicas before its workers stop.
    {ok, {#{strategy => one_for_all, intensity => 3, period => 5}, SegSpecs ++ [Server]}}.

%% @private The registered name of segment I of Pool.
-spec seg_name(atom(), pos_integer()) -> atom().
seg_name(Pool, I) ->
    list_to_atom("shoal_seg_" ++ atom_to_list(Pool) ++ "_" ++ integer_to_list(I)).

sup_name(Pool) -> list_to_atom("shoal_pool_" ++ atom_to_list(Pool)).
