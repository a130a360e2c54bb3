-- The findings of the C core and sandbox audit (issue 14), one block each: every test here
-- failed before its fix. A crash or a hang would take busted with it, so those run in a child.
local core = require "kaifang.core"
local httpd = require "kaifang.sandbox.httpd"
local kaifang = require "kaifang"
local redis = require "spec.helpers.redis"
local shell = require "spec.helpers.shell"
local spawn = require "spec.helpers.spawn"
local socket = require "socket"

local q = shell.q

-- Runs a Lua chunk in a child; returns its output and exit status (124: stopped at the limit).
local function child(chunk, limit)
  return spawn.chunk(chunk, { limit = limit or 10 }).read()
end

-- A server that takes requests and never answers them (its Lua side is this process).
local function silent_server(opts)
  opts = opts or {}
  opts.host, opts.port = "127.0.0.1", 0
  local srv = assert(httpd.listen(opts))
  return srv, "http://127.0.0.1:" .. srv:port()
end

describe("1. signers and <close>", function()
  it("a shared signer survives a user's <close>, and every client keeps signing", function()
    local out, status = child([[
      local kaifang = require "kaifang"
      do local x <close> = kaifang.sign.signer("lingdian") end
      print(kaifang.sign.lingdian({ a = 1 }, "k"))]])
    assert.equal(0, status, out)
    assert.matches("^%x+\ta=1k\n$", out)
  end)

  it("a closed signer of one's own says so", function()
    local out, status = child([[
      local s = require("kaifang.core").signer{ name = "mine" }
      do local x <close> = s end
      print(pcall(s.sign, s, { a = 1 }, "k"))]])
    assert.equal(0, status, out)
    assert.matches("false\t.*kaifang%.mine: signer is closed", out)
  end)
end)

describe("2. strings an __index makes stay alive while C uses them", function()
  it("a proxy from __index reaches libcurl intact, after a full collection", function()
    local srv, url = silent_server()
    local n = 0
    local opts = setmetatable({}, { __index = function(_, k)
      if k == "proxy" then return url .. "/" end -- a fresh string, held by nothing
      if k == "user_agent" then
        collectgarbage("collect")
        local junk = {} -- reuse the freed memory, so that a dangling pointer reads garbage
        for i = 1, 2000 do junk[i] = ("zzzzzzzzzzzzzzzzzzzzzz%d"):format(i) end
        n = #junk
        return nil
      end
    end })
    local s = core.http(opts)
    local res, err = s:request{ url = "http://proxied.invalid/through", timeout = 0.5 }
    s:close()
    local req = srv:next(1)
    srv:close()
    assert.equal(2000, n)
    assert.is_nil(res)
    assert.equal("timeout", err.kind)
    assert.is_table(req, "the request did not reach the proxy")
    assert.equal("http://proxied.invalid/through", req.uri)
  end)

  it("the sandbox's listen keeps a host from __index", function()
    local srv = assert(httpd.listen(setmetatable({}, { __index = function(_, k)
      if k == "host" then return ("127.000.000.%03d"):format(1) end -- a fresh string, held by nothing
      if k == "verbose" then collectgarbage("collect") end
    end })))
    assert.equal(("127.000.000.%03d"):format(1), srv:host()) -- no constant of the same text
    srv:close()
  end)
end)

describe("3. Yopoint callbacks never raise on what a sender put in them", function()
  local yp = kaifang.yopoint.new{ appid = "a", app_secret = "s", sign_key = "k", base_url = "http://127.0.0.1:1" }
  for _, body in ipairs{ '{"a":1e400,"sign":"x","timestamp":"1"}', '{"a":-1e400,"sign":"x"}', '{"a":nan,"sign":"x"}',
                         '{"a":inf,"sign":"x"}' } do
    it("verify_notify and verify_pay_redirect give nil, err for " .. body, function()
      for _, verify in ipairs{ yp.verify_notify, yp.verify_pay_redirect } do
        local ok, res, err = pcall(verify, yp, body)
        assert.is_true(ok, tostring(res))
        assert.is_nil(res)
        assert.equal("decode", err.kind)
        assert.matches("not a finite number", err.message)
      end
    end)
  end
end)

