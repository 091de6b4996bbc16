/* shoal.h - public C API of the Shoal C node: a pure-C member of a BEAM cluster.
 *
 * One libuv loop drives a node: it registers with epmd, accepts and makes distribution
 * connections, and hosts C processes. A C process has its own pid, an optional registered
 * name and one callback that receives everything sent to it (plain messages, gen_server
 * calls and casts, exit signals when trapping, monitor DOWN notices). From C you can send to
 * any pid or registered name in the cluster, call any gen_server with a timeout, and connect
 * to nodes by name. Everything here runs on the loop thread; nothing is thread safe and no
 * function blocks.
 *
 * Terms cross this API as bytes in the Erlang external term format: produce them with ei
 * (ei_x_new + ei_x_encode_*; a leading version byte 131, as ei_x_new_with_version writes, is
 * accepted and skipped) and decode the bytes you receive with ei_decode_* starting at index 0
 * (delivered terms never carry the version byte). Delivered bytes are valid only during the
 * callback that receives them: copy what you keep.
 *
 * Results: 0 on success or a negative errno value (SHOAL_E* in shoal_err.h style). */
#ifndef SHOAL_H
#define SHOAL_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include <ei.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The library is built with -fvisibility=hidden and its internal symbols are made local in
 * the archive: what this header declares is all it exports. */
#pragma GCC visibility push(default)

typedef struct shoal_node shoal_node;
typedef struct shoal_proc shoal_proc;
typedef struct shoal_from shoal_from; /* where a gen_server reply goes: caller pid + tag */
typedef struct shoal_timer shoal_timer;

/* A pid anywhere in the cluster, 16 bytes. `node` is this node's index for the node name
 * (0 is this node; see shoal_pid_node_name); `creation` tells incarnations apart. */
typedef struct shoal_pid {
    uint32_t node;
    uint32_t num;
    uint32_t serial;
    uint32_t creation;
} shoal_pid;

/* A destination: a registered `name` on `node` (node NULL = this node) when name is not
 * NULL, else `pid`. */
typedef struct shoal_dest {
    shoal_pid pid;
    const char *name;
    const char *node;
} shoal_dest;

typedef enum shoal_msg_kind {
    SHOAL_MSG_SEND = 1, /* a plain message: term = the message */
    SHOAL_MSG_CALL,     /* gen_server:call: term = request; answer with shoal_reply(reply_to) */
    SHOAL_MSG_CAST,     /* gen_server:cast: term = request */
    SHOAL_MSG_EXIT,     /* exit signal while trapping exits: from = sender, term = reason */
    SHOAL_MSG_DOWN      /* a monitor set with shoal_monitor fired: from, monitor, term = reason */
} shoal_msg_kind;

typedef struct shoal_msg {
    shoal_msg_kind kind;
    int has_from;               /* 1 when `from` is known (calls, exits, downs, named sends) */
    shoal_pid from;             /* the sender */
    const char *term;           /* the term, external format without version byte */
    size_t len;                 /* its length in bytes */
    const shoal_from *reply_to; /* SHOAL_MSG_CALL only; valid during the callback */
    uint64_t monitor;           /* SHOAL_MSG_DOWN only: the id shoal_monitor returned */
} shoal_msg;

/* The behaviour of a C process. `handle` receives every message and returns 0 to keep
 * going; a non-zero return makes the process exit with reason `normal` (call shoal_exit
 * first for another reason). `terminate` (may be NULL)
 * runs once when the process exits, with the reason term; it owns and frees `state`. */
typedef struct shoal_proc_spec {
    int (*handle)(shoal_proc *self, const shoal_msg *msg);
    void (*terminate)(shoal_proc *self, const char *reason, size_t len);
    void *state;     /* user data, returned by shoal_state */
    const char *name; /* register under this name at spawn; NULL for none (copied) */
    int trap_exit;   /* 1: exit signals arrive as SHOAL_MSG_EXIT instead of killing */
} shoal_proc_spec;

/* Node events for the embedding program (a pool member hooks registry sync here). */
typedef struct shoal_node_hooks {
    void (*node_up)(shoal_node *n, const char *peer, void *arg);
    void (*node_down)(shoal_node *n, const char *peer, const char *why, void *arg);
    void (*started)(shoal_node *n, int status, void *arg); /* epmd registration done/failed */
    void (*closed)(shoal_node *n, void *arg);              /* shoal_node_close finished */
    /* Every log line of the node (one line, no newline, valid only during the call) goes
     * here instead of to stderr when set. */
    void (*log)(shoal_node *n, const char *line, void *arg);
    void *arg;
} shoal_node_hooks;

/* Bounds of shoal_node_opts.max_frame. One message (control tuple + term) must fit in one
 * frame: the node does not take fragmented messages. The maximum is what the frame's 32-bit
 * length can say. */
