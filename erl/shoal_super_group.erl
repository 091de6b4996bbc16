%% @doc Groups of a shoal_super supervisor: workers that live and die together
%% (`one_for_all') or are restarted one by one (`one_for_one'), and messages to them.
%%
%% A group is an OTP supervisor of its own, a `temporary' child of the supervisor's
%% `groups' container, with the group's strategy and intensity. A crash in one group is
%% handled by that group's supervisor alone; if it exceeds its intensity the group ends
%% (and is forgotten) without touching any other group, chain or standalone worker.
%%
%% A member placed on another node (`placement') is a child of the group like any other:
%% a local proxy (shoal_super_remote) that runs it as a worker of the cluster's Shoal pool
%% and exits when it does, so the group's strategy applies to it unchanged.
%%
%% Messages are plain sends: the member's pid comes from the registry (an ETS read), and
%% no process is asked, so a busy or restarting member never makes a sender wait.
-module(shoal_super_group).
-behaviour(supervisor).

-include("shoal_super.hrl").

-export([add/3, remove/2, add_worker/4, remove_worker/3, workers/2,
         send/4, send_random/4, broadcast/3]).
-export([start_link/3, init/1]).

%% @doc Add group G (see shoal_super:add_group/3).
-spec add(#ss{}, term(), term()) -> ok | {error, term()}.
add(#ss{tab = Tab, cluster = Cluster} = SS, G, Opts0) ->
    case shoal_super_opts:group(Opts0) of
        {ok, #{placement := P}} when P =/= local, Cluster =:= undefined ->
            {error, no_cluster};
        {ok, Opts} ->
            Child = #{id => G, start => {?MODULE, start_link, [SS, G, Opts]},
                      restart => temporary, type => supervisor, shutdown => infinity},
            case supervisor:start_child(shoal_super_reg:container(Tab, groups), Child) of
                {ok, _} -> ok;
                {error, {already_started, _}} -> {error, {already_exists, G}};
                {error, already_present} -> {error, {already_exists, G}};
                {error, _} = E -> E
            end;
        {error, _} = E -> E
    end.

%% @doc Stop group G and all its members.
-spec remove(#ss{}, term()) -> ok | {error, {no_such_group, term()}}.
remove(#ss{tab = Tab}, G) ->
    case shoal_super_reg:group(Tab, G) of
        {ok, GPid, _} ->
            Groups = shoal_super_reg:container(Tab, groups),
            _ = supervisor:terminate_child(Groups, G),
            _ = supervisor:delete_child(Groups, G),
            shoal_super_reg:delete_group(Tab, G, GPid);
        error -> {error, {no_such_group, G}}
    end.

%% @doc Start a member of group G (see shoal_super:add_group_worker/4).
-spec add_worker(#ss{}, term(), term(), term()) -> {ok, pid()} | {error, term()}.
add_worker(#ss{tab = Tab, cluster = Cluster} = SS, G, Spec, Opts0) ->
    case {shoal_super_opts:worker_spec(Spec), shoal_super_opts:member(Opts0)} of
        {ok, {ok, #{id := W, restart := R, shutdown := Sh, placement := P0}}} ->
            case shoal_super_reg:group(Tab, G) of
                {ok, GPid, #{placement := GP}} ->
                    P = case P0 of default -> GP; _ -> P0 end,
                    Start = case P of
                                local -> {shoal_super_worker, start_member, [SS, G, W, Spec]};
                                _ -> {shoal_super_remote, start_link, [SS, {member, G, W, Spec, P}]}
                            end,
                    Child = #{id => W, start => Start, restart => R, shutdown => Sh},
                    if
                        P =/= local, Cluster =:= undefined -> {error, no_cluster};
                        true -> start_child(Tab, G, W, GPid, Child)
                    end;
                error -> {error, {no_such_group, G}}
            end;
        {{error, _} = E, _} -> E;
        {_, {error, _} = E} -> E
    end.

start_child(Tab, G, W, GPid, Child) ->
    try supervisor:start_child(GPid, Child) of
        {ok, _} ->
            case shoal_super_reg:member(Tab, G, W) of
                {ok, _, Real} -> {ok, Real};
                error -> {error, {not_running, W}}
            end;
        {error, {already_started, _}} -> {error, {already_exists, W}};
        {error, already_present} -> {error, {already_exists, W}};
        {error, _} = E -> E
    catch exit:{noproc, _} -> {error, {no_such_group, G}}
    end.

%% @doc Stop member W of group G and forget it; no other member is restarted.
-spec remove_worker(#ss{}, term(), term()) -> ok | {error, term()}.
remove_worker(#ss{tab = Tab}, G, W) ->
    case shoal_super_reg:group(Tab, G) of
        {ok, GPid, _} ->
            try supervisor:terminate_child(GPid, W) of
                ok ->
                    _ = supervisor:delete_child(GPid, W),
                    shoal_super_reg:delete_member(Tab, G, W, GPid);
                {error, not_found} -> {error, {no_such_worker, W}}
            catch exit:{noproc, _} -> {error, {no_such_group, G}}
            end;
        error -> {error, {no_such_group, G}}
    end.

%% @doc The members of group G: `{ok, [{Id, Pid | restarting | undefined}]}' in the order
%% they were added.
-spec workers(#ss{}, term()) -> {ok, [{term(), pid() | restarting | undefined}]} | {error, term()}.
workers(#ss{tab = Tab}, G) ->
    case shoal_super_reg:group(Tab, G) of
        {ok, GPid, _} ->
            try supervisor:which_children(GPid) of
                Children ->
                    {ok, [{W, case Child of
                                  P when is_pid(P) ->
                                      case shoal_super_reg:member(Tab, G, W) of
                                          {ok, _, Real} -> Real;
                                          error -> P
                                      end;
                                  Other -> Other
                              end} || {W, Child, _, _} <- lists:reverse(Children)]}
            catch exit:{noproc, _} -> {error, {no_such_group, G}}
            end;
        error -> {error, {no_such_group, G}}
    end.

%% @doc Send Msg to member W of group G.
-spec send(#ss{}, term(), term(), term()) -> ok | {error, term()}.
send(#ss{tab = Tab}, G, W, Msg) ->
    case shoal_super_reg:member(Tab, G, W) of
        {ok, To, _} ->
            case alive(To) of
                true -> To ! Msg, ok;
                false -> {error, {not_running, W}}
            end;
        error -> no_member(Tab, G, W)
    end.

%% @doc Send Msg to one member of group G picked at random among the running ones, other
%% than Except.
-spec send_random(#ss{}, term(), term(), pid() | none) -> ok | {error, term()}.
send_random(#ss{tab = Tab}, G, Msg, Except) ->
    case [To || {_, To, Real} <- shoal_super_reg:members(Tab, G), Real =/= Except, alive(To)] of
        [] ->
            case shoal_super_reg:group(Tab, G) of
                {ok, _, _} -> {error, no_workers};
                error -> {error, {no_such_group, G}}
            end;
        Live ->
            lists:nth(rand:uniform(length(Live)), Live) ! Msg,
            ok
    end.

%% @doc Send Msg to every running member of group G.
-spec broadcast(#ss{}, term(), term()) -> ok | {error, term()}.
broadcast(#ss{tab = Tab}, G, Msg) ->
    case shoal_super_reg:group(Tab, G) of
        {ok, _, _} ->
            _ = [To ! Msg || {_, To, _} <- shoal_super_reg:members(Tab, G), alive(To)],
            ok;
        error -> {error, {no_such_group, G}}
    end.

no_member(Tab, G, W) ->
    case shoal_super_reg:group(Tab, G) of
        {ok, _, _} -> {error, {no_such_worker, W}};
        error -> {error, {no_such_group, G}}
    end.

%% A local member that is gone (restarting) is not sent to; a remote one cannot be asked
%% without a round trip, so it is sent to.
alive(P) when node(P) =:= node() -> is_process_alive(P);
alive(_) -> true.

%% @private The supervisor of group G.
-spec start_link(#ss{}, term(), map()) -> {ok, pid()} | {error, term()}.
start_link(SS, G, Opts) -> supervisor:start_link(?MODULE, {SS, G, Opts}).

%% @private
-spec init({#ss{}, term(), map()}) -> {ok, {supervisor:sup_flags(), []}}.
init({#ss{tab = Tab} = SS, G, #{restart := R, max_restarts := MaxR, max_seconds := MaxS} = Opts}) ->
    case shoal_super_reg:group(Tab, G) of
        {ok, Old, _} -> shoal_super_reg:delete_group(Tab, G, Old);
        error -> ok
    end,
    ok = shoal_super_reg:put_group(Tab, G, self(), Opts),
    ok = shoal_super_server:watch(SS, group, G, self()),
    {ok, {#{strategy => R, intensity => MaxR, period => MaxS}, []}}.
