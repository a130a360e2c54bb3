-- Runs a helper script in a child lua5.4 with this process's module paths; the children run
-- at the same time, each read back when the caller is ready.
local M = {}

local function quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

M.lua = os.getenv("KAIFANG_LUA") or "lua5.4"

-- spawn(script, args...) -> { lines = fn() -> list of output lines (waits for the child) }
function M.spawn(script, ...)
  local args = {}
  for i = 1, select("#", ...) do args[i] = quote(select(i, ...)) end
  local setup = ("package.path=%q package.cpath=%q"):format(package.path, package.cpath)
  local cmd = ("%s -e %s %s %s"):format(quote(M.lua), quote(setup), quote(script), table.concat(args, " "))
  local fh = assert(io.popen(cmd, "r"))
  return {
    lines = function()
      local out = {}
      for line in fh:lines() do out[#out + 1] = line end
      fh:close()
      return out
    end,
  }
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
