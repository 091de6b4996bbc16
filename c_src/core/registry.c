/* registry.c - the entry state machine of a worker registry (see registry.h).
 *
 * Every operation is one table_update: a callback that sees the key's current entry under
 * the segment's write lock, decides by the rules of docs/protocol.md, adjusts the counts
 * there and then (so they never run behind or below zero), and asks the table to keep,
 * put, delete or refresh. Entries that leave are released by the table after the unlock;
 * the registry drops their node reference after the owner's release hook has run, so the
 * hook still sees a valid node. Node names live in a small chained hash map under one
 * mutex; references are atomic and only the last one takes the mutex. */
#include "registry.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "keyhash.h"
#include "shoal_err.h"

struct registry {
    table *t;
    registry_clock *clock;
    registry_hooks hooks;
    _Atomic size_t n_local, n_remote, n_claims, n_tombs;
    pthread_mutex_t nodes_lock;
    registry_node **buckets; /* nbuckets chains */
    size_t nbuckets;         /* power of two */
    size_t nnodes;
    _Atomic size_t node_bytes;
};

/* ---- memory ----------------------------------------------------------------------------- */

static void *ralloc(const registry_hooks *h, size_t n)
{
    return h->alloc ? h->alloc(n) : malloc(n);
}

static void rfree(const registry_hooks *h, void *p)
{
    if (p == NULL) return;
    if (h->free)
        h->free(p);
    else
        free(p);
}

/* ---- the clock -------------------------------------------------------------------------- */

void registry_clock_init(registry_clock *c)
{
    atomic_init(&c->last, 0);
}

uint64_t registry_clock_next(registry_clock *c, uint64_t now_us)
{
    uint64_t last = atomic_load_explicit(&c->last, memory_order_relaxed), next;
    do {
        next = now_us > last ? now_us : last == UINT64_MAX ? last : last + 1;
    } while (!atomic_compare_exchange_weak_explicit(&c->last, &last, next, memory_order_relaxed,
                                                    memory_order_relaxed));
    return next;
}

void registry_clock_observe(registry_clock *c, uint64_t v)
{
    uint64_t last = atomic_load_explicit(&c->last, memory_order_relaxed);
    while (v > last && !atomic_compare_exchange_weak_explicit(&c->last, &last, v,
                                                              memory_order_relaxed,
                                                              memory_order_relaxed)) {
    }
}

uint64_t registry_clock_last(registry_clock *c)
{
    return atomic_load_explicit(&c->last, memory_order_relaxed);
}

/* ---- nodes ------------------------------------------------------------------------------ */

static registry_node **chain_of(registry *r, uint64_t hash)
{
    return &r->buckets[hash & (r->nbuckets - 1)];
}

static void grow_buckets(registry *r)
{
    size_t n = r->nbuckets * 2;
    registry_node **b = ralloc(&r->hooks, n * sizeof *b);
    if (b == NULL) return; /* longer chains, still correct */
    memset(b, 0, n * sizeof *b);
    for (size_t i = 0; i < r->nbuckets; i++) {
        registry_node *x = r->buckets[i];
        while (x != NULL) {
            registry_node *next = x->next;
            registry_node **c = &b[x->hash & (n - 1)];
            x->next = *c;
            *c = x;
            x = next;
        }
    }
    rfree(&r->hooks, r->buckets);
    r->buckets = b;
    r->nbuckets = n;
}

static registry_node *lookup_locked(registry *r, const void *name, size_t len, uint64_t h)
{
    for (registry_node *x = *chain_of(r, h); x != NULL; x = x->next)
        if (x->hash == h && x->len == len && memcmp(x->name, name, len) == 0) return x;
    return NULL;
}

