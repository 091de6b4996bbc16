/* shoal_nif.c - the NIF set behind the `shoal_nif` module: worker tables as resources.
 *
 * A table maps a key (any term but a fun, by its canonical bytes, see keyhash.h) to an
 * entry: a claim (a caller is spawning the worker; racers queue as waiters), an active
 * local worker (monitored: when it dies the entry goes, with no Erlang process involved),
 * or a remote worker replicated from another node. Entries are NIF resources allocated
 * with the key inline and stored in the segmented core table (table.h); the table holds the
 * resource's only reference.
 *
 * Life cycle of the table object: the Erlang-visible resource (`ntable_res`) points to a
 * heap `ntable` that is reference-counted by the resource and by every entry, because a
 * monitor's down callback may run after the Erlang side dropped the table. `ntable.life`
 * guards `ntable.t` against the table being freed under a down callback.
 *
 * Everything here returns in well under a millisecond except dump/purge, which walk the
 * table in slices of FOLD_BUDGET slots and reschedule themselves (enif_schedule_nif). */
#define _GNU_SOURCE /* dladdr */
#include <dlfcn.h>
#include <erl_nif.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "keyhash.h"
#include "ratemeter.h"
#include "shoal_err.h"
#include "table.h"

#define FOLD_BUDGET 4096
#define MAX_NODES 256 /* distinct remote nodes a table counts replicas for */
#define STACK_KEY 256

enum { ST_CLAIMED = 1, ST_ACTIVE = 2, ST_REMOTE = 3 };

typedef struct ntable {
    table *t;                 /* NULL once freed */
    ErlNifRWLock *life;       /* write: freeing t; read: down callbacks */
    atomic_int refs;          /* the resource + every live entry */
    atomic_int dead;          /* shoal_nif:delete/1 was called */
    atomic_uint_fast64_t incarnation;
    atomic_long active;       /* ST_ACTIVE + ST_REMOTE entries (workers) */
    atomic_long local_active; /* ST_ACTIVE entries */
    atomic_uint_fast64_t listener; /* pid term told of local ups and downs; 0 = none */
    ErlNifMutex *nodes_lock;       /* serialises adding a node slot */
    atomic_uint_fast64_t node_atom[MAX_NODES]; /* atom term of each slot's node; 0 = free */
    atomic_long node_count[MAX_NODES];         /* replicas of that node */
} ntable;

/* Replica count of `node` changes by d. Slots are added under nodes_lock, read without. */
static void node_count_add(ntable *nt, ERL_NIF_TERM node, long d)
{
    for (int i = 0; i < MAX_NODES; i++) {
        uint64_t a = atomic_load(&nt->node_atom[i]);
        if (a == (uint64_t)node) {
            atomic_fetch_add(&nt->node_count[i], d);
            return;
        }
        if (a == 0) {
            enif_mutex_lock(nt->nodes_lock);
            a = atomic_load(&nt->node_atom[i]);
            if (a == 0) atomic_store(&nt->node_atom[i], (uint64_t)node);
            enif_mutex_unlock(nt->nodes_lock);
            if (atomic_load(&nt->node_atom[i]) == (uint64_t)node) {
                atomic_fetch_add(&nt->node_count[i], d);
                return;
            }
        }
    }
}

static long node_count_get(ntable *nt, ERL_NIF_TERM node)
{
    for (int i = 0; i < MAX_NODES; i++) {
        uint64_t a = atomic_load(&nt->node_atom[i]);
        if (a == (uint64_t)node) return atomic_load(&nt->node_count[i]);
        if (a == 0) break;
    }
    return 0;
}

typedef struct ntable_res {
    ntable *nt;
} ntable_res;

typedef struct nentry {
    table_entry te;        /* must be first */
    ntable *nt;            /* counted reference */
    uint8_t state;         /* ST_* */
    uint8_t monitored;     /* mon is live */
    uint8_t dead;          /* owner died; written under the segment lock */
    uint8_t moving;        /* ST_ACTIVE being migrated: a replica may replace it */
    uint64_t incarnation;  /* per-table counter at creation */
    ErlNifPid pid;         /* ST_CLAIMED: the claimer; ST_ACTIVE: the worker */
    ErlNifMonitor mon;     /* on pid */
    ERL_NIF_TERM node;     /* ST_REMOTE: atom, the node the worker lives on */
    ErlNifEnv *wenv;       /* ST_CLAIMED with waiters: holds `waiters` */
    ERL_NIF_TERM waiters;  /* [{Pid, Ref}] */
    uint32_t rpid_len;     /* ST_REMOTE: the remote pid, external format, after the key */
    unsigned char key[];   /* canonical key bytes (then the remote pid's bytes) */
} nentry;

typedef struct meter_res {
    ErlNifMutex *lock;
    ratemeter m;
} meter_res;

static ErlNifResourceType *TABLE_RT, *ENTRY_RT, *METER_RT;
static ERL_NIF_TERM A_OK, A_ERROR, A_UNDEFINED, A_CLAIMED, A_WAIT, A_TRUE, A_FALSE,
    A_NOPROC, A_ALREADY, A_NOT_FOUND, A_REMOTE, A_RETRY, A_CLAIM_MSG, A_ACTIVE,
    A_LOCAL, A_UP, A_DOWN, A_NEW, A_REPLACED;
static atomic_int load_count;

/* ------------------------------------------------------------------------------------ */
/* Canonical key encoding straight from terms. Common shapes (small integers, floats,     */
/* Latin-1 atoms, binaries, tuples, lists) are written directly; the rest (bignums,       */
/* bitstrings, maps, UTF-8 atoms, pids, ports, refs) go through term_to_binary and        */
/* keyhash_normalize so there is exactly one definition of their canonical form.          */

typedef struct kbuf {
    unsigned char *p;
    size_t len, cap;
    unsigned char stack[STACK_KEY];
} kbuf;

static void kbuf_init(kbuf *b)
{
    b->p = b->stack;
    b->len = 0;
    b->cap = sizeof b->stack;
}

static void kbuf_free(kbuf *b)
{
    if (b->p != b->stack) enif_free(b->p);
}

static int kbuf_reserve(kbuf *b, size_t n)
{
    if (b->len + n <= b->cap) return 0;
    if (b->len + n > KEYHASH_MAX_KEY) return SHOAL_E2BIG;
    size_t cap = b->cap * 2;
    while (cap < b->len + n) cap *= 2;
    if (cap > KEYHASH_MAX_KEY) cap = KEYHASH_MAX_KEY;
    unsigned char *p = enif_alloc(cap);
    if (p == NULL) return SHOAL_ENOMEM;
    memcpy(p, b->p, b->len);
    kbuf_free(b);
    b->p = p;
    b->cap = cap;
    return 0;
}

static inline void put8(kbuf *b, unsigned v)
{
    b->p[b->len++] = (unsigned char)v;
}

static inline void put32(kbuf *b, uint32_t v)
{
    b->p[b->len++] = (unsigned char)(v >> 24);
    b->p[b->len++] = (unsigned char)(v >> 16);
    b->p[b->len++] = (unsigned char)(v >> 8);
    b->p[b->len++] = (unsigned char)v;
}

static int enc_slow(ErlNifEnv *env, ERL_NIF_TERM t, kbuf *b, int depth)
{
    ErlNifBinary bin;
    if (!enif_term_to_binary(env, t, &bin)) return SHOAL_EINVAL;
    int rc;
    size_t out = 0;
    for (;;) {
        size_t room = b->cap - b->len;
        rc = keyhash_normalize_at(bin.data, bin.size, b->p + b->len, room, &out, (unsigned)depth);
        if (rc != SHOAL_ENOSPC) break;
        size_t want = out > room ? out : room * 2 + bin.size * 2;
        if ((rc = kbuf_reserve(b, want)) != 0) break;
    }
    enif_release_binary(&bin);
    if (rc != 0) return rc;
    /* keyhash_normalize writes the leading 131; nested terms must not have it. */
    memmove(b->p + b->len, b->p + b->len + 1, out - 1);
    b->len += out - 1;
    return 0;
}

