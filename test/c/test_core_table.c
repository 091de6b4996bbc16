/* test_core_table.c - CUnit suite for the segmented worker table (table.h).
 *
 * Written from the header's contract, not from table.c: each test names the promise it pins
 * (a lost claim leaves the entry with the caller, a stale owner cannot remove its successor,
 * every entry that leaves is released exactly once, a fold visits each entry once, counts stay
 * exact through growth and under concurrent use). Entries are malloc'd test_entry structs
 * whose release callback counts instead of freeing where a test needs to inspect them after. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "keyhash.h"
#include "shoal_err.h"
#include "table.h"
#include "test_core.h"

typedef struct test_entry {
    table_entry base;        /* first member, as the table requires */
    unsigned char keybuf[8]; /* the key bytes base.key points at */
    uint64_t id;             /* the key as a number */
    uint64_t check;          /* id-derived value, to detect a torn or wrong entry */
    atomic_int released;     /* times ops->release was called on this entry */
} test_entry;

typedef struct release_counter {
    atomic_size_t releases; /* total release calls */
    int free_on_release;    /* free the entry in the callback (big tests) */
} release_counter;

static uint64_t check_of(uint64_t id)
{
    return id * 0x9E3779B97F4A7C15ULL ^ 0x5151;
}

static void make_key(unsigned char kb[8], uint64_t id)
{
    for (int i = 0; i < 8; i++)
        kb[i] = (unsigned char)(id >> (8 * i));
}

static test_entry *entry_new(uint64_t id)
{
    test_entry *e = calloc(1, sizeof *e);
    if (e == NULL) /* also called from worker threads, where CUnit must not be used */
        abort();
    make_key(e->keybuf, id);
    e->base.key = e->keybuf;
    e->base.klen = sizeof e->keybuf;
    e->base.hash = keyhash_hash64(e->keybuf, sizeof e->keybuf);
    e->id = id;
    e->check = check_of(id);
    atomic_init(&e->released, 0);
    return e;
}

static void count_release(void *ctx, table_entry *te)
{
    release_counter *rc = ctx;
    test_entry *e = (test_entry *)te;
    atomic_fetch_add(&rc->releases, 1);
    if (rc->free_on_release)
        free(e);
    else
        atomic_fetch_add(&e->released, 1);
}

static table *new_table(unsigned log2, release_counter *rc, table_ops *ops)
{
    table *t = NULL;
    atomic_init(&rc->releases, 0);
    rc->free_on_release = 0;
    ops->release = count_release;
    ops->ctx = rc;
    ops->alloc = NULL;
    ops->free = NULL;
    CU_ASSERT_EQUAL_FATAL(table_new(&t, log2, ops), 0);
    CU_ASSERT_FATAL(t != NULL);
    return t;
}

/* table_get helpers: copy out the entry pointer seen under the lock. */
static void visit_copy(void *ctx, const table_entry *e)
{
    *(const table_entry **)ctx = e;
}

static const table_entry *get_id(table *t, uint64_t id, int *rc)
{
    unsigned char kb[8];
    const table_entry *seen = NULL;
    make_key(kb, id);
    *rc = table_get(t, keyhash_hash64(kb, 8), kb, 8, visit_copy, &seen);
    return seen;
}

/* table_update driven by a small script: what to return and what to put. */
typedef struct update_script {
    table_action action;     /* what fn returns */
    table_entry *put;        /* replacement for TABLE_PUT */
    const table_entry *seen; /* what fn saw as cur */
    int calls;               /* how many times fn ran */
} update_script;

static table_action scripted(void *ctx, table_entry *cur, table_entry **replacement)
{
    update_script *s = ctx;
    s->seen = cur;
    s->calls++;
    if (s->action == TABLE_PUT) *replacement = s->put;
    return s->action;
}

static int update_id(table *t, uint64_t id, update_script *s)
{
    unsigned char kb[8];
    make_key(kb, id);
    return table_update(t, keyhash_hash64(kb, 8), kb, 8, scripted, s);
}

/* ---- construction ---------------------------------------------------------------------- */

static void test_new_rejects_bad_arguments(void)
{
    release_counter rc = {0};
    table_ops ops = {count_release, &rc, NULL, NULL};
    table_ops no_release = {NULL, &rc, NULL, NULL};
    table_ops half_alloc = {count_release, &rc, malloc, NULL};
    table *t = (table *)0x1;
    CU_ASSERT_EQUAL(table_new(&t, 17, &ops), SHOAL_EINVAL);
    CU_ASSERT_EQUAL(table_new(&t, 1000, &ops), SHOAL_EINVAL);
    CU_ASSERT_EQUAL(table_new(&t, 8, NULL), SHOAL_EINVAL);
    CU_ASSERT_EQUAL(table_new(&t, 8, &no_release), SHOAL_EINVAL);
    CU_ASSERT_EQUAL(table_new(&t, 8, &half_alloc), SHOAL_EINVAL);
    for (unsigned log2 = 0; log2 <= 16; log2 += 4) {
        t = NULL;
        CU_ASSERT_EQUAL(table_new(&t, log2, &ops), 0);
        CU_ASSERT(t != NULL);
        CU_ASSERT_EQUAL(table_count(t), 0);
        CU_ASSERT(table_memory(t) > 0);
        table_free(t);
    }
    table_free(NULL); /* a no-op */
    CU_ASSERT_EQUAL(atomic_load(&rc.releases), 0);
}

