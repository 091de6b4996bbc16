/* testconn.c - the socketless test node of testconn.h: setup and teardown, the scripted `fz`
 * processes, peer-side message builders, and the checker of what the node writes. */
#include "testconn.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the scripted processes --------------------------------------------------------------- */

typedef struct fz_state {
    tc_node *t;
    shoal_from *saved; /* a call to answer later ({answer, Term}) */
} fz_state;

static int atom_eq(const char *buf, int *idx, const char *want)
{
    char a[MAXATOMLEN_UTF8];
    int i = *idx;
    if (ei_decode_atom_as(buf, &i, a, sizeof a, ERLANG_UTF8, NULL, NULL) < 0 || strcmp(a, want))
        return 0;
    *idx = i;
    return 1;
}

static void call_done(shoal_node *n, int status, const char *term, size_t len, void *arg)
{
    (void)n, (void)status, (void)term, (void)len, (void)arg;
}

static void timer_done(shoal_timer *tm, void *arg)
{
    (void)arg;
    shoal_timer_stop(tm);
}

static void connect_done(shoal_node *n, const char *peer, int status, void *arg)
{
    (void)n, (void)peer, (void)status, (void)arg;
}

static int fz_handle(shoal_proc *self, const shoal_msg *m);
static void fz_terminate(shoal_proc *self, const char *reason, size_t len);

static int fz_spawn(tc_node *t, const char *name, int trap)
{
    fz_state *st = calloc(1, sizeof *st);
    if (!st)
        return -ENOMEM;
    st->t = t;
    shoal_proc_spec spec = {0};
    spec.handle = fz_handle;
    spec.terminate = fz_terminate;
    spec.state = st;
    spec.name = name;
    spec.trap_exit = trap;
    int rc = shoal_spawn(t->n, &spec, NULL);
    if (rc)
        free(st);
    return rc;
}

/* Performs the operation a message asks for: {Op, ...} tuples, or `stop`. */
static int fz_do(shoal_proc *self, fz_state *st, const char *b, size_t len)
{
    shoal_node *n = shoal_proc_node(self);
    int idx = 0, arity;
    char name[MAXATOMLEN_UTF8], node[MAXATOMLEN_UTF8];
    shoal_dest d;
    if (atom_eq(b, &idx, "stop"))
        return 1;
    if (ei_decode_tuple_header(b, &idx, &arity) < 0 || arity < 2)
        return 0;
    if (atom_eq(b, &idx, "link")) {
        shoal_pid p;
        if (shoal_decode_pid(n, b, &idx, &p) == 0)
            shoal_link(self, &p);
    } else if (atom_eq(b, &idx, "monitor")) {
        uint64_t id;
        if (shoal_decode_dest(n, b, &idx, &d, name, node) == 0)
            shoal_monitor(self, &d, &id);
    } else if (atom_eq(b, &idx, "demonitor")) {
        unsigned long long id;
        if (ei_decode_ulonglong(b, &idx, &id) == 0)
            shoal_demonitor(self, id);
    } else if (atom_eq(b, &idx, "call") && arity == 4) {
        long tmo;
        if (shoal_decode_dest(n, b, &idx, &d, name, node) == 0) {
            int req = idx;
            if (ei_skip_term(b, &idx) == 0) {
                int req_end = idx;
                if (ei_decode_long(b, &idx, &tmo) == 0 && tmo >= 0)
                    shoal_call(n, self, &d, b + req, (size_t)(req_end - req),
                               (unsigned)(tmo % 5000), call_done, NULL);
            }
        }
    } else if (atom_eq(b, &idx, "send") && arity == 3) {
        if (shoal_decode_dest(n, b, &idx, &d, name, node) == 0) {
            int msg = idx;
            if (ei_skip_term(b, &idx) == 0)
                shoal_send(n, self, &d, b + msg, (size_t)(idx - msg));
        }
    } else if (atom_eq(b, &idx, "exit")) {
        shoal_exit(self, b + idx, len - (size_t)idx);
    } else if (atom_eq(b, &idx, "kill") && arity == 3) {
        /* makes another local process exit from inside this one's callback */
        if (shoal_decode_dest(n, b, &idx, &d, name, node) == 0) {
            shoal_proc *p = d.name ? shoal_whereis(n, d.name) : shoal_proc_by_pid(n, &d.pid);
            if (p && p != self)
                shoal_exit(p, b + idx, len - (size_t)idx);
        }
    } else if (atom_eq(b, &idx, "spawn") && arity == 3) {
        int trap = 0;
        if (ei_decode_atom_as(b, &idx, name, sizeof name, ERLANG_UTF8, NULL, NULL) == 0 &&
            ei_decode_boolean(b, &idx, &trap) == 0 && n->procs.count < 16)
            fz_spawn(st->t, strcmp(name, "undefined") ? name : NULL, trap);
    } else if (atom_eq(b, &idx, "register")) {
        if (ei_decode_atom_as(b, &idx, name, sizeof name, ERLANG_UTF8, NULL, NULL) == 0)
            shoal_register(self, name);
    } else if (atom_eq(b, &idx, "timer")) {
        unsigned long ms;
        if (ei_decode_ulong(b, &idx, &ms) == 0)
            shoal_timer_start(n, ms % 100, 0, timer_done, NULL, NULL);
    } else if (atom_eq(b, &idx, "connect")) {
        if (ei_decode_atom_as(b, &idx, node, sizeof node, ERLANG_UTF8, NULL, NULL) == 0)
            shoal_connect(n, node, connect_done, NULL);
    } else if (atom_eq(b, &idx, "answer")) {
        if (st->saved) {
            shoal_reply(n, st->saved, b + idx, len - (size_t)idx);
            shoal_from_free(st->saved);
            st->saved = NULL;
        }
    }
    return 0;
}

