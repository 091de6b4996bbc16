%% shoal_nif_bench: the NIF table's hot read, a remote worker against a local one, with
%% ets:lookup/2 on the same keys beside them, and what a replica costs in memory.
%%
%% For each size N (100 k and 1 M keys by default):
%%   - a table of N local workers (one live process registered under every key: the read
%%     does not depend on which pid it answers),
%%   - a table of N replicas of workers on two other nodes (distinct remote pids, as a
%%     three-node cluster holds them),
%%   - two ETS sets holding the same {Key, Pid} pairs, local and remote;
%% then rounds of M lookups per side in a shuffled key order, the sides taking turns in a
%% rotating order so load from elsewhere hits them alike. Reported: ns per lookup (median
%% and min..max over the rounds, loop overhead subtracted), the remote/local ratio per
%% round (median and min..max), and bytes per replica entry measured as the VM's memory
%% growth while the replicas were stored (everything the NIF allocates comes from the VM's
%% allocators: enif_alloc, environments), beside what ETS takes for the same pairs.
%%
%% make bench-nif runs it; SHOAL_NIF_BENCH_N="100000,1000000", SHOAL_NIF_BENCH_OPS
%% (lookups per side per round, default 1000000), SHOAL_NIF_BENCH_ROUNDS (default 7),
%% SHOAL_BENCH_KEYS=bin for binary keys, SHOAL_NIF_BENCH_OUT (default
%% bench/results/nif.md).
-module(shoal_nif_bench).

-export([main/0]).

-define(NODES, ['shoal_b@bench-host', 'shoal_c@bench-host']).

main() ->
    Ns = [list_to_integer(S) || S <- string:lexemes(env("SHOAL_NIF_BENCH_N", "100000,1000000"), ",")],
    Ops = list_to_integer(env("SHOAL_NIF_BENCH_OPS", "1000000")),
    Rounds = list_to_integer(env("SHOAL_NIF_BENCH_ROUNDS", "7")),
    Out = env("SHOAL_NIF_BENCH_OUT", "bench/results/nif.md"),
    KeyKind = env("SHOAL_BENCH_KEYS", "int"),
    rand:seed(exsss, {3, 14, 15}),
    log("shoal_nif bench: N=~w, ~b lookups x ~b rounds per side, ~s keys, ~b schedulers, OTP ~s",
        [Ns, Ops, Rounds, KeyKind, erlang:system_info(schedulers_online),
         erlang:system_info(otp_release)]),
    Results = [size_point(N, Ops, Rounds, KeyKind) || N <- Ns],
    ok = file:write_file(Out, report(Results, Ops, Rounds, KeyKind)),
    log("wrote ~s", [Out]),
    ok.

env(Name, Default) ->
    case os:getenv(Name) of
        false -> Default;
        "" -> Default;
        V -> V
    end.

log(Fmt, Args) -> io:format(standard_error, Fmt ++ "~n", Args).

key(int, I) -> I;
key(bin, I) -> <<"user:", (integer_to_binary(I))/binary>>.

kind("bin") -> bin;
kind(_) -> int.

remote_pid(Node, Id) ->
    N = atom_to_binary(Node, utf8),
    binary_to_term(<<131, 88, 119, (byte_size(N)), N/binary, Id:32, 0:32, 1:32>>).

%%% One size ----------------------------------------------------------------------------------

