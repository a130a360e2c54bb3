/*
 * kaifang.sandbox.httpd: a loopback HTTP server for the sandbox, hosted by libmicrohttpd.
 *
 * MHD's polling thread never touches the lua_State. It collects each request in full
 * (raw URI, headers, body), suspends the connection and queues the request; Lua takes
 * requests with srv:next(), answers them in any order and at any later time with
 * srv:respond() or srv:drop(), which hand the answer back and resume the connection.
 *
 * With tls, it serves HTTPS through libmicrohttpd's TLS (GnuTLS, as Debian builds it), with a
 * private CA and certificate made at start (certs.c, OpenSSL) and session tickets on, and counts
 * full and resumed handshakes.
 *
 * Everything hangs off the server userdata; there is no global state.
 */
#include "certs.h"
#include "compat.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/gnutls.h>
#include <microhttpd.h>

#define SERVER_MT "kaifang.sandbox.httpd.server"
/* A platform request is a few kilobytes: a megabyte per body and 64 MB for all the bodies held
 * at once keep a flood of uploads from taking the machine's memory. */
#define DEFAULT_MAX_BODY ((size_t)1 << 20)
#define DEFAULT_MAX_MEMORY ((size_t)64 << 20)
#define DEFAULT_CONN_LIMIT 1024u
#define CONN_MEMORY ((size_t)32 << 10) /* libmicrohttpd's buffer per connection: headers, reads */
#define MAX_SECONDS 1e6

enum req_state {
  ST_NEW,      /* headers/body being collected by MHD's thread */
  ST_QUEUED,   /* waiting for srv:next() */
  ST_PENDING,  /* handed to Lua, waiting for respond/drop */
  ST_ANSWERED, /* Lua set a response; the connection is being resumed */
  ST_DROPPED,  /* Lua wants the connection closed without an answer */
  ST_LOCAL     /* answered by C itself (400, 413, 503) */
};

typedef struct {
  char *data;
  size_t len, cap;
} sbuf;

typedef struct kf_req {
  struct kf_req *qnext; /* FIFO queue link */
  struct kf_req *hnext; /* pending hash chain link */
  struct kf_server *srv;
  struct MHD_Connection *conn;
  long long id;
  enum req_state state;
  int started, reset, oom;
  unsigned refuse;      /* a status C answers with once the body is in (413, 503), or 0 */
  int n_length, chunked; /* Content-Length headers seen; Transfer-Encoding: chunked */
  char *length;         /* the first Content-Length's value */
  char *uri; /* raw request target as sent, query included */
  char *method, *version;
  char remote[80];
  sbuf headers; /* "name\0value\0" pairs, names lower-cased */
  sbuf body;    /* its capacity counts in the server's memory */
} kf_req;

/* A connection, from accept to close: its headers must be in by deadline (0: none pending). */
typedef struct kf_conn {
  struct kf_conn *next, *prev;
  int fd;
  struct timespec deadline;
  int waiting; /* for a request's headers */
  int counted; /* its TLS handshake is in the counters */
} kf_conn;

typedef struct kf_server {
  struct MHD_Daemon *daemon;
  pthread_mutex_t mu;
  pthread_cond_t arrived; /* a request was queued */
  pthread_cond_t settled; /* an answered request finished on the wire */
  kf_req *qhead, *qtail;
  kf_req **buckets; /* pending requests by id; ids are sequential, so id & mask spreads them */
  size_t nbuckets, npending, nqueued, nanswering;
  long long next_id;
  size_t max_body, max_memory, memory; /* memory: the bodies' buffers, now */
  double header_timeout;
  kf_conn *conns;       /* every open connection */
  pthread_t watchdog;
  pthread_cond_t tick;  /* wakes the watchdog to stop */
  int watching, stopping;
  unsigned port;
  int verbose;
  int tls;
  kf_certs certs;
  gnutls_datum_t ticket_key; /* encrypts the session tickets that resume a TLS session */
  long long accepted, tls_full, tls_resumed; /* connections; handshakes: full, resumed */
  char cadir[512], cafile[528]; /* a private directory with the CA certificate, when tls */
  char host[256];
  char lasterr[256];
} kf_server;

typedef struct {
  kf_server *s;
} server_ud;

/* ---------------------------------------------------------------- helpers */

static int sbuf_add(sbuf *b, const char *p, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    char *q;
    while (cap < b->len + n + 1) cap *= 2;
    q = realloc(b->data, cap);
    if (q == NULL) return -1;
    b->data = q;
    b->cap = cap;
  }
  if (n) memcpy(b->data + b->len, p, n);
  b->len += n;
  b->data[b->len] = '\0';
  return 0;
}

