-- The handlers of bench/nginx/kaifang.conf: one Lingdian call per request to the fixed-reply
-- upstream (spec_env.upstream, written by bench/nginx.lua), answered with the phone number.
local kaifang = require "kaifang"
local env = require "spec_env"

local M = {}

local clients = {}

function M.init()
  require("kaifang.ngx").init()
  local function client(transport, concurrency)
    return kaifang.lingdian.new{ developer_code = "U2QHNB2w=", developer_key = "744ed968e7e1a4aebafa6f4888fced68",
                                 base_url = env.upstream, transport = transport, concurrency = concurrency }
  end
  clients.thread = client(nil) -- the default inside nginx: kaifang.transport.ngx_thread
  clients.thread32 = client(nil, 32) -- as many calls in flight as the pool has threads
  if require("kaifang.transport.resty_http").available() then clients.resty_http = client("resty_http") end
end

local ARGS = { user_code = "U2TD844B2" }

function M.call(name)
  local c = clients[name]
  if not c then
    ngx.status = 501
    return ngx.say("no client ", name)
  end
  local res, err = c:get_user_tel_by_code(ARGS)
  if not res then
    ngx.status = 502
    return ngx.say(tostring(err))
  end
  ngx.say(res.data)
end

-- For scale: what an event-loop transport cannot beat. One signed request made at start, sent
-- by hand over a kept-alive cosocket, the reply read by its Content-Length; no kaifang per call.
local raw
function M.cosocket()
  if not raw then
    local c = clients.thread
    local req = c:build_request(c.endpoints.get_user_tel_by_code, ARGS)
    local host, port, path = req.url:match("^http://([^:/]+):(%d+)(/.*)$")
    raw = { host = host, port = tonumber(port), text = ("POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: %s\r\n"
      .. "Content-Length: %d\r\n\r\n%s"):format(path, host, req.headers["Content-Type"], #req.body, req.body) }
  end
  local sock = ngx.socket.tcp()
  local ok, err = sock:connect(raw.host, raw.port)
  if ok then ok, err = sock:send(raw.text) end
  local status = ok and sock:receive("*l")
  local len
  while status do
    local line = sock:receive("*l")
    if not line or line == "" then break end
    len = tonumber(line:match("^[Cc]ontent%-[Ll]ength:%s*(%d+)")) or len
  end
  local body = len and sock:receive(len)
  if not body then
    ngx.status = 502
    return ngx.say("cosocket: ", tostring(err or status))
  end
  sock:setkeepalive(60000, 64)
  ngx.say(require("cjson").decode(body).data)
end

function M.has_resty()
  local ok, why = require("kaifang.transport.resty_http").available()
  ngx.say(ok and "yes" or why)
end

return M
