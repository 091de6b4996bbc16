/* nif_meter.c - sliding-window event meters (c_src/core/ratemeter.h) as resources, each
 * guarded by its own mutex. */
#include "nif_priv.h"
#include "ratemeter.h"
#include "shoal_err.h"

typedef struct meter_res {
    ErlNifMutex *lock;
    ratemeter m;
} meter_res;

void meter_dtor(ErlNifEnv *env, void *obj)
{
    (void)env;
    meter_res *m = obj;
    if (m->lock) enif_mutex_destroy(m->lock);
}

/* meter_new() -> Meter */
ERL_NIF_TERM nif_meter_new(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    (void)argv;
    meter_res *m = enif_alloc_resource(priv_of(env)->meter_rt, sizeof *m);
    if (m == NULL) return raise_for(env, SHOAL_ENOMEM);
    ratemeter_init(&m->m);
    m->lock = enif_mutex_create("shoal_meter");
    if (m->lock == NULL) {
        enif_release_resource(m);
        return raise_for(env, SHOAL_ENOMEM);
    }
    ERL_NIF_TERM t = enif_make_resource(env, m);
    enif_release_resource(m);
    return t;
}

static int get_meter(ErlNifEnv *env, ERL_NIF_TERM t, meter_res **m)
{
    return enif_get_resource(env, t, priv_of(env)->meter_rt, (void **)m) && (*m)->lock != NULL;
}

/* meter_add(Meter, N) -> ok */
ERL_NIF_TERM nif_meter_add(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    meter_res *m;
    ErlNifUInt64 n;
    if (!get_meter(env, argv[0], &m) || !enif_get_uint64(env, argv[1], &n))
        return enif_make_badarg(env);
    int64_t now = enif_monotonic_time(ERL_NIF_MSEC);
    enif_mutex_lock(m->lock);
    ratemeter_add(&m->m, now, n);
    enif_mutex_unlock(m->lock);
    return priv_of(env)->a.ok;
}

/* meter_sum(Meter, Seconds) -> non_neg_integer(): events in the last Seconds (1..60). */
ERL_NIF_TERM nif_meter_sum(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    meter_res *m;
    int secs;
    if (!get_meter(env, argv[0], &m) || !enif_get_int(env, argv[1], &secs) || secs < 1 ||
        secs > RATEMETER_SECONDS)
        return enif_make_badarg(env);
    int64_t now = enif_monotonic_time(ERL_NIF_MSEC);
    enif_mutex_lock(m->lock);
    uint64_t s = ratemeter_sum(&m->m, now, secs);
    enif_mutex_unlock(m->lock);
    return enif_make_uint64(env, s);
}
