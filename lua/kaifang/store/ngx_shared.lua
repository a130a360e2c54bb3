-- kaifang.store.ngx_shared(dict_name [, opts]): a store on an nginx lua_shared_dict, shared by
-- every worker of one nginx (for several machines, use kaifang.store.redis). The same interface
-- as the other stores (see kaifang.store):
--
--   store:get(key)                      -> value | nil
--   store:set(key, value, ttl)          -> true | nil, err
--   store:delete_if_equal(key, value)   -> true | false | nil, err
--   store:lock(key, owner, ttl)         -> true | false | nil, err   (true also when owner holds it)
--   store:unlock(key, owner)            -> true | false | nil, err
--   store:sleep(seconds)                   ngx.sleep where the phase can yield
--
-- A lock is the dict's atomic add() with an expiry, so a holder that dies releases it when its ttl
-- runs out. The compare-then-act steps (delete_if_equal, unlock, a lock its owner renews, take) run
-- under a mutex (store:mutex / store:release below) whose holder never yields while it holds it.
--
-- Nothing here is lost silently. Every key has an expiry (a set without ttl lasts MAX_TTL), and
-- every write is safe_set/safe_add, which never evicts another key to make room: a full dict is
-- `nil, err` (code "no_memory") to the caller, never a token or a held lock pushed out by
-- something else. That is why callbacks' repeat marks live in a dict of their own (kaifang.ngx).
--
-- And the rate limiter every worker shares (a token bucket in GCRA form):
--
--   store:take(key, rate [, { burst = 1, max_wait = nil }]) -> wait | nil, wait
--        reserves the next slot of `rate` calls per second: go after `wait` seconds (0: now).
--        With max_wait, a slot further away than that is not reserved: nil, wait.
--   store:throttle(key, rate [, opts])  -> true | nil, wait    take, then ngx.sleep(wait)
--
-- nginx.conf:  lua_shared_dict kaifang 1m;     -- in http {}
local M = {}

local Store = {}
Store.__index = Store
Store.__name = "kaifang.store.ngx_shared"

-- The mutex's lease. Its holder runs a few dict operations without yielding (microseconds), so
-- the lease only has to outlast the OS pre-empting that worker; 5 s does, by far. A holder that
-- dies holding it (a crashed worker) holds the others up for that long at most.
M.MUTEX_TTL = 5
-- A key set without a ttl: every key expires, so none stays in the dict for good.
M.MAX_TTL = 30 * 86400
-- Where the phase cannot yield (init, init_worker, set, filters, log), how many times a waiter
-- tries the mutex before it gives up with an error: the holder is another worker, busy for
-- microseconds, and this waiter must not spin for long in a phase that blocks the worker.
M.NOWAIT_TRIES = 2000
local PREFIX_MUTEX, PREFIX_LOCK, PREFIX_RATE = "\1mu:", "\1lock:", "\1rate:"

local store = require "kaifang.store"
local fail, check_key, check_value, check_ttl, check_owner, check_take = store.argument_checks("kaifang.store.ngx_shared")

local function store_error(code, message)
  return require("kaifang.errors").new{ platform = "store", kind = "store", code = code, message = message, retryable = true }
end

local function dict_error(self, err)
  if err == "no memory" then
    return store_error("no_memory", ("lua_shared_dict %s is full (no memory): nothing was evicted to make room; "
      .. "make it larger in nginx.conf"):format(self.name))
  end
  return store_error("dict", "lua_shared_dict " .. self.name .. ": " .. tostring(err))
end

-- safe_set / safe_add: a full dict fails rather than evicting a live key (a stand-in dict for the
-- specs may have only set / add). -> true | nil, err | false, "exists" (add)
local function write(self, op, key, value, ttl)
  local d = self.dict
  local f = d["safe_" .. op] or d[op]
  local ok, err, forcible = f(d, key, value, ttl)
  if ok and forcible then -- only a dict without safe_*: it made room by evicting a live key
    return nil, store_error("evicted", ("lua_shared_dict %s is full: a live key was evicted to make room; make it larger")
      :format(self.name))
  end
  if ok then return true end
  if err == "exists" then return false, err end
  return nil, dict_error(self, err)
end
M.write = write

-- opts: dict (a shared-dict object instead of a name; tests give a fake one), clock (unix seconds),
-- sleep (seconds). Defaults: ngx.shared[name], ngx.now after ngx.update_time, ngx.sleep.
function M.new(name, opts)
  opts = opts or {}
  if type(opts) ~= "table" then fail("options must be a table", 2) end
  local ngx = rawget(_G, "ngx")
  local dict = opts.dict
  if dict == nil then
    if type(name) ~= "string" or name == "" then fail("expects the name of a lua_shared_dict", 2) end
    if type(ngx) ~= "table" or type(ngx.shared) ~= "table" then fail("runs inside nginx (lua-nginx-module) only", 2) end
    dict = ngx.shared[name]
    if not dict then
      fail(("nginx has no lua_shared_dict '%s': add `lua_shared_dict %s 1m;` to the http {} block"):format(name, name), 2)
    end
  end
  local clock = opts.clock
  if clock == nil then
    clock = function()
      ngx.update_time() -- the cached time can be a whole event-loop iteration old
      return ngx.now()
    end
  end
  return setmetatable({ name = name or "?", dict = dict, now = clock, pause = opts.sleep }, Store)
end

