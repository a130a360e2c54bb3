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
