-- bin/kaifang as a user runs it: the real command in a child process with a clean environment,
-- against a real sandbox (its own, with --sandbox, or one this spec starts).
local cjson = require "cjson.safe"
local sandbox = require "kaifang.sandbox"
local shell = require "spec.helpers.shell"

local q, readfile, tmpfile = shell.q, shell.readfile, shell.tmpfile

local KEY = "744ed968e7e1a4aebafa6f4888fced68" -- the sandbox's Lingdian developer_key
local LINGDIAN_ENV = { KAIFANG_LINGDIAN_CODE = "U2QHNB2w=", KAIFANG_LINGDIAN_KEY = KEY }

local scratch = shell.sh("mktemp -d"):gsub("%s+$", "")

-- Runs `lua5.4 bin/kaifang <args>` with only PATH, HOME, the XDG directories, the module paths
-- and `env` in its environment. -> { out =, err =, status = }
local kaifang = require("spec.helpers.cli").runner(scratch)

-- An error as the CLI must give it: one line on stderr, nothing on stdout, no Lua traceback.
local function one_line_error(r, status, pattern)
  assert.are.equal(status, r.status, r.err)
  assert.are.equal("", r.out)
  assert.is_nil(r.err:find("traceback", 1, true), r.err)
  assert.is_nil(r.err:find("\n.", 1), "more than one line: " .. r.err)
  if pattern then assert.matches(pattern, r.err) end
end

local function json_reply(r)
  assert.are.equal(0, r.status, r.err)
  local reply = cjson.decode(r.out)
  assert.is_table(reply, r.out)
  return reply
end