setmetatable(M, { __call = function(_, name, opts) return M.new(name, opts) end })

-- Whether this phase can wait with ngx.sleep (no: init, init_worker, set, filters, log, outside nginx).
local function can_yield(self)
  if self.pause then return true end
  local t = require("kaifang.transport")
  local phase = t.phase()
  return phase ~= nil and t.yielding_phases[phase] == true
end

-- The key's mutex: -> token (give it to release) | nil, err. A waiter sleeps with ngx.sleep where
-- the phase allows, up to the lease; where it cannot yield it tries NOWAIT_TRIES times and fails
-- with an error saying why, rather than spin and freeze the worker.
function Store:mutex(key)
  check_key(key, 2)
  local mk = PREFIX_MUTEX .. key
  local token = require("kaifang.core").random_hex(8) -- the holder's own: workers share math.random's seed
  local yields = can_yield(self)
  local tries, deadline, pause = 0, nil, 0.001
  while true do
    local ok, err = write(self, "add", mk, token, M.MUTEX_TTL)
    if ok then return token end
    if ok == nil then return nil, err end
    tries = tries + 1
    if not yields then
      if tries >= M.NOWAIT_TRIES then
        return nil, store_error("busy", ("lua_shared_dict %s: the mutex on %q is held by another worker, and this "
          .. "nginx phase cannot wait for it (use the store from rewrite, access, content or a timer)"):format(self.name, key))
      end
    elseif tries > 50 then -- a holder on another CPU is done in microseconds; past that, yield
      local now = self.now()
      deadline = deadline or now + M.MUTEX_TTL + 1
      if now >= deadline then
        return nil, store_error("busy", ("lua_shared_dict %s: the mutex on %q stayed held for %g s"):format(
          self.name, key, M.MUTEX_TTL + 1))
      end
      self:sleep(pause)
      pause = math.min(pause * 2, 0.02)
    end
  end
end

-- Releases the key's mutex if `token` still holds it: -> true | false (not the holder: nothing done).
-- The get and the delete run without a yield between them, and a holder's lease outlasts its work.
function Store:release(key, token)
  check_key(key, 2)
  local mk = PREFIX_MUTEX .. key
  if token == nil or self.dict:get(mk) ~= token then return false end
  self.dict:delete(mk)
  return true
end

-- Runs fn() while holding the key's mutex. fn must not yield.
function Store:locked(key, fn)
  local token, err = self:mutex(key)
  if not token then return nil, err end
  local ok, a, b = pcall(fn)
  self:release(key, token)
  if not ok then error(a, 0) end
  return a, b
end

function Store:get(key)
  check_key(key, 2)
  local v, err = self.dict:get(key)
  if v == nil and err then return nil, store_error("dict", tostring(err)) end
  if v ~= nil and type(v) ~= "string" then return nil end
  return v
end

local function put(self, key, value, ttl)
  return write(self, "set", key, value, ttl or M.MAX_TTL)
end

function Store:set(key, value, ttl)
  check_key(key, 2)
  check_value(value, 2)
  check_ttl(ttl, 2)
  return self:locked(key, function() return put(self, key, value, ttl) end)
end

function Store:delete_if_equal(key, value)
  check_key(key, 2)
  check_value(value, 2)
  return self:locked(key, function()
    if self.dict:get(key) ~= value then return false end
    self.dict:delete(key)
    return true
  end)
end

function Store:lock(key, owner, ttl)
  check_key(key, 2)
  check_owner(owner, 2)
  check_ttl(ttl, 2, true)
  local lk = PREFIX_LOCK .. key
  local ok, err = write(self, "add", lk, owner, ttl) -- the atomic step: free (or expired) means ours
  if ok then return true end
  if ok == nil then return nil, err end
  return self:locked(lk, function()
    local holder = self.dict:get(lk)
    if holder ~= nil and holder ~= owner then return false end
    return put(self, lk, owner, ttl) -- ours already (its ttl starts again), or expired just now
  end)
end

function Store:unlock(key, owner)
  check_key(key, 2)
  check_owner(owner, 2)
  local lk = PREFIX_LOCK .. key
  return self:locked(lk, function()
    if self.dict:get(lk) ~= owner then return false end
    self.dict:delete(lk)
    return true
  end)
end

-- ngx.sleep where the phase can yield; elsewhere (init, a worker thread) a real sleep.
function Store:sleep(seconds)
  if self.pause then return self.pause(seconds) end
  return require("kaifang.transport").sleep(seconds)
end

---------------------------------------------------------------------------- rate limiting

function Store:take(key, rate, opts)
  check_key(key, 2)
  local interval, burst, max_wait = check_take(rate, opts, 2)
  local rk = PREFIX_RATE .. key
  local wait, over = self:locked(rk, function()
    local now = self.now()
    local nxt, w = store.gcra(self.dict:get(rk), now, interval, burst, max_wait)
    if not nxt then return nil, w end
    local ok, err = write(self, "set", rk, nxt, nxt - now + 1) -- forgotten once idle
    if not ok then return nil, err end
    return w
  end)
  if wait == nil and type(over) == "table" then return nil, over end
  return wait, over
end

function Store:throttle(key, rate, opts)
  local wait, over = self:take(key, rate, opts)
  if not wait then return nil, over end
  if wait > 0 then self:sleep(wait) end
  return true
end

function Store:__tostring() return "kaifang.store.ngx_shared(" .. tostring(self.name) .. ")" end

return M