static int enc_term(ErlNifEnv *env, ERL_NIF_TERM t, kbuf *b, int depth)
{
    int rc;
    switch (enif_term_type(env, t)) {
    case ERL_NIF_TERM_TYPE_INTEGER: {
        ErlNifSInt64 v;
        if (!enif_get_int64(env, t, &v)) return enc_slow(env, t, b, depth);
        if (v >= 0 && v <= 255) {
            if ((rc = kbuf_reserve(b, 2))) return rc;
            put8(b, 97);
            put8(b, (unsigned)v);
        } else if (v >= INT32_MIN && v <= INT32_MAX) {
            if ((rc = kbuf_reserve(b, 5))) return rc;
            put8(b, 98);
            put32(b, (uint32_t)(int32_t)v);
        } else {
            uint64_t mag = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
            unsigned n = 0;
            unsigned char d[8];
            while (mag) {
                d[n++] = (unsigned char)mag;
                mag >>= 8;
            }
            if ((rc = kbuf_reserve(b, 3 + n))) return rc;
            put8(b, 110);
            put8(b, n);
            put8(b, v < 0);
            for (unsigned i = 0; i < n; i++) put8(b, d[i]);
        }
        return 0;
    }
    case ERL_NIF_TERM_TYPE_FLOAT: {
        double d;
        uint64_t u;
        enif_get_double(env, t, &d);
        if (d == 0.0) d = 0.0; /* -0.0 is written as 0.0 */
        memcpy(&u, &d, 8);
        if ((rc = kbuf_reserve(b, 9))) return rc;
        put8(b, 70);
        put32(b, (uint32_t)(u >> 32));
        put32(b, (uint32_t)u);
        return 0;
    }
    case ERL_NIF_TERM_TYPE_ATOM: {
        char name[256];
        int n = enif_get_atom(env, t, name, sizeof name, ERL_NIF_LATIN1);
        if (n <= 0) return enc_slow(env, t, b, depth); /* not Latin-1: let normalize do UTF-8 */
        n--;                                     /* without the NUL */
        if ((rc = kbuf_reserve(b, 3 + 2 * (size_t)n))) return rc;
        size_t at = b->len;
        put8(b, 119);
        put8(b, 0);
        for (int i = 0; i < n; i++) {
            unsigned char c = (unsigned char)name[i];
            if (c < 0x80) {
                put8(b, c);
            } else {
                put8(b, 0xC0 | (c >> 6));
                put8(b, 0x80 | (c & 0x3F));
            }
        }
        size_t ulen = b->len - at - 2;
        if (ulen <= 255) {
            b->p[at + 1] = (unsigned char)ulen;
        } else { /* ATOM_UTF8_EXT with a 2-byte length: shift the bytes by one */
            if ((rc = kbuf_reserve(b, 1))) return rc;
            memmove(b->p + at + 3, b->p + at + 2, ulen);
            b->p[at] = 118;
            b->p[at + 1] = (unsigned char)(ulen >> 8);
            b->p[at + 2] = (unsigned char)ulen;
            b->len++;
        }
        return 0;
    }
    case ERL_NIF_TERM_TYPE_BITSTRING: {
        ErlNifBinary bin;
        if (!enif_inspect_binary(env, t, &bin)) return enc_slow(env, t, b, depth); /* bitstring */
        if (bin.size > KEYHASH_MAX_KEY) return SHOAL_E2BIG;
        if ((rc = kbuf_reserve(b, 5 + bin.size))) return rc;
        put8(b, 109);
        put32(b, (uint32_t)bin.size);
        memcpy(b->p + b->len, bin.data, bin.size);
        b->len += bin.size;
        return 0;
    }
    case ERL_NIF_TERM_TYPE_TUPLE: {
        int arity;
        const ERL_NIF_TERM *el;
        enif_get_tuple(env, t, &arity, &el);
        if (depth >= KEYHASH_MAX_DEPTH) return SHOAL_E2BIG; /* a container is a level */
        if ((rc = kbuf_reserve(b, 5))) return rc;
        if (arity <= 255) {
            put8(b, 104);
            put8(b, (unsigned)arity);
        } else {
            put8(b, 105);
            put32(b, (uint32_t)arity);
        }
        for (int i = 0; i < arity; i++)
            if ((rc = enc_term(env, el[i], b, depth + 1))) return rc;
        return 0;
    }
    case ERL_NIF_TERM_TYPE_LIST: {
        if (enif_is_empty_list(env, t)) {
            if ((rc = kbuf_reserve(b, 1))) return rc;
            put8(b, 106);
            return 0;
        }
        if (depth >= KEYHASH_MAX_DEPTH) return SHOAL_E2BIG;
        if ((rc = kbuf_reserve(b, 5))) return rc;
        size_t at = b->len;
        put8(b, 108);
        put32(b, 0);
        uint32_t n = 0;
        ERL_NIF_TERM head, tail = t;
        /* Each element adds at least one byte, so the size limit also bounds the walk. */
        while (enif_get_list_cell(env, tail, &head, &tail)) {
            if ((rc = enc_term(env, head, b, depth + 1))) return rc;
            n++;
        }
        if ((rc = enc_term(env, tail, b, depth + 1))) return rc;
        b->p[at + 1] = (unsigned char)(n >> 24);
        b->p[at + 2] = (unsigned char)(n >> 16);
        b->p[at + 3] = (unsigned char)(n >> 8);
        b->p[at + 4] = (unsigned char)n;
        return 0;
    }
    case ERL_NIF_TERM_TYPE_MAP:
    case ERL_NIF_TERM_TYPE_PID:
    case ERL_NIF_TERM_TYPE_PORT:
    case ERL_NIF_TERM_TYPE_REFERENCE: {
        size_t sz;
        if (enif_term_type(env, t) == ERL_NIF_TERM_TYPE_MAP && enif_get_map_size(env, t, &sz) &&
            sz > KEYHASH_MAX_KEY / 2)
            return SHOAL_E2BIG;
        return enc_slow(env, t, b, depth);
    }
    default: /* funs */
        return SHOAL_ENOTSUP;
    }
}

/* Encode a key into b (with the leading 131) and hash it. 0 or a SHOAL_E* code. */
static int encode_key(ErlNifEnv *env, ERL_NIF_TERM key, kbuf *b, uint64_t *hash)
{
    kbuf_init(b);
    put8(b, 131);
    int rc = enc_term(env, key, b, 0);
    if (rc != 0) {
        kbuf_free(b);
        return rc;
    }
    *hash = keyhash_hash64(b->p, b->len);
    return 0;
}

/* ------------------------------------------------------------------------------------ */
/* Tables and entries                                                                     */

static void ntable_unref(ntable *nt)
{
    if (atomic_fetch_sub(&nt->refs, 1) == 1) {
        enif_rwlock_destroy(nt->life);
        enif_mutex_destroy(nt->nodes_lock);
        enif_free(nt);
    }
}

static void entry_release(void *ctx, table_entry *te)
{
    (void)ctx;
    enif_release_resource((nentry *)te);
}

static void entry_dtor(ErlNifEnv *env, void *obj)
{
    (void)env;
    nentry *e = obj;
    if (e->wenv) enif_free_env(e->wenv);
    if (e->nt) ntable_unref(e->nt);
}

static void table_dtor(ErlNifEnv *env, void *obj)
{
    (void)env;
    ntable *nt = ((ntable_res *)obj)->nt;
    if (nt == NULL) return;
    enif_rwlock_rwlock(nt->life);
    table *t = nt->t;
    nt->t = NULL;
    enif_rwlock_rwunlock(nt->life);
    table_free(t); /* entries drop their refs on nt as they go */
    ntable_unref(nt);
}

