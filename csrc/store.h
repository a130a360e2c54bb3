/* The C parts of the token stores: a file's locked, atomic I/O and a Redis connection over
 * hiredis. The first half is plain C; kf_store_register binds both into kaifang.core. */
#ifndef KAIFANG_STORE_H
#define KAIFANG_STORE_H

#include <stddef.h>

#include <hiredis/hiredis.h>

#include "compat.h"

#define KF_FILE_MAX (256 * 1024) /* a store file is a few hundred bytes; more is a mistake */

/* Reads the whole file into buf (cap bytes). Returns its length, -1 when it does not exist, -2
 * on an error (err set), -3 when it is larger than cap. A file that is a symbolic link, not a
 * regular file, not this user's own, or writable by others is an error, as for kf_file_lock. */
long kf_file_read(const char *path, char *buf, size_t cap, char *err, size_t errlen);

/* Replaces path atomically: a temporary file beside it (mode 0600), written, fsync'd, renamed over
 * path, and the directory fsync'd. Returns 0, or -1 with err set. */
int kf_file_write(const char *path, const char *data, size_t len, char *err, size_t errlen);

/* Opens (creating, mode 0600, close-on-exec, not through a symbolic link) and exclusively flocks
 * path, waiting at most timeout seconds. Returns the descriptor; closing it releases the lock. -1 with err set on an
 * error, -2 on a timeout. */
int kf_file_lock(const char *path, double timeout, char *err, size_t errlen);

/* A rate shared through a file: GCRA (a token bucket of `burst` slots, one every `interval`
 * seconds) over "<key> <time>\n" lines, under an flock, without fsync (a rate need not outlive a
 * crash); the wall clock. Sets *wait to the seconds until the reserved slot. Returns 1 when a slot
 * was reserved, 0 when it would be further away than max_wait (>= 0; nothing reserved), -1 on an
 * error (err set). */
int kf_rate_file(const char *path, const char *key, double interval, double burst, double max_wait, double *wait,
                 char *err, size_t errlen);

/* A Redis connection that (re)connects on demand, authenticating and selecting its database. */
typedef struct kf_redis {
  redisContext *ctx;
  char host[256];
  char password[512];
  size_t password_len;
  int port, has_password;
  int closed;               /* closed by its user: never reconnects */
  long db;
  long connect_timeout_ms, timeout_ms;
} kf_redis;

/* What went wrong: kind is "connect", "auth", "io", "timeout", "protocol" or "closed". */
typedef struct kf_redis_err {
  const char *kind;
  char message[512];
} kf_redis_err;

/* Runs one command. On a broken connection (one made before this call) an idempotent command is
 * sent once more on a fresh connection; a timeout is never repeated. Returns the reply (free it
 * with freeReplyObject; a REDIS_REPLY_ERROR is a reply) or NULL with e set. */
redisReply *kf_redis_command(kf_redis *r, int argc, const char **argv, const size_t *argvlen, int idempotent,
                             kf_redis_err *e);
void kf_redis_close(kf_redis *r);

/* Adds file_read, file_write, file_lock and redis to the module table on top of the stack. */
void kf_store_register(lua_State *L);

#endif
