-- consent.lua: record consent or a signal that acts like it, with Redis's
-- clock, and keep the audit trail.  See decide.lua for the keys' layout.
--
-- KEYS[1] the person's consent key   KEYS[2] engagement bucket   KEYS[3] audit stream
-- KEYS[4] the person's consent history, cg:{T}:h:<P>
-- ARGV[1] kind: 'set' (consent), 'unsubscribe', 'complaint', 'bounce', 'engage'
-- ARGV[2] scope "<channel|*>|<category|*>" (set, unsubscribe), or channel (bounce)
-- ARGV[3] state 'in' | 'out' (set)   ARGV[4] source (set)
-- ARGV[5] person field (engage)      ARGV[6] retention ms
-- ARGV[7] audit: '' or "<max>|<retention ms>|<generation>|<pseudonym>"
-- ARGV[8] extra audit detail (event type and campaign), may be ''
-- ARGV[9..14] the history entry (src/receipt.h): record id ('' for none: a
--         bounce or an engagement is no consent change), method, legal basis
--         ('' the scope's latest, else 'consent'), notice (''), controller
--         (''), the entries kept per scope
--
-- A consent key holds no TTL while it carries a suppression (an opt-out or
-- a bounce): erasing time never re-enables sends.  Otherwise it expires
-- after privacy.retention without a change.
--
-- The history is a hash: scope -> cmsgpack list, oldest first, of
-- {record id, at ms, 'in' | 'out', method, legal basis, notice, controller}.
-- Each scope keeps its last ARGV[14] changes, and every write drops entries
-- older than the retention -- except the newest of a scope whose opt-out is
-- in force (the consent key's record of that scope says 'out'): that is the
-- proof of the withdrawal, and it must last as long as the suppression
-- does.  While such a proof is held the key has no TTL; else it expires the
-- retention after its last write, with the consent key.
-- Returns the time stored, in ms; with a history entry {the entry's time
-- (see remember()), legal basis}.
-- #include consent_record.lua

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now > tonumber(ARGV[#ARGV]) then return redis.error_reply('LATE ' .. now) end   -- see decide.lua
local kind, retention = ARGV[1], tonumber(ARGV[6])

local function audit(fields)
  local a = ARGV[7]
  if a == '' then return end
  local max, keep, gen, pseud = string.match(a, '^(%d+)|(%d+)|(%d+)|(%x+)$')
  local entry = {'t', kind == 'set' and 'consent' or 'signal', 'p', pseud, 'g', gen}
  for i = 1, #fields do entry[#entry + 1] = fields[i] end
  if ARGV[8] ~= '' then entry[#entry + 1] = 'detail'; entry[#entry + 1] = ARGV[8] end
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', max, '*', unpack(entry))
  redis.call('PEXPIRE', KEYS[3], keep)
end

if kind == 'engage' then
  -- An open or a click: the person engages, fatigue rules let go.
  redis.call('HSET', KEYS[2], ARGV[5], struct.pack('>I2I5', 0, now - 1704067200000))
  redis.call('PEXPIRE', KEYS[2], retention)
  audit({'e', 'engaged'})
  return now
end

local packed = redis.call('GET', KEYS[1])
local rec = {}
if packed then rec = cmsgpack.unpack(packed) end

local scope, state, source = ARGV[2], ARGV[3], ARGV[4]
if kind == 'unsubscribe' then
  state, source = 'out', 'unsubscribe'
elseif kind == 'complaint' then
  -- A spam report: nothing but transactional mail, on any channel.
  scope, state, source = '*|*', 'out', 'complaint'
end
-- A key that holds a suppression, or the proof of one, has no TTL; any
-- other leaves with the retention.
local function keep(key, forever)
  if forever then
    redis.call('PERSIST', key)
  else
    redis.call('PEXPIRE', key, retention)
  end
end

-- One more history entry for SCOPE, and the whole history trimmed: what
-- the retention has passed goes, the proofs stay (see above), and each
-- scope is read and written once.  Returns the entry's legal basis and time.
-- The history is read back oldest first across scopes, so two changes of
-- different scopes in one millisecond would come back in scope order, not
-- in the order they were made: an entry's time is after every other of the
-- person's (by a millisecond, when one is that late; or after a failover to
-- a Redis whose clock is behind).  REC: the consent records, as changed.
local function remember(scope, state, rec)
  local per = tonumber(ARGV[14])
  local at, lists = now, {}
  local h = redis.call('HGETALL', KEYS[4])
  for i = 1, #h, 2 do
    local l = cmsgpack.unpack(h[i + 1])
    lists[h[i]] = l
    if l[#l] and l[#l][2] >= at then at = l[#l][2] + 1 end
  end
  local list = lists[scope] or {}
  lists[scope] = list
  local basis = ARGV[11]
  if basis == '' then
    -- An unsubscribe withdraws what the scope was last given under.
    basis = list[#list] and list[#list][5] or 'consent'
  end
  list[#list + 1] = {ARGV[9], at, state, ARGV[10], basis, ARGV[12], ARGV[13]}
  while #list > per do table.remove(list, 1) end
  local proof = false
  for s, l in pairs(lists) do
    local r = rec[s]
    local in_force = r and r[1] == 'out' and l[#l] and l[#l][3] == 'out'
    if in_force then proof = true end
    local kept = {}
    for j, e in ipairs(l) do
      if e[2] > now - retention or (in_force and j == #l) then kept[#kept + 1] = e end
    end
    if #kept == 0 then
      redis.call('HDEL', KEYS[4], s)
    elseif s == scope or #kept < #l then
      redis.call('HSET', KEYS[4], s, cmsgpack.pack(kept))
    end
  end
  keep(KEYS[4], proof)
  return basis, at
end

local basis, recorded
if kind == 'bounce' then
  consent_apply(rec, 'bounce|' .. scope, {'bounced', now, 'hard_bounce'})
  audit({'e', 'hard_bounce', 'c', scope})
else
  consent_apply(rec, scope, {state, now, source})
  audit({'s', scope, 'st', state, 'src', source})
  if ARGV[9] ~= '' then basis, recorded = remember(scope, state, rec) end
end
redis.call('SET', KEYS[1], cmsgpack.pack(rec))

keep(KEYS[1], consent_suppressed(rec))
if basis then return {recorded, basis} end
return now
