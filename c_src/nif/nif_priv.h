/* nif_priv.h - what the files of the shoal_nif library share: the private data made in
 * `load` (every atom and resource type), the table and entry structures, and the entry
 * points of each file. One concern per file:
 *
 *   shoal_nif.c     load / upgrade / unload, the function table, hlc/0, load_info/0
 *   nif_key.c       canonical key bytes straight from terms; node names; canonical/1,
 *                   hash/1
 *   nif_table.c     the table resource, lookups (whereis, lookup, route), counts, info
 *   nif_registry.c  claims, register, unregister, moving, replicas, the owner monitors
 *   nif_pidstore.c  how a replica keeps its remote pid
 *   nif_fold.c      the yielding walks
 *   nif_meter.c     the rate meters
 *
 * Every C symbol here is internal: the library is built with -fvisibility=hidden and only
 * the NIF init function is exported. */
#ifndef SHOAL_NIF_PRIV_H
#define SHOAL_NIF_PRIV_H

#include <erl_nif.h>
#include <stdatomic.h>
#include <stdint.h>

#include "keyhash.h"
#include "registry.h"
#include "shoal_err.h"

/* ---- private data ----------------------------------------------------------------------- */

/* What outlives an upgrade: made by the first load, handed to every later instance. */
typedef struct nif_shared {
    atomic_int loads;     /* instances of the library loaded (2 during an upgrade) */
    registry_clock clock; /* the node's clock: one per VM, shared by every table */
} nif_shared;

#define NIF_ATOMS(X)                                                                           \
    X(ok, "ok") X(error, "error") X(undefined, "undefined") X(true_, "true")                   \
    X(false_, "false") X(claimed, "claimed") X(wait, "wait") X(nowait, "nowait")               \
    X(claim, "claim") X(over, "over") X(none, "none") X(noproc, "noproc")                      \
    X(not_claimed, "not_claimed") X(already_registered, "already_registered")                  \
    X(newer, "newer") X(not_found, "not_found") X(local, "local") X(remote, "remote")          \
    X(tomb, "tomb") X(retry, "retry") X(stored, "stored") X(stale, "stale")                    \
    X(conflict, "conflict") X(removed, "removed") X(tombstoned, "tombstoned")                  \
    X(claim_msg, "$shoal_claim") X(up_msg, "$shoal_up") X(down_msg, "$shoal_down")            \
    X(replaced_msg, "$shoal_replaced") X(owned, "owned") X(dump, "dump")                     \
    X(keys_on, "keys_on") X(purge_node, "purge_node") X(sweep_node, "sweep_node")              \
    X(sweep_tombs, "sweep_tombs") X(entries, "entries") X(workers, "workers")                  \
    X(local_workers, "local_workers") X(remote_workers, "remote_workers")                      \
    X(claims, "claims") X(tombs, "tombs") X(nodes, "nodes") X(table_bytes, "table_bytes")      \
    X(enomem, "enomem")

typedef struct nif_atoms {
#define X(field, name) ERL_NIF_TERM field;
    NIF_ATOMS(X)
#undef X
} nif_atoms;

typedef struct nif_priv {
    nif_shared *shared;
    ErlNifResourceType *table_rt; /* ntab_res: the Erlang handle of a table */
    ErlNifResourceType *local_rt; /* nlocal: a LOCAL entry (a resource, to be monitored) */
    ErlNifResourceType *meter_rt; /* meter_res */
    nif_atoms a;
} nif_priv;

static inline nif_priv *priv_of(ErlNifEnv *env)
{
    return (nif_priv *)enif_priv_data(env);
}

/* ---- tables and entries ----------------------------------------------------------------- */

/* A table. Reference-counted by its Erlang resource and by every LOCAL entry, because a
 * monitor's down callback may run after the Erlang side dropped the table; `life` guards
 * `r` against being freed under a down callback. */
#define PENDING_MAX 8

