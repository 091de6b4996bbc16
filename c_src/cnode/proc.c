/* proc.c - C processes: pids minted per node incarnation, registered names, the callback
 * that receives messages (remote ones straight from the frame, local ones through a small
 * mailbox drained on the loop's idle phase so C-to-C sends never recurse), gen_server calls
 * and casts, links and monitors in both directions, exit propagation with the real reason,
 * and calls from C with timeouts (gen:call's protocol: monitor, send, wait for {Ref, Reply}
 * or the monitor's DOWN). */
#include "cnode_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static void finish_exit(shoal_proc *p);

/* ---- pids -------------------------------------------------------------------------------- */

shoal_pid shoal__proc_pid_of(shoal_node *n, uint64_t id)
{
    shoal_pid p = {0, (uint32_t)(id & 0x7fff), (uint32_t)((id >> 15) & 0x1fff), n->creation};
    return p;
}

static uint64_t id_of(const shoal_pid *p)
{
    return (uint64_t)p->num | (uint64_t)p->serial << 15;
}

shoal_proc *shoal__proc_get(shoal_node *n, const shoal_pid *pid)
{
    if (pid->node != 0 || pid->creation != n->creation || pid->num > 0x7fff ||
        pid->serial > 0x1fff)
        return NULL;
    return shoal__imap_get(&n->procs, id_of(pid));
}

shoal_proc *shoal_proc_by_pid(shoal_node *n, const shoal_pid *pid)
{
    if (!n || !pid)
        return NULL;
    shoal_proc *p = shoal__proc_get(n, pid);
    return p && !p->exiting ? p : NULL;
}

int shoal_pid_eq(const shoal_pid *a, const shoal_pid *b)
{
    return a->node == b->node && a->num == b->num && a->serial == b->serial &&
           a->creation == b->creation;
}

shoal_pid shoal_self(const shoal_proc *p)
{
    return shoal__proc_pid_of(p->node, p->id);
}

void *shoal_state(shoal_proc *p)
{
    return p->spec.state;
}

shoal_node *shoal_proc_node(shoal_proc *p)
{
    return p->node;
}

int shoal_encode_pid(shoal_node *n, ei_x_buff *x, const shoal_pid *pid)
{
    if (!n || !x || !pid || pid->node >= n->nnames)
        return -EINVAL;
    dbuf b = {0};
    int rc = shoal__enc_pid(n, &b, pid);
    if (!rc && ei_x_append_buf(x, b.data, (int)b.len) < 0)
        rc = -ENOMEM;
    shoal__dbuf_free(&b);
    return rc;
}

int shoal_decode_pid(shoal_node *n, const char *buf, int *index, shoal_pid *pid)
{
    if (!n || !buf || !index || !pid)
        return -EINVAL;
    return shoal__dec_pid(n, buf, index, pid);
}

int shoal_decode_dest(shoal_node *n, const char *buf, int *index, shoal_dest *d, char *name,
                      char *node)
{
    int type, size, arity;
    if (!n || !buf || !index || !d || !name || !node)
        return -EINVAL;
    memset(d, 0, sizeof *d);
    if (ei_get_type(buf, index, &type, &size) < 0)
        return -EINVAL;
    if (type == ERL_NEW_PID_EXT || type == ERL_PID_EXT)
        return shoal__dec_pid(n, buf, index, &d->pid);
    if (type == ERL_SMALL_TUPLE_EXT) {
        int i = *index;
        if (ei_decode_tuple_header(buf, &i, &arity) || arity != 2 ||
            ei_decode_atom_as(buf, &i, name, MAXATOMLEN_UTF8, ERLANG_UTF8, NULL, NULL) ||
            ei_decode_atom_as(buf, &i, node, MAXATOMLEN_UTF8, ERLANG_UTF8, NULL, NULL))
            return -EINVAL;
        *index = i;
        d->name = name;
        d->node = node;
        return 0;
    }
    if (ei_decode_atom_as(buf, index, name, MAXATOMLEN_UTF8, ERLANG_UTF8, NULL, NULL))
        return -EINVAL;
    d->name = name;
    return 0;
}

/* Accepts term bytes with or without the version byte; checks they hold exactly one term. */
static int norm_term(const char **term, size_t *len)
{
    if (!*term || *len == 0)
        return -EINVAL;
    if ((unsigned char)(*term)[0] == 131) {
        (*term)++;
        (*len)--;
    }
    size_t used;
    if (shoal__term_check(*term, *len, &used) || used != *len)
        return -EINVAL;
    return 0;
}

/* ---- spawn, register, the run queue ------------------------------------------------------- */

