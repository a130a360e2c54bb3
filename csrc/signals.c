/* SIGINT and SIGTERM, held (blocked) while a batch runs, so that neither kills it mid-step; the
 * batch asks between steps whether one came and then stops cleanly. The kernel keeps the
 * pending signal: no handler, nothing global here.
 *
 *   core.hold_signals()    blocks SIGINT and SIGTERM
 *   core.take_signal()     -> "INT" | "TERM" | nil: takes one pending signal, without waiting
 *   core.release_signals() drops the pending ones and unblocks both */
#include <signal.h>
#include <time.h>

#include "signals.h"

static void held(sigset_t *set) {
  sigemptyset(set);
  sigaddset(set, SIGINT);
  sigaddset(set, SIGTERM);
}

static int take(void) {
  sigset_t set;
  struct timespec zero = {0, 0};
  held(&set);
  return sigtimedwait(&set, NULL, &zero);
}

static int l_hold(lua_State *L) {
  sigset_t set;
  held(&set);
  lua_pushboolean(L, sigprocmask(SIG_BLOCK, &set, NULL) == 0);
  return 1;
}

static int l_take(lua_State *L) {
  int sig = take();
  if (sig == SIGINT) lua_pushliteral(L, "INT");
  else if (sig == SIGTERM) lua_pushliteral(L, "TERM");
  else lua_pushnil(L);
  return 1;
}

static int l_release(lua_State *L) {
  sigset_t set;
  while (take() > 0) {
  }
  held(&set);
  lua_pushboolean(L, sigprocmask(SIG_UNBLOCK, &set, NULL) == 0);
  return 1;
}

static const luaL_Reg functions[] = {
    {"hold_signals", l_hold}, {"take_signal", l_take}, {"release_signals", l_release}, {NULL, NULL}};

void kf_signals_register(lua_State *L) { kf_setfuncs(L, functions); }
