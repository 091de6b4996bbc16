/* main.c - the shoal_cnode binary: parses an erl-like command line, starts a node on the
 * default libuv loop with the `echo` example process and the `shoal_ctl` process (an admin
 * hook the test suites and benchmarks drive: spawn and stop C workers, link them, send and
 * call from C, connect), and runs until SIGTERM or SIGINT, which close the node cleanly
 * (linked and monitoring processes get `shutdown`, epmd is told by the socket closing). */
#include "shoal.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *to)
{
    fprintf(to,
            "usage: shoal_cnode (-sname NAME | -name NAME[@HOST]) [-setcookie COOKIE]\n"
            "                   [-port N] [-max_frame BYTES] [-max_outq BYTES]\n"
            "                   [-ticktime SECONDS] [-hs_log_burst N] [-hs_log_period SECONDS]\n"
            "                   [-spin_us MICROSECONDS] [-v] [-h]\n"
            "\n"
            "  -sname NAME         short node name (NAME@shorthost)\n"
            "  -name NAME[@HOST]   long node name\n"
            "  -setcookie COOKIE   default: the contents of ~/.erlang.cookie\n"
            "  -port N             listen port (default 0: any free port)\n"
            "  -max_frame BYTES    largest frame taken from a peer; a bigger one closes that\n"
            "                      connection (default 32M; 4K to 4294967295)\n"
            "  -max_outq BYTES     output queued to a peer before it counts as not reading and\n"
            "                      is dropped (default 64M; at least 4K)\n"
            "  -ticktime SECONDS   net_ticktime (default 60; 1 to 86400)\n"
            "  -hs_log_burst N     failed handshakes logged in full per period; the rest are\n"
            "                      counted and summed up once per period (default 10)\n"
            "  -hs_log_period S    that period in seconds (default 60; 1 to 86400)\n"
            "  -spin_us US         busy-poll this long after traffic (default 0: never)\n"
            "  -v                  log connection events, not only errors\n"
            "  -h                  this help\n"
            "BYTES: a whole number, optionally with K, M or G (powers of 1024): 64K, 32M.\n");
}

/* Parses a flag's number: digits, and with `units` an optional K, M or G (powers of 1024).
 * Stores it in *out and returns 0 when it lies in [min, max]; else prints why and returns -1. */
static int parse_num(const char *flag, const char *v, int units, unsigned long long min,
                     unsigned long long max, unsigned long long *out)
{
    const char *p = v;
    unsigned long long x = 0;
    int digits = 0, overflow = 0;
    for (; *p >= '0' && *p <= '9'; p++, digits++) {
        if (x > (ULLONG_MAX - (unsigned)(*p - '0')) / 10)
            overflow = 1;
        else
            x = x * 10 + (unsigned)(*p - '0');
    }
    unsigned shift = 0;
    if (units && *p && !p[1]) {
        shift = *p == 'K' || *p == 'k' ? 10 : *p == 'M' || *p == 'm' ? 20
                : *p == 'G' || *p == 'g' ? 30 : 0;
        if (shift)
            p++;
    }
    if (!digits || *p) {
        fprintf(stderr, "shoal_cnode: %s: '%s' is not %s\n", flag, v,
                units ? "a size (a whole number of bytes, optionally with K, M or G)"
                      : "a whole number");
        return -1;
    }
    if (overflow || (shift && x > (ULLONG_MAX >> shift)))
        x = ULLONG_MAX;
    else
        x <<= shift;
    if (x < min || x > max) {
        fprintf(stderr, "shoal_cnode: %s: %s is out of range (%llu to %llu)\n", flag, v, min,
                max);
        return -1;
    }
    *out = x;
    return 0;
}

/* ---- workers: what shoal_ctl spawns ----------------------------------------------------- */

static int atom_is(const char *buf, int *idx, const char *want)
{
    char a[MAXATOMLEN_UTF8];
    return ei_decode_atom_as(buf, idx, a, sizeof a, ERLANG_UTF8, NULL, NULL) == 0 &&
           strcmp(a, want) == 0;
}

/* A worker answers calls like echo; with trap_exit it forwards {'EXIT', From, Reason} to
 * the pid given at spawn (if any). */
