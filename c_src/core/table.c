/* table.c - segmented open-addressing hash table of worker entries (see table.h).
 *
 * Each segment is a power-of-two array of entry pointers with linear probing and
 * backward-shift deletion (no tombstones, so lookups stay short after churn). Readers take
 * the segment's read lock only; writers its write lock. A segment doubles when it passes
 * 3/4 load and halves below 1/8 (never under SEG_MIN_SLOTS), under its own write lock only.
 * Segments are cache-line aligned so two segments never share a line. */
#include "table.h"
#include "shoal_err.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define SEG_MIN_SLOTS 16u
#define CACHE_LINE 64

/* A slot: the entry pointer (tagged, see slot_make), the entry's `fast` word and `kind`,
 * and keys of up to SLOT_KEY bytes inline, so a lookup of a short key is answered from the
 * slot array alone (one cache miss instead of two) by table_get_fast. 32 bytes, two per
 * cache line. */
#define SLOT_KEY 15
typedef struct slot {
    uint64_t ptr;                /* 0 = empty */
    uint64_t fast;               /* copy of entry->fast */
    uint8_t meta;                /* low 4 bits: key length if inline (1..SLOT_KEY), else 0;
                                    high 4 bits: copy of entry->kind */
    unsigned char key[SLOT_KEY]; /* the key bytes, if inline */
} slot;

#define META_KLEN(m) ((unsigned)(m) & 0x0Fu)
#define META_KIND(m) ((unsigned)(m) >> 4)

typedef struct segment {
    pthread_rwlock_t lock;
    slot *slots;         /* 2^k slots */
    uint32_t mask;       /* slots - 1 */
    atomic_uint count;   /* entries; written under the write lock, read lock-free */
} __attribute__((aligned(CACHE_LINE))) segment;

struct table {
    table_ops ops;
    unsigned seg_bits; /* 2^seg_bits segments */
    segment *segs;     /* aligned array */
    void *segs_raw;    /* what was allocated for segs */
};

static void *tmalloc(const table *t, size_t n)
{
    return t->ops.alloc ? t->ops.alloc(n) : malloc(n);
}

static void *tcalloc(const table *t, size_t n)
{
    void *p = tmalloc(t, n);
    if (p != NULL) memset(p, 0, n);
    return p;
}

static void tfree(const table *t, void *p)
{
    if (p == NULL) return;
    if (t->ops.free)
        t->ops.free(p);
    else
        free(p);
}

static inline segment *seg_of(const table *t, uint64_t hash)
{
    /* Top bits pick the segment, low bits the slot: the two never correlate. */
    size_t i = t->seg_bits ? (size_t)(hash >> (64 - t->seg_bits)) : 0;
    return &t->segs[i];
}

static inline int same_key(const table_entry *e, uint64_t hash, const void *key, size_t klen)
{
    return e->hash == hash && e->klen == klen && memcmp(e->key, key, klen) == 0;
}

/* A slot holds an entry pointer with 15 bits of its hash in the pointer's unused top bits,
 * so a probe passes over other keys' slots without touching their entries (a cache miss
 * each). Tagged slots have bit 63 set and the pointer in the low 48 bits; a pointer that
 * does not fit in 48 bits is stored as it is (bit 63 clear: user-space pointers never have
 * it) and is always compared in full. The tag bits are neither the segment (top) bits nor
 * the slot (low) bits of the hash. */
#define SLOT_TAGGED (1ull << 63)
#define SLOT_PTR ((1ull << 48) - 1)

static inline uint64_t tag_of(uint64_t hash)
{
    return (hash >> 20) & 0x7FFF;
}

static inline uint64_t slot_make(table_entry *e)
{
    uint64_t p = (uint64_t)(uintptr_t)e;
    return (p >> 48) ? p : SLOT_TAGGED | (tag_of(e->hash) << 48) | p;
}

static inline table_entry *slot_entry(uint64_t v)
{
    return (table_entry *)(uintptr_t)((v & SLOT_TAGGED) ? (v & SLOT_PTR) : v);
}

static inline uint8_t meta_of(const table_entry *e)
{
    unsigned klen = e->klen <= SLOT_KEY ? e->klen : 0;
    return (uint8_t)(((unsigned)(e->kind & TABLE_KIND_MAX) << 4) | klen);
}

