%% shoal_chaos_SUITE: five real OTP peer nodes under continuous call/cast load while nodes
%% join late, leave (drained, then stopped), are killed and restarted, are cut apart and
%% healed, and workers are migrated, drained and rebalanced — one fault at a time, chosen
%% by a seeded random schedule — and workers are stopped with stop_worker/2. Beside the
%% call/cast clients, two spawners race over their own keys: ensure_started/2,
%% ensure_started_async/2 and stop_worker/2 of random keys, so keys are started, stopped
%% and started again, synchronously and through the members' intakes, during every fault
%% (SHOAL_CHAOS_SPAWNERS=0 leaves them out). With the spawners, every peer also runs a
%% flight recorder (shoal_chaos_trace) whose records of a key that fails a check are
%% printed and written to /tmp/shoal_chaos_trace/.
%%
%% Checked, at the end and by sampling during the run:
%%   * no key ever had two live workers outside a partition: sampled every 500 ms on the
%%     members whose links have been up for the last 1.5 s (each member read twice, a key
%%     counted only if the worker seen on the member read first is still there after the
%%     others were read, so a key moving between two reads is not one), and from the workers' own
%%     start/stop events (a worker that started while another live worker of its key ran on
%%     a node it had been connected to for a second is a violation; a worker's life ends at
%%     its exit, a conflict it lost, or its first hand-off that a successor followed);
%%   * every acknowledged call, and every cast sent outside a partition, is in its worker's
%%     state exactly once (for keys whose state no kill, stop or lost conflict destroyed),
%%     and no id is ever applied twice;
%%   * for every key, for as long as each of its states lived (kills and stops included):
%%     no two calls were answered with the same count by one lineage of state (the state
%%     an init/2 started, carried along by moves), which a state that forked (applied on two
%%     copies) or went back (a move that lost what was applied) would do;
%%   * no call and no ensure_started/2 timed out (explicit errors — a node that went away, a
%%     view not agreed yet — are counted and printed), and every `{ok, Pid}' of
%%     ensure_started/2 names a worker whose init/2 had run;
%%   * how long the cluster took to converge after the last fault (every member's table
%%     equal to the union of the owners' tables), asserted under 30 s.
%%
%% The run lasts SHOAL_CHAOS_SECONDS (60 in `make test'; `make chaos' runs longer) with
%% seed SHOAL_CHAOS_SEED (random if unset; printed, so a failing run can be replayed).
-module(shoal_chaos_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, suite/0, init_per_suite/1, end_per_suite/1]).
-export([chaos/1]).
-export([p_client/4, p_spawner/3, p_key_state/2, p_stop/1, p_local_keys/1, p_snapshot/1, p_dump/1, p_final_ids/2,
         p_migrate_some/3, p_stop_workers/2, p_local_workers/1]).

-define(POOL, chaos).
-define(WORKER, shoal_chaos_worker).
-define(KEYS, 300).
-define(SPAWN_KEYS, 200).
-define(STABLE_MS, 1500).

suite() -> [{timetrap, {minutes, 60}}].

all() -> [chaos].

init_per_suite(Config) ->
    Seconds = list_to_integer(os:getenv("SHOAL_CHAOS_SECONDS", "60")),
    Seed = case os:getenv("SHOAL_CHAOS_SEED") of
               false -> erlang:phash2({os:timestamp(), self()}, 1000000);
               S -> list_to_integer(S)
           end,
    [{paths, shoal_test_cluster:code_paths([?MODULE, ?WORKER])}, {seconds, Seconds},
     {seed, Seed} | Config].

end_per_suite(_Config) -> ok.

%%% The run --------------------------------------------------------------------------------