int shoal_spawn(shoal_node *n, const shoal_proc_spec *spec, shoal_proc **out)
{
    if (!n || !spec || !spec->handle || n->closing)
        return -EINVAL;
    if (spec->name && shoal__smap_get(&n->regnames, spec->name))
        return -EEXIST;
    shoal_proc *p = calloc(1, sizeof *p);
    if (!p)
        return -ENOMEM;
    p->node = n;
    p->spec = *spec;
    p->spec.name = NULL;
    do { /* 28-bit id space; skip ids still in use after a wrap */
        p->id = n->next_id++;
        if (n->next_id >= (1u << 28))
            n->next_id = CN_SYSTEM_ID + 1;
    } while (shoal__imap_get(&n->procs, p->id));
    if (shoal__imap_put(&n->procs, p->id, p)) {
        free(p);
        return -ENOMEM;
    }
    if (spec->name) {
        int rc = shoal_register(p, spec->name);
        if (rc) {
            shoal__imap_del(&n->procs, p->id);
            free(p);
            return rc;
        }
    }
    if (out)
        *out = p;
    return 0;
}

int shoal_register(shoal_proc *p, const char *name)
{
    if (!p || !name || !name[0] || strlen(name) > 1020)
        return -EINVAL;
    shoal_node *n = p->node;
    if (p->name || shoal__smap_get(&n->regnames, name))
        return -EEXIST;
    p->name = strdup(name);
    if (!p->name || shoal__smap_put(&n->regnames, name, p)) {
        free(p->name);
        p->name = NULL;
        return -ENOMEM;
    }
    return 0;
}

shoal_proc *shoal_whereis(shoal_node *n, const char *name)
{
    if (!n || !name)
        return NULL;
    shoal_proc *p = shoal__smap_get(&n->regnames, name);
    return p && !p->exiting ? p : NULL;
}

static void runq_add(shoal_proc *p)
{
    shoal_node *n = p->node;
    if (p->on_runq)
        return;
    if (n->runq_len == n->runq_cap) {
        size_t cap = n->runq_cap ? n->runq_cap * 2 : 64;
        uint64_t *q = realloc(n->runq, cap * sizeof *q);
        if (!q)
            return; /* the message stays queued; the next wake retries */
        n->runq = q;
        n->runq_cap = cap;
    }
    n->runq[n->runq_len++] = p->id;
    p->on_runq = 1;
    shoal__wake(n);
}

static int enqueue(shoal_proc *p, int kind, int has_from, const shoal_pid *from,
                   const char *term, size_t len, shoal_from *reply_to, uint64_t monitor,
                   int link_signal)
{
    lmsg *m = malloc(sizeof *m + len);
    if (!m)
        return -ENOMEM;
    m->next = NULL;
    m->kind = kind;
    m->has_from = has_from;
    if (from)
        m->from = *from;
    else
        memset(&m->from, 0, sizeof m->from);
    m->monitor = monitor;
    m->reply_to = reply_to;
    m->link_signal = link_signal;
    m->len = len;
    memcpy(m->term, term, len);
    if (p->mq_tail)
        p->mq_tail->next = m;
    else
        p->mq_head = m;
    p->mq_tail = m;
    runq_add(p);
    return 0;
}

/* Runs the callback; finishes the exit if the process asked for one. */
static void run_handle(shoal_proc *p, const shoal_msg *m)
{
    p->in_cb = 1;
    int rc = p->spec.handle(p, m);
    p->in_cb = 0;
    if (rc && !p->exiting)
        shoal_exit(p, NULL, 0);
    else if (p->exiting)
        finish_exit(p);
}

static int remove_link(shoal_proc *p, const shoal_pid *other)
{
    for (uint32_t i = 0; i < p->nlinks; i++)
        if (shoal_pid_eq(&p->links[i], other)) {
            p->links[i] = p->links[--p->nlinks];
            return 1;
        }
    return 0;
}

/* Applies an exit signal to p (Erlang's rules: links only count when linked, kill through
 * exit/2 cannot be trapped, trapping turns signals into messages, normal is ignored). */
static void apply_signal(shoal_proc *p, const shoal_pid *from, const char *reason, size_t len,
                         int link_signal)
{
    if (p->exiting)
        return;
    if (link_signal && !remove_link(p, from))
        return;
    if (!link_signal && shoal__is_atom(reason, "kill")) {
        shoal_exit(p, ATOM_KILLED, sizeof ATOM_KILLED);
        return;
    }
    if (p->spec.trap_exit) {
        shoal_msg m = {SHOAL_MSG_EXIT, 1, *from, reason, len, NULL, 0};
        run_handle(p, &m);
        return;
    }
    if (!shoal__is_atom(reason, "normal"))
        shoal_exit(p, reason, len);
}

