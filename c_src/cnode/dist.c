/* dist.c - control messages of the distribution protocol. Incoming: the control tuple of a
 * validated frame is decoded with ei and turned into deliveries, links, monitors and exit
 * signals for local C processes (proc.c); `net_kernel`'s {is_auth, Node} is answered here so
 * net_adm:ping/1 gets pong. Outgoing: control tuples (SEND, REG_SEND, LINK, EXIT,
 * MONITOR_P, MONITOR_P_EXIT, DEMONITOR_P, UNLINK_ID_ACK) are encoded straight into the
 * connection's output buffer, payload bytes copied after them. */
#include "cnode_int.h"

#include <errno.h>
#include <string.h>

#define ENC_RESERVE 2200 /* one pid, ref or atom with a long UTF-8 node name */

int dist_enc_tuple(dbuf *b, int arity)
{
    if (dbuf_reserve(b, 8))
        return -ENOMEM;
    int idx = 0;
    ei_encode_tuple_header(b->data + b->len, &idx, arity);
    b->len += (size_t)idx;
    return 0;
}

int dist_enc_long(dbuf *b, long v)
{
    if (dbuf_reserve(b, 16))
        return -ENOMEM;
    int idx = 0;
    ei_encode_long(b->data + b->len, &idx, v);
    b->len += (size_t)idx;
    return 0;
}

int dist_enc_atom(dbuf *b, const char *a)
{
    if (dbuf_reserve(b, ENC_RESERVE))
        return -ENOMEM;
    int idx = 0;
    if (ei_encode_atom_len_as(b->data + b->len, &idx, a, (int)strlen(a), ERLANG_UTF8,
                              ERLANG_UTF8) < 0)
        return -EINVAL;
    b->len += (size_t)idx;
    return 0;
}

int dist_enc_pid(shoal_node *n, dbuf *b, const shoal_pid *p)
{
    if (p->node >= n->nnames)
        return -EINVAL;
    if (dbuf_reserve(b, ENC_RESERVE))
        return -ENOMEM;
    char *d = b->data + b->len;
    const char *node = n->names[p->node];
    size_t nl = strlen(node);
    /* NEW_PID_EXT by hand: ei_encode_pid wants a 1 KB erlang_pid per call */
    size_t i = 0;
    d[i++] = 'X';
    if (nl < 256) {
        d[i++] = 'w';
        d[i++] = (char)nl;
    } else {
        d[i++] = 'v';
        put16(d + i, (uint32_t)nl);
        i += 2;
    }
    memcpy(d + i, node, nl);
    i += nl;
    put32(d + i, p->num);
    put32(d + i + 4, p->serial);
    put32(d + i + 8, p->creation);
    b->len += i + 12;
    return 0;
}

int dist_enc_ref(shoal_node *n, dbuf *b, uint64_t refno)
{
    if (dbuf_reserve(b, ENC_RESERVE))
        return -ENOMEM;
    char *d = b->data + b->len;
    const char *node = n->full_name;
    size_t nl = strlen(node), i = 0;
    d[i++] = 'Z';
    put16(d + i, 3);
    i += 2;
    d[i++] = 'w';
    d[i++] = (char)nl;
    memcpy(d + i, node, nl);
    i += nl;
    put32(d + i, n->creation);
    put32(d + i + 4, (uint32_t)(refno & 0x3ffff));
    put32(d + i + 8, (uint32_t)(refno >> 18));
    put32(d + i + 12, n->ref_salt);
    b->len += i + 16;
    return 0;
}

int dist_dec_pid(shoal_node *n, const char *buf, int *idx, shoal_pid *p)
{
    if (buf[*idx] == ERL_NEW_PID_EXT) { /* fast path: a node name seen lately, no copies */
        int j = *idx + 1;
        const char *s;
        size_t nl;
        uint32_t ni;
        if (atom_view(buf, &j, &s, &nl) == 0 && cn_name_lookup(n, s, nl, &ni) == 0) {
            p->node = ni;
            p->num = get32(buf + j);
            p->serial = get32(buf + j + 4);
            p->creation = get32(buf + j + 8);
            *idx = j + 12;
            return 0;
        }
    }
    erlang_pid ep;
    if (ei_decode_pid(buf, idx, &ep) < 0)
        return -EINVAL;
    uint32_t ni;
    int rc = cn_intern(n, ep.node, &ni);
    if (rc)
        return rc;
    cn_name_seen(n, ni);
    p->node = ni;
    p->num = ep.num;
    p->serial = ep.serial;
    p->creation = ep.creation;
    return 0;
}

