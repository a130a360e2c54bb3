-- Injected faults, per platform, so that specs and benchmarks can see what a client does when
-- the network and the platform misbehave. Set with POST /_sandbox/faults, e.g.
--   {"lingdian":{"latency":[0.01,0.05],"http_5xx":0.02,"reset_before":0.02,"reset_after":0.02,
--                "too_frequent":0.02,"never":0.01,"seed":7}}
-- latency: seconds (a number, or [min, max] drawn uniformly) before every answer;
-- http_5xx: a 503 and nothing done; reset_before: the connection reset, nothing done;
-- reset_after: the request done, then the connection reset before the answer;
-- too_frequent: the platform's own "too frequent" reply, nothing done;
-- never: the request done and never answered. Rates are probabilities per request.
-- GET /_sandbox/faults shows the settings and how many of each were injected.
local M = {}

local KINDS = { "http_5xx", "reset_before", "reset_after", "too_frequent", "never" }
M.KINDS = KINDS

local Faults = {}
Faults.__index = Faults

function M.new()
  return setmetatable({ settings = {}, injected = {} }, Faults)
end

-- Validates and stores one platform's settings (replacing the previous ones).
function Faults:set(platform, s)
  if type(s) ~= "table" then return nil, "faults of " .. platform .. " must be an object" end
  local total = 0
  for k, v in pairs(s) do
    if k == "latency" then
      local ok = type(v) == "number" and v >= 0 or
        type(v) == "table" and type(v[1]) == "number" and type(v[2]) == "number" and 0 <= v[1] and v[1] <= v[2]
      if not ok then return nil, "latency must be seconds or [min, max]" end
    elseif k == "seed" then
      if type(v) ~= "number" then return nil, "seed must be a number" end
    else
      local known = false
      for _, kind in ipairs(KINDS) do known = known or kind == k end
      if not known then return nil, "unknown fault '" .. tostring(k) .. "'" end
      if type(v) ~= "number" or v < 0 or v > 1 then return nil, k .. " must be a probability 0..1" end
      total = total + v
    end
  end
  if total > 1 then return nil, "fault rates add up to more than 1" end
  if s.seed then math.randomseed(math.floor(s.seed)) end
  self.settings[platform] = next(s) and s or nil
  self.injected[platform] = self.injected[platform] or {}
  return true
end

function Faults:report()
  return { settings = self.settings, injected = self.injected }
end

local function count(self, platform, kind)
  local c = self.injected[platform]
  c[kind] = (c[kind] or 0) + 1
end

-- Runs handle() (the platform's real handling) under the platform's faults; too_frequent() gives
-- the platform's own "too frequent" reply.
function Faults:apply(platform, handle, too_frequent)
  local s = self.settings[platform]
  if not s then return handle() end
  local fault, r, acc = nil, math.random(), 0
  for _, kind in ipairs(KINDS) do
    acc = acc + (s[kind] or 0)
    if r < acc then
      fault = kind
      break
    end
  end
  local res
  if fault == "http_5xx" then
    res = { status = 503, headers = { ["Content-Type"] = "text/plain" }, body = "service unavailable (injected)\n" }
  elseif fault == "reset_before" then
    res = { drop = "reset" }
  elseif fault == "too_frequent" and too_frequent then
    res = too_frequent()
  else
    if fault == "too_frequent" then fault = nil end -- the platform has no such reply
    res = handle()
    if fault == "reset_after" then
      res = { drop = "reset" }
    elseif fault == "never" then
      res = { hold = true }
    end
  end
  if fault then count(self, platform, fault) end
  local lat = s.latency
  if lat and not res.hold then
    local d = type(lat) == "number" and lat or lat[1] + (lat[2] - lat[1]) * math.random()
    if d > 0 then res.delay = (res.delay or 0) + d end
  end
  return res
end

return M