void shoal__proc_run_queue(shoal_node *n)
{
    size_t count = n->runq_len;
    uint64_t *ids = n->runq;
    n->runq = NULL;
    n->runq_len = n->runq_cap = 0;
    for (size_t i = 0; i < count; i++) {
        shoal_proc *p = shoal__imap_get(&n->procs, ids[i]);
        if (!p)
            continue;
        p->on_runq = 0;
        for (int batch = 0; batch < 64 && p->mq_head && !p->exiting; batch++) {
            lmsg *m = p->mq_head;
            p->mq_head = m->next;
            if (!p->mq_head)
                p->mq_tail = NULL;
            uint64_t id = p->id;
            if (m->kind == LM_SIGNAL) {
                apply_signal(p, &m->from, m->term, m->len, m->link_signal);
            } else {
                shoal_msg msg = {(shoal_msg_kind)m->kind, m->has_from, m->from, m->term,
                                 m->len,  m->reply_to, m->monitor};
                run_handle(p, &msg);
            }
            free(m->reply_to);
            free(m);
            if (shoal__imap_get(&n->procs, id) != p)
                break; /* it exited; p is gone */
            if (p->mq_head == NULL)
                break;
        }
        shoal_proc *q = shoal__imap_get(&n->procs, ids[i]);
        if (q && q->mq_head)
            runq_add(q);
    }
    free(ids);
}

/* ---- delivery ---------------------------------------------------------------------------- */

enum { GEN_CALL = 1, GEN_CAST = 2 };

/* {'$gen_call', _, _} or {'$gen_cast', _} (validated term)? Leaves *idx after the atom. Reads
 * the atom in place: this runs for every message. */
static int gen_kind(const char *term, int *idx)
{
    const unsigned char *u = (const unsigned char *)term;
    const char *a;
    size_t al;
    if (u[0] != ERL_SMALL_TUPLE_EXT || (u[1] != 2 && u[1] != 3))
        return 0;
    int i = 2;
    if (shoal__atom_view(term, &i, &a, &al) != 0 || al != 9)
        return 0;
    if (u[1] == 3 && memcmp(a, "$gen_call", 9) == 0) {
        *idx = i;
        return GEN_CALL;
    }
    if (u[1] == 2 && memcmp(a, "$gen_cast", 9) == 0) {
        *idx = i;
        return GEN_CAST;
    }
    return 0;
}

/* Classifies and delivers a message to p, directly (remote origin: bytes live in the frame). */
static void deliver_direct(shoal_node *n, shoal_proc *p, int has_from, const shoal_pid *from,
                           const char *term, size_t len)
{
    shoal_msg m = {SHOAL_MSG_SEND, has_from, {0, 0, 0, 0}, term, len, NULL, 0};
    if (has_from)
        m.from = *from;
    int idx = 0, inner;
    int g = gen_kind(term, &idx);
    if (g) {
        if (g == GEN_CALL && ei_decode_tuple_header(term, &idx, &inner) == 0 && inner == 2) {
            shoal_from *f = n->scratch_from;
            if (shoal__dec_pid(n, term, &idx, &f->pid) == 0) {
                int tag_at = idx;
                if (ei_skip_term(term, &idx) == 0 && idx - tag_at <= CN_MAX_TAG) {
                    f->taglen = (uint32_t)(idx - tag_at);
                    memcpy(f->tag, term + tag_at, f->taglen);
                    m.kind = SHOAL_MSG_CALL;
                    m.has_from = 1;
                    m.from = f->pid;
                    m.reply_to = f;
                    m.term = term + idx;
                    m.len = len - (size_t)idx;
                }
            }
        } else if (g == GEN_CAST) {
            m.kind = SHOAL_MSG_CAST;
            m.term = term + idx;
            m.len = len - (size_t)idx;
        }
    }
    run_handle(p, &m);
}

void shoal__proc_deliver(shoal_node *n, const shoal_pid *to, int has_from, const shoal_pid *from,
                         const char *term, size_t len)
{
    if (n->mons.count && shoal__outmon_reply(n, term, len))
        return;
    shoal_proc *p = shoal__proc_get(n, to);
    if (p && !p->exiting)
        deliver_direct(n, p, has_from, from, term, len);
}

void shoal__proc_deliver_named(shoal_node *n, const char *name, size_t namelen,
                               const shoal_pid *from, const char *term, size_t len)
{
    shoal_proc *p = shoal__smap_getn(&n->regnames, name, namelen);
    if (p && !p->exiting)
        deliver_direct(n, p, 1, from, term, len);
    else
        shoal__debug(n, "message to unregistered name %.*s dropped", (int)namelen, name);
}

/* Queues a message from C code to a local process (after the same classification). */
static int local_send(shoal_node *n, shoal_proc *p, int has_from, const shoal_pid *from,
                      const char *term, size_t len)
{
    int idx = 0, inner;
    int g = gen_kind(term, &idx);
    if (g) {
        if (g == GEN_CALL && ei_decode_tuple_header(term, &idx, &inner) == 0 && inner == 2) {
            shoal_pid caller;
            if (shoal__dec_pid(n, term, &idx, &caller) == 0) {
                int tag_at = idx;
                if (ei_skip_term(term, &idx) == 0) {
                    size_t tl = (size_t)(idx - tag_at);
                    shoal_from *f = malloc(sizeof *f + tl);
                    if (!f)
                        return -ENOMEM;
                    f->pid = caller;
                    f->taglen = (uint32_t)tl;
                    memcpy(f->tag, term + tag_at, tl);
                    int rc = enqueue(p, SHOAL_MSG_CALL, 1, &caller, term + idx,
                                     len - (size_t)idx, f, 0, 0);
                    if (rc)
                        free(f);
                    return rc;
                }
            }
        } else if (g == GEN_CAST) {
            return enqueue(p, SHOAL_MSG_CAST, has_from, from, term + idx, len - (size_t)idx,
                           NULL, 0, 0);
        }
    }
    return enqueue(p, SHOAL_MSG_SEND, has_from, from, term, len, NULL, 0, 0);
}

