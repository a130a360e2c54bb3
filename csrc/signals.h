/* Ctrl-C and SIGTERM held back while a long command (kaifang batch) stops cleanly. */
#ifndef KAIFANG_SIGNALS_H
#define KAIFANG_SIGNALS_H

#include "compat.h"

/* Adds hold_signals, take_signal and release_signals to the module table on top of the stack. */
void kf_signals_register(lua_State *L);

#endif
