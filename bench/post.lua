-- wrk script: POST the JSON body in the file named by BENCH_BODY to BENCH_PATH, each request with a
-- fresh hookInstance, and print the figures as one JSON line at the end.
local mark = "00000000-0000-4000-8000-000000000000"
local head, tail
local counter = 0

function init(args)
  local file = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
  local body = file:read("*a")
  file:close()
  local first, last = body:find(mark, 1, true)
  assert(first, "the body has no hookInstance placeholder")
  head, tail = body:sub(1, first - 1), body:sub(last + 1)
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
end

local function instance()
  counter = counter + 1
  return string.format("%08x-%04x-4%03x-8%03x-%012x", math.random(0, 0xffffffff), math.random(0, 0xffff),
                       math.random(0, 0xfff), math.random(0, 0xfff), counter)
end

function request()
  return wrk.format("POST", os.getenv("BENCH_PATH"), {["Content-Type"] = "application/json"},
                    head .. instance() .. tail)
end

function done(summary, latency, requests)
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, ' ..
    '"errors_status": %d, "errors_connect": %d, "errors_read": %d, "errors_write": %d, "errors_timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95), latency:percentile(99),
    summary.errors.status, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout))
end
