/* fuzz_conn.c - libFuzzer target for the connection state machine: arbitrary bytes from a
 * peer go into a socketless connection (testconn.h) of a node hosting echo and the scripted
 * fz processes, so they reach the handshake (as acceptor, as initiator, against an existing
 * connection to the same peer: "alive" and simultaneous connects), then frames: ticks,
 * control messages, gen_server calls, links, monitors and exits, and through fz the node's
 * own calls, monitors, links, sends, timers and exits. Every byte the node writes back is
 * checked (handshake messages its role may send, then whole well-formed frames), and the
 * node must close with no handle left. Any crash, sanitizer report, leak or failed check is a
 * bug; `make fuzz-conn` runs it longer.
 *
 * Input: byte 0 picks the scenario, the rest is what the peer sends.
 *   bits 0-1: 0 accept, 1 initiate, 2 already up, 3 accept while connections to TC_PEER
 *             (bit 2: up, else our pending initiation) and TC_PEER2 (pending) exist
 *   bits 3-5: read size (everything at once, or 1, 2, 3, 5, 8, 64 or 512 bytes a read)
 *   bit 6:    afterwards, a tick far in the future (handshake and net tick timeouts)
 *   bit 7:    max_frame at its minimum (4 KiB) instead of 64 KiB */
#include "testconn.h"

#include <stdio.h>
#include <stdlib.h>

static uv_loop_t loop;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int inited;
    if (!inited) {
        uv_loop_init(&loop);
        inited = 1;
    }
    if (size < 1)
        return 0;
    unsigned sc = data[0];
    tc_node t;
    t.quiet = 1;
    if (tc_open(&t, &loop, sc & 0x80 ? SHOAL_MAX_FRAME_MIN : 65536))
        abort();
    int main_conn;
    switch (sc & 3) {
    case 0:
        main_conn = tc_conn(&t, SHOAL__TEST_ACCEPT, NULL);
        break;
    case 1:
        main_conn = tc_conn(&t, SHOAL__TEST_INITIATE, TC_PEER);
        break;
    case 2:
        main_conn = tc_conn(&t, SHOAL__TEST_UP, TC_PEER);
        break;
    default:
        if (tc_conn(&t, sc & 4 ? SHOAL__TEST_UP : SHOAL__TEST_INITIATE, TC_PEER) < 0 ||
            tc_conn(&t, SHOAL__TEST_INITIATE, TC_PEER2) < 0)
            abort();
        main_conn = tc_conn(&t, SHOAL__TEST_ACCEPT, NULL);
    }
    if (main_conn < 0)
        abort();
    static const size_t reads[8] = {(size_t)-1, 1, 2, 3, 5, 8, 64, 512};
    size_t chunk = reads[(sc >> 3) & 7];
    const char *p = (const char *)data + 1;
    size_t left = size - 1;
    char why[256];
    while (left) {
        size_t k = left < chunk ? left : chunk;
        int rc = tc_feed(&t, main_conn, p, k);
        if (tc_check_node(&t, why, sizeof why)) {
            fprintf(stderr, "fuzz_conn: node state broken: %s\n", why);
            abort();
        }
        if (rc < 0)
            break;
        p += k;
        left -= k;
    }
    if (sc & 0x40) {
        shoal__node_test_turn(t.n, uv_now(&loop) + 3600 * 1000);
        if (tc_check_node(&t, why, sizeof why)) {
            fprintf(stderr, "fuzz_conn: node state broken after timeouts: %s\n", why);
            abort();
        }
    }
    for (int i = 0; i < t.nconns; i++)
        if (tc_check_output(&t, i, why, sizeof why)) {
            fprintf(stderr, "fuzz_conn: connection %d wrote something it must not: %s\n", i,
                    why);
            abort();
        }
    if (tc_close(&t)) {
        fprintf(stderr, "fuzz_conn: handles left on the loop after the node closed\n");
        abort();
    }
    return 0;
}
