/* nif_table.c - the table resource and the reads: whereis, lookup, route, counts, info.
 *
 * A table (ntab) wraps a registry (c_src/core/registry.h). Its Erlang handle is a resource
 * pointing at it; LOCAL entries hold references too, since their monitors may fire after
 * the handle is gone. The hot reads encode the key on the stack and answer from the
 * key's table slot under the segment's read lock: a local worker's pid is the slot's word
 * itself, a replica's pid comes from the pid store (nif_pidstore.c). */
#include <string.h>

#include "nif_priv.h"
#include "shoal_err.h"

ntab *ntab_of(ErlNifEnv *env, ERL_NIF_TERM t)
{
    ntab_res *res;
    if (!enif_get_resource(env, t, priv_of(env)->table_rt, (void **)&res) || res->nt == NULL)
        return NULL;
    if (atomic_load_explicit(&res->nt->dead, memory_order_relaxed)) return NULL;
    return res->nt;
}

void ntab_unref(ntab *nt)
{
    if (atomic_fetch_sub(&nt->refs, 1) == 1) {
        enif_rwlock_destroy(nt->life);
        enif_mutex_destroy(nt->pend_lock);
        enif_rwlock_destroy(nt->adm_lock);
        if (nt->admitted) enif_free(nt->admitted);
        enif_free(nt);
    }
}

void tell_listener(ErlNifEnv *env, ntab *nt, ERL_NIF_TERM msg)
{
    uint64_t w = atomic_load_explicit(&nt->listener, memory_order_relaxed);
    if (w == 0) return;
    ErlNifPid to;
    to.pid = (ERL_NIF_TERM)w;
    (void)enif_send(env, &to, NULL, msg);
}

/* ---- entries and nodes leaving ------------------------------------------------------------ */

size_t entry_size(const registry_entry *e)
{
    switch (NE_KIND(e)) {
    case NE_LOCAL: return sizeof(nlocal) + e->te.klen;
    case NE_CLAIM: return sizeof(nclaim) + e->te.klen;
    default: return sizeof(nplain) + e->te.klen;
    }
}

void entry_release(void *ctx, registry_entry *e)
{
    ntab *nt = ctx;
    atomic_fetch_sub_explicit(&nt->entry_bytes, (long)entry_size(e), memory_order_relaxed);
    switch (NE_KIND(e)) {
    case NE_LOCAL: enif_release_resource(e); break;
    case NE_CLAIM:
        claim_free_waiters((nclaim *)e);
        enif_free(e);
        break;
    default:
        if (registry_state_of(e) == REGISTRY_REMOTE) pidstore_drop(nt, (nplain *)e);
        enif_free(e);
        break;
    }
}

registry_node *node_of(ErlNifEnv *env, ntab *nt, ERL_NIF_TERM a, int create, int *rc)
{
    kbuf name;
    if ((*rc = key_atom_name(env, a, &name)) != 0) return NULL;
    registry_node *n = create ? registry_node_get(nt->r, name.p, name.len, &a)
                              : registry_node_find(nt->r, name.p, name.len);
    kbuf_free(&name);
    *rc = n == NULL && create ? SHOAL_ENOMEM : 0;
    return n;
}

/* ---- life cycle --------------------------------------------------------------------------- */

/* new(SegmentsLog2) -> Table */
ERL_NIF_TERM nif_new(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    nif_priv *P = priv_of(env);
    unsigned bits;
    if (!enif_get_uint(env, argv[0], &bits) || bits > 16) return enif_make_badarg(env);
    ntab *nt = enif_alloc(sizeof *nt);
    if (nt == NULL) return raise_for(env, SHOAL_ENOMEM);
    memset(nt, 0, sizeof *nt);
    registry_hooks hooks = {.release = entry_release, .node_init = pidstore_node_init,
                            .node_fini = pidstore_node_fini, .alloc = enif_alloc, .free = enif_free,
                            .ctx = nt};
    if ((nt->life = enif_rwlock_create("shoal_life")) == NULL ||
        (nt->pend_lock = enif_mutex_create("shoal_pending")) == NULL ||
        (nt->adm_lock = enif_rwlock_create("shoal_admitted")) == NULL ||
        registry_new(&nt->r, bits, &P->shared->clock, &hooks) != 0) {
        if (nt->life) enif_rwlock_destroy(nt->life);
        if (nt->pend_lock) enif_mutex_destroy(nt->pend_lock);
        if (nt->adm_lock) enif_rwlock_destroy(nt->adm_lock);
        enif_free(nt);
        return raise_for(env, SHOAL_ENOMEM);
    }
    atomic_init(&nt->npending, 0);
    atomic_init(&nt->entry_bytes, 0);
    atomic_init(&nt->refs, 1);
    atomic_init(&nt->dead, 0);
    atomic_init(&nt->listener, 0);
    ntab_res *res = enif_alloc_resource(P->table_rt, sizeof *res);
    if (res == NULL) {
        registry_free(nt->r);
        enif_rwlock_destroy(nt->life);
        enif_mutex_destroy(nt->pend_lock);
        enif_rwlock_destroy(nt->adm_lock);
        enif_free(nt);
        return raise_for(env, SHOAL_ENOMEM);
    }
    res->nt = nt;
    ERL_NIF_TERM term = enif_make_resource(env, res);
    enif_release_resource(res);
    return term;
}

