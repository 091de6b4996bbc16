/* test_cnode_conn.c - the connection state machine, driven with bytes through the socketless
 * test node (c_src/cnode/testconn.h): both handshake roles, a restarted peer ("alive"), both
 * outcomes of a simultaneous connect, a wrong cookie, -max_frame, the rate-limited failure
 * log, and after the handshake calls, links, monitors and node down. Each test also checks
 * that everything the node wrote is what the protocol allows (tc_check_output). At the end,
 * every input of the connection fuzzer's seed directory is replayed: the generated seeds,
 * and the inputs of bugs it found, kept there as regression tests. */
#include "testconn.h"
#include "test_cnode.h"

#include <CUnit/CUnit.h>
#include <dirent.h>
#include <stdio.h>
#include <string.h>

static uv_loop_t loop;

static void open_node(tc_node *t, size_t max_frame)
{
    t->quiet = 1;
    CU_ASSERT_FATAL(tc_open(t, &loop, max_frame) == 0);
}

static void close_node(tc_node *t)
{
    char why[256] = "";
    int rc = tc_check_node(t, why, sizeof why);
    CU_ASSERT_EQUAL(rc, 0);
    if (rc)
        fprintf(stderr, "node: %s\n", why);
    for (int i = 0; i < t->nconns; i++) {
        int rc = tc_check_output(t, i, why, sizeof why);
        CU_ASSERT_EQUAL(rc, 0);
        if (rc)
            fprintf(stderr, "connection %d: %s\n", i, why);
    }
    CU_ASSERT_EQUAL(tc_close(t), 0);
}

static void feed(tc_node *t, int i, dbuf *b)
{
    tc_feed(t, i, b->data, b->len);
    b->len = 0;
}

/* The next handshake message the node wrote on connection i, from *off. */
static int take_hs(tc_node *t, int i, size_t *off, const char **body, size_t *blen)
{
    size_t used;
    if (shoal__hs_frame(t->out[i].data + *off, t->out[i].len - *off, body, blen, &used) != 1)
        return -1;
    *off += used;
    return 0;
}

/* The next frame (ticks skipped) the node wrote on connection i, from *off. */
static int take_frame(tc_node *t, int i, size_t *off, frame *f)
{
    for (;;) {
        size_t need;
        if (shoal__frame_parse(t->out[i].data + *off, t->out[i].len - *off,
                               SHOAL_MAX_FRAME_MAX, f, &need) != 1)
            return -1;
        *off += f->size;
        if (f->kind == FRAME_PASS)
            return 0;
    }
}

static long ctrl_op(const frame *f)
{
    int idx = 0, arity;
    long op = -1;
    ei_decode_tuple_header(f->ctrl, &idx, &arity);
    ei_decode_long(f->ctrl, &idx, &op);
    return op;
}

static int is_atom(const char *term, const char *want)
{
    int idx = 0;
    char a[MAXATOMLEN_UTF8];
    return ei_decode_atom(term, &idx, a) == 0 && strcmp(a, want) == 0;
}

/* Peer side of an accepted handshake up to the node's ack; *off is then past it. */
static void accept_handshake(tc_node *t, int i, const char *peer, size_t *off)
{
    dbuf b = {0};
    const char *body;
    size_t blen;
    tc_put_send_name(&b, peer);
    feed(t, i, &b);
    CU_ASSERT(take_hs(t, i, off, &body, &blen) == 0 && blen == 3 && !memcmp(body, "sok", 3));
    hs_name hn;
    CU_ASSERT(take_hs(t, i, off, &body, &blen) == 0 &&
              shoal__hs_parse_name(body, blen, 1, &hn) == 0 && hn.challenge == TC_CHALLENGE &&
              !strcmp(hn.name, TC_NAME));
    tc_put_reply(&b, 4711);
    feed(t, i, &b);
    unsigned char dig[16];
    shoal__hs_digest(TC_COOKIE, 4711, dig);
    CU_ASSERT(take_hs(t, i, off, &body, &blen) == 0 && blen == 17 && body[0] == 'a' &&
              !memcmp(body + 1, dig, 16));
    CU_ASSERT_EQUAL(shoal__conn_test_state(t->c[i]), 1);
    shoal__dbuf_free(&b);
}

