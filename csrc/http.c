#include "http.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int buf_append(kf_buf *b, const char *data, size_t len, size_t limit) {
  if (b->len + len > limit) return -1;
  if (b->len + len + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
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

static size_t on_header(char *ptr, size_t size, size_t nmemb, void *ud) {
  kf_http *h = ud;
  size_t n = size * nmemb;
  /* keep only the last response's headers (a 100 Continue or a proxy's CONNECT comes first) */
  if (n >= 5 && strncmp(ptr, "HTTP/", 5) == 0) h->head.len = 0;
  return buf_append(&h->head, ptr, n, 1 << 20) ? 0 : n;
}

int kf_http_init(kf_http *h, const kf_http_opts *o, char *err, size_t errlen) {
  CURL *e;
  memset(h, 0, sizeof *h);
  e = curl_easy_init();
  if (e == NULL) {
    strncpy(err, "curl_easy_init failed", errlen - 1);
    err[errlen - 1] = '\0';
    return -1;
  }
  h->easy = e;
  h->max_body = o->max_body ? o->max_body : (size_t)64 << 20;
  h->connect_timeout_ms = o->connect_timeout_ms > 0 ? o->connect_timeout_ms : 5000;
  h->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : 15000;
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
  return 0;
}

void kf_http_free(kf_http *h) {
  if (h->easy) curl_easy_cleanup(h->easy);
  if (h->req_headers) curl_slist_free_all(h->req_headers);
  free(h->body.data);
  free(h->head.data);
  memset(h, 0, sizeof *h);
}

int kf_http_add_header(kf_http *h, const char *line) {
  struct curl_slist *l = curl_slist_append(h->req_headers, line);
  if (l == NULL) return -1;
  h->req_headers = l;
  return 0;
}

void kf_http_perform(kf_http *h, const char *method, const char *url, const char *body, size_t bodylen,
                     long timeout_ms, kf_result *r) {
  CURL *e = h->easy;
  int is_get = strcasecmp(method, "GET") == 0, is_head = strcasecmp(method, "HEAD") == 0;
  curl_off_t pretransfer = 0;
  long request_size = 0;
  memset(r, 0, sizeof *r);
  h->body.len = h->head.len = 0;
  h->errbuf[0] = '\0';
  /* no "Expect: 100-continue" round trip on larger bodies */
  kf_http_add_header(h, "Expect:");
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, h->req_headers);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, h->connect_timeout_ms);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms > 0 ? timeout_ms : h->timeout_ms);
  curl_easy_setopt(e, CURLOPT_NOBODY, is_head ? 1L : 0L);
  if (is_get || is_head) {
    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, is_head ? "HEAD" : NULL);
  } else {
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, body ? body : "");
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(body ? bodylen : 0));
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, strcasecmp(method, "POST") == 0 ? NULL : method);
  }
  r->code = curl_easy_perform(e);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, NULL);
  curl_slist_free_all(h->req_headers);
  h->req_headers = NULL;
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &r->status);
  curl_easy_getinfo(e, CURLINFO_PRETRANSFER_TIME_T, &pretransfer);
  curl_easy_getinfo(e, CURLINFO_REQUEST_SIZE, &request_size);
  r->connected = pretransfer > 0 || request_size > 0;
  if (r->code != CURLE_OK) {
    r->message = h->errbuf[0] ? h->errbuf : curl_easy_strerror(r->code);
    /* once the transfer began, the server may have acted on the request */
    r->maybe_sent = r->connected;
  }
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