int dist_dec_our_ref(shoal_node *n, const char *buf, int *idx, uint64_t *refno)
{
    erlang_ref r;
    if (ei_decode_ref(buf, idx, &r) < 0)
        return -EINVAL;
    if (r.len != 3 || r.creation != n->creation || r.n[2] != n->ref_salt ||
        strcmp(r.node, n->full_name) != 0)
        return -ENOENT;
    *refno = (uint64_t)r.n[0] | (uint64_t)r.n[1] << 18;
    return 0;
}

/* Encodes and queues one control message (and payload) to peer. Every argument the op does
 * not use is ignored. Connects on demand. */
int dist_send_ctrl(shoal_node *n, uint32_t peer, int op, const shoal_pid *from,
                   const shoal_pid *to, const char *name, uint64_t refno, const char *refbytes,
                   size_t reflen, const char *term, size_t len)
{
    conn *c = cn_conn_for(n, peer, 1);
    if (!c)
        return -ENOTCONN;
    if (c->state == C_CLOSING)
        return -ENOTCONN;
    dbuf *b = cn_outbuf(c);
    size_t start = b->len;
    long mark = frame_begin(b);
    if (mark < 0)
        return (int)mark;
    int rc = 0;
    switch (op) {
    case OP_SEND: /* {2, '', ToPid} */
        rc = dist_enc_tuple(b, 3) || dist_enc_long(b, op) || dist_enc_atom(b, "") ||
             dist_enc_pid(n, b, to);
        break;
    case OP_REG_SEND: /* {6, FromPid, '', ToName} */
        rc = dist_enc_tuple(b, 4) || dist_enc_long(b, op) || dist_enc_pid(n, b, from) ||
             dist_enc_atom(b, "") || dist_enc_atom(b, name);
        break;
    case OP_LINK: /* {1, From, To} */
        rc = dist_enc_tuple(b, 3) || dist_enc_long(b, op) || dist_enc_pid(n, b, from) ||
             dist_enc_pid(n, b, to);
        break;
    case OP_EXIT:  /* {3, From, To, Reason} */
    case OP_EXIT2: /* {8, From, To, Reason} */
        rc = dist_enc_tuple(b, 4) || dist_enc_long(b, op) || dist_enc_pid(n, b, from) ||
             dist_enc_pid(n, b, to) || dbuf_append(b, term, len);
        term = NULL;
        break;
    case OP_UNLINK_ID_ACK: /* {36, Id, From, To}; refno carries the id */
        rc = dist_enc_tuple(b, 4) || dist_enc_long(b, op);
        if (!rc && dbuf_reserve(b, 16) == 0) {
            int idx = 0;
            ei_encode_ulonglong(b->data + b->len, &idx, (unsigned long long)refno);
            b->len += (size_t)idx;
        }
        rc = rc || dist_enc_pid(n, b, from) || dist_enc_pid(n, b, to);
        break;
    case OP_MONITOR_P:   /* {19, FromPid, ToProc, Ref} */
    case OP_DEMONITOR_P: /* {20, FromPid, ToProc, Ref} */
        rc = dist_enc_tuple(b, 4) || dist_enc_long(b, op) || dist_enc_pid(n, b, from) ||
             (name ? dist_enc_atom(b, name) : dist_enc_pid(n, b, to)) ||
             dist_enc_ref(n, b, refno);
        break;
    case OP_MONITOR_P_EXIT: /* {21, FromProc, ToPid, Ref, Reason} */
        rc = dist_enc_tuple(b, 5) || dist_enc_long(b, op) ||
             (name ? dist_enc_atom(b, name) : dist_enc_pid(n, b, from)) ||
             dist_enc_pid(n, b, to) || dbuf_append(b, refbytes, reflen) ||
             dbuf_append(b, term, len);
        term = NULL;
        break;
    default:
        rc = -EINVAL;
    }
    if (!rc && term)
        rc = frame_msg(b, term, len);
    if (rc) {
        b->len = start;
        return rc < 0 ? rc : -ENOMEM;
    }
    frame_end(b, mark);
    if (c->state == C_UP)
        cn_mark_dirty(c);
    return 0;
}

/* ---- incoming ------------------------------------------------------------------------- */

static const char NORMAL[] = {'w', 6, 'n', 'o', 'r', 'm', 'a', 'l'};
static const char NOPROC[] = {'w', 6, 'n', 'o', 'p', 'r', 'o', 'c'};

/* Is term (validated) the atom `name`? */
static int is_atom(const char *term, const char *name)
{
    int idx = 0;
    char a[MAXATOMLEN_UTF8];
    return ei_decode_atom_as(term, &idx, a, sizeof a, ERLANG_UTF8, NULL, NULL) == 0 &&
           strcmp(a, name) == 0;
}