static inline void slot_fill(slot *sl, table_entry *e)
{
    sl->ptr = slot_make(e);
    sl->fast = e->fast;
    sl->meta = meta_of(e);
    if (e->klen <= SLOT_KEY) memcpy(sl->key, e->key, e->klen);
}

/* The entry changed its fast word or kind in place. */
static inline void slot_refresh(slot *sl, const table_entry *e)
{
    sl->fast = e->fast;
    sl->meta = meta_of(e);
}

/* Does the slot hold this key? A tagged slot whose tag differs cannot; an inline key is
 * compared in the slot; only a long key (or an untagged pointer) needs its entry. */
static inline int slot_matches(const slot *sl, uint64_t hash, const void *key, size_t klen)
{
    uint64_t v = sl->ptr;
    if ((v & SLOT_TAGGED) && ((v >> 48) & 0x7FFF) != tag_of(hash)) return 0;
    if (klen <= SLOT_KEY && (v & SLOT_TAGGED))
        return META_KLEN(sl->meta) == klen && memcmp(sl->key, key, klen) == 0;
    return same_key(slot_entry(v), hash, key, klen);
}

/* Slot of the key, or of the empty slot where it would go. Caller holds a lock. */
static uint32_t probe(const segment *s, uint64_t hash, const void *key, size_t klen)
{
    uint32_t i = (uint32_t)hash & s->mask;
    for (;;) {
        const slot *sl = &s->slots[i];
        if (sl->ptr == 0 || slot_matches(sl, hash, key, klen)) return i;
        i = (i + 1) & s->mask;
    }
}

static int resize(const table *t, segment *s, uint32_t nslots)
{
    slot *slots = tcalloc(t, (size_t)nslots * sizeof *slots);
    if (slots == NULL) return SHOAL_ENOMEM;
    uint32_t mask = nslots - 1;
    for (uint32_t i = 0; i <= s->mask; i++) {
        uint64_t v = s->slots[i].ptr;
        if (v == 0) continue;
        uint32_t j = (uint32_t)slot_entry(v)->hash & mask;
        while (slots[j].ptr != 0) j = (j + 1) & mask;
        slots[j] = s->slots[i];
    }
    tfree(t, s->slots);
    s->slots = slots;
    s->mask = mask;
    return 0;
}

/* Remove slot i and shift the rest of its probe run back (Knuth's algorithm R). */
static void delete_slot(segment *s, uint32_t i)
{
    uint32_t j = i;
    for (;;) {
        s->slots[i].ptr = 0;
        for (;;) {
            j = (j + 1) & s->mask;
            uint64_t v = s->slots[j].ptr;
            if (v == 0) goto done;
            uint32_t home = (uint32_t)slot_entry(v)->hash & s->mask;
            /* Move e back into the hole at i unless its home lies cyclically in (i, j]. */
            int stays = (i <= j) ? (i < home && home <= j) : (i < home || home <= j);
            if (!stays) {
                s->slots[i] = s->slots[j];
                i = j;
                break;
            }
        }
    }
done:
    atomic_fetch_sub_explicit(&s->count, 1, memory_order_relaxed);
}

static void maybe_shrink(const table *t, segment *s)
{
    uint32_t n = s->mask + 1;
    uint32_t c = atomic_load_explicit(&s->count, memory_order_relaxed);
    if (n > SEG_MIN_SLOTS && c < n / 8) (void)resize(t, s, n / 2); /* failure keeps it big */
}

int table_new(table **out, unsigned segments_log2, const table_ops *ops)
{
    if (out == NULL || ops == NULL || ops->release == NULL || segments_log2 > 16 ||
        (ops->alloc == NULL) != (ops->free == NULL))
        return SHOAL_EINVAL;
    table tmp = {.ops = *ops};
    table *t = tcalloc(&tmp, sizeof *t);
    if (t == NULL) return SHOAL_ENOMEM;
    size_t nseg = (size_t)1 << segments_log2;
    t->ops = *ops;
    t->seg_bits = segments_log2;
    t->segs_raw = tcalloc(t, nseg * sizeof(segment) + CACHE_LINE);
    if (t->segs_raw == NULL) {
        tfree(&tmp, t);
        return SHOAL_ENOMEM;
    }
    uintptr_t at = ((uintptr_t)t->segs_raw + CACHE_LINE - 1) & ~(uintptr_t)(CACHE_LINE - 1);
    t->segs = (segment *)at;
    for (size_t i = 0; i < nseg; i++) {
        segment *s = &t->segs[i];
        s->slots = tcalloc(t, SEG_MIN_SLOTS * sizeof *s->slots);
        if (s->slots == NULL || pthread_rwlock_init(&s->lock, NULL) != 0) {
            tfree(t, s->slots);
            for (size_t k = 0; k < i; k++) {
                pthread_rwlock_destroy(&t->segs[k].lock);
                tfree(t, t->segs[k].slots);
            }
            tfree(t, t->segs_raw);
            tfree(&tmp, t);
            return SHOAL_ENOMEM;
        }
        s->mask = SEG_MIN_SLOTS - 1;
        atomic_init(&s->count, 0);
    }
    *out = t;
    return 0;
}

