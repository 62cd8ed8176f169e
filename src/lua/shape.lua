-- shape.lua: the provider's side of a forward -- one upstream's send rate
-- and its pushback, for every gateway together.  KEYS[1] is the upstream's
-- hash, cg:{u.<channel>}:up (its own slot: no person's key is near it):
--   tat     the rate's theoretical arrival time (GCRA), ms on Redis's clock:
--           a forward conforms when tat - tau <= now, and moves tat by T
--   sched   the next free slot of the schedule: a message the rate holds is
--           given the slot max(sched, when the rate frees), and sched moves
--           by T, so a backlog comes back spread at the rate, not all at once
--   sched1 .. sched9   the same for the messages of priority 1..9 and above:
--           a held message of priority p takes its slot after the backlog of
--           priority >= p only (and moves every schedule of priority <= p
--           past it), so a receipt overtakes a newsletter backlog.  The
--           newsletter whose slot it took is held again when it comes due
--           (a queued message yields while a higher priority's slots are
--           ahead) and takes a new slot at its backlog's end: one more call
--           per overtaken message, and the rate still holds.
--           sched >= sched1 >= ... >= sched9
--   paused  the upstream pushed back (429, 503): nothing goes before this
--   probe   after a pause, one forward goes alone and holds this until its
--           answer ('open', or 'pause' again) or until it would have timed out
--   pauses  pushbacks in a row (the backoff doubles with each)
--   wday, wsent   the warm-up's day and the forwards counted in it
-- Times are ms (fractions kept: T may be a fraction of a ms).
-- KEYS[2..] the campaign throttles' hashes (cg:{u.<channel>}:t:<name>:<campaign>,
-- the same slot): tat and sched, as above.
--
-- ARGV[1] 'take': ARGV[2] '1' from the queue (it had its slot), '0' a fresh
--   send (it goes only when no backlog waits)   ARGV[3] how long a probe
--   holds (ms)   ARGV[4] the latest slot worth reserving (ms from now)
--   ARGV[5] '1' reserve a slot when held, '0' only say when (over_rate:
--   reject)   ARGV[6] the warm-up, "<day>|<ceiling>|<ms until the next
--   day>", or '-'   ARGV[7] the message's priority (0..9)
--   ARGV[7 + k] KEYS[k]'s rate, "<T>|<tau>" ("0|0": none)
--   Returns {go (1/0), ms until its slot, probe (1/0),
--            why: 'rate'|'throttle'|'paused'|'warmup'}
-- ARGV[1] 'pause': ARGV[2] ms asked (Retry-After; -1: none, back off)
--   ARGV[3] the first backoff ms   ARGV[4] max pause ms
--   Returns the ms paused from now.
-- ARGV[1] 'open': the probe was answered and it was no pushback.  Returns 1.
-- ARGV[1] 'state': returns {now, tat, sched, paused, probe, pauses, wday, wsent}
-- (0: unset).
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
-- The schedules, of priority 0 ('sched') to 9.
local SCHED = {'sched'}
for q = 1, 9 do SCHED[q + 1] = 'sched' .. q end
local h = redis.call('HMGET', key, 'tat', 'sched', 'paused', 'probe', 'pauses', 'wday', 'wsent',
                     unpack(SCHED, 2))
local tat, sched, paused, probe, pauses = num(h[1]), num(h[2]), num(h[3]), num(h[4]), num(h[5])

local function keep(until_ms)
  local ttl = math.ceil(math.max(until_ms - now, 0)) + DAY
  redis.call('PEXPIRE', key, ttl)
end

if action == 'state' then
  return {tostring(now), tostring(tat), tostring(sched), tostring(paused), tostring(probe),
          tostring(pauses), h[6] or '', tostring(num(h[7]))}
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
local from_queue, probe_ms, horizon = ARGV[2] == '1', tonumber(ARGV[3]), tonumber(ARGV[4])
local reserve = ARGV[5] == '1'
local prio = tonumber(ARGV[7])
local T1 = tonumber(string.match(ARGV[8], '^([^|]+)|'))

