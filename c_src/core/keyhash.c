/* keyhash.c - canonical key bytes and the key hash (see keyhash.h for the contract).
 *
 * Every side of Shoal (NIF, C node, pure-Erlang reference shoal_keyhash.erl) must agree on
 * which bytes stand for a key, because the hash of those bytes decides where a worker lives.
 * Erlang may hand us any of the historical external-format spellings of the same term (ATOM_EXT
 * or SMALL_ATOM_UTF8_EXT, STRING_EXT or LIST_EXT, INTEGER_EXT or a tiny bignum, PID_EXT from an
 * old node...), so keyhash_normalize parses any valid ETF and re-emits the single canonical
 * spelling. The input is untrusted (it can come off the wire): every read is bounds-checked, the
 * output is capped at KEYHASH_MAX_KEY and recursion at KEYHASH_MAX_DEPTH. Where OTP 25's
 * binary_to_term/1 rejects an encoding we reject it too, so canonical bytes always decode. */
#include "keyhash.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "shoal_err.h"

/* ETF tags (erts/emulator/beam/external.h). */
enum {
    VERSION_MAGIC = 131,
    COMPRESSED = 80,
    NEW_FLOAT_EXT = 70,
    BIT_BINARY_EXT = 77,
    NEWER_REFERENCE_EXT = 90,
    NEW_PID_EXT = 88,
    NEW_PORT_EXT = 89,
    SMALL_INTEGER_EXT = 97,
    INTEGER_EXT = 98,
    FLOAT_EXT = 99,
    ATOM_EXT = 100,
    REFERENCE_EXT = 101,
    PORT_EXT = 102,
    PID_EXT = 103,
    SMALL_TUPLE_EXT = 104,
    LARGE_TUPLE_EXT = 105,
    NIL_EXT = 106,
    STRING_EXT = 107,
    LIST_EXT = 108,
    BINARY_EXT = 109,
    SMALL_BIG_EXT = 110,
    LARGE_BIG_EXT = 111,
    NEW_FUN_EXT = 112,
    EXPORT_EXT = 113,
    NEW_REFERENCE_EXT = 114,
    SMALL_ATOM_EXT = 115,
    MAP_EXT = 116,
    FUN_EXT = 117,
    ATOM_UTF8_EXT = 118,
    SMALL_ATOM_UTF8_EXT = 119,
    V4_PORT_EXT = 120
};

/* binary_to_term limits in OTP 25: atoms hold at most 255 characters, references at most 5
 * words, and the first word of a NEW_REFERENCE_EXT/REFERENCE_EXT is an 18-bit number. */
#define MAX_ATOM_CHARS 255
#define MAX_REF_WORDS 5
#define OLD_REF_FIRST_LIMIT (1u << 18)
#define OLD_FLOAT_LEN 31

/* ---- hash ----------------------------------------------------------------------------- */

#define K_SEED 0x6A09E667F3BCC908ULL
#define K_GOLD 0x9E3779B97F4A7C15ULL
#define K_MIX 0xD6E8FEB86659FD93ULL

static uint64_t rotl64(uint64_t x, unsigned r)
{
    return (x << r) | (x >> (64 - r));
}

static uint64_t mix(uint64_t w)
{
    w ^= w >> 32;
    w *= K_MIX;
    w ^= w >> 32;
    return w;
}

/* Little-endian load of n <= 8 bytes, high bytes zero. Assembled byte by byte so the result
 * does not depend on the host's byte order; memcpy first keeps the read unaligned-safe. */
static uint64_t load_le(const unsigned char *p, size_t n)
{
    unsigned char b[8] = {0};
    uint64_t w = 0;
    memcpy(b, p, n);
    for (int i = 7; i >= 0; i--)
        w = (w << 8) | b[i];
    return w;
}

uint64_t keyhash_hash64(const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t h = K_SEED ^ ((uint64_t)len * K_GOLD);
    size_t full = len / 8, r = len % 8;

    for (size_t i = 0; i < full; i++)
        h = rotl64(h ^ mix(load_le(p + 8 * i, 8)), 29) * K_GOLD;
    if (r > 0) h = rotl64(h ^ mix(load_le(p + 8 * full, r)), 29) * K_GOLD;
    return keyhash_mix64(h);
}

