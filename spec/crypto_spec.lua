-- kaifang.core's digests, AES, base64, hex and encodings, each checked against an independent
-- implementation: the coreutils and openssl CLIs, or a few lines of plain Lua.
local core = require "kaifang.core"
local cjson = require "cjson"

-- ---- independent helpers -------------------------------------------------------------------

local shell = require "spec.helpers.shell"
local q, tmpfile, readfile, sh = shell.q, shell.tmpfile, shell.readfile, shell.sh

-- Runs cmd with {in} replaced by a file holding data; returns stdout.
local function with_input(data, cmd)
  local path = tmpfile(data)
  local ok, out = pcall(sh, (cmd:gsub("{in}", q(path))))
  os.remove(path)
  if not ok then error(out, 0) end
  return out
end

local function cli_sum(tool, data)
  local hex = with_input(data, tool .. " {in}"):match("^(%x+)")
  assert(hex, tool .. " gave no digest")
  return hex
end

local function cli_dgst(alg, data, extra)
  local hex = with_input(data, "openssl dgst -" .. alg .. " -r " .. (extra or "") .. " {in}"):match("^(%x+)")
  assert(hex, "openssl dgst gave no digest")
  return hex
end

local function tohex(s)
  return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

-- openssl enc in a file-to-file round, so binary output is read exactly.
local function cli_aes(decrypt, bits, mode, key, data, iv)
  local inp, out = tmpfile(data), os.tmpname()
  local cmd = ("openssl enc %s-aes-%d-%s -K %s%s -nosalt -in %s -out %s 2>/dev/null"):format(
    decrypt and "-d " or "", bits, mode, tohex(key), iv and (" -iv " .. tohex(iv)) or "", q(inp), q(out))
  local ok = os.execute(cmd)
  local res = ok and readfile(out) or nil
  os.remove(inp)
  os.remove(out)
  return res
end

-- Deterministic pseudo-random bytes (the same run to run, so a failure reproduces).
local rng_state = 12345
local function pseudo_bytes(n)
  local t = {}
  for i = 1, n do
    rng_state = (rng_state * 1103515245 + 12345) % 2147483648
    t[i] = string.char((rng_state >> 16) & 255)
  end
  return table.concat(t)
end

local SAMPLES = {
  "", "a", "abc", "The quick brown fox jumps over the lazy dog", "零点校园 同学你好",
  "with\0nul\0bytes", ("x"):rep(1000), pseudo_bytes(257),
}

-- ---- digests --------------------------------------------------------------------------------

