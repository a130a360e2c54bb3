-- The one error shape every runtime failure takes: nil, err.
local M = {}

local Error = {}
Error.__index = Error

local function describe(e)
  local kind, code = e.kind or "error", e.code
  if kind == "platform" or kind == "auth" or kind == "signature" then
    return code ~= nil and (kind .. " error " .. tostring(code)) or (kind .. " error")
  elseif kind == "http" then
    return "HTTP " .. tostring(e.http_status or code)
  elseif code ~= nil then
    return kind .. " error (" .. tostring(code) .. ")"
  end
  return kind .. " error"
end

function Error:__tostring()
  local s = "kaifang." .. tostring(self.platform or "core") .. ": " .. describe(self)
  if self.message and self.message ~= "" then s = s .. ": " .. tostring(self.message) end
  if self.maybe_sent then s = s .. " (the request may have reached the platform)" end
  return s
end

-- Builds an error; fields: platform, kind, code, message, http_status, retryable, maybe_sent.
function M.new(fields)
  fields.retryable = fields.retryable == true
  fields.maybe_sent = fields.maybe_sent == true
  return setmetatable(fields, Error)
end

function M.is(value)
  return getmetatable(value) == Error
end

return M
