-- Dakashi (大卡师): what the client sends (pinned against strings-to-sign written out here and
-- digested by the sha1sum CLI, never by kaifang.sign or the core), how replies map, argument
-- errors, callbacks, and every interface against the sandbox.
local kaifang = require "kaifang"
local dakashi = require "kaifang.dakashi"
local sandbox = require "kaifang.sandbox"
local cjson = require "cjson"

local SPEC = "dakashi_spec.lua"
local ID, SECRET = "iotacc108b7305fhzljeux0", "4c1e7b9a2d5f8e3b6a0c9d2f5e8b1a47"

local function cli(tool, s)
  local path = os.tmpname()
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
  local p = assert(io.popen(tool .. " " .. path))
  local out = p:read("*a")
  p:close()
  os.remove(path)
  return assert(out:match("^(%x+)"))
end

local function recorder(reply)
  local t = { sent = {} }
  function t:request(req)
    self.sent[#self.sent + 1] = req
    local body = reply or '{"errcode":0,"errmsg":"success","data":{"total_data_value":"10"}}'
    if type(body) == "table" then return body end
    return { status = 200, headers = {}, body = body }
  end
  return t
end

local function fake_client(t, extra)
  local opts = { client_id = ID, client_secret = SECRET, transport = t, clock = function() return 1487560009 end }
  for k, v in pairs(extra or {}) do opts[k] = v end
  return dakashi.new(opts)
end

local here, raises_at_line = require("spec.helpers.raises")(SPEC)

describe("kaifang.dakashi requests", function()
  it("signs the document's example call (sha1sum of the string written out here), JSON body", function()
    local t = recorder()
    local dk = fake_client(t)
    local res, err = dk:member_info{ serial_no = "87000001" }
    assert.is_nil(err)
    assert.are.equal("10", res.data.total_data_value)
    assert.are.equal("success", res.errmsg)
    local req = t.sent[1]
    assert.are.equal("POST", req.method)
    assert.are.equal("http://api.qwtong.me/v1/member/info", req.url)
    assert.are.equal("application/json", req.headers["Content-Type"])
    local sign = cli("sha1sum", "client_id=" .. ID .. "&serial_no=87000001&timestamp=1487560009" .. SECRET):upper()
    assert.are.equal('{"client_id":"' .. ID .. '","serial_no":"87000001","sign":"' .. sign .. '","timestamp":1487560009}', req.body)
  end)

  it("sends the id as app_id when configured that way, and signs it under that name", function()
    local t = recorder()
    local alt = dakashi.new{ app_id = ID, app_secret = SECRET, transport = t, clock = function() return 1487560009 end }
    assert(alt:member_info{ serial_no = "1" })
    local body = cjson.decode(t.sent[1].body)
    assert.are.equal(ID, body.app_id)
    assert.is_nil(body.client_id)
    assert.are.equal(cli("sha1sum", "app_id=" .. ID .. "&serial_no=1&timestamp=1487560009" .. SECRET):upper(), body.sign)
    local t2 = recorder()
    assert(fake_client(t2, { id_field = "app_id" }):user_info{})
    assert.are.equal(ID, cjson.decode(t2.sent[1].body).app_id)
  end)

  it("writes whole numbers as integers in both the body and the signature", function()
    local t = recorder()
    assert(fake_client(t):call("/v1/product/info", { product_id = 1001.0, page = 2 }, { idempotent = true }))
    local body = t.sent[1].body
    assert.matches('"product_id":1001,', body, 1, true)
    local sign = cli("sha1sum", "client_id=" .. ID .. "&page=2&product_id=1001&timestamp=1487560009" .. SECRET):upper()
    assert.are.equal(sign, cjson.decode(body).sign)
  end)

  it("sends an empty value and signs it as k=, as the document's PHP demo does (formatBizQueryParaMap filters nothing)", function()
    local t = recorder()
    assert(fake_client(t):product_info{ product_id = "" })
    local body = t.sent[1].body
    assert.matches('"product_id":"",', body, 1, true)
    local sign = cli("sha1sum", "client_id=" .. ID .. "&product_id=&timestamp=1487560009" .. SECRET):upper()
    assert.are.equal(sign, cjson.decode(body).sign)
  end)

  it("sends serial_no as a string (the document: \"serial_no|string|必须|卡号\"), even when given a number", function()
    local t = recorder()
    assert(fake_client(t):member_info{ serial_no = 87000001 })
    local sign = cli("sha1sum", "client_id=" .. ID .. "&serial_no=87000001&timestamp=1487560009" .. SECRET):upper()
    assert.are.equal('{"client_id":"' .. ID .. '","serial_no":"87000001","sign":"' .. sign .. '","timestamp":1487560009}',
      t.sent[1].body)
  end)

  it("covers every documented path", function()
    local t = recorder()
    local dk = fake_client(t)
    local calls = {
      { "member_product_info", { serial_no = "1" }, "/v1/member/product/info" },
      { "product_info", {}, "/v1/product/info" },
      { "user_info", {}, "/v1/user/info" },
      { "prepaid_card_info", { card_no = "PC1" }, "/v1/prepaid/card/info" },
      { "order_info", { order_no = "DK1" }, "/v1/order/info" },
      { "member_gprs_reset", { serial_no = "1" }, "/v1/member/gprs/reset" },
      { "send_message", { serial_no = "1", content = "hi" }, "/v1/send/message" },
      { "member_custom_no", { serial_no = "1", custom_no = "A" }, "/v1/member/custom_no" },
    }
    for i, c in ipairs(calls) do
      assert(dk[c[1]](dk, c[2]))
      assert.are.equal("http://api.qwtong.me" .. c[3], t.sent[i].url)
    end
  end)
end)

describe("kaifang.dakashi replies", function()
  it("errcode != 0 is a platform error; only 55006 (too frequent) is retryable", function()
    local _, err = fake_client(recorder('{"errcode":55006,"errmsg":"请求过于频繁"}')):member_info{ serial_no = "1" }
    assert.are.equal("platform", err.kind)
    assert.are.equal(55006, err.code)
    assert.are.equal("请求过于频繁", err.message)
    assert.is_true(err.retryable)
    local _, err2 = fake_client(recorder('{"errcode":55003,"errmsg":"签名错误"}')):member_info{ serial_no = "1" }
    assert.is_false(err2.retryable)
    assert.are.equal("kaifang.dakashi: platform error 55003: 签名错误", tostring(err2))
    local _, err3 = fake_client(recorder('{"errcode":50000,"errmsg":"未知错误"}')):member_gprs_reset{ serial_no = "1" }
    assert.are.equal(50000, err3.code)
    assert.is_false(err3.retryable)
  end)

  it("a reply without errcode is a decode error", function()
    local _, err = fake_client(recorder('{"data":[]}')):user_info{}
    assert.are.equal("decode", err.kind)
  end)
end)

describe("kaifang.dakashi argument errors raise at the caller's line", function()
  local t, dk
  before_each(function()
    t = recorder()
    dk = fake_client(t)
  end)
  after_each(function() assert.are.equal(0, #t.sent, "a misused call was sent") end)

  it("missing required parameters", function()
    assert.matches("'serial_no'", raises_at_line(function() here(); dk:member_info{} end))
    assert.matches("'content'", raises_at_line(function() here(); dk:send_message{ serial_no = "1" } end))
    assert.matches("'custom_no'", raises_at_line(function() here(); dk:member_custom_no{ serial_no = "1" } end))
  end)

  it("an unknown parameter to the documented interface, a reserved one anywhere", function()
    assert.matches("unknown parameter 'serial'", raises_at_line(function() here(); dk:member_info{ serial_no = "1", serial = "x" } end))
    assert.matches("'timestamp'", raises_at_line(function() here(); dk:product_info{ timestamp = 1 } end))
    assert.matches("'sign'", raises_at_line(function() here(); dk:call("/v1/x", { sign = "x" }) end))
  end)

  it("fractions and tables (their signing would be ambiguous), an empty required parameter", function()
    assert.matches("whole number", raises_at_line(function() here(); dk:product_info{ product_id = 1.5 } end))
    assert.matches("table", raises_at_line(function() here(); dk:product_info{ product_id = {} } end))
    assert.matches("missing required parameter 'serial_no'", raises_at_line(function() here(); dk:member_info{ serial_no = "" } end))
  end)

  it("new: either spelling, but not two different ids; a bad id_field; a bad path", function()
    assert.matches("disagree", raises_at_line(function() here(); dakashi.new{ client_id = "a", app_id = "b", client_secret = "s" } end))
    assert.matches("client_secret", raises_at_line(function() here(); dakashi.new{ client_id = "a" } end))
    assert.matches("id_field", raises_at_line(function() here(); dakashi.new{ client_id = "a", client_secret = "s", id_field = "id" } end))
    assert.matches("path", raises_at_line(function() here(); dk:call("v1/member/info", {}) end))
  end)

  it("keeps the secret out of the client table and of its string", function()
    assert.is_nil(tostring(dk):find(SECRET, 1, true))
    for k, v in pairs(dk) do assert.are_not.equal(SECRET, v, k) end
  end)
end)

describe("kaifang.dakashi.parse_callback", function()
  it("reads a recharge and an on/off callback", function()
    local cb = assert(dakashi.parse_callback('{"action_type":1,"serial_no":"87000001","amount":500,"order_no":"DK1"}'))
    assert.are.equal("recharge", cb.action)
    assert.are.equal(1, cb.action_type)
    assert.are.equal(500, cb.amount)
    local sw = assert(dakashi.parse_callback({ action_type = "2", serial_no = "1", status = 0 }))
    assert.are.equal("switch", sw.action)
    assert.are.equal(2, sw.action_type)
  end)

  it("refuses what is not a callback", function()
    local _, err = dakashi.parse_callback("not json")
    assert.are.equal("decode", err.kind)
    assert.are.equal("dakashi", err.platform)
    local _, err2 = dakashi.parse_callback('{"action_type":3}')
    assert.matches("action_type", err2.message)
  end)

  it("has the reply the platform expects", function()
    assert.are.same({ errcode = 0, errmsg = "success" }, cjson.decode(dakashi.callback_reply))
  end)
end)

describe("kaifang.dakashi against the sandbox", function()
  local sb, dk

  setup(function()
    sb = sandbox.start{ port = 0 }
    dk = kaifang.dakashi.new{ client_id = ID, client_secret = SECRET, base_url = sb.url, timeout = 5 }
  end)
  teardown(function()
    if dk then dk:close() end
    if sb then sb:stop() end
  end)
  before_each(function() assert(sb:reset()) end)

  local function platform_error(err, code)
    assert.is_table(err)
    assert.are.equal("platform", err.kind)
    assert.are.equal(code, err.code)
  end

  it("member_info: usage of a card", function()
    local info = assert(dk:member_info{ serial_no = "1410139903" }).data
    assert.are.equal("10240", info.total_data_value)
    assert.are.equal("8806.40", info.used_data_value)
    assert.are.equal("8986112025304", info.iccid)
    platform_error(select(2, dk:member_info{ serial_no = "99999999" }), 55004)
  end)

  it("member_product_info: the card's packages", function()
    local pkgs = assert(dk:member_product_info{ serial_no = "1410139904" }).data
    assert.are.equal(1, #pkgs)
    assert.are.equal(1002, pkgs[1].product_id)
    assert.matches("^%d%d%d%d%-%d%d%-%d%d %d%d:%d%d:%d%d$", pkgs[1].expire_time)
  end)

  it("product_info, user_info, prepaid_card_info, order_info", function()
    assert.are.equal(3, #assert(dk:product_info{}).data)
    assert.are.equal("加油包 1GB", assert(dk:product_info{ product_id = 1003 }).data.product_name)
    platform_error(select(2, dk:product_info{ product_id = 9 }), 55010)
    assert.are.equal(3, assert(dk:user_info{}).data.card_count)
    assert.are.equal(0, assert(dk:prepaid_card_info{ card_no = "PC20240001" }).data.status)
    platform_error(select(2, dk:prepaid_card_info{ card_no = "PC0" }), 55012)
    local orders = assert(sb:records("dakashi", "orders"))
    assert.are.equal("87000001", assert(dk:order_info{ order_no = orders[1].order_no }).data.serial_no)
    platform_error(select(2, dk:order_info{ order_no = "DK0" }), 55011)
  end)

  it("member_gprs_reset, send_message, member_custom_no change the world", function()
    assert.are.equal("success", assert(dk:member_gprs_reset{ serial_no = "87000001" }).data.result)
    assert.are.equal(1, #assert(sb:records("dakashi", "resets")))
    assert.matches("^SM", assert(dk:send_message{ serial_no = "87000001", content = "流量快用完了" }).data.msg_id)
    assert.are.equal("流量快用完了", assert(sb:records("dakashi", "messages"))[1].content)
    platform_error(select(2, dk:send_message{ serial_no = "87000001", content = string.rep("长", 71) }), 55013)
    assert(dk:member_custom_no{ serial_no = "87000001", custom_no = "ROOM-301" })
    assert.are.equal("ROOM-301", assert(dk:member_info{ serial_no = "87000001" }).data.custom_no)
    platform_error(select(2, dk:member_custom_no{ serial_no = "1410139903", custom_no = "ROOM-301" }), 55014)
  end)

  it("call reaches a path; the app_id spelling is accepted too", function()
    local alt = kaifang.dakashi.new{ app_id = ID, app_secret = SECRET, base_url = sb.url }
    assert.are.equal("1410139904", assert(alt:call("/v1/member/info", { serial_no = "1410139904" })).data.msisdn)
    alt:close()
  end)

  it("refuses an unknown id (55001), a wrong secret (55003), a skewed clock (55005)", function()
    local who = kaifang.dakashi.new{ client_id = "nobody", client_secret = SECRET, base_url = sb.url }
    platform_error(select(2, who:user_info{}), 55001)
    who:close()
    local bad = kaifang.dakashi.new{ client_id = ID, client_secret = "wrong", base_url = sb.url }
    local _, err = bad:user_info{}
    platform_error(err, 55003)
    assert.is_nil(tostring(err):find("wrong", 1, true))
    bad:close()
    local skewed = kaifang.dakashi.new{ client_id = ID, client_secret = SECRET, base_url = sb.url,
                                        clock = function() return os.time() - 301 - 5 end }
    platform_error(select(2, skewed:user_info{}), 55005)
    skewed:close()
  end)

  it("an IP not on the whitelist (55002)", function()
    assert(sb:configure{ dakashi = { whitelist = { "10.0.0.1" } } })
    local _, err = dk:user_info{}
    assert(sb:configure{ dakashi = { whitelist = cjson.null } })
    platform_error(err, 55002)
    assert(dk:user_info{})
  end)

  it("too frequent (55006) past the configured rate, retryable", function()
    assert(sb:configure{ dakashi = { rate = 2 } })
    local refused
    for _ = 1, 10 do
      local data, err = dk:user_info{}
      if not data then refused = err break end
    end
    assert(sb:configure{ dakashi = { rate = cjson.null } })
    platform_error(refused, 55006)
    assert.is_true(refused.retryable)
  end)

  it("examples/card_reminders.lua reminds the two cards that need it", function()
    local env = ("LUA_PATH=%q LUA_CPATH=%q KAIFANG_DAKASHI_URL=%s KAIFANG_LINGDIAN_URL=%s "):format(
      package.path, package.cpath, sb.url, sb.url)
    local p = assert(io.popen(env .. "lua5.4 examples/card_reminders.lua 2>&1"))
    local out = p:read("*a")
    assert.is_true(p:close(), out)
    local sent = assert(sb:records("lingdian", "reminders"))
    assert.are.equal(2, #sent)
    assert.are.equal(0, assert(sb:counters()).lingdian.duplicates) -- no reminder sent twice
    assert.are.equal("12345678910", sent[1].params.tel) -- the developer's phone, not a card user's
    assert.are.equal("1410139903", sent[1].params.msisdn)
    assert.are.equal("8986112025305", sent[2].params.iccid)
  end)

  -- A request written and signed here (sorted k=v, the secret appended, sha1sum), sent as given.
  -- drop_empty signs the way the project once did, leaving empty values out.
  local function raw(path, fields, drop_empty)
    local keys = {}
    for k, v in pairs(fields) do
      if not (drop_empty and v == "") then keys[#keys + 1] = k end
    end
    table.sort(keys)
    local parts = {}
    for i, k in ipairs(keys) do parts[i] = k .. "=" .. tostring(fields[k]) end
    fields.sign = cli("sha1sum", table.concat(parts, "&") .. SECRET):upper()
    local status, body = sb:request("POST", path, cjson.encode(fields), { ["Content-Type"] = "application/json" })
    assert.are.equal(200, status)
    fields.sign = nil
    return cjson.decode(body)
  end

  describe("the sandbox is as strict as the platform", function()
    it("signs empty values as the document's PHP demo does: kept as k=, so dropping them is 55003 签名错误", function()
      local kept = raw("/v1/product/info", { client_id = ID, timestamp = os.time(), product_id = "" })
      assert.are.equal(0, kept.errcode)
      assert.are.equal(3, #kept.data)
      local dropped = raw("/v1/product/info", { client_id = ID, timestamp = os.time(), product_id = "" }, true)
      assert.are.same({ errcode = 55003, errmsg = "签名错误" }, dropped)
      -- and the client's empty value goes through
      assert.are.equal(3, #assert(dk:product_info{ product_id = "" }).data)
    end)

    it("refuses the undocumented types (timestamp int, serial_no string) and unknown parameters; not when strict is off", function()
      local function member(fields) return raw("/v1/member/info", fields) end
      local r = member({ client_id = ID, timestamp = tostring(os.time()), serial_no = "87000001" })
      assert.are.same({ errcode = 55008, errmsg = "参数格式错误：timestamp 须为 integer" }, r)
      r = member({ client_id = ID, timestamp = os.time(), serial_no = 87000001 })
      assert.are.same({ errcode = 55008, errmsg = "参数格式错误：serial_no 须为 string" }, r)
      r = member({ client_id = ID, timestamp = os.time(), serial_no = "87000001", extra = "" })
      assert.are.same({ errcode = 55008, errmsg = "参数格式错误：未知参数 extra" }, r)
      assert(sb:configure{ dakashi = { strict = false } })
      assert.are.equal(0, member({ client_id = ID, timestamp = tostring(os.time()), serial_no = 87000001, extra = "" }).errcode)
    end)

    it("admits loopback only and limits the rate by default", function()
      local config = assert(sb:admin("GET", "/_sandbox/config")).dakashi
      assert.are.same({ "127.0.0.1", "::1" }, config.whitelist)
      assert.are.equal(20, config.rate)
      assert(dk:user_info{}) -- from 127.0.0.1
      local refused
      for _ = 1, 25 do
        local data, err = dk:member_info{ serial_no = "87000001" }
        if not data then refused = err break end
      end
      platform_error(refused, 55006)
    end)

    it("refuses a replayed action (55015), counts it and any other double send; a repeated read passes", function()
      local t0 = os.time()
      local fixed = kaifang.dakashi.new{ client_id = ID, client_secret = SECRET, base_url = sb.url, clock = function() return t0 end }
      assert(fixed:member_info{ serial_no = "87000001" })
      assert(fixed:member_info{ serial_no = "87000001" }) -- the same signed read again: harmless
      assert(fixed:send_message{ serial_no = "87000001", content = "流量快用完了" })
      local _, err = fixed:send_message{ serial_no = "87000001", content = "流量快用完了" } -- the same signed request
      platform_error(err, 55015)
      assert.are.equal("重复请求", err.message)
      fixed:close()
      assert.are.equal(1, #assert(sb:records("dakashi", "messages")))
      -- a second send in another second carries another sign: done, and still counted
      local later = kaifang.dakashi.new{ client_id = ID, client_secret = SECRET, base_url = sb.url, clock = function() return t0 + 1 end }
      assert(later:send_message{ serial_no = "87000001", content = "流量快用完了" })
      later:close()
      local c = assert(sb:counters()).dakashi
      assert.are.equal(2, c.duplicates)
      assert.are.equal(1, c.refused)
      local dups = assert(sb:records("dakashi", "duplicates"))
      assert.are.equal(1, #dups)
      assert.are.equal("/v1/send/message", dups[1].path)
      assert.are.equal(3, dups[1].count)
    end)
  end)

  it("the sandbox refuses a body that is not JSON", function()
    local status, body = sb:request("POST", "/v1/member/info", "client_id=" .. ID, { ["Content-Type"] = "application/x-www-form-urlencoded" })
    assert.are.equal(200, status)
    assert.are.equal(55008, cjson.decode(body).errcode)
  end)
end)
