-- kaifang inside nginx: requests per second and the worker's CPU time per request, for one
-- Lingdian call per request to a fixed-reply upstream (a second nginx), through
--   thread      kaifang.transport.ngx_thread (the default inside nginx: libcurl in the thread pool),
--               with the client's default concurrency (calls in flight per account), and with 32
--   resty_http  kaifang.transport.resty_http (lua-resty-http over cosockets), when installed
--   cosocket    for scale: one signed request made at start, sent by hand over ngx.socket.tcp
--               (no kaifang per call): what an event-loop transport such as resty_http cannot beat
--   proxy_pass  nginx's own proxy to the same upstream: the baseline, no Lua at all
-- wrk drives each location; its script counts replies that are not 200 with the phone number.
-- Rounds are interleaved (every case once per round) and each figure is the median of the
-- rounds, with the lowest and highest beside it; "in pool" is the part of the worker's CPU
-- time spent in its thread pool's threads. The nginx worker (all its threads, the pool's
-- too) is pinned to the last CPU, the upstream and wrk share the others.
-- Run: make bench (or lua5.4 bench/nginx.lua [seconds per run] [rounds] [connections])
-- PERF=1 (or PERF='<perf record options>') also records a profile of the worker during one more thread-pool run (build/bench/perf.data).
local harness = dofile("spec/nginx/harness.lua")

local SECONDS = tonumber(arg and arg[1]) or 5
local ROUNDS = tonumber(arg and arg[2]) or 3
local CONNS = tonumber(arg and arg[3]) or 32
local OUT = "build/bench"
local PHONE = "13311112222"

local function sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("a")
  local ok = p:close()
  return out, ok
end

local function need(cmd, why)
  if not select(2, sh("command -v " .. cmd)) then
    print(("nginx bench skipped: %s not found (%s)"):format(cmd, why))
    os.exit(0)
  end
end
need("wrk", "make bench installs it")
need("taskset", "util-linux")
if not harness.find() then
  print("nginx bench skipped: " .. select(2, harness.find()))
  os.exit(0)
end
os.execute("mkdir -p " .. OUT)

-- CPUs: the worker gets the last one to itself, wrk and the upstream the rest (on one CPU, all share it).
local ncpu = tonumber((sh("nproc"))) or 1
local WORKER_CPU = tostring(ncpu - 1)
local OTHER_CPUS = ncpu > 2 and ("0-" .. (ncpu - 2)) or "0"

local upstream = harness.start{ conf = "bench/nginx/upstream.conf" }
local ok, nginx = pcall(harness.start, { conf = "bench/nginx/kaifang.conf", env = { upstream = upstream.url },
                                         extra = { UPSTREAM_PORT = tostring(upstream.port) } })
if not ok then
  upstream:stop()
  error(nginx, 0)
end
local function stop()
  nginx:stop()
  upstream:stop()
end

local worker = assert(nginx:workers()[1], "nginx has no worker")
sh(("taskset -a -p -c %s %d"):format(WORKER_CPU, worker))
for _, pid in ipairs(upstream:workers()) do sh(("taskset -a -p -c %s %d"):format(OTHER_CPUS, pid)) end