/* ---- bounded reader and counting writer --------------------------------------------- */

typedef struct reader {
    const unsigned char *p; /* input bytes */
    size_t len;             /* input length */
    size_t pos;             /* next byte to read */
} reader;

/* The writer keeps counting past `cap` without storing, so a too-small buffer still tells
 * the caller how much it needs. `pos` never exceeds KEYHASH_MAX_KEY, so it cannot overflow. */
typedef struct writer {
    unsigned char *out; /* destination, may be NULL when cap == 0 */
    size_t cap;         /* bytes we may store */
    size_t pos;         /* bytes produced so far (stored or not) */
} writer;

static int avail(const reader *r, size_t n)
{
    return n <= r->len - r->pos;
}

static int get_u8(reader *r, uint32_t *v)
{
    if (!avail(r, 1)) return SHOAL_EINVAL;
    *v = r->p[r->pos++];
    return 0;
}

static int get_u16(reader *r, uint32_t *v)
{
    if (!avail(r, 2)) return SHOAL_EINVAL;
    *v = (uint32_t)r->p[r->pos] << 8 | r->p[r->pos + 1];
    r->pos += 2;
    return 0;
}

static int get_u32(reader *r, uint32_t *v)
{
    if (!avail(r, 4)) return SHOAL_EINVAL;
    const unsigned char *b = r->p + r->pos;
    *v = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
    r->pos += 4;
    return 0;
}

static int get_u64(reader *r, uint64_t *v)
{
    uint32_t hi, lo;
    int rc;
    if ((rc = get_u32(r, &hi)) || (rc = get_u32(r, &lo))) return rc;
    *v = (uint64_t)hi << 32 | lo;
    return 0;
}

static int put(writer *w, const void *src, size_t n)
{
    if (n > KEYHASH_MAX_KEY - w->pos) return SHOAL_E2BIG;
    if (w->pos + n <= w->cap && n > 0) memcpy(w->out + w->pos, src, n);
    w->pos += n;
    return 0;
}

static int put_u8(writer *w, uint32_t v)
{
    unsigned char b = (unsigned char)v;
    return put(w, &b, 1);
}

static int put_u16(writer *w, uint32_t v)
{
    unsigned char b[2] = {(unsigned char)(v >> 8), (unsigned char)v};
    return put(w, b, 2);
}

static void store_u32(unsigned char *b, uint32_t v)
{
    b[0] = (unsigned char)(v >> 24);
    b[1] = (unsigned char)(v >> 16);
    b[2] = (unsigned char)(v >> 8);
    b[3] = (unsigned char)v;
}

static int put_u32(writer *w, uint32_t v)
{
    unsigned char b[4];
    store_u32(b, v);
    return put(w, b, 4);
}

static int put_u64(writer *w, uint64_t v)
{
    int rc = put_u32(w, (uint32_t)(v >> 32));
    return rc ? rc : put_u32(w, (uint32_t)v);
}

/* Back-patch a length written earlier as a placeholder (only if that spot was stored). */
static void patch_u32(writer *w, size_t at, uint32_t v)
{
    if (at + 4 <= w->cap) store_u32(w->out + at, v);
}

/* Copy n input bytes to the output unchanged. */
static int copy_bytes(reader *r, writer *w, size_t n)
{
    if (!avail(r, n)) return SHOAL_EINVAL;
    int rc = put(w, r->p + r->pos, n);
    r->pos += n;
    return rc;
}

/* ---- scalars ------------------------------------------------------------------------ */

static int emit_int(writer *w, int64_t v)
{
    int rc;
    if (v >= 0 && v <= 255) {
        if ((rc = put_u8(w, SMALL_INTEGER_EXT))) return rc;
        return put_u8(w, (uint32_t)v);
    }
    if ((rc = put_u8(w, INTEGER_EXT))) return rc;
    return put_u32(w, (uint32_t)v); /* two's complement of an int32 */
}

/* A bignum of n magnitude bytes (little-endian) at r's position. Strip high zero bytes and
 * fall back to the small forms whenever the value fits them, as term_to_binary does. Any
 * non-zero sign byte means negative (binary_to_term reads it that way). */
