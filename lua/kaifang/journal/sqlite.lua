-- kaifang.journal.sqlite(path [, { sync = "full" | "normal", busy_timeout = 5, readonly = false }]):
-- a batch's journal in an SQLite database (Debian's libsqlite3, through kaifang.core), for the
-- processes of one machine, one batch at a time: a run holds an flock on "<path>.lock", so a
-- second run of the same journal fails at once instead of sharing it (use kaifang.journal.redis
-- for that). Readers (journal:report(), `kaifang journal`, the sqlite3 command) need no lock.
--
-- WAL mode. sync "full" (the default) fsyncs every commit, so `sending` is on stable storage before
-- a request leaves, even through a power cut; "normal" survives a crash of the process only. A
-- window of calls is claimed in one transaction, with the final states of the calls settled
-- since the last one.
local core = require "kaifang.core"
local errors = require "kaifang.errors"
local journal = require "kaifang.journal"

local M = {}

-- The schema, as the README documents it; `sqlite3 run.db 'select key, state from calls'`.
M.SCHEMA = [[
CREATE TABLE IF NOT EXISTS calls (
  id         INTEGER PRIMARY KEY, -- in the order calls were first sent
  key        TEXT NOT NULL UNIQUE, -- the caller's key, or <platform>.<method>:<digest>
  state      TEXT NOT NULL,      -- sending, ok, failed, maybe_sent
  platform   TEXT NOT NULL,      -- lingdian, zafu, yopoint, dakashi
  account    TEXT,               -- the client's developer_code, client_id or appid
  method     TEXT NOT NULL,      -- the client method, e.g. send_wechat_message
  args       TEXT,               -- the parameters, as JSON
  acts       INTEGER NOT NULL,   -- 1 when the call changes something at the platform
  code,                          -- failed, maybe_sent: the error's code (a number or text)
  message    TEXT,               -- failed, maybe_sent: the error's message
  outcome    TEXT,               -- JSON: the reply (ok) or the error (failed, maybe_sent)
  sent_at    REAL,               -- unix time it became sending
  settled_at REAL                -- unix time it became final
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT);
INSERT OR IGNORE INTO meta VALUES ('schema', '1');
]]

local SQL = {
  insert = "INSERT OR IGNORE INTO calls (key, state, platform, account, method, args, acts, sent_at) "
    .. "VALUES (?1, 'sending', ?2, ?3, ?4, ?5, ?6, ?7)",
  get = "SELECT state, code, message, outcome FROM calls WHERE key = ?1",
  resend = "UPDATE calls SET sent_at = ?2 WHERE key = ?1",
  settle = "UPDATE calls SET state = ?2, outcome = ?3, code = ?4, message = ?5, settled_at = ?6 "
    .. "WHERE key = ?1 AND state = 'sending'",
  release = "DELETE FROM calls WHERE key = ?1 AND state = 'sending'",
  mark = "UPDATE calls SET state = ?2, outcome = ?3, code = NULL, message = NULL, settled_at = ?4 WHERE key = ?1",
  forget = "DELETE FROM calls WHERE key = ?1",
  counts = "SELECT state, count(*) AS n FROM calls GROUP BY state",
  all = "SELECT key, state, platform, account, method, args, acts, code, message, outcome, sent_at, settled_at "
    .. "FROM calls ORDER BY id",
  by_state = "SELECT key, state, platform, account, method, args, acts, code, message, outcome, sent_at, settled_at "
    .. "FROM calls WHERE state = ?1 ORDER BY id",
}

local Journal = {}
Journal.__index = Journal
Journal.__name = "kaifang.journal.sqlite"

local function fail(msg, level) error("kaifang.journal.sqlite: " .. msg, level + 1) end

local function journal_error(e, path)
  return errors.new{ platform = "journal", kind = "store", code = e.code or e.kind,
                     message = path .. ": " .. tostring(e.message) }
end

function M.new(path, opts)
  if type(path) ~= "string" or path == "" then fail("expects the path of the journal's database", 2) end
  opts = opts or {}
  if type(opts) ~= "table" then fail("options must be a table", 2) end
  local known = { sync = true, busy_timeout = true, readonly = true }
  for k in pairs(opts) do
    if not known[k] then fail(require("kaifang.client").unknown("option", k, known), 2) end
  end
  local sync = opts.sync or "full"
  if sync ~= "full" and sync ~= "normal" then fail("option 'sync' must be \"full\" or \"normal\"", 2) end
  if opts.busy_timeout ~= nil and not require("kaifang.client").seconds(opts.busy_timeout, true) then
    fail("option 'busy_timeout' must be a number of seconds from 0 to 1e6", 2)
  end
  local db, err = core.sqlite(path, { readonly = opts.readonly, busy_timeout = opts.busy_timeout })
  if not db then fail(path .. ": " .. tostring(err.message), 2) end
  if not opts.readonly then
    local ok, e = db:exec("PRAGMA journal_mode = WAL; PRAGMA synchronous = " .. sync:upper() .. ";" .. M.SCHEMA)
    if not ok then
      db:close()
      fail(path .. ": " .. tostring(e.message), 2)
    end
  end
  local self = setmetatable({ path = path, db = db, stmts = {}, readonly = opts.readonly }, Journal)
  return self
