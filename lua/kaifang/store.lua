-- kaifang.store: where a shared secret such as an access token lives, so that every process (or
-- machine) that needs it uses the same one instead of each fetching its own; and a rate that
-- they all share.
--
--   kaifang.store.memory()                      one process (the default of the clients)
--   kaifang.store.file(path [, opts])           the processes of one machine
--   kaifang.store.redis{ host=, port=, ... }    the machines of a cluster
--   kaifang.store.ngx_shared(dict_name)         the workers of one nginx (lua/kaifang/store/ngx_shared.lua)
--
-- The interface; any object with these methods is a store, so a store of your own (memcached, a
-- database row, ...) plugs in the same way. Keys and values are strings; ttl is in seconds.
--
--   store:get(key)                      -> value | nil (absent or expired) | nil, err
--   store:set(key, value, ttl)          -> true | nil, err             (ttl nil: no expiry)
--   store:delete_if_equal(key, value)   -> true (deleted) | false (absent or another value) | nil, err
--   store:lock(key, owner, ttl)         -> true | false | nil, err
--        true when the lock was free, had expired, or is already held by this owner (its ttl then
--        starts again); false while another owner holds it. A lock is a key of its own.
--   store:unlock(key, owner)            -> true (released) | false (not held by owner) | nil, err
--
-- And a rate that everyone using the store shares (GCRA: a token bucket of `burst` slots, one
-- every 1/rate seconds, so calls are spaced evenly instead of bunched), which a client's `rate`
-- option uses (see kaifang.client):
--
--   store:take(key, rate [, { burst = 1, max_wait = nil }]) -> wait | nil, wait | nil, err
--        reserves the next of `rate` slots per second under key: go after `wait` seconds (0: now).
--        With max_wait, a slot further away than that is not reserved: nil, wait.
--
-- delete_if_equal, lock, unlock and take must each be atomic. err is a kaifang error with platform
-- "store" and kind "store" (err.code says more: "io", "connect", "timeout", "decode", ...).
-- Stored values are secrets: tostring(store) names the kind and the place, never a value, and no
-- error carries one.
local cjson = require "cjson.safe"
local core = require "kaifang.core"
local errors = require "kaifang.errors"

local M = {}

-- Values and locks out of the store objects, so that pairs() or an inspector never shows them.
local private = setmetatable({}, { __mode = "k" })

local function store_error(code, message)
  return errors.new{ platform = "store", kind = "store", code = code, message = message, retryable = true }
end

-- A C-level error table { kind=, message= } as a kaifang error.
local function from_core(e, where)
  return store_error(e.kind, (where and (where .. ": ") or "") .. tostring(e.message))
end

-- The stores' argument checks, raising "<prefix>: ..." at `level` as error() counts it; for this
-- module and kaifang.store.ngx_shared only. -> fail, check_key, check_value, check_ttl,
-- check_owner, check_take (rate, opts, level -> interval, burst, max_wait or nil)
function M.argument_checks(prefix)
  local function fail(msg, level) error(prefix .. ": " .. msg, level + 1) end
  return fail,
    function(key, level)
      if type(key) ~= "string" or key == "" then fail("the key must be a non-empty string, got " .. type(key), level + 1) end
    end,
    function(value, level)
      if type(value) ~= "string" then fail("the value must be a string, got " .. type(value), level + 1) end
    end,
    function(ttl, level, required)
      if ttl == nil and not required then return end
      if type(ttl) ~= "number" or not (ttl > 0 and ttl <= 1e9) then -- NaN fails
        fail("the ttl must be a positive number of seconds, at most 1e9", level + 1)
      end
    end,
    function(owner, level)
      if type(owner) ~= "string" or owner == "" then fail("the lock owner must be a non-empty string", level + 1) end
    end,
    function(rate, opts, level)
      -- NaN fails each of these tests; the upper bounds keep the times finite
      if type(rate) ~= "number" or not (rate >= 1e-6 and rate <= 1e6) then
        fail("the rate must be a number of calls per second from 1e-6 to 1e6", level + 1)
      end
      if opts ~= nil and type(opts) ~= "table" then fail("take's options must be a table", level + 1) end
      opts = opts or {}
      local burst, max_wait = opts.burst or 1, opts.max_wait
      if type(burst) ~= "number" or not (burst >= 1 and burst <= 1e9) then fail("option 'burst' must be a number from 1 to 1e9", level + 1) end
      if max_wait ~= nil and (type(max_wait) ~= "number" or not (max_wait >= 0 and max_wait <= 1e6)) then
        fail("option 'max_wait' must be a number of seconds from 0 to 1e6", level + 1)
      end
      return 1 / rate, burst, max_wait
    end
