-- The pipeline every platform client shares: check arguments, build and sign (the platform's
-- part), send through the transport, decode, map the reply (the platform's part).
local cjson = require "cjson.safe"
local errors = require "kaifang.errors"

local M = {}

local Base = {}
M.Base = Base

-- Secrets live here, not in the client table, so that pairs() or an inspector never shows them.
local secrets = setmetatable({}, { __mode = "k" })

local function fail(platform, msg, level)
  error("kaifang." .. platform .. ": " .. msg, level + 1)
end

-- Argument kinds: "text" is a string or a number (numbers are sent as the platforms write them);
-- "integer" an integral number or a string of digits; "table" a table; "any" anything. A "!"
-- suffix makes the parameter required (and a required text non-empty).
local function check_value(kind, value)
  local t = type(value)
  if kind == "text" then
    return t == "string" or t == "number"
  elseif kind == "integer" then
    if t == "number" then return value == math.floor(value) end
    return t == "string" and value:match("^%-?%d+$") ~= nil
  elseif kind == "table" then
    return t == "table"
  end
  return true
end

-- Returns nil, or a message naming the first bad parameter.
function M.check_args(spec, args)
  if type(args) ~= "table" then return "expected a table of parameters, got " .. type(args) end
  for name, kind in pairs(spec) do
    local required = kind:sub(-1) == "!"
    if required then kind = kind:sub(1, -2) end
    local value = args[name]
    if value == nil or (required and value == "") then
      if required then return "missing required parameter '" .. name .. "'" end
    elseif not check_value(kind, value) then
      return "parameter '" .. name .. "' must be " .. (kind == "text" and "a string or a number" or
        kind == "integer" and "an integer" or "a " .. kind) .. ", got " .. type(value)
    end
  end
  for name in pairs(args) do
    if spec[name] == nil then
      local known = {}
      for k in pairs(spec) do known[#known + 1] = k end
      table.sort(known)
      return "unknown parameter '" .. tostring(name) .. "' (expected " .. table.concat(known, ", ") .. ")"
    end
  end
end

-- Defines a platform's client class from its endpoints: each endpoint becomes a method
-- client:<name>(args). An endpoint has `params` (see check_args), `acts` (true when calling it
-- changes something at the platform, so it is never repeated once it may have been sent) and
-- whatever the platform's build_request/interpret need.
function M.define(platform, endpoints)
  local Class = setmetatable({ platform = platform, endpoints = endpoints }, { __index = Base })
  Class.__index = Class
  Class.__name = "kaifang." .. platform
  for name, ep in pairs(endpoints) do
    ep.name = name
    Class[name] = function(self, args)
      if getmetatable(self) ~= Class then
        fail(platform, "call " .. name .. " as a method: client:" .. name .. "{...}", 2)
      end
      local msg = ep.params and M.check_args(ep.params, args == nil and {} or args)
      if not msg and ep.check then msg = ep.check(args) end
      if msg then fail(platform, name .. ": " .. msg, 2) end
      return self:call_endpoint(ep, args or {})
    end
  end
  return Class
end

-- Common options: base_url, timeout (15 s), connect_timeout (5 s), ssl_verify (true), cainfo,
-- capath, proxy, user_agent, transport (an object with :request), clock (a function returning
-- unix seconds; for clock skew and tests).
function M.new(Class, opts, fields)
  local platform = Class.platform
  if type(opts) ~= "table" then fail(platform, "new expects a table of options", 3) end
  local self = setmetatable({}, Class)
  for _, name in ipairs(fields.required) do
    local v = opts[name]
    if type(v) ~= "string" or v == "" then fail(platform, "option '" .. name .. "' must be a non-empty string", 3) end
    self[name] = v
  end
  if fields.secret then
    local v = opts[fields.secret]
    if type(v) ~= "string" or v == "" then fail(platform, "option '" .. fields.secret .. "' must be a non-empty string", 3) end
    secrets[self] = v
  end
  local base = opts.base_url or fields.base_url
  if type(base) ~= "string" or not base:match("^https?://[^/]") then
    fail(platform, "option 'base_url' must be an http:// or https:// URL", 3)
  end
  self.base_url = base:gsub("/+$", "")
  for _, name in ipairs({ "timeout", "connect_timeout" }) do
    local v = opts[name]
    if v ~= nil and (type(v) ~= "number" or v <= 0) then
      fail(platform, "option '" .. name .. "' must be a positive number of seconds", 3)
    end
  end
  self.timeout = opts.timeout or 15
  if opts.clock ~= nil and type(opts.clock) ~= "function" then fail(platform, "option 'clock' must be a function", 3) end
  self.clock = opts.clock or os.time
  if opts.transport ~= nil then
    if type(opts.transport) ~= "table" or type(opts.transport.request) ~= "function" then
      fail(platform, "option 'transport' must be an object with a request method", 3)
    end
    self.transport = opts.transport
  else
    self.transport = require("kaifang.transport.curl").new{
      timeout = self.timeout, connect_timeout = opts.connect_timeout, ssl_verify = opts.ssl_verify,
      cainfo = opts.cainfo, capath = opts.capath, proxy = opts.proxy, user_agent = opts.user_agent,
    }
  end
  return self
end

-- The client's secret, for its own platform module only: not a method, so it is not reachable
-- from the client object.
function M.secret(self)
  return secrets[self]
end

function Base:error(fields)
  fields.platform = self.platform
  return errors.new(fields)
end

function Base:call_endpoint(ep, args)
  local req = self:build_request(ep, args)
  local res, err = self:send(ep, req)
  if not res then return nil, err end
  return self:interpret(ep, res)
end

function Base:send(ep, req)
  req.timeout = req.timeout or self.timeout
  local res, err = self.transport:request(req)
  if not res then
    err.platform = self.platform
    -- repeating a read cannot do harm; repeating an action only when it never left
    if not ep.acts then err.retryable = true end
    return nil, errors.new(err)
  end
  return res
end

local tointeger = math.tointeger or function(x) return x end

-- cjson reads every JSON number as a float; codes and ids are integers (104, not 104.0).
local function integers(v)
  if type(v) == "number" then
    return v == math.floor(v) and v >= -2^53 and v <= 2^53 and tointeger(v) or v
  elseif type(v) == "table" then
    for k, x in pairs(v) do
      if type(x) == "number" or type(x) == "table" then v[k] = integers(x) end
    end
  end
  return v
end

function M.json_decode(text)
  local v, err = cjson.decode(text)
  if v == nil then return nil, err end
  return integers(v)
end

-- The reply as a JSON object, or nil, err for an HTTP failure or a body that is not one.
function Base:decode(ep, res)
  if res.status < 200 or res.status > 299 then
    return nil, self:error{
      kind = "http", code = res.status, http_status = res.status,
      message = (res.body or ""):sub(1, 200), maybe_sent = ep.acts, retryable = not ep.acts,
    }
  end
  local doc = M.json_decode(res.body)
  if type(doc) ~= "table" then
    return nil, self:error{
      kind = "decode", http_status = res.status, message = "reply is not a JSON object: " .. (res.body or ""):sub(1, 100),
      maybe_sent = ep.acts, retryable = not ep.acts,
    }
  end
  return doc
end

function Base:close()
  if self.transport.close then self.transport:close() end
end

Base.__close = Base.close

return M
