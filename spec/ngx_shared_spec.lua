-- kaifang.store.ngx_shared under plain Lua, on a stand-in for a lua_shared_dict with a clock the
-- spec moves; spec/openresty_spec.lua runs it on a real one inside nginx.
local store = require "kaifang.store"
local ngx_shared = require "kaifang.store.ngx_shared"

-- The part of ngx.shared.DICT the store uses: get, safe_set, safe_add, delete, with expiry (0:
-- none), and room for `room` keys (then "no memory", as safe_* answer instead of evicting).
local function fake_dict(clock, room)
  local data = {}
  local d = {}
  local function count() local n = 0 for _ in pairs(data) do n = n + 1 end return n end
  local function live(k)
    local e = data[k]
    if e and e.exp and clock() >= e.exp then data[k], e = nil, nil end
    return e
  end
  function d:get(k) local e = live(k) return e and e.v end
  function d:safe_set(k, v, exptime)
    if not live(k) and room and count() >= room then return false, "no memory" end
    data[k] = { v = v, exp = (exptime and exptime > 0) and clock() + exptime or nil }
    return true, nil, false
  end
  function d:safe_add(k, v, exptime)
    if live(k) then return false, "exists" end
    return d:safe_set(k, v, exptime)
  end
  function d:delete(k) data[k] = nil end
  d.data = data
  return d
end

