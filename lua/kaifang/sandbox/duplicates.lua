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
local util = require "kaifang.sandbox.util"

local M = {}

local Duplicates = {}
Duplicates.__index = Duplicates

-- now: unix time function.
function M.new(now)
  return setmetatable({
    now = now,
    by_content = {}, -- path .. "?" .. content -> entry
    list = util.array(), -- the entries seen twice or more, in order of their first repeat
    signs = {}, -- path .. " " .. sign -> until when the sign could still be accepted
    queue = { first = 1, last = 0 }, -- the same, oldest first, to forget them
    duplicates = 0, -- requests whose content had been accepted before
    refused = 0, -- replays refused
  }, Duplicates)
end

function Duplicates:forget_expired(now)
  local q = self.queue
  while q.first <= q.last and q[q.first].expires < now do
    local e = q[q.first]
    if self.signs[e.key] == e.expires then self.signs[e.key] = nil end
    q[q.first] = nil
    q.first = q.first + 1
  end
end

-- An acting request the platform has accepted so far. path: the route; content: the canonical
-- text of what it asks for; sign (nil for an unsigned platform) and expires (unix time after
-- which that sign is refused as stale anyway); refuse: whether a replay is refused.
-- Returns true when the request is a replay to refuse (the platform answers in its own words).
function Duplicates:check(path, content, sign, expires, refuse)
  local now = self.now()
  self:forget_expired(now)
  local skey = sign and (path .. " " .. sign)
  local replay = skey ~= nil and self.signs[skey] ~= nil
  local key = path .. "?" .. content
  local e = self.by_content[key]
  if e then
    e.count, e.last = e.count + 1, now
    self.duplicates = self.duplicates + 1
    if e.count == 2 then self.list[#self.list + 1] = e end
  else
    e = { path = path, content = content, count = 1, replays = 0, refused = 0, first = now, last = now }
    self.by_content[key] = e
  end
  if replay then
    e.replays = e.replays + 1
    if refuse then
      e.refused = e.refused + 1
      self.refused = self.refused + 1
      return true
    end
  elseif skey then
    self.signs[skey] = expires
    local q = self.queue
    q.last = q.last + 1
    q[q.last] = { key = skey, expires = expires }
  end
  return false
end

function Duplicates:counts() return { duplicates = self.duplicates, refused = self.refused } end

return M