describe("kaifang (command line)", function()
  local sb
  setup(function() sb = sandbox.start{ port = 0 } end)
  teardown(function()
    sb:stop()
    os.execute("rm -rf " .. q(scratch))
  end)

  it("--version prints kaifang's version", function()
    local r = kaifang("--version")
    assert.are.equal(0, r.status)
    assert.are.equal("kaifang " .. require("kaifang").version .. "\n", r.out)
  end)

  it("--help names the commands; call --help the exit statuses and the variables", function()
    local r = kaifang("--help")
    assert.are.equal(0, r.status)
    for _, command in ipairs({ "call", "repl", "sign", "sandbox" }) do assert.matches("\n%s+" .. command .. "%s", r.out) end
    r = kaifang("call --help")
    assert.are.equal(0, r.status)
    for _, text in ipairs({ "Exit status", "3 the platform refused", "KAIFANG_ZAFU_CLIENT_SECRET", "get_user_tel_by_code" }) do
      assert.is_truthy(r.out:find(text, 1, true), text)
    end
  end)

  describe("call --sandbox", function()
    it("lingdian: the whole reply as indented JSON, UTF-8 as is", function()
      local r = kaifang("call --sandbox lingdian get_user_tel_by_code user_code=U2TD844B2")
      local reply = json_reply(r)
      assert.are.same({ code = 100, data = "13311112222", message = "请求成功且返回了手机号" }, reply)
      assert.is_truthy(r.out:find('{\n  "code": 100,\n', 1, true), r.out) -- indented, keys sorted
      assert.is_truthy(r.out:find("请求成功", 1, true))
      assert.are.equal("", r.err)
    end)

    it("zafu: a token, then the call; menu_delete takes id=", function()
      local reply = json_reply(kaifang("call --sandbox zafu must_task_list"))
      assert.are.equal("success", reply.type)
      assert.are.equal(14, reply.data[1].id)
      reply = json_reply(kaifang("call --sandbox zafu menu_delete id=1704"))
      assert.are.equal("success", reply.type)
      local r = kaifang("call --sandbox zafu menu_delete id=1 json=x")
      one_line_error(r, 2, "takes one parameter, id=")
    end)

    it("yopoint: key:=JSON for numbers; a dotted name calls any gateway method", function()
      local reply = json_reply(kaifang("call --sandbox yopoint cabinet_product_stock TID=YP0002"))
      assert.are.equal(0, reply.error_code)
      assert.are.equal("YP0002", reply.data.TID)
      reply = json_reply(kaifang("call --sandbox yopoint cabinet.list Page:=1 PageSize:=2"))
      assert.are.equal(2, #reply.data.List)
    end)

    it("dakashi: the reply with data; a path calls any interface", function()
      local reply = json_reply(kaifang("call --sandbox dakashi member_info serial_no=87000001"))
      assert.are.equal(0, reply.errcode)
      assert.are.equal("8986112025399", reply.data.iccid)
      reply = json_reply(kaifang("call --sandbox dakashi /v1/member/info serial_no=1410139903"))
      assert.are.equal("8986112025304", reply.data.iccid)
    end)

    it("a platform refusal exits 3 with the platform's words on stderr", function()
      one_line_error(kaifang("call --sandbox lingdian get_user_tel_by_code user_code=NOPE"), 3,
        "platform error 105: 该用户码不存在")
      one_line_error(kaifang("call --sandbox dakashi member_info serial_no=1"), 3, "卡号不存在")
    end)

    it("a transport failure exits 4", function()
      one_line_error(kaifang("call --sandbox --base-url http://127.0.0.1:1 lingdian get_user_tel_by_code user_code=U2TD844B2"),
        4, "^kaifang%.lingdian: transport error")
    end)

    it("usage errors exit 2: missing or unknown parameter, unknown method or platform, bad key=value or JSON", function()
      one_line_error(kaifang("call --sandbox lingdian get_user_tel_by_code"), 2, "missing required parameter 'user_code'")
      one_line_error(kaifang("call --sandbox lingdian get_user_tel_by_code user_cod=U2TD844B2"), 2, "unknown parameter 'user_cod'")
      one_line_error(kaifang("call --sandbox lingdian get_tel"), 2, "lingdian has no method 'get_tel'")
      one_line_error(kaifang("call --sandbox weibo get_tel"), 2, "must be one of")
      one_line_error(kaifang("call --sandbox lingdian get_user_tel_by_code U2TD844B2"), 2, "not key=value")
      one_line_error(kaifang("call --sandbox yopoint cabinet_list Page:=one"), 2, "is not JSON")
      one_line_error(kaifang("call --sandbox --nonsense lingdian get_user_tel_by_code"), 2, "unknown option '%-%-nonsense'")
    end)
  end)

  describe("call with credentials", function()
    local function with(env)
      local e = { KAIFANG_LINGDIAN_URL = sb.url }
      for k, v in pairs(env) do e[k] = v end
      return e
    end

    it("from the environment; a wrong key is the platform's refusal; none is a usage error naming the variables", function()
      local reply = json_reply(kaifang("call lingdian get_user_tel_by_code user_code=U2TD845C3", with(LINGDIAN_ENV)))
      assert.are.equal("13311113333", reply.data)
      one_line_error(kaifang("call lingdian get_user_tel_by_code user_code=U2TD845C3",
        with{ KAIFANG_LINGDIAN_CODE = "U2QHNB2w=", KAIFANG_LINGDIAN_KEY = "wrong" }), 3, "没有对应权限")
      one_line_error(kaifang("call lingdian get_user_tel_by_code user_code=U2TD845C3", with{ KAIFANG_LINGDIAN_CODE = "U2QHNB2w=" }),
        2, "lingdian needs KAIFANG_LINGDIAN_KEY")
    end)

    it("--debug shows each attempt and the string-to-sign with <secret>, never the key", function()
      local r = kaifang("call --debug lingdian get_user_tel_by_code user_code=U2TD845C3", with(LINGDIAN_ENV))
      assert.are.equal(0, r.status, r.err)
      assert.matches("attempt 1", r.err)
      assert.is_truthy(r.err:find("user_code=U2TD845C3<secret>", 1, true), r.err)
      assert.is_nil((r.out .. r.err):find(KEY, 1, true))
    end)

    it("says when a failed request may have reached the platform", function()
      assert(sb:admin("POST", "/_sandbox/faults", { lingdian = { reset_after = 1 } }))
      local r = kaifang("call lingdian send_wechat_message tel=13311112222 content=hi link=https://szai.0xiao.com/x",
        with(LINGDIAN_ENV))
      assert(sb:admin("POST", "/_sandbox/faults", { lingdian = {} }))
      assert.are.equal(4, r.status, r.err)
      assert.matches("the request may have reached the platform: check before sending it again", r.err)
      assert.are.equal(1, #sb:records("lingdian", "messages")) -- it did
    end)

    it("from a profile only its owner can read; one others can read is refused", function()
      os.execute("mkdir -p " .. q(scratch .. "/config/kaifang"))
      local path = scratch .. "/config/kaifang/campus"
      local f = assert(io.open(path, "w"))
      f:write("# the sandbox\nexport KAIFANG_LINGDIAN_CODE=U2QHNB2w=\nKAIFANG_LINGDIAN_KEY='", KEY, "'\n",
              "KAIFANG_LINGDIAN_URL=", sb.url, "\n")
      f:close()
      os.execute("chmod 600 " .. q(path))
      local reply = json_reply(kaifang("call --profile campus lingdian get_user_tel_by_code user_code=U2TD844B2"))
      assert.are.equal("13311112222", reply.data)
      os.execute("chmod 644 " .. q(path))
      one_line_error(kaifang("call --profile campus lingdian get_user_tel_by_code user_code=U2TD844B2"), 2,
        "accessible by others %(mode 644%)")
      one_line_error(kaifang("call --profile nosuch lingdian get_user_tel_by_code user_code=U2TD844B2"), 2, "no profile 'nosuch'")
    end)

    it("a profile line that is not a known setting is refused without quoting it", function()
      local path = tmpfile("KAIFANG_LINGDIAN_KYE=" .. KEY .. "\n")
      os.execute("chmod 600 " .. q(path))
      local r = kaifang("call --profile " .. q(path) .. " lingdian get_user_tel_by_code user_code=U2TD844B2")
      os.remove(path)
      one_line_error(r, 2, "line 1: unknown setting KAIFANG_LINGDIAN_KYE")
      assert.is_nil(r.err:find(KEY, 1, true))
    end)
  end)

  describe("sign", function()
    local PARAMS = "developer_code=U2QHNB2w= user_code=U2TD844B2 type=16 timestamp=15640471261"
    local SIGN = "6dce2061b71512a98f1fdbdbf29ce566" -- the document's interface B example

    local function signed(r)
      assert.are.equal(0, r.status, r.err)
      assert.matches("sign:%s+" .. SIGN, r.out)
      assert.is_truthy(r.out:find("user_code=U2TD844B2<secret>", 1, true), r.out)
      assert.is_nil(r.out:find(KEY, 1, true))
    end

    it("takes the key from standard input, a file or the environment", function()
      signed(kaifang("sign lingdian --key-stdin " .. PARAMS, nil, KEY .. "\n"))
      signed(kaifang("sign lingdian --key - " .. PARAMS, nil, KEY))
      local path = tmpfile(KEY .. "\n")
      signed(kaifang("sign lingdian --key-file " .. q(path) .. " " .. PARAMS))
      os.remove(path)
      signed(kaifang("sign lingdian " .. PARAMS, { KAIFANG_LINGDIAN_KEY = KEY }))
    end)

    it("without a key says where one can come from", function()
      one_line_error(kaifang("sign lingdian " .. PARAMS), 2, "set KAIFANG_LINGDIAN_KEY")
      one_line_error(kaifang("sign dakashi a=1"), 2, "KAIFANG_DAKASHI_CLIENT_SECRET")
    end)
  end)

  describe("repl", function()
    it("--sandbox, fed by a pipe: values as indented tables, errors as one line", function()
      local input = table.concat({
        'yp:cabinet_product_stock{ TID = "YP0002" }',
        "nosuch.field",
        'ld:get_user_tel_by_code{ user_code = "NOPE" }',
        "x = 40 +",
        "  2",
        "=x",
      }, "\n") .. "\n"
      local r = kaifang("repl --sandbox", nil, input)
      assert.are.equal(0, r.status, r.err)
      assert.is_truthy(r.out:find('{\n  data = {\n    List = {\n', 1, true), r.out)
      assert.is_truthy(r.out:find('ProductName = "农夫山泉 550ml"', 1, true), r.out)
      assert.matches('\nnil\n', r.out)
      assert.matches("\n42\n$", r.out)
      local lines = {}
      for line in r.err:gmatch("[^\n]+") do lines[#lines + 1] = line end
      assert.are.same({
        "stdin:1: attempt to index a nil value (global 'nosuch')",
        "kaifang.lingdian: platform error 105: 该用户码不存在，请使用零点校园用户身份码",
      }, { lines[1], r.out:match("nil\n([^\n]+)") })
      assert.are.equal(1, #lines, r.err)
      assert.is_nil(r.err:find("traceback", 1, true))
    end)

    it("binds a client for each platform whose credentials are set, and nothing else", function()
      local env = { KAIFANG_LINGDIAN_URL = sb.url }
      for k, v in pairs(LINGDIAN_ENV) do env[k] = v end
      local r = kaifang("repl", env, 'ld\nld:get_user_tel_by_code{ user_code = "U2TD844B2" }.data\nyp\n')
      assert.are.equal(0, r.status, r.err)
      assert.are.equal(('kaifang.lingdian{ developer_code = "U2QHNB2w=", base_url = "%s" }\n"13311112222"\nnil\n'):format(sb.url), r.out)
    end)
  end)

  describe("sandbox", function()
    -- Starts `kaifang sandbox ...` and returns its first line, its pid and a function that
    -- waits for it to end: -> status, stdout after the first line, stderr.
    local function start(args)
      local errfile = os.tmpname()
      local p = assert(io.popen("sh -c 'echo $$; exec lua5.4 bin/kaifang sandbox " .. args .. "' 2>" .. q(errfile), "r"))
      local pid = tonumber(p:read("l"))
      local first = p:read("l")
      return first, pid, function()
        local rest = p:read("a")
        local _, _, status = p:close()
        local err = readfile(errfile)
        os.remove(errfile)
        return status, rest, err
      end
    end

    it("--json prints the address and every platform's demo account on one line", function()
      local line, _, finish = start("--port 0 --json")
      local info = assert(cjson.decode(line), line)
      assert.matches("^http://127%.0%.0%.1:%d+$", info.url)
      local accounts = {}
      for _, p in ipairs(info.platforms) do accounts[p.platform] = p.account end
      assert.are.same({ developer_code = "U2QHNB2w=", developer_key = KEY, developer_tel = "12345678910" }, accounts.lingdian)
      assert.are.equal("zafu-demo", accounts.zafu.client_id)
      assert.are.equal("930859529955", accounts.yopoint.appid)
      assert.are.equal("iotacc108b7305fhzljeux0", accounts.dakashi.client_id)
      assert.are.equal(info.url .. "/zafu", info.env.KAIFANG_ZAFU_URL)
      assert.are.equal(KEY, info.env.KAIFANG_LINGDIAN_KEY)
      local session = require("kaifang.core").http({ timeout = 5 })
      assert(session:request{ method = "POST", url = info.url .. "/_sandbox/shutdown", body = "{}" })
      session:close()
      local status = finish()
      assert.are.equal(0, status)
    end)

    it("prints the demo accounts as a table and the variables for call; Ctrl-C ends it with one line", function()
      local banner, pid, finish = start("--port 0")
      local url = banner:match("^kaifang sandbox listening on (http://127%.0%.0%.1:%d+)$")
      assert.is_string(url, banner)
      -- the printed variables, set in another shell, point kaifang call at this sandbox
      local line = kaifang("call dakashi member_info serial_no=87000001", {
        KAIFANG_DAKASHI_URL = url .. "/dakashi", KAIFANG_DAKASHI_CLIENT_ID = "iotacc108b7305fhzljeux0",
        KAIFANG_DAKASHI_CLIENT_SECRET = "4c1e7b9a2d5f8e3b6a0c9d2f5e8b1a47" })
      assert.are.equal("87000001", json_reply(line).data.serial_no)
      os.execute("kill -INT " .. pid)
      local status, rest, err = finish()
      assert.matches("\nplatform%s+what%s+values\n", rest)
      assert.matches("\nzafu%s+user%s+20121032%s+张三", rest)
      assert.matches("\nyopoint%s+account%s+appid=930859529955 app_secret=", rest)
      assert.is_truthy(rest:find("\nexport KAIFANG_DAKASHI_URL=" .. url .. "/dakashi KAIFANG_DAKASHI_CLIENT_ID=iotacc108b7305fhzljeux0 "
        .. "KAIFANG_DAKASHI_CLIENT_SECRET=4c1e7b9a2d5f8e3b6a0c9d2f5e8b1a47\n", 1, true), rest)
      assert.are.equal(130, status)
      assert.are.equal("kaifang: interrupted\n", err)
    end)

    it("--tls serves HTTPS, and its KAIFANG_CAINFO lets kaifang call trust it", function()
      local line, _, finish = start("--port 0 --json --tls")
      local info = assert(cjson.decode(line), line)
      assert.matches("^https://127%.0%.0%.1:%d+$", info.url)
      assert.are.equal(info.cafile, info.env.KAIFANG_CAINFO)
      local env = { KAIFANG_DAKASHI_URL = info.env.KAIFANG_DAKASHI_URL, KAIFANG_DAKASHI_CLIENT_ID = info.env.KAIFANG_DAKASHI_CLIENT_ID,
                    KAIFANG_DAKASHI_CLIENT_SECRET = info.env.KAIFANG_DAKASHI_CLIENT_SECRET }
      local refused = kaifang("call dakashi member_info serial_no=87000001", env)
      one_line_error(refused, 4, "TLS certificate verification failed") -- the system's CAs do not know this CA
      env.KAIFANG_CAINFO = info.cafile
      assert.are.equal("87000001", json_reply(kaifang("call dakashi member_info serial_no=87000001", env)).data.serial_no)
      local session = require("kaifang.core").http({ timeout = 5, cainfo = info.cafile })
      assert(session:request{ method = "POST", url = info.url .. "/_sandbox/shutdown", body = "{}" })
      session:close()
      assert.are.equal(0, (finish()))
      assert.is_nil(io.open(info.cafile), "the CA file outlived the sandbox")
    end)

    it("--strict=false relaxes every platform; --config can keep one strict", function()
      local line, _, finish = start([[--port 0 --json --strict=false --config={\"dakashi\":{\"strict\":true}}]])
      local info = assert(cjson.decode(line), line)
      local session = require("kaifang.core").http({ timeout = 5 })
      local res = assert(session:request{ method = "GET", url = info.url .. "/_sandbox/config" })
      local config = cjson.decode(res.body)
      assert.are.same({ false, false, false, true },
        { config.lingdian.strict, config.zafu.strict, config.yopoint.strict, config.dakashi.strict })
      assert(session:request{ method = "POST", url = info.url .. "/_sandbox/shutdown", body = "{}" })
      session:close()
      assert.are.equal(0, (finish()))
      one_line_error(kaifang("sandbox --port 0 --strict=maybe"), 2, "strict")
    end)

    it("a bad --config, bad JSON or a port in use: one line, no traceback", function()
      one_line_error(kaifang([[sandbox --port 0 --config '{"lingdian":{"rat":5}}']]), 2, "unknown lingdian setting 'rat'")
      one_line_error(kaifang([[sandbox --port 0 --config '{"lingdian":']]), 2, "%-%-config must be a JSON object")
      local port = sb.url:match(":(%d+)$")
      one_line_error(kaifang("sandbox --port " .. port), 1,
        "cannot listen on 127%.0%.0%.1:" .. port .. ": Failed to bind to port " .. port .. ": Address already in use")
    end)
  end)

  it("the README's demo-data table has every demo account value and every seeded id", function()
    local readme = readfile("README.md")
    local section = readme:match("\n### Demo data\n(.-)\n##")
    assert.is_string(section, "README has no '### Demo data' section")
    for _, d in ipairs(sandbox.demo()) do
      for _, value in pairs(d.account) do assert.is_truthy(section:find(value, 1, true), d.platform .. " " .. value) end
      for _, w in ipairs(d.world) do
        assert.is_truthy(section:find(w.id, 1, true), d.platform .. " " .. w.what .. " " .. w.id)
      end
    end
  end)
end)