static int norm_big(reader *r, writer *w, uint32_t n)
{
    uint32_t sign;
    int rc;
    if ((rc = get_u8(r, &sign))) return rc;
    if (!avail(r, n)) return SHOAL_EINVAL;
    const unsigned char *mag = r->p + r->pos;
    r->pos += n;
    while (n > 0 && mag[n - 1] == 0)
        n--;
    if (n <= 4) {
        uint64_t m = 0;
        for (uint32_t i = n; i-- > 0;)
            m = m << 8 | mag[i];
        if (sign == 0 && m <= INT32_MAX) return emit_int(w, (int64_t)m);
        if (sign != 0 && m <= (uint64_t)INT32_MAX + 1) return emit_int(w, -(int64_t)m);
    }
    if (n <= 255) {
        if ((rc = put_u8(w, SMALL_BIG_EXT)) || (rc = put_u8(w, n))) return rc;
    } else {
        if ((rc = put_u8(w, LARGE_BIG_EXT)) || (rc = put_u32(w, n))) return rc;
    }
    if ((rc = put_u8(w, sign != 0))) return rc;
    return put(w, mag, n);
}

static int emit_double(writer *w, double d)
{
    uint64_t bits;
    int rc;
    if (!isfinite(d)) /* Erlang has no NaN or infinity */
        return SHOAL_EINVAL;
    if (d == 0.0) d = 0.0; /* -0.0 and 0.0 are the same key */
    memcpy(&bits, &d, sizeof bits);
    if ((rc = put_u8(w, NEW_FLOAT_EXT))) return rc;
    return put_u64(w, bits);
}

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* FLOAT_EXT: a 31-byte NUL-terminated "%.20e" string. Accept exactly the shapes OTP 25
 * accepts ([+-]digits[.,]digits[eE[+-]digits], terminated within the 31 bytes) so we do
 * not invent keys that binary_to_term would refuse. */
static int norm_old_float(reader *r, writer *w)
{
    char buf[OLD_FLOAT_LEN + 1];
    char *end;
    size_t i = 0;

    if (!avail(r, OLD_FLOAT_LEN)) return SHOAL_EINVAL;
    memcpy(buf, r->p + r->pos, OLD_FLOAT_LEN);
    buf[OLD_FLOAT_LEN] = '\0';
    r->pos += OLD_FLOAT_LEN;
    if (memchr(buf, '\0', OLD_FLOAT_LEN) == NULL) return SHOAL_EINVAL;

    if (buf[i] == '+' || buf[i] == '-') i++;
    if (!is_digit(buf[i])) return SHOAL_EINVAL;
    while (is_digit(buf[i]))
        i++;
    if (buf[i] != '.' && buf[i] != ',') return SHOAL_EINVAL;
    buf[i++] = '.';
    if (!is_digit(buf[i])) return SHOAL_EINVAL;
    while (is_digit(buf[i]))
        i++;
    if (buf[i] == 'e' || buf[i] == 'E') {
        i++;
        if (buf[i] == '+' || buf[i] == '-') i++;
        if (!is_digit(buf[i])) return SHOAL_EINVAL;
        while (is_digit(buf[i]))
            i++;
    }
    if (buf[i] != '\0') return SHOAL_EINVAL;
    double d = strtod(buf, &end);
    if (end != buf + i) return SHOAL_EINVAL;
    return emit_double(w, d);
}