describe("4. request-line and header injection", function()
  local srv, url
  before_each(function() srv, url = silent_server() end)
  after_each(function() srv:close() end)

  local function refused(req, pattern)
    local s = core.http{ timeout = 0.5 }
    req.url = req.url or url .. "/x"
    local ok, err = pcall(s.request, s, req)
    s:close()
    assert.is_false(ok, "the request was sent: " .. tostring(err and err.message or err))
    assert.matches(pattern, err)
    assert.is_nil(srv:next(0.2), "something reached the server")
  end

  it("refuses a method that is not a token", function()
    refused({ method = "POST / HTTP/1.1\r\nX-Injected: yes\r\n\r\nGET" }, "bad method")
    refused({ method = "GET\0" }, "bad method")
    refused({ method = "" }, "bad method")
  end)

  it("refuses header names and values with CR, LF or NUL", function()
    refused({ headers = { ["X-A"] = "a\0b" } }, "bad value of request header")
    refused({ headers = { ["X-A"] = "a\r\nX-Injected: yes" } }, "bad value of request header")
    refused({ headers = { ["X-A\0B"] = "v" } }, "bad request header name")
    refused({ headers = { ["X A"] = "v" } }, "bad request header name")
  end)

  it("refuses a url with a NUL", function()
    refused({ url = url .. "/x\0/evil" }, "NUL")
  end)
end)

describe("5. numbers that are not numbers", function()
  local nan, inf = 0 / 0, math.huge

  it("core.file_lock refuses a NaN timeout instead of waiting forever", function()
    local out, status = child(([[
      local core = require "kaifang.core"
      local held = assert(core.file_lock(%q))
      print(pcall(core.file_lock, %q, 0/0))]]):format(os.tmpname(), os.tmpname()), 5)
    assert.equal(0, status, "exit " .. tostring(status) .. ": " .. out)
    assert.matches("^false\t.*seconds", out)
  end)

  it("core.http, core.multi, core.redis and core.sleep refuse NaN, infinities and out-of-range values", function()
    for _, bad in ipairs{ { timeout = nan }, { timeout = inf }, { connect_timeout = -inf }, { timeout = 1e300 },
                          { max_body = -1 }, { max_body = nan }, { max_body = 1.5 }, { max_body = 2 ^ 64 } } do
      for _, make in ipairs{ core.http, core.multi } do
        local ok, err = pcall(make, bad)
        assert.is_false(ok, next(bad))
        assert.matches("^kaifang%.http: '%a+_?%a*' must be", err)
      end
    end
    for _, bad in ipairs{ { timeout = nan }, { connect_timeout = inf } } do
      assert.matches("must be a positive number of seconds", select(2, pcall(core.redis, bad)))
    end
    assert.is_false(pcall(core.sleep, nan))
    assert.is_false(pcall(core.sleep, inf))
  end)

  it("clients refuse them in their options", function()
    local base = { developer_code = "c", developer_key = "k", base_url = "http://127.0.0.1:1" }
    for _, bad in ipairs{ { timeout = nan }, { connect_timeout = inf }, { max_attempts = inf }, { max_attempts = nan },
                          { max_body = -1 }, { max_body = nan }, { keepalive_timeout = nan }, { rate = nan },
                          { rate = inf } } do
      local opts = {}
      for k, v in pairs(base) do opts[k] = v end
      local k, v = next(bad)
      opts[k] = v
      local ok, err = pcall(kaifang.lingdian.new, opts)
      assert.is_false(ok, k .. " = " .. tostring(v))
      assert.matches("^kaifang%.lingdian: option '" .. k .. "' must be", err)
    end
    local ok, err = pcall(kaifang.yopoint.new, { appid = "a", app_secret = "s", notify_window = nan })
    assert.is_false(ok)
    assert.matches("notify_window", err)
  end)

  it("kaifang.batch and the stores refuse them", function()
    for _, bad in ipairs{ { concurrency = nan }, { rate = nan }, { rate = inf }, { max_attempts = inf }, { backoff_base = nan } } do
      local ok, err = pcall(kaifang.batch, {}, bad)
      assert.is_false(ok, next(bad))
      assert.matches("^kaifang%.batch: option '%a+_?%a*' must be", err)
    end
    local m = kaifang.store.memory()
    assert.is_false(pcall(m.set, m, "k", "v", nan))
    assert.is_false(pcall(m.set, m, "k", "v", inf))
    assert.is_false(pcall(m.take, m, "k", nan))
    assert.is_false(pcall(m.take, m, "k", 1, { burst = nan }))
    assert.is_false(pcall(m.take, m, "k", 1, { max_wait = inf }))
    assert.is_false(pcall(kaifang.store.file, "/tmp/x", { lock_timeout = nan }))
  end)

  it("the sandbox server refuses them", function()
    assert.is_false(pcall(httpd.listen, { port = nan }))
    assert.is_false(pcall(httpd.listen, { connection_timeout = inf }))
    local srv = assert(httpd.listen{ port = 0 })
    assert.is_false(pcall(srv.next, srv, nan))
    assert.is_false(pcall(srv.next, srv, inf))
    srv:close()
  end)
end)

