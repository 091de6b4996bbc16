/* node.c - the C node's life on its libuv loop: naming and cookie, the listen socket, the
 * epmd registration (its socket stays open as long as the node lives), outgoing connection
 * setup (resolve, ask epmd for the port, connect), the version 6 distribution handshake in
 * both directions, and after it the framed stream: reads parsed by shoal__frame_parse and handed to
 * dist.c, writes coalesced per loop turn, ticks both ways, and closing one connection on any
 * protocol error, a wrong cookie or a peer that stops reading. Nothing here blocks. */
#include "cnode_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <netdb.h>

#define DEFAULT_MAX_OUTQ (64u << 20)
#define READ_CHUNK 65536

static void vlog(shoal_node *n, const char *fmt, va_list ap)
{
    char line[1024];
    vsnprintf(line, sizeof line, fmt, ap);
    for (char *p = line; *p; p++) /* peers choose names and statuses: one line stays one */
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    if (n && n->hooks.log) {
        n->hooks.log(n, line, n->hooks.arg);
        return;
    }
    fprintf(stderr, "shoal_cnode[%s]: %s\n", n && n->full_name ? n->full_name : "-", line);
}

void shoal__log(shoal_node *n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(n, fmt, ap);
    va_end(ap);
}

void shoal__debug(shoal_node *n, const char *fmt, ...)
{
    if (!n->opts.verbose)
        return;
    va_list ap;
    va_start(ap, fmt);
    vlog(n, fmt, ap);
    va_end(ap);
}

uint64_t shoal__now(shoal_node *n)
{
    return uv_now(n->loop);
}

/* ---- handshake failures: logged at a bounded rate ------------------------------------ */

/* What a failed handshake is counted as in the summary line. */
enum { HSF_COOKIE, HSF_MALFORMED, HSF_REFUSED, HSF_TIMEOUT, HSF_CLOSED, HSF_KINDS };
static const char *const hsf_names[HSF_KINDS] = {"wrong cookie", "malformed", "refused",
                                                 "timed out", "closed by the peer"};

/* Who c talks to, for a log line: node name and address, as far as they are known. */
static const char *peer_desc(const conn *c, char *buf, size_t size)
{
    const char *name = c->peer ? c->node->names[c->peer] : NULL;
    if (name && c->addr_str[0])
        snprintf(buf, size, "%s (%s)", name, c->addr_str);
    else
        snprintf(buf, size, "%s", name ? name : c->addr_str[0] ? c->addr_str : "an unknown peer");
    return buf;
}

/* Logs the summary of the handshake failures not logged in full, when one is due. */
static void hs_summary(shoal_node *n, uint64_t now)
{
    ratelog_sum s;
    if (!shoal__ratelog_summary(&n->hs_log, now, &s))
        return;
    char kinds[256];
    size_t k = 0;
    kinds[0] = 0;
    for (unsigned i = 0; i < HSF_KINDS && k < sizeof kinds; i++)
        if (s.kinds[i]) {
            int w = snprintf(kinds + k, sizeof kinds - k, "%s%s %llu", k ? ", " : "",
                             hsf_names[i], (unsigned long long)s.kinds[i]);
            k += w > 0 ? (size_t)w : 0;
        }
    shoal__log(n, "handshake failures: %llu more not logged in the last %llu s (%s); the last: %s",
               (unsigned long long)s.total, (unsigned long long)(s.span + 999) / 1000, kinds,
               n->hs_last);
}

