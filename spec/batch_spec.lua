-- kaifang.batch against the sandbox with faults on: every call ends in exactly one outcome,
-- nothing reported ok is missing, nothing is delivered twice, the rate limit holds.
local kaifang = require "kaifang"
local sandbox = require "kaifang.sandbox"

local CODE, KEY = "U2QHNB2w=", "744ed968e7e1a4aebafa6f4888fced68"
local LINK = "https://szai.0xiao.com/x"
local TELS = { "13311112222", "13311113333" }

describe("kaifang.batch", function()
  local sb, ld

  setup(function()
    sb = sandbox.start{ port = 0 }
    ld = kaifang.lingdian.new{ developer_code = CODE, developer_key = KEY, base_url = sb.url, timeout = 1 }
  end)

  teardown(function()
    if ld then ld:close() end
    if sb then sb:stop() end
  end)

  before_each(function() assert(sb:reset()) end)

  local function faults(settings)
    local res, status = sb:admin("POST", "/_sandbox/faults", { lingdian = settings })
    assert.are.equal(200, status)
    return res
  end

  local function notices(n, prefix)
    local i = 0
    return function()
      i = i + 1
      if i > n then return nil end
      return { ld, "send_wechat_message", { tel = TELS[i % 2 + 1], content = prefix .. i, link = LINK } }
    end
  end

  it("10,000 notices with 10% faults: one outcome each, every ok delivered, none twice", function()
    local N = 10000
    faults{ http_5xx = 0.02, reset_before = 0.02, reset_after = 0.02, too_frequent = 0.03, never = 0.01, seed = 11 }
    local outcomes, oks, maybes, kinds = {}, {}, {}, {}
    local summary = kaifang.batch(notices(N, "n"), {
      concurrency = 32, backoff_base = 0.01, backoff_cap = 0.05,
      on_result = function(i, value, err)
        outcomes[i] = (outcomes[i] or 0) + 1
        if value then oks[i] = true
        else
          kinds[err.kind] = (kinds[err.kind] or 0) + 1
          if err.maybe_sent then maybes[i] = err end
        end
      end,
    })
    local report = sb:admin("GET", "/_sandbox/faults")
    local injected = report.injected.lingdian

    -- exactly one outcome per call
    for i = 1, N do assert.are.equal(1, outcomes[i], "call " .. i) end
    assert.are.equal(N, summary.ok + summary.failed + summary.maybe_sent)

    -- what the platform accepted: each content at most once; every ok among them
    local seen, dup = {}, 0
    for _, r in ipairs(sb:records("lingdian", "messages")) do
      local i = tonumber(r.params.content:match("^n(%d+)$"))
      if seen[i] then dup = dup + 1 end
      seen[i] = true
    end
    assert.are.equal(0, dup)
    assert.are.equal(0, sb:counters().lingdian.duplicates) -- the sandbox's own detector agrees
    for i in pairs(oks) do assert.is_true(seen[i] == true, "ok call " .. i .. " was not delivered") end

    -- faults that hit a notice after it may have arrived end as maybe_sent, never repeated;
    -- "too frequent" was retried
    assert.is_true(summary.maybe_sent >= (injected.reset_after or 0) + (injected.never or 0))
    assert.is_true(summary.retries >= (injected.too_frequent or 0) - 5)
    assert.is_true((kinds.timeout or 0) >= (injected.never or 0))
    for _, err in pairs(maybes) do
      assert.is_false(err.retryable)
      assert.are.equal("lingdian", err.platform)
    end
    print(("\n  batch with faults: %d calls, ok %d, failed %d, maybe_sent %d, retries %d, %.1f s; injected %s"):format(
      N, summary.ok, summary.failed, summary.maybe_sent, summary.retries, summary.elapsed,
      require("cjson").encode(injected)))
  end)

  -- every fault but "never", which spends the call's whole deadline (see the next spec)
  it("retries reads through every fault until they succeed", function()
    faults{ http_5xx = 0.05, reset_before = 0.05, reset_after = 0.05, too_frequent = 0.05, seed = 3 }
    local n, got = 0, 0
    local summary = kaifang.batch(function()
      n = n + 1
      if n <= 500 then return { ld, "get_user_tel_by_code", { user_code = "U2TD844B2" } } end
    end, { concurrency = 16, max_attempts = 8, backoff_base = 0.01, on_result = function(_, res)
      if res and res.data == "13311112222" then got = got + 1 end
    end })
    assert.are.equal(500, summary.ok)
    assert.are.equal(500, got)
    assert.is_true(summary.retries > 0)
  end)

  it("gives a call one deadline: a read that timed out is not tried again past it", function()
    faults{ never = 1 }
    local errs = {}
    local summary = kaifang.batch({ { ld, "get_user_tel_by_code", { user_code = "U2TD844B2" } },
                                    { ld, "get_user_tel_by_code", { user_code = "U2TD844B2" }, { timeout = 0.3 } } },
      { max_attempts = 4, backoff_base = 0.01, on_result = function(i, _, err) errs[i] = err end })
    assert.are.equal(2, summary.maybe_sent) -- timed out once sent, as a read may be
    assert.are.equal(0, summary.retries)
    for i = 1, 2 do
      assert.are.equal("timeout", errs[i].kind)
      assert.are.equal(28, errs[i].code) -- libcurl's: the transfer itself ran out of time
    end
    assert.is_true(summary.elapsed >= 0.95 and summary.elapsed < 2, summary.elapsed) -- 1 s, not 4 attempts of 1 s
  end)

  it("counts a call's wait for its client's shared rate against its deadline", function()
    local slow = kaifang.lingdian.new{ developer_code = CODE, developer_key = KEY, base_url = sb.url, rate = 5 }
    local calls, errs = {}, {}
    for i = 1, 4 do calls[i] = { slow, "get_user_tel_by_code", { user_code = "U2TD844B2" }, { timeout = 0.3 } } end
    -- 4 calls taken up at once at 5/s: the 3rd and 4th turns are 0.4 s away, past their 0.3 s
    local summary = kaifang.batch(calls, { concurrency = 4, on_result = function(i, _, err) errs[i] = err end })
    slow:close()
    assert.are.equal(2, summary.ok)
    assert.are.equal(2, summary.failed)
    for i = 3, 4 do
      assert.are.equal("timeout", errs[i].kind)
      assert.are.equal("rate_limit", errs[i].code)
      assert.is_false(errs[i].maybe_sent)
      assert.matches("past its timeout %(0%.%d s left of 0%.3 s%)", errs[i].message)
    end
  end)

  it("never repeats an action that timed out after it was sent, and says so", function()
    faults{ never = 1 }
    local errs = {}
    local summary = kaifang.batch(notices(5, "t"), { on_result = function(i, _, err) errs[i] = err end })
    assert.are.equal(5, summary.maybe_sent)
    assert.are.equal(0, summary.retries)
    for i = 1, 5 do
      assert.are.equal("timeout", errs[i].kind)
      assert.is_true(errs[i].maybe_sent)
      assert.is_false(errs[i].retryable)
    end
    assert.are.equal(5, #sb:records("lingdian", "messages")) -- they did arrive
  end)

  it("an idempotent = true override lets an action that may have been sent be repeated", function()
    faults{ reset_after = 1 }
    local calls = { { ld, "send_wechat_message", { tel = TELS[1], content = "idem", link = LINK }, { idempotent = true, timeout = 5 } } }
    -- a backoff of 1 s at least: a repeat within the same second would be refused as a replay
    local summary = kaifang.batch(calls, { max_attempts = 2, backoff_base = 2 })
    assert.are.equal(1, summary.retries)
    assert.are.equal(2, #sb:records("lingdian", "messages"))
    assert.are.equal(1, sb:counters().lingdian.duplicates) -- and the sandbox saw it twice
  end)

  it("the sandbox's duplicate counter catches a notice listed twice", function()
    local notice = { tel = TELS[1], content = "取件码 6-2-3001", link = LINK }
    local calls = { { ld, "send_wechat_message", notice }, { ld, "send_wechat_message", { tel = TELS[2], content = "x", link = LINK } },
                    { ld, "send_wechat_message", notice } }
    kaifang.batch(calls, { concurrency = 1 })
    local c = sb:counters().lingdian
    assert.are.equal(1, c.duplicates) -- refused as a replay within the same second, delivered twice otherwise
    local d = sb:records("lingdian", "duplicates")
    assert.are.equal(1, #d)
    assert.are.equal(2, d[1].count)
    assert.are.equal(2 - c.refused, #sb:records("lingdian", "messages") - 1)
  end)

  it("a single call on a reused connection reset after acting: maybe_sent, and libcurl did not resend it", function()
    assert(ld:get_user_tel_by_code{ user_code = "U2TD844B2" }) -- the connection is now kept alive
    faults{ reset_after = 1 }
    local ok, err = ld:send_wechat_message{ tel = TELS[1], content = "once", link = LINK }
    faults{}
    assert.is_nil(ok)
    assert.is_true(err.maybe_sent)
    assert.is_false(err.retryable)
    assert.are.equal(1, #sb:records("lingdian", "messages"))
  end)

  it("ZAFU: a token refused mid-batch is dropped once and the calls go on with a new one", function()
    local z = kaifang.zafu.new{ client_id = "zafu-demo", client_secret = "9d1f6b3c27e84a05b6c0e1f2a3d4c5b6",
                                app_id = "01", base_url = sb.url }
    assert(z:access_token())
    local _, status = sb:admin("POST", "/_sandbox/zafu/expire")
    assert.are.equal(200, status)
    local calls = {}
    for i = 1, 20 do calls[i] = { z, "must_task_list", {} } end
    local summary = kaifang.batch(calls, { concurrency = 4, max_attempts = 1 })
    assert.are.equal(20, summary.ok)
    assert.is_true(summary.retries >= 1)
    local tokens = sb:admin("GET", "/_sandbox/zafu/tokens")
    assert.are.equal(2, tokens.issued) -- the first, and one replacement for the whole batch
    z:close()
  end)

  it("reports bad calls as failed without stopping the batch", function()
    local results = {}
    local summary = kaifang.batch({
      { ld, "send_wechat_message", { tel = TELS[1] } },
      { ld, "no_such_method", {} },
      "not a call",
      { ld, "get_user_tel_by_code", { user_code = "U2TD844B2" } },
    }, { on_result = function(i, v, err) results[i] = v or err end })
    assert.are.equal(1, summary.ok)
    assert.are.equal(3, summary.failed)
    assert.are.equal("argument", results[1].kind)
    assert.matches("missing required parameter", results[1].message)
    assert.are.equal("13311112222", results[4].data)
  end)

  it("holds the rate within 5% over 10 seconds", function()
    local rate, started = 50, nil
    local sent = {}
    local n = 0
    local summary = kaifang.batch(function()
      n = n + 1
      if n <= 501 then return { ld, "get_user_tel_by_code", { user_code = "U2TD844B2" } } end
    end, { concurrency = 8, rate = rate, on_request = function() sent[#sent + 1] = require("kaifang.core").monotonic() end })
    started = sent[1]
    local span = sent[#sent] - started
    local measured = (#sent - 1) / span
    print(("\n  rate limit: asked %d/s, measured %.2f/s over %.2f s"):format(rate, measured, span))
    assert.are.equal(501, summary.ok)
    assert.is_true(math.abs(measured - rate) / rate <= 0.05)
    -- and no one-second window ever holds more than rate + 1 starts
    local j = 1
    for i = 1, #sent do
      while sent[i] - sent[j] >= 1 do j = j + 1 end
      assert.is_true(i - j + 1 <= rate + 1)
    end
  end)

  it("calls the client's and the batch's hooks with the secret-free URL", function()
    local infos = {}
    kaifang.batch({ { ld, "get_user_tel_by_code", { user_code = "U2TD844B2" } } },
      { on_response = function(info) infos[#infos + 1] = info end })
    assert.are.equal(1, #infos)
    assert.are.equal("lingdian", infos[1].platform)
    assert.are.equal("get_user_tel_by_code", infos[1].method)
    assert.are.equal(200, infos[1].http_status)
    assert.is_number(infos[1].elapsed_ms)
    assert.is_nil(infos[1].url:find(KEY, 1, true))
  end)
end)