end

-- GCRA's step: tat is the theoretical arrival time of the next free slot (nil: none yet).
-- -> the new tat and the wait when a slot is reserved, else nil and the wait.
function M.gcra(tat, now, interval, burst, max_wait)
  if type(tat) ~= "number" or tat < now then tat = now end
  local wait = tat - now - (burst - 1) * interval
  if wait < 0 then wait = 0 end
  if max_wait and wait > max_wait then return nil, wait end
  return tat + interval, wait
end

local fail, check_key, check_value, check_ttl, check_owner, check_take = M.argument_checks("kaifang.store")

local METHODS = { "get", "set", "delete_if_equal", "lock", "unlock" }

-- nil when value can serve as a store (with extra, a list of further methods it needs: { "take" }
-- for a rate), else a message naming what it lacks.
function M.check(value, extra)
  if type(value) ~= "table" and type(value) ~= "userdata" then return "a store is an object, got " .. type(value) end
  local names = {}
  for _, list in ipairs({ METHODS, extra or {} }) do
    for _, name in ipairs(list) do names[#names + 1] = name end
  end
  for _, name in ipairs(names) do
    local ok, fn = pcall(function() return value[name] end)
    if not ok or type(fn) ~= "function" then return "a store needs a method '" .. name .. "'" end
  end
end

---------------------------------------------------------------------------- memory

local Memory = {}
Memory.__index = Memory
Memory.__name = "kaifang.store.memory"

-- kaifang.store.memory{ clock = fn } (clock: unix seconds; default the wall clock)
function M.memory(opts)
  opts = opts or {}
  if opts.clock ~= nil and type(opts.clock) ~= "function" then fail("option 'clock' must be a function", 2) end
  local self = setmetatable({ now = opts.clock or core.now }, Memory)
  private[self] = { values = {}, locks = {}, rates = {} }
  return self
end

local function live(entry, now)
  return entry ~= nil and (entry.expires_at == nil or now < entry.expires_at)
end

function Memory:get(key)
  check_key(key, 2)
  local values = private[self].values
  local e = values[key]
  if not live(e, self.now()) then
    values[key] = nil
    return nil
  end
  return e.value
end

function Memory:set(key, value, ttl)
  check_key(key, 2)
  check_value(value, 2)
  check_ttl(ttl, 2)
  private[self].values[key] = { value = value, expires_at = ttl and self.now() + ttl }
  return true
end

function Memory:delete_if_equal(key, value)
  check_key(key, 2)
  check_value(value, 2)
  local values = private[self].values
  local e = values[key]
  if live(e, self.now()) and e.value == value then
    values[key] = nil
    return true
  end
  return false
end

function Memory:lock(key, owner, ttl)
  check_key(key, 2)
  check_owner(owner, 2)
  check_ttl(ttl, 2, true)
  local locks, now = private[self].locks, self.now()
  local l = locks[key]
  if live(l, now) and l.owner ~= owner then return false end
  locks[key] = { owner = owner, expires_at = now + ttl }
  return true
end

function Memory:unlock(key, owner)
  check_key(key, 2)
  check_owner(owner, 2)
  local locks = private[self].locks
  local l = locks[key]
  if live(l, self.now()) and l.owner == owner then
    locks[key] = nil
    return true
  end
  return false
end

function Memory:take(key, rate, opts)
  check_key(key, 2)
  local interval, burst, max_wait = check_take(rate, opts, 2)
  local rates = private[self].rates
  local tat, wait = M.gcra(rates[key], self.now(), interval, burst, max_wait)
  if not tat then return nil, wait end
  rates[key] = tat
  return wait
end

function Memory:__tostring() return "kaifang.store.memory" end

---------------------------------------------------------------------------- file
-- One JSON document { "values": { key: { "value":, "expires_at": } }, "locks": { key: { "owner":,
-- "expires_at": } } } in a file of mode 0600. Every change takes an flock on "<path>.lock", reads,
-- changes, writes a temporary file beside it, fsyncs and renames it over the old one; reads take
-- no lock, since a rename replaces the file whole.

local File = {}
File.__index = File
File.__name = "kaifang.store.file"

-- kaifang.store.file(path, { lock_timeout = 10, clock = fn })
function M.file(path, opts)
  if type(path) ~= "string" or path == "" then fail("file expects the path of the store file", 2) end
  opts = opts or {}
  if type(opts) ~= "table" then fail("file's options must be a table", 2) end
  if opts.clock ~= nil and type(opts.clock) ~= "function" then fail("option 'clock' must be a function", 2) end
  local wait = opts.lock_timeout
  if wait ~= nil and (type(wait) ~= "number" or not (wait > 0 and wait <= 1e6)) then -- NaN fails
    fail("option 'lock_timeout' must be a positive number of seconds, at most 1e6", 2)
  end
  return setmetatable({ path = path, lock_path = path .. ".lock", lock_timeout = wait or 10, now = opts.clock or core.now }, File)
end

function File:read()
  local text, err = core.file_read(self.path)
  if text == nil and err then return nil, from_core(err) end
  if text == nil or text == "" then return { values = {}, locks = {} } end
  local doc = cjson.decode(text)
  if type(doc) ~= "table" then return nil, store_error("decode", self.path .. " is not a kaifang store file") end
  if type(doc.values) ~= "table" then doc.values = {} end
  if type(doc.locks) ~= "table" then doc.locks = {} end
  return doc
end

local function purge(t, now)
  for k, e in pairs(t) do
    if type(e) ~= "table" or (type(e.expires_at) == "number" and now >= e.expires_at) then t[k] = nil end
  end
end

-- Runs change(doc, now) -> changed, result under the flock; writes doc back when changed.
function File:update(change)
  local lock, lerr = core.file_lock(self.lock_path, self.lock_timeout)
  if not lock then return nil, from_core(lerr) end
  local doc, err = self:read()
  if not doc then
    lock:unlock()
    return nil, err
  end
  local now = self.now()
  local ok, changed, result = pcall(change, doc, now)
  if ok and changed then
    purge(doc.values, now)
    purge(doc.locks, now)
    local text = cjson.encode(doc)
    local written, werr = core.file_write(self.path, text)
    if not written then
      lock:unlock()
      return nil, from_core(werr)
    end
  end
  lock:unlock()
  if not ok then error(changed, 0) end
  return result
end

local function entry_live(e, now)
  return type(e) == "table" and (type(e.expires_at) ~= "number" or now < e.expires_at)
end

function File:get(key)
  check_key(key, 2)
  local doc, err = self:read()
  if not doc then return nil, err end
  local e = doc.values[key]
  if entry_live(e, self.now()) and type(e.value) == "string" then return e.value end
  return nil
end

function File:set(key, value, ttl)
  check_key(key, 2)
  check_value(value, 2)
  check_ttl(ttl, 2)
  return self:update(function(doc, now)
    doc.values[key] = { value = value, expires_at = ttl and now + ttl }
    return true, true
  end)
end

function File:delete_if_equal(key, value)
  check_key(key, 2)
  check_value(value, 2)
  return self:update(function(doc, now)
    local e = doc.values[key]
    if entry_live(e, now) and e.value == value then
      doc.values[key] = nil
      return true, true
    end
    return false, false
  end)
end

function File:lock(key, owner, ttl)
  check_key(key, 2)
  check_owner(owner, 2)
  check_ttl(ttl, 2, true)
  return self:update(function(doc, now)
    local l = doc.locks[key]
    if entry_live(l, now) and l.owner ~= owner then return false, false end
    doc.locks[key] = { owner = owner, expires_at = now + ttl }
    return true, true
  end)
end

function File:unlock(key, owner)
  check_key(key, 2)
  check_owner(owner, 2)
  return self:update(function(doc, now)
    local l = doc.locks[key]
    if entry_live(l, now) and l.owner == owner then
      doc.locks[key] = nil
      return true, true
    end
    return false, false
  end)
end

-- In "<path>.rate", lines of key and time under an flock, without fsync: a rate need not
-- outlive a crash (core.rate_file). The wall clock: every process of the machine reads the same.
function File:take(key, rate, opts)
  check_key(key, 2)
  local interval, burst, max_wait = check_take(rate, opts, 2)
  local wait, over = core.rate_file(self.path .. ".rate", key, interval, burst, max_wait or -1)
  if wait then return wait end
  if type(over) == "table" then return nil, from_core(over) end
  return nil, over
end

function File:__tostring() return "kaifang.store.file(" .. self.path .. ")" end

---------------------------------------------------------------------------- redis
-- hiredis in the C core; values are at prefix .. key, locks at prefix .. "lock:" .. key. Values are set with PX so Redis expires them;
-- locks are SET NX PX with an owner, and the compare-then-act steps run as Lua scripts inside
-- Redis, so each is atomic. Every command here may be repeated harmlessly, so a connection
-- that broke since the last command is made again and the command sent once more.

local DELETE_IF_EQUAL = [[
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0]]

-- SET NX PX; and a lock this owner already holds (a repeated command whose reply was lost) is its own
local LOCK = [[
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0]]

local UNLOCK = DELETE_IF_EQUAL

-- GCRA on the server's clock (TIME), so that machines with skewed clocks share one schedule; the
-- wait goes back as text, since Redis turns a Lua number into an integer.
-- ARGV: interval, burst, max_wait (< 0: none), all seconds
local TAKE = [[
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local interval, burst, max_wait = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local wait = tat - now - (burst - 1) * interval
if wait < 0 then wait = 0 end
if max_wait >= 0 and wait > max_wait then return { 0, tostring(wait) } end
local nxt = tat + interval
redis.call('SET', KEYS[1], string.format('%.6f', nxt), 'PX', math.ceil((nxt - now) * 1000) + 1000)
return { 1, tostring(wait) }]]

local Redis = {}
Redis.__index = Redis
Redis.__name = "kaifang.store.redis"

-- kaifang.store.redis{ host = "127.0.0.1", port = 6379, password = nil, db = 0, prefix = "kaifang:",
--                      connect_timeout = 2, timeout = 2 }
function M.redis(opts)
  opts = opts or {}
  if type(opts) ~= "table" then fail("redis expects a table of options", 2) end
  local prefix = opts.prefix == nil and "kaifang:" or opts.prefix
  if type(prefix) ~= "string" then fail("option 'prefix' must be a string", 2) end
  local ok, conn = pcall(core.redis, {
    host = opts.host, port = opts.port, password = opts.password, db = opts.db,
    connect_timeout = opts.connect_timeout, timeout = opts.timeout,
  })
  if not ok then fail((tostring(conn):gsub("^kaifang%.redis: ", "")), 2) end
  local self = setmetatable({ prefix = prefix, host = opts.host or "127.0.0.1", port = opts.port or 6379, db = opts.db or 0 }, Redis)
  private[self] = conn
  return self
end

local function ms(ttl)
  local n = math.floor(ttl * 1000 + 0.5)
  return n < 1 and 1 or n
end

function Redis:command(words)
  local v, err = private[self]:command(words, true)
  if err then return nil, from_core(err, "redis " .. self.host .. ":" .. tostring(self.port)) end
  return v
end

function Redis:get(key)
  check_key(key, 2)
  local v, err = self:command({ "GET", self.prefix .. key })
  if err then return nil, err end
  return v
end

function Redis:set(key, value, ttl)
  check_key(key, 2)
  check_value(value, 2)
  check_ttl(ttl, 2)
  local words = { "SET", self.prefix .. key, value }
  if ttl then
    words[4] = "PX"
    words[5] = ms(ttl)
  end
  local v, err = self:command(words)
  if err then return nil, err end
  return v == "OK"
end

local function flag(v, err)
  if err then return nil, err end
  return v == 1
end

function Redis:delete_if_equal(key, value)
  check_key(key, 2)
  check_value(value, 2)
  return flag(self:command({ "EVAL", DELETE_IF_EQUAL, 1, self.prefix .. key, value }))
end

function Redis:lock(key, owner, ttl)
  check_key(key, 2)
  check_owner(owner, 2)
  check_ttl(ttl, 2, true)
  return flag(self:command({ "EVAL", LOCK, 1, self.prefix .. "lock:" .. key, owner, ms(ttl) }))
end

function Redis:unlock(key, owner)
  check_key(key, 2)
  check_owner(owner, 2)
  return flag(self:command({ "EVAL", UNLOCK, 1, self.prefix .. "lock:" .. key, owner }))
end

-- at prefix .. "rate:" .. key
function Redis:take(key, rate, opts)
  check_key(key, 2)
  local interval, burst, max_wait = check_take(rate, opts, 2)
  -- not repeated on a broken connection: a reply lost after the slot was taken would take two
  local v, err = private[self]:command({ "EVAL", TAKE, 1, self.prefix .. "rate:" .. key, interval, burst, max_wait or -1 })
  if err then return nil, from_core(err, "redis " .. self.host .. ":" .. tostring(self.port)) end
  local wait = tonumber(v[2])
  if v[1] == 1 then return wait end
  return nil, wait
end

function Redis:close() private[self]:close() end

Redis.__close = Redis.close

function Redis:__tostring()
  return ("kaifang.store.redis(%s:%s db %s, prefix %q)"):format(self.host, tostring(self.port), tostring(self.db), self.prefix)
end

-- Loaded on first use: it runs inside nginx only.
function M.ngx_shared(name, opts) return require("kaifang.store.ngx_shared").new(name, opts) end

-- The store a client uses when given none (ZAFU's token, a shared rate): inside nginx, the
-- workers' lua_shared_dict (kaifang.ngx.config.dict, "kaifang") when nginx has it, so that every
-- worker shares one token and one rate; anywhere else one memory store per process.
-- -> store | nil, message: nginx runs several workers and has no such dict (each worker would
-- fetch its own token and knock out the others').
local defaults = {}
function M.default()
  local ngx = require("kaifang.transport").ngx()
  if ngx then
    local name = require("kaifang.ngx").config.dict
    if ngx.shared and ngx.shared[name] then
      defaults[name] = defaults[name] or M.ngx_shared(name)
      return defaults[name]
    end
    local ok, workers = pcall(function() return ngx.worker.count() end)
    if ok and type(workers) == "number" and workers > 1 then
      return nil, ("nginx runs %d workers and has no lua_shared_dict '%s' for their shared state: add "
        .. "`lua_shared_dict %s 1m;` to http {}, or give a store"):format(workers, name, name)
    end
  end
  defaults.memory = defaults.memory or M.memory()
  return defaults.memory
end

return M
