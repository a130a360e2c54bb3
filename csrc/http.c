#include "http.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <strings.h>

/* ---- the share ----------------------------------------------------------------------------- */

struct kf_share {
  CURLSH *sh;
  int refs; /* changed only by the Lua state's own thread */
  /* One lock per kind of data, so that libcurl holding one while it takes another cannot
   * deadlock. A share belongs to one Lua state, which one thread runs at a time (nginx's thread
   * pool runs each of its VMs on one thread at a time), so they are never contended; they are
   * there so that a state moved between threads stays correct. */
  pthread_mutex_t mu[CURL_LOCK_DATA_LAST];
};

static void share_lock(CURL *e, curl_lock_data data, curl_lock_access access, void *ud) {
  kf_share *s = ud;
  (void)e;
  (void)access;
  if (data >= 0 && data < CURL_LOCK_DATA_LAST && pthread_mutex_lock(&s->mu[data]) != 0) abort();
}

static void share_unlock(CURL *e, curl_lock_data data, void *ud) {
  kf_share *s = ud;
  (void)e;
  if (data >= 0 && data < CURL_LOCK_DATA_LAST && pthread_mutex_unlock(&s->mu[data]) != 0) abort();
}

kf_share *kf_share_new(void) {
  kf_share *s = calloc(1, sizeof *s);
  int i;
  if (s == NULL) return NULL;
  for (i = 0; i < CURL_LOCK_DATA_LAST; i++) {
    if (pthread_mutex_init(&s->mu[i], NULL) != 0) abort();
  }
  s->refs = 1;
  s->sh = curl_share_init();
  if (s->sh == NULL || curl_share_setopt(s->sh, CURLSHOPT_LOCKFUNC, share_lock) != CURLSHE_OK ||
      curl_share_setopt(s->sh, CURLSHOPT_UNLOCKFUNC, share_unlock) != CURLSHE_OK ||
      curl_share_setopt(s->sh, CURLSHOPT_USERDATA, s) != CURLSHE_OK ||
      curl_share_setopt(s->sh, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS) != CURLSHE_OK ||
      curl_share_setopt(s->sh, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION) != CURLSHE_OK ||
      curl_share_setopt(s->sh, CURLSHOPT_SHARE, CURL_LOCK_DATA_CONNECT) != CURLSHE_OK) {
    kf_share_release(s);
    return NULL;
  }
  return s;
}

void kf_share_release(kf_share *s) {
  int i;
  if (s == NULL || --s->refs > 0) return;
  /* every easy handle that used it is gone (each held a reference): its connections close here */
  if (s->sh) curl_share_cleanup(s->sh);
  for (i = 0; i < CURL_LOCK_DATA_LAST; i++) pthread_mutex_destroy(&s->mu[i]);
  free(s);
}

/* ---- one transfer -------------------------------------------------------------------------- */

/* Idle connections the shared pool keeps when a session's call returns one (libcurl's default, 5,
 * would close a batch's kept-alive connections one call at a time); a batch keeps its own slots'
 * worth on top. */
#define POOL_IDLE 32L

static int buf_append(kf_buf *b, const char *data, size_t len, size_t limit) {
  if (b->len + len > limit) return -1;
  if (b->len + len + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256; /* a platform's reply is short; per slot of a batch */
    char *p;
    while (cap < b->len + len + 1) cap *= 2;
    p = realloc(b->data, cap);
    if (p == NULL) return -1;
    b->data = p;
    b->cap = cap;
  }
  memcpy(b->data + b->len, data, len);
  b->len += len;
  b->data[b->len] = '\0';
  return 0;
}

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *ud) {
  kf_http *h = ud;
  return buf_append(&h->body, ptr, size * nmemb, h->max_body) ? 0 : size * nmemb;
}

/* The request body goes out through a read callback that cannot seek back once bytes left:
 * libcurl then cannot silently resend a request on a fresh connection after a reused one died,
 * which would deliver a notice or an order twice. CURLOPT_POSTFIELDS would save 2-6 us of CPU
 * per call (issue 13), but libcurl before 8.7 resends such a body on a dead reused connection
 * even after bytes of it left; Debian bookworm has 7.88. This can change once the oldest libcurl
 * kaifang supports is 8.7 or later, after checking that it no longer resends a request whose
 * bytes reached the server. */
static size_t on_read(char *ptr, size_t size, size_t nmemb, void *ud) {
  kf_http *h = ud;
  size_t n = h->out.len - h->out_pos;
  if (n > size * nmemb) n = size * nmemb;
  if (n) memcpy(ptr, h->out.data + h->out_pos, n);
  h->out_pos += n;
  return n;
}

static int on_seek(void *ud, curl_off_t offset, int origin) {
  kf_http *h = ud;
  if (origin != SEEK_SET || offset != 0 || h->out_pos != 0) return CURL_SEEKFUNC_CANTSEEK;
  return CURL_SEEKFUNC_OK;
}