chaos(Config) ->
    Seed = ?config(seed, Config),
    ct:pal("chaos: seed ~b, ~b s (replay: make chaos SHOAL_CHAOS_SEED=~b "
           "SHOAL_CHAOS_SECONDS=~b)", [Seed, ?config(seconds, Config), Seed, ?config(seconds, Config)]),
    rand:seed(exsss, {Seed, Seed * 7 + 1, Seed * 13 + 3}),
    Paths = ?config(paths, Config),
    Peers = shoal_test_cluster:start_peers(chaos, 5, Paths),
    Names = maps:from_list([{N, hd(string:split(atom_to_list(N), "@"))} || {_, N} <- Peers]),
    [A, B, C, D, E] = [N || {_, N} <- Peers],
    St0 = #{peers => maps:from_list([{N, P} || {P, N} <- Peers]), names => Names,
            paths => Paths, alive => [A, B, C, D, E], pool => [], links => [],
            history => [], saved => [], affected => #{}, faults => #{}, t0 => now_us(),
            %% Stops draw from their own generator, so a seed replays the same faults as
            %% it did before stops were added.
            stops => rand:seed_s(exsss, {Seed * 3 + 1, Seed * 5 + 2, Seed * 11 + 7})},
    try
        St1 = link_all(St0, [A, B, C, D]),
        St2 = lists:foldl(fun(N, S) -> start_pool(S, N) end, St1, [A, B, C, D]),
        [ok = pcall(St2, N, shoal, await_ready, [?POOL, 10000]) || N <- [A, B, C, D]],
        Keys = [{k, I} || I <- lists:seq(1, ?KEYS)],
        Tab = ets:new(chaos_state, [public, set]),
        publish(Tab, St2),
        Clients = [{N, pcall(St2, N, ?MODULE, p_client, [?POOL, Keys, {N, I}, Seed + I])}
                   || N <- [A, B], I <- [1, 2]],
        SKeys = [{s, I} || I <- lists:seq(1, ?SPAWN_KEYS)],
        Spawners = [{N, pcall(St2, N, ?MODULE, p_spawner, [?POOL, SKeys, Seed + 10 + I])}
                    || spawners(), {I, N} <- [{1, A}, {2, B}]],
        Sampler = spawn_link(fun() -> sampler(Tab, []) end),
        Deadline = erlang:monotonic_time(millisecond) + ?config(seconds, Config) * 1000,
        St3 = fault_loop(St2#{tab => Tab}, Tab, Deadline, [C, D, E]),
        %% Quiet: every living node back in, every link up, then stop the clients.
        St4 = settle(St3, Tab),
        LastFault = now_us(),
        Results = [{N, binary_to_term(pcall(St4, N, ?MODULE, p_stop, [W]))} || {N, W} <- Clients],
        Spawned = [{N, binary_to_term(pcall(St4, N, ?MODULE, p_stop, [W]))} || {N, W} <- Spawners],
        Stopped = now_us(),
        Sampler ! {stop, self()},
        Samples = receive {sampled, Sa} -> Sa end,
        Converged = converge(St4, 30000),
        report_and_check(St4, Keys, Results, Spawned, Samples, Converged, LastFault, Stopped)
    after
        shoal_test_cluster:stop_peers(Peers)
    end.

%%% Faults -----------------------------------------------------------------------------------

fault_loop(St, Tab, Deadline, Killable) ->
    case erlang:monotonic_time(millisecond) > Deadline of
        true -> St;
        false ->
            timer:sleep(500 + rand:uniform(1500)),
            Kind = pick([join, leave, kill, cut, migrate, drain, rebalance, revive]),
            St1 = try fault(Kind, St, Killable)
                  catch Class:Reason:Stack ->
                          ct:pal("fault ~p failed: ~p:~p ~p", [Kind, Class, Reason, Stack]),
                          St
                  end,
            St2 = maybe_stop(count_fault(Kind, St1)),
            publish(Tab, St2),
            fault_loop(St2, Tab, Deadline, Killable)
    end.

%% After one fault in five, a member stops five random keys' workers (shoal:stop_worker/2)
%% under the clients' traffic: calls queued behind a stop must run once, in the next
%% incarnation. The stopped workers' state is gone (the test worker does not persist it).
maybe_stop(#{stops := R0, pool := Pool} = St) when Pool =/= [] ->
    case rand:uniform_s(5, R0) of
        {1, R1} ->
            {I, R2} = rand:uniform_s(length(Pool), R1),
            {Ks, R3} = lists:foldl(fun(_, {Acc, R}) ->
                                           {X, R_} = rand:uniform_s(?KEYS, R),
                                           {[{k, X} | Acc], R_}
                                   end, {[], R2}, lists:seq(1, 5)),
            N = lists:nth(I, Pool),
            Res = pcall(St, N, ?MODULE, p_stop_workers, [?POOL, Ks]),
            ct:pal("stop on ~p: ~p", [N, Res]),
            affect(count_fault(stop, St#{stops := R3}), Ks, {stopped, N});
        {_, R1} ->
            St#{stops := R1}
    end;
maybe_stop(St) ->
    St.

count_fault(Kind, #{faults := F} = St) -> St#{faults := maps:update_with(Kind, fun(X) -> X + 1 end, 1, F)}.

%% A node that is alive but not a member joins: it connects to everyone and starts the pool.
fault(join, #{alive := Alive, pool := Pool} = St, _) ->
    case Alive -- Pool of
        [] -> St;
        Out -> start_pool(link_all(St, Alive), pick(Out))
    end;
%% A member is drained (its workers move away, keeping state) and its pool stopped.
fault(leave, #{pool := Pool} = St, Killable) ->
    case [N || N <- Pool, lists:member(N, Killable)] of
        [] -> St;
        Cands ->
            N = pick(Cands),
            Res = pcall(St, hd(Pool -- [N]), shoal, drain, [?POOL, N]),
            Left = pcall(St, N, ?MODULE, p_local_keys, [?POOL]),
            St1 = changed(St#{pool := Pool -- [N]}),
            ok = pcall(St, N, shoal, stop_pool, [?POOL]),
            ct:pal("leave ~p: drain ~p, ~b keys lost with the stop", [N, Res, length(Left)]),
            affect(St1, Left, {left, N})
    end;
%% A member is killed (halt); a later `revive' restarts it under its name.
fault(kill, #{alive := Alive, peers := Peers} = St, Killable) ->
    case [N || N <- Alive, lists:member(N, Killable)] of
        [] -> St;
        Cands ->
            N = pick(Cands),
            {Keys, Events} = pcall(St, N, ?MODULE, p_snapshot, [?POOL]),
            St1 = changed(St#{alive := Alive -- [N], pool := maps:get(pool, St) -- [N],
                              links := [L || L <- maps:get(links, St),
                                             not lists:member(N, tuple_to_list(L))],
                              saved := Events ++ maps:get(saved, St),
                              kills => [{N, now_us()} | maps:get(kills, St, [])]}),
            peer:cast(maps:get(N, Peers), erlang, halt, []),
            ct:pal("kill ~p (~b workers on it)", [N, length(Keys)]),
            affect(St1, Keys, {killed, N})
    end;
fault(revive, #{alive := Alive, names := Names, paths := Paths, peers := Peers} = St, _) ->
    case maps:keys(Names) -- Alive of
        [] -> St;
        Dead ->
            N = pick(Dead),
            wait_gone(St, N),
            {P, N} = shoal_test_cluster:start_peer(maps:get(N, Names), Paths),
            St1 = St#{peers := Peers#{N => P}, alive := [N | Alive]},
            start_pool(link_all(St1, [N | Alive]), N)
    end;
%% A clean partition: the members are split in two groups and every link between them cut;
%% healed 1 to 2 s later.
fault(cut, #{alive := Alive} = St, Killable) when length(Alive) >= 2 ->
    %% Mostly a minority cut off from the clients' nodes (a key then keeps its state on
    %% the clients' side unless it lived on the cut side); sometimes any split.
    Cuttable = [N || N <- Alive, lists:member(N, Killable)],
    {G1, G2} = case rand:uniform(10) =< 7 andalso Cuttable =/= [] of
                   true ->
                       Out = lists:sublist(shuffle(Cuttable), rand:uniform(length(Cuttable))),
                       {Alive -- Out, Out};
                   false ->
                       lists:split(rand:uniform(length(Alive) - 1), shuffle(Alive))
               end,
    T1 = now_us(),
    Cross = [{min(X, Y), max(X, Y)} || X <- G1, Y <- G2],
    %% Recorded before the links go, so no spawn the cut allows precedes its record.
    St1 = changed(St#{links := maps:get(links, St) -- Cross}),
    [ok = shoal_test_cluster:disconnect(maps:get(X, maps:get(peers, St)), Y) || {X, Y} <- Cross],
    St2 = St1,
    ct:pal("cut ~p | ~p", [G1, G2]),
    timer:sleep(1000 + rand:uniform(1000)),
    St3 = link_all(St2, maps:get(alive, St2)),
    St3#{cuts => [{T1, now_us()} | maps:get(cuts, St3, [])]};
fault(cut, St, _) -> St;
fault(migrate, #{pool := Pool} = St, _) when Pool =/= [] ->
    Res = pcall(St, pick(Pool), ?MODULE, p_migrate_some, [?POOL, 20, Pool]),
    St#{migrations => [Res | maps:get(migrations, St, [])]};
fault(drain, #{pool := Pool} = St, _) when length(Pool) >= 2 ->
    N = pick(Pool),
    From = pick(Pool),
    Res = pcall(St, From, shoal, drain, [?POOL, N]),
    ok = pcall(St, From, shoal, undrain, [?POOL, N]),
    St#{drains => [Res | maps:get(drains, St, [])]};
fault(rebalance, #{pool := Pool} = St, _) when length(Pool) >= 2 ->
    From = pick(Pool),
    [ok = pcall(St, From, shoal, set_target, [?POOL, N, #{target => rand:uniform(150)}])
     || N <- lists:sublist(shuffle(Pool), 2)],
    {ok, #{moved := M}} = pcall(St, From, shoal, rebalance, [?POOL]),
    [ok = pcall(St, From, shoal, set_target, [?POOL, N, #{}]) || N <- Pool],
    St#{rebalanced => maps:get(rebalanced, St, 0) + M};
fault(_, St, _) ->
    St.

%% After the last fault: revive nobody, but link every living node and give every living
%% node the pool, and wait until every member is active.
settle(#{alive := Alive, pool := Pool} = St0, Tab) ->
    St1 = link_all(St0, Alive),
    St2 = lists:foldl(fun(N, S) -> start_pool(S, N) end, St1, Alive -- Pool),
    [ok = pcall(St2, N, shoal, await_ready, [?POOL, 30000]) || N <- maps:get(pool, St2)],
    publish(Tab, St2),
    St2.

start_pool(#{pool := Pool} = St, N) ->
    spawners() andalso pcall(St, N, shoal_chaos_trace, start, []),
    {ok, _} = pcall(St, N, shoal, start_pool, [?POOL, #{worker => ?WORKER, handoff_grace => 2000}]),
    changed(St#{pool := lists:usort([N | Pool])}).

link_all(St, Nodes) ->
    lists:foldl(fun({X, Y}, S) -> link_pair(S, X, Y) end, St, [{X, Y} || X <- Nodes, Y <- Nodes, X < Y]).

link_pair(#{links := Links} = St, X, Y) ->
    case lists:member({X, Y}, Links) of
        true -> St;
        false ->
            ok = shoal_test_cluster:connect(maps:get(X, maps:get(peers, St)), Y),
            changed(St#{links := [{X, Y} | Links]})
    end.

%% Remember the state of links and pools at this instant (the history the checks read),
%% and show it to the sampler at once.
changed(#{history := H, links := L, pool := P} = St0) ->
    St = St0#{history := [{now_us(), lists:usort(L), lists:usort(P)} | H]},
    case maps:find(tab, St) of
        {ok, Tab} -> publish(Tab, St);
        error -> ok
    end,
    St.

affect(#{affected := Af} = St, Keys, Why) ->
    St#{affected := lists:foldl(fun(K, A) -> A#{K => Why} end, Af, Keys)}.

wait_gone(#{peers := Peers}, N) ->
    Ref = erlang:monitor(process, maps:get(N, Peers)),
    receive {'DOWN', Ref, process, _, _} -> ok after 10000 -> ok end.

publish(Tab, #{peers := Peers, links := Links, pool := Pool, history := H}) ->
    ets:insert(Tab, {state, Peers, Links, Pool, H}).

%%% Sampling ---------------------------------------------------------------------------------

%% Every 500 ms: each member's own live (not moving) workers; a key held by two members
%% whose link has been up (and pools running) for ?STABLE_MS is a violation.
sampler(Tab, Found) ->
    receive
        {stop, From} -> From ! {sampled, Found}
    after 500 ->
            [{state, Peers, Links, Pool, History}] = ets:lookup(Tab, state),
            Now = now_us(),
            %% The members are read one after another, so a key that moves from a member
            %% read early to one read later shows on both: read them all again, and count
            %% a key only if the worker seen on the member read first is still there (then
            %% both were live when the later member was read).
            First = sweep(Peers, Pool),
            Again = sweep(Peers, Pool),
            New = [{Now, K, [X, Y]}
                   || {I, X, WX} <- First, {J, Y, WY} <- First, I < J,
                      {K, P} <- maps:to_list(WX), maps:is_key(K, WY),
                      maps:get(K, element(3, lists:keyfind(X, 2, Again)), none) =:= P,
                      lists:member({min(X, Y), max(X, Y)}, Links),
                      stable(History, min(X, Y), max(X, Y), Now)],
            sampler(Tab, New ++ Found)
    end.

%% Each member's live workers, #{Key => Pid}, read in turn: [{Index, Node, Workers}].
sweep(Peers, Pool) ->
    lists:zip3(lists:seq(1, length(Pool)), Pool,
               [try maps:from_list(peer:call(maps:get(N, Peers), ?MODULE, p_local_workers,
                                             [?POOL], 5000))
                catch _:_ -> #{}
                end || N <- Pool]).

%% X and Y linked, both pools running, throughout the ?STABLE_MS before T.
stable(History, X, Y, T) ->
    Since = T - ?STABLE_MS * 1000,
    Relevant = [S || {Ts, _, _} = S <- History, Ts =< T],
    case Relevant of
        [] -> false;
        _ ->
            {Before, During} = lists:partition(fun({Ts, _, _}) -> Ts =< Since end, Relevant),
            Window = During ++ [hd(Before) || Before =/= []],
            Before =/= [] andalso
                lists:all(fun({_, L, P}) ->
                                  lists:member({min(X, Y), max(X, Y)}, L)
                                      andalso lists:member(X, P) andalso lists:member(Y, P)
                          end, Window)
    end.

%%% Convergence ------------------------------------------------------------------------------

%% Poll until every member's table equals the union of the members' own workers.
converge(#{pool := Pool} = St, Max) ->
    T0 = now_us(),
    Deadline = erlang:monotonic_time(millisecond) + Max,
    converge_loop(St, Pool, T0, Deadline).

converge_loop(St, Pool, T0, Deadline) ->
    Dumps = [{N, pcall(St, N, ?MODULE, p_dump, [?POOL])} || N <- Pool],
    Owned = lists:usort(lists:append([[E || {_, EN, _} = E <- D, EN =:= N] || {N, D} <- Dumps])),
    case lists:all(fun({_, D}) -> D =:= Owned end, Dumps) of
        true -> {ok, (now_us() - T0) div 1000};
        false ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true ->
                    Diff = [{N, length(D -- Owned), length(Owned -- D)} || {N, D} <- Dumps],
                    Examples = [{N, lists:sublist(D -- Owned, 3), lists:sublist(Owned -- D, 3)}
                                || {N, D} <- Dumps],
                    ct:pal("not converged: extra / missing per member ~p", [Examples]),
                    [ct:pal("~p: ~p", [K, [{N, pcall(St, N, shoal_registry, lookup,
                                                     [persistent_term_cfg(St, N), K])} || N <- Pool]])
                     || {_, _, Missing} <- Examples, {K, _, _} <- lists:sublist(Missing, 2)],
                    print_traces(St, lists:usort([K || {_, Extra, Missing} <- Examples,
                                                       {K, _, _} <- lists:sublist(Extra, 2) ++ lists:sublist(Missing, 2)])),
                    {timeout, Diff};
                false -> timer:sleep(20), converge_loop(St, Pool, T0, Deadline)
            end
    end.

%% What each living node's recorder (shoal_chaos_trace) holds about Keys, merged in time.
print_traces(_St, []) -> ok;
print_traces(#{alive := Alive} = St, Keys) ->
    Recs = lists:sort(lists:append([pcall(St, N, shoal_chaos_trace, read, [Keys]) || N <- Alive])),
    Lines = [io_lib:format("~b ~s ~w ~s ~w~n", [T, short(N), P, Kind, MFA]) || {T, N, P, Kind, MFA} <- Recs],
    Dir = filename:join(os:getenv("SHOAL_CHAOS_TRACE_DIR", "/tmp"), "shoal_chaos_trace"),
    ok = filelib:ensure_dir(filename:join(Dir, "x")),
    File = filename:join(Dir, io_lib:format("~b-~b.txt", [erlang:system_time(second), erlang:unique_integer([positive])])),
    ok = file:write_file(File, [io_lib:format("keys ~p~n", [Keys]) | Lines]),
    ct:pal("trace of ~p (~b records) in ~ts; the last 150:~n~ts",
           [Keys, length(Lines), File, lists:nthtail(max(0, length(Lines) - 150), Lines)]),
    ok.

short(Node) -> lists:last(string:split(hd(string:split(atom_to_list(Node), "@")), "_", trailing)).

%%% Checks -------------------------------------------------------------------------------------

report_and_check(#{pool := Pool, saved := Saved, affected := Affected0, history := History,
                   faults := Faults} = St, Keys, Results, Spawned, Samples, Converged, LastFault,
                 Stopped) ->
    Events = Saved ++ lists:append([element(2, pcall(St, N, ?MODULE, p_snapshot, [?POOL]))
                                    || N <- maps:get(alive, St)]),
    Final = pcall(St, hd(Pool), ?MODULE, p_final_ids, [?POOL, Keys]),
    Conflicted = lists:usort([K || {conflict, K, _, _} <- Events, lists:member(K, Keys)]),
    Overlaps = overlaps(Events, History, maps:get(kills, St, [])),
    %% A conflict's loser merges its ids into the winner (shoal_chaos_worker:conflict/3):
    %% conflicts destroy no state; kills and stops do.
    Affected = Affected0,
    Calls = lists:append([maps:get(acked, R) || {_, R} <- Results]),
    Casts = lists:append([maps:get(casts, R) || {_, R} <- Results]),
    Errors = lists:append([maps:get(errors, R) || {_, R} <- Results]),
    Timeouts = [E || {_, _, timeout, _} = E <- Errors],
    Partitions = maps:get(cuts, St, []),
    FinalMap = maps:from_list(Final),
    Twice = [{K, Id} || {K, Ids} <- Final, Id <- Ids -- lists:usort(Ids)],
    %% Every call's answer, for every key and for as long as its state lived: two calls
    %% answered with one lineage and one count had their state forked or sent back.
    Counts = lists:foldl(fun({_, R}, Acc) ->
                                 maps:merge_with(fun(_, {K, A}, {_, B}) -> {K, A ++ B} end,
                                                 Acc, maps:get(counts, R))
                         end, #{}, Results),
    Forked = [{K, L, N} || {L, {K, Ns}} <- maps:to_list(Counts), N <- repeated(lists:sort(Ns))],
    Answers = lists:sum([length(Ns) || {_, Ns} <- maps:values(Counts)]),
    Lineages = map_size(Counts),
    Checked = [K || K <- Keys, not maps:is_key(K, Affected)],
    CheckedSet = maps:from_list([{K, true} || K <- Checked]),
    MissingCalls = [{K, Id} || {K, Id} <- Calls, maps:is_key(K, CheckedSet),
                               not lists:member(Id, maps:get(K, FinalMap, []))],
    CastsChecked = [{K, Id} || {K, Id, T} <- Casts, maps:is_key(K, CheckedSet),
                               not in_partition(T, Partitions)],
    MissingCasts = [{K, Id} || {K, Id} <- CastsChecked,
                               not lists:member(Id, maps:get(K, FinalMap, []))],
    ErrorKinds = lists:foldl(fun({_, _, R, _}, M) -> maps:update_with(kind(R), fun(X) -> X + 1 end, 1, M) end,
                             #{}, Errors),
    SpawnErrors = lists:append([maps:get(errors, R) || {_, R} <- Spawned]),
    SpawnTimeouts = [E || {_, _, timeout, _, _} = E <- SpawnErrors],
    SpawnErrorKinds = lists:foldl(fun(Err, M) ->
                                          Kind = {element(2, Err), kind(element(3, Err))},
                                          maps:update_with(Kind, fun(X) -> X + 1 end, 1, M)
                                  end, #{}, SpawnErrors),
    %% Every worker ensure_started/2 answered with had recorded its start (init/2 ran); a
    %% node's events are read just before it is killed, so a worker that started on it
    %% after that read is not judged.
    LivePids = maps:from_list([{P, true} || {live, _, P, _, _} <- Events]),
    KilledNodes = [N || {N, _} <- maps:get(kills, St, [])],
    NotStarted = [{K, P} || {_, R} <- Spawned, {K, P} <- maps:get(oks, R),
                            not maps:is_key(P, LivePids),
                            not lists:member(node(P), KilledNodes)],
    SpawnCounts = lists:foldl(fun({_, R}, M) -> maps:merge_with(fun(_, X, Y) -> X + Y end, M, maps:get(counts, R)) end,
                              #{}, Spawned),
    ct:pal("chaos report~n"
           "  faults: ~p~n"
           "  calls acknowledged ~b, casts sent ~b (~b outside partitions checked), errors ~p~n"
           "  keys ~b: ~b with state destroyed by a kill or stop (~b had a conflict, merged), "
           "~b checked~n"
           "  duplicates outside a partition: sampled ~b, from worker events ~b~n"
           "  acknowledged calls missing from their worker's state: ~b; casts missing: ~b; "
           "ids applied twice: ~b; calls timed out: ~b~n"
           "  calls answered with a count another call of their state's lineage also got "
           "(state forked or gone back): ~b, of ~b answers from ~b lineages~n"
           "  spawners: ~p, errors ~p; ensure_started/2 answers whose worker never ran init/2: ~b~n"
           "  convergence after the last fault: ~p ms (clients stopped ~b ms after it)",
           [Faults, length(Calls), length(Casts), length(CastsChecked), ErrorKinds,
            length(Keys), length([K || K <- Keys, maps:is_key(K, Affected)]), length(Conflicted),
            length(Checked),
            length(Samples), length(Overlaps), length(MissingCalls), length(MissingCasts),
            length(Twice), length(Timeouts), length(Forked), Answers, Lineages, SpawnCounts, SpawnErrorKinds, length(NotStarted),
            Converged, (Stopped - LastFault) div 1000]),
    ct:pal("history (time, links, pools): ~p", [lists:reverse(History)]),
    [ct:pal("spawner error ~p", [E]) || E <- lists:sublist(SpawnErrors, 10)],
    [begin
         K = element(1, O),
         Pids = [P || {live, K1, P, _, _} <- Events, K1 =:= K],
         KeyEvents = [{element(tuple_size(E), E), E}
                      || E <- Events, element(2, E) =:= K orelse
                             (element(1, E) =:= down_at andalso lists:member(element(2, E), Pids))],
         ct:pal("overlap ~p: events ~p~nnow ~p",
                [O, lists:sort(KeyEvents),
                 [{N, pcall(St, N, shoal_registry, lookup, [persistent_term_cfg(St, N), K])} || N <- Pool]])
     end || O <- lists:sublist(Overlaps, 3)],
    [ct:pal("sampled duplicate ~p: events ~p~nnow ~p",
            [Sample, lists:sort([{element(tuple_size(E), E), E} || E <- Events, element(2, E) =:= K]),
             [{N, pcall(St, N, shoal_registry, lookup, [persistent_term_cfg(St, N), K])} || N <- Pool]])
     || {_, K, _} = Sample <- lists:sublist(Samples, 3)],
    [ct:pal("missing ~p (sent at ~p): events ~p~nnow ~p",
            [{K, Id}, [T || {K1, Id1, T} <- Casts, {K1, Id1} =:= {K, Id}],
             lists:sort([{element(tuple_size(E), E), E} || E <- Events, element(2, E) =:= K]),
             [{N, pcall(St, N, shoal_registry, lookup, [persistent_term_cfg(St, N), K])} || N <- Pool]])
     || {K, Id} <- lists:sublist(MissingCasts ++ MissingCalls, 3)],
    [ct:pal("applied twice ~p (~ts, acked: ~p, errors: ~p): events ~p~nfinal ids ~p",
            [{K, Id}, case lists:keymember(Id, 2, [{K1, I1} || {K1, I1, _} <- Casts, K1 =:= K]) of
                          true -> "a cast";
                          false -> "a call"
                      end,
             lists:member({K, Id}, Calls), [E || {K1, Id1, _, _} = E <- Errors, {K1, Id1} =:= {K, Id}],
             lists:sort([{element(tuple_size(E), E), E} || E <- Events, element(2, E) =:= K]),
             maps:get(K, FinalMap, [])])
     || {K, Id} <- lists:sublist(Twice, 3)],
    spawners() andalso
        print_traces(St, lists:usort([element(1, E) || E <- lists:sublist(SpawnTimeouts, 3)]
                                     ++ [element(1, O) || O <- lists:sublist(Overlaps, 3)]
                                     ++ [K || {K, _} <- lists:sublist(NotStarted, 3)])),
    ?assertEqual([], lists:sublist(Samples, 10)),
    ?assertEqual([], lists:sublist(Overlaps, 10)),
    ?assertEqual([], lists:sublist(Twice, 10)),
    ?assertEqual([], lists:sublist(Forked, 10)),
    ?assertEqual([], lists:sublist(MissingCalls, 10)),
    ?assertEqual([], lists:sublist(MissingCasts, 10)),
    ?assertEqual([], Timeouts),
    ?assertEqual([], SpawnTimeouts),
    ?assertEqual([], lists:sublist(NotStarted, 10)),
    ?assert(not spawners() orelse maps:get(ensure_started, SpawnCounts, 0) > 0),
    ?assert(not spawners() orelse maps:get(ensure_started_async, SpawnCounts, 0) > 0),
    ?assertMatch({ok, _}, Converged),
    ok.

%% The counts of a sorted list that occur more than once (once for each repeat).
repeated([N, N | Rest]) -> [N | repeated([N | Rest])];
repeated([_ | Rest]) -> repeated(Rest);
repeated([]) -> [].

%% The spawners run unless SHOAL_CHAOS_SPAWNERS=0.
spawners() -> os:getenv("SHOAL_CHAOS_SPAWNERS", "1") =/= "0".

kind({Reason, _}) when is_atom(Reason) -> Reason;
kind({{Reason, _}, _}) when is_atom(Reason) -> Reason;
kind(R) when is_atom(R) -> R;
kind(_) -> other.

%% Casts sent from just before a cut until a second after its heal may be lost on the way
%% to the other side.
in_partition(T, Partitions) ->
    lists:any(fun({From, To}) -> T >= From - 100000 andalso T =< To + 1000000 end, Partitions).

%% Incarnations of one key that were live at once on two nodes linked (with pools up) for
%% the second before the younger one started.
overlaps(Events, History, Kills) ->
    %% A worker ends at its exit, at a conflict it lost, or at its first hand-off that a
    %% successor followed (another worker of its key started within 30 s, the time a target
    %% has to start one): a move that failed and is tried again hands off more than once,
    %% and a worker whose move never had a successor is where it was.
    Started = lists:foldl(fun({live, K, P, _, T}, M) ->
                                  maps:update_with(K, fun(L) -> [{T, P} | L] end, [{T, P}], M);
                             (_, M) -> M
                          end, #{}, Events),
    Followed = fun(K, P, H) ->
                       lists:any(fun({T, P1}) -> P1 =/= P andalso T >= H andalso T =< H + 30000000 end,
                                 maps:get(K, Started, []))
               end,
    Ends = lists:foldl(fun({P, T}, M) -> maps:update_with(P, fun(E) -> min(E, T) end, T, M) end,
                       #{},
                       [{P, T} || {down_at, P, T} <- Events]
                       ++ [{P, T} || {handoff, K, P, T} <- Events, Followed(K, P, T)]
                       ++ [{P, T} || {conflict, _, P, T} <- Events]),
    %% A worker on a node that was killed ended with it (its exit was never recorded).
    Killed = fun(N, T) ->
                     case lists:sort([KT || {KN, KT} <- Kills, KN =:= N, KT >= T]) of
                         [KT | _] -> KT;
                         [] -> infinity
                     end
             end,
    Lives = [{K, P, N, T, case maps:get(P, Ends, none) of
                              none -> Killed(N, T);
                              E -> E
                          end} || {live, K, P, N, T} <- Events],
    ByKey = lists:foldl(fun({K, _, _, _, _} = L, M) -> maps:update_with(K, fun(X) -> [L | X] end, [L], M) end,
                        #{}, Lives),
    [{K, {N1, T1}, {N2, T2}}
     || {K, Ls} <- maps:to_list(ByKey),
        {_, P1, N1, T1, E1} <- Ls, {_, P2, N2, T2, _} <- Ls,
        P1 =/= P2, N1 =/= N2, T1 =< T2, E1 =:= infinity orelse T2 < E1,
        stable(History, N1, N2, T2)].

%%% On the peers -------------------------------------------------------------------------------

%% @private Stop the workers of Keys, all at once (each from its own process).
p_stop_workers(Pool, Keys) ->
    Self = self(),
    Ps = [spawn(fun() -> Self ! {self(), K, catch shoal:stop_worker(Pool, K)} end) || K <- Keys],
    [receive {P, K, R} -> {K, R} end || P <- Ps].

%% @private A client: ~500 operations a second on random keys, 85% calls `{incr, Id}', 15%
%% casts `{mark, Id}'; p_stop/1 answers (term_to_binary) #{acked => [{Key, Id}], casts => [{Key, Id, T}],
%% errors => [{Key, Id, Reason, T}], counts => #{Lineage => {Key, [Count]}}} (the calls'
%% answers, see shoal_chaos_worker).
p_client(Pool, Keys, Tag, Seed) ->
    spawn(fun() ->
                  rand:seed(exsss, {Seed, Seed + 1, Seed + 2}),
                  client(Pool, list_to_tuple(Keys), Tag, 0, [], [], [], #{})
          end).

client(Pool, Keys, Tag, Seq, Acked, Casts, Errors, Counts) ->
    receive
        {stop, From} ->
            From ! {stopped, self(), #{acked => Acked, casts => Casts, errors => Errors,
                                       counts => Counts}}
    after 2 ->
            K = element(rand:uniform(tuple_size(Keys)), Keys),
            Id = {Tag, Seq},
            case rand:uniform(100) =< 85 of
                true ->
                    try shoal:call(Pool, K, {incr, Id}, 5000) of
                        {L, N} when is_reference(L), is_integer(N) ->
                            Counts1 = case Counts of
                                          #{L := {_, Ns}} -> Counts#{L := {K, [N | Ns]}};
                                          #{} -> Counts#{L => {K, [N]}}
                                      end,
                            client(Pool, Keys, Tag, Seq + 1, [{K, Id} | Acked], Casts, Errors,
                                   Counts1)
                    catch
                        exit:{Reason, _} ->
                            client(Pool, Keys, Tag, Seq + 1, Acked, Casts,
                                   [{K, Id, Reason, now_us()} | Errors], Counts)
                    end;
                false ->
                    ok = shoal:cast(Pool, K, {mark, Id}),
                    client(Pool, Keys, Tag, Seq + 1, Acked, [{K, Id, now_us()} | Casts], Errors,
                           Counts)
            end
    end.

%% @private A spawner: ~200 operations a second on random keys of its own set, 45%
%% ensure_started/2, 40% ensure_started_async/2, 15% stop_worker/2; p_stop/1 answers (term_to_binary)
%% #{counts => #{Op => N}, oks => [{Key, Pid}] (ensure_started/2's answers),
%% errors => [{Key, Op, Reason, T}]} (stop_worker/2's `{error, not_found}' is no error).
p_spawner(Pool, Keys, Seed) ->
    spawn(fun() ->
                  rand:seed(exsss, {Seed, Seed + 1, Seed + 2}),
                  spawner(Pool, list_to_tuple(Keys), #{}, [], [])
          end).

spawner(Pool, Keys, Counts, Oks, Errors) ->
    receive
        {stop, From} ->
            From ! {stopped, self(), #{counts => Counts, oks => Oks, errors => Errors}}
    after 5 ->
            K = element(rand:uniform(tuple_size(Keys)), Keys),
            R = rand:uniform(100),
            Op = if R =< 45 -> ensure_started; R =< 85 -> ensure_started_async; true -> stop_worker end,
            Counts1 = maps:update_with(Op, fun(X) -> X + 1 end, 1, Counts),
            case {Op, try shoal:Op(Pool, K) catch exit:X -> {error, {exit, X}} end} of
                {ensure_started, {ok, P}} -> spawner(Pool, Keys, Counts1, [{K, P} | Oks], Errors);
                {ensure_started_async, ok} -> spawner(Pool, Keys, Counts1, Oks, Errors);
                {stop_worker, ok} -> spawner(Pool, Keys, Counts1, Oks, Errors);
                {stop_worker, {error, not_found}} -> spawner(Pool, Keys, Counts1, Oks, Errors);
                {_, {error, timeout}} ->
                    %% What each member's table holds for the key, and what the processes
                    %% it names are doing: printed with the errors.
                    Diag = [{N, catch erpc:call(N, ?MODULE, p_key_state, [Pool, K], 2000)}
                            || N <- [node() | nodes()]],
                    spawner(Pool, Keys, Counts1, Oks,
                            [{K, Op, timeout, now_us(), Diag} | Errors]);
                {_, {error, Reason}} ->
                    spawner(Pool, Keys, Counts1, Oks, [{K, Op, Reason, now_us()} | Errors])
            end
    end.

%% @private Key's entry in this node's table, with what a local process it names is doing.
p_key_state(Pool, Key) ->
    case persistent_term:get({shoal_pool, Pool}, undefined) of
        undefined -> no_pool;
        Cfg ->
            E = shoal_registry:lookup(Cfg, Key),
            P = case E of
                    {local, Pid, _, _} -> Pid;
                    {claimed, Pid} -> Pid;
                    _ -> none
                end,
            Info = case is_pid(P) andalso node(P) =:= node() of
                       true -> erlang:process_info(P, [current_stacktrace, message_queue_len,
                                                       status, registered_name]);
                       false -> none
                   end,
            {E, Info}
    end.

%% @private Stop a client and return its record.
p_stop(Pid) ->
    Pid ! {stop, self()},
    %% Compressed: a long run's results are hundreds of megabytes as terms, and they come
    %% back over the peer's standard I/O.
    term_to_binary(receive {stopped, Pid, R} -> R after 60000 -> {no_answer, Pid} end,
                   [{compressed, 6}]).

%% @private This node's own live (not moving) workers: [{Key, Pid}].
p_local_workers(Pool) ->
    case persistent_term:get({shoal_pool, Pool}, undefined) of
        undefined -> [];
        Cfg -> [{K, P} || {K, _, _} <- shoal_registry:owned(Cfg),
                          {local, P, _, false} <- [shoal_registry:lookup(Cfg, K)]]
    end.

%% @private This node's own keys (live workers that are not moving).
p_local_keys(Pool) ->
    case persistent_term:get({shoal_pool, Pool}, undefined) of
        undefined -> [];
        Cfg -> [K || {K, _, _} <- shoal_registry:owned(Cfg),
                     {local, _, _, false} <- [shoal_registry:lookup(Cfg, K)]]
    end.

%% @private This node's own keys and every event recorded here.
p_snapshot(Pool) ->
    {p_local_keys(Pool), ets:tab2list(shoal_test_events)}.

%% @private This node's table as [{Key, Node, Pid}], sorted.
p_dump(Pool) ->
    case persistent_term:get({shoal_pool, Pool}, undefined) of
        undefined -> [];
        Cfg -> lists:sort([{K, N, P} || {K, N, P, _} <- shoal_registry:dump(Cfg)])
    end.

%% @private The ids each key's worker holds (keys without a worker are left out).
p_final_ids(Pool, Keys) ->
    [{K, shoal:call(Pool, K, ids, 10000)} || K <- Keys, shoal:whereis(Pool, K) =/= undefined].

%% @private Migrate N random keys to random members, in parallel; the results.
p_migrate_some(Pool, N, Nodes) ->
    Self = self(),
    Keys = [{k, rand:uniform(?KEYS)} || _ <- lists:seq(1, N)],
    Ps = [spawn(fun() -> Self ! {self(), catch shoal:migrate(Pool, K, lists:nth(rand:uniform(length(Nodes)), Nodes))} end)
          || K <- Keys],
    [receive {P, R} -> R after 120000 -> timeout end || P <- Ps].

%%% Helpers ------------------------------------------------------------------------------------

pcall(#{peers := Peers}, N, M, F, A) ->
    shoal_test_cluster:pcall(maps:get(N, Peers), M, F, A).

pick(L) -> lists:nth(rand:uniform(length(L)), L).

persistent_term_cfg(St, N) -> pcall(St, N, persistent_term, get, [{shoal_pool, ?POOL}]).

shuffle(L) -> [X || {_, X} <- lists:sort([{rand:uniform(), X} || X <- L])].

now_us() -> os:system_time(microsecond).