static void sbuf_free(sbuf *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

static char *dupstr(const char *s) {
  size_t n = strlen(s) + 1;
  char *p = malloc(n);
  if (p) memcpy(p, s, n);
  return p;
}

static void lock(kf_server *s) {
  if (pthread_mutex_lock(&s->mu) != 0) abort(); /* only fails on a corrupted mutex */
}

static void unlock(kf_server *s) {
  if (pthread_mutex_unlock(&s->mu) != 0) abort();
}

/* ts = now + secs on the monotonic clock; secs is finite, 0..MAX_SECONDS. */
static void now_plus(struct timespec *ts, double secs) {
  clock_gettime(CLOCK_MONOTONIC, ts);
  ts->tv_sec += (time_t)secs;
  ts->tv_nsec += (long)((secs - (double)(time_t)secs) * 1e9);
  if (ts->tv_nsec >= 1000000000L) {
    ts->tv_sec += 1;
    ts->tv_nsec -= 1000000000L;
  }
}

/* Waits on cv until woken or the deadline passes; returns nonzero on timeout. */
static int wait_until(kf_server *s, pthread_cond_t *cv, const struct timespec *deadline) {
  int rc;
  if (deadline == NULL) {
    rc = pthread_cond_wait(cv, &s->mu);
    if (rc != 0) abort();
    return 0;
  }
  rc = pthread_cond_timedwait(cv, &s->mu, deadline);
  if (rc != 0 && rc != ETIMEDOUT) abort();
  return rc == ETIMEDOUT;
}

/* Body buffers, counted against the server's memory cap; called with the lock held. */
static void body_release(kf_server *s, kf_req *r) {
  s->memory -= r->body.cap;
  sbuf_free(&r->body);
}

/* Makes room for n more body bytes: exactly the announced length at first, else doubling. 0, or
 * -1 when the server's memory cap (or malloc) says no. */
static int body_reserve(kf_server *s, kf_req *r, size_t n) {
  size_t want = r->body.len + n + 1, cap;
  char *q;
  int ok = 1;
  if (want <= r->body.cap) return 0;
  cap = r->body.cap ? r->body.cap * 2 : 256;
  if (r->body.cap == 0 && r->length) {
    size_t announced = (size_t)strtoull(r->length, NULL, 10) + 1;
    if (announced <= s->max_body + 1 && announced > cap) cap = announced;
  }
  while (cap < want) cap *= 2;
  if (cap > s->max_body + 1) cap = s->max_body + 1 > want ? s->max_body + 1 : want;
  lock(s);
  if (s->memory + (cap - r->body.cap) > s->max_memory) ok = 0;
  else s->memory += cap - r->body.cap;
  unlock(s);
  if (!ok) return -1;
  q = realloc(r->body.data, cap);
  if (q == NULL) {
    lock(s);
    s->memory -= cap - r->body.cap;
    unlock(s);
    return -1;
  }
  r->body.data = q;
  r->body.cap = cap;
  return 0;
}

static void req_free(kf_req *r) {
  if (r->body.cap) {
    lock(r->srv);
    body_release(r->srv, r);
    unlock(r->srv);
  }
  free(r->length);
  free(r->uri);
  free(r->method);
  free(r->version);
  sbuf_free(&r->headers);
  sbuf_free(&r->body);
  free(r);
}

/* Pending map, called with the lock held. */
static int pending_put(kf_server *s, kf_req *r) {
  size_t i;
  if (s->npending + 1 > s->nbuckets) {
    size_t n = s->nbuckets ? s->nbuckets * 2 : 256;
    kf_req **nb = calloc(n, sizeof *nb);
    if (nb == NULL) return -1;
    for (i = 0; i < s->nbuckets; i++) {
      kf_req *e = s->buckets[i];
      while (e) {
        kf_req *next = e->hnext;
        size_t j = (size_t)e->id & (n - 1);
        e->hnext = nb[j];
        nb[j] = e;
        e = next;
      }
    }
    free(s->buckets);
    s->buckets = nb;
    s->nbuckets = n;
  }
  i = (size_t)r->id & (s->nbuckets - 1);
  r->hnext = s->buckets[i];
  s->buckets[i] = r;
  s->npending++;
  return 0;
}

static kf_req *pending_take(kf_server *s, long long id) {
  kf_req **pp;
  if (s->nbuckets == 0) return NULL;
  for (pp = &s->buckets[(size_t)id & (s->nbuckets - 1)]; *pp; pp = &(*pp)->hnext) {
    if ((*pp)->id == id) {
      kf_req *r = *pp;
      *pp = r->hnext;
      r->hnext = NULL;
      s->npending--;
      return r;
    }
  }
  return NULL;
}

/* ------------------------------------------------------ MHD's thread side */

static void on_log(void *cls, const char *fmt, va_list ap) {
  kf_server *s = cls;
  char msg[sizeof s->lasterr];
  size_t n;
  vsnprintf(msg, sizeof msg, fmt, ap);
  n = strlen(msg);
  while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = '\0';
  lock(s);
  memcpy(s->lasterr, msg, n + 1);
  unlock(s);
  if (s->verbose) fprintf(stderr, "kaifang.sandbox.httpd: %s\n", msg);
}

/* The URI log callback sees the request target exactly as sent (before MHD unescapes it
   and splits off the query), and whatever it returns becomes the request's context. */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn) {
  kf_req *r = calloc(1, sizeof *r);
  (void)conn;
  if (r == NULL) return NULL;
  r->srv = cls;
  r->uri = dupstr(uri ? uri : "");
  if (r->uri == NULL) {
    free(r);
    return NULL;
  }
  return r;
}

static enum MHD_Result collect_header(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
  kf_req *r = cls;
  size_t i, n;
  (void)kind;
  if (key == NULL) return MHD_YES;
  n = strlen(key);
  if (sbuf_add(&r->headers, key, n + 1) != 0) {
    r->oom = 1;
    return MHD_NO;
  }
  for (i = r->headers.len - n - 1; i < r->headers.len; i++) {
    char c = r->headers.data[i];
    if (c >= 'A' && c <= 'Z') r->headers.data[i] = (char)(c - 'A' + 'a');
  }
  if (value == NULL) value = "";
  if (sbuf_add(&r->headers, value, strlen(value) + 1) != 0) {
    r->oom = 1;
    return MHD_NO;
  }
  if (strcasecmp(key, "Content-Length") == 0) {
    /* two that differ make the body's end ambiguous (request smuggling): refused with a 400 */
    if (r->n_length++ == 0) r->length = dupstr(value);
    else if (r->length == NULL || strcmp(r->length, value) != 0) r->n_length = -1000;
    if (r->length == NULL) r->oom = 1;
  } else if (strcasecmp(key, "Transfer-Encoding") == 0) {
    r->chunked = 1;
  }
  return MHD_YES;
}

/* ---------------------------------------------- connections and their header deadline */