/* A handshake with c failed: logs it in full while the rate allows, else only counts it. */
static void hs_fail(conn *c, unsigned kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void hs_fail(conn *c, unsigned kind, const char *fmt, ...)
{
    shoal_node *n = c->node;
    uint64_t now = shoal__now(n);
    char who[320], what[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    peer_desc(c, who, sizeof who);
    hs_summary(n, now);
    snprintf(n->hs_last, sizeof n->hs_last, "%s, %s", who, hsf_names[kind]);
    if (shoal__ratelog_hit(&n->hs_log, now, kind))
        shoal__log(n, "handshake with %s failed: %s", who, what);
}

/* ---- names ---------------------------------------------------------------------------- */

int shoal__intern(shoal_node *n, const char *name, uint32_t *idx)
{
    void *v = shoal__smap_get(&n->name_idx, name);
    if (v) {
        *idx = (uint32_t)((uintptr_t)v - 1);
        return 0;
    }
    if (n->nnames >= CN_MAX_NAMES)
        return -E2BIG;
    if (n->nnames == n->capnames) {
        uint32_t cap = n->capnames ? n->capnames * 2 : 16;
        char **nn = realloc(n->names, cap * sizeof *nn);
        if (!nn)
            return -ENOMEM;
        n->names = nn;
        conn **bp = realloc(n->by_peer, cap * sizeof *bp);
        if (!bp)
            return -ENOMEM;
        n->by_peer = bp;
        n->capnames = cap;
    }
    char *copy = strdup(name);
    if (!copy)
        return -ENOMEM;
    if (shoal__smap_put(&n->name_idx, name, (void *)(uintptr_t)(n->nnames + 1))) {
        free(copy);
        return -ENOMEM;
    }
    n->names[n->nnames] = copy;
    n->by_peer[n->nnames] = NULL;
    *idx = n->nnames++;
    return 0;
}

static unsigned name_slot(const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    return (unsigned)(len * 7 + (len ? u[len - 1] + u[len / 2] * 3 : 0)) & 15u;
}

int shoal__name_lookup(shoal_node *n, const char *s, size_t len, uint32_t *idx)
{
    unsigned k = name_slot(s, len);
    uint32_t i = n->name_cache[k].idx;
    if (n->name_cache[k].len1 != len + 1 || i >= n->nnames || memcmp(n->names[i], s, len) != 0)
        return -1;
    *idx = i;
    return 0;
}

void shoal__name_seen(shoal_node *n, uint32_t idx)
{
    if (idx >= n->nnames)
        return;
    size_t len = strlen(n->names[idx]);
    unsigned k = name_slot(n->names[idx], len);
    n->name_cache[k].idx = idx;
    n->name_cache[k].len1 = (uint32_t)len + 1;
}

const char *shoal_pid_node_name(const shoal_node *n, const shoal_pid *pid)
{
    if (!n || !pid || pid->node >= n->nnames)
        return NULL;
    return n->names[pid->node];
}

static char *read_cookie_file(void)
{
    const char *home = getenv("HOME");
    char path[4096];
    snprintf(path, sizeof path, "%s/.erlang.cookie", home ? home : ".");
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    char buf[1024];
    size_t got = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[got] = 0;
    buf[strcspn(buf, "\r\n")] = 0;
    return buf[0] ? strdup(buf) : NULL;
}

static char *host_name(int long_names)
{
    char h[256];
    if (gethostname(h, sizeof h - 1))
        return NULL;
    h[sizeof h - 1] = 0;
    if (!long_names) {
        h[strcspn(h, ".")] = 0;
        return strdup(h);
    }
    if (strchr(h, '.'))
        return strdup(h);
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_flags = AI_CANONNAME;
    if (getaddrinfo(h, NULL, &hints, &res) == 0 && res && res->ai_canonname &&
        strchr(res->ai_canonname, '.')) {
        char *r = strdup(res->ai_canonname);
        freeaddrinfo(res);
        return r;
    }
    if (res)
        freeaddrinfo(res);
    return strdup(h);
}

int shoal__node_new(uv_loop_t *loop, const shoal_node_opts *opts, const shoal_node_hooks *hooks,
                    const node_upcalls *up, shoal_node **out)
{
    if (!loop || !opts || !opts->name || !opts->name[0] || !up || !out)
        return -EINVAL;
    if (opts->max_frame &&
        (opts->max_frame < SHOAL_MAX_FRAME_MIN || opts->max_frame > SHOAL_MAX_FRAME_MAX))
        return -EINVAL;
    ei_init();
    shoal_node *n = calloc(1, sizeof *n);
    if (!n)
        return -ENOMEM;
    n->loop = loop;
    n->up = up;
    n->opts = *opts;
    if (hooks)
        n->hooks = *hooks;
    if (!n->opts.max_frame)
        n->opts.max_frame = SHOAL_MAX_FRAME_DEFAULT;
    if (!n->opts.max_outq)
        n->opts.max_outq = DEFAULT_MAX_OUTQ;
    if (!n->opts.tick_ms)
        n->opts.tick_ms = 15000;
    if (!n->opts.hs_log_burst)
        n->opts.hs_log_burst = 10;
    if (!n->opts.hs_log_period_ms)
        n->opts.hs_log_period_ms = 60000;
    shoal__ratelog_init(&n->hs_log, n->opts.hs_log_burst, n->opts.hs_log_period_ms, uv_now(loop));
    if (n->opts.spin_us < 0)
        n->opts.spin_us = 0; /* 0: never spin */
    n->opts.name = NULL;
    n->opts.cookie = NULL;
    const char *at = strchr(opts->name, '@');
    n->alive = at ? strndup(opts->name, (size_t)(at - opts->name)) : strdup(opts->name);
    n->host = at ? strdup(at + 1) : host_name(opts->long_names);
    n->cookie = opts->cookie ? strdup(opts->cookie) : read_cookie_file();
    int rc = -ENOMEM;
    if (!n->alive || !n->host || !n->cookie) {
        rc = n->alive && n->host ? -EINVAL : -ENOMEM;
        goto fail;
    }
    rc = -EINVAL;
    if (!n->alive[0] || strlen(n->alive) > 200 || !n->host[0] || strlen(n->host) > 250 ||
        strlen(n->cookie) > 255)
        goto fail;
    rc = -ENOMEM;
    n->full_name = malloc(strlen(n->alive) + strlen(n->host) + 2);
    if (!n->full_name)
        goto fail;
    sprintf(n->full_name, "%s@%s", n->alive, n->host);
    uint32_t idx;
    if (shoal__intern(n, n->full_name, &idx))
        goto fail;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
    n->creation = opts->creation ? opts->creation : (uint32_t)ms;
    if (!n->creation)
        n->creation = 1;
    n->ref_salt = (uint32_t)(ms >> 32) ^ (uint32_t)ts.tv_nsec ^ (uint32_t)getpid();
    n->next_id = CN_SYSTEM_ID + 1;
    n->next_ref = 1;
    n->port = -1;
    n->scratch_from = malloc(sizeof(shoal_from) + CN_MAX_TAG);
    if (!n->scratch_from)
        goto fail;
    *out = n;
    return 0;
fail:
    free(n->alive);
    free(n->host);
    free(n->cookie);
    free(n->full_name);
    for (uint32_t i = 0; i < n->nnames; i++)
        free(n->names[i]);
    free(n->names);
    free(n->by_peer);
    shoal__smap_free(&n->name_idx);
    free(n);
    return rc;
}

const char *shoal_node_name(const shoal_node *n)
{
    return n->full_name;
}

uv_loop_t *shoal_node_loop(shoal_node *n)
{
    return n->loop;
}

uint32_t shoal_node_creation(const shoal_node *n)
{
    return n->creation;
}

int shoal_node_port(const shoal_node *n)
{
    return n->port;
}

/* ---- handle bookkeeping --------------------------------------------------------------- */

static void maybe_closed(shoal_node *n)
{
    if (n->closing && n->open_handles == 0 && !n->closed_cb_done) {
        n->closed_cb_done = 1;
        if (n->hooks.closed)
            n->hooks.closed(n, n->hooks.arg);
    }
}

static void on_node_handle_closed(uv_handle_t *h)
{
    shoal_node *n = h->data;
    n->open_handles--;
    maybe_closed(n);
}

static void close_node_handle(shoal_node *n, uv_handle_t *h)
{
    if (!uv_is_closing(h)) {
        h->data = n;
        uv_close(h, on_node_handle_closed);
    }
}

/* ---- connections: allocation, output ---------------------------------------------------- */

static conn *conn_new(shoal_node *n, int initiator)
{
    conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->node = n;
    c->initiator = initiator;
    c->last_rx = c->last_tx = shoal__now(n);
    c->deadline = shoal__now(n) + CN_HS_TIMEOUT_MS;
    c->next = n->conns;
    n->conns = c;
    n->open_handles++; /* the conn itself counts until freed */
    return c;
}

void shoal__conn_dirty(conn *c)
{
    if (!c->dirty) {
        c->dirty = 1;
        c->next_dirty = c->node->dirty;
        c->node->dirty = c;
    }
}

dbuf *shoal__conn_outbuf(conn *c)
{
    return c->state == C_UP ? &c->out : &c->pending;
}

static void on_write(uv_write_t *req, int status);

static void conn_flush(conn *c)
{
    if (c->sink && c->out.len && c->state != C_CLOSING) { /* a test connection */
        if (shoal__dbuf_append(c->sink, c->out.data, c->out.len) == 0)
            c->out.len = 0;
        return;
    }
    if (c->writing || c->out.len == 0 || c->state == C_CLOSING || !c->tcp_open)
        return;
    if (c->state < C_I_STATUS) /* not connected yet */
        return;
    /* fast path: the socket takes everything now; no write request, no callback */
    uv_buf_t b = uv_buf_init(c->out.data, (unsigned)c->out.len);
    int w = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (w >= 0 && (size_t)w == c->out.len) {
        c->out.len = 0;
        c->last_tx = shoal__now(c->node);
        return;
    }
    if (w < 0 && w != UV_EAGAIN) {
        shoal__conn_close(c, "write failed");
        return;
    }
    size_t done = w > 0 ? (size_t)w : 0;
    dbuf t = c->inflight;
    c->inflight = c->out;
    c->out = t;
    c->out.len = 0;
    b = uv_buf_init(c->inflight.data + done, (unsigned)(c->inflight.len - done));
    int rc = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write);
    if (rc) {
        shoal__conn_close(c, "write failed");
        return;
    }
    c->writing = 1;
    c->last_tx = shoal__now(c->node);
}

static void on_write(uv_write_t *req, int status)
{
    conn *c = (conn *)((char *)req - offsetof(conn, wreq));
    c->writing = 0;
    c->inflight.len = 0;
    if (c->inflight.cap > (4u << 20)) /* give back what a burst took */
        shoal__dbuf_free(&c->inflight);
    if (status < 0) {
        if (c->state != C_CLOSING)
            shoal__conn_close(c, "write error");
        return;
    }
    conn_flush(c);
}

static void flush_dirty(shoal_node *n)
{
    conn *c = n->dirty;
    n->dirty = NULL;
    while (c) {
        conn *next = c->next_dirty;
        c->dirty = 0;
        c->next_dirty = NULL;
        if (c->state != C_CLOSING) {
            if (c->out.len + c->inflight.len > n->opts.max_outq) {
                shoal__log(n, "closing connection to %s: peer is not reading (%zu bytes queued)",
                           c->peer ? n->names[c->peer] : "?", c->out.len + c->inflight.len);
                shoal__conn_close(c, "peer not reading");
            } else {
                conn_flush(c);
            }
        }
        c = next;
    }
}

static void on_flush(uv_prepare_t *h)
{
    flush_dirty(h->data);
}

static void hs_send(conn *c)
{
    shoal__conn_dirty(c);
}

/* ---- connections: closing ------------------------------------------------------------- */

static void conn_free(conn *c)
{
    shoal_node *n = c->node;
    conn **pp = &n->conns;
    while (*pp && *pp != c)
        pp = &(*pp)->next;
    if (*pp)
        *pp = c->next;
    free(c->rbuf);
    shoal__dbuf_free(&c->out);
    shoal__dbuf_free(&c->inflight);
    shoal__dbuf_free(&c->pending);
    shoal__dbuf_free(&c->ebuf);
    shoal__dbuf_free(&c->ereq);
    free(c->why);
    free(c);
    n->open_handles--;
    maybe_closed(n);
}

static void maybe_free_conn(conn *c)
{
    if (c->state == C_CLOSING && !c->tcp_open && !c->epmd_open && !c->gai_active &&
        !c->writing && !c->sink)
        conn_free(c);
}

static void on_conn_tcp_closed(uv_handle_t *h)
{
    conn *c = h->data;
    c->tcp_open = 0;
    c->writing = 0;
    maybe_free_conn(c);
}

static void on_conn_epmd_closed(uv_handle_t *h)
{
    conn *c = h->data;
    c->epmd_open = 0;
    maybe_free_conn(c);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    (void)status;
    conn *c = req->data;
    free(req);
    if (c->tcp_open && !uv_is_closing((uv_handle_t *)&c->tcp))
        uv_close((uv_handle_t *)&c->tcp, on_conn_tcp_closed);
}

static void close_conn_handles(conn *c, int graceful)
{
    if (graceful && c->sink && c->out.len) /* a test connection: what a socket would send */
        shoal__dbuf_append(c->sink, c->out.data, c->out.len);
    if (c->tcp_open && !uv_is_closing((uv_handle_t *)&c->tcp)) {
        uv_shutdown_t *sr = graceful ? malloc(sizeof *sr) : NULL;
        if (sr) {
            /* write what is queued (exit signals at shutdown), then close */
            if (c->out.len && !c->writing) {
                uv_buf_t b = uv_buf_init(c->out.data, (unsigned)c->out.len);
                dbuf t = c->inflight;
                c->inflight = c->out;
                c->out = t;
                c->out.len = 0;
                if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write) == 0)
                    c->writing = 1;
            }
            sr->data = c;
            if (uv_shutdown(sr, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
                free(sr);
                uv_close((uv_handle_t *)&c->tcp, on_conn_tcp_closed);
            }
        } else {
            uv_close((uv_handle_t *)&c->tcp, on_conn_tcp_closed);
        }
    }
    if (c->epmd_open && !uv_is_closing((uv_handle_t *)&c->epmd))
        uv_close((uv_handle_t *)&c->epmd, on_conn_epmd_closed);
    if (c->gai_active)
        uv_cancel((uv_req_t *)&c->gai);
}

