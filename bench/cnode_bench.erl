%% cnode_bench: the C node against a BEAM node doing the same job, measured in one run on
%% the same machine, the two targets interleaved round by round (C, BEAM, C, BEAM, ...) so
%% that load from elsewhere hits both alike; medians are reported.
%%
%% Jobs:
%%  - one-way: sender processes on two sender nodes cast {msg, I} to `echo` as fast as they
%%    can; the receiver's own count of casts handled (`cast_count`, asked over the driver's
%%    separate connection) and the receiver's CPU time (utime + stime of its OS process, from
%%    /proc) are sampled over a window. Reported: msgs/s handled at the receiver (wall) and
%%    receiver CPU per message, whose inverse is the rate one receiver core sustains.
%%  - round trip: sequential gen_server:call from one process (µs, wall).
%%  - calls/s: one caller on one connection, and 8 BEAM nodes calling at once, each with the
%%    receiver's CPU per call; "per core" = calls per receiver CPU-second.
%% Prints the table and writes bench/results/cnode.md.
-module(cnode_bench).
-behaviour(gen_server).
-export([main/1, init/1, handle_call/3, handle_cast/2, caller/3, blaster/2]).

-define(COOKIE, "shoal_bench").
-define(WINDOW_MS, 2000).

%% the BEAM twin of c_src/cnode/echo.c: answers calls with the request, counts casts
init([]) -> {ok, 0}.
handle_call(cast_count, _From, S) -> {reply, S, S};
handle_call(Req, _From, S) -> {reply, Req, S}.
handle_cast(_Msg, S) -> {noreply, S + 1}.

main([Root]) ->
    Bin = os:getenv("CNODE_BIN", filename:join([Root, "priv", "shoal_cnode"])),
    Host = lists:last(string:split(atom_to_list(node()), "@")),
    CName = "shoal_bench_cn" ++ os:getpid(),
    Extra = string:lexemes(os:getenv("CNODE_ARGS", ""), " "),
    Port = open_port({spawn_executable, Bin},
                     [{args, ["-sname", CName, "-setcookie", ?COOKIE | Extra]}, exit_status,
                      stderr_to_stdout]),
    {os_pid, CPid} = erlang:port_info(Port, os_pid),
    CNode = list_to_atom(CName ++ "@" ++ Host),
    wait_pong(CNode, 100),
    {BPeer, BNode} = peer("shoal_bench_beam"),
    {ok, _} = erpc:call(BNode, gen_server, start, [{local, echo}, ?MODULE, [], []]),
    BPid = list_to_integer(erpc:call(BNode, os, getpid, [])),
    pong = net_adm:ping(BNode),
    C = {{echo, CNode}, CPid},
    B = {{echo, BNode}, BPid},
    Senders = [peer("shoal_bench_sender") || _ <- [1, 2]],
    SNodes = [Nd || {_, Nd} <- Senders],
    [pong = erpc:call(Nd, net_adm, ping, [T]) || Nd <- SNodes, T <- [CNode, BNode]],
    %% warm up both
    [begin oneway(T, SNodes, 500), rtt(T, 2000) end || T <- [C, B]],
    {OneC, OneB} = interleave(fun(T) -> oneway(T, SNodes, ?WINDOW_MS) end, C, B),
    {RttC, RttB} = interleave(fun(T) -> rtt(T, 10000) end, C, B),
    Callers = [peer("shoal_bench_caller") || _ <- lists:seq(1, 8)],
    CNodes = [Nd || {_, Nd} <- Callers],
    [pong = erpc:call(Nd, net_adm, ping, [T]) || Nd <- CNodes, T <- [CNode, BNode]],
    {SingleC, SingleB} = interleave(fun(T) -> parallel_calls([node()], T, 20000) end, C, B),
    {MultiC, MultiB} = interleave(fun(T) -> parallel_calls(CNodes, T, 3000) end, C, B),
    %% memory over 1M messages
    Rss0 = rss_kb(CPid),
    oneway(C, SNodes, 4000),
    Rss1 = rss_kb(CPid),
    [peer:stop(P) || {P, _} <- Callers ++ Senders],
    peer:stop(BPeer),
    os:cmd("kill -TERM " ++ integer_to_list(CPid)),
    receive {Port, {exit_status, _}} -> ok after 5000 -> ok end,
    write(Root, Host, Extra, OneC, OneB, RttC, RttB, SingleC, SingleB, MultiC, MultiB, Rss0, Rss1).

