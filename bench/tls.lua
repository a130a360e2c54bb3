-- HTTPS against plain HTTP: N get_user_tel_by_code calls at concurrency C to a sandbox serving
-- each, by kaifang's batch and by `curl --parallel` (with --cacert), 3 interleaved runs each.
-- Prints the median requests/s, the client's CPU time per call (user+sys, from bench/common.lua:
-- the process's CPU clock for kaifang, bash's `times` for curl) and the TLS
-- handshakes the sandbox counted (full/resumed, over the 3 runs). kaifang's connections and TLS
-- sessions live in the process's curl share, so its first run resumes the session of the bench's
-- own first request to the sandbox and later runs reuse the connections; each curl run is a new
-- process and pays its own.
-- Run: make bench (or lua5.4 bench/tls.lua [N [C]])
local kaifang = require "kaifang"
local core = require "kaifang.core"
local sandbox = require "kaifang.sandbox"
local bench = dofile("bench/common.lua")

local N = tonumber(arg and arg[1]) or 20000
local C = tonumber(arg and arg[2]) or 32
local RUNS = 3

-- the sandboxes on the server core, this process and what it runs (curl) on the client core
local pinning = bench.server_side()
-- not strict: curl sends one signed request over and over, a replay a strict sandbox refuses
local servers = { http = sandbox.start{ strict = false }, https = sandbox.start{ strict = false, tls = true } }
bench.client_side()

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

local function run_kaifang(proto)
  local c, i, first = clients[proto], 0, nil
  local cpu0, t0 = bench.cpu(), core.monotonic()
  local s = kaifang.batch(function()
    i = i + 1
    if i <= N then return { c, "get_user_tel_by_code", ARGS } end
  end, { concurrency = C, on_result = function(_, _, err) first = first or err end })
  local dt, cpu = core.monotonic() - t0, bench.cpu() - cpu0
  assert(s.ok == N, ("kaifang: %d of %d ok; first failure: %s"):format(s.ok, N, tostring(first)))
  return { rps = N / dt, cpu_us = cpu / N * 1e6 }
end

-- one signed request, replayed by curl
local body = clients.http:build_request(clients.http.endpoints.get_user_tel_by_code, ARGS).body
local bodyfile = bench.OUT .. "/tls-body.txt"
local replies = bench.OUT .. "/tls-replies.txt"
local f = assert(io.open(bodyfile, "w"))
f:write(body)
f:close()

local function run_curl(proto)
  local sb = servers[proto]
  local cacert = sb.cafile and ("--cacert " .. bench.quote(sb.cafile) .. " ") or ""
  local _, cpu, dt = bench.run(("curl -s %s--parallel --parallel-immediate --parallel-max %d "
    .. "-H 'Content-Type: application/x-www-form-urlencoded' --data-binary @%s '%s/lingdian%s?n=[1-%d]' -w '\\n'")
    :format(cacert, C, bodyfile, sb.url, PATH, N), replies)
  local rf = assert(io.open(replies))
  local out = rf:read("a")
  rf:close()
  local ok = select(2, out:gsub('"code":100', "")) -- the platform's success, not only HTTP 200
  assert(ok == N, ("curl: %d of %d replies succeeded: %s"):format(ok, N, out:sub(1, 300)))
  return { rps = N / dt, cpu_us = cpu / N * 1e6 }
end

local CASES, handshake_counts = {}, {}
for _, c in ipairs({ { "kaifang batch", run_kaifang }, { "curl --parallel", run_curl } }) do
  for _, proto in ipairs({ "http", "https" }) do
    local name = c[1] .. " " .. proto
    handshake_counts[name] = { 0, 0 }
    CASES[#CASES + 1] = { name = name, label = c[1], proto = proto, run = function()
      local full0, resumed0 = handshakes(proto)
      local r = c[2](proto)
      local full1, resumed1 = handshakes(proto)
      local h = handshake_counts[name]
      h[1], h[2] = h[1] + math.floor(full1 - full0), h[2] + math.floor(resumed1 - resumed0)
      return r
    end }
  end
end
local results = bench.rounds(CASES, RUNS)

print(("\n%d get_user_tel_by_code calls at concurrency %d, HTTPS against plain HTTP, median ± spread of %d interleaved runs (%s)")
  :format(N, C, RUNS, pinning))
print(("%-16s %-6s %14s %16s %16s"):format("client", "proto", "req/s", "CPU us/call", "handshakes f/r"))
for _, case in ipairs(CASES) do
  local r = results[case.name]
  local h = handshake_counts[case.name]
  print(("%-16s %-6s %14s %16s %16s"):format(case.label, case.proto, bench.fmt(r.rps, r.rps_spread),
    bench.fmt(r.cpu_us, r.cpu_spread, 1), case.proto == "https" and ("%d/%d"):format(h[1], h[2]) or "-"))
end
for i = 1, #CASES, 2 do
  local plain, tls = results[CASES[i].name], results[CASES[i + 1].name]
  print(("%s: HTTPS costs %.1f us more client CPU per call (%.0f%%), %.0f%% of plain HTTP's requests/s")
    :format(CASES[i].label, tls.cpu_us - plain.cpu_us, (tls.cpu_us / plain.cpu_us - 1) * 100, tls.rps / plain.rps * 100))
end

for _, c in pairs(clients) do c:close() end
for _, sb in pairs(servers) do sb:stop() end
