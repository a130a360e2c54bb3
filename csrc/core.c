/* kaifang.core: the Lua binding of the signer, the crypto helpers and the libcurl transport. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#include "compat.h"
#include "crypto.h"
#include "http.h"
#include "json.h"
#include "sign.h"
#include "signals.h"
#include "sqlite.h"
#include "store.h"

#define SIGNER_MT "kaifang.signer"
#define HTTP_MT "kaifang.http"
#define MULTI_MT "kaifang.multi"
#define RESPONSE_MT "kaifang.response"
#define MAX_STACK_PAIRS 32
#define MAX_STACK_STS 4096
#define MAX_SECONDS 1e6 /* eleven days: any longer is a mistake, and it keeps the casts in range */

/* ---- values as the platforms write them ------------------------------------------------ */

/* Returns the value at idx as bytes (numbers formatted into num); NULL for nil/null. Raises on
 * a type a platform cannot receive, naming who as prefix..name ("kaifang." "lingdian"): the
 * name is put together only then, not on every call. */
static const char *param_value(lua_State *L, int idx, const char *key, const char *prefix, const char *name,
                               char *num, size_t *len) {
  long long iv = 0;
  switch (lua_type(L, idx)) {
    case LUA_TSTRING:
      return lua_tolstring(L, idx, len);
    case LUA_TNUMBER:
      if (kf_isinteger(L, idx, &iv)) {
        *len = kf_format_integer(iv, num);
        return num;
      }
      if (!isfinite(lua_tonumber(L, idx)))
        luaL_error(L, "%s%s: parameter '%s' must be a finite number, not %s", prefix, name, key, lua_tostring(L, idx));
      *len = kf_format_float(lua_tonumber(L, idx), num);
      return num;
    case LUA_TLIGHTUSERDATA:
      if (lua_touserdata(L, idx) == NULL) { /* cjson.null */
        *len = 0;
        return NULL;
      }
      /* fallthrough */
    default:
      luaL_error(L, "%s%s: parameter '%s' must be a string or a number, not %s", prefix, name, key,
                 luaL_typename(L, idx));
      return NULL;
  }
}

/* ---- signer ---------------------------------------------------------------------------- */

/* The signer's metatable is sign's upvalue: comparing with it costs less than luaL_checkudata's
 * registry lookup by name, which stays for the error message. */
static kf_scheme *check_signer(lua_State *L) {
  kf_scheme *s = lua_touserdata(L, 1);
  int ok = s != NULL && lua_getmetatable(L, 1);
  if (ok) {
    ok = lua_rawequal(L, -1, lua_upvalueindex(1));
    lua_pop(L, 1);
  }
  if (!ok) s = luaL_checkudata(L, 1, SIGNER_MT);
  if (s->md == NULL) luaL_error(L, "kaifang.%s: signer is closed", s->name);
  return s;
}

static int signer_gc(lua_State *L) {
  kf_scheme_free(luaL_checkudata(L, 1, SIGNER_MT));
  return 0;
}

/* A shared signer (kaifang.sign's, one per platform for every client) outlives any one user's
 * scope: closing it would break every other client, so only its __gc frees it. */
static int signer_close(lua_State *L) {
  kf_scheme *s = luaL_checkudata(L, 1, SIGNER_MT);
  if (!s->shared) kf_scheme_free(s);
  return 0;
}

static void copy_name(lua_State *L, int idx, char *dst, size_t cap, const char *what) {
  size_t len;
  const char *src = luaL_checklstring(L, idx, &len);
  if (memchr(src, '\0', len)) luaL_error(L, "kaifang.core.signer: %s contains a NUL byte", what);
  if (len >= cap) luaL_error(L, "kaifang.core.signer: %s '%s' is too long", what, src);
  memcpy(dst, src, len + 1);
}

static int l_signer(lua_State *L) {
  kf_scheme *s;
  char err[KF_ERRLEN];
  const char *digest, *joiner;
  size_t n, i;
  luaL_checktype(L, 1, LUA_TTABLE);
  s = kf_newuserdata(L, sizeof *s);
  memset(s, 0, sizeof *s);
  luaL_getmetatable(L, SIGNER_MT);
  lua_setmetatable(L, -2);

  lua_getfield(L, 1, "name");
  if (lua_isnil(L, -1)) strcpy(s->name, "kaifang");
  else copy_name(L, -1, s->name, sizeof s->name, "name");
  lua_getfield(L, 1, "digest");
  digest = luaL_optstring(L, -1, "md5");
  lua_getfield(L, 1, "joiner");
  joiner = luaL_optlstring(L, -1, "", &n);
  if (n >= sizeof s->joiner) return luaL_error(L, "kaifang.core.signer: joiner too long");
  memcpy(s->joiner, joiner, n);
  s->joiner_len = n;
  lua_getfield(L, 1, "drop_empty");
  s->drop_empty = lua_toboolean(L, -1);
  lua_getfield(L, 1, "hmac");
  s->hmac = lua_toboolean(L, -1);
  lua_getfield(L, 1, "upper");
  s->upper = lua_toboolean(L, -1);
  lua_getfield(L, 1, "shared");
  s->shared = lua_toboolean(L, -1);
  lua_getfield(L, 1, "exclude");
  if (!lua_isnil(L, -1)) {
    luaL_checktype(L, -1, LUA_TTABLE);
    n = kf_rawlen(L, -1);
    if (n > KF_MAX_EXCLUDE) return luaL_error(L, "kaifang.core.signer: at most %d excluded keys", KF_MAX_EXCLUDE);
    for (i = 1; i <= n; i++) {
      lua_rawgeti(L, -1, (int)i);
      copy_name(L, -1, s->exclude[i - 1], KF_MAX_NAME, "excluded key");
      s->exclude_len[i - 1] = strlen(s->exclude[i - 1]);
      if (s->exclude_len[i - 1] < 64) s->exclude_lens |= (uint64_t)1 << s->exclude_len[i - 1];
      lua_pop(L, 1);
    }
    s->nexclude = (int)n;
  }
  if (kf_scheme_init(s, digest, err) != 0) return luaL_error(L, "kaifang.core.signer: %s", err);
  lua_settop(L, 2);
  return 1;
}

