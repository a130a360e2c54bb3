-- The state kaifang keeps inside a real nginx (spec/nginx): ZAFU's token in the shared dict by
-- default, callbacks' repeat marks in a dict of their own that a flood cannot push the token or a
-- held lock out of, the shared store's mutex, Dakashi's allow list, and kaifang.ngx.check
-- reporting a misconfiguration at start. spec/openresty_spec.lua has the four workers sharing one
-- token through that default store.
local cjson = require "cjson"
local sandbox = require "kaifang.sandbox"
local harness = dofile("spec/nginx/harness.lua")

local CONF = "spec/nginx/nginx.conf"
local JSON = { ["Content-Type"] = "application/json" }

local function count(text, needle)
  local n, at = 0, 1
  while true do
    local i = text:find(needle, at, true)
    if not i then return n end
    n, at = n + 1, i + #needle
  end
end

describe("kaifang's shared state in nginx, one worker", function()
  local sb, ng

  setup(function()
    assert(harness.find())
    sb = sandbox.start{ port = 0 }
    ng = harness.start{ conf = CONF, workers = 1, env = {
      sandbox = sb.url, credentials = sb.credentials,
      check = { clients = { { "lingdian" } }, handlers = { dakashi_callback = { allow = "any" } } },
    } }
  end)

  teardown(function()
    if ng then ng:stop() end
    if sb then sb:stop() end
  end)

  it("gives ZAFU the shared dict as its default token store", function()
    local _, body, _, r = ng:get("/zafu/new")
    assert.is_true(r.ok, body)
    assert.are.equal("kaifang.store.ngx_shared(kaifang)", r.store)
  end)

  it("releases the shared store's mutex only for its holder", function()
    local _, body, _, r = ng:get("/mutex")
    assert.is_true(r.took, body)
    assert.is_true(r.ttl > 1, body) -- the lease, not 50 ms
    assert.is_false(r.release_other, body)
    assert.is_true(r.still_held, body)
    assert.is_true(r.release_holder, body)
    assert.is_true(r.free, body)
  end)

  it("keeps a callback's busy mark for as long as its handler runs (renewed), not a fixed time", function()
    local _, body, _, r = ng:get("/busy") -- marks of 0.5 s renewed every 0.2 s, a handler of 1.5 s
    assert.are.equal("success", r.first, body)
    assert.are.equal("the same callback is being handled", r.during, body) -- at 1 s: still marked
    assert.are.equal("success", r.after, body)                              -- done: answered again
    assert.are.equal(1, r.calls, body)
  end)

  describe("Dakashi's allow list", function()
    local cb = cjson.encode{ action_type = 1, serial_no = "87000001", package = "10G", nonce = tostring(os.time()) }

    it("refuses an address outside it with 403 and a JSON body, and logs it naming the handler", function()
      local status, text, headers = ng:request("POST", "/cb/dakashi/allow", cb, JSON)
      assert.are.equal(403, status)
      assert.matches("application/json", headers["content-type"])
      assert.are.same({ error = "forbidden", message = "address not allowed" }, cjson.decode(text))
      local _, _, _, log = ng:get("/cb/log")
      assert.is_nil(log.dakashi_allow)
      assert.is_truthy(ng:wait_log("kaifang.ngx.dakashi_callback (dakashi): refused a Dakashi callback from 127.0.0.1: "
        .. "address not allowed"))
      assert.is_nil(ng:log():find("ngx.lua:%d+: log%(%)"), "a log line names kaifang's own source line")
    end)

    it("accepts an address inside a CIDR range", function()
      local status, text = ng:request("POST", "/cb/dakashi/cidr", cb, JSON)
      assert.are.equal(200, status)
      assert.are.equal('{"errcode":0,"errmsg":"success"}', text)
      local _, _, _, log = ng:get("/cb/log")
      assert.are.equal("87000001", log.dakashi_cidr.last.serial_no)
    end)
  end)

  it("checks a good configuration at start without a problem, and warns of allow = \"any\"", function()
    local log = assert(ng:wait_log('kaifang.ngx.check: kaifang.ngx.dakashi_callback (dakashi): allow = "any"'))
    assert.are.equal(1, count(log, "kaifang.ngx.check:"))
    for line in log:gmatch("[^\n]+") do
      assert.is_falsy(line:find("[error]", 1, true) and line:find("kaifang%.", 1), line)
    end
  end)

  -- last: it fills kaifang_callbacks
  it("keeps ZAFU's token and a held lock through a flood of 200,000 callbacks", function()
    local _, body, _, r = ng:get("/flood?n=200000")
    assert.is_table(r, body)
    io.stderr:write(("\n[ngx_state] 200,000 forged Dakashi callbacks in %.1f s: %d marked and taken, %d refused once "
      .. "kaifang_callbacks was full; token kept: %s, lock held: %s\n"):format(r.elapsed, r.counts.taken, r.counts.refused,
      tostring(r.token_kept), tostring(r.lock_held)))
    assert.are.equal("kaifang.store.ngx_shared(kaifang)", r.store)
    assert.are.equal(200000, r.counts.taken + r.counts.refused)
    assert.is_true(r.counts.taken > 1000, body)    -- the marks were written ...
    assert.is_true(r.counts.refused > 1000, body)  -- ... until their dict was full, and said so
    assert.are.equal(r.counts.refused, r.counts.logged_err)
    assert.is_true(r.token_kept, body)
    assert.is_true(r.lock_held, body)
    assert.is_true(r.unlocked, body)
    assert.is_true(r.zafu_after, body)
  end)
end)

