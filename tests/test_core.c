/* C unit tests for the parts of the core that need no Lua: the signer's pieces, the crypto
 * helpers and URL encoding. Expected digests come from the platform documents and RFCs. */
#include <stdio.h>
#include <string.h>

#include "crypto.h"
#include "http.h"
#include "sign.h"

static int passed, failed;

#define CHECK(cond, what)                                                      \
  do {                                                                         \
    if (cond) {                                                                \
      passed++;                                                                \
    } else {                                                                   \
      failed++;                                                                \
      fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, what);           \
    }                                                                          \
  } while (0)

static void test_digests(void) {
  unsigned char raw[KF_MAX_DIGEST];
  char hex[2 * KF_MAX_DIGEST + 1], err[KF_ERRLEN];
  int n = kf_digest("md5", 0, NULL, 0, "abc", 3, raw, err);
  kf_hex(raw, (size_t)n, 0, hex);
  hex[2 * n] = '\0';
  CHECK(n == 16 && strcmp(hex, "900150983cd24fb0d6963f7d28e17f72") == 0, "md5(abc), RFC 1321");
  n = kf_digest("sha1", 0, NULL, 0, "abc", 3, raw, err);
  kf_hex(raw, (size_t)n, 1, hex);
  hex[2 * n] = '\0';
  CHECK(n == 20 && strcmp(hex, "A9993E364706816ABA3E25717850C26C9CD0D89D") == 0, "SHA1(abc), FIPS 180");
  /* RFC 4231 test case 2 */
  n = kf_digest("sha256", 1, "Jefe", 4, "what do ya want for nothing?", 28, raw, err);
  kf_hex(raw, (size_t)n, 0, hex);
  hex[2 * n] = '\0';
  CHECK(strcmp(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843") == 0, "HMAC-SHA256 RFC 4231 #2");
  CHECK(kf_digest("nope", 0, NULL, 0, "x", 1, raw, err) < 0 && strstr(err, "nope") != NULL, "unknown digest named");
}

static void test_scheme(void) {
  /* the document's interface B example, corrected as in seed-vectors.json */
  kf_scheme s;
  char hex[2 * KF_MAX_DIGEST + 1], err[KF_ERRLEN];
  const char *sts = "developer_code=U2QHNB2w=&timestamp=15640471261&type=16&user_code=U2TD844B2"
                    "744ed968e7e1a4aebafa6f4888fced68";
  memset(&s, 0, sizeof s);
  CHECK(kf_scheme_init(&s, "md5", err) == 0, "scheme init");
  CHECK(kf_scheme_digest(&s, sts, strlen(sts), "", 0, hex, err) == 32 &&
            strcmp(hex, "6dce2061b71512a98f1fdbdbf29ce566") == 0,
        "lingdian B vector");
  strcpy(s.exclude[0], "sign");
  s.exclude_len[0] = 4;
  s.nexclude = 1;
  CHECK(kf_scheme_excludes(&s, "sign", 4) && !kf_scheme_excludes(&s, "sig", 3) && !kf_scheme_excludes(&s, "signs", 5),
        "excluded keys match whole names only");
  kf_scheme_free(&s);
  kf_scheme_free(&s); /* idempotent */
  memset(&s, 0, sizeof s);
  CHECK(kf_scheme_init(&s, "no-such-digest", err) == -1 && strstr(err, "no-such-digest"), "bad digest refused");
}

static void test_sort_and_format(void) {
  kf_pair p[5], *order[10];
  char buf[40];
  const char *keys[] = {"b", "a_b", "ab", "B", "a"};
  const char *want[] = {"B", "a", "a_b", "ab", "b"};
  int i, ok = 1;
  memset(p, 0, sizeof p);
  for (i = 0; i < 5; i++) {
    p[i].key = keys[i];
    p[i].klen = strlen(keys[i]);
    p[i].vlen = kf_format_integer(i, p[i].num); /* the value lives in the pair and moves with it */
  }
  kf_sort_pairs(p, 5, order, order + 5);
  for (i = 0; i < 5; i++) ok &= strcmp(order[i]->key, want[i]) == 0;
  CHECK(ok, "keys sort by raw bytes");
  CHECK(strcmp(kf_pair_value(order[0]), "3") == 0 && strcmp(kf_pair_value(order[4]), "0") == 0, "values go with keys");
  kf_format_integer(1099511627776LL, buf);
  CHECK(strcmp(buf, "1099511627776") == 0, "large integer");
  CHECK(kf_format_integer(-9223372036854775807LL - 1, buf) == 20 && strcmp(buf, "-9223372036854775808") == 0,
        "the smallest integer");
  CHECK(kf_format_integer(0, buf) == 1 && strcmp(buf, "0") == 0, "zero");
  {
    /* past insertion sort's range: 40 keys given in reverse order */
    kf_pair many[40], *sorted[80];
    char names[40][16];
    memset(many, 0, sizeof many);
    for (i = 0; i < 40; i++) {
      many[i].klen = (size_t)snprintf(names[i], sizeof names[i], "param_%02d", 39 - i); /* past 8 bytes */
      many[i].key = names[i];
    }
    kf_sort_pairs(many, 40, sorted, sorted + 40);
    for (ok = 1, i = 0; i < 40; i++) ok &= sorted[i] == &many[39 - i];
    CHECK(ok, "many keys sort by raw bytes");
  }
  kf_format_float(1.5, buf);
  CHECK(strcmp(buf, "1.5") == 0, "fraction");
}

static void test_aes_base64(void) {
  /* FIPS-197 appendix C.1 block, then PKCS#7 adds a second block */
  unsigned char key[16], pt[16], out[64], back[64];
  char err[KF_ERRLEN], hex[129], b64[128];
  long n, m;
  kf_unhex("000102030405060708090a0b0c0d0e0f", 32, key);
  kf_unhex("00112233445566778899aabbccddeeff", 32, pt);
  n = kf_aes(1, "ecb", (char *)key, 16, NULL, 0, (char *)pt, 16, out, err);
  kf_hex(out, 16, 0, hex);
  hex[32] = '\0';
  CHECK(n == 32 && strcmp(hex, "69c4e0d86a7b0430d8cdb78070b4c55a") == 0, "AES-128 FIPS-197 C.1");
  m = kf_aes(0, "ecb", (char *)key, 16, NULL, 0, (char *)out, (size_t)n, back, err);
  CHECK(m == 16 && memcmp(back, pt, 16) == 0, "AES-128 ECB round trip");
  CHECK(kf_aes(1, "ecb", "short", 5, NULL, 0, "x", 1, out, err) < 0 && strstr(err, "16, 24 or 32"), "bad key length");
  CHECK(kf_aes(1, "cbc", (char *)key, 16, "iv", 2, "x", 1, out, err) < 0 && strstr(err, "iv"), "bad iv");
  CHECK(kf_aes(0, "ecb", "0000000000000000", 16, NULL, 0, (char *)out, 32, back, err) < 0, "wrong key refused by padding check");

  CHECK(kf_base64_encode((const unsigned char *)"foobar", 6, b64) == 8 && strcmp(b64, "Zm9vYmFy") == 0, "base64 RFC 4648");
  CHECK(kf_base64_encode((const unsigned char *)"fo", 2, b64) == 4 && strcmp(b64, "Zm8=") == 0, "base64 padding");
  n = kf_base64_decode("Zm8=", 4, out);
  CHECK(n == 2 && memcmp(out, "fo", 2) == 0, "base64 decode with padding");
  CHECK(kf_base64_decode("Zm8", 3, out) < 0, "base64 bad length");
  CHECK(kf_base64_decode("Z=8=", 4, out) < 0, "base64 '=' inside");
  CHECK(kf_base64_decode("Zm*=", 4, out) < 0, "base64 bad character");
  CHECK(kf_unhex("0g", 2, out) < 0 && kf_unhex("abc", 3, out) < 0, "bad hex");
  CHECK(kf_ct_equal("abc", 3, "abc", 3) && !kf_ct_equal("abc", 3, "abd", 3) && !kf_ct_equal("ab", 2, "abc", 3), "ct_equal");
}

static void test_url_encode(void) {
  char out[64];
  size_t n = kf_url_encode("a b&=~中", strlen("a b&=~中"), out);
  out[n] = '\0';
  CHECK(strcmp(out, "a%20b%26%3D~%E4%B8%AD") == 0, "percent-encoding of reserved bytes and UTF-8");
}

int main(void) {
  test_digests();
  test_scheme();
  test_sort_and_format();
  test_aes_base64();
  test_url_encode();
  printf("%d passed, %d failed\n", passed, failed);
  return failed != 0;
}
