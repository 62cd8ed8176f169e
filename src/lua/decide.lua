-- decide.lua: one atomic allow / defer / deny decision for one person.
--
-- Every key belongs to one person and carries the person's hash tag, so the
-- whole decision touches one Redis Cluster slot.  Time is Redis's own clock
-- (TIME), so any number of gateways agree on it.  src/decision.c builds the
-- arguments; keep the two in step.
--
-- KEYS[1]  sends:   sorted set, score = allowed-at (ms), member =
--                   "<message hash>|<channel>|<category>|<campaign>"
-- KEYS[2]  consent: hash, "<channel|*>|<category|*>" -> "<in|out>|<ms>|<source>"
-- ARGV[1] message hash   ARGV[2] channel   ARGV[3] category   ARGV[4] campaign ('' none)
-- ARGV[5] flags: 'd' dry run, 'o' ignores opt-out, 'i' requires opt-in
-- ARGV[6] retention ms (key TTL)   ARGV[7] idempotency ms   ARGV[8] max_defer ms
-- ARGV[9] n quiet intervals, then n pairs: start ms, end ms (absolute UTC)
-- then n caps, then 7 per cap: index, channel ('' any), category ('' any),
--      per campaign (0/1), limit, window ms, deny (0/1)
--
-- Returns {outcome, reason, rule, retry_ms, replay, now_ms}
--   outcome 0 allow, 1 defer, 2 deny
--   reason  0 ok, 1 opted_out, 2 consent_required, 3 quiet_hours, 4 cap
--   rule    the deciding cap's index + 1, 0 when no cap decided

local MAX_SENDS = 4000   -- sends remembered per person, newest kept

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mid, channel, category, campaign, flags = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local retention, idem, max_defer = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])

-- The person's sends that can still matter, oldest first.
local raw = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. (now - retention), '+inf', 'WITHSCORES')

-- 1. A message already allowed is allowed again, and not counted twice.
local prefix = mid .. '|'
local plen = #prefix
for i = 1, #raw, 2 do
  if string.sub(raw[i], 1, plen) == prefix and tonumber(raw[i + 1]) > now - idem then
    return {0, 0, 0, 0, 1, now}
  end
end

-- 2./3. Consent: the most specific record wins.
local rec = redis.call('HMGET', KEYS[2], channel .. '|' .. category, channel .. '|*',
                       '*|' .. category, '*|*')
local state = nil
for i = 1, 4 do
  if rec[i] then
    state = string.match(rec[i], '^(%a+)|')
    break
  end
end
if state == 'out' and not string.find(flags, 'o', 1, true) then
  return {2, 1, 0, 0, 0, now}
end
if string.find(flags, 'i', 1, true) and state ~= 'in' then
  return {2, 2, 0, 0, 0, now}
end

-- 4. Quiet hours, as absolute intervals the gateway computed in the zone.
local p = 10
for _ = 1, tonumber(ARGV[9]) do
  local s, e = tonumber(ARGV[p]), tonumber(ARGV[p + 1])
  p = p + 2
  if now >= s and now < e then
    if e - now > max_defer then
      return {2, 3, 0, e - now, 0, now}
    end
    return {1, 3, 0, e - now, 0, now}
  end
end

-- 5. Caps.  Parse the sends once, then count per cap.
local ncaps = tonumber(ARGV[p])
p = p + 1
if ncaps > 0 then
  local ts, chs, cats, camps, n = {}, {}, {}, {}, 0
  for i = 1, #raw, 2 do
    local _, c, g, k = string.match(raw[i], '^([^|]*)|([^|]*)|([^|]*)|(.*)$')
    n = n + 1
    ts[n], chs[n], cats[n], camps[n] = tonumber(raw[i + 1]), c, g, k
  end
  local defer_rule, defer_retry = 0, -1
  for _ = 1, ncaps do
    local idx, cch, ccat = tonumber(ARGV[p]), ARGV[p + 1], ARGV[p + 2]
    local percamp, limit, window = ARGV[p + 3] == '1', tonumber(ARGV[p + 4]), tonumber(ARGV[p + 5])
    local deny = ARGV[p + 6] == '1'
    p = p + 7
    local since = now - window
    local count, first = 0, nil
    -- Matching sends inside the window, oldest first; remember them in order
    -- so that retry_after is exact: the (count - limit + 1)-th oldest has to
    -- leave the window before one more send fits.
    local inwin = {}
    for i = 1, n do
      if ts[i] > since and (cch == '' or chs[i] == cch) and (ccat == '' or cats[i] == ccat)
         and (not percamp or camps[i] == campaign) then
        count = count + 1
        inwin[count] = ts[i]
      end
    end
    if count >= limit then
      first = inwin[count - limit + 1]
      local retry = first + window - now
      if deny then
        return {2, 4, idx + 1, retry, 0, now}
      end
      if retry > defer_retry then
        defer_rule, defer_retry = idx + 1, retry
      end
    end
  end
  if defer_rule > 0 then
    if defer_retry > max_defer then
      return {2, 4, defer_rule, defer_retry, 0, now}
    end
    return {1, 4, defer_rule, defer_retry, 0, now}
  end
end

-- 6. Allowed: record the send (unless this was a dry run).
if not string.find(flags, 'd', 1, true) then
  redis.call('ZADD', KEYS[1], now, mid .. '|' .. channel .. '|' .. category .. '|' .. campaign)
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - retention)
  if #raw / 2 >= MAX_SENDS then
    redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(MAX_SENDS + 1))
  end
  redis.call('PEXPIRE', KEYS[1], retention)
end
return {0, 0, 0, 0, 0, now}
