/* nif_registry.c - the writes: claims, register, unregister, moving, replicas, tombs, and
 * the owner monitors that remove a LOCAL entry when its worker dies.
 *
 * Each NIF prepares what the registry operation may store (an entry with the key inline),
 * runs the operation (registry.c decides under the segment's write lock, calling the hooks
 * below to copy out pids or take out a claim's waiters), and only then, with no lock held,
 * sends what the change calls for: the claim's waiters, the table's listener. */
#include <string.h>

#include "nif_priv.h"
#include "shoal_err.h"

/* ---- entries ------------------------------------------------------------------------------ */

static void entry_key(registry_entry *re, unsigned char *dst, const registry_key *k, int user)
{
    memcpy(dst, k->bytes, k->len);
    registry_entry_init(re, k->hash, dst, (uint32_t)k->len);
    re->te.user = (uint16_t)user;
}

static nclaim *claim_new(ntab *nt, const registry_key *k, uint64_t claimer)
{
    nclaim *c = enif_alloc(sizeof *c + k->len);
    if (c == NULL) return NULL;
    entry_key(&c->re, c->key, k, NE_CLAIM);
    c->re.te.fast = claimer;
    c->wenv = NULL;
    c->waiters = 0;
    atomic_fetch_add_explicit(&nt->entry_bytes, (long)entry_size(&c->re), memory_order_relaxed);
    return c;
}

static nplain *plain_new(ntab *nt, const registry_key *k)
{
    nplain *e = enif_alloc(sizeof *e + k->len);
    if (e == NULL) return NULL;
    entry_key(&e->re, e->key, k, NE_PLAIN);
    atomic_fetch_add_explicit(&nt->entry_bytes, (long)entry_size(&e->re), memory_order_relaxed);
    return e;
}

/* A claim or plain entry the operation did not store. */
static void plain_discard(ntab *nt, registry_entry *e)
{
    atomic_fetch_sub_explicit(&nt->entry_bytes, (long)entry_size(e), memory_order_relaxed);
    enif_free(e);
}

void local_dtor(ErlNifEnv *env, void *obj)
{
    (void)env;
    nlocal *e = obj;
    if (e->nt != NULL) ntab_unref(e->nt);
}

/* A LOCAL entry for worker pid, monitored. NULL with *noproc when pid is not alive. */
static nlocal *local_new(ErlNifEnv *env, ntab *nt, const registry_key *k, ErlNifPid *pid,
                         int *noproc)
{
    nlocal *e = enif_alloc_resource(priv_of(env)->local_rt, sizeof *e + k->len);
    *noproc = 0;
    if (e == NULL) return NULL;
    entry_key(&e->re, e->key, k, NE_LOCAL);
    e->re.te.fast = (uint64_t)pid->pid; /* a local pid is an immediate: never 0 */
    e->nt = nt;
    atomic_fetch_add(&nt->refs, 1);
    if (enif_monitor_process(env, e, pid, &e->mon) != 0) {
        *noproc = 1;
        enif_release_resource(e);
        return NULL;
    }
    atomic_fetch_add_explicit(&nt->entry_bytes, (long)entry_size(&e->re), memory_order_relaxed);
    return e;
}

/* A LOCAL entry that was never stored. */
static void local_discard(ErlNifEnv *env, nlocal *e)
{
    atomic_fetch_sub_explicit(&e->nt->entry_bytes, (long)entry_size(&e->re),
                              memory_order_relaxed);
    (void)enif_demonitor_process(env, e, &e->mon);
    enif_release_resource(e);
}

/* ---- hooks: what an operation copies out under the lock ----------------------------------- */

