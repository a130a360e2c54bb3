/* base64 and hex decoding against plain reference decoders written here, and the round trips. */
#include "common.h"
#include "crypto.h"

static int b64val(uint8_t c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

/* RFC 4648 with padding, nothing else: length a multiple of 4, '=' only as the last one or two. */
static long ref_base64(const uint8_t *in, size_t len, uint8_t *out) {
  size_t i, pad = 0, n = 0;
  uint32_t acc = 0;
  if (len % 4) return -1;
  if (len >= 1 && in[len - 1] == '=') pad++;
  if (len >= 2 && in[len - 2] == '=') pad++;
  if (pad == 1 && len >= 2 && in[len - 2] == '=') return -1;
  for (i = 0; i < len - pad; i++)
    if (b64val(in[i]) < 0) return -1;
  for (i = 0; i < len; i += 4) {
    int j;
    acc = 0;
    for (j = 0; j < 4; j++) acc = acc << 6 | (uint32_t)(in[i + j] == '=' ? 0 : b64val(in[i + j]));
    out[n++] = (uint8_t)(acc >> 16);
    out[n++] = (uint8_t)(acc >> 8);
    out[n++] = (uint8_t)acc;
  }
  return (long)(n - pad);
}

static int hexval(uint8_t c) {
  if (c >= '0' && c <= '9') return c - '0';
  c |= 0x20;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

static long ref_hex(const uint8_t *in, size_t len, uint8_t *out) {
  size_t i;
  if (len % 2) return -1;
  for (i = 0; i < len; i += 2) {
    if (hexval(in[i]) < 0 || hexval(in[i + 1]) < 0) return -1;
    out[i / 2] = (uint8_t)(hexval(in[i]) << 4 | hexval(in[i + 1]));
  }
  return (long)(len / 2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  uint8_t *got = malloc(size + 4), *want = malloc(size + 4);
  char *enc = malloc(4 * ((size + 2) / 3) + 1 + 2 * size + 1);
  long g, w;
  size_t n;
  if (!got || !want || !enc) abort();

  g = kf_base64_decode((const char *)data, size, got);
  w = ref_base64(data, size, want);
  FUZZ_CHECK(g == w, "base64 length %ld, reference %ld", g, w);
  FUZZ_CHECK(g < 0 || memcmp(got, want, (size_t)g) == 0, "base64 bytes differ");

  n = kf_base64_encode(data, size, enc);
  FUZZ_CHECK(n == 4 * ((size + 2) / 3), "base64 encoded length %zu", n);
  g = kf_base64_decode(enc, n, got);
  FUZZ_CHECK(g == (long)size && memcmp(got, data, size) == 0, "base64 round trip");

  g = kf_unhex((const char *)data, size, got);
  w = ref_hex(data, size, want);
  FUZZ_CHECK(g == w, "hex length %ld, reference %ld", g, w);
  FUZZ_CHECK(g < 0 || memcmp(got, want, (size_t)g) == 0, "hex bytes differ");

  kf_hex(data, size, size & 1, enc);
  FUZZ_CHECK(kf_unhex(enc, 2 * size, got) == (long)size && memcmp(got, data, size) == 0, "hex round trip");

  free(got);
  free(want);
  free(enc);
  return 0;
}