static void close_conn(conn *c, const char *why, int graceful)
{
    shoal_node *n = c->node;
    if (c->state == C_CLOSING)
        return;
    int was_up = c->state == C_UP;
    int owned = c->peer && n->by_peer[c->peer] == c;
    c->state = C_CLOSING;
    c->why = strdup(why ? why : "closed");
    if (owned)
        n->by_peer[c->peer] = NULL;
    const char *peer = c->peer ? n->names[c->peer] : "(unknown)";
    if (was_up)
        shoal__debug(n, "connection to %s closed: %s", peer, why);
    /* waiters first: they learn the connection failed */
    conn_waiter *w = c->waiters;
    c->waiters = NULL;
    while (w) {
        conn_waiter *next = w->next;
        if (w->cb)
            w->cb(n, peer, was_up ? -ECONNRESET : -ECONNREFUSED, w->arg);
        free(w);
        w = next;
    }
    if (owned)
        n->up->node_down(n, c->peer);
    if (owned && was_up && n->hooks.node_down)
        n->hooks.node_down(n, peer, why, n->hooks.arg);
    close_conn_handles(c, graceful);
    maybe_free_conn(c);
}

void shoal__conn_close(conn *c, const char *why)
{
    close_conn(c, why, 0);
}

/* ---- connections: up ------------------------------------------------------------------ */

