/* ctrl.c - control messages out, and the pid and ref codecs every layer shares: control
 * tuples (SEND, REG_SEND, LINK, EXIT, MONITOR_P, MONITOR_P_EXIT, DEMONITOR_P, UNLINK_ID_ACK)
 * are encoded straight into the connection's output buffer (node.c), payload bytes copied
 * after them; pids are decoded through the node's name cache. It knows nothing of processes:
 * proc.c and dist.c call down into it. */
#include "cnode_int.h"

#include <errno.h>
#include <string.h>

#define ENC_RESERVE 2200 /* one pid, ref or atom with a long UTF-8 node name */

int shoal__enc_tuple(dbuf *b, int arity)
{
    if (shoal__dbuf_reserve(b, 8))
        return -ENOMEM;
    int idx = 0;
    ei_encode_tuple_header(b->data + b->len, &idx, arity);
    b->len += (size_t)idx;
    return 0;
}

int shoal__enc_long(dbuf *b, long v)
{
    if (shoal__dbuf_reserve(b, 16))
        return -ENOMEM;
    int idx = 0;
    ei_encode_long(b->data + b->len, &idx, v);
    b->len += (size_t)idx;
    return 0;
}

int shoal__enc_atom(dbuf *b, const char *a)
{
    if (shoal__dbuf_reserve(b, ENC_RESERVE))
        return -ENOMEM;
    int idx = 0;
    if (ei_encode_atom_len_as(b->data + b->len, &idx, a, (int)strlen(a), ERLANG_UTF8,
                              ERLANG_UTF8) < 0)
        return -EINVAL;
    b->len += (size_t)idx;
    return 0;
}

int shoal__enc_pid(shoal_node *n, dbuf *b, const shoal_pid *p)
{
    if (p->node >= n->nnames)
        return -EINVAL;
    if (shoal__dbuf_reserve(b, ENC_RESERVE))
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
        shoal__put16(d + i, (uint32_t)nl);
        i += 2;
    }
    memcpy(d + i, node, nl);
    i += nl;
    shoal__put32(d + i, p->num);
    shoal__put32(d + i + 4, p->serial);
    shoal__put32(d + i + 8, p->creation);
    b->len += i + 12;
    return 0;
}

int shoal__enc_ref(shoal_node *n, dbuf *b, uint64_t refno)
{
    if (shoal__dbuf_reserve(b, ENC_RESERVE))
        return -ENOMEM;
    char *d = b->data + b->len;
    const char *node = n->full_name;
    size_t nl = strlen(node), i = 0;
    d[i++] = 'Z';
    shoal__put16(d + i, 3);
    i += 2;
    d[i++] = 'w';
    d[i++] = (char)nl;
    memcpy(d + i, node, nl);
    i += nl;
    shoal__put32(d + i, n->creation);
    shoal__put32(d + i + 4, (uint32_t)(refno & 0x3ffff));
    shoal__put32(d + i + 8, (uint32_t)(refno >> 18));
    shoal__put32(d + i + 12, n->ref_salt);
    b->len += i + 16;
    return 0;
}

int shoal__dec_pid(shoal_node *n, const char *buf, int *idx, shoal_pid *p)
{
    if (buf[*idx] == ERL_NEW_PID_EXT) { /* fast path: a node name seen lately, no copies */
        int j = *idx + 1;
        const char *s;
        size_t nl;
        uint32_t ni;
        if (shoal__atom_view(buf, &j, &s, &nl) == 0 && shoal__name_lookup(n, s, nl, &ni) == 0) {
            p->node = ni;
            p->num = shoal__get32(buf + j);
            p->serial = shoal__get32(buf + j + 4);
            p->creation = shoal__get32(buf + j + 8);
            *idx = j + 12;
            return 0;
        }
    }
    erlang_pid ep;
    if (ei_decode_pid(buf, idx, &ep) < 0)
        return -EINVAL;
    uint32_t ni;
    int rc = shoal__intern(n, ep.node, &ni);
    if (rc)
        return rc;
    shoal__name_seen(n, ni);
    p->node = ni;
    p->num = ep.num;
    p->serial = ep.serial;
    p->creation = ep.creation;
    return 0;
}

