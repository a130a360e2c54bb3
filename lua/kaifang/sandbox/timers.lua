-- A binary min-heap of callbacks by due time, for answers the sandbox gives later (latency
-- faults). Ties fire in insertion order.
local M = {}
M.__index = M

function M.new() return setmetatable({ n = 0, seq = 0 }, M) end

local function before(a, b) return a.due < b.due or (a.due == b.due and a.seq < b.seq) end

function M:push(due, fn)
  self.seq = self.seq + 1
  local item = { due = due, seq = self.seq, fn = fn }
  local n = self.n + 1
  self.n = n
  self[n] = item
  while n > 1 do
    local p = math.floor(n / 2)
    if not before(self[n], self[p]) then break end
    self[n], self[p] = self[p], self[n]
    n = p
  end
end

-- Due time of the earliest callback, or nil.
function M:peek() return self[1] and self[1].due end

function M:pop()
  local n = self.n
  if n == 0 then return nil end
  local top = self[1]
  self[1] = self[n]
  self[n] = nil
  n = n - 1
  self.n = n
  local i = 1
  while true do
    local l, r, m = 2 * i, 2 * i + 1, i
    if l <= n and before(self[l], self[m]) then m = l end
    if r <= n and before(self[r], self[m]) then m = r end
    if m == i then break end
    self[i], self[m] = self[m], self[i]
    i = m
  end
  return top
end

-- Runs every callback due at or before `now`; returns how many ran.
function M:run_due(now)
  local ran = 0
  while self[1] and self[1].due <= now do
    self:pop().fn()
    ran = ran + 1
  end
  return ran
end

function M:clear()
  for i = self.n, 1, -1 do self[i] = nil end
  self.n = 0
end

return M
