-- A child of rate_shared_spec: n notices to the Lingdian sandbox from a client whose rate is
-- shared through a store, in a batch or one call at a time.
-- Args: url kind(redis|file) where(port | path) n tag mode(batch|single) rate
-- Prints the counts as JSON: { ok =, failed =, errors = { the first few }, sent = { the wall-clock
-- time each request was handed to the transport, after its turn came } }.
local cjson = require "cjson"
local kaifang = require "kaifang"
local store = require "kaifang.store"

local url, kind, where, n, tag, mode, rate = arg[1], arg[2], arg[3], tonumber(arg[4]), arg[5], arg[6], tonumber(arg[7])
local s = kind == "redis" and store.redis{ port = tonumber(where), prefix = "rate:" } or store.file(where)
local core = require "kaifang.core"
local sent = {}
local ld = kaifang.lingdian.new{ developer_code = "U2QHNB2w=", developer_key = "744ed968e7e1a4aebafa6f4888fced68",
                                 base_url = url, timeout = 10, rate = rate, rate_store = s,
                                 on_request = function() sent[#sent + 1] = core.now() end }
local function notice(i)
  return { tel = "13311112222", content = tag .. "-" .. i, link = "https://szai.0xiao.com/r" }
end

local out = { ok = 0, failed = 0, errors = {}, sent = sent }
local function count(res, err)
  if res then out.ok = out.ok + 1 else
    out.failed = out.failed + 1
    if #out.errors < 3 then out.errors[#out.errors + 1] = tostring(err) end
  end
end
if mode == "batch" then
  local calls = {}
  for i = 1, n do calls[i] = { ld, "send_wechat_message", notice(i) } end
  kaifang.batch(calls, { concurrency = 8, on_result = function(_, res, err) count(res, err) end })
else
  for i = 1, n do count(ld:send_wechat_message(notice(i))) end
end
print(cjson.encode(out))
