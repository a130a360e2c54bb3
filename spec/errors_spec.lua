-- The error shape (nil, err with a __tostring) and the rule that secrets never show: not in
-- tostring(client), not anywhere pairs() can reach from the client, not in any returned error,
-- not in what is sent.
local errors = require "kaifang.errors"
local lingdian = require "kaifang.lingdian"
local httpd = require "kaifang.sandbox.httpd"

local KEY = "744ed968e7e1a4aebafa6f4888fced68"
local CODE = "U2QHNB2w="

describe("kaifang.errors", function()
  it("formats a platform error as the design says", function()
    local e = errors.new{ platform = "lingdian", kind = "platform", code = 105, message = "该用户码不存在" }
    assert.are.equal("kaifang.lingdian: platform error 105: 该用户码不存在", tostring(e))
  end)

  it("formats auth and signature errors like platform errors", function()
    assert.are.equal("kaifang.lingdian: signature error 103: 签名错误",
      tostring(errors.new{ platform = "lingdian", kind = "signature", code = 103, message = "签名错误" }))
    assert.are.equal("kaifang.zafu: auth error",
      tostring(errors.new{ platform = "zafu", kind = "auth" }))
  end)

  it("names the HTTP status for http errors", function()
    local text = tostring(errors.new{ platform = "lingdian", kind = "http", http_status = 502, code = 502, message = "Bad Gateway" })
    assert.matches("^kaifang%.lingdian: ", text)
    assert.matches("502", text)
    assert.matches("Bad Gateway", text)
  end)

  it("says when the request may have reached the platform, and only then", function()
    local sent = errors.new{ platform = "lingdian", kind = "timeout", code = 28, message = "Operation timed out", maybe_sent = true }
    local unsent = errors.new{ platform = "lingdian", kind = "transport", code = 7, message = "Couldn't connect" }
    assert.matches("may have reached", tostring(sent))
    assert.matches("timeout", tostring(sent))
    assert.is_nil(tostring(unsent):find("may have reached", 1, true))
    assert.matches("^kaifang%.lingdian: transport", tostring(unsent))
    assert.matches("Couldn't connect", tostring(unsent))
  end)

  it("names 'core' when no platform is set, and leaves out an empty message", function()
    assert.are.equal("kaifang.core: transport error (7)", tostring(errors.new{ kind = "transport", code = 7, message = "" }))
  end)

  it("normalises retryable and maybe_sent to booleans", function()
    local e = errors.new{ kind = "platform" }
    assert.are.equal(false, e.retryable)
    assert.are.equal(false, e.maybe_sent)
    e = errors.new{ kind = "platform", retryable = true, maybe_sent = true }
    assert.are.equal(true, e.retryable)
    assert.are.equal(true, e.maybe_sent)
    e = errors.new{ kind = "platform", retryable = false, maybe_sent = false }
    assert.are.equal(false, e.retryable)
    assert.are.equal(false, e.maybe_sent)
    for _, v in ipairs({ 1, "yes", 0, {} }) do
      e = errors.new{ kind = "platform", retryable = v, maybe_sent = v }
      assert.is_boolean(e.retryable)
      assert.is_boolean(e.maybe_sent)
    end
  end)

  it("keeps the fields and is recognised by errors.is", function()
    local e = errors.new{ platform = "lingdian", kind = "platform", code = 104, message = "请求频繁", http_status = 200 }
    assert.is_true(errors.is(e))
    assert.are.equal("lingdian", e.platform)
    assert.are.equal(104, e.code)
    assert.are.equal(200, e.http_status)
    assert.is_false(errors.is({ kind = "platform" }))
    assert.is_false(errors.is("kaifang.lingdian: platform error"))
    assert.is_false(errors.is(nil))
  end)
end)

-- ---- secrets ----------------------------------------------------------------------------------

