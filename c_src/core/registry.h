/* registry.h - the worker registry of one pool on one node: entries, versions, the clock.
 *
 * A registry maps canonical key bytes (keyhash.h) to at most one entry per key, in one of
 * the states of docs/protocol.md:
 *
 *   CLAIMED  a local process (the claimer) is arbitrating a spawn of the key
 *   LOCAL    a worker of this node, with its version and a MOVING flag
 *   REMOTE   the replica of another node's worker: owner node, version, sync mark
 *   TOMB     the key's last known incarnation died: version and node; blocks replicas that
 *            are not newer; read as absent and counted apart from workers
 *
 * and implements the transitions as single atomic operations (one segment write lock
 * each, see table.h). It is portable C with no BEAM headers: the NIF (c_src/nif/) and the C
 * node both use it. What identifies a process differs on each side, so the registry treats
 * it as an opaque 64-bit *payload word* per entry (`te.fast`, also copied into the entry's
 * table slot so the hot lookups read only the slot):
 *
 *   CLAIMED  the claimer's identity word (compared with ==)
 *   LOCAL    the worker's identity word (compared with ==)
 *   REMOTE   whatever the owner of the registry keeps for a remote process (never read)
 *   TOMB     the tomb's creation time, milliseconds of the caller's monotonic clock
 *
 * Entries are allocated by the caller (a registry_entry first, anything of its own after)
 * and handed to an operation, which either stores them (the registry then owns them until
 * hooks->release) or leaves them to the caller. Per-operation hooks (registry_op) run under
 * the segment's lock to copy out or fill in what only the caller understands.
 *
 * Versions are 64-bit hybrid-logical-clock values; `newer` compares {Vsn, NodeName} pairs,
 * Vsn first, then the node names' bytes (memcmp, then the shorter first: Erlang's atom
 * order). Node names are interned per registry (registry_node), reference-counted by the
 * entries that name them and freed with the last one, with a replica count each.
 *
 * Lock order: segment lock, then the node map's mutex; hooks run under a segment lock and
 * must not call back into the registry except where stated. */
#ifndef SHOAL_REGISTRY_H
#define SHOAL_REGISTRY_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "table.h"

typedef enum registry_state {
    REGISTRY_ABSENT = 0,
    REGISTRY_CLAIMED = 1,
    REGISTRY_LOCAL = 2,
    REGISTRY_REMOTE = 3,
    REGISTRY_TOMB = 4
} registry_state;

/* te.flags bits of a LOCAL entry. */
#define REGISTRY_MOVING 0x01 /* being migrated: a newer replica may replace it */
#define REGISTRY_DEAD 0x02   /* its worker died (registry_drop ran): never stored again */

/* Longest node name accepted, in bytes (an atom of 255 characters in UTF-8). */
#define REGISTRY_MAX_NAME 1024

/* ---- The clock ------------------------------------------------------------------------ */

/* A hybrid logical clock: strictly increasing values of at least the wall time in
 * microseconds, raised past every version observed. Share one per process (the NIF keeps
 * one per VM). Lock-free. */
typedef struct registry_clock {
    _Atomic uint64_t last; /* the highest value handed out or observed */
} registry_clock;

/* registry_clock_init - a clock that has seen nothing. */
void registry_clock_init(registry_clock *c);

/* registry_clock_next - the next version: max(now_us, last + 1), recorded as last.
 * Strictly greater than every value returned before or observed, except that it saturates
 * at UINT64_MAX (reached only by observing an absurd version: wall time in microseconds
 * gets there in the year 586,000) instead of wrapping to 0. Thread-safe. */
uint64_t registry_clock_next(registry_clock *c, uint64_t now_us);

/* registry_clock_observe - raise last to v if it is below (so later versions exceed v). */
void registry_clock_observe(registry_clock *c, uint64_t v);

/* registry_clock_last - the highest value handed out or observed so far. */
uint64_t registry_clock_last(registry_clock *c);

/* ---- Nodes ------------------------------------------------------------------------------ */

/* An interned node name. Fields other than `payload` are the registry's; read them
 * through the accessors. `payload` belongs to the registry's owner (hooks->node_init sets
 * it, hooks->node_fini frees it). */