static void conn_up(conn *c)
{
    shoal_node *n = c->node;
    c->state = C_UP;
    c->last_rx = c->last_tx = shoal__now(n);
    shoal__debug(n, "connected to %s (%s)", n->names[c->peer], c->initiator ? "out" : "in");
    if (c->pending.len) {
        shoal__dbuf_append(&c->out, c->pending.data, c->pending.len);
        shoal__dbuf_free(&c->pending);
    }
    shoal__conn_dirty(c);
    if (n->hooks.node_up)
        n->hooks.node_up(n, n->names[c->peer], n->hooks.arg);
    conn_waiter *w = c->waiters;
    c->waiters = NULL;
    while (w) {
        conn_waiter *next = w->next;
        if (w->cb)
            w->cb(n, n->names[c->peer], 0, w->arg);
        free(w);
        w = next;
    }
}

/* ---- reading and the handshake ---------------------------------------------------------- */

static uint32_t new_challenge(shoal_node *n)
{
    if (n->test_challenge)
        return n->test_challenge;
    uint32_t v = 0;
    if (uv_random(NULL, NULL, &v, sizeof v, 0, NULL) != 0)
        v = (uint32_t)uv_hrtime() ^ n->ref_salt;
    return v;
}

/* An acceptor got send_name. Decide about the peer and send status + challenge. */
static int acceptor_name(conn *c, const char *body, size_t len)
{
    shoal_node *n = c->node;
    hs_name hn;
    if (shoal__hs_parse_name(body, len, 0, &hn)) {
        hs_fail(c, HSF_MALFORMED, "malformed send_name; closing");
        return -EINVAL;
    }
    if ((hn.flags & WIRE_MANDATORY_25) != WIRE_MANDATORY_25 &&
        !(hn.flags & DFLAG_MANDATORY_25_DIGEST)) {
        hs_fail(c, HSF_REFUSED, "%s lacks mandatory flags; refused", hn.name);
        shoal__hs_put_status(&c->out, "not_allowed");
        hs_send(c);
        return -EINVAL;
    }
    uint32_t idx;
    if (shoal__intern(n, hn.name, &idx))
        return -ENOMEM;
    if (idx == 0) {
        hs_fail(c, HSF_REFUSED, "the peer claims our own name; refused");
        return -EINVAL;
    }
    c->peer = idx;
    c->peer_flags = hn.flags;
    c->peer_creation = hn.creation;
    conn *old = n->by_peer[idx];
    if (old && old != c) {
        if (old->state == C_UP) {
            /* the peer restarted before we saw the old connection die */
            shoal__hs_put_status(&c->out, "alive");
            hs_send(c);
            c->state = C_A_ALIVE;
            return 0;
        }
        /* simultaneous connect: the larger name wins */
        if (strcmp(n->full_name, hn.name) > 0) {
            shoal__hs_put_status(&c->out, "nok");
            hs_send(c);
            return -EAGAIN;
        }
        /* we yield: move what the pending one queued to this connection */
        if (old->pending.len)
            shoal__dbuf_append(&c->pending, old->pending.data, old->pending.len);
        old->pending.len = 0;
        c->waiters = old->waiters;
        old->waiters = NULL;
        n->by_peer[idx] = NULL;
        old->peer = 0; /* its close must not take the peer down */
        shoal__conn_close(old, "simultaneous connect");
        n->by_peer[idx] = c;
        shoal__hs_put_status(&c->out, "ok_simultaneous");
    } else {
        n->by_peer[idx] = c;
        shoal__hs_put_status(&c->out, "ok");
    }
    c->my_challenge = new_challenge(n);
    shoal__hs_put_challenge(&c->out, WIRE_OUR_FLAGS, c->my_challenge, n->creation, n->full_name);
    hs_send(c);
    c->state = C_A_REPLY;
    return 0;
}

static int hs_message(conn *c, const char *body, size_t len)
{
    shoal_node *n = c->node;
    unsigned char dig[16];
    switch (c->state) {
    case C_A_NAME:
        return acceptor_name(c, body, len);
    case C_A_ALIVE:
        if (len == 5 && memcmp(body, "strue", 5) == 0) {
            conn *old = n->by_peer[c->peer];
            if (old && old != c)
                shoal__conn_close(old, "peer restarted");
            n->by_peer[c->peer] = c;
            c->my_challenge = new_challenge(n);
            shoal__hs_put_challenge(&c->out, WIRE_OUR_FLAGS, c->my_challenge, n->creation,
                                    n->full_name);
            hs_send(c);
            c->state = C_A_REPLY;
            return 0;
        }
        if (!(len == 6 && memcmp(body, "sfalse", 6) == 0)) /* false: the peer keeps the old one */
            hs_fail(c, HSF_MALFORMED, "bad answer to our status alive; closing");
        return -EINVAL;
    case C_A_REPLY:
        if (len != 21 || body[0] != 'r') {
            hs_fail(c, HSF_MALFORMED, "bad challenge reply; closing");
            return -EINVAL;
        }
        shoal__hs_digest(n->cookie, c->my_challenge, dig);
        if (memcmp(dig, body + 5, 16) != 0) {
            hs_fail(c, HSF_COOKIE, "wrong cookie; connection refused");
            return -EACCES;
        }
        shoal__hs_digest(n->cookie, shoal__get32(body + 1), dig);
        shoal__hs_put_ack(&c->out, dig);
        hs_send(c);
        conn_up(c);
        return 0;
    case C_I_STATUS:
        if (len >= 3 && body[0] == 's' &&
            ((len == 3 && memcmp(body + 1, "ok", 2) == 0) ||
             (len == 16 && memcmp(body + 1, "ok_simultaneous", 15) == 0))) {
            c->state = C_I_CHALLENGE;
            return 0;
        }
        if (len == 6 && memcmp(body, "salive", 6) == 0) {
            shoal__hs_put_status(&c->out, "true");
            hs_send(c);
            c->state = C_I_CHALLENGE;
            return 0;
        }
        hs_fail(c, HSF_REFUSED, "refused (%.*s)", (int)(len > 40 ? 40 : len), body);
        return -ECONNREFUSED;
    case C_I_CHALLENGE: {
        hs_name hn;
        if (shoal__hs_parse_name(body, len, 1, &hn)) {
            hs_fail(c, HSF_MALFORMED, "malformed challenge; closing");
            return -EINVAL;
        }
        if (strcmp(hn.name, n->names[c->peer]) != 0) {
            hs_fail(c, HSF_REFUSED, "reached %s instead; closing", hn.name);
            return -EINVAL;
        }
        if ((hn.flags & WIRE_MANDATORY_25) != WIRE_MANDATORY_25 &&
            !(hn.flags & DFLAG_MANDATORY_25_DIGEST)) {
            hs_fail(c, HSF_REFUSED, "the peer lacks mandatory flags; closing");
            return -EINVAL;
        }
        c->peer_flags = hn.flags;
        c->peer_creation = hn.creation;
        c->my_challenge = new_challenge(n);
        shoal__hs_digest(n->cookie, hn.challenge, dig);
        shoal__hs_put_reply(&c->out, c->my_challenge, dig);
        hs_send(c);
        c->state = C_I_ACK;
        return 0;
    }
    case C_I_ACK:
        if (len != 17 || body[0] != 'a') {
            hs_fail(c, HSF_MALFORMED, "malformed challenge ack; closing");
            return -EINVAL;
        }
        shoal__hs_digest(n->cookie, c->my_challenge, dig);
        if (memcmp(dig, body + 1, 16) != 0) {
            hs_fail(c, HSF_COOKIE, "wrong cookie (bad ack digest); closing");
            return -EACCES;
        }
        conn_up(c);
        return 0;
    default:
        return -EINVAL;
    }
}