/* The parameters of table t as pairs, sorted into *order, and the bytes their "k=v&" take
 * (encoded: 3 per byte). Kept out: keys the scheme s excludes, and empty values when it drops
 * them (s may be NULL). *pairs and *order start as the caller's arrays of cap and 2 * cap; past
 * that they are userdata that the GC owns (left on the stack), so an error cannot leak them. */
static size_t collect_pairs(lua_State *L, int t, const kf_scheme *s, const char *prefix, const char *name, int encoded,
                            kf_pair **pairs, kf_pair ***order, size_t cap, size_t *bytes) {
  size_t n = 0, room = cap;
  lua_pushnil(L);
  while (lua_next(L, t)) {
    kf_pair *p;
    if (lua_type(L, -2) != LUA_TSTRING)
      return luaL_error(L, "%s%s: parameter names must be strings, got %s", prefix, name, luaL_typename(L, -2));
    if (n == cap) {
      kf_pair *grown;
      luaL_checkstack(L, 4, "too many parameters");
      grown = kf_newuserdata(L, 4 * cap * sizeof *grown);
      memcpy(grown, *pairs, n * sizeof *grown);
      *pairs = grown;
      cap *= 4;
      lua_insert(L, -3); /* below the key and value that lua_next needs on top */
    }
    p = &(*pairs)[n];
    p->key = lua_tolstring(L, -2, &p->klen);
    if (s && kf_scheme_excludes(s, p->key, p->klen)) {
      lua_pop(L, 1);
      continue;
    }
    p->val = param_value(L, -1, p->key, prefix, name, p->num, &p->vlen);
    p->val = p->val == p->num ? NULL : p->val ? p->val : "";
    if (p->vlen > 0 || !(s && s->drop_empty)) {
      n++;
      *bytes += (encoded ? 3 : 1) * (p->klen + p->vlen) + 2; /* '=' and '&' */
    }
    lua_pop(L, 1);
  }
  if (n > room) {
    luaL_checkstack(L, 2, "too many parameters");
    *order = kf_newuserdata(L, 2 * n * sizeof **order);
  }
  kf_sort_pairs(*pairs, n, *order, *order + n);
  return n;
}

/* signer:sign(params, secret [, sign_only]) -> sign, string_to_sign (sign alone with sign_only:
 * a client needs the string only to log it). The string is put together in one buffer sized
 * beforehand (on the C stack when it fits). */
static int l_signer_sign(lua_State *L) {
  kf_scheme *s = check_signer(L);
  kf_pair stack_pairs[MAX_STACK_PAIRS], *pairs = stack_pairs, *stack_order[2 * MAX_STACK_PAIRS], **order = stack_order;
  size_t n, slen, i, total, len = 0;
  const char *secret;
  char hex[2 * KF_MAX_DIGEST + 1], err[KF_ERRLEN], stack_sts[MAX_STACK_STS], *sts = stack_sts;
  int hexlen, sign_only = lua_toboolean(L, 4);
  luaL_checktype(L, 2, LUA_TTABLE);
  secret = luaL_checklstring(L, 3, &slen);
  lua_settop(L, 3);
  total = s->hmac ? 0 : s->joiner_len + slen;
  if (s->scratch_cap > MAX_STACK_PAIRS) {
    pairs = s->scratch;
    order = (kf_pair **)(s->scratch + s->scratch_cap);
  }
  n = collect_pairs(L, 2, s, "kaifang.", s->name, 0, &pairs, &order,
                    s->scratch_cap > MAX_STACK_PAIRS ? s->scratch_cap : MAX_STACK_PAIRS, &total);
  if (n > s->scratch_cap && n > MAX_STACK_PAIRS) kf_scheme_reserve(s, n); /* for the next call */
  if (total > sizeof stack_sts) sts = kf_newuserdata(L, total);
  for (i = 0; i < n; i++) {
    const kf_pair *p = order[i];
    if (i) sts[len++] = '&';
    memcpy(sts + len, p->key, p->klen);
    len += p->klen;
    sts[len++] = '=';
    memcpy(sts + len, kf_pair_value(p), p->vlen);
    len += p->vlen;
  }
  if (!s->hmac) {
    memcpy(sts + len, s->joiner, s->joiner_len);
    len += s->joiner_len;
    memcpy(sts + len, secret, slen);
    len += slen;
  }
  hexlen = kf_scheme_digest(s, sts, len, secret, slen, hex, err);
  if (hexlen < 0) return luaL_error(L, "kaifang.%s: %s", s->name, err);
  lua_pushlstring(L, hex, (size_t)hexlen);
  if (sign_only) return 1;
  lua_pushlstring(L, sts, len);
  return 2;
}

/* ---- digests and crypto ---------------------------------------------------------------- */

static int push_digest(lua_State *L, const unsigned char *raw, int len, int fmt_idx) {
  const char *fmt = luaL_optstring(L, fmt_idx, "hex");
  char hex[2 * KF_MAX_DIGEST];
  if (strcmp(fmt, "raw") == 0) {
    lua_pushlstring(L, (const char *)raw, (size_t)len);
  } else if (strcmp(fmt, "hex") == 0 || strcmp(fmt, "HEX") == 0) {
    kf_hex(raw, (size_t)len, fmt[0] == 'H', hex);
    lua_pushlstring(L, hex, 2 * (size_t)len);
  } else {
    return luaL_argerror(L, fmt_idx, "format must be 'hex', 'HEX' or 'raw'");
  }
  return 1;
}