/* {6, Pid, '', To} + {'$gen_call', {Pid, Tag}, Req-atom}, Pid a process on peer */
static void put_call(dbuf *b, const char *peer, const char *to, const char *tag,
                     const char *req)
{
    ei_x_buff c, m;
    ei_x_new(&c);
    ei_x_encode_tuple_header(&c, 4);
    ei_x_encode_long(&c, OP_REG_SEND);
    tc_encode_pid(&c, peer, 42);
    ei_x_encode_atom(&c, "");
    ei_x_encode_atom(&c, to);
    ei_x_new(&m);
    ei_x_encode_tuple_header(&m, 3);
    ei_x_encode_atom(&m, "$gen_call");
    ei_x_encode_tuple_header(&m, 2);
    tc_encode_pid(&m, peer, 42);
    ei_x_encode_atom(&m, tag);
    ei_x_encode_atom(&m, req);
    tc_put_frame(b, &c, &m);
    ei_x_free(&c);
    ei_x_free(&m);
}

/* The node's answer to put_call: SEND {Tag, Reply-atom} to the peer pid. */
static int is_reply(const frame *f, const char *tag, const char *reply)
{
    int idx = 0, arity;
    char a[MAXATOMLEN_UTF8];
    return ctrl_op(f) == OP_SEND && f->msg && ei_decode_tuple_header(f->msg, &idx, &arity) == 0 &&
           arity == 2 && ei_decode_atom(f->msg, &idx, a) == 0 && !strcmp(a, tag) &&
           ei_decode_atom(f->msg, &idx, a) == 0 && !strcmp(a, reply);
}

/* {Op, PeerPid(42), LocalPid(num)} and friends. */
static void put_ctrl3(dbuf *b, long op, uint32_t local, const char *reason)
{
    ei_x_buff c;
    ei_x_new(&c);
    ei_x_encode_tuple_header(&c, reason ? 4 : 3);
    ei_x_encode_long(&c, op);
    tc_encode_pid(&c, TC_PEER, 42);
    tc_encode_pid(&c, TC_NAME, local);
    if (reason)
        ei_x_encode_atom(&c, reason);
    tc_put_frame(b, &c, NULL);
    ei_x_free(&c);
}

/* ---- the handshake ------------------------------------------------------------------------ */

static void test_accept_then_call(void)
{
    tc_node t;
    open_node(&t, 0);
    int i = tc_conn(&t, SHOAL__TEST_ACCEPT, NULL);
    size_t off = 0;
    accept_handshake(&t, i, TC_PEER, &off);
    CU_ASSERT_EQUAL(t.ups, 1);
    dbuf b = {0};
    put_call(&b, TC_PEER, "echo", "t1", "hello");
    shoal__frame_tick(&b);
    put_call(&b, TC_PEER, "net_kernel", "t2", "x"); /* not {is_auth, _}: no answer */
    put_call(&b, TC_PEER, "echo", "t3", "again");
    feed(&t, i, &b);
    frame f;
    CU_ASSERT(take_frame(&t, i, &off, &f) == 0 && is_reply(&f, "t1", "hello"));
    CU_ASSERT(take_frame(&t, i, &off, &f) == 0 && is_reply(&f, "t3", "again"));
    CU_ASSERT_EQUAL(off, t.out[i].len);
    shoal__dbuf_free(&b);
    close_node(&t);
}

