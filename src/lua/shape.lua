-- shape.lua: the provider's side of a forward -- one upstream's send rate
-- and its pushback, for every gateway together.  KEYS[1] is the upstream's
-- hash, cg:{u.<channel>}:up (its own slot: no person's key is near it):
--   tat     the rate's theoretical arrival time (GCRA), ms on Redis's clock:
--           a forward conforms when tat - tau <= now, and moves tat by T
--   sched   the next free slot of the schedule: a message the rate holds is
--           given the slot max(sched, when the rate frees), and sched moves
--           by T, so a backlog comes back spread at the rate, not all at once
--   paused  the upstream pushed back (429, 503): nothing goes before this
--   probe   after a pause, one forward goes alone and holds this until its
--           answer ('open', or 'pause' again) or until it would have timed out
--   pauses  pushbacks in a row (the backoff doubles with each)
-- Times are ms (fractions kept: T may be a fraction of a ms).
--
-- ARGV[1] 'take': ARGV[2] T   ARGV[3] tau   ARGV[4] '1' from the queue (it had
--   its slot), '0' a fresh send (it goes only when no backlog waits)
--   ARGV[5] how long a probe holds (ms)   ARGV[6] the latest slot worth taking
--   (ms from now; later: refused, nothing reserved)   ARGV[7] '1' reserve a
--   slot when held, '0' only say when (over_rate: reject)
--   Returns {go (1/0), ms until its slot, probe (1/0), why: 'rate'|'paused'}
-- ARGV[1] 'pause': ARGV[2] ms asked (Retry-After; -1: none, back off)
--   ARGV[3] the first backoff ms   ARGV[4] max pause ms
--   Returns the ms paused from now.
-- ARGV[1] 'open': the probe was answered and it was no pushback.  Returns 1.
-- ARGV[1] 'state': returns {now, tat, sched, paused, probe, pauses} (0: unset).
local key = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local action = ARGV[1]
local DAY = 86400000
-- ARGV[#ARGV] is the gateway's deadline (see decide.lua): past it, nothing changes.
if action ~= 'state' and now > tonumber(ARGV[#ARGV]) then
  return redis.error_reply('LATE ' .. math.floor(now))
end

local function num(v) return tonumber(v or 0) or 0 end
local h = redis.call('HMGET', key, 'tat', 'sched', 'paused', 'probe', 'pauses')
local tat, sched, paused, probe, pauses = num(h[1]), num(h[2]), num(h[3]), num(h[4]), num(h[5])

local function keep(until_ms)
  local ttl = math.ceil(math.max(until_ms - now, 0)) + DAY
  redis.call('PEXPIRE', key, ttl)
end

if action == 'state' then
  return {tostring(now), tostring(tat), tostring(sched), tostring(paused), tostring(probe),
          tostring(pauses)}
end

if action == 'pause' then
  local asked, first, most = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
  local ms = asked
  if ms < 0 then
    ms = first * 2 ^ pauses
  end
  if ms > most then ms = most end
  if ms < 1 then ms = 1 end
  local until_ms = math.max(paused, now + ms)
  -- A pushback while already paused (answers in flight) extends the pause
  -- but is one pushback: the backoff doubles once per pause.
  if paused <= now or probe > 0 then pauses = pauses + 1 end
  redis.call('HSET', key, 'paused', tostring(until_ms), 'pauses', pauses,
             'sched', tostring(math.max(sched, until_ms)))
  redis.call('HDEL', key, 'probe')
  keep(until_ms)
  return math.ceil(until_ms - now)
end

if action == 'open' then
  if paused > 0 then
    -- The rate starts again from now, without a burst.
    local T = tonumber(ARGV[2] or 0) or 0
    redis.call('HSET', key, 'tat', tostring(math.max(tat, now + (tonumber(ARGV[3] or 0) or 0))))
    redis.call('HDEL', key, 'paused', 'probe')
    redis.call('HSET', key, 'pauses', 0)
    if T > 0 and sched < now then redis.call('HSET', key, 'sched', tostring(now)) end
  end
  return 1
end

-- take
local T, tau = tonumber(ARGV[2]), tonumber(ARGV[3])
local from_queue, probe_ms, horizon = ARGV[4] == '1', tonumber(ARGV[5]), tonumber(ARGV[6])
local reserve = ARGV[7] == '1'

local function hold(earliest, why)
  local slot = math.max(sched, earliest, now)
  local wait = slot - now
  if wait > horizon then
    return {0, math.ceil(wait), 0, why}
  end
  if reserve then
    redis.call('HSET', key, 'sched', tostring(slot + T))
    keep(slot + T)
  end
  return {0, math.ceil(wait), 0, why}
end

if paused > 0 then
  if now < paused then
    return hold(paused, 'paused')
  end
  if probe > now then
    -- The probe is out: the others wait for its answer, at the rate.
    return hold(now + T, 'paused')
  end
  redis.call('HSET', key, 'probe', tostring(now + probe_ms))
  keep(now + probe_ms)
  return {1, 0, 1, 'paused'}
end

if T == 0 then
  return {1, 0, 0, 'rate'}     -- no rate: only pushback is kept here
end
local earliest = math.max(tat - tau, now)
if earliest > now or (not from_queue and sched > now) then
  return hold(earliest, 'rate')
end
local new_tat = math.max(tat, now) + T
redis.call('HSET', key, 'tat', tostring(new_tat))
keep(math.max(new_tat, sched))
return {1, 0, 0, 'rate'}
