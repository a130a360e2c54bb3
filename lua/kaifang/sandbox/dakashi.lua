-- Dakashi (大卡师) IoT-card platform as the sandbox plays it: JSON POSTs, an upper-case SHA1 over
-- the sorted parameters with the secret appended, a five-minute timestamp window, errcode 0 for
-- success, and a small world of cards with data usage and packages. It also plays the
-- platform's side of its (unsigned, JSON) callbacks: recharge and on/off. Only member/info and
-- errcode 50000 are in the document; the other interfaces' parameters and replies and the
-- 55001-55015 codes are the sandbox's own reading (README: "What the documents leave open").
local core = require "kaifang.core" -- digests
local util = require "kaifang.sandbox.util"

local M = {}

M.name = "dakashi"

-- window: seconds a timestamp may be from the sandbox's clock (the document: five minutes);
-- rate: admitted calls per second per client (nil: unlimited); whitelist: list of client IPs
-- admitted (nil: any; by default loopback only, as the platform admits only registered
-- addresses); callback_timeout: seconds the sandbox waits on a callback receiver; strict: the
-- documented types (timestamp an integer; client_id, serial_no, sign strings), no parameter an
-- interface does not take, and an acting request's replay refused.
M.defaults = { window = 300, rate = 20, whitelist = { "127.0.0.1", "::1" }, callback_timeout = 3, strict = true }
local SETTINGS = { window = true, rate = true, whitelist = true, callback_timeout = true, strict = true }

function M.check_setting(key, value)
  if not SETTINGS[key] then return nil, "unknown dakashi setting '" .. tostring(key) .. "'" end
  if (key == "rate" or key == "whitelist") and value == nil then return true end
  if key == "strict" then
    if type(value) ~= "boolean" then return nil, "dakashi.strict must be true or false" end
    return true
  end
  if key == "whitelist" then
    if type(value) ~= "table" then return nil, "dakashi.whitelist must be a list of IP addresses" end
    for _, ip in ipairs(value) do
      if type(ip) ~= "string" then return nil, "dakashi.whitelist must be a list of IP addresses" end
    end
    return true
  end
  if type(value) ~= "number" or value < 0 then return nil, "dakashi." .. key .. " must be a number >= 0" end
  return true
end

---------------------------------------------------------------------------- seeded world

local CLIENTS = {
  -- the document's example client_id
  ["iotacc108b7305fhzljeux0"] = { secret = "4c1e7b9a2d5f8e3b6a0c9d2f5e8b1a47", name = "示例物联网卡代理", balance = 100000 },
}

local PRODUCTS = { -- data_value in MB, price in fen, days valid
  [1001] = { product_name = "月包 10GB", data_value = 10240, price = 3000, days = 30 },
  [1002] = { product_name = "月包 3GB", data_value = 3072, price = 1500, days = 30 },
  [1003] = { product_name = "加油包 1GB", data_value = 1024, price = 500, days = 7 },
}

local DAY = 86400

-- Cards: the first two are the IoT cards Lingdian Campus's sandbox knows as out of stock for its
-- developer. Packages: product, days since it started, MB used.
local CARDS = {
  { serial_no = "1410139903", msisdn = "1410139903", iccid = "8986112025304", client = "iotacc108b7305fhzljeux0",
    packages = { { product_id = 1001, started = 10, used = 8806.4 } } },       -- 86% used
  { serial_no = "1410139904", msisdn = "1410139904", iccid = "8986112025305", client = "iotacc108b7305fhzljeux0",
    packages = { { product_id = 1002, started = 27, used = 614.4 } } },        -- ends in 3 days
  { serial_no = "87000001", msisdn = "1440087000001", iccid = "8986112025399", client = "iotacc108b7305fhzljeux0",
    packages = { { product_id = 1001, started = 5, used = 1024 } } },          -- fine
}

