-- Which transport a client gets (kaifang.transport.select), and the nginx transports' logic with
-- stand-ins for nginx's API and for lua-resty-http, under plain Lua: spec/openresty_spec.lua runs
-- the real thing inside nginx.
local transport = require "kaifang.transport"
local ngx_thread = require "kaifang.transport.ngx_thread"
local resty_http = require "kaifang.transport.resty_http"
local errors = require "kaifang.errors"
local lingdian = require "kaifang.lingdian"
local httpd = require "kaifang.sandbox.httpd"

local CODE, KEY = "U2QHNB2w=", "744ed968e7e1a4aebafa6f4888fced68"

local function closed_port()
  local srv = assert(httpd.listen{ host = "127.0.0.1", port = 0 })
  local port = srv:port()
  srv:close()
  return port
end

-- A stand-in for nginx's ngx table in a given phase; run_worker_thread runs the function right
-- here (or answers with `fail` when given).
local function fake_ngx(phase, fail)
  local calls = {}
  return {
    calls = calls,
    config = { ngx_lua_version = 10023 },
    get_phase = function() return phase end,
    sleep = function(s) calls[#calls + 1] = { "sleep", s } end,
    run_worker_thread = function(pool, mod, fn, ...)
      calls[#calls + 1] = { pool, mod, fn }
      if fail then return false, fail end
      return true, require(mod)[fn](...)
    end,
  }
end

local function with_ngx(fake, fn)
  local saved = rawget(_G, "ngx")
  rawset(_G, "ngx", fake)
  local ok, err = pcall(fn)
  rawset(_G, "ngx", saved)
  if not ok then error(err, 0) end
end

describe("kaifang.transport.select", function()
  it("outside nginx: libcurl", function()
    local t = assert(transport.select{})
    assert.are.equal("kaifang.transport.curl", tostring(t))
    assert.is_nil(transport.phase())
  end)

  it("an explicit transport wins: an object, or a name", function()
    local mine = { request = function() end }
    assert.are.equal(mine, transport.select{ transport = mine })
    assert.are.equal("kaifang.transport.curl", tostring(transport.select{ transport = "curl" }))
    assert.matches("ngx_thread", tostring(transport.select{ transport = "ngx_thread", thread_pool = "io" }))
    with_ngx(fake_ngx("content"), function()
      assert.are.equal("kaifang.transport.curl", tostring(transport.select{ transport = "curl" }))
    end)
  end)

  it("refuses anything else with a message; the client raises it at the caller's line", function()
    local t, msg = transport.select{ transport = "carrier-pigeon" }
    assert.is_nil(t)
    assert.matches("curl.*ngx_thread.*resty_http", msg)
    assert.is_nil((transport.select{ transport = {} }))
    local line
    local ok, err = pcall(function()
      line = debug.getinfo(1, "l").currentline + 1
      lingdian.new{ developer_code = CODE, developer_key = KEY, transport = 42 }
    end)
    assert.is_false(ok)
    assert.matches("option 'transport' must be", err)
    assert.is_truthy(err:find("transport_select_spec.lua:" .. line .. ":", 1, true), err)
  end)

  it("inside nginx: the thread transport, whatever phase the client is made in", function()
    for _, phase in ipairs({ "init", "init_worker", "content", "timer" }) do
      with_ngx(fake_ngx(phase), function()
        local ld = lingdian.new{ developer_code = CODE, developer_key = KEY }
        assert.are.equal("kaifang.transport.ngx_thread{ thread_pool = kaifang }", tostring(ld.transport))
      end)
    end
  end)

  it("waits with ngx.sleep where nginx can yield, and sleeps elsewhere", function()
    local fake = fake_ngx("content")
    with_ngx(fake, function() transport.sleep(0.01) end)
    assert.are.same({ "sleep", 0.01 }, fake.calls[1])
    local t0 = require("kaifang.core").monotonic()
    transport.sleep(0.02)
    assert.is_true(require("kaifang.core").monotonic() - t0 >= 0.015)
  end)
end)

describe("kaifang.transport.curl inside nginx", function()
  it("raises a clear error instead of blocking a request phase", function()
    local t = require("kaifang.transport.curl").new{}
    for _, phase in ipairs({ "rewrite", "access", "content", "timer", "log", "init_worker" }) do
      with_ngx(fake_ngx(phase), function()
        local ok, err = pcall(t.request, t, { method = "GET", url = "http://127.0.0.1:9/" })
        assert.is_false(ok)
        assert.matches("would block this nginx worker %(phase '" .. phase .. "'%)", err)
      end)
    end
  end)

  it("kaifang.batch says what to do instead, which is not about a client's transport option", function()
    with_ngx(fake_ngx("content"), function()
      local ok, err = pcall(require("kaifang").batch, {})
      assert.is_false(ok)
      assert.matches("kaifang.batch would block this nginx worker (phase 'content'); a batch runs its own libcurl "
        .. "event loop", err, 1, true)
      assert.matches("run it outside nginx", err, 1, true)
      assert.is_nil(err:find("transport' option unset", 1, true))
    end)
  end)

  it("is allowed while the configuration loads (init) and in a worker thread's VM", function()
    local t = require("kaifang.transport.curl").new{ timeout = 2 }
    with_ngx(fake_ngx("init"), function()
      local res, err = t:request{ method = "GET", url = "http://127.0.0.1:" .. closed_port() .. "/" }
      assert.is_nil(res)
      assert.are.equal("transport", err.kind)
    end)
  end)
end)

describe("kaifang.transport.ngx_thread", function()
  local url
  setup(function() url = "http://127.0.0.1:" .. closed_port() .. "/" end)

  it("runs the call through ngx.run_worker_thread in the pool, and maps its error", function()
    local fake = fake_ngx("content")
    with_ngx(fake, function()
      local t = ngx_thread.new{ thread_pool = "io", timeout = 2 }
      local res, err = t:request{ method = "POST", url = url, body = "x=1" }
      assert.is_nil(res)
      assert.is_true(errors.is(err))
      assert.are.equal("transport", err.kind)
      assert.is_true(err.retryable)
      assert.are.same({ "io", "kaifang.transport.ngx_thread", "perform" }, fake.calls[1])
    end)
  end)

  it("raises a clear error in a phase that cannot yield", function()
    for _, phase in ipairs({ "set", "header_filter", "body_filter", "log", "init_worker", "balancer" }) do
      with_ngx(fake_ngx(phase), function()
        local t = ngx_thread.new{}
        local ok, err = pcall(t.request, t, { method = "GET", url = url })
        assert.is_false(ok)
        assert.matches("cannot wait in nginx's '" .. phase .. "' phase", err)
      end)
    end
  end)

  it("blocks harmlessly while the configuration loads, on a connection it closes", function()
    local fake = fake_ngx("init")
    with_ngx(fake, function()
      local res, err = ngx_thread.new{ timeout = 2 }:request{ method = "GET", url = url }
      assert.is_nil(res)
      assert.are.equal("transport", err.kind)
    end)
    assert.are.equal(0, #fake.calls) -- no thread pool at init
  end)

  it("names the missing thread pool and the directive that makes it", function()
    with_ngx(fake_ngx("content", "thread_pool not found"), function() -- lua-nginx-module's words
      local ok, err = pcall(ngx_thread.new{}.request, ngx_thread.new{}, { method = "GET", url = url })
      assert.is_false(ok)
      assert.matches("thread_pool kaifang threads=32;", err, 1, true)
    end)
  end)

  it("says why a thread VM cannot load kaifang, and what to do", function()
    local why = "module 'kaifang.transport.ngx_thread' not found:\n\tno field package.preload['kaifang.transport.ngx_thread']"
    with_ngx(fake_ngx("content", why), function()
      local ok, err = pcall(ngx_thread.new{}.request, ngx_thread.new{}, { method = "GET", url = url })
      assert.is_false(ok)
      assert.matches("thread VM cannot load kaifang: module 'kaifang.transport.ngx_thread' not found", err, 1, true)
      assert.matches('require("kaifang.ngx").init() in init_by_lua', err, 1, true)
      assert.is_nil(err:find("package.preload", 1, true), err) -- the first line of the search list only
    end)
  end)

  it("reports a busy pool as a transport error that is safe to repeat", function()
    with_ngx(fake_ngx("content", "no available Lua vm"), function()
      local res, err = ngx_thread.new{}:request{ method = "GET", url = url }
      assert.is_nil(res)
      assert.are.equal("transport", err.kind)
      assert.is_true(err.retryable)
      assert.is_false(err.maybe_sent)
    end)
  end)

  it("raises again what raised inside the thread (a misuse, as with libcurl directly)", function()
    with_ngx(fake_ngx("content"), function()
      local ok, err = pcall(ngx_thread.new{}.request, ngx_thread.new{},
        { method = "GET", url = url, headers = { ["Bad\nName"] = "x" } })
      assert.is_false(ok)
      assert.is_string(err)
    end)
  end)

  it("keeps one session per set of options in a VM", function()
    local before = ngx_thread.stats()
    local t = ngx_thread.new{ timeout = 1.5, user_agent = "stats-spec" }
    t:request{ method = "GET", url = url }
    t:request{ method = "GET", url = url }
    local after = ngx_thread.stats()
    assert.are.equal(before.requests + 2, after.requests)
    assert.are.equal(before.sessions + 1, after.sessions)
  end)
end)

describe("kaifang.transport.resty_http (with a stand-in for lua-resty-http)", function()
  local log
  local function stand_in(script)
    log = {}
    local http = {}
    function http.new()
      local c = {}
      function c:set_timeouts(...) log.timeouts = { ... } end
      function c:parse_uri(uri, query_in_path)
        log.query_in_path = query_in_path
        local scheme, host, port, path, query = uri:match("^(https?)://([^:/]+):?(%d*)([^?]*)%??(.*)$")
        return { scheme, host, tonumber(port) or (scheme == "https" and 443 or 80), path, query }
      end
      function c:connect(o) log.connect = o return script.connect() end
      function c:request(p)
        log.request = p
        return script.request(p)
      end
      function c:set_keepalive(t, n) log.keepalive = { t, n } return true end
      function c:close() log.closed = true return true end
      return c
    end
    package.loaded["resty.http"] = http
  end
  after_each(function() package.loaded["resty.http"] = nil end)

  -- body_reader as lua-resty-http's: chunks of at most n bytes, nil at the end, or nil, err
  local function response(status, headers, body, read_err, on_read)
    local at = 1
    return { status = status, headers = headers, body_reader = function(n)
      log.reads = (log.reads or 0) + 1
      if on_read then on_read() end
      if read_err then return nil, read_err end
      if at > #body then return nil end
      local chunk = body:sub(at, at + n - 1)
      at = at + n
      return chunk
    end }
  end

  it("is unavailable, with the reason, when lua-resty-http is not installed", function()
    local t, why = transport.select{ transport = "resty_http" }
    assert.is_nil(t)
    assert.matches("lua%-resty%-http is not installed", why)
    assert.has_error(function() lingdian.new{ developer_code = CODE, developer_key = KEY, transport = "resty_http" } end)
  end)

  it("reports the real require error when lua-resty-http is there but a module it needs is not", function()
    package.preload["resty.http"] = function() return require("resty.string.spec-missing") end
    local t, why = transport.select{ transport = "resty_http" }
    package.preload["resty.http"] = nil
    assert.is_nil(t)
    assert.matches("lua-resty-http failed to load: ", why, 1, true)
    assert.matches("module 'resty.string.spec-missing' not found", why, 1, true)
    assert.is_nil(why:find("not installed", 1, true))
  end)

  it("applies one deadline to the whole request: each step gets what is left, a slow body times out", function()
    local clock = 0
    local core = require "kaifang.core"
    local real = core.monotonic
    core.monotonic = function() return clock end
    stand_in{ connect = function() clock = clock + 0.5 return true end,
              request = function() clock = clock + 1 return response(200, {}, string.rep("x", 300000), nil,
                function() clock = clock + 0.6 end) end }
    local t = assert(transport.select{ transport = "resty_http", timeout = 3, connect_timeout = 1 })
    local res, err = t:request{ method = "POST", url = "http://127.0.0.1:9/x" }
    core.monotonic = real
    assert.is_nil(res)
    assert.are.equal("timeout", err.kind)
    assert.is_true(err.maybe_sent)
    assert.matches("the whole request took more than 3 s", err.message, 1, true)
    assert.are.same({ 300, 300, 300 }, log.timeouts) -- the last chunk had 0.3 s left of 3 (connect too, then)
    assert.are.equal(3, log.reads)
    assert.is_true(log.closed)
  end)

  it("stops reading a body as soon as it passes max_body", function()
    stand_in{ connect = function() return true end, request = function() return response(200, {}, string.rep("x", 10 * 65536)) end }
    local res, err = assert(transport.select{ transport = "resty_http", max_body = 100000 }):request{ method = "GET", url = "http://127.0.0.1:9/x" }
    assert.is_nil(res)
    assert.matches("reply larger than max_body (100000 bytes)", err.message, 1, true)
    assert.are.equal(2, log.reads) -- 64 KiB, then 128 KiB > 100000: the other eight chunks never read
    assert.is_true(log.closed)
  end)

  it("sends the request and returns status, lower-cased headers and body; keeps the connection", function()
    stand_in{
      connect = function() return true end,
      request = function() return response(200, { ["Content-Type"] = "application/json", ["X-Multi"] = { "a", "b" } }, '{"code":100}') end,
    }
    local t = assert(transport.select{ transport = "resty_http", timeout = 3, connect_timeout = 1, user_agent = "ua/1" })
    local res = assert(t:request{ method = "POST", url = "https://api.example:8443/api/x?y=1", body = "a=1",
                                  headers = { ["Content-Type"] = "application/x-www-form-urlencoded" } })
    assert.are.same({ status = 200, headers = { ["content-type"] = "application/json", ["x-multi"] = "a, b" }, body = '{"code":100}' }, res)
    assert.are.same({ 1000, 3000, 3000 }, log.timeouts)
    assert.are.same({ scheme = "https", host = "api.example", port = 8443, ssl_verify = true, ssl_server_name = "api.example" }, log.connect)
    assert.are.equal("/api/x?y=1", log.request.path)
    assert.are.equal("POST", log.request.method)
    assert.are.equal("a=1", log.request.body)
    assert.are.equal("ua/1", log.request.headers["User-Agent"])
    assert.are.same({ 60000, 32 }, log.keepalive)
  end)

  it("a failed connect: nothing was sent, safe to repeat", function()
    stand_in{ connect = function() return nil, "connection refused" end, request = function() error("not reached") end }
    local res, err = transport.select{ transport = "resty_http" }:request{ method = "POST", url = "http://127.0.0.1:9/x" }
    assert.is_nil(res)
    assert.are.equal("transport", err.kind)
    assert.is_false(err.maybe_sent)
    assert.is_true(err.retryable)
    assert.are.equal("connection refused", err.message)
  end)

  it("a timeout after sending: kind timeout, maybe sent, not retryable by itself", function()
    stand_in{ connect = function() return true end, request = function() return response(200, {}, "", "timeout") end }
    local res, err = transport.select{ transport = "resty_http" }:request{ method = "POST", url = "http://127.0.0.1:9/x" }
    assert.is_nil(res)
    assert.are.equal("timeout", err.kind)
    assert.is_true(err.maybe_sent)
    assert.is_false(err.retryable)
    assert.is_true(log.closed)
  end)

  it("works under the client: the lingdian reply is decoded as usual", function()
    stand_in{ connect = function() return true end,
              request = function() return response(200, {}, '{"code":100,"message":"ok","data":13311112222}') end }
    local ld = lingdian.new{ developer_code = CODE, developer_key = KEY, transport = "resty_http", ssl_verify = false }
    local res = assert(ld:get_user_tel_by_code{ user_code = "U2TD844B2" })
    assert.are.equal("13311112222", res.data)
    assert.is_false(log.connect.ssl_verify)
  end)
end)
