/* test_core_ratemeter.c - CUnit suite for the sliding-window rate meter (ratemeter.h).
 *
 * Time is an argument of every call, so each test walks a clock by hand: the window edges
 * (what the last N seconds include), the ring wrapping around, time going backwards and
 * negative monotonic times (Erlang's monotonic clock starts below zero). */
#include <stdint.h>

#include "ratemeter.h"
#include "test_core.h"

#define SEC(s) ((int64_t)(s)*1000)

static void test_new_meter_is_empty(void)
{
    ratemeter m;
    ratemeter_init(&m);
    CU_ASSERT_EQUAL(m.total, 0);
    CU_ASSERT_EQUAL(ratemeter_sum(&m, 0, RATEMETER_SECONDS), 0);
    CU_ASSERT_EQUAL(ratemeter_sum(&m, SEC(-5), RATEMETER_SECONDS), 0);
    CU_ASSERT_EQUAL(ratemeter_sum(&m, INT64_MAX, RATEMETER_SECONDS), 0);
    CU_ASSERT_EQUAL(ratemeter_sum(&m, INT64_MIN, RATEMETER_SECONDS), 0);
}

static void test_events_in_one_second_add_up(void)
{
    ratemeter m;
    ratemeter_init(&m);
    ratemeter_add(&m, SEC(10) + 1, 1);
    ratemeter_add(&m, SEC(10) + 500, 2);
    ratemeter_add(&m, SEC(10) + 999, 3);
    CU_ASSERT_EQUAL(ratemeter_sum(&m, SEC(10) + 999, 1), 6);
    CU_ASSERT_EQUAL(m.total, 6);
    /* The next second starts a new bucket: the last 1 second no longer sees them. */
    CU_ASSERT_EQUAL(ratemeter_sum(&m, SEC(11), 1), 0);
    CU_ASSERT_EQUAL(ratemeter_sum(&m, SEC(11), 2), 6);
}

static void test_window_includes_exactly_the_last_n_seconds(void)
{
    ratemeter m;
    ratemeter_init(&m);
    for (int s = 0; s < 10; s++)
        ratemeter_add(&m, SEC(s) + 250, 1); /* one event in each of seconds 0..9 */
    CU_ASSERT_EQUAL(ratemeter_sum(&m, SEC(9) + 500, 1), 1);
    CU_ASSERT_EQUAL(ratemeter_sum(&m, SEC(9) + 500, 5), 5);   /* seconds 5..9 */
    CU_ASSERT_EQUAL(ratemeter_sum(&m, SEC(9) + 500, 10), 10); /* seconds 0..9 */
    CU_ASSERT_EQUAL(ratemeter_sum(&m, SEC(9) + 500, 60), 10);
    CU_ASSERT_EQUAL(ratemeter_sum(&m, SEC(12), 5), 2); /* seconds 8..12 */
    /* The event of second 0 is inside a 60 s window until second 59 ends. */
    CU_ASSERT_EQUAL(ratemeter_sum(&m, SEC(59) + 999, 60), 10);
    CU_ASSERT_EQUAL(ratemeter_sum(&m, SEC(60), 60), 9);
    CU_ASSERT_EQUAL(ratemeter_sum(&m, SEC(69), 60), 0);
}

static void test_seconds_argument_is_clamped(void)
{
    ratemeter m;
    ratemeter_init(&m);
    for (int s = 0; s < 120; s++)
        ratemeter_add(&m, SEC(s), 1);
    CU_ASSERT_EQUAL(ratemeter_sum(&m, SEC(119), 0), 1);
    CU_ASSERT_EQUAL(ratemeter_sum(&m, SEC(119), -7), 1);
    CU_ASSERT_EQUAL(ratemeter_sum(&m, SEC(119), 61), 60);
    CU_ASSERT_EQUAL(ratemeter_sum(&m, SEC(119), 1000000), 60);
    CU_ASSERT_EQUAL(m.total, 120);
}

static void test_ring_reuses_buckets_of_an_earlier_lap(void)
{
    ratemeter m;
    ratemeter_init(&m);
    ratemeter_add(&m, SEC(3), 5);
    ratemeter_add(&m, SEC(3 + RATEMETER_SECONDS), 2); /* same bucket, next lap */
    CU_ASSERT_EQUAL(ratemeter_sum(&m, SEC(3 + RATEMETER_SECONDS), 1), 2);
    CU_ASSERT_EQUAL(ratemeter_sum(&m, SEC(3 + RATEMETER_SECONDS), 60), 2);
    CU_ASSERT_EQUAL(m.total, 7);
    /* After a long silence nothing is left in the window. */
    CU_ASSERT_EQUAL(ratemeter_sum(&m, SEC(1000000), 60), 0);
    ratemeter_add(&m, SEC(1000000), 1);
    CU_ASSERT_EQUAL(ratemeter_sum(&m, SEC(1000000), 60), 1);
}

