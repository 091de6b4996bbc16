/* testconn.h - a socketless C node for unit tests and the connection fuzzer: a node created
 * (never started) on a loop of its own, with a fixed incarnation (creation, ref salt and the
 * challenge it sends), so a peer's bytes, digests included, can be written in advance; the
 * example `echo` process and `fz`/`fz2`, processes scripted by the messages they get (link,
 * monitor, call, send, exit, spawn...); test connections (shoal__conn_test_*) whose output is
 * checked against what the protocol allows us to write. Not part of the library. */
#ifndef SHOAL_TESTCONN_H
#define SHOAL_TESTCONN_H

#include "cnode_int.h"

#define TC_NAME "fuzz@host"
#define TC_PEER "peer@host"   /* the peer of initiated and up connections */
#define TC_PEER2 "alpha@host" /* a peer whose name sorts before ours */
#define TC_COOKIE "fuzzcookie"
#define TC_CREATION 1u
#define TC_SALT 0x5eedu
#define TC_CHALLENGE 0x12345678u /* the challenge the node sends */
#define TC_MAX_CONNS 4

/* Pids of the processes tc_open spawns (ids 2, 3, 4 in spawn order; num = id). */
enum { TC_ECHO = 2, TC_FZ = 3, TC_FZ2 = 4 };

typedef struct tc_node {
    shoal_node *n;
    uv_loop_t *loop;
    conn *c[TC_MAX_CONNS];
    int role[TC_MAX_CONNS];
    dbuf out[TC_MAX_CONNS]; /* what the node wrote on each connection */
    int nconns;
    unsigned log_lines;     /* log lines the node wrote (through the log hook) */
    unsigned ups, downs;    /* node_up / node_down hooks */
    int quiet;              /* 1: do not print log lines */
    char last_line[1024];   /* the last log line */
} tc_node;

/* Creates the node on loop (which must have no other handles) with the given max_frame (0 =
 * default) and spawns echo, fz (trapping exits) and fz2. Returns 0 or a negative errno. */
int tc_open(tc_node *t, uv_loop_t *loop, size_t max_frame);
/* Opens a test connection (SHOAL__TEST_ACCEPT, or _INITIATE or _UP to peer); returns its
 * index or a negative errno. An initiated connection gets what a real one gets while it is
 * pending: a REG_SEND queued for the peer and a shoal_connect waiter. */
int tc_conn(tc_node *t, int role, const char *peer);
/* Feeds bytes to connection i, then runs a loop turn (run queue, due timers). Returns what
 * shoal__conn_test_feed returns. */
int tc_feed(tc_node *t, int i, const void *buf, size_t len);
/* Checks what the node wrote on connection i: the handshake messages its role may send, in
 * order, then only whole, well-formed frames of control messages we send. Returns 0, or -1
 * with a reason in why. */
int tc_check_output(const tc_node *t, int i, char *why, size_t whylen);
/* Checks the node's own bookkeeping: the connection each peer has is live and names that
 * peer, every connection that is up is the one its peer has, registered names and process
 * ids point at their processes, links are not doubled, every monitor or call is held by a
 * live process (or the system pid) and each process counts exactly the ones it holds.
 * Returns 0, or -1 with a reason in why. */
int tc_check_node(const tc_node *t, char *why, size_t whylen);
/* Releases the connections, closes the node, runs the loop until every handle is closed and
 * frees everything. Returns 0, or -1 if the loop still had handles (a leak). */
int tc_close(tc_node *t);

/* Runs one input of the connection fuzzer on a fresh node on loop: byte 0 picks the
 * scenario, the rest is what the peer sends.
 *   bits 0-1: 0 accept, 1 initiate, 2 already up, 3 accept while connections to TC_PEER
 *             (bit 2: up, else our pending initiation) and TC_PEER2 (pending) exist
 *   bits 3-5: read size (everything at once, or 1, 2, 3, 5, 8, 64 or 512 bytes a read)
 *   bit 6:    afterwards, a tick an hour later (handshake and net tick timeouts)
 *   bit 7:    max_frame at its minimum (4 KiB) instead of 64 KiB
 * Checks the node's bookkeeping after every read, then what it wrote on each connection, then
 * that it closes leaving nothing on the loop. Returns 0, or -1 with the broken rule in why. */
int tc_replay(uv_loop_t *loop, const uint8_t *data, size_t size, char *why, size_t whylen);

/* Builders for peer bytes (into b): handshake messages with a 2-byte length, and frames. */
void tc_put_send_name(dbuf *b, const char *name);        /* 'N' with OTP 25's flags */
void tc_put_challenge(dbuf *b, const char *name, uint32_t challenge); /* initiator side */
void tc_put_reply(dbuf *b, uint32_t challenge);          /* 'r': digest of TC_CHALLENGE */
void tc_put_ack(dbuf *b, uint32_t challenge);            /* 'a': digest of their challenge */
void tc_put_status(dbuf *b, const char *status);
/* A pass-through frame: control = the ei-encoded x (no version byte), msg NULL or a term. */
void tc_put_frame(dbuf *b, const ei_x_buff *ctrl, const ei_x_buff *msg);

/* ei helpers for the pids and refs above: a pid of this node (id) or of TC_PEER. */
void tc_encode_pid(ei_x_buff *x, const char *node, uint32_t num);

#endif
