/* nif_pidstore.c - where a replica keeps the pid of its remote worker.
 *
 * A remote pid cannot be an ErlNifPid, and decoding it from external format on every
 * lookup costs more than the rest of the lookup. So each node name a table knows has a
 * store: one process-independent environment holding the pids of that node's replicas as
 * terms. A replica's payload word (te.fast, also in its table slot) is its term there; a
 * lookup copies it out with enif_make_copy under the segment's read lock, so the term can
 * be neither moved nor freed meanwhile.
 *
 * Terms cannot be freed one by one: a replica that leaves makes its term dead. When a
 * store holds more dead terms than live ones (and at least COMPACT_MIN dead), the next NIF
 * call on the table that ends finishes with a compaction on a dirty scheduler: the store
 * starts a new environment (generation), every segment is walked under its write lock and
 * each of the node's replicas still in the old generation is copied into the new one and
 * its slot refreshed; then the old environment is freed. Replicas stored meanwhile go to
 * the new generation. A store goes with its node name, when the node's last entry leaves.
 *
 * Lock order: segment lock, then the store's lock (taken inside the storing hook and the
 * walk), then nothing. */
#include <string.h>

#include "nif_priv.h"

#define COMPACT_MIN 4096u /* dead terms before a store is worth compacting */
#define GEN_MASK 0x3FFFu  /* te.user bits 2..15 */

static unsigned gen_of(const registry_entry *e)
{
    return (unsigned)(e->te.user >> 2) & GEN_MASK;
}

static void set_gen(registry_entry *e, unsigned gen)
{
    e->te.user = (uint16_t)((e->te.user & 3u) | ((gen & GEN_MASK) << 2));
}

int pidstore_node_init(void *ctx, registry_node *n, void *arg)
{
    (void)ctx;
    nnode *p = enif_alloc(sizeof *p);
    if (p == NULL) return -1;
    memset(p, 0, sizeof *p);
    p->atom = *(ERL_NIF_TERM *)arg;
    p->lock = enif_mutex_create("shoal_pidstore");
    p->env = enif_alloc_env();
    if (p->lock == NULL || p->env == NULL) {
        if (p->lock) enif_mutex_destroy(p->lock);
        if (p->env) enif_free_env(p->env);
        enif_free(p);
        return -1;
    }
    n->payload = p;
    return 0;
}

void pidstore_node_fini(void *ctx, registry_node *n)
{
    (void)ctx;
    nnode *p = n->payload;
    enif_free_env(p->env);
    enif_mutex_destroy(p->lock);
    enif_free(p);
}

void pidstore_put(nplain *e, ERL_NIF_TERM pid)
{
    nnode *p = e->re.node->payload;
    enif_mutex_lock(p->lock);
    e->re.te.fast = (uint64_t)enif_make_copy(p->env, pid);
    set_gen(&e->re, p->gen);
    p->live++;
    enif_mutex_unlock(p->lock);
}

void pidstore_drop(ntab *nt, nplain *e)
{
    registry_node *n = e->re.node;
    nnode *p = n->payload;
    int due = 0;
    enif_mutex_lock(p->lock);
    if (gen_of(&e->re) == p->gen) { /* else it is in a generation being compacted away */
        p->live--;
        p->dead++;
    }
    if (!p->compacting && p->dead >= COMPACT_MIN && p->dead > p->live &&
        !atomic_load_explicit(&nt->dead, memory_order_relaxed)) {
        p->compacting = 1;
        due = 1;
    }
    enif_mutex_unlock(p->lock);
    if (!due) return;
    registry_node_hold(n); /* the queue's reference; the node outlives this entry */
    enif_mutex_lock(nt->pend_lock);
    int np = atomic_load(&nt->npending), queued = np < PENDING_MAX;
    if (queued) {
        nt->pending[np] = n;
        atomic_store(&nt->npending, np + 1);
    }
    enif_mutex_unlock(nt->pend_lock);
    if (queued) return;
    enif_mutex_lock(p->lock); /* the queue is full: a later drop will ask again */
    p->compacting = 0;
    enif_mutex_unlock(p->lock);
    registry_node_put(nt->r, n);
}

