-- The README's "Security" section, one block per line there: TLS checked by default, redirects
-- not followed, proxy variables not read, and what a Redis password is on the wire. (Secrets out
-- of strings: spec/errors_spec.lua; the file store's permissions: spec/store_spec.lua and
-- spec/hardening_spec.lua.)
local core = require "kaifang.core"
local httpd = require "kaifang.sandbox.httpd"
local shell = require "spec.helpers.shell"
local spawn = require "spec.helpers.spawn"
local socket = require "socket"

local q = shell.q

local free_port = require("spec.helpers.redis").free_port

-- A child lua5.4 with extra environment, started at once; read() waits for its output.
local function child(env, chunk) return spawn.chunk(chunk, { env = env }) end

describe("TLS", function()
  local dir, port, server
  setup(function()
    dir = os.tmpname()
    os.remove(dir)
    shell.sh(("mkdir -p %s && cd %s && openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost "
      .. "-addext subjectAltName=DNS:localhost -keyout key.pem -out cert.pem 2>/dev/null"):format(q(dir), q(dir)))
    port = free_port()
    server = assert(io.popen(("cd %s && exec openssl s_server -quiet -accept %d -cert cert.pem -key key.pem -www "
      .. ">/dev/null 2>&1 & echo $!"):format(q(dir), port)))
    server = { pid = server:read("l"), fh = server }
    for _ = 1, 100 do -- until it listens
      local c = socket.tcp()
      c:settimeout(0.1)
      local ok = c:connect("127.0.0.1", port)
      c:close()
      if ok then break end
      socket.sleep(0.05)
    end
  end)
  teardown(function()
    os.execute("kill " .. server.pid .. " 2>/dev/null")
    server.fh:close()
    os.execute("rm -rf " .. q(dir))
  end)

  local function get(opts, host)
    opts.timeout = 5
    local s = core.http(opts)
    local res, err = s:request{ url = ("https://%s:%d/"):format(host or "localhost", port) }
    s:close()
    return res, err
  end

  it("checks the certificate by default: a self-signed one is refused", function()
    local res, err = get({})
    assert.is_nil(res)
    assert.equal(60, err.code) -- CURLE_PEER_FAILED_VERIFICATION
  end)

  it("accepts it with the CA given, and still checks the host name", function()
    local res = assert(get({ cainfo = dir .. "/cert.pem" }))
    assert.equal(200, res.status)
    local res2, err = get({ cainfo = dir .. "/cert.pem" }, "127.0.0.1")
    assert.is_nil(res2)
    assert.equal(60, err.code)
  end)

  it("turns the checks off only when asked", function()
    assert.equal(200, assert(get({ ssl_verify = false }, "127.0.0.1")).status)
  end)
end)

describe("redirects", function()
  it("are not followed: the 302 is the answer, and nothing goes to its Location", function()
    local srv = assert(httpd.listen{ host = "127.0.0.1", port = 0 })
    local url = "http://127.0.0.1:" .. srv:port()
    local c = child("", ([[
      local res, err = require("kaifang.core").http{ timeout = 5 }:request{ url = %q }
      print(res and res.status, res and res.headers.location, err and err.message)]]):format(url .. "/from"))
    local req = assert(srv:next(10))
    assert.equal("/from", req.path)
    srv:respond(req.id, 302, { Location = url .. "/to" }, "")
    local out = c.read()
    assert.is_nil(srv:next(0.5), "the redirect was followed")
    srv:close()
    assert.equal("302\t" .. url .. "/to\tnil\n", out)
  end)
end)

describe("proxy variables", function()
  it("are not read: with every one of them set, the request goes straight to its host", function()
    local proxy = assert(httpd.listen{ host = "127.0.0.1", port = 0 })
    local p = "http://127.0.0.1:" .. proxy:port()
    local env = ("http_proxy=%s HTTP_PROXY=%s https_proxy=%s HTTPS_PROXY=%s all_proxy=%s ALL_PROXY=%s no_proxy= "):format(
      p, p, p, p, p, p)
    local out = child(env, ([[
      local res, err = require("kaifang.core").http{ timeout = 2 }:request{ url = "http://127.0.0.1:%d/direct" }
      print(err and err.code)]]):format(free_port())).read()
    assert.is_nil(proxy:next(0.2), "the request went through the proxy of the environment")
    proxy:close()
    assert.equal("7\n", out) -- CURLE_COULDNT_CONNECT: it went to the (closed) port itself
  end)
end)

describe("a Redis password", function()
  it("goes over the connection as it is, in an AUTH command: only a private network or a tunnel hides it", function()
    local server = assert(socket.bind("127.0.0.1", 0))
    local _, port = server:getsockname()
    -- the kernel takes the connection and the command before anyone accepts it
    local conn = core.redis{ port = tonumber(port), password = "pw-in-clear", connect_timeout = 1, timeout = 0.3 }
    local v, err = conn:command{ "PING" }
    assert.is_nil(v)
    assert.is_table(err) -- no reply in time (hiredis may call it a timeout or an I/O error)
    local peer = assert(server:accept())
    peer:settimeout(1)
    local data, _, partial = peer:receive(64) -- it waits for a reply: fewer bytes, then a timeout
    local wire = data or partial
    peer:close()
    server:close()
    conn:close()
    assert.matches("AUTH\r\n$11\r\npw%-in%-clear\r\n", wire)
  end)
end)
