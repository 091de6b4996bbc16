/* nif_fold.c - fold/3: the yielding walks over a whole table.
 *
 * A walk takes the segments in order, each under one hold of its lock (registry.h: so an
 * entry present for the whole walk is seen exactly once, whatever else changes), and
 * after each segment looks at the clock: past SLICE_US it gives the scheduler back
 * (enif_consume_timeslice + enif_schedule_nif), carrying the segment number and the
 * accumulator in the arguments of the next slice. The node a walk is about is looked up
 * again in each slice, so a walk holds no reference between slices (a process killed in
 * the middle of one leaves nothing behind). */
#include <string.h>

#include "nif_priv.h"
#include "shoal_err.h"

#define SLICE_US 250

enum { OP_OWNED = 1, OP_DUMP, OP_KEYS_ON, OP_PURGE_NODE, OP_SWEEP_NODE, OP_SWEEP_TOMBS };

struct walk {
    ErlNifEnv *env;
    nif_priv *P;
    int op;
    const registry_node *node; /* keys_on Node; NULL: keys_on local */
    ERL_NIF_TERM self;         /* dump: node() */
    ERL_NIF_TERM acc;
    key_atoms atoms;           /* the atoms the keys share */
};

#define KEY(w, e) key_decode((w)->env, &(w)->P->a, (e)->te.key, (e)->te.klen, &(w)->atoms)

static void visit(void *ctx, const registry_entry *e)
{
    struct walk *w = ctx;
    ErlNifEnv *env = w->env;
    registry_state st = registry_state_of(e);
    ERL_NIF_TERM item;
    switch (w->op) {
    case OP_OWNED:
        if (st != REGISTRY_LOCAL) return;
        item = enif_make_tuple3(env, KEY(w, e),
                                (ERL_NIF_TERM)e->te.fast, enif_make_uint64(env, e->vsn));
        break;
    case OP_DUMP:
        if (st == REGISTRY_LOCAL)
            item = enif_make_tuple4(env, KEY(w, e), w->self,
                                    (ERL_NIF_TERM)e->te.fast, enif_make_uint64(env, e->vsn));
        else if (st == REGISTRY_REMOTE)
            item = enif_make_tuple4(env, KEY(w, e), node_atom(e->node), pidstore_get(env, e->te.fast),
                                    enif_make_uint64(env, e->vsn));
        else
            return;
        break;
    default: /* OP_KEYS_ON */
        if (w->node == NULL ? st != REGISTRY_LOCAL
                            : st != REGISTRY_REMOTE || e->node != w->node)
            return;
        item = KEY(w, e);
        break;
    }
    w->acc = enif_make_list_cell(env, item, w->acc);
}

/* The sweep of one slice; `what` says what it removes. */
static int sweep_of(ErlNifEnv *env, nif_priv *P, int op, ERL_NIF_TERM arg, ERL_NIF_TERM extra,
                    registry_sweep *s)
{
    memset(s, 0, sizeof *s);
    if (op == OP_SWEEP_TOMBS) {
        ErlNifSInt64 now, age;
        if (!enif_get_int64(env, extra, &now) || !enif_get_int64(env, arg, &age)) return 0;
        s->what = REGISTRY_SWEEP_TOMBS;
        s->now_ms = now;
        s->age_ms = age;
        return 1;
    }
    if (op == OP_PURGE_NODE) {
        s->what = REGISTRY_SWEEP_NODE_ALL;
        return 1;
    }
    int ar;
    const ERL_NIF_TERM *el;
    unsigned mark;
    ErlNifUInt64 before;
    (void)P;
    if (!enif_get_tuple(env, arg, &ar, &el) || ar != 3 || !enif_get_uint(env, el[1], &mark) ||
        !enif_get_uint64(env, el[2], &before))
        return 0;
    s->what = REGISTRY_SWEEP_NODE_MARK;
    s->mark = mark;
    s->before = before;
    return 1;
}

/* The node atom a node-specific walk is about, or 0 (keys_on local; no node). */
static ERL_NIF_TERM node_arg(ErlNifEnv *env, nif_priv *P, int op, ERL_NIF_TERM arg)
{
    int ar;
    const ERL_NIF_TERM *el;
    switch (op) {
    case OP_KEYS_ON: return enif_is_identical(arg, P->a.local) ? 0 : arg;
    case OP_PURGE_NODE: return arg;
    case OP_SWEEP_NODE: return enif_get_tuple(env, arg, &ar, &el) && ar == 3 ? el[0] : 0;
    default: return 0;
    }
}

