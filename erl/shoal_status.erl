%% @doc An operator's view: an opt-in status page and JSON endpoints, served by OTP's own
%% `inets' httpd on a port you choose, off until you start it.
%%
%% ```
%% {ok, Port} = shoal_status:start(#{port => 8086}).   % http://127.0.0.1:8086/
%% '''
%%
%% Every `sample_ms' (default 1000) it samples each pool through Shoal's public API
%% (shoal:nodes/1, shoal:health/1, shoal:count/2 here, shoal:stats/1 on every member) and
%% keeps the last `history' samples (default 300, five minutes). Per pool and member node:
%% live workers, window and fill, drained and reachable flags, spawns, crashes and idle
%% offloads per second (from the members' stats counters), crashes in the last minute, and
%% the progress of a drain (workers left on a drained node against its count in the last
%% sample before it was drained). Shoal's API exposes no rebalance state: a rebalance shows as counts
%% moving into their windows.
%%
%% URLs: `/' the page (inline SVG and JavaScript, nothing loaded from elsewhere, refreshed
%% every `sample_ms'); `/status.json' the latest sample in full; `/history.json' the kept
%% samples. The formats are in docs/operations.md.
%%
%% Options: `port' (required; 0 picks a free one, start/1 returns it), `ip' (default
%% `{127,0,0,1}'; `any' for every interface; there is no authentication, so keep it on
%% loopback or behind your proxy), `pools' (default `all': the pools started with
%% shoal:start_pool/2, found at each sample; list pools that live in your own supervisors),
%% `sample_ms', `history'.
-module(shoal_status).
-behaviour(gen_server).

-export([start/1, stop/0, child_spec/1, start_link/1, port/0, snapshot/0, history/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-define(TAB, shoal_status).
-define(STATS_TIMEOUT, 2000).

-type options() :: #{port := inet:port_number(), ip => inet:ip_address() | any,
                     pools => all | [atom()], sample_ms => pos_integer(),
                     history => pos_integer()}.
-export_type([options/0]).

-record(st, {httpd :: pid(), port :: inet:port_number(), pools :: all | [atom()],
             sample_ms :: pos_integer(), keep :: pos_integer(),
             prev = #{} :: #{{atom(), node()} => {integer(), map()}},
             drains = #{} :: #{{atom(), node()} => non_neg_integer()},
             last = #{} :: #{{atom(), node()} => non_neg_integer()},
             samples = queue:new() :: queue:queue(map()), n = 0 :: non_neg_integer()}).

%%% API -------------------------------------------------------------------------------------

%% @doc Start the status page under the shoal application (started if need be); returns
%% the port it listens on. `{error, already_started}' if this node serves one already,
%% `{error, {bad_option, Key, Value}}' for a bad option, `{error, Reason}' if the port
%% cannot be opened.
-spec start(options()) -> {ok, inet:port_number()} | {error, term()}.
start(Opts) ->
    case check(Opts) of
        ok ->
            {ok, _} = application:ensure_all_started(shoal),
            case supervisor:start_child(shoal_sup, child_spec(Opts)) of
                {ok, _} -> {ok, port()};
                {error, {already_started, _}} -> {error, already_started};
                {error, already_present} ->
                    _ = supervisor:delete_child(shoal_sup, ?MODULE),
                    start(Opts);
                {error, {Reason, _Child}} -> {error, Reason};
                {error, _} = E -> E
            end;
        {error, _} = E -> E
    end.

%% @doc Stop the status page started with start/1.
-spec stop() -> ok | {error, not_started}.
stop() ->
    case whereis(shoal_sup) =/= undefined andalso
        supervisor:terminate_child(shoal_sup, ?MODULE) of
        ok -> _ = supervisor:delete_child(shoal_sup, ?MODULE), ok;
        _ -> {error, not_started}
    end.

%% @doc A child spec, to run the status page in your own supervision tree instead.
-spec child_spec(options()) -> supervisor:child_spec().
child_spec(Opts) ->
    #{id => ?MODULE, start => {?MODULE, start_link, [Opts]}, shutdown => 5000}.

%% @doc Start the page's server, linked to the caller (see child_spec/1).
-spec start_link(options()) -> {ok, pid()} | {error, term()}.
start_link(Opts) ->
    case check(Opts) of
        ok -> gen_server:start_link({local, ?MODULE}, ?MODULE, Opts, []);
        {error, _} = E -> E
    end.

%% @doc The port the page listens on.
-spec port() -> inet:port_number().
port() -> ets:lookup_element(?TAB, port, 2).

%% @doc The latest sample, as `/status.json' gives it (`#{}' before the first).
-spec snapshot() -> map().
snapshot() ->
    case ets:lookup(?TAB, snapshot) of
        [{snapshot, S}] -> S;
        [] -> #{}
    end.

%% @doc The kept samples, oldest first, as `/history.json' gives them.
-spec history() -> map().
history() ->
    [{history, H}] = ets:lookup(?TAB, history),
    H.

%%% gen_server -----------------------------------------------------------------------------

%% @private
-spec init(options()) -> {ok, #st{}} | {stop, term()}.
init(Opts) ->
    process_flag(trap_exit, true),
    Every = maps:get(sample_ms, Opts, 1000),
    {ok, _} = application:ensure_all_started(inets),
    Dir = code:priv_dir(shoal),
    Ip = case maps:get(ip, Opts, {127, 0, 0, 1}) of
             any -> [];
             Addr -> [{bind_address, Addr}]
         end,
    Cfg = [{port, maps:get(port, Opts)}, {server_name, "shoal_status"},
           {server_root, Dir}, {document_root, Dir}, {modules, [shoal_status_httpd]},
           {mime_types, [{"html", "text/html"}, {"json", "application/json"}]},
           {keep_alive, true}, {max_clients, 32} | Ip],
    %% Under inets' own supervisor (httpd:info/2 knows only such services); monitored, and
    %% stopped in terminate/2.
    case inets:start(httpd, Cfg) of
        {ok, Httpd} ->
            _ = erlang:monitor(process, Httpd),
            [{port, Port}] = httpd:info(Httpd, [port]),
            _ = ets:new(?TAB, [named_table, protected, {read_concurrency, true}]),
            ets:insert(?TAB, [{port, Port}, {sample_ms, Every},
                              {history, #{sample_ms => Every, samples => []}}]),
            self() ! sample,
            {ok, #st{httpd = Httpd, port = Port, pools = maps:get(pools, Opts, all),
                     sample_ms = Every, keep = maps:get(history, Opts, 300)}};
        {error, Reason} ->
            {stop, Reason}
    end.

%% @private
-spec handle_call(term(), gen_server:from(), #st{}) -> {reply, {error, unknown_call}, #st{}}.
handle_call(_Req, _From, S) -> {reply, {error, unknown_call}, S}.

%% @private
-spec handle_cast(term(), #st{}) -> {noreply, #st{}}.
handle_cast(_Msg, S) -> {noreply, S}.

%% @private
-spec handle_info(term(), #st{}) -> {noreply, #st{}} | {stop, term(), #st{}}.
handle_info(sample, #st{sample_ms = Every} = S0) ->
    erlang:send_after(Every, self(), sample),
    {noreply, sample(S0)};
handle_info({'DOWN', _, process, Httpd, Reason}, #st{httpd = Httpd} = S) ->
    {stop, {httpd_exited, Reason}, S};
handle_info(_Info, S) -> {noreply, S}.

%% @private
-spec terminate(term(), #st{}) -> ok.
terminate(_Reason, #st{httpd = Httpd}) ->
    _ = inets:stop(httpd, Httpd),
    ok.

%%% Sampling ---------------------------------------------------------------------------------

sample(#st{samples = Q0, n = N0, keep = Keep, sample_ms = Every} = S0) ->
    Now = erlang:system_time(millisecond),
    {PoolSamples, S1} = lists:mapfoldl(fun(P, Acc) -> sample_pool(P, Now, Acc) end, S0,
                                       pools(S0)),
    Full = maps:from_list(PoolSamples),
    Snapshot = #{node => node(), time => Now, sample_ms => Every, pools => Full},
    Small = #{t => Now, pools => maps:map(fun(_, P) -> brief(P) end, Full)},
    {Q, N} = case N0 >= Keep of
                 true -> {queue:in(Small, queue:drop(Q0)), N0};
                 false -> {queue:in(Small, Q0), N0 + 1}
             end,
    ets:insert(?TAB, [{snapshot, Snapshot},
                      {history, #{sample_ms => Every, node => node(),
                                  samples => queue:to_list(Q)}}]),
    S1#st{samples = Q, n = N}.

pools(#st{pools = all}) ->
    case whereis(shoal_sup) of
        undefined -> [];
        _ -> lists:sort([P || {{shoal_pool, P}, Pid, _, _} <- supervisor:which_children(shoal_sup),
                              is_pid(Pid)])
    end;
pools(#st{pools = Pools}) -> Pools.

sample_pool(Pool, Now, S) ->
    try
        Nodes = shoal:nodes(Pool),
        #{nodes := Health, total := Total} = shoal:health(Pool),
        Stats = lists:zip(Nodes, erpc:multicall(Nodes, shoal, stats, [Pool], ?STATS_TIMEOUT)),
        {PerNode, S1} = lists:mapfoldl(
                          fun({N, St}, Acc) ->
                                  node_sample(Pool, N, maps:get(N, Health, #{}), St, Now, Acc)
                          end, S, Stats),
        {{Pool, #{total => Total, nodes => maps:from_list(PerNode)}}, S1}
    catch
        exit:{{no_such_pool, Pool}, _} -> {{Pool, #{error => no_such_pool}}, S};
        Class:Reason -> {{Pool, #{error => iolist_to_binary(io_lib:format("~0tp:~0tp",
                                                                          [Class, Reason]))}}, S}
    end.

node_sample(Pool, N, H, Stats, Now, #st{prev = Prev, drains = Drains, last = Last} = S) ->
    Count = maps:get(count, H, null),
    Drained = maps:get(drained, H, false),
    {Rates, Prev1} =
        case Stats of
            {ok, #{} = St} ->
                R = rates(maps:get({Pool, N}, Prev, none), Now, St),
                {R#{crashes_per_minute => maps:get(crashes_per_minute, St),
                    call_timeouts => maps:get(call_timeouts, St)},
                 Prev#{{Pool, N} => {Now, St}}};
            _ -> {#{}, maps:remove({Pool, N}, Prev)}
        end,
    %% A drain's baseline: the node's count in the last sample before it was drained.
    {Drain, Drains1, Last1} =
        case {Drained, maps:find({Pool, N}, Drains)} of
            {true, {ok, From}} -> {#{from => From, left => Count}, Drains, Last};
            {true, error} when is_integer(Count) ->
                From = max(Count, maps:get({Pool, N}, Last, 0)),
                {#{from => From, left => Count}, Drains#{{Pool, N} => From}, Last};
            {false, _} when is_integer(Count) ->
                {null, maps:remove({Pool, N}, Drains), Last#{{Pool, N} => Count}};
            _ -> {null, maps:remove({Pool, N}, Drains), Last}
        end,
    Window = maps:get(window, H, #{}),
    Sample = Rates#{count => Count,
                    replica_count => shoal:count(Pool, N),
                    window => Window,
                    fill => maps:get(fill, H, null),
                    drained => Drained,
                    reachable => maps:get(reachable, H, false),
                    stats_ok => is_tuple(Stats) andalso element(1, Stats) =:= ok,
                    drain => Drain},
    {{N, Sample}, S#st{prev = Prev1, drains = Drains1, last = Last1}}.

%% Per-second rates of the members' counters since the previous sample (null for the first
%% sample of a node, and when a counter went down: the node's pool restarted).
rates(none, _Now, _St) ->
    #{spawns_per_s => null, crashes_per_s => null, offloads_per_s => null};
rates({Then, Old}, Now, New) ->
    Dt = max(1, Now - Then) / 1000,
    Rate = fun(K) ->
                   case maps:get(K, New) - maps:get(K, Old) of
                       D when D >= 0 -> D / Dt;
                       _ -> null
                   end
           end,
    #{spawns_per_s => Rate(spawns), crashes_per_s => Rate(crashes),
      offloads_per_s => Rate(idle_offloads)}.

brief(#{nodes := Nodes} = P) ->
    P#{nodes := maps:map(fun(_, NS) ->
                                 maps:with([count, drained, spawns_per_s, crashes_per_s,
                                            offloads_per_s], NS)
                         end, Nodes)};
brief(P) -> P.

%%% Options --------------------------------------------------------------------------------

check(Opts) when is_map(Opts) ->
    Valid = #{port => fun(P) -> is_integer(P) andalso P >= 0 andalso P =< 65535 end,
              ip => fun(any) -> true;
                       (A) -> is_tuple(A) andalso
                                  (tuple_size(A) =:= 4 orelse tuple_size(A) =:= 8)
                    end,
              pools => fun(all) -> true;
                          (L) -> is_list(L) andalso lists:all(fun erlang:is_atom/1, L)
                       end,
              sample_ms => fun(T) -> is_integer(T) andalso T >= 50 end,
              history => fun(H) -> is_integer(H) andalso H >= 1 andalso H =< 100000 end},
    case maps:is_key(port, Opts) of
        false -> {error, {missing_option, port}};
        true ->
            Bad = [{K, V} || {K, V} <- lists:sort(maps:to_list(Opts)),
                             not (maps:is_key(K, Valid) andalso (maps:get(K, Valid))(V))],
            case Bad of
                [] -> ok;
                [{K, V} | _] -> {error, {bad_option, K, V}}
            end
    end;
check(Opts) -> {error, {bad_options, Opts}}.
