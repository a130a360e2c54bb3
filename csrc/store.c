/* The C parts of the token stores (see store.h). Nothing here keeps global state. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "store.h"

#define FILE_LOCK_MT "kaifang.filelock"
#define REDIS_MT "kaifang.redis"
#define MAX_REDIS_ARGS 64

/* ---- files --------------------------------------------------------------------------------- */

static void sys_error(char *err, size_t errlen, const char *what, const char *path) {
  snprintf(err, errlen, "%s %s: %s", what, path, strerror(errno));
}

/* A store or lock file holds a secret, or decides who refreshes it: it must be this user's own
 * regular file, which nobody else can write. Returns 0, or -1 with err set. */
static int check_private(int fd, const char *path, char *err, size_t errlen) {
  struct stat st;
  if (fstat(fd, &st) != 0) {
    sys_error(err, errlen, "cannot stat", path);
    return -1;
  }
  if (!S_ISREG(st.st_mode)) {
    snprintf(err, errlen, "refusing %s: not a regular file", path);
    return -1;
  }
  if (st.st_uid != geteuid()) {
    snprintf(err, errlen, "refusing %s: owned by uid %ld, not by this user (uid %ld)", path, (long)st.st_uid,
             (long)geteuid());
    return -1;
  }
  if (st.st_mode & (S_IWGRP | S_IWOTH)) {
    snprintf(err, errlen, "refusing %s: others can write it (mode %03o; chmod 600 it)", path,
             (unsigned)(st.st_mode & 0777));
    return -1;
  }
  return 0;
}

/* open(2) that neither follows a symbolic link nor waits on a FIFO, and says so: the descriptor,
 * -2 when there is no such file (err set), or -1 with err set. */
static int open_private(const char *path, int flags, char *err, size_t errlen) {
  int fd = open(path, flags | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600);
  if (fd < 0) {
    int missing = errno == ENOENT;
    if (errno == ELOOP) snprintf(err, errlen, "refusing %s: it is a symbolic link", path);
    else sys_error(err, errlen, "cannot open", path);
    return missing ? -2 : -1;
  }
  if (check_private(fd, path, err, errlen) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

long kf_file_read(const char *path, char *buf, size_t cap, char *err, size_t errlen) {
  size_t len = 0;
  int fd = open_private(path, O_RDONLY, err, errlen);
  if (fd < 0) return fd == -2 ? -1 : -2;
  for (;;) {
    ssize_t n;
    if (len == cap) {
      snprintf(err, errlen, "%s is larger than %lu bytes", path, (unsigned long)cap);
      close(fd);
      return -3;
    }
    n = read(fd, buf + len, cap - len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      sys_error(err, errlen, "cannot read", path);
      close(fd);
      return -2;
    }
    if (n == 0) break;
    len += (size_t)n;
  }
  close(fd);
  return (long)len;
}

static int write_all(int fd, const char *data, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, data, len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -1;
    data += n;
    len -= (size_t)n;
  }
  return 0;
}

int kf_file_write(const char *path, const char *data, size_t len, char *err, size_t errlen) {
  char tmp[4096], dir[4096];
  const char *slash = strrchr(path, '/');
  struct timespec ts;
  int fd = -1, attempt;
  if (strlen(path) + 48 > sizeof tmp) {
    snprintf(err, errlen, "path too long");
    return -1;
  }
  for (attempt = 0; attempt < 8 && fd < 0; attempt++) {
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld.%ld", path, (long)getpid(), (long)ts.tv_nsec + attempt);
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 && errno != EEXIST) break;
  }
  if (fd < 0) {
    sys_error(err, errlen, "cannot create a temporary file beside", path);
    return -1;
  }
  if (fchmod(fd, 0600) != 0 || write_all(fd, data, len) != 0 || fsync(fd) != 0) {
    sys_error(err, errlen, "cannot write", tmp);
    close(fd);
    unlink(tmp);
    return -1;
  }
  if (close(fd) != 0) {
    sys_error(err, errlen, "cannot close", tmp);
    unlink(tmp);
    return -1;
  }
  if (rename(tmp, path) != 0) {
    sys_error(err, errlen, "cannot rename over", path);
    unlink(tmp);
    return -1;
  }
  /* the rename itself is durable once the directory is */
  if (slash == NULL) {
    strcpy(dir, ".");
  } else if (slash == path) {
    strcpy(dir, "/");
  } else {
    memcpy(dir, path, (size_t)(slash - path));
    dir[slash - path] = '\0';
  }
  fd = open(dir, O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    fsync(fd); /* some file systems refuse to fsync a directory; the data is in place anyway */
    close(fd);
  }
  return 0;
}