static size_t on_header(char *ptr, size_t size, size_t nmemb, void *ud) {
  kf_http *h = ud;
  size_t n = size * nmemb;
  /* keep only the last response's headers (a 100 Continue or a proxy's CONNECT comes first) */
  if (n >= 5 && strncmp(ptr, "HTTP/", 5) == 0) h->head.len = 0;
  return buf_append(&h->head, ptr, n, 1 << 20) ? 0 : n;
}

static char *dup_or_null(const char *s, int *oom) {
  char *p;
  size_t n;
  if (s == NULL) return NULL;
  n = strlen(s) + 1;
  p = malloc(n);
  if (p == NULL) *oom = 1;
  else memcpy(p, s, n);
  return p;
}

static void opts_free(kf_http_opts *o) {
  free(o->cainfo);
  free(o->capath);
  free(o->proxy);
  free(o->user_agent);
  kf_share_release(o->share);
  memset(o, 0, sizeof *o);
}

/* dst gets copies of src's strings; 0, or -1 (dst emptied) when out of memory. */
static int opts_copy(kf_http_opts *dst, const kf_http_opts *src) {
  int oom = 0;
  *dst = *src;
  dst->cainfo = dup_or_null(src->cainfo, &oom);
  dst->capath = dup_or_null(src->capath, &oom);
  dst->proxy = dup_or_null(src->proxy, &oom);
  dst->user_agent = dup_or_null(src->user_agent, &oom);
  if (dst->share) dst->share->refs++;
  if (oom) opts_free(dst);
  return oom ? -1 : 0;
}

static int str_equal(const char *a, const char *b) {
  return a == b || (a && b && strcmp(a, b) == 0);
}

static int opts_equal(const kf_http_opts *a, const kf_http_opts *b) {
  return a->share == b->share && a->connect_timeout_ms == b->connect_timeout_ms && a->timeout_ms == b->timeout_ms &&
         a->ssl_verify == b->ssl_verify && a->max_body == b->max_body && str_equal(a->cainfo, b->cainfo) &&
         str_equal(a->capath, b->capath) && str_equal(a->proxy, b->proxy) && str_equal(a->user_agent, b->user_agent);
}

/* Every option of h's easy handle, from h->opts; also after a curl_easy_reset. */
static void setup(kf_http *h) {
  CURL *e = h->easy;
  const kf_http_opts *o = &h->opts;
  h->max_body = o->max_body ? o->max_body : (size_t)64 << 20;
  h->connect_timeout_ms = o->connect_timeout_ms > 0 ? o->connect_timeout_ms : 5000;
  h->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : 15000;
  curl_easy_setopt(e, CURLOPT_PRIVATE, (void *)h);
  if (o->share) curl_easy_setopt(e, CURLOPT_SHARE, o->share->sh);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L); /* no SIGALRM: safe in threads and in nginx */
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, h->errbuf);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, h);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, h);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, o->ssl_verify ? 1L : 0L);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, o->ssl_verify ? 2L : 0L);
  if (o->cainfo) curl_easy_setopt(e, CURLOPT_CAINFO, o->cainfo);
  if (o->capath) curl_easy_setopt(e, CURLOPT_CAPATH, o->capath);
  /* an explicit proxy or none: the environment's proxy variables are not consulted */
  curl_easy_setopt(e, CURLOPT_PROXY, o->proxy ? o->proxy : "");
  curl_easy_setopt(e, CURLOPT_USERAGENT, o->user_agent ? o->user_agent : "kaifang/0.1");
#if LIBCURL_VERSION_NUM >= 0x075500
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
#endif
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(e, CURLOPT_MAXCONNECTS, POOL_IDLE);
  curl_easy_setopt(e, CURLOPT_READFUNCTION, on_read);
  curl_easy_setopt(e, CURLOPT_READDATA, h);
  curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, on_seek);
  curl_easy_setopt(e, CURLOPT_SEEKDATA, h);
  /* libcurl 7.88 allocates these two buffers for each transfer and frees them when it ends. At
   * its defaults (64 KB up, 16 KB down) a batch's slots churned 80 KB each per call at the top of
   * the heap: glibc gave it back to the kernel and faulted it in again, up to 6 us of CPU a call.
   * The platforms' forms and replies are a few KB: the smallest upload buffer, and 8 KB down. */
  curl_easy_setopt(e, CURLOPT_UPLOAD_BUFFERSIZE, 16384L);
  curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 8192L);
}

int kf_http_init(kf_http *h, const kf_http_opts *o, char *err, size_t errlen) {
  memset(h, 0, sizeof *h);
  if (opts_copy(&h->opts, o) != 0) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  h->easy = curl_easy_init();
  if (h->easy == NULL) {
    opts_free(&h->opts);
    snprintf(err, errlen, "curl_easy_init failed");
    return -1;
  }
  setup(h);
  return 0;
}