/* Length of the UTF-8 sequence starting at s[0] (at most n bytes available), or 0 when it
 * is malformed: overlong forms, surrogates and code points above U+10FFFF are refused. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    unsigned char lo = 0x80, hi = 0xBF;
    size_t len;

    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else
        return 0;
    if (len > n || s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xBF) return 0;
    return len;
}

static int put_atom_header(writer *w, size_t utf8_len)
{
    int rc;
    if (utf8_len <= 255) {
        if ((rc = put_u8(w, SMALL_ATOM_UTF8_EXT))) return rc;
        return put_u8(w, (uint32_t)utf8_len);
    }
    if ((rc = put_u8(w, ATOM_UTF8_EXT))) return rc;
    return put_u16(w, (uint32_t)utf8_len);
}

/* An atom in any of the four atom encodings; the tag has been read. */
static int norm_atom_body(reader *r, writer *w, uint32_t tag)
{
    uint32_t len;
    int rc;

    if (tag == ATOM_EXT || tag == ATOM_UTF8_EXT)
        rc = get_u16(r, &len);
    else
        rc = get_u8(r, &len);
    if (rc) return rc;
    if (!avail(r, len)) return SHOAL_EINVAL;
    const unsigned char *s = r->p + r->pos;
    r->pos += len;

    if (tag == ATOM_EXT || tag == SMALL_ATOM_EXT) {
        /* Latin-1: one character per byte; bytes >= 0x80 become two UTF-8 bytes. */
        size_t out_len = len;
        if (len > MAX_ATOM_CHARS) return SHOAL_EINVAL;
        for (uint32_t i = 0; i < len; i++)
            out_len += s[i] >= 0x80;
        if ((rc = put_atom_header(w, out_len))) return rc;
        for (uint32_t i = 0; i < len; i++) {
            if (s[i] < 0x80)
                rc = put_u8(w, s[i]);
            else {
                unsigned char b[2] = {(unsigned char)(0xC0 | s[i] >> 6),
                                      (unsigned char)(0x80 | (s[i] & 0x3F))};
                rc = put(w, b, 2);
            }
            if (rc) return rc;
        }
        return 0;
    }

    size_t chars = 0;
    for (size_t i = 0; i < len;) {
        size_t n = utf8_seq(s + i, len - i);
        if (n == 0) return SHOAL_EINVAL;
        i += n;
        chars++;
    }
    if (chars > MAX_ATOM_CHARS) return SHOAL_EINVAL;
    if ((rc = put_atom_header(w, len))) return rc;
    return put(w, s, len);
}

/* The node name inside a pid, port or reference must be an atom. */
static int norm_node(reader *r, writer *w)
{
    uint32_t tag;
    int rc;
    if ((rc = get_u8(r, &tag))) return rc;
    if (tag != ATOM_EXT && tag != SMALL_ATOM_EXT && tag != ATOM_UTF8_EXT &&
        tag != SMALL_ATOM_UTF8_EXT)
        return SHOAL_EINVAL;
    return norm_atom_body(r, w, tag);
}

static int norm_pid(reader *r, writer *w, uint32_t tag)
{
    uint32_t id, serial, creation;
    int rc;
    if ((rc = put_u8(w, NEW_PID_EXT)) || (rc = norm_node(r, w)) || (rc = get_u32(r, &id)) ||
        (rc = get_u32(r, &serial)))
        return rc;
    rc = tag == PID_EXT ? get_u8(r, &creation) : get_u32(r, &creation);
    if (rc || (rc = put_u32(w, id)) || (rc = put_u32(w, serial))) return rc;
    return put_u32(w, creation);
}

static int norm_port(reader *r, writer *w, uint32_t tag)
{
    uint64_t id;
    uint32_t id32, creation;
    int rc;
    if ((rc = put_u8(w, V4_PORT_EXT)) || (rc = norm_node(r, w))) return rc;
    if (tag == V4_PORT_EXT)
        rc = get_u64(r, &id);
    else {
        rc = get_u32(r, &id32);
        id = id32;
    }
    if (rc) return rc;
    rc = tag == PORT_EXT ? get_u8(r, &creation) : get_u32(r, &creation);
    if (rc || (rc = put_u64(w, id))) return rc;
    return put_u32(w, creation);
}

static int norm_ref(reader *r, writer *w, uint32_t tag)
{
    uint32_t n = 1, creation, word;
    int rc;
    if (tag != REFERENCE_EXT && (rc = get_u16(r, &n))) return rc;
    /* OTP 25 refuses more than 5 words, and an empty NEW_REFERENCE_EXT. */
    if (n > MAX_REF_WORDS || (n == 0 && tag == NEW_REFERENCE_EXT)) return SHOAL_EINVAL;
    if ((rc = put_u8(w, NEWER_REFERENCE_EXT)) || (rc = put_u16(w, n)) || (rc = norm_node(r, w)))
        return rc;
    if (tag == REFERENCE_EXT) { /* node, id:u32, creation:u8 */
        if ((rc = get_u32(r, &word)) || (rc = get_u8(r, &creation))) return rc;
        if (word >= OLD_REF_FIRST_LIMIT) return SHOAL_EINVAL;
        if ((rc = put_u32(w, creation))) return rc;
        return put_u32(w, word);
    }
    rc = tag == NEW_REFERENCE_EXT ? get_u8(r, &creation) : get_u32(r, &creation);
    if (rc || (rc = put_u32(w, creation))) return rc;
    for (uint32_t i = 0; i < n; i++) {
        if ((rc = get_u32(r, &word))) return rc;
        if (i == 0 && tag == NEW_REFERENCE_EXT && word >= OLD_REF_FIRST_LIMIT) return SHOAL_EINVAL;
        if ((rc = put_u32(w, word))) return rc;
    }
    return 0;
}

