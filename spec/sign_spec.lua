-- The signing schemes, pinned by the documents' worked examples (spec/vectors) and by
-- independent computations: the string-to-sign is built here by hand (own byte-order sort and
-- concatenation), the digests come from the md5sum / sha1sum / sha256sum / openssl CLIs.
local cjson = require "cjson"
local core = require "kaifang.core"
local sign = require "kaifang.sign"

-- ---- independent helpers -------------------------------------------------------------------

local shell = require "spec.helpers.shell"
local q, tmpfile, sh = shell.q, shell.tmpfile, shell.sh

-- Hex digest of data by a coreutils tool (md5sum, sha1sum, sha256sum).
local function cli_sum(tool, data)
  local path = tmpfile(data)
  local out = sh(tool .. " " .. q(path))
  os.remove(path)
  local hex = out:match("^(%x+)")
  assert(hex, tool .. " gave no digest: " .. out)
  return hex
end

-- Hex digest by `openssl dgst`; extra = e.g. "-hmac KEY".
local function cli_openssl(alg, data, extra)
  local path = tmpfile(data)
  local out = sh("openssl dgst -" .. alg .. " -r " .. (extra or "") .. " " .. q(path))
  os.remove(path)
  local hex = out:match("^(%x+)")
  assert(hex, "openssl dgst gave no digest: " .. out)
  return hex
end

