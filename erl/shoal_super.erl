%% @doc shoal_super: one supervisor for groups, chains and standalone workers, added at run
%% time or declared up front, locally or over a Shoal cluster.
%%
%% <ul>
%% <li><b>Groups</b>: workers that live and die together (`one_for_all') or are restarted
%%     one by one (`one_for_one'), each group with its own restart intensity; messages to
%%     one member, a random member, or all of them.</li>
%% <li><b>Chains</b>: pipelines; what a step returns goes to the next step, the last
%%     step's result to `on_finish'. Bounded (back-pressure at the entry), auto-scaled per
%%     step, and every item accepted reaches `on_finish' exactly once.</li>
%% <li><b>Standalone workers</b>, each with its own restart policy.</li>
%% </ul>
%% Each group, chain and standalone worker runs under an OTP supervisor of its own, so a
%% crash (even one past its restart intensity) never restarts anything else, and adding or
%% removing one never restarts anything else either.
%%
%% Every run-time call returns `ok', `{ok, _}' or `{error, Reason}'; an unknown
%% supervisor, group, chain, step or worker is `{error, {no_such_supervisor | no_such_group
%% | no_such_chain | no_such_step | no_such_worker, Id}}'. Messages are plain sends (no
%% call, no server on the way), so they never time out.
%%
%% See docs/tools.md, "Groups, chains and standalone workers", for the guarantees and for
%% placement over a cluster.
-module(shoal_super).

-include("shoal_super.hrl").

-export([start_link/2, child_spec/2, stop/1]).
-export([add_group/3, remove_group/2, add_group_worker/4, remove_group_worker/3,
         group_workers/2, send_to_group/4, send_to_random/3, broadcast/3]).
-export([my_group/0, send_to_my_group/2, send_to_random_sibling/1, broadcast_to_my_group/1,
         random_sibling/4]).
-export([add_chain/3, remove_chain/2, add_chain_step/4, send_to_chain/3, send_to_chain/4,
         send_to_step/4, send_to_step/5, chain_info/2]).
-export([add_worker/3, send_to_worker/3, remove_worker/2, workers/1]).
-export([start_host_pool/1]).

-export_type([sup/0, options/0, outcome/0]).

-type sup() :: atom().
-type options() :: #{groups => [{term(), map(), [{shoal_super_opts:worker_spec(), map()}]}],
                     chains => [{term(), map(), [{shoal_super_opts:step_spec(), map()}]}],
                     workers => [{shoal_super_opts:worker_spec(), map()}],
                     cluster => atom()}.
-type outcome() :: {ok, term()}
                 | {dropped, StepId :: term(), Reason :: term(), Data :: term()}
                 | {error, StepId :: term(), Reason :: term(), Data :: term()}
                 | {crashed, StepId :: term(), {Class :: atom(), Reason :: term()}, Data :: term()}
                 | {stopped, StepId :: term(), Reason :: term(), Data :: term()}
                 | {lost, StepId :: term(), Reason :: term(), EntryData :: term()}.

%%% The supervisor ------------------------------------------------------------------------