/* The digest alg, fetched the first time it is asked for and kept in the cache that is the
 * function's upvalue (a name lookup per call costs more than MD5 of a short string). Raises on
 * an unknown name. */
static kf_scheme *cached_digest(lua_State *L, int idx) {
  kf_scheme *s;
  char err[KF_ERRLEN];
  const char *alg = kf_checkcstring(L, idx);
  lua_pushvalue(L, idx);
  lua_rawget(L, lua_upvalueindex(1));
  s = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (s) return s;
  s = kf_newuserdata(L, sizeof *s);
  memset(s, 0, sizeof *s);
  luaL_getmetatable(L, SIGNER_MT); /* its __gc frees the digest */
  lua_setmetatable(L, -2);
  if (kf_scheme_init(s, alg, err) != 0) {
    luaL_argerror(L, idx, err);
    return NULL;
  }
  s->shared = 1;
  lua_pushvalue(L, idx);
  lua_insert(L, -2);
  lua_rawset(L, lua_upvalueindex(1));
  return s;
}

static int l_digest(lua_State *L) {
  size_t len;
  kf_scheme *s = cached_digest(L, 1);
  const char *data = luaL_checklstring(L, 2, &len);
  unsigned char out[KF_MAX_DIGEST];
  char err[KF_ERRLEN];
  int n = kf_scheme_raw(s, 0, NULL, 0, data, len, out, err);
  if (n < 0) return luaL_error(L, "kaifang.core.digest: %s", err);
  return push_digest(L, out, n, 3);
}

static int l_hmac(lua_State *L) {
  size_t klen, len;
  kf_scheme *s = cached_digest(L, 1);
  const char *key = luaL_checklstring(L, 2, &klen), *data = luaL_checklstring(L, 3, &len);
  unsigned char out[KF_MAX_DIGEST];
  char err[KF_ERRLEN];
  int n = kf_scheme_raw(s, 1, key, klen, data, len, out, err);
  if (n < 0) return luaL_error(L, "kaifang.core.hmac: %s", err);
  return push_digest(L, out, n, 4);
}

static int aes(lua_State *L, int encrypt) {
  size_t klen, len, ivlen = 0;
  const char *key = luaL_checklstring(L, 1, &klen), *data = luaL_checklstring(L, 2, &len);
  const char *mode = luaL_optstring(L, 3, "ecb"), *iv = luaL_optlstring(L, 4, NULL, &ivlen);
  char err[KF_ERRLEN];
  unsigned char *out = kf_newuserdata(L, len + 16);
  long n = kf_aes(encrypt, mode, key, klen, iv, ivlen, data, len, out, err);
  if (n < 0) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  lua_pushlstring(L, (const char *)out, (size_t)n);
  return 1;
}

static int l_aes_encrypt(lua_State *L) { return aes(L, 1); }
static int l_aes_decrypt(lua_State *L) { return aes(L, 0); }

static int l_base64_encode(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  char *out = kf_newuserdata(L, 4 * ((len + 2) / 3) + 1);
  size_t n = kf_base64_encode((const unsigned char *)s, len, out);
  lua_pushlstring(L, out, n);
  return 1;
}

static int l_base64_decode(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  unsigned char *out = kf_newuserdata(L, 3 * (len / 4) + 3);
  long n = kf_base64_decode(s, len, out);
  if (n < 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "malformed base64");
    return 2;
  }
  lua_pushlstring(L, (const char *)out, (size_t)n);
  return 1;
}

static int l_hex_encode(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  int upper = lua_toboolean(L, 2); /* read before the buffer takes slot 2 */
  char *out = kf_newuserdata(L, 2 * len + 1);
  kf_hex((const unsigned char *)s, len, upper, out);
  lua_pushlstring(L, out, 2 * len);
  return 1;
}

static int l_hex_decode(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  unsigned char *out = kf_newuserdata(L, len / 2 + 1);
  long n = kf_unhex(s, len, out);
  if (n < 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "malformed hex");
    return 2;
  }
  lua_pushlstring(L, (const char *)out, (size_t)n);
  return 1;
}

static int l_ct_equal(lua_State *L) {
  size_t alen, blen;
  const char *a = luaL_checklstring(L, 1, &alen), *b = luaL_checklstring(L, 2, &blen);
  lua_pushboolean(L, kf_ct_equal(a, alen, b, blen));
  return 1;
}

static int l_random_hex(lua_State *L) {
  lua_Integer n = luaL_optinteger(L, 1, 16);
  unsigned char raw[256];
  char hex[512];
  luaL_argcheck(L, n > 0 && n <= 256, 1, "between 1 and 256 bytes");
  if (!kf_random(raw, (size_t)n)) {
    char err[KF_ERRLEN];
    kf_ssl_error(err, sizeof err, "RAND_bytes failed");
    return luaL_error(L, "kaifang.core.random_hex: %s", err);
  }
  kf_hex(raw, (size_t)n, 0, hex);
  lua_pushlstring(L, hex, 2 * (size_t)n);
  return 1;
}

/* ---- encodings --------------------------------------------------------------------------- */

static void add_encoded(luaL_Buffer *b, const char *s, size_t len) {
  char chunk[3 * 256];
  while (len > 0) {
    size_t take = len < 256 ? len : 256;
    luaL_addlstring(b, chunk, kf_url_encode(s, take, chunk));
    s += take;
    len -= take;
  }
}

