%% @doc A pool's member on one node: the process that speaks the member protocol
%% (docs/protocol.md) for this node.
%%
%% It owns the pool's table (created here, deleted when it stops), counters and failure
%% meter, publishes the configuration in persistent_term for the lock-free hot paths and
%% the view in its ETS table and gate (shoal_view), and it is this node's member of the
%% cluster-wide pool:
%% <ul>
%% <li>membership: greets and probes connected nodes, keeps its peers, proposes views,
%%     acknowledges its peers' views, fences and opens the gate;</li>
%% <li>replication: turns the table's listener events into `repl' batches for its peers,
%%     applies theirs, runs syncs (anti-entropy) with new peers, sweeps tombs;</li>
%% <li>arbitration: the home's side (`claim', `claim_async') and the host's side (`spawn',
%%     `spawn_async') of spawns; it answers `retry' to this node's requests to a peer it
%%     loses (shoal_view:ask/3), so callers need no monitor of a remote member;</li>
%% <li>moves and operations: takeovers, evacuations and rebalancing moves (run by
%%     short-lived processes, see shoal_mover), `where', `health' and configuration.</li>
%% </ul>
%%
%% It is the last child of the pool supervisor: it starts once the segments are up (so a
%% worker it is asked to start, by a caller or a peer, always has its segment) and stops
%% first, removing the configuration and deleting the table, so its peers drop its replicas
%% before its workers stop.
-module(shoal_member).
-behaviour(gen_server).

-include("shoal_int.hrl").