static void meter_dtor(ErlNifEnv *env, void *obj)
{
    (void)env;
    meter_res *m = obj;
    if (m->lock) enif_mutex_destroy(m->lock);
}

static ntable *get_table(ErlNifEnv *env, ERL_NIF_TERM t)
{
    ntable_res *r;
    if (!enif_get_resource(env, t, TABLE_RT, (void **)&r) || r->nt == NULL) return NULL;
    if (atomic_load_explicit(&r->nt->dead, memory_order_relaxed)) return NULL;
    return r->nt;
}

static nentry *entry_new(ntable *nt, const kbuf *k, uint64_t hash, int state, size_t extra)
{
    nentry *e = enif_alloc_resource(ENTRY_RT, sizeof(nentry) + k->len + extra);
    if (e == NULL) return NULL;
    memset(e, 0, sizeof *e);
    memcpy(e->key, k->p, k->len);
    e->te.hash = hash;
    e->te.key = e->key;
    e->te.klen = (uint32_t)k->len;
    e->state = (uint8_t)state;
    e->nt = nt;
    atomic_fetch_add(&nt->refs, 1);
    e->incarnation = atomic_fetch_add(&nt->incarnation, 1) + 1;
    e->node = A_UNDEFINED;
    return e;
}

/* Drop an entry that never made it into the table. */
static void entry_discard(ErlNifEnv *env, nentry *e)
{
    if (e->monitored) enif_demonitor_process(env, e, &e->mon);
    enif_release_resource(e);
}

static void count_in(ntable *nt, int state, long d)
{
    if (state == ST_ACTIVE || state == ST_REMOTE) atomic_fetch_add(&nt->active, d);
    if (state == ST_ACTIVE) atomic_fetch_add(&nt->local_active, d);
}

/* Tell the table's listener (the pool server, in a cluster) that a local worker came up
 * or went down: {'$shoal_up', Key, Pid, Inc} / {'$shoal_down', Key, Pid}. `key` lives in
 * `kenv`, or is NULL to decode it from the entry's canonical bytes. */
static void tell_listener(ErlNifEnv *caller, ntable *nt, int up, ErlNifEnv *kenv, ERL_NIF_TERM key,
                          const nentry *e)
{
    uint64_t w = atomic_load_explicit(&nt->listener, memory_order_relaxed);
    if (w == 0) return;
    ErlNifPid to;
    to.pid = (ERL_NIF_TERM)w;
    ErlNifEnv *m = enif_alloc_env();
    if (m == NULL) return;
    ERL_NIF_TERM k;
    if (kenv != NULL)
        k = enif_make_copy(m, key);
    else if (enif_binary_to_term(m, e->key, e->te.klen, &k, 0) == 0)
        k = A_UNDEFINED;
    ERL_NIF_TERM msg =
        up ? enif_make_tuple4(m, A_UP, k, enif_make_pid(m, &e->pid), enif_make_uint64(m, e->incarnation))
           : enif_make_tuple3(m, A_DOWN, k, enif_make_pid(m, &e->pid));
    enif_send(caller, &to, m, msg);
    enif_free_env(m);
}

static ERL_NIF_TERM raise_for(ErlNifEnv *env, int rc)
{
    if (rc == SHOAL_ENOMEM)
        return enif_raise_exception(env, enif_make_atom(env, "enomem"));
    return enif_make_badarg(env);
}

/* Send {'$shoal_claim', Ref, Result} to every waiter in a [{Pid, Ref}] list living in
 * `wenv`. `pid` is the worker for {ok, Pid}; NULL means retry. */
static void notify_waiters(ErlNifEnv *caller, ErlNifEnv *wenv, ERL_NIF_TERM waiters,
                           const ErlNifPid *pid, ERL_NIF_TERM rpid)
{
    ERL_NIF_TERM head;
    while (enif_get_list_cell(wenv, waiters, &head, &waiters)) {
        int ar;
        const ERL_NIF_TERM *el;
        ErlNifPid to;
        if (!enif_get_tuple(wenv, head, &ar, &el) || ar != 2 || !enif_get_local_pid(wenv, el[0], &to))
            continue;
        ErlNifEnv *m = enif_alloc_env();
        ERL_NIF_TERM res;
        if (pid != NULL)
            res = enif_make_tuple2(m, A_OK, enif_make_pid(m, pid));
        else if (rpid != 0)
            res = enif_make_tuple2(m, A_OK, enif_make_copy(m, rpid));
        else
            res = A_RETRY;
        ERL_NIF_TERM msg = enif_make_tuple3(m, A_CLAIM_MSG, enif_make_copy(m, el[1]), res);
        enif_send(caller, &to, m, msg);
        enif_free_env(m);
    }
}

/* Owner died (claimer or worker): remove its entry if it is still the current one. */
struct down_ctx {
    nentry *e;
    ErlNifEnv *wenv; /* taken from a dying claim so its waiters can be told to retry */
    ERL_NIF_TERM waiters;
    int removed;
};

static table_action down_fn(void *ctx, table_entry *cur, table_entry **repl)
{
    struct down_ctx *c = ctx;
    (void)repl;
    c->e->dead = 1;
    if (cur != &c->e->te) return TABLE_KEEP;
    c->removed = 1;
    if (c->e->state == ST_CLAIMED) {
        c->wenv = c->e->wenv;
        c->waiters = c->e->waiters;
        c->e->wenv = NULL;
    }
    return TABLE_DELETE;
}

static void entry_down(ErlNifEnv *env, void *obj, ErlNifPid *pid, ErlNifMonitor *mon)
{
    (void)pid;
    (void)mon;
    nentry *e = obj;
    ntable *nt = e->nt;
    if (nt == NULL) return;
    struct down_ctx c = {e, NULL, 0, 0};
    int state = e->state;
    enif_rwlock_rlock(nt->life);
    if (nt->t != NULL) (void)table_update(nt->t, e->te.hash, e->key, e->te.klen, down_fn, &c);
    enif_rwlock_runlock(nt->life);
    if (c.removed) {
        count_in(nt, state, -1);
        if (state == ST_ACTIVE) tell_listener(env, nt, 0, NULL, 0, e);
    }
    if (c.wenv != NULL) {
        notify_waiters(env, c.wenv, c.waiters, NULL, 0);
        enif_free_env(c.wenv);
    }
}

/* ------------------------------------------------------------------------------------ */
/* NIFs                                                                                   */

#define GET_TABLE(nt, term)                                                                  \
    ntable *nt = get_table(env, term);                                                       \
    if (nt == NULL) return enif_make_badarg(env)

#define GET_KEY(kb, hash, term)                                                              \
    kbuf kb;                                                                                 \
    uint64_t hash;                                                                           \
    do {                                                                                     \
        int rc_ = encode_key(env, term, &kb, &hash);                                         \
        if (rc_ != 0) return raise_for(env, rc_);                                            \
    } while (0)

