/* test_core_registry.c - CUnit suite for the worker registry (registry.h).
 *
 * Written from the header's contract: each test pins one rule of the entry state machine
 * (claims, local workers, replicas, tombs), the version order and its ties, the clock,
 * node interning and counts, the walks, and what must hold under concurrent use and when
 * memory runs out (every entry released exactly once, every node name freed with its last
 * entry, counts equal to what a walk finds). Entries are malloc'd test entries; the
 * release hook counts and frees them. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "keyhash.h"
#include "registry.h"
#include "shoal_err.h"
#include "test_core.h"

/* ---- fixtures --------------------------------------------------------------------------- */

typedef struct tentry {
    registry_entry re;
    unsigned char key[16];
} tentry;

typedef struct fixture {
    registry *r;
    registry_clock clock;
    atomic_long released;   /* entries released */
    atomic_long nodes_live; /* node payloads made minus freed */
    atomic_long fail_after; /* alloc hook: fail once this reaches 0 (negative: never) */
} fixture;

static fixture *alloc_fx; /* the fixture whose alloc hook is in use */

static void *failing_alloc(size_t n)
{
    if (alloc_fx != NULL && atomic_fetch_sub(&alloc_fx->fail_after, 1) == 0) return NULL;
    return malloc(n);
}

static void t_release(void *ctx, registry_entry *e)
{
    fixture *f = ctx;
    atomic_fetch_add(&f->released, 1);
    free(e);
}

static int t_node_init(void *ctx, registry_node *n, void *arg)
{
    fixture *f = ctx;
    n->payload = arg; /* tests pass a marker or NULL */
    atomic_fetch_add(&f->nodes_live, 1);
    return 0;
}

static void t_node_fini(void *ctx, registry_node *n)
{
    fixture *f = ctx;
    (void)n;
    atomic_fetch_sub(&f->nodes_live, 1);
}

static void fx_init(fixture *f, unsigned log2, int failing)
{
    memset(f, 0, sizeof *f);
    registry_clock_init(&f->clock);
    atomic_init(&f->released, 0);
    atomic_init(&f->nodes_live, 0);
    atomic_init(&f->fail_after, -1);
    registry_hooks h = {.release = t_release, .node_init = t_node_init,
                        .node_fini = t_node_fini, .ctx = f};
    if (failing) {
        h.alloc = failing_alloc;
        h.free = free;
        alloc_fx = f;
    }
    CU_ASSERT_EQUAL_FATAL(registry_new(&f->r, log2, &f->clock, &h), 0);
}

static void fx_done(fixture *f)
{
    registry_free(f->r);
    CU_ASSERT_EQUAL(atomic_load(&f->nodes_live), 0);
    alloc_fx = NULL;
}

static registry_key key_of(unsigned char buf[16], uint64_t id)
{
    buf[0] = 131;
    buf[1] = 110;
    for (int i = 0; i < 8; i++)
        buf[2 + i] = (unsigned char)(id >> (8 * i));
    registry_key k = {keyhash_hash64(buf, 10), buf, 10};
    return k;
}

static tentry *entry(uint64_t id, uint64_t word)
{
    tentry *e = calloc(1, sizeof *e);
    if (e == NULL) abort();
    registry_key k = key_of(e->key, id);
    registry_entry_init(&e->re, k.hash, e->key, (uint32_t)k.len);
    e->re.te.fast = word;
    return e;
}

/* Run an operation with a fresh entry; free the entry if the operation did not keep it. */
static int claim(fixture *f, uint64_t id, uint64_t who, const registry_op *op)
{
    unsigned char b[16];
    registry_key k = key_of(b, id);
    tentry *e = entry(id, who);
    registry_out out;
    int rc = registry_claim(f->r, &k, &e->re, op, &out);
    if (!out.stored) free(e);
    return rc;
}

static int reg(fixture *f, uint64_t id, uint64_t worker, const registry_mode *m,
               const registry_op *op, registry_out *out)
{
    unsigned char b[16];
    registry_key k = key_of(b, id);
    tentry *e = entry(id, worker);
    registry_out o;
    if (out == NULL) out = &o;
    int rc = registry_register(f->r, &k, &e->re, m, 1000, op, out);
    if (!out->stored) free(e);
    return rc;
}

static int reg_claim(fixture *f, uint64_t id, uint64_t claimer, uint64_t worker,
                     registry_out *out)
{
    registry_mode m = {.over = 0, .claimer = claimer};
    return reg(f, id, worker, &m, NULL, out);
}

static int reg_over(fixture *f, uint64_t id, uint64_t worker, uint64_t max,
                    const registry_node *owner, registry_out *out)
{
    registry_mode m = {.over = 1, .max_vsn = max, .owner = owner};
    return reg(f, id, worker, &m, NULL, out);
}

static int put(fixture *f, uint64_t id, registry_node *n, uint64_t vsn, uint32_t mark,
               uint64_t word, const registry_op *op, registry_out *out)
{
    unsigned char b[16];
    registry_key k = key_of(b, id);
    tentry *e = entry(id, 0);
    registry_out o;
    if (out == NULL) out = &o;
    e->re.te.fast = word;
    int rc = registry_put_remote(f->r, &k, n, vsn, mark, &e->re, op, out);
    if (!out->stored) free(e);
    return rc;
}

/* put() through registry_put_synced (an entry of a sync whose walk began at `before`) */
static int put_sync(fixture *f, uint64_t id, registry_node *n, uint64_t vsn, uint32_t mark,
                    uint64_t before, registry_out *out)
{
    unsigned char b[16];
    registry_key k = key_of(b, id);
    tentry *e = entry(id, 0);
    registry_out o;
    if (out == NULL) out = &o;
    int rc = registry_put_synced(f->r, &k, n, vsn, mark, before, &e->re, NULL, out);
    if (!out->stored) free(e);
    return rc;
}

/* put() through registry_put_successor (a move's outcome) */
static int put_succ(fixture *f, uint64_t id, registry_node *n, uint64_t vsn,
                    const registry_op *op, registry_out *out)
{
    unsigned char b[16];
    registry_key k = key_of(b, id);
    tentry *e = entry(id, 0);
    int rc = registry_put_successor(f->r, &k, n, vsn, 0, &e->re, op, out);
    if (!out->stored) free(e);
    return rc;
}

