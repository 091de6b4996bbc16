%% shoal_bench: Shoal against what a user would pick instead, in one run, on the same keys.
%%
%% Four questions, each answered with both sides and their ratio:
%%   1. key -> pid: shoal:whereis/2 vs ets:lookup/2 (plain set, read_concurrency set),
%%      Elixir Registry.lookup/2 (unique, partitions = schedulers) and pg:get_members/2,
%%      with N/5, N/2 and N (200 k, 500 k, 1 M) live processes, 1 and 2 concurrent readers.
%%   2. starting 1 M workers: shoal (sync from one caller, async, many callers) vs a
%%      simple_one_for_one supervisor whose workers register in ETS, and vs Elixir
%%      DynamicSupervisor + Registry ({:via, Registry, ...} names).
%%   3. a routed shoal:call/3 vs gen_server:call/2 on the pid in hand.
%%   4. bytes per idle worker, registry entry included.
%%
%% This module is also the worker of every side: a shoal_worker (init/2), a gen_server
%% (init/1 with a {gs, ...} argument) and the baseline supervisor (init/1 with {sup, ...}),
%% so every side runs the same callback code.
%%
%% Every figure is taken over rounds that alternate the sides, and reported as the median
%% with its range (min–max), ratios per round. Writes single_node.md and its CSVs into
%% SHOAL_BENCH_RESULTS (scripts/bench.sh: bench/results for a full run, a scratch folder
%% for a reduced one). scripts/bench.sh compiles and runs it; SHOAL_BENCH_N scales it down
%% (default 1000000), SHOAL_BENCH_START_ROUNDS sets the start rounds (default 3).
-module(shoal_bench).

-export([main/0, main/1]).
%% shoal_worker
-export([init/2, handle_call/3, handle_cast/2, handle_info/2]).
%% gen_server and supervisor (the baselines)
-export([init/1]).

-define(POOL, shoal_bench_pool).
-define(REG, shoal_bench_registry).
-define(PG, shoal_bench_pg).
-define(RUNS, 5).
-define(WAIT_MS, 180000).

%%% ---------------------------------------------------------------------------------------
%%% Worker callbacks (shoal_worker, gen_server, supervisor)

init(Key, _Args) -> {ok, Key}.

init({gs, plain, Key}) ->
    {ok, Key};
init({gs, ets, Tab, Key}) ->
    %% The classic hand-rolled registry: the worker claims its key in init.
    case ets:insert_new(Tab, {Key, self()}) of
        true -> {ok, Key};
        false -> ignore
    end;