static double monotonic(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void pause_for(double seconds) {
  struct timespec req, rem;
  if (seconds <= 0) return;
  req.tv_sec = (time_t)seconds;
  req.tv_nsec = (long)((seconds - (double)req.tv_sec) * 1e9);
  while (nanosleep(&req, &rem) != 0 && errno == EINTR) req = rem;
}

int kf_file_lock(const char *path, double timeout, char *err, size_t errlen) {
  double deadline = monotonic() + timeout, pause = 0.001;
  int fd = open_private(path, O_RDWR | O_CREAT, err, errlen);
  if (fd < 0) return -1; /* even -2: the directory is missing */
  for (;;) {
    if (flock(fd, LOCK_EX | LOCK_NB) == 0) return fd;
    if (errno == EINTR) continue;
    if (errno != EWOULDBLOCK) {
      sys_error(err, errlen, "cannot lock", path);
      close(fd);
      return -1;
    }
    if (monotonic() >= deadline) {
      snprintf(err, errlen, "timed out waiting for the lock on %s", path);
      close(fd);
      return -2;
    }
    pause_for(pause);
    if (pause < 0.01) pause *= 2;
  }
}

/* ---- a shared rate, GCRA in a locked file -------------------------------------------------- */

static double realtime(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int kf_rate_file(const char *path, const char *key, double interval, double burst, double max_wait, double *wait,
                 char *err, size_t errlen) {
  size_t klen = strlen(key), len = 0, out_len = 0;
  char *buf = NULL, *out = NULL, *line, *end;
  double now, tat, w;
  struct stat st;
  int fd, result = -1;
  for (line = (char *)key; *line; line++) {
    if ((unsigned char)*line <= ' ') {
      snprintf(err, errlen, "a rate key has no spaces or control characters");
      return -1;
    }
  }
  fd = open_private(path, O_RDWR | O_CREAT, err, errlen); /* others' rates are not ours to trust */
  if (fd < 0) return -1;
  while (flock(fd, LOCK_EX) != 0) { /* held for microseconds by whoever has it */
    if (errno != EINTR) {
      sys_error(err, errlen, "cannot lock", path);
      goto done;
    }
  }
  if (fstat(fd, &st) != 0 || st.st_size > KF_FILE_MAX) {
    snprintf(err, errlen, "%s: cannot stat it, or larger than %d bytes", path, KF_FILE_MAX);
    goto done;
  }
  buf = malloc((size_t)st.st_size + 1);
  out = malloc((size_t)st.st_size + klen + 64);
  if (buf == NULL || out == NULL) {
    snprintf(err, errlen, "out of memory");
    goto done;
  }
  while (len < (size_t)st.st_size) {
    ssize_t n = pread(fd, buf + len, (size_t)st.st_size - len, (off_t)len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      sys_error(err, errlen, "cannot read", path);
      goto done;
    }
    if (n == 0) break;
    len += (size_t)n;
  }
  buf[len] = '\0';
  now = realtime();
  tat = now;
  /* lines "<key> <theoretical arrival time>\n"; others' entries idle for a minute are dropped */
  for (line = buf; line < buf + len; line = end + 1) {
    char *space, *stop;
    double t;
    end = memchr(line, '\n', (size_t)(buf + len - line));
    if (end == NULL) end = buf + len;
    space = memchr(line, ' ', (size_t)(end - line));
    if (space == NULL) continue;
    *end = '\0';
    t = strtod(space + 1, &stop);
    if (stop == space + 1) continue;
    if ((size_t)(space - line) == klen && memcmp(line, key, klen) == 0) {
      if (t > tat) tat = t;
    } else if (t >= now - 60) {
      memcpy(out + out_len, line, (size_t)(end - line));
      out_len += (size_t)(end - line);
      out[out_len++] = '\n';
    }
  }
  w = tat - now - (burst - 1) * interval;
  if (w < 0) w = 0;
  *wait = w;
  if (max_wait >= 0 && w > max_wait) {
    result = 0; /* nothing reserved */
    goto done;
  }
  out_len += (size_t)snprintf(out + out_len, klen + 64, "%s %.6f\n", key, tat + interval);
  if (pwrite(fd, out, out_len, 0) != (ssize_t)out_len || ftruncate(fd, (off_t)out_len) != 0) {
    sys_error(err, errlen, "cannot write", path);
    goto done;
  }
  result = 1;
done:
  free(buf);
  free(out);
  close(fd); /* releases the flock */
  return result;
}

/* ---- redis --------------------------------------------------------------------------------- */

static struct timeval to_timeval(long ms) {
  struct timeval tv;
  tv.tv_sec = ms / 1000;
  tv.tv_usec = (ms % 1000) * 1000;
  return tv;
}

void kf_redis_close(kf_redis *r) {
  if (r->ctx) redisFree(r->ctx);
  r->ctx = NULL;
}

static void set_err(kf_redis_err *e, const char *kind, const char *message) {
  e->kind = kind;
  snprintf(e->message, sizeof e->message, "%s", message);
}

/* A reply error of AUTH or SELECT, without anything that could be the password. */
static void reply_err(kf_redis *r, kf_redis_err *e, const char *kind, const char *what, const redisReply *rep) {
  const char *msg = rep && rep->type == REDIS_REPLY_ERROR && rep->str ? rep->str : "unexpected reply";
  if (r->has_password && r->password_len > 0 && strstr(msg, r->password) != NULL) msg = "refused";
  e->kind = kind;
  snprintf(e->message, sizeof e->message, "%s: %s", what, msg);
}

static int redis_connect(kf_redis *r, kf_redis_err *e) {
  redisReply *rep;
  r->ctx = redisConnectWithTimeout(r->host, r->port, to_timeval(r->connect_timeout_ms));
  if (r->ctx == NULL) {
    set_err(e, "connect", "out of memory");
    return -1;
  }
  if (r->ctx->err) {
    e->kind = "connect";
    snprintf(e->message, sizeof e->message, "cannot connect to %s:%d: %s", r->host, r->port, r->ctx->errstr);
    kf_redis_close(r);
    return -1;
  }
  redisSetTimeout(r->ctx, to_timeval(r->timeout_ms));
  if (r->has_password) {
    const char *argv[2];
    size_t lens[2];
    argv[0] = "AUTH";
    lens[0] = 4;
    argv[1] = r->password;
    lens[1] = r->password_len;
    rep = redisCommandArgv(r->ctx, 2, argv, lens);
    if (rep == NULL || rep->type == REDIS_REPLY_ERROR) {
      if (rep == NULL) set_err(e, "io", r->ctx->errstr);
      else reply_err(r, e, "auth", "AUTH", rep);
      if (rep) freeReplyObject(rep);
      kf_redis_close(r);
      return -1;
    }
    freeReplyObject(rep);
  }
  if (r->db != 0) {
    char db[32];
    const char *argv[2];
    size_t lens[2];
    snprintf(db, sizeof db, "%ld", r->db);
    argv[0] = "SELECT";
    lens[0] = 6;
    argv[1] = db;
    lens[1] = strlen(db);
    rep = redisCommandArgv(r->ctx, 2, argv, lens);
    if (rep == NULL || rep->type == REDIS_REPLY_ERROR) {
      if (rep == NULL) set_err(e, "io", r->ctx->errstr);
      else reply_err(r, e, "connect", "SELECT", rep);
      if (rep) freeReplyObject(rep);
      kf_redis_close(r);
      return -1;
    }
    freeReplyObject(rep);
  }
  return 0;
}

redisReply *kf_redis_command(kf_redis *r, int argc, const char **argv, const size_t *argvlen, int idempotent,
                             kf_redis_err *e) {
  int attempt;
  for (attempt = 0; attempt < 2; attempt++) {
    int fresh = r->ctx == NULL, timeout, errcode;
    redisReply *rep;
    if (fresh && redis_connect(r, e) != 0) return NULL;
    errno = 0;
    rep = redisCommandArgv(r->ctx, argc, argv, argvlen);
    if (rep != NULL) return rep;
    errcode = r->ctx->err;
    timeout = errcode == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK);
    if (timeout) {
      snprintf(e->message, sizeof e->message, "no reply from %s:%d within %ld ms", r->host, r->port, r->timeout_ms);
      e->kind = "timeout";
    } else {
      snprintf(e->message, sizeof e->message, "%s:%d: %s", r->host, r->port,
               r->ctx->errstr[0] ? r->ctx->errstr : "connection lost");
      e->kind = errcode == REDIS_ERR_PROTOCOL ? "protocol" : "io";
    }
    kf_redis_close(r); /* a context that failed is not usable again */
    /* a connection kept from before may have been closed by the server meanwhile: one more try */
    if (fresh || timeout || !idempotent || errcode == REDIS_ERR_PROTOCOL) return NULL;
  }
  return NULL;
}

/* ---- Lua binding ----------------------------------------------------------------------------- */

static int push_error(lua_State *L, const char *kind, const char *message) {
  lua_pushnil(L);
  lua_createtable(L, 0, 2);
  lua_pushstring(L, kind);
  lua_setfield(L, -2, "kind");
  lua_pushstring(L, message);
  lua_setfield(L, -2, "message");
  return 2;
}

/* A path argument: a C string, so one with a NUL byte (which would name another file) is refused. */
static const char *check_path(lua_State *L, int idx) {
  size_t len;
  const char *path = luaL_checklstring(L, idx, &len);
  if (memchr(path, '\0', len)) luaL_argerror(L, idx, "a path with a NUL byte");
  return path;
}

/* core.file_read(path) -> content | nil (no such file) | nil, err */
static int l_file_read(lua_State *L) {
  const char *path = check_path(L, 1);
  char err[512];
  int attempt;
  for (attempt = 0; attempt < 3; attempt++) {
    struct stat st;
    size_t cap;
    char *buf;
    long n;
    if (lstat(path, &st) != 0) { /* a symbolic link is refused by kf_file_read */
      if (errno == ENOENT) {
        lua_pushnil(L);
        return 1;
      }
      snprintf(err, sizeof err, "cannot stat %s: %s", path, strerror(errno));
      return push_error(L, "io", err);
    }
    if (st.st_size >= KF_FILE_MAX) break;
    cap = (size_t)st.st_size + 1024; /* it may have been replaced by a longer one meanwhile */
    if (cap > KF_FILE_MAX) cap = KF_FILE_MAX;
    buf = kf_newuserdata(L, cap); /* GC-owned and allocated before the file is open: nothing leaks */
    n = kf_file_read(path, buf, cap, err, sizeof err);
    if (n == -1) {
      lua_pushnil(L);
      return 1;
    }
    if (n == -3 && cap < KF_FILE_MAX) continue;
    if (n < 0) return push_error(L, "io", err);
    lua_pushlstring(L, buf, (size_t)n);
    return 1;
  }
  snprintf(err, sizeof err, "%s is larger than %d bytes", path, KF_FILE_MAX);
  return push_error(L, "io", err);
}

/* core.file_write(path, data) -> true | nil, err */
static int l_file_write(lua_State *L) {
  size_t len;
  const char *path = check_path(L, 1), *data = luaL_checklstring(L, 2, &len);
  char err[512];
  if (kf_file_write(path, data, len, err, sizeof err) != 0) return push_error(L, "io", err);
  lua_pushboolean(L, 1);
  return 1;
}

/* core.rate_file(path, key, interval, burst, max_wait) -> wait | nil, wait (past max_wait; nothing
 * reserved) | nil, err. max_wait < 0: none. */
static int l_rate_file(lua_State *L) {
  const char *path = check_path(L, 1), *key = check_path(L, 2);
  double interval = (double)luaL_checknumber(L, 3), burst = (double)luaL_checknumber(L, 4);
  double max_wait = (double)luaL_checknumber(L, 5), wait = 0;
  char err[512];
  int r;
  /* NaN fails each test; the bounds keep the arithmetic on the file's times finite */
  luaL_argcheck(L, interval > 0 && interval <= 1e6, 3, "a number of seconds above 0, at most 1e6");
  luaL_argcheck(L, burst >= 0 && burst <= 1e9, 4, "a number from 0 to 1e9");
  luaL_argcheck(L, max_wait >= -1e6 && max_wait <= 1e6, 5, "a number of seconds, at most 1e6 (below 0: none)");
  r = kf_rate_file(path, key, interval, burst, max_wait, &wait, err, sizeof err);
  if (r < 0) return push_error(L, "io", err);
  if (r == 0) lua_pushnil(L);
  lua_pushnumber(L, wait);
  return r == 0 ? 2 : 1;
}

typedef struct file_lock {
  int fd;
} file_lock;

static int file_lock_release(lua_State *L) {
  file_lock *l = luaL_checkudata(L, 1, FILE_LOCK_MT);
  int held = l->fd >= 0;
  if (held) close(l->fd); /* releases the flock */
  l->fd = -1;
  lua_pushboolean(L, held);
  return 1;
}

/* core.file_lock(path [, timeout = 10]) -> lock | nil, err ; lock:unlock() (also __gc, __close) */
static int l_file_lock(lua_State *L) {
  const char *path = check_path(L, 1);
  double timeout = (double)luaL_optnumber(L, 2, 10);
  char err[512];
  luaL_argcheck(L, timeout >= 0 && timeout <= 1e6, 2, "a number of seconds from 0 to 1e6"); /* NaN fails */
  file_lock *l = kf_newuserdata(L, sizeof *l);
  l->fd = -1;
  luaL_getmetatable(L, FILE_LOCK_MT);
  lua_setmetatable(L, -2);
  l->fd = kf_file_lock(path, timeout, err, sizeof err);
  if (l->fd == -2) {
    l->fd = -1;
    return push_error(L, "timeout", err);
  }
  if (l->fd < 0) return push_error(L, "io", err);
  return 1;
}

static kf_redis *check_redis(lua_State *L) { return luaL_checkudata(L, 1, REDIS_MT); }

/* close, __close and __gc: the connection is closed for good, its password wiped. */
static int redis_gc(lua_State *L) {
  kf_redis *r = check_redis(L);
  kf_redis_close(r);
  r->closed = 1;
  r->has_password = 0;
  r->password_len = 0;
  {
    volatile char *p = r->password; /* not left in freed memory */
    size_t i;
    for (i = 0; i < sizeof r->password; i++) p[i] = 0;
  }
  return 0;
}

static long opt_timeout(lua_State *L, const char *field, long def) {
  long ms = def;
  lua_getfield(L, 1, field);
  if (!lua_isnil(L, -1)) {
    lua_Number s = lua_tonumber(L, -1);
    if (!lua_isnumber(L, -1) || !(s > 0 && s <= 1e6)) /* NaN fails */
      luaL_error(L, "kaifang.redis: '%s' must be a positive number of seconds, at most 1e6", field);
    ms = (long)(s * 1000 + 0.5);
    if (ms < 1) ms = 1;
  }
  lua_pop(L, 1);
  return ms;
}

static long opt_int(lua_State *L, const char *field, long def, long lo, long hi) {
  long long v = def;
  lua_getfield(L, 1, field);
  if (!lua_isnil(L, -1) && (lua_type(L, -1) != LUA_TNUMBER || !kf_isinteger(L, -1, &v) || v < lo || v > hi))
    luaL_error(L, "kaifang.redis: '%s' must be an integer from %d to %d", field, (int)lo, (int)hi);
  lua_pop(L, 1);
  return (long)v;
}

/* core.redis{ host="127.0.0.1", port=6379, password=, db=0, connect_timeout=2, timeout=2 }: connects on
 * first use, so making one never fails at run time. */
static int l_redis(lua_State *L) {
  kf_redis *r;
  const char *host = "127.0.0.1", *password = NULL;
  size_t hlen = 9, plen = 0;
  if (lua_isnoneornil(L, 1)) {
    lua_settop(L, 0);
    lua_newtable(L);
  }
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_getfield(L, 1, "host");
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TSTRING) return luaL_error(L, "kaifang.redis: 'host' must be a string");
    host = lua_tolstring(L, -1, &hlen);
  }
  lua_getfield(L, 1, "password");
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TSTRING) return luaL_error(L, "kaifang.redis: 'password' must be a string");
    password = lua_tolstring(L, -1, &plen);
  }
  r = kf_newuserdata(L, sizeof *r);
  memset(r, 0, sizeof *r);
  luaL_getmetatable(L, REDIS_MT);
  lua_setmetatable(L, -2);
  if (hlen == 0 || hlen >= sizeof r->host || memchr(host, '\0', hlen))
    return luaL_error(L, "kaifang.redis: 'host' must be a host name or address");
  memcpy(r->host, host, hlen + 1);
  if (password) {
    if (plen >= sizeof r->password || memchr(password, '\0', plen))
      return luaL_error(L, "kaifang.redis: 'password' is too long");
    memcpy(r->password, password, plen + 1);
    r->password_len = plen;
    r->has_password = 1;
  }
  r->port = (int)opt_int(L, "port", 6379, 1, 65535);
  r->db = opt_int(L, "db", 0, 0, 1000000);
  r->connect_timeout_ms = opt_timeout(L, "connect_timeout", 2000);
  r->timeout_ms = opt_timeout(L, "timeout", 2000);
  return 1;
}