static int fz_handle(shoal_proc *self, const shoal_msg *m)
{
    fz_state *st = shoal_state(self);
    switch (m->kind) {
    case SHOAL_MSG_CALL: {
        int idx = 0;
        if (atom_eq(m->term, &idx, "later")) { /* answered by a later {answer, Term} */
            shoal_from_free(st->saved);
            st->saved = shoal_from_dup(m->reply_to);
            return 0;
        }
        shoal_reply(shoal_proc_node(self), m->reply_to, m->term, m->len);
        return fz_do(self, st, m->term, m->len);
    }
    case SHOAL_MSG_SEND:
    case SHOAL_MSG_CAST:
        return fz_do(self, st, m->term, m->len);
    default: /* EXIT and DOWN: tell the sender, if it is remote, what we got */
        if (m->has_from && m->from.node != 0) {
            shoal_dest d = {m->from, NULL, NULL};
            shoal_send(shoal_proc_node(self), self, &d, m->term, m->len);
        }
        return 0;
    }
}

static void fz_terminate(shoal_proc *self, const char *reason, size_t len)
{
    (void)reason, (void)len;
    fz_state *st = shoal_state(self);
    shoal_from_free(st->saved);
    free(st);
}

/* ---- the node ------------------------------------------------------------------------------ */

static void on_log(shoal_node *n, const char *line, void *arg)
{
    (void)n;
    tc_node *t = arg;
    t->log_lines++;
    snprintf(t->last_line, sizeof t->last_line, "%s", line);
    if (!t->quiet)
        fprintf(stderr, "tc: %s\n", line);
}

static void on_up(shoal_node *n, const char *peer, void *arg)
{
    (void)n, (void)peer;
    ((tc_node *)arg)->ups++;
}

static void on_down(shoal_node *n, const char *peer, const char *why, void *arg)
{
    (void)n, (void)peer, (void)why;
    ((tc_node *)arg)->downs++;
}

int tc_open(tc_node *t, uv_loop_t *loop, size_t max_frame)
{
    int quiet = t->quiet;
    memset(t, 0, sizeof *t);
    t->quiet = quiet;
    t->loop = loop;
    shoal_node_opts o = {0};
    o.name = TC_NAME;
    o.cookie = TC_COOKIE;
    o.creation = TC_CREATION;
    o.max_frame = max_frame;
    shoal_node_hooks h = {0};
    h.log = on_log;
    h.node_up = on_up;
    h.node_down = on_down;
    h.arg = t;
    int rc = shoal_node_new(loop, &o, &h, &t->n);
    if (rc)
        return rc;
    t->n->ref_salt = TC_SALT;
    t->n->test_challenge = TC_CHALLENGE;
    if ((rc = shoal_echo_spawn(t->n, NULL)) != 0 || (rc = fz_spawn(t, "fz", 1)) != 0 ||
        (rc = fz_spawn(t, "fz2", 0)) != 0) {
        tc_close(t);
        return rc < 0 ? rc : -ENOMEM;
    }
    return 0;
}

