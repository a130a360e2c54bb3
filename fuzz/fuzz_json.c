/* core.json_decode on arbitrary bytes. cjson, its reference in spec/json_spec.lua, cannot be
 * linked here, so: it must not crash or raise; a refusal says "invalid JSON at byte N" with N
 * inside the input or just after it; and a value it returns, written back as JSON by the small
 * encoder below, decodes to an equal value (math types included). */
#define FUZZ_WITH_LUA
#include "common.h"

#include <math.h>

typedef struct {
  char *p;
  size_t n, cap;
} out;

static void put(out *o, const char *s, size_t n) {
  if (o->n + n > o->cap) {
    o->cap = 2 * (o->n + n) + 64;
    o->p = realloc(o->p, o->cap);
    if (!o->p) abort();
  }
  memcpy(o->p + o->n, s, n);
  o->n += n;
}

static void put_string(out *o, const char *s, size_t len) {
  size_t i;
  char esc[8];
  put(o, "\"", 1);
  for (i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '"' || c == '\\') {
      esc[0] = '\\';
      esc[1] = (char)c;
      put(o, esc, 2);
    } else if (c < 0x20 && (c == 0 || i % 2)) { /* NUL must be escaped; other controls raw or not */
      put(o, esc, (size_t)snprintf(esc, sizeof esc, "\\u%04x", c));
    } else {
      put(o, (const char *)&c, 1);
    }
  }
  put(o, "\"", 1);
}

/* A decoded table is an array (keys 1..n, or none) or an object (string keys only). */
static void encode(lua_State *L, int idx, out *o) {
  char num[40];
  luaL_checkstack(L, 3, "encode");
  switch (lua_type(L, idx)) {
    case LUA_TBOOLEAN:
      if (lua_toboolean(L, idx)) put(o, "true", 4);
      else put(o, "false", 5);
      break;
    case LUA_TLIGHTUSERDATA:
      FUZZ_CHECK(lua_touserdata(L, idx) == NULL, "a light userdata that is not cjson.null");
      put(o, "null", 4);
      break;
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) {
        put(o, num, (size_t)snprintf(num, sizeof num, "%lld", (long long)lua_tointeger(L, idx)));
      } else {
        double d = lua_tonumber(L, idx);
        FUZZ_CHECK(d == d, "NaN decoded");
        if (isinf(d)) put(o, d > 0 ? "1e999" : "-1e999", d > 0 ? 5 : 6);
        else put(o, num, (size_t)snprintf(num, sizeof num, "%.17g", d));
      }
      break;
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, idx, &len);
      put_string(o, s, len);
      break;
    }
    case LUA_TTABLE: {
      size_t n = lua_rawlen(L, idx), count = 0, i;
      lua_pushnil(L);
      while (lua_next(L, idx)) {
        count++;
        lua_pop(L, 1);
      }
      if (count == n) {
        put(o, "[", 1);
        for (i = 1; i <= n; i++) {
          if (i > 1) put(o, ",", 1);
          FUZZ_CHECK(lua_rawgeti(L, idx, (lua_Integer)i) != LUA_TNIL, "a hole at %zu of %zu", i, n);
          encode(L, lua_gettop(L), o);
          lua_pop(L, 1);
        }
        put(o, "]", 1);
        break;
      }
      put(o, "{", 1);
      count = 0;
      lua_pushnil(L);
      while (lua_next(L, idx)) {
        size_t klen;
        const char *k;
        FUZZ_CHECK(lua_type(L, -2) == LUA_TSTRING, "an object key of type %s", luaL_typename(L, -2));
        k = lua_tolstring(L, -2, &klen);
        if (count++) put(o, " , ", 3);
        put_string(o, k, klen);
        put(o, ":", 1);
        encode(L, lua_gettop(L), o);
        lua_pop(L, 1);
      }
      put(o, "}", 1);
      break;
    }
    default:
      FUZZ_CHECK(0, "a decoded %s", luaL_typename(L, idx));
  }
}

static int same(lua_State *L, int a, int b) {
  int ok = 1;
  if (lua_type(L, a) != lua_type(L, b)) return 0;
  if (lua_type(L, a) == LUA_TNUMBER && lua_isinteger(L, a) != lua_isinteger(L, b)) return 0;
  if (lua_type(L, a) != LUA_TTABLE) return lua_rawequal(L, a, b);
  luaL_checkstack(L, 4, "same");
  lua_pushnil(L);
  while (ok && lua_next(L, a)) {
    lua_pushvalue(L, -2);
    lua_rawget(L, b);
    ok = same(L, lua_gettop(L) - 1, lua_gettop(L));
    lua_pop(L, 2);
  }
  if (!ok) {
    lua_pop(L, 1); /* the key lua_next left */
    return 0;
  }
  lua_pushnil(L); /* and b has no other key */
  while (lua_next(L, b)) {
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    if (lua_rawget(L, a) == LUA_TNIL) ok = 0;
    lua_pop(L, 1);
    if (!ok) {
      lua_pop(L, 1);
      return 0;
    }
  }
  return 1;
}

static int decode(lua_State *L, const char *s, size_t len) {
  lua_getglobal(L, "core");
  lua_getfield(L, -1, "json_decode");
  lua_remove(L, -2);
  lua_pushlstring(L, s, len);
  FUZZ_CHECK(lua_pcall(L, 1, 2, 0) == 0, "json_decode raised: %s", lua_tostring(L, -1));
  return !lua_isnil(L, -2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lua_State *L = fuzz_lua();
  out o = {NULL, 0, 0};
  unsigned long at = 0;
  if (!decode(L, (const char *)data, size)) {
    const char *msg = lua_tostring(L, -1);
    FUZZ_CHECK(msg && sscanf(msg, "invalid JSON at byte %lu", &at) == 1, "message: %s", msg ? msg : "(none)");
    FUZZ_CHECK(at >= 1 && at <= size + 1, "byte %lu of %zu", at, size);
    return 0;
  }
  lua_pop(L, 1); /* the value at 1 */
  encode(L, 1, &o);
  FUZZ_CHECK(decode(L, o.p, o.n), "its encoding %.*s is refused: %s", (int)o.n, o.p, lua_tostring(L, -1));
  lua_pop(L, 1); /* the value again at 2 */
  FUZZ_CHECK(same(L, 1, 2), "%.*s decodes to another value", (int)o.n, o.p);
  free(o.p);
  return 0;
}