static void test_initiate(void)
{
    tc_node t;
    open_node(&t, 0);
    int i = tc_conn(&t, SHOAL__TEST_INITIATE, TC_PEER);
    size_t off = 0;
    const char *body;
    size_t blen;
    hs_name hn;
    CU_ASSERT(take_hs(&t, i, &off, &body, &blen) == 0 &&
              shoal__hs_parse_name(body, blen, 0, &hn) == 0 && !strcmp(hn.name, TC_NAME));
    dbuf b = {0};
    tc_put_status(&b, "ok");
    tc_put_challenge(&b, TC_PEER, 999);
    feed(&t, i, &b);
    unsigned char dig[16];
    shoal__hs_digest(TC_COOKIE, 999, dig);
    CU_ASSERT(take_hs(&t, i, &off, &body, &blen) == 0 && blen == 21 && body[0] == 'r' &&
              shoal__get32(body + 1) == TC_CHALLENGE && !memcmp(body + 5, dig, 16));
    CU_ASSERT_EQUAL(shoal__conn_test_state(t.c[i]), 0);
    tc_put_ack(&b, TC_CHALLENGE);
    feed(&t, i, &b);
    CU_ASSERT_EQUAL(shoal__conn_test_state(t.c[i]), 1);
    /* what was queued while pending goes out now: REG_SEND {6, System, '', srv} + hi */
    frame f;
    CU_ASSERT(take_frame(&t, i, &off, &f) == 0 && ctrl_op(&f) == OP_REG_SEND && f.msg &&
              is_atom(f.msg, "hi"));
    shoal__dbuf_free(&b);
    close_node(&t);
}

static void test_wrong_cookie(void)
{
    tc_node t;
    open_node(&t, 0);
    int i = tc_conn(&t, SHOAL__TEST_ACCEPT, NULL);
    dbuf b = {0};
    tc_put_send_name(&b, TC_PEER);
    unsigned char dig[16];
    shoal__hs_digest("not the cookie", TC_CHALLENGE, dig);
    shoal__hs_put_reply(&b, 4711, dig);
    feed(&t, i, &b);
    CU_ASSERT_EQUAL(shoal__conn_test_state(t.c[i]), -1);
    CU_ASSERT_EQUAL(t.ups, 0);
    CU_ASSERT_EQUAL(t.log_lines, 1);
    CU_ASSERT(strstr(t.last_line, "wrong cookie") != NULL);
    CU_ASSERT(strstr(t.last_line, TC_PEER) != NULL);
    shoal__dbuf_free(&b);
    close_node(&t);
}

/* A peer restarted before we saw its old connection die: "alive", it says true, the old
 * connection goes (node down), the new one comes up. */
static void test_restarted_peer(void)
{
    tc_node t;
    open_node(&t, 0);
    int old = tc_conn(&t, SHOAL__TEST_UP, TC_PEER);
    int i = tc_conn(&t, SHOAL__TEST_ACCEPT, NULL);
    dbuf b = {0};
    const char *body;
    size_t blen, off = 0;
    tc_put_send_name(&b, TC_PEER);
    feed(&t, i, &b);
    CU_ASSERT(take_hs(&t, i, &off, &body, &blen) == 0 && blen == 6 &&
              !memcmp(body, "salive", 6));
    tc_put_status(&b, "true");
    feed(&t, i, &b);
    CU_ASSERT_EQUAL(shoal__conn_test_state(t.c[old]), -1);
    CU_ASSERT_EQUAL(t.downs, 1);
    CU_ASSERT(take_hs(&t, i, &off, &body, &blen) == 0 && body[0] == 'N');
    tc_put_reply(&b, 1);
    feed(&t, i, &b);
    CU_ASSERT_EQUAL(shoal__conn_test_state(t.c[i]), 1);
    CU_ASSERT_EQUAL(t.ups, 2);
    shoal__dbuf_free(&b);
    close_node(&t);
}

/* Both sides connect at once. Against a larger name we yield: the pending connection goes
 * quietly (no node down) and what it queued moves to the accepted one. Against a smaller
 * name we win: "nok", and our pending connection stays. */