/* A connection waits for a request's headers from its start and after each answer: a client
 * that sends them a byte at a time (or never) is cut at the deadline, so that slow clients
 * cannot hold every connection the server allows. */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code) {
  kf_server *s = cls;
  kf_conn *c = *socket_context;
  if (code == MHD_CONNECTION_NOTIFY_STARTED) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    c = calloc(1, sizeof *c);
    if (c == NULL) return; /* not watched; libmicrohttpd's idle timeout still applies */
    c->fd = ci ? ci->connect_fd : -1;
    c->waiting = 1;
    if (s->tls) { /* before the handshake, which happens in libmicrohttpd's loop */
      const union MHD_ConnectionInfo *ti = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
      if (ti && ti->tls_session) (void)gnutls_session_ticket_enable_server(ti->tls_session, &s->ticket_key);
    }
    now_plus(&c->deadline, s->header_timeout);
    lock(s);
    s->accepted++;
    c->next = s->conns;
    if (s->conns) s->conns->prev = c;
    s->conns = c;
    unlock(s);
    *socket_context = c;
  } else if (c != NULL) { /* closed: before libmicrohttpd closes the descriptor */
    lock(s);
    if (c->prev) c->prev->next = c->next;
    else s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    unlock(s);
    free(c);
    *socket_context = NULL;
  }
}

static kf_conn *conn_of(struct MHD_Connection *conn) {
  const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
  return ci ? ci->socket_context : NULL;
}

/* A TLS connection's handshake, once it is done (its first request), in the counters. */
static void count_handshake(kf_server *s, struct MHD_Connection *conn) {
  kf_conn *c = conn_of(conn);
  const union MHD_ConnectionInfo *ti;
  int resumed;
  if (!s->tls || c == NULL || c->counted) return;
  c->counted = 1;
  ti = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
  resumed = ti && ti->tls_session && gnutls_session_is_resumed(ti->tls_session);
  lock(s);
  if (resumed) s->tls_resumed++;
  else s->tls_full++;
  unlock(s);
}

/* Marks whether conn waits for a request's headers (from now on). */
static void conn_waiting(kf_server *s, struct MHD_Connection *conn, int waiting) {
  kf_conn *c = conn_of(conn);
  if (c == NULL) return;
  lock(s);
  c->waiting = waiting;
  if (waiting) now_plus(&c->deadline, s->header_timeout);
  unlock(s);
}

static int passed(const struct timespec *now, const struct timespec *t) {
  return now->tv_sec > t->tv_sec || (now->tv_sec == t->tv_sec && now->tv_nsec >= t->tv_nsec);
}

static void *watchdog(void *cls) {
  kf_server *s = cls;
  lock(s);
  while (!s->stopping) {
    struct timespec now, next;
    kf_conn *c;
    now_plus(&next, 0.1);
    clock_gettime(CLOCK_MONOTONIC, &now);
    for (c = s->conns; c; c = c->next) {
      if (c->waiting && c->fd >= 0 && passed(&now, &c->deadline)) {
        c->waiting = 0;
        /* the descriptor stays libmicrohttpd's: it sees the end of the stream and closes it */
        (void)shutdown(c->fd, SHUT_RDWR);
      }
    }
    (void)wait_until(s, &s->tick, &next);
  }
  unlock(s);
  return NULL;
}

static void note_remote(kf_req *r, struct MHD_Connection *conn) {
  const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
  char host[64], serv[16];
  socklen_t len;
  if (ci == NULL || ci->client_addr == NULL) return;
  len = ci->client_addr->sa_family == AF_INET6 ? (socklen_t)sizeof(struct sockaddr_in6)
                                                : (socklen_t)sizeof(struct sockaddr_in);
  if (getnameinfo(ci->client_addr, len, host, sizeof host, serv, sizeof serv, NI_NUMERICHOST | NI_NUMERICSERV) != 0)
    return;
  snprintf(r->remote, sizeof r->remote, ci->client_addr->sa_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host, serv);
}

static enum MHD_Result answer_locally(struct MHD_Connection *conn, unsigned status, const char *text) {
  struct MHD_Response *resp = MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);
  enum MHD_Result ret;
  if (resp == NULL) return MHD_NO;
  if (MHD_add_response_header(resp, "Content-Type", "text/plain; charset=utf-8") != MHD_YES ||
      MHD_add_response_header(resp, "Connection", "close") != MHD_YES) {
    MHD_destroy_response(resp);
    return MHD_NO;
  }
  ret = MHD_queue_response(conn, status, resp);
  MHD_destroy_response(resp);
  return ret;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                 const char *version, const char *upload_data, size_t *upload_data_size,
                                 void **con_cls) {
  kf_server *s = cls;
  kf_req *r = *con_cls;
  enum req_state st;
  (void)url;
  if (r == NULL) return MHD_NO; /* out of memory in on_uri */

  lock(s);
  st = r->state;
  unlock(s);

  switch (st) {
  case ST_NEW:
    if (!r->started) {
      r->started = 1;
      r->conn = conn;
      conn_waiting(s, conn, 0); /* the headers are in */
      count_handshake(s, conn);
      r->method = dupstr(method);
      r->version = dupstr(version ? version : "");
      if (r->method == NULL || r->version == NULL) return MHD_NO;
      (void)MHD_get_connection_values(conn, MHD_HEADER_KIND, collect_header, r);
      if (r->oom) return MHD_NO;
      note_remote(r, conn);
      if (r->n_length < 0 || (r->n_length > 0 && r->chunked)) {
        r->state = ST_LOCAL;
        return answer_locally(conn, 400, "conflicting Content-Length or Transfer-Encoding\n");
      }
      return MHD_YES;
    }
    if (*upload_data_size > 0) {
      /* past a cap, keep reading (and discarding) so that the answer can be sent cleanly */
      if (!r->refuse) {
        if (r->body.len + *upload_data_size > s->max_body) r->refuse = 413;
        else if (body_reserve(s, r, *upload_data_size) != 0) r->refuse = 503;
        if (r->refuse) {
          lock(s);
          body_release(s, r);
          unlock(s);
        } else {
          memcpy(r->body.data + r->body.len, upload_data, *upload_data_size);
          r->body.len += *upload_data_size;
          r->body.data[r->body.len] = '\0';
        }
      }
      *upload_data_size = 0;
      return MHD_YES;
    }
    if (r->refuse) {
      r->state = ST_LOCAL;
      return answer_locally(conn, r->refuse, r->refuse == 413 ? "request body too large\n"
                                                              : "server busy: too many request bodies held at once\n");
    }
    /* Suspend before queueing: once queued, Lua may resume at any moment, and resuming
       a connection that is not suspended is undefined. */
    MHD_suspend_connection(conn);
    lock(s);
    r->id = ++s->next_id;
    r->state = ST_QUEUED;
    if (s->qtail) s->qtail->qnext = r;
    else s->qhead = r;
    s->qtail = r;
    s->nqueued++;
    if (pthread_cond_signal(&s->arrived) != 0) abort();
    unlock(s);
    return MHD_YES;

  case ST_ANSWERED: /* queued while suspended (see l_respond): here only if that failed */
  case ST_DROPPED:
    return MHD_NO; /* MHD closes the connection */

  case ST_QUEUED:
  case ST_PENDING:
  case ST_LOCAL:
  default:
    *upload_data_size = 0;
    return MHD_YES;
  }
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe) {
  kf_server *s = cls;
  kf_req *r = *con_cls;
  (void)toe;
  if (r == NULL) return;
  *con_cls = NULL;
  conn_waiting(s, conn, 1); /* kept alive: the next request's headers are due */
  lock(s);
  if (r->state == ST_ANSWERED || r->state == ST_DROPPED) {
    if (--s->nanswering == 0 && pthread_cond_broadcast(&s->settled) != 0) abort();
  } else if (r->state == ST_PENDING) {
    /* cannot happen while suspended; if MHD ever does it, keep Lua from a dangling id */
    pending_take(s, r->id);
  } else if (r->state == ST_QUEUED) {
    kf_req **pp = &s->qhead, *prev = NULL;
    while (*pp && *pp != r) {
      prev = *pp;
      pp = &(*pp)->qnext;
    }
    if (*pp) {
      *pp = r->qnext;
      if (s->qtail == r) s->qtail = prev;
      s->nqueued--;
    }
  }
  unlock(s);
  req_free(r);
}

