/* nif_key.c - canonical key bytes straight from terms (see c_src/core/keyhash.h).
 *
 * The common shapes (small integers, floats, Latin-1 atoms, binaries, tuples, lists) are
 * written directly into a stack buffer; the rest (bignums, bitstrings, maps, UTF-8 atoms,
 * pids, ports, refs) go through term_to_binary and keyhash_normalize, so there is exactly
 * one definition of their canonical form. Also here: node names as UTF-8 bytes, and the
 * canonical/1 and hash/1 NIFs. */
#include <string.h>

#include "nif_priv.h"
#include "shoal_err.h"

static void kbuf_init(kbuf *b)
{
    b->p = b->stack;
    b->len = 0;
    b->cap = sizeof b->stack;
}

void kbuf_free(kbuf *b)
{
    if (b->p != b->stack) enif_free(b->p);
}

static int kbuf_reserve(kbuf *b, size_t n)
{
    if (b->len + n <= b->cap) return 0;
    if (b->len + n > KEYHASH_MAX_KEY) return SHOAL_E2BIG;
    size_t cap = b->cap * 2;
    while (cap < b->len + n) cap *= 2;
    if (cap > KEYHASH_MAX_KEY) cap = KEYHASH_MAX_KEY;
    unsigned char *p = enif_alloc(cap);
    if (p == NULL) return SHOAL_ENOMEM;
    memcpy(p, b->p, b->len);
    kbuf_free(b);
    b->p = p;
    b->cap = cap;
    return 0;
}

static inline void put8(kbuf *b, unsigned v)
{
    b->p[b->len++] = (unsigned char)v;
}

static inline void put32(kbuf *b, uint32_t v)
{
    b->p[b->len++] = (unsigned char)(v >> 24);
    b->p[b->len++] = (unsigned char)(v >> 16);
    b->p[b->len++] = (unsigned char)(v >> 8);
    b->p[b->len++] = (unsigned char)v;
}

static int enc_term(ErlNifEnv *env, ERL_NIF_TERM t, kbuf *b, int depth);

/* A map goes through term_to_binary, which copies the whole of it first: a map holding a
 * 100 MB binary would hold the scheduler for tens of ms before the size check. Encode its
 * keys and values into a scratch buffer first, which stops at the size limit (and at a too
 * big binary) at once: 0 when the map fits, SHOAL_E2BIG (or another code) when not. */
static int map_fits(ErlNifEnv *env, ERL_NIF_TERM t, int depth)
{
    kbuf scratch;
    ErlNifMapIterator it;
    ERL_NIF_TERM k, v;
    int rc = 0;
    if (!enif_map_iterator_create(env, t, &it, ERL_NIF_MAP_ITERATOR_FIRST)) return SHOAL_EINVAL;
    kbuf_init(&scratch);
    while (rc == 0 && enif_map_iterator_get_pair(env, &it, &k, &v)) {
        rc = enc_term(env, k, &scratch, depth + 1);
        if (rc == 0) rc = enc_term(env, v, &scratch, depth + 1);
        (void)enif_map_iterator_next(env, &it);
    }
    enif_map_iterator_destroy(env, &it);
    kbuf_free(&scratch);
    return rc;
}

static int enc_slow(ErlNifEnv *env, ERL_NIF_TERM t, kbuf *b, int depth)
{
    ErlNifBinary bin;
    if (!enif_term_to_binary(env, t, &bin)) return SHOAL_EINVAL;
    int rc;
    size_t out = 0;
    for (;;) {
        size_t room = b->cap - b->len;
        rc = keyhash_normalize_at(bin.data, bin.size, b->p + b->len, room, &out, (unsigned)depth);
        if (rc != SHOAL_ENOSPC) break;
        size_t want = out > room ? out : room * 2 + bin.size * 2;
        if ((rc = kbuf_reserve(b, want)) != 0) break;
    }
    enif_release_binary(&bin);
    if (rc != 0) return rc;
    /* keyhash_normalize writes the leading 131; nested terms must not have it. */
    memmove(b->p + b->len, b->p + b->len + 1, out - 1);
    b->len += out - 1;
    return 0;
}