/* With alloc/free hooks, every byte the table holds comes from them and goes back. */
static atomic_long hook_live;

static void *hook_alloc(size_t n)
{
    size_t *p = malloc(n + sizeof(size_t) * 2);
    if (p == NULL) return NULL;
    p[0] = n;
    atomic_fetch_add(&hook_live, (long)n);
    return p + 2;
}

static void hook_free(void *q)
{
    size_t *p = (size_t *)q - 2;
    atomic_fetch_sub(&hook_live, (long)p[0]);
    free(p);
}

static void test_alloc_hooks_hold_all_table_memory(void)
{
    release_counter rc = {0};
    rc.free_on_release = 1;
    table_ops ops = {count_release, &rc, hook_alloc, hook_free};
    table *t = NULL;
    atomic_store(&hook_live, 0);
    CU_ASSERT_EQUAL_FATAL(table_new(&t, 4, &ops), 0);
    for (uint64_t i = 0; i < 50000; i++) {
        test_entry *e = entry_new(i);
        CU_ASSERT_EQUAL(table_insert_new(t, &e->base), 0);
    }
    CHECKF((size_t)atomic_load(&hook_live) >= table_memory(t) - 64,
           "hooks hold %ld bytes, table_memory says %zu", atomic_load(&hook_live),
           table_memory(t));
    table_free(t);
    CU_ASSERT_EQUAL(atomic_load(&hook_live), 0);
    CU_ASSERT_EQUAL(atomic_load(&rc.releases), 50000);
}

/* ---- single-key operations ------------------------------------------------------------ */

static void test_insert_new_claims_a_key_once(void)
{
    release_counter rc;
    table_ops ops;
    table *t = new_table(2, &rc, &ops);
    test_entry *a = entry_new(42), *b = entry_new(42);
    int r;

    CU_ASSERT_EQUAL(table_insert_new(t, &a->base), 0);
    CU_ASSERT_EQUAL(table_count(t), 1);
    /* The losing claim stays the caller's: not stored, not released. */
    CU_ASSERT_EQUAL(table_insert_new(t, &b->base), SHOAL_EEXIST);
    CU_ASSERT_EQUAL(table_count(t), 1);
    CU_ASSERT_EQUAL(atomic_load(&b->released), 0);
    CU_ASSERT_EQUAL(atomic_load(&rc.releases), 0);
    CU_ASSERT_PTR_EQUAL(get_id(t, 42, &r), &a->base);
    CU_ASSERT_EQUAL(r, 0);
    /* Re-inserting the very same entry is a lost claim too. */
    CU_ASSERT_EQUAL(table_insert_new(t, &a->base), SHOAL_EEXIST);
    CU_ASSERT_EQUAL(table_count(t), 1);

    table_free(t);
    CU_ASSERT_EQUAL(atomic_load(&a->released), 1);
    CU_ASSERT_EQUAL(atomic_load(&b->released), 0);
    free(a);
    free(b);
}

static void test_get_finds_only_present_keys(void)
{
    release_counter rc;
    table_ops ops;
    table *t = new_table(4, &rc, &ops);
    test_entry *e[100];
    int r;

    for (int i = 0; i < 100; i++) {
        e[i] = entry_new((uint64_t)i * 7);
        CU_ASSERT_EQUAL(table_insert_new(t, &e[i]->base), 0);
    }
    for (int i = 0; i < 100; i++) {
        CU_ASSERT_PTR_EQUAL(get_id(t, (uint64_t)i * 7, &r), &e[i]->base);
        CU_ASSERT_EQUAL(r, 0);
    }
    /* Absent keys: ENOENT and the visitor is not called. */
    for (uint64_t id = 1; id < 700; id += 7) {
        const table_entry *seen = get_id(t, id, &r);
        CU_ASSERT_EQUAL(r, SHOAL_ENOENT);
        CU_ASSERT_PTR_NULL(seen);
    }
    /* Same hash, different key bytes: the table must compare the key, not only the hash. */
    unsigned char other[8];
    const table_entry *seen = NULL;
    make_key(other, 12345);
    CU_ASSERT_EQUAL(table_get(t, e[3]->base.hash, other, 8, visit_copy, &seen), SHOAL_ENOENT);
    CU_ASSERT_PTR_NULL(seen);
    /* Same bytes, shorter length: a different key. */
    CU_ASSERT_EQUAL(table_get(t, e[3]->base.hash, e[3]->keybuf, 7, visit_copy, &seen),
                    SHOAL_ENOENT);
    table_free(t);
    for (int i = 0; i < 100; i++) {
        CU_ASSERT_EQUAL(atomic_load(&e[i]->released), 1);
        free(e[i]);
    }
}

