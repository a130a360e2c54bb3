-- Shell helpers for specs that check kaifang against independent tools (coreutils, openssl).
local M = {}

function M.q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

function M.tmpfile(data)
  local path = os.tmpname()
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
  return path
end

function M.readfile(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

-- Runs a shell command, fails the test on a non-zero exit, returns its stdout.
function M.sh(cmd)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("a")
  local ok, how, code = p:close()
  assert(ok, ("command failed (%s %s): %s"):format(tostring(how), tostring(code), cmd))
  return out
end

return M
