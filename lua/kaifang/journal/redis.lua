-- kaifang.journal.redis{ host = "127.0.0.1", port = 6379, password = nil, db = 0, prefix =,
--                        lease = 10, connect_timeout = 2, timeout = 2 }:
-- a batch's journal in Redis, shared by any number of processes on any number of machines that
-- run the same batch at once. prefix names the batch ("notices:2024-06:"); one Redis server
-- (not a cluster: a window of calls is claimed in one script).
--
-- Each worker (a kaifang.batch run) has an id and a lease, <prefix>w:<id>, set with PX and renewed
-- while it runs, so Redis expires it when the worker dies. A call is claimed atomically, in a
-- script, before it is sent: a call another worker holds is waited for; one held by a worker whose
-- lease ran out is settled as maybe_sent (a read is claimed and sent again). Keys:
--   <prefix>c:<key>     a hash: state, owner, platform, account, method, args, acts, code,
--                       message, outcome, sent_at, settled_at (Redis's clock)
--   <prefix>s:<state>   the set of the calls in that state
-- The claim is written in Redis's memory before the request leaves; that it survives a crash of
-- Redis itself is Redis's persistence (appendonly yes, appendfsync always).
local cjson = require "cjson.safe"
local core = require "kaifang.core"
local errors = require "kaifang.errors"
local journal = require "kaifang.journal"

local M = {}

local Journal = {}
Journal.__index = Journal
Journal.__name = "kaifang.journal.redis"

local function fail(msg, level) error("kaifang.journal.redis: " .. msg, level + 1) end

-- Runs inside Redis. ARGV: prefix, worker id, lease (ms), finals, releases and window as JSON,
-- the message of an interrupted call. Returns the window's verdicts as JSON: "send", "busy" or
-- { state, outcome, code, message [, settled_now] }. Repeating it with the same arguments does
-- the same (a call this worker already holds is its own), so a reply lost on a broken
-- connection may be asked for again.
local STEP = [[
local p, me, lease = ARGV[1], ARGV[2], tonumber(ARGV[3])
local finals, releases, window = cjson.decode(ARGV[4]), cjson.decode(ARGV[5]), cjson.decode(ARGV[6])
local t = redis.call('TIME')
local now = tostring(tonumber(t[1]) + tonumber(t[2]) / 1e6)
redis.call('SET', p .. 'w:' .. me, '1', 'PX', lease)
local function move(key, from, to)
  if from then redis.call('SREM', p .. 's:' .. from, key) end
  if to then redis.call('SADD', p .. 's:' .. to, key) end
end
local function settle(k, key, from, f)
  redis.call('HSET', k, 'state', f.state, 'outcome', f.outcome or '', 'code', f.code == nil and '' or tostring(f.code),
    'message', f.message or '', 'settled_at', now)
  move(key, from, f.state)
end
for _, f in ipairs(finals) do
  local k = p .. 'c:' .. f.key
  local h = redis.call('HMGET', k, 'state', 'owner', 'lapsed')
  -- ours, still sending; or settled as maybe_sent because our lease ran out, and now known
  if h[2] == me and (h[1] == 'sending' or h[3] == '1') then
    redis.call('HDEL', k, 'lapsed')
    settle(k, f.key, h[1], f)
  end
end
for _, key in ipairs(releases) do
  local k = p .. 'c:' .. key
  local h = redis.call('HMGET', k, 'state', 'owner')
  if h[1] == 'sending' and h[2] == me then
    redis.call('DEL', k)
    move(key, 'sending', nil)
  end
end
local out = {}
for i, w in ipairs(window) do
  local k = p .. 'c:' .. w.key
  local h = redis.call('HMGET', k, 'state', 'owner', 'outcome', 'code', 'message', 'platform')
  if not h[1] then
    redis.call('HSET', k, 'state', 'sending', 'owner', me, 'platform', w.platform, 'account', w.account or '',
      'method', w.method, 'args', w.args or '', 'acts', w.acts and '1' or '0', 'sent_at', now)
    move(w.key, nil, 'sending')
    out[i] = 'send'
  elseif h[1] ~= 'sending' then
    out[i] = { state = h[1], outcome = h[3], code = h[4], message = h[5] }
  elseif h[2] == me then
    out[i] = 'send'
  elseif redis.call('EXISTS', p .. 'w:' .. h[2]) == 1 then
    out[i] = 'busy'
  elseif not w.acts then
    redis.call('HSET', k, 'owner', me, 'sent_at', now)
    out[i] = 'send'
  else
    local f = { state = 'maybe_sent', message = ARGV[7], outcome = cjson.encode({ platform = h[6], kind = 'interrupted',
      maybe_sent = true, message = ARGV[7] }) }
    redis.call('HSET', k, 'lapsed', '1')
    settle(k, w.key, 'sending', f)
    f.settled_now = true
    out[i] = f
  end
end
return cjson.encode(out)]]

local MARK = [[
local k, from = KEYS[1], redis.call('HGET', KEYS[1], 'state')
if not from then return 0 end
redis.call('HSET', k, 'state', ARGV[2], 'outcome', ARGV[3], 'code', '', 'message', '')
redis.call('SREM', ARGV[1] .. 's:' .. from, ARGV[4])
redis.call('SADD', ARGV[1] .. 's:' .. ARGV[2], ARGV[4])
return 1]]

local FORGET = [[
local from = redis.call('HGET', KEYS[1], 'state')
if not from then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', ARGV[1] .. 's:' .. from, ARGV[2])
return 1]]

function M.new(opts)
  if type(opts) ~= "table" then fail("expects a table of options", 2) end
  local known = { host = true, port = true, password = true, db = true, prefix = true, lease = true,
                  connect_timeout = true, timeout = true }
  for k in pairs(opts) do
    if not known[k] then fail(require("kaifang.client").unknown("option", k, known), 2) end
  end
  if type(opts.prefix) ~= "string" or opts.prefix == "" then
    fail("option 'prefix' must name the batch, e.g. \"notices:2024-06:\"", 2)
  end
  local lease = opts.lease or 10
  if not require("kaifang.client").seconds(lease) then fail("option 'lease' must be a positive number of seconds, at most 1e6", 2) end
  local ok, conn = pcall(core.redis, {
    host = opts.host, port = opts.port, password = opts.password, db = opts.db,
    connect_timeout = opts.connect_timeout, timeout = opts.timeout,
  })
  if not ok then fail((tostring(conn):gsub("^kaifang%.redis: ", "")), 2) end
  return setmetatable({ conn = conn, prefix = opts.prefix, lease = lease, host = opts.host or "127.0.0.1",
                        port = opts.port or 6379, db = opts.db or 0 }, Journal)
end

function Journal:command(words, idempotent)
  local v, err = self.conn:command(words, idempotent)
  if err then
    return nil, errors.new{ platform = "journal", kind = "store", code = err.kind,
                            message = ("redis %s:%s: %s"):format(self.host, tostring(self.port), tostring(err.message)) }
  end
  return v
end

local function lease_ms(self) return math.max(1, math.floor(self.lease * 1000 + 0.5)) end

---------------------------------------------------------------------------- the batch's side

function Journal:begin()
  self.worker = core.random_hex(8)
  local _, err = self:command({ "SET", self.prefix .. "w:" .. self.worker, "1", "PX", lease_ms(self) }, true)
  if err then return nil, err end
  return true
end

function Journal:renew()
  if not self.worker then return true end
  local _, err = self:command({ "SET", self.prefix .. "w:" .. self.worker, "1", "PX", lease_ms(self) }, true)
  if err then return nil, err end
  return true
end

function Journal:finish()
  if not self.worker then return end
  self:command({ "DEL", self.prefix .. "w:" .. self.worker }, true)
  self.worker = nil
end

local function array(list)
  if #list == 0 then return "[]" end
  return cjson.encode(list)
end

-- See kaifang.journal.sqlite's step; a verdict may also be "busy": another live worker holds it.
function Journal:step(finals, window, releases)
  local w = {}
  for i, item in ipairs(window) do
    w[i] = { key = item.key, acts = item.acts, platform = item.platform, account = item.account,
             method = item.method, args = item.args }
  end
  local f = {}
  for i, x in ipairs(finals) do
    f[i] = { key = x.key, state = x.state, outcome = x.outcome, code = x.code, message = x.message }
  end
  local v, err = self:command({ "EVAL", STEP, 0, self.prefix, self.worker, lease_ms(self), array(f),
                                array(releases or {}), array(w), journal.INTERRUPTED }, true)
  if err then return nil, err end
  local verdicts = cjson.decode(v)
  if type(verdicts) ~= "table" then
    return nil, errors.new{ platform = "journal", kind = "store", message = "redis: an unreadable reply to a step" }
  end
  for i, x in ipairs(verdicts) do
    if type(x) == "table" then
      if x.code == "" or x.code == false then x.code = nil end
      if x.message == "" or x.message == false then x.message = nil end
      if x.outcome == false then x.outcome = nil end
      x.code = tonumber(x.code) or x.code
      verdicts[i] = x
    end
  end
  return verdicts
end

---------------------------------------------------------------------------- the operator's side

local FIELDS = { "state", "platform", "account", "method", "args", "acts", "code", "message", "outcome", "sent_at", "settled_at" }

function Journal:record(key)
  local words = { "HMGET", self.prefix .. "c:" .. key }
  for i, name in ipairs(FIELDS) do words[i + 2] = name end
  local v = self:command(words, true)
  if type(v) ~= "table" or not v[1] then return nil end
  local rec = { key = key }
  for i, name in ipairs(FIELDS) do
    local x = v[i]
    if x ~= false and x ~= "" then rec[name] = x end
  end
  rec.code = tonumber(rec.code) or rec.code
  rec.sent_at, rec.settled_at = tonumber(rec.sent_at), tonumber(rec.settled_at)
  return rec
end

function Journal:report()
  local counts = {}
  for _, s in ipairs(journal.STATES) do
    local n, err = self:command({ "SCARD", self.prefix .. "s:" .. s }, true)
    if err then error(err, 2) end
    counts[s] = n
  end
  return journal.report(counts, function(state)
    local states = state and { state } or journal.STATES
    local keys = {}
    for _, s in ipairs(states) do
      local cursor = "0"
      repeat
        local page, err = self:command({ "SSCAN", self.prefix .. "s:" .. s, cursor, "COUNT", 500 }, true)
        if err then error(err, 0) end
        cursor = page[1]
        for _, k in ipairs(page[2]) do keys[#keys + 1] = k end
      until cursor == "0"
    end
    table.sort(keys)
    local i = 0
    return function()
      while true do
        i = i + 1
        if not keys[i] then return nil end
        local rec = self:record(keys[i])
        if rec then return rec end
      end
    end
  end)
end

function Journal:mark(key, state, outcome)
  return self:command({ "EVAL", MARK, 1, self.prefix .. "c:" .. key, self.prefix, state, outcome, key }, true) == 1
end

function Journal:forget(key)
  return self:command({ "EVAL", FORGET, 1, self.prefix .. "c:" .. key, self.prefix, key }, true) == 1
end

Journal.reconcile = journal.reconcile

function Journal:close()
  self:finish()
  self.conn:close()
end

Journal.__close = Journal.close

function Journal:__tostring()
  return ("kaifang.journal.redis(%s:%s db %s, prefix %q)"):format(self.host, tostring(self.port), tostring(self.db), self.prefix)
end

return M
