-- The pipeline every platform client shares: check arguments, build and sign (the platform's
-- part), send through the transport, decode, map the reply (the platform's part).
local cjson = require "cjson.safe"
local core = require "kaifang.core"
local errors = require "kaifang.errors"
local sign = require "kaifang.sign"

local transport = require "kaifang.transport"

local monotonic = core.monotonic

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
  if t == "number" and (value ~= value or value == math.huge or value == -math.huge) then
    return false -- NaN and infinities: no platform can receive them
  end
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

-- Optimal string alignment distance (a swap of two neighbours counts once: "contnet").
local function distance(a, b)
  local prev2, prev, cur = {}, {}, {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    cur = { [0] = i }
    for j = 1, #b do
      local cost = a:byte(i) == b:byte(j) and 0 or 1
      local d = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
      if i > 1 and j > 1 and a:byte(i) == b:byte(j - 1) and a:byte(i - 1) == b:byte(j) then
        d = math.min(d, prev2[j - 2] + 1)
      end
      cur[j] = d
    end
    prev2, prev = prev, cur
  end
  return prev[#b]
end

-- "unknown <what> 'name' (did you mean 'x'?)", else the names it could have been. known: a set.
function M.unknown(what, name, known)
  name = tostring(name)
  local names, best, best_d = {}, nil, math.huge
  for k in pairs(known) do
    names[#names + 1] = k
    local d = distance(name:lower(), k:lower())
    if d < best_d or (d == best_d and k < best) then best, best_d = k, d end
  end
  if best and best_d <= math.max(1, math.min(2, math.floor(#name / 3))) then
    return ("unknown %s '%s' (did you mean '%s'?)"):format(what, name, best)
  end
  if #names == 0 then return ("unknown %s '%s' (it takes no %ss)"):format(what, name, what) end
  table.sort(names)
  return ("unknown %s '%s' (expected %s)"):format(what, name, table.concat(names, ", "))
end

-- A spec as a flat list of name, kind (without "!"), required: read once per spec, not per call.
local compiled = setmetatable({}, { __mode = "k" })

local function compile(spec)
  local list = {}
  for name, kind in pairs(spec) do
    local required = kind:sub(-1) == "!"
    list[#list + 1], list[#list + 2], list[#list + 3] = name, required and kind:sub(1, -2) or kind, required
  end
  compiled[spec] = list
  return list
end

-- Returns nil, or a message naming the first bad parameter. Unknown names come first: a
-- misspelt required parameter is reported as the typo it is, not as a missing one.
function M.check_args(spec, args)
  if type(args) ~= "table" then return "expected a table of parameters, got " .. type(args) end
  for name in next, args do
    if spec[name] == nil then return M.unknown("parameter", name, spec) end
  end
  local list = compiled[spec] or compile(spec)
  for i = 1, #list, 3 do
    local name, kind, required = list[i], list[i + 1], list[i + 2]
    local value = args[name]
    if value == nil or (required and value == "") then
      if required then return "missing required parameter '" .. name .. "'" end
    elseif not check_value(kind, value) then
      return "parameter '" .. name .. "' must be " .. (kind == "text" and "a string or a finite number" or
        kind == "integer" and "an integer" or "a " .. kind) .. ", got " .. (type(value) == "number" and tostring(value) or type(value))
    end
  end
end

-- Per-call options: { idempotent = true | false, key = "...", timeout = seconds }. key names the
-- call in a batch's journal (kaifang.journal); a single call has no use for it. timeout replaces
-- the client's for this call. nil, or what is wrong with them.
local CALL_OPTIONS = { idempotent = "boolean", key = "string", timeout = "number" }

function M.check_call_opts(call_opts)
  if call_opts == nil then return nil end
  if type(call_opts) ~= "table" then return "per-call options must be a table, got " .. type(call_opts) end
  for k, v in pairs(call_opts) do
    local want = CALL_OPTIONS[k]
    if not want then return M.unknown("per-call option", k, CALL_OPTIONS) end
    if type(v) ~= want then return ("per-call option '%s' must be a %s, got %s"):format(k, want, type(v)) end
    if v == "" then return ("per-call option '%s' must not be empty"):format(k) end
    if k == "timeout" and not M.seconds(v) then return "per-call option 'timeout' must be a positive number of seconds, at most 1e6" end
  end
end

-- Defines a platform's client class from its endpoints: each endpoint becomes a method
-- client:<name>(args). An endpoint has `params` (see check_args), `acts` (true when calling it
-- changes something at the platform, so it is never repeated once it may have been sent) and
-- whatever the platform's build_request/interpret need.
function M.define(platform, endpoints)
  local Class = setmetatable({ platform = platform, endpoints = endpoints }, { __index = Base })
  -- Base's methods copied in (every one is defined when this file loads): a call finds them in
  -- one lookup, not two; the class's own, set after this, replace them
  for k, v in pairs(Base) do Class[k] = v end
  Class.__index = Class
  Class.__name = "kaifang." .. platform
  for name, ep in pairs(endpoints) do
    ep.name = name
    Class[name] = function(self, args, call_opts)
      if getmetatable(self) ~= Class then
        fail(platform, "call " .. name .. " as a method: client:" .. name .. "{...}", 2)
      end
      local msg = M.validate(ep, args, self) or M.check_call_opts(call_opts)
      if msg then fail(platform, name .. ": " .. msg, 2) end
      return self:call_endpoint(ep, args or {}, call_opts)
    end
  end
  return Class
end

-- nil, or what is wrong with the arguments of a call to ep by client c (ep.check(args, c) may
-- read the client's options).
function M.validate(ep, args, c)
  local msg = ep.params and M.check_args(ep.params, args == nil and {} or args)
  if not msg and ep.check then msg = ep.check(args, c) end
  return msg
end

-- Whether a call changes something at the platform, so that it is never repeated once it may
-- have been sent. Per-call option idempotent = true/false overrides the endpoint's marking.
function M.acts(ep, call_opts)
  if call_opts and call_opts.idempotent ~= nil then return not call_opts.idempotent end
  return ep.acts == true
end

-- Exponential backoff with jitter, capped: seconds to wait before attempt + 1.
function M.backoff(attempt, base, cap)
  local d = math.min(cap or 5, (base or 0.1) * 2 ^ (attempt - 1))
  return d * (0.5 + math.random())
end

-- A URL fit for logs: the values of token- and secret-like query parameters hidden.
function M.redact_url(url)
  return (url:gsub("([?&])([^=&]+)=([^&]*)", function(sep, k, v)
    local lk = k:lower()
    if lk:find("token", 1, true) or lk:find("secret", 1, true) or lk:find("key", 1, true) or lk == "sign" then
      v = "***"
    end
    return sep .. k .. "=" .. v
  end))
end

-- Options every client takes: base_url, timeout (15 s: the whole call, from the moment it is made,
-- its waits and attempts included), connect_timeout (5 s), ssl_verify (true),
-- cainfo, capath, proxy, user_agent, max_body, transport (an object with :request, or "curl",
-- "ngx_thread", "resty_http"; see kaifang.transport), thread_pool (ngx_thread),
-- keepalive_timeout and keepalive_pool (resty_http), clock (a function returning unix seconds;
-- for clock skew and tests), max_attempts (1: a retryable failure is returned at once; more:
-- retried with backoff, only where it cannot duplicate), on_request, on_response, debug,
-- rate (calls per second for the platform account, shared by everyone using rate_store) and
-- rate_store (a store with take; default: ZAFU's token_store, else kaifang.store.default(): the
-- shared dict inside nginx, one memory store per process elsewhere),
-- concurrency (inside nginx: calls of the account in flight at once per worker, 16).
M.COMMON_OPTIONS = {
  base_url = true, timeout = true, connect_timeout = true, ssl_verify = true, cainfo = true, capath = true,
  proxy = true, user_agent = true, max_body = true, transport = true, thread_pool = true,
  keepalive_timeout = true, keepalive_pool = true, clock = true, max_attempts = true,
  on_request = true, on_response = true, debug = true, rate = true, rate_store = true, concurrency = true,
}

-- Inside nginx, each account's calls in flight at once per worker: half of the `threads=32` the
-- README's thread_pool line gives, so one slow account leaves the pool's other half to the rest,
-- and six accounts stay under lua-nginx-module's 100 thread VMs.
M.DEFAULT_CONCURRENCY = 16

-- A number of seconds an option may hold: finite (NaN and infinities fail), above 0 (or 0 when
-- zero_ok), at most 1e6 (eleven days).
function M.seconds(v, zero_ok)
  return type(v) == "number" and (v > 0 or (zero_ok and v == 0)) and v <= 1e6
end

-- A whole number from lo to hi (NaN and infinities fail).
function M.whole(v, lo, hi)
  return type(v) == "number" and v >= lo and v <= hi and v == math.floor(v)
end

-- fields: required (option names of non-empty strings, kept on the client), secret (the option
-- holding the secret, kept off it), base_url (the default), options (the platform's own option
-- names). Any other option is a typo and raises, as an unknown parameter does.
function M.check_options(opts, fields)
  local known = {}
  for k in pairs(M.COMMON_OPTIONS) do known[k] = true end
  for _, k in ipairs(fields.required or {}) do known[k] = true end
  for _, k in ipairs(fields.options or {}) do known[k] = true end
  if fields.secret then known[fields.secret] = true end
  for k in pairs(opts) do
    if not known[k] then return M.unknown("option", k, known) end
  end
end

function M.new(Class, opts, fields)
  local platform = Class.platform
  if type(opts) ~= "table" then fail(platform, "new expects a table of options", 3) end
  local msg = M.check_options(opts, fields)
  if msg then fail(platform, msg, 3) end
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
  for _, name in ipairs({ "timeout", "connect_timeout", "keepalive_timeout" }) do
    local v = opts[name]
    if v ~= nil and not M.seconds(v) then
      fail(platform, "option '" .. name .. "' must be a positive number of seconds, at most 1e6", 3)
    end
  end
  self.timeout = opts.timeout or 15
  local attempts = opts.max_attempts
  if attempts ~= nil and not M.whole(attempts, 1, 1000) then
    fail(platform, "option 'max_attempts' must be a whole number from 1 to 1000", 3)
  end
  if opts.max_body ~= nil and not M.whole(opts.max_body, 1, 2 ^ 53) then
    fail(platform, "option 'max_body' must be a positive whole number of bytes", 3)
  end
  if opts.keepalive_pool ~= nil and not M.whole(opts.keepalive_pool, 1, 1e6) then
    fail(platform, "option 'keepalive_pool' must be a positive whole number", 3)
  end
  self.max_attempts = attempts or 1
  if opts.concurrency ~= nil and not M.whole(opts.concurrency, 1, 4096) then
    fail(platform, "option 'concurrency' must be a whole number from 1 to 4096", 3)
  end
  self.concurrency = opts.concurrency or M.DEFAULT_CONCURRENCY
  for _, name in ipairs({ "on_request", "on_response", "clock" }) do
    if opts[name] ~= nil and type(opts[name]) ~= "function" then fail(platform, "option '" .. name .. "' must be a function", 3) end
  end
  if opts.debug ~= nil and type(opts.debug) ~= "boolean" then fail(platform, "option 'debug' must be true or false", 3) end
  M.hooks(self, opts)
  self.clock = opts.clock or os.time
  -- the account (developer_code, client_id, appid) names the client's calls in a journal and its rate
  self.account = self[fields.required[1]]
  M.rate(self, opts, 3)
  local t, terr = transport.select(opts) -- explicit option, else nginx's or libcurl
  self.transport = t or fail(platform, terr, 3)
  return self
end

-- A rate shared through a store: every client of the account that uses the same store takes its
-- turn there (GCRA, so calls are evenly spaced), across processes with a file store and across
-- machines with Redis. The key names the platform, the account and the base URL.
function M.rate(self, opts, level)
  local rate, rs = opts.rate, opts.rate_store
  if rate ~= nil and (type(rate) ~= "number" or not (rate > 0 and rate <= 1e6)) then -- NaN fails
    fail(self.platform, "option 'rate' must be a positive number of calls per second", level + 1)
  end
  if rs ~= nil then
    local msg = require("kaifang.store").check(rs, { "take" })
    if msg then fail(self.platform, "option 'rate_store': " .. msg, level + 1) end
  elseif rate and self.platform ~= "zafu" then -- ZAFU's default is its token store
    local why
    rs, why = require("kaifang.store").default()
    if not rs then fail(self.platform, "option 'rate_store' unset: " .. why, level + 1) end
  end
  self.rate, self.rate_store = rate or false, rs
  -- "<platform>:<account>@<base_url>": names the account's shared rate, and its slots in nginx
  self.account_key = ("%s:%s@%s"):format(self.platform, tostring(self.account), self.base_url)
  self.rate_key = "rate:" .. self.account_key
end

-- Reserves this client's next turn under its shared rate: -> seconds to wait (0 without a rate),
-- or nil, err: a turn further than max_wait, the time its call has left of its timeout (kind
-- "timeout", code "rate_limit"; nothing reserved), or the store's failure.
function Base:reserve_turn(max_wait, timeout)
  if not self.rate then return 0 end
  local wait, over = self.rate_store:take(self.rate_key, self.rate, { max_wait = max_wait })
  if wait then return wait end
  if type(over) ~= "number" then return nil, over end
  return nil, self:error{
    kind = "timeout", code = "rate_limit", retryable = true,
    message = ("the shared rate of %g calls/s would hold this call %.1f s, past its timeout (%.1f s left of %g s)")
      :format(self.rate, over, max_wait, timeout or self.timeout),
  }
end

-- The client's secret, for its own platform module only: not a method, so it is not reachable
-- from the client object.
function M.secret(self)
  return secrets[self]
end

-- Sets params.sign in the platform's scheme with the client's secret. Returns the string-to-sign,
-- secret masked, when the debug hook will print it. A module function for the same reason.
function M.sign(self, params)
  local secret = secrets[self]
  local signature, string_to_sign = sign.signer(self.platform):sign(params, secret, not self.debug)
  params.sign = signature
  return self.debug and sign.mask(string_to_sign, secret) or nil
end

-- base_url .. path, made once per client and path (a call's URL is otherwise a new string each time).
function Base:url(path)
  local urls = self.urls
  if not urls or urls[1] ~= self.base_url then
    urls = { self.base_url }
    self.urls = urls
  end
  local url = urls[path]
  if not url then
    url = self.base_url .. path
    urls[path] = url
  end
  return url
end

function Base:error(fields)
  fields.platform = self.platform
  return errors.new(fields)
end

local function debug_hook(info)
  io.stderr:write(("kaifang %s %s %s attempt %d: %s%s %.1f ms\n"):format(
    info.platform, info.method, info.url, info.attempt,
    info.http_status and ("HTTP " .. info.http_status) or (info.kind or "no reply"),
    info.code ~= nil and (" code " .. tostring(info.code)) or "", info.elapsed_ms or 0))
  if info.signed then io.stderr:write("kaifang   string-to-sign: ", info.signed, "\n") end
end

-- Hooks: opts.on_request(info) before each attempt and opts.on_response(info) after it, with
-- platform, method, url (secrets hidden), attempt, and after it http_status, code, kind,
-- elapsed_ms. opts.debug (default: KAIFANG_DEBUG=1 in the environment) also prints one line per
-- attempt to stderr with the string-to-sign, secret masked (info.signed, given to hooks too).
function M.hooks(self, opts)
  local debug = opts.debug
  if debug == nil then debug = os.getenv("KAIFANG_DEBUG") == "1" end
  local on_response = opts.on_response
  if debug and on_response then
    self.on_response = function(info) debug_hook(info); on_response(info) end
  else
    self.on_response = debug and debug_hook or on_response or false
  end
  -- false, not nil: a field the client lacks is looked up in its class on every call
  self.on_request, self.debug = opts.on_request or false, debug or false
end

function Base:request_info(ep, req, attempt)
  return { platform = self.platform, method = ep.name, url = M.redact_url(req.url), attempt = attempt }
end

-- Calls the response hook for one attempt; value/err are the attempt's outcome.
function Base:report(info, started, res, err)
  info.elapsed_ms = (monotonic() - started) * 1000
  info.http_status = res and res.status or (err and err.http_status)
  if err then info.kind, info.code = err.kind, err.code end
  self.on_response(info)
end

-- A call's deadline (on core.monotonic's clock), fixed when it is made: its waits (a rate turn, a
-- slot, a pool thread, ZAFU's token), its attempts and its backoff all spend from it.
function Base:deadline(call_opts)
  return monotonic() + (call_opts and call_opts.timeout or self.timeout)
end

-- The failure of a call whose deadline passed before it was sent: safe to repeat.
function Base:late(code, message)
  return self:error{ kind = "timeout", code = code, retryable = true, maybe_sent = false, message = message }
end

-- Whether a retry's backoff still fits before the deadline; if so, waits it out.
function M.pause(attempt, deadline, sleep)
  local d = M.backoff(attempt)
  if monotonic() + d >= deadline then return false end
  sleep(d)
  return true
end

function Base:call_endpoint(ep, args, call_opts)
  local acts, attempt = M.acts(ep, call_opts), 0
  local deadline = self:deadline(call_opts)
  while true do
    attempt = attempt + 1
    local req = self:build_request(ep, args)
    local info, started
    if self.on_request or self.on_response then
      info, started = self:request_info(ep, req, attempt), monotonic()
      info.signed, req.signed = req.signed, nil
      if self.on_request then self.on_request(info) end
    end
    local res, err = self:send(ep, req, deadline)
    local value, extra = self:outcome(ep, res, err, acts)
    if info and self.on_response then self:report(info, started, res, value == nil and extra or nil) end
    if value ~= nil then return value end -- one value on success, never a second
    if not (extra and extra.retryable) or attempt >= self.max_attempts
      or not M.pause(attempt, deadline, transport.sleep) then -- ngx.sleep inside nginx
      return nil, extra
    end
  end
end

-- One attempt, by the call's deadline (default: the client's timeout from now): the shared rate's
-- turn, then inside nginx one of the account's slots, then the transport with the time left
-- (req.timeout) and the deadline itself (req.deadline: ngx_thread checks it again when a pool
-- thread takes the call). Nothing is sent once the deadline has passed.
function Base:send(ep, req, deadline)
  local started = monotonic()
  deadline = deadline or started + self.timeout
  if self.rate then -- wait for the shared turn, or give up when it is further away than the deadline
    local wait, werr = self:reserve_turn(math.max(0, deadline - started))
    if not wait then return nil, werr end
    if wait > 0 then transport.sleep(wait) end
  end
  local slot = transport.slot(self.account_key, self.concurrency, deadline)
  if slot == false then
    return nil, self:late("busy", ("waited %.1f s for one of the %d slots of %s account '%s' on this nginx worker, "
      .. "all held by calls still in flight (option 'concurrency')"):format(monotonic() - started, self.concurrency,
      self.platform, tostring(self.account)))
  end
  local left = deadline - monotonic()
  if left < 0.001 then -- libcurl takes whole milliseconds, and 0 would mean no limit
    if slot then slot:release() end
    return nil, self:late("deadline", ("its timeout ran out before it was sent (%.1f s spent waiting)"):format(
      monotonic() - started))
  end
  req.timeout, req.deadline = left, deadline
  local res, err
  if slot then -- given back whatever the transport does
    local ok
    ok, res, err = pcall(self.transport.request, self.transport, req)
    slot:release()
    if not ok then error(res, 0) end
  else
    res, err = self.transport:request(req)
  end
  if not res then
    err.platform = self.platform
    return nil, errors.new(err)
  end
  return res
end

-- The result of one attempt: the platform's value, or nil, err with retryable and maybe_sent
-- settled by whether the call acts.
function Base:outcome(ep, res, err, acts)
  if not res then
    -- repeating a read cannot do harm; repeating an action only when it never left
    if not acts then err.retryable = true end
    return nil, err
  end
  local value, extra = self:interpret(ep, res)
  if value == nil and errors.is(extra) and (extra.kind == "http" or extra.kind == "decode") then
    extra.retryable = not acts
    extra.maybe_sent = acts and (extra.kind == "decode" or (extra.http_status or 0) >= 500)
  end
  return value, extra
end

-- LuaJIT (inside nginx) has no integer subtype: a stand-in for math.tointeger there.
local tointeger = math.tointeger or function(x)
  if type(x) == "number" and x == math.floor(x) and x > -2 ^ 53 and x < 2 ^ 53 then return x end
end
M.tointeger = tointeger

-- A reply's JSON as Lua values, numbers that are whole and within 2^53 as integers (104, not
-- 104.0: codes and ids), null as cjson.null; or nil, what is wrong and at which byte. In C
-- (core.json_decode): a third of cjson's and core.integers' time on a short reply.
M.json_decode = core.json_decode

-- The reply as a JSON object, or nil, err for an HTTP failure or a body that is not one.
function Base:decode(ep, res)
  if res.status < 200 or res.status > 299 then
    return nil, self:error{
      kind = "http", code = res.status, http_status = res.status,
      message = (res.body or ""):sub(1, 200),
    }
  end
  local doc = M.json_decode(res.body)
  if type(doc) ~= "table" then
    return nil, self:error{
      kind = "decode", http_status = res.status, message = "reply is not a JSON object: " .. (res.body or ""):sub(1, 100),
    }
  end
  return doc
end

-- Replies shaped { <code_field> = 0 | code, <message_field> = text, data = ... }: the reply for
-- code 0, its data {} when absent or null; else nil, err (a reply without the code is a decode
-- error). A platform error carries the code as sent and the message when it is text; the
-- platform module settles the rest (retryable, a message of its own) on it.
function Base:coded_reply(ep, res, code_field, message_field)
  local doc, err = self:decode(ep, res)
  if not doc then return nil, err end
  local code = doc[code_field]
  if code == 0 or code == "0" then
    if doc.data == nil or doc.data == cjson.null then doc.data = {} end
    return doc
  end
  if code == nil or code == cjson.null then
    return nil, self:error{ kind = "decode", http_status = res.status,
                            message = "reply without " .. code_field .. ": " .. (res.body or ""):sub(1, 100) }
  end
  local message = doc[message_field]
  return nil, self:error{ kind = "platform", code = code, http_status = res.status,
                          message = type(message) == "string" and message or nil }
end

-- ZAFU's: whether a reply refused the request's token (the call was not acted on)
Base.refused_token = false

function Base:close()
  if self.transport.close then self.transport:close() end
end

Base.__close = Base.close

return M
