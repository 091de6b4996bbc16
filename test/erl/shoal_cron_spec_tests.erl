%% EUnit: shoal_cron:next/2, the pure parser, against a table of specs with their known
%% next firings, the bad specs it must refuse, and a brute-force oracle (a minute-by-minute
%% walk over explicitly written field sets) for random start times.
-module(shoal_cron_spec_tests).

-include_lib("eunit/include/eunit.hrl").

-define(MON_2024_01_01, {{2024, 1, 1}, {0, 0, 0}}).   % a Monday

%% {Spec, After, Expected first firing strictly after}
table() ->
    B = ?MON_2024_01_01,
    [{"* * * * *", B, {{2024, 1, 1}, {0, 1, 0}}},
     {"* * * * * *", B, {{2024, 1, 1}, {0, 0, 1}}},
     {"*/15 * * * * *", {{2024, 1, 1}, {0, 0, 14}}, {{2024, 1, 1}, {0, 0, 15}}},
     {"*/15 * * * * *", {{2024, 1, 1}, {0, 0, 45}}, {{2024, 1, 1}, {0, 1, 0}}},
     {"0 */2 * * *", B, {{2024, 1, 1}, {2, 0, 0}}},
     {"30 9 * * MON-FRI", B, {{2024, 1, 1}, {9, 30, 0}}},
     {"30 9 * * MON-FRI", {{2024, 1, 5}, {9, 30, 0}}, {{2024, 1, 8}, {9, 30, 0}}},
     {"30 9 * * mon-fri", {{2024, 1, 5}, {9, 30, 0}}, {{2024, 1, 8}, {9, 30, 0}}},
     {"0 0 1 * *", B, {{2024, 2, 1}, {0, 0, 0}}},
     {"0 0 29 2 *", {{2024, 3, 1}, {0, 0, 0}}, {{2028, 2, 29}, {0, 0, 0}}},
     {"0 0 29 2 *", {{2024, 2, 28}, {23, 59, 59}}, {{2024, 2, 29}, {0, 0, 0}}},
     {"0 0 31 * *", {{2024, 4, 1}, {0, 0, 0}}, {{2024, 5, 31}, {0, 0, 0}}},
     {"0 12 1,15 * *", {{2024, 1, 15}, {12, 0, 0}}, {{2024, 2, 1}, {12, 0, 0}}},
     {"0 0 * JAN,jul *", B, {{2024, 1, 2}, {0, 0, 0}}},
     {"0 0 * JAN,jul *", {{2024, 1, 31}, {0, 0, 0}}, {{2024, 7, 1}, {0, 0, 0}}},
     %% day-of-month and day-of-week both restricted: either matches (cron's rule)
     {"0 0 13 * FRI", B, {{2024, 1, 5}, {0, 0, 0}}},
     {"0 0 1-7 * MON", B, {{2024, 1, 2}, {0, 0, 0}}},
     {"0 30 4 29 2 MON", {{2024, 3, 1}, {0, 0, 0}}, {{2025, 2, 3}, {4, 30, 0}}},
     %% only one restricted: both must match
     {"0 0 ? * 5", B, {{2024, 1, 5}, {0, 0, 0}}},
     {"0 0 * * 7", B, {{2024, 1, 7}, {0, 0, 0}}},
     {"0 0 * * 0", B, {{2024, 1, 7}, {0, 0, 0}}},
     {"0 0 * * SUN", B, {{2024, 1, 7}, {0, 0, 0}}},
     {"5-10/2 * * * * *", {{2024, 1, 1}, {0, 0, 9}}, {{2024, 1, 1}, {0, 1, 5}}},
     {"10/20 * * * * *", {{2024, 1, 1}, {0, 0, 50}}, {{2024, 1, 1}, {0, 1, 10}}},
     {"0 0 0 1 1 *", {{2023, 12, 31}, {23, 59, 59}}, {{2024, 1, 1}, {0, 0, 0}}},
     {<<"15 10 * * *">>, B, {{2024, 1, 1}, {10, 15, 0}}},
     {"  15   10 * * *  ", B, {{2024, 1, 1}, {10, 15, 0}}},
     {second, {{2024, 1, 1}, {23, 59, 59}}, {{2024, 1, 2}, {0, 0, 0}}},
     {minute, {{2024, 1, 1}, {10, 0, 30}}, {{2024, 1, 1}, {10, 1, 0}}},
     {hour, {{2024, 1, 1}, {10, 0, 0}}, {{2024, 1, 1}, {11, 0, 0}}},
     {day, {{2024, 12, 31}, {23, 59, 59}}, {{2025, 1, 1}, {0, 0, 0}}},
     {week, B, {{2024, 1, 7}, {0, 0, 0}}},
     {"@hourly", B, {{2024, 1, 1}, {1, 0, 0}}},
     {"@daily", B, {{2024, 1, 2}, {0, 0, 0}}},
     {"@weekly", B, {{2024, 1, 7}, {0, 0, 0}}},
     {"@monthly", {{2024, 1, 31}, {12, 0, 0}}, {{2024, 2, 1}, {0, 0, 0}}},
     {"@yearly", B, {{2025, 1, 1}, {0, 0, 0}}},
     %% intervals: rounded up to whole seconds
     {5000, B, {{2024, 1, 1}, {0, 0, 5}}},
     {1500, B, {{2024, 1, 1}, {0, 0, 2}}},
     {60000, {{2024, 1, 1}, {23, 59, 30}}, {{2024, 1, 2}, {0, 0, 30}}}].

next_firings_match_the_table_test_() ->
    [{lists:flatten(io_lib:format("~p after ~p", [Spec, After])),
      ?_assertEqual(Expected, shoal_cron:next(Spec, After))}
     || {Spec, After, Expected} <- table()].

bad_specs_are_refused_test_() ->
    Bad = ["60 * * * *", "* 24 * * *", "* * 0 * *", "* * 32 * *", "* * * 13 *",
           "* * * * 8", "* * * *", "* * * * * * *", "a b c d e", "5-1 * * * *",
           "*/0 * * * *", "1,,2 * * * *", "* * * FOO *", "", 0, -5, 1.5, foo,
           {interval, 0}, [1, 2, 3], <<255, 0>>],
    [{lists:flatten(io_lib:format("~p", [S])),
      ?_assertMatch({error, {bad_spec, _}}, shoal_cron:next(S, ?MON_2024_01_01))}
     || S <- Bad].

specs_no_date_can_match_never_fire_test_() ->
    [?_assertEqual({error, {bad_spec, never_fires}}, shoal_cron:next(S, ?MON_2024_01_01))
     || S <- ["0 0 30 2 *", "0 0 31 4,6,9,11 *"]].

bad_times_are_refused_test_() ->
    [?_assertMatch({error, {bad_time, _}}, shoal_cron:next("* * * * *", T))
     || T <- [{{2024, 2, 30}, {0, 0, 0}}, {{2024, 1, 1}, {24, 0, 0}},
              {{2024, 1, 1}, {0, 60, 0}}, now, {2024, 1, 1}]].

%% The first firing is strictly after the given time even when that time matches.
strictly_after_test() ->
    ?assertEqual({{2024, 1, 1}, {9, 31, 0}},
                 shoal_cron:next("* 9 * * *", {{2024, 1, 1}, {9, 30, 0}})),
    ?assertEqual({{2024, 1, 2}, {9, 30, 0}},
                 shoal_cron:next("30 9 * * *", {{2024, 1, 1}, {9, 30, 0}})).

%%% The oracle ----------------------------------------------------------------------------

%% {Spec, Minutes, Hours, DaysOfMonth, Months, DaysOfWeek (0 = Sunday), DomOrDow}
oracle_specs() ->
    All = fun(A, B) -> lists:seq(A, B) end,
    [{"*/7 3-5 * * *", lists:seq(0, 59, 7), [3, 4, 5], All(1, 31), All(1, 12), All(0, 6), false},
     {"0,30 */6 1-10 * *", [0, 30], [0, 6, 12, 18], All(1, 10), All(1, 12), All(0, 6), false},
     {"15 12 * * TUE,THU", [15], [12], All(1, 31), All(1, 12), [2, 4], false},
     {"45 23 10-12 * SAT", [45], [23], [10, 11, 12], All(1, 12), [6], true},
     {"0 0 * FEB,MAR *", [0], [0], All(1, 31), [2, 3], All(0, 6), false},
     {"59 1 28-31 * *", [59], [1], [28, 29, 30, 31], All(1, 12), All(0, 6), false}].

oracle_agrees_on_random_times_test_() ->
    rand:seed(exsss, {17, 42, 4711}),
    [begin
         Start = calendar:gregorian_seconds_to_datetime(
                   calendar:datetime_to_gregorian_seconds({{2023, 1, 1}, {0, 0, 0}})
                   + rand:uniform(3 * 365 * 86400)),
         {lists:flatten(io_lib:format("~s after ~p", [Spec, Start])),
          ?_assertEqual(walk(O, Start), shoal_cron:next(Spec, Start))}
     end || {Spec, _, _, _, _, _, _} = O <- oracle_specs(), _ <- lists:seq(1, 8)].

%% The first minute boundary after Start whose fields are all in the sets.
walk(O, Start) ->
    S0 = calendar:datetime_to_gregorian_seconds(Start),
    First = (S0 div 60 + 1) * 60,
    walk_from(O, First, First + 400 * 86400).

walk_from(_O, S, Last) when S > Last -> never;
walk_from({_, Mins, Hours, Doms, Mons, Dows, Or} = O, S, Last) ->
    {{Y, Mo, D}, {H, Mi, _}} = DT = calendar:gregorian_seconds_to_datetime(S),
    Dow = calendar:day_of_the_week(Y, Mo, D) rem 7,
    DayOk = case Or of
                true -> lists:member(D, Doms) orelse lists:member(Dow, Dows);
                false -> lists:member(D, Doms) andalso lists:member(Dow, Dows)
            end,
    case lists:member(Mi, Mins) andalso lists:member(H, Hours) andalso DayOk
        andalso lists:member(Mo, Mons) of
        true -> DT;
        false -> walk_from(O, S + 60, Last)
    end.
