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
  free(s->scratch);
  s->ctx = NULL;
  s->md = NULL;
  s->scratch = NULL;
  s->scratch_cap = 0;
}

/* Larger requests than this allocate per call (as garbage) rather than keep their room for good. */
#define KF_MAX_SCRATCH 1024

void kf_scheme_reserve(kf_scheme *s, size_t n) {
  kf_pair *p;
  if (n <= s->scratch_cap || n > KF_MAX_SCRATCH) return;
  p = malloc(n * (sizeof *p + 2 * sizeof(kf_pair *)));
  if (p == NULL) return;
  free(s->scratch);
  s->scratch = p;
  s->scratch_cap = n;
}

/* By hand, two digits at a time, straight into out: snprintf's format parsing cost more than
 * the rest of a small signature. */
size_t kf_format_integer(long long v, char *out) {
  static const char pairs[] = "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
                              "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
                              "8081828384858687888990919293949596979899";
  static const unsigned long long pow10[20] = {1ULL, 10ULL, 100ULL, 1000ULL, 10000ULL, 100000ULL, 1000000ULL,
    10000000ULL, 100000000ULL, 1000000000ULL, 10000000000ULL, 100000000000ULL, 1000000000000ULL,
    10000000000000ULL, 100000000000000ULL, 1000000000000000ULL, 10000000000000000ULL,
    100000000000000000ULL, 1000000000000000000ULL, 10000000000000000000ULL};
  unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
  size_t len = v < 0, end, digits = 1;
  if (v < 0) out[0] = '-';
  while (digits < 20 && u >= pow10[digits]) digits++; /* compares, not divisions */
  end = len + digits;
  out[end] = '\0';
  len = end;
  while (u >= 100) {
    unsigned d = (unsigned)(u % 100) * 2;
    u /= 100;
    out[--end] = pairs[d + 1];
    out[--end] = pairs[d];
  }
  if (u >= 10) {
    out[--end] = pairs[u * 2 + 1];
    out[--end] = pairs[u * 2];
  } else {
    out[--end] = (char)('0' + (int)u);
  }
  return len;
}

size_t kf_format_float(double v, char *out) {
  return (size_t)snprintf(out, 40, "%.14g", v);
}

/* Most keys differ in their first 16 bytes: one or two integer comparisons then decide. */
static inline int pair_cmp(const kf_pair *x, const kf_pair *y) {
  size_t n, i;
  if (x->head != y->head) return x->head < y->head ? -1 : 1;
  if (x->head2 != y->head2) return x->head2 < y->head2 ? -1 : 1;
  n = x->klen < y->klen ? x->klen : y->klen;
  for (i = 16; i < n; i++) /* the rest of a key is short: a loop costs less than memcmp's call */
    if (x->key[i] != y->key[i]) return (unsigned char)x->key[i] < (unsigned char)y->key[i] ? -1 : 1;
  return x->klen < y->klen ? -1 : x->klen > y->klen;
}

/* x < y, with no branch on the heads' comparison (it is what a sort mispredicts) */
static inline int pair_less(const kf_pair *x, const kf_pair *y) {
  if (x->head == y->head && x->head2 == y->head2) return pair_cmp(x, y) < 0; /* rare: 16 bytes alike */
  return (x->head < y->head) | ((x->head == y->head) & (x->head2 < y->head2));
}

static void insertion_sort(kf_pair **a, size_t n) {
  size_t i, j;
  for (i = 1; i < n; i++) {
    kf_pair *p = a[i];
    for (j = i; j > 0 && pair_cmp(p, a[j - 1]) < 0; j--) a[j] = a[j - 1];
    a[j] = p;
  }
}

/* Sorts a[0..n) with tmp as scratch: runs of 8 by insertion (longer ones mispredict more), then merged. */
static void merge_sort(kf_pair **a, kf_pair **tmp, size_t n) {
  size_t mid = n / 2, i = 0, j, k = 0;
  if (n <= 8) {
    insertion_sort(a, n);
    return;
  }
  merge_sort(a, tmp, mid);
  merge_sort(a + mid, tmp, n - mid);
  if (pair_cmp(a[mid - 1], a[mid]) <= 0) return; /* already in order */
  memcpy(tmp, a, mid * sizeof *a);
  j = mid;
  while (i < mid && j < n) { /* branch-free: the compiler makes the choice a conditional move */
    int take = pair_less(a[j], tmp[i]);
    a[k++] = take ? a[j] : tmp[i];
    j += (size_t)take;
    i += (size_t)!take;
  }
  while (i < mid) a[k++] = tmp[i++];
}

/* Bytes 0..7 of key as a big-endian integer, zero-padded on the right. */
static inline uint64_t key_head(const char *key, size_t klen) {
  uint64_t h = 0;
  size_t j, m = klen < 8 ? klen : 8;
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  if (m == 8) { /* one load instead of eight */
    memcpy(&h, key, 8);
    return __builtin_bswap64(h);
  }
#endif
  for (j = 0; j < m; j++) h = h << 8 | (unsigned char)key[j];
  return m == 0 ? 0 : h << (8 * (8 - m)); /* m >= 1: the shift is at most 56 */
}

/* Pointers, not the pairs (each carries its number buffer), are moved. */
void kf_sort_pairs(kf_pair *pairs, size_t n, kf_pair **order, kf_pair **tmp) {
  size_t i;
  for (i = 0; i < n; i++) {
    kf_pair *p = &pairs[i];
    p->head = key_head(p->key, p->klen);
    p->head2 = p->klen > 8 ? key_head(p->key + 8, p->klen - 8) : 0;
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