static int enc_term(ErlNifEnv *env, ERL_NIF_TERM t, kbuf *b, int depth)
{
    int rc;
    switch (enif_term_type(env, t)) {
    case ERL_NIF_TERM_TYPE_INTEGER: {
        ErlNifSInt64 v;
        if (!enif_get_int64(env, t, &v)) return enc_slow(env, t, b, depth);
        if (v >= 0 && v <= 255) {
            if ((rc = kbuf_reserve(b, 2))) return rc;
            put8(b, 97);
            put8(b, (unsigned)v);
        } else if (v >= INT32_MIN && v <= INT32_MAX) {
            if ((rc = kbuf_reserve(b, 5))) return rc;
            put8(b, 98);
            put32(b, (uint32_t)(int32_t)v);
        } else {
            uint64_t mag = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
            unsigned n = 0;
            unsigned char d[8];
            while (mag) {
                d[n++] = (unsigned char)mag;
                mag >>= 8;
            }
            if ((rc = kbuf_reserve(b, 3 + n))) return rc;
            put8(b, 110);
            put8(b, n);
            put8(b, v < 0);
            for (unsigned i = 0; i < n; i++) put8(b, d[i]);
        }
        return 0;
    }
    case ERL_NIF_TERM_TYPE_FLOAT: {
        double d;
        uint64_t u;
        enif_get_double(env, t, &d);
        if (d == 0.0) d = 0.0; /* -0.0 is written as 0.0 */
        memcpy(&u, &d, 8);
        if ((rc = kbuf_reserve(b, 9))) return rc;
        put8(b, 70);
        put32(b, (uint32_t)(u >> 32));
        put32(b, (uint32_t)u);
        return 0;
    }
    case ERL_NIF_TERM_TYPE_ATOM: {
        char name[256];
        int n = enif_get_atom(env, t, name, sizeof name, ERL_NIF_LATIN1);
        if (n <= 0) return enc_slow(env, t, b, depth); /* not Latin-1: let normalize do UTF-8 */
        n--;                                     /* without the NUL */
        if ((rc = kbuf_reserve(b, 3 + 2 * (size_t)n))) return rc;
        size_t at = b->len;
        put8(b, 119);
        put8(b, 0);
        for (int i = 0; i < n; i++) {
            unsigned char c = (unsigned char)name[i];
            if (c < 0x80) {
                put8(b, c);
            } else {
                put8(b, 0xC0 | (c >> 6));
                put8(b, 0x80 | (c & 0x3F));
            }
        }
        size_t ulen = b->len - at - 2;
        if (ulen <= 255) {
            b->p[at + 1] = (unsigned char)ulen;
        } else { /* ATOM_UTF8_EXT with a 2-byte length: shift the bytes by one */
            if ((rc = kbuf_reserve(b, 1))) return rc;
            memmove(b->p + at + 3, b->p + at + 2, ulen);
            b->p[at] = 118;
            b->p[at + 1] = (unsigned char)(ulen >> 8);
            b->p[at + 2] = (unsigned char)ulen;
            b->len++;
        }
        return 0;
    }
    case ERL_NIF_TERM_TYPE_BITSTRING: {
        ErlNifBinary bin;
        if (!enif_inspect_binary(env, t, &bin)) return enc_slow(env, t, b, depth); /* bitstring */
        if (bin.size > KEYHASH_MAX_KEY) return SHOAL_E2BIG;
        if ((rc = kbuf_reserve(b, 5 + bin.size))) return rc;
        put8(b, 109);
        put32(b, (uint32_t)bin.size);
        memcpy(b->p + b->len, bin.data, bin.size);
        b->len += bin.size;
        return 0;
    }
    case ERL_NIF_TERM_TYPE_TUPLE: {
        int arity;
        const ERL_NIF_TERM *el;
        enif_get_tuple(env, t, &arity, &el);
        if (depth >= KEYHASH_MAX_DEPTH) return SHOAL_E2BIG; /* a container is a level */
        if ((rc = kbuf_reserve(b, 5))) return rc;
        if (arity <= 255) {
            put8(b, 104);
            put8(b, (unsigned)arity);
        } else {
            put8(b, 105);
            put32(b, (uint32_t)arity);
        }
        for (int i = 0; i < arity; i++)
            if ((rc = enc_term(env, el[i], b, depth + 1))) return rc;
        return 0;
    }
    case ERL_NIF_TERM_TYPE_LIST: {
        if (enif_is_empty_list(env, t)) {
            if ((rc = kbuf_reserve(b, 1))) return rc;
            put8(b, 106);
            return 0;
        }
        if (depth >= KEYHASH_MAX_DEPTH) return SHOAL_E2BIG;
        if ((rc = kbuf_reserve(b, 5))) return rc;
        size_t at = b->len;
        put8(b, 108);
        put32(b, 0);
        uint32_t n = 0;
        ERL_NIF_TERM head, tail = t;
        /* Each element adds at least one byte, so the size limit also bounds the walk. */
        while (enif_get_list_cell(env, tail, &head, &tail)) {
            if ((rc = enc_term(env, head, b, depth + 1))) return rc;
            n++;
        }
        if ((rc = enc_term(env, tail, b, depth + 1))) return rc;
        b->p[at + 1] = (unsigned char)(n >> 24);
        b->p[at + 2] = (unsigned char)(n >> 16);
        b->p[at + 3] = (unsigned char)(n >> 8);
        b->p[at + 4] = (unsigned char)n;
        return 0;
    }
    case ERL_NIF_TERM_TYPE_MAP: {
        size_t sz;
        if (!enif_get_map_size(env, t, &sz) || sz > KEYHASH_MAX_KEY / 2) return SHOAL_E2BIG;
        if (depth >= KEYHASH_MAX_DEPTH) return SHOAL_E2BIG;
        if ((rc = map_fits(env, t, depth)) != 0) return rc;
        return enc_slow(env, t, b, depth);
    }
    case ERL_NIF_TERM_TYPE_PID:
    case ERL_NIF_TERM_TYPE_PORT:
    case ERL_NIF_TERM_TYPE_REFERENCE:
        return enc_slow(env, t, b, depth);
    default: /* funs */
        return SHOAL_ENOTSUP;
    }
}

