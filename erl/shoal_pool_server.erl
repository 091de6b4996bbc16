%% @doc A pool's server on one node: it owns the pool's worker table, counters and failure
%% meter, publishes the configuration in persistent_term for the lock-free hot path, and is
%% this node's member of the cluster-wide pool.
%%
%% Membership: pool servers of the same pool find each other by registered name on every
%% connected node (at start and on nodeup), greet each other and exchange their local
%% workers. There is no coordinator; a member leaves when its server stops or its node
%% disconnects, and every other member then purges that node's replicas in one yielding
%% NIF walk.
%%
%% Replication: the NIF tells this server of every local worker that comes up or goes down
%% (set_listener/2). The server batches what is queued and sends one message per member;
%% per-pair message order keeps each member's replica in step. A replica that collides
%% with a live local worker is a conflict (after a partition heals, or two arbiters during a
%% membership change): the worker on the node with the higher rendezvous rank for the key
%% stays, the other is told to yield.
%%
%% It is the first child of the pool supervisor, so it stops last: after the segments have
%% stopped every worker, it deletes the table and removes the configuration.
-module(shoal_pool_server).
-behaviour(gen_server).

-include("shoal_int.hrl").

-export([start_link/1, server_name/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-define(BATCH, 2000).

-record(ps, {cfg :: #shoal_cfg{},
             members = #{} :: #{node() => pid()},
             mrefs = #{} :: #{reference() => node()},
             %% Keys this node (their home) claimed and asked another node to spawn.
             pending = #{} :: #{term() => node()}}).

%% @doc The registered name of Pool's server (the same on every node).
-spec server_name(atom()) -> atom().
server_name(Pool) -> list_to_atom("shoal_ps_" ++ atom_to_list(Pool)).

-spec start_link(#shoal_cfg{}) -> {ok, pid()} | {error, term()}.
start_link(#shoal_cfg{pool = Pool} = Cfg) ->
    gen_server:start_link({local, server_name(Pool)}, ?MODULE, Cfg, []).

%% @private
-spec init(#shoal_cfg{}) -> {ok, #ps{}} | {stop, term()}.
init(#shoal_cfg{pool = Pool, table_bits = Bits} = Cfg0) ->
    process_flag(trap_exit, true),
    case persistent_term:get(?PT_KEY(Pool), undefined) of
        #shoal_cfg{} -> {stop, {already_started, Pool}};
        undefined ->
            CTab = ets:new(shoal_cluster, [set, protected, {read_concurrency, true}]),
            ets:insert(CTab, {members, [node()]}),
            Cfg = Cfg0#shoal_cfg{table = shoal_nif:new(Bits),
                                 counters = counters:new(?C_COUNT, [write_concurrency]),
                                 meter = shoal_nif:meter_new(),
                                 ctab = CTab,
                                 server = server_name(Pool)},
            persistent_term:put(?PT_KEY(Pool), Cfg),
            ok = net_kernel:monitor_nodes(true),
            [greet(Cfg, N, shoal_hello) || N <- nodes()],
            {ok, #ps{cfg = Cfg}}
    end.

greet(#shoal_cfg{server = Name, ctab = CTab}, Node, Tag) ->
    erlang:send({Name, Node}, {Tag, self(), node(), local_config(CTab)}, [noconnect]),
    ok.

local_config(CTab) ->
    [{window, node(), W} || {{window, N}, W} <- ets:tab2list(CTab), N =:= node()] ++
        [{drained, node(), true} || ets:member(CTab, {drained, node()})].

%% @private
-spec handle_call(term(), gen_server:from(), #ps{}) -> {reply, term(), #ps{}}.
handle_call({config, Item}, _From, #ps{cfg = Cfg, members = Ms} = S) ->
    apply_config(Cfg, Item),
    _ = [Pid ! {shoal_config, Item} || Pid <- maps:values(Ms)],
    {reply, ok, S};
handle_call(members, _From, #ps{members = Ms} = S) ->
    {reply, lists:sort([node() | maps:keys(Ms)]), S};
handle_call(_Req, _From, S) ->
    {reply, {error, unknown_call}, S}.

%% @private
-spec handle_cast(term(), #ps{}) -> {noreply, #ps{}}.
handle_cast(_Msg, S) -> {noreply, S}.

%% @private
-spec handle_info(term(), #ps{}) -> {noreply, #ps{}}.
handle_info({'$shoal_up', _, _, _} = Ev, S) ->
    {noreply, replicate(Ev, S)};
handle_info({'$shoal_down', _, _} = Ev, S) ->
    {noreply, replicate(Ev, S)};
handle_info({shoal_repl, Node, Ops}, #ps{cfg = Cfg, members = Ms} = S) ->
    case maps:is_key(Node, Ms) of
        true -> apply_ops(Cfg, Node, Ops);
        false -> ok  %% from a node that already left: its replicas were purged
    end,
    {noreply, S};
handle_info({place_async, Key}, S) ->
    {noreply, place_async([Key | collect_places(?BATCH)], S)};
handle_info({spawn_for, Keys, Home}, #ps{cfg = Cfg} = S) ->
    Home ! {spawned, [{Key, catch shoal:resolve_local(Cfg, Key, nowait)} || Key <- Keys]},
    {noreply, S};
handle_info({spawned, Results}, #ps{cfg = #shoal_cfg{table = T}, pending = P} = S) ->
    P1 = lists:foldl(
           fun({Key, Result}, Acc) ->
                   _ = case Result of
                           {ok, Pid} when node(Pid) =/= node() ->
                               shoal_nif:put_remote(T, Key, node(Pid), Pid, 0);
                           {ok, _} -> ok;
                           _ -> shoal_nif:release_claim(T, Key)
                       end,
                   maps:remove(Key, Acc)
           end, P, Results),
    {noreply, S#ps{pending = P1}};
handle_info({shoal_config, Item}, #ps{cfg = Cfg} = S) ->
    apply_config(Cfg, Item),
    {noreply, S};
handle_info({nodeup, Node}, #ps{cfg = Cfg} = S) ->
    greet(Cfg, Node, shoal_hello),
    {noreply, S};
handle_info({nodedown, _Node}, S) ->
    {noreply, S};  %% the member monitor says it
handle_info({Tag, Pid, Node, Config}, S) when Tag =:= shoal_hello; Tag =:= shoal_hello_ack ->
    {noreply, hello(Tag, Pid, Node, Config, S)};
handle_info({'DOWN', Ref, process, _, _}, #ps{mrefs = Refs} = S) ->
    case maps:take(Ref, Refs) of
        {Node, Refs1} -> {noreply, member_left(Node, S#ps{mrefs = Refs1})};
        error -> {noreply, S}
    end;
handle_info(_Info, S) ->
    {noreply, S}.

%% @private
-spec terminate(term(), #ps{}) -> ok.
terminate(_Reason, #ps{cfg = #shoal_cfg{pool = Pool, table = T}}) ->
    _ = persistent_term:erase(?PT_KEY(Pool)),
    try shoal_nif:delete(T) catch error:badarg -> ok end,
    ok.

%%% Membership -------------------------------------------------------------------------

hello(Tag, Pid, Node, Config, #ps{cfg = Cfg, members = Ms, mrefs = Refs} = S) ->
    [apply_config(Cfg, Item) || Item <- Config],
    case maps:is_key(Node, Ms) of
        true -> S;
        false ->
            Tag =:= shoal_hello andalso greet(Cfg, Node, shoal_hello_ack),
            Ref = erlang:monitor(process, Pid),
            S1 = S#ps{members = Ms#{Node => Pid}, mrefs = Refs#{Ref => Node}},
            publish_members(S1),
            send_dump(Cfg, Pid),
            S1
    end.

member_left(Node, #ps{cfg = #shoal_cfg{table = T} = Cfg, members = Ms, pending = P} = S) ->
    %% Spawns we asked of that node will not come: give up their claims.
    {Lost, Kept} = maps:fold(fun(K, N, {L, Kp}) when N =:= Node -> {[K | L], Kp};
                                (K, N, {L, Kp}) -> {L, Kp#{K => N}}
                             end, {[], #{}}, P),
    [shoal_nif:release_claim(T, K) || K <- Lost],
    S1 = S#ps{members = maps:remove(Node, Ms), pending = Kept},
    publish_members(S1),
    _ = shoal_nif:fold(T, purge_node, Node),
    ets:match_delete(Cfg#shoal_cfg.ctab, {{window, Node}, '_'}),
    ets:delete(Cfg#shoal_cfg.ctab, {drained, Node}),
    S1.

publish_members(#ps{cfg = #shoal_cfg{table = T, ctab = CTab}, members = Ms}) ->
    ets:insert(CTab, {members, lists:sort([node() | maps:keys(Ms)])}),
    %% Local ups and downs are only worth hearing of while there is someone to tell.
    ok = shoal_nif:set_listener(T, case map_size(Ms) of 0 -> undefined; _ -> self() end).

%% Everything local, to a new member, in batches.
send_dump(#shoal_cfg{table = T}, Pid) ->
    Local = [{up, K, P, 0} || {K, P} <- shoal_nif:fold(T, dump, none), node(P) =:= node()],
    send_chunks(Pid, Local).

send_chunks(_Pid, []) -> ok;
send_chunks(Pid, Ops) ->
    {Chunk, Rest} = case length(Ops) > ?BATCH of
                        true -> lists:split(?BATCH, Ops);
                        false -> {Ops, []}
                    end,
    Pid ! {shoal_repl, node(), Chunk},
    send_chunks(Pid, Rest).

%%% Replication ------------------------------------------------------------------------

%% Gather what else is queued (up to a batch) and send it to every member at once.
replicate(Ev, #ps{cfg = #shoal_cfg{table = T}, members = Ms} = S) ->
    Ops = collect(T, [op(T, Ev)], ?BATCH),
    case [O || O <- Ops, O =/= skip] of
        [] -> ok;
        Live -> lists:foreach(fun(Pid) -> Pid ! {shoal_repl, node(), Live} end, maps:values(Ms))
    end,
    S.

collect(_T, Acc, 0) -> lists:reverse(Acc);
collect(T, Acc, N) ->
    receive
        {'$shoal_up', _, _, _} = Ev -> collect(T, [op(T, Ev) | Acc], N - 1);
        {'$shoal_down', _, _} = Ev -> collect(T, [op(T, Ev) | Acc], N - 1)
    after 0 -> lists:reverse(Acc)
    end.

%% An `up' is only announced if the worker is still there: its `down' may have overtaken
%% it (the two come from different processes).
op(T, {'$shoal_up', Key, Pid, Inc}) ->
    case shoal_nif:lookup(T, Key) of
        {active, Pid, _} -> {up, Key, Pid, Inc};
        _ -> skip
    end;
op(_, {'$shoal_down', Key, Pid}) -> {down, Key, Pid}.

apply_ops(#shoal_cfg{table = T} = Cfg, _Node, Ops) ->
    lists:foreach(
      fun({up, Key, Pid, Inc}) ->
              %% node(Pid), not the sender: a conflict's loser relays the winner (below).
              case shoal_nif:put_remote(T, Key, node(Pid), Pid, Inc) of
                  {error, {local, Pid}} -> ok;
                  {error, {local, Mine}} -> conflict(Cfg, Key, Mine, node(Pid), Pid);
                  _ -> ok
              end;
         ({down, Key, Pid}) ->
              _ = shoal_nif:delete_remote(T, Key, Pid)
      end, Ops).

%% Two live workers for one key: the one on the node ranked higher for the key stays.
%% The loser's side also relays the winner to the other members: they may hold a replica
%% of the loser (from our dump), and the loser's entry is replaced by the winner's replica
%% without a `down' (put_remote over a moving worker tells no listener). Sent after our
%% dump on the same channel, so it lands after the replica it corrects.
conflict(#shoal_cfg{server = Name} = Cfg, Key, Mine, Node, Theirs) ->
    case shoal_placement:rank(Key, node()) > shoal_placement:rank(Key, Node) of
        true -> ok;  %% ours stays; the other side applies the same rule to our `up'
        false ->
            Mine ! {'$shoal_conflict', Node, Theirs},
            [erlang:send({Name, M}, {shoal_repl, node(), [{up, Key, Theirs, 0}]}, [noconnect])
             || M <- shoal_cluster:members(Cfg), M =/= node(), M =/= Node],
            ok
    end.

%%% Asynchronous placement ---------------------------------------------------------------

%% ensure_started_async for keys whose home is this node: claim each (this server is the
%% claimer, so a claim never outlives a caller that went away), pick its host, spawn it
%% here or ask the host (one message per host for the whole batch), which answers
%% `spawned'.
place_async(Keys, #ps{cfg = #shoal_cfg{table = T, server = Name} = Cfg, pending = P} = S) ->
    Remote = lists:foldl(
               fun(Key, Acc) ->
                       case shoal_nif:claim(T, Key, nowait) of
                           claimed ->
                               case shoal_cluster:choose_host(Cfg, Key, []) of
                                   {ok, Host} when Host =:= node() ->
                                       _ = shoal:spawn_claimed(Cfg, Key, nowait),
                                       Acc;
                                   {ok, Host} ->
                                       maps:update_with(Host, fun(L) -> [Key | L] end, [Key], Acc);
                                   {error, _} ->
                                       _ = shoal_nif:release_claim(T, Key),
                                       Acc
                               end;
                           _ ->
                               Acc
                       end
               end, #{}, Keys),
    Pending = maps:fold(fun(Host, HKeys, PAcc) ->
                                erlang:send({Name, Host}, {spawn_for, HKeys, self()}),
                                lists:foldl(fun(K, A) -> A#{K => Host} end, PAcc, HKeys)
                        end, P, Remote),
    S#ps{pending = Pending}.

collect_places(0) -> [];
collect_places(N) ->
    receive {place_async, Key} -> [Key | collect_places(N - 1)]
    after 0 -> []
    end.

%%% Cluster configuration ----------------------------------------------------------------

apply_config(#shoal_cfg{ctab = CTab}, {window, Node, W}) ->
    ets:insert(CTab, {{window, Node}, W});
apply_config(#shoal_cfg{ctab = CTab}, {drained, Node, true}) ->
    ets:insert(CTab, {{drained, Node}, true});
apply_config(#shoal_cfg{ctab = CTab}, {drained, Node, false}) ->
    ets:delete(CTab, {drained, Node});
apply_config(_, _) ->
    true.