static void conn_consume(conn *c)
{
    shoal_node *n = c->node;
    size_t off = 0;
    while (c->state != C_CLOSING && off < c->rlen) {
        const char *p = c->rbuf + off;
        size_t avail = c->rlen - off;
        if (c->state == C_UP) {
            frame f;
            size_t need = 0;
            int rc = shoal__frame_parse(p, avail, n->opts.max_frame, &f, &need);
            if (rc == 0) {
                if (need > c->rcap) { /* make room for the whole frame at once */
                    if (off) {
                        memmove(c->rbuf, c->rbuf + off, c->rlen - off);
                        c->rlen -= off;
                        off = 0;
                    }
                    char *nb = realloc(c->rbuf, need);
                    if (!nb) {
                        shoal__conn_close(c, "out of memory");
                        return;
                    }
                    c->rbuf = nb;
                    c->rcap = need;
                }
                break;
            }
            if (rc == -E2BIG) {
                shoal__log(n,
                           "closing connection to %s: a frame of %zu bytes is over the limit "
                           "of %zu bytes (-max_frame)",
                           n->names[c->peer], need, n->opts.max_frame);
                shoal__conn_close(c, "frame over max_frame");
                return;
            }
            if (rc < 0) {
                shoal__log(n, "closing connection to %s: malformed frame", n->names[c->peer]);
                shoal__conn_close(c, "malformed frame");
                return;
            }
            off += f.size;
            if (f.kind == FRAME_PASS && n->up->frame_in(c, &f) < 0) {
                if (c->state != C_CLOSING) {
                    shoal__log(n, "closing connection to %s: bad control message",
                               n->names[c->peer]);
                    shoal__conn_close(c, "bad control message");
                }
                return;
            }
        } else {
            const char *body;
            size_t blen, used;
            int rc = shoal__hs_frame(p, avail, &body, &blen, &used);
            if (rc == 0)
                break;
            if (rc < 0 || hs_message(c, body, blen) < 0) {
                if (rc < 0)
                    hs_fail(c, HSF_MALFORMED, "garbage; closing");
                close_conn(c, "handshake failed", 1);
                return;
            }
            off += used;
        }
    }
    if (c->state == C_CLOSING)
        return;
    if (off) {
        memmove(c->rbuf, c->rbuf + off, c->rlen - off);
        c->rlen -= off;
    }
    if (c->rcap > (1u << 20) && c->rlen < READ_CHUNK) { /* shrink after a big frame */
        char *nb = realloc(c->rbuf, READ_CHUNK);
        if (nb) {
            c->rbuf = nb;
            c->rcap = READ_CHUNK;
        }
    }
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)hint;
    conn *c = h->data;
    if (c->rcap - c->rlen < 4096) {
        size_t cap = c->rcap ? c->rcap * 2 : READ_CHUNK;
        char *nb = realloc(c->rbuf, cap);
        if (!nb) {
            *buf = uv_buf_init(NULL, 0);
            return;
        }
        c->rbuf = nb;
        c->rcap = cap;
    }
    *buf = uv_buf_init(c->rbuf + c->rlen, (unsigned)(c->rcap - c->rlen));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    conn *c = s->data;
    if (c->state == C_CLOSING)
        return;
    if (nread < 0) {
        if (c->state == C_I_ACK) /* the peer did not like our digest: a cookie mismatch */
            hs_fail(c, HSF_CLOSED, "closed by the peer after our challenge reply (wrong cookie?)");
        else if (c->state != C_UP)
            hs_fail(c, HSF_CLOSED, "connection closed by the peer");
        shoal__conn_close(c, nread == UV_EOF ? "connection closed" : uv_strerror((int)nread));
        return;
    }
    if (nread == 0)
        return;
    c->rlen += (size_t)nread;
    c->last_rx = shoal__now(c->node);
    if (c->node->opts.spin_us) {
        c->node->last_io_ns = uv_hrtime();
        shoal__wake(c->node);
    }
    conn_consume(c);
    /* answer now: everything this read produced (replies, acks, for any connection) goes
     * out in one write per connection before the loop polls again */
    flush_dirty(c->node);
}

/* ---- accepting -------------------------------------------------------------------------- */

/* "ip:port" of a socket address, for log lines. */
static void addr_text(const struct sockaddr_storage *ss, char *buf, size_t size)
{
    char ip[64] = "?";
    int port = 0;
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        uv_ip6_name(a, ip, sizeof ip);
        port = ntohs(a->sin6_port);
    } else if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        uv_ip4_name(a, ip, sizeof ip);
        port = ntohs(a->sin_port);
    }
    snprintf(buf, size, "%s:%d", ip, port);
}

static void on_connection(uv_stream_t *server, int status)
{
    shoal_node *n = server->data;
    if (status < 0 || n->closing)
        return;
    conn *c = conn_new(n, 0);
    if (!c)
        return;
    uv_tcp_init(n->loop, &c->tcp);
    c->tcp.data = c;
    c->tcp_open = 1;
    c->state = C_A_NAME;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0 ||
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
        shoal__conn_close(c, "accept failed");
        return;
    }
    struct sockaddr_storage ss;
    int sl = sizeof ss;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) == 0)
        addr_text(&ss, c->addr_str, sizeof c->addr_str);
    uv_tcp_nodelay(&c->tcp, 1);
}

/* ---- epmd registration ------------------------------------------------------------------ */

static void started(shoal_node *n, int status)
{
    if (n->hooks.started)
        n->hooks.started(n, status, n->hooks.arg);
}

static void epmd_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)hint;
    shoal_node *n = h->data;
    if (shoal__dbuf_reserve(&n->epmd_buf, 64)) {
        *buf = uv_buf_init(NULL, 0);
        return;
    }
    *buf = uv_buf_init(n->epmd_buf.data + n->epmd_buf.len, 64);
}

