-- `kaifang batch` (a batch from a CSV or JSON Lines file, with a journal) and `kaifang journal`
-- (what a journal holds). kaifang.cli parses the command line and makes the client.
local cjson = require "cjson.safe"
local core = require "kaifang.core"
local kaifang = require "kaifang"
local journal = require "kaifang.journal"
local format = require "kaifang.cli.format"

local M = {}

---------------------------------------------------------------------------- input files

-- One CSV record from lines(): a list of fields, or nil at the end. RFC 4180: fields in double
-- quotes may hold commas, "" and line breaks; CRLF or LF.
local function csv_record(lines)
  local line = lines()
  if line == nil then return nil end
  local fields, field, i, quoted = {}, {}, 1, false
  while true do
    local c = line:sub(i, i)
    if quoted then
      if c == "" then -- a line break inside quotes
        local more = lines()
        if more == nil then return nil, "a quoted field is not closed" end
        field[#field + 1] = "\n"
        line, i = more, 1
      elseif c == '"' and line:sub(i + 1, i + 1) == '"' then
        field[#field + 1] = '"'
        i = i + 2
      elseif c == '"' then
        quoted, i = false, i + 1
      else
        local j = line:find('"', i, true) or #line + 1
        field[#field + 1] = line:sub(i, j - 1)
        i = j
      end
    elseif c == "" or c == "," then
      fields[#fields + 1] = table.concat(field)
      field = {}
      if c == "" then return fields end
      i = i + 1
    elseif c == '"' and #field == 0 then
      quoted, i = true, i + 1
    else
      local j = line:find('[,"]', i) or #line + 1
      field[#field + 1] = line:sub(i, j - 1)
      i = j
    end
  end
end

-- Lines of a file without their line ends (CRLF too).
local function file_lines(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local first = true
  local nxt = f:lines()
  return function()
    local line = nxt()
    if line == nil then
      f:close()
      return nil
    end
    if first then line, first = line:gsub("^\239\187\191", ""), false end -- a spreadsheet's UTF-8 BOM
    return (line:gsub("\r$", ""))
  end
end

-- The rows of a file: an iterator of { n = row number, key = ?, params = {} }, or raises a
-- usage message. csv: the header names the parameters (a name ending in := takes JSON values,
-- as key:=JSON does on the command line; empty cells are left out); jsonl: one JSON object a
-- line. In both, "key" names the call.
function M.rows(path, kind)
  local lines, err = file_lines(path)
  if not lines then error({ usage = "cannot read " .. tostring(err) }, 0) end
  local n, header = 0, nil
  local function bad(msg) error({ usage = ("%s row %d: %s"):format(path, n, msg) }, 0) end
  if kind == "csv" then
    header = csv_record(lines)
    if not header then error({ usage = path .. ": no header row (the parameter names)" }, 0) end
  end
  return function()
    while true do
      local params, key = {}, nil
      if kind == "csv" then
        local fields, e = csv_record(lines)
        if not fields then
          if e then bad(e) end
          return nil
        end
        if not (#fields == 1 and fields[1] == "") then -- a blank line
          n = n + 1
          if #fields > #header then bad(("%d fields, %d columns"):format(#fields, #header)) end
          for i, name in ipairs(header) do
            local v = fields[i]
            if v ~= nil and v ~= "" then
              local json_name = name:match("^(.-):=$")
              if json_name then
                local decoded, derr = require("kaifang.client").json_decode(v)
                if decoded == nil then bad(("%s: %s is not JSON (%s)"):format(json_name, v, tostring(derr))) end
                params[json_name] = decoded
              else
                params[name] = v
              end
            end
          end
          key, params.key = params.key, nil
          return { n = n, key = key, params = params }
        end
      else
        local line = lines()
        if line == nil then return nil end
        if line:match("%S") then
          n = n + 1
          local doc = require("kaifang.client").json_decode(line)
          if type(doc) ~= "table" then bad("not a JSON object") end
          key, doc.key = doc.key, nil
          if key ~= nil and type(key) ~= "string" then key = tostring(key) end
          return { n = n, key = key, params = doc }
        end
      end
    end
  end, header
end

function M.kind(path, given)
  if given then return given end
  if path:lower():match("%.csv$") then return "csv" end
  if path:lower():match("%.jsonl$") or path:lower():match("%.ndjson$") or path:lower():match("%.json$") then return "jsonl" end
  error({ usage = path .. ": say --format csv or --format jsonl (from the name, it is neither)" }, 0)
end

-- "notices.csv" -> "notices" .. suffix
function M.beside(path, suffix)
  return (path:gsub("%.[^./]*$", "")) .. suffix
end

---------------------------------------------------------------------------- journals

-- A journal from --journal: a path (SQLite) or redis://host:port[/db]/prefix (the password from
-- KAIFANG_REDIS_PASSWORD: never on the command line).
function M.open_journal(spec, opts)
  opts = opts or {}
  local host, port, rest = spec:match("^redis://([^:/]+):?(%d*)(/.*)$")
  if host then
    local db, prefix = rest:match("^/(%d+)/(.+)$")
    if not db then db, prefix = nil, rest:match("^/(.+)$") end
    if not prefix then error({ usage = "--journal redis://HOST:PORT[/DB]/PREFIX: name the batch with a prefix" }, 0) end
    local password = os.getenv("KAIFANG_REDIS_PASSWORD")
    return journal.redis{ host = host, port = tonumber(port) or 6379, db = tonumber(db), prefix = prefix,
                          password = password ~= "" and password or nil, lease = opts.lease }
  end
  if opts.readonly then
    local f = io.open(spec, "rb")
    if not f then error({ usage = "no journal " .. spec }, 0) end
    f:close()
  end
  return journal.sqlite(spec, { readonly = opts.readonly })
end

---------------------------------------------------------------------------- kaifang batch

-- Results as JSON Lines in row order: rows that end early wait for those before them. Written
-- beside path and put in its place by close(true), so that a run refused (another holds the
-- journal) leaves the results of the one running alone.
local function results_writer(path)
  local tmp = path .. ".tmp" .. core.random_hex(4)
  local f, err = io.open(tmp, "w")
  if not f then error({ usage = "cannot write the results: " .. tostring(err) }, 0) end
  local pending, next_row = {}, 1
  local w = {}
  function w.put(row, line)
    pending[row] = line
    while pending[next_row] do
      f:write(pending[next_row], "\n")
      pending[next_row] = nil
      next_row = next_row + 1
    end
  end
  function w.close(keep) -- the rest, in order, with gaps where rows were not reached
    local rows = {}
    for row in pairs(pending) do rows[#rows + 1] = row end
    table.sort(rows)
    for _, row in ipairs(rows) do f:write(pending[row], "\n") end
    f:close()
    if keep then return os.rename(tmp, path) end
    os.remove(tmp)
  end
  return w
end

local function result_line(row, info, value, err)
  local outcome = value ~= nil and "ok" or (err and err.maybe_sent and "maybe_sent" or "failed")
  return format.json({
    row = row, key = info and info.key or cjson.null, outcome = outcome,
    code = err and err.code or cjson.null, message = err and err.message or cjson.null,
    skipped = info and info.skipped or nil,
  }, true), outcome
end

-- ctx: { client = the client, usage = fn(message), EXIT = statuses }
function M.run(args, ctx)
  local platform, method = args.platform, args.method
  local ep = kaifang[platform].Client.endpoints[method]
  if not ep then
    ctx.usage(("kaifang batch takes %s's client methods; '%s' is not one (see kaifang call --help)"):format(platform, method))
  end
  local kind = M.kind(args.file, args.format)
  local journal_spec = args.journal or (not args.no_journal and M.beside(args.file, ".journal.db")) or nil
  local results_path = args.results or M.beside(args.file, ".results.jsonl")

  -- the rows, once to count them and check the columns, then streamed
  local total, each, header = 0, M.rows(args.file, kind)
  if header and ep.params then -- a misspelt column would fail every row
    for _, name in ipairs(header) do
      local param = name:match("^(.-):=$") or name
      if param ~= "key" and ep.params[param] == nil then
        ctx.usage(("%s: %s, for %s %s"):format(args.file, require("kaifang.client").unknown("column", param, ep.params),
          platform, method))
      end
    end
  end
  for _ in each do total = total + 1 end

  local c = ctx.client
  local j = journal_spec and M.open_journal(journal_spec, { lease = args.lease }) or nil
  local results = results_writer(results_path)
  local tally = { ok = 0, failed = 0, maybe_sent = 0, skipped = 0 }
  local rows, index_row = M.rows(args.file, kind), {}
  local i = 0
  local function calls()
    local row = rows()
    if not row then return nil end
    i = i + 1
    index_row[i] = row.n
    return { c, method, row.params, row.key and { key = row.key } or nil }
  end

  -- Ctrl-C (or SIGTERM) once: no new calls, those in flight finish; twice: stop now
  local signals = 0
  local function stop()
    local sig = core.take_signal()
    if sig then
      signals = signals + 1
      io.stderr:write(signals == 1
        and "\nkaifang: stopping: waiting for the calls in flight (Ctrl-C again to stop at once; they are then recorded as maybe sent)\n"
        or "\nkaifang: stopping now\n")
    end
    if signals >= 2 then return "now" end
    return signals == 1 or nil
  end

  core.hold_signals()
  local ok, summary = pcall(kaifang.batch, calls, {
    concurrency = args.concurrency, journal = j, progress = true, total = total, stop = stop,
    on_result = function(n, value, err, info)
      local line, outcome = result_line(index_row[n], info, value, err)
      index_row[n] = nil
      tally[outcome] = tally[outcome] + 1
      if info and info.skipped then tally.skipped = tally.skipped + 1 end
      results.put(n, line)
    end,
  })
  core.release_signals()
  local reported = tally.ok + tally.failed + tally.maybe_sent
  results.close(ok and (reported > 0 or not summary.error))
  if j then j:close() end
  if not ok then error(summary, 0) end
  if summary.error and reported == 0 then -- nothing ran: the journal could not be had
    io.stderr:write("kaifang: ", tostring(summary.error), "\n")
    return ctx.EXIT.transport
  end

  local out = io.stdout
  out:write(("%d rows: %d ok, %d failed, %d maybe sent%s; results in %s%s\n"):format(total, tally.ok, tally.failed,
    tally.maybe_sent, tally.skipped > 0 and (" (" .. tally.skipped .. " as recorded by an earlier run)") or "",
    results_path, journal_spec and ("; journal " .. journal_spec) or ""))
  if summary.error then
    io.stderr:write("kaifang: ", tostring(summary.error), "\n")
    return ctx.EXIT.transport
  end
  if summary.stopped then
    io.stderr:write("kaifang: stopped before the end", journal_spec and "; run the same command again to resume" or "", "\n")
    return ctx.EXIT.interrupted
  end
  if tally.maybe_sent > 0 then
    io.stderr:write(("kaifang: %d calls may have reached the platform: check them before sending them again%s\n"):format(
      tally.maybe_sent, journal_spec and (" (kaifang journal " .. journal_spec .. ")") or ""))
  end
  return (tally.failed > 0 or tally.maybe_sent > 0) and ctx.EXIT.failed or ctx.EXIT.ok
end

---------------------------------------------------------------------------- kaifang journal

local function when(t) return t and os.date("%Y-%m-%d %H:%M:%S", math.floor(t)) or "" end

function M.show(args, ctx)
  local j = M.open_journal(args.journal, { readonly = true })
  local report = j:report()
  local state = args.state or "maybe_sent"
  local out = io.stdout
  if args.json then
    for rec in report:calls(state ~= "all" and state or nil) do
      out:write(format.json({ key = rec.key, state = rec.state, platform = rec.platform, account = rec.account,
        method = rec.method, args = rec.args or cjson.null, code = rec.error and rec.error.code or cjson.null,
        message = rec.error and rec.error.message or cjson.null, sent_at = rec.sent_at or cjson.null,
        settled_at = rec.settled_at or cjson.null }, true), "\n")
    end
    j:close()
    return ctx.EXIT.ok
  end
  out:write(("%s: %d calls: %d ok, %d failed, %d maybe sent, %d sending\n"):format(args.journal, report.total,
    report.ok, report.failed, report.maybe_sent, report.sending))
  local rows = { { "key", "method", "sent at", "parameters", "message" } }
  for rec in report:calls(state ~= "all" and state or nil) do
    rows[#rows + 1] = { rec.key, rec.method, when(rec.sent_at), rec.args and format.json(rec.args, true) or "",
      rec.error and rec.error.message or rec.state }
  end
  if #rows > 1 then
    out:write("\n", state == "maybe_sent" and "maybe sent: these may have reached the platform; check them there before sending them again\n"
      or (state .. ":\n"), format.columns(rows), "\n")
  end
  j:close()
  return ctx.EXIT.ok
end

return M
