-- How the command line shows values: indented JSON (`kaifang call`), Lua-like tables (the REPL)
-- and aligned columns (`kaifang sandbox`).
local M = {}

local null = require("cjson.safe").null -- how decoded replies hold JSON null

local concat, rep = table.concat, string.rep

---------------------------------------------------------------------------- JSON

-- Compact JSON (no whitespace outside strings) spread over lines, two spaces a level.
local function reindent(s)
  local out, depth, i, n = {}, 0, 1, #s
  local function newline() out[#out + 1] = "\n" .. rep("  ", depth) end
  while i <= n do
    local c = s:sub(i, i)
    if c == '"' then
      local j = i + 1
      while true do -- the closing quote: skip escaped characters
        local k = s:find('[\\"]', j)
        if s:sub(k, k) == "\\" then j = k + 2 else j = k break end
      end
      out[#out + 1] = s:sub(i, j)
      i = j + 1
    elseif c == "{" or c == "[" then
      local close = c == "{" and "}" or "]"
      if s:sub(i + 1, i + 1) == close then
        out[#out + 1] = c .. close
        i = i + 2
      else
        depth = depth + 1
        out[#out + 1] = c
        newline()
        i = i + 1
      end
    elseif c == "}" or c == "]" then
      depth = depth - 1
      newline()
      out[#out + 1] = c
      i = i + 1
    elseif c == "," then
      out[#out + 1] = ","
      newline()
      i = i + 1
    elseif c == ":" then
      out[#out + 1] = ": "
      i = i + 1
    else
      local j = s:find('[,:%[%]{}"]', i) or n + 1
      out[#out + 1] = s:sub(i, j - 1)
      i = j
    end
  end
  return concat(out)
end

-- A decoded reply as JSON: keys in byte order, UTF-8 and "/" as they are, whole numbers without
-- ".0". The writer is biz_content's (kaifang.yopoint.json); an empty table is written {}.
-- compact = true: on one line.
function M.json(value, compact)
  local text = require("kaifang.yopoint").json(value)
  return compact and text or reindent(text)
end

---------------------------------------------------------------------------- Lua values

local KEYWORDS = {}
for word in ([[and break do else elseif end false for function goto if in local nil not or
  repeat return then true until while]]):gmatch("%a+") do KEYWORDS[word] = true end

local ESCAPES = { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }

-- A string as a Lua literal; UTF-8 stays readable (only control characters are escaped).
local function quote(s)
  return '"' .. s:gsub('[%c\\"]', function(c) return ESCAPES[c] or ("\\%03d"):format(c:byte()) end) .. '"'
end

local function scalar(v)
  local t = type(v)
  if t == "string" then return quote(v) end
  if t == "number" or t == "boolean" or t == "nil" then return tostring(v) end
  if v == null then return "null" end
  return "<" .. t .. ">"
end

local KIND_ORDER = { number = 1, string = 2 }

local function key_less(a, b)
  local ka, kb = KIND_ORDER[type(a)] or 3, KIND_ORDER[type(b)] or 3
  if ka ~= kb then return ka < kb end
  if ka == 3 then return tostring(a) < tostring(b) end
  return a < b
end

local function key_text(k)
  if type(k) == "string" and k:match("^[%a_][%w_]*$") and not KEYWORDS[k] then return k end
  return "[" .. (type(k) == "string" and quote(k) or tostring(k)) .. "]"
end

local MAX_DEPTH, INLINE_WIDTH = 16, 72

local function inspect(v, depth, path)
  if type(v) ~= "table" then return scalar(v) end
  local mt = getmetatable(v)
  if type(mt) == "table" and mt.__tostring then return tostring(v) end -- clients, errors: their own (secret-free) words
  if path[v] then return "<cycle>" end
  if next(v) == nil then return "{}" end
  if depth >= MAX_DEPTH then return "{...}" end
  path[v] = true
  local n, items, keys, all_scalar = #v, {}, {}, true
  for i = 1, n do
    items[i] = inspect(v[i], depth + 1, path)
    if type(v[i]) == "table" then all_scalar = false end
  end
  for k in pairs(v) do
    if not (math.type(k) == "integer" and k >= 1 and k <= n) then keys[#keys + 1] = k end
  end
  table.sort(keys, key_less)
  for _, k in ipairs(keys) do items[#items + 1] = key_text(k) .. " = " .. inspect(v[k], depth + 1, path) end
  path[v] = nil
  -- a short list of plain values reads best on one line; anything with names, one per line
  local one_line = "{ " .. concat(items, ", ") .. " }"
  if #keys == 0 and all_scalar and #one_line + depth * 2 <= INLINE_WIDTH then return one_line end
  local pad = rep("  ", depth + 1)
  return "{\n" .. pad .. concat(items, ",\n" .. pad) .. "\n" .. rep("  ", depth) .. "}"
end

-- Any Lua value as readable text: tables indented, keys sorted, cycles shown as <cycle>; a
-- table with __tostring (a client, an error) as its own text.
function M.inspect(value)
  return inspect(value, 0, {})
end

---------------------------------------------------------------------------- columns

-- Rows of strings as aligned columns (the last one is not padded); width counts characters.
function M.columns(rows)
  local widths = {}
  for _, row in ipairs(rows) do
    for i = 1, #row - 1 do
      widths[i] = math.max(widths[i] or 0, utf8.len(row[i]) or #row[i])
    end
  end
  local lines = {}
  for r, row in ipairs(rows) do
    local cells = {}
    for i, cell in ipairs(row) do
      cells[i] = i < #row and cell .. rep(" ", widths[i] - (utf8.len(cell) or #cell)) or cell
    end
    lines[r] = concat(cells, "  ")
  end
  return concat(lines, "\n")
end

return M
