/* cnode_int.h - internal structures of the C node shared by its layers, bottom up: node.c
 * (loop, sockets, handshake, framed stream), ctrl.c (control messages out, pid and ref
 * codecs), proc.c (C processes, links, monitors, calls), dist.c (control messages in) and
 * cnode.c (the public life cycle, which wires them together). A layer calls only the layers
 * below it; node.c reaches up through the node's upcalls (node_upcalls). Not installed; the
 * public API is include/shoal.h. */
#ifndef SHOAL_CNODE_INT_H
#define SHOAL_CNODE_INT_H

#include "shoal.h"
#include "map.h"
#include "ratelog.h"
#include "wire.h"

#include <stdarg.h>

#define CN_MAX_NAMES 65536     /* distinct node names a node remembers */
#define CN_MAX_TAG 2048        /* largest gen_server call tag we keep for a reply */
#define CN_HS_TIMEOUT_MS 7000  /* net_setuptime */
#define CN_SYSTEM_ID 1         /* id of the node's own system pid (no process behind it) */

typedef struct conn conn;

/* What the transport (node.c) calls in the layers above it; cnode.c fills it in. */
typedef struct node_upcalls {
    int (*frame_in)(conn *c, const frame *f);        /* a frame arrived; < 0 closes c */
    void (*node_down)(shoal_node *n, uint32_t peer); /* the connection to peer is gone */
    void (*run_queue)(shoal_node *n);                /* deliver queued local messages */
} node_upcalls;

enum conn_state {
    C_RESOLVE,       /* initiator: looking up the host */
    C_EPMD,          /* initiator: asking epmd for the port */
    C_CONNECT,       /* initiator: TCP connect */
    C_I_STATUS,      /* initiator: sent name, waiting for status */
    C_I_CHALLENGE,   /* initiator: waiting for the challenge */
    C_I_ACK,         /* initiator: sent reply, waiting for ack */
    C_A_NAME,        /* acceptor: waiting for send_name */
    C_A_ALIVE,       /* acceptor: sent "alive", waiting for true/false */
    C_A_REPLY,       /* acceptor: sent challenge, waiting for reply */
    C_UP,            /* frames flow */
    C_CLOSING
};

typedef struct conn_waiter {
    struct conn_waiter *next;
    void (*cb)(shoal_node *n, const char *peer, int status, void *arg);
    void *arg;
} conn_waiter;

struct conn {
    shoal_node *node;
    conn *next;              /* node->conns list */
    conn *next_dirty;        /* node->dirty list (output to flush) */
    int dirty;
    enum conn_state state;
    int initiator;
    uint32_t peer;           /* interned node index; 0 while unknown */
    uint64_t peer_flags;
    uint32_t peer_creation;
    uint32_t my_challenge;
    uv_tcp_t tcp;
    int tcp_open;            /* tcp handle initialised and not yet closed */
    char *rbuf;              /* bytes read, not yet consumed */
    size_t rlen, rcap;
    dbuf out;                /* frames not yet handed to libuv */
    dbuf inflight;           /* frames libuv is writing now */
    int writing;
    uv_write_t wreq;
    dbuf pending;            /* frames queued before the handshake finished */
    uint64_t last_rx, last_tx; /* loop time (ms) of the last read / write */
    uint64_t deadline;       /* handshake deadline (loop time) */
    conn_waiter *waiters;    /* shoal_connect callbacks */
    /* initiator setup */
    uv_getaddrinfo_t gai;
    int gai_active;
    struct sockaddr_storage addr;
    char addr_str[64];       /* "ip:port" of the peer once known, for log lines */
    uv_tcp_t epmd;
    int epmd_open;
    uv_connect_t creq, ecreq;
    uv_write_t ewreq;
    dbuf ereq;               /* epmd request */
    dbuf ebuf;               /* epmd answer */
    char *why;               /* reason for the close, for node_down */
    dbuf *sink;              /* test connections: writes go here; no socket */
};

typedef struct lmsg { /* a message queued for a local process */
    struct lmsg *next;
    int kind;        /* shoal_msg_kind, or LM_SIGNAL */
    int has_from;
    int link_signal; /* LM_SIGNAL: 1 from a link, 0 from exit/2 */
    shoal_pid from;
    uint64_t monitor;
    shoal_from *reply_to; /* owned */
    size_t len;
    char term[];
} lmsg;
#define LM_SIGNAL 100

typedef struct inmon { /* someone monitors a local process */
    shoal_pid watcher;
    uint64_t local_ref; /* watcher is local: our ref number; else 0 */
    int by_name;
    uint32_t reflen;    /* remote watcher: its ref, as term bytes */
    char *ref;
} inmon;