describe("6. the file token store does not trust the file system", function()
  local dir
  before_each(function()
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. q(dir)))
  end)
  after_each(function() os.execute("rm -rf " .. q(dir)) end)

  local function exists(path) return os.execute("test -e " .. q(path)) == true end

  it("a dangling lock symlink neither creates its target nor is followed", function()
    assert(os.execute(("ln -s %s %s"):format(q(dir .. "/target"), q(dir .. "/x.json.lock"))))
    local s = kaifang.store.file(dir .. "/x.json")
    local ok, err = s:set("k", "v")
    assert.is_nil(ok)
    assert.matches("refusing .*x%.json%.lock: it is a symbolic link", err.message)
    assert.is_false(exists(dir .. "/target"))
  end)

  it("refuses a store file that others can write, or that is a link", function()
    local path = dir .. "/x.json"
    shell.sh("printf '%s' '{\"values\":{\"k\":{\"value\":\"forged\"}}}' > " .. q(path) .. " && chmod 666 " .. q(path))
    local v, err = kaifang.store.file(path):get("k")
    assert.is_nil(v)
    assert.matches("others can write it %(mode 666", err.message)
    assert(os.execute(("chmod 600 %s && mv %s %s && ln -s %s %s"):format(q(path), q(path), q(path .. ".real"),
      q(path .. ".real"), q(path))))
    v, err = kaifang.store.file(path):get("k")
    assert.is_nil(v)
    assert.matches("symbolic link", err.message)
  end)

  it("refuses a store file another user owns", function()
    local path = dir .. "/x.json"
    shell.sh("printf '{}' > " .. q(path) .. " && chmod 600 " .. q(path))
    if not os.execute("chown nobody " .. q(path) .. " 2>/dev/null") then
      pending("only root can give a file away")
      return
    end
    local v, err = kaifang.store.file(path):get("k")
    assert.is_nil(v)
    assert.matches("owned by uid %d+, not by this user", err.message)
  end)
end)

describe("7. a Redis connection after close", function()
  local server
  setup(function() server = redis.start({ password = "hardening-pw" }) end)
  teardown(function() server.stop() end)

  it("says it is closed, whether closed by close() or by <close>", function()
    local conn = core.redis({ port = server.port, password = "hardening-pw" })
    assert.equal("PONG", conn:command({ "PING" }))
    conn:close()
    local v, err = conn:command({ "PING" })
    assert.is_nil(v)
    assert.equal("closed", err.kind)
    local out, status = child(([[
      local conn = require("kaifang.core").redis({ port = %d, password = "hardening-pw" })
      do local c <close> = conn end
      local v, err = conn:command({ "PING" })
      print(v, err and err.kind)]]):format(server.port))
    assert.equal(0, status, out)
    assert.equal("nil\tclosed\n", out)
  end)
end)

describe("8. a batch sends each call with its own client's transport settings", function()
  it("a client with a proxy sends through it alone and in a batch", function()
    local srv, url = silent_server()
    local ld = kaifang.lingdian.new{ developer_code = "c", developer_key = "k", base_url = "http://proxied.invalid",
                                     proxy = url, timeout = 0.5 }
    local res, err = ld:get_user_tel_by_code{ user_code = "U1" }
    assert.is_nil(res)
    assert.equal("timeout", err.kind)
    local alone = srv:next(1)
    local outcome
    kaifang.batch({ { ld, "get_user_tel_by_code", { user_code = "U2" } } },
                  { on_result = function(_, r, e) outcome = { r, e } end })
    local batched = srv:next(1)
    srv:close()
    assert.matches("^http://proxied%.invalid/.*user_code=U1", assert(alone, "not through the proxy alone").uri
      .. "?" .. alone.body)
    assert.is_table(batched, "not through the proxy in a batch")
    assert.matches("^http://proxied%.invalid/", batched.uri)
    assert.matches("user_code=U2", batched.body)
    assert.is_nil(outcome[1])
    assert.equal("timeout", outcome[2].kind)
  end)

  it("a batch-wide transport option raises, naming the client's", function()
    local ok, err = pcall(kaifang.batch, {}, { proxy = "http://127.0.0.1:1" })
    assert.is_false(ok)
    assert.matches("option 'proxy' belongs to the client", err)
  end)
end)

