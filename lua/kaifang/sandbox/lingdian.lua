-- Lingdian Campus (零点校园) as its document describes it: four form-POST interfaces, MD5
-- signatures, a timestamp window, a per-developer rate limit, and a small fixed world of users,
-- shops, buildings and IoT cards that the demo and the specs rely on. What the document leaves
-- open (the window, which message for what, replays) is listed in the README's "What the
-- documents leave open".
local core = require "kaifang.core"
local util = require "kaifang.sandbox.util"

local M = {}

M.name = "lingdian"

-- Settings changeable through POST /_sandbox/config {"lingdian":{...}}.
-- window: how old (seconds) a timestamp may be; when not strict, also how far ahead.
-- rate: admitted requests per second per developer; nil means unlimited.
-- latency: seconds every interface's answer is held back (a slow platform); nil means none.
-- strict: what the document leaves open is checked the strict way (README: "What the documents
-- leave open"): a timestamp at most AHEAD seconds ahead, an acting request's replay refused, C's
-- tel a phone number, D's tel the developer's own.
M.defaults = { window = 300, rate = nil, latency = nil, strict = true }
local SETTINGS = { window = true, rate = true, latency = true, strict = true }
local AHEAD = 5

function M.check_setting(key, value)
  if not SETTINGS[key] then return nil, "unknown lingdian setting '" .. tostring(key) .. "'" end
  if (key == "rate" or key == "latency") and value == nil then return true end
  if key == "strict" then
    if type(value) ~= "boolean" then return nil, "lingdian.strict must be true or false" end
    return true
  end
  if type(value) ~= "number" or value < 0 then return nil, "lingdian." .. key .. " must be a number >= 0" end
  return true
end

---------------------------------------------------------------------------- seeded world

local DEVELOPERS = {
  ["U2QHNB2w="] = {
    key = "744ed968e7e1a4aebafa6f4888fced68",
    tel = "12345678910", -- the phone the developer registered (开发者手机号, D's tel; the document's example)
    cards = { ["1410139903"] = "8986112025304", ["1410139904"] = "8986112025305" }, -- msisdn -> iccid
  },
}

local USERS = { -- by identity code; tel nil: no phone bound
  U2TD844B2 = { tel = "13311112222", follows = true },
  U2TD845C3 = { tel = "13311113333", follows = true },
  U2TD846D4 = { tel = "13311114444", follows = false },
  U2TD847E5 = { tel = nil, follows = false },
}
local USERS_BY_TEL = {}
for code, u in pairs(USERS) do
  if u.tel then USERS_BY_TEL[u.tel] = { code = code, follows = u.follows } end
end

local SHOPS = { U2TD844B2 = true, U2SHOP001 = true }
local BUILDINGS = { BTEGNAZl = true, BTEGNB01 = true }
local LINK_WHITELIST = { "https://szai.0xiao.com/" } -- prefixes

local sorted_keys = util.sorted_keys

-- The demo account (kaifang.lingdian.new's options) and what the seeded world holds, for people
-- and for `kaifang sandbox`/`kaifang call --sandbox`: world rows are { what, id, about }.
function M.demo()
  local code = next(DEVELOPERS)
  local dev = DEVELOPERS[code]
  local world = {}
  local function add(what, id, about) world[#world + 1] = { what = what, id = id, about = about } end
  for _, user_code in ipairs(sorted_keys(USERS)) do
    local u = USERS[user_code]
    add("user", user_code, u.tel == nil and "no phone bound (getUserTelByCode: 106)"
      or u.follows and ("tel " .. u.tel .. ", follows the official account")
      or ("tel " .. u.tel .. ", does not follow the official account (sendWeChatMessage: 106)"))
  end
  for _, shop in ipairs(sorted_keys(SHOPS)) do add("shop", shop, "shop_code for outerEntryOrder") end
  for _, building in ipairs(sorted_keys(BUILDINGS)) do add("building", building, "building_code for outerEntryOrder") end
  for _, msisdn in ipairs(sorted_keys(dev.cards)) do
    add("card", msisdn, "iccid " .. dev.cards[msisdn] .. ", issued to this developer (userCardRemind msisdn/iccid)")
  end
  for _, prefix in ipairs(LINK_WHITELIST) do add("link", prefix, "whitelisted prefix for sendWeChatMessage's link") end
  return { account = { developer_code = code, developer_key = dev.key, developer_tel = dev.tel }, world = world }
end

---------------------------------------------------------------------------- replies
-- Messages exactly as the document prints them.

local MSG = {
  missing = "缺少请求参数",
  not_developer = "请求参数错误：您不是开发者或没有对应权限",
  timeout = "请求超时", -- a timestamp outside the window
  expired = "请求参数错误：信息已过期请重试", -- an acting request's replay (strict; the text is the document's)
  too_frequent = "请求过于频繁，请稍后再试吧！",
  bad_param = "请求参数错误",
  bad_tel = "请求参数错误：手机号为空或格式不正确",
  not_whitelisted = "请求参数错误：访问链接未被加入白名单",
  no_user = "用户不存在",
  not_following = "该用户未关注公众号，请提示其关注公众号",
  sent_message = "请求成功且发送微信客服消息成功",
  no_code = "该用户码不存在，请使用零点校园用户身份码",
  no_phone = "该用户还没绑定手机号，请提示其绑定",
  got_phone = "请求成功且返回了手机号",
  order_in = "发入成功",
  card_not_out = "卡未出库",
  remind_sent = "发送成功",
}

-- The document's key order (code, message, data); data is a JSON literal ("[]", "\"\"", a number).
local function reply(code, message, data)
  return util.json_response('{"code":' .. code .. ',"message":' .. util.json_encode(message) .. ',"data":' .. data .. "}")
end

---------------------------------------------------------------------------- checks

local EXCLUDE = { sign = true, sign_type = true, key = true, developer_key = true }
local TIMESTAMP = { timestamp = true } -- what a request asks for is what is signed but this

local function valid_tel(tel) return tel ~= nil and tel:match("^1%d%d%d%d%d%d%d%d%d%d$") ~= nil end
-- C's 目标电话: a mobile number, or a landline with its area code
local function valid_phone(tel)
  return valid_tel(tel) or tel:match("^0%d%d%d?%-?%d%d%d%d%d%d%d%d?$") ~= nil
end

local function whitelisted(link)
  for _, prefix in ipairs(LINK_WHITELIST) do
    if link:sub(1, #prefix) == prefix then return true end
  end
  return false
end

local Instance = {}
Instance.__index = Instance

-- ctx: { config = live settings table, now = unix time fn, clock = monotonic fn }
function M.new(ctx)
  return setmetatable({
    config = ctx.config,
    now = ctx.now,
    clock = ctx.clock,
    duplicates = ctx.duplicates,
    seq = 0, -- one sequence over every accepted action, so ids never repeat within a world
    messages = util.array(),
    orders = util.array(),
    reminders = util.array(),
    admitted = {}, -- developer_code -> queue of monotonic times admitted in the last second
  }, Instance)
end

Instance.next_id = util.next_id
Instance.admit = util.admit

function Instance:record(list, req, params)
  list[#list + 1] = {
    id = self:next_id(),
    time = math.floor(self.now() * 1000) / 1000,
    path = req.path,
    params = params,
  }
end

-- The checks every interface makes, in the platform's order. Returns params, developer when the
-- request may proceed, else nil and the reply to send.
function Instance:gate(req, iface)
  local p = {}
  -- like PHP's $_POST, only a form body yields parameters; JSON or nothing reads as "missing"
  if util.is_form(req.headers) then
    local err
    p, err = util.parse_form(req.body)
    if not p then return nil, util.text_response(400, "malformed form body: " .. err .. "\n") end
  end
  for _, name in ipairs(iface.required) do
    if p[name] == nil or p[name] == "" then return nil, reply(104, MSG.missing, iface.empty) end
  end
  local dev = DEVELOPERS[p.developer_code]
  if not dev or (iface.type and p.type ~= iface.type) then return nil, reply(104, MSG.not_developer, iface.empty) end
  -- built here from the received bytes, never by the client's signer
  local signed, content = util.canonical(p, EXCLUDE, true, TIMESTAMP)
  local expected = core.digest("md5", signed .. dev.key)
  if p.sign ~= expected then return nil, reply(104, MSG.not_developer, iface.empty) end
  local ts = p.timestamp:match("^%d+$") and tonumber(p.timestamp)
  local strict, window = self.config.strict, self.config.window
  if not ts or self.now() - ts > window or ts - self.now() > (strict and AHEAD or window) then
    return nil, reply(104, MSG.timeout, iface.empty)
  end
  if not self:admit(p.developer_code) then return nil, reply(104, MSG.too_frequent, iface.empty) end
  if iface.acts and self.duplicates:check(iface.path, content, p.sign, ts + window, strict) then
    return nil, reply(104, MSG.expired, iface.empty)
  end
  return p, dev
end

---------------------------------------------------------------------------- interfaces

-- acts: the interface changes something (a notice, an order, a reminder), so a replay is refused.
local IFACE = {
  A = {
    path = "/api/Developer/sendWeChatMessage", type = "1", acts = true,
    empty = "[]",
    required = { "developer_code", "tel", "content", "link", "type", "timestamp", "sign" },
  },
  B = { path = "/api/Developer/getUserTelByCode", type = "16", empty = "[]",
        required = { "developer_code", "user_code", "type", "timestamp", "sign" } },
  C = {
    path = "/keloop/api/outerEntryOrder", type = "128", acts = true,
    empty = "[]",
    required = { "developer_code", "shop_code", "order_type", "daily_number", "type", "timestamp", "sign" },
  },
  D = { -- no type; its replies carry "" where the others carry []
    path = "/api/Developer/userCardRemind", acts = true,
    empty = '""',
    required = { "developer_code", "tel", "timestamp", "msisdn", "iccid", "remind", "expire_time", "sign" },
  },
}

local function send_wechat_message(self, req)
  local p, res = self:gate(req, IFACE.A)
  if not p then return res end
  if not valid_tel(p.tel) then return reply(104, MSG.bad_tel, "[]") end
  if not whitelisted(p.link) then return reply(104, MSG.not_whitelisted, "[]") end
  local user = USERS_BY_TEL[p.tel]
  if not user then return reply(105, MSG.no_user, "[]") end
  if not user.follows then return reply(106, MSG.not_following, "[]") end
  self:record(self.messages, req, p)
  return reply(100, MSG.sent_message, "[]")
end

local function get_user_tel_by_code(self, req)
  local p, res = self:gate(req, IFACE.B)
  if not p then return res end
  local user = USERS[p.user_code]
  if not user then return reply(105, MSG.no_code, "[]") end
  if not user.tel then return reply(106, MSG.no_phone, "[]") end
  -- a JSON number, as the document shows (digits only, so it is safe to write as is)
  return reply(100, MSG.got_phone, user.tel)
end

local function outer_entry_order(self, req)
  local p, res = self:gate(req, IFACE.C)
  if not p then return res end
  if not SHOPS[p.shop_code] then return reply(104, MSG.not_developer, "[]") end
  if not p.order_type:match("^[1-5]$") or not p.daily_number:match("^[1-9]%d*$") then
    return reply(104, MSG.bad_param, "[]")
  end
  if p.building_code and p.building_code ~= "" and not BUILDINGS[p.building_code] then
    return reply(104, MSG.bad_param, "[]")
  end
  if self.config.strict and p.tel and p.tel ~= "" and not valid_phone(p.tel) then return reply(104, MSG.bad_tel, "[]") end
  self:record(self.orders, req, p)
  return reply(100, MSG.order_in, "[]")
end

local function user_card_remind(self, req)
  local p, dev = self:gate(req, IFACE.D)
  if not p then return dev end -- dev is the reply here
  if dev.cards[p.msisdn] ~= p.iccid then return reply(104, MSG.card_not_out, '""') end
  if not valid_tel(p.tel) then return reply(104, MSG.bad_tel, '""') end
  -- tel is 开发者手机号, the developer's own phone: the card's user is found by msisdn/iccid
  if self.config.strict and p.tel ~= dev.tel then return reply(104, MSG.not_developer, '""') end
  self:record(self.reminders, req, p)
  return reply(100, MSG.remind_sent, '""')
end

-- Path -> handler(instance, req); POST only (a table { handler=, methods={...} } would allow others).
M.routes = {
  [IFACE.A.path] = send_wechat_message,
  [IFACE.B.path] = get_user_tel_by_code,
  [IFACE.C.path] = outer_entry_order,
  [IFACE.D.path] = user_card_remind,
}

-- latency: the answer leaves that much later (kaifang.sandbox holds it on a timer, serving others meanwhile)
for path, handler in pairs(M.routes) do
  M.routes[path] = function(self, req)
    local res = handler(self, req)
    if self.config.latency and self.config.latency > 0 then res.delay = self.config.latency end
    return res
  end
end

-- GET /_sandbox/lingdian/<name>: what the platform accepted, in order.
M.admin = {
  messages = function(self) return util.json_value(self.messages) end,
  orders = function(self) return util.json_value(self.orders) end,
  reminders = function(self) return util.json_value(self.reminders) end,
}

-- The platform's own "too frequent" answer, for the injected fault of that name.
function M.too_frequent_reply() return reply(104, MSG.too_frequent, "[]") end

return M