static int norm_bitstring(reader *r, writer *w)
{
    uint32_t len, bits;
    int rc;
    if ((rc = get_u32(r, &len)) || (rc = get_u8(r, &bits))) return rc;
    /* binary_to_term's rule: 1..8 bits used in the last byte, or an empty binary with 0. */
    if (bits > 8 || (bits == 0) != (len == 0)) return SHOAL_EINVAL;
    if (!avail(r, len)) return SHOAL_EINVAL;
    if (bits == 8 || len == 0) { /* a whole number of bytes: it decodes as a plain binary */
        if ((rc = put_u8(w, BINARY_EXT)) || (rc = put_u32(w, len))) return rc;
        return copy_bytes(r, w, len);
    }
    if ((rc = put_u8(w, BIT_BINARY_EXT)) || (rc = put_u32(w, len)) || (rc = put_u8(w, bits)) ||
        (rc = copy_bytes(r, w, len - 1)))
        return rc;
    uint32_t last;
    if ((rc = get_u8(r, &last))) return rc;
    return put_u8(w, last & (0xFFu << (8 - bits))); /* unused low bits must not change the key */
}

/* ---- containers --------------------------------------------------------------------- */

static int norm_term(reader *r, writer *w, unsigned depth);

static int enter(unsigned depth)
{
    return depth >= KEYHASH_MAX_DEPTH ? SHOAL_E2BIG : 0;
}

static int norm_tuple(reader *r, writer *w, uint32_t arity, unsigned depth)
{
    int rc;
    if ((rc = enter(depth))) return rc;
    if (arity <= 255) {
        if ((rc = put_u8(w, SMALL_TUPLE_EXT)) || (rc = put_u8(w, arity))) return rc;
    } else {
        if ((rc = put_u8(w, LARGE_TUPLE_EXT)) || (rc = put_u32(w, arity))) return rc;
    }
    for (uint32_t i = 0; i < arity; i++)
        if ((rc = norm_term(r, w, depth + 1))) return rc;
    return 0;
}

static int emit_string_elems(reader *r, writer *w, uint32_t len)
{
    int rc;
    if (!avail(r, len)) return SHOAL_EINVAL;
    for (uint32_t i = 0; i < len; i++) {
        unsigned char b[2] = {SMALL_INTEGER_EXT, r->p[r->pos + i]};
        if ((rc = put(w, b, 2))) return rc;
    }
    r->pos += len;
    return 0;
}

/* STRING_EXT: the tag has been read. An empty one is []. */
static int norm_string(reader *r, writer *w, unsigned depth)
{
    uint32_t len;
    int rc;
    if ((rc = get_u16(r, &len))) return rc;
    if (len == 0) return put_u8(w, NIL_EXT);
    if ((rc = enter(depth)) || (rc = put_u8(w, LIST_EXT)) || (rc = put_u32(w, len)) ||
        (rc = emit_string_elems(r, w, len)))
        return rc;
    return put_u8(w, NIL_EXT);
}

/* LIST_EXT: the tag has been read. A list may be spelled as a chain of LIST_EXT/STRING_EXT
 * cells (a LIST_EXT whose tail is again a list), and a LIST_EXT with no elements decodes as
 * its tail alone; binary_to_term flattens both, so the canonical form is one LIST_EXT with
 * every element and a non-list tail. */