%% @doc Start supervisor Id (registered locally as Id) and load what Opts declares:
%% `groups => [{GroupId, GroupOpts, [{WorkerSpec, WorkerOpts}]}]',
%% `chains => [{ChainId, ChainOpts, [{StepSpec, StepOpts}]}]',
%% `workers => [{WorkerSpec, WorkerOpts}]' (the shapes add_group/3 + add_group_worker/4,
%% add_chain/3 + add_chain_step/4 and add_worker/3 take), and `cluster => Pool', the Shoal
%% pool (started with start_host_pool/1 on every node) that hosts members and steps placed
%% on other nodes. Options or specs of the wrong shape fail the start before anything is
%% started, with the error the run-time call gives (`{error, {bad_worker_spec, Spec}}', ...);
%% a declaration refused while loading (a duplicate id, ...) fails it with `{error,
%% {declaration, What, Reason}}'. Either way nothing is left running.
-spec start_link(sup(), options()) -> {ok, pid()} | {error, term()}.
start_link(Id, Opts) when is_atom(Id) ->
    case shoal_super_opts:super(Opts) of
        {ok, #{cluster := Cluster}} ->
            case shoal_super_sup:start_link(Id, Cluster) of
                {ok, Pid} ->
                    case load(Id, Opts) of
                        ok -> {ok, Pid};
                        {error, _} = E -> stop_pid(Pid), E
                    end;
                {error, _} = E -> E
            end;
        {error, _} = E -> E
    end;
start_link(Id, _Opts) ->
    {error, {bad_id, Id}}.

%% @doc A child spec that runs supervisor Id in your own supervision tree.
-spec child_spec(sup(), options()) -> supervisor:child_spec().
child_spec(Id, Opts) ->
    #{id => {shoal_super, Id}, start => {?MODULE, start_link, [Id, Opts]},
      type => supervisor, shutdown => infinity}.

%% @doc Stop supervisor Id and everything under it (chains report the items they still
%% hold as `stopped'). Under your own supervisor, use supervisor:terminate_child/2
%% instead, or it is restarted.
-spec stop(sup()) -> ok | {error, {no_such_supervisor, sup()}}.
stop(Id) ->
    case shoal_super_reg:sup(Id) of
        {ok, _} ->
            try gen_server:stop(Id, normal, infinity)
            catch exit:_ -> {error, {no_such_supervisor, Id}}
            end;
        error -> {error, {no_such_supervisor, Id}}
    end.

load(Id, Opts) ->
    Steps = [{{group, G}, fun() -> add_group(Id, G, GO) end,
              [{{group_worker, G, maps:get(id, WO, undefined)},
                fun() -> ok_of(add_group_worker(Id, G, S, WO)) end, []} || {S, WO} <- Ws]}
             || {G, GO, Ws} <- maps:get(groups, Opts, [])] ++
        [{{chain, C}, fun() -> add_chain(Id, C, CO) end,
          [{{chain_step, C, maps:get(id, SO, undefined)},
            fun() -> add_chain_step(Id, C, S, SO) end, []} || {S, SO} <- Ss]}
         || {C, CO, Ss} <- maps:get(chains, Opts, [])] ++
        [{{worker, maps:get(id, WO, undefined)}, fun() -> ok_of(add_worker(Id, S, WO)) end, []}
         || {S, WO} <- maps:get(workers, Opts, [])],
    run_load(Steps).

run_load([]) -> ok;
run_load([{What, Fun, Then} | Rest]) ->
    case Fun() of
        ok -> run_load(Then ++ Rest);
        {error, Reason} -> {error, {declaration, What, Reason}}
    end.

ok_of({ok, _}) -> ok;
ok_of(Other) -> Other.

stop_pid(Pid) ->
    unlink(Pid),
    Ref = erlang:monitor(process, Pid),
    exit(Pid, shutdown),
    receive {'DOWN', Ref, process, Pid, _} -> ok end.

%%% Groups --------------------------------------------------------------------------------

%% @doc Add group GroupId. Options: `restart' (`one_for_one', the default, or
%% `one_for_all'), `max_restarts' (default 3) within `max_seconds' (default 5): past that
%% the group ends and is forgotten, nothing else is touched; `placement' (`local', the
%% default, `spread' or `#{node => Node}': where its members run, see docs/tools.md).
-spec add_group(sup(), term(), map()) -> ok | {error, term()}.
add_group(Sup, G, Opts) ->
    with_sup(Sup, fun(SS) -> shoal_super_group:add(SS, G, Opts) end).

%% @doc Stop group GroupId and its members.
-spec remove_group(sup(), term()) -> ok | {error, term()}.
remove_group(Sup, G) ->
    with_sup(Sup, fun(SS) -> shoal_super_group:remove(SS, G) end).

%% @doc Start a member of group GroupId from WorkerSpec (`{gen_server, Module, Args}',
%% `{M, F, A}' or a zero-arity fun: the process body). Options: `id' (required, unique in
%% the group), `restart' (`permanent', the default, `transient' or `temporary'),
%% `shutdown' (ms, default 5000), `placement' (default: the group's). Returns the
%% member's pid. Starting it restarts no other member.
-spec add_group_worker(sup(), term(), shoal_super_opts:worker_spec(), map()) ->
          {ok, pid()} | {error, term()}.
add_group_worker(Sup, G, Spec, Opts) ->
    with_sup(Sup, fun(SS) -> shoal_super_group:add_worker(SS, G, Spec, Opts) end).

%% @doc Stop member WorkerId of group GroupId and forget it; no other member is restarted.
-spec remove_group_worker(sup(), term(), term()) -> ok | {error, term()}.
remove_group_worker(Sup, G, W) ->
    with_sup(Sup, fun(SS) -> shoal_super_group:remove_worker(SS, G, W) end).

%% @doc The members of group GroupId, in the order they were added:
%% `{ok, [{WorkerId, Pid | restarting | undefined}]}'.
-spec group_workers(sup(), term()) -> {ok, [{term(), pid() | restarting | undefined}]} | {error, term()}.
group_workers(Sup, G) ->
    with_sup(Sup, fun(SS) -> shoal_super_group:workers(SS, G) end).

%% @doc Send Msg to member WorkerId of group GroupId (a plain send). `{error, {not_running,
%% Id}}' while a local member is being restarted.
-spec send_to_group(sup(), term(), term(), term()) -> ok | {error, term()}.
send_to_group(Sup, G, W, Msg) ->
    with_sup(Sup, fun(SS) -> shoal_super_group:send(SS, G, W, Msg) end).

%% @doc Send Msg to a running member of group GroupId picked at random; `{error,
%% no_workers}' if none is running.
-spec send_to_random(sup(), term(), term()) -> ok | {error, term()}.
send_to_random(Sup, G, Msg) ->
    with_sup(Sup, fun(SS) -> shoal_super_group:send_random(SS, G, Msg, none) end).

%% @doc Send Msg to every running member of group GroupId. Returns at once: no member is
%% waited for.
-spec broadcast(sup(), term(), term()) -> ok | {error, term()}.
broadcast(Sup, G, Msg) ->
    with_sup(Sup, fun(SS) -> shoal_super_group:broadcast(SS, G, Msg) end).

%%% From inside a group member ------------------------------------------------------------

%% @doc The group the calling member belongs to: `{ok, #{sup, owner, group, id}}' (owner:
%% the node of the supervisor), or `{error, not_a_group_member}'. A gen_server member can
%% use this (and the calls below) once its init/1 has returned.
-spec my_group() -> {ok, shoal_super_worker:context()} | {error, not_a_group_member}.
my_group() -> shoal_super_worker:context().

%% @doc From inside a member: send Msg to member WorkerId of my group.
-spec send_to_my_group(term(), term()) -> ok | {error, term()}.
send_to_my_group(W, Msg) ->
    in_group(fun(#{sup := Sup, group := G}) -> send_to_group(Sup, G, W, Msg) end,
             send_to_group, fun(#{sup := Sup, group := G}) -> [Sup, G, W, Msg] end).

%% @doc From inside a member: send Msg to another running member of my group, at random;
%% `{error, no_workers}' if I am alone.
-spec send_to_random_sibling(term()) -> ok | {error, term()}.
send_to_random_sibling(Msg) ->
    Self = self(),
    case my_group() of
        {ok, #{sup := Sup, owner := Owner, group := G}} when Owner =:= node() ->
            with_sup(Sup, fun(SS) -> shoal_super_group:send_random(SS, G, Msg, Self) end);
        {ok, #{sup := Sup, owner := Owner, group := G}} ->
            remote(Owner, fun() -> erpc:call(Owner, ?MODULE, random_sibling, [Sup, G, Msg, Self]) end);
        {error, _} = E -> E
    end.

%% @doc From inside a member: send Msg to every running member of my group (me included).
-spec broadcast_to_my_group(term()) -> ok | {error, term()}.
broadcast_to_my_group(Msg) ->
    in_group(fun(#{sup := Sup, group := G}) -> broadcast(Sup, G, Msg) end,
             broadcast, fun(#{sup := Sup, group := G}) -> [Sup, G, Msg] end).

in_group(Local, Fun, Args) ->
    case my_group() of
        {ok, #{owner := Owner} = Ctx} when Owner =:= node() -> Local(Ctx);
        {ok, #{owner := Owner} = Ctx} ->
            remote(Owner, fun() -> erpc:call(Owner, ?MODULE, Fun, Args(Ctx)) end);
        {error, _} = E -> E
    end.

remote(Owner, Fun) ->
    try Fun()
    catch error:{erpc, R} -> {error, {owner_unreachable, Owner, R}}
    end.

%% @private send_to_random_sibling/1 for a member on another node, run on the owner node.
-spec random_sibling(sup(), term(), term(), pid()) -> ok | {error, term()}.
random_sibling(Sup, G, Msg, Except) ->
    with_sup(Sup, fun(SS) -> shoal_super_group:send_random(SS, G, Msg, Except) end).

%%% Chains --------------------------------------------------------------------------------

%% @doc Add chain ChainId (steps come with add_chain_step/4). Options: `on_finish' (fun/1
%% or `{M, F, A}', called with each item's outcome, see outcome()), `max_queue' (items in
%% the chain at once, default 1000: send_to_chain waits for room beyond that),
%% `dispatch' (how a step's workers share items: `round_robin', the default, `random',
%% `hash' (of the data) or `broadcast' (every worker gets a copy)), `delivery'
%% (`at_most_once', the default, or `at_least_once': what happens to items held by a worker
%% that dies), `restart' (`one_for_one' or `one_for_all', for exits of worker processes),
%% `max_restarts' (default 10) within `max_seconds' (default 5), `placement' (default
%% `local').
-spec add_chain(sup(), term(), map()) -> ok | {error, term()}.
add_chain(Sup, C, Opts) ->
    with_sup(Sup, fun(SS) -> shoal_super_chain:add(SS, C, Opts) end).

%% @doc Stop chain ChainId; items still in it are reported `stopped' to on_finish.
-spec remove_chain(sup(), term()) -> ok | {error, term()}.
remove_chain(Sup, C) ->
    with_sup(Sup, fun(SS) -> shoal_super_chain:remove(SS, C, removed) end).

%% @doc Append a step to chain ChainId. StepSpec is a one-argument fun or `{M, F, A}'
%% (called with the data prepended to A). It returns `{next, D}' (pass D on), `{drop,
%% Reason}' (end this item), `{stop, Reason}' (end this item and stop the chain), `{error,
%% Reason}' (end this item as failed) or any other value (passed on as the data).
%% Options: `id' (required), `workers' (a count, default 1, or `#{min, max}' to
%% auto-scale; see docs/tools.md), `dispatch' and `placement' (default: the chain's).
-spec add_chain_step(sup(), term(), shoal_super_opts:step_spec(), map()) -> ok | {error, term()}.
add_chain_step(Sup, C, Spec, Opts) ->
    with_sup(Sup, fun(SS) -> shoal_super_chain:add_step(SS, C, Spec, Opts) end).

%% @equiv send_to_chain(Sup, ChainId, Data, 5000)
-spec send_to_chain(sup(), term(), term()) -> ok | {error, term()}.
send_to_chain(Sup, C, Data) -> send_to_chain(Sup, C, Data, ?DEFAULT_TIMEOUT).

%% @doc Send Data into chain ChainId at its first step. When the chain holds `max_queue'
%% items, waits up to Timeout ms for room, then returns `{error, overloaded}' (the item was
%% not taken). `ok' means the item will reach on_finish.
-spec send_to_chain(sup(), term(), term(), timeout()) -> ok | {error, term()}.
send_to_chain(Sup, C, Data, Timeout) ->
    with_sup(Sup, fun(SS) -> shoal_super_chain:send(SS, C, Data, Timeout) end).

%% @equiv send_to_step(Sup, ChainId, StepId, Data, 5000)
-spec send_to_step(sup(), term(), term(), term()) -> ok | {error, term()}.
send_to_step(Sup, C, Step, Data) -> send_to_step(Sup, C, Step, Data, ?DEFAULT_TIMEOUT).

%% @doc Send Data into chain ChainId at step StepId (the steps before it are skipped);
%% back-pressure as send_to_chain/4.
-spec send_to_step(sup(), term(), term(), term(), timeout()) -> ok | {error, term()}.
send_to_step(Sup, C, Step, Data, Timeout) ->
    with_sup(Sup, fun(SS) -> shoal_super_chain:send_to_step(SS, C, Step, Data, Timeout) end).

%% @doc Chain ChainId's figures: `{ok, #{chain, in_flight, max_queue, delivery, steps =>
%% [#{id, workers, min, max, queue, throughput, processed, nodes, dispatch,
%% placement}]}}'. `queue' is the items waiting at the step, `throughput' the items per
%% second it handled over the last sample (every `scale_interval' ms for an auto-scaled
%% chain, else every second), `processed' its total since the chain started.
%% `{error, timeout}' if the chain's manager was busy for 10 s (placing workers on other
%% nodes).
-spec chain_info(sup(), term()) -> {ok, map()} | {error, term()}.
chain_info(Sup, C) ->
    with_sup(Sup, fun(SS) -> shoal_super_chain:info(SS, C) end).

%%% Standalone workers --------------------------------------------------------------------

%% @doc Start a standalone worker from WorkerSpec (as for group workers). Options: `id'
%% (required), `restart' (`permanent', the default, `transient' or `temporary'),
%% `max_restarts' (default 3) within `max_seconds' (default 5), `shutdown'. Its crashes
%% restart it alone; past its intensity it ends and is forgotten, alone.
-spec add_worker(sup(), shoal_super_opts:worker_spec(), map()) -> {ok, pid()} | {error, term()}.
add_worker(Sup, Spec, Opts) ->
    with_sup(Sup, fun(SS) -> add_solo(SS, Spec, Opts) end).

%% @doc Send Msg to standalone worker WorkerId.
-spec send_to_worker(sup(), term(), term()) -> ok | {error, term()}.
send_to_worker(Sup, W, Msg) ->
    with_sup(Sup, fun(#ss{tab = Tab}) ->
                          case shoal_super_reg:worker(Tab, W) of
                              {ok, Pid, _} ->
                                  case is_process_alive(Pid) of
                                      true -> Pid ! Msg, ok;
                                      false -> {error, {not_running, W}}
                                  end;
                              error -> {error, {no_such_worker, W}}
                          end
                  end).

%% @doc Stop standalone worker WorkerId and forget it.
-spec remove_worker(sup(), term()) -> ok | {error, term()}.
remove_worker(Sup, W) ->
    with_sup(Sup, fun(#ss{tab = Tab}) ->
                          case shoal_super_reg:worker(Tab, W) of
                              {ok, _, SupPid} ->
                                  Workers = shoal_super_reg:container(Tab, workers),
                                  _ = supervisor:terminate_child(Workers, W),
                                  _ = supervisor:delete_child(Workers, W),
                                  shoal_super_reg:delete_worker(Tab, W, SupPid);
                              error -> {error, {no_such_worker, W}}
                          end
                  end).

%% @doc The standalone workers: `{ok, [{WorkerId, Pid}]}'.
-spec workers(sup()) -> {ok, [{term(), pid()}]} | {error, term()}.
workers(Sup) ->
    with_sup(Sup, fun(#ss{tab = Tab}) ->
                          Workers = shoal_super_reg:container(Tab, workers),
                          {ok, [{W, Pid} || {W, S, _, _} <- supervisor:which_children(Workers),
                                            is_pid(S),
                                            {ok, Pid, _} <- [shoal_super_reg:worker(Tab, W)]]}
                  end).

add_solo(#ss{tab = Tab} = SS, Spec, Opts0) ->
    case {shoal_super_opts:worker_spec(Spec), shoal_super_opts:worker(Opts0)} of
        {ok, {ok, #{id := W} = Opts}} ->
            Child = #{id => W, start => {shoal_super_sup, start_solo, [SS, W, Spec, Opts]},
                      restart => temporary, type => supervisor, shutdown => infinity},
            case supervisor:start_child(shoal_super_reg:container(Tab, workers), Child) of
                {ok, _SupPid} ->
                    case shoal_super_reg:worker(Tab, W) of
                        {ok, Pid, _} -> {ok, Pid};
                        error -> {error, {not_running, W}}
                    end;
                {error, {already_started, _}} -> {error, {already_exists, W}};
                {error, already_present} -> {error, {already_exists, W}};
                {error, {shutdown, {failed_to_start_child, W, Reason}}} -> {error, Reason};
                {error, _} = E -> E
            end;
        {{error, _} = E, _} -> E;
        {_, {error, _} = E} -> E
    end.

%%% The cluster ---------------------------------------------------------------------------

%% @doc Start Shoal pool Pool on this node as a host of remote group members and chain
%% steps (call it on every node of the cluster, then give `cluster => Pool' to the
%% supervisors that place work on other nodes). `ok' if it runs already.
-spec start_host_pool(atom()) -> ok | {error, term()}.
start_host_pool(Pool) -> shoal_super_place:start_host_pool(Pool).

%%% Internals -----------------------------------------------------------------------------

%% Run Fun with supervisor Sup's record; a supervisor (or one of its parts) that stops
%% while we use it is an unknown supervisor, not a crash.
with_sup(Sup, Fun) ->
    case shoal_super_reg:sup(Sup) of
        {ok, SS} ->
            try Fun(SS)
            catch
                error:badarg:Stack ->
                    case shoal_super_reg:sup(Sup) of
                        error -> {error, {no_such_supervisor, Sup}};
                        {ok, _} -> erlang:raise(error, badarg, Stack)
                    end;
                exit:{noproc, _} = Why:Stack ->
                    case shoal_super_reg:sup(Sup) of
                        error -> {error, {no_such_supervisor, Sup}};
                        {ok, _} -> erlang:raise(exit, Why, Stack)
                    end
            end;
        error -> {error, {no_such_supervisor, Sup}}
    end.