struct shoal_proc {
    shoal_node *node;
    uint64_t id;
    shoal_proc_spec spec;
    char *name;
    shoal_pid *links;
    uint32_t nlinks, caplinks;
    inmon *mons;
    uint32_t nmons, capmons;
    uint32_t nouts;    /* outgoing monitors and calls this process owns */
    lmsg *mq_head, *mq_tail;
    int on_runq, in_cb, exiting;
    char *exit_reason;
    size_t exit_len;
};

enum { OM_CALL = 1, OM_MON = 2 };

typedef struct outmon { /* a monitor we hold: a pending call or shoal_monitor */
    shoal_node *node;
    uint64_t refno;
    uint64_t owner;     /* process id (CN_SYSTEM_ID for the system pid) */
    int kind;
    uint32_t peer;      /* node index of the target; 0 = local */
    shoal_pid target;   /* target pid, or ... */
    char *target_name;  /* ... registered name */
    shoal_call_cb cb;
    void *arg;
    uv_timer_t *timer;  /* call timeout, or NULL */
    int async_status;   /* timer fires this failure (local target missing) */
} outmon;

struct shoal_from {
    shoal_pid pid;
    uint32_t taglen;
    char tag[];
};

struct shoal_timer {
    uv_timer_t t;
    shoal_node *node;
    shoal_timer *prev, *next;
    void (*cb)(shoal_timer *t, void *arg);
    void *arg;
};

struct shoal_node {
    uv_loop_t *loop;
    const node_upcalls *up;    /* the layers above the transport */
    shoal_node_opts opts;
    shoal_node_hooks hooks;
    char *alive, *host, *full_name, *cookie;
    uint32_t creation;
    uint32_t ref_salt;
    uv_tcp_t listener;
    int port;
    int listening;
    uv_tcp_t epmd;
    int epmd_open, epmd_registered;
    uv_connect_t epmd_creq;
    uv_write_t epmd_wreq;
    dbuf epmd_req;
    dbuf epmd_buf;
    uv_timer_t tick;
    uv_prepare_t flush;
    uv_idle_t idle;
    int idle_on;
    uint64_t last_io_ns;     /* uv_hrtime of the last read, for spinning */
    conn *conns;
    conn *dirty;
    char **names;            /* interned node names; names[0] = this node */
    conn **by_peer;          /* the live or pending connection per node index */
    uint32_t nnames, capnames;
    smap name_idx;           /* name -> index + 1 */
    imap procs;              /* id -> shoal_proc */
    smap regnames;           /* name -> shoal_proc */
    uint64_t next_id;
    imap mons;               /* ref number -> outmon */
    uint64_t next_ref;
    uint64_t *runq;          /* ids of processes with queued messages */
    size_t runq_len, runq_cap;
    shoal_timer *timers;
    int closing, closed_cb_done;
    int open_handles;
    uint32_t test_challenge;  /* test entry: the challenge we send (0: random) */
    ratelog hs_log;           /* failed handshakes: how many get a log line */
    char hs_last[400];        /* the last failed handshake: peer, kind (for the summary) */
    shoal_from *scratch_from; /* reply_to of the call being delivered */
    dbuf scratch;             /* reused by shoal_reply to build {Tag, Reply} */
    struct {                  /* recently decoded node names of pids: bytes -> index */
        uint32_t idx, len1;   /* len1 = strlen(names[idx]) + 1; 0 = empty */
    } name_cache[16];
};

/* Atoms as term bytes (SMALL_ATOM_UTF8_EXT), for reasons the node makes up itself. */
static const char ATOM_NORMAL[] = {'w', 6, 'n', 'o', 'r', 'm', 'a', 'l'};
static const char ATOM_NOPROC[] = {'w', 6, 'n', 'o', 'p', 'r', 'o', 'c'};
static const char ATOM_NOCONN[] = {'w', 12, 'n', 'o', 'c', 'o', 'n',
                                   'n', 'e', 'c', 't', 'i', 'o', 'n'};
static const char ATOM_KILLED[] = {'w', 6, 'k', 'i', 'l', 'l', 'e', 'd'};
static const char ATOM_SHUTDOWN[] = {'w', 8, 's', 'h', 'u', 't', 'd', 'o', 'w', 'n'};

/* node.c: the transport */
/* Creates the node (not started) whose transport calls up through `up` (not copied: it
 * must outlive the node). Returns 0, -EINVAL, -ENOMEM; shoal_node_new's contract. */
int shoal__node_new(uv_loop_t *loop, const shoal_node_opts *opts, const shoal_node_hooks *hooks,
                    const node_upcalls *up, shoal_node **out);