static void epmd_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    shoal_node *n = s->data;
    if (nread < 0) {
        if (!n->closing) {
            shoal__log(n, "epmd closed our registration socket (%s)",
                       nread == UV_EOF ? "eof" : uv_strerror((int)nread));
            if (!n->epmd_registered)
                started(n, -ECONNRESET);
        }
        close_node_handle(n, (uv_handle_t *)&n->epmd);
        return;
    }
    n->epmd_buf.len += (size_t)nread;
    if (n->epmd_registered)
        return;
    int result = 0;
    uint32_t creation = 0;
    int rc = shoal__epmd_parse_alive2(n->epmd_buf.data, n->epmd_buf.len, &result, &creation);
    if (rc == 0)
        return;
    if (rc < 0 || result != 0) {
        shoal__log(n, "epmd refused the name %s (result %d)", n->alive, rc < 0 ? -1 : result);
        started(n, -EADDRINUSE);
        close_node_handle(n, (uv_handle_t *)&n->epmd);
        return;
    }
    n->epmd_registered = 1;
    n->epmd_buf.len = 0;
    shoal__debug(n, "registered with epmd on port %d", n->port);
    started(n, 0);
}

static void epmd_written(uv_write_t *req, int status)
{
    shoal_node *n = req->data;
    if (status < 0 && !n->closing) {
        shoal__log(n, "epmd: write failed");
        started(n, status);
    }
}

static void epmd_connected(uv_connect_t *req, int status)
{
    shoal_node *n = req->data;
    if (n->closing)
        return;
    if (status < 0) {
        shoal__log(n, "cannot reach epmd on 127.0.0.1:4369 (%s)", uv_strerror(status));
        started(n, status);
        return;
    }
    shoal__dbuf_free(&n->epmd_req);
    if (shoal__epmd_put_alive2(&n->epmd_req, n->port, 1, n->alive)) {
        started(n, -EINVAL);
        return;
    }
    uv_buf_t b = uv_buf_init(n->epmd_req.data, (unsigned)n->epmd_req.len);
    n->epmd_wreq.data = n;
    uv_write(&n->epmd_wreq, (uv_stream_t *)&n->epmd, &b, 1, epmd_written);
    uv_read_start((uv_stream_t *)&n->epmd, epmd_alloc, epmd_read);
}

/* ---- ticks and handshake timeouts --------------------------------------------------------- */

static void tick_at(shoal_node *n, uint64_t now)
{
    uint64_t tick = n->opts.tick_ms;
    hs_summary(n, now);
    for (conn *c = n->conns; c; c = c->next) {
        if (c->state == C_CLOSING)
            continue;
        if (c->state != C_UP) {
            if (now >= c->deadline) {
                hs_fail(c, HSF_TIMEOUT, "no answer within %d ms; closing", CN_HS_TIMEOUT_MS);
                shoal__conn_close(c, "handshake timeout");
            }
            continue;
        }
        if (now - c->last_rx > 4 * tick + tick / 2) {
            shoal__log(n, "connection to %s: no traffic for %llu ms (net_tick_timeout); closing",
                       n->names[c->peer], (unsigned long long)(now - c->last_rx));
            shoal__conn_close(c, "net_tick_timeout");
            continue;
        }
        if (now - c->last_tx >= tick && c->out.len == 0 && !c->writing) {
            shoal__frame_tick(&c->out);
            shoal__conn_dirty(c);
        }
    }
}

static void on_tick(uv_timer_t *t)
{
    shoal_node *n = t->data;
    tick_at(n, shoal__now(n));
}

int shoal_node_start(shoal_node *n)
{
    struct sockaddr_in addr;
    int rc;
    if (n->listening || n->closing)
        return -EINVAL;
    /* every node handle exists from here on, so shoal_node_close can close them all */
    uv_tcp_init(n->loop, &n->listener);
    n->listener.data = n;
    uv_timer_init(n->loop, &n->tick);
    n->tick.data = n;
    uv_prepare_init(n->loop, &n->flush);
    n->flush.data = n;
    uv_idle_init(n->loop, &n->idle);
    n->idle.data = n;
    uv_tcp_init(n->loop, &n->epmd);
    n->epmd.data = n;
    n->open_handles += 5;
    n->listening = 1;
    n->epmd_open = 1;

    uv_ip4_addr("0.0.0.0", n->opts.port, &addr);
    if ((rc = uv_tcp_bind(&n->listener, (const struct sockaddr *)&addr, 0)) != 0 ||
        (rc = uv_listen((uv_stream_t *)&n->listener, 128, on_connection)) != 0) {
        shoal__log(n, "cannot listen: %s", uv_strerror(rc));
        return rc;
    }
    struct sockaddr_storage ss;
    int len = sizeof ss;
    uv_tcp_getsockname(&n->listener, (struct sockaddr *)&ss, &len);
    n->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);

    unsigned every = n->opts.tick_ms < 1000 ? n->opts.tick_ms : 1000;
    uv_timer_start(&n->tick, on_tick, every, every);
    uv_prepare_start(&n->flush, on_flush);

    struct sockaddr_in ea;
    uv_ip4_addr("127.0.0.1", 4369, &ea);
    n->epmd_creq.data = n;
    rc = uv_tcp_connect(&n->epmd_creq, &n->epmd, (const struct sockaddr *)&ea, epmd_connected);
    if (rc) {
        shoal__log(n, "cannot connect to epmd: %s", uv_strerror(rc));
        return rc;
    }
    return 0;
}

/* ---- the run queue of local messages -------------------------------------------------- */

static void on_idle(uv_idle_t *h)
{
    shoal_node *n = h->data;
    n->up->run_queue(n);
    /* keep polling without sleeping for a moment after traffic, as BEAM schedulers spin:
     * a reply or the next request then needs no wake-up from epoll_wait */
    if (!n->runq_len && uv_hrtime() - n->last_io_ns > (uint64_t)n->opts.spin_us * 1000) {
        uv_idle_stop(&n->idle);
        n->idle_on = 0;
    }
}

void shoal__wake(shoal_node *n)
{
    if (!n->idle_on && n->listening && !uv_is_closing((uv_handle_t *)&n->idle)) {
        uv_idle_start(&n->idle, on_idle);
        n->idle_on = 1;
    }
}

/* ---- outgoing connections ---------------------------------------------------------------- */