int key_encode(ErlNifEnv *env, ERL_NIF_TERM key, kbuf *b, uint64_t *hash)
{
    kbuf_init(b);
    put8(b, 131);
    int rc = enc_term(env, key, b, 0);
    if (rc != 0) {
        kbuf_free(b);
        return rc;
    }
    *hash = keyhash_hash64(b->p, b->len);
    return 0;
}

int key_atom_name(ErlNifEnv *env, ERL_NIF_TERM a, kbuf *b)
{
    if (!enif_is_atom(env, a)) return SHOAL_EINVAL;
    kbuf_init(b);
    int rc = enc_term(env, a, b, 0);
    if (rc != 0) {
        kbuf_free(b);
        return rc;
    }
    /* 119 len bytes, or 118 len16 bytes: drop the tag and length. */
    size_t skip = b->p[0] == 119 ? 2 : 3;
    memmove(b->p, b->p + skip, b->len - skip);
    b->len -= skip;
    return 0;
}

/* Decoding the common shapes directly (walks list every key) spares enif_binary_to_term
 * its generality and, for atoms, the atom table's lock: a walk's keys mostly share a few
 * atoms, which a small cache of the last ones made answers. Anything else (bignums over 64
 * bits, non-ASCII atoms, bitstrings, maps, pids, ports, refs) sends the whole key through
 * enif_binary_to_term. */
typedef struct dec {
    ErlNifEnv *env;
    const unsigned char *p;
    size_t len, pos;
    key_atoms *atoms;
} dec;

#define DEC_FAIL 1

static int dec_need(const dec *d, size_t n)
{
    return n <= d->len - d->pos ? 0 : DEC_FAIL;
}

static uint32_t dec_u32(dec *d)
{
    const unsigned char *q = d->p + d->pos;
    d->pos += 4;
    return ((uint32_t)q[0] << 24) | ((uint32_t)q[1] << 16) | ((uint32_t)q[2] << 8) | q[3];
}

