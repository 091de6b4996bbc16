%% @doc The caller's side of spawn arbitration (docs/protocol.md, "Spawn arbitration"):
%% find or start the worker for a key that this node's table does not have.
%%
%% Everything here runs in the calling process. A caller waits until its member is active,
%% takes the home of the key in the active view, and either claims the key in its own table
%% (it is the home) or asks the home's member. Whoever holds the claim picks the host; a
%% worker placed here is spawned and registered inside the view gate, one placed elsewhere is
%% spawned by that host's member. A caller that learns of a remote worker stores its replica
%% before it returns, so the same node reads its own writes.
-module(shoal_arbiter).

-include("shoal_int.hrl").

-export([resolve/4, spawn_async/2, relearn/3, spawn_claimed/3, spawn_over/4, await_started/3,
         ready/2, ready_or_resolve/4, never_ran/1, await_claim/5, choose_host/3, settle/4,
         tomb_floor/2, unwrap/1]).

-type mode() :: call | sync.
-export_type([mode/0]).

%% Pause before trying again after a `retry' that did not come from a view change.
-define(BACKOFF_MS, 2).

%% @doc The worker for Key, spawned wherever placement says if there is none. With `sync'
%% the answer is `{ok, Pid}' only once that worker's init/2 has returned, for every caller.
%% `Timeout' bounds the wait for the member to become active and for the home or host to
%% answer: `{error, not_ready}' or `{error, timeout}' after it.
-spec resolve(#shoal_cfg{}, term(), mode(), timeout()) -> {ok, pid()} | {error, term()}.
resolve(Cfg, Key, Mode, Timeout) ->
    try loop(Cfg, Key, Mode, deadline(Timeout), 0)
    catch throw:{?MODULE, Error} -> Error
    end.

loop(Cfg, Key, Mode, Deadline, Tries) ->
    case shoal_view:enter(Cfg) of
        inactive ->
            shoal_view:await_active(Cfg, remaining(Deadline)) =:= ok
                orelse throw_not_ready(),
            loop(Cfg, Key, Mode, Deadline, Tries);
        {ok, Members} ->
            Home = shoal_placement:home(Key, Members),
            Step = case Home =:= node() of
                       true ->
                           try at_home(Cfg, Key, Mode, Members)
                           after shoal_view:leave(Cfg)
                           end;
                       false ->
                           shoal_view:leave(Cfg),
                           ask(Cfg, Key, Mode, Home, Members, Deadline)
                   end,
            next(Cfg, Key, Mode, Members, Deadline, Tries, Step)
    end.

%% The steps of a resolution, and what the caller does after each.
next(Cfg, Key, Mode, _Members, Deadline, _Tries, {exists, Pid}) ->
    ready(Cfg, Key, Pid, Mode, Deadline);
next(_Cfg, _Key, _Mode, _Members, _Deadline, _Tries, {started, Pid}) ->
    {ok, Pid};
next(_Cfg, _Key, Mode, _Members, Deadline, _Tries, {spawned, Pid, Ref}) ->
    case Mode of
        sync -> await_started(Pid, Ref, remaining(Deadline));
        call -> {ok, Pid}
    end;
next(Cfg, Key, Mode, _Members, Deadline, Tries, {wait, Ref, Claimer}) ->
    case await_claim(Cfg, Key, Ref, Claimer, remaining(Deadline)) of
        {ok, Pid} -> ready(Cfg, Key, Pid, Mode, Deadline);
        retry -> again(Cfg, Key, Mode, Deadline, Tries);
        {error, _} = E -> E
    end;
next(Cfg, Key, Mode, Members, Deadline, Tries, {host, Host, Min}) ->
    next(Cfg, Key, Mode, Members, Deadline, Tries,
         spawn_on(Cfg, Key, Mode, Host, Min, Members, Deadline));
next(Cfg, Key, Mode, _Members, Deadline, Tries, retry) ->
    again(Cfg, Key, Mode, Deadline, Tries);
next(_Cfg, _Key, _Mode, _Members, _Deadline, _Tries, {error, _} = E) ->
    E.

again(Cfg, Key, Mode, Deadline, Tries) ->
    remaining(Deadline) =:= 0 andalso throw_timeout(),
    Tries > 0 andalso timer:sleep(min(?BACKOFF_MS bsl min(Tries, 5), 50)),
    loop(Cfg, Key, Mode, Deadline, Tries + 1).

%% Inside the gate, on the key's home: claim; spawn here if placement says so.
at_home(Cfg, Key, Mode, Members) ->
    Ref = make_ref(),
    Min = tomb_floor(Cfg, Key),
    case shoal_registry:claim(Cfg, Key, Ref) of
        {ok, Pid} -> {exists, Pid};
        {wait, Claimer} -> {wait, Ref, Claimer};
        claimed ->
            case choose_host(Cfg, Key, Members) of
                {ok, Host} when Host =:= node() ->
                    case spawn_claimed(Cfg, Key, acks(Mode, Ref)) of
                        {spawned, Pid, _Vsn} when Mode =:= sync -> {spawned, Pid, Ref};
                        {spawned, Pid, _Vsn} -> {spawned, Pid, none};
                        retry -> retry
                    end;
                {ok, Host} -> {host, Host, Min};
                {error, R} ->
                    _ = shoal_registry:release_claim(Cfg, Key, {error, R}),
                    {error, R}
            end
    end.

acks(sync, Ref) -> [{self(), Ref}];
acks(call, _Ref) -> [].

%% @doc We hold the claim on Key (inside the gate): spawn the worker here and register it,
%% which hands the claim's waiters its pid: the pid and the version it was registered at.
%% `Acks' are told when its init/2 has run (shoal_worker_proc:spawn_worker/4).
-spec spawn_claimed(#shoal_cfg{}, term(), [shoal_worker_proc:ack()]) ->
          {spawned, pid(), shoal_nif:version()} | retry.
spawn_claimed(#shoal_cfg{counters = C} = Cfg, Key, Acks) ->
    Pid = shoal_worker_proc:spawn_worker(Cfg, Key, Acks, init),
    counters:add(C, ?C_SPAWNS, 1),
    case shoal_registry:register(Cfg, Key, Pid, claim) of
        {ok, Vsn} ->
            Pid ! {'$shoal_go', Vsn},
            {spawned, Pid, Vsn};
        {error, _} ->
            %% It died before it could be registered (killed with its segment): give the
            %% claim up; this caller and the waiters try again.
            exit(Pid, kill),
            _ = shoal_registry:release_claim(Cfg, Key, retry),
            retry
    end.

%% @doc Spawn the worker for Key here over a replica that is not newer than Min (a worker
%% the key's home knows is dead: our replica has not heard of its death yet), registering
%% it inside the gate with a version above Min. `retry' if the entry is anything else.
-spec spawn_over(#shoal_cfg{}, term(), [shoal_worker_proc:ack()], shoal_nif:version()) ->
          {spawned, pid(), shoal_nif:version()} | retry.
spawn_over(#shoal_cfg{counters = C} = Cfg, Key, Acks, Min) ->
    Pid = shoal_worker_proc:spawn_worker(Cfg, Key, Acks, init),
    counters:add(C, ?C_SPAWNS, 1),
    case shoal_registry:register(Cfg, Key, Pid, {over, Min, none}) of
        {ok, Vsn} ->
            Pid ! {'$shoal_go', Vsn},
            {spawned, Pid, Vsn};
        {error, _} ->
            exit(Pid, kill),
            retry
    end.

%% We hold the claim and the host is another node: ask its member to spawn. Min is the
%% version of the tomb our claim replaced (0 if none): the host does not answer with a
%% worker that is not newer (its replica of a dead one may not have heard of the death yet).
spawn_on(#shoal_cfg{pool = Pool} = Cfg, Key, Mode, Host, Min, Members, Deadline) ->
    Ref = shoal_proto:request_ref(),
    Step = case shoal_view:ask(Cfg, Ref, Host) of
               undefined ->
                   shoal_proto:drop_ref(Ref),
                   retry;
               HostPid ->
                   shoal_proto:send(HostPid, Pool,
                                    {spawn, Key, Members, [{self(), Ref, Mode =:= sync}], none,
                                     Min, shoal_registry:hlc()}),
                   await_claimed(Cfg, Key, Ref, Deadline)
           end,
    case Step of
        {exists, _} -> settle(Cfg, Key, self(), Step);
        {started, _} -> settle(Cfg, Key, self(), Step);
        {spawned, _, _} -> settle(Cfg, Key, self(), Step);
        retry ->
            _ = shoal_registry:release_claim(Cfg, Key, retry),
            retry;
        {error, R} = E ->
            _ = shoal_registry:release_claim(Cfg, Key, {error, R}),
            E
    end.

%% The answer for a key whose claim Claimer holds was stored over the claim (put_remote),
%% which handed its pid to the claim's waiters, unless the claim refused it (not newer than
%% the tomb it replaced): then the claim is still there, and is given up (`retry').
settle(Cfg, Key, Claimer, Step) ->
    case shoal_registry:lookup(Cfg, Key) of
        {claimed, Claimer} ->
            _ = shoal_registry:release_claim(Cfg, Key, retry),
            retry;
        _ ->
            Step
    end.

%% @doc The version of the tomb Key's entry is (so a claim made now will keep it), or 0.
-spec tomb_floor(#shoal_cfg{}, term()) -> shoal_nif:version().
tomb_floor(Cfg, Key) ->
    case shoal_registry:lookup(Cfg, Key) of
        {tomb, V} -> V;
        _ -> 0
    end.

%% Not the home: ask the home's member.
ask(#shoal_cfg{pool = Pool} = Cfg, Key, Mode, Home, Members, Deadline) ->
    Ref = shoal_proto:request_ref(),
    case shoal_view:ask(Cfg, Ref, Home) of
        undefined ->
            shoal_proto:drop_ref(Ref),
            retry;
        HomePid ->
            shoal_proto:send(HomePid, Pool, {claim, Key, Members, {self(), Ref, Mode =:= sync}}),
            await_claimed(Cfg, Key, Ref, Deadline)
    end.

%% The answer of a home or host (or `retry' from our member if that peer is lost: see
%% shoal_view:ask/3): store a remote worker's replica (read-your-writes).
await_claimed(#shoal_cfg{pool = Pool} = Cfg, Key, Ref, Deadline) ->
    receive
        {'$shoal', _, Pool, {claimed, Ref, Result, Acked}} ->
            ok = shoal_view:asked(Cfg, Ref),
            case Result of
                {ok, Node, Pid, Vsn} ->
                    _ = shoal_registry:put_remote(Cfg, Key, Node, Pid, Vsn, 0),
                    case Acked of
                        started -> {started, Pid};
                        true -> {spawned, Pid, Ref};
                        false -> {exists, Pid}
                    end;
                retry -> retry;
                {error, _} = E ->
                    %% A worker registered for us that failed: our clock goes past its
                    %% version before the claim is given up, so the next spawn of the key
                    %% (arbitrated with our clock) is newer than it, wherever it lands.
                    _ = case Acked of
                            {failed, Vsn} when is_integer(Vsn) -> shoal_registry:observe(Vsn);
                            _ -> ok
                        end,
                    E
            end
    after remaining(Deadline) ->
            ok = shoal_view:asked(Cfg, Ref),
            give_up(Pool, Ref),
            {error, timeout}
    end.

%% No answer will be taken any more; drop one that raced in.
give_up(Pool, Ref) ->
    shoal_proto:drop_ref(Ref),
    receive {'$shoal', _, Pool, {claimed, Ref, _, _}} -> ok after 0 -> ok end.

%% @doc Another process holds the claim on Key: wait for its outcome, or for its death (then
%% clear its claim, which tells the other waiters to race again, and answer `retry').
-spec await_claim(#shoal_cfg{}, term(), reference(), pid(), timeout()) ->
          {ok, pid()} | retry | {error, term()}.
await_claim(Cfg, Key, Ref, Claimer, Timeout) ->
    Mref = erlang:monitor(process, Claimer),
    receive
        {'$shoal_claim', Ref, Result} ->
            erlang:demonitor(Mref, [flush]),
            Result;
        {'DOWN', Mref, process, Claimer, _} ->
            _ = shoal_registry:unregister(Cfg, Key, Claimer),
            flush_claim(Ref),
            retry
    after Timeout ->
            erlang:demonitor(Mref, [flush]),
            %% Still queued as a waiter: the answer may come later; drop it then.
            flush_claim(Ref),
            {error, timeout}
    end.

flush_claim(Ref) ->
    receive {'$shoal_claim', Ref, _} -> ok after 0 -> ok end.

%% A worker that another caller started: with `sync', wait until its init/2 has run.
ready(_Cfg, _Key, Pid, call, _Deadline) -> {ok, Pid};
ready(Cfg, Key, Pid, sync, Deadline) ->
    case ready(Pid, remaining(Deadline)) of
        {ok, _} = Ok -> Ok;
        {error, R} = E ->
            case never_ran(R) of
                true ->
                    %% It was gone before it had our question (its init/2 may have failed;
                    %% it stopped, offloaded itself or moved on): resolve again, so this
                    %% caller gets what a fresh start gives.
                    _ = relearn(Cfg, Key, Pid),
                    try loop(Cfg, Key, sync, Deadline, 1)
                    catch throw:{?MODULE, Error} -> Error
                    end;
                false ->
                    E
            end
    end.

%% @doc ensure_started/2 for a key whose worker Pid this node's table names: `{ok, Pid}'
%% once its init/2 has run (following it if it moved on), or, if it was gone before it had
%% the question, what resolving the key afresh gives.
-spec ready_or_resolve(#shoal_cfg{}, term(), pid(), timeout()) -> {ok, pid()} | {error, term()}.
ready_or_resolve(Cfg, Key, Pid, Timeout) ->
    ready(Cfg, Key, Pid, sync, deadline(Timeout)).

%% @doc Whether a worker's exit Reason, seen by a caller of Shoal's own requests
%% (`{'$shoal_call', _}', `'$shoal_ready'', `'$shoal_stop'', `{'$shoal_migrate', _}'), proves
%% the request never ran, so that it may be sent again: the worker was dead before it had
%% it, or it stopped or offloaded itself (it does not hand these requests on), or it moved
%% or stepped aside (it answers them with its successor instead of forwarding them).
-spec never_ran(term()) -> boolean().
never_ran(noproc) -> true;
never_ran({shutdown, shoal_stopped}) -> true;
never_ran({shutdown, shoal_offloaded}) -> true;
never_ran({shutdown, {shoal_moved, _}}) -> true;
never_ran(_) -> false.

%% @doc Ask a worker whether its init/2 has run: `{ok, Pid}' with the key's worker (Pid, or
%% the incarnation Pid moved to or stepped aside for), or `{error, Reason}' with the reason
%% it exited with.
-spec ready(pid(), timeout()) -> {ok, pid()} | {error, term()}.
ready(Pid, Timeout) ->
    try gen_server:call(Pid, '$shoal_ready', Timeout) of
        ok -> {ok, Pid};
        ?REDIRECT(To) -> ready(To, Timeout)
    catch
        exit:{Reason, _} -> {error, unwrap(Reason)}
    end.

%% @doc Wait for the init ack of a worker spawned with `Ref' among its acks.
-spec await_started(pid(), reference(), timeout()) -> {ok, pid()} | {error, term()}.
await_started(Pid, Ref, Timeout) ->
    Mref = erlang:monitor(process, Pid),
    receive
        {'$shoal_started', Ref, ok} -> erlang:demonitor(Mref, [flush]), {ok, Pid};
        {'$shoal_started', Ref, {error, R}} -> erlang:demonitor(Mref, [flush]), {error, R};
        {'DOWN', Mref, process, Pid, R} -> flush_started(Ref), {error, unwrap(R)}
    after Timeout ->
            erlang:demonitor(Mref, [flush]),
            {error, timeout}
    end.

flush_started(Ref) ->
    receive {'$shoal_started', Ref, _} -> ok after 0 -> ok end.

%% @doc The reason a caller gets for a worker that exited with R before its init ack: a
%% worker whose init/2 failed exits with the reason; a load/2 failure is wrapped.
-spec unwrap(term()) -> term().
unwrap({shutdown, {init_failed, R}}) -> R;
unwrap(R) -> R.

%% @doc Start the worker for Key if there is none, without waiting: the key goes to this
%% node's member, which arbitrates keys in batches (per home, in a cluster), so the caller
%% only sends a message.
-spec spawn_async(#shoal_cfg{}, term()) -> ok.
spawn_async(Cfg, Key) ->
    case shoal_registry:whereis(Cfg, Key) of
        undefined -> to_member(Cfg, Key);
        _ -> ok
    end.

%% Leave Key in the member's intake and wake the member unless it has been woken already
%% (it takes the intake in batches: one message per batch, not per key). A member that is
%% gone took its intake with it: the key is dropped, as a message to it would have been.
to_member(#shoal_cfg{intake = Q, intake_flag = F, server = Name}, Key) ->
    try ets:insert(Q, {Key}) of
        true ->
            case atomics:get(F, 1) =:= 0 andalso atomics:compare_exchange(F, 1, 0, 1) =:= ok of
                true -> wake(Name);
                false -> ok
            end
    catch error:badarg -> ok
    end.

wake(Name) ->
    case whereis(Name) of
        undefined -> ok;
        Member -> Member ! shoal_intake, ok
    end.

%% @doc A call to Dead, Key's worker in this node's table, exited `noproc': ask the member
%% of Dead's node where Key is now and store a newer answer over Dead's replica; an answer
%% naming Dead at the replica's version keeps the replica (its owner still holds it); only
%% if there is neither (the node knows nothing newer, or cannot answer) drop the replica (a
%% tomb at its version). Returns the worker it learnt of, if any.
%%
%% Asked first, because the node of a worker that moved points its table at the successor
%% before the worker exits, while the relay of that to this node may still be on its way:
%% dropping the replica first would leave this node's table without the key meanwhile,
%% and on the key's home a spawn arbitrated then would start a second worker beside the
%% successor (shoal_member_SUITE:calls_racing_migrations_run_once).
-spec relearn(#shoal_cfg{}, term(), pid()) -> {ok, pid()} | none.
relearn(Cfg, Key, Dead) ->
    case shoal_registry:lookup(Cfg, Key) of
        {remote, Node, Dead, Vsn} ->
            case where(Cfg, Key, Node) of
                {ok, N, Pid, V} when V > Vsn ->
                    _ = shoal_registry:put_remote(Cfg, Key, N, Pid, V, 0),
                    {ok, Pid};
                {ok, Node, Dead, Vsn} ->
                    %% Its owner still holds that very incarnation: it was not dead but
                    %% in between (a conflict's loser that took its key back answers
                    %% `never_ran' meanwhile), or its death has not reached the owner's
                    %% table yet, whose `down' will then follow. Removing the replica
                    %% here left a tomb at the live worker's version, which refused its
                    %% `up' for good (the chaos suite, seed 5 for 60 s).
                    {ok, Dead};
                _ ->
                    _ = shoal_registry:remove_remote(Cfg, Key, Node, Vsn),
                    none
            end;
        _ ->
            none
    end.

where(#shoal_cfg{pool = Pool} = Cfg, Key, Node) ->
    case shoal_view:peer(Cfg, Node) of
        undefined -> none;
        Member ->
            Ref = shoal_proto:request_ref(),
            Mref = erlang:monitor(process, Member),
            shoal_proto:send(Member, Pool, {where, Key, {self(), Ref}}),
            receive
                {'$shoal', _, Pool, {where_is, Ref, Answer}} ->
                    erlang:demonitor(Mref, [flush]),
                    Answer;
                {'DOWN', Mref, process, _, _} ->
                    shoal_proto:drop_ref(Ref),
                    none
            after 5000 ->
                    erlang:demonitor(Mref, [flush]),
                    shoal_proto:drop_ref(Ref),
                    none
            end
    end.

%% @doc The host of a new worker for Key among the active view's Members. A pool alone on
%% its node places every key here, as a single-node pool always has; with no window and no
%% drain anywhere, the host is the key's home (what choose/2 gives with equal weights).
-spec choose_host(#shoal_cfg{}, term(), [node()]) -> {ok, node()} | {error, no_capacity}.
choose_host(_Cfg, _Key, [Node]) when Node =:= node() -> {ok, Node};
choose_host(Cfg, Key, Members) ->
    case shoal_view:plain(Cfg) of
        true -> {ok, shoal_placement:home(Key, Members)};
        false -> shoal_placement:choose(Key, shoal_view:candidates(Cfg, Members))
    end.

deadline(infinity) -> infinity;
deadline(Ms) -> erlang:monotonic_time(millisecond) + Ms.

remaining(infinity) -> infinity;
remaining(Deadline) -> max(0, Deadline - erlang:monotonic_time(millisecond)).

-spec throw_not_ready() -> no_return().
throw_not_ready() -> throw({?MODULE, {error, not_ready}}).
-spec throw_timeout() -> no_return().
throw_timeout() -> throw({?MODULE, {error, timeout}}).
