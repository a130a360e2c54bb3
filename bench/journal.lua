-- The journal's cost: N send_wechat_message calls to the sandbox at concurrency 32, side by side,
-- without a journal, with the SQLite journal (sync "full": every commit fsync'd; and "normal"),
-- and with the Redis journal (a private redis-server). Runs alternate, best of three each.
-- Target: a journaled batch at no less than 50% of the unjournaled one.
-- Run: make bench (or lua5.4 bench/journal.lua [N])
local kaifang = require "kaifang"
local journal = require "kaifang.journal"
local sandbox = require "kaifang.sandbox"
local redis = require "spec.helpers.redis"

local N = tonumber(arg and arg[1]) or 20000
local CONCURRENCY, ROUNDS = 32, 3
local OUT = "build/bench"
os.execute("mkdir -p " .. OUT)

local sb = sandbox.start{ port = 0 }
local server = redis.start()
local ld = kaifang.lingdian.new{ developer_code = "U2QHNB2w=", developer_key = "744ed968e7e1a4aebafa6f4888fced68",
                                 base_url = sb.url }
local run_id = 0

local function calls()
  run_id = run_id + 1
  local i, tag = 0, "r" .. run_id .. "-"
  return function()
    i = i + 1
    if i <= N then
      return { ld, "send_wechat_message", { tel = "13311112222", content = tag .. i, link = "https://szai.0xiao.com/b" } }
    end
  end
end

local KINDS = {
  { name = "no journal", make = function() return nil end },
  { name = "SQLite, sync full", make = function()
    local path = OUT .. "/journal-" .. run_id .. ".db"
    os.execute("rm -f " .. path .. "*")
    return journal.sqlite(path)
  end },
  { name = "SQLite, sync normal", make = function()
    local path = OUT .. "/journal-" .. run_id .. ".db"
    os.execute("rm -f " .. path .. "*")
    return journal.sqlite(path, { sync = "normal" })
  end },
  { name = "Redis", make = function() return journal.redis{ port = server.port, prefix = "bench" .. run_id .. ":" } end },
}

local best = {}
for _ = 1, ROUNDS do
  for _, kind in ipairs(KINDS) do
    assert(sb:reset())
    local j = kind.make()
    local s = kaifang.batch(calls(), { concurrency = CONCURRENCY, journal = j })
    assert(s.ok == N, ("%s: %d of %d ok (%s)"):format(kind.name, s.ok, N, tostring(s.error)))
    if j then j:close() end
    best[kind.name] = math.max(best[kind.name] or 0, N / s.elapsed)
  end
end
os.execute("rm -f " .. OUT .. "/journal-*.db*")
sb:stop()
server.stop()

print(("%d send_wechat_message calls to the sandbox at concurrency %d, requests per second (best of %d)"):format(
  N, CONCURRENCY, ROUNDS))
local plain = best["no journal"]
for _, kind in ipairs(KINDS) do
  print(("%-22s %8.0f  %4.0f%%%s"):format(kind.name, best[kind.name], 100 * best[kind.name] / plain,
    kind.name == "SQLite, sync full" and "  (target >= 50%)" or ""))
end
