-- Signatures per second for a typical 8-parameter Lingdian request:
--   kaifang:  kaifang.sign.lingdian (the C core's canonical-string signer)
--   lua:      the same string composed in Lua with table.sort/table.concat, MD5 by luaossl
--             (what an integrator would otherwise write)
--   floor:    OpenSSL's MD5 of the finished string alone (through kaifang.core.digest)
-- Run: make bench (or lua5.4 bench/sign.lua [seconds-per-case])
local kaifang = require "kaifang"
local core = require "kaifang.core"
local has_ossl, ossl_digest = pcall(require, "openssl.digest")

local SECONDS = tonumber(arg and arg[1]) or 1
local KEY = "744ed968e7e1a4aebafa6f4888fced68"
local params = {
  developer_code = "U2QHNB2w=", tel = "13311112222", type = 1, timestamp = 1564047126,
  content = "同学你好，你干洗的衣服已经熨烫好了，放在我店前台处，空了记得过来取哟。",
  link = "https://szai.0xiao.com/info/info_detail?info_id=165", sign_type = "md5", extra = "",
}

local function lua_sign(p, key)
  local keys = {}
  for k, v in pairs(p) do
    if k ~= "sign" and k ~= "sign_type" and k ~= "key" and k ~= "developer_key" and v ~= "" then keys[#keys + 1] = k end
  end
  table.sort(keys)
  local parts = {}
  for i, k in ipairs(keys) do parts[i] = k .. "=" .. tostring(p[k]) end
  local raw = ossl_digest.new("md5"):final(table.concat(parts, "&") .. key)
  return (raw:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

local function rate(fn)
  local n, batch = 0, 2000
  local t0 = core.monotonic()
  local deadline = t0 + SECONDS
  repeat
    for _ = 1, batch do fn() end
    n = n + batch
  until core.monotonic() >= deadline
  return n / (core.monotonic() - t0)
end

local sign_fn = kaifang.sign.lingdian
local expected, sts = sign_fn(params, KEY)
local results = {}
results.kaifang = rate(function() sign_fn(params, KEY) end)
if has_ossl then
  assert(lua_sign(params, KEY) == expected, "the Lua composition must sign the same")
  results.lua = rate(function() lua_sign(params, KEY) end)
end
local digest = core.digest
assert(digest("md5", sts) == expected)
results.floor = rate(function() digest("md5", sts) end)

print(("%-34s %12s"):format("signing (8 params, md5)", "signs/s"))
print(("%-34s %12.0f"):format("kaifang.sign.lingdian", results.kaifang))
if results.lua then
  print(("%-34s %12.0f"):format("Lua table.sort/concat + luaossl", results.lua))
else
  print("Lua table.sort/concat + luaossl    (lua-luaossl not installed)")
end
print(("%-34s %12.0f"):format("OpenSSL MD5 of the finished string", results.floor))
if results.lua then print(("kaifang / lua:   %.2fx (target >= 3x)"):format(results.kaifang / results.lua)) end
print(("floor / kaifang: %.2fx (target <= 2x)"):format(results.floor / results.kaifang))
