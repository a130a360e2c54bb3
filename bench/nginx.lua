-- kaifang inside nginx: requests per second and the worker's CPU time per request, for one
-- Lingdian call per request to a fixed-reply upstream (a second nginx), through
--   thread      kaifang.transport.ngx_thread (the default inside nginx: libcurl in the thread pool),
--               with the client's default concurrency (calls in flight per account), and with 32
--   resty_http  kaifang.transport.resty_http (lua-resty-http over cosockets), when installed
--   cosocket    for scale: one signed request made at start, sent by hand over ngx.socket.tcp
--               (no kaifang per call): what an event-loop transport such as resty_http cannot beat
--   proxy_pass  nginx's own proxy to the same upstream: the baseline, no Lua at all
-- wrk drives each location; its script counts replies that are not 200 with the phone number.
-- Rounds are interleaved and each figure is the median of the rounds with its spread
-- (bench/common.lua); "in pool" is the part of the worker's CPU time spent in its thread pool's
-- threads. The nginx worker (all its threads, the pool's too) is pinned to one core, the
-- upstream and wrk to the other.
-- Run: make bench (or lua5.4 bench/nginx.lua [seconds per run] [rounds] [connections])
-- PERF=1 (or PERF='<perf record options>') also records a profile of the worker during one more
-- thread-pool run (build/bench/perf.data).
local bench = dofile("bench/common.lua")
local harness = dofile("spec/nginx/harness.lua")

local SECONDS = tonumber(arg and arg[1]) or 5
local ROUNDS = tonumber(arg and arg[2]) or 3
local CONNS = tonumber(arg and arg[3]) or 32
local PHONE = "13311112222"
local sh = bench.shell

local function need(cmd, why)
  if not select(2, sh("command -v " .. cmd)) then
    print(("nginx bench skipped: %s not found (%s)"):format(cmd, why))
    os.exit(0)
  end
end
need("wrk", "make bench installs it")
if not harness.find() then
  print("nginx bench skipped: " .. select(2, harness.find()))
  os.exit(0)
end

-- Both nginx start on the server core and wrk runs from this process there too; then the
-- worker under test moves to the client core, alone.
local note = bench.server_side()
local pinned = note:find("^pinned") ~= nil
local upstream = bench.nginx('{"code":100,"message":"ok","data":"' .. PHONE .. '"}')
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
if pinned then
  assert(select(2, sh(("taskset -a -p -c 1 %d"):format(worker))))
  note = "the worker (all its threads) pinned to core 1; upstream and wrk on core 0"
end

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

local script = bench.OUT .. "/nginx_check.lua"
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
  local out = sh(("wrk -t 1 -c %d -d %ds -s %s %s%s"):format(CONNS, seconds, script, nginx.url, path))
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
  return { rps = rps, cpu_us = (all1 - all0) / n * 1e6, pool_us = math.max(0, all1 - all0 - (main1 - main0)) / n * 1e6 }
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
for _, c in ipairs(cases) do
  c.run = function() return wrk(c.path, SECONDS) end
  wrk(c.path, 1) -- a warm-up: connections, thread VMs and their libcurl sessions made before anything counts
end

local got = bench.rounds(cases, ROUNDS)

local perf_note
if os.getenv("PERF") and not select(2, sh("command -v perf")) then
  perf_note = "no profile: perf is not installed (Debian's linux-perf)"
elseif os.getenv("PERF") then
  local data = bench.OUT .. "/perf.data"
  local opts = os.getenv("PERF") == "1" and "-g" or os.getenv("PERF")
  local rec = assert(io.popen(("perf record %s -o %s -p %d -- sleep %d 2>&1"):format(opts, data, worker, SECONDS)))
  wrk("/thread", SECONDS)
  rec:read("a") -- perf finishes the file after its last words: reading them keeps it from a SIGPIPE
  rec:close()
  perf_note = ("profile of the worker during a thread-pool run: perf report -i %s"):format(data)
end
stop()

print(("one Lingdian call per request to a fixed-reply nginx, wrk -c %d, %d s a run, median of %d interleaved runs")
  :format(CONNS, SECONDS, ROUNDS))
print(("nginx: 1 worker, thread_pool threads=32; %s"):format(note))
print(("%-34s %14s %26s %8s"):format("", "requests/s", "worker CPU us/request", "in pool"))
local base_us = got[cases[#cases].name].cpu_us
for _, c in ipairs(cases) do
  local r = got[c.name]
  local pool = {}
  for i, run in ipairs(r.runs) do pool[i] = run.pool_us end
  print(("%-34s %14s %19s %5.1fx %8.1f"):format(c.name, bench.fmt(r.rps, r.rps_spread), bench.fmt(r.cpu_us, r.cpu_spread, 1),
    r.cpu_us / base_us, bench.median(pool)))
end
if skipped then print(skipped) end
if perf_note then print(perf_note) end
