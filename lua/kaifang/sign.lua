-- The platforms' signature schemes over the one canonical-string signer in the C core.
local core = require "kaifang.core"

local M = {}

-- Where the platforms differ; everything else (byte-order sort, k=v joined by &, UTF-8 values
-- unencoded, integers without a decimal point) is the same for all.
M.schemes = {
  lingdian = { exclude = { "sign", "sign_type", "key", "developer_key" }, drop_empty = true, joiner = "", digest = "md5" },
  yopoint = { exclude = { "sign" }, drop_empty = false, joiner = "&", digest = "md5" },
  -- the document's PHP demo (formatBizQueryParaMap) joins every parameter, an empty one as "k="
  dakashi = { exclude = { "sign" }, drop_empty = false, joiner = "", digest = "sha1", upper = true },
}

local signers = {}

-- The core signer for a scheme name, or for a table describing a scheme of your own.
function M.signer(scheme)
  if type(scheme) == "table" then return core.signer(scheme) end
  local s = signers[scheme]
  if not s then
    local def = M.schemes[scheme]
    if not def then error("kaifang.sign: unknown scheme '" .. tostring(scheme) .. "'", 2) end
    local spec = { name = scheme, shared = true } -- every client's: a user's <close> leaves it open
    for k, v in pairs(def) do spec[k] = v end
    s = core.signer(spec)
    signers[scheme] = s
  end
  return s
end

for name in pairs(M.schemes) do
  -- kaifang.sign.<name>(params, secret) -> sign, string_to_sign
  M[name] = function(params, secret)
    if type(params) ~= "table" then error("kaifang.sign." .. name .. ": params must be a table", 2) end
    if type(secret) ~= "string" or secret == "" then
      error("kaifang.sign." .. name .. ": the secret must be a non-empty string", 2)
    end
    -- what the C signer refuses (a key that is not a string, a value that is not text) is the
    -- caller's mistake: raised at the caller's line, not at this one
    local ok, sig, sts = pcall(M.signer(name).sign, M.signer(name), params, secret)
    if not ok then error((tostring(sig):gsub("^[^:]*:%d+: ", "")), 2) end
    return sig, sts
  end
end

-- The string-to-sign with the secret hidden, for logs and for `kaifang sign`. The secret is
-- appended last, so that place is masked; a value that happens to contain the same text is the
-- caller's data and stays as it is.
function M.mask(string_to_sign, secret)
  if type(string_to_sign) ~= "string" then error("kaifang.sign.mask: the string-to-sign must be a string", 2) end
  if secret ~= nil and type(secret) ~= "string" then error("kaifang.sign.mask: the secret must be a string", 2) end
  if not secret or secret == "" or string_to_sign:sub(-#secret) ~= secret then return string_to_sign end
  return string_to_sign:sub(1, -#secret - 1) .. "<secret>"
end

return M
