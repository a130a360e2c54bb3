-- The duplicate detector every platform of the sandbox shares: it sees the acting requests a
-- platform accepted (notices, orders, reminders, doors, refunds ...; reads are harmless to repeat
-- and are not tracked), so that a client that sends one twice is caught by any test.
--
-- Two keys (README: "What the documents leave open"):
--   content  what the request asks for: every parameter but its freshness (timestamp, sign,
--            access token). The same notice or order again, at any time, is counted, never
--            refused: a platform cannot tell it from a second notice meant as such.
--   sign     the exact signed request again (same timestamp, same sign) within its window: a
--            replay. Counted, and refused when the caller says so (strict, and not idempotent).
-- GET /_sandbox/<platform>/duplicates lists the repeated contents; /_sandbox/counters counts.
local util = require "kaifang.sandbox.util" -- array

local M = {}

local Duplicates = {}
Duplicates.__index = Duplicates

-- now: unix time function.
function M.new(now)
  return setmetatable({
    now = now,
    -- path -> content -> when it first came (a number: seen once, the common case, kept small),
    -- or its entry once repeated
    by_content = {},
    list = util.array(), -- the entries seen twice or more, in order of their first repeat
    signs = {}, -- path -> sign -> until when the sign could still be accepted
    qpath = {}, qsign = {}, qexp = {}, first = 1, last = 0, -- the same, oldest first, to forget them
    duplicates = 0, -- requests whose content had been accepted before
    refused = 0, -- replays refused
  }, Duplicates)
end

function Duplicates:forget_expired(now)
  local qpath, qsign, qexp = self.qpath, self.qsign, self.qexp
  local i = self.first
  while i <= self.last and qexp[i] < now do
    local by_sign = self.signs[qpath[i]]
    if by_sign[qsign[i]] == qexp[i] then by_sign[qsign[i]] = nil end
    qpath[i], qsign[i], qexp[i] = nil, nil, nil
    i = i + 1
  end
  self.first = i
end

-- t[k], a table made on first use
local function sub(t, k)
  local s = t[k]
  if not s then
    s = {}
    t[k] = s
  end
  return s
end

-- An acting request the platform has accepted so far. path: the route; content: the canonical
-- text of what it asks for; sign (nil for an unsigned platform) and expires (unix time after
-- which that sign is refused as stale anyway); refuse: whether a replay is refused.
-- Returns true when the request is a replay to refuse (the platform answers in its own words).
function Duplicates:check(path, content, sign, expires, refuse)
  local now = self.now()
  self:forget_expired(now)
  local by_sign = sign and sub(self.signs, path)
  local replay = by_sign and by_sign[sign] ~= nil
  local seen = sub(self.by_content, path)
  local e = seen[content]
  if e then
    if type(e) == "number" then
      e = { path = path, content = content, count = 1, replays = 0, refused = 0, first = e }
      seen[content] = e
      self.list[#self.list + 1] = e
    end
    e.count, e.last = e.count + 1, now
    self.duplicates = self.duplicates + 1
  else
    seen[content] = now
  end
  if replay then
    e.replays = e.replays + 1
    if refuse then
      e.refused = e.refused + 1
      self.refused = self.refused + 1
      return true
    end
  elseif by_sign then
    by_sign[sign] = expires
    local n = self.last + 1
    self.last, self.qpath[n], self.qsign[n], self.qexp[n] = n, path, sign, expires
  end
  return false
end

function Duplicates:counts() return { duplicates = self.duplicates, refused = self.refused } end

return M
