/* test_core_keyhash.c - CUnit suite for the canonical key encoding and hash (keyhash.h).
 *
 * The shared vectors (test/vectors/keyhash.txt, generated from the Erlang reference) pin the
 * C implementation to shoal_keyhash.erl; the rest treats keyhash_normalize as the parser of
 * untrusted wire bytes it is: every input is handed over in a heap buffer of exactly its
 * length, so the ASan build turns any read past the end into a failure. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keyhash.h"
#include "shoal_err.h"
#include "test_core.h"

typedef struct vector {
    int line;             /* line in keyhash.txt, for messages */
    unsigned char *etf;   /* column 2: the input encoding */
    size_t etf_len;       /* its length */
    unsigned char *canon; /* column 3: the canonical bytes */
    size_t canon_len;     /* their length */
    uint64_t hash;        /* column 4 */
} vector;

static vector *vectors;
static size_t n_vectors;

/* ---- loading the vectors ----------------------------------------------------------- */

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* Decode lowercase hex of length n into a new buffer (at least 1 byte so malloc(0) is moot). */
static unsigned char *unhex(const char *s, size_t n, size_t *len)
{
    if (n % 2 != 0) return NULL;
    unsigned char *b = malloc(n / 2 + 1);
    if (b == NULL) return NULL;
    for (size_t i = 0; i < n / 2; i++) {
        int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            free(b);
            return NULL;
        }
        b[i] = (unsigned char)(hi << 4 | lo);
    }
    *len = n / 2;
    return b;
}

static void free_vectors(void)
{
    for (size_t i = 0; i < n_vectors; i++) {
        free(vectors[i].etf);
        free(vectors[i].canon);
    }
    free(vectors);
    vectors = NULL;
    n_vectors = 0;
}

/* Columns: term TAB etf-hex TAB canonical-hex TAB hash-hex. The term column (Erlang syntax,
 * UTF-8) is for the Erlang side; C only needs the bytes. */
static int parse_line(char *line, int lineno, vector *v)
{
    char *col[4];
    char *p = line;
    size_t hash_len;
    unsigned char *hash;

    for (int i = 0; i < 4; i++) {
        col[i] = p;
        p = strchr(p, '\t');
        if ((p == NULL) != (i == 3)) return -1;
        if (p) *p++ = '\0';
    }
    col[3][strcspn(col[3], "\r\n")] = '\0';
    v->line = lineno;
    v->etf = unhex(col[1], strlen(col[1]), &v->etf_len);
    v->canon = unhex(col[2], strlen(col[2]), &v->canon_len);
    hash = unhex(col[3], strlen(col[3]), &hash_len);
    if (v->etf == NULL || v->canon == NULL || hash == NULL || hash_len != 8) {
        free(v->etf);
        free(v->canon);
        free(hash);
        return -1;
    }
    v->hash = 0;
    for (int i = 0; i < 8; i++)
        v->hash = v->hash << 8 | hash[i];
    free(hash);
    return 0;
}

static int suite_init(void)
{
    const char *path = test_core_vectors_path();
    FILE *f = path ? fopen(path, "r") : NULL;
    char *line = NULL;
    size_t cap = 0, alloc = 0;
    int lineno = 0;

    if (f == NULL) {
        fprintf(stderr, "keyhash: cannot open vectors %s\n", path ? path : "(none)");
        return -1;
    }
    while (getline(&line, &cap, f) > 0) {
        lineno++;
        if (line[0] == '#' || line[0] == '\n' || line[0] == '\r') continue;
        if (n_vectors == alloc) {
            alloc = alloc ? alloc * 2 : 64;
            vector *nv = realloc(vectors, alloc * sizeof *vectors);
            if (nv == NULL) goto fail;
            vectors = nv;
        }
        if (parse_line(line, lineno, &vectors[n_vectors]) != 0) {
            fprintf(stderr, "keyhash: %s:%d: malformed vector line\n", path, lineno);
            goto fail;
        }
        n_vectors++;
    }
    free(line);
    fclose(f);
    if (n_vectors < 40) {
        fprintf(stderr, "keyhash: only %zu vectors in %s\n", n_vectors, path);
        free_vectors();
        return -1;
    }
    return 0;
fail:
    free(line);
    fclose(f);
    free_vectors();
    return -1;
}

static int suite_clean(void)
{
    free_vectors();
    return 0;
}