static int rm(fixture *f, uint64_t id, registry_node *n, uint64_t vsn, int64_t now)
{
    unsigned char b[16];
    registry_key k = key_of(b, id);
    tentry *e = entry(id, 0);
    registry_out out;
    int rc = registry_remove_remote(f->r, &k, n, vsn, now, &e->re, &out);
    if (!out.stored) free(e);
    return rc;
}

static int unreg(fixture *f, uint64_t id, uint64_t word, int claims_only, const registry_op *op)
{
    unsigned char b[16];
    registry_key k = key_of(b, id);
    registry_out out;
    return registry_unregister(f->r, &k, word, claims_only, 7, op, &out);
}

/* What a lookup sees. */
typedef struct seen_t {
    registry_state state;
    uint64_t word, vsn;
    uint32_t mark;
    int moving;
    const registry_node *node;
} seen_t;

static void copy_seen(void *ctx, const registry_entry *e)
{
    seen_t *s = ctx;
    s->state = registry_state_of(e);
    s->word = e->te.fast;
    s->vsn = e->vsn;
    s->mark = e->mark;
    s->moving = (e->te.flags & REGISTRY_MOVING) != 0;
    s->node = e->node;
}

static seen_t look(fixture *f, uint64_t id)
{
    unsigned char b[16];
    registry_key k = key_of(b, id);
    seen_t s = {REGISTRY_ABSENT, 0, 0, 0, 0, NULL};
    (void)registry_get(f->r, &k, copy_seen, &s);
    return s;
}

static void fast_seen(void *ctx, uint64_t word, registry_state st)
{
    seen_t *s = ctx;
    s->word = word;
    s->state = st;
}

static seen_t look_fast(fixture *f, uint64_t id)
{
    unsigned char b[16];
    registry_key k = key_of(b, id);
    seen_t s = {REGISTRY_ABSENT, 0, 0, 0, 0, NULL};
    (void)registry_get_fast(f->r, &k, fast_seen, &s);
    return s;
}

static registry_node *node(fixture *f, const char *name)
{
    registry_node *n = registry_node_get(f->r, name, strlen(name), NULL);
    CU_ASSERT_FATAL(n != NULL);
    return n;
}

static registry_counts counts(fixture *f)
{
    registry_counts c;
    registry_count(f->r, &c);
    return c;
}

/* ---- the clock -------------------------------------------------------------------------- */

static void test_clock_is_strictly_increasing_and_observes(void)
{
    registry_clock c;
    registry_clock_init(&c);
    CU_ASSERT_EQUAL(registry_clock_next(&c, 100), 100);
    CU_ASSERT_EQUAL(registry_clock_next(&c, 100), 101); /* same wall time: last + 1 */
    CU_ASSERT_EQUAL(registry_clock_next(&c, 50), 102);  /* wall time went back */
    CU_ASSERT_EQUAL(registry_clock_next(&c, 500), 500);
    registry_clock_observe(&c, 10000);
    CU_ASSERT_EQUAL(registry_clock_last(&c), 10000);
    registry_clock_observe(&c, 20); /* lower: ignored */
    CU_ASSERT_EQUAL(registry_clock_next(&c, 600), 10001);
    /* An absurd version saturates the clock; it never wraps to small values. */
    registry_clock_observe(&c, UINT64_MAX - 1);
    CU_ASSERT_EQUAL(registry_clock_next(&c, 600), UINT64_MAX);
    CU_ASSERT_EQUAL(registry_clock_next(&c, 600), UINT64_MAX);
}

enum { CLOCK_THREADS = 4, CLOCK_N = 50000 };