static void test_update_put_delete_keep(void)
{
    release_counter rc;
    table_ops ops;
    table *t = new_table(3, &rc, &ops);
    test_entry *a = entry_new(7), *b = entry_new(7);
    update_script s = {0};
    int r;

    /* KEEP on an absent key: fn sees NULL, nothing happens. */
    s = (update_script){.action = TABLE_KEEP};
    CU_ASSERT_EQUAL(update_id(t, 7, &s), 0);
    CU_ASSERT_EQUAL(s.calls, 1);
    CU_ASSERT_PTR_NULL(s.seen);
    CU_ASSERT_EQUAL(table_count(t), 0);

    /* DELETE on an absent key: a no-op that succeeds. */
    s = (update_script){.action = TABLE_DELETE};
    CU_ASSERT_EQUAL(update_id(t, 7, &s), 0);
    CU_ASSERT_PTR_NULL(s.seen);
    CU_ASSERT_EQUAL(table_count(t), 0);
    CU_ASSERT_EQUAL(atomic_load(&rc.releases), 0);

    /* PUT on an absent key inserts. */
    s = (update_script){.action = TABLE_PUT, .put = &a->base};
    CU_ASSERT_EQUAL(update_id(t, 7, &s), 0);
    CU_ASSERT_PTR_NULL(s.seen);
    CU_ASSERT_EQUAL(table_count(t), 1);
    CU_ASSERT_PTR_EQUAL(get_id(t, 7, &r), &a->base);

    /* KEEP on a present key: fn sees it, it stays. */
    s = (update_script){.action = TABLE_KEEP};
    CU_ASSERT_EQUAL(update_id(t, 7, &s), 0);
    CU_ASSERT_PTR_EQUAL(s.seen, &a->base);
    CU_ASSERT_PTR_EQUAL(get_id(t, 7, &r), &a->base);
    CU_ASSERT_EQUAL(atomic_load(&rc.releases), 0);

    /* PUT on a present key replaces and releases the old entry exactly once. */
    s = (update_script){.action = TABLE_PUT, .put = &b->base};
    CU_ASSERT_EQUAL(update_id(t, 7, &s), 0);
    CU_ASSERT_PTR_EQUAL(s.seen, &a->base);
    CU_ASSERT_EQUAL(table_count(t), 1);
    CU_ASSERT_PTR_EQUAL(get_id(t, 7, &r), &b->base);
    CU_ASSERT_EQUAL(atomic_load(&a->released), 1);
    CU_ASSERT_EQUAL(atomic_load(&b->released), 0);

    /* DELETE on a present key removes and releases it. */
    s = (update_script){.action = TABLE_DELETE};
    CU_ASSERT_EQUAL(update_id(t, 7, &s), 0);
    CU_ASSERT_PTR_EQUAL(s.seen, &b->base);
    CU_ASSERT_EQUAL(table_count(t), 0);
    get_id(t, 7, &r);
    CU_ASSERT_EQUAL(r, SHOAL_ENOENT);
    CU_ASSERT_EQUAL(atomic_load(&b->released), 1);

    table_free(t);
    CU_ASSERT_EQUAL(atomic_load(&rc.releases), 2);
    CU_ASSERT_EQUAL(atomic_load(&a->released), 1);
    CU_ASSERT_EQUAL(atomic_load(&b->released), 1);
    free(a);
    free(b);
}

static void test_remove_entry_removes_only_that_entry(void)
{
    release_counter rc;
    table_ops ops;
    table *t = new_table(1, &rc, &ops);
    test_entry *old = entry_new(9), *successor = entry_new(9), *absent = entry_new(10);
    int r;

    CU_ASSERT_EQUAL(table_insert_new(t, &old->base), 0);
    /* The old owner goes; a successor takes the key (PUT replaces and releases old). */
    update_script s = {.action = TABLE_PUT, .put = &successor->base};
    CU_ASSERT_EQUAL(update_id(t, 9, &s), 0);
    CU_ASSERT_EQUAL(atomic_load(&old->released), 1);
    /* The stale owner's late removal must not delete the successor. */
    CU_ASSERT_EQUAL(table_remove_entry(t, &old->base), SHOAL_ENOENT);
    CU_ASSERT_PTR_EQUAL(get_id(t, 9, &r), &successor->base);
    CU_ASSERT_EQUAL(atomic_load(&successor->released), 0);
    CU_ASSERT_EQUAL(atomic_load(&old->released), 1);
    /* A key that is not there at all. */
    CU_ASSERT_EQUAL(table_remove_entry(t, &absent->base), SHOAL_ENOENT);
    /* The successor removes itself: gone and released once; a second try is ENOENT. */
    CU_ASSERT_EQUAL(table_remove_entry(t, &successor->base), 0);
    CU_ASSERT_EQUAL(atomic_load(&successor->released), 1);
    CU_ASSERT_EQUAL(table_count(t), 0);
    get_id(t, 9, &r);
    CU_ASSERT_EQUAL(r, SHOAL_ENOENT);
    CU_ASSERT_EQUAL(table_remove_entry(t, &successor->base), SHOAL_ENOENT);
    table_free(t);
    CU_ASSERT_EQUAL(atomic_load(&rc.releases), 2);
    CU_ASSERT_EQUAL(atomic_load(&absent->released), 0);
    free(old);
    free(successor);
    free(absent);
}