static void test_simultaneous_connect(void)
{
    tc_node t;
    open_node(&t, 0);
    int lose = tc_conn(&t, SHOAL__TEST_INITIATE, TC_PEER);
    int win = tc_conn(&t, SHOAL__TEST_INITIATE, TC_PEER2);
    int a = tc_conn(&t, SHOAL__TEST_ACCEPT, NULL);
    size_t off = 0;
    const char *body;
    size_t blen;
    dbuf b = {0};
    tc_put_send_name(&b, TC_PEER);
    feed(&t, a, &b);
    CU_ASSERT(take_hs(&t, a, &off, &body, &blen) == 0 && blen == 16 &&
              !memcmp(body, "sok_simultaneous", 16));
    CU_ASSERT_EQUAL(shoal__conn_test_state(t.c[lose]), -1);
    CU_ASSERT_EQUAL(t.downs, 0);
    CU_ASSERT(take_hs(&t, a, &off, &body, &blen) == 0 && body[0] == 'N');
    tc_put_reply(&b, 5);
    feed(&t, a, &b);
    CU_ASSERT(take_hs(&t, a, &off, &body, &blen) == 0 && body[0] == 'a');
    frame f;
    CU_ASSERT(take_frame(&t, a, &off, &f) == 0 && ctrl_op(&f) == OP_REG_SEND && f.msg &&
              is_atom(f.msg, "hi"));
    int a2 = tc_conn(&t, SHOAL__TEST_ACCEPT, NULL);
    tc_put_send_name(&b, TC_PEER2);
    feed(&t, a2, &b);
    off = 0;
    CU_ASSERT(take_hs(&t, a2, &off, &body, &blen) == 0 && blen == 4 && !memcmp(body, "snok", 4));
    CU_ASSERT_EQUAL(shoal__conn_test_state(t.c[a2]), -1);
    CU_ASSERT_EQUAL(shoal__conn_test_state(t.c[win]), 0);
    shoal__dbuf_free(&b);
    close_node(&t);
}

/* -max_frame: a frame over it closes its connection from the length prefix alone, with a
 * line naming size and limit; another connection is untouched. */
static void test_frame_over_max_frame(void)
{
    tc_node t;
    open_node(&t, SHOAL_MAX_FRAME_MIN);
    int big = tc_conn(&t, SHOAL__TEST_UP, TC_PEER);
    int other = tc_conn(&t, SHOAL__TEST_UP, TC_PEER2);
    const char hdr[4] = {0, 0, 0x10, 0x01}; /* 4097 bytes announced */
    tc_feed(&t, big, hdr, 4);
    CU_ASSERT_EQUAL(shoal__conn_test_state(t.c[big]), -1);
    CU_ASSERT(strstr(t.last_line, "a frame of 4097 bytes is over the limit of 4096 bytes "
                                  "(-max_frame)") != NULL);
    CU_ASSERT_EQUAL(shoal__conn_test_state(t.c[other]), 1);
    dbuf b = {0};
    put_call(&b, TC_PEER2, "echo", "t", "still");
    feed(&t, other, &b);
    size_t off = 0;
    frame f;
    CU_ASSERT(take_frame(&t, other, &off, &f) == 0 && is_reply(&f, "t", "still"));
    shoal__dbuf_free(&b);
    close_node(&t);
}

/* A peer that connects and says nothing, or stops halfway, is closed after 7 s. */
static void test_handshake_timeout(void)
{
    tc_node t;
    open_node(&t, 0);
    int silent = tc_conn(&t, SHOAL__TEST_ACCEPT, NULL);
    int half = tc_conn(&t, SHOAL__TEST_ACCEPT, NULL);
    dbuf b = {0};
    tc_put_send_name(&b, TC_PEER);
    feed(&t, half, &b);
    uint64_t now = uv_now(&loop);
    shoal__node_test_turn(t.n, now + CN_HS_TIMEOUT_MS - 1);
    CU_ASSERT_EQUAL(shoal__conn_test_state(t.c[silent]), 0);
    CU_ASSERT_EQUAL(shoal__conn_test_state(t.c[half]), 0);
    shoal__node_test_turn(t.n, now + CN_HS_TIMEOUT_MS + 1);
    CU_ASSERT_EQUAL(shoal__conn_test_state(t.c[silent]), -1);
    CU_ASSERT_EQUAL(shoal__conn_test_state(t.c[half]), -1);
    CU_ASSERT_EQUAL(t.log_lines, 2);
    CU_ASSERT(strstr(t.last_line, "no answer within 7000 ms") != NULL);
    shoal__dbuf_free(&b);
    close_node(&t);
}