registry_node *registry_node_get(registry *r, const void *name, size_t len, void *arg)
{
    if (len == 0 || len > REGISTRY_MAX_NAME || name == NULL) return NULL;
    uint64_t h = keyhash_hash64(name, len);
    pthread_mutex_lock(&r->nodes_lock);
    registry_node *n = lookup_locked(r, name, len, h);
    if (n != NULL) {
        atomic_fetch_add(&n->refs, 1);
        pthread_mutex_unlock(&r->nodes_lock);
        return n;
    }
    n = ralloc(&r->hooks, sizeof *n + len);
    if (n == NULL) {
        pthread_mutex_unlock(&r->nodes_lock);
        return NULL;
    }
    memset(n, 0, sizeof *n);
    n->hash = h;
    n->len = len;
    memcpy(n->name, name, len);
    atomic_init(&n->refs, 1);
    atomic_init(&n->replicas, 0);
    if (r->hooks.node_init != NULL && r->hooks.node_init(r->hooks.ctx, n, arg) != 0) {
        pthread_mutex_unlock(&r->nodes_lock);
        rfree(&r->hooks, n);
        return NULL;
    }
    registry_node **c = chain_of(r, h);
    n->next = *c;
    *c = n;
    r->nnodes++;
    atomic_fetch_add(&r->node_bytes, sizeof *n + len);
    if (r->nnodes > r->nbuckets) grow_buckets(r);
    pthread_mutex_unlock(&r->nodes_lock);
    return n;
}

registry_node *registry_node_find(registry *r, const void *name, size_t len)
{
    if (len == 0 || len > REGISTRY_MAX_NAME || name == NULL) return NULL;
    uint64_t h = keyhash_hash64(name, len);
    pthread_mutex_lock(&r->nodes_lock);
    registry_node *n = lookup_locked(r, name, len, h);
    if (n != NULL) atomic_fetch_add(&n->refs, 1);
    pthread_mutex_unlock(&r->nodes_lock);
    return n;
}

void registry_node_hold(registry_node *n)
{
    atomic_fetch_add(&n->refs, 1);
}

void registry_node_put(registry *r, registry_node *n)
{
    if (n == NULL) return;
    /* Above one reference, drop it without the mutex. The last one is dropped under the
     * mutex, so registry_node_get (which counts up under it) cannot revive a node that is
     * being freed. */
    size_t refs = atomic_load(&n->refs);
    while (refs > 1)
        if (atomic_compare_exchange_weak(&n->refs, &refs, refs - 1)) return;
    pthread_mutex_lock(&r->nodes_lock);
    if (atomic_fetch_sub(&n->refs, 1) != 1) {
        pthread_mutex_unlock(&r->nodes_lock);
        return;
    }
    registry_node **c = chain_of(r, n->hash);
    while (*c != n) c = &(*c)->next;
    *c = n->next;
    r->nnodes--;
    atomic_fetch_sub(&r->node_bytes, sizeof *n + n->len);
    pthread_mutex_unlock(&r->nodes_lock);
    if (r->hooks.node_fini != NULL) r->hooks.node_fini(r->hooks.ctx, n);
    rfree(&r->hooks, n);
}

size_t registry_node_replicas(const registry_node *n)
{
    return atomic_load_explicit(&((registry_node *)n)->replicas, memory_order_relaxed);
}

size_t registry_nodes(registry *r)
{
    pthread_mutex_lock(&r->nodes_lock);
    size_t n = r->nnodes;
    pthread_mutex_unlock(&r->nodes_lock);
    return n;
}

void registry_node_each(registry *r, void (*fn)(void *ctx, registry_node *n), void *ctx)
{
    pthread_mutex_lock(&r->nodes_lock);
    for (size_t i = 0; i < r->nbuckets; i++)
        for (registry_node *x = r->buckets[i]; x != NULL; x = x->next) fn(ctx, x);
    pthread_mutex_unlock(&r->nodes_lock);
}

/* ---- versions --------------------------------------------------------------------------- */

static int cmp_names(const unsigned char *a, size_t alen, const unsigned char *b, size_t blen)
{
    int c = memcmp(a, b, alen < blen ? alen : blen);
    if (c != 0) return c;
    return alen < blen ? -1 : alen > blen;
}

/* {va, na} newer than {vb, nb}? Both nodes are interned in the same registry, so equal
 * names are the same record. */
static int newer(uint64_t va, const registry_node *na, uint64_t vb, const registry_node *nb)
{
    if (va != vb) return va > vb;
    if (na == nb) return 0;
    return cmp_names(na->name, na->len, nb->name, nb->len) > 0;
}

/* {vsn, node} newer than LOCAL entry e (whose node is this one)? Unknown self name: no. */
static int newer_than_local(uint64_t vsn, const registry_node *node, const registry_entry *e,
                            const registry_op *op)
{
    if (vsn != e->vsn) return vsn > e->vsn;
    const unsigned char *self;
    size_t len;
    if (op == NULL || op->self_name == NULL || op->self_name(op->ctx, e, &self, &len) != 0)
        return 0;
    return cmp_names(node->name, node->len, self, len) > 0;
}