/* ---- helpers ------------------------------------------------------------------------- */

/* A heap copy of exactly n bytes: ASan reports a read of byte n. */
static unsigned char *exact_copy(const unsigned char *src, size_t n)
{
    unsigned char *b = malloc(n ? n : 1);
    CU_ASSERT_FATAL(b != NULL);
    if (n) memcpy(b, src, n);
    return b;
}

/* normalize() of an exact-size copy into a generous buffer. */
static int norm(const unsigned char *in, size_t n, unsigned char *out, size_t cap, size_t *outlen)
{
    unsigned char *copy = exact_copy(in, n);
    int rc = keyhash_normalize(n ? copy : NULL, n, out, cap, outlen);
    free(copy);
    return rc;
}

static int is_error(int rc)
{
    return rc == SHOAL_EINVAL || rc == SHOAL_ENOTSUP || rc == SHOAL_E2BIG;
}

static void expect_rc(const unsigned char *in, size_t n, int want, const char *what)
{
    static unsigned char out[KEYHASH_MAX_KEY];
    size_t outlen = 0;
    int rc = norm(in, n, out, sizeof out, &outlen);
    CHECKF(rc == want, "%s: got %d, want %d", what, rc, want);
}

static void expect_canon(const unsigned char *in, size_t n, const unsigned char *want,
                         size_t want_len, const char *what)
{
    unsigned char out[256];
    size_t outlen = 0;
    int rc = norm(in, n, out, sizeof out, &outlen);
    CHECKF(rc == 0 && outlen == want_len && memcmp(out, want, want_len) == 0,
           "%s: rc %d, %zu bytes (want %zu)", what, rc, outlen, want_len);
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;

static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* ---- the shared vectors ------------------------------------------------------------------ */

static void test_vectors_normalize_to_canonical(void)
{
    static unsigned char out[KEYHASH_MAX_KEY];
    for (size_t i = 0; i < n_vectors; i++) {
        const vector *v = &vectors[i];
        size_t outlen = 0;
        int rc = norm(v->etf, v->etf_len, out, sizeof out, &outlen);
        CHECKF(rc == 0 && outlen == v->canon_len && memcmp(out, v->canon, outlen) == 0,
               "keyhash.txt:%d: normalize(etf) rc %d, %zu bytes, want the canonical %zu", v->line,
               rc, outlen, v->canon_len);
    }
}

static void test_vectors_canonical_is_a_fixed_point(void)
{
    static unsigned char out[KEYHASH_MAX_KEY];
    for (size_t i = 0; i < n_vectors; i++) {
        const vector *v = &vectors[i];
        size_t outlen = 0;
        int rc = norm(v->canon, v->canon_len, out, sizeof out, &outlen);
        CHECKF(rc == 0 && outlen == v->canon_len && memcmp(out, v->canon, outlen) == 0,
               "keyhash.txt:%d: normalize(canonical) changed the bytes (rc %d)", v->line, rc);
    }
}

static void test_vectors_hash(void)
{
    for (size_t i = 0; i < n_vectors; i++) {
        const vector *v = &vectors[i];
        uint64_t h = keyhash_hash64(v->canon, v->canon_len);
        CHECKF(h == v->hash, "keyhash.txt:%d: hash %016llx, want %016llx", v->line,
               (unsigned long long)h, (unsigned long long)v->hash);
    }
}

static void test_vectors_without_version_byte(void)
{
    static unsigned char out[KEYHASH_MAX_KEY];
    for (size_t i = 0; i < n_vectors; i++) {
        const vector *v = &vectors[i];
        size_t outlen = 0;
        CU_ASSERT_FATAL(v->etf_len > 1 && v->etf[0] == 131);
        int rc = norm(v->etf + 1, v->etf_len - 1, out, sizeof out, &outlen);
        CHECKF(rc == 0 && outlen == v->canon_len && memcmp(out, v->canon, outlen) == 0,
               "keyhash.txt:%d: the version byte is optional (rc %d)", v->line, rc);
    }
}

static void test_vectors_enospc_reports_size(void)
{
    for (size_t i = 0; i < n_vectors; i++) {
        const vector *v = &vectors[i];
        size_t outlen = 0;
        int rc = norm(v->etf, v->etf_len, NULL, 0, &outlen);
        CHECKF(rc == SHOAL_ENOSPC && outlen == v->canon_len,
               "keyhash.txt:%d: cap 0: rc %d, needed %zu, want ENOSPC %zu", v->line, rc, outlen,
               v->canon_len);
        /* One byte short, in a heap buffer of exactly that size: nothing written past it. */
        unsigned char *small = malloc(v->canon_len - 1);
        CU_ASSERT_FATAL(small != NULL);
        outlen = 0;
        rc = norm(v->etf, v->etf_len, small, v->canon_len - 1, &outlen);
        CHECKF(rc == SHOAL_ENOSPC && outlen == v->canon_len,
               "keyhash.txt:%d: cap-1: rc %d, needed %zu", v->line, rc, outlen);
        free(small);
        /* Exactly the size needed is enough. */
        unsigned char *exact = malloc(v->canon_len);
        CU_ASSERT_FATAL(exact != NULL);
        rc = norm(v->etf, v->etf_len, exact, v->canon_len, &outlen);
        CHECKF(rc == 0 && memcmp(exact, v->canon, v->canon_len) == 0,
               "keyhash.txt:%d: exact cap: rc %d", v->line, rc);
        free(exact);
    }
}

/* ---- the hash function on its own -------------------------------------------------------- */

static void test_hash_known_answers(void)
{
    /* From the definition in the task (checked against shoal_keyhash:hash64/1 and an
     * independent Python transcription): lengths 0, 1, 7, 8, 9, 16 cover the tail rules. */
    CU_ASSERT_EQUAL(keyhash_hash64(NULL, 0), 0xbd0ed0d08a42a70cULL);
    CU_ASSERT_EQUAL(keyhash_hash64("a", 1), 0xbb571bac26abd91dULL);
    CU_ASSERT_EQUAL(keyhash_hash64("abcdefg", 7), 0xdf26134d16c30ab3ULL);
    CU_ASSERT_EQUAL(keyhash_hash64("abcdefgh", 8), 0x9095383d8ff91909ULL);
    CU_ASSERT_EQUAL(keyhash_hash64("abcdefghi", 9), 0x3efde187ca3f8b89ULL);
    CU_ASSERT_EQUAL(keyhash_hash64("abcdefghijklmnop", 16), 0xeacbb071f4d4737fULL);
}

static void test_hash_ignores_alignment(void)
{
    unsigned char buf[64 + 8];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (unsigned char)(i * 37 + 11);
    for (size_t len = 0; len <= 64; len++) {
        uint64_t want = keyhash_hash64(buf, len);
        for (size_t off = 1; off < 8; off++) {
            unsigned char moved[64 + 8];
            memcpy(moved + off, buf, len);
            CHECKF(keyhash_hash64(moved + off, len) == want, "len %zu offset %zu", len, off);
        }
    }
}

static void test_hash_depends_on_every_byte_and_the_length(void)
{
    unsigned char buf[40] = {0};
    uint64_t base = keyhash_hash64(buf, sizeof buf);
    for (size_t i = 0; i < sizeof buf; i++) {
        buf[i] = 1;
        CHECKF(keyhash_hash64(buf, sizeof buf) != base, "byte %zu does not change the hash", i);
        buf[i] = 0;
    }
    /* Zero padding of the tail must not make "x" and "x\0" collide: the length is mixed in. */
    CU_ASSERT_NOT_EQUAL(keyhash_hash64(buf, 3), keyhash_hash64(buf, 4));
}

/* ---- hostile input ------------------------------------------------------------------ */

static void test_every_truncation_is_an_error(void)
{
    static unsigned char out[KEYHASH_MAX_KEY];
    for (size_t i = 0; i < n_vectors; i++) {
        const vector *v = &vectors[i];
        for (int which = 0; which < 2; which++) {
            const unsigned char *in = which ? v->canon : v->etf;
            size_t len = which ? v->canon_len : v->etf_len;
            for (size_t cut = 0; cut < len; cut++) {
                size_t outlen;
                int rc = norm(in, cut, out, sizeof out, &outlen);
                CHECKF(is_error(rc), "keyhash.txt:%d: %s cut to %zu bytes gave %d", v->line,
                       which ? "canonical" : "etf", cut, rc);
            }
        }
    }
}

static void test_trailing_bytes_are_an_error(void)
{
    for (size_t i = 0; i < n_vectors; i++) {
        const vector *v = &vectors[i];
        unsigned char *longer = malloc(v->canon_len + 1);
        CU_ASSERT_FATAL(longer != NULL);
        memcpy(longer, v->canon, v->canon_len);
        longer[v->canon_len] = 106;
        expect_rc(longer, v->canon_len + 1, SHOAL_EINVAL, "canonical + NIL");
        free(longer);
    }
}

/* Random byte changes must give an error or a result that is itself canonical (normalising
 * it again changes nothing and the hash is stable); never a crash or an out-of-bounds read. */
static void test_random_mutations(void)
{
    static unsigned char out[KEYHASH_MAX_KEY], again[KEYHASH_MAX_KEY];
    size_t accepted = 0, rejected = 0;
    for (size_t i = 0; i < n_vectors; i++) {
        const vector *v = &vectors[i];
        for (int round = 0; round < 300; round++) {
            unsigned char *m = exact_copy(v->etf, v->etf_len);
            int flips = 1 + (int)(rng() % 3);
            for (int f = 0; f < flips; f++) {
                size_t at = rng() % v->etf_len;
                uint64_t r = rng();
                /* Mostly small or boundary values: they hit tags and length fields. */
                m[at] = (r & 3) == 0   ? (unsigned char)(r >> 8)
                        : (r & 3) == 1 ? 0xFF
                        : (r & 3) == 2 ? (unsigned char)(m[at] ^ (1u << (r >> 8 & 7)))
                                       : (unsigned char)(r >> 8 & 0x7F);
            }
            size_t cut = (rng() % 4 == 0) ? rng() % (v->etf_len + 1) : v->etf_len;
            size_t outlen = 0, againlen = 0;
            int rc = norm(m, cut, out, sizeof out, &outlen);
            if (rc == 0) {
                accepted++;
                int rc2 = norm(out, outlen, again, sizeof again, &againlen);
                CHECKF(rc2 == 0 && againlen == outlen && memcmp(out, again, outlen) == 0,
                       "keyhash.txt:%d: mutated input normalised to non-canonical bytes", v->line);
            } else {
                rejected++;
                CHECKF(is_error(rc) || rc == SHOAL_ENOMEM, "keyhash.txt:%d: unexpected rc %d",
                       v->line, rc);
            }
            free(m);
        }
    }
    CU_ASSERT(accepted > 0);
    CU_ASSERT(rejected > 0);
}

/* Random bytes from scratch: mostly errors, never a crash. */
static void test_random_garbage(void)
{
    static unsigned char out[KEYHASH_MAX_KEY];
    unsigned char buf[48];
    for (int round = 0; round < 20000; round++) {
        size_t len = rng() % sizeof buf;
        for (size_t j = 0; j < len; j++)
            buf[j] = (unsigned char)rng();
        if (len > 0 && rng() % 2) buf[0] = 131;
        if (len > 1) buf[1 % len] = (unsigned char)(70 + rng() % 51); /* a real-looking tag */
        size_t outlen;
        int rc = norm(buf, len, out, sizeof out, &outlen);
        CHECKF(rc == 0 || is_error(rc), "garbage round %d: rc %d", round, rc);
    }
}

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* Nested one-element containers around the atom a: `levels` of SMALL_TUPLE, LIST or MAP. */
static size_t nest(unsigned char *b, int levels, int kind)
{
    size_t n = 0;
    b[n++] = 131;
    for (int i = 0; i < levels; i++) {
        if (kind == 0) { /* {X} */
            b[n++] = 104;
            b[n++] = 1;
        } else if (kind == 1) { /* [X] */
            b[n++] = 108;
            put32(b + n, 1);
            n += 4;
        } else { /* #{k => X} */
            b[n++] = 116;
            put32(b + n, 1);
            n += 4;
            b[n++] = 97;
            b[n++] = 0;
        }
    }
    b[n++] = 119;
    b[n++] = 1;
    b[n++] = 'a';
    if (kind == 1)
        for (int i = 0; i < levels; i++)
            b[n++] = 106;
    return n;
}

static void test_depth_limit(void)
{
    unsigned char b[2048];
    const char *names[] = {"tuples", "lists", "maps"};
    for (int kind = 0; kind < 3; kind++) {
        char what[64];
        size_t n = nest(b, KEYHASH_MAX_DEPTH, kind);
        snprintf(what, sizeof what, "%d nested %s", KEYHASH_MAX_DEPTH, names[kind]);
        expect_rc(b, n, 0, what);
        n = nest(b, KEYHASH_MAX_DEPTH + 1, kind);
        snprintf(what, sizeof what, "%d nested %s", KEYHASH_MAX_DEPTH + 1, names[kind]);
        expect_rc(b, n, SHOAL_E2BIG, what);
    }
    /* A STRING_EXT is a list too: at depth 64 it is one level too deep, an empty one ([])
     * is not a container at all. */
    size_t n = nest(b, KEYHASH_MAX_DEPTH, 0) - 3;
    memcpy(b + n, (const unsigned char[]){107, 0, 1, 'x'}, 4);
    expect_rc(b, n + 4, SHOAL_E2BIG, "string at depth 64");
    memcpy(b + n, (const unsigned char[]){107, 0, 0}, 3);
    expect_rc(b, n + 3, 0, "empty string at depth 64");
    /* Far deeper than the limit: refused without exhausting the C stack. */
    static unsigned char deep[2 * 100000 + 8];
    size_t d = 0;
    deep[d++] = 131;
    for (int i = 0; i < 100000; i++) {
        deep[d++] = 104;
        deep[d++] = 1;
    }
    deep[d++] = 106;
    expect_rc(deep, d, SHOAL_E2BIG, "100000 nested tuples");
}

static void test_huge_lengths_in_headers(void)
{
    static const struct {
        const char *what;
        unsigned char bytes[16];
        size_t len;
    } cases[] = {
        {"LIST_EXT n=2^32-1", {131, 108, 255, 255, 255, 255, 97, 1, 106}, 9},
        {"LARGE_TUPLE n=2^32-1", {131, 105, 255, 255, 255, 255, 97, 1}, 8},
        {"MAP_EXT n=2^32-1", {131, 116, 255, 255, 255, 255, 97, 1, 97, 2}, 10},
        {"MAP_EXT n=2^31", {131, 116, 128, 0, 0, 0, 97, 1, 97, 2}, 10},
        {"BINARY_EXT len=2^32-1", {131, 109, 255, 255, 255, 255, 1, 2}, 8},
        {"BIT_BINARY len=2^32-1", {131, 77, 255, 255, 255, 255, 3, 1}, 8},
        {"LARGE_BIG n=2^32-1", {131, 111, 255, 255, 255, 255, 0, 1}, 8},
        {"SMALL_BIG n=255", {131, 110, 255, 0, 1, 2}, 6},
        {"ATOM_EXT len=65535", {131, 100, 255, 255, 'a'}, 5},
        {"ATOM_UTF8 len=65535", {131, 118, 255, 255, 'a'}, 5},
        {"SMALL_ATOM_UTF8 len=255", {131, 119, 255, 'a'}, 4},
        {"STRING_EXT len=65535", {131, 107, 255, 255, 'a'}, 5},
        {"NEWER_REFERENCE n=65535", {131, 90, 255, 255, 119, 1, 'n', 0, 0, 0, 1}, 11},
        {"LIST_EXT n=0 chain without end", {131, 108, 0, 0, 0, 0, 108, 0, 0, 0, 0}, 11},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_rc(cases[i].bytes, cases[i].len, SHOAL_EINVAL, cases[i].what);
}

static void test_key_size_limit(void)
{
    /* BINARY_EXT: 131, 109, len:4, payload -> 6 + payload bytes. */
    size_t payload = KEYHASH_MAX_KEY - 6;
    unsigned char *b = calloc(1, KEYHASH_MAX_KEY + 2);
    CU_ASSERT_FATAL(b != NULL);
    b[0] = 131;
    b[1] = 109;
    put32(b + 2, (uint32_t)payload);
    expect_rc(b, 6 + payload, 0, "canonical key of exactly KEYHASH_MAX_KEY bytes");
    put32(b + 2, (uint32_t)payload + 1);
    expect_rc(b, 7 + payload, SHOAL_E2BIG, "canonical key one byte over the limit");
    free(b);

    /* Small input, large canonical form: STRING_EXT doubles, LIST_EXT n=0 cells vanish. */
    size_t n = 40000;
    b = calloc(1, n + 4);
    CU_ASSERT_FATAL(b != NULL);
    b[0] = 131;
    b[1] = 107;
    b[2] = (unsigned char)(n >> 8);
    b[3] = (unsigned char)n;
    expect_rc(b, n + 4, SHOAL_E2BIG, "40000-byte STRING_EXT expands past the limit");
    free(b);
}

/* ---- equivalent spellings and refusals ------------------------------------------------ */

static void test_funs_and_compressed_are_unsupported(void)
{
    const unsigned char export_ext[] = {131, 104, 2, 97, 1, 113, 119, 1, 'm', 119, 1, 'f', 97, 0};
    const unsigned char new_fun[] = {131, 112, 0, 0, 0, 80, 0};
    const unsigned char old_fun[] = {131, 117, 0, 0, 0, 0};
    const unsigned char compressed[] = {131, 80, 0, 0, 0, 10, 120, 156};
    const unsigned char fun_in_map[] = {131, 116, 0,   0,   0, 1,   97, 1, 113,
                                        119, 1,   'm', 119, 1, 'f', 97, 0};
    expect_rc(export_ext, sizeof export_ext, SHOAL_ENOTSUP, "EXPORT_EXT in a tuple");
    expect_rc(new_fun, sizeof new_fun, SHOAL_ENOTSUP, "NEW_FUN_EXT");
    expect_rc(old_fun, sizeof old_fun, SHOAL_ENOTSUP, "FUN_EXT");
    expect_rc(compressed, sizeof compressed, SHOAL_ENOTSUP, "compressed term");
    expect_rc(fun_in_map, sizeof fun_in_map, SHOAL_ENOTSUP, "fun as a map value");
}

static void test_malformed_terms_are_einval(void)
{
    static const struct {
        const char *what;
        unsigned char bytes[40];
        size_t len;
    } cases[] = {
        {"empty input", {0}, 0},
        {"version byte only", {131}, 1},
        {"unknown tag 0", {131, 0}, 2},
        {"ATOM_CACHE_REF", {131, 82, 0}, 3},
        {"DIST_HEADER", {131, 68, 0}, 3},
        {"two version bytes", {131, 131, 97, 1}, 4},
        {"NaN", {131, 70, 0x7F, 0xF8, 0, 0, 0, 0, 0, 0}, 10},
        {"infinity", {131, 70, 0xFF, 0xF0, 0, 0, 0, 0, 0, 0}, 10},
        {"FLOAT_EXT without a fraction", {131, 99, '1', 'e', '5'}, 33},
        {"FLOAT_EXT inf", {131, 99, 'i', 'n', 'f'}, 33},
        {"FLOAT_EXT 1.0e400", {131, 99, '1', '.', '0', 'e', '4', '0', '0'}, 33},
        {"FLOAT_EXT leading space", {131, 99, ' ', '1', '.', '5'}, 33},
        {"FLOAT_EXT trailing junk", {131, 99, '1', '.', '5', 'x'}, 33},
        {"UTF-8 atom, surrogate", {131, 119, 3, 0xED, 0xA0, 0x80}, 6},
        {"UTF-8 atom, overlong", {131, 119, 2, 0xC0, 0x80}, 5},
        {"UTF-8 atom, above U+10FFFF", {131, 119, 4, 0xF4, 0x90, 0x80, 0x80}, 7},
        {"UTF-8 atom, cut sequence", {131, 119, 2, 'a', 0xC3}, 5},
        {"BIT_BINARY bits=9", {131, 77, 0, 0, 0, 1, 9, 0}, 8},
        {"BIT_BINARY bits=0 with a byte", {131, 77, 0, 0, 0, 1, 0, 5}, 8},
        {"BIT_BINARY empty with bits=3", {131, 77, 0, 0, 0, 0, 3}, 7},
        {"duplicate map keys in two spellings",
         {131, 116, 0, 0, 0, 2, 97, 1, 97, 1, 98, 0, 0, 0, 1, 97, 2},
         17},
        {"map keys 0.0 and -0.0",
         {131, 116, 0, 0,  0,    2, 70, 0, 0, 0, 0, 0, 0,  0,
          0,   97,  1, 70, 0x80, 0, 0,  0, 0, 0, 0, 0, 97, 2},
         28},
        {"reference with 6 words",
         {131, 90, 0, 6, 119, 1, 'n', 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0,
          2,   0,  0, 0, 3,   0, 0,   0, 4, 0, 0, 0, 5, 0, 0, 0, 6},
         35},
        {"NEW_REFERENCE_EXT with no words", {131, 114, 0, 0, 119, 1, 'n', 1}, 8},
        {"NEW_REFERENCE_EXT first word above 18 bits",
         {131, 114, 0, 1, 119, 1, 'n', 1, 0, 4, 0, 0},
         12},
        {"pid whose node is an integer", {131, 88, 97, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0}, 16},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_rc(cases[i].bytes, cases[i].len, SHOAL_EINVAL, cases[i].what);

    /* A Latin-1 atom of 256 characters is more than an atom can hold. */
    unsigned char atom[4 + 256];
    atom[0] = 131;
    atom[1] = 100;
    atom[2] = 1;
    atom[3] = 0;
    memset(atom + 4, 'a', 256);
    expect_rc(atom, sizeof atom, SHOAL_EINVAL, "ATOM_EXT of 256 characters");
}

static void test_bad_arguments(void)
{
    const unsigned char one[] = {131, 97, 1};
    unsigned char out[8];
    size_t outlen;
    CU_ASSERT_EQUAL(keyhash_normalize(NULL, 3, out, sizeof out, &outlen), SHOAL_EINVAL);
    CU_ASSERT_EQUAL(keyhash_normalize(one, sizeof one, NULL, 8, &outlen), SHOAL_EINVAL);
    CU_ASSERT_EQUAL(keyhash_normalize(one, sizeof one, out, sizeof out, NULL), SHOAL_EINVAL);
    CU_ASSERT_EQUAL(keyhash_normalize(one, sizeof one, out, sizeof out, &outlen), 0);
    CU_ASSERT_EQUAL(outlen, 3);
}

static void test_equivalent_spellings(void)
{
    /* 300 as INTEGER_EXT, SMALL_BIG and LARGE_BIG with padding: all INTEGER_EXT. */
    const unsigned char int300[] = {131, 98, 0, 0, 1, 44};
    const unsigned char big300[] = {131, 110, 2, 0, 44, 1};
    const unsigned char large300[] = {131, 111, 0, 0, 0, 3, 0, 44, 1, 0};
    expect_canon(big300, sizeof big300, int300, sizeof int300, "SMALL_BIG 300");
    expect_canon(large300, sizeof large300, int300, sizeof int300, "LARGE_BIG 300");
    /* Zero with the sign set is 0. */
    const unsigned char zero[] = {131, 97, 0};
    const unsigned char negzero[] = {131, 110, 1, 1, 0};
    expect_canon(negzero, sizeof negzero, zero, sizeof zero, "SMALL_BIG -0");
    /* 2^31 needs a bignum, -2^31 does not. */
    const unsigned char pos31[] = {131, 98, 0x80, 0, 0, 0};
    const unsigned char pos31_canon[] = {131, 110, 4, 0, 0, 0, 0, 0x80};
    expect_canon(pos31_canon, sizeof pos31_canon, pos31_canon, sizeof pos31_canon, "2^31");
    const unsigned char neg31[] = {131, 110, 4, 1, 0, 0, 0, 0x80};
    expect_canon(neg31, sizeof neg31, pos31, sizeof pos31, "-2^31");
    /* LARGE_TUPLE of arity 1 is a SMALL_TUPLE; latin-1 'é' becomes UTF-8. */
    const unsigned char ltuple[] = {131, 105, 0, 0, 0, 1, 100, 0, 1, 0xE9};
    const unsigned char stuple[] = {131, 104, 1, 119, 2, 0xC3, 0xA9};
    expect_canon(ltuple, sizeof ltuple, stuple, sizeof stuple, "LARGE_TUPLE 1, ATOM_EXT é");
    /* A Latin-1 atom of 255 characters above 0x7F is 510 UTF-8 bytes: ATOM_UTF8_EXT. */
    unsigned char latin[4 + 255], utf8[4 + 510];
    latin[0] = 131;
    latin[1] = 100;
    latin[2] = 0;
    latin[3] = 255;
    memset(latin + 4, 0xE9, 255);
    utf8[0] = 131;
    utf8[1] = 118;
    utf8[2] = 510 >> 8;
    utf8[3] = 510 & 0xFF;
    for (int i = 0; i < 255; i++) {
        utf8[4 + 2 * i] = 0xC3;
        utf8[5 + 2 * i] = 0xA9;
    }
    unsigned char out[600];
    size_t outlen;
    CU_ASSERT_EQUAL(norm(latin, sizeof latin, out, sizeof out, &outlen), 0);
    CU_ASSERT(outlen == sizeof utf8 && memcmp(out, utf8, sizeof utf8) == 0);
    /* Improper list whose tail is a list cell chain: [1 | [2 | x]] == [1, 2 | x]. */
    const unsigned char chain[] = {131, 108, 0, 0, 0,  1, 97,  1, 108,
                                   0,   0,   0, 1, 97, 2, 119, 1, 'x'};
    const unsigned char flat[] = {131, 108, 0, 0, 0, 2, 97, 1, 97, 2, 119, 1, 'x'};
    expect_canon(chain, sizeof chain, flat, sizeof flat, "list cell chain");
    /* LIST_EXT n=0 with a NIL tail is []. */
    const unsigned char empty_list[] = {131, 108, 0, 0, 0, 0, 106};
    const unsigned char nil[] = {131, 106};
    expect_canon(empty_list, sizeof empty_list, nil, sizeof nil, "LIST_EXT 0 []");
    /* Map order follows the canonical key bytes, shorter first on a common prefix:
     * #{'ab' => 1, 'a' => 2, 1 => 3} -> 1 (97...) < 'a' (119,1,...) < 'ab' (119,2,...). */
    const unsigned char map_in[] = {131, 116, 0,   0,  0, 3,  100, 0, 2, 'a', 'b', 97, 1,
                                    115, 1,   'a', 97, 2, 98, 0,   0, 0, 1,   97,  3};
    const unsigned char map_out[] = {131, 116, 0,  0, 0,   3, 97,  1,   97, 3, 119,
                                     1,   'a', 97, 2, 119, 2, 'a', 'b', 97, 1};
    expect_canon(map_in, sizeof map_in, map_out, sizeof map_out, "map order");
    /* Nested maps are sorted at every level. */
    const unsigned char nested_in[] = {131, 116, 0, 0,  0, 1,   97, 9, 116, 0,
                                       0,   0,   2, 97, 2, 106, 97, 1, 106};
    const unsigned char nested_out[] = {131, 116, 0, 0,  0, 1,   97, 9, 116, 0,
                                        0,   0,   2, 97, 1, 106, 97, 2, 106};
    expect_canon(nested_in, sizeof nested_in, nested_out, sizeof nested_out, "nested map");
}

CU_ErrorCode test_core_register_keyhash(void)
{
    CU_pSuite s = CU_add_suite("keyhash", suite_init, suite_clean);
    if (s == NULL) return CU_get_error();
    static const struct {
        const char *name;
        CU_TestFunc fn;
    } tests[] = {
        {"vectors: normalize(etf) is the canonical column", test_vectors_normalize_to_canonical},
        {"vectors: normalize(canonical) is the identity", test_vectors_canonical_is_a_fixed_point},
        {"vectors: hash64(canonical) is the hash column", test_vectors_hash},
        {"vectors: the version byte is optional", test_vectors_without_version_byte},
        {"vectors: small buffers give ENOSPC and the size", test_vectors_enospc_reports_size},
        {"hash: known answers", test_hash_known_answers},
        {"hash: alignment does not matter", test_hash_ignores_alignment},
        {"hash: every byte and the length count", test_hash_depends_on_every_byte_and_the_length},
        {"hostile: every truncation is an error", test_every_truncation_is_an_error},
        {"hostile: trailing bytes are an error", test_trailing_bytes_are_an_error},
        {"hostile: random mutations", test_random_mutations},
        {"hostile: random garbage", test_random_garbage},
        {"hostile: nesting deeper than the limit is E2BIG", test_depth_limit},
        {"hostile: huge lengths in headers", test_huge_lengths_in_headers},
        {"limits: canonical size limit is E2BIG", test_key_size_limit},
        {"funs and compressed terms are ENOTSUP", test_funs_and_compressed_are_unsupported},
        {"malformed terms are EINVAL", test_malformed_terms_are_einval},
        {"bad arguments are EINVAL", test_bad_arguments},
        {"equivalent spellings share one canonical form", test_equivalent_spellings},
    };
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++)
        if (CU_add_test(s, tests[i].name, tests[i].fn) == NULL) return CU_get_error();
    return CUE_SUCCESS;
}
