/* ratelog.c - the log-line rate limiter of ratelog.h: periods of fixed length, a burst of full
 * lines per period, per-kind counts of the rest, summaries that never lose or repeat a count. */
#include "ratelog.h"

#include <string.h>

void shoal__ratelog_init(ratelog *r, uint32_t burst, uint64_t period, uint64_t now)
{
    memset(r, 0, sizeof *r);
    r->burst = burst;
    r->period = period ? period : 1;
    r->start = now;
}

/* Ends the current period when it is over: its counts become pending, and whether it was a
 * flood decides how the next one logs. A new period starts at now (an idle stretch is not
 * cut into empty periods, but it counts as one calm period when it is that long). */
static void roll(ratelog *r, uint64_t now)
{
    if (now - r->start < r->period)
        return;
    if (r->counted) {
        if (!r->pend_total)
            r->pend_from = r->start;
        r->pend_total += r->counted;
        for (unsigned k = 0; k < RATELOG_KINDS; k++)
            r->pend_kinds[k] += r->kinds[k];
    }
    r->flooding = (uint64_t)r->logged + r->counted > r->burst && now - r->start < 2 * r->period;
    r->start = now;
    r->logged = 0;
    r->counted = 0;
    memset(r->kinds, 0, sizeof r->kinds);
}

int shoal__ratelog_hit(ratelog *r, uint64_t now, unsigned kind)
{
    roll(r, now);
    if (!r->flooding && r->logged < r->burst) {
        r->logged++;
        return 1;
    }
    r->counted++;
    r->kinds[kind < RATELOG_KINDS ? kind : RATELOG_KINDS - 1]++;
    return 0;
}

int shoal__ratelog_summary(ratelog *r, uint64_t now, ratelog_sum *s)
{
    roll(r, now);
    if (!r->pend_total)
        return 0;
    s->total = r->pend_total;
    s->span = now - r->pend_from;
    memcpy(s->kinds, r->pend_kinds, sizeof s->kinds);
    r->pend_total = 0;
    memset(r->pend_kinds, 0, sizeof r->pend_kinds);
    return 1;
}
