/* The signer (core.signer, through Lua as the clients call it) against a canonical string built
 * here: keys in byte order, k=v joined by &, excluded keys and (if asked) empty values left out,
 * the joiner and the secret appended; and its digest against OpenSSL's. */
#define FUZZ_WITH_LUA
#include "common.h"
#include "crypto.h"

static const char *digests[] = {"md5", "sha1", "sha256", "sha512"};
static const char *joiners[] = {"", "&", "|", "&key="};

static int excluded(const fuzz_pair *p) {
  return (p->klen == 4 && memcmp(p->key, "sign", 4) == 0) || (p->klen == 3 && memcmp(p->key, "key", 3) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static fuzz_pair pairs[FUZZ_MAX_PAIRS];
  static char sts[FUZZ_MAX_PAIRS * 600 + 512];
  reader r = {data, size};
  lua_State *L = fuzz_lua();
  int flags = take_byte(&r), bad, ok;
  int drop_empty = flags & 1, hmac = flags & 2, upper = flags & 4;
  const char *joiner = joiners[(flags >> 3) & 3], *digest = digests[(flags >> 5) & 3];
  const uint8_t *secret;
  size_t slen = take(&r, (size_t)take_byte(&r) % 64, &secret), n, i, len = 0;

  lua_getglobal(L, "core");
  lua_getfield(L, -1, "signer");
  lua_createtable(L, 0, 8);
  lua_pushstring(L, digest);
  lua_setfield(L, -2, "digest");
  lua_pushstring(L, joiner);
  lua_setfield(L, -2, "joiner");
  lua_pushboolean(L, drop_empty);
  lua_setfield(L, -2, "drop_empty");
  lua_pushboolean(L, hmac);
  lua_setfield(L, -2, "hmac");
  lua_pushboolean(L, upper);
  lua_setfield(L, -2, "upper");
  lua_createtable(L, 2, 0);
  lua_pushliteral(L, "sign");
  lua_rawseti(L, -2, 1);
  lua_pushliteral(L, "key");
  lua_rawseti(L, -2, 2);
  lua_setfield(L, -2, "exclude");
  FUZZ_CHECK(lua_pcall(L, 1, 1, 0) == 0, "core.signer: %s", lua_tostring(L, -1));
  lua_getfield(L, -1, "sign");
  lua_pushvalue(L, -2);
  n = fuzz_params(L, &r, pairs, &bad);
  for (bad = 0, i = 0; i < n; i++) bad |= pairs[i].bad && !excluded(&pairs[i]); /* an excluded value is never read */
  lua_pushlstring(L, (const char *)secret, slen);
  ok = lua_pcall(L, 3, 2, 0) == 0;
  if (bad) {
    FUZZ_CHECK(!ok && strstr(lua_tostring(L, -1), "finite"), "a NaN or infinity was signed");
    return 0;
  }
  FUZZ_CHECK(ok, "sign raised: %s", lua_tostring(L, -1));

  for (i = 0; i < n; i++) {
    const fuzz_pair *p = &pairs[i];
    if (excluded(p)) continue;
    if (drop_empty && p->vlen == 0) continue;
    if (len) sts[len++] = '&';
    memcpy(sts + len, p->key, p->klen);
    len += p->klen;
    sts[len++] = '=';
    memcpy(sts + len, p->val, p->vlen);
    len += p->vlen;
  }
  if (!hmac) {
    memcpy(sts + len, joiner, strlen(joiner));
    len += strlen(joiner);
    memcpy(sts + len, secret, slen);
    len += slen;
  }
  {
    size_t glen;
    const char *got = lua_tolstring(L, -1, &glen), *sig;
    unsigned char raw[KF_MAX_DIGEST];
    char hex[2 * KF_MAX_DIGEST], err[KF_ERRLEN];
    int dlen;
    FUZZ_CHECK(glen == len && memcmp(got, sts, len) == 0, "string-to-sign differs (%zu vs %zu bytes)", glen, len);
    dlen = kf_digest(digest, hmac, (const char *)secret, slen, sts, len, raw, err);
    FUZZ_CHECK(dlen > 0, "%s", err);
    kf_hex(raw, (size_t)dlen, upper, hex);
    sig = lua_tolstring(L, -2, &glen);
    FUZZ_CHECK(glen == 2 * (size_t)dlen && memcmp(sig, hex, glen) == 0, "digest differs");
  }
  return 0;
}