end

function Journal:stmt(name)
  local st = self.stmts[name]
  if not st then
    local err
    st, err = self.db:prepare(SQL[name])
    if not st then error(journal_error(err, self.path), 0) end
    self.stmts[name] = st
  end
  return st
end

---------------------------------------------------------------------------- the batch's side

-- One run at a time: the flock is held until finish (or the process ends).
function Journal:begin()
  if self.readonly then return nil, journal_error({ message = "opened read-only" }, self.path) end
  local lock, err = core.file_lock(self.path .. ".lock", 0.05)
  if not lock then
    return nil, journal_error({ message = err.kind == "timeout" and "another process is running a batch with this journal"
      or err.message }, self.path)
  end
  self.lock = lock
  return true
end

function Journal:finish()
  if self.lock then self.lock:unlock() end
  self.lock = nil
end

-- One transaction: the final states of settled calls (finals: { key, state, outcome, code,
-- message }), the release of claimed calls that never left (releases: keys), then a verdict for
-- each call of the window ({ key, acts, platform, account, method, args }): "send" (claimed:
-- now sending), or the recorded { state, outcome, code, message } (settled_now when a call
-- left in sending by an earlier run is settled here as maybe_sent). -> verdicts | nil, err
-- (nothing written).
function Journal:step(finals, window, releases)
  local ok, result = pcall(function()
    local now = core.now()
    local begun, err = self.db:exec("BEGIN IMMEDIATE")
    if not begun then error(journal_error(err, self.path), 0) end
    local function check(n, e)
      if not n then error(journal_error(e, self.path), 0) end
      return n
    end
    local settle = self:stmt("settle")
    for _, f in ipairs(finals) do check(settle:exec(f.key, f.state, f.outcome, f.code, f.message, now)) end
    if releases and releases[1] then
      local release = self:stmt("release")
      for _, key in ipairs(releases) do check(release:exec(key)) end
    end
    local verdicts = {}
    if window[1] then
      local insert, get = self:stmt("insert"), self:stmt("get")
      for i, w in ipairs(window) do
        if check(insert:exec(w.key, w.platform, w.account, w.method, w.args, w.acts and 1 or 0, now)) == 1 then
          verdicts[i] = "send"
        else
          local row = get:first(w.key)
          if not row then check(nil, { message = "a call vanished during its transaction" }) end
          if row.state ~= "sending" then
            verdicts[i] = row
          elseif not w.acts then -- a read left in sending: harmless to send again
            check(self:stmt("resend"):exec(w.key, now))
            verdicts[i] = "send"
          else -- left in sending by a run that ended: it may have reached the platform
            local state, outcome, code, message = journal.encode(nil, journal.interrupted(w.platform))
            check(settle:exec(w.key, state, outcome, code, message, now))
            verdicts[i] = { state = state, outcome = outcome, code = code, message = message, settled_now = true }
          end
        end
      end
    end
    check(self.db:exec("COMMIT"))
    return verdicts
  end)
  if ok then return result end
  self.db:exec("ROLLBACK")
  if errors.is(result) then return nil, result end
  error(result, 0)
end

---------------------------------------------------------------------------- the operator's side

function Journal:report()
  local counts = {}
  for row in self:stmt("counts"):rows() do counts[row.state] = row.n end
  return journal.report(counts, function(state)
    if state then return self:stmt("by_state"):rows(state) end
    return self:stmt("all"):rows()
  end)
end

-- A maybe_sent call found at the platform becomes ok (journal:reconcile).
function Journal:mark(key, state, outcome)
  return self:stmt("mark"):exec(key, state, outcome, core.now()) == 1
end

function Journal:forget(key)
  return self:stmt("forget"):exec(key) == 1
end

Journal.reconcile = journal.reconcile

function Journal:close()
  self:finish()
  self.db:close()
end

Journal.__close = Journal.close

function Journal:__tostring() return "kaifang.journal.sqlite(" .. self.path .. ")" end

return M