struct seen {
    ErlNifEnv *env;
    nif_priv *P;
    ERL_NIF_TERM ref;      /* claim: the waiter's Ref (0 for nowait) */
    ErlNifPid self;        /* claim: the caller */
    ERL_NIF_TERM pid;      /* the pid of the entry seen (worker or claimer) */
    ERL_NIF_TERM node;     /* its node (a replica) */
    uint64_t vsn;          /* its version */
    ErlNifEnv *wenv;       /* an ending claim's waiters, to tell after the lock */
    ERL_NIF_TERM waiters;
    ERL_NIF_TERM new_pid;  /* put_remote: the replica's pid */
    kbuf self_name;        /* put_remote: this node's name, when a tie needed it */
    int have_name;
    ntab *nt;              /* put_remote: the table (its admitted nodes) */
};

static ERL_NIF_TERM pid_of(ErlNifEnv *env, const registry_entry *e)
{
    return registry_state_of(e) == REGISTRY_REMOTE ? pidstore_get(env, e->te.fast)
                                                   : (ERL_NIF_TERM)e->te.fast;
}

static void hook_seen(void *ctx, const registry_entry *cur)
{
    struct seen *s = ctx;
    s->pid = pid_of(s->env, cur);
    s->vsn = cur->vsn;
    if (registry_state_of(cur) == REGISTRY_REMOTE) s->node = node_atom(cur->node);
}

/* claim: as hook_seen, and a waiter with a Ref queues on the claim it found. */
static void hook_seen_wait(void *ctx, const registry_entry *cur)
{
    struct seen *s = ctx;
    hook_seen(ctx, cur);
    if (registry_state_of(cur) != REGISTRY_CLAIMED || s->ref == 0) return;
    nclaim *c = (nclaim *)cur; /* hooks run under the write lock: changing it is safe */
    if (c->wenv == NULL) {
        /* The first waiter: claims that nobody races for never pay for an env. */
        if ((c->wenv = enif_alloc_env()) == NULL) return;
        c->waiters = enif_make_list(c->wenv, 0);
    }
    ERL_NIF_TERM w = enif_make_tuple2(c->wenv, enif_make_pid(c->wenv, &s->self),
                                      enif_make_copy(c->wenv, s->ref));
    c->waiters = enif_make_list_cell(c->wenv, w, c->waiters);
}

static void hook_ending(void *ctx, registry_entry *claim)
{
    struct seen *s = ctx;
    nclaim *c = (nclaim *)claim;
    s->wenv = c->wenv;
    s->waiters = c->waiters;
    c->wenv = NULL;
}

static void hook_storing(void *ctx, registry_entry *mine)
{
    struct seen *s = ctx;
    pidstore_put((nplain *)mine, s->new_pid);
}

static int hook_admitted(void *ctx, const registry_node *node)
{
    return table_admitted(((struct seen *)ctx)->nt, node);
}

static int hook_self_name(void *ctx, const registry_entry *local, const unsigned char **name,
                          size_t *len)
{
    struct seen *s = ctx;
    if (!s->have_name) {
        if (key_pid_node(s->env, local->te.fast, &s->self_name) != 0) return -1;
        s->have_name = 1;
    }
    *name = s->self_name.p;
    *len = s->self_name.len;
    return 0;
}

/* Send {'$shoal_claim', Ref, Result} to every waiter of an ended claim, then free them.
 * Result lives in the caller's env. */
static void tell_waiters(ErlNifEnv *env, struct seen *s, ERL_NIF_TERM result)
{
    if (s->wenv == NULL) return;
    ERL_NIF_TERM head, list = s->waiters;
    while (enif_get_list_cell(s->wenv, list, &head, &list)) {
        int ar;
        const ERL_NIF_TERM *el;
        ErlNifPid to;
        if (!enif_get_tuple(s->wenv, head, &ar, &el) || ar != 2 ||
            !enif_get_local_pid(s->wenv, el[0], &to))
            continue;
        ERL_NIF_TERM msg = enif_make_tuple3(env, s->P->a.claim_msg, enif_make_copy(env, el[1]),
                                            result);
        (void)enif_send(env, &to, NULL, msg);
    }
    enif_free_env(s->wenv);
    s->wenv = NULL;
}