typedef struct registry_node {
    struct registry_node *next;   /* hash chain */
    uint64_t hash;                /* of the name */
    _Atomic size_t refs;          /* entries naming the node + callers' holds */
    _Atomic size_t replicas;      /* REMOTE entries owned by the node */
    void *payload;                /* the owner's */
    size_t len;                   /* name length */
    unsigned char name[];         /* name bytes (not NUL-terminated) */
} registry_node;

typedef struct registry registry;

/* registry_node_get - the node named by `len` bytes at `name`, interned if new (then
 * hooks->node_init(ctx, node, arg) runs first, under the node map's mutex), with one
 * reference for the caller. NULL if len is 0 or over REGISTRY_MAX_NAME, on allocation
 * failure, or if node_init refused. */
registry_node *registry_node_get(registry *r, const void *name, size_t len, void *arg);

/* registry_node_find - the node named so, with one reference for the caller, or NULL if no
 * entry names it (nothing is interned). */
registry_node *registry_node_find(registry *r, const void *name, size_t len);

/* registry_node_hold - one more reference on a node the caller already holds. */
void registry_node_hold(registry_node *n);

/* registry_node_put - drop one reference; the last one unlinks the node, runs
 * hooks->node_fini and frees it. NULL is a no-op. May be called under a segment lock. */
void registry_node_put(registry *r, registry_node *n);

/* registry_node_replicas - REMOTE entries owned by n (a snapshot). */
size_t registry_node_replicas(const registry_node *n);

/* registry_nodes - node names currently interned (named by an entry or held). */
size_t registry_nodes(registry *r);

/* registry_node_each - call fn(ctx, n) for every interned node, under the node map's
 * mutex: fn must be quick and must not call into the registry. */
void registry_node_each(registry *r, void (*fn)(void *ctx, registry_node *n), void *ctx);

/* ---- Entries ---------------------------------------------------------------------------- */

typedef struct registry_entry {
    table_entry te;         /* key, hash; kind = state; fast = payload word (see above);
                               flags = REGISTRY_MOVING/DEAD; user = free for the owner */
    registry_node *node;    /* REMOTE: owner; TOMB: the version's node; CLAIMED: node of
                               the tomb the claim replaced (NULL: none); LOCAL: NULL */
    uint64_t vsn;           /* LOCAL/REMOTE/TOMB: version; CLAIMED: that tomb's version */
    uint32_t mark;          /* REMOTE: the sync mark it was last stored or confirmed with */
    uint32_t spare;         /* free for the owner */
} registry_entry;

/* registry_entry_init - prepare a caller-allocated entry for key (hash, bytes, len) whose
 * bytes the entry owns and keeps unchanged: every other field zero, state ABSENT. */
void registry_entry_init(registry_entry *e, uint64_t hash, const unsigned char *key,
                         uint32_t len);

/* registry_state_of - the state of entry e (te.kind). */
static inline registry_state registry_state_of(const registry_entry *e)
{
    return (registry_state)e->te.kind;
}

/* ---- The registry ----------------------------------------------------------------------- */

typedef struct registry_hooks {
    /* An entry left the registry (no lock held, counts already updated, e->node still
     * valid): free it. Required. */
    void (*release)(void *ctx, registry_entry *e);
    /* A node name is interned: set n->payload from `arg`. Return 0, or non-zero to refuse
     * (registry_node_get then returns NULL). Optional. Runs under the node map's mutex. */
    int (*node_init)(void *ctx, registry_node *n, void *arg);
    /* The last reference to n is gone: free n->payload. Optional. */
    void (*node_fini)(void *ctx, registry_node *n);
    /* Memory for the registry and its table; both NULL for malloc/free. */
    void *(*alloc)(size_t size);
    void (*free)(void *p);
    void *ctx;
} registry_hooks;

/* registry_new - an empty registry with 2^segments_log2 segments (0..16) drawing versions
 * from `clock` (which must outlive it). Returns 0 and sets *out, SHOAL_EINVAL (bad
 * segments_log2, NULL clock, hooks or release, only one of alloc/free), or SHOAL_ENOMEM. */
int registry_new(registry **out, unsigned segments_log2, registry_clock *clock,
                 const registry_hooks *hooks);

/* registry_free - release every entry and free the registry. No other thread may use it
 * during or after the call, and the caller must hold no node reference. NULL is a no-op. */
void registry_free(registry *r);

/* registry_clock_of - the clock the registry was made with. */
registry_clock *registry_clock_of(registry *r);

