-- The sandbox itself, spoken to over real HTTP with requests built by hand: bodies are
-- form-encoded and signed right here, never through the client pipeline.
local core = require "kaifang.core"
local cjson = require "cjson"
local httpd = require "kaifang.sandbox.httpd"
local sandbox = require "kaifang.sandbox"

local CODE, KEY = "U2QHNB2w=", "744ed968e7e1a4aebafa6f4888fced68"
local vectors = (function()
  local f = assert(io.open("spec/vectors/seed-vectors.json", "rb"))
  local v = cjson.decode(f:read("*a"))
  f:close()
  return v
end)()

local pct, form = require("spec.helpers.form").pct, require("spec.helpers.form").form


-- Lingdian's scheme written out plainly: drop sign and empty values, sort, k=v&..., key appended.
local function sign(params)
  local keys = {}
  for k, v in pairs(params) do
    if k ~= "sign" and k ~= "sign_type" and k ~= "key" and k ~= "developer_key" and v ~= "" then keys[#keys + 1] = k end
  end
  table.sort(keys)
  local s = ""
  for i, k in ipairs(keys) do s = s .. (i > 1 and "&" or "") .. k .. "=" .. params[k] end
  return core.digest("md5", s .. KEY)
end

local function signed(params)
  params.sign = sign(params)
  return params
end

local function now() return tostring(os.time()) end

local B = "/api/Developer/getUserTelByCode"

---------------------------------------------------------------------------- httpd, in process

-- Runs HTTP requests from a child process (this one is busy serving); read() -> results.
local function spawn_client(url, requests)
  local chunk = string.format(
    [[package.path=%q package.cpath=%q
local core, cjson = require "kaifang.core", require "cjson"
local s = core.http{ timeout = 5 }
for _, r in ipairs(cjson.decode(%q)) do
  local res, err = s:request{ method = r.method, url = %q .. r.path, body = r.body, headers = r.headers or {} }
  print(cjson.encode(res and { status = res.status, body = res.body, headers = res.headers } or { err = err.code, kind = err.kind }))
  io.stdout:flush()
end]],
    package.path,
    package.cpath,
    cjson.encode(requests),
    url
  )
  local fh = assert(io.popen("lua5.4 -e '" .. chunk:gsub("'", "'\\''") .. "'", "r"))
  return {
    read = function()
      local out = {}
      for line in fh:lines() do out[#out + 1] = cjson.decode(line) end
      fh:close()
      return out
    end,
  }
end

describe("kaifang.sandbox.httpd", function()
  local srv, url

  before_each(function()
    srv = assert(httpd.listen({ host = "127.0.0.1", port = 0, max_body = 64 }))
    url = "http://127.0.0.1:" .. srv:port()
  end)

  after_each(function() srv:close() end)

  it("waits with a timeout and returns nil when nothing came", function()
    local t0 = require("kaifang.core").monotonic()
    assert.is_nil(srv:next(0.05))
    assert.is_true(require("kaifang.core").monotonic() - t0 >= 0.04)
  end)

  it("hands over the raw request and answers out of order", function()
    local a = spawn_client(url, { { method = "POST", path = "/a%20b?x=1&y=%2B+z", body = "k=v", headers = { ["X-Thing"] = "1" } } })
    local ra = assert(srv:next(5))
    local b = spawn_client(url, { { method = "GET", path = "/second" } })
    local rb = assert(srv:next(5))
    assert.equal("POST", ra.method)
    assert.equal("/a%20b", ra.path)
    assert.equal("x=1&y=%2B+z", ra.query)
    assert.equal("k=v", ra.body)
    assert.equal("1", ra.headers["x-thing"])
    assert.matches("^127%.0%.0%.1:%d+$", ra.remote)
    assert.equal("/second", rb.path)
    assert.is_true(srv:respond(rb.id, 201, { ["X-Order"] = "first" }, "second"))
    local got_b = b.read()
    assert.equal(201, got_b[1].status)
    assert.equal("first", got_b[1].headers["x-order"])
    assert.is_true(srv:respond(ra.id, 200, { ["Content-Type"] = "text/plain" }, "first"))
    assert.equal("first", a.read()[1].body)
  end)

  it("keeps connections alive between requests", function()
    local c = spawn_client(url, { { method = "GET", path = "/1" }, { method = "GET", path = "/2" } })
    local r1 = assert(srv:next(5))
    srv:respond(r1.id, 200, {}, "one")
    local r2 = assert(srv:next(5))
    srv:respond(r2.id, 200, {}, "two")
    assert.equal(r1.remote, r2.remote)
    local out = c.read()
    assert.same({ "one", "two" }, { out[1].body, out[2].body })
  end)

  it("drops connections without an answer, closed or reset", function()
    local c = spawn_client(url, { { method = "GET", path = "/x" }, { method = "GET", path = "/y" } })
    assert.is_true(srv:drop(assert(srv:next(5)).id))
    assert.is_true(srv:drop(assert(srv:next(5)).id, "reset"))
    local out = c.read()
    assert.equal("transport", out[1].kind)
    assert.equal(52, out[1].err) -- curl: empty reply
    assert.equal("transport", out[2].kind)
    assert.equal(56, out[2].err) -- curl: connection reset
  end)

  it("refuses bodies over max_body with 413", function()
    local c = spawn_client(url, { { method = "POST", path = "/big", body = string.rep("x", 100) } })
    assert.is_nil(srv:next(0.3))
    assert.equal(413, c.read()[1].status)
  end)

  it("reports unknown or already answered ids", function()
    local c = spawn_client(url, { { method = "GET", path = "/" } })
    local r = assert(srv:next(5))
    assert.is_true(srv:respond(r.id, 204, nil, ""))
    local ok, err = srv:respond(r.id, 200, nil, "again")
    assert.is_nil(ok)
    assert.matches("no pending request", err)
    assert.is_nil((srv:drop(12345)))
    assert.equal(204, c.read()[1].status)
  end)

  it("closes with requests still waiting, and refuses use afterwards", function()
    local c = spawn_client(url, { { method = "GET", path = "/never" } })
    assert(srv:next(5))
    srv:close()
    assert.equal("transport", c.read()[1].kind)
    assert.has_error(function() srv:port() end)
    srv:close() -- idempotent
  end)
end)

---------------------------------------------------------------------------- the sandbox

describe("kaifang.sandbox", function()
  local sb

  -- only Lingdian here, so other platforms' settings and counters stay out of these tables
  setup(function() sb = sandbox.start({ port = 0, platforms = { "lingdian" } }) end)
  teardown(function() sb:stop() end)
  before_each(function() assert(sb:reset()) end)

  local function post(path, params, content_type)
    local status, body = sb:request("POST", path, type(params) == "table" and form(params) or params, {
      ["Content-Type"] = content_type or "application/x-www-form-urlencoded",
    })
    assert(status, body)
    if status ~= 200 then return { status = status, body = body } end
    local reply = cjson.decode(body)
    reply.raw = body
    return reply
  end

  local function expect(reply, code, message)
    assert.equal(message, reply.message)
    assert.equal(code, reply.code)
  end

  describe("framework", function()
    it("starts, tells its URL, platforms and demo accounts, and stops", function()
      assert.matches("^http://127%.0%.0%.1:%d+$", sb.url)
      assert.same({ lingdian = { developer_code = CODE, developer_key = KEY, developer_tel = "12345678910" } }, sb.credentials)
      assert.equal(('kaifang.sandbox{ url = "%s", platforms = { "lingdian" } }'):format(sb.url), tostring(sb))
      local other = sandbox.start({ port = 0 }) -- every platform in sandbox.platforms
      assert.not_equal(sb.url, other.url)
      assert.equal(#sandbox.platforms, #other:admin("GET", "/_sandbox/info").platforms)
      assert.same(sb.credentials.lingdian, other.credentials.lingdian)
      assert.equal("zafu-demo", other.credentials.zafu.client_id)
      assert.equal("930859529955", other.credentials.yopoint.appid)
      assert.equal("iotacc108b7305fhzljeux0", other.credentials.dakashi.client_id)
      assert.same(other.credentials, other:admin("GET", "/_sandbox/info").credentials)
      assert.matches('platforms = { "lingdian", "zafu", "yopoint", "dakashi" }', tostring(other), 1, true)
      assert.is_nil(tostring(other):find(KEY, 1, true))
      other:stop()
      assert.is_nil((core.http({ connect_timeout = 1, timeout = 1 }):request({ method = "GET", url = other.url .. "/" })))
    end)

    it("answers 404 for unknown paths and 405 for other methods", function()
      assert.equal(404, (sb:request("POST", "/api/Developer/nothing", "")))
      local status, _, headers = sb:request("GET", "/api/Developer/getUserTelByCode")
      assert.equal(405, status)
      assert.equal("POST", headers.allow)
    end)

    it("also serves a platform under /<name>/", function()
      expect(post("/lingdian/api/Developer/getUserTelByCode", { type = "16" }), 104, "缺少请求参数")
    end)

    it("rejects malformed form bodies", function()
      assert.equal(400, post("/api/Developer/getUserTelByCode", "developer_code=%zz&type=16").status)
      assert.equal(400, post("/api/Developer/getUserTelByCode", "a=%4").status)
    end)

    it("reads only form bodies, as the platform does", function()
      local p = signed({ developer_code = CODE, user_code = "U2TD844B2", type = "16", timestamp = now() })
      expect(post("/api/Developer/getUserTelByCode", cjson.encode(p), "application/json"), 104, "缺少请求参数")
    end)

    it("shows and changes settings at run time, refusing unknown ones", function()
      assert.same({ lingdian = { window = 300, strict = true } }, sb:admin("GET", "/_sandbox/config"))
      assert.same({ lingdian = { window = 300, rate = 5, strict = true } }, sb:configure({ lingdian = { rate = 5 } }))
      assert.same({ lingdian = { window = 300, strict = true } }, sb:configure({ lingdian = { rate = cjson.null } }))
      local ok, err = sb:configure({ lingdian = { ratee = 1 } })
      assert.is_nil(ok)
      assert.matches("unknown lingdian setting", err)
      ok, err = sb:configure({ lingdian = { strict = "no" } })
      assert.is_nil(ok)
      assert.matches("lingdian.strict must be true or false", err)
      assert.is_nil((sb:configure({ nowhere = {} })))
    end)

    it("counts requests per platform", function()
      post("/api/Developer/getUserTelByCode", {})
      post("/keloop/api/outerEntryOrder", {})
      assert.same({ platform = "lingdian", count = 2 }, sb:admin("GET", "/_sandbox/requests?platform=lingdian"))
      assert.same({ lingdian = 2, total = 2 }, sb:admin("GET", "/_sandbox/requests"))
      local zero = { requests = 2, duplicates = 0, refused = 0 }
      assert.same({ lingdian = zero, total = zero }, sb:counters())
    end)

    it("takes faults from a test through sb:faults and reports them", function()
      assert.same({ settings = {}, injected = {} }, sb:faults())
      assert(sb:faults{ lingdian = { http_5xx = 1 } })
      assert.equal(503, (sb:request("POST", B, form(signed({ developer_code = CODE, user_code = "U2TD844B2", type = "16", timestamp = now() })),
        { ["Content-Type"] = "application/x-www-form-urlencoded" })))
      assert.equal(1, sb:faults().injected.lingdian.http_5xx)
      local ok, err = sb:faults{ lingdian = { http_5xxx = 1 } }
      assert.is_nil(ok)
      assert.matches("unknown fault", err)
      assert(sb:faults{ lingdian = {} })
    end)

    it("resets to the seeded world: records, counters and settings", function()
      sb:configure({ lingdian = { rate = 1 } })
      local p = signed({ developer_code = CODE, tel = "13311112222", content = "hi", link = "https://szai.0xiao.com/x", type = "1", timestamp = now() })
      expect(post("/api/Developer/sendWeChatMessage", p), 100, "请求成功且发送微信客服消息成功")
      assert.equal(1, #sb:records("lingdian", "messages"))
      sb:reset()
      assert.same({}, sb:records("lingdian", "messages"))
      assert.same({ lingdian = { window = 300, strict = true } }, sb:admin("GET", "/_sandbox/config"))
      assert.same({ platform = "lingdian", count = 0 }, sb:admin("GET", "/_sandbox/requests?platform=lingdian"))
    end)

    it("holds answers back on a timer without stalling other requests", function()
      sb:configure({ lingdian = { latency = 0.4 } })
      local t0 = require("kaifang.core").monotonic()
      expect(post(B, signed({ developer_code = CODE, user_code = "U2TD844B2", type = "16", timestamp = now() })), 100, "请求成功且返回了手机号")
      assert.is_true(require("kaifang.core").monotonic() - t0 >= 0.35)
      -- admin paths are not delayed
      t0 = require("kaifang.core").monotonic()
      assert(sb:admin("GET", "/_sandbox/config"))
      assert.is_true(require("kaifang.core").monotonic() - t0 < 0.3)
    end)

    it("answers unknown admin paths with 404", function()
      assert.equal(404, (sb:request("GET", "/_sandbox/lingdian/nothing")))
      assert.equal(405, (sb:request("GET", "/_sandbox/shutdown")))
    end)
  end)

  describe("lingdian", function()
    local A, B, C, D = "/api/Developer/sendWeChatMessage", "/api/Developer/getUserTelByCode", "/keloop/api/outerEntryOrder", "/api/Developer/userCardRemind"

    local function msg(over)
      local p = { developer_code = CODE, tel = "13311112222", content = "您的快递到了", link = "https://szai.0xiao.com/info/info_detail?info_id=165", type = "1", timestamp = now() }
      for k, v in pairs(over or {}) do p[k] = v end
      return p
    end

    it("accepts the document's signatures (corrected vectors) when the clock is set aside", function()
      -- the examples' timestamps (15640471261, 167250116972) lie centuries ahead: strict refuses those
      sb:configure({ lingdian = { window = 1e13, strict = false } })
      local paths = { ["lingdian-A-sendWeChatMessage"] = A, ["lingdian-B-getUserTelByCode"] = B, ["lingdian-C-outerEntryOrder"] = C, ["lingdian-D-userCardRemind"] = D }
      local got = {}
      for _, v in ipairs(vectors.vectors) do
        if v.scheme == "lingdian" then
          -- the vector's own string-to-sign and sign, not one computed here
          assert.equal(v.sign, core.digest("md5", v.string_to_sign))
          local p = {}
          for k, val in pairs(v.params) do p[k] = val end
          p.sign = v.sign
          got[v.name] = post(paths[v.name], p)
        end
      end
      expect(got["lingdian-A-sendWeChatMessage"], 100, "请求成功且发送微信客服消息成功")
      expect(got["lingdian-B-getUserTelByCode"], 100, "请求成功且返回了手机号")
      expect(got["lingdian-C-outerEntryOrder"], 100, "发入成功")
      -- the D example uses developer_code U2QHNB2w~, which is not a developer here
      expect(got["lingdian-D-userCardRemind"], 104, "请求参数错误：您不是开发者或没有对应权限")
      assert.matches('"data":""', got["lingdian-D-userCardRemind"].raw)
    end)

    describe("checks in the platform's order", function()
      it("missing parameters first", function()
        local p = msg()
        p.link = nil
        p.sign = "whatever"
        local r = post(A, p)
        expect(r, 104, "缺少请求参数")
        assert.equal('{"code":104,"message":"缺少请求参数","data":[]}', r.raw)
        expect(post(A, signed(msg({ content = "" }))), 104, "缺少请求参数")
      end)

      it("then who is calling: developer, type, signature", function()
        expect(post(A, signed(msg({ developer_code = "U2QHNB2w~" }))), 104, "请求参数错误：您不是开发者或没有对应权限")
        expect(post(A, signed(msg({ type = "16" }))), 104, "请求参数错误：您不是开发者或没有对应权限")
        local p = signed(msg())
        p.sign = p.sign:upper()
        expect(post(A, p), 104, "请求参数错误：您不是开发者或没有对应权限")
      end)

      it("catches a body that differs from what was signed", function()
        local p = signed(msg({ content = "signed text" }))
        p.content = "sent text"
        expect(post(A, p), 104, "请求参数错误：您不是开发者或没有对应权限")
        -- a stale timestamp with a wrong sign still reads as a signature problem
        p = signed(msg({ timestamp = "15640471261" }))
        p.tel = "13311113333"
        expect(post(A, p), 104, "请求参数错误：您不是开发者或没有对应权限")
      end)

      it("signs over what was received, leaving out sign_type and empty values", function()
        local p = signed(msg({ extra = "" }))
        p.sign_type = "MD5"
        expect(post(A, p), 100, "请求成功且发送微信客服消息成功")
      end)

      it("then the timestamp window: 300 s back, 5 s ahead", function()
        expect(post(A, signed(msg({ timestamp = "15640471261" }))), 104, "请求超时")
        expect(post(A, signed(msg({ timestamp = tostring(os.time() - 400) }))), 104, "请求超时")
        expect(post(A, signed(msg({ timestamp = tostring(os.time() * 1000) }))), 104, "请求超时")
        expect(post(A, signed(msg({ timestamp = tostring(os.time() + 60) }))), 104, "请求超时")
        expect(post(A, signed(msg({ timestamp = tostring(os.time() + 299) }))), 104, "请求超时")
        expect(post(A, signed(msg({ timestamp = tostring(os.time() - 200) }))), 100, "请求成功且发送微信客服消息成功")
        expect(post(A, signed(msg({ content = "2", timestamp = tostring(os.time() + 3) }))), 100, "请求成功且发送微信客服消息成功")
        sb:configure({ lingdian = { window = 100 } })
        expect(post(A, signed(msg({ content = "3", timestamp = tostring(os.time() - 200) }))), 104, "请求超时")
        sb:configure({ lingdian = { window = 300, strict = false } }) -- not strict: the window both ways
        expect(post(A, signed(msg({ content = "4", timestamp = tostring(os.time() + 299) }))), 100, "请求成功且发送微信客服消息成功")
      end)

      it("then the rate, per developer, over a sliding second", function()
        sb:configure({ lingdian = { rate = 3 } })
        for _ = 1, 3 do
          expect(post(B, signed({ developer_code = CODE, user_code = "U2TD844B2", type = "16", timestamp = now() })), 100, "请求成功且返回了手机号")
        end
        -- requests refused earlier in the order do not use up the allowance
        expect(post(B, signed({ developer_code = CODE, user_code = "U2TD844B2", type = "16", timestamp = "1" })), 104, "请求超时")
        local r = post(A, signed(msg()))
        expect(r, 104, "请求过于频繁，请稍后再试吧！")
        assert.equal(0, #sb:records("lingdian", "messages"))
        require("kaifang.core").sleep(1.1)
        expect(post(A, signed(msg())), 100, "请求成功且发送微信客服消息成功")
      end)
    end)

    describe("A sendWeChatMessage", function()
      it("checks the phone number and the link", function()
        expect(post(A, signed(msg({ tel = "1331111222" }))), 104, "请求参数错误：手机号为空或格式不正确")
        expect(post(A, signed(msg({ tel = "23311112222" }))), 104, "请求参数错误：手机号为空或格式不正确")
        expect(post(A, signed(msg({ link = "https://evil.example/" }))), 104, "请求参数错误：访问链接未被加入白名单")
        expect(post(A, signed(msg({ link = "http://szai.0xiao.com/x" }))), 104, "请求参数错误：访问链接未被加入白名单")
      end)

      it("knows who exists and who follows", function()
        expect(post(A, signed(msg({ tel = "13399999999" }))), 105, "用户不存在")
        expect(post(A, signed(msg({ tel = "13311114444" }))), 106, "该用户未关注公众号，请提示其关注公众号")
      end)

      it("records each message sent, the same one sent again (another timestamp) included", function()
        local t = os.time()
        local r = post(A, signed(msg({ timestamp = tostring(t - 1) })))
        assert.equal('{"code":100,"message":"请求成功且发送微信客服消息成功","data":[]}', r.raw)
        expect(post(A, signed(msg({ tel = "13311113333" }))), 100, "请求成功且发送微信客服消息成功")
        expect(post(A, signed(msg({ timestamp = tostring(t) }))), 100, "请求成功且发送微信客服消息成功")
        local list = sb:records("lingdian", "messages")
        assert.equal(3, #list)
        assert.same({ 1, 2, 3 }, { list[1].id, list[2].id, list[3].id })
        assert.equal("13311113333", list[2].params.tel)
        assert.equal("您的快递到了", list[1].params.content)
        assert.is_true(math.abs(list[1].time - os.time()) < 5)
        -- the duplicate detector saw the double send
        local dups = sb:records("lingdian", "duplicates")
        assert.equal(1, #dups)
        assert.equal(A, dups[1].path)
        assert.equal(2, dups[1].count)
        assert.equal(0, dups[1].refused)
        assert.matches("tel=13311112222", dups[1].content, 1, true)
        assert.same({ requests = 3, duplicates = 1, refused = 0 }, sb:counters().lingdian)
      end)

      it("refuses the same signed notice twice (信息已过期请重试), counting it; not when strict is off", function()
        local p = signed(msg())
        expect(post(A, p), 100, "请求成功且发送微信客服消息成功")
        local r = post(A, p)
        assert.equal('{"code":104,"message":"请求参数错误：信息已过期请重试","data":[]}', r.raw)
        assert.equal(1, #sb:records("lingdian", "messages"))
        assert.same({ requests = 2, duplicates = 1, refused = 1 }, sb:counters().lingdian)
        sb:configure({ lingdian = { strict = false } })
        expect(post(A, p), 100, "请求成功且发送微信客服消息成功")
        assert.equal(2, #sb:records("lingdian", "messages"))
        assert.same({ requests = 3, duplicates = 2, refused = 1 }, sb:counters().lingdian)
        local d = sb:records("lingdian", "duplicates")[1]
        assert.same({ 3, 2, 1 }, { d.count, d.replays, d.refused })
      end)
    end)

    describe("B getUserTelByCode", function()
      local function ask(code) return post(B, signed({ developer_code = CODE, user_code = code, type = "16", timestamp = now() })) end

      it("returns the phone as a JSON number", function()
        local r = ask("U2TD844B2")
        assert.equal('{"code":100,"message":"请求成功且返回了手机号","data":13311112222}', r.raw)
        assert.equal(13311112222, r.data)
        assert.equal(13311114444, ask("U2TD846D4").data)
      end)

      it("knows unknown codes and unbound phones", function()
        expect(ask("U2NOBODY1"), 105, "该用户码不存在，请使用零点校园用户身份码")
        expect(ask("U2TD847E5"), 106, "该用户还没绑定手机号，请提示其绑定")
      end)
    end)

    describe("C outerEntryOrder", function()
      local function order(over)
        local p = { developer_code = CODE, shop_code = "U2TD844B2", order_type = "1", daily_number = "1", tel = "13311112222", send_cont = "从二号门进", building_code = "BTEGNAZl", type = "128", timestamp = now() }
        for k, v in pairs(over or {}) do p[k] = v end
        return post(C, signed(p))
      end

      it("checks the shop, the order fields and the building", function()
        expect(order({ shop_code = "U2NOSHOP1" }), 104, "请求参数错误：您不是开发者或没有对应权限")
        expect(order({ order_type = "6" }), 104, "请求参数错误")
        expect(order({ daily_number = "0" }), 104, "请求参数错误")
        expect(order({ daily_number = "x1" }), 104, "请求参数错误")
        expect(order({ building_code = "BNOWHERE" }), 104, "请求参数错误")
        assert.same({}, sb:records("lingdian", "orders"))
      end)

      it("checks tel (目标电话, 可为空) when given: a phone number, as A and D do", function()
        expect(order({ tel = "abc" }), 104, "请求参数错误：手机号为空或格式不正确")
        expect(order({ tel = "1331111222" }), 104, "请求参数错误：手机号为空或格式不正确")
        expect(order({ tel = "028-87685291", daily_number = "2" }), 100, "发入成功")
        sb:configure({ lingdian = { strict = false } })
        expect(order({ tel = "abc", daily_number = "3" }), 100, "发入成功")
      end)

      it("records orders, with or without the optional fields", function()
        expect(order(), 100, "发入成功")
        expect(order({ shop_code = "U2SHOP001", building_code = "", tel = "", send_cont = "", daily_number = "2", order_type = "5" }), 100, "发入成功")
        local list = sb:records("lingdian", "orders")
        assert.equal(2, #list)
        assert.equal("从二号门进", list[1].params.send_cont)
        assert.equal("U2SHOP001", list[2].params.shop_code)
      end)
    end)

    describe("D userCardRemind", function()
      local function remind(over)
        local p = { developer_code = CODE, tel = "12345678910", timestamp = now(), msisdn = "1410139903", iccid = "8986112025304", remind = "流量套餐要到期了", expire_time = "2022年12月12日" }
        for k, v in pairs(over or {}) do p[k] = v end
        return post(D, signed(p))
      end

      it("checks that the card is the developer's, then the phone: the developer's own (开发者手机号)", function()
        local r = remind({ iccid = "8986112025305" })
        assert.equal('{"code":104,"message":"卡未出库","data":""}', r.raw)
        expect(remind({ msisdn = "1410139999" }), 104, "卡未出库")
        expect(remind({ tel = "123" }), 104, "请求参数错误：手机号为空或格式不正确")
        expect(remind({ tel = "13311112222" }), 104, "请求参数错误：您不是开发者或没有对应权限")
        sb:configure({ lingdian = { strict = false } })
        expect(remind({ tel = "13311112222" }), 100, "发送成功")
        local p = { developer_code = CODE, tel = "12345678910", timestamp = now(), msisdn = "1410139903" }
        assert.equal('{"code":104,"message":"缺少请求参数","data":""}', post(D, signed(p)).raw)
      end)

      it("records reminders", function()
        assert.equal('{"code":100,"message":"发送成功","data":""}', remind().raw)
        expect(remind({ msisdn = "1410139904", iccid = "8986112025305" }), 100, "发送成功")
        local list = sb:records("lingdian", "reminders")
        assert.equal(2, #list)
        assert.equal("2022年12月12日", list[1].params.expire_time)
      end)
    end)

    it("numbers every accepted action once", function()
      expect(post(A, signed(msg())), 100, "请求成功且发送微信客服消息成功")
      expect(post(C, signed({ developer_code = CODE, shop_code = "U2TD844B2", order_type = "1", daily_number = "1", type = "128", timestamp = now() })), 100, "发入成功")
      assert.equal(1, sb:records("lingdian", "messages")[1].id)
      assert.equal(2, sb:records("lingdian", "orders")[1].id)
    end)
  end)
end)
