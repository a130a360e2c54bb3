-- One calling convention for every platform: the decoded reply on success (one value, the
-- payload at res.data), nil, err on failure; unknown options and misspelt names raise with a
-- suggestion; secrets stay out of messages by construction. Calls go to the sandbox.
local kaifang = require "kaifang"
local sandbox = require "kaifang.sandbox"

local SPEC = "convention_spec.lua"
local here, raises_at_line = require("spec.helpers.raises")(SPEC)
local q = require("spec.helpers.shell").q

-- The sandbox's demo accounts.
local DEMO = {
  lingdian = { developer_code = "U2QHNB2w=", developer_key = "744ed968e7e1a4aebafa6f4888fced68" },
  zafu = { client_id = "zafu-demo", client_secret = "9d1f6b3c27e84a05b6c0e1f2a3d4c5b6", app_id = "01" },
  yopoint = { appid = "930859529955", app_secret = "5d0f3c8e2a7b4f19c6e1a0b9d8f7e6c5" },
  dakashi = { client_id = "iotacc108b7305fhzljeux0", client_secret = "4c1e7b9a2d5f8e3b6a0c9d2f5e8b1a47" },
}

local function options(platform, base_url, extra)
  local o = { base_url = base_url, timeout = 5 }
  for k, v in pairs(DEMO[platform]) do o[k] = v end
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

-- Per platform: a call that succeeds (and what its data must hold) and one the platform refuses.
local CASES = {
  { platform = "lingdian", ok = { "get_user_tel_by_code", { user_code = "U2TD844B2" } },
    data = function(d) assert.are.equal("13311112222", d) end,
    refused = { "get_user_tel_by_code", { user_code = "NOSUCHCODE" } }, code = 105 },
  { platform = "zafu", ok = { "must_task_list", {} },
    data = function(d) assert.is_table(d) end,
    refused = { "menu_delete", "no-such-menu" } },
  { platform = "yopoint", ok = { "cabinet_list", { Page = 1 } },
    data = function(d) assert.is_table(d.List) end,
    refused = { "consumer_order_get", { ReceiptNo = "OD000" } } },
  { platform = "dakashi", ok = { "member_info", { serial_no = "87000001" } },
    data = function(d) assert.are.equal("87000001", d.serial_no) end,
    refused = { "member_info", { serial_no = "99999999" } }, code = 55004 },
}

describe("every platform returns res | nil, err", function()
  local sb

  setup(function() sb = sandbox.start{ port = 0 } end)
  teardown(function() if sb then sb:stop() end end)

  for _, case in ipairs(CASES) do
    describe(case.platform, function()
      local c
      setup(function()
        local base = case.platform == "zafu" and sb.url .. "/zafu" or sb.url
        c = kaifang[case.platform].new(options(case.platform, base, case.platform == "zafu" and { token_store = kaifang.store.memory() } or nil))
      end)
      teardown(function() if c then c:close() end end)

      it("success: one value, the decoded reply, its payload at data", function()
        local method, args = case.ok[1], case.ok[2]
        local results = table.pack(c[method](c, args))
        assert.are.equal(1, results.n, "a second value on success")
        local res = results[1]
        assert.is_table(res)
        assert.is_not_nil(res.data)
        case.data(res.data)
      end)

      it("refusal: nil, err with platform, kind, code, message, retryable and a __tostring", function()
        local method, args = case.refused[1], case.refused[2]
        local res, err = c[method](c, args)
        assert.is_nil(res)
        assert.is_table(err)
        assert.are.equal(case.platform, err.platform)
        assert.are.equal("platform", err.kind)
        assert.is_not_nil(err.code)
        if case.code then assert.are.equal(case.code, err.code) end
        assert.is_string(err.message)
        assert.is_boolean(err.retryable)
        assert.matches("^kaifang%." .. case.platform .. ": platform error", tostring(err))
      end)
    end)
  end

  it("a transport failure is nil, err of kind transport, on every platform", function()
    for _, case in ipairs(CASES) do
      local c = kaifang[case.platform].new(options(case.platform, "http://127.0.0.1:1",
        case.platform == "zafu" and { token_store = kaifang.store.memory() } or nil))
      local res, err = c[case.ok[1]](c, case.ok[2])
      assert.is_nil(res, case.platform)
      assert.are.equal("transport", err.kind, case.platform)
      assert.are.equal(case.platform, err.platform)
      c:close()
    end
  end)
end)