static void test_free_releases_every_entry_once(void)
{
    release_counter rc;
    table_ops ops;
    table *t = new_table(5, &rc, &ops);
    enum { N = 5000 };
    test_entry **e = malloc(N * sizeof *e);
    CU_ASSERT_FATAL(e != NULL);
    for (int i = 0; i < N; i++) {
        e[i] = entry_new((uint64_t)i);
        CU_ASSERT_EQUAL(table_insert_new(t, &e[i]->base), 0);
    }
    CU_ASSERT_EQUAL(table_count(t), N);
    table_free(t);
    CU_ASSERT_EQUAL(atomic_load(&rc.releases), N);
    int bad = 0;
    for (int i = 0; i < N; i++) {
        bad += atomic_load(&e[i]->released) != 1;
        free(e[i]);
    }
    CU_ASSERT_EQUAL(bad, 0);
    free(e);
}

/* ---- growth --------------------------------------------------------------------------- */

static void grow_to_a_million(unsigned log2)
{
    enum { N = 1000000 };
    release_counter rc;
    table_ops ops;
    table *t = new_table(log2, &rc, &ops);
    rc.free_on_release = 1;
    size_t mem_empty = table_memory(t);
    int failed_insert = 0, missing = 0, wrong = 0, failed_remove = 0;

    for (uint64_t i = 0; i < N; i++)
        failed_insert += table_insert_new(t, &entry_new(i * 2654435761u)->base) != 0;
    CU_ASSERT_EQUAL(failed_insert, 0);
    CU_ASSERT_EQUAL(table_count(t), N);
    for (uint64_t i = 0; i < N; i++) {
        int r;
        const test_entry *e = (const test_entry *)get_id(t, i * 2654435761u, &r);
        missing += r != 0;
        wrong += r == 0 && (e->id != i * 2654435761u || e->check != check_of(e->id));
    }
    CU_ASSERT_EQUAL(missing, 0);
    CU_ASSERT_EQUAL(wrong, 0);
    /* The header's budget: one 32-byte slot per entry at a load factor of at least 3/8 (at
     * most ~85.3 bytes per entry), plus fixed per-segment overhead. */
    size_t mem = table_memory(t);
    CHECKF(mem >= (size_t)N * 32, "table_memory %zu below one slot per entry", mem);
    CHECKF(mem <= (size_t)N * 86 + mem_empty + 64 * 1024,
           "table_memory %zu above 86 bytes per entry for %d entries (empty: %zu)", mem, N,
           mem_empty);
    CU_ASSERT_EQUAL(atomic_load(&rc.releases), 0);

    /* Delete everything, half by exact entry and half by key. */
    for (uint64_t i = 0; i < N; i++) {
        int r;
        if (i % 2) {
            table_entry *e = (table_entry *)get_id(t, i * 2654435761u, &r);
            failed_remove += r != 0 || table_remove_entry(t, e) != 0;
        } else {
            update_script s = {.action = TABLE_DELETE};
            failed_remove += update_id(t, i * 2654435761u, &s) != 0 || s.seen == NULL;
        }
    }
    CU_ASSERT_EQUAL(failed_remove, 0);
    CU_ASSERT_EQUAL(table_count(t), 0);
    CU_ASSERT_EQUAL(atomic_load(&rc.releases), N);
    table_free(t);
    CU_ASSERT_EQUAL(atomic_load(&rc.releases), N);
}

static void test_growth_to_a_million_entries(void)
{
    grow_to_a_million(8);
}

static void test_growth_of_a_single_segment(void)
{
    grow_to_a_million(0);
}

/* ---- fold ---------------------------------------------------------------------------- */

typedef struct fold_state {
    unsigned *visits; /* per id: times seen */
    size_t n;         /* ids are 0..n-1 */
    int bad;          /* entries the fold should not have shown */
    int delete_even;  /* delete entries with an even id */
} fold_state;

static table_action fold_visit(void *ctx, table_entry *te)
{
    fold_state *f = ctx;
    test_entry *e = (test_entry *)te;
    if (e->id >= f->n || e->check != check_of(e->id)) {
        f->bad++;
        return TABLE_KEEP;
    }
    f->visits[e->id]++;
    return f->delete_even && e->id % 2 == 0 ? TABLE_DELETE : TABLE_KEEP;
}

static void fill(table *t, test_entry **e, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        e[i] = entry_new(i);
        CU_ASSERT_EQUAL(table_insert_new(t, &e[i]->base), 0);
    }
}

/* Walk every segment in turn; returns the entries visited. */
static size_t fold_all(table *t, int write, table_fold_fn fn, void *ctx)
{
    size_t n = 0;
    for (size_t seg = 0; seg < table_segments(t); seg++)
        n += table_fold_segment(t, seg, write, fn, ctx);
    return n;
}

