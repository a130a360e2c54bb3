-- The `kaifang` command: call, batch, journal, repl, sign, sandbox. bin/kaifang only finds the modules and
-- calls main; everything else is here, so that it installs with the rock and can be tested.
local argparse = require "argparse"
local kaifang = require "kaifang"
local config = require "kaifang.cli.config"
local format = require "kaifang.cli.format"

local M = {}

M.EXIT = { ok = 0, failed = 1, usage = 2, refused = 3, transport = 4, interrupted = 130 }

local REFUSED = { platform = true, auth = true, signature = true }
local TRANSPORT = { transport = true, timeout = true, http = true, decode = true, store = true }

---------------------------------------------------------------------------- ending

-- Raised to end the command with a status and (maybe) one line on stderr.
local Stop = {}

local function stop(status, message)
  error(setmetatable({ status = status, message = message }, Stop), 0)
end

-- A library's own message already names itself (kaifang.sandbox: ...).
local function usage(message)
  stop(M.EXIT.usage, message:match("^kaifang[%.:]") and message or ("kaifang: " .. message))
end

-- An error message without the "file:line: " Lua puts in front of it.
local function plain(message)
  message = tostring(message)
  return message:match("^[^\n:]+:%d+: (.*)$") or message
end

-- lua5.4 turns Ctrl-C into this error (raised at the next Lua instruction).
local function interrupted(message) return plain(message) == "interrupted!" end

---------------------------------------------------------------------------- arguments

-- key=value (a string) and key:=JSON (any JSON value) -> table.
function M.parse_params(list)
  local params = {}
  for _, item in ipairs(list) do
    local key, json, value = item:match("^([^=]-)(:?)=(.*)$")
    if not key or key == "" then usage("parameter '" .. item .. "' is not key=value or key:=JSON") end
    if params[key] ~= nil then usage("parameter '" .. key .. "' is given twice") end
    if json == ":" then
      local decoded, err = require("kaifang.client").json_decode(value)
      if decoded == nil then usage("parameter '" .. key .. "': " .. value .. " is not JSON (" .. tostring(err) .. ")") end
      value = decoded
    end
    params[key] = value
  end
  return params
end

-- ZAFU methods that take one value rather than a table of parameters, and its name on the command line.
local POSITIONAL = { zafu = { menu_submit = "json", menu_delete = "id" } }

