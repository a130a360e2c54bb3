-- Starts and stops a real nginx (Debian's nginx with libnginx-mod-http-lua) for the specs, from a
-- config template with @NAMES@ filled in. Runs under the specs' Lua (5.4), not inside nginx.
--
--   local harness = dofile("spec/nginx/harness.lua")
--   local ngx = harness.start{ conf = "spec/nginx/nginx.conf", workers = 1, env = { ... } }
--   ngx.url, ngx.prefix, ngx:get(path), ngx:stop()
local core = require "kaifang.core"
local httpd = require "kaifang.sandbox.httpd"

local M = {}

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("*a")
  local ok, _, code = p:close()
  return ok == true, out, code
end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

M.ROOT = (function()
  local p = io.popen("pwd")
  local d = p:read("*l")
  p:close()
  return d
end)()

-- The C modules built against LuaJIT's headers: build/luajit, or the ones `make asan` builds with
-- the sanitizers (it sets KAIFANG_LUAJIT_BUILD), which nginx then loads in their place.
M.LUAJIT = M.ROOT .. "/" .. (os.getenv("KAIFANG_LUAJIT_BUILD") or "build/luajit")

-- The nginx binary and the load_module lines its lua module needs, or nil and why not.
function M.find()
  local nginx
  for _, c in ipairs({ os.getenv("KAIFANG_NGINX") or "", "/usr/sbin/nginx", "/usr/local/openresty/nginx/sbin/nginx" }) do
    if c ~= "" and sh("test -x " .. q(c)) then
      nginx = c
      break
    end
  end
  if not nginx then
    return nil, "nginx not found: install Debian's nginx-light and libnginx-mod-http-lua (make deps does)"
  end
  local _, version = sh(q(nginx) .. " -V")
  local dir = version:match("%-%-modules%-path=(%S+)") or "/usr/lib/nginx/modules"
  local lines = {}
  if version:find("lua-nginx-module", 1, true) or version:find("openresty", 1, true) then
    return nginx, "" -- built in (OpenResty)
  end
  for _, m in ipairs({ "ndk_http_module.so", "ngx_http_lua_module.so" }) do
    local path = dir .. "/" .. m
    if not sh("test -r " .. q(path)) then
      return nil, "nginx has no lua module (" .. path .. " is missing): install Debian's libnginx-mod-http-lua (make deps does)"
    end
    lines[#lines + 1] = "load_module " .. path .. ";"
  end
  return nginx, table.concat(lines, "\n")
end

-- A port nothing listens on right now (bound by the OS, then released).
function M.free_port()
  local srv = assert(httpd.listen{ host = "127.0.0.1", port = 0 })
  local port = srv:port()
  srv:close()
  return port
end

-- Lua source for a value (tables, strings, numbers, booleans).
local function lua_literal(v)
  local t = type(v)
  if t == "string" then return string.format("%q", v) end
  if t == "number" or t == "boolean" or t == "nil" then return tostring(v) end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  local parts = {}
  for _, k in ipairs(keys) do parts[#parts + 1] = "[" .. lua_literal(k) .. "] = " .. lua_literal(v[k]) end
  return "{ " .. table.concat(parts, ", ") .. " }"
end

-- fn() until it returns a true value (returned), for at most timeout seconds; then raises "timed out waiting for <what>".
function M.wait_for(what, timeout, fn)
  local deadline = core.monotonic() + timeout
  while true do
    local v = fn()
    if v then return v end
    if core.monotonic() > deadline then error("timed out waiting for " .. what, 2) end
    core.sleep(0.02)
  end
end

local Nginx = {}
Nginx.__index = Nginx

-- Running, and not a zombie waiting to be reaped.
local function alive(pid)
  local stat = pid and read("/proc/" .. math.floor(pid) .. "/stat")
  return stat ~= nil and stat:match("^%d+ %b() (%a)") ~= "Z"
end
M.alive = alive

-- opts: conf (template path), workers (1), env (table written to <prefix>/spec_env.lua), extra
-- substitutions { NAME = text } (over the defaults below: THREAD_POOL, STATE_DICT), shell_env
-- (variables for nginx's process: { NAME = value }).
function M.start(opts)
  local nginx, modules = M.find()
  if not nginx then error(modules, 2) end
  if not sh("test -r " .. q(M.LUAJIT .. "/kaifang/core.so")) then
    error(M.LUAJIT .. "/kaifang/core.so is missing: run `make luajit`", 2)
  end
  local _, prefix = sh("mktemp -d /tmp/kaifang-nginx.XXXXXX")
  prefix = prefix:gsub("%s+$", "")
  for _, d in ipairs({ "conf", "logs", "tmp" }) do assert(sh("mkdir -p " .. q(prefix .. "/" .. d))) end
  assert(sh("chmod 755 " .. q(prefix)))
  local port = M.free_port()
  local is_root = sh("test \"$(id -u)\" = 0")
  local subst = {
    MODULES = modules, PREFIX = prefix, ROOT = M.ROOT, LUAJIT = M.LUAJIT, PORT = tostring(port),
    WORKERS = tostring(opts.workers or 1), USER = is_root and "user root;" or "",
    THREAD_POOL = "thread_pool kaifang threads=32;\nthread_pool kaifang_small threads=2;", STATE_DICT = "lua_shared_dict kaifang 1m;",
  }
  for k, v in pairs(opts.extra or {}) do subst[k] = v end
  local template = read(opts.conf)
  local missing
  local conf = (template or ""):gsub("@([%u_]+)@", function(name)
    if not subst[name] then missing = missing or name end
    return subst[name]
  end)
  if not template or missing then
    sh("rm -rf " .. q(prefix))
    error(template and ("the nginx template names @" .. missing .. "@, which nothing fills in")
      or ("no template " .. tostring(opts.conf)), 2)
  end
  write(prefix .. "/conf/nginx.conf", conf)
  local env = {}
  for k, v in pairs(opts.env or {}) do env[k] = v end
  write(prefix .. "/spec_env.lua", "return " .. lua_literal(env) .. "\n")
  local words = {}
  for k, v in pairs(opts.shell_env or {}) do words[#words + 1] = k .. "=" .. q(v) end
  return M.launch{ nginx = nginx, prefix = prefix, port = port, conf = prefix .. "/conf/nginx.conf",
                   log = prefix .. "/logs/error.log", cleanup = prefix, shell_env = table.concat(words, " ") }
end

-- examples/openresty as written, in a copy beside links to lua/ and build/ (so that its
-- $prefix/../../lua still finds them) whose only change is the port it listens on.
-- env: { NAME = value } for the process (the example reads KAIFANG_* through `env` directives).
-- opts.private: a private clone instead, as `git clone` into a `mktemp -d` folder (mode 0700)
-- gives: lua/ and build/luajit copied into a folder that only its owner may enter.
function M.start_example(env, opts)
  local nginx, why = M.find()
  if not nginx then error(why, 2) end
  local private = opts and opts.private
  local _, root = sh("mktemp -d /tmp/kaifang-nginx.XXXXXX")
  root = root:gsub("%s+$", "")
  local code
  if private then
    code = "chmod 700 " .. q(root) .. " && mkdir -p " .. q(root .. "/build") .. " && cp -r " .. q(M.ROOT .. "/lua") .. " "
      .. q(root .. "/lua") .. " && cp -r " .. q(M.LUAJIT) .. " " .. q(root .. "/build/luajit")
  else
    code = "chmod 755 " .. q(root) .. " && ln -s " .. q(M.ROOT .. "/lua") .. " " .. q(root .. "/lua") .. " && mkdir "
      .. q(root .. "/build") .. " && ln -s " .. q(M.LUAJIT) .. " " .. q(root .. "/build/luajit")
  end
  assert(sh(code .. " && mkdir -p " .. q(root .. "/examples") .. " && cp -r " .. q(M.ROOT .. "/examples/openresty")
    .. " " .. q(root .. "/examples/") .. " && rm -rf " .. q(root .. "/examples/openresty/logs") .. " "
    .. q(root .. "/examples/openresty/tmp") .. " && mkdir -p " .. q(root .. "/examples/openresty/logs") .. " "
    .. q(root .. "/examples/openresty/tmp")))
  local prefix = root .. "/examples/openresty"
  local port = M.free_port()
  local conf, n = read(prefix .. "/nginx.conf"):gsub("listen 127%.0%.0%.1:8080;", "listen 127.0.0.1:" .. port .. ";")
  assert(n == 1, "examples/openresty/nginx.conf no longer listens on 127.0.0.1:8080")
  write(prefix .. "/nginx.conf", conf)
  local words = {}
  for k, v in pairs(env or {}) do words[#words + 1] = k .. "=" .. q(v) end
  return M.launch{ nginx = nginx, prefix = prefix, port = port, conf = "nginx.conf", log = prefix .. "/logs/error.log",
                   cleanup = root, shell_env = table.concat(words, " ") }
end

-- Runs nginx in the foreground, as our child: we reap it (a daemon would be left to a PID 1 that
-- may never reap it) and nothing of it outlives stop(). o: nginx, prefix, port, conf, log,
-- cleanup (a /tmp directory to remove at stop), shell_env (text put before the command).
function M.launch(o)
  local self = setmetatable({ nginx = o.nginx, prefix = o.prefix, port = o.port, url = "http://127.0.0.1:" .. o.port,
                              conf = o.conf, logfile = o.log, remove = o.cleanup }, Nginx)
  local args = " -p " .. q(o.prefix) .. " -c " .. q(o.conf) .. " -e " .. q(o.log) .. " -g 'daemon off;'"
  local ok, out = sh((o.shell_env or "") .. " " .. q(o.nginx) .. " -t -q" .. args)
  if not ok then
    self:cleanup()
    error("nginx refuses the config: " .. out, 2)
  end
  -- a watchdog: should this process die without stopping nginx, nginx is stopped within a second
  local watchdog = ("( while kill -0 %d && kill -0 $$; do sleep 1; done; kill -0 $$ && kill -TERM $$ ) >/dev/null 2>&1 &")
    :format(httpd.getpid())
  self.fh = assert(io.popen("echo $$; " .. watchdog .. " " .. (o.shell_env or "") .. " exec " .. q(o.nginx) .. args .. " 2>&1", "r"))
  self.pid = tonumber(self.fh:read("*l"))
  -- ready when it answers anything
  local s = core.http{ timeout = 1, connect_timeout = 1 }
  local deadline = core.monotonic() + 10
  while true do
    local res = s:request{ method = "GET", url = self.url .. "/" }
    if res then break end
    if core.monotonic() > deadline or not alive(self.pid) then
      s:close()
      local log = self:log()
      self:stop()
      error("nginx started but does not answer on " .. self.url .. "\n" .. log, 2)
    end
    core.sleep(0.05)
  end
  s:close()
  return self
end

function Nginx:log() return read(self.logfile) or "" end

-- Waits (up to timeout seconds) until the error log holds `text` (plain) -> the log | nil
function Nginx:wait_log(text, timeout)
  local deadline = core.monotonic() + (timeout or 5)
  while true do
    local log = self:log()
    if log:find(text, 1, true) then return log end
    if core.monotonic() > deadline then return nil end
    core.sleep(0.05)
  end
end

-- One request on a connection of its own (sessions share kept-alive connections; Connection:
-- close ends this one, so that calls spread over the workers) -> status, body, headers (a
-- decoded JSON body as a 4th value).
function Nginx:request(method, path, body, headers)
  local s = core.http{ timeout = 15, connect_timeout = 2 }
  local h = { Connection = "close" }
  for k, v in pairs(headers or {}) do h[k] = v end
  local res, err = s:request{ method = method, url = self.url .. path, body = body, headers = h }
  s:close()
  if not res then return nil, tostring(err.message) end
  local ok, doc = pcall(require("cjson").decode, res.body)
  return res.status, res.body, res.headers, ok and doc or nil
end

function Nginx:get(path) return self:request("GET", path) end


-- The master's nginx children (its workers), from /proc: a minimal Debian has no pgrep.
function Nginx:workers()
  local out = {}
  local p = io.popen("cat /proc/[0-9]*/stat 2>/dev/null")
  for line in p:lines() do
    local pid, comm, ppid = line:match("^(%d+) %((.*)%) %a (%d+)")
    if comm == "nginx" and tonumber(ppid) == self.pid then out[#out + 1] = tonumber(pid) end
  end
  p:close()
  table.sort(out)
  return out
end

-- Stops nginx (TERM to the master: the workers end with it), reaps it, removes the prefix.
function Nginx:stop()
  if self.stopped then return end
  self.stopped = true
  local pid = self.pid
  if pid then
    local workers = self:workers()
    sh("kill -TERM " .. math.floor(pid))
    local deadline = core.monotonic() + 5
    while alive(pid) and core.monotonic() < deadline do core.sleep(0.05) end
    if alive(pid) then sh("kill -KILL " .. math.floor(pid)) end
    for _, w in ipairs(workers) do
      if alive(w) then sh("kill -KILL " .. math.floor(w)) end
    end
  end
  if self.fh then self.fh:close() end -- reaps the master
  self:cleanup()
end

function Nginx:cleanup()
  if self.remove and self.remove:match("^/tmp/kaifang%-nginx%.") and not os.getenv("KAIFANG_KEEP_NGINX") then
    sh("rm -rf " .. q(self.remove))
  end
end

Nginx.__gc = Nginx.stop

return M