int kf_http_configure(kf_http *h, const kf_http_opts *o) {
  kf_http_opts copy;
  if (opts_equal(&h->opts, o)) return 0;
  if (opts_copy(&copy, o) != 0) return -1;
  opts_free(&h->opts);
  h->opts = copy;
  curl_easy_reset(h->easy); /* back to libcurl's defaults (its CA bundle among them), then ours */
  h->url.len = 0;
  setup(h);
  return 0;
}

void kf_http_free(kf_http *h) {
  if (h->easy) curl_easy_cleanup(h->easy);
  if (h->req_headers) curl_slist_free_all(h->req_headers);
  free(h->req_lines.data);
  free(h->next_lines.data);
  free(h->body.data);
  free(h->head.data);
  free(h->out.data);
  free(h->url.data);
  opts_free(&h->opts);
  memset(h, 0, sizeof *h);
}

int kf_http_add_header(kf_http *h, const char *line) {
  return buf_append(&h->next_lines, line, strlen(line) + 1, (size_t)-1);
}

/* The list of the lines added since the last request: the last request's list when they are the
 * same (no allocation), else a new one. 0, or -1 when out of memory. */
static int set_headers(kf_http *h) {
  kf_buf *next = &h->next_lines, *last = &h->req_lines;
  struct curl_slist *list = NULL;
  size_t at = 0;
  if (h->req_headers && next->len == last->len && memcmp(next->data, last->data, next->len) == 0) {
    next->len = 0;
    return 0;
  }
  while (at < next->len) {
    struct curl_slist *l = curl_slist_append(list, next->data + at);
    if (l == NULL) {
      curl_slist_free_all(list);
      next->len = 0;
      return -1;
    }
    list = l;
    at += strlen(next->data + at) + 1;
  }
  curl_slist_free_all(h->req_headers); /* between transfers: the handle holds it until the next setopt */
  h->req_headers = list;
  { /* the lines just sent become the ones to compare with */
    kf_buf t = *last;
    *last = *next;
    *next = t;
    next->len = 0;
  }
  return 0;
}

int kf_http_prepare(kf_http *h, const char *method, const char *url, const char *body, size_t bodylen,
                    long timeout_ms) {
  CURL *e = h->easy;
  int is_get = strcasecmp(method, "GET") == 0, is_head = strcasecmp(method, "HEAD") == 0;
  h->body.len = h->head.len = 0;
  h->errbuf[0] = '\0';
  /* no "Expect: 100-continue" round trip on larger bodies */
  if (kf_http_add_header(h, "Expect:") != 0 || set_headers(h) != 0) return -1;
  { /* most requests of a handle go to the URL of the last one: no copy then */
    size_t len = strlen(url) + 1;
    if (h->url.len != len || memcmp(h->url.data, url, len) != 0) {
      h->url.len = 0;
      if (buf_append(&h->url, url, len, (size_t)-1) != 0 || curl_easy_setopt(e, CURLOPT_URL, url) != CURLE_OK) {
        h->url.len = 0;
        return -1;
      }
    }
  }
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, h->req_headers);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, h->connect_timeout_ms);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms > 0 ? timeout_ms : h->timeout_ms);
  curl_easy_setopt(e, CURLOPT_NOBODY, is_head ? 1L : 0L);
  if (is_get || is_head) {
    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, is_head ? "HEAD" : NULL);
  } else {
    /* a copy: in a batch the caller's string is gone before the transfer is */
    h->out.len = h->out_pos = 0;
    if (body && bodylen && buf_append(&h->out, body, bodylen, (size_t)-1) != 0) return -1;
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, NULL);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)h->out.len);
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, strcasecmp(method, "POST") == 0 ? NULL : method);
  }
  return 0;
}

/* curl's words ("SSL certificate problem: unable to get local issuer certificate", "SSL: no
 * alternative certificate subject name matches ...") do not say that the check refused it. */
static void say_verification_failed(char *errbuf, CURLcode code) {
  static const char what[] = "TLS certificate verification failed: ";
  size_t n, w = sizeof what - 1;
  if (errbuf[0] == '\0') snprintf(errbuf, CURL_ERROR_SIZE, "%s", curl_easy_strerror(code));
  n = strlen(errbuf);
  if (n + w >= CURL_ERROR_SIZE) n = CURL_ERROR_SIZE - w - 1;
  memmove(errbuf + w, errbuf, n);
  memcpy(errbuf, what, w);
  errbuf[w + n] = '\0';
}

