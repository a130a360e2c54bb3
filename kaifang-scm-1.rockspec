rockspec_format = "3.0"
package = "kaifang"
version = "scm-1"
source = {
  url = "git+https://example.invalid/kaifang.git",
}
description = {
  summary = "Chinese open-platform APIs (Lingdian Campus, ZAFU, Yopoint, Dakashi) from Lua, with a C core",
  detailed = [[
kaifang signs, sends and decodes calls to four Chinese open platforms through one libcurl/OpenSSL
core, with a sandbox server that behaves like the platforms for testing.
]],
  license = "MIT",
}
dependencies = {
  "lua >= 5.1",
  "lua-cjson",
  "argparse", -- the kaifang command
}
-- No header check for curl: Debian keeps curl/curl.h in the multiarch include directory
-- (/usr/include/<triplet>), where luarocks does not look but the compiler does.
external_dependencies = {
  CURL = { library = "curl" },
  OPENSSL = { header = "openssl/evp.h", library = "crypto" },
  MICROHTTPD = { header = "microhttpd.h", library = "microhttpd" },
  GNUTLS = { header = "gnutls/gnutls.h", library = "gnutls" }, -- libmicrohttpd's TLS
  HIREDIS = { header = "hiredis/hiredis.h", library = "hiredis" },
  SQLITE = { header = "sqlite3.h", library = "sqlite3" },
}
build = {
  type = "builtin",
  modules = {
    ["kaifang.core"] = {
      sources = { "csrc/core.c", "csrc/sign.c", "csrc/crypto.c", "csrc/http.c", "csrc/store.c", "csrc/sqlite.c",
                  "csrc/signals.c", "csrc/json.c" },
      incdirs = { "csrc", "$(CURL_INCDIR)", "$(OPENSSL_INCDIR)", "$(HIREDIS_INCDIR)", "$(SQLITE_INCDIR)" },
      libdirs = { "$(CURL_LIBDIR)", "$(OPENSSL_LIBDIR)", "$(HIREDIS_LIBDIR)", "$(SQLITE_LIBDIR)" },
      libraries = { "curl", "crypto", "hiredis", "sqlite3" },
      defines = { "_POSIX_C_SOURCE=200809L" },
    },
    ["kaifang.sandbox.httpd"] = {
      sources = { "csrc/httpd.c", "csrc/certs.c" },
      incdirs = { "csrc", "$(MICROHTTPD_INCDIR)", "$(GNUTLS_INCDIR)", "$(OPENSSL_INCDIR)" },
      libdirs = { "$(MICROHTTPD_LIBDIR)", "$(GNUTLS_LIBDIR)", "$(OPENSSL_LIBDIR)" },
      libraries = { "microhttpd", "gnutls", "crypto", "pthread" },
      defines = { "_POSIX_C_SOURCE=200809L" },
    },
    ["kaifang"] = "lua/kaifang/init.lua",
    ["kaifang.client"] = "lua/kaifang/client.lua",
    ["kaifang.errors"] = "lua/kaifang/errors.lua",
    ["kaifang.sign"] = "lua/kaifang/sign.lua",
    ["kaifang.batch"] = "lua/kaifang/batch.lua",
    ["kaifang.lingdian"] = "lua/kaifang/lingdian.lua",
    ["kaifang.zafu"] = "lua/kaifang/zafu.lua",
    ["kaifang.yopoint"] = "lua/kaifang/yopoint.lua",
    ["kaifang.dakashi"] = "lua/kaifang/dakashi.lua",
    ["kaifang.store"] = "lua/kaifang/store.lua",
    ["kaifang.transport.curl"] = "lua/kaifang/transport/curl.lua",
    ["kaifang.transport"] = "lua/kaifang/transport/init.lua",
    ["kaifang.transport.ngx_thread"] = "lua/kaifang/transport/ngx_thread.lua",
    ["kaifang.transport.resty_http"] = "lua/kaifang/transport/resty_http.lua",
    ["kaifang.store.ngx_shared"] = "lua/kaifang/store/ngx_shared.lua",
    ["kaifang.journal"] = "lua/kaifang/journal/init.lua",
    ["kaifang.journal.gate"] = "lua/kaifang/journal/gate.lua",
    ["kaifang.journal.sqlite"] = "lua/kaifang/journal/sqlite.lua",
    ["kaifang.journal.redis"] = "lua/kaifang/journal/redis.lua",
    ["kaifang.ngx"] = "lua/kaifang/ngx.lua",
    ["kaifang.cli"] = "lua/kaifang/cli/init.lua",
    ["kaifang.cli.config"] = "lua/kaifang/cli/config.lua",
    ["kaifang.cli.format"] = "lua/kaifang/cli/format.lua",
    ["kaifang.cli.batch"] = "lua/kaifang/cli/batch.lua",
    ["kaifang.cli.repl"] = "lua/kaifang/cli/repl.lua",
    ["kaifang.sandbox"] = "lua/kaifang/sandbox/init.lua",
    ["kaifang.sandbox.util"] = "lua/kaifang/sandbox/util.lua",
    ["kaifang.sandbox.timers"] = "lua/kaifang/sandbox/timers.lua",
    ["kaifang.sandbox.faults"] = "lua/kaifang/sandbox/faults.lua",
    ["kaifang.sandbox.duplicates"] = "lua/kaifang/sandbox/duplicates.lua",
    ["kaifang.sandbox.lingdian"] = "lua/kaifang/sandbox/lingdian.lua",
    ["kaifang.sandbox.zafu"] = "lua/kaifang/sandbox/zafu.lua",
    ["kaifang.sandbox.yopoint"] = "lua/kaifang/sandbox/yopoint.lua",
    ["kaifang.sandbox.dakashi"] = "lua/kaifang/sandbox/dakashi.lua",
  },
  install = {
    bin = { kaifang = "bin/kaifang" },
  },
}
test_dependencies = { "busted" }
test = { type = "busted" }
