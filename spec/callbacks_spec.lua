-- Callbacks: Yopoint's order notices verified by yp:verify_notify (notices built here by hand and
-- signed with the md5sum CLI, so nothing of kaifang signs them), and the sandbox playing the
-- platforms' side: it POSTs a signed Yopoint notice or a Dakashi recharge callback to a receiver
-- in another process and records what the receiver answered.
local kaifang = require "kaifang"
local sandbox = require "kaifang.sandbox"
local cjson = require "cjson"

local APPID, SECRET = "930859529955", "5d0f3c8e2a7b4f19c6e1a0b9d8f7e6c5"
local SIGN_KEY = "9b8a7c6d5e4f30211f2e3d4c5b6a7980"
local NOW = 1700000000

local function md5(s)
  local path = os.tmpname()
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
  local p = assert(io.popen("md5sum " .. path))
  local out = p:read("*a")
  p:close()
  os.remove(path)
  return assert(out:match("^(%x+)"))
end

local function pct(s)
  return (s:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

-- A notice as the platform would send it: fields in sorted order, written out by hand.
local BIZ = '{"Amount":1400,"Phone":"13311112222","ReceiptNo":"OD231114221320841401","TID":"YP0001"}'
local function notice(opts)
  opts = opts or {}
  local ts = opts.timestamp or tostring(NOW)
  local biz = opts.biz or BIZ
  local key = opts.key or SECRET
  local sts = "appid=" .. APPID .. "&biz_content=" .. biz .. "&method=cabinet.order.sync&sign_type=md5&timestamp="
    .. ts .. "&version=1.0.0&" .. key
  return {
    appid = APPID, biz_content = biz, method = "cabinet.order.sync", sign_type = "md5", timestamp = ts,
    version = "1.0.0", sign = md5(sts),
  }
end

local function client(extra)
  local opts = { appid = APPID, app_secret = SECRET, sign_key = SIGN_KEY, base_url = "http://127.0.0.1:9",
                 clock = function() return NOW end }
  for k, v in pairs(extra or {}) do opts[k] = v end
  return kaifang.yopoint.new(opts)
end

describe("yp:verify_notify", function()
  local yp = client()

  it("accepts a genuine notice and returns it, biz_content decoded", function()
    local n = assert(yp:verify_notify(notice()))
    assert.are.equal("cabinet.order.sync", n.method)
    assert.are.equal("OD231114221320841401", n.data.ReceiptNo)
    assert.are.equal(1400, n.data.Amount)
    assert.is_nil(n.sign)
  end)

  it("accepts the notice as a raw form body and as JSON", function()
    local n = notice()
    local parts = {}
    for _, k in ipairs({ "appid", "biz_content", "method", "sign", "sign_type", "timestamp", "version" }) do
      parts[#parts + 1] = k .. "=" .. pct(n[k])
    end
    assert(yp:verify_notify(table.concat(parts, "&")))
    assert(yp:verify_notify(cjson.encode(n)))
  end)

  it("refuses a sign that is not lower-case hex (the document: sign 签名(小写))", function()
    local n = notice()
    n.sign = n.sign:upper()
    local res, err = yp:verify_notify(n)
    assert.is_nil(res)
    assert.are.equal("signature", err.kind)
    assert.are.equal("bad_sign", err.code)
  end)

  it("refuses a notice without appid, a common parameter of every signed request", function()
    local sts = "biz_content=" .. BIZ .. "&method=cabinet.order.sync&sign_type=md5&timestamp=" .. NOW .. "&version=1.0.0&" .. SECRET
    local res, err = yp:verify_notify({ biz_content = BIZ, method = "cabinet.order.sync", sign_type = "md5",
                                        timestamp = tostring(NOW), version = "1.0.0", sign = md5(sts) })
    assert.is_nil(res)
    assert.are.equal("signature", err.kind)
    assert.are.equal("appid", err.code)
    assert.are.equal("kaifang.yopoint: signature error appid: notice carries no appid", tostring(err))
  end)

  it("refuses a tampered notice", function()
    local n = notice()
    n.biz_content = n.biz_content:gsub("1400", "1")
    local res, err = yp:verify_notify(n)
    assert.is_nil(res)
    assert.are.equal("signature", err.kind)
    assert.are.equal("bad_sign", err.code)
    assert.are.equal("yopoint", err.platform)
  end)

  it("refuses a replayed notice (timestamp outside the window), either way in time", function()
    local _, err = yp:verify_notify(notice{ timestamp = tostring(NOW - 301) })
    assert.are.equal("stale", err.kind)
    assert.are.equal("timestamp", err.code)
    assert.matches("replay", err.message)
    local _, err2 = yp:verify_notify(notice{ timestamp = tostring(NOW + 3600) })
    assert.are.equal("stale", err2.kind)
    assert(yp:verify_notify(notice{ timestamp = tostring(NOW - 299) }))
    assert(yp:verify_notify(notice{ timestamp = tostring(NOW - 299) }, { window = 600 }))
    local _, err3 = yp:verify_notify(notice{ timestamp = tostring(NOW - 601) }, { window = 600 })
    assert.are.equal("stale", err3.kind)
  end)

  it("refuses a notice signed with the wrong secret", function()
    local _, err = yp:verify_notify(notice{ key = "some-other-secret" })
    assert.are.equal("signature", err.kind)
    -- and one signed with the SignKey unless told that notices are keyed so
    local _, err2 = yp:verify_notify(notice{ key = SIGN_KEY })
    assert.are.equal("signature", err2.kind)
    assert(yp:verify_notify(notice{ key = SIGN_KEY }, { key = "sign_key" }))
  end)

  it("refuses a notice without sign or timestamp", function()
    local n = notice()
    n.sign = nil
    local _, err = yp:verify_notify(n)
    assert.are.equal("signature", err.kind)
    assert.are.equal("missing_sign", err.code)
    local _, err2 = yp:verify_notify({ appid = APPID, sign = md5("appid=" .. APPID .. "&" .. SECRET) })
    assert.are.equal("stale", err2.kind)
    assert.are.equal("no_timestamp", err2.code)
    local _, err3 = yp:verify_notify(42)
    assert.are.equal("decode", err3.kind)
  end)

  it("reads a timestamp in milliseconds as such", function()
    assert(yp:verify_notify(notice{ timestamp = tostring(NOW * 1000 - 5000) }))
    local _, err = yp:verify_notify(notice{ timestamp = tostring((NOW - 900) * 1000) })
    assert.are.equal("stale", err.kind)
  end)

  it("keeps empty values in the string to sign", function()
    local sts = "appid=" .. APPID .. "&extra=&timestamp=" .. NOW .. "&" .. SECRET
    assert(yp:verify_notify({ appid = APPID, extra = "", timestamp = tostring(NOW), sign = md5(sts) }))
    local dropped = md5("appid=" .. APPID .. "&timestamp=" .. NOW .. "&" .. SECRET)
    local _, err = yp:verify_notify({ appid = APPID, extra = "", timestamp = tostring(NOW), sign = dropped })
    assert.are.equal("signature", err.kind)
  end)

  it("refuses a notice for another appid", function()
    local sts = "appid=111&timestamp=" .. NOW .. "&" .. SECRET
    local _, err = yp:verify_notify({ appid = "111", timestamp = tostring(NOW), sign = md5(sts) })
    assert.are.equal("signature", err.kind)
    assert.are.equal("appid", err.code)
  end)
end)

describe("yp:verify_pay_redirect", function()
  local yp = client()
  local function redirect(ts, key)
    local sts = "notify_url=https://api.yopoint.com/n&receipt_no=OD1&return_url=https://m.yopoint.com/r?a=1&b=2&timestamp="
      .. ts .. "&" .. (key or SIGN_KEY)
    return "https://pay.example.com/p?receipt_no=OD1&return_url=" .. pct("https://m.yopoint.com/r?a=1&b=2")
      .. "&notify_url=" .. pct("https://api.yopoint.com/n") .. "&timestamp=" .. ts .. "&sign=" .. md5(sts)
  end

  it("accepts a genuine redirect (whole URL or query) and returns its fields", function()
    local r = assert(yp:verify_pay_redirect(redirect(NOW)))
    assert.are.equal("OD1", r.receipt_no)
    assert.are.equal("https://m.yopoint.com/r?a=1&b=2", r.return_url)
    assert.are.equal("https://api.yopoint.com/n", r.notify_url)
    assert(yp:verify_pay_redirect((redirect(NOW):match("%?(.*)$"))))
  end)

  it("refuses a tampered, an old and a wrongly keyed redirect", function()
    local _, err = yp:verify_pay_redirect((redirect(NOW):gsub("receipt_no=OD1", "receipt_no=OD2")))
    assert.are.equal("signature", err.kind)
    local _, err2 = yp:verify_pay_redirect(redirect(NOW - 3600))
    assert.are.equal("stale", err2.kind)
    local _, err3 = yp:verify_pay_redirect(redirect(NOW, SECRET))
    assert.are.equal("signature", err3.kind)
  end)
end)

---------------------------------------------------------------------------- the sandbox calls back

local function shell_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- A receiver in another process (the sandbox serves nothing while it waits on a callback, and
-- this process is busy waiting on the sandbox). It answers the given replies in turn, writes each
-- request it got as one JSON line, and exits after the last or after 20 seconds.
local function receiver(replies)
  local chunk = string.format([[
package.path = %q package.cpath = %q
local httpd, cjson = require "kaifang.sandbox.httpd", require "cjson"
local replies = cjson.decode(%q)
local srv = assert(httpd.listen{ host = "127.0.0.1", port = 0 })
io.stdout:write(srv:port(), "\n") io.stdout:flush()
local n, deadline = 0, require("kaifang.core").monotonic() + 20
while n < #replies and require("kaifang.core").monotonic() < deadline do
  local req = srv:next(0.2)
  if req then
    n = n + 1
    io.stdout:write(cjson.encode({ method = req.method, path = req.path, headers = req.headers, body = req.body }), "\n")
    io.stdout:flush()
    srv:respond(req.id, replies[n].status or 200, { ["Content-Type"] = "text/plain" }, replies[n].body)
  end
end
srv:flush(1)
srv:close()
]], package.path, package.cpath, cjson.encode(replies))
  local fh = assert(io.popen("exec lua5.4 -e " .. shell_quote(chunk), "r"))
  local port = assert(tonumber(fh:read("*l")), "the receiver did not start")
  return {
    url = "http://127.0.0.1:" .. math.floor(port) .. "/hook",
    read = function() return cjson.decode((assert(fh:read("*l"), "the receiver got nothing"))) end,
    close = function() fh:close() end,
  }
end

local function form_fields(body)
  local t = {}
  for pair in (body .. "&"):gmatch("([^&]*)&") do
    local k, v = pair:match("^([^=]*)=(.*)$")
    if k then
      t[k] = v:gsub("+", " "):gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
    end
  end
  return t
end

describe("the sandbox plays the platforms' side of callbacks", function()
  local sb, yp

  setup(function()
    sb = sandbox.start{ port = 0 }
    yp = kaifang.yopoint.new{ appid = APPID, app_secret = SECRET, sign_key = SIGN_KEY, base_url = sb.url, timeout = 5 }
  end)
  teardown(function()
    if yp then yp:close() end
    if sb then sb:stop() end
  end)
  before_each(function() assert(sb:reset()) end)

  it("posts a signed Yopoint order notice; verify_notify accepts it; the reply is recorded", function()
    local rx = receiver({ { body = "success\n" } })
    local rec = assert(sb:admin("POST", "/_sandbox/yopoint/notify", { url = rx.url }))
    local got = rx.read()
    rx:close()
    assert.is_true(rec.ok)
    assert.are.equal(200, rec.status)
    assert.are.equal("POST", got.method)
    assert.are.equal("/hook", got.path)
    assert.matches("^application/x%-www%-form%-urlencoded", got.headers["content-type"])
    local n = assert(yp:verify_notify(got.body))
    assert.are.equal(rec.params.sign, form_fields(got.body).sign)
    local last = assert(yp:cabinet_order_list{}).data.List
    assert.are.equal(last[#last].ReceiptNo, n.data.ReceiptNo)
    local notices = assert(sb:records("yopoint", "notices"))
    assert.are.equal(1, #notices)
    assert.are.equal("success\n", notices[1].body)
  end)

  it("a tampered, a replayed and a wrongly signed notice from the sandbox are all refused", function()
    local rx = receiver({ { body = "fail" }, { body = "fail" }, { body = "fail" } })
    local orders = assert(yp:cabinet_order_list{}).data.List
    local receipt = orders[1].ReceiptNo
    local tampered = assert(sb:admin("POST", "/_sandbox/yopoint/notify", { url = rx.url, ReceiptNo = receipt, tamper = true }))
    local _, e1 = yp:verify_notify(rx.read().body)
    assert(sb:admin("POST", "/_sandbox/yopoint/notify", { url = rx.url, ReceiptNo = receipt, age = 3600 }))
    local _, e2 = yp:verify_notify(rx.read().body)
    assert(sb:admin("POST", "/_sandbox/yopoint/notify", { url = rx.url, ReceiptNo = receipt, secret = "not-the-secret" }))
    local _, e3 = yp:verify_notify(rx.read().body)
    rx:close()
    assert.is_false(tampered.ok) -- the receiver answered "fail"
    assert.are.equal("signature", e1.kind)
    assert.are.equal("stale", e2.kind)
    assert.are.equal("signature", e3.kind)
  end)

  it("sends to the ServerUrl registered with thirdpay.set, signed with the SignKey on request", function()
    local rx = receiver({ { body = "success" } })
    assert(yp:operators_config_thirdpay_set{ PayUrl = "https://pay.example.com/p", ServerUrl = rx.url, SignKey = SIGN_KEY })
    local rec = assert(sb:admin("POST", "/_sandbox/yopoint/notify", { key = "sign_key" }))
    local body = rx.read().body
    rx:close()
    assert.is_true(rec.ok)
    assert.is_nil(yp:verify_notify(body))
    assert(yp:verify_notify(body, { key = "sign_key" }))
  end)

  it("records an unreachable receiver, and refuses to call back into itself", function()
    local rec = assert(sb:admin("POST", "/_sandbox/yopoint/notify", { url = "http://127.0.0.1:9/closed" }))
    assert.is_false(rec.ok)
    assert.is_string(rec.error)
    local res, err = sb:admin("POST", "/_sandbox/yopoint/notify", { url = sb.url .. "/hook" })
    assert.is_nil(res)
    assert.matches("itself", err)
    local _, err2 = sb:admin("POST", "/_sandbox/dakashi/callback", { url = sb.url .. "/hook", serial_no = "87000001" })
    assert.matches("itself", err2)
  end)

  it("posts a Dakashi recharge callback, retrying until the receiver takes it", function()
    local rx = receiver({ { body = "busy" }, { status = 500, body = "" }, { body = require("kaifang.dakashi").callback_reply } })
    local rec = assert(sb:admin("POST", "/_sandbox/dakashi/callback", { url = rx.url, serial_no = "1410139904", product_id = 1003 }))
    local first = rx.read()
    rx.read()
    local third = rx.read()
    rx:close()
    assert.is_true(rec.ok)
    assert.are.equal(3, #rec.attempts)
    assert.are.equal(first.body, third.body)
    assert.matches("^application/json", first.headers["content-type"])
    local cb = assert(kaifang.dakashi.parse_callback(first.body))
    assert.are.equal("recharge", cb.action)
    assert.are.equal("1410139904", cb.serial_no)
    assert.are.equal(1003, cb.product_id)
    -- the recharge is in the world: a new package and an order
    local dk = kaifang.dakashi.new{ client_id = "iotacc108b7305fhzljeux0", client_secret = "4c1e7b9a2d5f8e3b6a0c9d2f5e8b1a47",
                                    base_url = sb.url }
    assert.are.equal(2, #assert(dk:member_product_info{ serial_no = "1410139904" }).data)
    assert.are.equal("1410139904", assert(dk:order_info{ order_no = cb.order_no }).data.serial_no)
    dk:close()
  end)

  it("posts an on/off callback and gives up after three retries", function()
    local rx = receiver({ { body = "no" }, { body = "no" }, { body = "no" }, { body = "no" } })
    local rec = assert(sb:admin("POST", "/_sandbox/dakashi/callback", { url = rx.url, serial_no = "87000001", action_type = 2, status = 0 }))
    local cb = assert(kaifang.dakashi.parse_callback(rx.read().body))
    for _ = 2, 4 do rx.read() end
    rx:close()
    assert.is_false(rec.ok)
    assert.are.equal(4, #rec.attempts)
    assert.are.equal("switch", cb.action)
    assert.are.equal(0, cb.status)
    assert.are.equal(1, #assert(sb:records("dakashi", "callbacks")))
  end)
end)
