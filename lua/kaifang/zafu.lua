-- ZAFU campus open platform (浙江农林大学 开放平台): an OAuth2 client-credentials access token in
-- the query string of every call, nothing signed, and one field (scan_record's idCard) AES-encrypted.
--
--   local z = kaifang.zafu.new{ client_id=, client_secret=, app_id=, base_url="https://open.zafu.edu.cn",
--                               token_store = kaifang.store.file("/var/lib/app/zafu.token") }
--   z:access_token()   z:menu_list()   z:menu_submit(menus)   z:menu_delete(id)
--   z:msg_create{...}  z:msg_send{...}  z:get_message_status{...}  z:must_task_list()  z:scan_record{...}
--
-- Fetching a token invalidates the one before, so every process that shares the credentials must
-- share the token: it lives in a store (kaifang.store), is refreshed ahead of its expiry by one
-- process at a time under the store's lock, and a call refused for its token drops it from the
-- store (only if it is still the one that failed), gets the current one and is sent once more.
-- z.stats counts what this client did: fetched (tokens), refused (calls refused for their token),
-- waited (times it waited for another's refresh).
local cjson = require "cjson.safe"
local core = require "kaifang.core"
local client = require "kaifang.client"
local store = require "kaifang.store"

local M = {}

local concat, floor = table.concat, math.floor

local MESSAGE_TYPES = { ["1"] = "短信", ["3"] = "微信公众号", ["4"] = "邮件", ["5"] = "App普通消息",
                        ["6"] = "App重要消息", ["7"] = "App必做任务", ["8"] = "App通知公告" }
local STATUS_TYPES = { ["5"] = true, ["6"] = true, ["8"] = true }

local function text_of(v)
  if type(v) == "number" and v == floor(v) then return ("%.0f"):format(v) end
  return tostring(v)
end

local function absent(v) return v == nil or v == "" end

-- msgsend's table, per messageType: xgh "App内部消息时,必填。其他类型选填也可发送" (required for the
-- App types 5-8); messageTo "1.发短信,传手机号,必填 3.发微信公众号消息,传OpenId,必填 4.发邮件,传邮箱,
-- 必填 5/6.发App消息,传跳转url 选填 7/8.发App任务,传任务id 必填".
local MESSAGE_TO = { ["1"] = "a phone number", ["3"] = "an OpenId", ["4"] = "an e-mail address",
                     ["7"] = "a task id", ["8"] = "a task id" }
-- Endpoints as the document gives them. `query`: the document's URL carries the parameters in the
-- query string, so they are sent there; the others send only the access_token in the query and
-- their parameters as a form body. `app_id`: appId defaults to the client's app_id.
local Zafu = client.define("zafu", {
  menu_list = { path = "/api/menulist", acts = false, params = {} },
  menu_submit = { path = "/api/menusubmit", acts = true, query = true, params = { json = "text!" } },
  menu_delete = { path = "/api/menudelete", acts = true, query = true, params = { id = "text!" } },
  msg_create = {
    path = "/api/msgcreate", acts = true, query = true, app_id = true,
    params = { content = "text!", scope = "integer!", userno = "text!", channel = "text!", appId = "text", mobile = "text" },
    check = function(args)
      local scope = tonumber(args.scope)
      if scope < 1 or scope > 6 then
        return "parameter 'scope' must be 1 (全体师生), 2 (全体老师), 3 (全体学生), 4 (全体本科生), 5 (全体研究生) or 6 (单人)"
      end
    end,
  },
  msg_send = {
    path = "/api/msgsend", acts = true, query = true, app_id = true,
    params = { content = "text!", xgh = "text", messageType = "text!", messageTo = "text", templateId = "text",
               appId = "text", dataKey = "text" },
    check = function(args)
      local t = text_of(args.messageType)
      if not MESSAGE_TYPES[t] then
        return "parameter 'messageType' must be 1 (短信), 3 (微信公众号), 4 (邮件), 5 (App普通消息), 6 (App重要消息), "
          .. "7 (App必做任务) or 8 (App通知公告)"
      end
      if absent(args.xgh) and tonumber(t) >= 5 then
        return "missing required parameter 'xgh' for messageType " .. t
          .. " (学工号: required for the App types 5, 6, 7 and 8; optional for 1, 3 and 4)"
      end
      if absent(args.messageTo) and MESSAGE_TO[t] then
        return "missing required parameter 'messageTo' for messageType " .. t .. ": " .. MESSAGE_TO[t]
          .. " (required for 1, 3, 4, 7 and 8; optional for 5 and 6)"
      end
      if t == "3" and absent(args.templateId) then
        return "parameter 'templateId' is required for messageType 3 (微信公众号)"
      end
    end,
  },
  get_message_status = {
    path = "/api/getMessageStatus", acts = false,
    -- messageTo: "5/6.发App消息,传跳转url 选填 8.发App任务,传任务id 必填"
    params = { xgh = "text!", messageType = "text!", messageTo = "text", dataKey = "text" },
    check = function(args)
      local t = text_of(args.messageType)
      if not STATUS_TYPES[t] then
        return "parameter 'messageType' must be 5, 6 (App消息) or 8 (App通知公告)"
      end
      if t == "8" and absent(args.messageTo) then
        return "missing required parameter 'messageTo' for messageType 8: a task id (required for 8; optional for 5 and 6)"
      end
    end,
  },
  must_task_list = { path = "/api/mustTaskList", acts = false, params = {} },
  scan_record = {
    path = "/api/scanrecord.jhtm", acts = true,
    params = { termName = "text!", termSn = "text!", name = "text!", xgh = "text!", idCard = "text!",
               userType = "text!", scanDate = "text!" },
    check = function(args)
      if type(args.idCard) ~= "string" then
        return "parameter 'idCard' must be a string (an 18-digit number loses digits as a Lua number)"
      end
    end,
  },
})

M.Client = Zafu
M.MESSAGE_TYPES = MESSAGE_TYPES

local TOKEN_EP = { name = "access_token", path = "/oauth/token", acts = true }
local AES_MODES = { ecb = true, cbc = true }
local AES_ENCODINGS = { base64 = true, hex = true, HEX = true }

-- The tokens each client sent lately, to take out of text that comes back; kept out of the
-- client table so that pairs() or an inspector never shows them.
local recent = setmetatable({}, { __mode = "k" })

local function opt_fail(msg) error("kaifang.zafu: " .. msg, 3) end

-- kaifang.zafu.new{ client_id=, client_secret=, app_id=, base_url=, token_store=, refresh_ahead=300,
--   token_wait=, scope=, aes_mode="ecb", aes_iv=, aes_encoding="base64", sleep=, clock=, timeout=, ... }
function M.new(opts)
  local self = client.new(Zafu, opts, { -- not a tail call: client.new raises at level 3, our caller
    required = { "client_id", "app_id" }, secret = "client_secret", base_url = "https://open.zafu.edu.cn",
    options = { "token_store", "refresh_ahead", "token_wait", "scope", "aes_mode", "aes_iv", "aes_encoding",
                "sleep", "token_key" },
  })
  if #self.app_id > 16 then opt_fail("option 'app_id' is longer than 16 characters, so it cannot be left-padded into the AES-128 key") end

  local ts = opts.token_store
  if ts == nil then
    local why
    ts, why = store.default() -- inside nginx the shared dict, else one memory store per process
    if not ts then opt_fail("option 'token_store' unset: " .. why) end
  else
    local msg = store.check(ts)
    if msg then opt_fail("option 'token_store': " .. msg) end
  end
  self.token_store = ts
  -- the shared rate lives where the token does, unless told otherwise
  if opts.rate_store == nil and self.rate then
    local msg = store.check(ts, { "take" })
    if msg then opt_fail("option 'rate' needs a store with take: the token store has none (" .. msg .. "); give rate_store") end
    self.rate_store = ts
  end

  local ahead = opts.refresh_ahead
  if ahead ~= nil and not client.seconds(ahead, true) then opt_fail("option 'refresh_ahead' must be a number of seconds from 0 to 1e6") end
  self.refresh_ahead = ahead or 300

  -- how long the others wait for the lock's holder at most; a call's own deadline comes first
  local wait = opts.token_wait
  if wait ~= nil and not client.seconds(wait) then opt_fail("option 'token_wait' must be a positive number of seconds, at most 1e6") end
  self.token_wait = wait

  if opts.scope ~= nil and (type(opts.scope) ~= "string" or opts.scope == "") then opt_fail("option 'scope' must be a non-empty string") end
  self.scope = opts.scope

  local mode = opts.aes_mode or "ecb"
  if not AES_MODES[mode] then opt_fail("option 'aes_mode' must be \"ecb\" or \"cbc\"") end
  if mode == "cbc" then
    if type(opts.aes_iv) ~= "string" or #opts.aes_iv ~= 16 then opt_fail("option 'aes_iv' must be a 16-byte string for CBC") end
  elseif opts.aes_iv ~= nil then
    opt_fail("option 'aes_iv' is for aes_mode \"cbc\" only")
  end
  self.aes_mode, self.aes_iv = mode, opts.aes_iv
  local encoding = opts.aes_encoding or "base64"
  if not AES_ENCODINGS[encoding] then opt_fail("option 'aes_encoding' must be \"base64\", \"hex\" or \"HEX\"") end
  self.aes_encoding = encoding

  if opts.sleep ~= nil and type(opts.sleep) ~= "function" then opt_fail("option 'sleep' must be a function") end
  -- waiting for another's refresh: the store's own sleep where it has one (ngx.sleep in nginx)
  local has, store_sleep = pcall(function() return ts.sleep end)
  store_sleep = has and type(store_sleep) == "function"
  self.sleep = opts.sleep or (store_sleep and function(s) return ts:sleep(s) end) or require("kaifang.transport").sleep
  self.now = opts.clock or core.now -- token expiry needs sub-second time; os.time is whole seconds
  self.monotonic = opts.clock or core.monotonic

  if opts.token_key ~= nil and (type(opts.token_key) ~= "string" or opts.token_key == "") then opt_fail("option 'token_key' must be a non-empty string") end
  -- Keyed by the credentials, so that a client with a wrong secret never borrows a good client's
  -- token (a digest, never the secret itself), and by the base URL, so that a sandbox's token is
  -- never sent to the real platform.
  self.token_key = opts.token_key or ("zafu:token:%s:%s@%s"):format(self.client_id,
    core.digest("sha256", "kaifang zafu token\0" .. self.client_id .. "\0" .. client.secret(self)):sub(1, 16), self.base_url)
  self.owner_id = core.random_hex(12)
  self.owner_seq = 0
  self.stats = { fetched = 0, refused = 0, waited = 0 }
  recent[self] = {}
  return self
end

function Zafu:__tostring()
  return ("kaifang.zafu{ client_id = %q, app_id = %q, base_url = %q, token_store = %s }"):format(
    self.client_id, self.app_id, self.base_url, tostring(self.token_store))
end

---------------------------------------------------------------------------- tokens out of strings

-- Text from the platform with the tokens this client sent lately replaced: a platform that
-- refuses a token may quote it ("Invalid access token: <token>"). The client secret needs no
-- such care: it is sent in the token request's body only, which no message repeats.
function Zafu:scrubbed(err)
  if type(err) == "table" and type(err.message) == "string" then
    for _, token in ipairs(recent[self] or {}) do
      err.message = err.message:gsub(token:gsub("%p", "%%%0"), "<access_token>")
    end
  end
  return err
end

---------------------------------------------------------------------------- the token

-- A stored token: JSON { access_token, expires_at (unix seconds), expires_in }; raw is the exact
-- stored string, what delete_if_equal compares.
local function parse_record(raw)
  if type(raw) ~= "string" then return nil end
  local rec = cjson.decode(raw)
  if type(rec) ~= "table" or type(rec.access_token) ~= "string" or rec.access_token == ""
    or type(rec.expires_at) ~= "number" then
    return nil
  end
  if type(rec.expires_in) ~= "number" then rec.expires_in = 0 end
  rec.raw = raw
  return rec
end

-- Refresh this long before expiry: refresh_ahead, but never more than half the token's lifetime,
-- so that a short-lived token is still used for a while.
function Zafu:refresh_at(rec)
  local margin = self.refresh_ahead
  if margin > rec.expires_in / 2 then margin = rec.expires_in / 2 end
  return rec.expires_at - margin
end

local function decode_object(body)
  local doc = cjson.decode(body or "")
  return type(doc) == "table" and doc or nil
end

local OAUTH_STATUS = { [400] = true, [401] = true, [403] = true }

-- POST /oauth/token with a JSON body, by deadline -> record | nil, err (kind "auth" for a refusal)
function Zafu:fetch_token(deadline)
  local body = { grant_type = "client_credentials", client_id = self.client_id, client_secret = client.secret(self) }
  if self.scope then body.scope = self.scope end
  local started = self.now()
  local res, err = self:send(TOKEN_EP, {
    method = "POST", url = self.base_url .. TOKEN_EP.path,
    headers = { ["Content-Type"] = "application/json", Accept = "application/json" },
    body = cjson.encode(body),
  }, deadline)
  if not res then return nil, err end
  local doc = decode_object(res.body)
  if res.status ~= 200 then
    local oauth = OAUTH_STATUS[res.status]
    local message = doc and doc.error_description
    if type(message) ~= "string" then
      message = res.status == 401 and "client_id or client_secret refused" or (res.body or ""):sub(1, 200)
    end
    return nil, self:error{
      kind = oauth and "auth" or "http", code = doc and doc.error or res.status, http_status = res.status,
      message = message, retryable = not oauth,
    }
  end
  local token = doc and doc.access_token
  local expires_in = doc and tonumber(doc.expires_in) -- a number in the example, "string" in the field table
  if type(token) ~= "string" or token == "" or not expires_in or expires_in <= 0 then
    -- the body is not repeated here: it may hold a token
    return nil, self:error{ kind = "decode", http_status = res.status, retryable = true,
                            message = "token reply without access_token and a positive expires_in" }
  end
  self.stats.fetched = self.stats.fetched + 1
  local rec = { access_token = token, expires_at = started + expires_in, expires_in = expires_in }
  rec.raw = cjson.encode(rec)
  return rec
end

function Zafu:owner()
  self.owner_seq = self.owner_seq + 1
  return self.owner_id .. "." .. self.owner_seq
end

-- The lock outlives the fetch made under it by this much: the fetch ends by its call's deadline
-- (its libcurl timeout, and nginx's pool thread does not send it once that has passed), the lock
-- lasts until the deadline and this margin, so a fetch never runs without its lock.
local LOCK_MARGIN = 5

-- The current token record, single-flight, by the call's deadline (default: the client's timeout
-- from now): a fresh stored token is used as is; one due for refresh is refreshed by whoever gets
-- the store's lock while the others go on using it until it expires; without a usable one, the
-- others wait for the lock's holder (until token_wait or the deadline) and read what it stored.
function Zafu:token_record(deadline)
  local st, key = self.token_store, self.token_key
  local lock_key = key .. ":lock"
  local started = core.monotonic()
  deadline = deadline or self:deadline()
  local wait_until, pause
  while true do
    local raw, err = st:get(key)
    if raw == nil and err ~= nil then return nil, err end
    local rec = parse_record(raw)
    local now = self.now()
    if rec and now < self:refresh_at(rec) then return rec end
    local usable = rec and now < rec.expires_at
    local left = deadline - core.monotonic()
    if left < 0.001 then
      if usable then return rec end
      return nil, self:late("deadline", ("its timeout ran out before it was sent: %.1f s went to %s"):format(
        core.monotonic() - started, wait_until and ("waiting for the access token that the holder of the lock in "
          .. tostring(st) .. " is fetching") or "getting the access token"))
    end
    local owner = self:owner()
    local got, lerr = st:lock(lock_key, owner, left + LOCK_MARGIN)
    if got == nil and lerr ~= nil then
      if usable then return rec end
      return nil, lerr
    end
    if got then
      -- someone may have stored a fresh one between our read and our lock
      local again = parse_record((st:get(key)))
      if again and self.now() < self:refresh_at(again) then
        st:unlock(lock_key, owner)
        return again
      end
      local fresh, ferr = self:fetch_token(deadline)
      local stored, serr = true, nil
      if fresh then stored, serr = st:set(key, fresh.raw, fresh.expires_in) end
      st:unlock(lock_key, owner)
      -- a token nobody else can see is one the next fetch kills: say so rather than ping-pong
      if fresh and not stored then
        return nil, self:error{ kind = "store", code = serr and serr.code or "store", retryable = true,
          message = "fetched an access token but could not store it in " .. tostring(st) .. " ("
            .. tostring(serr and serr.message or serr) .. "); the next fetch would invalidate it" }
      end
      if fresh then return fresh end
      if usable then return rec end -- refreshing ahead failed; the current token still works
      return nil, ferr
    end
    if usable then return rec end -- another is refreshing it
    local t = self.monotonic()
    if not wait_until then
      wait_until = self.token_wait and t + self.token_wait or math.huge
      pause = 0.005
      self.stats.waited = self.stats.waited + 1
    elseif t >= wait_until then
      return nil, self:error{
        kind = "auth", code = "token_wait", retryable = true,
        message = ("no access token after waiting %gs for the holder of the lock in %s"):format(self.token_wait, tostring(st)),
      }
    end
    self.sleep(math.min(pause, left))
    pause = pause * 2 > 0.05 and 0.05 or pause * 2
  end
end

-- z:access_token() -> token | nil, err: the shared token, fetched or refreshed as needed.
function Zafu:access_token()
  if getmetatable(self) ~= Zafu then error("kaifang.zafu: call access_token as a method: client:access_token()", 2) end
  local rec, err = self:token_record()
  if not rec then return nil, err end
  return rec.access_token
end

---------------------------------------------------------------------------- calls

-- The token was refused (expired, superseded, unknown): HTTP 401/403 with an OAuth error.
local batch_tokens = setmetatable({}, { __mode = "k" }) -- request -> the token record it carries

local function token_refused(res)
  if res.status ~= 401 and res.status ~= 403 then return false end
  local doc = decode_object(res.body)
  local e = doc and doc.error
  return e == "invalid_token" or e == "invalid_grant"
end

function Zafu:encrypt_id_card(id)
  local key = ("0"):rep(16 - #self.app_id) .. self.app_id
  local bytes, err = core.aes_encrypt(key, id, self.aes_mode, self.aes_iv)
  if not bytes then return nil, err end
  if self.aes_encoding == "base64" then return core.base64_encode(bytes) end
  return core.hex_encode(bytes, self.aes_encoding == "HEX")
end

-- The tokens this client sent lately, to take out of any text that comes back.
function Zafu:remember(token)
  local list = recent[self]
  if list[1] == token then return end
  table.insert(list, 1, token)
  list[5] = nil
end

-- token: the one to send; without it (kaifang.batch builds requests itself) the current one, got
-- by deadline, and a failure to get it raises, which the batch reports for that call.
function Zafu:build_request(ep, args, token, deadline)
  local raw
  if token == nil then
    local rec, err = self:token_record(deadline)
    if not rec then error(tostring(err), 0) end
    token, raw = rec.access_token, rec.raw
  end
  self:remember(token)
  local params = {}
  for k, v in pairs(args) do params[k] = v end
  if ep.app_id and params.appId == nil then params.appId = self.app_id end
  if ep.name == "scan_record" then
    params.appId = self.app_id
    params.idCard = assert(self:encrypt_id_card(params.idCard))
  end
  local query, body = { access_token = token }, ""
  if ep.query then
    for k, v in pairs(params) do query[k] = v end
  else
    body = core.form_encode(params)
  end
  local req = {
    method = "POST",
    url = self.base_url .. ep.path .. "?" .. core.form_encode(query),
    headers = { ["Content-Type"] = "application/x-www-form-urlencoded" },
    body = body,
  }
  if raw then batch_tokens[req] = raw end
  return req
end

-- For kaifang.batch: true when res refused the token req was built with; that token is then
-- dropped from the store if it is still the current one, and the batch sends the call once more.
function Zafu:refused_token(req, res)
  if not token_refused(res) then return false end
  self.stats.refused = self.stats.refused + 1
  local raw = batch_tokens[req]
  if raw then self.token_store:delete_if_equal(self.token_key, raw) end
  return true
end

-- One request with the token of rec, through the hooks, by deadline -> value, extra, refused
function Zafu:send_with(ep, args, acts, attempt, rec, deadline)
  local req = self:build_request(ep, args, rec.access_token)
  local info, started
  if self.on_request or self.on_response then
    info, started = self:request_info(ep, req, attempt), core.monotonic() -- the URL with the token hidden
    if self.on_request then self.on_request(info) end
  end
  local res, err = self:send(ep, req, deadline)
  local value, extra = self:outcome(ep, res, err, acts)
  if value == nil then self:scrubbed(extra) end
  if info and self.on_response then self:report(info, started, res, value == nil and extra or nil) end
  return value, extra, res ~= nil and token_refused(res)
end

-- One attempt: the current token; when it is refused, dropped from the store if it is still the
-- one that failed, and the request sent once more with the current one. A refused request was
-- not acted on, so this is safe for acting calls too; it happens once per attempt, never more.
function Zafu:attempt(ep, args, acts, attempt, deadline)
  local rec, err = self:token_record(deadline)
  if not rec then return nil, err end
  local value, extra, refused = self:send_with(ep, args, acts, attempt, rec, deadline)
  if not refused then return value, extra end
  self.stats.refused = self.stats.refused + 1
  local _, derr = self.token_store:delete_if_equal(self.token_key, rec.raw)
  if derr then return nil, derr end
  rec, err = self:token_record(deadline)
  if not rec then return nil, err end
  return self:send_with(ep, args, acts, attempt, rec, deadline)
end

-- The pipeline's call, with the token: one deadline, max_attempts and backoff as for every client.
function Zafu:call_endpoint(ep, args, call_opts)
  local acts, attempt = client.acts(ep, call_opts), 0
  local deadline = self:deadline(call_opts)
  while true do
    attempt = attempt + 1
    local value, extra = self:attempt(ep, args, acts, attempt, deadline)
    if value ~= nil then return value end -- one value on success, never a second
    if not (extra and extra.retryable) or attempt >= self.max_attempts or not client.pause(attempt, deadline, self.sleep) then
      return nil, extra
    end
  end
end

local function fields_of(v)
  if v == nil or v == cjson.null then return nil end
  if type(v) == "table" and next(v) == nil then return nil end
  if v == "" then return nil end
  return v
end

local function text(v) return type(v) == "string" and v or nil end

-- Two reply shapes: { type, code, content, anchor, errorFields, data } (type "success" or "error")
-- and { status, message[, errorFields] } (status 1 or 0); OAuth errors { error, error_description }.
-- Text from the platform is scrubbed of the tokens sent lately (the platform may echo one).
function Zafu:interpret(ep, res)
  local value, err = self:interpret_reply(ep, res)
  if value == nil then self:scrubbed(err) end
  return value, err
end

function Zafu:interpret_reply(ep, res)
  if res.status == 401 or res.status == 403 then
    local doc = decode_object(res.body) or {}
    return nil, self:error{
      kind = "auth", code = doc.error or res.status, http_status = res.status,
      message = text(doc.error_description) or "access token refused",
      retryable = token_refused(res), -- refused for its token: nothing was done
    }
  end
  local doc, err = self:decode(ep, res)
  if not doc then return nil, err end
  if doc.type ~= nil then
    if doc.type == "success" then return doc end
    return nil, self:error{ kind = "platform", code = doc.code, http_status = res.status,
                            fields = fields_of(doc.errorFields), message = text(doc.content) }
  end
  if doc.status ~= nil then
    if tonumber(doc.status) == 1 then return doc end
    return nil, self:error{ kind = "platform", code = tonumber(doc.status) or doc.status, http_status = res.status,
                            fields = fields_of(doc.errorFields), message = text(doc.message) }
  end
  if doc.error ~= nil then
    return nil, self:error{ kind = "auth", code = doc.error, http_status = res.status, message = text(doc.error_description) }
  end
  return nil, self:error{ kind = "decode", http_status = res.status, message = "reply in neither of the documented shapes" }
end

---------------------------------------------------------------------------- positional methods

-- The menu tree as JSON: an empty table is an empty list (menuDaps = {}, childs = {}), which is
-- what the menu format holds; cjson would write {}.
local function menu_json(v, depth)
  if depth > 64 then error("the menu tree is nested too deeply (a cycle?)", 0) end
  local t = type(v)
  if v == nil or v == cjson.null then return "null" end
  if t == "string" or t == "boolean" then return cjson.encode(v) end
  if t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then error("a menu holds a number JSON cannot carry", 0) end
    if v == floor(v) and v > -2 ^ 53 and v < 2 ^ 53 then return ("%.0f"):format(v) end
    return ("%.17g"):format(v)
  end
  if t ~= "table" then error("a menu cannot hold a " .. t, 0) end
  local n = #v
  if next(v) == nil or n > 0 then
    local parts, count = {}, 0
    for _ in pairs(v) do count = count + 1 end
    if count ~= n then error("a menu table mixes list items and named fields", 0) end
    for i = 1, n do parts[i] = menu_json(v[i], depth + 1) end
    return "[" .. concat(parts, ",") .. "]"
  end
  local keys = {}
  for k in pairs(v) do
    if type(k) ~= "string" then error("menu field names must be strings", 0) end
    keys[#keys + 1] = k
  end
  table.sort(keys)
  local parts = {}
  for i, k in ipairs(keys) do parts[i] = cjson.encode(k) .. ":" .. menu_json(v[k], depth + 1) end
  return "{" .. concat(parts, ",") .. "}"
end
M.menu_json = function(menus) return menu_json(menus, 0) end

local function positional(name, to_args)
  local ep = Zafu.endpoints[name]
  Zafu[name] = function(self, value)
    if getmetatable(self) ~= Zafu then error("kaifang.zafu: call " .. name .. " as a method: client:" .. name .. "(...)", 2) end
    local ok, args = pcall(to_args, value)
    if not ok then error("kaifang.zafu: " .. name .. ": " .. tostring(args), 2) end
    return self:call_endpoint(ep, args)
  end
end

-- z:menu_submit(menus): the whole menu tree (a list of menus as menu_list's data; or its JSON text)
positional("menu_submit", function(menus)
  if type(menus) == "string" then
    if menus == "" then error("expects the menu tree, got an empty string", 0) end
    return { json = menus }
  end
  if type(menus) ~= "table" then error("expects the menu tree (a list of menus, or its JSON text), got " .. type(menus), 0) end
  return { json = menu_json(menus, 0) }
end)

-- z:menu_delete(id)
positional("menu_delete", function(id)
  if (type(id) == "number" and id == floor(id)) or (type(id) == "string" and id ~= "") then return { id = id } end
  error("expects the menu id (a string or an integer), got " .. (type(id) == "number" and "a fraction" or type(id)), 0)
end)

return M