describe("options are checked", function()
  local typos = {
    { "lingdian", "timout", "timeout" },
    { "lingdian", "ssl_verfiy", "ssl_verify" },
    { "zafu", "tokn_store", "token_store" },
    { "yopoint", "sign_kye", "sign_key" },
    { "dakashi", "client_secert", "client_secret" },
    { "dakashi", "id_feild", "id_field" },
    { "lingdian", "concurency", "concurrency" },
  }
  for _, t in ipairs(typos) do
    local platform, typo, meant = t[1], t[2], t[3]
    it(platform .. ": an unknown option '" .. typo .. "' raises at the caller's line and names the likely one", function()
      local o = options(platform, "http://127.0.0.1:1")
      o[typo] = 3
      if typo == "client_secert" then o.client_secret = nil end
      local err = raises_at_line(function() here(); kaifang[platform].new(o) end)
      assert.matches("kaifang%." .. platform .. ": unknown option '" .. typo .. "' %(did you mean '" .. meant .. "'%?%)", err)
    end)
  end

  it("an option nothing resembles lists what there is", function()
    local o = options("lingdian", "http://127.0.0.1:1")
    o.colour = "blue"
    local err = raises_at_line(function() here(); kaifang.lingdian.new(o) end)
    assert.matches("unknown option 'colour' %(expected .*base_url.*developer_key.*timeout", err)
  end)

  it("an unknown per-call option raises; a misspelt one is named", function()
    local c = kaifang.lingdian.new(options("lingdian", "http://127.0.0.1:1"))
    local err = raises_at_line(function() here(); c:get_user_tel_by_code({ user_code = "U" }, { idempotnet = true }) end)
    assert.matches("unknown per%-call option 'idempotnet' %(did you mean 'idempotent'%?%)", err)
    err = raises_at_line(function() here(); c:get_user_tel_by_code({ user_code = "U" }, { idempotent = "yes" }) end)
    assert.matches("'idempotent' must be a boolean", err)
    err = raises_at_line(function() here(); c:get_user_tel_by_code({ user_code = "U" }, "fast") end)
    assert.matches("must be a table", err)
    err = raises_at_line(function() here(); c:get_user_tel_by_code({ user_code = "U" }, { timout = 2 }) end)
    assert.matches("unknown per%-call option 'timout' %(did you mean 'timeout'%?%)", err)
    for _, bad in ipairs({ 0, -1, 0 / 0, 1e7 }) do
      err = raises_at_line(function() here(); c:get_user_tel_by_code({ user_code = "U" }, { timeout = bad }) end)
      assert.matches("per%-call option 'timeout' must be a positive number of seconds", err)
    end
    c:close()
  end)

  it("an unknown batch option raises at the caller's line", function()
    local err = raises_at_line(function() here(); kaifang.batch({}, { concurency = 8 }) end)
    assert.matches("kaifang%.batch: unknown option 'concurency' %(did you mean 'concurrency'%?%)", err)
  end)

  it("a batch reports a bad per-call option as kind argument for that call", function()
    local c = kaifang.lingdian.new(options("lingdian", "http://127.0.0.1:1"))
    local got
    local summary = kaifang.batch({ { c, "get_user_tel_by_code", { user_code = "U" }, { retry = true } } },
      { on_result = function(_, _, err) got = err end })
    assert.are.equal(1, summary.failed)
    assert.are.equal("argument", got.kind)
    assert.matches("unknown per%-call option 'retry'", got.message)
    c:close()
  end)
end)

