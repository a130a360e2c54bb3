-- kaifang.batch with a journal (kaifang.journal.sqlite, kaifang.journal.redis) against the
-- sandbox: what a rerun sends and skips, keys, calls a crash left in `sending`, the report, a
-- clean stop, a journal that fails, and look-ups of maybe_sent calls.
local kaifang = require "kaifang"
local core = require "kaifang.core"
local journal = require "kaifang.journal"
local sandbox = require "kaifang.sandbox"
local redis = require "spec.helpers.redis"
local shell = require "spec.helpers.shell"

local CODE, KEY = "U2QHNB2w=", "744ed968e7e1a4aebafa6f4888fced68"
local LINK = "https://szai.0xiao.com/j"
local FOLLOWS, NOT_FOLLOWING = "13311112222", "13311114444"

describe("kaifang.batch with a journal", function()
  local sb, ld, server, dir, n = nil, nil, nil, nil, 0

  setup(function()
    sb = sandbox.start{ port = 0 }
    ld = kaifang.lingdian.new{ developer_code = CODE, developer_key = KEY, base_url = sb.url, timeout = 1 }
    server = redis.start()
    dir = shell.sh("mktemp -d"):gsub("%s+$", "")
  end)

  teardown(function()
    ld:close()
    sb:stop()
    server.stop()
    os.execute("rm -rf " .. shell.q(dir))
  end)

  before_each(function()
    assert(sb:reset())
    n = n + 1
  end)

  local function notice(content, tel, key)
    return { ld, "send_wechat_message", { tel = tel or FOLLOWS, content = content, link = LINK }, key and { key = key } or nil }
  end

  local function delivered()
    local count = {}
    for _, r in ipairs(sb:records("lingdian", "messages")) do count[r.params.content] = (count[r.params.content] or 0) + 1 end
    return count
  end

  -- runs a batch, collecting each call's outcome by index
  local function run(calls, j, opts)
    local out = {}
    opts = opts or {}
    opts.journal = j
    opts.on_result = function(i, value, err, info) out[i] = { value = value, err = err, info = info } end
    return kaifang.batch(calls, opts), out
  end

  local function behaves_like_a_journal(make)
    it("records every call; a rerun sends nothing again and reports what was recorded, as skipped", function()
      local j = make()
      local calls = { notice("a"), notice("b", NOT_FOLLOWING), notice("c") }
      local s1, first = run(calls, j)
      assert.are.same({ 2, 1, 0, 0 }, { s1.ok, s1.failed, s1.maybe_sent, s1.skipped })
      local s2, again = run(calls, j)
      assert.are.same({ 0, 0, 0, 3 }, { s2.ok, s2.failed, s2.maybe_sent, s2.skipped })
      assert.are.same({ a = 1, c = 1 }, delivered())
      assert.is_true(again[1].info.skipped)
      assert.are.equal(first[1].info.key, again[1].info.key)
      assert.are.equal(100, again[1].value.code) -- the recorded reply
      assert.are.equal(106, again[2].err.code) -- the recorded error
      assert.is_true(again[2].err.unreachable)
      local r = j:report()
      assert.are.same({ 3, 2, 1, 0, 0 }, { r.total, r.ok, r.failed, r.maybe_sent, r.sending })
      local failed = {}
      for rec in r:calls("failed") do failed[#failed + 1] = rec end
      assert.are.equal(1, #failed)
      assert.are.equal("send_wechat_message", failed[1].method)
      assert.are.equal(NOT_FOLLOWING, failed[1].args.tel)
      assert.are.equal("该用户未关注公众号，请提示其关注公众号", failed[1].error.message)
      assert.is_true(failed[1].acts)
      j:close()
    end)

    it("keys a call by platform, account, method and arguments, or by the caller's key; one key is one call", function()
      local j = make()
      local s, out = run({ notice("same"), notice("same"), notice("x", nil, "order-1"), notice("y", nil, "order-1") }, j)
      assert.are.same({ 2, 2 }, { s.ok, s.skipped })
      assert.are.same({ same = 1, x = 1 }, delivered()) -- "y" shares order-1's key: the same call
      assert.are.equal(out[1].info.key, out[2].info.key)
      assert.matches("^lingdian%.send_wechat_message:%x+$", out[1].info.key)
      assert.are.equal("order-1", out[4].info.key)
      assert.are.equal(100, out[4].value.code) -- both report its outcome
      j:close()
    end)

    it("settles an action a crash left in sending as maybe_sent without sending it; a read is sent again", function()
      local j = make()
      -- what a run that died after claiming leaves behind
      assert(j:begin())
      local canonical = journal.canonical{ user_code = "U2TD844B2" }
      local read_key = journal.key("lingdian", CODE, "get_user_tel_by_code", canonical)
      assert.are.equal("send", j:step({}, {
        { key = "left-" .. n, acts = true, platform = "lingdian", account = CODE, method = "send_wechat_message", args = "{}" },
      })[1])
      assert.are.equal("send", j:step({}, {
        { key = read_key, acts = false, platform = "lingdian", account = CODE, method = "get_user_tel_by_code", args = canonical },
      })[1])
      j:finish()
      j.lease = j.lease and 0.2 -- a Redis worker's lease runs out; SQLite needs none
      if j.lease then core.sleep(0.3) end
      local s, out = run({ notice("crashed", nil, "left-" .. n), { ld, "get_user_tel_by_code", { user_code = "U2TD844B2" } } }, j)
      assert.are.same({ 1, 1, 0 }, { s.ok, s.maybe_sent, s.skipped })
      assert.are.same({}, delivered())
      assert.are.equal("interrupted", out[1].err.kind)
      assert.is_true(out[1].err.maybe_sent)
      assert.are.equal("13311112222", out[2].value.data)
      local r = j:report()
      assert.are.same({ 1, 1, 0 }, { r.maybe_sent, r.ok, r.sending })
      j:close()
    end)

    it("stops cleanly: those in flight finish, the rest is left to the next run, which sends no notice twice", function()
      local j = make()
      assert(sb:configure{ lingdian = { latency = 0.05 } })
      local calls = {}
      for i = 1, 60 do calls[i] = notice("s" .. i) end
      local asked = 0
      local s1 = run(calls, j, { concurrency = 4, stop = function()
        asked = asked + 1
        return asked > 5 or nil
      end })
      assert.is_true(s1.stopped)
      assert.is_true(s1.ok > 0 and s1.ok < 60, s1.ok .. " sent")
      local r = j:report()
      assert.are.same({ s1.ok, 0, 0 }, { r.ok, r.sending, r.maybe_sent }) -- nothing left in sending
      assert(sb:configure{ lingdian = { latency = 0 } })
      local s2 = run(calls, j)
      assert.are.same({ 60 - s1.ok, s1.ok, 0 }, { s2.ok, s2.skipped, s2.maybe_sent })
      for content, times in pairs(delivered()) do assert.are.equal(1, times, content) end
      j:close()
    end)

    it("stops at once: the calls in flight are recorded as maybe_sent, and the next run sends only the rest", function()
      local j = make()
      -- answers come late, each after its own delay: the stop finds calls in flight
      assert(sb:admin("POST", "/_sandbox/faults", { lingdian = { latency = { 0.05, 0.6 }, seed = n } }))
      local calls = {}
      for i = 1, 20 do calls[i] = notice("now" .. i) end
      local asked = 0
      local s1, out = run(calls, j, { concurrency = 4, stop = function()
        asked = asked + 1
        return asked > 3 and "now" or nil
      end })
      assert(sb:admin("POST", "/_sandbox/faults", { lingdian = {} }))
      assert.is_true(s1.stopped)
      assert.is_true(s1.maybe_sent > 0 and s1.maybe_sent <= 4, s1.maybe_sent .. " abandoned")
      for _, o in pairs(out) do
        if o.err then assert.are.equal("interrupted", o.err.kind) end
      end
      local r = j:report()
      assert.are.same({ 0, s1.maybe_sent }, { r.sending, r.maybe_sent })
      local s2 = run(calls, j)
      assert.are.equal(20, s2.ok + s2.skipped)
      assert.are.equal(s1.ok + s1.maybe_sent, s2.skipped)
      for content, times in pairs(delivered()) do assert.are.equal(1, times, content) end
      j:close()
    end)
  end

  describe("kaifang.journal.sqlite", function()
    local path
    behaves_like_a_journal(function()
      path = dir .. "/run" .. n .. ".db"
      return journal.sqlite(path)
    end)

    it("is SQLite in WAL mode, readable by the sqlite3 command, and its owner's alone", function()
      path = dir .. "/cli.db"
      local j = journal.sqlite(path)
      run({ notice("q", nil, "k-1") }, j)
      j:close()
      assert.are.equal("k-1|ok\n", shell.sh("sqlite3 " .. shell.q(path) .. " 'select key, state from calls'"))
      assert.are.equal("wal\n", shell.sh("sqlite3 " .. shell.q(path) .. " 'pragma journal_mode'"))
      assert.are.equal("600\n", shell.sh("stat -c %a " .. shell.q(path)))
    end)

    it("is run by one process at a time", function()
      path = dir .. "/busy.db"
      local holder = journal.sqlite(path)
      assert(holder:begin())
      local s = kaifang.batch({ notice("never") }, { journal = journal.sqlite(path) })
      assert.is_true(s.stopped)
      assert.matches("another process is running a batch with this journal", tostring(s.error))
      assert.are.same({}, delivered())
      holder:close()
    end)

    it("forgets a call that failed before it left (its rate's store was down), so that the next run sends it", function()
      local j = journal.sqlite(dir .. "/unsent.db")
      local down = setmetatable({ take = function()
        return nil, require("kaifang.errors").new{ platform = "store", kind = "store", message = "down" }
      end }, { __index = kaifang.store.memory() })
      local limited = kaifang.lingdian.new{ developer_code = CODE, developer_key = KEY, base_url = sb.url, rate = 50,
                                            rate_store = down }
      local s = run({ { limited, "send_wechat_message", { tel = FOLLOWS, content = "u", link = LINK } } }, j)
      assert.are.same({ 0, 1 }, { s.ok, s.failed })
      assert.are.equal(0, j:report().total) -- not recorded: it never left
      s = run({ notice("u") }, j)
      assert.are.same({ 1, 0 }, { s.ok, s.skipped })
      assert.are.same({ u = 1 }, delivered())
      j:close()
    end)

    it("raises on misuse at the caller's line", function()
      assert.has_error(function() journal.sqlite("") end, "kaifang.journal.sqlite: expects the path of the journal's database")
      assert.has_error(function() journal.sqlite(dir .. "/x.db", { sinc = "full" }) end)
      assert.has_error(function() kaifang.batch({}, { journal = {} }) end)
      assert.has_error(function() kaifang.batch({}, { jurnal = {} }) end, "kaifang.batch: unknown option 'jurnal' (did you mean 'journal'?)")
    end)
  end)

  describe("kaifang.journal.redis", function()
    behaves_like_a_journal(function()
      return journal.redis{ port = server.port, prefix = "spec" .. n .. ":", lease = 5 }
    end)

    it("waits for a call another live worker holds, then reports how it ended", function()
      local prefix = "held" .. n .. ":"
      local other = journal.redis{ port = server.port, prefix = prefix, lease = 5 }
      assert(other:begin())
      local entry = { key = "shared", acts = true, platform = "lingdian", account = CODE, method = "send_wechat_message", args = "{}" }
      assert.are.equal("send", other:step({}, { entry })[1])
      local first, settled = nil, false
      local s, out = run({ notice("held", nil, "shared") }, journal.redis{ port = server.port, prefix = prefix }, {
        stop = function() -- asked between steps: after a while, the other worker gets its reply
          first = first or core.monotonic()
          if not settled and core.monotonic() - first > 0.3 then
            settled = true
            local state, outcome = journal.encode({ code = 100, data = {} })
            other:step({ { key = "shared", state = state, outcome = outcome } }, {})
          end
        end,
      })
      assert.is_true(settled) -- the batch went on until the other settled it
      assert.are.same({ 0, 1 }, { s.ok, s.skipped })
      assert.are.equal(100, out[1].value.code)
      assert.are.same({}, delivered())
      other:close()
    end)

    it("a journal that fails: nothing more is sent, and the batch says why", function()
      local down = redis.start()
      local j = journal.redis{ port = down.port, prefix = "down:" }
      local calls = {}
      for i = 1, 50 do calls[i] = notice("d" .. i) end
      local s = run(calls, j, { concurrency = 2, on_request = function() end, stop = function()
        if #sb:records("lingdian", "messages") >= 4 then down.stop() end
      end })
      assert.is_truthy(s.error)
      assert.are.equal("store", s.error.kind)
      assert.is_true(#sb:records("lingdian", "messages") < 50)
      assert.is_true(s.failed > 0) -- the calls it could not claim: failed, never sent
    end)
  end)

  describe("look-ups of maybe_sent calls", function()
    it("ZAFU msg_send with a dataKey: getMessageStatus shows whether it arrived", function()
      local z = kaifang.zafu.new{ client_id = "zafu-demo", client_secret = "9d1f6b3c27e84a05b6c0e1f2a3d4c5b6",
                                  app_id = "01", base_url = sb.url }
      local j = journal.sqlite(dir .. "/zafu.db")
      assert(j:begin())
      local function left(key, args)
        local canonical = journal.canonical(args)
        assert.are.equal("send", j:step({}, { { key = key, acts = true, platform = "zafu", account = "zafu-demo",
          method = "msg_send", args = canonical } })[1])
      end
      local arrived = { content = "到了", xgh = "20121032", messageType = 5, messageTo = "https://app/n", dataKey = "row-1" }
      local lost = { content = "没到", xgh = "20121032", messageType = 5, messageTo = "https://app/n", dataKey = "row-2" }
      local nokey = { content = "无键", xgh = "20121032", messageType = 5, messageTo = "https://app/n" }
      left("row-1", arrived)
      left("row-2", lost)
      left("row-3", nokey)
      assert(z:msg_send(arrived)) -- it had reached the platform before the crash
      j:finish()
      run({ { z, "msg_send", arrived, { key = "row-1" } }, { z, "msg_send", lost, { key = "row-2" } },
            { z, "msg_send", nokey, { key = "row-3" } } }, j)
      assert.are.equal(3, j:report().maybe_sent)
      local r = j:reconcile({ z }, { resend = true })
      assert.are.same({ checked = 2, took_effect = 1, did_not = 1, unknown = 1 }, r)
      local report = j:report()
      assert.are.same({ 1, 1, 2 }, { report.ok, report.maybe_sent, report.total }) -- row-2 forgotten: the next run sends it
      assert.is_nil(journal.lookup("lingdian", "send_wechat_message")) -- no platform offers one there
      j:close()
      z:close()
    end)
  end)
end)