static void test_fold_visits_every_entry_once(void)
{
    enum { N = 20000 };
    static const unsigned logs[] = {0, 1, 3, 6, 10};
    for (size_t b = 0; b < sizeof logs / sizeof logs[0]; b++) {
        release_counter rc;
        table_ops ops;
        table *t = new_table(logs[b], &rc, &ops);
        test_entry **e = malloc(N * sizeof *e);
        fold_state f = {.visits = calloc(N, sizeof(unsigned)), .n = N};
        CU_ASSERT_FATAL(e != NULL && f.visits != NULL);
        fill(t, e, N);
        CU_ASSERT_EQUAL(table_segments(t), (size_t)1 << logs[b]);
        CU_ASSERT_EQUAL(fold_all(t, 0, fold_visit, &f), N);
        int not_once = 0;
        for (size_t i = 0; i < N; i++)
            not_once += f.visits[i] != 1;
        CHECKF(not_once == 0, "2^%u segments: %d entries not visited exactly once", logs[b],
               not_once);
        CU_ASSERT_EQUAL(f.bad, 0);
        CU_ASSERT_EQUAL(table_count(t), N);
        CU_ASSERT_EQUAL(atomic_load(&rc.releases), 0);
        /* A segment number out of range visits nothing. */
        CU_ASSERT_EQUAL(table_fold_segment(t, table_segments(t), 0, fold_visit, &f), 0);
        table_free(t);
        for (size_t i = 0; i < N; i++)
            free(e[i]);
        free(e);
        free(f.visits);
    }
    /* An empty table folds to nothing. */
    release_counter rc;
    table_ops ops;
    fold_state f = {.visits = NULL, .n = 0};
    table *empty = new_table(4, &rc, &ops);
    CU_ASSERT_EQUAL(fold_all(empty, 0, fold_visit, &f), 0);
    CU_ASSERT_EQUAL(fold_all(empty, 1, fold_visit, &f), 0);
    table_free(empty);
}

static void test_fold_deleting_half_by_predicate(void)
{
    enum { N = 20000 };
    release_counter rc;
    table_ops ops;
    table *t = new_table(3, &rc, &ops);
    test_entry **e = malloc(N * sizeof *e);
    fold_state f = {.visits = calloc(N, sizeof(unsigned)), .n = N, .delete_even = 1};
    CU_ASSERT_FATAL(e != NULL && f.visits != NULL);
    fill(t, e, N);

    CU_ASSERT_EQUAL(fold_all(t, 1, fold_visit, &f), N);
    /* Deleting moves other entries back along their probe runs; each is still seen once. */
    int not_once = 0;
    for (size_t i = 0; i < N; i++)
        not_once += f.visits[i] != 1;
    CU_ASSERT_EQUAL(not_once, 0);
    CU_ASSERT_EQUAL(f.bad, 0);
    CU_ASSERT_EQUAL(table_count(t), N / 2);
    CU_ASSERT_EQUAL(atomic_load(&rc.releases), N / 2);
    int wrong = 0;
    for (size_t i = 0; i < N; i++) {
        int r;
        get_id(t, i, &r);
        wrong += (i % 2 == 0) ? r != SHOAL_ENOENT : r != 0;
        wrong += atomic_load(&e[i]->released) != (i % 2 == 0);
    }
    CU_ASSERT_EQUAL(wrong, 0);

    /* A second, read-only fold sees exactly the odd half once each. */
    memset(f.visits, 0, N * sizeof(unsigned));
    f.delete_even = 0;
    CU_ASSERT_EQUAL(fold_all(t, 0, fold_visit, &f), N / 2);
    not_once = 0;
    for (size_t i = 0; i < N; i++)
        not_once += f.visits[i] != (i % 2 == 1);
    CU_ASSERT_EQUAL(not_once, 0);

    table_free(t);
    CU_ASSERT_EQUAL(atomic_load(&rc.releases), N);
    for (size_t i = 0; i < N; i++) {
        CU_ASSERT_EQUAL(atomic_load(&e[i]->released), 1);
        free(e[i]);
    }
    free(e);
    free(f.visits);
}

/* ---- concurrency --------------------------------------------------------------------- */

enum { MT_THREADS = 4, MT_KEYS = 512, MT_OPS = 60000 };

typedef struct mt_shared {
    table *t;
    atomic_size_t taken;    /* entries the table took ownership of */
    atomic_size_t bad_gets; /* get returned an entry for another key, or a torn one */
} mt_shared;

typedef struct mt_thread {
    mt_shared *sh;
    uint64_t seed;
    test_entry **mine; /* every entry this thread allocated (freed at the end) */
    size_t n_mine;
    pthread_t tid;
} mt_thread;

typedef struct mt_get {
    uint64_t want;           /* the id looked up */
    const table_entry *seen; /* the entry found */
    int bad;                 /* it was not a live entry for that id */
} mt_get;

/* Runs under the segment's read lock: the entry is in the table, so it cannot have been
 * released yet (release comes after removal). */
static void mt_visit(void *ctx, const table_entry *te)
{
    mt_get *g = ctx;
    const test_entry *e = (const test_entry *)te;
    g->seen = te;
    if (e->id != g->want || e->check != check_of(e->id) || te->klen != 8 ||
        atomic_load(&e->released) != 0)
        g->bad = 1;
}

/* Replace when present, insert when absent; remember whether the table took it. */
typedef struct mt_put {
    table_entry *e;
    int taken;
} mt_put;

static table_action mt_put_fn(void *ctx, table_entry *cur, table_entry **replacement)
{
    mt_put *p = ctx;
    (void)cur;
    *replacement = p->e;
    p->taken = 1;
    return TABLE_PUT;
}

static table_action mt_delete_fn(void *ctx, table_entry *cur, table_entry **replacement)
{
    (void)ctx;
    (void)replacement;
    return cur ? TABLE_DELETE : TABLE_KEEP;
}

