-- wrk script: POSTs one signed 1 KiB JSON body with a unique X-Request-Id per request.
-- BODY_FILE holds the body and SIGNATURE its "sha256=<hex>" HMAC (scripts/bench-ingest.sh makes both).
local body_file = assert(io.open(os.getenv("BODY_FILE"), "rb"))
local body = body_file:read("*a")
body_file:close()
local signature = os.getenv("SIGNATURE")
local run = os.getenv("RUN_ID") or tostring(os.time())

local threads = {}
function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

local counter = 0
function request()
  counter = counter + 1
  return wrk.format("POST", "/ingest/bench", {
    ["Content-Type"] = "application/json",
    ["X-Signature"] = signature,
    ["X-Request-Id"] = run .. "-" .. tid .. "-" .. counter,
  }, body)
end

local statuses = {}
function response(status)
  statuses[status] = (statuses[status] or 0) + 1
end

-- Open-loop-ish pacing for latency runs: DELAY_MS between a connection's requests (0: closed loop).
local pause = tonumber(os.getenv("DELAY_MS") or "0")
if pause > 0 then
  function delay()
    return pause
  end
end
