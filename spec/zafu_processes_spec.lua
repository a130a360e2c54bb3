-- The headline test: 8 processes x 200 calls against the ZAFU sandbox with a token lifetime of 2 s
-- (refreshed 1 s ahead), so that the token rolls over several times during each run.
--   * sharing a file store, then a Redis store: zero calls fail, and the sandbox issues no more
--     tokens than the lifetime requires;
--   * each process with its own memory store: the failure the shared stores prevent, where every
--     fetch knocks the others' tokens out (the sandbox counts the invalid-token refusals).
local cjson = require "cjson"
local core = require "kaifang.core"
local sandbox = require "kaifang.sandbox"
local redis = require "spec.helpers.redis"
local spawn = require "spec.helpers.spawn"

local PROCESSES, CALLS = 8, 200
local TTL, AHEAD = 2, 1 -- token lifetime and refresh-ahead margin, seconds
local INTERVAL = 0.025 -- between one process's calls: a run lasts about 5 s

describe("ZAFU: one token shared by 8 processes", function()
  local sb, server, dir

  setup(function()
    sb = sandbox.start({ port = 0, config = { zafu = { token_ttl = TTL } } })
    server = redis.start()
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p '" .. dir .. "'"))
  end)

  teardown(function()
    sb:stop()
    server.stop()
    os.execute("rm -rf '" .. dir .. "'")
  end)

  local function run(kind, where)
    assert(sb:reset("zafu"))
    local started = core.monotonic()
    local workers = {}
    for i = 1, PROCESSES do
      workers[i] = spawn.spawn(spawn.dir .. "zafu_worker.lua", sb.url .. "/zafu", kind, where or "-", CALLS, INTERVAL, AHEAD)
    end
    local total = { kind = kind, calls = 0, ok = 0, failed = 0, client_refused = 0, fetched = 0, errors = {} }
    for _, w in ipairs(workers) do
      local lines = w.lines()
      local r = assert(cjson.decode(lines[#lines] or "null"), "a worker printed nothing")
      total.calls = total.calls + r.ok + r.failed
      total.ok, total.failed = total.ok + r.ok, total.failed + r.failed
      total.client_refused = total.client_refused + r.refused
      total.fetched = total.fetched + r.fetched
      for _, e in ipairs(r.errors) do
        if #total.errors < 5 then total.errors[#total.errors + 1] = e end
      end
    end
    total.elapsed = core.monotonic() - started
    local tokens = assert(sb:records("zafu", "tokens"))
    total.issued, total.refused = tokens.issued, tokens.refused
    -- one token to start with, then one per (lifetime - margin), and a little slack
    total.required = math.ceil(total.elapsed / (TTL - AHEAD)) + 1
    print(("\n[zafu headline] %-6s store: %d processes, calls made %d, failed %d, tokens issued %d (lifetime allows %d), "
      .. "refused for their token: %d invalid, %d expired; %.1f s"):format(kind, PROCESSES, total.calls, total.failed,
      total.issued, total.required, total.refused.invalid, total.refused.expired, total.elapsed))
    for _, e in ipairs(total.errors) do print("  e.g. " .. e) end
    return total
  end

  local function shared_run(kind, where)
    local r = run(kind, where)
    assert.equal(PROCESSES * CALLS, r.calls)
    assert.same({}, r.errors)
    assert.equal(0, r.failed)
    assert.is_true(r.issued >= 3, "the token should have rolled over several times: " .. r.issued)
    assert.is_true(r.issued <= r.required + 1,
      ("%d tokens issued where the lifetime requires about %d"):format(r.issued, r.required))
    assert.equal(r.issued, r.fetched) -- every fetch was a store's single flight
    assert.is_true(r.elapsed < 30)
  end

  it("sharing a file store: no call fails, no more tokens than the lifetime requires", function()
    shared_run("file", dir .. "/zafu.token")
  end)

  it("sharing a Redis store: no call fails, no more tokens than the lifetime requires", function()
    shared_run("redis", tostring(server.port))
  end)

  it("with a memory store each: the processes knock each other's tokens out", function()
    local r = run("memory")
    assert.equal(PROCESSES * CALLS, r.calls)
    assert.is_true(r.refused.invalid > 0, "expected invalid-token refusals")
    assert.is_true(r.issued > r.required, "expected far more tokens than the lifetime requires")
  end)
end)