static void *mt_worker(void *arg)
{
    mt_thread *th = arg;
    mt_shared *sh = th->sh;
    uint64_t x = th->seed;
    test_entry *last_seen[MT_KEYS] = {0};

    for (int op = 0; op < MT_OPS; op++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        uint64_t id = x % MT_KEYS;
        unsigned char kb[8];
        make_key(kb, id);
        uint64_t h = keyhash_hash64(kb, 8);
        switch ((x >> 32) % 6) {
        case 0: { /* claim */
            test_entry *e = entry_new(id);
            th->mine[th->n_mine++] = e;
            if (table_insert_new(sh->t, &e->base) == 0) {
                atomic_fetch_add(&sh->taken, 1);
                last_seen[id] = e;
            }
            break;
        }
        case 1: { /* put */
            test_entry *e = entry_new(id);
            mt_put p = {&e->base, 0};
            th->mine[th->n_mine++] = e;
            if (table_update(sh->t, h, kb, 8, mt_put_fn, &p) == 0 && p.taken) {
                atomic_fetch_add(&sh->taken, 1);
                last_seen[id] = e;
            }
            break;
        }
        case 2: /* delete by key */
            table_update(sh->t, h, kb, 8, mt_delete_fn, NULL);
            break;
        case 3: /* remove a possibly stale entry: only succeeds if it is still current */
            if (last_seen[id]) table_remove_entry(sh->t, &last_seen[id]->base);
            break;
        default: { /* get */
            mt_get g = {id, NULL, 0};
            if (table_get(sh->t, h, kb, 8, mt_visit, &g) == 0) {
                if (g.bad || g.seen == NULL)
                    atomic_fetch_add(&sh->bad_gets, 1);
                else /* entries are freed only after the threads end */
                    last_seen[id] = (test_entry *)g.seen;
            }
            break;
        }
        }
    }
    return NULL;
}

static table_action count_visit(void *ctx, table_entry *te)
{
    fold_state *f = ctx;
    test_entry *e = (test_entry *)te;
    if (e->id >= f->n || atomic_load(&e->released) != 0)
        f->bad++;
    else
        f->visits[e->id]++;
    return TABLE_KEEP;
}


/* table_get_fast hands back the entry's `fast` word as it was when stored, from the slot
 * for keys of up to 15 bytes and through the entry for longer ones; a replacement brings
 * its own word, a delete makes the key absent. */
static table_action put_given(void *ctx, table_entry *cur, table_entry **repl)
{
    (void)cur;
    *repl = ctx;
    return TABLE_PUT;
}

struct fast_seen {
    uint64_t fast;
    unsigned kind;
};

static void fast_copy(void *ctx, uint64_t fast, unsigned kind)
{
    struct fast_seen *f = ctx;
    f->fast = fast;
    f->kind = kind;
}

static int get_fast(table *t, uint64_t hash, const void *key, size_t klen, uint64_t *fast)
{
    struct fast_seen f = {0, 99};
    int rc = table_get_fast(t, hash, key, klen, fast_copy, &f);
    *fast = f.fast;
    return rc;
}

static void test_get_fast(void)
{
    release_counter rc;
    table_ops ops;
    table *t = new_table(2, &rc, &ops);
    rc.free_on_release = 1; /* the table frees every entry it lets go of */
    enum { N = 2000 };
    static unsigned char longkeys[N][24]; /* the long entries' keys (entries are heap) */
    test_entry *shorts[N], *longs[N];
    for (int i = 0; i < N; i++) {
        shorts[i] = entry_new((uint64_t)i);
        shorts[i]->base.fast = 1000000 + (uint64_t)i;
        CU_ASSERT_EQUAL(table_insert_new(t, &shorts[i]->base), 0);
        memset(longkeys[i], 'k', sizeof longkeys[i]);
        memcpy(longkeys[i], &i, sizeof i);
        longs[i] = entry_new((uint64_t)(N + i));
        longs[i]->base.key = longkeys[i];
        longs[i]->base.klen = sizeof longkeys[i];
        longs[i]->base.hash = keyhash_hash64(longkeys[i], sizeof longkeys[i]);
        longs[i]->base.fast = 2000000 + (uint64_t)i;
        CU_ASSERT_EQUAL(table_insert_new(t, &longs[i]->base), 0);
    }
    int wrong = 0;
    for (int i = 0; i < N; i++) {
        uint64_t f = 0;
        wrong += get_fast(t, shorts[i]->base.hash, shorts[i]->keybuf, 8, &f) != 0 ||
                 f != 1000000 + (uint64_t)i;
        wrong += get_fast(t, longs[i]->base.hash, longkeys[i], 24, &f) != 0 ||
                 f != 2000000 + (uint64_t)i;
    }
    CU_ASSERT_EQUAL(wrong, 0);
    /* A replacement brings its own word. */
    test_entry *again = entry_new(7);
    again->base.fast = 77;
    CU_ASSERT_EQUAL(table_update(t, again->base.hash, again->keybuf, 8, put_given, again), 0);
    uint64_t f = 0;
    CU_ASSERT_EQUAL(get_fast(t, again->base.hash, again->keybuf, 8, &f), 0);
    CU_ASSERT_EQUAL(f, 77);
    /* Absent keys, deleted or never there. */
    uint64_t h7 = again->base.hash;
    unsigned char k7[8];
    memcpy(k7, again->keybuf, 8);
    CU_ASSERT_EQUAL(table_remove_entry(t, &again->base), 0); /* frees it */
    CU_ASSERT_EQUAL(get_fast(t, h7, k7, 8, &f), SHOAL_ENOENT);
    unsigned char other[24];
    memset(other, 'z', sizeof other);
    CU_ASSERT_EQUAL(get_fast(t, keyhash_hash64(other, 24), other, 24, &f), SHOAL_ENOENT);
    table_free(t);
}

