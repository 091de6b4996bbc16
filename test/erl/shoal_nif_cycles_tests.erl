%% @doc No leaks, at the NIF level: one million workers claimed, registered and gone (half
%% exiting, a quarter killed, a quarter unregistered first) leave the table empty and the
%% VM's memory where it started; the entries go by the NIF's own monitors, with no Erlang
%% process cleaning up. Runs in a peer node (+P) so nothing else moves the figures.
-module(shoal_nif_cycles_tests).

-include_lib("eunit/include/eunit.hrl").

-export([cycles/1]).

-define(CYCLES, 1000000).
-define(DRIVERS, 4).
-define(BATCH, 2500).
-define(MEMORY_SLACK, 16 * 1024 * 1024).

a_million_register_exit_cycles_leave_table_and_memory_where_they_started_test_() ->
    {timeout, 300, fun() ->
        Root = code:root_dir(),
        Paths = [filename:absname(P) || P <- code:get_path(), not lists:prefix(Root, P)],
        {ok, Peer, _} = peer:start_link(#{connection => standard_io,
                                          args => ["+P", "1000000", "-pa" | Paths]}),
        try
            R = peer:call(Peer, ?MODULE, cycles, [?CYCLES], 280000),
            io:format(user, "~n~p~n", [R]),
            #{entries := 0, local := 0, claims := 0, cycles := Cycles, before := B,
              'after' := A, downs := Downs} = R,
            ?assertEqual(?CYCLES, Cycles),
            %% Every worker that was not unregistered went through its monitor.
            ?assert(Downs >= ?CYCLES div 2),
            ?assert(A - B < ?MEMORY_SLACK)
        after
            catch peer:stop(Peer)
        end
    end}.

%% In the peer: a listener counts the downs; rounds of DRIVERS x BATCH workers.
cycles(N) ->
    T = shoal_nif:new(8),
    Counter = atomics:new(1, []),
    Listener = spawn(fun() -> listen(Counter) end),
    ok = shoal_nif:set_listener(T, Listener),
    Rounds = N div (?DRIVERS * ?BATCH),
    round(T, 0), %% warm-up: the first allocations are not growth
    settle(T, Listener),
    Before = memory(),
    Downs0 = atomics:get(Counter, 1),
    [round(T, R) || R <- lists:seq(1, Rounds - 1)],
    settle(T, Listener),
    After = memory(),
    #{entries := E, local_workers := L, claims := C} = shoal_nif:info(T),
    #{entries => E, local => L, claims => C, cycles => Rounds * ?DRIVERS * ?BATCH,
      before => Before, 'after' => After, downs => atomics:get(Counter, 1) - Downs0 +
      ?DRIVERS * ?BATCH}.

listen(C) ->
    receive
        {'$shoal_down', _, _, _} -> atomics:add(C, 1, 1);
        _ -> ok
    end,
    listen(C).

round(T, R) ->
    Parent = self(),
    Ds = [spawn_link(fun() -> drive(T, R, D), Parent ! {done, self()} end)
          || D <- lists:seq(1, ?DRIVERS)],
    [receive {done, D} -> ok end || D <- Ds],
    ok.

drive(T, R, D) ->
    Ws = [begin
              K = {R, D, I},
              W = spawn(fun() -> receive How -> exit(How) end end),
              claimed = shoal_nif:claim(T, K, nowait),
              {ok, _} = shoal_nif:register(T, K, W, claim),
              {K, W, I}
          end || I <- lists:seq(1, ?BATCH)],
    lists:foreach(fun({K, W, I}) ->
                          case I rem 4 of
                              0 -> ok = shoal_nif:unregister(T, K, W), W ! normal;
                              1 -> exit(W, kill);
                              _ -> W ! normal
                          end
                  end, Ws).

%% The table is empty and the listener has taken every down sent to it (on a busy machine
%% it lags: a million queued downs would be counted as growth).
settle(T, Listener) ->
    Deadline = erlang:monotonic_time(millisecond) + 60000,
    wait(fun() -> maps:get(entries, shoal_nif:info(T)) =:= 0 end, Deadline),
    wait(fun() -> process_info(Listener, message_queue_len) =:= {message_queue_len, 0} end,
         Deadline).

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