/* new(SegmentsLog2) -> Table */
static ERL_NIF_TERM nif_new(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    unsigned bits;
    if (!enif_get_uint(env, argv[0], &bits) || bits > 16) return enif_make_badarg(env);
    ntable *nt = enif_alloc(sizeof *nt);
    if (nt == NULL) return raise_for(env, SHOAL_ENOMEM);
    memset(nt, 0, sizeof *nt);
    table_ops ops = {entry_release, NULL};
    if (table_new(&nt->t, bits, &ops) != 0 || (nt->life = enif_rwlock_create("shoal_life")) == NULL) {
        if (nt->t) table_free(nt->t);
        enif_free(nt);
        return raise_for(env, SHOAL_ENOMEM);
    }
    atomic_init(&nt->refs, 1);
    atomic_init(&nt->dead, 0);
    atomic_init(&nt->incarnation, 0);
    atomic_init(&nt->active, 0);
    atomic_init(&nt->local_active, 0);
    atomic_init(&nt->listener, 0);
    for (int i = 0; i < MAX_NODES; i++) {
        atomic_init(&nt->node_atom[i], 0);
        atomic_init(&nt->node_count[i], 0);
    }
    if ((nt->nodes_lock = enif_mutex_create("shoal_nodes")) == NULL) {
        table_free(nt->t);
        enif_rwlock_destroy(nt->life);
        enif_free(nt);
        return raise_for(env, SHOAL_ENOMEM);
    }
    ntable_res *r = enif_alloc_resource(TABLE_RT, sizeof *r);
    if (r == NULL) {
        table_free(nt->t);
        enif_rwlock_destroy(nt->life);
        enif_free(nt);
        return raise_for(env, SHOAL_ENOMEM);
    }
    r->nt = nt;
    ERL_NIF_TERM term = enif_make_resource(env, r);
    enif_release_resource(r);
    return term;
}

static table_action delete_all_fn(void *ctx, table_entry *e)
{
    (void)ctx;
    (void)e;
    return TABLE_DELETE;
}

/* delete(Table) -> ok. The table is dead from now on: every later call raises badarg. */
static ERL_NIF_TERM nif_delete(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    GET_TABLE(nt, argv[0]);
    if (atomic_exchange(&nt->dead, 1)) return enif_make_badarg(env);
    table_cursor cur = {0, 0};
    enif_rwlock_rlock(nt->life);
    while (nt->t && table_fold(nt->t, &cur, (size_t)-1, 1, delete_all_fn, NULL)) {
    }
    enif_rwlock_runlock(nt->life);
    atomic_store(&nt->active, 0);
    atomic_store(&nt->local_active, 0);
    for (int i = 0; i < MAX_NODES; i++) atomic_store(&nt->node_count[i], 0);
    return A_OK;
}

/* The remote pid of an ST_REMOTE entry, as a term in env (undefined if it will not decode,
 * which cannot happen for bytes put_remote wrote). Kept as ~30 bytes of external format
 * rather than a term in an env of its own, which cost over 2 KB per replica. */
static ERL_NIF_TERM remote_pid(ErlNifEnv *env, const nentry *e)
{
    ERL_NIF_TERM t;
    if (enif_binary_to_term(env, e->key + e->te.klen, e->rpid_len, &t, 0) == 0) return A_UNDEFINED;
    return t;
}

struct peek {
    int state;
    ErlNifPid pid;
    uint64_t inc;
    ErlNifEnv *env;      /* where to copy a remote pid */
    ERL_NIF_TERM rpid;
};

static void peek_fn(void *ctx, const table_entry *te)
{
    struct peek *p = ctx;
    const nentry *e = (const nentry *)te;
    p->state = e->state;
    p->pid = e->pid;
    p->inc = e->incarnation;
    if (e->state == ST_REMOTE) p->rpid = remote_pid(p->env, e);
}

static int peek_key(ErlNifEnv *env, ntable *nt, const kbuf *k, uint64_t h, struct peek *p)
{
    p->state = 0;
    p->env = env;
    return table_get(nt->t, h, k->p, k->len, peek_fn, p);
}

static ERL_NIF_TERM worker_pid(ErlNifEnv *env, const struct peek *p)
{
    return p->state == ST_REMOTE ? p->rpid : enif_make_pid(env, &p->pid);
}

/* The entry of argv[1] in table argv[0]: 0 (found, in *p), SHOAL_ENOENT, or another code
 * for a bad table or key (then *bad is the exception to return). */
static int peek_args(ErlNifEnv *env, const ERL_NIF_TERM argv[], struct peek *p, ERL_NIF_TERM *bad)
{
    ntable *nt = get_table(env, argv[0]);
    kbuf k;
    uint64_t h;
    int rc;
    if (nt == NULL) {
        *bad = enif_make_badarg(env);
        return SHOAL_EINVAL;
    }
    if ((rc = encode_key(env, argv[1], &k, &h)) != 0) {
        *bad = raise_for(env, rc);
        return rc;
    }
    rc = peek_key(env, nt, &k, h, p);
    kbuf_free(&k);
    return rc;
}

/* The local worker of argv[1] straight from its slot (no entry read for short keys):
 * 1 and *pid when there is one, 0 when the key is absent, -1 when the slot does not say
 * (a claim or a replica: ask peek_args), or -2 with *bad for a bad table or key. */
static int fast_local(ErlNifEnv *env, const ERL_NIF_TERM argv[], ErlNifPid *pid, ERL_NIF_TERM *bad)
{
    ntable *nt = get_table(env, argv[0]);
    kbuf k;
    uint64_t h, fast = 0;
    int rc;
    if (nt == NULL) {
        *bad = enif_make_badarg(env);
        return -2;
    }
    if ((rc = encode_key(env, argv[1], &k, &h)) != 0) {
        *bad = raise_for(env, rc);
        return -2;
    }
    rc = table_get_fast(nt->t, h, k.p, k.len, &fast);
    kbuf_free(&k);
    if (rc != 0) return 0;
    if (fast == 0) return -1;
    pid->pid = (ERL_NIF_TERM)fast;
    return 1;
}

/* whereis(Table, Key) -> pid() | undefined. Claims in progress count as absent. */
static ERL_NIF_TERM nif_whereis(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    struct peek p;
    ERL_NIF_TERM bad;
    ErlNifPid pid;
    switch (fast_local(env, argv, &pid, &bad)) {
    case 1: return enif_make_pid(env, &pid);
    case 0: return A_UNDEFINED;
    case -2: return bad;
    }
    int rc = peek_args(env, argv, &p, &bad);
    if (rc == SHOAL_ENOENT || (rc == 0 && p.state == ST_CLAIMED)) return A_UNDEFINED;
    return rc == 0 ? worker_pid(env, &p) : bad;
}

/* lookup(Table, Key) -> {active, Pid, Inc} | {claimed, Pid} | undefined */
static ERL_NIF_TERM nif_lookup(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    struct peek p;
    ERL_NIF_TERM bad;
    int rc = peek_args(env, argv, &p, &bad);
    if (rc == SHOAL_ENOENT) return A_UNDEFINED;
    if (rc != 0) return bad;
    if (p.state == ST_CLAIMED) return enif_make_tuple2(env, A_CLAIMED, enif_make_pid(env, &p.pid));
    return enif_make_tuple3(env, A_ACTIVE, worker_pid(env, &p), enif_make_uint64(env, p.inc));
}

/* route(Table, Key, Msg) -> ok | undefined | {remote, Pid}
 * Looks the key up and sends Msg to a local worker in the same call. */
static ERL_NIF_TERM nif_route(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    struct peek p;
    ERL_NIF_TERM bad;
    ErlNifPid pid;
    switch (fast_local(env, argv, &pid, &bad)) {
    case 1: return enif_send(env, &pid, NULL, argv[2]) ? A_OK : A_UNDEFINED;
    case 0: return A_UNDEFINED;
    case -2: return bad;
    }
    int rc = peek_args(env, argv, &p, &bad);
    if (rc == SHOAL_ENOENT || (rc == 0 && p.state == ST_CLAIMED)) return A_UNDEFINED;
    if (rc != 0) return bad;
    if (p.state == ST_REMOTE) return enif_make_tuple2(env, A_REMOTE, p.rpid);
    return enif_send(env, &p.pid, NULL, argv[2]) ? A_OK : A_UNDEFINED;
}

struct claim_ctx {
    ErlNifEnv *env;
    nentry *mine;
    ErlNifPid self;
    ERL_NIF_TERM ref;
    int result; /* 0 claimed, 1 wait, 2 active */
    struct peek p;
};