typedef struct worker {
    shoal_pid report_to;
    int has_report;
} worker;

static int worker_handle(shoal_proc *self, const shoal_msg *m)
{
    shoal_node *n = shoal_proc_node(self);
    worker *w = shoal_state(self);
    if (m->kind == SHOAL_MSG_CALL) {
        int idx = 0;
        if (atom_is(m->term, &idx, "self")) {
            ei_x_buff x;
            shoal_pid me = shoal_self(self);
            ei_x_new(&x);
            shoal_encode_pid(n, &x, &me);
            shoal_reply(n, m->reply_to, x.buff, (size_t)x.index);
            ei_x_free(&x);
        } else {
            shoal_reply(n, m->reply_to, m->term, m->len);
        }
    } else if ((m->kind == SHOAL_MSG_EXIT || m->kind == SHOAL_MSG_DOWN) && w->has_report) {
        ei_x_buff x;
        ei_x_new(&x);
        ei_x_encode_tuple_header(&x, 3);
        ei_x_encode_atom(&x, m->kind == SHOAL_MSG_EXIT ? "EXIT" : "DOWN");
        shoal_encode_pid(n, &x, &m->from);
        ei_x_append_buf(&x, m->term, (int)m->len);
        shoal_dest d = {w->report_to, NULL, NULL};
        shoal_send(n, self, &d, x.buff, (size_t)x.index);
        ei_x_free(&x);
    }
    return 0;
}

static void worker_terminate(shoal_proc *self, const char *reason, size_t len)
{
    (void)reason;
    (void)len;
    free(shoal_state(self));
}

/* ---- shoal_ctl ----------------------------------------------------------------------------- */

static void reply_atom(shoal_node *n, const shoal_from *f, const char *a)
{
    ei_x_buff x;
    ei_x_new(&x);
    ei_x_encode_atom(&x, a);
    shoal_reply(n, f, x.buff, (size_t)x.index);
    ei_x_free(&x);
}

static void reply_error(shoal_node *n, const shoal_from *f, const char *reason, size_t rlen,
                        const char *atom)
{
    ei_x_buff x;
    ei_x_new(&x);
    ei_x_encode_tuple_header(&x, 2);
    ei_x_encode_atom(&x, "error");
    if (reason)
        ei_x_append_buf(&x, reason, (int)rlen);
    else
        ei_x_encode_atom(&x, atom);
    shoal_reply(n, f, x.buff, (size_t)x.index);
    ei_x_free(&x);
}

static void call_done(shoal_node *n, int status, const char *term, size_t len, void *arg)
{
    shoal_from *f = arg;
    if (status == 0) {
        ei_x_buff x;
        ei_x_new(&x);
        ei_x_encode_tuple_header(&x, 2);
        ei_x_encode_atom(&x, "ok");
        ei_x_append_buf(&x, term, (int)len);
        shoal_reply(n, f, x.buff, (size_t)x.index);
        ei_x_free(&x);
    } else {
        reply_error(n, f, term, len,
                    status == -ETIMEDOUT   ? "timeout"
                    : status == -ENOTCONN  ? "noconnection"
                    : status == -ECANCELED ? "canceled"
                                           : "noproc");
    }
    shoal_from_free(f);
}

static void connect_done(shoal_node *n, const char *peer, int status, void *arg)
{
    (void)peer;
    shoal_from *f = arg;
    if (status == 0)
        reply_atom(n, f, "ok");
    else
        reply_error(n, f, NULL, 0, "noconnection");
    shoal_from_free(f);
}

static shoal_proc *local_proc(shoal_node *n, const char *b, int *idx)
{
    shoal_dest d;
    char name[MAXATOMLEN_UTF8], node[MAXATOMLEN_UTF8];
    if (shoal_decode_dest(n, b, idx, &d, name, node))
        return NULL;
    if (d.name)
        return shoal_whereis(n, d.name);
    return shoal_proc_by_pid(n, &d.pid);
}