static void seen_init(struct seen *s, ErlNifEnv *env)
{
    memset(s, 0, sizeof *s);
    s->env = env;
    s->P = priv_of(env);
}

/* ---- claims ------------------------------------------------------------------------------- */

static void worker_fast(void *ctx, uint64_t word, registry_state st)
{
    struct {
        ErlNifEnv *env;
        ERL_NIF_TERM pid;
    } *w = ctx;
    if (st == REGISTRY_LOCAL)
        w->pid = (ERL_NIF_TERM)word;
    else if (st == REGISTRY_REMOTE)
        w->pid = pidstore_get(w->env, word);
}

/* claim(Table, Key, Ref | nowait) -> claimed | {wait, Claimer} | {ok, Pid} */
ERL_NIF_TERM nif_claim(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    struct seen s;
    seen_init(&s, env);
    nif_atoms *a = &s.P->a;
    GET_TABLE(nt, argv[0]);
    if (enif_is_ref(env, argv[2]))
        s.ref = argv[2];
    else if (!enif_is_identical(argv[2], a->nowait))
        return enif_make_badarg(env);
    if (enif_self(env, &s.self) == NULL) return enif_make_badarg(env);
    GET_KEY(kb, k, argv[1]);
    /* A key with a worker (the common case for a racer) costs no claim entry. */
    struct {
        ErlNifEnv *env;
        ERL_NIF_TERM pid;
    } w = {env, 0};
    if (registry_get_fast(nt->r, &k, worker_fast, &w) == 0 && w.pid != 0) {
        kbuf_free(&kb);
        return enif_make_tuple2(env, a->ok, w.pid);
    }
    nclaim *mine = claim_new(nt, &k, (uint64_t)s.self.pid);
    if (mine == NULL) {
        kbuf_free(&kb);
        return raise_for(env, SHOAL_ENOMEM);
    }
    registry_op op = {.seen = hook_seen_wait, .ctx = &s};
    registry_out out;
    int rc = registry_claim(nt->r, &k, &mine->re, &op, &out);
    kbuf_free(&kb);
    if (!out.stored) plain_discard(nt, &mine->re);
    switch (rc) {
    case REGISTRY_OK: return a->claimed;
    case REGISTRY_WAIT: return enif_make_tuple2(env, a->wait, s.pid);
    case REGISTRY_WORKER: return enif_make_tuple2(env, a->ok, s.pid);
    default: return raise_for(env, rc);
    }
}

/* release_claim(Table, Key, retry | {error, Reason}) -> ok | not_found */
ERL_NIF_TERM nif_release_claim(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    struct seen s;
    seen_init(&s, env);
    nif_atoms *a = &s.P->a;
    GET_TABLE(nt, argv[0]);
    int ar;
    const ERL_NIF_TERM *el;
    if (!enif_is_identical(argv[2], a->retry) &&
        !(enif_get_tuple(env, argv[2], &ar, &el) && ar == 2 && enif_is_identical(el[0], a->error)))
        return enif_make_badarg(env);
    if (enif_self(env, &s.self) == NULL) return enif_make_badarg(env);
    GET_KEY(kb, k, argv[1]);
    registry_op op = {.ending = hook_ending, .ctx = &s};
    registry_out out;
    int rc = registry_unregister(nt->r, &k, (uint64_t)s.self.pid, 1, now_ms(), &op, &out);
    kbuf_free(&kb);
    if (rc < 0) return raise_for(env, rc);
    tell_waiters(env, &s, argv[2]);
    return rc == REGISTRY_OK ? a->ok : a->not_found;
}

/* ---- local workers ------------------------------------------------------------------------ */

/* register(Table, Key, Pid, claim | {over, MaxVsn, Node | none}) ->
 *     {ok, Vsn} | {error, noproc | not_claimed | {claimed, Pid} | {already_registered, Pid}
 *                         | {newer, Node, Pid, Vsn}} */
