-- Peak RSS of this process while kaifang.batch streams N calls to the sandbox (the sandbox runs
-- in its own process and is not counted). Target: under 64 MB for 1,000,000 calls.
-- Run: make bench (or lua5.4 bench/memory.lua [N])
local kaifang = require "kaifang"
local sandbox = require "kaifang.sandbox"

local N = tonumber(arg and arg[1]) or 1000000

local function status(field)
  for line in io.lines("/proc/self/status") do
    local v = line:match("^" .. field .. ":%s*(%d+) kB")
    if v then return tonumber(v) / 1024 end
  end
end

local sb = sandbox.start{ port = 0 }
local ld = kaifang.lingdian.new{ developer_code = "U2QHNB2w=", developer_key = "744ed968e7e1a4aebafa6f4888fced68",
                                 base_url = sb.url }
local before = status("VmRSS")
local i = 0
-- a read: the sandbox keeps nothing per call, so a million calls do not grow the server instead
local summary = kaifang.batch(function()
  i = i + 1
  if i <= N then return { ld, "get_user_tel_by_code", { user_code = "U2TD844B2" } } end
end, { concurrency = 32, progress = true, total = N })
sb:stop()
print(("streamed batch: %d calls, ok %d, failed %d, maybe_sent %d, %.1f s (%.0f/s)"):format(
  N, summary.ok, summary.failed, summary.maybe_sent, summary.elapsed, N / summary.elapsed))
print(("RSS before %.1f MB; peak RSS (VmHWM) %.1f MB (target < 64 MB)"):format(before, status("VmHWM")))