/* Counts, each a snapshot (exact when nothing is changing). */
typedef struct registry_counts {
    size_t local;   /* LOCAL entries */
    size_t remote;  /* REMOTE entries */
    size_t claims;  /* CLAIMED entries */
    size_t tombs;   /* TOMB entries */
    size_t entries; /* all of them */
} registry_counts;

/* registry_count - fill *c. */
void registry_count(registry *r, registry_counts *c);

/* registry_memory - bytes of the registry's own structures: the table's segments and slot
 * arrays and the node records (entries are the caller's allocations). */
size_t registry_memory(registry *r);

/* ---- Operations -------------------------------------------------------------------------- */

typedef struct registry_key {
    uint64_t hash;              /* keyhash_hash64(bytes, len) */
    const unsigned char *bytes; /* canonical key bytes */
    size_t len;
} registry_key;

/* Hooks of one operation, each optional, each called with the key's segment write-locked
 * (so they must be quick and must not call into the registry). */
typedef struct registry_op {
    /* The entry the operation answered about (a claim to wait on, a worker there already,
     * a newer replica, the local worker in conflict): copy out what the answer needs. */
    void (*seen)(void *ctx, const registry_entry *cur);
    /* A claim is ending (replaced by a worker or replica, released, turned back into its
     * tomb): take out what its waiters need, to tell them after the lock. */
    void (*ending)(void *ctx, registry_entry *claim);
    /* The caller's entry is about to be stored: set its payload word (te.fast) now. */
    void (*storing)(void *ctx, registry_entry *mine);
    /* This node's name, needed only when a remote version ties with a local entry's:
     * return 0 and set *name and *len, or non-zero when unknown (the local entry then
     * counts as newer). `local` is the local entry. */
    int (*self_name)(void *ctx, const registry_entry *local, const unsigned char **name,
                     size_t *len);
    /* put_remote only, optional (NULL: every node is): whether replicas of `node` may be
     * stored at all, asked under the segment's lock before anything else; 0 makes the
     * operation REGISTRY_STALE. The owner uses it to refuse news of a node that has left,
     * however late it arrives: it stops admitting a node before it purges its replicas. */
    int (*admitted)(void *ctx, const registry_node *node);
    void *ctx;
} registry_op;

/* What an operation reports besides its result code. */
typedef struct registry_out {
    int stored;            /* the caller's entry went into the registry (it owns it now) */
    registry_state prev;   /* the state of the entry the operation found */
    uint64_t word;         /* that entry's payload word */
    uint64_t vsn;          /* its version, or the version the operation gave */
} registry_out;

/* Result codes (operation-specific, all >= 0; failures are negative SHOAL_E* codes). */
enum {
    REGISTRY_OK = 0,          /* done as asked */
    REGISTRY_NOT_FOUND,       /* no matching entry */
    REGISTRY_WAIT,            /* claim: another process holds the claim */
    REGISTRY_WORKER,          /* claim: a worker (local or remote) has the key */
    REGISTRY_OWN,             /* register over: the entry was already this worker's */
    REGISTRY_NOPROC,          /* register: the worker died before it could be stored */
    REGISTRY_NOT_CLAIMED,     /* register claim: nobody claimed the key */
    REGISTRY_CLAIMED_BY,      /* register: a claim is there */
    REGISTRY_ALREADY,         /* register: another worker is there */
    REGISTRY_NEWER,           /* register over: a newer replica is there */
    REGISTRY_STORED,          /* put_remote */
    REGISTRY_STALE,           /* put_remote / remove_remote: nothing newer to apply */
    REGISTRY_CONFLICT,        /* put_remote: an older, live, not moving local worker */
    REGISTRY_REMOVED,         /* remove_remote: a replica became a tomb */
    REGISTRY_TOMBSTONED       /* remove_remote: a tomb was made or raised */
};

/* registry_get - call fn(ctx, entry) under the key's read lock if there is an entry
 * (of any state). Returns 0 when found, SHOAL_ENOENT otherwise. */
int registry_get(registry *r, const registry_key *k,
                 void (*fn)(void *ctx, const registry_entry *e), void *ctx);

/* registry_get_fast - call fn(ctx, word, state) with the payload word and state of the
 * key's entry as its table slot holds them, under the key's read lock, reading no entry
 * for keys of up to 15 bytes. Returns 0 when found, SHOAL_ENOENT otherwise. */
