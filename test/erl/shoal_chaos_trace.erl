%% A flight recorder for the chaos suite: on a peer, trace what its table does with the
%% spawners' keys (`{s, _}') and what its member does with its peers, into a bounded ring,
%% so a failed run can show how one key came to be where it is on one node.
%%
%% Recorded, with call and return: shoal_registry's register/4, unregister/3, put_remote/6, put_synced/7,
%% put_successor/6 and remove_remote/4 of an `{s, _}' key; purge_node/2 and sweep_node/4;
%% the member's replication ops of those keys (shoal_member:op/2), and its add_peer/5,
%% peer_left/3 and on_sync/5 (the sync's entries reduced to its `{s, _}' keys); and the
%% moves: shoal_registry:set_moving/4 (by the worker that hands its state off) and
%% shoal_view:register_over/5 (a successor's registration, a take-back) of an `{s, _}' key,
%% and every batched move's shoal_mover:move_batch/4, takeover_on/6 (the source's request
%% and its answer) and takeover/2 (the target's side), their keys reduced to `{s, _}' ones.
-module(shoal_chaos_trace).

-export([start/0, read/1]).

-define(TAB, shoal_chaos_trace_ring).
-define(RING, 400000).

%% @doc Start the recorder on this node (idempotent).
-spec start() -> ok.
start() ->
    case whereis(shoal_chaos_tracer) of
        undefined ->
            Self = self(),
            T = spawn(fun() ->
                              register(shoal_chaos_tracer, self()),
                              _ = ets:new(?TAB, [named_table, public, set]),
                              Self ! {ready, self()},
                              loop(0)
                      end),
            receive {ready, T} -> ok end,
            _ = [code:ensure_loaded(M) || M <- [shoal_registry, shoal_member, shoal_mover, shoal_view]],
            Ret = [{return_trace}],
            All = [{'_', [], Ret}],
            KeyAt2 = fun(Arity) ->
                             Args = ['_', '$1' | lists:duplicate(Arity - 2, '_')],
                             [{Args, [{is_tuple, '$1'}, {'==', {size, '$1'}, 2},
                                      {'==', {element, 1, '$1'}, s}], Ret}]
                     end,
            1 = erlang:trace_pattern({shoal_registry, register, 4}, KeyAt2(4), [global]),
            1 = erlang:trace_pattern({shoal_registry, unregister, 3}, KeyAt2(3), [global]),
            1 = erlang:trace_pattern({shoal_registry, put_remote, 6}, KeyAt2(6), [global]),
            1 = erlang:trace_pattern({shoal_registry, put_successor, 6}, KeyAt2(6), [global]),
            1 = erlang:trace_pattern({shoal_registry, put_synced, 7}, KeyAt2(7), [global]),
            1 = erlang:trace_pattern({shoal_registry, remove_remote, 4}, KeyAt2(4), [global]),
            1 = erlang:trace_pattern({shoal_registry, set_moving, 4}, KeyAt2(4), [global]),
            1 = erlang:trace_pattern({shoal_view, register_over, 5}, KeyAt2(5), [global]),
            1 = erlang:trace_pattern({shoal_mover, move_batch, 4}, All, [global]),
            1 = erlang:trace_pattern({shoal_mover, takeover, 2}, All, [global]),
            1 = erlang:trace_pattern({shoal_mover, takeover_on, 6}, All, [local]),
            1 = erlang:trace_pattern({shoal_registry, purge_node, 2}, All, [global]),
            1 = erlang:trace_pattern({shoal_registry, sweep_node, 4}, All, [global]),
            1 = erlang:trace_pattern({shoal_member, op, 2},
                                     [{['_', '$1'], [{is_tuple, {element, 2, '$1'}},
                                                     {'==', {size, {element, 2, '$1'}}, 2},
                                                     {'==', {element, 1, {element, 2, '$1'}}, s}],
                                       Ret}], [local]),
            1 = erlang:trace_pattern({shoal_member, add_peer, 5}, true, [local]),
            1 = erlang:trace_pattern({shoal_member, peer_left, 3}, true, [local]),
            1 = erlang:trace_pattern({shoal_member, on_sync, 5}, true, [local]),
            _ = erlang:trace(all, true, [call, timestamp, {tracer, T}]),
            ok;
        _ ->
            ok
    end.

loop(N) ->
    receive
        {trace_ts, Pid, call, {M, F, Args}, Ts} ->
            record(N, {ts(Ts), Pid, call, {M, F, trim(F, Args)}}),
            loop(N + 1);
        {trace_ts, Pid, return_from, {M, F, _}, Ret, Ts} ->
            record(N, {ts(Ts), Pid, return, {M, F, Ret}}),
            loop(N + 1);
        {read, From, Keys} ->
            From ! {trace, self(), select(N, Keys)},
            loop(N);
        _ ->
            loop(N)
    end.

ts({Mega, S, Us}) -> (Mega * 1000000 + S) * 1000000 + Us.

trim(add_peer, [Tag, Pid, Node, Vsn, _S]) -> [Tag, Pid, Node, Vsn];
trim(peer_left, [Node, Reason, _S]) -> [Node, Reason];
trim(on_sync, [Node, T0, Entries, Part, _S]) ->
    [Node, T0, [{K, P, V} || {{s, _} = K, P, V} <- Entries], Part, length(Entries)];
trim(op, [_Cfg, Ev]) -> [Ev];
trim(move_batch, [_Cfg, Keys, Node, Cause]) -> [s_keys(Keys), Node, Cause];
trim(takeover, [_Cfg, Items]) -> [s_keys([K || {K, _, _} <- Items])];
trim(takeover_on, [_Cfg, _Name, _Pool, Node, _Member, Items]) ->
    [Node, s_keys([K || {K, _, _} <- Items])];
trim(_, [_Cfg | Rest]) -> Rest.

s_keys(Keys) -> [K || {s, _} = K <- Keys].

record(N, Rec) ->
    ets:insert(?TAB, {N, Rec}),
    ets:delete(?TAB, N - ?RING).

%% The records that name one of Keys or are not about one key, oldest first (the ring keeps
%% the last ?RING), each with its node.
select(_N, Keys) ->
    [{Ts, node(), Pid, Kind, MFA} || {_, {Ts, Pid, Kind, MFA}} <- lists:keysort(1, ets:tab2list(?TAB)),
                                     relevant(MFA, Keys)].

relevant({_, F, _}, _Keys) when F =:= add_peer; F =:= peer_left; F =:= purge_node;
                                 F =:= sweep_node; F =:= on_sync -> true;
relevant({_, _, Args}, Keys) when is_list(Args) ->
    lists:any(fun(K) -> mentions(K, Args) end, Keys);
relevant(_, _) -> true.   %% a return: kept with its call (see read/1)

mentions(K, T) when T =:= K -> true;
mentions(K, T) when is_tuple(T) -> mentions(K, tuple_to_list(T));
mentions(K, [H | R]) -> mentions(K, H) orelse mentions(K, R);
mentions(_, _) -> false.

%% @doc What this node recorded about Keys (and its peers), oldest first: a record is
%% `{Microseconds, Node, Pid, call | return, {M, F, Args | Result}}'; a return is kept only
%% when it follows a kept call of the same process.
-spec read([term()]) -> [tuple()].
read(Keys) ->
    case whereis(shoal_chaos_tracer) of
        undefined -> [];
        T ->
            T ! {read, self(), Keys},
            receive {trace, T, Recs} -> pair(Recs, #{}) after 30000 -> [] end
    end.

%% Keep a return only right after a kept call of its process.
pair([], _Open) -> [];
pair([{_, _, Pid, call, {_, F, _}} = C | Rest], Open) ->
    case lists:member(F, [add_peer, peer_left, on_sync]) of
        true -> [C | pair(Rest, Open)];               %% not return-traced
        false -> [C | pair(Rest, Open#{Pid => true})]
    end;
pair([{_, _, Pid, return, _} = R | Rest], Open) ->
    case maps:take(Pid, Open) of
        {true, Open1} -> [R | pair(Rest, Open1)];
        error -> pair(Rest, Open)
    end.
