-- The journal's side of kaifang.batch: every call passes this gate before it is sent.
--
-- Calls come from the batch's source in windows. One journal step (a transaction, or one Redis
-- script) writes the final states of the calls settled since the last step and claims the
-- window: each call is then to be sent (now `sending`), already settled (its recorded outcome is
-- reported, counted as skipped), left in `sending` by an earlier run (settled as maybe_sent; a
-- read is sent again), or held by another live worker (waited for, then reported as it ended).
-- At most `concurrency` calls of this run are ever in `sending`, so a crash leaves no more than
-- that to settle as maybe_sent. Two calls with one key are one call: the second follows the
-- first and reports its outcome. Outcomes are reported once they are written.
local errors = require "kaifang.errors"
local journal = require "kaifang.journal"

local M = {}

local Gate = {}
Gate.__index = Gate

local RECHECK = 0.25 -- seconds between looks at a call another worker holds

-- opts: concurrency, report(item, value, err, info) where info = { key =, skipped = bool }
function M.new(j, opts)
  return setmetatable({
    j = j, concurrency = opts.concurrency, report = opts.report,
    ready = {}, ready_head = 1,         -- claimed (or unusable) calls, for the batch to start
    owned = 0,                          -- claimed by this run and not yet settled
    leaders = {},                       -- key -> the claimed call of that key
    deferred = {}, waiting_keys = {},   -- calls another worker holds, and their keys
    finals = {},                        -- settled calls not yet written
    done = false,                       -- the source is exhausted
    next_renew = 0,
  }, Gate)
end

-- Checks an object given as the batch's journal option; nil or what is wrong.
function M.check(j)
  if type(j) ~= "table" then return "must be a journal (kaifang.journal.sqlite or .redis), got " .. type(j) end
  for _, name in ipairs({ "begin", "step", "finish", "report" }) do
    if type(j[name]) ~= "function" then return "must be a journal (kaifang.journal.sqlite or .redis): no method '" .. name .. "'" end
  end
end

function Gate:begin()
  local ok, err = self.j:begin()
  if not ok then self.error = err end
  return ok, err
end

