-- HTTPS against plain HTTP: N get_user_tel_by_code calls at concurrency C to a sandbox serving
-- each, by kaifang's batch and by `curl --parallel` (with --cacert), 3 interleaved runs each.
-- Prints the median requests/s, the client's CPU time per call (user+sys: os.clock(), the
-- process's CPU clock, for kaifang; the children's from /proc/self/stat for curl) and the TLS
-- handshakes the sandbox counted (full/resumed, over the 3 runs). kaifang's connections and TLS
-- sessions live in the process's curl share, so its first run resumes the session of the bench's
-- own first request to the sandbox and later runs reuse the connections; each curl run is a new
-- process and pays its own.
-- Run: make bench (or lua5.4 bench/tls.lua [N [C]])
local kaifang = require "kaifang"
local core = require "kaifang.core"
local sandbox = require "kaifang.sandbox"
local httpd = require "kaifang.sandbox.httpd"

local N = tonumber(arg and arg[1]) or 20000
local C = tonumber(arg and arg[2]) or 32
local RUNS = 3
local OUT = "build/bench"
os.execute("mkdir -p " .. OUT)

local function shell(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("a")
  p:close()
  return out
end

-- not strict: curl sends one signed request over and over, a replay a strict sandbox refuses
local servers = { http = sandbox.start{ strict = false }, https = sandbox.start{ strict = false, tls = true } }

-- the sandboxes on core 0, this process and its children (curl) on core 1
local cores = tonumber(shell("nproc")) or 1
local pinned = cores >= 2 and os.execute("command -v taskset >/dev/null")
if pinned then
  for _, sb in pairs(servers) do shell(("taskset -a -pc 0 %d"):format(sb.pid)) end
  shell(("taskset -a -pc 1 %d"):format(httpd.getpid()))
end

local ARGS = { user_code = "U2TD844B2" }
local PATH = "/api/Developer/getUserTelByCode"

local function client(proto)
  local sb = servers[proto]
  local o = { base_url = sb.url .. "/lingdian", cainfo = sb.cafile }
  for k, v in pairs(sb.credentials.lingdian) do o[k] = v end
  return kaifang.lingdian.new(o)
end
local clients = { http = client("http"), https = client("https") }

local function handshakes(proto)
  local s = assert(servers[proto]:server_stats())
  return s.tls_full or 0, s.tls_resumed or 0
end

-- children's CPU seconds (user+sys) from /proc/self/stat: the curl runs, once waited for
local function children_cpu()
  local f = assert(io.open("/proc/self/stat"))
  local stat = f:read("a")
  f:close()
  local fields = {}
  for w in stat:match("%) (.*)"):gmatch("%S+") do fields[#fields + 1] = w end
  return (tonumber(fields[14]) + tonumber(fields[15])) / 100 -- cutime, cstime (fields 16, 17), at 100 Hz
end

local function run_kaifang(proto)
  local c, i, first = clients[proto], 0, nil
  local cpu0, t0 = os.clock(), core.monotonic()
  local s = kaifang.batch(function()
    i = i + 1
    if i <= N then return { c, "get_user_tel_by_code", ARGS } end
  end, { concurrency = C, on_result = function(_, _, err) first = first or err end })
  local dt, cpu = core.monotonic() - t0, os.clock() - cpu0
  assert(s.ok == N, ("kaifang: %d of %d ok; first failure: %s"):format(s.ok, N, tostring(first)))
  return N / dt, cpu / N * 1e6
end

-- one signed request, replayed by curl
local body = clients.http:build_request(clients.http.endpoints.get_user_tel_by_code, ARGS).body
local bodyfile = OUT .. "/tls-body.txt"
local f = assert(io.open(bodyfile, "w"))
f:write(body)
f:close()

local function run_curl(proto)
  local sb = servers[proto]
  local cacert = sb.cafile and ("--cacert '" .. sb.cafile .. "' ") or ""
  local cpu0, t0 = children_cpu(), core.monotonic()
  local out = shell(("curl -s %s--parallel --parallel-immediate --parallel-max %d "
    .. "-H 'Content-Type: application/x-www-form-urlencoded' --data-binary @%s '%s/lingdian%s?n=[1-%d]' -w '\\n'")
    :format(cacert, C, bodyfile, sb.url, PATH, N))
  local dt, cpu = core.monotonic() - t0, children_cpu() - cpu0
  local ok = select(2, out:gsub('"code":100', "")) -- the platform's success, not only HTTP 200
  assert(ok == N, ("curl: %d of %d replies succeeded: %s"):format(ok, N, out:sub(1, 300)))
  return N / dt, cpu / N * 1e6
end

local CASES = {
  { "kaifang batch", "http", run_kaifang }, { "kaifang batch", "https", run_kaifang },
  { "curl --parallel", "http", run_curl }, { "curl --parallel", "https", run_curl },
}
local results = {}
for _ = 1, RUNS do
  for i, case in ipairs(CASES) do
    local r = results[i] or { rps = {}, cpu = {}, full = 0, resumed = 0 }
    results[i] = r
    local full0, resumed0 = handshakes(case[2])
    local rps, cpu = case[3](case[2])
    local full1, resumed1 = handshakes(case[2])
    r.rps[#r.rps + 1], r.cpu[#r.cpu + 1] = rps, cpu
    r.full, r.resumed = r.full + math.floor(full1 - full0), r.resumed + math.floor(resumed1 - resumed0)
  end
end

local function median(t)
  local s = {}
  for i, v in ipairs(t) do s[i] = v end
  table.sort(s)
  return s[math.ceil(#s / 2)], s[1], s[#s]
end
local function spread(t)
  local m, lo, hi = median(t)
  return m, (hi - lo) / m * 100
end

print(("\n%d get_user_tel_by_code calls at concurrency %d, HTTPS against plain HTTP, median of %d interleaved runs (%s)")
  :format(N, C, RUNS, pinned and "sandboxes on core 0, client on core 1"
    or "not pinned: fewer than 2 cores or no taskset; client and sandbox share the cores"))
print(("%-16s %-6s %9s %7s %12s %7s %16s"):format("client", "proto", "req/s", "spread", "CPU us/call", "spread",
  "handshakes f/r"))
for i, case in ipairs(CASES) do
  local r = results[i]
  local rps, rs = spread(r.rps)
  local cpu, cs = spread(r.cpu)
  print(("%-16s %-6s %9.0f %6.0f%% %12.1f %6.0f%% %16s"):format(case[1], case[2], rps, rs, cpu, cs,
    case[2] == "https" and ("%d/%d"):format(r.full, r.resumed) or "-"))
end
for i = 1, #CASES, 2 do
  local plain, tls = median(results[i].cpu), median(results[i + 1].cpu)
  print(("%s: HTTPS costs %.1f us more client CPU per call (%.0f%%), %.0f%% of plain HTTP's requests/s")
    :format(CASES[i][1], tls - plain, (tls / plain - 1) * 100, median(results[i + 1].rps) / median(results[i].rps) * 100))
end

for _, c in pairs(clients) do c:close() end
for _, sb in pairs(servers) do sb:stop() end
