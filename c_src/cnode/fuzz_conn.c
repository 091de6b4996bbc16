/* fuzz_conn.c - libFuzzer target for the connection state machine: arbitrary bytes from a
 * peer go into a socketless connection (testconn.h) of a node hosting echo and the scripted
 * fz processes, so they reach the handshake (as acceptor, as initiator, against an existing
 * connection to the same peer: "alive" and simultaneous connects), then frames: ticks,
 * control messages, gen_server calls, links, monitors and exits, and through fz the node's
 * own calls, monitors, links, sends, timers and exits. The node's bookkeeping is checked
 * after every read, every byte it writes back is checked (handshake messages its role may
 * send, then whole well-formed frames), and it must close with no handle left. Any crash,
 * sanitizer report, leak or failed check is a bug. The input format is tc_replay's
 * (testconn.h); `make fuzz-conn` runs it longer. */
#include "testconn.h"

#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uv_loop_t loop; /* one for the whole run; each input leaves it empty */
    static int inited;
    char why[256];
    if (!inited) {
        uv_loop_init(&loop);
        inited = 1;
    }
    if (tc_replay(&loop, data, size, why, sizeof why)) {
        fprintf(stderr, "fuzz_conn: %s\n", why);
        abort();
    }
    return 0;
}