static void *clock_worker(void *arg)
{
    registry_clock *c = ((void **)arg)[0];
    uint64_t *out = ((void **)arg)[1];
    for (int i = 0; i < CLOCK_N; i++) {
        out[i] = registry_clock_next(c, 1000);
        if (i % 100 == 0) registry_clock_observe(c, out[i] + 3);
    }
    return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void test_clock_hands_out_unique_values_across_threads(void)
{
    registry_clock c;
    registry_clock_init(&c);
    uint64_t *all = malloc(sizeof(uint64_t) * CLOCK_THREADS * CLOCK_N);
    CU_ASSERT_FATAL(all != NULL);
    pthread_t th[CLOCK_THREADS];
    void *args[CLOCK_THREADS][2];
    for (int i = 0; i < CLOCK_THREADS; i++) {
        args[i][0] = &c;
        args[i][1] = all + (size_t)i * CLOCK_N;
        CU_ASSERT_EQUAL_FATAL(pthread_create(&th[i], NULL, clock_worker, args[i]), 0);
    }
    for (int i = 0; i < CLOCK_THREADS; i++)
        pthread_join(th[i], NULL);
    int rising = 1;
    for (int i = 0; i < CLOCK_THREADS; i++)
        for (int j = 1; j < CLOCK_N; j++)
            rising &= all[(size_t)i * CLOCK_N + j] > all[(size_t)i * CLOCK_N + j - 1];
    CU_ASSERT(rising);
    qsort(all, (size_t)CLOCK_THREADS * CLOCK_N, sizeof *all, cmp_u64);
    int dup = 0;
    for (size_t i = 1; i < (size_t)CLOCK_THREADS * CLOCK_N; i++)
        dup += all[i] == all[i - 1];
    CU_ASSERT_EQUAL(dup, 0);
    free(all);
}

/* ---- nodes ------------------------------------------------------------------------------ */

static void test_nodes_are_interned_counted_and_freed(void)
{
    fixture f;
    fx_init(&f, 2, 0);
    int marker;
    registry_node *a = registry_node_get(f.r, "a@h", 3, &marker);
    CU_ASSERT_FATAL(a != NULL);
    CU_ASSERT_PTR_EQUAL(a->payload, &marker);
    CU_ASSERT_PTR_EQUAL(registry_node_get(f.r, "a@h", 3, NULL), a); /* same record */
    CU_ASSERT_PTR_EQUAL(registry_node_find(f.r, "a@h", 3), a);
    CU_ASSERT_PTR_NULL(registry_node_find(f.r, "b@h", 3));
    CU_ASSERT_PTR_NULL(registry_node_get(f.r, "", 0, NULL));
    static char big[REGISTRY_MAX_NAME + 1];
    memset(big, 'x', sizeof big);
    CU_ASSERT_PTR_NULL(registry_node_get(f.r, big, sizeof big, NULL));
    CU_ASSERT_EQUAL(registry_nodes(f.r), 1);
    registry_node_put(f.r, a); /* three references: two gets and a find */
    registry_node_put(f.r, a);
    CU_ASSERT_EQUAL(registry_nodes(f.r), 1);
    registry_node_put(f.r, a);
    CU_ASSERT_EQUAL(registry_nodes(f.r), 0);
    CU_ASSERT_EQUAL(atomic_load(&f.nodes_live), 0);
    registry_node_put(f.r, NULL); /* a no-op */

    /* Ten thousand names: no cap, the map grows, each frees with its last reference. */
    enum { N = 10000 };
    registry_node **ns = malloc(N * sizeof *ns);
    CU_ASSERT_FATAL(ns != NULL);
    char name[32];
    for (int i = 0; i < N; i++) {
        int len = snprintf(name, sizeof name, "node%d@host", i);
        ns[i] = registry_node_get(f.r, name, (size_t)len, NULL);
    }
    CU_ASSERT_EQUAL(registry_nodes(f.r), N);
    int wrong = 0;
    for (int i = 0; i < N; i++) {
        int len = snprintf(name, sizeof name, "node%d@host", i);
        registry_node *n = registry_node_find(f.r, name, (size_t)len);
        wrong += n != ns[i];
        registry_node_put(f.r, n);
        registry_node_put(f.r, ns[i]);
    }
    CU_ASSERT_EQUAL(wrong, 0);
    CU_ASSERT_EQUAL(registry_nodes(f.r), 0);
    free(ns);
    fx_done(&f);
}

/* ---- claims ----------------------------------------------------------------------------- */

typedef struct hooks_log {
    int seen, ending, storing;
    uint64_t seen_word;
    const char *self;
} hooks_log;

static void h_seen(void *ctx, const registry_entry *cur)
{
    hooks_log *l = ctx;
    l->seen++;
    l->seen_word = cur->te.fast;
}

static void h_ending(void *ctx, registry_entry *claim)
{
    hooks_log *l = ctx;
    (void)claim;
    l->ending++;
}

static void h_storing(void *ctx, registry_entry *mine)
{
    hooks_log *l = ctx;
    l->storing++;
    mine->te.fast = 0xABC;
}

static int h_self(void *ctx, const registry_entry *local, const unsigned char **name,
                  size_t *len)
{
    hooks_log *l = ctx;
    (void)local;
    if (l->self == NULL) return -1;
    *name = (const unsigned char *)l->self;
    *len = strlen(l->self);
    return 0;
}

static void test_claims(void)
{
    fixture f;
    fx_init(&f, 1, 0);
    hooks_log l = {0};
    registry_op op = {.seen = h_seen, .ending = h_ending, .ctx = &l};
    CU_ASSERT_EQUAL(claim(&f, 1, 11, &op), REGISTRY_OK);
    CU_ASSERT_EQUAL(look(&f, 1).state, REGISTRY_CLAIMED);
    CU_ASSERT_EQUAL(look_fast(&f, 1).state, REGISTRY_CLAIMED);
    CU_ASSERT_EQUAL(look_fast(&f, 1).word, 11);
    CU_ASSERT_EQUAL(claim(&f, 1, 11, &op), REGISTRY_OK); /* already ours */
    CU_ASSERT_EQUAL(l.seen, 0);
    CU_ASSERT_EQUAL(claim(&f, 1, 12, &op), REGISTRY_WAIT);
    CU_ASSERT(l.seen == 1 && l.seen_word == 11);
    CU_ASSERT_EQUAL(counts(&f).claims, 1);
    CU_ASSERT_EQUAL(counts(&f).entries, 1);
    /* A worker there: the claim sees it. */
    CU_ASSERT_EQUAL(reg_claim(&f, 1, 11, 21, NULL), REGISTRY_OK);
    CU_ASSERT_EQUAL(claim(&f, 1, 12, &op), REGISTRY_WORKER);
    CU_ASSERT(l.seen == 2 && l.seen_word == 21);
    /* Given up: released, claims only by their claimer. */
    CU_ASSERT_EQUAL(claim(&f, 2, 11, NULL), REGISTRY_OK);
    CU_ASSERT_EQUAL(unreg(&f, 2, 12, 1, &op), REGISTRY_NOT_FOUND);
    CU_ASSERT_EQUAL(unreg(&f, 2, 11, 1, &op), REGISTRY_OK);
    CU_ASSERT_EQUAL(l.ending, 1);
    CU_ASSERT_EQUAL(look(&f, 2).state, REGISTRY_ABSENT);
    /* claims_only never removes a worker. */
    CU_ASSERT_EQUAL(unreg(&f, 1, 21, 1, &op), REGISTRY_NOT_FOUND);
    CU_ASSERT_EQUAL(look(&f, 1).state, REGISTRY_LOCAL);
    CU_ASSERT_EQUAL(counts(&f).claims, 0);
    fx_done(&f);
}

static void test_a_claim_keeps_the_tomb_it_replaces(void)
{
    fixture f;
    fx_init(&f, 1, 0);
    registry_node *n = node(&f, "n@h");
    CU_ASSERT_EQUAL(rm(&f, 1, n, 50, 3), REGISTRY_TOMBSTONED);
    CU_ASSERT_EQUAL(claim(&f, 1, 11, NULL), REGISTRY_OK);
    seen_t s = look(&f, 1);
    CU_ASSERT(s.state == REGISTRY_CLAIMED && s.vsn == 50 && s.node == n);
    CU_ASSERT_EQUAL(counts(&f).tombs, 0);
    /* A replica the tomb would block does not resolve the claim; a newer one does. */
    CU_ASSERT_EQUAL(put(&f, 1, n, 50, 0, 1, NULL, NULL), REGISTRY_STALE);
    /* A newer remove raises what it keeps. */
    CU_ASSERT_EQUAL(rm(&f, 1, n, 60, 4), REGISTRY_STALE);
    CU_ASSERT_EQUAL(look(&f, 1).vsn, 60);
    CU_ASSERT_EQUAL(rm(&f, 1, n, 55, 5), REGISTRY_STALE);
    CU_ASSERT_EQUAL(look(&f, 1).vsn, 60);
    /* Given up, it is the tomb again, created then (unregister passes now_ms 7). */
    CU_ASSERT_EQUAL(unreg(&f, 1, 11, 0, NULL), REGISTRY_OK);
    s = look(&f, 1);
    CU_ASSERT(s.state == REGISTRY_TOMB && s.vsn == 60 && s.word == 7 && s.node == n);
    CU_ASSERT_EQUAL(counts(&f).tombs, 1);
    CU_ASSERT_EQUAL(counts(&f).claims, 0);
    /* Registered: the version is above the tomb's. */
    CU_ASSERT_EQUAL(claim(&f, 1, 11, NULL), REGISTRY_OK);
    registry_out out;
    CU_ASSERT_EQUAL(reg_claim(&f, 1, 11, 21, &out), REGISTRY_OK);
    CU_ASSERT(out.vsn > 60 && out.prev == REGISTRY_CLAIMED);
    registry_node_put(f.r, n);
    CU_ASSERT_EQUAL(registry_nodes(f.r), 0); /* the worker does not name n */
    fx_done(&f);
}

/* ---- register --------------------------------------------------------------------------- */

static void test_register_claim_mode(void)
{
    fixture f;
    fx_init(&f, 1, 0);
    registry_out out;
    CU_ASSERT_EQUAL(reg_claim(&f, 1, 11, 21, NULL), REGISTRY_NOT_CLAIMED);
    CU_ASSERT_EQUAL(claim(&f, 1, 11, NULL), REGISTRY_OK);
    hooks_log l = {0};
    registry_op op = {.seen = h_seen, .ending = h_ending, .ctx = &l};
    registry_mode other = {.over = 0, .claimer = 12};
    CU_ASSERT_EQUAL(reg(&f, 1, 21, &other, &op, NULL), REGISTRY_CLAIMED_BY);
    CU_ASSERT_EQUAL(l.seen_word, 11);
    registry_mode mine = {.over = 0, .claimer = 11};
    registry_clock_observe(&f.clock, 5000);
    CU_ASSERT_EQUAL(reg(&f, 1, 21, &mine, &op, &out), REGISTRY_OK);
    CU_ASSERT_EQUAL(l.ending, 1);
    CU_ASSERT(out.stored && out.vsn > 5000 && out.prev == REGISTRY_CLAIMED);
    seen_t s = look(&f, 1);
    CU_ASSERT(s.state == REGISTRY_LOCAL && s.word == 21 && s.vsn == out.vsn && !s.moving);
    CU_ASSERT_EQUAL(look_fast(&f, 1).word, 21);
    CU_ASSERT_EQUAL(reg(&f, 1, 22, &mine, &op, NULL), REGISTRY_ALREADY);
    CU_ASSERT_EQUAL(l.seen_word, 21);
    CU_ASSERT_EQUAL(counts(&f).local, 1);
    fx_done(&f);
}

static void test_register_over_mode(void)
{
    fixture f;
    fx_init(&f, 1, 0);
    registry_node *a = node(&f, "a@h"), *b = node(&f, "b@h");
    registry_out out;
    hooks_log l = {0};
    registry_op op = {.seen = h_seen, .ctx = &l};
    /* absent */
    CU_ASSERT_EQUAL(reg_over(&f, 1, 21, 0, NULL, &out), REGISTRY_OK);
    uint64_t v1 = out.vsn;
    /* own entry (a take-back): moving cleared, a fresh version above all the clock saw */
    unsigned char kb[16];
    registry_key k1 = key_of(kb, 1);
    CU_ASSERT_EQUAL(registry_set_moving(f.r, &k1, 21, 1, NULL), REGISTRY_OK);
    CU_ASSERT(look(&f, 1).moving);
    registry_clock_observe(&f.clock, v1 + 1000);
    CU_ASSERT_EQUAL(reg_over(&f, 1, 21, 0, NULL, &out), REGISTRY_OWN);
    CU_ASSERT(out.vsn > v1 + 1000 && !out.stored && !look(&f, 1).moving);
    CU_ASSERT_EQUAL(look(&f, 1).vsn, out.vsn);
    /* another local worker, moving or not: never (set_moving reports the version) */
    uint64_t mv = 0;
    CU_ASSERT_EQUAL(registry_set_moving(f.r, &k1, 21, 1, &mv), REGISTRY_OK);
    CU_ASSERT_EQUAL(mv, out.vsn);
    CU_ASSERT_EQUAL(registry_set_moving(f.r, &k1, 22, 1, &mv), REGISTRY_NOT_FOUND);
    registry_mode m = {.over = 1, .max_vsn = 1u << 20};
    CU_ASSERT_EQUAL(reg(&f, 1, 22, &m, &op, NULL), REGISTRY_ALREADY);
    /* replicas: older than max, or the owner's */
    CU_ASSERT_EQUAL(put(&f, 2, a, 100, 0, 1, NULL, NULL), REGISTRY_STORED);
    CU_ASSERT_EQUAL(reg_over(&f, 2, 21, 99, b, NULL), REGISTRY_NEWER);
    CU_ASSERT_EQUAL(reg_over(&f, 2, 21, 100, NULL, &out), REGISTRY_OK);
    CU_ASSERT(out.vsn > 100 && out.prev == REGISTRY_REMOTE);
    CU_ASSERT_EQUAL(put(&f, 3, a, 1u << 30, 0, 1, NULL, NULL), REGISTRY_STORED);
    CU_ASSERT_EQUAL(reg_over(&f, 3, 21, 1, a, &out), REGISTRY_OK);
    CU_ASSERT(out.vsn > (1u << 30));
    CU_ASSERT_EQUAL(registry_node_replicas(a), 0);
    /* a tomb of any version */
    CU_ASSERT_EQUAL(rm(&f, 4, b, 1ull << 40, 1), REGISTRY_TOMBSTONED);
    CU_ASSERT_EQUAL(reg_over(&f, 4, 21, 0, NULL, &out), REGISTRY_OK);
    CU_ASSERT(out.vsn > (1ull << 40));
    /* a claim: never */
    CU_ASSERT_EQUAL(claim(&f, 5, 11, NULL), REGISTRY_OK);
    CU_ASSERT_EQUAL(reg_over(&f, 5, 21, 1u << 20, NULL, NULL), REGISTRY_CLAIMED_BY);
    /* max_vsn is observed: the next version is above it */
    CU_ASSERT_EQUAL(reg_over(&f, 6, 21, 1ull << 50, NULL, &out), REGISTRY_OK);
    CU_ASSERT(out.vsn > (1ull << 50));
    CU_ASSERT_EQUAL(counts(&f).local, 5);
    CU_ASSERT_EQUAL(counts(&f).remote + counts(&f).tombs, 0);
    registry_node_put(f.r, a);
    registry_node_put(f.r, b);
    CU_ASSERT_EQUAL(registry_nodes(f.r), 0);
    fx_done(&f);
}

static void test_a_dead_worker_is_never_stored_and_drop_removes_only_itself(void)
{
    fixture f;
    fx_init(&f, 1, 0);
    unsigned char b[16];
    registry_key k = key_of(b, 1);
    /* Stored, then its worker dies: dropped, vsn reported. */
    tentry *e = entry(1, 21);
    registry_mode m = {.over = 1};
    registry_out out;
    CU_ASSERT_EQUAL(registry_register(f.r, &k, &e->re, &m, 5, NULL, &out), REGISTRY_OK);
    uint64_t vsn = 0;
    CU_ASSERT_EQUAL(registry_drop(f.r, &e->re, &vsn), 1);
    CU_ASSERT_EQUAL(vsn, out.vsn);
    CU_ASSERT_EQUAL(look(&f, 1).state, REGISTRY_ABSENT);
    CU_ASSERT_EQUAL(counts(&f).local, 0);
    /* Died before it was stored: REGISTRY_DEAD, never stored. */
    tentry *d = entry(1, 22);
    CU_ASSERT_EQUAL(registry_drop(f.r, &d->re, NULL), 0);
    CU_ASSERT_EQUAL(registry_register(f.r, &k, &d->re, &m, 5, NULL, &out), REGISTRY_NOPROC);
    CU_ASSERT(!out.stored);
    free(d);
    /* A successor is never removed by its predecessor's death. */
    tentry *old = entry(1, 23), *succ = entry(1, 24);
    CU_ASSERT_EQUAL(registry_register(f.r, &k, &old->re, &m, 5, NULL, &out), REGISTRY_OK);
    CU_ASSERT_EQUAL(registry_unregister(f.r, &k, 23, 0, 0, NULL, &out), REGISTRY_OK);
    CU_ASSERT_EQUAL(registry_register(f.r, &k, &succ->re, &m, 5, NULL, &out), REGISTRY_OK);
    CU_ASSERT_EQUAL(atomic_load(&f.released), 2); /* e and old */
    /* (old was released: its memory is gone, so drop a copy that never was stored) */
    tentry *twin = entry(1, 23);
    CU_ASSERT_EQUAL(registry_drop(f.r, &twin->re, NULL), 0);
    free(twin);
    CU_ASSERT_EQUAL(look(&f, 1).word, 24);
    fx_done(&f);
}

/* ---- replicas and tombs ----------------------------------------------------------------- */

static void test_put_remote_rules(void)
{
    fixture f;
    fx_init(&f, 1, 0);
    registry_node *a = node(&f, "a@h"), *z = node(&f, "z@h");
    hooks_log l = {0};
    registry_op op = {.seen = h_seen, .ending = h_ending, .storing = h_storing,
                      .self_name = h_self, .ctx = &l};
    registry_out out;
    CU_ASSERT_EQUAL(put(&f, 1, a, 10, 1, 0, &op, &out), REGISTRY_STORED);
    CU_ASSERT(out.prev == REGISTRY_ABSENT && l.storing == 1);
    seen_t s = look(&f, 1);
    CU_ASSERT(s.state == REGISTRY_REMOTE && s.word == 0xABC && s.vsn == 10 && s.mark == 1);
    CU_ASSERT_EQUAL(look_fast(&f, 1).state, REGISTRY_REMOTE);
    /* older and equal: stale; equal takes a non-zero mark */
    CU_ASSERT_EQUAL(put(&f, 1, a, 9, 5, 0, &op, NULL), REGISTRY_STALE);
    CU_ASSERT_EQUAL(put(&f, 1, a, 10, 0, 0, &op, NULL), REGISTRY_STALE);
    CU_ASSERT_EQUAL(look(&f, 1).mark, 1);
    CU_ASSERT_EQUAL(put(&f, 1, a, 10, 3, 0, &op, NULL), REGISTRY_STALE);
    CU_ASSERT_EQUAL(look(&f, 1).mark, 3);
    CU_ASSERT_EQUAL(l.storing, 1);
    /* a tie goes to the greater name */
    CU_ASSERT_EQUAL(put(&f, 1, z, 10, 0, 0, &op, &out), REGISTRY_STORED);
    CU_ASSERT_EQUAL(out.prev, REGISTRY_REMOTE);
    CU_ASSERT_EQUAL(put(&f, 1, a, 10, 0, 0, &op, NULL), REGISTRY_STALE);
    CU_ASSERT(registry_node_replicas(a) == 0 && registry_node_replicas(z) == 1);
    /* a claim: resolved (ending), unless it keeps a tomb that is not older */
    CU_ASSERT_EQUAL(claim(&f, 2, 11, NULL), REGISTRY_OK);
    CU_ASSERT_EQUAL(put(&f, 2, a, 1, 0, 0, &op, &out), REGISTRY_STORED);
    CU_ASSERT(out.prev == REGISTRY_CLAIMED && l.ending == 1);
    /* local workers: older is a conflict unless moving; a tie asks for this node's name */
    registry_out lo;
    CU_ASSERT_EQUAL(reg_over(&f, 3, 21, 0, NULL, &lo), REGISTRY_OK);
    CU_ASSERT_EQUAL(put(&f, 3, a, lo.vsn - 1, 0, 0, &op, NULL), REGISTRY_STALE);
    CU_ASSERT_EQUAL(put(&f, 3, a, lo.vsn + 1, 0, 0, &op, &out), REGISTRY_CONFLICT);
    CU_ASSERT(out.word == 21 && out.vsn == lo.vsn && l.seen_word == 21);
    l.self = "m@h"; /* between a@h and z@h */
    CU_ASSERT_EQUAL(put(&f, 3, a, lo.vsn, 0, 0, &op, NULL), REGISTRY_STALE);
    CU_ASSERT_EQUAL(put(&f, 3, z, lo.vsn, 0, 0, &op, NULL), REGISTRY_CONFLICT);
    l.self = NULL; /* unknown: the local entry counts as newer */
    CU_ASSERT_EQUAL(put(&f, 3, z, lo.vsn, 0, 0, &op, NULL), REGISTRY_STALE);
    unsigned char kb[16];
    registry_key k3 = key_of(kb, 3);
    CU_ASSERT_EQUAL(registry_set_moving(f.r, &k3, 21, 1, NULL), REGISTRY_OK);
    /* moving: a replica is stale (its version is observed); only the move's outcome
     * replaces the entry */
    CU_ASSERT_EQUAL(put(&f, 3, a, lo.vsn + 1, 0, 0, &op, &out), REGISTRY_STALE);
    CU_ASSERT(look(&f, 3).moving && look(&f, 3).vsn == lo.vsn);
    CU_ASSERT_EQUAL(put_succ(&f, 3, a, lo.vsn - 1, &op, &out), REGISTRY_STALE);
    CU_ASSERT_EQUAL(put_succ(&f, 3, a, lo.vsn + 1, &op, &out), REGISTRY_STORED);
    CU_ASSERT(out.prev == REGISTRY_LOCAL && out.word == 21 && out.vsn == lo.vsn);
    /* versions given are observed */
    CU_ASSERT(registry_clock_last(&f.clock) >= lo.vsn + 1);
    registry_counts c = counts(&f);
    CU_ASSERT(c.local == 0 && c.remote == 3 && c.claims == 0 && c.entries == 3);
    CU_ASSERT_EQUAL(registry_node_replicas(a), 2);
    registry_node_put(f.r, a);
    registry_node_put(f.r, z);
    fx_done(&f);
}

static void test_remove_remote_rules(void)
{
    fixture f;
    fx_init(&f, 1, 0);
    registry_node *a = node(&f, "a@h"), *z = node(&f, "z@h");
    CU_ASSERT_EQUAL(put(&f, 1, a, 10, 0, 0, NULL, NULL), REGISTRY_STORED);
    CU_ASSERT_EQUAL(rm(&f, 1, a, 9, 1), REGISTRY_STALE);
    CU_ASSERT_EQUAL(rm(&f, 1, a, 10, 2), REGISTRY_REMOVED);
    seen_t s = look(&f, 1);
    CU_ASSERT(s.state == REGISTRY_TOMB && s.vsn == 10 && s.node == a && s.word == 2);
    CU_ASSERT_EQUAL(look_fast(&f, 1).state, REGISTRY_TOMB);
    CU_ASSERT_EQUAL(registry_node_replicas(a), 0);
    /* a tomb blocks replicas that are not newer and is raised by newer tombs */
    CU_ASSERT_EQUAL(put(&f, 1, a, 10, 0, 0, NULL, NULL), REGISTRY_STALE);
    CU_ASSERT_EQUAL(rm(&f, 1, a, 10, 3), REGISTRY_STALE);
    CU_ASSERT_EQUAL(rm(&f, 1, z, 10, 4), REGISTRY_TOMBSTONED);
    s = look(&f, 1);
    CU_ASSERT(s.vsn == 10 && s.node == z && s.word == 4);
    CU_ASSERT_EQUAL(put(&f, 1, z, 11, 0, 0, NULL, NULL), REGISTRY_STORED);
    /* a replica removed by another node's newer version */
    CU_ASSERT_EQUAL(rm(&f, 1, a, 12, 5), REGISTRY_REMOVED);
    CU_ASSERT_EQUAL(look(&f, 1).node, a);
    /* absent: a tomb */
    CU_ASSERT_EQUAL(rm(&f, 2, a, 1, 6), REGISTRY_TOMBSTONED);
    /* a local worker: left alone */
    CU_ASSERT_EQUAL(reg_over(&f, 3, 21, 0, NULL, NULL), REGISTRY_OK);
    CU_ASSERT_EQUAL(rm(&f, 3, a, UINT64_MAX, 7), REGISTRY_STALE);
    CU_ASSERT_EQUAL(look(&f, 3).state, REGISTRY_LOCAL);
    CU_ASSERT(registry_clock_last(&f.clock) == UINT64_MAX);
    registry_counts c = counts(&f);
    CU_ASSERT(c.tombs == 2 && c.local == 1 && c.remote == 0);
    registry_node_put(f.r, a);
    registry_node_put(f.r, z);
    CU_ASSERT_EQUAL(registry_nodes(f.r), 1); /* the tombs name a@h */
    fx_done(&f);
}

/* A sync's entry is not refused by another node's tomb from before the walk (the twin of a
 * partition that died): only by its own node's tombs, newer tombs, and newer replicas. */
static void test_put_synced_passes_older_tombs_of_other_nodes(void)
{
    fixture f;
    fx_init(&f, 1, 0);
    registry_node *b = node(&f, "b@h"), *e = node(&f, "e@h");
    /* e's twin (version 70) died: its tomb; b's worker at 60 lives, its walk began at 80 */
    CU_ASSERT_EQUAL(rm(&f, 1, e, 70, 1), REGISTRY_TOMBSTONED);
    CU_ASSERT_EQUAL(put(&f, 1, b, 60, 0, 1, NULL, NULL), REGISTRY_STALE);
    CU_ASSERT_EQUAL(put_sync(&f, 1, b, 60, 5, 70, NULL), REGISTRY_STALE); /* not before */
    registry_out out;
    CU_ASSERT_EQUAL(put_sync(&f, 1, b, 60, 5, 80, &out), REGISTRY_STORED);
    CU_ASSERT_EQUAL(out.prev, REGISTRY_TOMB);
    seen_t s = look(&f, 1);
    CU_ASSERT(s.state == REGISTRY_REMOTE && s.node == b && s.vsn == 60 && s.mark == 5);
    CU_ASSERT_EQUAL(counts(&f).tombs, 0);
    /* its own node's tomb still refuses it, however old */
    CU_ASSERT_EQUAL(rm(&f, 2, b, 70, 2), REGISTRY_TOMBSTONED);
    CU_ASSERT_EQUAL(put_sync(&f, 2, b, 60, 5, 80, NULL), REGISTRY_STALE);
    /* a newer replica of another node is not a tomb: it stays (a conflict to settle) */
    CU_ASSERT_EQUAL(put(&f, 3, e, 70, 0, 1, NULL, NULL), REGISTRY_STORED);
    CU_ASSERT_EQUAL(put_sync(&f, 3, b, 60, 5, 80, NULL), REGISTRY_STALE);
    CU_ASSERT_EQUAL(look(&f, 3).node, e);
    /* a claim that keeps such a tomb ends, its waiters told, like over an absent key */
    CU_ASSERT_EQUAL(rm(&f, 4, e, 70, 3), REGISTRY_TOMBSTONED);
    CU_ASSERT_EQUAL(claim(&f, 4, 11, NULL), REGISTRY_OK);
    CU_ASSERT_EQUAL(put(&f, 4, b, 60, 0, 1, NULL, NULL), REGISTRY_STALE);
    CU_ASSERT_EQUAL(put_sync(&f, 4, b, 60, 5, 80, &out), REGISTRY_STORED);
    CU_ASSERT_EQUAL(out.prev, REGISTRY_CLAIMED);
    CU_ASSERT_EQUAL(look(&f, 4).state, REGISTRY_REMOTE);
    registry_counts c = counts(&f);
    CU_ASSERT(c.tombs == 1 && c.claims == 0 && c.remote == 3);
    registry_node_put(f.r, b);
    registry_node_put(f.r, e);
    fx_done(&f);
}

/* ---- walks ------------------------------------------------------------------------------ */

typedef struct walk_t {
    int local, remote, claims, tombs;
} walk_t;

static void walk_count(void *ctx, const registry_entry *e)
{
    walk_t *w = ctx;
    switch (registry_state_of(e)) {
    case REGISTRY_LOCAL: w->local++; break;
    case REGISTRY_REMOTE: w->remote++; break;
    case REGISTRY_CLAIMED: w->claims++; break;
    case REGISTRY_TOMB: w->tombs++; break;
    default: break;
    }
}

static walk_t walk_all(fixture *f)
{
    walk_t w = {0};
    for (size_t seg = 0; seg < registry_segments(f->r); seg++)
        (void)registry_visit_segment(f->r, seg, walk_count, &w);
    return w;
}

static size_t sweep_all(fixture *f, const registry_sweep *s)
{
    size_t n = 0;
    for (size_t seg = 0; seg < registry_segments(f->r); seg++)
        n += registry_sweep_segment(f->r, seg, s);
    return n;
}

static int bump(void *ctx, registry_entry *e)
{
    (void)ctx;
    e->te.fast += 1;
    return 1;
}

static void test_sweeps_and_rewrites(void)
{
    fixture f;
    fx_init(&f, 3, 0);
    registry_node *a = node(&f, "a@h"), *b = node(&f, "b@h");
    for (uint64_t i = 0; i < 1000; i++)
        CU_ASSERT_EQUAL(put(&f, i, i % 2 ? a : b, i, i % 3 == 0 ? 7 : 1, 100, NULL, NULL),
                        REGISTRY_STORED);
    for (uint64_t i = 1000; i < 1100; i++) {
        CU_ASSERT_EQUAL(rm(&f, i, a, 1, i < 1050 ? 10 : 20), REGISTRY_TOMBSTONED);
        CU_ASSERT_EQUAL(reg_over(&f, i + 1000, 21, 0, NULL, NULL), REGISTRY_OK);
    }
    walk_t w = walk_all(&f);
    CU_ASSERT(w.remote == 1000 && w.tombs == 100 && w.local == 100);
    /* rewrites touch replicas only, and the slot follows */
    size_t changed = 0;
    for (size_t seg = 0; seg < registry_segments(f.r); seg++)
        changed += registry_rewrite_segment(f.r, seg, bump, NULL);
    CU_ASSERT_EQUAL(changed, 1000);
    CU_ASSERT_EQUAL(look_fast(&f, 5).word, 101);
    CU_ASSERT_EQUAL(look_fast(&f, 2000).word, 21);
    /* sweep a@h's replicas not marked 7 below version 501 */
    registry_sweep s = {.what = REGISTRY_SWEEP_NODE_MARK, .node = a, .mark = 7, .before = 501};
    size_t expect = 0;
    for (uint64_t i = 1; i < 501; i += 2)
        expect += i % 3 != 0;
    CU_ASSERT_EQUAL(sweep_all(&f, &s), expect);
    CU_ASSERT_EQUAL(registry_node_replicas(a), 500 - expect);
    /* tombs by age: made at 10 and 20; at 30, 15 ms old or more is the first 50 */
    registry_sweep t = {.what = REGISTRY_SWEEP_TOMBS, .now_ms = 30, .age_ms = 15};
    CU_ASSERT_EQUAL(sweep_all(&f, &t), 50);
    t.age_ms = 0;
    CU_ASSERT_EQUAL(sweep_all(&f, &t), 50);
    /* purge b@h */
    registry_sweep p = {.what = REGISTRY_SWEEP_NODE_ALL, .node = b};
    CU_ASSERT_EQUAL(sweep_all(&f, &p), 500);
    registry_counts c = counts(&f);
    CU_ASSERT(c.remote == 500 - expect && c.tombs == 0 && c.local == 100);
    w = walk_all(&f);
    CU_ASSERT(w.remote == (int)c.remote && w.tombs == 0 && w.local == 100);
    registry_node_put(f.r, a);
    registry_node_put(f.r, b);
    CU_ASSERT_EQUAL(registry_nodes(f.r), 1); /* b@h went with its replicas */
    registry_clear(f.r);
    c = counts(&f);
    CU_ASSERT(c.entries == 0 && c.local == 0 && c.remote == 0);
    CU_ASSERT_EQUAL(registry_nodes(f.r), 0);
    fx_done(&f);
}

/* ---- out of memory ---------------------------------------------------------------------- */

/* An insert that cannot grow the table fails with SHOAL_ENOMEM and changes nothing: the
 * entry stays the caller's, counts and node references are as before. (ASan checks that
 * nothing leaks.) */
static void test_enomem_changes_nothing(void)
{
    fixture f;
    fx_init(&f, 0, 1);
    registry_node *a = node(&f, "a@h");
    int enomem = 0, ok = 0;
    for (uint64_t i = 0; i < 2000; i++) {
        atomic_store(&f.fail_after, (long)(i % 2 == 0 ? 0 : -1));
        int rc = put(&f, i, a, 1, 0, 0, NULL, NULL);
        enomem += rc == SHOAL_ENOMEM;
        ok += rc == REGISTRY_STORED;
        atomic_store(&f.fail_after, (long)(i % 3 == 0 ? 0 : -1));
        rc = rm(&f, 100000 + i, a, 1, 1);
        enomem += rc == SHOAL_ENOMEM;
        ok += rc == REGISTRY_TOMBSTONED;
        atomic_store(&f.fail_after, (long)(i % 5 == 0 ? 0 : -1));
        rc = claim(&f, 200000 + i, 1, NULL);
        enomem += rc == SHOAL_ENOMEM;
        ok += rc == REGISTRY_OK;
    }
    atomic_store(&f.fail_after, -1);
    CU_ASSERT(enomem > 0);
    registry_counts c = counts(&f);
    walk_t w = walk_all(&f);
    CHECKF((size_t)ok == c.entries, "ok %d, entries %zu (enomem %d)", ok, c.entries, enomem);
    CU_ASSERT(w.remote == (int)c.remote && w.tombs == (int)c.tombs && w.claims == (int)c.claims);
    CU_ASSERT_EQUAL(registry_node_replicas(a), c.remote);
    registry_node_put(f.r, a);
    fx_done(&f);
}

/* ---- concurrency ------------------------------------------------------------------------ */

enum { MT_THREADS = 4, MT_OPS = 60000, MT_KEYS = 64 };

typedef struct mt_arg {
    fixture *f;
    registry_node *nodes[3];
    uint64_t seed;
    int bad;
} mt_arg;

static void *mt_run(void *p)
{
    mt_arg *a = p;
    fixture *f = a->f;
    uint64_t x = a->seed, self = a->seed & 0xFFFF;
    for (int i = 0; i < MT_OPS; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        uint64_t id = x % MT_KEYS, v = (x >> 20) % 50;
        registry_node *n = a->nodes[(x >> 40) % 3];
        unsigned char b[16];
        registry_key k = key_of(b, id);
        int rc = 0;
        switch ((x >> 32) % 9) {
        case 0: rc = claim(f, id, self, NULL); break;
        case 1: rc = reg_claim(f, id, self, self, NULL); break;
        case 2: rc = reg_over(f, id, self, v, n, NULL); break;
        case 3: rc = unreg(f, id, self, (x >> 50) & 1, NULL); break;
        case 4: rc = put(f, id, n, v, (uint32_t)(x >> 50) % 3, 0, NULL, NULL); break;
        case 5: rc = rm(f, id, n, v, (int64_t)i); break;
        case 6: rc = registry_set_moving(f->r, &k, self, (x >> 50) & 1, NULL); break;
        case 7: {
            registry_sweep s = {.what = REGISTRY_SWEEP_NODE_MARK, .node = n, .mark = 1,
                                .before = v};
            (void)registry_sweep_segment(f->r, id % registry_segments(f->r), &s);
            break;
        }
        default: {
            registry_sweep s = {.what = REGISTRY_SWEEP_TOMBS, .now_ms = i, .age_ms = 5000};
            (void)registry_sweep_segment(f->r, id % registry_segments(f->r), &s);
            break;
        }
        }
        a->bad += rc < 0;
    }
    return NULL;
}

static void test_concurrent_operations_keep_counts_and_nodes_exact(void)
{
    fixture f;
    fx_init(&f, 2, 0);
    registry_node *ns[3] = {node(&f, "a@h"), node(&f, "m@h"), node(&f, "z@h")};
    mt_arg args[MT_THREADS];
    pthread_t th[MT_THREADS];
    for (int i = 0; i < MT_THREADS; i++) {
        args[i].f = &f;
        memcpy(args[i].nodes, ns, sizeof ns);
        args[i].seed = 0x9E3779B97F4A7C15ULL * (uint64_t)(i + 1) | 1;
        args[i].bad = 0;
        CU_ASSERT_EQUAL_FATAL(pthread_create(&th[i], NULL, mt_run, &args[i]), 0);
    }
    for (int i = 0; i < MT_THREADS; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < MT_THREADS; i++)
        CU_ASSERT_EQUAL(args[i].bad, 0);
    registry_counts c = counts(&f);
    walk_t w = walk_all(&f);
    CU_ASSERT(w.local == (int)c.local && w.remote == (int)c.remote &&
              w.claims == (int)c.claims && w.tombs == (int)c.tombs);
    CU_ASSERT_EQUAL(c.entries, c.local + c.remote + c.claims + c.tombs);
    size_t per_node = 0;
    for (int i = 0; i < 3; i++)
        per_node += registry_node_replicas(ns[i]);
    CU_ASSERT_EQUAL(per_node, c.remote);
    for (int i = 0; i < 3; i++)
        registry_node_put(f.r, ns[i]);
    registry_clear(f.r);
    CU_ASSERT_EQUAL(registry_nodes(f.r), 0);
    CU_ASSERT_EQUAL(atomic_load(&f.nodes_live), 0);
    fx_done(&f);
}

/* ---- registration ----------------------------------------------------------------------- */

CU_ErrorCode test_core_register_registry(void)
{
    CU_pSuite s = CU_add_suite("registry", NULL, NULL);
    if (s == NULL) return CU_get_error();
    static const struct {
        const char *name;
        CU_TestFunc fn;
    } tests[] = {
        {"clock: strictly increasing, wall time or above, observes", test_clock_is_strictly_increasing_and_observes},
        {"clock: unique values across 4 threads", test_clock_hands_out_unique_values_across_threads},
        {"nodes: interned, no cap, freed with the last reference", test_nodes_are_interned_counted_and_freed},
        {"claims: insert-if-absent, wait, worker, release", test_claims},
        {"a claim keeps the tomb it replaces and becomes it again", test_a_claim_keeps_the_tomb_it_replaces},
        {"register, claim mode", test_register_claim_mode},
        {"register, over mode", test_register_over_mode},
        {"a dead worker is never stored; drop removes only itself", test_a_dead_worker_is_never_stored_and_drop_removes_only_itself},
        {"put_remote: newer wins, ties by name, marks, conflicts, moving", test_put_remote_rules},
        {"remove_remote: tombs, raised tombs, local left alone", test_remove_remote_rules},
        {"put_synced passes older tombs of other nodes only", test_put_synced_passes_older_tombs_of_other_nodes},
        {"sweeps by node and mark, tombs by age, purge, rewrite", test_sweeps_and_rewrites},
        {"out of memory changes nothing", test_enomem_changes_nothing},
        {"4 threads of every operation keep counts and nodes exact", test_concurrent_operations_keep_counts_and_nodes_exact},
    };
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++)
        if (CU_add_test(s, tests[i].name, tests[i].fn) == NULL) return CU_get_error();
    return CUE_SUCCESS;
}
