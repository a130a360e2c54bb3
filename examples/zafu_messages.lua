-- A notice to ZAFU users through the campus app, then whether each was read: the access token
-- (fetched once, shared through the token store), the menus and must-do tasks, msgsend with a
-- dataKey of our own per notice, and getMessageStatus finding each notice again by that key.
--
--   KAIFANG_ZAFU_URL=http://127.0.0.1:8080 lua5.4 examples/zafu_messages.lua
-- Credentials come from KAIFANG_ZAFU_CLIENT_ID, KAIFANG_ZAFU_CLIENT_SECRET and KAIFANG_ZAFU_APP_ID
-- (the sandbox's demo account by default).
local kaifang = require "kaifang"

local function env(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then return default end
  return v
end

local z = kaifang.zafu.new{
  client_id = env("KAIFANG_ZAFU_CLIENT_ID", "zafu-demo"),
  client_secret = env("KAIFANG_ZAFU_CLIENT_SECRET", "9d1f6b3c27e84a05b6c0e1f2a3d4c5b6"),
  app_id = env("KAIFANG_ZAFU_APP_ID", "01"),
  base_url = env("KAIFANG_ZAFU_URL", "http://127.0.0.1:8080"),
}

local function must(res, err, what)
  if not res then
    print(("  FAILED    %s: %s"):format(what, tostring(err)))
    os.exit(1)
  end
  return res
end

-- The menus and the must-do tasks: reads, each with the one token.
for _, menu in ipairs(must(z:menu_list()).data) do
  local children = {}
  for i, child in ipairs(menu.childs or {}) do children[i] = child.name end
  print(("  menu      %s %s: %s"):format(menu.id, menu.name, table.concat(children, ", ")))
end
for _, task in ipairs(must(z:must_task_list()).data) do
  print(("  task      %s %s"):format(task.id, task.title))
end

-- One notice per student; the dataKey (ours: the run and the student) finds it again later.
local students = {
  { xgh = "20121032", name = "张三" },
  { xgh = "20230417", name = "李四" },
  { xgh = "20999999", name = "无此人" },  -- not a ZAFU user: the platform refuses it
}
local link = "https://open.zafu.edu.cn/notice/2024-17"
local run = os.date("!%Y%m%d%H%M%S")
local sent, refused = {}, 0
for _, s in ipairs(students) do
  local key = "notice-" .. run .. "-" .. s.xgh
  local res, err = z:msg_send{
    content = s.name .. "同学：图书馆周六闭馆维护，请提前归还到期图书。",
    xgh = s.xgh, messageType = 5, messageTo = link, dataKey = key,
  }
  if res then
    sent[#sent + 1] = { student = s, key = key }
    print(("  sent      %s %s (dataKey %s)"):format(s.xgh, s.name, key))
  elseif err.kind == "platform" then
    refused = refused + 1
    print(("  refused   %s %s: %s"):format(s.xgh, s.name, err.message))
  else
    must(nil, err, "msg_send " .. s.xgh)
  end
end

-- Read back: the notices under our keys, and whether each was read.
local unread = 0
for _, m in ipairs(sent) do
  local res = must(z:get_message_status{ xgh = m.student.xgh, messageType = 5, messageTo = link, dataKey = m.key },
                   "get_message_status " .. m.student.xgh)
  for _, status in ipairs(res.data) do
    if status.is_read ~= "1" then unread = unread + 1 end
    print(("  status    %s message %s: %s"):format(m.student.xgh, status.id, status.is_read == "1" and "read" or "unread"))
  end
end

print(("%d sent, %d refused, %d unread; %d token fetched"):format(#sent, refused, unread, z.stats.fetched))
