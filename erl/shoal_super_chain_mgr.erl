%% @doc The manager of one chain (one process on the chain's owner node, the first child of
%% the chain's supervisor). It is on the path of an item only when something unusual
%% happens to it; the usual path (ingress, hand-off between workers, end of an item on the
%% owner node) goes from process to process without it (see shoal_super_flow).
%%
%% It owns the chain's ledger and:
%% <ul>
%% <li>keeps the route of each step (its live workers) and publishes it: to the registry
%%     for callers of send_to_chain/send_to_step, and to the workers of the previous step
%%     as a message (a worker holds the route of the step after it in its state);</li>
%% <li>starts the steps' workers, and grows and shrinks auto-scaled steps;</li>
%% <li>holds items for a step that has no live worker (all restarting, or just added), and
%%     the items a shutting-down worker handed back, until the step has workers again;</li>
%% <li>watches every worker and, when one dies or its node does, deals with the items the
%%     ledger says it held: reported `lost' (`at_most_once') or sent again from the step
%%     where they entered the chain (`at_least_once');</li>
%% <li>applies the ledger changes that workers on other nodes send it (`{at, ...}',
%%     `{done, ...}'), and runs `on_finish' for items that end on another node.</li>
%% </ul>
-module(shoal_super_chain_mgr).
-behaviour(gen_server).

-include("shoal_super.hrl").

-export([start_link/3]).
-export([init/1, handle_continue/2, handle_call/3, handle_cast/2, handle_info/2,
         terminate/2]).

-define(DEAD_FOR, 10000).      %% ms a dead worker or node is still looked for in the ledger
-define(STATS_INTERVAL, 1000). %% ms between throughput samples when nothing auto-scales

-record(wk, {idx :: pos_integer(),
             widx :: pos_integer(),
             ref :: reference(),
             state = live :: live | retiring}).

-record(stp, {id :: term(),
              idx :: pos_integer(),
              spec :: shoal_super_opts:step_spec(),
              dispatch :: atom(),
              placement :: shoal_super_opts:placement(),
              workers :: map(),                %% min, max, auto, scale_* (shoal_super_opts)
              rr :: atomics:atomics_ref(),
              pending = [] :: [{integer(), non_neg_integer(), non_neg_integer(), term()}],
              hold = false :: boolean(),       %% wait for a fresh worker before re-sending
              over = 0 :: non_neg_integer(),   %% consecutive samples with a long queue
              idle_since = undefined :: undefined | integer(),
              queue = 0 :: non_neg_integer(),
              rate = 0.0 :: float(),
              done = 0 :: non_neg_integer()}).

-record(m, {ss :: #ss{},
            sc :: #sc{},
            opts :: map(),
            wsup :: pid() | undefined,
            steps = #{} :: #{pos_integer() => #stp{}},
            ids = #{} :: #{term() => pos_integer()},
            workers = #{} :: #{pid() => #wk{}},
            last_done = #{} :: #{pid() => non_neg_integer()},
            remote_samples = #{} :: #{pid() => {non_neg_integer(), non_neg_integer()}},
            dead = #{} :: #{pid() | {node, node()} => {integer(), term(), pos_integer() | undefined}},
            stopping = false :: false | {true, term()},
            stop_sent = false :: boolean(),
            probes = #{} :: #{reference() => {pid(), term(), [{integer(), {term(), pid()}}]}},
            tick = undefined :: undefined | {reference(), pos_integer()},
            last_tick :: integer()}).

%% @doc Start the manager of chain C (options already validated).
-spec start_link(#ss{}, term(), map()) -> {ok, pid()}.
start_link(SS, C, Opts) -> gen_server:start_link(?MODULE, {SS, C, Opts}, []).

%% @private
-spec init({#ss{}, term(), map()}) -> {ok, #m{}, {continue, find_workers_sup}}.
init({#ss{id = Sup, tab = Tab} = SS, C, #{max_queue := MaxQ, on_finish := OnFinish,
                                          delivery := Delivery} = Opts}) ->
    process_flag(trap_exit, true),
    _ = is_alive() andalso net_kernel:monitor_nodes(true) =:= ok,
    Ledger = shoal_super_ledger:new(),
    SC = #sc{sup = Sup, chain = C, owner = node(), mgr = self(), ledger = Ledger,
             flow = atomics:new(3, [{signed, true}]), max_queue = MaxQ, on_finish = OnFinish,
             delivery = Delivery, reg = Tab,
             waiters = ets:new(shoal_super_waiters, [ordered_set, public])},
    ok = shoal_super_reg:put_chain(Tab, C, SC, undefined),
    ok = shoal_super_server:watch(SS, chain, C, self()),
    {ok, #m{ss = SS, sc = SC, opts = Opts, last_tick = now_ms()}, {continue, find_workers_sup}}.

%% @private The workers' supervisor is our sibling, started after us.
-spec handle_continue(find_workers_sup, #m{}) -> {noreply, #m{}}.
handle_continue(find_workers_sup, M) ->
    [Parent | _] = get('$ancestors'),
    {workers, WSup, _, _} = lists:keyfind(workers, 1, supervisor:which_children(Parent)),
    {noreply, schedule_tick(M#m{wsup = WSup})}.

%% @private
-spec handle_call(term(), gen_server:from(), #m{}) -> {reply, term(), #m{}}.
handle_call({add_step, Spec, Opts}, _From, M) ->
    {Reply, M1} = add_step(Spec, Opts, M),
    {reply, Reply, schedule_tick(M1)};
handle_call(info, _From, M) ->
    {reply, {ok, info(M)}, M};
handle_call({fanout, Idx, Pids, Data}, {From, _}, #m{sc = #sc{ledger = L, flow = F}} = M) ->
    atomics:add(F, 1, length(Pids)),
    Copies = [begin
                  S = erlang:unique_integer(),
                  true = shoal_super_ledger:enter(L, S, P, Idx, Data, node(From)),
                  {P, S}
              end || P <- Pids],
    {reply, Copies, M};
handle_call({stopping, Reason}, _From, #m{sc = #sc{flow = F}} = M) ->
    %% Local workers hand items back instead of starting them (see shoal_super_step).
    atomics:put(F, 3, 1),
    {reply, ok, M#m{stopping = {true, Reason}}};
handle_call(_Req, _From, M) ->
    {reply, {error, unknown_call}, M}.

%% @private
-spec handle_cast(term(), #m{}) -> {noreply, #m{}}.
handle_cast(_Msg, M) -> {noreply, M}.

%% @private
-spec handle_info(term(), #m{}) -> {noreply, #m{}}.
handle_info({done, Seq, Outcome}, #m{sc = #sc{ledger = L} = SC} = M) ->
    case shoal_super_ledger:take(L, Seq) of
        [_] -> shoal_super_flow:release(SC, 1), shoal_super_flow:report(SC, Outcome);
        [] -> ok
    end,
    {noreply, M};
handle_info({at, Seq, Key, Pid, Via}, #m{sc = #sc{ledger = L}} = M) ->
    case shoal_super_ledger:move(L, Seq, Key, Pid, Via) of
        ok ->
            %% Handed to a worker that is known to be gone (or by a node known to be gone):
            %% it never got it.
            case dead_holder(Pid, Via, M) of
                {true, Why} -> {noreply, lost(shoal_super_ledger:current(L, Seq, {Key, Pid}), Why, M)};
                false -> {noreply, M}
            end;
        _ -> {noreply, M}
    end;
handle_info({'$ss_probed', Ref}, #m{probes = Probes, sc = #sc{ledger = L}} = M) ->
    case maps:take(Ref, Probes) of
        {{_Holder, Why, Items}, Rest} ->
            %% Everything the dead node had sent the holder is behind it: what the ledger
            %% still has at that hand-off never arrived.
            Gone = lists:append([shoal_super_ledger:current(L, Seq, At) || {Seq, At} <- Items]),
            {noreply, lost(Gone, Why, M#m{probes = Rest})};
        error -> {noreply, M}
    end;
handle_info({pending, Idx, Seq, Att, Hop, Data}, M) ->
    {noreply, hold(Idx, [{Seq, Att, Hop, Data}], false, M)};
handle_info({requeue, Idx, Items}, M) ->
    {noreply, hold(Idx, Items, true, M)};
handle_info({worker_up, Idx, WIdx, Pid}, M) ->
    {noreply, worker_up(Idx, WIdx, Pid, M)};
handle_info({moved, Idx, WIdx, Old, New}, M) ->
    {noreply, moved(Idx, WIdx, Old, New, M)};
handle_info({'DOWN', _Ref, process, Pid, Reason}, M) ->
    {noreply, worker_down(Pid, Reason, M)};
handle_info({nodedown, N}, #m{dead = D, sc = #sc{ledger = L}} = M) ->
    Why = {nodedown, N},
    M1 = M#m{dead = D#{{node, N} => {now_ms() + ?DEAD_FOR, Why, undefined}}},
    M2 = lost(shoal_super_ledger:on_node(L, N), Why, M1),
    {noreply, probe(shoal_super_ledger:handed_by(L, N), N, M2)};
handle_info({nodeup, _}, M) ->
    {noreply, M};
handle_info({stop_chain, _StepId, Reason}, #m{stop_sent = false, ss = SS, sc = #sc{chain = C}} = M) ->
    ok = shoal_super_server:stop_chain(SS, C, Reason),
    {noreply, M#m{stop_sent = true}};
handle_info({stop_chain, _, _}, M) ->
    {noreply, M};
handle_info(tick, M) ->
    {noreply, schedule_tick((tick(M))#m{tick = undefined})};
handle_info({remote_sample, Results}, #m{remote_samples = RS} = M) ->
    {noreply, M#m{remote_samples = maps:merge(RS, maps:from_list([{P, {Q, D}} || {P, Q, D} <- Results]))}};
handle_info({delete_child, Id, Tries}, #m{wsup = WSup} = M) ->
    _ = case supervisor:delete_child(WSup, Id) of
            {error, running} when Tries > 0 -> erlang:send_after(100, self(), {delete_child, Id, Tries - 1});
            _ -> ok
        end,
    {noreply, M};
handle_info({'EXIT', _, _}, M) ->
    {noreply, M};
handle_info(_Info, M) ->
    {noreply, M}.

%% @private Nothing may vanish with the chain: items that come back to us now, items we
%% hold, and every item the ledger still lists are reported `stopped'.
-spec terminate(term(), #m{}) -> ok.
terminate(Reason, #m{sc = #sc{ledger = L} = SC, stopping = Stopping} = M) ->
    Why = case Stopping of
              {true, R} -> R;
              false -> Reason
          end,
    #m{steps = Steps} = M1 = absorb(M),
    Held = maps:from_list([{Seq, {Idx, Data}} || {Idx, #stp{pending = P}} <- maps:to_list(Steps),
                                                 {Seq, _, _, Data} <- P]),
    [case shoal_super_ledger:take(L, Seq) of
         [_] ->
             {Step, D} = case maps:find(Seq, Held) of
                             {ok, {Idx, Data}} -> {step_id(Idx, Steps), Data};
                             error -> {holder_step(Holder, EIdx, M1, Steps), EData}
                         end,
             shoal_super_flow:release(SC, 1),
             shoal_super_flow:report(SC, {stopped, Step, Why, D});
         [] -> ok
     end || {Seq, _, Holder, EIdx, EData, _} <- shoal_super_ledger:all(L)],
    shoal_super_flow:wake_all(SC).

%% Apply what is already in our mailbox from workers (ends of items, hand-backs).
absorb(M) ->
    receive
        {done, _, _} = Msg -> {noreply, M1} = handle_info(Msg, M), absorb(M1);
        {requeue, Idx, Items} -> absorb(keep(Idx, Items, M));
        {pending, Idx, Seq, Att, Hop, Data} -> absorb(keep(Idx, [{Seq, Att, Hop, Data}], M))
    after 0 -> M
    end.

keep(Idx, Items, #m{steps = Steps} = M) ->
    case maps:find(Idx, Steps) of
        {ok, #stp{pending = P} = S} -> M#m{steps = Steps#{Idx := S#stp{pending = P ++ Items}}};
        error -> M
    end.

%%% Steps ---------------------------------------------------------------------------------

add_step(Spec, #{id := Id, workers := W, dispatch := D, placement := P},
         #m{ss = SS, opts = Opts, steps = Steps, ids = Ids} = M) ->
    Placement = case P of default -> maps:get(placement, Opts); _ -> P end,
    Dispatch = case D of default -> maps:get(dispatch, Opts); _ -> D end,
    if
        is_map_key(Id, Ids) -> {{error, {already_exists, Id}}, M};
        Placement =/= local, SS#ss.cluster =:= undefined -> {{error, no_cluster}, M};
        true ->
            Idx = map_size(Steps) + 1,
            S = #stp{id = Id, idx = Idx, spec = Spec, dispatch = Dispatch,
                     placement = Placement, workers = W, rr = atomics:new(1, [])},
            M1 = M#m{steps = Steps#{Idx => S}, ids = Ids#{Id => Idx}},
            %% An empty route first: the previous step's workers hold items for us at the
            %% manager until our workers are up, instead of ending them as the last step.
            M2 = publish(Idx, M1),
            {Results, M3} = lists:mapfoldl(fun(WIdx, Acc) -> start_worker(Idx, WIdx, Acc) end,
                                           M2, lists:seq(1, maps:get(min, W))),
            case [E || {error, _} = E <- Results] of
                [] -> {ok, M3};
                [E | _] -> {E, M3}
            end
    end.

%% Start worker WIdx of step Idx. A local worker (or the proxy of a remote one) says it is
%% up before its start returns, so the route includes it when we answer.
start_worker(Idx, WIdx, #m{ss = SS, sc = SC, steps = Steps, wsup = WSup} = M) ->
    #stp{id = Id, spec = Spec, placement = Placement} = maps:get(Idx, Steps),
    Conf = #{id => Id, idx => Idx, fn => Spec, next => next_route(Idx, M)},
    Start = case Placement of
                local -> {shoal_super_step, start_link, [SC, Conf, WIdx]};
                _ -> {shoal_super_remote, start_link, [SS, {step, SC, Conf, WIdx, Placement}]}
            end,
    Child = #{id => {Id, WIdx}, start => Start, restart => transient, shutdown => 5000},
    case supervisor:start_child(WSup, Child) of
        {ok, _} ->
            receive {worker_up, Idx, WIdx, Pid} -> {ok, worker_up(Idx, WIdx, Pid, M)}
            after 0 -> {ok, M}
            end;
        {error, Reason} ->
            {{error, Reason}, M}
    end.

next_route(Idx, #m{steps = Steps} = M) ->
    case maps:is_key(Idx + 1, Steps) of
        true -> route(Idx + 1, M);
        false -> last
    end.

route(Idx, #m{steps = Steps} = M) ->
    #stp{id = Id, dispatch = D, rr = RR} = maps:get(Idx, Steps),
    #route{idx = Idx, step = Id, pids = list_to_tuple(live(Idx, M)), dispatch = D, rr = RR}.

live(Idx, M) -> [P || {P, _} <- sorted(Idx, live, M)].

sorted(Idx, State, #m{workers = Ws}) ->
    lists:keysort(2, [{P, W} || {P, #wk{idx = I, widx = W, state = S}} <- maps:to_list(Ws),
                                I =:= Idx, State =:= any orelse S =:= State]).

%% Tell everyone who sends to step Idx where its workers now are, then send it what we
%% hold for it.
publish(Idx, #m{sc = #sc{chain = C, reg = Reg} = SC, steps = Steps} = M) ->
    #stp{id = Id} = maps:get(Idx, Steps),
    R = route(Idx, M),
    ok = shoal_super_reg:put_route(Reg, C, Id, R, self()),
    Idx =:= 1 andalso shoal_super_reg:put_chain(Reg, C, SC, R),
    _ = [P ! {'$ssr', R} || {P, _} <- sorted(Idx - 1, any, M)],
    flush_pending(Idx, R, M).

flush_pending(Idx, #route{pids = Pids} = R, #m{sc = SC, steps = Steps} = M) ->
    case maps:get(Idx, Steps) of
        #stp{pending = [_ | _] = Items, hold = false} = S when tuple_size(Pids) > 0 ->
            lists:foldl(fun({Seq, Att, Hop, Data}, N) ->
                                shoal_super_flow:hand_off(SC, R, {Seq, Att, Hop + 1}, Data, N, single)
                        end, 0, Items),
            M#m{steps = Steps#{Idx := S#stp{pending = []}}};
        _ -> M
    end.

hold(Idx, Items, Hold, #m{sc = #sc{ledger = L}, steps = Steps} = M) ->
    case maps:find(Idx, Steps) of
        {ok, #stp{pending = P, hold = H} = S} ->
            %% The items are with us now (a shutting-down worker no longer has them): one
            %% more hop, so that older news of them cannot move them back.
            Held = [begin
                        _ = shoal_super_ledger:move(L, Seq, {Att, Hop + 1}, self(), node()),
                        {Seq, Att, Hop + 1, Data}
                    end || {Seq, Att, Hop, Data} <- Items],
            Steps1 = Steps#{Idx := S#stp{pending = P ++ Held, hold = H orelse Hold}},
            flush_pending(Idx, route(Idx, M), M#m{steps = Steps1});
        error -> M
    end.

%%% Workers -------------------------------------------------------------------------------

worker_up(Idx, WIdx, Pid, #m{workers = Ws, steps = Steps} = M) ->
    case maps:is_key(Pid, Ws) of
        true -> M;
        false ->
            Ref = erlang:monitor(process, Pid),
            Pid ! {'$ssr', next_route(Idx, M)},
            Steps1 = case maps:find(Idx, Steps) of
                         {ok, S} -> Steps#{Idx := S#stp{hold = false}};
                         error -> Steps
                     end,
            publish(Idx, M#m{workers = Ws#{Pid => #wk{idx = Idx, widx = WIdx, ref = Ref}},
                             steps = Steps1})
    end.

%% A remote worker moved (drain or migration): the new one takes its place, and what the
%% ledger says the old one held is with the new one (Shoal forwarded it).
moved(Idx, WIdx, Old, New, #m{workers = Ws, sc = #sc{ledger = L}} = M) ->
    Ws1 = case maps:take(Old, Ws) of
              {#wk{ref = OldRef}, Rest} -> erlang:demonitor(OldRef, [flush]), Rest;
              error -> Ws
          end,
    ok = shoal_super_ledger:relocate(L, Old, New),
    Ref = erlang:monitor(process, New),
    New ! {'$ssr', next_route(Idx, M)},
    publish(Idx, M#m{workers = Ws1#{New => #wk{idx = Idx, widx = WIdx, ref = Ref}}}).

worker_down(Pid, {shutdown, {shoal_moved, _}}, #m{workers = Ws} = M) ->
    %% Moved by a drain: what it held was forwarded; moved/5 brings its successor in.
    case maps:take(Pid, Ws) of
        {#wk{idx = Idx}, Ws1} -> publish(Idx, M#m{workers = Ws1});
        error -> M
    end;
worker_down(Pid, Reason, #m{workers = Ws, steps = Steps, dead = D} = M) ->
    case maps:take(Pid, Ws) of
        {#wk{idx = Idx, widx = WIdx, state = State}, Ws1} ->
            M1 = publish(Idx, M#m{workers = Ws1, last_done = maps:remove(Pid, M#m.last_done)}),
            (State =:= retiring andalso Reason =:= normal) andalso
                begin
                    #stp{id = Id} = maps:get(Idx, Steps),
                    self() ! {delete_child, {Id, WIdx}, 50}
                end,
            Why = case Reason of
                      noconnection -> {nodedown, node(Pid)};
                      _ -> {worker_exit, Reason}
                  end,
            M2 = M1#m{dead = D#{Pid => {now_ms() + ?DEAD_FOR, Why, Idx}},
                      probes = maps:filter(fun(_, {H, _, _}) -> H =/= Pid end, M1#m.probes)},
            lost(held_by(Pid, M2), Why, M2);
        error ->
            M
    end.

%%% Lost items ----------------------------------------------------------------------------

held_by(Pid, #m{sc = #sc{ledger = L}}) -> shoal_super_ledger:held_by(L, Pid).

on_node(N, #m{sc = #sc{ledger = L}}) -> shoal_super_ledger:on_node(L, N).

dead_holder(Pid, Via, #m{dead = D}) ->
    case [Why || K <- [Pid, {node, node(Pid)}, {node, Via}], {ok, {_, Why, _}} <- [maps:find(K, D)]] of
        [Why | _] -> {true, Why};
        [] -> false
    end.

%% Items that a process of dead node N handed to a live holder: the hand-off may have died
%% with N. Each holder is asked to answer once its node no longer sees N (then nothing
%% more from N can reach it) and it has worked through what came before the question;
%% what the ledger still has at those hand-offs then never arrived (see '$ss_probed').
probe([], _N, M) -> M;
probe(Entries, N, #m{probes = Probes} = M) ->
    ByHolder = maps:groups_from_list(fun({_, _, H, _, _, _}) -> H end,
                                     fun({Seq, Key, H, _, _, _}) -> {Seq, {Key, H}} end, Entries),
    Probes1 = maps:fold(fun(H, _Items, Acc) when H =:= self() -> Acc;
                           (H, Items, Acc) ->
                                Ref = make_ref(),
                                H ! {'$ss_probe', Ref, N, self()},
                                Acc#{Ref => {H, {nodedown, N}, Items}}
                        end, Probes, ByHolder),
    M#m{probes = Probes1}.

%% Items whose holder is gone: report them lost, or send them again from where they
%% entered the chain (a newer attempt: late news of the old one is then ignored).
lost([], _Why, M) -> M;
lost(Entries, Why, #m{sc = #sc{delivery = at_most_once, ledger = L} = SC, steps = Steps} = M) ->
    [case shoal_super_ledger:take(L, Seq) of
         [_] ->
             shoal_super_flow:release(SC, 1),
             shoal_super_flow:report(SC, {lost, holder_step(Holder, Idx, M, Steps), Why, Data});
         [] -> ok
     end || {Seq, _, Holder, Idx, Data, _} <- Entries],
    M;
lost(Entries, _Why, #m{sc = #sc{ledger = L}} = M) ->
    lists:foldl(fun({Seq, {Att, _}, _, Idx, Data, _}, Acc) ->
                        case shoal_super_ledger:retry(L, Seq, Att + 1) of
                            true -> hold(Idx, [{Seq, Att + 1, 0, Data}], false, Acc);
                            false -> Acc
                        end
                end, M, Entries).

%% The step of the worker that held an item (its entry step if we cannot tell).
holder_step(Holder, EntryIdx, #m{workers = Ws, dead = D}, Steps) ->
    Idx = case {maps:find(Holder, Ws), maps:find(Holder, D)} of
              {{ok, #wk{idx = I}}, _} -> I;
              {_, {ok, {_, _, I}}} when is_integer(I) -> I;
              _ -> EntryIdx
          end,
    step_id(Idx, Steps).

step_id(Idx, Steps) ->
    case maps:find(Idx, Steps) of
        {ok, #stp{id = Id}} -> Id;
        error -> undefined
    end.

%%% Ticks: sweeps, samples, scaling -------------------------------------------------------

%% The next tick, at the shortest interval any step asks for (sooner than the one
%% pending, if a step that asks for less has just come).
schedule_tick(#m{steps = Steps, tick = Pending} = M) ->
    Auto = [maps:get(scale_interval, W) || #stp{workers = #{auto := true} = W} <- maps:values(Steps)],
    Interval = case {Auto, map_size(M#m.dead)} of
                   {[], 0} -> ?STATS_INTERVAL;
                   {[], _} -> 100;
                   _ -> lists:min([100 | Auto])
               end,
    case Pending of
        {Ref, Old} when Old =< Interval ->
            case erlang:read_timer(Ref) of
                false -> M#m{tick = {erlang:send_after(Interval, self(), tick), Interval}};
                _ -> M
            end;
        {Ref, _} ->
            _ = erlang:cancel_timer(Ref),
            M#m{tick = {erlang:send_after(Interval, self(), tick), Interval}};
        undefined ->
            M#m{tick = {erlang:send_after(Interval, self(), tick), Interval}}
    end.

tick(#m{last_tick = Last} = M0) ->
    Now = now_ms(),
    M1 = sweep(Now, M0),
    Dt = max(1, Now - Last),
    M2 = sample(Dt, M1),
    M3 = lists:foldl(fun(Idx, Acc) -> scale(Idx, Now, Acc) end, M2, maps:keys(M2#m.steps)),
    M3#m{last_tick = Now}.

%% Items handed to a worker that was already dead (a sender still had the old route), or
%% to a node that was already gone, are found here until the dead are forgotten.
sweep(_Now, #m{dead = D} = M) when map_size(D) =:= 0 -> M;
sweep(Now, #m{dead = D} = M) ->
    Live = maps:filter(fun(_, {Until, _, _}) -> Until > Now end, D),
    maps:fold(fun({node, N}, {_, Why, _}, Acc) -> lost(on_node(N, Acc), Why, Acc);
                 (Pid, {_, Why, _}, Acc) -> lost(held_by(Pid, Acc), Why, Acc)
              end, M#m{dead = Live}, Live).

sample(Dt, #m{workers = Ws, steps = Steps, last_done = LD, remote_samples = RS} = M) ->
    {Local, Remote} = lists:partition(fun(P) -> node(P) =:= node() end, maps:keys(Ws)),
    Fresh = maps:from_list([{P, {Q, D}} || {P, Q, D} <- shoal_super_step:sample(Local)]),
    request_remote_samples(Remote),
    All = maps:merge(maps:with(Remote, RS), Fresh),
    PerStep = maps:fold(fun(P, {Q, D}, Acc) ->
                                #wk{idx = Idx} = maps:get(P, Ws),
                                Delta = max(0, D - maps:get(P, LD, 0)),
                                maps:update_with(Idx, fun({Q0, D0}) -> {Q0 + Q, D0 + Delta} end,
                                                 {Q, Delta}, Acc)
                        end, #{}, All),
    Steps1 = maps:map(fun(Idx, S) ->
                              {Q, Delta} = maps:get(Idx, PerStep, {0, 0}),
                              S#stp{queue = Q, rate = Delta * 1000 / Dt, done = S#stp.done + Delta}
                      end, Steps),
    M#m{steps = Steps1, last_done = maps:map(fun(_, {_, D}) -> D end, All),
        remote_samples = maps:with(Remote, RS)}.

request_remote_samples([]) -> ok;
request_remote_samples(Pids) ->
    Self = self(),
    ByNode = maps:groups_from_list(fun erlang:node/1, Pids),
    _ = spawn(fun() ->
                      maps:foreach(
                        fun(N, Ps) ->
                                try erpc:call(N, shoal_super_step, sample, [Ps], 1000) of
                                    R -> Self ! {remote_sample, R}
                                catch _:_ -> ok
                                end
                        end, ByNode)
              end),
    ok.

scale(Idx, Now, #m{steps = Steps} = M) ->
    case maps:get(Idx, Steps) of
        #stp{workers = #{auto := true} = Policy, queue = Q, rate = Rate, over = Over,
             idle_since = Idle} = S ->
            Sample = #{queue => Q, rate => Rate, workers => length(live(Idx, M)), now => Now},
            {Action, #{over := Over1, idle_since := Idle1}} =
                shoal_super_scale:decide(Policy, Sample, #{over => Over, idle_since => Idle}),
            M1 = M#m{steps = Steps#{Idx := S#stp{over = Over1, idle_since = Idle1}}},
            case Action of
                {grow, N} -> grow(Idx, N, M1);
                {shrink, N} -> lists:foldl(fun(_, Acc) -> shrink(Idx, Acc) end, M1, lists:seq(1, N));
                none -> M1
            end;
        _ -> M
    end.

grow(_Idx, 0, M) -> M;
grow(Idx, N, M) ->
    Used = [W || {_, W} <- sorted(Idx, any, M)],
    WIdx = hd([I || I <- lists:seq(1, length(Used) + 1), not lists:member(I, Used)]),
    {_, M1} = start_worker(Idx, WIdx, M),
    grow(Idx, N - 1, M1).

%% Retire the newest live worker: out of the route first, then told to go once the
%% previous step's workers have switched (see shoal_super_step).
shrink(Idx, #m{workers = Ws} = M) ->
    case lists:reverse(sorted(Idx, live, M)) of
        [{Pid, _} | _] ->
            M1 = publish(Idx, M#m{workers = Ws#{Pid := (maps:get(Pid, Ws))#wk{state = retiring}}}),
            Upstream = [P || {P, _} <- sorted(Idx - 1, any, M1)],
            Pid ! {'$ss_retire', Upstream},
            M1;
        [] -> M
    end.

%%% Info ----------------------------------------------------------------------------------

info(#m{sc = #sc{chain = C, flow = F, max_queue = MaxQ, delivery = Del}, steps = Steps,
        workers = Ws, stopping = Stopping} = M) ->
    Local = maps:from_list([{P, Q} || {P, Q, _} <- shoal_super_step:sample(
                                                       [P || P <- maps:keys(Ws), node(P) =:= node()])]),
    StepInfo = [begin
                    #stp{id = Id, workers = WOpts, rate = Rate, done = Done, pending = Pend,
                         placement = Pl, dispatch = D, queue = SampledQ} = maps:get(Idx, Steps),
                    Pids = live(Idx, M),
                    Q = case [P || P <- Pids, node(P) =/= node()] of
                            [] -> lists:sum([maps:get(P, Local, 0) || P <- Pids]);
                            _ -> SampledQ
                        end,
                    #{id => Id, workers => length(Pids),
                      min => maps:get(min, WOpts), max => maps:get(max, WOpts),
                      queue => Q + length(Pend), throughput => Rate, processed => Done,
                      nodes => lists:usort([node(P) || P <- Pids]),
                      dispatch => D, placement => Pl}
                end || Idx <- lists:sort(maps:keys(Steps))],
    #{chain => C, in_flight => atomics:get(F, 1), max_queue => MaxQ, delivery => Del,
      status => case Stopping of false -> running; _ -> stopping end,
      steps => StepInfo}.

now_ms() -> erlang:monotonic_time(millisecond).
