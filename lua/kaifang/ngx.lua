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
-- Repeats: with a lua_shared_dict (opts.dict, default "kaifang" when nginx has one), a callback
-- already taken is answered with the success reply again without calling your function (the
-- platforms repeat callbacks whose answer got lost); one still being handled gets the failure
-- reply, so the platform tries again later. A signed callback is recognised by its sign, an
-- unsigned one (Dakashi) by its body. opts.dedupe_ttl (seconds, default 900) is how long one is
-- remembered; keep it longer than the timestamp window (300 s), outside which a replay is refused
-- anyway. opts.dict = false turns this off.
--
-- Other options: allow (a list of client addresses; anything else is refused, for the unsigned
-- Dakashi callbacks above all), window (seconds; the signed callbacks' timestamp window),
-- log_level (of refusals; default ngx.WARN).
--
-- The pure part, M.process(kind, client, request, fn, opts) -> response, needs no nginx: the specs
-- drive it directly, and the nginx handlers only read the request and write the response.
--
-- Start-up: call M.init() from init_by_lua* (below), and make your clients there too.
local core = require "kaifang.core"
local errors = require "kaifang.errors"

local M = {}

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

function M.init()
  if require("kaifang.transport").phase() ~= "init" then
    error("kaifang.ngx.init: call it from init_by_lua* (while nginx reads its configuration)", 2)
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

local function allowed(list, addr)
  if not list then return true end
  for _, a in ipairs(list) do
    if a == addr then return true end
  end
  return false
end

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

  -- reason goes to the log; public (default: reason) into the platform's failure reply
  local function refuse(reason, public)
    log("warn", ("kaifang.ngx: refused %s from %s: %s"):format(label, who, reason))
    return replies.fail(public or reason)
  end

  if not allowed(opts.allow, req.remote_addr) then return refuse("address not allowed") end
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
    local state = seen.claim(key, ttl)
    if state == "done" then
      log("info", ("kaifang.ngx: %s from %s already taken; answered again without calling the handler"):format(label, who))
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
      log("err", ("kaifang.ngx: %s handler failed: %s"):format(label, tostring(ok and r2 or r1)))
      return replies.fail()
    end
    if type(r1) == "string" then return { status = 302, headers = { Location = r1 }, body = "" } end
    if type(r1) == "table" then return r1 end
    return nil
  end

  local ok, why = taken(pcall(fn, event, ctx))
  if not ok then
    if seen and key then seen.forget(key) end
    log("err", ("kaifang.ngx: %s handler failed: %s"):format(label, why))
    return replies.fail("handler failed")
  end
  if seen and key then seen.done(key, ttl) end
  return replies.ok()
end

---------------------------------------------------------------------------- nginx glue

-- The repeat memory on a lua_shared_dict: "busy" while a handler runs (60 s at most), then "done".
function M.seen_on(dict)
  local prefix = "\1seen:"
  return {
    claim = function(key, ttl)
      local ok, err = dict:add(prefix .. key, "busy", 60)
      if ok then return "new" end
      if err ~= "exists" then return "new" end -- a full dict must not stop callbacks
      return dict:get(prefix .. key) == "done" and "done" or "busy"
    end,
    done = function(key, ttl) dict:set(prefix .. key, "done", ttl) end,
    forget = function(key) dict:delete(prefix .. key) end,
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
  }
end

local function send(res)
  local ngx = ngx
  ngx.status = res.status or 200
  for k, v in pairs(res.headers or {}) do ngx.header[k] = v end
  if res.body and res.body ~= "" then ngx.print(res.body) end
  return ngx.exit(ngx.status)
end

local LEVELS = { warn = "WARN", err = "ERR", info = "INFO" }

local function handle(kind, client, fn, opts, level)
  opts = opts or {}
  if type(fn) ~= "function" then error("kaifang.ngx." .. kind .. ": expects your handler function", level) end
  local ngx = ngx
  local dict = opts.dict
  if dict == nil then
    dict = ngx.shared.kaifang
  elseif dict then
    local name = dict
    dict = ngx.shared[name]
    if not dict then
      ngx.log(ngx.ERR, "kaifang.ngx: no lua_shared_dict '", tostring(name), "' (add `lua_shared_dict ", tostring(name),
        " 1m;` to http {}); repeated callbacks reach the handler again")
    end
  end
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.seen = dict and M.seen_on(dict) or nil
  o.log = function(lvl, msg)
    local l = (lvl == "warn" and opts.log_level) or ngx[LEVELS[lvl] or "WARN"]
    ngx.log(l, msg)
  end
  local ok, res = pcall(function() return M.process(kind, client, ngx_request(), fn, o) end)
  if not ok then
    ngx.log(ngx.ERR, "kaifang.ngx: ", kind, ": ", tostring(res))
    res = M.replies[kind].fail("internal error")
  end
  if res then return send(res) end
end

-- Yopoint's async notice to the operator (order sync): a form (or JSON) POST signed with the app
-- secret -> fn(notice, ctx), notice as yp:verify_notify returns it. Answers "success" / "fail".
function M.yopoint_notify(yp, fn, opts) return handle("yopoint_notify", yp, fn, opts, 2) end

-- The buyer sent by Yopoint to your PayUrl?receipt_no=&return_url=&notify_url=&timestamp=&sign=
-- (signed with the SignKey) -> fn(redirect, ctx); see M.process for what fn returns. A request that
-- fails verification gets 403 "invalid payment request".
function M.yopoint_pay(yp, fn, opts) return handle("yopoint_pay", yp, fn, opts, 2) end

-- Dakashi's recharge (action_type 1) and on/off (2) callbacks: JSON, unsigned, so give `allow`
-- (the platform's addresses) where you can -> fn(callback, ctx), callback as
-- kaifang.dakashi.parse_callback returns it. Answers {"errcode":0,"errmsg":"success"}, else the
-- platform sends it again (three times).
function M.dakashi_callback(fn, opts) return handle("dakashi_callback", nil, fn, opts, 2) end

-- Lingdian's delivery callback (the format is inferred; see M.verify_lingdian) -> fn(fields, ctx).
-- Answers {"code":100,"message":"success","data":[]}, or code 104 with the reason (inferred).
function M.lingdian_callback(ld, fn, opts) return handle("lingdian_callback", ld, fn, opts, 2) end

return M
