/* dist.c - control messages in: the control tuple of a validated frame is decoded with ei
 * and turned into deliveries, links, monitors and exit signals for local C processes
 * (proc.c); `net_kernel`'s {is_auth, Node} is answered here so net_adm:ping/1 gets pong.
 * node.c hands frames up through the node's upcalls; answers go out through ctrl.c. */
#include "cnode_int.h"

#include <errno.h>
#include <string.h>

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
    if (shoal__dec_pid(n, m, &idx, &f->pid))
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

int shoal__dist_frame(conn *c, const frame *f)
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
        if (arity < 3 || !f->msg || ei_skip_term(b, &idx) < 0 || shoal__dec_pid(n, b, &idx, &to))
            return -EINVAL;
        shoal__proc_deliver(n, &to, 0, NULL, f->msg, f->msg_len);
        return 0;
    case OP_REG_SEND:    /* {6, FromPid, Unused, ToName} */
    case OP_REG_SEND_TT: /* {16, FromPid, Unused, ToName, Token} */
    {
        const char *nm;
        size_t nl;
        if (arity < 4 || !f->msg || shoal__dec_pid(n, b, &idx, &from) ||
            ei_skip_term(b, &idx) < 0)
            return -EINVAL;
        if (shoal__atom_view(b, &idx, &nm, &nl) != 0) { /* Latin-1 beyond ASCII: let ei convert */
            if (ei_decode_atom_as(b, &idx, name, sizeof name, ERLANG_UTF8, NULL, NULL) < 0)
                return -EINVAL;
            nm = name;
            nl = strlen(name);
        }
        if (nl == 10 && memcmp(nm, "net_kernel", 10) == 0)
            net_kernel_msg(n, f->msg, f->msg_len);
        else
            shoal__proc_deliver_named(n, nm, nl, &from, f->msg, f->msg_len);
        return 0;
    }
    case OP_LINK: /* {1, From, To} */
        if (arity != 3 || shoal__dec_pid(n, b, &idx, &from) || shoal__dec_pid(n, b, &idx, &to))
            return -EINVAL;
        if (shoal__proc_add_link(n, &to, &from) == -ESRCH)
            shoal__ctrl_send(n, from.node, OP_EXIT, &to, &from, NULL, 0, NULL, 0, ATOM_NOPROC,
                             sizeof ATOM_NOPROC);
        return 0;
    case OP_UNLINK: /* {4, From, To} */
        if (arity != 3 || shoal__dec_pid(n, b, &idx, &from) || shoal__dec_pid(n, b, &idx, &to))
            return -EINVAL;
        shoal__proc_del_link(n, &to, &from);
        return 0;
    case OP_UNLINK_ID: { /* {35, Id, From, To} */
        unsigned long long id;
        if (arity != 4 || ei_decode_ulonglong(b, &idx, &id) < 0 ||
            shoal__dec_pid(n, b, &idx, &from) || shoal__dec_pid(n, b, &idx, &to))
            return -EINVAL;
        shoal__proc_del_link(n, &to, &from);
        shoal__ctrl_send(n, from.node, OP_UNLINK_ID_ACK, &to, &from, NULL, id, NULL, 0, NULL, 0);
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
        if (arity < 4 || shoal__dec_pid(n, b, &idx, &from) || shoal__dec_pid(n, b, &idx, &to))
            return -EINVAL;
        if ((op == OP_EXIT_TT || op == OP_EXIT2_TT) && ei_skip_term(b, &idx) < 0)
            return -EINVAL;
        if ((size_t)idx >= f->ctrl_len)
            return -EINVAL;
        shoal__proc_signal(n, &to, &from, b + idx, f->ctrl_len - (size_t)idx,
                           op == OP_EXIT || op == OP_EXIT_TT);
        return 0;
    case OP_MONITOR_P: { /* {19, FromPid, ToProc, Ref} */
        if (arity != 4 || shoal__dec_pid(n, b, &idx, &from))
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
            p = shoal__smap_get(&n->regnames, name);
            if (!p && strcmp(name, "net_kernel") == 0)
                return 0; /* ours lives as long as the node: nothing to record */
        } else {
            if (shoal__dec_pid(n, b, &idx, &to))
                return -EINVAL;
            p = shoal__proc_get(n, &to);
        }
        int ref_at = idx;
        if (ei_skip_term(b, &idx) < 0 || (size_t)idx != f->ctrl_len)
            return -EINVAL;
        if (p && !p->exiting) {
            if (shoal__proc_add_inmon(n, p, &from, 0, by_name, b + ref_at,
                                      (size_t)(idx - ref_at)) == 0)
                return 0;
        }
        /* no such process: DOWN with noproc at once */
        (void)target_at;
        shoal__ctrl_send(n, from.node, OP_MONITOR_P_EXIT, &to, &from, by_name ? name : NULL, 0,
                         b + ref_at, (size_t)(idx - ref_at), ATOM_NOPROC, sizeof ATOM_NOPROC);
        return 0;
    }
    case OP_DEMONITOR_P: { /* {20, FromPid, ToProc, Ref} */
        if (arity != 4 || shoal__dec_pid(n, b, &idx, &from))
            return -EINVAL;
        int type, size;
        shoal_proc *p;
        if (ei_get_type(b, &idx, &type, &size) < 0)
            return -EINVAL;
        if (type == ERL_PID_EXT || type == ERL_NEW_PID_EXT) {
            if (shoal__dec_pid(n, b, &idx, &to))
                return -EINVAL;
            p = shoal__proc_get(n, &to);
        } else {
            if (ei_decode_atom_as(b, &idx, name, sizeof name, ERLANG_UTF8, NULL, NULL) < 0)
                return -EINVAL;
            p = shoal__smap_get(&n->regnames, name);
        }
        int ref_at = idx;
        if (ei_skip_term(b, &idx) < 0)
            return -EINVAL;
        if (p)
            shoal__proc_del_inmon(n, p, &from, b + ref_at, (size_t)(idx - ref_at), 0);
        return 0;
    }
    case OP_MONITOR_P_EXIT: { /* {21, FromProc, ToPid, Ref, Reason} */
        uint64_t refno;
        if (arity != 5 || ei_skip_term(b, &idx) < 0 || shoal__dec_pid(n, b, &idx, &to))
            return -EINVAL;
        int rc = shoal__dec_our_ref(n, b, &idx, &refno);
        if (rc == -EINVAL || (size_t)idx >= f->ctrl_len)
            return -EINVAL;
        if (rc == 0)
            shoal__outmon_fire(n, refno, b + idx, f->ctrl_len - (size_t)idx, -ESRCH);
        return 0;
    }
    default:
        shoal__debug(n, "ignoring control message %ld from %s", op, n->names[c->peer]);
        return 0;
    }
}
