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
--                   "<channel|*>|<category|*>" -> {state "in"|"out", at ms, source},
--                   and "bounce|<channel>" -> {"bounced", at ms, source} after a
--                   hard bounce; no TTL while it holds a suppression (see consent.lua)
-- KEYS[3]  engagement: hash  person -> sends since the last open/click (2) |
--                   last engagement (5); TTL: retention (fatigue rules)
-- KEYS[4]  audit:   stream of this tag's audit entries (see audit in decision.c)
-- Time is Redis's own clock (TIME), so any number of gateways agree on it.
--
-- ARGV[1] person (8 bytes)
-- ARGV[2] numbers, packed: message hash (4) | channel hash (2) | category hash (2) |
--         campaign hash (3, 0 none) | retention ms (6) | idempotency ms (6) | max_defer ms (6)
--         (one struct.unpack: tonumber() of each was a tenth of the script's cost)
-- ARGV[3] flags: 'd' dry run, 'o' ignores opt-out, 'i' requires opt-in,
--         'x' exempt from caps (recorded, but never counted by a cap),
--         'q' the dispatcher deciding a queued message (proxy mode)
-- ARGV[4] channel name   ARGV[5] category name   (consent is kept by name)
-- ARGV[6] quiet intervals, packed: n x (start ms (6) | end ms (6))
-- ARGV[7] caps, packed: n x (index (1) | channel (2, 0 any) | category (2, 0 any) |
--          per campaign (1) | deny (1) | limit (2) | window ms (6) | shadow (1));
--          index 255 is the fatigue cap
-- ARGV[8] fatigue: '' or unengaged_after (2) | limit (2) | window ms (6) | deny (1)
-- ARGV[9] audit: '' (off) or "<max entries>|<retention ms>|<P>|<channel>|<category>|<generation>"
--          The entry is one field, "decide" = "<P>|<channel>|<category>|<generation>|
--          <decision>|<reason>|<rule>|<counted>|<replay>|<shadow>" (src/audit_entry.c
--          spells it out for readers): one field costs Redis a third of seven pairs.
-- ARGV[10] cap names in config order, '\n'-separated (for the audit entry)
--
-- Proxy mode (POST /v1/send, routes, the dispatcher) adds: a deferred message
-- is queued in the same atomic step, so an accepted message is never lost:
-- KEYS[5] the tag's queue: sorted set, score = deliver-at ms, member = "<P>:<M>"
-- KEYS[6] the message: hash blob (what to deliver), prio, attempts, collapse
-- KEYS[7] the collapse index "<P>:<collapse hash>" -> member (or any key of the
--         tag when there is no collapse_key)
-- ARGV[11] "<max queued per tag>|<message TTL ms>|<priority>|<collapse 0/1>"
-- ARGV[12] the blob   ARGV[13] the member
--
-- Returns {outcome, reason, rule, retry_ms, replay, now_ms, count,
--          queued (0 no, 1 yes, 2 queue full), superseded (0/1), n_shadow,
--          [rule, would] * n_shadow}
--   outcome 0 allow, 1 defer, 2 deny
--   reason  0 ok, 1 opted_out, 2 consent_required, 3 quiet_hours, 4 cap, 5 suppressed
--   rule    the deciding cap's index + 1 (256: fatigue), 0 when no cap decided
--   count   sends counted by the deciding cap
--   shadow  caps in shadow mode that would have decided: rule, 1 defer / 2 deny

local REC = 16
local FMT = '>I5I4I2I2I3'
local EPOCH = 1704067200000          -- 2024-01-01T00:00:00Z in ms
local EXEMPT = 32768                 -- channel's top bit
local MAX_SENDS = 1000   -- per person; the oldest beyond are forgotten

local OUTCOMES = {[0] = 'allow', 'defer', 'deny'}
local REASONS = {[0] = 'ok', 'opted_out', 'consent_required', 'quiet_hours', 'cap', 'suppressed'}

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local person, flags = ARGV[1], ARGV[3]
local dry = string.find(flags, 'd', 1, true)
local exempt = string.find(flags, 'x', 1, true)
local msg, channel, category, campaign, retention, idem, max_defer =
  struct.unpack('>I4I2I2I3I6I6I6', ARGV[2])

