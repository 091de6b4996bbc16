%% @doc The hot path of a chain: admission with back-pressure, hand-off from one step to
%% the next, and the end of an item. It runs in the processes that move items (callers of
%% send_to_chain, step workers); no server is involved.
%%
%% <b>The ledger.</b> Every item a chain accepts gets an entry in the chain's ledger (on
%% the owner node, the node the chain's supervisor runs on; see shoal_super_ledger) that
%% says which worker it was last handed to. The entry goes when the item ends (its outcome
%% is then given to `on_finish'): whoever takes the entry reports the outcome, so each
%% accepted item is reported exactly once. Senders on the owner node write the ledger
%% directly, before they send; senders on other nodes tell the chain's manager
%% (`{at, ...}', `{done, ...}'), which applies the change only if it is newer. When a
%% worker dies, or its node does, the manager finds the items it held in the ledger and,
%% per the chain's `delivery', reports them lost (`at_most_once') or sends them again from
%% the step where they entered the chain (`at_least_once').
%%
%% <b>Back-pressure.</b> An atomics counter holds the chain's items in flight; a caller
%% may add one only below `max_queue', so no step's queue ever holds more. A caller that
%% finds the chain full registers as a waiter (in the chain's waiters table, oldest first)
%% and sleeps; once a quarter of `max_queue' is free again, the ends of items wake waiters
%% (one per free place), so a blocked producer wakes once per batch, not once per item.
-module(shoal_super_flow).

-include("shoal_super.hrl").

-export([send/4, hand_off/6, finish/3, release/2, wake_all/1, report/2]).

-define(ITEM(Seq, Att, Hop, Data), {'$ssi', Seq, Att, Hop, Data}).

%% @doc Admit `Data' into the chain at `Route''s step, waiting up to Timeout for room:
%% `ok' once the item is on its way (it will reach on_finish), `{error, overloaded}' if
%% the chain stayed full.
-spec send(#sc{}, #route{} | undefined, term(), timeout()) ->
          ok | {error, overloaded | {no_steps, term()}}.
send(#sc{chain = C}, undefined, _Data, _Timeout) ->
    {error, {no_steps, C}};
send(SC, Route, Data, Timeout) ->
    case admit(SC, deadline(Timeout)) of
        ok -> enter(SC, Route, Data);
        {error, _} = E -> E
    end.

enter(#sc{ledger = L, mgr = Mgr} = SC, #route{idx = Idx, pids = Pids, dispatch = D, rr = RR},
      Data) ->
    case tuple_size(Pids) of
        0 ->
            %% Every worker of the step is restarting: the manager holds the item.
            Seq = erlang:unique_integer(),
            true = shoal_super_ledger:enter(L, Seq, Mgr, Idx, Data, node()),
            Mgr ! {pending, Idx, Seq, 0, 0, Data},
            ok;
        N when D =:= broadcast ->
            atomics:add(SC#sc.flow, 1, N - 1),
            _ = [begin
                     Seq = erlang:unique_integer(),
                     true = shoal_super_ledger:enter(L, Seq, P, Idx, Data, node()),
                     P ! ?ITEM(Seq, 0, 0, Data)
                 end || P <- tuple_to_list(Pids)],
            ok;
        N ->
            P = element(pick_index(D, N, RR, Data), Pids),
            Seq = erlang:unique_integer(),
            true = shoal_super_ledger:enter(L, Seq, P, Idx, Data, node()),
            P ! ?ITEM(Seq, 0, 0, Data),
            ok
    end.

pick_index(round_robin, N, RR, _Data) -> atomics:add_get(RR, 1, 1) rem N + 1;
pick_index(random, N, _RR, _Data) -> rand:uniform(N);
pick_index(hash, N, _RR, Data) -> erlang:phash2(Data, N) + 1.

%% A worker of Route for Data; Count is the caller's own round-robin counter. Returns
%% `{Pid, NewCount}' (a `broadcast' route's copies are made by hand_off/6).
pick(#route{pids = Pids, dispatch = D}, Count, Data) ->
    N = tuple_size(Pids),
    I = case D of
            round_robin -> Count rem N + 1;
            random -> rand:uniform(N);
            hash -> erlang:phash2(Data, N) + 1;
            broadcast -> rand:uniform(N)
        end,
    {element(I, Pids), Count + 1}.

%% @doc Hand item Seq (attempt Att, hop Hop, data Data) on to the step of Route. Count is
%% the sender's round-robin counter; returns the new one. The sender is a step worker;
%% `single' forces one receiver on a broadcast route (a re-sent copy).
-spec hand_off(#sc{}, #route{}, {integer(), non_neg_integer(), non_neg_integer()}, term(),
               non_neg_integer(), normal | single) -> non_neg_integer().
hand_off(#sc{mgr = Mgr} = SC, #route{idx = Idx, pids = Pids} = R, {Seq, Att, Hop}, Data, Count, How) ->
    case tuple_size(Pids) of
        0 ->
            Mgr ! {pending, Idx, Seq, Att, Hop, Data},
            Count;
        N when R#route.dispatch =:= broadcast, How =:= normal, N > 1 ->
            broadcast(SC, R, {Seq, Att, Hop}, Data),
            Count;
        _ ->
            {P, Count1} = pick(R, Count, Data),
            _ = case locate(SC, Seq, Att, Hop, P) of
                    true -> P ! ?ITEM(Seq, Att, Hop, Data);
                    false -> ok   %% the item has ended already (reported lost, or re-sent)
                end,
            Count1
    end.

%% One copy per worker: the first keeps the item's entry, each other is a new item (its
%% own entry, entering the chain at this step, so a re-send goes to one worker here).
broadcast(#sc{owner = Owner, ledger = L, flow = F, mgr = Mgr} = SC, #route{idx = Idx, pids = Pids},
          {Seq, Att, Hop}, Data) ->
    [First | Rest] = tuple_to_list(Pids),
    Copies = case node() =:= Owner of
                 true ->
                     atomics:add(F, 1, length(Rest)),
                     [begin
                          S = erlang:unique_integer(),
                          true = shoal_super_ledger:enter(L, S, P, Idx, Data, node()),
                          {P, S}
                      end || P <- Rest];
                 false ->
                     %% The entries must exist before any copy can end: ask the manager.
                     gen_server:call(Mgr, {fanout, Idx, Rest, Data}, infinity)
             end,
    _ = case locate(SC, Seq, Att, Hop, First) of
            true -> First ! ?ITEM(Seq, Att, Hop, Data);
            false -> ok
        end,
    _ = [P ! ?ITEM(S, 0, 0, Data) || {P, S} <- Copies],
    ok.

%% Record that item Seq is now with Pid, before sending it there. On the owner node this is
%% a write to the ledger (`false' if the item has ended meanwhile or a newer attempt of it
%% exists: the caller drops its copy); elsewhere a message to the manager.
locate(#sc{owner = Owner, ledger = L, mgr = Mgr, delivery = Delivery}, Seq, Att, Hop, Pid) ->
    case node() =:= Owner of
        true -> shoal_super_ledger:move_here(L, Seq, {Att, Hop}, Pid, Delivery =:= at_least_once);
        false -> Mgr ! {at, Seq, {Att, Hop}, Pid, node()}, true
    end.

%% @doc Item Seq ended with Outcome: take its ledger entry (on the owner node; elsewhere
%% the manager does) and, if it was still there, free its room and report the outcome.
-spec finish(#sc{}, integer(), term()) -> ok.
finish(#sc{owner = Owner, ledger = L, mgr = Mgr} = SC, Seq, Outcome) ->
    case node() =:= Owner of
        true ->
            case shoal_super_ledger:take(L, Seq) of
                [_] -> release(SC, 1), report(SC, Outcome);
                [] -> ok
            end;
        false ->
            Mgr ! {done, Seq, Outcome},
            ok
    end.

%% @doc N items left the chain: free their room and wake waiting senders.
-spec release(#sc{}, pos_integer()) -> ok.
release(#sc{flow = F, max_queue = Max, waiters = W}, N) ->
    atomics:sub(F, 1, N),
    case atomics:get(F, 2) of
        0 -> ok;
        _ ->
            Room = Max - atomics:get(F, 1),
            case Room >= max(1, Max div 4) of
                true -> wake(W, Room);
                false -> ok
            end
    end.

wake(_W, 0) -> ok;
wake(W, N) ->
    case take_waiter(W) of
        {ok, Pid, Tag} -> Pid ! {'$ss_room', Tag}, wake(W, N - 1);
        none -> ok
    end.

%% @doc Wake every waiting sender (the chain is going away: they will find it gone).
-spec wake_all(#sc{}) -> ok.
wake_all(#sc{waiters = W}) -> wake(W, -1).

take_waiter(W) ->
    case ets:first(W) of
        '$end_of_table' -> none;
        Tag ->
            case ets:take(W, Tag) of
                [{_, Pid}] -> {ok, Pid, Tag};
                [] -> take_waiter(W)
            end
    end.

%% @doc Give an outcome to the chain's on_finish (errors in it are logged, not raised).
-spec report(#sc{}, term()) -> ok.
report(#sc{on_finish = undefined}, _Outcome) -> ok;
report(#sc{on_finish = OnFinish, sup = Sup, chain = C}, Outcome) ->
    try
        _ = case OnFinish of
                {M, F, A} -> apply(M, F, [Outcome | A]);
                Fun -> Fun(Outcome)
            end,
        ok
    catch
        Class:Reason:Stack ->
            logger:error("shoal_super ~p chain ~p: on_finish failed: ~p:~p~n~p",
                         [Sup, C, Class, Reason, Stack]),
            ok
    end.

%%% Admission ----------------------------------------------------------------------------

deadline(infinity) -> infinity;
deadline(T) -> erlang:monotonic_time(millisecond) + T.

admit(#sc{flow = F, max_queue = Max} = SC, Deadline) ->
    case atomics:add_get(F, 1, 1) =< Max of
        true -> ok;
        false ->
            atomics:sub(F, 1, 1),
            wait(SC, Deadline)
    end.

%% Register as a waiter, then look again (an item that ended between our first look and
%% our registration woke nobody), then sleep until woken or the deadline.
wait(#sc{flow = F, max_queue = Max, waiters = W} = SC, Deadline) ->
    case remaining(Deadline) of
        0 -> {error, overloaded};
        Left ->
            Tag = erlang:unique_integer([positive, monotonic]),
            true = ets:insert(W, {Tag, self()}),
            atomics:add(F, 2, 1),
            case atomics:add_get(F, 1, 1) =< Max of
                true ->
                    leave(SC, Tag),
                    ok;
                false ->
                    atomics:sub(F, 1, 1),
                    receive
                        {'$ss_room', Tag} ->
                            atomics:sub(F, 2, 1),
                            admit(SC, Deadline)
                    after Left ->
                            leave(SC, Tag),
                            case atomics:add_get(F, 1, 1) =< Max of
                                true -> ok;
                                false -> atomics:sub(F, 1, 1), {error, overloaded}
                            end
                    end
            end
    end.

%% Stop waiting: unregister, or (if someone woke us meanwhile) consume the wake-up.
leave(#sc{flow = F, waiters = W}, Tag) ->
    atomics:sub(F, 2, 1),
    case ets:take(W, Tag) of
        [_] -> ok;
        [] ->
            %% The waker took our entry and is about to send (or has sent) the wake-up.
            receive {'$ss_room', Tag} -> ok after 1000 -> ok end
    end.

remaining(infinity) -> infinity;
remaining(Deadline) -> max(0, Deadline - erlang:monotonic_time(millisecond)).
