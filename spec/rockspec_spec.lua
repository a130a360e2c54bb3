-- The rockspec's builtin module list is written by hand: every Lua module of the tree must be in
-- it, or `luarocks make` installs a library that cannot load.
describe("kaifang-scm-1.rockspec", function()
  local spec = {}
  assert(loadfile("kaifang-scm-1.rockspec", "t", spec))()

  it("lists every Lua module under lua/kaifang with its file", function()
    local listed = {}
    for _, src in pairs(spec.build.modules) do
      if type(src) == "string" then listed[src] = true end
    end
    local p = assert(io.popen("find lua/kaifang -name '*.lua' | sort"))
    local count = 0
    for file in p:lines() do
      count = count + 1
      assert.is_true(listed[file] == true, file .. " is missing from the rockspec")
    end
    p:close()
    assert.is_true(count > 10)
  end)

  it("builds both C modules from files that exist", function()
    for _, name in ipairs({ "kaifang.core", "kaifang.sandbox.httpd" }) do
      local m = spec.build.modules[name]
      assert.is_table(m, name)
      for _, src in ipairs(m.sources) do
        assert.is_not_nil(io.open(src), src)
      end
    end
  end)
end)
