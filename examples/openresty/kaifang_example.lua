-- The handlers of examples/openresty/nginx.conf.
local cjson = require "cjson.safe"
local kaifang = require "kaifang"
local kngx = require "kaifang.ngx"

local M = {}

local function env(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then return default end
  return v
end

local conf
local clients = {}

-- In the master, while nginx reads its configuration (after kaifang.ngx.init()): the settings
-- (nginx passes only the variables named by `env` directives) and one client per platform, which
-- every worker inherits. Inside nginx a client's default transport is
-- kaifang.transport.ngx_thread: its calls run in the `kaifang` thread pool and the request waits
-- without blocking the worker.
function M.init()
  conf = {
    lingdian = {
      base_url = env("KAIFANG_LINGDIAN_URL", "http://127.0.0.1:8091"), -- the sandbox by default
      developer_code = env("KAIFANG_LINGDIAN_CODE", "U2QHNB2w="),
      developer_key = env("KAIFANG_LINGDIAN_KEY", "744ed968e7e1a4aebafa6f4888fced68"),
      timeout = 10,
    },
    link = env("KAIFANG_LINGDIAN_LINK", "https://szai.0xiao.com/"),
    yopoint = {
      appid = env("KAIFANG_YOPOINT_APPID", "930859529955"),
      app_secret = env("KAIFANG_YOPOINT_SECRET", "example-app-secret"),
      sign_key = env("KAIFANG_YOPOINT_SIGNKEY", "example-sign-key"),
    },
    dakashi_allow = env("KAIFANG_DAKASHI_ALLOW"), -- comma-separated addresses; unset: any
  }
  clients.lingdian = kaifang.lingdian.new(conf.lingdian)
  clients.yopoint = kaifang.yopoint.new(conf.yopoint)
end

local function lingdian() return clients.lingdian end
local function yopoint() return clients.yopoint end

local function reply(status, value)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json; charset=utf-8"
  ngx.say(cjson.encode(value))
  return ngx.exit(ngx.OK)
end

-- POST /notify  tel=&content=[&link=] as a form or a JSON object.
function M.notify()
  if ngx.req.get_method() ~= "POST" then return reply(405, { error = "POST a notice" }) end
  ngx.req.read_body()
  local args
  local ctype = ngx.var.content_type or ""
  if ctype:find("json", 1, true) then
    args = cjson.decode(ngx.req.get_body_data() or "")
  else
    args = ngx.req.get_post_args(20)
  end
  if type(args) ~= "table" or type(args.tel) ~= "string" or type(args.content) ~= "string" then
    return reply(400, { error = "tel and content are required" })
  end
  local res, err = lingdian():send_wechat_message{ tel = args.tel, content = args.content, link = args.link or conf.link }
  if res then return reply(200, { sent = true, message = res.message }) end
  if err.unreachable then
    -- the document's advice: a user WeChat cannot reach gets the notice by another channel
    return reply(200, { sent = false, unreachable = true, reason = err.message, advice = "send it by SMS" })
  end
  ngx.log(ngx.ERR, "notice to ", args.tel, " failed: ", tostring(err))
  return reply(err.kind == "argument" and 400 or 502, { sent = false, error = tostring(err), retryable = err.retryable })
end

-- Yopoint's order notices: take each once, answer "success" (kaifang.ngx does the answering).
function M.yopoint_notify()
  return kngx.yopoint_notify(yopoint(), function(notice)
    ngx.log(ngx.NOTICE, "yopoint notice ", notice.method or "", ": ", notice.biz_content or "")
    -- store it, queue the delivery, ...; raise or return nil, err to have Yopoint send it again
  end)
end

-- Yopoint sends the buyer here to pay: look the order up and take payment (here: a stand-in page).
function M.yopoint_pay()
  return kngx.yopoint_pay(yopoint(), function(r)
    return {
      status = 200,
      headers = { ["Content-Type"] = "text/html; charset=utf-8" },
      body = "<p>Pay for order " .. ngx.escape_uri(r.receipt_no) .. "</p>",
    }
  end)
end

-- Dakashi's recharge and on/off callbacks (unsigned: give the platform's addresses in
-- KAIFANG_DAKASHI_ALLOW where you can).
function M.dakashi_callback()
  local allow
  if conf.dakashi_allow then
    allow = {}
    for a in conf.dakashi_allow:gmatch("[^,%s]+") do allow[#allow + 1] = a end
  end
  return kngx.dakashi_callback(function(cb)
    ngx.log(ngx.NOTICE, "dakashi ", cb.action, " for card ", tostring(cb.serial_no or cb.iccid or "?"))
  end, { allow = allow })
end

-- Lingdian's delivery callback (its format is inferred: see kaifang.ngx).
function M.lingdian_callback()
  return kngx.lingdian_callback(lingdian(), function(fields)
    ngx.log(ngx.NOTICE, "lingdian delivery callback for ", fields.tel or "?", ": ", fields.message or "")
  end)
end

return M