static int l_url_encode(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  add_encoded(&b, s, len);
  luaL_pushresult(&b);
  return 1;
}

/* core.form_encode(params): sorted keys, so the body is reproducible byte for byte. */
static int l_form_encode(lua_State *L) {
  kf_pair stack_pairs[MAX_STACK_PAIRS], *pairs = stack_pairs, *stack_order[2 * MAX_STACK_PAIRS], **order = stack_order;
  size_t n, i, total = 0, len = 0;
  char stack_out[MAX_STACK_STS], *out = stack_out;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  n = collect_pairs(L, 1, NULL, "kaifang.core.", "form_encode", 1, &pairs, &order, MAX_STACK_PAIRS, &total);
  if (total > sizeof stack_out) out = kf_newuserdata(L, total);
  for (i = 0; i < n; i++) {
    const kf_pair *p = order[i];
    if (i) out[len++] = '&';
    len += kf_url_encode(p->key, p->klen, out + len);
    out[len++] = '=';
    len += kf_url_encode(kf_pair_value(p), p->vlen, out + len);
  }
  lua_pushlstring(L, out, len);
  return 1;
}

#if LUA_VERSION_NUM >= 503
/* Floats of t (and of the tables in it) that hold whole numbers within 2^53 become integers. */
static void integers_in(lua_State *L, int t, int depth) {
  luaL_checkstack(L, 3, "JSON nested too deep");
  lua_pushnil(L);
  while (lua_next(L, t)) {
    int tv = lua_type(L, -1);
    if (tv == LUA_TNUMBER && !lua_isinteger(L, -1)) {
      lua_Number x = lua_tonumber(L, -1);
      if (x >= -9007199254740992.0 && x <= 9007199254740992.0 && x == floor(x)) {
        lua_pushvalue(L, -2);
        lua_pushinteger(L, (lua_Integer)x);
        lua_rawset(L, t); /* an existing key: allowed while traversing */
      }
    } else if (tv == LUA_TTABLE && depth < 1000) {
      integers_in(L, lua_gettop(L), depth + 1);
    }
    lua_pop(L, 1);
  }
}
#endif

/* core.integers(v) -> v, with whole floats as integers (cjson reads every number as a float: a
 * code is 104, not 104.0); the walk once done in Lua, here for its cost per reply. On LuaJIT,
 * which has one number type, v as it is. */
static int l_integers(lua_State *L) {
  lua_settop(L, 1);
#if LUA_VERSION_NUM >= 503
  if (lua_type(L, 1) == LUA_TTABLE) {
    integers_in(L, 1, 0);
  } else if (lua_type(L, 1) == LUA_TNUMBER && !lua_isinteger(L, 1)) {
    lua_Number x = lua_tonumber(L, 1);
    if (x >= -9007199254740992.0 && x <= 9007199254740992.0 && x == floor(x)) lua_pushinteger(L, (lua_Integer)x);
  }
#endif
  return 1;
}

/* ---- clocks ------------------------------------------------------------------------------ */

static int l_now(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
  return 1;
}

static int l_sleep(lua_State *L) {
  lua_Number secs = luaL_checknumber(L, 1);
  struct timespec ts;
  luaL_argcheck(L, secs <= MAX_SECONDS && secs == secs, 1, "a number of seconds up to 1e6");
  if (secs <= 0) return 0;
  ts.tv_sec = (time_t)secs;
  ts.tv_nsec = (long)((secs - (lua_Number)ts.tv_sec) * 1e9);
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) { /* a signal: sleep the rest */
  }
  return 0;
}

static int l_isatty(lua_State *L) {
  lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
  return 1;
}

static int l_monotonic(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
  return 1;
}

/* ---- transport --------------------------------------------------------------------------- */

static kf_http *check_http_at(lua_State *L, int idx) {
  kf_http *h = luaL_checkudata(L, idx, HTTP_MT);
  if (h->easy == NULL) luaL_argerror(L, idx, "kaifang.http session is closed");
  return h;
}

static kf_http *check_http(lua_State *L) { return check_http_at(L, 1); }

static int http_gc(lua_State *L) {
  kf_http_free(luaL_checkudata(L, 1, HTTP_MT));
  return 0;
}


/* A number of seconds from Lua, checked: finite, within [lo, MAX_SECONDS]. Raises with what. */
static lua_Number check_seconds(lua_State *L, int idx, lua_Number lo, const char *who, const char *what) {
  lua_Number s = lua_tonumber(L, idx);
  if (lua_type(L, idx) != LUA_TNUMBER || !(s >= lo && s <= MAX_SECONDS)) /* NaN fails both */
    luaL_error(L, "%s: '%s' must be a number of seconds from %s to %d", who, what, lo > 0 ? "0 (excluded)" : "0",
               (int)MAX_SECONDS);
  return s;
}

static long opt_ms(lua_State *L, int t, const char *field, long def) {
  long ms = def;
  lua_getfield(L, t, field);
  if (!lua_isnil(L, -1)) {
    lua_Number s = check_seconds(L, -1, 0, "kaifang.http", field);
    if (s <= 0) luaL_error(L, "kaifang.http: '%s' must be a positive number of seconds", field);
    ms = (long)(s * 1000 + 0.5);
    if (ms < 1) ms = 1;
  }
  lua_pop(L, 1);
  return ms;
}

/* The string stays on the stack, so that it lives as long as the C function: a string that an
 * __index returned is held by nothing else. */