-- Byte-order comparison written out, so the expectation does not depend on strcoll or on the C sort.
local function bytes_less(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = a:byte(i), b:byte(i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

local function value_text(v)
  if v == cjson.null then return "" end
  if math.type(v) == "integer" then return ("%d"):format(v) end
  assert(type(v) == "string", "the helper only formats strings, integers and null")
  return v
end

-- The canonical k=v&k=v string, built independently of the C signer.
local function canonical(params, exclude, drop_empty)
  local ex, keys = {}, {}
  for _, k in ipairs(exclude) do ex[k] = true end
  for k, v in pairs(params) do
    if not ex[k] and not (drop_empty and value_text(v) == "") then keys[#keys + 1] = k end
  end
  table.sort(keys, bytes_less)
  local parts = {}
  for i, k in ipairs(keys) do parts[i] = k .. "=" .. value_text(params[k]) end
  return table.concat(parts, "&")
end

local LINGDIAN_EX = { "sign", "sign_type", "key", "developer_key" }

local function expect_lingdian(params, secret)
  local sts = canonical(params, LINGDIAN_EX, true) .. secret
  return cli_sum("md5sum", sts), sts
end

local function expect_yopoint(params, secret)
  local sts = canonical(params, { "sign" }, false) .. "&" .. secret
  return cli_sum("md5sum", sts), sts
end

local function expect_dakashi(params, secret)
  local sts = canonical(params, { "sign" }, false) .. secret
  return cli_sum("sha1sum", sts):upper(), sts
end

-- The string-to-sign alone, for the canonical-string checks.
local function sts_of(scheme, params, secret)
  local _, sts = sign[scheme](params, secret)
  return sts
end

-- ---- the vectors ----------------------------------------------------------------------------

local VECTORS_PATH = "spec/vectors/seed-vectors.json"

local function load_vectors()
  local f, err = io.open(VECTORS_PATH, "rb")
  if not f then error("the signing vectors are missing (" .. VECTORS_PATH .. "): " .. tostring(err)) end
  local doc = cjson.decode(f:read("a"))
  f:close()
  assert(type(doc) == "table" and type(doc.vectors) == "table", VECTORS_PATH .. " has no 'vectors' list")
  return doc.vectors
end

local VECTORS = load_vectors()

describe("kaifang.sign vectors", function()
  it("has the four Lingdian vectors", function()
    local n = 0
    for _, v in ipairs(VECTORS) do
      if v.scheme == "lingdian" then n = n + 1 end
    end
    assert.are.equal(4, n)
  end)

  for _, v in ipairs(VECTORS) do
    it(v.name .. ": sign and string_to_sign equal the document's", function()
      assert.are.equal("lingdian", v.scheme)
      local s, sts = sign.lingdian(v.params, v.secret)
      assert.are.equal(v.string_to_sign, sts)
      assert.are.equal(v.sign, s)
    end)

    it(v.name .. ": the vector itself agrees with an independent build and md5sum", function()
      local want_sign, want_sts = expect_lingdian(v.params, v.secret)
      assert.are.equal(v.string_to_sign, want_sts)
      assert.are.equal(v.sign, want_sign)
      assert.are.equal(v.sign, cli_openssl("md5", v.string_to_sign))
    end)

    it(v.name .. ": signs the same with the secret-like keys added (they are excluded)", function()
      local p = {}
      for k, val in pairs(v.params) do p[k] = val end
      p.sign, p.sign_type, p.key, p.developer_key = "deadbeef", "md5", "k", v.secret
      local s, sts = sign.lingdian(p, v.secret)
      assert.are.equal(v.string_to_sign, sts)
      assert.are.equal(v.sign, s)
    end)
  end
end)

-- ---- Yopoint and Dakashi ---------------------------------------------------------------------

describe("kaifang.sign.yopoint", function()
  local secret = "Yp0intAppSecret-9f8e7d"
  local doc_params = {
    appid = "930859529955",
    biz_content = '{"ReceiptNo":"OD190425164650841431"}',
    method = "consumer.order.get",
    sign_type = "md5",
    timestamp = "1556943545748",
    version = "1.0.0",
  }
  local doc_string = 'appid=930859529955&biz_content={"ReceiptNo":"OD190425164650841431"}&method=consumer.order.get'
    .. '&sign_type=md5&timestamp=1556943545748&version=1.0.0&'

  it("builds the document's example string, then the secret", function()
    local s, sts = sign.yopoint(doc_params, secret)
    assert.are.equal(doc_string .. secret, sts)
    assert.are.equal(cli_sum("md5sum", doc_string .. secret), s)
    assert.matches("^[0-9a-f]+$", s)
    assert.are.equal(32, #s)
  end)

  it("gives the same sign for a numeric timestamp and with a sign param present", function()
    local p = {}
    for k, v in pairs(doc_params) do p[k] = v end
    p.timestamp = 1556943545748
    p.sign = "b156660e474668f63876c799870acdf8"
    local s, sts = sign.yopoint(p, secret)
    assert.are.equal(doc_string .. secret, sts)
    assert.are.equal(cli_sum("md5sum", doc_string .. secret), s)
  end)

  it("keeps sign_type, key and developer_key (only sign is excluded)", function()
    local p = { a = "1", sign = "x", sign_type = "md5", key = "k", developer_key = "d" }
    local s, sts = sign.yopoint(p, secret)
    assert.are.equal("a=1&developer_key=d&key=k&sign_type=md5&" .. secret, sts)
    local want_sign, want_sts = expect_yopoint(p, secret)
    assert.are.equal(want_sts, sts)
    assert.are.equal(want_sign, s)
  end)

  it("keeps empty and null values as k=", function()
    local p = { b = "", a = "x", c = cjson.null, d = "y" }
    local s, sts = sign.yopoint(p, secret)
    assert.are.equal("a=x&b=&c=&d=y&" .. secret, sts)
    assert.are.equal(cli_sum("md5sum", "a=x&b=&c=&d=y&" .. secret), s)
  end)

  it("matches an independent computation for a realistic call", function()
    local p = {
      appid = "930859529955", method = "activity.voucher.exchange", version = "1.0.0",
      timestamp = 1556943285, sign_type = "md5", biz_content = '{"mobile":"13311112222","note":"零点 & = 测试"}',
      empty = "",
    }
    local want_sign, want_sts = expect_yopoint(p, secret)
    local s, sts = sign.yopoint(p, secret)
    assert.are.equal(want_sts, sts)
    assert.are.equal(want_sign, s)
  end)
end)

describe("kaifang.sign.dakashi", function()
  local secret = "dks-client-secret-0123456789"

  it("signs the document's php example (client_id, serial_no, timestamp) as SHA1 upper", function()
    local p = { client_id = "iotacc108b7305fhzljeux0", serial_no = "87000001", timestamp = 1487560009 }
    local s, sts = sign.dakashi(p, secret)
    local want = "client_id=iotacc108b7305fhzljeux0&serial_no=87000001&timestamp=1487560009" .. secret
    assert.are.equal(want, sts)
    assert.are.equal(cli_sum("sha1sum", want):upper(), s)
    assert.are.equal(cli_openssl("sha1", want):upper(), s)
    assert.matches("^[0-9A-F]+$", s)
    assert.are.equal(40, #s)
  end)

  -- The document's PHP demo: getSign ksorts every parameter and formatBizQueryParaMap joins each
  -- as $k . "=" . $v . "&", filtering nothing, so an empty (or null) value is signed as "k=".
  -- The signs below were computed once outside kaifang (Python's hashlib and `openssl dgst
  -- -sha1`, which agree) and are checked again here with sha1sum.
  local EMPTY_VECTORS = {
    { params = { client_id = "iotacc108b7305fhzljeux0", timestamp = 1487560009, callback_url = "", x = cjson.null,
                 sign = "E1F082F33F77A749D90631862A122A624ED04542", sign_type = "sha1", iccid = "8986112025304" },
      sts = "callback_url=&client_id=iotacc108b7305fhzljeux0&iccid=8986112025304&sign_type=sha1&timestamp=1487560009&x=",
      sign = "A47292EC620948AFD48348E2B60E987470CD914F" },
    { params = { client_id = "iotacc108b7305fhzljeux0", serial_no = "87000001", timestamp = 1487560009, extra = "" },
      sts = "client_id=iotacc108b7305fhzljeux0&extra=&serial_no=87000001&timestamp=1487560009",
      sign = "4EE8504F0718C9161DEC27D4CB3BC028540747D6" },
  }

  it("keeps empty and null values as k=, as the document's PHP demo does (vectors computed outside kaifang)", function()
    for _, v in ipairs(EMPTY_VECTORS) do
      local s, sts = sign.dakashi(v.params, secret)
      assert.are.equal(v.sts .. secret, sts)
      assert.are.equal(v.sign, s)
      assert.are.equal(v.sign, cli_sum("sha1sum", v.sts .. secret):upper())
      local want_sign, want_sts = expect_dakashi(v.params, secret)
      assert.are.equal(want_sts, sts)
      assert.are.equal(want_sign, s)
    end
  end)
end)

-- ---- the canonical string ---------------------------------------------------------------------

describe("the canonical string", function()
  local secret = "S3CR3T"

  it("drops empty strings and cjson.null for lingdian, keeps them for dakashi and yopoint", function()
    local p = { a = "1", e = "", n = cjson.null, z = "2" }
    assert.are.equal("a=1&z=2" .. secret, sts_of("lingdian", p, secret))
    assert.are.equal("a=1&e=&n=&z=2" .. secret, sts_of("dakashi", p, secret))
    assert.are.equal("a=1&e=&n=&z=2&" .. secret, sts_of("yopoint", p, secret))
  end)

  it("leaves absent (nil) keys out everywhere", function()
    local p = { a = "1", gone = nil, z = "2" }
    p.also_gone = "x"
    p.also_gone = nil
    assert.are.equal("a=1&z=2" .. secret, sts_of("lingdian", p, secret))
    assert.are.equal("a=1&z=2&" .. secret, sts_of("yopoint", p, secret))
    assert.are.equal("a=1&z=2" .. secret, sts_of("dakashi", p, secret))
  end)

  it("excludes sign, sign_type, key and developer_key for lingdian", function()
    local p = { a = "1", sign = "s", sign_type = "MD5", key = "k", developer_key = "dk", keys = "kept", signed = "kept" }
    assert.are.equal("a=1&keys=kept&signed=kept" .. secret, sts_of("lingdian", p, secret))
  end)

  it("excludes only sign for dakashi", function()
    local p = { a = "1", sign = "s", sign_type = "MD5", key = "k", developer_key = "dk" }
    assert.are.equal("a=1&developer_key=dk&key=k&sign_type=MD5" .. secret, sts_of("dakashi", p, secret))
  end)

  it("signs UTF-8 values as raw bytes, not URL-encoded", function()
    local p = { content = "同学你好 ok", city = "杭州" }
    local sts = sts_of("lingdian", p, secret)
    assert.are.equal("city=杭州&content=同学你好 ok" .. secret, sts)
    assert.is_nil(sts:find("%", 1, true))
    local s = sign.lingdian(p, secret)
    assert.are.equal(cli_sum("md5sum", "city=\xe6\x9d\xad\xe5\xb7\x9e&content=\xe5\x90\x8c\xe5\xad\xa6\xe4\xbd\xa0\xe5\xa5\xbd ok" .. secret), s)
  end)

  it("sorts keys by bytes", function()
    local p = { a = "1", B = "2", ab = "3", a_b = "4", ["a-b"] = "5", Z = "6", _x = "7", ["é"] = "8", z = "9", A = "10" }
    local want = "A=10&B=2&Z=6&_x=7&a=1&a-b=5&a_b=4&ab=3&z=9&é=8"
    assert.are.equal(want .. secret, sts_of("lingdian", p, secret))
    assert.are.equal(want .. secret, sts_of("dakashi", p, secret))
    assert.are.equal(want .. "&" .. secret, sts_of("yopoint", p, secret))
    assert.are.equal(canonical(p, {}, true), want) -- the hand-written sort agrees
  end)

  it("puts a key before its longer extensions", function()
    local p = { ab = "1", a = "2", abc = "3", ["a\0"] = "4" }
    assert.are.equal("a=2&a\0=4&ab=1&abc=3" .. secret, sts_of("lingdian", p, secret))
  end)

  it("keeps = and & inside values as they are", function()
    local p = { url = "https://x.cn/a?b=1&c=2", eq = "==", amp = "&&" }
    assert.are.equal("amp=&&&eq===&url=https://x.cn/a?b=1&c=2" .. secret, sts_of("lingdian", p, secret))
  end)

  it("writes numbers as the platforms do", function()
    local cases = {
      { 1, "1" }, { 1.0, "1" }, { 2 ^ 40, "1099511627776" }, { 1.5, "1.5" }, { -3, "-3" }, { -3.0, "-3" },
      { 0, "0" }, { 15640471261, "15640471261" }, { 0.1, "0.1" }, { 2 ^ 53, "9007199254740992" },
      { math.maxinteger, "9223372036854775807" }, { 1e15, "1000000000000000" },
    }
    for _, c in ipairs(cases) do
      local _, sts = sign.lingdian({ n = c[1] }, secret)
      assert.are.equal("n=" .. c[2] .. secret, sts, "number " .. tostring(c[1]))
    end
  end)

  it("never writes 0 as an empty (dropped) value", function()
    assert.are.equal("n=0" .. secret, sts_of("lingdian", { n = 0 }, secret))
    assert.are.equal("n=0" .. secret, sts_of("lingdian", { n = "0" }, secret))
  end)

  it("raises on a boolean or table value, naming the parameter", function()
    for _, scheme in ipairs({ "lingdian", "yopoint", "dakashi" }) do
      local ok, err = pcall(sign[scheme], { a = "1", flag = true }, secret)
      assert.is_false(ok)
      assert.matches("'flag'", tostring(err))
      assert.matches("boolean", tostring(err))
      ok, err = pcall(sign[scheme], { a = "1", nested = { 1, 2 } }, secret)
      assert.is_false(ok)
      assert.matches("'nested'", tostring(err))
      assert.matches("table", tostring(err))
      ok, err = pcall(sign[scheme], { a = "1", fn = print }, secret)
      assert.is_false(ok)
      assert.matches("'fn'", tostring(err))
    end
  end)

  it("raises on a false value too (false is not an empty string)", function()
    local ok, err = pcall(sign.lingdian, { a = "1", off = false }, secret)
    assert.is_false(ok)
    assert.matches("'off'", tostring(err))
  end)

  it("raises on a non-string key", function()
    local ok, err = pcall(sign.lingdian, { a = "1", [1] = "x" }, secret)
    assert.is_false(ok)
    assert.matches("names must be strings", tostring(err))
    ok = pcall(sign.yopoint, { "x", "y" }, secret)
    assert.is_false(ok)
    ok = pcall(sign.dakashi, { [true] = "x" }, secret)
    assert.is_false(ok)
  end)

  it("raises on a missing or empty secret and on params that are not a table", function()
    assert.has_error(function() sign.lingdian({ a = "1" }, "") end)
    assert.has_error(function() sign.lingdian({ a = "1" }) end)
    assert.has_error(function() sign.lingdian("a=1", secret) end)
  end)

  it("signs an empty parameter table as the secret alone", function()
    local s, sts = sign.lingdian({}, secret)
    assert.are.equal(secret, sts)
    assert.are.equal(cli_sum("md5sum", secret), s)
    s, sts = sign.yopoint({}, secret)
    assert.are.equal("&" .. secret, sts)
    assert.are.equal(cli_sum("md5sum", "&" .. secret), s)
  end)
end)

describe("many parameters (past the signer's 32-pair stack array)", function()
  local secret = "744ed968e7e1a4aebafa6f4888fced68"

  local function many(n, with_extras)
    local p = {}
    for i = 1, n do
      local k = ("k%03d"):format((i * 37) % 1000)
      p[k] = (i % 3 == 0) and i * 1000003 or ("v" .. i .. "值")
    end
    if with_extras then
      p.sign, p.sign_type, p.key, p.developer_key = "s", "md5", "k", "dk"
      p.empty1, p.empty2, p.null1 = "", "", cjson.null
    end
    return p
  end

  for _, n in ipairs({ 31, 32, 33, 64, 65, 200 }) do
    it(n .. " params", function()
      local p = many(n, false)
      local count = 0
      for _ in pairs(p) do count = count + 1 end
      assert.are.equal(n, count)
      local want_sign, want_sts = expect_lingdian(p, secret)
      local s, sts = sign.lingdian(p, secret)
      assert.are.equal(want_sts, sts)
      assert.are.equal(want_sign, s)
    end)

    it(n .. " params plus excluded keys, empties and nulls", function()
      local p = many(n, true)
      local want_sign, want_sts = expect_lingdian(p, secret)
      local s, sts = sign.lingdian(p, secret)
      assert.are.equal(want_sts, sts)
      assert.are.equal(want_sign, s)
      want_sign, want_sts = expect_yopoint(p, secret)
      s, sts = sign.yopoint(p, secret)
      assert.are.equal(want_sts, sts)
      assert.are.equal(want_sign, s)
      want_sign, want_sts = expect_dakashi(p, secret)
      s, sts = sign.dakashi(p, secret)
      assert.are.equal(want_sts, sts)
      assert.are.equal(want_sign, s)
    end)
  end

  it("sorts keys alike in their first 8 or 16 bytes, growing and shrinking between calls", function()
    for _, n in ipairs({ 40, 20, 150, 40, 150 }) do
      local p = {}
      for i = 1, n do
        p[("field_%03d"):format(i * 7 % 1000)] = "a" .. i
        p[("a_long_common_prefix_%03d"):format(i * 11 % 1000)] = i
        p[("a_long_common_prefix_%03d_and_more"):format(i * 13 % 1000)] = "b" .. i
      end
      p.field_, p.a_long_common_prefix = "short", "prefix"
      local want_sign, want_sts = expect_lingdian(p, secret)
      local s, sts = sign.lingdian(p, secret)
      assert.are.equal(want_sts, sts)
      assert.are.equal(want_sign, s)
    end
  end)

  it("raises cleanly on a bad value found past the 32nd pair, and signs correctly afterwards", function()
    local p = many(100, false)
    p.zzz_bad = { "table" }
    local ok, err = pcall(sign.lingdian, p, secret)
    assert.is_false(ok)
    assert.matches("'zzz_bad'", tostring(err))
    p.zzz_bad = nil
    local want_sign, want_sts = expect_lingdian(p, secret)
    local s, sts = sign.lingdian(p, secret)
    assert.are.equal(want_sts, sts)
    assert.are.equal(want_sign, s)
  end)
end)

describe("kaifang.sign.mask", function()
  local secret = "744ed968e7e1a4aebafa6f4888fced68"

  it("hides the secret in a string-to-sign", function()
    local _, sts = sign.lingdian({ a = "1", b = "2" }, secret)
    local masked = sign.mask(sts, secret)
    assert.is_nil(masked:find(secret, 1, true))
    assert.are.equal("a=1&b=2<secret>", masked)
  end)

  it("hides a yopoint secret after its joiner", function()
    local _, sts = sign.yopoint({ a = "1" }, secret)
    assert.are.equal("a=1&<secret>", sign.mask(sts, secret))
  end)

  it("masks the secret's place, not look-alike text in the values", function()
    local short = "42"
    local _, sts = sign.lingdian({ n = 42, m = "x42y" }, short)
    assert.are.equal("m=x42y&n=42<secret>", sign.mask(sts, short))
  end)

  it("treats the secret as plain text, not a pattern", function()
    local s = "a.b%1(c"
    local _, sts = sign.lingdian({ a = "1" }, s)
    local masked = sign.mask(sts, s)
    assert.are.equal("a=1<secret>", masked)
  end)
end)

describe("core.signer", function()
  local secret = "hmac-key-不-simple"

  it("signs with sha256 (secret appended)", function()
    local signer = core.signer{ name = "t", digest = "sha256" }
    local p = { b = "2", a = "1", s = "" }
    local s, sts = signer:sign(p, secret)
    assert.are.equal("a=1&b=2&s=" .. secret, sts)
    assert.are.equal(cli_sum("sha256sum", sts), s)
    assert.are.equal(64, #s)
  end)

  it("signs with HMAC-SHA256 (the secret is the key, not in the string)", function()
    local signer = core.signer{ name = "t", digest = "sha256", hmac = true, drop_empty = true }
    local p = { b = "2", a = "1", s = "", n = 7 }
    local s, sts = signer:sign(p, secret)
    assert.are.equal("a=1&b=2&n=7", sts)
    assert.are.equal(cli_openssl("sha256", sts, "-hmac " .. q(secret)), s)
    -- and the plain digest is something else
    assert.are_not.equal(cli_sum("sha256sum", sts), s)
  end)

  it("is callable and honours upper, joiner and exclude", function()
    local signer = core.signer{ digest = "sha1", upper = true, joiner = "|", exclude = { "x", "y" } }
    local s, sts = signer({ x = "1", y = "2", z = "3" }, secret)
    assert.are.equal("z=3|" .. secret, sts)
    assert.are.equal(cli_sum("sha1sum", "z=3|" .. secret):upper(), s)
  end)

  it("keeps no state between calls and between signers", function()
    local a = core.signer{ digest = "md5" }
    local b = core.signer{ digest = "sha1" }
    local s1 = a:sign({ k = "v" }, secret)
    local t1 = b:sign({ k = "v" }, secret)
    local s2 = a:sign({ k = "v" }, secret)
    local t2 = b:sign({ k = "v" }, secret)
    assert.are.equal(s1, s2)
    assert.are.equal(t1, t2)
    assert.are.equal(cli_sum("md5sum", "k=v" .. secret), s1)
    assert.are.equal(cli_sum("sha1sum", "k=v" .. secret), t1)
  end)

  it("raises on an unknown digest", function()
    local ok, err = pcall(core.signer, { digest = "md55" })
    assert.is_false(ok)
    assert.matches("unknown digest", tostring(err))
  end)

  it("raises on an unknown scheme name", function()
    assert.has_error(function() sign.signer("nosuch") end)
  end)

  it("takes a custom scheme table through kaifang.sign.signer", function()
    local signer = sign.signer{ digest = "md5", joiner = "&", exclude = { "sign" } }
    local s, sts = signer:sign({ sign = "x", a = "", b = "1" }, secret)
    assert.are.equal("a=&b=1&" .. secret, sts)
    assert.are.equal(cli_sum("md5sum", sts), s)
  end)
end)