ERL_NIF_TERM nif_register(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    struct seen s;
    seen_init(&s, env);
    nif_atoms *a = &s.P->a;
    GET_TABLE(nt, argv[0]);
    ErlNifPid pid;
    if (!enif_get_local_pid(env, argv[2], &pid)) return enif_make_badarg(env);
    registry_mode mode = {0};
    registry_node *owner = NULL;
    int ar, rc;
    const ERL_NIF_TERM *el;
    ErlNifUInt64 max_vsn;
    if (enif_is_identical(argv[3], a->claim)) {
        if (enif_self(env, &s.self) == NULL) return enif_make_badarg(env);
        mode.claimer = (uint64_t)s.self.pid;
    } else if (enif_get_tuple(env, argv[3], &ar, &el) && ar == 3 &&
               enif_is_identical(el[0], a->over) &&
               enif_get_uint64(env, el[1], &max_vsn) && enif_is_atom(env, el[2])) {
        mode.over = 1;
        mode.max_vsn = max_vsn;
        if (!enif_is_identical(el[2], a->none)) {
            owner = node_of(env, nt, el[2], 0, &rc);
            if (rc != 0) return raise_for(env, rc);
            mode.owner = owner;
        }
    } else {
        return enif_make_badarg(env);
    }
    kbuf kb;
    registry_key k;
    if ((rc = key_encode(env, argv[1], &kb, &k.hash)) != 0) {
        registry_node_put(nt->r, owner);
        return raise_for(env, rc);
    }
    k.bytes = kb.p;
    k.len = kb.len;
    int noproc;
    nlocal *mine = local_new(env, nt, &k, &pid, &noproc);
    if (mine == NULL) {
        kbuf_free(&kb);
        registry_node_put(nt->r, owner);
        return noproc ? enif_make_tuple2(env, a->error, a->noproc)
                      : raise_for(env, SHOAL_ENOMEM);
    }
    registry_op op = {.seen = hook_seen, .ending = hook_ending, .ctx = &s};
    registry_out out;
    rc = registry_register(nt->r, &k, &mine->re, &mode, now_us(), &op, &out);
    kbuf_free(&kb);
    registry_node_put(nt->r, owner);
    if (!out.stored) local_discard(env, mine);
    ERL_NIF_TERM vsn = enif_make_uint64(env, out.vsn), why;
    switch (rc) {
    case REGISTRY_OK:
        tell_waiters(env, &s, enif_make_tuple2(env, a->ok, argv[2]));
        tell_listener(env, nt, enif_make_tuple4(env, a->up_msg, argv[1], argv[2], vsn));
        return pidstore_after(env, nt, argv[0], enif_make_tuple2(env, a->ok, vsn));
    case REGISTRY_OWN: /* a take-back: its fresh version goes to the peers */
        tell_listener(env, nt, enif_make_tuple4(env, a->up_msg, argv[1], argv[2], vsn));
        return enif_make_tuple2(env, a->ok, vsn);
    case REGISTRY_NOPROC: why = a->noproc; break;
    case REGISTRY_NOT_CLAIMED: why = a->not_claimed; break;
    case REGISTRY_CLAIMED_BY: why = enif_make_tuple2(env, a->claimed, s.pid); break;
    case REGISTRY_ALREADY: why = enif_make_tuple2(env, a->already_registered, s.pid); break;
    case REGISTRY_NEWER:
        why = enif_make_tuple4(env, a->newer, s.node, s.pid, enif_make_uint64(env, s.vsn));
        break;
    default: return raise_for(env, rc);
    }
    return enif_make_tuple2(env, a->error, why);
}