static int dec_atom(dec *d, size_t n, ERL_NIF_TERM *out)
{
    if (dec_need(d, n)) return DEC_FAIL;
    const unsigned char *name = d->p + d->pos;
    key_atoms *c = d->atoms;
    for (int i = 0; c != NULL && i < c->n; i++)
        if (c->len[i] == n && memcmp(c->name[i], name, n) == 0) {
            *out = c->atom[i];
            d->pos += n;
            return 0;
        }
    for (size_t i = 0; i < n; i++)
        if (name[i] >= 0x80) return DEC_FAIL; /* enif_make_atom_len takes Latin-1 */
    if (!enif_make_existing_atom_len(d->env, (const char *)name, n, out, ERL_NIF_LATIN1))
        *out = enif_make_atom_len(d->env, (const char *)name, n);
    if (c != NULL && n <= KEY_ATOM_MAX) {
        int i = c->n < KEY_ATOMS ? c->n++ : (int)(c->next++ % KEY_ATOMS);
        memcpy(c->name[i], name, n);
        c->len[i] = (uint16_t)n;
        c->atom[i] = *out;
    }
    d->pos += n;
    return 0;
}

static int dec_term(dec *d, ERL_NIF_TERM *out)
{
    if (dec_need(d, 1)) return DEC_FAIL;
    unsigned tag = d->p[d->pos++];
    switch (tag) {
    case 97:
        if (dec_need(d, 1)) return DEC_FAIL;
        *out = enif_make_int(d->env, d->p[d->pos++]);
        return 0;
    case 98:
        if (dec_need(d, 4)) return DEC_FAIL;
        *out = enif_make_int(d->env, (int32_t)dec_u32(d));
        return 0;
    case 110: {
        if (dec_need(d, 2)) return DEC_FAIL;
        unsigned n = d->p[d->pos], neg = d->p[d->pos + 1];
        d->pos += 2;
        if (n > 8 || dec_need(d, n)) return DEC_FAIL;
        uint64_t mag = 0;
        for (unsigned i = 0; i < n; i++)
            mag |= (uint64_t)d->p[d->pos + i] << (8 * i);
        d->pos += n;
        if (!neg)
            *out = enif_make_uint64(d->env, mag);
        else if (mag <= (uint64_t)INT64_MAX + 1)
            *out = enif_make_int64(d->env, (int64_t)(0 - mag));
        else
            return DEC_FAIL;
        return 0;
    }
    case 70: {
        if (dec_need(d, 8)) return DEC_FAIL;
        uint64_t u = (uint64_t)dec_u32(d) << 32;
        u |= dec_u32(d);
        double x;
        memcpy(&x, &u, sizeof x);
        *out = enif_make_double(d->env, x);
        return 0;
    }
    case 119:
        if (dec_need(d, 1)) return DEC_FAIL;
        return dec_atom(d, d->p[d->pos++], out);
    case 118: {
        if (dec_need(d, 2)) return DEC_FAIL;
        size_t n = ((size_t)d->p[d->pos] << 8) | d->p[d->pos + 1];
        d->pos += 2;
        return dec_atom(d, n, out);
    }
    case 109: {
        if (dec_need(d, 4)) return DEC_FAIL;
        size_t n = dec_u32(d);
        if (dec_need(d, n)) return DEC_FAIL;
        unsigned char *b = enif_make_new_binary(d->env, n, out);
        if (b == NULL) return DEC_FAIL;
        memcpy(b, d->p + d->pos, n);
        d->pos += n;
        return 0;
    }
    case 106: *out = enif_make_list(d->env, 0); return 0;
    case 104:
    case 105:
    case 108: {
        size_t n;
        if (tag == 104) {
            if (dec_need(d, 1)) return DEC_FAIL;
            n = d->p[d->pos++];
        } else {
            if (dec_need(d, 4)) return DEC_FAIL;
            n = dec_u32(d);
        }
        if (n > d->len - d->pos) return DEC_FAIL; /* every element takes a byte at least */
        ERL_NIF_TERM stack[16], *el = stack;
        if (n > 16 && (el = enif_alloc(n * sizeof *el)) == NULL) return DEC_FAIL;
        int rc = 0;
        for (size_t i = 0; i < n && rc == 0; i++) rc = dec_term(d, &el[i]);
        if (rc == 0) {
            if (tag != 108) {
                *out = enif_make_tuple_from_array(d->env, el, (unsigned)n);
            } else {
                ERL_NIF_TERM tail;
                rc = dec_term(d, &tail);
                for (size_t i = n; rc == 0 && i > 0; i--)
                    tail = enif_make_list_cell(d->env, el[i - 1], tail);
                *out = tail;
            }
        }
        if (el != stack) enif_free(el);
        return rc;
    }
    default: return DEC_FAIL;
    }
}

