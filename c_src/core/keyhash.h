/* keyhash.h - the canonical key encoding and the key hash, identical on every side.
 *
 * A key is any Erlang term except funs. Its *canonical bytes* are a normalised external
 * term format (ETF) that the NIF, the pure-Erlang reference (shoal_keyhash.erl) and the C
 * node all produce for the same key, and that binary_to_term/1 decodes back to the key:
 *
 *   131 (version), then recursively:
 *   integer 0..255           SMALL_INTEGER_EXT  97  u8
 *   integer in int32         INTEGER_EXT        98  i32 BE
 *   other integers           SMALL_BIG_EXT     110  n:u8 sign:u8 n bytes LE (n <= 255, no
 *                            LARGE_BIG_EXT     111  n:u32 ...            top zero bytes)
 *   float                    NEW_FLOAT_EXT      70  IEEE-754 BE; -0.0 is written as 0.0
 *   atom                     SMALL_ATOM_UTF8    119 len:u8 UTF-8  (len > 255: ATOM_UTF8 118 u16)
 *   binary                   BINARY_EXT        109  len:u32 bytes
 *   bitstring                BIT_BINARY_EXT     77  len:u32 bits:u8 bytes (unused bits zero)
 *   tuple                    SMALL_TUPLE_EXT   104  arity:u8  (arity > 255: LARGE_TUPLE 105 u32)
 *   []                       NIL_EXT           106
 *   list                     LIST_EXT          108  n:u32 elements tail  (never STRING_EXT)
 *   map                      MAP_EXT           116  n:u32 pairs, sorted by the canonical
 *                                                   bytes of their keys (memcmp, then length)
 *   pid                      NEW_PID_EXT        88  node-atom id:u32 serial:u32 creation:u32
 *   port                     V4_PORT_EXT       120  node-atom id:u64 creation:u32
 *   reference                NEWER_REFERENCE    90  n:u16 node-atom creation:u32 n*u32
 *
 * The hash is keyhash_hash64() over all the canonical bytes (version byte included).
 * test/vectors/keyhash.txt pins both; CUnit and EUnit read it. */
#ifndef SHOAL_KEYHASH_H
#define SHOAL_KEYHASH_H

#include <stddef.h>
#include <stdint.h>

/* Largest canonical key accepted anywhere (bytes). Larger keys are SHOAL_E2BIG. */
#define KEYHASH_MAX_KEY (64 * 1024)
/* Deepest nesting of tuples/lists/maps accepted: every tuple, non-empty list or map is one
 * level; 64 levels pass, 65 are SHOAL_E2BIG. */
#define KEYHASH_MAX_DEPTH 64

/* keyhash_mix64 - the 64-bit finalizer of keyhash_hash64 (MurmurHash3's fmix64): a
 * bijective scramble of all 64 bits. Also what the C node's own hash maps use. */
static inline uint64_t keyhash_mix64(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDULL;
    h ^= h >> 33;
    h *= 0xC4CEB9FE1A85EC53ULL;
    h ^= h >> 33;
    return h;
}

/* keyhash_hash64 - the placement/lookup hash of a key's canonical bytes.
 * `data` may be NULL only when len == 0. Pure function; never fails. */
uint64_t keyhash_hash64(const void *data, size_t len);

/* keyhash_normalize - turn any ETF encoding of a key (with or without the leading 131)
 * into its canonical bytes, in `out` (capacity `cap`).
 * On success returns 0 and sets *outlen. Returns SHOAL_EINVAL for malformed or trailing
 * bytes, SHOAL_ENOTSUP for funs and other unsupported tags, SHOAL_E2BIG when the result
 * would exceed KEYHASH_MAX_KEY or nest deeper than KEYHASH_MAX_DEPTH, and SHOAL_ENOSPC when
 * cap is too small (then *outlen holds the size needed, where known). Never reads past
 * in[inlen - 1]. Thread-safe; allocates only for map sorting (SHOAL_ENOMEM on failure). */
int keyhash_normalize(const unsigned char *in, size_t inlen, unsigned char *out, size_t cap,
                      size_t *outlen);

/* keyhash_normalize_at - keyhash_normalize for a term found `depth` containers deep inside
 * a larger key (the NIF encodes the common shapes itself and hands the rest here), so the
 * KEYHASH_MAX_DEPTH limit counts across both. keyhash_normalize is depth 0. */
int keyhash_normalize_at(const unsigned char *in, size_t inlen, unsigned char *out, size_t cap,
                         size_t *outlen, unsigned depth);

#endif