int tc_conn(tc_node *t, int role, const char *peer)
{
    if (t->nconns == TC_MAX_CONNS)
        return -ENOSPC;
    int i = t->nconns;
    int rc = shoal__conn_test_open(t->n, role, peer, &t->out[i], &t->c[i]);
    if (rc)
        return rc;
    t->role[i] = role;
    t->nconns++;
    if (role == SHOAL__TEST_INITIATE) {
        static const char HI[] = {'w', 2, 'h', 'i'};
        shoal_dest d = {{0, 0, 0, 0}, "srv", peer};
        if ((rc = shoal_send(t->n, NULL, &d, HI, sizeof HI)) != 0 ||
            (rc = shoal_connect(t->n, peer, connect_done, NULL)) != 0)
            return rc;
    }
    return i;
}

int tc_feed(tc_node *t, int i, const void *buf, size_t len)
{
    int rc = shoal__conn_test_feed(t->c[i], buf, len);
    shoal__node_test_turn(t->n, 0);
    if (uv_loop_alive(t->loop)) /* timers: 0 ms ones are due now */
        uv_run(t->loop, UV_RUN_NOWAIT);
    shoal__node_test_turn(t->n, 0);
    return rc;
}

int tc_close(tc_node *t)
{
    for (int i = 0; i < t->nconns; i++)
        shoal__conn_test_release(t->c[i]);
    shoal_node_close(t->n);
    uv_run(t->loop, UV_RUN_DEFAULT);
    int alive = uv_loop_alive(t->loop);
    shoal_node_free(t->n);
    t->n = NULL;
    for (int i = 0; i < t->nconns; i++)
        shoal__dbuf_free(&t->out[i]);
    t->nconns = 0;
    return alive ? -1 : 0;
}

/* ---- what the node may write ---------------------------------------------------------------- */

static int fail(char *why, size_t wl, const char *msg, size_t at)
{
    snprintf(why, wl, "%s (at byte %zu)", msg, at);
    return -1;
}

/* Our control messages: the op, and whether it carries a message. */
static int check_ctrl(const frame *f)
{
    int idx = 0, arity;
    long op;
    if (ei_decode_tuple_header(f->ctrl, &idx, &arity) < 0 || ei_decode_long(f->ctrl, &idx, &op))
        return -1;
    switch (op) {
    case OP_SEND:
        return arity == 3 && f->msg ? 0 : -1;
    case OP_REG_SEND:
        return arity == 4 && f->msg ? 0 : -1;
    case OP_LINK:
        return arity == 3 && !f->msg ? 0 : -1;
    case OP_EXIT:
    case OP_MONITOR_P:
    case OP_DEMONITOR_P:
    case OP_UNLINK_ID_ACK:
        return arity == 4 && !f->msg ? 0 : -1;
    case OP_MONITOR_P_EXIT:
        return arity == 5 && !f->msg ? 0 : -1;
    default:
        return -1;
    }
}