/* net_kernel: answer {'$gen_call', {From, Tag}, {is_auth, _}} with yes. */
static void net_kernel_msg(shoal_node *n, const char *m, size_t len)
{
    (void)len;
    int idx = 0, arity;
    char a[MAXATOMLEN_UTF8];
    if (ei_decode_tuple_header(m, &idx, &arity) || arity != 3 ||
        ei_decode_atom_as(m, &idx, a, sizeof a, ERLANG_UTF8, NULL, NULL) ||
        strcmp(a, "$gen_call") != 0 || ei_decode_tuple_header(m, &idx, &arity) || arity != 2)
        return;
    shoal_from *f = n->scratch_from;
    if (dist_dec_pid(n, m, &idx, &f->pid))
        return;
    int tag_start = idx;
    if (ei_skip_term(m, &idx) < 0 || idx - tag_start > CN_MAX_TAG)
        return;
    memcpy(f->tag, m + tag_start, (size_t)(idx - tag_start));
    f->taglen = (uint32_t)(idx - tag_start);
    if (ei_decode_tuple_header(m, &idx, &arity) || arity != 2 ||
        ei_decode_atom_as(m, &idx, a, sizeof a, ERLANG_UTF8, NULL, NULL) ||
        strcmp(a, "is_auth") != 0)
        return;
    static const char YES[] = {'w', 3, 'y', 'e', 's'};
    shoal_reply(n, f, YES, sizeof YES);
}

