-- Yopoint (友朋) operator open platform as the sandbox plays it: the one gateway with its common
-- parameters, the MD5 scheme with "&" and the app secret, a timestamp window, and a small world
-- of self-service cabinets (stock, doors), orders, refunds and appeals. It also plays Yopoint's
-- side of third-party payment (the signed redirect to the operator's PayUrl, and the notify_url
-- the operator reports payments to, checked with the SignKey) and of order notices to the
-- operator. Everything beyond the document (error codes, reply fields, the notice's method name)
-- is the sandbox's own invention, listed in the README ("What the documents leave open").
local core = require "kaifang.core" -- digests
local util = require "kaifang.sandbox.util"

local M = {}

M.name = "yopoint"
M.GATEWAY, M.NOTIFY = "/api/gateway/index", "/api/thirdpay/notify"

-- window: seconds a timestamp may be from the sandbox's clock; rate: admitted calls per second
-- per appid (nil: unlimited); callback_timeout: seconds the sandbox waits on a receiver;
-- timestamp_unit: the gateway's unit, "ms" (the document's example and Postman script) or "s"
-- (its parameter table); strict: only that unit is read (not strict: both, told apart by size),
-- and an acting method's replay is refused.
M.defaults = { window = 300, rate = nil, callback_timeout = 3, timestamp_unit = "ms", strict = true }
local SETTINGS = { window = true, rate = true, callback_timeout = true, timestamp_unit = true, strict = true }

function M.check_setting(key, value)
  if not SETTINGS[key] then return nil, "unknown yopoint setting '" .. tostring(key) .. "'" end
  if key == "rate" and value == nil then return true end
  if key == "strict" then
    if type(value) ~= "boolean" then return nil, "yopoint.strict must be true or false" end
    return true
  end
  if key == "timestamp_unit" then
    if value ~= "ms" and value ~= "s" then return nil, 'yopoint.timestamp_unit must be "ms" or "s"' end
    return true
  end
  if type(value) ~= "number" or value < 0 then return nil, "yopoint." .. key .. " must be a number >= 0" end
  return true
end

---------------------------------------------------------------------------- seeded world

local APPID = "930859529955" -- the document's example AppID
local OPERATORS = {
  [APPID] = {
    name = "示例运营商",
    secret = "5d0f3c8e2a7b4f19c6e1a0b9d8f7e6c5",
    sign_key = "9b8a7c6d5e4f30211f2e3d4c5b6a7980", -- the thirdpay SignKey
    pay_url = "https://pay.example.invalid/yopoint/pay",
  },
}

local PRODUCTS = {
  P1001 = { name = "农夫山泉 550ml", price = 200 },
  P1002 = { name = "可口可乐 330ml", price = 300 },
  P1003 = { name = "鸡蛋火腿三明治", price = 1200 },
  P1004 = { name = "原味酸奶", price = 650 },
}

local CABINETS = { -- TID -> cabinet; stock: ProductId -> count
  YP0001 = { name = "一号柜", address = "图书馆一楼大厅", online = true, doors = 2,
             stock = { P1001 = 12, P1002 = 8, P1003 = 5, P1004 = 6 } },
  YP0002 = { name = "二号柜", address = "第三食堂门口", online = true, doors = 1,
             stock = { P1001 = 20, P1003 = 3 } },
  YP0003 = { name = "三号柜", address = "体育馆东门", online = false, doors = 1, stock = { P1002 = 4 } },
  YP0004 = { name = "四号柜", address = "实验楼二楼", online = true, doors = 1, stock = { P1001 = 0, P1004 = 0 } },
}

-- Orders placed before the sandbox started: minutes ago, cabinet, products, phone, how paid.
local SEED_ORDERS = {
  { ago = 50, tid = "YP0001", items = { { "P1003", 1 }, { "P1001", 1 } }, phone = "13311112222", pay = "wxpay" },
  { ago = 35, tid = "YP0002", items = { { "P1001", 2 } }, phone = "13311113333", pay = "alipay" },
  { ago = 20, tid = "YP0003", items = { { "P1002", 1 } }, phone = "13311114444", pay = "wxpay" },
  { ago = 10, tid = "YP0001", items = { { "P1004", 1 } }, phone = "13311112222", pay = "thirdpay", unpaid = true },
}

