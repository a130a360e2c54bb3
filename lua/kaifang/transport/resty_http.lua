-- kaifang.transport.resty_http: calls over nginx cosockets through lua-resty-http (not packaged in
-- Debian bookworm: install it with `luarocks install lua-resty-http` or `opm get ledgetech/lua-resty-http`).
-- Chosen explicitly: kaifang.lingdian.new{ ..., transport = "resty_http" }.
--
-- Cosockets work in rewrite, access, content, timer and ssl phases; not in init, init_worker,
-- set, filters or log. TLS is verified by default (ssl_verify = false turns it off); the CA bundle
-- is nginx's `lua_ssl_trusted_certificate`, so the cainfo/capath options do not apply here.
-- Connections go back to the cosocket pool after each call (keepalive_timeout, keepalive_pool).
-- `timeout` bounds the whole request (connect, send, headers, body), not each socket operation:
-- every step gets what is left of it. The body is read in chunks and dropped as soon as it passes
-- max_body.
-- Same contract as every transport:
--   request{ method, url, headers, body, timeout } -> { status, headers, body } | nil, err
local errors = require "kaifang.errors"
local core = require "kaifang.core"

local M = {}

local Transport = {}
Transport.__index = Transport

-- The resty.http module, or nil and why it cannot be had: not installed, or installed but
-- failing to load (a module it needs, such as resty.string, missing): then require's own words.
function M.available()
  local ok, http = pcall(require, "resty.http")
  if ok and type(http) == "table" and type(http.new) == "function" then return http end
  local msg = tostring(http)
  if not ok and msg:find("module 'resty.http' not found", 1, true) then
    return nil, "lua-resty-http is not installed (require \"resty.http\" found no module)"
  end
  if ok then return nil, "require \"resty.http\" returned no lua-resty-http module" end
  return nil, "lua-resty-http failed to load: " .. (msg:match("^[^\n]*"))
end

-- opts: connect_timeout (5 s), timeout (15 s), ssl_verify (true), proxy ("http://host:port"),
-- user_agent, max_body (64 MiB), keepalive_timeout (60 s), keepalive_pool (32).
function M.new(opts)
  opts = opts or {}
  local http, why = M.available()
  if not http then return nil, "transport \"resty_http\": " .. why end
  return setmetatable({
    http = http,
    connect_timeout = opts.connect_timeout or 5,
    timeout = opts.timeout or 15,
    ssl_verify = opts.ssl_verify ~= false,
    proxy = opts.proxy,
    user_agent = opts.user_agent,
    max_body = opts.max_body or 64 * 1024 * 1024,
    keepalive_timeout = opts.keepalive_timeout or 60,
    keepalive_pool = opts.keepalive_pool or 32,
  }, Transport)
end

local function failure(err, sent)
  local timeout = type(err) == "string" and err:find("timeout", 1, true) ~= nil
  return nil, errors.new{
    kind = timeout and "timeout" or "transport",
    message = tostring(err),
    maybe_sent = sent,
    retryable = not sent, -- a connection that was never made can always be tried again
  }
end

local function lower_headers(h)
  local out = {}
  for k, v in pairs(h or {}) do
    if type(k) == "string" then
      out[k:lower()] = type(v) == "table" and table.concat(v, ", ") or tostring(v)
    end
  end
  return out
end

local CHUNK = 65536

function Transport:request(req)
  local httpc = self.http.new()
  local total = req.timeout or self.timeout
  local deadline = core.monotonic() + total
  local function left() return deadline - core.monotonic() end
  local function ms(s) return math.max(1, math.floor(s * 1000 + 0.5)) end
  -- every step gets what is left of the one timeout (connect also at most connect_timeout)
  local function budget(sent)
    local l = left()
    if l <= 0 then
      httpc:close()
      return failure(("timeout: the whole request took more than %g s"):format(total), sent)
    end
    httpc:set_timeouts(ms(math.min(self.connect_timeout, l)), ms(l), ms(l))
    return true
  end
  local uri, perr = httpc:parse_uri(req.url, false)
  if not uri then error("kaifang.transport.resty_http: bad url " .. tostring(req.url) .. ": " .. tostring(perr), 2) end
  local scheme, host, port, path, query = uri[1], uri[2], uri[3], uri[4], uri[5]
  local proxy_opts
  if self.proxy then proxy_opts = { http_proxy = self.proxy, https_proxy = self.proxy } end
  budget(false)
  local ok, err = httpc:connect{
    scheme = scheme, host = host, port = port,
    ssl_verify = self.ssl_verify, ssl_server_name = host, proxy_opts = proxy_opts,
  }
  if not ok then return failure(err, false) end
  local headers = {}
  for k, v in pairs(req.headers or {}) do headers[k] = v end
  if self.user_agent and headers["User-Agent"] == nil then headers["User-Agent"] = self.user_agent end
  local b, berr = budget(false)
  if not b then return b, berr end
  local res
  res, err = httpc:request{
    method = req.method or "POST",
    path = (path ~= "" and path or "/") .. ((query and query ~= "") and ("?" .. query) or ""),
    headers = headers,
    body = req.body,
  }
  if not res then
    httpc:close()
    return failure(err, true)
  end
  -- the body in chunks, each with what is left of the timeout, dropped once it passes max_body
  local parts, size = {}, 0
  local reader = res.body_reader -- nil: no body (HEAD, 204, 304)
  while reader do
    b, berr = budget(true)
    if not b then return b, berr end
    local chunk
    chunk, err = reader(CHUNK)
    if err then
      httpc:close()
      return failure(err, true)
    end
    if not chunk then break end
    size = size + #chunk
    if size > self.max_body then
      httpc:close()
      return nil, errors.new{ kind = "transport", message = "reply larger than max_body (" .. self.max_body .. " bytes)",
                              maybe_sent = true }
    end
    parts[#parts + 1] = chunk
  end
  httpc:set_keepalive(self.keepalive_timeout * 1000, self.keepalive_pool)
  return { status = res.status, headers = lower_headers(res.headers), body = table.concat(parts) }
end

function Transport:close() end

Transport.__tostring = function() return "kaifang.transport.resty_http" end

return M
