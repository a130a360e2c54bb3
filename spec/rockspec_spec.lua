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

  it("depends on the rocks the kaifang command needs", function()
    local f = assert(io.open(spec.build.install.bin.kaifang))
    local script = f:read("*a")
    f:close()
    assert.is_truthy(script:find('require("kaifang.cli")', 1, true), "bin/kaifang no longer runs kaifang.cli: update this spec")
    f = assert(io.open(spec.build.modules["kaifang.cli"]))
    local cli = f:read("*a")
    f:close()
    assert.is_truthy(cli:find('require "argparse"', 1, true) or cli:find('require("argparse")', 1, true),
      "kaifang.cli no longer uses argparse: update this spec")
    local deps = {}
    for _, d in ipairs(spec.dependencies) do deps[d:match("^%S+")] = true end
    assert.is_true(deps.argparse, "argparse is missing from the dependencies")
    assert.is_true(deps["lua-cjson"], "lua-cjson is missing from the dependencies")
  end)

  it("ships the license it names", function()
    local f = assert(io.open("LICENSE"), "no LICENSE file")
    local text = f:read("*a")
    f:close()
    assert.are.equal("MIT", spec.description.license)
    assert.matches("^MIT License", text)
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
