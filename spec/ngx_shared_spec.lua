-- kaifang.store.ngx_shared under plain Lua, on a stand-in for a lua_shared_dict with a clock the
-- spec moves; spec/openresty_spec.lua runs it on a real one inside nginx.
local store = require "kaifang.store"
local ngx_shared = require "kaifang.store.ngx_shared"

-- The part of ngx.shared.DICT the store uses: get, set, add, delete, with expiry (0: none).
local function fake_dict(clock)
  local data = {}
  local d = {}
  local function live(k)
    local e = data[k]
    if e and e.exp and clock() >= e.exp then data[k], e = nil, nil end
    return e
  end
  function d:get(k) local e = live(k) return e and e.v end
  function d:set(k, v, exptime)
    data[k] = { v = v, exp = (exptime and exptime > 0) and clock() + exptime or nil }
    return true, nil, false
  end
  function d:add(k, v, exptime)
    if live(k) then return false, "exists" end
    return d:set(k, v, exptime)
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
    st:set("forever", "x")
    now = now + 1e6
    assert.are.equal("x", st:get("forever"))
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
