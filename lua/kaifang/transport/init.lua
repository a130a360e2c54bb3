-- kaifang.transport: which transport a client uses, decided in one place.
--
--   transport.select(opts) -> transport | nil, message
--
-- opts.transport, when given, wins: an object with a request method, or the name of a transport
-- module ("curl", "ngx_thread", "resty_http"), made with the client's options. Otherwise: inside
-- nginx (lua-nginx-module), kaifang.transport.ngx_thread, which runs libcurl in an nginx thread
-- pool so the request handler yields while the call is in flight; anywhere else,
-- kaifang.transport.curl, which blocks the calling thread.
--
-- Every transport keeps the one contract:
--   request{ method, url, headers, body, timeout } -> { status, headers, body } | nil, err
local M = {}

M.names = { curl = true, ngx_thread = true, resty_http = true }

-- The ngx API table when running inside nginx's own Lua VM (not a worker thread's), else nil.
function M.ngx()
  local ngx = rawget(_G, "ngx")
  if type(ngx) == "table" and type(ngx.get_phase) == "function" and type(ngx.config) == "table"
      and ngx.config.ngx_lua_version then
    return ngx
  end
  return nil
end

-- The nginx phase we are running in, or nil outside nginx. A worker thread's VM reports "init".
function M.phase()
  local ngx = M.ngx()
  if not ngx then return nil end
  local ok, phase = pcall(ngx.get_phase)
  return ok and phase or nil
end

-- Phases where ngx.run_worker_thread is allowed, so the caller yields instead of blocking.
M.yielding_phases = { rewrite = true, server_rewrite = true, access = true, content = true, timer = true }

-- Raises a clear error when a blocking call would freeze an nginx worker's event loop: inside
-- nginx, blocking is fine only while the configuration loads ("init", before any request) and
-- in a worker thread's own VM (which reports "init" too). advice: what to do instead (default:
-- what a client's transport option should be).
function M.assert_may_block(what, level, advice)
  local phase = M.phase()
  if phase ~= nil and phase ~= "init" then
    error(("kaifang: %s would block this nginx worker (phase '%s'); %s"):format(what or "a blocking HTTP call", phase,
      advice or ("leave the client's 'transport' option unset inside nginx (it then runs in the nginx thread pool), "
        .. "or choose transport = \"ngx_thread\" or \"resty_http\"")), (level or 1) + 1)
  end
end

-- Waits without freezing nginx: ngx.sleep where the phase can yield, else a plain sleep (outside
-- nginx, in init, in a worker thread). What a client that waits (ZAFU's token waiters) should use.
function M.sleep(seconds)
  local phase = M.phase()
  if phase and M.yielding_phases[phase] then return M.ngx().sleep(seconds) end
  return require("kaifang.core").sleep(seconds)
end

-- One of the slots of key (a platform account) in this nginx worker, limit of them, waiting at most
-- until deadline (core.monotonic's clock): -> a slot to give back with slot:release(), false when
-- none came free in time, or nil where no limit applies (outside nginx, or a phase that cannot
-- wait: the call blocks or raises anyway). Slots are per worker because the thread pool and its
-- 100 thread VMs are. A holder whose request ended while its call was in flight (ngx.exit with
-- light threads running, a client abort) never gives its slot back: it is taken back RECLAIM
-- seconds after the holder's deadline, when its transfer has ended (libcurl's timeout) or, still
-- queued in the pool, will not be sent.
local slots = {}
local RECLAIM = 2

local Slot = {}
Slot.__index = Slot

function Slot:release()
  local held = self.pool.held
  if held[self] then
    held[self] = nil
    self.pool.sem:post(1)
  end
end

function M.slot(key, limit, deadline)
  local phase = M.phase()
  if not (phase and M.yielding_phases[phase]) then return nil end
  local id = key .. "#" .. limit
  local pool = slots[id]
  if not pool then
    -- lua-resty-core's, which lua-nginx-module requires
    pool = { sem = assert(require("ngx.semaphore").new(limit)), held = {} }
    slots[id] = pool
  end
  local now = require("kaifang.core").monotonic()
  if pool.sem:count() <= 0 then
    for slot, expiry in pairs(pool.held) do
      if expiry < now then slot:release() end
    end
  end
  if not pool.sem:wait(math.max(0, deadline - now)) then return false end
  local slot = setmetatable({ pool = pool }, Slot)
  pool.held[slot] = deadline + RECLAIM
  return slot
end

function M.new(name, opts)
  if not M.names[name] then return nil, "unknown transport '" .. tostring(name) .. "' (expected curl, ngx_thread or resty_http)" end
  return require("kaifang.transport." .. name).new(opts or {})
end

function M.select(opts)
  opts = opts or {}
  local t = opts.transport
  if t ~= nil then
    if type(t) == "string" then
      if not M.names[t] then
        return nil, "option 'transport' must be an object with a request method, or one of \"curl\", \"ngx_thread\", \"resty_http\""
      end
      return M.new(t, opts)
    end
    if type(t) ~= "table" or type(t.request) ~= "function" then
      return nil, "option 'transport' must be an object with a request method"
    end
    return t
  end
  if M.ngx() then return M.new("ngx_thread", opts) end
  return M.new("curl", opts)
end

return M
