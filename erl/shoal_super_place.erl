%% @doc Where a remote group member or chain step worker goes, decided from Shoal's public
%% API only: the members of the host pool (shoal:nodes/1) and their health
%% (shoal:health/1: reachable, drained, count, window).
%%
%% `spread': the eligible node (reachable, not drained, below its window's `high') that
%% holds the fewest of the group's members (or of the step's workers), then the fewest
%% workers of the host pool, then by name. `#{node => N}': N while it is eligible, else as
%% `spread' (a pinned member whose node was drained or lost runs elsewhere; it is not
%% moved back).
-module(shoal_super_place).

-export([start_host_pool/1, choose/3]).

%% @doc Start Shoal pool Pool on this node with shoal_super_host workers; `ok' if it runs
%% already.
-spec start_host_pool(atom()) -> ok | {error, term()}.
start_host_pool(Pool) ->
    case shoal:start_pool(Pool, #{worker => shoal_super_host}) of
        {ok, _} -> ok;
        {error, {already_started, _}} -> ok;
        {error, _} = E -> E
    end.

%% @doc The node for a new worker of pool Pool with Placement, given the nodes that
%% already run its siblings (InUse, with repeats).
-spec choose(atom(), shoal_super_opts:placement(), [node()]) -> {ok, node()} | {error, term()}.
choose(Pool, Placement, InUse) ->
    try eligible(Pool) of
        [] -> {error, no_eligible_node};
        Eligible ->
            case Placement of
                #{node := N} ->
                    case lists:keymember(N, 1, Eligible) of
                        true -> {ok, N};
                        false -> spread(Eligible, InUse)
                    end;
                _ -> spread(Eligible, InUse)
            end
    catch exit:{{no_such_pool, _}, _} -> {error, {no_such_pool, Pool}}
    end.

spread(Eligible, InUse) ->
    Ranked = lists:sort([{count(N, InUse), Load, N} || {N, Load} <- Eligible]),
    {_, _, N} = hd(Ranked),
    {ok, N}.

count(N, L) -> length([X || X <- L, X =:= N]).

eligible(Pool) ->
    Connected = [node() | nodes()],
    #{nodes := Health} = shoal:health(Pool),
    [{N, C} || N <- shoal:nodes(Pool), lists:member(N, Connected),
               #{reachable := true, drained := false, count := C,
                 window := #{high := H}} <- [maps:get(N, Health, #{})],
               H =:= infinity orelse C < H].
