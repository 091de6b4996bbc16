%% @doc EUnit for the NIF set (shoal_nif): bad arguments, owner monitors, claim races,
%% yielding folds and library upgrade. Each test is one documented behaviour.
-module(shoal_nif_tests).

-include_lib("eunit/include/eunit.hrl").

-export([upgrade_same_path/1, upgrade_other_path/2, pinned_worker/0, in_peer/2, ebin_dir/0]).

-define(DEADLINE_MS, 5000).

%%% Helpers --------------------------------------------------------------------------------

%% A pid of a node this VM never heard of: enif_is_pid accepts it, enif_get_local_pid not.
remote_pid(Node, Id) ->
    N = atom_to_binary(Node, utf8),
    binary_to_term(<<131, 88, 119, (byte_size(N)), N/binary, Id:32, 0:32, 1:32>>).

sleeper() -> spawn(fun() -> receive stop -> ok end end).

kill_and_wait(Pid) ->
    Ref = erlang:monitor(process, Pid),
    exit(Pid, kill),
    receive {'DOWN', Ref, process, Pid, _} -> ok end.

%% Poll Fun until it returns true (monitor callbacks run asynchronously).
wait_until(Fun) -> wait_until(Fun, erlang:monotonic_time(millisecond) + ?DEADLINE_MS).
wait_until(Fun, Deadline) ->
    case Fun() of
        true -> true;
        false ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true -> false;
                false -> receive after 2 -> wait_until(Fun, Deadline) end
            end
    end.

nest(0, Inner, _Wrap) -> Inner;
nest(N, Inner, Wrap) -> nest(N - 1, Wrap(Inner), Wrap).

improper(0, Tail) -> Tail;
improper(N, Tail) -> improper(N - 1, [N | Tail]).

%% Run Fun in a fresh process that owns nothing else; returns its result.
in_proc(Fun) ->
    {Pid, Ref} = spawn_monitor(fun() -> exit({done, Fun()}) end),
    receive {'DOWN', Ref, process, Pid, {done, R}} -> R;
            {'DOWN', Ref, process, Pid, Other} -> error({in_proc, Other})
    end.

%%% Bad arguments: badarg, never a crash ---------------------------------------------------

new_rejects_bad_segment_counts_test() ->
    ?assertError(badarg, shoal_nif:new(17)),
    ?assertError(badarg, shoal_nif:new(-1)),
    ?assertError(badarg, shoal_nif:new(foo)),
    ?assert(is_reference(shoal_nif:new(0))),
    ?assert(is_reference(shoal_nif:new(16))).

a_meter_is_not_a_table_and_a_table_is_not_a_meter_test() ->
    T = shoal_nif:new(2),
    M = shoal_nif:meter_new(),
    ?assertError(badarg, shoal_nif:whereis(M, k)),
    ?assertError(badarg, shoal_nif:count(M)),
    ?assertError(badarg, shoal_nif:claim(M, k, nowait)),
    ?assertError(badarg, shoal_nif:meter_add(T, 1)),
    ?assertError(badarg, shoal_nif:meter_sum(T, 1)),
    ?assertError(badarg, shoal_nif:whereis(make_ref(), k)),
    ?assertError(badarg, shoal_nif:whereis(not_a_table, k)),
    ?assertError(badarg, shoal_nif:count(42)).

a_deleted_table_raises_badarg_everywhere_test() ->
    T = shoal_nif:new(2),
    W = sleeper(),
    {ok, _} = shoal_nif:register(T, k, W),
    ok = shoal_nif:delete(T),
    Calls = [fun() -> shoal_nif:whereis(T, k) end,
             fun() -> shoal_nif:lookup(T, k) end,
             fun() -> shoal_nif:route(T, k, hello) end,
             fun() -> shoal_nif:claim(T, k, make_ref()) end,
             fun() -> shoal_nif:register(T, k, W) end,
             fun() -> shoal_nif:unregister(T, k, W) end,
             fun() -> shoal_nif:release_claim(T, k) end,
             fun() -> shoal_nif:put_remote(T, k, n@h, remote_pid(n@h, 1), 1) end,
             fun() -> shoal_nif:delete_remote(T, k, remote_pid(n@h, 1)) end,
             fun() -> shoal_nif:count(T) end,
             fun() -> shoal_nif:info(T) end,
             fun() -> shoal_nif:fold(T, dump, []) end,
             fun() -> shoal_nif:delete(T) end],
    [?assertError(badarg, F()) || F <- Calls],
    %% The worker the deleted table pointed to is untouched, and its death is harmless.
    ?assert(is_process_alive(W)),
    kill_and_wait(W).

