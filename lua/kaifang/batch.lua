-- kaifang.batch(calls, opts): many calls at once on one libcurl multi handle, within rate
-- limits, never repeating what may have taken effect.
--
-- calls: an array of { client, "method_name", args [, { idempotent = bool, key = "..." }] }, or a
-- function returning the next one (nil at the end), so a batch of a million is streamed.
-- opts: concurrency (32), rate (requests per second per client in this process; nil = unlimited;
--   a client's own `rate` option is shared through its store and holds too), max_attempts (4),
--   backoff_base (0.1 s), backoff_cap (5 s), on_result(i, value, err, info) (info: key, and
--   skipped = true for an outcome recorded before), progress (true: a progress line on stderr when
--   it is a terminal), total (for the progress line of a streamed batch), on_request/on_response
--   (hooks, as on a client), journal (kaifang.journal.sqlite or .redis: see kaifang.journal),
--   stop (a function asked between steps: true stops taking calls and lets those in flight
--   finish, "now" settles them as they are).
-- Each call goes out with its own client's transport settings (proxy, TLS checks, CA, timeouts,
-- user agent); a client whose transport is not libcurl's sends through that transport, one call
-- at a time. Each call has one deadline, its client's timeout (or its per-call timeout) from when
-- the batch takes it up: its waits for the rate limits, its attempts and their backoff spend from
-- it, and a call whose deadline passes before it is sent fails (kind "timeout", not sent).
-- Returns { ok = n, failed = n, maybe_sent = n, skipped = n, retries = n, elapsed = seconds }:
-- every call ends in exactly one of ok, failed and maybe_sent (it may have reached the platform;
-- reconcile), or, with a journal, skipped: its outcome was recorded before and is reported again.
-- stopped = true when stop ended it early (the calls not reached are left for the next run);
-- error = err when the journal failed (nothing is sent without it).
local core = require "kaifang.core"
local client = require "kaifang.client"
local errors = require "kaifang.errors"
local curl = require "kaifang.transport.curl"

local monotonic = core.monotonic

local M = {}

local function argument_error(c, message)
  return errors.new{ platform = c and c.platform or "core", kind = "argument", message = message }
end

-- Reads the next call from the array or the function, checked but not yet built.
local function source(calls)
  local i, n = 0, type(calls) == "table" and #calls or nil
  if type(calls) ~= "function" and type(calls) ~= "table" then
    error("kaifang.batch: calls must be an array or a function", 3)
  end
  return function()
    local call
    if n then
      if i >= n then return nil end
      call = calls[i + 1]
    else
      call = calls()
      if call == nil then return nil end
    end
    i = i + 1
    -- the fields it will get, named so that the table is sized once (nil fields take no room)
    local item = { index = i, attempt = 0, client = nil, name = nil, args = nil, ep = nil, acts = nil, key = nil,
                   timeout = nil, deadline = nil, req = nil }
    if type(call) ~= "table" then
      item.err = argument_error(nil, "call " .. i .. " is not a table")
      return item
    end
    local c, name, args, call_opts = call[1], call[2], call[3], call[4]
    local ep = type(c) == "table" and c.endpoints and c.endpoints[name]
    item.client, item.name, item.args = c, name, args or {}
    if not ep then
      item.err = argument_error(c, "call " .. i .. ": no such method '" .. tostring(name) .. "'")
      return item
    end
    local msg = client.validate(ep, args, c) or client.check_call_opts(call_opts)
    if msg then
      item.err = argument_error(c, name .. ": " .. msg)
      return item
    end
    item.ep, item.acts = ep, client.acts(ep, call_opts)
    item.key, item.timeout = call_opts and call_opts.key, call_opts and call_opts.timeout
    return item
  end
end

-- Spacing per client: at most rate starts per second, none bunched up.
local Limiter = {}
Limiter.__index = Limiter

local function limiter(rate)
  return setmetatable({ interval = 1 / rate, next_at = setmetatable({}, { __mode = "k" }) }, Limiter)
end

-- 0 when the client may start a request now, else the seconds to wait.
function Limiter:wait(c, now)
  local at = self.next_at[c] or 0
  return at > now and at - now or 0
end

