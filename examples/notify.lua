-- Send a WeChat notice to each user through Lingdian Campus; where the platform cannot reach a
-- user on WeChat, say so: that notice has to go by another channel (SMS), as the document advises.
--
--   KAIFANG_LINGDIAN_URL=http://127.0.0.1:8080 lua5.4 examples/notify.lua
-- Credentials come from KAIFANG_LINGDIAN_CODE / KAIFANG_LINGDIAN_KEY (the sandbox's demo
-- credentials by default).
local kaifang = require "kaifang"

local ld = kaifang.lingdian.new{
  developer_code = os.getenv("KAIFANG_LINGDIAN_CODE") or "U2QHNB2w=",
  developer_key = os.getenv("KAIFANG_LINGDIAN_KEY") or "744ed968e7e1a4aebafa6f4888fced68",
  base_url = os.getenv("KAIFANG_LINGDIAN_URL") or "http://127.0.0.1:8080",
}

local students = {
  { name = "王同学", tel = "13311112222" },
  { name = "李同学", tel = "13311113333" },
  { name = "张同学", tel = "13311114444" },  -- has not followed the official account
  { name = "赵同学", tel = "13399990000" },  -- not a Lingdian user
}

local delivered, by_other_channel, failed = 0, {}, 0
for _, s in ipairs(students) do
  local ok, err = ld:send_wechat_message{
    tel = s.tel,
    content = s.name .. "你好，你干洗的衣服已经熨烫好了，放在店前台处，记得过来取哟。",
    link = "https://szai.0xiao.com/info/info_detail?info_id=165",
  }
  if ok then
    delivered = delivered + 1
    print(("  sent      %s %s"):format(s.tel, s.name))
  elseif err.unreachable then
    by_other_channel[#by_other_channel + 1] = s
    print(("  by SMS    %s %s: %s"):format(s.tel, s.name, err.message))
  else
    failed = failed + 1
    print(("  FAILED    %s %s: %s"):format(s.tel, s.name, tostring(err)))
  end
end

print(("%d delivered on WeChat, %d to send by another channel, %d failed"):format(
  delivered, #by_other_channel, failed))
os.exit(failed == 0)
