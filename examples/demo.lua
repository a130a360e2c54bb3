-- `make demo`: start the sandbox, run the example workflows against it, show what the
-- platforms received, stop the sandbox.
local sandbox = require "kaifang.sandbox"

local lua = os.getenv("KAIFANG_LUA") or "lua5.4"
local sb = sandbox.start{ port = 0 }
print("sandbox: " .. sb.url)

local env = ""
for _, platform in ipairs({ "LINGDIAN", "ZAFU", "YOPOINT", "DAKASHI" }) do
  env = env .. ("KAIFANG_%s_URL=%s "):format(platform, sb.url)
end

local failed = {}
local function run(script, title)
  local f = io.open(script)
  if not f then return end
  f:close()
  print("\n== " .. title .. " (" .. script .. ")")
  io.stdout:flush()
  local ok = os.execute(env .. lua .. " " .. script)
  if not ok then failed[#failed + 1] = script end
end

run("examples/notify.lua", "WeChat notices through Lingdian Campus")
run("examples/cabinet_delivery.lua", "Yopoint cabinet orders into Lingdian delivery")
run("examples/card_reminders.lua", "Dakashi card usage into Lingdian reminders")
run("examples/zafu_messages.lua", "ZAFU campus-app notices, read back by dataKey")

print("\n== what the sandbox's Lingdian Campus accepted")
for _, kind in ipairs({ "messages", "orders", "reminders" }) do
  local records = sb:records("lingdian", kind) or {}
  print(("%d %s"):format(#records, kind))
  for _, r in ipairs(records) do
    local p = r.params or {}
    print(("  #%s %s"):format(math.tointeger(r.id) or tostring(r.id), p.msisdn or p.tel or p.shop_code or ""))
  end
end

print("\n== what the sandbox's ZAFU accepted")
local messages = sb:records("zafu", "messages") or {}
print(("%d messages"):format(#messages))
for _, m in ipairs(messages) do
  print(("  #%s %s to %s (dataKey %s)"):format(math.tointeger(m.id) or tostring(m.id), m.via, tostring(m.xgh or m.userno),
    tostring(m.dataKey)))
end
local tokens = sb:records("zafu", "tokens") or {}
print(("%d token issued"):format(math.tointeger(tokens.issued) or 0))

-- the duplicate detector: an action any example sent twice would show here
local counters = sb:counters() or {}
local dups = {}
for _, platform in ipairs(sb.platforms) do
  dups[#dups + 1] = ("%s %d"):format(platform, math.tointeger((counters[platform] or {}).duplicates) or 0)
end
print("\n== actions received twice: " .. table.concat(dups, ", "))

sb:stop()
print("\nsandbox stopped")
if #failed > 0 then
  print("failed: " .. table.concat(failed, ", "))
  os.exit(1)
end
