-- A child of the journal specs: a batch of `n` notices to the Lingdian sandbox with a journal.
-- Args: url kind(sqlite|redis) where(path | port) n tag concurrency [prefix lease]
-- Notice i goes to one of two followers with content "<tag>-<i>". Prints "settled <n>" every 20
-- outcomes (flushed, so that a parent can kill it at a chosen moment), then the summary as JSON.
local cjson = require "cjson"
local kaifang = require "kaifang"
local journal = require "kaifang.journal"

io.stdout:setvbuf("line")
local url, kind, where, n, tag, concurrency, prefix, lease = arg[1], arg[2], arg[3], tonumber(arg[4]), arg[5],
  tonumber(arg[6]), arg[7], tonumber(arg[8])

local j
if kind == "sqlite" then
  j = journal.sqlite(where)
else
  j = journal.redis{ port = tonumber(where), prefix = prefix, lease = lease }
end
local ld = kaifang.lingdian.new{ developer_code = "U2QHNB2w=", developer_key = "744ed968e7e1a4aebafa6f4888fced68",
                                 base_url = url, timeout = 10 }
local TELS = { "13311112222", "13311113333" }
local i = 0
local settled = 0
local summary = kaifang.batch(function()
  i = i + 1
  if i > n then return nil end
  return { ld, "send_wechat_message", { tel = TELS[i % 2 + 1], content = tag .. "-" .. i, link = "https://szai.0xiao.com/j" } }
end, {
  concurrency = concurrency, journal = j,
  on_result = function()
    settled = settled + 1
    if settled % 20 == 0 then print("settled " .. settled) end
  end,
})
summary.error = summary.error and tostring(summary.error) or nil
print(cjson.encode(summary))
j:close()
