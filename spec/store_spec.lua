-- The token stores: one behaviour for memory, file and Redis, then what is particular to each
-- (file modes and atomic replacement, Redis auth/db/reconnect), and mutual exclusion between
-- processes through the store's lock.
local core = require "kaifang.core"
local errors = require "kaifang.errors"
local store = require "kaifang.store"
local redis = require "spec.helpers.redis"
local spawn = require "spec.helpers.spawn"

local SPEC = "store_spec.lua"

local function tmpdir()
  local d = os.tmpname()
  os.remove(d)
  assert(os.execute("mkdir -p '" .. d .. "'"))
  return d
end

local function mode_of(path)
  local fh = io.popen("stat -c %a '" .. path .. "'")
  local m = fh:read("*l")
  fh:close()
  return m
end

local function is_store_error(err)
  assert.is_true(errors.is(err), "not a kaifang error: " .. tostring(err))
  assert.equal("store", err.platform)
  assert.equal("store", err.kind)
  assert.matches("^kaifang%.store: store error", tostring(err))
end

-- Walks a value and everything reachable through tables, looking for a string.
local function reachable(value, needle, seen)
  seen = seen or {}
  if type(value) == "string" then return value:find(needle, 1, true) ~= nil end
  if type(value) ~= "table" or seen[value] then return false end
  seen[value] = true
  for k, v in pairs(value) do
    if reachable(k, needle, seen) or reachable(v, needle, seen) then return true end
  end
  local mt = getmetatable(value)
  return mt ~= nil and type(mt) == "table" and mt.__index ~= mt and reachable(mt, needle, seen)
end

-- The behaviour every store shares. make() -> store, advance(seconds) (moves its clock on).
local function behaves_like_a_store(make)
  local s, advance
  before_each(function() s, advance = make() end)

  it("gets nothing for an absent key, without an error", function()
    local v, err = s:get("absent")
    assert.is_nil(v)
    assert.is_nil(err)
  end)

  it("sets, gets and overwrites", function()
    assert.is_true(s:set("k", "one", 60))
    assert.equal("one", s:get("k"))
    assert.is_true(s:set("k", "two ümlaut {\"json\":1}", 60))
    assert.equal("two ümlaut {\"json\":1}", s:get("k"))
  end)

  it("forgets a value when its ttl runs out, keeps one without a ttl", function()
    assert.is_true(s:set("short", "v", 0.2))
    assert.is_true(s:set("forever", "w"))
    assert.equal("v", s:get("short"))
    advance(0.3)
    assert.is_nil(s:get("short"))
    assert.equal("w", s:get("forever"))
  end)

  it("deletes only the value it is told", function()
    assert.is_true(s:set("k", "current", 60))
    assert.is_false(s:delete_if_equal("k", "stale"))
    assert.equal("current", s:get("k"))
    assert.is_true(s:delete_if_equal("k", "current"))
    assert.is_nil(s:get("k"))
    assert.is_false(s:delete_if_equal("k", "current"))
  end)

  it("locks for one owner at a time; the owner may take it again; only the owner unlocks", function()
    assert.is_true(s:lock("L", "a", 30))
    assert.is_false(s:lock("L", "b", 30))
    assert.is_true(s:lock("L", "a", 30))
    assert.is_false(s:unlock("L", "b"))
    assert.is_false(s:lock("L", "b", 30))
    assert.is_true(s:unlock("L", "a"))
    assert.is_false(s:unlock("L", "a"))
    assert.is_true(s:lock("L", "b", 30))
  end)

  it("lets a stale lock past its ttl be taken over", function()
    assert.is_true(s:lock("L", "crashed", 0.2))
    assert.is_false(s:lock("L", "b", 30))
    advance(0.3)
    assert.is_true(s:lock("L", "b", 30))
    assert.is_false(s:unlock("L", "crashed"))
  end)

  it("keeps locks and values apart", function()
    assert.is_true(s:lock("same", "a", 30))
    assert.is_nil(s:get("same"))
    assert.is_true(s:set("same", "value", 30))
    assert.is_false(s:lock("same", "b", 30))
  end)

  it("shares a rate: takes slots 1/rate apart, refuses (taking nothing) one further than max_wait", function()
    local function near(want, got) assert.is_true(math.abs(got - want) < 0.02, ("%s, not %s"):format(got, want)) end
    near(0, assert(s:take("r", 10)))
    near(0.1, assert(s:take("r", 10)))
    local none, wait = s:take("r", 10, { max_wait = 0.15 })
    assert.is_nil(none)
    near(0.2, wait)
    near(0.2, assert(s:take("r", 10))) -- the refused one took nothing
    near(0, assert(s:take("other", 10))) -- keys apart
    near(0, assert(s:take("b", 10, { burst = 3 })))
    near(0, assert(s:take("b", 10, { burst = 3 })))
    near(0, assert(s:take("b", 10, { burst = 3 })))
    near(0.1, assert(s:take("b", 10, { burst = 3 })))
  end)

  it("never shows a value in tostring or through the store's fields", function()
    local secret = "S3cr3tT0k3nValue"
    assert.is_true(s:set("token", secret, 60))
    assert.is_nil(tostring(s):find(secret, 1, true))
    assert.is_false(reachable(s, secret))
  end)

  it("raises at the caller's line on misuse", function()
    for _, bad in ipairs({
      function() s:get(nil) end,
      function() s:set("k", 42) end,
      function() s:set("k", "v", -1) end,
      function() s:lock("k", "", 5) end,
      function() s:lock("k", "o") end,
      function() s:take("k", 0) end,
      function() s:take("k", 1, { burst = 0 }) end,
    }) do
      local ok, err = pcall(bad)
      assert.is_false(ok)
      assert.matches(SPEC .. ":%d+: kaifang%.store:", tostring(err))
    end
  end)
