%% @doc Real OTP `peer' nodes for the multi-node suites (shoal_cluster_SUITE,
%% shoal_member_SUITE, shoal_chaos_SUITE).
%%
%% The peers are driven over their standard I/O (`connection => standard_io'): the CT
%% node is never connected to them by distribution, so they form a cluster among themselves
%% only and a partition between them is clean. They start with
%%   * `-kernel dist_auto_connect never': no message, erpc or monitor opens a connection by
%%     itself; only net_kernel:connect_node/1 does (connect/2 here). A partition is
%%     erlang:disconnect_node/1 (disconnect/2 here) and stays one until connect/2 heals it;
%%   * `-connect_all false': global does not build a full mesh behind our back;
%%   * `-kernel prevent_overlapping_partitions false': OTP 25's global would otherwise
%%     disconnect nodes of its own accord while a partition is made pair by pair.
%%
%% Each peer runs a collector (peer_init/0) that owns two public ETS tables:
%% `shoal_test_events' (test workers record their callbacks there) and
%% `shoal_test_store' (a user's store for the workers that persist), and monitors every
%% worker incarnation a test worker tells it of, recording `{down, Key, Pid, Reason}' and
%% `{down_at, Pid, Microseconds}'.
-module(shoal_test_cluster).

-export([start_peers/3, start_peer/2, stop_peers/1, peer_args/1, code_paths/1,
         connect/2, disconnect/2, connect_all/1, wait_connected/2,
         pcall/4, pcall/5, poll/2, wait_until/3, split/2]).
-export([peer_init/0, collector/0]).

-define(COOKIE, "shoal_test").
-define(CALL_TIMEOUT, 60000).

%% @doc The code paths a peer needs to run shoal and the given test modules.
-spec code_paths([module()]) -> [string()].
code_paths(Modules) ->
    {ok, _} = application:ensure_all_started(shoal),
    lists:usort([code:lib_dir(shoal, ebin) | [filename:dirname(code:which(M)) || M <- Modules]]).

%% @doc N fresh peers named after Tag (unique per run), each with shoal started and a
%% collector; not connected to each other.
-spec start_peers(atom() | string(), pos_integer(), [string()]) -> [{pid(), node()}].
start_peers(Tag, N, Paths) ->
    Base = lists:concat(["shoal_", os:getpid(), "_", erlang:unique_integer([positive]), "_", Tag]),
    [start_peer(lists:concat([Base, "_", [$a + I - 1]]), Paths) || I <- lists:seq(1, N)].

%% @doc One peer named Name (also to restart a node under the name it had).
-spec start_peer(string(), [string()]) -> {pid(), node()}.
start_peer(Name, Paths) ->
    {ok, Pid, Node} = peer:start(#{name => list_to_atom(Name), connection => standard_io,
                                   args => peer_args(Paths)}),
    ok = peer:call(Pid, ?MODULE, peer_init, [], ?CALL_TIMEOUT),
    {Pid, Node}.

%% @doc The command-line arguments of a peer (see the module doc).
-spec peer_args([string()]) -> [string()].
peer_args(Paths) ->
    ["-setcookie", ?COOKIE,
     "-kernel", "dist_auto_connect", "never",
     "-kernel", "prevent_overlapping_partitions", "false",
     "-connect_all", "false"
     | lists:append([["-pa", P] || P <- Paths])].

%% @doc Stop peers (whatever state they are in).
-spec stop_peers([{pid(), node()}]) -> ok.
stop_peers(Peers) ->
    _ = [catch peer:stop(P) || {P, _} <- Peers],
    ok.

%% @doc Connect peer P to Node.
-spec connect(pid(), node()) -> ok.
connect(P, Node) ->
    true = pcall(P, net_kernel, connect_node, [Node]),
    ok.

%% @doc Cut the link between peer P and Node (both directions: one disconnect does).
-spec disconnect(pid(), node()) -> ok.
disconnect(P, Node) ->
    _ = pcall(P, erlang, disconnect_node, [Node]),
    ok.

%% @doc Connect every pair of Peers and wait until each sees all the others.
-spec connect_all([{pid(), node()}]) -> ok.
connect_all(Peers) ->
    Nodes = [N || {_, N} <- Peers],
    _ = [connect(P, M) || {P, N} <- Peers, M <- Nodes, M > N],
    _ = [wait_connected(P, Nodes -- [N]) || {P, N} <- Peers],
    ok.

%% @doc Wait until peer P is connected to exactly Nodes.
-spec wait_connected(pid(), [node()]) -> ok.
wait_connected(P, Nodes) ->
    wait_until(fun() -> lists:sort(pcall(P, erlang, nodes, [])) =:= lists:sort(Nodes) end,
               5000, {connected, Nodes}).

%% @doc peer:call with the suites' timeout.
-spec pcall(pid(), module(), atom(), [term()]) -> term().
pcall(P, M, F, A) -> peer:call(P, M, F, A, ?CALL_TIMEOUT).

%% @doc peer:call with a timeout.
-spec pcall(pid(), module(), atom(), [term()], timeout()) -> term().
pcall(P, M, F, A, T) -> peer:call(P, M, F, A, T).

%% @doc Poll Fun (true or any value but false/undefined means done) every 10 ms for up to
%% Ms: `ok' or `timeout'.
-spec poll(fun(() -> term()), non_neg_integer()) -> ok | timeout.
poll(Fun, Ms) -> poll_until(Fun, erlang:monotonic_time(millisecond) + Ms).