/* --------------------------------------------------------------- Lua side */

static kf_server *check_server(lua_State *L) {
  server_ud *u = luaL_checkudata(L, 1, SERVER_MT);
  if (u->s == NULL) luaL_error(L, "kaifang.sandbox.httpd: server is closed");
  return u->s;
}

/* A number option within [lo, hi] (NaN is not). */
static lua_Number opt_number_field(lua_State *L, int idx, const char *k, lua_Number dflt, lua_Number lo, lua_Number hi) {
  lua_Number v;
  lua_getfield(L, idx, k);
  if (lua_isnil(L, -1)) v = dflt;
  else if (lua_type(L, -1) == LUA_TNUMBER) v = lua_tonumber(L, -1);
  else return luaL_error(L, "kaifang.sandbox.httpd: option '%s' must be a number", k);
  if (!(v >= lo && v <= hi)) luaL_error(L, "kaifang.sandbox.httpd: option '%s' must be from %f to %f", k, lo, hi);
  lua_pop(L, 1);
  return v;
}

/* A timeout argument: finite and within range, at least 0; dflt when none. */
static double opt_seconds(lua_State *L, int idx, double dflt) {
  lua_Number t;
  if (lua_isnoneornil(L, idx)) return dflt;
  t = luaL_checknumber(L, idx);
  luaL_argcheck(L, t == t && t <= MAX_SECONDS, idx, "a number of seconds up to 1e6");
  return t > 0 ? t : 0;
}

static void server_destroy(kf_server *s) {
  if (s->cafile[0]) (void)unlink(s->cafile);
  if (s->cadir[0]) (void)rmdir(s->cadir);
  if (s->ticket_key.data) {
    gnutls_memset(s->ticket_key.data, 0, s->ticket_key.size);
    gnutls_free(s->ticket_key.data);
  }
  kf_certs_free(&s->certs);
  pthread_cond_destroy(&s->tick);
  pthread_cond_destroy(&s->arrived);
  pthread_cond_destroy(&s->settled);
  pthread_mutex_destroy(&s->mu);
  free(s->buckets);
  free(s);
}

static int init_sync(kf_server *s) {
  pthread_condattr_t ca;
  if (pthread_mutex_init(&s->mu, NULL) != 0) return -1;
  if (pthread_condattr_init(&ca) != 0) goto fail_mu;
  /* timed waits run on the monotonic clock, so a wall-clock jump cannot stall next() */
  if (pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) != 0) goto fail_ca;
  if (pthread_cond_init(&s->arrived, &ca) != 0) goto fail_ca;
  if (pthread_cond_init(&s->settled, &ca) != 0) goto fail_arrived;
  if (pthread_cond_init(&s->tick, &ca) != 0) goto fail_settled;
  pthread_condattr_destroy(&ca);
  return 0;
fail_settled:
  pthread_cond_destroy(&s->settled);
fail_arrived:
  pthread_cond_destroy(&s->arrived);
fail_ca:
  pthread_condattr_destroy(&ca);
fail_mu:
  pthread_mutex_destroy(&s->mu);
  return -1;
}

#define MAX_NAMES 16

/* tls = true (localhost and the loopback addresses) or { names = { host or IP, ... } }: the names
 * the certificate is for, into names; how many (0: no TLS). */
static size_t opt_tls(lua_State *L, int idx, const char **names) {
  static const char *const loopback[] = {"localhost", "127.0.0.1", "::1"};
  size_t n = 0;
  lua_getfield(L, idx, "tls"); /* stays on the stack: it holds the names */
  if (lua_isnil(L, -1) || (lua_isboolean(L, -1) && !lua_toboolean(L, -1))) return 0;
  if (lua_isboolean(L, -1)) {
    for (n = 0; n < 3; n++) names[n] = loopback[n];
    return n;
  }
  if (!lua_istable(L, -1)) luaL_error(L, "kaifang.sandbox.httpd: option 'tls' must be a boolean or { names = {...} }");
  lua_getfield(L, -1, "names");
  if (!lua_istable(L, -1)) luaL_error(L, "kaifang.sandbox.httpd: option 'tls' needs names = { host or IP, ... }");
  for (n = 0; n < MAX_NAMES; n++) {
    lua_rawgeti(L, -1 - (int)n, (lua_Integer)n + 1);
    if (lua_isnil(L, -1)) break;
    if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "kaifang.sandbox.httpd: tls names must be strings");
    names[n] = kf_checkcstring(L, -1);
  }
  if (n == 0) luaL_error(L, "kaifang.sandbox.httpd: tls names must list 1 to %d names", MAX_NAMES);
  return n;
}

