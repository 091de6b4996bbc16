%% shoal_super_demo: groups, a chain and standalone workers under one shoal_super
%% supervisor, in a few seconds, with plain printed lines. Run by `make demo` after the
%% pool demos (scripts/demo.sh).
-module(shoal_super_demo).

-export([main/0]).

-define(SUP, demo_super).

main() ->
    {ok, _} = application:ensure_all_started(shoal),
    logger:set_primary_config(level, critical),   %% the crashes below are on purpose
    io:format("~n== shoal_super: groups, a chain and standalone workers ==~n"),
    {ok, _} = shoal_super:start_link(?SUP, #{}),
    groups(),
    chain(),
    standalone(),
    ok = shoal_super:stop(?SUP),
    io:format("done.~n"),
    ok.

%% Two one_for_all groups; a crash in one restarts its members only.
groups() ->
    Member = fun Loop() -> receive {ping, From} -> From ! {pong, self()}, Loop() end end,
    ok = shoal_super:add_group(?SUP, lobby, #{restart => one_for_all}),
    ok = shoal_super:add_group(?SUP, arena, #{restart => one_for_all}),
    [{ok, _} = shoal_super:add_group_worker(?SUP, G, Member, #{id => W})
     || {G, Ws} <- [{lobby, [ann, ben, cat]}, {arena, [dan, eve]}], W <- Ws],
    ok = shoal_super:broadcast(?SUP, lobby, {ping, self()}),
    io:format("group lobby: broadcast answered by ~b members~n", [length(pongs(3))]),
    Lobby = pids(lobby), Arena = pids(arena),
    exit(hd(Lobby), kill),
    wait(fun() -> New = pids(lobby),
                  length(New) =:= 3 andalso lists:all(fun is_pid/1, New) andalso
                      [P || P <- New, lists:member(P, Lobby)] =:= [] end),
    io:format("group lobby: one member killed -> all 3 restarted (new pids); arena untouched: ~p~n",
              [pids(arena) =:= Arena]),
    io:format("group nobody: send_to_random -> ~p (an error, the supervisor lives on)~n",
              [shoal_super:send_to_random(?SUP, nobody, hi)]).

%% parse -> enrich (auto-scaled, slow) -> format; some items dropped, one crashes.
chain() ->
    Me = self(),
    ok = shoal_super:add_chain(?SUP, orders, #{on_finish => fun(O) -> Me ! {fin, O} end,
                                              max_queue => 5000}),
    ok = shoal_super:add_chain_step(?SUP, orders,
                                    fun(N) when N rem 100 =:= 0 -> {drop, round_number};
                                       (N) -> {next, #{id => N}} end, #{id => parse}),
    ok = shoal_super:add_chain_step(?SUP, orders,
                                    fun(#{id := 777}) -> error(bad_luck);
                                       (Order) -> timer:sleep(1), Order#{price => 10} end,
                                    #{id => enrich, workers => #{min => 1, max => 8, idle_after => 500}}),
    ok = shoal_super:add_chain_step(?SUP, orders, fun(#{id := Id, price := P}) -> {Id, P} end,
                                    #{id => format}),
    N = 1500,
    T0 = erlang:monotonic_time(millisecond),
    [ok = shoal_super:send_to_chain(?SUP, orders, I) || I <- lists:seq(1, N)],
    io:format("chain orders: ~b items sent (parse -> enrich -> format)~n", [N]),
    Peak = watch_workers(1),
    Outcomes = [receive {fin, O} -> O end || _ <- lists:seq(1, N)],
    Ms = erlang:monotonic_time(millisecond) - T0,
    Count = fun(Tag) -> length([O || O <- Outcomes, element(1, O) =:= Tag]) end,
    io:format("chain orders: ~b outcomes in ~b ms: ~b ok, ~b dropped, ~b crashed ~w~n",
              [length(Outcomes), Ms, Count(ok), Count(dropped), Count(crashed),
               hd([{Id, R} || {crashed, _, R, #{id := Id}} <- Outcomes])]),
    io:format("chain orders: step enrich grew to ~b workers under load~n", [Peak]),
    wait(fun() -> workers(enrich) =:= 1 end),
    io:format("chain orders: idle again -> enrich back to ~b worker~n", [workers(enrich)]),
    ok = shoal_super:add_chain(?SUP, tiny, #{max_queue => 2}),
    ok = shoal_super:add_chain_step(?SUP, tiny, fun(X) -> timer:sleep(200), X end, #{id => slow}),
    R = [shoal_super:send_to_chain(?SUP, tiny, I, 0) || I <- [1, 2, 3]],
    io:format("chain tiny (max_queue 2): three sends without waiting -> ~w~n", [R]).

%% Standalone workers: a crash restarts only that worker.
standalone() ->
    Worker = fun Loop() -> receive {ping, From} -> From ! {pong, self()}, Loop() end end,
    {ok, A} = shoal_super:add_worker(?SUP, Worker, #{id => mailer}),
    {ok, B} = shoal_super:add_worker(?SUP, Worker, #{id => indexer}),
    exit(A, kill),
    wait(fun() -> case lists:keyfind(mailer, 1, element(2, shoal_super:workers(?SUP))) of
                      {mailer, P} -> P =/= A;
                      false -> false
                  end end),
    ok = shoal_super:send_to_worker(?SUP, mailer, {ping, self()}),
    [_] = pongs(1),
    io:format("worker mailer: killed -> restarted and answering; indexer untouched: ~p~n",
              [lists:keyfind(indexer, 1, element(2, shoal_super:workers(?SUP))) =:= {indexer, B}]).

%%% Helpers -------------------------------------------------------------------------------

pids(G) ->
    {ok, Ws} = shoal_super:group_workers(?SUP, G),
    [P || {_, P} <- Ws].

pongs(N) -> [receive {pong, P} -> P after 5000 -> error(no_pong) end || _ <- lists:seq(1, N)].

workers(Step) ->
    {ok, #{steps := Steps}} = shoal_super:chain_info(?SUP, orders),
    hd([W || #{id := Id, workers := W} <- Steps, Id =:= Step]).

%% The most workers step enrich had while the chain still held items.
watch_workers(Peak) ->
    {ok, #{in_flight := F}} = shoal_super:chain_info(?SUP, orders),
    W = max(Peak, workers(enrich)),
    case F of
        0 -> W;
        _ -> timer:sleep(20), watch_workers(W)
    end.

wait(F) -> wait(F, 500).
wait(F, 0) -> error({timeout, F});
wait(F, N) ->
    case F() of
        true -> ok;
        false -> timer:sleep(20), wait(F, N - 1)
    end.
