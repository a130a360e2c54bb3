-- kaifang.sandbox: a loopback HTTP server that behaves like the platforms as documented.
--
--   sandbox.run(opts)          serve in this process until POST /_sandbox/shutdown
--   sandbox.start(opts)        the same in a child process; returns a handle { url, pid, stop, ... }
--   sandbox.new(opts)          the request router alone (app:dispatch(req) -> response)
--
-- opts: host ("127.0.0.1"), port (0 = any free port), config ({ lingdian = { rate = 5 } }),
--       strict (false: every platform's `strict` setting off unless config says otherwise),
--       platforms (list of names; default sandbox.platforms), verbose, lua (start only),
--       tls (true: HTTPS, with a private CA made at start and a certificate for localhost,
--       127.0.0.1 and ::1; { names = { ... } }: a certificate for those names instead).
--
-- A platform is a module kaifang.sandbox.<name> exporting:
--   name, defaults (settings table, `strict` among them), check_setting(key, value) -> true | nil, err,
--   new(ctx) -> instance (ctx = { config = live settings, now = unix time fn, clock = monotonic fn,
--                                 duplicates = its kaifang.sandbox.duplicates detector }),
--   routes { path = handler(instance, req) -> response },   POST only; or { handler=, methods={...} }
--   admin { name = fn(instance, req) -> response },          served at /_sandbox/<platform>/<name>
--   demo() -> { account = client options, world = { { what=, id=, about= }, ... } }
-- Responses are { status=, headers=, body= } plus optional delay= (seconds), drop= ("close" |
-- "reset") or hold=true (never answered). Reset builds fresh instances: the seeded world again.
local core = require "kaifang.core"
local httpd = require "kaifang.sandbox.httpd"
local util = require "kaifang.sandbox.util"
local Timers = require "kaifang.sandbox.timers"
local Faults = require "kaifang.sandbox.faults"
local Duplicates = require "kaifang.sandbox.duplicates"

local M = {}

-- Adding a platform: write kaifang/sandbox/<name>.lua and add its name here.
M.platforms = { "lingdian", "zafu", "yopoint", "dakashi" }

M.BANNER = "kaifang sandbox listening on "
M.CAFILE = "kaifang sandbox CA certificate: "
M.READY = "kaifang sandbox ready, pid "

local json_value, text_response = util.json_value, util.text_response

local function err_json(status, message) return json_value({ error = message }, status) end

---------------------------------------------------------------------------- the router

local App = {}
App.__index = App

local function merge_settings(mod, into, changes)
  for k, v in pairs(changes) do
    if v == util.json_null then v = nil end
    local ok, err = mod.check_setting(k, v)
    if not ok then return nil, err end
  end
  for k, v in pairs(changes) do
    if v == util.json_null then v = nil end
    into[k] = v
  end
  return true
end

function M.new(opts)
  opts = opts or {}
  local self = setmetatable({ list = {}, by_name = {}, routes = {}, base = {}, counts = {}, stopping = false }, App)
  self.now = opts.now or core.now
  self.clock = opts.clock or core.monotonic
  for _, name in ipairs(opts.platforms or M.platforms) do
    local mod = require("kaifang.sandbox." .. name)
    local p = { name = name, mod = mod }
    self.list[#self.list + 1] = p
    self.by_name[name] = p
    local base = util.copy(mod.defaults or {})
    if opts.strict ~= nil then base.strict = opts.strict end
    local ok, err = merge_settings(mod, base, (opts.config or {})[name] or {})
    if not ok then error("kaifang.sandbox: " .. err, 2) end
    self.base[name] = base
    for path, route in pairs(mod.routes or {}) do
      -- platforms live on different hosts in reality; here the first to claim a path gets it
      -- unprefixed, and every platform's paths are also served under /<name>/...
      if not self.routes[path] then self.routes[path] = { platform = p, route = route } end
    end
  end
  if opts.config then
    for name in pairs(opts.config) do
      if not self.by_name[name] then error("kaifang.sandbox: config for unknown platform '" .. tostring(name) .. "'", 2) end
    end
  end
  self:reset()
  return self
end

-- Back to the seeded world: fresh state, zero counters, settings as at start.
function App:reset(only)
  for _, p in ipairs(self.list) do
    if only == nil or only == p.name then
      p.config = util.copy(self.base[p.name])
      p.duplicates = Duplicates.new(self.now)
      p.inst = p.mod.new({ config = p.config, now = self.now, clock = self.clock, duplicates = p.duplicates })
      self.counts[p.name] = 0
    end
  end
  if only == nil then self.faults = Faults.new() end
end

-- Each platform's demo account and seeded world (see the platform modules' demo()), in
-- platform order: { { platform = name, account = {...}, world = {...} }, ... }.
function M.demo(platforms)
  local out = {}
  for i, name in ipairs(platforms or M.platforms) do
    local d = require("kaifang.sandbox." .. name).demo()
    out[i] = { platform = name, account = d.account, world = d.world }
  end
  return out
end

-- The demo accounts alone, per platform: { lingdian = { developer_code =, ... }, ... }.
function M.credentials(platforms)
  local out = {}
  for _, d in ipairs(M.demo(platforms)) do out[d.platform] = d.account end
  return out
end

function App:config_value()
  local out = {}
  for _, p in ipairs(self.list) do out[p.name] = p.config end
  return out
end

local function query_params(req) return util.parse_form(req.query) or {} end

local admin = {}

admin.reset = function(self, req)
  if req.method ~= "POST" then return nil end
  local only = query_params(req).platform
  if only and not self.by_name[only] then return err_json(404, "unknown platform " .. only) end
  self:reset(only)
  return json_value({ ok = true })
end

admin.shutdown = function(self, req)
  if req.method ~= "POST" then return nil end
  self.stopping = true
  return json_value({ ok = true })
end

admin.config = function(self, req)
  if req.method == "GET" then return json_value(self:config_value()) end
  if req.method ~= "POST" then return nil end
  local changes, err = util.json_decode(req.body ~= "" and req.body or "{}")
  if type(changes) ~= "table" then return err_json(400, err or "expected a JSON object") end
  for name, settings in pairs(changes) do
    local p = self.by_name[name]
    if not p then return err_json(400, "unknown platform " .. tostring(name)) end
    if type(settings) ~= "table" then return err_json(400, "settings of " .. name .. " must be an object") end
  end
  for name, settings in pairs(changes) do
    local p = self.by_name[name]
    local ok, e = merge_settings(p.mod, p.config, settings)
    if not ok then return err_json(400, e) end
  end
  return json_value(self:config_value())
end

admin.faults = function(self, req)
  if req.method == "GET" then return json_value(self.faults:report()) end
  if req.method ~= "POST" then return nil end
  local changes, err = util.json_decode(req.body ~= "" and req.body or "{}")
  if type(changes) ~= "table" then return err_json(400, err or "expected a JSON object") end
  for name, settings in pairs(changes) do
    if not self.by_name[name] then return err_json(400, "unknown platform " .. tostring(name)) end
    local ok, e = self.faults:set(name, settings)
    if not ok then return err_json(400, e) end
  end
  return json_value(self.faults:report())
end

admin.requests = function(self, req)
  if req.method ~= "GET" then return nil end
  local only = query_params(req).platform
  if only then
    if not self.by_name[only] then return err_json(404, "unknown platform " .. only) end
    return json_value({ platform = only, count = self.counts[only] })
  end
  local out, total = {}, 0
  for name, n in pairs(self.counts) do
    out[name] = n
    total = total + n
  end
  out.total = total
  return json_value(out)
end

-- The HTTP server's own counters: queued, pending (with Lua), answering, total, connections,
-- accepted; over HTTPS, tls_full and tls_resumed (handshakes).
admin.server = function(self, req)
  if req.method ~= "GET" then return nil end
  if not self.server then return err_json(404, "no server") end
  return json_value(self.server:stats())
end

-- Per platform: requests routed to it, duplicates (acting requests whose content it had
-- accepted before) and refused (replays refused); and their totals.
admin.counters = function(self, req)
  if req.method ~= "GET" then return nil end
  local out, total = {}, { requests = 0, duplicates = 0, refused = 0 }
  for _, p in ipairs(self.list) do
    local c = p.duplicates:counts()
    c.requests = self.counts[p.name]
    out[p.name] = c
    for k, v in pairs(c) do total[k] = total[k] + v end
  end
  out.total = total
  return json_value(out)
end

admin.info = function(self, req)
  if req.method ~= "GET" then return nil end
  local names = util.array()
  for i, p in ipairs(self.list) do names[i] = p.name end
  return json_value({ platforms = names, credentials = M.credentials(names) })
end

function App:admin(req)
  local rest = req.path:sub(#"/_sandbox/" + 1)
  if rest == "" then rest = "info" end
  local fn = admin[rest]
  local res
  if fn then
    res = fn(self, req)
  else
    local name, what = rest:match("^([^/]+)/([^/]+)$")
    local p = name and self.by_name[name]
    if p and what == "duplicates" then
      return req.method == "GET" and json_value(p.duplicates.list) or text_response(405, "method not allowed\n")
    end
    local afn = p and p.mod.admin and p.mod.admin[what]
    if not afn then return text_response(404, "no such sandbox path\n") end
    res = afn(p.inst, req)
  end
  return res or text_response(405, "method not allowed\n")
end

-- req as kaifang.sandbox.httpd gives it -> response table.
function App:dispatch(req)
  local path = req.path
  if path:sub(1, 10) == "/_sandbox/" or path == "/_sandbox" then return self:admin(req) end
  local hit = self.routes[path]
  local p, route
  if hit then
    p, route = hit.platform, hit.route
  else
    local name, rest = path:match("^/([^/]+)(/.*)$")
    p = name and self.by_name[name]
    route = p and p.mod.routes and p.mod.routes[rest]
  end
  if not route then return text_response(404, "not found\n") end
  self.counts[p.name] = self.counts[p.name] + 1
  local handler, methods = route, nil
  if type(route) == "table" then handler, methods = route.handler, route.methods end
  local allowed = false
  for _, m in ipairs(methods or { "POST" }) do
    if m == req.method then allowed = true end
  end
  if not allowed then
    return text_response(405, "method not allowed\n", { Allow = table.concat(methods or { "POST" }, ", ") })
  end
  local mod, inst = p.mod, p.inst
  return self.faults:apply(p.name, function() return handler(inst, req) end,
    mod.too_frequent_reply and function() return mod.too_frequent_reply(inst, req) end)
end

---------------------------------------------------------------------------- the server loop

local function answer(srv, timers, clock, req, res)
  if res.hold then return end -- never answered; closed when the sandbox stops
  local function send()
    if res.drop then
      srv:drop(req.id, res.drop == "reset" and "reset" or "close")
    else
      srv:respond(req.id, res.status or 200, res.headers, res.body or "")
    end
  end
  if res.delay and res.delay > 0 then
    timers:push(clock() + res.delay, send)
  else
    send()
  end
end

-- Serves app on srv until a shutdown request (or the parent process is gone, when parent_pid
-- is given: a sandbox left behind by a crashed test run stops by itself).
function M.serve(srv, app, opts)
  opts = opts or {}
  local timers = Timers.new()
  local clock = core.monotonic
  local parent, next_check = opts.parent_pid, 0
  while not app.stopping do
    local wait = 0.5
    local due = timers:peek()
    if due then wait = math.max(0, math.min(wait, due - clock())) end
    local req = srv:next(wait)
    if req then
      local ok, res = pcall(app.dispatch, app, req)
      if not ok or type(res) ~= "table" then
        io.stderr:write("kaifang sandbox: error handling ", req.method, " ", req.path, ": ", tostring(res), "\n")
        res = text_response(500, "sandbox error: " .. tostring(res) .. "\n")
      end
      answer(srv, timers, clock, req, res)
    end
    if timers.n > 0 then timers:run_due(clock()) end
    if parent and clock() >= next_check then
      next_check = clock() + 1
      if httpd.getppid() ~= parent then app.stopping = true end
    end
  end
  srv:flush(2) -- let the shutdown reply (and any other answers) reach the wire
end

function M.run(opts)
  opts = opts or {}
  local app = M.new(opts)
  local srv, err = httpd.listen({
    host = opts.host or "127.0.0.1",
    port = opts.port or 0,
    verbose = opts.verbose,
    threads = opts.threads,
    tls = opts.tls,
  })
  if not srv then error("kaifang.sandbox: " .. err, 2) end
  local host = srv:host()
  if host:find(":", 1, true) then host = "[" .. host .. "]" end
  local url = (opts.tls and "https://" or "http://") .. host .. ":" .. srv:port()
  if opts.announce then
    opts.announce(url, app, srv:cafile()) -- the command line's own presentation
  else
    local out = io.stdout -- what start() reads
    out:write(M.BANNER, url, "\n")
    if srv:cafile() then out:write(M.CAFILE, srv:cafile(), "\n") end
    for _, d in ipairs(M.demo(opts.platforms)) do -- for a person reading it; start() takes them from demo()
      local words = {}
      for k, v in pairs(d.account) do words[#words + 1] = k .. "=" .. v end
      table.sort(words)
      out:write(d.platform, " ", table.concat(words, " "), "\n")
    end
    out:write(M.READY, httpd.getpid(), "\n")
    out:flush()
  end
  app.server = srv
  local ok, e = pcall(M.serve, srv, app, opts)
  srv:close()
  if not ok then error(e, 0) end
end

---------------------------------------------------------------------------- the child process

local function shell_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local Sandbox = {}
Sandbox.__index = Sandbox

-- A core.http session to the sandbox, created on first use.
function Sandbox:session()
  if not self._session then
    -- a certificate made for other names (tls.names) cannot match the address it is reached at:
    -- this handle, which started it, then talks to it without the checks
    self._session = core.http({ connect_timeout = 2, timeout = 10, cainfo = self.cafile,
                                ssl_verify = not self.other_names })
  end
  return self._session
end

-- Raw HTTP to the sandbox: -> status, body, headers | nil, err
function Sandbox:request(method, path, body, headers)
  local res, err = self:session():request({ method = method, url = self.url .. path, headers = headers or {}, body = body })
  if not res then return nil, err end
  return res.status, res.body, res.headers
end

-- Admin call with a JSON body (a table) -> decoded reply, status | nil, err
function Sandbox:admin(method, path, value)
  local body = value ~= nil and util.json_encode(value) or nil
  local status, text = self:request(method, path, body, body and { ["Content-Type"] = "application/json" } or nil)
  if not status then return nil, text end
  local decoded, err = util.json_decode(text)
  if decoded == nil then return nil, err end
  if status ~= 200 then return nil, (type(decoded) == "table" and decoded.error) or ("HTTP " .. status) end
  return decoded, status
end

function Sandbox:reset(platform)
  return self:admin("POST", "/_sandbox/reset" .. (platform and ("?platform=" .. platform) or ""))
end

function Sandbox:configure(settings) return self:admin("POST", "/_sandbox/config", settings) end

-- e.g. sb:records("lingdian", "messages"); sb:records("lingdian", "duplicates")
function Sandbox:records(platform, kind) return self:admin("GET", "/_sandbox/" .. platform .. "/" .. kind) end

-- sb:faults{ lingdian = { http_5xx = 0.1 } } injects faults (replacing that platform's); sb:faults()
-- shows them and how many of each were injected.
function Sandbox:faults(settings)
  if settings == nil then return self:admin("GET", "/_sandbox/faults") end
  return self:admin("POST", "/_sandbox/faults", settings)
end

-- { <platform> = { requests =, duplicates =, refused = }, total = {...} }
function Sandbox:counters() return self:admin("GET", "/_sandbox/counters") end

-- The HTTP server's counters (see admin.server): over HTTPS, the handshakes, full and resumed.
function Sandbox:server_stats() return self:admin("GET", "/_sandbox/server") end

function Sandbox:__tostring()
  return ("kaifang.sandbox{ url = %q, platforms = { %s } }"):format(self.url,
    '"' .. table.concat(self.platforms, '", "') .. '"')
end

function Sandbox:stop()
  if self.stopped then return end
  self.stopped = true
  if self._session then -- a new one: at exit, Lua may have collected (closed) this one first
    self._session:close()
    self._session = nil
  end
  local ok, status = pcall(self.request, self, "POST", "/_sandbox/shutdown", "{}", { ["Content-Type"] = "application/json" })
  if not (ok and status == 200) and self.pid then
    os.execute("kill " .. math.floor(self.pid) .. " 2>/dev/null") -- not answering: make sure it ends
  end
  if self._session then
    self._session:close()
    self._session = nil
  end
  self.fh:close() -- waits for the child to exit
end

Sandbox.__gc = Sandbox.stop
Sandbox.__close = Sandbox.stop

-- Starts the sandbox in a child process: the client's calls block, so the server must run
-- elsewhere. Returns { url=, pid=, platforms={names}, credentials={ <platform> = its demo account },
-- cafile= (with tls: the CA certificate to give clients as cainfo), stop=, reset=, configure=,
-- records=, faults=, counters=, server_stats=, admin=, request= }.
-- own_session = true runs it in a session of its own (setsid), so that the terminal's Ctrl-C
-- reaches only the caller, which stops it; the command line wants that.
function M.start(opts)
  opts = opts or {}
  local lua = opts.lua or os.getenv("KAIFANG_LUA") or "lua5.4"
  local child = {}
  for k, v in pairs(opts) do
    if k ~= "lua" and k ~= "own_session" then child[k] = v end
  end
  child.parent_pid = httpd.getpid()
  local chunk = string.format(
    "package.path=%q package.cpath=%q "
      .. "require('kaifang.sandbox').run(require('kaifang.sandbox.util').json_decode(%q))",
    package.path,
    package.cpath,
    util.json_encode(child)
  )
  -- exec: the sandbox itself is the child, so its parent pid is ours (see serve's watchdog)
  -- setsid does not fork here (popen's shell leads no process group), so the pid stays the child's
  local exec = opts.own_session and "exec setsid " or "exec "
  local fh = assert(io.popen(exec .. shell_quote(lua) .. " -e " .. shell_quote(chunk), "r"))
  local first = fh:read("*l")
  local url = first and first:sub(1, #M.BANNER) == M.BANNER and first:sub(#M.BANNER + 1)
  if not url then
    fh:close()
    error("kaifang.sandbox: the sandbox did not start (" .. tostring(first) .. "); see stderr", 2)
  end
  local platforms = opts.platforms or M.platforms
  local self = setmetatable({ url = url, fh = fh, platforms = platforms, credentials = M.credentials(platforms),
                              other_names = type(opts.tls) == "table" }, Sandbox)
  for line in fh:lines() do
    if line:sub(1, #M.CAFILE) == M.CAFILE then self.cafile = line:sub(#M.CAFILE + 1) end
    local pid = line:sub(1, #M.READY) == M.READY and tonumber(line:sub(#M.READY + 1))
    if pid then
      self.pid = pid
      break
    end
  end
  return self
end

return M