void ntab_dtor(ErlNifEnv *env, void *obj)
{
    (void)env;
    ntab *nt = ((ntab_res *)obj)->nt;
    if (nt == NULL) return;
    enif_rwlock_rwlock(nt->life);
    /* No NIF call can reach the table any more (its handle is gone, and a compaction
     * holds the handle in its arguments); down callbacks still can, and find r until it
     * is freed. Dead: the entries leaving now queue no compaction. */
    atomic_store(&nt->dead, 1);
    pidstore_forget(nt);
    registry *r = nt->r;
    nt->r = NULL;
    enif_rwlock_rwunlock(nt->life);
    registry_free(r); /* LOCAL entries drop their references on nt as they go */
    ntab_unref(nt);
}

/* delete(Table) -> ok. Dead from now on: every later call raises badarg. (Dirty.) */
ERL_NIF_TERM nif_delete(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    GET_TABLE(nt, argv[0]);
    if (atomic_exchange(&nt->dead, 1)) return enif_make_badarg(env);
    enif_rwlock_rlock(nt->life);
    if (nt->r != NULL) registry_clear(nt->r);
    enif_rwlock_runlock(nt->life);
    pidstore_forget(nt);
    return priv_of(env)->a.ok;
}

/* ---- reads -------------------------------------------------------------------------------- */

struct fast_read {
    ErlNifEnv *env;
    ERL_NIF_TERM pid;    /* the worker, or 0 */
    registry_state state;
};

static void read_fast(void *ctx, uint64_t word, registry_state st)
{
    struct fast_read *c = ctx;
    c->state = st;
    if (st == REGISTRY_LOCAL)
        c->pid = (ERL_NIF_TERM)word; /* a local pid is an immediate: the word is the term */
    else if (st == REGISTRY_REMOTE)
        c->pid = pidstore_get(c->env, word);
}

/* whereis(Table, Key) -> pid() | undefined */
ERL_NIF_TERM nif_whereis(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    GET_TABLE(nt, argv[0]);
    GET_KEY(kb, k, argv[1]);
    struct fast_read c = {env, 0, REGISTRY_ABSENT};
    (void)registry_get_fast(nt->r, &k, read_fast, &c);
    kbuf_free(&kb);
    return c.pid ? c.pid : priv_of(env)->a.undefined;
}

/* route(Table, Key, Msg) -> ok | {remote, Pid} | undefined */
ERL_NIF_TERM nif_route(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    nif_priv *P = priv_of(env);
    GET_TABLE(nt, argv[0]);
    GET_KEY(kb, k, argv[1]);
    struct fast_read c = {env, 0, REGISTRY_ABSENT};
    (void)registry_get_fast(nt->r, &k, read_fast, &c);
    kbuf_free(&kb);
    if (c.pid == 0) return P->a.undefined;
    if (c.state == REGISTRY_REMOTE) return enif_make_tuple2(env, P->a.remote, c.pid);
    ErlNifPid to;
    to.pid = c.pid;
    return enif_send(env, &to, NULL, argv[2]) ? P->a.ok : P->a.undefined;
}

struct full_read {
    ErlNifEnv *env;
    nif_priv *P;
    ERL_NIF_TERM result;
};

static void read_full(void *ctx, const registry_entry *e)
{
    struct full_read *c = ctx;
    ErlNifEnv *env = c->env;
    nif_atoms *a = &c->P->a;
    ERL_NIF_TERM vsn = enif_make_uint64(env, e->vsn);
    switch (registry_state_of(e)) {
    case REGISTRY_LOCAL:
        c->result = enif_make_tuple4(env, a->local, (ERL_NIF_TERM)e->te.fast, vsn,
                                     (e->te.flags & REGISTRY_MOVING) ? a->true_ : a->false_);
        break;
    case REGISTRY_REMOTE:
        c->result = enif_make_tuple4(env, a->remote, node_atom(e->node),
                                     pidstore_get(env, e->te.fast), vsn);
        break;
    case REGISTRY_CLAIMED:
        c->result = enif_make_tuple2(env, a->claimed, (ERL_NIF_TERM)e->te.fast);
        break;
    case REGISTRY_TOMB: c->result = enif_make_tuple2(env, a->tomb, vsn); break;
    default: break;
    }
}

/* lookup(Table, Key) -> {local, Pid, Vsn, Moving} | {remote, Node, Pid, Vsn} |
 *                       {claimed, Pid} | {tomb, Vsn} | undefined */
ERL_NIF_TERM nif_lookup(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    nif_priv *P = priv_of(env);
    GET_TABLE(nt, argv[0]);
    GET_KEY(kb, k, argv[1]);
    struct full_read c = {env, P, P->a.undefined};
    (void)registry_get(nt->r, &k, read_full, &c);
    kbuf_free(&kb);
    return c.result;
}

/* ---- the listener and counts -------------------------------------------------------------- */

