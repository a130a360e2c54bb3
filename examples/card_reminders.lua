-- Read each Dakashi IoT card's data usage and packages; for a card that has used most of its data
-- or whose package ends soon, send its user a Lingdian Campus card reminder (user_card_remind).
-- Lingdian finds the card's user by msisdn and iccid; the reminder's tel is the developer's own
-- phone (开发者手机号), the client option developer_tel.
--
--   KAIFANG_DAKASHI_URL=http://127.0.0.1:8080 KAIFANG_LINGDIAN_URL=http://127.0.0.1:8080 \
--     lua5.4 examples/card_reminders.lua
--
-- Credentials come from KAIFANG_DAKASHI_CLIENT_ID / KAIFANG_DAKASHI_CLIENT_SECRET and KAIFANG_LINGDIAN_CODE /
-- KAIFANG_LINGDIAN_KEY / KAIFANG_LINGDIAN_TEL (the sandbox's demo credentials by default). CARD_USAGE_THRESHOLD
-- (0.8) and CARD_EXPIRY_DAYS (7) set when a card needs a reminder.
local kaifang = require "kaifang"

local dk = kaifang.dakashi.new{
  client_id = os.getenv("KAIFANG_DAKASHI_CLIENT_ID") or "iotacc108b7305fhzljeux0",
  client_secret = os.getenv("KAIFANG_DAKASHI_CLIENT_SECRET") or "4c1e7b9a2d5f8e3b6a0c9d2f5e8b1a47",
  base_url = os.getenv("KAIFANG_DAKASHI_URL") or "http://127.0.0.1:8080",
}
local ld = kaifang.lingdian.new{
  developer_code = os.getenv("KAIFANG_LINGDIAN_CODE") or "U2QHNB2w=",
  developer_key = os.getenv("KAIFANG_LINGDIAN_KEY") or "744ed968e7e1a4aebafa6f4888fced68",
  developer_tel = os.getenv("KAIFANG_LINGDIAN_TEL") or "12345678910",
  base_url = os.getenv("KAIFANG_LINGDIAN_URL") or "http://127.0.0.1:8080",
}

-- The cards we sold (Lingdian knows who uses each: the reminder goes to that user).
local CARDS = { "1410139903", "1410139904", "87000001" }

local THRESHOLD = tonumber(os.getenv("CARD_USAGE_THRESHOLD") or "") or 0.8
local EXPIRY_DAYS = tonumber(os.getenv("CARD_EXPIRY_DAYS") or "") or 7

local CST = 8 * 3600 -- Dakashi writes times in China Standard Time, "YYYY-MM-DD HH:MM:SS"
local now = os.date("!%Y-%m-%d %H:%M:%S", os.time() + CST)
local soon = os.date("!%Y-%m-%d %H:%M:%S", os.time() + CST + EXPIRY_DAYS * 86400)

local function chinese_date(t) -- "2026-11-25 15:05:00" -> "2026年11月25日"
  local y, m, d = t:match("^(%d+)-(%d+)-(%d+)")
  if not y then return t end
  return ("%d年%d月%d日"):format(tonumber(y), tonumber(m), tonumber(d))
end

local reminded, fine, failed = 0, 0, 0
for _, serial_no in ipairs(CARDS) do
  local card, packages, err
  card, err = dk:member_info{ serial_no = serial_no }
  if card then packages, err = dk:member_product_info{ serial_no = serial_no } end
  local info = card and card.data
  packages = packages and packages.data
  if not info or not packages then
    failed = failed + 1
    print(("  FAILED    %s: %s"):format(serial_no, tostring(err)))
  else
    local total, used = tonumber(info.total_data_value) or 0, tonumber(info.used_data_value) or 0
    local share = total > 0 and used / total or 1
    -- when the data stops: the latest end among the packages still running
    local ends
    for _, p in ipairs(packages) do
      local running = p.expire_time and p.expire_time > now
      if running and (not ends or p.expire_time > ends) then ends = p.expire_time end
    end
    local reasons = {}
    if share >= THRESHOLD then
      reasons[#reasons + 1] = ("本月流量已用 %d%%（%s / %s MB）"):format(math.floor(share * 100 + 0.5), info.used_data_value, info.total_data_value)
    end
    if not ends or ends <= soon then
      reasons[#reasons + 1] = ends and ("流量套餐将于%s到期"):format(chinese_date(ends)) or "没有生效中的流量套餐"
    end
    local summary = ("%s used %d%% of %s MB, packages run until %s"):format(
      serial_no, math.floor(share * 100 + 0.5), info.total_data_value, ends or "-")
    if #reasons == 0 then
      fine = fine + 1
      print("  fine      " .. summary)
    else
      local ok, rerr = ld:user_card_remind{
        msisdn = info.msisdn, iccid = info.iccid,
        remind = table.concat(reasons, "，") .. "，请及时充值。",
        expire_time = chinese_date(ends or now),
      }
      if ok then
        reminded = reminded + 1
        print(("  reminded  %s -> the card's user (%s): %s"):format(summary, info.msisdn, table.concat(reasons, "; ")))
      else
        failed = failed + 1
        print(("  FAILED    %s: %s"):format(summary, tostring(rerr)))
      end
    end
  end
end

print(("%d cards checked: %d reminded, %d fine, %d failed"):format(#CARDS, reminded, fine, failed))
os.exit(failed == 0)