/* Sends (already normalised) term to pid, local or remote. */
static int route_pid(shoal_node *n, const shoal_pid *from, const shoal_pid *to, const char *term,
                     size_t len)
{
    if (to->node == 0) {
        if (n->mons.count && shoal__outmon_reply(n, term, len))
            return 0;
        shoal_proc *p = shoal__proc_get(n, to);
        if (!p || p->exiting)
            return 0; /* like Erlang: sending to a dead pid succeeds silently */
        return local_send(n, p, from != NULL, from, term, len);
    }
    return shoal__ctrl_send(n, to->node, OP_SEND, NULL, to, NULL, 0, NULL, 0, term, len);
}

int shoal_send(shoal_node *n, shoal_proc *from, const shoal_dest *dest, const char *term,
               size_t len)
{
    if (!n || !dest || norm_term(&term, &len))
        return -EINVAL;
    shoal_pid fp = shoal__proc_pid_of(n, from ? from->id : CN_SYSTEM_ID);
    if (dest->name) {
        uint32_t peer = 0;
        if (dest->node && strcmp(dest->node, n->full_name) != 0) {
            if (!strchr(dest->node, '@'))
                return -EINVAL;
            int rc = shoal__intern(n, dest->node, &peer);
            if (rc)
                return rc;
        }
        if (peer == 0) {
            shoal_proc *p = shoal_whereis(n, dest->name);
            return p ? local_send(n, p, 1, &fp, term, len) : 0;
        }
        return shoal__ctrl_send(n, peer, OP_REG_SEND, &fp, NULL, dest->name, 0, NULL, 0, term,
                                len);
    }
    if (dest->pid.node >= n->nnames)
        return -EINVAL;
    return route_pid(n, from ? &fp : NULL, &dest->pid, term, len);
}

int shoal_reply(shoal_node *n, const shoal_from *f, const char *term, size_t len)
{
    if (!n || !f || norm_term(&term, &len))
        return -EINVAL;
    /* To a remote caller the bytes are only copied into the connection's output, so one
     * buffer is reused (no allocation per reply). A local caller may run a callback that
     * replies again before route_pid returns: that gets a buffer of its own. */
    dbuf local = {0};
    dbuf *b = f->pid.node != 0 ? &n->scratch : &local;
    b->len = 0;
    int rc = shoal__enc_tuple(b, 2) || shoal__dbuf_append(b, f->tag, f->taglen) ||
             shoal__dbuf_append(b, term, len);
    if (!rc)
        rc = route_pid(n, NULL, &f->pid, b->data, b->len);
    else
        rc = -ENOMEM;
    if (b == &local || b->cap > (1u << 20)) /* do not keep a big reply's buffer */
        shoal__dbuf_free(b);
    return rc;
}

shoal_from *shoal_from_dup(const shoal_from *f)
{
    if (!f)
        return NULL;
    shoal_from *c = malloc(sizeof *c + f->taglen);
    if (c)
        memcpy(c, f, sizeof *c + f->taglen);
    return c;
}

void shoal_from_free(shoal_from *f)
{
    free(f);
}

/* ---- links and monitors held on local processes ------------------------------------------ */

static int add_link(shoal_proc *p, const shoal_pid *other)
{
    for (uint32_t i = 0; i < p->nlinks; i++)
        if (shoal_pid_eq(&p->links[i], other))
            return 0;
    if (p->nlinks == p->caplinks) {
        uint32_t cap = p->caplinks ? p->caplinks * 2 : 2;
        shoal_pid *l = realloc(p->links, cap * sizeof *l);
        if (!l)
            return -ENOMEM;
        p->links = l;
        p->caplinks = cap;
    }
    p->links[p->nlinks++] = *other;
    return 0;
}

int shoal__proc_add_link(shoal_node *n, const shoal_pid *local, const shoal_pid *remote)
{
    shoal_proc *p = shoal__proc_get(n, local);
    if (!p || p->exiting)
        return -ESRCH;
    return add_link(p, remote);
}

void shoal__proc_del_link(shoal_node *n, const shoal_pid *local, const shoal_pid *remote)
{
    shoal_proc *p = shoal__proc_get(n, local);
    if (p)
        remove_link(p, remote);
}