/* ---- counts ----------------------------------------------------------------------------- */

static void count_add(registry *r, const registry_entry *e, size_t d)
{
    switch (registry_state_of(e)) {
    case REGISTRY_LOCAL: atomic_fetch_add_explicit(&r->n_local, d, memory_order_relaxed); break;
    case REGISTRY_REMOTE:
        atomic_fetch_add_explicit(&r->n_remote, d, memory_order_relaxed);
        atomic_fetch_add_explicit(&e->node->replicas, d, memory_order_relaxed);
        break;
    case REGISTRY_CLAIMED: atomic_fetch_add_explicit(&r->n_claims, d, memory_order_relaxed); break;
    case REGISTRY_TOMB: atomic_fetch_add_explicit(&r->n_tombs, d, memory_order_relaxed); break;
    default: break;
    }
}

#define COUNT_IN(r, e) count_add((r), (e), 1)
#define COUNT_OUT(r, e) count_add((r), (e), (size_t)-1)

void registry_count(registry *r, registry_counts *c)
{
    c->local = atomic_load_explicit(&r->n_local, memory_order_relaxed);
    c->remote = atomic_load_explicit(&r->n_remote, memory_order_relaxed);
    c->claims = atomic_load_explicit(&r->n_claims, memory_order_relaxed);
    c->tombs = atomic_load_explicit(&r->n_tombs, memory_order_relaxed);
    c->entries = table_count(r->t);
}

size_t registry_memory(registry *r)
{
    pthread_mutex_lock(&r->nodes_lock);
    size_t b = r->nbuckets * sizeof *r->buckets;
    pthread_mutex_unlock(&r->nodes_lock);
    return sizeof *r + table_memory(r->t) + b + atomic_load(&r->node_bytes);
}

/* ---- life cycle ------------------------------------------------------------------------- */

static void on_release(void *ctx, table_entry *te)
{
    registry *r = ctx;
    registry_entry *e = (registry_entry *)te;
    registry_node *n = e->node;
    r->hooks.release(r->hooks.ctx, e);
    registry_node_put(r, n);
}

int registry_new(registry **out, unsigned segments_log2, registry_clock *clock,
                 const registry_hooks *hooks)
{
    if (out == NULL || clock == NULL || hooks == NULL || hooks->release == NULL ||
        (hooks->alloc == NULL) != (hooks->free == NULL) || segments_log2 > 16)
        return SHOAL_EINVAL;
    registry *r = ralloc(hooks, sizeof *r);
    if (r == NULL) return SHOAL_ENOMEM;
    memset(r, 0, sizeof *r);
    r->hooks = *hooks;
    r->clock = clock;
    atomic_init(&r->n_local, 0);
    atomic_init(&r->n_remote, 0);
    atomic_init(&r->n_claims, 0);
    atomic_init(&r->n_tombs, 0);
    atomic_init(&r->node_bytes, 0);
    r->nbuckets = 16;
    r->buckets = ralloc(hooks, r->nbuckets * sizeof *r->buckets);
    if (r->buckets == NULL) {
        rfree(hooks, r);
        return SHOAL_ENOMEM;
    }
    memset(r->buckets, 0, r->nbuckets * sizeof *r->buckets);
    if (pthread_mutex_init(&r->nodes_lock, NULL) != 0) {
        rfree(hooks, r->buckets);
        rfree(hooks, r);
        return SHOAL_ENOMEM;
    }
    table_ops ops = {on_release, r, hooks->alloc, hooks->free};
    int rc = table_new(&r->t, segments_log2, &ops);
    if (rc != 0) {
        pthread_mutex_destroy(&r->nodes_lock);
        rfree(hooks, r->buckets);
        rfree(hooks, r);
        return rc;
    }
    *out = r;
    return 0;
}

void registry_free(registry *r)
{
    if (r == NULL) return;
    table_free(r->t); /* releases every entry, and with them every node */
    pthread_mutex_destroy(&r->nodes_lock);
    registry_hooks h = r->hooks;
    rfree(&h, r->buckets);
    rfree(&h, r);
}

registry_clock *registry_clock_of(registry *r)
{
    return r->clock;
}

void registry_entry_init(registry_entry *e, uint64_t hash, const unsigned char *key,
                         uint32_t len)
{
    memset(e, 0, sizeof *e);
    e->te.hash = hash;
    e->te.key = key;
    e->te.klen = len;
}