local function push(self, item) self.ready[#self.ready + 1] = item end

local function pop(self)
  local item = self.ready[self.ready_head]
  if item == nil then return nil end
  self.ready[self.ready_head] = nil
  self.ready_head = self.ready_head + 1
  if self.ready[self.ready_head] == nil then self.ready, self.ready_head = {}, 1 end
  return item
end

-- The key and the canonical arguments; an item whose arguments cannot be written is unusable.
local function keyed(item)
  local c = item.client
  local ok, canonical = pcall(journal.canonical, item.args)
  if not ok then
    item.err = errors.new{ platform = c.platform, kind = "argument",
                           message = item.name .. ": the parameters cannot be written as JSON: " .. tostring(canonical) }
    return false
  end
  item.canonical = canonical
  item.key = item.key or journal.key(c.platform, c.account, item.name, canonical)
  return true
end

-- Reports a call and the calls that followed it (same key), once its outcome is written.
local function report_all(self, item, value, err, skipped)
  self.report(item, value, err, { key = item.key, skipped = skipped })
  for _, f in ipairs(item.followers or {}) do self.report(f, value, err, { key = f.key, skipped = true }) end
end

local function entry(item)
  local c = item.client
  return { key = item.key, acts = item.acts, platform = c.platform, account = c.account and tostring(c.account),
           method = item.name, args = item.canonical }
end

-- One journal step over what is settled and the window; reports what it settled.
local function step(self, window, releases)
  local finals, written = {}, self.finals
  releases = releases or {}
  for _, f in ipairs(written) do
    if f.record then finals[#finals + 1] = f.record else releases[#releases + 1] = f.item.key end
  end
  self.finals = {}
  local entries = {}
  for i, item in ipairs(window) do entries[i] = entry(item) end
  local verdicts, err = self.j:step(finals, entries, releases)
  if not verdicts then
    self.error = self.error or err
    -- the window was not claimed, so nothing of it is sent; settled calls are reported as they
    -- ended, though the journal could not record it (a resume settles them as maybe_sent)
    for _, item in ipairs(window) do
      report_all(self, item, nil, errors.new{ platform = item.client.platform, kind = "store",
        message = "not sent: the journal failed: " .. tostring(err.message) }, false)
    end
  end
  for _, f in ipairs(written) do
    self.leaders[f.item.key] = nil
    report_all(self, f.item, f.value, f.err, false)
  end
  return verdicts
end

local function defer(self, item, now)
  item.recheck = now + RECHECK
  self.deferred[#self.deferred + 1] = item
  self.waiting_keys[item.key] = item
end

-- The next call to start: item | nil, exhausted. pull() gives the source's next item (nil at the
-- end). An item with .err is the batch's to report.
function Gate:next(pull, now)
  local item = pop(self)
  if item or self.error or self.stopped then return item, item == nil and (self.error ~= nil or self.stopped) end
  local budget = 8 * self.concurrency -- calls looked at per call of next: the batch's loop goes on meanwhile
  while budget > 0 do
    local room = self.concurrency - self.owned
    if room <= 0 then break end
    local window, in_window = {}, {}
    -- calls another worker holds, when their look is due
    local kept = {}
    for _, d in ipairs(self.deferred) do
      if #window < room and d.recheck <= now then
        window[#window + 1] = d
        in_window[d.key] = d
        self.waiting_keys[d.key] = nil
      else
        kept[#kept + 1] = d
      end
    end
    self.deferred = kept
    while #window < room and not self.done and budget > 0 do
      local new = pull()
      if new == nil then
        self.done = true
        break
      end
      budget = budget - 1
      if new.err or not keyed(new) then
        push(self, new)
      else
        local leader = self.leaders[new.key] or in_window[new.key] or self.waiting_keys[new.key]
        if leader then
          leader.followers = leader.followers or {}
          leader.followers[#leader.followers + 1] = new
        else
          window[#window + 1] = new
          in_window[new.key] = new
        end
      end
    end
    if #window == 0 then break end
    local verdicts = step(self, window)
    if not verdicts then break end
    for i, w in ipairs(window) do
      local v = verdicts[i]
      if v == "send" then
        w.claimed = true
        self.owned = self.owned + 1
        self.leaders[w.key] = w
        push(self, w)
      elseif v == "busy" then
        defer(self, w, now)
      else
        local value, err = journal.decode(v.state, v.outcome)
        if err and v.settled_now then err = journal.interrupted(w.client.platform) end
        report_all(self, w, value, err, not v.settled_now)
      end
    end
    if self.ready[self.ready_head] then break end
  end
  self.more = budget <= 0 and not self.done -- more to look at right away
  item = pop(self)
  return item, item == nil and self.done and self.deferred[1] == nil
end

-- A claimed call ended (value, or nil and err): written with the next step, reported then. One
-- that failed before it left (unsent: a local failure, such as its rate's store) is released
-- instead, so that the next run sends it.
function Gate:settle(item, value, err, unsent)
  self.owned = self.owned - 1
  local f = { item = item, value = value, err = err }
  if not unsent then
    local state, outcome, code, message = journal.encode(value, err)
    f.record = { key = item.key, state = state, outcome = outcome, code = code, message = message }
  end
  self.finals[#self.finals + 1] = f
end

-- Writes (and reports) what is settled; claimed calls that never left are released, so that
-- the next run sends them.
function Gate:flush(releases)
  if self.finals[1] or (releases and releases[1]) then step(self, {}, releases) end
end

-- Stops claiming: the batch is stopping. items: the claimed calls it holds that never left; they
-- and those claimed but not yet taken are released.
function Gate:stop(items)
  self.stopped = true
  for item in pop, self do items[#items + 1] = item end
  local keys = {}
  for _, item in ipairs(items) do
    if item.key and self.leaders[item.key] == item then
      keys[#keys + 1] = item.key
      self.leaders[item.key] = nil
      self.owned = self.owned - 1
    end
  end
  self.deferred, self.waiting_keys = {}, {}
  self:flush(keys)
end

-- Keeps this worker's lease (Redis) while the batch runs.
function Gate:tick(now)
  if self.j.renew and self.j.lease and now >= self.next_renew then
    self.next_renew = now + self.j.lease / 3
    local ok, err = self.j:renew()
    if not ok then self.error = self.error or err end
  end
end

-- When the gate has something to do next (now, or when a held-back call is looked at), or nil.
function Gate:wake(now)
  if self.more then return now end
  local soonest
  for _, d in ipairs(self.deferred) do
    if not soonest or d.recheck < soonest then soonest = d.recheck end
  end
  return soonest
end

function Gate:finish()
  self:flush()
  self.j:finish()
end

return M