static char *opt_str(lua_State *L, int t, const char *field) {
  size_t len;
  const char *s;
  lua_getfield(L, t, field);
  if (lua_isnil(L, -1)) return NULL;
  if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "kaifang.http: '%s' must be a string", field);
  s = lua_tolstring(L, -1, &len);
  if (memchr(s, '\0', len)) luaL_error(L, "kaifang.http: '%s' contains a NUL byte", field);
  return (char *)s;
}

/* Options shared by a session and a batch: connect_timeout=, timeout=, ssl_verify=, cainfo=,
 * capath=, proxy=, user_agent=, max_body=. The strings are left on the stack (see opt_str); the
 * session or batch copies them. */
static int read_http_opts(lua_State *L, kf_http_opts *o) {
  if (lua_isnoneornil(L, 1)) {
    lua_settop(L, 0);
    lua_newtable(L);
  }
  luaL_checktype(L, 1, LUA_TTABLE);
  memset(o, 0, sizeof *o);
  o->connect_timeout_ms = opt_ms(L, 1, "connect_timeout", 5000);
  o->timeout_ms = opt_ms(L, 1, "timeout", 15000);
  lua_getfield(L, 1, "ssl_verify");
  o->ssl_verify = lua_isnil(L, -1) ? 1 : lua_toboolean(L, -1);
  lua_getfield(L, 1, "max_body");
  if (!lua_isnil(L, -1)) {
    lua_Number n = lua_tonumber(L, -1);
    if (lua_type(L, -1) != LUA_TNUMBER || !(n >= 1 && n <= 9007199254740992.0) || n != (lua_Number)(long long)n)
      luaL_error(L, "kaifang.http: 'max_body' must be a positive whole number of bytes");
    o->max_body = (size_t)n;
  }
  lua_pop(L, 2);
  o->cainfo = opt_str(L, 1, "cainfo");
  o->capath = opt_str(L, 1, "capath");
  o->proxy = opt_str(L, 1, "proxy");
  o->user_agent = opt_str(L, 1, "user_agent");
  return 0;
}

/* This state's one userdata under key in the registry, made on first use (zeroed, collected with
 * the state through gc). */
static void *state_userdata(lua_State *L, const char *key, size_t size, lua_CFunction gc) {
  void *p;
  lua_getfield(L, LUA_REGISTRYINDEX, key);
  p = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (p) return p;
  p = kf_newuserdata(L, size);
  memset(p, 0, size);
  lua_newtable(L);
  lua_pushcfunction(L, gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_setfield(L, LUA_REGISTRYINDEX, key);
  return p;
}

/* This Lua state's share (see http.h), made on first use and kept in the registry: one per state,
 * so each of nginx's VMs (a worker's, each thread-pool VM) has its own, and no C global holds one. */
#define SHARE_KEY "kaifang.core.share"
typedef struct {
  kf_share *s;
} share_ud;

static int share_gc(lua_State *L) {
  share_ud *u = lua_touserdata(L, 1);
  kf_share_release(u->s); /* the sessions and batches still open hold their own references */
  u->s = NULL;
  return 0;
}

static kf_share *share_of(lua_State *L) {
  share_ud *u = state_userdata(L, SHARE_KEY, sizeof *u, share_gc);
  if (u->s == NULL && (u->s = kf_share_new()) == NULL) luaL_error(L, "kaifang.http: cannot make a curl share");
  return u->s;
}

/* core.http{ ...options } -> session */
static int l_http(lua_State *L) {
  kf_http_opts o;
  kf_http *h;
  char err[128];
  read_http_opts(L, &o);
  o.share = share_of(L);
  h = kf_newuserdata(L, sizeof *h);
  memset(h, 0, sizeof *h);
  luaL_getmetatable(L, HTTP_MT);
  lua_setmetatable(L, -2);
  if (kf_http_init(h, &o, err, sizeof err) != 0) return luaL_error(L, "kaifang.http: %s", err);
  return 1;
}

/* RFC 9110's token: a method or a header name, nothing that could end the line or the field. */
static int is_token(const char *s, size_t len) {
  size_t i;
  if (len == 0) return 0;
  for (i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || (c && strchr("!#$%&'*+-.^_`|~", c))))
      return 0;
  }
  return 1;
}

static int has_line_break(const char *s, size_t len) {
  return memchr(s, '\r', len) || memchr(s, '\n', len) || memchr(s, '\0', len);
}

static void add_header(lua_State *L, kf_http *h, const char *name, size_t nlen, const char *value, size_t vlen) {
  char line[4096];
  if (!is_token(name, nlen)) luaL_error(L, "kaifang.http: bad request header name '%s'", name);
  if (has_line_break(value, vlen) || nlen + vlen + 3 > sizeof line)
    luaL_error(L, "kaifang.http: bad value of request header '%s' (CR, LF, NUL or too long)", name);
  memcpy(line, name, nlen);
  memcpy(line + nlen, ": ", 2);
  memcpy(line + nlen + 2, value, vlen);
  line[nlen + 2 + vlen] = '\0';
  if (kf_http_add_header(h, line) != 0) luaL_error(L, "kaifang.http: out of memory");
}

