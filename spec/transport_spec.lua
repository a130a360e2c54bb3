-- The transport contract against real sockets on loopback:
--   request{ method, url, headers, body, timeout } -> { status, headers, body } | nil, err
-- A server that never answers runs in-process (libmicrohttpd has its own thread); a server that
-- answers runs in a child process, since the client call blocks.
local core = require "kaifang.core"
local cjson = require "cjson"
local httpd = require "kaifang.sandbox.httpd"
local curl = require "kaifang.transport.curl"
local errors = require "kaifang.errors"
local lingdian = require "kaifang.lingdian"

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- A port that nothing listens on: bound by the OS, then released.
local function closed_port()
  local srv = assert(httpd.listen{ host = "127.0.0.1", port = 0 })
  local port = srv:port()
  srv:close()
  return port
end

-- An echo server in a child process: answers each request with a JSON description of it.
-- /status/<n> answers with status n; /quit answers and stops.
local ECHO = [[
local httpd = require "kaifang.sandbox.httpd"
local cjson = require "cjson"
local srv = assert(httpd.listen{ host = "127.0.0.1", port = 0 })
io.stdout:write(srv:port(), " ", httpd.getpid(), "\n")
io.stdout:flush()
local deadline = require("kaifang.core").monotonic() + 60
while require("kaifang.core").monotonic() < deadline do
  local req = srv:next(0.2)
  if req then
    local status = tonumber(req.path:match("^/status/(%d+)$")) or 200
    srv:respond(req.id, status, { ["Content-Type"] = "application/json; charset=utf-8", ["X-Echo-Case"] = "MiXeD" },
      cjson.encode{ method = req.method, path = req.path, query = req.query, headers = req.headers,
                    body = req.body, remote = req.remote })
    if req.path == "/quit" then break end
  end
end
srv:flush(2)
srv:close()
]]

local function start_echo()
  local script = os.tmpname()
  local f = assert(io.open(script, "wb"))
  f:write(ECHO)
  f:close()
  local env = "LUA_PATH=" .. q(package.path) .. " LUA_CPATH=" .. q(package.cpath)
  local proc = assert(io.popen(env .. " lua5.4 " .. q(script), "r"))
  local line = proc:read("l")
  os.remove(script)
  local port, pid = (line or ""):match("^(%d+) (%d+)$")
  assert(port, "the echo server did not start: " .. tostring(line))
  local echo = { url = "http://127.0.0.1:" .. port, pid = tonumber(pid) }
  function echo.stop()
    local s = core.http{ timeout = 2 }
    local res = s:request{ method = "GET", url = echo.url .. "/quit" }
    s:close()
    if not res then os.execute("kill " .. echo.pid .. " 2>/dev/null") end
    proc:close()
  end
  return echo
end