describe("kaifang.store.ngx_shared", function()
  local now, st, dict
  before_each(function()
    now = 1000
    local clock = function() return now end
    dict = fake_dict(clock)
    st = store.ngx_shared("kaifang", { dict = dict, clock = clock, sleep = function(s) now = now + s end })
  end)

  it("is a store (kaifang.store.check), named by its dict, and is reachable both ways", function()
    assert.is_nil(store.check(st))
    assert.are.equal("kaifang.store.ngx_shared(kaifang)", tostring(st))
    assert.are.equal("kaifang.store.ngx_shared(x)", tostring(ngx_shared("x", { dict = dict })))
  end)

  it("runs inside nginx only, and names a missing dict with the directive that makes it", function()
    assert.has_error(function() store.ngx_shared("kaifang") end, "kaifang.store.ngx_shared: runs inside nginx (lua-nginx-module) only")
    rawset(_G, "ngx", { shared = {} })
    local ok, err = pcall(store.ngx_shared, "tokens")
    rawset(_G, "ngx", nil)
    assert.is_false(ok)
    assert.matches("lua_shared_dict tokens 1m;", err, 1, true)
  end)

  it("gets, sets with a ttl, and deletes only an equal value", function()
    assert.is_nil(st:get("t"))
    assert.is_true(st:set("t", "tok1", 10))
    assert.are.equal("tok1", st:get("t"))
    assert.is_false(st:delete_if_equal("t", "tok0"))
    assert.are.equal("tok1", st:get("t"))
    assert.is_true(st:delete_if_equal("t", "tok1"))
    assert.is_nil(st:get("t"))
    st:set("t", "tok2", 10)
    now = now + 10
    assert.is_nil(st:get("t"))
    st:set("forever", "x") -- every key expires: without a ttl, after MAX_TTL
    now = now + ngx_shared.MAX_TTL - 1
    assert.are.equal("x", st:get("forever"))
    now = now + 1
    assert.is_nil(st:get("forever"))
  end)

  it("never leaves a key without an expiry", function()
    st:set("t", "v")
    st:set("u", "v", 10)
    st:lock("l", "a", 5)
    st:take("r", 10)
    for k, e in pairs(dict.data) do assert.is_number(e.exp, k) end
  end)

  it("reports a full dict to the caller (nothing evicted, nothing lost silently)", function()
    local small = fake_dict(function() return now end, 3) -- a, b, and a mutex while each is set
    local s2 = store.ngx_shared("tiny", { dict = small, clock = function() return now end, sleep = function(x) now = now + x end })
    assert.is_true(s2:set("a", "1", 10))
    assert.is_true(s2:set("b", "2", 10))
    local ok, err = s2:set("c", "3", 10) -- the mutex fits, c does not
    assert.is_nil(ok)
    assert.are.equal("store", err.kind)
    assert.are.equal("no_memory", err.code)
    assert.matches("lua_shared_dict tiny is full (no memory): nothing was evicted", err.message, 1, true)
    assert.are.equal("1", s2:get("a"))
    assert.are.equal("2", s2:get("b"))
    assert.is_true(s2:lock("l", "a", 5))
    local locked, lerr = s2:lock("m", "a", 5)
    assert.is_nil(locked)
    assert.are.equal("no_memory", lerr.code)
  end)

  it("reports a dict that evicted a live key to make room (forcible), where it has no safe_*", function()
    local d = { get = function() end, delete = function() end,
                set = function() return true, nil, true end, add = function() return true, nil, true end }
    local s2 = store.ngx_shared("plain", { dict = d, clock = function() return now end })
    local ok, err = s2:lock("l", "a", 5)
    assert.is_nil(ok)
    assert.are.equal("evicted", err.code)
  end)

  describe("its mutex", function()
    it("is released only by its holder: a release with another token does nothing", function()
      local token = assert(st:mutex("k"))
      assert.is_false(st:release("k", "not-the-holder"))
      assert.is_false(st:release("k", nil))
      assert.is_truthy(dict.data["\1mu:k"], "the holder's mutex is still there")
      local waited = now
      local second = st:mutex("k") -- waits (yielding) until the lease runs out
      assert.is_truthy(second)
      assert.are_not.equal(token, second)
      assert.is_true(now - waited >= ngx_shared.MUTEX_TTL)
      assert.is_false(st:release("k", token)) -- the first holder's lease ran out: not its to release
      assert.is_true(st:release("k", second))
      assert.is_nil(dict.data["\1mu:k"])
    end)

    it("has a lease far longer than the work it guards", function()
      assert.is_true(ngx_shared.MUTEX_TTL >= 1)
      st:mutex("k")
      assert.are.equal(now + ngx_shared.MUTEX_TTL, dict.data["\1mu:k"].exp)
    end)

    it("gives up with a clear error, after a bounded number of tries, where the phase cannot yield", function()
      local slept = false
      local plain = store.ngx_shared("kaifang", { dict = dict, clock = function() return now end })
      local orig = require("kaifang.transport").sleep
      require("kaifang.transport").sleep = function() slept = true end
      assert(st:mutex("k"))
      local ok, err = plain:mutex("k")
      local locked, lerr = plain:set("k", "v", 1)
      require("kaifang.transport").sleep = orig
      assert.is_nil(ok)
      assert.is_false(slept)
      assert.are.equal("busy", err.code)
      assert.matches("this nginx phase cannot wait for it", err.message, 1, true)
      assert.is_nil(locked)
      assert.are.equal("busy", lerr.code)
    end)
  end)

  it("locks with an owner and a ttl: its owner may take it again, another may not until it expires", function()
    assert.is_true(st:lock("l", "a", 5))
    assert.is_false(st:lock("l", "b", 5))
    assert.is_true(st:lock("l", "a", 5))
    assert.is_false(st:unlock("l", "b"))
    assert.is_true(st:unlock("l", "a"))
    assert.is_false(st:unlock("l", "a"))
    assert.is_true(st:lock("l", "b", 5))
    now = now + 5
    assert.is_true(st:lock("l", "a", 5)) -- b's expired
    assert.is_false(st:unlock("l", "b"))
    -- a lock is a key of its own
    assert.is_nil(st:get("l"))
  end)

  it("leaves no mutex behind", function()
    st:set("t", "v", 10)
    st:delete_if_equal("t", "v")
    st:lock("l", "a", 5)
    st:unlock("l", "a")
    st:take("r", 10)
    for k in pairs(dict.data) do assert.is_nil(k:match("mu:"), k) end
  end)

  it("checks its arguments", function()
    assert.has_error(function() st:set("", "v") end)
    assert.has_error(function() st:set("k", 1) end)
    assert.has_error(function() st:set("k", "v", -1) end)
    assert.has_error(function() st:lock("k", "", 1) end)
    assert.has_error(function() st:lock("k", "a") end)
    assert.has_error(function() st:take("k", 0) end)
  end)

  describe("take (the shared rate limiter)", function()
    it("spaces calls 1/rate apart", function()
      local waits = {}
      for i = 1, 4 do waits[i] = st:take("lingdian", 5) end
      for i, w in ipairs({ 0, 0.2, 0.4, 0.6 }) do assert.is_true(math.abs(waits[i] - w) < 1e-9, tostring(waits[i])) end
    end)

    it("lets a burst through at once, then spaces the rest", function()
      local waits = {}
      for i = 1, 5 do waits[i] = st:take("k", 10, { burst = 3 }) end
      for i, w in ipairs({ 0, 0, 0, 0.1, 0.2 }) do assert.is_true(math.abs(waits[i] - w) < 1e-9, tostring(waits[i])) end
    end)

    it("forgets an idle past: after a pause the next call goes at once", function()
      st:take("k", 2)
      st:take("k", 2)
      now = now + 10
      assert.are.equal(0, st:take("k", 2))
    end)

    it("refuses, without reserving, a slot further away than max_wait", function()
      assert.are.equal(0, st:take("k", 1))
      local w, over = st:take("k", 1, { max_wait = 0.5 })
      assert.is_nil(w)
      assert.is_true(math.abs(over - 1) < 1e-9)
      assert.is_true(math.abs(st:take("k", 1) - 1) < 1e-9) -- the refused one took nothing
    end)

    it("throttle waits out its slot", function()
      assert.is_true(st:throttle("k", 4))
      local t0 = now
      assert.is_true(st:throttle("k", 4))
      assert.is_true(math.abs(now - t0 - 0.25) < 1e-9)
    end)
  end)
end)

