-- wrk script: POST the JSON body in the file named by BENCH_BODY to BENCH_PATH, each request with a
-- fresh hookInstance, and print the figures as one JSON line at the end.
--
-- With BENCH_NOTES (a file of note texts separated by NUL bytes, each holding "{{V}}" in every sentence
-- and line), every "@@note-text@@" in the body, in order, becomes the base64 of the next note, its
-- "{{V}}" replaced by an 8-digit value no other request of the run has used (BENCH_RUN, the thread and
-- a counter; the same for all notes of one request): every request then carries text never read before.
local mark = "00000000-0000-4000-8000-000000000000"
local note_mark = "@@note-text@@"
local pieces = {}   -- the body: strings, and the holes {kind = "instance"} / {kind = "note", index = n}
local notes = {}    -- note texts, each split at "{{V}}"
local counter = 0
local run = tonumber(os.getenv("BENCH_RUN") or "0") % 100

local function read(name)
  local file = assert(io.open(name, "rb"))
  local text = file:read("*a")
  file:close()
  return text
end

local function split(text, separator)
  local parts, start = {}, 1
  while true do
    local first, last = text:find(separator, start, true)
    if not first then
      parts[#parts + 1] = text:sub(start)
      return parts
    end
    parts[#parts + 1] = text:sub(start, first - 1)
    start = last + 1
  end
end

function setup(thread)
  thread_count = (thread_count or 0) + 1
  thread:set("thread_number", thread_count)
end

function init(args)
  local body = read(os.getenv("BENCH_BODY"))
  local note_count, position = 0, 1
  while true do
    local a = body:find(mark, position, true)
    local b = body:find(note_mark, position, true)
    if not a and not b then break end
    if a and (not b or a < b) then
      pieces[#pieces + 1] = body:sub(position, a - 1)
      pieces[#pieces + 1] = {kind = "instance"}
      position = a + #mark
    else
      note_count = note_count + 1
      pieces[#pieces + 1] = body:sub(position, b - 1)
      pieces[#pieces + 1] = {kind = "note", index = note_count}
      position = b + #note_mark
    end
  end
  pieces[#pieces + 1] = body:sub(position)
  if os.getenv("BENCH_NOTES") then
    for _, text in ipairs(split(read(os.getenv("BENCH_NOTES")), "\0")) do
      notes[#notes + 1] = split(text, "{{V}}")
    end
  end
  assert(note_count == #notes, "the body's note holes and BENCH_NOTES do not match")
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
end

local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local digit = {}
for i = 0, 63 do digit[i] = alphabet:sub(i + 1, i + 1) end

local function base64(text)
  local out, n, j = {}, #text, 1
  for i = 1, n - 2, 3 do
    local a, b, c = text:byte(i, i + 2)
    local v = a * 65536 + b * 256 + c
    out[j], out[j + 1] = digit[math.floor(v / 262144)], digit[math.floor(v / 4096) % 64]
    out[j + 2], out[j + 3] = digit[math.floor(v / 64) % 64], digit[v % 64]
    j = j + 4
  end
  local rest = n % 3
  if rest > 0 then
    local a, b = text:byte(n - rest + 1, n)
    local v = a * 65536 + (b or 0) * 256
    out[j], out[j + 1] = digit[math.floor(v / 262144)], digit[math.floor(v / 4096) % 64]
    out[j + 2], out[j + 3] = rest == 2 and digit[math.floor(v / 64) % 64] or "=", "="
  end
  return table.concat(out)
end

local function instance()
  return string.format("%08x-%04x-4%03x-8%03x-%012x", math.random(0, 0xffffffff), math.random(0, 0xffff),
                       math.random(0, 0xfff), math.random(0, 0xfff), counter)
end

local function note(index, value)
  return base64(table.concat(notes[index], value))
end

function request()
  counter = counter + 1
  local value = string.format("%02d%01d%05d", run, (thread_number or 0) % 10, counter % 100000)
  local out = {}
  for i, piece in ipairs(pieces) do
    if type(piece) == "string" then
      out[i] = piece
    elseif piece.kind == "instance" then
      out[i] = instance()
    else
      out[i] = note(piece.index, value)
    end
  end
  return wrk.format("POST", os.getenv("BENCH_PATH"), {["Content-Type"] = "application/json"}, table.concat(out))
end

function done(summary, latency, requests)
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, ' ..
    '"errors_status": %d, "errors_connect": %d, "errors_read": %d, "errors_write": %d, "errors_timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95), latency:percentile(99),
    summary.errors.status, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout))
end
