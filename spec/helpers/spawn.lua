-- Runs a helper script in a child lua5.4 with this process's module paths; the children run
-- at the same time, each read back when the caller is ready.
local M = {}

local function quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

M.lua = os.getenv("KAIFANG_LUA") or "lua5.4"

local function command(script, ...)
  local args = {}
  for i = 1, select("#", ...) do args[i] = quote(select(i, ...)) end
  local setup = ("package.path=%q package.cpath=%q"):format(package.path, package.cpath)
  return ("%s -e %s %s %s"):format(quote(M.lua), quote(setup), quote(script), table.concat(args, " "))
end

-- spawn(script, args...) -> { lines = fn() -> list of output lines (waits for the child) }
function M.spawn(script, ...)
  local fh = assert(io.popen(command(script, ...), "r"))
  return {
    lines = function()
      local out = {}
      for line in fh:lines() do out[#out + 1] = line end
      fh:close()
      return out
    end,
  }
end

-- start(script, args...) -> a child read line by line, with its pid:
--   { pid =, line = fn() -> the next line or nil at its end, kill = fn(signal) (default KILL),
--     rest = fn() -> the remaining lines (waits for the child) }
-- The shell execs the child after printing its own pid, so the pid is the child's.
function M.start(script, ...)
  local fh = assert(io.popen("echo $$; exec " .. command(script, ...), "r"))
  local child = { pid = tonumber(fh:read("l")) }
  function child.line() return fh:read("l") end
  function child.kill(signal)
    os.execute(("kill -%s %d 2>/dev/null"):format(signal or "KILL", math.floor(child.pid)))
  end
  function child.rest()
    local out = {}
    for line in fh:lines() do out[#out + 1] = line end
    fh:close()
    return out
  end
  return child
end

-- chunk(code, { env = "NAME=value ...", limit = seconds (20) }) runs a chunk of Lua in a child
-- the same way, started at once -> { read = fn() -> output (stdout and stderr), exit status }.
-- The status is 124 when the child had to be stopped at the limit, 139 after a segfault.
function M.chunk(code, opts)
  opts = opts or {}
  local setup = ("package.path=%q package.cpath=%q "):format(package.path, package.cpath)
  local fh = assert(io.popen(("%s timeout %d %s -e %s 2>&1; echo \"exit $?\""):format(opts.env or "", opts.limit or 20,
    quote(M.lua), quote(setup .. code)), "r"))
  return {
    read = function()
      local out = fh:read("a")
      fh:close()
      local status = tonumber(out:match("exit (%d+)%s*$"))
      return (out:gsub("exit %d+%s*$", "")), status
    end,
  }
end

-- The directory of the helpers, for spawn's script argument.
M.dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"

return M
