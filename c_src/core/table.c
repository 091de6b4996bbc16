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

/* A slot: the entry pointer (tagged, see slot_make), the entry's `fast` word, and keys of
 * up to SLOT_KEY bytes inline, so a lookup of a short key is answered from the slot array
 * alone (one cache miss instead of two) by table_get_fast. 32 bytes, two per cache line. */
#define SLOT_KEY 15
typedef struct slot {
    uint64_t ptr;                /* 0 = empty */
    uint64_t fast;               /* copy of entry->fast */
    uint8_t klen;                /* key length if inline (1..SLOT_KEY), else 0 */
    unsigned char key[SLOT_KEY]; /* the key bytes, if inline */
} slot;

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
};

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

static inline void slot_fill(slot *sl, table_entry *e)
{
    sl->ptr = slot_make(e);
    sl->fast = e->fast;
    if (e->klen <= SLOT_KEY) {
        sl->klen = (uint8_t)e->klen;
        memcpy(sl->key, e->key, e->klen);
    } else {
        sl->klen = 0;
    }
}

/* Does the slot hold this key? A tagged slot whose tag differs cannot; an inline key is
 * compared in the slot; only a long key (or an untagged pointer) needs its entry. */
static inline int slot_matches(const slot *sl, uint64_t hash, const void *key, size_t klen)
{
    uint64_t v = sl->ptr;
    if ((v & SLOT_TAGGED) && ((v >> 48) & 0x7FFF) != tag_of(hash)) return 0;
    if (klen <= SLOT_KEY && (v & SLOT_TAGGED))
        return sl->klen == klen && memcmp(sl->key, key, klen) == 0;
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

static int resize(segment *s, uint32_t nslots)
{
    slot *slots = calloc(nslots, sizeof *slots);
    if (slots == NULL) return SHOAL_ENOMEM;
    uint32_t mask = nslots - 1;
    for (uint32_t i = 0; i <= s->mask; i++) {
        uint64_t v = s->slots[i].ptr;
        if (v == 0) continue;
        uint32_t j = (uint32_t)slot_entry(v)->hash & mask;
        while (slots[j].ptr != 0) j = (j + 1) & mask;
        slots[j] = s->slots[i];
    }
    free(s->slots);
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

static void maybe_shrink(segment *s)
{
    uint32_t n = s->mask + 1;
    uint32_t c = atomic_load_explicit(&s->count, memory_order_relaxed);
    if (n > SEG_MIN_SLOTS && c < n / 8) (void)resize(s, n / 2); /* failure just keeps it big */
}

int table_new(table **out, unsigned segments_log2, const table_ops *ops)
{
    if (out == NULL || ops == NULL || ops->release == NULL || segments_log2 > 16)
        return SHOAL_EINVAL;
    table *t = calloc(1, sizeof *t);
    if (t == NULL) return SHOAL_ENOMEM;
    size_t nseg = (size_t)1 << segments_log2;
    t->ops = *ops;
    t->seg_bits = segments_log2;
    t->segs = aligned_alloc(CACHE_LINE, nseg * sizeof(segment));
    if (t->segs == NULL) {
        free(t);
        return SHOAL_ENOMEM;
    }
    memset(t->segs, 0, nseg * sizeof(segment));
    for (size_t i = 0; i < nseg; i++) {
        segment *s = &t->segs[i];
        s->slots = calloc(SEG_MIN_SLOTS, sizeof *s->slots);
        if (s->slots == NULL || pthread_rwlock_init(&s->lock, NULL) != 0) {
            free(s->slots);
            for (size_t k = 0; k < i; k++) {
                pthread_rwlock_destroy(&t->segs[k].lock);
                free(t->segs[k].slots);
            }
            free(t->segs);
            free(t);
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
        free(s->slots);
        pthread_rwlock_destroy(&s->lock);
    }
    free(t->segs);
    free(t);
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

int table_get_fast(table *t, uint64_t hash, const void *key, size_t klen, uint64_t *fast)
{
    segment *s = seg_of(t, hash);
    pthread_rwlock_rdlock(&s->lock);
    const slot *sl = &s->slots[probe(s, hash, key, klen)];
    int found = sl->ptr != 0;
    if (found) *fast = sl->fast;
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
            if (resize(s, (s->mask + 1) * 2) != 0) {
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
            maybe_shrink(s);
        }
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

int table_fold(table *t, table_cursor *cur, size_t budget, int may_delete, table_fold_fn fn,
               void *ctx)
{
    size_t nseg = (size_t)1 << t->seg_bits;
    while (cur->segment < nseg && budget > 0) {
        segment *s = &t->segs[cur->segment];
        table_entry *dead[64];
        size_t ndead = 0;
        if (may_delete)
            pthread_rwlock_wrlock(&s->lock);
        else
            pthread_rwlock_rdlock(&s->lock);
        /* Released entries are collected and given back after the unlock; a full batch
         * of them ends this locked stretch early. */
        while (cur->slot <= s->mask && budget > 0 && ndead < 64) {
            table_entry *e = slot_entry(s->slots[cur->slot].ptr);
            budget--;
            if (e != NULL && fn(ctx, e) == TABLE_DELETE && may_delete) {
                delete_slot(s, cur->slot);
                dead[ndead++] = e;
                continue; /* a later entry may have shifted into this slot */
            }
            cur->slot++;
        }
        int seg_done = cur->slot > s->mask;
        if (seg_done && may_delete) maybe_shrink(s);
        pthread_rwlock_unlock(&s->lock);
        for (size_t k = 0; k < ndead; k++) t->ops.release(t->ops.ctx, dead[k]);
        if (seg_done) {
            cur->segment++;
            cur->slot = 0;
        }
    }
    return cur->segment < nseg;
}
