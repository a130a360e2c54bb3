-- Yopoint (友朋) operator open platform: one gateway, form POSTs of `method` + `biz_content`
-- (compact JSON), MD5 over the sorted parameters with "&" and the app secret appended;
-- `error_code == 0` is success. Also the operator's side of third-party payment (the SignKey
-- scheme) and of the platform's async notices.
local cjson = require "cjson.safe"
local core = require "kaifang.core"
local client = require "kaifang.client"
local sign = require "kaifang.sign"

-- LuaJIT (inside nginx) has no integer subtype: math.tointeger and math.type, or stand-ins there.
local tointeger = client.tointeger
local mtype = math.type or function(x)
  if type(x) ~= "number" then return nil end
  return tointeger(x) and "integer" or "float"
end

local M = {}

M.GATEWAY = "/api/gateway/index"
M.VERSION = "1.0.0"

---------------------------------------------------------------------------- JSON
-- biz_content is signed exactly as sent, so it is written once, here, deterministically:
-- object keys in byte order, no spaces, "/" unescaped (Debian's lua-cjson 2.1.0 always writes
-- "\/" and cannot be told not to), integers without ".0" or exponent at any size, other
-- numbers in the shortest form that reads back the same. cjson is used for strings only.

local ARRAY = setmetatable({}, { __mode = "k" }) -- tables marked by M.array

-- Marks a table to be written as a JSON array even when empty ({} is written as an object).
function M.array(t)
  t = t or {}
  ARRAY[t] = true
  return t
end

