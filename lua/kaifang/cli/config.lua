-- Where the command line gets credentials: the environment, or a profile file holding the same
-- KAIFANG_... lines; never the command line, which `ps` and shell history show to others.
-- Functions return nil, message for what the user has to fix.
local M = {}

M.PLATFORMS = { "lingdian", "zafu", "yopoint", "dakashi" }

-- Per platform: the REPL's name for its client, and each client option with its variable.
-- `secret` marks the secret `kaifang sign` uses; `optional` ones may be left unset.
M.SPEC = {
  lingdian = { short = "ld", scheme = "lingdian", options = {
    { "developer_code", "KAIFANG_LINGDIAN_CODE" },
    { "developer_key", "KAIFANG_LINGDIAN_KEY", secret = true },
    { "developer_tel", "KAIFANG_LINGDIAN_TEL", optional = true }, -- 开发者手机号: D's tel
  } },
  zafu = { short = "zafu", options = {
    { "client_id", "KAIFANG_ZAFU_CLIENT_ID" },
    { "client_secret", "KAIFANG_ZAFU_CLIENT_SECRET", secret = true },
    { "app_id", "KAIFANG_ZAFU_APP_ID" },
  } },
  yopoint = { short = "yp", scheme = "yopoint", options = {
    { "appid", "KAIFANG_YOPOINT_APPID" },
    { "app_secret", "KAIFANG_YOPOINT_SECRET", secret = true },
    { "sign_key", "KAIFANG_YOPOINT_SIGNKEY", optional = true },
  } },
  dakashi = { short = "dk", scheme = "dakashi", options = {
    { "client_id", "KAIFANG_DAKASHI_CLIENT_ID" },
    { "client_secret", "KAIFANG_DAKASHI_CLIENT_SECRET", secret = true },
  } },
}

-- ZAFU: fetching a token invalidates the one before, so a CLI that shares credentials with a
-- running service should share its token file (kaifang.store.file) too.
M.ZAFU_TOKEN_FILE = "KAIFANG_ZAFU_TOKEN_FILE"
-- A CA certificate file every client trusts (cainfo): a sandbox's own, with `kaifang sandbox --tls`.
M.CAINFO = "KAIFANG_CAINFO"

function M.url_var(platform) return "KAIFANG_" .. platform:upper() .. "_URL" end

-- Every variable a profile may set.
M.KNOWN = { [M.ZAFU_TOKEN_FILE] = true, [M.CAINFO] = true }
for platform, spec in pairs(M.SPEC) do
  M.KNOWN[M.url_var(platform)] = true
  for _, o in ipairs(spec.options) do M.KNOWN[o[2]] = true end
end

-- The variable holding the secret a scheme signs with.
function M.secret_var(scheme)
  for _, o in ipairs(M.SPEC[scheme].options) do
    if o.secret then return o[2] end
  end
end

local function quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- $XDG_CONFIG_HOME/kaifang/NAME (~/.config/kaifang/NAME); a NAME with a slash is a path.
function M.profile_path(name)
  if name:find("/", 1, true) then return name end
  local base = os.getenv("XDG_CONFIG_HOME")
  if not base or base == "" then base = (os.getenv("HOME") or "") .. "/.config" end
  return base .. "/kaifang/" .. name
end

-- The permission bits of a file (following links), as a number, or nil.
local function file_mode(path)
  local p = io.popen("stat -L -c %a " .. quote(path) .. " 2>/dev/null")
  local out = p and p:read("a")
  if p then p:close() end
  return out and tonumber(out:match("^(%d+)"), 8)
end

-- Reads a profile: KAIFANG_NAME=value lines (`export ` and surrounding quotes allowed, # starts
-- a comment line). Refuses one that group or others may access, as ssh does with keys. Messages
-- never quote a line: it may hold a secret.
function M.read_profile(name)
  local path = M.profile_path(name)
  local f = io.open(path, "r")
  if not f then return nil, ("no profile '%s' (%s)"):format(name, path) end
  local mode = file_mode(path)
  if not mode then
    f:close()
    return nil, "cannot read the permissions of " .. path
  end
  if mode % 64 ~= 0 then -- the 077 bits: any access for group or others
    f:close()
    return nil, ("profile %s is accessible by others (mode %03o); it holds secrets: chmod 600 %s"):format(path, mode, path)
  end
  local values, n = {}, 0
  for line in f:lines() do
    n = n + 1
    line = line:match("^%s*(.-)%s*$")
    if line ~= "" and line:sub(1, 1) ~= "#" then
      local key, value = line:gsub("^export%s+", ""):match("^([%w_]+)%s*=%s*(.*)$")
      if not key then
        f:close()
        return nil, ("%s line %d: expected KAIFANG_NAME=value"):format(path, n)
      end
      if not M.KNOWN[key] then
        f:close()
        return nil, ("%s line %d: unknown setting %s"):format(path, n, key)
      end
      values[key] = value:match('^"(.*)"$') or value:match("^'(.*)'$") or value
    end
  end
  f:close()
  return values, path
end

-- A lookup over the profile's values, or over the environment; empty counts as unset.
function M.source(profile_values)
  return function(var)
    local v
    if profile_values then v = profile_values[var] else v = os.getenv(var) end
    if v ~= "" then return v end
  end
end

-- kaifang.<platform>.new's options from a lookup: opts, or nil and the variables missing.
function M.client_options(platform, lookup)
  local opts, missing = {}, {}
  for _, o in ipairs(M.SPEC[platform].options) do
    local v = lookup(o[2])
    if v then
      opts[o[1]] = v
    elseif not o.optional then
      missing[#missing + 1] = o[2]
    end
  end
  if #missing > 0 then return nil, missing end
  opts.base_url = lookup(M.url_var(platform))
  opts.cainfo = lookup(M.CAINFO)
  if platform == "zafu" then
    local file = lookup(M.ZAFU_TOKEN_FILE)
    if file then opts.token_store = require("kaifang.store").file(file) end
  end
  return opts
end

-- Whether a lookup sets any of a platform's variables (a half-configured platform is worth a word).
function M.mentions(platform, lookup)
  for _, o in ipairs(M.SPEC[platform].options) do
    if lookup(o[2]) then return true end
  end
  return false
end

-- The sandbox's demo account for a platform, pointed at a running sandbox.
function M.sandbox_options(platform, sandbox_url)
  local opts = {}
  for k, v in pairs(require("kaifang.sandbox").demo({ platform })[1].account) do opts[k] = v end
  opts.base_url = sandbox_url .. "/" .. platform -- where the sandbox serves that platform's paths alone
  return opts
end

return M