end

-- Four processes, fifty increments each under the lock: no update may be lost.
local function excludes_other_processes(kind, where)
  local workers = {}
  for i = 1, 4 do workers[i] = spawn.spawn(spawn.dir .. "store_worker.lua", kind, where, "50", "owner-" .. i) end
  for i = 1, 4 do assert.same({ "done 50" }, workers[i].lines()) end
end

describe("kaifang.store", function()
  it("checks that an object can serve as a store", function()
    assert.is_nil(store.check(store.memory()))
    assert.matches("'delete_if_equal'", store.check({ get = print, set = print }))
    assert.matches("object", store.check(42))
  end)

  describe("memory", function()
    behaves_like_a_store(function()
      local t = 1000
      return store.memory({ clock = function() return t end }), function(d) t = t + d end
    end)

    it("names itself", function() assert.equal("kaifang.store.memory", tostring(store.memory())) end)
  end)

  describe("file", function()
    local dir
    setup(function() dir = tmpdir() end)
    teardown(function() os.execute("rm -rf '" .. dir .. "'") end)

    local n = 0
    behaves_like_a_store(function()
      n = n + 1
      local t = 1000
      return store.file(dir .. "/behaviour" .. n .. ".json", { clock = function() return t end }),
        function(d) t = t + d end
    end)

    it("writes the file and its lock file with mode 0600 and leaves no temporary file", function()
      local path = dir .. "/modes.json"
      local s = store.file(path)
      assert.is_true(s:set("k", "v", 60))
      assert.is_true(s:lock("L", "o", 60))
      assert.equal("600", mode_of(path))
      assert.equal("600", mode_of(path .. ".lock"))
      local fh = io.popen("ls -a '" .. dir .. "'")
      local listing = fh:read("*a")
      fh:close()
      assert.is_nil(listing:find(".tmp.", 1, true))
      assert.equal("kaifang.store.file(" .. path .. ")", tostring(s))
    end)

    it("keeps what it holds across a restart (a new store on the same file)", function()
      local path = dir .. "/restart.json"
      assert.is_true(store.file(path):set("token", "two-weeks", 1209600))
      assert.equal("two-weeks", store.file(path):get("token"))
    end)

    it("returns nil, err when it cannot write or read", function()
      local s = store.file(dir .. "/no/such/dir/store.json")
      assert.is_nil(s:get("k")) -- nothing there is not an error
      local ok, err = s:set("k", "v", 60)
      assert.is_nil(ok)
      is_store_error(err)
      assert.equal("io", err.code)
      local path = dir .. "/corrupt.json"
      local fh = assert(io.open(path, "w"))
      fh:write("not json")
      fh:close()
      local v, derr = store.file(path):get("k")
      assert.is_nil(v)
      is_store_error(derr)
      assert.equal("decode", derr.code)
    end)

    it("excludes other processes under its lock", function()
      local path = dir .. "/counter.json"
      excludes_other_processes("file", path)
      assert.equal("200", store.file(path):get("counter"))
    end)
  end)

  describe("redis", function()
    local server
    setup(function() server = redis.start() end)
    teardown(function() server.stop() end)

    local n = 0
    behaves_like_a_store(function()
      n = n + 1
      -- Redis keeps time itself: the clock is real, the ttls short
      return store.redis({ port = server.port, prefix = "behaviour" .. n .. ":" }), function(d) core.sleep(d) end
    end)

    it("keeps keys under its prefix, values with PX expiry, and names itself without secrets", function()
      local s = store.redis({ port = server.port, prefix = "app1:" })
      assert.is_true(s:set("token", "v", 60))
      local raw = core.redis({ port = server.port })
      assert.equal("v", raw:command({ "GET", "app1:token" }))
      local pttl = raw:command({ "PTTL", "app1:token" })
      assert.is_true(pttl > 59000 and pttl <= 60000)
      raw:close()
      assert.equal('kaifang.store.redis(127.0.0.1:' .. server.port .. ' db 0, prefix "app1:")', tostring(s))
    end)

    it("returns nil, err while Redis is down", function()
      local s = store.redis({ port = redis.free_port(), connect_timeout = 0.5 })
      local v, err = s:get("k")
      assert.is_nil(v)
      is_store_error(err)
      assert.equal("connect", err.code)
      assert.is_nil((s:lock("L", "o", 5)))
    end)

    it("connects again after the server restarted", function()
      local s = store.redis({ port = server.port, prefix = "restart:" })
      assert.is_true(s:set("k", "before", 60))
      server.restart()
      local v, err = s:get("k") -- the kept connection is broken: made again, the GET sent once more
      assert.is_nil(err)
      assert.is_nil(v) -- no persistence: the value went with the old server
      assert.is_true(s:set("k", "after", 60))
      assert.equal("after", s:get("k"))
    end)

    it("times out on a server that does not answer, without repeating, and recovers", function()
      local s = store.redis({ port = server.port, prefix = "slow:", timeout = 0.2 })
      assert.is_true(s:set("k", "v", 60)) -- connected before the pause
      local raw = core.redis({ port = server.port })
      assert.equal("OK", raw:command({ "CLIENT", "PAUSE", "700" }))
      local t0 = core.monotonic()
      local v, err = s:get("k")
      local took = core.monotonic() - t0
      assert.is_nil(v)
      is_store_error(err)
      assert.equal("timeout", err.code)
      assert.is_true(took >= 0.15 and took < 0.35, "took " .. took)
      core.sleep(0.6)
      assert.equal("v", s:get("k"))
      raw:close()
    end)

    it("excludes other processes under its lock", function()
      excludes_other_processes("redis", tostring(server.port))
      assert.equal("200", store.redis({ port = server.port, prefix = "worker:" }):get("counter"))
    end)

    describe("with a password and a database", function()
      local guarded
      local PASSWORD = "pa55-w0rd-not-shown"
      setup(function() guarded = redis.start({ password = PASSWORD }) end)
      teardown(function() guarded.stop() end)

      it("authenticates and selects the database", function()
        local s = store.redis({ port = guarded.port, password = PASSWORD, db = 3, prefix = "" })
        assert.is_true(s:set("k", "in three", 60))
        assert.equal("in three", s:get("k"))
        local raw = core.redis({ port = guarded.port, password = PASSWORD, db = 3 })
        assert.equal("in three", raw:command({ "GET", "k" }))
        raw:close()
        raw = core.redis({ port = guarded.port, password = PASSWORD })
        assert.is_nil(raw:command({ "GET", "k" }))
        raw:close()
        assert.is_nil(tostring(s):find(PASSWORD, 1, true))
        assert.is_false(reachable(s, PASSWORD))
      end)

      it("reports a wrong or missing password without showing it", function()
        local s = store.redis({ port = guarded.port, password = "wrong-" .. PASSWORD })
        local v, err = s:get("k")
        assert.is_nil(v)
        is_store_error(err)
        assert.equal("auth", err.code)
        assert.is_nil(tostring(err):find(PASSWORD, 1, true))
        v, err = store.redis({ port = guarded.port }):get("k")
        assert.is_nil(v)
        is_store_error(err)
        assert.matches("NOAUTH", err.message)
      end)
    end)

    it("raises on bad options at the caller's line", function()
      local ok, err = pcall(function() store.redis({ port = 70000 }) end)
      assert.is_false(ok)
      assert.matches(SPEC .. ":%d+: kaifang%.store: 'port' must be an integer", err)
    end)
  end)
end)