int dist_handle_frame(conn *c, const frame *f)
{
    shoal_node *n = c->node;
    const char *b = f->ctrl;
    int idx = 0, arity;
    long op;
    shoal_pid from, to;
    char name[MAXATOMLEN_UTF8];
    if (ei_decode_tuple_header(b, &idx, &arity) < 0 || arity < 1 ||
        ei_decode_long(b, &idx, &op) < 0)
        return -EINVAL;
    switch (op) {
    case OP_SEND:    /* {2, Unused, ToPid} */
    case OP_SEND_TT: /* {12, Unused, ToPid, Token} */
        if (arity < 3 || !f->msg || ei_skip_term(b, &idx) < 0 || dist_dec_pid(n, b, &idx, &to))
            return -EINVAL;
        proc_deliver(n, &to, 0, NULL, f->msg, f->msg_len);
        return 0;
    case OP_REG_SEND:    /* {6, FromPid, Unused, ToName} */
    case OP_REG_SEND_TT: /* {16, FromPid, Unused, ToName, Token} */
    {
        const char *nm;
        size_t nl;
        if (arity < 4 || !f->msg || dist_dec_pid(n, b, &idx, &from) ||
            ei_skip_term(b, &idx) < 0)
            return -EINVAL;
        if (atom_view(b, &idx, &nm, &nl) != 0) { /* Latin-1 beyond ASCII: let ei convert */
            if (ei_decode_atom_as(b, &idx, name, sizeof name, ERLANG_UTF8, NULL, NULL) < 0)
                return -EINVAL;
            nm = name;
            nl = strlen(name);
        }
        if (nl == 10 && memcmp(nm, "net_kernel", 10) == 0)
            net_kernel_msg(n, f->msg, f->msg_len);
        else
            proc_deliver_named(n, nm, nl, &from, f->msg, f->msg_len);
        return 0;
    }
    case OP_LINK: /* {1, From, To} */
        if (arity != 3 || dist_dec_pid(n, b, &idx, &from) || dist_dec_pid(n, b, &idx, &to))
            return -EINVAL;
        if (proc_add_link(n, &to, &from) == -ESRCH)
            dist_send_ctrl(n, from.node, OP_EXIT, &to, &from, NULL, 0, NULL, 0, NOPROC,
                           sizeof NOPROC);
        return 0;
    case OP_UNLINK: /* {4, From, To} */
        if (arity != 3 || dist_dec_pid(n, b, &idx, &from) || dist_dec_pid(n, b, &idx, &to))
            return -EINVAL;
        proc_del_link(n, &to, &from);
        return 0;
    case OP_UNLINK_ID: { /* {35, Id, From, To} */
        unsigned long long id;
        if (arity != 4 || ei_decode_ulonglong(b, &idx, &id) < 0 ||
            dist_dec_pid(n, b, &idx, &from) || dist_dec_pid(n, b, &idx, &to))
            return -EINVAL;
        proc_del_link(n, &to, &from);
        dist_send_ctrl(n, from.node, OP_UNLINK_ID_ACK, &to, &from, NULL, id, NULL, 0, NULL, 0);
        return 0;
    }
    case OP_UNLINK_ID_ACK:
    case OP_NODE_LINK:
    case OP_GROUP_LEADER:
        return 0;
    case OP_EXIT:     /* {3, From, To, Reason} */
    case OP_EXIT_TT:  /* {13, From, To, Token, Reason} */
    case OP_EXIT2:    /* {8, From, To, Reason} */
    case OP_EXIT2_TT: /* {18, From, To, Token, Reason} */
        if (arity < 4 || dist_dec_pid(n, b, &idx, &from) || dist_dec_pid(n, b, &idx, &to))
            return -EINVAL;
        if ((op == OP_EXIT_TT || op == OP_EXIT2_TT) && ei_skip_term(b, &idx) < 0)
            return -EINVAL;
        if ((size_t)idx >= f->ctrl_len)
            return -EINVAL;
        proc_signal(n, &to, &from, b + idx, f->ctrl_len - (size_t)idx,
                    op == OP_EXIT || op == OP_EXIT_TT);
        return 0;
    case OP_MONITOR_P: { /* {19, FromPid, ToProc, Ref} */
        if (arity != 4 || dist_dec_pid(n, b, &idx, &from))
            return -EINVAL;
        int type, size, by_name = 0;
        shoal_proc *p = NULL;
        int target_at = idx;
        if (ei_get_type(b, &idx, &type, &size) < 0)
            return -EINVAL;
        if (type == ERL_ATOM_EXT || type == ERL_SMALL_ATOM_EXT || type == ERL_ATOM_UTF8_EXT ||
            type == ERL_SMALL_ATOM_UTF8_EXT) {
            if (ei_decode_atom_as(b, &idx, name, sizeof name, ERLANG_UTF8, NULL, NULL) < 0)
                return -EINVAL;
            by_name = 1;
            p = smap_get(&n->regnames, name);
            if (!p && strcmp(name, "net_kernel") == 0)
                return 0; /* ours lives as long as the node: nothing to record */
        } else {
            if (dist_dec_pid(n, b, &idx, &to))
                return -EINVAL;
            p = proc_get(n, &to);
        }
        int ref_at = idx;
        if (ei_skip_term(b, &idx) < 0 || (size_t)idx != f->ctrl_len)
            return -EINVAL;
        if (p && !p->exiting) {
            if (proc_add_inmon(n, p, &from, 0, by_name, b + ref_at, (size_t)(idx - ref_at)) ==
                0)
                return 0;
        }
        /* no such process: DOWN with noproc at once */
        (void)target_at;
        dist_send_ctrl(n, from.node, OP_MONITOR_P_EXIT, &to, &from, by_name ? name : NULL, 0,
                       b + ref_at, (size_t)(idx - ref_at), NOPROC, sizeof NOPROC);
        return 0;
    }
    case OP_DEMONITOR_P: { /* {20, FromPid, ToProc, Ref} */
        if (arity != 4 || dist_dec_pid(n, b, &idx, &from))
            return -EINVAL;
        int type, size;
        shoal_proc *p;
        if (ei_get_type(b, &idx, &type, &size) < 0)
            return -EINVAL;
        if (type == ERL_PID_EXT || type == ERL_NEW_PID_EXT) {
            if (dist_dec_pid(n, b, &idx, &to))
                return -EINVAL;
            p = proc_get(n, &to);
        } else {
            if (ei_decode_atom_as(b, &idx, name, sizeof name, ERLANG_UTF8, NULL, NULL) < 0)
                return -EINVAL;
            p = smap_get(&n->regnames, name);
        }
        int ref_at = idx;
        if (ei_skip_term(b, &idx) < 0)
            return -EINVAL;
        if (p)
            proc_del_inmon(n, p, &from, b + ref_at, (size_t)(idx - ref_at), 0);
        return 0;
    }
    case OP_MONITOR_P_EXIT: { /* {21, FromProc, ToPid, Ref, Reason} */
        uint64_t refno;
        if (arity != 5 || ei_skip_term(b, &idx) < 0 || dist_dec_pid(n, b, &idx, &to))
            return -EINVAL;
        int rc = dist_dec_our_ref(n, b, &idx, &refno);
        if (rc == -EINVAL || (size_t)idx >= f->ctrl_len)
            return -EINVAL;
        if (rc == 0)
            outmon_fire(n, refno, b + idx, f->ctrl_len - (size_t)idx, -ESRCH);
        return 0;
    }
    default:
        cn_debug(n, "ignoring control message %ld from %s", op, n->names[c->peer]);
        return 0;
    }
}

/* exported for proc.c */
const char *dist_normal_atom(size_t *len);
const char *dist_normal_atom(size_t *len)
{
    *len = sizeof NORMAL;
    return NORMAL;
}

int dist_is_atom(const char *term, const char *name);
int dist_is_atom(const char *term, const char *name)
{
    return is_atom(term, name);
}
