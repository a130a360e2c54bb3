/* Shared by the libFuzzer harnesses: a Lua state with kaifang.core loaded (made once and kept,
 * as libFuzzer runs every input in one process), and a byte reader over the fuzzer's input. */
#ifndef KAIFANG_FUZZ_COMMON_H
#define KAIFANG_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

/* Stops the run with a message: libFuzzer reports it as a crash and saves the input. */
#define FUZZ_CHECK(cond, ...)                                    \
  do {                                                           \
    if (!(cond)) {                                               \
      fprintf(stderr, "check failed: %s: ", #cond);              \
      fprintf(stderr, __VA_ARGS__);                              \
      fprintf(stderr, "\n");                                     \
      abort();                                                   \
    }                                                            \
  } while (0)

typedef struct {
  const uint8_t *p;
  size_t left;
} reader;

static inline int take_byte(reader *r) {
  if (r->left == 0) return 0;
  r->left--;
  return *r->p++;
}

/* Up to n bytes (fewer at the end of the input); returns how many. */
static inline size_t take(reader *r, size_t n, const uint8_t **out) {
  if (n > r->left) n = r->left;
  *out = r->p;
  r->p += n;
  r->left -= n;
  return n;
}

#ifdef FUZZ_WITH_LUA
int luaopen_kaifang_core(lua_State *L);

/* The state, with kaifang.core as the global `core`; the stack is empty between inputs. */
static inline lua_State *fuzz_lua(void) {
  static lua_State *L;
  if (L == NULL) {
    L = luaL_newstate();
    luaL_openlibs(L);
    luaL_requiref(L, "kaifang.core", luaopen_kaifang_core, 0);
    lua_setglobal(L, "core");
  }
  lua_settop(L, 0);
  return L;
}

/* Parameters as both sides see them: read from the input, pushed as a Lua table, and kept here
 * (a repeated key replaces the earlier one, as in the table) for the reference. */
#define FUZZ_MAX_PAIRS 300

typedef struct {
  char key[256], val[256];
  size_t klen, vlen;
  int bad; /* a number that is not finite: the library must refuse the table */
} fuzz_pair;

static inline int pair_cmp(const void *a, const void *b) {
  const fuzz_pair *x = a, *y = b;
  size_t n = x->klen < y->klen ? x->klen : y->klen;
  int c = memcmp(x->key, y->key, n);
  return c ? c : (x->klen > y->klen) - (x->klen < y->klen);
}

/* Reads [klen][key][type][value] records to the end of the input; pushes the table. Returns the
 * number of pairs, sorted by key; *bad is set when one value is a NaN or an infinity. */
static inline size_t fuzz_params(lua_State *L, reader *r, fuzz_pair *pairs, int *bad) {
  size_t n = 0, i;
  *bad = 0;
  lua_newtable(L);
  while (r->left > 0 && n < FUZZ_MAX_PAIRS) {
    const uint8_t *k, *v;
    size_t klen = take(r, (size_t)take_byte(r) % 40, &k), vlen;
    int type = take_byte(r) & 3;
    fuzz_pair p;
    memset(&p, 0, sizeof p);
    memcpy(p.key, k, klen);
    p.klen = klen;
    lua_pushlstring(L, (const char *)k, klen);
    if (type == 0 || type == 3) { /* a string */
      vlen = take(r, (size_t)take_byte(r) % 64, &v);
      memcpy(p.val, v, vlen);
      p.vlen = vlen;
      lua_pushlstring(L, (const char *)v, vlen);
    } else if (type == 1) { /* an integer */
      long long x = 0;
      vlen = take(r, 8, &v);
      memcpy(&x, v, vlen);
      p.vlen = (size_t)snprintf(p.val, sizeof p.val, "%lld", x);
      lua_pushinteger(L, (lua_Integer)x);
    } else { /* a float: integral ones are written as integers, as the platforms do */
      double d = 0;
      vlen = take(r, 8, &v);
      memcpy(&d, v, vlen);
      if (d != d || d - d != 0) p.bad = 1;
      else if (d >= -9223372036854775808.0 && d < 9223372036854775808.0 && d == (double)(long long)d)
        p.vlen = (size_t)snprintf(p.val, sizeof p.val, "%lld", (long long)d);
      else
        p.vlen = (size_t)snprintf(p.val, sizeof p.val, "%.14g", d);
      lua_pushnumber(L, (lua_Number)d);
    }
    lua_rawset(L, -3);
    for (i = 0; i < n; i++)
      if (pairs[i].klen == p.klen && memcmp(pairs[i].key, p.key, p.klen) == 0) break;
    pairs[i] = p;
    if (i == n) n++;
  }
  for (i = 0; i < n; i++) *bad |= pairs[i].bad;
  qsort(pairs, n, sizeof *pairs, pair_cmp);
  return n;
}
#endif

#endif