static int norm_list(reader *r, writer *w, unsigned depth)
{
    uint32_t n, tag, count = 0;
    int rc;

    if ((rc = get_u32(r, &n))) return rc;
    while (n == 0) { /* empty cells: the term is whatever follows */
        if (!avail(r, 1)) return SHOAL_EINVAL;
        if (r->p[r->pos] != LIST_EXT) return norm_term(r, w, depth);
        r->pos++;
        if ((rc = get_u32(r, &n))) return rc;
    }
    if ((rc = enter(depth))) return rc;
    size_t hdr = w->pos;
    if ((rc = put_u8(w, LIST_EXT)) || (rc = put_u32(w, 0))) return rc;
    for (;;) {
        for (uint32_t i = 0; i < n; i++) {
            if ((rc = norm_term(r, w, depth + 1))) return rc;
            count++; /* cannot wrap: every element costs an output byte below 64 KiB */
        }
        if (!avail(r, 1)) return SHOAL_EINVAL;
        tag = r->p[r->pos];
        if (tag == LIST_EXT) {
            r->pos++;
            if ((rc = get_u32(r, &n))) return rc;
            continue;
        }
        if (tag == STRING_EXT) {
            r->pos++;
            if ((rc = get_u16(r, &n)) || (rc = emit_string_elems(r, w, n))) return rc;
            count += n;
            rc = put_u8(w, NIL_EXT);
        } else if (tag == NIL_EXT) {
            r->pos++;
            rc = put_u8(w, NIL_EXT);
        } else {
            rc = norm_term(r, w, depth + 1); /* improper tail */
        }
        if (rc) return rc;
        break;
    }
    patch_u32(w, hdr + 1, count);
    return 0;
}

typedef struct map_pair {
    const unsigned char *key; /* canonical key bytes inside the output buffer */
    size_t klen;              /* their length */
    size_t start;             /* offset of the pair (key then value) in the output */
    size_t len;               /* pair length */
} map_pair;

static int cmp_bytes(const unsigned char *a, size_t alen, const unsigned char *b, size_t blen)
{
    int c = memcmp(a, b, alen < blen ? alen : blen);
    if (c != 0) return c;
    return alen < blen ? -1 : alen > blen;
}

static int cmp_pair(const void *pa, const void *pb)
{
    const map_pair *a = pa, *b = pb;
    return cmp_bytes(a->key, a->klen, b->key, b->klen);
}

/* MAP_EXT: the tag has been read. Pairs are normalised in input order straight into the
 * output, then reordered by their canonical key bytes; OTP's own order depends on the map's
 * size (flatmap vs HAMT) and is not something a C node can reproduce. */
static int norm_map(reader *r, writer *w, unsigned depth)
{
    uint32_t n;
    int rc;

    if ((rc = get_u32(r, &n))) return rc;
    /* Every pair needs at least two input bytes: refuse lying headers before allocating. */
    if (n > (r->len - r->pos) / 2) return SHOAL_EINVAL;
    if ((rc = enter(depth)) || (rc = put_u8(w, MAP_EXT)) || (rc = put_u32(w, n))) return rc;
    if (n == 0) return 0;

    map_pair *pairs = malloc((size_t)n * sizeof *pairs);
    if (pairs == NULL) return SHOAL_ENOMEM;
    size_t region = w->pos;
    for (uint32_t i = 0; i < n; i++) {
        pairs[i].start = w->pos;
        if ((rc = norm_term(r, w, depth + 1))) goto out;
        pairs[i].klen = w->pos - pairs[i].start;
        if ((rc = norm_term(r, w, depth + 1))) goto out;
        pairs[i].len = w->pos - pairs[i].start;
    }
    if (w->pos > w->cap)
        goto out; /* bytes were not stored; the caller only learns the size (ENOSPC) */

    for (uint32_t i = 0; i < n; i++)
        pairs[i].key = w->out + pairs[i].start;
    qsort(pairs, n, sizeof *pairs, cmp_pair);
    for (uint32_t i = 1; i < n; i++) {
        if (cmp_pair(&pairs[i - 1], &pairs[i]) == 0) { /* binary_to_term refuses these too */
            rc = SHOAL_EINVAL;
            goto out;
        }
    }
    size_t total = w->pos - region;
    unsigned char *copy = malloc(total);
    if (copy == NULL) {
        rc = SHOAL_ENOMEM;
        goto out;
    }
    memcpy(copy, w->out + region, total);
    size_t at = region;
    for (uint32_t i = 0; i < n; i++) {
        memcpy(w->out + at, copy + (pairs[i].start - region), pairs[i].len);
        at += pairs[i].len;
    }
    free(copy);
out:
    free(pairs);
    return rc;
}

