-- The README, tried as a reader would: every Lua block marked ```lua runnable is run as written,
-- in its own lua5.4 process, against a fresh sandbox. The blocks take credentials and addresses
-- from the environment (KAIFANG_LINGDIAN_CODE, KAIFANG_LINGDIAN_URL, ...), which is where the
-- README tells readers to keep them; here they name the sandbox's demo accounts. A line ending in
-- `--> text` must print a line containing that text, in that order. Every other ```lua block must
-- say it is a fragment (```lua fragment), so a new block cannot slip past unrun.
local sandbox = require "kaifang.sandbox"
local shell = require "spec.helpers.shell"

-- The ```lua blocks: { info = "lua runnable", body = text, line = the fence's line }
local function blocks(text)
  local out, pos = {}, 1
  while true do
    local from, to, info = text:find("\n```(lua[^\n]*)\n", pos)
    if not from then return out end
    local close = assert(text:find("\n```", to, true), "an unclosed block")
    local _, lines = text:sub(1, from):gsub("\n", "")
    out[#out + 1] = { info = info, body = text:sub(to + 1, close), line = lines + 1 }
    pos = close + 4
  end
end

-- The sandbox's demo accounts as the KAIFANG_* variables `kaifang sandbox` prints.
local function environment(sb)
  local env = {}
  for _, vars in ipairs(require("kaifang.cli").demo_env(sb.url, sandbox.demo())) do
    for _, v in ipairs(vars) do env[v[1]] = v[2] end
  end
  return env
end

local function expectations(body)
  local want = {}
  for text in body:gmatch("%-%->[ \t]*([^\n]-)%s*\n") do want[#want + 1] = text end
  return want
end

describe("README.md as written", function()
  local text = shell.readfile("README.md")
  local all = blocks(text)

  it("marks every Lua block as runnable or as a fragment", function()
    assert.is_true(#all > 0)
    for _, b in ipairs(all) do
      assert.is_truthy(b.info == "lua runnable" or b.info == "lua fragment",
        ("README.md:%d: mark the block ```lua runnable or ```lua fragment (got ```%s)"):format(b.line, b.info))
    end
  end)

  local sb, env_prefix
  setup(function()
    sb = sandbox.start{ port = 0 }
    local words = { "LUA_PATH=" .. shell.q(package.path), "LUA_CPATH=" .. shell.q(package.cpath) }
    for k, v in pairs(environment(sb)) do words[#words + 1] = k .. "=" .. shell.q(v) end
    env_prefix = "env " .. table.concat(words, " ") .. " "
  end)
  teardown(function() if sb then sb:stop() end end)

  local runnable = 0
  for _, b in ipairs(all) do
    if b.info == "lua runnable" then
      runnable = runnable + 1
      it("runs the block at README.md:" .. b.line, function()
        assert(sb:reset())
        local path = shell.tmpfile(b.body)
        local p = assert(io.popen(env_prefix .. "lua5.4 " .. shell.q(path) .. " 2>&1"))
        local out = p:read("a")
        local ok = p:close()
        os.remove(path)
        assert.is_true(ok, ("README.md:%d failed:\n%s"):format(b.line, out))
        local from = 1
        for _, want in ipairs(expectations(b.body)) do
          local at = out:find(want, from, true)
          assert.is_truthy(at, ("README.md:%d: expected output %q (in order) in:\n%s"):format(b.line, want, out))
          from = at + #want
        end
      end)
    end
  end

  it("has runnable blocks for the sandbox, each platform and a batch", function()
    assert.is_true(runnable >= 6, "only " .. runnable .. " runnable blocks")
  end)
end)