static void on_connected(uv_connect_t *req, int status)
{
    conn *c = req->data;
    if (c->state == C_CLOSING)
        return;
    if (status < 0) {
        shoal__log(c->node, "cannot connect to %s: %s", c->node->names[c->peer],
                   uv_strerror(status));
        shoal__conn_close(c, "connect failed");
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    c->state = C_I_STATUS;
    shoal__hs_put_name(&c->out, WIRE_OUR_FLAGS, c->node->creation, c->node->full_name);
    hs_send(c);
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0)
        shoal__conn_close(c, "read failed");
}

static void dist_connect(conn *c, int port)
{
    shoal_node *n = c->node;
    c->state = C_CONNECT;
    if (c->addr.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)&c->addr)->sin6_port = htons((uint16_t)port);
    else
        ((struct sockaddr_in *)&c->addr)->sin_port = htons((uint16_t)port);
    addr_text(&c->addr, c->addr_str, sizeof c->addr_str);
    uv_tcp_init(n->loop, &c->tcp);
    c->tcp.data = c;
    c->tcp_open = 1;
    c->creq.data = c;
    int rc = uv_tcp_connect(&c->creq, &c->tcp, (struct sockaddr *)&c->addr, on_connected);
    if (rc) {
        shoal__log(n, "cannot connect to %s: %s", n->names[c->peer], uv_strerror(rc));
        shoal__conn_close(c, "connect failed");
    }
}

static void epq_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)hint;
    conn *c = h->data;
    if (shoal__dbuf_reserve(&c->ebuf, 256)) {
        *buf = uv_buf_init(NULL, 0);
        return;
    }
    *buf = uv_buf_init(c->ebuf.data + c->ebuf.len, 256);
}

static void epq_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    conn *c = s->data;
    if (c->state != C_EPMD)
        return;
    if (nread > 0)
        c->ebuf.len += (size_t)nread;
    int port = 0;
    int rc = shoal__epmd_parse_port2(c->ebuf.data, c->ebuf.len, &port);
    if (rc == 0 && nread >= 0)
        return;
    uv_close((uv_handle_t *)&c->epmd, on_conn_epmd_closed);
    if (rc <= 0 || port < 0) {
        shoal__log(c->node, "epmd on the host of %s does not know it", c->node->names[c->peer]);
        shoal__conn_close(c, "not registered in epmd");
        return;
    }
    dist_connect(c, port);
}

static void epq_written(uv_write_t *req, int status)
{
    conn *c = req->data;
    if (status < 0 && c->state == C_EPMD)
        shoal__conn_close(c, "epmd write failed");
}

static void epq_connected(uv_connect_t *req, int status)
{
    conn *c = req->data;
    if (c->state != C_EPMD)
        return;
    if (status < 0) {
        shoal__log(c->node, "cannot reach epmd for %s: %s", c->node->names[c->peer],
                   uv_strerror(status));
        shoal__conn_close(c, "epmd unreachable");
        return;
    }
    const char *name = c->node->names[c->peer];
    char alive[256];
    size_t an = (size_t)(strchr(name, '@') - name);
    memcpy(alive, name, an);
    alive[an] = 0;
    shoal__dbuf_free(&c->ereq);
    shoal__epmd_put_port_please(&c->ereq, alive);
    uv_buf_t b = uv_buf_init(c->ereq.data, (unsigned)c->ereq.len);
    c->ewreq.data = c;
    uv_write(&c->ewreq, (uv_stream_t *)&c->epmd, &b, 1, epq_written);
    uv_read_start((uv_stream_t *)&c->epmd, epq_alloc, epq_read);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    conn *c = req->data;
    c->gai_active = 0;
    if (c->state != C_RESOLVE) {
        if (res)
            uv_freeaddrinfo(res);
        maybe_free_conn(c);
        return;
    }
    if (status < 0 || !res) {
        shoal__log(c->node, "cannot resolve the host of %s: %s", c->node->names[c->peer],
                   uv_strerror(status));
        if (res)
            uv_freeaddrinfo(res);
        shoal__conn_close(c, "cannot resolve host");
        return;
    }
    memcpy(&c->addr, res->ai_addr, res->ai_addrlen);
    uv_freeaddrinfo(res);
    c->state = C_EPMD;
    struct sockaddr_storage ea = c->addr;
    if (ea.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)&ea)->sin6_port = htons(4369);
    else
        ((struct sockaddr_in *)&ea)->sin_port = htons(4369);
    uv_tcp_init(c->node->loop, &c->epmd);
    c->epmd.data = c;
    c->epmd_open = 1;
    c->ecreq.data = c;
    if (uv_tcp_connect(&c->ecreq, &c->epmd, (struct sockaddr *)&ea, epq_connected) != 0)
        shoal__conn_close(c, "epmd connect failed");
}

conn *shoal__conn_for(shoal_node *n, uint32_t peer, int create)
{
    if (peer == 0 || peer >= n->nnames)
        return NULL;
    conn *c = n->by_peer[peer];
    if (c || !create || n->closing || !n->listening)
        return c;
    const char *name = n->names[peer];
    const char *at = strchr(name, '@');
    if (!at || at == name || !at[1] || at - name > 255)
        return NULL;
    c = conn_new(n, 1);
    if (!c)
        return NULL;
    c->peer = peer;
    c->state = C_RESOLVE;
    n->by_peer[peer] = c;
    struct addrinfo hints = {0};
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    c->gai.data = c;
    c->gai_active = 1;
    if (uv_getaddrinfo(n->loop, &c->gai, on_resolved, at + 1, NULL, &hints) != 0) {
        c->gai_active = 0;
        shoal__conn_close(c, "cannot resolve host");
        return NULL;
    }
    return c;
}

typedef struct defer_cb {
    uv_timer_t t;
    void (*cb)(shoal_node *n, const char *peer, int status, void *arg);
    void *arg;
    shoal_node *n;
    uint32_t peer;
} defer_cb;

static void defer_closed(uv_handle_t *h)
{
    free(h->data);
}

static void defer_fire(uv_timer_t *t)
{
    defer_cb *d = t->data;
    d->cb(d->n, d->n->names[d->peer], 0, d->arg);
    uv_close((uv_handle_t *)t, defer_closed);
}

int shoal_connect(shoal_node *n, const char *node_name,
                  void (*cb)(shoal_node *n, const char *peer, int status, void *arg), void *arg)
{
    if (!n || !node_name || !strchr(node_name, '@'))
        return -EINVAL;
    uint32_t peer;
    int rc = shoal__intern(n, node_name, &peer);
    if (rc)
        return rc;
    if (peer == 0)
        return -EINVAL;
    conn *c = shoal__conn_for(n, peer, 1);
    if (!c)
        return -ENOTCONN;
    if (!cb)
        return 0;
    if (c->state == C_UP) {
        defer_cb *d = calloc(1, sizeof *d);
        if (!d)
            return -ENOMEM;
        d->cb = cb;
        d->arg = arg;
        d->n = n;
        d->peer = peer;
        uv_timer_init(n->loop, &d->t);
        d->t.data = d;
        uv_timer_start(&d->t, defer_fire, 0, 0);
        return 0;
    }
    conn_waiter *w = calloc(1, sizeof *w);
    if (!w)
        return -ENOMEM;
    w->cb = cb;
    w->arg = arg;
    w->next = c->waiters;
    c->waiters = w;
    return 0;
}