int shoal__proc_add_inmon(shoal_node *n, shoal_proc *p, const shoal_pid *watcher,
                          uint64_t local_ref, int by_name, const char *ref, size_t reflen)
{
    (void)n;
    if (p->nmons == p->capmons) {
        uint32_t cap = p->capmons ? p->capmons * 2 : 2;
        inmon *m = realloc(p->mons, cap * sizeof *m);
        if (!m)
            return -ENOMEM;
        p->mons = m;
        p->capmons = cap;
    }
    inmon *m = &p->mons[p->nmons];
    m->watcher = *watcher;
    m->local_ref = local_ref;
    m->by_name = by_name;
    m->reflen = (uint32_t)reflen;
    m->ref = NULL;
    if (reflen) {
        m->ref = malloc(reflen);
        if (!m->ref)
            return -ENOMEM;
        memcpy(m->ref, ref, reflen);
    }
    p->nmons++;
    return 0;
}

void shoal__proc_del_inmon(shoal_node *n, shoal_proc *p, const shoal_pid *watcher, const char *ref,
                           size_t reflen, uint64_t local_ref)
{
    (void)n;
    for (uint32_t i = 0; i < p->nmons; i++) {
        inmon *m = &p->mons[i];
        int hit = local_ref ? m->local_ref == local_ref
                            : (!m->local_ref && shoal_pid_eq(&m->watcher, watcher) &&
                               m->reflen == reflen && memcmp(m->ref, ref, reflen) == 0);
        if (hit) {
            free(m->ref);
            p->mons[i] = p->mons[--p->nmons];
            return;
        }
    }
}

/* ---- monitors and calls we hold ------------------------------------------------------------ */

static void om_timer_closed(uv_handle_t *h)
{
    shoal_node *n = h->data;
    free(h);
    n->open_handles--;
}

static void om_free(outmon *om)
{
    if (om->timer) {
        uv_timer_stop(om->timer);
        om->timer->data = om->node;
        uv_close((uv_handle_t *)om->timer, om_timer_closed);
    }
    free(om->target_name);
    free(om);
}

static void om_detach(shoal_node *n, outmon *om, int demonitor)
{
    shoal__imap_del(&n->mons, om->refno);
    shoal_proc *owner = om->owner != CN_SYSTEM_ID ? shoal__imap_get(&n->procs, om->owner) : NULL;
    if (owner && owner->nouts)
        owner->nouts--;
    if (!demonitor)
        return;
    shoal_pid self = shoal__proc_pid_of(n, om->owner);
    if (om->peer) {
        conn *c = n->by_peer[om->peer];
        if (c && c->state != C_CLOSING)
            shoal__ctrl_send(n, om->peer, OP_DEMONITOR_P, &self, &om->target, om->target_name,
                             om->refno, NULL, 0, NULL, 0);
    } else {
        shoal_proc *t = om->target_name ? shoal__smap_get(&n->regnames, om->target_name)
                                        : shoal__proc_get(n, &om->target);
        if (t)
            shoal__proc_del_inmon(n, t, NULL, NULL, 0, om->refno);
    }
}

void shoal__outmon_fire(shoal_node *n, uint64_t refno, const char *reason, size_t len, int status)
{
    outmon *om = shoal__imap_get(&n->mons, refno);
    if (!om)
        return;
    om_detach(n, om, 0);
    if (om->kind == OM_CALL) {
        om->cb(n, status, reason, len, om->arg);
    } else {
        shoal_proc *owner = shoal__imap_get(&n->procs, om->owner);
        shoal_pid target = om->target;
        if (owner && !owner->exiting)
            enqueue(owner, SHOAL_MSG_DOWN, !om->target_name, &target, reason, len, NULL,
                    om->refno, 0);
    }
    om_free(om);
}

int shoal__outmon_reply(shoal_node *n, const char *term, size_t len)
{
    int idx = 0, arity;
    uint64_t refno;
    if ((unsigned char)term[0] != ERL_SMALL_TUPLE_EXT || (unsigned char)term[1] != 2 ||
        term[2] != ERL_NEWER_REFERENCE_EXT)
        return 0;
    if (ei_decode_tuple_header(term, &idx, &arity) || shoal__dec_our_ref(n, term, &idx, &refno))
        return 0;
    outmon *om = shoal__imap_get(&n->mons, refno);
    if (!om || om->kind != OM_CALL)
        return 0;
    om_detach(n, om, 1);
    om->cb(n, 0, term + idx, len - (size_t)idx, om->arg);
    om_free(om);
    return 1;
}

static void om_timeout(uv_timer_t *t)
{
    outmon *om = t->data;
    shoal_node *n = om->node;
    int status = om->async_status ? om->async_status : -ETIMEDOUT;
    om_detach(n, om, !om->async_status);
    if (om->kind == OM_CALL)
        om->cb(n, status, om->async_status ? ATOM_NOPROC : NULL,
               om->async_status ? sizeof ATOM_NOPROC : 0, om->arg);
    else {
        shoal_proc *owner = shoal__imap_get(&n->procs, om->owner);
        if (owner && !owner->exiting)
            enqueue(owner, SHOAL_MSG_DOWN, 1, &om->target, ATOM_NOPROC, sizeof ATOM_NOPROC, NULL,
                    om->refno, 0);
    }
    om_free(om);
}

