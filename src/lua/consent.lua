-- consent.lua: record consent or a signal that acts like it, with Redis's
-- clock, and keep the audit trail.  See decide.lua for the keys' layout.
--
-- KEYS[1] the person's consent key   KEYS[2] engagement bucket   KEYS[3] audit stream
-- ARGV[1] kind: 'set' (consent), 'unsubscribe', 'complaint', 'bounce', 'engage'
-- ARGV[2] scope "<channel|*>|<category|*>" (set, unsubscribe), or channel (bounce)
-- ARGV[3] state 'in' | 'out' (set)   ARGV[4] source (set)
-- ARGV[5] person field (engage)      ARGV[6] retention ms
-- ARGV[7] audit: '' or "<max>|<retention ms>|<generation>|<pseudonym>"
-- ARGV[8] extra audit detail (event type and campaign), may be ''
--
-- A consent key holds no TTL while it carries a suppression (an opt-out or
-- a bounce): erasing time never re-enables sends.  Otherwise it expires
-- after privacy.retention without a change.
-- Returns the time stored, in ms.
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
if kind == 'bounce' then
  rec['bounce|' .. scope] = {'bounced', now, 'hard_bounce'}
  audit({'e', 'hard_bounce', 'c', scope})
else
  -- The newest word wins inside its scope: an unsubscribe from email (or a
  -- complaint, everything) overrides an older opt-in to email marketing.
  local sc, sg = string.match(scope, '^([^|]*)|(.*)$')
  for k, _ in pairs(rec) do
    local kc, kg = string.match(k, '^([^|]*)|(.*)$')
    if kc ~= 'bounce' and k ~= scope and (sc == '*' or kc == sc) and (sg == '*' or kg == sg) then
      rec[k] = nil
    end
  end
  rec[scope] = {state, now, source}
  if state == 'in' then
    -- A new opt-in lifts a bounce of that channel (or of all, for "*").
    local ch = string.match(scope, '^([^|]*)|')
    for k, _ in pairs(rec) do
      if string.sub(k, 1, 7) == 'bounce|' and (ch == '*' or k == 'bounce|' .. ch) then
        rec[k] = nil
      end
    end
  end
  audit({'s', scope, 'st', state, 'src', source})
end
redis.call('SET', KEYS[1], cmsgpack.pack(rec))

local suppressed = false
for _, r in pairs(rec) do
  if r[1] == 'out' or r[1] == 'bounced' then suppressed = true end
end
if suppressed then
  redis.call('PERSIST', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], retention)
end
return now