/* The certificates, the CA certificate's file in a private directory, and the session ticket key;
 * 0, or -1 with a message in lasterr. */
static int tls_setup(kf_server *s, const char *const *names, size_t n) {
  const char *tmp = getenv("TMPDIR");
  int fd;
  size_t len;
  ssize_t w;
  if (kf_certs_make(&s->certs, names, n, s->lasterr, sizeof s->lasterr) != 0) return -1;
  if (gnutls_session_ticket_key_generate(&s->ticket_key) != 0) {
    snprintf(s->lasterr, sizeof s->lasterr, "cannot make a session ticket key");
    return -1;
  }
  if (tmp == NULL || *tmp == '\0' || strlen(tmp) > 400) tmp = "/tmp";
  snprintf(s->cadir, sizeof s->cadir, "%s/kaifang-sandbox-XXXXXX", tmp);
  if (mkdtemp(s->cadir) == NULL) { /* mode 0700 */
    snprintf(s->lasterr, sizeof s->lasterr, "cannot make a directory in %.200s: %s", tmp, strerror(errno));
    s->cadir[0] = '\0';
    return -1;
  }
  snprintf(s->cafile, sizeof s->cafile, "%s/ca.pem", s->cadir);
  fd = open(s->cafile, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  len = strlen(s->certs.ca_pem);
  w = fd < 0 ? -1 : write(fd, s->certs.ca_pem, len);
  if (fd < 0 || w != (ssize_t)len || close(fd) != 0) {
    snprintf(s->lasterr, sizeof s->lasterr, "cannot write the CA file: %s", strerror(errno));
    return -1;
  }
  return 0;
}

/* httpd.listen{ host=, port=, max_body=, max_memory=, connection_limit=, connection_timeout=,
   header_timeout=, threads=, verbose=, tls= } -> server | nil, errmsg */
static int l_listen(lua_State *L) {
  const char *host = "127.0.0.1";
  lua_Number port = 0, max_body = (lua_Number)DEFAULT_MAX_BODY, max_memory = (lua_Number)DEFAULT_MAX_MEMORY,
             limit = DEFAULT_CONN_LIMIT, timeout = 300, header_timeout = 10, threads = 1;
  int verbose = 0, rc;
  struct addrinfo hints, *ai = NULL;
  struct sockaddr_storage addr;
  unsigned flags;
  kf_server *s;
  server_ud *u;
  const union MHD_DaemonInfo *di;
  char portstr[16];
  const char *names[MAX_NAMES];
  size_t nnames = 0;
  struct MHD_OptionItem tlsopts[3];

  if (!lua_isnoneornil(L, 1)) {
    luaL_checktype(L, 1, LUA_TTABLE);
    port = opt_number_field(L, 1, "port", 0, 0, 65535);
    max_body = opt_number_field(L, 1, "max_body", max_body, 0, 1u << 30);
    max_memory = opt_number_field(L, 1, "max_memory", max_memory, 0, 1ull << 40);
    limit = opt_number_field(L, 1, "connection_limit", limit, 1, 65536);
    timeout = opt_number_field(L, 1, "connection_timeout", timeout, 0, 86400);
    header_timeout = opt_number_field(L, 1, "header_timeout", header_timeout, 0.01, 86400);
    threads = opt_number_field(L, 1, "threads", threads, 1, 64);
    lua_getfield(L, 1, "verbose");
    verbose = lua_toboolean(L, -1);
    nnames = opt_tls(L, 1, names);
    lua_getfield(L, 1, "host"); /* stays on the stack while it is used: __index may have made it */
    if (!lua_isnil(L, -1)) {
      size_t len;
      host = luaL_checklstring(L, -1, &len);
      if (memchr(host, '\0', len)) return luaL_error(L, "kaifang.sandbox.httpd: host contains a NUL byte");
    }
  }
  if (strlen(host) >= sizeof s->host) return luaL_error(L, "kaifang.sandbox.httpd: host too long");

  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  snprintf(portstr, sizeof portstr, "%u", (unsigned)port);
  rc = getaddrinfo(host, portstr, &hints, &ai);
  if (rc != 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "cannot resolve %s: %s", host, gai_strerror(rc));
    return 2;
  }
  memset(&addr, 0, sizeof addr);
  memcpy(&addr, ai->ai_addr, ai->ai_addrlen < sizeof addr ? ai->ai_addrlen : sizeof addr);
  freeaddrinfo(ai);

  /* the userdata exists before any C resource, so a Lua error cannot leak the daemon */
  u = kf_newuserdata(L, sizeof *u);
  u->s = NULL;
  luaL_getmetatable(L, SERVER_MT);
  lua_setmetatable(L, -2);

  s = calloc(1, sizeof *s);
  if (s == NULL) return luaL_error(L, "kaifang.sandbox.httpd: out of memory");
  if (init_sync(s) != 0) {
    free(s);
    return luaL_error(L, "kaifang.sandbox.httpd: cannot initialise mutex/condvar");
  }
  s->max_body = (size_t)max_body;
  s->max_memory = (size_t)max_memory;
  s->header_timeout = header_timeout;
  s->verbose = verbose;
  memcpy(s->host, host, strlen(host) + 1);

  /* poll(), not MHD_USE_AUTO's epoll: libmicrohttpd 0.9.75's edge-triggered epoll loop with
     suspend/resume can lose a connection's read readiness, and then every keep-alive connection
     sits with a request unread in the kernel until the client times out (seen at 128 clients) */
  flags = MHD_USE_POLL | MHD_USE_INTERNAL_POLLING_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ITC | MHD_USE_ERROR_LOG;
  if (addr.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
  memset(tlsopts, 0, sizeof tlsopts); /* MHD_OPTION_END, unless TLS */
  if (nnames > 0) {
    s->tls = 1;
    if (tls_setup(s, names, nnames) != 0) {
      lua_pushnil(L);
      lua_pushfstring(L, "cannot serve HTTPS: %s", s->lasterr);
      server_destroy(s);
      return 2;
    }
    flags |= MHD_USE_TLS;
    tlsopts[0].option = MHD_OPTION_HTTPS_MEM_KEY;
    tlsopts[0].ptr_value = s->certs.key_pem;
    tlsopts[1].option = MHD_OPTION_HTTPS_MEM_CERT;
    tlsopts[1].ptr_value = s->certs.cert_pem;
  }
  s->daemon = MHD_start_daemon(
      flags, (uint16_t)port /* bound through SOCK_ADDR; here for libmicrohttpd's messages */, NULL, NULL, on_access, s, MHD_OPTION_EXTERNAL_LOGGER, on_log, s, MHD_OPTION_SOCK_ADDR,
      (struct sockaddr *)&addr, MHD_OPTION_URI_LOG_CALLBACK, on_uri, s, MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
      MHD_OPTION_NOTIFY_CONNECTION, on_connection, s, MHD_OPTION_CONNECTION_MEMORY_LIMIT, CONN_MEMORY,
      MHD_OPTION_CONNECTION_LIMIT, (unsigned)limit, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)timeout,
      MHD_OPTION_THREAD_POOL_SIZE, (unsigned)threads, MHD_OPTION_ARRAY, tlsopts, MHD_OPTION_END);
  if (s->daemon == NULL) {
    lua_pushnil(L);
    lua_pushfstring(L, "cannot listen on %s:%d%s%s", host, (int)port, s->lasterr[0] ? ": " : "", s->lasterr);
    server_destroy(s);
    return 2;
  }
  di = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
  s->port = di ? di->port : (unsigned)port;
  u->s = s;
  if (pthread_create(&s->watchdog, NULL, watchdog, s) != 0)
    return luaL_error(L, "kaifang.sandbox.httpd: cannot start the header watchdog"); /* __gc stops the rest */
  s->watching = 1;
  return 1;
}

