-- decide.lua: one atomic allow / defer / deny decision for one person.
--
-- Layout (see src/decision.c, which builds the arguments; keep both in step).
-- People are grouped into buckets; every key of a bucket carries the bucket's
-- hash tag, so a decision touches one Redis Cluster slot.  Many people share
-- one small hash, which Redis keeps as a compact listpack: a person costs a
-- field and a value instead of a key, an expiry and their overheads.
--
-- KEYS[1]  sends:   hash  person -> packed sends, 16 bytes each, oldest first:
--                   allowed-at (5: ms since 2024-01-01 UTC, good until 2058) |
--                   message hash (4) | channel (2; top bit: exempt from caps) |
--                   category (2) | campaign hash (3, 0 = none)
--                   16 bytes keep 4 sends within Redis's default listpack
--                   value limit (hash-max-listpack-value 64).
--                   The key's TTL is the retention; expired sends are trimmed
--                   when their person is written, and a stale person is removed
--                   by the decisions of others in the bucket (garbage collection).
-- KEYS[2]  consent: string (one per person who has any): cmsgpack map
--                   "<channel|*>|<category|*>" -> {state "in"|"out", at ms, source};
--                   no TTL (proof of consent)
-- Time is Redis's own clock (TIME), so any number of gateways agree on it.
--
-- ARGV[1] person (8 bytes)  ARGV[2] message hash  ARGV[3] channel hash
-- ARGV[4] category hash     ARGV[5] campaign hash (0 none)
-- ARGV[6] flags: 'd' dry run, 'o' ignores opt-out, 'i' requires opt-in,
--         'x' exempt from caps (recorded, but never counted by a cap)
-- ARGV[7] retention ms   ARGV[8] idempotency ms   ARGV[9] max_defer ms
-- ARGV[10] channel name  ARGV[11] category name   (consent is kept by name)
-- ARGV[12] quiet intervals, packed: n x (start ms (6) | end ms (6))
-- ARGV[13] caps, packed: n x (index (1) | channel (2, 0 any) | category (2, 0 any) |
--          per campaign (1) | deny (1) | limit (2) | window ms (6))
--
-- Returns {outcome, reason, rule, retry_ms, replay, now_ms}
--   outcome 0 allow, 1 defer, 2 deny
--   reason  0 ok, 1 opted_out, 2 consent_required, 3 quiet_hours, 4 cap
--   rule    the deciding cap's index + 1, 0 when no cap decided

local REC = 16
local FMT = '>I5I4I2I2I3'
local EPOCH = 1704067200000          -- 2024-01-01T00:00:00Z in ms
local EXEMPT = 32768                 -- channel's top bit
local MAX_SENDS = 1000   -- per person; the oldest beyond are forgotten

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local person, flags = ARGV[1], ARGV[6]
local msg, channel, category, campaign =
  tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local retention, idem, max_defer = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])

-- The person's sends that still matter, oldest first.
local ts, ms, chs, cats, camps, n = {}, {}, {}, {}, {}, 0
local raw = redis.call('HGET', KEYS[1], person)
if raw then
  local oldest = now - retention
  for off = 1, #raw - REC + 1, REC do
    local a, m, c, g, k = struct.unpack(FMT, raw, off)
    a = a + EPOCH
    if a > oldest then
      n = n + 1
      ts[n], ms[n], chs[n], cats[n], camps[n] = a, m, c, g, k
    end
  end
end

-- 1. A message already allowed is allowed again, and not counted twice.
for i = 1, n do
  if ms[i] == msg and ts[i] > now - idem then
    return {0, 0, 0, 0, 1, now}
  end
end

-- 2./3. Consent: the most specific record wins.
local state = nil
local packed = redis.call('GET', KEYS[2])
if packed then
  local rec = cmsgpack.unpack(packed)
  local cn, gn = ARGV[10], ARGV[11]
  local r = rec[cn .. '|' .. gn] or rec[cn .. '|*'] or rec['*|' .. gn] or rec['*|*']
  if r then state = r[1] end
end
if state == 'out' and not string.find(flags, 'o', 1, true) then
  return {2, 1, 0, 0, 0, now}
end
if string.find(flags, 'i', 1, true) and state ~= 'in' then
  return {2, 2, 0, 0, 0, now}
end

-- 4. Quiet hours: absolute intervals the gateway computed in the zone.
local q = ARGV[12]
for off = 1, #q - 11, 12 do
  local s, e = struct.unpack('>I6I6', q, off)
  if now >= s and now < e then
    if e - now > max_defer then
      return {2, 3, 0, e - now, 0, now}
    end
    return {1, 3, 0, e - now, 0, now}
  end
end

-- 5. Caps.  retry_after is exact: the (count - limit + 1)-th oldest matching
-- send has to leave the window before one more fits.
local caps = ARGV[13]
local defer_rule, defer_retry = 0, -1
for off = 1, #caps - 14, 15 do
  local idx, cch, ccat, percamp, deny, limit, window =
    struct.unpack('>I1I2I2I1I1I2I6', caps, off)
  local since, count, inwin = now - window, 0, {}
  for i = 1, n do
    if ts[i] > since and chs[i] < EXEMPT and (cch == 0 or chs[i] == cch)
       and (ccat == 0 or cats[i] == ccat) and (percamp == 0 or camps[i] == campaign) then
      count = count + 1
      inwin[count] = ts[i]
    end
  end
  if count >= limit then
    local retry = inwin[count - limit + 1] + window - now
    if deny == 1 then
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

-- 6. Allowed: record the send (unless this was a dry run).
if not string.find(flags, 'd', 1, true) then
  local first = 1
  if n >= MAX_SENDS then first = n - MAX_SENDS + 2 end
  local parts = {}
  for i = first, n do
    parts[#parts + 1] = struct.pack(FMT, ts[i] - EPOCH, ms[i], chs[i], cats[i], camps[i])
  end
  -- Keep the order even if Redis's clock stepped back (failover).
  local at = now
  if n > 0 and ts[n] > at then at = ts[n] end
  if string.find(flags, 'x', 1, true) then channel = channel + EXEMPT end
  parts[#parts + 1] = struct.pack(FMT, at - EPOCH, msg, channel, category, campaign)
  redis.call('HSET', KEYS[1], person, table.concat(parts))

  -- Garbage collection: look at one other person of the bucket; if none of
  -- their sends still matter, they go.  Each write sweeps a little, so a
  -- bucket holds the people active within the retention, not all who ever were.
  local other = redis.call('HRANDFIELD', KEYS[1])
  if other and other ~= person then
    local v = redis.call('HGET', KEYS[1], other)
    if v and #v >= REC then
      local last = struct.unpack('>I5', v, #v - REC + 1) + EPOCH
      if last <= now - retention then
        redis.call('HDEL', KEYS[1], other)
      end
    end
  end
  redis.call('PEXPIRE', KEYS[1], retention)
end
return {0, 0, 0, 0, 0, now}