describe("core.http transport", function()
  describe("against a closed port", function()
    for _, port in ipairs({ 1, "free" }) do
      it("gives nil, a transport error that is safe to repeat (port " .. port .. ")", function()
        local p = port == "free" and closed_port() or port
        local s = core.http{ connect_timeout = 2, timeout = 3 }
        local res, err = s:request{ method = "POST", url = "http://127.0.0.1:" .. p .. "/x", body = "a=1" }
        s:close()
        assert.is_nil(res)
        assert.is_table(err)
        assert.are.equal("transport", err.kind)
        assert.is_true(err.retryable)
        assert.is_false(err.maybe_sent)
        assert.is_number(err.code)
        assert.is_string(err.message)
      end)
    end

    it("comes back from kaifang.transport.curl as an error object with __tostring", function()
      local t = curl.new{ timeout = 3 }
      local res, err = t:request{ method = "GET", url = "http://127.0.0.1:1/" }
      t:close()
      assert.is_nil(res)
      assert.is_true(errors.is(err))
      assert.are.equal("transport", err.kind)
      assert.is_true(err.retryable)
      assert.is_false(err.maybe_sent)
      local text = tostring(err)
      assert.matches("^kaifang%.", text)
      assert.matches("transport", text)
      assert.is_nil(text:find("may have reached", 1, true))
    end)
  end)

  describe("against a server that accepts and never answers", function()
    local srv
    before_each(function()
      srv = assert(httpd.listen{ host = "127.0.0.1", port = 0 })
    end)
    after_each(function()
      srv:close()
    end)

    it("times out within about the configured timeout (per-request timeout)", function()
      local s = core.http{ timeout = 10 }
      local t0 = core.monotonic()
      local res, err = s:request{ method = "POST", url = "http://127.0.0.1:" .. srv:port() .. "/slow", body = "x=1",
                                  timeout = 0.5 }
      local elapsed = core.monotonic() - t0
      s:close()
      assert.is_nil(res)
      assert.are.equal("timeout", err.kind)
      assert.is_true(err.maybe_sent)
      assert.is_false(err.retryable)
      assert.is_true(elapsed >= 0.45, "returned after " .. elapsed .. " s")
      assert.is_true(elapsed < 3, "returned after " .. elapsed .. " s")
      -- the request did reach the server
      local req = srv:next(1)
      assert.is_table(req)
      assert.are.equal("/slow", req.path)
      assert.are.equal("x=1", req.body)
    end)

    it("times out with the session's timeout when the request gives none", function()
      local s = core.http{ timeout = 0.5 }
      local t0 = core.monotonic()
      local res, err = s:request{ method = "GET", url = "http://127.0.0.1:" .. srv:port() .. "/slow" }
      local elapsed = core.monotonic() - t0
      s:close()
      assert.is_nil(res)
      assert.are.equal("timeout", err.kind)
      assert.is_true(err.maybe_sent)
      assert.is_true(elapsed >= 0.45 and elapsed < 3, "returned after " .. elapsed .. " s")
    end)

    it("reports the timeout through the lingdian client: a read may be repeated, an action may not", function()
      local c = lingdian.new{ developer_code = "U2QHNB2w=", developer_key = "744ed968e7e1a4aebafa6f4888fced68",
                              base_url = "http://127.0.0.1:" .. srv:port(), timeout = 0.5 }
      local res, err = c:get_user_tel_by_code{ user_code = "U2TD844B2" }
      assert.is_nil(res)
      assert.are.equal("lingdian", err.platform)
      assert.are.equal("timeout", err.kind)
      assert.is_true(err.maybe_sent)
      assert.is_true(err.retryable)
      res, err = c:send_wechat_message{ tel = "13311112222", content = "hi", link = "https://x.cn" }
      assert.is_nil(res)
      assert.are.equal("timeout", err.kind)
      assert.is_true(err.maybe_sent)
      assert.is_false(err.retryable)
      assert.matches("may have reached", tostring(err))
      c:close()
    end)
  end)

  describe("a round trip", function()
    local echo
    setup(function() echo = start_echo() end)
    teardown(function() if echo then echo.stop() end end)

    it("returns status, lower-cased headers and the body", function()
      local s = core.http{ timeout = 5 }
      local res, err = s:request{
        method = "POST", url = echo.url .. "/api/Developer/getUserTelByCode?a=1&b=%E4%B8%AD",
        headers = { ["Content-Type"] = "application/x-www-form-urlencoded", ["X-Kaifang-Test"] = "值 1" },
        body = "user_code=U2TD844B2&type=16",
      }
      s:close()
      assert.is_nil(err)
      assert.are.equal(200, res.status)
      assert.are.equal("application/json; charset=utf-8", res.headers["content-type"])
      assert.are.equal("MiXeD", res.headers["x-echo-case"])
      assert.is_nil(res.headers["Content-Type"])
      local seen = cjson.decode(res.body)
      assert.are.equal("POST", seen.method)
      assert.are.equal("/api/Developer/getUserTelByCode", seen.path)
      assert.are.equal("a=1&b=%E4%B8%AD", seen.query)
      assert.are.equal("user_code=U2TD844B2&type=16", seen.body)
      assert.are.equal("application/x-www-form-urlencoded", seen.headers["content-type"])
      assert.are.equal("值 1", seen.headers["x-kaifang-test"])
      assert.is_nil(seen.headers["expect"])
      assert.are.equal(tostring(#seen.body), seen.headers["content-length"])
    end)

    it("sends GET without a body and returns non-2xx statuses as replies, not errors", function()
      local s = core.http{ timeout = 5 }
      local res = assert(s:request{ method = "GET", url = echo.url .. "/status/404" })
      assert.are.equal(404, res.status)
      assert.are.equal("GET", cjson.decode(res.body).method)
      res = assert(s:request{ method = "POST", url = echo.url .. "/status/503", body = "" })
      assert.are.equal(503, res.status)
      s:close()
    end)

    it("keeps the connection alive across requests on one session", function()
      local s = core.http{ timeout = 5 }
      local a = assert(s:request{ method = "GET", url = echo.url .. "/one" })
      local b = assert(s:request{ method = "POST", url = echo.url .. "/two", body = "x" })
      local c = assert(s:request{ method = "GET", url = echo.url .. "/three" })
      s:close()
      assert.are.equal("/one", cjson.decode(a.body).path)
      assert.are.equal("/two", cjson.decode(b.body).path)
      assert.are.equal("x", cjson.decode(b.body).body)
      -- the same client port each time: one connection
      local ra, rb, rc = cjson.decode(a.body).remote, cjson.decode(b.body).remote, cjson.decode(c.body).remote
      assert.is_string(ra)
      assert.are.equal(ra, rb)
      assert.are.equal(ra, rc)
    end)

    it("sends each request to its own URL when a handle's URL repeats and changes (A, A, B, A)", function()
      local s = core.http{ timeout = 5 }
      local paths = {}
      for i, path in ipairs{ "/a", "/a", "/b?x=1", "/a" } do
        local res = assert(s:request{ method = "POST", url = echo.url .. path, body = "n=" .. i })
        local seen = cjson.decode(res.body)
        paths[i] = seen.path .. (seen.query ~= "" and seen.query and ("?" .. seen.query) or "") .. " " .. seen.body
      end
      s:close()
      assert.are.same({ "/a n=1", "/a n=2", "/b?x=1 n=3", "/a n=4" }, paths)
    end)

    it("core.multi leaves the response headers out with headers = false, and keeps them by default", function()
      for _, headers in ipairs{ false, true } do
        local m = core.multi{ concurrency = 1, timeout = 5, headers = headers }
        local got = {}
        for i, path in ipairs{ "/m1", "/m1", "/m2", "/m1" } do
          assert.are.equal(1, m:submit{ method = "POST", url = echo.url .. path, body = "i=" .. i })
          while m:wait(1) == 0 do end
          local slot, res, err = m:collect()
          assert.are.equal(1, slot, tostring(err))
          got[i] = cjson.decode(res.body).path
          if headers then
            assert.are.equal("application/json; charset=utf-8", res.headers["content-type"])
          else
            assert.are.same({}, res.headers)
          end
        end
        m:close()
        assert.are.same({ "/m1", "/m1", "/m2", "/m1" }, got)
      end
    end)

    it("does not carry one request's headers into the next", function()
      local s = core.http{ timeout = 5 }
      assert(s:request{ method = "GET", url = echo.url .. "/h1", headers = { ["X-Only-Once"] = "1" } })
      local res = assert(s:request{ method = "GET", url = echo.url .. "/h2" })
      s:close()
      assert.is_nil(cjson.decode(res.body).headers["x-only-once"])
    end)

    it("works through kaifang.transport.curl", function()
      local t = curl.new{ timeout = 5 }
      local res, err = t:request{ method = "POST", url = echo.url .. "/t", body = "k=v",
                                  headers = { ["Content-Type"] = "text/plain" } }
      t:close()
      assert.is_nil(err)
      assert.are.equal(200, res.status)
      assert.are.equal("k=v", cjson.decode(res.body).body)
      assert.are.equal("text/plain", cjson.decode(res.body).headers["content-type"])
    end)

    it("raises on a request header with a newline or a colon in its name", function()
      local s = core.http{ timeout = 5 }
      assert.has_error(function()
        s:request{ method = "GET", url = echo.url .. "/", headers = { ["X-A"] = "a\r\nX-Injected: 1" } }
      end)
      assert.has_error(function()
        s:request{ method = "GET", url = echo.url .. "/", headers = { ["X-A\nB"] = "a" } }
      end)
      assert.has_error(function()
        s:request{ method = "GET", url = echo.url .. "/", headers = { ["X-A: B"] = "a" } }
      end)
      -- the session still works, and nothing from the refused header is sent
      local res = assert(s:request{ method = "GET", url = echo.url .. "/after" })
      s:close()
      local seen = cjson.decode(res.body)
      assert.are.equal("/after", seen.path)
      assert.is_nil(seen.headers["x-a"])
      assert.is_nil(seen.headers["x-injected"])
    end)

    it("the sandbox admin path answers, when the sandbox module exists", function()
      local ok, sandbox = pcall(require, "kaifang.sandbox")
      assert.is_true(ok, "kaifang.sandbox cannot be loaded: " .. tostring(sandbox))
      local sb = sandbox.start{ port = 0 }
      local s = core.http{ timeout = 5 }
      local res, err = s:request{ method = "GET", url = sb.url .. "/_sandbox/lingdian/messages" }
      s:close()
      sb:stop()
      assert.is_nil(err)
      assert.are.equal(200, res.status)
      assert.matches("json", res.headers["content-type"])
      assert.is_table(cjson.decode(res.body))
    end)
  end)

  describe("option checks", function()
    it("raises on a negative or non-numeric timeout", function()
      assert.has_error(function() core.http{ timeout = -1 } end)
      assert.has_error(function() core.http{ connect_timeout = -0.5 } end)
      assert.has_error(function() core.http{ timeout = 0 } end)
      assert.has_error(function() core.http{ timeout = "soon" } end)
      local s = core.http{ timeout = 5 }
      assert.has_error(function() s:request{ method = "GET", url = "http://127.0.0.1:1/", timeout = -1 } end)
      assert.has_error(function() s:request{ method = "GET" } end)
      s:close()
    end)

    it("raises on a closed session", function()
      local s = core.http{}
      s:close()
      assert.has_error(function() s:request{ method = "GET", url = "http://127.0.0.1:1/" } end)
    end)
  end)

  describe("through the lingdian client", function()
    it("a closed port gives nil, err for the read-only get_user_tel_by_code", function()
      local c = lingdian.new{ developer_code = "U2QHNB2w=", developer_key = "744ed968e7e1a4aebafa6f4888fced68",
                              base_url = "http://127.0.0.1:1" }
      local res, err = c:get_user_tel_by_code{ user_code = "U2TD844B2" }
      c:close()
      assert.is_nil(res)
      assert.is_true(errors.is(err))
      assert.are.equal("lingdian", err.platform)
      assert.are.equal("transport", err.kind)
      assert.is_true(err.retryable)
      assert.is_false(err.maybe_sent)
      assert.matches("^kaifang%.lingdian: transport", tostring(err))
    end)

    it("a closed port is safe to repeat even for an action (nothing was sent)", function()
      local c = lingdian.new{ developer_code = "U2QHNB2w=", developer_key = "744ed968e7e1a4aebafa6f4888fced68",
                              base_url = "http://127.0.0.1:" .. closed_port() }
      local res, err = c:send_wechat_message{ tel = "13311112222", content = "hi", link = "https://x.cn" }
      c:close()
      assert.is_nil(res)
      assert.are.equal("transport", err.kind)
      assert.is_true(err.retryable)
      assert.is_false(err.maybe_sent)
    end)
  end)
end)
