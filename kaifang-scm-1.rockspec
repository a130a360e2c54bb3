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
}
external_dependencies = {
  CURL = { header = "curl/curl.h", library = "curl" },
  OPENSSL = { header = "openssl/evp.h", library = "crypto" },
  MICROHTTPD = { header = "microhttpd.h", library = "microhttpd" },
}
build = {
  type = "builtin",
  modules = {
    ["kaifang.core"] = {
      sources = { "csrc/core.c", "csrc/sign.c", "csrc/crypto.c", "csrc/http.c" },
      incdirs = { "csrc", "$(CURL_INCDIR)", "$(OPENSSL_INCDIR)" },
      libdirs = { "$(CURL_LIBDIR)", "$(OPENSSL_LIBDIR)" },
      libraries = { "curl", "crypto" },
      defines = { "_POSIX_C_SOURCE=200809L" },
    },
    ["kaifang.sandbox.httpd"] = {
      sources = { "csrc/httpd.c" },
      incdirs = { "csrc", "$(MICROHTTPD_INCDIR)" },
      libdirs = { "$(MICROHTTPD_LIBDIR)" },
      libraries = { "microhttpd", "pthread" },
      defines = { "_POSIX_C_SOURCE=200809L" },
    },
    ["kaifang"] = "lua/kaifang/init.lua",
    ["kaifang.client"] = "lua/kaifang/client.lua",
    ["kaifang.errors"] = "lua/kaifang/errors.lua",
    ["kaifang.sign"] = "lua/kaifang/sign.lua",
    ["kaifang.lingdian"] = "lua/kaifang/lingdian.lua",
    ["kaifang.transport.curl"] = "lua/kaifang/transport/curl.lua",
    ["kaifang.sandbox"] = "lua/kaifang/sandbox/init.lua",
    ["kaifang.sandbox.lingdian"] = "lua/kaifang/sandbox/lingdian.lua",
  },
  install = {
    bin = { kaifang = "bin/kaifang" },
  },
}
test_dependencies = { "busted" }
test = { type = "busted" }