typedef struct ntab {
    registry *r;                /* NULL once freed */
    ErlNifRWLock *life;         /* write: freeing r; read: down callbacks */
    atomic_int refs;            /* the resource + every LOCAL entry */
    atomic_int dead;            /* shoal_nif:delete/1 was called */
    _Atomic uint64_t listener;  /* local pid word told of local changes; 0 = none */
    atomic_long entry_bytes;    /* bytes of the entries in the table */
    ErlNifMutex *pend_lock;     /* guards pending */
    registry_node *pending[PENDING_MAX]; /* nodes whose pid store waits for compaction
                                            (each held) */
    atomic_int npending;
    ErlNifRWLock *adm_lock;     /* guards the admitted nodes (taken under a segment lock) */
    int admitting;              /* admit/3 was called: only admitted nodes' replicas */
    ERL_NIF_TERM *admitted;     /* node atoms (immortal), nadm of cap */
    int nadm, adm_cap;
} ntab;

typedef struct ntab_res {
    ntab *nt;
} ntab_res;

/* te.user of every entry: how it was allocated (low 2 bits), and for a replica the
 * generation of its pid store that holds its pid (the rest, see nif_pidstore.c). */
enum { NE_LOCAL = 1, NE_CLAIM = 2, NE_PLAIN = 3 };
#define NE_KIND(e) ((e)->te.user & 3u)

/* A LOCAL entry: a resource, so the worker can be monitored. */
typedef struct nlocal {
    registry_entry re;   /* first */
    ntab *nt;            /* counted reference */
    ErlNifMonitor mon;   /* on the worker */
    unsigned char key[]; /* canonical key bytes */
} nlocal;

/* A CLAIMED entry (enif_alloc); it may become a TOMB in place. */
typedef struct nclaim {
    registry_entry re;    /* first */
    ErlNifEnv *wenv;      /* holds `waiters`; NULL until the first waiter */
    ERL_NIF_TERM waiters; /* [{Pid, Ref}] */
    unsigned char key[];
} nclaim;

/* A REMOTE or TOMB entry (enif_alloc): just the key. A replica's pid lives in its node's
 * pid store (nif_pidstore.c); te.fast is that term. */
typedef struct nplain {
    registry_entry re; /* first */
    unsigned char key[];
} nplain;

/* A node name's payload (registry_node.payload): its atom and its pid store. */
typedef struct nnode {
    ERL_NIF_TERM atom;  /* the node's atom (atoms live as long as the VM) */
    ErlNifMutex *lock;  /* guards the rest; taken under segment locks, never around them */
    ErlNifEnv *env;     /* the pids of the node's replicas (process-independent) */
    unsigned gen;       /* generation of env (14 bits), recorded in each replica */
    size_t live, dead;  /* terms in env still referenced / abandoned */
    int compacting;     /* a compaction is queued or running */
} nnode;

/* ---- nif_key.c -------------------------------------------------------------------------- */

#define STACK_KEY 256

typedef struct kbuf {
    unsigned char *p;
    size_t len, cap;
    unsigned char stack[STACK_KEY];
} kbuf;

/* Encode `key` into b (with the leading 131) and hash it: 0 or a SHOAL_E* code. On success
 * free b with kbuf_free. */
int key_encode(ErlNifEnv *env, ERL_NIF_TERM key, kbuf *b, uint64_t *hash);
void kbuf_free(kbuf *b);

/* The UTF-8 bytes of atom `a` into b (no tag): 0, or SHOAL_EINVAL when `a` is no atom. */
int key_atom_name(ErlNifEnv *env, ERL_NIF_TERM a, kbuf *b);

/* The last atoms a walk decoded (key_decode's cache; zero it before the first use). */
#define KEY_ATOMS 8
#define KEY_ATOM_MAX 32
typedef struct key_atoms {
    int n;
    unsigned next;
    uint16_t len[KEY_ATOMS];
    unsigned char name[KEY_ATOMS][KEY_ATOM_MAX];
    ERL_NIF_TERM atom[KEY_ATOMS];
} key_atoms;

/* The term whose canonical bytes are (p, len), made in env (`undefined` if they do not
 * decode, which cannot happen for bytes key_encode wrote). atoms may be NULL. */
