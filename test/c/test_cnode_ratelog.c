/* test_cnode_ratelog.c - the handshake-failure log limiter (ratelog.c): a burst of full lines
 * per period, then counts; one summary per period that reports every counted event exactly
 * once; a flood keeps the next periods to summaries; recovery after a calm period; a summary
 * arrives from the periodic call alone; the log stays bounded under any event rate. */
#include "ratelog.h"
#include "test_cnode.h"

#include <CUnit/CUnit.h>
#include <string.h>

static void test_burst_then_counted(void)
{
    ratelog r;
    ratelog_sum s;
    shoal__ratelog_init(&r, 3, 1000, 0);
    CU_ASSERT_EQUAL(shoal__ratelog_hit(&r, 10, 0), 1);
    CU_ASSERT_EQUAL(shoal__ratelog_hit(&r, 20, 1), 1);
    CU_ASSERT_EQUAL(shoal__ratelog_hit(&r, 30, 0), 1);
    for (int i = 0; i < 7; i++)
        CU_ASSERT_EQUAL(shoal__ratelog_hit(&r, 40 + (uint64_t)i, (unsigned)(i % 2)), 0);
    /* nothing is due while the period runs */
    CU_ASSERT_EQUAL(shoal__ratelog_summary(&r, 999, &s), 0);
    CU_ASSERT_EQUAL(shoal__ratelog_summary(&r, 1000, &s), 1);
    CU_ASSERT_EQUAL(s.total, 7);
    CU_ASSERT_EQUAL(s.kinds[0], 4);
    CU_ASSERT_EQUAL(s.kinds[1], 3);
    CU_ASSERT_EQUAL(s.span, 1000);
    /* reported once */
    CU_ASSERT_EQUAL(shoal__ratelog_summary(&r, 1001, &s), 0);
}

static void test_quiet_source_never_summarised(void)
{
    ratelog r;
    ratelog_sum s;
    shoal__ratelog_init(&r, 5, 1000, 0);
    /* 5 events a period, for 20 periods: all logged in full, no summary ever */
    for (uint64_t p = 0; p < 20; p++) {
        for (uint64_t i = 0; i < 5; i++)
            CU_ASSERT_EQUAL(shoal__ratelog_hit(&r, p * 1000 + i * 100, 2), 1);
        CU_ASSERT_EQUAL(shoal__ratelog_summary(&r, p * 1000 + 999, &s), 0);
    }
}

static void test_flood_is_summaries_only_then_recovers(void)
{
    ratelog r;
    ratelog_sum s;
    shoal__ratelog_init(&r, 2, 1000, 0);
    uint64_t t = 0, logged = 0, counted = 0;
    /* period 0: 100 events: 2 logged */
    for (int i = 0; i < 100; i++)
        logged += (uint64_t)shoal__ratelog_hit(&r, t + (uint64_t)i, 0);
    CU_ASSERT_EQUAL(logged, 2);
    /* periods 1..3: still flooding: nothing in full, each period summarised */
    for (int p = 1; p <= 3; p++) {
        t = (uint64_t)p * 1000;
        CU_ASSERT_EQUAL(shoal__ratelog_summary(&r, t, &s), 1);
        counted += s.total;
        for (int i = 0; i < 100; i++)
            CU_ASSERT_EQUAL(shoal__ratelog_hit(&r, t + (uint64_t)i, 3), 0);
    }
    t = 4000;
    CU_ASSERT_EQUAL(shoal__ratelog_summary(&r, t, &s), 1);
    counted += s.total;
    CU_ASSERT_EQUAL(s.kinds[3], 100);
    /* every event either logged or counted exactly once */
    CU_ASSERT_EQUAL(logged + counted, 400);
    /* period 4 is calm (one event: counted, flooding still on), period 5 logs again */
    CU_ASSERT_EQUAL(shoal__ratelog_hit(&r, 4100, 0), 0);
    CU_ASSERT_EQUAL(shoal__ratelog_summary(&r, 5000, &s), 1);
    CU_ASSERT_EQUAL(s.total, 1);
    CU_ASSERT_EQUAL(shoal__ratelog_hit(&r, 5100, 0), 1);
    CU_ASSERT_EQUAL(shoal__ratelog_hit(&r, 5200, 0), 1);
    CU_ASSERT_EQUAL(shoal__ratelog_hit(&r, 5300, 0), 0);
}

