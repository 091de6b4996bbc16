%% @doc Chains (pipelines) of a shoal_super supervisor: their supervision and the calls that
%% reach them. Each chain is a `temporary' child of the supervisor's `chains' container:
%% ```
%% chain C                   one_for_all, intensity 0: the chain lives and ends as one
%% ├── manager               shoal_super_chain_mgr (routes, ledger, scaling)
%% └── workers               the chain's `restart' strategy (one_for_one | one_for_all)
%%     └── {StepId, N}       shoal_super_step, or shoal_super_remote for a remote worker
%% '''
%% The manager is started first and stopped last, so the workers can hand their queued
%% items back to it when they shut down. The chain's `restart', `max_restarts' and
%% `max_seconds' apply to exits of the worker processes (a step function that raises does
%% not make its worker exit; see shoal_super_step); past that intensity the chain ends,
%% reporting every item still in it as `stopped', and nothing else is touched.
-module(shoal_super_chain).
-behaviour(supervisor).

-include("shoal_super.hrl").

-export([add/3, remove/3, add_step/4, send/4, send_to_step/5, info/2]).
-export([start_link/3, start_workers_sup/1, init/1]).

%% @doc Add chain C (see shoal_super:add_chain/3).
-spec add(#ss{}, term(), term()) -> ok | {error, term()}.
add(#ss{tab = Tab, cluster = Cluster} = SS, C, Opts0) ->
    case shoal_super_opts:chain(Opts0) of
        {ok, #{placement := P}} when P =/= local, Cluster =:= undefined ->
            {error, no_cluster};
        {ok, Opts} ->
            Child = #{id => C, start => {?MODULE, start_link, [SS, C, Opts]},
                      restart => temporary, type => supervisor, shutdown => infinity},
            case supervisor:start_child(shoal_super_reg:container(Tab, chains), Child) of
                {ok, _} -> ok;
                {error, {already_started, _}} -> {error, {already_exists, C}};
                {error, already_present} -> {error, {already_exists, C}};
                {error, _} = E -> E
            end;
        {error, _} = E -> E
    end.

%% @doc Stop and remove chain C; every item still in it is reported `{stopped, Step,
%% Reason, Data}' to its on_finish.
-spec remove(#ss{}, term(), term()) -> ok | {error, {no_such_chain, term()}}.
remove(#ss{tab = Tab}, C, Reason) ->
    case shoal_super_reg:chain(Tab, C) of
        {ok, #sc{mgr = Mgr}, _} ->
            _ = (catch gen_server:call(Mgr, {stopping, Reason}, 5000)),
            Chains = shoal_super_reg:container(Tab, chains),
            _ = supervisor:terminate_child(Chains, C),
            _ = supervisor:delete_child(Chains, C),
            shoal_super_reg:delete_chain(Tab, C, Mgr);
        error -> {error, {no_such_chain, C}}
    end.

%% @doc Append a step to chain C (see shoal_super:add_chain_step/4).
-spec add_step(#ss{}, term(), term(), term()) -> ok | {error, term()}.
add_step(#ss{tab = Tab}, C, Spec, Opts0) ->
    case {shoal_super_opts:step_spec(Spec), shoal_super_opts:step(Opts0)} of
        {ok, {ok, Opts}} ->
            case shoal_super_reg:chain(Tab, C) of
                {ok, #sc{mgr = Mgr}, _} ->
                    try gen_server:call(Mgr, {add_step, Spec, Opts}, infinity)
                    catch exit:{noproc, _} -> {error, {no_such_chain, C}}
                    end;
                error -> {error, {no_such_chain, C}}
            end;
        {{error, _} = E, _} -> E;
        {_, {error, _} = E} -> E
    end.

%% @doc Send Data into chain C at its first step, waiting up to Timeout for room.
-spec send(#ss{}, term(), term(), timeout()) -> ok | {error, term()}.
send(#ss{tab = Tab}, C, Data, Timeout) ->
    case shoal_super_reg:chain(Tab, C) of
        {ok, SC, First} ->
            try shoal_super_flow:send(SC, First, Data, Timeout)
            catch error:badarg -> {error, {no_such_chain, C}}   %% removed meanwhile
            end;
        error -> {error, {no_such_chain, C}}
    end.

%% @doc Send Data into chain C at step StepId.
-spec send_to_step(#ss{}, term(), term(), term(), timeout()) -> ok | {error, term()}.
send_to_step(#ss{tab = Tab}, C, StepId, Data, Timeout) ->
    case shoal_super_reg:chain(Tab, C) of
        {ok, SC, _} ->
            case shoal_super_reg:route(Tab, C, StepId) of
                {ok, Route} ->
                    try shoal_super_flow:send(SC, Route, Data, Timeout)
                    catch error:badarg -> {error, {no_such_chain, C}}
                    end;
                error -> {error, {no_such_step, StepId}}
            end;
        error -> {error, {no_such_chain, C}}
    end.

%% @doc Chain C's figures (see shoal_super:chain_info/2).
-spec info(#ss{}, term()) -> {ok, map()} | {error, {no_such_chain, term()}}.
info(#ss{tab = Tab}, C) ->
    case shoal_super_reg:chain(Tab, C) of
        {ok, #sc{mgr = Mgr}, _} ->
            try gen_server:call(Mgr, info, 10000)
            catch
                exit:{noproc, _} -> {error, {no_such_chain, C}};
                exit:{timeout, _} -> {error, timeout}   %% busy placing workers on other nodes
            end;
        error -> {error, {no_such_chain, C}}
    end.

%% @private The supervisor of chain C.
-spec start_link(#ss{}, term(), map()) -> {ok, pid()} | {error, term()}.
start_link(SS, C, Opts) -> supervisor:start_link(?MODULE, {chain, SS, C, Opts}).

%% @private The supervisor of a chain's workers.
-spec start_workers_sup(map()) -> {ok, pid()} | {error, term()}.
start_workers_sup(Opts) -> supervisor:start_link(?MODULE, {workers, Opts}).

%% @private
-spec init(tuple()) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init({chain, SS, C, Opts}) ->
    Mgr = #{id => manager, start => {shoal_super_chain_mgr, start_link, [SS, C, Opts]},
            shutdown => 10000},
    Workers = #{id => workers, start => {?MODULE, start_workers_sup, [Opts]},
                type => supervisor, shutdown => infinity},
    {ok, {#{strategy => one_for_all, intensity => 0, period => 1}, [Mgr, Workers]}};
init({workers, #{restart := R, max_restarts := MaxR, max_seconds := MaxS}}) ->
    {ok, {#{strategy => R, intensity => MaxR, period => MaxS}, []}}.