-export([start_link/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-define(BATCH, 2000).           %% replication ops and sync entries per message
-define(TOMB_TTL, 10000).       %% ms a tomb blocks stale replicas
-define(SWEEP_EVERY, 5000).     %% ms between tomb sweeps
-define(SHADOW_TTL, 60000).     %% ms a twin met in a sync is remembered (see shadow/7)
-define(MAX_DELAY_US, 1000).    %% us a replication op may wait for its batch
-define(EVENTS, 256).           %% table events taken in one pass (see events/2)
-define(PROBE_TIMEOUT, 2000).   %% ms we wait for a connected node to say whether it is a member

-record(peer, {pid :: pid(),
               mref :: reference(),
               %% The protocol version we speak with it: the newest both speak.
               vsn = 1 :: pos_integer(),
               %% The last `view' this peer proposed to us.
               last_view = none :: none | {non_neg_integer(), [node()]},
               %% The last of our Seqs this peer acknowledged.
               acked = -1 :: integer()}).

-record(ms, {cfg :: #shoal_cfg{},
             peers = #{} :: #{node() => #peer{}},
             %% Connected nodes whose member we have not heard from yet: Mref => Node.
             probes = #{} :: #{reference() => node()},
             %% Hidden nodes being checked for being Erlang nodes: Mref => Node.
             checks = #{} :: #{reference() => node()},
             p = [] :: [node()],                 %% our proposed view
             seq = 0 :: non_neg_integer(),
             active = none :: none | [node()],   %% the view we are active in
             view_no = 0 :: non_neg_integer(),
             waiting = [] :: [gen_server:from()],
             %% Home: keys we hold or wait on a claim for, with the callers to answer.
             pending = #{} :: #{term() => [shoal_proto:caller()]},
             %% Home: our waits on another process's claim: Ref => {Key, Claimer, Mref}.
             claims = #{} :: #{reference() => {term(), pid(), reference()}},
             %% Home: keys we asked a host to spawn: Key => Host, and how many of the key's
             %% pending callers went with the request (the host answers those).
             spawning = #{} :: #{term() => node()},
             sent = #{} :: #{term() => non_neg_integer()},
             %% ensure_started_async keys not routed yet (we route them in batches, once
             %% we are active), and how many.
             async = [] :: [term()],
             async_len = 0 :: non_neg_integer(),
             %% Incoming syncs in progress: Node => Mark.
             sync_in = #{} :: #{node() => pos_integer()},
             mark = 0 :: non_neg_integer(),
             %% Twins a sync showed us that our table does not name: another node's live
             %% worker for the key, older than the replica we hold of a third node's
             %% (see shadow/7): Key => {Node, Pid, Vsn, Since (ms)}.
             shadows = #{} :: #{term() => {node(), pid(), shoal_nif:version(), integer()}},
             %% Replication ops not sent yet (newest first), how many, and since when (us).
             buf = [] :: [tuple()],
             buf_len = 0 :: non_neg_integer(),
             buf_since = 0 :: integer(),
             %% A fence in progress: the marker we sent ourselves (see fence/1).
             fence = none :: none | reference(),
             %% The newest protocol version we speak (shoal_proto:vsn/0 when we started).
             vsn = 1 :: pos_integer()}).

%% @doc Start the member of the pool described by Cfg, registered under its name.
-spec start_link(#shoal_cfg{}) -> {ok, pid()} | {error, term()}.
start_link(#shoal_cfg{pool = Pool} = Cfg) ->
    gen_server:start_link({local, shoal_proto:member_name(Pool)}, ?MODULE, Cfg, []).

%% @private
-spec init(#shoal_cfg{}) -> {ok, #ms{}}.
init(#shoal_cfg{pool = Pool, table_bits = Bits} = Cfg0) ->
    process_flag(trap_exit, true),
    %% Every local register or unregister is a message to us (and each key of a burst of
    %% ensure_started_async/2 was one before the intake): queued on our heap, a burst of
    %% 100 k keys grew it to 2.4 M words (19 MB) that each collection copied; off the heap,
    %% 53 k words.
    process_flag(message_queue_data, off_heap),
    %% We hold the member's registered name, so a pool configuration left here is that of a
    %% member that died without its terminate/2 (killed): its supervisor restarted the
    %% pool's segments with us, and the old table goes with the old configuration.
    _ = persistent_term:erase(?PT_KEY(Pool)),
    CTab = ets:new(shoal_view, [set, protected, {read_concurrency, true}]),
    Asks = ets:new(shoal_asks, [set, public, {write_concurrency, true}]),
    Intake = ets:new(shoal_intake, [set, public, {write_concurrency, true}]),
    Cfg = Cfg0#shoal_cfg{table = shoal_registry:new(Bits),
                         counters = counters:new(?C_COUNT, [write_concurrency]),
                         meter = shoal_nif:meter_new(),
                         ctab = CTab,
                         asks = Asks,
                         intake = Intake,
                         intake_flag = atomics:new(1, []),
                         gate = shoal_view:new_gate(),
                         server = shoal_proto:member_name(Pool)},
    %% From now on the table stores replicas of admitted peers only.
    ok = shoal_registry:admit(Cfg, node(), false),
    persistent_term:put(?PT_KEY(Pool), Cfg),
    ok = net_kernel:monitor_nodes(true, [{node_type, all}]),
    erlang:send_after(?SWEEP_EVERY, self(), sweep_tombs),
    S0 = #ms{cfg = Cfg, vsn = shoal_proto:vsn()},
    S1 = lists:foldl(fun(N, Acc) -> probe(N, visible, Acc) end, S0, nodes(visible)),
    S2 = lists:foldl(fun(N, Acc) -> probe(N, hidden, Acc) end, S1, nodes(hidden)),
    {ok, propose(S2)}.

%% Every handler ends with tick/1: replication ops and async keys are buffered in the
%% state and sent when a batch is full, when the oldest has waited a millisecond, or when
%% the mailbox is empty (the 0 timeout). The only selective receive is more_events/4's,
%% bounded: table events already queued, taken in one pass.

%% @private
-spec handle_call(term(), gen_server:from(), #ms{}) ->
          {reply, term(), #ms{}, timeout()} | {noreply, #ms{}, timeout()}.
handle_call(await_active, From, #ms{active = none, waiting = Ws} = S) ->
    noreply(S#ms{waiting = [From | Ws]});
handle_call(await_active, _From, S) ->
    reply(ok, S);
handle_call({config, Item}, _From, #ms{cfg = Cfg, peers = Peers} = S) ->
    apply_config(Cfg, Item),
    _ = [shoal_proto:send(P, Cfg#shoal_cfg.pool, {config, Item})
         || #peer{pid = P} <- maps:values(Peers)],
    reply(ok, S);
handle_call(view, _From, #ms{p = P, active = A, view_no = N, peers = Peers, probes = Pr,
                             vsn = V} = S) ->
    reply(#{members => P, agreed => A =/= none, active => A, changes => N,
            peers => maps:keys(Peers), probing => lists:usort(maps:values(Pr)),
            protocol => maps:from_list([{node(), V} | [{Nd, PV} || {Nd, #peer{vsn = PV}}
                                                                    <- maps:to_list(Peers)]])}, S);
handle_call(_Req, _From, S) ->
    reply({error, unknown_call}, S).

%% @private
-spec handle_cast(term(), #ms{}) -> {noreply, #ms{}, timeout()}.
handle_cast(_Msg, S) -> noreply(S).

%% @private
-spec handle_info(term(), #ms{}) -> {noreply, #ms{}, timeout()}.
handle_info({'$shoal', _, _, _} = Msg, #ms{cfg = #shoal_cfg{pool = Pool}, vsn = V} = S) ->
    case shoal_proto:body(Msg, Pool, V) of
        {ok, Body} -> noreply(body(Body, S));
        {error, Why} ->
            logger:warning(#{what => shoal_dropped_message, pool => Pool, why => Why},
                           #{domain => [shoal]}),
            noreply(S)
    end;
handle_info({'$shoal_up', _, _, _} = Ev, S) -> noreply(events(Ev, S));
handle_info({'$shoal_down', _, _, _} = Ev, S) -> noreply(events(Ev, S));
handle_info({'$shoal_replaced', _, _, _, _, _, _} = Ev, S) -> noreply(events(Ev, S));
handle_info({'$shoal_claim', Ref, Result}, S) -> noreply(claim_resolved(Ref, Result, S));
handle_info({fence, Ref}, #ms{fence = Ref} = S) -> noreply(fenced(S));
handle_info({probe_timeout, Mref}, #ms{probes = Pr} = S) when is_map_key(Mref, Pr) ->
    erlang:demonitor(Mref, [flush]),
    noreply(propose(S#ms{probes = maps:remove(Mref, Pr)}));
handle_info(timeout, S) -> noreply(flush_async(S));
handle_info(flush_repl, S) -> noreply(flush(S));
handle_info(shoal_intake, S) -> noreply(take_intake(S));
handle_info({nodeup, Node, Info}, S) ->
    noreply(probe(Node, proplists:get_value(node_type, Info, visible), S));
handle_info({probe_timeout, Mref}, #ms{checks = Ch} = S) when is_map_key(Mref, Ch) ->
    erlang:demonitor(Mref, [flush]),  %% an ei node: it greets us if it is a member
    noreply(S#ms{checks = maps:remove(Mref, Ch)});
handle_info({nodedown, _Node, _Info}, S) -> noreply(S);  %% the monitors say it
handle_info({'DOWN', Ref, process, _, Reason}, S) -> noreply(down(Ref, Reason, S));
handle_info(sweep_tombs, #ms{cfg = Cfg, shadows = Sh} = S0) ->
    _ = shoal_registry:sweep_tombs(Cfg, ?TOMB_TTL),
    Old = now_ms() - ?SHADOW_TTL,
    S = S0#ms{shadows = maps:filter(fun(_, {_, _, _, T}) -> T > Old end, Sh)},
    erlang:send_after(?SWEEP_EVERY, self(), sweep_tombs),
    noreply(S);
handle_info(_Info, S) ->
    noreply(S).

noreply(S0) ->
    S = tick(S0),
    {noreply, S, idle_timeout(S)}.

reply(R, S0) ->
    S = tick(S0),
    {reply, R, S, idle_timeout(S)}.

tick(#ms{buf_len = N, buf_since = T0, async_len = A} = S0) ->
    S = case N > 0 andalso (N >= ?BATCH orelse now_us() - T0 >= ?MAX_DELAY_US) of
            true -> flush(S0);
            false -> S0
        end,
    case A >= ?BATCH of
        true -> flush_async(S);
        false -> S
    end.

idle_timeout(#ms{async = []}) -> infinity;
idle_timeout(_) -> 0.

%% @private
-spec terminate(term(), #ms{}) -> ok.
terminate(_Reason, #ms{cfg = #shoal_cfg{pool = Pool, table = T}}) ->
    _ = persistent_term:erase(?PT_KEY(Pool)),
    try shoal_registry:delete(T) catch error:badarg -> ok end,
    ok.

%%% Protocol bodies ------------------------------------------------------------------------

body({hello, Pid, Node, MinV, MaxV, Config}, S) -> hello(hello, Pid, Node, MinV, MaxV, Config, S);
body({hello_ack, Pid, Node, MinV, MaxV, Config}, S) ->
    hello(hello_ack, Pid, Node, MinV, MaxV, Config, S);
body({view, Node, Seq, P}, S) -> on_view(Node, Seq, P, S);
body({view_ack, Node, Seq}, S) -> on_view_ack(Node, Seq, S);
body({config, Item}, #ms{cfg = Cfg} = S) -> apply_config(Cfg, Item), S;
body({repl, Node, Ops}, S) -> from_peer(Node, S, fun() -> apply_ops(Node, Ops, 0, S) end);
body({sync, Node, T0, Entries, Part}, S) ->
    from_peer(Node, S, fun() -> on_sync(Node, T0, Entries, Part, S) end);
body({claim, Key, View, Caller}, S) -> on_claim(Key, View, Caller, S);
body({spawn, Key, View, Callers, Home, Min, Clock}, S) ->
    shoal_registry:observe(Clock),
    on_spawn(Key, View, Callers, Home, Min, S);
body({spawned, Key, Result}, S) -> on_spawned(Key, Result, S);
body({claim_async, Keys, View, From}, S) -> on_claim_async(Keys, View, From, S);
body({claim_async_retry, Keys}, #ms{async = A, async_len = N} = S) ->
    S#ms{async = Keys ++ A, async_len = N + length(Keys)};
body({spawn_async, Keys, View, Home, Clock}, S) ->
    shoal_registry:observe(Clock),
    on_spawn_async(Keys, View, Home, S);
body({spawned_async, Results}, S) -> on_spawned_async(Results, S);
body({where, Key, ReplyTo}, S) -> on_where(Key, ReplyTo, S);
body({refresh, Node, Keys}, S) -> on_refresh(Node, Keys, S);
body({takeover, Items, ReplyTo}, S) -> run(fun(Cfg) -> {taken, shoal_mover:takeover(Cfg, Items)} end, ReplyTo, S);
body({evacuate, ReplyTo}, S) -> run(fun(Cfg) -> {done, shoal_mover:evacuate(Cfg)} end, ReplyTo, S);
body({move_some, N, Dest, ReplyTo}, S) ->
    run(fun(Cfg) -> {done, shoal_mover:move_some(Cfg, N, Dest)} end, ReplyTo, S);
body({health, ReplyTo}, #ms{cfg = Cfg} = S) ->
    shoal_proto:reply(ReplyTo, Cfg#shoal_cfg.pool, done, [local_health(Cfg)]),
    S;
body({reroute, Key, Msgs}, #ms{cfg = Cfg} = S) ->
    _ = proc_lib:spawn(fun() -> reroute(Cfg, Key, Msgs) end),
    S;
body(_Unknown, S) ->
    S.

from_peer(Node, #ms{peers = Peers} = S, Fun) ->
    case maps:is_key(Node, Peers) of
        true -> Fun();
        false -> S  %% from a node that already left: its replicas were purged
    end.

%% A request that takes time (a takeover waits for successors' inits, a move for a round
%% trip) runs in a process of its own; it answers the requester itself.
run(Fun, ReplyTo, #ms{cfg = #shoal_cfg{pool = Pool} = Cfg} = S) ->
    _ = proc_lib:spawn(fun() ->
                               {Tag, Reply} = Fun(Cfg),
                               shoal_proto:reply(ReplyTo, Pool, Tag, [Reply])
                       end),
    S.

%%% Membership -----------------------------------------------------------------------------

%% A connected node may run this pool's member: greet it, and watch its registered name
%% until we hear from it (a `DOWN' with noproc says it has none). We are not active while
%% such a probe is open, so a node that started its pool before us is a peer before we
%% arbitrate; a probe nobody answers is closed after ?PROBE_TIMEOUT.
%%
%% A hidden node may be an ei C node (erl_call, a `bin/app eval'), which takes any message
%% for a name as the answer it waits for, and which cannot answer a monitor by name. So a
%% hidden node is first checked: a monitor of a name no node has comes back `noproc' at
%% once from an Erlang node (then it is probed like a visible one) and never from an ei
%% node (which, if it is a member, greets us itself). A check does not hold agreement back.
probe(Node, hidden, #ms{checks = Ch} = S) ->
    case known(Node, S) of
        true -> S;
        false ->
            Mref = erlang:monitor(process, {'$shoal_no_such_name', Node}),
            erlang:send_after(?PROBE_TIMEOUT, self(), {probe_timeout, Mref}),
            S#ms{checks = Ch#{Mref => Node}}
    end;
probe(Node, _Visible, #ms{cfg = #shoal_cfg{server = Name, pool = Pool}, probes = Pr} = S) ->
    case known(Node, S) of
        true -> S;
        false ->
            Mref = erlang:monitor(process, {Name, Node}),
            shoal_proto:send_node(Node, Name, Pool, hello_body(hello, S)),
            erlang:send_after(?PROBE_TIMEOUT, self(), {probe_timeout, Mref}),
            S#ms{probes = Pr#{Mref => Node}}
    end.

known(Node, #ms{peers = Peers, probes = Pr, checks = Ch}) ->
    maps:is_key(Node, Peers) orelse lists:member(Node, maps:values(Pr))
        orelse lists:member(Node, maps:values(Ch)).

hello_body(Tag, #ms{cfg = Cfg, vsn = V}) ->
    {Tag, self(), node(), shoal_proto:min_vsn(), V, local_config(Cfg)}.

hello(Tag, Pid, Node, MinV, MaxV, Config, #ms{cfg = Cfg, peers = Peers, vsn = V} = S0) ->
    S = close_probe(Node, S0),
    [apply_config(Cfg, Item) || Item <- Config],
    Compatible = MinV =< V andalso MaxV >= shoal_proto:min_vsn(),
    case maps:find(Node, Peers) of
        _ when not Compatible ->
            logger:error(#{what => shoal_incompatible_member, node => Node,
                           versions => {MinV, MaxV}}, #{domain => [shoal]}),
            propose(S);
        {ok, #peer{pid = Pid}} ->
            S;
        {ok, #peer{}} ->
            %% Its member restarted before we saw the old one go.
            add_peer(Tag, Pid, Node, min(MaxV, V), peer_left(Node, restarted, S));
        error ->
            add_peer(Tag, Pid, Node, min(MaxV, V), S)
    end.

close_probe(Node, #ms{probes = Pr} = S) ->
    Gone = [R || {R, N} <- maps:to_list(Pr), N =:= Node],
    _ = [erlang:demonitor(R, [flush]) || R <- Gone],
    S#ms{probes = maps:without(Gone, Pr)}.

%% A new peer: answer its hello, watch it, send it everything we own (sync), and propose
%% the view with it in.
add_peer(Tag, Pid, Node, Vsn, #ms{cfg = #shoal_cfg{pool = Pool, ctab = CTab} = Cfg,
                                  peers = Peers} = S) ->
    Tag =:= hello andalso shoal_proto:send(Pid, Pool, hello_body(hello_ack, S)),
    Mref = erlang:monitor(process, Pid),
    ets:insert(CTab, {{peer, Node}, Pid}),
    ok = shoal_registry:admit(Cfg, Node, true),
    ok = shoal_registry:set_listener(Cfg, self()),
    send_sync(Cfg, Pid),
    shoal_log:log(notice, node_up, #{pool => Pool, node => Node}, #{}),
    shoal_telemetry:execute([shoal, node, up], #{system_time => erlang:system_time()},
                            #{pool => Pool, node => Node}),
    propose(S#ms{peers = Peers#{Node => #peer{pid = Pid, mref = Mref, vsn = Vsn}}}).

%% A peer's member went down (its pool stopped, its node left or the link broke).
peer_left(Node, Reason, #ms{cfg = #shoal_cfg{pool = Pool, ctab = CTab} = Cfg} = S0) ->
    %% No arbitration runs while the table loses Node's replicas (the view changes anyway:
    %% propose/1 below fences): one could find a key absent whose worker is only listed
    %% again by the refresh.
    #ms{peers = Peers} = S = close(S0),
    wait_inflight(Cfg),
    shoal_log:log(notice, node_down, #{pool => Pool, node => Node}, #{reason => Reason}),
    shoal_telemetry:execute([shoal, node, down], #{system_time => erlang:system_time()},
                            #{pool => Pool, node => Node, reason => Reason}),
    #peer{mref = Mref} = maps:get(Node, Peers),
    erlang:demonitor(Mref, [flush]),
    ets:delete(CTab, {peer, Node}),
    ets:match_delete(CTab, {{window, Node}, '_'}),
    ets:delete(CTab, {drained, Node}),
    ok = shoal_view:placement_changed(Cfg),
    %% Dismissed before the purge: a replica of Node that arrives late by another path (a
    %% caller's read-your-writes, a mover) can no longer be stored.
    ok = shoal_registry:admit(Cfg, Node, false),
    Lost = shoal_registry:keys_on(Cfg, Node),
    _ = shoal_registry:purge_node(Cfg, Node),
    %% After the peer's row is gone (see shoal_view:ask/3).
    ok = shoal_view:fail_asks(Cfg, Node),
    S1 = abandon_spawns(Node, S#ms{peers = maps:remove(Node, Peers),
                                   sync_in = maps:remove(Node, S#ms.sync_in),
                                   shadows = maps:filter(fun(_, {N, _, _, _}) -> N =/= Node end,
                                                         S#ms.shadows)}),
    map_size(S1#ms.peers) =:= 0 andalso shoal_registry:set_listener(Cfg, undefined),
    ask_refresh(Lost, S1),
    propose(S1).

%% A replica of a node that left may have kept an older `up' of another owner out (a worker
%% that took its key back from a migration to that node which failed: its version need not
%% be above the lost successor's). Now that those replicas are gone, ask the other peers
%% to announce again what they own of those keys: asked after the purge, on the ordered
%% channel, so their answer cannot be refused by what was purged.
ask_refresh([], _S) -> ok;
ask_refresh(Keys, #ms{cfg = #shoal_cfg{pool = Pool}, peers = Peers}) ->
    _ = [shoal_proto:send(Pid, Pool, {refresh, node(), Chunk})
         || #peer{pid = Pid} <- maps:values(Peers), Chunk <- shoal_proto:chunks(Keys, ?BATCH)],
    ok.

%% A peer lost a node and asks what we own of the keys it held replicas of: our pending ops
%% first (so the answer is not overtaken by older ones), then an `up' of each, in a batch.
on_refresh(Node, Keys, #ms{cfg = #shoal_cfg{pool = Pool} = Cfg, peers = Peers} = S) ->
    case maps:find(Node, Peers) of
        {ok, #peer{pid = Pid}} ->
            S1 = flush(S),
            Ops = [{up, K, node(), W, V} || K <- Keys, {local, W, V, _} <- [shoal_registry:lookup(Cfg, K)]],
            Ops =/= [] andalso shoal_proto:send(Pid, Pool, {repl, node(), Ops}),
            S1;
        error ->
            S
    end.

down(Ref, _Reason, #ms{probes = Pr} = S) when is_map_key(Ref, Pr) ->
    propose(S#ms{probes = maps:remove(Ref, Pr)});
down(Ref, Reason, #ms{checks = Ch} = S) when is_map_key(Ref, Ch) ->
    {Node, Ch1} = maps:take(Ref, Ch),
    case Reason of
        noproc -> probe(Node, visible, S#ms{checks = Ch1});  %% an Erlang node
        _ -> S#ms{checks = Ch1}                              %% gone
    end;
down(Ref, Reason, #ms{claims = Claims} = S) when is_map_key(Ref, Claims) ->
    claimer_down(Ref, Reason, S);
down(Ref, Reason, #ms{peers = Peers} = S) ->
    case [N || {N, #peer{mref = R}} <- maps:to_list(Peers), R =:= Ref] of
        [Node] -> peer_left(Node, Reason, S);
        [] -> claimer_down(Ref, gone, S)
    end.

%% Our proposed view is ourself and our peers. When it changes we fence (fence/1) and,
%% once the fence is done (fenced/1), tell every peer and acknowledge the peers that already
%% proposed the same.
propose(#ms{cfg = #shoal_cfg{ctab = CTab}, peers = Peers, p = Old, seq = Seq} = S0) ->
    P = lists:sort([node() | maps:keys(Peers)]),
    case P =:= Old of
        true -> maybe_activate(S0);
        false ->
            ets:insert(CTab, {members, P}),
            S1 = S0#ms{p = P, seq = Seq + 1},
            case map_size(Peers) of
                0 ->
                    %% Alone: nobody to tell, only arbitrations to let finish.
                    S2 = close(S1),
                    wait_inflight(S2#ms.cfg),
                    maybe_activate(S2);
                _ ->
                    fence(S1)
            end
    end.

close(#ms{active = none} = S) -> S;
close(#ms{cfg = Cfg} = S) ->
    ok = shoal_view:close(Cfg),
    S#ms{active = none}.

%% Close the gate and let the arbitrations inside finish; their registrations' events are
%% then in our mailbox, ahead of the marker we send ourselves. When the marker comes
%% (fenced/1) every one of them is in our buffer: we send it, and only then our `view' and
%% our acknowledgements. So a peer that hears our next `view' (or acknowledgement) has
%% heard of every worker we registered under the old view. While a fence is in progress we
%% acknowledge nothing and cannot become active.
fence(#ms{fence = none, cfg = Cfg} = S0) ->
    S = close(S0),
    wait_inflight(Cfg),
    Ref = make_ref(),
    self() ! {fence, Ref},
    S#ms{fence = Ref};
fence(S) ->
    S.  %% the marker on its way will send the view as it is by then

wait_inflight(Cfg) ->
    case shoal_view:inflight(Cfg) of
        0 -> ok;
        _ -> erlang:yield(), wait_inflight(Cfg)
    end.

fenced(#ms{cfg = #shoal_cfg{pool = Pool}, peers = Peers, p = P, seq = Seq} = S0) ->
    S = flush(S0#ms{fence = none}),
    _ = [shoal_proto:send(Pid, Pool, {view, node(), Seq, P})
         || #peer{pid = Pid} <- maps:values(Peers)],
    _ = [shoal_proto:send(Pid, Pool, {view_ack, node(), PSeq})
         || #peer{pid = Pid, last_view = {PSeq, PV}} <- maps:values(Peers), PV =:= P],
    maybe_activate(S).

on_view(Node, Seq, PV, #ms{cfg = Cfg, peers = Peers, p = P, fence = F} = S) ->
    case maps:find(Node, Peers) of
        {ok, #peer{pid = Pid} = Peer} ->
            %% During a fence the acknowledgement waits for fenced/1.
            PV =:= P andalso F =:= none andalso
                shoal_proto:send(Pid, Cfg#shoal_cfg.pool, {view_ack, node(), Seq}),
            S#ms{peers = Peers#{Node := Peer#peer{last_view = {Seq, PV}}}};
        error ->
            S
    end.

on_view_ack(Node, Seq, #ms{peers = Peers, seq = Seq} = S) ->
    case maps:find(Node, Peers) of
        {ok, Peer} -> maybe_activate(S#ms{peers = Peers#{Node := Peer#peer{acked = Seq}}});
        error -> S
    end;
on_view_ack(_Node, _OldSeq, S) ->
    S.

%% Active once every peer acknowledged our current proposal, no probe is open, and the
%% view has at least the pool's quorum of members.
maybe_activate(#ms{active = none, fence = none, probes = Pr, peers = Peers, seq = Seq, p = P,
                   cfg = #shoal_cfg{quorum = Q} = Cfg, view_no = N, waiting = Ws} = S)
  when map_size(Pr) =:= 0, length(P) >= Q ->
    case lists:all(fun(#peer{acked = A}) -> A =:= Seq end, maps:values(Peers)) of
        true ->
            ok = shoal_view:open(Cfg, N + 1, P),
            _ = [gen_server:reply(From, ok) || From <- Ws],
            flush_async(S#ms{active = P, view_no = N + 1, waiting = []});
        false ->
            S
    end;
maybe_activate(S) ->
    S.

%%% Replication ----------------------------------------------------------------------------

%% Table events become replication ops in our buffer (see tick/1). The table sends one
%% message per event, so a drain or a burst of spawns queues tens of thousands here: the
%% events already queued are taken in the same pass (in their order, up to ?EVENTS of them
%% and never past a full batch), so a burst pays the server loop, the tick and the state's
%% update once per pass, not once per event. A pass ends at the first receive that finds
%% no event (one look over the queue, which a burst of events keeps short of others).
events(Ev, #ms{cfg = Cfg, buf = B0, buf_len = N0} = S) ->
    {B1, N1} = add_op(Cfg, Ev, B0, N0),
    {B, N} = more_events(Cfg, B1, N1, ?EVENTS - 1),
    if
        N =:= N0 -> S;
        N0 =:= 0 ->
            %% A batch begins: it goes out within a millisecond (see tick/1 too).
            erlang:send_after(?MAX_DELAY_US div 1000, self(), flush_repl),
            S#ms{buf = B, buf_len = N, buf_since = now_us()};
        true -> S#ms{buf = B, buf_len = N}
    end.

add_op(Cfg, Ev, B, N) ->
    case op(Cfg, Ev) of
        skip -> {B, N};
        Op -> {[Op | B], N + 1}
    end.

more_events(_Cfg, B, N, 0) -> {B, N};
more_events(_Cfg, B, N, _) when N >= ?BATCH -> {B, N};
more_events(Cfg, B, N, Left) ->
    receive
        {'$shoal_up', _, _, _} = Ev -> more_op(Cfg, Ev, B, N, Left);
        {'$shoal_down', _, _, _} = Ev -> more_op(Cfg, Ev, B, N, Left);
        {'$shoal_replaced', _, _, _, _, _, _} = Ev -> more_op(Cfg, Ev, B, N, Left)
    after 0 -> {B, N}
    end.

more_op(Cfg, Ev, B, N, Left) ->
    case op(Cfg, Ev) of
        skip -> more_events(Cfg, B, N, Left - 1);
        Op -> more_events(Cfg, [Op | B], N + 1, Left - 1)
    end.

%% Send the buffered ops to every peer, in the order they happened: as they are to a peer
%% that speaks version 1 only, in version 2's shorter forms to the others (see v2/2).
flush(#ms{buf_len = 0} = S) -> S;
flush(#ms{cfg = #shoal_cfg{pool = Pool}, peers = Peers, buf = B} = S) ->
    Ops = lists:reverse(B),
    _ = [case V of
             1 -> shoal_proto:send(Pid, Pool, {repl, node(), Ops});
             _ -> shoal_proto:send(Pid, Pool, 2, {repl, node(), v2(Node, Ops)})
         end || {Node, #peer{pid = Pid, vsn = V}} <- maps:to_list(Peers)],
    S#ms{buf = [], buf_len = 0}.

%% The ops for peer Node in version 2's forms, which leave out what the receiver knows: the
%% owner (always the sender, whose name the `repl' carries), and the pid of an incarnation
%% that is gone (a removal needs only its version). A `moved' to the node that runs the
%% successor is the `down' it would apply of it (see apply_op/5): the successor is its own.
v2(_Node, []) -> [];
v2(Node, [{up, K, _, Pid, Vsn} | Ops]) -> [{up, K, Pid, Vsn} | v2(Node, Ops)];
v2(Node, [{down, K, _, _, Vsn} | Ops]) -> [{down, K, Vsn} | v2(Node, Ops)];
v2(Node, [{moved, K, _, _, Vsn, Node, _, _} | Ops]) -> [{down, K, Vsn} | v2(Node, Ops)];
v2(Node, [{moved, K, _, _, Vsn, NewNode, NewPid, NewVsn} | Ops]) ->
    [{moved, K, Vsn, NewNode, NewPid, NewVsn} | v2(Node, Ops)].

now_us() -> erlang:monotonic_time(microsecond).

%% An `up' is only announced if the worker is still there at that version: its `down' may
%% have overtaken it (the two come from different processes). A replaced entry (a move's
%% source pointing at the successor, a conflict's loser at the winner) is relayed as one
%% `moved' op: the `up' of its successor, which a peer applies if it would apply that `up',
%% and otherwise (the successor's owner is no peer of it any more: the target died; or it
%% is that owner) the `down' of what we stopped owning. After an applied `up' that `down'
%% could never change anything (the entry is then newer than it), so this is the `up'
%% followed by the `down', in one op.
op(Cfg, {'$shoal_up', Key, Pid, Vsn}) ->
    case shoal_registry:lookup(Cfg, Key) of
        {local, Pid, Vsn, _} -> {up, Key, node(), Pid, Vsn};
        _ -> skip
    end;
op(_Cfg, {'$shoal_down', Key, Pid, Vsn}) -> {down, Key, node(), Pid, Vsn};
op(_Cfg, {'$shoal_replaced', Key, Pid, Vsn, Node, NewPid, NewVsn}) ->
    {moved, Key, node(), Pid, Vsn, Node, NewPid, NewVsn}.

apply_ops(Node, Ops, Mark, #ms{cfg = Cfg, shadows = Sh} = S) ->
    apply_each(Cfg, Node, Ops, Mark, S),
    case map_size(Sh) of
        0 -> S;
        _ -> S#ms{shadows = after_ops(Cfg, Node, Ops, Sh)}
    end.

apply_each(_Cfg, _Node, [], _Mark, _S) -> ok;
apply_each(Cfg, Node, [Op | Ops], Mark, S) ->
    _ = apply_op(Cfg, Node, Op, Mark, S),
    apply_each(Cfg, Node, Ops, Mark, S).

apply_op(Cfg, _From, {up, Key, Node, Pid, Vsn}, Mark, S) ->
    put_up(Cfg, Key, Node, Pid, Vsn, Mark, none, S);
apply_op(Cfg, From, {moved, Key, Node, Pid, Vsn, NewNode, NewPid, NewVsn}, Mark, S) ->
    case NewNode =/= node() andalso known_node(NewNode, S) of
        true -> apply_op(Cfg, From, {up, Key, NewNode, NewPid, NewVsn}, Mark, S);
        false ->
            %% (our clock passed NewVsn already if the successor is ours)
            NewNode =:= node() orelse shoal_registry:observe(NewVsn),
            apply_op(Cfg, From, {down, Key, Node, Pid, Vsn}, Mark, S)
    end;
apply_op(Cfg, _From, {down, Key, Node, _Pid, Vsn}, _Mark, _S) -> %% version 1's forms
    _ = shoal_registry:remove_remote(Cfg, Key, Node, Vsn),
    ok;
%% Version 2's forms (v2/2): the owner is the sender.
apply_op(Cfg, From, {up, Key, Pid, Vsn}, Mark, S) ->
    apply_op(Cfg, From, {up, Key, From, Pid, Vsn}, Mark, S);
apply_op(Cfg, From, {down, Key, Vsn}, _Mark, _S) ->
    _ = shoal_registry:remove_remote(Cfg, Key, From, Vsn),
    ok;
apply_op(Cfg, From, {moved, Key, Vsn, NewNode, NewPid, NewVsn}, Mark, S) ->
    case NewNode =/= node() andalso known_node(NewNode, S) of
        true -> apply_op(Cfg, From, {up, Key, NewNode, NewPid, NewVsn}, Mark, S);
        false ->
            NewNode =:= node() orelse shoal_registry:observe(NewVsn),
            apply_op(Cfg, From, {down, Key, Vsn}, Mark, S)
    end.

put_up(Cfg, Key, Node, Pid, Vsn, Mark, T0, S) ->
    case known_node(Node, S) of
        true ->
            Put = case T0 of
                      none -> shoal_registry:put_remote(Cfg, Key, Node, Pid, Vsn, Mark);
                      _ -> shoal_registry:put_synced(Cfg, Key, Node, Pid, Vsn, Mark, T0)
                  end,
            case Put of
                {conflict, Mine, _MyVsn} ->
                    %% The loser stores the winner's replica itself, with the mark of the
                    %% sync (if any) this came in, so the sync's sweep keeps it.
                    Mine ! {'$shoal_yield', Node, Pid, Vsn, Mark},
                    Put;
                _ -> Put
            end;
        false ->
            %% A relay about a node that is not (or no longer) our peer: not stored, but
            %% our clock passes it (a take-back must be above a lost successor's version).
            shoal_registry:observe(Vsn),
            stale
    end.

%%% Twins met in a sync (shadows) -------------------------------------------------------------
%%
%% Two live workers of one key on two other nodes (twins of a partition; they settle as a
%% conflict once their nodes meet) leave one replica here: the newer. Should the newer die
%% before the twins met (a stop, an offload), its `down' leaves a tomb, and the older, still
%% alive, is announced to us by nobody again: our table would miss a live worker for good
%% (the chaos suite, seed 14 for 60 s). So a sync entry that our table refuses for a third
%% node's newer replica, or that replaces a third node's replica, leaves a shadow of the
%% older twin; a `down' that then removes the newer one stores the shadow again (over that
%% tomb), and anything its own node says of it (its `down', its `moved' to the winner) or
%% its node leaving drops the shadow. Shadows older than ?SHADOW_TTL go.

%% Key's entry before a sync's entry {Node, Pid, Vsn} was put (Before) and the put's
%% result: the shadow it leaves, if any.
shadow(Key, Node, Pid, Vsn, {remote, N0, P0, V0}, Put, Sh) when N0 =/= Node ->
    case Put of
        stored -> Sh#{Key => {N0, P0, V0, now_ms()}};
        stale when V0 > Vsn -> Sh#{Key => {Node, Pid, Vsn, now_ms()}};
        _ -> Sh
    end;
shadow(_Key, _Node, _Pid, _Vsn, _Before, _Put, Sh) -> Sh.

%% After a batch of ops from From: drop the shadows their own node spoke of; store again
%% those whose newer twin a `down' removed.
after_ops(_Cfg, _From, [], Sh) -> Sh;
after_ops(Cfg, From, [Op | Ops], Sh) ->
    after_ops(Cfg, From, Ops, after_op(Cfg, From, removal(From, Op), Sh)).

%% The removal an op makes: {Key, Node, Vsn} (a `moved' removes the old incarnation), or none.
removal(_From, {down, K, N, _P, V}) -> {K, N, V};
removal(From, {down, K, V}) -> {K, From, V};
removal(_From, {moved, K, N, _P, V, _NN, _NP, _NV}) -> {K, N, V};
removal(From, {moved, K, V, _NN, _NP, _NV}) -> {K, From, V};
removal(_From, _Op) -> none.

after_op(_Cfg, _From, none, Sh) -> Sh;
after_op(Cfg, _From, {K, N, V}, Sh) ->
    case maps:find(K, Sh) of
        {ok, {N, _, SV, _}} when SV =< V -> maps:remove(K, Sh);     %% the twin itself went
        {ok, {SN, SP, SV, _}} when SN =/= N ->
            case shoal_registry:lookup(Cfg, K) of
                {tomb, TV} when TV =:= V ->
                    %% The newer twin is gone: the older is the key's worker again.
                    _ = shoal_registry:put_synced(Cfg, K, SN, SP, SV, 0, V + 1),
                    maps:remove(K, Sh);
                undefined ->
                    _ = shoal_registry:put_synced(Cfg, K, SN, SP, SV, 0, V + 1),
                    maps:remove(K, Sh);
                _ -> Sh
            end;
        _ -> Sh
    end.

now_ms() -> erlang:monotonic_time(millisecond).

known_node(Node, #ms{peers = Peers}) -> maps:is_key(Node, Peers).

%% Everything we own, to a new peer, with our clock at the start of the walk.
send_sync(#shoal_cfg{pool = Pool} = Cfg, Pid) ->
    T0 = shoal_registry:hlc(),
    Owned = shoal_registry:owned(Cfg),
    send_chunks(Pid, Pool, T0, Owned).

send_chunks(Pid, Pool, T0, Entries) ->
    case shoal_proto:chunks(Entries, ?BATCH) of
        [] -> shoal_proto:send(Pid, Pool, {sync, node(), T0, [], only});
        [Only] -> shoal_proto:send(Pid, Pool, {sync, node(), T0, Only, only});
        [First | Rest] ->
            shoal_proto:send(Pid, Pool, {sync, node(), T0, First, first}),
            send_rest(Pid, Pool, T0, Rest)
    end.

send_rest(Pid, Pool, T0, [Last]) -> shoal_proto:send(Pid, Pool, {sync, node(), T0, Last, last});
send_rest(Pid, Pool, T0, [Chunk | Rest]) ->
    shoal_proto:send(Pid, Pool, {sync, node(), T0, Chunk, middle}),
    send_rest(Pid, Pool, T0, Rest).

%% A peer's sync: apply its entries like ups, tagged with a mark of this sync; after the
%% last chunk, drop its replicas the sync did not confirm and that are older than its walk.
on_sync(Node, T0, Entries, Part, #ms{cfg = Cfg, sync_in = In, mark = M0} = S) ->
    {Mark, S1} = case Part of
                     P when P =:= first; P =:= only ->
                         M = (M0 rem 16#fffffffe) + 1,
                         {M, S#ms{mark = M, sync_in = In#{Node => M}}};
                     _ ->
                         {maps:get(Node, In, 0), S}
                 end,
    Sh = sync_entries(Cfg, Node, T0, Entries, Mark, S1, S1#ms.shadows),
    S2 = S1#ms{shadows = Sh},
    case Part of
        P2 when P2 =:= last; P2 =:= only ->
            _ = shoal_registry:sweep_node(Cfg, Node, Mark, T0),
            S2#ms{sync_in = maps:remove(Node, S2#ms.sync_in)};
        _ ->
            S2
    end.

%% A sync's entries, applied like `up's that tombs of other nodes from before T0 do not
%% refuse (shoal_nif:put_synced/7), each noting the twin it meets (shadow/7).
sync_entries(_Cfg, _Node, _T0, [], _Mark, _S, Sh) -> Sh;
sync_entries(Cfg, Node, T0, [{K, Pid, V} | Entries], Mark, S, Sh) ->
    Before = shoal_registry:lookup(Cfg, K),
    Put = put_up(Cfg, K, Node, Pid, V, Mark, T0, S),
    sync_entries(Cfg, Node, T0, Entries, Mark, S, shadow(K, Node, Pid, V, Before, Put, Sh)).

%%% Arbitration: the home's side -------------------------------------------------------------

on_claim(Key, View, Caller, #ms{active = View, pending = Pending} = S) when View =/= none ->
    case maps:find(Key, Pending) of
        {ok, Callers} -> S#ms{pending = Pending#{Key := [Caller | Callers]}};
        error -> arbitrate(Key, [Caller], S)
    end;
on_claim(_Key, _View, Caller, #ms{cfg = Cfg} = S) ->
    answer([Caller], Cfg, retry, false),
    S.

%% Claim Key for Callers, as its home: answer at once if it has a worker, queue them if
%% another process is arbitrating it, else place it here or ask the host.
arbitrate(Key, Callers, #ms{cfg = Cfg, active = View, pending = Pending, claims = Claims} = S) ->
    Ref = make_ref(),
    Min = shoal_arbiter:tomb_floor(Cfg, Key),
    case shoal_registry:claim(Cfg, Key, Ref) of
        {ok, _} ->
            answer(Callers, Cfg, existing(Cfg, Key), false),
            S;
        {wait, Claimer} ->
            Mref = erlang:monitor(process, Claimer),
            S#ms{pending = Pending#{Key => Callers}, claims = Claims#{Ref => {Key, Claimer, Mref}}};
        claimed ->
            case shoal_arbiter:choose_host(Cfg, Key, View) of
                {ok, Host} when Host =:= node() ->
                    {_, S1} = spawn_here(Key, Callers, defer, S),
                    S1;
                {ok, Host} ->
                    #peer{pid = HostPid} = maps:get(Host, S#ms.peers),
                    shoal_proto:send(HostPid, Cfg#shoal_cfg.pool,
                                     {spawn, Key, View, Callers, self(), Min,
                                      shoal_registry:hlc()}),
                    S#ms{pending = Pending#{Key => Callers},
                         spawning = (S#ms.spawning)#{Key => Host},
                         sent = (S#ms.sent)#{Key => length(Callers)}};
                {error, R} ->
                    _ = shoal_registry:release_claim(Cfg, Key, {error, R}),
                    answer(Callers, Cfg, {error, R}, false),
                    S
            end
    end.

%% As the host: start Key's worker here (or answer the one there is), for Callers. How:
%% `defer' if the callers watch this member (they asked us), `ack' if they watch another
%% (the home that asked us on their behalf): see started/4.
place_here(Key, Callers, Min, How, #ms{cfg = Cfg} = S) ->
    Min > 0 andalso shoal_registry:observe(Min),
    case shoal_registry:claim(Cfg, Key, nowait) of
        claimed -> spawn_here(Key, Callers, How, S);
        {ok, _} ->
            case existing(Cfg, Key) of
                {ok, N, _, V} when V =< Min, N =/= node() ->
                    spawn_over_here(Key, Callers, Min, How, S);
                R ->
                    answer(Callers, Cfg, R, false),
                    {R, S}
            end;
        {wait, _} ->
            %% A local process arbitrates it (from a view where we were its home): let the
            %% home try again shortly.
            answer(Callers, Cfg, retry, false),
            {retry, S}
    end.

%% We hold Key's claim and it goes here: spawn and register (the member's own arbitration
%% never overlaps a fence: both run in this process).
spawn_here(Key, Callers, How, S) ->
    started(Callers, How, S,
            fun(Cfg, Acks) -> shoal_arbiter:spawn_claimed(Cfg, Key, Acks) end).

spawn_over_here(Key, Callers, Min, How, S) ->
    started(Callers, How, S,
            fun(Cfg, Acks) -> shoal_arbiter:spawn_over(Cfg, Key, Acks, Min) end).

%% Spawn with Spawn. Callers that do not wait for init/2 get the worker at once. Those that
%% do (`Sync'): with `defer', from the worker itself once init/2 has run, in one message each
%% (what a spawn for a caller on another node costs on the wire besides its request), or,
%% should it die first, from its segment, which reads them in the worker's row
%% (shoal_segment); they watch this member for the loss of its node. With `ack', at once,
%% and the worker tells them when init/2 has run (they watch it from then on).
started(Callers, How, #ms{cfg = Cfg} = S, Spawn) ->
    {Sync, Async} = lists:partition(fun({_, _, Sy}) -> Sy end, Callers),
    Acks = case {Sync, How} of
               {[], _} -> [];
               {_, defer} -> [{claimed, C} || C <- Sync];
               {_, ack} -> [{Pid, Ref} || {Pid, Ref, true} <- Sync]
           end,
    case Spawn(Cfg, Acks) of
        {spawned, Pid, Vsn} ->
            Result = {ok, node(), Pid, Vsn},
            answer(Async, Cfg, Result, false),
            How =:= ack andalso answer(Sync, Cfg, Result, true),
            {Result, S};
        retry ->
            answer(Callers, Cfg, retry, false),
            {retry, S}
    end.

existing(Cfg, Key) ->
    case shoal_registry:worker(Cfg, Key) of
        {Node, Pid, Vsn} -> {ok, Node, Pid, Vsn};
        undefined -> retry
    end.

%% Callers learn the result; `started' says the worker was spawned for them and its init/2
%% has run, `true' that it was spawned for them and will tell them when init/2 has run,
%% `false' neither (a sync caller asks the worker itself); with `{error, _}',
%% `{failed, Vsn}' gives the version the failed worker was registered at.
answer(Callers, #shoal_cfg{pool = Pool}, Result, How) ->
    _ = [shoal_proto:reply(C, Pool, claimed, [Result, How]) || C <- Callers],
    ok.

%% A claim we waited on resolved.
claim_resolved(Ref, Result, #ms{claims = Claims, pending = Pending, cfg = Cfg} = S) ->
    case maps:take(Ref, Claims) of
        {{Key, _Claimer, Mref}, Claims1} ->
            erlang:demonitor(Mref, [flush]),
            {Callers, Pending1} = take_pending(Key, Pending),
            S1 = S#ms{claims = Claims1, pending = Pending1},
            case Result of
                {ok, _Pid} -> answer(Callers, Cfg, existing(Cfg, Key), false), S1;
                {error, _} = E -> answer(Callers, Cfg, E, false), S1;
                retry -> rearbitrate(Key, Callers, S1)
            end;
        error ->
            S
    end.

%% The claimer we waited on died: clear its claim (its other waiters retry) and arbitrate
%% again for our callers.
claimer_down(Ref, _Reason, #ms{claims = Claims, pending = Pending, cfg = Cfg} = S) ->
    case maps:take(Ref, Claims) of
        {{Key, Claimer, _}, Claims1} ->
            _ = shoal_registry:unregister(Cfg, Key, Claimer),
            {Callers, Pending1} = take_pending(Key, Pending),
            rearbitrate(Key, Callers, S#ms{claims = Claims1, pending = Pending1});
        error ->
            S
    end.

rearbitrate(_Key, [], S) -> S;
rearbitrate(_Key, Callers, #ms{active = none, cfg = Cfg} = S) ->
    answer(Callers, Cfg, retry, false),
    S;
rearbitrate(Key, Callers, S) ->
    arbitrate(Key, Callers, S).

take_pending(Key, Pending) ->
    case maps:take(Key, Pending) of
        {Cs, P1} -> {Cs, P1};
        error -> {[], Pending}
    end.

%% The host we asked answered. It answered the callers it was given itself; we answer
%% those that came since (the newest first in the list).
on_spawned(Key, Result, #ms{cfg = Cfg, pending = Pending, spawning = Sp, sent = Sent} = S) ->
    {All, Pending1} = take_pending(Key, Pending),
    Callers = lists:sublist(All, length(All) - maps:get(Key, Sent, 0)),
    S1 = S#ms{pending = Pending1, spawning = maps:remove(Key, Sp), sent = maps:remove(Key, Sent)},
    case Result of
        {ok, Node, Pid, Vsn} ->
            _ = shoal_registry:put_remote(Cfg, Key, Node, Pid, Vsn, 0),
            case shoal_arbiter:settle(Cfg, Key, self(), ok) of
                ok -> answer(Callers, Cfg, Result, false);
                retry -> answer(Callers, Cfg, retry, false)
            end;
        retry ->
            _ = shoal_registry:release_claim(Cfg, Key, retry),
            answer(Callers, Cfg, retry, false);
        {error, _} = E ->
            _ = shoal_registry:release_claim(Cfg, Key, E),
            answer(Callers, Cfg, E, false)
    end,
    S1.

%% A host left while we waited for it: give its keys' claims up; their callers retry
%% (callers it already answered ignore the second answer: replies go to their aliases).
abandon_spawns(Node, #ms{spawning = Sp, cfg = Cfg} = S) ->
    Lost = [K || {K, H} <- maps:to_list(Sp), H =:= Node],
    lists:foldl(fun(K, Acc) ->
                        {Cs, P1} = take_pending(K, Acc#ms.pending),
                        _ = shoal_registry:release_claim(Cfg, K, retry),
                        answer(Cs, Cfg, retry, false),
                        Acc#ms{pending = P1}
                end, S#ms{spawning = maps:without(Lost, Sp),
                          sent = maps:without(Lost, S#ms.sent)}, Lost).

%%% Arbitration: the host's side ----------------------------------------------------------

%% Min: the version of the tomb the home's claim replaced. A replica here that is not newer
%% names a worker the home knows is dead (its `down' is on its way to us): we place the
%% key over it. Our clock is raised past Min first, so the worker we start is newer.
on_spawn(Key, View, Callers, Home, Min, #ms{active = View, cfg = Cfg} = S) when View =/= none ->
    How = case is_pid(Home) of true -> ack; false -> defer end,
    {Result, S1} = place_here(Key, Callers, Min, How, S),
    is_pid(Home) andalso shoal_proto:send(Home, Cfg#shoal_cfg.pool, {spawned, Key, Result}),
    S1;
on_spawn(Key, _View, Callers, Home, _Min, #ms{cfg = Cfg} = S) ->
    answer(Callers, Cfg, retry, false),
    is_pid(Home) andalso shoal_proto:send(Home, Cfg#shoal_cfg.pool, {spawned, Key, retry}),
    S.

%%% ensure_started_async --------------------------------------------------------------------

%% Take up to ?BATCH of the keys callers left in the intake (shoal_arbiter:spawn_async/2).
%% The flag goes down first, so a key put in after it is either in this take or comes with
%% a new `shoal_intake'. With more left, we come back after the messages queued meanwhile
%% (our peers' replication among them), not before.
take_intake(#ms{cfg = #shoal_cfg{intake = Q, intake_flag = F}, async = A, async_len = N} = S) ->
    atomics:put(F, 1, 0),
    case ets:select(Q, [{{'$1'}, [], ['$1']}], ?BATCH) of
        '$end_of_table' ->
            S;
        {Keys, _} ->
            _ = [ets:delete(Q, K) || K <- Keys],
            length(Keys) =:= ?BATCH andalso (self() ! shoal_intake),
            S#ms{async = Keys ++ A, async_len = N + length(Keys)}
    end.

%% Route queued keys to their homes, once we are active.
flush_async(#ms{active = none} = S) -> S;
flush_async(#ms{async = []} = S) -> S;
flush_async(#ms{async = Keys, active = [Node]} = S) when Node =:= node() ->
    %% Alone: every key is ours to place, here.
    arbitrate_async(lists:reverse(Keys), S#ms{async = [], async_len = 0});
flush_async(#ms{async = Keys, active = View, cfg = #shoal_cfg{pool = Pool}, peers = Peers} = S) ->
    ByHome = group(fun(K) -> shoal_placement:home(K, View) end, lists:usort(Keys)),
    S1 = S#ms{async = [], async_len = 0},
    maps:fold(fun(Home, HKeys, Acc) when Home =:= node() -> arbitrate_async(HKeys, Acc);
                 (Home, HKeys, Acc) ->
                      #peer{pid = Pid} = maps:get(Home, Peers),
                      shoal_proto:send(Pid, Pool, {claim_async, HKeys, View, self()}),
                      Acc
              end, S1, ByHome).

on_claim_async(Keys, View, _From, #ms{active = View} = S) when View =/= none ->
    arbitrate_async(Keys, S);
on_claim_async(Keys, _View, From, #ms{cfg = #shoal_cfg{pool = Pool}} = S) ->
    shoal_proto:send(From, Pool, {claim_async_retry, Keys}),
    S.

%% As the keys' home: claim each (we are the claimer, so a claim never outlives a caller
%% that went away), spawn here or batch them per host.
arbitrate_async(Keys, #ms{cfg = Cfg, active = View, peers = Peers, spawning = Sp} = S) ->
    Remote = lists:foldl(
               fun(Key, Acc) ->
                       Min = shoal_arbiter:tomb_floor(Cfg, Key),
                       case shoal_registry:claim(Cfg, Key, nowait) of
                           claimed ->
                               case shoal_arbiter:choose_host(Cfg, Key, View) of
                                   {ok, Host} when Host =:= node() ->
                                       _ = shoal_arbiter:spawn_claimed(Cfg, Key, []),
                                       Acc;
                                   {ok, Host} ->
                                       maps:update_with(Host, fun(L) -> [{Key, Min} | L] end,
                                                        [{Key, Min}], Acc);
                                   {error, _} ->
                                       _ = shoal_registry:release_claim(Cfg, Key, retry),
                                       Acc
                               end;
                           _ ->
                               Acc
                       end
               end, #{}, Keys),
    Sp1 = maps:fold(fun(Host, HKeys, SpAcc) ->
                            #peer{pid = Pid} = maps:get(Host, Peers),
                            shoal_proto:send(Pid, Cfg#shoal_cfg.pool,
                                             {spawn_async, HKeys, View, self(),
                                              shoal_registry:hlc()}),
                            lists:foldl(fun({K, _}, A) -> A#{K => Host} end, SpAcc, HKeys)
                    end, Sp, Remote),
    S#ms{spawning = Sp1}.

%% Keys: [{Key, Min}] (see on_spawn).
on_spawn_async(Keys, View, Home, #ms{active = View, cfg = Cfg} = S) when View =/= none ->
    Results = [{Key, element(1, place_here(Key, [], Min, ack, S))} || {Key, Min} <- Keys],
    shoal_proto:send(Home, Cfg#shoal_cfg.pool, {spawned_async, Results}),
    S;
on_spawn_async(Keys, _View, Home, #ms{cfg = Cfg} = S) ->
    shoal_proto:send(Home, Cfg#shoal_cfg.pool, {spawned_async, [{K, retry} || {K, _} <- Keys]}),
    S.

on_spawned_async(Results, #ms{cfg = Cfg, spawning = Sp} = S) ->
    {Sp1, Again} =
        lists:foldl(
          fun({Key, Result}, {SpAcc, Ag}) ->
                  case Result of
                      {ok, Node, Pid, Vsn} ->
                          _ = shoal_registry:put_remote(Cfg, Key, Node, Pid, Vsn, 0),
                          case shoal_arbiter:settle(Cfg, Key, self(), ok) of
                              ok -> {maps:remove(Key, SpAcc), Ag};
                              retry -> {maps:remove(Key, SpAcc), [Key | Ag]}
                          end;
                      _ ->
                          _ = shoal_registry:release_claim(Cfg, Key, retry),
                          {maps:remove(Key, SpAcc), [Key | Ag]}
                  end
          end, {Sp, []}, Results),
    S#ms{spawning = Sp1, async = Again ++ S#ms.async, async_len = S#ms.async_len + length(Again)}.

group(Fun, List) ->
    lists:foldl(fun(X, Acc) -> maps:update_with(Fun(X), fun(L) -> [X | L] end, [X], Acc) end,
                #{}, List).

%%% Other requests ---------------------------------------------------------------------------

on_where(Key, ReplyTo, #ms{cfg = Cfg} = S) ->
    Answer = case shoal_registry:worker(Cfg, Key) of
                 {Node, Pid, Vsn} -> {ok, Node, Pid, Vsn};
                 undefined -> none
             end,
    shoal_proto:reply(ReplyTo, Cfg#shoal_cfg.pool, where_is, [Answer]),
    S.

%% What a stopped or offloaded worker still had queued goes to the key's next incarnation.
reroute(Cfg, Key, Msgs) ->
    case shoal_arbiter:resolve(Cfg, Key, call, 5000) of
        {ok, Pid} -> _ = [Pid ! M || M <- Msgs], ok;
        {error, _} -> ok
    end.

local_health(#shoal_cfg{meter = M} = Cfg) ->
    #{count => shoal_registry:count(Cfg, node()),
      crashes_per_minute => shoal_nif:meter_sum(M, 60)}.

%%% Cluster configuration ----------------------------------------------------------------

local_config(#shoal_cfg{ctab = CTab} = Cfg) ->
    [{window, node(), W} || {{window, N}, W} <- ets:tab2list(CTab), N =:= node()] ++
        [{drained, node(), true} || ets:member(CTab, {drained, node()})] ++
        [{options, node(), options_hash(Cfg)}].

%% The options every member of a pool should share, hashed: a peer that started the pool
%% with others gets a warning on both sides (members of older versions ignore the item).
options_hash(#shoal_cfg{} = Cfg) -> erlang:phash2(shared_options(Cfg)).

shared_options(#shoal_cfg{worker = W, restart = R, idle_timeout = I, quorum = Q, grace = G}) ->
    [{worker, W}, {restart, R}, {idle_timeout, I}, {quorum, Q}, {handoff_grace, G}].

apply_config(Cfg, Item) ->
    set_config(Cfg, Item),
    shoal_view:placement_changed(Cfg).

set_config(#shoal_cfg{ctab = CTab}, {window, Node, W}) ->
    ets:insert(CTab, {{window, Node}, W});
set_config(#shoal_cfg{ctab = CTab}, {drained, Node, true}) ->
    ets:insert(CTab, {{drained, Node}, true});
set_config(#shoal_cfg{ctab = CTab}, {drained, Node, false}) ->
    ets:delete(CTab, {drained, Node});
set_config(#shoal_cfg{pool = Pool} = Cfg, {options, Node, Hash}) ->
    Hash =:= options_hash(Cfg) orelse Node =:= node() orelse
        shoal_log:log(warning, options_differ, #{pool => Pool},
                      #{peer => Node, options => maps:from_list(shared_options(Cfg)),
                        hint => "start the pool with the same worker, restart, idle_timeout, "
                                "quorum and handoff_grace on every node"}),
    true;
set_config(_, _) ->
    true.