/* 30 failed handshakes: 10 lines in full, then one summary counting the other 20 when the
 * period is over. */
static void test_failure_log_rate_limited(void)
{
    tc_node t;
    open_node(&t, 0);
    for (int k = 0; k < 30; k++) {
        dbuf sink = {0};
        conn *c;
        CU_ASSERT_FATAL(shoal__conn_test_open(t.n, SHOAL__TEST_ACCEPT, NULL, &sink, &c) == 0);
        shoal__conn_test_feed(c, "\0\0", 2); /* a zero-length handshake message */
        CU_ASSERT_EQUAL(shoal__conn_test_state(c), -1);
        shoal__conn_test_release(c);
        shoal__dbuf_free(&sink);
    }
    CU_ASSERT_EQUAL(t.log_lines, 10);
    shoal__node_test_turn(t.n, uv_now(&loop) + 60000);
    CU_ASSERT_EQUAL(t.log_lines, 11);
    CU_ASSERT(strstr(t.last_line, "handshake failures: 20 more not logged") != NULL);
    CU_ASSERT(strstr(t.last_line, "malformed 20") != NULL);
    close_node(&t);
}

/* ---- after the handshake ------------------------------------------------------------------ */

/* Links from the peer, then its connection dies (no traffic: net tick timeout): the trapping
 * fz gets an EXIT noconnection and lives, fz2 dies. A monitor the peer held on fz2 goes with
 * the connection: no DOWN is written anywhere. */
static void test_links_and_node_down(void)
{
    tc_node t;
    open_node(&t, 0);
    int i = tc_conn(&t, SHOAL__TEST_UP, TC_PEER);
    dbuf b = {0};
    put_ctrl3(&b, OP_LINK, TC_FZ, NULL);
    put_ctrl3(&b, OP_LINK, TC_FZ2, NULL);
    put_ctrl3(&b, OP_LINK, 99, NULL); /* nobody: EXIT noproc back */
    feed(&t, i, &b);
    size_t off = 0;
    frame f;
    CU_ASSERT(take_frame(&t, i, &off, &f) == 0 && ctrl_op(&f) == OP_EXIT);
    shoal__node_test_turn(t.n, uv_now(&loop) + 3600 * 1000);
    CU_ASSERT_EQUAL(shoal__conn_test_state(t.c[i]), -1);
    CU_ASSERT_EQUAL(t.downs, 1);
    shoal__node_test_turn(t.n, 0);
    CU_ASSERT_PTR_NOT_NULL(shoal_whereis(t.n, "fz"));
    CU_ASSERT_PTR_NULL(shoal_whereis(t.n, "fz2"));
    shoal__dbuf_free(&b);
    close_node(&t);
}

/* A monitor from the peer on fz2, then fz2 exits by a message: MONITOR_P_EXIT with the
 * reason; an EXIT to the linked peer pid too. */
