-- Misuse raises, and the error points at the caller's line (not at kaifang's own files).
-- Nothing here reaches the network: the transport is a fake that records what it is given.
local lingdian = require "kaifang.lingdian"

local SPEC = "client_spec.lua"

-- A transport that fails the test if a misused call gets as far as sending.
local function recorder()
  local t = { sent = {} }
  function t:request(req)
    self.sent[#self.sent + 1] = req
    return { status = 200, headers = {}, body = '{"code":100,"message":"ok","data":[]}' }
  end
  return t
end

local function new_client(t)
  return lingdian.new{ developer_code = "U2QHNB2w=", developer_key = "744ed968e7e1a4aebafa6f4888fced68",
                       transport = t or recorder() }
end

local here, raises_at_line = require("spec.helpers.raises")(SPEC)

describe("kaifang.lingdian argument checks", function()
  local t, c
  before_each(function()
    t = recorder()
    c = new_client(t)
  end)
  after_each(function()
    assert.are.equal(0, #t.sent, "a misused call was sent")
  end)

  it("raises on a missing required parameter", function()
    local err = raises_at_line(function() here(); c:get_user_tel_by_code{} end)
    assert.matches("'user_code'", err)
    assert.matches("missing", err)
    assert.matches("^[^\n]*kaifang%.lingdian", err)
  end)

  it("raises on an empty required parameter and on no argument table at all", function()
    local err = raises_at_line(function() here(); c:get_user_tel_by_code{ user_code = "" } end)
    assert.matches("'user_code'", err)
    err = raises_at_line(function() here(); c:get_user_tel_by_code() end)
    assert.matches("'user_code'", err)
  end)

  it("raises on a wrong type (a table for tel)", function()
    local err = raises_at_line(function()
      here(); c:send_wechat_message{ tel = { "13311112222" }, content = "hi", link = "https://x.cn" }
    end)
    assert.matches("'tel'", err)
    assert.matches("table", err)
  end)

  it("raises on a boolean for a text parameter", function()
    local err = raises_at_line(function() here(); c:get_user_tel_by_code{ user_code = true } end)
    assert.matches("'user_code'", err)
  end)

  it("raises on an unknown parameter (a typo next to the right ones)", function()
    local err = raises_at_line(function()
      here(); c:send_wechat_message{ tel = "13311112222", phone = "13311112222", content = "hi", link = "https://x.cn" }
    end)
    assert.matches("unknown parameter 'phone'", err)
  end)

  it("raises on a typo in place of a required parameter (phone for tel)", function()
    local err = raises_at_line(function()
      here(); c:send_wechat_message{ phone = "13311112222", content = "hi", link = "https://x.cn" }
    end)
    -- either complaint points the caller at the mistake
    assert.is_truthy(err:find("'tel'", 1, true) or err:find("'phone'", 1, true), err)
  end)

  it("raises on order_type 9", function()
    local err = raises_at_line(function()
      here(); c:outer_entry_order{ shop_code = "U2TD844B2", order_type = 9, daily_number = 1 }
    end)
    assert.matches("order_type", err)
  end)

  it("raises on a non-integer order_type or daily_number", function()
    local err = raises_at_line(function()
      here(); c:outer_entry_order{ shop_code = "U2TD844B2", order_type = 1.5, daily_number = 1 }
    end)
    assert.matches("order_type", err)
    err = raises_at_line(function()
      here(); c:outer_entry_order{ shop_code = "U2TD844B2", order_type = "2", daily_number = "one" }
    end)
    assert.matches("daily_number", err)
  end)

  it("raises when a method is called with . instead of :", function()
    local err = raises_at_line(function() here(); c.get_user_tel_by_code{ user_code = "U2TD844B2" } end)
    assert.matches("client:get_user_tel_by_code", err)
  end)

  it("raises when the argument is not a table", function()
    local err = raises_at_line(function() here(); c:get_user_tel_by_code("U2TD844B2") end)
    assert.matches("table", err)
  end)
end)

describe("kaifang.lingdian well-formed calls", function()
  it("accepts every order_type from 1 to 5, as a number or a string of digits", function()
    local t = recorder()
    local c = new_client(t)
    for i = 1, 5 do
      assert(c:outer_entry_order{ shop_code = "U2TD844B2", order_type = i, daily_number = i })
      assert(c:outer_entry_order{ shop_code = "U2TD844B2", order_type = tostring(i), daily_number = "1" })
    end
    assert.are.equal(10, #t.sent)
  end)

  it("accepts a number for a text parameter", function()
    local t = recorder()
    local c = new_client(t)
    assert(c:send_wechat_message{ tel = 13311112222, content = "hi", link = "https://x.cn" })
    assert.are.equal(1, #t.sent)
    assert.matches("tel=13311112222&", t.sent[1].body)
  end)
end)

describe("kaifang.lingdian.new", function()
  local good = { developer_code = "U2QHNB2w=", developer_key = "744ed968e7e1a4aebafa6f4888fced68" }
  local function with(changes)
    local o = {}
    for k, v in pairs(good) do o[k] = v end
    for k, v in pairs(changes) do o[k] = v end
    return o
  end

  it("builds a client from good options (the checks below are not refusing everything)", function()
    local c = lingdian.new(with{ base_url = "http://127.0.0.1:1/", timeout = 2 })
    assert.are.equal("http://127.0.0.1:1", c.base_url)
    assert.are.equal(2, c.timeout)
    c:close()
    c = lingdian.new(good)
    assert.are.equal("https://www.0xiao.com", c.base_url)
    c:close()
  end)

  it("raises on a missing or empty developer_code", function()
    local err = raises_at_line(function() here(); lingdian.new(with{ developer_code = false }) end)
    assert.matches("developer_code", err)
    local o = with{}
    o.developer_code = nil
    err = raises_at_line(function() here(); lingdian.new(o) end)
    assert.matches("developer_code", err)
    err = raises_at_line(function() here(); lingdian.new(with{ developer_code = "" }) end)
    assert.matches("developer_code", err)
  end)

  it("raises on a missing or empty developer_key, without echoing a key", function()
    local o = with{}
    o.developer_key = nil
    local err = raises_at_line(function() here(); lingdian.new(o) end)
    assert.matches("developer_key", err)
    err = raises_at_line(function() here(); lingdian.new(with{ developer_key = "" }) end)
    assert.matches("developer_key", err)
    err = raises_at_line(function() here(); lingdian.new(with{ developer_key = 12345 }) end)
    assert.matches("developer_key", err)
    assert.is_nil(err:find("12345", 1, true))
  end)

  it("raises on a bad base_url", function()
    for _, bad in ipairs({ "www.0xiao.com", "ftp://www.0xiao.com", "http://", "https:///x", 42 }) do
      local err = raises_at_line(function() here(); lingdian.new(with{ base_url = bad }) end)
      assert.matches("base_url", err)
    end
  end)

  it("raises on a negative, zero or non-numeric timeout", function()
    for _, bad in ipairs({ -1, 0, "15" }) do
      local err = raises_at_line(function() here(); lingdian.new(with{ timeout = bad }) end)
      assert.matches("timeout", err)
    end
    local err = raises_at_line(function() here(); lingdian.new(with{ connect_timeout = -2 }) end)
    assert.matches("connect_timeout", err)
  end)

  it("raises on a concurrency that is not a whole number from 1 to 4096, and defaults it to 16", function()
    for _, bad in ipairs({ 0, 1.5, 4097, "16", 0 / 0 }) do
      local err = raises_at_line(function() here(); lingdian.new(with{ concurrency = bad }) end)
      assert.matches("option 'concurrency' must be a whole number from 1 to 4096", err)
    end
    assert.are.equal(16, lingdian.new(with{ transport = recorder() }).concurrency)
    assert.are.equal(4, lingdian.new(with{ transport = recorder(), concurrency = 4 }).concurrency)
  end)

  it("raises on options that are not a table, a bad clock or a bad transport", function()
    raises_at_line(function() here(); lingdian.new("U2QHNB2w=") end)
    local err = raises_at_line(function() here(); lingdian.new(with{ clock = 5 }) end)
    assert.matches("clock", err)
    err = raises_at_line(function() here(); lingdian.new(with{ transport = {} }) end)
    assert.matches("transport", err)
  end)
end)

describe("one deadline per call", function()
  local core = require "kaifang.core"

  -- A transport that refuses every call at once, as a platform that is down would: retryable.
  local function refusing()
    local t = { sent = {} }
    function t:request(req)
      self.sent[#self.sent + 1] = { timeout = req.timeout, deadline = req.deadline, at = core.monotonic() }
      return nil, { kind = "transport", message = "connection refused" }
    end
    return t
  end

  it("spends the client's timeout across every attempt and backoff, and gives each attempt only what is left", function()
    local t = refusing()
    local c = lingdian.new{ developer_code = "U2QHNB2w=", developer_key = "744ed968e7e1a4aebafa6f4888fced68",
                            transport = t, timeout = 0.5, max_attempts = 100 }
    local t0 = core.monotonic()
    local res, err = c:get_user_tel_by_code{ user_code = "U2TD844B2" }
    local spent = core.monotonic() - t0
    assert.is_nil(res)
    assert.are.equal("transport", err.kind) -- the last attempt's own failure
    assert.is_true(#t.sent >= 2 and #t.sent < 100, #t.sent .. " attempts")
    assert.is_true(spent < 0.6, spent) -- no backoff that would end past the deadline
    for i, s in ipairs(t.sent) do
      assert.are.equal(t.sent[1].deadline, s.deadline)
      assert.is_true(s.timeout <= 0.5 and s.timeout > 0, s.timeout)
      assert.is_true(math.abs(s.deadline - s.at - s.timeout) < 0.01, i) -- the time left when it went
      if i > 1 then assert.is_true(s.timeout < t.sent[i - 1].timeout) end
    end
  end)

  it("takes a per-call timeout in place of the client's", function()
    local t = recorder()
    function t:request(req)
      self.sent[#self.sent + 1] = req
      return { status = 200, headers = {}, body = '{"code":100,"message":"ok","data":"13311112222"}' }
    end
    local c = new_client(t)
    assert(c:get_user_tel_by_code({ user_code = "U2TD844B2" }, { timeout = 0.25 }))
    assert.is_true(t.sent[1].timeout <= 0.25 and t.sent[1].timeout > 0.2, t.sent[1].timeout)
    assert(c:get_user_tel_by_code{ user_code = "U2TD844B2" })
    assert.is_true(t.sent[2].timeout > 14 and t.sent[2].timeout <= 15, t.sent[2].timeout)
  end)
end)

describe("kaifang.client.json_decode", function()
  local client = require "kaifang.client"
  it("gives whole numbers within 2^53 back as integers, nested too, and leaves the rest", function()
    local v = client.json_decode('{"code":104,"a":[1,2.5,{"b":-3}],"big":1e300,"edge":9007199254740992,"s":"7"}')
    assert.are.equal(104, v.code)
    assert.are.equal(1, v.a[1])
    assert.are.equal(2.5, v.a[2])
    assert.are.equal(-3, v.a[3].b)
    assert.are.equal(9007199254740992, v.edge)
    assert.are.equal("7", v.s)
    if math.type then -- LuaJIT has one number type
      assert.are.equal("integer", math.type(v.code))
      assert.are.equal("integer", math.type(v.a[1]))
      assert.are.equal("integer", math.type(v.a[3].b))
      assert.are.equal("integer", math.type(v.edge))
      assert.are.equal("float", math.type(v.a[2]))
      assert.are.equal("float", math.type(v.big))
      assert.are.equal("integer", math.type(client.json_decode("13311112222")))
      assert.are.equal("float", math.type(client.json_decode("1.5")))
    end
  end)
end)