/* An entry's kind travels into its slot with its fast word; REFRESH (from an update or a
 * writing fold) copies a word and kind changed in place, and nothing else does. */
static table_action change_in_place(void *ctx, table_entry *cur, table_entry **repl)
{
    (void)repl;
    uint64_t *v = ctx;
    cur->fast = v[0];
    cur->kind = (uint8_t)v[1];
    return v[2] ? TABLE_REFRESH : TABLE_KEEP;
}

static table_action bump_fold(void *ctx, table_entry *e)
{
    (void)ctx;
    e->fast += 1000;
    e->kind = 9;
    return TABLE_REFRESH;
}

static void test_kind_and_refresh(void)
{
    release_counter rc;
    table_ops ops;
    table *t = new_table(1, &rc, &ops);
    rc.free_on_release = 1;
    test_entry *e = entry_new(5);
    e->base.fast = 11;
    e->base.kind = 3;
    CU_ASSERT_EQUAL(table_insert_new(t, &e->base), 0);
    struct fast_seen f;
    CU_ASSERT_EQUAL(table_get_fast(t, e->base.hash, e->keybuf, 8, fast_copy, &f), 0);
    CU_ASSERT(f.fast == 11 && f.kind == 3);
    uint64_t keep[3] = {12, 4, 0}, refresh[3] = {13, 15, 1};
    CU_ASSERT_EQUAL(table_update(t, e->base.hash, e->keybuf, 8, change_in_place, keep), 0);
    CU_ASSERT_EQUAL(table_get_fast(t, e->base.hash, e->keybuf, 8, fast_copy, &f), 0);
    CU_ASSERT(f.fast == 11 && f.kind == 3); /* changed in the entry, not in the slot */
    CU_ASSERT_EQUAL(table_update(t, e->base.hash, e->keybuf, 8, change_in_place, refresh), 0);
    CU_ASSERT_EQUAL(table_get_fast(t, e->base.hash, e->keybuf, 8, fast_copy, &f), 0);
    CU_ASSERT(f.fast == 13 && f.kind == 15);
    CU_ASSERT_EQUAL(fold_all(t, 1, bump_fold, NULL), 1);
    CU_ASSERT_EQUAL(table_get_fast(t, e->base.hash, e->keybuf, 8, fast_copy, &f), 0);
    CU_ASSERT(f.fast == 1013 && f.kind == 9);
    /* A read-only fold's answers are ignored. */
    CU_ASSERT_EQUAL(fold_all(t, 0, bump_fold, NULL), 1);
    CU_ASSERT_EQUAL(table_get_fast(t, e->base.hash, e->keybuf, 8, fast_copy, &f), 0);
    CU_ASSERT(f.fast == 1013);
    table_free(t);
}

/* The anti-entropy walk's promise: while other threads insert and delete keys (growing,
 * shrinking and shifting the segments), a walk segment by segment sees every entry that
 * is present for the whole walk exactly once. */
enum { CH_STABLE = 20000, CH_CHURN = 20000, CH_ROUNDS = 30 };

typedef struct churn_shared {
    table *t;
    atomic_int stop;
    atomic_int seed;
} churn_shared;

static void *churn_worker(void *arg)
{
    churn_shared *sh = arg;
    uint64_t x = 0x9E3779B97F4A7C15ULL ^ (uint64_t)atomic_fetch_add(&sh->seed, 1) * 7919;
    while (!atomic_load(&sh->stop)) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        uint64_t id = CH_STABLE + x % CH_CHURN;
        test_entry *e = entry_new(id);
        if (table_insert_new(sh->t, &e->base) != 0) {
            free(e);
            unsigned char kb[8];
            make_key(kb, id);
            (void)table_update(sh->t, keyhash_hash64(kb, 8), kb, 8, mt_delete_fn, NULL);
        }
    }
    return NULL;
}

static table_action stable_visit(void *ctx, table_entry *te)
{
    fold_state *f = ctx;
    test_entry *e = (test_entry *)te;
    if (e->check != check_of(e->id)) f->bad++;
    if (e->id < CH_STABLE) f->visits[e->id]++;
    return TABLE_KEEP;
}

static void test_walk_under_churn_sees_stable_entries_once(void)
{
    release_counter rc;
    table_ops ops;
    churn_shared sh;
    sh.t = new_table(2, &rc, &ops);
    rc.free_on_release = 1;
    atomic_init(&sh.stop, 0);
    atomic_init(&sh.seed, 1);
    test_entry **e = malloc(CH_STABLE * sizeof *e);
    CU_ASSERT_FATAL(e != NULL);
    fill(sh.t, e, CH_STABLE);
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        CU_ASSERT_EQUAL_FATAL(pthread_create(&th[i], NULL, churn_worker, &sh), 0);
    fold_state f = {.visits = calloc(CH_STABLE, sizeof(unsigned)), .n = CH_STABLE};
    CU_ASSERT_FATAL(f.visits != NULL);
    int wrong = 0;
    for (int round = 0; round < CH_ROUNDS; round++) {
        memset(f.visits, 0, CH_STABLE * sizeof(unsigned));
        (void)fold_all(sh.t, round % 2, stable_visit, &f);
        for (size_t i = 0; i < CH_STABLE; i++)
            wrong += f.visits[i] != 1;
    }
    atomic_store(&sh.stop, 1);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    CHECKF(wrong == 0, "%d stable entries not seen exactly once over %d walks", wrong,
           CH_ROUNDS);
    CU_ASSERT_EQUAL(f.bad, 0);
    table_free(sh.t);
    free(e);
    free(f.visits);
}