/* ---- lookups ---------------------------------------------------------------------------- */

struct get_ctx {
    void (*fn)(void *ctx, const registry_entry *e);
    void *ctx;
};

static void get_visit(void *vc, const table_entry *te)
{
    struct get_ctx *c = vc;
    c->fn(c->ctx, (const registry_entry *)te);
}

int registry_get(registry *r, const registry_key *k,
                 void (*fn)(void *ctx, const registry_entry *e), void *ctx)
{
    struct get_ctx c = {fn, ctx};
    return table_get(r->t, k->hash, k->bytes, k->len, fn ? get_visit : NULL, &c);
}

struct fast_ctx {
    void (*fn)(void *ctx, uint64_t word, registry_state state);
    void *ctx;
};

static void fast_visit(void *vc, uint64_t fast, unsigned kind)
{
    struct fast_ctx *c = vc;
    c->fn(c->ctx, fast, (registry_state)kind);
}

int registry_get_fast(registry *r, const registry_key *k,
                      void (*fn)(void *ctx, uint64_t word, registry_state state), void *ctx)
{
    struct fast_ctx c = {fn, ctx};
    return table_get_fast(r->t, k->hash, k->bytes, k->len, fast_visit, &c);
}

/* ---- operations ------------------------------------------------------------------------- */

/* The state every update callback shares. */
struct op_ctx {
    registry *r;
    const registry_op *op;
    registry_out *out;
    registry_entry *mine;
    int rc;
    /* per operation */
    registry_node *node;
    uint64_t vsn, word, now_us;
    uint32_t mark;
    int64_t now_ms;
    int flag;
    uint64_t before;  /* put_synced: tombs of other nodes below this do not refuse */
    const registry_mode *mode;
};

static void seen(struct op_ctx *c, const registry_entry *cur)
{
    if (c->op != NULL && c->op->seen != NULL) c->op->seen(c->op->ctx, cur);
}

static void ending(struct op_ctx *c, registry_entry *claim)
{
    if (c->op != NULL && c->op->ending != NULL) c->op->ending(c->op->ctx, claim);
}

/* Store c->mine in place of cur (NULL: absent), counted in. */
static table_action store_mine(struct op_ctx *c, registry_entry *cur, table_entry **repl)
{
    if (cur != NULL) COUNT_OUT(c->r, cur);
    COUNT_IN(c->r, c->mine);
    c->out->stored = 1;
    *repl = &c->mine->te;
    return TABLE_PUT;
}

/* After table_update: a PUT that failed for memory (only an insert can) is undone. */
static int finish(struct op_ctx *c, int rc)
{
    if (rc == 0) return c->rc;
    if (c->out->stored) {
        c->out->stored = 0;
        COUNT_OUT(c->r, c->mine);
        if (registry_state_of(c->mine) == REGISTRY_REMOTE ||
            registry_state_of(c->mine) == REGISTRY_TOMB ||
            (registry_state_of(c->mine) == REGISTRY_CLAIMED && c->mine->node != NULL)) {
            registry_node *n = c->mine->node;
            c->mine->node = NULL;
            registry_node_put(c->r, n);
        }
    }
    return rc;
}

static int update(struct op_ctx *c, const registry_key *k, table_update_fn fn)
{
    registry_out dummy;
    if (c->out == NULL) c->out = &dummy;
    memset(c->out, 0, sizeof *c->out);
    return finish(c, table_update(c->r->t, k->hash, k->bytes, k->len, fn, c));
}

/* claim ------------------------------------------------------------------------------------ */

static table_action claim_fn(void *vc, table_entry *te, table_entry **repl)
{
    struct op_ctx *c = vc;
    registry_entry *cur = (registry_entry *)te;
    c->out->prev = cur ? registry_state_of(cur) : REGISTRY_ABSENT;
    if (cur != NULL) {
        switch (registry_state_of(cur)) {
        case REGISTRY_CLAIMED:
            if (cur->te.fast == c->mine->te.fast) {
                c->rc = REGISTRY_OK;
                return TABLE_KEEP;
            }
            seen(c, cur);
            c->rc = REGISTRY_WAIT;
            return TABLE_KEEP;
        case REGISTRY_LOCAL:
        case REGISTRY_REMOTE:
            seen(c, cur);
            c->rc = REGISTRY_WORKER;
            return TABLE_KEEP;
        default: /* a tomb: the claim keeps it, to become it again if released */
            c->mine->node = cur->node;
            c->mine->vsn = cur->vsn;
            registry_node_hold(cur->node);
            break;
        }
    }
    c->mine->te.kind = REGISTRY_CLAIMED;
    c->rc = REGISTRY_OK;
    return store_mine(c, cur, repl);
}

