-- Lingdian Campus (零点校园): MD5-signed form posts; code 100 is success.
local core = require "kaifang.core"
local client = require "kaifang.client"

local M = {}

local ORDER_TYPES = { [1] = "美团", [2] = "饿了么", [3] = "百度", [4] = "滴滴", [5] = "其他" }

local Lingdian = client.define("lingdian", {
  -- A: a free WeChat customer-service notice to the user with this phone number
  send_wechat_message = {
    path = "/api/Developer/sendWeChatMessage", type = 1, acts = true,
    params = { tel = "text!", content = "text!", link = "text!" },
  },
  -- B: a Lingdian user's identity code to the phone number bound to it
  get_user_tel_by_code = {
    path = "/api/Developer/getUserTelByCode", type = 16, acts = false,
    params = { user_code = "text!" },
  },
  -- C: an outside order into the campus delivery team
  outer_entry_order = {
    path = "/keloop/api/outerEntryOrder", type = 128, acts = true,
    params = { shop_code = "text!", order_type = "integer!", daily_number = "integer!",
               tel = "text", send_cont = "text", building_code = "text" },
    check = function(args)
      if not ORDER_TYPES[tonumber(args.order_type)] then
        return "parameter 'order_type' must be 1 (美团), 2 (饿了么), 3 (百度), 4 (滴滴) or 5 (其他)"
      end
    end,
  },
  -- D: an IoT-card reminder (package expiry or usage threshold) to the user of the card msisdn/
  -- iccid. Its tel is "开发者手机号", the developer's own phone: the client option developer_tel.
  user_card_remind = {
    path = "/api/Developer/userCardRemind", acts = true, developer_tel = true,
    params = { tel = "text", msisdn = "text!", iccid = "text!", remind = "text!", expire_time = "text!" },
    check = function(args, c)
      if (args.tel == nil or args.tel == "") and not (c and c.developer_tel) then
        return "missing required parameter 'tel' (开发者手机号, the developer's own phone, not the card user's: "
          .. "set the client option developer_tel)"
      end
    end,
  },
})

M.Client = Lingdian
M.ORDER_TYPES = ORDER_TYPES

-- kaifang.lingdian.new{ developer_code=, developer_key=, developer_tel=, base_url="https://www.0xiao.com",
--                      timeout=15, ... }; developer_tel: the phone registered for the developer (D's tel)
function M.new(opts)
  local self = client.new(Lingdian, opts, { -- not a tail call: client.new raises at level 3, our caller
    required = { "developer_code" }, secret = "developer_key", base_url = "https://www.0xiao.com",
    options = { "developer_tel" },
  })
  local tel = opts.developer_tel
  if tel ~= nil and not (type(tel) == "string" and tel:match("^%d+$")) then
    error("kaifang.lingdian: option 'developer_tel' must be a phone number written as a string of digits", 2)
  end
  self.developer_tel = tel
  return self
end

function Lingdian:__tostring()
  return ("kaifang.lingdian{ developer_code = %q, base_url = %q }"):format(self.developer_code, self.base_url)
end

-- The parameters as sent: the caller's, the developer code, the interface's fixed type (signed
-- and sent even where the document's body table leaves it out), the timestamp and the sign.
function Lingdian:build_request(ep, args)
  -- named in the constructor, so that the table is sized once (adding them one by one regrows it)
  local params = { developer_code = nil, type = nil, timestamp = nil, sign = nil, tel = nil }
  for k, v in next, args do params[k] = v end
  params.developer_code = self.developer_code
  if ep.developer_tel and (params.tel == nil or params.tel == "") then params.tel = self.developer_tel end
  params.type = ep.type
  params.timestamp = math.floor(self.clock()) -- seconds (README: "What the documents leave open")
  local signed = client.sign(self, params)
  return {
    method = "POST",
    url = self:url(ep.path),
    headers = { ["Content-Type"] = "application/x-www-form-urlencoded" },
    body = core.form_encode(params),
    signed = signed,
  }
end

local function too_frequent(message)
  return type(message) == "string" and message:find("频繁", 1, true) ~= nil
end

-- cjson reads every number as a float: 13311112222 must come back as "13311112222".
local tointeger = math.tointeger -- nil on LuaJIT
local function phone_string(data)
  if type(data) == "number" then return tointeger and tointeger(data) and tostring(data) or ("%.0f"):format(data) end
  if type(data) == "string" and data ~= "" then return data end
  return nil
end

function Lingdian:interpret(ep, res)
  local doc, err = self:decode(ep, res)
  if not doc then return nil, err end
  local code = tonumber(doc.code)
  if code == 100 then
    if ep.name == "get_user_tel_by_code" then
      doc.data = phone_string(doc.data)
      if not doc.data then
        return nil, self:error{ kind = "decode", code = code, http_status = res.status, retryable = true,
                                message = "success reply without a phone number" }
      end
    end
    return doc
  end
  local message = type(doc.message) == "string" and doc.message or nil
  return nil, self:error{
    kind = "platform", code = code or doc.code, message = message, http_status = res.status,
    retryable = code == 104 and too_frequent(message),
    -- A: the user cannot be reached on WeChat; the document advises another channel (SMS)
    unreachable = ep.name == "send_wechat_message" and (code == 105 or code == 106) or nil,
  }
end

return M
