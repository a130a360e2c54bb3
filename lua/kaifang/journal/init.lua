-- kaifang.journal: a batch's durable record of every call, so that a batch survives a crash and
-- can be shared by several processes (see kaifang.batch's `journal` option).
--
--   kaifang.journal.sqlite(path [, opts])       one machine (lua/kaifang/journal/sqlite.lua)
--   kaifang.journal.redis{ host=, port=, ... }  several processes and machines (journal/redis.lua)
--
-- Each call has a key: the caller's ({ key = "..." } in a call's options), or a digest of the
-- platform, the account, the method and the canonical arguments (M.key). A call's state is
-- `sending` (on stable storage before the request leaves), then `ok`, `failed` or `maybe_sent`.
--
--   journal:report() -> { total=, sending=, ok=, failed=, maybe_sent=, calls = fn(report, state) }
--        report:calls(state) iterates the calls in that state (every call when nil) as records
--        { key, state, platform, account, method, args, acts, reply, error, sent_at, settled_at }.
--   journal:forget(key) -> true | false    drops a call's record, so that the next run sends it
--   journal:reconcile(clients [, { resend = false }])  looks maybe_sent calls up where a platform
--        offers a way (M.LOOKUPS): ok when found; with resend, forgotten when not
--   journal:close()
-- The rest (begin, step, renew, finish) is the batch's side: lua/kaifang/journal/gate.lua.
local cjson = require "cjson.safe"
local core = require "kaifang.core"
local errors = require "kaifang.errors"

local M = {}

M.STATES = { "sending", "ok", "failed", "maybe_sent" }

function M.sqlite(path, opts) return require("kaifang.journal.sqlite").new(path, opts) end
function M.redis(opts) return require("kaifang.journal.redis").new(opts) end

-- The canonical form of a call's arguments: compact JSON, object keys in byte order.
function M.canonical(args)
  if type(args) == "string" then return args end
  return require("kaifang.yopoint").json(args)
end

-- The default key: <platform>.<method>:<digest>, the digest a SHA-256 (truncated) of the platform,
-- the client's account, the method and the canonical arguments.
function M.key(platform, account, method, canonical)
  return platform .. "." .. method .. ":" .. core.digest("sha256",
    platform .. "\0" .. tostring(account) .. "\0" .. method .. "\0" .. canonical):sub(1, 32)
end

-- What a journal stores of an outcome: state, outcome (JSON of the reply or of the error), code,
-- message.
local ERROR_FIELDS = { "platform", "kind", "code", "message", "http_status", "retryable", "maybe_sent", "fields", "unreachable" }

function M.encode(value, err)
  if value ~= nil then return "ok", cjson.encode(value) or "{}" end
  local fields = {}
  for _, k in ipairs(ERROR_FIELDS) do fields[k] = err[k] end
  return err.maybe_sent and "maybe_sent" or "failed", cjson.encode(fields) or "{}", err.code, err.message
end

-- value, err from a recorded state and outcome (as encode wrote them).
function M.decode(state, outcome)
  local doc = type(outcome) == "string" and require("kaifang.client").json_decode(outcome) or nil
  if state == "ok" then return type(doc) == "table" and doc or {} end
  doc = type(doc) == "table" and doc or { kind = "journal", message = "no outcome recorded" }
  doc.maybe_sent = state == "maybe_sent"
  return nil, errors.new(doc)
end

-- The error of a call left in `sending` by a run that ended before its reply came.
M.INTERRUPTED = "sent by a run that ended before the reply came (a crash, a kill, a worker whose lease ran out)"

function M.interrupted(platform)
  return errors.new{ platform = platform, kind = "interrupted", maybe_sent = true, message = M.INTERRUPTED }
end

-- A report over counts (a table state -> n) and a function (state) -> iterator of raw records
-- (with args, outcome as JSON text).
function M.report(counts, raw_calls)
  local r = { total = 0 }
  for _, s in ipairs(M.STATES) do
    r[s] = counts[s] or 0
    r.total = r.total + r[s]
  end
  function r.calls(_, state)
    local nxt = raw_calls(state)
    return function()
      local rec = nxt()
      if not rec then return nil end
      if type(rec.args) == "string" then rec.args = require("kaifang.client").json_decode(rec.args) or rec.args end
      rec.acts = rec.acts == 1 or rec.acts == "1" or rec.acts == true
      local value, err = M.decode(rec.state, rec.outcome)
      if rec.state == "ok" then rec.reply = value elseif rec.state ~= "sending" then rec.error = err end
      rec.outcome = nil
      return rec
    end
  end
  return r
end

---------------------------------------------------------------------------- look-ups

-- How to find out whether a maybe_sent call took effect, where a platform documents a way:
-- platform -> method -> fn(client, args) -> true (it did) | false (it did not) | nil, err.
-- Only ZAFU's msg_send with a dataKey has one: getMessageStatus lists the messages sent under it.
-- None of the others has a documented read that shows the effect: Lingdian's four interfaces
-- are all actions (a notice, an order, a reminder) with no status query; ZAFU's msg_create and
-- scan_record have no status query, and menu_submit/menu_delete could only be guessed from
-- menu_list; Yopoint's door, refund and appeal calls and Dakashi's reset, message and custom
-- number calls have no documented query of their effect.
M.LOOKUPS = {
  zafu = {
    msg_send = function(c, args)
      if args.dataKey == nil or args.dataKey == "" then return nil, "sent without a dataKey: nothing to look it up by" end
      local t = tostring(args.messageType)
      if t ~= "5" and t ~= "6" and t ~= "8" then return nil, "getMessageStatus covers app messages (messageType 5, 6, 8) only" end
      local res, err = c:get_message_status{ xgh = args.xgh, messageType = args.messageType,
                                             messageTo = args.messageTo, dataKey = args.dataKey }
      if not res then return nil, err end
      return type(res.data) == "table" and #res.data > 0
    end,
  },
}

-- fn(client, args) for a call's platform and method, or nil when no platform offers one.
function M.lookup(platform, method)
  return (M.LOOKUPS[platform] or {})[method]
end

-- journal:reconcile(clients [, { resend = false }]): looks up each maybe_sent call that has a
-- look-up, with the client (from the list) of its platform and account. One that took effect
-- becomes ok; with resend, one that did not is forgotten, so that the next run sends it.
-- -> { checked =, took_effect =, did_not =, unknown = }: checked at the platform (it took effect
-- or it did not), and unknown: no look-up, no client, or no answer.
function M.reconcile(journal, clients, opts)
  opts = opts or {}
  local by_account = {}
  for _, c in ipairs(clients or {}) do by_account[c.platform .. "\0" .. tostring(c.account)] = c end
  local out, found = { checked = 0, took_effect = 0, did_not = 0, unknown = 0 }, {}
  for rec in journal:report():calls("maybe_sent") do found[#found + 1] = rec end
  for _, rec in ipairs(found) do
    local look, c = M.lookup(rec.platform, rec.method), by_account[rec.platform .. "\0" .. tostring(rec.account)]
    local took = nil
    if look and c and type(rec.args) == "table" then took = look(c, rec.args) end
    if took ~= nil then out.checked = out.checked + 1 end
    if took == true then
      journal:mark(rec.key, "ok", cjson.encode({ reconciled = rec.method .. ": found at the platform" }))
      out.took_effect = out.took_effect + 1
    elseif took == false then
      if opts.resend then journal:forget(rec.key) end
      out.did_not = out.did_not + 1
    else
      out.unknown = out.unknown + 1
    end
  end
  return out
end

return M
