%% cnode_bench: the C node against a BEAM node doing the same job, measured in one run on
%% the same machine. Jobs: one-way gen_server casts (msgs/s, a call at the end syncs), call
%% round trip (sequential gen_server:call, µs), and 8 BEAM nodes calling at once (calls/s)
%% against one caller on one connection. Prints ratios and writes bench/results/cnode.md.
-module(cnode_bench).
-behaviour(gen_server).
-export([main/1, init/1, handle_call/3, handle_cast/2, caller/3]).

-define(COOKIE, "shoal_bench").

init([]) -> {ok, 0}.
handle_call(Req, _From, S) -> {reply, Req, S}.
handle_cast(_Msg, S) -> {noreply, S + 1}.

main([Root]) ->
    Bin = filename:join([Root, "priv", "shoal_cnode"]),
    Ebin = filename:dirname(code:which(?MODULE)),
    Host = lists:last(string:split(atom_to_list(node()), "@")),
    CName = "shoal_bench_cn" ++ os:getpid(),
    Port = open_port({spawn_executable, Bin},
                     [{args, ["-sname", CName, "-setcookie", ?COOKIE]}, exit_status,
                      stderr_to_stdout]),
    {os_pid, CPid} = erlang:port_info(Port, os_pid),
    CNode = list_to_atom(CName ++ "@" ++ Host),
    wait_pong(CNode, 100),
    {ok, BPeer, BNode} = peer:start(#{name => peer:random_name(shoal_bench_beam),
                                      args => ["-setcookie", ?COOKIE, "-pa", Ebin, "-connect_all", "false"]}),
    {ok, _} = erpc:call(BNode, gen_server, start, [{local, echo}, ?MODULE, [], []]),
    pong = net_adm:ping(BNode),
    N = 300000,
    %% warm up both
    oneway({echo, CNode}, 20000), oneway({echo, BNode}, 20000),
    rtt({echo, CNode}, 2000), rtt({echo, BNode}, 2000),
    OneC = best(3, fun() -> oneway({echo, CNode}, N) end),
    OneB = best(3, fun() -> oneway({echo, BNode}, N) end),
    RttC = best_low(3, fun() -> rtt({echo, CNode}, 20000) end),
    RttB = best_low(3, fun() -> rtt({echo, BNode}, 20000) end),
    %% one caller over one connection vs 8 BEAM nodes calling at once
    Single = fun(Target) -> parallel_calls([node()], Target, 20000) end,
    Peers = [begin
                 {ok, P, Nd} = peer:start(#{name => peer:random_name(shoal_bench_caller),
                                            args => ["-setcookie", ?COOKIE, "-pa", Ebin, "-connect_all", "false"]}),
                 {P, Nd}
             end || _ <- lists:seq(1, 8)],
    Nodes = [Nd || {_, Nd} <- Peers],
    [pong = erpc:call(Nd, net_adm, ping, [T]) || Nd <- Nodes, T <- [CNode, BNode]],
    SingleC = best(3, fun() -> Single({echo, CNode}) end),
    SingleB = best(3, fun() -> Single({echo, BNode}) end),
    MultiC = best(3, fun() -> parallel_calls(Nodes, {echo, CNode}, 5000) end),
    MultiB = best(3, fun() -> parallel_calls(Nodes, {echo, BNode}, 5000) end),
    %% memory over 1M messages
    Rss0 = rss_kb(CPid),
    oneway({echo, CNode}, 1000000),
    Rss1 = rss_kb(CPid),
    [peer:stop(P) || {P, _} <- Peers],
    peer:stop(BPeer),
    os:cmd("kill -TERM " ++ integer_to_list(CPid)),
    receive {Port, {exit_status, _}} -> ok after 5000 -> ok end,
    Rows = [{"one-way casts, msgs/s", OneC, OneB, OneC / OneB, ">= 1.5"},
            {"call round trip, us", RttC, RttB, RttB / RttC, ">= 1.0 (BEAM/C)"},
            {"calls/s, 1 caller, 1 connection", SingleC, SingleB, SingleC / SingleB, ""},
            {"calls/s, 8 BEAM nodes at once", MultiC, MultiB, MultiC / MultiB, ""}],
    Scale = MultiC / SingleC,
    Lines =
        ["# C node benchmark (`make bench` / `make cnode-bench`)\n\n",
         io_lib:format("Machine: ~b cores (~s), OTP ~s. One run: the C node (`priv/shoal_cnode`) "
                       "and a BEAM peer hosting an equivalent `echo` gen_server, driven from the "
                       "same BEAM node. Best of 3 per figure.\n\n",
                       [erlang:system_info(logical_processors_available), Host,
                        erlang:system_info(otp_release)]),
         "| job | C node | BEAM node | ratio (C vs BEAM) | target |\n|---|---|---|---|---|\n",
         [io_lib:format("| ~s | ~s | ~s | ~.2f | ~s |\n", [J, fmt(C), fmt(B), R, T])
          || {J, C, B, R, T} <- Rows],
         io_lib:format("\n8 nodes vs 1 connection on the C node: ~.2f of the single-connection "
                       "figure (target: within 20%, i.e. >= 0.80, per core).\n", [Scale]),
         io_lib:format("\nC node RSS: ~b kB before, ~b kB after 1 000 000 more one-way "
                       "messages (growth ~b kB).\n", [Rss0, Rss1, Rss1 - Rss0]),
         "\nRatios: throughput ratios are C/BEAM (higher is better for the C node); the round "
         "trip ratio is BEAM time / C time (>= 1 means the C node answers no slower). "
         "Absolute numbers drift +-30% between runs on these VMs; compare ratios.\n"],
    Text = iolist_to_binary(Lines),
    io:format("~s", [Text]),
    ok = file:write_file(filename:join([Root, "bench", "results", "cnode.md"]), Text),
    halt(0).