void table_free(table *t)
{
    if (t == NULL) return;
    size_t nseg = (size_t)1 << t->seg_bits;
    for (size_t i = 0; i < nseg; i++) {
        segment *s = &t->segs[i];
        for (uint32_t j = 0; j <= s->mask; j++)
            if (s->slots[j].ptr != 0) t->ops.release(t->ops.ctx, slot_entry(s->slots[j].ptr));
        tfree(t, s->slots);
        pthread_rwlock_destroy(&s->lock);
    }
    table tmp = {.ops = t->ops};
    tfree(t, t->segs_raw);
    tfree(&tmp, t);
}

int table_get(table *t, uint64_t hash, const void *key, size_t klen, table_visit_fn fn,
              void *ctx)
{
    segment *s = seg_of(t, hash);
    pthread_rwlock_rdlock(&s->lock);
    table_entry *e = slot_entry(s->slots[probe(s, hash, key, klen)].ptr);
    if (e != NULL && fn != NULL) fn(ctx, e);
    pthread_rwlock_unlock(&s->lock);
    return e != NULL ? 0 : SHOAL_ENOENT;
}

int table_get_fast(table *t, uint64_t hash, const void *key, size_t klen, table_fast_fn fn,
                   void *ctx)
{
    segment *s = seg_of(t, hash);
    pthread_rwlock_rdlock(&s->lock);
    const slot *sl = &s->slots[probe(s, hash, key, klen)];
    int found = sl->ptr != 0;
    if (found) fn(ctx, sl->fast, META_KIND(sl->meta));
    pthread_rwlock_unlock(&s->lock);
    return found ? 0 : SHOAL_ENOENT;
}

int table_update(table *t, uint64_t hash, const void *key, size_t klen, table_update_fn fn,
                 void *ctx)
{
    segment *s = seg_of(t, hash);
    table_entry *released = NULL;
    int rc = 0;
    pthread_rwlock_wrlock(&s->lock);
    uint32_t i = probe(s, hash, key, klen);
    table_entry *cur = slot_entry(s->slots[i].ptr);
    table_entry *repl = NULL;
    switch (fn(ctx, cur, &repl)) {
    case TABLE_KEEP:
        break;
    case TABLE_PUT:
        if (cur != NULL) {
            slot_fill(&s->slots[i], repl);
            released = cur;
            break;
        }
        if ((uint64_t)(atomic_load_explicit(&s->count, memory_order_relaxed) + 1) * 4 >
            (uint64_t)(s->mask + 1) * 3) {
            if (resize(t, s, (s->mask + 1) * 2) != 0) {
                rc = SHOAL_ENOMEM;
                break;
            }
            i = probe(s, hash, key, klen);
        }
        slot_fill(&s->slots[i], repl);
        atomic_fetch_add_explicit(&s->count, 1, memory_order_relaxed);
        break;
    case TABLE_DELETE:
        if (cur != NULL) {
            delete_slot(s, i);
            released = cur;
            maybe_shrink(t, s);
        }
        break;
    case TABLE_REFRESH:
        if (cur != NULL) slot_refresh(&s->slots[i], cur);
        break;
    }
    pthread_rwlock_unlock(&s->lock);
    if (released != NULL) t->ops.release(t->ops.ctx, released);
    return rc;
}

struct insert_ctx {
    table_entry *e;
    int taken;
};

static table_action put_if_absent(void *ctx, table_entry *cur, table_entry **repl)
{
    struct insert_ctx *c = ctx;
    if (cur != NULL) {
        c->taken = 1;
        return TABLE_KEEP;
    }
    *repl = c->e;
    return TABLE_PUT;
}