-- Every answer goes through here: it appends the audit entry (when on).
local shadow = {}
local function answer(outcome, reason, rule, retry, replay, count)
  -- A dry run is a question, not a decision: it leaves no trace at all.
  local audit = ARGV[9]
  if audit ~= '' and not dry then
    local b1 = string.find(audit, '|', 1, true)
    local b2 = string.find(audit, '|', b1 + 1, true)
    local rname, counted, hits = '', '', ''
    if rule == 256 then
      rname = 'fatigue'
    elseif rule > 0 then
      local k = 0
      for name in string.gmatch(ARGV[10], '[^\n]+') do
        k = k + 1
        if k == rule then rname = name break end
      end
    end
    if rname ~= '' then counted = count end
    if #shadow > 0 then
      local names, list = {}, {}
      for name in string.gmatch(ARGV[10], '[^\n]+') do names[#names + 1] = name end
      for i = 1, #shadow, 2 do
        list[#list + 1] = (names[shadow[i]] or tostring(shadow[i])) .. ':' ..
                          (shadow[i + 1] == 2 and 'deny' or 'defer')
      end
      hits = table.concat(list, ',')
    end
    local entry = string.sub(audit, b2 + 1) .. '|' .. OUTCOMES[outcome] .. '|' ..
                  REASONS[reason] .. '|' .. rname .. '|' .. counted .. '|' ..
                  (replay == 1 and '1' or '') .. '|' .. hits
    local max = string.sub(audit, 1, b1 - 1)
    -- MAXLEN bounds the length; age is trimmed, and the expiry renewed, by
    -- the gateways' background sweep (audit_trim.lua).  Only a stream this
    -- call creates gets its expiry here.
    if not redis.call('XADD', KEYS[4], 'NOMKSTREAM', 'MAXLEN', '~', max, '*',
                      'decide', entry) then
      redis.call('XADD', KEYS[4], 'MAXLEN', '~', max, '*', 'decide', entry)
      redis.call('PEXPIRE', KEYS[4], string.sub(audit, b1 + 1, b2 - 1))
    end
  end
  -- A deferral in proxy mode queues the message, or refuses it when full.
  local queued, superseded = 0, 0
  if outcome == 1 and #KEYS >= 7 then
    local max, ttl, prio, collapse = string.match(ARGV[11], '^(%d+)|(%d+)|(%d+)|(%d)$')
    local member = ARGV[13]
    local replacing = collapse == '1' and redis.call('EXISTS', KEYS[7]) == 1
    if not replacing and not redis.call('ZSCORE', KEYS[5], member) and
       redis.call('ZCARD', KEYS[5]) >= tonumber(max) then
      queued = 2
    else
      if collapse == '1' then
        local old = redis.call('GET', KEYS[7])
        if old and old ~= member then
          -- The newer message replaces the older one of the same collapse key.
          redis.call('ZREM', KEYS[5], old)
          redis.call('DEL', string.sub(KEYS[6], 1, #KEYS[6] - #member) .. old)
          superseded = 1
        end
        redis.call('SET', KEYS[7], member, 'PX', ttl)
      end
      redis.call('HSET', KEYS[6], 'blob', ARGV[12], 'prio', prio,
                 'collapse', collapse == '1' and KEYS[7] or '')
      redis.call('HSETNX', KEYS[6], 'attempts', 0)
      redis.call('PEXPIRE', KEYS[6], ttl)
      redis.call('ZADD', KEYS[5], now + retry, member)
      queued = 1
    end
  end
  local out = {outcome, reason, rule, retry, replay, now, count, queued, superseded, #shadow / 2}
  for i = 1, #shadow do out[#out + 1] = shadow[i] end
  return out
end

-- The person's sends that still matter, oldest first.
local ts, ms, chs, cats, camps, n, skipped = {}, {}, {}, {}, {}, 0, 0
local raw = redis.call('HGET', KEYS[1], person)
if raw then
  local oldest = now - retention
  for off = 1, #raw - REC + 1, REC do
    local a, m, c, g, k = struct.unpack(FMT, raw, off)
    a = a + EPOCH
    if a > oldest then
      n = n + 1
      ts[n], ms[n], chs[n], cats[n], camps[n] = a, m, c, g, k
    elseif n == 0 then
      skipped = skipped + 1      -- (oldest first: only ever a prefix)
    end
  end
end

-- 1. A message already allowed is allowed again, and not counted twice.
for i = 1, n do
  if ms[i] == msg and ts[i] > now - idem then
    return answer(0, 0, 0, 0, 1, 0)
  end
end

-- 2./3. Consent: the most specific record wins.
-- A hard bounce suppresses the channel for every category, transactional
-- too: the address does not take mail.  A later opt-in clears it.
local state = nil
local packed = redis.call('GET', KEYS[2])
if packed then
  local rec = cmsgpack.unpack(packed)
  local cn, gn = ARGV[4], ARGV[5]
  if rec['bounce|' .. cn] then
    return answer(2, 5, 0, 0, 0, 0)
  end
  local r = rec[cn .. '|' .. gn] or rec[cn .. '|*'] or rec['*|' .. gn] or rec['*|*']
  if r then state = r[1] end
end
if state == 'out' and not string.find(flags, 'o', 1, true) then
  return answer(2, 1, 0, 0, 0, 0)
end
if string.find(flags, 'i', 1, true) and state ~= 'in' then
  return answer(2, 2, 0, 0, 0, 0)
end

-- 4. Quiet hours: absolute intervals the gateway computed in the zone.
local q = ARGV[6]
for off = 1, #q - 11, 12 do
  local s, e = struct.unpack('>I6I6', q, off)
  if now >= s and now < e then
    if e - now > max_defer then
      return answer(2, 3, 0, e - now, 0, 0)
    end
    return answer(1, 3, 0, e - now, 0, 0)
  end
end

-- 5. Caps.  retry_after is exact: the (count - limit + 1)-th oldest matching
-- send has to leave the window before one more fits.  A person who ignored
-- their last messages (fatigue) gets one more, tighter cap over every channel.
local caps = ARGV[7]
local ignored, engaged = 0, nil
local fatigue = ARGV[8] ~= ''
if fatigue then
  -- Only with fatigue rules is engagement worth a lookup (and a record).
  engaged = redis.call('HGET', KEYS[3], person)
  if engaged then ignored = struct.unpack('>I2', engaged) end
end
if fatigue then
  local after, flimit, fwindow, fdeny = struct.unpack('>I2I2I6I1', ARGV[8])
  if ignored >= after then
    caps = caps .. struct.pack('>I1I2I2I1I1I2I6I1', 255, 0, 0, 0, fdeny, flimit, fwindow, 0)
  end
end
local defer_rule, defer_retry, defer_count, deny_rule = 0, -1, 0, 0
-- Every limit is at least 1: a person with no sends that count exceeds none
-- (most decisions are about such people, so they skip the loop).
if n == 0 then caps = '' end
local function counts(i, since, cch, ccat, percamp)
  return ts[i] > since and chs[i] < EXEMPT and (cch == 0 or chs[i] == cch)
         and (ccat == 0 or cats[i] == ccat) and (percamp == 0 or camps[i] == campaign)
end
for off = 1, #caps - 15, 16 do
  local idx, cch, ccat, percamp, deny, limit, window, shadowed =
    struct.unpack('>I1I2I2I1I1I2I6I1', caps, off)
  local since, count = now - window, 0
  for i = 1, n do
    if counts(i, since, cch, ccat, percamp) then count = count + 1 end
  end
  if count >= limit then
    -- retry_after: until the (count - limit + 1)-th oldest counted send leaves.
    local k, first = 0, 0
    for i = 1, n do
      if counts(i, since, cch, ccat, percamp) then
        k = k + 1
        if k == count - limit + 1 then first = ts[i] break end
      end
    end
    local retry = first + window - now
    if shadowed == 1 then
      -- Evaluated and reported, never enforced: ops trial a cap on live traffic.
      shadow[#shadow + 1] = idx + 1
      shadow[#shadow + 1] = deny + 1
    elseif deny == 1 then
      if deny_rule == 0 then
        deny_rule, defer_retry, defer_count = idx + 1, retry, count
      end
    elseif deny_rule == 0 and retry > defer_retry then
      defer_rule, defer_retry, defer_count = idx + 1, retry, count
    end
  end
end
if deny_rule > 0 then
  return answer(2, 4, deny_rule, defer_retry, 0, defer_count)
end
if defer_rule > 0 then
  if defer_retry > max_defer then
    return answer(2, 4, defer_rule, defer_retry, 0, defer_count)
  end
  return answer(1, 4, defer_rule, defer_retry, 0, defer_count)
end

-- 6. Allowed: record the send (unless this was a dry run).
if not dry then
  -- Proxy mode: sent now, so a copy waiting in the queue (a client retry of
  -- a deferred message) must not go out a second time.
  -- (Not when this is the dispatcher deciding the queued copy itself: 'q'.)
  if #KEYS >= 7 and not string.find(flags, 'q', 1, true) and
     redis.call('ZREM', KEYS[5], ARGV[13]) == 1 then
    redis.call('DEL', KEYS[6])
  end
  -- Records are oldest first, so the ones that no longer matter (and those
  -- beyond MAX_SENDS) are a prefix: keep the rest as they are, append one.
  local drop = skipped
  if n >= MAX_SENDS then drop = drop + n - MAX_SENDS + 1 end
  local kept = ''
  if raw then kept = string.sub(raw, drop * REC + 1) end
  -- Keep the order even if Redis's clock stepped back (failover).
  local at = now
  if n > 0 and ts[n] > at then at = ts[n] end
  if exempt then channel = channel + EXEMPT end
  redis.call('HSET', KEYS[1], person,
             kept .. struct.pack(FMT, at - EPOCH, msg, channel, category, campaign))

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
  -- One more message the person has not (yet) engaged with.
  if fatigue and not exempt then
    local last = 0
    if engaged then
      local _
      _, last = struct.unpack('>I2I5', engaged)
    end
    redis.call('HSET', KEYS[3], person, struct.pack('>I2I5', math.min(ignored + 1, 65535), last))
    redis.call('PEXPIRE', KEYS[3], retention)
  end
end
return answer(0, 0, 0, 0, 0, 0)
