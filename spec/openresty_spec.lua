-- OpenResty: kaifang inside a real nginx (Debian's nginx-light with libnginx-mod-http-lua, on
-- LuaJIT), started here on a free loopback port with spec/nginx/nginx.conf, in front of the
-- sandbox. Without nginx or its lua module this spec fails, loudly: `make deps` installs them.
local core = require "kaifang.core"
local cjson = require "cjson"
local sandbox = require "kaifang.sandbox"
local harness = dofile("spec/nginx/harness.lua")

local CONF = "spec/nginx/nginx.conf"

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- Credentials for callback-only use when the sandbox has none for a platform (the spec signs
-- those callbacks itself).
local FALLBACK = {
  yopoint = { appid = "930859529955", app_secret = "spec-yopoint-secret", sign_key = "spec-yopoint-signkey" },
}

-- The sandbox's demo accounts, with the fallbacks for platforms it does not serve.
local function credentials(accounts)
  local out = {}
  for platform, c in pairs(accounts) do out[platform] = c end
  for platform, c in pairs(FALLBACK) do out[platform] = out[platform] or c end
  return out
end

local function sandbox_has(name)
  for _, p in ipairs(sandbox.platforms) do
    if p == name then return true end
  end
  return false
end

local function is_root() return os.execute("test \"$(id -u)\" = 0") == true end

local function module_exists(name) return (pcall(require, "kaifang." .. name)) end

-- One call per platform, made through the thread transport inside nginx. Adding a platform:
-- one line here (its sandbox and its client module must exist; until then it is skipped).
local CALLS = {
  { platform = "lingdian", method = "get_user_tel_by_code", args = { user_code = "U2TD844B2" },
    check = function(res) assert.are.equal("13311112222", res[1].data) end },
  { platform = "zafu", method = "menu_list",
    check = function(res) assert.is_table(res[1].data) end },
  { platform = "yopoint", method = "api_test", args = {},
    check = function(res) assert.is_table(res[1].data) end },
  { platform = "dakashi", method = "member_info", args = { serial_no = "87000001" },
    check = function(res) assert.are.equal("87000001", res[1].data.serial_no) end },
}

local function post_json(ng, path, value)
  return ng:request("POST", path, value ~= nil and cjson.encode(value) or "", { ["Content-Type"] = "application/json" })
end

-- GET url from a child process (this one must stay free to probe): .read() -> status, body
local function background_get(url, timeout)
  local chunk = string.format([[package.path=%q package.cpath=%q
local s = require("kaifang.core").http{ timeout = %d }
local res, err = s:request{ method = "GET", url = %q }
io.write(res and (res.status .. "\n" .. res.body) or ("0\n" .. tostring(err and err.message)))]],
    package.path, package.cpath, timeout or 15, url)
  local fh = assert(io.popen("lua5.4 -e " .. q(chunk), "r"))
  return {
    read = function()
      local out = fh:read("*a")
      fh:close()
      local status, body = out:match("^(%d+)\n(.*)$")
      return tonumber(status), body
    end,
  }
end

local wait_for = harness.wait_for

---------------------------------------------------------------------------- signing, by hand
-- Written out here from the platforms' rules, not through the core's signer.

