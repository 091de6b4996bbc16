/* ratemeter.c - sliding-window event counter behind the pool's restart-intensity checks.
 *
 * Supervision decisions ("more than N worker failures in the last S seconds") need a count
 * over a recent window that is cheap to update on every failure and needs no timer. The meter
 * is a ring of one-second buckets, each stamped with the absolute second it counts, so a
 * bucket left over from a previous lap of the ring is recognised by its stale stamp and
 * ignored or recycled instead of being cleared by a background sweep. Time comes from the
 * caller (monotonic milliseconds, possibly negative as Erlang's monotonic time is). */
#include "ratemeter.h"

#include <stddef.h>

/* Floor division and modulo, so negative times land in the right second and bucket. */
static int64_t second_of(int64_t ms)
{
    int64_t s = ms / 1000;
    return (ms % 1000 < 0) ? s - 1 : s;
}

static size_t slot_of(int64_t sec)
{
    int64_t m = sec % RATEMETER_SECONDS;
    return (size_t)(m < 0 ? m + RATEMETER_SECONDS : m);
}

void ratemeter_init(ratemeter *m)
{
    for (size_t i = 0; i < RATEMETER_SECONDS; i++) {
        m->bucket_sec[i] = INT64_MIN; /* older than any real second, even a negative one */
        m->count[i] = 0;
    }
    m->total = 0;
}

void ratemeter_add(ratemeter *m, int64_t now_ms, uint64_t n)
{
    int64_t sec = second_of(now_ms);
    size_t i = slot_of(sec);

    m->total += n;
    if (m->bucket_sec[i] == sec) {
        m->count[i] += n;
    } else if (m->bucket_sec[i] < sec) {
        /* The bucket still holds a second from an earlier lap: recycle it. */
        m->bucket_sec[i] = sec;
        m->count[i] = n;
    }
    /* else: the bucket already counts a later second, so `sec` is more than a window behind
     * the newest event we saw (time went backwards); it stays in total only. */
}

uint64_t ratemeter_sum(const ratemeter *m, int64_t now_ms, int seconds)
{
    int64_t sec = second_of(now_ms);
    uint64_t sum = 0;

    if (seconds < 1) seconds = 1;
    if (seconds > RATEMETER_SECONDS) seconds = RATEMETER_SECONDS;
    for (size_t i = 0; i < RATEMETER_SECONDS; i++) {
        int64_t b = m->bucket_sec[i];
        /* Unsigned difference: b may be INT64_MIN, where a signed sec - b would overflow. */
        if (b <= sec && (uint64_t)sec - (uint64_t)b < (uint64_t)seconds) sum += m->count[i];
    }
    return sum;
}
