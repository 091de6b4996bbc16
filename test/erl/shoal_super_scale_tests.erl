%% EUnit: the auto-scaling policy (shoal_super_scale), sample by sample.
-module(shoal_super_scale_tests).
-include_lib("eunit/include/eunit.hrl").

-define(P, #{min => 1, max => 8, scale_up_queue => 4, idle_after => 1000}).
-define(M0, #{over => 0, idle_since => undefined}).

s(Q, Rate, W, Now) -> #{queue => Q, rate => Rate, workers => W, now => Now}.

one_long_queue_is_not_enough_to_grow_test() ->
    ?assertMatch({none, #{over := 1}}, shoal_super_scale:decide(?P, s(5, 10, 1, 0), ?M0)).

two_long_queues_in_a_row_grow_by_half_at_least_one_test() ->
    {none, M1} = shoal_super_scale:decide(?P, s(5, 10, 1, 0), ?M0),
    ?assertMatch({{grow, 1}, #{over := 0}}, shoal_super_scale:decide(?P, s(5, 10, 1, 100), M1)),
    {none, M2} = shoal_super_scale:decide(?P, s(100, 10, 6, 0), ?M0),
    ?assertMatch({{grow, 2}, _}, shoal_super_scale:decide(?P, s(100, 10, 6, 100), M2)).

growth_stops_at_max_test() ->
    {none, M1} = shoal_super_scale:decide(?P, s(100, 10, 7, 0), ?M0),
    ?assertMatch({{grow, 1}, _}, shoal_super_scale:decide(?P, s(100, 10, 7, 100), M1)),
    {none, M2} = shoal_super_scale:decide(?P, s(100, 10, 8, 0), ?M0),
    ?assertMatch({none, _}, shoal_super_scale:decide(?P, s(100, 10, 8, 100), M2)).

a_short_queue_resets_the_count_test() ->
    {none, M1} = shoal_super_scale:decide(?P, s(5, 10, 1, 0), ?M0),
    {none, M2} = shoal_super_scale:decide(?P, s(4, 10, 1, 100), M1),
    ?assertMatch({none, #{over := 1}}, shoal_super_scale:decide(?P, s(5, 10, 1, 200), M2)).

idle_for_idle_after_goes_back_to_min_test() ->
    {none, M1} = shoal_super_scale:decide(?P, s(0, 0, 5, 0), ?M0),
    {none, M2} = shoal_super_scale:decide(?P, s(0, 0, 5, 999), M1),
    ?assertMatch({{shrink, 4}, #{idle_since := 1000}}, shoal_super_scale:decide(?P, s(0, 0, 5, 1000), M2)).

work_or_a_queue_is_not_idle_test() ->
    {none, M1} = shoal_super_scale:decide(?P, s(0, 0, 5, 0), ?M0),
    {none, M2} = shoal_super_scale:decide(?P, s(0, 3.5, 5, 600), M1),
    ?assertEqual(undefined, maps:get(idle_since, M2)),
    ?assertMatch({none, _}, shoal_super_scale:decide(?P, s(0, 0, 5, 1200), M2)).

at_min_nothing_shrinks_test() ->
    {none, M1} = shoal_super_scale:decide(?P, s(0, 0, 1, 0), ?M0),
    ?assertMatch({none, _}, shoal_super_scale:decide(?P, s(0, 0, 1, 5000), M1)).