static int om_arm(outmon *om, uint64_t ms)
{
    shoal_node *n = om->node;
    om->timer = malloc(sizeof *om->timer);
    if (!om->timer)
        return -ENOMEM;
    uv_timer_init(n->loop, om->timer);
    om->timer->data = om;
    n->open_handles++;
    uv_timer_start(om->timer, om_timeout, ms, 0);
    return 0;
}

/* Creates a monitor held by owner on dest; returns it registered in n->mons. */
static int om_start(shoal_node *n, uint64_t owner, int kind, const shoal_dest *dest,
                    outmon **out)
{
    uint32_t peer = 0;
    if (dest->name) {
        if (!dest->name[0])
            return -EINVAL;
        if (dest->node && strcmp(dest->node, n->full_name) != 0) {
            if (!strchr(dest->node, '@'))
                return -EINVAL;
            int rc = shoal__intern(n, dest->node, &peer);
            if (rc)
                return rc;
        }
    } else {
        if (dest->pid.node >= n->nnames)
            return -EINVAL;
        peer = dest->pid.node;
    }
    outmon *om = calloc(1, sizeof *om);
    if (!om)
        return -ENOMEM;
    om->node = n;
    om->refno = n->next_ref++;
    om->owner = owner;
    om->kind = kind;
    om->peer = peer;
    if (dest->name) {
        om->target_name = strdup(dest->name);
        if (!om->target_name) {
            free(om);
            return -ENOMEM;
        }
    } else {
        om->target = dest->pid;
    }
    if (shoal__imap_put(&n->mons, om->refno, om)) {
        om_free(om);
        return -ENOMEM;
    }
    shoal_proc *op = owner != CN_SYSTEM_ID ? shoal__imap_get(&n->procs, owner) : NULL;
    if (op)
        op->nouts++;
    shoal_pid self = shoal__proc_pid_of(n, owner);
    if (peer) {
        int rc = shoal__ctrl_send(n, peer, OP_MONITOR_P, &self, &om->target, om->target_name,
                                  om->refno, NULL, 0, NULL, 0);
        if (rc) { /* cannot even start connecting: fail later, as noconnection */
            om->async_status = -ENOTCONN;
            if (om_arm(om, 0)) {
                om_detach(n, om, 0);
                om_free(om);
                return -ENOMEM;
            }
        }
    } else {
        shoal_proc *t = om->target_name ? shoal_whereis(n, om->target_name)
                                        : shoal__proc_get(n, &om->target);
        int rc = t && !t->exiting ? shoal__proc_add_inmon(n, t, &self, om->refno, 0, NULL, 0)
                                  : -ESRCH;
        if (rc) {
            if (t)
                om->target = shoal_self(t);
            om->async_status = -ESRCH;
            if (om_arm(om, 0)) {
                om_detach(n, om, 0);
                om_free(om);
                return -ENOMEM;
            }
        }
    }
    *out = om;
    return 0;
}

int shoal_monitor(shoal_proc *p, const shoal_dest *dest, uint64_t *id)
{
    if (!p || !dest || p->exiting)
        return -EINVAL;
    outmon *om;
    int rc = om_start(p->node, p->id, OM_MON, dest, &om);
    if (rc)
        return rc;
    if (id)
        *id = om->refno;
    return 0;
}

int shoal_demonitor(shoal_proc *p, uint64_t id)
{
    outmon *om = shoal__imap_get(&p->node->mons, id);
    if (!om || om->owner != p->id || om->kind != OM_MON)
        return -ENOENT;
    om_detach(p->node, om, 1);
    om_free(om);
    return 0;
}

int shoal_call(shoal_node *n, shoal_proc *from, const shoal_dest *dest, const char *req,
               size_t len, unsigned timeout_ms, shoal_call_cb cb, void *arg)
{
    if (!n || !dest || !cb || norm_term(&req, &len) || n->closing ||
        (from && from->exiting))
        return -EINVAL;
    uint64_t owner = from ? from->id : CN_SYSTEM_ID;
    outmon *om;
    int rc = om_start(n, owner, OM_CALL, dest, &om);
    if (rc)
        return rc;
    om->cb = cb;
    om->arg = arg;
    if (om->async_status) /* fails at once (on the next loop turn) */
        return 0;
    if (timeout_ms && om_arm(om, timeout_ms)) {
        om_detach(n, om, 1);
        om_free(om);
        return -ENOMEM;
    }
    shoal_pid self = shoal__proc_pid_of(n, owner);
    dbuf b = {0};
    rc = shoal__enc_tuple(&b, 3) || shoal__enc_atom(&b, "$gen_call") || shoal__enc_tuple(&b, 2) ||
         shoal__enc_pid(n, &b, &self) || shoal__enc_ref(n, &b, om->refno) ||
         shoal__dbuf_append(&b, req, len);
    if (!rc) {
        if (dest->name) {
            shoal_dest d = *dest;
            rc = shoal_send(n, from, &d, b.data, b.len);
        } else {
            rc = route_pid(n, &self, &dest->pid, b.data, b.len);
        }
    }
    shoal__dbuf_free(&b);
    if (rc) {
        om_detach(n, om, 1);
        om_free(om);
        return rc < 0 ? rc : -ENOMEM;
    }
    return 0;
}

