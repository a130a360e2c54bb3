# kaifang: plain `make` builds the C modules into build/lib; `make test` and `make demo` also
# install the Debian packages they need first, then build in a second make, which asks pkg-config
# for the Lua headers only after they are installed.
LUA         ?= lua5.4
LUA_PC      ?= lua5.4
LUA_CFLAGS  ?= $(or $(shell pkg-config --cflags $(LUA_PC) 2>/dev/null),-I/usr/include/lua5.4)
CC          ?= cc
CFLAGS      ?= -O2 -g
WARN        := -Wall -Wextra -Werror
KF_CFLAGS    = -std=c99 -D_POSIX_C_SOURCE=200809L -fPIC $(WARN) -Icsrc $(LUA_CFLAGS)
LDSHARED    := -shared
# .busted names lua5.4 for a plain `busted`; here LUA decides.
BUSTED      ?= $(LUA) /usr/bin/busted --ignore-lua
OUT         ?= build/lib

CORE_SRC  := csrc/core.c csrc/sign.c csrc/crypto.c csrc/http.c csrc/store.c csrc/sqlite.c csrc/signals.c csrc/json.c
CORE_HDR  := csrc/compat.h csrc/sign.h csrc/crypto.h csrc/http.h csrc/store.h csrc/sqlite.h csrc/signals.h csrc/json.h
HTTPD_SRC := csrc/httpd.c csrc/certs.c
CORE_SO   := $(OUT)/kaifang/core.so
HTTPD_SO  := $(OUT)/kaifang/sandbox/httpd.so

DEBIAN_PACKAGES := lua5.4 liblua5.4-dev libcurl4-openssl-dev libssl-dev lua-cjson lua-busted \
                   lua-argparse lua-readline lua-socket libmicrohttpd-dev pkg-config gcc clang luarocks \
                   redis-server libhiredis-dev libsqlite3-dev sqlite3 libclang-rt-14-dev openssl \
                   nginx-light libnginx-mod-http-lua libluajit2-5.1-dev luajit2 locales