/* Lower-cased names; a repeated header's values are joined with ", ". */
static void push_headers(lua_State *L, const char *p, size_t len) {
  const char *end = p + len;
  lua_newtable(L);
  while (p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p)), *colon;
    if (eol == NULL) eol = end;
    colon = memchr(p, ':', (size_t)(eol - p));
    if (colon && strncmp(p, "HTTP/", 5) != 0) {
      char name[256];
      size_t nlen = (size_t)(colon - p), i;
      const char *v = colon + 1, *vend = eol;
      while (v < vend && (*v == ' ' || *v == '\t')) v++;
      while (vend > v && (vend[-1] == '\r' || vend[-1] == ' ' || vend[-1] == '\t')) vend--;
      if (nlen < sizeof name) {
        for (i = 0; i < nlen; i++) name[i] = (char)((p[i] >= 'A' && p[i] <= 'Z') ? p[i] + 32 : p[i]);
        lua_pushlstring(L, name, nlen);
        lua_pushvalue(L, -1);
        lua_rawget(L, -3);
        if (lua_isnil(L, -1)) {
          lua_pop(L, 1);
          lua_pushlstring(L, v, (size_t)(vend - v));
        } else {
          lua_pushliteral(L, ", ");
          lua_pushlstring(L, v, (size_t)(vend - v));
          lua_concat(L, 3);
        }
        lua_rawset(L, -3);
      }
    }
    p = eol + 1;
  }
}

/* A response's headers become a table only when res.headers is first read (most callers never
 * read them): until then the raw block waits in the response under this key. */
static const char raw_headers_key = 0;
#define RAW_HEADERS ((void *)&raw_headers_key)

static int response_index(lua_State *L) {
  size_t len = 0;
  const char *raw;
  if (lua_type(L, 2) != LUA_TSTRING || strcmp(lua_tostring(L, 2), "headers") != 0) return 0;
  lua_pushlightuserdata(L, RAW_HEADERS);
  lua_rawget(L, 1);
  raw = lua_tolstring(L, -1, &len);
  push_headers(L, raw ? raw : "", len);
  lua_pushvalue(L, -1);
  lua_setfield(L, 1, "headers"); /* rawset: the table has no __newindex */
  lua_pushlightuserdata(L, RAW_HEADERS);
  lua_pushnil(L);
  lua_rawset(L, 1);
  return 1;
}

static int transport_error(lua_State *L, const kf_result *r) {
  int timeout = r->code == CURLE_OPERATION_TIMEDOUT;
  /* only a connection that was never made is safe to repeat */
  int never_connected = !r->connected && (r->code == CURLE_COULDNT_CONNECT || r->code == CURLE_COULDNT_RESOLVE_HOST ||
                                          r->code == CURLE_COULDNT_RESOLVE_PROXY || timeout);
  lua_pushnil(L);
  lua_createtable(L, 0, 5);
  lua_pushstring(L, timeout ? "timeout" : "transport");
  lua_setfield(L, -2, "kind");
  lua_pushinteger(L, (lua_Integer)r->code);
  lua_setfield(L, -2, "code");
  lua_pushstring(L, r->message);
  lua_setfield(L, -2, "message");
  lua_pushboolean(L, r->maybe_sent);
  lua_setfield(L, -2, "maybe_sent");
  lua_pushboolean(L, never_connected);
  lua_setfield(L, -2, "retryable");
  return 2;
}

/* Reads a request table { method=, url=, headers=, body=, timeout= } into h, ready to transfer. */
static void prepare_request(lua_State *L, kf_http *h, int idx) {
  const char *method = "GET", *url, *body;
  size_t bodylen = 0, len;
  long timeout_ms;
  int top = lua_gettop(L);
  luaL_checktype(L, idx, LUA_TTABLE);
  lua_getfield(L, idx, "method"); /* each value stays on the stack until the request is prepared */
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "kaifang.http: 'method' must be a string");
    method = lua_tolstring(L, -1, &len);
    if (!is_token(method, len) || len > 32) luaL_error(L, "kaifang.http: bad method (not an HTTP token)");
  }
  lua_getfield(L, idx, "url");
  if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "kaifang.http: request needs a 'url' string");
  url = lua_tolstring(L, -1, &len);
  if (memchr(url, '\0', len)) luaL_error(L, "kaifang.http: the url contains a NUL byte");
  lua_getfield(L, idx, "body");
  if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "kaifang.http: 'body' must be a string");
  body = lua_tolstring(L, -1, &bodylen);
  timeout_ms = opt_ms(L, idx, "timeout", 0);
  lua_getfield(L, idx, "headers");
  h->next_lines.len = 0; /* what a request whose header building raised left */
  if (!lua_isnil(L, -1)) {
    int t = lua_gettop(L);
    if (!lua_istable(L, t)) luaL_error(L, "kaifang.http: 'headers' must be a table");
    lua_pushnil(L);
    while (lua_next(L, t)) {
      size_t nlen, vlen;
      const char *name, *value;
      if (lua_type(L, -2) != LUA_TSTRING || (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER))
        luaL_error(L, "kaifang.http: headers must map names to strings");
      name = lua_tolstring(L, -2, &nlen);
      lua_pushvalue(L, -1); /* tolstring on a number must not touch the slot lua_next reads */
      value = lua_tolstring(L, -1, &vlen);
      add_header(L, h, name, nlen, value, vlen);
      lua_pop(L, 2);
    }
  }
  if (kf_http_prepare(h, method, url, body, bodylen, timeout_ms) != 0) luaL_error(L, "kaifang.http: out of memory");
  lua_settop(L, top);
}

/* res | nil, err for a finished transfer; without its headers (res.headers empty) unless
 * with_headers */
static int push_result(lua_State *L, kf_http *h, const kf_result *r, int with_headers) {
  if (r->code != CURLE_OK) return transport_error(L, r);
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, r->status);
  lua_setfield(L, -2, "status");
  if (with_headers) {
    lua_pushlightuserdata(L, RAW_HEADERS);
    lua_pushlstring(L, h->head.data ? h->head.data : "", h->head.len);
    lua_rawset(L, -3);
  }
  lua_pushlstring(L, h->body.data ? h->body.data : "", h->body.len);
  lua_setfield(L, -2, "body");
  luaL_getmetatable(L, RESPONSE_MT);
  lua_setmetatable(L, -2);
  return 1;
}

