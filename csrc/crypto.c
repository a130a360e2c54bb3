#include "crypto.h"

#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

void kf_ssl_error(char *buf, size_t buflen, const char *what) {
  size_t used = (size_t)snprintf(buf, buflen, "%s", what);
  unsigned long e;
  while ((e = ERR_get_error()) != 0) {
    if (used + 3 < buflen) {
      char one[160];
      ERR_error_string_n(e, one, sizeof one);
      used += (size_t)snprintf(buf + used, buflen - used, ": %s", one);
    }
  }
  if (used >= buflen && buflen > 0) buf[buflen - 1] = '\0';
}

int kf_digest(const char *alg, int hmac, const char *key, size_t keylen,
              const char *data, size_t len, unsigned char *out, char *err) {
  const EVP_MD *md = EVP_get_digestbyname(alg);
  unsigned int outlen = 0;
  if (md == NULL) {
    snprintf(err, KF_ERRLEN, "unknown digest '%s'", alg);
    return -1;
  }
  if (hmac) {
    if (HMAC(md, key, (int)keylen, (const unsigned char *)data, len, out, &outlen) == NULL) {
      kf_ssl_error(err, KF_ERRLEN, "HMAC failed");
      return -1;
    }
  } else if (!EVP_Digest(data, len, out, &outlen, md, NULL)) {
    kf_ssl_error(err, KF_ERRLEN, "digest failed");
    return -1;
  }
  return (int)outlen;
}

static const EVP_CIPHER *aes_cipher(const char *mode, size_t keylen) {
  int cbc = strcmp(mode, "cbc") == 0;
  if (!cbc && strcmp(mode, "ecb") != 0) return NULL;
  switch (keylen) {
    case 16: return cbc ? EVP_aes_128_cbc() : EVP_aes_128_ecb();
    case 24: return cbc ? EVP_aes_192_cbc() : EVP_aes_192_ecb();
    case 32: return cbc ? EVP_aes_256_cbc() : EVP_aes_256_ecb();
    default: return NULL;
  }
}

long kf_aes(int encrypt, const char *mode, const char *key, size_t keylen, const char *iv, size_t ivlen,
            const char *in, size_t inlen, unsigned char *out, char *err) {
  const EVP_CIPHER *cipher = aes_cipher(mode, keylen);
  EVP_CIPHER_CTX *ctx;
  int n1 = 0, n2 = 0, ok;
  if (cipher == NULL) {
    snprintf(err, KF_ERRLEN, "AES needs mode 'ecb' or 'cbc' and a key of 16, 24 or 32 bytes (got %zu)", keylen);
    return -1;
  }
  if (strcmp(mode, "cbc") == 0 && ivlen != 16) {
    snprintf(err, KF_ERRLEN, "AES-CBC needs an iv of 16 bytes (got %zu)", ivlen);
    return -1;
  }
  if (inlen > (size_t)0x7fffffef) {
    snprintf(err, KF_ERRLEN, "AES input too large");
    return -1;
  }
  ctx = EVP_CIPHER_CTX_new();
  if (ctx == NULL) {
    kf_ssl_error(err, KF_ERRLEN, "AES context");
    return -1;
  }
  ok = EVP_CipherInit_ex(ctx, cipher, NULL, (const unsigned char *)key,
                         (const unsigned char *)(ivlen ? iv : NULL), encrypt) &&
       EVP_CipherUpdate(ctx, out, &n1, (const unsigned char *)in, (int)inlen) &&
       EVP_CipherFinal_ex(ctx, out + n1, &n2);
  EVP_CIPHER_CTX_free(ctx);
  if (!ok) {
    kf_ssl_error(err, KF_ERRLEN, encrypt ? "AES encryption failed" : "AES decryption failed (wrong key, mode or padding)");
    return -1;
  }
  return (long)n1 + n2;
}

void kf_hex(const unsigned char *in, size_t len, int upper, char *out) {
  const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
  size_t i;
  for (i = 0; i < len; i++) {
    out[2 * i] = digits[in[i] >> 4];
    out[2 * i + 1] = digits[in[i] & 15];
  }
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

long kf_unhex(const char *in, size_t len, unsigned char *out) {
  size_t i;
  if (len % 2) return -1;
  for (i = 0; i < len; i += 2) {
    int hi = hexval(in[i]), lo = hexval(in[i + 1]);
    if (hi < 0 || lo < 0) return -1;
    out[i / 2] = (unsigned char)(hi << 4 | lo);
  }
  return (long)(len / 2);
}

size_t kf_base64_encode(const unsigned char *in, size_t len, char *out) {
  return (size_t)EVP_EncodeBlock((unsigned char *)out, in, (int)len);
}

long kf_base64_decode(const char *in, size_t len, unsigned char *out) {
  size_t pad = 0, i;
  int n;
  if (len % 4) return -1;
  for (i = 0; i < len; i++) {
    char c = in[i];
    int ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '/';
    if (c == '=' && i >= len - 2) {
      pad++;
      continue;
    }
    if (!ok || pad) return -1; /* '=' only at the end */
  }
  if (len == 0) return 0;
  n = EVP_DecodeBlock(out, (const unsigned char *)in, (int)len);
  if (n < 0) return -1;
  return (long)n - (long)pad; /* EVP_DecodeBlock counts padding as zero bytes */
}

int kf_ct_equal(const char *a, size_t alen, const char *b, size_t blen) {
  if (alen != blen) return 0;
  return CRYPTO_memcmp(a, b, alen) == 0;
}

int kf_random(unsigned char *out, size_t len) {
  return RAND_bytes(out, (int)len) == 1;
}
