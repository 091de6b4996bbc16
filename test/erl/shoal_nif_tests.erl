%% @doc EUnit for the NIF set (shoal_nif): bad arguments, the entry states and their
%% transitions (claims, local workers, replicas, tombs), versions and the clock, listener
%% and waiter messages, owner monitors, claim races, yielding walks and library upgrade.
%% Each test is one documented behaviour.
-module(shoal_nif_tests).

-include_lib("eunit/include/eunit.hrl").

-export([upgrade_same_path/1, upgrade_other_path/2, pinned_worker/0, in_peer/2, ebin_dir/0,
         fold_yields_on_one_scheduler/0, clock_follows_wall_time/0]).
-export([remote_pid/2, sleeper/0, kill_and_wait/1, wait_until/1]).

-define(DEADLINE_MS, 5000).

%%% Helpers --------------------------------------------------------------------------------

%% A pid of a node this VM never heard of: enif_is_pid accepts it, enif_get_local_pid not.
remote_pid(Node, Id) ->
    N = atom_to_binary(Node, utf8),
    binary_to_term(<<131, 88, 118, (byte_size(N)):16, N/binary, Id:32, 0:32, 1:32>>).

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

%% Register W for Key the way a spawn does: claim, then register over the claim.
reg(T, Key, W) ->
    claimed = shoal_nif:claim(T, Key, nowait),
    shoal_nif:register(T, Key, W, claim).

%% Register W for Key over nothing in particular (a takeover with no predecessor).
reg_over(T, Key, W) -> shoal_nif:register(T, Key, W, {over, 0, none}).

%% Make the calling process T's listener, with no message of an earlier test waiting.
listen(T) ->
    ok = shoal_nif:set_listener(T, self()),
    flush().

flush() ->
    receive _ -> flush() after 0 -> ok end.

msg({'$shoal_up', K, P, V}) -> {up, K, P, V};
msg({'$shoal_down', K, P, V}) -> {down, K, P, V};
msg(Other) -> Other.

%% The next listener message, or timeout.
next_event() ->
    receive
        {'$shoal_up', _, _, _} = M -> msg(M);
        {'$shoal_down', _, _, _} = M -> msg(M);
        {'$shoal_replaced', _, _, _, _, _, _} = M -> M
    after 1000 -> timeout
    end.

