/* Digests, AES, base64, hex and constant-time comparison over OpenSSL. No Lua here. */
#ifndef KAIFANG_CRYPTO_H
#define KAIFANG_CRYPTO_H

#include <stddef.h>

#define KF_ERRLEN 256
#define KF_MAX_DIGEST 64

/* Drains OpenSSL's error queue into buf, prefixed by what; always NUL-terminates. */
void kf_ssl_error(char *buf, size_t buflen, const char *what);

/* Digest (hmac == 0) or HMAC of data with the named algorithm (md5, sha1, sha256, ...).
 * Writes the raw digest to out (KF_MAX_DIGEST bytes) and returns its length, or -1 with err set. */
int kf_digest(const char *alg, int hmac, const char *key, size_t keylen,
              const char *data, size_t len, unsigned char *out, char *err);

/* AES-128/192/256 by key length, mode "ecb" or "cbc" (iv of 16 bytes), PKCS#7 padding.
 * out must hold inlen + 16 bytes. Returns the output length, or -1 with err set. */
long kf_aes(int encrypt, const char *mode, const char *key, size_t keylen, const char *iv, size_t ivlen,
            const char *in, size_t inlen, unsigned char *out, char *err);

/* out holds 2 * len bytes. */
void kf_hex(const unsigned char *in, size_t len, int upper, char *out);
/* out holds len / 2 bytes; returns the output length or -1 on a bad digit or odd length. */
long kf_unhex(const char *in, size_t len, unsigned char *out);

/* out holds 4 * ((len + 2) / 3) + 1 bytes; returns the encoded length. */
size_t kf_base64_encode(const unsigned char *in, size_t len, char *out);
/* out holds 3 * (len / 4) bytes; returns the decoded length or -1 on malformed input. */
long kf_base64_decode(const char *in, size_t len, unsigned char *out);

/* 1 when equal, in time that depends on the lengths only. */
int kf_ct_equal(const char *a, size_t alen, const char *b, size_t blen);

int kf_random(unsigned char *out, size_t len);

#endif