/* unregister(Table, Key, Pid) -> ok | not_found */
ERL_NIF_TERM nif_unregister(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    struct seen s;
    seen_init(&s, env);
    nif_atoms *a = &s.P->a;
    GET_TABLE(nt, argv[0]);
    ErlNifPid pid;
    if (!enif_get_local_pid(env, argv[2], &pid)) return enif_make_badarg(env);
    GET_KEY(kb, k, argv[1]);
    registry_op op = {.ending = hook_ending, .ctx = &s};
    registry_out out;
    int rc = registry_unregister(nt->r, &k, (uint64_t)pid.pid, 0, now_ms(), &op, &out);
    kbuf_free(&kb);
    if (rc < 0) return raise_for(env, rc);
    if (rc != REGISTRY_OK) return a->not_found;
    if (out.prev == REGISTRY_LOCAL)
        tell_listener(env, nt, enif_make_tuple4(env, a->down_msg, argv[1], argv[2],
                                                enif_make_uint64(env, out.vsn)));
    tell_waiters(env, &s, a->retry);
    return a->ok;
}

/* set_moving(Table, Key, Pid, Bool) -> {ok, Vsn} | not_found */
ERL_NIF_TERM nif_set_moving(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    nif_atoms *a = &priv_of(env)->a;
    GET_TABLE(nt, argv[0]);
    ErlNifPid pid;
    int on = enif_is_identical(argv[3], a->true_);
    if (!enif_get_local_pid(env, argv[2], &pid) || (!on && !enif_is_identical(argv[3], a->false_)))
        return enif_make_badarg(env);
    GET_KEY(kb, k, argv[1]);
    uint64_t vsn = 0;
    int rc = registry_set_moving(nt->r, &k, (uint64_t)pid.pid, on, &vsn);
    kbuf_free(&kb);
    if (rc < 0) return raise_for(env, rc);
    return rc == REGISTRY_OK ? enif_make_tuple2(env, a->ok, enif_make_uint64(env, vsn))
                             : a->not_found;
}

/* The worker of a LOCAL entry died: the entry goes, if it is still the key's, and the
 * listener hears of it. No Erlang process is involved. */
void local_down(ErlNifEnv *env, void *obj, ErlNifPid *pid, ErlNifMonitor *mon)
{
    (void)mon;
    nlocal *e = obj;
    ntab *nt = e->nt;
    if (nt == NULL) return;
    uint64_t vsn = 0;
    int removed = 0;
    enif_rwlock_rlock(nt->life);
    if (nt->r != NULL) removed = registry_drop(nt->r, &e->re, &vsn);
    enif_rwlock_runlock(nt->life);
    if (!removed || atomic_load_explicit(&nt->listener, memory_order_relaxed) == 0) return;
    nif_atoms *a = &priv_of(env)->a;
    ErlNifEnv *m = enif_alloc_env();
    if (m == NULL) return;
    ErlNifPid to;
    to.pid = (ERL_NIF_TERM)atomic_load_explicit(&nt->listener, memory_order_relaxed);
    ERL_NIF_TERM msg = enif_make_tuple4(m, a->down_msg,
                                        key_decode(m, a, e->key, e->re.te.klen, NULL),
                                        enif_make_pid(m, pid), enif_make_uint64(m, vsn));
    (void)enif_send(env, &to, m, msg);
    enif_free_env(m);
}

/* ---- replicas ----------------------------------------------------------------------------- */

/* The arguments put_remote and put_successor share: Table, Key, Node, Pid, Vsn. */
static int replica_args(ErlNifEnv *env, const ERL_NIF_TERM argv[], ErlNifUInt64 *vsn)
{
    return enif_is_atom(env, argv[2]) && enif_is_pid(env, argv[3]) &&
           enif_get_uint64(env, argv[4], vsn);
}

/* put_remote(Table, Key, Node, Pid, Vsn, Mark), put_successor(...) (successor != 0) and
 * put_synced(..., Mark, Before) (synced != 0) -> stored | stale | {conflict, Pid, Vsn} */