int shoal_nodes(shoal_node *n, const char **out, int outlen)
{
    int k = 0;
    for (conn *c = n->conns; c; c = c->next)
        if (c->state == C_UP) {
            if (k < outlen)
                out[k] = n->names[c->peer];
            k++;
        }
    return k;
}

/* ---- timers --------------------------------------------------------------------------- */

static void timer_closed(uv_handle_t *h)
{
    shoal_timer *t = h->data;
    shoal_node *n = t->node;
    free(t);
    n->open_handles--;
    maybe_closed(n);
}

static void timer_fire(uv_timer_t *h)
{
    shoal_timer *t = h->data;
    t->cb(t, t->arg);
}

int shoal_timer_start(shoal_node *n, uint64_t ms, uint64_t repeat_ms,
                      void (*cb)(shoal_timer *t, void *arg), void *arg, shoal_timer **out)
{
    if (!n || !cb || n->closing)
        return -EINVAL;
    shoal_timer *t = calloc(1, sizeof *t);
    if (!t)
        return -ENOMEM;
    t->node = n;
    t->cb = cb;
    t->arg = arg;
    uv_timer_init(n->loop, &t->t);
    t->t.data = t;
    n->open_handles++;
    t->next = n->timers;
    if (n->timers)
        n->timers->prev = t;
    n->timers = t;
    uv_timer_start(&t->t, timer_fire, ms, repeat_ms);
    if (out)
        *out = t;
    return 0;
}

void shoal_timer_stop(shoal_timer *t)
{
    if (!t || uv_is_closing((uv_handle_t *)&t->t))
        return;
    shoal_node *n = t->node;
    if (t->prev)
        t->prev->next = t->next;
    else
        n->timers = t->next;
    if (t->next)
        t->next->prev = t->prev;
    uv_timer_stop(&t->t);
    uv_close((uv_handle_t *)&t->t, timer_closed);
}

/* ---- closing the node ------------------------------------------------------------------- */

void shoal__node_close(shoal_node *n)
{
    if (n->closing)
        return;
    n->closing = 1;
    while (n->timers)
        shoal_timer_stop(n->timers);
    flush_dirty(n);
    for (conn *c = n->conns; c; c = c->next)
        close_conn(c, "node shutting down", 1);
    if (n->listening) {
        close_node_handle(n, (uv_handle_t *)&n->listener);
        close_node_handle(n, (uv_handle_t *)&n->tick);
        close_node_handle(n, (uv_handle_t *)&n->flush);
        close_node_handle(n, (uv_handle_t *)&n->idle);
        close_node_handle(n, (uv_handle_t *)&n->epmd);
    }
    maybe_closed(n);
}

void shoal__node_free(shoal_node *n)
{
    for (uint32_t i = 0; i < n->nnames; i++)
        free(n->names[i]);
    free(n->names);
    free(n->by_peer);
    shoal__smap_free(&n->name_idx);
    shoal__smap_free(&n->regnames);
    shoal__imap_free(&n->procs);
    shoal__imap_free(&n->mons);
    shoal__dbuf_free(&n->epmd_buf);
    shoal__dbuf_free(&n->epmd_req);
    shoal__dbuf_free(&n->scratch);
    free(n->scratch_from);
    free(n->alive);
    free(n->host);
    free(n->cookie);
    free(n->full_name);
    free(n);
}

/* ---- test entry: connections without a socket ------------------------------------------ */

int shoal__conn_test_open(shoal_node *n, int role, const char *peer, dbuf *sink, conn **out)
{
    uint32_t idx = 0;
    if (!n || !sink || !out || n->listening || n->closing || role < SHOAL__TEST_ACCEPT ||
        role > SHOAL__TEST_UP)
        return -EINVAL;
    if (role != SHOAL__TEST_ACCEPT) {
        int rc = peer ? shoal__intern(n, peer, &idx) : -EINVAL;
        if (rc)
            return rc;
        if (idx == 0 || n->by_peer[idx])
            return -EEXIST;
    }
    conn *c = conn_new(n, role == SHOAL__TEST_INITIATE);
    if (!c)
        return -ENOMEM;
    c->sink = sink;
    snprintf(c->addr_str, sizeof c->addr_str, "test:%p", (void *)c);
    if (role == SHOAL__TEST_ACCEPT) {
        c->state = C_A_NAME;
    } else {
        c->peer = idx;
        n->by_peer[idx] = c;
        if (role == SHOAL__TEST_INITIATE) { /* as on_connected: our send_name is out */
            c->state = C_I_STATUS;
            shoal__hs_put_name(&c->out, WIRE_OUR_FLAGS, n->creation, n->full_name);
            shoal__conn_dirty(c);
        } else {
            c->peer_flags = WIRE_OUR_FLAGS;
            conn_up(c);
        }
    }
    flush_dirty(n);
    *out = c;
    return 0;
}

int shoal__conn_test_feed(conn *c, const char *buf, size_t len)
{
    if (c->state == C_CLOSING)
        return -ECONNRESET;
    if (len) {
        if (c->rcap - c->rlen < len) {
            char *nb = realloc(c->rbuf, c->rlen + len);
            if (!nb)
                return -ENOMEM;
            c->rbuf = nb;
            c->rcap = c->rlen + len;
        }
        memcpy(c->rbuf + c->rlen, buf, len);
        c->rlen += len;
        c->last_rx = shoal__now(c->node);
        conn_consume(c);
    }
    flush_dirty(c->node);
    return c->state == C_CLOSING ? -ECONNRESET : 0;
}

void shoal__node_test_turn(shoal_node *n, uint64_t tick_now)
{
    n->up->run_queue(n);
    if (tick_now)
        tick_at(n, tick_now);
    flush_dirty(n);
}

int shoal__conn_test_state(const conn *c)
{
    return c->state == C_CLOSING ? -1 : c->state == C_UP ? 1 : 0;
}

void shoal__conn_test_release(conn *c)
{
    if (c->state != C_CLOSING)
        shoal__conn_close(c, "test done");
    c->sink = NULL;
    maybe_free_conn(c);
}
