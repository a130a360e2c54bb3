-- The default transport: libcurl in the C core, one kept-alive handle per client.
-- Contract shared by every transport: request{ method, url, headers, body, timeout }
--   -> { status, headers, body } | nil, err
local core = require "kaifang.core"
local errors = require "kaifang.errors"
local assert_may_block = require("kaifang.transport").assert_may_block

local M = {}
local Transport = {}
Transport.__index = Transport

function M.new(opts)
  opts = opts or {}
  return setmetatable({
    session = core.http{
      connect_timeout = opts.connect_timeout,
      timeout = opts.timeout,
      ssl_verify = opts.ssl_verify,
      cainfo = opts.cainfo,
      capath = opts.capath,
      proxy = opts.proxy,
      user_agent = opts.user_agent,
      max_body = opts.max_body,
    },
  }, Transport)
end

-- The core.http session of a libcurl transport (its settings, for a batch), or nil for any other.
function M.session_of(t)
  return getmetatable(t) == Transport and t.session or nil
end

function Transport:request(req)
  assert_may_block("kaifang.transport.curl", 2) -- inside nginx, a clear error instead of a frozen worker
  local res, err = self.session:request(req)
  if res then return res end
  return nil, errors.new(err)
end

function Transport:close()
  self.session:close()
end

Transport.__close = Transport.close
Transport.__tostring = function() return "kaifang.transport.curl" end

return M