int tc_check_output(const tc_node *t, int i, char *why, size_t wl)
{
    const char *b = t->out[i].data;
    size_t len = t->out[i].len, off = 0;
    int role = t->role[i];
    /* the handshake: acceptor: status [challenge ack]; initiator: name [status true] reply */
    int done = role == SHOAL__TEST_UP;
    while (!done && off < len) {
        const char *body;
        size_t blen, used;
        if (shoal__hs_frame(b + off, len - off, &body, &blen, &used) != 1)
            return fail(why, wl, "incomplete handshake message", off);
        hs_name hn;
        switch (body[0]) {
        case 's':
            if (!((blen == 3 && !memcmp(body, "sok", 3)) ||
                  (blen == 16 && !memcmp(body, "sok_simultaneous", 16)) ||
                  (blen == 4 && !memcmp(body, "snok", 4)) ||
                  (blen == 6 && !memcmp(body, "salive", 6)) ||
                  (blen == 12 && !memcmp(body, "snot_allowed", 12)) ||
                  (blen == 5 && !memcmp(body, "strue", 5) && role == SHOAL__TEST_INITIATE)))
                return fail(why, wl, "bad status", off);
            break;
        case 'N':
            if (shoal__hs_parse_name(body, blen, role == SHOAL__TEST_ACCEPT, &hn) ||
                strcmp(hn.name, TC_NAME))
                return fail(why, wl, "bad name/challenge message", off);
            break;
        case 'a':
            if (blen != 17 || role != SHOAL__TEST_ACCEPT)
                return fail(why, wl, "bad ack", off);
            done = 1;
            break;
        case 'r':
            if (blen != 21 || role != SHOAL__TEST_INITIATE ||
                shoal__get32(body + 1) != TC_CHALLENGE)
                return fail(why, wl, "bad challenge reply", off);
            done = 1;
            break;
        default:
            return fail(why, wl, "unknown handshake message", off);
        }
        off += used;
    }
    /* then whole frames only */
    while (off < len) {
        frame f;
        size_t need;
        int rc = shoal__frame_parse(b + off, len - off, SHOAL_MAX_FRAME_MAX, &f, &need);
        if (rc == 0)
            return fail(why, wl, "partial frame written", off);
        if (rc < 0)
            return fail(why, wl, "malformed frame written", off);
        if (f.kind == FRAME_PASS && check_ctrl(&f))
            return fail(why, wl, "unexpected control message written", off);
        off += f.size;
    }
    return 0;
}

int tc_check_node(const tc_node *t, char *why, size_t wl)
{
    shoal_node *n = t->n;
    for (uint32_t i = 1; i < n->nnames; i++) {
        conn *c = n->by_peer[i], *k = n->conns;
        if (!c)
            continue;
        while (k && k != c)
            k = k->next;
        if (!k || c->state == C_CLOSING || c->peer != i) {
            snprintf(why, wl, "by_peer[%u] (%s) is a dead or foreign connection", i,
                     n->names[i]);
            return -1;
        }
    }
    for (conn *c = n->conns; c; c = c->next)
        if (c->state == C_UP && (!c->peer || n->by_peer[c->peer] != c)) {
            snprintf(why, wl, "a connection that is up is not its peer's");
            return -1;
        }
    size_t i = 0;
    uint64_t key;
    shoal_proc *p;
    while ((p = shoal__imap_next(&n->procs, &i, &key))) {
        if (p->id != key || (p->name && shoal__smap_get(&n->regnames, p->name) != p)) {
            snprintf(why, wl, "process %llu is indexed wrongly", (unsigned long long)key);
            return -1;
        }
        for (uint32_t a = 0; a < p->nlinks; a++)
            for (uint32_t b = a + 1; b < p->nlinks; b++)
                if (shoal_pid_eq(&p->links[a], &p->links[b])) {
                    snprintf(why, wl, "process %llu has a link twice", (unsigned long long)key);
                    return -1;
                }
        uint32_t held = 0;
        size_t j = 0;
        outmon *om;
        while ((om = shoal__imap_next(&n->mons, &j, NULL)))
            held += om->owner == p->id;
        if (held != p->nouts) {
            snprintf(why, wl, "process %llu holds %u monitors/calls but counts %u",
                     (unsigned long long)key, held, p->nouts);
            return -1;
        }
    }
    i = 0;
    outmon *om;
    while ((om = shoal__imap_next(&n->mons, &i, &key)))
        if (om->refno != key ||
            (om->owner != CN_SYSTEM_ID && !shoal__imap_get(&n->procs, om->owner))) {
            snprintf(why, wl, "monitor %llu is held by a process that is gone",
                     (unsigned long long)key);
            return -1;
        }
    return 0;
}