function M.methods(platform)
  local names = {}
  for name in pairs(kaifang[platform].Client.endpoints) do names[#names + 1] = name end
  table.sort(names)
  return names
end

-- fn(client) -> the method's results, for a method name from the command line.
local function invoker(platform, method, params)
  if (platform == "yopoint" and method:find(".", 1, true)) or (platform == "dakashi" and method:sub(1, 1) == "/") then
    return function(c) return c:call(method, params) end -- any gateway method, any path
  end
  if not kaifang[platform].Client.endpoints[method] then
    usage(("%s has no method '%s' (methods: %s)"):format(platform, method, table.concat(M.methods(platform), ", ")))
  end
  local single = (POSITIONAL[platform] or {})[method]
  if single then
    for key in pairs(params) do
      if key ~= single then usage(("%s %s takes one parameter, %s=..."):format(platform, method, single)) end
    end
    return function(c) return c[method](c, params[single]) end
  end
  return function(c) return c[method](c, params) end
end

---------------------------------------------------------------------------- clients

-- Credentials from the profile (when named) or the environment: a lookup, and where it looked.
local function credentials_source(profile)
  if not profile then return config.source(), "the environment" end
  local values, where = config.read_profile(profile)
  if not values then usage(where) end
  return config.source(values), "profile " .. where
end

local function new_client(platform, opts)
  local ok, client = pcall(kaifang[platform].new, opts)
  if not ok then
    if interrupted(client) then error(client, 0) end
    usage(plain(client))
  end
  return client
end

-- The common options of call, batch and repl.
local function apply_options(opts, args)
  opts.timeout = args.timeout
  opts.rate = args.rate
  if args.debug then opts.debug = true end
  return opts
end

-- fn(sandbox) with --sandbox (a sandbox of its own, stopped however fn ends), else fn(nil).
-- No <close>: the library's modules stay parseable by LuaJIT (spec/openresty_spec.lua).
local function with_sandbox(args, fn)
  if not args.sandbox then return fn(nil) end
  local sb = require("kaifang.sandbox").start{ port = 0, own_session = true }
  local ok, result = pcall(fn, sb)
  sb:stop()
  if not ok then error(result, 0) end
  return result
end

---------------------------------------------------------------------------- call

local function describe(err)
  local text = tostring(err)
  if type(err) == "table" and err.fields then
    local fields = type(err.fields) == "table" and table.concat(err.fields, ", ") or tostring(err.fields)
    text = text .. " (fields: " .. fields .. ")"
  end
  return text
end

-- The client for args.platform: the sandbox's demo account, a profile's or the environment's
-- credentials, and the command's options.
local function make_client(args, sb)
  local platform = args.platform
  local opts
  if sb then
    opts = config.sandbox_options(platform, sb.url)
  else
    local lookup, where = credentials_source(args.profile)
    local missing
    opts, missing = config.client_options(platform, lookup)
    if not opts then
      usage(("%s needs %s (not set in %s)"):format(platform, table.concat(missing, ", "), where))
    end
  end
  opts.base_url = args.base_url or opts.base_url
  return new_client(platform, apply_options(opts, args))
end

local function call(args, invoke, sb)
  local client = make_client(args, sb)
  local ok, value, err = pcall(invoke, client)
  if not ok then
    if interrupted(value) then error(value, 0) end
    stop(M.EXIT.usage, plain(value)) -- the library's word on a misuse: kaifang.<platform>: ...
  end
  if value ~= nil then
    io.stdout:write(format.json(value), "\n")
    return M.EXIT.ok
  end
  local kind = type(err) == "table" and err.kind
  local status = REFUSED[kind] and M.EXIT.refused or TRANSPORT[kind] and M.EXIT.transport
    or kind == "argument" and M.EXIT.usage or M.EXIT.failed
  io.stderr:write(describe(err), "\n")
  if type(err) == "table" and err.maybe_sent then
    io.stderr:write("kaifang: the request may have reached the platform: check before sending it again\n")
  end
  return status
end

local function cmd_call(args)
  local invoke = invoker(args.platform, args.method, M.parse_params(args.params))
  return with_sandbox(args, function(sb) return call(args, invoke, sb) end)
end

---------------------------------------------------------------------------- batch, journal

-- kaifang.cli.batch raises { usage = message } for what the user has to fix.
local function batch_command(fn, args, ctx)
  local ok, result = pcall(require("kaifang.cli.batch")[fn], args, ctx)
  if ok then return result end
  if type(result) == "table" and result.usage then usage(result.usage) end
  if type(result) == "string" and not interrupted(result) and plain(result):match("^kaifang%.journal") then
    stop(M.EXIT.transport, plain(result)) -- a journal that cannot be opened
  end
  error(result, 0)
end

local function cmd_batch(args)
  if args.concurrency and (args.concurrency < 1 or args.concurrency % 1 ~= 0) then usage("--concurrency must be a whole number >= 1") end
  if args.rate and args.rate <= 0 then usage("--rate must be a positive number of calls per second") end
  if args.journal and args.no_journal then usage("--journal and --no-journal: give one") end
  local client = make_client(args)
  return batch_command("run", args, { client = client, usage = usage, EXIT = M.EXIT })
end

local function cmd_journal(args)
  return batch_command("show", args, { usage = usage, EXIT = M.EXIT })
end

---------------------------------------------------------------------------- sign

local function trim(s) return (s:match("^%s*(.-)%s*$")) end

local function read_key(args)
  if args.key == "-" or args.key_stdin then
    local key = io.stdin:read("l")
    if not key or trim(key) == "" then usage("no key on standard input") end
    return trim(key)
  elseif args.key then
    return args.key
  elseif args.key_file then
    local f, err = io.open(args.key_file, "r")
    if not f then usage("cannot read the key file: " .. err) end
    local key = trim(f:read("a") or "")
    f:close()
    if key == "" then usage("the key file " .. args.key_file .. " is empty") end
    return key
  end
  local var = config.secret_var(args.scheme)
  local lookup, where = credentials_source(args.profile)
  return lookup(var) or usage(("no key: give --key-file FILE or --key-stdin, or set %s (not set in %s)"):format(var, where))
end

local function cmd_sign(args)
  local ksign = require "kaifang.sign"
  local params = M.parse_params(args.params)
  local key = read_key(args)
  local ok, s, sts = pcall(ksign[args.scheme], params, key)
  if not ok then usage(plain(s)) end
  io.stdout:write("string-to-sign: ", args.reveal and sts or ksign.mask(sts, key), "\n",
                  "sign:           ", s, "\n")
  return M.EXIT.ok
end

---------------------------------------------------------------------------- sandbox

-- The demo accounts and seeded worlds as rows: platform, what, values.
function M.demo_rows(demo)
  local rows, id_width = { { "platform", "what", "values" } }, 0
  for _, d in ipairs(demo) do -- ids line up; a long one (a URL) just pushes its own row
    for _, w in ipairs(d.world) do
      if #w.id <= 16 then id_width = math.max(id_width, #w.id) end
    end
  end
  for _, d in ipairs(demo) do
    local account = {}
    for _, o in ipairs(config.SPEC[d.platform].options) do
      if d.account[o[1]] then account[#account + 1] = o[1] .. "=" .. d.account[o[1]] end
    end
    rows[#rows + 1] = { d.platform, "account", table.concat(account, " ") }
    for _, w in ipairs(d.world) do
      rows[#rows + 1] = { d.platform, w.what, w.id .. (" "):rep(math.max(id_width - #w.id, 0) + 2) .. w.about }
    end
  end
  return rows
end

-- The KAIFANG_* variables that point `call`, `repl` and scripts at a running sandbox, per
-- platform in order: { { name, value }, ... } lists; with cafile (HTTPS), one more for its CA.
function M.demo_env(url, demo, cafile)
  local out = {}
  for i, d in ipairs(demo) do
    local vars = { { config.url_var(d.platform), url .. "/" .. d.platform } }
    for _, o in ipairs(config.SPEC[d.platform].options) do
      if d.account[o[1]] then vars[#vars + 1] = { o[2], d.account[o[1]] } end
    end
    out[i] = vars
  end
  if cafile then out[#out + 1] = { { config.CAINFO, cafile } } end
  return out
end

local function shell_word(s)
  if s:match("^[%w%-_./:=@]+$") then return s end
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

local function cmd_sandbox(args)
  local sandbox = require "kaifang.sandbox"
  local settings
  if args.config then
    local err
    settings, err = require("cjson.safe").decode(args.config)
    if type(settings) ~= "table" then usage("--config must be a JSON object" .. (err and (": " .. err) or "")) end
  end
  if not args.port or args.port < 0 or args.port > 65535 or args.port % 1 ~= 0 then
    usage("--port must be a whole number 0..65535")
  end
  local strict -- nil: each platform's default (strict)
  if args.strict == "false" then strict = false end
  local ok, err = pcall(sandbox.new, { config = settings, strict = strict }) -- a bad setting is the user's to fix
  if not ok then usage(plain(err)) end
  local function announce(url, _, cafile)
    local demo = sandbox.demo()
    local env = M.demo_env(url, demo, cafile)
    if args.json then
      local vars = {}
      for _, list in ipairs(env) do
        for _, v in ipairs(list) do vars[v[1]] = v[2] end
      end
      io.stdout:write(format.json({ url = url, cafile = cafile, platforms = demo, env = vars }, true), "\n")
    else
      local exports = {}
      for i, list in ipairs(env) do
        local words = {}
        for j, v in ipairs(list) do words[j] = v[1] .. "=" .. shell_word(v[2]) end
        exports[i] = "export " .. table.concat(words, " ")
      end
      io.stdout:write(sandbox.BANNER, url, "\n", cafile and (sandbox.CAFILE .. cafile .. "\n") or "", "\n",
        format.columns(M.demo_rows(demo)), "\n\n",
        "Point a client's base_url at ", url, " (or ", url, "/<platform>). ",
        "Stop it with Ctrl-C or POST ", url, "/_sandbox/shutdown.\n",
        "For kaifang call, kaifang repl and the README's examples, in another shell:\n",
        table.concat(exports, "\n"), "\n")
    end
    io.stdout:flush()
  end
  local served, e = pcall(sandbox.run, { host = args.host, port = args.port, config = settings, strict = strict,
                                         tls = args.tls or nil, announce = announce })
  if not served then
    if interrupted(e) then error(e, 0) end
    stop(M.EXIT.failed, plain(e))
  end
  return M.EXIT.ok
end

---------------------------------------------------------------------------- repl

local function repl(args, sb)
  local bindings, names, notes = { kaifang = kaifang, sb = sb }, {}, {}
  local lookup, where
  if not sb then lookup, where = credentials_source(args.profile) end
  for _, platform in ipairs(config.PLATFORMS) do
    local short, opts, missing = config.SPEC[platform].short, nil, nil
    if sb then
      opts = config.sandbox_options(platform, sb.url)
    else
      opts, missing = config.client_options(platform, lookup)
      if not opts and config.mentions(platform, lookup) then
        notes[#notes + 1] = ("%s not bound: %s not set in %s"):format(platform, table.concat(missing, ", "), where)
      end
    end
    if opts then
      bindings[short] = new_client(platform, apply_options(opts, args))
      names[#names + 1] = short
    end
  end
  return require("kaifang.cli.repl").run{ bindings = bindings, clients = names, notes = notes, sandbox = sb }
end

local function cmd_repl(args)
  return with_sandbox(args, function(sb) return repl(args, sb) end)
end

---------------------------------------------------------------------------- the parser

local function credentials_help()
  local rows = {}
  for _, platform in ipairs(config.PLATFORMS) do
    local vars = {}
    for _, o in ipairs(config.SPEC[platform].options) do vars[#vars + 1] = o.optional and ("[" .. o[2] .. "]") or o[2] end
    rows[#rows + 1] = { "  " .. platform, table.concat(vars, " ") }
  end
  return "Credentials come from the environment, or with --profile NAME from the file\n"
    .. "$XDG_CONFIG_HOME/kaifang/NAME (~/.config/kaifang/NAME; KAIFANG_...=value lines, mode 600),\n"
    .. "never from the command line:\n" .. format.columns(rows) .. "\n"
    .. "  KAIFANG_<PLATFORM>_URL sets a base URL; KAIFANG_ZAFU_TOKEN_FILE shares ZAFU's token\n"
    .. "  with the services using the same credentials (a new token invalidates theirs).\n"
end

local CALL_HELP = [[
Parameters: key=value gives a string; key:=JSON a number, list or object, e.g.
  kaifang call yopoint cabinet_order_user_appeal ReceiptNo=OD... Content=少货 'Images:=["https://..."]'
ZAFU's menu_submit takes json=<the menu tree as JSON>, menu_delete id=<menu id>. A Yopoint
method with dots (cabinet.list) or a Dakashi path (/v1/member/info) calls any gateway method or path.

Exit status: 0 the reply is on stdout; 2 usage: bad arguments, unknown method or parameter,
missing credentials, a profile others can read; 3 the platform refused (error kinds platform,
auth, signature); 4 no usable reply (transport, timeout, http, decode, store); 1 anything else.
Errors go to stderr, in the platform's words.
]]

local function methods_help()
  local rows = {}
  for _, platform in ipairs(config.PLATFORMS) do
    rows[#rows + 1] = { "  " .. platform, table.concat(M.methods(platform), " ") }
  end
  return "Methods:\n" .. format.columns(rows)
end

local function build_parser()
  local parser = argparse("kaifang", "Chinese open-platform APIs (Lingdian Campus, ZAFU, Yopoint, Dakashi) "
    .. "from the shell:\ncall them, explore them in a REPL, check signatures, run the sandbox.")
  parser:command_target("command")
  parser:flag("--version", "Print the version and exit."):action(function()
    io.stdout:write("kaifang ", kaifang.version, "\n")
    stop(M.EXIT.ok)
  end)

  local call = parser:command("call", "Make one call; print the decoded reply as indented JSON.")
  call:argument("platform", "lingdian, zafu, yopoint or dakashi."):choices(config.PLATFORMS)
  call:argument("method", "The client method, e.g. get_user_tel_by_code.")
  call:argument("params", "key=value or key:=JSON."):args("*")
  call:mutex(
    call:flag("--sandbox", "Start the sandbox and call it with its demo account."),
    call:option("--profile", "Take credentials from this profile instead of the environment."))
  call:option("--base-url", "The platform's address (default: KAIFANG_<PLATFORM>_URL, else the real one).")
  call:option("--timeout", "Seconds for the whole request (default 15)."):convert(tonumber)
  call:flag("--debug", "Print each attempt and the string-to-sign (secret masked) on stderr.")
  call:epilog(CALL_HELP .. "\n" .. credentials_help() .. "\n" .. methods_help())

  local repl = parser:command("repl", "A Lua 5.4 prompt with kaifang loaded and a client per configured platform.")
  repl:mutex(
    repl:flag("--sandbox", "Start the sandbox; bind clients with its demo accounts (and sb, its handle)."),
    repl:option("--profile", "Take credentials from this profile instead of the environment."))
  repl:option("--timeout", "Seconds for each request (default 15)."):convert(tonumber)
  repl:flag("--debug", "Print each attempt and the string-to-sign (secret masked) on stderr.")
  repl:epilog("Clients: ld (Lingdian), zafu, yp (Yopoint), dk (Dakashi), bound for each platform whose\n"
    .. "credentials are set. `=expr` or an expression prints its value; Ctrl-D quits.\n\n" .. credentials_help())

  local sign = parser:command("sign", "Print the string-to-sign and the sign for some parameters.")
  sign:argument("scheme", "Signature scheme."):choices({ "lingdian", "yopoint", "dakashi" })
  sign:argument("params", "Parameters as key=value."):args("*")
  sign:mutex(
    sign:option("--key-file", "Read the secret from this file."),
    sign:flag("--key-stdin", "Read the secret from the first line of standard input."),
    sign:option("--key", "The secret itself ('-': standard input). Visible to `ps` and kept in shell history."))
  sign:option("--profile", "Read the secret from this profile instead of the environment.")
  sign:flag("--reveal", "Show the secret inside the string-to-sign instead of <secret>.")
  sign:epilog("Without --key-file, --key-stdin or --key, the secret comes from KAIFANG_LINGDIAN_KEY,\n"
    .. "KAIFANG_YOPOINT_SECRET or KAIFANG_DAKASHI_CLIENT_SECRET (or the profile).")

  local batch = parser:command("batch", "Make one call per row of a CSV or JSON Lines file, with a journal, so that "
    .. "running it again resumes.")
  batch:argument("platform", "lingdian, zafu, yopoint or dakashi."):choices(config.PLATFORMS)
  batch:argument("method", "The client method, e.g. send_wechat_message.")
  batch:argument("file", "CSV with a header row of parameter names, or JSON Lines; a 'key' column names each call.")
  batch:option("--journal", "The journal: an SQLite file, or redis://HOST:PORT[/DB]/PREFIX for several machines "
    .. "(default: FILE's name with .journal.db).")
  batch:flag("--no-journal", "No journal: running it again sends everything again.")
  batch:option("--results", "Where to write one JSON line per row (default: FILE's name with .results.jsonl).")
  batch:option("--rate", "Calls per second at most (the client's rate option).", nil):convert(tonumber)
  batch:option("--concurrency", "Calls in flight at once.", "8"):convert(tonumber)
  batch:option("--format", "csv or jsonl (default: from FILE's name)."):choices({ "csv", "jsonl" })
  batch:option("--lease", "Redis journal: seconds a worker's claims outlive it.", nil):convert(tonumber)
  batch:option("--profile", "Take credentials from this profile instead of the environment.")
  batch:option("--base-url", "The platform's address (default: KAIFANG_<PLATFORM>_URL, else the real one).")
  batch:option("--timeout", "Seconds for each request (default 15)."):convert(tonumber)
  batch:flag("--debug", "Print each attempt and the string-to-sign (secret masked) on stderr.")
  batch:epilog("Exit status: 0 every row ok; 1 some failed or may have reached the platform (see the results\n"
    .. "file and `kaifang journal`); 2 usage; 4 the journal failed; 130 stopped by Ctrl-C (run it again to\n"
    .. "resume). Ctrl-C once lets the calls in flight finish; twice stops at once.\n\n" .. credentials_help())

  local journal = parser:command("journal", "Show what a batch's journal holds: the counts, and the calls that may "
    .. "have reached the platform.")
  journal:argument("journal", "An SQLite journal file, or redis://HOST:PORT[/DB]/PREFIX.")
  journal:option("--state", "The calls to list: maybe_sent (default), failed, ok, sending or all."):choices(
    { "maybe_sent", "failed", "ok", "sending", "all" })
  journal:flag("--json", "One JSON line per call instead of the counts and a table.")

  local sandbox = parser:command("sandbox", "Run the sandbox that behaves like the platforms, on loopback.")
  sandbox:option("--port", "Port to listen on (0: any free port).", "8080"):convert(tonumber)
  sandbox:option("--host", "Address to listen on.", "127.0.0.1")
  sandbox:option("--config", "JSON with per-platform settings, e.g. '{\"lingdian\":{\"rate\":5}}'.")
  sandbox:option("--strict", "false relaxes every platform's strict checks (replays refused, timestamps ahead, "
    .. "documented formats and types), for replaying real traffic; --config can set one platform's.", "true")
    :choices({ "true", "false" })
  sandbox:flag("--json", "Print the address and demo accounts as one line of JSON instead of a table.")
  sandbox:flag("--tls", "Serve HTTPS, with a private CA made at start (its certificate's file is printed, "
    .. "and KAIFANG_CAINFO set to it) and a certificate for localhost and 127.0.0.1.")

  -- argparse would print its usage and exit 1; a usage error here is one line and status 2
  local names = { [parser] = "kaifang", [call] = "kaifang call", [repl] = "kaifang repl",
                  [sign] = "kaifang sign", [sandbox] = "kaifang sandbox", [batch] = "kaifang batch",
                  [journal] = "kaifang journal" }
  parser.error = function(p, message)
    local name = names[p] or "kaifang"
    stop(M.EXIT.usage, ("%s: %s (see '%s --help')"):format(name, message, name))
  end
  return parser
end

local COMMANDS = { call = cmd_call, batch = cmd_batch, journal = cmd_journal, sign = cmd_sign, sandbox = cmd_sandbox,
                   repl = cmd_repl }

-- Runs the command line argv (arg's 1..n) and returns the exit status. Errors end as one line
-- on stderr, never a traceback.
function M.main(argv)
  local ok, status = pcall(function()
    local args = build_parser():parse(argv)
    return COMMANDS[args.command](args)
  end)
  io.stdout:flush()
  if ok then return status or M.EXIT.ok end
  local err = status
  if getmetatable(err) == Stop then
    if err.message then io.stderr:write(err.message, "\n") end
    return err.status
  end
  if interrupted(err) then
    io.stderr:write("kaifang: interrupted\n")
    return M.EXIT.interrupted
  end
  io.stderr:write("kaifang: ", plain(err), "\n")
  return M.EXIT.failed
end

return M