/* session:request{ method=, url=, headers=, body=, timeout= } -> res | nil, err */
static int l_http_request(lua_State *L) {
  kf_http *h = check_http(L);
  kf_result r;
  prepare_request(L, h, 2);
  kf_http_finish(h, curl_easy_perform(h->easy), &r);
  return push_result(L, h, &r, 1);
}

static int l_http_close(lua_State *L) {
  kf_http_free(luaL_checkudata(L, 1, HTTP_MT));
  return 0;
}

static int l_http_tostring(lua_State *L) {
  kf_http *h = luaL_checkudata(L, 1, HTTP_MT);
  lua_pushfstring(L, "kaifang.http (%s)", h->easy ? "open" : "closed");
  return 1;
}

/* ---- batch transport: many transfers on one libcurl multi handle ------------------------- */

typedef struct lmulti {
  kf_multi m;
  int *idle, nidle; /* free slots */
  int headers;      /* whether responses carry their headers */
} lmulti;

static lmulti *check_multi(lua_State *L) {
  lmulti *b = luaL_checkudata(L, 1, MULTI_MT);
  if (b->m.multi == NULL) luaL_argerror(L, 1, "kaifang.multi is closed");
  return b;
}

static int multi_gc(lua_State *L) {
  lmulti *b = luaL_checkudata(L, 1, MULTI_MT);
  kf_multi_free(&b->m);
  free(b->idle);
  b->idle = NULL;
  b->nidle = 0;
  return 0;
}

/* core.multi{ concurrency = 32, headers = true, ...session options }; headers = false leaves
 * each response's headers out (res.headers is empty), for a caller that never reads them. */
static int l_multi(lua_State *L) {
  kf_http_opts o;
  lmulti *b;
  char err[128];
  int n, i, headers;
  read_http_opts(L, &o);
  o.share = share_of(L);
  lua_getfield(L, 1, "concurrency");
  n = (int)luaL_optinteger(L, -1, 32);
  lua_pop(L, 1);
  if (n < 1 || n > 4096) return luaL_error(L, "kaifang.multi: 'concurrency' must be 1..4096");
  lua_getfield(L, 1, "headers");
  headers = lua_isnil(L, -1) || lua_toboolean(L, -1); /* the headers, unless asked not to */
  lua_pop(L, 1);
  b = kf_newuserdata(L, sizeof *b);
  memset(b, 0, sizeof *b);
  luaL_getmetatable(L, MULTI_MT);
  lua_setmetatable(L, -2);
  b->headers = headers;
  b->idle = malloc((size_t)n * sizeof *b->idle);
  if (b->idle == NULL) return luaL_error(L, "kaifang.multi: out of memory");
  if (kf_multi_init(&b->m, n, &o, err, sizeof err) != 0) return luaL_error(L, "kaifang.multi: %s", err);
  for (i = 0; i < n; i++) b->idle[i] = n - 1 - i;
  b->nidle = n;
  return 1;
}

/* batch:submit(request [, session]) -> slot (1-based), or nil when every slot is busy. With a
 * session (a client's core.http), the transfer has that session's settings (proxy, TLS, CA,
 * timeouts, user agent, max_body); without, the batch's own. */
static int l_multi_submit(lua_State *L) {
  lmulti *b = check_multi(L);
  const kf_http_opts *o = &b->m.opts;
  int slot;
  if (!lua_isnoneornil(L, 3)) o = &check_http_at(L, 3)->opts;
  if (b->nidle == 0) {
    lua_pushnil(L);
    return 1;
  }
  slot = b->idle[b->nidle - 1];
  if (kf_multi_slot(&b->m, slot, o) == NULL) return luaL_error(L, "kaifang.multi: out of memory");
  prepare_request(L, &b->m.slots[slot], 2);
  if (kf_multi_start(&b->m, slot) != 0) return luaL_error(L, "kaifang.multi: could not start a transfer");
  b->nidle--;
  lua_pushinteger(L, slot + 1);
  return 1;
}

/* batch:wait(seconds) -> number of finished transfers waiting to be collected */
static int l_multi_wait(lua_State *L) {
  lmulti *b = check_multi(L);
  lua_Number secs = luaL_optnumber(L, 2, 1);
  char err[128];
  int n;
  luaL_argcheck(L, secs == secs, 2, "a number of seconds");
  if (secs > 86400) secs = 86400; /* curl_multi_poll takes an int of milliseconds */
  n = kf_multi_wait(&b->m, secs > 0 ? (long)(secs * 1000) : 0, err, sizeof err);
  if (n < 0) return luaL_error(L, "kaifang.multi: %s", err);
  lua_pushinteger(L, n);
  return 1;
}

/* batch:collect() -> slot, res | slot, nil, err | nil when nothing is finished */
static int l_multi_collect(lua_State *L) {
  lmulti *b = check_multi(L);
  kf_http *h;
  kf_result r;
  int slot;
  if (b->m.ndone == 0) return 0;
  slot = b->m.done[--b->m.ndone];
  h = &b->m.slots[slot];
  kf_http_finish(h, h->last_code, &r);
  b->idle[b->nidle++] = slot;
  lua_pushinteger(L, slot + 1);
  return 1 + push_result(L, h, &r, b->headers);
}

static int l_multi_counts(lua_State *L) {
  lmulti *b = check_multi(L);
  lua_pushinteger(L, b->m.active);
  lua_pushinteger(L, b->nidle);
  return 2;
}