int tc_replay(uv_loop_t *loop, const uint8_t *data, size_t size, char *why, size_t wl)
{
    if (size < 1)
        return 0;
    unsigned sc = data[0];
    tc_node t;
    t.quiet = 1;
    if (tc_open(&t, loop, sc & 0x80 ? SHOAL_MAX_FRAME_MIN : 65536)) {
        snprintf(why, wl, "cannot create the node");
        return -1;
    }
    int i;
    switch (sc & 3) {
    case 0:
        i = tc_conn(&t, SHOAL__TEST_ACCEPT, NULL);
        break;
    case 1:
        i = tc_conn(&t, SHOAL__TEST_INITIATE, TC_PEER);
        break;
    case 2:
        i = tc_conn(&t, SHOAL__TEST_UP, TC_PEER);
        break;
    default:
        i = tc_conn(&t, sc & 4 ? SHOAL__TEST_UP : SHOAL__TEST_INITIATE, TC_PEER);
        if (i >= 0)
            i = tc_conn(&t, SHOAL__TEST_INITIATE, TC_PEER2);
        if (i >= 0)
            i = tc_conn(&t, SHOAL__TEST_ACCEPT, NULL);
    }
    int bad = i < 0;
    if (bad)
        snprintf(why, wl, "cannot open the connections");
    static const size_t reads[8] = {(size_t)-1, 1, 2, 3, 5, 8, 64, 512};
    size_t chunk = reads[(sc >> 3) & 7], left = size - 1;
    const char *p = (const char *)data + 1;
    while (!bad && left) {
        size_t k = left < chunk ? left : chunk;
        int rc = tc_feed(&t, i, p, k);
        bad = tc_check_node(&t, why, wl) != 0;
        if (rc < 0)
            break;
        p += k;
        left -= k;
    }
    if (!bad && sc & 0x40) {
        shoal__node_test_turn(t.n, uv_now(loop) + 3600 * 1000);
        bad = tc_check_node(&t, why, wl) != 0;
    }
    for (int k = 0; !bad && k < t.nconns; k++) {
        char what[200];
        if (tc_check_output(&t, k, what, sizeof what)) {
            snprintf(why, wl, "connection %d wrote what it must not: %s", k, what);
            bad = 1;
        }
    }
    if (tc_close(&t) && !bad) {
        snprintf(why, wl, "handles left on the loop after the node closed");
        bad = 1;
    }
    return bad ? -1 : 0;
}

/* ---- peer bytes ------------------------------------------------------------------------------ */

static void put_hs(dbuf *b, const char *body, size_t len)
{
    char l[2];
    shoal__put16(l, (uint32_t)len);
    shoal__dbuf_append(b, l, 2);
    shoal__dbuf_append(b, body, len);
}

void tc_put_send_name(dbuf *b, const char *name)
{
    shoal__hs_put_name(b, WIRE_OUR_FLAGS, 7, name);
}

void tc_put_challenge(dbuf *b, const char *name, uint32_t challenge)
{
    shoal__hs_put_challenge(b, WIRE_OUR_FLAGS, challenge, 7, name);
}

void tc_put_reply(dbuf *b, uint32_t challenge)
{
    unsigned char dig[16];
    shoal__hs_digest(TC_COOKIE, TC_CHALLENGE, dig);
    shoal__hs_put_reply(b, challenge, dig);
}

void tc_put_ack(dbuf *b, uint32_t challenge)
{
    unsigned char dig[16];
    shoal__hs_digest(TC_COOKIE, challenge, dig);
    shoal__hs_put_ack(b, dig);
}

void tc_put_status(dbuf *b, const char *status)
{
    char s[64];
    size_t n = strlen(status);
    s[0] = 's';
    memcpy(s + 1, status, n);
    put_hs(b, s, n + 1);
}

void tc_put_frame(dbuf *b, const ei_x_buff *ctrl, const ei_x_buff *msg)
{
    long mark = shoal__frame_begin(b);
    shoal__dbuf_append(b, ctrl->buff, (size_t)ctrl->index);
    if (msg)
        shoal__frame_msg(b, msg->buff, (size_t)msg->index);
    shoal__frame_end(b, mark);
}

void tc_encode_pid(ei_x_buff *x, const char *node, uint32_t num)
{
    erlang_pid p;
    memset(&p, 0, sizeof p);
    snprintf(p.node, sizeof p.node, "%s", node);
    p.num = num;
    p.creation = strcmp(node, TC_NAME) ? 7 : TC_CREATION;
    ei_x_encode_pid(x, &p);
}