static table_action claim_fn(void *ctx, table_entry *cur, table_entry **repl)
{
    struct claim_ctx *c = ctx;
    if (cur == NULL) {
        c->result = 0;
        *repl = &c->mine->te;
        return TABLE_PUT;
    }
    nentry *e = (nentry *)cur;
    if (e->state == ST_CLAIMED) {
        if (enif_compare_pids(&e->pid, &c->self) == 0) {
            c->result = 0; /* already ours: our new entry is not needed */
            c->mine = NULL;
            return TABLE_KEEP;
        }
        c->result = 1;
        c->p.pid = e->pid;
        if (!enif_is_ref(c->env, c->ref)) return TABLE_KEEP; /* `nowait`: not a waiter */
        if (e->wenv == NULL) {
            /* The first waiter: claims that nobody races for never pay for an env. */
            if ((e->wenv = enif_alloc_env()) == NULL) return TABLE_KEEP;
            e->waiters = enif_make_list(e->wenv, 0);
        }
        ERL_NIF_TERM w = enif_make_tuple2(e->wenv, enif_make_pid(e->wenv, &c->self),
                                          enif_make_copy(e->wenv, c->ref));
        e->waiters = enif_make_list_cell(e->wenv, w, e->waiters);
        return TABLE_KEEP;
    }
    c->result = 2;
    peek_fn(&c->p, cur);
    return TABLE_KEEP;
}

/* claim(Table, Key, Ref | nowait) -> claimed | {wait, Claimer} | {ok, Pid}
 * Claims Key for the calling process (insert-if-absent). `wait`: another process holds the
 * claim; given a Ref, the caller gets {'$shoal_claim', Ref, {ok, Pid} | retry} when it
 * resolves (with `nowait` it is told nothing). A claim is not monitored (that would cost
 * every spawn a monitor): a waiter watches the claimer itself and, should it die, removes
 * the stale claim with unregister/3, which tells the other waiters to retry. */
static ERL_NIF_TERM nif_claim(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    GET_TABLE(nt, argv[0]);
    if (!enif_is_ref(env, argv[2]) &&
        !enif_is_identical(argv[2], enif_make_atom(env, "nowait")))
        return enif_make_badarg(env);
    GET_KEY(k, h, argv[1]);
    struct claim_ctx c = {.env = env, .ref = argv[2]};
    c.p.env = env;
    if (enif_self(env, &c.self) == NULL) {
        kbuf_free(&k);
        return enif_make_badarg(env);
    }
    /* Fast path: already active. */
    struct peek p;
    if (peek_key(env, nt, &k, h, &p) == 0 && p.state != ST_CLAIMED) {
        kbuf_free(&k);
        return enif_make_tuple2(env, A_OK, worker_pid(env, &p));
    }
    nentry *e = entry_new(nt, &k, h, ST_CLAIMED, 0);
    kbuf_free(&k);
    if (e == NULL) return raise_for(env, SHOAL_ENOMEM);
    e->pid = c.self;
    c.mine = e;
    int rc = table_update(nt->t, e->te.hash, e->key, e->te.klen, claim_fn, &c);
    if (rc != 0 || c.result != 0 || c.mine == NULL) {
        entry_discard(env, e);
        if (rc != 0) return raise_for(env, rc);
    }
    if (c.result == 0) return A_CLAIMED;
    if (c.result == 1) return enif_make_tuple2(env, A_WAIT, enif_make_pid(env, &c.p.pid));
    return enif_make_tuple2(env, A_OK, worker_pid(env, &c.p));
}

struct reg_ctx {
    ErlNifEnv *env;
    nentry *mine;
    int over;                /* a replica (ST_REMOTE) may be replaced: migration takeover */
    ERL_NIF_TERM replaced_node;
    int result;              /* 0 registered, 1 same pid already, 2 taken */
    struct peek p;
    ErlNifEnv *wenv;         /* waiters of the claim we replaced */
    ERL_NIF_TERM waiters;
    int replaced_state;
};

static table_action register_fn(void *ctx, table_entry *cur, table_entry **repl)
{
    struct reg_ctx *c = ctx;
    if (c->mine->dead) { /* the worker died before we got here */
        c->result = 3;
        return TABLE_KEEP;
    }
    nentry *e = (nentry *)cur;
    if (e == NULL || e->state == ST_CLAIMED || (c->over && e->state == ST_REMOTE)) {
        c->replaced_state = e ? e->state : 0;
        if (e != NULL) c->replaced_node = e->node;
        if (e != NULL && e->state == ST_CLAIMED) {
            c->wenv = e->wenv;
            c->waiters = e->waiters;
            e->wenv = NULL;
        }
        c->result = 0;
        *repl = &c->mine->te;
        return TABLE_PUT;
    }
    if (e->state == ST_ACTIVE && enif_compare_pids(&e->pid, &c->mine->pid) == 0) {
        c->result = 1;
        return TABLE_KEEP;
    }
    c->result = 2;
    peek_fn(&c->p, cur);
    return TABLE_KEEP;
}

/* register(Table, Key, Pid) -> {ok, Incarnation} | {error, {already_registered, Pid2}} |
 *                              {error, noproc}
 * Makes local Pid the worker for Key, replacing a claim (whoever holds it) and telling the
 * claim's waiters. The entry is removed when Pid dies. */
static ERL_NIF_TERM nif_register(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    GET_TABLE(nt, argv[0]);
    int over = 0;
    if (argc == 4) {
        if (enif_is_identical(argv[3], A_TRUE))
            over = 1;
        else if (!enif_is_identical(argv[3], A_FALSE))
            return enif_make_badarg(env);
    }
    ErlNifPid pid;
    if (!enif_get_local_pid(env, argv[2], &pid)) return enif_make_badarg(env);
    GET_KEY(k, h, argv[1]);
    nentry *e = entry_new(nt, &k, h, ST_ACTIVE, 0);
    kbuf_free(&k);
    if (e == NULL) return raise_for(env, SHOAL_ENOMEM);
    e->pid = pid;
    e->te.fast = (uint64_t)pid.pid; /* a local pid is an immediate: never 0 */
    if (enif_monitor_process(env, e, &pid, &e->mon) != 0) {
        enif_release_resource(e);
        return enif_make_tuple2(env, A_ERROR, A_NOPROC);
    }
    e->monitored = 1;
    struct reg_ctx c = {.env = env, .mine = e, .over = over};
    c.p.env = env;
    int rc = table_update(nt->t, h, e->key, e->te.klen, register_fn, &c);
    if (rc != 0 || c.result != 0) entry_discard(env, e);
    if (rc != 0) return raise_for(env, rc);
    switch (c.result) {
    case 0:
        count_in(nt, ST_ACTIVE, 1);
        if (c.replaced_state == ST_REMOTE) {
            count_in(nt, ST_REMOTE, -1);
            node_count_add(nt, c.replaced_node, -1);
        }
        tell_listener(env, nt, 1, env, argv[1], e);
        if (c.wenv != NULL) {
            notify_waiters(env, c.wenv, c.waiters, &pid, 0);
            enif_free_env(c.wenv);
        }
        return enif_make_tuple2(env, A_OK, enif_make_uint64(env, e->incarnation));
    case 1:
        return enif_make_tuple2(env, A_OK, enif_make_uint64(env, 0));
    case 3:
        return enif_make_tuple2(env, A_ERROR, A_NOPROC);
    default:
        return enif_make_tuple2(env, A_ERROR,
                                enif_make_tuple2(env, A_ALREADY, worker_pid(env, &c.p)));
    }
}

struct unreg_ctx {
    ErlNifPid pid;
    int only_claim;
    int removed, state;
    uint64_t inc;
    ErlNifEnv *wenv;
    ERL_NIF_TERM waiters;
};

