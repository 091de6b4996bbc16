%% @doc The cluster side of a pool: where a key is arbitrated and placed, and how workers
%% move (migrate, drain, rebalance). The registry itself (membership and replicas) lives in
%% shoal_pool_server.
%%
%% Spawn arbitration: a key's home node (rendezvous hash over the pool's members) claims it
%% in its own table, so racers anywhere in the cluster meet in one insert-if-absent. A
%% caller on another node reaches the home with one erpc; the home picks the host by the
%% nodes' windows and, if that is another node, asks it to spawn (a second hop only then).
%%
%% Migration: the worker itself runs it (see shoal_worker_proc): it marks its entry as
%% moving, calls handoff/1, asks the target to start a successor with takeover/3, points its
%% own table at the successor, and forwards whatever reaches it for the pool's
%% `handoff_grace' before it exits.
-module(shoal_cluster).

-include("shoal_int.hrl").

-export([members/1, resolve/3, place_async/2, place_key/3, spawn_here/3, takeover_here/3,
         takeover_batch/2, move_batch/3, choose_host/3,
         evacuate/1, move_some/3, rebalance/1, health/1, local_health/1, plan/1]).

-define(RPC_TIMEOUT, 15000).
-define(MOVERS, 8).
-define(MOVE_BATCH, 256).

%% @doc The pool's members as this node sees them (sorted, this node included).
-spec members(#shoal_cfg{}) -> [node(), ...].
members(#shoal_cfg{ctab = CTab}) ->
    case ets:lookup(CTab, members) of
        [{members, Ms}] -> Ms;
        [] -> [node()]
    end.

%% @doc The worker for Key, spawned wherever placement says if there is none.
-spec resolve(#shoal_cfg{}, term(), sync | nowait) -> {ok, pid()} | {error, term()}.
resolve(Cfg, Key, Wait) ->
    resolve(Cfg, Key, Wait, 3).

resolve(Cfg, Key, Wait, Tries) ->
    case members(Cfg) of
        [_] -> shoal:resolve_local(Cfg, Key, Wait);
        Ms ->
            Home = shoal_placement:home(Key, Ms),
            case Home =:= node() of
                true -> place(Cfg, Key, Wait);
                false ->
                    try erpc:call(Home, ?MODULE, place_key, [Cfg#shoal_cfg.pool, Key, Wait],
                                  ?RPC_TIMEOUT)
                    catch
                        error:{erpc, _} when Tries > 1 ->
                            %% The home went away: wait for the member list to say so.
                            timer:sleep(50),
                            resolve(Cfg, Key, Wait, Tries - 1);
                        error:{erpc, R} -> {error, {home_unreachable, Home, R}};
                        error:{exception, R, _} -> {error, R};
                        exit:R -> {error, R}
                    end
            end
    end.

%% @doc Start the worker for Key if there is none, without waiting: one message to the
%% key's home node's pool server, which claims, places and spawns (or has the host spawn).
-spec place_async(#shoal_cfg{}, term()) -> ok.
place_async(#shoal_cfg{server = Name} = Cfg, Key) ->
    Home = shoal_placement:home(Key, members(Cfg)),
    erlang:send({Name, Home}, {place_async, Key}),
    ok.

%% @private On the key's home node: arbitrate and place.
-spec place_key(atom(), term(), sync | nowait) -> {ok, pid()} | {error, term()}.
place_key(Pool, Key, Wait) ->
    case persistent_term:get(?PT_KEY(Pool), undefined) of
        #shoal_cfg{} = Cfg -> place(Cfg, Key, Wait);
        undefined -> {error, {no_such_pool, Pool}}
    end.

place(#shoal_cfg{table = T} = Cfg, Key, Wait) ->
    Ref = make_ref(),
    case shoal_nif:claim(T, Key, Ref) of
        {ok, Pid} -> {ok, Pid};
        {wait, Claimer} -> shoal:await_claim(Cfg, Key, Ref, Claimer,
                                             fun() -> place(Cfg, Key, Wait) end);
        claimed ->
            case choose_host(Cfg, Key, []) of
                {ok, Host} when Host =:= node() -> shoal:spawn_claimed(Cfg, Key, Wait);
                {ok, Host} -> spawn_remote(Cfg, Key, Host, Wait);
                {error, _} = E -> _ = shoal_nif:release_claim(T, Key), E
            end
    end.

spawn_remote(#shoal_cfg{table = T, pool = Pool}, Key, Host, Wait) ->
    Result = try erpc:call(Host, ?MODULE, spawn_here, [Pool, Key, Wait], ?RPC_TIMEOUT)
             catch
                 error:{erpc, R} -> {error, {host_unreachable, Host, R}};
                 error:{exception, R, _} -> {error, R};
                 exit:R -> {error, R}
             end,
    case Result of
        {ok, Pid} when node(Pid) =/= node() ->
            %% Replaces our claim and wakes its waiters; the host's own announcement
            %% may have done so already.
            _ = shoal_nif:put_remote(T, Key, node(Pid), Pid, 0),
            {ok, Pid};
        {ok, Pid} -> {ok, Pid};
        {error, _} = E ->
            _ = shoal_nif:release_claim(T, Key),
            E
    end.

%% @private On the chosen host: start the worker here (or return the one that exists).
-spec spawn_here(atom(), term(), sync | nowait) -> {ok, pid()} | {error, term()}.
spawn_here(Pool, Key, Wait) ->
    case persistent_term:get(?PT_KEY(Pool), undefined) of
        #shoal_cfg{} = Cfg -> shoal:resolve_local(Cfg, Key, Wait);
        undefined -> {error, {no_such_pool, Pool}}
    end.

%% @private On a migration's target: start the successor from the transferred state and
%% register it over the replica of its predecessor.
-spec takeover_here(atom(), term(), term()) ->
          {ok, pid(), non_neg_integer()} | {error, term()}.
takeover_here(Pool, Key, Transfer) ->
    case persistent_term:get(?PT_KEY(Pool), undefined) of
        #shoal_cfg{table = T, counters = C} = Cfg ->
            Ack = {self(), make_ref()},
            Pid = shoal_worker_proc:spawn_worker(Cfg, Key, Ack, {takeover, Transfer}),
            counters:add(C, ?C_SPAWNS, 1),
            case shoal:await_started(Pid, Ack) of
                {ok, Pid} ->
                    case shoal_nif:register(T, Key, Pid, true) of
                        {ok, Inc} -> {ok, Pid, Inc};
                        {error, R} -> exit(Pid, kill), {error, R}
                    end;
                {error, _} = E -> E
            end;
        undefined -> {error, {no_such_pool, Pool}}
    end.

%% @doc The node a new worker for Key should go to, never one of Exclude.
-spec choose_host(#shoal_cfg{}, term(), [node()]) -> {ok, node()} | {error, no_capacity}.
choose_host(Cfg, Key, Exclude) ->
    Cands = [C || {N, _, _, _} = C <- candidates(Cfg), not lists:member(N, Exclude)],
    shoal_placement:choose(Key, Cands).

candidates(#shoal_cfg{table = T, ctab = CTab} = Cfg) ->
    [{N, node_count(T, N), window(CTab, N), ets:member(CTab, {drained, N})}
     || N <- members(Cfg)].

node_count(T, N) when N =:= node() -> shoal_nif:count(T, local);
node_count(T, N) -> shoal_nif:count(T, N).

window(CTab, N) ->
    case ets:lookup(CTab, {window, N}) of
        [{_, W}] -> W;
        [] -> shoal_placement:default_window()
    end.

%%% Moving workers -----------------------------------------------------------------------

%% @doc On a drained node: move every local worker to the other members, keeping state.
%% Returns when none is left (or `{error, {stuck, N}}' if N could not be moved).
-spec evacuate(atom()) -> ok | {error, term()}.
evacuate(Pool) ->
    Cfg = shoal:cfg(Pool),
    move_keys(Cfg, shoal_nif:fold(Cfg#shoal_cfg.table, keys_on, local), any, 3).

%% @private On a source node: move N local workers to Dest (or wherever placement says,
%% with `any').
-spec move_some(atom(), non_neg_integer(), node() | any) -> {ok, non_neg_integer()}.
move_some(Pool, N, Dest) ->
    Cfg = shoal:cfg(Pool),
    Keys = lists:sublist(shoal_nif:fold(Cfg#shoal_cfg.table, keys_on, local), N),
    Failed = run_moves(Cfg, Keys, Dest),
    {ok, length(Keys) - Failed}.

move_keys(_Cfg, [], _Dest, _Tries) -> ok;
move_keys(Cfg, Keys, Dest, Tries) ->
    _ = run_moves(Cfg, Keys, Dest),
    case shoal_nif:fold(Cfg#shoal_cfg.table, keys_on, local) of
        [] -> ok;
        Left when Tries > 1 -> move_keys(Cfg, Left, Dest, Tries - 1);
        Left -> {error, {stuck, length(Left)}}
    end.

%% Moves go in batches of ?MOVE_BATCH keys per target node, ?MOVERS batches at a time;
%% returns how many keys failed to move.
run_moves(Cfg, Keys, Dest) ->
    ByTarget = lists:foldl(
                 fun(Key, Acc) ->
                         case target(Cfg, Key, Dest) of
                             {ok, Node} -> maps:update_with(Node, fun(L) -> [Key | L] end, [Key], Acc);
                             {error, _} -> maps:update_with(none, fun(L) -> [Key | L] end, [Key], Acc)
                         end
                 end, #{}, Keys),
    {NoTarget, Movable} = case maps:take(none, ByTarget) of
                              {L, Rest} -> {length(L), Rest};
                              error -> {0, ByTarget}
                          end,
    Batches = lists:append([[{Node, B} || B <- chunks(Ks, ?MOVE_BATCH)]
                            || {Node, Ks} <- maps:to_list(Movable)]),
    NoTarget + run_batches(Cfg, Batches, 0).

target(Cfg, Key, any) -> choose_host(Cfg, Key, [node()]);
target(_Cfg, _Key, Node) -> {ok, Node}.

run_batches(_Cfg, [], Failed) -> Failed;
run_batches(Cfg, Batches, Failed) ->
    {Now, Later} = lists:split(min(?MOVERS, length(Batches)), Batches),
    Self = self(),
    Pids = [spawn_link(fun() -> Self ! {moved, self(), move_batch(Cfg, Keys, Node)} end)
            || {Node, Keys} <- Now],
    F = lists:sum([receive {moved, P, N} -> N end || P <- Pids]),
    run_batches(Cfg, Later, Failed + F).

chunks([], _) -> [];
chunks(L, N) when length(L) =< N -> [L];
chunks(L, N) -> {A, B} = lists:split(N, L), [A | chunks(B, N)].

%% @private Move the local workers of Keys to Node with one round trip for the whole
%% batch: freeze them all (each hands its state over and holds its messages), start the
%% successors on Node, then tell each old worker its successor (or to thaw). Returns how
%% many failed to move.
-spec move_batch(#shoal_cfg{}, [term()], node()) -> non_neg_integer().
move_batch(#shoal_cfg{pool = Pool, table = T}, Keys, Node) ->
    Local = [{K, P} || K <- Keys, P <- [shoal_nif:whereis(T, K)], is_pid(P), node(P) =:= node()],
    Reqs = [{K, P, gen_server:send_request(P, '$shoal_freeze')} || {K, P} <- Local],
    Frozen = lists:filtermap(
               fun({K, P, R}) ->
                       case gen_server:wait_response(R, 30000) of
                           {reply, {ok, Transfer}} -> {true, {K, P, Transfer}};
                           _ -> false
                       end
               end, Reqs),
    Results = try erpc:call(Node, ?MODULE, takeover_batch,
                            [Pool, [{K, Tr} || {K, _, Tr} <- Frozen]], 60000)
              catch _:_ -> []
              end,
    Started = maps:from_list(Results),
    Moved = lists:foldl(
              fun({K, P, _}, N) ->
                      case maps:get(K, Started, error) of
                          {ok, NewPid, Inc} ->
                              %% Point this node's table at the successor before returning,
                              %% so counts and later walks see the move as done (the old
                              %% worker does the same again when it hears, harmlessly).
                              _ = shoal_nif:put_remote(T, K, Node, NewPid, Inc),
                              P ! {'$shoal_moved', Node, NewPid, Inc},
                              N + 1;
                          _ -> P ! '$shoal_thaw', N
                      end
              end, 0, Frozen),
    length(Keys) - Moved.

%% @private On the target of a batched move: start every successor (in parallel), then
%% register each over the replica of its predecessor.
-spec takeover_batch(atom(), [{term(), term()}]) ->
          [{term(), {ok, pid(), non_neg_integer()} | {error, term()}}].
takeover_batch(Pool, KeyTransfers) ->
    #shoal_cfg{table = T, counters = C} = Cfg = shoal:cfg(Pool),
    Spawned = [begin
                   Ack = {self(), make_ref()},
                   {K, shoal_worker_proc:spawn_worker(Cfg, K, Ack, {takeover, Tr}), Ack}
               end || {K, Tr} <- KeyTransfers],
    counters:add(C, ?C_SPAWNS, length(Spawned)),
    [{K, case shoal:await_started(Pid, Ack) of
             {ok, Pid} ->
                 case shoal_nif:register(T, K, Pid, true) of
                     {ok, Inc} -> {ok, Pid, Inc};
                     {error, R} -> exit(Pid, kill), {error, R}
                 end;
             {error, _} = E -> E
         end} || {K, Pid, Ack} <- Spawned].

%% @doc Move the fewest workers that bring every member inside its window.
-spec rebalance(atom()) -> {ok, #{moved := non_neg_integer()}}.
rebalance(Pool) ->
    Moves = plan(shoal:cfg(Pool)),
    Moved = lists:sum(
              [begin
                   {ok, M} = erpc:call(Src, ?MODULE, move_some, [Pool, N, Dst], infinity),
                   M
               end || {Src, Dst, N} <- Moves]),
    {ok, #{moved => Moved}}.

%% @private The moves rebalance/1 makes: [{From, To, N}]. Nodes over `high' (a drained
%% node's high is 0) must shed the excess, nodes under `low' must receive the shortfall;
%% the total is the larger of the two, the least that brings everyone inside its window.
%% Extra sources are the nodes furthest above their target; extra destinations the nodes
%% furthest below theirs.
-spec plan(#shoal_cfg{}) -> [{node(), node(), pos_integer()}].
plan(Cfg) ->
    Cands = [{N, C, eff_window(W, D)} || {N, C, W, D} <- candidates(Cfg)],
    Out0 = [{N, C - H} || {N, C, #{high := H}} <- Cands, H =/= infinity, C > H],
    In0 = [{N, L - C} || {N, C, #{low := L}} <- Cands, C < L],
    NeedOut = lists:sum([X || {_, X} <- Out0]),
    NeedIn = lists:sum([X || {_, X} <- In0]),
    Total = max(NeedOut, NeedIn),
    Out = top_up(Out0, Total - NeedOut,
                 [{N, C - max(L, tgt(T, C))} || {N, C, #{low := L, target := T}} <- Cands,
                                                 not lists:keymember(N, 1, Out0)]),
    In = top_up(In0, Total - NeedIn,
                [{N, room_below(W, C)} || {N, C, W} <- Cands,
                                          not lists:keymember(N, 1, In0),
                                          not lists:keymember(N, 1, Out)]),
    pair(Out, In).

eff_window(W, true) -> W#{high := 0, target := 0, low := 0};
eff_window(W, false) -> W.

tgt(infinity, C) -> C;
tgt(T, _) -> T.

room_below(#{target := infinity, high := infinity}, _) -> 1 bsl 40;
room_below(#{target := infinity, high := H}, C) -> H - C;
room_below(#{target := T}, C) -> T - C.

%% Add up to Extra more, from the candidates with the most to give.
top_up(Base, Extra, _Cands) when Extra =< 0 -> Base;
top_up(Base, Extra, Cands) ->
    Sorted = lists:reverse(lists:keysort(2, [{N, X} || {N, X} <- Cands, X > 0])),
    {More, _} = lists:mapfoldl(fun({N, X}, Left) ->
                                       Take = min(X, Left),
                                       {{N, Take}, Left - Take}
                               end, Extra, Sorted),
    Base ++ [{N, X} || {N, X} <- More, X > 0].

pair([], _) -> [];
pair(_, []) -> [];
pair([{S, A} | Out], [{D, B} | In]) ->
    N = min(A, B),
    Rest = case {A - N, B - N} of
               {0, 0} -> pair(Out, In);
               {0, B1} -> pair(Out, [{D, B1} | In]);
               {A1, 0} -> pair([{S, A1} | Out], In)
           end,
    [{S, D, N} | Rest].

%%% Health -------------------------------------------------------------------------------

%% @doc Per member: workers, window, fill (count / target), drained, crashes per minute;
%% and the cluster total.
-spec health(atom()) -> #{nodes := #{node() => map()}, total := non_neg_integer()}.
health(Pool) ->
    Cfg = shoal:cfg(Pool),
    Ms = members(Cfg),
    Results = erpc:multicall(Ms, ?MODULE, local_health, [Pool], 5000),
    PerNode = maps:from_list(
                [{N, node_health(Cfg, N, R)} || {N, R} <- lists:zip(Ms, Results)]),
    #{nodes => PerNode,
      total => lists:sum([C || #{count := C} <- maps:values(PerNode), is_integer(C)])}.

node_health(#shoal_cfg{ctab = CTab, table = T}, N, R) ->
    W = window(CTab, N),
    {Count, Cpm, Up} = case R of
                           {ok, #{count := C, crashes_per_minute := Cp}} -> {C, Cp, true};
                           _ -> {node_count(T, N), undefined, false}
                       end,
    #{count => Count, window => W,
      fill => case W of
                  #{target := infinity} -> undefined;
                  #{target := 0} -> undefined;
                  #{target := Tg} -> Count / Tg
              end,
      drained => ets:member(CTab, {drained, N}),
      crashes_per_minute => Cpm,
      reachable => Up}.

%% @private This node's own figures for health/1.
-spec local_health(atom()) -> #{count := non_neg_integer(), crashes_per_minute := non_neg_integer()}.
local_health(Pool) ->
    #shoal_cfg{table = T, meter = M} = shoal:cfg(Pool),
    #{count => shoal_nif:count(T, local), crashes_per_minute => shoal_nif:meter_sum(M, 60)}.
