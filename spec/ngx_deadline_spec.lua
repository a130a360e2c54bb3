-- Deadlines and per-account slots inside a real nginx (one worker, spec/nginx/nginx.conf), in front
-- of the sandbox with a slow Lingdian: a call queued in the thread pool past its deadline is not
-- sent; a slow platform with 200 calls in flight neither reaches nginx's 100 thread VMs nor holds
-- up ZAFU on the same worker. Counts and order are asserted, times only with wide margins: the
-- machine may be busy.
local core = require "kaifang.core"
local cjson = require "cjson"
local sandbox = require "kaifang.sandbox"
local harness = dofile("spec/nginx/harness.lua")

local wait_for = harness.wait_for

describe("kaifang in nginx under a slow platform", function()
  local sb, ng

  setup(function()
    local found, why = harness.find()
    assert(found, why)
    sb = sandbox.start{ port = 0 }
    ng = harness.start{ conf = "spec/nginx/nginx.conf", workers = 1, env = { sandbox = sb.url, credentials = sb.credentials } }
  end)

  teardown(function()
    if ng then ng:stop() end
    if sb then sb:stop() end
  end)

  after_each(function() sb:configure{ lingdian = { latency = cjson.null } } end)

  local function sent(platform) return sb:admin("GET", "/_sandbox/requests?platform=" .. platform).count end

  local function get(path)
    local status, body, _, out = ng:get(path)
    assert.are.equal(200, status, body)
    return out, body
  end

  it("does not send a call that waited in the thread pool's queue past its deadline", function()
    -- 2 threads, the sandbox answering after 3 s: two calls of 2 s take the threads and time out at
    -- their deadline; the two behind them, of 1 s each (per-call timeouts), get a thread only then
    assert(sb:configure{ lingdian = { latency = 3 } })
    local before = sent("lingdian")
    local out, body = get("/burst?platform=lingdian&n=4&pool=kaifang_small&concurrency=16&timeouts=2,2,1,1")
    local queued, in_flight = {}, {}
    for _, c in ipairs(out.calls) do
      assert.is_false(c.ok, body)
      assert.are.equal("timeout", c.err.kind, body)
      if c.err.code == "deadline" then queued[#queued + 1] = c else in_flight[#in_flight + 1] = c end
    end
    assert.are.equal(2, #queued, body)
    assert.are.equal(2, #in_flight, body)
    for _, c in ipairs(queued) do
      assert.is_false(c.err.maybe_sent)
      assert.is_true(c.err.retryable)
      assert.matches("waited %d%.%d s for a thread of pool 'kaifang_small'", c.err.message)
      assert.is_true(c.elapsed >= 1.9, body) -- it learnt when a thread took it, after its deadline
    end
    for _, c in ipairs(in_flight) do assert.are.equal(28, c.err.code, body) end -- libcurl's timeout, at the deadline
    assert.is_true(out.elapsed < 2.9, body) -- no one waited for the sandbox's 3 s
    assert.are.equal(2, sent("lingdian") - before, "the sandbox got the queued calls too")
  end)

  it("takes back the slots of calls whose request ended while they were in flight", function()
    -- concurrency 2, 1 s: two calls left in flight by a request that ends at once (ngx.exit)
    assert(sb:configure{ lingdian = { latency = 3 } })
    local before = sent("lingdian")
    local t0 = core.monotonic()
    local status, body = ng:get("/abandon?n=2&concurrency=2&timeout=1")
    assert.are.equal(200, status, body)
    wait_for("the sandbox to hold the 2 calls", 5, function() return sent("lingdian") - before >= 2 end)
    local out, obody = get("/burst?platform=lingdian&n=1&concurrency=2&timeout=0.3")
    assert.are.equal("busy", out.calls[1].err.code, obody) -- their slots are held
    assert(sb:configure{ lingdian = { latency = cjson.null } })
    core.sleep(math.max(0, t0 + 3.5 - core.monotonic())) -- their deadline (1 s) and 2 s more
    out, obody = get("/burst?platform=lingdian&n=2&concurrency=2&timeout=2")
    assert.are.equal(2, out.ok, obody)
    assert.is_nil(ng:log():match("[^\n]*%[error%][^\n]*lua[^\n]*"))
  end)

  it("keeps ZAFU at its normal latency, with one token, while Lingdian holds 200 calls for 2 s", function()
    assert(sb:configure{ lingdian = { latency = 2 } })
    local lingdian_before = sent("lingdian")
    local tokens_before = sb:admin("GET", "/_sandbox/zafu/tokens").issued
    local baseline = get("/burst?platform=zafu&n=1&token_key=spec:baseline")
    assert.are.equal(1, baseline.ok, cjson.encode(baseline))

    local key = "load" .. core.random_hex(4)
    assert.is_true(get("/burst?platform=lingdian&n=200&bg=" .. key).started)
    -- the slow platform has its calls in flight: the account's 16 slots are taken
    wait_for("the sandbox to hold 16 Lingdian calls", 10, function() return sent("lingdian") - lingdian_before >= 16 end)
    local zafu, zbody = get("/burst?platform=zafu&n=8&token_key=spec:during-load")
    local load = wait_for("the 200 Lingdian calls to end", 30, function()
      local status, _, _, r = ng:get("/burst/result?key=" .. key)
      return status == 200 and r
    end)
    local lbody = cjson.encode(load)

    -- ZAFU: all 8 made, one token fetched for them, none waited out its token or its deadline
    assert.are.equal(8, zafu.ok, zbody)
    assert.are.equal(1, zafu.fetched, zbody)
    assert.are.equal(1, sb:admin("GET", "/_sandbox/zafu/tokens").issued - tokens_before - baseline.fetched, zbody)
    local slowest = 0
    for _, c in ipairs(zafu.calls) do
      assert.is_true(c.elapsed < 1.5, zbody) -- milliseconds normally; Lingdian's calls take 2 s each
      slowest = math.max(slowest, c.elapsed)
    end
    -- Lingdian: a slot at a time per account; the calls that found none by their 5 s deadline
    -- failed there, never sent, and none reached nginx's limit of 100 thread VMs
    assert.are.equal(200, load.n)
    assert.is_true(load.ok >= 16, lbody)
    local busy, unsent = 0, 0
    for _, c in ipairs(load.calls) do
      if not c.ok then
        assert.are.equal("timeout", c.err.kind, lbody)
        if not c.err.maybe_sent then unsent = unsent + 1 end
        if c.err.code == "busy" then
          busy = busy + 1
          assert.is_false(c.err.maybe_sent)
          assert.is_true(c.err.retryable)
          assert.matches("for one of the 16 slots of lingdian account", c.err.message, 1, true)
          assert.is_true(c.elapsed >= 4.9, lbody) -- it waited out its deadline
        end
      end
    end
    assert.is_true(busy >= 100, lbody)
    assert.are.equal(200 - unsent, sent("lingdian") - lingdian_before, lbody) -- the rest were sent, and only they
    assert.is_nil(ng:log():find("no available Lua vm", 1, true))
    io.stderr:write(("\n[openresty] Lingdian held 2 s, 200 calls in flight: %d ok, %d gave up waiting for a slot; "
      .. "8 ZAFU calls meanwhile: %d ok, slowest %.0f ms, %d token\n"):format(load.ok, busy, zafu.ok, slowest * 1000, zafu.fetched))
  end)
end)
