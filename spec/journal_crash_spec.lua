-- The journal's headline: a child process runs a 2,000-notice journaled batch (SQLite) against
-- the sandbox and is killed with SIGKILL at a random moment; a second child resumes it to the
-- end. 20 times, at different moments. Then, from the sandbox's own records of what it
-- delivered and from the journal:
--   * every notice was delivered at most once;
--   * every call has exactly one final state;
--   * ok plus maybe_sent covers every delivered notice (and every ok was delivered);
--   * no kill left more calls to settle as maybe_sent than the concurrency.
local cjson = require "cjson"
local core = require "kaifang.core"
local journal = require "kaifang.journal"
local sandbox = require "kaifang.sandbox"
local shell = require "spec.helpers.shell"
local spawn = require "spec.helpers.spawn"

local N, KILLS, CONCURRENCY = 2000, 20, 32
local WORKER = spawn.dir .. "journal_worker.lua"

-- content -> the journal's record of that notice
local function records_by_content(path)
  local j = journal.sqlite(path, { readonly = true })
  local by, states, n = {}, {}, 0
  for rec in j:report():calls() do
    n = n + 1
    local content = rec.args.content
    assert.is_nil(by[content], "two records of " .. content)
    by[content] = rec
    states[rec.state] = (states[rec.state] or 0) + 1
  end
  j:close()
  return by, states, n
end

describe("journal: a batch killed 20 times and resumed", function()
  local sb, dir

  setup(function()
    sb = sandbox.start{ port = 0 }
    dir = shell.sh("mktemp -d"):gsub("%s+$", "")
  end)

  teardown(function()
    sb:stop()
    os.execute("rm -rf " .. shell.q(dir))
  end)

  it("delivers no notice twice, settles every call once, and leaves at most the concurrency unknown", function()
    local seed = os.time()
    math.randomseed(seed)
    local per_kill, reached, kill_points, resumed_skips, late = {}, 0, {}, 0, 0
    local started = core.monotonic()
    for k = 1, KILLS do
      local tag, db, at
      -- a moment between the first outcomes and the last few hundred, as outcomes are written;
      -- a child that finished before the kill reached it (this machine is busy) is tried again
      repeat
        assert(sb:reset("lingdian"))
        late = late + (tag and 1 or 0)
        assert.is_true(late <= KILLS, "too many children finished before their kill")
        tag = "k" .. k .. "-" .. late
        db = dir .. "/" .. tag .. ".db"
        local target = 20 * math.random(1, (N - 300) / 20)
        local child = spawn.start(WORKER, sb.url, "sqlite", db, tostring(N), tag, tostring(CONCURRENCY))
        repeat
          local line = child.line()
          local n = line and tonumber(line:match("^settled (%d+)$"))
          if n and n >= target then at = n end
        until at or line == nil
        assert.is_number(at, "the child ended before the kill point " .. target)
        core.sleep(math.random() * 0.01) -- somewhere in the next steps, not just after a line
        child.kill("KILL")
        for _, line in ipairs(child.rest()) do
          if line:match("^{") then at = nil end -- its summary: it finished first
        end
      until at
      kill_points[k] = at

      local _, before = records_by_content(db)
      local left = before.sending or 0

      local resume = spawn.start(WORKER, sb.url, "sqlite", db, tostring(N), tag, tostring(CONCURRENCY))
      local lines = resume.rest()
      local summary = cjson.decode(lines[#lines])
      assert.is_nil(summary.error)
      assert.are.equal(N, summary.ok + summary.failed + summary.maybe_sent + summary.skipped)
      resumed_skips = resumed_skips + summary.skipped

      local by, states, total = records_by_content(db)
      -- one final state per call
      assert.are.equal(N, total)
      assert.is_nil(states.sending)
      for i = 1, N do
        local rec = by[tag .. "-" .. i]
        assert.is_table(rec, "no record of notice " .. i)
        assert.is_truthy(rec.state == "ok" or rec.state == "maybe_sent", rec.state)
      end
      -- what the sandbox accepted: once at most, and each one ok or maybe_sent
      local delivered = {}
      for _, r in ipairs(sb:records("lingdian", "messages")) do
        local c = r.params.content
        assert.is_nil(delivered[c], c .. " was delivered twice")
        delivered[c] = true
        assert.is_truthy(by[c] and (by[c].state == "ok" or by[c].state == "maybe_sent"), c .. " delivered but recorded " ..
          tostring(by[c] and by[c].state))
      end
      local maybe, arrived = states.maybe_sent or 0, 0
      for c, rec in pairs(by) do
        if rec.state == "ok" then assert.is_true(delivered[c] == true, c .. " is ok but was not delivered") end
        if rec.state == "maybe_sent" and delivered[c] then arrived = arrived + 1 end
      end
      -- the calls the kill left in sending are the maybe_sent ones, and no more than the concurrency
      assert.are.equal(left, maybe)
      assert.is_true(maybe <= CONCURRENCY, ("kill %d left %d calls maybe sent"):format(k, maybe))
      per_kill[k] = maybe
      reached = reached + arrived
    end
    local sum, most, least = 0, 0, math.huge
    for _, m in ipairs(per_kill) do
      sum, most, least = sum + m, math.max(most, m), math.min(least, m)
    end
    table.sort(kill_points)
    print(("\n[journal headline] %d SIGKILLs of a %d-notice batch (SQLite journal, concurrency %d), each resumed: "
      .. "duplicates 0, every call settled once (%d), maybe_sent per kill min %d / mean %.1f / max %d "
      .. "(%d of %d had reached the platform), resumes skipped %d recorded calls; killed after %d..%d outcomes "
      .. "(%d children finished before their kill and were run again); seed %d; %.1f s"):format(KILLS, N, CONCURRENCY,
      KILLS * N, least, sum / KILLS, most, reached, sum, resumed_skips, kill_points[1], kill_points[#kill_points], late,
      seed, core.monotonic() - started))
  end)

  it("costs a commit per window: the same batch with and without the journal (figures printed, bench/ measures)", function()
    local kaifang = require "kaifang"
    local ld = kaifang.lingdian.new{ developer_code = "U2QHNB2w=", developer_key = "744ed968e7e1a4aebafa6f4888fced68",
                                     base_url = sb.url }
    local rates = {}
    for _, with in ipairs({ false, true }) do
      assert(sb:reset("lingdian"))
      local i, j = 0, with and journal.sqlite(dir .. "/overhead.db") or nil
      local s = kaifang.batch(function()
        i = i + 1
        if i <= N then return { ld, "send_wechat_message", { tel = "13311112222", content = "o" .. i, link = "https://szai.0xiao.com/o" } } end
      end, { concurrency = CONCURRENCY, journal = j })
      assert.are.equal(N, s.ok)
      assert.are.equal(N, #sb:records("lingdian", "messages"))
      if j then
        assert.are.equal(N, j:report().ok)
        j:close()
      end
      rates[#rates + 1] = N / s.elapsed
    end
    ld:close()
    print(("\n[journal headline] overhead: %d notices at concurrency %d, %.0f/s without a journal, %.0f/s with SQLite "
      .. "(sync full): %.0f%% (one run on a shared machine; make bench compares best of three)"):format(N, CONCURRENCY,
      rates[1], rates[2], 100 * rates[2] / rates[1]))
  end)
end)
