-- ZAFU: every endpoint and every documented error against the sandbox; the token's life (cache,
-- refresh ahead, single-flight, the one retry after a refusal) with fakes where timing matters;
-- misuse raising at the caller's line; secrets kept out of every string.
local cjson = require "cjson"
local core = require "kaifang.core"
local kaifang = require "kaifang"
local sandbox = require "kaifang.sandbox"
local util = require "kaifang.sandbox.util"
local store = require "kaifang.store"
local zafu = require "kaifang.zafu"

local SPEC = "zafu_spec.lua"
local CLIENT_ID, SECRET, APP_ID = "zafu-demo", "9d1f6b3c27e84a05b6c0e1f2a3d4c5b6", "01"
local ID = "11010519491231002X" -- a valid GB 11643 number (the standard's own example)

local here, raises_at_line = require("spec.helpers.raises")(SPEC)

local function query_of(url) return util.parse_form(url:match("%?(.*)$") or "") end

-- The real transport, recording what it is given.
local function recording()
  local inner = require("kaifang.transport.curl").new({ timeout = 5 })
  local t = { sent = {} }
  function t:request(req)
    self.sent[#self.sent + 1] = req
    return inner:request(req)
  end
  function t:last() return self.sent[#self.sent] end
  return t
end

-- A fake platform: handler(req) -> status, body (a table is JSON-encoded).
local function fake(handler)
  local t = { sent = {}, tokens = 0 }
  function t:request(req)
    self.sent[#self.sent + 1] = req
    local status, body = handler(req, self)
    return { status = status, headers = {}, body = type(body) == "table" and cjson.encode(body) or body }
  end
  return t
end

local function token_reply(t, expires_in)
  t.tokens = t.tokens + 1
  return 200, { access_token = "tok" .. t.tokens, expires_in = expires_in or 1209600, scope = "base_api", token_type = "Bearer" }
end

local OK_RESULT = { type = "success", code = "成功", content = "成功", anchor = "undefined", errorFields = {}, data = {} }

local function is_token_request(req) return req.url:find("/oauth/token", 1, true) ~= nil end

---------------------------------------------------------------------------- against the sandbox

describe("kaifang.zafu against the sandbox", function()
  local sb, base

  setup(function()
    sb = sandbox.start({ port = 0 })
    base = sb.url .. "/zafu"
  end)
  teardown(function() sb:stop() end)
  before_each(function() assert(sb:reset("zafu")) end)

  local function new(opts)
    local o = { client_id = CLIENT_ID, client_secret = SECRET, app_id = APP_ID, base_url = base, token_store = store.memory() }
    for k, v in pairs(opts or {}) do o[k] = v end
    return zafu.new(o)
  end

  local function tokens() return (assert(sb:records("zafu", "tokens"))) end

  local function raw_post(path, body, content_type)
    local status, text = sb:request("POST", "/zafu" .. path, body, { ["Content-Type"] = content_type or "application/json" })
    assert(status, text)
    return status, cjson.decode(text)
  end

  it("tells its demo account", function()
    assert.same({ client_id = CLIENT_ID, client_secret = SECRET, app_id = APP_ID }, sb.credentials.zafu)
  end)

  describe("the access token", function()
    it("is fetched once with a JSON body and then used from the store", function()
      local t = recording()
      local z = new({ transport = t })
      local tok = assert(z:access_token())
      assert.matches("^%w+$", tok)
      assert.equal(tok, z:access_token())
      assert(z:must_task_list())
      assert(z:menu_list())
      assert.equal(1, tokens().issued)
      local req = t.sent[1]
      assert.equal(base .. "/oauth/token", req.url)
      assert.equal("application/json", req.headers["Content-Type"])
      assert.same({ grant_type = "client_credentials", client_id = CLIENT_ID, client_secret = SECRET }, cjson.decode(req.body))
      assert.equal(tok, query_of(t:last().url).access_token)
    end)

    it("is shared by the clients that share a store", function()
      local shared = store.memory()
      local a, b = new({ token_store = shared }), new({ token_store = shared })
      assert(a:must_task_list())
      assert(b:must_task_list())
      assert.equal(a:access_token(), b:access_token())
      assert.equal(1, tokens().issued)
    end)

    it("survives a restart in a file store (no new token for the new process)", function()
      local dir = os.tmpname()
      os.remove(dir)
      os.execute("mkdir -p " .. dir)
      local first = new({ token_store = store.file(dir .. "/zafu.token") })
      assert(first:must_task_list())
      local second = new({ token_store = store.file(dir .. "/zafu.token") })
      assert(second:must_task_list())
      assert.equal(1, tokens().issued)
      os.execute("rm -rf " .. dir)
    end)

    it("bad client credentials: 401, kind auth, the secret not repeated", function()
      local z = new({ client_secret = "not-the-secret" })
      local tok, err = z:access_token()
      assert.is_nil(tok)
      assert.equal("auth", err.kind)
      assert.equal(401, err.http_status)
      assert.equal("invalid_client", err.code)
      assert.equal("Bad client credentials", err.message)
      assert.is_false(err.retryable)
      local res, cerr = z:menu_list()
      assert.is_nil(res)
      assert.equal("auth", cerr.kind)
      assert.is_nil(tostring(cerr):find("not-the-secret", 1, true))
      assert.equal(0, tokens().issued)
    end)

    it("a scope other than base_api: 403 access_denied", function()
      local _, err = new({ scope = "manaer" }):access_token()
      assert.equal("auth", err.kind)
      assert.equal(403, err.http_status)
      assert.equal("access_denied", err.code)
      assert.equal("Unauthorized scope: manaer", err.message)
      assert(new({ scope = "base_api" }):access_token())
    end)

    it("a bad or missing grant type: 400 (the document's replies, sent by hand)", function()
      local status, doc = raw_post("/oauth/token", cjson.encode({ grant_type = "client_edentials", client_id = CLIENT_ID, client_secret = SECRET }))
      assert.equal(400, status)
      assert.same({ error = "unsupported_grant_type", error_description = "Unsupported grant type: client_edentials" }, doc)
      status, doc = raw_post("/oauth/token", cjson.encode({ client_id = CLIENT_ID, client_secret = SECRET }))
      assert.equal(400, status)
      assert.equal("invalid_request", doc.error)
      -- a form body instead of the documented JSON reads as nothing at all
      status = raw_post("/oauth/token", "grant_type=client_credentials&client_id=" .. CLIENT_ID .. "&client_secret=" .. SECRET,
                        "application/x-www-form-urlencoded")
      assert.equal(400, status)
      -- the success reply as documented
      status, doc = raw_post("/oauth/token", cjson.encode({ grant_type = "client_credentials", client_id = CLIENT_ID, client_secret = SECRET }))
      assert.equal(200, status)
      assert.equal(1209600, doc.expires_in)
      assert.equal("base_api", doc.scope)
      assert.equal("Bearer", doc.token_type)
    end)

    it("an expired token: 403 invalid_grant; the call drops it, gets a new one and succeeds", function()
      local z = new()
      assert(z:must_task_list())
      assert(sb:admin("POST", "/_sandbox/zafu/expire"))
      local status, doc = raw_post("/api/mustTaskList?access_token=" .. z:access_token(), "")
      assert.equal(403, status)
      assert.same({ error = "invalid_grant", error_description = "Access token is expired" }, doc)
      local res = assert(z:must_task_list())
      assert.equal("success", res.type)
      local t = tokens()
      assert.equal(2, t.issued)
      assert.equal(2, t.refused.expired)
      assert.equal(1, z.stats.refused)
    end)

    it("a superseded token (another fetched one): refused once, then the current one is used", function()
      local a, b = new(), new() -- two stores: the failure the shared store prevents
      assert(a:must_task_list())
      assert(b:must_task_list()) -- b's token knocks a's out
      assert(a:msg_send{ content = "hi", xgh = "20121032", messageType = 5, messageTo = "https://app/x" })
      local t = tokens()
      assert.equal(3, t.issued)
      assert.equal(1, t.refused.invalid)
      -- the acting call was refused before anything was done, and then done once
      assert.equal(1, #(assert(sb:records("zafu", "messages"))))
    end)

    it("a call without any token: 401 (the document: 401 or 403)", function()
      local status, doc = raw_post("/api/menulist", "")
      assert.equal(401, status)
      assert.equal("unauthorized", doc.error)
      assert.equal(1, tokens().refused.missing)
    end)
  end)

  describe("endpoints", function()
    it("menu_list: the documented menu tree", function()
      local res = assert(new():menu_list())
      assert.equal("success", res.type)
      assert.equal("undefined", res.anchor)
      local campus = res.data[1]
      assert.equal("校园", campus.name)
      assert.equal(1703, campus.childs[1].id)
      assert.equal("新增", campus.childs[1].menuDaps[1].name)
      assert.equal(cjson.null, campus.memo)
    end)

    it("menu_submit: the tree as JSON in the query (empty lists as []), then listed", function()
      local t = recording()
      local z = new({ transport = t })
      local res = assert(z:menu_submit({
        { name = "服务", url = "#", sort = 1, childs = { { name = "报修", url = "https://x/报修?a=1&b=2", menuDaps = {} } }, menuDaps = {} },
      }))
      assert.equal("success", res.type)
      local req = t:last()
      assert.equal("", req.body)
      local q = query_of(req.url)
      assert.truthy(q.access_token)
      local sent = q.json
      assert.truthy(sent:find('"menuDaps":[]', 1, true))
      assert.truthy(req.url:find("json=%5B%7B", 1, true)) -- percent-encoded
      local listed = assert(z:menu_list()).data
      assert.equal(1, #listed)
      assert.equal("服务", listed[1].name)
      assert.equal("https://x/报修?a=1&b=2", listed[1].childs[1].url)
      assert.truthy(listed[1].id) -- the platform gave it one
      -- JSON text is sent as it is
      assert(z:menu_submit('[{"name":"另一个","childs":[]}]'))
      assert.equal("另一个", assert(z:menu_list()).data[1].name)
    end)

    it("menu_submit: a malformed tree is the platform's error, with the field named", function()
      local res, err = new():menu_submit("[{not json")
      assert.is_nil(res)
      assert.equal("platform", err.kind)
      assert.equal("失败", err.code)
      assert.equal("菜单json格式错误", err.message)
      assert.same({ "json" }, err.fields)
    end)

    it("menu_delete: by id in the query; an unknown id is an error", function()
      local t = recording()
      local z = new({ transport = t })
      assert(z:menu_delete(1704))
      assert.equal("1704", query_of(t:last().url).id)
      assert(z:menu_delete("1703"))
      local childs = assert(z:menu_list()).data[1].childs
      assert.equal(0, #childs)
      local res, err = z:menu_delete(1704)
      assert.is_nil(res)
      assert.equal("菜单不存在", err.message)
      assert.same({ "id" }, err.fields)
    end)

    it("msg_create: parameters in the query, appId from the client, the {status, message} reply", function()
      local t = recording()
      local z = new({ transport = t })
      local res = assert(z:msg_create{ content = "明天停电 & 停水 = 放假", scope = 6, userno = "20121032", channel = 1, mobile = "13800001111" })
      assert.same({ status = 1, message = "推送成功" }, res)
      local req = t:last()
      local q = query_of(req.url)
      assert.equal("明天停电 & 停水 = 放假", q.content)
      assert.equal(APP_ID, q.appId)
      assert.equal("", req.body)
      assert.truthy(req.url:find("content=%E6%98%8E%E5%A4%A9%E5%81%9C%E7%94%B5%20%26%20", 1, true))
      local m = assert(sb:records("zafu", "messages"))[1]
      assert.equal("msgcreate", m.via)
      assert.equal("明天停电 & 停水 = 放假", m.content)
    end)

    it("msg_create: the platform's refusals ({status: 0}) as errors", function()
      local res, err = new():msg_create{ content = "x", scope = 6, userno = "99999999", channel = 1 }
      assert.is_nil(res)
      assert.equal("platform", err.kind)
      assert.equal(0, err.code)
      assert.equal("学工号不存在", err.message)
      res, err = new():msg_create{ content = "x", scope = 1, userno = "20121032", channel = 1, appId = "02" }
      assert.equal("appId错误", err.message)
      -- the document's own example, sent by hand (the client refuses to send it)
      local z = new()
      local status, doc = raw_post("/api/msgcreate?scope=1&userno=20121032&channel=1&appId=01&access_token=" .. z:access_token(), "")
      assert.equal(200, status)
      assert.same({ message = "推送内容、推送范围或推送渠道为空", status = 0 }, doc)
    end)

    it("msg_send: each message type, readable back under /_sandbox/zafu/messages", function()
      local z = new()
      assert(z:msg_send{ content = "验证码 1234", xgh = "20121032", messageType = 1, messageTo = "13800001111" })
      assert(z:msg_send{ content = '{"first":"hi"}', xgh = "20121032", messageType = 3, messageTo = "oABC123", templateId = "T1" })
      assert(z:msg_send{ content = "mail", xgh = "T2001", messageType = "4", messageTo = "wang@zafu.edu.cn" })
      assert(z:msg_send{ content = "app", xgh = "20121032", messageType = 6, messageTo = "https://app/x", dataKey = "k1" })
      local res = assert(z:msg_send{ content = "task", xgh = "20121032", messageType = 7, messageTo = 14 })
      assert.equal(1, res.status)
      assert.equal("发送成功", res.message)
      local sent = assert(sb:records("zafu", "messages"))
      assert.equal(5, #sent)
      assert.equal("13800001111", sent[1].messageTo)
      assert.equal("T1", sent[2].templateId)
      assert.equal("k1", sent[4].dataKey)
      assert.equal("14", sent[5].messageTo)
    end)

    it("msg_send: refusals carry errorFields", function()
      local z = new()
      local res, err = z:msg_send{ content = "task", xgh = "20121032", messageType = 8, messageTo = "999" }
      assert.is_nil(res)
      assert.equal("任务不存在", err.message)
      assert.same({ "messageTo" }, err.fields)
      res, err = z:msg_send{ content = "sms", xgh = "20121032", messageType = 1, messageTo = "12345" }
      assert.same({ "messageTo" }, err.fields)
      res, err = z:msg_send{ content = "not json", xgh = "20121032", messageType = 3, messageTo = "o1", templateId = "T" }
      assert.same({ "content" }, err.fields)
    end)

    it("msg_send: xgh \"学工号,App内部消息时,必填。其他类型选填也可发送\"; messageTo \"5/6.发App消息,传跳转url 选填\"", function()
      local z = new()
      assert(z:msg_send{ content = "验证码 1234", messageType = 1, messageTo = "13800001111" }) -- an SMS: no xgh
      assert(z:msg_send{ content = "mail", messageType = 4, messageTo = "wang@zafu.edu.cn" })
      assert(z:msg_send{ content = "app", xgh = "20121032", messageType = 5 }) -- an App message: no link
      local sent = assert(sb:records("zafu", "messages"))
      assert.equal(3, #sent)
      assert.is_nil(sent[1].xgh)
      assert.is_nil(sent[3].messageTo)
    end)

    it("get_message_status: messageTo \"5/6.发App消息,传跳转url 选填 8.发App任务,传任务id 必填\"", function()
      local z = new()
      assert(z:msg_send{ content = "请阅读", xgh = "20121032", messageType = 6 })
      local res = assert(z:get_message_status{ xgh = "20121032", messageType = 6 })
      assert.equal(1, #res.data)
    end)

    it("get_message_status: parameters in a form body; unread, then read", function()
      local t = recording()
      local z = new({ transport = t })
      assert(z:msg_send{ content = "请阅读", xgh = "20121032", messageType = 5, messageTo = "https://app/n", dataKey = "row-7" })
      local res = assert(z:get_message_status{ xgh = "20121032", messageType = 5, messageTo = "https://app/n", dataKey = "row-7" })
      local req = t:last()
      assert.same({ "access_token" }, (function()
        local keys = {}
        for k in pairs(query_of(req.url)) do keys[#keys + 1] = k end
        return keys
      end)())
      assert.equal("application/x-www-form-urlencoded", req.headers["Content-Type"])
      assert.equal("row-7", util.parse_form(req.body).dataKey)
      assert.equal("0", res.code)
      assert.equal(1, #res.data)
      assert.equal("0", res.data[1].is_read)
      assert.equal("请阅读", res.data[1].message_content)
      assert(sb:admin("POST", "/_sandbox/zafu/read", { id = res.data[1].id }))
      res = assert(z:get_message_status{ xgh = "20121032", messageType = 5, messageTo = "https://app/n" })
      assert.equal("1", res.data[1].is_read)
      assert.is_number(res.data[1].read_date)
      res = assert(z:get_message_status{ xgh = "T2001", messageType = 6, messageTo = "https://app/n" })
      assert.equal(0, #res.data)
    end)

    it("must_task_list: the configured tasks", function()
      local res = assert(new():must_task_list())
      assert.equal("success", res.type)
      assert.same({ 14, 16, 18 }, { res.data[1].id, res.data[2].id, res.data[3].id })
      assert.equal("测试学生销假", res.data[2].title)
    end)

    local SCAN = { termName = "东湖校区 北门", termSn = "SN-0001", name = "张三", xgh = "20121032", idCard = ID,
                   userType = "学生", scanDate = "24-07-04 10:15:00" }
    local function scan(changes)
      local a = {}
      for k, v in pairs(SCAN) do a[k] = v end
      for k, v in pairs(changes or {}) do a[k] = v end
      return a
    end

    it("scan_record: idCard AES-128-ECB with the padded appId, base64, in a form body; checked by the platform", function()
      local t = recording()
      local z = new({ transport = t })
      local res = assert(z:scan_record(scan()))
      assert.equal("1", res.code)
      assert.equal(cjson.null, res.data)
      local body = util.parse_form(t:last().body)
      assert.equal(APP_ID, body.appId)
      assert.equal("东湖校区 北门", body.termName)
      -- independently: openssl with the key "0000000000000001"
      local fh = io.popen("printf %s '" .. ID .. "' | openssl enc -aes-128-ecb -K 30303030303030303030303030303031 -nosalt -base64 -A")
      local expected = fh:read("*a")
      fh:close()
      assert.equal(expected, body.idCard)
      local recorded = assert(sb:records("zafu", "scans"))[1]
      assert.equal(ID, recorded.idCard)
      assert.equal("东湖校区 北门", recorded.termName)
    end)

    it("scan_record: a wrong ID number, a wrong mode, a missing field are the platform's errors", function()
      local z = new()
      local res, err = z:scan_record(scan({ idCard = "110105194912310021" }))
      assert.is_nil(res)
      assert.equal("身份证号格式错误", err.message)
      assert.same({ "idCard" }, err.fields)
      res, err = z:scan_record(scan({ scanDate = "2024/07/04" }))
      assert.same({ "scanDate" }, err.fields)
      assert(sb:configure({ zafu = { aes_mode = "cbc", aes_iv = "0102030405060708" } }))
      res, err = z:scan_record(scan())
      assert.equal("身份证号解密失败", err.message)
      local status, doc = raw_post("/api/scanrecord.jhtm?access_token=" .. z:access_token(), "termName=x&appId=01",
                                   "application/x-www-form-urlencoded")
      assert.equal(200, status)
      assert.equal("error", doc.type)
      assert.same({ "termSn", "name", "xgh", "idCard", "userType", "scanDate" }, doc.errorFields)
    end)

    it("scan_record: scanDate as the document writes it, yy-MM-dd hh:mm:ss (a 12-hour clock); strict off: any", function()
      local z = new()
      for _, date in ipairs({ "2024-07-04 10:15:00", "24-07-04 14:15:00", "24-07-04 00:15:00", "24-13-04 10:15:00" }) do
        local res, err = z:scan_record(scan({ scanDate = date }))
        assert.is_nil(res, date)
        assert.equal("扫码时间格式错误", err.message)
        assert.same({ "scanDate" }, err.fields)
      end
      assert(z:scan_record(scan({ scanDate = "24-07-04 12:59:59" })))
      assert(sb:configure({ zafu = { strict = false } }))
      assert(z:scan_record(scan({ scanDate = "2024-07-04 14:15:00" })))
      assert(z:scan_record(scan({ scanDate = "24-07-04 00:15:00" })))
    end)

    it("msg_create: userno (学工号, true) must be known whatever the scope; strict off: only for scope 6", function()
      local z = new()
      local res, err = z:msg_create{ content = "x", scope = 1, userno = "99999999", channel = 1 }
      assert.is_nil(res)
      assert.equal("学工号不存在", err.message)
      assert(sb:configure({ zafu = { strict = false } }))
      assert(z:msg_create{ content = "x", scope = 1, userno = "99999999", channel = 1 })
    end)

    it("counts an action sent twice (ZAFU signs nothing: counted, never refused); a read is not counted", function()
      local z = new()
      assert(z:must_task_list())
      assert(z:must_task_list())
      assert(z:msg_send{ content = "明天上午体检", xgh = "20121032", messageType = 5, dataKey = "n-1" })
      assert(z:msg_send{ content = "明天上午体检", xgh = "20121032", messageType = 5, dataKey = "n-1" })
      assert(z:msg_send{ content = "明天上午体检", xgh = "20230417", messageType = 5, dataKey = "n-2" })
      assert.equal(3, #assert(sb:records("zafu", "messages")))
      local c = assert(sb:counters()).zafu
      assert.equal(1, c.duplicates)
      assert.equal(0, c.refused)
      local d = assert(sb:records("zafu", "duplicates"))
      assert.equal("/api/msgsend", d[1].path)
      assert.is_nil(d[1].content:find("access_token", 1, true))
    end)

    it("scan_record: CBC with an IV and hex, as client options", function()
      assert(sb:configure({ zafu = { aes_mode = "cbc", aes_iv = "0102030405060708", aes_encoding = "hex" } }))
      local t = recording()
      local z = new({ transport = t, aes_mode = "cbc", aes_iv = "0102030405060708", aes_encoding = "hex" })
      assert(z:scan_record(scan()))
      assert.matches("^%x+$", util.parse_form(t:last().body).idCard)
      assert.equal(ID, assert(sb:records("zafu", "scans"))[1].idCard)
    end)

    it("a transport failure is a transport error; a read may be repeated", function()
      local z = new({ base_url = "http://127.0.0.1:1", connect_timeout = 1 })
      local res, err = z:menu_list()
      assert.is_nil(res)
      assert.equal("transport", err.kind)
      assert.equal("zafu", err.platform)
      assert.is_true(err.retryable)
    end)
  end)

  it("hooks see each attempt, the token hidden in the URL", function()
    local seen = {}
    local a = new({ on_request = function(info) seen[#seen + 1] = info.url end })
    local b = new()
    assert(a:menu_list())
    assert(b:menu_list()) -- knocks a's token out: a's next call is sent twice
    assert(a:must_task_list())
    assert.equal(3, #seen)
    for _, url in ipairs(seen) do
      assert.matches("access_token=%*%*%*", url)
      assert.is_nil(url:find(a:access_token(), 1, true))
    end
  end)

  it("runs in kaifang.batch (the batch builds the requests; the token comes from the store)", function()
    local z = new()
    local calls = {}
    for i = 1, 12 do
      calls[i] = i % 2 == 0 and { z, "must_task_list" }
        or { z, "msg_send", { content = "batch " .. i, xgh = "20121032", messageType = 5, messageTo = "https://app/b" } }
    end
    local results = {}
    local summary = kaifang.batch(calls, { concurrency = 4, on_result = function(i, value) results[i] = value end })
    assert.equal(12, summary.ok)
    assert.equal(1, tokens().issued)
    assert.equal(6, #(assert(sb:records("zafu", "messages"))))
    assert.equal("success", results[2].type)
  end)

  it("is reachable as kaifang.zafu and kaifang.store", function()
    assert.equal(zafu, kaifang.zafu)
    assert.equal(store, kaifang.store)
  end)
end)

---------------------------------------------------------------------------- the token, with fakes

describe("kaifang.zafu token handling", function()
  local function new(opts)
    local o = { client_id = CLIENT_ID, client_secret = SECRET, app_id = APP_ID, base_url = "https://zafu.test",
                token_store = store.memory() }
    for k, v in pairs(opts or {}) do o[k] = v end
    return zafu.new(o)
  end

  it("retries a refused call once, never more, and keeps the token out of the error", function()
    local api = 0
    local t = fake(function(req, self)
      if is_token_request(req) then return token_reply(self) end
      api = api + 1
      local tok = query_of(req.url).access_token
      return 403, { error = "invalid_grant", error_description = "Invalid access token: " .. tok }
    end)
    local z = new({ transport = t })
    local res, err = z:msg_send{ content = "x", xgh = "1", messageType = 5, messageTo = "u" }
    assert.is_nil(res)
    assert.equal(2, api)
    assert.equal(2, t.tokens)
    assert.equal("auth", err.kind)
    assert.equal("invalid_grant", err.code)
    assert.equal(403, err.http_status)
    assert.is_true(err.retryable) -- refused for its token: nothing was done
    assert.is_false(err.maybe_sent)
    assert.equal("Invalid access token: <access_token>", err.message)
    for i = 1, 2 do assert.is_nil(tostring(err):find("tok" .. i, 1, true)) end
  end)

  it("drops the refused token only if it is still the stored one", function()
    local shared = store.memory()
    local z
    local t = fake(function(req, self)
      if is_token_request(req) then return token_reply(self) end
      local tok = query_of(req.url).access_token
      if tok == "tok1" then
        -- meanwhile another process fetched tok2 and stored it
        shared:set(z.token_key, cjson.encode({ access_token = "tok2", expires_at = core.now() + 1000, expires_in = 1000 }), 1000)
        self.tokens = 2
        return 403, { error = "invalid_grant", error_description = "Invalid access token: tok1" }
      end
      return 200, OK_RESULT
    end)
    z = new({ transport = t, token_store = shared })
    assert(z:must_task_list())
    assert.equal(1, z.stats.fetched) -- the other's token was used, none fetched
    assert.equal("tok2", z:access_token())
    assert.equal("tok2", query_of(t.sent[#t.sent].url).access_token)
  end)

  it("refreshes ahead of expiry, by refresh_ahead but at most half the lifetime", function()
    local now = 1000000
    local lifetime = 1209600
    local t = fake(function(req, self)
      if is_token_request(req) then return token_reply(self, lifetime) end
      return 200, OK_RESULT
    end)
    local z = new({ transport = t, clock = function() return now end })
    assert(z:menu_list())
    now = now + lifetime - 301
    assert(z:menu_list())
    assert.equal(1, t.tokens)
    now = now + 2 -- inside the last five minutes
    assert(z:menu_list())
    assert.equal(2, t.tokens)
    -- a token of two seconds with the default five minutes: refreshed after one second, not at once
    lifetime = 2
    local short = new({ transport = t, clock = function() return now end, token_store = store.memory({ clock = function() return now end }) })
    assert(short:menu_list())
    assert.equal(3, t.tokens)
    now = now + 0.9
    assert(short:menu_list())
    assert.equal(3, t.tokens)
    now = now + 0.2
    assert(short:menu_list())
    assert.equal(4, t.tokens)
  end)

  it("goes on with a still valid token when refreshing ahead fails", function()
    local now = 5000
    local fail_tokens = false
    local t = fake(function(req, self)
      if is_token_request(req) then
        if fail_tokens then return 502, "bad gateway" end
        return token_reply(self, 1000)
      end
      return 200, OK_RESULT
    end)
    local z = new({ transport = t, clock = function() return now end, refresh_ahead = 100 })
    assert(z:menu_list())
    fail_tokens = true
    now = now + 950
    assert(z:menu_list())
    now = now + 60 -- expired: now the failure shows
    local res, err = z:menu_list()
    assert.is_nil(res)
    assert.equal("http", err.kind)
    assert.equal(502, err.http_status)
  end)

  it("waits for another process's refresh and uses what it stored", function()
    local shared = store.memory()
    local t = fake(function(req, self)
      if is_token_request(req) then return token_reply(self) end
      return 200, OK_RESULT
    end)
    local z
    local slept = 0
    z = new({ transport = t, token_store = shared, sleep = function()
      slept = slept + 1
      if slept == 3 then -- the other process finishes
        shared:set(z.token_key, cjson.encode({ access_token = "theirs", expires_at = core.now() + 1000, expires_in = 1000 }), 1000)
        shared:unlock(z.token_key .. ":lock", "other-process")
      end
    end })
    assert.is_true(shared:lock(z.token_key .. ":lock", "other-process", 30))
    assert(z:menu_list())
    assert.equal(3, slept)
    assert.equal(0, t.tokens)
    assert.equal("theirs", query_of(t.sent[1].url).access_token)
  end)

  it("waits for another's refresh no longer than the call's timeout, and sends nothing then", function()
    local shared = store.memory()
    local t = fake(function() return 200, OK_RESULT end)
    local z = new({ transport = t, token_store = shared, timeout = 0.2, sleep = core.sleep })
    assert.is_true(shared:lock(z.token_key .. ":lock", "stuck", 30))
    local t0 = core.monotonic()
    local res, err = z:menu_list()
    local spent = core.monotonic() - t0
    assert.is_nil(res)
    assert.equal("timeout", err.kind)
    assert.equal("deadline", err.code)
    assert.is_false(err.maybe_sent)
    assert.is_true(err.retryable)
    assert.matches("went to waiting for the access token that the holder of the lock in kaifang.store.memory is fetching", err.message, 1, true)
    assert.is_true(spent >= 0.19 and spent < 1, spent)
    assert.equal(0, #t.sent)
  end)

  it("holds the token lock for the time its call has left and a margin, and gives the fetch that deadline", function()
    local shared, ttls = store.memory(), {}
    local locking = setmetatable({ lock = function(_, key, owner, ttl)
      ttls[#ttls + 1] = ttl
      return shared:lock(key, owner, ttl)
    end }, { __index = function(_, k) return function(_, ...) return shared[k](shared, ...) end end })
    local t = fake(function(req, self)
      if is_token_request(req) then return token_reply(self) end
      return 200, OK_RESULT
    end)
    local z = new({ transport = t, token_store = locking, timeout = 30, sleep = core.sleep })
    assert(z:menu_list(nil, { timeout = 2 }))
    assert.equal(1, #ttls)
    assert.is_true(ttls[1] > 5 and ttls[1] <= 7, ttls[1]) -- 2 s left, and 5 s to spare: not 30 + 5
    local fetch = t.sent[1]
    assert.is_true(is_token_request(fetch))
    assert.is_true(fetch.timeout <= 2, fetch.timeout)
    assert.is_true(fetch.deadline - core.monotonic() <= 2)
    assert.equal(fetch.deadline, t.sent[2].deadline) -- the call and its token fetch: one deadline
  end)

  it("gives up waiting after token_wait", function()
    local shared = store.memory()
    local t = fake(function() return 200, OK_RESULT end)
    local z = new({ transport = t, token_store = shared, token_wait = 0.05 })
    assert.is_true(shared:lock(z.token_key .. ":lock", "stuck", 30))
    local res, err = z:menu_list()
    assert.is_nil(res)
    assert.equal("auth", err.kind)
    assert.equal("token_wait", err.code)
    assert.is_true(err.retryable)
    assert.equal(0, #t.sent)
  end)

  it("fails the call, naming the store, when the fetched token cannot be stored", function()
    local shared = store.memory()
    local full = setmetatable({ set = function() return nil, { code = "no_memory", message = "dict full" } end },
      { __index = function(_, k) return function(_, ...) return shared[k](shared, ...) end end,
        __tostring = function() return "fullstore" end })
    local t = fake(function(req, self)
      if is_token_request(req) then return token_reply(self) end
      return 200, OK_RESULT
    end)
    local z = new({ transport = t, token_store = full })
    local res, err = z:menu_list()
    assert.is_nil(res)
    assert.equal("store", err.kind)
    assert.equal("no_memory", err.code)
    assert.matches("could not store it in fullstore %(dict full%)", err.message)
    assert.equal(1, #t.sent) -- the token fetch, and not the call
    assert.is_nil(shared:get(z.token_key .. ":lock")) -- the lock is given back
  end)

  it("returns the store's error when the store is down", function()
    local z = new({ token_store = store.redis({ port = 1, connect_timeout = 0.5 }), transport = fake(function() return 200, OK_RESULT end) })
    local res, err = z:menu_list()
    assert.is_nil(res)
    assert.equal("store", err.platform)
    assert.equal("store", err.kind)
  end)

  it("maps both reply shapes and an unknown one", function()
    local reply
    local t = fake(function(req, self)
      if is_token_request(req) then return token_reply(self) end
      return 200, reply
    end)
    local z = new({ transport = t })
    reply = { type = "error", code = "500", content = "系统错误", anchor = "undefined", errorFields = { "x" } }
    local res, err = z:menu_list()
    assert.is_nil(res)
    assert.same({ "platform", "500", "系统错误" }, { err.kind, err.code, err.message })
    assert.same({ "x" }, err.fields)
    reply = { status = 0, message = "发送失败", errorFields = "messageTo" }
    res, err = z:msg_send{ content = "x", xgh = "1", messageType = 5, messageTo = "u" }
    assert.same({ "platform", 0, "发送失败", "messageTo" }, { err.kind, err.code, err.message, err.fields })
    assert.equal("kaifang.zafu: platform error 0: 发送失败", tostring(err))
    reply = { something = "else" }
    res, err = z:menu_list()
    assert.equal("decode", err.kind)
    reply = "<html>"
    res, err = z:menu_list()
    assert.equal("decode", err.kind)
  end)

  it("never shows the secret or the token in tostring or the client's fields", function()
    local t = fake(function(req, self)
      if is_token_request(req) then return token_reply(self) end
      return 200, OK_RESULT
    end)
    local z = new({ transport = t })
    assert(z:menu_list())
    local s = tostring(z)
    assert.matches('client_id = "zafu%-demo"', s)
    assert.is_nil(s:find(SECRET, 1, true))
    assert.is_nil(s:find("tok1", 1, true))
    -- nothing reachable from the client object (its transport, store and stats included) holds either
    local function reachable(value, needle, seen)
      if type(value) == "string" then return value:find(needle, 1, true) ~= nil end
      if type(value) ~= "table" or seen[value] then return false end
      seen[value] = true
      for k, v in pairs(value) do
        if reachable(k, needle, seen) or reachable(v, needle, seen) then return true end
      end
      return false
    end
    z.transport = nil -- the fake records the requests it was given, which hold the token
    assert.is_false(reachable(z, SECRET, {}))
    assert.is_false(reachable(z, "tok1", {}))
  end)
end)

---------------------------------------------------------------------------- misuse

describe("kaifang.zafu misuse raises at the caller's line", function()
  local good = { client_id = CLIENT_ID, client_secret = SECRET, app_id = APP_ID, token_store = store.memory(),
                 transport = fake(function() error("a misused call was sent") end) }
  local function with(changes)
    local o = {}
    for k, v in pairs(good) do o[k] = v end
    for k, v in pairs(changes) do o[k] = v end
    return o
  end
  local z = zafu.new(good)

  it("bad options to new", function()
    assert.matches("client_secret", raises_at_line(function() here(); zafu.new(with{ client_secret = "" }) end))
    assert.matches("app_id", raises_at_line(function() here(); zafu.new(with{ app_id = "12345678901234567" }) end))
    assert.matches("token_store", raises_at_line(function() here(); zafu.new(with{ token_store = { get = print } }) end))
    assert.matches("aes_mode", raises_at_line(function() here(); zafu.new(with{ aes_mode = "gcm" }) end))
    assert.matches("aes_iv", raises_at_line(function() here(); zafu.new(with{ aes_mode = "cbc" }) end))
    assert.matches("aes_encoding", raises_at_line(function() here(); zafu.new(with{ aes_encoding = "b64" }) end))
    assert.matches("refresh_ahead", raises_at_line(function() here(); zafu.new(with{ refresh_ahead = -1 }) end))
    local err = raises_at_line(function() here(); zafu.new(with{ client_secret = 12345 }) end)
    assert.is_nil(err:find("12345", 1, true))
  end)

  it("missing, ill-typed or out-of-range parameters", function()
    assert.matches("'content'", raises_at_line(function() here(); z:msg_create{ scope = 1, userno = "1", channel = 1 } end))
    assert.matches("'scope'", raises_at_line(function() here(); z:msg_create{ content = "x", scope = 7, userno = "1", channel = 1 } end))
    assert.matches("'messageType'", raises_at_line(function() here(); z:msg_send{ content = "x", xgh = "1", messageType = 2, messageTo = "u" } end))
    assert.matches("'templateId'", raises_at_line(function() here(); z:msg_send{ content = "{}", xgh = "1", messageType = 3, messageTo = "o" } end))
    assert.matches("'messageType'", raises_at_line(function() here(); z:get_message_status{ xgh = "1", messageType = 1, messageTo = "u" } end))
    -- the conditional requirements, each naming its rule
    local err = raises_at_line(function() here(); z:msg_send{ content = "x", messageType = 5, messageTo = "u" } end)
    assert.matches("missing required parameter 'xgh' for messageType 5 (学工号: required for the App types 5, 6, 7 and 8; optional for 1, 3 and 4)", err, 1, true)
    err = raises_at_line(function() here(); z:msg_send{ content = "x", xgh = "1", messageType = 1 } end)
    assert.matches("missing required parameter 'messageTo' for messageType 1: a phone number (required for 1, 3, 4, 7 and 8; optional for 5 and 6)", err, 1, true)
    assert.matches("for messageType 7: a task id", raises_at_line(function() here(); z:msg_send{ content = "x", xgh = "1", messageType = 7 } end), 1, true)
    assert.matches("for messageType 3: an OpenId", raises_at_line(function() here(); z:msg_send{ content = "{}", messageType = 3, templateId = "T" } end), 1, true)
    err = raises_at_line(function() here(); z:get_message_status{ xgh = "1", messageType = 8 } end)
    assert.matches("missing required parameter 'messageTo' for messageType 8: a task id", err, 1, true)
    assert.matches("'xgh'", raises_at_line(function() here(); z:get_message_status{ messageType = 5 } end))
    assert.matches("'idCard'", raises_at_line(function()
      here(); z:scan_record{ termName = "t", termSn = "s", name = "n", xgh = "x", idCard = 110105194912310020, userType = "学生", scanDate = "d" }
    end))
    assert.matches("unknown parameter 'appid'", raises_at_line(function() here(); z:msg_create{ content = "x", scope = 1, userno = "1", channel = 1, appid = "01" } end))
    assert.matches("unknown parameter", raises_at_line(function() here(); z:menu_list{ page = 1 } end))
  end)

  it("the positional methods", function()
    assert.matches("menu id", raises_at_line(function() here(); z:menu_delete() end))
    assert.matches("fraction", raises_at_line(function() here(); z:menu_delete(1.5) end))
    assert.matches("menu tree", raises_at_line(function() here(); z:menu_submit(42) end))
    assert.matches("mixes", raises_at_line(function() here(); z:menu_submit({ { name = "a" }, name = "b" }) end))
    assert.matches("client:menu_delete", raises_at_line(function() here(); z.menu_delete(3) end))
    assert.matches("client:access_token", raises_at_line(function() here(); z.access_token() end))
  end)
end)
