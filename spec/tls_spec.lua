-- The platforms the way they are reached: over HTTPS. The sandbox serves TLS with a private CA
-- made at start (sandbox.start{ tls = true }), and counts full and resumed handshakes, which show
-- the connections and TLS sessions that a process's clients and batches share.
local kaifang = require "kaifang"
local sandbox = require "kaifang.sandbox"
local spawn = require "spec.helpers.spawn"

-- A read (no side effect) per platform, with the demo accounts.
local READS = {
  lingdian = { "get_user_tel_by_code", { user_code = "U2TD844B2" } },
  zafu = { "menu_list", {} },
  yopoint = { "cabinet_product_stock", { TID = "YP0002" } },
  dakashi = { "member_info", { serial_no = "87000001" } },
}

local function client(sb, platform, opts)
  local o = { base_url = sb.url .. "/" .. platform, timeout = 5 }
  for k, v in pairs(sb.credentials[platform]) do o[k] = v end
  for k, v in pairs(opts or {}) do o[k] = v end
  return kaifang[platform].new(o)
end

local function read(c, platform)
  local m = READS[platform]
  return c[m[1]](c, m[2])
end

local function assert_refused(res, err, platform, why)
  assert.is_nil(res)
  assert.are.equal(platform, err.platform)
  assert.are.equal("transport", err.kind)
  assert.are.equal(60, err.code) -- CURLE_PEER_FAILED_VERIFICATION
  assert.is_false(err.maybe_sent)
  assert.truthy(err.message:find("TLS certificate verification failed: ", 1, true), err.message)
  assert.truthy(err.message:find(why, 1, true), err.message)
end

describe("over HTTPS", function()
  local sb, other -- other: a certificate for another host name, from its own CA

  setup(function()
    sb = sandbox.start{ tls = true }
    other = sandbox.start{ tls = { names = { "elsewhere.invalid" } } }
  end)

  teardown(function()
    if sb then sb:stop() end
    if other then other:stop() end
  end)

  it("the sandbox serves https, its CA certificate in a directory only this user can open", function()
    assert.truthy(sb.url:find("^https://127%.0%.0%.1:%d+$"), sb.url)
    local dir = assert(sb.cafile:match("^(.*)/ca%.pem$"), sb.cafile)
    local p = assert(io.popen("stat -c %a " .. dir))
    assert.are.equal("700", p:read("l"))
    p:close()
  end)

  for platform in pairs(READS) do
    describe(platform, function()
      it("works with cainfo = the sandbox's CA", function()
        local res, err = read(client(sb, platform, { cainfo = sb.cafile }), platform)
        assert.is_nil(err)
        assert.is_table(res)
        assert.is_not_nil(res.data)
      end)

      it("refuses the sandbox's certificate by default (ssl_verify on, the system's CAs)", function()
        local res, err = read(client(sb, platform), platform)
        assert_refused(res, err, platform, "unable to get local issuer certificate")
      end)

      it("refuses a certificate for another host name, even with its CA", function()
        local res, err = read(client(other, platform, { cainfo = other.cafile }), platform)
        assert_refused(res, err, platform, "no alternative certificate subject name matches target host name '127.0.0.1'")
      end)

      it("skips the checks only with ssl_verify = false", function()
        assert(read(client(sb, platform, { ssl_verify = false }), platform))
        assert(read(client(other, platform, { ssl_verify = false }), platform))
      end)
    end)
  end

  describe("connections and TLS sessions, shared by a process's clients and batches", function()
    -- Runs code in a child process (a process of its own: its own curl share) with `sb`, `client`
    -- and `read` defined, and returns the sandbox's handshake counts it caused: this process's
    -- admin connection is made before and kept alive, so it adds none.
    local function handshakes(code)
      local before = assert(sb:server_stats())
      local c = spawn.chunk(([[
        local kaifang = require "kaifang"
        local sb = { url = %q, cafile = %q, credentials = require("kaifang.sandbox").credentials() }
        local function client(platform, opts)
          local o = { base_url = sb.url .. "/" .. platform, timeout = 5, cainfo = sb.cafile }
          for k, v in pairs(sb.credentials[platform]) do o[k] = v end
          for k, v in pairs(opts or {}) do o[k] = v end
          return kaifang[platform].new(o)
        end
        %s
        print("done")]]):format(sb.url, sb.cafile, code), { limit = 60 })
      local out, status = c.read()
      assert.are.equal(0, status, out)
      assert.are.equal("done\n", out)
      local after = assert(sb:server_stats())
      return { connections = after.accepted - before.accepted, full = after.tls_full - before.tls_full,
               resumed = after.tls_resumed - before.tls_resumed }
    end

    local seen = {}

    it("1,000 sequential calls from one client make 1 full handshake", function()
      local n = handshakes([[
        local c = client("lingdian")
        for _ = 1, 1000 do assert(c:get_user_tel_by_code{ user_code = "U2TD844B2" }) end]])
      assert.are.same({ connections = 1, full = 1, resumed = 0 }, n)
      seen[1] = n
    end)

    it("a 32-way batch makes at most 32 connections, resuming the TLS session of the client's first call", function()
      local n = handshakes([[
        local c = client("lingdian")
        assert(c:get_user_tel_by_code{ user_code = "U2TD844B2" })
        local calls = {}
        for i = 1, 3200 do calls[i] = { c, "get_user_tel_by_code", { user_code = "U2TD844B2" } } end
        local summary = kaifang.batch(calls, { concurrency = 32 })
        assert(summary.ok == 3200, "not every call succeeded")]])
      assert.is_true(n.connections <= 32, n.connections .. " connections")
      assert.are.equal(n.connections, n.full + n.resumed)
      -- Usually 1 full and the rest resumed. OpenSSL makes a TLS 1.3 session single-use once a
      -- handshake has resumed it (the session libcurl caches is then marked not resumable), until
      -- that connection's new ticket replaces it: a connection that starts in between does a full
      -- handshake, so on a busy machine fewer resume.
      assert.is_true(n.resumed >= 1, "no connection resumed the TLS session")
      seen[2] = n
    end)

    it("10 clients of each platform in one process share one connection: 1 full handshake in all", function()
      local n = handshakes([==[
        local reads = {
          lingdian = { "get_user_tel_by_code", { user_code = "U2TD844B2" } }, zafu = { "menu_list", {} },
          yopoint = { "cabinet_product_stock", { TID = "YP0002" } }, dakashi = { "member_info", { serial_no = "87000001" } },
        }
        for platform, m in pairs(reads) do
          for _ = 1, 10 do
            local c = client(platform)
            assert(c[m[1]](c, m[2]))
            c:close()
          end
        end]==])
      assert.are.same({ connections = 1, full = 1, resumed = 0 }, n)
      seen[3] = n
    end)

    it("prints the figures", function()
      assert.are.equal(3, #seen)
      print(("\n[tls headline] 1,000 sequential calls: connections %d, full handshakes %d; a 32-way batch of 3,200 "
        .. "calls after one call: connections %d, full handshakes %d, resumed %d; 40 clients (10 per platform): "
        .. "connections %d, full handshakes %d"):format(seen[1].connections, seen[1].full, seen[2].connections,
        seen[2].full, seen[2].resumed, seen[3].connections, seen[3].full))
    end)
  end)
end)