/* fold_slice(Table, Op, Arg, Segment, Acc, Extra): one slice, then reschedule or finish. */
static ERL_NIF_TERM fold_slice(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    nif_priv *P = priv_of(env);
    GET_TABLE(nt, argv[0]);
    int op, rc;
    unsigned seg;
    if (!enif_get_int(env, argv[1], &op) || !enif_get_uint(env, argv[3], &seg))
        return enif_make_badarg(env);
    struct walk w = {env, P, op, NULL, argv[5], argv[4], {0}};
    int removing = op == OP_PURGE_NODE || op == OP_SWEEP_NODE || op == OP_SWEEP_TOMBS;
    ErlNifUInt64 removed = 0;
    registry_sweep sweep;
    if (removing && (!enif_get_uint64(env, argv[4], &removed) ||
                     !sweep_of(env, P, op, argv[2], argv[5], &sweep)))
        return enif_make_badarg(env);
    registry_node *node = NULL;
    ERL_NIF_TERM atom = node_arg(env, P, op, argv[2]);
    if (atom != 0) {
        node = node_of(env, nt, atom, 0, &rc);
        if (rc != 0) return raise_for(env, rc);
        if (node == NULL) return argv[4]; /* no entry names it: nothing more to find */
        w.node = node;
        sweep.node = node;
    }
    size_t nseg = registry_segments(nt->r);
    ErlNifTime start = enif_monotonic_time(ERL_NIF_USEC), spent = 0;
    while (seg < nseg && spent < SLICE_US) {
        if (removing)
            removed += registry_sweep_segment(nt->r, seg, &sweep);
        else
            (void)registry_visit_segment(nt->r, seg, visit, &w);
        seg++;
        spent = enif_monotonic_time(ERL_NIF_USEC) - start;
    }
    registry_node_put(nt->r, node);
    ERL_NIF_TERM acc = removing ? enif_make_uint64(env, removed) : w.acc;
    if (seg >= nseg) return removing ? pidstore_after(env, nt, argv[0], acc) : acc;
    int pct = (int)(spent * 100 / 1000);
    (void)enif_consume_timeslice(env, pct < 1 ? 1 : pct > 100 ? 100 : pct);
    ERL_NIF_TERM next[6] = {argv[0], argv[1], argv[2], enif_make_uint(env, seg), acc, argv[5]};
    return enif_schedule_nif(env, "fold", 0, fold_slice, 6, next);
}

/* fold(Table, Op, Arg) */
ERL_NIF_TERM nif_fold(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    nif_priv *P = priv_of(env);
    nif_atoms *a = &P->a;
    GET_TABLE(nt, argv[0]);
    (void)nt;
    ERL_NIF_TERM op_t = argv[1], arg = argv[2], extra = a->undefined, acc = enif_make_list(env, 0);
    int op, ar;
    const ERL_NIF_TERM *el;
    unsigned mark;
    ErlNifUInt64 u64;
    ErlNifSInt64 age;
    if (enif_is_identical(op_t, a->owned)) {
        op = OP_OWNED;
    } else if (enif_is_identical(op_t, a->dump)) {
        op = OP_DUMP;
        ErlNifPid self;
        kbuf name;
        if (enif_self(env, &self) == NULL || key_pid_node(env, self.pid, &name) != 0)
            return enif_make_badarg(env);
        extra = key_make_atom(env, name.p, name.len);
        kbuf_free(&name);
        if (extra == 0) return enif_make_badarg(env);
    } else if (enif_is_identical(op_t, a->keys_on) && enif_is_atom(env, arg)) {
        op = OP_KEYS_ON;
    } else if (enif_is_identical(op_t, a->purge_node) && enif_is_atom(env, arg)) {
        op = OP_PURGE_NODE;
    } else if (enif_is_identical(op_t, a->sweep_node) && enif_get_tuple(env, arg, &ar, &el) &&
               ar == 3 && enif_is_atom(env, el[0]) && enif_get_uint(env, el[1], &mark) &&
               enif_get_uint64(env, el[2], &u64)) {
        op = OP_SWEEP_NODE;
    } else if (enif_is_identical(op_t, a->sweep_tombs) && enif_get_int64(env, arg, &age) &&
               age >= 0) {
        op = OP_SWEEP_TOMBS;
        extra = enif_make_int64(env, now_ms());
    } else {
        return enif_make_badarg(env);
    }
    if (op >= OP_PURGE_NODE) acc = enif_make_uint64(env, 0);
    ERL_NIF_TERM first[6] = {argv[0], enif_make_int(env, op), arg, enif_make_uint(env, 0), acc,
                             extra};
    return fold_slice(env, 6, first);
}
