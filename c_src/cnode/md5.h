/* md5.h - MD5 (RFC 1321) for the distribution handshake digest; ei keeps its own private. */
#ifndef SHOAL_MD5_H
#define SHOAL_MD5_H

#include <stddef.h>
#include <stdint.h>

typedef struct md5_ctx {
    uint32_t a, b, c, d; /* running state */
    uint64_t len;        /* bytes fed so far */
    unsigned char buf[64]; /* partial block */
} md5_ctx;

void shoal__md5_init(md5_ctx *c);
void shoal__md5_update(md5_ctx *c, const void *data, size_t len);
void shoal__md5_final(md5_ctx *c, unsigned char out[16]);

#endif
