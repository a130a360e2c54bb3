-- `kaifang batch` and `kaifang journal` as an operator runs them: the real command, a CSV or JSON
-- Lines file, a journal, against the sandbox; stopped with SIGINT and run again.
local cjson = require "cjson.safe"
local journal = require "kaifang.journal"
local sandbox = require "kaifang.sandbox"
local cli = require "spec.helpers.cli"
local shell = require "spec.helpers.shell"

local q = shell.q
local KEY = "744ed968e7e1a4aebafa6f4888fced68"
local scratch = shell.sh("mktemp -d"):gsub("%s+$", "")
local kaifang = cli.runner(scratch)

local function write(name, text)
  local path = scratch .. "/" .. name
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  return path
end

local function results(path)
  local out = {}
  for line in io.lines(path) do out[#out + 1] = assert(cjson.decode(line)) end
  return out
end

describe("kaifang batch", function()
  local sb, env

  setup(function()
    sb = sandbox.start{ port = 0 }
    env = { KAIFANG_LINGDIAN_CODE = "U2QHNB2w=", KAIFANG_LINGDIAN_KEY = KEY, KAIFANG_LINGDIAN_URL = sb.url .. "/lingdian" }
  end)

  teardown(function()
    sb:stop()
    os.execute("rm -rf " .. q(scratch))
  end)

  before_each(function() assert(sb:reset()) end)

  local function delivered()
    local count = {}
    for _, r in ipairs(sb:records("lingdian", "messages")) do count[r.params.content] = (count[r.params.content] or 0) + 1 end
    return count
  end

  it("sends a CSV's rows, writes a result per row, and a rerun sends nothing again", function()
    local csv = write("notices.csv", "\239\187\191tel,content,link,key\r\n"
      .. '13311112222,"明早 8 点停水, 请储水",https://szai.0xiao.com/n/1,row-1\r\n'
      .. "13311114444,明早 8 点停水,https://szai.0xiao.com/n/1,\r\n"
      .. '13311113333,"两行\n通知",https://szai.0xiao.com/n/1,row-3\r\n')
    local db = scratch .. "/notices.db"
    local r = kaifang("batch lingdian send_wechat_message " .. q(csv) .. " --journal " .. q(db) .. " --rate 20 --concurrency 8", env)
    assert.are.equal(1, r.status, r.err) -- a row failed
    assert.matches("^3 rows: 2 ok, 1 failed, 0 maybe sent; results in .*notices%.results%.jsonl; journal .*notices%.db\n$", r.out)
    local lines = results(scratch .. "/notices.results.jsonl")
    assert.are.same({ row = 1, key = "row-1", outcome = "ok" }, { row = lines[1].row, key = lines[1].key, outcome = lines[1].outcome })
    assert.are.same({ 2, "failed", 106, "该用户未关注公众号，请提示其关注公众号" },
      { lines[2].row, lines[2].outcome, lines[2].code, lines[2].message })
    assert.matches("^lingdian%.send_wechat_message:", lines[2].key)
    assert.are.equal("row-3", lines[3].key)
    assert.are.same({ ["明早 8 点停水, 请储水"] = 1, ["两行\n通知"] = 1 }, delivered())

    r = kaifang("batch lingdian send_wechat_message " .. q(csv) .. " --journal " .. q(db), env)
    assert.are.equal(1, r.status, r.err)
    assert.matches("3 rows: 2 ok, 1 failed, 0 maybe sent %(3 as recorded by an earlier run%)", r.out)
    assert.are.same({ ["明早 8 点停水, 请储水"] = 1, ["两行\n通知"] = 1 }, delivered())
    assert.is_true(results(scratch .. "/notices.results.jsonl")[1].skipped)

    r = kaifang("journal " .. q(db), env)
    assert.are.equal(0, r.status, r.err)
    assert.matches("3 calls: 2 ok, 1 failed, 0 maybe sent, 0 sending", r.out)
  end)

  it("reads JSON Lines, with typed values and a key", function()
    local jsonl = write("orders.jsonl", '{"key":"OD1","shop_code":"U2SHOP001","order_type":1,"daily_number":7}\n\n'
      .. '{"key":"OD2","shop_code":"U2SHOP001","order_type":5,"daily_number":8,"building_code":"BTEGNAZl"}\n')
    local r = kaifang("batch lingdian outer_entry_order " .. q(jsonl), env)
    assert.are.equal(0, r.status, r.err)
    assert.matches("2 rows: 2 ok, 0 failed, 0 maybe sent", r.out)
    assert.matches("journal .*orders%.journal%.db", r.out) -- by default, beside the file
    assert.are.equal(2, #sb:records("lingdian", "orders"))
    local lines = results(scratch .. "/orders.results.jsonl")
    assert.are.same({ "OD1", "OD2" }, { lines[1].key, lines[2].key })
  end)

  it("says which calls may have reached the platform, and `kaifang journal` lists them", function()
    local csv = write("maybe.csv", "tel,content,link\n13311112222,m1,https://szai.0xiao.com/m\n13311113333,m2,https://szai.0xiao.com/m\n")
    assert(sb:admin("POST", "/_sandbox/faults", { lingdian = { reset_after = 1 } }))
    local r = kaifang("batch lingdian send_wechat_message " .. q(csv), env)
    assert(sb:admin("POST", "/_sandbox/faults", { lingdian = {} }))
    assert.are.equal(1, r.status, r.err)
    assert.matches("2 maybe sent", r.out)
    assert.matches("2 calls may have reached the platform: check them before sending them again %(kaifang journal", r.err)
    r = kaifang("journal " .. q(scratch .. "/maybe.journal.db"), env)
    assert.matches("2 calls: 0 ok, 0 failed, 2 maybe sent", r.out)
    assert.matches("check them there before sending them again", r.out)
    assert.matches('"content":"m1"', r.out)
    r = kaifang("batch lingdian send_wechat_message " .. q(csv), env) -- never sent again
    assert.are.equal(1, r.status)
    assert.are.same({ m1 = 1, m2 = 1 }, delivered())
  end)

  it("refuses a misspelt column, an unknown method and missing credentials before sending anything", function()
    local csv = write("typo.csv", "tel,contnet,link\n13311112222,x,https://szai.0xiao.com/t\n")
    local r = kaifang("batch lingdian send_wechat_message " .. q(csv), env)
    assert.are.equal(2, r.status)
    assert.matches("unknown column 'contnet' %(did you mean 'content'%?%), for lingdian send_wechat_message", r.err)
    r = kaifang("batch lingdian send_notice " .. q(csv), env)
    assert.are.equal(2, r.status)
    assert.matches("'send_notice' is not one", r.err)
    r = kaifang("batch lingdian send_wechat_message " .. q(csv), { KAIFANG_LINGDIAN_URL = sb.url })
    assert.are.equal(2, r.status)
    assert.matches("lingdian needs KAIFANG_LINGDIAN_CODE, KAIFANG_LINGDIAN_KEY", r.err)
    local ok_csv = write("ok.csv", "tel,content,link\n13311112222,x,https://szai.0xiao.com/t\n")
    r = kaifang("batch lingdian send_wechat_message " .. q(ok_csv) .. " --journal " .. q(scratch .. "/no/such/dir/j.db"), env)
    assert.are.equal(4, r.status) -- a journal that cannot be opened
    assert.matches("^kaifang%.journal%.sqlite: .*no/such/dir/j%.db", r.err)
    assert.is_nil(r.err:find("traceback", 1, true))
    assert.are.same({}, delivered())
  end)

  it("stops cleanly on SIGINT, leaving the journal consistent, and the rerun completes it", function()
    local N = 300
    local rows = { "tel,content,link" }
    for i = 1, N do rows[#rows + 1] = ("%s,c%d,https://szai.0xiao.com/s"):format(i % 2 == 0 and "13311112222" or "13311113333", i) end
    local csv = write("stop.csv", table.concat(rows, "\n") .. "\n")
    local db = scratch .. "/stop.db"
    assert(sb:configure{ lingdian = { latency = 0.05 } }) -- 8 at a time: about 160 a second
    local errfile = os.tmpname()
    local fh = assert(io.popen("echo $$; exec " .. cli.command(scratch, "batch lingdian send_wechat_message " .. q(csv)
      .. " --journal " .. q(db) .. " --concurrency 8", env) .. " 2>" .. q(errfile)))
    local pid = tonumber(fh:read("l"))
    require("kaifang.core").sleep(0.6)
    local second = kaifang("batch lingdian send_wechat_message " .. q(csv) .. " --journal " .. q(db), env)
    os.execute("kill -INT " .. pid)
    local out = fh:read("a")
    local _, _, status = fh:close()
    local err = shell.readfile(errfile)
    os.remove(errfile)
    assert.are.equal(130, status, err)
    -- the second run, meanwhile, was refused, and left the first one's results alone
    assert.are.equal(4, second.status)
    assert.matches("another process is running a batch with this journal", second.err)
    assert.are.equal("", second.out)
    assert.matches("stopping: waiting for the calls in flight", err)
    assert.matches("stopped before the end; run the same command again to resume", err)

    local j = journal.sqlite(db, { readonly = true })
    local report = j:report()
    j:close()
    assert.are.equal(0, report.sending) -- each call settled, or left for the next run
    assert.are.equal(0, report.maybe_sent)
    assert.is_true(report.ok > 0 and report.ok < N, report.ok .. " sent")
    assert.matches(report.ok .. " ok", out)
    assert.are.equal(report.ok, #results(scratch .. "/stop.results.jsonl"))

    assert(sb:configure{ lingdian = { latency = 0 } })
    local r = kaifang("batch lingdian send_wechat_message " .. q(csv) .. " --journal " .. q(db), env)
    assert.are.equal(0, r.status, r.err)
    assert.matches(("%d rows: %d ok, 0 failed, 0 maybe sent %%(%d as recorded by an earlier run%%)"):format(N, N, report.ok), r.out)
    local count, n = delivered(), 0
    for content, times in pairs(count) do
      assert.are.equal(1, times, content)
      n = n + 1
    end
    assert.are.equal(N, n)
  end)
end)