int shoal__dec_our_ref(shoal_node *n, const char *buf, int *idx, uint64_t *refno)
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
int shoal__ctrl_send(shoal_node *n, uint32_t peer, int op, const shoal_pid *from,
                     const shoal_pid *to, const char *name, uint64_t refno, const char *refbytes,
                     size_t reflen, const char *term, size_t len)
{
    conn *c = shoal__conn_for(n, peer, 1);
    if (!c)
        return -ENOTCONN;
    if (c->state == C_CLOSING)
        return -ENOTCONN;
    dbuf *b = shoal__conn_outbuf(c);
    size_t start = b->len;
    long mark = shoal__frame_begin(b);
    if (mark < 0)
        return (int)mark;
    int rc = 0;
    switch (op) {
    case OP_SEND: /* {2, '', ToPid} */
        rc = shoal__enc_tuple(b, 3) || shoal__enc_long(b, op) || shoal__enc_atom(b, "") ||
             shoal__enc_pid(n, b, to);
        break;
    case OP_REG_SEND: /* {6, FromPid, '', ToName} */
        rc = shoal__enc_tuple(b, 4) || shoal__enc_long(b, op) || shoal__enc_pid(n, b, from) ||
             shoal__enc_atom(b, "") || shoal__enc_atom(b, name);
        break;
    case OP_LINK: /* {1, From, To} */
        rc = shoal__enc_tuple(b, 3) || shoal__enc_long(b, op) || shoal__enc_pid(n, b, from) ||
             shoal__enc_pid(n, b, to);
        break;
    case OP_EXIT:  /* {3, From, To, Reason} */
    case OP_EXIT2: /* {8, From, To, Reason} */
        rc = shoal__enc_tuple(b, 4) || shoal__enc_long(b, op) || shoal__enc_pid(n, b, from) ||
             shoal__enc_pid(n, b, to) || shoal__dbuf_append(b, term, len);
        term = NULL;
        break;
    case OP_UNLINK_ID_ACK: /* {36, Id, From, To}; refno carries the id */
        rc = shoal__enc_tuple(b, 4) || shoal__enc_long(b, op);
        if (!rc && shoal__dbuf_reserve(b, 16) == 0) {
            int idx = 0;
            ei_encode_ulonglong(b->data + b->len, &idx, (unsigned long long)refno);
            b->len += (size_t)idx;
        }
        rc = rc || shoal__enc_pid(n, b, from) || shoal__enc_pid(n, b, to);
        break;
    case OP_MONITOR_P:   /* {19, FromPid, ToProc, Ref} */
    case OP_DEMONITOR_P: /* {20, FromPid, ToProc, Ref} */
        rc = shoal__enc_tuple(b, 4) || shoal__enc_long(b, op) || shoal__enc_pid(n, b, from) ||
             (name ? shoal__enc_atom(b, name) : shoal__enc_pid(n, b, to)) ||
             shoal__enc_ref(n, b, refno);
        break;
    case OP_MONITOR_P_EXIT: /* {21, FromProc, ToPid, Ref, Reason} */
        rc = shoal__enc_tuple(b, 5) || shoal__enc_long(b, op) ||
             (name ? shoal__enc_atom(b, name) : shoal__enc_pid(n, b, from)) ||
             shoal__enc_pid(n, b, to) || shoal__dbuf_append(b, refbytes, reflen) ||
             shoal__dbuf_append(b, term, len);
        term = NULL;
        break;
    default:
        rc = -EINVAL;
    }
    if (!rc && term)
        rc = shoal__frame_msg(b, term, len);
    if (rc) {
        b->len = start;
        return rc < 0 ? rc : -ENOMEM;
    }
    shoal__frame_end(b, mark);
    if (c->state == C_UP)
        shoal__conn_dirty(c);
    return 0;
}

/* Is term (validated) the atom `name`? */
int shoal__is_atom(const char *term, const char *name)
{
    int idx = 0;
    char a[MAXATOMLEN_UTF8];
    return ei_decode_atom_as(term, &idx, a, sizeof a, ERLANG_UTF8, NULL, NULL) == 0 &&
           strcmp(a, name) == 0;
}