int shoal_link(shoal_proc *p, const shoal_pid *pid)
{
    if (!p || !pid || p->exiting || pid->node >= p->node->nnames)
        return -EINVAL;
    shoal_node *n = p->node;
    shoal_pid self = shoal_self(p);
    if (shoal_pid_eq(&self, pid))
        return 0;
    if (pid->node == 0) {
        shoal_proc *t = shoal__proc_get(n, pid);
        if (!t || t->exiting) {
            /* like Erlang: linking to a dead pid brings an exit signal noproc */
            int rc = add_link(p, pid);
            return rc ? rc
                      : enqueue(p, LM_SIGNAL, 1, pid, ATOM_NOPROC, sizeof ATOM_NOPROC, NULL, 0, 1);
        }
        int rc = add_link(p, pid);
        return rc ? rc : add_link(t, &self);
    }
    int rc = add_link(p, pid);
    if (rc)
        return rc;
    return shoal__ctrl_send(n, pid->node, OP_LINK, &self, pid, NULL, 0, NULL, 0, NULL, 0);
}

/* ---- exits --------------------------------------------------------------------------------- */

void shoal__proc_signal(shoal_node *n, const shoal_pid *to, const shoal_pid *from,
                        const char *reason, size_t len, int link_signal)
{
    shoal_proc *p = shoal__proc_get(n, to);
    if (p)
        apply_signal(p, from, reason, len, link_signal);
}

int shoal_exit(shoal_proc *p, const char *reason, size_t len)
{
    if (!p || p->exiting)
        return -ESRCH;
    if (!reason) {
        reason = ATOM_NORMAL;
        len = sizeof ATOM_NORMAL;
    } else if (norm_term(&reason, &len)) {
        return -EINVAL;
    }
    p->exit_reason = malloc(len);
    if (!p->exit_reason)
        return -ENOMEM;
    memcpy(p->exit_reason, reason, len);
    p->exit_len = len;
    p->exiting = 1;
    if (!p->in_cb)
        finish_exit(p);
    return 0;
}

static void free_proc(shoal_proc *p)
{
    lmsg *m = p->mq_head;
    while (m) {
        lmsg *next = m->next;
        free(m->reply_to);
        free(m);
        m = next;
    }
    for (uint32_t i = 0; i < p->nmons; i++)
        free(p->mons[i].ref);
    free(p->mons);
    free(p->links);
    free(p->name);
    free(p->exit_reason);
    free(p);
}


/* Append id to a growable array; -ENOMEM (array unchanged) when it cannot grow. */
static int push_id(uint64_t **ids, size_t *cnt, size_t *cap, uint64_t id)
{
    if (*cnt == *cap) {
        size_t ncap = *cap ? *cap * 2 : 16;
        uint64_t *t = realloc(*ids, ncap * sizeof *t);
        if (!t)
            return -ENOMEM;
        *ids = t;
        *cap = ncap;
    }
    (*ids)[(*cnt)++] = id;
    return 0;
}

/* Drop the outgoing monitors with these ids (ids may name ones already gone); a pending
 * call among them gets -ECANCELED. */
static void cancel_outmons(shoal_node *n, const uint64_t *ids, size_t cnt)
{
    for (size_t k = 0; k < cnt; k++) {
        outmon *om = shoal__imap_get(&n->mons, ids[k]);
        if (!om)
            continue;
        om_detach(n, om, 1);
        if (om->kind == OM_CALL)
            om->cb(n, -ECANCELED, NULL, 0, om->arg);
        om_free(om);
    }
}