-- Every string reachable from value through pairs() and metatables, keys included.
local function strings_in(value, out, seen)
  out, seen = out or {}, seen or {}
  local t = type(value)
  if t == "string" then
    out[#out + 1] = value
  elseif t == "table" and not seen[value] then
    seen[value] = true
    for k, v in next, value do
      strings_in(k, out, seen)
      strings_in(v, out, seen)
    end
    strings_in(getmetatable(value), out, seen)
  elseif t == "userdata" and not seen[value] then
    seen[value] = true
    out[#out + 1] = tostring(value)
    local mt = getmetatable(value)
    if type(mt) == "table" then strings_in(mt, out, seen) end
  end
  return out
end

local function assert_no_secret(value, what, key)
  key = key or KEY
  local all = strings_in(value)
  assert.is_true(#all > 0, what .. ": nothing was inspected")
  for _, s in ipairs(all) do
    assert.is_nil(s:find(key, 1, true), what .. " shows the developer_key in " .. ("%q"):format(s))
  end
  if type(value) == "table" then
    local text = tostring(value)
    assert.is_nil(text:find(key, 1, true), what .. ": tostring shows the developer_key: " .. text)
  end
end

-- A transport that records what it is asked to send and answers with a fixed reply.
local function fake_transport(status, body)
  local t = { sent = {} }
  function t:request(req)
    self.sent[#self.sent + 1] = req
    return { status = status, headers = { ["content-type"] = "application/json" }, body = body }
  end
  return t
end

describe("secrets", function()
  it("a test that would notice the key: the walker finds a planted copy", function()
    local planted = { a = { b = { c = "x" .. KEY .. "y" } } }
    local found = false
    for _, s in ipairs(strings_in(planted)) do
      if s:find(KEY, 1, true) then found = true end
    end
    assert.is_true(found)
    local c = lingdian.new{ developer_code = CODE, developer_key = KEY }
    assert.are.equal(KEY, require("kaifang.client").secret(c)) -- held, just not where pairs() goes
    assert.is_nil(c.secret)
    c:close()
  end)

  it("are not in tostring(client)", function()
    local c = lingdian.new{ developer_code = CODE, developer_key = KEY, base_url = "http://127.0.0.1:1" }
    local text = tostring(c)
    assert.matches(CODE, text, 1, true)
    assert.is_nil(text:find(KEY, 1, true))
    c:close()
  end)

  it("are nowhere pairs() can reach from the client", function()
    local c = lingdian.new{ developer_code = CODE, developer_key = KEY, base_url = "http://127.0.0.1:1" }
    assert_no_secret(c, "the client")
    c:close()
    local with_fake = lingdian.new{ developer_code = CODE, developer_key = KEY, transport = fake_transport(200, "{}") }
    assert_no_secret(with_fake, "a client with its own transport")
  end)

  it("are not in the error from a closed port", function()
    local c = lingdian.new{ developer_code = CODE, developer_key = KEY, base_url = "http://127.0.0.1:1", timeout = 3 }
    local res, err = c:get_user_tel_by_code{ user_code = "U2TD844B2" }
    c:close()
    assert.is_nil(res)
    assert.is_table(err)
    assert_no_secret(err, "the closed-port error")
  end)

  it("are not in the error from a timeout", function()
    local srv = assert(httpd.listen{ host = "127.0.0.1", port = 0 })
    local c = lingdian.new{ developer_code = CODE, developer_key = KEY, base_url = "http://127.0.0.1:" .. srv:port(),
                            timeout = 0.3 }
    local res, err = c:outer_entry_order{ shop_code = "U2TD844B2", order_type = 1, daily_number = 1 }
    c:close()
    srv:close()
    assert.is_nil(res)
    assert.are.equal("timeout", err.kind)
    assert_no_secret(err, "the timeout error")
  end)

  it("are not sent: the request body carries the sign, never the key", function()
    local t = fake_transport(200, '{"code":100,"message":"ok","data":13311112222}')
    local c = lingdian.new{ developer_code = CODE, developer_key = KEY, transport = t }
    local res = c:get_user_tel_by_code{ user_code = "U2TD844B2" }
    assert.are.equal("13311112222", res.data)
    assert.are.equal(1, #t.sent)
    assert_no_secret(t.sent[1], "the request handed to the transport")
    assert.matches("sign=%x+", t.sent[1].body)
  end)

  for _, reply in ipairs({
    { 200, '{"code":103,"message":"签名错误"}' },
    { 200, '{"code":105,"message":"该用户码不存在"}' },
    { 500, "internal error" },
    { 200, "not json" },
  }) do
    it("are not in the error for the reply " .. reply[1] .. " " .. reply[2], function()
      local c = lingdian.new{ developer_code = CODE, developer_key = KEY, transport = fake_transport(reply[1], reply[2]) }
      local res, err = c:send_wechat_message{ tel = "13311112222", content = "你好", link = "https://x.cn" }
      assert.is_nil(res)
      assert.is_true(errors.is(err))
      assert.are.equal("lingdian", err.platform)
      assert_no_secret(err, "the error")
    end)
  end

  it("are not in the error for a bad-signature reply from the sandbox", function()
    local ok, sandbox = pcall(require, "kaifang.sandbox")
    assert.is_true(ok, "kaifang.sandbox cannot be loaded: " .. tostring(sandbox))
    local sb = sandbox.start{ port = 0 }
    -- the sandbox's own developer, signed with a key that is not its key
    local code, real_key = sb.credentials.lingdian.developer_code, sb.credentials.lingdian.developer_key
    local wrong = real_key == KEY and ("0"):rep(32) or KEY
    local c = lingdian.new{ developer_code = code or CODE, developer_key = wrong, base_url = sb.url, timeout = 5 }
    local res, err = c:get_user_tel_by_code{ user_code = "U2TD844B2" }
    c:close()
    sb:stop()
    assert.is_string(code, "the sandbox printed no lingdian credentials")
    assert.is_nil(res)
    assert.is_true(errors.is(err))
    assert.are.equal("lingdian", err.platform)
    assert.are_not.equal("transport", err.kind)
    assert_no_secret(err, "the sandbox's error", wrong)
    assert_no_secret(err, "the sandbox's error", real_key)
  end)
end)
