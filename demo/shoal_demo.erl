%% shoal_demo: what Shoal does, on one node, in about a minute (`make demo`).
%%
%% Steps, each a function of the shared demo state, so that the cluster demo can insert
%% its own (start peers, spread the pool, drain a node) between them:
%%   1. start a pool
%%   2. spawn a million workers (live progress bar)
%%   3. route a million calls to random keys
%%   4. crash a thousand workers; their next call brings them back
%%   5. idle offloading in a second pool
%%   6. the pools' stats
%% This module is also the demo's worker (shoal_worker callbacks below).
%% SHOAL_DEMO_N scales it (default 1000000 workers and calls).
-module(shoal_demo).

-export([main/0, steps/0, run/2]).
%% live lines, shared with shoal_cluster_demo
-export([live/3, end_live/0]).
%% steps, exported so that other demos can reuse them
-export([start_pool/1, spawn_workers/1, route_calls/1, crash_workers/1, idle_offload/1,
         show_stats/1, stop_pools/1]).
%% shoal_worker
-export([init/2, handle_call/3, handle_cast/2, handle_info/2]).

-define(POOL, demo_users).
-define(IDLE_POOL, demo_sessions).

%%% ---------------------------------------------------------------------------------------
%%% The worker: a counter per key.

init(Key, _Args) -> {ok, #{key => Key, calls => 0}}.

handle_call(ping, _From, S = #{calls := C}) -> {reply, pong, S#{calls := C + 1}};
handle_call(whoami, _From, S) -> {reply, {self(), maps:get(calls, S)}, S};
handle_call(crash, _From, _S) -> exit(demo_crash).

handle_cast(_Msg, S) -> {noreply, S}.

handle_info(_Msg, S) -> {noreply, S}.

%%% ---------------------------------------------------------------------------------------
%%% Running

main() ->
    ok = io:setopts(standard_io, [{encoding, unicode}]),
    process_flag(trap_exit, true),
    {ok, _} = application:ensure_all_started(shoal),
    N = env_int("SHOAL_DEMO_N", 1000000),
    T0 = erlang:monotonic_time(millisecond),
    Result = run(steps(), #{n => N, failed => []}),
    Secs = (erlang:monotonic_time(millisecond) - T0) / 1000,
    case maps:get(failed, Result) of
        [] -> say("~nDemo done in ~.1f s.~n", [Secs]), ok;
        Failed -> say("~nDemo done in ~.1f s; FAILED steps: ~p~n", [Secs, lists:reverse(Failed)]), error
    end.

steps() ->
    [{"Start a pool", fun start_pool/1},
     {"Spawn workers", fun spawn_workers/1},
     {"Route calls", fun route_calls/1},
     {"Crash workers and watch them come back", fun crash_workers/1},
     {"Idle offloading", fun idle_offload/1},
     {"Stats", fun show_stats/1},
     {"Stop the pools", fun stop_pools/1}].

%% Runs the steps in order; a failing step is reported and the rest still run.
run(Steps, State0) ->
    {_, State} =
        lists:foldl(
          fun({Title, F}, {I, S}) ->
                  say("~n== ~b. ~s~n", [I, Title]),
                  S2 = try F(S)
                       catch C:R:St ->
                               say("   FAILED: ~p:~p~n   ~p~n", [C, R, lists:sublist(St, 4)]),
                               S#{failed := [Title | maps:get(failed, S)]}
                       end,
                  flush_exits(),
                  {I + 1, S2}
          end, {1, State0}, Steps),
    State.

%%% ---------------------------------------------------------------------------------------
%%% Steps

start_pool(S) ->
    {ok, Pid} = shoal:start_pool(?POOL, #{worker => ?MODULE}),
    say("   shoal:start_pool(~p, #{worker => ~p}) -> {ok, ~p}~n", [?POOL, ?MODULE, Pid]),
    say("   ~b segment supervisors by default; no worker exists yet: count = ~b~n",
        [erlang:system_info(schedulers) * 4, shoal:count(?POOL)]),
    S.

spawn_workers(S = #{n := N}) ->
    Keys = lists:seq(1, N),
    Callers = 2 * erlang:system_info(schedulers_online),
    say("   ~s workers, ensure_started/2 from ~b processes:~n", [fmt(N), Callers]),
    Ms = with_progress(N, fun() -> shoal:count(?POOL) end,
                       fun() -> par(Keys, Callers, fun(K) -> {ok, _} = shoal:ensure_started(?POOL, K) end) end),
    Live = shoal:count(?POOL),
    say("   ~s live workers in ~.2f s (~s workers/s); ~s of memory in total~n",
        [fmt(Live), Ms / 1000, fmt(round(N / (Ms / 1000))), mb(erlang:memory(total))]),
    Live = N,
    S.

route_calls(S = #{n := N}) ->
    Callers = 2 * erlang:system_info(schedulers_online),
    Done = atomics:new(1, []),
    PerCaller = N div Callers,
    Total = PerCaller * Callers,
    say("   ~s calls to random keys, shoal:call/3 from ~b processes:~n", [fmt(Total), Callers]),
    Ms = with_progress(Total, fun() -> atomics:get(Done, 1) end,
                       fun() -> par(lists:seq(1, Callers), Callers,
                                    fun(_) -> call_loop(PerCaller, N, Done) end) end),
    say("   ~s calls in ~.2f s: ~s calls/s, every one answered pong~n",
        [fmt(Total), Ms / 1000, fmt(round(Total / (Ms / 1000)))]),
    S.

call_loop(0, _, _) -> ok;
call_loop(I, N, Done) ->
    pong = shoal:call(?POOL, rand:uniform(N), ping),
    I rem 1000 =:= 0 andalso atomics:add(Done, 1, 1000),
    call_loop(I - 1, N, Done).

crash_workers(S = #{n := N}) ->
    Victims = lists:usort([rand:uniform(N) || _ <- lists:seq(1, 1000)]),
    V = length(Victims),
    Old = maps:from_list([{K, shoal:whereis(?POOL, K)} || K <- Victims]),
    Before = shoal:count(?POOL),
    CrashesBefore = maps:get(crashes, shoal:stats(?POOL)),
    say("   count before: ~s; crashing ~b workers with shoal:call(Pool, Key, crash)~n", [fmt(Before), V]),
    %% The crash reports would be a thousand screens; keep the log quiet for this step.
    #{level := Level} = logger:get_primary_config(),
    logger:set_primary_config(level, emergency),
    Exits = try
                [catch_exit(fun() -> shoal:call(?POOL, K, crash) end) || K <- Victims]
            after
                timer:sleep(200),
                logger:set_primary_config(level, Level)
            end,
    Crashed = length([E || {exit, {demo_crash, _}} = E <- Exits]),
    After = wait_until(fun() -> shoal:count(?POOL) =< Before - V end, 5000, fun() -> shoal:count(?POOL) end),
    say("   ~b calls exited with demo_crash; count after: ~s (~b fewer)~n", [Crashed, fmt(After), Before - After]),
    Answers = [shoal:call(?POOL, K, whoami) || K <- Victims],
    Fresh = length([K || {K, {Pid, 0}} <- lists:zip(Victims, Answers), Pid =/= maps:get(K, Old)]),
    say("   called them again: ~b of ~b answered, from a new pid with fresh state; count: ~s~n",
        [Fresh, V, fmt(shoal:count(?POOL))]),
    say("   stats: crashes ~b -> ~b~n", [CrashesBefore, maps:get(crashes, shoal:stats(?POOL))]),
    Crashed = V,
    Fresh = V,
    Before = shoal:count(?POOL),
    S.

catch_exit(F) ->
    try F() of R -> {returned, R}
    catch exit:R -> {exit, R}
    end.

idle_offload(S) ->
    Idle = 1000,
    M = 10000,
    {ok, _} = shoal:start_pool(?IDLE_POOL, #{worker => ?MODULE, idle_timeout => Idle}),
    say("   second pool ~p, idle_timeout => ~b ms; ~s workers get one call each~n",
        [?IDLE_POOL, Idle, fmt(M)]),
    par(lists:seq(1, M), 4, fun(K) -> pong = shoal:call(?IDLE_POOL, K, ping) end),
    say("   count: ~s; now nobody calls them~n", [fmt(shoal:count(?IDLE_POOL))]),
    T0 = erlang:monotonic_time(millisecond),
    Left = wait_until(fun() -> shoal:count(?IDLE_POOL) =:= 0 end, 10 * Idle,
                      fun() ->
                              C = shoal:count(?IDLE_POOL),
                              live(false, "   t = ~4.1f s  count: ~-8s", [(erlang:monotonic_time(millisecond) - T0) / 1000, fmt(C)]),
                              C
                      end),
    end_live(),
    #{idle_offloads := Off} = shoal:stats(?IDLE_POOL),
    say("   count: ~b after ~.1f s; stats: idle_offloads = ~s~n",
        [Left, (erlang:monotonic_time(millisecond) - T0) / 1000, fmt(Off)]),
    pong = shoal:call(?IDLE_POOL, 42, ping),
    say("   key 42 called again: it comes back on demand (count ~b)~n", [shoal:count(?IDLE_POOL)]),
    0 = Left,
    S.

show_stats(S) ->
    Pools = [?POOL, ?IDLE_POOL],
    Stats = [shoal:stats(P) || P <- Pools],
    Fields = [live, spawns, normal_exits, crashes, crashes_per_minute, idle_offloads, call_timeouts],
    Cells = [["stat" | [atom_to_list(P) || P <- Pools]] |
             [[atom_to_list(F) | [cell(maps:get(F, St, '-')) || St <- Stats]] || F <- Fields]],
    Widths = [lists:max([length(lists:nth(C, Row)) || Row <- Cells]) || C <- lists:seq(1, length(Pools) + 1)],
    [begin
         [First | Rest] = Row,
         [W1 | Ws] = Widths,
         io:format("   ~s~s~n", [pad_right(First, W1),
                                 [["  ", pad_left(Cell, W)] || {Cell, W} <- lists:zip(Rest, Ws)]]),
         case I of
             1 -> io:format("   ~s~n", [lists:duplicate(lists:sum(Widths) + 2 * length(Pools), $-)]);
             _ -> ok
         end
     end || {I, Row} <- lists:zip(lists:seq(1, length(Cells)), Cells)],
    S.

cell('-') -> "-";
cell(X) when is_integer(X) -> fmt(X);
cell(X) when is_float(X) -> io_lib:format("~.1f", [X]);
cell(X) -> lists:flatten(io_lib:format("~p", [X])).

stop_pools(S) ->
    {Us, ok} = timer:tc(fun() -> shoal:stop_pool(?POOL) end),
    ok = shoal:stop_pool(?IDLE_POOL),
    say("   stop_pool(~p) took ~.2f s; ~b processes left in the VM~n",
        [?POOL, Us / 1.0e6, erlang:system_info(process_count)]),
    S.

%%% ---------------------------------------------------------------------------------------
%%% Helpers

%% A status line: on a terminal it is redrawn in place (\r) and end_live/0 ends it; when the
%% output is not a terminal (scripts/demo.sh sets SHOAL_DEMO_TTY=0) it is a plain line, at
%% most one a second, and always the Final one.
live(Final, Fmt, Args) ->
    case os:getenv("SHOAL_DEMO_TTY") of
        "0" ->
            Now = erlang:monotonic_time(millisecond),
            case Final orelse Now - get_default(shoal_demo_live, Now - 1000) >= 1000 of
                true ->
                    put(shoal_demo_live, Now),
                    io:format("~ts~n", [string:trim(io_lib:format(Fmt, Args), trailing)]);
                false -> ok
            end;
        _ -> io:format("\r" ++ Fmt, Args)
    end.

end_live() ->
    case os:getenv("SHOAL_DEMO_TTY") of
        "0" -> erase(shoal_demo_live), ok;
        _ -> io:format("~n")
    end.

get_default(K, Default) ->
    case get(K) of
        undefined -> Default;
        V -> V
    end.

%% Runs Work while a live bar shows Progress() out of Total and the rate; returns ms.
with_progress(Total, Progress, Work) ->
    Self = self(),
    T0 = erlang:monotonic_time(millisecond),
    Worker = spawn_link(fun() -> Work(), Self ! {self(), done} end),
    progress_loop(Worker, Total, Progress, T0),
    erlang:monotonic_time(millisecond) - T0.

progress_loop(Worker, Total, Progress, T0) ->
    receive
        {Worker, done} ->
            bar(Total, Total, T0, true),
            end_live();
        {'EXIT', Worker, Reason} when Reason =/= normal ->
            end_live(),
            exit(Reason)
    after 100 ->
            bar(Progress(), Total, T0, false),
            progress_loop(Worker, Total, Progress, T0)
    end.

bar(Done, Total, T0, Final) ->
    Width = 40,
    Ms = max(1, erlang:monotonic_time(millisecond) - T0),
    Filled = min(Width, Done * Width div max(1, Total)),
    live(Final, "   [~s~s] ~11s / ~s  ~9s/s  ~5.1f s ",
              [lists:duplicate(Filled, $#), lists:duplicate(Width - Filled, $.),
               fmt(Done), fmt(Total), fmt(round(Done * 1000 / Ms)), Ms / 1000]).

%% Applies F to every element of L from Par linked processes; waits for all of them.
par(L, Par, F) ->
    Self = self(),
    Len = max(1, (length(L) + Par - 1) div Par),
    Pids = [spawn_link(fun() -> lists:foreach(F, Slice), Self ! {self(), ok} end)
            || Slice <- chunks(L, Len)],
    [receive
         {P, ok} -> ok;
         {'EXIT', P, Reason} when Reason =/= normal -> exit(Reason)
     end || P <- Pids],
    ok.

flush_exits() -> receive {'EXIT', _, _} -> flush_exits() after 0 -> ok end.

chunks([], _) -> [];
chunks(L, Len) when length(L) =< Len -> [L];
chunks(L, Len) -> {H, T} = lists:split(Len, L), [H | chunks(T, Len)].

%% Polls Cond every 50 ms until it holds or Ms pass; returns Value() at the end.
wait_until(Cond, Ms, Value) ->
    Deadline = erlang:monotonic_time(millisecond) + Ms,
    wait_until_(Cond, Deadline, Value).

wait_until_(Cond, Deadline, Value) ->
    V = Value(),
    case Cond() orelse erlang:monotonic_time(millisecond) > Deadline of
        true -> V;
        false -> timer:sleep(50), wait_until_(Cond, Deadline, Value)
    end.

say(Fmt, Args) -> io:format(Fmt, Args).

fmt(N) when is_integer(N), N < 0 -> "-" ++ fmt(-N);
fmt(N) when is_integer(N) ->
    S = integer_to_list(N),
    group(lists:reverse(S), []);
fmt(X) -> cell(X).

group([A, B, C, D | T], Acc) -> group([D | T], [$,, C, B, A | Acc]);
group(L, Acc) -> lists:reverse(L) ++ Acc.

mb(Bytes) -> io_lib:format("~.1f MB", [Bytes / 1048576]).

pad_right(S, W) -> S ++ lists:duplicate(W - length(S), $\s).
pad_left(S, W) -> lists:duplicate(W - length(S), $\s) ++ S.

env_int(Name, Default) ->
    case os:getenv(Name) of
        false -> Default;
        "" -> Default;
        V -> list_to_integer(lists:filter(fun(C) -> C =/= $_ end, V))
    end.