size_point(N, Ops, Rounds, KeyKindS) ->
    K = kind(KeyKindS),
    Keys = [key(K, I) || I <- lists:seq(1, N)],
    Holder = spawn(fun() -> receive stop -> ok end end),
    Remotes = list_to_tuple([remote_pid(lists:nth(I rem 2 + 1, ?NODES), I)
                             || I <- lists:seq(1, N)]),
    %% Replicas first, on a quiet VM: their memory is the growth while they are stored.
    erlang:garbage_collect(),
    M0 = erlang:memory(total),
    TR = shoal_nif:new(8),
    put_remotes(TR, Keys, Remotes, 1),
    erlang:garbage_collect(),
    ReplicaBytes = (erlang:memory(total) - M0) / N,
    M1 = erlang:memory(total),
    TL = shoal_nif:new(8),
    [{ok, _} = shoal_nif:register(TL, Key, Holder, {over, 0, none}) || Key <- Keys],
    erlang:garbage_collect(),
    LocalBytes = (erlang:memory(total) - M1) / N,
    EL = ets:new(bench_local, [set, public]),
    ER = ets:new(bench_remote, [set, public]),
    true = ets:insert(EL, [{Key, Holder} || Key <- Keys]),
    ets_insert_remotes(ER, Keys, Remotes, 1),
    Word = erlang:system_info(wordsize),
    EtsBytes = ets:info(ER, memory) * Word / N,
    #{table_bytes := TB} = shoal_nif:info(TR),
    log("N=~b: replica ~b B/entry (VM memory growth; info table_bytes ~b), local entry "
        "~b B, ETS {Key, RemotePid} ~b B",
        [N, round(ReplicaBytes), round(TB / N), round(LocalBytes), round(EtsBytes)]),
    KeyT = list_to_tuple(shuffle(Keys)),
    check_agree(KeyT, TL, TR, EL, ER, Holder),
    Sides = [overhead, local, remote, ets_local, ets_remote],
    Tabs = #{local => TL, remote => TR, ets_local => EL, ets_remote => ER},
    Runs = [begin
                Order = rotate(Sides, R),
                maps:from_list([{S, run(S, Tabs, KeyT, Ops)} || S <- Order])
            end || R <- lists:seq(1, Rounds)],
    Net = [maps:map(fun(overhead, V) -> V;
                       (_, V) -> max(V - maps:get(overhead, Run), 0.1)
                    end, Run) || Run <- Runs],
    Stat = fun(S) -> stat([maps:get(S, R) || R <- Net]) end,
    Ratio = stat([maps:get(remote, R) / maps:get(local, R) || R <- Net]),
    LocalEts = stat([maps:get(local, R) / maps:get(ets_local, R) || R <- Net]),
    RemoteEts = stat([maps:get(remote, R) / maps:get(ets_remote, R) || R <- Net]),
    log("N=~b: local ~s ns, remote ~s ns, remote/local ~s; ets local ~s ns, ets remote ~s ns",
        [N, fmt(Stat(local)), fmt(Stat(remote)), fmt(Ratio), fmt(Stat(ets_local)),
         fmt(Stat(ets_remote))]),
    ok = shoal_nif:delete(TL),
    ok = shoal_nif:delete(TR),
    ets:delete(EL),
    ets:delete(ER),
    Holder ! stop,
    #{n => N, local => Stat(local), remote => Stat(remote), ratio => Ratio,
      ets_local => Stat(ets_local), ets_remote => Stat(ets_remote), overhead => Stat(overhead),
      local_vs_ets => LocalEts, remote_vs_ets => RemoteEts,
      replica_bytes => ReplicaBytes, info_bytes => TB / N, local_bytes => LocalBytes,
      ets_bytes => EtsBytes}.

put_remotes(_, [], _, _) -> ok;
put_remotes(T, [K | Ks], Pids, I) ->
    P = element(I, Pids),
    stored = shoal_nif:put_remote(T, K, node(P), P, I, 0),
    put_remotes(T, Ks, Pids, I + 1).

ets_insert_remotes(_, [], _, _) -> ok;
ets_insert_remotes(E, [K | Ks], Pids, I) ->
    true = ets:insert(E, {K, element(I, Pids)}),
    ets_insert_remotes(E, Ks, Pids, I + 1).

%% Every side answers the same pid for the same key, or the timings mean nothing.
check_agree(KeyT, TL, TR, EL, ER, Holder) ->
    Size = tuple_size(KeyT),
    lists:foreach(
      fun(_) ->
              K = element(rand:uniform(Size), KeyT),
              Holder = shoal_nif:whereis(TL, K),
              [{K, Holder}] = ets:lookup(EL, K),
              P = shoal_nif:whereis(TR, K),
              true = is_pid(P) andalso node(P) =/= node(),
              [{K, P}] = ets:lookup(ER, K)
      end, lists:seq(1, 2000)).

%% Ops lookups in a fresh process; ns per lookup.
run(Side, Tabs, KeyT, Ops) ->
    Self = self(),
    Tab = maps:get(Side, Tabs, none),
    Size = tuple_size(KeyT),
    Off = rand:uniform(Size),
    {Pid, Ref} = spawn_monitor(fun() ->
                                       erlang:garbage_collect(),
                                       T0 = erlang:monotonic_time(nanosecond),
                                       ok = loop(Side, Ops, Off, KeyT, Size, Tab),
                                       T1 = erlang:monotonic_time(nanosecond),
                                       Self ! {self(), (T1 - T0) / Ops}
                               end),
    receive {Pid, Ns} -> receive {'DOWN', Ref, _, _, _} -> Ns end end.