int registry_claim(registry *r, const registry_key *k, registry_entry *mine,
                   const registry_op *op, registry_out *out)
{
    struct op_ctx c = {.r = r, .op = op, .out = out, .mine = mine};
    return update(&c, k, claim_fn);
}

/* register --------------------------------------------------------------------------------- */

static table_action register_fn(void *vc, table_entry *te, table_entry **repl)
{
    struct op_ctx *c = vc;
    registry_entry *cur = (registry_entry *)te;
    const registry_mode *m = c->mode;
    registry_state st = cur ? registry_state_of(cur) : REGISTRY_ABSENT;
    c->out->prev = st;
    if (c->mine->te.flags & REGISTRY_DEAD) {
        c->rc = REGISTRY_NOPROC;
        return TABLE_KEEP;
    }
    if (!m->over) {
        switch (st) {
        case REGISTRY_ABSENT:
        case REGISTRY_TOMB: c->rc = REGISTRY_NOT_CLAIMED; return TABLE_KEEP;
        case REGISTRY_CLAIMED:
            if (cur->te.fast != m->claimer) {
                seen(c, cur);
                c->rc = REGISTRY_CLAIMED_BY;
                return TABLE_KEEP;
            }
            registry_clock_observe(c->r->clock, cur->vsn);
            ending(c, cur);
            break;
        default: seen(c, cur); c->rc = REGISTRY_ALREADY; return TABLE_KEEP;
        }
    } else {
        switch (st) {
        case REGISTRY_ABSENT: break;
        case REGISTRY_TOMB: registry_clock_observe(c->r->clock, cur->vsn); break;
        case REGISTRY_REMOTE:
            if (cur->vsn > m->max_vsn && cur->node != m->owner) {
                seen(c, cur);
                c->rc = REGISTRY_NEWER;
                return TABLE_KEEP;
            }
            registry_clock_observe(c->r->clock, cur->vsn);
            break;
        case REGISTRY_CLAIMED: seen(c, cur); c->rc = REGISTRY_CLAIMED_BY; return TABLE_KEEP;
        default: /* LOCAL */
            if (cur->te.fast == c->mine->te.fast) {
                /* A take-back: a fresh version, above every replica the clock has seen
                 * (one refused while the entry moved may be a lost successor's). */
                cur->te.flags &= (uint8_t)~REGISTRY_MOVING;
                cur->vsn = registry_clock_next(c->r->clock, c->now_us);
                c->out->vsn = cur->vsn;
                c->rc = REGISTRY_OWN;
                return TABLE_KEEP;
            }
            seen(c, cur);
            c->rc = REGISTRY_ALREADY;
            return TABLE_KEEP;
        }
    }
    c->mine->te.kind = REGISTRY_LOCAL;
    c->mine->te.flags &= (uint8_t)~REGISTRY_MOVING;
    c->mine->node = NULL;
    c->mine->vsn = registry_clock_next(c->r->clock, c->now_us);
    c->out->vsn = c->mine->vsn;
    c->rc = REGISTRY_OK;
    return store_mine(c, cur, repl);
}

int registry_register(registry *r, const registry_key *k, registry_entry *mine,
                      const registry_mode *mode, uint64_t now_us, const registry_op *op,
                      registry_out *out)
{
    if (mode->over) registry_clock_observe(r->clock, mode->max_vsn);
    struct op_ctx c = {.r = r, .op = op, .out = out, .mine = mine, .mode = mode,
                       .now_us = now_us};
    return update(&c, k, register_fn);
}

/* unregister ------------------------------------------------------------------------------- */

