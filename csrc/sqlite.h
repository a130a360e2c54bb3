/* A small SQLite binding for the batch journal (lua/kaifang/journal/sqlite.lua): a database,
 * prepared statements, rows as tables keyed by column name. Debian's libsqlite3. */
#ifndef KAIFANG_SQLITE_H
#define KAIFANG_SQLITE_H

#include "compat.h"

/* Adds sqlite to the module table on top of the stack. */
void kf_sqlite_register(lua_State *L);

#endif
