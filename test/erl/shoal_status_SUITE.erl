%% @doc The status page (shoal_status) as an operator uses it: served by one member of a
%% real three-node cluster (OTP peer nodes), loaded in a real headless Chromium (Debian's
%% `chromium'), whose rendered DOM must show every member and follow a drain; the JSON
%% endpoints; and the page's start/stop contract.
-module(shoal_status_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, suite/0, init_per_suite/1, end_per_suite/1]).
-export([the_page_shows_every_member_and_follows_a_drain/1,
         json_endpoints_answer_and_the_page_loads_nothing_from_elsewhere/1,
         the_page_is_off_until_started_and_bad_options_are_errors/1]).
-export([p_fill/2]).

-define(COOKIE, "shoal_status_test").
-define(WORKER, shoal_test_plain_worker).
-define(TIMEOUT, 60000).

suite() -> [{timetrap, {seconds, 180}}].

all() ->
    [the_page_is_off_until_started_and_bad_options_are_errors,
     json_endpoints_answer_and_the_page_loads_nothing_from_elsewhere,
     the_page_shows_every_member_and_follows_a_drain].

init_per_suite(Config) ->
    case os:find_executable("chromium") of
        false -> ct:fail("chromium not found: make deps installs Debian's chromium");
        Chrome ->
            {ok, _} = application:ensure_all_started(shoal),
            {ok, _} = application:ensure_all_started(inets),
            Paths = lists:usort([code:lib_dir(shoal, ebin),
                                 filename:dirname(code:which(?MODULE)),
                                 filename:dirname(code:which(?WORKER))]),
            Peers = start_cluster(Paths),
            Pool = list_to_atom("status_" ++ os:getpid()),
            [{ok, _} = peer:call(P, shoal, start_pool, [Pool, #{worker => ?WORKER}], ?TIMEOUT)
             || {P, _} <- Peers],
            Nodes = lists:sort([N || {_, N} <- Peers]),
            [wait_until(fun() -> peer:call(P, shoal, nodes, [Pool]) =:= Nodes end, {members, N})
             || {P, N} <- Peers],
            [{A, _} | _] = Peers,
            {ok, Port} = peer:call(A, shoal_status, start,
                                   [#{port => 0, pools => [Pool], sample_ms => 250}], ?TIMEOUT),
            [{chrome, Chrome}, {peers, Peers}, {nodes, Nodes}, {pool, Pool},
             {url, "http://127.0.0.1:" ++ integer_to_list(Port) ++ "/"} | Config]
    end.

end_per_suite(Config) ->
    [catch peer:stop(P) || {P, _} <- proplists:get_value(peers, Config, [])],
    ok.

start_cluster(Paths) ->
    Base = lists:concat(["shoal_st_", os:getpid(), "_", erlang:unique_integer([positive])]),
    Args = ["-setcookie", ?COOKIE, "-connect_all", "false"
            | lists:append([["-pa", P] || P <- Paths])],
    Peers = [begin
                 {ok, Pid, Node} = peer:start(#{name => list_to_atom(Base ++ [$_, $a + I]),
                                                connection => standard_io, args => Args}),
                 {Pid, Node}
             end || I <- [0, 1, 2]],
    [{ok, _} = peer:call(P, application, ensure_all_started, [shoal], ?TIMEOUT) || {P, _} <- Peers],
    Nodes = [N || {_, N} <- Peers],
    [true = peer:call(P, net_kernel, connect_node, [M], ?TIMEOUT)
     || {P, N} <- Peers, M <- Nodes, M > N],
    Peers.

%%% Cases ----------------------------------------------------------------------------------

%% The page loads in Chromium and its DOM lists the three members with their live counts;
%% after one member is drained, the page shows it drained, empty, with its drain progress,
%% and the others holding every worker.
the_page_shows_every_member_and_follows_a_drain(Config) ->
    [{A, _} | _] = Peers = ?config(peers, Config),
    Nodes = ?config(nodes, Config),
    Pool = ?config(pool, Config),
    %% equal windows: the keys spread over the three members
    [ok = peer:call(A, shoal, set_target, [Pool, N, #{target => 100, high => 250}]) || N <- Nodes],
    ok = peer:call(A, ?MODULE, p_fill, [Pool, 300], ?TIMEOUT),
    Counts0 = sampled_counts(A, Pool, fun(Cs) -> lists:sum(maps:values(Cs)) =:= 300 end),
    Dom0 = dump_dom(Config),
    Rows0 = rows(Dom0, Pool),
    ?assertEqual(Nodes, lists:sort(maps:keys(Rows0))),
    ?assertEqual(Counts0, maps:map(fun(_, #{count := C}) -> C end, Rows0)),
    ?assert(lists:all(fun(#{drained := D}) -> D =:= false end, maps:values(Rows0))),
    [?assert(has_line(Dom0, Pool, N, "count")) || N <- Nodes],
    %% drain the member with the most workers, from another one
    {_, Target} = lists:max([{C, N} || {N, C} <- maps:to_list(Counts0)]),
    ?assert(maps:get(Target, Counts0) > 0),
    {Pd, _} = lists:keyfind(hd(Nodes -- [Target]), 2, Peers),
    ok = peer:call(Pd, shoal, drain, [Pool, Target], ?TIMEOUT),
    Counts1 = sampled_counts(A, Pool, fun(Cs) -> maps:get(Target, Cs) =:= 0 end),
    Dom1 = dump_dom(Config),
    Rows1 = rows(Dom1, Pool),
    ?assertEqual(Counts1, maps:map(fun(_, #{count := C}) -> C end, Rows1)),
    ?assertMatch(#{count := 0, drained := true}, maps:get(Target, Rows1)),
    ?assertEqual(300, lists:sum([C || {_, #{count := C}} <- maps:to_list(Rows1)])),
    [?assert(maps:get(N, Counts1) >= maps:get(N, Counts0)) || N <- Nodes -- [Target]],
    Progress = lists:flatten(io_lib:format("0 of ~b left", [maps:get(Target, Counts0)])),
    ?assertNotEqual(nomatch, string:find(Dom1, Progress), Progress),
    ok = peer:call(A, shoal, undrain, [Pool, Target]).

json_endpoints_answer_and_the_page_loads_nothing_from_elsewhere(Config) ->
    Url = ?config(url, Config),
    Pool = atom_to_list(?config(pool, Config)),
    {ok, {{_, 200, _}, H1, Status}} = httpc:request(Url ++ "status.json"),
    ?assertEqual("application/json", proplists:get_value("content-type", H1)),
    [?assertNotEqual(nomatch, string:find(Status, "\"" ++ atom_to_list(N) ++ "\":{"))
     || N <- ?config(nodes, Config)],
    ?assertNotEqual(nomatch, string:find(Status, "\"pools\":{\"" ++ Pool ++ "\":{")),
    {ok, {{_, 200, _}, _, History}} = httpc:request(Url ++ "history.json"),
    ?assertNotEqual(nomatch, string:find(History, "\"samples\":[{")),
    {ok, {{_, 200, _}, Hs, Html}} = httpc:request(Url),
    ?assertEqual("text/html; charset=utf-8", proplists:get_value("content-type", Hs)),
    %% no script, style, image or font from another origin: no CDN
    ?assertEqual(nomatch, re:run(Html, "(src|href)\\s*=\\s*[\"']?(https?:)?//", [caseless])),
    ?assertEqual(nomatch, re:run(Html, "@import|url\\(", [caseless])),
    {ok, {{_, 404, _}, _, _}} = httpc:request(Url ++ "nope"),
    {ok, {{_, 405, _}, _, _}} = httpc:request(post, {Url ++ "status.json", [], "text/plain", ""}, [], []).

the_page_is_off_until_started_and_bad_options_are_errors(_Config) ->
    %% on this node (the CT node), where the shoal application runs without the page
    ?assertEqual(undefined, whereis(shoal_status)),
    ?assertEqual({error, not_started}, shoal_status:stop()),
    ?assertEqual({error, {missing_option, port}}, shoal_status:start(#{})),
    ?assertEqual({error, {bad_options, [{port, 1}]}}, shoal_status:start([{port, 1}])),
    ?assertEqual({error, {bad_option, port, -1}}, shoal_status:start(#{port => -1})),
    ?assertEqual({error, {bad_option, colour, red}}, shoal_status:start(#{port => 0, colour => red})),
    ?assertEqual({error, {bad_option, sample_ms, 1}}, shoal_status:start(#{port => 0, sample_ms => 1})),
    ?assertEqual({error, {bad_option, pools, [1]}}, shoal_status:start(#{port => 0, pools => [1]})),
    {ok, Port} = shoal_status:start(#{port => 0}),
    ?assertEqual(Port, shoal_status:port()),
    ?assertEqual({error, already_started}, shoal_status:start(#{port => 0})),
    %% a port in use is an error, not a crash
    {ok, L} = gen_tcp:listen(0, [{ip, {127, 0, 0, 1}}]),
    {ok, Busy} = inet:port(L),
    ok = shoal_status:stop(),
    ?assertMatch({error, _}, shoal_status:start(#{port => Busy})),
    gen_tcp:close(L),
    ?assertEqual(undefined, whereis(shoal_status)),
    ?assertEqual({error, not_started}, shoal_status:stop()),
    %% and it can start again
    {ok, _} = shoal_status:start(#{port => 0}),
    ok = shoal_status:stop().

%%% Helpers --------------------------------------------------------------------------------

%% @private On a peer: start N workers of Pool.
p_fill(Pool, N) ->
    [{ok, _} = shoal:ensure_started(Pool, K) || K <- lists:seq(1, N)],
    ok.

%% The per-node counts of the page's latest sample, once Pred holds for them (and they are
%% what every member's own table says).
sampled_counts(P, Pool, Pred) ->
    Get = fun() ->
                  case peer:call(P, shoal_status, snapshot, []) of
                      #{pools := #{Pool := #{nodes := Ns}}} ->
                          maps:map(fun(_, #{count := C}) -> C end, Ns);
                      _ -> #{}
                  end
          end,
    wait_until(fun() ->
                       Cs = Get(),
                       map_size(Cs) =:= 3 andalso Pred(Cs) andalso
                           Cs =:= maps:from_list([{N, peer:call(P, shoal, count, [Pool, N])}
                                                  || N <- maps:keys(Cs)])
               end, sampled),
    %% one more sample period, so the page's next fetch sees the same numbers
    timer:sleep(600),
    Get().

%% The page as Chromium renders it: the DOM after the scripts ran (virtual time lets them
%% fetch and draw), as text.
dump_dom(Config) ->
    Dir = filename:join(?config(priv_dir, Config),
                        "chromium_" ++ integer_to_list(erlang:unique_integer([positive]))),
    ok = filelib:ensure_dir(filename:join(Dir, "x")),
    Args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--user-data-dir=" ++ Dir, "--virtual-time-budget=3000", "--dump-dom",
            ?config(url, Config)],
    %% chromium's stderr chatter (dbus, GPU) goes to /dev/null
    Port = open_port({spawn_executable, "/bin/sh"},
                     [{args, ["-c", "exec \"$0\" \"$@\" 2>/dev/null", ?config(chrome, Config) | Args]},
                      binary, exit_status, stream]),
    Out = collect(Port, [], erlang:monotonic_time(millisecond) + ?TIMEOUT),
    _ = file:del_dir_r(Dir),
    Dom = unicode:characters_to_list(Out),
    ?assertNotEqual(nomatch, string:find(Dom, "data-refreshed="), Dom),
    Dom.

collect(Port, Acc, Deadline) ->
    receive
        {Port, {data, D}} -> collect(Port, [Acc, D], Deadline);
        {Port, {exit_status, 0}} -> iolist_to_binary(Acc);
        {Port, {exit_status, S}} -> ct:fail({chromium_exited, S, iolist_to_binary(Acc)})
    after max(0, Deadline - erlang:monotonic_time(millisecond)) ->
        {os_pid, OsPid} = erlang:port_info(Port, os_pid),
        os:cmd("kill -9 " ++ integer_to_list(OsPid)),
        ct:fail(chromium_timeout)
    end.

%% The node rows of Pool's table: #{Node => #{count, drained}}.
rows(Dom, Pool) ->
    P = atom_to_list(Pool),
    {match, Trs} = re:run(Dom, "<tr class=\"node[^\"]*\"[^>]*>", [global, unicode, {capture, first, list}]),
    maps:from_list(
      [{list_to_atom(attr(Tr, "data-node")),
        #{count => list_to_integer(attr(Tr, "data-count")),
          drained => list_to_atom(attr(Tr, "data-drained"))}}
       || [Tr] <- Trs, attr(Tr, "data-pool") =:= P]).

attr(Tag, Name) ->
    {match, [V]} = re:run(Tag, Name ++ "=\"([^\"]*)\"", [unicode, {capture, all_but_first, list}]),
    V.

has_line(Dom, Pool, Node, Series) ->
    {match, Ls} = re:run(Dom, "<polyline [^>]*>", [global, unicode, {capture, first, list}]),
    lists:any(fun([L]) ->
                      attr(L, "data-node") =:= atom_to_list(Node) andalso
                          attr(L, "data-series") =:= Series andalso
                          string:find(L, "points=\"\"") =:= nomatch
              end, Ls) andalso string:find(Dom, "data-pool=\"" ++ atom_to_list(Pool)) =/= nomatch.

wait_until(Fun, What) -> wait_until(Fun, What, 300).
wait_until(_Fun, What, 0) -> ct:fail({timeout_waiting_for, What});
wait_until(Fun, What, N) ->
    case Fun() of
        true -> ok;
        false -> timer:sleep(50), wait_until(Fun, What, N - 1)
    end.
