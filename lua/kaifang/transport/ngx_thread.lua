-- kaifang.transport.ngx_thread: the libcurl transport run in an nginx thread pool, through
-- ngx.run_worker_thread, so the request handler yields while a call is in flight and the
-- worker's event loop keeps serving. The default inside nginx (see kaifang.transport.select).
--
--   thread_pool kaifang threads=32;          # nginx.conf, main context (outside http {})
--   kaifang.lingdian.new{ ..., thread_pool = "kaifang" }   -- the default pool name
--
-- Phases: rewrite, access, content and timers yield. While the configuration loads (init) the
-- call blocks, which is harmless then, on a connection that is closed right after (it must not
-- be inherited by the workers). Any other phase (set, header/body filters, log, init_worker,
-- balancer, ssl) raises a clear error: there is no way to wait there without freezing the worker.
--
-- A worker thread runs the call in one of lua-nginx-module's pooled thread VMs; the VM persists
-- between tasks, so each keeps its core.http sessions (one per set of session options) and its
-- connections stay alive. Same contract as every transport:
--   request{ method, url, headers, body, timeout[, deadline] } -> { status, headers, body } | nil, err
-- deadline (core.monotonic's clock, one across the process's threads) is checked again when a
-- thread takes the call off the pool's queue: a call whose deadline has passed is not sent
-- (kind "timeout", maybe_sent = false), and libcurl gets only the time left.
local core = require "kaifang.core"
local errors = require "kaifang.errors"
local transport = require "kaifang.transport"

local M = {}

M.default_pool = "kaifang"
M.module_name = "kaifang.transport.ngx_thread"

-- The core.http options a session is made with; a client's other options stay here.
local SESSION_OPTS = { "connect_timeout", "timeout", "ssl_verify", "cainfo", "capath", "proxy", "user_agent", "max_body" }

---------------------------------------------------------------------------- the thread side
-- Runs in a worker thread's Lua VM (or in this VM outside nginx). Never raises: a raise inside
-- the thread comes back as ("raise", message) and is raised again in the caller's coroutine.

local sessions = {}            -- options key -> core.http session, for the life of this VM
local stats = { requests = 0, sessions = 0, vm = tostring(sessions):match("0x%x+") or tostring(sessions) }