/* srv:next([timeout]) -> request table | nil on timeout. No timeout waits forever. */
static int l_next(lua_State *L) {
  kf_server *s = check_server(L);
  struct timespec deadline;
  int timed = !lua_isnoneornil(L, 2);
  kf_req *r;
  const char *q, *p, *end;

  if (timed) now_plus(&deadline, opt_seconds(L, 2, 0));
  lock(s);
  while (s->qhead == NULL) {
    if (wait_until(s, &s->arrived, timed ? &deadline : NULL)) break;
  }
  r = s->qhead;
  if (r) {
    if (pending_put(s, r) != 0) {
      unlock(s);
      return luaL_error(L, "kaifang.sandbox.httpd: out of memory");
    }
    s->qhead = r->qnext;
    if (s->qhead == NULL) s->qtail = NULL;
    r->qnext = NULL;
    s->nqueued--;
    r->state = ST_PENDING;
  }
  unlock(s);
  if (r == NULL) {
    lua_pushnil(L);
    return 1;
  }

  /* MHD's thread leaves a suspended request alone, so its fields are read without the lock */
  lua_createtable(L, 0, 9);
  lua_pushinteger(L, (lua_Integer)r->id);
  lua_setfield(L, -2, "id");
  lua_pushstring(L, r->method);
  lua_setfield(L, -2, "method");
  lua_pushstring(L, r->version);
  lua_setfield(L, -2, "version");
  lua_pushstring(L, r->uri);
  lua_setfield(L, -2, "uri");
  q = strchr(r->uri, '?');
  lua_pushlstring(L, r->uri, q ? (size_t)(q - r->uri) : strlen(r->uri));
  lua_setfield(L, -2, "path");
  lua_pushstring(L, q ? q + 1 : "");
  lua_setfield(L, -2, "query");
  lua_pushstring(L, r->remote);
  lua_setfield(L, -2, "remote");
  lua_pushlstring(L, r->body.data ? r->body.data : "", r->body.len);
  lua_setfield(L, -2, "body");
  lock(s); /* Lua has its copy: the buffer no longer counts */
  body_release(s, r);
  unlock(s);

  lua_newtable(L);
  p = r->headers.data;
  end = p ? p + r->headers.len : NULL;
  while (p && p < end) {
    const char *v = p + strlen(p) + 1;
    lua_getfield(L, -1, p);
    if (lua_isstring(L, -1)) { /* repeated header: join as HTTP allows */
      lua_pushliteral(L, ", ");
      lua_pushstring(L, v);
      lua_concat(L, 3);
    } else {
      lua_pop(L, 1);
      lua_pushstring(L, v);
    }
    lua_setfield(L, -2, p);
    p = v + strlen(v) + 1;
  }
  lua_setfield(L, -2, "headers");

  sbuf_free(&r->headers);
  return 1;
}

/* The headers at idx into resp, and as "Name: value\r\n" lines into raw (see write_direct). */
static int add_headers(lua_State *L, int idx, struct MHD_Response *resp, sbuf *raw) {
  if (lua_isnoneornil(L, idx)) return 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    const char *k, *v;
    if (lua_type(L, -2) != LUA_TSTRING || !lua_isstring(L, -1)) {
      lua_pop(L, 2);
      return -1;
    }
    k = lua_tostring(L, -2);
    v = lua_tostring(L, -1);
    /* MHD computes Content-Length itself and refuses a second one; it refuses CR and LF too */
    if (strcasecmp(k, "Content-Length") != 0) {
      if (MHD_add_response_header(resp, k, v) != MHD_YES) {
        lua_pop(L, 2);
        return -2;
      }
      if (sbuf_add(raw, k, strlen(k)) || sbuf_add(raw, ": ", 2) || sbuf_add(raw, v, strlen(v)) || sbuf_add(raw, "\r\n", 2)) {
        lua_pop(L, 2);
        return -3;
      }
    }
    lua_pop(L, 1);
  }
  return 0;
}

