/* AES decryption and PKCS#7 unpadding of any bytes under any key: never a crash, and whatever
 * decrypts encrypts back to the same ciphertext; any plaintext makes the round trip. */
#include "common.h"
#include "crypto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  reader r = {data, size};
  static const size_t keylens[] = {16, 24, 32, 15};
  int sel = take_byte(&r);
  size_t keylen = keylens[sel & 3], ivlen = (sel & 4) ? 16 : (sel & 8) ? 7 : 0;
  const char *mode = (sel & 16) ? "cbc" : "ecb";
  const uint8_t *key, *iv, *in;
  uint8_t *plain, *again;
  char err[KF_ERRLEN];
  long n, m;
  size_t inlen;
  if (take(&r, keylen, &key) < keylen) return 0;
  if (take(&r, ivlen, &iv) < ivlen) return 0;
  inlen = take(&r, r.left, &in);
  plain = malloc(inlen + 16);
  again = malloc(inlen + 32);
  if (!plain || !again) abort();

  n = kf_aes(0, mode, (const char *)key, keylen, (const char *)iv, ivlen, (const char *)in, inlen, plain, err);
  if (n >= 0) {
    FUZZ_CHECK(keylen != 15, "a 15-byte key decrypted");
    FUZZ_CHECK((size_t)n < inlen || inlen == 0, "plaintext %ld from %zu bytes", n, inlen);
    m = kf_aes(1, mode, (const char *)key, keylen, (const char *)iv, ivlen, (const char *)plain, (size_t)n, again, err);
    FUZZ_CHECK(m == (long)inlen && memcmp(again, in, inlen) == 0, "decrypted bytes do not encrypt back");
  }
  /* the input as plaintext: encrypted, it must decrypt to itself */
  n = kf_aes(1, mode, (const char *)key, keylen, (const char *)iv, ivlen, (const char *)in, inlen, again, err);
  if (n >= 0) {
    FUZZ_CHECK(n % 16 == 0 && (size_t)n > inlen, "ciphertext length %ld", n);
    m = kf_aes(0, mode, (const char *)key, keylen, (const char *)iv, ivlen, (const char *)again, (size_t)n, plain, err);
    FUZZ_CHECK(m == (long)inlen && memcmp(plain, in, inlen) == 0, "round trip");
  }
  free(plain);
  free(again);
  return 0;
}
