/* ctrl.c - control messages out, and the pid and ref codecs every layer shares: control
 * tuples (SEND, REG_SEND, LINK, EXIT, MONITOR_P, MONITOR_P_EXIT, DEMONITOR_P, UNLINK_ID_ACK)
 * are encoded straight into the connection's output buffer (node.c), payload bytes copied
 * after them; pids are decoded through the node's name cache. It knows nothing of processes:
 * proc.c and dist.c call down into it. */
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

/* Is term (validated) the atom `name`? */
int dist_is_atom(const char *term, const char *name)
{
    int idx = 0;
    char a[MAXATOMLEN_UTF8];
    return ei_decode_atom_as(term, &idx, a, sizeof a, ERLANG_UTF8, NULL, NULL) == 0 &&
           strcmp(a, name) == 0;
}
