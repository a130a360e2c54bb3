-- `kaifang repl`: Lua 5.4 with kaifang and the clients in scope. Values print as readable
-- tables, errors as one line. On a terminal: line editing, history and completion from Debian's
-- lua-readline; piped input is read line by line with no prompts, so it can be scripted.
local core = require "kaifang.core"
local kaifang = require "kaifang"
local format = require "kaifang.cli.format"

local M = {}

M.PROMPT, M.MORE = "> ", ">> "

-- Compiles input as lua5.4's prompt does: an expression (its values print), else statements.
-- "=expr" is the older prompts' spelling of an expression. Returns fn, or nil, message, and
-- whether more lines could complete it.
function M.compile(code, env)
  if code:sub(1, 1) == "=" then code = "return " .. code:sub(2) end
  local fn = load("return " .. code, "=stdin", "t", env)
  if fn then return fn end
  local err
  fn, err = load(code, "=stdin", "t", env)
  if fn then return fn end
  return nil, err, err:sub(-5) == "<eof>"
end

local function interrupted(e) return type(e) == "string" and e:match("interrupted!$") ~= nil end

-- One line, whatever was raised.
local function error_text(e)
  if interrupted(e) then return "interrupted" end
  local text = type(e) == "string" and e or format.inspect(e)
  return (text:gsub("%s*\n%s*", " "))
end

---------------------------------------------------------------------------- reading lines

local function history_path()
  local base = os.getenv("XDG_STATE_HOME")
  if not base or base == "" then
    local home = os.getenv("HOME")
    if not home or home == "" then return nil end
    base = home .. "/.local/state"
  end
  local dir = base .. "/kaifang"
  -- the history may hold what was typed, secrets included: the directory is the owner's alone
  if not os.execute("mkdir -p -m 700 '" .. dir:gsub("'", "'\\''") .. "' 2>/dev/null") then return nil end
  return dir .. "/history"
end

-- Names a partial word like `ld:get_u` or `kaifang.zafu.ne` could complete to.
local function completer(env)
  local function keys_of(t, out, seen)
    if type(t) ~= "table" or seen[t] then return end
    seen[t] = true
    for k in pairs(t) do
      if type(k) == "string" and k:match("^[%a_][%w_]*$") then out[k] = true end
    end
    local mt = getmetatable(t)
    if type(mt) == "table" then keys_of(mt.__index, out, seen) end -- methods, and _G behind env
  end
  return function(line, from, to)
    local word = line:sub(from, to)
    local path, sep, partial = word:match("^(.-)([%.:]?)([%w_]*)$")
    local t = env
    if sep ~= "" then
      for name in path:gmatch("[^%.:]+") do
        local ok, v = pcall(function() return t[name] end)
        t = ok and v or nil
        if type(t) ~= "table" then return {} end
      end
    end
    local names, matches = {}, {}
    keys_of(t, names, {})
    for name in pairs(names) do
      if name:sub(1, #partial) == partial and (sep ~= ":" or type(t[name]) == "function") then
        matches[#matches + 1] = path .. sep .. name
      end
    end
    table.sort(matches)
    return matches
  end
end

-- read(prompt) -> line | nil at the end, and a function to call when done.
local function line_reader(env)
  if not core.isatty(0) then
    return function() return io.stdin:read("l") end, function() end, false
  end
  local ok, rl = pcall(require, "readline")
  if not ok then
    return function(prompt)
      io.stdout:write(prompt)
      io.stdout:flush()
      return io.stdin:read("l")
    end, function() end, true
  end
  rl.set_options{ histfile = history_path() or "", keeplines = 1000, completion = true }
  rl.set_readline_name("kaifang")
  local complete = completer(env)
  rl.set_complete_function(function(...)
    rl.set_completion_append_character("") -- readline resets it to a space before every completion
    return complete(...)
  end)
  return rl.readline, rl.save_history, true
end

---------------------------------------------------------------------------- the loop

-- Reads one complete chunk and runs it; false at the end of input.
local function step(read, env, interactive)
  local code = read(M.PROMPT)
  if code == nil then return false end
  if code:match("^%s*$") then return true end
  local fn, err, incomplete = M.compile(code, env)
  while not fn and incomplete do
    local more = read(M.MORE)
    if more == nil then break end
    code = code .. "\n" .. more
    fn, err, incomplete = M.compile(code, env)
  end
  if not fn then
    io.stderr:write(error_text(err), "\n")
    return true
  end
  local results = table.pack(pcall(fn))
  if not results[1] then
    io.stderr:write(error_text(results[2]), "\n")
    return true
  end
  for i = 2, results.n do io.stdout:write(format.inspect(results[i]), "\n") end
  if not interactive then io.stdout:flush() end
  return true
end

-- opts: bindings (name -> value, kaifang among them), clients (the names bound to clients, in
-- order), notes (lines for stderr), sandbox (its handle, when there is one). Returns 0.
function M.run(opts)
  local env = setmetatable(opts.bindings, { __index = _G })
  env.inspect = format.inspect
  local read, done, interactive = line_reader(env)
  for _, note in ipairs(opts.notes or {}) do io.stderr:write("kaifang: ", note, "\n") end
  if interactive then
    local out = io.stdout
    out:write("kaifang ", kaifang.version, " on ", _VERSION, "\n")
    if opts.sandbox then out:write("sb = the sandbox at ", opts.sandbox.url, " (sb:records(\"lingdian\", \"messages\"))\n") end
    for _, name in ipairs(opts.clients) do out:write(name, " = ", tostring(env[name]), "\n") end
    if #opts.clients == 0 then
      out:write("no platform configured: set its KAIFANG_... variables, use --profile NAME or --sandbox\n")
    end
    out:write("An expression prints its value (inspect(x) gives the text); Ctrl-D quits.\n")
  end
  while true do
    local ok, more = pcall(step, read, env, interactive)
    if not ok then
      io.stderr:write(error_text(more), "\n") -- Ctrl-C while reading: the line is dropped
    elseif not more then
      break
    end
  end
  if interactive then io.stdout:write("\n") end
  done()
  return 0
end

return M