fmt(X) when is_float(X), X < 1000 -> io_lib:format("~.1f", [X]);
fmt(X) -> integer_to_list(round(X)).

best(K, F) -> lists:max([F() || _ <- lists:seq(1, K)]).
best_low(K, F) -> lists:min([F() || _ <- lists:seq(1, K)]).

oneway(Target, N) ->
    T0 = erlang:monotonic_time(),
    cast_loop(Target, N),
    done = gen_server:call(Target, done, 60000),
    N / secs(T0).

cast_loop(_, 0) -> ok;
cast_loop(Target, N) ->
    gen_server:cast(Target, {msg, N}),
    cast_loop(Target, N - 1).

rtt(Target, N) ->
    T0 = erlang:monotonic_time(),
    [ping = gen_server:call(Target, ping) || _ <- lists:seq(1, N)],
    secs(T0) * 1.0e6 / N.

caller(Parent, Target, N) ->
    [{x, I} = gen_server:call(Target, {x, I}, 60000) || I <- lists:seq(1, N)],
    Parent ! {self(), done}.

parallel_calls(Nodes, Target, PerNode) ->
    Self = self(),
    T0 = erlang:monotonic_time(),
    Pids = [spawn(Nd, ?MODULE, caller, [Self, Target, PerNode]) || Nd <- Nodes],
    [receive {P, done} -> ok end || P <- Pids],
    length(Nodes) * PerNode / secs(T0).

secs(T0) ->
    erlang:convert_time_unit(erlang:monotonic_time() - T0, native, microsecond) / 1.0e6.

wait_pong(_, 0) -> error(cnode_did_not_start);
wait_pong(Node, K) ->
    case net_adm:ping(Node) of
        pong -> ok;
        pang -> timer:sleep(50), wait_pong(Node, K - 1)
    end.

rss_kb(OsPid) ->
    {ok, B} = file:read_file("/proc/" ++ integer_to_list(OsPid) ++ "/status"),
    [L] = [X || X <- binary:split(B, <<"\n">>, [global]), binary:match(X, <<"VmRSS">>) =/= nomatch],
    [_, Kb | _] = string:lexemes(binary_to_list(L), " \t"),
    list_to_integer(Kb).