static table_action unregister_fn(void *ctx, table_entry *cur, table_entry **repl)
{
    struct unreg_ctx *c = ctx;
    (void)repl;
    nentry *e = (nentry *)cur;
    if (e == NULL || e->state == ST_REMOTE || enif_compare_pids(&e->pid, &c->pid) != 0)
        return TABLE_KEEP;
    if (c->only_claim && e->state != ST_CLAIMED) return TABLE_KEEP;
    c->removed = 1;
    c->state = e->state;
    c->inc = e->incarnation;
    if (e->state == ST_CLAIMED) {
        c->wenv = e->wenv;
        c->waiters = e->waiters;
        e->wenv = NULL;
    }
    return TABLE_DELETE;
}

static ERL_NIF_TERM do_unregister(ErlNifEnv *env, const ERL_NIF_TERM argv[], ErlNifPid pid,
                                  int only_claim)
{
    GET_TABLE(nt, argv[0]);
    GET_KEY(k, h, argv[1]);
    struct unreg_ctx c = {.pid = pid, .only_claim = only_claim};
    int rc = table_update(nt->t, h, k.p, k.len, unregister_fn, &c);
    kbuf_free(&k);
    if (rc != 0) return raise_for(env, rc);
    if (!c.removed) return A_NOT_FOUND;
    count_in(nt, c.state, -1);
    if (c.state == ST_ACTIVE) {
        nentry fake;
        fake.pid = pid;
        fake.incarnation = c.inc;
        tell_listener(env, nt, 0, env, argv[1], &fake);
    }
    if (c.wenv != NULL) {
        notify_waiters(env, c.wenv, c.waiters, NULL, 0);
        enif_free_env(c.wenv);
    }
    return A_OK;
}

/* unregister(Table, Key, Pid) -> ok | not_found: remove Key if its entry (claim or worker)
 * belongs to Pid. A removed claim's waiters are told to retry. */
static ERL_NIF_TERM nif_unregister(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ErlNifPid pid;
    if (!enif_get_local_pid(env, argv[2], &pid)) return enif_make_badarg(env);
    return do_unregister(env, argv, pid, 0);
}

/* release_claim(Table, Key) -> ok | not_found: the caller gives up its claim. */
static ERL_NIF_TERM nif_release_claim(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ErlNifPid self;
    if (enif_self(env, &self) == NULL) return enif_make_badarg(env);
    return do_unregister(env, argv, self, 1);
}

struct remote_ctx {
    nentry *mine;
    int result; /* 0 stored, 2 a local entry is there */
    int replaced_state;
    struct peek p;
    ErlNifEnv *wenv; /* waiters of a claim we replaced */
    ERL_NIF_TERM waiters;
    ERL_NIF_TERM replaced_node;
};

static table_action put_remote_fn(void *ctx, table_entry *cur, table_entry **repl)
{
    struct remote_ctx *c = ctx;
    nentry *e = (nentry *)cur;
    if (e != NULL && e->state == ST_ACTIVE && !e->moving) {
        c->result = 2;
        peek_fn(&c->p, cur);
        return TABLE_KEEP;
    }
    if (e != NULL && e->state == ST_CLAIMED) {
        c->wenv = e->wenv;
        c->waiters = e->waiters;
        e->wenv = NULL;
    }
    c->replaced_state = e ? e->state : 0;
    c->replaced_node = e ? e->node : 0;
    c->result = 0;
    *repl = &c->mine->te;
    return TABLE_PUT;
}

/* put_remote(Table, Key, Node, Pid, Inc) -> new | replaced | {error, {local, Pid}}
 * Stores the replica of a worker living on another node, replacing an older replica, a
 * claim (whose waiters get the remote pid) or a local worker that is moving away; a live
 * local worker is not replaced: that is a conflict for the caller to resolve. */
static ERL_NIF_TERM nif_put_remote(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    GET_TABLE(nt, argv[0]);
    ErlNifUInt64 inc;
    if (!enif_is_atom(env, argv[2]) || !enif_is_pid(env, argv[3]) ||
        !enif_get_uint64(env, argv[4], &inc))
        return enif_make_badarg(env);
    GET_KEY(k, h, argv[1]);
    ErlNifBinary pb;
    if (!enif_term_to_binary(env, argv[3], &pb)) {
        kbuf_free(&k);
        return raise_for(env, SHOAL_ENOMEM);
    }
    nentry *e = entry_new(nt, &k, h, ST_REMOTE, pb.size);
    kbuf_free(&k);
    if (e == NULL) {
        enif_release_binary(&pb);
        return raise_for(env, SHOAL_ENOMEM);
    }
    memcpy(e->key + e->te.klen, pb.data, pb.size);
    e->rpid_len = (uint32_t)pb.size;
    enif_release_binary(&pb);
    e->node = argv[2];
    e->incarnation = inc;
    struct remote_ctx c = {.mine = e};
    c.p.env = env;
    int rc = table_update(nt->t, h, e->key, e->te.klen, put_remote_fn, &c);
    if (rc != 0 || c.result != 0) enif_release_resource(e);
    if (rc != 0) return raise_for(env, rc);
    if (c.result == 2)
        return enif_make_tuple2(env, A_ERROR,
                                enif_make_tuple2(env, enif_make_atom(env, "local"),
                                                 worker_pid(env, &c.p)));
    if (c.replaced_state != ST_REMOTE) count_in(nt, ST_REMOTE, 1);
    if (c.replaced_state == ST_ACTIVE) count_in(nt, ST_ACTIVE, -1);
    if (c.replaced_state == ST_REMOTE) node_count_add(nt, c.replaced_node, -1);
    node_count_add(nt, argv[2], 1);
    if (c.wenv != NULL) {
        notify_waiters(env, c.wenv, c.waiters, NULL, argv[3]);
        enif_free_env(c.wenv);
    }
    return c.replaced_state == 0 ? A_NEW : A_REPLACED;
}

struct delrem_ctx {
    ERL_NIF_TERM env_pid;
    ErlNifEnv *env;
    int removed;
    ERL_NIF_TERM node;
};

static table_action delete_remote_fn(void *ctx, table_entry *cur, table_entry **repl)
{
    struct delrem_ctx *c = ctx;
    (void)repl;
    nentry *e = (nentry *)cur;
    if (e == NULL || e->state != ST_REMOTE) return TABLE_KEEP;
    if (enif_compare(remote_pid(c->env, e), c->env_pid) != 0) return TABLE_KEEP;
    c->removed = 1;
    c->node = e->node;
    return TABLE_DELETE;
}

/* delete_remote(Table, Key, Pid) -> ok | not_found: drop the replica if it is still Pid. */
static ERL_NIF_TERM nif_delete_remote(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    GET_TABLE(nt, argv[0]);
    if (!enif_is_pid(env, argv[2])) return enif_make_badarg(env);
    GET_KEY(k, h, argv[1]);
    struct delrem_ctx c = {argv[2], env, 0, 0};
    int rc = table_update(nt->t, h, k.p, k.len, delete_remote_fn, &c);
    kbuf_free(&k);
    if (rc != 0) return raise_for(env, rc);
    if (!c.removed) return A_NOT_FOUND;
    count_in(nt, ST_REMOTE, -1);
    node_count_add(nt, c.node, -1);
    return A_OK;
}

struct moving_ctx {
    ErlNifPid pid;
    int on, found;
};

static table_action moving_fn(void *ctx, table_entry *cur, table_entry **repl)
{
    struct moving_ctx *c = ctx;
    (void)repl;
    nentry *e = (nentry *)cur;
    if (e != NULL && e->state == ST_ACTIVE && enif_compare_pids(&e->pid, &c->pid) == 0) {
        e->moving = (uint8_t)c->on;
        c->found = 1;
    }
    return TABLE_KEEP;
}

/* set_moving(Table, Key, Pid, Bool) -> ok | not_found: mark local worker Pid of Key as
 * migrating (a replica of its successor may then replace it), or clear the mark. */