describe("9. smaller points", function()
  it("an excluded parameter name with a NUL raises instead of being cut", function()
    local ok, err = pcall(core.signer, { exclude = { "sign\0extra" } })
    assert.is_false(ok)
    assert.matches("excluded key contains a NUL byte", err)
  end)
end)

describe("the sandbox as a server", function()
  local function raw(port)
    local c = assert(socket.tcp())
    c:settimeout(3)
    assert(c:connect("127.0.0.1", port))
    return c
  end

  it("cuts connections whose headers are not in by the header timeout, so others get through", function()
    local srv = assert(httpd.listen{ host = "127.0.0.1", port = 0, connection_limit = 3, header_timeout = 0.5 })
    local slow = {}
    for i = 1, 3 do
      slow[i] = raw(srv:port())
      slow[i]:send("GET / HTTP/1.1\r\nHost: x\r\n")
    end
    local t0, cut = core.monotonic(), 0
    while core.monotonic() - t0 < 1.5 do -- a header line every 0.1 s: never idle, never done
      for i = 1, 3 do
        if slow[i] and not slow[i]:send("X-Slow: 1\r\n") then
          cut, slow[i] = cut + 1, nil
        end
      end
      socket.sleep(0.1)
    end
    local c = raw(srv:port())
    c:send("GET /legit HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    local req = srv:next(2)
    assert.is_table(req, "the legitimate client did not get a connection")
    assert.equal("/legit", req.path)
    srv:respond(req.id, 200, {}, "served")
    assert.matches("^HTTP/1.1 200.*served$", c:receive("*a"))
    assert.equal(3, cut)
    srv:close()
  end)

  it("refuses a body past the default limit of 1 MiB with 413", function()
    local srv = assert(httpd.listen{ host = "127.0.0.1", port = 0 })
    local c = raw(srv:port())
    c:send("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2097152\r\n\r\n" .. ("x"):rep(2097152))
    assert.matches("^HTTP/1.1 413", c:receive("*a"))
    assert.is_nil(srv:next(0.1))
    srv:close()
  end)

  it("holds at most max_memory of bodies at once: past it, 503", function()
    local srv = assert(httpd.listen{ host = "127.0.0.1", port = 0, max_body = 100000, max_memory = 150000 })
    local a, b = raw(srv:port()), raw(srv:port())
    local body = ("y"):rep(100000)
    a:send("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" .. body)
    socket.sleep(0.2) -- a's body is held, waiting for next()
    b:send("POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" .. body)
    assert.matches("^HTTP/1.1 503", b:receive("*l"))
    assert.is_true(srv:stats().memory <= 150000)
    local req = assert(srv:next(1))
    assert.equal("/a", req.path)
    assert.equal(100000, #req.body)
    assert.equal(0, srv:stats().memory)
    srv:close()
  end)

  it("refuses conflicting Content-Length headers, or one beside chunked, with 400", function()
    local srv = assert(httpd.listen{ host = "127.0.0.1", port = 0 })
    for _, head in ipairs{ "Content-Length: 3\r\nContent-Length: 5", "Content-Length: 3\r\nTransfer-Encoding: chunked" } do
      local c = raw(srv:port())
      c:send("POST / HTTP/1.1\r\nHost: x\r\n" .. head .. "\r\n\r\nabc\r\n0\r\n\r\n")
      assert.matches("^HTTP/1.1 400", c:receive("*l"))
      c:close()
    end
    assert.is_nil(srv:next(0.2))
    srv:close()
  end)

  it("answers a client that half-closes after sending", function()
    local srv = assert(httpd.listen{ host = "127.0.0.1", port = 0 })
    for _, request in ipairs{ "GET /h HTTP/1.1\r\nHost: x\r\n\r\n",
                              "POST /h HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc" } do
      local c = raw(srv:port())
      c:send(request)
      c:shutdown("send")
      local req = assert(srv:next(2))
      socket.sleep(0.1) -- the end of the stream has arrived by now
      srv:respond(req.id, 200, {}, "still here")
      assert.matches("still here$", c:receive("*a"))
      c:close()
    end
    srv:close()
  end)
end)
