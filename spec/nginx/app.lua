-- The handlers behind spec/nginx/nginx.conf. spec_env (written by spec/openresty_spec.lua into the
-- nginx prefix) says where the sandbox is, what it accepts, and what this nginx should do at start.
local cjson = require "cjson.safe"
local kaifang = require "kaifang"
local kngx = require "kaifang.ngx"
local env = require "spec_env"

local M = {}

local function reply(status, value)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  ngx.print(cjson.encode(value))
  return ngx.exit(ngx.OK)
end

-- Errors as plain tables (the kaifang error's fields, without its metatable).
local function plain(err)
  if type(err) ~= "table" then return { message = tostring(err) } end
  return { kind = err.kind, code = err.code, message = err.message, retryable = err.retryable,
           maybe_sent = err.maybe_sent, http_status = err.http_status, text = tostring(err) }
end

---------------------------------------------------------------------------- clients (one set per worker)

local clients = {}

-- extra: client options over the defaults here ({ thread_pool =, concurrency =, timeout =, token_key = }).
function M.client(platform, transport, extra)
  local id = platform .. ":" .. (transport or "")
  for _, k in ipairs({ "thread_pool", "concurrency", "timeout", "token_key" }) do
    if extra and extra[k] then id = id .. ":" .. k .. "=" .. extra[k] end
  end
  local c = clients[id]
  if c then return c end
  local opts = { base_url = env.sandbox, timeout = 5, transport = transport }
  for k, v in pairs(env.credentials[platform] or {}) do opts[k] = v end
  for k, v in pairs(extra or {}) do opts[k] = v end
  c = kaifang[platform].new(opts) -- ZAFU: the default token store, which inside nginx is the shared dict
  clients[id] = c
  return c
end

function M.init()
  kngx.init() -- kaifang loaded once in the master (the workers inherit it), its paths held open
  if env.zafu_in_init then kaifang.zafu.new(env.credentials.zafu) end -- what a misconfiguration refuses at start
end

function M.init_worker()
  if env.check then
    -- check's options as the spec gives them; "clients" names platforms, made here with their transport
    local o = {}
    for k, v in pairs(env.check) do o[k] = v end
    if o.clients then
      local list = {}
      for i, spec in ipairs(o.clients) do list[i] = M.client(spec[1], spec[2]) end
      o.clients = list
    end
    local ok, problems = kngx.check(o)
    ngx.shared.spec:set("check:" .. ngx.worker.pid(), cjson.encode({ ok = ok, problems = problems or {} }))
  end
  if env.zafu_at_start then
    -- every worker needs the ZAFU token at once, as after a restart: one fetch must serve them all
    ngx.timer.at(0, function()
      local z = M.client("zafu")
      local res, err = z:menu_list()
      ngx.shared.spec:set("zafu:" .. ngx.worker.pid(), cjson.encode({ ok = res ~= nil, err = err and plain(err) }))
    end)
  end
end

---------------------------------------------------------------------------- calls

-- POST /call/<platform>/<method>[?transport=name] with a JSON body: the method's argument (a table), or absent.
function M.call()
  local platform, method = ngx.var.uri:match("^/call/([%w_]+)/([%w_]+)$")
  if not platform then return reply(404, { error = "no such call" }) end
  ngx.req.read_body()
  local body = ngx.req.get_body_data()
  local args = body and body ~= "" and cjson.decode(body) or nil
  local c = M.client(platform, ngx.var.arg_transport)
  local started = ngx.now()
  local ok, r1, r2 = pcall(c[method], c, args)
  ngx.update_time()
  local out = { pid = ngx.worker.pid(), elapsed = ngx.now() - started, transport = tostring(c.transport) }
  if not ok then
    out.raised = tostring(r1)
  elseif r1 == nil then
    out.err = plain(r2)
  else
    out.res = { r1, r2 }
  end
  return reply(200, out)
end

-- n calls of platform at once from light threads -> { n, ok, calls = { { ok, err, elapsed } }, elapsed,
-- pid, fetched (ZAFU: tokens this client fetched) }; extra as for M.client; timeouts: the per-call
-- timeout option of each call (a list; nil for the client's).
local BURST = { lingdian = { "get_user_tel_by_code", { user_code = "U2TD844B2" } }, zafu = { "menu_list", {} } }

local function burst(platform, n, extra, timeouts)
  local c = M.client(platform, nil, extra)
  local method, args = BURST[platform][1], BURST[platform][2]
  ngx.update_time()
  local started = ngx.now()
  local threads = {}
  for i = 1, n do
    threads[i] = ngx.thread.spawn(function()
      local t = timeouts and timeouts[i]
      local res, err = c[method](c, args, t and { timeout = t } or nil)
      ngx.update_time()
      return res ~= nil, err and plain(err), ngx.now() - started
    end)
  end
  local out = { n = n, ok = 0, calls = {}, pid = ngx.worker.pid() }
  for i = 1, n do
    local alive, ok, err, t = ngx.thread.wait(threads[i])
    out.calls[i] = alive and { ok = ok, err = err, elapsed = t } or { ok = false, err = { raised = tostring(ok) } }
    if alive and ok then out.ok = out.ok + 1 end
  end
  ngx.update_time()
  out.elapsed, out.fetched = ngx.now() - started, c.stats and c.stats.fetched
  return out
end

-- GET /hold?n=20: n Lingdian calls at once from light threads of this one request.
function M.hold()
  return reply(200, burst("lingdian", tonumber(ngx.var.arg_n) or 20))
end

-- GET /burst?platform=zafu&n=8[&pool=&concurrency=&timeout=&token_key=][&timeouts=2,2,1]: as /hold,
-- for a client made with those options (timeouts: each call's own). With &bg=KEY it runs in an ngx.timer instead and this answers at once; GET
-- /burst/result?key=KEY has its outcome once it is done (404 before).
function M.burst()
  local a = ngx.req.get_uri_args()
  local platform, n = a.platform or "lingdian", tonumber(a.n) or 8
  local extra = { thread_pool = a.pool, concurrency = tonumber(a.concurrency), timeout = tonumber(a.timeout), token_key = a.token_key }
  local timeouts = {}
  for t in (a.timeouts or ""):gmatch("[^,]+") do timeouts[#timeouts + 1] = tonumber(t) end
  if not a.bg then return reply(200, burst(platform, n, extra, timeouts)) end
  local ok, err = ngx.timer.at(0, function()
    ngx.shared.spec:set("burst:" .. a.bg, cjson.encode(burst(platform, n, extra, timeouts)))
  end)
  return reply(ok and 200 or 500, { started = ok and true or false, err = err })
end

-- GET /abandon?n=2[&concurrency=&timeout=]: n Lingdian calls started in light threads, and the
-- request ended at once (ngx.exit), which leaves them in flight and their slots never given back.
function M.abandon()
  local a = ngx.req.get_uri_args()
  local c = M.client("lingdian", nil, { concurrency = tonumber(a.concurrency), timeout = tonumber(a.timeout) })
  for _ = 1, tonumber(a.n) or 2 do
    ngx.thread.spawn(function() return c:get_user_tel_by_code{ user_code = "U2TD844B2" } end)
  end
  ngx.say("abandoned")
  return ngx.exit(ngx.HTTP_OK)
end

function M.burst_result()
  local v = ngx.shared.spec:get("burst:" .. tostring(ngx.var.arg_key))
  if not v then return reply(404, { done = false }) end
  return reply(200, cjson.decode(v))
end

-- GET /threadstats?n=8: what the thread VMs report, n times in a row.
function M.threadstats()
  local out = {}
  for i = 1, tonumber(ngx.var.arg_n) or 8 do
    local ok, stats = ngx.run_worker_thread("kaifang", "kaifang.transport.ngx_thread", "stats")
    out[i] = ok and stats or { error = tostring(stats) }
  end
  return reply(200, out)
end

-- GET /timer: a Lingdian call from an ngx.timer (thread transport), its outcome read back.
function M.timer()
  local key = "timer:" .. ngx.now() .. ":" .. math.random()
  ngx.timer.at(0, function()
    local res, err = M.client("lingdian"):get_user_tel_by_code{ user_code = "U2TD844B2" }
    local tel = res and res.data
    ngx.shared.spec:set(key, cjson.encode({ tel = tel, err = err and tostring(err) }))
  end)
  for _ = 1, 500 do
    local v = ngx.shared.spec:get(key)
    if v then return reply(200, cjson.decode(v)) end
    ngx.sleep(0.01)
  end
  return reply(504, { error = "the timer did not finish" })
end

-- GET /blocking: the libcurl transport chosen explicitly inside a request phase must refuse.
function M.blocking()
  local opts = { base_url = env.sandbox, transport = "curl" }
  for k, v in pairs(env.credentials.lingdian) do opts[k] = v end
  local ld = kaifang.lingdian.new(opts)
  local ok, err = pcall(ld.get_user_tel_by_code, ld, { user_code = "U2TD844B2" })
  return reply(200, { raised = not ok, message = tostring(err) })
end

-- set_by_lua: a phase that cannot yield; the default transport must refuse with a clear error.
function M.set_phase()
  local ok, err = pcall(function() return M.client("lingdian"):get_user_tel_by_code{ user_code = "U2TD844B2" } end)
  return (ok and "no error" or tostring(err)):gsub("\n", " ")
end

---------------------------------------------------------------------------- ZAFU across workers

function M.zafu_report()
  local out = {}
  for _, k in ipairs(ngx.shared.spec:get_keys(0)) do
    local pid = k:match("^zafu:(%d+)$")
    if pid then out[pid] = cjson.decode(ngx.shared.spec:get(k)) end
  end
  return reply(200, out)
end

function M.zafu_call()
  local z = M.client("zafu")
  local res, err = z:menu_list()
  return reply(200, { pid = ngx.worker.pid(), ok = res ~= nil, err = err and plain(err), store = tostring(z.token_store) })
end

---------------------------------------------------------------------------- the shared-dict store

function M.store()
  local st = kaifang.store.ngx_shared("kaifang")
  local k = "spec:" .. ngx.worker.pid() .. ":" .. ngx.now() .. ":" .. math.random(1e9)
  local r = {}
  r.tostring = tostring(st)
  r.get_absent = st:get(k) == nil
  r.set = st:set(k, "v1", 0.2)
  r.get = st:get(k)
  r.delete_other = st:delete_if_equal(k, "v2")
  r.still = st:get(k)
  r.delete_same = st:delete_if_equal(k, "v1")
  r.gone = st:get(k) == nil
  st:set(k, "v3", 0.2)
  ngx.sleep(0.3)
  r.expired = st:get(k) == nil
  r.lock_a = st:lock(k, "a", 0.2)
  r.lock_b = st:lock(k, "b", 0.2)
  r.lock_a_again = st:lock(k, "a", 0.2)
  r.unlock_b = st:unlock(k, "b")
  r.unlock_a = st:unlock(k, "a")
  r.lock_b_after = st:lock(k, "b", 0.2)
  ngx.sleep(0.3)
  r.lock_a_after_expiry = st:lock(k, "a", 0.2)
  st:unlock(k, "a")
  return reply(200, r)
end

-- GET /take?rate=10&n=5: the waits the shared rate limiter hands out for n takes in a row.
function M.take()
  local st = kaifang.store.ngx_shared("kaifang")
  local key = ngx.var.arg_key or ("spec:take:" .. ngx.worker.pid() .. ":" .. ngx.now() .. ":" .. math.random(1e9))
  local waits = {}
  for i = 1, tonumber(ngx.var.arg_n) or 5 do
    waits[i] = st:take(key, tonumber(ngx.var.arg_rate) or 10, { burst = tonumber(ngx.var.arg_burst) })
  end
  local refused, over = st:take(key, tonumber(ngx.var.arg_rate) or 10, { max_wait = 0 })
  return reply(200, { waits = waits, refused = refused == nil, over = over })
end

-- GET /zafu/new: whether a ZAFU client with the default store can be made here, and why not.
function M.zafu_new()
  local ok, z = pcall(kaifang.zafu.new, env.credentials.zafu)
  return reply(200, { ok = ok, store = ok and tostring(z.token_store) or nil, message = not ok and tostring(z) or nil })
end

-- GET /mutex: the shared store's mutex, taken here, then released by a token that does not hold it.
function M.mutex()
  local st = kaifang.store.ngx_shared("kaifang")
  local key = "spec:mutex:" .. ngx.worker.pid() .. ":" .. math.random(1e9)
  local token = st:mutex(key)
  local r = { took = token ~= nil, ttl = ngx.shared.kaifang:ttl("\1mu:" .. key) }
  r.release_other = st:release(key, "0123456789abcdef")
  r.still_held = ngx.shared.kaifang:get("\1mu:" .. key) == token
  r.release_holder = st:release(key, token)
  r.free = ngx.shared.kaifang:get("\1mu:" .. key) == nil
  return reply(200, r)
end

-- GET /busy: one Dakashi callback whose handler runs 1.5 s, with a busy mark of 0.5 s renewed every
-- 0.2 s; the same callback again at 1 s (still being handled), and after the first is done.
function M.busy()
  kngx.BUSY_TTL, kngx.BUSY_RENEW = 0.5, 0.2
  local opts = { allow = "any", seen = kngx.seen_on(ngx.shared.kaifang_callbacks, "kaifang_callbacks"), log = function() end }
  local body = '{"action_type":2,"serial_no":"busy-' .. ngx.now() .. '-' .. math.random(1e9) .. '","status":"on"}'
  local calls = 0
  local function deliver(work)
    local req = { method = "POST", headers = {}, query = "", remote_addr = "198.51.100.7", path = "/cb/busy", body = body }
    local res = kngx.process("dakashi_callback", nil, req, function() calls = calls + 1 ngx.sleep(work) end, opts)
    return cjson.decode(res.body).errmsg
  end
  local first = ngx.thread.spawn(deliver, 1.5)
  ngx.sleep(1)
  local during = deliver(0)
  local _, first_answer = ngx.thread.wait(first)
  local after = deliver(0)
  kngx.BUSY_TTL, kngx.BUSY_RENEW = 30, 10
  return reply(200, { first = first_answer, during = during, after = after, calls = calls })
end

-- GET /flood?n=200000: n forged Dakashi callbacks, each body different (so each one is a new mark),
-- through kaifang.ngx.process as the handler runs them, with the callbacks' dict; the ZAFU token
-- and a held lock, in the state dict, before and after.
function M.flood()
  local n = tonumber(ngx.var.arg_n) or 200000
  local z = M.client("zafu")
  local st = z.token_store
  assert(z:access_token())
  local token = st:get(z.token_key)
  local lock = "spec:flood:lock"
  assert(st:lock(lock, "holder", 600))
  local counts = { taken = 0, refused = 0, logged_err = 0 }
  local opts = { allow = "any", seen = kngx.seen_on(ngx.shared.kaifang_callbacks, "kaifang_callbacks"),
                 log = function(level) if level == "err" then counts.logged_err = counts.logged_err + 1 end end }
  ngx.update_time()
  local started = ngx.now()
  for i = 1, n do
    local req = { method = "POST", headers = {}, query = "", remote_addr = "198.51.100.7", path = "/cb/dakashi",
                  body = '{"action_type":2,"serial_no":"' .. i .. '","status":"on"}' }
    local res = kngx.process("dakashi_callback", nil, req, function() end, opts)
    if res.body == kaifang.dakashi.callback_reply then counts.taken = counts.taken + 1 else counts.refused = counts.refused + 1 end
  end
  ngx.update_time()
  local res, err = z:menu_list()
  return reply(200, {
    n = n, counts = counts, elapsed = ngx.now() - started, store = tostring(st),
    token_kept = token ~= nil and st:get(z.token_key) == token,
    lock_held = st:lock(lock, "someone else", 1) == false,
    unlocked = st:unlock(lock, "holder"),
    zafu_after = res ~= nil, zafu_err = err and tostring(err),
  })
end

---------------------------------------------------------------------------- callbacks

local function record(kind, event)
  local d = ngx.shared.spec
  d:incr("cb:n:" .. kind, 1, 0)
  d:set("cb:last:" .. kind, cjson.encode(event))
end

local function maybe_fail()
  if ngx.var.arg_fail == "raise" then error("the handler broke") end
  if ngx.var.arg_fail == "nil_err" then return nil, "the database is down" end
  return true
end

function M.yopoint_notify()
  return kngx.yopoint_notify(M.client("yopoint"), function(notice, ctx)
    local ok, err = maybe_fail()
    if not ok then return ok, err end
    record("yopoint_notify", { notice = notice, ctx = ctx })
  end)
end

function M.yopoint_pay()
  return kngx.yopoint_pay(M.client("yopoint"), function(r)
    record("yopoint_pay", r)
    return "https://pay.example/checkout?receipt_no=" .. r.receipt_no
  end)
end

function M.dakashi()
  return kngx.dakashi_callback(function(cb, ctx)
    ngx.sleep(0.001) -- a handler may yield (a kaifang call, a database): it runs inside pcalls
    local ok, err = maybe_fail()
    if not ok then return ok, err end
    record("dakashi", { cb = cb, ctx = ctx })
  end, { allow = "any" })
end

function M.dakashi_allow()
  return kngx.dakashi_callback(function(cb) record("dakashi_allow", cb) end, { allow = { "192.0.2.1", "2001:db8::/32" } })
end

function M.dakashi_cidr()
  return kngx.dakashi_callback(function(cb) record("dakashi_cidr", cb) end, { allow = { "192.0.2.0/24", "127.0.0.0/29" } })
end

function M.lingdian()
  return kngx.lingdian_callback(M.client("lingdian"), function(fields, ctx)
    local ok, err = maybe_fail()
    if not ok then return ok, err end
    record("lingdian", { fields = fields, ctx = ctx })
  end)
end

function M.callback_log()
  local d, out = ngx.shared.spec, {}
  for _, k in ipairs(d:get_keys(0)) do
    local kind = k:match("^cb:n:(.+)$")
    if kind then out[kind] = { n = d:get(k), last = cjson.decode(d:get("cb:last:" .. kind) or "null") } end
  end
  return reply(200, out)
end

return M
