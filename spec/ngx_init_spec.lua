-- kaifang.ngx.init and the path pinning behind it, outside nginx (spec/openresty_spec.lua runs
-- them in a real nginx, from a private folder too).
local core = require "kaifang.core"
local kngx = require "kaifang.ngx"
local here, raises_at_line = require("spec.helpers.raises")("ngx_init_spec.lua")

local function readable(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

-- The directories this process holds open: { [fd] = target }.
local function open_dirs()
  local out = {}
  local p = assert(io.popen("for f in /proc/" .. require("kaifang.sandbox.httpd").getpid()
    .. "/fd/*; do [ -d \"$f\" ] && echo \"${f##*/} $(readlink \"$f\")\"; done"))
  for line in p:lines() do
    local fd, target = line:match("^(%d+) (.*)$")
    if fd then out[tonumber(fd)] = target end
  end
  p:close()
  return out
end

describe("kaifang.ngx.init", function()
  it("lists every module under lua/kaifang but the sandbox's and the command line's", function()
    local listed = {}
    for _, name in ipairs(kngx.modules) do listed[name] = true end
    local p = assert(io.popen("cd lua && find kaifang -name '*.lua' | sort"))
    local count = 0
    for file in p:lines() do
      local name = file:gsub("%.lua$", ""):gsub("/init$", ""):gsub("/", ".")
      if not name:find("^kaifang%.sandbox") and not name:find("^kaifang%.cli") then
        count = count + 1
        assert.is_true(listed[name], name .. " is missing from kaifang.ngx.modules")
      end
    end
    p:close()
    assert.is_true(count > 10)
    for _, name in ipairs(kngx.modules) do assert.is_nil(name:find("sandbox"), name) end
  end)

  it("raises at the caller's line outside nginx's init phase", function()
    local err = raises_at_line(function() here(); kngx.init() end)
    assert.matches("init_by_lua", err)
  end)
end)

describe("kaifang.ngx.pin_path", function()
  local cwd = assert(io.popen("pwd")):read("*l")

  it("names each absolute directory by a descriptor held open, and the files stay reachable", function()
    local path = kngx.pin_path(cwd .. "/lua/?.lua;" .. cwd .. "/lua/?/init.lua;./?.lua;/no/such/dir/?.lua")
    local entries = {}
    for e in path:gmatch("[^;]+") do entries[#entries + 1] = e end
    assert.are.equal(4, #entries)
    local fd = tonumber(entries[1]:match("^/proc/self/fd/(%d+)/%?%.lua$"))
    assert.is_number(fd, entries[1])
    assert.are.equal("/proc/self/fd/" .. fd .. "/?/init.lua", entries[2]) -- one descriptor for one directory
    assert.are.equal("./?.lua", entries[3])                                -- relative: left alone
    assert.are.equal("/no/such/dir/?.lua", entries[4])                     -- cannot be held: left alone
    assert.are.equal(cwd .. "/lua", open_dirs()[fd])
    assert.is_true(readable(entries[1]:gsub("%?", "kaifang/ngx")))
    assert.is_true(readable(package.searchpath("kaifang.ngx", path)))
  end)

  it("holds a directory once, however often it is pinned, and leaves pinned paths as they are", function()
    local path = kngx.pin_path(cwd .. "/lua/?.lua")
    local before = open_dirs()
    assert.are.equal(path, kngx.pin_path(path))
    assert.are.equal(path, kngx.pin_path(cwd .. "/lua/../lua/?.lua"))
    assert.are.equal(path, kngx.pin_path(cwd .. "/lua/?.lua"))
    assert.are.same(before, open_dirs())
  end)

  it("splits an entry at the last directory before the '?'", function()
    local path = kngx.pin_path(cwd .. "/build/lib/kaifang/lib?.so;/usr/local/lib/lua/5.4/loadall.so")
    assert.matches("^/proc/self/fd/%d+/lib%?%.so;/usr/local/lib/lua/5%.4/loadall%.so$", path)
  end)

  it("refuses what is not a directory", function()
    local fd, err = core.pin_dir(cwd .. "/README.md")
    assert.is_nil(fd)
    assert.matches("Not a directory", err)
  end)
end)
