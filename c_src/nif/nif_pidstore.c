/* nif_pidstore.c - how a replica keeps the pid of its remote worker.
 *
 * A remote pid cannot be an ErlNifPid. Here a replica keeps the pid's external term format
 * inline after its key (a u32 length, then the bytes), and its payload word points at it;
 * a lookup decodes it with enif_binary_to_term. */
#include <string.h>

#include "nif_priv.h"

typedef struct pidblob {
    uint32_t len;
    unsigned char bytes[];
} pidblob;

size_t pidstore_extra(ErlNifEnv *env, ERL_NIF_TERM pid)
{
    ErlNifBinary bin;
    if (!enif_is_pid(env, pid) || !enif_term_to_binary(env, pid, &bin)) return 0;
    size_t n = sizeof(pidblob) + bin.size + _Alignof(pidblob);
    enif_release_binary(&bin);
    return n;
}

void pidstore_put(ErlNifEnv *env, nplain *e, ERL_NIF_TERM pid)
{
    ErlNifBinary bin;
    uintptr_t at = (uintptr_t)(e->key + e->re.te.klen);
    at = (at + _Alignof(pidblob) - 1) & ~(uintptr_t)(_Alignof(pidblob) - 1);
    pidblob *b = (pidblob *)at;
    if (!enif_term_to_binary(env, pid, &bin)) { /* pidstore_extra succeeded: not reached */
        b->len = 0;
    } else {
        b->len = (uint32_t)bin.size;
        memcpy(b->bytes, bin.data, bin.size);
        enif_release_binary(&bin);
    }
    e->re.te.fast = (uint64_t)at;
}

ERL_NIF_TERM pidstore_get(ErlNifEnv *env, uint64_t w)
{
    const pidblob *b = (const pidblob *)(uintptr_t)w;
    ERL_NIF_TERM t;
    if (b->len == 0 || enif_binary_to_term(env, b->bytes, b->len, &t, 0) == 0)
        return priv_of(env)->a.undefined;
    return t;
}

void pidstore_drop(nplain *e)
{
    (void)e;
}