int registry_get_fast(registry *r, const registry_key *k,
                      void (*fn)(void *ctx, uint64_t word, registry_state state), void *ctx);

/* registry_claim - claim the key for `mine`, a CLAIMED entry the caller prepared
 * (registry_entry_init, te.fast = the claimer's word). On an absent key or a tomb `mine`
 * is stored (out->stored; over a tomb it keeps the tomb's version and node, see
 * registry_unregister) and REGISTRY_OK returned; REGISTRY_OK without storing when the
 * claimer already holds the claim; REGISTRY_WAIT (op->seen on the claim) when another
 * holds it; REGISTRY_WORKER (op->seen on the worker) for a LOCAL or REMOTE entry.
 * SHOAL_ENOMEM if the table could not grow. */
int registry_claim(registry *r, const registry_key *k, registry_entry *mine,
                   const registry_op *op, registry_out *out);

/* How registry_register may replace what it finds. */
typedef struct registry_mode {
    int over;                /* 0: claim mode; 1: over mode */
    uint64_t claimer;        /* claim mode: the word of the process that must hold the claim */
    uint64_t max_vsn;        /* over mode: replicas up to this version are replaced */
    const registry_node *owner; /* over mode: any replica of this node is replaced (NULL:
                                   none) */
} registry_mode;

/* registry_register - make `mine`, a LOCAL entry the caller prepared (te.fast = the
 * worker's word), the key's entry, at a fresh version (out->vsn) above everything it
 * replaces and everything the clock has seen (max_vsn is observed first). Claim mode
 * replaces only a claim held by mode->claimer (op->ending on it), else REGISTRY_NOT_CLAIMED
 * (absent or tomb), REGISTRY_CLAIMED_BY or REGISTRY_ALREADY (op->seen on what is there).
 * Over mode replaces an absent entry, a tomb, a replica whose version is at most max_vsn
 * or whose owner is mode->owner; REGISTRY_OWN (moving cleared, and a fresh version in
 * out->vsn, the entry's own) when the LOCAL entry there has mine's word; else REGISTRY_CLAIMED_BY, REGISTRY_ALREADY or
 * REGISTRY_NEWER (op->seen). REGISTRY_NOPROC if mine carries REGISTRY_DEAD (its worker died:
 * see registry_drop). out->prev is the state found. SHOAL_ENOMEM if the table could not
 * grow. */
int registry_register(registry *r, const registry_key *k, registry_entry *mine,
                      const registry_mode *mode, uint64_t now_us, const registry_op *op,
                      registry_out *out);

/* registry_unregister - remove the key's entry if it is the LOCAL worker `word` (unless
 * claims_only) or a claim held by `word`: REGISTRY_OK with out->prev and, for a worker,
 * out->vsn; REGISTRY_NOT_FOUND otherwise. A claim runs op->ending; a claim that had
 * replaced a tomb becomes that tomb again (created now_ms), else it goes. */
int registry_unregister(registry *r, const registry_key *k, uint64_t word, int claims_only,
                        int64_t now_ms, const registry_op *op, registry_out *out);

/* registry_set_moving - set (on != 0) or clear the MOVING flag of the key's LOCAL entry if
 * it is worker `word`: REGISTRY_OK (and the entry's version in *vsn, unless vsn is NULL)
 * or REGISTRY_NOT_FOUND. */
int registry_set_moving(registry *r, const registry_key *k, uint64_t word, int on,
                        uint64_t *vsn);

/* registry_put_remote - store `mine`, a REMOTE entry the caller prepared (op->storing sets
 * its payload), as node's worker at version vsn with sync mark `mark`, if {vsn, node} is
 * newer than what the key holds (vsn is observed by the clock first):
 *   REGISTRY_STORED: over nothing, a claim (op->ending; unless the claim keeps a tomb that
 *     is not older), a tomb or replica that is older; out->prev says which;
 *   REGISTRY_STALE: what is there is newer or the same, or is a LOCAL MOVING entry (which
 *     only its move's outcome replaces: registry_put_successor); the same replica (same
 *     node and version) takes `mark` unless mark is 0;
 *   REGISTRY_CONFLICT: an older LOCAL entry that is not moving (out->word, out->vsn).
 * SHOAL_ENOMEM if the table could not grow. */