-- The request comes as flat values and the response goes back as flat values: every table that
-- crosses between the worker's VM and a thread VM is copied field by field, each way (measured
-- with wrk against one worker: as tables they cost its event loop about 1.4 us more a call).
-- A call taken off the pool's queue past its deadline is not sent; libcurl gets the time left.
-- -> "ok", status, body, headers | "err", err | "late" | "raise", message
function M.perform(key, opts, method, url, body, timeout, headers, deadline)
  stats.requests = stats.requests + 1
  local s = sessions[key]
  if not s then
    local ok, made = pcall(core.http, opts)
    if not ok then return "raise", tostring(made) end
    s = made
    sessions[key] = s
    stats.sessions = stats.sessions + 1
  end
  if deadline then
    local left = deadline - core.monotonic()
    if left < 0.001 then return "late" end -- libcurl takes whole milliseconds, and 0 means no limit
    timeout = left
  end
  local ok, res, err = pcall(s.request, s, { method = method, url = url, body = body, timeout = timeout, headers = headers })
  if not ok then return "raise", tostring(res) end
  -- res.headers, read here, is a plain table (the response's lazy metatable stays in this VM)
  if res then return "ok", res.status, res.body, res.headers end
  return "err", err
end

-- For tests and diagnostics: what this VM has done. { vm = id, requests = n, sessions = n }
function M.stats()
  return { vm = stats.vm, requests = stats.requests, sessions = stats.sessions }
end

---------------------------------------------------------------------------- the caller's side

local Transport = {}
Transport.__index = Transport

function M.new(opts)
  opts = opts or {}
  local pool = opts.thread_pool or M.default_pool
  if type(pool) ~= "string" or pool == "" then error("kaifang.transport.ngx_thread: option 'thread_pool' must be a pool name", 2) end
  local so, parts = {}, {}
  for _, k in ipairs(SESSION_OPTS) do
    so[k] = opts[k]
    parts[#parts + 1] = k .. "=" .. tostring(opts[k])
  end
  return setmetatable({ pool = pool, session_opts = so, key = table.concat(parts, "\n") }, Transport)
end

-- Failures of ngx.run_worker_thread that mean "busy", not "misconfigured": nothing was sent.
local BUSY = { ["no available Lua vm"] = true, ["no memory"] = true, ["ngx_thread_task_post failed"] = true }

-- waited: what a call that came back "late" spent before a thread took it, and where.
local function outcome(level, waited, tag, a, b, c)
  if tag == "ok" then return { status = a, body = b, headers = c } end
  if tag == "err" then return nil, errors.new(a) end
  if tag == "late" then
    return nil, errors.new{ kind = "timeout", code = "deadline", retryable = true, maybe_sent = false,
                            message = "its timeout ran out before it was sent" .. (waited or "") }
  end
  error(a, level + 1)
end

function Transport:request(req)
  local ngx = transport.ngx()
  local phase = transport.phase()
  if phase == nil then -- outside nginx: an ordinary blocking transport, kept alive
    return outcome(2, nil, M.perform(self.key, self.session_opts, req.method, req.url, req.body, req.timeout, req.headers,
                                     req.deadline))
  end
  if phase == "init" then -- blocking is harmless here, but the workers must not inherit the connection
    local s = core.http(self.session_opts)
    local res, err = s:request(req)
    s:close()
    if res then return res end
    return nil, errors.new(err)
  end
  if not transport.yielding_phases[phase] then
    error(("kaifang.transport.ngx_thread: an HTTP call cannot wait in nginx's '%s' phase without freezing the "
      .. "worker; make the call from rewrite_by_lua*, access_by_lua*, content_by_lua* or an ngx.timer"):format(phase), 2)
  end
  local run = ngx.run_worker_thread
  if type(run) ~= "function" then
    error("kaifang.transport.ngx_thread: this nginx has no ngx.run_worker_thread (it needs a lua-nginx-module "
      .. "that has it, such as Debian bookworm's 0.10.23, and nginx built with threads); use transport = \"resty_http\" instead", 2)
  end
  local queued = core.monotonic()
  local ok, tag, a, b, c = run(self.pool, M.module_name, "perform", self.key, self.session_opts, req.method, req.url,
                               req.body, req.timeout, req.headers, req.deadline)
  if ok then
    local waited = tag == "late" and (": waited %.1f s for a thread of pool '%s' (more calls than its threads; see "
      .. "the clients' 'concurrency')"):format(core.monotonic() - queued, self.pool)
    return outcome(2, waited, tag, a, b, c)
  end
  local msg = tostring(tag)
  if BUSY[msg] then
    return nil, errors.new{ kind = "transport", message = "nginx thread pool '" .. self.pool .. "': " .. msg,
                            retryable = true, maybe_sent = false }
  end
  if msg:find("thread[ _]pool.* not found") then
    error(("kaifang.transport.ngx_thread: nginx has no thread pool '%s'; add `thread_pool %s threads=32;` to the "
      .. "main context of nginx.conf (outside http {}), or name another pool with the 'thread_pool' option")
      :format(self.pool, self.pool), 2)
  end
  if msg:find("module '[^']+' not found") or msg:find("error loading module", 1, true) then
    -- the thread VM loads this module from disk, in the worker, as nginx's worker user
    error("kaifang.transport.ngx_thread: nginx's thread VM cannot load kaifang: " .. msg:match("^[^\n]*"):gsub(":$", "")
      .. " (it loads it with the worker's package.path and package.cpath, as nginx's worker user; call "
      .. "require(\"kaifang.ngx\").init() in init_by_lua*, or make the code readable by that user)", 2)
  end
  error("kaifang.transport.ngx_thread: ngx.run_worker_thread failed: " .. msg
    .. " (the thread VM loads kaifang with lua_package_path and lua_package_cpath)", 2)
end

function Transport:close() end

Transport.__tostring = function(self) return "kaifang.transport.ngx_thread{ thread_pool = " .. self.pool .. " }" end

return M