static void test_time_going_backwards_inside_the_window(void)
{
    ratemeter m;
    ratemeter_init(&m);
    ratemeter_add(&m, SEC(100), 1);
    ratemeter_add(&m, SEC(95), 1); /* late report, still inside the window */
    CU_ASSERT_EQUAL(ratemeter_sum(&m, SEC(100), 60), 2);
    CU_ASSERT_EQUAL(ratemeter_sum(&m, SEC(100), 5), 1); /* seconds 96..100 */
    CU_ASSERT_EQUAL(ratemeter_sum(&m, SEC(100), 6), 2);
    CU_ASSERT_EQUAL(m.total, 2);
}

static void test_events_older_than_the_window_count_in_total_only(void)
{
    ratemeter m;
    ratemeter_init(&m);
    ratemeter_add(&m, SEC(90), 1);
    ratemeter_add(&m, SEC(100), 1);
    ratemeter_add(&m, SEC(30), 4); /* its bucket holds second 90: too old to count */
    ratemeter_add(&m, SEC(35), 8); /* a free bucket, but 65 s before the newest event */
    CU_ASSERT_EQUAL(ratemeter_sum(&m, SEC(100), 60), 2);
    CU_ASSERT_EQUAL(m.total, 14);
    /* The stale event must not hide the bucket from a later, current one. */
    ratemeter_add(&m, SEC(155), 1);
    CU_ASSERT_EQUAL(ratemeter_sum(&m, SEC(155), 60), 2); /* seconds 100 and 155 */
}

static void test_query_before_recorded_events_sees_none_of_them(void)
{
    ratemeter m;
    ratemeter_init(&m);
    ratemeter_add(&m, SEC(50), 3);
    CU_ASSERT_EQUAL(ratemeter_sum(&m, SEC(40), 60), 0);
    CU_ASSERT_EQUAL(ratemeter_sum(&m, SEC(50), 60), 3);
}

static void test_negative_times(void)
{
    ratemeter m;
    ratemeter_init(&m);
    ratemeter_add(&m, -1, 1);    /* second -1 */
    ratemeter_add(&m, -999, 1);  /* second -1 */
    ratemeter_add(&m, -1000, 1); /* second -1 */
    ratemeter_add(&m, -1001, 1); /* second -2 */
    ratemeter_add(&m, 0, 1);     /* second 0 */
    CU_ASSERT_EQUAL(ratemeter_sum(&m, -1, 1), 3);
    CU_ASSERT_EQUAL(ratemeter_sum(&m, -1, 2), 4);
    CU_ASSERT_EQUAL(ratemeter_sum(&m, 0, 1), 1);
    CU_ASSERT_EQUAL(ratemeter_sum(&m, 0, 3), 5);
    /* Far negative times, as Erlang's monotonic clock gives. */
    ratemeter_init(&m);
    int64_t t = -576460752303423488LL; /* -2^59 ms */
    ratemeter_add(&m, t, 2);
    ratemeter_add(&m, t + SEC(1), 3);
    CU_ASSERT_EQUAL(ratemeter_sum(&m, t + SEC(1), 2), 5);
    CU_ASSERT_EQUAL(ratemeter_sum(&m, t + SEC(1), 1), 3);
}

static void test_extreme_times_and_counts(void)
{
    ratemeter m;
    ratemeter_init(&m);
    ratemeter_add(&m, INT64_MAX, 1ULL << 40);
    ratemeter_add(&m, INT64_MAX - 1, 1);
    CU_ASSERT_EQUAL(ratemeter_sum(&m, INT64_MAX, 60), (1ULL << 40) + 1);
    ratemeter_init(&m);
    ratemeter_add(&m, INT64_MIN, 1);
    CU_ASSERT_EQUAL(ratemeter_sum(&m, INT64_MIN, 1), 1);
    CU_ASSERT_EQUAL(ratemeter_sum(&m, INT64_MAX, 60), 0);
}

CU_ErrorCode test_core_register_ratemeter(void)
{
    CU_pSuite s = CU_add_suite("ratemeter", NULL, NULL);
    if (s == NULL) return CU_get_error();
    static const struct {
        const char *name;
        CU_TestFunc fn;
    } tests[] = {
        {"a new meter is empty", test_new_meter_is_empty},
        {"events in one second add up", test_events_in_one_second_add_up},
        {"the window is exactly the last N seconds",
         test_window_includes_exactly_the_last_n_seconds},
        {"the seconds argument is clamped to 1..60", test_seconds_argument_is_clamped},
        {"the ring reuses buckets of an earlier lap", test_ring_reuses_buckets_of_an_earlier_lap},
        {"time going backwards inside the window", test_time_going_backwards_inside_the_window},
        {"events older than the window count in total only",
         test_events_older_than_the_window_count_in_total_only},
        {"a query before the events sees none of them",
         test_query_before_recorded_events_sees_none_of_them},
        {"negative times", test_negative_times},
        {"extreme times and counts", test_extreme_times_and_counts},
    };
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++)
        if (CU_add_test(s, tests[i].name, tests[i].fn) == NULL) return CU_get_error();
    return CUE_SUCCESS;
}