/* ---- dispatch ----------------------------------------------------------------------- */

static int norm_term(reader *r, writer *w, unsigned depth)
{
    uint32_t tag, v;
    uint64_t d;
    int rc;

    if ((rc = get_u8(r, &tag))) return rc;
    switch (tag) {
    case SMALL_INTEGER_EXT:
        if ((rc = get_u8(r, &v))) return rc;
        return emit_int(w, v);
    case INTEGER_EXT:
        if ((rc = get_u32(r, &v))) return rc;
        return emit_int(w, (int32_t)v);
    case SMALL_BIG_EXT:
        if ((rc = get_u8(r, &v))) return rc;
        return norm_big(r, w, v);
    case LARGE_BIG_EXT:
        if ((rc = get_u32(r, &v))) return rc;
        return norm_big(r, w, v);
    case NEW_FLOAT_EXT: {
        double f;
        if ((rc = get_u64(r, &d))) return rc;
        memcpy(&f, &d, sizeof f);
        return emit_double(w, f);
    }
    case FLOAT_EXT:
        return norm_old_float(r, w);
    case ATOM_EXT:
    case SMALL_ATOM_EXT:
    case ATOM_UTF8_EXT:
    case SMALL_ATOM_UTF8_EXT:
        return norm_atom_body(r, w, tag);
    case BINARY_EXT:
        if ((rc = get_u32(r, &v))) return rc;
        if (!avail(r, v)) return SHOAL_EINVAL;
        if ((rc = put_u8(w, BINARY_EXT)) || (rc = put_u32(w, v))) return rc;
        return copy_bytes(r, w, v);
    case BIT_BINARY_EXT:
        return norm_bitstring(r, w);
    case SMALL_TUPLE_EXT:
        if ((rc = get_u8(r, &v))) return rc;
        return norm_tuple(r, w, v, depth);
    case LARGE_TUPLE_EXT:
        if ((rc = get_u32(r, &v))) return rc;
        return norm_tuple(r, w, v, depth);
    case NIL_EXT:
        return put_u8(w, NIL_EXT);
    case STRING_EXT:
        return norm_string(r, w, depth);
    case LIST_EXT:
        return norm_list(r, w, depth);
    case MAP_EXT:
        return norm_map(r, w, depth);
    case PID_EXT:
    case NEW_PID_EXT:
        return norm_pid(r, w, tag);
    case PORT_EXT:
    case NEW_PORT_EXT:
    case V4_PORT_EXT:
        return norm_port(r, w, tag);
    case REFERENCE_EXT:
    case NEW_REFERENCE_EXT:
    case NEWER_REFERENCE_EXT:
        return norm_ref(r, w, tag);
    case NEW_FUN_EXT:
    case FUN_EXT:
    case EXPORT_EXT:
    case COMPRESSED:
        return SHOAL_ENOTSUP;
    default:
        return SHOAL_EINVAL;
    }
}

int keyhash_normalize(const unsigned char *in, size_t inlen, unsigned char *out, size_t cap,
                      size_t *outlen)
{
    return keyhash_normalize_at(in, inlen, out, cap, outlen, 0);
}

int keyhash_normalize_at(const unsigned char *in, size_t inlen, unsigned char *out, size_t cap,
                         size_t *outlen, unsigned depth)
{
    reader r = {in, inlen, 0};
    writer w = {out, cap, 0};
    int rc;

    if ((in == NULL && inlen > 0) || (out == NULL && cap > 0) || outlen == NULL)
        return SHOAL_EINVAL;
    if (inlen > 0 && in[0] == VERSION_MAGIC) r.pos = 1;
    if ((rc = put_u8(&w, VERSION_MAGIC)) || (rc = norm_term(&r, &w, depth))) return rc;
    if (r.pos != r.len) return SHOAL_EINVAL;
    *outlen = w.pos;
    return w.pos > cap ? SHOAL_ENOSPC : 0;
}
