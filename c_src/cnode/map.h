/* map.h - two small open-addressing hash maps the C node indexes everything with:
 * imap (non-zero 64-bit key -> pointer: processes by id, monitors by ref number) and
 * smap (string key -> pointer: registered names, interned node names). */
#ifndef SHOAL_MAP_H
#define SHOAL_MAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct imap_slot {
    uint64_t key; /* 0 = empty */
    void *val;
} imap_slot;

typedef struct imap {
    imap_slot *slots;
    size_t cap;   /* power of two, or 0 */
    size_t count; /* live entries */
} imap;

void *shoal__imap_get(const imap *m, uint64_t key);
int shoal__imap_put(imap *m, uint64_t key, void *val); /* insert or replace; 0 or -ENOMEM */
void *shoal__imap_del(imap *m, uint64_t key);          /* returns the removed value or NULL */
void shoal__imap_free(imap *m);
/* Iteration: start with *i = 0; returns the next value or NULL when done. Do not insert
 * while iterating; deleting the entry just returned is not allowed either (collect first). */
void *shoal__imap_next(const imap *m, size_t *i, uint64_t *key);

typedef struct smap_slot {
    char *key; /* owned copy; NULL = empty */
    uint32_t hash;
    void *val;
} smap_slot;

typedef struct smap {
    smap_slot *slots;
    size_t cap;
    size_t count;
} smap;

void *shoal__smap_get(const smap *m, const char *key);
void *shoal__smap_getn(const smap *m, const char *key, size_t len); /* key: len bytes, no NUL */
int shoal__smap_put(smap *m, const char *key, void *val); /* copies key; 0 or -ENOMEM */
void *shoal__smap_del(smap *m, const char *key);
void shoal__smap_free(smap *m);

#endif
