/* shoal_err.h - result codes shared by every C layer of Shoal.
 *
 * Functions return 0 on success or one of these negative codes; nothing reports errors
 * through a global. The values are negative errno numbers so they print with strerror(-rc). */
#ifndef SHOAL_ERR_H
#define SHOAL_ERR_H

#include <errno.h>

#define SHOAL_OK 0
#define SHOAL_ENOENT (-ENOENT)     /* no such key / entry */
#define SHOAL_EEXIST (-EEXIST)     /* key already present (a lost claim) */
#define SHOAL_ENOMEM (-ENOMEM)     /* allocation failed; nothing was changed */
#define SHOAL_EINVAL (-EINVAL)     /* malformed input (bad term bytes, bad argument) */
#define SHOAL_E2BIG (-E2BIG)       /* input beyond a documented limit (key too large, too deep) */
#define SHOAL_ENOTSUP (-ENOTSUP)   /* well-formed but unsupported (a fun as a key) */
#define SHOAL_ENOSPC (-ENOSPC)     /* output buffer too small; *needed says how much */

#endif
