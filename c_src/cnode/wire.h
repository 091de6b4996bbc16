/* wire.h - pure codecs of the distribution wire: byte buffers, the bounds-checked term
 * validator, distribution frames, handshake and epmd messages. No libuv, no sockets: every
 * function here works on bytes only, so CUnit and the fuzzer reach all of it. */
#ifndef SHOAL_WIRE_H
#define SHOAL_WIRE_H

#include <stddef.h>
#include <stdint.h>

/* Distribution flags (kernel/include/dist.hrl). */
#define DFLAG_PUBLISHED 0x01ULL
#define DFLAG_EXTENDED_REFERENCES 0x04ULL
#define DFLAG_DIST_MONITOR 0x08ULL
#define DFLAG_FUN_TAGS 0x10ULL
#define DFLAG_DIST_MONITOR_NAME 0x20ULL
#define DFLAG_NEW_FUN_TAGS 0x80ULL
#define DFLAG_EXTENDED_PIDS_PORTS 0x100ULL
#define DFLAG_EXPORT_PTR_TAG 0x200ULL
#define DFLAG_BIT_BINARIES 0x400ULL
#define DFLAG_NEW_FLOATS 0x800ULL
#define DFLAG_UNICODE_IO 0x1000ULL
#define DFLAG_UTF8_ATOMS 0x10000ULL
#define DFLAG_MAP_TAG 0x20000ULL
#define DFLAG_BIG_CREATION 0x40000ULL
#define DFLAG_HANDSHAKE_23 0x1000000ULL
#define DFLAG_UNLINK_ID 0x2000000ULL
#define DFLAG_MANDATORY_25_DIGEST 0x4000000ULL
#define DFLAG_V4_NC (0x04ULL << 32)

/* What OTP 25 insists on, and what we offer. */
#define WIRE_MANDATORY_25                                                                      \
    (DFLAG_EXTENDED_REFERENCES | DFLAG_FUN_TAGS | DFLAG_EXTENDED_PIDS_PORTS |                  \
     DFLAG_NEW_FUN_TAGS | DFLAG_EXPORT_PTR_TAG | DFLAG_BIT_BINARIES | DFLAG_NEW_FLOATS |       \
     DFLAG_UTF8_ATOMS | DFLAG_MAP_TAG | DFLAG_BIG_CREATION | DFLAG_HANDSHAKE_23)
#define WIRE_OUR_FLAGS                                                                         \
    (WIRE_MANDATORY_25 | DFLAG_DIST_MONITOR | DFLAG_DIST_MONITOR_NAME | DFLAG_UNICODE_IO |     \
     DFLAG_UNLINK_ID | DFLAG_V4_NC | DFLAG_MANDATORY_25_DIGEST)

/* Control message operations. */
enum {
    OP_LINK = 1,
    OP_SEND = 2,
    OP_EXIT = 3,
    OP_UNLINK = 4,
    OP_NODE_LINK = 5,
    OP_REG_SEND = 6,
    OP_GROUP_LEADER = 7,
    OP_EXIT2 = 8,
    OP_SEND_TT = 12,
    OP_EXIT_TT = 13,
    OP_REG_SEND_TT = 16,
    OP_EXIT2_TT = 18,
    OP_MONITOR_P = 19,
    OP_DEMONITOR_P = 20,
    OP_MONITOR_P_EXIT = 21,
    OP_UNLINK_ID = 35,
    OP_UNLINK_ID_ACK = 36
};

/* A growable byte buffer; doubling growth (ei_x_buff grows linearly). */
typedef struct dbuf {
    char *data;
    size_t len; /* bytes used */
    size_t cap; /* bytes allocated */
} dbuf;

int shoal__dbuf_reserve(dbuf *b, size_t extra); /* room for `extra` more bytes; 0 or -ENOMEM */
int shoal__dbuf_append(dbuf *b, const void *p, size_t n);
void shoal__dbuf_free(dbuf *b);
void shoal__put16(char *p, uint32_t v);
void shoal__put32(char *p, uint32_t v);
uint32_t shoal__get16(const char *p);
uint32_t shoal__get32(const char *p);

/* Checks that buf[0..len) starts with one complete, well-formed term in external format
 * (without the version byte): every length in bounds, atoms within Erlang's limits, no atom
 * cache references. Stores its size in *used. Iterative, so nesting depth costs no stack.
 * Returns 0 or -EINVAL. After this, ei_decode_* on the term never reads past *used. */
