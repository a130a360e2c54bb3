-- A throwaway redis-server on a free loopback port, for the specs: no persistence, stopped with
-- SHUTDOWN NOSAVE (and by its pid if it does not answer).
local core = require "kaifang.core"
local httpd = require "kaifang.sandbox.httpd"

local M = {}

function M.available()
  return os.execute("command -v redis-server >/dev/null 2>&1") == true
end

function M.free_port()
  local srv = assert(httpd.listen({ host = "127.0.0.1", port = 0 }))
  local port = srv:port()
  srv:close()
  return port
end

local function quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- start{ password = nil, port = nil } -> { port=, password=, pid=, stop=fn, restart=fn }
function M.start(opts)
  opts = opts or {}
  assert(M.available(), "redis-server is not installed (make deps installs it)")
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. quote(dir)))
  local server = { port = opts.port or M.free_port(), password = opts.password, dir = dir }

  function server.launch()
    local cmd = ("echo $$; exec redis-server --port %d --bind 127.0.0.1 --save '' --appendonly no --daemonize no "
      .. "--dir %s --logfile %s%s"):format(server.port, quote(dir), quote(dir .. "/redis.log"),
      server.password and (" --requirepass " .. quote(server.password)) or "")
    server.fh = assert(io.popen(cmd, "r"))
    server.pid = tonumber(server.fh:read("*l"))
    local conn = core.redis({ port = server.port, password = server.password, connect_timeout = 0.5, timeout = 1 })
    for _ = 1, 200 do
      if conn:command({ "PING" }) == "PONG" then
        conn:close()
        return server
      end
      core.sleep(0.025)
    end
    error("redis-server did not come up on port " .. server.port .. "; see " .. dir .. "/redis.log")
  end

  function server.halt()
    if not server.fh then return end
    local conn = core.redis({ port = server.port, password = server.password, connect_timeout = 0.5, timeout = 2 })
    local _, err = conn:command({ "SHUTDOWN", "NOSAVE" })
    conn:close()
    -- the server closes the connection as it goes; anything else: end it by its pid
    if not (err and err.kind == "io") then os.execute("kill " .. math.floor(server.pid) .. " 2>/dev/null") end
    server.fh:close()
    server.fh = nil
  end

  function server.stop()
    server.halt()
    os.execute("rm -rf " .. quote(dir))
  end

  -- the same port again: for reconnect tests
  function server.restart()
    server.halt()
    return server.launch()
  end

  return server.launch()
end

return M
