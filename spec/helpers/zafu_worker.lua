-- One process of the headline test (zafu_processes_spec): `calls` calls to the ZAFU sandbox, a
-- mix of reads and acting calls, one every `interval` seconds, with its token in the given store.
-- Args: base_url kind(file|redis|memory) where(path|port|-) calls interval refresh_ahead
-- Prints one JSON line: { ok, failed, refused, fetched, waited, errors = { first few } }.
local cjson = require "cjson"
local core = require "kaifang.core"
local store = require "kaifang.store"
local zafu = require "kaifang.zafu"

local base, kind, where = arg[1], arg[2], arg[3]
local calls, interval, ahead = tonumber(arg[4]), tonumber(arg[5]), tonumber(arg[6])

local s
if kind == "file" then
  s = store.file(where)
elseif kind == "redis" then
  s = store.redis({ port = tonumber(where), prefix = "headline:" })
else
  s = store.memory()
end

local z = zafu.new({
  client_id = "zafu-demo", client_secret = "9d1f6b3c27e84a05b6c0e1f2a3d4c5b6", app_id = "01",
  base_url = base, token_store = s, refresh_ahead = ahead, timeout = 10,
})

local CALLS = {
  function() return z:must_task_list() end,
  function() return z:get_message_status{ xgh = "20121032", messageType = 5, messageTo = "https://app/headline" } end,
  function() return z:msg_send{ content = "headline", xgh = "20121032", messageType = 5, messageTo = "https://app/headline" } end,
  function() return z:menu_list() end,
}

local out = { ok = 0, failed = 0, errors = {} }
local next_at = core.monotonic()
for i = 1, calls do
  local res, err = CALLS[i % #CALLS + 1]()
  if res then
    out.ok = out.ok + 1
  else
    out.failed = out.failed + 1
    if #out.errors < 5 then out.errors[#out.errors + 1] = tostring(err) end
  end
  next_at = next_at + interval
  core.sleep(next_at - core.monotonic())
end
out.refused, out.fetched, out.waited = z.stats.refused, z.stats.fetched, z.stats.waited
print(cjson.encode(out))
