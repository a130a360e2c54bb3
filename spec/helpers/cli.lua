-- bin/kaifang as a user runs it: the real command in a child process with a clean environment
-- (only PATH, HOME and the XDG directories under `scratch`, the module paths, and `env`).
local shell = require "spec.helpers.shell"

local M = {}

local q = shell.q

-- The shell command that runs `lua5.4 bin/kaifang <args>` so.
function M.command(scratch, args, env)
  local vars = {
    PATH = os.getenv("PATH"), HOME = scratch, XDG_CONFIG_HOME = scratch .. "/config",
    XDG_STATE_HOME = scratch .. "/state", LUA_PATH = os.getenv("LUA_PATH"), LUA_CPATH = os.getenv("LUA_CPATH"),
  }
  for k, v in pairs(env or {}) do vars[k] = v end
  local assigns = {}
  for k, v in pairs(vars) do assigns[#assigns + 1] = k .. "=" .. q(v) end
  return "env -i " .. table.concat(assigns, " ") .. " lua5.4 bin/kaifang " .. args
end

-- runner(scratch) -> fn(args, env, stdin) -> { out =, err =, status = }
function M.runner(scratch)
  return function(args, env, stdin)
    local errfile = os.tmpname()
    local cmd = M.command(scratch, args, env) .. " 2>" .. q(errfile)
    if stdin then cmd = "printf %s " .. q(stdin) .. " | " .. cmd end
    local p = assert(io.popen(cmd, "r"))
    local out = p:read("a")
    local _, _, status = p:close()
    local err = shell.readfile(errfile)
    os.remove(errfile)
    return { out = out, err = err, status = status }
  end
end

return M
