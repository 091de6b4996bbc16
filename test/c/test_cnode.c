/* test_cnode.c - CUnit tests for the C node's byte-level parts: MD5 and the handshake
 * digest, the term validator (every term type ei writes, each truncated at every length,
 * hostile lengths and tags), the frame reader (byte-by-byte feeding, ticks, oversize,
 * malformed frames) and writer, handshake and epmd messages, and the hash maps. */
#include "wire.h"
#include "md5.h"
#include "map.h"
#include "test_cnode.h"

#include <CUnit/Basic.h>
#include <ei.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void test_md5_and_digest(void)
{
    unsigned char out[16];
    md5_ctx c;
    static const unsigned char empty[16] = {212, 29, 140, 217, 143, 0,   178, 4,
                                            233, 128, 9, 152, 236, 248, 66, 126};
    shoal__md5_init(&c);
    shoal__md5_final(&c, out);
    CU_ASSERT(memcmp(out, empty, 16) == 0);
    /* erlang:md5(["abc"|integer_to_list(4294967295)]) */
    static const unsigned char d[16] = {190, 236, 53, 204, 46, 142, 23, 13,
                                        156, 69,  41, 28,  92, 30,  180, 117};
    shoal__hs_digest("abc", 4294967295u, out);
    CU_ASSERT(memcmp(out, d, 16) == 0);
    /* long input across several blocks, fed in pieces, equals one-shot */
    char big[1000];
    for (int i = 0; i < 1000; i++)
        big[i] = (char)i;
    unsigned char a[16], b[16];
    shoal__md5_init(&c);
    shoal__md5_update(&c, big, 1000);
    shoal__md5_final(&c, a);
    shoal__md5_init(&c);
    for (int i = 0; i < 1000; i += 7)
        shoal__md5_update(&c, big + i, 1000 - i < 7 ? (size_t)(1000 - i) : 7);
    shoal__md5_final(&c, b);
    CU_ASSERT(memcmp(a, b, 16) == 0);
}

/* Builds a term exercising every type ei can write. */
static void build_rich_term(ei_x_buff *x)
{
    ei_x_new(x);
    ei_x_encode_tuple_header(x, 14);
    ei_x_encode_atom(x, "ok");
    ei_x_encode_atom_len_as(x, "\xc3\xbc\xc3\xb1\xc3\xaf", 6, ERLANG_UTF8, ERLANG_UTF8);
    ei_x_encode_long(x, 42);
    ei_x_encode_long(x, -100000);
    ei_x_encode_longlong(x, 1LL << 60);
    ei_x_encode_double(x, 3.25);
    ei_x_encode_binary(x, "abc", 3);
    ei_x_encode_bitstring(x, "\xff\xe0", 0, 11);
    ei_x_encode_string(x, "hello");
    ei_x_encode_list_header(x, 2); /* improper: [1, 2 | tail] */
    ei_x_encode_long(x, 1);
    ei_x_encode_long(x, 2);
    ei_x_encode_atom(x, "tail");
    ei_x_encode_map_header(x, 1);
    ei_x_encode_atom(x, "k");
    ei_x_encode_empty_list(x);
    erlang_pid pid;
    memset(&pid, 0, sizeof pid);
    strcpy(pid.node, "a@b");
    pid.num = 1;
    pid.creation = 77;
    ei_x_encode_pid(x, &pid);
    erlang_ref ref;
    memset(&ref, 0, sizeof ref);
    strcpy(ref.node, "a@b");
    ref.len = 3;
    ref.n[0] = 1;
    ref.creation = 5;
    ei_x_encode_ref(x, &ref);
    ei_x_encode_tuple_header(x, 0);
}

static void test_term_check_valid_and_truncated(void)
{
    ei_x_buff x;
    build_rich_term(&x);
    size_t used = 0;
    CU_ASSERT_EQUAL(shoal__term_check(x.buff, (size_t)x.index, &used), 0);
    CU_ASSERT_EQUAL(used, (size_t)x.index);
    /* every strict prefix is rejected, never read past */
    for (int cut = 0; cut < x.index; cut++) {
        char *copy = malloc((size_t)cut + 1);
        memcpy(copy, x.buff, (size_t)cut);
        CU_ASSERT_EQUAL(shoal__term_check(copy, (size_t)cut, &used), -EINVAL);
        free(copy);
    }
    /* trailing bytes are not part of the term */
    ei_x_encode_atom(&x, "extra");
    CU_ASSERT_EQUAL(shoal__term_check(x.buff, (size_t)x.index, &used), 0);
    CU_ASSERT(used < (size_t)x.index);
    ei_x_free(&x);
}

