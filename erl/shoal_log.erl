%% @doc Shoal's log lines: `logger' reports in the domain `[shoal]', with the metadata
%% `pool', `key' and `node' set, so a team can route or filter them like OTP's own, e.g.
%% ```
%% logger:add_handler_filter(default, no_shoal_debug,
%%     {fun(#{level := debug, meta := #{domain := [shoal | _]}}, _) -> stop; (E, _) -> E end, ok}).
%% '''
%% A report is a map: `what' (an atom naming the event, e.g. `worker_init_failed'), the pool,
%% key and node when known, and the details; format_report/1 renders it as one line. The
%% levels Shoal uses and the events it logs are listed in docs/telemetry.md.
%%
%% OTP's own `default' handler logs only events without a domain or in `[otp]' /
%% `[otp, sasl]' (its filters stop everything else), so in a plain `erl' a `[shoal]' report
%% would be dropped. When the shoal application starts, show_in_default_handler/0 adds one
%% filter, `shoal', to that handler (only if it still has OTP's default filters) that lets
%% `[shoal | _]' events through; `logger:remove_handler_filter(default, shoal)' undoes it.
%% Elixir's Logger replaces the default handler and shows every domain already.
-module(shoal_log).

-export([log/4, log_limited/4, enabled/1, format_report/1, show_in_default_handler/0]).

-type meta() :: #{pool => atom(), key => term(), node => node(), atom() => term()}.
-export_type([meta/0]).

%% @doc Whether log/4 at Level would log anything (for callers that build much before).
-spec enabled(logger:level()) -> boolean().
enabled(Level) -> logger:allow(Level, ?MODULE).

%% @doc Log event `What' at `Level'. `Meta' may give `pool', `key' and `node' (default:
%% this node), which go both into the logger metadata (for filters and formatter templates)
%% and into the report (so the default formatter shows them); other keys of Meta are
%% added to the logger metadata only. `Details' is the rest of the report. Nothing is
%% built when the level is off (a drain logs a debug line per worker moved).
-spec log(logger:level(), atom(), meta(), map()) -> ok.
log(Level, What, Meta, Details) when is_atom(What), is_map(Meta), is_map(Details) ->
    case logger:allow(Level, ?MODULE) of
        true ->
            Ids = maps:with([pool, key], Meta),
            Node = maps:get(node, Meta, node()),
            logger:log(Level, maps:merge(Details, Ids#{what => What, node => Node}),
                       Meta#{domain => [shoal], node => Node,
                             report_cb => fun ?MODULE:format_report/1});
        false ->
            ok
    end.

%% Lines per second that log_limited/4 lets through for one pool and one `What'.
-define(PER_SECOND, 10).
-define(LIMIT_KEY(Pool, What), {?MODULE, limit, Pool, What}).

%% @doc log/4 for events that can come in floods (a key whose init/2 fails on every message,
%% a partition that heals with thousands of conflicts): at most 10 lines per second for one
%% pool (Meta's `pool') and one `What'; the others are counted, and the next line that goes
%% through carries `suppressed => N', the lines dropped since the previous one.
-spec log_limited(logger:level(), atom(), meta(), map()) -> ok.
log_limited(Level, What, Meta, Details) ->
    case allow(limiter(maps:get(pool, Meta, undefined), What)) of
        {true, 0} -> log(Level, What, Meta, Details);
        {true, N} -> log(Level, What, Meta, Details#{suppressed => N});
        false -> ok
    end.

%% One `atomics' array per pool and What (created on first use, kept in persistent_term):
%% the second of the current window, the lines logged in it, the lines suppressed since the
%% last one logged. Concurrent loggers may let a line or two more through: a bound on
%% volume, not an exact count.
limiter(Pool, What) ->
    case persistent_term:get(?LIMIT_KEY(Pool, What), undefined) of
        undefined ->
            A = atomics:new(3, [{signed, true}]),
            persistent_term:put(?LIMIT_KEY(Pool, What), A),
            A;
        A -> A
    end.

allow(A) ->
    Now = erlang:monotonic_time(second),
    case atomics:get(A, 1) of
        Now -> ok;
        Old -> atomics:compare_exchange(A, 1, Old, Now) =:= ok andalso atomics:put(A, 2, 0)
    end,
    case atomics:add_get(A, 2, 1) =< ?PER_SECOND of
        true -> {true, atomics:exchange(A, 3, 0)};
        false -> atomics:add(A, 3, 1), false
    end.

%% @doc One line for a Shoal report: `shoal pool P key K on N: what (details)', with the
%% parts that are known.
-spec format_report(map()) -> {io:format(), [term()]}.
format_report(#{what := What} = R) ->
    Details = maps:without([what, pool, key, node], R),
    {Fmt, Args} = lists:unzip(
                    [{"shoal", []}]
                    ++ [{" pool ~0tp", [P]} || {ok, P} <- [maps:find(pool, R)]]
                    ++ [{" key ~0tp", [K]} || {ok, K} <- [maps:find(key, R)]]
                    ++ [{" on ~0tp", [N]} || {ok, N} <- [maps:find(node, R)]]
                    ++ [{": ~ts", [atom_to_list(What)]}]
                    ++ [{" ~0tp", [Details]} || map_size(Details) > 0]),
    {lists:append(Fmt), lists:append(Args)}.

%% @doc Let `[shoal | _]' events through OTP's `default' logger handler, if it is there with
%% OTP's default domain filters (which drop every other domain); otherwise leave the logger
%% configuration alone. Idempotent; `ok' either way.
-spec show_in_default_handler() -> ok.
show_in_default_handler() ->
    case logger:get_handler_config(default) of
        {ok, #{filter_default := stop, filters := Filters}} ->
            OtpDefault = lists:keymember(domain, 1, Filters)
                andalso not lists:keymember(shoal, 1, Filters),
            case OtpDefault of
                true ->
                    _ = logger:add_handler_filter(
                          default, shoal, {fun logger_filters:domain/2, {log, sub, [shoal]}}),
                    ok;
                false -> ok
            end;
        _ -> ok
    end.
