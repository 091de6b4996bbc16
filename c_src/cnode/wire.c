/* wire.c - the byte-level codecs of the distribution protocol: a growable buffer, a
 * bounds-checked validator for external-format terms (ei's decoders trust their input, so
 * every byte from the network passes through shoal__term_check first), the frame reader/writer
 * used after the handshake, and the handshake and epmd messages. Pure functions on bytes. */
#include "wire.h"
#include "md5.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int shoal__dbuf_reserve(dbuf *b, size_t extra)
{
    if (b->cap - b->len >= extra)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < extra) {
        if (cap > SIZE_MAX / 2)
            return -ENOMEM;
        cap *= 2;
    }
    char *p = realloc(b->data, cap);
    if (!p)
        return -ENOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

int shoal__dbuf_append(dbuf *b, const void *p, size_t n)
{
    int rc = shoal__dbuf_reserve(b, n);
    if (rc)
        return rc;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

void shoal__dbuf_free(dbuf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

void shoal__put16(char *p, uint32_t v)
{
    p[0] = (char)(v >> 8);
    p[1] = (char)v;
}

void shoal__put32(char *p, uint32_t v)
{
    p[0] = (char)(v >> 24);
    p[1] = (char)(v >> 16);
    p[2] = (char)(v >> 8);
    p[3] = (char)v;
}

uint32_t shoal__get16(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    return (uint32_t)u[0] << 8 | u[1];
}

uint32_t shoal__get32(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3];
}

/* ---- term validation ---------------------------------------------------------------- */

/* Skips an atom at buf[*pos]; Erlang atoms hold at most 255 characters (1020 UTF-8 bytes). */
static int skip_atom(const char *buf, size_t len, size_t *pos)
{
    size_t p = *pos, n;
    if (p >= len)
        return -EINVAL;
    unsigned char tag = (unsigned char)buf[p++];
    switch (tag) {
    case 'd': /* ATOM_EXT */
    case 'v': /* ATOM_UTF8_EXT */
        if (len - p < 2)
            return -EINVAL;
        n = shoal__get16(buf + p);
        p += 2;
        if (n > (tag == 'd' ? 255u : 1020u))
            return -EINVAL;
        break;
    case 's': /* SMALL_ATOM_EXT */
    case 'w': /* SMALL_ATOM_UTF8_EXT */
        if (len - p < 1)
            return -EINVAL;
        n = (unsigned char)buf[p++];
        break;
    default:
        return -EINVAL;
    }
    if (len - p < n)
        return -EINVAL;
    *pos = p + n;
    return 0;
}

/* Ensures `n` more bytes exist at pos. */
#define NEED(n)                                                                                \
    do {                                                                                       \
        if (len - pos < (size_t)(n))                                                           \
            return -EINVAL;                                                                    \
    } while (0)

int shoal__term_check(const char *buf, size_t len, size_t *used)
{
    size_t pos = 0;
    uint64_t pending = 1; /* terms still to read; each takes at least one byte */
    while (pending > 0) {
        if (pending > len - pos)
            return -EINVAL;
        pending--;
        NEED(1);
        unsigned char tag = (unsigned char)buf[pos++];
        uint64_t n;
        switch (tag) {
        case 'a': /* SMALL_INTEGER_EXT */
            NEED(1);
            pos += 1;
            break;
        case 'b': /* INTEGER_EXT */
            NEED(4);
            pos += 4;
            break;
        case 'F': /* NEW_FLOAT_EXT */
            NEED(8);
            pos += 8;
            break;
        case 'c': /* FLOAT_EXT */
            /* 31 bytes of "%.20e" padded with NULs. ei decodes it with sscanf, which
             * runs strlen over the bytes: without a NUL inside them it reads past the
             * frame (found by fuzz_frame), so such a float is refused here. */
            NEED(31);
            if (!memchr(buf + pos, 0, 31))
                return -EINVAL;
            pos += 31;
            break;
        case 'd':
        case 's':
        case 'v':
        case 'w':
            pos--;
            if (skip_atom(buf, len, &pos))
                return -EINVAL;
            break;
        case 'X': /* NEW_PID_EXT */
        case 'g': /* PID_EXT */
            if (skip_atom(buf, len, &pos))
                return -EINVAL;
            n = tag == 'X' ? 12 : 9;
            NEED(n);
            pos += n;
            break;
        case 'Y': /* NEW_PORT_EXT */
        case 'f': /* PORT_EXT */
        case 'x': /* V4_PORT_EXT */
            if (skip_atom(buf, len, &pos))
                return -EINVAL;
            n = tag == 'Y' ? 8 : tag == 'f' ? 5 : 12;
            NEED(n);
            pos += n;
            break;
        case 'e': /* REFERENCE_EXT */
            if (skip_atom(buf, len, &pos))
                return -EINVAL;
            NEED(5);
            pos += 5;
            break;
        case 'Z': /* NEWER_REFERENCE_EXT */
        case 'r': /* NEW_REFERENCE_EXT */
            NEED(2);
            n = shoal__get16(buf + pos);
            pos += 2;
            if (n < 1 || n > 5)
                return -EINVAL;
            if (skip_atom(buf, len, &pos))
                return -EINVAL;
            n = (tag == 'Z' ? 4 : 1) + 4 * n;
            NEED(n);
            pos += n;
            break;
        case 'h': /* SMALL_TUPLE_EXT */
            NEED(1);
            pending += (unsigned char)buf[pos++];
            break;
        case 'i': /* LARGE_TUPLE_EXT */
            NEED(4);
            pending += shoal__get32(buf + pos);
            pos += 4;
            break;
        case 't': /* MAP_EXT */
            NEED(4);
            pending += 2 * (uint64_t)shoal__get32(buf + pos);
            pos += 4;
            break;
        case 'j': /* NIL_EXT */
            break;
        case 'k': /* STRING_EXT */
            NEED(2);
            n = shoal__get16(buf + pos);
            pos += 2;
            NEED(n);
            pos += n;
            break;
        case 'l': /* LIST_EXT: elements, then the tail */
            NEED(4);
            pending += (uint64_t)shoal__get32(buf + pos) + 1;
            pos += 4;
            break;
        case 'm': /* BINARY_EXT */
            NEED(4);
            n = shoal__get32(buf + pos);
            pos += 4;
            NEED(n);
            pos += n;
            break;
        case 'M': { /* BIT_BINARY_EXT */
            NEED(5);
            n = shoal__get32(buf + pos);
            unsigned bits = (unsigned char)buf[pos + 4];
            pos += 5;
            if (n == 0 || bits < 1 || bits > 8)
                return -EINVAL;
            NEED(n);
            pos += n;
            break;
        }
        case 'n': /* SMALL_BIG_EXT */
            NEED(2);
            n = (unsigned char)buf[pos];
            if ((unsigned char)buf[pos + 1] > 1)
                return -EINVAL;
            pos += 2;
            NEED(n);
            pos += n;
            break;
        case 'o': /* LARGE_BIG_EXT */
            NEED(5);
            n = shoal__get32(buf + pos);
            if ((unsigned char)buf[pos + 4] > 1)
                return -EINVAL;
            pos += 5;
            NEED(n);
            pos += n;
            break;
        case 'q': /* EXPORT_EXT: module, function, arity */
            pending += 3;
            break;
        case 'p': { /* NEW_FUN_EXT */
            size_t start = pos - 1;
            NEED(4 + 1 + 16 + 4 + 4);
            n = shoal__get32(buf + pos); /* size, counting itself but not the tag */
            uint32_t nfree = shoal__get32(buf + pos + 25);
            if (n < 29 || n > len - start - 1)
                return -EINVAL;
            pos += 29;
            pending += 4 + (uint64_t)nfree; /* module, old index, old uniq, pid, free vars */
            break;
        }
        default: /* atom cache refs, old funs, LOCAL_EXT, garbage */
            return -EINVAL;
        }
    }
    *used = pos;
    return 0;
}

int shoal__atom_view(const char *buf, int *idx, const char **s, size_t *n)
{
    const unsigned char *b = (const unsigned char *)buf + *idx;
    size_t len, hdr;
    switch (b[0]) {
    case 'w': /* SMALL_ATOM_UTF8_EXT */
    case 's': /* SMALL_ATOM_EXT */
        len = b[1];
        hdr = 2;
        break;
    case 'v': /* ATOM_UTF8_EXT */
    case 'd': /* ATOM_EXT */
        len = (size_t)b[1] << 8 | b[2];
        hdr = 3;
        break;
    default:
        return -1;
    }
    if (b[0] == 's' || b[0] == 'd')
        for (size_t i = 0; i < len; i++)
            if (b[hdr + i] & 0x80)
                return -1; /* Latin-1 beyond ASCII: needs conversion */
    *s = (const char *)b + hdr;
    *n = len;
    *idx += (int)(hdr + len);
    return 0;
}

/* ---- frames --------------------------------------------------------------------------- */

int shoal__frame_parse(const char *buf, size_t len, size_t max_frame, frame *f, size_t *need)
{
    if (len < 4) {
        *need = 4;
        return 0;
    }
    size_t flen = shoal__get32(buf);
    if (flen > max_frame) {
        *need = flen;
        return -E2BIG;
    }
    if (len - 4 < flen) {
        *need = 4 + flen;
        return 0;
    }
    memset(f, 0, sizeof *f);
    f->size = 4 + flen;
    if (flen == 0) {
        f->kind = FRAME_TICK;
        return 1;
    }
    const char *p = buf + 4;
    if (flen < 3 || p[0] != 'p' || (unsigned char)p[1] != 131)
        return -EINVAL;
    size_t rest = flen - 2, used;
    p += 2;
    if (shoal__term_check(p, rest, &used) || (p[0] != 'h' && p[0] != 'i'))
        return -EINVAL;
    f->kind = FRAME_PASS;
    f->ctrl = p;
    f->ctrl_len = used;
    p += used;
    rest -= used;
    if (rest == 0)
        return 1;
    if (rest < 2 || (unsigned char)p[0] != 131)
        return -EINVAL;
    p++;
    rest--;
    if (shoal__term_check(p, rest, &used) || used != rest)
        return -EINVAL;
    f->msg = p;
    f->msg_len = used;
    return 1;
}

int shoal__frame_tick(dbuf *b)
{
    static const char zero[4] = {0, 0, 0, 0};
    return shoal__dbuf_append(b, zero, 4);
}

long shoal__frame_begin(dbuf *b)
{
    int rc = shoal__dbuf_reserve(b, 6);
    if (rc)
        return rc;
    long mark = (long)b->len;
    b->len += 4;
    b->data[b->len++] = 'p';
    b->data[b->len++] = (char)131;
    return mark;
}

int shoal__frame_msg(dbuf *b, const char *term, size_t len)
{
    if (len > 0 && (unsigned char)term[0] == 131) {
        term++;
        len--;
    }
    int rc = shoal__dbuf_reserve(b, len + 1);
    if (rc)
        return rc;
    b->data[b->len++] = (char)131;
    memcpy(b->data + b->len, term, len);
    b->len += len;
    return 0;
}

void shoal__frame_end(dbuf *b, long mark)
{
    shoal__put32(b->data + mark, (uint32_t)(b->len - (size_t)mark - 4));
}

/* ---- handshake ------------------------------------------------------------------------ */

int shoal__hs_frame(const char *buf, size_t len, const char **body, size_t *blen, size_t *used)
{
    if (len < 2)
        return 0;
    size_t n = shoal__get16(buf);
    if (n == 0)
        return -EINVAL;
    if (len - 2 < n)
        return 0;
    *body = buf + 2;
    *blen = n;
    *used = 2 + n;
    return 1;
}

int shoal__hs_parse_name(const char *body, size_t len, int with_challenge, hs_name *out)
{
    size_t fixed = 1 + 8 + (with_challenge ? 4 : 0) + 4 + 2;
    if (len < fixed || body[0] != 'N')
        return -EINVAL;
    const char *p = body + 1;
    out->flags = (uint64_t)shoal__get32(p) << 32 | shoal__get32(p + 4);
    p += 8;
    out->challenge = 0;
    if (with_challenge) {
        out->challenge = shoal__get32(p);
        p += 4;
    }
    out->creation = shoal__get32(p);
    size_t nlen = shoal__get16(p + 4);
    p += 6;
    if (nlen == 0 || nlen >= sizeof out->name || len - fixed != nlen)
        return -EINVAL;
    memcpy(out->name, p, nlen);
    out->name[nlen] = 0;
    if (memchr(out->name, 0, nlen) || !strchr(out->name, '@'))
        return -EINVAL;
    return 0;
}

static int hs_put(dbuf *b, const char *body, size_t n)
{
    int rc = shoal__dbuf_reserve(b, n + 2);
    if (rc)
        return rc;
    shoal__put16(b->data + b->len, (uint32_t)n);
    memcpy(b->data + b->len + 2, body, n);
    b->len += n + 2;
    return 0;
}

static int put_name_msg(dbuf *b, uint64_t flags, int with_ch, uint32_t ch, uint32_t creation,
                        const char *name)
{
    char m[1 + 8 + 4 + 4 + 2 + 1024];
    size_t nlen = strlen(name), i = 0;
    if (nlen == 0 || nlen > 1023)
        return -EINVAL;
    m[i++] = 'N';
    shoal__put32(m + i, (uint32_t)(flags >> 32));
    shoal__put32(m + i + 4, (uint32_t)flags);
    i += 8;
    if (with_ch) {
        shoal__put32(m + i, ch);
        i += 4;
    }
    shoal__put32(m + i, creation);
    shoal__put16(m + i + 4, (uint32_t)nlen);
    i += 6;
    memcpy(m + i, name, nlen);
    return hs_put(b, m, i + nlen);
}

int shoal__hs_put_name(dbuf *b, uint64_t flags, uint32_t creation, const char *name)
{
    return put_name_msg(b, flags, 0, 0, creation, name);
}

int shoal__hs_put_challenge(dbuf *b, uint64_t flags, uint32_t challenge, uint32_t creation,
                            const char *name)
{
    return put_name_msg(b, flags, 1, challenge, creation, name);
}

int shoal__hs_put_status(dbuf *b, const char *status)
{
    char m[64];
    size_t n = strlen(status);
    if (n > sizeof m - 1)
        return -EINVAL;
    m[0] = 's';
    memcpy(m + 1, status, n);
    return hs_put(b, m, n + 1);
}

int shoal__hs_put_reply(dbuf *b, uint32_t challenge, const unsigned char digest[16])
{
    char m[21];
    m[0] = 'r';
    shoal__put32(m + 1, challenge);
    memcpy(m + 5, digest, 16);
    return hs_put(b, m, sizeof m);
}

int shoal__hs_put_ack(dbuf *b, const unsigned char digest[16])
{
    char m[17];
    m[0] = 'a';
    memcpy(m + 1, digest, 16);
    return hs_put(b, m, sizeof m);
}

void shoal__hs_digest(const char *cookie, uint32_t challenge, unsigned char out[16])
{
    char num[16];
    int n = snprintf(num, sizeof num, "%u", (unsigned)challenge);
    md5_ctx c;
    shoal__md5_init(&c);
    shoal__md5_update(&c, cookie, strlen(cookie));
    shoal__md5_update(&c, num, (size_t)n);
    shoal__md5_final(&c, out);
}

/* ---- epmd ----------------------------------------------------------------------------- */

int shoal__epmd_put_alive2(dbuf *b, int port, int hidden, const char *alive)
{
    size_t n = strlen(alive);
    if (n == 0 || n > 255)
        return -EINVAL;
    size_t body = 1 + 2 + 1 + 1 + 2 + 2 + 2 + n + 2;
    int rc = shoal__dbuf_reserve(b, body + 2);
    if (rc)
        return rc;
    char *p = b->data + b->len;
    shoal__put16(p, (uint32_t)body);
    p[2] = 120; /* ALIVE2_REQ */
    shoal__put16(p + 3, (uint32_t)port);
    p[5] = hidden ? 72 : 77;
    p[6] = 0; /* tcp/ip-v4 */
    shoal__put16(p + 7, 6);
    shoal__put16(p + 9, 6);
    shoal__put16(p + 11, (uint32_t)n);
    memcpy(p + 13, alive, n);
    shoal__put16(p + 13 + n, 0);
    b->len += body + 2;
    return 0;
}

int shoal__epmd_parse_alive2(const char *buf, size_t len, int *result, uint32_t *creation)
{
    if (len < 1)
        return 0;
    unsigned char tag = (unsigned char)buf[0];
    if (tag == 118) { /* ALIVE2_X_RESP: result, creation:32 */
        if (len < 6)
            return 0;
        *result = (unsigned char)buf[1];
        *creation = shoal__get32(buf + 2);
        return 1;
    }
    if (tag == 121) { /* ALIVE2_RESP: result, creation:16 */
        if (len < 4)
            return 0;
        *result = (unsigned char)buf[1];
        *creation = shoal__get16(buf + 2);
        return 1;
    }
    return -EINVAL;
}

int shoal__epmd_put_port_please(dbuf *b, const char *alive)
{
    size_t n = strlen(alive);
    if (n == 0 || n > 255)
        return -EINVAL;
    int rc = shoal__dbuf_reserve(b, n + 3);
    if (rc)
        return rc;
    shoal__put16(b->data + b->len, (uint32_t)(n + 1));
    b->data[b->len + 2] = 122; /* PORT_PLEASE2_REQ */
    memcpy(b->data + b->len + 3, alive, n);
    b->len += n + 3;
    return 0;
}

int shoal__epmd_parse_port2(const char *buf, size_t len, int *port)
{
    if (len < 2)
        return 0;
    if ((unsigned char)buf[0] != 119) /* PORT2_RESP */
        return -EINVAL;
    if (buf[1] != 0) {
        *port = -ENOENT;
        return 1;
    }
    if (len < 4)
        return 0;
    *port = (int)shoal__get16(buf + 2);
    return 1;
}