write(Root, Host, Extra, OneC, OneB, RttC, RttB, SingleC, SingleB, MultiC, MultiB, Rss0, Rss1) ->
    {RateC, CpuC} = OneC, {RateB, CpuB} = OneB,
    {SCr, SCc} = SingleC, {SBr, SBc} = SingleB, {MCr, MCc} = MultiC, {MBr, MBc} = MultiB,
    Rows = [{"one-way: msgs/s handled by the receiver (wall)", RateC, RateB, RateC / RateB, ""},
            {"one-way: receiver CPU per message, us", CpuC, CpuB, CpuB / CpuC, ""},
            {"one-way: msgs/s one receiver core sustains (1/CPU)", 1.0e6 / CpuC, 1.0e6 / CpuB,
             CpuB / CpuC, ">= 1.5"},
            {"call round trip, us (wall)", RttC, RttB, RttB / RttC, ">= 1.0 (BEAM/C)"},
            {"calls/s, 1 caller, 1 connection (wall)", SCr, SBr, SCr / SBr, ""},
            {"receiver CPU per call, 1 connection, us", SCc, SBc, SBc / SCc, ""},
            {"calls/s, 8 BEAM nodes at once (wall)", MCr, MBr, MCr / MBr, ""},
            {"receiver CPU per call, 8 nodes, us", MCc, MBc, MBc / MCc, ""}],
    Lines =
        ["# C node benchmark (`make bench` / `make cnode-bench`)\n\n",
         io_lib:format("Machine: ~b cores (~s), OTP ~s. One run: the C node (`priv/shoal_cnode`~s) "
                       "and a BEAM peer hosting the same `echo` job (answer calls with the "
                       "request, count casts), measured alternately, ~b rounds each, medians. "
                       "Senders: 2 sender nodes x 2 processes casting `{msg, I}`; counts and CPU "
                       "are taken at the receiver over ~b ms windows.\n\n",
                       [erlang:system_info(logical_processors_available), Host,
                        erlang:system_info(otp_release),
                        case Extra of [] -> ""; _ -> ", " ++ lists:join(" ", Extra) end,
                        rounds(), ?WINDOW_MS]),
         "| job | C node | BEAM node | ratio (C vs BEAM) | target |\n|---|---|---|---|---|\n",
         [io_lib:format("| ~s | ~s | ~s | ~.2f | ~s |\n", [J, fmt(Cv), fmt(Bv), R, T])
          || {J, Cv, Bv, R, T} <- Rows],
         io_lib:format("\n8 nodes vs 1 connection on the C node: ~.2f of the single-connection "
                       "figure (wall); per receiver CPU-second ~.2f (target: within 20%, i.e. "
                       ">= 0.80, per core).\n", [MCr / SCr, SCc / MCc]),
         io_lib:format("\nC node RSS: ~b kB before, ~b kB after 4 more seconds of one-way "
                       "load (growth ~b kB).\n", [Rss0, Rss1, Rss1 - Rss0]),
         "\nRatios: C/BEAM for rates, BEAM/C for times and CPU costs (higher is always better "
         "for the C node). Absolute numbers drift +-30% between runs on these VMs (other jobs "
         "share the 2 cores); compare ratios.\n"],
    Text = iolist_to_binary(Lines),
    io:format("~s", [Text]),
    Out = os:getenv("CNODE_BENCH_OUT", filename:join([Root, "bench", "results", "cnode.md"])),
    ok = file:write_file(Out, Text),
    halt(0).

