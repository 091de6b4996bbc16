%% @doc Moving workers between members: the source's side of batched moves (drain and
%% rebalance), the target's side of every move (takeover), and the plans and requests that
%% drive them (docs/protocol.md, "Moves").
%%
%% A batched move freezes up to ?MOVE_BATCH local workers (each hands its state over and
%% holds its messages), asks the target's member to start and register their successors in
%% one round trip, points this node's table at each successor, and tells each old worker
%% where its successor is (it then forwards what it held, in order) or to thaw.
-module(shoal_mover).

-include("shoal_int.hrl").

-export([migrate/3, drain/2, rebalance/1, rebalance/2, plan/1, plan_even/1]).
-export([takeover/2, evacuate/1, move_some/3, move_batch/3, move_batch/4]).

-type cause() :: migrate | drain | rebalance.
-export_type([cause/0]).

-define(MOVERS, 8).
-define(MOVE_BATCH, 256).
-define(PLAN_CHUNK, 8192).  %% keys whose targets are chosen at a time (see run_moves/4)
-define(TAKEOVER_TIMEOUT, 60000).

%%% Requests (on any member) ---------------------------------------------------------------

%% @doc Move the worker for Key to Node with its state (the worker runs the move).
-spec migrate(#shoal_cfg{}, term(), node()) -> {ok, pid()} | {error, term()}.
migrate(Cfg, Key, Node) ->
    case lists:member(Node, shoal_view:members(Cfg)) of
        false -> {error, {not_a_member, Node}};
        true ->
            case shoal_registry:whereis(Cfg, Key) of
                undefined -> {error, not_found};
                Pid when node(Pid) =:= Node -> {ok, Pid};
                Pid ->
                    migrate_pid(Pid, Node)
            end
    end.

migrate_pid(Pid, Node) when node(Pid) =:= Node ->
    {ok, Pid};
migrate_pid(Pid, Node) ->
    try gen_server:call(Pid, {'$shoal_migrate', Node}, 2 * ?TAKEOVER_TIMEOUT) of
        ?REDIRECT(To) ->
            %% A stale replica pointed us at an old incarnation that had already moved on:
            %% ask the one it moved to (already where we want it, most often).
            migrate_pid(To, Node);
        {ok, NewPid} = Ok when node(NewPid) =:= Node -> Ok;
        {ok, Other} when node(Other) =/= Node ->
            %% Reached through a stale replica, the current incarnation was already there.
            {ok, Other};
        Error -> Error
    catch exit:{Reason, _} -> {error, Reason}
    end.

%% @doc Ask Node's member to move every worker it holds to the other members (Node must
%% already be drained, or placement would send workers back); returns when it is empty.
-spec drain(#shoal_cfg{}, node()) -> ok | {error, term()}.
drain(Cfg, Node) ->
    request(Cfg, Node, evacuate, infinity).

%% @doc Move the fewest workers that bring every member inside its window.
-spec rebalance(#shoal_cfg{}) -> {ok, #{moved := non_neg_integer()}}.
rebalance(Cfg) -> run_plan(Cfg, windows, plan(Cfg)).

%% @doc rebalance/1 (`windows'), or `even': move the fewest workers that bring every member
%% that is not drained within one of the average (a drained member's workers all go).
-spec rebalance(#shoal_cfg{}, windows | even) -> {ok, #{moved := non_neg_integer()}}.
rebalance(Cfg, windows) -> rebalance(Cfg);
rebalance(Cfg, even) -> run_plan(Cfg, even, plan_even(Cfg)).

run_plan(#shoal_cfg{pool = Pool} = Cfg, How, Plan) ->
    Moved = lists:sum([case request(Cfg, Src, {move_some, N, Dst}, infinity) of
                           {ok, M} -> M;
                           {error, _} -> 0
                       end || {Src, Dst, N} <- Plan]),
    shoal_log:log(notice, rebalance_done, #{pool => Pool},
                  #{how => How, planned => lists:sum([N || {_, _, N} <- Plan]), moved => Moved}),
    {ok, #{moved => Moved}}.

request(#shoal_cfg{pool = Pool} = Cfg, Node, What, Timeout) ->
    case shoal_view:peer(Cfg, Node) of
        undefined -> {error, {not_a_member, Node}};
        Member ->
            Ref = shoal_proto:request_ref(),
            Mref = erlang:monitor(process, Member),
            Body = case What of
                       evacuate -> {evacuate, {self(), Ref}};
                       {move_some, N, Dst} -> {move_some, N, Dst, {self(), Ref}}
                   end,
            shoal_proto:send(Member, Pool, Body),
            receive
                {'$shoal', _, Pool, {done, Ref, Reply}} ->
                    erlang:demonitor(Mref, [flush]),
                    Reply;
                {'DOWN', Mref, process, _, Why} ->
                    shoal_proto:drop_ref(Ref),
                    {error, {member_down, Node, Why}}
            after Timeout ->
                    erlang:demonitor(Mref, [flush]),
                    shoal_proto:drop_ref(Ref),
                    {error, timeout}
            end
    end.

%% @doc The moves rebalance/1 makes: `[{From, To, N}]'. Nodes over `high' (a drained node's
%% high is 0) must shed the excess, nodes under `low' must receive the shortfall; the total
%% is the larger of the two, the least that brings everyone inside its window. Extra sources
%% are the nodes furthest above their target; extra destinations the nodes furthest below
%% theirs.
-spec plan(#shoal_cfg{}) -> [{node(), node(), pos_integer()}].
plan(Cfg) ->
    Cands = [{N, C, eff_window(W, D)} || {N, C, W, D} <- shoal_view:candidates(Cfg)],
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

%% @doc The moves rebalance(Pool, even) makes: `[{From, To, N}]'. With T workers on the
%% members and A members not drained, each of those is to hold T div A or one more (the
%% T rem A members that hold the most get the one more, so the fewest workers move), and a
%% drained member none; members over their share give the excess to those under theirs.
-spec plan_even(#shoal_cfg{}) -> [{node(), node(), pos_integer()}].
plan_even(Cfg) ->
    Cands = shoal_view:candidates(Cfg),
    Open = lists:reverse(lists:keysort(2, [{N, C} || {N, C, _, false} <- Cands])),
    Total = lists:sum([C || {_, C, _, _} <- Cands]),
    case length(Open) of
        0 -> [];
        A ->
            {Q, R} = {Total div A, Total rem A},
            Shares = [{N, Q + 1} || {N, _} <- lists:sublist(Open, R)]
                ++ [{N, Q} || {N, _} <- lists:nthtail(R, Open)],
            Share = fun(N) -> proplists:get_value(N, Shares, 0) end,
            Out = [{N, C - Share(N)} || {N, C, _, _} <- Cands, C > Share(N)],
            In = [{N, Share(N) - C} || {N, C, _, false} <- Cands, C < Share(N)],
            pair(Out, In)
    end.

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

%%% On the source --------------------------------------------------------------------------

%% @doc Move every local worker to the other members, keeping state. Returns when none is
%% left (or `{error, {stuck, N}}' if N could not be moved after three rounds).
-spec evacuate(#shoal_cfg{}) -> ok | {error, term()}.
evacuate(#shoal_cfg{pool = Pool} = Cfg) ->
    Keys = shoal_registry:keys_on(Cfg, node()),
    shoal_log:log(notice, drain_started, #{pool => Pool}, #{workers => length(Keys)}),
    T0 = erlang:monotonic_time(millisecond),
    Result = move_keys(Cfg, Keys, any, 3),
    shoal_log:log(case Result of ok -> notice; _ -> warning end, drain_done, #{pool => Pool},
                  #{workers => length(Keys), result => Result,
                    ms => erlang:monotonic_time(millisecond) - T0}),
    Result.

%% @doc Move N local workers to Dest (or wherever placement says, with `any'): a
%% rebalance's share on this node.
-spec move_some(#shoal_cfg{}, non_neg_integer(), node() | any) -> {ok, non_neg_integer()}.
move_some(Cfg, N, Dest) ->
    Keys = lists:sublist(shoal_registry:keys_on(Cfg, node()), N),
    Failed = run_moves(Cfg, Keys, Dest, rebalance),
    {ok, length(Keys) - Failed}.

move_keys(_Cfg, [], _Dest, _Tries) -> ok;
move_keys(Cfg, Keys, Dest, Tries) ->
    _ = run_moves(Cfg, Keys, Dest, drain),
    case shoal_registry:keys_on(Cfg, node()) of
        [] -> ok;
        Left when Tries > 1 -> move_keys(Cfg, Left, Dest, Tries - 1);
        Left -> {error, {stuck, length(Left)}}
    end.

%% Moves go in batches of ?MOVE_BATCH keys per target node, ?MOVERS batches in flight (a
%% batch starts as soon as one ends), the targets taking turns, so that every target spawns
%% successors at once; returns how many keys failed to move. Targets are chosen ?PLAN_CHUNK
%% keys at a time, as the batches are needed, so the first moves start at once.
run_moves(Cfg, Keys, Dest, Cause) ->
    Members = case shoal_view:active(Cfg) of
                  inactive -> shoal_view:members(Cfg);
                  Ms -> Ms
              end,
    %% The counts and windows placement weighs, taken once, plus the keys given a target
    %% since: a node fills up to its `high' and no further, as with new workers.
    Cands = case Dest of
                any -> [C || {N, _, _, _} = C <- shoal_view:candidates(Cfg, Members),
                             N =/= node()];
                _ -> none
            end,
    run_batches(Cfg, fun(Ks, Cs) -> batches_of(Cs, Ks, Dest) end, Cands,
                shoal_proto:chunks(Keys, ?PLAN_CHUNK), Cause).

%% Keys' batches, the targets taking turns, how many keys have no target, and the
%% candidates with the keys given to each counted in.
batches_of(Cands0, Keys, Dest) ->
    {ByTarget, Cands} =
        lists:foldl(
          fun(Key, {Acc, Cs}) ->
                  case target(Cs, Key, Dest) of
                      {ok, Node} -> {add_to(Node, Key, Acc), count_in(Node, Cs)};
                      {error, _} -> {add_to(none, Key, Acc), Cs}
                  end
          end, {#{}, Cands0}, Keys),
    {NoTarget, Movable} = case maps:take(none, ByTarget) of
                              {L, Rest} -> {length(L), Rest};
                              error -> {0, ByTarget}
                          end,
    {NoTarget, interleave([[{Node, B} || B <- shoal_proto:chunks(Ks, ?MOVE_BATCH)]
                           || {Node, Ks} <- maps:to_list(Movable)]), Cands}.

add_to(T, Key, Acc) -> maps:update_with(T, fun(L) -> [Key | L] end, [Key], Acc).

count_in(_Node, none) -> none;
count_in(Node, Cands) ->
    [case C of
         {Node, Count, W, D} -> {Node, Count + 1, W, D};
         _ -> C
     end || C <- Cands].

target(Cands, Key, any) -> shoal_placement:choose(Key, Cands);
target(_Cands, _Key, Node) -> {ok, Node}.

%% The first item of each list, then the second of each, and so on.
interleave(Lists) ->
    case [L || [_ | _] = L <- Lists] of
        [] -> [];
        Ls -> [hd(L) || L <- Ls] ++ interleave([tl(L) || L <- Ls])
    end.

%% Keep up to ?MOVERS batches moving, planning the chunks of keys as their batches are
%% needed (Plan(Chunk, Cands) -> {NoTarget, Batches, Cands}): the keys that failed to move
%% or had no target.
run_batches(Cfg, Plan, Cands, Chunks, Cause) ->
    Self = self(),
    Tag = make_ref(),
    Start = fun({Node, Keys}) ->
                    spawn_link(fun() -> Self ! {Tag, move_batch(Cfg, Keys, Node, Cause)} end)
            end,
    {Running, Supply} = start_batches(Plan, Start, ?MOVERS, 0, {[], Chunks, 0, Cands}),
    collect_batches(Tag, Plan, Start, Running, Supply, 0).

start_batches(_Plan, _Start, 0, Running, Supply) -> {Running, Supply};
start_batches(Plan, Start, Room, Running, Supply0) ->
    case next_batch(Plan, Supply0) of
        {none, Supply} -> {Running, Supply};
        {Batch, Supply} ->
            _ = Start(Batch),
            start_batches(Plan, Start, Room - 1, Running + 1, Supply)
    end.

%% The next batch to start, from the planned ones or the next chunk's: `{Batch, Supply}' or
%% `{none, Supply}'. Supply is {Planned, Chunks, NoTarget, Cands}.
next_batch(_Plan, {[B | Bs], Chunks, NoTarget, Cands}) -> {B, {Bs, Chunks, NoTarget, Cands}};
next_batch(_Plan, {[], [], _, _} = Supply) -> {none, Supply};
next_batch(Plan, {[], [C | Cs], NoTarget, Cands0}) ->
    {N, Bs, Cands} = Plan(C, Cands0),
    next_batch(Plan, {Bs, Cs, NoTarget + N, Cands}).

collect_batches(_Tag, _Plan, _Start, 0, {_, _, NoTarget, _}, Failed) -> Failed + NoTarget;
collect_batches(Tag, Plan, Start, Running, Supply0, Failed) ->
    receive
        {Tag, N} ->
            {Running1, Supply} = start_batches(Plan, Start, 1, Running - 1, Supply0),
            collect_batches(Tag, Plan, Start, Running1, Supply, Failed + N)
    end.

%% @doc move_batch/4 with the cause `rebalance'.
-spec move_batch(#shoal_cfg{}, [term()], node()) -> non_neg_integer().
move_batch(Cfg, Keys, Node) -> move_batch(Cfg, Keys, Node, rebalance).

%% @doc Move the local workers of Keys to Node with one round trip for the whole batch;
%% returns how many failed to move. Each key's move is a `[shoal, move]' span (start when
%% it is asked to freeze, stop once its successor runs or it thawed) with cause Cause, and a
%% debug line `worker_moved'.
-spec move_batch(#shoal_cfg{}, [term()], node(), cause()) -> non_neg_integer().
move_batch(#shoal_cfg{pool = Pool} = Cfg, Keys, Node, Cause) ->
    Local = [{K, P} || K <- Keys, {local, P, _, false} <- [shoal_registry:lookup(Cfg, K)]],
    %% The spans cost 8% of a drain's time: built only if somebody listens (or logs them).
    Spans = case shoal_telemetry:listening([[shoal, move, start], [shoal, move, stop]])
                orelse shoal_log:enabled(debug) of
                true -> maps:from_list([{K, move_started(Pool, K, Node, Cause)} || {K, _} <- Local]);
                false -> #{}
            end,
    Reqs = [{K, P, gen_server:send_request(P, '$shoal_freeze')} || {K, P} <- Local],
    Frozen = lists:filtermap(
               fun({K, P, R}) ->
                       case gen_server:wait_response(R, 30000) of
                           {reply, {ok, Transfer, Vsn}} -> {true, {K, P, Transfer, Vsn}};
                           _ -> false
                       end
               end, Reqs),
    Results = case Frozen of
                  [] -> #{};
                  _ -> maps:from_list(takeover_on(Cfg, Pool, Node,
                                                  [{K, Tr, V} || {K, _, Tr, V} <- Frozen]))
              end,
    Moved = lists:foldl(
              fun({K, P, _, _}, N) ->
                      case maps:get(K, Results, error) of
                          {ok, Node, NewPid, NewVsn} ->
                              %% Point this node's table at the successor before returning,
                              %% so counts and later walks see the move as done (this
                              %% replaces the moving entry and relays the successor).
                              _ = shoal_registry:put_successor(Cfg, K, Node, NewPid, NewVsn, 0),
                              P ! {'$shoal_moved', Node, NewPid, NewVsn, stored},
                              move_stopped(maps:get(K, Spans, none), ok),
                              N + 1;
                          Other ->
                              P ! {'$shoal_thaw', Node},
                              move_stopped(maps:get(K, Spans, none),
                                           case Other of
                                               {error, _} -> Other;
                                               _ -> {error, no_answer}
                                           end),
                              N
                      end
              end, 0, Frozen),
    %% Keys that would not freeze (gone, busy for 30 s) end their span here.
    _ = map_size(Spans) > 0 andalso
        maps:foreach(fun(_K, Span) -> move_stopped(Span, {error, not_frozen}) end,
                     maps:without([K || {K, _, _, _} <- Frozen], Spans)),
    length(Keys) - Moved.

%% The two halves of a `[shoal, move]' span for one key of a batch.
move_started(Pool, Key, To, Cause) ->
    Meta = #{pool => Pool, key => Key, node => node(), to => To, cause => Cause,
             telemetry_span_context => make_ref()},
    T0 = erlang:monotonic_time(),
    shoal_telemetry:execute([shoal, move, start],
                            #{system_time => erlang:system_time(), monotonic_time => T0}, Meta),
    {Meta, T0}.

move_stopped(none, _Result) -> ok;
move_stopped({#{pool := Pool, key := Key, to := To, cause := Cause} = Meta, T0}, Result) ->
    T1 = erlang:monotonic_time(),
    shoal_telemetry:execute([shoal, move, stop], #{duration => T1 - T0, monotonic_time => T1},
                            Meta#{result => Result}),
    shoal_log:log(debug, worker_moved, #{pool => Pool, key => Key},
                  #{to => To, cause => Cause, result => Result}).

%% Addressed by name, like a single migration's (see shoal_worker_proc), and only to a
%% peer of our member. Should the target go down, the batch's workers take their keys back
%% only once our member has dropped it (shoal_view:await_dropped/4): it may have sent us
%% the `up' of a successor it registered, which the take-backs' versions must pass.
takeover_on(#shoal_cfg{server = Name} = Cfg, Pool, Node, Items) ->
    case shoal_view:peer(Cfg, Node) of
        undefined -> [];
        Member -> takeover_on(Cfg, Name, Pool, Node, Member, Items)
    end.

takeover_on(Cfg, Name, Pool, Node, Member, Items) ->
    Ref = shoal_proto:request_ref(),
    Mref = erlang:monitor(process, {Name, Node}),
    shoal_proto:send_node(Node, Name, Pool, {takeover, Items, {self(), Ref}}),
    receive
        {'$shoal', _, Pool, {taken, Ref, Results}} ->
            erlang:demonitor(Mref, [flush]),
            Results;
        {'DOWN', Mref, process, _, _} ->
            shoal_proto:drop_ref(Ref),
            _ = shoal_view:await_dropped(Cfg, Node, Member, ?TAKEOVER_TIMEOUT),
            []
    after ?TAKEOVER_TIMEOUT ->
            erlang:demonitor(Mref, [flush]),
            shoal_proto:drop_ref(Ref),
            []
    end.

%%% On the target --------------------------------------------------------------------------

%% @doc Start the successors of a move here (in parallel), each from its predecessor's
%% transferred state, and register each over the replica of its predecessor with a version
%% above it, inside the gate (waiting for this member to be active).
-spec takeover(#shoal_cfg{}, [{term(), term(), shoal_nif:version()}]) ->
          [{term(), shoal_proto:result()}].
takeover(#shoal_cfg{counters = C} = Cfg, Items) ->
    Spawned = [begin
                   Ref = make_ref(),
                   {K, shoal_worker_proc:spawn_worker(Cfg, K, [{self(), Ref}], {takeover, Tr}),
                    Ref, Vsn}
               end || {K, Tr, Vsn} <- Items],
    counters:add(C, ?C_SPAWNS, length(Spawned)),
    [{K, case shoal_arbiter:await_started(Pid, Ref, 30000) of
             {ok, Pid} ->
                 %% Inside the gate, like a spawn: see shoal_view:register_over/5.
                 case shoal_view:register_over(Cfg, K, Pid, {Vsn, none}, 30000) of
                     {ok, NewVsn} -> {ok, node(), Pid, NewVsn};
                     {error, R} -> exit(Pid, kill), {error, R}
                 end;
             {error, _} = E -> exit(Pid, kill), E
         end} || {K, Pid, Ref, Vsn} <- Spawned].