function Limiter:take(c, now)
  local at = self.next_at[c] or now
  self.next_at[c] = math.max(at, now) + self.interval
end

-- A min-heap of items waiting for their backoff to pass.
local function heap_push(h, item)
  h[#h + 1] = item
  local i = #h
  while i > 1 do
    local p = math.floor(i / 2)
    if h[p].due <= h[i].due then break end
    h[p], h[i] = h[i], h[p]
    i = p
  end
end

local function heap_pop(h)
  local top, last = h[1], h[#h]
  h[#h] = nil
  if #h > 0 then
    h[1] = last
    local i = 1
    while true do
      local l, r, m = 2 * i, 2 * i + 1, i
      if l <= #h and h[l].due < h[m].due then m = l end
      if r <= #h and h[r].due < h[m].due then m = r end
      if m == i then break end
      h[m], h[i] = h[i], h[m]
      i = m
    end
  end
  return top
end

local function progress_line(s, total, started)
  local done = s.ok + s.failed + s.maybe_sent + s.skipped
  local rate = (done - s.skipped) / math.max(monotonic() - started, 1e-3)
  local bar = ""
  if total and total > 0 then
    local width = 30
    local filled = math.floor(width * done / total)
    bar = "[" .. ("#"):rep(filled) .. (" "):rep(width - filled) .. "] "
  end
  io.stderr:write(("\r%s%d%s  ok %d  failed %d  maybe sent %d%s  %.0f/s "):format(
    bar, done, total and ("/" .. total) or "", s.ok, s.failed, s.maybe_sent,
    s.skipped > 0 and ("  skipped " .. s.skipped) or "", rate))
end

local OPTIONS = {
  concurrency = true, rate = true, max_attempts = true, backoff_base = true, backoff_cap = true,
  on_result = true, progress = true, total = true, on_request = true, on_response = true,
  journal = true, stop = true,
}

-- Transport settings are each client's: a batch-wide one would bypass a client's proxy or CA.
local CLIENT_OPTIONS = { connect_timeout = true, ssl_verify = true, cainfo = true, capath = true, proxy = true,
                         user_agent = true, timeout = true, max_body = true }

-- Numeric options: { lowest, highest, whole number }; NaN and infinities fail.
local NUMBERS = {
  concurrency = { 1, 4096, true }, rate = { 1e-6, 1e6 }, max_attempts = { 1, 1000, true },
  backoff_base = { 0, 3600 }, backoff_cap = { 0, 3600 }, total = { 0, 2 ^ 53, true },
}

function M.run(calls, opts)
  -- one libcurl event loop that waits in C: fine in a script, a timer or a thread, never in a
  -- request handler of nginx
  require("kaifang.transport").assert_may_block("kaifang.batch", 2, "a batch runs its own libcurl event loop, "
    .. "whatever the clients' transports: run it outside nginx (a script, `kaifang batch`), or make the calls one "
    .. "at a time in light threads (ngx.thread.spawn), each through the client's thread-pool transport")
  opts = opts or {}
  if type(opts) ~= "table" then error("kaifang.batch: opts must be a table", 2) end
  for k, v in pairs(opts) do
    if CLIENT_OPTIONS[k] then
      error("kaifang.batch: option '" .. k .. "' belongs to the client (kaifang.<platform>.new{ " .. k .. " = ... }): each call is sent with its own client's", 2)
    end
    if not OPTIONS[k] then error("kaifang.batch: " .. client.unknown("option", k, OPTIONS), 2) end
    local range = NUMBERS[k]
    if range and (type(v) ~= "number" or not (v >= range[1] and v <= range[2]) or (range[3] and v ~= math.floor(v))) then
      error(("kaifang.batch: option '%s' must be a %s from %g to %g"):format(k, range[3] and "whole number" or "number",
        range[1], range[2]), 2)
    end
  end
  local concurrency = opts.concurrency or 32
  local max_attempts = opts.max_attempts or 4
  local on_result, on_request, on_response = opts.on_result, opts.on_request, opts.on_response
  if opts.stop ~= nil and type(opts.stop) ~= "function" then error("kaifang.batch: stop must be a function", 2) end
  local next_call = source(calls)
  local summary = { ok = 0, failed = 0, maybe_sent = 0, skipped = 0, retries = 0 }

  -- counted and handed to on_result; with a journal, once the outcome is written
  local function report(item, value, extra, info)
    if info and info.skipped then
      summary.skipped = summary.skipped + 1
    elseif value ~= nil then
      summary.ok = summary.ok + 1
    elseif extra and extra.maybe_sent then
      summary.maybe_sent = summary.maybe_sent + 1
    else
      summary.failed = summary.failed + 1
    end
    if on_result then on_result(item.index, value, extra, info) end
  end

  local gate -- the journal's side (kaifang.journal.gate): claims each call before it is sent
  if opts.journal ~= nil then
    local Gate = require "kaifang.journal.gate"
    local bad = Gate.check(opts.journal)
    if bad then error("kaifang.batch: journal " .. bad, 2) end
    gate = Gate.new(opts.journal, { concurrency = concurrency, report = report })
    local ok, err = gate:begin()
    if not ok then
      summary.error, summary.stopped, summary.elapsed = err, true, 0
      return summary
    end
  end
  local multi = core.multi{ concurrency = concurrency, headers = false } -- no interpret reads them
  local limit = opts.rate and limiter(opts.rate) -- nil without a rate: nothing to ask per call
  local inflight, active, waiting = {}, 0, {}
  local started = monotonic()
  local show = opts.progress and core.isatty(2)
  local total = opts.total or (type(calls) == "table" and #calls or nil)
  local next_draw, pending, exhausted = 0, nil, false

  -- unsent: it failed here before leaving (a journal then forgets it, for the next run to send)
  local function finish(item, value, extra, unsent)
    if item.claimed then return gate:settle(item, value, extra, unsent) end
    report(item, value, extra)
  end

  -- The next item that may start now: a retry whose backoff has passed, then the stream.
  local function take_next(now)
    if waiting[1] and waiting[1].due <= now then return heap_pop(waiting) end
    if pending then
      local item = pending
      pending = nil
      return item
    end
    if exhausted then return nil end
    local item
    if gate then
      item, exhausted = gate:next(next_call, now)
    else
      item = next_call()
      exhausted = item == nil
    end
    return item
  end

  -- A client with a shared rate (its own `rate` option) takes its turn in its store first; a turn
  -- further off makes the call wait for it among the retries. -> true when it may start now.
  local function turn(item, now)
    if not item.client.rate or item.turn then
      item.turn = nil
      return true
    end
    local wait, err = item.client:reserve_turn(math.max(0, item.deadline - now), item.timeout)
    if not wait then
      finish(item, nil, err, true)
      return false
    end
    if wait <= 0 then return true end
    item.turn, item.due = true, now + wait
    heap_push(waiting, item)
    return false
  end

  -- opts.stop said so: what has not left is dropped (released from the journal, for the next
  -- run); with "now", the transfers in flight are abandoned too and settled as they stand.
  local stopping = false
  local function stop(how)
    if not stopping then
      stopping, exhausted, summary.stopped = true, true, true
      local held = {}
      if pending then held[1], pending = pending, nil end
      for i, item in ipairs(waiting) do held[#held + 1] = item; waiting[i] = nil end
      if gate then gate:stop(held) end
    end
    if how == "now" then
      for slot, item in pairs(inflight) do
        inflight[slot] = nil
        active = active - 1
        finish(item, nil, errors.new{ platform = item.client.platform, kind = "interrupted", maybe_sent = item.acts,
          message = "abandoned in flight: the batch was stopped" .. (item.acts and "; it may have reached the platform" or "") })
      end
    end
  end

  local complete -- start finishes a call that did not go through the multi handle at once

  local function start(item, now)
    local c = item.client
    item.attempt = item.attempt + 1
    -- built just before it is sent: a fresh timestamp, and nothing built ahead of time
    local ok, req = pcall(c.build_request, c, item.ep, item.args, nil, item.deadline)
    if not ok then
      finish(item, nil, argument_error(c, tostring(req)), true)
      return
    end
    local left = item.deadline - monotonic()
    if left < 0.001 then -- libcurl takes whole milliseconds, and 0 would mean no limit
      finish(item, nil, c:late("deadline", ("its timeout ran out before it was sent (%.1f s in the batch)")
        :format(monotonic() - item.deadline + (item.timeout or c.timeout))), true)
      return
    end
    req.timeout, req.deadline = left, item.deadline
    local hooked = on_request or on_response or c.on_request or c.on_response
    if hooked then
      item.info, item.started = c:request_info(item.ep, req, item.attempt), now
      item.info.signed, req.signed = req.signed, nil
      if on_request then on_request(item.info) end
      if c.on_request then c.on_request(item.info) end
    end
    req.signed = nil
    if limit then limit:take(c, now) end
    item.req = req
    local session = curl.session_of(c.transport)
    if not session then -- the client's own transport (nginx's, or one of the caller's): in turn
      local res, err = c.transport:request(req)
      return complete(item, res, err)
    end
    local slot = multi:submit(req, session)
    inflight[slot] = item
    active = active + 1
  end

  function complete(item, res, err)
    local c = item.client
    local req = item.req
    item.req = nil
    -- a refused token (ZAFU): the call was not acted on; once more with the current token
    if res and c.refused_token and not item.token_retried and c:refused_token(req, res) then
      item.token_retried, item.due = true, monotonic()
      item.attempt = item.attempt - 1
      summary.retries = summary.retries + 1
      heap_push(waiting, item)
      return
    end
    if err then err.platform = c.platform; err = errors.new(err) end
    local value, extra = c:outcome(item.ep, res, err, item.acts)
    if item.info then
      local info = item.info
      info.elapsed_ms = (monotonic() - item.started) * 1000
      info.http_status = res and res.status or nil
      if value == nil and extra then info.kind, info.code = extra.kind, extra.code end
      if on_response then on_response(info) end
      if c.on_response then c.on_response(info) end
      item.info = nil
    end
    local due = value == nil and extra and extra.retryable and item.attempt < max_attempts -- only then
      and monotonic() + client.backoff(item.attempt, opts.backoff_base, opts.backoff_cap)
    if due and due < item.deadline then
      summary.retries = summary.retries + 1
      item.due = due
      heap_push(waiting, item)
      return
    end
    finish(item, value, extra)
  end

  while true do
    local now = monotonic()
    local wake = nil -- the soonest moment something held back may start
    if gate then gate:tick(now) end
    if opts.stop and not (stopping and active == 0) then
      local how = opts.stop()
      if how then stop(how) end
    end
    while active < concurrency do
      local item = take_next(now)
      if not item then break end
      if item.err then
        finish(item, nil, item.err)
      else
        -- its deadline runs from here: what it waits for the rate limits and its retries counts
        item.deadline = item.deadline or now + (item.timeout or item.client.timeout)
        local w = limit and limit:wait(item.client, now) or 0
        if w > 0 then
          -- hold it (a retry goes back to its heap, a new item waits as pending)
          if item.due then heap_push(waiting, item) else pending = item end
          wake = now + w
          break
        end
        if turn(item, now) then start(item, now) end
      end
    end
    if gate then
      gate:flush() -- what settled and was not written with a window
      local w = not exhausted and gate:wake(now)
      if w then wake = math.min(wake or math.huge, w) end
    end
    if waiting[1] then wake = math.min(wake or math.huge, waiting[1].due) end
    if active == 0 and not pending and exhausted and not waiting[1] then break end
    if active > 0 then
      local timeout = wake and math.max(0.001, wake - monotonic()) or 1
      multi:wait(math.min(timeout, 1))
      while true do
        local slot, res, err = multi:collect()
        if not slot then break end
        local item = inflight[slot]
        inflight[slot] = nil
        active = active - 1
        complete(item, res, err)
      end
    elseif wake then
      core.sleep(math.max(0, wake - monotonic()))
    end
    if show and monotonic() >= next_draw then
      progress_line(summary, total, started)
      next_draw = monotonic() + 0.2
    end
  end
  multi:close()
  if gate then
    gate:finish()
    summary.error = gate.error
  end
  summary.elapsed = monotonic() - started
  if show then
    progress_line(summary, total, started)
    io.stderr:write("\n")
  end
  return summary
end

return M
