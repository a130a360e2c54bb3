-- Dakashi (大卡师) IoT-card platform: JSON POSTs carrying client_id (or app_id), a timestamp in
-- seconds and an upper-case SHA1 over the sorted parameters with the secret appended;
-- errcode 0 is success. Also its unsigned callbacks (recharge, on/off).
local cjson = require "cjson.safe"
local client = require "kaifang.client"
local errors = require "kaifang.errors"

local tointeger = client.tointeger -- math.tointeger, or a stand-in under LuaJIT

local M = {}

-- Parameter spec: `required` must be present and non-empty; `strict` forbids any other
-- parameter (the documented interface); otherwise further parameters pass through, so an
-- interface known only from outside the document can take what the platform expects.
local ENDPOINTS = {
  member_info = { path = "/v1/member/info", acts = false, required = { "serial_no" }, strict = true },
  member_product_info = { path = "/v1/member/product/info", acts = false, required = { "serial_no" } },
  product_info = { path = "/v1/product/info", acts = false },
  user_info = { path = "/v1/user/info", acts = false },
  prepaid_card_info = { path = "/v1/prepaid/card/info", acts = false },
  order_info = { path = "/v1/order/info", acts = false },
  member_gprs_reset = { path = "/v1/member/gprs/reset", acts = true, required = { "serial_no" } },
  send_message = { path = "/v1/send/message", acts = true, required = { "serial_no", "content" } },
  member_custom_no = { path = "/v1/member/custom_no", acts = true, required = { "serial_no", "custom_no" } },
}

local RESERVED = { client_id = true, app_id = true, timestamp = true, sign = true }

-- Parameters the document types as strings: a whole number given for one is sent as its digits.
local STRINGS = { serial_no = true }

-- Values are signed and sent as the same text: strings as they are (an empty one signed as
-- "k=", as the document's PHP demo does), whole numbers as integers. A fractional number would
-- be written one way in JSON and possibly another in the signature, so it is refused.
local function check_params(args, required, strict)
  if args == nil then args = {} end
  if type(args) ~= "table" then return "expected a table of parameters, got " .. type(args) end
  local known = {}
  for _, name in ipairs(required or {}) do known[name] = true end
  for k, v in pairs(args) do
    if type(k) ~= "string" then return "parameter names must be strings, got " .. type(k) end
    if RESERVED[k] then return "parameter '" .. k .. "' is added by the client; do not pass it" end
    if strict and not known[k] then return client.unknown("parameter", k, known) end
    if type(v) == "number" then
      if not tointeger(v) then
        return "parameter '" .. k .. "' must be a whole number or a string, got " .. tostring(v)
      end
    elseif type(v) == "string" then
      if v == "" and known[k] then return "missing required parameter '" .. k .. "'" end
    else
      return "parameter '" .. k .. "' must be a string or a whole number, got " .. type(v)
    end
  end
  for _, name in ipairs(required or {}) do
    if args[name] == nil then return "missing required parameter '" .. name .. "'" end
  end
end

for _, ep in pairs(ENDPOINTS) do
  ep.check = function(args) return check_params(args, ep.required, ep.strict) end
end

local Dakashi = client.define("dakashi", ENDPOINTS)
M.Client = Dakashi

local function fail(msg, level) error("kaifang.dakashi: " .. msg, level + 1) end

local function pick(opts, a, b)
  local x, y = opts[a], opts[b]
  if x ~= nil and y ~= nil and x ~= y then fail("options '" .. a .. "' and '" .. b .. "' disagree; give one", 3) end
  if x ~= nil then return x, a end
  return y, y ~= nil and b or nil
end

-- kaifang.dakashi.new{ client_id=, client_secret=, base_url="http://api.qwtong.me",
--                      id_field="client_id"|"app_id", timeout=15, ... }
-- Later versions of the platform call the pair app_id/app_secret: either spelling is accepted,
-- and the id goes out under the name configured (id_field; by default the spelling given).
function M.new(opts)
  if type(opts) ~= "table" then fail("new expects a table of options", 2) end
  local msg = client.check_options(opts, { options = { "client_id", "app_id", "client_secret", "app_secret", "id_field" } })
  if msg then fail(msg, 2) end
  local id, id_name = pick(opts, "client_id", "app_id")
  local secret = pick(opts, "client_secret", "app_secret")
  if type(id) ~= "string" or id == "" then fail("option 'client_id' (or 'app_id') must be a non-empty string", 2) end
  if type(secret) ~= "string" or secret == "" then
    fail("option 'client_secret' (or 'app_secret') must be a non-empty string", 2)
  end
  local field = opts.id_field or id_name
  if field ~= "client_id" and field ~= "app_id" then fail("option 'id_field' must be \"client_id\" or \"app_id\"", 2) end
  local o = {}
  for k, v in pairs(opts) do
    if k ~= "app_id" and k ~= "app_secret" then o[k] = v end
  end
  o.client_id, o.client_secret = id, secret
  local self = (client.new(Dakashi, o, { -- not a tail call: client.new raises at level 3, our caller
    required = { "client_id" }, secret = "client_secret", base_url = "http://api.qwtong.me",
    options = { "id_field" },
  }))
  self.id_field = field
  return self
end

function Dakashi:__tostring()
  return ("kaifang.dakashi{ %s = %q, base_url = %q }"):format(self.id_field, self.client_id, self.base_url)
end

-- dk:call(path, params [, call_opts]): any interface by its path. An unknown path is taken to
-- act (never repeated once it may have been sent) unless call_opts.idempotent is true.
function Dakashi:call(path, params, call_opts)
  if getmetatable(self) ~= Dakashi then fail("call it as a method: client:call(path, params)", 2) end
  if type(path) ~= "string" or not path:match("^/[%w%-%._~/]*$") then
    fail("call: the path must start with '/', such as \"/v1/member/info\", got " .. tostring(path), 2)
  end
  local bad = client.check_call_opts(call_opts)
  if bad then fail("call: " .. bad, 2) end
  local msg = check_params(params)
  if msg then fail("call " .. path .. ": " .. msg, 2) end
  local acts = true
  for _, ep in pairs(ENDPOINTS) do
    if ep.path == path then acts = ep.acts end
  end
  return self:call_endpoint({ name = "call", path = path, acts = acts }, params or {}, call_opts)
end

-- Flat JSON object; keys in byte order so a body reads the same every time. Integers as
-- integers; strings through cjson (whose "\/" for "/" is valid JSON and decodes to the same).
local function json_object(params)
  local keys = {}
  for k in pairs(params) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for i, k in ipairs(keys) do
    local v = params[k]
    parts[i] = cjson.encode(k) .. ":" .. (type(v) == "number" and string.format("%d", v) or cjson.encode(v))
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

function Dakashi:build_request(ep, args)
  local params = {}
  for k, v in pairs(args) do
    if type(v) == "number" then v = STRINGS[k] and string.format("%d", tointeger(v)) or tointeger(v) end
    params[k] = v
  end
  params[self.id_field] = self.client_id
  params.timestamp = math.floor(self.clock())
  local signed = client.sign(self, params)
  return {
    method = "POST",
    url = self:url(ep.path),
    headers = { ["Content-Type"] = "application/json" },
    body = json_object(params),
    signed = signed,
  }
end

-- Known codes: the document gives 0 and 50000; 55001-55015 are the sandbox's reading (README:
-- "What the documents leave open"), every code it answers. Only "too frequent" is worth repeating.
M.ERRORS = {
  [50000] = "unknown error",
  [55001] = "bad client_id / app_id",
  [55002] = "IP not whitelisted",
  [55003] = "bad sign",
  [55004] = "card not found",
  [55005] = "bad or expired timestamp",
  [55006] = "too frequent",
  [55007] = "missing parameter",
  [55008] = "malformed parameter or body",
  [55009] = "card state does not allow this",
  [55010] = "no such product",
  [55011] = "no such order",
  [55012] = "no such prepaid card",
  [55013] = "message too long",
  [55014] = "custom number already in use",
  [55015] = "repeated request (a replay)",
}
local TOO_FREQUENT = 55006

