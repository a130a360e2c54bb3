-- Batch throughput and the client's CPU per call: N get_user_tel_by_code calls (a read, which the
-- sandbox accepts over and over) at several concurrencies, against two servers:
--   sandbox   the kaifang sandbox (checks every signature: it is the bottleneck)
--   nginx     a fixed-reply nginx (nearly free, so the client's own cost shows)
-- with five clients, each checking every reply's status and body (the sandbox answers platform
-- errors with HTTP 200):
--   kaifang.batch    the whole pipeline: validate, sign, encode, send, decode, map
--   core.multi       kaifang's C transport alone, one prebuilt request submitted over and over
--   C floor          bench/curl_floor.c: libcurl's multi interface in C, body through the same
--                    read callback (the floor kaifang's transport builds on)
--   curl --parallel  the curl tool, fed the same signed request
--   wrk              the same signed request (a Lua script checks the bodies)
-- Server and client are pinned to separate cores (bench/common.lua); each case runs ROUNDS times,
-- interleaved, and prints the median and the spread; for kaifang's cases and the C floor also
-- the minor page faults per call (a heap given back to the kernel and faulted in again). Writes
-- build/bench/throughput.png (gnuplot): requests per second, and client CPU per call below it.
-- Run: make bench (or lua5.4 bench/batch.lua [N]; in the environment LEVELS="8 32", ROUNDS=3,
-- SERVERS="nginx", CASES="kaifang.batch,core.multi")
local kaifang = require "kaifang"
local core = require "kaifang.core"
local sandbox = require "kaifang.sandbox"
local bench = dofile("bench/common.lua")

local N = tonumber(arg and arg[1]) or 20000
local ROUNDS = tonumber(os.getenv("ROUNDS")) or 3
local LEVELS = { 8, 32, 128 }
if os.getenv("LEVELS") then LEVELS = {} for c in os.getenv("LEVELS"):gmatch("%d+") do LEVELS[#LEVELS + 1] = tonumber(c) end end
local OUT, q = bench.OUT, bench.quote
local FLOOR = OUT .. "/curl_floor"
local CODE, KEY = "U2QHNB2w=", "744ed968e7e1a4aebafa6f4888fced68"
local METHOD, ARGS = "get_user_tel_by_code", { user_code = "U2TD844B2" }
-- what every reply must start with: the sandbox's success, and nginx's fixed reply, which every
-- client here (kaifang's decoding of a phone number among them) takes as success
local EXPECT = '{"code":100,'
local FIXED = '{"code":100,"message":"ok","data":13311112222}'

local pinning = bench.server_side()
local servers = {}
for name in (os.getenv("SERVERS") or "sandbox nginx"):gmatch("%a+") do
  servers[#servers + 1] = { name = name, url = name == "nginx" and bench.nginx(FIXED) or sandbox.start{ port = 0 } }
end
for _, s in ipairs(servers) do s.handle, s.url = s.url, s.url.url end
bench.client_side()

local function client(server)
  return kaifang.lingdian.new{ developer_code = CODE, developer_key = KEY, base_url = server.url }
end

-- One freshly signed request (valid for the sandbox's 300 s window), its body in a file.
local function signed(server)
  local ld = client(server)
  local req = ld:build_request(ld.endpoints[METHOD], ARGS)
  req.signed = nil
  local f = assert(io.open(OUT .. "/body.txt", "w"))
  f:write(req.body)
  f:close()
  return req, OUT .. "/body.txt"
end

local function in_process(fn)
  local t0, c0, f0 = core.monotonic(), bench.cpu(), bench.minflt()
  fn()
  local cpu, wall, f1 = bench.cpu() - c0, core.monotonic() - t0, bench.minflt()
  return { rps = N / wall, cpu_us = cpu / N * 1e6, faults = f0 and f1 and (f1 - f0) / N }
end

local runners = {}

runners["kaifang.batch"] = function(server, c)
  local ld, i, first = client(server), 0, nil
  local s
  local r = in_process(function()
    s = kaifang.batch(function()
      i = i + 1
      if i <= N then return { ld, METHOD, ARGS } end
    end, { concurrency = c, on_result = function(_, _, err) first = first or err end })
  end)
  assert(s.ok == N, ("kaifang.batch: %d of %d ok; first failure: %s"):format(s.ok, N, tostring(first)))
  return r
end

runners["core.multi"] = function(server, c)
  local req = signed(server)
  local multi = core.multi{ concurrency = c }
  local started, done, ok = 0, 0, 0
  local r = in_process(function()
    while done < N do
      while started < N and multi:submit(req) do started = started + 1 end
      multi:wait(1)
      while true do
        local slot, res = multi:collect()
        if not slot then break end
        done = done + 1
        if res and res.status == 200 and res.body:sub(1, #EXPECT) == EXPECT then ok = ok + 1 end
      end
    end
  end)
  multi:close()
  assert(ok == N, ("core.multi: %d of %d ok"):format(ok, N))
  return r
end

runners["C floor"] = function(server, c)
  local req, bodyfile = signed(server)
  local _, _, wall = bench.run(("%s %s %s %d %d %s"):format(FLOOR, q(req.url), q(bodyfile), c, N, q(EXPECT)),
    OUT .. "/floor.out")
  local out = io.open(OUT .. "/floor.out"):read("a")
  -- its own CPU time around the transfers, as in_process takes the others' (not its process's start)
  local cpu, faults = out:match("^ok " .. N .. " failed 0 cpu ([%d.]+) faults (%d+)")
  assert(cpu, "C floor: " .. out)
  return { rps = N / wall, cpu_us = tonumber(cpu) / N * 1e6, faults = tonumber(faults) / N }
end

runners["curl --parallel"] = function(server, c)
  local req, bodyfile = signed(server)
  local replies = OUT .. "/curl.out"
  local _, cpu, wall = bench.run(("curl -s --parallel --parallel-immediate --parallel-max %d -H %s --data-binary @%s %s -w '\\n%%{http_code}\\n'")
    :format(c, q("Content-Type: application/x-www-form-urlencoded"), q(bodyfile), q(req.url .. "?n=[1-" .. N .. "]")), replies)
  -- bodies and statuses of parallel transfers may interleave: counted, not read in order
  local text = io.open(replies):read("a")
  local statuses, good, coded = select(2, text:gsub("\n200\n", "")), select(2, text:gsub(EXPECT, "")),
    select(2, text:gsub('"code":', ""))
  assert(statuses == N and good == N and coded == N,
    ("curl: %d of %d replies were 200, %d of them started %s, %d had a code"):format(statuses, N, good, EXPECT, coded))
  return { rps = N / wall, cpu_us = cpu / N * 1e6 }
end

local wrk_ok = select(2, bench.shell("command -v wrk"))
runners.wrk = wrk_ok and function(server, c)
  local req = signed(server)
  local script = OUT .. "/wrk.lua"
  local w = assert(io.open(script, "w"))
  -- every reply's body checked: the count of bad ones comes back through each thread
  w:write(("wrk.method = 'POST'\nwrk.headers['Content-Type'] = 'application/x-www-form-urlencoded'\nwrk.body = %q\n"):format(req.body),
    ("local expect = %q\nbad = 0\nlocal threads = {}\n"):format(EXPECT),
    "function setup(t) threads[#threads + 1] = t end\n",
    "function response(status, headers, body) if status ~= 200 or body:sub(1, #expect) ~= expect then bad = bad + 1 end end\n",
    "function done() local n = 0 for _, t in ipairs(threads) do n = n + t:get('bad') end io.write('bad replies: ', n, '\\n') end\n")
  w:close()
  local secs = math.max(2, math.min(10, N / 10000))
  local out, cpu = bench.run(("wrk -t 1 -c %d -d %ds -s %s %s"):format(c, secs, q(script), q(req.url)), OUT .. "/wrk.out")
  out = io.open(OUT .. "/wrk.out"):read("a")
  local n, dt = out:match("(%d+) requests in ([%d.]+)s")
  local bad = tonumber(out:match("bad replies: (%d+)"))
  assert(n and bad == 0, "wrk: " .. out)
  return { rps = tonumber(n) / tonumber(dt), cpu_us = cpu / tonumber(n) * 1e6 }
end or nil

local CASES = { "kaifang.batch", "core.multi", "C floor", "curl --parallel", "wrk" }
if os.getenv("CASES") then -- e.g. CASES="kaifang.batch,C floor" (the floor is always kept)
  local want = "," .. os.getenv("CASES") .. ",C floor,"
  for i = #CASES, 1, -1 do if not want:find("," .. CASES[i] .. ",", 1, true) then table.remove(CASES, i) end end
end

local results = {} -- [server][c] = rounds' results by case
for _, server in ipairs(servers) do
  results[server.name] = {}
  for _, c in ipairs(LEVELS) do
    local cases = {}
    for _, name in ipairs(CASES) do
      if runners[name] then cases[#cases + 1] = { name = name, run = function() return runners[name](server, c) end } end
    end
    results[server.name][c] = bench.rounds(cases, ROUNDS)
    io.stderr:write(("%s, concurrency %d done\n"):format(server.name, c))
  end
end
for _, s in ipairs(servers) do s.handle:stop() end

print(("%d %s calls per run; median of %d interleaved runs, ± the spread (max - min) / median"):format(N, METHOD, ROUNDS))
print(pinning)
if not wrk_ok then print("wrk: not installed (make bench installs it)") end
for _, server in ipairs(servers) do
  print()
  print(("server: %s"):format(server.name == "nginx" and "fixed-reply nginx (return 200 '" .. FIXED .. "')" or "kaifang sandbox"))
  print(("%-12s %-16s %16s %22s %14s"):format("concurrency", "client", "requests/s", "client CPU µs/call", "faults/call"))
  for _, c in ipairs(LEVELS) do
    local r = results[server.name][c]
    for _, name in ipairs(CASES) do
      local x = r[name]
      if x then
        print(("%-12d %-16s %16s %20s %14s"):format(c, name, bench.fmt(x.rps, x.rps_spread), bench.fmt(x.cpu_us, x.cpu_spread, 1),
          x.faults and ("%.3f"):format(x.faults) or "-"))
      end
    end
    -- the floor is the cheaper of the C loop and core.multi: where a run has kaifang's own C loop
    -- cheaper than the C floor, dividing by the floor alone would flatter kaifang
    local k, f, m = r["kaifang.batch"], r["C floor"], r["core.multi"]
    local floor = math.min(f and f.cpu_us or math.huge, m and m.cpu_us or math.huge)
    if k and floor < math.huge then
      print(("%-12d %-16s %16s %20.2fx"):format(c, "kaifang / floor", "CPU per call:", k.cpu_us / floor))
    end
  end
end

-- the chart: requests/s (nginx solid, sandbox dashed) and client CPU per call against nginx
local dat = assert(io.open(OUT .. "/throughput.dat", "w"))
for _, c in ipairs(LEVELS) do
  local row = { c }
  for _, server in ipairs(servers) do
    for _, name in ipairs(CASES) do
      local x = results[server.name][c][name]
      row[#row + 1] = x and ("%.0f %.2f"):format(x.rps, x.cpu_us) or "NaN NaN"
    end
  end
  dat:write(table.concat(row, " "), "\n")
end
dat:close()
local plots_rps, plots_cpu = {}, {}
for si, server in ipairs(servers) do
  for ci, name in ipairs(CASES) do
    local col = 2 + ((si - 1) * #CASES + (ci - 1)) * 2
    plots_rps[#plots_rps + 1] = ("'%s/throughput.dat' using 1:%d with linespoints lc %d dashtype %d title '%s, %s'")
      :format(OUT, col, ci, si == 2 and 1 or 2, name, server.name)
    if server.name == "nginx" then
      plots_cpu[#plots_cpu + 1] = ("'%s/throughput.dat' using 1:%d with linespoints lc %d title '%s'"):format(OUT, col + 1, ci, name)
    end
  end
end
local gp = assert(io.open(OUT .. "/throughput.gp", "w"))
gp:write(([[
set terminal pngcairo size 900,900 noenhanced dashed
set output '%s/throughput.png'
set multiplot layout 2,1
set logscale x 2
set xlabel 'concurrency (connections)'
set key outside right top
set yrange [0:*]
set title '%s: requests/s (solid: fixed-reply nginx, dashed: sandbox)'
set ylabel 'requests per second'
plot %s
set title 'client CPU per call against the fixed-reply nginx (user + sys)'
set ylabel 'microseconds'
plot %s
unset multiplot
]]):format(OUT, METHOD, table.concat(plots_rps, ", "), table.concat(plots_cpu, ", ")))
gp:close()
if os.execute("gnuplot " .. OUT .. "/throughput.gp 2>/dev/null") then print("\nchart: " .. OUT .. "/throughput.png") end