export LUA_PATH  := $(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;;
export LUA_CPATH := $(CURDIR)/$(OUT)/?.so;;

.PHONY: all luajit deps test checks unit spec compilers rock demo bench bench-tools clean asan fuzz fuzz-smoke

all: $(CORE_SO) $(HTTPD_SO)

$(CORE_SO): $(CORE_SRC) $(CORE_HDR)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(KF_CFLAGS) $(LDSHARED) -o $@ $(CORE_SRC) -lcurl -lcrypto -lhiredis -lsqlite3

# HTTPS: libmicrohttpd's TLS is GnuTLS (libmicrohttpd-dev brings its headers); the certificates are
# made with OpenSSL (certs.c).
HTTPD_LIBS := -lmicrohttpd -lgnutls -lcrypto -lpthread
$(HTTPD_SO): $(HTTPD_SRC) csrc/compat.h csrc/certs.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(KF_CFLAGS) $(LDSHARED) -o $@ $(HTTPD_SRC) $(HTTPD_LIBS)

# The same C modules against LuaJIT's headers (what nginx's lua module runs), into build/luajit.
# libluajit2-5.1-dev (OpenResty's branch): libnginx-mod-http-lua needs it, and it conflicts with libluajit-5.1-dev.
luajit:
	$(MAKE) --no-print-directory OUT=build/luajit LUA_CFLAGS="$$(pkg-config --cflags luajit 2>/dev/null || echo -I/usr/include/luajit-2.1)" all

# Installs only what is missing; needs root or sudo the first time.
deps:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

build/test_core: tests/test_core.c csrc/sign.c csrc/crypto.c csrc/http.c $(CORE_HDR)
	@mkdir -p build
	$(CC) $(CFLAGS) -std=c99 -D_POSIX_C_SOURCE=200809L $(WARN) -Icsrc -o $@ tests/test_core.c csrc/sign.c csrc/crypto.c csrc/http.c -lcurl -lcrypto

unit: build/test_core
	./build/test_core

# Both compilers, warnings as errors, into a scratch directory.
compilers:
	$(MAKE) --no-print-directory CC=gcc OUT=build/gcc all
	$(MAKE) --no-print-directory CC=clang OUT=build/clang all

spec: all luajit
	$(BUSTED)

# The whole spec suite again with both C modules built with gcc's AddressSanitizer and
# UndefinedBehaviorSanitizer: for lua5.4 in build/asan, for LuaJIT (what nginx loads) in
# build/asan-luajit. lua5.4, luajit and nginx are not instrumented, so the runtimes are preloaded;
# child processes (lua5.4, luajit, nginx and its workers, redis-server) inherit them. Any report,
# from any process, is a file in build/asan-logs and fails the target. Leak detection stays off:
# libcurl's curl_version() sets up libldap once and never frees it, and lua5.4 leaves its state to
# exit().
ASAN_CFLAGS := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer
ASAN_LOGS   := $(CURDIR)/build/asan-logs
ASAN_ENV     = LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
               ASAN_OPTIONS=detect_leaks=0:verify_asan_link_order=0:log_path=$(ASAN_LOGS)/asan \
               UBSAN_OPTIONS=print_stacktrace=1:log_path=$(ASAN_LOGS)/ubsan KAIFANG_LUAJIT_BUILD=build/asan-luajit \
               LUA_CPATH="$(CURDIR)/build/asan/?.so;;"
asan:
	$(MAKE) --no-print-directory CC=gcc CFLAGS="$(ASAN_CFLAGS)" OUT=build/asan all
	$(MAKE) --no-print-directory CC=gcc CFLAGS="$(ASAN_CFLAGS)" OUT=build/asan-luajit \
	  LUA_CFLAGS="$$(pkg-config --cflags luajit 2>/dev/null || echo -I/usr/include/luajit-2.1)" all
	@rm -rf $(ASAN_LOGS) && mkdir -p $(ASAN_LOGS)
	$(ASAN_ENV) $(BUSTED) --cpath="build/asan/?.so"; status=$$?; \
	if ls $(ASAN_LOGS)/* >/dev/null 2>&1; then cat $(ASAN_LOGS)/* | head -200; echo "sanitizer reports: see $(ASAN_LOGS)"; exit 1; fi; \
	exit $$status
	@echo "asan: the spec suite under ASan and UBSan, no report"

# libFuzzer harnesses (fuzz/), each checked against a reference and run from its seed corpus in
# fuzz/corpus/<name> for FUZZ_SECONDS each; what they find goes to build/fuzz (corpus, crashes).
# `make test` runs each for 10 s; a crash or sanitizer report fails the target.
FUZZ_SECONDS ?= 60
FUZZERS      := codec aes signer form httpd json
FUZZ_CC      := clang
FUZZ_CFLAGS  := -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer \
                -std=c99 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Werror -Icsrc -Ifuzz $(LUA_CFLAGS)
LUA_LIBS    ?= $(or $(shell pkg-config --libs $(LUA_PC) 2>/dev/null),-llua5.4)
FUZZ_CORE   := $(CORE_SRC) $(LUA_LIBS) -lcurl -lcrypto -lhiredis -lsqlite3

build/fuzz/fuzz_codec: fuzz/fuzz_codec.c fuzz/common.h csrc/crypto.c csrc/crypto.h
build/fuzz/fuzz_aes: fuzz/fuzz_aes.c fuzz/common.h csrc/crypto.c csrc/crypto.h
build/fuzz/fuzz_codec build/fuzz/fuzz_aes:
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ $< csrc/crypto.c -lcrypto
build/fuzz/fuzz_signer: fuzz/fuzz_signer.c fuzz/common.h $(CORE_SRC) $(CORE_HDR)
build/fuzz/fuzz_form: fuzz/fuzz_form.c fuzz/common.h $(CORE_SRC) $(CORE_HDR)
build/fuzz/fuzz_json: fuzz/fuzz_json.c fuzz/common.h $(CORE_SRC) $(CORE_HDR)
build/fuzz/fuzz_signer build/fuzz/fuzz_form build/fuzz/fuzz_json:
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ $< $(FUZZ_CORE)
build/fuzz/fuzz_httpd: fuzz/fuzz_httpd.c fuzz/common.h $(HTTPD_SRC) csrc/compat.h csrc/certs.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ $< $(HTTPD_SRC) $(LUA_LIBS) $(HTTPD_LIBS)

fuzz: $(FUZZERS:%=build/fuzz/fuzz_%)
	@for f in $(FUZZERS); do \
	  mkdir -p build/fuzz/corpus/$$f; \
	  ./build/fuzz/fuzz_$$f -max_total_time=$(FUZZ_SECONDS) -timeout=10 -print_final_stats=1 \
	    -artifact_prefix=build/fuzz/$$f- build/fuzz/corpus/$$f fuzz/corpus/$$f >build/fuzz/$$f.log 2>&1 \
	    || { tail -60 build/fuzz/$$f.log; echo "fuzz $$f: crashed (input saved as build/fuzz/$$f-*)"; exit 1; }; \
	  echo "fuzz $$f: $$(grep -o 'Done [0-9]* runs in [0-9]* second(s)' build/fuzz/$$f.log), no crash"; \
	done

fuzz-smoke:
	@$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=10

# The README's rock command, with no network, no other rocks and no variables, into build/rocks;
# then the installed command and modules from another directory with only that tree's paths.
ROCK_TREE  := $(CURDIR)/build/rocks
ROCK_CHECK := for _, m in ipairs{ "kaifang.core", "kaifang.sandbox.httpd", "kaifang.lingdian", "kaifang.ngx" } do \
                require(m); local f = package.searchpath(m, package.path) or package.searchpath(m, package.cpath); \
                assert(f:find("$(ROCK_TREE)/", 1, true) == 1, m .. " loads from " .. f) end
rock:
	@mkdir -p build
	luarocks --lua-version=5.4 make --deps-mode=none --tree=$(ROCK_TREE) kaifang-scm-1.rockspec \
	  >build/rock.log 2>&1 || { cat build/rock.log; exit 1; }
	@cd / && unset LUA_PATH LUA_CPATH && eval "$$(luarocks --lua-version=5.4 --tree=$(ROCK_TREE) path)" \
	  && kaifang --help >/dev/null \
	  && kaifang call --sandbox lingdian get_user_tel_by_code user_code=U2TD844B2 | grep -q '"data": "13311112222"' \
	  && echo '=ld:get_user_tel_by_code{ user_code = "U2TD844B2" }.data' | kaifang repl --sandbox | grep -q 13311112222 \
	  && $(LUA) -e '$(ROCK_CHECK)'
	@echo "luarocks make: ok (build/rocks; from /, its kaifang --help, call --sandbox and repl --sandbox work and its modules load)"

# deps first, then the rest in a second make (see the top).
test: deps
	@$(MAKE) --no-print-directory checks
checks: all luajit compilers unit rock spec asan fuzz-smoke

demo: deps
	@$(MAKE) --no-print-directory all
	$(LUA) examples/demo.lua

BENCH_PACKAGES := wrk gnuplot-nox lua-luaossl lua-socket
BENCH_TOOLS    := build/bench/curl_floor build/bench/sign_floor build/bench/sign_traverse.so
build/bench/curl_floor: bench/curl_floor.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -std=c99 -D_POSIX_C_SOURCE=200809L $(WARN) -o $@ $< -lcurl
build/bench/sign_floor: bench/sign_floor.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -std=c99 -D_POSIX_C_SOURCE=200809L $(WARN) -o $@ $< -lcrypto
build/bench/sign_traverse.so: bench/sign_traverse.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -std=c99 -fPIC $(WARN) $(LUA_CFLAGS) $(LDSHARED) -o $@ $<
bench-tools: $(BENCH_TOOLS)
bench: deps
	@$(MAKE) --no-print-directory deps all luajit bench-tools DEBIAN_PACKAGES="$(BENCH_PACKAGES)"
	$(LUA) bench/sign.lua
	$(LUA) bench/batch.lua
	$(LUA) bench/memory.lua
	$(LUA) bench/journal.lua
	$(LUA) bench/nginx.lua
	$(LUA) bench/tls.lua

# also what `luarocks make` leaves in the checkout
clean:
	rm -rf build kaifang csrc/*.o