poll_until(Fun, Deadline) ->
    case Fun() of
        false -> retry_poll(Fun, Deadline);
        undefined -> retry_poll(Fun, Deadline);
        _ -> ok
    end.

retry_poll(Fun, Deadline) ->
    case erlang:monotonic_time(millisecond) > Deadline of
        true -> timeout;
        false -> timer:sleep(10), poll_until(Fun, Deadline)
    end.

%% @doc poll/2, failing the test case with `{timeout_waiting_for, What}'.
-spec wait_until(fun(() -> term()), non_neg_integer(), term()) -> ok.
wait_until(Fun, Ms, What) ->
    case poll(Fun, Ms) of
        ok -> ok;
        timeout -> ct:fail({timeout_waiting_for, What})
    end.

%% @doc List dealt round robin into N parts.
-spec split(list(), pos_integer()) -> [list()].
split(List, N) ->
    {_, Parts} = lists:foldl(fun(X, {I, Acc}) ->
                                     {(I + 1) rem N,
                                      maps:update_with(I, fun(L) -> [X | L] end, [X], Acc)}
                             end, {0, #{}}, List),
    [lists:reverse(L) || L <- maps:values(Parts)].

%%% On the peers ----------------------------------------------------------------------------

%% @doc Start shoal and the collector on this node.
-spec peer_init() -> ok.
peer_init() ->
    {ok, _} = application:ensure_all_started(shoal),
    Self = self(),
    Pid = spawn(fun() ->
                        register(shoal_test_collector, self()),
                        ets:new(shoal_test_events, [named_table, public, duplicate_bag]),
                        ets:new(shoal_test_store, [named_table, public, set]),
                        Self ! {collector, self()},
                        collector()
                end),
    receive {collector, Pid} -> ok end.

%% @doc The collector's loop: watch the incarnations it is told of, record their exits.
-spec collector() -> no_return().
collector() ->
    receive
        {watch, Key, Pid} ->
            _ = erlang:monitor(process, Pid, [{tag, {'DOWN', Key}}]),
            collector();
        {{'DOWN', Key}, _Ref, process, Pid, Reason} ->
            ets:insert(shoal_test_events, [{down, Key, Pid, Reason},
                                           {down_at, Pid, os:system_time(microsecond)}]),
            collector()
    end.