local function bytes_less(a, b)
  local n = #a < #b and #a or #b
  for i = 1, n do
    local x, y = a:byte(i), b:byte(i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

local function encode_string(s)
  -- cjson's only escape we undo is "\/"; "\\" pairs are matched whole, so "\\/" stays right
  return (cjson.encode(s):gsub("\\(.)", function(c) if c == "/" then return "/" end end))
end

local function encode_number(n)
  if mtype(n) == "integer" then return string.format("%d", n) end
  if n ~= n or n == math.huge or n == -math.huge then error("cannot write " .. tostring(n) .. " in JSON", 0) end
  if n == math.floor(n) and n > -2 ^ 53 and n < 2 ^ 53 then return string.format("%.0f", n) end
  for p = 1, 17 do
    local s = string.format("%." .. p .. "g", n)
    if tonumber(s) == n then return s end
  end
  return string.format("%.17g", n)
end

local function encode(v, depth, out)
  local t = type(v)
  if t == "string" then
    out[#out + 1] = encode_string(v)
  elseif t == "number" then
    out[#out + 1] = encode_number(v)
  elseif t == "boolean" then
    out[#out + 1] = v and "true" or "false"
  elseif v == cjson.null then
    out[#out + 1] = "null"
  elseif t == "table" then
    if depth > 32 then error("nested more than 32 levels (a cycle?)", 0) end
    local n, strings, others = 0, 0, 0
    for k in pairs(v) do
      if type(k) == "string" then strings = strings + 1
      elseif mtype(k) == "integer" and k >= 1 then n = n + 1
      else others = others + 1 end
    end
    if others > 0 or (strings > 0 and n > 0) then
      error("a table with mixed or non-string keys cannot be written as JSON", 0)
    end
    if n > 0 or ARRAY[v] then
      for i = 1, n do
        if v[i] == nil then error("an array with holes cannot be written as JSON", 0) end
      end
      out[#out + 1] = "["
      for i = 1, n do
        if i > 1 then out[#out + 1] = "," end
        encode(v[i], depth + 1, out)
      end
      out[#out + 1] = "]"
    else
      local keys = {}
      for k in pairs(v) do keys[#keys + 1] = k end
      table.sort(keys, bytes_less)
      out[#out + 1] = "{"
      for i, k in ipairs(keys) do
        if i > 1 then out[#out + 1] = "," end
        out[#out + 1] = encode_string(k)
        out[#out + 1] = ":"
        encode(v[k], depth + 1, out)
      end
      out[#out + 1] = "}"
    end
  else
    error("a " .. t .. " cannot be written as JSON", 0)
  end
end

-- Compact JSON of a Lua value, as biz_content is sent; raises on what JSON cannot hold.
function M.json(value)
  local out = {}
  encode(value, 0, out)
  return table.concat(out)
end

-- biz_content from the caller's argument: a table (written once by M.json) or a string that is
-- already JSON (sent byte for byte). Returns json or nil, message.
local function biz_json(biz)
  if biz == nil then return "{}" end
  if type(biz) == "string" then
    if type(cjson.decode(biz)) ~= "table" then return nil, "biz_content string must be a JSON object or array" end
    return biz
  end
  if type(biz) ~= "table" then return nil, "expected a table (biz_content), got " .. type(biz) end
  local ok, json = pcall(M.json, biz)
  if not ok then return nil, "biz_content: " .. json end
  return json
end

---------------------------------------------------------------------------- the client

local sign_keys = setmetatable({}, { __mode = "k" }) -- the SignKey: a second secret, kept off the client

-- Gateway methods as client methods (PascalCase biz_content passed through untouched).
local ENDPOINTS = {
  api_test = { method = "api.test", acts = false },
  cabinet_list = { method = "cabinet.list", acts = false },
  cabinet_product_stock = { method = "cabinet.product.stock", acts = false },
  cabinet_open_door = { method = "cabinet.open.door", acts = true },
  cabinet_order_refund_apply = { method = "cabinet.order.refund.apply", acts = true },
  cabinet_order_user_appeal = { method = "cabinet.order.user.appeal", acts = true },
  cabinet_order_list = { method = "cabinet.order.list", acts = false },
  cabinet_order_get = { method = "cabinet.order.get", acts = false },
  consumer_order_list = { method = "consumer.order.list", acts = false },
  consumer_order_get = { method = "consumer.order.get", acts = false, required = { "ReceiptNo" } },
  -- registers PayUrl, ServerUrl and SignKey for third-party payment
  operators_config_thirdpay_set = { method = "operators.config.thirdpay.set", acts = true },
}

-- biz_content written by a method's check, handed to build_request (the same call, a moment later)
local pending = setmetatable({}, { __mode = "k" })

for _, ep in pairs(ENDPOINTS) do
  ep.check = function(args)
    if type(args) == "table" then
      for _, name in ipairs(ep.required or {}) do
        local v = args[name]
        if v == nil or v == "" then return "missing required parameter '" .. name .. "'" end
        if type(v) ~= "string" and type(v) ~= "number" then
          return "parameter '" .. name .. "' must be a string or a number, got " .. type(v)
        end
      end
    elseif ep.required and type(args) ~= "string" then
      return "missing required parameter '" .. ep.required[1] .. "'"
    end
    local json, msg = biz_json(args)
    if not json then return msg end
    if type(args) == "table" then pending[args] = json end
  end
end

local Yopoint = client.define("yopoint", ENDPOINTS)
M.Client = Yopoint

local function fail(msg, level) error("kaifang.yopoint: " .. msg, level + 1) end

-- kaifang.yopoint.new{ appid=, app_secret=, base_url="https://api.yopoint.com", sign_key=,
--   timestamp_unit="ms"|"s", notify_window=300, version="1.0.0", timeout=15, ... }
function M.new(opts)
  if type(opts) ~= "table" then fail("new expects a table of options", 2) end
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  if mtype(o.appid) == "integer" then o.appid = string.format("%d", o.appid) end
  local unit = o.timestamp_unit or "ms"
  if unit ~= "ms" and unit ~= "s" then fail("option 'timestamp_unit' must be \"ms\" or \"s\"", 2) end
  if o.sign_key ~= nil and (type(o.sign_key) ~= "string" or o.sign_key == "") then
    fail("option 'sign_key' must be a non-empty string", 2)
  end
  local window = o.notify_window or 300
  if not client.seconds(window) then fail("option 'notify_window' must be a positive number of seconds, at most 1e6", 2) end
  if o.version ~= nil and (type(o.version) ~= "string" or o.version == "") then
    fail("option 'version' must be a non-empty string", 2)
  end
  local self = (client.new(Yopoint, o, { -- not a tail call: client.new raises at level 3, our caller
    required = { "appid" }, secret = "app_secret", base_url = "https://api.yopoint.com",
    options = { "sign_key", "timestamp_unit", "notify_window", "version" },
  }))
  if not opts.clock then self.clock = core.now end -- milliseconds need the sub-second part
  self.timestamp_unit = unit
  self.version = o.version or M.VERSION
  self.notify_window = window
  sign_keys[self] = o.sign_key
  return self
end

function Yopoint:__tostring()
  return ("kaifang.yopoint{ appid = %q, base_url = %q }"):format(self.appid, self.base_url)
end

local METHOD_NAME = "^[a-z][a-z0-9_]*[%.a-z0-9_]*$"

-- yp:call(method, biz [, call_opts]): any gateway method. biz is a table (written as compact
-- JSON) or a JSON string sent as is. A method the client does not know is taken to act (never
-- repeated once it may have been sent) unless call_opts.idempotent is true.
function Yopoint:call(method, biz, call_opts)
  if getmetatable(self) ~= Yopoint then fail("call it as a method: client:call(method, biz)", 2) end
  if type(method) ~= "string" or not method:match(METHOD_NAME) then
    fail("call: the method must be a lower-case gateway method name such as \"cabinet.list\", got " .. tostring(method), 2)
  end
  local bad = client.check_call_opts(call_opts)
  if bad then fail("call: " .. bad, 2) end
  local json, msg = biz_json(biz)
  if not json then fail("call " .. method .. ": " .. msg, 2) end
  local acts = true
  for _, ep in pairs(ENDPOINTS) do
    if ep.method == method then acts = ep.acts end
  end
  return self:call_endpoint({ name = "call", method = method, acts = acts, json = json }, biz, call_opts)
end

local function timestamp(self)
  local t = self.clock()
  if self.timestamp_unit == "s" then return math.floor(t) end
  return math.floor(t * 1000)
end

-- The common parameters and the sign over them; the form sent is exactly what was signed.
function Yopoint:build_request(ep, args)
  if ep.kind == "pay_notify" then return self:build_pay_notify(args) end
  local json = ep.json or pending[args] or assert(biz_json(args)) -- the same text on every attempt
  local params = {
    appid = self.appid,
    method = ep.method,
    biz_content = json,
    version = self.version,
    timestamp = timestamp(self),
    sign_type = "md5",
  }
  local signed = client.sign(self, params)
  return {
    method = "POST",
    url = self:url(M.GATEWAY),
    headers = { ["Content-Type"] = "application/x-www-form-urlencoded" },
    body = core.form_encode(params),
    signed = signed,
  }
end

-- Only a rate-limit reply is worth repeating; the code is what the sandbox writes (inferred).
local RETRYABLE = { ERR_FREQUENT = true }

function Yopoint:interpret(ep, res)
  if ep.kind == "pay_notify" then return self:pay_notify_result(ep, res) end
  local data, extra = self:coded_reply(ep, res, "error_code", "error_msg")
  if data == nil and extra.kind == "platform" then
    extra.retryable = RETRYABLE[extra.message] == true or RETRYABLE[extra.code] == true
  end
  return data, extra
end

---------------------------------------------------------------------------- third-party payment

local PAY_NOTIFY = {
  name = "pay_notify", kind = "pay_notify", acts = true,
  params = { notify_url = "text!", receipt_no = "text!", trade_no = "text!", trade_status = "integer!",
             trade_rawdata = "any", price = "integer!" },
}

-- yp:pay_notify{ notify_url=, receipt_no=, trade_no=, trade_status=1|-1, trade_rawdata=, price= }
-- Tells Yopoint how the payment of one of its orders went: a form POST to the notify_url it gave,
-- signed with the SignKey (receipt_no, trade_no, trade_status, trade_rawdata, timestamp in
-- seconds), `price` (fen) appended unsigned. Returns true when Yopoint answers `success`.
function Yopoint:pay_notify(args)
  if getmetatable(self) ~= Yopoint then fail("call pay_notify as a method: client:pay_notify{...}", 2) end
  local msg = client.check_args(PAY_NOTIFY.params, args == nil and {} or args)
  if not msg then
    if not sign_keys[self] then
      msg = "needs the SignKey: create the client with the option 'sign_key'"
    elseif not tostring(args.notify_url):match("^https?://[^/]") then
      msg = "parameter 'notify_url' must be an http:// or https:// URL"
    elseif tonumber(args.trade_status) ~= 1 and tonumber(args.trade_status) ~= -1 then
      msg = "parameter 'trade_status' must be 1 (paid) or -1 (failed)"
    elseif args.trade_rawdata ~= nil and type(args.trade_rawdata) ~= "string" and type(args.trade_rawdata) ~= "table" then
      msg = "parameter 'trade_rawdata' must be a string or a table (sent as JSON), got " .. type(args.trade_rawdata)
    elseif type(args.trade_rawdata) == "table" then
      local ok, e = pcall(M.json, args.trade_rawdata)
      if not ok then msg = "parameter 'trade_rawdata': " .. e end
    end
  end
  if msg then fail("pay_notify: " .. msg, 2) end
  return self:call_endpoint(PAY_NOTIFY, args)
end

local function integer_text(v)
  if type(v) == "number" then return string.format("%d", tointeger(v)) end
  return v
end

function Yopoint:build_pay_notify(args)
  local raw = args.trade_rawdata
  if type(raw) == "table" then raw = M.json(raw) end
  local params = {
    receipt_no = args.receipt_no,
    trade_no = args.trade_no,
    trade_status = integer_text(args.trade_status),
    trade_rawdata = raw or "",
    timestamp = math.floor(self.clock()), -- seconds here, whatever timestamp_unit says
  }
  params.sign = sign.signer("yopoint"):sign(params, sign_keys[self])
  params.price = integer_text(args.price) -- appended after signing: not part of the sign
  return {
    method = "POST",
    url = args.notify_url,
    headers = { ["Content-Type"] = "application/x-www-form-urlencoded" },
    body = core.form_encode(params),
  }
end

function Yopoint:pay_notify_result(ep, res)
  local body = res.body or ""
  local answer = body:match("^%s*(.-)%s*$")
  if res.status >= 200 and res.status <= 299 and answer == "success" then return { data = answer } end
  -- The receiver did not take it. A payment notice for the same trade is idempotent by design
  -- (the receiver settles the order once), so sending it again is how this is repaired.
  return nil, self:error{
    kind = (res.status >= 200 and res.status <= 299) and "platform" or "http",
    code = (res.status < 200 or res.status > 299) and res.status or nil,
    http_status = res.status, message = answer:sub(1, 200), maybe_sent = true, retryable = true,
  }
end

---------------------------------------------------------------------------- callbacks

local function unescape(s)
  s = s:gsub("+", " ")
  for pos in s:gmatch("()%%") do
    if not s:sub(pos + 1, pos + 2):match("^%x%x$") then return nil end
  end
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- A form body, a query string (with or without "?"), a whole URL, or JSON -> table | nil, msg.
local function fields_of(input)
  if type(input) == "table" then return input end
  if type(input) ~= "string" then return nil, "expected a table or a string, got " .. type(input) end
  local s = input:match("^%s*(.-)%s*$")
  if s:sub(1, 1) == "{" then
    local t = cjson.decode(s)
    if type(t) ~= "table" then return nil, "not a JSON object" end
    return t
  end
  s = s:match("^[^?]*%?(.*)$") or s
  s = s:gsub("#.*$", "")
  local t = {}
  for pair in (s .. "&"):gmatch("([^&]*)&") do
    if pair ~= "" then
      local k, v = pair:match("^([^=]*)=(.*)$")
      if not k then k, v = pair, "" end
      k, v = unescape(k), unescape(v)
      if not k or not v then return nil, "malformed percent-encoding" end
      t[k] = v
    end
  end
  return t
end

-- The values a notice carries, as text (cjson numbers as the platform wrote them); nil, why for
-- anything else.
local function as_text(v)
  if type(v) == "string" then return v end
  if type(v) == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return nil, "not a finite number" end
    local i = tointeger(v)
    if i then return string.format("%d", i) end
    return encode_number(v)
  end
  return nil, "a " .. type(v) .. ", not text"
end

-- The fields of a notice as text, or nil, message. Raises on nothing it is given that it can
-- catch: an unauthenticated sender picks what is in it.
local function read_fields(input)
  local raw, msg = fields_of(input)
  if not raw then return nil, msg end
  local fields = {}
  for k, v in pairs(raw) do
    if type(k) ~= "string" then return nil, "non-string field name" end
    local text, why = as_text(v)
    if not text then return nil, "field '" .. k .. "' is " .. why end
    fields[k] = text
  end
  return fields
end

-- Checks a notice signed in the Yopoint scheme with `key`; returns the fields (as text) or nil, err.
local function verify_signed(self, input, key, what, opts)
  local window = (opts and opts.window) or self.notify_window
  if not client.seconds(window) then fail(what .. ": option 'window' must be a positive number of seconds, at most 1e6", 3) end
  local ok, fields, msg = pcall(read_fields, input)
  if not ok or not fields then
    msg = ok and msg or ("unreadable (" .. (type(fields) == "string" and fields or type(fields)) .. ")")
    return nil, self:error{ kind = "decode", message = what .. ": " .. msg }
  end
  local got = fields.sign
  if got == nil or got == "" then
    return nil, self:error{ kind = "signature", code = "missing_sign", message = what .. " carries no sign" }
  end
  fields.sign = nil
  local expected = sign.signer("yopoint"):sign(fields, key)
  -- the document: 签名(小写), md5 "转换为小写字母"; an upper-case sign is not one it makes
  if not core.ct_equal(expected, got) then
    return nil, self:error{ kind = "signature", code = "bad_sign", message = what .. " sign does not match" }
  end
  -- timestamps in seconds; a value that can only be milliseconds is read as such
  local ts = tonumber(fields.timestamp or "")
  if not ts or not tostring(fields.timestamp):match("^%d+$") then
    return nil, self:error{ kind = "stale", code = "no_timestamp", message = what .. " carries no usable timestamp" }
  end
  if ts > 1e11 then ts = ts / 1000 end
  local skew = self.clock() - ts
  if math.abs(skew) > window then
    return nil, self:error{
      kind = "stale", code = "timestamp",
      message = ("%s timestamp is %d s %s (window %d s): refused as a replay"):format(
        what, math.floor(math.abs(skew) + 0.5), skew > 0 and "old" or "in the future", window),
    }
  end
  return fields
end

-- yp:verify_notify(params [, { window = seconds, key = "app_secret" | "sign_key" }])
-- params: the notice's fields (a table), or its body as a string (form or JSON). Checks the sign
-- (constant time; the app secret by default) and that the timestamp is within the window.
-- Returns the notice: its fields as text, plus `data` (biz_content decoded) when it has one;
-- or nil, err with err.kind "signature" (no sign, wrong sign) or "stale" (no timestamp, outside
-- the window: a replay), or "decode" (not a notice at all).
function Yopoint:verify_notify(params, opts)
  if getmetatable(self) ~= Yopoint then fail("call verify_notify as a method: client:verify_notify(params)", 2) end
  if opts ~= nil and type(opts) ~= "table" then fail("verify_notify: options must be a table", 2) end
  local which = opts and opts.key or "app_secret"
  local key
  if which == "app_secret" then
    key = client.secret(self)
  elseif which == "sign_key" then
    key = sign_keys[self]
    if not key then fail("verify_notify: key \"sign_key\" needs the client option 'sign_key'", 2) end
  else
    fail("verify_notify: option 'key' must be \"app_secret\" or \"sign_key\"", 2)
  end
  local fields, err = verify_signed(self, params, key, "notice", opts)
  if not fields then return nil, err end
  if fields.appid ~= self.appid then -- a common parameter of every signed request: required
    return nil, self:error{ kind = "signature", code = "appid",
                            message = fields.appid and ("notice is for appid " .. fields.appid) or "notice carries no appid" }
  end
  if fields.biz_content and fields.biz_content ~= "" then
    local data = client.json_decode(fields.biz_content) -- whole numbers as integers
    if type(data) ~= "table" then
      return nil, self:error{ kind = "decode", message = "notice biz_content is not JSON" }
    end
    fields.data = data
  end
  return fields
end

-- yp:verify_pay_redirect(query [, { window = seconds }])
-- The buyer arrives at PayUrl?receipt_no=&return_url=&notify_url=&timestamp=&sign= (signed with
-- the SignKey). query: the query string, the whole URL, or a table of its fields. Returns
-- { receipt_no=, return_url=, notify_url=, timestamp= } or nil, err as verify_notify does.
function Yopoint:verify_pay_redirect(query, opts)
  if getmetatable(self) ~= Yopoint then fail("call verify_pay_redirect as a method", 2) end
  if opts ~= nil and type(opts) ~= "table" then fail("verify_pay_redirect: options must be a table", 2) end
  local key = sign_keys[self]
  if not key then fail("verify_pay_redirect needs the SignKey: create the client with the option 'sign_key'", 2) end
  local fields, err = verify_signed(self, query, key, "pay redirect", opts)
  if not fields then return nil, err end
  if not fields.receipt_no or fields.receipt_no == "" then
    return nil, self:error{ kind = "decode", message = "pay redirect without receipt_no" }
  end
  return fields
end

return M
