%% shoal_tools_bench: the pool tools against what a user would pick instead, in one run.
%%
%%   1. dispatch overhead: shoal_fixed:call/2 vs gen_server:call/2 on the pool's own
%%      worker pids in hand (target: at most 1.2x the time), and vs one gen_server pid in
%%      hand, one caller;
%%   2. fixed-pool call and cast with 1, 8 and 64 concurrent callers, against poolboy
%%      (checkout, call or cast, checkin) and against a single gen_server (target: at
%%      least 3x poolboy's throughput at 64 callers);
%%   3. shoal_shared with shared state against one gen_server holding the same map,
%%      read-heavy, 64 callers (target: at least 1.5x on 2 cores);
%%   4. shoal_tasks (run + await_many) against Elixir's Task.async_stream with the same
%%      max_concurrency;
%%   5. shoal_batcher:push/2 against gen_server:cast/2, end to end (until handled).
%%
%% Every comparison runs both sides in alternating order over ROUNDS rounds and reports
%% each side's median and the ratio's median with its min..max over the rounds. Every
%% side runs the same callback code (shoal_tools_bench_worker).
%%
%% scripts/bench.sh (make bench) and `make bench-tools' run it; it writes
%% bench/results/tools.md. SHOAL_TOOLS_BENCH_SCALE (default 1.0) scales the op counts,
%% SHOAL_TOOLS_BENCH_ROUNDS (default 5) the rounds.
-module(shoal_tools_bench).

-export([main/0]).

-define(W, shoal_tools_bench_worker).
-define(POOL_SIZE, 8).
-define(TASKS_CONCURRENCY, 8).

main() ->
    Scale = env_float("SHOAL_TOOLS_BENCH_SCALE", 1.0),
    Rounds = env_int("SHOAL_TOOLS_BENCH_ROUNDS", 5),
    Out = env_str("SHOAL_TOOLS_BENCH_OUT", "bench/results/tools.md"),
    {ok, _} = application:ensure_all_started(shoal),
    {ok, _} = application:ensure_all_started(elixir),
    logger:set_primary_config(level, error),
    T0 = erlang:monotonic_time(millisecond),
    log("shoal tools bench: scale ~p, ~b rounds, ~b schedulers, OTP ~s",
        [Scale, Rounds, erlang:system_info(schedulers_online), erlang:system_info(otp_release)]),
    N = fun(X) -> max(1000, round(X * Scale)) end,
    ParBefore = parallelism(),
    log("parallel speedup of ~b CPU-bound processes over one: ~.2f", [erlang:system_info(schedulers_online), ParBefore]),
    Rows = lists:append(
             [dispatch_overhead(N(200000), Rounds),
              fixed_calls(N(200000), Rounds),
              fixed_casts(N(200000), Rounds),
              shared_reads(N(200000), Rounds),
              tasks(N(20000), Rounds),
              batcher(N(400000), Rounds)]),
    ParAfter = parallelism(),
    log("parallel speedup at the end: ~.2f", [ParAfter]),
    Elapsed = (erlang:monotonic_time(millisecond) - T0) / 1000,
    Md = report(Rows, Scale, Rounds, Elapsed, {ParBefore, ParAfter}),
    io:put_chars(["\n", Md]),
    ok = filelib:ensure_dir(Out),
    ok = file:write_file(Out, Md),
    log("wrote ~s (~.1f s)", [Out, Elapsed]),
    ok.

%%% 1. Dispatch overhead ------------------------------------------------------------------

dispatch_overhead(Ops, Rounds) ->
    with_fixed(fun(Pool) ->
        {ok, Gs} = ?W:start_link(#{}),
        %% The pool's own workers, in hand: the same calls to the same processes, picked
        %% round robin from a tuple the caller holds. The difference is the dispatch.
        Pids = list_to_tuple([shoal_fixed:pid(Pool, I) || I <- lists:seq(0, ?POOL_SIZE - 1)]),
        InHand = fun() -> ops_per_s_i(1, Ops, fun(I) ->
                     gen_server:call(element(I rem ?POOL_SIZE + 1, Pids), {echo, 1}) end) end,
        Shoal = {"shoal_fixed:call/2", fun() -> ops_per_s(1, Ops, fun() -> shoal_fixed:call(Pool, {echo, 1}) end) end},
        Rows = [compare(#{name => "dispatch overhead: call, 1 caller, vs the pool's worker pids in hand (ns/call; ratio = time)",
                          callers => 1, unit => ns, target => {'=<', 1.2}},
                        Shoal, {"gen_server:call/2, worker pids in hand, round robin", InHand}, Rounds),
                compare(#{name => "call, 1 caller, vs one gen_server pid in hand (ns/call; ratio = time)",
                          callers => 1, unit => ns, target => none},
                        Shoal,
                        {"gen_server:call/2, one pid in hand", fun() -> ops_per_s(1, Ops, fun() -> gen_server:call(Gs, {echo, 1}) end) end},
                        Rounds)],
        stop(Gs),
        Rows
    end).

%%% 2. Fixed pool: calls and casts --------------------------------------------------------

fixed_calls(Ops, Rounds) ->
    with_fixed(fun(Pool) -> with_poolboy(fun(Boy) ->
        {ok, Gs} = ?W:start_link(#{}),
        Shoal = fun(C) -> {"shoal_fixed:call/2", fun() -> ops_per_s(C, Ops, fun() -> shoal_fixed:call(Pool, {echo, 1}) end) end} end,
        Rows = lists:append(
                 [[compare(#{name => "fixed pool call vs poolboy (checkout, call, checkin)", callers => C,
                             unit => ops, target => case C of 64 -> {'>=', 3.0}; _ -> none end},
                           Shoal(C),
                           {"poolboy", fun() -> ops_per_s(C, Ops, fun() ->
                               poolboy:transaction(Boy, fun(W) -> gen_server:call(W, {echo, 1}) end) end) end},
                           Rounds),
                   compare(#{name => "fixed pool call vs one gen_server", callers => C, unit => ops, target => none},
                           Shoal(C),
                           {"gen_server:call/2", fun() -> ops_per_s(C, Ops, fun() -> gen_server:call(Gs, {echo, 1}) end) end},
                           Rounds)]
                  || C <- [1, 8, 64]]),
        stop(Gs),
        Rows
    end) end).

fixed_casts(Ops, Rounds) ->
    with_fixed(fun(Pool) -> with_poolboy(fun(Boy) ->
        {ok, Gs} = ?W:start_link(#{}),
        Shoal = fun(C) -> {"shoal_fixed:cast/2", fun() -> handled_per_s(C, Ops, fun(Ctr) ->
                     fun() -> shoal_fixed:cast(Pool, {count, Ctr}) end end) end} end,
        Rows = lists:append(
                 [[compare(#{name => "fixed pool cast vs poolboy (checkout, cast, checkin), until handled",
                             callers => C, unit => ops, target => none},
                           Shoal(C),
                           {"poolboy", fun() -> handled_per_s(C, Ops, fun(Ctr) -> fun() ->
                               poolboy:transaction(Boy, fun(W) -> gen_server:cast(W, {count, Ctr}) end) end end) end},
                           Rounds),
                   compare(#{name => "fixed pool cast vs one gen_server, until handled", callers => C,
                             unit => ops, target => none},
                           Shoal(C),
                           {"gen_server:cast/2", fun() -> handled_per_s(C, Ops, fun(Ctr) ->
                               fun() -> gen_server:cast(Gs, {count, Ctr}) end end) end},
                           Rounds)]
                  || C <- [1, 8, 64]]),
        stop(Gs),
        Rows
    end) end).

with_fixed(Fun) ->
    Pool = shoal_tools_bench_fixed,
    {ok, Sup} = shoal_fixed:start_link(Pool, #{worker => ?W, size => ?POOL_SIZE, args => #{}}),
    try Fun(Pool) after unlink(Sup), ok = shoal_fixed:stop(Pool) end.

with_poolboy(Fun) ->
    {ok, Boy} = poolboy:start_link([{worker_module, ?W}, {size, ?POOL_SIZE}, {max_overflow, 0}], #{}),
    try Fun(Boy) after unlink(Boy), stop(Boy) end.

%%% 3. Shared state -----------------------------------------------------------------------

shared_reads(Ops, Rounds) ->
    State = maps:from_list([{K, K} || K <- lists:seq(0, 999)]),
    Size = erlang:system_info(schedulers),
    {ok, Sup} = shoal_shared:start_link(shoal_tools_bench_shared, ?W, State, #{size => Size}),
    {ok, Gs} = ?W:start_link(State),
    P = shoal_tools_bench_shared,
    Mix = fun(WritesPer100, Read) ->
                  fun(I) -> case I rem 100 < WritesPer100 of
                                true -> {put, I rem 1000, I};
                                false -> {Read, I rem 1000}
                            end end
          end,
    %% {Label, request mix, ops per measurement}: the heavy reads get fewer ops.
    Cases = [{"100% reads (one map lookup)", Mix(0, get), Ops},
             {"95% reads, 5% writes (map lookup / put)", Mix(5, get), Ops},
             {"100% reads of ~50 lookups each", Mix(0, scan), Ops},
             {"95% reads of ~50 lookups, 5% writes", Mix(5, scan), Ops},
             {"100% reads of ~500 lookups each", Mix(0, scan500), max(1000, Ops div 10)},
             {"95% reads of ~500 lookups, 5% writes", Mix(5, scan500), max(1000, Ops div 10)}],
    Rows = [compare(#{name => "shoal_shared (shared state, size " ++ integer_to_list(Size) ++
                          ") vs one gen_server: " ++ Label,
                      callers => 64, unit => ops, target => {'>=', 1.5}},
                    {"shoal_shared:call/2", fun() -> ops_per_s_i(64, N, fun(I) -> shoal_shared:call(P, Req(I)) end) end},
                    {"gen_server:call/2", fun() -> ops_per_s_i(64, N, fun(I) -> gen_server:call(Gs, Req(I)) end) end},
                    Rounds)
            || {Label, Req, N} <- Cases],
    stop(Gs),
    unlink(Sup),
    ok = shoal_shared:stop(P),
    Rows.

%%% 4. Tasks ------------------------------------------------------------------------------

tasks(Ops, Rounds) ->
    R = shoal_tools_bench_tasks,
    {ok, Pid} = shoal_tasks:start_link(R, #{limit => ?TASKS_CONCURRENCY}),
    Work = fun() -> lists:sum(lists:seq(1, 100)) end,
    Items = lists:seq(1, Ops),
    Row = compare(#{name => "shoal_tasks run + await_many vs Task.async_stream, max_concurrency " ++
                        integer_to_list(?TASKS_CONCURRENCY) ++ ", one caller",
                    callers => 1, unit => ops, target => none},
                  {"shoal_tasks", fun() -> timed_ops(Ops, fun() ->
                       Refs = [shoal_tasks:run(R, Work) || _ <- Items],
                       _ = shoal_tasks:await_many(R, Refs, infinity) end) end},
                  {"Task.async_stream", fun() -> timed_ops(Ops, fun() ->
                       S = 'Elixir.Task':async_stream(Items, fun(_) -> Work() end,
                                                      [{max_concurrency, ?TASKS_CONCURRENCY}]),
                       _ = 'Elixir.Enum':to_list(S) end) end},
                  Rounds),
    unlink(Pid),
    ok = shoal_tasks:stop(R),
    [Row].

%%% 5. Batcher ----------------------------------------------------------------------------

batcher(Ops, Rounds) ->
    B = shoal_tools_bench_batcher,
    Ctr = counters:new(1, [write_concurrency]),
    {ok, Sup} = shoal_batcher:start_link(B, #{handler => ?W, args => #{count => Ctr},
                                              limit => 100, timeout => infinity}),
    {ok, Gs} = ?W:start_link(#{}),
    Rows = [compare(#{name => "shoal_batcher:push/2 (limit 100) vs gen_server:cast/2, until handled",
                      callers => C, unit => ops, target => none},
                    {"shoal_batcher:push/2", fun() ->
                         counters:put(Ctr, 1, 0),
                         timed_ops(Ops, fun() ->
                             run_callers(C, Ops div C, fun() -> shoal_batcher:push(B, x) end),
                             ok = shoal_batcher:flush(B, infinity),
                             wait_count(Ctr, (Ops div C) * C) end) end},
                    {"gen_server:cast/2", fun() -> handled_per_s(C, Ops, fun(Ctr2) ->
                         fun() -> gen_server:cast(Gs, {count, Ctr2}) end end) end},
                    Rounds)
            || C <- [1, 8]],
    stop(Gs),
    unlink(Sup),
    ok = shoal_batcher:stop(B),
    Rows.

%%% Measuring -----------------------------------------------------------------------------

%% What the machine gives this VM right now: the time of one CPU-bound loop over the time
%% of one such loop per scheduler, all at once (2.0 on an idle 2-core machine; about 1.0
%% when other jobs take the second core). Median of 3.
parallelism() ->
    Work = fun() -> lists:foldl(fun(I, A) -> A + I * I end, 0, lists:seq(1, 1000000)) end,
    S = erlang:system_info(schedulers_online),
    median([begin
                {T1, _} = timer:tc(Work),
                Self = self(),
                {TN, _} = timer:tc(fun() ->
                              [spawn(fun() -> Work(), Self ! par_done end) || _ <- lists:seq(1, S)],
                              [receive par_done -> ok end || _ <- lists:seq(1, S)] end),
                S * T1 / TN
            end || _ <- [1, 2, 3]]).

%% Both sides, alternating which goes first, Rounds times.
compare(Meta, {NameA, A}, {NameB, B}, Rounds) ->
    Pairs = [begin
                 garbage_collect(),
                 case R rem 2 of
                     1 -> VA = A(), VB = B(), {VA, VB};
                     0 -> VB = B(), VA = A(), {VA, VB}
                 end
             end || R <- lists:seq(1, Rounds)],
    As = [X || {X, _} <- Pairs],
    Bs = [Y || {_, Y} <- Pairs],
    %% ops/s: ratio A/B (higher is better); ns: time ratio = B's ops/s over A's.
    Ratios = case maps:get(unit, Meta) of
                 ops -> [X / Y || {X, Y} <- Pairs];
                 ns -> [Y / X || {X, Y} <- Pairs]
             end,
    Row = Meta#{a => NameA, b => NameB, a_med => median(As), b_med => median(Bs),
                ratio => median(Ratios), ratio_min => lists:min(Ratios),
                ratio_max => lists:max(Ratios)},
    log("~s, ~b caller(s): ~s ~s, ~s ~s, ratio ~.2f (~.2f..~.2f)",
        [maps:get(name, Row), maps:get(callers, Row), NameA, fmt(Row, a_med), NameB,
         fmt(Row, b_med), maps:get(ratio, Row), maps:get(ratio_min, Row), maps:get(ratio_max, Row)]),
    Row.

%% C callers, Total ops in all, each op Op(): ops per second from the first to the last.
ops_per_s(C, Total, Op) -> ops_per_s_i(C, Total, fun(_) -> Op() end).

ops_per_s_i(C, Total, Op) ->
    Per = max(1, Total div C),
    timed_ops(Per * C, fun() -> run_callers_i(C, Per, Op) end).

%% Ops that complete asynchronously: each op gets the counter its handler bumps; ops
%% per second until the counter shows every one handled.
handled_per_s(C, Total, MakeOp) ->
    Ctr = counters:new(1, [write_concurrency]),
    Per = max(1, Total div C),
    Op = MakeOp(Ctr),
    timed_ops(Per * C, fun() -> run_callers(C, Per, Op), wait_count(Ctr, Per * C) end).

timed_ops(Ops, Fun) ->
    T0 = erlang:monotonic_time(nanosecond),
    _ = Fun(),
    Ops / ((erlang:monotonic_time(nanosecond) - T0) / 1.0e9).

run_callers(C, Per, Op) -> run_callers_i(C, Per, fun(_) -> Op() end).

run_callers_i(C, Per, Op) ->
    Parent = self(),
    Pids = [spawn_link(fun() -> receive go -> ok end,
                                loop(Op, Per, I * Per),
                                Parent ! {done, self()} end) || I <- lists:seq(1, C)],
    [P ! go || P <- Pids],
    [receive {done, P} -> ok end || P <- Pids],
    ok.

loop(_Op, 0, _I) -> ok;
loop(Op, N, I) -> _ = Op(I), loop(Op, N - 1, I + 1).

wait_count(Ctr, Total) ->
    case counters:get(Ctr, 1) >= Total of
        true -> ok;
        false -> receive after 1 -> wait_count(Ctr, Total) end
    end.

median(L) -> lists:nth((length(L) + 1) div 2, lists:sort(L)).

stop(Pid) ->
    Ref = erlang:monitor(process, Pid),
    exit(Pid, shutdown),
    receive {'DOWN', Ref, _, _, _} -> ok end.

%%% Report --------------------------------------------------------------------------------

report(Rows, Scale, Rounds, Elapsed, {ParBefore, ParAfter}) ->
    Head = io_lib:format(
             "# Pool tools benchmark\n\n"
             "`make bench-tools` (also part of `make bench`; bench/shoal_tools_bench.erl), one run, "
             "both sides of each row alternating over ~b rounds. ~s, ~b schedulers, OTP ~s, "
             "shoal ~s, scale ~p, whole run ~b s. Numbers on these shared 2-vCPU machines "
             "drift by ±30% from run to run; read the ratios, with their spread. "
             "Parallel speedup the machine gave this VM (~b CPU-bound processes over one, "
             "~b on an idle machine): ~.2f at the start, ~.2f at the end; where a row depends "
             "on using both cores (the pools against one process), it is bounded by that.\n\n"
             "Pools: shoal_fixed and poolboy with ~b workers (poolboy max_overflow 0), "
             "shoal_shared with one worker per scheduler, shoal_tasks limit = "
             "Task.async_stream max_concurrency = ~b. Every side runs the same callback "
             "module (bench/shoal_tools_bench_worker.erl).\n\n"
             "| case | callers | Shoal | alternative | Shoal | alternative | ratio median (min..max) | target | met |\n"
             "|---|---:|---|---|---:|---:|---:|---|---|\n",
             [Rounds, hostname(), erlang:system_info(schedulers_online),
              erlang:system_info(otp_release), git_rev(), Scale, round(Elapsed),
              erlang:system_info(schedulers_online), erlang:system_info(schedulers_online),
              ParBefore, ParAfter, ?POOL_SIZE, ?TASKS_CONCURRENCY]),
    Lines = [io_lib:format("| ~ts | ~b | ~ts | ~ts | ~ts | ~ts | **~.2f** (~.2f..~.2f) | ~ts | ~ts |\n",
                           [maps:get(name, R), maps:get(callers, R), maps:get(a, R), maps:get(b, R),
                            fmt(R, a_med), fmt(R, b_med), maps:get(ratio, R),
                            maps:get(ratio_min, R), maps:get(ratio_max, R),
                            target(maps:get(target, R)), met(R)])
             || R <- Rows],
    unicode:characters_to_binary([Head, Lines,
        "\nops/s columns are operations per second (for casts and pushes: handled per second, "
        "end to end); the ns row is wall time per call. A ratio above 1 means Shoal is "
        "faster, except in the ns row, where it is Shoal's time over the alternative's.\n"]).

fmt(R, K) ->
    V = maps:get(K, R),
    case maps:get(unit, R) of
        ns -> io_lib:format("~b ns", [round(1.0e9 / V)]);
        ops when V >= 1.0e6 -> io_lib:format("~.2f M/s", [V / 1.0e6]);
        ops -> io_lib:format("~b k/s", [round(V / 1.0e3)])
    end.

target(none) -> "";
target({'=<', X}) -> io_lib:format("≤ ~.1f×", [X]);
target({'>=', X}) -> io_lib:format("≥ ~.1f×", [X]).

met(#{target := none}) -> "";
met(#{target := {'=<', X}, ratio := R}) when R =< X -> "yes";
met(#{target := {'>=', X}, ratio := R}) when R >= X -> "yes";
met(_) -> "**no**".

hostname() -> {ok, H} = inet:gethostname(), H.

git_rev() ->
    case os:cmd("git rev-parse --short HEAD 2>/dev/null") of
        "" -> "?";
        S -> string:trim(S)
    end.

log(Fmt, Args) -> io:format(standard_error, "[tools bench] " ++ Fmt ++ "~n", Args).

env_int(K, D) -> case os:getenv(K) of false -> D; V -> list_to_integer(V) end.
env_float(K, D) ->
    case os:getenv(K) of
        false -> D;
        V -> try list_to_float(V) catch error:badarg -> float(list_to_integer(V)) end
    end.
env_str(K, D) -> case os:getenv(K) of false -> D; V -> V end.
