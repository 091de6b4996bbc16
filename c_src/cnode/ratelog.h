/* ratelog.h - a rate limiter for log lines about events a peer can cause at will (failed
 * handshakes): in each period the first `burst` events are logged in full and the rest only
 * counted, per kind; a summary of what was counted is due once the period is over. After a
 * period with more than `burst` events, the next period logs nothing in full (a flood shows
 * up as one summary per period) until a period has at most `burst` events again. Pure: the
 * caller passes the time, so tests drive it with any clock. */
#ifndef SHOAL_RATELOG_H
#define SHOAL_RATELOG_H

#include <stdint.h>

#define RATELOG_KINDS 8

typedef struct ratelog {
    uint64_t period;       /* length of a period (caller's time unit, e.g. ms) */
    uint32_t burst;        /* events logged in full per period */
    int flooding;          /* the last period had more than burst events */
    uint64_t start;        /* when the current period began */
    uint32_t logged;       /* events of this period logged in full */
    uint64_t counted;      /* events of this period only counted */
    uint64_t kinds[RATELOG_KINDS];      /* counted, per kind */
    uint64_t pend_from;    /* start of the oldest period whose counts are not reported yet */
    uint64_t pend_total;   /* counted events of ended periods not reported yet */
    uint64_t pend_kinds[RATELOG_KINDS]; /* the same, per kind */
} ratelog;

/* What shoal__ratelog_summary reports: `total` events not logged (per kind in `kinds`) over
 * the `span` time units that ended now. */
typedef struct ratelog_sum {
    uint64_t total;
    uint64_t span;
    uint64_t kinds[RATELOG_KINDS];
} ratelog_sum;

/* Sets r up at time now with burst lines per period (period 0 counts as 1). */
void shoal__ratelog_init(ratelog *r, uint32_t burst, uint64_t period, uint64_t now);

/* Records one event of kind (< RATELOG_KINDS; larger ones count as the last kind) at now,
 * which must not go back in time. Returns 1 when the caller should log it in full, 0 when it
 * was only counted (it will be in a summary). */
int shoal__ratelog_hit(ratelog *r, uint64_t now, unsigned kind);

/* Returns 1 and fills *s when a period with counted events has ended by now and was not
 * reported yet (each counted event is reported exactly once); else 0. Call it from a
 * periodic timer so a summary comes even when no new event does. */
int shoal__ratelog_summary(ratelog *r, uint64_t now, ratelog_sum *s);

#endif
