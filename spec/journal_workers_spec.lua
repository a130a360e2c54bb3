-- Several workers, one batch: three processes run the same 5,000-notice batch with one Redis
-- journal, and one of them is killed with SIGKILL halfway. Afterwards, from the sandbox's records
-- and the journal: no notice was delivered twice, every call is settled, and the two others did
-- the rest (the dead worker's calls in flight were settled as maybe_sent once its lease ran out).
local cjson = require "cjson"
local core = require "kaifang.core"
local journal = require "kaifang.journal"
local sandbox = require "kaifang.sandbox"
local redis = require "spec.helpers.redis"
local spawn = require "spec.helpers.spawn"

local N, CONCURRENCY, LEASE = 5000, 16, 1 -- a short lease: the others settle the dead one's calls soon
local WORKER = spawn.dir .. "journal_worker.lua"

describe("journal: three workers share a Redis journal", function()
  local sb, server

  setup(function()
    sb = sandbox.start{ port = 0 }
    server = redis.start()
  end)

  teardown(function()
    sb:stop()
    server.stop()
  end)

  it("one killed halfway: no duplicates, every call settled, the others did the rest", function()
    -- each answer 10 ms late, so that the batch lasts long enough to be killed halfway
    assert(sb:configure{ lingdian = { latency = 0.01 } })
    local started = core.monotonic()
    local prefix = "workers:" .. core.random_hex(4) .. ":"
    local function worker()
      return spawn.start(WORKER, sb.url, "redis", tostring(server.port), tostring(N), "w", tostring(CONCURRENCY),
                         prefix, tostring(LEASE))
    end
    local victim, others = worker(), { worker(), worker() }
    local at
    repeat
      local line = victim.line()
      local n = line and tonumber(line:match("^settled (%d+)$"))
      if n and n >= N / 2 then at = n end
    until at or line == nil
    assert.is_number(at, "the worker to kill ended first")
    victim.kill("KILL")
    for _, line in ipairs(victim.rest()) do
      assert.is_nil(line:match("^{"), "the worker finished before it was killed") -- its summary
    end
    local killed_at = core.monotonic()

    local summaries = {}
    for i, w in ipairs(others) do
      local lines = w.rest()
      summaries[i] = cjson.decode(lines[#lines])
      assert.is_nil(summaries[i].error)
      -- each survivor saw the whole batch end: what it sent, and what others settled
      assert.are.equal(N, summaries[i].ok + summaries[i].failed + summaries[i].maybe_sent + summaries[i].skipped)
    end
    local finished = core.monotonic()

    local j = journal.redis{ port = server.port, prefix = prefix }
    local report = j:report()
    local by = {}
    for rec in report:calls() do by[rec.args.content] = rec end
    j:close()
    assert.are.equal(N, report.total)
    assert.are.equal(0, report.sending)
    assert.are.equal(N, report.ok + report.maybe_sent)

    local delivered, dup = {}, 0
    for _, r in ipairs(sb:records("lingdian", "messages")) do
      local c = r.params.content
      if delivered[c] then dup = dup + 1 end
      delivered[c] = true
      assert.is_truthy(by[c] and (by[c].state == "ok" or by[c].state == "maybe_sent"), c)
    end
    assert.are.equal(0, dup)
    for c, rec in pairs(by) do
      if rec.state == "ok" then assert.is_true(delivered[c] == true, c .. " is ok but was not delivered") end
    end

    -- the dead worker's calls in flight, settled by the others as maybe_sent, and no more
    local sent_by_survivors = summaries[1].ok + summaries[2].ok
    assert.is_true(report.maybe_sent <= CONCURRENCY, report.maybe_sent .. " maybe_sent")
    assert.are.equal(report.maybe_sent, summaries[1].maybe_sent + summaries[2].maybe_sent)
    assert.is_true(summaries[1].ok > 0 and summaries[2].ok > 0)
    local victim_ok = report.ok - sent_by_survivors
    assert.is_true(victim_ok > 0, "the killed worker sent nothing")
    print(("\n[journal headline] 3 workers, one Redis journal, %d notices (concurrency %d each, lease %g s), one "
      .. "SIGKILLed after %d outcomes: duplicates %d, settled %d (ok %d, maybe_sent %d), sent by the survivors %d + %d, "
      .. "by the killed one %d; the survivors finished %.1f s after the kill; %.1f s in all"):format(
      N, CONCURRENCY, LEASE, at, dup, report.total, report.ok, report.maybe_sent, summaries[1].ok, summaries[2].ok,
      victim_ok, finished - killed_at, finished - started))
  end)
end)