function Dakashi:interpret(ep, res)
  local data, extra = self:coded_reply(ep, res, "errcode", "errmsg")
  if data == nil and extra.kind == "platform" then
    local code = tonumber(extra.code)
    extra.code = tointeger(code) or extra.code
    extra.message = extra.message or M.ERRORS[code]
    extra.retryable = code == TOO_FREQUENT
  end
  return data, extra
end

---------------------------------------------------------------------------- callbacks

-- What a callback receiver answers when it has taken the callback; anything else makes the
-- platform send it again (three more times).
M.callback_reply = '{"errcode":0,"errmsg":"success"}'

M.ACTIONS = { [1] = "recharge", [2] = "switch" }

-- kaifang.dakashi.parse_callback(body) -> callback | nil, err
-- body: the callback's JSON text (or an already decoded table). Callbacks are unsigned in the
-- known documentation, so this checks shape only: a JSON object whose action_type is 1
-- (recharge) or 2 (on/off). The callback comes back with whole numbers as integers and
-- `action` set to "recharge" or "switch".
local function parse_callback(body)
  local doc = body
  if type(body) == "string" then doc = client.json_decode(body) end
  if type(doc) ~= "table" then
    return nil, errors.new{ platform = "dakashi", kind = "decode",
                            message = "callback is not a JSON object: " .. tostring(body):sub(1, 100) }
  end
  local action = M.ACTIONS[tonumber(doc.action_type)]
  if not action then
    return nil, errors.new{ platform = "dakashi", kind = "decode",
                            message = "callback action_type must be 1 (recharge) or 2 (on/off), got " .. tostring(doc.action_type) }
  end
  doc.action_type = tointeger(tonumber(doc.action_type))
  doc.action = action
  return doc
end

-- Whatever the sender put in it, nil, err: never an error.
function M.parse_callback(body)
  local ok, doc, err = pcall(parse_callback, body)
  if ok then return doc, err end
  return nil, errors.new{ platform = "dakashi", kind = "decode",
                          message = "callback unreadable (" .. (type(doc) == "string" and doc or type(doc)) .. ")" }
end

return M