#define SHOAL_MAX_FRAME_DEFAULT ((size_t)32 << 20) /* 32 MiB */
#define SHOAL_MAX_FRAME_MIN ((size_t)4096)
#define SHOAL_MAX_FRAME_MAX ((size_t)UINT32_MAX)

typedef struct shoal_node_opts {
    const char *name;   /* "alive" or "alive@host" (required) */
    int long_names;     /* 0: short host names (-sname), 1: fully qualified (-name) */
    const char *cookie; /* NULL: read ~/.erlang.cookie */
    int port;           /* listen port; 0 picks a free one */
    uint32_t creation;  /* 0: derived from the clock, so every start differs */
    size_t max_frame;   /* largest frame accepted from a peer, in bytes after the length
                           prefix; a bigger one closes that connection. 0 = the default
                           (SHOAL_MAX_FRAME_DEFAULT), else SHOAL_MAX_FRAME_MIN..._MAX */
    size_t max_outq;    /* bytes queued to a peer before it counts as not reading; 0 = 64 MiB */
    unsigned tick_ms;   /* tick interval (net_ticktime / 4); 0 = 15000 */
    int verbose;        /* 1: log connection events, not only errors */
    unsigned hs_log_burst;     /* failed handshakes logged in full per period; the rest are
                                  counted and summed up in one line per period; 0 = 10 */
    unsigned hs_log_period_ms; /* that period in ms; 0 = 60000 */
    int spin_us;        /* busy-poll this long after traffic before sleeping (as BEAM
                           schedulers do); 0 or negative = never spin (the default: on a
                           shared 2-core host spinning cost CPU without a latency gain,
                           see bench/results/cnode.md) */
} shoal_node_opts;

/* Creates a node on `loop` (not started). opts->name required; the cookie is copied, or read
 * from ~/.erlang.cookie when opts->cookie is NULL. Stores the node in *out (caller frees it
 * with shoal_node_free after closing). Returns 0, -EINVAL (bad name, no cookie, max_frame out
 * of bounds), -ENOMEM. */
int shoal_node_new(uv_loop_t *loop, const shoal_node_opts *opts, const shoal_node_hooks *hooks,
                   shoal_node **out);

/* Starts listening and registers with the local epmd (asynchronously; hooks->started gets
 * the outcome). Returns 0 or a negative uv error from the listen socket. */
int shoal_node_start(shoal_node *n);

/* Stops the node: every C process exits with reason `shutdown` (linked and monitoring
 * processes are told), queued output is flushed, connections and the epmd registration are
 * closed. hooks->closed runs when all handles are closed; then call shoal_node_free.
 * Safe to call twice. */
void shoal_node_close(shoal_node *n);

/* Frees a closed node (NULL is ignored). The loop itself belongs to the caller. */
void shoal_node_free(shoal_node *n);

/* This node's full name ("alive@host"); never NULL; owned by the node. */
const char *shoal_node_name(const shoal_node *n);
/* The loop the node runs on (to add your own handles). */
uv_loop_t *shoal_node_loop(shoal_node *n);
/* The creation of this incarnation. */
uint32_t shoal_node_creation(const shoal_node *n);
/* The TCP port the node listens on (valid after shoal_node_start), or -1. */
int shoal_node_port(const shoal_node *n);

/* Starts a C process. spec->handle is required; spec is copied (name duplicated). On success
 * stores the process in *out (may be NULL) and returns 0; -EEXIST when the name is taken,
 * -EINVAL, -ENOMEM. The process lives until it exits (shoal_exit, a non-zero return of
 * handle, an exit signal, node close); its memory then belongs to Shoal again. */
int shoal_spawn(shoal_node *n, const shoal_proc_spec *spec, shoal_proc **out);

/* The process's pid / user state / node. p must be live. */
shoal_pid shoal_self(const shoal_proc *p);
void *shoal_state(shoal_proc *p);
shoal_node *shoal_proc_node(shoal_proc *p);

/* Registers p under name (UTF-8, at most 255 characters). -EEXIST if the name is taken or p
 * already has one, -EINVAL on a bad name. */
int shoal_register(shoal_proc *p, const char *name);

/* The live local process registered as name, or NULL. */
shoal_proc *shoal_whereis(shoal_node *n, const char *name);
/* The live local process with this pid, or NULL (also for NULL arguments, remote pids and
 * pids of an earlier incarnation). */
shoal_proc *shoal_proc_by_pid(shoal_node *n, const shoal_pid *pid);

/* Makes p exit with `reason` (term bytes; NULL = normal). Inside p's own callback the exit
 * happens when the callback returns; otherwise at once. Links get EXIT signals, monitors get
 * DOWN with the reason. Returns 0, or -ESRCH if p is already exiting. */
int shoal_exit(shoal_proc *p, const char *reason, size_t len);

/* Sends term to dest. `from` is the sending process or NULL (the node's own system pid is
 * used as sender for registered-name sends). Connects to the destination node when needed;
 * frames queued meanwhile are dropped if the connection fails, as Erlang drops sends.
 * Returns 0 (queued or delivered), -EINVAL on bad term bytes or a bad destination, -ENOMEM. */
