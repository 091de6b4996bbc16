/* shoal_nif.c - the `shoal_nif` library: load, upgrade, unload, the function table, and
 * the node's clock (hlc/0).
 *
 * Everything a NIF needs from the library instance lives in its private data (nif_priv.h),
 * made in `load`: every atom and resource type. What must survive an upgrade (the count of
 * loaded instances and the clock, so versions keep increasing) is made once by the first
 * load and handed on by each upgrade. The library pins itself in memory: tables keep
 * pointers to its functions (registry hooks) and outlive the instance that made them. */
#define _GNU_SOURCE /* dladdr */
#include <dlfcn.h>
#include <string.h>

#include "nif_priv.h"

static int open_types(ErlNifEnv *env, nif_priv *P, ErlNifResourceFlags flags)
{
    ErlNifResourceTypeInit local_init = {.dtor = local_dtor, .stop = NULL, .down = local_down};
    ErlNifResourceTypeInit table_init = {.dtor = ntab_dtor};
    ErlNifResourceTypeInit meter_init = {.dtor = meter_dtor};
    P->table_rt = enif_open_resource_type_x(env, "shoal_table", &table_init, flags, NULL);
    P->local_rt = enif_open_resource_type_x(env, "shoal_entry", &local_init, flags, NULL);
    P->meter_rt = enif_open_resource_type_x(env, "shoal_meter", &meter_init, flags, NULL);
    if (!P->table_rt || !P->local_rt || !P->meter_rt) return -1;
#define X(field, name) P->a.field = enif_make_atom(env, name);
    NIF_ATOMS(X)
#undef X
    return 0;
}

/* Keep this copy of the library mapped for the life of the VM. Tables store pointers to
 * its functions and outlive the library instance that made them: after an upgrade to a
 * library at another path (a release upgrade), purging the old module would otherwise
 * unmap code that old tables still call. 0 or -1. */
static int pin_library(void)
{
    Dl_info info;
    if (dladdr((void *)&entry_release, &info) == 0 || info.dli_fname == NULL) return -1;
    return dlopen(info.dli_fname, RTLD_NOW | RTLD_NODELETE) != NULL ? 0 : -1;
}

static nif_priv *priv_new(ErlNifEnv *env, nif_shared *shared, ErlNifResourceFlags flags)
{
    nif_priv *P = enif_alloc(sizeof *P);
    if (P == NULL) return NULL;
    memset(P, 0, sizeof *P);
    P->shared = shared;
    if (open_types(env, P, flags) != 0) {
        enif_free(P);
        return NULL;
    }
    return P;
}

static int on_load(ErlNifEnv *env, void **priv, ERL_NIF_TERM info)
{
    (void)info;
    if (pin_library() != 0) return -1;
    /* Never freed: tables and other instances may refer to it for the life of the VM. */
    nif_shared *shared = enif_alloc(sizeof *shared);
    if (shared == NULL) return -1;
    atomic_init(&shared->loads, 0);
    registry_clock_init(&shared->clock);
    nif_priv *P = priv_new(env, shared, ERL_NIF_RT_CREATE);
    if (P == NULL) {
        enif_free(shared);
        return -1;
    }
    atomic_fetch_add(&shared->loads, 1);
    *priv = P;
    return 0;
}

static int on_upgrade(ErlNifEnv *env, void **priv, void **old_priv, ERL_NIF_TERM info)
{
    (void)info;
    if (pin_library() != 0) return -1;
    nif_shared *shared = ((nif_priv *)*old_priv)->shared;
    nif_priv *P = priv_new(env, shared, ERL_NIF_RT_CREATE | ERL_NIF_RT_TAKEOVER);
    if (P == NULL) return -1;
    atomic_fetch_add(&shared->loads, 1);
    *priv = P;
    return 0;
}

static void on_unload(ErlNifEnv *env, void *priv)
{
    (void)env;
    nif_priv *P = priv;
    atomic_fetch_sub(&P->shared->loads, 1);
    enif_free(P);
}

/* load_info() -> number of loaded instances of this library (tests check upgrades). */
static ERL_NIF_TERM nif_load_info(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    (void)argv;
    return enif_make_int(env, atomic_load(&priv_of(env)->shared->loads));
}

/* hlc() -> the node's clock: max(system time in µs, last + 1). */
static ERL_NIF_TERM nif_hlc(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    (void)argv;
    return enif_make_uint64(env, registry_clock_next(&priv_of(env)->shared->clock, now_us()));
}

/* observe(Vsn) -> ok: the node's clock now exceeds Vsn (versions it hands out later are
 * above it). */
static ERL_NIF_TERM nif_observe(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ErlNifUInt64 v;
    if (!enif_get_uint64(env, argv[0], &v)) return enif_make_badarg(env);
    registry_clock_observe(&priv_of(env)->shared->clock, v);
    return priv_of(env)->a.ok;
}

static ErlNifFunc funcs[] = {
    {"new", 1, nif_new, 0},
    {"delete", 1, nif_delete, ERL_NIF_DIRTY_JOB_CPU_BOUND},
    {"whereis", 2, nif_whereis, 0},
    {"lookup", 2, nif_lookup, 0},
    {"route", 3, nif_route, 0},
    {"claim", 3, nif_claim, 0},
    {"release_claim", 3, nif_release_claim, 0},
    {"register", 4, nif_register, 0},
    {"unregister", 3, nif_unregister, 0},
    {"set_moving", 4, nif_set_moving, 0},
    {"put_remote", 6, nif_put_remote, 0},
    {"put_successor", 6, nif_put_successor, 0},
    {"put_synced", 7, nif_put_synced, 0},
    {"remove_remote", 4, nif_remove_remote, 0},
    {"set_listener", 2, nif_set_listener, 0},
    {"count", 1, nif_count, 0},
    {"count", 2, nif_count_node, 0},
    {"info", 1, nif_info, 0},
    {"fold", 3, nif_fold, 0},
    {"hlc", 0, nif_hlc, 0},
    {"observe", 1, nif_observe, 0},
    {"admit", 3, nif_admit, 0},
    {"canonical", 1, nif_canonical, 0},
    {"hash", 1, nif_hash, 0},
    {"meter_new", 0, nif_meter_new, 0},
    {"meter_add", 2, nif_meter_add, 0},
    {"meter_sum", 2, nif_meter_sum, 0},
    {"load_info", 0, nif_load_info, 0},
};

ERL_NIF_INIT(shoal_nif, funcs, on_load, NULL, on_upgrade, on_unload)
