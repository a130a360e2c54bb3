-- Hostile input: every public function of kaifang.core, every client method and every callback
-- verifier gets each Lua type, numbers that are not numbers, NULs, invalid UTF-8, 10 MB strings,
-- tables nested 2,000 deep and metamethods that raise. Each must either raise clearly (a
-- message from kaifang, or a C function's "bad argument", or the hostile value's own error) or
-- return (nil, err for bad data): never a crash, never a raw Lua error from inside the library.
local core = require "kaifang.core"
local kaifang = require "kaifang"
local redis_helper = require "spec.helpers.redis"

local BIG = ("x"):rep(10 * 1024 * 1024)

local function deep(n)
  local t = {}
  for _ = 1, n do t = { t } end
  return t
end

local function hostile_index() return setmetatable({}, { __index = function() error("HOSTILE __index", 0) end }) end
local function hostile_pairs() return setmetatable({ a = 1 }, { __pairs = function() error("HOSTILE __pairs", 0) end }) end

-- name -> value; built once (the 10 MB string and the deep table are shared).
local VALUES = {
  { "nil", nil }, { "true", true }, { "false", false }, { "number", 42 }, { "string", "text" }, { "table", {} },
  { "function", function() end }, { "userdata", io.stdout }, { "thread", coroutine.create(function() end) },
  { "light userdata", require("cjson").null },
  { "NaN", 0 / 0 }, { "+inf", math.huge }, { "-inf", -math.huge }, { "-0", -0.0 },
  { "2^53+1", (1 << 53) + 1 }, { "2^63", 2.0 ^ 63 }, { "mininteger", math.mininteger },
  { "NUL", "a\0b" }, { "invalid UTF-8", "\xff\xfe\xc3(" }, { "10 MB", BIG },
  { "nested 2000", deep(2000) }, { "__index raises", hostile_index() }, { "__pairs raises", hostile_pairs() },
}

-- nil when the outcome of one call is acceptable, else why not.
local function judge(ok, a)
  if ok then return nil end
  local msg = type(a) == "string" and a or tostring(a)
  if msg:find("HOSTILE", 1, true) then return nil end -- the value's own error, passed through
  if msg:find("lua/kaifang/", 1, true) then return "raised inside the library: " .. msg end
  if msg:find("kaifang", 1, true) then return nil end
  if msg:match("bad argument #%-?%d+ to '[%w_]+'") then return nil end -- luaL's own, from a C function called directly
  return "raw error: " .. msg
end

local failures

