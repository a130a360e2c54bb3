-- A shared rate limit: three processes send notices from clients of one Lingdian account with
-- `rate = 100` held in one store (Redis, then a file on this machine); two send batches, one
-- single calls. From the times the processes handed each notice to their transport, after its
-- turn came: no 1-second window holds more than 100 + 5%, and together they reach at least 90 a
-- second; the sandbox received every one. Send times, not the sandbox's arrival times: the sandbox
-- is one process serving all three, and on a loaded machine a pause of its own bunches what it
-- records, which says nothing about the limiter (a limiter that leaked would show hundreds:
-- without one, the 360 notices go out in well under a second).
local cjson = require "cjson"
local sandbox = require "kaifang.sandbox"
local redis = require "spec.helpers.redis"
local shell = require "spec.helpers.shell"
local spawn = require "spec.helpers.spawn"

local RATE, PER_PROCESS = 100, 120
local MOST = RATE * 1.05
local WORKER = spawn.dir .. "rate_worker.lua"

describe("a client's rate shared by three processes", function()
  local sb, server, dir

  setup(function()
    sb = sandbox.start{ port = 0 }
    server = redis.start()
    dir = shell.sh("mktemp -d"):gsub("%s+$", "")
  end)

  teardown(function()
    sb:stop()
    server.stop()
    os.execute("rm -rf " .. shell.q(dir))
  end)

  local function run(kind, where)
    assert(sb:reset("lingdian"))
    local children = {}
    for i, mode in ipairs({ "batch", "batch", "single" }) do
      children[i] = spawn.spawn(WORKER, sb.url, kind, where, tostring(PER_PROCESS), kind .. i, mode, tostring(RATE))
    end
    local times = {}
    for _, c in ipairs(children) do
      local lines = c.lines()
      local r = cjson.decode(lines[#lines])
      assert.are.same({}, r.errors)
      assert.are.equal(PER_PROCESS, r.ok)
      for _, t in ipairs(r.sent) do times[#times + 1] = t end
    end
    assert.are.equal(3 * PER_PROCESS, #sb:records("lingdian", "messages"))
    table.sort(times)
    assert.are.equal(3 * PER_PROCESS, #times)
    local most, j = 0, 1
    for i = 1, #times do -- the busiest 1-second window, [times[j], times[i]]
      while times[i] - times[j] >= 1 do j = j + 1 end
      most = math.max(most, i - j + 1)
    end
    local overall = (#times - 1) / (times[#times] - times[1])
    print(("\n[rate headline] %s store, 3 processes sharing %d calls/s: busiest 1-second window of sends %d calls "
      .. "(at most %g), %.1f calls/s overall over %.1f s"):format(kind, RATE, most, MOST, overall,
      times[#times] - times[1]))
    assert.is_true(most <= MOST, most .. " calls in one second")
    assert.is_true(overall >= RATE * 0.9, overall .. " calls/s")
  end

  it("a single call waits for its turn, and gives up with a clear error when it is further than its timeout", function()
    assert(sb:reset("lingdian"))
    local kaifang = require "kaifang"
    local core = require "kaifang.core"
    local function client(rate, timeout)
      return kaifang.lingdian.new{ developer_code = "U2QHNB2w=", developer_key = "744ed968e7e1a4aebafa6f4888fced68",
                                   base_url = sb.url, timeout = timeout, rate = rate }
    end
    local n = 0
    local function args() -- a notice of its own each time: the same one twice is refused as a replay
      n = n + 1
      return { tel = "13311112222", content = "turn " .. n, link = "https://szai.0xiao.com/r" }
    end
    local a, b = client(5, 2), client(5, 2) -- two clients of one account share the process's store
    local t0 = core.monotonic()
    assert(a:send_wechat_message(args()))
    assert(b:send_wechat_message(args()))
    assert(a:send_wechat_message(args()))
    local spent = core.monotonic() - t0
    assert.is_true(spent >= 0.38, spent .. " s for three calls at 5/s")
    local slow = client(5, 0.1)
    assert(a:send_wechat_message(args())) -- the next turn is 0.2 s away: past slow's timeout
    local res, err = slow:send_wechat_message(args())
    assert.is_nil(res)
    assert.are.equal("timeout", err.kind)
    assert.are.equal("rate_limit", err.code)
    assert.is_false(err.maybe_sent)
    assert.matches("the shared rate of 5 calls/s would hold this call 0%.%d s, past its timeout %(0%.1 s left of 0%.1 s%)", tostring(err))
    assert.are.equal(4, #sb:records("lingdian", "messages")) -- the one that gave up was never sent
    assert.has_error(function() client(0, 1) end, "kaifang.lingdian: option 'rate' must be a positive number of calls per second")
  end)

  it("through Redis, across machines", function() run("redis", tostring(server.port)) end)
  it("through a file, across the processes of one machine", function() run("file", dir .. "/rate.store") end)
end)