/* Whether the client has shut down its side: the end of its stream is waiting to be read. */
static int peer_closed(int fd) {
  char c;
  return recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

/* The answer written straight to a suspended connection's socket (libmicrohttpd does not touch it
 * then), with Connection: close. For a client that half-closed after its request: libmicrohttpd
 * 0.9.75 reads once more when it resumes a connection, sees the end of the stream and closes
 * without writing the answer. Gives up after 5 s without progress. */
static void write_direct(int fd, unsigned status, const sbuf *headers, const char *body, size_t blen) {
  char head[256];
  const char *reason = MHD_get_reason_phrase_for(status);
  struct { const char *p; size_t n; } parts[4];
  int i, n;
  n = snprintf(head, sizeof head, "HTTP/1.1 %u %s\r\nConnection: close\r\nContent-Length: %lu\r\n", status,
               reason && *reason ? reason : "Status", (unsigned long)blen);
  parts[0].p = head;
  parts[0].n = (size_t)n < sizeof head ? (size_t)n : sizeof head - 1;
  parts[1].p = headers->data ? headers->data : "";
  parts[1].n = headers->len;
  parts[2].p = "\r\n";
  parts[2].n = 2;
  parts[3].p = body;
  parts[3].n = blen;
  for (i = 0; i < 4; i++) {
    const char *p = parts[i].p;
    size_t left = parts[i].n;
    while (left > 0) {
      ssize_t w = send(fd, p, left, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (w > 0) {
        p += w;
        left -= (size_t)w;
      } else if (w < 0 && errno == EINTR) {
        continue;
      } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        struct pollfd pfd;
        pfd.fd = fd;
        pfd.events = POLLOUT;
        pfd.revents = 0;
        if (poll(&pfd, 1, 5000) <= 0) return;
      } else {
        return;
      }
    }
  }
}

static int no_such_request(lua_State *L, long long id) {
  char msg[64];
  snprintf(msg, sizeof msg, "no pending request %lld", id);
  lua_pushnil(L);
  lua_pushstring(L, msg);
  return 2;
}

/* srv:respond(id, status, headers, body) -> true | nil, errmsg (unknown or already answered id) */
static int l_respond(lua_State *L) {
  kf_server *s = check_server(L);
  long long id = (long long)luaL_checkinteger(L, 2);
  lua_Integer status = luaL_checkinteger(L, 3);
  size_t blen = 0;
  const char *body = luaL_optlstring(L, 5, "", &blen);
  struct MHD_Response *resp;
  struct MHD_Connection *conn;
  const union MHD_ConnectionInfo *ci;
  kf_req *r;
  int rc;
  sbuf raw = {NULL, 0, 0};

  luaL_argcheck(L, status >= 100 && status <= 999, 3, "bad HTTP status");
  if (!lua_isnoneornil(L, 4)) luaL_checktype(L, 4, LUA_TTABLE);
  resp = MHD_create_response_from_buffer(blen, (void *)body, MHD_RESPMEM_MUST_COPY);
  if (resp == NULL) return luaL_error(L, "kaifang.sandbox.httpd: cannot create response");
  rc = add_headers(L, 4, resp, &raw);
  if (rc != 0) {
    MHD_destroy_response(resp);
    sbuf_free(&raw);
    return luaL_error(L, rc == -1 ? "kaifang.sandbox.httpd: header names and values must be strings"
                         : rc == -2 ? "kaifang.sandbox.httpd: header refused by libmicrohttpd"
                                    : "kaifang.sandbox.httpd: out of memory");
  }

  lock(s);
  r = pending_take(s, id);
  if (r) {
    r->state = ST_ANSWERED;
    s->nanswering++;
    conn = r->conn;
  }
  unlock(s);
  if (r == NULL) {
    MHD_destroy_response(resp);
    sbuf_free(&raw);
    return no_such_request(L, id);
  }
  ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
  if (!s->tls && ci && peer_closed(ci->connect_fd)) { /* under TLS, bytes on the socket are not the answer */
    write_direct(ci->connect_fd, (unsigned)status, &raw, body, blen);
    r->state = ST_DROPPED; /* libmicrohttpd then closes it */
    MHD_destroy_response(resp);
  } else {
    (void)MHD_queue_response(conn, (unsigned)status, resp); /* allowed while suspended */
    MHD_destroy_response(resp);
  }
  sbuf_free(&raw);
  MHD_resume_connection(conn);
  lua_pushboolean(L, 1);
  return 1;
}

/* Marks r dropped; called with the lock held, r already out of queue/map. */
static struct MHD_Connection *mark_dropped(kf_server *s, kf_req *r, int reset) {
  r->state = ST_DROPPED;
  r->reset = reset;
  s->nanswering++;
  return r->conn;
}

static void reset_socket(struct MHD_Connection *conn) {
  const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
  struct linger lg;
  struct sockaddr sa;
  if (ci == NULL) return;
  lg.l_onoff = 1;
  lg.l_linger = 0; /* close() then sends RST instead of FIN */
  (void)setsockopt(ci->connect_fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  /* MHD shuts the socket down (FIN) before closing it, so linger alone is not enough; on Linux,
     connecting a TCP socket to AF_UNSPEC aborts the connection with an RST right away, and the
     descriptor stays MHD's to close. */
  memset(&sa, 0, sizeof sa);
  sa.sa_family = AF_UNSPEC;
  (void)connect(ci->connect_fd, &sa, sizeof sa);
}

/* srv:drop(id [, "reset"]) -> true | nil, errmsg. Closes without an answer; "reset" sends RST. */
static int l_drop(lua_State *L) {
  kf_server *s = check_server(L);
  long long id = (long long)luaL_checkinteger(L, 2);
  const char *how = luaL_optstring(L, 3, "close");
  int reset = strcmp(how, "reset") == 0;
  struct MHD_Connection *conn = NULL;
  kf_req *r;
  luaL_argcheck(L, reset || strcmp(how, "close") == 0, 3, "expected \"close\" or \"reset\"");
  lock(s);
  r = pending_take(s, id);
  if (r) conn = mark_dropped(s, r, reset);
  unlock(s);
  if (r == NULL) {
    return no_such_request(L, id);
  }
  if (reset) reset_socket(conn);
  MHD_resume_connection(conn);
  lua_pushboolean(L, 1);
  return 1;
}

/* Waits until every answered request has gone out; true when settled, false on timeout. */
static int settle(kf_server *s, double secs) {
  struct timespec deadline;
  int ok = 1;
  now_plus(&deadline, secs);
  lock(s);
  while (s->nanswering > 0) {
    if (wait_until(s, &s->settled, &deadline)) {
      ok = s->nanswering == 0;
      break;
    }
  }
  unlock(s);
  return ok;
}

/* srv:flush([timeout=2]) -> boolean: all answers handed over to the kernel */
static int l_flush(lua_State *L) {
  kf_server *s = check_server(L);
  lua_pushboolean(L, settle(s, opt_seconds(L, 2, 2)));
  return 1;
}

static int l_port(lua_State *L) {
  kf_server *s = check_server(L);
  lua_pushinteger(L, (lua_Integer)s->port);
  return 1;
}

static int l_host(lua_State *L) {
  kf_server *s = check_server(L);
  lua_pushstring(L, s->host);
  return 1;
}

/* srv:cafile() -> the CA certificate's file when serving HTTPS, else nil */
static int l_cafile(lua_State *L) {
  kf_server *s = check_server(L);
  if (s->cafile[0]) lua_pushstring(L, s->cafile);
  else lua_pushnil(L);
  return 1;
}

/* srv:stats() -> { queued=, pending=, answering=, total=, connections=, memory= (bytes held for bodies),
   accepted= (connections ever), tls_full=, tls_resumed= (handshakes, when serving HTTPS) } */
static int l_stats(lua_State *L) {
  kf_server *s = check_server(L);
  size_t q, p, a;
  long long total, accepted, full, resumed;
  const union MHD_DaemonInfo *di;
  size_t mem;
  lock(s);
  accepted = s->accepted;
  full = s->tls_full;
  resumed = s->tls_resumed;
  q = s->nqueued;
  p = s->npending;
  a = s->nanswering;
  total = s->next_id;
  mem = s->memory;
  unlock(s);
  di = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
  lua_createtable(L, 0, 9);
  lua_pushinteger(L, (lua_Integer)accepted);
  lua_setfield(L, -2, "accepted");
  if (s->tls) {
    lua_pushinteger(L, (lua_Integer)full);
    lua_setfield(L, -2, "tls_full");
    lua_pushinteger(L, (lua_Integer)resumed);
    lua_setfield(L, -2, "tls_resumed");
  }
  lua_pushinteger(L, (lua_Integer)mem);
  lua_setfield(L, -2, "memory");
  lua_pushinteger(L, (lua_Integer)q);
  lua_setfield(L, -2, "queued");
  lua_pushinteger(L, (lua_Integer)p);
  lua_setfield(L, -2, "pending");
  lua_pushinteger(L, (lua_Integer)a);
  lua_setfield(L, -2, "answering");
  lua_pushinteger(L, (lua_Integer)total);
  lua_setfield(L, -2, "total");
  lua_pushinteger(L, di ? (lua_Integer)di->num_connections : -1);
  lua_setfield(L, -2, "connections");
  return 1;
}

/* srv:close(): drops whatever is still waiting, lets it settle, stops the daemon. Idempotent;
   also __gc and __close. */
static int l_close(lua_State *L) {
  server_ud *u = luaL_checkudata(L, 1, SERVER_MT);
  kf_server *s = u->s;
  kf_req *list = NULL, *r, *next;
  size_t i;
  if (s == NULL) return 0;
  u->s = NULL;

  /* MHD must not be stopped with suspended connections: resume each as dropped first */
  lock(s);
  for (r = s->qhead; r; r = next) {
    next = r->qnext;
    mark_dropped(s, r, 0);
    r->qnext = list;
    list = r;
  }
  s->qhead = s->qtail = NULL;
  s->nqueued = 0;
  for (i = 0; i < s->nbuckets; i++) {
    for (r = s->buckets[i]; r; r = next) {
      next = r->hnext;
      r->hnext = NULL;
      mark_dropped(s, r, 0);
      r->qnext = list;
      list = r;
    }
    s->buckets[i] = NULL;
  }
  s->npending = 0;
  unlock(s);
  for (r = list; r; r = next) {
    next = r->qnext; /* read before resuming: MHD may free r right after */
    MHD_resume_connection(r->conn);
  }
  (void)settle(s, 2.0);
  if (s->watching) {
    lock(s);
    s->stopping = 1;
    if (pthread_cond_signal(&s->tick) != 0) abort();
    unlock(s);
    pthread_join(s->watchdog, NULL);
  }
  MHD_stop_daemon(s->daemon);
  server_destroy(s);
  return 0;
}

static int l_tostring(lua_State *L) {
  server_ud *u = luaL_checkudata(L, 1, SERVER_MT);
  if (u->s) lua_pushfstring(L, "kaifang.sandbox.httpd server (%s:%d)", u->s->host, (int)u->s->port);
  else lua_pushliteral(L, "kaifang.sandbox.httpd server (closed)");
  return 1;
}

/* ------------------------------------------- small process helpers for the runner */

static int l_getpid(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)getpid());
  return 1;
}

static int l_getppid(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)getppid());
  return 1;
}

int luaopen_kaifang_sandbox_httpd(lua_State *L) {
  static const luaL_Reg methods[] = {{"next", l_next},   {"respond", l_respond}, {"drop", l_drop},
                                     {"flush", l_flush}, {"port", l_port},       {"host", l_host},
                                     {"stats", l_stats}, {"close", l_close},     {"cafile", l_cafile},
                                     {NULL, NULL}};
  static const luaL_Reg funcs[] = {
      {"listen", l_listen}, {"getpid", l_getpid}, {"getppid", l_getppid}, {NULL, NULL}};
  kf_newclass(L, SERVER_MT, methods, l_close);
  luaL_getmetatable(L, SERVER_MT);
  lua_pushcfunction(L, l_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  kf_newlib(L, funcs);
  return 1;
}
