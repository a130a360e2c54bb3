-- kaifang (开放): Chinese open-platform APIs from Lua.
local M = {
  version = "0.1.0",
  sign = require "kaifang.sign",
  errors = require "kaifang.errors",
}

-- Platform modules load on first use, so a script that needs one platform loads one.
local lazy = { lingdian = true, zafu = true, yopoint = true, dakashi = true, store = true, sandbox = true,
               journal = true }

-- kaifang.batch(calls, opts) -> summary; see kaifang/batch.lua.
function M.batch(calls, opts)
  return require("kaifang.batch").run(calls, opts)
end

return setmetatable(M, {
  __index = function(t, name)
    if lazy[name] then
      local mod = require("kaifang." .. name)
      rawset(t, name, mod)
      return mod
    end
  end,
})
