-- wrk script for `make bench`: POST decide bodies of about 200 bytes, or
-- with `payload=1` /v1/send bodies of about 280.
--
--   wrk -t1 -c64 -d8s --latency -s tests/bench/post.lua http://127.0.0.1:PORT/v1/decide
--   wrk ... -s tests/bench/post.lua http://127.0.0.1:FLOOR_PORT/ -- users=1000000 campaigns=50
--   wrk ... -s tests/bench/post.lua http://127.0.0.1:PORT/v1/send -- payload=1
--   wrk ... -s tests/bench/post.lua http://127.0.0.1:PORT/v3/mail/send -- route=1
--
-- The path is the URL's, so the same bodies drive capgate (/v1/decide) and
-- the floor program (any path).  Each body names a random user out of
-- `users` (default 1,000,000), a channel (email 50 %, push 40 %, sms 10 %),
-- the category, a message_id that is unique across threads and runs, a
-- random campaign out of `campaigns` (default 50) and a time zone.  With
-- `payload=1` it adds what /v1/send forwards to the channel's upstream: the
-- recipient, a template and one variable, about 80 bytes.  (/v1/send answers
-- per decision -- 200, 202, 403, 429 -- so wrk's "Non-2xx" counts decisions
-- there; bench.py takes the errors from capgate's /status.)  With `route=1`
-- it posts the same person and campaign as a SendGrid-shaped request for a
-- transparent route (one recipient, the message id as Idempotency-Key).
--
-- wrk runs each thread's copy of this script in its own Lua state: setup()
-- (main state) hands every thread its id, init() seeds that thread's RNG from
-- /dev/urandom (falling back to time + id) so threads and runs differ.

local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("tid", thread_count)
end

local users, campaigns, payload, route = 1000000, 50, false, false
local run_token = "00000000"
local seq = 0
local headers = { ["Content-Type"] = "application/json" }
local channels = { "email", "email", "email", "email", "email",
                   "push", "push", "push", "push", "sms" }
local names = { "Alex", "Sam", "Robin", "Charlie", "Jordan", "Camille", "Noa", "Kim" }
local zones = { "Europe/Paris", "America/New_York", "Asia/Tokyo", "Europe/London",
                "America/Los_Angeles", "Australia/Sydney", "UTC", "Europe/Berlin" }

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
    if k == "payload" then payload = v ~= "0" end
    if k == "route" then route = v ~= "0" end
  end
  seed()
end

function request()
  seq = seq + 1
  local user, campaign = math.random(1, users), math.random(1, campaigns)
  if route then
    local h = { ["Content-Type"] = "application/json",
                ["Idempotency-Key"] = string.format("%s-%04x-r%011x", run_token, tonumber(tid) or 0,
                                                    seq) }
    return wrk.format("POST", nil, h, string.format(
      '{"personalizations":[{"to":[{"email":"user-%d@example.com"}]}],' ..
      '"from":{"email":"shop@example.com"},"subject":"camp-%d",' ..
      '"content":[{"type":"text/plain","value":"Hello %s"}]}',
      user, campaign, names[math.random(1, 8)]))
  end
  local body = string.format(
    '{"user":"user-%d@example.com","channel":"%s","category":"marketing",' ..
    '"message_id":"%s-%04x-4%03x-a%03x-%012x","campaign":"camp-%d","tz":"%s"',
    user, channels[math.random(1, 10)],
    run_token, tonumber(tid) or 0, math.random(0, 4095), math.random(0, 4095), seq,
    campaign, zones[math.random(1, 8)])
  if payload then
    body = body .. string.format(
      ',"payload":{"to":"user-%d@example.com","template":"camp-%d","vars":{"first_name":"%s"}}}',
      user, campaign, names[math.random(1, 8)])
  else
    body = body .. '}'
  end
  return wrk.format("POST", nil, headers, body)
end