ERL_NIF_TERM key_decode(ErlNifEnv *env, const nif_atoms *a, const unsigned char *p, size_t len,
                        key_atoms *atoms)
{
    dec d = {env, p, len, 1, atoms};
    ERL_NIF_TERM t;
    if (len > 0 && p[0] == 131 && dec_term(&d, &t) == 0 && d.pos == len) return t;
    if (enif_binary_to_term(env, p, len, &t, 0) == 0) return a->undefined;
    return t;
}

/* Append the UTF-8 name of the ETF atom at p (n bytes left) to b: 0 or SHOAL_EINVAL. */
static int atom_utf8(const unsigned char *p, size_t n, kbuf *b)
{
    size_t len, at;
    int latin1;
    if (n >= 2 && (p[0] == 119 || p[0] == 115)) {
        len = p[1];
        at = 2;
    } else if (n >= 3 && (p[0] == 118 || p[0] == 100)) {
        len = ((size_t)p[1] << 8) | p[2];
        at = 3;
    } else {
        return SHOAL_EINVAL;
    }
    latin1 = p[0] == 115 || p[0] == 100;
    if (at + len > n || kbuf_reserve(b, 2 * len) != 0) return SHOAL_EINVAL;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = p[at + i];
        if (latin1 && c >= 0x80) {
            put8(b, 0xC0 | (c >> 6));
            put8(b, 0x80 | (c & 0x3F));
        } else {
            put8(b, c);
        }
    }
    return 0;
}

int key_pid_node(ErlNifEnv *env, uint64_t w, kbuf *b)
{
    ErlNifPid pid;
    ErlNifBinary bin;
    pid.pid = (ERL_NIF_TERM)w;
    kbuf_init(b);
    if (!enif_term_to_binary(env, enif_make_pid(env, &pid), &bin)) return SHOAL_EINVAL;
    /* 131, NEW_PID_EXT (88) or PID_EXT (103), then the node atom. */
    int rc = bin.size > 2 && (bin.data[1] == 88 || bin.data[1] == 103)
                 ? atom_utf8(bin.data + 2, bin.size - 2, b)
                 : SHOAL_EINVAL;
    enif_release_binary(&bin);
    if (rc != 0) kbuf_free(b);
    return rc;
}

ERL_NIF_TERM key_make_atom(ErlNifEnv *env, const unsigned char *p, size_t len)
{
    unsigned char buf[4 + REGISTRY_MAX_NAME];
    ERL_NIF_TERM t;
    if (len > 65535 || len > REGISTRY_MAX_NAME) return 0;
    buf[0] = 131;
    buf[1] = 118;
    buf[2] = (unsigned char)(len >> 8);
    buf[3] = (unsigned char)len;
    memcpy(buf + 4, p, len);
    if (enif_binary_to_term(env, buf, 4 + len, &t, 0) == 0 || !enif_is_atom(env, t)) return 0;
    return t;
}

/* canonical(Key) -> binary(): the canonical key bytes. */
ERL_NIF_TERM nif_canonical(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    GET_KEY(kb, k, argv[0]);
    ERL_NIF_TERM bin;
    unsigned char *p = enif_make_new_binary(env, k.len, &bin);
    if (p == NULL) {
        kbuf_free(&kb);
        return raise_for(env, SHOAL_ENOMEM);
    }
    memcpy(p, k.bytes, k.len);
    kbuf_free(&kb);
    return bin;
}

/* hash(Key) -> non_neg_integer(): keyhash_hash64 of the canonical bytes. */
ERL_NIF_TERM nif_hash(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    GET_KEY(kb, k, argv[0]);
    kbuf_free(&kb);
    return enif_make_uint64(env, k.hash);
}
