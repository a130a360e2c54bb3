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
    if (s->exclude_len[i] == klen && s->exclude[i][0] == key[0] && memcmp(s->exclude[i], key, klen) == 0) return 1;
  return 0;
}

/* By hand, two digits at a time: snprintf's format parsing cost more than the rest of a small
 * signature. */
size_t kf_format_integer(long long v, char *out) {
  static const char pairs[] = "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
                              "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
                              "8081828384858687888990919293949596979899";
  char digits[24];
  unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
  size_t n = sizeof digits, len = 0;
  while (u >= 100) {
    unsigned d = (unsigned)(u % 100) * 2;
    u /= 100;
    digits[--n] = pairs[d + 1];
    digits[--n] = pairs[d];
  }
  if (u >= 10) {
    digits[--n] = pairs[u * 2 + 1];
    digits[--n] = pairs[u * 2];
  } else {
    digits[--n] = (char)('0' + (int)u);
  }
  if (v < 0) out[len++] = '-';
  memcpy(out + len, digits + n, sizeof digits - n);
  len += sizeof digits - n;
  out[len] = '\0';
  return len;
}

size_t kf_format_float(double v, char *out) {
  return (size_t)snprintf(out, 40, "%.14g", v);
}

/* Most keys differ in their first 8 bytes: one integer comparison then decides. */
static int pair_cmp(const kf_pair *x, const kf_pair *y) {
  size_t n, i;
  if (x->head != y->head) return x->head < y->head ? -1 : 1;
  n = x->klen < y->klen ? x->klen : y->klen;
  for (i = 8; i < n; i++) /* the rest of a key is short: a loop costs less than memcmp's call */
    if (x->key[i] != y->key[i]) return (unsigned char)x->key[i] < (unsigned char)y->key[i] ? -1 : 1;
  return x->klen < y->klen ? -1 : x->klen > y->klen;
}

static void insertion_sort(kf_pair **a, size_t n) {
  size_t i, j;
  for (i = 1; i < n; i++) {
    kf_pair *p = a[i];
    for (j = i; j > 0 && pair_cmp(p, a[j - 1]) < 0; j--) a[j] = a[j - 1];
    a[j] = p;
  }
}

/* Sorts a[0..n) with tmp as scratch: runs of 16 by insertion, then merged. */
static void merge_sort(kf_pair **a, kf_pair **tmp, size_t n) {
  size_t mid = n / 2, i = 0, j, k = 0;
  if (n <= 16) {
    insertion_sort(a, n);
    return;
  }
  merge_sort(a, tmp, mid);
  merge_sort(a + mid, tmp, n - mid);
  if (pair_cmp(a[mid - 1], a[mid]) <= 0) return; /* already in order */
  memcpy(tmp, a, mid * sizeof *a);
  j = mid;
  while (i < mid && j < n) a[k++] = pair_cmp(a[j], tmp[i]) < 0 ? a[j++] : tmp[i++];
  while (i < mid) a[k++] = tmp[i++];
}

/* Pointers, not the pairs (each carries its number buffer), are moved. */
void kf_sort_pairs(kf_pair *pairs, size_t n, kf_pair **order, kf_pair **tmp) {
  size_t i, j;
  for (i = 0; i < n; i++) {
    kf_pair *p = &pairs[i];
    uint64_t h = 0;
    size_t m = p->klen < 8 ? p->klen : 8;
    for (j = 0; j < m; j++) h = h << 8 | (unsigned char)p->key[j];
    h <<= 8 * (8 - m) - (m == 0); /* zero-padded on the right (a shift by 64 would be undefined) */
    p->head = h;
    order[i] = p;
  }
  merge_sort(order, tmp, n);
}

int kf_scheme_raw(kf_scheme *s, int hmac, const char *key, size_t klen, const char *data, size_t len,
                  unsigned char *raw, char *err) {
  unsigned int rawlen = 0;
  if (hmac) {
    if (HMAC(s->md, key, (int)klen, (const unsigned char *)data, len, raw, &rawlen) == NULL) {
      kf_ssl_error(err, KF_ERRLEN, "HMAC failed");
      return -1;
    }
  } else if (!EVP_DigestInit_ex(s->ctx, s->md, NULL) || !EVP_DigestUpdate(s->ctx, data, len) ||
             !EVP_DigestFinal_ex(s->ctx, raw, &rawlen)) {
    kf_ssl_error(err, KF_ERRLEN, "digest failed");
    return -1;
  }
  return (int)rawlen;
}

int kf_scheme_digest(kf_scheme *s, const char *sts, size_t len, const char *secret, size_t slen,
                     char *out, char *err) {
  unsigned char raw[KF_MAX_DIGEST];
  int rawlen = kf_scheme_raw(s, s->hmac, secret, slen, sts, len, raw, err);
  if (rawlen < 0) return -1;
  kf_hex(raw, (size_t)rawlen, s->upper, out);
  out[2 * rawlen] = '\0';
  return 2 * rawlen;
}