-- utime + stime in seconds: of every thread of the worker, and of its main thread (the event loop)
local TICK = tonumber((sh("getconf CLK_TCK"))) or 100
local function cpu_seconds(path)
  local f = assert(io.open(path))
  local stat = f:read("a")
  f:close()
  local fields = {}
  for x in stat:match("^%d+ %b() (.*)"):gmatch("%S+") do fields[#fields + 1] = x end
  -- after "pid (comm)": state is field 3, utime 14, stime 15 (proc(5))
  return (tonumber(fields[12]) + tonumber(fields[13])) / TICK
end
local function worker_cpu()
  return cpu_seconds("/proc/" .. worker .. "/stat"), cpu_seconds(("/proc/%d/task/%d/stat"):format(worker, worker))
end

local script = OUT .. "/nginx_check.lua"
local f = assert(io.open(script, "w"))
f:write(([[
-- counts the replies that are not 200 with the phone number in the body
local threads = {}
function setup(thread) threads[#threads + 1] = thread end
function init() bad = 0 end
function response(status, headers, body)
  if status ~= 200 or not body:find(%q, 1, true) then bad = bad + 1 end
end
function done()
  local n = 0
  for _, t in ipairs(threads) do n = n + t:get("bad") end
  io.write("bad replies: ", n, "\n")
end
]]):format(PHONE))
f:close()

local function wrk(path, seconds)
  local all0, main0 = worker_cpu()
  local out = sh(("taskset -c %s wrk -t 1 -c %d -d %ds -s %s %s%s"):format(OTHER_CPUS, CONNS, seconds, script, nginx.url, path))
  local all1, main1 = worker_cpu()
  local n = tonumber(out:match("(%d+) requests in"))
  local rps = tonumber(out:match("Requests/sec:%s*([%d%.]+)"))
  local bad = tonumber(out:match("bad replies: (%d+)"))
  local socket_errors = out:match("Socket errors:[^\n]*")
  if not (n and rps and bad) or n == 0 then
    stop()
    error("wrk " .. path .. ": " .. out, 0)
  end
  if bad > 0 or socket_errors then
    local _, _, body = nginx:get(path)
    stop()
    error(("wrk %s: %d of %d replies wrong (%s); one reply now: %s"):format(path, bad, n, socket_errors or "no socket errors",
      tostring(body)), 0)
  end
  return { rps = rps, us = (all1 - all0) / n * 1e6, pool_us = math.max(0, all1 - all0 - (main1 - main0)) / n * 1e6 }
end

local cases = {
  { name = "kaifang, thread pool (ngx_thread)", path = "/thread" },
  { name = "  the same with concurrency = 32", path = "/thread32" },
  { name = "kaifang, resty_http", path = "/resty" },
  { name = "cosocket floor (no kaifang)", path = "/cosocket" },
  { name = "nginx proxy_pass (baseline)", path = "/proxy" },
}
local _, has = nginx:get("/has_resty")
has = tostring(has):gsub("%s+$", "")
local skipped
if has ~= "yes" then
  skipped = "kaifang, resty_http: skipped, " .. has .. " (not packaged in Debian bookworm)"
  table.remove(cases, 3)
end

-- a warm-up: connections, thread VMs and their libcurl sessions made before anything is counted
for _, c in ipairs(cases) do wrk(c.path, 1) end

for _ = 1, ROUNDS do
  for _, c in ipairs(cases) do
    c.runs = c.runs or {}
    c.runs[#c.runs + 1] = wrk(c.path, SECONDS)
  end
end

local perf_note
if os.getenv("PERF") and not select(2, sh("command -v perf")) then
  perf_note = "no profile: perf is not installed (Debian's linux-perf)"
elseif os.getenv("PERF") then
  local data = OUT .. "/perf.data"
  local opts = os.getenv("PERF") == "1" and "-g" or os.getenv("PERF")
  local rec = assert(io.popen(("perf record %s -o %s -p %d -- sleep %d 2>&1"):format(opts, data, worker, SECONDS)))
  wrk("/thread", SECONDS)
  rec:read("a") -- perf finishes the file after its last words: reading them keeps it from a SIGPIPE
  rec:close()
  perf_note = ("profile of the worker during a thread-pool run: perf report -i %s"):format(data)
end
stop()

local function median(runs, field)
  local v = {}
  for i, r in ipairs(runs) do v[i] = r[field] end
  table.sort(v)
  return v[(#v + 1) // 2], v[1], v[#v]
end

print(("one Lingdian call per request to a fixed-reply nginx, wrk -c %d, %d s a run, median of %d interleaved runs [min-max]")
  :format(CONNS, SECONDS, ROUNDS))
print(("nginx: 1 worker, thread_pool threads=32, worker pinned to CPU %s; upstream and wrk on CPU %s")
  :format(WORKER_CPU, OTHER_CPUS))
print(("%-34s %21s %26s %9s"):format("", "requests/s", "worker CPU us/request", "in pool"))
local base = cases[#cases]
local base_us = median(base.runs, "us")
for _, c in ipairs(cases) do
  local rps, rlo, rhi = median(c.runs, "rps")
  local us, ulo, uhi = median(c.runs, "us")
  print(("%-34s %7.0f [%5.0f-%5.0f] %6.1f [%5.1f-%5.1f] %4.1fx %9.1f"):format(c.name, rps, rlo, rhi, us, ulo, uhi,
    us / base_us, (median(c.runs, "pool_us"))))
end
if skipped then print(skipped) end
if perf_note then print(perf_note) end
