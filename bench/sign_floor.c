/* The signer's floor: MD5 of a finished string-to-sign, hex-encoded, in a C loop with the digest
 * fetched once and one context reused: what signing costs with nothing else around it.
 * Usage: sign_floor FILE SECONDS -> prints "<hex> <signatures per CPU second>" (this process's CPU
 * time, as bench/sign.lua counts kaifang's, so that other work on the machine counts less) */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <openssl/evp.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  static char sts[1 << 20];
  static const char digits[] = "0123456789abcdef";
  unsigned char raw[EVP_MAX_MD_SIZE];
  char hex[2 * EVP_MAX_MD_SIZE + 1];
  unsigned int rawlen = 0, i;
  size_t len;
  long n = 0, k;
  double seconds, t0, deadline;
  EVP_MD_CTX *ctx;
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
  EVP_MD *md = EVP_MD_fetch(NULL, "MD5", NULL);
#else
  const EVP_MD *md = EVP_md5();
#endif
  FILE *f;
  if (argc != 3 || (f = fopen(argv[1], "rb")) == NULL) {
    fprintf(stderr, "usage: %s FILE SECONDS\n", argv[0]);
    return 2;
  }
  len = fread(sts, 1, sizeof sts, f);
  fclose(f);
  seconds = atof(argv[2]);
  ctx = EVP_MD_CTX_new();
  t0 = now();
  deadline = t0 + seconds;
  do {
    for (k = 0; k < 2000; k++) {
      EVP_DigestInit_ex(ctx, md, NULL);
      EVP_DigestUpdate(ctx, sts, len);
      EVP_DigestFinal_ex(ctx, raw, &rawlen);
      for (i = 0; i < rawlen; i++) {
        hex[2 * i] = digits[raw[i] >> 4];
        hex[2 * i + 1] = digits[raw[i] & 15];
      }
    }
    n += 2000;
  } while (now() < deadline);
  hex[2 * rawlen] = '\0';
  printf("%s %.0f\n", hex, (double)n / (now() - t0));
  EVP_MD_CTX_free(ctx);
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
  EVP_MD_free(md);
#endif
  return 0;
}
