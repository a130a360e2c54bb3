-- Batch throughput: N send_wechat_message calls to the sandbox at several concurrencies, against
--   wrk       the same signed request on the same number of connections (the server's ceiling)
--   curl      curl --parallel --parallel-max C fed the same signed request (libcurl's multi, no Lua)
--   luasocket a plain sequential loop over socket.http (what a Lua script would otherwise do)
-- Prints a table and writes build/bench/throughput.png (gnuplot).
-- Run: make bench (or lua5.4 bench/batch.lua [N])
local kaifang = require "kaifang"
local core = require "kaifang.core"
local sandbox = require "kaifang.sandbox"

local N = tonumber(arg and arg[1]) or 20000
local LEVELS = { 1, 8, 32, 128 }
if os.getenv("LEVELS") then LEVELS = {} for c in os.getenv("LEVELS"):gmatch("%d+") do LEVELS[#LEVELS + 1] = tonumber(c) end end
local CODE, KEY = "U2QHNB2w=", "744ed968e7e1a4aebafa6f4888fced68"
local OUT = "build/bench"
os.execute("mkdir -p " .. OUT)

-- not strict: wrk and curl send one signed request over and over, a replay a strict sandbox refuses
local sb = sandbox.start{ port = 0, strict = false }
local ld = kaifang.lingdian.new{ developer_code = CODE, developer_key = KEY, base_url = sb.url }
local path = "/api/Developer/sendWeChatMessage"
local args = { tel = "13311112222", content = "bench", link = "https://szai.0xiao.com/x" }

-- one signed request, reused by the tools that cannot sign
local req = ld:build_request(ld.endpoints.send_wechat_message, args)
local bodyfile = OUT .. "/body.txt"
local f = assert(io.open(bodyfile, "w"))
f:write(req.body)
f:close()

local function shell(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("a")
  p:close()
  return out
end

local function reset() assert(sb:reset()) end

local function run_kaifang(c)
  reset()
  local i = 0
  local first
  local s = kaifang.batch(function()
    i = i + 1
    if i <= N then return { ld, "send_wechat_message", args } end
  end, { concurrency = c, on_result = function(_, _, err) first = first or err end })
  assert(s.ok == N, ("kaifang: %d of %d ok; first failure: %s"):format(s.ok, N, tostring(first)))
  return N / s.elapsed
end

local function run_wrk(c)
  reset()
  local script = OUT .. "/wrk.lua"
  local w = assert(io.open(script, "w"))
  w:write(("wrk.method = 'POST'\nwrk.headers['Content-Type'] = 'application/x-www-form-urlencoded'\nwrk.body = %q\n"):format(req.body))
  w:close()
  local secs = math.max(3, math.min(10, N / 5000))
  local out = shell(("wrk -t %d -c %d -d %ds -s %s %s%s"):format(math.min(c, 2), c, secs, script, sb.url, path))
  local rps = tonumber(out:match("Requests/sec:%s*([%d%.]+)"))
  assert(rps, "wrk: " .. out)
  local non2xx = out:match("Non%-2xx or 3xx responses:%s*(%d+)")
  assert(not non2xx, "wrk saw errors: " .. out)
  return rps
end

local function run_curl(c)
  reset()
  local t0 = core.monotonic()
  local out = shell(("curl -s -o /dev/null --parallel --parallel-immediate --parallel-max %d -H 'Content-Type: application/x-www-form-urlencoded' --data-binary @%s '%s%s?n=[1-%d]' -w '%%{http_code}\\n'")
    :format(c, bodyfile, sb.url, path, N))
  local dt = core.monotonic() - t0
  local ok = select(2, out:gsub("200\n", ""))
  assert(ok == N, ("curl: %d of %d answered 200"):format(ok, N))
  return N / dt
end

local function run_luasocket()
  local okh, http = pcall(require, "socket.http")
  if not okh then return nil end
  local ltn12 = require "ltn12"
  reset()
  local n = math.min(N, 5000)
  local t0 = core.monotonic()
  for _ = 1, n do
    local r = ld:build_request(ld.endpoints.send_wechat_message, args)
    local _, code = http.request{
      url = r.url, method = "POST", source = ltn12.source.string(r.body),
      headers = { ["Content-Type"] = r.headers["Content-Type"], ["Content-Length"] = #r.body },
      sink = ltn12.sink.null(),
    }
    assert(code == 200, "luasocket: HTTP " .. tostring(code))
  end
  return n / (core.monotonic() - t0)
end

local rows = {}
for _, c in ipairs(LEVELS) do
  local row = { c = c, kaifang = run_kaifang(c), wrk = run_wrk(c), curl = run_curl(c) }
  rows[#rows + 1] = row
  io.stderr:write(("concurrency %d done\n"):format(c))
end
local seq = run_luasocket()
sb:stop()

print(("%d send_wechat_message calls to the sandbox, requests per second"):format(N))
print(("%-12s %10s %10s %10s %12s"):format("concurrency", "kaifang", "wrk", "curl", "kaifang/wrk"))
local dat = assert(io.open(OUT .. "/throughput.dat", "w"))
for _, r in ipairs(rows) do
  print(("%-12d %10.0f %10.0f %10.0f %11.0f%%"):format(r.c, r.kaifang, r.wrk, r.curl, 100 * r.kaifang / r.wrk))
  dat:write(("%d %.0f %.0f %.0f %.0f\n"):format(r.c, r.kaifang, r.wrk, r.curl, seq or 0))
end
dat:close()
if seq then print(("sequential luasocket socket.http loop: %.0f requests per second"):format(seq)) end

local gp = assert(io.open(OUT .. "/throughput.gp", "w"))
gp:write(([[
set terminal png size 800,500 noenhanced
set output '%s/throughput.png'
set title 'send_wechat_message to the kaifang sandbox'
set xlabel 'concurrency (connections)'
set ylabel 'requests per second'
set logscale x 2
set key left top
set yrange [0:*]
plot '%s/throughput.dat' using 1:3 with linespoints title 'wrk (ceiling)', \
     '' using 1:2 with linespoints title 'kaifang.batch', \
     '' using 1:4 with linespoints title 'curl --parallel', \
     '' using 1:5 with lines dashtype 2 title 'luasocket, sequential'
]]):format(OUT, OUT))
gp:close()
if os.execute("gnuplot " .. OUT .. "/throughput.gp") then print("chart: " .. OUT .. "/throughput.png") end
