%% @doc EUnit for shoal_telemetry (events, spans, our own handlers, and emitting through a
%% `telemetry' module when one is loaded: a tiny fake compiled here, since the real library
%% is not in Debian) and shoal_log (reports in domain [shoal] with pool/key/node metadata,
%% visible in a plain erl's default handler once shoal has started).
-module(shoal_telemetry_tests).

-include_lib("eunit/include/eunit.hrl").

-export([log/2]).   % a logger handler that forwards events to a test process

-define(T, shoal_telemetry).

id() -> {?MODULE, erlang:unique_integer([positive])}.

forward(Tag) ->
    fun(E, M, Meta, Cfg) -> Cfg ! {Tag, E, M, Meta} end.

%%% Handlers ---------------------------------------------------------------------------------

an_attached_handler_gets_the_event_with_its_config_test() ->
    Id = id(),
    ok = ?T:attach(Id, [shoal, worker, spawn], forward(got), self()),
    try
        ok = ?T:execute([shoal, worker, spawn], #{system_time => 1}, #{pool => p, key => k}),
        ?assertEqual({got, [shoal, worker, spawn], #{system_time => 1}, #{pool => p, key => k}},
                     recv()),
        %% other events do not reach it
        ok = ?T:execute([shoal, worker, crash], #{}, #{}),
        ?assertEqual(none, recv(50))
    after ?T:detach(Id)
    end.

attach_many_detach_and_list_test() ->
    Id = id(),
    Events = [[shoal, node, up], [shoal, node, down]],
    ok = ?T:attach_many(Id, Events, forward(node), self()),
    ?assertEqual({error, already_exists}, ?T:attach(Id, [shoal, x], forward(x), self())),
    Listed = [E || #{id := I, event_name := E} <- ?T:list_handlers([shoal, node]), I =:= Id],
    ?assertEqual(lists:sort(Events), lists:sort(Listed)),
    ?assertEqual([], [I || #{id := I} <- ?T:list_handlers([shoal, worker]), I =:= Id]),
    ok = ?T:execute([shoal, node, down], #{system_time => 2}, #{node => n}),
    ?assertMatch({node, [shoal, node, down], _, #{node := n}}, recv()),
    ok = ?T:detach(Id),
    ?assertEqual({error, not_found}, ?T:detach(Id)),
    ok = ?T:execute([shoal, node, down], #{}, #{}),
    ?assertEqual(none, recv(50)),
    ?assertEqual([], [I || #{id := I} <- ?T:list_handlers([]), I =:= Id]).

handlers_run_in_attach_order_test() ->
    {A, B} = {id(), id()},
    ok = ?T:attach(A, [shoal, order], forward(a), self()),
    ok = ?T:attach(B, [shoal, order], forward(b), self()),
    ok = ?T:execute([shoal, order], #{}, #{}),
    ?assertMatch({a, _, _, _}, recv()),
    ?assertMatch({b, _, _, _}, recv()),
    ok = ?T:detach(A), ok = ?T:detach(B).

bad_input_is_an_error_test() ->
    F = forward(x),
    ?assertEqual({error, {bad_handler, nope}}, ?T:attach(id(), [shoal, a], nope, [])),
    ?assertEqual({error, {bad_handler, fun erlang:self/0}},
                 ?T:attach(id(), [shoal, a], fun erlang:self/0, [])),
    ?assertEqual({error, {bad_event, shoal}}, ?T:attach(id(), shoal, F, [])),
    ?assertEqual({error, {bad_event, []}}, ?T:attach(id(), [], F, [])),
    ?assertEqual({error, {bad_event, [shoal, "x"]}}, ?T:attach(id(), [shoal, "x"], F, [])),
    ?assertEqual({error, {bad_event, []}}, ?T:attach_many(id(), [], F, [])),
    %% a single event name given to attach_many is a list of atoms, not of event names
    ?assertEqual({error, {bad_event, shoal}}, ?T:attach_many(id(), [shoal, a], F, [])),
    ?assertError(badarg, ?T:execute(shoal, #{}, #{})),
    ?assertError(badarg, ?T:execute([shoal], [], #{})),
    ?assertError(badarg, ?T:execute([shoal], #{}, undefined)),
    ?assertError(badarg, ?T:span([shoal], #{}, fun(_) -> ok end)).

a_failing_handler_is_detached_and_logged_and_the_others_still_run_test() ->
    {Bad, Good} = {id(), id()},
    LogId = log_to_me(),
    try
        ok = ?T:attach(Bad, [shoal, boom], fun(_, _, _, _) -> error(handler_bug) end, []),
        ok = ?T:attach(Good, [shoal, boom], forward(good), self()),
        ok = ?T:execute([shoal, boom], #{}, #{}),          % the emitter is not hurt
        ?assertMatch({good, _, _, _}, recv()),
        {logged, #{level := error, msg := {report, Report}, meta := Meta}} = recv_log(),
        ?assertMatch(#{what := telemetry_handler_failed, handler_id := Bad,
                       class := error, reason := handler_bug}, Report),
        ?assertMatch(#{domain := [shoal]}, Meta),
        ?assertEqual([Good], [I || #{id := I} <- ?T:list_handlers([shoal, boom])]),
        ok = ?T:execute([shoal, boom], #{}, #{}),
        ?assertMatch({good, _, _, _}, recv()),
        ?assertEqual(none, recv_log(50))
    after
        ?T:detach(Good), logger:remove_handler(LogId)
    end.

concurrent_attach_and_detach_lose_nothing_test_() ->
    {timeout, 60, fun() ->
        [begin
             Ids = [id() || _ <- lists:seq(1, 16)],
             Self = self(),
             Ps = [spawn_link(fun() ->
                                      ok = ?T:attach(I, [shoal, race], forward(r), Self),
                                      Self ! {attached, I}
                              end) || I <- Ids],
             [receive {attached, I} -> ok end || I <- Ids],
             _ = Ps,
             ?assertEqual(lists:sort(Ids),
                          lists:sort([I || #{id := I} <- ?T:list_handlers([shoal, race])])),
             ok = ?T:execute([shoal, race], #{}, #{}),
             ?assertEqual(16, length([recv() || _ <- Ids])),
             Ds = [spawn_link(fun() -> Self ! {detached, ?T:detach(I)} end) || I <- Ids],
             ?assertEqual([ok || _ <- Ds], [receive {detached, R} -> R end || _ <- Ds]),
             ?assertEqual([], ?T:list_handlers([shoal, race]))
         end || _ <- lists:seq(1, 10)]
    end}.

%%% Spans ------------------------------------------------------------------------------------

a_span_emits_start_and_stop_with_a_duration_test() ->
    Id = id(),
    ok = ?T:attach_many(Id, [[shoal, call, E] || E <- [start, stop, exception]],
                        forward(span), self()),
    try
        ?assertEqual(42, ?T:span([shoal, call], #{pool => p, key => k},
                                 fun() -> {42, #{result => ok}} end)),
        {span, [shoal, call, start], #{system_time := _, monotonic_time := T0}, M0} = recv(),
        {span, [shoal, call, stop], #{duration := D, monotonic_time := T1}, M1} = recv(),
        ?assert(is_integer(D) andalso D >= 0 andalso T1 - T0 =:= D),
        ?assertMatch(#{pool := p, key := k, telemetry_span_context := _}, M0),
        ?assertEqual(maps:get(telemetry_span_context, M0), maps:get(telemetry_span_context, M1)),
        ?assertMatch(#{result := ok, pool := p}, M1)
    after ?T:detach(Id)
    end.

a_span_that_raises_emits_exception_and_reraises_test() ->
    Id = id(),
    ok = ?T:attach_many(Id, [[shoal, move, E] || E <- [start, stop, exception]],
                        forward(span), self()),
    try
        ?assertExit(gone, ?T:span([shoal, move], #{pool => p}, fun() -> exit(gone) end)),
        ?assertMatch({span, [shoal, move, start], _, _}, recv()),
        {span, [shoal, move, exception], #{duration := D}, Meta} = recv(),
        ?assert(is_integer(D)),
        ?assertMatch(#{kind := exit, reason := gone, stacktrace := [_ | _], pool := p}, Meta),
        ?assertEqual(none, recv(50))
    after ?T:detach(Id)
    end.

%%% Through the telemetry library -----------------------------------------------------------

events_go_through_telemetry_when_it_is_loaded_and_to_our_handlers_too_test() ->
    Id = id(),
    ok = ?T:attach(Id, [shoal, worker, offload], forward(ours), self()),
    register(shoal_fake_telemetry_sink, self()),
    try
        ?assertNot(erlang:function_exported(telemetry, execute, 3)),
        ok = ?T:execute([shoal, worker, offload], #{system_time => 1}, #{pool => p}),
        ?assertMatch({ours, _, _, _}, recv()),
        ?assertEqual(none, recv(50)),
        load_fake_telemetry(),
        ok = ?T:execute([shoal, worker, offload], #{system_time => 2}, #{pool => p}),
        Got = lists:sort([recv(), recv()]),
        ?assertEqual(lists:sort([{ours, [shoal, worker, offload], #{system_time => 2}, #{pool => p}},
                                 {telemetry, [shoal, worker, offload], #{system_time => 2},
                                  #{pool => p}}]), Got),
        %% telemetry unloaded: our handlers only, again
        unload_fake_telemetry(),
        ok = ?T:execute([shoal, worker, offload], #{system_time => 3}, #{pool => p}),
        ?assertMatch({ours, _, #{system_time := 3}, _}, recv()),
        ?assertEqual(none, recv(50))
    after
        unregister(shoal_fake_telemetry_sink), unload_fake_telemetry(), ?T:detach(Id)
    end.

load_fake_telemetry() ->
    Src = "-module(telemetry).\n-export([execute/3]).\n"
          "execute(E, M, Meta) -> shoal_fake_telemetry_sink ! {telemetry, E, M, Meta}, ok.\n",
    {ok, Tokens, _} = erl_scan:string(Src),
    Forms = [begin {ok, F} = erl_parse:parse_form(Ts), F end || Ts <- split_forms(Tokens, [])],
    {ok, telemetry, Bin} = compile:forms(Forms, [binary, return_errors]),
    {module, telemetry} = code:load_binary(telemetry, "fake_telemetry.erl", Bin),
    ok.

split_forms([], []) -> [];
split_forms([{dot, _} = D | Rest], Acc) -> [lists:reverse([D | Acc]) | split_forms(Rest, [])];
split_forms([T | Rest], Acc) -> split_forms(Rest, [T | Acc]).

unload_fake_telemetry() ->
    _ = code:purge(telemetry), _ = code:delete(telemetry), _ = code:purge(telemetry),
    ok.

every_documented_event_is_in_the_docs_test() ->
    Doc = read_doc("docs/telemetry.md"),
    [?assertNotEqual(nomatch, string:find(Doc, io_lib:format("~w", [E])),
                     lists:flatten(io_lib:format("~w", [E])))
     || {E, _, _} <- ?T:events()].

%%% Logs -------------------------------------------------------------------------------------

a_log_report_has_domain_pool_key_node_test() ->
    LogId = log_to_me(),
    try
        ok = shoal_log:log(warning, worker_init_failed, #{pool => p, key => {user, 1}},
                           #{reason => bad}),
        {logged, #{level := warning, msg := {report, R}, meta := Meta}} = recv_log(),
        ?assertEqual(#{what => worker_init_failed, pool => p, key => {user, 1}, node => node(),
                       reason => bad}, R),
        ?assertMatch(#{domain := [shoal], pool := p, key := {user, 1}}, Meta),
        ?assertEqual(node(), maps:get(node, Meta)),
        {Fmt, Args} = (maps:get(report_cb, Meta))(R),
        ?assertEqual("shoal pool p key {user,1} on " ++ atom_to_list(node())
                     ++ ": worker_init_failed #{reason => bad}",
                     lists:flatten(io_lib:format(Fmt, Args))),
        %% a node-level event names the node it is about
        ok = shoal_log:log(notice, node_down, #{pool => p, node => 'other@host'}, #{}),
        {logged, #{msg := {report, R2}, meta := #{node := 'other@host'}}} = recv_log(),
        ?assertEqual(#{what => node_down, pool => p, node => 'other@host'}, R2)
    after logger:remove_handler(LogId)
    end.

shoal_reports_reach_a_plain_erls_default_handler_once_shoal_started_test_() ->
    {timeout, 60, fun() ->
        Ebin = code:lib_dir(shoal, ebin),
        Run = fun(Start) ->
                      os:cmd("ERL_CRASH_DUMP_SECONDS=0 erl -noshell -pa '" ++ Ebin ++ "' -eval '" ++ Start ++
                             " shoal_log:log(warning, visible, #{pool => p, key => k}, #{}),"
                             " logger_std_h:filesync(default), halt().'")
              end,
        Line = "shoal pool p key k on nonode@nohost: visible",
        %% OTP's default handler drops the [shoal] domain...
        ?assertEqual(nomatch, string:find(Run(""), Line)),
        %% ...until the shoal application starts and lets it through
        Out = Run("{ok, _} = application:ensure_all_started(shoal),"),
        ?assertNotEqual(nomatch, string:find(Out, Line), Out)
    end}.

%%% Helpers ----------------------------------------------------------------------------------

recv() -> recv(2000).
recv(T) -> receive {_, _, _, _} = M -> M after T -> none end.

recv_log() -> recv_log(2000).
recv_log(T) -> receive {logged, _} = M -> M after T -> none end.

log_to_me() ->
    Id = list_to_atom("shoal_test_log_" ++ integer_to_list(erlang:unique_integer([positive]))),
    ok = logger:add_handler(Id, ?MODULE, #{config => #{pid => self()}, level => all,
                                           filters => [{shoal, {fun logger_filters:domain/2,
                                                                {log, sub, [shoal]}}}],
                                           filter_default => stop}),
    Id.

%% @private logger handler callback
log(Event, #{config := #{pid := Pid}}) -> Pid ! {logged, Event}, ok.

read_doc(Rel) ->
    Here = filename:dirname(proplists:get_value(source, ?MODULE:module_info(compile))),
    Candidates = [filename:join([Here, "..", "..", Rel]), Rel],
    [F | _] = [F || F <- Candidates, filelib:is_regular(F)],
    {ok, Bin} = file:read_file(F),
    binary_to_list(Bin).