int shoal__term_check(const char *buf, size_t len, size_t *used);

/* For a term already validated by shoal__term_check: when buf[*idx] starts an atom whose bytes are
 * UTF-8 as they stand (ATOM_UTF8_EXT, SMALL_ATOM_UTF8_EXT, and Latin-1 atoms made of ASCII
 * only), points *s at its bytes (not NUL-terminated), sets *n, advances *idx and returns 0.
 * Otherwise returns -1 and changes nothing: decode it with ei_decode_atom_as. No copy, no
 * conversion: the hot paths (REG_SEND names, '$gen_call', node names of pids) use it. */
int shoal__atom_view(const char *buf, int *idx, const char **s, size_t *n);

/* One distribution frame after the handshake. */
enum { FRAME_TICK = 0, FRAME_PASS = 1 };
typedef struct frame {
    int kind;           /* FRAME_TICK or FRAME_PASS */
    const char *ctrl;   /* control tuple (no version byte) */
    size_t ctrl_len;
    const char *msg;    /* message term or NULL */
    size_t msg_len;
    size_t size;        /* bytes the frame took, length prefix included */
} frame;

/* Parses the frame at buf[0..len). Returns 1 with *f filled when a whole frame is there;
 * 0 when more bytes are needed (*need = bytes the whole frame takes, or 4 when even the
 * length is incomplete); -E2BIG for a frame whose length (after the prefix) is over max_frame,
 * with that length in *need; -EINVAL when malformed (not a pass-through frame, bad or
 * trailing terms, control not a tuple). */
int shoal__frame_parse(const char *buf, size_t len, size_t max_frame, frame *f, size_t *need);

/* Appends a tick (4 zero bytes). */
int shoal__frame_tick(dbuf *b);
/* Begins a pass-through frame: reserves the length, writes 'p' and 131. Returns the mark to
 * pass to shoal__frame_end, or a negative error. Encode the control tuple next, then optionally
 * shoal__frame_msg + the message bytes. */
long shoal__frame_begin(dbuf *b);
/* Appends 131 + term (a leading 131 in term is skipped). */
int shoal__frame_msg(dbuf *b, const char *term, size_t len);
void shoal__frame_end(dbuf *b, long mark);

/* Handshake (version 6, OTP 23+). Messages travel with a 2-byte length prefix. */
typedef struct hs_name {
    uint64_t flags;
    uint32_t creation;
    uint32_t challenge; /* challenge messages only */
    char name[1024];    /* NUL-terminated node name */
} hs_name;

/* Returns 1 with the message body in *body, its length in *blen and *used = bytes consumed, 0 if
 * incomplete, -EINVAL if the length is zero. */
int shoal__hs_frame(const char *buf, size_t len, const char **body, size_t *blen, size_t *used);
/* Parses a send_name body, or with with_challenge a challenge body. */
int shoal__hs_parse_name(const char *body, size_t len, int with_challenge, hs_name *out);
int shoal__hs_put_name(dbuf *b, uint64_t flags, uint32_t creation, const char *name);
int shoal__hs_put_challenge(dbuf *b, uint64_t flags, uint32_t challenge, uint32_t creation,
                            const char *name);
int shoal__hs_put_status(dbuf *b, const char *status);
int shoal__hs_put_reply(dbuf *b, uint32_t challenge, const unsigned char digest[16]);
int shoal__hs_put_ack(dbuf *b, const unsigned char digest[16]);
/* md5(cookie ++ decimal(challenge)) */
void shoal__hs_digest(const char *cookie, uint32_t challenge, unsigned char out[16]);

/* epmd. */
int shoal__epmd_put_alive2(dbuf *b, int port, int hidden, const char *alive);
/* Parses an ALIVE2 answer: 1 when complete (*creation set; *result 0 = ok), 0 incomplete,
 * -EINVAL garbage. */
int shoal__epmd_parse_alive2(const char *buf, size_t len, int *result, uint32_t *creation);
int shoal__epmd_put_port_please(dbuf *b, const char *alive);
/* Parses a PORT2 answer: 1 complete (*port set, or -ENOENT when epmd does not know the
 * name), 0 incomplete, -EINVAL garbage. */
int shoal__epmd_parse_port2(const char *buf, size_t len, int *port);

#endif