%% One tight loop per side: nothing but the lookup differs between them.
loop(_, 0, _, _, _, _) -> ok;
loop(overhead, I, Off, KeyT, Size, T) ->
    _ = id(element((I + Off) rem Size + 1, KeyT)),
    loop(overhead, I - 1, Off, KeyT, Size, T);
loop(local, I, Off, KeyT, Size, T) ->
    _ = shoal_nif:whereis(T, element((I + Off) rem Size + 1, KeyT)),
    loop(local, I - 1, Off, KeyT, Size, T);
loop(remote, I, Off, KeyT, Size, T) ->
    _ = shoal_nif:whereis(T, element((I + Off) rem Size + 1, KeyT)),
    loop(remote, I - 1, Off, KeyT, Size, T);
loop(ets_local, I, Off, KeyT, Size, T) ->
    _ = ets:lookup(T, element((I + Off) rem Size + 1, KeyT)),
    loop(ets_local, I - 1, Off, KeyT, Size, T);
loop(ets_remote, I, Off, KeyT, Size, T) ->
    _ = ets:lookup(T, element((I + Off) rem Size + 1, KeyT)),
    loop(ets_remote, I - 1, Off, KeyT, Size, T).

id(X) -> X.

rotate(L, R) ->
    {A, B} = lists:split((R - 1) rem length(L), L),
    B ++ A.

shuffle(L) -> [X || {_, X} <- lists:sort([{rand:uniform(), X} || X <- L])].

stat(L) ->
    S = lists:sort(L),
    {lists:nth((length(S) + 1) div 2, S), hd(S), lists:last(S)}.

fmt({Med, Min, Max}) -> io_lib:format("~.2f (~.2f..~.2f)", [float(Med), float(Min), float(Max)]).

%%% Report ------------------------------------------------------------------------------------

report(Results, Ops, Rounds, KeyKind) ->
    Head = io_lib:format(
             "# shoal_nif: remote against local lookups, and bytes per replica\n\n"
             "`make bench-nif` (bench/shoal_nif_bench.erl). ~s keys; ~b lookups per side per "
             "round, ~b rounds, the sides taking turns in a rotating order; one reader; "
             "~b schedulers, OTP ~s. Times are ns per lookup with the loop's own cost "
             "subtracted: median (min..max) over the rounds; a ratio is taken within each "
             "round, then its median (min..max). Local entries all name one live process; "
             "replicas name distinct pids of two other nodes.\n\n",
             [KeyKind, Ops, Rounds, erlang:system_info(schedulers_online),
              erlang:system_info(otp_release)]),
    T1 = ["| keys | `whereis/2` local | `whereis/2` remote | remote / local | "
          "`ets:lookup/2` local pid | `ets:lookup/2` remote pid | local / ETS | remote / ETS |\n"
          "|---:|---:|---:|---:|---:|---:|---:|---:|\n" |
          [io_lib:format("| ~s | ~s | ~s | ~s | ~s | ~s | ~s | ~s |\n",
                         [thousands(N), fmt(L), fmt(R), fmt(Ra), fmt(EL), fmt(ER), fmt(LE),
                          fmt(RE)])
           || #{n := N, local := L, remote := R, ratio := Ra, ets_local := EL,
                ets_remote := ER, local_vs_ets := LE, remote_vs_ets := RE} <- Results]],
    T2 = ["\nMemory per entry: the VM's memory growth while the entries were stored, "
          "divided by their number (slot, entry, key and pid included); ETS is "
          "`ets:info(T, memory)` of a set holding the same `{Key, RemotePid}` pairs.\n\n"
          "| keys | replica entry | (info `table_bytes`) | local entry (monitored) | ETS `{Key, RemotePid}` |\n"
          "|---:|---:|---:|---:|---:|\n" |
          [io_lib:format("| ~s | ~b B | ~b B | ~b B | ~b B |\n",
                         [thousands(N), round(RB), round(IB), round(LB), round(EB)])
           || #{n := N, replica_bytes := RB, info_bytes := IB, local_bytes := LB,
                ets_bytes := EB} <- Results]],
    unicode:characters_to_binary([Head, T1, T2]).

thousands(N) when N >= 1000000, N rem 1000000 =:= 0 -> integer_to_list(N div 1000000) ++ " M";
thousands(N) when N >= 1000, N rem 1000 =:= 0 -> integer_to_list(N div 1000) ++ " k";
thousands(N) -> integer_to_list(N).