local PREPAID = { -- prepaid recharge cards
  PC20240001 = { product_id = 1003, status = 0 },
  PC20240002 = { product_id = 1002, status = 1, used_by = "87000001" },
}

local SEED_ORDER = { serial_no = "87000001", product_id = 1001, days_ago = 5 } -- a recharge from before the start

-- The demo account (kaifang.dakashi.new's options) and what the seeded world holds: rows { what, id, about }.
function M.demo()
  local id = next(CLIENTS)
  local world = {}
  local function add(what, key, about) world[#world + 1] = { what = what, id = key, about = about } end
  for _, c in ipairs(CARDS) do
    local p = c.packages[1]
    local info = PRODUCTS[p.product_id]
    add("card", c.serial_no, ("msisdn %s, iccid %s, %s: %d%% used, ends in %d days"):format(
      c.msisdn, c.iccid, info.product_name, math.floor(p.used / info.data_value * 100 + 0.5), info.days - p.started))
  end
  for _, pid in ipairs(util.sorted_keys(PRODUCTS)) do
    local info = PRODUCTS[pid]
    add("product", tostring(pid), ("%s, %d MB, %d fen, %d days"):format(info.product_name, info.data_value, info.price, info.days))
  end
  for _, no in ipairs(util.sorted_keys(PREPAID)) do
    local pc = PREPAID[no]
    add("prepaid", no, ("product %d, %s"):format(pc.product_id, pc.status == 0 and "unused" or ("used by " .. pc.used_by)))
  end
  add("order", SEED_ORDER.serial_no, ("a recharge of product %d, %d days before start (order_info)"):format(
    SEED_ORDER.product_id, SEED_ORDER.days_ago))
  return { account = { client_id = id, client_secret = CLIENTS[id].secret }, world = world }
end

---------------------------------------------------------------------------- replies

local MSG = {
  [50000] = "未知错误",
  [55001] = "client_id 不存在",
  [55002] = "IP 不在白名单内",
  [55003] = "签名错误",
  [55004] = "卡号不存在",
  [55005] = "时间戳错误或已过期",
  [55006] = "请求过于频繁",
  [55007] = "缺少参数",
  [55008] = "参数格式错误",
  [55009] = "卡状态不允许此操作",
  [55010] = "套餐不存在",
  [55011] = "订单不存在",
  [55012] = "充值卡不存在",
  [55013] = "短信内容过长",
  [55014] = "自定义编号已被使用",
  [55015] = "重复请求",
}

local function fail(code, detail)
  return util.json_value({ errcode = code, errmsg = MSG[code] .. (detail and ("：" .. detail) or "") })
end

local function ok(data) return util.json_value({ errcode = 0, errmsg = "success", data = data == nil and {} or data }) end

local CST = 8 * 3600
local function cst(t) return os.date("!%Y-%m-%d %H:%M:%S", math.floor(t) + CST) end

local function mb(n) -- MB as the platform's strings: "10240", "8806.40"
  if n == math.floor(n) then return string.format("%d", n) end
  return string.format("%.2f", n)
end

---------------------------------------------------------------------------- helpers

-- A decoded JSON value as the text PHP would put in the string to sign, or nil for what cannot
-- be signed (arrays, objects).
local function text_of(v)
  if type(v) == "string" then return v end
  if type(v) == "number" then
    if v == math.floor(v) and math.abs(v) < 2 ^ 53 then return string.format("%.0f", v) end
    return string.format("%.14g", v)
  end
  if type(v) == "boolean" then return v and "1" or "" end
  if v == util.json_null then return "" end
  return nil
end

-- The scheme, written out from the document's PHP demo: every field but sign, sorted by bytes,
-- k=v joined by "&" (an empty value as "k=": formatBizQueryParaMap filters nothing), the
-- secret appended directly; SHA1, upper-case hex.
-- Also returns the request's content (what is signed but the timestamp), for the duplicate detector.
local SIGN, TIMESTAMP = { sign = true }, { timestamp = true }
local function sign_with(params, secret)
  local signed, content = util.canonical(params, SIGN, false, TIMESTAMP)
  return core.digest("sha1", signed .. secret, "HEX"), content
end

-- The types the document gives (公共请求参数 and member/info's table); checked when strict.
local TYPES = { client_id = "string", app_id = "string", sign = "string", serial_no = "string", timestamp = "integer" }

local function type_ok(want, v)
  if want == "integer" then return type(v) == "number" and v == math.floor(v) end
  return type(v) == want
end

---------------------------------------------------------------------------- instance

local Instance = {}
Instance.__index = Instance

function M.new(ctx)
  local self = setmetatable({
    config = ctx.config, now = ctx.now, clock = ctx.clock, duplicates = ctx.duplicates, seq = 0,
    cards = {}, card_order = {}, orders = {}, order_list = util.array(), prepaid = util.copy(PREPAID),
    messages = util.array(), resets = util.array(), callbacks = util.array(), admitted = {},
    balance = {},
  }, Instance)
  local start = self.now()
  for _, c in ipairs(CARDS) do
    local card = { serial_no = c.serial_no, msisdn = c.msisdn, iccid = c.iccid, client = c.client, status = 1,
                   custom_no = "", activate_time = cst(start - 90 * DAY), packages = {} }
    for _, p in ipairs(c.packages) do
      local info = PRODUCTS[p.product_id]
      local from = start - p.started * DAY
      card.packages[#card.packages + 1] = { product_id = p.product_id, from = from, to = from + info.days * DAY, used = p.used }
    end
    self.cards[c.serial_no] = card
    self.card_order[#self.card_order + 1] = c.serial_no
  end
  for id, c in pairs(CLIENTS) do self.balance[id] = c.balance end
  -- one recharge order from before the sandbox started
  self:new_order(SEED_ORDER.serial_no, SEED_ORDER.product_id, start - SEED_ORDER.days_ago * DAY)
  return self
end

Instance.next_id = util.next_id
Instance.admit = util.admit

function Instance:new_order(serial_no, product_id, t)
  local id = self:next_id()
  local o = { order_no = ("DK%s%04d"):format(os.date("!%Y%m%d", math.floor(t) + CST), id), serial_no = serial_no,
              product_id = product_id, product_name = PRODUCTS[product_id].product_name,
              amount = PRODUCTS[product_id].price, status = 1, create_time = cst(t) }
  self.orders[o.order_no] = o
  self.order_list[#self.order_list + 1] = o
  return o
end

-- Usage now: packages still running, their totals, and the latest expiry.
function Instance:usage(card)
  local now = self.now()
  local total, used, expire = 0, 0, nil
  for _, p in ipairs(card.packages) do
    if p.from <= now and now < p.to then
      total = total + PRODUCTS[p.product_id].data_value
      used = used + p.used
      if not expire or p.to > expire then expire = p.to end
    end
  end
  return total, used, expire
end

function Instance:card_view(card)
  local total, used, expire = self:usage(card)
  return {
    serial_no = card.serial_no, msisdn = card.msisdn, iccid = card.iccid, status = card.status,
    custom_no = card.custom_no, activate_time = card.activate_time,
    total_data_value = mb(total), used_data_value = mb(used), surplus_data_value = mb(math.max(0, total - used)),
    expire_time = expire and cst(expire) or "",
  }
end

function Instance:packages_view(card)
  local now, out = self.now(), util.array()
  for _, p in ipairs(card.packages) do
    local info = PRODUCTS[p.product_id]
    out[#out + 1] = {
      product_id = p.product_id, product_name = info.product_name, data_value = mb(info.data_value),
      used_data_value = mb(p.used), start_time = cst(p.from), expire_time = cst(p.to),
      status = (now < p.to) and 1 or 2, -- 1 running, 2 ended
    }
  end
  return out
end

---------------------------------------------------------------------------- the gate

local COMMON = { client_id = true, app_id = true, timestamp = true, sign = true }

-- route: { path =, params = the set of parameters it takes, acts = true when it changes
-- something }. Returns params (as text), client id, client or nil, reply.
function Instance:gate(req, route)
  if not util.is_json(req.headers) then return nil, fail(55008, "Content-Type 须为 application/json") end
  local doc = util.json_decode(req.body or "")
  if type(doc) ~= "table" or (doc[1] ~= nil) then return nil, fail(55008, "请求体须为 JSON 对象") end
  local strict = self.config.strict
  local p = {}
  for k, v in pairs(doc) do
    local text = text_of(v)
    if type(k) ~= "string" or text == nil then return nil, fail(55008, tostring(k)) end
    if strict and TYPES[k] and not type_ok(TYPES[k], v) then return nil, fail(55008, k .. " 须为 " .. TYPES[k]) end
    p[k] = text
  end
  local id = p.client_id or p.app_id -- the later platform's spelling too
  if id == nil or id == "" then return nil, fail(55007, "client_id") end
  local c = CLIENTS[id]
  if not c then return nil, fail(55001) end
  local wl = self.config.whitelist
  if wl then
    -- req.remote is "host:port" or "[v6]:port"
    local remote = tostring(req.remote)
    local ip = remote:match("^%[(.*)%]:%d+$") or remote:match("^(.*):%d+$") or remote
    local listed = false
    for _, allowed in ipairs(wl) do
      if allowed == ip then listed = true end
    end
    if not listed then return nil, fail(55002, ip) end
  end
  for _, name in ipairs({ "timestamp", "sign" }) do
    if p[name] == nil or p[name] == "" then return nil, fail(55007, name) end
  end
  if strict then
    for k in pairs(p) do
      if not COMMON[k] and not route.params[k] then return nil, fail(55008, "未知参数 " .. k) end
    end
  end
  -- built here from the received JSON, never by the client's signer
  local expected, content = sign_with(p, c.secret)
  if p.sign ~= expected then return nil, fail(55003) end
  local ts = p.timestamp:match("^%d+$") and tonumber(p.timestamp)
  if not ts or math.abs(self.now() - ts) > self.config.window then return nil, fail(55005) end
  if not self:admit(id) then return nil, fail(55006) end
  if route.acts and self.duplicates:check(route.path, content,
                                          p.sign, ts + self.config.window, strict) then
    return nil, fail(55015)
  end
  return p, id, c
end

local function need(p, ...)
  for _, name in ipairs({ ... }) do
    if p[name] == nil or p[name] == "" then return fail(55007, name) end
  end
end

local function card_of(self, p, id)
  local res = need(p, "serial_no")
  if res then return nil, res end
  local card = self.cards[p.serial_no]
  if not card or card.client ~= id then return nil, fail(55004) end
  return card
end

local function with_gate(route, fn)
  return function(self, req)
    local p, id, c = self:gate(req, route)
    if not p then return id end
    return fn(self, p, id, c)
  end
end

---------------------------------------------------------------------------- interfaces

local routes = {}

routes["/v1/member/info"] = function(self, p, id)
  local card, res = card_of(self, p, id)
  if not card then return res end
  return ok(self:card_view(card))
end

routes["/v1/member/product/info"] = function(self, p, id)
  local card, res = card_of(self, p, id)
  if not card then return res end
  return ok(self:packages_view(card))
end

local function product_view(pid)
  local info = PRODUCTS[pid]
  return { product_id = pid, product_name = info.product_name, data_value = mb(info.data_value),
           price = info.price, days = info.days }
end

routes["/v1/product/info"] = function(_, p)
  if p.product_id and p.product_id ~= "" then
    local pid = tonumber(p.product_id)
    if not pid or not PRODUCTS[pid] then return fail(55010) end
    return ok(product_view(pid))
  end
  local ids = {}
  for pid in pairs(PRODUCTS) do ids[#ids + 1] = pid end
  table.sort(ids)
  local out = util.array()
  for i, pid in ipairs(ids) do out[i] = product_view(pid) end
  return ok(out)
end

routes["/v1/user/info"] = function(self, _, id, c)
  local n = 0
  for _, card in pairs(self.cards) do
    if card.client == id then n = n + 1 end
  end
  return ok({ client_id = id, name = c.name, balance = string.format("%.2f", self.balance[id] / 100), card_count = n })
end

routes["/v1/prepaid/card/info"] = function(self, p)
  local res = need(p, "card_no")
  if res then return res end
  local pc = self.prepaid[p.card_no]
  if not pc then return fail(55012) end
  local v = product_view(pc.product_id)
  v.card_no, v.status, v.used_by = p.card_no, pc.status, pc.used_by or ""
  return ok(v)
end

routes["/v1/order/info"] = function(self, p)
  local res = need(p, "order_no")
  if res then return res end
  local o = self.orders[p.order_no]
  if not o or not self.cards[o.serial_no] then return fail(55011) end
  return ok(util.copy(o))
end

routes["/v1/member/gprs/reset"] = function(self, p, id)
  local card, res = card_of(self, p, id)
  if not card then return res end
  if card.status ~= 1 then return fail(55009) end
  local rec = { id = self:next_id(), serial_no = card.serial_no, time = cst(self.now()) }
  self.resets[#self.resets + 1] = rec
  return ok({ serial_no = card.serial_no, result = "success" })
end

routes["/v1/send/message"] = function(self, p, id)
  local card, res = card_of(self, p, id)
  if not card then return res end
  res = need(p, "content")
  if res then return res end
  if utf8.len(p.content) == nil then return fail(55008, "content") end
  if utf8.len(p.content) > 70 then return fail(55013) end
  local rec = { msg_id = ("SM%08d"):format(self:next_id()), serial_no = card.serial_no, msisdn = card.msisdn,
                content = p.content, time = cst(self.now()) }
  self.messages[#self.messages + 1] = rec
  return ok({ msg_id = rec.msg_id })
end

routes["/v1/member/custom_no"] = function(self, p, id)
  local card, res = card_of(self, p, id)
  if not card then return res end
  res = need(p, "custom_no")
  if res then return res end
  for sn, other in pairs(self.cards) do
    if sn ~= card.serial_no and other.custom_no == p.custom_no then return fail(55014) end
  end
  card.custom_no = p.custom_no
  return ok({ serial_no = card.serial_no, custom_no = card.custom_no })
end

-- What each interface takes besides client_id, timestamp and sign (strict: nothing else), and
-- whether it changes something.
local TAKES = {
  ["/v1/member/info"] = { "serial_no" },
  ["/v1/member/product/info"] = { "serial_no" },
  ["/v1/product/info"] = { "product_id" },
  ["/v1/user/info"] = {},
  ["/v1/prepaid/card/info"] = { "card_no" },
  ["/v1/order/info"] = { "order_no" },
  ["/v1/member/gprs/reset"] = { "serial_no", acts = true },
  ["/v1/send/message"] = { "serial_no", "content", acts = true },
  ["/v1/member/custom_no"] = { "serial_no", "custom_no", acts = true },
}

M.routes = {}
for path, fn in pairs(routes) do
  local route = { path = path, params = {}, acts = TAKES[path].acts }
  for _, name in ipairs(TAKES[path]) do route.params[name] = true end
  M.routes[path] = with_gate(route, fn)
end

---------------------------------------------------------------------------- admin

M.admin = {}

M.admin.cards = function(self, req)
  if req.method ~= "GET" then return nil end
  local out = util.array()
  for _, sn in ipairs(self.card_order) do
    local card = self.cards[sn]
    local v = self:card_view(card)
    v.packages = self:packages_view(card)
    out[#out + 1] = v
  end
  return util.json_value(out)
end

for _, kind in ipairs({ "messages", "resets", "callbacks" }) do
  M.admin[kind] = function(self, req)
    if req.method ~= "GET" then return nil end
    return util.json_value(self[kind])
  end
end

M.admin.orders = function(self, req)
  if req.method ~= "GET" then return nil end
  return util.json_value(self.order_list)
end

-- POST {"serial_no":"...","mb":100}: the card uses data (charged to its first running package).
M.admin.use = function(self, req)
  if req.method ~= "POST" then return nil end
  local a, res = util.admin_params(req)
  if not a then return res end
  local card = self.cards[tostring(a.serial_no)]
  local amount = tonumber(a.mb)
  if not card or not amount or amount < 0 then return util.err_json(400, "give a known serial_no and mb >= 0") end
  local now = self.now()
  for _, p in ipairs(card.packages) do
    if p.from <= now and now < p.to then
      p.used = p.used + amount
      return util.json_value(self:card_view(card))
    end
  end
  return util.err_json(400, "card " .. card.serial_no .. " has no running package")
end

-- POST {"url":"http://...","action_type":1,"serial_no":"...","product_id":1003,"status":1,"retries":3}
-- Plays the platform: action_type 1 recharges the card with the product (a new order and
-- package) and calls url back; 2 switches the card on (status 1) or off (status 0) and calls
-- back. The callback is a JSON POST; anything but {"errcode":0,...} is sent again, up to
-- `retries` more times (default 3, as the platform does, though here without waiting between).
M.admin.callback = function(self, req)
  if req.method ~= "POST" then return nil end
  local a, res = util.admin_params(req)
  if not a then return res end
  local url = a.url
  if type(url) ~= "string" or not url:match("^https?://") then return util.err_json(400, "give the receiver's url") end
  if util.loops_back(url, req) then
    return util.err_json(400, "the url points at the sandbox itself, which cannot answer while it sends; use another process")
  end
  local card = self.cards[tostring(a.serial_no)]
  if not card then return util.err_json(400, "no card " .. tostring(a.serial_no)) end
  local action = tonumber(a.action_type or 1)
  local now = self.now()
  local body
  if action == 1 then
    local pid = tonumber(a.product_id or 1003)
    local info = PRODUCTS[pid]
    if not info then return util.err_json(400, "no product " .. tostring(a.product_id)) end
    local o = self:new_order(card.serial_no, pid, now)
    card.packages[#card.packages + 1] = { product_id = pid, from = now, to = now + info.days * DAY, used = 0 }
    body = { action_type = 1, serial_no = card.serial_no, msisdn = card.msisdn, iccid = card.iccid,
             order_no = o.order_no, product_id = pid, product_name = info.product_name,
             data_value = mb(info.data_value), amount = info.price, time = cst(now) }
  elseif action == 2 then
    local on = tonumber(a.status or 0) == 1
    card.status = on and 1 or 2
    body = { action_type = 2, serial_no = card.serial_no, msisdn = card.msisdn, iccid = card.iccid,
             status = on and 1 or 0, time = cst(now) }
  else
    return util.err_json(400, "action_type must be 1 (recharge) or 2 (on/off)")
  end
  local text = util.json_encode(body)
  local retries = math.max(0, math.min(10, tonumber(a.retries or 3) or 3))
  local rec = { id = self:next_id(), url = url, body = text, attempts = util.array(), ok = false }
  for _ = 0, retries do
    local got = util.post(self, url, "application/json", text)
    rec.attempts[#rec.attempts + 1] = got
    local doc = got.body and util.json_decode(got.body)
    if type(doc) == "table" and tonumber(doc.errcode) == 0 then
      rec.ok = true
      break
    end
  end
  self.callbacks[#self.callbacks + 1] = rec
  return util.json_value(rec)
end

-- The platform's own "too frequent" answer, for the injected fault of that name.
function M.too_frequent_reply() return fail(55006) end

return M
