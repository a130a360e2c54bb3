/* core.form_encode and core.url_encode against a plain RFC 3986 encoder written here: keys in
 * byte order, everything but A-Z a-z 0-9 - . _ ~ as %XX (upper case). */
#define FUZZ_WITH_LUA
#include "common.h"

#include <ctype.h>

static size_t ref_encode(const char *s, size_t len, char *out) {
  size_t i, n = 0;
  for (i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c && (isalnum(c) && c < 128 ? 1 : strchr("-._~", c) != NULL)) out[n++] = (char)c;
    else {
      out[n++] = '%';
      out[n++] = "0123456789ABCDEF"[c / 16];
      out[n++] = "0123456789ABCDEF"[c % 16];
    }
  }
  return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static fuzz_pair pairs[FUZZ_MAX_PAIRS];
  static char want[FUZZ_MAX_PAIRS * 1900 + 16];
  char *raw;
  reader r = {data, size};
  lua_State *L = fuzz_lua();
  size_t n, i, len = 0, glen;
  const char *got;
  int bad, ok;

  /* the whole input as one string */
  raw = malloc(3 * size + 1);
  if (!raw) abort();
  lua_getglobal(L, "core");
  lua_getfield(L, -1, "url_encode");
  lua_pushlstring(L, (const char *)data, size);
  FUZZ_CHECK(lua_pcall(L, 1, 1, 0) == 0, "url_encode raised: %s", lua_tostring(L, -1));
  got = lua_tolstring(L, -1, &glen);
  len = ref_encode((const char *)data, size, raw);
  FUZZ_CHECK(glen == len && memcmp(got, raw, len) == 0, "url_encode differs");
  free(raw);
  lua_pop(L, 1);

  /* the input as parameters */
  lua_getfield(L, -1, "form_encode");
  n = fuzz_params(L, &r, pairs, &bad);
  ok = lua_pcall(L, 1, 1, 0) == 0;
  if (bad) {
    FUZZ_CHECK(!ok && strstr(lua_tostring(L, -1), "finite"), "a NaN or infinity was encoded");
    return 0;
  }
  FUZZ_CHECK(ok, "form_encode raised: %s", lua_tostring(L, -1));
  len = 0;
  for (i = 0; i < n; i++) {
    if (i) want[len++] = '&';
    len += ref_encode(pairs[i].key, pairs[i].klen, want + len);
    want[len++] = '=';
    len += ref_encode(pairs[i].val, pairs[i].vlen, want + len);
  }
  got = lua_tolstring(L, -1, &glen);
  FUZZ_CHECK(glen == len && memcmp(got, want, len) == 0, "form_encode differs");
  return 0;
}
