/* echo.c - the example C process from docs/cnode.md, registered as `echo`: it answers every
 * gen_server call with the request itself, except `self` (answered with its pid) and
 * `cast_count` (the number of casts it has received, which the benchmark reads). Plain
 * messages are ignored. It is the smallest complete use of include/shoal.h: state, decode
 * with ei, reply with shoal_reply. */
#include "shoal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct echo_state {
    uint64_t casts;
} echo_state;

static int echo_handle(shoal_proc *self, const shoal_msg *msg)
{
    echo_state *st = shoal_state(self);
    if (msg->kind == SHOAL_MSG_CAST)
        st->casts++;
    if (msg->kind != SHOAL_MSG_CALL)
        return 0; /* keep running */
    shoal_node *node = shoal_proc_node(self);
    int idx = 0;
    char atom[MAXATOMLEN_UTF8];
    if (ei_decode_atom_as(msg->term, &idx, atom, sizeof atom, ERLANG_UTF8, NULL, NULL) == 0 &&
        (strcmp(atom, "self") == 0 || strcmp(atom, "cast_count") == 0)) {
        ei_x_buff x;
        ei_x_new(&x);
        if (atom[0] == 's') {
            shoal_pid me = shoal_self(self);
            shoal_encode_pid(node, &x, &me);
        } else {
            ei_x_encode_ulonglong(&x, (unsigned long long)st->casts);
        }
        shoal_reply(node, msg->reply_to, x.buff, (size_t)x.index);
        ei_x_free(&x);
        return 0;
    }
    shoal_reply(node, msg->reply_to, msg->term, msg->len); /* the request, unchanged */
    return 0;
}

static void echo_terminate(shoal_proc *self, const char *reason, size_t len)
{
    (void)reason;
    (void)len;
    free(shoal_state(self));
}

int shoal_echo_spawn(shoal_node *n, shoal_proc **out)
{
    shoal_proc_spec spec = {0};
    spec.handle = echo_handle;
    spec.terminate = echo_terminate;
    spec.state = calloc(1, sizeof(echo_state));
    spec.name = "echo";
    if (!spec.state)
        return -1;
    int rc = shoal_spawn(n, &spec, out);
    if (rc)
        free(spec.state);
    return rc;
}