describe("core.digest", function()
  for i, data in ipairs(SAMPLES) do
    it("md5, sha1, sha256 of sample " .. i .. " match the coreutils", function()
      assert.are.equal(cli_sum("md5sum", data), core.digest("md5", data))
      assert.are.equal(cli_sum("sha1sum", data), core.digest("sha1", data))
      assert.are.equal(cli_sum("sha256sum", data), core.digest("sha256", data))
      assert.are.equal(cli_dgst("sha512", data), core.digest("sha512", data))
    end)
  end

  it("gives lower hex by default and with 'hex', upper with 'HEX', bytes with 'raw'", function()
    local data = "kaifang"
    local want = cli_sum("sha1sum", data)
    assert.are.equal(want, core.digest("sha1", data))
    assert.are.equal(want, core.digest("sha1", data, "hex"))
    assert.matches("^[0-9a-f]+$", core.digest("sha1", data, "hex"))
    assert.are.equal(want:upper(), core.digest("sha1", data, "HEX"))
    assert.matches("^[0-9A-F]+$", core.digest("sha1", data, "HEX"))
    local raw = core.digest("sha1", data, "raw")
    assert.are.equal(20, #raw)
    assert.are.equal(want, tohex(raw))
    assert.are.equal(16, #core.digest("md5", data, "raw"))
  end)

  it("raises on an unknown algorithm or format", function()
    assert.has_error(function() core.digest("md55", "x") end)
    assert.has_error(function() core.digest("md5", "x", "base64") end)
    assert.has_error(function() core.digest("md5") end)
  end)
end)

describe("core.hmac", function()
  local keys = { "key", "744ed968e7e1a4aebafa6f4888fced68", ("k"):rep(100), "密钥" }
  for i, key in ipairs(keys) do
    it("sha256, sha1, md5 with key " .. i .. " match openssl dgst -hmac", function()
      for _, data in ipairs({ "", "The quick brown fox jumps over the lazy dog", "零点\0校园" }) do
        assert.are.equal(cli_dgst("sha256", data, "-hmac " .. q(key)), core.hmac("sha256", key, data))
        assert.are.equal(cli_dgst("sha1", data, "-hmac " .. q(key)), core.hmac("sha1", key, data))
        assert.are.equal(cli_dgst("md5", data, "-hmac " .. q(key)), core.hmac("md5", key, data))
      end
    end)
  end

  it("takes a binary key (checked with -macopt hexkey)", function()
    local key, data = pseudo_bytes(40) .. "\0\255", "payload"
    local want = cli_dgst("sha256", data, "-mac HMAC -macopt hexkey:" .. tohex(key))
    assert.are.equal(want, core.hmac("sha256", key, data))
  end)

  it("gives hex, HEX and raw", function()
    local want = cli_dgst("sha256", "data", "-hmac key")
    assert.are.equal(want, core.hmac("sha256", "key", "data", "hex"))
    assert.are.equal(want:upper(), core.hmac("sha256", "key", "data", "HEX"))
    local raw = core.hmac("sha256", "key", "data", "raw")
    assert.are.equal(32, #raw)
    assert.are.equal(want, tohex(raw))
  end)

  it("differs from the plain digest and raises on an unknown algorithm", function()
    assert.are_not.equal(core.digest("sha256", "data"), core.hmac("sha256", "", "data"))
    assert.has_error(function() core.hmac("nope", "k", "d") end)
  end)
end)

-- ---- AES ------------------------------------------------------------------------------------

describe("core.aes_encrypt / aes_decrypt", function()
  local key16 = "0123456789abcdef"
  local key32 = "0123456789abcdef0123456789ABCDEF"
  local iv = "fedcba9876543210"
  local lengths = { 0, 1, 15, 16, 17, 31, 32, 100 }

  for _, n in ipairs(lengths) do
    it("ECB-128, " .. n .. " bytes: equals openssl enc, and round-trips", function()
      local data = pseudo_bytes(n)
      local ct = core.aes_encrypt(key16, data, "ecb")
      assert.are.equal(cli_aes(false, 128, "ecb", key16, data), ct)
      assert.are.equal((n // 16 + 1) * 16, #ct)
      assert.are.equal(data, core.aes_decrypt(key16, ct, "ecb"))
      assert.are.equal(data, cli_aes(true, 128, "ecb", key16, ct))
    end)

    it("CBC-128, " .. n .. " bytes: equals openssl enc, and round-trips", function()
      local data = pseudo_bytes(n)
      local ct = core.aes_encrypt(key16, data, "cbc", iv)
      assert.are.equal(cli_aes(false, 128, "cbc", key16, data, iv), ct)
      assert.are.equal(data, core.aes_decrypt(key16, ct, "cbc", iv))
      assert.are.equal(data, cli_aes(true, 128, "cbc", key16, ct, iv))
    end)
  end

  it("defaults to ECB", function()
    local data = "18位身份证号码330102199001011234"
    assert.are.equal(core.aes_encrypt(key16, data, "ecb"), core.aes_encrypt(key16, data))
    assert.are.equal(data, core.aes_decrypt(key16, core.aes_encrypt(key16, data)))
  end)

  it("decrypts what openssl encrypted", function()
    local data = "身份证 330102199001011234"
    assert.are.equal(data, core.aes_decrypt(key16, cli_aes(false, 128, "ecb", key16, data), "ecb"))
    assert.are.equal(data, core.aes_decrypt(key16, cli_aes(false, 128, "cbc", key16, data, iv), "cbc", iv))
  end)

  it("does AES-256 by key length", function()
    local data = "thirty-two byte keys select AES-256"
    assert.are.equal(cli_aes(false, 256, "ecb", key32, data), core.aes_encrypt(key32, data, "ecb"))
    assert.are.equal(cli_aes(false, 256, "cbc", key32, data, iv), core.aes_encrypt(key32, data, "cbc", iv))
  end)

  it("returns nil, message (not raise) for a wrong key length", function()
    for _, k in ipairs({ "", "short", ("k"):rep(15), ("k"):rep(17), ("k"):rep(33) }) do
      local ok, res, msg = pcall(core.aes_encrypt, k, "data", "ecb")
      assert.is_true(ok)
      assert.is_nil(res)
      assert.is_string(msg)
      assert.matches("key", msg)
      ok, res, msg = pcall(core.aes_decrypt, k, ("\0"):rep(16), "ecb")
      assert.is_true(ok)
      assert.is_nil(res)
      assert.is_string(msg)
    end
  end)

  it("returns nil, message for a missing or bad IV in CBC", function()
    for _, bad in ipairs({ false, "short", ("i"):rep(15), ("i"):rep(17) }) do
      local ok, res, msg = pcall(core.aes_encrypt, key16, "data", "cbc", bad or nil)
      assert.is_true(ok)
      assert.is_nil(res)
      assert.matches("iv", msg)
      ok, res, msg = pcall(core.aes_decrypt, key16, ("\0"):rep(16), "cbc", bad or nil)
      assert.is_true(ok)
      assert.is_nil(res)
      assert.is_string(msg)
    end
  end)

  it("returns nil, message for an unknown mode", function()
    local res, msg = core.aes_encrypt(key16, "data", "gcm")
    assert.is_nil(res)
    assert.is_string(msg)
  end)

  it("returns nil, message when decrypting with the wrong key", function()
    local ct = core.aes_encrypt(key16, "a secret identity number", "ecb")
    local wrong = "fedcba9876543210"
    assert.is_nil(cli_aes(true, 128, "ecb", wrong, ct)) -- openssl rejects the padding too
    local ok, res, msg = pcall(core.aes_decrypt, wrong, ct, "ecb")
    assert.is_true(ok)
    assert.is_nil(res)
    assert.is_string(msg)
    assert.matches("decrypt", msg)
  end)

  it("returns nil, message for a ciphertext that is not whole blocks", function()
    local ct = core.aes_encrypt(key16, "abc", "ecb")
    local res, msg = core.aes_decrypt(key16, ct:sub(1, 15), "ecb")
    assert.is_nil(res)
    assert.is_string(msg)
    res, msg = core.aes_decrypt(key16, "", "ecb")
    assert.is_nil(res)
    assert.is_string(msg)
  end)
end)

-- ---- base64 and hex -------------------------------------------------------------------------

describe("core.base64", function()
  for n = 0, 20 do
    it("encodes and decodes " .. n .. " random bytes as the base64 CLI does", function()
      local data = pseudo_bytes(n)
      local want = with_input(data, "base64 -w0 {in}")
      local enc = core.base64_encode(data)
      assert.are.equal(want, enc)
      assert.are.equal(data, core.base64_decode(want))
      assert.are.equal(data, with_input(enc, "base64 -d {in}"))
    end)
  end

  it("handles a long binary string", function()
    local data = pseudo_bytes(3000) .. "\0\255\0"
    local want = with_input(data, "base64 -w0 {in}")
    assert.are.equal(want, core.base64_encode(data))
    assert.are.equal(data, core.base64_decode(want))
  end)

  it("returns nil, message for malformed input", function()
    for _, bad in ipairs({ "abc", "ab=c", "a===", "====", "@@@@", "YWJj\n", "YW Jj", "YWJj=", "Y===",
                           "YQ==YQ==", "YWJ-", "YWJ_" }) do
      local ok, res, msg = pcall(core.base64_decode, bad)
      assert.is_true(ok, "raised on " .. bad)
      assert.is_nil(res, "decoded " .. ("%q"):format(bad))
      assert.is_string(msg)
    end
  end)

  it("decodes padded forms to the right lengths", function()
    assert.are.equal("a", core.base64_decode("YQ=="))
    assert.are.equal("ab", core.base64_decode("YWI="))
    assert.are.equal("abc", core.base64_decode("YWJj"))
    assert.are.equal("", core.base64_decode(""))
    assert.are.equal("\0", core.base64_decode("AA=="))
  end)
end)

describe("core.hex", function()
  it("encodes lower by default, upper on request, like a plain-Lua encoder", function()
    assert.are.equal("ff00ab", core.hex_encode("\255\0\171"))
    assert.are.equal("FF00AB", core.hex_encode("\255\0\171", true))
    assert.are.equal("ff00ab", core.hex_encode("\255\0\171", false))
    local data = pseudo_bytes(300) .. "\0\255"
    assert.are.equal(tohex(data), core.hex_encode(data))
    assert.are.equal(tohex(data):upper(), core.hex_encode(data, true))
    assert.are.equal("", core.hex_encode(""))
  end)

  it("decodes either case", function()
    local data = pseudo_bytes(64) .. "\0\255"
    assert.are.equal(data, core.hex_decode(tohex(data)))
    assert.are.equal(data, core.hex_decode(tohex(data):upper()))
    assert.are.equal("\171\205", core.hex_decode("aBCd"))
    assert.are.equal("", core.hex_decode(""))
  end)

  it("returns nil, message for an odd length or a non-hex digit", function()
    for _, bad in ipairs({ "a", "abc", "zz", "0g", " 00", "0x00" }) do
      local res, msg = core.hex_decode(bad)
      assert.is_nil(res, bad)
      assert.is_string(msg)
    end
  end)
end)

describe("core.ct_equal", function()
  it("compares bytes", function()
    assert.is_true(core.ct_equal("", ""))
    assert.is_true(core.ct_equal("abc", "abc"))
    assert.is_true(core.ct_equal("a\0b", "a\0b"))
    assert.is_false(core.ct_equal("abc", "abd"))
    assert.is_false(core.ct_equal("abc", "Abc"))
    assert.is_false(core.ct_equal("a\0b", "a\0c"))
    assert.is_false(core.ct_equal("abc", "abcd"))
    assert.is_false(core.ct_equal("abc", "ab"))
    assert.is_false(core.ct_equal("", "a"))
    local sig = core.digest("md5", "x")
    assert.is_true(core.ct_equal(sig, core.digest("md5", "x")))
    assert.is_false(core.ct_equal(sig, sig:upper()))
  end)
end)

describe("core.random_hex", function()
  it("gives 2n lower-hex characters", function()
    for _, n in ipairs({ 1, 8, 16, 32, 256 }) do
      local h = core.random_hex(n)
      assert.are.equal(2 * n, #h)
      assert.matches("^[0-9a-f]+$", h)
    end
    assert.are.equal(32, #core.random_hex())
  end)

  it("does not repeat itself", function()
    local seen, digits = {}, {}
    for _ = 1, 200 do
      local h = core.random_hex(16)
      assert.is_nil(seen[h])
      seen[h] = true
      for c in h:gmatch(".") do digits[c] = true end
    end
    local n = 0
    for _ in pairs(digits) do n = n + 1 end
    assert.are.equal(16, n) -- 6400 digits use every one of the 16
  end)

  it("raises outside 1..256 bytes", function()
    assert.has_error(function() core.random_hex(0) end)
    assert.has_error(function() core.random_hex(257) end)
    assert.has_error(function() core.random_hex(-1) end)
  end)
end)

-- ---- URL and form encoding ------------------------------------------------------------------

local function lua_url_encode(s)
  return (s:gsub("[^A-Za-z0-9%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

describe("core.url_encode", function()
  it("keeps RFC 3986's unreserved characters", function()
    local unreserved = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
    assert.are.equal(unreserved, core.url_encode(unreserved))
  end)

  it("encodes everything else as upper %XX", function()
    assert.are.equal("%20", core.url_encode(" "))
    assert.are.equal("a%2Bb%3Dc%26d%2Fe%3Ff%23g%25h", core.url_encode("a+b=c&d/e?f#g%h"))
    assert.are.equal("%E4%B8%AD%E6%96%87", core.url_encode("中文"))
    assert.are.equal("%00%FF%0A%0D", core.url_encode("\0\255\n\r"))
    assert.are.equal("", core.url_encode(""))
  end)

  it("encodes every byte value as a plain-Lua encoder does", function()
    local all = {}
    for b = 0, 255 do all[#all + 1] = string.char(b) end
    all = table.concat(all)
    assert.are.equal(lua_url_encode(all), core.url_encode(all))
  end)

  it("encodes long strings (past the C side's chunk size)", function()
    local data = (pseudo_bytes(700) .. "中 文 "):rep(3)
    assert.are.equal(lua_url_encode(data), core.url_encode(data))
  end)
end)

describe("core.form_encode", function()
  it("sorts keys by bytes and encodes values", function()
    local body = core.form_encode{ tel = "13311112222", content = "你好 world", a_b = "x&y=z", B = "1" }
    assert.are.equal("B=1&a_b=x%26y%3Dz&content=%E4%BD%A0%E5%A5%BD%20world&tel=13311112222", body)
  end)

  it("writes integral numbers without .0", function()
    assert.are.equal("a=1&b=1&c=1099511627776&d=1.5&e=-3&f=15640471261",
      core.form_encode{ a = 1, b = 1.0, c = 2 ^ 40, d = 1.5, e = -3, f = 15640471261 })
  end)

  it("encodes keys too, and writes null and empty values as k=", function()
    assert.are.equal("a%20b=1&e=&n=", core.form_encode{ ["a b"] = 1, e = "", n = cjson.null })
  end)

  it("gives an empty string for no params", function()
    assert.are.equal("", core.form_encode{})
  end)

  it("round-trips a signed lingdian body through a plain-Lua decoder", function()
    local params = { developer_code = "U2QHNB2w=", content = "同学你好，取衣服", link = "https://x.cn/?a=1&b=2",
                     type = 1, timestamp = 15640471261, sign = "5f9ca34e51d31de1d931e3982c5b2833" }
    local got = {}
    for pair in core.form_encode(params):gmatch("[^&]+") do
      local k, v = pair:match("^([^=]*)=(.*)$")
      local function dec(s) return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)) end
      got[dec(k)] = dec(v)
    end
    for k, v in pairs(params) do assert.are.equal(tostring(math.tointeger(v) or v), got[k]) end
  end)

  it("raises on booleans, tables and non-string keys", function()
    assert.has_error(function() core.form_encode{ a = true } end)
    assert.has_error(function() core.form_encode{ a = {} } end)
    assert.has_error(function() core.form_encode{ "x" } end)
  end)
end)
