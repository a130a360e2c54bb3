-- Poll new Yopoint cabinet orders and enter each paid one as a Lingdian Campus delivery order
-- (outer_entry_order), never twice for the same order.
--
--   KAIFANG_YOPOINT_URL=http://127.0.0.1:8080 KAIFANG_LINGDIAN_URL=http://127.0.0.1:8080 \
--     lua5.4 examples/cabinet_delivery.lua
--
-- Credentials come from KAIFANG_YOPOINT_APPID / KAIFANG_YOPOINT_SECRET and KAIFANG_LINGDIAN_CODE /
-- KAIFANG_LINGDIAN_KEY (the sandbox's demo credentials by default). CABINET_POLL_ROUNDS (2)
-- and CABINET_POLL_INTERVAL (1 s) set how often it polls; CABINET_DELIVERY_STATE the state file.
--
-- "Never twice": every order is written to the state file *before* it is sent, and marked done
-- after. A rerun skips what is done, and reports (does not resend) an order whose sending was
-- interrupted or whose outcome is unknown: entering it again could deliver it twice. The state
-- is keyed by appid and gateway URL (a sandbox restarted on the same fixed port starts a fresh
-- world: delete the state file then).
local kaifang = require "kaifang"

local yp = kaifang.yopoint.new{
  appid = os.getenv("KAIFANG_YOPOINT_APPID") or "930859529955",
  app_secret = os.getenv("KAIFANG_YOPOINT_SECRET") or "5d0f3c8e2a7b4f19c6e1a0b9d8f7e6c5",
  base_url = os.getenv("KAIFANG_YOPOINT_URL") or "http://127.0.0.1:8080",
}
local ld = kaifang.lingdian.new{
  developer_code = os.getenv("KAIFANG_LINGDIAN_CODE") or "U2QHNB2w=",
  developer_key = os.getenv("KAIFANG_LINGDIAN_KEY") or "744ed968e7e1a4aebafa6f4888fced68",
  base_url = os.getenv("KAIFANG_LINGDIAN_URL") or "http://127.0.0.1:8080",
}

-- Which Lingdian shop delivers from which cabinet (TID -> shop_code).
local SHOPS = { YP0001 = "U2TD844B2", YP0002 = "U2SHOP001" }
local OTHER = 5 -- Lingdian order_type 5: 其他

local ROUNDS = tonumber(os.getenv("CABINET_POLL_ROUNDS") or "") or 2
local INTERVAL = tonumber(os.getenv("CABINET_POLL_INTERVAL") or "") or 1
local STATE = os.getenv("CABINET_DELIVERY_STATE") or ((os.getenv("TMPDIR") or "/tmp") .. "/kaifang-cabinet-delivery.state")
-- The state is per Yopoint account and gateway, so a fresh sandbox starts with a fresh record.
local SOURCE = yp.appid .. "@" .. yp.base_url

local CST = 8 * 3600 -- Yopoint writes times in China Standard Time
local function cst(t) return os.date("!%Y-%m-%d %H:%M:%S", t + CST) end

---------------------------------------------------------------------------- the state file
-- One line per event, tab-separated: source, ReceiptNo, status, daily_number, date. The last
-- line for an order wins. Statuses: sending (written before the call), done, unsure (the call
-- may have gone through), failed (the platform refused it: safe to try again).

local state, per_day = {}, {}

local function load_state()
  local f = io.open(STATE, "r")
  if not f then return end
  for line in f:lines() do
    local source, receipt, status, number, date = line:match("^([^\t]+)\t([^\t]+)\t([^\t]+)\t(%d+)\t([^\t]+)$")
    if source == SOURCE then
      state[receipt] = { status = status, number = tonumber(number), date = date }
    end
  end
  f:close()
  for _, s in pairs(state) do
    if s.status ~= "failed" then per_day[s.date] = math.max(per_day[s.date] or 0, s.number) end
  end
end

local function note(receipt, status, number, date)
  local f = assert(io.open(STATE, "a"))
  f:write(table.concat({ SOURCE, receipt, status, tostring(number), date }, "\t"), "\n")
  f:close() -- on disk before the call that depends on it
  state[receipt] = { status = status, number = number, date = date }
end

---------------------------------------------------------------------------- one poll

-- Orders by outcome, each order counted and reported once however many rounds see it.
local seen = { entered = {}, skipped = {}, waiting = {}, CHECK = {}, FAILED = {} }
local entered_now = 0

local function say(kind, receipt, text)
  if seen[kind][receipt] then return end
  seen[kind][receipt] = true
  if kind == "entered" then entered_now = entered_now + 1 end
  print(("  %-9s %s %s"):format(kind, receipt, text))
end

local function count(kind)
  local n = 0
  for _ in pairs(seen[kind]) do n = n + 1 end
  return n
end

local function items(order)
  local parts = {}
  for _, p in ipairs(order.Products or {}) do parts[#parts + 1] = ("%s x%d"):format(p.ProductName, p.Num) end
  return table.concat(parts, ", ")
end

local function enter(order)
  local receipt = order.ReceiptNo
  local done = state[receipt]
  if done and done.status == "done" then return end
  if done and (done.status == "sending" or done.status == "unsure") then
    say("CHECK", receipt, "was being sent when a run stopped: check Lingdian before entering it by hand")
    return
  end
  local shop = SHOPS[order.TID]
  if not shop then
    say("skipped", receipt, ("no Lingdian shop delivers from cabinet %s (%s)"):format(order.TID, order.CabinetName or "?"))
    return
  end
  if order.PayStatus ~= 1 then
    say("waiting", receipt, "not paid yet; entered once it is")
    return
  end
  if order.RefundStatus == 2 then
    say("skipped", receipt, "refunded")
    return
  end
  local date = cst(os.time()):sub(1, 10)
  local number = (per_day[date] or 0) + 1
  per_day[date] = number
  note(receipt, "sending", number, date)
  local ok, err = ld:outer_entry_order{
    shop_code = shop, order_type = OTHER, daily_number = number, tel = order.Phone ~= "" and order.Phone or nil,
    send_cont = ("友朋%s（%s）订单 %s：%s"):format(order.CabinetName or order.TID, order.TID, receipt, items(order)),
  }
  if ok then
    note(receipt, "done", number, date)
    say("entered", receipt, ("%s -> shop %s, #%d, %s, %s"):format(order.TID, shop, number, order.Phone, items(order)))
  elseif err.maybe_sent then
    note(receipt, "unsure", number, date)
    say("CHECK", receipt, "may or may not have been entered: " .. tostring(err))
  else
    note(receipt, "failed", number, date)
    say("FAILED", receipt, tostring(err))
  end
end

-- Every order of the last day, page by page.
local function poll()
  local now, page, orders = os.time(), 1, {}
  while true do
    local res, err = yp:cabinet_order_list{
      Page = page, PageSize = 50, StartTime = cst(now - 86400), EndTime = cst(now + 60),
    }
    if not res then return nil, err end
    local data = res.data
    for _, o in ipairs(data.List or {}) do orders[#orders + 1] = o end
    if #(data.List or {}) == 0 or #orders >= (tonumber(data.Total) or 0) then break end
    page = page + 1
  end
  return orders
end

load_state()
print("state file: " .. STATE)
local poll_failed = false
for round = 1, ROUNDS do
  local before = entered_now
  local orders, err = poll()
  if not orders then
    print(("round %d: could not list orders: %s"):format(round, tostring(err)))
    poll_failed = true
  else
    print(("round %d: %d cabinet orders in the last 24 hours"):format(round, #orders))
    for _, order in ipairs(orders) do enter(order) end
    if entered_now == before then print("  nothing new to enter") end
  end
  if round < ROUNDS and INTERVAL > 0 then os.execute("sleep " .. INTERVAL) end
end

print(("%d entered into Lingdian delivery, %d skipped, %d waiting for payment, %d to check by hand, %d failed"):format(
  count("entered"), count("skipped"), count("waiting"), count("CHECK"), count("FAILED")))
os.exit(not poll_failed and count("FAILED") == 0)