ERL_NIF_TERM key_decode(ErlNifEnv *env, const nif_atoms *a, const unsigned char *p, size_t len,
                        key_atoms *atoms);

/* The node name of local pid word `w` (its atom's UTF-8 bytes) into b: 0 or SHOAL_EINVAL. */
int key_pid_node(ErlNifEnv *env, uint64_t w, kbuf *b);

/* The atom named by the UTF-8 bytes (p, len), or 0 if it cannot be made. */
ERL_NIF_TERM key_make_atom(ErlNifEnv *env, const unsigned char *p, size_t len);

ERL_NIF_TERM nif_canonical(ErlNifEnv *, int, const ERL_NIF_TERM[]);
ERL_NIF_TERM nif_hash(ErlNifEnv *, int, const ERL_NIF_TERM[]);

/* ---- nif_table.c ------------------------------------------------------------------------ */

/* The live table behind term t, or NULL (not a table, or deleted). */
ntab *ntab_of(ErlNifEnv *env, ERL_NIF_TERM t);
void ntab_unref(ntab *nt);
/* badarg, or an `enomem` error for SHOAL_ENOMEM. */
/* Send {Tag, Key, ...} to the table's listener, if any (Key in caller env). */
void tell_listener(ErlNifEnv *env, ntab *nt, ERL_NIF_TERM msg_in_caller_env);
/* The node payload's atom (pidstore_node_init made it). */
static inline ERL_NIF_TERM node_atom(const registry_node *n)
{
    return ((const nnode *)n->payload)->atom;
}
/* The interned node for atom `a` (one reference), or NULL with *rc. create: intern if new. */
registry_node *node_of(ErlNifEnv *env, ntab *nt, ERL_NIF_TERM a, int create, int *rc);
/* Every entry leaving a table ends here. */
void entry_release(void *ctx, registry_entry *e);
/* Bytes an entry takes (for info's table_bytes). */
size_t entry_size(const registry_entry *e);
/* Microseconds of Erlang system time; milliseconds of Erlang monotonic time. */
static inline uint64_t now_us(void)
{
    return (uint64_t)(enif_monotonic_time(ERL_NIF_USEC) + enif_time_offset(ERL_NIF_USEC));
}

static inline int64_t now_ms(void)
{
    return (int64_t)enif_monotonic_time(ERL_NIF_MSEC);
}

static inline ERL_NIF_TERM raise_for(ErlNifEnv *env, int rc)
{
    if (rc == SHOAL_ENOMEM) return enif_raise_exception(env, priv_of(env)->a.enomem);
    return enif_make_badarg(env);
}


ERL_NIF_TERM nif_new(ErlNifEnv *, int, const ERL_NIF_TERM[]);
ERL_NIF_TERM nif_delete(ErlNifEnv *, int, const ERL_NIF_TERM[]);
ERL_NIF_TERM nif_whereis(ErlNifEnv *, int, const ERL_NIF_TERM[]);
ERL_NIF_TERM nif_lookup(ErlNifEnv *, int, const ERL_NIF_TERM[]);
ERL_NIF_TERM nif_route(ErlNifEnv *, int, const ERL_NIF_TERM[]);
ERL_NIF_TERM nif_set_listener(ErlNifEnv *, int, const ERL_NIF_TERM[]);
ERL_NIF_TERM nif_count(ErlNifEnv *, int, const ERL_NIF_TERM[]);
ERL_NIF_TERM nif_count_node(ErlNifEnv *, int, const ERL_NIF_TERM[]);
ERL_NIF_TERM nif_info(ErlNifEnv *, int, const ERL_NIF_TERM[]);
void ntab_dtor(ErlNifEnv *env, void *obj);

/* ---- nif_registry.c --------------------------------------------------------------------- */