describe("parameter names are checked", function()
  local ld, z
  setup(function()
    ld = kaifang.lingdian.new(options("lingdian", "http://127.0.0.1:1"))
    z = kaifang.zafu.new(options("zafu", "http://127.0.0.1:1", { token_store = kaifang.store.memory() }))
  end)

  it("a misspelt required parameter is named as the typo, with the right name", function()
    local err = raises_at_line(function()
      here(); ld:send_wechat_message{ tel = "13311112222", contnet = "hi", link = "https://x.cn" }
    end)
    assert.matches("kaifang%.lingdian: send_wechat_message: unknown parameter 'contnet' %(did you mean 'content'%?%)", err)
  end)

  it("an endpoint without parameters says so, not '(expected )'", function()
    local err = raises_at_line(function() here(); z:must_task_list{ page = 1 } end)
    assert.matches("unknown parameter 'page' %(it takes no parameters%)", err)
    assert.is_nil(err:find("expected )", 1, true))
  end)
end)

describe("secrets stay out of messages", function()
  it("a one-letter ZAFU secret does not garble a transport error", function()
    local z = kaifang.zafu.new{ client_id = "c", client_secret = "s", app_id = "01", base_url = "http://no-such-host.invalid",
                                token_store = kaifang.store.memory(), timeout = 5 }
    local res, err = z:menu_list()
    assert.is_nil(res)
    assert.are.equal("transport", err.kind)
    assert.is_nil(err.message:find("<client_secret>", 1, true), err.message)
    assert.matches("resolve", err.message)
  end)

  it("a string-to-sign is masked at the secret's place only", function()
    local script = ([[
      package.path, package.cpath = %q, %q
      local ld = require("kaifang").lingdian.new{ developer_code = "U2QHNB2w=", developer_key = "s",
                                                  base_url = "http://127.0.0.1:1", debug = true }
      ld:get_user_tel_by_code{ user_code = "sss" }
    ]]):format(package.path, package.cpath)
    local p = assert(io.popen("lua5.4 -e " .. q(script) .. " 2>&1"))
    local out = p:read("a")
    p:close()
    assert.matches("kaifang   string%-to%-sign: developer_code=U2QHNB2w=&timestamp=%d+&type=16&user_code=sss<secret>\n", out)
    assert.matches("kaifang lingdian get_user_tel_by_code http://127%.0%.0%.1:1/api/Developer/getUserTelByCode attempt 1: transport", out)
  end)
end)

describe("the ZAFU token is keyed by the credentials", function()
  local sb
  setup(function() sb = sandbox.start{ port = 0 } end)
  teardown(function() if sb then sb:stop() end end)

  it("a wrong secret does not borrow the token a good client stored", function()
    local shared = kaifang.store.memory()
    local good = kaifang.zafu.new(options("zafu", sb.url .. "/zafu", { token_store = shared }))
    assert(good:menu_list())
    local bad = kaifang.zafu.new(options("zafu", sb.url .. "/zafu", { token_store = shared, client_secret = "wrong" }))
    local res, err = bad:menu_list()
    assert.is_nil(res)
    assert.are.equal("auth", err.kind)
    assert.are.equal("invalid_client", err.code)
    assert.is_nil(tostring(err):find("wrong", 1, true))
    assert(good:menu_list()) -- and the good client's token was left alone
    assert.are.equal(1, good.stats.fetched)
    good:close()
    bad:close()
  end)

  it("the store key carries a digest of the credentials, never the secret", function()
    local z = kaifang.zafu.new(options("zafu", "http://127.0.0.1:1", { token_store = kaifang.store.memory() }))
    assert.matches("^zafu:token:zafu%-demo:%x+@http://127%.0%.0%.1:1$", z.token_key)
    assert.is_nil(z.token_key:find(DEMO.zafu.client_secret, 1, true))
    z:close()
  end)
end)
