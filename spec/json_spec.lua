-- core.json_decode against what the replies are decoded with today, core.integers(cjson.decode(x)):
-- the same values, math types included, for hand-written and generated documents; nil and a
-- message for invalid ones; cjson's nesting limit; LuaJIT and a comma locale.
local core = require "kaifang.core"
local cjson = require "cjson"
local cjson_safe = require "cjson.safe"
local shell = require "spec.helpers.shell"

local decode = core.json_decode

local function reference(text) return core.integers(cjson.decode(text)) end

-- nil when a and b are the same, else where they first differ
local function difference(a, b, path)
  path = path or "value"
  if type(a) ~= type(b) then return path .. ": " .. type(a) .. " vs " .. type(b) end
  if type(a) == "number" then
    if math.type(a) ~= math.type(b) then return path .. ": " .. math.type(a) .. " vs " .. math.type(b) end
    if a ~= b and (a == a or b == b) then return path .. ": " .. a .. " vs " .. b end
    if a == 0 and 1 / a ~= 1 / b then return path .. ": " .. a .. " vs " .. b .. " (sign)" end
    return nil
  end
  if type(a) ~= "table" then
    if a ~= b then return path .. ": " .. tostring(a) .. " vs " .. tostring(b) end
    return nil
  end
  for k, v in pairs(a) do
    local d = difference(v, b[k], path .. "[" .. tostring(k) .. "]")
    if d then return d end
  end
  for k in pairs(b) do
    if a[k] == nil then return path .. "[" .. tostring(k) .. "]: missing on the left" end
  end
  return nil
end

local function same_as_cjson(text)
  local got, err = decode(text)
  assert.is_nil(err, text)
  local diff = difference(got, reference(text))
  assert(diff == nil, ("%s\n  for %q"):format(diff, text))
end

local VALID = {
  -- values of each kind, alone and nested
  "0", "-0", "1", "-1", "100", "1e2", "1E2", "1e+2", "1e-2", "1.5", "-1.5", "100.0", "-0.0", "0.0", "1.0e0",
  "9007199254740992", "-9007199254740992", "9007199254740993", "9007199254740994", "-9007199254740994",
  "9007199254740991.5", "12345678901234567890", "-12345678901234567890", "1e15", "1e16", "1e22", "1e23",
  "1.7976931348623157e308", "1e308", "1e309", "1e400", "-1e400", "1e-400", "4.9e-324", "2.2250738585072014e-308",
  "0.1", "0.30000000000000004", "123456789.123456789", "1e0000000000000000002", "0e5", "-0e-5",
  "0.000000000000000000000000000000000000000000000000000000000001",
  "100000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000.5",
  "true", "false", "null", '""', '"ok"',
  '{"code":100,"message":"ok","data":13311112222}',
  '{"code":0,"data":{"list":[{"id":1,"price":12.5,"name":"可乐"},{"id":2,"price":3,"name":"水"}],"total":2}}',
  "[]", "{}", "[[]]", "[{}]", '{"a":[]}', '{"a":{}}', "[1,[2,[3,[4]]]]", '[null,null]', '{"a":null}',
  '{"a":1,"a":2}', '{"a":1,"b":2,"a":null}', '{"":""}', '[true,false,null,0,"",[],{}]',
  -- whitespace
  " 1 ", "\t\n\r [ 1 , 2 ] \r\n\t", '{ "a" : 1 , "b" : [ ] }', "[\n]", "{\n}",
  -- strings: every escape, unicode, surrogate pairs, raw control characters and bytes
  [["\"\\\/\b\f\n\r\t"]], [["\u0041\u00e9\u4e2d\u6587"]], [["\u00E9\u00e9"]], [["\ud83d\ude00"]],
  [["\uD800\uDC00"]], [["\uDBFF\uDFFF"]], [["\u0000"]], [["a\u0000b"]], [["\u007f\u0080\u07ff\u0800\uffff"]],
  '"raw\nnewline\tand\1control"', '"中文 and bytes \255\254"', [["a\\u0041"]], [["\\"]], [["\/\/"]],
  [[{"k\u00e9y":"v\"al","k\\":1}]], string.format('"%s"', ("x"):rep(5000)),
  string.format('"%s\\n"', ("y"):rep(5000)),
}