static table_action unregister_fn(void *vc, table_entry *te, table_entry **repl)
{
    struct op_ctx *c = vc;
    registry_entry *cur = (registry_entry *)te;
    (void)repl;
    c->rc = REGISTRY_NOT_FOUND;
    if (cur == NULL || cur->te.fast != c->word) return TABLE_KEEP;
    c->out->prev = registry_state_of(cur);
    switch (registry_state_of(cur)) {
    case REGISTRY_LOCAL:
        if (c->flag) return TABLE_KEEP; /* claims only */
        c->out->vsn = cur->vsn;
        COUNT_OUT(c->r, cur);
        c->rc = REGISTRY_OK;
        return TABLE_DELETE;
    case REGISTRY_CLAIMED:
        ending(c, cur);
        COUNT_OUT(c->r, cur);
        c->rc = REGISTRY_OK;
        if (cur->node == NULL) return TABLE_DELETE;
        cur->te.kind = REGISTRY_TOMB; /* back to the tomb it replaced */
        cur->te.fast = (uint64_t)c->now_ms;
        COUNT_IN(c->r, cur);
        return TABLE_REFRESH;
    default: return TABLE_KEEP;
    }
}

int registry_unregister(registry *r, const registry_key *k, uint64_t word, int claims_only,
                        int64_t now_ms, const registry_op *op, registry_out *out)
{
    struct op_ctx c = {.r = r, .op = op, .out = out, .word = word, .flag = claims_only,
                       .now_ms = now_ms};
    return update(&c, k, unregister_fn);
}

/* set_moving ------------------------------------------------------------------------------- */

static table_action moving_fn(void *vc, table_entry *te, table_entry **repl)
{
    struct op_ctx *c = vc;
    registry_entry *cur = (registry_entry *)te;
    (void)repl;
    c->rc = REGISTRY_NOT_FOUND;
    if (cur == NULL || registry_state_of(cur) != REGISTRY_LOCAL || cur->te.fast != c->word)
        return TABLE_KEEP;
    if (c->flag)
        cur->te.flags |= REGISTRY_MOVING;
    else
        cur->te.flags &= (uint8_t)~REGISTRY_MOVING;
    c->vsn = cur->vsn;
    c->rc = REGISTRY_OK;
    return TABLE_KEEP;
}

int registry_set_moving(registry *r, const registry_key *k, uint64_t word, int on,
                        uint64_t *vsn)
{
    struct op_ctx c = {.r = r, .word = word, .flag = on != 0};
    int rc = update(&c, k, moving_fn);
    if (rc == REGISTRY_OK && vsn != NULL) *vsn = c.vsn;
    return rc;
}

/* put_remote ------------------------------------------------------------------------------- */

/* put_synced: the tomb {cur->vsn, cur->node} (a TOMB's, or the one a claim keeps) is of an
 * incarnation on another node than the synced replica's, registered before the owner's
 * walk began: it does not refuse the replica (registry_put_synced). */
static int overridden(const struct op_ctx *c, const registry_entry *cur)
{
    return c->before != 0 && cur->node != c->node && cur->vsn < c->before;
}

static table_action put_remote_fn(void *vc, table_entry *te, table_entry **repl)
{
    struct op_ctx *c = vc;
    registry_entry *cur = (registry_entry *)te;
    c->out->prev = cur ? registry_state_of(cur) : REGISTRY_ABSENT;
    c->rc = REGISTRY_STALE;
    if (c->op != NULL && c->op->admitted != NULL && !c->op->admitted(c->op->ctx, c->node))
        return TABLE_KEEP;
    if (cur != NULL) {
        switch (registry_state_of(cur)) {
        case REGISTRY_TOMB:
            if (!newer(c->vsn, c->node, cur->vsn, cur->node) && !overridden(c, cur))
                return TABLE_KEEP;
            break;
        case REGISTRY_CLAIMED:
            if (cur->node != NULL && !newer(c->vsn, c->node, cur->vsn, cur->node) &&
                !overridden(c, cur))
                return TABLE_KEEP;
            ending(c, cur);
            break;
        case REGISTRY_REMOTE:
            if (cur->node == c->node && cur->vsn == c->vsn) {
                if (c->mark != 0) cur->mark = c->mark;
                return TABLE_KEEP;
            }
            if (!newer(c->vsn, c->node, cur->vsn, cur->node)) return TABLE_KEEP;
            break;
        default: /* LOCAL */
            if (!newer_than_local(c->vsn, c->node, cur, c->op)) return TABLE_KEEP;
            c->out->word = cur->te.fast;
            c->out->vsn = cur->vsn;
            if (!(cur->te.flags & REGISTRY_MOVING)) {
                seen(c, cur);
                c->rc = REGISTRY_CONFLICT;
                return TABLE_KEEP;
            }
            /* Only the move's outcome (put_successor, c->flag) replaces a moving entry. A
             * replica that arrives while it moves (most often the successor's own `up') is
             * stale whatever the outcome: the successor's replica replaces the entry, or
             * the take-back is above every version the clock has seen (docs/protocol.md,
             * F8). */
            if (!c->flag) return TABLE_KEEP;
            break;
        }
    }
    c->mine->te.kind = REGISTRY_REMOTE;
    c->mine->node = c->node;
    registry_node_hold(c->node);
    c->mine->vsn = c->vsn;
    c->mine->mark = c->mark;
    if (c->op != NULL && c->op->storing != NULL) c->op->storing(c->op->ctx, c->mine);
    c->rc = REGISTRY_STORED;
    return store_mine(c, cur, repl);
}