describe("a misconfigured nginx", function()
  local sb

  setup(function()
    assert(harness.find())
    sb = sandbox.start{ port = 0 }
  end)

  teardown(function() if sb then sb:stop() end end)

  it("is reported at start: one error line per problem (no thread pool, a missing credential, no shared dict for "
    .. "2 workers, a blocking transport, no allow)", function()
    local ng = harness.start{ conf = CONF, workers = 2, extra = { THREAD_POOL = "", STATE_DICT = "" },
      shell_env = { KAIFANG_LINGDIAN_CODE = "U2QHNB2w=", KAIFANG_LINGDIAN_KEY = "" },
      env = { sandbox = sb.url, credentials = sb.credentials, check = {
        env = { "lingdian" }, clients = { { "lingdian" }, { "lingdian", "curl" } }, handlers = { dakashi_callback = {} },
      } } }
    local ok, err = pcall(function()
      local log = assert(ng:wait_log("nginx has no thread pool 'kaifang'", 10), ng:log())
      for _, line in ipairs({
        "kaifang.ngx.check: no lua_shared_dict 'kaifang', and nginx runs 2 workers",
        "kaifang.ngx.check: KAIFANG_LINGDIAN_KEY is not set in nginx's environment",
        'kaifang.ngx.check: clients[2] (lingdian) uses transport "curl"',
        "kaifang.ngx.check: kaifang.ngx.dakashi_callback (dakashi): no `allow`",
        "kaifang.ngx.check: nginx has no thread pool 'kaifang' for kaifang's calls: add `thread_pool kaifang threads=32;`",
      }) do
        assert.are.equal(1, count(log, line), line .. "\n" .. log)
      end
      assert.is_nil(log:find("KAIFANG_LINGDIAN_CODE is not set", 1, true))
      -- and a ZAFU client with the default store is refused, naming the fix
      local _, body, _, r = ng:get("/zafu/new")
      assert.is_false(r.ok, body)
      assert.matches("kaifang.zafu: option 'token_store' unset: nginx runs 2 workers and has no lua_shared_dict 'kaifang'",
        r.message, 1, true)
    end)
    ng:stop()
    assert(ok, err)
  end)

  it("refuses to start when a ZAFU client made in init_by_lua would keep its token per worker", function()
    local ok, err = pcall(harness.start, { conf = CONF, workers = 2, extra = { STATE_DICT = "" },
      env = { sandbox = sb.url, credentials = sb.credentials, zafu_in_init = true } })
    assert.is_false(ok) -- the harness's error carries the log (nginx -t does not run init_by_lua's failure here)
    assert.matches("init_by_lua error: .*kaifang.zafu: option 'token_store' unset: nginx runs 2 workers and has no "
      .. "lua_shared_dict 'kaifang'", err)
  end)
end)