void kf_http_finish(kf_http *h, CURLcode code, kf_result *r) {
  CURL *e = h->easy;
  curl_off_t pretransfer = 0;
  long request_size = 0;
  memset(r, 0, sizeof *r);
  r->code = code;
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &r->status);
  curl_easy_getinfo(e, CURLINFO_PRETRANSFER_TIME_T, &pretransfer);
  curl_easy_getinfo(e, CURLINFO_REQUEST_SIZE, &request_size);
  r->connected = pretransfer > 0 || request_size > 0;
  if (code == CURLE_PEER_FAILED_VERIFICATION) say_verification_failed(h->errbuf, code);
  if (code != CURLE_OK) {
    r->message = h->errbuf[0] ? h->errbuf : curl_easy_strerror(code);
    /* once the transfer began, the server may have acted on the request */
    r->maybe_sent = r->connected;
  }
}

void kf_http_perform(kf_http *h, const char *method, const char *url, const char *body, size_t bodylen,
                     long timeout_ms, kf_result *r) {
  if (kf_http_prepare(h, method, url, body, bodylen, timeout_ms) != 0) {
    kf_http_finish(h, CURLE_OUT_OF_MEMORY, r);
    return;
  }
  kf_http_finish(h, curl_easy_perform(h->easy), r);
}

/* ---- many transfers at once on one connection pool ---------------------------------------- */

int kf_multi_init(kf_multi *m, int slots, const kf_http_opts *o, char *err, size_t errlen) {
  memset(m, 0, sizeof *m);
  m->multi = curl_multi_init();
  m->slots = calloc((size_t)slots, sizeof *m->slots);
  m->done = calloc((size_t)slots, sizeof *m->done);
  if (m->multi == NULL || m->slots == NULL || m->done == NULL || opts_copy(&m->opts, o) != 0) {
    kf_multi_free(m);
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  m->nslots = slots;
  /* keep every connection of the batch alive between transfers, and the shared pool's others */
  curl_multi_setopt(m->multi, CURLMOPT_MAXCONNECTS, (long)slots + POOL_IDLE);
  curl_multi_setopt(m->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
  return 0;
}

void kf_multi_free(kf_multi *m) {
  int i;
  for (i = 0; m->slots && i < m->nslots; i++) {
    if (m->slots[i].easy && m->multi) curl_multi_remove_handle(m->multi, m->slots[i].easy);
    kf_http_free(&m->slots[i]);
  }
  if (m->multi) curl_multi_cleanup(m->multi);
  opts_free(&m->opts);
  free(m->slots);
  free(m->done);
  memset(m, 0, sizeof *m);
}

kf_http *kf_multi_slot(kf_multi *m, int slot, const kf_http_opts *o) {
  kf_http *h = &m->slots[slot];
  char err[128];
  if (h->easy == NULL) return kf_http_init(h, o, err, sizeof err) == 0 ? h : NULL;
  return kf_http_configure(h, o) == 0 ? h : NULL;
}

int kf_multi_start(kf_multi *m, int slot) {
  if (curl_multi_add_handle(m->multi, m->slots[slot].easy) != CURLM_OK) return -1;
  m->active++;
  return 0;
}

/* Moves finished transfers to done. */
static void collect_finished(kf_multi *m) {
  CURLMsg *msg;
  int queued;
  while ((msg = curl_multi_info_read(m->multi, &queued)) != NULL) {
    kf_http *h = NULL;
    if (msg->msg != CURLMSG_DONE) continue;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&h);
    h->last_code = msg->data.result;
    curl_multi_remove_handle(m->multi, msg->easy_handle);
    m->active--;
    m->done[m->ndone++] = (int)(h - m->slots);
  }
}

/* Drives the transfers until one finishes or timeout_ms passes; finished slots queue in done. */
int kf_multi_wait(kf_multi *m, long timeout_ms, char *err, size_t errlen) {
  int running = 0;
  CURLMcode mc = curl_multi_perform(m->multi, &running);
  if (mc == CURLM_OK) collect_finished(m);
  if (mc == CURLM_OK && m->ndone == 0 && running > 0 && timeout_ms > 0) {
    mc = curl_multi_poll(m->multi, NULL, 0, (int)timeout_ms, NULL);
    if (mc == CURLM_OK) mc = curl_multi_perform(m->multi, &running);
    if (mc == CURLM_OK) collect_finished(m);
  }
  if (mc != CURLM_OK) {
    snprintf(err, errlen, "%s", curl_multi_strerror(mc));
    return -1;
  }
  return m->ndone;
}

size_t kf_url_encode(const char *in, size_t len, char *out) {
  static const char hex[] = "0123456789ABCDEF";
  size_t i, n = 0;
  for (i = 0; i < len; i++) {
    unsigned char c = (unsigned char)in[i];
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
        c == '_' || c == '~') {
      out[n++] = (char)c;
    } else {
      out[n++] = '%';
      out[n++] = hex[c >> 4];
      out[n++] = hex[c & 15];
    }
  }
  return n;
}
