-- Form encoding written out plainly in the specs, independent of kaifang.core.form_encode.
local M = {}

function M.pct(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

-- Keys sorted, so that a body is reproducible.
function M.form(params)
  local keys = {}
  for k in pairs(params) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for i, k in ipairs(keys) do parts[i] = M.pct(k) .. "=" .. M.pct(params[k]) end
  return table.concat(parts, "&")
end

return M
