/* map.c - open-addressing hash maps with linear probing and backward-shift deletion (no
 * tombstones, so a table that sees a million inserts and deletes stays as small as its live
 * content). Grows at 50% load and halves again when a large table drops under 1/8. */
#include "map.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "keyhash.h" /* keyhash_mix64: the same scramble as the key hash */

static int imap_resize(imap *m, size_t cap)
{
    imap_slot *s = calloc(cap, sizeof *s);
    if (!s)
        return -ENOMEM;
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->slots[i].key)
            continue;
        size_t j = keyhash_mix64(m->slots[i].key) & (cap - 1);
        while (s[j].key)
            j = (j + 1) & (cap - 1);
        s[j] = m->slots[i];
    }
    free(m->slots);
    m->slots = s;
    m->cap = cap;
    return 0;
}

void *shoal__imap_get(const imap *m, uint64_t key)
{
    if (!m->cap || !key)
        return NULL;
    size_t j = keyhash_mix64(key) & (m->cap - 1);
    while (m->slots[j].key) {
        if (m->slots[j].key == key)
            return m->slots[j].val;
        j = (j + 1) & (m->cap - 1);
    }
    return NULL;
}

int shoal__imap_put(imap *m, uint64_t key, void *val)
{
    if (!key)
        return -EINVAL;
    if ((m->count + 1) * 2 > m->cap) {
        int rc = imap_resize(m, m->cap ? m->cap * 2 : 16);
        if (rc)
            return rc;
    }
    size_t j = keyhash_mix64(key) & (m->cap - 1);
    while (m->slots[j].key && m->slots[j].key != key)
        j = (j + 1) & (m->cap - 1);
    if (!m->slots[j].key)
        m->count++;
    m->slots[j].key = key;
    m->slots[j].val = val;
    return 0;
}

void *shoal__imap_del(imap *m, uint64_t key)
{
    if (!m->cap || !key)
        return NULL;
    size_t mask = m->cap - 1, j = keyhash_mix64(key) & mask;
    while (m->slots[j].key && m->slots[j].key != key)
        j = (j + 1) & mask;
    if (!m->slots[j].key)
        return NULL;
    void *val = m->slots[j].val;
    /* backward shift: pull later members of the cluster into the hole */
    size_t hole = j;
    for (size_t k = (j + 1) & mask; m->slots[k].key; k = (k + 1) & mask) {
        size_t home = keyhash_mix64(m->slots[k].key) & mask;
        if (((k - home) & mask) >= ((k - hole) & mask)) {
            m->slots[hole] = m->slots[k];
            hole = k;
        }
    }
    m->slots[hole].key = 0;
    m->slots[hole].val = NULL;
    m->count--;
    if (m->cap > 1024 && m->count * 8 < m->cap)
        (void)imap_resize(m, m->cap / 2); /* on ENOMEM keep the big table */
    return val;
}

void shoal__imap_free(imap *m)
{
    free(m->slots);
    m->slots = NULL;
    m->cap = m->count = 0;
}

void *shoal__imap_next(const imap *m, size_t *i, uint64_t *key)
{
    while (*i < m->cap) {
        imap_slot *s = &m->slots[(*i)++];
        if (s->key) {
            if (key)
                *key = s->key;
            return s->val;
        }
    }
    return NULL;
}

static uint32_t strhash(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static int smap_resize(smap *m, size_t cap)
{
    smap_slot *s = calloc(cap, sizeof *s);
    if (!s)
        return -ENOMEM;
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->slots[i].key)
            continue;
        size_t j = m->slots[i].hash & (cap - 1);
        while (s[j].key)
            j = (j + 1) & (cap - 1);
        s[j] = m->slots[i];
    }
    free(m->slots);
    m->slots = s;
    m->cap = cap;
    return 0;
}

void *shoal__smap_get(const smap *m, const char *key)
{
    if (!m->cap)
        return NULL;
    uint32_t h = strhash(key);
    size_t j = h & (m->cap - 1);
    while (m->slots[j].key) {
        if (m->slots[j].hash == h && strcmp(m->slots[j].key, key) == 0)
            return m->slots[j].val;
        j = (j + 1) & (m->cap - 1);
    }
    return NULL;
}

void *shoal__smap_getn(const smap *m, const char *key, size_t len)
{
    if (!m->cap)
        return NULL;
    uint32_t h = 2166136261u; /* strhash over exactly len bytes */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)key[i]) * 16777619u;
    size_t j = h & (m->cap - 1);
    while (m->slots[j].key) {
        /* a stored key has no NUL inside: equal only if it is exactly these len bytes */
        if (m->slots[j].hash == h && strnlen(m->slots[j].key, len + 1) == len &&
            memcmp(m->slots[j].key, key, len) == 0)
            return m->slots[j].val;
        j = (j + 1) & (m->cap - 1);
    }
    return NULL;
}

int shoal__smap_put(smap *m, const char *key, void *val)
{
    if ((m->count + 1) * 2 > m->cap) {
        int rc = smap_resize(m, m->cap ? m->cap * 2 : 16);
        if (rc)
            return rc;
    }
    uint32_t h = strhash(key);
    size_t j = h & (m->cap - 1);
    while (m->slots[j].key) {
        if (m->slots[j].hash == h && strcmp(m->slots[j].key, key) == 0) {
            m->slots[j].val = val;
            return 0;
        }
        j = (j + 1) & (m->cap - 1);
    }
    char *k = strdup(key);
    if (!k)
        return -ENOMEM;
    m->slots[j].key = k;
    m->slots[j].hash = h;
    m->slots[j].val = val;
    m->count++;
    return 0;
}

void *shoal__smap_del(smap *m, const char *key)
{
    if (!m->cap)
        return NULL;
    uint32_t h = strhash(key);
    size_t mask = m->cap - 1, j = h & mask;
    while (m->slots[j].key && !(m->slots[j].hash == h && strcmp(m->slots[j].key, key) == 0))
        j = (j + 1) & mask;
    if (!m->slots[j].key)
        return NULL;
    void *val = m->slots[j].val;
    free(m->slots[j].key);
    size_t hole = j;
    for (size_t k = (j + 1) & mask; m->slots[k].key; k = (k + 1) & mask) {
        size_t home = m->slots[k].hash & mask;
        if (((k - home) & mask) >= ((k - hole) & mask)) {
            m->slots[hole] = m->slots[k];
            hole = k;
        }
    }
    m->slots[hole].key = NULL;
    m->slots[hole].val = NULL;
    m->count--;
    return val;
}

void shoal__smap_free(smap *m)
{
    for (size_t i = 0; i < m->cap; i++)
        free(m->slots[i].key);
    free(m->slots);
    m->slots = NULL;
    m->cap = m->count = 0;
}
