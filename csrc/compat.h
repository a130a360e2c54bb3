/* The few Lua C API differences between 5.1 (LuaJIT) and 5.2+ that kaifang uses. */
#ifndef KAIFANG_COMPAT_H
#define KAIFANG_COMPAT_H

#include <string.h>

#include <lua.h>
#include <lauxlib.h>

#if LUA_VERSION_NUM < 502
#define kf_rawlen(L, i) lua_objlen((L), (i))
#define kf_newuserdata(L, sz) lua_newuserdata((L), (sz))
#define kf_setfuncs(L, l) luaL_register((L), NULL, (l))
#define kf_newlib(L, l) (lua_newtable(L), luaL_register((L), NULL, (l)))
static inline int kf_isinteger(lua_State *L, int idx, long long *out) {
  lua_Number n = lua_tonumber(L, idx);
  if (n >= -9007199254740992.0 && n <= 9007199254740992.0 && (lua_Number)(long long)n == n) {
    *out = (long long)n;
    return 1;
  }
  return 0;
}
static inline void *kf_testudata(lua_State *L, int idx, const char *tname) {
  void *p = lua_touserdata(L, idx);
  if (p == NULL || !lua_getmetatable(L, idx)) return NULL;
  luaL_getmetatable(L, tname);
  if (!lua_rawequal(L, -1, -2)) p = NULL;
  lua_pop(L, 2);
  return p;
}
#else
#define kf_rawlen(L, i) lua_rawlen((L), (i))
#if LUA_VERSION_NUM >= 504
#define kf_newuserdata(L, sz) lua_newuserdatauv((L), (sz), 0)
#else
#define kf_newuserdata(L, sz) lua_newuserdata((L), (sz))
#endif
#define kf_setfuncs(L, l) luaL_setfuncs((L), (l), 0)
#define kf_newlib(L, l) luaL_newlib((L), (l))
#define kf_testudata(L, idx, t) luaL_testudata((L), (idx), (t))
static inline int kf_isinteger(lua_State *L, int idx, long long *out) {
  int ok = 0;
#if LUA_VERSION_NUM >= 503
  lua_Integer i = lua_tointegerx(L, idx, &ok);
  if (ok) { *out = (long long)i; return 1; }
#endif
  {
    lua_Number n = lua_tonumber(L, idx);
    if (n >= -9007199254740992.0 && n <= 9007199254740992.0 && (lua_Number)(long long)n == n) {
      *out = (long long)n;
      ok = 1;
    }
  }
  return ok;
}
#endif

/* Registers a metatable with methods in __index; __close only exists from 5.4 on, harmless before. */
static inline void kf_newclass(lua_State *L, const char *tname, const luaL_Reg *methods, lua_CFunction gc) {
  luaL_newmetatable(L, tname);
  lua_newtable(L);
  kf_setfuncs(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, gc);
  lua_setfield(L, -2, "__close");
  lua_pop(L, 1);
}

/* A name, path or SQL text that C reads up to its first NUL: one with a NUL inside would mean
 * another, so it is refused. */
static inline const char *kf_checkcstring(lua_State *L, int idx) {
  size_t len;
  const char *s = luaL_checklstring(L, idx, &len);
  if (memchr(s, '\0', len)) luaL_argerror(L, idx, "contains a NUL byte");
  return s;
}

#endif
