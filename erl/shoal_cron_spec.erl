%% @doc Schedule specs of shoal_cron, pure: parsing and "the first firing strictly after".
%%
%% A spec is one of:
%% <ul>
%% <li>a positive integer: an interval in ms;</li>
%% <li>`second', `minute', `hour', `day' or `week' (every second; at second 0 of every
%%     minute; at the start of every hour; every day at 00:00:00; every Sunday at
%%     00:00:00), or the strings `"@hourly"', `"@daily"' (`"@midnight"'), `"@weekly"',
%%     `"@monthly"', `"@yearly"' (`"@annually"');</li>
%% <li>a cron string (list or binary) of 5 fields, `minute hour day-of-month month
%%     day-of-week' (second 0), or 6 fields with seconds first. Each field is `*', a value,
%%     a range `a-b', a step `*/n', `a-b/n' or `a/n' (from a to the field's maximum), or a
%%     comma-separated list of those. Months may be named `jan'..`dec' and weekdays
%%     `sun'..`sat' (any case); weekday 0 and 7 are both Sunday. When both day-of-month
%%     and day-of-week are restricted (neither is `*' or `?'), a day matches if either
%%     matches, as in cron; otherwise both must.</li>
%% </ul>
-module(shoal_cron_spec).

-export([parse/1, next/2, is_interval/1]).

-export_type([spec/0, parsed/0]).

-type spec() :: pos_integer() | second | minute | hour | day | week | string() | binary().
-record(cron, {sec :: [0..59], min :: [0..59], hour :: [0..23], dom :: [1..31],
               mon :: [1..12], dow :: [0..6], dom_any :: boolean(), dow_any :: boolean()}).
-opaque parsed() :: {interval, pos_integer()} | #cron{}.

-define(YEARS_SEARCHED, 400).   % one Gregorian cycle: every weekday/date pattern occurs

%% @doc Parse a spec: `{ok, Parsed}' or `{error, {bad_spec, Why}}'.
-spec parse(term()) -> {ok, parsed()} | {error, {bad_spec, term()}}.
parse({interval, Ms} = P) when is_integer(Ms), Ms > 0 -> {ok, P};
parse(#cron{} = P) -> {ok, P};
parse(Ms) when is_integer(Ms), Ms > 0 -> {ok, {interval, Ms}};
parse(second) -> parse("* * * * * *");
parse(minute) -> parse("0 * * * * *");
parse(hour) -> parse("0 0 * * * *");
parse(day) -> parse("0 0 0 * * *");
parse(week) -> parse("0 0 0 * * 0");
parse(B) when is_binary(B) ->
    case unicode:characters_to_list(B) of
        L when is_list(L) -> parse(L);
        _ -> {error, {bad_spec, B}}
    end;
parse(S) when is_list(S) ->
    try io_lib:printable_unicode_list(S) andalso string:lowercase(string:trim(S)) of
        false -> {error, {bad_spec, S}};
        "@yearly" -> parse("0 0 0 1 1 *");
        "@annually" -> parse("0 0 0 1 1 *");
        "@monthly" -> parse("0 0 0 1 * *");
        "@weekly" -> parse(week);
        "@daily" -> parse(day);
        "@midnight" -> parse(day);
        "@hourly" -> parse(hour);
        Str -> parse_fields(string:lexemes(Str, " \t"))
    catch _:_ -> {error, {bad_spec, S}}
    end;
parse(Other) ->
    {error, {bad_spec, Other}}.

%% @doc Is the (parsed) spec an interval? Returns its length in ms, or `false'.
-spec is_interval(parsed()) -> pos_integer() | false.
is_interval({interval, Ms}) -> Ms;
is_interval(_) -> false.

%% @doc The first firing strictly after `DateTime' (a wall-clock time: whatever zone the
%% caller means). For an interval spec: `DateTime' plus the interval rounded up to a whole
%% second. `{error, {bad_spec, Why}}' for a bad spec (`never_fires' for one no date can
%% match, like February 30), `{error, {bad_time, T}}' for a bad `DateTime'.
-spec next(spec() | parsed(), calendar:datetime()) ->
          calendar:datetime() | {error, {bad_spec | bad_time, term()}}.
next(Spec, DateTime) ->
    case {parse(Spec), valid_datetime(DateTime)} of
        {{error, _} = E, _} -> E;
        {_, false} -> {error, {bad_time, DateTime}};
        {{ok, {interval, Ms}}, true} ->
            Secs = calendar:datetime_to_gregorian_seconds(DateTime) + (Ms + 999) div 1000,
            calendar:gregorian_seconds_to_datetime(Secs);
        {{ok, #cron{} = C}, true} ->
            {{Y, Mo, D}, {H, Mi, S}} = DateTime,
            search(C, Y + ?YEARS_SEARCHED, Y, Mo, D, H, Mi, S + 1)
    end.

%%% Parsing -------------------------------------------------------------------------------

parse_fields([Mi, H, Dom, Mo, Dow]) -> parse_fields(["0", Mi, H, Dom, Mo, Dow]);
parse_fields([S, Mi, H, Dom, Mo, Dow] = Fields) ->
    try
        {ok, #cron{sec = field(S, 0, 59, []), min = field(Mi, 0, 59, []),
                   hour = field(H, 0, 23, []), dom = field(Dom, 1, 31, []),
                   mon = field(Mo, 1, 12, months()),
                   dow = lists:usort([D rem 7 || D <- field(Dow, 0, 7, days())]),
                   dom_any = any(Dom), dow_any = any(Dow)}}
    catch throw:Why -> {error, {bad_spec, {Why, string:join(Fields, " ")}}}
    end;
parse_fields(Fields) ->
    {error, {bad_spec, {fields, length(Fields)}}}.

any("*") -> true;
any("?") -> true;
any(_) -> false.

field(F, Lo, Hi, Names) ->
    lists:usort(lists:append([part(P, Lo, Hi, Names) || P <- string:split(F, ",", all)])).

part(P, Lo, Hi, Names) ->
    {Range, Step} = case string:split(P, "/") of
                        [R] -> {R, 1};
                        [R, St] -> {R, int(St, 1, Hi - Lo + 1, [])}
                    end,
    {From, To} = case {Range, string:split(Range, "-")} of
                     {"*", _} -> {Lo, Hi};
                     {"?", _} -> {Lo, Hi};
                     {_, [A]} when Step =:= 1 -> V = int(A, Lo, Hi, Names), {V, V};
                     {_, [A]} -> {int(A, Lo, Hi, Names), Hi};
                     {_, [A, B]} -> {int(A, Lo, Hi, Names), int(B, Lo, Hi, Names)}
                 end,
    case From =< To of
        true -> lists:seq(From, To, Step);
        false -> throw({bad_range, P})
    end.

int(S, Lo, Hi, Names) ->
    V = case lists:keyfind(S, 1, Names) of
            {_, N} -> N;
            false ->
                case string:to_integer(S) of
                    {I, []} -> I;
                    _ -> throw({bad_value, S})
                end
        end,
    case V >= Lo andalso V =< Hi of
        true -> V;
        false -> throw({out_of_range, S})
    end.

months() ->
    lists:zip(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov",
               "dec"], lists:seq(1, 12)).

days() ->
    lists:zip(["sun", "mon", "tue", "wed", "thu", "fri", "sat"], lists:seq(0, 6)).

valid_datetime({{Y, Mo, D}, {H, Mi, S}}) when is_integer(Y), is_integer(Mo), is_integer(D),
                                              is_integer(H), is_integer(Mi), is_integer(S) ->
    Y >= 0 andalso calendar:valid_date(Y, Mo, D) andalso H >= 0 andalso H =< 23
        andalso Mi >= 0 andalso Mi =< 59 andalso S >= 0 andalso S =< 59;
valid_datetime(_) ->
    false.

%%% Search --------------------------------------------------------------------------------

%% The smallest candidate >= (Y, Mo, D, H, Mi, S); fields past their maximum carry over.
search(_C, Last, Y, _, _, _, _, _) when Y > Last -> {error, {bad_spec, never_fires}};
search(C, Last, Y, Mo, D, H, Mi, S) when S > 59 -> search(C, Last, Y, Mo, D, H, Mi + 1, 0);
search(C, Last, Y, Mo, D, H, Mi, _) when Mi > 59 -> search(C, Last, Y, Mo, D, H + 1, 0, 0);
search(C, Last, Y, Mo, D, H, _, _) when H > 23 -> search(C, Last, Y, Mo, D + 1, 0, 0, 0);
search(C, Last, Y, Mo, _, _, _, _) when Mo > 12 -> search(C, Last, Y + 1, 1, 1, 0, 0, 0);
search(C, Last, Y, Mo, D, H, Mi, S) ->
    case D > calendar:last_day_of_the_month(Y, Mo) of
        true -> search(C, Last, Y, Mo + 1, 1, 0, 0, 0);
        false ->
            case first_from(Mo, C#cron.mon) of
                none -> search(C, Last, Y + 1, 1, 1, 0, 0, 0);
                Mo1 when Mo1 > Mo -> search(C, Last, Y, Mo1, 1, 0, 0, 0);
                _ ->
                    case day_matches(C, Y, Mo, D) of
                        false -> search(C, Last, Y, Mo, D + 1, 0, 0, 0);
                        true -> time(C, Last, Y, Mo, D, H, Mi, S)
                    end
            end
    end.

time(C, Last, Y, Mo, D, H, Mi, S) ->
    case first_from(H, C#cron.hour) of
        none -> search(C, Last, Y, Mo, D + 1, 0, 0, 0);
        H1 when H1 > H -> time(C, Last, Y, Mo, D, H1, 0, 0);
        _ ->
            case first_from(Mi, C#cron.min) of
                none -> search(C, Last, Y, Mo, D, H + 1, 0, 0);
                Mi1 when Mi1 > Mi -> time(C, Last, Y, Mo, D, H, Mi1, 0);
                _ ->
                    case first_from(S, C#cron.sec) of
                        none -> search(C, Last, Y, Mo, D, H, Mi + 1, 0);
                        S1 -> {{Y, Mo, D}, {H, Mi, S1}}
                    end
            end
    end.

day_matches(#cron{dom = Dom, dow = Dow, dom_any = DomAny, dow_any = DowAny}, Y, Mo, D) ->
    InDom = lists:member(D, Dom),
    InDow = lists:member(calendar:day_of_the_week(Y, Mo, D) rem 7, Dow),
    case DomAny orelse DowAny of
        true -> InDom andalso InDow;
        false -> InDom orelse InDow
    end.

first_from(_, []) -> none;
first_from(V, [X | _]) when X >= V -> X;
first_from(V, [_ | T]) -> first_from(V, T).
