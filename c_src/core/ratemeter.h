/* ratemeter.h - sliding-window event rate meter (failures per second / per minute).
 *
 * A ring of one-second buckets covering the last RATEMETER_SECONDS seconds. Callers pass
 * the current time in milliseconds (monotonic), so tests control time. Not thread-safe on
 * its own: the NIF guards a meter with a mutex. */
#ifndef SHOAL_RATEMETER_H
#define SHOAL_RATEMETER_H

#include <stdint.h>

#define RATEMETER_SECONDS 60

typedef struct ratemeter {
    int64_t bucket_sec[RATEMETER_SECONDS]; /* which absolute second each bucket counts */
    uint64_t count[RATEMETER_SECONDS];     /* events in that second */
    uint64_t total;                        /* events ever recorded */
} ratemeter;

/* ratemeter_init - an empty meter. `m` must not be NULL. */
void ratemeter_init(ratemeter *m);

/* ratemeter_add - record `n` events at time now_ms. Time going backwards is tolerated:
 * events older than the window are counted in `total` only. */
void ratemeter_add(ratemeter *m, int64_t now_ms, uint64_t n);

/* ratemeter_sum - events recorded in the last `seconds` whole seconds up to and including
 * the current second (1 <= seconds <= RATEMETER_SECONDS; other values are clamped). */
uint64_t ratemeter_sum(const ratemeter *m, int64_t now_ms, int seconds);

#endif