static void push_reply(lua_State *L, const redisReply *rep, int nested) {
  size_t i;
  switch (rep->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
      lua_pushlstring(L, rep->str ? rep->str : "", rep->str ? (size_t)rep->len : 0);
      break;
    case REDIS_REPLY_INTEGER:
      lua_pushinteger(L, (lua_Integer)rep->integer);
      break;
    case REDIS_REPLY_ARRAY:
      luaL_checkstack(L, 4, "kaifang.redis: reply nested too deeply");
      lua_createtable(L, (int)rep->elements, 0);
      for (i = 0; i < rep->elements; i++) {
        push_reply(L, rep->element[i], 1);
        lua_rawseti(L, -2, (int)i + 1);
      }
      break;
    default: /* nil: nothing at the top, false inside an array (a hole would end it) */
      if (nested) lua_pushboolean(L, 0);
      else lua_pushnil(L);
  }
}

/* conn:command({ "GET", key, ... } [, idempotent]) -> value (nil for a nil reply) | nil, err
 * err = { kind = "connect"|"auth"|"io"|"timeout"|"protocol"|"reply", message = } */
static int l_redis_command(lua_State *L) {
  kf_redis *r = check_redis(L);
  const char *argv[MAX_REDIS_ARGS];
  size_t lens[MAX_REDIS_ARGS];
  char nums[MAX_REDIS_ARGS][32];
  int argc, i, idempotent = lua_toboolean(L, 3);
  kf_redis_err e;
  redisReply *rep;
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  if (r->closed) return push_error(L, "closed", "the connection is closed");
  argc = (int)kf_rawlen(L, 2);
  if (argc < 1 || argc > MAX_REDIS_ARGS) return luaL_error(L, "kaifang.redis: a command has 1 to %d words", MAX_REDIS_ARGS);
  luaL_checkstack(L, argc, "kaifang.redis: too many words");
  for (i = 0; i < argc; i++) {
    long long iv = 0;
    lua_rawgeti(L, 2, i + 1); /* stays on the stack until the command is sent */
    switch (lua_type(L, -1)) {
      case LUA_TSTRING:
        argv[i] = lua_tolstring(L, -1, &lens[i]);
        break;
      case LUA_TNUMBER:
        if (kf_isinteger(L, -1, &iv)) snprintf(nums[i], sizeof nums[i], "%lld", iv);
        else snprintf(nums[i], sizeof nums[i], "%.17g", (double)lua_tonumber(L, -1));
        argv[i] = nums[i];
        lens[i] = strlen(nums[i]);
        break;
      default:
        return luaL_error(L, "kaifang.redis: word %d of the command must be a string or a number, not %s", i + 1,
                          luaL_typename(L, -1));
    }
  }
  rep = kf_redis_command(r, argc, argv, lens, idempotent, &e);
  if (rep == NULL) return push_error(L, e.kind, e.message);
  if (rep->type == REDIS_REPLY_ERROR) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", rep->str ? rep->str : "error");
    freeReplyObject(rep);
    return push_error(L, "reply", msg);
  }
  push_reply(L, rep, 0);
  freeReplyObject(rep);
  return 1;
}