static void test_monitor_and_exit(void)
{
    tc_node t;
    open_node(&t, 0);
    int i = tc_conn(&t, SHOAL__TEST_UP, TC_PEER);
    size_t off = 0;
    dbuf b = {0};
    ei_x_buff c, m;
    ei_x_new(&c);
    ei_x_encode_tuple_header(&c, 4);
    ei_x_encode_long(&c, OP_MONITOR_P);
    tc_encode_pid(&c, TC_PEER, 42);
    ei_x_encode_atom(&c, "fz2");
    erlang_ref r;
    memset(&r, 0, sizeof r);
    strcpy(r.node, TC_PEER);
    r.len = 3;
    r.n[0] = 77;
    r.creation = 7;
    ei_x_encode_ref(&c, &r);
    tc_put_frame(&b, &c, NULL);
    put_ctrl3(&b, OP_LINK, TC_FZ2, NULL);
    ei_x_free(&c);
    ei_x_new(&c); /* REG_SEND fz2 {exit, goodbye} */
    ei_x_encode_tuple_header(&c, 4);
    ei_x_encode_long(&c, OP_REG_SEND);
    tc_encode_pid(&c, TC_PEER, 42);
    ei_x_encode_atom(&c, "");
    ei_x_encode_atom(&c, "fz2");
    ei_x_new(&m);
    ei_x_encode_tuple_header(&m, 2);
    ei_x_encode_atom(&m, "exit");
    ei_x_encode_atom(&m, "goodbye");
    tc_put_frame(&b, &c, &m);
    ei_x_free(&c);
    ei_x_free(&m);
    feed(&t, i, &b);
    CU_ASSERT_PTR_NULL(shoal_whereis(t.n, "fz2"));
    frame f;
    int exits = 0, downs = 0;
    while (take_frame(&t, i, &off, &f) == 0) {
        long op = ctrl_op(&f);
        int idx = 0, arity;
        ei_decode_tuple_header(f.ctrl, &idx, &arity);
        for (int k = 0; k < arity - 1; k++)
            ei_skip_term(f.ctrl, &idx);
        if (op == OP_EXIT && is_atom(f.ctrl + idx, "goodbye"))
            exits++;
        if (op == OP_MONITOR_P_EXIT && is_atom(f.ctrl + idx, "goodbye"))
            downs++;
    }
    CU_ASSERT_EQUAL(exits, 1);
    CU_ASSERT_EQUAL(downs, 1);
    shoal__dbuf_free(&b);
    close_node(&t);
}

/* ---- the fuzzer's inputs, replayed ----------------------------------------------------- */

/* Every input in c_src/cnode/fuzz_conn_seeds/ (run from the checkout's root, as make does):
 * the generated seeds, and any input the fuzzer found a bug with, kept there once fixed. */
static void test_replay_fuzz_inputs(void)
{
    const char *dir = "c_src/cnode/fuzz_conn_seeds";
    DIR *d = opendir(dir);
    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    struct dirent *e;
    int replayed = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char path[512];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        FILE *f = fopen(path, "rb");
        CU_ASSERT_PTR_NOT_NULL_FATAL(f);
        unsigned char buf[65536];
        size_t len = fread(buf, 1, sizeof buf, f);
        fclose(f);
        if (len) {
            char why[256] = "";
            int rc = tc_replay(&loop, buf, len, why, sizeof why);
            CU_ASSERT_EQUAL(rc, 0);
            if (rc)
                fprintf(stderr, "%s: %s\n", path, why);
            replayed++;
        }
    }
    closedir(d);
    CU_ASSERT(replayed >= 40);
}

CU_ErrorCode test_cnode_register_conn(void)
{
    uv_loop_init(&loop);
    CU_pSuite s = CU_add_suite("cnode_conn", NULL, NULL);
    if (!s ||
        !CU_add_test(s, "accept: handshake, then gen_server calls answered",
                     test_accept_then_call) ||
        !CU_add_test(s, "initiate: handshake, then what was queued goes out", test_initiate) ||
        !CU_add_test(s, "a wrong cookie closes with one line", test_wrong_cookie) ||
        !CU_add_test(s, "a restarted peer replaces its old connection", test_restarted_peer) ||
        !CU_add_test(s, "simultaneous connects: yield to a larger name, win over a smaller",
                     test_simultaneous_connect) ||
        !CU_add_test(s, "a frame over max_frame closes only its connection",
                     test_frame_over_max_frame) ||
        !CU_add_test(s, "a handshake that stalls is closed after 7 s", test_handshake_timeout) ||
        !CU_add_test(s, "failed handshakes: 10 lines, then a summary",
                     test_failure_log_rate_limited) ||
        !CU_add_test(s, "links from a peer, then its connection dies", test_links_and_node_down) ||
        !CU_add_test(s, "a monitored and linked process exits", test_monitor_and_exit) ||
        !CU_add_test(s, "every fuzz_conn seed and saved input replays cleanly",
                     test_replay_fuzz_inputs))
        return CU_get_error();
    return CUE_SUCCESS;
}