no_event() ->
    receive
        {'$shoal_up', _, _, _} = M -> M;
        {'$shoal_down', _, _, _} = M -> M;
        {'$shoal_replaced', _, _, _, _, _, _} = M -> M
    after 50 -> none
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
    {ok, _} = reg(T, k, W),
    R = remote_pid(n@h, 1),
    stored = shoal_nif:put_remote(T, r, n@h, R, 1, 0),
    ok = shoal_nif:delete(T),
    Calls = [fun() -> shoal_nif:whereis(T, k) end,
             fun() -> shoal_nif:lookup(T, k) end,
             fun() -> shoal_nif:route(T, k, hello) end,
             fun() -> shoal_nif:claim(T, k, make_ref()) end,
             fun() -> shoal_nif:release_claim(T, k, retry) end,
             fun() -> shoal_nif:register(T, k, W, claim) end,
             fun() -> shoal_nif:register(T, k, W, {over, 0, none}) end,
             fun() -> shoal_nif:unregister(T, k, W) end,
             fun() -> shoal_nif:set_moving(T, k, W, true) end,
             fun() -> shoal_nif:put_remote(T, k, n@h, R, 1, 0) end,
             fun() -> shoal_nif:put_successor(T, k, n@h, R, 1, 0) end,
             fun() -> shoal_nif:remove_remote(T, r, n@h, 1) end,
             fun() -> shoal_nif:set_listener(T, self()) end,
             fun() -> shoal_nif:count(T) end,
             fun() -> shoal_nif:count(T, local) end,
             fun() -> shoal_nif:count(T, n@h) end,
             fun() -> shoal_nif:info(T) end,
             fun() -> shoal_nif:fold(T, dump, []) end,
             fun() -> shoal_nif:fold(T, purge_node, n@h) end,
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
               fun(Key) -> shoal_nif:register(T, Key, self(), {over, 0, none}) end,
               fun(Key) -> shoal_nif:put_remote(T, Key, n@h, remote_pid(n@h, 1), 1, 0) end,
               fun(Key) -> shoal_nif:remove_remote(T, Key, n@h, 1) end,
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
    ?assertEqual(stored, shoal_nif:put_remote(T, Fits, n@h, remote_pid(n@h, 1), 1, 0)),
    ?assertEqual(remote_pid(n@h, 1), shoal_nif:whereis(T, Fits)),
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
    {ok, _} = reg(T, Small, self()),
    ?assertEqual(self(), shoal_nif:whereis(T, improper(10, tail))).

a_non_pid_where_a_pid_is_expected_is_badarg_test() ->
    T = shoal_nif:new(2),
    [?assertError(badarg, shoal_nif:register(T, k, NotPid, {over, 0, none}))
     || NotPid <- [foo, 1, "pid", make_ref(), {self()}]],
    [?assertError(badarg, shoal_nif:unregister(T, k, NotPid)) || NotPid <- [foo, 1]],
    ?assertError(badarg, shoal_nif:set_moving(T, k, foo, true)),
    ?assertError(badarg, shoal_nif:remove_remote(T, k, n@h, foo)),
    ?assertError(badarg, shoal_nif:put_remote(T, k, n@h, not_a_pid, 1, 0)),
    ?assertError(badarg, shoal_nif:set_listener(T, foo)),
    ?assertError(badarg, shoal_nif:set_listener(T, remote_pid(n@h, 1))).

a_remote_pid_cannot_be_registered_or_unregistered_test() ->
    T = shoal_nif:new(2),
    R = remote_pid('elsewhere@host', 7),
    ?assertNotEqual(node(), node(R)),
    ?assertError(badarg, shoal_nif:register(T, k, R, {over, 0, none})),
    ?assertError(badarg, shoal_nif:unregister(T, k, R)),
    ?assertError(badarg, shoal_nif:set_moving(T, k, R, true)),
    ?assertEqual(undefined, shoal_nif:whereis(T, k)).

atoms_and_integers_are_not_claim_refs_test() ->
    T = shoal_nif:new(2),
    [?assertError(badarg, shoal_nif:claim(T, k, Bad)) || Bad <- [foo, 1, self(), {ref}, "r"]],
    ?assertEqual(claimed, shoal_nif:claim(T, k, nowait)).

bad_modes_results_and_flags_are_badarg_test() ->
    T = shoal_nif:new(2),
    claimed = shoal_nif:claim(T, k, nowait),
    [?assertError(badarg, shoal_nif:register(T, k, self(), M))
     || M <- [over, {over, -1, none}, {over, 1 bsl 64, none}, {over, 1, "node"},
              {over, 1}, {claim}, true, undefined]],
    [?assertError(badarg, shoal_nif:release_claim(T, k, R))
     || R <- [ok, error, {error}, {error, a, b}, {ok, self()}, "retry"]],
    ?assertEqual({claimed, self()}, shoal_nif:lookup(T, k)),
    ?assertError(badarg, shoal_nif:set_moving(T, k, self(), yes)),
    ?assertEqual(ok, shoal_nif:release_claim(T, k, {error, {any, "term"}})).

bad_replica_arguments_are_badarg_test() ->
    T = shoal_nif:new(2),
    R = remote_pid('elsewhere@host', 7),
    ?assertError(badarg, shoal_nif:put_remote(T, k, "node", R, 1, 0)),
    ?assertError(badarg, shoal_nif:put_remote(T, k, n@h, R, -1, 0)),
    ?assertError(badarg, shoal_nif:put_remote(T, k, n@h, R, 1 bsl 64, 0)),
    ?assertError(badarg, shoal_nif:put_remote(T, k, n@h, R, vsn, 0)),
    ?assertError(badarg, shoal_nif:put_remote(T, k, n@h, R, 1, -1)),
    ?assertError(badarg, shoal_nif:put_remote(T, k, n@h, R, 1, 1 bsl 32)),
    ?assertError(badarg, shoal_nif:remove_remote(T, k, 1, 1)),
    ?assertError(badarg, shoal_nif:remove_remote(T, k, n@h, -5)),
    [?assertError(badarg, shoal_nif:put_synced(T, k, n@h, R, 1, 0, Before))
     || Before <- [0, -1, 1 bsl 64, t0, undefined]],
    ?assertError(badarg, shoal_nif:count(T, "node")),
    ?assertEqual(stored, shoal_nif:put_remote(T, k, n@h, R, 1, (1 bsl 32) - 1)),
    ?assertEqual(#{entries => 1, nodes => 1},
                 maps:with([entries, nodes], shoal_nif:info(T))).

%% A sync's entry passes a tomb of another node from before the sync's walk began (the
%% partition twin that died), not its own node's tomb nor a newer one.
put_synced_passes_older_tombs_of_other_nodes_test() ->
    T = shoal_nif:new(2),
    B = remote_pid('b@h', 7),
    tombstoned = shoal_nif:remove_remote(T, k, 'e@h', 70),
    ?assertEqual(stale, shoal_nif:put_remote(T, k, 'b@h', B, 60, 0)),
    ?assertEqual(stale, shoal_nif:put_synced(T, k, 'b@h', B, 60, 3, 70)),
    ?assertEqual(stored, shoal_nif:put_synced(T, k, 'b@h', B, 60, 3, 80)),
    ?assertEqual({remote, 'b@h', B, 60}, shoal_nif:lookup(T, k)),
    ?assertEqual(B, shoal_nif:whereis(T, k)),
    tombstoned = shoal_nif:remove_remote(T, j, 'b@h', 70),
    ?assertEqual(stale, shoal_nif:put_synced(T, j, 'b@h', B, 60, 3, 80)),
    ?assertEqual({tomb, 70}, shoal_nif:lookup(T, j)).

bad_fold_arguments_are_badarg_test() ->
    T = shoal_nif:new(2),
    [?assertError(badarg, shoal_nif:fold(T, Op, Arg))
     || {Op, Arg} <- [{nonsense, []}, {purge_node, "node"}, {keys_on, 1},
                      {sweep_node, n@h}, {sweep_node, {n@h, -1, 0}}, {sweep_node, {n@h, 1}},
                      {sweep_node, {"n", 1, 2}}, {sweep_node, {n@h, 1, -2}},
                      {sweep_tombs, -1}, {sweep_tombs, old}]],
    ?assertEqual([], shoal_nif:fold(T, owned, ignored)),
    ?assertEqual(0, shoal_nif:fold(T, sweep_node, {n@h, 1, 2})).

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

%%% The clock -----------------------------------------------------------------------------

the_clock_increases_strictly_and_is_at_least_wall_time_test_() ->
    %% In a fresh VM: other tests here push this VM's clock ahead of wall time.
    {timeout, 60, fun() -> ?assertEqual(ok, in_peer(clock_follows_wall_time, [])) end}.

clock_follows_wall_time() ->
    Before = erlang:system_time(microsecond),
    Vs = [shoal_nif:hlc() || _ <- lists:seq(1, 10000)],
    After = erlang:system_time(microsecond),
    %% Handing out 10000 values in less than 10000 µs runs ahead of wall time, by at most
    %% the number handed out.
    case {hd(Vs) >= Before, Vs =:= lists:usort(Vs), lists:last(Vs) =< After + 10000} of
        {true, true, true} -> ok;
        Other -> Other
    end.

every_version_a_table_is_given_is_observed_by_the_clock_test() ->
    T = shoal_nif:new(2),
    Far = shoal_nif:hlc() + 1000000000,
    stored = shoal_nif:put_remote(T, a, n@h, remote_pid(n@h, 1), Far, 0),
    ?assert(shoal_nif:hlc() > Far),
    Farther = Far + 1000000000,
    tombstoned = shoal_nif:remove_remote(T, b, n@h, Farther),
    ?assert(shoal_nif:hlc() > Farther),
    Farthest = Farther + 1000000000,
    {ok, V} = shoal_nif:register(T, c, self(), {over, Farthest, none}),
    ?assert(V > Farthest),
    ?assert(shoal_nif:hlc() > V),
    %% A stale put is observed too: the clock never hands out a version a peer has used.
    Stale = Farthest + 1000000000,
    stored = shoal_nif:put_remote(T, d, n@h, remote_pid(n@h, 3), Stale + 1, 0),
    stale = shoal_nif:put_remote(T, d, n@h, remote_pid(n@h, 4), Stale, 0),
    ?assert(shoal_nif:hlc() > Stale + 1).

%%% Local workers, claims, owner monitors --------------------------------------------------

register_whereis_lookup_route_test() ->
    T = shoal_nif:new(2),
    listen(T),
    Self = self(),
    ?assertEqual(undefined, shoal_nif:route(T, k, hello)),
    Before = shoal_nif:hlc(),
    {ok, Vsn} = reg(T, k, Self),
    ?assert(Vsn > Before andalso Vsn < shoal_nif:hlc()),
    ?assertEqual({up, k, Self, Vsn}, next_event()),
    ?assertEqual(Self, shoal_nif:whereis(T, k)),
    ?assertEqual({local, Self, Vsn, false}, shoal_nif:lookup(T, k)),
    ?assertEqual(ok, shoal_nif:route(T, k, hello)),
    ?assertEqual(hello, receive hello -> hello after 1000 -> none end),
    ?assertEqual({ok, Self}, shoal_nif:claim(T, k, nowait)),
    ?assertEqual(1, shoal_nif:count(T)),
    ?assertEqual(1, shoal_nif:count(T, local)),
    ?assertEqual(not_found, shoal_nif:unregister(T, k, sleeper())),
    ?assertEqual(ok, shoal_nif:unregister(T, k, Self)),
    ?assertEqual({down, k, Self, Vsn}, next_event()),
    ?assertEqual(undefined, shoal_nif:whereis(T, k)),
    ?assertEqual(undefined, shoal_nif:lookup(T, k)),
    ?assertEqual(0, shoal_nif:count(T)),
    ok = shoal_nif:set_listener(T, undefined),
    {ok, _} = reg(T, k2, Self),
    ?assertEqual(none, no_event()).

register_in_claim_mode_needs_the_callers_claim_test() ->
    T = shoal_nif:new(2),
    W = sleeper(),
    ?assertEqual({error, not_claimed}, shoal_nif:register(T, k, W, claim)),
    Claimer = spawn(fun() -> claimed = shoal_nif:claim(T, k, nowait), receive stop -> ok end end),
    ?assert(wait_until(fun() -> shoal_nif:lookup(T, k) =:= {claimed, Claimer} end)),
    ?assertEqual({error, {claimed, Claimer}}, shoal_nif:register(T, k, W, claim)),
    ?assertEqual({error, {claimed, Claimer}}, shoal_nif:register(T, k, W, {over, 0, none})),
    %% The claimer registers anyone as the worker.
    Claimer2 = spawn(fun() ->
                             claimed = shoal_nif:claim(T, k2, nowait),
                             exit({done, shoal_nif:register(T, k2, W, claim)})
                     end),
    Ref = erlang:monitor(process, Claimer2),
    {ok, V2} = receive {'DOWN', Ref, _, _, {done, Res}} -> Res end,
    ?assertEqual({local, W, V2, false}, shoal_nif:lookup(T, k2)),
    ?assertEqual({error, {already_registered, W}}, reg_over(T, k2, sleeper())),
    ?assertEqual({error, {already_registered, W}},
                 in_proc(fun() -> shoal_nif:register(T, k2, W, claim) end)),
    R = remote_pid(n@h, 1),
    stored = shoal_nif:put_remote(T, r, n@h, R, 5, 0),
    ?assertEqual({error, {already_registered, R}}, shoal_nif:register(T, r, W, claim)),
    ?assertEqual({error, not_claimed}, shoal_nif:register(T, absent, W, claim)),
    kill_and_wait(W),
    Claimer ! stop.

a_dead_owner_leaves_no_entry_behind_test() ->
    T = shoal_nif:new(4),
    listen(T),
    Ws = [sleeper() || _ <- lists:seq(1, 100)],
    Vs = [begin {ok, V} = reg_over(T, {w, I}, W), V end
          || {I, W} <- lists:zip(lists:seq(1, 100), Ws)],
    ?assertEqual(100, shoal_nif:count(T)),
    [{up, _, _, _} = next_event() || _ <- Ws],
    [kill_and_wait(W) || W <- Ws],
    %% No Erlang process cleans up: the NIF's own monitors do, and tell the listener.
    ?assert(wait_until(fun() -> shoal_nif:count(T) =:= 0 end)),
    Downs = [next_event() || _ <- Ws],
    ?assertEqual(lists:sort([{down, {w, I}, W, V}
                             || {I, W, V} <- lists:zip3(lists:seq(1, 100), Ws, Vs)]),
                 lists:sort(Downs)),
    ?assertEqual(#{entries => 0, workers => 0, local_workers => 0},
                 maps:with([entries, workers, local_workers], shoal_nif:info(T))),
    [?assertEqual(undefined, shoal_nif:whereis(T, {w, I})) || I <- lists:seq(1, 100)].

registering_a_dead_process_is_noproc_test() ->
    T = shoal_nif:new(2),
    W = sleeper(),
    kill_and_wait(W),
    claimed = shoal_nif:claim(T, k, nowait),
    ?assertEqual({error, noproc}, shoal_nif:register(T, k, W, claim)),
    ?assertEqual({error, noproc}, shoal_nif:register(T, k2, W, {over, 0, none})),
    ?assertEqual({claimed, self()}, shoal_nif:lookup(T, k)),
    ?assertEqual(undefined, shoal_nif:lookup(T, k2)),
    ?assertEqual(1, maps:get(entries, shoal_nif:info(T))).

a_stale_owner_never_removes_its_successor_test() ->
    T = shoal_nif:new(2),
    Old = sleeper(),
    New = sleeper(),
    {ok, _} = reg(T, k, Old),
    ok = shoal_nif:unregister(T, k, Old),
    {ok, _} = reg(T, k, New),
    kill_and_wait(Old),
    ?assertEqual(not_found, shoal_nif:unregister(T, k, Old)),
    ?assertEqual(New, shoal_nif:whereis(T, k)),
    ?assertEqual(1, shoal_nif:count(T)),
    kill_and_wait(New).

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
    ?assertEqual(#{claims => 1, entries => 1}, maps:with([claims, entries], shoal_nif:info(T))),
    ?assertEqual(ok, shoal_nif:unregister(T, k, Claimer)),
    ?assertEqual({'$shoal_claim', Ref, retry},
                 receive {'$shoal_claim', Ref, _} = M -> M after 1000 -> timeout end),
    ?assertEqual(claimed, shoal_nif:claim(T, k, make_ref())).

claiming_twice_is_still_claimed_and_leaks_nothing_test() ->
    T = shoal_nif:new(4),
    ?assertEqual(claimed, shoal_nif:claim(T, k, make_ref())),
    ?assertEqual(claimed, shoal_nif:claim(T, k, make_ref())),
    ?assertEqual(1, maps:get(entries, shoal_nif:info(T))),
    Cycle = fun() ->
                    [begin
                         claimed = shoal_nif:claim(T, {k, I}, nowait),
                         claimed = shoal_nif:claim(T, {k, I}, nowait),
                         ok = shoal_nif:release_claim(T, {k, I}, retry)
                     end || I <- lists:seq(1, 100000)],
                    ok
            end,
    %% Two rounds to warm the allocators up, three to measure: a claim lost per cycle
    %% would be 30 MB (allocator caches move a few). Entries live outside process heaps
    %% (which the test runner's own processes move by megabytes), so those are left out.
    [ok = in_proc(Cycle) || _ <- [1, 2]],
    Before = erlang:memory(total) - erlang:memory(processes),
    [ok = in_proc(Cycle) || _ <- [1, 2, 3]],
    Grown = erlang:memory(total) - erlang:memory(processes) - Before,
    ?assert(Grown < 6000000),
    ?assertEqual(1, maps:get(entries, shoal_nif:info(T))).

release_claim_is_the_claimers_only_and_tells_the_result_test() ->
    T = shoal_nif:new(2),
    claimed = shoal_nif:claim(T, k, nowait),
    ?assertEqual(not_found, in_proc(fun() -> shoal_nif:release_claim(T, k, retry) end)),
    Ref = make_ref(),
    Waiter = spawn(fun() ->
                           {wait, _} = shoal_nif:claim(T, k, Ref),
                           receive M -> exit({got, M}) after 2000 -> exit(nothing) end
                   end),
    WRef = erlang:monitor(process, Waiter),
    ?assert(wait_until(fun() -> process_info(Waiter, current_function) =/= undefined end)),
    timer:sleep(50),
    ?assertEqual(ok, shoal_nif:release_claim(T, k, {error, {init_failed, [1]}})),
    ?assertEqual({got, {'$shoal_claim', Ref, {error, {init_failed, [1]}}}},
                 receive {'DOWN', WRef, _, _, Why} -> Why end),
    ?assertEqual(not_found, shoal_nif:release_claim(T, k, retry)),
    {ok, _} = reg_over(T, k, self()),
    %% release_claim never removes a worker.
    ?assertEqual(not_found, shoal_nif:release_claim(T, k, retry)),
    ?assertEqual(self(), shoal_nif:whereis(T, k)).

a_claim_on_a_live_key_returns_its_worker_test() ->
    T = shoal_nif:new(2),
    W = sleeper(),
    {ok, _} = reg(T, k, W),
    ?assertEqual({ok, W}, shoal_nif:claim(T, k, make_ref())),
    ?assertEqual({ok, W}, shoal_nif:claim(T, k, nowait)),
    R = remote_pid(n@h, 3),
    stored = shoal_nif:put_remote(T, r, n@h, R, 9, 0),
    ?assertEqual({ok, R}, shoal_nif:claim(T, r, make_ref())),
    ?assertEqual(2, maps:get(entries, shoal_nif:info(T))).

%%% Register over: takeovers and reclaims --------------------------------------------------

register_over_replaces_absent_tombs_and_old_or_named_replicas_test() ->
    T = shoal_nif:new(2),
    listen(T),
    W = sleeper(),
    %% An older replica (version at most MaxVsn) is replaced.
    stored = shoal_nif:put_remote(T, k1, a@h, remote_pid(a@h, 1), 100, 0),
    {ok, V1} = shoal_nif:register(T, k1, W, {over, 100, none}),
    ?assert(V1 > 100),
    ?assertEqual({local, W, V1, false}, shoal_nif:lookup(T, k1)),
    ?assertEqual({up, k1, W, V1}, next_event()),
    %% A newer replica is not, unless it is the named node's.
    stored = shoal_nif:put_remote(T, k2, a@h, remote_pid(a@h, 2), 200, 0),
    ?assertEqual({error, {newer, a@h, remote_pid(a@h, 2), 200}},
                 shoal_nif:register(T, k2, W, {over, 199, none})),
    ?assertEqual({error, {newer, a@h, remote_pid(a@h, 2), 200}},
                 shoal_nif:register(T, k2, W, {over, 199, b@h})),
    {ok, V2} = shoal_nif:register(T, k2, W, {over, 1, a@h}),
    ?assert(V2 > 200),
    %% A tomb, whatever its version, and an absent key.
    Ahead = shoal_nif:hlc() + 1000000000,
    tombstoned = shoal_nif:remove_remote(T, k3, a@h, Ahead),
    {ok, V3} = shoal_nif:register(T, k3, W, {over, 0, none}),
    ?assert(V3 > Ahead),
    {ok, V4} = shoal_nif:register(T, k4, W, {over, 0, none}),
    ?assert(V4 > V3),
    ?assertEqual(4, shoal_nif:count(T, local)),
    ?assertEqual(0, shoal_nif:count(T, a@h)),
    ?assertEqual(#{tombs => 0, remote_workers => 0, nodes => 0},
                 maps:with([tombs, remote_workers, nodes], shoal_nif:info(T))),
    kill_and_wait(W).

register_over_its_own_entry_clears_moving_and_takes_a_fresh_version_test() ->
    T = shoal_nif:new(2),
    W = sleeper(),
    {ok, V0} = reg(T, k, W),
    listen(T),
    ?assertEqual({ok, V0}, shoal_nif:set_moving(T, k, W, true)),
    ?assertEqual({local, W, V0, true}, shoal_nif:lookup(T, k)),
    %% A take-back: above everything the clock saw (here a replica refused while it moved),
    %% and announced like a registration.
    R = remote_pid(n@h, 1),
    ?assertEqual(stale, shoal_nif:put_remote(T, k, n@h, R, V0 + 1000, 0)),
    {ok, V} = shoal_nif:register(T, k, W, {over, 0, none}),
    ?assert(V > V0 + 1000),
    ?assertEqual({local, W, V, false}, shoal_nif:lookup(T, k)),
    ?assertEqual({up, k, W, V}, next_event()),
    %% Another local worker is never replaced, moving or not.
    ?assertEqual({ok, V}, shoal_nif:set_moving(T, k, W, true)),
    ?assertEqual({error, {already_registered, W}}, reg_over(T, k, sleeper())),
    ?assertEqual(not_found, shoal_nif:set_moving(T, k, self(), true)),
    ?assertEqual(not_found, shoal_nif:set_moving(T, nokey, W, true)),
    ?assertEqual({ok, V}, shoal_nif:set_moving(T, k, W, false)),
    ?assertEqual({local, W, V, false}, shoal_nif:lookup(T, k)),
    %% Its death is told with the version it kept.
    kill_and_wait(W),
    ?assertMatch({down, k, W, V}, next_event()).

%%% Replicas: versions, ties, conflicts -----------------------------------------------------

put_remote_keeps_the_newest_incarnation_test() ->
    T = shoal_nif:new(2),
    R1 = remote_pid(a@h, 1),
    R2 = remote_pid(a@h, 2),
    R3 = remote_pid(b@h, 3),
    ?assertEqual(stored, shoal_nif:put_remote(T, k, a@h, R1, 10, 0)),
    ?assertEqual({remote, a@h, R1, 10}, shoal_nif:lookup(T, k)),
    ?assertEqual(stale, shoal_nif:put_remote(T, k, a@h, R2, 9, 0)),
    ?assertEqual(stale, shoal_nif:put_remote(T, k, a@h, R2, 10, 0)),
    ?assertEqual(R1, shoal_nif:whereis(T, k)),
    ?assertEqual(stored, shoal_nif:put_remote(T, k, a@h, R2, 11, 0)),
    ?assertEqual({remote, R2}, shoal_nif:route(T, k, msg)),
    %% Equal versions: the node names decide.
    ?assertEqual(stored, shoal_nif:put_remote(T, k, b@h, R3, 11, 0)),
    ?assertEqual(stale, shoal_nif:put_remote(T, k, a@h, R1, 11, 0)),
    ?assertEqual({remote, b@h, R3, 11}, shoal_nif:lookup(T, k)),
    ?assertEqual(1, shoal_nif:count(T)),
    ?assertEqual(0, shoal_nif:count(T, a@h)),
    ?assertEqual(1, shoal_nif:count(T, b@h)),
    ?assertEqual(0, shoal_nif:count(T, local)),
    ?assertEqual(#{nodes => 1, remote_workers => 1, entries => 1},
                 maps:with([nodes, remote_workers, entries], shoal_nif:info(T))).

a_replica_over_a_live_local_worker_is_a_conflict_or_stale_test() ->
    T = shoal_nif:new(2),
    W = sleeper(),
    {ok, V} = reg(T, k, W),
    R = remote_pid(n@h, 1),
    ?assertEqual(stale, shoal_nif:put_remote(T, k, n@h, R, V - 1, 0)),
    ?assertEqual({conflict, W, V}, shoal_nif:put_remote(T, k, n@h, R, V + 1, 0)),
    %% A tie with the local entry: node names decide (node() is the local side).
    Low = list_to_atom("a" ++ atom_to_list(node())),
    High = list_to_atom("z" ++ atom_to_list(node())),
    ?assertEqual(stale, shoal_nif:put_remote(T, k, Low, R, V, 0)),
    ?assertEqual({conflict, W, V}, shoal_nif:put_remote(T, k, High, R, V, 0)),
    ?assertEqual({local, W, V, false}, shoal_nif:lookup(T, k)),
    ?assertEqual(1, shoal_nif:count(T, local)),
    ?assertEqual(0, maps:get(nodes, shoal_nif:info(T))),
    kill_and_wait(W).

a_successor_replaces_a_moving_worker_and_tells_the_listener_test() ->
    T = shoal_nif:new(2),
    W = sleeper(),
    {ok, V} = reg(T, k, W),
    listen(T),
    ?assertEqual({ok, V}, shoal_nif:set_moving(T, k, W, true)),
    R = remote_pid(n@h, 1),
    %% A replica is stale while the worker moves, newer or not: only the move's outcome
    %% (put_successor/6) replaces it.
    ?assertEqual(stale, shoal_nif:put_remote(T, k, n@h, R, V - 1, 0)),
    ?assertEqual(stale, shoal_nif:put_remote(T, k, n@h, R, V + 1, 7)),
    ?assertEqual({local, W, V, true}, shoal_nif:lookup(T, k)),
    ?assertEqual(stale, shoal_nif:put_successor(T, k, n@h, R, V - 1, 0)),
    ?assertEqual(stored, shoal_nif:put_successor(T, k, n@h, R, V + 1, 7)),
    ?assertEqual({'$shoal_replaced', k, W, V, n@h, R, V + 1}, next_event()),
    ?assertEqual({remote, n@h, R, V + 1}, shoal_nif:lookup(T, k)),
    ?assertEqual(0, shoal_nif:count(T, local)),
    ?assertEqual(1, shoal_nif:count(T, n@h)),
    %% The old worker's death no longer concerns the table.
    kill_and_wait(W),
    ?assertEqual(none, no_event()),
    ?assertEqual(R, shoal_nif:whereis(T, k)).

a_replica_resolves_a_claim_and_tells_its_waiters_test() ->
    T = shoal_nif:new(2),
    claimed = shoal_nif:claim(T, k, nowait),
    Ref = make_ref(),
    Parent = self(),
    Waiter = spawn(fun() ->
                           {wait, Parent} = shoal_nif:claim(T, k, Ref),
                           Parent ! queued,
                           receive M -> Parent ! {told, M} end
                   end),
    receive queued -> ok end,
    R = remote_pid(n@h, 4),
    ?assertEqual(stored, shoal_nif:put_remote(T, k, n@h, R, 3, 0)),
    ?assertEqual({told, {'$shoal_claim', Ref, {ok, R}}}, receive {told, _} = T1 -> T1 end),
    ?assertEqual(#{claims => 0, remote_workers => 1},
                 maps:with([claims, remote_workers], shoal_nif:info(T))),
    kill_and_wait(Waiter).

%%% Tombs --------------------------------------------------------------------------------

remove_remote_makes_tombs_that_block_older_replicas_test() ->
    T = shoal_nif:new(2),
    R = remote_pid(n@h, 1),
    stored = shoal_nif:put_remote(T, k, n@h, R, 10, 0),
    ?assertEqual(stale, shoal_nif:remove_remote(T, k, n@h, 9)),
    ?assertEqual(R, shoal_nif:whereis(T, k)),
    ?assertEqual(removed, shoal_nif:remove_remote(T, k, n@h, 10)),
    ?assertEqual({tomb, 10}, shoal_nif:lookup(T, k)),
    %% A tomb reads as absent and is counted apart.
    ?assertEqual(undefined, shoal_nif:whereis(T, k)),
    ?assertEqual(undefined, shoal_nif:route(T, k, msg)),
    ?assertEqual(0, shoal_nif:count(T)),
    ?assertEqual(0, shoal_nif:count(T, n@h)),
    ?assertEqual(#{tombs => 1, workers => 0, entries => 1},
                 maps:with([tombs, workers, entries], shoal_nif:info(T))),
    ?assertEqual([], shoal_nif:fold(T, dump, x)),
    ?assertEqual([], shoal_nif:fold(T, keys_on, n@h)),
    %% A late `up' of the dead incarnation (or anything not newer) cannot bring it back.
    ?assertEqual(stale, shoal_nif:put_remote(T, k, n@h, R, 10, 0)),
    ?assertEqual(stale, shoal_nif:put_remote(T, k, a@h, R, 10, 0)),
    ?assertEqual(stale, shoal_nif:remove_remote(T, k, n@h, 10)),
    %% A newer tomb raises it; a newer replica replaces it.
    ?assertEqual(tombstoned, shoal_nif:remove_remote(T, k, n@h, 12)),
    ?assertEqual({tomb, 12}, shoal_nif:lookup(T, k)),
    ?assertEqual(stored, shoal_nif:put_remote(T, k, z@h, R, 12, 0)),
    ?assertEqual({remote, z@h, R, 12}, shoal_nif:lookup(T, k)),
    %% The down of an unknown key leaves a tomb; a newer replica is left alone.
    ?assertEqual(tombstoned, shoal_nif:remove_remote(T, other, n@h, 5)),
    ?assertEqual(stale, shoal_nif:remove_remote(T, k, n@h, 11)),
    ?assertEqual(#{tombs => 1, remote_workers => 1},
                 maps:with([tombs, remote_workers], shoal_nif:info(T))).

remove_remote_leaves_local_workers_and_claims_alone_test() ->
    T = shoal_nif:new(2),
    W = sleeper(),
    {ok, V} = reg(T, k, W),
    ?assertEqual(stale, shoal_nif:remove_remote(T, k, n@h, V + 100)),
    ?assertEqual({local, W, V, false}, shoal_nif:lookup(T, k)),
    claimed = shoal_nif:claim(T, c, nowait),
    ?assertEqual(stale, shoal_nif:remove_remote(T, c, n@h, 5)),
    ?assertEqual({claimed, self()}, shoal_nif:lookup(T, c)),
    %% ...but the claim remembers the tomb: given up, it becomes that tomb.
    ok = shoal_nif:release_claim(T, c, retry),
    ?assertEqual({tomb, 5}, shoal_nif:lookup(T, c)),
    kill_and_wait(W).

a_claim_over_a_tomb_keeps_it_test() ->
    T = shoal_nif:new(2),
    R = remote_pid(n@h, 1),
    tombstoned = shoal_nif:remove_remote(T, k, n@h, 50),
    ?assertEqual(claimed, shoal_nif:claim(T, k, nowait)),
    ?assertEqual(#{claims => 1, tombs => 0}, maps:with([claims, tombs], shoal_nif:info(T))),
    %% A replica that the tomb would have blocked does not resolve the claim.
    ?assertEqual(stale, shoal_nif:put_remote(T, k, n@h, R, 50, 0)),
    ?assertEqual({claimed, self()}, shoal_nif:lookup(T, k)),
    %% Given up, the claim is the tomb again.
    ok = shoal_nif:release_claim(T, k, retry),
    ?assertEqual({tomb, 50}, shoal_nif:lookup(T, k)),
    %% Registered, the worker's version is above the tomb's.
    claimed = shoal_nif:claim(T, k, nowait),
    {ok, V} = shoal_nif:register(T, k, self(), claim),
    ?assert(V > 50),
    ?assertEqual(#{claims => 0, tombs => 0, local_workers => 1},
                 maps:with([claims, tombs, local_workers], shoal_nif:info(T))).

sweep_tombs_removes_tombs_by_age_test() ->
    T = shoal_nif:new(4),
    R = remote_pid(n@h, 1),
    [tombstoned = shoal_nif:remove_remote(T, {old, I}, n@h, I) || I <- lists:seq(1, 100)],
    timer:sleep(30),
    [tombstoned = shoal_nif:remove_remote(T, {new, I}, n@h, I) || I <- lists:seq(1, 50)],
    stored = shoal_nif:put_remote(T, live, n@h, R, 1, 0),
    ?assertEqual(100, shoal_nif:fold(T, sweep_tombs, 25)),
    ?assertEqual(50, maps:get(tombs, shoal_nif:info(T))),
    ?assertEqual(50, shoal_nif:fold(T, sweep_tombs, 0)),
    ?assertEqual(#{tombs => 0, entries => 1, nodes => 1},
                 maps:with([tombs, entries, nodes], shoal_nif:info(T))),
    ?assertEqual(0, shoal_nif:fold(T, sweep_tombs, 0)).

%%% The pid store: compaction -------------------------------------------------------------

pid_id(P) ->
    B = term_to_binary(P),
    <<Id:32, _Serial:32, _Creation:32>> = binary:part(B, byte_size(B) - 12, 12),
    Id.

%% Replicas replaced over and over leave dead pids behind in their node's store; the store
%% is compacted (on a dirty scheduler, at the end of the call that tipped it) so it holds
%% about what is live, while readers keep getting the right pids throughout.
the_pid_store_is_compacted_under_readers_test_() ->
    {timeout, 120, fun() ->
        T = shoal_nif:new(4),
        N = 5000,
        Put = fun(Round) ->
                      [stored = shoal_nif:put_remote(T, I, n@h, remote_pid(n@h, Round * N + I),
                                                     Round, 0) || I <- lists:seq(1, N)],
                      ok
              end,
        Put(1),
        #{table_bytes := Bytes1} = shoal_nif:info(T),
        [Put(R) || R <- lists:seq(2, 4)],
        erlang:garbage_collect(),
        Mem4 = erlang:memory(total),
        Stop = atomics:new(1, []),
        Bad = atomics:new(1, []),
        Parent = self(),
        Reader = fun() ->
                         read_loop(T, N, Stop, Bad),
                         Parent ! {reader_done, self()}
                 end,
        Rs = [spawn_link(Reader) || _ <- [1, 2]],
        [Put(R) || R <- lists:seq(5, 40)],
        atomics:put(Stop, 1, 1),
        [receive {reader_done, R} -> ok end || R <- Rs],
        #{table_bytes := Bytes40} = shoal_nif:info(T),
        timer:sleep(10), %% the readers are gone
        erlang:garbage_collect(),
        Mem40 = erlang:memory(total),
        ?assertEqual(0, atomics:get(Bad, 1)),
        ?assertEqual([40 * N + I || I <- lists:seq(1, N)],
                     [pid_id(shoal_nif:whereis(T, I)) || I <- lists:seq(1, N)]),
        %% Without compaction the store would hold 40 rounds of pids: 6 MB more.
        ?assert(Bytes40 < 3 * Bytes1),
        ?assert(Mem40 - Mem4 < 3000000),
        ?assertEqual(N, shoal_nif:fold(T, purge_node, n@h)),
        ?assertEqual(#{entries => 0, nodes => 0}, maps:with([entries, nodes], shoal_nif:info(T)))
    end}.

read_loop(T, N, Stop, Bad) ->
    case atomics:get(Stop, 1) of
        1 -> ok;
        0 ->
            I = rand:uniform(N),
            P = shoal_nif:whereis(T, I),
            case is_pid(P) andalso node(P) =:= n@h andalso (pid_id(P) - I) rem N =:= 0 of
                true -> ok;
                false -> atomics:add(Bad, 1, 1)
            end,
            read_loop(T, N, Stop, Bad)
    end.

%%% Nodes: counts per node, no fixed cap ---------------------------------------------------

counts_per_node_hold_past_256_nodes_and_free_their_names_test() ->
    T = shoal_nif:new(4),
    Nodes = [list_to_atom("n" ++ integer_to_list(I) ++ "@host") || I <- lists:seq(1, 1000)],
    [stored = shoal_nif:put_remote(T, {N, J}, N, remote_pid(N, J), 1, 0)
     || N <- Nodes, J <- lists:seq(1, 3)],
    ?assertEqual(1000, maps:get(nodes, shoal_nif:info(T))),
    ?assertEqual([3], lists:usort([shoal_nif:count(T, N) || N <- Nodes])),
    ?assertEqual(3000, shoal_nif:count(T)),
    %% Purging half the nodes frees their names; the rest keep their counts.
    {Gone, Kept} = lists:split(500, Nodes),
    ?assertEqual([3], lists:usort([shoal_nif:fold(T, purge_node, N) || N <- Gone])),
    ?assertEqual(500, maps:get(nodes, shoal_nif:info(T))),
    ?assertEqual([0], lists:usort([shoal_nif:count(T, N) || N <- Gone])),
    ?assertEqual([3], lists:usort([shoal_nif:count(T, N) || N <- Kept])),
    %% Another 500 distinct names, over time: nothing runs out.
    More = [list_to_atom("m" ++ integer_to_list(I) ++ "@host") || I <- lists:seq(1, 500)],
    [stored = shoal_nif:put_remote(T, {M, 1}, M, remote_pid(M, 1), 1, 0) || M <- More],
    ?assertEqual([1], lists:usort([shoal_nif:count(T, M) || M <- More])),
    ?assertEqual(1000, maps:get(nodes, shoal_nif:info(T))),
    [removed = shoal_nif:remove_remote(T, {M, 1}, M, 1) || M <- More],
    %% Tombs name their node until they are swept.
    ?assertEqual(1000, maps:get(nodes, shoal_nif:info(T))),
    500 = shoal_nif:fold(T, sweep_tombs, 0),
    ?assertEqual(500, maps:get(nodes, shoal_nif:info(T))),
    ?assertEqual(1500, shoal_nif:count(T)).

a_unicode_node_name_is_a_node_test() ->
    T = shoal_nif:new(2),
    N = binary_to_atom(<<"nœud-ü-€@hôte"/utf8>>, utf8),
    R = remote_pid(N, 1),
    ?assertEqual(stored, shoal_nif:put_remote(T, k, N, R, 1, 0)),
    ?assertEqual({remote, N, R, 1}, shoal_nif:lookup(T, k)),
    ?assertEqual(1, shoal_nif:count(T, N)),
    ?assertEqual([{k, N, R, 1}], shoal_nif:fold(T, dump, x)),
    ?assertEqual(1, shoal_nif:fold(T, purge_node, N)).

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
    [receive {claim, P, R} -> {P, R} end || P <- Pids].

exactly_one_of_many_racers_claims_and_the_others_get_the_worker_test() ->
    T = shoal_nif:new(4),
    Results = race(T, hot, 200),
    [Winner] = [P || {P, claimed} <- Results],
    Waiters = [P || {P, {wait, C}} <- Results, C =:= Winner],
    ?assertEqual(199, length(Waiters)),
    W = sleeper(),
    Winner ! {finish, fun() -> {ok, _} = shoal_nif:register(T, hot, W, claim) end},
    Told = [receive {told, P, Res} -> Res after ?DEADLINE_MS -> timeout end || P <- Waiters],
    ?assertEqual([{ok, W}], lists:usort(Told)),
    ?assertEqual(W, shoal_nif:whereis(T, hot)),
    ?assertEqual(1, shoal_nif:count(T)).

a_released_claim_tells_every_waiter_to_retry_test() ->
    T = shoal_nif:new(4),
    Results = race(T, hot, 100),
    [Winner] = [P || {P, claimed} <- Results],
    Waiters = [P || {P, {wait, _}} <- Results],
    Winner ! {finish, fun() -> ok = shoal_nif:release_claim(T, hot, retry) end},
    Told = [receive {told, P, Res} -> Res after ?DEADLINE_MS -> timeout end || P <- Waiters],
    ?assertEqual([retry], lists:usort(Told)),
    ?assertEqual(undefined, shoal_nif:lookup(T, hot)).

races_between_claims_replicas_and_deaths_keep_counts_exact_test_() ->
    {timeout, 60, fun races_keep_counts_exact/0}.

%% Four processes hammer 50 keys with every operation at once; whatever the interleaving,
%% the counts equal what a walk finds while they live, and after everyone dies and the replicas are
%% purged, the table is empty.
races_keep_counts_exact() ->
    T = shoal_nif:new(1),
    Keys = lists:seq(1, 50),
    Parent = self(),
    Worker = fun(Seed) ->
                     rand:seed(exsss, {Seed, Seed, Seed}),
                     [op(T, lists:nth(rand:uniform(50), Keys), rand:uniform(8))
                      || _ <- lists:seq(1, 20000)],
                     Parent ! {done, self()},
                     %% Alive until killed: a racer that returned would have its entries
                     %% dropped by the NIF's monitors while the first check reads the counts.
                     receive stop -> ok end
             end,
    Ps = [spawn(fun() -> Worker(S) end) || S <- lists:seq(1, 4)],
    [receive {done, P} -> ok end || P <- Ps],
    check_counts(T),
    [kill_and_wait(P) || P <- Ps],
    ?assert(wait_until(fun() -> shoal_nif:count(T, local) =:= 0 end)),
    %% Claims left by the dead racers are cleared by whoever watches them: here, us.
    [shoal_nif:unregister(T, K, P) || K <- Keys, P <- Ps],
    _ = shoal_nif:fold(T, purge_node, n@h),
    _ = shoal_nif:fold(T, sweep_tombs, 0),
    check_counts(T),
    ?assertEqual(#{entries => 0, claims => 0, nodes => 0},
                 maps:with([entries, claims, nodes], shoal_nif:info(T))).

op(T, K, 1) -> shoal_nif:claim(T, K, nowait);
op(T, K, 2) -> shoal_nif:register(T, K, self(), claim);
op(T, K, 3) -> shoal_nif:register(T, K, self(), {over, rand:uniform(1000), n@h});
op(T, K, 4) -> shoal_nif:unregister(T, K, self());
op(T, K, 5) -> shoal_nif:put_remote(T, K, n@h, remote_pid(n@h, K), rand:uniform(2000), 0);
op(T, K, 6) -> shoal_nif:remove_remote(T, K, n@h, rand:uniform(2000));
op(T, K, 7) -> shoal_nif:set_moving(T, K, self(), rand:uniform(2) =:= 1);
op(T, K, 8) -> shoal_nif:release_claim(T, K, retry).

check_counts(T) ->
    I = shoal_nif:info(T),
    Dump = shoal_nif:fold(T, dump, x),
    Locals = [K || {K, N, _, _} <- Dump, N =:= node()],
    Remotes = [K || {K, N, _, _} <- Dump, N =/= node()],
    ?assertEqual(length(Locals), maps:get(local_workers, I)),
    ?assertEqual(length(Remotes), maps:get(remote_workers, I)),
    ?assertEqual(length(Remotes), shoal_nif:count(T, n@h)),
    ?assertEqual(length(Dump), shoal_nif:count(T)),
    ?assertEqual(maps:get(entries, I),
                 maps:get(workers, I) + maps:get(claims, I) + maps:get(tombs, I)).

%%% Walks ----------------------------------------------------------------------------------

walks_of_200k_entries_test_() ->
    {timeout, 120, fun walks_list_every_entry_of_a_big_table/0}.

walks_list_every_entry_of_a_big_table() ->
    T = shoal_nif:new(8),
    W = sleeper(),
    N = 200000,
    Vs = [begin {ok, V} = reg_over(T, {k, I}, W), V end || I <- lists:seq(1, N)],
    [stored = shoal_nif:put_remote(T, {r, I}, n@h, remote_pid(n@h, I), I, 0)
     || I <- lists:seq(1, 1000)],
    claimed = shoal_nif:claim(T, a_claim, nowait),
    tombstoned = shoal_nif:remove_remote(T, a_tomb, n@h, 1),
    Owned = shoal_nif:fold(T, owned, x),
    ?assertEqual(lists:zip3([{k, I} || I <- lists:seq(1, N)], lists:duplicate(N, W), Vs),
                 lists:sort(Owned)),
    Dump = shoal_nif:fold(T, dump, x),
    ?assertEqual(N + 1000, length(Dump)),
    ?assertEqual([{{r, I}, n@h, remote_pid(n@h, I), I} || I <- lists:seq(1, 1000)],
                 lists:sort([E || {_, n@h, _, _} = E <- Dump])),
    ?assertEqual(N, length([E || {_, Node, _, _} = E <- Dump, Node =:= node()])),
    ?assertEqual(N, length(shoal_nif:fold(T, keys_on, local))),
    ?assertEqual(lists:sort([{r, I} || I <- lists:seq(1, 1000)]),
                 lists:sort(shoal_nif:fold(T, keys_on, n@h))),
    ?assertEqual([], shoal_nif:fold(T, keys_on, never@seen)),
    kill_and_wait(W),
    ?assert(wait_until(fun() -> shoal_nif:count(T, local) =:= 0 end)),
    ?assertEqual([], shoal_nif:fold(T, owned, x)).

purge_node_removes_only_that_nodes_replicas_test_() ->
    {timeout, 60, fun() ->
        T = shoal_nif:new(8),
        Local = sleeper(),
        [stored = shoal_nif:put_remote(T, {gone, I}, 'gone@host', remote_pid('gone@host', I), I, 0)
         || I <- lists:seq(1, 30000)],
        [stored = shoal_nif:put_remote(T, {kept, I}, 'kept@host', remote_pid('kept@host', I), I, 0)
         || I <- lists:seq(1, 1000)],
        [{ok, _} = reg_over(T, {local, I}, Local) || I <- lists:seq(1, 500)],
        tombstoned = shoal_nif:remove_remote(T, t, 'gone@host', 1),
        ?assertEqual(31500, shoal_nif:count(T)),
        ?assertEqual(1000, length(shoal_nif:fold(T, keys_on, 'kept@host'))),
        ?assertEqual(30000, shoal_nif:fold(T, purge_node, 'gone@host')),
        ?assertEqual(1500, shoal_nif:count(T)),
        ?assertEqual(1501, maps:get(entries, shoal_nif:info(T))),
        ?assertEqual([], shoal_nif:fold(T, keys_on, 'gone@host')),
        ?assertEqual(0, shoal_nif:fold(T, purge_node, 'gone@host')),
        ?assertEqual(lists:sort([{local, I} || I <- lists:seq(1, 500)]),
                     lists:sort(shoal_nif:fold(T, keys_on, local))),
        ?assertEqual(remote_pid('kept@host', 5), shoal_nif:whereis(T, {kept, 5})),
        ?assertEqual(undefined, shoal_nif:whereis(T, {gone, 5})),
        ?assertEqual({tomb, 1}, shoal_nif:lookup(T, t)),
        kill_and_wait(Local)
    end}.

sweep_node_removes_unconfirmed_older_replicas_test() ->
    T = shoal_nif:new(4),
    P = fun(I) -> remote_pid(n@h, I) end,
    %% 1..100 stored with mark 1 (an earlier sync); 101..150 with no mark (plain ups).
    [stored = shoal_nif:put_remote(T, I, n@h, P(I), I, 1) || I <- lists:seq(1, 100)],
    [stored = shoal_nif:put_remote(T, I, n@h, P(I), I, 0) || I <- lists:seq(101, 150)],
    stored = shoal_nif:put_remote(T, other, o@h, remote_pid(o@h, 1), 1, 1),
    %% A sync with mark 2 confirms the even keys; confirming with mark 0 changes nothing.
    [stale = shoal_nif:put_remote(T, I, n@h, P(I), I, 2) || I <- lists:seq(2, 150, 2)],
    [stale = shoal_nif:put_remote(T, I, n@h, P(I), I, 0) || I <- lists:seq(1, 150)],
    %% Its walk began at 120: the odd keys below it go, the rest (newer) stay.
    Odd = length(lists:seq(1, 119, 2)),
    ?assertEqual(Odd, shoal_nif:fold(T, sweep_node, {n@h, 2, 120})),
    ?assertEqual(lists:sort(lists:seq(2, 150, 2) ++ lists:seq(121, 149, 2)),
                 lists:sort(shoal_nif:fold(T, keys_on, n@h))),
    ?assertEqual(150 - Odd, shoal_nif:count(T, n@h)),
    ?assertEqual(1, shoal_nif:count(T, o@h)),
    ?assertEqual(0, shoal_nif:fold(T, sweep_node, {n@h, 2, 120})).

%% The walk's promise: an entry present for the whole walk is listed exactly once, however
%% many other keys come and go meanwhile (deletes shift entries within their segment).
a_walk_under_churn_lists_every_stable_entry_once_test_() ->
    {timeout, 120, fun() ->
        T = shoal_nif:new(2),
        W = sleeper(),
        Stable = 20000,
        [{ok, _} = reg_over(T, {s, I}, W) || I <- lists:seq(1, Stable)],
        [stored = shoal_nif:put_remote(T, {sr, I}, n@h, remote_pid(n@h, I), 1, 0)
         || I <- lists:seq(1, Stable)],
        Stop = atomics:new(1, []),
        Churn = fun(Seed) ->
                        rand:seed(exsss, {Seed, 1, 1}),
                        churn(T, W, Stop)
                end,
        Cs = [spawn_link(fun() -> Churn(S) end) || S <- [1, 2]],
        Rounds = [begin
                      Dump = shoal_nif:fold(T, dump, x),
                      Keys = lists:sort([K || {K, _, _, _} <- Dump, element(1, K) =/= c]),
                      Keys =:= lists:sort([{s, I} || I <- lists:seq(1, Stable)] ++
                                              [{sr, I} || I <- lists:seq(1, Stable)])
                  end || _ <- lists:seq(1, 10)],
        atomics:put(Stop, 1, 1),
        [begin unlink(C), kill_and_wait(C) end || C <- Cs],
        ?assertEqual(lists:duplicate(10, true), Rounds),
        kill_and_wait(W)
    end}.

churn(T, W, Stop) ->
    case atomics:get(Stop, 1) of
        1 -> ok;
        0 ->
            K = {c, rand:uniform(20000)},
            case rand:uniform(4) of
                1 -> shoal_nif:register(T, K, W, {over, shoal_nif:hlc(), n@h});
                2 -> shoal_nif:unregister(T, K, W);
                3 -> shoal_nif:put_remote(T, K, n@h, remote_pid(n@h, 1), shoal_nif:hlc(), 0);
                4 -> shoal_nif:remove_remote(T, K, n@h, shoal_nif:hlc())
            end,
            churn(T, W, Stop)
    end.

folds_yield_test_() ->
    {timeout, 120, fun() -> ?assertEqual(ok, in_peer(fold_yields_on_one_scheduler, [], ["+S", "1"])) end}.

%% In a VM with one scheduler: a process that counts while a walk of 300k entries runs
%% gets to count during the walk only if the walk gives the scheduler back.
fold_yields_on_one_scheduler() ->
    1 = erlang:system_info(schedulers_online),
    T = shoal_nif:new(8),
    W = spawn(fun pinned_worker/0),
    [{ok, _} = shoal_nif:register(T, {k, I}, W, {over, 0, none}) || I <- lists:seq(1, 300000)],
    [stored = shoal_nif:put_remote(T, {r, I}, n@h, remote_pid(n@h, I), 1, 0)
     || I <- lists:seq(1, 10)],
    Counter = atomics:new(1, []),
    Ticker = spawn(fun() -> tick(Counter) end),
    timer:sleep(10),
    Results = [begin
                   Before = atomics:get(Counter, 1),
                   R = shoal_nif:fold(T, Op, Arg),
                   {Op, atomics:get(Counter, 1) - Before, R}
               end || {Op, Arg} <- [{owned, x}, {dump, x}, {keys_on, local},
                                    {purge_node, n@h}, {sweep_tombs, 0}]],
    exit(Ticker, kill),
    Bad = [{Op, Ticks} || {Op, Ticks, _} <- Results, Ticks < 2],
    Sizes = [case R of L when is_list(L) -> length(L); N -> N end || {_, _, R} <- Results],
    case {Bad, Sizes} of
        {[], [300000, 300010, 300000, 10, 0]} -> ok;
        Other -> Other
    end.

tick(C) ->
    atomics:add(C, 1, 1),
    erlang:yield(),
    tick(C).

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

in_peer(Fun, Args) -> in_peer(Fun, Args, []).

in_peer(Fun, Args, VmArgs) ->
    Root = code:root_dir(),
    Paths = [filename:absname(P) || P <- code:get_path(), not lists:prefix(Root, P)],
    {ok, Peer, _} = peer:start_link(#{connection => standard_io,
                                      args => VmArgs ++ ["-pa" | Paths]}),
    try peer:call(Peer, ?MODULE, Fun, Args, 100000)
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
    listen(T),
    {ok, V0} = shoal_nif:register(T, w, W, {over, 0, none}),
    {ok, _} = shoal_nif:register(T, gone, Gone, {over, 0, none}),
    claimed = shoal_nif:claim(T, c, nowait),
    stored = shoal_nif:put_remote(T, r, n@h, remote_pid(n@h, 1), 1, 0),
    tombstoned = shoal_nif:remove_remote(T, t, n@h, 2),
    {module, shoal_nif} = code:load_binary(shoal_nif, "shoal_nif_upgraded.beam", Bin),
    [upgraded] = proplists:get_value(vsn, shoal_nif:module_info(attributes)),
    Loaded = shoal_nif:load_info(),
    %% Old and new code live side by side until the old one is purged.
    true = erlang:check_old_code(shoal_nif),
    W = shoal_nif:whereis(T, w),
    false = code:purge(shoal_nif),
    false = erlang:check_old_code(shoal_nif),
    After = shoal_nif:load_info(),
    %% The clock carried over: versions keep increasing.
    true = shoal_nif:hlc() > V0,
    %% Every path through the old table after the old library is gone:
    W = shoal_nif:whereis(T, w),
    ok = shoal_nif:unregister(T, w, W),
    removed = shoal_nif:remove_remote(T, r, n@h, 1),
    ok = shoal_nif:release_claim(T, c, retry),
    2 = shoal_nif:fold(T, sweep_tombs, 0),
    Ref = erlang:monitor(process, Gone),
    exit(Gone, kill),
    receive {'DOWN', Ref, _, _, _} -> ok end,
    true = wait_until(fun() -> shoal_nif:whereis(T, gone) =:= undefined end),
    %% ...and the down callback, now the new library's, still told the listener.
    true = receive {'$shoal_down', gone, Gone, _} -> true after 1000 -> false end,
    0 = shoal_nif:count(T),
    T2 = shoal_nif:new(2),
    {ok, _} = shoal_nif:register(T2, w, W, {over, 0, none}),
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

%% A map key is bounded before it is copied: one holding a 100 MB binary (as a value or as
%% a key) is refused like any key over 64 KiB, and maps that fit hash like the reference.
maps_holding_huge_binaries_are_refused_test() ->
    Big = binary:copy(<<7>>, 100 * 1024 * 1024),
    ?assertError(badarg, shoal_nif:hash(#{a => Big})),
    ?assertError(badarg, shoal_nif:hash(#{Big => a})),
    ?assertError(badarg, shoal_nif:hash({x, #{b => [#{c => Big}]}})),
    Fits = #{a => 1, <<"b">> => [1, 2, #{c => binary:copy(<<1>>, 1000)}]},
    ?assertEqual(shoal_keyhash:hash(Fits), shoal_nif:hash(Fits)).

%% Once admit/3 has been called, the table stores replicas only of admitted nodes.
admitted_nodes_only_once_admission_is_on_test() ->
    T = shoal_nif:new(2),
    P = remote_pid(n@h, 1),
    ?assertEqual(stored, shoal_nif:put_remote(T, a, n@h, P, 10, 0)),  %% not yet admitting
    ok = shoal_nif:admit(T, o@h, true),
    ?assertEqual(stale, shoal_nif:put_remote(T, b, n@h, P, 10, 0)),
    ok = shoal_nif:admit(T, n@h, true),
    ?assertEqual(stored, shoal_nif:put_remote(T, b, n@h, P, 10, 0)),
    ok = shoal_nif:admit(T, n@h, false),
    ?assertEqual(stale, shoal_nif:put_remote(T, c, n@h, P, 10, 0)),
    ?assertEqual(stored, shoal_nif:put_remote(T, c, o@h, remote_pid(o@h, 1), 10, 0)),
    ?assertError(badarg, shoal_nif:admit(T, "n@h", true)),
    ?assertError(badarg, shoal_nif:admit(T, n@h, maybe)).

%% Dismissing a node, then purging it, leaves none of its replicas, however many puts race
%% with the two (a caller's read-your-writes arriving late).
dismiss_then_purge_leaves_nothing_behind_racing_puts_test() ->
    T = shoal_nif:new(4),
    ok = shoal_nif:admit(T, n@h, true),
    Self = self(),
    Putter = spawn_link(fun() ->
                                Loop = fun L(I) ->
                                               _ = shoal_nif:put_remote(T, {k, I rem 5000}, n@h,
                                                                        remote_pid(n@h, I), I + 1, 0),
                                               receive stop -> Self ! {putter_done, I}
                                               after 0 -> L(I + 1)
                                               end
                                       end,
                                Loop(0)
                        end),
    timer:sleep(50),
    ok = shoal_nif:admit(T, n@h, false),
    _ = shoal_nif:fold(T, purge_node, n@h),
    Putter ! stop,
    receive {putter_done, N} -> ?assert(N > 100) end,
    ?assertEqual(0, shoal_nif:count(T, n@h)),
    ?assertEqual([], shoal_nif:fold(T, keys_on, n@h)).