static int ctl_handle(shoal_proc *self, const shoal_msg *m)
{
    shoal_node *n = shoal_proc_node(self);
    if (m->kind != SHOAL_MSG_CALL)
        return 0;
    const char *b = m->term;
    int idx = 0, arity = 0, type, size;
    char op[MAXATOMLEN_UTF8];
    ei_get_type(b, &idx, &type, &size);
    if (type == ERL_SMALL_TUPLE_EXT)
        ei_decode_tuple_header(b, &idx, &arity);
    if (ei_decode_atom_as(b, &idx, op, sizeof op, ERLANG_UTF8, NULL, NULL)) {
        reply_atom(n, m->reply_to, "badarg");
        return 0;
    }
    if (strcmp(op, "os_pid") == 0) {
        ei_x_buff x;
        ei_x_new(&x);
        ei_x_encode_long(&x, (long)getpid());
        shoal_reply(n, m->reply_to, x.buff, (size_t)x.index);
        ei_x_free(&x);
    } else if (strcmp(op, "spawn") == 0 && arity == 4) {
        /* {spawn, Name | undefined, TrapExit, ReportTo | undefined} -> {ok, Pid} */
        char name[MAXATOMLEN_UTF8];
        int trap = 0, type2, sz2;
        worker *w = calloc(1, sizeof *w);
        shoal_proc_spec spec = {0};
        if (!w || ei_decode_atom_as(b, &idx, name, sizeof name, ERLANG_UTF8, NULL, NULL) ||
            ei_decode_boolean(b, &idx, &trap)) {
            free(w);
            reply_atom(n, m->reply_to, "badarg");
            return 0;
        }
        ei_get_type(b, &idx, &type2, &sz2);
        if (type2 == ERL_NEW_PID_EXT || type2 == ERL_PID_EXT) {
            shoal_decode_pid(n, b, &idx, &w->report_to);
            w->has_report = 1;
        }
        spec.handle = worker_handle;
        spec.terminate = worker_terminate;
        spec.state = w;
        spec.trap_exit = trap;
        spec.name = strcmp(name, "undefined") ? name : NULL;
        shoal_proc *p;
        int rc = shoal_spawn(n, &spec, &p);
        if (rc) {
            free(w);
            reply_error(n, m->reply_to, NULL, 0, rc == -EEXIST ? "already_registered" : "failed");
            return 0;
        }
        ei_x_buff x;
        shoal_pid pid = shoal_self(p);
        ei_x_new(&x);
        ei_x_encode_tuple_header(&x, 2);
        ei_x_encode_atom(&x, "ok");
        shoal_encode_pid(n, &x, &pid);
        shoal_reply(n, m->reply_to, x.buff, (size_t)x.index);
        ei_x_free(&x);
    } else if (strcmp(op, "stop") == 0 && arity == 3) {
        /* {stop, Dest, Reason} */
        shoal_proc *p = local_proc(n, b, &idx);
        int start = idx;
        ei_skip_term(b, &idx);
        if (!p || shoal_exit(p, b + start, (size_t)(idx - start)))
            reply_error(n, m->reply_to, NULL, 0, "noproc");
        else
            reply_atom(n, m->reply_to, "ok");
    } else if (strcmp(op, "link") == 0 && arity == 3) {
        /* {link, CDest, Pid} */
        shoal_proc *p = local_proc(n, b, &idx);
        shoal_pid other;
        if (!p || shoal_decode_pid(n, b, &idx, &other) || shoal_link(p, &other))
            reply_error(n, m->reply_to, NULL, 0, "badarg");
        else
            reply_atom(n, m->reply_to, "ok");
    } else if (strcmp(op, "monitor") == 0 && arity == 3) {
        /* {monitor, CDest, Dest}: the C process monitors Dest; DOWN goes to its ReportTo */
        shoal_proc *p = local_proc(n, b, &idx);
        shoal_dest d;
        char name[MAXATOMLEN_UTF8], node[MAXATOMLEN_UTF8];
        uint64_t id;
        if (!p || shoal_decode_dest(n, b, &idx, &d, name, node) || shoal_monitor(p, &d, &id))
            reply_error(n, m->reply_to, NULL, 0, "badarg");
        else
            reply_atom(n, m->reply_to, "ok");
    } else if (strcmp(op, "send") == 0 && arity == 3) {
        /* {send, Dest, Msg} */
        shoal_dest d;
        char name[MAXATOMLEN_UTF8], node[MAXATOMLEN_UTF8];
        if (shoal_decode_dest(n, b, &idx, &d, name, node)) {
            reply_atom(n, m->reply_to, "badarg");
            return 0;
        }
        int start = idx;
        ei_skip_term(b, &idx);
        int rc = shoal_send(n, self, &d, b + start, (size_t)(idx - start));
        reply_atom(n, m->reply_to, rc ? "error" : "ok");
    } else if (strcmp(op, "call") == 0 && arity == 4) {
        /* {call, Dest, Req, TimeoutMs} -> {ok, Reply} | {error, Reason} (answered later) */
        shoal_dest d;
        char name[MAXATOMLEN_UTF8], node[MAXATOMLEN_UTF8];
        long tmo;
        if (shoal_decode_dest(n, b, &idx, &d, name, node)) {
            reply_atom(n, m->reply_to, "badarg");
            return 0;
        }
        int start = idx;
        ei_skip_term(b, &idx);
        int end = idx;
        if (ei_decode_long(b, &idx, &tmo) || tmo < 0) {
            reply_atom(n, m->reply_to, "badarg");
            return 0;
        }
        shoal_from *f = shoal_from_dup(m->reply_to);
        if (!f || shoal_call(n, self, &d, b + start, (size_t)(end - start), (unsigned)tmo,
                             call_done, f)) {
            shoal_from_free(f);
            reply_atom(n, m->reply_to, "error");
        }
    } else if (strcmp(op, "connect") == 0 && arity == 2) {
        char node[MAXATOMLEN_UTF8];
        shoal_from *f = NULL;
        if (ei_decode_atom_as(b, &idx, node, sizeof node, ERLANG_UTF8, NULL, NULL) ||
            !(f = shoal_from_dup(m->reply_to)) || shoal_connect(n, node, connect_done, f)) {
            shoal_from_free(f);
            reply_error(n, m->reply_to, NULL, 0, "noconnection");
        }
    } else if (strcmp(op, "nodes") == 0) {
        const char *names[64];
        int k = shoal_nodes(n, names, 64);
        ei_x_buff x;
        ei_x_new(&x);
        for (int i = 0; i < k && i < 64; i++) {
            ei_x_encode_list_header(&x, 1);
            ei_x_encode_atom_len_as(&x, names[i], (int)strlen(names[i]), ERLANG_UTF8,
                                    ERLANG_UTF8);
        }
        ei_x_encode_empty_list(&x);
        shoal_reply(n, m->reply_to, x.buff, (size_t)x.index);
        ei_x_free(&x);
    } else {
        reply_atom(n, m->reply_to, "badarg");
    }
    return 0;
}