static void finish_exit(shoal_proc *p)
{
    shoal_node *n = p->node;
    shoal_pid self = shoal_self(p);
    const char *reason = p->exit_reason;
    size_t len = p->exit_len;
    shoal__imap_del(&n->procs, p->id);
    if (p->name)
        shoal__smap_del(&n->regnames, p->name);
    /* links: remote peers get EXIT, local ones a queued signal */
    for (uint32_t i = 0; i < p->nlinks; i++) {
        shoal_pid *l = &p->links[i];
        if (l->node == 0) {
            shoal_proc *t = shoal__proc_get(n, l);
            if (t && !t->exiting)
                enqueue(t, LM_SIGNAL, 1, &self, reason, len, NULL, 0, 1);
        } else if (n->by_peer[l->node] && n->by_peer[l->node]->state == C_UP) {
            shoal__ctrl_send(n, l->node, OP_EXIT, &self, l, NULL, 0, NULL, 0, reason, len);
        }
    }
    /* monitors on us: DOWN with the reason */
    for (uint32_t i = 0; i < p->nmons; i++) {
        inmon *m = &p->mons[i];
        if (m->local_ref) {
            shoal__outmon_fire(n, m->local_ref, reason, len, -ESRCH);
        } else if (n->by_peer[m->watcher.node] &&
                   n->by_peer[m->watcher.node]->state == C_UP) {
            shoal__ctrl_send(n, m->watcher.node, OP_MONITOR_P_EXIT, &self, &m->watcher,
                             m->by_name ? p->name : NULL, 0, m->ref, m->reflen, reason, len);
        }
    }
    /* monitors and calls we hold */
    if (p->nouts) {
        size_t cnt = 0, i = 0;
        uint64_t *refs = malloc(n->mons.count * sizeof *refs), key;
        outmon *om;
        while (refs && (om = shoal__imap_next(&n->mons, &i, &key)))
            if (om->owner == p->id)
                refs[cnt++] = key;
        cancel_outmons(n, refs, cnt);
        free(refs);
    }
    if (p->spec.terminate)
        p->spec.terminate(p, reason, len);
    free_proc(p);
}

/* A connection went down: links to that node deliver noconnection, monitors held by its
 * processes vanish, and our calls and monitors towards it fail. */
void shoal__proc_node_down(shoal_node *n, uint32_t peer)
{
    size_t i = 0, cnt = 0, cap = 0;
    uint64_t key, *ids = NULL;
    outmon *om;
    /* outgoing monitors and calls */
    while ((om = shoal__imap_next(&n->mons, &i, &key)))
        if (om->peer == peer && push_id(&ids, &cnt, &cap, key) != 0)
            break;
    for (size_t k = 0; k < cnt; k++)
        if (shoal__imap_get(&n->mons, ids[k]))
            shoal__outmon_fire(n, ids[k], ATOM_NOCONN, sizeof ATOM_NOCONN, -ENOTCONN);
    /* processes with links or monitors involving that node */
    cnt = 0;
    i = 0;
    shoal_proc *p;
    while ((p = shoal__imap_next(&n->procs, &i, &key))) {
        int hit = 0;
        for (uint32_t j = 0; j < p->nmons;) {
            if (!p->mons[j].local_ref && p->mons[j].watcher.node == peer) {
                free(p->mons[j].ref);
                p->mons[j] = p->mons[--p->nmons];
            } else {
                j++;
            }
        }
        for (uint32_t j = 0; j < p->nlinks; j++)
            if (p->links[j].node == peer)
                hit = 1;
        if (hit && push_id(&ids, &cnt, &cap, key) != 0)
            break;
    }
    for (size_t k = 0; k < cnt; k++) {
        for (;;) {
            p = shoal__imap_get(&n->procs, ids[k]);
            if (!p || p->exiting)
                break;
            uint32_t j = 0;
            while (j < p->nlinks && p->links[j].node != peer)
                j++;
            if (j == p->nlinks)
                break;
            shoal_pid from = p->links[j];
            apply_signal(p, &from, ATOM_NOCONN, sizeof ATOM_NOCONN, 1);
        }
    }
    free(ids);
}

void shoal__proc_close_all(shoal_node *n)
{
    size_t i = 0, cnt = 0;
    uint64_t key, *ids = malloc((n->procs.count + 1) * sizeof *ids);
    if (!ids)
        return;
    while (shoal__imap_next(&n->procs, &i, &key))
        ids[cnt++] = key;
    for (size_t k = 0; k < cnt; k++) {
        shoal_proc *p = shoal__imap_get(&n->procs, ids[k]);
        if (p && !p->exiting)
            shoal_exit(p, ATOM_SHUTDOWN, sizeof ATOM_SHUTDOWN);
    }
    free(ids);
    /* the system pid's calls and monitors */
    cnt = 0;
    i = 0;
    outmon *om;
    ids = malloc((n->mons.count + 1) * sizeof *ids);
    if (!ids)
        return;
    while ((om = shoal__imap_next(&n->mons, &i, &key)))
        ids[cnt++] = key;
    cancel_outmons(n, ids, cnt);
    free(ids);
}

void shoal__proc_free_all(shoal_node *n)
{
    size_t i = 0;
    shoal_proc *p;
    while ((p = shoal__imap_next(&n->procs, &i, NULL)))
        free_proc(p);
    i = 0;
    outmon *om;
    while ((om = shoal__imap_next(&n->mons, &i, NULL))) {
        free(om->target_name);
        free(om->timer);
        free(om);
    }
    free(n->runq);
    n->runq = NULL;
}
