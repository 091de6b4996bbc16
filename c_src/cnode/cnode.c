/* cnode.c - the node's public life cycle, and the one place that wires the layers together:
 * shoal_node_new builds the transport (node.c) with upcalls into dist.c (frames in) and
 * proc.c (node down, the local run queue); close and free run the process layer's part
 * before the transport's, so exit signals and DOWNs go out before the sockets close. */
#include "cnode_int.h"

static const cn_upcalls upcalls = {
    .frame_in = dist_handle_frame,
    .node_down = proc_node_down,
    .run_queue = proc_run_queue,
};

int shoal_node_new(uv_loop_t *loop, const shoal_node_opts *opts, const shoal_node_hooks *hooks,
                   shoal_node **out)
{
    return cn_node_new(loop, opts, hooks, &upcalls, out);
}

void shoal_node_close(shoal_node *n)
{
    if (!n || n->closing)
        return;
    proc_close_all(n);
    cn_node_close(n);
}

void shoal_node_free(shoal_node *n)
{
    if (!n)
        return;
    proc_free_all(n);
    cn_node_free(n);
}