static int l_redis_tostring(lua_State *L) {
  kf_redis *r = check_redis(L);
  lua_pushfstring(L, "kaifang.redis %s:%d db %d (%s)", r->host, r->port, (int)r->db,
                  r->closed ? "closed" : r->ctx ? "connected" : "not connected");
  return 1;
}

static const luaL_Reg file_lock_methods[] = {{"unlock", file_lock_release}, {NULL, NULL}};
static const luaL_Reg redis_methods[] = {{"command", l_redis_command}, {"close", redis_gc}, {NULL, NULL}};
static const luaL_Reg store_functions[] = {{"file_read", l_file_read},
                                           {"file_write", l_file_write},
                                           {"file_lock", l_file_lock},
                                           {"rate_file", l_rate_file},
                                           {"redis", l_redis},
                                           {NULL, NULL}};

static int file_lock_gc(lua_State *L) {
  file_lock_release(L);
  return 0;
}

void kf_store_register(lua_State *L) {
  kf_newclass(L, FILE_LOCK_MT, file_lock_methods, file_lock_gc);
  kf_newclass(L, REDIS_MT, redis_methods, redis_gc);
  luaL_getmetatable(L, REDIS_MT);
  lua_pushcfunction(L, l_redis_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  kf_setfuncs(L, store_functions);
}