/* set_listener(Table, Pid | undefined) -> ok */
ERL_NIF_TERM nif_set_listener(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    nif_priv *P = priv_of(env);
    GET_TABLE(nt, argv[0]);
    ErlNifPid pid;
    if (enif_is_identical(argv[1], P->a.undefined)) {
        atomic_store(&nt->listener, 0);
        return P->a.ok;
    }
    if (!enif_get_local_pid(env, argv[1], &pid)) return enif_make_badarg(env);
    atomic_store(&nt->listener, (uint64_t)pid.pid);
    return P->a.ok;
}

/* count(Table) -> live workers, local and replicated */
ERL_NIF_TERM nif_count(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    GET_TABLE(nt, argv[0]);
    registry_counts c;
    registry_count(nt->r, &c);
    return enif_make_uint64(env, c.local + c.remote);
}

/* count(Table, Node | local) -> this node's workers, or Node's replicas */
ERL_NIF_TERM nif_count_node(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    nif_priv *P = priv_of(env);
    GET_TABLE(nt, argv[0]);
    if (enif_is_identical(argv[1], P->a.local)) {
        registry_counts c;
        registry_count(nt->r, &c);
        return enif_make_uint64(env, c.local);
    }
    int rc;
    registry_node *n = node_of(env, nt, argv[1], 0, &rc);
    if (rc != 0) return raise_for(env, rc);
    size_t count = n ? registry_node_replicas(n) : 0;
    registry_node_put(nt->r, n);
    return enif_make_uint64(env, count);
}

/* info(Table) -> #{entries, workers, local_workers, remote_workers, claims, tombs, nodes,
 *                  table_bytes} */
ERL_NIF_TERM nif_info(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    nif_atoms *a = &priv_of(env)->a;
    GET_TABLE(nt, argv[0]);
    registry_counts c;
    registry_count(nt->r, &c);
    /* The registry's structures, the entries, and the replicas' pids (allocator headers
     * not included). */
    long eb = atomic_load_explicit(&nt->entry_bytes, memory_order_relaxed);
    size_t bytes = registry_memory(nt->r) + (eb > 0 ? (size_t)eb : 0) + pidstore_bytes(nt);
    ERL_NIF_TERM keys[8] = {a->entries, a->workers, a->local_workers, a->remote_workers,
                            a->claims, a->tombs, a->nodes, a->table_bytes};
    ERL_NIF_TERM vals[8] = {enif_make_uint64(env, c.entries),
                            enif_make_uint64(env, c.local + c.remote),
                            enif_make_uint64(env, c.local),
                            enif_make_uint64(env, c.remote),
                            enif_make_uint64(env, c.claims),
                            enif_make_uint64(env, c.tombs),
                            enif_make_uint64(env, registry_nodes(nt->r)),
                            enif_make_uint64(env, bytes)};
    ERL_NIF_TERM map;
    if (!enif_make_map_from_arrays(env, keys, vals, 8, &map)) return enif_make_badarg(env);
    return map;
}

/* ---- admitted nodes ----------------------------------------------------------------------- */

/* Whether replicas of node may be stored (the registry's `admitted` hook; called under a
 * segment lock, so it only takes adm_lock for reading). */
int table_admitted(ntab *nt, const registry_node *node)
{
    enif_rwlock_rlock(nt->adm_lock);
    int ok = !nt->admitting;
    ERL_NIF_TERM a = node_atom(node);
    for (int i = 0; !ok && i < nt->nadm; i++) ok = nt->admitted[i] == a;
    enif_rwlock_runlock(nt->adm_lock);
    return ok;
}

/* admit(Table, Node, Bool) -> ok: from the first call on, the table stores replicas only
 * of the nodes admitted (true) and not dismissed since (false). */
ERL_NIF_TERM nif_admit(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    nif_atoms *a = &priv_of(env)->a;
    GET_TABLE(nt, argv[0]);
    int on = enif_is_identical(argv[2], a->true_);
    if (!enif_is_atom(env, argv[1]) || (!on && !enif_is_identical(argv[2], a->false_)))
        return enif_make_badarg(env);
    int rc = 0;
    enif_rwlock_rwlock(nt->adm_lock);
    nt->admitting = 1;
    int at = -1;
    for (int i = 0; i < nt->nadm; i++)
        if (nt->admitted[i] == argv[1]) at = i;
    if (on && at < 0) {
        if (nt->nadm == nt->adm_cap) {
            int cap = nt->adm_cap ? nt->adm_cap * 2 : 8;
            ERL_NIF_TERM *p = enif_realloc(nt->admitted, (size_t)cap * sizeof *p);
            if (p == NULL) rc = SHOAL_ENOMEM;
            else {
                nt->admitted = p;
                nt->adm_cap = cap;
            }
        }
        if (rc == 0) nt->admitted[nt->nadm++] = argv[1];
    } else if (!on && at >= 0) {
        nt->admitted[at] = nt->admitted[--nt->nadm];
    }
    enif_rwlock_rwunlock(nt->adm_lock);
    return rc == 0 ? a->ok : raise_for(env, rc);
}
