/* echo.c - the example C process from docs/cnode.md, registered as `echo`: it answers every
 * gen_server call with the request itself, except the request `self`, which it answers with
 * its own pid. Casts and plain messages are ignored. It is the smallest complete use of
 * include/shoal.h: decode with ei, reply with shoal_reply. */
#include "shoal.h"

#include <string.h>

static int echo_handle(shoal_proc *self, const shoal_msg *msg)
{
    if (msg->kind != SHOAL_MSG_CALL)
        return 0; /* keep running */
    shoal_node *node = shoal_proc_node(self);
    int idx = 0;
    char atom[MAXATOMLEN_UTF8];
    if (ei_decode_atom_as(msg->term, &idx, atom, sizeof atom, ERLANG_UTF8, NULL, NULL) == 0 &&
        strcmp(atom, "self") == 0) {
        ei_x_buff x;
        shoal_pid me = shoal_self(self);
        ei_x_new(&x);
        shoal_encode_pid(node, &x, &me);
        shoal_reply(node, msg->reply_to, x.buff, (size_t)x.index);
        ei_x_free(&x);
        return 0;
    }
    shoal_reply(node, msg->reply_to, msg->term, msg->len); /* the request, unchanged */
    return 0;
}

int shoal_echo_spawn(shoal_node *n, shoal_proc **out)
{
    shoal_proc_spec spec = {0};
    spec.handle = echo_handle;
    spec.name = "echo";
    return shoal_spawn(n, &spec, out);
}