int registry_put_remote(registry *r, const registry_key *k, registry_node *node, uint64_t vsn,
                        uint32_t mark, registry_entry *mine, const registry_op *op,
                        registry_out *out);

/* registry_put_successor - registry_put_remote for a move's outcome (the successor that now
 * holds the key, or a conflict's winner the local worker steps aside for): the same, except
 * that an older LOCAL MOVING entry is replaced too (REGISTRY_STORED, out->prev
 * REGISTRY_LOCAL, out->word and out->vsn the local worker's). */
int registry_put_successor(registry *r, const registry_key *k, registry_node *node,
                           uint64_t vsn, uint32_t mark, registry_entry *mine,
                           const registry_op *op, registry_out *out);

/* registry_put_synced - registry_put_remote for an entry of the owner's sync, whose walk
 * began when the owner's clock read `before` (non-zero): the same, except that a tomb of
 * another node than `node` whose version is below `before` (a TOMB, or the tomb a claim
 * keeps) does not refuse it. Such a tomb is of an incarnation that died while this one,
 * which the owner still holds, lived: its twin on the other side of a partition, which the
 * newer-wins order alone would leave in this table's way for good. */
int registry_put_synced(registry *r, const registry_key *k, registry_node *node, uint64_t vsn,
                        uint32_t mark, uint64_t before, registry_entry *mine,
                        const registry_op *op, registry_out *out);

/* registry_remove_remote - node says its worker of the key at version vsn is gone (vsn is
 * observed first). A replica not newer than {vsn, node} is replaced by `mine`, a TOMB entry
 * the caller prepared (REGISTRY_REMOVED); an absent key gets `mine` (REGISTRY_TOMBSTONED); an
 * older tomb is raised to {vsn, node} and its age restarts (REGISTRY_TOMBSTONED); anything
 * else is left (REGISTRY_STALE), except that a claim keeps {vsn, node} as the tomb it will
 * leave if released. now_ms is the tomb's creation time. SHOAL_ENOMEM if the table could
 * not grow. */
int registry_remove_remote(registry *r, const registry_key *k, registry_node *node,
                           uint64_t vsn, int64_t now_ms, registry_entry *mine,
                           registry_out *out);

/* registry_drop - the worker of LOCAL entry e died: mark e REGISTRY_DEAD and remove it if
 * it is still the key's entry (then return 1 and set *vsn), else return 0. Never removes
 * another entry (a successor). */
int registry_drop(registry *r, registry_entry *e, uint64_t *vsn);

/* registry_clear - remove every entry (a walk of every segment). */
void registry_clear(registry *r);

/* ---- Walks -------------------------------------------------------------------------------
 * Each visits one segment under one hold of its lock (table_fold_segment): a walk calling
 * it for segment 0 .. registry_segments(r) - 1 in turn sees every entry that is present for
 * the whole walk exactly once. */

/* registry_segments - the number of segments. */
size_t registry_segments(registry *r);

/* registry_visit_segment - call fn(ctx, e) on every entry of segment seg, read-locked.
 * Returns the number of entries visited. */
size_t registry_visit_segment(registry *r, size_t seg,
                              void (*fn)(void *ctx, const registry_entry *e), void *ctx);

/* registry_rewrite_segment - call fn(ctx, e) on every REMOTE entry of segment seg,
 * write-locked; fn may change e->te.fast and e->te.user and returns non-zero when it
 * changed te.fast (the slot is then refreshed). Returns the number of entries changed. */
size_t registry_rewrite_segment(registry *r, size_t seg,
                                int (*fn)(void *ctx, registry_entry *e), void *ctx);

/* What registry_sweep_segment removes. */
typedef struct registry_sweep {
    enum {
        REGISTRY_SWEEP_NODE_ALL = 1, /* every replica of `node` */
        REGISTRY_SWEEP_NODE_MARK,    /* replicas of `node` whose mark is not `mark` and
                                        whose version is below `before` */
        REGISTRY_SWEEP_TOMBS         /* tombs created at least age_ms before now_ms */
    } what;
    const registry_node *node;
    uint32_t mark;
    uint64_t before;
    int64_t now_ms;
    int64_t age_ms;
} registry_sweep;

/* registry_sweep_segment - remove what *s selects from segment seg (write-locked); the
 * removed entries are released after the unlock. Returns how many were removed. */
size_t registry_sweep_segment(registry *r, size_t seg, const registry_sweep *s);

#endif