static void test_concurrent_mixed_operations(void)
{
    release_counter rc;
    table_ops ops;
    mt_shared sh;
    mt_thread th[MT_THREADS];
    sh.t = new_table(2, &rc, &ops); /* few segments: threads collide on locks and keys */
    atomic_init(&sh.taken, 0);
    atomic_init(&sh.bad_gets, 0);

    for (int i = 0; i < MT_THREADS; i++) {
        th[i].sh = &sh;
        th[i].seed = 0x1234567ULL * (uint64_t)(i + 1) + 99;
        th[i].mine = malloc(MT_OPS * sizeof *th[i].mine);
        th[i].n_mine = 0;
        CU_ASSERT_FATAL(th[i].mine != NULL);
        CU_ASSERT_EQUAL_FATAL(pthread_create(&th[i].tid, NULL, mt_worker, &th[i]), 0);
    }
    for (int i = 0; i < MT_THREADS; i++)
        pthread_join(th[i].tid, NULL);

    CU_ASSERT_EQUAL(atomic_load(&sh.bad_gets), 0);
    /* Whatever the interleaving: entries held = entries taken - entries released, each key
     * at most once, and every held entry is found by get and is not released. */
    size_t held = table_count(sh.t);
    size_t taken = atomic_load(&sh.taken), released = atomic_load(&rc.releases);
    CHECKF(held == taken - released, "count %zu, taken %zu, released %zu", held, taken, released);
    CU_ASSERT(held <= MT_KEYS);
    fold_state f = {.visits = calloc(MT_KEYS, sizeof(unsigned)), .n = MT_KEYS};
    CU_ASSERT_FATAL(f.visits != NULL);
    (void)fold_all(sh.t, 0, count_visit, &f);
    size_t visited = 0;
    int dup = 0, lost = 0;
    for (uint64_t id = 0; id < MT_KEYS; id++) {
        int r;
        visited += f.visits[id];
        dup += f.visits[id] > 1;
        get_id(sh.t, id, &r);
        lost += (r == 0) != (f.visits[id] == 1);
    }
    CU_ASSERT_EQUAL(f.bad, 0);
    CU_ASSERT_EQUAL(dup, 0);
    CU_ASSERT_EQUAL(lost, 0);
    CU_ASSERT_EQUAL(visited, held);

    table_free(sh.t);
    CU_ASSERT_EQUAL(atomic_load(&rc.releases), taken);
    /* Each entry the table took was released exactly once; the others never. */
    size_t twice = 0, total_released = 0;
    for (int i = 0; i < MT_THREADS; i++) {
        for (size_t j = 0; j < th[i].n_mine; j++) {
            int n = atomic_load(&th[i].mine[j]->released);
            twice += n > 1;
            total_released += (size_t)n;
            free(th[i].mine[j]);
        }
        free(th[i].mine);
    }
    CU_ASSERT_EQUAL(twice, 0);
    CU_ASSERT_EQUAL(total_released, taken);
    free(f.visits);
}

CU_ErrorCode test_core_register_table(void)
{
    CU_pSuite s = CU_add_suite("table", NULL, NULL);
    if (s == NULL) return CU_get_error();
    static const struct {
        const char *name;
        CU_TestFunc fn;
    } tests[] = {
        {"table_new rejects bad arguments", test_new_rejects_bad_arguments},
        {"alloc/free hooks hold all the table's memory", test_alloc_hooks_hold_all_table_memory},
        {"insert_new claims a key once (EEXIST keeps the entry with the caller)",
         test_insert_new_claims_a_key_once},
        {"get finds only present keys, comparing key bytes", test_get_finds_only_present_keys},
        {"update: PUT inserts/replaces, DELETE removes, KEEP keeps", test_update_put_delete_keep},
        {"remove_entry removes only that exact entry", test_remove_entry_removes_only_that_entry},
        {"table_free releases every entry once", test_free_releases_every_entry_once},
        {"growth to 1,000,000 entries, all found, then all deleted",
         test_growth_to_a_million_entries},
        {"growth of a single segment to 1,000,000 entries", test_growth_of_a_single_segment},
        {"fold visits every entry once, at any segment count", test_fold_visits_every_entry_once},
        {"fold deleting half by predicate", test_fold_deleting_half_by_predicate},
        {"4 threads of mixed insert/get/delete stay consistent", test_concurrent_mixed_operations},
        {"get_fast answers the stored fast word, short keys and long", test_get_fast},
        {"kind travels with fast; REFRESH copies in-place changes", test_kind_and_refresh},
        {"a walk under concurrent churn sees every stable entry once",
         test_walk_under_churn_sees_stable_entries_once},
    };
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++)
        if (CU_add_test(s, tests[i].name, tests[i].fn) == NULL) return CU_get_error();
    return CUE_SUCCESS;
}