static ERL_NIF_TERM put_replica(ErlNifEnv *env, const ERL_NIF_TERM argv[], int successor,
                                int synced)
{
    struct seen s;
    seen_init(&s, env);
    nif_atoms *a = &s.P->a;
    GET_TABLE(nt, argv[0]);
    ErlNifUInt64 vsn;
    ErlNifUInt64 before = 0;
    unsigned mark;
    if (!replica_args(env, argv, &vsn) || !enif_get_uint(env, argv[5], &mark) ||
        (synced && (!enif_get_uint64(env, argv[6], &before) || before == 0)))
        return enif_make_badarg(env);
    GET_KEY(kb, k, argv[1]);
    int rc;
    registry_node *node = node_of(env, nt, argv[2], 1, &rc);
    nplain *mine = node ? plain_new(nt, &k) : NULL;
    if (mine == NULL) {
        kbuf_free(&kb);
        registry_node_put(nt->r, node);
        return raise_for(env, rc ? rc : SHOAL_ENOMEM);
    }
    s.new_pid = argv[3];
    s.nt = nt;
    registry_op op = {.seen = hook_seen, .ending = hook_ending, .storing = hook_storing,
                      .self_name = hook_self_name, .admitted = hook_admitted, .ctx = &s};
    registry_out out;
    rc = successor ? registry_put_successor(nt->r, &k, node, vsn, mark, &mine->re, &op, &out)
         : synced  ? registry_put_synced(nt->r, &k, node, vsn, mark, before, &mine->re, &op,
                                         &out)
                   : registry_put_remote(nt->r, &k, node, vsn, mark, &mine->re, &op, &out);
    kbuf_free(&kb);
    if (s.have_name) kbuf_free(&s.self_name);
    registry_node_put(nt->r, node);
    if (!out.stored) plain_discard(nt, &mine->re);
    switch (rc) {
    case REGISTRY_STORED:
        tell_waiters(env, &s, enif_make_tuple2(env, a->ok, argv[3]));
        if (out.prev == REGISTRY_LOCAL) {
            ERL_NIF_TERM el[7] = {a->replaced_msg, argv[1], (ERL_NIF_TERM)out.word,
                                  enif_make_uint64(env, out.vsn), argv[2], argv[3], argv[4]};
            tell_listener(env, nt, enif_make_tuple_from_array(env, el, 7));
        }
        return pidstore_after(env, nt, argv[0], a->stored);
    case REGISTRY_STALE: return a->stale;
    case REGISTRY_CONFLICT:
        return enif_make_tuple3(env, a->conflict, (ERL_NIF_TERM)out.word,
                                enif_make_uint64(env, out.vsn));
    default: return raise_for(env, rc);
    }
}

ERL_NIF_TERM nif_put_remote(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    return put_replica(env, argv, 0, 0);
}

ERL_NIF_TERM nif_put_successor(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    return put_replica(env, argv, 1, 0);
}

ERL_NIF_TERM nif_put_synced(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    return put_replica(env, argv, 0, 1);
}

/* remove_remote(Table, Key, Node, Vsn) -> removed | tombstoned | stale */
ERL_NIF_TERM nif_remove_remote(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    nif_atoms *a = &priv_of(env)->a;
    GET_TABLE(nt, argv[0]);
    ErlNifUInt64 vsn;
    if (!enif_is_atom(env, argv[2]) || !enif_get_uint64(env, argv[3], &vsn))
        return enif_make_badarg(env);
    GET_KEY(kb, k, argv[1]);
    int rc;
    registry_node *node = node_of(env, nt, argv[2], 1, &rc);
    nplain *mine = node ? plain_new(nt, &k) : NULL;
    if (mine == NULL) {
        kbuf_free(&kb);
        registry_node_put(nt->r, node);
        return raise_for(env, rc ? rc : SHOAL_ENOMEM);
    }
    registry_out out;
    rc = registry_remove_remote(nt->r, &k, node, vsn, now_ms(), &mine->re, &out);
    kbuf_free(&kb);
    registry_node_put(nt->r, node);
    if (!out.stored) plain_discard(nt, &mine->re);
    switch (rc) {
    case REGISTRY_REMOVED: return pidstore_after(env, nt, argv[0], a->removed);
    case REGISTRY_TOMBSTONED: return a->tombstoned;
    case REGISTRY_STALE: return a->stale;
    default: return raise_for(env, rc);
    }
}
