/* table.h - the segmented hash table that holds worker entries.
 *
 * The table maps canonical key bytes to caller-owned entries. It is split into 2^k segments,
 * each an open-addressing (linear probing, backward-shift delete) array of entry pointers
 * guarded by its own reader-writer lock, so readers on different schedulers rarely touch
 * the same lock and a growing segment stops only its own keys. The segment is chosen by the
 * top bits of the key hash, the slot by the low bits, so an entry never changes segment.
 *
 * Entries are allocated by the caller with a table_entry as their first member (the NIF
 * makes them resources or plain allocations, the C node and the tests malloc them). The
 * table holds one reference to each entry it stores and gives it back through ops->release
 * once the entry has left the table (called with no segment lock held, except by
 * table_fold_segment when memory is exhausted, see there).
 *
 * Slots are 32 bytes: the entry pointer with 15 bits of the key's hash in its spare bits,
 * the entry's `fast` word and `kind`, and keys of up to 15 bytes inline, so that a hit on a
 * short key is answered from the slot array alone (table_get_fast). Memory per entry held
 * by the table: one slot at a load factor between 3/8 and 3/4, i.e. 43 to 85 bytes, plus
 * the caller's entry (table_entry is 32 bytes). */
#ifndef SHOAL_TABLE_H
#define SHOAL_TABLE_H

#include <stddef.h>
#include <stdint.h>

typedef struct table_entry {
    uint64_t hash;            /* keyhash_hash64(key, klen) */
    const unsigned char *key; /* canonical key bytes, owned by the entry, immutable */
    uint32_t klen;            /* key length in bytes */
    uint8_t kind;             /* 0..15: copied into the slot with `fast` */
    uint8_t flags;            /* free for the owner (the table never reads it) */
    uint16_t user;            /* free for the owner (the table never reads it) */
    uint64_t fast;            /* copied into the slot when the entry is stored or
                                 refreshed: what table_get_fast answers without touching
                                 the entry */
} table_entry;

#define TABLE_KIND_MAX 15

typedef struct table_ops {
    /* The table no longer references `e`: free it or drop a reference. Required. */
    void (*release)(void *ctx, table_entry *e);
    void *ctx;
    /* The table's own memory (segments, slot arrays); both NULL for malloc/free. */
    void *(*alloc)(size_t size);
    void (*free)(void *p);
} table_ops;

typedef struct table table;

/* What a table_update_fn or table_fold_fn asks the table to do with the entry it saw. */
typedef enum table_action {
    TABLE_KEEP = 0, /* leave the slot as it is */
    TABLE_PUT,      /* store *replacement (insert when absent, replace when present) */
    TABLE_DELETE,   /* remove the current entry (no-op when absent) */
    TABLE_REFRESH   /* the current entry's `fast`/`kind` changed in place: copy them into
                       its slot again */
} table_action;

/* Called with the segment's read lock held; must not call back into the table. */
typedef void (*table_visit_fn)(void *ctx, const table_entry *e);
/* Called with the segment's read lock held, with the `fast` word and `kind` the entry had
 * when last stored or refreshed; must not call back into the table. */
typedef void (*table_fast_fn)(void *ctx, uint64_t fast, unsigned kind);
/* Called with the segment's write lock held; `cur` is NULL when the key is absent. To PUT,
 * set *replacement to a new entry with the same hash and key bytes. Must not call back into
 * the table, block, or allocate from the BEAM in a way that can wait on a lock. */
typedef table_action (*table_update_fn)(void *ctx, table_entry *cur, table_entry **replacement);
/* Called during table_fold_segment with the segment's lock held (the write lock when the
 * fold may change entries); may return TABLE_KEEP, TABLE_DELETE or TABLE_REFRESH. */
typedef table_action (*table_fold_fn)(void *ctx, table_entry *e);

/* table_new - create a table with 2^segments_log2 segments (0..16; 8 is a good default).
 * Returns 0 and sets *out, SHOAL_EINVAL for a bad segments_log2 or NULL ops/release (or
 * only one of alloc/free), or SHOAL_ENOMEM. The caller frees it with table_free. */
int table_new(table **out, unsigned segments_log2, const table_ops *ops);

/* table_free - release every entry (ops->release) and free the table. NULL is a no-op.
 * No other thread may use the table during or after the call. */
void table_free(table *t);

/* table_get - look the key up under the segment's read lock; when found, call
 * fn(ctx, entry) before unlocking (copy out what you need there). Returns 0 when found,
 * SHOAL_ENOENT otherwise. */
int table_get(table *t, uint64_t hash, const void *key, size_t klen, table_visit_fn fn,
              void *ctx);

/* table_get_fast - look the key up under the segment's read lock and, when found, call
 * fn(ctx, fast, kind) with the words its slot holds before unlocking, without reading the
 * entry itself for keys of up to 15 bytes. Returns 0 when found, SHOAL_ENOENT otherwise. */
int table_get_fast(table *t, uint64_t hash, const void *key, size_t klen, table_fast_fn fn,
                   void *ctx);

/* table_update - atomically read-modify-write one key under the segment's write lock: fn
 * sees the current entry (or NULL) and decides. Replaced or deleted entries are released
 * after the lock is dropped. Returns 0, or SHOAL_ENOMEM if a PUT needed the segment to grow
 * and that failed (then nothing changed and the replacement is NOT released: it is still
 * the caller's; fn has run, so whatever it changed in place stays changed). */
int table_update(table *t, uint64_t hash, const void *key, size_t klen, table_update_fn fn,
                 void *ctx);

/* table_insert_new - insert `e` if its key is absent. Returns 0 when inserted (the table
 * now owns e), SHOAL_EEXIST when the key is taken (e stays the caller's), or SHOAL_ENOMEM. */
int table_insert_new(table *t, table_entry *e);

/* table_remove_entry - remove `e` only if the slot for its key holds exactly `e` (so a stale
 * owner can never delete a successor). Returns 0 when removed (and released), SHOAL_ENOENT
 * otherwise. */
int table_remove_entry(table *t, table_entry *e);

/* table_count - entries in the table; a consistent snapshot per segment, summed. */
size_t table_count(const table *t);

/* table_memory - bytes the table itself uses (segments and slot arrays), entries excluded. */
size_t table_memory(const table *t);

/* table_segments - the number of segments (2^segments_log2). */
size_t table_segments(const table *t);

/* table_fold_segment - visit every entry of segment `seg` (0 <= seg < table_segments(t))
 * under ONE hold of its lock (the write lock when `write` is non-zero, else the read lock),
 * calling fn on each. Every entry present in the segment when the lock is taken is visited
 * exactly once, and no other (deleting entries during the walk moves others only within
 * their probe run, which the walk never crosses). Without `write`, fn's answers are
 * ignored. Deleted entries are released after the unlock; only if the list of them cannot
 * grow (out of memory) are the rest released while the lock is held. Returns the number of
 * entries visited, or 0 for a bad `seg`. A walk over all segments in turn therefore sees
 * each entry that is in the table for the whole walk exactly once. */
size_t table_fold_segment(table *t, size_t seg, int write, table_fold_fn fn, void *ctx);

#endif