local INVALID = {
  "", " ", "[", "]", "{", "}", "[1,]", "[,1]", "[1 2]", '{"a":1,}', '{"a"}', '{"a":}', "{1:2}", '{"a" 1}',
  "{'a':1}", "'a'", '"abc', '"a\\', '"\\x"', '"\\u12"', '"\\u12G4"', '"\\U0041"', '"\\ud800"', '"\\udc00"',
  '"\\ud800\\u0041"', '"\\ud800x"', '"\\ud800\\ud800"', '"\\udc00\\ud800"', '"a\0b"', "tru", "nul", "fals",
  "True", "NULL", "1 2", "true false", "[1]]", "{}}", "-", "- 1", "--1", "1e", "1e+", "1.5e", ".5", "[-]",
  "1_000", "\f1", "\v1", "\0", " \0", "1\0x", "x", "<html>", '{"code":100"x"}', "[1,2", "[[[]]",
}

-- accepted by cjson, which reads numbers with strtod and stops at a NUL, but not JSON
local STRICTER = { "0x10", "0X1F", "-0x10", "+1", "01", "-01", "00", "01.5", "1.", "2.", "-.5", "1.e5", "inf",
                   "-inf", "nan", "Infinity", "NaN", "[1]\0", '"ab"\0' }

describe("core.json_decode", function()
  it("gives what core.integers(cjson.decode(x)) gives, math types included", function()
    for _, text in ipairs(VALID) do same_as_cjson(text) end
    for _, text in ipairs(VALID) do same_as_cjson("[" .. text .. "," .. text .. "]") end
    for _, text in ipairs(VALID) do same_as_cjson('{"k":' .. text .. ',"n":{"k":' .. text .. "}}") end
  end)

  -- around and past the room the decoder's tables start with
  it("decodes arrays and objects of every size up to 40, at the top and 40 deep", function()
    for n = 0, 40 do
      local values, pairs_ = {}, {}
      for i = 1, n do
        values[i] = i % 3 == 0 and '"s' .. i .. '"' or i % 3 == 1 and tostring(i) or "[" .. i .. "]"
        pairs_[i] = '"k' .. i % 37 .. '":' .. values[i] -- repeated keys past 37
      end
      local array, object = "[" .. table.concat(values, ",") .. "]", "{" .. table.concat(pairs_, ",") .. "}"
      for _, doc in ipairs{ array, object, "[" .. array .. "," .. object .. "]" } do
        same_as_cjson(doc)
        same_as_cjson(("["):rep(40) .. doc .. (",1]"):rep(40))
      end
    end
  end)

  it("reads codes and ids as integers and other numbers as floats", function()
    local v = decode('{"code":100,"message":"ok","data":13311112222}')
    assert.are.equal("integer", math.type(v.code))
    assert.are.equal(13311112222, v.data)
    assert.are.equal("integer", math.type(v.data))
    assert.are.equal("integer", math.type(decode("1e2")))
    assert.are.equal("integer", math.type(decode("100.0")))
    assert.are.equal("integer", math.type(decode("-9007199254740992")))
    assert.are.equal("float", math.type(decode("9007199254740994")))
    assert.are.equal("float", math.type(decode("1.5")))
    assert.are.equal(math.huge, decode("1e400"))
    local a = decode('[1, 2, "x", null, [], {}]')
    assert.are.equal(6, #a)
    assert.are.equal(cjson.null, a[4])
  end)

  it("decodes null as cjson.null", function()
    assert.are.equal(cjson.null, decode("null"))
    assert.are.equal(cjson.null, decode('{"data":null}').data)
    assert.is_true(rawequal(cjson.null, decode("[null]")[1]))
  end)

  local function refused(text)
    local v, err = decode(text)
    assert(v == nil, ("%q decoded"):format(text))
    assert.is_truthy(tostring(err):find("^invalid JSON at byte %d+"), err)
  end

  it("refuses invalid documents with nil and where, as cjson does", function()
    for _, text in ipairs(INVALID) do
      refused(text)
      assert.is_nil(cjson_safe.decode(text), ("%q: cjson takes it"):format(text))
    end
    assert.are.same({ nil, "invalid JSON at byte 12: expected ',' or '}'" }, { decode('{"code":100"x"}') })
    assert.are.same({ nil, "invalid JSON at byte 5 (the end): expected ',' or ']'" }, { decode("[1,2") })
    assert.are.same({ nil, "invalid JSON at byte 2: lone surrogate in a \\u escape" }, { decode('"\\ud800"') })
  end)

  it("is stricter than cjson for non-JSON numbers and bytes after a NUL", function()
    for _, text in ipairs(STRICTER) do
      refused(text)
      assert.is_not_nil(cjson_safe.decode(text), ("%q: cjson refuses it too: move it to INVALID"):format(text))
    end
  end)

  it("takes 1000 nested arrays or objects and refuses 1001, as cjson", function()
    local function arrays(n) return ("["):rep(n) .. ("]"):rep(n) end
    local function objects(n) return ('{"a":'):rep(n) .. "1" .. ("}"):rep(n) end
    local function mixed(n) return ('[{"a":'):rep(n // 2) .. "1" .. ("}]"):rep(n // 2) end
    for _, make in ipairs{ arrays, objects, mixed } do
      same_as_cjson(make(1000))
      local v, err = decode(make(1002))
      assert.is_nil(v)
      assert.is_truthy(err:find("nested deeper than 1000", 1, true), err)
      assert.is_nil(cjson_safe.decode(make(1002)))
    end
    assert.is_nil(decode(arrays(1001)))
    assert.is_nil(cjson_safe.decode(arrays(1001)))
    assert.is_nil(decode(("["):rep(100000)))
  end)

  it("raises for a non-string argument only", function()
    assert.has_error(function() decode({}) end)
    assert.has_error(function() decode() end)
    assert.are.equal(5, decode(5)) -- a number is its text, as everywhere in the Lua API and in cjson
  end)

  -- generated documents, with a seed that is printed when one differs
  local seed = os.time()
  local function rnd(n) return math.random(n) end

  local CHARS = { "a", "Z", "0", " ", '"', "\\", "/", "\n", "\t", "\1", "\31", "é", "中", "😀", "\127", "{", "]" }
  local function random_string()
    local t = {}
    for i = 1, rnd(8) - 1 do t[i] = CHARS[rnd(#CHARS)] end
    return table.concat(t)
  end

  local function random_number()
    local r = rnd(6)
    if r == 1 then return rnd(1000) - 500 end
    if r == 2 then return math.random(-(2 ^ 53) // 1, (2 ^ 53) // 1) end
    if r == 3 then return (math.random() - 0.5) * 10 ^ rnd(40) end
    if r == 4 then return math.random(math.mininteger, math.maxinteger) end
    if r == 5 then return (rnd(2000) - 1000) / 4 end
    return 2 ^ 53 + rnd(8) - 4
  end

  local function random_value(depth)
    local r = rnd(depth > 4 and 5 or 7)
    if r == 1 then return random_number() end
    if r == 2 then return random_string() end
    if r == 3 then return rnd(2) == 1 end
    if r == 4 then return cjson.null end
    if r == 5 then return random_number() end
    local t = {}
    if r == 6 then
      for i = 1, rnd(rnd(4) == 1 and 40 or 6) - 1 do t[i] = random_value(depth + 1) end
    else
      for _ = 1, rnd(rnd(4) == 1 and 40 or 6) - 1 do t[random_string()] = random_value(depth + 1) end
    end
    return t
  end

  it("gives what cjson gives for random documents written by cjson.encode", function()
    math.randomseed(seed)
    for _ = 1, 2000 do
      local text = cjson.encode(random_value(0))
      local ok, err = pcall(same_as_cjson, text)
      assert(ok, ("seed %d: %s"):format(seed, tostring(err)))
    end
  end)

  -- numbers written as a platform might: every format, fraction and exponent shape
  local FORMATS = { "%d", "%.0f", "%.1f", "%.3f", "%.17g", "%.14g", "%g", "%e", "%.0e", "%E", "%.20e", "%.16fE3" }
  local function written(x)
    local f = FORMATS[rnd(#FORMATS)]
    if f == "%d" then return math.tointeger(x) and ("%d"):format(x) or ("%.0f"):format(x) end
    if f == "%.16fE3" then x = x / 1000 end -- a fraction and a positive exponent
    return f:format(x)
  end

  it("gives what cjson gives for random numbers written in several ways", function()
    math.randomseed(seed)
    for _ = 1, 20000 do
      local text = written(random_number())
      local ok, err = pcall(same_as_cjson, text)
      assert(ok, ("seed %d: %s"):format(seed, tostring(err)))
    end
  end)

  it("decodes on LuaJIT (one number type) as cjson does there", function()
    local harness = dofile("spec/nginx/harness.lua")
    local chunk = [[
      local core, cjson = require "kaifang.core", require "cjson"
      cjson.encode_invalid_numbers(true)
      cjson.encode_max_depth(2000)
      local docs = { '{"code":100,"message":"ok","data":13311112222}', "-0", "1e2", "1.5", "9007199254740993",
                     "1e400", '[1,"\\ud83d\\ude00",null,true,{"a":[]}]', "[1,]",
                     -- 1000 deep with 15 values before each: LuaJIT's stack holds at most 8000 slots
                     ("[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,"):rep(999) .. "[]" .. ("]"):rep(999) }
      local out = {}
      for _, d in ipairs(docs) do
        local v, err = core.json_decode(d)
        out[#out + 1] = err and "error" or cjson.encode({ v = v })
        local ok, c = pcall(cjson.decode, d)
        out[#out + 1] = ok and cjson.encode({ v = c }) or "error"
        out[#out + 1] = tostring(type(v) == "number" and 1 / v)
        out[#out + 1] = tostring(type(c) == "number" and 1 / c)
      end
      io.write(table.concat(out, "\n"))]]
    local cpath = shell.q(harness.LUAJIT .. "/?.so;;")
    local p = io.popen("LUA_CPATH=" .. cpath .. " luajit -e " .. shell.q(chunk) .. " 2>&1")
    local out = p:read("a")
    assert.is_true(p:close(), out)
    local lines = {}
    for line in out:gmatch("[^\n]+") do lines[#lines + 1] = line end
    assert.are.equal(36, #lines, out)
    for i = 1, #lines, 2 do assert.are.equal(lines[i + 1], lines[i], out) end
    assert.are.equal("-inf", lines[7]) -- -0 stays -0.0 there, as cjson gives it
  end)

  it("reads '.' as the decimal point under a locale whose point is a comma", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert.is_true(os.execute("mkdir " .. shell.q(dir)))
    local made = os.execute("localedef -i de_DE -f UTF-8 " .. shell.q(dir .. "/de_DE.UTF-8") .. " 2>/dev/null")
    local chunk = [[
      assert(os.setlocale("de_DE.UTF-8", "numeric"), "no de_DE locale")
      assert(tostring(1.5) == "1,5", "the point is not a comma")
      local core = require "kaifang.core"
      local long = "0." .. ("1"):rep(100)
      local v = core.json_decode('[1.5,-2.25e1,1e2,' .. long .. ']')
      os.setlocale("C", "numeric")
      io.write(("%.17g %.17g %s %s %.17g"):format(v[1], v[2], math.type(v[3]), v[3], v[4]))]]
    local p = io.popen("LOCPATH=" .. shell.q(dir) .. " lua5.4 -e " .. shell.q(chunk) .. " 2>&1")
    local out = p:read("a")
    local ok = p:close()
    os.execute("rm -rf " .. shell.q(dir))
    assert.is_true(made, "localedef failed: make deps installs locales")
    assert.is_true(ok, out)
    assert.are.equal("1.5 -22.5 integer 100 " .. ("%.17g"):format(tonumber("0." .. ("1"):rep(100))), out)
  end)
end)