int table_insert_new(table *t, table_entry *e)
{
    struct insert_ctx c = {e, 0};
    int rc = table_update(t, e->hash, e->key, e->klen, put_if_absent, &c);
    if (rc != 0) return rc;
    return c.taken ? SHOAL_EEXIST : 0;
}

struct remove_ctx {
    table_entry *e;
    int removed;
};

static table_action delete_if_same(void *ctx, table_entry *cur, table_entry **repl)
{
    struct remove_ctx *c = ctx;
    (void)repl;
    if (cur != c->e) return TABLE_KEEP;
    c->removed = 1;
    return TABLE_DELETE;
}

int table_remove_entry(table *t, table_entry *e)
{
    struct remove_ctx c = {e, 0};
    (void)table_update(t, e->hash, e->key, e->klen, delete_if_same, &c);
    return c.removed ? 0 : SHOAL_ENOENT;
}

size_t table_count(const table *t)
{
    size_t n = 0, nseg = (size_t)1 << t->seg_bits;
    for (size_t i = 0; i < nseg; i++)
        n += atomic_load_explicit(&t->segs[i].count, memory_order_relaxed);
    return n;
}

size_t table_memory(const table *t)
{
    size_t n = sizeof *t, nseg = (size_t)1 << t->seg_bits;
    for (size_t i = 0; i < nseg; i++)
        n += sizeof(segment) + ((size_t)t->segs[i].mask + 1) * sizeof(slot);
    return n;
}

size_t table_segments(const table *t)
{
    return (size_t)1 << t->seg_bits;
}

#define FOLD_STACK 256
#define FOLD_AHEAD 8
#if defined(__GNUC__)
#define PREFETCH(p) __builtin_prefetch(p)
#else
#define PREFETCH(p) ((void)(p))
#endif

size_t table_fold_segment(table *t, size_t seg, int write, table_fold_fn fn, void *ctx)
{
    if (seg >= table_segments(t)) return 0;
    segment *s = &t->segs[seg];
    table_entry *stack[FOLD_STACK], **dead = stack;
    size_t ndead = 0, cap = FOLD_STACK, visited = 0;
    if (write)
        pthread_rwlock_wrlock(&s->lock);
    else
        pthread_rwlock_rdlock(&s->lock);
    /* Start just after an empty slot (there is one: the load stays under 3/4) and go once
     * around: no probe run crosses the start, so a backward shift never carries an entry
     * from the visited part to the unvisited part or back. */
    uint32_t n = s->mask + 1, start = 0;
    while (s->slots[start].ptr != 0) start++;
    uint32_t i = (start + 1) & s->mask, left = n - 1;
    while (left > 0) {
        /* Entries are scattered allocations: ask for the one a few slots ahead while this
         * one is handled, so their cache misses overlap instead of adding up. */
        PREFETCH(slot_entry(s->slots[(i + FOLD_AHEAD) & s->mask].ptr));
        table_entry *e = slot_entry(s->slots[i].ptr);
        if (e == NULL) {
            i = (i + 1) & s->mask;
            left--;
            continue;
        }
        visited++;
        table_action a = fn(ctx, e);
        if (write && a == TABLE_DELETE) {
            delete_slot(s, i);
            if (ndead == cap) {
                table_entry **more = tmalloc(t, 2 * cap * sizeof *more);
                if (more != NULL) {
                    memcpy(more, dead, ndead * sizeof *more);
                    if (dead != stack) tfree(t, dead);
                    dead = more;
                    cap *= 2;
                }
            }
            if (ndead < cap)
                dead[ndead++] = e;
            else
                t->ops.release(t->ops.ctx, e); /* out of memory: release under the lock */
            /* The rest of the run shifted back: slot i holds the next entry (or nothing),
             * and the run is one slot shorter. */
            if (s->slots[i].ptr == 0) {
                i = (i + 1) & s->mask;
                left--;
            }
            continue;
        }
        if (write && a == TABLE_REFRESH) slot_refresh(&s->slots[i], e);
        i = (i + 1) & s->mask;
        left--;
    }
    if (write) maybe_shrink(t, s);
    pthread_rwlock_unlock(&s->lock);
    for (size_t k = 0; k < ndead; k++) t->ops.release(t->ops.ctx, dead[k]);
    if (dead != stack) tfree(t, dead);
    return visited;
}