init({sup, ChildStart}) ->
    {ok, {#{strategy => simple_one_for_one, intensity => 0, period => 1},
          [#{id => worker, start => ChildStart, restart => temporary, type => worker}]}}.

handle_call(ping, _From, S) -> {reply, pong, S};
handle_call(_Msg, _From, S) -> {reply, ok, S}.

handle_cast(_Msg, S) -> {noreply, S}.

handle_info(_Msg, S) -> {noreply, S}.

%%% ---------------------------------------------------------------------------------------
%%% Entry point

main() -> main([]).

main(_) ->
    N = env_int("SHOAL_BENCH_N", 1000000),
    Small = env_int("SHOAL_BENCH_SMALL", max(1, N div 5)),
    Dir = env_str("SHOAL_BENCH_RESULTS", "bench/results"),
    Out = env_str("SHOAL_BENCH_OUT", filename:join(Dir, "single_node.md")),
    process_flag(trap_exit, true),
    ok = io:setopts(standard_io, [{encoding, unicode}]),
    ok = io:setopts(standard_error, [{encoding, unicode}]),
    {ok, _} = application:ensure_all_started(shoal),
    {ok, _} = application:ensure_all_started(elixir),
    rand:seed(exsss, {17, 42, 4711}),
    T0 = erlang:monotonic_time(millisecond),
    log("shoal bench: N=~b (small point ~b), ~b schedulers, OTP ~s, Elixir ~s",
        [N, Small, erlang:system_info(schedulers_online), erlang:system_info(otp_release),
         elixir_vsn()]),
    Keys = shuffled_keys(N),
    Only = env_str("SHOAL_BENCH_ONLY", "all"),   %% all | lookup | start
    Lookup = case Only of
                 "start" -> {error, skipped};
                 _ -> guard(fun() -> lookup_section(Keys, Small, N) end)
             end,
    Start = case Only of
                "lookup" -> {error, skipped};
                _ -> guard(fun() -> start_section(Keys, N) end)
            end,
    Elapsed = (erlang:monotonic_time(millisecond) - T0) / 1000,
    Md = unicode:characters_to_binary(report(N, Small, Lookup, Start, Elapsed)),
    io:put_chars(["\n", Md]),
    ok = filelib:ensure_dir(Out),
    ok = file:write_file(Out, Md),
    Csvs = write_csvs(filename:dirname(Out), Lookup, Start),
    log("wrote ~s and ~s (~.1f s)", [Out, lists:join(", ", Csvs), Elapsed]),
    ok.

%%% ---------------------------------------------------------------------------------------
%%% 1 + 3: key -> pid lookups, and routed calls, with Small and then N live processes

lookup_section(Keys, Small, N) ->
    ok = start_pool(?POOL),
    {ok, _} = 'Elixir.Registry':start_link([{keys, unique}, {name, ?REG},
                                             {partitions, erlang:system_info(schedulers)}]),
    {ok, _} = pg:start_link(?PG),
    Plain = ets:new(bench_plain, [set, public]),
    Rc = ets:new(bench_rc, [set, public, {read_concurrency, true}]),
    Tabs = #{plain => Plain, rc => Rc},
    %% The points: Small, N/2 and N live processes per side, filled one after the other.
    Sizes = lists:usort([S || S <- [Small, N div 2, N], S > 0]),
    {Points, Holders, _} =
        lists:foldl(fun(Size, {Ps, Hs, Have}) ->
                            More = fill(lists:sublist(Keys, Have + 1, Size - Have), Tabs),
                            P = {Size, lookups(list_to_tuple(lists:sublist(Keys, Size)), Size,
                                               {Plain, Rc})},
                            {Ps ++ [P], More ++ Hs, Size}
                    end, {[], [], 0}, Sizes),
    Call = guard(fun() -> calls(hd(Keys)) end),
    %% Kill the registries before their members: otherwise pg and the Registry partitions
    %% would first work through a million 'DOWN' / 'EXIT' messages each.
    Teardown = timed(fun() -> quietly(fun() ->
                             kill_proc(whereis(?PG)),
                             kill_proc(whereis(?REG)),
                             [exit(P, kill) || P <- Holders],
                             ets:delete(Plain),
                             ets:delete(Rc),
                             wait_procs_settle()
                     end) end),
    StopPool = timed(fun() -> ok = stop_pool(?POOL), wait_procs_settle() end),
    log("lookups: torn down, baselines ~.1f s, shoal:stop_pool/1 ~.1f s",
        [Teardown / 1.0e9, StopPool / 1.0e9]),
    #{points => Points, call => Call}.

%% Adds Keys to every side: shoal workers, and one plain receive-loop process per key that
%% registers itself in Registry, joins pg, and is entered in both ETS tables.
fill(Keys, #{plain := Plain, rc := Rc}) ->
    Have = shoal:count(?POOL),
    Want = Have + length(Keys),
    log("filling to ~b live processes per side", [Want]),
    Par = 2 * erlang:system_info(schedulers_online),
    {Tsh, _} = timer:tc(fun() ->
                                par_foreach(Keys, Par, fun(K) -> ok = shoal:ensure_started_async(?POOL, K) end),
                                ok = wait_count(Want)
                        end),
    Self = self(),
    {Tb, Holders} =
        timer:tc(fun() ->
                         Ps = par_map(Keys, Par,
                                      fun(K) ->
                                              P = spawn(fun() -> holder(Self, K) end),
                                              true = ets:insert(Plain, {K, P}),
                                              true = ets:insert(Rc, {K, P}),
                                              P
                                      end),
                         %% Count the acks: matching them pid by pid would scan the mailbox.
                         ok = await_n(registered, length(Ps)),
                         Ps
                 end),
    log("  shoal ~.1f s, baselines (spawn + Registry + pg + ETS) ~.1f s", [Tsh / 1.0e6, Tb / 1.0e6]),
    Holders.

await_n(_, 0) -> ok;
await_n(Tag, N) -> receive {Tag, _} -> await_n(Tag, N - 1) end.

holder(Parent, Key) ->
    {ok, _} = 'Elixir.Registry':register(?REG, Key, undefined),
    ok = pg:join(?PG, Key, self()),
    Parent ! {registered, self()},
    receive stop -> ok end.

lookups(KeyT, Live, Tabs) ->
    Ops = env_int("SHOAL_BENCH_LOOKUP_OPS", 2000000),
    SlowOps = max(1, Ops div 4),
    Variants = [{loop_overhead, "(loop overhead, no lookup)", Ops},
                {shoal, "shoal:whereis/2", Ops},
                {ets_plain, "ets:lookup/2, set", Ops},
                {ets_rc, "ets:lookup/2, set, read_concurrency", Ops},
                {registry, "Elixir Registry.lookup/2", SlowOps},
                {pg, "pg:get_members/2", SlowOps}],
    check_sides_agree(KeyT, Tabs),
    %% Runs go round-robin over the sides, so that a burst of load from elsewhere on the
    %% machine hits every side alike instead of one side's runs.
    Runs = [[{V, readers(1, V, KeyT, Tabs, VOps) / VOps, readers(2, V, KeyT, Tabs, VOps) / VOps}
             || {V, _, VOps} <- Variants]
            || _ <- lists:seq(1, ?RUNS)],
    %% Ratios are taken per run (each side against shoal in the same run), then summarised.
    Shoal = [{A, B} || Run <- Runs, {shoal, A, B} <- Run],
    [begin
         Mine = [{A, B} || Run <- Runs, {V1, A, B} <- Run, V1 =:= V],
         R1 = spread([A || {A, _} <- Mine]),
         R2 = spread([B || {_, B} <- Mine]),
         log("  ~b live  ~-40s 1 reader ~7.1f ns/op, 2 readers ~7.1f ns/op",
             [Live, Label, maps:get(med, R1), maps:get(med, R2)]),
         {V, Label,
          R1#{ratio => spread([A / SA || {{A, _}, {SA, _}} <- lists:zip(Mine, Shoal)])},
          R2#{ratio => spread([B / SB || {{_, B}, {_, SB}} <- lists:zip(Mine, Shoal)])}}
     end
     || {V, Label, _} <- Variants].

median(L) -> lists:nth((length(L) + 1) div 2, lists:sort(L)).

%% The median and the range of a list of figures from alternating rounds.
spread(L) -> #{med => median(L), min => lists:min(L), max => lists:max(L), n => length(L)}.

%% Every side must resolve the same key to a live process, or the timings mean nothing.
check_sides_agree(KeyT, {Plain, Rc}) ->
    Size = tuple_size(KeyT),
    Sample = [element(rand:uniform(Size), KeyT) || _ <- lists:seq(1, 1000)],
    lists:foreach(
      fun(K) ->
              P = shoal:whereis(?POOL, K),
              true = is_pid(P) andalso is_process_alive(P),
              [{K, B}] = ets:lookup(Plain, K),
              [{K, B}] = ets:lookup(Rc, K),
              [{B, _}] = 'Elixir.Registry':lookup(?REG, K),
              [B] = pg:get_members(?PG, K)
      end, Sample).

%% Runs Ops lookups in each of R reader processes at once; returns the wall time in ns.
readers(R, V, KeyT, Tabs, Ops) ->
    Self = self(),
    Size = tuple_size(KeyT),
    Scheds = erlang:system_info(schedulers_online),
    %% One reader per scheduler: a run this short ends before load balancing would move a
    %% second reader off the scheduler it was spawned on.
    Pids = [spawn_opt(fun() ->
                              Off = (I - 1) * (Size div R) + rand:uniform(Size),
                              receive go -> ok end,
                              ok = loop(V, Ops, Off, KeyT, Size, Tabs),
                              Self ! {done, self()}
                      end, [link, {scheduler, (I - 1) rem Scheds + 1}]) || I <- lists:seq(1, R)],
    erlang:garbage_collect(),
    T0 = erlang:monotonic_time(nanosecond),
    [P ! go || P <- Pids],
    [receive {done, P} -> ok end || P <- Pids],
    erlang:monotonic_time(nanosecond) - T0.

%% One tight loop per side so that no fun call sits between the loop and the lookup.
loop(_, 0, _, _, _, _) -> ok;
loop(loop_overhead, I, Off, KeyT, Size, Tabs) ->
    _ = id(element((I + Off) rem Size + 1, KeyT)),
    loop(loop_overhead, I - 1, Off, KeyT, Size, Tabs);
loop(shoal, I, Off, KeyT, Size, Tabs) ->
    _ = shoal:whereis(?POOL, element((I + Off) rem Size + 1, KeyT)),
    loop(shoal, I - 1, Off, KeyT, Size, Tabs);
loop(ets_plain, I, Off, KeyT, Size, {Plain, _} = Tabs) ->
    _ = ets:lookup(Plain, element((I + Off) rem Size + 1, KeyT)),
    loop(ets_plain, I - 1, Off, KeyT, Size, Tabs);
loop(ets_rc, I, Off, KeyT, Size, {_, Rc} = Tabs) ->
    _ = ets:lookup(Rc, element((I + Off) rem Size + 1, KeyT)),
    loop(ets_rc, I - 1, Off, KeyT, Size, Tabs);
loop(registry, I, Off, KeyT, Size, Tabs) ->
    _ = 'Elixir.Registry':lookup(?REG, element((I + Off) rem Size + 1, KeyT)),
    loop(registry, I - 1, Off, KeyT, Size, Tabs);
loop(pg, I, Off, KeyT, Size, Tabs) ->
    _ = pg:get_members(?PG, element((I + Off) rem Size + 1, KeyT)),
    loop(pg, I - 1, Off, KeyT, Size, Tabs).

id(X) -> X.

%% A routed call against a gen_server:call on the same pid, with the pool full.
calls(Key) ->
    Ops = env_int("SHOAL_BENCH_CALL_OPS", 300000),
    {ok, Pid} = shoal:ensure_started(?POOL, Key),
    pong = shoal:call(?POOL, Key, ping),
    pong = gen_server:call(Pid, ping),
    Runs = [{timed(fun() -> call_loop(Ops, Key) end) / Ops, timed(fun() -> gs_loop(Ops, Pid) end) / Ops}
            || _ <- lists:seq(1, ?RUNS)],
    Routed = spread([R || {R, _} <- Runs]),
    Direct = spread([D || {_, D} <- Runs]),
    log("  shoal:call ~b ns/op, gen_server:call ~b ns/op",
        [round(maps:get(med, Routed)), round(maps:get(med, Direct))]),
    {Routed#{ratio => spread([R / D || {R, D} <- Runs])}, Direct}.

call_loop(0, _) -> ok;
call_loop(I, Key) -> pong = shoal:call(?POOL, Key, ping), call_loop(I - 1, Key).

gs_loop(0, _) -> ok;
gs_loop(I, Pid) -> pong = gen_server:call(Pid, ping), gs_loop(I - 1, Pid).

%%% ---------------------------------------------------------------------------------------
%%% 2 + 4: starting N workers, and what each one costs at rest

start_section(Keys, N) ->
    Par = 2 * erlang:system_info(schedulers_online),
    Cases0 =
        [{"shoal, ensure_started/2, 1 caller", fun() -> shoal_start(Keys, N, sync) end},
         {"shoal, ensure_started_async/2, 1 caller", fun() -> shoal_start(Keys, N, async) end},
         {io_lib:format("shoal, ensure_started/2, ~b callers", [Par]),
          fun() -> shoal_start(Keys, N, {par, Par}) end},
         {"simple_one_for_one + ETS, 1 caller", fun() -> sup_ets_start(Keys, N, 1) end},
         {io_lib:format("simple_one_for_one + ETS, ~b callers", [Par]),
          fun() -> sup_ets_start(Keys, N, Par) end},
         {"DynamicSupervisor + Registry, 1 caller", fun() -> dynsup_start(Keys, N, 1) end},
         {io_lib:format("DynamicSupervisor + Registry, ~b callers", [Par]),
          fun() -> dynsup_start(Keys, N, Par) end}],
    %% SHOAL_BENCH_CASES=shoal,DynamicSupervisor keeps the cases whose label starts so.
    Cases = case env_str("SHOAL_BENCH_CASES", "") of
                "" -> Cases0;
                Want -> [C || {L, _} = C <- Cases0,
                              lists:any(fun(W) -> lists:prefix(W, lists:flatten(L)) end,
                                        string:lexemes(Want, ","))]
            end,
    %% Rounds go round-robin over the cases, each round starting one case further on, so
    %% that load from elsewhere on the machine hits every case alike.
    Rounds = env_int("SHOAL_BENCH_START_ROUNDS", 3),
    NCases = length(Cases),
    Runs = [begin
                {Before, After} = lists:split((Round - 1) rem max(1, NCases), Cases),
                [begin
                     log("start, round ~b/~b: ~s", [Round, Rounds, Label]),
                     R = guard(F),
                     cleanup(),
                     case R of
                         {ok, #{secs := Secs, started := Started, complete := Complete,
                                rate := Rate, bytes := Bytes, stop := StopSecs}} ->
                             log("  ~b workers in ~.2f s~s (~b workers/s), ~b bytes/worker, "
                                 "teardown ~.1f s",
                                 [Started, Secs,
                                  case Complete of true -> ""; false -> " (time budget hit)" end,
                                  round(Rate), round(Bytes), StopSecs]);
                         _ -> ok
                     end,
                     {Round, lists:flatten(Label), R}
                 end || {Label, F} <- After ++ Before]
            end || Round <- lists:seq(1, Rounds)],
    summarise_starts([lists:flatten(L) || {L, _} <- Cases], lists:append(Runs)).

%% Per case over the rounds: the median rate with its range, and the ratio of shoal's best
%% rate to the case's in the same round; a case that failed in any round shows the error.
summarise_starts(Labels, Runs) ->
    ShoalBest = maps:from_list(
                  [{Round, lists:max([Rate || {R, "shoal" ++ _, {ok, #{rate := Rate}}} <- Runs,
                                              R =:= Round] ++ [0])}
                   || Round <- lists:usort([R || {R, _, _} <- Runs])]),
    [{L, case [Err || {_, L1, {error, _} = Err} <- Runs, L1 =:= L] of
             [Err | _] -> Err;
             [] ->
                 Mine = [{R, M} || {R, L1, {ok, M}} <- Runs, L1 =:= L],
                 Ms = [M || {_, M} <- Mine],
                 Get = fun(K) -> [maps:get(K, M) || M <- Ms] end,
                 {ok, #{secs => median(Get(secs)), started => lists:min(Get(started)),
                        complete => lists:all(fun(C) -> C end, Get(complete)),
                        rate => spread(Get(rate)), bytes => lists:min(Get(bytes)),
                        stop => median(Get(stop)),
                        vs_shoal => spread([maps:get(R, ShoalBest) / max(1.0e-9, maps:get(rate, M))
                                            || {R, M} <- Mine])}}
         end}
     || L <- Labels].

%% Returns {StartSeconds, BytesPerWorker, TeardownSeconds}.
shoal_start(Keys, N, Mode) ->
    Before = mem_at_rest(),
    ok = start_pool(?POOL),
    Count = fun() -> shoal:count(?POOL) end,
    {T, Started, Complete} =
        case Mode of
            sync -> drive(Keys, 1, fun(K) -> {ok, _} = shoal:ensure_started(?POOL, K) end, Count);
            {par, Par} -> drive(Keys, Par, fun(K) -> {ok, _} = shoal:ensure_started(?POOL, K) end, Count);
            async ->
                %% Started means live: the clock stops when count/1 says they all exist.
                T0 = erlang:monotonic_time(nanosecond),
                {_, _, Fed} = drive(Keys, 1, fun(K) -> ok = shoal:ensure_started_async(?POOL, K) end, Count),
                Deadline = T0 div 1000000 + budget_ms(),
                Done = case Fed of
                           true -> catch wait_count(N, Deadline), shoal:count(?POOL);
                           false -> shoal:count(?POOL)
                       end,
                {erlang:monotonic_time(nanosecond) - T0, Done, Done =:= N}
        end,
    Live = shoal:count(?POOL),
    Complete andalso (Live =:= N orelse error({count_mismatch, Live, N})),
    Bytes = (mem_at_rest() - Before) / max(1, Live),
    Stop = timed(fun() -> ok = stop_pool(?POOL), wait_procs_settle() end),
    result(T, Started, Complete, Bytes, Stop).

sup_ets_start(Keys, _N, Par) ->
    Before = mem_at_rest(),
    Tab = ets:new(bench_sup_ets, [set, public, {read_concurrency, true}]),
    {ok, Sup} = supervisor:start_link(?MODULE, {sup, {gen_server, start_link, [?MODULE]}}),
    started(Sup),
    Ensure = fun(K) ->
                     case ets:lookup(Tab, K) of
                         [{_, P}] -> P;
                         [] -> {ok, P} = supervisor:start_child(Sup, [{gs, ets, Tab, K}, []]), P
                     end
             end,
    {T, Started, Complete} = drive(Keys, Par, Ensure, fun() -> ets:info(Tab, size) end),
    Live = ets:info(Tab, size),
    Bytes = (mem_at_rest() - Before) / max(1, Live),
    Stop = timed(fun() -> stop_proc(Sup), ets:delete(Tab), wait_procs_settle() end),
    result(T, Started, Complete, Bytes, Stop).

dynsup_start(Keys, _N, Par) ->
    Before = mem_at_rest(),
    {ok, Reg} = 'Elixir.Registry':start_link([{keys, unique}, {name, ?REG},
                                               {partitions, erlang:system_info(schedulers)}]),
    {ok, Sup} = 'Elixir.DynamicSupervisor':start_link([{strategy, one_for_one}]),
    started(Reg), started(Sup),
    Ensure = fun(K) ->
                     case 'Elixir.Registry':lookup(?REG, K) of
                         [{P, _}] -> P;
                         [] ->
                             Name = {via, 'Elixir.Registry', {?REG, K}},
                             Spec = #{id => K, restart => temporary,
                                      start => {gen_server, start_link,
                                                [Name, ?MODULE, {gs, plain, K}, []]}},
                             {ok, P} = 'Elixir.DynamicSupervisor':start_child(Sup, Spec),
                             P
                     end
             end,
    {T, Started, Complete} = drive(Keys, Par, Ensure, fun() -> 'Elixir.Registry':count(?REG) end),
    Live = 'Elixir.Registry':count(?REG),
    Bytes = (mem_at_rest() - Before) / max(1, Live),
    %% Killed, not shut down: Elixir 1.14's DynamicSupervisor stops its children with a
    %% selective receive per child (monitor_child/1) while their 'EXIT's pile up in its
    %% mailbox, which is quadratic: a million children do not finish in ten minutes.
    %% The registry goes first: its partitions take the workers down through their links,
    %% instead of first working through a million 'EXIT's.
    Stop = timed(fun() -> quietly(fun() -> kill_proc(Reg), kill_proc(Sup), wait_procs_settle() end) end),
    result(T, Started, Complete, Bytes, Stop).

%% After a failed case: whatever it left running goes, so the next case starts clean. The
%% baseline supervisors and registries are linked to this process; shoal's pool is not.
cleanup() ->
    _ = catch shoal:stop_pool(?POOL),
    [kill_proc(P) || P <- started()],
    erase(bench_started),
    [ets:delete(T) || T <- ets:all(), ets:info(T, owner) =:= self(),
                      ets:info(T, name) =:= bench_sup_ets],
    wait_procs_settle().

%% Remembers a baseline process for cleanup/0.
started(Pid) -> put(bench_started, [Pid | started()]), Pid.
started() -> case get(bench_started) of undefined -> []; L -> L end.

result(Nanos, Started, Complete, Bytes, StopNanos) ->
    #{secs => Nanos / 1.0e9, started => Started, complete => Complete,
      rate => Started / max(1.0e-9, Nanos / 1.0e9), bytes => Bytes, stop => StopNanos / 1.0e9}.

budget_ms() -> 1000 * env_int("SHOAL_BENCH_START_BUDGET", 60).

%% Applies Ensure to every key from Par processes (contiguous slices), within the time
%% budget: past it the callers stop where they are, so one slow side cannot stall the run.
%% Logs progress every 5 s. Returns {Nanos, KeysDone, Complete}.
drive(Keys, Par, Ensure, Count) ->
    Self = self(),
    Done = atomics:new(1, []),
    T0 = erlang:monotonic_time(nanosecond),
    Deadline = T0 div 1000000 + budget_ms(),
    Pids = [spawn_link(fun() -> Self ! {self(), drive_slice(S, Ensure, Done, Deadline)} end)
            || S <- slices(Keys, Par)],
    Complete = drive_wait(Pids, true, Count, T0),
    {erlang:monotonic_time(nanosecond) - T0, atomics:get(Done, 1), Complete}.

drive_slice([], _, _, _) -> true;
drive_slice(Keys, Ensure, Done, Deadline) ->
    case erlang:monotonic_time(millisecond) > Deadline of
        true -> false;
        false ->
            {Chunk, Rest} = take(1000, Keys, []),
            lists:foreach(Ensure, Chunk),
            atomics:add(Done, 1, length(Chunk)),
            drive_slice(Rest, Ensure, Done, Deadline)
    end.

take(0, L, Acc) -> {Acc, L};
take(_, [], Acc) -> {Acc, []};
take(N, [H | T], Acc) -> take(N - 1, T, [H | Acc]).

drive_wait([], Complete, _, _) -> Complete;
drive_wait([P | Ps] = All, Complete, Count, T0) ->
    receive
        {P, C} -> drive_wait(Ps, Complete andalso C, Count, T0)
    after 5000 ->
            log("  ... ~b live after ~.1f s", [Count(), (erlang:monotonic_time(nanosecond) - T0) / 1.0e9]),
            drive_wait(All, Complete, Count, T0)
    end.

%% erlang:memory(total) after every process has been garbage collected.
mem_at_rest() ->
    [erlang:garbage_collect(P) || P <- processes()],
    erlang:memory(total).

%%% ---------------------------------------------------------------------------------------
%%% Report

report(N, Small, Lookup, Start, Elapsed) ->
    {ok, Host} = inet:gethostname(),
    [io_lib:format("# Shoal single-node benchmark~n~n", []),
     io_lib:format("`make bench` (scripts/bench.sh, bench/shoal_bench.erl), one run, all sides on the "
                   "same keys. ~s, ~b schedulers, ~s, OTP ~s, Elixir ~s, shoal ~s, "
                   "N = ~b, whole run ~b s, load average at the end ~ts. Numbers on these 2-vCPU "
                   "machines drift by ±30% from run to run, more when other jobs load the machine; "
                   "the ratios are what to read.~n~n",
                   [Host, erlang:system_info(schedulers_online), mem_total(),
                    erlang:system_info(otp_release), elixir_vsn(), git_rev(), N, round(Elapsed),
                    loadavg()]),
     report_lookups(Lookup, Small),
     report_calls(Lookup),
     report_start(Start, N),
     report_memory(Start)].

report_lookups({ok, #{points := Points}}, _) ->
    Ops = env_int("SHOAL_BENCH_LOOKUP_OPS", 2000000),
    ["## Key -> pid\n\n",
     io_lib:format("~s keys in random order (a pre-shuffled tuple), every key live on every side; "
                   "~b lookups per reader per run (a quarter of that for Registry and pg), ~b runs "
                   "going round-robin over the sides. ns/op is wall time / lookups per reader, loop "
                   "included (its cost is the first row): the median of the runs, (min–max) below it. "
                   "\"× slower\" is that side's ns/op over shoal's in the same run: median (min–max) "
                   "of the runs. Plot: `lookup.png`; data: `single_node_lookup.csv`.~n~n",
                   [case env_str("SHOAL_BENCH_KEYS", "int") of "bin" -> "Binary (`<<\"user:N\">>`)"; _ -> "Integer" end,
                    Ops, ?RUNS]),
     [[io_lib:format("### ~s live processes per side~n~n", [thousands(Live)]),
       "| lookup | 1 reader ns/op | × slower than shoal | 2 readers ns/op | × slower than shoal |\n",
       "|---|---:|---:|---:|---:|\n",
       [io_lib:format("| ~ts | ~ts | ~ts | ~ts | ~ts |~n",
                      [Label, ns_cell(R1), ratio_cell(V, R1), ns_cell(R2), ratio_cell(V, R2)])
        || {V, Label, R1, R2} <- Rows],
       "\n"]
      || {Live, Rows} <- Points],
     lookup_verdict(Points)];
report_lookups(Err, _) ->
    ["## Key -> pid\n\nFAILED: ", io_lib:format("~p", [Err]), "\n\n"].

ns_cell(#{med := M, min := Lo, max := Hi}) -> io_lib:format("~.1f (~.1f–~.1f)", [M, Lo, Hi]).

ratio_cell(loop_overhead, _) -> "";
ratio_cell(shoal, _) -> "1.00";
ratio_cell(_, #{ratio := R}) -> spread_cell(R).

spread_cell(#{med := M, min := Lo, max := Hi}) -> io_lib:format("~.2f (~.2f–~.2f)", [M, Lo, Hi]).

lookup_verdict(Points) ->
    Lines =
        [begin
             Get = fun(V, I) -> maps:get(ratio, element(I, lists:keyfind(V, 1, Rows))) end,
             Best = fun(I) ->
                            %% the faster ETS variant: the one shoal beats by less
                            lists:min([maps:get(med, Get(E, I)) || E <- [ets_plain, ets_rc]])
                    end,
             io_lib:format("- ~s live: shoal is ~.2f× / ~.2f× faster than the best ETS variant "
                           "(1 / 2 readers, medians of the per-run ratios; target ≥ 2×) and "
                           "~.1f× / ~.1f× faster than Registry (target ≥ 10×).~n",
                           [thousands(Live), Best(3), Best(4),
                            maps:get(med, Get(registry, 3)), maps:get(med, Get(registry, 4))])
         end || {Live, Rows} <- Points],
    [Lines, "\n"].

report_calls({ok, #{call := {ok, {Routed, Direct}}}}) ->
    ["## Routed call\n\n",
     "`shoal:call(Pool, Key, ping)` (key -> pid in the NIF, then the call) against "
     "`gen_server:call(Pid, ping)` on the same worker pid, one caller, full pool; ",
     integer_to_list(?RUNS), " runs alternating the sides: median (min–max). "
     "Data: `single_node_call.csv`.\n\n",
     "| call | ns/op | ratio to gen_server:call |\n|---|---:|---:|\n",
     io_lib:format("| gen_server:call/2, pid in hand | ~ts | 1.00 |~n", [ns_cell(Direct)]),
     io_lib:format("| shoal:call/3 | ~ts | ~ts (target ≤ 1.15) |~n~n",
                   [ns_cell(Routed), spread_cell(maps:get(ratio, Routed))])];
report_calls({ok, #{call := Err}}) ->
    ["## Routed call\n\nFAILED: ", io_lib:format("~p", [Err]), "\n\n"];
report_calls(_) -> [].

report_start({ok, Rows}, N) ->
    Rates = [{L, maps:get(med, Rate)} || {L, {ok, #{rate := Rate}}} <- Rows],
    ShoalBest = lists:max([R || {"shoal" ++ _, R} <- Rates] ++ [0]),
    BaseBest = lists:max([R || {L, R} <- Rates, not lists:prefix("shoal", L)] ++ [0]),
    Rounds = env_int("SHOAL_BENCH_START_ROUNDS", 3),
    ["## Starting ", thousands(N), " workers\n\n",
     "Each side ensures every key is started, in the same random order: shoal through its API; "
     "the baselines look the key up first and start a child when it is absent (the worker claims "
     "its ETS row in init / registers its `{:via, Registry, ...}` name). A side gets ",
     integer_to_list(budget_ms() div 1000), " s (SHOAL_BENCH_START_BUDGET); one that runs out is "
     "stopped there and its rate is over the workers it did start. Teardown is stopping the pool "
     "/ the supervisor (and registry) until the processes are gone; the DynamicSupervisor is "
     "killed instead, because its graceful shutdown is quadratic in the number of children "
     "(Elixir 1.14, `DynamicSupervisor.monitor_child/1` does a selective receive per child "
     "behind a full mailbox of 'EXIT's) and does not finish for a million; its Registry is killed "
     "too (stopping it gracefully after the workers took two minutes). ",
     integer_to_list(Rounds), " rounds going round-robin over the cases: workers/s is the median "
     "(min–max); \"× faster\" is shoal's best rate over the case's in the same round, median "
     "(min–max); seconds and teardown are medians. Plot: `start.png`; data: "
     "`single_node_start.csv`.\n\n",
     "| how | workers started | seconds | workers/s | shoal's best is × faster | teardown s |\n"
     "|---|---:|---:|---:|---:|---:|\n",
     [case R of
          {ok, #{secs := S, started := St, complete := C, rate := Rate, stop := Stop,
                 vs_shoal := Vs}} ->
              io_lib:format("| ~ts | ~ts | ~.2f~ts | ~ts (~ts–~ts) | ~ts | ~.1f |~n",
                            [L, thousands(St), S, case C of true -> ""; false -> " (budget hit)" end,
                             thousands(round(maps:get(med, Rate))),
                             thousands(round(maps:get(min, Rate))),
                             thousands(round(maps:get(max, Rate))),
                             case L of
                                 "shoal" ++ _ -> "";
                                 _ -> spread_cell(Vs)
                             end,
                             Stop]);
          Err ->
              io_lib:format("| ~s | FAILED: ~s | | | | |~n", [L, oneline(Err)])
      end || {L, R} <- Rows],
     case [S || {"shoal" ++ _, {ok, #{secs := S, complete := true}}} <- Rows] of
         _ when BaseBest == 0; ShoalBest == 0 -> "\n";
         [] -> io_lib:format("~nno shoal variant started all ~s workers within the budget; its best "
                             "median rate is ~.2f× the best baseline's.~n~n",
                             [thousands(N), ShoalBest / BaseBest]);
         Secs -> io_lib:format("~nshoal's best: ~s workers in ~.2f s (median; target < 5 s); best "
                               "median rate ~.2f× the best baseline's.~n~n",
                               [thousands(N), lists:min(Secs), ShoalBest / BaseBest])
     end];
report_start(Err, _) ->
    ["## Starting workers\n\nFAILED: ", io_lib:format("~p", [Err]), "\n\n"].

report_memory({ok, Rows}) ->
    Mem = [{L, B} || {L, {ok, #{bytes := B}}} <- Rows],
    Pick = fun(Prefix) ->
                   case [B || {L, B} <- Mem, lists:prefix(Prefix, L)] of [] -> undefined; Bs -> lists:min(Bs) end
           end,
    Shoal = Pick("shoal"),
    Sides = [{"shoal (worker + NIF table entry + pool bookkeeping)", Shoal},
             {"simple_one_for_one child + ETS row", Pick("simple_one_for_one")},
             {"DynamicSupervisor child + Registry entry", Pick("DynamicSupervisor")}],
    ["## Memory per idle worker\n\n",
     "`erlang:memory(total)` after the start run minus before it, divided by the live workers, "
     "every process garbage collected first (lowest of the rounds per side). Supervisor, table and "
     "registry bookkeeping included.\n\n",
     "| side | bytes/worker | ratio to shoal |\n|---|---:|---:|\n",
     [case B of
          undefined -> io_lib:format("| ~s | FAILED | |~n", [L]);
          _ when Shoal =:= undefined -> io_lib:format("| ~s | ~b | |~n", [L, round(B)]);
          _ -> io_lib:format("| ~s | ~b | ~.2f |~n", [L, round(B), B / Shoal])
      end || {L, B} <- Sides],
     "\n"];
report_memory(_) -> [].

%%% ---------------------------------------------------------------------------------------
%%% CSV beside the markdown (bench/plots.gp draws the PNGs from them)

write_csvs(Dir, Lookup, Start) ->
    Files = [{"single_node_lookup.csv", lookup_csv(Lookup)},
             {"single_node_call.csv", call_csv(Lookup)},
             {"single_node_start.csv", start_csv(Start)}],
    [begin ok = file:write_file(filename:join(Dir, F), unicode:characters_to_binary(Rows)), F end
     || {F, Rows} <- Files, Rows =/= []].

%% Grouped by side and readers, then live processes: one line per (side, readers) in a plot.
lookup_csv({ok, #{points := Points}}) ->
    Rows = [{V, Readers, Live, S} || {Live, Rs} <- Points, {V, _, S1, S2} <- Rs, V =/= loop_overhead,
                                     {Readers, S} <- [{1, S1}, {2, S2}]],
    ["live,side,readers,ns_median,ns_min,ns_max,ratio_median,ratio_min,ratio_max\n",
     [csv_row([Live, V, Readers, M, Lo, Hi | ratio_cols(V, S)])
      || {V, Readers, Live, #{med := M, min := Lo, max := Hi} = S} <- lists:sort(Rows)]];
lookup_csv(_) -> [].

ratio_cols(shoal, _) -> [1.0, 1.0, 1.0];
ratio_cols(_, #{ratio := #{med := M, min := Lo, max := Hi}}) -> [M, Lo, Hi].

call_csv({ok, #{call := {ok, {Routed, Direct}}}}) ->
    ["side,ns_median,ns_min,ns_max,ratio_median,ratio_min,ratio_max\n",
     csv_row([gen_server_call | [maps:get(K, Direct) || K <- [med, min, max]] ++ [1.0, 1.0, 1.0]]),
     csv_row([shoal_call | [maps:get(K, Routed) || K <- [med, min, max]]
              ++ [maps:get(K, maps:get(ratio, Routed)) || K <- [med, min, max]]])];
call_csv(_) -> [].

start_csv({ok, Rows}) ->
    ["case,rounds,rate_median,rate_min,rate_max,seconds_median,started,complete,"
     "bytes_per_worker,teardown_s_median\n",
     [csv_row([L, N, M, Lo, Hi, S, St, C, B, Stop])
      || {L, {ok, #{rate := #{med := M, min := Lo, max := Hi, n := N}, secs := S, started := St,
                    complete := C, bytes := B, stop := Stop}}} <- Rows]];
start_csv(_) -> [].

csv_row(Cols) -> [lists:join($,, [csv_col(C) || C <- Cols]), $\n].

csv_col(F) when is_float(F) -> float_to_list(F, [{decimals, 3}]);
csv_col(I) when is_integer(I) -> integer_to_list(I);
csv_col(A) when is_atom(A) -> atom_to_list(A);
csv_col(S) -> [$", [case C of $" -> "\"\""; _ -> C end || C <- lists:flatten(S)], $"].

%%% ---------------------------------------------------------------------------------------
%%% Helpers

start_pool(Pool) ->
    Segs = env_int("SHOAL_BENCH_SEGMENTS", 0),
    Opts0 = #{worker => ?MODULE},
    Opts = case Segs of 0 -> Opts0; _ -> Opts0#{segments => Segs} end,
    {ok, _} = shoal:start_pool(Pool, Opts),
    ok.

stop_pool(Pool) -> shoal:stop_pool(Pool).

%% Stops a process we started linked (we trap exits) and waits until it is gone.
stop_proc(undefined) -> ok;
stop_proc(Pid) ->
    Ref = erlang:monitor(process, Pid),
    exit(Pid, shutdown),
    receive {'DOWN', Ref, process, Pid, _} -> ok end,
    receive {'EXIT', Pid, _} -> ok after 0 -> ok end.

%% Kills a baseline process and waits until it is gone. Killing a registry makes its
%% partitions log a crash report with their whole mailbox: the log is muted meanwhile.
kill_proc(undefined) -> ok;
kill_proc(Pid) ->
    quietly(fun() ->
                    Ref = erlang:monitor(process, Pid),
                    exit(Pid, kill),
                    receive {'DOWN', Ref, process, Pid, _} -> ok end
            end).

%% Runs F with the logger muted: a baseline torn down by force reports every child.
quietly(F) ->
    #{level := Level} = logger:get_primary_config(),
    ok = logger:set_primary_config(level, none),
    try F() after logger:set_primary_config(level, Level) end.

%% Waits until the process count stops falling (children of a stopped supervisor are
%% killed asynchronously) so that the next scenario starts from a quiet VM.
wait_procs_settle() -> wait_procs_settle(erlang:system_info(process_count), 0).

wait_procs_settle(_, Stable) when Stable >= 3 -> flush_exits();
wait_procs_settle(Last, Stable) ->
    timer:sleep(100),
    case erlang:system_info(process_count) of
        Last -> wait_procs_settle(Last, Stable + 1);
        Now -> wait_procs_settle(Now, 0)
    end.

flush_exits() -> receive {'EXIT', _, _} -> flush_exits() after 0 -> ok end.

wait_count(Want) -> wait_count(Want, erlang:monotonic_time(millisecond) + ?WAIT_MS).


wait_count(Want, Deadline) ->
    case shoal:count(?POOL) of
        C when C >= Want -> ok;
        C ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true -> error({timeout_waiting_for_count, C, Want});
                false -> timer:sleep(2), wait_count(Want, Deadline)
            end
    end.

%% Applies F to every element of L from Par processes (contiguous slices); waits for all.
par_foreach(L, 1, F) -> lists:foreach(F, L);
par_foreach(L, Par, F) -> _ = par_map(L, Par, F), ok.

par_map(L, Par, F) ->
    Self = self(),
    Slices = slices(L, Par),
    Pids = [spawn_link(fun() -> Self ! {self(), [F(X) || X <- S]} end) || S <- Slices],
    lists:append([receive {P, R} -> R end || P <- Pids]).

slices(L, Par) ->
    Len = max(1, (length(L) + Par - 1) div Par),
    slices_(L, Len).

slices_([], _) -> [];
slices_(L, Len) when length(L) =< Len -> [L];
slices_(L, Len) -> {H, T} = lists:split(Len, L), [H | slices_(T, Len)].

%% Integer keys by default; SHOAL_BENCH_KEYS=bin gives binaries like <<"user:42">>.
shuffled_keys(N) ->
    Key = case env_str("SHOAL_BENCH_KEYS", "int") of
              "bin" -> fun(I) -> <<"user:", (integer_to_binary(I))/binary>> end;
              _ -> fun(I) -> I end
          end,
    [K || {_, K} <- lists:sort([{rand:uniform(), Key(I)} || I <- lists:seq(1, N)])].

timed(F) ->
    T0 = erlang:monotonic_time(nanosecond),
    F(),
    erlang:monotonic_time(nanosecond) - T0.

guard(F) ->
    try {ok, F()}
    catch C:R:St ->
            log("FAILED: ~p:~p~n~p", [C, R, lists:sublist(St, 6)]),
            {error, {C, R}}
    end.

oneline(T) -> re:replace(io_lib:format("~0p", [T]), "\\|", "/", [global, {return, list}]).

log(Fmt, Args) -> io:format(standard_error, "[bench] " ++ Fmt ++ "~n", Args).

env_int(Name, Default) ->
    case os:getenv(Name) of
        false -> Default;
        "" -> Default;
        S -> list_to_integer(lists:filter(fun(C) -> C =/= $_ end, S))
    end.

env_str(Name, Default) ->
    case os:getenv(Name) of false -> Default; "" -> Default; S -> S end.

elixir_vsn() ->
    case application:get_key(elixir, vsn) of {ok, V} -> V; _ -> "?" end.

git_rev() ->
    case os:cmd("git rev-parse --short HEAD 2>/dev/null") of
        "" -> "?";
        S -> string:trim(S)
    end.

%% The 1, 5 and 15 minute load averages, as /proc/loadavg gives them.
loadavg() ->
    case file:read_file("/proc/loadavg") of
        {ok, B} -> lists:join(" / ", lists:sublist(string:lexemes(binary_to_list(B), " "), 3));
        _ -> "?"
    end.

mem_total() ->
    case file:read_file("/proc/meminfo") of
        {ok, <<"MemTotal:", Rest/binary>>} ->
            [Kb | _] = string:lexemes(binary_to_list(Rest), " \n"),
            io_lib:format("~b GB RAM", [round(list_to_integer(Kb) / 1048576)]);
        _ -> "? RAM"
    end.

thousands(N) when is_integer(N), N >= 1000000, N rem 1000000 =:= 0 -> io_lib:format("~b M", [N div 1000000]);
thousands(N) when is_integer(N), N >= 1000, N rem 1000 =:= 0 -> io_lib:format("~b k", [N div 1000]);
thousands(N) when is_integer(N), N < 0 -> "-" ++ thousands(-N);
thousands(N) when is_integer(N) -> group(lists:reverse(integer_to_list(N)), []).

group([A, B, C, D | T], Acc) -> group([D | T], [$,, C, B, A | Acc]);
group(L, Acc) -> lists:reverse(L) ++ Acc.
