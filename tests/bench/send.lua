-- wrk script for `make bench`, proxy mode: POST /v1/send bodies of about 280 bytes.
--
--   wrk -t1 -c64 -d8s --latency -s tests/bench/send.lua http://127.0.0.1:PORT/v1/send
--   wrk ... -s tests/bench/send.lua URL -- users=1000000 campaigns=50
--
-- The decide body of tests/bench/post.lua (same random user out of `users`,
-- channel mix email 50 %, push 40 %, sms 10 %, category, a message_id that
-- is unique across threads and runs, a campaign out of `campaigns`, a time
-- zone) plus the `payload` that /v1/send forwards to the channel's upstream:
-- the recipient, a template and one variable, about 80 bytes.
--
-- /v1/send answers per decision (200 allowed and forwarded, 202 deferred,
-- 403/429 denied), so wrk's "Non-2xx or 3xx responses" counts decisions,
-- not failures; bench.py takes the errors from capgate's /status instead.
-- No response() hook here: it would make wrk build a Lua table per answer.
--
-- wrk runs each thread's copy of this script in its own Lua state: setup()
-- (main state) hands every thread its id, init() seeds that thread's RNG from
-- /dev/urandom (falling back to time + id) so threads and runs differ.

local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("tid", thread_count)
end

local users, campaigns = 1000000, 50
local run_token = "00000000"
local seq = 0
local headers = { ["Content-Type"] = "application/json" }
local channels = { "email", "email", "email", "email", "email",
                   "push", "push", "push", "push", "sms" }
local zones = { "Europe/Paris", "America/New_York", "Asia/Tokyo", "Europe/London",
                "America/Los_Angeles", "Australia/Sydney", "UTC", "Europe/Berlin" }
local names = { "Alex", "Sam", "Robin", "Charlie", "Jordan", "Camille", "Noa", "Kim" }

local function seed()
  local id = tonumber(tid) or 0
  local n = os.time() * 1000 + id
  local f = io.open("/dev/urandom", "rb")
  if f then
    local b = f:read(6)
    f:close()
    if b and #b == 6 then
      n = 0
      for i = 1, 6 do n = n * 256 + b:byte(i) end
      n = n + id
    end
  end
  math.randomseed(n)
  math.random(); math.random()
  run_token = string.format("%04x%04x", math.random(0, 65535), math.random(0, 65535))
end

function init(args)
  for _, a in ipairs(args or {}) do
    local k, v = a:match("^(%w+)=(%d+)$")
    if k == "users" then users = tonumber(v) end
    if k == "campaigns" then campaigns = tonumber(v) end
  end
  seed()
end

function request()
  seq = seq + 1
  local user, campaign = math.random(1, users), math.random(1, campaigns)
  local body = string.format(
    '{"user":"user-%d@example.com","channel":"%s","category":"marketing",' ..
    '"message_id":"%s-%04x-4%03x-a%03x-%012x","campaign":"camp-%d","tz":"%s",' ..
    '"payload":{"to":"user-%d@example.com","template":"camp-%d",' ..
    '"vars":{"first_name":"%s"}}}',
    user, channels[math.random(1, 10)],
    run_token, tonumber(tid) or 0, math.random(0, 4095), math.random(0, 4095), seq,
    campaign, zones[math.random(1, 8)],
    user, campaign, names[math.random(1, 8)])
  return wrk.format("POST", nil, headers, body)
end
