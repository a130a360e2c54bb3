-- Peak RSS of a process that streams N get_user_tel_by_code calls through kaifang.batch, at
-- concurrency 8, 128 and 512, each in a process of its own (so each peak is its own), against the
-- fixed-reply nginx (bench/common.lua; the server's memory is not counted). The growth from 8 to
-- 512 slots over 504 is what one slot costs: libcurl's easy handle and connection, and kaifang's
-- buffers (made on first use, 256 bytes to start).
-- Run: make bench (or lua5.4 bench/memory.lua [N]; N defaults to 1,000,000)
local kaifang = require "kaifang"
local bench = dofile("bench/common.lua")

local function status(field)
  for line in io.lines("/proc/self/status") do
    local v = line:match("^" .. field .. ":%s*(%d+) kB")
    if v then return tonumber(v) / 1024 end
  end
end

local CODE, KEY = "U2QHNB2w=", "744ed968e7e1a4aebafa6f4888fced68"

-- the child: lua5.4 bench/memory.lua --one URL CONCURRENCY N
if arg[1] == "--one" then
  local url, c, n = arg[2], tonumber(arg[3]), tonumber(arg[4])
  local ld = kaifang.lingdian.new{ developer_code = CODE, developer_key = KEY, base_url = url }
  local before = status("VmRSS")
  local i = 0
  local s = kaifang.batch(function()
    i = i + 1
    if i <= n then return { ld, "get_user_tel_by_code", { user_code = "U2TD844B2" } } end
  end, { concurrency = c })
  print(("%d %d %d %.3f %.1f %.1f"):format(s.ok, s.failed + s.maybe_sent, c, s.elapsed, before, status("VmHWM")))
  return
end

local N = tonumber(arg[1]) or 1000000
local pinning = bench.server_side()
local server = bench.nginx('{"code":100,"message":"ok","data":13311112222}')
bench.client_side()
local rows = {}
for _, c in ipairs({ 8, 128, 512 }) do
  local out = bench.shell(("%s bench/memory.lua --one %s %d %d"):format(bench.quote(arg[-1] or "lua5.4"),
    bench.quote(server.url), c, N))
  local ok, bad, _, secs, before, peak = out:match("^(%d+) (%d+) (%d+) ([%d.]+) ([%d.]+) ([%d.]+)")
  assert(ok and tonumber(ok) == N, ("concurrency %d: %s"):format(c, out))
  rows[#rows + 1] = { c = c, secs = tonumber(secs), before = tonumber(before), peak = tonumber(peak), bad = tonumber(bad) }
end
server:stop()

print(pinning)
print(("streamed kaifang.batch of %d calls to a fixed-reply nginx, one process per concurrency"):format(N))
print(("%-12s %10s %14s %16s %14s"):format("concurrency", "calls/s", "RSS before MB", "peak RSS MB", "growth MB"))
for _, r in ipairs(rows) do
  print(("%-12d %10.0f %14.1f %16.1f %14.1f"):format(r.c, N / r.secs, r.before, r.peak, r.peak - r.before))
end
print(("per slot (8 -> 512): %.1f KB"):format((rows[3].peak - rows[1].peak) * 1024 / (512 - 8)))