static ERL_NIF_TERM nif_set_moving(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    GET_TABLE(nt, argv[0]);
    struct moving_ctx c = {.on = enif_is_identical(argv[3], A_TRUE)};
    if (!enif_get_local_pid(env, argv[2], &c.pid) ||
        (!c.on && !enif_is_identical(argv[3], A_FALSE)))
        return enif_make_badarg(env);
    GET_KEY(k, h, argv[1]);
    int rc = table_update(nt->t, h, k.p, k.len, moving_fn, &c);
    kbuf_free(&k);
    if (rc != 0) return raise_for(env, rc);
    return c.found ? A_OK : A_NOT_FOUND;
}

/* set_listener(Table, Pid | undefined) -> ok: who is told of local ups and downs. */
static ERL_NIF_TERM nif_set_listener(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    GET_TABLE(nt, argv[0]);
    ErlNifPid pid;
    if (enif_is_identical(argv[1], A_UNDEFINED)) {
        atomic_store(&nt->listener, 0);
        return A_OK;
    }
    if (!enif_get_local_pid(env, argv[1], &pid)) return enif_make_badarg(env);
    atomic_store(&nt->listener, (uint64_t)pid.pid);
    return A_OK;
}

/* count(Table) -> non_neg_integer(): live workers (local and replicated; not claims). */
static ERL_NIF_TERM nif_count(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    GET_TABLE(nt, argv[0]);
    long n = atomic_load(&nt->active);
    return enif_make_long(env, n < 0 ? 0 : n);
}

/* count(Table, Node | local) -> non_neg_integer(): this node's own workers (local), or the
 * replicas of Node's workers. */
static ERL_NIF_TERM nif_count_node(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    GET_TABLE(nt, argv[0]);
    if (!enif_is_atom(env, argv[1])) return enif_make_badarg(env);
    long n = argv[1] == A_LOCAL ? atomic_load(&nt->local_active) : node_count_get(nt, argv[1]);
    return enif_make_long(env, n < 0 ? 0 : n);
}

/* info(Table) -> #{entries, workers, local_workers, table_bytes} */
static ERL_NIF_TERM nif_info(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    GET_TABLE(nt, argv[0]);
    ERL_NIF_TERM keys[4] = {enif_make_atom(env, "entries"), enif_make_atom(env, "workers"),
                            enif_make_atom(env, "local_workers"),
                            enif_make_atom(env, "table_bytes")};
    ERL_NIF_TERM vals[4] = {enif_make_uint64(env, table_count(nt->t)),
                            enif_make_long(env, atomic_load(&nt->active)),
                            enif_make_long(env, atomic_load(&nt->local_active)),
                            enif_make_uint64(env, table_memory(nt->t) +
                                                      table_count(nt->t) * sizeof(nentry))};
    ERL_NIF_TERM map;
    enif_make_map_from_arrays(env, keys, vals, 4, &map);
    return map;
}

/* ------------------------------------------------------------------------------------ */
/* Yielding folds: fold(Table, Op, Arg) walks FOLD_BUDGET slots per slice and reschedules  */
/* itself with the cursor and accumulator in the argument list.                           */
/*   dump:       Arg ignored; returns [{Key, Pid}] of workers (claims skipped)             */
/*   purge_node: Arg = Node; removes every replica of Node; returns the number removed     */
/*   keys_on:    Arg = Node; returns [Key] of replicas on Node, or with Arg = local the    */
/*               keys of this node's own workers                                           */

enum { OP_DUMP = 1, OP_PURGE = 2, OP_KEYS_ON = 3 };

struct fold_ctx {
    ErlNifEnv *env;
    int op;
    ERL_NIF_TERM arg;
    ERL_NIF_TERM acc;
    long removed;
    int bad;
};

static ERL_NIF_TERM decode_key(ErlNifEnv *env, const nentry *e)
{
    ERL_NIF_TERM k;
    if (enif_binary_to_term(env, e->key, e->te.klen, &k, 0) == 0) return A_UNDEFINED;
    return k;
}

static table_action fold_fn(void *ctx, table_entry *te)
{
    struct fold_ctx *c = ctx;
    nentry *e = (nentry *)te;
    if (e->state == ST_CLAIMED) return TABLE_KEEP;
    switch (c->op) {
    case OP_DUMP: {
        ERL_NIF_TERM pid = e->state == ST_REMOTE ? remote_pid(c->env, e)
                                                 : enif_make_pid(c->env, &e->pid);
        c->acc = enif_make_list_cell(c->env, enif_make_tuple2(c->env, decode_key(c->env, e), pid),
                                     c->acc);
        return TABLE_KEEP;
    }
    case OP_KEYS_ON:
        if (e->state == ST_ACTIVE ? c->arg == A_LOCAL : e->node == c->arg) c->acc = enif_make_list_cell(c->env, decode_key(c->env, e), c->acc);
        return TABLE_KEEP;
    case OP_PURGE:
        if (e->state == ST_REMOTE && e->node == c->arg) {
            c->removed++;
            return TABLE_DELETE;
        }
        return TABLE_KEEP;
    }
    return TABLE_KEEP;
}

static ERL_NIF_TERM nif_fold(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);

/* fold_slice(Table, Op, Arg, Seg, Slot, Acc) - one slice, then reschedule or finish. */
static ERL_NIF_TERM nif_fold_slice(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    GET_TABLE(nt, argv[0]);
    int op;
    unsigned seg, slot;
    if (!enif_get_int(env, argv[1], &op) || !enif_get_uint(env, argv[3], &seg) ||
        !enif_get_uint(env, argv[4], &slot))
        return enif_make_badarg(env);
    struct fold_ctx c = {env, op, argv[2], argv[5], 0, 0};
    if (op == OP_PURGE && !enif_get_long(env, argv[5], &c.removed)) return enif_make_badarg(env);
    long before = c.removed;
    table_cursor cur = {seg, slot};
    int more = table_fold(nt->t, &cur, FOLD_BUDGET, op == OP_PURGE, fold_fn, &c);
    if (op == OP_PURGE) {
        count_in(nt, ST_REMOTE, -(c.removed - before));
        node_count_add(nt, argv[2], -(c.removed - before));
        c.acc = enif_make_long(env, c.removed);
    }
    if (!more) return c.acc;
    ERL_NIF_TERM next[6] = {argv[0], argv[1], argv[2], enif_make_uint(env, cur.segment),
                            enif_make_uint(env, cur.slot), c.acc};
    (void)enif_consume_timeslice(env, 25);
    return enif_schedule_nif(env, "fold_slice", 0, nif_fold_slice, 6, next);
}

/* fold(Table, Op, Arg) with Op in dump | purge_node | keys_on */
static ERL_NIF_TERM nif_fold(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    GET_TABLE(nt, argv[0]);
    (void)nt;
    int op;
    if (enif_is_identical(argv[1], enif_make_atom(env, "dump")))
        op = OP_DUMP;
    else if (enif_is_identical(argv[1], enif_make_atom(env, "purge_node")) && enif_is_atom(env, argv[2]))
        op = OP_PURGE;
    else if (enif_is_identical(argv[1], enif_make_atom(env, "keys_on")) && enif_is_atom(env, argv[2]))
        op = OP_KEYS_ON;
    else
        return enif_make_badarg(env);
    ERL_NIF_TERM next[6] = {argv[0], enif_make_int(env, op), argv[2], enif_make_uint(env, 0),
                            enif_make_uint(env, 0),
                            op == OP_PURGE ? enif_make_long(env, 0) : enif_make_list(env, 0)};
    return nif_fold_slice(env, 6, next);
}

/* ------------------------------------------------------------------------------------ */
/* Keys and meters                                                                        */

