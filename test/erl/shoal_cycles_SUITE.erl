%% @doc No leaks: one million spawn/exit cycles leave the table and the VM's memory where
%% they started. Runs in a peer node (+P 2000000) so nothing else in the CT node moves the
%% memory figures.
-module(shoal_cycles_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

-define(CYCLES, 1000000).
-define(DRIVERS, 4).
-define(BATCH, 2500).               %% live workers per driver per round
-define(MEMORY_SLACK, 16 * 1024 * 1024).

all() -> [a_million_spawn_exit_cycles_leave_table_and_memory_where_they_started].

suite() -> [{timetrap, {minutes, 5}}].

init_per_suite(Config) ->
    Root = code:root_dir(),
    Paths = [filename:absname(P) || P <- code:get_path(), not lists:prefix(Root, P)],
    {ok, Peer, _} = peer:start(#{connection => standard_io,
                                       args => ["+P", "2000000" , "-pa" | Paths]}),
    [{peer, Peer} | Config].

end_per_suite(Config) ->
    catch peer:stop(?config(peer, Config)),
    ok.

a_million_spawn_exit_cycles_leave_table_and_memory_where_they_started(Config) ->
    Peer = ?config(peer, Config),
    Result = peer:call(Peer, ?MODULE, cycles, [?CYCLES], 280000),
    ct:pal("~p", [Result]),
    #{count := 0, entries := 0, workers := 0, spawns := Spawns, exits := Exits,
      memory_before := Before, memory_after := After} = Result,
    ?assertEqual(?CYCLES, Spawns),
    ?assertEqual(?CYCLES, Exits),
    ?assert(After - Before < ?MEMORY_SLACK).

%% In the peer: rounds of DRIVERS x BATCH workers, each started with ensure_started and
%% stopped by stop_worker, half of them exiting on their own instead.
cycles(N) ->
    {ok, _} = application:ensure_all_started(shoal),
    {ok, _} = shoal:start_pool(cyc, #{worker => shoal_test_plain_worker}),
    #{table := T} = cfg_table(cyc),
    %% Warm up once so the first round's allocations are not counted as growth.
    run_round(0),
    settle(cyc),
    Before = memory(),
    Rounds = N div (?DRIVERS * ?BATCH) - 1,
    [run_round(R) || R <- lists:seq(1, Rounds)],
    settle(cyc),
    After = memory(),
    Stats = shoal:stats(cyc),
    Info = shoal_nif:info(T),
    #{count => shoal:count(cyc), entries => maps:get(entries, Info),
      workers => maps:get(workers, Info), table_bytes => maps:get(table_bytes, Info),
      spawns => maps:get(spawns, Stats),
      exits => maps:get(normal_exits, Stats) + maps:get(crashes, Stats),
      crashes => maps:get(crashes, Stats),
      memory_before => Before, memory_after => After, processes => erlang:system_info(process_count)}.

cfg_table(Pool) ->
    %% #shoal_cfg{} is internal: the table is its third field.
    #{table => element(3, persistent_term:get({shoal_pool, Pool}))}.

run_round(R) ->
    Parent = self(),
    Drivers = [spawn_link(fun() -> drive(R, D), Parent ! {done, self()} end)
               || D <- lists:seq(1, ?DRIVERS)],
    [receive {done, D} -> ok end || D <- Drivers],
    ok.

drive(R, D) ->
    Keys = [{R, D, I} || I <- lists:seq(1, ?BATCH)],
    Pids = [begin {ok, P} = shoal:ensure_started(cyc, K), P end || K <- Keys],
    ?BATCH = length(lists:usort(Pids)),
    lists:foreach(fun({K, I}) when I rem 2 =:= 0 -> ok = shoal:stop_worker(cyc, K);
                     ({K, _}) -> ok = shoal:call(cyc, K, {stop, normal})
                  end, lists:zip(Keys, lists:seq(1, ?BATCH))).

%% Every worker gone and counted by its segment.
settle(Pool) ->
    Deadline = erlang:monotonic_time(millisecond) + 30000,
    wait(fun() ->
                 S = shoal:stats(Pool),
                 shoal:count(Pool) =:= 0 andalso
                     maps:get(spawns, S) =:= maps:get(normal_exits, S) + maps:get(crashes, S)
         end, Deadline).

wait(F, Deadline) ->
    case F() of
        true -> ok;
        false ->
            erlang:monotonic_time(millisecond) < Deadline orelse error(did_not_settle),
            receive after 10 -> wait(F, Deadline) end
    end.

memory() ->
    [erlang:garbage_collect(P) || P <- processes()],
    erlang:memory(total).
