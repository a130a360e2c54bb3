/* The canonical-string signer shared by every platform: which keys are left out, whether empty
 * values are dropped, what joins the secret, which digest and which hex case. No Lua here. */
#ifndef KAIFANG_SIGN_H
#define KAIFANG_SIGN_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "crypto.h"

#define KF_MAX_EXCLUDE 8
#define KF_MAX_NAME 32

typedef struct kf_pair {
  const char *key;
  size_t klen;
  uint64_t head;   /* the key's first 8 bytes, big-endian (kf_sort_pairs sets it) */
  const char *val; /* NULL: the value is in num, which moves with the pair when sorted */
  size_t vlen;
  char num[40];    /* a number value formatted as the platform writes it */
} kf_pair;

static inline const char *kf_pair_value(const kf_pair *p) { return p->val ? p->val : p->num; }

typedef struct kf_scheme {
  char name[KF_MAX_NAME];             /* for error messages: "lingdian" */
  char exclude[KF_MAX_EXCLUDE][KF_MAX_NAME];
  size_t exclude_len[KF_MAX_EXCLUDE]; /* set with each name: no strlen per parameter */
  int nexclude;
  int drop_empty;
  int hmac;                           /* the secret is the HMAC key instead of a suffix */
  int upper;
  int shared;                         /* handed to many users: __close leaves it open */
  char joiner[8];                     /* put between the canonical string and the secret */
  size_t joiner_len;
  EVP_MD *md;                         /* fetched once: per-call lookups cost more than MD5 itself */
  EVP_MD_CTX *ctx;
} kf_scheme;

/* Returns 0, or -1 with err set (unknown digest, out of memory). */
int kf_scheme_init(kf_scheme *s, const char *digest, char *err);
void kf_scheme_free(kf_scheme *s);
int kf_scheme_excludes(const kf_scheme *s, const char *key, size_t klen);

/* Formats a number as the platforms write it: integral values without a decimal point. */
size_t kf_format_integer(long long v, char *out);
size_t kf_format_float(double v, char *out);

/* Fills order with pointers to the n pairs, sorted by raw key bytes (the pairs stay in place);
 * tmp holds n pointers too (scratch). */
void kf_sort_pairs(kf_pair *pairs, size_t n, kf_pair **order, kf_pair **tmp);

/* Raw digest (HMAC with key when hmac) of data into raw (KF_MAX_DIGEST bytes), with the scheme's
 * digest; returns its length, or -1 with err set. */
int kf_scheme_raw(kf_scheme *s, int hmac, const char *key, size_t klen, const char *data, size_t len,
                  unsigned char *raw, char *err);

/* Digest of the finished string-to-sign (for HMAC schemes the secret is the key), as hex into
 * out (2 * KF_MAX_DIGEST + 1 bytes). Returns the hex length, or -1 with err set. */
int kf_scheme_digest(kf_scheme *s, const char *sts, size_t len, const char *secret, size_t slen,
                     char *out, char *err);

#endif
