-- kaifang.ngx's callback processing under plain Lua (M.process: request table in, response out);
-- spec/openresty_spec.lua drives the same handlers inside nginx. Signatures are computed here by
-- hand from the platforms' rules.
local core = require "kaifang.core"
local kngx = require "kaifang.ngx"
local kaifang = require "kaifang"

local SECRET, SIGNKEY, APPID = "spec-yopoint-secret", "spec-yopoint-signkey", "930859529955"
local CODE, KEY = "U2QHNB2w=", "744ed968e7e1a4aebafa6f4888fced68"

local function canonical(params, skip, drop_empty)
  local keys = {}
  for k, v in pairs(params) do
    if not skip[k] and not (drop_empty and v == "") then keys[#keys + 1] = k end
  end
  table.sort(keys)
  local parts = {}
  for i, k in ipairs(keys) do parts[i] = k .. "=" .. params[k] end
  return table.concat(parts, "&")
end

local pct, form = require("spec.helpers.form").pct, require("spec.helpers.form").form


local function yopoint_signed(p, secret)
  p.sign = core.digest("md5", canonical(p, { sign = true }, false) .. "&" .. secret)
  return p
end

local function lingdian_signed(p)
  p.sign = core.digest("md5", canonical(p, { sign = true, sign_type = true, key = true, developer_key = true }, true) .. KEY)
  return p
end

local function post(body, ctype)
  return { method = "POST", headers = { ["content-type"] = ctype or "application/x-www-form-urlencoded" }, body = body,
           query = "", remote_addr = "203.0.113.9" }
end

-- The repeat memory as kaifang.ngx.seen_on keeps it, in a table.
local function memory_seen()
  local t = {}
  return {
    t = t,
    claim = function(key)
      if t[key] == nil then t[key] = "busy" return "new" end
      return t[key]
    end,
    done = function(key) t[key] = "done" return true end,
    forget = function(key) t[key] = nil end,
  }
end

describe("kaifang.ngx.process", function()
  local yp, ld, logs, seen

  setup(function()
    yp = kaifang.yopoint.new{ appid = APPID, app_secret = SECRET, sign_key = SIGNKEY, base_url = "http://127.0.0.1:9" }
    ld = kaifang.lingdian.new{ developer_code = CODE, developer_key = KEY, base_url = "http://127.0.0.1:9" }
  end)

  before_each(function()
    logs = {}
    seen = memory_seen()
  end)

  local function opts(extra)
    local o = { seen = seen, log = function(level, msg) logs[#logs + 1] = { level, msg } end }
    for k, v in pairs(extra or {}) do o[k] = v end
    return o
  end

  local function notice(over)
    local p = { appid = APPID, method = "cabinet.order.sync", biz_content = '{"ReceiptNo":"OD1","Amount":350}',
                timestamp = tostring(os.time()), sign_type = "md5", version = "1.0.0" }
    for k, v in pairs(over or {}) do p[k] = v end
    return yopoint_signed(p, SECRET)
  end

  describe("yopoint_notify", function()
    it("calls the handler with the verified notice and answers success", function()
      local got, ctx
      local res = kngx.process("yopoint_notify", yp, post(form(notice())), function(n, c) got, ctx = n, c end, opts())
      assert.are.same({ status = 200, headers = { ["Content-Type"] = "text/plain; charset=utf-8" }, body = "success" }, res)
      assert.are.equal("OD1", got.data.ReceiptNo)
      assert.are.equal(350, got.data.Amount)
      assert.are.same({ platform = "yopoint", kind = "yopoint_notify", remote_addr = "203.0.113.9" }, ctx)
    end)

    it("takes a JSON body too", function()
      local called = false
      local p = notice()
      local res = kngx.process("yopoint_notify", yp, post(require("cjson").encode(p), "application/json"),
        function() called = true end, opts())
      assert.are.equal("success", res.body)
      assert.is_true(called)
    end)

    it("answers fail, logs at warn, and never calls the handler for a tampered, stale or mis-signed notice", function()
      local called = 0
      local tampered = notice()
      tampered.biz_content = '{"ReceiptNo":"OD1","Amount":1}'
      local wrong = yopoint_signed(notice(), "other-secret")
      for _, p in ipairs({ tampered, notice{ timestamp = tostring(os.time() - 600) }, wrong, notice{ appid = "1" } }) do
        local res = kngx.process("yopoint_notify", yp, post(form(p)), function() called = called + 1 end, opts())
        assert.are.equal("fail", res.body)
        assert.are.equal(200, res.status)
      end
      assert.are.equal(0, called)
      assert.are.equal(4, #logs)
      for _, l in ipairs(logs) do
        assert.are.equal("warn", l[1])
        assert.matches("^kaifang%.ngx%.yopoint_notify %(yopoint%): refused a Yopoint notice from 203%.0%.113%.9: ", l[2])
        assert.is_nil(l[2]:find(SECRET, 1, true))
      end
    end)

    it("refuses a GET", function()
      local req = post(form(notice()))
      req.method = "GET"
      assert.are.equal("fail", kngx.process("yopoint_notify", yp, req, function() end, opts()).body)
    end)

    it("treats a raise, false, and nil plus an error as not taken; anything else as taken", function()
      local cases = {
        { function() error("boom") end, "fail" },
        { function() return false end, "fail" },
        { function() return false, "why" end, "fail" },
        { function() return nil, "db down" end, "fail" },
        { function() end, "success" },
        { function() return true end, "success" },
        { function() return "ok" end, "success" },
      }
      for i, c in ipairs(cases) do
        local res = kngx.process("yopoint_notify", yp, post(form(notice{ biz_content = '{"n":' .. i .. "}" })), c[1], opts())
        assert.are.equal(c[2], res.body, "case " .. i)
      end
    end)

    it("a notice already taken gets success without the handler; one still being handled gets fail", function()
      local n, p = 0, form(notice())
      local fn = function() n = n + 1 end
      assert.are.equal("success", kngx.process("yopoint_notify", yp, post(p), fn, opts()).body)
      assert.are.equal("success", kngx.process("yopoint_notify", yp, post(p), fn, opts()).body)
      assert.are.equal(1, n)
      assert.are.equal("info", logs[1][1])
      local q = form(notice{ biz_content = '{"other":1}' })
      for k in pairs(seen.t) do seen.t[k] = nil end
      seen.claim("yopoint_notify|" .. APPID .. "||sign:" .. kngx.field(post(q), "sign"))
      assert.are.equal("fail", kngx.process("yopoint_notify", yp, post(q), fn, opts()).body)
      assert.are.equal(1, n)
    end)

    it("a handler that failed leaves the notice to be taken when it comes again", function()
      local p, n = form(notice()), 0
      kngx.process("yopoint_notify", yp, post(p), function() error("once") end, opts())
      assert.are.equal("success", kngx.process("yopoint_notify", yp, post(p), function() n = n + 1 end, opts()).body)
      assert.are.equal(1, n)
    end)

    it("without a repeat memory every delivery calls the handler", function()
      local p, n = form(notice()), 0
      local o = opts()
      o.seen = nil
      for _ = 1, 2 do kngx.process("yopoint_notify", yp, post(p), function() n = n + 1 end, o) end
      assert.are.equal(2, n)
    end)

    it("refuses addresses off the allow list with 403 and a JSON body, and names the handler and platform in the log", function()
      local called = false
      local res = kngx.process("yopoint_notify", yp, post(form(notice())), function() called = true end,
        opts{ allow = { "198.51.100.1" } })
      assert.are.equal(403, res.status)
      assert.are.same({ error = "forbidden", message = "address not allowed" }, require("cjson").decode(res.body))
      assert.is_false(called)
      assert.are.equal("kaifang.ngx.yopoint_notify (yopoint): refused a Yopoint notice from 203.0.113.9: address not allowed", logs[1][2])
    end)
  end)

  describe("yopoint_pay", function()
    local function redirect(over, key)
      local p = { receipt_no = "OD1", return_url = "https://h5.example/r?a=1&b=2", notify_url = "https://api.yopoint.com/n",
                  timestamp = tostring(os.time()) }
      for k, v in pairs(over or {}) do p[k] = v end
      return { method = "GET", headers = {}, body = "", query = form(yopoint_signed(p, key or SIGNKEY)), remote_addr = "198.51.100.7" }
    end

    it("redirects to the URL the handler returns", function()
      local got
      local res = kngx.process("yopoint_pay", yp, redirect(), function(r) got = r return "https://pay.example/x" end, opts())
      assert.are.same({ status = 302, headers = { Location = "https://pay.example/x" }, body = "" }, res)
      assert.are.equal("https://h5.example/r?a=1&b=2", got.return_url)
    end)

    it("passes a response table through, or nothing when the handler answered itself", function()
      local page = { status = 200, headers = { ["Content-Type"] = "text/html" }, body = "<form>" }
      assert.are.equal(page, kngx.process("yopoint_pay", yp, redirect(), function() return page end, opts()))
      assert.is_nil(kngx.process("yopoint_pay", yp, redirect(), function() end, opts()))
    end)

    it("a reload is fine (no repeat memory for redirects)", function()
      local req, n = redirect(), 0
      for _ = 1, 2 do kngx.process("yopoint_pay", yp, req, function() n = n + 1 return "https://pay.example/x" end, opts()) end
      assert.are.equal(2, n)
    end)

    it("answers 403 to a tampered, a stale, an app-secret-signed redirect, and when the handler fails", function()
      local bad = redirect()
      bad.query = bad.query:gsub("receipt_no=OD1", "receipt_no=OD2")
      for _, req in ipairs({ bad, redirect{ timestamp = tostring(os.time() - 3600) }, redirect(nil, SECRET) }) do
        local res = kngx.process("yopoint_pay", yp, req, function() error("not reached") end, opts())
        assert.are.equal(403, res.status)
      end
      assert.are.equal(403, kngx.process("yopoint_pay", yp, redirect(), function() error("x") end, opts()).status)
      assert.are.equal(403, kngx.process("yopoint_pay", yp, redirect(), function() return nil, "x" end, opts()).status)
    end)
  end)

  describe("dakashi_callback", function()
    local OK = '{"errcode":0,"errmsg":"success"}'
    local base = opts
    local function opts(extra) -- these callbacks are unsigned: allow is required
      local o = base(extra)
      if o.allow == nil then o.allow = "203.0.113.0/24" end
      return o
    end

    it("requires allow: without one every callback gets 403 and an error line saying what to do", function()
      local called = false
      local o = base()
      local res = kngx.process("dakashi_callback", nil, post('{"action_type":1,"serial_no":"87000001"}', "application/json"),
        function() called = true end, o)
      assert.are.equal(403, res.status)
      assert.is_false(called)
      assert.are.equal("err", logs[1][1])
      assert.matches("kaifang.ngx.dakashi_callback (dakashi): refused a Dakashi callback from 203.0.113.9: no `allow` given",
        logs[1][2], 1, true)
      assert.matches('allow = "any"', logs[1][2], 1, true)
    end)

    it("takes any address with allow = \"any\", and refuses a bad allow list with 403 and the reason", function()
      local cb = post('{"action_type":1,"serial_no":"87000001"}', "application/json")
      assert.are.equal(OK, kngx.process("dakashi_callback", nil, cb, function() end, base{ allow = "any" }).body)
      local res = kngx.process("dakashi_callback", nil, cb, function() end, base{ allow = { "10.0.0.0/33" } })
      assert.are.equal(403, res.status)
      assert.matches('"10.0.0.0/33" is not an IPv4 or IPv6 address or CIDR range', logs[#logs][2], 1, true)
    end)

    it("answers the platform's success reply", function()
      local got
      local res = kngx.process("dakashi_callback", nil, post('{"action_type":1,"serial_no":"87000001"}', "application/json"),
        function(cb) got = cb end, opts())
      assert.are.equal(OK, res.body)
      assert.are.equal(kaifang.dakashi.callback_reply, res.body)
      assert.are.equal("recharge", got.action)
    end)

    it("refuses a body that is not a callback with errcode 50000 and the reason", function()
      local res = kngx.process("dakashi_callback", nil, post('{"action_type":3}', "application/json"), function() end, opts())
      local doc = require("cjson").decode(res.body)
      assert.are.equal(50000, doc.errcode)
      assert.matches("action_type", doc.errmsg)
    end)

    it("recognises a repeat by its body", function()
      local n = 0
      local body = '{"action_type":2,"serial_no":"87000001","status":"on"}'
      for _ = 1, 3 do
        assert.are.equal(OK, kngx.process("dakashi_callback", nil, post(body, "application/json"), function() n = n + 1 end, opts()).body)
      end
      assert.are.equal(1, n)
    end)
  end)

  describe("lingdian_callback (format inferred)", function()
    local function fields(over)
      local p = { developer_code = CODE, type = "1", tel = "13311112222", status = "100", timestamp = tostring(os.time()) }
      for k, v in pairs(over or {}) do p[k] = v end
      return lingdian_signed(p)
    end

    it("verifies a form callback signed like Lingdian's requests", function()
      local got
      local res = kngx.process("lingdian_callback", ld, post(form(fields())), function(f) got = f end, opts())
      assert.are.equal('{"code":100,"message":"success","data":[]}', res.body)
      assert.are.equal("13311112222", got.tel)
    end)

    it("accepts JSON with numbers as the platform writes them", function()
      local p = fields{ tel = "13311113333" }
      local body = ('{"developer_code":"%s","type":1,"tel":13311113333,"status":100,"timestamp":%s,"sign":"%s"}')
        :format(CODE, p.timestamp, p.sign)
      local res = kngx.process("lingdian_callback", ld, post(body, "application/json"), function() end, opts())
      assert.are.equal(100, require("cjson").decode(res.body).code)
    end)

    it("refuses tampered, foreign, unsigned and stale callbacks with code 104", function()
      local t = fields()
      t.status = "106"
      local unsigned = fields()
      unsigned.sign = nil
      for _, p in ipairs({ t, fields{ developer_code = "OTHER" }, unsigned, fields{ timestamp = tostring(os.time() + 3600) } }) do
        local res = kngx.process("lingdian_callback", ld, post(form(p)), function() error("not reached") end, opts())
        assert.are.equal(104, require("cjson").decode(res.body).code)
      end
    end)
  end)

  describe("repeat marks", function()
    local function dakashi(path, account, o)
      local req = post('{"action_type":2,"serial_no":"87000001","status":"on"}', "application/json")
      req.path = path
      return kngx.process("dakashi_callback", nil, req, function() end, opts{ allow = "any", account = account, seen = o })
    end

    it("are kept apart per handler, account and location", function()
      dakashi("/cb/a", "acct1")
      dakashi("/cb/a", "acct1")
      dakashi("/cb/b", "acct1")
      dakashi("/cb/a", "acct2")
      local keys = {}
      for k in pairs(seen.t) do keys[#keys + 1] = k end
      table.sort(keys)
      assert.are.equal(3, #keys)
      assert.matches("^dakashi_callback|acct1|/cb/a|body:", keys[1])
      assert.matches("^dakashi_callback|acct1|/cb/b|", keys[2])
      assert.matches("^dakashi_callback|acct2|/cb/a|", keys[3])
      local y = kngx.process("yopoint_notify", yp, post(form(notice())), function() end, opts())
      assert.are.equal("success", y.body)
      local found
      for k in pairs(seen.t) do found = found or k:match("^yopoint_notify|" .. APPID .. "||sign:") end
      assert.is_truthy(found, "the Yopoint client's appid names its marks")
    end)

    it("a mark that cannot be written refuses the callback (the platform sends it again) and logs why", function()
      local called = false
      local full = { claim = function() return nil, "lua_shared_dict kaifang_callbacks is full (no memory)" end }
      local req = post('{"action_type":1,"serial_no":"87000001"}', "application/json")
      local res = kngx.process("dakashi_callback", nil, req, function() called = true end, opts{ allow = "any", seen = full })
      assert.are.equal(50000, require("cjson").decode(res.body).errcode)
      assert.is_false(called)
      assert.are.equal("err", logs[1][1])
      assert.matches("is full (no memory): the callback cannot be marked as taken", logs[1][2], 1, true)
    end)

    it("the busy mark is kept while the handler runs, and a 'done' that fails is logged", function()
      local events = {}
      local o = memory_seen()
      o.keep = function(key) events[#events + 1] = "keep " .. key:match("^[^|]+") return function() events[#events + 1] = "stop" end end
      o.done = function() return nil, "no memory" end
      local res = dakashi("/cb", nil, o)
      assert.are.equal('{"errcode":0,"errmsg":"success"}', res.body)
      assert.are.same({ "keep dakashi_callback", "stop" }, events)
      assert.matches("taken, but not remembered as taken (no memory)", logs[#logs][2], 1, true)
    end)
  end)

  describe("allow_list", function()
    it("matches addresses and CIDR ranges, IPv4 and IPv6, and IPv4-mapped IPv6 as IPv4", function()
      local m = assert(kngx.allow_list({ "192.0.2.1", "10.1.0.0/16", "2001:db8::/32", "::1", "fe80::1:2:3:4/126" }))
      for _, yes in ipairs({ "192.0.2.1", "10.1.0.0", "10.1.255.255", "2001:db8::", "2001:db8:ffff:1::9", "::1",
                             "0:0:0:0:0:0:0:1", "::ffff:192.0.2.1", "::ffff:10.1.2.3", "fe80::1:2:3:7" }) do
        assert.is_true(m(yes), yes)
      end
      for _, no in ipairs({ "192.0.2.2", "10.2.0.1", "10.0.255.255", "2001:db9::", "::2", "fe80::1:2:3:8", "",
                            "not an address", "192.0.2.1.5", "1::2::3", nil }) do
        assert.is_false(m(no), tostring(no))
      end
      local odd = assert(kngx.allow_list("172.16.0.0/12, 198.51.100.7"))
      assert.is_true(odd("172.31.255.1"))
      assert.is_false(odd("172.32.0.1"))
      assert.is_true(odd("198.51.100.7"))
      assert.is_true(kngx.allow_list("0.0.0.0/0")("8.8.8.8"))
      assert.is_false(kngx.allow_list("0.0.0.0/0")("::1"))
    end)

    it("refuses entries that are not addresses", function()
      for _, bad in ipairs({ { "10.0.0.0/33" }, { "300.1.1.1" }, { "::/129" }, { "example.com" }, { 7 }, {}, "", 42 }) do
        local m, why = kngx.allow_list(bad)
        assert.is_nil(m)
        assert.is_string(why)
      end
    end)
  end)

  it("raises on an unknown kind (a programming error, not a callback)", function()
    assert.has_error(function() kngx.process("nope", nil, post(""), function() end) end)
  end)
end)