/* ---- main ---------------------------------------------------------------------------------- */

static shoal_node *g_node;
static int g_failed;

static void on_signal(uv_signal_t *s, int signum)
{
    (void)signum;
    uv_signal_stop(s);
    shoal_node_close(g_node);
}

static void on_started(shoal_node *n, int status, void *arg)
{
    (void)arg;
    if (status) {
        fprintf(stderr, "shoal_cnode: could not register %s with epmd; stopping\n",
                shoal_node_name(n));
        g_failed = 1;
        shoal_node_close(n);
        return;
    }
    fprintf(stderr, "shoal_cnode: %s up on port %d (creation %u)\n", shoal_node_name(n),
            shoal_node_port(n), shoal_node_creation(n));
}

static uv_signal_t g_sigterm, g_sigint;

static void on_closed(shoal_node *n, void *arg)
{
    (void)n;
    (void)arg;
    uv_close((uv_handle_t *)&g_sigterm, NULL);
    uv_close((uv_handle_t *)&g_sigint, NULL);
}

static void on_node_up(shoal_node *n, const char *peer, void *arg)
{
    (void)n;
    (void)arg;
    fprintf(stderr, "shoal_cnode: nodeup %s\n", peer);
}

static void on_node_down(shoal_node *n, const char *peer, const char *why, void *arg)
{
    (void)n;
    (void)arg;
    fprintf(stderr, "shoal_cnode: nodedown %s (%s)\n", peer, why);
}