rounds() -> list_to_integer(os:getenv("CNODE_BENCH_ROUNDS", "5")).

peer(Prefix) ->
    {ok, P, Nd} = peer:start(#{name => peer:random_name(list_to_atom(Prefix)),
                               args => ["-setcookie", ?COOKIE, "-pa",
                                        filename:dirname(code:which(?MODULE)),
                                        "-connect_all", "false"]}),
    {P, Nd}.

fmt(X) when is_float(X), X < 1000 -> io_lib:format("~.2f", [X]);
fmt(X) -> integer_to_list(round(X)).

%% runs F on C and B alternately; medians of each component
interleave(F, C, B) ->
    Rs = [{F(C), F(B)} || _ <- lists:seq(1, rounds())],
    {median([Rc || {Rc, _} <- Rs]), median([Rb || {_, Rb} <- Rs])}.

median([X | _] = L) when is_tuple(X) ->
    list_to_tuple([median([element(I, T) || T <- L]) || I <- lists:seq(1, tuple_size(X))]);
median(L) -> lists:nth((length(L) + 1) div 2, lists:sort(L)).

%% ---- one-way, measured at the receiver ---------------------------------------------------

oneway({Target, OsPid}, SNodes, WindowMs) ->
    Blasters = [spawn(Nd, ?MODULE, blaster, [Target, self()]) || Nd <- SNodes, _ <- [1, 2]],
    timer:sleep(300), %% steady state
    {N0, Cpu0, T0} = sample(Target, OsPid),
    timer:sleep(WindowMs),
    {N1, Cpu1, T1} = sample(Target, OsPid),
    [exit(P, kill) || P <- Blasters],
    drain(Target, -1),
    Msgs = N1 - N0,
    {Msgs / ((T1 - T0) / 1.0e6), (Cpu1 - Cpu0) / max(Msgs, 1)}.

blaster(Target, _Parent) -> blast(Target, 0).
blast(Target, I) ->
    gen_server:cast(Target, {msg, I}),
    blast(Target, I + 1).

sample(Target, OsPid) ->
    N = gen_server:call(Target, cast_count, 60000),
    {N, cpu_us(OsPid), erlang:monotonic_time(microsecond)}.

%% waits until the receiver has handled everything still in flight
drain(Target, Last) ->
    timer:sleep(100),
    case gen_server:call(Target, cast_count, 60000) of
        Last -> ok;
        N -> drain(Target, N)
    end.

cpu_us(OsPid) ->
    {ok, B} = file:read_file("/proc/" ++ integer_to_list(OsPid) ++ "/stat"),
    [_, Rest] = binary:split(B, <<") ">>),
    F = string:lexemes(binary_to_list(Rest), " "),
    %% after "pid (comm) ": state is field 3, utime 14, stime 15
    Ticks = list_to_integer(lists:nth(12, F)) + list_to_integer(lists:nth(13, F)),
    Ticks * 1000000 div 100.

%% ---- calls --------------------------------------------------------------------------------

rtt({Target, _}, N) ->
    T0 = erlang:monotonic_time(),
    [ping = gen_server:call(Target, ping) || _ <- lists:seq(1, N)],
    secs(T0) * 1.0e6 / N.

caller(Parent, Target, N) ->
    [{x, I} = gen_server:call(Target, {x, I}, 60000) || I <- lists:seq(1, N)],
    Parent ! {self(), done}.

parallel_calls(Nodes, {Target, OsPid}, PerNode) ->
    Self = self(),
    Cpu0 = cpu_us(OsPid),
    T0 = erlang:monotonic_time(),
    Pids = [spawn(Nd, ?MODULE, caller, [Self, Target, PerNode]) || Nd <- Nodes],
    [receive {P, done} -> ok end || P <- Pids],
    Calls = length(Nodes) * PerNode,
    {Calls / secs(T0), (cpu_us(OsPid) - Cpu0) / Calls}.

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
