/* The signer's second floor: what reading a parameter table through the Lua C API costs, with
 * nothing else. traverse(t) walks t with lua_next and reads every string key and value (numbers
 * as integers) as the signer must; it sorts, copies and hashes nothing. bench/sign.lua adds its
 * time to the C floor's: no signer called from Lua can be faster than that sum. */
#include <lauxlib.h>
#include <lua.h>

static int traverse(lua_State *L) {
  size_t n = 0, len;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_pushnil(L);
  while (lua_next(L, 1)) {
    if (lua_type(L, -2) == LUA_TSTRING) {
      lua_tolstring(L, -2, &len);
      n += len;
    }
    if (lua_type(L, -1) == LUA_TSTRING) {
      lua_tolstring(L, -1, &len);
      n += len;
    } else {
      n += (size_t)lua_tointeger(L, -1);
    }
    lua_pop(L, 1);
  }
  lua_pushinteger(L, (lua_Integer)n);
  return 1;
}

int luaopen_sign_traverse(lua_State *L) {
  lua_pushcfunction(L, traverse);
  return 1;
}
