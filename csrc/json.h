/* core.json_decode: a JSON text to Lua values in one pass, giving what
 * core.integers(cjson.decode(text)) gives (null is cjson.null, whole numbers within 2^53 are
 * integers), without cjson's scratch buffer and strtod per number. */
#ifndef KAIFANG_JSON_H
#define KAIFANG_JSON_H

#include "compat.h"

/* core.json_decode(text) -> value | nil, "invalid JSON at byte N: ..."; raises only for a
 * non-string argument. */
int kf_json_decode(lua_State *L);

#endif
