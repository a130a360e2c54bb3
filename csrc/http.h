/* One kept-alive libcurl easy handle: a blocking request, with timeouts and TLS checks by
 * default. No Lua here, so no Lua code can run inside a libcurl callback. */
#ifndef KAIFANG_HTTP_H
#define KAIFANG_HTTP_H

#include <stddef.h>

#include <curl/curl.h>

typedef struct kf_buf {
  char *data;
  size_t len, cap;
} kf_buf;

/* What the sessions and batches of one Lua state share (core.c makes one per state, in its
 * registry): the DNS cache, TLS sessions and the connections. Counted: each kf_http_opts copy
 * holds a reference, and the last release cleans it up, in whatever order Lua collects them. */
typedef struct kf_share kf_share;
kf_share *kf_share_new(void);
void kf_share_release(kf_share *s);

typedef struct kf_http_opts {
  long connect_timeout_ms;  /* default 5000 */
  long timeout_ms;          /* default 15000 */
  int ssl_verify;           /* default 1 */
  char *cainfo;             /* CA bundle file, or NULL for the system's */
  char *capath;
  char *proxy;              /* "http://host:port", or NULL for none (env vars are ignored) */
  char *user_agent;
  size_t max_body;          /* default 64 MiB */
  kf_share *share;          /* or NULL: none; a copy of the options takes a reference */
} kf_http_opts;

typedef struct kf_http {
  CURL *easy;
  kf_http_opts opts;        /* its own copy of the settings it was made with */
  struct curl_slist *req_headers; /* of the last request, kept: most requests send the same */
  kf_buf req_lines;         /* their lines, each ending in a NUL */
  kf_buf next_lines;        /* the lines added for the next request */
  kf_buf body, head;
  kf_buf out;               /* the request body being sent */
  kf_buf url;               /* the URL the easy handle holds (libcurl copies it on each setopt) */
  size_t out_pos;
  size_t max_body;
  long connect_timeout_ms, timeout_ms;
  CURLcode last_code;       /* of the last transfer, in a batch */
  char errbuf[CURL_ERROR_SIZE];
} kf_http;

/* A batch: slots of kept-alive easy handles on one multi handle (one connection pool). */
typedef struct kf_multi {
  CURLM *multi;
  kf_http_opts opts;        /* the settings of a transfer submitted without a session's */
  kf_http *slots;
  int nslots, active;
  int *done, ndone;         /* finished slots, not yet collected */
} kf_multi;

typedef struct kf_result {
  CURLcode code;
  long status;
  int maybe_sent;           /* the request may have reached the server */
  int connected;            /* a connection was made */
  const char *message;      /* curl's explanation, on failure */
} kf_result;

/* Copies o (strings included) into h, which keeps its own settings. */
int kf_http_init(kf_http *h, const kf_http_opts *o, char *err, size_t errlen);
void kf_http_free(kf_http *h);
/* Gives an idle handle other settings (another client's, in a batch), unless it has them already;
 * its connections stay in the pool, where libcurl reuses one only for equal settings. 0 or -1
 * when out of memory. */
int kf_http_configure(kf_http *h, const kf_http_opts *o);

/* Adds a request header ("Name: value") to the next request; returns 0 or -1 when out of memory. */
int kf_http_add_header(kf_http *h, const char *line);
/* Performs the request with the headers added since the last call; timeout_ms <= 0 means the
 * session's default. The response body and raw headers are in h->body and h->head. */
void kf_http_perform(kf_http *h, const char *method, const char *url, const char *body, size_t bodylen,
                     long timeout_ms, kf_result *r);

/* The two halves of a request, for a caller that runs the transfer itself (a batch). */
/* Returns 0, or -1 when out of memory (nothing is sent). */
int kf_http_prepare(kf_http *h, const char *method, const char *url, const char *body, size_t bodylen,
                    long timeout_ms);
void kf_http_finish(kf_http *h, CURLcode code, kf_result *r);

/* Slots get their easy handle on first use (kf_multi_slot): a batch wider than its work costs
 * only the slots it used. */
int kf_multi_init(kf_multi *m, int slots, const kf_http_opts *o, char *err, size_t errlen);
void kf_multi_free(kf_multi *m);
/* The slot, with its easy handle made and given settings o; NULL when out of memory. */
kf_http *kf_multi_slot(kf_multi *m, int slot, const kf_http_opts *o);
/* Starts the prepared request of a free slot. */
int kf_multi_start(kf_multi *m, int slot);
/* Runs transfers until one is done or timeout_ms passes; returns how many are done, or -1. */
int kf_multi_wait(kf_multi *m, long timeout_ms, char *err, size_t errlen);

/* Percent-encodes everything but RFC 3986's unreserved characters. out holds 3 * len bytes. */
size_t kf_url_encode(const char *in, size_t len, char *out);

#endif