a_fun_is_never_a_key_test() ->
    T = shoal_nif:new(2),
    F = fun() -> ok end,
    [?assertError(badarg, Op(K))
     || K <- [F, {a, F}, [1, 2, F], #{k => F}, #{F => 1}, [a | F]],
        Op <- [fun(Key) -> shoal_nif:whereis(T, Key) end,
               fun(Key) -> shoal_nif:claim(T, Key, nowait) end,
               fun(Key) -> shoal_nif:register(T, Key, self()) end,
               fun shoal_nif:canonical/1,
               fun shoal_nif:hash/1]],
    ?assertEqual(0, maps:get(entries, shoal_nif:info(T))).

a_key_over_64_kib_is_badarg_and_64_kib_is_accepted_test() ->
    T = shoal_nif:new(2),
    %% 131, BINARY_EXT tag, u32 length: 6 bytes of overhead.
    Fits = binary:copy(<<"x">>, 64 * 1024 - 6),
    TooBig = binary:copy(<<"x">>, 64 * 1024 - 5),
    ?assertEqual(64 * 1024, byte_size(shoal_nif:canonical(Fits))),
    ?assertEqual(undefined, shoal_nif:whereis(T, Fits)),
    ?assertError(badarg, shoal_nif:canonical(TooBig)),
    ?assertError(badarg, shoal_nif:whereis(T, TooBig)),
    ?assertError(badarg, shoal_nif:claim(T, TooBig, nowait)),
    ?assertError(badarg, shoal_nif:whereis(T, {a, binary:copy(<<"x">>, 1 bsl 20)})),
    %% Big through the slow path too: a map and a bignum-laden list.
    ?assertError(badarg, shoal_nif:hash(maps:from_list([{I, I} || I <- lists:seq(1, 20000)]))),
    ?assertError(badarg, shoal_nif:hash([1 bsl 200 || _ <- lists:seq(1, 3000)])).

nesting_deeper_than_64_is_badarg_test() ->
    Tuple = fun(X) -> {X} end,
    List = fun(X) -> [X] end,
    Map = fun(X) -> #{k => X} end,
    [begin
         ?assert(is_binary(shoal_nif:canonical(nest(64, leaf, W)))),
         ?assertError(badarg, shoal_nif:canonical(nest(65, leaf, W))),
         ?assertError(badarg, shoal_nif:hash(nest(1000, leaf, W)))
     end || W <- [Tuple, List, Map]].

nesting_counts_across_maps_and_tuples_test() ->
    %% 40 tuples around 40 maps is 80 levels: the limit applies to the whole key, so the
    %% NIF must agree with keyhash_normalize (the C node) on what it accepts.
    Deep = nest(40, nest(40, leaf, fun(X) -> #{k => X} end), fun(X) -> {X} end),
    ?assertError(badarg, shoal_nif:canonical(Deep)).

a_huge_improper_list_is_badarg_and_a_small_one_is_a_key_test() ->
    T = shoal_nif:new(2),
    ?assertError(badarg, shoal_nif:whereis(T, improper(1000000, tail))),
    ?assertError(badarg, shoal_nif:whereis(T, lists:seq(1, 1000000))),
    Small = improper(10, tail),
    ?assertEqual(Small, binary_to_term(shoal_nif:canonical(Small))),
    {ok, _} = shoal_nif:register(T, Small, self()),
    ?assertEqual(self(), shoal_nif:whereis(T, improper(10, tail))).

a_non_pid_where_a_pid_is_expected_is_badarg_test() ->
    T = shoal_nif:new(2),
    [?assertError(badarg, shoal_nif:register(T, k, NotPid))
     || NotPid <- [foo, 1, "pid", make_ref(), {self()}]],
    [?assertError(badarg, shoal_nif:unregister(T, k, NotPid)) || NotPid <- [foo, 1]],
    ?assertError(badarg, shoal_nif:delete_remote(T, k, foo)),
    ?assertError(badarg, shoal_nif:put_remote(T, k, n@h, not_a_pid, 1)).

a_remote_pid_cannot_be_registered_or_unregistered_test() ->
    T = shoal_nif:new(2),
    R = remote_pid('elsewhere@host', 7),
    ?assertNotEqual(node(), node(R)),
    ?assertError(badarg, shoal_nif:register(T, k, R)),
    ?assertError(badarg, shoal_nif:unregister(T, k, R)),
    ?assertEqual(undefined, shoal_nif:whereis(T, k)).

atoms_and_integers_are_not_claim_refs_test() ->
    T = shoal_nif:new(2),
    [?assertError(badarg, shoal_nif:claim(T, k, Bad)) || Bad <- [foo, 1, self(), {ref}, "r"]],
    ?assertEqual(claimed, shoal_nif:claim(T, k, nowait)).

bad_remote_and_fold_arguments_are_badarg_test() ->
    T = shoal_nif:new(2),
    R = remote_pid('elsewhere@host', 7),
    ?assertError(badarg, shoal_nif:put_remote(T, k, "node", R, 1)),
    ?assertError(badarg, shoal_nif:put_remote(T, k, n@h, R, -1)),
    ?assertError(badarg, shoal_nif:put_remote(T, k, n@h, R, inc)),
    ?assertError(badarg, shoal_nif:fold(T, nonsense, [])),
    ?assertError(badarg, shoal_nif:fold(T, purge_node, "node")),
    ?assertError(badarg, shoal_nif:fold(T, keys_on, 1)).

bad_meter_arguments_are_badarg_test() ->
    M = shoal_nif:meter_new(),
    ?assertError(badarg, shoal_nif:meter_add(M, -1)),
    ?assertError(badarg, shoal_nif:meter_add(M, one)),
    ?assertError(badarg, shoal_nif:meter_sum(M, 0)),
    ?assertError(badarg, shoal_nif:meter_sum(M, 61)),
    ok = shoal_nif:meter_add(M, 3),
    ok = shoal_nif:meter_add(M, 4),
    ?assertEqual(7, shoal_nif:meter_sum(M, 60)),
    ?assertEqual(7, shoal_nif:meter_sum(M, 1)).

%%% Entries and owner monitors -------------------------------------------------------------

register_whereis_lookup_route_test() ->
    T = shoal_nif:new(2),
    Self = self(),
    ?assertEqual(undefined, shoal_nif:route(T, k, hello)),
    {ok, Inc} = shoal_nif:register(T, k, Self),
    ?assert(Inc > 0),
    ?assertEqual(Self, shoal_nif:whereis(T, k)),
    ?assertEqual({active, Self, Inc}, shoal_nif:lookup(T, k)),
    ?assertEqual(ok, shoal_nif:route(T, k, hello)),
    ?assertEqual(hello, receive hello -> hello after 1000 -> none end),
    ?assertEqual({ok, 0}, shoal_nif:register(T, k, Self)),
    ?assertEqual(1, shoal_nif:count(T)),
    ?assertEqual(not_found, shoal_nif:unregister(T, k, sleeper())),
    ?assertEqual(ok, shoal_nif:unregister(T, k, Self)),
    ?assertEqual(undefined, shoal_nif:whereis(T, k)),
    ?assertEqual(0, shoal_nif:count(T)).

a_dead_owner_leaves_no_entry_behind_test() ->
    T = shoal_nif:new(4),
    Ws = [sleeper() || _ <- lists:seq(1, 100)],
    [{ok, _} = shoal_nif:register(T, {w, I}, W) || {I, W} <- lists:zip(lists:seq(1, 100), Ws)],
    ?assertEqual(100, shoal_nif:count(T)),
    [kill_and_wait(W) || W <- Ws],
    %% No Erlang process cleans up: the NIF's own monitors do.
    ?assert(wait_until(fun() -> shoal_nif:count(T) =:= 0 end)),
    ?assertEqual(#{entries => 0, workers => 0, local_workers => 0},
                 maps:with([entries, workers, local_workers], shoal_nif:info(T))),
    [?assertEqual(undefined, shoal_nif:whereis(T, {w, I})) || I <- lists:seq(1, 100)].

registering_a_dead_process_is_noproc_test() ->
    T = shoal_nif:new(2),
    W = sleeper(),
    kill_and_wait(W),
    ?assertEqual({error, noproc}, shoal_nif:register(T, k, W)),
    ?assertEqual(undefined, shoal_nif:lookup(T, k)),
    ?assertEqual(0, maps:get(entries, shoal_nif:info(T))).

a_stale_owner_never_removes_its_successor_test() ->
    T = shoal_nif:new(2),
    Old = sleeper(),
    New = sleeper(),
    {ok, _} = shoal_nif:register(T, k, Old),
    ok = shoal_nif:unregister(T, k, Old),
    {ok, _} = shoal_nif:register(T, k, New),
    kill_and_wait(Old),
    ?assertEqual(not_found, shoal_nif:unregister(T, k, Old)),
    ?assertEqual(New, shoal_nif:whereis(T, k)),
    ?assertEqual(1, shoal_nif:count(T)),
    kill_and_wait(New).

a_taken_key_reports_its_worker_test() ->
    T = shoal_nif:new(2),
    A = sleeper(),
    B = sleeper(),
    {ok, _} = shoal_nif:register(T, k, A),
    ?assertEqual({error, {already_registered, A}}, shoal_nif:register(T, k, B)),
    ?assertMatch({error, {local, A}},
                 shoal_nif:put_remote(T, k, n@h, remote_pid(n@h, 1), 1)),
    ?assertEqual(A, shoal_nif:whereis(T, k)).

claims_are_not_monitored_test() ->
    T = shoal_nif:new(2),
    Claimer = spawn(fun() -> claimed = shoal_nif:claim(T, k, nowait),
                             receive stop -> ok end end),
    ?assert(wait_until(fun() -> shoal_nif:lookup(T, k) =:= {claimed, Claimer} end)),
    kill_and_wait(Claimer),
    %% The claim outlives its claimer: a waiter watches the claimer and clears it.
    Ref = make_ref(),
    ?assertEqual({wait, Claimer}, shoal_nif:claim(T, k, Ref)),
    ?assertEqual({claimed, Claimer}, shoal_nif:lookup(T, k)),
    ?assertEqual(undefined, shoal_nif:whereis(T, k)),
    ?assertEqual(0, shoal_nif:count(T)),
    ?assertEqual(ok, shoal_nif:unregister(T, k, Claimer)),
    ?assertEqual({'$shoal_claim', Ref, retry},
                 receive {'$shoal_claim', Ref, _} = M -> M after 1000 -> timeout end),
    ?assertEqual(claimed, shoal_nif:claim(T, k, make_ref())).

claiming_twice_is_still_claimed_and_leaks_nothing_test() ->
    T = shoal_nif:new(4),
    ?assertEqual(claimed, shoal_nif:claim(T, k, make_ref())),
    ?assertEqual(claimed, shoal_nif:claim(T, k, make_ref())),
    ?assertEqual(1, maps:get(entries, shoal_nif:info(T))),
    %% Entries are resources (binary memory): 100k double claims must not pile up.
    Cycle = fun() ->
                    [begin
                         claimed = shoal_nif:claim(T, {k, I}, nowait),
                         claimed = shoal_nif:claim(T, {k, I}, nowait),
                         ok = shoal_nif:release_claim(T, {k, I})
                     end || I <- lists:seq(1, 100000)],
                    ok
            end,
    ok = in_proc(Cycle),
    erlang:garbage_collect(),
    Before = erlang:memory(binary),
    ok = in_proc(Cycle),
    erlang:garbage_collect(),
    Grown = erlang:memory(binary) - Before,
    ?assert(Grown < 2000000).

release_claim_is_the_claimers_only_test() ->
    T = shoal_nif:new(2),
    claimed = shoal_nif:claim(T, k, nowait),
    ?assertEqual(not_found, in_proc(fun() -> shoal_nif:release_claim(T, k) end)),
    ?assertEqual(ok, shoal_nif:release_claim(T, k)),
    ?assertEqual(not_found, shoal_nif:release_claim(T, k)),
    {ok, _} = shoal_nif:register(T, k, self()),
    %% release_claim never removes a worker.
    ?assertEqual(not_found, shoal_nif:release_claim(T, k)),
    ?assertEqual(self(), shoal_nif:whereis(T, k)).

a_claim_on_a_live_key_returns_its_worker_test() ->
    T = shoal_nif:new(2),
    W = sleeper(),
    {ok, _} = shoal_nif:register(T, k, W),
    ?assertEqual({ok, W}, shoal_nif:claim(T, k, make_ref())),
    ?assertEqual({ok, W}, shoal_nif:claim(T, k, nowait)),
    R = remote_pid(n@h, 3),
    ok_or_new(shoal_nif:put_remote(T, r, n@h, R, 9)),
    ?assertEqual({ok, R}, shoal_nif:claim(T, r, make_ref())).

ok_or_new(ok) -> ok;
ok_or_new(new) -> ok;
ok_or_new(replaced) -> ok;
ok_or_new(Other) -> error({unexpected, Other}).

%%% Claim races ----------------------------------------------------------------------------

race(T, Key, N) ->
    Parent = self(),
    Go = make_ref(),
    Pids = [spawn_link(fun() ->
                               receive Go -> ok end,
                               Ref = make_ref(),
                               R = shoal_nif:claim(T, Key, Ref),
                               Parent ! {claim, self(), R},
                               case R of
                                   claimed -> receive {finish, F} -> F() end;
                                   {wait, _} ->
                                       receive {'$shoal_claim', Ref, Res} ->
                                               Parent ! {told, self(), Res}
                                       end
                               end
                       end) || _ <- lists:seq(1, N)],
    [P ! Go || P <- Pids],
    Results = [receive {claim, P, R} -> {P, R} end || P <- Pids],
    Results.

exactly_one_of_many_racers_claims_and_the_others_get_the_worker_test() ->
    T = shoal_nif:new(4),
    Results = race(T, hot, 200),
    [Winner] = [P || {P, claimed} <- Results],
    Waiters = [P || {P, {wait, C}} <- Results, C =:= Winner],
    ?assertEqual(199, length(Waiters)),
    W = sleeper(),
    Winner ! {finish, fun() -> {ok, _} = shoal_nif:register(T, hot, W) end},
    Told = [receive {told, P, Res} -> Res after ?DEADLINE_MS -> timeout end || P <- Waiters],
    ?assertEqual([{ok, W}], lists:usort(Told)),
    ?assertEqual(W, shoal_nif:whereis(T, hot)),
    ?assertEqual(1, shoal_nif:count(T)).

a_released_claim_tells_every_waiter_to_retry_test() ->
    T = shoal_nif:new(4),
    Results = race(T, hot, 100),
    [Winner] = [P || {P, claimed} <- Results],
    Waiters = [P || {P, {wait, _}} <- Results],
    Winner ! {finish, fun() -> ok = shoal_nif:release_claim(T, hot) end},
    Told = [receive {told, P, Res} -> Res after ?DEADLINE_MS -> timeout end || P <- Waiters],
    ?assertEqual([retry], lists:usort(Told)),
    ?assertEqual(undefined, shoal_nif:lookup(T, hot)).

another_process_may_register_over_a_claim_test() ->
    T = shoal_nif:new(2),
    Ref = make_ref(),
    Claimer = spawn(fun() -> claimed = shoal_nif:claim(T, k, nowait), receive stop -> ok end end),
    ?assert(wait_until(fun() -> shoal_nif:lookup(T, k) =:= {claimed, Claimer} end)),
    {wait, Claimer} = shoal_nif:claim(T, k, Ref),
    W = sleeper(),
    {ok, _} = shoal_nif:register(T, k, W),
    ?assertEqual({'$shoal_claim', Ref, {ok, W}},
                 receive {'$shoal_claim', Ref, _} = M -> M after 1000 -> timeout end),
    %% A nowait racer is told nothing.
    Claimer ! stop.

%%% Yielding folds -------------------------------------------------------------------------

dump_of_200k_entries_test_() ->
    {timeout, 60, fun dump_lists_every_worker_of_a_big_table/0}.

dump_lists_every_worker_of_a_big_table() ->
    T = shoal_nif:new(8),
    W = sleeper(),
    N = 200000,
    [{ok, _} = shoal_nif:register(T, {k, I}, W) || I <- lists:seq(1, N)],
    claimed = shoal_nif:claim(T, a_claim, nowait),
    Dump = shoal_nif:fold(T, dump, []),
    ?assertEqual(N, length(Dump)),
    ?assertEqual(lists:seq(1, N), lists:sort([I || {{k, I}, P} <- Dump, P =:= W])),
    ?assertEqual(N, length(shoal_nif:fold(T, keys_on, local))),
    kill_and_wait(W),
    ?assert(wait_until(fun() -> shoal_nif:count(T) =:= 0 end)),
    ?assertEqual([], shoal_nif:fold(T, dump, [])).

purge_node_removes_only_that_nodes_replicas_test_() ->
    {timeout, 60, fun() ->
        T = shoal_nif:new(8),
        Local = sleeper(),
        [ok_or_new(shoal_nif:put_remote(T, {gone, I}, 'gone@host', remote_pid('gone@host', I), I))
         || I <- lists:seq(1, 30000)],
        [ok_or_new(shoal_nif:put_remote(T, {kept, I}, 'kept@host', remote_pid('kept@host', I), I))
         || I <- lists:seq(1, 1000)],
        [{ok, _} = shoal_nif:register(T, {local, I}, Local) || I <- lists:seq(1, 500)],
        ?assertEqual(31500, shoal_nif:count(T)),
        ?assertEqual(1000, length(shoal_nif:fold(T, keys_on, 'kept@host'))),
        ?assertEqual(30000, shoal_nif:fold(T, purge_node, 'gone@host')),
        ?assertEqual(1500, shoal_nif:count(T)),
        ?assertEqual(1500, maps:get(entries, shoal_nif:info(T))),
        ?assertEqual([], shoal_nif:fold(T, keys_on, 'gone@host')),
        ?assertEqual(0, shoal_nif:fold(T, purge_node, 'gone@host')),
        ?assertEqual(lists:sort([{local, I} || I <- lists:seq(1, 500)]),
                     lists:sort(shoal_nif:fold(T, keys_on, local))),
        ?assertEqual(remote_pid('kept@host', 5), shoal_nif:whereis(T, {kept, 5})),
        ?assertEqual(undefined, shoal_nif:whereis(T, {gone, 5})),
        kill_and_wait(Local)
    end}.

remote_replicas_replace_and_delete_by_pid_test() ->
    T = shoal_nif:new(2),
    R1 = remote_pid(n@h, 1),
    R2 = remote_pid(n@h, 2),
    ok_or_new(shoal_nif:put_remote(T, k, n@h, R1, 1)),
    ok_or_new(shoal_nif:put_remote(T, k, n@h, R2, 2)),
    ?assertEqual({active, R2, 2}, shoal_nif:lookup(T, k)),
    ?assertEqual({remote, R2}, shoal_nif:route(T, k, msg)),
    ?assertEqual(1, shoal_nif:count(T)),
    ?assertEqual(not_found, shoal_nif:delete_remote(T, k, R1)),
    ?assertEqual(ok, shoal_nif:delete_remote(T, k, R2)),
    ?assertEqual(0, shoal_nif:count(T)),
    ?assertEqual(not_found, shoal_nif:unregister(T, k, self())).

%%% Upgrade --------------------------------------------------------------------------------
%% Each runs in a peer node: a crash there is a test failure, not the end of the run.

upgrade_in_place_keeps_tables_working_test_() ->
    {timeout, 60, fun() -> ?assertEqual(ok, in_peer(upgrade_same_path, [ebin_dir()])) end}.

upgrade_from_another_path_keeps_tables_working_test_() ->
    {timeout, 60, fun() ->
        Dir = filename:join(["/tmp", "shoal_nif_upgrade_" ++ os:getpid()]),
        ?assertEqual(ok, in_peer(upgrade_other_path, [ebin_dir(), Dir]))
    end}.

ebin_dir() -> filename:dirname(filename:absname(code:which(shoal_nif))).

in_peer(Fun, Args) ->
    Root = code:root_dir(),
    Paths = [filename:absname(P) || P <- code:get_path(), not lists:prefix(Root, P)],
    {ok, Peer, _} = peer:start_link(#{connection => standard_io, args => ["-pa" | Paths]}),
    try peer:call(Peer, ?MODULE, Fun, Args, 30000)
    catch C:R:St -> {peer_failed, C, R, St}
    after catch peer:stop(Peer)
    end.

%% The module source, rebuilt with another vsn and, optionally, another library path.
upgraded_module(Ebin, SoDir) ->
    SrcFile = case proplists:get_value(source, shoal_nif:module_info(compile)) of
                  undefined -> filename:join([filename:dirname(Ebin), "erl", "shoal_nif.erl"]);
                  S -> S
              end,
    Opts = [binary, return_errors],
    {ok, Text} = file:read_file(SrcFile),
    Vsn = re:replace(Text, "-module\\(shoal_nif\\)\\.", "-module(shoal_nif).\n-vsn(upgraded).",
                     [{return, binary}]),
    New = case SoDir of
              same -> Vsn;
              _ -> re:replace(Vsn, "filename:join\\(Dir, \"shoal_nif\"\\)",
                              "\"" ++ SoDir ++ "/shoal_nif\"", [{return, binary}])
          end,
    true = New =/= Vsn orelse SoDir =:= same,
    Tmp = filename:join(["/tmp", "shoal_nif_upgraded_" ++ os:getpid(), "shoal_nif.erl"]),
    ok = filelib:ensure_dir(Tmp),
    ok = file:write_file(Tmp, New),
    {ok, shoal_nif, Bin} = compile:file(Tmp, Opts),
    Bin.

%% A worker registered before the upgrade, killed after the old code is purged.
pinned_worker() -> receive stop -> ok end.

upgrade_scenario(Bin) ->
    1 = shoal_nif:load_info(),
    T = shoal_nif:new(4),
    W = spawn(fun pinned_worker/0),
    Gone = spawn(fun pinned_worker/0),
    {ok, _} = shoal_nif:register(T, w, W),
    {ok, _} = shoal_nif:register(T, gone, Gone),
    claimed = shoal_nif:claim(T, c, nowait),
    ok_or_new(shoal_nif:put_remote(T, r, n@h, remote_pid(n@h, 1), 1)),
    {module, shoal_nif} = code:load_binary(shoal_nif, "shoal_nif_upgraded.beam", Bin),
    [upgraded] = proplists:get_value(vsn, shoal_nif:module_info(attributes)),
    Loaded = shoal_nif:load_info(),
    %% Old and new code live side by side until the old one is purged.
    true = erlang:check_old_code(shoal_nif),
    W = shoal_nif:whereis(T, w),
    false = code:purge(shoal_nif),
    false = erlang:check_old_code(shoal_nif),
    After = shoal_nif:load_info(),
    %% Every path through the old table after the old library is gone:
    W = shoal_nif:whereis(T, w),
    ok = shoal_nif:unregister(T, w, W),
    ok = shoal_nif:delete_remote(T, r, remote_pid(n@h, 1)),
    ok = shoal_nif:release_claim(T, c),
    Ref = erlang:monitor(process, Gone),
    exit(Gone, kill),
    receive {'DOWN', Ref, _, _, _} -> ok end,
    true = wait_until(fun() -> shoal_nif:whereis(T, gone) =:= undefined end),
    0 = shoal_nif:count(T),
    T2 = shoal_nif:new(2),
    {ok, _} = shoal_nif:register(T2, w, W),
    ok = shoal_nif:delete(T),
    {Loaded, After}.

upgrade_same_path(Ebin) ->
    case upgrade_scenario(upgraded_module(Ebin, same)) of
        {2, 1} -> ok;
        Other -> {load_info, Other}
    end.

upgrade_other_path(Ebin, Dir) ->
    ok = filelib:ensure_dir(filename:join(Dir, "x")),
    Priv = case code:priv_dir(shoal) of
               {error, _} -> filename:join(filename:dirname(Ebin), "priv");
               P -> P
           end,
    {ok, _} = file:copy(filename:join(Priv, "shoal_nif.so"),
                        filename:join(Dir, "shoal_nif.so")),
    case upgrade_scenario(upgraded_module(Ebin, Dir)) of
        {2, 1} -> ok;
        Other -> {load_info, Other}
    end.