/* canonical(Key) -> binary(): the canonical key bytes (see keyhash.h). */
static ERL_NIF_TERM nif_canonical(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    GET_KEY(k, h, argv[0]);
    (void)h;
    ERL_NIF_TERM bin;
    unsigned char *p = enif_make_new_binary(env, k.len, &bin);
    memcpy(p, k.p, k.len);
    kbuf_free(&k);
    return bin;
}

/* hash(Key) -> non_neg_integer(): keyhash_hash64 of the canonical bytes. */
static ERL_NIF_TERM nif_hash(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    GET_KEY(k, h, argv[0]);
    kbuf_free(&k);
    return enif_make_uint64(env, h);
}

/* meter_new() -> Meter */
static ERL_NIF_TERM nif_meter_new(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    (void)argv;
    meter_res *m = enif_alloc_resource(METER_RT, sizeof *m);
    if (m == NULL) return raise_for(env, SHOAL_ENOMEM);
    ratemeter_init(&m->m);
    m->lock = enif_mutex_create("shoal_meter");
    if (m->lock == NULL) {
        enif_release_resource(m);
        return raise_for(env, SHOAL_ENOMEM);
    }
    ERL_NIF_TERM t = enif_make_resource(env, m);
    enif_release_resource(m);
    return t;
}

static int get_meter(ErlNifEnv *env, ERL_NIF_TERM t, meter_res **m)
{
    return enif_get_resource(env, t, METER_RT, (void **)m) && (*m)->lock != NULL;
}

/* meter_add(Meter, N) -> ok */
static ERL_NIF_TERM nif_meter_add(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    meter_res *m;
    ErlNifUInt64 n;
    if (!get_meter(env, argv[0], &m) || !enif_get_uint64(env, argv[1], &n))
        return enif_make_badarg(env);
    int64_t now = enif_monotonic_time(ERL_NIF_MSEC);
    enif_mutex_lock(m->lock);
    ratemeter_add(&m->m, now, n);
    enif_mutex_unlock(m->lock);
    return A_OK;
}

/* meter_sum(Meter, Seconds) -> non_neg_integer(): events in the last Seconds (1..60). */
static ERL_NIF_TERM nif_meter_sum(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    meter_res *m;
    int secs;
    if (!get_meter(env, argv[0], &m) || !enif_get_int(env, argv[1], &secs) || secs < 1 ||
        secs > RATEMETER_SECONDS)
        return enif_make_badarg(env);
    int64_t now = enif_monotonic_time(ERL_NIF_MSEC);
    enif_mutex_lock(m->lock);
    uint64_t s = ratemeter_sum(&m->m, now, secs);
    enif_mutex_unlock(m->lock);
    return enif_make_uint64(env, s);
}

/* ------------------------------------------------------------------------------------ */
/* Load / upgrade / unload                                                                */

static int open_types(ErlNifEnv *env, ErlNifResourceFlags flags)
{
    ErlNifResourceTypeInit entry_init = {.dtor = entry_dtor, .stop = NULL, .down = entry_down};
    ErlNifResourceTypeInit table_init = {.dtor = table_dtor};
    ErlNifResourceTypeInit meter_init = {.dtor = meter_dtor};
    TABLE_RT = enif_open_resource_type_x(env, "shoal_table", &table_init, flags, NULL);
    ENTRY_RT = enif_open_resource_type_x(env, "shoal_entry", &entry_init, flags, NULL);
    METER_RT = enif_open_resource_type_x(env, "shoal_meter", &meter_init, flags, NULL);
    if (!TABLE_RT || !ENTRY_RT || !METER_RT) return -1;
    A_OK = enif_make_atom(env, "ok");
    A_ERROR = enif_make_atom(env, "error");
    A_UNDEFINED = enif_make_atom(env, "undefined");
    A_CLAIMED = enif_make_atom(env, "claimed");
    A_WAIT = enif_make_atom(env, "wait");
    A_TRUE = enif_make_atom(env, "true");
    A_FALSE = enif_make_atom(env, "false");
    A_NOPROC = enif_make_atom(env, "noproc");
    A_ALREADY = enif_make_atom(env, "already_registered");
    A_NOT_FOUND = enif_make_atom(env, "not_found");
    A_REMOTE = enif_make_atom(env, "remote");
    A_RETRY = enif_make_atom(env, "retry");
    A_CLAIM_MSG = enif_make_atom(env, "$shoal_claim");
    A_ACTIVE = enif_make_atom(env, "active");
    A_LOCAL = enif_make_atom(env, "local");
    A_UP = enif_make_atom(env, "$shoal_up");
    A_DOWN = enif_make_atom(env, "$shoal_down");
    A_NEW = enif_make_atom(env, "new");
    A_REPLACED = enif_make_atom(env, "replaced");
    return 0;
}

/* Keep this copy of the library mapped for the life of the VM. Tables store a pointer to
 * entry_release (table_ops) and outlive the library instance that made them: after an
 * upgrade to a library at another path (a release upgrade), purging the old module would
 * otherwise unmap code that old tables still call. 0 or -1. */
static int pin_library(void)
{
    Dl_info info;
    if (dladdr((void *)&entry_release, &info) == 0 || info.dli_fname == NULL) return -1;
    return dlopen(info.dli_fname, RTLD_NOW | RTLD_NODELETE) != NULL ? 0 : -1;
}

/* The instance counter is the first loaded copy's: priv points to it across upgrades,
 * whichever path the new copy was loaded from. */
static int on_load(ErlNifEnv *env, void **priv, ERL_NIF_TERM info)
{
    (void)info;
    if (pin_library() != 0 || open_types(env, ERL_NIF_RT_CREATE) != 0) return -1;
    atomic_fetch_add(&load_count, 1);
    *priv = &load_count;
    return 0;
}

static int on_upgrade(ErlNifEnv *env, void **priv, void **old_priv, ERL_NIF_TERM info)
{
    (void)info;
    if (pin_library() != 0 || open_types(env, ERL_NIF_RT_CREATE | ERL_NIF_RT_TAKEOVER) != 0)
        return -1;
    atomic_fetch_add((atomic_int *)*old_priv, 1);
    *priv = *old_priv;
    return 0;
}

static void on_unload(ErlNifEnv *env, void *priv)
{
    (void)env;
    atomic_fetch_sub((atomic_int *)priv, 1);
}

/* load_info() -> number of loaded instances of this library (tests check upgrades). */
static ERL_NIF_TERM nif_load_info(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    (void)argv;
    return enif_make_int(env, atomic_load((atomic_int *)enif_priv_data(env)));
}

static ErlNifFunc funcs[] = {
    {"new", 1, nif_new, 0},
    {"delete", 1, nif_delete, ERL_NIF_DIRTY_JOB_CPU_BOUND},
    {"whereis", 2, nif_whereis, 0},
    {"lookup", 2, nif_lookup, 0},
    {"route", 3, nif_route, 0},
    {"claim", 3, nif_claim, 0},
    {"register", 3, nif_register, 0},
    {"register", 4, nif_register, 0},
    {"set_moving", 4, nif_set_moving, 0},
    {"set_listener", 2, nif_set_listener, 0},
    {"unregister", 3, nif_unregister, 0},
    {"release_claim", 2, nif_release_claim, 0},
    {"put_remote", 5, nif_put_remote, 0},
    {"delete_remote", 3, nif_delete_remote, 0},
    {"count", 1, nif_count, 0},
    {"count", 2, nif_count_node, 0},
    {"info", 1, nif_info, 0},
    {"fold", 3, nif_fold, 0},
    {"canonical", 1, nif_canonical, 0},
    {"hash", 1, nif_hash, 0},
    {"meter_new", 0, nif_meter_new, 0},
    {"meter_add", 2, nif_meter_add, 0},
    {"meter_sum", 2, nif_meter_sum, 0},
    {"load_info", 0, nif_load_info, 0},
};

ERL_NIF_INIT(shoal_nif, funcs, on_load, NULL, on_upgrade, on_unload)