int shoal_send(shoal_node *n, shoal_proc *from, const shoal_dest *dest, const char *term,
               size_t len);

/* The result of shoal_call: status 0 and the reply term, or -ETIMEDOUT, or -ESRCH with the
 * exit reason of the callee (noproc, or why it died) in term, or -ENOTCONN (noconnection), or
 * -ECANCELED (the caller process exited or the node closed). term is NULL when absent. */
typedef void (*shoal_call_cb)(shoal_node *n, int status, const char *term, size_t len,
                              void *arg);

/* gen_server:call from C: monitors dest, sends {'$gen_call', {CallerPid, Ref}, Req} and waits
 * up to timeout_ms (0 = no timeout) on the loop. cb runs exactly once, later (never inside
 * this function), unless this function fails. from may be NULL (system pid). Returns 0 or
 * -EINVAL / -ENOMEM. */
int shoal_call(shoal_node *n, shoal_proc *from, const shoal_dest *dest, const char *req,
               size_t len, unsigned timeout_ms, shoal_call_cb cb, void *arg);

/* Answers a gen_server call: sends {Tag, Reply} to the caller. f is msg->reply_to or a copy
 * from shoal_from_dup. Returns 0, -EINVAL on bad term bytes, -ENOMEM. */
int shoal_reply(shoal_node *n, const shoal_from *f, const char *term, size_t len);
/* Copies a reply handle to answer later; NULL on ENOMEM. Free with shoal_from_free. */
shoal_from *shoal_from_dup(const shoal_from *f);
/* Frees a copy made by shoal_from_dup; NULL is ignored. */
void shoal_from_free(shoal_from *f);

/* Links p with pid (remote or local); exit signals then flow both ways. Linking to a pid
 * that does not exist delivers an exit signal `noproc`. Returns 0, -EINVAL, -ENOMEM. */
int shoal_link(shoal_proc *p, const shoal_pid *pid);
/* Monitors dest for p; *id receives the monitor id echoed in the SHOAL_MSG_DOWN message.
 * Returns 0, -EINVAL, -ENOMEM. */
int shoal_monitor(shoal_proc *p, const shoal_dest *dest, uint64_t *id);
/* Removes a monitor (no DOWN follows). Returns 0 or -ENOENT. */
int shoal_demonitor(shoal_proc *p, uint64_t id);

/* Connects to node_name ("alive@host"). cb (may be NULL) runs once with 0 when the
 * connection is up (at once-later if it already is) or a negative error. Returns 0 or
 * -EINVAL / -ENOMEM. */
int shoal_connect(shoal_node *n, const char *node_name,
                  void (*cb)(shoal_node *n, const char *peer, int status, void *arg), void *arg);

/* Fills out[outlen] with the names of connected nodes; returns how many there are (which
 * may exceed outlen). Names are owned by the node and valid until the next loop turn. */
int shoal_nodes(shoal_node *n, const char **out, int outlen);

/* The node name of pid ("alive@host"), or NULL for an index this node never saw. */
const char *shoal_pid_node_name(const shoal_node *n, const shoal_pid *pid);
/* Encodes pid into x (grown as needed). Returns 0, -EINVAL, -ENOMEM. */
int shoal_encode_pid(shoal_node *n, ei_x_buff *x, const shoal_pid *pid);
/* Decodes a pid at buf+*index (advancing it). Returns 0, -EINVAL (not a pid), -E2BIG (node
 * name table full). */
int shoal_decode_pid(shoal_node *n, const char *buf, int *index, shoal_pid *pid);
/* Decodes a destination at buf+*index (advancing it): a pid, a registered name (an atom,
 * this node) or {Name, Node}. Names are copied into name and node (MAXATOMLEN_UTF8 bytes
 * each, NUL-terminated), which *d then points to. Returns 0, -EINVAL (none of these),
 * -E2BIG (node name table full). */
int shoal_decode_dest(shoal_node *n, const char *buf, int *index, shoal_dest *d, char *name,
                      char *node);
/* 1 when a and b are the same pid. */
int shoal_pid_eq(const shoal_pid *a, const shoal_pid *b);

/* Timers on the node's loop. cb runs after ms, then every repeat_ms if non-zero. Stores the
 * timer in *out; stop and free it with shoal_timer_stop (also safe inside cb). Returns 0 or
 * -ENOMEM. Timers still running at shoal_node_close are stopped and freed by the node. */
int shoal_timer_start(shoal_node *n, uint64_t ms, uint64_t repeat_ms,
                      void (*cb)(shoal_timer *t, void *arg), void *arg, shoal_timer **out);
void shoal_timer_stop(shoal_timer *t);

/* Installs the echo example process (docs/cnode.md) registered as `echo`. */
int shoal_echo_spawn(shoal_node *n, shoal_proc **out);

#pragma GCC visibility pop

#ifdef __cplusplus
}
#endif
#endif
