-- Child of store_spec: n times, under the store's lock, read a counter and write it back plus one.
-- A lost update means two processes held the lock at once. Args: kind (file|redis), where (path
-- or port), n, owner. Prints "done <n>" or "error <message>".
local store = require "kaifang.store"
local core = require "kaifang.core"

local kind, where, n, owner = arg[1], arg[2], tonumber(arg[3]), arg[4]
local s = kind == "file" and store.file(where) or store.redis({ port = tonumber(where), prefix = "worker:" })

for _ = 1, n do
  while true do
    local got, err = s:lock("counter-lock", owner, 5)
    if err then
      print("error " .. tostring(err))
      os.exit(1)
    end
    if got then break end
    core.sleep(0.001)
  end
  local v = tonumber((s:get("counter"))) or 0
  assert(s:set("counter", tostring(v + 1)))
  assert(s:unlock("counter-lock", owner))
end
print("done " .. n)
