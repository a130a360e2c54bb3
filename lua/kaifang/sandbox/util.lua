-- Helpers the sandbox's platform modules share: form parsing, canonical strings, JSON.
-- Deliberately independent of the client pipeline (kaifang.core's signer and encoders), so the
-- sandbox checks what was actually sent instead of agreeing with the client's own mistakes.
local cjson = require "cjson"
local core = require "kaifang.core" -- its HTTP client only, for the platforms' callbacks

local M = {}

local byte, char, concat, sort = string.byte, string.char, table.concat, table.sort

-- Raw byte order, whatever the C locale says (Lua's `<` on strings goes through strcoll).
function M.bytes_less(a, b)
  local n = #a < #b and #a or #b
  for i = 1, n do
    local x, y = byte(a, i), byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

local function unescape(s)
  s = s:gsub("+", " ")
  -- a '%' must start exactly two hex digits
  for pos in s:gmatch("()%%") do
    if not s:sub(pos + 1, pos + 2):match("^%x%x$") then return nil end
  end
  return (s:gsub("%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end
M.unescape = unescape

-- application/x-www-form-urlencoded -> { name = value } (the last of repeated names wins, as
-- PHP's $_POST has it), or nil, err for malformed percent-escapes.
function M.parse_form(body)
  local params = {}
  if body == nil or body == "" then return params end
  for pair in (body .. "&"):gmatch("([^&]*)&") do
    if pair ~= "" then
      local k, v = pair:match("^([^=]*)=(.*)$")
      if not k then k, v = pair, "" end
      local dk, dv = unescape(k), unescape(v)
      if dk == nil or dv == nil then
        return nil, "malformed percent-encoding in " .. (dk == nil and "name" or "value of " .. dk)
      end
      if dk ~= "" then params[dk] = dv end
    end
  end
  return params
end

-- "k=v&k=v" over params, names sorted by bytes, values unencoded, skipping names in `exclude`
-- (a set) and, when drop_empty, empty values. With `leave_out` (a set), also the same string
-- without those names: a signed request's content without its timestamp, in the same pass.
function M.canonical(params, exclude, drop_empty, leave_out)
  local keys = {}
  for k, v in pairs(params) do
    if not (exclude and exclude[k]) and not (drop_empty and v == "") then keys[#keys + 1] = k end
  end
  sort(keys, M.bytes_less)
  local parts, rest = {}, leave_out and {}
  for i, k in ipairs(keys) do
    local pair = k .. "=" .. params[k]
    parts[i] = pair
    if rest and not leave_out[k] then rest[#rest + 1] = pair end
  end
  return concat(parts, "&"), rest and concat(rest, "&")
end

-- Content-Type checks by media type, ignoring parameters and case.
function M.is_form(headers)
  local ct = headers and headers["content-type"] or ""
  return ct:lower():match("^%s*application/x%-www%-form%-urlencoded%s*[;]?") ~= nil
end

function M.is_json(headers)
  local ct = headers and headers["content-type"] or ""
  return ct:lower():match("^%s*application/json") ~= nil
end

---------------------------------------------------------------------------- JSON
-- cjson cannot tell an empty array from an empty object and prints big integers in exponent
-- form, so the sandbox writes its own JSON; cjson is used for strings and for decoding.

M.json_null = cjson.null -- what json_decode gives for null

M.array_mt = { __name = "kaifang.sandbox.array" }
local raw_mt = { __name = "kaifang.sandbox.rawjson" }

-- A table encoded as a JSON array even when empty.
function M.array(t) return setmetatable(t or {}, M.array_mt) end

-- A literal JSON fragment, written as is (e.g. a phone number as a JSON number).
function M.raw(text) return setmetatable({ text }, raw_mt) end

local encode

local function encode_number(n)
  if n ~= n or n == math.huge or n == -math.huge then return "null" end
  -- integral values print without exponent or ".0" (also on Lua 5.1, which has no integers)
  if n == math.floor(n) and n > -2 ^ 53 and n < 2 ^ 53 then return string.format("%.0f", n) end
  return string.format("%.14g", n)
end

function encode(v)
  local t = type(v)
  if v == nil or v == cjson.null then return "null" end
  if t == "boolean" then return v and "true" or "false" end
  if t == "number" then return encode_number(v) end
  if t == "string" then return cjson.encode(v) end
  if t ~= "table" then error("kaifang.sandbox: cannot encode a " .. t .. " as JSON") end
  local mt = getmetatable(v)
  if mt == raw_mt then return v[1] end
  if mt == M.array_mt or (next(v) ~= nil and v[1] ~= nil) then
    local parts = {}
    for i = 1, #v do parts[i] = encode(v[i]) end
    return "[" .. concat(parts, ",") .. "]"
  end
  if next(v) == nil then return "{}" end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = tostring(k) end
  sort(keys, M.bytes_less) -- stable output, easy to diff
  local parts = {}
  for i, k in ipairs(keys) do
    local val = v[k]
    if val == nil then val = v[tonumber(k)] end
    parts[i] = cjson.encode(k) .. ":" .. encode(val)
  end
  return "{" .. concat(parts, ",") .. "}"
end
M.json_encode = encode

-- JSON text -> value, or nil, err.
function M.json_decode(text)
  local ok, v = pcall(cjson.decode, text)
  if not ok then return nil, "invalid JSON: " .. tostring(v) end
  return v
end

-- A table's keys in order, for listings that read the same every time.
function M.sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  return keys
end

function M.copy(t)
  if type(t) ~= "table" then return t end
  local c = {}
  for k, v in pairs(t) do c[k] = M.copy(v) end
  return setmetatable(c, getmetatable(t))
end

---------------------------------------------------------------------------- responses
-- A handler's answer: { status=, headers=, body= } plus optional delay= (seconds),
-- drop= ("close" | "reset") or hold=true (never answered); kaifang.sandbox acts on those.

local JSON_TYPE = "application/json; charset=utf-8"

function M.json_response(body_text, status)
  return { status = status or 200, headers = { ["Content-Type"] = JSON_TYPE }, body = body_text }
end

function M.json_value(value, status) return M.json_response(encode(value), status) end

function M.text_response(status, text, headers)
  local h = { ["Content-Type"] = "text/plain; charset=utf-8" }
  for k, v in pairs(headers or {}) do h[k] = v end
  return { status = status, headers = h, body = text }
end

function M.err_json(status, message) return M.json_value({ error = message }, status) end

-- An admin call's arguments: the query of a GET, else a JSON object body (none: {}).
-- Returns the table or nil, reply.
function M.admin_params(req)
  if req.method == "GET" then return M.parse_form(req.query) or {} end
  if req.body == nil or req.body == "" then return {} end
  local v = M.json_decode(req.body)
  if type(v) ~= "table" then return nil, M.err_json(400, "expected a JSON object") end
  return v
end

---------------------------------------------------------------------------- platform instances
-- Methods the platform modules' instances share (each has config, clock, seq and admitted).

function M.next_id(self)
  self.seq = self.seq + 1
  return self.seq
end

-- Whether a call from `id` fits config.rate (calls a second; nil: unlimited). A sliding
-- one-second window over admitted calls; rejected ones do not count, so a client that backs
-- off gets through again after a second.
function M.admit(self, id)
  local rate = self.config.rate
  if rate == nil then return true end
  local q = self.admitted[id]
  if not q then
    q = { first = 1, last = 0 }
    self.admitted[id] = q
  end
  local now = self.clock()
  while q.first <= q.last and q[q.first] <= now - 1 do
    q[q.first] = nil
    q.first = q.first + 1
  end
  if q.last - q.first + 1 >= rate then return false end
  q.last = q.last + 1
  q[q.last] = now
  return true
end

---------------------------------------------------------------------------- callbacks

-- Whether url points back at this sandbox, which cannot answer while it is busy sending.
function M.loops_back(url, req)
  local own = (req.headers and req.headers.host or ""):lower()
  local own_port = own:match(":(%d+)$") or "80"
  local authority = url:match("^%a+://([^/?#]+)")
  if not authority then return false end
  authority = authority:lower():gsub("^.*@", "")
  local host, port = authority:match("^%[(.*)%]:?(%d*)$")
  if not host then host, port = authority:match("^([^:]*):?(%d*)$") end
  if port == "" then port = url:match("^https:") and "443" or "80" end
  if port ~= own_port then return false end
  local own_host = own:match("^%[(.*)%]") or own:match("^([^:]*)")
  return host == own_host or host == "127.0.0.1" or host == "localhost" or host == "::1" or host == "0.0.0.0"
end

-- POSTs a callback and waits (at most config.callback_timeout) for the answer: { status=, body= }
-- or { error=, kind= }. The sandbox serves nothing meanwhile, so the receiver must be another process.
function M.post(self, url, content_type, body)
  local t = self.config.callback_timeout
  if t <= 0 then t = 0.001 end
  local session = core.http({ connect_timeout = t, timeout = t })
  local res, err = session:request({ method = "POST", url = url, headers = { ["Content-Type"] = content_type }, body = body })
  session:close()
  if res then return { status = res.status, body = res.body } end
  return { error = err.message or tostring(err.code), kind = err.kind }
end

return M
