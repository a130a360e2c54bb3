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
-- runs out. The compare-then-act steps (delete_if_equal, unlock, a lock its owner renews) run under
-- a short mutex that is itself an add() with a 50 ms expiry; nothing yields while holding it.
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

local MUTEX_TTL = 0.05
local PREFIX_MUTEX, PREFIX_LOCK, PREFIX_RATE = "\1mu:", "\1lock:", "\1rate:"

local store = require "kaifang.store"
local fail, check_key, check_value, check_ttl, check_owner, check_take = store.argument_checks("kaifang.store.ngx_shared")

local function store_error(code, message)
  return require("kaifang.errors").new{ platform = "store", kind = "store", code = code, message = message, retryable = true }
end

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

-- Runs fn() while holding the key's mutex. fn must not yield.
function Store:locked(key, fn)
  local dict, mk = self.dict, PREFIX_MUTEX .. key
  local spins = 0
  while true do
    local ok, err = dict:add(mk, true, MUTEX_TTL)
    if ok then break end
    if err ~= "exists" then return nil, store_error("dict", "lua_shared_dict " .. self.name .. ": " .. tostring(err)) end
    spins = spins + 1
    -- the holder never yields, so this is microseconds; a holder that died frees it in 50 ms
    if spins % 1000 == 0 then self:sleep(0.001) end
  end
  local ok, a, b = pcall(fn)
  dict:delete(mk)
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
  local ok, err = self.dict:set(key, value, ttl or 0)
  if not ok then return nil, store_error("dict", "lua_shared_dict " .. self.name .. ": " .. tostring(err)) end
  return true
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
  local ok, err = self.dict:add(lk, owner, ttl) -- the atomic step: free (or expired) means ours
  if ok then return true end
  if err ~= "exists" then return nil, store_error("dict", "lua_shared_dict " .. self.name .. ": " .. tostring(err)) end
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
    local ok, err = self.dict:set(rk, nxt, nxt - now + 1) -- forgotten once idle
    if not ok then return nil, store_error("dict", tostring(err)) end
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
