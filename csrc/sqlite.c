/* The SQLite binding of the batch journal (see sqlite.h). Nothing here keeps global state.
 *
 *   core.sqlite(path [, { readonly = false, busy_timeout = 5 }]) -> db | nil, err
 *   db:exec(sql)       -> true | nil, err          (one or more statements, rows ignored)
 *   db:prepare(sql)    -> stmt | nil, err
 *   db:close()         (also __gc, __close; finalizes the statements it prepared)
 *   stmt:exec(...)     -> rows changed | nil, err  (... bound to ?1, ?2, ...: nil, boolean, number, string)
 *   stmt:first(...)    -> row | false (no row) | nil, err
 *   stmt:rows(...)     -> iterator over rows (raises on an error)
 *   stmt:close()
 * A row is a table keyed by column name; NULL columns are absent. err = { kind = "busy" |
 * "sqlite", code = the extended result code, message = }. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

#include "sqlite.h"

#define DB_MT "kaifang.sqlite"
#define STMT_MT "kaifang.sqlite.stmt"

typedef struct kdb {
  sqlite3 *db; /* NULL once closed */
} kdb;

typedef struct kstmt {
  sqlite3_stmt *st;
  kdb *owner; /* kept alive by dbref for as long as the statement lives */
  int dbref;
} kstmt;

static int push_error(lua_State *L, sqlite3 *db, int rc, const char *message) {
  int primary = rc & 0xff;
  lua_pushnil(L);
  lua_createtable(L, 0, 3);
  lua_pushstring(L, primary == SQLITE_BUSY || primary == SQLITE_LOCKED ? "busy" : "sqlite");
  lua_setfield(L, -2, "kind");
  lua_pushinteger(L, rc);
  lua_setfield(L, -2, "code");
  lua_pushstring(L, message ? message : db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
  lua_setfield(L, -2, "message");
  return 2;
}

static kdb *check_db(lua_State *L) {
  kdb *d = luaL_checkudata(L, 1, DB_MT);
  if (d->db == NULL) luaL_argerror(L, 1, "kaifang.sqlite: the database is closed");
  return d;
}

static kstmt *check_stmt(lua_State *L, int idx) {
  kstmt *s = luaL_checkudata(L, idx, STMT_MT);
  if (s->st == NULL || s->owner->db == NULL) luaL_argerror(L, idx, "kaifang.sqlite: the statement is closed");
  return s;
}

static int db_close(lua_State *L) {
  kdb *d = luaL_checkudata(L, 1, DB_MT);
  if (d->db) {
    sqlite3_stmt *st;
    while ((st = sqlite3_next_stmt(d->db, NULL)) != NULL) sqlite3_finalize(st);
    sqlite3_close(d->db);
    d->db = NULL;
  }
  return 0;
}

static int stmt_close(lua_State *L) {
  kstmt *s = luaL_checkudata(L, 1, STMT_MT);
  if (s->st && s->owner && s->owner->db) sqlite3_finalize(s->st); /* else db:close did */
  s->st = NULL;
  if (s->dbref != LUA_NOREF) {
    luaL_unref(L, LUA_REGISTRYINDEX, s->dbref);
    s->dbref = LUA_NOREF;
  }
  return 0;
}

static int l_sqlite(lua_State *L) {
  const char *path = kf_checkcstring(L, 1);
  int readonly = 0, rc, flags;
  double busy = 5;
  kdb *d;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "readonly");
    readonly = lua_toboolean(L, -1);
    lua_getfield(L, 2, "busy_timeout");
    busy = (double)luaL_optnumber(L, -1, 5);
    if (!(busy >= 0 && busy <= 1e6)) /* NaN fails: it becomes an int of milliseconds */
      return luaL_error(L, "kaifang.sqlite: 'busy_timeout' must be a number of seconds from 0 to 1e6");
    lua_pop(L, 2);
  }
  if (!readonly) {
    /* created here, so that the database (and the -wal and -shm files SQLite gives the same
     * mode) is the owner's alone: a journal holds the calls' parameters */
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
      lua_pushnil(L);
      lua_createtable(L, 0, 2);
      lua_pushliteral(L, "io");
      lua_setfield(L, -2, "kind");
      lua_pushfstring(L, "cannot open %s: %s", path, strerror(errno));
      lua_setfield(L, -2, "message");
      return 2;
    }
    close(fd);
  }
  d = kf_newuserdata(L, sizeof *d);
  d->db = NULL;
  luaL_getmetatable(L, DB_MT);
  lua_setmetatable(L, -2);
  flags = (readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE) | SQLITE_OPEN_NOMUTEX;