ERL_NIF_TERM nif_claim(ErlNifEnv *, int, const ERL_NIF_TERM[]);
ERL_NIF_TERM nif_release_claim(ErlNifEnv *, int, const ERL_NIF_TERM[]);
ERL_NIF_TERM nif_register(ErlNifEnv *, int, const ERL_NIF_TERM[]);
ERL_NIF_TERM nif_unregister(ErlNifEnv *, int, const ERL_NIF_TERM[]);
ERL_NIF_TERM nif_set_moving(ErlNifEnv *, int, const ERL_NIF_TERM[]);
ERL_NIF_TERM nif_put_remote(ErlNifEnv *, int, const ERL_NIF_TERM[]);
ERL_NIF_TERM nif_put_successor(ErlNifEnv *, int, const ERL_NIF_TERM[]);
ERL_NIF_TERM nif_put_synced(ErlNifEnv *, int, const ERL_NIF_TERM[]);
ERL_NIF_TERM nif_remove_remote(ErlNifEnv *, int, const ERL_NIF_TERM[]);
void local_dtor(ErlNifEnv *env, void *obj);
void local_down(ErlNifEnv *env, void *obj, ErlNifPid *pid, ErlNifMonitor *mon);
/* Free a claim's waiters env (a claim that leaves without being resolved). */
static inline void claim_free_waiters(nclaim *c)
{
    if (c->wenv != NULL) enif_free_env(c->wenv);
    c->wenv = NULL;
}


/* ---- nif_pidstore.c --------------------------------------------------------------------- */

/* registry hooks: a node name is interned (arg: its atom) / its last entry left. */
int table_admitted(ntab *nt, const registry_node *node);
ERL_NIF_TERM nif_admit(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
int pidstore_node_init(void *ctx, registry_node *n, void *arg);
void pidstore_node_fini(void *ctx, registry_node *n);
/* Keep `pid` (a term of the caller's env) in the store of replica e's node and point
 * e->re.te.fast at it. Runs under the key's segment lock, before e is stored. */
void pidstore_put(nplain *e, ERL_NIF_TERM pid);
/* The pid of a replica with payload word w, copied into env. Call under the key's segment
 * lock (which keeps the term from being moved or freed meanwhile). */
static inline ERL_NIF_TERM pidstore_get(ErlNifEnv *env, uint64_t w)
{
    return enif_make_copy(env, (ERL_NIF_TERM)w);
}
/* Replica e is leaving table nt (its node still valid): its term is dead from now on. */
void pidstore_drop(ntab *nt, nplain *e);
/* `result`, or, if a node's store is due for compaction, a dirty continuation that
 * compacts it and then returns `result`. tterm is the table's term. */
ERL_NIF_TERM pidstore_after(ErlNifEnv *env, ntab *nt, ERL_NIF_TERM tterm, ERL_NIF_TERM result);
/* Give up the compactions still queued (the table is being emptied or freed). */
void pidstore_forget(ntab *nt);
/* Bytes the stores of nt's nodes hold. */
size_t pidstore_bytes(ntab *nt);

/* ---- nif_fold.c ------------------------------------------------------------------------- */

ERL_NIF_TERM nif_fold(ErlNifEnv *, int, const ERL_NIF_TERM[]);

/* ---- nif_meter.c ------------------------------------------------------------------------ */

ERL_NIF_TERM nif_meter_new(ErlNifEnv *, int, const ERL_NIF_TERM[]);
ERL_NIF_TERM nif_meter_add(ErlNifEnv *, int, const ERL_NIF_TERM[]);
ERL_NIF_TERM nif_meter_sum(ErlNifEnv *, int, const ERL_NIF_TERM[]);
void meter_dtor(ErlNifEnv *env, void *obj);


/* Shorthands for the NIFs. */
#define GET_TABLE(nt, term)                                                                    \
    ntab *nt = ntab_of(env, term);                                                            \
    if (nt == NULL) return enif_make_badarg(env)

#define GET_KEY(kb, k, term)                                                                   \
    kbuf kb;                                                                                   \
    registry_key k;                                                                            \
    do {                                                                                       \
        int rc_ = key_encode(env, term, &kb, &k.hash);                                         \
        if (rc_ != 0) return raise_for(env, rc_);                                              \
        k.bytes = kb.p;                                                                        \
        k.len = kb.len;                                                                        \
    } while (0)

#endif