local sorted_keys = util.sorted_keys

-- The demo account (kaifang.yopoint.new's options) and what the seeded world holds: rows
-- { what, id, about }. Orders get their ReceiptNo when the sandbox starts: list them to see it.
function M.demo()
  local appid = next(OPERATORS)
  local op = OPERATORS[appid]
  local world = {}
  local function add(what, id, about) world[#world + 1] = { what = what, id = id, about = about } end
  for _, tid in ipairs(sorted_keys(CABINETS)) do
    local c = CABINETS[tid]
    local stock, empty = {}, true
    for _, pid in ipairs(sorted_keys(c.stock)) do
      stock[#stock + 1] = pid .. "x" .. c.stock[pid]
      if c.stock[pid] > 0 then empty = false end
    end
    add("cabinet", tid, ("%s, %s, %d door%s, %s; stock %s"):format(c.name, c.address, c.doors, c.doors > 1 and "s" or "",
      not c.online and "offline (ERR_DEVICE_OFFLINE)" or empty and "online, empty (ERR_NONE_STOCK)" or "online",
      table.concat(stock, " ")))
  end
  for _, pid in ipairs(sorted_keys(PRODUCTS)) do
    add("product", pid, ("%s, %d fen"):format(PRODUCTS[pid].name, PRODUCTS[pid].price))
  end
  for _, o in ipairs(SEED_ORDERS) do
    local items = {}
    for i, it in ipairs(o.items) do items[i] = it[1] .. "x" .. it[2] end
    add("order", o.tid, ("%d min before start: %s by %s, %s, %s"):format(o.ago, table.concat(items, " "), o.phone,
      o.pay, o.unpaid and "waiting for payment" or "paid"))
  end
  return { account = { appid = appid, app_secret = op.secret, sign_key = op.sign_key }, world = world }
end

---------------------------------------------------------------------------- time

local CST = 8 * 3600 -- the platform writes times in China Standard Time

local function cst(t) return os.date("!%Y-%m-%d %H:%M:%S", math.floor(t) + CST) end

local function days_from_civil(y, m, d)
  y = m <= 2 and y - 1 or y
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local doy = (153 * (m + (m > 2 and -3 or 9)) + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  return era * 146097 + doe - 719468
end

-- "YYYY-MM-DD HH:MM:SS" (China time), or unix seconds / milliseconds -> unix seconds, or nil.
local function parse_time(v)
  if type(v) == "number" then return v > 1e11 and v / 1000 or v end
  if type(v) ~= "string" then return nil end
  if v:match("^%d+$") then return parse_time(tonumber(v)) end
  local y, mo, d, h, mi, s = v:match("^(%d%d%d%d)-(%d%d)-(%d%d)[ T](%d%d):(%d%d):(%d%d)$")
  if not y then
    y, mo, d = v:match("^(%d%d%d%d)-(%d%d)-(%d%d)$")
    h, mi, s = 0, 0, 0
  end
  if not y then return nil end
  return days_from_civil(tonumber(y), tonumber(mo), tonumber(d)) * 86400 + tonumber(h) * 3600
    + tonumber(mi) * 60 + tonumber(s) - CST
end

---------------------------------------------------------------------------- replies

-- Error codes and texts are the sandbox's own (the document shows only error_code != 0 and an
-- error_msg such as ERR_SYSTEM; README: "What the documents leave open"); the string codes
-- follow the ones public integrations report.
local E = {
  missing = 40001, appid = 40002, sign_type = 40003, version = 40004, sign = 40005, timestamp = 40006,
  frequent = 40007, method = 40008, biz = 40009, repeated = 40010,
  missing_biz = 50001, cabinet = 50002, offline = 50003, stock = 50004, order = 50005,
  order_status = 50006, refunded = 50007, amount = 50008, appeal = 50009, params = 50010,
}

local function reply(code, msg, data)
  return util.json_value({ error_code = code, error_msg = msg, data = data == nil and {} or data })
end

local function ok(data) return reply(0, "", data) end

local function missing(name) return reply(E.missing_biz, "MISSING_PARAMS_" .. name:upper()) end

---------------------------------------------------------------------------- helpers

local function pct(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

-- Sorted form body, built here (not by the client's encoder).
local function form(params)
  local keys = {}
  for k in pairs(params) do keys[#keys + 1] = k end
  table.sort(keys, util.bytes_less)
  local parts = {}
  for i, k in ipairs(keys) do parts[i] = pct(k) .. "=" .. pct(params[k]) end
  return table.concat(parts, "&")
end

-- The scheme, written out from the document: every field but sign, sorted by bytes, k=v joined by
-- "&", empty values kept, then "&" and the key; MD5, lower-case hex.
-- Also returns the request's content (what is signed but the timestamp), for the duplicate detector.
local SIGN, TIMESTAMP = { sign = true }, { timestamp = true }
local function sign_with(params, key)
  local signed, content = util.canonical(params, SIGN, false, TIMESTAMP)
  return core.digest("md5", signed .. "&" .. key), content
end

-- A decoded JSON value as the text PHP would sign (numbers without ".0").
local function text_of(v)
  if type(v) == "string" then return v end
  if type(v) == "number" then
    if v == math.floor(v) and math.abs(v) < 2 ^ 53 then return string.format("%.0f", v) end
    return string.format("%.14g", v)
  end
  return nil
end

local function int_of(v)
  local n = tonumber(v)
  if n and n == math.floor(n) then return math.tointeger(n) end
  return nil
end

---------------------------------------------------------------------------- instance

local Instance = {}
Instance.__index = Instance

function M.new(ctx)
  local self = setmetatable({
    config = ctx.config, now = ctx.now, clock = ctx.clock, duplicates = ctx.duplicates,
    seq = 0,
    cabinets = {}, orders = util.array(), by_receipt = {}, by_order = {},
    refunds = util.array(), appeals = util.array(), doors = util.array(),
    notices = util.array(), payments = util.array(), redirects = util.array(),
    thirdpay = {}, admitted = {},
  }, Instance)
  for tid, c in pairs(CABINETS) do
    local cab = util.copy(c)
    cab.door_state = {}
    for i = 1, cab.doors do cab.door_state[i] = "closed" end
    self.cabinets[tid] = cab
  end
  for appid, op in pairs(OPERATORS) do
    self.thirdpay[appid] = { PayUrl = op.pay_url, ServerUrl = "", SignKey = op.sign_key }
  end
  local start = self.now()
  for _, o in ipairs(SEED_ORDERS) do
    local products = {}
    for i, it in ipairs(o.items) do products[i] = { ProductId = it[1], Num = it[2] } end
    self:place(APPID, o.tid, products, o.phone, o.pay, start - o.ago * 60, o.unpaid)
  end
  return self
end

Instance.next_id = util.next_id
Instance.admit = util.admit

-- A purchase at a cabinet: stock goes down, an order appears. Returns the order or nil, msg.
function Instance:place(appid, tid, products, phone, pay_type, t, unpaid)
  local cab = self.cabinets[tid]
  if not cab then return nil, "no cabinet " .. tostring(tid) end
  local lines, amount = util.array(), 0
  for _, p in ipairs(products) do
    local info = PRODUCTS[p.ProductId]
    local num = int_of(p.Num or 1)
    if not info or not num or num < 1 then return nil, "bad product line " .. tostring(p.ProductId) end
    if (cab.stock[p.ProductId] or 0) < num then return nil, "not enough " .. p.ProductId .. " in " .. tid end
    lines[#lines + 1] = { ProductId = p.ProductId, ProductName = info.name, Price = info.price, Num = num }
    amount = amount + info.price * num
  end
  if #lines == 0 then return nil, "no products" end
  for _, l in ipairs(lines) do cab.stock[l.ProductId] = cab.stock[l.ProductId] - l.Num end
  local id = self:next_id()
  local stamp = os.date("!%y%m%d%H%M%S", math.floor(t) + CST)
  local order = {
    OrderNo = ("YP%s%04d"):format(stamp, id),
    ReceiptNo = ("OD%s%06d"):format(stamp, 841400 + id),
    TID = tid, CabinetName = cab.name, DoorNo = 1,
    Products = lines, Amount = amount,
    PayAmount = unpaid and 0 or amount,
    PayStatus = unpaid and 0 or 1, -- 0 waiting, 1 paid, -1 failed
    PayType = pay_type or "wxpay",
    TradeNo = "",
    RefundAmount = 0, RefundStatus = 0, -- 0 none, 1 part, 2 all
    Phone = phone or "",
    CreateTime = cst(t), PayTime = unpaid and "" or cst(t),
    _t = t, _seq = id, _appid = appid,
  }
  self.orders[#self.orders + 1] = order
  self.by_receipt[order.ReceiptNo] = order
  self.by_order[order.OrderNo] = order
  return order
end

local function view(order)
  local v = {}
  for k, x in pairs(order) do
    if k:sub(1, 1) ~= "_" then v[k] = util.copy(x) end
  end
  return v
end

---------------------------------------------------------------------------- the gateway

local COMMON = { "appid", "method", "biz_content", "version", "timestamp", "sign_type", "sign" }

-- The checks every call goes through. Returns params, operator, biz (decoded), the timestamp in
-- seconds and the request's content (for the duplicate detector), or nil, reply.
function Instance:gate(req)
  local p = {}
  if util.is_form(req.headers) then
    local err
    p, err = util.parse_form(req.body)
    if not p then return nil, util.text_response(400, "malformed form body: " .. err .. "\n") end
  elseif util.is_json(req.headers) then -- the document allows a JSON body too
    local doc = util.json_decode(req.body)
    if type(doc) ~= "table" then return nil, reply(E.missing, "MISSING_PARAMS_APPID") end
    p = {}
    for k, v in pairs(doc) do
      local text = text_of(v)
      if type(k) ~= "string" or not text then return nil, reply(E.biz, "ERR_PARAMS_" .. tostring(k):upper()) end
      p[k] = text
    end
  end
  for _, name in ipairs(COMMON) do
    if p[name] == nil or p[name] == "" then return nil, reply(E.missing, "MISSING_PARAMS_" .. name:upper()) end
  end
  local op = OPERATORS[p.appid]
  if not op then return nil, reply(E.appid, "ERR_APPID") end
  if p.sign_type ~= "md5" then return nil, reply(E.sign_type, "ERR_SIGN_TYPE") end
  if p.version ~= "1.0.0" then return nil, reply(E.version, "ERR_VERSION") end
  -- built here from the received bytes, never by the client's signer
  local expected, content = sign_with(p, op.secret)
  if p.sign ~= expected then return nil, reply(E.sign, "ERR_SIGN") end
  -- the table says seconds, the example milliseconds: strict, the configured unit; else both
  local ts = p.timestamp:match("^%d+$") and tonumber(p.timestamp)
  if ts and (self.config.strict and self.config.timestamp_unit == "ms" or not self.config.strict and ts > 1e11) then
    ts = ts / 1000
  end
  if not ts or math.abs(self.now() - ts) > self.config.window then
    return nil, reply(E.timestamp, "ERR_TIMESTAMP")
  end
  if not self:admit(p.appid) then return nil, reply(E.frequent, "ERR_FREQUENT") end
  local biz = util.json_decode(p.biz_content)
  if type(biz) ~= "table" then return nil, reply(E.biz, "ERR_BIZ_CONTENT") end
  return p, op, biz, ts, content
end

local function page_of(biz, list)
  local page, size = int_of(biz.Page or 1), int_of(biz.PageSize or 20)
  if not page or page < 1 or not size or size < 1 or size > 100 then return nil end
  local out = util.array()
  for i = (page - 1) * size + 1, math.min(#list, page * size) do out[#out + 1] = list[i] end
  return { Total = #list, Page = page, PageSize = size, List = out }
end

local function find_order(self, biz, appid, need)
  local o
  if need ~= "ReceiptNo" and biz.OrderNo ~= nil and biz.OrderNo ~= "" then
    o = self.by_order[tostring(biz.OrderNo)]
  elseif biz.ReceiptNo ~= nil and biz.ReceiptNo ~= "" then
    o = self.by_receipt[tostring(biz.ReceiptNo)]
  else
    return nil, missing(need or "OrderNo")
  end
  if not o or o._appid ~= appid then return nil, reply(E.order, "ERR_ORDER_NOT_FOUND") end
  return o
end

local function list_orders(self, biz, appid)
  local from, to = 0, math.huge
  if biz.StartTime ~= nil and biz.StartTime ~= "" then
    from = parse_time(biz.StartTime)
    if not from then return nil, reply(E.params, "ERR_PARAMS_STARTTIME") end
  end
  if biz.EndTime ~= nil and biz.EndTime ~= "" then
    to = parse_time(biz.EndTime)
    if not to then return nil, reply(E.params, "ERR_PARAMS_ENDTIME") end
  end
  local hits = {}
  for _, o in ipairs(self.orders) do
    if o._appid == appid and o._t >= from and o._t <= to and (biz.TID == nil or biz.TID == "" or biz.TID == o.TID) then
      hits[#hits + 1] = o
    end
  end
  table.sort(hits, function(a, b) return a._t < b._t or (a._t == b._t and a._seq < b._seq) end)
  for i, o in ipairs(hits) do hits[i] = view(o) end
  local page = page_of(biz, hits)
  if not page then return nil, reply(E.params, "ERR_PARAMS_PAGE") end
  return page
end

local function cabinet_of(self, biz)
  if biz.TID == nil or biz.TID == "" then return nil, missing("TID") end
  local cab = self.cabinets[tostring(biz.TID)]
  if not cab then return nil, reply(E.cabinet, "ERR_CABINET_NOT_FOUND") end
  return cab
end

local METHODS = {}

METHODS["api.test"] = function(_, p)
  return ok({ Appid = p.appid, BizContent = p.biz_content, Timestamp = p.timestamp, Message = "ok" })
end

METHODS["cabinet.list"] = function(self, _, biz)
  local tids = {}
  for tid in pairs(self.cabinets) do tids[#tids + 1] = tid end
  table.sort(tids)
  local list = {}
  for i, tid in ipairs(tids) do
    local c = self.cabinets[tid]
    list[i] = { TID = tid, Name = c.name, Address = c.address, Online = c.online and 1 or 0, Doors = c.doors }
  end
  local page = page_of(biz, list)
  if not page then return reply(E.params, "ERR_PARAMS_PAGE") end
  return ok(page)
end

METHODS["cabinet.product.stock"] = function(self, _, biz)
  local cab, res = cabinet_of(self, biz)
  if not cab then return res end
  local ids = {}
  for id in pairs(cab.stock) do ids[#ids + 1] = id end
  table.sort(ids)
  local list = util.array()
  for i, id in ipairs(ids) do
    list[i] = { ProductId = id, ProductName = PRODUCTS[id].name, Price = PRODUCTS[id].price, Stock = cab.stock[id] }
  end
  return ok({ TID = biz.TID, List = list })
end

METHODS["cabinet.open.door"] = function(self, _, biz)
  local cab, res = cabinet_of(self, biz)
  if not cab then return res end
  local door = int_of(biz.DoorNo or 1)
  if not door or door < 1 or door > cab.doors then return reply(E.params, "ERR_PARAMS_DOORNO") end
  if not cab.online then return reply(E.offline, "ERR_DEVICE_OFFLINE") end
  local total = 0
  for _, n in pairs(cab.stock) do total = total + n end
  if total == 0 then return reply(E.stock, "ERR_NONE_STOCK") end
  cab.door_state[door] = "open"
  local rec = { OpenNo = ("DR%08d"):format(self:next_id()), TID = biz.TID, DoorNo = door, Status = "opened",
                Time = cst(self.now()), Reason = biz.Reason }
  self.doors[#self.doors + 1] = rec
  return ok(rec)
end

METHODS["cabinet.order.list"] = function(self, p, biz)
  local page, res = list_orders(self, biz, p.appid)
  return page and ok(page) or res
end
METHODS["consumer.order.list"] = METHODS["cabinet.order.list"]

METHODS["cabinet.order.get"] = function(self, p, biz)
  local o, res = find_order(self, biz, p.appid)
  return o and ok(view(o)) or res
end

METHODS["consumer.order.get"] = function(self, p, biz)
  local o, res = find_order(self, biz, p.appid, "ReceiptNo")
  return o and ok(view(o)) or res
end

METHODS["cabinet.order.refund.apply"] = function(self, p, biz)
  local o, res = find_order(self, biz, p.appid)
  if not o then return res end
  if o.PayStatus ~= 1 then return reply(E.order_status, "ERR_ORDER_STATUS") end
  if o.RefundStatus == 2 then return reply(E.refunded, "ERR_ORDER_REFUNDED") end
  local left = o.PayAmount - o.RefundAmount
  local amount = biz.Amount == nil and left or int_of(biz.Amount)
  if not amount or amount < 1 or amount > left then return reply(E.amount, "ERR_REFUND_AMOUNT") end
  o.RefundAmount = o.RefundAmount + amount
  o.RefundStatus = o.RefundAmount == o.PayAmount and 2 or 1
  local rec = { RefundNo = ("RF%08d"):format(self:next_id()), OrderNo = o.OrderNo, ReceiptNo = o.ReceiptNo,
                Amount = amount, Reason = biz.Reason or "", Status = "success", CreateTime = cst(self.now()) }
  self.refunds[#self.refunds + 1] = rec
  return ok(rec)
end

METHODS["cabinet.order.user.appeal"] = function(self, p, biz)
  local o, res = find_order(self, biz, p.appid)
  if not o then return res end
  if biz.Content == nil or biz.Content == "" then return missing("Content") end
  for _, a in ipairs(self.appeals) do
    if a.ReceiptNo == o.ReceiptNo then return reply(E.appeal, "ERR_APPEAL_EXISTS") end
  end
  local rec = { AppealNo = ("AP%08d"):format(self:next_id()), OrderNo = o.OrderNo, ReceiptNo = o.ReceiptNo,
                Content = tostring(biz.Content), Images = biz.Images, Status = 0, CreateTime = cst(self.now()) }
  self.appeals[#self.appeals + 1] = rec
  return ok(rec)
end

METHODS["operators.config.thirdpay.set"] = function(self, p, biz)
  for _, name in ipairs({ "PayUrl", "SignKey" }) do
    if biz[name] == nil or biz[name] == "" then return missing(name) end
  end
  if type(biz.PayUrl) ~= "string" or not biz.PayUrl:match("^https?://") then return reply(E.params, "ERR_PARAMS_PAYURL") end
  if biz.ServerUrl ~= nil and biz.ServerUrl ~= "" and (type(biz.ServerUrl) ~= "string" or not biz.ServerUrl:match("^https?://")) then
    return reply(E.params, "ERR_PARAMS_SERVERURL")
  end
  if type(biz.SignKey) ~= "string" or #biz.SignKey < 8 then return reply(E.params, "ERR_PARAMS_SIGNKEY") end
  self.thirdpay[p.appid] = { PayUrl = biz.PayUrl, ServerUrl = biz.ServerUrl or "", SignKey = biz.SignKey }
  return ok({ PayUrl = biz.PayUrl, ServerUrl = biz.ServerUrl or "" })
end

-- The methods that change something: a replay of one is refused (strict).
local ACTS = { ["cabinet.open.door"] = true, ["cabinet.order.refund.apply"] = true,
               ["cabinet.order.user.appeal"] = true, ["operators.config.thirdpay.set"] = true }

local function gateway(self, req)
  local p, op, biz, ts, content = self:gate(req)
  if not p then return op end
  local fn = METHODS[p.method]
  if not fn then return reply(E.method, "ERR_METHOD") end
  if ACTS[p.method] and self.duplicates:check(M.GATEWAY, content,
                                              p.sign, ts + self.config.window, self.config.strict) then
    return reply(E.repeated, "ERR_REPEAT")
  end
  return fn(self, p, biz, op)
end

---------------------------------------------------------------------------- third-party payment

-- notify_url: the operator reports a payment here (form; signed with the SignKey, timestamp in
-- seconds, price appended unsigned). Answers the literal `success`, or `fail: <why>`.
local function pay_notify(self, req)
  local function answer(text, rec)
    if rec then
      rec.reply = text
      self.payments[#self.payments + 1] = rec
    end
    return util.text_response(200, text)
  end
  if not util.is_form(req.headers) then return answer("fail: expected a form body") end
  local p = util.parse_form(req.body)
  if not p then return answer("fail: malformed form body") end
  local rec = { id = self:next_id(), time = math.floor(self.now() * 1000) / 1000, params = util.copy(p) }
  for _, name in ipairs({ "receipt_no", "trade_no", "trade_status", "timestamp", "sign", "price" }) do
    if p[name] == nil or p[name] == "" then return answer("fail: missing " .. name, rec) end
  end
  local order = self.by_receipt[p.receipt_no]
  if not order then return answer("fail: no order " .. p.receipt_no, rec) end
  local key = self.thirdpay[order._appid].SignKey
  local signed = {}
  for k, v in pairs(p) do
    if k ~= "price" then signed[k] = v end -- price travels unsigned
  end
  local expected, content = sign_with(signed, key)
  if p.sign ~= expected then return answer("fail: bad sign", rec) end
  -- seconds only: milliseconds here are a client bug the sandbox should show
  local ts = p.timestamp:match("^%d+$") and tonumber(p.timestamp)
  if not ts or math.abs(self.now() - ts) > self.config.window then return answer("fail: bad timestamp", rec) end
  if p.trade_status ~= "1" and p.trade_status ~= "-1" then return answer("fail: bad trade_status", rec) end
  -- counted, never refused: a notice for one trade is idempotent by design (the same one settles nothing twice)
  self.duplicates:check(M.NOTIFY, content, p.sign, ts + self.config.window, false)
  if tonumber(p.price) ~= order.Amount then return answer("fail: price does not match the order", rec) end
  if order.PayStatus == 1 then
    -- a repeated notice for the same trade is fine; another trade for a paid order is not
    if order.TradeNo == p.trade_no then return answer("success", rec) end
    return answer("fail: order already paid", rec)
  end
  if p.trade_status == "1" then
    order.PayStatus, order.PayAmount, order.PayTime = 1, order.Amount, cst(self.now())
  else
    order.PayStatus = -1
  end
  order.TradeNo, order.PayType = p.trade_no, "thirdpay"
  return answer("success", rec)
end

M.routes = {
  [M.GATEWAY] = gateway,
  [M.NOTIFY] = pay_notify,
}

---------------------------------------------------------------------------- admin

M.admin = {}

for _, kind in ipairs({ "orders", "refunds", "appeals", "doors", "notices", "payments", "redirects" }) do
  M.admin[kind] = function(self, req)
    if req.method ~= "GET" then return nil end
    if kind == "orders" then
      local out = util.array()
      for i, o in ipairs(self.orders) do out[i] = view(o) end
      return util.json_value(out)
    end
    return util.json_value(self[kind])
  end
end

M.admin.cabinets = function(self, req)
  if req.method ~= "GET" then return nil end
  local out = {}
  for tid, c in pairs(self.cabinets) do
    out[tid] = { Name = c.name, Online = c.online, Stock = c.stock, Doors = util.array(util.copy(c.door_state)) }
  end
  return util.json_value(out)
end

M.admin.thirdpay = function(self, req)
  if req.method ~= "GET" then return nil end
  local out = {}
  for appid, t in pairs(self.thirdpay) do out[appid] = { PayUrl = t.PayUrl, ServerUrl = t.ServerUrl } end
  return util.json_value(out)
end

-- POST {"TID":"YP0001","Products":[{"ProductId":"P1001","Num":1}],"Phone":"...","PayType":"wxpay"}
-- A buyer takes products from a cabinet (door opened and closed); PayType "thirdpay" leaves the
-- order waiting for the operator's payment. Replies with the order.
M.admin.order = function(self, req)
  if req.method ~= "POST" then return nil end
  local a, res = util.admin_params(req)
  if not a then return res end
  local cab = self.cabinets[tostring(a.TID)]
  if not cab then return util.err_json(400, "no cabinet " .. tostring(a.TID)) end
  local products = a.Products
  if type(products) ~= "table" or #products == 0 then
    products = {}
    local ids = {}
    for id, n in pairs(cab.stock) do
      if n > 0 then ids[#ids + 1] = id end
    end
    table.sort(ids)
    if ids[1] then products[1] = { ProductId = ids[1], Num = 1 } end
  end
  local order, err = self:place(APPID, a.TID, products, a.Phone, a.PayType, self.now(), a.PayType == "thirdpay")
  if not order then return util.err_json(400, err) end
  for i = 1, cab.doors do cab.door_state[i] = "closed" end
  return util.json_value(view(order))
end

local function latest_order(self)
  return self.orders[#self.orders]
end

-- POST {"url":"http://...","ReceiptNo":"...","key":"app_secret"|"sign_key","age":0,
--       "tamper":false,"secret":"..."}
-- Sends an order notice to url (default: the ServerUrl registered with thirdpay.set) as a form:
-- appid, method "cabinet.order.sync", biz_content (the order as JSON), version, timestamp
-- (seconds, backdated by age), sign_type, sign (with the app secret, or the SignKey; `secret`
-- signs with a key of your own; `tamper` changes the order after signing). Replies with what
-- was sent and what the receiver answered; ok is true when it answered `success`.
M.admin.notify = function(self, req)
  if req.method ~= "POST" then return nil end
  local a, res = util.admin_params(req)
  if not a then return res end
  local order = a.ReceiptNo and self.by_receipt[tostring(a.ReceiptNo)] or (a.ReceiptNo == nil and latest_order(self))
  if not order then return util.err_json(400, "no order " .. tostring(a.ReceiptNo)) end
  local tp = self.thirdpay[order._appid]
  local url = a.url or tp.ServerUrl
  if type(url) ~= "string" or not url:match("^https?://") then
    return util.err_json(400, "give a url (or register a ServerUrl with operators.config.thirdpay.set)")
  end
  if util.loops_back(url, req) then
    return util.err_json(400, "the url points at the sandbox itself, which cannot answer while it sends; use another process")
  end
  local op = OPERATORS[order._appid]
  local key = a.secret or (a.key == "sign_key" and tp.SignKey or op.secret)
  if a.key ~= nil and a.key ~= "app_secret" and a.key ~= "sign_key" then
    return util.err_json(400, "key must be app_secret or sign_key")
  end
  local age = tonumber(a.age or 0) or 0
  local params = {
    appid = order._appid, method = "cabinet.order.sync", biz_content = util.json_encode(view(order)),
    version = "1.0.0", timestamp = string.format("%d", math.floor(self.now() - age)), sign_type = "md5",
  }
  params.sign = sign_with(params, key)
  if a.tamper then
    local o = view(order)
    o.Amount = (o.Amount or 0) + 100
    params.biz_content = util.json_encode(o)
  end
  local rec = { id = self:next_id(), url = url, params = params, time = math.floor(self.now() * 1000) / 1000 }
  local got = util.post(self, url, "application/x-www-form-urlencoded", form(params))
  rec.status, rec.body, rec.error = got.status, got.body, got.error
  rec.ok = got.body ~= nil and got.status >= 200 and got.status < 300 and got.body:match("^%s*(.-)%s*$") == "success"
  self.notices[#self.notices + 1] = rec
  return util.json_value(rec)
end

-- GET ?ReceiptNo=... (or POST {"ReceiptNo":..., "return_url":..., "age":0})
-- Where Yopoint sends the buyer of a thirdpay order: PayUrl?receipt_no=&return_url=&notify_url=
-- &timestamp=&sign= (signed with the SignKey; notify_url is this sandbox's /api/thirdpay/notify).
M.admin.pay_redirect = function(self, req)
  local a, res = util.admin_params(req)
  if not a then return res end
  local order = self.by_receipt[tostring(a.ReceiptNo)]
  if not order then return util.err_json(400, "no order " .. tostring(a.ReceiptNo)) end
  local tp = self.thirdpay[order._appid]
  local host = req.headers and req.headers.host or "127.0.0.1"
  local params = {
    receipt_no = order.ReceiptNo,
    return_url = a.return_url or ("http://" .. host .. "/yopoint/paid?receipt_no=" .. order.ReceiptNo),
    notify_url = "http://" .. host .. M.NOTIFY,
    timestamp = string.format("%d", math.floor(self.now() - (tonumber(a.age or 0) or 0))),
  }
  params.sign = sign_with(params, tp.SignKey)
  local url = tp.PayUrl .. (tp.PayUrl:find("?", 1, true) and "&" or "?") .. form(params)
  local rec = { url = url, params = params }
  self.redirects[#self.redirects + 1] = rec
  return util.json_value(rec)
end

-- The platform's own "too frequent" answer, for the injected fault of that name.
function M.too_frequent_reply() return reply(E.frequent, "ERR_FREQUENT") end

return M