-- A limiter (the upstream's hash, or a throttle's): its tat and schedules;
-- sched is the end of the backlog of this priority and above, higher that
-- of the priorities above it.
local function limiter(k, T)
  local l = {key = k, T = T, scheds = {}}
  local v, first = h, 8
  if k == key then
    l.scheds[1] = sched
  else
    v, first = redis.call('HMGET', k, 'tat', unpack(SCHED)), 3
    l.scheds[1] = num(v[2])
  end
  l.tat = num(v[1])
  for q = 2, 10 do l.scheds[q] = num(v[first + q - 2]) end
  l.sched, l.higher = l.scheds[prio + 1], 0
  for q = prio + 2, 10 do l.higher = math.max(l.higher, l.scheds[q]) end
  return l
end

-- Held: the slot it gets (reserved in the schedules LIMITERS, when asked).
local function hold(earliest, why, limiters)
  local slot = math.max(earliest, now)
  for _, l in ipairs(limiters or {}) do slot = math.max(slot, l.sched) end
  local wait = slot - now
  if reserve and wait <= horizon then
    for _, l in ipairs(limiters or {}) do
      local after, set = slot + l.T, {}
      for q = 1, prio + 1 do
        if l.scheds[q] < after then
          set[#set + 1] = SCHED[q]
          set[#set + 1] = tostring(after)
        end
      end
      if #set > 0 then redis.call('HSET', l.key, unpack(set)) end
      redis.call('PEXPIRE', l.key, math.ceil(math.max(after, l.scheds[1]) - now) + DAY)
    end
  end
  return {0, math.ceil(wait), 0, why}
end

if paused > 0 then
  if now < paused then
    return hold(paused, 'paused', {limiter(key, T1)})
  end
  if probe > now then
    -- The probe is out: the others wait for its answer, at the rate.
    return hold(now + math.max(T1, 1), 'paused', {limiter(key, T1)})
  end
  redis.call('HSET', key, 'probe', tostring(now + probe_ms))
  keep(now + probe_ms)
  return {1, 0, 1, 'paused'}
end

-- Warm-up: the day's ceiling ("<day>|<ceiling>|<ms until the next day>").
local wday, wsent
if ARGV[6] ~= '-' then
  local day, ceiling, left = string.match(ARGV[6], '^(%-?%d+)|(%d+)|(%d+)$')
  local h2 = redis.call('HMGET', key, 'wday', 'wsent')
  wday, wsent = day, (h2[1] == day) and tonumber(h2[2] or 0) or 0
  if wsent >= tonumber(ceiling) then
    return hold(now + tonumber(left), 'warmup')
  end
end

-- The rates: the upstream's (KEYS[1], ARGV[7]) and each throttle's
-- (KEYS[k], ARGV[7 + k]).  A forward goes when every one of them conforms.
local limiters, blocked, why = {}, {}, 'rate'
local latest = now
for k = 1, #KEYS do
  local T, tau = string.match(ARGV[7 + k], '^([^|]+)|(.+)$')
  T, tau = tonumber(T), tonumber(tau)
  if T > 0 then
    local l = limiter(KEYS[k], T)
    local earliest = math.max(l.tat - tau, now)
    limiters[#limiters + 1] = l
    -- A fresh send waits behind the backlog of its priority and above; a
    -- queued one yields to the slots taken by higher priorities (see sched1).
    if earliest > now or (not from_queue and l.sched > now) or
       (from_queue and l.higher > now) then
      blocked[#blocked + 1] = l
      local slot = math.max(earliest, l.sched)
      if slot > latest then
        latest = slot
        why = k == 1 and 'rate' or 'throttle'
      end
    end
  end
end
if #blocked > 0 then
  return hold(latest, why, blocked)
end
for _, l in ipairs(limiters) do
  local new_tat = math.max(l.tat, now) + l.T
  redis.call('HSET', l.key, 'tat', tostring(new_tat))
  redis.call('PEXPIRE', l.key, math.ceil(math.max(new_tat, l.scheds[1]) - now) + DAY)
end
if wday then
  redis.call('HSET', key, 'wday', wday, 'wsent', wsent + 1)
  keep(now)
end
return {1, 0, 0, 'rate'}
