-- Checks that a misuse raises at the caller's line:
--   local here, raises_at_line = require("spec.helpers.raises")("client_spec.lua")
--   raises_at_line(function() here(); c:method{ bad } end)
-- here() notes the line it is called on; fn calls here() and the misused function on one line.
local assert = require "luassert"

return function(spec_name)
  local noted_line

  local function here()
    noted_line = debug.getinfo(2, "l").currentline
    return noted_line
  end

  -- Runs fn, checks that it raised with the position of the line fn noted; returns the message.
  local function raises_at_line(fn)
    noted_line = nil
    local ok, err = pcall(fn)
    assert.is_false(ok, "did not raise")
    err = tostring(err)
    assert.is_number(noted_line, "the test did not note its line")
    local where = spec_name .. ":" .. noted_line .. ":"
    assert.is_truthy(err:find(where, 1, true), "expected the error at " .. where .. " got: " .. err)
    assert.is_nil(err:find("kaifang/", 1, true), err) -- not a position inside the library
    return err
  end

  return here, raises_at_line
end
