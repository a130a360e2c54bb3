-- kaifang.ngx: the platforms' callbacks received in OpenResty / nginx with lua-nginx-module. Each
-- handler reads the request, verifies and parses it, calls your function, and answers exactly as
-- the platform expects; a refused callback gets the platform's failure reply and a log line,
-- never a Lua error page.
--
--   location = /yopoint/notify   { content_by_lua_block { require("kaifang.ngx").yopoint_notify(yp, on_notice) } }
--   location = /yopoint/pay      { content_by_lua_block { require("kaifang.ngx").yopoint_pay(yp, on_pay) } }
--   location = /dakashi/callback { content_by_lua_block { require("kaifang.ngx").dakashi_callback(on_card) } }
--   location = /lingdian/callback { content_by_lua_block { require("kaifang.ngx").lingdian_callback(ld, on_delivery) } }
--
-- Your function gets the parsed callback and a context { platform, kind, remote_addr };
-- it runs in a protected call. It has taken the callback unless it raises, returns false, or
-- returns nil plus an error (the Lua convention): then the platform gets its failure reply and
-- sends the callback again later. (yopoint_pay differs: see there.)
--
-- Repeats: with the callbacks' lua_shared_dict (opts.dict, default M.config.callbacks_dict,
-- "kaifang_callbacks", when nginx has it), a callback already taken is answered with the success
-- reply again without calling your function (the platforms repeat callbacks whose answer got
-- lost); one still being handled gets the failure reply, so the platform tries again later. A
-- signed callback is recognised by its sign, an unsigned one (Dakashi) by its body, within its
-- handler, account and location. opts.dedupe_ttl (seconds, default 900) is how long one is
-- remembered; keep it longer than the timestamp window (300 s), outside which a replay is refused
-- anyway. opts.dict = false turns this off. The marks live in a dict of their own, apart from the
-- token, locks and rate limits (M.config.dict): a flood of callbacks fills only that one.
--
-- Other options: allow (addresses and CIDR ranges, IPv4 and IPv6, as a list or a comma-separated
-- string; anything else gets 403. Dakashi's unsigned callbacks require it, or allow = "any",
-- which logs a warning), window (seconds; the signed callbacks' timestamp window), log_level (of
-- refusals; default ngx.WARN), account (names the endpoint's account in its repeat marks, for
-- Dakashi; the others use their client's).
--
-- The pure part, M.process(kind, client, request, fn, opts) -> response, needs no nginx: the specs
-- drive it directly, and the nginx handlers only read the request and write the response.
--
-- Start-up: call M.init() from init_by_lua* (below), and make your clients there too; call
-- M.check{...} from init_worker_by_lua* to have a misconfiguration reported at start.
local core = require "kaifang.core"
local errors = require "kaifang.errors"

local M = {}

-- The shared dicts: `dict` holds the state every worker shares (ZAFU's token and its lock, rate
-- limits: kaifang.store.default() uses it), `callbacks_dict` the callbacks' repeat marks. Set
-- them with M.init{ dict = ..., callbacks_dict = ... }.
M.config = { dict = "kaifang", callbacks_dict = "kaifang_callbacks" }

---------------------------------------------------------------------------- init_by_lua
-- nginx started as root reads its configuration as root, but its workers run as another user
-- (nobody, www-data), and so do the Lua VMs of its thread pool, which lua-nginx-module makes in
-- the worker and which load kaifang.transport.ngx_thread from disk with the worker's
-- package.path and package.cpath. A checkout in a folder that user cannot enter (a private home
-- directory, a mktemp -d clone) then fails with "module 'kaifang.…' not found".
--
--   init_by_lua_block { require("kaifang.ngx").init() }
--
-- loads every module a worker may need in the master (the workers inherit them: OpenResty's
-- advice for sharing code between workers), and, on Linux, holds each absolute directory of
-- package.path and package.cpath open and names it /proc/self/fd/<n>/ in both paths: the workers
-- inherit the descriptor, and a path through it does not check the private folders above the
-- code. Relative entries (./?.lua) stay as they are; the code's own files must still be readable
-- by the worker's user. The descriptors close with the Lua VM that holds them: after a reload,
-- when nginx drops the old configuration.

-- What a worker or a worker thread's VM may load (not the sandbox).
M.modules = {
  "kaifang", "kaifang.core", "kaifang.errors", "kaifang.sign", "kaifang.client", "kaifang.batch",
  "kaifang.lingdian", "kaifang.zafu", "kaifang.yopoint", "kaifang.dakashi",
  "kaifang.store", "kaifang.store.ngx_shared",
  "kaifang.journal", "kaifang.journal.gate", "kaifang.journal.sqlite", "kaifang.journal.redis",
  "kaifang.transport", "kaifang.transport.curl", "kaifang.transport.ngx_thread", "kaifang.transport.resty_http",
  "kaifang.ngx", "cjson", "cjson.safe",
}

-- A search path with each absolute directory before the "?" held open: "/a/lua/?.lua" ->
-- "/proc/self/fd/7/?.lua". Directories that cannot be held (missing, not Linux) stay as they are.
function M.pin_path(path)
  local out = {}
  for entry in path:gmatch("[^;]+") do
    local dir, rest = entry:match("^(/[^?]*)/([^/]*%?.*)$")
    local fd = dir and core.pin_dir(dir)
    out[#out + 1] = fd and ("/proc/self/fd/" .. fd .. "/" .. rest) or entry
  end
  return table.concat(out, ";")
end

function M.init(opts)
  if require("kaifang.transport").phase() ~= "init" then
    error("kaifang.ngx.init: call it from init_by_lua* (while nginx reads its configuration)", 2)
  end
  if opts ~= nil and type(opts) ~= "table" then error("kaifang.ngx.init: its options must be a table", 2) end
  for k, v in pairs(opts or {}) do
    if M.config[k] == nil then error("kaifang.ngx.init: " .. require("kaifang.client").unknown("option", k, M.config), 2) end
    if type(v) ~= "string" or v == "" then error("kaifang.ngx.init: option '" .. tostring(k) .. "' must be a dict name", 2) end
    M.config[k] = v
  end
  for _, name in ipairs(M.modules) do require(name) end
  package.path = M.pin_path(package.path)
  package.cpath = M.pin_path(package.cpath)
end

---------------------------------------------------------------------------- replies
-- What each platform expects back. Yopoint's answer to its notices is not documented: "success",
-- as Yopoint itself answers the operator's payment notices (inferred). Lingdian documents no
-- callback format at all: a JSON reply in the shape of its own replies, code 100 for taken
-- (inferred).

local function text(status, body)
  return { status = status, headers = { ["Content-Type"] = "text/plain; charset=utf-8" }, body = body }
end

local function json(status, body)
  return { status = status, headers = { ["Content-Type"] = "application/json; charset=utf-8" }, body = body }
end

local function json_string(s)
  return '"' .. tostring(s):gsub('[%c"\\]', function(c)
    if c == '"' then return '\\"' elseif c == "\\" then return "\\\\" end
    return string.format("\\u%04x", c:byte())
  end) .. '"'
end

M.replies = {
  yopoint_notify = {
    ok = function() return text(200, "success") end,
    fail = function() return text(200, "fail") end,
  },
  yopoint_pay = {
    fail = function() return text(403, "invalid payment request\n") end,
  },
  dakashi_callback = {
    ok = function() return json(200, require("kaifang.dakashi").callback_reply) end,
    fail = function(reason) return json(200, '{"errcode":50000,"errmsg":' .. json_string(reason) .. "}") end,
  },
  lingdian_callback = {
    ok = function() return json(200, '{"code":100,"message":"success","data":[]}') end,
    fail = function(reason) return json(200, '{"code":104,"message":' .. json_string(reason) .. ',"data":[]}') end,
  },
}

---------------------------------------------------------------------------- verification

local function unescape(s)
  s = s:gsub("+", " ")
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- A form body -> { name = value }; the last of repeated names wins.
function M.parse_form(body)
  local t = {}
  for pair in ((body or "") .. "&"):gmatch("([^&]*)&") do
    if pair ~= "" then
      local k, v = pair:match("^([^=]*)=(.*)$")
      if not k then k, v = pair, "" end
      t[unescape(k)] = unescape(v)
    end
  end
  return t
end

local function is_form(headers)
  local ct = headers and (headers["content-type"] or headers["Content-Type"]) or ""
  if type(ct) == "table" then ct = ct[1] or "" end
  return ct:lower():find("application/x-www-form-urlencoded", 1, true) ~= nil
end

-- Lingdian's delivery callback (inferred: the document says Lingdian calls the developer back
-- with the outcome of interface A, and documents nothing more). Taken to be a form POST signed
-- like Lingdian's requests: developer_code, timestamp and sign among its fields, sign = md5 of the
-- sorted non-empty fields (without sign, sign_type, key, developer_key) with the developer key
-- appended. A JSON body with the same fields is accepted too.
-- -> the fields (text) | nil, err (kind "signature", "stale" or "decode")
local function refuse_lingdian(kind, code, message)
  return nil, errors.new{ platform = "lingdian", kind = kind, code = code, message = message }
end

local function verify_lingdian(ld, body, opts)
  local refuse = refuse_lingdian
  local fields
  if type(body) == "table" then
    fields = body
  elseif type(body) == "string" and body:match("^%s*{") then
    fields = require("cjson.safe").decode(body)
    if type(fields) ~= "table" then return refuse("decode", nil, "callback body is not JSON") end
  else
    fields = M.parse_form(body)
  end
  local params = {}
  for k, v in pairs(fields) do
    if type(v) == "number" then v = (v == math.floor(v)) and string.format("%.0f", v) or tostring(v) end
    if type(k) ~= "string" or type(v) ~= "string" then return refuse("decode", nil, "callback field " .. tostring(k) .. " is not text") end
    params[k] = v
  end
  local got = params.sign
  if not got or got == "" then return refuse("signature", "missing_sign", "callback carries no sign") end
  if params.developer_code ~= ld.developer_code then
    return refuse("signature", "developer_code", "callback is not for this developer_code")
  end
  local expected = require("kaifang.sign").signer("lingdian"):sign(params, require("kaifang.client").secret(ld))
  if not core.ct_equal(expected, got:lower()) then return refuse("signature", "bad_sign", "callback sign does not match") end
  local ts = params.timestamp and params.timestamp:match("^%d+$") and tonumber(params.timestamp)
  if not ts then return refuse("stale", "no_timestamp", "callback carries no usable timestamp") end
  if ts > 1e11 then ts = ts / 1000 end
  local window = opts.window or 300
  local skew = (opts.now or ld.clock or os.time)() - ts
  if math.abs(skew) > window then
    return refuse("stale", "timestamp", ("callback timestamp is %d s off (window %d s): refused as a replay"):format(
      math.floor(math.abs(skew) + 0.5), window))
  end
  return params
end

-- Whatever the sender put in the body, nil, err: never an error.
function M.verify_lingdian(ld, body, opts)
  opts = opts or {}
  if type(ld) ~= "table" or type(ld.developer_code) ~= "string" then error("kaifang.ngx: verify_lingdian expects a Lingdian client", 2) end
  if type(opts) ~= "table" then error("kaifang.ngx: verify_lingdian's options must be a table", 2) end
  local ok, params, err = pcall(verify_lingdian, ld, body, opts)
  if ok then return params, err end
  return refuse_lingdian("decode", nil, "callback unreadable (" .. (type(params) == "string" and params or type(params)) .. ")")
end

-- kind -> function(client, request, opts) -> callback, dedupe_key | nil, err
local verify = {}

function verify.yopoint_notify(yp, req, opts)
  local input = req.body
  if (input == nil or input == "") and req.query and req.query ~= "" then input = req.query end
  local notice, err = yp:verify_notify(input or "", opts.window and { window = opts.window } or nil)
  if not notice then return nil, err end
  return notice, "sign:" .. tostring(M.field(req, "sign"))
end

function verify.yopoint_pay(yp, req, opts)
  local fields, err = yp:verify_pay_redirect(req.query or "", opts.window and { window = opts.window } or nil)
  if not fields then return nil, err end
  return fields -- a buyer may reload the page: no dedupe
end

function verify.dakashi_callback(_, req)
  local cb, err = require("kaifang.dakashi").parse_callback(req.body or "")
  if not cb then return nil, err end
  return cb, "body:" .. core.digest("sha1", req.body or "")
end

function verify.lingdian_callback(ld, req, opts)
  local fields, err = M.verify_lingdian(ld, req.body or "", opts)
  if not fields then return nil, err end
  return fields, "sign:" .. fields.sign:lower()
end

-- The sign a request carries (form body, JSON body or query), for recognising a repeat.
function M.field(req, name)
  local body = req.body or ""
  if body:match("^%s*{") then
    local doc = require("cjson.safe").decode(body)
    if type(doc) == "table" and doc[name] ~= nil then return tostring(doc[name]):lower() end
  elseif body ~= "" then
    local v = M.parse_form(body)[name]
    if v then return v:lower() end
  end
  local v = M.parse_form(req.query or "")[name]
  return v and v:lower()
end

---------------------------------------------------------------------------- processing

local PLATFORM = {
  yopoint_notify = "yopoint", yopoint_pay = "yopoint", dakashi_callback = "dakashi", lingdian_callback = "lingdian",
}
local LABEL = {
  yopoint_notify = "Yopoint notice", yopoint_pay = "Yopoint payment redirect", dakashi_callback = "Dakashi callback",
  lingdian_callback = "Lingdian callback",
}

---------------------------------------------------------------------------- allow lists

-- An address as its bytes (4 for IPv4, 16 for IPv6; an IPv4-mapped IPv6 address as IPv4), or nil.
local function ip_bytes(a)
  if type(a) ~= "string" then return nil end
  local o = { a:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$") }
  if #o == 4 then
    for i = 1, 4 do
      o[i] = tonumber(o[i])
      if o[i] > 255 then return nil end
    end
    return o
  end
  if not a:find(":", 1, true) or a:find("[^%x:%.]") then return nil end
  local tail4 = {}
  local v4 = a:match(":(%d+%.%d+%.%d+%.%d+)$")
  if v4 then
    tail4 = ip_bytes(v4)
    if not tail4 then return nil end
    a = a:sub(1, #a - #v4) .. "0:0" -- two groups in its place
  end
  local head, rest = a:match("^(.-)::(.*)$")
  local function groups(part)
    local g = {}
    if part == "" then return g end
    for x in (part .. ":"):gmatch("([^:]*):") do
      if not x:match("^%x%x?%x?%x?$") then return nil end
      g[#g + 1] = tonumber(x, 16)
    end
    return g
  end
  local gs
  if head then
    local h, r = groups(head), groups(rest)
    if not h or not r or #h + #r > 7 then return nil end
    gs = h
    for _ = 1, 8 - #h - #r do gs[#gs + 1] = 0 end
    for _, x in ipairs(r) do gs[#gs + 1] = x end
  else
    gs = groups(a)
    if not gs or #gs ~= 8 then return nil end
  end
  local b = {}
  for i, g in ipairs(gs) do b[2 * i - 1], b[2 * i] = math.floor(g / 256), g % 256 end
  if v4 then for i = 1, 4 do b[12 + i] = tail4[i] end end
  local mapped = b[11] == 255 and b[12] == 255
  for i = 1, 10 do mapped = mapped and b[i] == 0 end
  if mapped then return { b[13], b[14], b[15], b[16] } end
  return b
end

-- "addr" or "addr/bits" -> { bytes, bits } | nil
local function cidr(entry)
  local addr, bits = entry:match("^([^/]+)/(%d+)$")
  addr = addr or entry
  local b = ip_bytes(addr)
  if not b then return nil end
  bits = bits and tonumber(bits) or #b * 8
  if bits > #b * 8 then return nil end
  return { bytes = b, bits = bits }
end

local function in_range(r, b)
  if #b ~= #r.bytes then return false end
  local bits = r.bits
  for i = 1, #b do
    if bits >= 8 then
      if b[i] ~= r.bytes[i] then return false end
      bits = bits - 8
    elseif bits == 0 then
      return true
    else
      local d = 2 ^ (8 - bits)
      return math.floor(b[i] / d) == math.floor(r.bytes[i] / d)
    end
  end
  return true
end

local compiled = setmetatable({}, { __mode = "k" })

-- allow -> matcher(addr) -> boolean | nil, message. allow: "any", a list of addresses and CIDR
-- ranges, or the same as one string separated by commas or spaces.
function M.allow_list(allow)
  if allow == "any" then return function() return true end end
  local hit = type(allow) == "table" and compiled[allow]
  if hit then return hit end
  local entries = {}
  if type(allow) == "string" then
    for e in allow:gmatch("[^,%s]+") do entries[#entries + 1] = e end
  elseif type(allow) == "table" then
    for i, e in ipairs(allow) do
      if type(e) ~= "string" then return nil, ("allow[%d] is a %s, not an address"):format(i, type(e)) end
      entries[#entries + 1] = e
    end
  else
    return nil, "allow must be a list of addresses and CIDR ranges, or \"any\""
  end
  if #entries == 0 then return nil, "allow lists no address" end
  local ranges = {}
  for i, e in ipairs(entries) do
    ranges[i] = cidr(e)
    if not ranges[i] then return nil, ("allow: %q is not an IPv4 or IPv6 address or CIDR range"):format(e) end
  end
  local function match(addr)
    local b = ip_bytes(addr)
    if not b then return false end
    for _, r in ipairs(ranges) do
      if in_range(r, b) then return true end
    end
    return false
  end
  if type(allow) == "table" then compiled[allow] = match end
  return match
end

-- Which handlers need `allow` (the callbacks nothing signs).
M.unsigned = { dakashi_callback = true }

-- Whether fn's results mean the callback was taken: anything but a raise, false, or nil plus an error.
local function taken(ok, r1, r2)
  if not ok then return false, tostring(r1) end
  if r1 == false then return false, r2 ~= nil and tostring(r2) or "handler returned false" end
  if r1 == nil and r2 ~= nil then return false, tostring(r2) end
  return true
end

-- request: { method, headers (names lower-case), body, query, remote_addr }
-- opts.seen: { claim(key, ttl) -> "new" | "done" | "busy", done(key, ttl), forget(key) } or nil
-- opts.log(level, message): "warn" for refusals, "err" for a failing handler, "info" for repeats.
-- -> response { status, headers, body }, or nil when yopoint_pay's function answered itself.
function M.process(kind, client, req, fn, opts)
  opts = opts or {}
  local replies = M.replies[kind]
  if not replies then error("kaifang.ngx: unknown callback kind " .. tostring(kind), 2) end
  local platform, label = PLATFORM[kind], LABEL[kind]
  local log = opts.log or function() end
  local who = req.remote_addr or "?"
  local tag = ("kaifang.ngx.%s (%s)"):format(kind, platform)

  -- reason goes to the log; public (default: reason) into the platform's failure reply
  local function refuse(reason, public)
    log("warn", ("%s: refused a %s from %s: %s"):format(tag, label, who, reason))
    return replies.fail(public or reason)
  end

  -- not the platform: a 403 in JSON, whatever the platform's own replies look like
  local function forbidden(level, reason)
    log(level, ("%s: refused a %s from %s: %s"):format(tag, label, who, reason))
    return json(403, '{"error":"forbidden","message":' .. json_string(reason) .. "}")
  end
  local allow = opts.allow
  if allow == nil and M.unsigned[kind] then
    return forbidden("err", "no `allow` given, and this callback carries no signature: give the platform's addresses "
      .. "(allow = { \"203.0.113.0/24\", ... }) or allow = \"any\"")
  end
  if allow ~= nil then
    local match, why = M.allow_list(allow)
    if not match then return forbidden("err", why) end
    if not match(req.remote_addr) then return forbidden("warn", "address not allowed") end
  end
  if kind ~= "yopoint_pay" and req.method ~= "POST" then return refuse("method " .. tostring(req.method) .. " (expected POST)") end
  if kind == "yopoint_pay" and req.method ~= "GET" and req.method ~= "HEAD" then
    return refuse("method " .. tostring(req.method) .. " (expected GET)")
  end
  local vok, event, key = pcall(verify[kind], client, req, opts)
  if not vok then return refuse("could not verify: " .. tostring(event), "could not verify") end
  if not event then return refuse(tostring(key), errors.is(key) and key.message or "refused") end

  local seen, ttl = opts.seen, opts.dedupe_ttl or 900
  local ctx = { platform = platform, kind = kind, remote_addr = req.remote_addr }
  if seen and key then
    -- one endpoint's marks never answer for another's: the handler, its account, its location
    local account = opts.account or (type(client) == "table" and client.account) or ""
    key = table.concat({ kind, tostring(account), req.path or "", key }, "|")
    local state, err = seen.claim(key, ttl)
    if state == nil then
      log("err", ("%s: %s: the callback cannot be marked as taken, so it is refused (the platform sends it again)")
        :format(tag, tostring(err)))
      return replies.fail("try again later")
    elseif state == "done" then
      log("info", ("%s: a %s from %s already taken; answered again without calling the handler"):format(tag, label, who))
      return replies.ok()
    elseif state == "busy" then
      return refuse("the same callback is being handled")
    end
  end

  if kind == "yopoint_pay" then
    -- fn(redirect, ctx) -> a URL (the buyer is redirected there: 302), a response table
    -- { status=, headers=, body= }, or nothing when it answered with ngx.say/ngx.redirect itself;
    -- raising or returning nil, err gives the failure page.
    local ok, r1, r2 = pcall(fn, event, ctx)
    if not ok or (r1 == nil and r2 ~= nil) or r1 == false then
      log("err", ("%s: the handler failed: %s"):format(tag, tostring(ok and r2 or r1)))
      return replies.fail()
    end
    if type(r1) == "string" then return { status = 302, headers = { Location = r1 }, body = "" } end
    if type(r1) == "table" then return r1 end
    return nil
  end

  local stop = seen and key and seen.keep and seen.keep(key) -- the "busy" mark lasts while fn runs
  local ok, why = taken(pcall(fn, event, ctx))
  if stop then stop() end
  if not ok then
    if seen and key then seen.forget(key) end
    log("err", ("%s: the handler failed: %s"):format(tag, why))
    return replies.fail("handler failed")
  end
  if seen and key then
    local marked, err = seen.done(key, ttl)
    if not marked then
      log("err", ("%s: taken, but not remembered as taken (%s): a repeat will reach the handler again"):format(tag, tostring(err)))
    end
  end
  return replies.ok()
end

---------------------------------------------------------------------------- nginx glue

-- How long a "busy" mark lasts, and how often it is renewed while its handler runs: a worker that
-- dies mid-handler leaves the callback blocked for BUSY_TTL at most.
M.BUSY_TTL, M.BUSY_RENEW = 30, 10

-- The repeat memory on a lua_shared_dict (name: for messages): "busy" while a handler runs
-- (renewed by keep), then "done" for the dedupe ttl. Every write is safe_add / safe_set (nothing
-- evicted to make room), so a full dict is an error the handler reports, never a lost mark.
function M.seen_on(dict, name)
  local prefix = "\1seen:"
  local me, write = { dict = dict, name = name or "?" }, require("kaifang.store.ngx_shared").write
  return {
    claim = function(key)
      local ok, err = write(me, "add", prefix .. key, "busy", M.BUSY_TTL)
      if ok then return "new" end
      if ok == nil then return nil, err end
      return dict:get(prefix .. key) == "done" and "done" or "busy"
    end,
    done = function(key, ttl) return write(me, "set", prefix .. key, "done", ttl) end,
    forget = function(key) dict:delete(prefix .. key) end,
    -- renews the busy mark from a light thread while the handler runs -> stop() | nil
    keep = function(key)
      local ngx = require("kaifang.transport").ngx()
      local phase = require("kaifang.transport").phase()
      if not (ngx and ngx.thread and require("kaifang.transport").yielding_phases[phase]) then return nil end
      local th = ngx.thread.spawn(function()
        while true do
          ngx.sleep(M.BUSY_RENEW)
          if dict:get(prefix .. key) ~= "busy" then return end
          write(me, "set", prefix .. key, "busy", M.BUSY_TTL)
        end
      end)
      return function() ngx.thread.kill(th) end
    end,
  }
end

local function ngx_request()
  local ngx = ngx
  ngx.req.read_body()
  local body = ngx.req.get_body_data()
  if not body then
    local path = ngx.req.get_body_file()
    if path then
      local f = io.open(path, "rb")
      if f then
        body = f:read("*a")
        f:close()
      end
    end
  end
  local headers = {}
  for k, v in pairs(ngx.req.get_headers(100)) do headers[k:lower()] = type(v) == "table" and v[#v] or v end
  return {
    method = ngx.req.get_method(),
    headers = headers,
    body = body or "",
    query = ngx.var.args or "",
    remote_addr = ngx.var.remote_addr,
    path = ngx.var.uri,
  }
end

local function send(res)
  local ngx = ngx
  ngx.status = res.status or 200
  for k, v in pairs(res.headers or {}) do ngx.header[k] = v end
  if res.body and res.body ~= "" then ngx.print(res.body) end
  return ngx.exit(ngx.status)
end

local LEVELS = { warn = "WARN", err = "ERR", info = "INFO", notice = "NOTICE" }

-- A line in nginx's error log as it is: ngx.errlog.raw_log (lua-resty-core) leaves out the
-- "[lua] ngx.lua:349: log():" that ngx.log puts in front, which names this file, not the problem;
-- the message names the handler and the platform itself.
function M.log(level, msg)
  local ngx = ngx
  local ok, errlog = pcall(require, "ngx.errlog")
  if ok and type(errlog) == "table" and errlog.raw_log then
    local lok = pcall(errlog.raw_log, level, msg)
    if lok then return end
  end
  ngx.log(level, msg)
end

local once = {} -- what this worker has said already

local function say_once(what, level, msg)
  if once[what] then return end
  once[what] = true
  M.log(level, msg)
end

local function handle(kind, client, fn, opts, level)
  opts = opts or {}
  if type(fn) ~= "function" then error("kaifang.ngx." .. kind .. ": expects your handler function", level) end
  local ngx = ngx
  local name = opts.dict
  if name == nil then name = M.config.callbacks_dict end
  local dict = name and ngx.shared[name]
  if name and not dict then
    say_once("dict:" .. name, ngx.ERR, ("kaifang.ngx.%s (%s): no lua_shared_dict '%s' (add `lua_shared_dict %s 1m;` to "
      .. "http {}); callbacks the platform repeats reach the handler again"):format(kind, PLATFORM[kind], tostring(name), tostring(name)))
  end
  if opts.allow == "any" then
    say_once("any:" .. kind, ngx.WARN, ("kaifang.ngx.%s (%s): allow = \"any\": callbacks are taken from every address")
      :format(kind, PLATFORM[kind]))
  end
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.seen = dict and M.seen_on(dict, name) or nil
  o.log = function(lvl, msg) M.log((lvl == "warn" and opts.log_level) or ngx[LEVELS[lvl] or "WARN"], msg) end
  local ok, res = pcall(function() return M.process(kind, client, ngx_request(), fn, o) end)
  if not ok then
    M.log(ngx.ERR, ("kaifang.ngx.%s (%s): %s"):format(kind, PLATFORM[kind], tostring(res)))
    res = M.replies[kind].fail("internal error")
  end
  if res then return send(res) end
end

---------------------------------------------------------------------------- check

-- kaifang.ngx.check{ ... } -> true | false, problems (a list of messages)
-- What a misconfigured nginx would otherwise show at the first request, as one error-log line per
-- problem, at start: call it from init_worker_by_lua* (where it logs from worker 0 only) or from a
-- request. Options (all optional):
--   thread_pool   the pool to probe (default "kaifang"; false: none), besides the clients' pools
--   clients       a list of your clients: each one's thread pool is probed, and a blocking
--                 transport (transport = "curl") is a problem
--   env           platforms whose KAIFANG_* credentials must be in nginx's environment
--                 (nginx passes only what its `env` directives name), e.g. { "lingdian", "zafu" }
--   handlers      { dakashi_callback = opts, ... }: the options you give each handler (allow, dict)
-- The shared dict (M.config.dict) must exist when nginx runs more than one worker, and the
-- callbacks' dict when handlers are given. The thread pool probe is a call to
-- ngx.run_worker_thread, which only rewrite, access, content and timers may make: from
-- init_worker it runs in an ngx.timer at once and logs what it finds; from init_by_lua it cannot
-- run at all, and is left out (with a notice).
function M.check(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("kaifang.ngx.check: its options must be a table", 2) end
  local known = { thread_pool = true, clients = true, env = true, handlers = true }
  for k in pairs(opts) do
    if not known[k] then error("kaifang.ngx.check: " .. require("kaifang.client").unknown("option", k, known), 2) end
  end
  local transport = require("kaifang.transport")
  local ngx = transport.ngx()
  if not ngx then error("kaifang.ngx.check: runs inside nginx only", 2) end
  local phase = transport.phase()
  local quiet = phase == "init_worker" and ngx.worker.id() ~= 0 -- one line per problem, not one per worker
  local problems = {}
  local function problem(msg)
    problems[#problems + 1] = msg
    if not quiet then M.log(ngx.ERR, "kaifang.ngx.check: " .. msg) end
  end
  local function notice(msg) if not quiet then M.log(ngx.WARN, "kaifang.ngx.check: " .. msg) end end

  local workers = ngx.worker.count()
  local d = M.config.dict
  if not ngx.shared[d] and workers > 1 then
    problem(("no lua_shared_dict '%s', and nginx runs %d workers: each would keep its own ZAFU token (knocking out "
      .. "the others') and its own rate limits; add `lua_shared_dict %s 1m;` to http {}"):format(d, workers, d))
  end

  -- handlers' options
  if opts.handlers ~= nil and type(opts.handlers) ~= "table" then error("kaifang.ngx.check: option 'handlers' must be a table", 2) end
  for kind, hopts in pairs(opts.handlers or {}) do
    if not M.replies[kind] then error("kaifang.ngx.check: handlers: " .. require("kaifang.client").unknown("handler", kind, M.replies), 2) end
    if type(hopts) ~= "table" then error("kaifang.ngx.check: handlers." .. kind .. " must be its options table", 2) end
    local tag = ("kaifang.ngx.%s (%s)"):format(kind, PLATFORM[kind])
    if hopts.allow == nil and M.unsigned[kind] then
      problem(tag .. ": no `allow`: its callbacks carry no signature, so every one is refused with 403; give the "
        .. "platform's addresses or CIDR ranges, or allow = \"any\"")
    elseif hopts.allow == "any" then
      notice(tag .. ": allow = \"any\": callbacks are taken from every address")
    elseif hopts.allow ~= nil then
      local match, why = M.allow_list(hopts.allow)
      if not match then problem(tag .. ": " .. why) end
    end
    local name = hopts.dict
    if name == nil then name = M.config.callbacks_dict end
    if name and not ngx.shared[name] then
      problem(("%s: no lua_shared_dict '%s' for the callbacks' repeat marks: callbacks the platform repeats reach the "
        .. "handler again; add `lua_shared_dict %s 1m;` to http {} (or dict = false)"):format(tag, name, name))
    end
  end

  -- credentials
  local spec = require("kaifang.cli.config").SPEC
  for _, platform in ipairs(opts.env or {}) do
    if not spec[platform] then error("kaifang.ngx.check: env: " .. require("kaifang.client").unknown("platform", platform, spec), 2) end
    for _, o in ipairs(spec[platform].options) do
      local v = os.getenv(o[2])
      if not o.optional and (v == nil or v == "") then
        problem(("%s is not set in nginx's environment (nginx passes only what an `env %s;` line in the main context "
          .. "names): %s calls will fail"):format(o[2], o[2], platform))
      end
    end
  end

  -- clients and thread pools
  local pools = {}
  if opts.thread_pool ~= false then pools[opts.thread_pool or require("kaifang.transport.ngx_thread").default_pool] = true end
  for i, c in ipairs(opts.clients or {}) do
    local t = type(c) == "table" and c.transport
    if tostring(t) == "kaifang.transport.curl" then
      problem(("clients[%d] (%s) uses transport \"curl\", which blocks the worker in a request: leave its transport "
        .. "option unset (the thread pool) or choose \"resty_http\""):format(i, tostring(c.platform)))
    elseif type(t) == "table" and type(t.pool) == "string" then
      pools[t.pool] = true
    end
  end
  local function probe(pool)
    local ok, done, err = pcall(ngx.run_worker_thread, pool, "kaifang.transport.ngx_thread", "stats")
    if ok and done then return end
    local msg = tostring(ok and err or done)
    if msg:find("not found", 1, true) and msg:find("pool", 1, true) then
      problem(("nginx has no thread pool '%s' for kaifang's calls: add `thread_pool %s threads=32;` to the main "
        .. "context of nginx.conf (outside http {})"):format(pool, pool))
    else
      problem(("the thread pool '%s' cannot run kaifang: %s (lua_package_path / lua_package_cpath as nginx's worker "
        .. "user sees them; call require(\"kaifang.ngx\").init() in init_by_lua*)"):format(pool, msg:match("^[^\n]*")))
    end
  end
  for pool in pairs(pools) do
    if transport.yielding_phases[phase] then
      probe(pool)
    elseif phase == "init_worker" then
      if not quiet then ngx.timer.at(0, function() probe(pool) end) end
    else
      notice(("thread pool '%s' not checked: ngx.run_worker_thread cannot run in nginx's '%s' phase (call "
        .. "kaifang.ngx.check from init_worker_by_lua*)"):format(pool, tostring(phase)))
    end
  end
  if #problems > 0 then return false, problems end
  return true
end

-- Yopoint's async notice to the operator (order sync): a form (or JSON) POST signed with the app
-- secret -> fn(notice, ctx), notice as yp:verify_notify returns it. Answers "success" / "fail".
function M.yopoint_notify(yp, fn, opts) return handle("yopoint_notify", yp, fn, opts, 2) end

-- The buyer sent by Yopoint to your PayUrl?receipt_no=&return_url=&notify_url=&timestamp=&sign=
-- (signed with the SignKey) -> fn(redirect, ctx); see M.process for what fn returns. A request that
-- fails verification gets 403 "invalid payment request".
function M.yopoint_pay(yp, fn, opts) return handle("yopoint_pay", yp, fn, opts, 2) end

-- Dakashi's recharge (action_type 1) and on/off (2) callbacks: JSON, unsigned, so `allow` (the
-- platform's addresses or ranges) is required, or allow = "any" -> fn(callback, ctx), callback as
-- kaifang.dakashi.parse_callback returns it. Answers {"errcode":0,"errmsg":"success"}, else the
-- platform sends it again (three times).
function M.dakashi_callback(fn, opts) return handle("dakashi_callback", nil, fn, opts, 2) end

-- Lingdian's delivery callback (the format is inferred; see M.verify_lingdian) -> fn(fields, ctx).
-- Answers {"code":100,"message":"success","data":[]}, or code 104 with the reason (inferred).
function M.lingdian_callback(ld, fn, opts) return handle("lingdian_callback", ld, fn, opts, 2) end

return M