#ifdef SQLITE_OPEN_NOFOLLOW
  flags |= SQLITE_OPEN_NOFOLLOW;
#endif
  rc = sqlite3_open_v2(path, &d->db, flags, NULL);
  if (rc != SQLITE_OK) {
    push_error(L, d->db, rc, NULL);
    sqlite3_close(d->db); /* a handle is returned even on failure */
    d->db = NULL;
    return 2;
  }
  sqlite3_extended_result_codes(d->db, 1);
  sqlite3_busy_timeout(d->db, busy > 0 ? (int)(busy * 1000) : 0);
  return 1;
}

static int l_exec(lua_State *L) {
  kdb *d = check_db(L);
  const char *sql = kf_checkcstring(L, 2);
  char *msg = NULL;
  int rc = sqlite3_exec(d->db, sql, NULL, NULL, &msg);
  if (rc != SQLITE_OK) {
    push_error(L, d->db, rc, msg);
    sqlite3_free(msg);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int l_prepare(lua_State *L) {
  kdb *d = check_db(L);
  const char *sql = kf_checkcstring(L, 2);
  kstmt *s;
  int rc;
  s = kf_newuserdata(L, sizeof *s);
  s->st = NULL;
  s->owner = d;
  s->dbref = LUA_NOREF;
  luaL_getmetatable(L, STMT_MT);
  lua_setmetatable(L, -2);
  lua_pushvalue(L, 1);
  s->dbref = luaL_ref(L, LUA_REGISTRYINDEX);
  rc = sqlite3_prepare_v2(d->db, sql, -1, &s->st, NULL);
  if (rc != SQLITE_OK) return push_error(L, d->db, rc, NULL);
  return 1;
}

/* Binds the values from stack index first on to ?1, ?2, ... */
static void bind_values(lua_State *L, kstmt *s, int first) {
  int n = lua_gettop(L) - first + 1, i;
  sqlite3_reset(s->st);
  sqlite3_clear_bindings(s->st);
  if (n > sqlite3_bind_parameter_count(s->st))
    luaL_error(L, "kaifang.sqlite: %d values for %d parameters", n, sqlite3_bind_parameter_count(s->st));
  for (i = 1; i <= n; i++) {
    int idx = first + i - 1, rc = SQLITE_OK;
    long long iv = 0;
    switch (lua_type(L, idx)) {
      case LUA_TNIL:
        rc = sqlite3_bind_null(s->st, i);
        break;
      case LUA_TBOOLEAN:
        rc = sqlite3_bind_int(s->st, i, lua_toboolean(L, idx));
        break;
      case LUA_TNUMBER:
        if (kf_isinteger(L, idx, &iv)) rc = sqlite3_bind_int64(s->st, i, (sqlite3_int64)iv);
        else rc = sqlite3_bind_double(s->st, i, (double)lua_tonumber(L, idx));
        break;
      case LUA_TSTRING: {
        size_t len;
        const char *v = lua_tolstring(L, idx, &len);
        rc = sqlite3_bind_text(s->st, i, v, (int)len, SQLITE_TRANSIENT);
        break;
      }
      default:
        luaL_error(L, "kaifang.sqlite: value %d must be nil, a boolean, a number or a string, not %s", i,
                   luaL_typename(L, idx));
    }
    if (rc != SQLITE_OK) luaL_error(L, "kaifang.sqlite: cannot bind value %d: %s", i, sqlite3_errstr(rc));
  }
}

static void push_row(lua_State *L, sqlite3_stmt *st) {
  int n = sqlite3_column_count(st), i;
  lua_createtable(L, 0, n);
  for (i = 0; i < n; i++) {
    switch (sqlite3_column_type(st, i)) {
      case SQLITE_INTEGER:
        lua_pushinteger(L, (lua_Integer)sqlite3_column_int64(st, i));
        break;
      case SQLITE_FLOAT:
        lua_pushnumber(L, (lua_Number)sqlite3_column_double(st, i));
        break;
      case SQLITE_NULL:
        continue;
      default: {
        const void *v = sqlite3_column_blob(st, i);
        lua_pushlstring(L, v ? (const char *)v : "", (size_t)sqlite3_column_bytes(st, i));
      }
    }
    lua_setfield(L, -2, sqlite3_column_name(st, i));
  }
}

static int l_stmt_exec(lua_State *L) {
  kstmt *s = check_stmt(L, 1);
  int rc;
  bind_values(L, s, 2);
  while ((rc = sqlite3_step(s->st)) == SQLITE_ROW) {
  }
  if (rc != SQLITE_DONE) {
    push_error(L, s->owner->db, rc, NULL);
    sqlite3_reset(s->st);
    return 2;
  }
  sqlite3_reset(s->st);
  lua_pushinteger(L, sqlite3_changes(s->owner->db));
  return 1;
}

static int l_stmt_first(lua_State *L) {
  kstmt *s = check_stmt(L, 1);
  int rc;
  bind_values(L, s, 2);
  rc = sqlite3_step(s->st);
  if (rc == SQLITE_ROW) {
    push_row(L, s->st);
  } else if (rc == SQLITE_DONE) {
    lua_pushboolean(L, 0);
  } else {
    push_error(L, s->owner->db, rc, NULL);
    sqlite3_reset(s->st);
    return 2;
  }
  sqlite3_reset(s->st); /* no read transaction left open */
  return 1;
}

static int rows_next(lua_State *L) {
  kstmt *s = check_stmt(L, lua_upvalueindex(1));
  int rc = sqlite3_step(s->st);
  if (rc == SQLITE_ROW) {
    push_row(L, s->st);
    return 1;
  }
  sqlite3_reset(s->st);
  if (rc != SQLITE_DONE) return luaL_error(L, "kaifang.sqlite: %s", sqlite3_errmsg(s->owner->db));
  return 0;
}

static int l_stmt_rows(lua_State *L) {
  kstmt *s = check_stmt(L, 1);
  bind_values(L, s, 2);
  lua_settop(L, 1);
  lua_pushcclosure(L, rows_next, 1);
  return 1;
}

static int db_tostring(lua_State *L) {
  kdb *d = luaL_checkudata(L, 1, DB_MT);
  lua_pushfstring(L, "kaifang.sqlite (%s)", d->db ? "open" : "closed");
  return 1;
}

static const luaL_Reg db_methods[] = {{"exec", l_exec}, {"prepare", l_prepare}, {"close", db_close}, {NULL, NULL}};
static const luaL_Reg stmt_methods[] = {
    {"exec", l_stmt_exec}, {"first", l_stmt_first}, {"rows", l_stmt_rows}, {"close", stmt_close}, {NULL, NULL}};
static const luaL_Reg functions[] = {{"sqlite", l_sqlite}, {NULL, NULL}};

void kf_sqlite_register(lua_State *L) {
  kf_newclass(L, DB_MT, db_methods, db_close);
  luaL_getmetatable(L, DB_MT);
  lua_pushcfunction(L, db_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  kf_newclass(L, STMT_MT, stmt_methods, stmt_close);
  kf_setfuncs(L, functions);
}