static void test_term_check_hostile(void)
{
    size_t used;
    /* list claiming 2^32-1 elements */
    const char huge_list[] = {'l', (char)0xff, (char)0xff, (char)0xff, (char)0xff, 'j'};
    CU_ASSERT_EQUAL(shoal__term_check(huge_list, sizeof huge_list, &used), -EINVAL);
    /* map claiming 2^32-1 pairs */
    const char huge_map[] = {'t', (char)0xff, (char)0xff, (char)0xff, (char)0xff};
    CU_ASSERT_EQUAL(shoal__term_check(huge_map, sizeof huge_map, &used), -EINVAL);
    /* binary longer than the buffer */
    const char bin[] = {'m', 0, 0, 1, 0, 'a'};
    CU_ASSERT_EQUAL(shoal__term_check(bin, sizeof bin, &used), -EINVAL);
    /* atom cache reference, old fun, LOCAL_EXT, unknown tag */
    const char *bad[] = {"R\x01", "u\x00", "y\x00", "\x01", "\x83j"};
    for (int i = 0; i < 5; i++)
        CU_ASSERT_EQUAL(shoal__term_check(bad[i], 2, &used), -EINVAL);
    /* ATOM_EXT over 255 characters */
    char atom[3 + 300];
    atom[0] = 'd';
    shoal__put16(atom + 1, 300);
    memset(atom + 3, 'a', 300);
    CU_ASSERT_EQUAL(shoal__term_check(atom, sizeof atom, &used), -EINVAL);
    /* reference with 6 words */
    const char ref[] = {'Z', 0, 6, 'w', 1, 'a', 0, 0, 0, 1};
    CU_ASSERT_EQUAL(shoal__term_check(ref, sizeof ref, &used), -EINVAL);
    /* pid whose node is not an atom */
    const char pid[] = {'X', 'a', 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    CU_ASSERT_EQUAL(shoal__term_check(pid, sizeof pid, &used), -EINVAL);
    /* bitstring with 0 or 9 bits in the last byte */
    const char bits0[] = {'M', 0, 0, 0, 1, 0, 7};
    const char bits9[] = {'M', 0, 0, 0, 1, 9, 7};
    CU_ASSERT_EQUAL(shoal__term_check(bits0, sizeof bits0, &used), -EINVAL);
    CU_ASSERT_EQUAL(shoal__term_check(bits9, sizeof bits9, &used), -EINVAL);
    /* 100 000 nested tuples: validated without recursion */
    size_t depth = 100000;
    char *deep = malloc(depth * 2 + 1);
    for (size_t i = 0; i < depth; i++) {
        deep[2 * i] = 'h';
        deep[2 * i + 1] = 1;
    }
    deep[2 * depth] = 'j';
    CU_ASSERT_EQUAL(shoal__term_check(deep, depth * 2 + 1, &used), 0);
    CU_ASSERT_EQUAL(shoal__term_check(deep, depth * 2, &used), -EINVAL);
    free(deep);
    /* empty input */
    CU_ASSERT_EQUAL(shoal__term_check("", 0, &used), -EINVAL);
    /* FLOAT_EXT: ei parses its 31 bytes with sscanf, so they must hold a NUL; without one
     * (the input fuzz_frame found in CI) it is refused, with one it is a float */
    char flt[32];
    flt[0] = 'c';
    memset(flt + 1, 0x9c, 31);
    CU_ASSERT_EQUAL(shoal__term_check(flt, sizeof flt, &used), -EINVAL);
    memset(flt + 1, 0, 31);
    snprintf(flt + 1, 31, "%.20e", 1.5);
    CU_ASSERT_EQUAL(shoal__term_check(flt, sizeof flt, &used), 0);
    int fi = 0;
    double d = 0;
    CU_ASSERT_EQUAL(ei_decode_double(flt, &fi, &d), 0);
    CU_ASSERT_EQUAL(d, 1.5);
}

/* Builds a REG_SEND frame {6, Pid, '', echo} + hello. */
static void build_frame(dbuf *b)
{
    long mark = shoal__frame_begin(b);
    ei_x_buff x;
    ei_x_new(&x);
    ei_x_encode_tuple_header(&x, 4);
    ei_x_encode_long(&x, 6);
    erlang_pid pid;
    memset(&pid, 0, sizeof pid);
    strcpy(pid.node, "x@y");
    ei_x_encode_pid(&x, &pid);
    ei_x_encode_atom(&x, "");
    ei_x_encode_atom(&x, "echo");
    shoal__dbuf_append(b, x.buff, (size_t)x.index);
    ei_x_free(&x);
    ei_x_new_with_version(&x);
    ei_x_encode_atom(&x, "hello");
    shoal__frame_msg(b, x.buff, (size_t)x.index); /* leading 131 skipped */
    ei_x_free(&x);
    shoal__frame_end(b, mark);
}

static void test_frame_roundtrip_and_feeding(void)
{
    dbuf b = {0};
    shoal__frame_tick(&b);
    build_frame(&b);
    shoal__frame_tick(&b);
    build_frame(&b);
    /* feed byte by byte: frames appear exactly when complete */
    size_t off = 0, seen = 0, ticks = 0, pass = 0;
    for (size_t have = 0; have <= b.len; have++) {
        for (;;) {
            frame f;
            size_t need;
            int rc = shoal__frame_parse(b.data + off, have - off, 1 << 20, &f, &need);
            CU_ASSERT(rc >= 0);
            if (rc <= 0) {
                CU_ASSERT(need > have - off);
                break;
            }
            seen++;
            if (f.kind == FRAME_TICK) {
                ticks++;
            } else {
                pass++;
                CU_ASSERT_PTR_NOT_NULL(f.msg);
                int idx = 0;
                char a[MAXATOMLEN_UTF8];
                CU_ASSERT_EQUAL(ei_decode_atom(f.msg, &idx, a), 0);
                CU_ASSERT_STRING_EQUAL(a, "hello");
                CU_ASSERT_EQUAL((size_t)idx, f.msg_len);
            }
            off += f.size;
        }
    }
    CU_ASSERT_EQUAL(seen, 4);
    CU_ASSERT_EQUAL(ticks, 2);
    CU_ASSERT_EQUAL(pass, 2);
    CU_ASSERT_EQUAL(off, b.len);
    shoal__dbuf_free(&b);
}

static void test_frame_hostile(void)
{
    frame f;
    size_t need;
    /* oversized */
    const char big[] = {0x7f, (char)0xff, (char)0xff, (char)0xff};
    CU_ASSERT_EQUAL(shoal__frame_parse(big, 4, 1 << 20, &f, &need), -E2BIG);
    CU_ASSERT_EQUAL(need, 0x7fffffff); /* the declared length, for the log line */
    /* the limit is inclusive: a frame of exactly max_frame bytes is taken */
    dbuf lim = {0};
    build_frame(&lim);
    size_t flen = lim.len - 4;
    CU_ASSERT_EQUAL(shoal__frame_parse(lim.data, lim.len, flen, &f, &need), 1);
    CU_ASSERT_EQUAL(shoal__frame_parse(lim.data, lim.len, flen - 1, &f, &need), -E2BIG);
    CU_ASSERT_EQUAL(need, flen);
    /* over the limit is known from the length prefix alone, before the body arrives */
    CU_ASSERT_EQUAL(shoal__frame_parse(lim.data, 4, flen - 1, &f, &need), -E2BIG);
    shoal__dbuf_free(&lim);
    /* not 'p' */
    const char notp[] = {0, 0, 0, 4, 'q', (char)131, 'h', 0};
    CU_ASSERT_EQUAL(shoal__frame_parse(notp, sizeof notp, 1 << 20, &f, &need), -EINVAL);
    /* control not a tuple */
    const char nottuple[] = {0, 0, 0, 3, 'p', (char)131, 'j'};
    CU_ASSERT_EQUAL(shoal__frame_parse(nottuple, sizeof nottuple, 1 << 20, &f, &need), -EINVAL);
    /* garbage after the payload */
    const char trailing[] = {0, 0, 0, 7, 'p', (char)131, 'h', 0, (char)131, 'j', 'j'};
    CU_ASSERT_EQUAL(shoal__frame_parse(trailing, sizeof trailing, 1 << 20, &f, &need), -EINVAL);
    /* payload without version byte */
    const char nover[] = {0, 0, 0, 5, 'p', (char)131, 'h', 0, 'j'};
    CU_ASSERT_EQUAL(shoal__frame_parse(nover, sizeof nover, 1 << 20, &f, &need), -EINVAL);
    /* every truncation of a good frame inside its declared length is "need more" or an
     * error, never a read past the buffer */
    dbuf b = {0};
    build_frame(&b);
    for (size_t cut = 0; cut < b.len; cut++) {
        char *copy = malloc(cut + 1);
        memcpy(copy, b.data, cut);
        CU_ASSERT_EQUAL(shoal__frame_parse(copy, cut, 1 << 20, &f, &need), 0);
        free(copy);
    }
    /* every truncation of the declared length itself is rejected, except the one that
     * ends right after the control tuple (a control-only frame, well-formed here) */
    frame whole;
    CU_ASSERT_EQUAL(shoal__frame_parse(b.data, b.len, 1 << 20, &whole, &need), 1);
    for (size_t len = 1; len < b.len - 4; len++) {
        char *copy = malloc(len + 4);
        memcpy(copy, b.data, len + 4);
        shoal__put32(copy, (uint32_t)len);
        int rc = shoal__frame_parse(copy, len + 4, 1 << 20, &f, &need);
        if (len == 2 + whole.ctrl_len) {
            CU_ASSERT(rc == 1 && f.msg == NULL);
        } else {
            CU_ASSERT(rc < 0);
        }
        free(copy);
    }
    shoal__dbuf_free(&b);
}

static void test_handshake_messages(void)
{
    dbuf b = {0};
    CU_ASSERT_EQUAL(shoal__hs_put_name(&b, WIRE_OUR_FLAGS, 1234, "me@host"), 0);
    const char *body;
    size_t blen, used;
    CU_ASSERT_EQUAL(shoal__hs_frame(b.data, b.len, &body, &blen, &used), 1);
    CU_ASSERT_EQUAL(used, b.len);
    hs_name hn;
    CU_ASSERT_EQUAL(shoal__hs_parse_name(body, blen, 0, &hn), 0);
    CU_ASSERT_EQUAL(hn.flags, WIRE_OUR_FLAGS);
    CU_ASSERT_EQUAL(hn.creation, 1234);
    CU_ASSERT_STRING_EQUAL(hn.name, "me@host");
    CU_ASSERT_EQUAL(shoal__hs_frame(b.data, b.len - 1, &body, &blen, &used), 0);
    /* a name length that disagrees with the message is rejected */
    CU_ASSERT_EQUAL(shoal__hs_parse_name(body, blen - 1, 0, &hn), -EINVAL);
    b.len = 0;
    CU_ASSERT_EQUAL(shoal__hs_put_challenge(&b, 7, 0xdeadbeef, 99, "you@there"), 0);
    CU_ASSERT_EQUAL(shoal__hs_frame(b.data, b.len, &body, &blen, &used), 1);
    CU_ASSERT_EQUAL(shoal__hs_parse_name(body, blen, 1, &hn), 0);
    CU_ASSERT_EQUAL(hn.challenge, 0xdeadbeef);
    CU_ASSERT_EQUAL(hn.creation, 99);
    /* name without '@', zero-length frame, wrong tag */
    b.len = 0;
    shoal__hs_put_name(&b, 7, 1, "nohost");
    shoal__hs_frame(b.data, b.len, &body, &blen, &used);
    CU_ASSERT_EQUAL(shoal__hs_parse_name(body, blen, 0, &hn), -EINVAL);
    const char zero[] = {0, 0};
    CU_ASSERT_EQUAL(shoal__hs_frame(zero, 2, &body, &blen, &used), -EINVAL);
    CU_ASSERT_EQUAL(shoal__hs_parse_name("n1234567890123", 14, 0, &hn), -EINVAL);
    shoal__dbuf_free(&b);
}

static void test_epmd_messages(void)
{
    dbuf b = {0};
    CU_ASSERT_EQUAL(shoal__epmd_put_alive2(&b, 4370, 1, "node"), 0);
    CU_ASSERT_EQUAL(shoal__get16(b.data), b.len - 2);
    CU_ASSERT_EQUAL((unsigned char)b.data[2], 120);
    CU_ASSERT_EQUAL(shoal__get16(b.data + 3), 4370);
    int result, port;
    uint32_t creation;
    const char x_resp[] = {118, 0, 0x12, 0x34, 0x56, 0x78};
    CU_ASSERT_EQUAL(shoal__epmd_parse_alive2(x_resp, 3, &result, &creation), 0);
    CU_ASSERT_EQUAL(shoal__epmd_parse_alive2(x_resp, 6, &result, &creation), 1);
    CU_ASSERT_EQUAL(result, 0);
    CU_ASSERT_EQUAL(creation, 0x12345678);
    CU_ASSERT_EQUAL(shoal__epmd_parse_alive2("Zzz", 3, &result, &creation), -EINVAL);
    const char port2[] = {119, 0, 0x11, 0x22, 77};
    CU_ASSERT_EQUAL(shoal__epmd_parse_port2(port2, 3, &port), 0);
    CU_ASSERT_EQUAL(shoal__epmd_parse_port2(port2, 5, &port), 1);
    CU_ASSERT_EQUAL(port, 0x1122);
    const char nope[] = {119, 1};
    CU_ASSERT_EQUAL(shoal__epmd_parse_port2(nope, 2, &port), 1);
    CU_ASSERT_EQUAL(port, -ENOENT);
    CU_ASSERT_EQUAL(shoal__epmd_parse_port2("xx", 2, &port), -EINVAL);
    b.len = 0;
    CU_ASSERT_EQUAL(shoal__epmd_put_port_please(&b, "node"), 0);
    CU_ASSERT_EQUAL(b.len, 7);
    CU_ASSERT_EQUAL(shoal__epmd_put_port_please(&b, ""), -EINVAL);
    shoal__dbuf_free(&b);
}

/* shoal__atom_view: zero-copy atom bytes for UTF-8 atoms and ASCII Latin-1 atoms; everything else
 * (Latin-1 beyond ASCII, non-atoms) is left to ei. */
static void test_atom_view(void)
{
    const char *s;
    size_t n;
    int idx;
    static const char w[] = {'w', 4, 'e', 'c', 'h', 'o'};
    static const char v[] = {'v', 0, 3, (char)0xc3, (char)0xbc, 'x'};
    static const char sm[] = {'s', 2, 'o', 'k'};
    static const char d[] = {'d', 0, 2, 'o', 'k'};
    static const char lat[] = {'s', 1, (char)0xfc}; /* 'ü' in Latin-1: needs conversion */
    static const char tup[] = {'h', 0};
    idx = 0;
    CU_ASSERT(shoal__atom_view(w, &idx, &s, &n) == 0 && idx == 6 && n == 4 &&
              !memcmp(s, "echo", 4));
    idx = 0;
    CU_ASSERT(shoal__atom_view(v, &idx, &s, &n) == 0 && idx == 6 && n == 3 && s == v + 3);
    idx = 0;
    CU_ASSERT(shoal__atom_view(sm, &idx, &s, &n) == 0 && idx == 4 && n == 2 && !memcmp(s, "ok", 2));
    idx = 0;
    CU_ASSERT(shoal__atom_view(d, &idx, &s, &n) == 0 && idx == 5 && n == 2 && !memcmp(s, "ok", 2));
    idx = 0;
    CU_ASSERT(shoal__atom_view(lat, &idx, &s, &n) == -1 && idx == 0);
    CU_ASSERT(shoal__atom_view(tup, &idx, &s, &n) == -1 && idx == 0);
    /* same bytes as ei produces for a UTF-8 atom */
    ei_x_buff x;
    ei_x_new(&x);
    ei_x_encode_atom_len_as(&x, "\xc3\xbc" "ber", 5, ERLANG_UTF8, ERLANG_UTF8);
    idx = 0;
    CU_ASSERT(shoal__atom_view(x.buff, &idx, &s, &n) == 0 && n == 5 && idx == x.index &&
              !memcmp(s, "\xc3\xbc" "ber", 5));
    ei_x_free(&x);
}

static void test_maps(void)
{
    imap m = {0};
    for (uint64_t k = 1; k <= 100000; k++)
        CU_ASSERT_EQUAL(shoal__imap_put(&m, k, (void *)(uintptr_t)k), 0);
    CU_ASSERT_EQUAL(m.count, 100000);
    for (uint64_t k = 1; k <= 100000; k += 2)
        CU_ASSERT_EQUAL((uintptr_t)shoal__imap_del(&m, k), k);
    for (uint64_t k = 1; k <= 100000; k++)
        CU_ASSERT_EQUAL((uintptr_t)shoal__imap_get(&m, k), k % 2 ? 0 : k);
    for (uint64_t k = 2; k <= 100000; k += 2)
        shoal__imap_del(&m, k);
    CU_ASSERT_EQUAL(m.count, 0);
    CU_ASSERT(m.cap <= 2048); /* shrinks back */
    CU_ASSERT_EQUAL(shoal__imap_put(&m, 0, NULL), -EINVAL);
    shoal__imap_free(&m);

    smap s = {0};
    char key[32];
    for (int i = 0; i < 5000; i++) {
        snprintf(key, sizeof key, "name%d", i);
        CU_ASSERT_EQUAL(shoal__smap_put(&s, key, (void *)(uintptr_t)(i + 1)), 0);
    }
    for (int i = 0; i < 5000; i += 3) {
        snprintf(key, sizeof key, "name%d", i);
        CU_ASSERT_EQUAL((uintptr_t)shoal__smap_del(&s, key), (uintptr_t)(i + 1));
    }
    for (int i = 0; i < 5000; i++) {
        snprintf(key, sizeof key, "name%d", i);
        CU_ASSERT_EQUAL((uintptr_t)shoal__smap_get(&s, key), i % 3 ? (uintptr_t)(i + 1) : 0);
        /* shoal__smap_getn: the same lookup on bytes that are not NUL-terminated */
        size_t kl = strlen(key);
        key[kl] = 'X';
        CU_ASSERT_EQUAL((uintptr_t)shoal__smap_getn(&s, key, kl), i % 3 ? (uintptr_t)(i + 1) : 0);
        CU_ASSERT_PTR_NULL(shoal__smap_getn(&s, key, kl + 1)); /* "nameNX": absent */
    }
    static const char nul[] = {'n', 'a', 'm', 'e', '1', 0, 'z'};
    CU_ASSERT_PTR_NULL(shoal__smap_getn(&s, nul, sizeof nul)); /* an embedded NUL never matches */
    shoal__smap_free(&s);
}

int main(void)
{
    ei_init();
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    CU_pSuite s = CU_add_suite("cnode_wire", NULL, NULL);
    CU_add_test(s, "md5 and handshake digest", test_md5_and_digest);
    CU_add_test(s, "shoal__term_check: valid terms and every truncation",
                test_term_check_valid_and_truncated);
    CU_add_test(s, "shoal__term_check: hostile input", test_term_check_hostile);
    CU_add_test(s, "frames: write, then read byte by byte", test_frame_roundtrip_and_feeding);
    CU_add_test(s, "frames: hostile and truncated", test_frame_hostile);
    CU_add_test(s, "handshake messages", test_handshake_messages);
    CU_add_test(s, "epmd messages", test_epmd_messages);
    CU_add_test(s, "hash maps", test_maps);
    CU_add_test(s, "shoal__atom_view", test_atom_view);
    if (test_cnode_register_ratelog() != CUE_SUCCESS || test_cnode_register_conn() != CUE_SUCCESS) {
        CU_cleanup_registry();
        return 2;
    }
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_tests_failed() + CU_get_number_of_failures();
    CU_cleanup_registry();
    return failed ? 1 : 0;
}
