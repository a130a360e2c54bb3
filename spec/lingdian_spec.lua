-- Every Lingdian Campus interface and every documented error, through the client, against the
-- sandbox over real HTTP.
local kaifang = require "kaifang"
local sandbox = require "kaifang.sandbox"

local CODE, KEY = "U2QHNB2w=", "744ed968e7e1a4aebafa6f4888fced68"
local here, raises_at_line = require("spec.helpers.raises")("lingdian_spec.lua")
local LINK = "https://szai.0xiao.com/info/info_detail?info_id=165"

describe("kaifang.lingdian against the sandbox", function()
  local sb, ld

  setup(function()
    sb = sandbox.start{ port = 0 }
    ld = kaifang.lingdian.new{ developer_code = CODE, developer_key = KEY, base_url = sb.url, timeout = 5 }
  end)

  teardown(function()
    if ld then ld:close() end
    if sb then sb:stop() end
  end)

  before_each(function()
    assert(sb:reset())
  end)

  local function records(kind)
    return assert(sb:records("lingdian", kind))
  end

  local function assert_platform_error(err, code, message)
    assert.is_table(err)
    assert.are.equal("lingdian", err.platform)
    assert.are.equal("platform", err.kind)
    assert.are.equal(code, err.code)
    assert.are.equal(message, err.message)
    assert.are.equal(200, err.http_status)
    assert.is_false(err.maybe_sent)
    assert.are.equal(("kaifang.lingdian: platform error %d: %s"):format(code, message), tostring(err))
  end

  describe("A send_wechat_message", function()
    it("delivers a notice, and the sandbox received exactly what was signed", function()
      local res, err = ld:send_wechat_message{ tel = "13311112222", content = "取件码 6-2-3001，请到前台取件", link = LINK }
      assert.is_nil(err)
      assert.are.equal(100, res.code)
      assert.are.equal("请求成功且发送微信客服消息成功", res.message)
      local got = records("messages")
      assert.are.equal(1, #got)
      assert.are.equal("13311112222", got[1].params.tel)
      assert.are.equal("取件码 6-2-3001，请到前台取件", got[1].params.content)
      assert.are.equal(LINK, got[1].params.link)
      assert.are.equal("1", got[1].params.type) -- signed and sent though the body table omits it
    end)

    it("reports a user who does not follow the official account (106) as unreachable", function()
      local res, err = ld:send_wechat_message{ tel = "13311114444", content = "x", link = LINK }
      assert.is_nil(res)
      assert_platform_error(err, 106, "该用户未关注公众号，请提示其关注公众号")
      assert.is_true(err.unreachable)
      assert.is_false(err.retryable)
      assert.are.equal(0, #records("messages"))
    end)

    it("reports an unknown user (105) as unreachable", function()
      local _, err = ld:send_wechat_message{ tel = "13399990000", content = "x", link = LINK }
      assert_platform_error(err, 105, "用户不存在")
      assert.is_true(err.unreachable)
    end)

    it("refuses a link that is not on the whitelist", function()
      local _, err = ld:send_wechat_message{ tel = "13311112222", content = "x", link = "https://evil.example/" }
      assert_platform_error(err, 104, "请求参数错误：访问链接未被加入白名单")
      assert.is_nil(err.unreachable)
    end)

    it("refuses a malformed phone number", function()
      local _, err = ld:send_wechat_message{ tel = "12345", content = "x", link = LINK }
      assert_platform_error(err, 104, "请求参数错误：手机号为空或格式不正确")
    end)

    it("accepts the phone number as a Lua integer", function()
      local res = assert(ld:send_wechat_message{ tel = 13311113333, content = "x", link = LINK })
      assert.are.equal(100, res.code)
      assert.are.equal("13311113333", records("messages")[1].params.tel)
    end)

    it("signs = and & inside values and multi-byte text correctly (the sandbox verifies)", function()
      local content = "a=b&c=d 100% ✓ 同学＆老师"
      assert(ld:send_wechat_message{ tel = "13311112222", content = content, link = LINK .. "&x=1" })
      assert.are.equal(content, records("messages")[1].params.content)
    end)
  end)

  describe("B get_user_tel_by_code", function()
    it("returns the reply, the phone number at data as a string, and nothing else", function()
      assert.are.equal(1, select("#", ld:get_user_tel_by_code{ user_code = "U2TD844B2" }))
      local res = ld:get_user_tel_by_code{ user_code = "U2TD844B2" }
      assert.are.equal("13311112222", res.data) -- the reply carries it as a JSON number
      assert.are.equal(100, res.code)
      assert.are.equal("请求成功且返回了手机号", res.message)
    end)

    it("unknown code: 105", function()
      local tel, err = ld:get_user_tel_by_code{ user_code = "NOSUCHCODE" }
      assert.is_nil(tel)
      assert_platform_error(err, 105, "该用户码不存在，请使用零点校园用户身份码")
    end)

    it("no bound phone: 106", function()
      local _, err = ld:get_user_tel_by_code{ user_code = "U2TD847E5" }
      assert_platform_error(err, 106, "该用户还没绑定手机号，请提示其绑定")
      assert.is_nil(err.unreachable) -- only interface A's 105/106 mean "use another channel"
    end)
  end)

  describe("C outer_entry_order", function()
    it("enters an order with every optional field", function()
      local res = assert(ld:outer_entry_order{ shop_code = "U2TD844B2", order_type = 1, daily_number = 7,
        tel = "13311112222", send_cont = "从二号门进", building_code = "BTEGNAZl" })
      assert.are.equal(100, res.code)
      assert.are.equal("发入成功", res.message)
      local got = records("orders")
      assert.are.equal(1, #got)
      assert.are.equal("7", got[1].params.daily_number)
      assert.are.equal("128", got[1].params.type)
      assert.are.equal("从二号门进", got[1].params.send_cont)
    end)

    it("enters an order with the optional fields left out", function()
      assert(ld:outer_entry_order{ shop_code = "U2SHOP001", order_type = "5", daily_number = "12" })
      local p = records("orders")[1].params
      assert.is_nil(p.tel)
      assert.is_nil(p.building_code)
    end)

    it("unknown shop: refused as without permission", function()
      local _, err = ld:outer_entry_order{ shop_code = "NOPE", order_type = 2, daily_number = 1 }
      assert_platform_error(err, 104, "请求参数错误：您不是开发者或没有对应权限")
      assert.are.equal(0, #records("orders"))
    end)
  end)

  describe("D user_card_remind", function()
    local DEV_TEL = "12345678910" -- the sandbox's developer registered the document's example phone

    it("tel is 开发者手机号 (the document's table: tel | 12345678910 | 开发者手机号): the client option developer_tel", function()
      local dev = kaifang.lingdian.new{ developer_code = CODE, developer_key = KEY, developer_tel = DEV_TEL, base_url = sb.url }
      local res = assert(dev:user_card_remind{ msisdn = "1410139903", iccid = "8986112025304",
        remind = "流量套餐要到期了", expire_time = "2022年12月12日" })
      dev:close()
      assert.are.equal(100, res.code)
      assert.are.equal("发送成功", res.message)
      local got = records("reminders")
      assert.are.equal(1, #got)
      assert.are.equal(DEV_TEL, got[1].params.tel) -- the card's user is found by msisdn/iccid
      assert.are.equal("1410139903", got[1].params.msisdn)
    end)

    it("a card user's phone as tel is refused as the developer's credentials are (验证权限失败时)", function()
      local _, err = ld:user_card_remind{ tel = "13311112222", msisdn = "1410139903", iccid = "8986112025304",
        remind = "x", expire_time = "2022年12月12日" }
      assert_platform_error(err, 104, "请求参数错误：您不是开发者或没有对应权限")
      assert(ld:user_card_remind{ tel = DEV_TEL, msisdn = "1410139903", iccid = "8986112025304",
        remind = "x", expire_time = "2022年12月12日" })
    end)

    it("without developer_tel or tel: raises, naming what tel is", function()
      local err = raises_at_line(function() here(); ld:user_card_remind{ msisdn = "1410139903", iccid = "8986112025304", remind = "x", expire_time = "y" } end)
      assert.matches("missing required parameter 'tel' %(开发者手机号, the developer's own phone", err)
      assert.matches("developer_tel", err)
      err = raises_at_line(function() here(); kaifang.lingdian.new{ developer_code = CODE, developer_key = KEY, developer_tel = 123 } end)
      assert.matches("'developer_tel'", err)
    end)

    it("a batch fills tel from developer_tel too, and reports a call without either as an argument error", function()
      local dev = kaifang.lingdian.new{ developer_code = CODE, developer_key = KEY, developer_tel = DEV_TEL, base_url = sb.url }
      local args = { msisdn = "1410139904", iccid = "8986112025305", remind = "x", expire_time = "2022年12月12日" }
      local results = {}
      local summary = kaifang.batch({ { dev, "user_card_remind", args }, { ld, "user_card_remind", args } },
        { on_result = function(i, res, err) results[i] = res or err end })
      dev:close()
      assert.are.equal(1, summary.ok)
      assert.are.equal(100, results[1].code)
      assert.are.equal("argument", results[2].kind)
      assert.matches("'tel' %(开发者手机号", results[2].message)
    end)

    it("a card not issued to this developer: 卡未出库", function()
      local _, err = ld:user_card_remind{ tel = DEV_TEL, msisdn = "1400000000", iccid = "8986000000000",
        remind = "x", expire_time = "2022年12月12日" }
      assert_platform_error(err, 104, "卡未出库")
    end)
  end)

  describe("platform-wide errors", function()
    it("a wrong developer_key: 您不是开发者或没有对应权限, and the key is nowhere in the error", function()
      local bad = kaifang.lingdian.new{ developer_code = CODE, developer_key = "0123456789abcdef", base_url = sb.url }
      local _, err = bad:send_wechat_message{ tel = "13311112222", content = "x", link = LINK }
      assert_platform_error(err, 104, "请求参数错误：您不是开发者或没有对应权限")
      assert.is_nil(tostring(err):find("0123456789abcdef", 1, true))
      bad:close()
    end)

    it("an unknown developer_code", function()
      local bad = kaifang.lingdian.new{ developer_code = "NOBODY", developer_key = KEY, base_url = sb.url }
      local _, err = bad:get_user_tel_by_code{ user_code = "U2TD844B2" }
      assert_platform_error(err, 104, "请求参数错误：您不是开发者或没有对应权限")
      bad:close()
    end)

    it("a clock outside the timestamp window, or ahead of the platform's: 请求超时", function()
      for _, skew in ipairs({ -3600, 60 }) do
        local skewed = kaifang.lingdian.new{ developer_code = CODE, developer_key = KEY, base_url = sb.url,
                                             clock = function() return os.time() + skew end }
        local _, err = skewed:send_wechat_message{ tel = "13311112222", content = "x", link = LINK }
        assert_platform_error(err, 104, "请求超时")
        skewed:close()
      end
    end)

    it("the same signed notice twice: the second refused (信息已过期请重试) and counted; the same read twice passes", function()
      local t0 = os.time()
      local fixed = kaifang.lingdian.new{ developer_code = CODE, developer_key = KEY, base_url = sb.url, clock = function() return t0 end }
      assert(fixed:get_user_tel_by_code{ user_code = "U2TD844B2" })
      assert(fixed:get_user_tel_by_code{ user_code = "U2TD844B2" })
      assert(fixed:send_wechat_message{ tel = "13311112222", content = "取件码 6-2-3001", link = LINK })
      local _, err = fixed:send_wechat_message{ tel = "13311112222", content = "取件码 6-2-3001", link = LINK }
      assert_platform_error(err, 104, "请求参数错误：信息已过期请重试")
      assert.is_false(err.retryable)
      fixed:close()
      assert.are.equal(1, #records("messages"))
      local c = assert(sb:counters()).lingdian
      assert.are.equal(1, c.duplicates)
      assert.are.equal(1, c.refused)
    end)

    it("too frequent (104) past the configured rate, and only that 104 is retryable", function()
      assert(sb:configure{ lingdian = { rate = 3 } })
      local refused
      for _ = 1, 10 do
        local tel, err = ld:get_user_tel_by_code{ user_code = "U2TD844B2" }
        if not tel then refused = err break end
      end
      assert(sb:configure{ lingdian = { rate = require("cjson").null } })
      assert.is_table(refused)
      assert_platform_error(refused, 104, "请求过于频繁，请稍后再试吧！")
      assert.is_true(refused.retryable)
    end)

    it("an HTTP error page maps to kind http", function()
      local lost = kaifang.lingdian.new{ developer_code = CODE, developer_key = KEY, base_url = sb.url .. "/nowhere" }
      local _, err = lost:get_user_tel_by_code{ user_code = "U2TD844B2" }
      assert.are.equal("http", err.kind)
      assert.are.equal(404, err.http_status)
      assert.is_true(err.retryable) -- a read may be repeated
      local _, err2 = lost:send_wechat_message{ tel = "13311112222", content = "x", link = LINK }
      assert.are.equal("http", err2.kind)
      assert.is_false(err2.retryable) -- an action may not
      lost:close()
    end)
  end)
end)