void shoal__node_close(shoal_node *n); /* closes timers, connections, sockets; once */
void shoal__node_free(shoal_node *n);  /* frees what node.c owns */
void shoal__log(shoal_node *n, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void shoal__debug(shoal_node *n, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int shoal__intern(shoal_node *n, const char *name, uint32_t *idx);
/* Node index of the name bytes s[0..len) if it was recently seen (a small cache in front of
 * shoal__intern for the pid decoder); 0 on a hit, -1 on a miss. shoal__name_seen fills the
 * cache. */
int shoal__name_lookup(shoal_node *n, const char *s, size_t len, uint32_t *idx);
void shoal__name_seen(shoal_node *n, uint32_t idx);
conn *shoal__conn_for(shoal_node *n, uint32_t peer, int create); /* up or pending */
void shoal__conn_dirty(conn *c);
dbuf *shoal__conn_outbuf(conn *c); /* where frames for c go now (out or pending) */
void shoal__conn_close(conn *c, const char *why);
void shoal__wake(shoal_node *n); /* make sure the run queue gets drained */
uint64_t shoal__now(shoal_node *n);

/* node.c, test entry: connections without a socket, so unit tests and fuzzers can drive the
 * connection state machine with bytes. Only on a node that was created but not started. */
enum { SHOAL__TEST_ACCEPT = 1, SHOAL__TEST_INITIATE, SHOAL__TEST_UP };
/* Opens a connection whose writes are appended to *sink (which must outlive it): ACCEPT waits
 * for the peer's send_name; INITIATE to `peer` ("alive@host") has sent its own send_name;
 * UP is connected to `peer` already. Returns 0, -EINVAL, -EEXIST (peer taken), -ENOMEM. The
 * connection's memory stays valid until shoal__conn_test_release, even once it is closed. */
int shoal__conn_test_open(shoal_node *n, int role, const char *peer, dbuf *sink, conn **out);
/* Processes buf as if read from the socket, then flushes every connection's output.
 * Returns 0, or -ECONNRESET once c is closed (then the bytes are ignored), -ENOMEM. */
int shoal__conn_test_feed(conn *c, const char *buf, size_t len);
/* What a loop turn does: runs the local run queue, the periodic tick as if at loop time
 * tick_now (0: no tick), and flushes output. */
void shoal__node_test_turn(shoal_node *n, uint64_t tick_now);
int shoal__conn_test_state(const conn *c); /* 1 up, 0 in the handshake, -1 closed */
/* Closes c (if it is not) and frees it. Call before shoal_node_close. */
void shoal__conn_test_release(conn *c);

/* ctrl.c */
int shoal__enc_pid(shoal_node *n, dbuf *b, const shoal_pid *p);
int shoal__enc_ref(shoal_node *n, dbuf *b, uint64_t refno);
int shoal__enc_atom(dbuf *b, const char *a);
int shoal__enc_long(dbuf *b, long v);
int shoal__enc_tuple(dbuf *b, int arity);
int shoal__dec_pid(shoal_node *n, const char *buf, int *idx, shoal_pid *p);
/* -ENOENT: a ref, but not one of ours */
int shoal__dec_our_ref(shoal_node *n, const char *buf, int *idx, uint64_t *refno);
int shoal__ctrl_send(shoal_node *n, uint32_t peer, int op, const shoal_pid *from,
                     const shoal_pid *to, const char *name, uint64_t refno, const char *refbytes,
                     size_t reflen, const char *term, size_t len);
int shoal__is_atom(const char *term, const char *name); /* term (validated) is that atom */

/* dist.c */
int shoal__dist_frame(conn *c, const frame *f); /* 0, or negative: close the connection */

/* proc.c */
shoal_proc *shoal__proc_get(shoal_node *n, const shoal_pid *pid); /* local live process or NULL */
shoal_pid shoal__proc_pid_of(shoal_node *n, uint64_t id);
void shoal__proc_deliver(shoal_node *n, const shoal_pid *to, int has_from, const shoal_pid *from,
                         const char *term, size_t len); /* a message to a local pid */
void shoal__proc_deliver_named(shoal_node *n, const char *name, size_t namelen,
                               const shoal_pid *from, const char *term, size_t len);
void shoal__proc_signal(shoal_node *n, const shoal_pid *to, const shoal_pid *from,
                        const char *reason, size_t len, int link_signal);
int shoal__proc_add_link(shoal_node *n, const shoal_pid *local, const shoal_pid *remote);
void shoal__proc_del_link(shoal_node *n, const shoal_pid *local, const shoal_pid *remote);
int shoal__proc_add_inmon(shoal_node *n, shoal_proc *p, const shoal_pid *watcher,
                          uint64_t local_ref, int by_name, const char *ref, size_t reflen);
void shoal__proc_del_inmon(shoal_node *n, shoal_proc *p, const shoal_pid *watcher, const char *ref,
                           size_t reflen, uint64_t local_ref);
void shoal__outmon_fire(shoal_node *n, uint64_t refno, const char *reason, size_t len, int status);
int shoal__outmon_reply(shoal_node *n, const char *term, size_t len); /* 1 if it was a call reply */
void shoal__proc_node_down(shoal_node *n, uint32_t peer);
void shoal__proc_run_queue(shoal_node *n);
void shoal__proc_close_all(shoal_node *n);
void shoal__proc_free_all(shoal_node *n);

#endif
