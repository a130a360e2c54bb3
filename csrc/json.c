/* JSON text to Lua values: a recursive descent that pushes each value as it reads it. The text
 * is a Lua string, so the NUL after its last byte ends every scan without a length check; a NUL
 * inside it is refused where it is found. */
#include <locale.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "json.h"

#define MAX_DEPTH 1000              /* cjson's limit: 1000 nested arrays or objects decode, 1001 do not */
#define SLOTS LUA_MINSTACK          /* free stack slots per level: table, key, value and a 5.1 luaL_Buffer */
#define MAX_SAFE 9007199254740992.0 /* 2^53: whole numbers up to it are integers, as core.integers makes them */

typedef struct {
  lua_State *L;
  const char *end;   /* the text's NUL */
  const char *at;    /* where it went wrong */
  const char *what;
  int depth;
  int dot;           /* the locale's decimal point is ".": 1, it is not: 0, not asked yet: -1 */
} parser;

static const char *value(parser *P, const char *p);

static const char *fail(parser *P, const char *at, const char *what) {
  P->at = at;
  P->what = what;
  return NULL;
}

static const char *skip_space(const char *p) {
  while (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t') p++;
  return p;
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* ---- strings ------------------------------------------------------------------------------ */

static long hex4(const char *p) {
  long v = 0;
  int i;
  for (i = 0; i < 4; i++) { /* stops at the first non-hex byte, so never past the NUL */
    int c = (unsigned char)p[i];
    if (is_digit((char)c)) c -= '0';
    else if ((c | 32) >= 'a' && (c | 32) <= 'f') c = (c | 32) - 'a' + 10;
    else return -1;
    v = v << 4 | c;
  }
  return v;
}

/* The \u escape at p (with the low half after it for a surrogate pair) as UTF-8; returns the
 * byte after it. A lone surrogate is refused, as cjson does. */
static const char *unicode(parser *P, luaL_Buffer *b, const char *p) {
  long cp = hex4(p + 2), lo;
  char u[4];
  size_t n;
  if (cp < 0) return fail(P, p, "invalid \\u escape");
  if (cp >= 0xDC00 && cp <= 0xDFFF) return fail(P, p, "lone surrogate in a \\u escape");
  if (cp >= 0xD800 && cp <= 0xDBFF) {
    lo = p[6] == '\\' && p[7] == 'u' ? hex4(p + 8) : -1;
    if (lo < 0xDC00 || lo > 0xDFFF) return fail(P, p, "lone surrogate in a \\u escape");
    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
    p += 6;
  }
  if (cp < 0x80) {
    u[0] = (char)cp;
    n = 1;
  } else if (cp < 0x800) {
    u[0] = (char)(0xC0 | cp >> 6);
    u[1] = (char)(0x80 | (cp & 0x3F));
    n = 2;
  } else if (cp < 0x10000) {
    u[0] = (char)(0xE0 | cp >> 12);
    u[1] = (char)(0x80 | (cp >> 6 & 0x3F));
    u[2] = (char)(0x80 | (cp & 0x3F));
    n = 3;
  } else {
    u[0] = (char)(0xF0 | cp >> 18);
    u[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    u[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    u[3] = (char)(0x80 | (cp & 0x3F));
    n = 4;
  }
  luaL_addlstring(b, u, n);
  return p + 6;
}

/* Up to the next '"', '\\' or NUL. Raw control characters pass: cjson takes them, and some
 * platform backends send raw newlines. */
static const char *plain(const char *p) {
  while (*p != '"' && *p != '\\' && *p != '\0') p++;
  return p;
}

static const char *unterminated(parser *P, const char *p) {
  return fail(P, p, p == P->end ? "unterminated string" : "NUL byte in a string");
}

/* The rest of a string from its first backslash at p, through a luaL_Buffer. */
static const char *escaped(parser *P, const char *start, const char *p) {
  luaL_Buffer b;
  luaL_buffinit(P->L, &b);
  for (;;) {
    luaL_addlstring(&b, start, (size_t)(p - start));
    if (*p == '"') break;
    if (*p == '\0') return unterminated(P, p);
    switch (p[1]) {
      case '"': luaL_addchar(&b, '"'); break;
      case '\\': luaL_addchar(&b, '\\'); break;
      case '/': luaL_addchar(&b, '/'); break;
      case 'b': luaL_addchar(&b, '\b'); break;
      case 'f': luaL_addchar(&b, '\f'); break;
      case 'n': luaL_addchar(&b, '\n'); break;
      case 'r': luaL_addchar(&b, '\r'); break;
      case 't': luaL_addchar(&b, '\t'); break;
      case 'u':
        if (!(p = unicode(P, &b, p))) return NULL;
        start = p;
        p = plain(start);
        continue;
      default: return fail(P, p, "invalid escape");
    }
    start = p + 2;
    p = plain(start);
  }
  luaL_pushresult(&b);
  return p + 1;
}

/* The string whose opening quote is at p: pushed straight from the text when it has no escape. */
static const char *string(parser *P, const char *p) {
  const char *start = p + 1;
  p = plain(start);
  if (*p == '"') {
    lua_pushlstring(P->L, start, (size_t)(p - start));
    return p + 1;
  }
  if (*p == '\0') return unterminated(P, p);
  return escaped(P, start, p);
}

/* ---- numbers ------------------------------------------------------------------------------ */

/* strtod reads the decimal point of the current C locale. kaifang's processes keep LC_NUMERIC
 * "C", but a host that set a comma locale must not read "1.5" as 1: then (only) the number is
 * copied with that locale's decimal point in place of '.', as cjson's fpconv does. Parsing the
 * digits here instead would need a correctly rounded algorithm to give strtod's (cjson's) bits. */
static int to_double(parser *P, const char *s, const char *e, double *out) {
  const char *dp;
  char small[64], *buf = small, *stop;
  size_t len = (size_t)(e - s), dlen, n = 0;
  int ok;
  if (P->dot < 0) {
    dp = localeconv()->decimal_point;
    P->dot = dp[0] == '.' && dp[1] == '\0';
  }
  if (P->dot) {
    *out = strtod(s, &stop);
    return stop == e;
  }
  dp = localeconv()->decimal_point;
  dlen = strlen(dp);
  if (len + dlen + 1 > sizeof small) buf = kf_newuserdata(P->L, len + dlen + 1);
  for (; s < e; s++) {
    if (*s == '.') {
      memcpy(buf + n, dp, dlen);
      n += dlen;
    } else {
      buf[n++] = *s;
    }
  }
  buf[n] = '\0';
  *out = strtod(buf, &stop);
  ok = stop == buf + n;
  if (buf != small) lua_pop(P->L, 1);
  return ok;
}

/* A number as core.integers(cjson.decode(text)) gives it: a whole value within 2^53 is an
 * integer, whether written 100, 100.0 or 1e2 (one number type on LuaJIT). */
static void push_double(lua_State *L, double d) {
#if LUA_VERSION_NUM >= 503
  if (d >= -MAX_SAFE && d <= MAX_SAFE && (double)(lua_Integer)d == d) {
    lua_pushinteger(L, (lua_Integer)d);
    return;
  }
#endif
  lua_pushnumber(L, d);
}

static const char *number(parser *P, const char *p) {
  const char *start = p, *digits;
  uint64_t u = 0; /* wraps past 19 digits: then it is not used */
  int neg = *p == '-', simple = 1;
  double d;
  p += neg;
  digits = p;
  if (*p == '0') {
    p++;
  } else if (*p >= '1' && *p <= '9') {
    for (; is_digit(*p); p++) u = u * 10 + (uint64_t)(*p - '0');
  } else {
    return fail(P, start, "invalid number");
  }
  if (p - digits > 16) simple = 0; /* 2^53 has 16 digits */
  if (*p == '.') {
    if (!is_digit(*++p)) return fail(P, start, "invalid number");
    while (is_digit(*p)) p++;
    simple = 0;
  }
  if (*p == 'e' || *p == 'E') {
    p++;
    if (*p == '+' || *p == '-') p++;
    if (!is_digit(*p)) return fail(P, start, "invalid number");
    while (is_digit(*p)) p++;
    simple = 0;
  }
  /* the common case, a code or an id: exact without strtod */
  if (simple && u <= (uint64_t)1 << 53) {
#if LUA_VERSION_NUM >= 503
    lua_pushinteger(P->L, neg ? -(lua_Integer)u : (lua_Integer)u);
#else
    lua_pushnumber(P->L, neg ? -(lua_Number)u : (lua_Number)u);
#endif
    return p;
  }
  if (!to_double(P, start, p, &d)) return fail(P, start, "invalid number");
  push_double(P->L, d);
  return p;
}

/* ---- arrays and objects ------------------------------------------------------------------- */

/* Tables start with room for 4: grown from empty, as cjson grows them, an object is rehashed at
 * 1, 2 and 4 keys, which cost more than the rest of decoding a short reply. */
#define ROOM 4

static const char *array(parser *P, const char *p) {
  lua_State *L = P->L;
  int n = 0;
  p = skip_space(p + 1);
  lua_createtable(L, *p == ']' ? 0 : ROOM, 0);
  if (*p == ']') return p + 1;
  for (;;) {
    if (!(p = value(P, p))) return NULL;
    lua_rawseti(L, -2, ++n);
    p = skip_space(p);
    if (*p == ']') return p + 1;
    if (*p != ',') return fail(P, p, "expected ',' or ']'");
    p++;
  }
}

/* A repeated key: the last one wins, as in cjson. */
static const char *object(parser *P, const char *p) {
  lua_State *L = P->L;
  p = skip_space(p + 1);
  lua_createtable(L, 0, *p == '}' ? 0 : ROOM);
  if (*p == '}') return p + 1;
  for (;;) {
    if (*p != '"') return fail(P, p, "expected a string key");
    if (!(p = string(P, p))) return NULL;
    p = skip_space(p);
    if (*p != ':') return fail(P, p, "expected ':'");
    if (!(p = value(P, p + 1))) return NULL;
    lua_rawset(L, -3);
    p = skip_space(p);
    if (*p == '}') return p + 1;
    if (*p != ',') return fail(P, p, "expected ',' or '}'");
    p = skip_space(p + 1);
  }
}

static const char *nested(parser *P, const char *p) {
  if (++P->depth > MAX_DEPTH) return fail(P, p, "nested deeper than 1000");
  if (!lua_checkstack(P->L, SLOTS)) return fail(P, p, "nested too deep for the Lua stack");
  p = *p == '[' ? array(P, p) : object(P, p);
  P->depth--;
  return p;
}

static const char *word(parser *P, const char *p, const char *w, size_t n) {
  if ((size_t)(P->end - p) < n || memcmp(p, w, n) != 0) return fail(P, p, "expected a value");
  return p + n;
}

static const char *value(parser *P, const char *p) {
  p = skip_space(p);
  switch (*p) {
    case '"': return string(P, p);
    case '{':
    case '[': return nested(P, p);
    case 't':
      if ((p = word(P, p, "true", 4))) lua_pushboolean(P->L, 1);
      return p;
    case 'f':
      if ((p = word(P, p, "false", 5))) lua_pushboolean(P->L, 0);
      return p;
    case 'n':
      if ((p = word(P, p, "null", 4))) lua_pushlightuserdata(P->L, NULL); /* cjson.null */
      return p;
    case '-':
    case '0': case '1': case '2': case '3': case '4': case '5': case '6': case '7': case '8': case '9':
      return number(P, p);
    default: return fail(P, p, "expected a value");
  }
}

int kf_json_decode(lua_State *L) {
  size_t len;
  const char *text = luaL_checklstring(L, 1, &len), *p;
  parser P;
  char msg[160];
  P.L = L;
  P.end = text + len;
  P.at = P.what = NULL;
  P.depth = 0;
  P.dot = -1;
  lua_settop(L, 1);
  luaL_checkstack(L, SLOTS, "kaifang.core: json_decode");
  p = value(&P, text);
  if (p && (p = skip_space(p)) != P.end)
    p = fail(&P, p, *p ? "expected the end of the text" : "NUL byte after the value");
  if (p) return 1;
  /* bytes counted from 1, as cjson's "character" */
  snprintf(msg, sizeof msg, "invalid JSON at byte %lu%s: %s", (unsigned long)(P.at - text) + 1,
           P.at == P.end ? " (the end)" : "", P.what);
  lua_settop(L, 1);
  lua_pushnil(L);
  lua_pushstring(L, msg);
  return 2;
}
