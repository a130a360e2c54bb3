#include "sign.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/hmac.h>

int kf_scheme_init(kf_scheme *s, const char *digest, char *err) {
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
  s->md = EVP_MD_fetch(NULL, digest, NULL);
#else
  s->md = (EVP_MD *)EVP_get_digestbyname(digest);
#endif
  if (s->md == NULL) {
    ERR_clear_error();
    snprintf(err, KF_ERRLEN, "unknown digest '%s'", digest);
    return -1;
  }
  s->ctx = EVP_MD_CTX_new();
  if (s->ctx == NULL) {
    kf_scheme_free(s);
    kf_ssl_error(err, KF_ERRLEN, "digest context");
    return -1;
  }
  return 0;
}

void kf_scheme_free(kf_scheme *s) {
  if (s->ctx) EVP_MD_CTX_free(s->ctx);
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
  if (s->md) EVP_MD_free(s->md);
#endif
  s->ctx = NULL;
  s->md = NULL;
}

int kf_scheme_excludes(const kf_scheme *s, const char *key, size_t klen) {
  int i;
  for (i = 0; i < s->nexclude; i++)
    if (strlen(s->exclude[i]) == klen && memcmp(s->exclude[i], key, klen) == 0) return 1;
  return 0;
}

size_t kf_format_integer(long long v, char *out) {
  return (size_t)snprintf(out, 40, "%lld", v);
}

size_t kf_format_float(double v, char *out) {
  return (size_t)snprintf(out, 40, "%.14g", v);
}

static int pair_cmp(const void *a, const void *b) {
  const kf_pair *x = a, *y = b;
  size_t n = x->klen < y->klen ? x->klen : y->klen;
  int c = memcmp(x->key, y->key, n);
  if (c) return c;
  return x->klen < y->klen ? -1 : x->klen > y->klen;
}

void kf_sort_pairs(kf_pair *pairs, size_t n) {
  qsort(pairs, n, sizeof *pairs, pair_cmp);
}

int kf_scheme_digest(kf_scheme *s, const char *sts, size_t len, const char *secret, size_t slen,
                     char *out, char *err) {
  unsigned char raw[KF_MAX_DIGEST];
  unsigned int rawlen = 0;
  if (s->hmac) {
    if (HMAC(s->md, secret, (int)slen, (const unsigned char *)sts, len, raw, &rawlen) == NULL) {
      kf_ssl_error(err, KF_ERRLEN, "HMAC failed");
      return -1;
    }
  } else if (!EVP_DigestInit_ex(s->ctx, s->md, NULL) || !EVP_DigestUpdate(s->ctx, sts, len) ||
             !EVP_DigestFinal_ex(s->ctx, raw, &rawlen)) {
    kf_ssl_error(err, KF_ERRLEN, "digest failed");
    return -1;
  }
  kf_hex(raw, rawlen, s->upper, out);
  out[2 * rawlen] = '\0';
  return (int)(2 * rawlen);
}