static int put_replica(registry *r, const registry_key *k, registry_node *node, uint64_t vsn,
                       uint32_t mark, int successor, uint64_t before, registry_entry *mine,
                       const registry_op *op, registry_out *out)
{
    registry_clock_observe(r->clock, vsn);
    struct op_ctx c = {.r = r, .op = op, .out = out, .mine = mine, .node = node, .vsn = vsn,
                       .mark = mark, .flag = successor, .before = before};
    return update(&c, k, put_remote_fn);
}

int registry_put_remote(registry *r, const registry_key *k, registry_node *node, uint64_t vsn,
                        uint32_t mark, registry_entry *mine, const registry_op *op,
                        registry_out *out)
{
    return put_replica(r, k, node, vsn, mark, 0, 0, mine, op, out);
}

int registry_put_successor(registry *r, const registry_key *k, registry_node *node,
                           uint64_t vsn, uint32_t mark, registry_entry *mine,
                           const registry_op *op, registry_out *out)
{
    return put_replica(r, k, node, vsn, mark, 1, 0, mine, op, out);
}

int registry_put_synced(registry *r, const registry_key *k, registry_node *node, uint64_t vsn,
                        uint32_t mark, uint64_t before, registry_entry *mine,
                        const registry_op *op, registry_out *out)
{
    return put_replica(r, k, node, vsn, mark, 0, before, mine, op, out);
}

/* remove_remote ---------------------------------------------------------------------------- */

/* Give entry e (a tomb or a claim) the version {c->vsn, c->node}. */
static void take_version(struct op_ctx *c, registry_entry *e)
{
    registry_node *old = e->node;
    registry_node_hold(c->node);
    e->node = c->node;
    e->vsn = c->vsn;
    registry_node_put(c->r, old);
}

static table_action remove_remote_fn(void *vc, table_entry *te, table_entry **repl)
{
    struct op_ctx *c = vc;
    registry_entry *cur = (registry_entry *)te;
    c->out->prev = cur ? registry_state_of(cur) : REGISTRY_ABSENT;
    c->rc = REGISTRY_STALE;
    if (cur != NULL) {
        switch (registry_state_of(cur)) {
        case REGISTRY_REMOTE:
            if (newer(cur->vsn, cur->node, c->vsn, c->node)) return TABLE_KEEP;
            c->rc = REGISTRY_REMOVED;
            break;
        case REGISTRY_TOMB:
            if (!newer(c->vsn, c->node, cur->vsn, cur->node)) return TABLE_KEEP;
            take_version(c, cur);
            cur->te.fast = (uint64_t)c->now_ms;
            c->rc = REGISTRY_TOMBSTONED;
            return TABLE_REFRESH;
        case REGISTRY_CLAIMED:
            if (cur->node == NULL || newer(c->vsn, c->node, cur->vsn, cur->node))
                take_version(c, cur);
            return TABLE_KEEP;
        default: return TABLE_KEEP; /* LOCAL */
        }
    } else {
        c->rc = REGISTRY_TOMBSTONED;
    }
    c->mine->te.kind = REGISTRY_TOMB;
    c->mine->te.fast = (uint64_t)c->now_ms;
    c->mine->node = c->node;
    registry_node_hold(c->node);
    c->mine->vsn = c->vsn;
    return store_mine(c, cur, repl);
}

