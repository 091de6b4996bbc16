/* cnode.c - the node's public life cycle, and the one place that wires the layers together:
 * shoal_node_new builds the transport (node.c) with upcalls into dist.c (frames in) and
 * proc.c (node down, the local run queue); close and free run the process layer's part
 * before the transport's, so exit signals and DOWNs go out before the sockets close. */
#include "cnode_int.h"

static const node_upcalls upcalls = {
    .frame_in = shoal__dist_frame,
    .node_down = shoal__proc_node_down,
    .run_queue = shoal__proc_run_queue,
};

int shoal_node_new(uv_loop_t *loop, const shoal_node_opts *opts, const shoal_node_hooks *hooks,
                   shoal_node **out)
{
    return shoal__node_new(loop, opts, hooks, &upcalls, out);
}

void shoal_node_close(shoal_node *n)
{
    if (!n || n->closing)
        return;
    shoal__proc_close_all(n);
    shoal__node_close(n);
}

void shoal_node_free(shoal_node *n)
{
    if (!n)
        return;
    shoal__proc_free_all(n);
    shoal__node_free(n);
}