static void test_counts_survive_missed_summaries(void)
{
    ratelog r;
    ratelog_sum s;
    shoal__ratelog_init(&r, 1, 100, 0);
    /* events in three periods, nobody asks for a summary in between */
    for (uint64_t p = 0; p < 3; p++)
        for (uint64_t i = 0; i < 10; i++)
            shoal__ratelog_hit(&r, p * 100 + i, (unsigned)i);
    CU_ASSERT_EQUAL(shoal__ratelog_summary(&r, 300, &s), 1);
    CU_ASSERT_EQUAL(s.total, 29); /* 30 events, the first logged */
    CU_ASSERT_EQUAL(s.span, 300);
    uint64_t sum = 0;
    for (unsigned k = 0; k < RATELOG_KINDS; k++)
        sum += s.kinds[k];
    CU_ASSERT_EQUAL(sum, 29);
    /* kinds past the end count as the last one */
    CU_ASSERT_EQUAL(s.kinds[RATELOG_KINDS - 1], 3 + 3 + 3); /* kinds 7, 8, 9 of each period */
}

static void test_log_bounded_at_any_rate(void)
{
    /* one event per time unit for 100 periods: full lines at most burst (the first period)
     * plus one summary per period */
    ratelog r;
    ratelog_sum s;
    const uint64_t period = 500;
    shoal__ratelog_init(&r, 5, period, 0);
    uint64_t lines = 0, counted = 0, events = 0;
    for (uint64_t t = 0; t < 100 * period; t++) {
        if (t % 100 == 0 && shoal__ratelog_summary(&r, t, &s)) {
            lines++;
            counted += s.total;
        }
        lines += (uint64_t)shoal__ratelog_hit(&r, t, 1);
        events++;
    }
    if (shoal__ratelog_summary(&r, 100 * period, &s)) {
        lines++;
        counted += s.total;
    }
    CU_ASSERT(lines <= 5 + 100);
    CU_ASSERT_EQUAL(events, 5 + counted);
}

static void test_idle_gap_starts_fresh(void)
{
    ratelog r;
    ratelog_sum s;
    shoal__ratelog_init(&r, 1, 1000, 0);
    CU_ASSERT_EQUAL(shoal__ratelog_hit(&r, 0, 0), 1);
    CU_ASSERT_EQUAL(shoal__ratelog_hit(&r, 1, 0), 0);
    /* a day later: the old count is due, and the first new event is logged in full */
    CU_ASSERT_EQUAL(shoal__ratelog_hit(&r, 86400000, 0), 1);
    CU_ASSERT_EQUAL(shoal__ratelog_summary(&r, 86400001, &s), 1);
    CU_ASSERT_EQUAL(s.total, 1);
    CU_ASSERT_EQUAL(shoal__ratelog_summary(&r, 86400002, &s), 0);
}

CU_ErrorCode test_cnode_register_ratelog(void)
{
    CU_pSuite s = CU_add_suite("cnode_ratelog", NULL, NULL);
    if (!s || !CU_add_test(s, "burst in full, the rest counted and summarised once",
                           test_burst_then_counted) ||
        !CU_add_test(s, "a source within the burst is never summarised",
                     test_quiet_source_never_summarised) ||
        !CU_add_test(s, "a flood gives summaries only, then recovers",
                     test_flood_is_summaries_only_then_recovers) ||
        !CU_add_test(s, "counts survive summaries nobody asked for",
                     test_counts_survive_missed_summaries) ||
        !CU_add_test(s, "the log stays bounded at any rate", test_log_bounded_at_any_rate) ||
        !CU_add_test(s, "an idle gap starts a fresh period", test_idle_gap_starts_fresh))
        return CU_get_error();
    return CUE_SUCCESS;
}