local function canonical(params, skip, drop_empty)
  local keys = {}
  for k, v in pairs(params) do
    if not skip[k] and not (drop_empty and v == "") then keys[#keys + 1] = k end
  end
  table.sort(keys)
  local parts = {}
  for i, k in ipairs(keys) do parts[i] = k .. "=" .. params[k] end
  return table.concat(parts, "&")
end

local function yopoint_sign(params, secret)
  return core.digest("md5", canonical(params, { sign = true }, false) .. "&" .. secret)
end

local function lingdian_sign(params, key)
  return core.digest("md5", canonical(params, { sign = true, sign_type = true, key = true, developer_key = true }, true) .. key)
end

local pct, form = require("spec.helpers.form").pct, require("spec.helpers.form").form


local FORM = { ["Content-Type"] = "application/x-www-form-urlencoded" }
local JSON = { ["Content-Type"] = "application/json" }

---------------------------------------------------------------------------- LuaJIT

describe("kaifang on LuaJIT", function()
  local function luajit(chunk)
    local cmd = "LUA_PATH=" .. q(harness.ROOT .. "/lua/?.lua;" .. harness.ROOT .. "/lua/?/init.lua;;")
      .. " LUA_CPATH=" .. q(harness.LUAJIT .. "/?.so;;") .. " luajit -e " .. q(chunk) .. " 2>&1"
    local p = io.popen(cmd)
    local out = p:read("*a")
    local ok = p:close()
    return ok, out
  end

  it("is installed, with the core built against it (make luajit)", function()
    assert.is_true(os.execute("command -v luajit >/dev/null") == true, "luajit is missing: make deps installs luajit2")
    local f = io.open(harness.LUAJIT .. "/kaifang/core.so")
    assert.is_truthy(f, harness.LUAJIT .. "/kaifang/core.so is missing: run make luajit")
    f:close()
  end)

  -- the library, which nginx loads; not the sandbox, a separate server that always runs on Lua 5.4
  it("parses every library module (no 5.3+ syntax)", function()
    local p = io.popen("find " .. q(harness.ROOT .. "/lua") .. " -name '*.lua' -not -path '*/kaifang/sandbox/*'")
    local bad = {}
    for path in p:lines() do
      local ok, out = (function()
        local h = io.popen("luajit -bl " .. q(path) .. " 2>&1 >/dev/null")
        local o = h:read("*a")
        return h:close(), o
      end)()
      if not ok then bad[#bad + 1] = out end
    end
    p:close()
    assert.are.same({}, bad)
  end)

  it("signs, encodes and encrypts exactly as on Lua 5.4", function()
    -- the same chunk on both: its output must be byte for byte the same
    local chunk = [[
      local core, sign = require("kaifang.core"), require("kaifang.sign")
      local p = { developer_code = "U2QHNB2w=", tel = 13311112222, content = "同学您好 a=b&c", type = 1,
                  timestamp = 1700000000, big = 2^53, neg = -7, empty = "" }
      local key, iv = "0000000000000001", "abcdefghijklmnop"
      return table.concat({
        sign.lingdian(p, "K"), sign.yopoint(p, "K"), sign.dakashi(p, "K"), core.form_encode(p),
        core.digest("sha256", "x", "HEX"), core.hmac("sha256", "k", "x"), core.url_encode("a b/ü"),
        core.base64_encode(core.aes_encrypt(key, "330102199001011234", "ecb")),
        core.hex_encode(core.aes_encrypt(key, "330102199001011234", "cbc", iv)),
        core.aes_decrypt(key, core.aes_encrypt(key, "round trip", "cbc", iv), "cbc", iv),
        tostring(core.ct_equal("abc", "abc")), tostring(core.ct_equal("abc", "abd")), #core.random_hex(8),
      }, "\n")]]
    local ok, out = luajit("io.write((function() " .. chunk .. " end)())")
    assert.is_true(ok, out)
    assert.are.equal(assert(load(chunk))(), out)
  end)

  it("loads every platform module and makes its clients", function()
    local ok, out = luajit([[
      local kaifang = require "kaifang"
      local made = {}
      local opts = {
        lingdian = { developer_code = "c", developer_key = "k" },
        zafu = { client_id = "c", client_secret = "s", app_id = "01" },
        yopoint = { appid = "930859529955", app_secret = "s", sign_key = "k" },
        dakashi = { client_id = "c", client_secret = "s" },
      }
      for _, name in ipairs({ "lingdian", "zafu", "yopoint", "dakashi" }) do
        local found = pcall(require, "kaifang." .. name)
        if found then
          local o = opts[name]
          o.base_url = "http://127.0.0.1:9"
          made[#made + 1] = tostring(kaifang[name].new(o))
        end
      end
      require "kaifang.ngx"
      require "kaifang.transport.ngx_thread"
      require "kaifang.store.ngx_shared"
      io.write(#made)]])
    assert.is_true(ok, out)
    assert.is_truthy(tonumber(out), out)
  end)
end)

---------------------------------------------------------------------------- one worker

describe("kaifang in nginx, one worker", function()
  local sb, ng, creds

  setup(function()
    local found, why = harness.find()
    assert(found, why)
    sb = sandbox.start{ port = 0 }
    creds = credentials(sb.credentials)
    ng = harness.start{ conf = CONF, workers = 1, env = { sandbox = sb.url, credentials = creds } }
  end)

  teardown(function()
    if ng then ng:stop() end
    if sb then sb:stop() end
  end)

  describe("calls through the thread transport", function()
    for _, c in ipairs(CALLS) do
      local available = sandbox_has(c.platform) and module_exists(c.platform)
      local name = c.platform .. ":" .. c.method .. " against the sandbox"
      if available then
        it(name, function()
          local status, body, _, out = post_json(ng, "/call/" .. c.platform .. "/" .. c.method, c.args)
          assert.are.equal(200, status, body)
          assert.is_nil(out.raised, out.raised)
          assert.is_nil(out.err, out.err and out.err.text)
          assert.matches("ngx_thread", out.transport)
          c.check(out.res)
        end)
      else
        pending(name .. " (no " .. c.platform .. " sandbox or client module yet)")
      end
    end

    it("reports the platform's refusal as nil, err (not an error page)", function()
      local _, _, _, out = post_json(ng, "/call/lingdian/get_user_tel_by_code", { user_code = "NOSUCHCODE" })
      assert.are.equal("platform", out.err.kind)
      assert.are.equal(105, out.err.code)
    end)

    it("keeps a worker thread's VM, and its kept-alive session, from one call to the next", function()
      for _ = 1, 3 do post_json(ng, "/call/lingdian/get_user_tel_by_code", { user_code = "U2TD844B2" }) end
      local _, body, _, stats = ng:get("/threadstats?n=4")
      assert.is_table(stats, body)
      local best
      for _, s in ipairs(stats) do
        assert.is_nil(s.error, s.error)
        if not best or s.requests > best.requests then best = s end
      end
      assert.is_true(best.requests >= 3, body) -- one VM served the calls one after the other
      assert.is_true(best.sessions < best.requests, body) -- and reused its session
    end)

    it("works from an ngx.timer too", function()
      local status, body, _, out = ng:get("/timer")
      assert.are.equal(200, status, body)
      assert.are.equal("13311112222", out.tel, body)
    end)
  end)

  it("keeps serving while 16 calls (an account's default limit) are held for a second by the sandbox", function()
    assert(sb:configure{ lingdian = { latency = 1 } })
    local probe = core.http{ timeout = 2 }
    assert(probe:request{ method = "GET", url = ng.url .. "/plain" }) -- connection made before
    local function count() return sb:admin("GET", "/_sandbox/requests?platform=lingdian").count end
    local before = count()
    local started = core.monotonic()
    local bg = background_get(ng.url .. "/hold?n=16")
    local ok, err = pcall(function()
      -- the sandbox has all 16 in hand and holds their answers
      wait_for("the sandbox to hold 16 calls", 5, function() return count() - before >= 16 end)
      local worst, n = 0, 0
      local held_until = started + 0.9
      while core.monotonic() < held_until or n < 5 do
        local t0 = core.monotonic()
        local res = assert(probe:request{ method = "GET", url = ng.url .. "/plain" })
        local dt = core.monotonic() - t0
        assert.are.equal(200, res.status)
        if dt > worst then worst = dt end
        n = n + 1
        if n >= 20 then break end
        core.sleep(0.02)
      end
      local status, body = bg.read()
      bg = nil
      assert.are.equal(200, status, body)
      local out = cjson.decode(body)
      assert.are.equal(16, out.ok, body)
      assert.is_true(out.elapsed >= 0.95, body) -- they were held
      assert.is_true(out.elapsed < 1.8, body) -- side by side in the thread pool, not one after another
      assert.is_true(worst < 0.05, ("the plain location took %.1f ms while the calls were in flight"):format(worst * 1000))
      io.stderr:write(("\n[openresty] 16 calls held 1 s: all done in %.3f s; /plain worst %.1f ms over %d probes\n")
        :format(out.elapsed, worst * 1000, n))
    end)
    if bg then bg.read() end
    probe:close()
    sb:configure{ lingdian = { latency = cjson.null } }
    assert(ok, err)
  end)

  describe("refuses to block the worker", function()
    it("the libcurl transport, chosen explicitly, raises in a request phase", function()
      local _, body, _, out = ng:get("/blocking")
      assert.is_true(out.raised, body)
      assert.matches("would block this nginx worker %(phase 'content'%)", out.message)
    end)

    it("the default transport raises a clear error in a phase that cannot yield (set_by_lua)", function()
      local status, body = ng:get("/set_phase")
      assert.are.equal(200, status)
      assert.matches("cannot wait in nginx's 'set' phase", body)
    end)
  end)

  describe("kaifang.store.ngx_shared", function()
    it("keeps the store interface on a lua_shared_dict", function()
      local status, body, _, r = ng:get("/store")
      assert.are.equal(200, status, body)
      assert.are.same({
        tostring = "kaifang.store.ngx_shared(kaifang)", get_absent = true, set = true, get = "v1",
        delete_other = false, still = "v1", delete_same = true, gone = true, expired = true,
        lock_a = true, lock_b = false, lock_a_again = true, unlock_b = false, unlock_a = true,
        lock_b_after = true, lock_a_after_expiry = true,
      }, r)
    end)

    it("hands out rate-limited slots (take)", function()
      local _, body, _, r = ng:get("/take?rate=10&n=5")
      local expect = { 0, 0.1, 0.2, 0.3, 0.4 }
      for i, w in ipairs(r.waits) do assert.is_true(math.abs(w - expect[i]) < 0.02, body) end
      assert.is_true(r.refused, body)
      assert.is_true(math.abs(r.over - 0.5) < 0.02, body)
      _, body, _, r = ng:get("/take?rate=10&n=4&burst=3")
      expect = { 0, 0, 0, 0.1 }
      for i, w in ipairs(r.waits) do assert.is_true(math.abs(w - expect[i]) < 0.02, body) end
    end)
  end)

  describe("callback handlers", function()
    local function log() return select(4, ng:get("/cb/log")) end
    local function count(kind)
      local l = log()[kind]
      return l and l.n or 0
    end

    describe("Yopoint order notice", function()
      local function notice(overrides)
        local c = creds.yopoint
        local p = { appid = c.appid, method = "cabinet.order.sync", version = "1.0.0", sign_type = "md5",
                    biz_content = '{"ReceiptNo":"OD190425164650841431","Amount":350}', timestamp = tostring(os.time()) }
        for k, v in pairs(overrides or {}) do p[k] = v end
        p.sign = yopoint_sign(p, c.app_secret)
        return p
      end

      it("takes a good notice once, answers success, and answers a repeat without calling the handler again", function()
        local p = notice()
        local before = count("yopoint_notify")
        local status, body = ng:request("POST", "/cb/yopoint/notify", form(p), FORM)
        assert.are.equal(200, status)
        assert.are.equal("success", body)
        assert.are.equal(before + 1, count("yopoint_notify"))
        local last = log().yopoint_notify.last
        assert.are.equal("OD190425164650841431", last.notice.data.ReceiptNo)
        status, body = ng:request("POST", "/cb/yopoint/notify", form(p), FORM) -- replayed
        assert.are.equal("success", body)
        assert.are.equal(before + 1, count("yopoint_notify"))
      end)

      it("refuses a tampered notice and a stale replay with 'fail', and logs why", function()
        local before = count("yopoint_notify")
        local p = notice()
        p.biz_content = '{"ReceiptNo":"OD190425164650841431","Amount":1}'
        local status, body = ng:request("POST", "/cb/yopoint/notify", form(p), FORM)
        assert.are.equal(200, status)
        assert.are.equal("fail", body)
        status, body = ng:request("POST", "/cb/yopoint/notify", form(notice{ timestamp = tostring(os.time() - 3600) }), FORM)
        assert.are.equal("fail", body)
        local wrong = notice()
        wrong.sign = yopoint_sign(notice(), "not-the-secret")
        assert.are.equal("fail", select(2, ng:request("POST", "/cb/yopoint/notify", form(wrong), FORM)))
        assert.are.equal(before, count("yopoint_notify"))
        assert.is_truthy(ng:log():find("kaifang.ngx.yopoint_notify (yopoint): refused a Yopoint notice from 127.0.0.1", 1, true),
          "no log line for the refusal")
      end)

      it("answers 'fail' (not an error page) when the handler raises, and takes the platform's retry", function()
        local p = notice{ biz_content = '{"ReceiptNo":"OD-RETRY"}' }
        local before = count("yopoint_notify")
        local status, body = ng:request("POST", "/cb/yopoint/notify?fail=raise", form(p), FORM)
        assert.are.equal(200, status)
        assert.are.equal("fail", body)
        status, body = ng:request("POST", "/cb/yopoint/notify?fail=nil_err", form(p), FORM)
        assert.are.equal("fail", body)
        assert.is_truthy(ng:log():find("the database is down", 1, true), "no log line for the failing handler")
        status, body = ng:request("POST", "/cb/yopoint/notify", form(p), FORM)
        assert.are.equal("success", body)
        assert.are.equal(before + 1, count("yopoint_notify"))
      end)
    end)

    describe("Yopoint payment redirect", function()
      local function query(overrides)
        local p = { receipt_no = "OD190425164650841431", return_url = "https://h5.yopoint.com/return?x=1",
                    notify_url = "https://api.yopoint.com/pay/notify", timestamp = tostring(os.time()) }
        for k, v in pairs(overrides or {}) do p[k] = v end
        p.sign = yopoint_sign(p, creds.yopoint.sign_key)
        return p
      end

      it("sends the buyer on with a good redirect", function()
        local status, _, headers = ng:get("/cb/yopoint/pay?" .. form(query()))
        assert.are.equal(302, status)
        assert.are.equal("https://pay.example/checkout?receipt_no=OD190425164650841431", headers.location)
        assert.are.equal("https://api.yopoint.com/pay/notify", log().yopoint_pay.last.notify_url)
      end)

      it("answers 403 to a tampered one and to a stale replay", function()
        local p = query()
        p.receipt_no = "OD000"
        local status, body = ng:get("/cb/yopoint/pay?" .. form(p))
        assert.are.equal(403, status)
        assert.matches("invalid payment request", body)
        status = ng:get("/cb/yopoint/pay?" .. form(query{ timestamp = tostring(os.time() - 3600) }))
        assert.are.equal(403, status)
      end)
    end)

    describe("Dakashi callback", function()
      local OK = '{"errcode":0,"errmsg":"success"}'
      local function body(t) return cjson.encode(t) end

      it("takes a recharge once and answers a repeat with success without calling the handler again", function()
        local cb = body{ action_type = 1, serial_no = "87000001", package = "10G", nonce = tostring(os.time()) }
        local before = count("dakashi")
        local status, text = ng:request("POST", "/cb/dakashi", cb, JSON)
        assert.are.equal(200, status)
        assert.are.equal(OK, text)
        assert.are.equal(before + 1, count("dakashi"))
        assert.are.equal("recharge", log().dakashi.last.cb.action)
        assert.are.equal(OK, select(2, ng:request("POST", "/cb/dakashi", cb, JSON))) -- replayed
        assert.are.equal(before + 1, count("dakashi"))
      end)

      it("refuses a tampered callback (not a callback at all) with a non-zero errcode", function()
        local before = count("dakashi")
        for _, bad in ipairs({ body{ action_type = 9, serial_no = "87000001" }, "{not json", "" }) do
          local status, text = ng:request("POST", "/cb/dakashi", bad, JSON)
          assert.are.equal(200, status)
          assert.are_not.equal(0, cjson.decode(text).errcode)
        end
        assert.are.equal(before, count("dakashi"))
      end)

      it("refuses callbacks from an address not on the allow list", function()
        local status = ng:request("POST", "/cb/dakashi/allow", body{ action_type = 2, serial_no = "87000001" }, JSON)
        assert.are.equal(403, status)
        assert.is_nil(log().dakashi_allow)
      end)

      it("answers with a failure, not an error page, when the handler raises", function()
        local status, text = ng:request("POST", "/cb/dakashi?fail=raise", body{ action_type = 2, serial_no = "87000002" }, JSON)
        assert.are.equal(200, status)
        assert.are.equal(50000, cjson.decode(text).errcode)
        assert.is_truthy(ng:log():find("the handler broke", 1, true), "no log line for the failing handler")
      end)
    end)

    describe("Lingdian delivery callback (format inferred)", function()
      local function fields(overrides)
        local c = creds.lingdian
        local p = { developer_code = c.developer_code, type = "1", tel = "13311112222", status = "100",
                    message = "发送微信客服消息成功", timestamp = tostring(os.time()) }
        for k, v in pairs(overrides or {}) do p[k] = v end
        p.sign = lingdian_sign(p, c.developer_key)
        return p
      end

      it("takes a good callback once; a repeat is answered without calling the handler again", function()
        local p = fields()
        local before = count("lingdian")
        local status, text = ng:request("POST", "/cb/lingdian", form(p), FORM)
        assert.are.equal(200, status)
        assert.are.equal(100, cjson.decode(text).code)
        assert.are.equal("13311112222", log().lingdian.last.fields.tel)
        assert.are.equal(100, cjson.decode((select(2, ng:request("POST", "/cb/lingdian", form(p), FORM)))).code)
        assert.are.equal(before + 1, count("lingdian"))
      end)

      it("refuses a tampered callback, one for another developer and a stale replay with code 104", function()
        local before = count("lingdian")
        local p = fields()
        p.tel = "13399990000"
        local other = fields{ developer_code = "SOMEONE" }
        for _, bad in ipairs({ p, other, fields{ timestamp = tostring(os.time() - 3600) } }) do
          local status, text = ng:request("POST", "/cb/lingdian", form(bad), FORM)
          assert.are.equal(200, status)
          assert.are.equal(104, cjson.decode(text).code)
        end
        assert.are.equal(before, count("lingdian"))
      end)
    end)

    it("leaves no Lua error in the log", function()
      local line = ng:log():match("[^\n]*%[error%][^\n]*runtime error[^\n]*")
      assert.is_nil(line, line)
    end)
  end)

  describe("kaifang.transport.resty_http", function()
    local has = os.execute("test -r /usr/share/lua/5.1/resty/http.lua -o -r /usr/local/share/lua/5.1/resty/http.lua -o -r /usr/local/openresty/lualib/resty/http.lua") == true
    if has then
      it("is chosen explicitly and reaches the sandbox", function()
        local status, body, _, out = post_json(ng, "/call/lingdian/get_user_tel_by_code?transport=resty_http", { user_code = "U2TD844B2" })
        assert.are.equal(200, status, body)
        assert.matches("resty_http", out.transport)
        assert.are.equal("13311112222", out.res[1], body)
      end)
    else
      pending("lua-resty-http is not installed (not packaged in Debian bookworm); its mapping is specced with a stand-in in spec/transport_select_spec.lua")
    end
  end)
end)

---------------------------------------------------------------------------- four workers

describe("kaifang in nginx, four workers", function()
  if not (sandbox_has("zafu") and module_exists("zafu")) then
    pending("the ZAFU token shared by four workers (no zafu sandbox or client module yet)")
    return
  end

  local sb, ng

  setup(function()
    local found, why = harness.find()
    assert(found, why)
    sb = sandbox.start{ port = 0 }
    ng = harness.start{ conf = CONF, workers = 4,
                        env = { sandbox = sb.url, credentials = credentials(sb.credentials), zafu_at_start = true } }
  end)

  teardown(function()
    if ng then ng:stop() end
    if sb then sb:stop() end
  end)

  it("shares one ZAFU token through the default store: every worker calls at start, the sandbox issues one token", function()
    local report = wait_for("four workers to report", 15, function()
      local _, _, _, r = ng:get("/zafu/report")
      local n = 0
      for _ in pairs(r or {}) do n = n + 1 end
      return n >= 4 and r
    end)
    for pid, r in pairs(report) do assert.is_true(r.ok, pid .. ": " .. cjson.encode(r)) end
    local pids = {}
    for _ = 1, 40 do
      local _, body, _, out = ng:get("/zafu/call")
      assert.is_true(out.ok, body)
      assert.are.equal("kaifang.store.ngx_shared(kaifang)", out.store) -- no token_store given
      pids[out.pid] = true
    end
    local served = 0
    for _ in pairs(pids) do served = served + 1 end
    assert.is_true(served >= 2, "the calls all went to one worker")
    local tokens = assert(sb:admin("GET", "/_sandbox/zafu/tokens"))
    io.stderr:write(("\n[openresty] ZAFU across 4 workers: %d start-up calls + 40 calls on %d workers, %d token(s) issued\n")
      :format(4, served, tokens.issued))
    assert.are.equal(1, tokens.issued)
  end)
end)

---------------------------------------------------------------------------- the example

-- private: the example in a folder only its owner may enter, as a clone in `mktemp -d` or in a
-- private home directory, with nginx started as root, so its workers run as another user
-- (nobody), who cannot enter it.
local function example(title, private)
  describe(title, function()
    local sb, ng
    if private and not is_root() then
      pending("needs root: nginx started as root runs its workers as nobody, who cannot enter the private folder")
      return
    end

    setup(function()
      local found, why = harness.find()
      assert(found, why)
      sb = sandbox.start{ port = 0 }
      ng = harness.start_example({ KAIFANG_LINGDIAN_URL = sb.url, KAIFANG_DAKASHI_ALLOW = "127.0.0.1" }, { private = private })
    end)

    teardown(function()
      if ng then ng:stop() end
      if sb then sb:stop() end
    end)

    if private then
      it("runs its workers as a user that cannot enter the folder (what the rest of this block is about)", function()
        local p = assert(io.popen("stat -c %a " .. q(ng.remove)))
        local mode = p:read("*l")
        p:close()
        local workers = ng:workers()
        assert.are.equal("700", mode)
        assert.is_true(#workers > 0, "no nginx workers")
        for _, pid in ipairs(workers) do
          local status = assert(io.open("/proc/" .. pid .. "/status")):read("*a")
          assert.are_not.equal("0", status:match("\nUid:%s+(%d+)"), "worker " .. pid .. " runs as root")
        end
      end)
    end

    it("takes a notice and sends it; reports a user WeChat cannot reach", function()
      local status, body, _, out = ng:request("POST", "/notify", "tel=13311112222&content=" .. pct("取件码 6-2-3001"), FORM)
      assert.are.equal(200, status, body)
      assert.is_true(out.sent, body)
      local msgs = assert(sb:records("lingdian", "messages"))
      assert.are.equal("取件码 6-2-3001", msgs[#msgs].params.content)
      status, body, _, out = ng:request("POST", "/notify", cjson.encode{ tel = "13311114444", content = "x" },
        { ["Content-Type"] = "application/json" })
      assert.are.equal(200, status, body)
      assert.is_false(out.sent)
      assert.is_true(out.unreachable)
      -- bad input: 400 with a JSON body that says why, never nginx's error page
      for _, bad in ipairs({ { "content=x", FORM }, { "tel=13311112222", FORM }, { "tel=12&content=x", FORM },
                             { "{not json", JSON }, { '{"tel":13311112222,"content":"x"}', JSON },
                             { '{"tel":"13311112222","content":"x","link":7}', JSON } }) do
        local st, text, headers, doc = ng:request("POST", "/notify", bad[1], bad[2])
        assert.are.equal(400, st, bad[1])
        assert.matches("application/json", headers["content-type"])
        assert.is_string(doc and doc.error, text)
      end
    end)

    it("answers the platforms' callbacks", function()
      local _, text = ng:request("POST", "/dakashi/callback", cjson.encode{ action_type = 1, serial_no = "87000001" },
        { ["Content-Type"] = "application/json" })
      assert.are.equal('{"errcode":0,"errmsg":"success"}', text)
      local p = { appid = "930859529955", method = "cabinet.order.sync", biz_content = '{"ReceiptNo":"OD1"}',
                  timestamp = tostring(os.time()), sign_type = "md5", version = "1.0.0" }
      p.sign = yopoint_sign(p, "example-app-secret")
      assert.are.equal("success", select(2, ng:request("POST", "/yopoint/notify", form(p), FORM)))
      p.biz_content = '{"ReceiptNo":"OD2"}'
      assert.are.equal("fail", select(2, ng:request("POST", "/yopoint/notify", form(p), FORM)))
      local r = { receipt_no = "OD1", return_url = "https://h5.example/", notify_url = "https://api.yopoint.com/n",
                  timestamp = tostring(os.time()) }
      r.sign = yopoint_sign(r, "example-sign-key")
      local status, page = ng:get("/yopoint/pay?" .. form(r))
      assert.are.equal(200, status)
      assert.matches("Pay for order OD1", page)
      local l = { developer_code = "U2QHNB2w=", tel = "13311112222", type = "1", timestamp = tostring(os.time()) }
      l.sign = lingdian_sign(l, "744ed968e7e1a4aebafa6f4888fced68")
      assert.are.equal(100, cjson.decode((select(2, ng:request("POST", "/lingdian/callback", form(l), FORM)))).code)
    end)

    it("serves after reloads, each configuration holding each code directory once", function()
      local function lines(cmd)
        local p = assert(io.popen(cmd))
        local out = {}
        for l in p:lines() do out[#out + 1] = l end
        p:close()
        table.sort(out)
        return out
      end
      local master = math.floor(ng.pid)
      local function dirs() return lines("for f in /proc/" .. master .. "/fd/*; do [ -d \"$f\" ] && readlink \"$f\"; done") end
      local before = dirs()
      assert.matches("/lua\n", table.concat(before, "\n") .. "\n") -- the code's directory is held
      for _ = 1, 2 do
        local old = {}
        for _, pid in ipairs(ng:workers()) do old[pid] = true end
        assert(os.execute("kill -HUP " .. master))
        wait_for("the reloaded workers", 15, function()
          local now = ng:workers()
          for _, pid in ipairs(now) do if old[pid] then return false end end
          return #now > 0
        end)
      end
      -- the new configuration holds one descriptor per directory; an old one keeps its own until
      -- nginx drops it (about 30 s after the reload), so at most one set per configuration alive
      local count = {}
      for _, d in ipairs(dirs()) do count[d] = (count[d] or 0) + 1 end
      for _, d in ipairs(before) do assert.is_true(count[d] >= 1 and count[d] <= 3, d .. " held " .. count[d] .. " times") end
      local status, body, _, out = ng:request("POST", "/notify", "tel=13311112222&content=x", FORM)
      assert.are.equal(200, status, body)
      assert.is_true(out.sent, body)
    end)

    it("leaves no Lua error in the log", function()
      for line in ng:log():gmatch("[^\n]*%[error%][^\n]*") do
        assert.is_nil(line:find("lua", 1, true) or line:find("kaifang%.%a"), line)
      end
    end)
  end)
end

example("examples/openresty as written", false)
example("examples/openresty from a private folder, nginx started as root", true)