int registry_remove_remote(registry *r, const registry_key *k, registry_node *node,
                           uint64_t vsn, int64_t now_ms, registry_entry *mine,
                           registry_out *out)
{
    registry_clock_observe(r->clock, vsn);
    struct op_ctx c = {.r = r, .out = out, .mine = mine, .node = node, .vsn = vsn,
                       .now_ms = now_ms};
    return update(&c, k, remove_remote_fn);
}

/* drop ------------------------------------------------------------------------------------- */

static table_action drop_fn(void *vc, table_entry *te, table_entry **repl)
{
    struct op_ctx *c = vc;
    (void)repl;
    c->mine->te.flags |= REGISTRY_DEAD; /* under the lock register_fn reads it with */
    if (te != &c->mine->te) return TABLE_KEEP;
    c->out->vsn = c->mine->vsn;
    COUNT_OUT(c->r, c->mine);
    c->rc = 1;
    return TABLE_DELETE;
}

int registry_drop(registry *r, registry_entry *e, uint64_t *vsn)
{
    registry_out out;
    struct op_ctx c = {.r = r, .out = &out, .mine = e, .rc = 0};
    registry_key k = {e->te.hash, e->te.key, e->te.klen};
    (void)update(&c, &k, drop_fn); /* a delete never allocates */
    if (c.rc == 1 && vsn != NULL) *vsn = out.vsn;
    return c.rc;
}

/* ---- walks ------------------------------------------------------------------------------ */

size_t registry_segments(registry *r)
{
    return table_segments(r->t);
}

struct visit_ctx {
    registry *r;
    void (*fn)(void *ctx, const registry_entry *e);
    int (*rewrite)(void *ctx, registry_entry *e);
    const registry_sweep *sweep;
    void *ctx;
    size_t n;
};

static table_action visit_fn(void *vc, table_entry *te)
{
    struct visit_ctx *c = vc;
    c->fn(c->ctx, (const registry_entry *)te);
    return TABLE_KEEP;
}

size_t registry_visit_segment(registry *r, size_t seg,
                              void (*fn)(void *ctx, const registry_entry *e), void *ctx)
{
    struct visit_ctx c = {.r = r, .fn = fn, .ctx = ctx};
    return table_fold_segment(r->t, seg, 0, visit_fn, &c);
}

static table_action rewrite_fn(void *vc, table_entry *te)
{
    struct visit_ctx *c = vc;
    registry_entry *e = (registry_entry *)te;
    if (registry_state_of(e) != REGISTRY_REMOTE || !c->rewrite(c->ctx, e)) return TABLE_KEEP;
    c->n++;
    return TABLE_REFRESH;
}

size_t registry_rewrite_segment(registry *r, size_t seg,
                                int (*fn)(void *ctx, registry_entry *e), void *ctx)
{
    struct visit_ctx c = {.r = r, .rewrite = fn, .ctx = ctx};
    (void)table_fold_segment(r->t, seg, 1, rewrite_fn, &c);
    return c.n;
}

static int swept(const registry_sweep *s, const registry_entry *e)
{
    switch (s->what) {
    case REGISTRY_SWEEP_NODE_ALL:
        return registry_state_of(e) == REGISTRY_REMOTE && e->node == s->node;
    case REGISTRY_SWEEP_NODE_MARK:
        return registry_state_of(e) == REGISTRY_REMOTE && e->node == s->node &&
               e->mark != s->mark && e->vsn < s->before;
    case REGISTRY_SWEEP_TOMBS:
        return registry_state_of(e) == REGISTRY_TOMB &&
               s->now_ms - (int64_t)e->te.fast >= s->age_ms;
    }
    return 0;
}

static table_action sweep_fn(void *vc, table_entry *te)
{
    struct visit_ctx *c = vc;
    registry_entry *e = (registry_entry *)te;
    if (c->sweep != NULL && !swept(c->sweep, e)) return TABLE_KEEP;
    COUNT_OUT(c->r, e);
    c->n++;
    return TABLE_DELETE;
}

size_t registry_sweep_segment(registry *r, size_t seg, const registry_sweep *s)
{
    struct visit_ctx c = {.r = r, .sweep = s};
    (void)table_fold_segment(r->t, seg, 1, sweep_fn, &c);
    return c.n;
}

void registry_clear(registry *r)
{
    struct visit_ctx c = {.r = r, .sweep = NULL};
    for (size_t seg = 0; seg < table_segments(r->t); seg++)
        (void)table_fold_segment(r->t, seg, 1, sweep_fn, &c);
}
