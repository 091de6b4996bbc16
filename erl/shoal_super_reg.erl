%% @doc The registry of one shoal_super supervisor: a public ordered_set ETS table created
%% and owned by the supervisor's server (shoal_super_server), found through
%% persistent_term. This module is the only one that knows the table's layout.
%%
%% Every key space has one writer:
%% <ul>
%% <li>`{container, Kind}' -> pid: the container supervisor itself, in its init.</li>
%% <li>`{group, G}' -> group supervisor pid, options: the group supervisor, in its init.</li>
%% <li>`{member, G, W}' -> send pid, member pid, group supervisor pid: the process that
%%     starts the member (the group supervisor for a local member, the member's proxy for
%%     a remote one); reverse entries `{mpid, Pid}' -> G, W for gen_server members.</li>
%% <li>`{worker, W}' -> pid: the standalone worker's own supervisor.</li>
%% <li>`{chain, C}' -> chain context, first step's route, and `{route, C, Step}' -> route:
%%     the chain's manager (shoal_super_chain_mgr).</li>
%% </ul>
%% Deletion of the entries of an entity that died on its own (a group past its restart
%% intensity, say) is the server's, which monitors each entity.
-module(shoal_super_reg).

-include("shoal_super.hrl").

-export([new/0, publish/1, sup/1,
         put_container/3, container/2,
         put_group/4, group/2, delete_group/3,
         put_member/6, member/3, members/2, delete_member/4, delete_members/3,
         put_mpid/4, mpid/2,
         put_worker/4, worker/2, delete_worker/3,
         put_chain/4, chain/2, put_route/5, route/3, delete_chain/3]).

%% @doc A new registry table (called by the server that owns it).
-spec new() -> ets:tid().
new() -> ets:new(shoal_super_reg, [ordered_set, public, {read_concurrency, true}]).

%% @doc Make supervisor `SS#ss.id' findable by its id (replacing the record of an earlier
%% supervisor of that id; records are never erased, see sup/1).
-spec publish(#ss{}) -> ok.
publish(#ss{id = Id} = SS) -> persistent_term:put(?SS_KEY(Id), SS).

%% @doc The running supervisor Id (a record whose server is gone is an earlier one).
-spec sup(term()) -> {ok, #ss{}} | error.
sup(Id) when is_atom(Id) ->
    case persistent_term:get(?SS_KEY(Id), undefined) of
        #ss{server = S} = SS ->
            case is_process_alive(S) of
                true -> {ok, SS};
                false -> error
            end;
        undefined -> error
    end;
sup(_) -> error.

%% @doc Register a container supervisor (`groups', `chains' or `workers').
-spec put_container(ets:tid(), atom(), pid()) -> ok.
put_container(Tab, Kind, Pid) -> true = ets:insert(Tab, {{container, Kind}, Pid}), ok.

%% @doc A container supervisor's pid.
-spec container(ets:tid(), atom()) -> pid().
container(Tab, Kind) -> ets:lookup_element(Tab, {container, Kind}, 2).

%% @doc Register group G's supervisor.
-spec put_group(ets:tid(), term(), pid(), map()) -> ok.
put_group(Tab, G, Pid, Opts) -> true = ets:insert(Tab, {{group, G}, Pid, Opts}), ok.

%% @doc Group G: its supervisor and options.
-spec group(ets:tid(), term()) -> {ok, pid(), map()} | error.
group(Tab, G) ->
    case ets:lookup(Tab, {group, G}) of
        [{_, Pid, Opts}] -> {ok, Pid, Opts};
        [] -> error
    end.

%% @doc Forget group G and its members, if Pid is still its supervisor.
-spec delete_group(ets:tid(), term(), pid()) -> ok.
delete_group(Tab, G, Pid) ->
    _ = ets:select_delete(Tab, [{{{group, G}, Pid, '_'}, [], [true]}]),
    delete_members(Tab, G, Pid).

%% @doc Register member W of group G: messages go to Send (the member itself, or its host
%% on another node), Real is the member process, GroupPid its group's supervisor.
-spec put_member(ets:tid(), term(), term(), pid(), pid(), pid()) -> ok.
put_member(Tab, G, W, Send, Real, GroupPid) ->
    true = ets:insert(Tab, {{member, G, W}, Send, Real, GroupPid}), ok.

%% @doc Member W of group G: the pid to send to and the member process.
-spec member(ets:tid(), term(), term()) -> {ok, pid(), pid()} | error.
member(Tab, G, W) ->
    case ets:lookup(Tab, {member, G, W}) of
        [{_, Send, Real, _}] -> {ok, Send, Real};
        [] -> error
    end.

%% @doc Every registered member of group G: `[{W, Send, Real}]' in id order.
-spec members(ets:tid(), term()) -> [{term(), pid(), pid()}].
members(Tab, G) ->
    case ms_safe(G) of
        true -> ets:select(Tab, [{{{member, G, '$1'}, '$2', '$3', '_'}, [], [{{'$1', '$2', '$3'}}]}]);
        false -> ets:select(Tab, [{{{member, '$4', '$1'}, '$2', '$3', '_'},
                                   [{'=:=', '$4', {const, G}}], [{{'$1', '$2', '$3'}}]}])
    end.

%% @doc Forget member W of group G if it is still registered by GroupPid's group (an entry
%% written meanwhile by a newer group of that name stays).
-spec delete_member(ets:tid(), term(), term(), pid()) -> ok.
delete_member(Tab, G, W, GroupPid) ->
    case ets:lookup(Tab, {member, G, W}) of
        [{_, _, Real, GroupPid} = Entry] ->
            true = ets:delete_object(Tab, Entry),
            true = ets:delete_object(Tab, {{mpid, Real}, G, W}),
            ok;
        _ -> ok
    end.

%% @doc Forget every member of group G registered by GroupPid's group.
-spec delete_members(ets:tid(), term(), pid()) -> ok.
delete_members(Tab, G, GroupPid) ->
    [delete_member(Tab, G, W, GroupPid) || {W, _, _} <- members(Tab, G)],
    ok.

%% @doc Remember which member a process is (for gen_server members, which cannot be given
%% their context before their init runs).
-spec put_mpid(ets:tid(), pid(), term(), term()) -> ok.
put_mpid(Tab, Pid, G, W) -> true = ets:insert(Tab, {{mpid, Pid}, G, W}), ok.

%% @doc The group and member id of process Pid.
-spec mpid(ets:tid(), pid()) -> {ok, term(), term()} | error.
mpid(Tab, Pid) ->
    case ets:lookup(Tab, {mpid, Pid}) of
        [{_, G, W}] -> {ok, G, W};
        [] -> error
    end.

%% @doc Register standalone worker W (Pid) run by its own supervisor SupPid.
-spec put_worker(ets:tid(), term(), pid(), pid()) -> ok.
put_worker(Tab, W, Pid, SupPid) -> true = ets:insert(Tab, {{worker, W}, Pid, SupPid}), ok.

%% @doc Standalone worker W: its pid and its supervisor's.
-spec worker(ets:tid(), term()) -> {ok, pid(), pid()} | error.
worker(Tab, W) ->
    case ets:lookup(Tab, {worker, W}) of
        [{_, Pid, SupPid}] -> {ok, Pid, SupPid};
        [] -> error
    end.

%% @doc Forget standalone worker W if SupPid is still its supervisor.
-spec delete_worker(ets:tid(), term(), pid()) -> ok.
delete_worker(Tab, W, SupPid) ->
    _ = ets:select_delete(Tab, [{{{worker, W}, '_', SupPid}, [], [true]}]),
    ok.

%% @doc Publish chain C's context and the route to its first step (`undefined' while it
%% has no step).
-spec put_chain(ets:tid(), term(), #sc{}, #route{} | undefined) -> ok.
put_chain(Tab, C, SC, First) -> true = ets:insert(Tab, {{chain, C}, SC, First}), ok.

%% @doc Chain C's context and its first step's route.
-spec chain(ets:tid(), term()) -> {ok, #sc{}, #route{} | undefined} | error.
chain(Tab, C) ->
    case ets:lookup(Tab, {chain, C}) of
        [{_, SC, First}] -> {ok, SC, First};
        [] -> error
    end.

%% @doc Publish the route to step S of chain C (by its manager Mgr).
-spec put_route(ets:tid(), term(), term(), #route{}, pid()) -> ok.
put_route(Tab, C, S, Route, Mgr) -> true = ets:insert(Tab, {{route, C, S}, Route, Mgr}), ok.

%% @doc The route to step S of chain C.
-spec route(ets:tid(), term(), term()) -> {ok, #route{}} | error.
route(Tab, C, S) ->
    case ets:lookup(Tab, {route, C, S}) of
        [{_, R, _}] -> {ok, R};
        [] -> error
    end.

%% @doc Forget chain C and its routes, if Mgr is still its manager (what a newer chain of
%% that name wrote meanwhile stays).
-spec delete_chain(ets:tid(), term(), pid()) -> ok.
delete_chain(Tab, C, Mgr) ->
    MS = case ms_safe(C) of
             true -> [{{{route, C, '_'}, '_', Mgr}, [], [true]}];
             false -> [{{{route, '$1', '_'}, '_', Mgr}, [{'=:=', '$1', {const, C}}], [true]}]
         end,
    _ = ets:select_delete(Tab, MS),
    case ets:lookup(Tab, {chain, C}) of
        [{_, #sc{mgr = Mgr}, _} = Entry] -> true = ets:delete_object(Tab, Entry), ok;
        _ -> ok
    end.

%% A term can stand for itself in a match specification's head unless it holds an atom
%% that match specifications read as a variable or a wildcard.
ms_safe(A) when is_atom(A) ->
    case atom_to_list(A) of
        "_" -> false;
        [$$ | _] -> false;
        _ -> true
    end;
ms_safe(T) when is_tuple(T) -> ms_safe(tuple_to_list(T));
ms_safe([H | T]) -> ms_safe(H) andalso ms_safe(T);
ms_safe(M) when is_map(M) -> ms_safe(maps:to_list(M));
ms_safe(_) -> true.