describe("kaifang.store.default (the store a client given none uses)", function()
  local kngx = require "kaifang.ngx"
  local saved = kngx.config.dict
  local function with_ngx(shared, workers, fn)
    rawset(_G, "ngx", { shared = shared, worker = { count = function() return workers end },
                        get_phase = function() return "init" end, config = { ngx_lua_version = 10023 } })
    local ok, a, b = pcall(fn)
    rawset(_G, "ngx", nil)
    kngx.config.dict = saved
    assert(ok, a)
    return a, b
  end

  it("is one memory store per process outside nginx", function()
    assert.are.equal(store.default(), store.default())
    assert.matches("^kaifang.store.memory", tostring(store.default()))
  end)

  it("is the shared dict inside nginx when nginx has it (kaifang.ngx.config.dict)", function()
    local st = with_ngx({ spec_state = fake_dict(os.time) }, 4, function()
      kngx.config.dict = "spec_state"
      return store.default()
    end)
    assert.are.equal("kaifang.store.ngx_shared(spec_state)", tostring(st))
  end)

  it("is refused with several workers and no dict, naming the directive; one worker keeps a memory store", function()
    local st, why = with_ngx({}, 4, function() return store.default() end)
    assert.is_nil(st)
    assert.are.equal("nginx runs 4 workers and has no lua_shared_dict 'kaifang' for their shared state: add "
      .. "`lua_shared_dict kaifang 1m;` to http {}, or give a store", why)
    local ok, err = with_ngx({}, 2, function() return pcall(require("kaifang").zafu.new, { client_id = "c", client_secret = "s", app_id = "01" }) end)
    assert.is_false(ok)
    assert.matches("kaifang.zafu: option 'token_store' unset: nginx runs 2 workers", err, 1, true)
    assert.matches("^kaifang.store.memory", tostring(with_ngx({}, 1, function() return store.default() end)))
  end)
end)
