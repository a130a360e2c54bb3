-- What the benchmarks share, so that their figures mean what they say:
--   pinning   servers on one core, the client (this process and the tools it runs) on another
--   cpu       the client's CPU time (user + sys), in process (os.clock) or of a command it runs
--   rounds    every case run several times, interleaved, reported as median and spread
--   nginx     a fixed-reply nginx (Debian's nginx-light): a server that costs almost nothing
-- Use: local bench = dofile("bench/common.lua")
local core = require "kaifang.core"
local httpd = require "kaifang.sandbox.httpd"

local M = {}

M.OUT = "build/bench"
os.execute("mkdir -p " .. M.OUT)

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
M.quote = q

-- Runs a shell command -> its output (stdout and stderr), success.
function M.shell(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("a")
  local ok = p:close()
  return out, ok == true
end

---------------------------------------------------------------------------- pinning

-- Servers on core 0, the client on core 1: the server then cannot take CPU from the client, nor
-- the client from the server. Children inherit their parent's affinity at fork, so a server
-- started while this process sits on the server core stays there; M.client_side() then moves
-- this process (every thread) to the client core, and what it runs afterwards goes with it.
local pinning = { ok = false }

function M.cores()
  local out = M.shell("nproc")
  return tonumber(out:match("%d+")) or 1
end

function M.server_side()
  local n = M.cores()
  if n < 2 then
    pinning.note = ("not pinned: %d core (server and client share it; figures are less steady)"):format(n)
  elseif not select(2, M.shell("command -v taskset")) then
    pinning.note = "not pinned: taskset is missing (Debian's util-linux has it)"
  else
    pinning.ok, pinning.server, pinning.client = true, 0, 1
    pinning.note = ("pinned: servers on core %d, client on core %d (of %d)"):format(pinning.server, pinning.client, n)
  end
  if pinning.ok then assert(select(2, M.shell(("taskset -a -cp %d %d"):format(pinning.server, httpd.getpid())))) end
  return pinning.note
end

function M.client_side()
  if pinning.ok then assert(select(2, M.shell(("taskset -a -cp %d %d"):format(pinning.client, httpd.getpid())))) end
  return pinning.note
end

-- "taskset -c <client core> " for a command to run on the client's core, or "".
function M.client_prefix() return pinning.ok and ("taskset -c %d "):format(pinning.client) or "" end

---------------------------------------------------------------------------- CPU time

-- This process's CPU seconds, user + sys (every thread; microsecond resolution).
M.cpu = os.clock

-- This process's minor page faults so far (/proc/self/stat's 10th field), or nil off Linux: a
-- heap that glibc hands back to the kernel and takes again shows here, and costs CPU time.
function M.minflt()
  local f = io.open("/proc/self/stat")
  if not f then return nil end
  local stat = f:read("a")
  f:close()
  local rest = stat:match("%) (.*)$") -- after the command name, which may hold spaces
  local fields = {}
  for x in (rest or ""):gmatch("%S+") do fields[#fields + 1] = x end
  return tonumber(fields[8]) -- state is field 3, minflt field 10
end

-- Runs cmd on the client's core -> output, CPU seconds (user + sys) of cmd and its children,
-- wall seconds. bash's `times` reports what its children used.
function M.run(cmd, outfile)
  local script = cmd .. (outfile and (" >" .. q(outfile)) or " >/dev/null") .. "; times"
  local t0 = core.monotonic()
  local out = M.shell(M.client_prefix() .. "bash -c " .. q(script))
  local wall = core.monotonic() - t0
  local um, us, sm, ss = out:match("\n(%d+)m([%d.]+)s (%d+)m([%d.]+)s%s*$")
  assert(um, "no CPU times from: " .. cmd .. "\n" .. out)
  return out, tonumber(um) * 60 + tonumber(us) + tonumber(sm) * 60 + tonumber(ss), wall
end

---------------------------------------------------------------------------- rounds

local function median(xs)
  local s = {}
  for i, x in ipairs(xs) do s[i] = x end
  table.sort(s)
  local n = #s
  return n % 2 == 1 and s[(n + 1) / 2] or (s[n / 2] + s[n / 2 + 1]) / 2
end
M.median = median

-- Spread as a fraction of the median: (max - min) / median.
local function spread(xs)
  local lo, hi = math.huge, -math.huge
  for _, x in ipairs(xs) do lo, hi = math.min(lo, x), math.max(hi, x) end
  local m = median(xs)
  return m ~= 0 and (hi - lo) / m or 0
end
M.spread = spread

-- cases: array of { name = , run = function() -> { rps = , cpu_us = [, faults = per call] } | nil (skipped) }.
-- Runs round 1 of every case, then round 2, ... (so a slow moment of the machine hits all cases
-- alike) -> { [name] = { rps = median, rps_spread = , cpu_us = median, cpu_spread = , runs = {...} } }
function M.rounds(cases, rounds)
  rounds = rounds or 3
  local got = {}
  for _ = 1, rounds do
    for _, c in ipairs(cases) do
      local r = c.run()
      if r then
        got[c.name] = got[c.name] or {}
        table.insert(got[c.name], r)
      end
    end
  end
  local out = {}
  for name, runs in pairs(got) do
    local rps, cpu, faults = {}, {}, {}
    for i, r in ipairs(runs) do rps[i], cpu[i], faults[#faults + 1] = r.rps, r.cpu_us, r.faults end
    out[name] = { rps = median(rps), rps_spread = spread(rps), cpu_us = median(cpu), cpu_spread = spread(cpu), runs = runs,
                  faults = #faults == #runs and median(faults) or nil }
  end
  return out
end

-- "12345 ±3%" for a median and its spread.
function M.fmt(value, sp, decimals)
  return ("%." .. (decimals or 0) .. "f ±%.0f%%"):format(value, 100 * sp)
end

---------------------------------------------------------------------------- fixed-reply nginx

-- An nginx answering every request with 200 and body, one worker, no logs: nearly free, so the
-- client's own cost shows. -> the harness's handle (url, pid, stop). Start it while on the server
-- side (M.server_side) so that it runs on the server core.
function M.nginx(body)
  local harness = dofile("spec/nginx/harness.lua")
  local nginx, why = harness.find()
  if not nginx then error(why, 2) end
  local prefix = (M.shell("mktemp -d /tmp/kaifang-nginx.XXXXXX")):gsub("%s+$", "")
  assert(select(2, M.shell("mkdir -p " .. q(prefix .. "/logs") .. " " .. q(prefix .. "/tmp") .. " && chmod 755 " .. q(prefix))))
  local port = harness.free_port()
  local conf = table.concat({
    select(2, M.shell("test \"$(id -u)\" = 0")) and "user root;" or "",
    "worker_processes 1;",
    "pid " .. prefix .. "/logs/nginx.pid;",
    "events { worker_connections 4096; }",
    "http {",
    "  access_log off;",
    "  client_body_temp_path " .. prefix .. "/tmp/body;",
    "  proxy_temp_path " .. prefix .. "/tmp/proxy;",
    "  fastcgi_temp_path " .. prefix .. "/tmp/fastcgi;",
    "  uwsgi_temp_path " .. prefix .. "/tmp/uwsgi;",
    "  scgi_temp_path " .. prefix .. "/tmp/scgi;",
    "  keepalive_requests 1000000;",
    "  server {",
    "    listen 127.0.0.1:" .. port .. " backlog=4096;",
    "    location / { default_type application/json; return 200 '" .. body .. "'; }",
    "  }",
    "}",
  }, "\n")
  local f = assert(io.open(prefix .. "/nginx.conf", "w"))
  f:write(conf, "\n")
  f:close()
  return harness.launch{ nginx = nginx, prefix = prefix, port = port, conf = prefix .. "/nginx.conf",
                         log = prefix .. "/logs/error.log", cleanup = prefix }
end

return M
