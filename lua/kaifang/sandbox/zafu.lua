-- ZAFU campus open platform (浙江农林大学 开放平台) as its document describes it: client-credentials
-- tokens (only the latest valid, a configurable lifetime), the documented OAuth errors, the two
-- reply shapes, menus, messages readable back and marked read, the task list, and scan records
-- whose AES-encrypted ID number is decrypted and checked. Counts the tokens it issues and the
-- calls it refuses for their token.
local core = require "kaifang.core"
local util = require "kaifang.sandbox.util"

local M = {}

M.name = "zafu"

-- Settings changeable through POST /_sandbox/config {"zafu":{...}}.
-- token_ttl: a token's lifetime in seconds (the document: two weeks).
-- aes_mode / aes_iv / aes_encoding: how scan_record's idCard is expected to be encrypted (the
-- document names none: ECB, PKCS#7, base64 by default).
-- strict: scanDate exactly as the document writes it (yy-MM-dd hh:mm:ss: a two-digit year, a
-- 12-hour clock) and msgcreate's userno a known 学工号 whatever the scope.
M.defaults = { token_ttl = 1209600, aes_mode = "ecb", aes_iv = nil, aes_encoding = "base64", strict = true }

function M.check_setting(key, value)
  if key == "strict" then
    if type(value) ~= "boolean" then return nil, "zafu.strict must be true or false" end
  elseif key == "token_ttl" then
    if type(value) ~= "number" or value <= 0 then return nil, "zafu.token_ttl must be a number of seconds > 0" end
  elseif key == "aes_mode" then
    if value ~= "ecb" and value ~= "cbc" then return nil, "zafu.aes_mode must be \"ecb\" or \"cbc\"" end
  elseif key == "aes_iv" then
    if value ~= nil and (type(value) ~= "string" or #value ~= 16) then return nil, "zafu.aes_iv must be 16 bytes or null" end
  elseif key == "aes_encoding" then
    if value ~= "base64" and value ~= "hex" then return nil, "zafu.aes_encoding must be \"base64\" or \"hex\"" end
  else
    return nil, "unknown zafu setting '" .. tostring(key) .. "'"
  end
  return true
end

---------------------------------------------------------------------------- seeded world

local CLIENTS = {
  ["zafu-demo"] = { secret = "9d1f6b3c27e84a05b6c0e1f2a3d4c5b6", app_id = "01" },
}

local USERS = { -- 学工号
  ["20121032"] = { name = "张三", type = "学生" },
  ["20230417"] = { name = "李四", type = "学生" },
  ["T2001"] = { name = "王老师", type = "教师" },
}

local TASKS = {
  { id = 14, title = "关于清理校内废弃自行车、电瓶车的通知" },
  { id = 16, title = "测试学生销假" },
  { id = 18, title = "预警信息" },
}

-- The document's menulist example.
local function seed_menus()
  local null = util.json_null
  return util.array({
    {
      parent = 1701, has_dap = 0, lvl = 2, menuDaps = util.array(), visiable = 1, memo = null, sort = 40,
      fap_key = "admin.appui.xufg", url = "#", name = "校园", icon_class = null, id = 1702,
      childs = util.array({
        {
          parent = 1702, has_dap = 0, lvl = 3, name = "类型设置", visiable = 1, memo = null, icon_class = null,
          id = 1703, sort = 1, fap_key = "admin.appui.xyfg.fglx",
          url = "http://localhost/appbiz/admin/campusviewtype/list.htm",
          menuDaps = util.array({
            { name = "新增", id = 1, menu = 1703, fap_key = "admin.xxx.create" },
            { name = "删除", id = 2, menu = 1703, fap_key = "admin.xxx.delete" },
          }),
        },
        {
          parent = 1702, has_dap = 0, lvl = 3, menuDaps = util.array(), name = "校园风光", visiable = 1, memo = null,
          icon_class = null, id = 1704, sort = 2, fap_key = "admin.appui.xyfg.xyfg",
          url = "http://localhost/appbiz/admin/campusview/list.htm",
        },
      }),
    },
  })
end

-- The demo account (kaifang.zafu.new's options) and what the seeded world holds: rows { what, id, about }.
function M.demo()
  local id = next(CLIENTS)
  local world = {}
  local function add(what, key, about) world[#world + 1] = { what = what, id = key, about = about } end
  local xghs = {}
  for xgh in pairs(USERS) do xghs[#xghs + 1] = xgh end
  table.sort(xghs)
  for _, xgh in ipairs(xghs) do add("user", xgh, USERS[xgh].name .. ", " .. USERS[xgh].type .. " (xgh / userno)") end
  for _, t in ipairs(TASKS) do add("task", tostring(t.id), t.title .. " (mustTaskList; messageTo of type 7/8)") end
  for _, menu in ipairs(seed_menus()) do
    local children = {}
    for i, child in ipairs(menu.childs) do children[i] = child.id .. " " .. child.name end
    add("menu", tostring(menu.id), menu.name .. " (children " .. table.concat(children, ", ") .. ")")
  end
  return { account = { client_id = id, client_secret = CLIENTS[id].secret, app_id = CLIENTS[id].app_id }, world = world }
end

---------------------------------------------------------------------------- replies

local json = util.json_encode

local function oauth_error(status, err, description)
  return util.json_response('{"error":' .. json(err) .. ',"error_description":' .. json(description) .. "}", status)
end

-- { type, code, content, anchor, errorFields[, data] } in the document's key order; data is JSON text.
local function result(ok, code, content, error_fields, data)
  local s = '{"type":' .. json(ok and "success" or "error") .. ',"code":' .. json(code) .. ',"content":' .. json(content)
    .. ',"anchor":"undefined","errorFields":' .. (error_fields or "[]")
  if data then s = s .. ',"data":' .. data end
  return util.json_response(s .. "}")
end

local function success(data, code) return result(true, code or "成功", "成功", "[]", data) end

local function failure(content, fields) return result(false, "失败", content, json(util.array(fields or {}))) end

-- { message, status } (msgcreate's example order); msgsend also carries errorFields.
local function status_reply(ok, message, fields)
  local s = '{"message":' .. json(message) .. ',"status":' .. (ok and "1" or "0")
  if fields ~= nil then s = s .. ',"errorFields":' .. (fields == false and "null" or json(fields)) end
  return util.json_response(s .. "}")
end

---------------------------------------------------------------------------- checks

-- GB 11643: 17 digits, then a check character over them.
local WEIGHTS = { 7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2 }
local CHECK = "10X98765432"

function M.valid_id_number(id)
  if type(id) ~= "string" or not id:match("^%d%d%d%d%d%d%d%d%d%d%d%d%d%d%d%d%d[%dX]$") then return false end
  local sum = 0
  for i = 1, 17 do sum = sum + (id:byte(i) - 48) * WEIGHTS[i] end
  local r = sum % 11 + 1
  return id:sub(18, 18) == CHECK:sub(r, r)
end

local function valid_tel(s) return s ~= nil and s:match("^1%d%d%d%d%d%d%d%d%d%d$") ~= nil end
local function valid_email(s) return s ~= nil and s:match("^[^@%s]+@[^@%s]+%.[^@%s]+$") ~= nil end
local function blank(s) return s == nil or s == "" end

local Instance = {}
Instance.__index = Instance

function M.new(ctx)
  return setmetatable({
    config = ctx.config,
    now = ctx.now,
    clock = ctx.clock,
    duplicates = ctx.duplicates,
    tokens = {}, -- client_id -> { token=, expires_at= }: the latest only
    issued = 0,
    refused = { expired = 0, invalid = 0, missing = 0 },
    seq = 0,
    msg_seq = 404104, -- message ids continue from the document's example
    menus = seed_menus(),
    next_menu_id = 1800,
    messages = util.array(), -- msgcreate and msgsend, in order
    scans = util.array(),
  }, Instance)
end

Instance.next_id = util.next_id

local function query_of(req) return util.parse_form(req.query) or {} end

-- The form body of the endpoints whose parameters are not in the URL.
local function form_of(req)
  if req.body == nil or req.body == "" then return {} end
  if not util.is_form(req.headers) then return {} end
  return util.parse_form(req.body) or {}
end

---------------------------------------------------------------------------- POST /oauth/token

local function token(self, req)
  local body = util.is_json(req.headers) and util.json_decode(req.body or "") or nil
  if type(body) ~= "table" then
    return oauth_error(400, "invalid_request", "Missing grant type") -- no JSON body: nothing read
  end
  local id, secret = body.client_id, body.client_secret
  local c = type(id) == "string" and CLIENTS[id]
  -- client authentication comes first, as in Spring Security OAuth2; its 401 is the document's
  if not c or type(secret) ~= "string" or not core.ct_equal(secret, c.secret) then
    return oauth_error(401, "invalid_client", "Bad client credentials")
  end
  local grant = body.grant_type
  if grant == nil or grant == util.json_null or grant == "" then return oauth_error(400, "invalid_request", "Missing grant type") end
  if grant ~= "client_credentials" then
    return oauth_error(400, "unsupported_grant_type", "Unsupported grant type: " .. tostring(grant))
  end
  local scope = body.scope
  if scope ~= nil and scope ~= util.json_null and scope ~= "base_api" then
    return oauth_error(403, "access_denied", "Unauthorized scope: " .. tostring(scope))
  end
  self.issued = self.issued + 1
  local ttl = self.config.token_ttl
  -- 32 letters and digits like the document's example, unguessable enough for a sandbox
  local raw = core.digest("sha256", id .. ":" .. self.issued .. ":" .. self.now() .. ":" .. tostring(math.random()), "raw")
  local t = core.base64_encode(raw):gsub("[^%w]", ""):sub(1, 32)
  self.tokens[id] = { token = t, expires_at = self.now() + ttl, client = id }
  return util.json_response('{"access_token":' .. json(t) .. ',"expires_in":' .. json(ttl)
    .. ',"scope":"base_api","token_type":"Bearer"}')
end

-- The caller's client, or nil and the refusal: 401 without a token (Spring Security's body: the
-- document says only "401或403"; README: "What the documents leave open"), 403 invalid_grant for
-- an expired one or one that is not the latest issued.
function Instance:authorize(req)
  local t = query_of(req).access_token
  if blank(t) then
    self.refused.missing = self.refused.missing + 1
    return nil, oauth_error(401, "unauthorized", "Full authentication is required to access this resource")
  end
  for id, cur in pairs(self.tokens) do
    if cur.token == t then
      if self.now() >= cur.expires_at then
        self.refused.expired = self.refused.expired + 1
        return nil, oauth_error(403, "invalid_grant", "Access token is expired")
      end
      return CLIENTS[id]
    end
  end
  self.refused.invalid = self.refused.invalid + 1
  return nil, oauth_error(403, "invalid_grant", "Invalid access token: " .. t) -- as Spring words it, token and all
end

---------------------------------------------------------------------------- menus

local function find_menu(list, id)
  for i, m in ipairs(list) do
    if type(m) == "table" then
      if tostring(m.id) == id then return list, i end
      if type(m.childs) == "table" then
        local l, j = find_menu(m.childs, id)
        if l then return l, j end
      end
    end
  end
end

local function menu_list(self, req)
  local _, refusal = self:authorize(req)
  if refusal then return refusal end
  return success(json(self.menus))
end

-- Every menu needs a name; one without an id gets the next free one.
function Instance:check_menus(list, depth)
  if type(list) ~= "table" or (next(list) ~= nil and list[1] == nil) or depth > 8 then return false end
  for _, m in ipairs(list) do
    if type(m) ~= "table" or type(m.name) ~= "string" or m.name == "" then return false end
    if m.id == nil or m.id == util.json_null then
      self.next_menu_id = self.next_menu_id + 1
      m.id = self.next_menu_id
    end
    if m.childs ~= nil and m.childs ~= util.json_null then
      if not self:check_menus(m.childs, depth + 1) then return false end
      setmetatable(m.childs, util.array_mt)
    end
    if type(m.menuDaps) == "table" then setmetatable(m.menuDaps, util.array_mt) end
  end
  return true
end

local function menu_submit(self, req)
  local _, refusal = self:authorize(req)
  if refusal then return refusal end
  local text = query_of(req).json
  if blank(text) then return failure("菜单json不能为空", { "json" }) end
  local menus = util.json_decode(text)
  if type(menus) ~= "table" or not self:check_menus(menus, 0) then return failure("菜单json格式错误", { "json" }) end
  self.menus = util.array(menus)
  return result(true, "成功", "成功", "[]")
end

local function menu_delete(self, req)
  local _, refusal = self:authorize(req)
  if refusal then return refusal end
  local id = query_of(req).id
  if blank(id) then return failure("菜单id不能为空", { "id" }) end
  local list, i = find_menu(self.menus, id)
  if not list then return failure("菜单不存在", { "id" }) end
  table.remove(list, i)
  return result(true, "成功", "成功", "[]")
end

---------------------------------------------------------------------------- messages

local function msg_create(self, req)
  local c, refusal = self:authorize(req)
  if refusal then return refusal end
  local p = query_of(req)
  if blank(p.content) or blank(p.scope) or blank(p.channel) then
    return status_reply(false, "推送内容、推送范围或推送渠道为空") -- the document's own example
  end
  if p.appId ~= c.app_id then return status_reply(false, "appId错误") end
  if not p.scope:match("^[1-6]$") then return status_reply(false, "推送范围错误") end
  if p.channel ~= "1" and p.channel ~= "2" then return status_reply(false, "推送渠道错误") end
  if blank(p.userno) then return status_reply(false, "学工号为空") end
  if (p.scope == "6" or self.config.strict) and not USERS[p.userno] then return status_reply(false, "学工号不存在") end
  if not blank(p.mobile) and not valid_tel(p.mobile) then return status_reply(false, "手机号格式不正确") end
  self.messages[#self.messages + 1] = {
    seq = self:next_id(), via = "msgcreate", time = math.floor(self.now() * 1000) / 1000,
    content = p.content, scope = tonumber(p.scope), userno = p.userno, channel = p.channel, mobile = p.mobile,
  }
  return status_reply(true, "推送成功")
end

local TASK_IDS = {}
for _, t in ipairs(TASKS) do TASK_IDS[tostring(t.id)] = true end

local function msg_send(self, req)
  local c, refusal = self:authorize(req)
  if refusal then return refusal end
  local p = query_of(req)
  local t = p.messageType
  if blank(p.content) then return status_reply(false, "消息内容不能为空", { "content" }) end
  if blank(t) or not ("1 3 4 5 6 7 8"):find(t, 1, true) or #t ~= 1 then
    return status_reply(false, "消息类型错误", { "messageType" })
  end
  if not blank(p.appId) and p.appId ~= c.app_id then return status_reply(false, "appId错误", { "appId" }) end
  local app = t == "5" or t == "6" or t == "7" or t == "8"
  if app and blank(p.xgh) then return status_reply(false, "App内部消息学工号必填", { "xgh" }) end
  if not blank(p.xgh) and not USERS[p.xgh] then return status_reply(false, "学工号不存在", { "xgh" }) end
  if t == "1" and not valid_tel(p.messageTo) then return status_reply(false, "手机号为空或格式不正确", { "messageTo" }) end
  if t == "3" then
    if blank(p.messageTo) then return status_reply(false, "OpenId不能为空", { "messageTo" }) end
    if blank(p.templateId) then return status_reply(false, "模板id不能为空", { "templateId" }) end
    if type(util.json_decode(p.content)) ~= "table" then return status_reply(false, "微信公众号消息内容须为json字符串", { "content" }) end
  end
  if t == "4" and not valid_email(p.messageTo) then return status_reply(false, "邮箱为空或格式不正确", { "messageTo" }) end
  if (t == "7" or t == "8") and not TASK_IDS[p.messageTo or ""] then return status_reply(false, "任务不存在", { "messageTo" }) end
  self.msg_seq = self.msg_seq + 1
  self.messages[#self.messages + 1] = {
    seq = self:next_id(), via = "msgsend", id = self.msg_seq, time = math.floor(self.now() * 1000) / 1000,
    content = p.content, xgh = p.xgh, messageType = t, messageTo = p.messageTo, templateId = p.templateId,
    dataKey = p.dataKey, is_read = "0",
  }
  return status_reply(true, "发送成功", false)
end

local function get_message_status(self, req)
  local _, refusal = self:authorize(req)
  if refusal then return refusal end
  local p = form_of(req)
  if blank(p.xgh) then return failure("学工号不能为空", { "xgh" }) end
  if p.messageType ~= "5" and p.messageType ~= "6" and p.messageType ~= "8" then
    return failure("消息类型错误", { "messageType" })
  end
  if p.messageType == "8" and blank(p.messageTo) then return failure("任务id不能为空", { "messageTo" }) end
  local data = util.array()
  for _, m in ipairs(self.messages) do
    if m.via == "msgsend" and m.xgh == p.xgh and m.messageType == p.messageType
      and (blank(p.messageTo) or m.messageTo == p.messageTo) and (blank(p.dataKey) or m.dataKey == p.dataKey) then
      data[#data + 1] = { is_read = m.is_read, message_content = m.content, id = m.id, read_date = m.read_date or util.json_null }
    end
  end
  -- this reply's example has code "0" and errorFields null
  return result(true, "0", "成功", "null", json(data))
end

local function must_task_list(self, req)
  local _, refusal = self:authorize(req)
  if refusal then return refusal end
  return success(json(util.array(TASKS)))
end

---------------------------------------------------------------------------- scan records

local SCAN_FIELDS = { "termName", "termSn", "name", "xgh", "idCard", "userType", "scanDate", "appId" }

function Instance:decrypt_id(app_id, text)
  local key = ("0"):rep(16 - #app_id) .. app_id
  local bytes
  if self.config.aes_encoding == "hex" then
    bytes = core.hex_decode(text)
  else
    bytes = core.base64_decode(text)
  end
  if not bytes or #bytes == 0 or #bytes % 16 ~= 0 then return nil end
  return core.aes_decrypt(key, bytes, self.config.aes_mode, self.config.aes_iv)
end

-- "yy-MM-dd hh:mm:ss" as Java writes patterns: a two-digit year and hh the 12-hour clock (01-12).
-- Not strict: a four-digit year and a 24-hour clock pass too.
local function valid_scan_date(s, strict)
  local y, mo, d, h, mi, sec = s:match("^(%d%d)-(%d%d)-(%d%d) (%d%d):(%d%d):(%d%d)$")
  if not y and not strict then y, mo, d, h, mi, sec = s:match("^(%d%d%d%d)-(%d%d)-(%d%d) (%d%d):(%d%d):(%d%d)$") end
  if not y then return false end
  mo, d, h, mi, sec = tonumber(mo), tonumber(d), tonumber(h), tonumber(mi), tonumber(sec)
  local hours_ok = strict and (h >= 1 and h <= 12) or (not strict and h <= 23)
  return mo >= 1 and mo <= 12 and d >= 1 and d <= 31 and hours_ok and mi <= 59 and sec <= 59
end

local function scan_record(self, req)
  local c, refusal = self:authorize(req)
  if refusal then return refusal end
  local p = form_of(req)
  local missing = {}
  for _, f in ipairs(SCAN_FIELDS) do
    if blank(p[f]) then missing[#missing + 1] = f end
  end
  if #missing > 0 then return failure("参数不能为空", missing) end
  if p.appId ~= c.app_id then return failure("appId错误", { "appId" }) end
  local id = self:decrypt_id(p.appId, p.idCard)
  if not id then return failure("身份证号解密失败", { "idCard" }) end
  if not M.valid_id_number(id) then return failure("身份证号格式错误", { "idCard" }) end
  if not valid_scan_date(p.scanDate, self.config.strict) then return failure("扫码时间格式错误", { "scanDate" }) end
  self.scans[#self.scans + 1] = {
    seq = self:next_id(), time = math.floor(self.now() * 1000) / 1000, termName = p.termName, termSn = p.termSn,
    name = p.name, xgh = p.xgh, idCard = id, userType = p.userType, scanDate = p.scanDate,
  }
  return result(true, "1", "成功", "[]", "null")
end

M.routes = {
  ["/oauth/token"] = token,
  ["/api/menulist"] = menu_list,
  ["/api/menusubmit"] = menu_submit,
  ["/api/menudelete"] = menu_delete,
  ["/api/msgcreate"] = msg_create,
  ["/api/msgsend"] = msg_send,
  ["/api/getMessageStatus"] = get_message_status,
  ["/api/mustTaskList"] = must_task_list,
  ["/api/scanrecord.jhtm"] = scan_record,
}

local TOKEN = { access_token = true } -- left out of a request's content

-- The acting interfaces go through the duplicate detector once their token is accepted. ZAFU
-- signs nothing and sends no timestamp, so nothing tells a replay from a second request: the
-- same content again (query and body but the token) is counted, never refused.
for _, path in ipairs({ "/api/menusubmit", "/api/menudelete", "/api/msgcreate", "/api/msgsend", "/api/scanrecord.jhtm" }) do
  local handler = M.routes[path]
  M.routes[path] = function(self, req)
    local res = handler(self, req)
    if res.status == 200 then -- its token was accepted (a refused one is a 401 or 403)
      self.duplicates:check(path, util.canonical(query_of(req), TOKEN) .. "|" .. util.canonical(form_of(req), TOKEN), nil, nil, false)
    end
    return res
  end
end

---------------------------------------------------------------------------- admin

-- GET /_sandbox/zafu/<name>; POST for read and expire.
M.admin = {
  -- { issued = n, refused = { expired =, invalid =, missing = } }; never a token
  tokens = function(self, req)
    if req.method ~= "GET" then return nil end
    return util.json_value({ issued = self.issued, refused = self.refused })
  end,
  messages = function(self, req)
    if req.method ~= "GET" then return nil end
    return util.json_value(self.messages)
  end,
  scans = function(self, req)
    if req.method ~= "GET" then return nil end
    return util.json_value(self.scans)
  end,
  menus = function(self, req)
    if req.method ~= "GET" then return nil end
    return util.json_value(self.menus)
  end,
  -- POST {"id": n}: the user read message n (getMessageStatus then reports it read)
  read = function(self, req)
    if req.method ~= "POST" then return nil end
    local body = util.json_decode(req.body ~= "" and req.body or "{}")
    local id = type(body) == "table" and tonumber(body.id)
    for _, m in ipairs(self.messages) do
      if m.via == "msgsend" and m.id == id then
        m.is_read = "1"
        m.read_date = math.floor(self.now() * 1000)
        return util.json_value({ ok = true })
      end
    end
    return util.json_value({ error = "no message " .. tostring(id) }, 404)
  end,
  -- POST: every current token expires now (to see the expired-token path without waiting)
  expire = function(self, req)
    if req.method ~= "POST" then return nil end
    for _, cur in pairs(self.tokens) do cur.expires_at = self.now() end
    return util.json_value({ ok = true })
  end,
}

return M
