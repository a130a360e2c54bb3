-- Signatures per second for a Lingdian request of 8 and of 128 parameters:
--   kaifang   the signer as a client calls it (kaifang.sign.signer("lingdian"):sign(params,
--             secret, true), the C core's canonical-string signer: sort, join, MD5, hex)
--   lua       the same string composed in Lua with table.sort/table.concat, MD5 by luaossl
--             (what an integrator would otherwise write)
--   floor     bench/sign_floor.c: MD5 of the finished string-to-sign, hex, in a C loop with the
--             digest fetched once (what signing costs with nothing around it)
-- Counted per CPU second, pinned to one core; each case runs ROUNDS times, interleaved; median
-- ± spread.
-- Targets: kaifang within 1.5x of the floor at 8 parameters, within 2x at 128.
-- Run: make bench (or lua5.4 bench/sign.lua [seconds-per-case])
local kaifang = require "kaifang"
local bench = dofile("bench/common.lua")
local has_ossl, ossl_digest = pcall(require, "openssl.digest")

local SECONDS = tonumber(arg and arg[1]) or 0.5
local ROUNDS = tonumber(os.getenv("ROUNDS")) or 3
local KEY = "744ed968e7e1a4aebafa6f4888fced68"
local FLOOR = bench.OUT .. "/sign_floor"

local function params(n)
  local p = {
    developer_code = "U2QHNB2w=", tel = "13311112222", type = 1, timestamp = 1564047126,
    content = "同学你好，你干洗的衣服已经熨烫好了，放在我店前台处，空了记得过来取哟。",
    link = "https://szai.0xiao.com/info/info_detail?info_id=165", sign_type = "md5", extra = "",
  }
  for i = 9, n do p[("field_%03d"):format(i)] = i % 2 == 0 and i * 7919 or ("value " .. i) end
  return p
end

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

-- fn(a, b, c, d) per CPU second of this process (user + sys), as sign_floor counts; called
-- directly, so that no closure of the benchmark's own is counted
local function rate(fn, a, b, c, d)
  local n, batch = 0, 2000
  local t0 = bench.cpu()
  local deadline = t0 + SECONDS
  repeat
    for _ = 1, batch do fn(a, b, c, d) end
    n = n + batch
  until bench.cpu() >= deadline
  return n / (bench.cpu() - t0)
end

local pinning = bench.server_side() -- no server here: this only finds out whether pinning works
bench.client_side()
local signer = kaifang.sign.signer("lingdian")
print(pinning)
print(("%-10s %-34s %16s %12s"):format("params", "signer", "signs/CPU s", "CPU µs/sign"))
for _, n in ipairs({ 8, 128 }) do
  local p = params(n)
  local expected, sts = signer:sign(p, KEY)
  local stsfile = bench.OUT .. "/sts.txt"
  local f = assert(io.open(stsfile, "w"))
  f:write(sts)
  f:close()
  local cases = {
    { name = "kaifang", run = function() return { rps = rate(signer.sign, signer, p, KEY, true), cpu_us = 0 } end },
    { name = "floor", run = function()
      local out = bench.shell(bench.client_prefix() .. bench.quote(FLOOR) .. " " .. bench.quote(stsfile) .. " " .. SECONDS)
      local hex, r = out:match("^(%x+) (%d+)")
      assert(hex == expected, "the C floor must hash the same string: " .. out)
      return { rps = tonumber(r), cpu_us = 0 }
    end },
  }
  if has_ossl then
    assert(lua_sign(p, KEY) == expected, "the Lua composition must sign the same")
    table.insert(cases, 2, { name = "lua", run = function() return { rps = rate(lua_sign, p, KEY), cpu_us = 0 } end })
  end
  local r = bench.rounds(cases, ROUNDS)
  local labels = { kaifang = "kaifang signer", lua = "Lua table.sort/concat + luaossl", floor = "C floor (MD5 of the string)" }
  for _, c in ipairs(cases) do
    local x = r[c.name]
    print(("%-10d %-34s %16s %12.3f"):format(n, labels[c.name], bench.fmt(x.rps, x.rps_spread), 1e6 / x.rps))
  end
  if r.lua then print(("%-10d kaifang / lua: %.2fx faster"):format(n, r.kaifang.rps / r.lua.rps)) end
  print(("%-10d kaifang / floor: %.2fx the floor's time (target <= %s)"):format(n, r.floor.rps / r.kaifang.rps,
    n <= 8 and "1.5x" or "2x"))
end
if not has_ossl then print("lua: lua-luaossl not installed (make bench installs it)") end
