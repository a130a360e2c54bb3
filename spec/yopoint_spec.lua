-- Yopoint (友朋): what the client sends (pinned against strings-to-sign written out here and
-- digested by the md5sum CLI, never by kaifang.sign or the core), how replies map, argument
-- errors, and every gateway method, third-party payment included, against the sandbox.
local kaifang = require "kaifang"
local yopoint = require "kaifang.yopoint"
local sandbox = require "kaifang.sandbox"
local cjson = require "cjson"

local SPEC = "yopoint_spec.lua"
local APPID, SECRET = "930859529955", "5d0f3c8e2a7b4f19c6e1a0b9d8f7e6c5"
local SIGN_KEY = "9b8a7c6d5e4f30211f2e3d4c5b6a7980"

-- The digest of s by a command-line tool (md5sum, sha1sum), independent of kaifang.core.
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

local function parse_form(body)
  local t = {}
  for pair in (body .. "&"):gmatch("([^&]*)&") do
    if pair ~= "" then
      local k, v = pair:match("^([^=]*)=(.*)$")
      local function un(s) return (s:gsub("+", " "):gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)) end
      t[un(k)] = un(v)
    end
  end
  return t
end

-- A transport that records requests and answers with `reply` (a string or a function of req).
local function recorder(reply)
  local t = { sent = {} }
  function t:request(req)
    self.sent[#self.sent + 1] = req
    local body = type(reply) == "function" and reply(req) or reply or '{"error_code":0,"error_msg":"","data":{}}'
    if type(body) == "table" then return body end
    return { status = 200, headers = {}, body = body }
  end
  return t
end

local function fake_client(t, extra)
  local opts = { appid = APPID, app_secret = SECRET, sign_key = SIGN_KEY, transport = t,
                 clock = function() return 1556943545.748 end }
  for k, v in pairs(extra or {}) do opts[k] = v end
  return yopoint.new(opts)
end

local here, raises_at_line = require("spec.helpers.raises")(SPEC)

describe("kaifang.yopoint requests", function()
  it("signs the document's example exactly as sent (md5sum of the string written out here)", function()
    local t = recorder()
    local yp = fake_client(t)
    assert(yp:consumer_order_get{ ReceiptNo = "OD190425164650841431" })
    local req = t.sent[1]
    assert.are.equal("POST", req.method)
    assert.are.equal("https://api.yopoint.com/api/gateway/index", req.url)
    assert.are.equal("application/x-www-form-urlencoded", req.headers["Content-Type"])
    local p = parse_form(req.body)
    assert.are.same({
      appid = APPID, method = "consumer.order.get", biz_content = '{"ReceiptNo":"OD190425164650841431"}',
      version = "1.0.0", timestamp = "1556943545748", sign_type = "md5", sign = p.sign,
    }, p)
    local sts = 'appid=930859529955&biz_content={"ReceiptNo":"OD190425164650841431"}&method=consumer.order.get'
      .. "&sign_type=md5&timestamp=1556943545748&version=1.0.0&" .. SECRET
    assert.are.equal(cli("md5sum", sts), p.sign)
    assert.matches("^%x+$", p.sign)
    assert.are.equal(p.sign:lower(), p.sign)
  end)

  it("sends seconds with timestamp_unit = \"s\"", function()
    local t = recorder()
    assert(fake_client(t, { timestamp_unit = "s" }):api_test{})
    local p = parse_form(t.sent[1].body)
    assert.are.equal("1556943545", p.timestamp)
    assert.are.equal("{}", p.biz_content)
    local sts = "appid=930859529955&biz_content={}&method=api.test&sign_type=md5&timestamp=1556943545&version=1.0.0&" .. SECRET
    assert.are.equal(cli("md5sum", sts), p.sign)
  end)

  it("writes biz_content as compact JSON: sorted keys, '/' plain, integers whole, PascalCase untouched", function()
    local t = recorder()
    local yp = fake_client(t)
    assert(yp:cabinet_order_list{
      Page = 1, PageSize = 20.0, StartTime = "2024-01-01 00:00:00", TID = "YP/01",
      Big = 9007199254740993, Price = 12.5, Ok = true, Nothing = cjson.null,
      Items = { { ProductId = "P1", Num = 2 } }, Empty = {}, List = yopoint.array(), Text = "引号\"\\/",
    })
    local biz = parse_form(t.sent[1].body).biz_content
    assert.are.equal('{"Big":9007199254740993,"Empty":{},"Items":[{"Num":2,"ProductId":"P1"}],"List":[],'
      .. '"Nothing":null,"Ok":true,"Page":1,"PageSize":20,"Price":12.5,"StartTime":"2024-01-01 00:00:00",'
      .. '"TID":"YP/01","Text":"引号\\"\\\\/"}', biz)
    local decoded = cjson.decode(biz)
    assert.are.equal("YP/01", decoded.TID)
    assert.are.equal('引号"\\/', decoded.Text)
  end)

  it("sends a biz_content string byte for byte, and signs those bytes", function()
    local t = recorder()
    local yp = fake_client(t)
    local raw = '{ "ReceiptNo" : "OD1",  "Z":1 }'
    assert(yp:call("consumer.order.get", raw))
    local p = parse_form(t.sent[1].body)
    assert.are.equal(raw, p.biz_content)
    local sts = "appid=930859529955&biz_content=" .. raw .. "&method=consumer.order.get&sign_type=md5"
      .. "&timestamp=1556943545748&version=1.0.0&" .. SECRET
    assert.are.equal(cli("md5sum", sts), p.sign)
  end)

  it("call reaches any method, and marks an unknown one as acting", function()
    local t = recorder('{"error_code":0,"error_msg":"","data":{"X":1}}')
    local yp = fake_client(t)
    local res, err = yp:call("activity.voucher.exchange", { Code = "A" })
    assert.is_nil(err)
    assert.are.same({ X = 1 }, res.data)
    assert.are.equal(0, res.error_code)
    assert.are.equal("activity.voucher.exchange", parse_form(t.sent[1].body).method)
  end)
end)

describe("kaifang.yopoint replies", function()
  it("success returns the whole reply and nothing else; whole numbers come back as integers", function()
    local yp = fake_client(recorder('{"error_code":0,"error_msg":"","data":{"Total":2,"Phone":13311112222}}'))
    local n = select("#", yp:cabinet_list{})
    assert.are.equal(1, n)
    local res = yp:cabinet_list{}
    assert.are.equal(2, res.data.Total)
    assert.are.equal("13311112222", tostring(res.data.Phone))
    assert.are.equal("", res.error_msg)
  end)

  it("success without data has an empty table at data", function()
    local yp = fake_client(recorder('{"error_code":0,"error_msg":"","data":null}'))
    assert.are.same({}, assert(yp:api_test{}).data)
  end)

  it("error_code != 0: kind platform, code and message as the platform gave them", function()
    local yp = fake_client(recorder('{"error_code":50004,"error_msg":"ERR_NONE_STOCK","data":{}}'))
    local res, err = yp:cabinet_open_door{ TID = "YP0004" }
    assert.is_nil(res)
    assert.are.equal("yopoint", err.platform)
    assert.are.equal("platform", err.kind)
    assert.are.equal(50004, err.code)
    assert.are.equal("ERR_NONE_STOCK", err.message)
    assert.is_false(err.retryable)
    assert.are.equal("kaifang.yopoint: platform error 50004: ERR_NONE_STOCK", tostring(err))
  end)

  it("a string error_code is kept as a string", function()
    local yp = fake_client(recorder('{"error_code":"MISSING_PARAMS_TID","error_msg":"缺少参数TID"}'))
    local _, err = yp:cabinet_product_stock{}
    assert.are.equal("MISSING_PARAMS_TID", err.code)
    assert.are.equal("缺少参数TID", err.message)
  end)

  it("a reply without error_code is a decode error; an HTTP error page is kind http", function()
    local _, err = fake_client(recorder('{"data":{}}')):cabinet_list{}
    assert.are.equal("decode", err.kind)
    local _, err2 = fake_client(recorder({ status = 502, headers = {}, body = "bad gateway" })):cabinet_list{}
    assert.are.equal("http", err2.kind)
    assert.are.equal(502, err2.http_status)
    assert.is_true(err2.retryable)
    local _, err3 = fake_client(recorder({ status = 502, headers = {}, body = "bad gateway" })):cabinet_open_door{ TID = "X" }
    assert.is_false(err3.retryable) -- opening a door is never repeated blindly
  end)
end)

describe("kaifang.yopoint argument errors raise at the caller's line", function()
  local t, yp
  before_each(function()
    t = recorder()
    yp = fake_client(t)
  end)
  after_each(function() assert.are.equal(0, #t.sent, "a misused call was sent") end)

  it("consumer_order_get without ReceiptNo", function()
    local err = raises_at_line(function() here(); yp:consumer_order_get{} end)
    assert.matches("'ReceiptNo'", err)
  end)

  it("biz_content that JSON cannot hold", function()
    assert.matches("function", raises_at_line(function() here(); yp:cabinet_list{ F = print } end))
    assert.matches("mixed", raises_at_line(function() here(); yp:cabinet_list{ 1, A = 2 } end))
    local cyc = {}
    cyc.self = cyc
    assert.matches("nested", raises_at_line(function() here(); yp:cabinet_list(cyc) end))
    assert.matches("JSON", raises_at_line(function() here(); yp:cabinet_list("not json") end))
    assert.matches("table", raises_at_line(function() here(); yp:cabinet_list(42) end))
  end)

  it("call with a bad method name", function()
    assert.matches("method", raises_at_line(function() here(); yp:call("Cabinet List", {}) end))
    assert.matches("method", raises_at_line(function() here(); yp:call(nil, {}) end))
  end)

  it("pay_notify: missing fields, bad status, no SignKey", function()
    local args = { notify_url = "http://x/n", receipt_no = "R", trade_no = "T", trade_status = 1, price = 100 }
    assert.matches("'price'", raises_at_line(function() here(); yp:pay_notify{ notify_url = "http://x/n", receipt_no = "R", trade_no = "T", trade_status = 1 } end))
    assert.matches("trade_status", raises_at_line(function() here(); yp:pay_notify{ notify_url = "http://x/n", receipt_no = "R", trade_no = "T", trade_status = 2, price = 1 } end))
    assert.matches("notify_url", raises_at_line(function() here(); yp:pay_notify{ notify_url = "ftp://x", receipt_no = "R", trade_no = "T", trade_status = 1, price = 1 } end))
    local no_key = yopoint.new{ appid = APPID, app_secret = SECRET, transport = t }
    assert.matches("sign_key", raises_at_line(function() here(); no_key:pay_notify(args) end))
    assert.matches("sign_key", raises_at_line(function() here(); no_key:verify_pay_redirect("a=b") end))
  end)

  it("new: missing appid or secret, bad timestamp_unit", function()
    assert.matches("appid", raises_at_line(function() here(); yopoint.new{ app_secret = SECRET } end))
    assert.matches("app_secret", raises_at_line(function() here(); yopoint.new{ appid = APPID } end))
    assert.matches("timestamp_unit", raises_at_line(function() here(); yopoint.new{ appid = APPID, app_secret = SECRET, timestamp_unit = "us" } end))
  end)

  it("keeps both secrets out of the client table and of its string", function()
    local s = tostring(yp)
    assert.matches("930859529955", s)
    assert.is_nil(s:find(SECRET, 1, true))
    for k, v in pairs(yp) do
      assert.are_not.equal(SECRET, v, k)
      assert.are_not.equal(SIGN_KEY, v, k)
    end
  end)
end)

describe("kaifang.yopoint pay_notify (request side)", function()
  it("signs receipt_no, trade_no, trade_status, trade_rawdata, timestamp (seconds) with the SignKey; price unsigned", function()
    local t = recorder({ status = 200, headers = {}, body = " success\n" })
    local yp = fake_client(t)
    assert.are.same({ data = "success" }, yp:pay_notify{ notify_url = "https://api.yopoint.com/pay/notify?x=1",
                                                         receipt_no = "OD1", trade_no = "T-9", trade_status = 1, price = 650 })
    local req = t.sent[1]
    assert.are.equal("https://api.yopoint.com/pay/notify?x=1", req.url)
    local p = parse_form(req.body)
    assert.are.equal("650", p.price)
    assert.are.equal("1556943545", p.timestamp)
    assert.are.equal("", p.trade_rawdata)
    local sts = "receipt_no=OD1&timestamp=1556943545&trade_no=T-9&trade_rawdata=&trade_status=1&" .. SIGN_KEY
    assert.are.equal(cli("md5sum", sts), p.sign)
  end)

  it("anything but `success` is a failure, which may be sent again", function()
    local yp = fake_client(recorder({ status = 200, headers = {}, body = "fail: bad sign" }))
    local ok, err = yp:pay_notify{ notify_url = "http://x/n", receipt_no = "R", trade_no = "T", trade_status = -1,
                                   trade_rawdata = { channel = "bank" }, price = 1 }
    assert.is_nil(ok)
    assert.are.equal("platform", err.kind)
    assert.are.equal("fail: bad sign", err.message)
    assert.is_true(err.retryable)
  end)
end)

describe("kaifang.yopoint against the sandbox", function()
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

  local function platform_error(err, code, message)
    assert.is_table(err)
    assert.are.equal("platform", err.kind)
    assert.are.equal(code, err.code)
    assert.are.equal(message, err.message)
  end

  local function orders() return assert(yp:cabinet_order_list{ Page = 1, PageSize = 50 }).data.List end

  it("api_test echoes the biz_content it received", function()
    local data = assert(yp:api_test{ Hello = "世界/1" }).data
    assert.are.equal('{"Hello":"世界/1"}', data.BizContent)
  end)

  it("cabinet_list pages through the cabinets", function()
    local data = assert(yp:cabinet_list{ Page = 1, PageSize = 3 }).data
    assert.are.equal(4, data.Total)
    assert.are.equal(3, #data.List)
    assert.are.equal("YP0001", data.List[1].TID)
    assert.are.equal(1, #assert(yp:cabinet_list{ Page = 2, PageSize = 3 }).data.List)
  end)

  it("cabinet_product_stock lists a cabinet's stock; no TID is MISSING_PARAMS_TID", function()
    local data = assert(yp:cabinet_product_stock{ TID = "YP0001" }).data
    assert.is_true(#data.List >= 1)
    assert.is_number(data.List[1].Stock)
    local _, err = yp:cabinet_product_stock{}
    platform_error(err, 50001, "MISSING_PARAMS_TID")
    local _, err2 = yp:cabinet_product_stock{ TID = "NOPE" }
    platform_error(err2, 50002, "ERR_CABINET_NOT_FOUND")
  end)

  it("cabinet_open_door opens a door; an empty cabinet is ERR_NONE_STOCK, an offline one ERR_DEVICE_OFFLINE", function()
    local data = assert(yp:cabinet_open_door{ TID = "YP0001", DoorNo = 2 }).data
    assert.are.equal("opened", data.Status)
    local doors = assert(sb:records("yopoint", "doors"))
    assert.are.equal(1, #doors)
    assert.are.equal(2, doors[1].DoorNo)
    local _, err = yp:cabinet_open_door{ TID = "YP0004" }
    platform_error(err, 50004, "ERR_NONE_STOCK")
    local _, err2 = yp:cabinet_open_door{ TID = "YP0003" }
    platform_error(err2, 50003, "ERR_DEVICE_OFFLINE")
  end)

  it("cabinet_order_list filters by time and cabinet; cabinet_order_get and consumer_order_get find one", function()
    local all = orders()
    assert.are.equal(4, #all)
    local one = assert(yp:cabinet_order_list{ TID = "YP0002" }).data.List
    assert.are.equal(1, #one)
    local future = assert(yp:cabinet_order_list{ StartTime = os.date("!%Y-%m-%d %H:%M:%S", os.time() + 8 * 3600 + 3600) }).data.List
    assert.are.equal(0, #future)
    local consumer = assert(yp:consumer_order_list{ Page = 1 }).data.List
    assert.are.equal(4, #consumer)
    local got = assert(yp:cabinet_order_get{ OrderNo = all[1].OrderNo }).data
    assert.are.equal(all[1].ReceiptNo, got.ReceiptNo)
    local c = assert(yp:consumer_order_get{ ReceiptNo = all[2].ReceiptNo }).data
    assert.are.equal(all[2].OrderNo, c.OrderNo)
    assert.are.equal("13311113333", c.Phone)
    local _, err = yp:consumer_order_get{ ReceiptNo = "OD000" }
    platform_error(err, 50005, "ERR_ORDER_NOT_FOUND")
  end)

  it("cabinet_order_refund_apply refunds part then the rest, then refuses", function()
    local o = orders()[1]
    local r = assert(yp:cabinet_order_refund_apply{ ReceiptNo = o.ReceiptNo, Amount = 200, Reason = "少一瓶" }).data
    assert.are.equal(200, r.Amount)
    local _, err = yp:cabinet_order_refund_apply{ ReceiptNo = o.ReceiptNo, Amount = o.Amount }
    platform_error(err, 50008, "ERR_REFUND_AMOUNT")
    assert(yp:cabinet_order_refund_apply{ OrderNo = o.OrderNo })
    local _, err2 = yp:cabinet_order_refund_apply{ ReceiptNo = o.ReceiptNo }
    platform_error(err2, 50007, "ERR_ORDER_REFUNDED")
    assert.are.equal(2, assert(yp:consumer_order_get{ ReceiptNo = o.ReceiptNo }).data.RefundStatus)
    assert.are.equal(2, #assert(sb:records("yopoint", "refunds")))
    local unpaid = orders()[4]
    local _, err3 = yp:cabinet_order_refund_apply{ ReceiptNo = unpaid.ReceiptNo }
    platform_error(err3, 50006, "ERR_ORDER_STATUS")
  end)

  it("cabinet_order_user_appeal records one appeal per order", function()
    local o = orders()[2]
    local a = assert(yp:cabinet_order_user_appeal{ ReceiptNo = o.ReceiptNo, Content = "门打不开" }).data
    assert.matches("^AP", a.AppealNo)
    local _, err = yp:cabinet_order_user_appeal{ ReceiptNo = o.ReceiptNo, Content = "again" }
    platform_error(err, 50009, "ERR_APPEAL_EXISTS")
    local _, err2 = yp:cabinet_order_user_appeal{ ReceiptNo = orders()[3].ReceiptNo }
    platform_error(err2, 50001, "MISSING_PARAMS_CONTENT")
  end)

  it("reads milliseconds, as the document's example and Postman script send; seconds with its timestamp_unit setting", function()
    local s = kaifang.yopoint.new{ appid = APPID, app_secret = SECRET, base_url = sb.url, timestamp_unit = "s" }
    platform_error(select(2, s:api_test{}), 40006, "ERR_TIMESTAMP")
    assert(sb:configure{ yopoint = { timestamp_unit = "s" } })
    assert(s:api_test{})
    platform_error(select(2, yp:api_test{}), 40006, "ERR_TIMESTAMP")
    assert(sb:configure{ yopoint = { strict = false } }) -- not strict: both, told apart by size
    assert(s:api_test{})
    assert(yp:api_test{})
    s:close()
    local ok, err = sb:configure{ yopoint = { timestamp_unit = "us" } }
    assert.is_nil(ok)
    assert.matches('timestamp_unit must be "ms" or "s"', err, 1, true)
  end)

  it("refuses an acting method sent twice with the same sign (ERR_REPEAT) and counts it; a repeated read passes", function()
    local t0 = require("kaifang.core").now()
    local fixed = kaifang.yopoint.new{ appid = APPID, app_secret = SECRET, base_url = sb.url, clock = function() return t0 end }
    assert(fixed:cabinet_list{})
    assert(fixed:cabinet_list{})
    assert(fixed:cabinet_open_door{ TID = "YP0001", DoorNo = 1 })
    platform_error(select(2, fixed:cabinet_open_door{ TID = "YP0001", DoorNo = 1 }), 40010, "ERR_REPEAT")
    fixed:close()
    assert.are.equal(1, #assert(sb:records("yopoint", "doors")))
    -- the same door again a moment later (another timestamp, so another sign): done, and counted
    local later = kaifang.yopoint.new{ appid = APPID, app_secret = SECRET, base_url = sb.url, clock = function() return t0 + 0.5 end }
    assert(later:cabinet_open_door{ TID = "YP0001", DoorNo = 1 })
    later:close()
    assert.are.equal(2, #assert(sb:records("yopoint", "doors")))
    local c = assert(sb:counters()).yopoint
    assert.are.equal(2, c.duplicates)
    assert.are.equal(1, c.refused)
    assert.matches("method=cabinet.open.door", assert(sb:records("yopoint", "duplicates"))[1].content, 1, true)
  end)

  it("refuses a wrong secret (ERR_SIGN), an unknown appid, a skewed clock, an unknown method", function()
    local bad = kaifang.yopoint.new{ appid = APPID, app_secret = "wrong-secret", base_url = sb.url }
    local _, err = bad:cabinet_list{}
    platform_error(err, 40005, "ERR_SIGN")
    assert.is_nil(tostring(err):find("wrong-secret", 1, true))
    bad:close()
    local who = kaifang.yopoint.new{ appid = "111", app_secret = SECRET, base_url = sb.url }
    local _, err2 = who:cabinet_list{}
    platform_error(err2, 40002, "ERR_APPID")
    who:close()
    local skewed = kaifang.yopoint.new{ appid = APPID, app_secret = SECRET, base_url = sb.url,
                                        clock = function() return os.time() - 3600 end }
    local _, err3 = skewed:cabinet_list{}
    platform_error(err3, 40006, "ERR_TIMESTAMP")
    skewed:close()
    local _, err4 = yp:call("no.such.method", {})
    platform_error(err4, 40008, "ERR_METHOD")
  end)

  it("ERR_FREQUENT past the configured rate is retryable", function()
    assert(sb:configure{ yopoint = { rate = 2 } })
    local refused
    for _ = 1, 10 do
      local data, err = yp:cabinet_list{}
      if not data then refused = err break end
    end
    assert(sb:configure{ yopoint = { rate = cjson.null } })
    platform_error(refused, 40007, "ERR_FREQUENT")
    assert.is_true(refused.retryable)
  end)

  it("examples/cabinet_delivery.lua enters each paid order once, however often it runs", function()
    local state = os.tmpname()
    local env = ("LUA_PATH=%q LUA_CPATH=%q KAIFANG_YOPOINT_URL=%s KAIFANG_LINGDIAN_URL=%s CABINET_POLL_ROUNDS=2 "
      .. "CABINET_POLL_INTERVAL=0 CABINET_DELIVERY_STATE=%s "):format(package.path, package.cpath, sb.url, sb.url, state)
    for _ = 1, 2 do
      local p = assert(io.popen(env .. "lua5.4 examples/cabinet_delivery.lua 2>&1"))
      local out = p:read("*a")
      assert.is_true(p:close(), out)
    end
    os.remove(state)
    local entered = assert(sb:records("lingdian", "orders"))
    assert.are.equal(2, #entered)
    assert.are.equal(0, assert(sb:counters()).lingdian.duplicates) -- no order entered twice
    assert.are.equal("U2TD844B2", entered[1].params.shop_code)
    assert.are.equal("U2SHOP001", entered[2].params.shop_code)
  end)

  describe("third-party payment", function()
    it("register, redirect, look up, pay, notify: the order is paid", function()
      assert(yp:operators_config_thirdpay_set{ PayUrl = "https://pay.example.com/yp", ServerUrl = "https://ops.example.com/notice",
                                               SignKey = SIGN_KEY })
      local order = assert(sb:admin("POST", "/_sandbox/yopoint/order", { TID = "YP0002", PayType = "thirdpay", Phone = "13311112222" }))
      assert.are.equal(0, order.PayStatus)
      local redirect = assert(sb:admin("POST", "/_sandbox/yopoint/pay_redirect", { ReceiptNo = order.ReceiptNo }))
      assert.matches("^https://pay%.example%.com/yp%?", redirect.url)
      -- the operator's pay page: check where the buyer came from, look the order up, take payment
      local r = assert(yp:verify_pay_redirect(redirect.url))
      assert.are.equal(order.ReceiptNo, r.receipt_no)
      local o = assert(yp:consumer_order_get{ ReceiptNo = r.receipt_no }).data
      assert(yp:pay_notify{ notify_url = r.notify_url, receipt_no = r.receipt_no, trade_no = "BANK-001",
                            trade_status = 1, trade_rawdata = { bank = "demo" }, price = o.Amount })
      local paid = assert(yp:consumer_order_get{ ReceiptNo = r.receipt_no }).data
      assert.are.equal(1, paid.PayStatus)
      assert.are.equal("BANK-001", paid.TradeNo)
      -- the same notice again is still success (idempotent), and the duplicate detector sees it;
      -- another trade for it is not
      assert(yp:pay_notify{ notify_url = r.notify_url, receipt_no = r.receipt_no, trade_no = "BANK-001",
                            trade_status = 1, trade_rawdata = { bank = "demo" }, price = o.Amount })
      local counted = assert(sb:counters()).yopoint
      assert.are.equal(1, counted.duplicates)
      assert.are.equal(0, counted.refused)
      local ok, err = yp:pay_notify{ notify_url = r.notify_url, receipt_no = r.receipt_no, trade_no = "BANK-002",
                                     trade_status = 1, price = o.Amount }
      assert.is_nil(ok)
      assert.are.equal("fail: order already paid", err.message)
    end)

    it("the sandbox refuses a notice with the wrong price or signed with the wrong SignKey", function()
      local order = assert(sb:admin("POST", "/_sandbox/yopoint/order", { TID = "YP0001", PayType = "thirdpay" }))
      local r = assert(yp:verify_pay_redirect(assert(sb:admin("POST", "/_sandbox/yopoint/pay_redirect", { ReceiptNo = order.ReceiptNo })).url))
      local _, err = yp:pay_notify{ notify_url = r.notify_url, receipt_no = r.receipt_no, trade_no = "T", trade_status = 1,
                                    price = order.Amount + 1 }
      assert.are.equal("fail: price does not match the order", err.message)
      local wrong = kaifang.yopoint.new{ appid = APPID, app_secret = SECRET, sign_key = "not-the-sign-key", base_url = sb.url }
      local _, err2 = wrong:pay_notify{ notify_url = r.notify_url, receipt_no = r.receipt_no, trade_no = "T", trade_status = 1,
                                        price = order.Amount }
      assert.are.equal("fail: bad sign", err2.message)
      wrong:close()
      local ms = kaifang.yopoint.new{ appid = APPID, app_secret = SECRET, sign_key = SIGN_KEY, base_url = sb.url,
                                      clock = function() return os.time() - 3600 end }
      local _, err3 = ms:pay_notify{ notify_url = r.notify_url, receipt_no = r.receipt_no, trade_no = "T", trade_status = 1,
                                     price = order.Amount }
      assert.are.equal("fail: bad timestamp", err3.message)
      ms:close()
      local failed = assert(yp:pay_notify{ notify_url = r.notify_url, receipt_no = r.receipt_no, trade_no = "T",
                                           trade_status = -1, price = order.Amount })
      assert.are.equal("success", failed.data)
      assert.are.equal(-1, assert(yp:consumer_order_get{ ReceiptNo = order.ReceiptNo }).data.PayStatus)
    end)

    it("verify_pay_redirect refuses a tampered, an old, and a wrongly keyed redirect", function()
      local order = assert(sb:admin("POST", "/_sandbox/yopoint/order", { TID = "YP0001", PayType = "thirdpay" }))
      local url = assert(sb:admin("POST", "/_sandbox/yopoint/pay_redirect", { ReceiptNo = order.ReceiptNo })).url
      local _, err = yp:verify_pay_redirect((url:gsub("receipt_no=OD", "receipt_no=XD")))
      assert.are.equal("signature", err.kind)
      local old = assert(sb:admin("POST", "/_sandbox/yopoint/pay_redirect", { ReceiptNo = order.ReceiptNo, age = 900 })).url
      local _, err2 = yp:verify_pay_redirect(old)
      assert.are.equal("stale", err2.kind)
      local other = kaifang.yopoint.new{ appid = APPID, app_secret = SECRET, sign_key = "another-key", base_url = sb.url }
      local _, err3 = other:verify_pay_redirect(url)
      assert.are.equal("signature", err3.kind)
      other:close()
    end)
  end)
end)