/* Exit statuses: 0 after a clean stop (and for -h), 1 when the node could not start or
 * run, 2 for a bad command line (with a line saying what is wrong). */
int main(int argc, char **argv)
{
    shoal_node_opts o = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        unsigned long long x;
        if (!strcmp(a, "-h") || !strcmp(a, "-help") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "-v")) {
            o.verbose = 1;
            continue;
        }
        if (strcmp(a, "-sname") && strcmp(a, "-name") && strcmp(a, "-setcookie") &&
            strcmp(a, "-port") && strcmp(a, "-max_frame") && strcmp(a, "-max_outq") &&
            strcmp(a, "-ticktime") && strcmp(a, "-spin_us") && strcmp(a, "-hs_log_burst") &&
            strcmp(a, "-hs_log_period")) {
            fprintf(stderr, "shoal_cnode: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
        if (!v) {
            fprintf(stderr, "shoal_cnode: %s needs a value\n", a);
            usage(stderr);
            return 2;
        }
        i++;
        if (!strcmp(a, "-sname") || !strcmp(a, "-name")) {
            o.name = v;
            o.long_names = !strcmp(a, "-name");
        } else if (!strcmp(a, "-setcookie")) {
            o.cookie = v;
        } else if (!strcmp(a, "-port")) {
            if (parse_num(a, v, 0, 0, 65535, &x))
                return 2;
            o.port = (int)x;
        } else if (!strcmp(a, "-max_frame")) {
            if (parse_num(a, v, 1, SHOAL_MAX_FRAME_MIN, SHOAL_MAX_FRAME_MAX, &x))
                return 2;
            o.max_frame = (size_t)x;
        } else if (!strcmp(a, "-max_outq")) {
            if (parse_num(a, v, 1, 4096, SIZE_MAX, &x))
                return 2;
            o.max_outq = (size_t)x;
        } else if (!strcmp(a, "-ticktime")) {
            if (parse_num(a, v, 0, 1, 86400, &x))
                return 2;
            o.tick_ms = (unsigned)x * 250;
        } else if (!strcmp(a, "-hs_log_burst")) {
            if (parse_num(a, v, 0, 1, 1000000, &x))
                return 2;
            o.hs_log_burst = (unsigned)x;
        } else if (!strcmp(a, "-hs_log_period")) {
            if (parse_num(a, v, 0, 1, 86400, &x))
                return 2;
            o.hs_log_period_ms = (unsigned)x * 1000;
        } else { /* -spin_us */
            if (parse_num(a, v, 0, 0, 1000000, &x))
                return 2;
            o.spin_us = (int)x;
        }
    }
    if (!o.name) {
        fprintf(stderr, "shoal_cnode: -sname or -name is required\n");
        usage(stderr);
        return 2;
    }
    uv_loop_t *loop = uv_default_loop();
    shoal_node_hooks hooks = {0};
    hooks.started = on_started;
    hooks.closed = on_closed;
    hooks.node_up = on_node_up;
    hooks.node_down = on_node_down;
    int rc = shoal_node_new(loop, &o, &hooks, &g_node);
    if (rc) {
        fprintf(stderr, "shoal_cnode: %s\n",
                rc == -EINVAL ? "bad name or no cookie (-setcookie or ~/.erlang.cookie)"
                              : strerror(-rc));
        return 1;
    }
    uv_signal_init(loop, &g_sigterm);
    uv_signal_init(loop, &g_sigint);
    uv_signal_start(&g_sigterm, on_signal, SIGTERM);
    uv_signal_start(&g_sigint, on_signal, SIGINT);
    signal(SIGPIPE, SIG_IGN);
    if ((rc = shoal_node_start(g_node)) != 0) {
        g_failed = 1;
        shoal_node_close(g_node);
    } else {
        shoal_proc_spec ctl = {0};
        ctl.handle = ctl_handle;
        ctl.name = "shoal_ctl";
        if (shoal_echo_spawn(g_node, NULL) || shoal_spawn(g_node, &ctl, NULL)) {
            g_failed = 1;
            shoal_node_close(g_node);
        }
    }
    uv_run(loop, UV_RUN_DEFAULT);
    shoal_node_free(g_node);
    uv_loop_close(loop);
    return g_failed ? 1 : 0;
}
