/* fuzz_frame.c - libFuzzer target for everything that reads bytes from a peer: the frame
 * parser (as the connection feeds it: repeatedly over a buffer), the term validator, ei
 * decoding of validated control tuples, and the handshake and epmd parsers. Any crash,
 * sanitizer report or read past the input is a bug. `make fuzz` runs it longer. */
#include "wire.h"

#include <ei.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Decodes a validated term fully with ei, as dist.c and user code would. */
static void walk(const char *buf, int *idx, int depth)
{
    int type, size, arity;
    if (depth > 64 || ei_get_type(buf, idx, &type, &size) < 0) {
        ei_skip_term(buf, idx);
        return;
    }
    switch (type) {
    case ERL_SMALL_TUPLE_EXT:
    case ERL_LARGE_TUPLE_EXT:
        if (ei_decode_tuple_header(buf, idx, &arity) < 0)
            return;
        for (int i = 0; i < arity; i++)
            walk(buf, idx, depth + 1);
        return;
    case ERL_NEW_PID_EXT: {
        erlang_pid p;
        ei_decode_pid(buf, idx, &p);
        return;
    }
    case ERL_NEWER_REFERENCE_EXT: {
        erlang_ref r;
        ei_decode_ref(buf, idx, &r);
        return;
    }
    case ERL_ATOM_EXT:
    case ERL_SMALL_ATOM_EXT:
    case ERL_ATOM_UTF8_EXT:
    case ERL_SMALL_ATOM_UTF8_EXT: {
        char a[MAXATOMLEN_UTF8];
        if (ei_decode_atom_as(buf, idx, a, sizeof a, ERLANG_UTF8, NULL, NULL) < 0)
            ei_skip_term(buf, idx);
        return;
    }
    default:
        ei_skip_term(buf, idx);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    /* copy to an exact-size heap block so ASan sees any overread */
    char *copy = malloc(size ? size : 1);
    memcpy(copy, buf, size);
    size_t off = 0;
    while (off < size) {
        frame f;
        size_t need;
        int rc = shoal__frame_parse(copy + off, size - off, 1 << 20, &f, &need);
        if (rc <= 0)
            break;
        if (f.kind == FRAME_PASS) {
            int idx = 0;
            walk(f.ctrl, &idx, 0);
            if (f.msg) {
                idx = 0;
                walk(f.msg, &idx, 0);
            }
        }
        off += f.size;
    }
    size_t used;
    if (shoal__term_check(copy, size, &used) == 0) {
        int idx = 0;
        walk(copy, &idx, 0);
    }
    const char *body;
    size_t blen, u;
    if (shoal__hs_frame(copy, size, &body, &blen, &u) == 1) {
        hs_name hn;
        shoal__hs_parse_name(body, blen, 0, &hn);
        shoal__hs_parse_name(body, blen, 1, &hn);
    }
    int result, port;
    uint32_t creation;
    shoal__epmd_parse_alive2(copy, size, &result, &creation);
    shoal__epmd_parse_port2(copy, size, &port);
    free(copy);
    return 0;
}