/* ---- pinned directories (kaifang.ngx.init) ----------------------------------------------- */
/* nginx's master (root) opens the package path's directories; its workers (another user) inherit
 * the descriptors and reach the code through /proc/self/fd/N/, which does not check the
 * directory's ancestors, so a checkout in a private folder still loads. The descriptors belong to
 * the Lua state that pinned them and close with it: after a reload, nginx closes the old
 * configuration's VM, and its descriptors, once it drops that configuration. */

#ifdef __linux__
#define MAX_PINS 64
#define PINS_KEY "kaifang.core.pins" /* this state's set, in the registry */
typedef struct {
  int n;
  struct { dev_t dev; ino_t ino; int fd; } dirs[MAX_PINS];
} pinset;

static int pinset_gc(lua_State *L) {
  pinset *set = lua_touserdata(L, 1);
  while (set->n > 0) close(set->dirs[--set->n].fd);
  return 0;
}

static pinset *pinset_of(lua_State *L) {
  return state_userdata(L, PINS_KEY, sizeof(pinset), pinset_gc);
}
#endif

/* core.pin_dir(path) -> fd | nil, err: the directory held open for as long as this state lives;
 * the same directory (by device and inode) is held once. */
static int l_pin_dir(lua_State *L) {
  const char *path = kf_checkcstring(L, 1);
#ifdef __linux__
  struct stat st;
  pinset *set = pinset_of(L);
  int i, fd;
  if (stat(path, &st) != 0) goto fail;
  if (!S_ISDIR(st.st_mode)) {
    errno = ENOTDIR;
    goto fail;
  }
  for (i = 0; i < set->n; i++) {
    if (set->dirs[i].dev == st.st_dev && set->dirs[i].ino == st.st_ino) {
      lua_pushinteger(L, set->dirs[i].fd);
      return 1;
    }
  }
  if (set->n == MAX_PINS) {
    errno = EMFILE;
    goto fail;
  }
  fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0 || fstat(fd, &st) != 0) { /* fstat: what was opened, should the path have moved */
    if (fd >= 0) close(fd);
    goto fail;
  }
  set->dirs[set->n].dev = st.st_dev;
  set->dirs[set->n].ino = st.st_ino;
  set->dirs[set->n].fd = fd;
  set->n++;
  lua_pushinteger(L, fd);
  return 1;
fail:
  lua_pushnil(L);
  lua_pushfstring(L, "%s: %s", path, strerror(errno));
  return 2;
#else
  lua_pushnil(L);
  lua_pushfstring(L, "%s: not pinned (no /proc/self/fd on this system)", path);
  return 2;
#endif
}

/* ---- module ------------------------------------------------------------------------------ */

static const luaL_Reg signer_methods[] = {{NULL, NULL}}; /* sign is set with its upvalue */
static const luaL_Reg http_methods[] = {{"request", l_http_request}, {"close", l_http_close}, {NULL, NULL}};
static const luaL_Reg multi_methods[] = {{"submit", l_multi_submit}, {"wait", l_multi_wait},
                                         {"collect", l_multi_collect}, {"counts", l_multi_counts},
                                         {"close", multi_gc}, {NULL, NULL}};

static const luaL_Reg functions[] = {
    {"signer", l_signer},           {"aes_encrypt", l_aes_encrypt},
    {"aes_decrypt", l_aes_decrypt}, {"base64_encode", l_base64_encode},
    {"base64_decode", l_base64_decode}, {"hex_encode", l_hex_encode},
    {"hex_decode", l_hex_decode},   {"ct_equal", l_ct_equal},
    {"random_hex", l_random_hex},   {"url_encode", l_url_encode},
    {"form_encode", l_form_encode}, {"integers", l_integers},
    {"json_decode", kf_json_decode}, {"http", l_http},
    {"multi", l_multi},
    {"now", l_now},                 {"monotonic", l_monotonic},
    {"sleep", l_sleep},             {"isatty", l_isatty},
    {"pin_dir", l_pin_dir},
    {NULL, NULL}};

int luaopen_kaifang_core(lua_State *L) {
  /* refcounted inside libcurl; called before any handle exists */
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return luaL_error(L, "kaifang.core: curl_global_init failed");
  kf_newclass(L, SIGNER_MT, signer_methods, signer_gc);
  luaL_getmetatable(L, SIGNER_MT);
  lua_getfield(L, -1, "__index");
  lua_pushvalue(L, -2);
  lua_pushcclosure(L, l_signer_sign, 1);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "sign");
  lua_setfield(L, -3, "__call");
  lua_pop(L, 1);
  lua_pushcfunction(L, signer_close);
  lua_setfield(L, -2, "__close");
  lua_pop(L, 1);
  kf_newclass(L, HTTP_MT, http_methods, http_gc);
  luaL_getmetatable(L, HTTP_MT);
  lua_pushcfunction(L, l_http_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  kf_newclass(L, MULTI_MT, multi_methods, multi_gc);
  luaL_newmetatable(L, RESPONSE_MT);
  lua_pushcfunction(L, response_index);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  kf_newlib(L, functions);
  lua_newtable(L); /* digests by name, fetched once, shared by core.digest and core.hmac */
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, l_digest, 1);
  lua_setfield(L, -3, "digest");
  lua_pushcclosure(L, l_hmac, 1);
  lua_setfield(L, -2, "hmac");
  kf_store_register(L); /* file and Redis primitives of the token stores (store.c) */
  kf_sqlite_register(L); /* the batch journal's database (sqlite.c) */
  kf_signals_register(L); /* Ctrl-C held while a batch stops cleanly (signals.c) */
  lua_pushliteral(L, "0.1.0");
  lua_setfield(L, -2, "version");
  lua_pushstring(L, curl_version());
  lua_setfield(L, -2, "curl_version");
  return 1;
}