-- Calls fn with args, the value at position i replaced by each hostile value.
local function attack(label, fn, args, positions)
  for _, i in ipairs(positions) do
    for _, v in ipairs(VALUES) do
      local a = { table.unpack(args, 1, math.max(#args, i)) }
      a[i] = v[2]
      local why = judge(pcall(fn, table.unpack(a, 1, math.max(#args, i))))
      if why then failures[#failures + 1] = ("%s, argument %d = %s: %s"):format(label, i, v[1], why:sub(1, 300)) end
    end
  end
end

local function report()
  assert(#failures == 0, #failures .. " calls failed:\n" .. table.concat(failures, "\n"))
end

local dir
setup(function()
  dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p '" .. dir .. "'"))
end)
teardown(function() os.execute("rm -rf '" .. dir .. "'") end)
before_each(function() failures = {} end)

describe("kaifang.core", function()
  it("functions", function()
    local cases = {
      { "signer", core.signer, { { name = "t" } } },
      { "digest", core.digest, { "md5", "x", "hex" } },
      { "hmac", core.hmac, { "sha256", "k", "x", "raw" } },
      { "aes_encrypt", core.aes_encrypt, { ("k"):rep(16), "x", "cbc", ("i"):rep(16) } },
      { "aes_decrypt", core.aes_decrypt, { ("k"):rep(16), ("c"):rep(16), "ecb" } },
      { "base64_encode", core.base64_encode, { "x" } },
      { "base64_decode", core.base64_decode, { "eA==" } },
      { "hex_encode", core.hex_encode, { "x", true } },
      { "hex_decode", core.hex_decode, { "78" } },
      { "ct_equal", core.ct_equal, { "a", "b" } },
      { "random_hex", core.random_hex, { 8 } },
      { "url_encode", core.url_encode, { "a b" } },
      { "form_encode", core.form_encode, { { a = "1" } } },
      { "http", function(o) local s = core.http(o); s:close() end, { {} } },
      { "multi", function(o) local m = core.multi(o); m:close() end, { { concurrency = 2 } } },
      { "now", core.now, {} },
      { "monotonic", core.monotonic, {} },
      { "sleep", function(t, ...) return core.sleep(t == 42 and 0.001 or t, ...) end, { 0 } }, -- 42 s is fine, not waited out
      { "isatty", core.isatty, { 0 } },
      { "pin_dir", core.pin_dir, { dir } },
      { "redis", core.redis, { { port = 1 } } },
    }
    for _, c in ipairs(cases) do attack("core." .. c[1], c[2], c[3], { 1, 2, 3, 4 }) end
    -- paths: strings (and numbers, which C takes as strings) go below the scratch folder, never
    -- into the checkout
    local function in_dir(fn)
      return function(p, ...)
        if type(p) == "string" or type(p) == "number" then p = dir .. "/" .. tostring(p) end
        return fn(p, ...)
      end
    end
    attack("core.file_read", in_dir(core.file_read), { "f" }, { 1 })
    attack("core.file_write", in_dir(core.file_write), { "f", "data" }, { 1, 2 })
    attack("core.file_lock", in_dir(function(p, t)
      local l, err = core.file_lock(p, t)
      if l then l:unlock() end
      return l, err
    end), { "f.lock", 0.1 }, { 1, 2 })
    attack("core.rate_file", in_dir(core.rate_file), { "rate", "k", 0.01, 1, -1 }, { 1, 2, 3, 4, 5 })
    attack("core.sqlite", in_dir(function(p, o)
      local db, err = core.sqlite(p, o)
      if db then db:close() end
      return db, err
    end), { "db.sqlite", { busy_timeout = 1 } }, { 1, 2 })
    for _, name in ipairs{ "hold_signals", "take_signal", "release_signals" } do
      attack("core." .. name, core[name], {}, { 1 })
    end
    core.release_signals()
    report()
  end)

  it("methods of its objects", function()
    local signer = core.signer{ name = "t", exclude = { "sign" } }
    attack("signer:sign", function(...) return signer:sign(...) end, { { a = "1" }, "secret" }, { 1, 2 })
    attack("signer()", function(...) return signer(...) end, { { a = "1" }, "secret" }, { 1, 2 })
    local s = core.http{ timeout = 0.5, connect_timeout = 0.5 }
    attack("http:request", function(r) return s:request(r) end, { { url = "http://127.0.0.1:1/" } }, { 1 })
    for _, field in ipairs{ "method", "url", "headers", "body", "timeout" } do
      attack("http:request{" .. field .. "}", function(v)
        return s:request{ url = field == "url" and v or "http://127.0.0.1:1/", method = field == "method" and v or nil,
                          headers = field == "headers" and v or nil, body = field == "body" and v or nil,
                          timeout = field == "timeout" and v or 0.5 }
      end, { "GET" }, { 1 })
      attack("http:request{ headers = { X = ... } }", function(v) return s:request{ url = "http://127.0.0.1:1/", headers = { X = v } } end, { "v" }, { 1 })
    end
    s:close()
    attack("closed http:request", function(r) return s:request(r) end, { { url = "http://127.0.0.1:1/" } }, { 1 })
    local m = core.multi{ concurrency = 2, timeout = 0.5 }
    attack("multi:submit", function(r, session)
      local slot = m:submit(r, session)
      while slot and m:counts() > 0 do m:wait(0.1); while m:collect() do end end
      return slot
    end, { { url = "http://127.0.0.1:1/" } }, { 1, 2 })
    attack("multi:wait", function(t) return m:wait(t) end, { 0 }, { 1 })
    m:close()
    attack("closed multi:submit", function(r) return m:submit(r) end, { { url = "http://127.0.0.1:1/" } }, { 1 })
    local conn = core.redis{ port = redis_helper.free_port(), connect_timeout = 0.2, timeout = 0.2 }
    attack("redis:command", function(w, i) return conn:command(w, i) end, { { "PING" }, true }, { 1, 2 })
    attack("redis:command{ word }", function(w) return conn:command{ "GET", w } end, { "k" }, { 1 })
    conn:close()
    attack("closed redis:command", function(w) return conn:command(w) end, { { "PING" } }, { 1 })
    local db = assert(core.sqlite(dir .. "/h.sqlite"))
    assert(db:exec("CREATE TABLE t (a, b)"))
    attack("sqlite:exec", function(sql) return db:exec(sql) end, { "SELECT 1" }, { 1 })
    attack("sqlite:prepare", function(sql) return db:prepare(sql) end, { "SELECT 1" }, { 1 })
    local insert = assert(db:prepare("INSERT INTO t VALUES (?, ?)"))
    local select = assert(db:prepare("SELECT a, b FROM t WHERE a = ?"))
    attack("statement:exec", function(...) return insert:exec(...) end, { 1, "x" }, { 1, 2 })
    attack("statement:first", function(...) return select:first(...) end, { 1 }, { 1 })
    attack("statement:rows", function(...) for _ in select:rows(...) do end end, { 1 }, { 1 })
    db:close()
    attack("closed sqlite:exec", function(sql) return db:exec(sql) end, { "SELECT 1" }, { 1 })
    attack("statement of a closed sqlite", function(...) return insert:exec(...) end, { 1, "x" }, { 1 })
    report()
  end)
end)

-- Clients that reach nothing: each call ends in a transport error, or raises on its arguments.
local function clients()
  local u = "http://127.0.0.1:1"
  return {
    lingdian = kaifang.lingdian.new{ developer_code = "c", developer_key = "k", base_url = u, timeout = 0.5 },
    yopoint = kaifang.yopoint.new{ appid = "a", app_secret = "s", sign_key = "k", base_url = u, timeout = 0.5 },
    dakashi = kaifang.dakashi.new{ app_id = "a", app_secret = "s", base_url = u, timeout = 0.5 },
    zafu = kaifang.zafu.new{ client_id = "c", client_secret = "s", app_id = "a", base_url = u, timeout = 0.5 },
  }
end

describe("client methods", function()
  for name, c in pairs(clients()) do
    it(name, function()
      local Class = getmetatable(c)
      local methods = {}
      for m in pairs(Class.endpoints) do methods[#methods + 1] = m end
      table.sort(methods)
      for _, m in ipairs(methods) do
        local fn = function(...) return c[m](c, ...) end
        attack(name .. ":" .. m, fn, { {} }, { 1, 2 })
        local params = Class.endpoints[m].params or {}
        for p in pairs(params) do
          -- each parameter hostile, the others plausible
          attack(("%s:%s{ %s }"):format(name, m, p), function(v)
            local args = {}
            for q, kind in pairs(params) do
              if q ~= p and kind:sub(-1) == "!" then args[q] = kind:match("^integer") and 1 or "1" end
            end
            args[p] = v
            return c[m](c, args)
          end, { "1" }, { 1 })
        end
      end
      if c.call then
        local path = name == "yopoint" and "cabinet.list" or "/v1/member/info"
        attack(name .. ":call", function(...) return c:call(...) end, { path, {}, nil }, { 1, 2, 3 })
      end
      report()
    end)
  end
end)

describe("callback verifiers and signing helpers", function()
  it("never raise on what a sender put in them", function()
    local cs = clients()
    local yp, ld = cs.yopoint, cs.lingdian
    local ngx = require "kaifang.ngx"
    local data = {
      { "yopoint:verify_notify", function(v) return yp:verify_notify(v) end },
      { "yopoint:verify_pay_redirect", function(v) return yp:verify_pay_redirect(v) end },
      { "dakashi.parse_callback", kaifang.dakashi.parse_callback },
      { "ngx.verify_lingdian", function(v) return ngx.verify_lingdian(ld, v) end },
    }
    for _, d in ipairs(data) do
      for _, v in ipairs(VALUES) do
        local ok, res, err = pcall(d[2], v[2])
        if not ok then
          failures[#failures + 1] = ("%s(%s) raised: %s"):format(d[1], v[1], tostring(res):sub(1, 300))
        elseif res ~= nil and v[2] ~= nil and type(v[2]) ~= "table" then
          failures[#failures + 1] = ("%s(%s) accepted it"):format(d[1], v[1])
        elseif res == nil and type(err) ~= "table" then
          failures[#failures + 1] = ("%s(%s) gave nil without an error"):format(d[1], v[1])
        end
        -- a JSON body, a form body and a table, each carrying the value in a field
        for _, wrap in ipairs{
          function(x) return { sign = "x", timestamp = "1", a = x } end,
          function(x) return '{"sign":"x","a":' .. (type(x) == "number" and tostring(x) or require("cjson").encode(tostring(x))) .. "}" end,
          function(x) return "sign=x&a=" .. tostring(x) end,
        } do
          local ok2, res2 = pcall(d[2], wrap(v[2]))
          if not ok2 then failures[#failures + 1] = ("%s(field = %s) raised: %s"):format(d[1], v[1], tostring(res2):sub(1, 300)) end
        end
      end
    end
    for _, scheme in ipairs{ "lingdian", "yopoint", "dakashi" } do
      attack("kaifang.sign." .. scheme, kaifang.sign[scheme], { { a = "1" }, "secret" }, { 1, 2 })
    end
    attack("kaifang.sign.signer", kaifang.sign.signer, { "lingdian" }, { 1 })
    attack("kaifang.sign.mask", kaifang.sign.mask, { "a=1secret", "secret" }, { 1, 2 })
    report()
  end)
end)