/* The next node queued for compaction (with the queue's reference), or NULL. */
static registry_node *pop(ntab *nt)
{
    enif_mutex_lock(nt->pend_lock);
    int np = atomic_load(&nt->npending);
    registry_node *n = np > 0 ? nt->pending[np - 1] : NULL;
    if (n != NULL) atomic_store(&nt->npending, np - 1);
    enif_mutex_unlock(nt->pend_lock);
    return n;
}

void pidstore_forget(ntab *nt)
{
    for (;;) {
        registry_node *n = pop(nt);
        if (n == NULL) return;
        nnode *p = n->payload;
        enif_mutex_lock(p->lock);
        p->compacting = 0;
        enif_mutex_unlock(p->lock);
        registry_node_put(nt->r, n);
    }
}

/* Copy replica e of the node being compacted into the store's current generation. */
static int relocate(void *ctx, registry_entry *e)
{
    registry_node *n = ctx;
    nnode *p = n->payload;
    if (e->node != n) return 0;
    enif_mutex_lock(p->lock);
    int moved = gen_of(e) != p->gen;
    if (moved) {
        e->te.fast = (uint64_t)enif_make_copy(p->env, (ERL_NIF_TERM)e->te.fast);
        set_gen(e, p->gen);
        p->live++;
    }
    enif_mutex_unlock(p->lock);
    return moved;
}

/* compact(Table, Node, Result): dirty. Compacts the store of Node (a held registry_node
 * pointer from the queue), then returns Result, or goes on with the next queued node. */
static ERL_NIF_TERM compact(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ntab_res *res;
    ErlNifUInt64 w;
    if (!enif_get_resource(env, argv[0], priv_of(env)->table_rt, (void **)&res) ||
        !enif_get_uint64(env, argv[1], &w))
        return enif_make_badarg(env); /* not reached: only pidstore_after calls it */
    ntab *nt = res->nt;
    registry_node *n = (registry_node *)(uintptr_t)w;
    nnode *p = n->payload;
    ErlNifEnv *fresh = enif_alloc_env(), *old = NULL;
    int walk = 0;
    enif_mutex_lock(p->lock);
    if (fresh != NULL) {
        old = p->env;
        walk = p->live > 0; /* with no live term (a purge), nothing points into old */
        p->env = fresh;
        p->gen = (p->gen + 1) & GEN_MASK;
        p->live = 0;
        p->dead = 0;
    }
    enif_mutex_unlock(p->lock);
    if (walk) {
        /* The table resource in argv keeps the registry alive; a deleted table is empty
         * and the walk finds nothing. */
        for (size_t seg = 0; seg < registry_segments(nt->r); seg++)
            (void)registry_rewrite_segment(nt->r, seg, relocate, n);
    }
    if (old != NULL) enif_free_env(old); /* no replica points into it any more */
    enif_mutex_lock(p->lock);
    p->compacting = 0;
    enif_mutex_unlock(p->lock);
    registry_node_put(nt->r, n);
    return pidstore_after(env, nt, argv[0], argv[2]);
}

ERL_NIF_TERM pidstore_after(ErlNifEnv *env, ntab *nt, ERL_NIF_TERM tterm, ERL_NIF_TERM result)
{
    if (atomic_load_explicit(&nt->npending, memory_order_relaxed) == 0) return result;
    registry_node *n = pop(nt);
    if (n == NULL) return result;
    ERL_NIF_TERM args[3] = {tterm, enif_make_uint64(env, (uint64_t)(uintptr_t)n), result};
    return enif_schedule_nif(env, "compact_pids", ERL_NIF_DIRTY_JOB_CPU_BOUND, compact, 3,
                             args);
}

static void add_bytes(void *ctx, registry_node *n)
{
    size_t *sum = ctx;
    nnode *p = n->payload;
    enif_mutex_lock(p->lock);
    /* An external pid is 4 words on a 64-bit VM. */
    *sum += sizeof *p + (p->live + p->dead) * 4 * sizeof(ERL_NIF_TERM);
    enif_mutex_unlock(p->lock);
}

size_t pidstore_bytes(ntab *nt)
{
    size_t sum = 0;
    registry_node_each(nt->r, add_bytes, &sum);
    return sum;
}
