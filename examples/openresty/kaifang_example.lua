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
    -- Dakashi signs nothing: its callbacks are taken only from these addresses or CIDR ranges
    -- (comma-separated; Dakashi's own in production, this machine by default, "any" for all)
    dakashi = { allow = env("KAIFANG_DAKASHI_ALLOW", "127.0.0.1, ::1") },
  }
  clients.lingdian = kaifang.lingdian.new(conf.lingdian)
  clients.yopoint = kaifang.yopoint.new(conf.yopoint)
end

-- In each worker as it starts (init_worker_by_lua): a misconfiguration (no thread pool, no shared
-- dict, a bad allow list) is one error line per problem in the error log now, not at the first request.
function M.check()
  kngx.check{
    clients = { clients.lingdian, clients.yopoint },
    handlers = { dakashi_callback = conf.dakashi, yopoint_notify = {}, yopoint_pay = {}, lingdian_callback = {} },
  }
end

local function lingdian() return clients.lingdian end
local function yopoint() return clients.yopoint end

local function reply(status, value)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json; charset=utf-8"
  ngx.say(cjson.encode(value))
  return ngx.exit(ngx.OK)
end

-- The fields of a form or JSON body, or nil and why not.
local function read_args()
  ngx.req.read_body()
  if (ngx.var.content_type or ""):find("json", 1, true) then
    local doc = cjson.decode(ngx.req.get_body_data() or "")
    if type(doc) ~= "table" then return nil, "the body is not a JSON object (or is too large)" end
    return doc
  end
  local args, err = ngx.req.get_post_args(20)
  if not args then return nil, "unreadable form: " .. tostring(err) end
  return args
end

local function text_field(args, name, required)
  local v = args[name]
  if v == nil and not required then return nil end
  if type(v) ~= "string" or v == "" or #v > 2000 then return nil, name .. " must be a non-empty string" end
  return v
end

-- POST /notify  tel=&content=[&link=] as a form or a JSON object. Bad input is a 400 with a JSON
-- body saying what is wrong, never nginx's error page.
function M.notify()
  if ngx.req.get_method() ~= "POST" then return reply(405, { error = "POST a notice" }) end
  local args, why = read_args()
  if not args then return reply(400, { error = why }) end
  local tel, terr = text_field(args, "tel", true)
  local content, cerr = text_field(args, "content", true)
  local link, lerr = text_field(args, "link", false)
  if terr or cerr or lerr then return reply(400, { error = terr or cerr or lerr }) end
  if not tel:match("^1%d%d%d%d%d%d%d%d%d%d$") then return reply(400, { error = "tel must be an 11-digit mobile number" }) end
  -- the client raises on what it cannot send (a programmer's error): a 400 too
  local ok, res, err = pcall(lingdian().send_wechat_message, lingdian(), { tel = tel, content = content, link = link or conf.link })
  if not ok then return reply(400, { error = tostring(res) }) end
  if res then return reply(200, { sent = true, message = res.message }) end
  if err.unreachable then
    -- the document's advice: a user WeChat cannot reach gets the notice by another channel
    return reply(200, { sent = false, unreachable = true, reason = err.message, advice = "send it by SMS" })
  end
  ngx.log(ngx.ERR, "notice to ", tel, " failed: ", tostring(err))
  return reply(502, { sent = false, error = tostring(err), retryable = err.retryable })
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

-- Dakashi's recharge and on/off callbacks: unsigned, so taken only from conf.dakashi.allow.
function M.dakashi_callback()
  return kngx.dakashi_callback(function(cb)
    ngx.log(ngx.NOTICE, "dakashi ", cb.action, " for card ", tostring(cb.serial_no or cb.iccid or "?"))
  end, conf.dakashi)
end

-- Lingdian's delivery callback (its format is inferred: see kaifang.ngx).
function M.lingdian_callback()
  return kngx.lingdian_callback(lingdian(), function(fields)
    ngx.log(ngx.NOTICE, "lingdian delivery callback for ", fields.tel or "?", ": ", fields.message or "")
  end)
end

return M
