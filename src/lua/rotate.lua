-- rotate.lua: moving a person's records from the previous pseudonym key's
-- pseudonym (A) to the current one's (B) during a key rotation
-- (privacy.previous_key_file; the argument for why this is safe is in
-- docs/internals.md, "Rotating the pseudonym key").  A and B have different
-- hash tags, so on a Cluster they live in different slots and no one script
-- may touch both: the move is three calls, each atomic on its own slot:
--
--   take (A's slot)  read A's records, change nothing
--   put  (B's slot)  merge them into B's: a union, so doing it twice is
--                    doing it once (sends deduplicated, consent replayed in
--                    time order with consent.lua's own rule, engagement newest)
--   drop (A's slot)  delete A's records, each only if it is still exactly what
--                    take read: a record that changed meanwhile (a gateway
--                    still on the old key wrote it) stays for the next move
--
-- Nothing is deleted under A before B holds it, so a suppression is never
-- lost; a crash between two calls leaves A in place and the next decision,
-- consent or event of that person moves it again, harmlessly.
--
-- KEYS[1] sends bucket  KEYS[2] consent key  KEYS[3] engagement bucket
-- KEYS[4] the tag's rotation set cg:{T}:rot: what was under the old key when
--         the rotation was marked ("c<P>", "s<bucket>|<F>", "g<bucket>|<F>"),
--         less what moved since; the report counts it
-- KEYS[5] the tag's deferred queue (proxy mode)  KEYS[6] the consent history
-- ARGV[1] 'take' | 'put' | 'drop' | 'mark' | 'report'
-- ARGV[2] person field (8 bytes)  ARGV[3] pseudonym
-- put, drop: ARGV[4] sends  ARGV[5] consent  ARGV[6] engagement, as take read
--            them under A ('' none); put: ARGV[7..9] their PTTLs in ms (-1 none)
--            ARGV[10] the consent history as take read it ('' none, see
--            history() below)  ARGV[11] its PTTL  ARGV[12] entries kept per scope
-- ARGV[#ARGV] the gateway's deadline on Redis's clock (see decide.lua)
--
-- take returns {sends, consent, engagement, pttl x 3, history, its pttl}
-- ('' for none); put and drop return how many of the four records they
-- wrote or deleted; mark and report return how many entries the tag's
-- rotation set holds.
-- #include consent_record.lua

local mode = ARGV[1]
local call = redis.call

-- The consent history (a hash, see consent.lua) as one string that is the
-- same whenever the hash is: its fields sorted, packed with their values.
local function history(key)
  local h = call('HGETALL', key)
  if #h == 0 then return '' end
  local fields, byname = {}, {}
  for i = 1, #h, 2 do
    fields[#fields + 1] = h[i]
    byname[h[i]] = h[i + 1]
  end
  table.sort(fields)
  local flat = {}
  for _, f in ipairs(fields) do
    flat[#flat + 1] = f
    flat[#flat + 1] = byname[f]
  end
  return cmsgpack.pack(flat)
end

if mode == 'take' then
  local function pttl(key, present)
    if not present then return -1 end
    return call('PTTL', key)
  end
  local s = call('HGET', KEYS[1], ARGV[2])
  local c = call('GET', KEYS[2])
  local g = call('HGET', KEYS[3], ARGV[2])
  local h = history(KEYS[6])
  return {s or '', c or '', g or '', pttl(KEYS[1], s), pttl(KEYS[2], c), pttl(KEYS[3], g),
          h, pttl(KEYS[6], h ~= '')}
end

if mode == 'report' then
  return call('SCARD', KEYS[4])
end

if mode == 'mark' then
  -- Everything of this tag now in Redis: run once, right after the gateways
  -- restart with the new key (see capgate.yaml(5)).  SCAN sees only this
  -- node's keys, which on a Cluster include all of this tag's slot.
  local tag = string.match(KEYS[4], '^(cg:{[^}]*}:)')
  local cursor = '0'
  repeat
    local r = call('SCAN', cursor, 'MATCH', tag .. '*', 'COUNT', 1000)
    cursor = r[1]
    for _, key in ipairs(r[2]) do
      local rest = string.sub(key, #tag + 1)
      local kind = string.sub(rest, 1, 1)
      if string.sub(rest, 1, 2) == 'c:' then
        call('SADD', KEYS[4], 'c' .. string.sub(rest, 3))
      elseif (kind == 's' or kind == 'g') and string.match(string.sub(rest, 2), '^%x+$') then
        for _, f in ipairs(call('HKEYS', key)) do
          if f ~= '' then call('SADD', KEYS[4], kind .. key .. '|' .. f) end
        end
      end
    end
  until cursor == '0'
  return call('SCARD', KEYS[4])
end

local t = call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now > tonumber(ARGV[#ARGV]) then return redis.error_reply('LATE ' .. now) end   -- see decide.lua

-- This person's three entries of the rotation set.
local cm, sm, gm = 'c' .. ARGV[3], 's' .. KEYS[1] .. '|' .. ARGV[2], 'g' .. KEYS[3] .. '|' .. ARGV[2]

if mode == 'drop' then
  local n = 0
  if ARGV[4] ~= '' and call('HGET', KEYS[1], ARGV[2]) == ARGV[4] then
    call('HDEL', KEYS[1], ARGV[2])
    n = n + 1
  end
  if not call('HGET', KEYS[1], ARGV[2]) then call('SREM', KEYS[4], sm) end
  -- A message waiting in the queue under the old pseudonym is decided
  -- again with the old pseudonym's consent (the dispatcher cannot know the
  -- new one): while one waits, the old consent record stays, so that the
  -- suppressions of before the rotation still stop it.
  local waiting = false
  local prefix = ARGV[3] .. ':'
  for _, member in ipairs(call('ZRANGE', KEYS[5], 0, -1)) do
    if string.sub(member, 1, #prefix) == prefix then
      waiting = true
      break
    end
  end
  if ARGV[5] ~= '' and not waiting and call('GET', KEYS[2]) == ARGV[5] then
    call('DEL', KEYS[2])
    n = n + 1
  end
  if call('EXISTS', KEYS[2]) == 0 then call('SREM', KEYS[4], cm) end
  if ARGV[6] ~= '' and call('HGET', KEYS[3], ARGV[2]) == ARGV[6] then
    call('HDEL', KEYS[3], ARGV[2])
    n = n + 1
  end
  if not call('HGET', KEYS[3], ARGV[2]) then call('SREM', KEYS[4], gm) end
  -- The history moves whole: no decision reads it.
  if ARGV[10] ~= '' and history(KEYS[6]) == ARGV[10] then
    call('DEL', KEYS[6])
    n = n + 1
  end
  return n
end

if mode ~= 'put' then return redis.error_reply('ERR rotate.lua: unknown mode') end

-- B's records, whatever they hold, are the current key's: never "left".
call('SREM', KEYS[4], cm, sm, gm)

-- A key's expiry after the merge: the longer of A's and B's as it was
-- before (B_PTTL: -2 no key, -1 no expiry), so the move keeps no record
-- shorter than its retention said.
local function keep(key, b_pttl, a_pttl)
  a_pttl = tonumber(a_pttl)
  if b_pttl == -1 then return end             -- B's key has none: keep it so
  if a_pttl == -1 then
    call('PERSIST', key)
  elseif b_pttl == -2 or a_pttl > b_pttl then
    call('PEXPIRE', key, a_pttl)
  end
end

local n = 0
if ARGV[4] ~= '' then
  -- Sends: 16-byte records, oldest first; the first 5 bytes are the time,
  -- big-endian, so string order is time order.  A record in both is one send.
  local seen, list = {}, {}
  for _, v in ipairs({call('HGET', KEYS[1], ARGV[2]) or '', ARGV[4]}) do
    for i = 1, #v - 15, 16 do
      local r = string.sub(v, i, i + 15)
      if not seen[r] then
        seen[r] = true
        list[#list + 1] = r
      end
    end
  end
  table.sort(list)
  local before = call('PTTL', KEYS[1])
  call('HSET', KEYS[1], ARGV[2], table.concat(list))
  keep(KEYS[1], before, ARGV[7])
  n = n + 1
end

if ARGV[5] ~= '' then
  -- Consent: both histories replayed oldest first through consent.lua's
  -- rule (a record replaces the older ones of its scope and of the scopes
  -- inside it; an opt-in lifts an older bounce of its channel), so the
  -- result is what one person's single history would have left, and
  -- replaying it again changes nothing.
  local all = {}
  local packed = call('GET', KEYS[2])
  for _, p in ipairs({packed or '', ARGV[5]}) do
    if p ~= '' then
      for k, r in pairs(cmsgpack.unpack(p)) do all[#all + 1] = {k, r} end
    end
  end
  -- Oldest first; at equal times a suppression goes last, so it wins.
  local function weight(r) return (r[1] == 'out' or r[1] == 'bounced') and 1 or 0 end
  table.sort(all, function(x, y)
    if x[2][2] ~= y[2][2] then return x[2][2] < y[2][2] end
    if weight(x[2]) ~= weight(y[2]) then return weight(x[2]) < weight(y[2]) end
    return x[1] < y[1]
  end)
  local rec = {}
  for _, e in ipairs(all) do
    consent_apply(rec, e[1], e[2])
  end
  local b_pttl = call('PTTL', KEYS[2])
  call('SET', KEYS[2], cmsgpack.pack(rec))
  local suppressed = consent_suppressed(rec)
  -- As consent.lua: a suppression has no TTL; else the longer of the two.
  local keep_ms = math.max(tonumber(ARGV[8]), b_pttl)
  if not suppressed and keep_ms > 0 and not (packed and b_pttl == -1) then
    call('PEXPIRE', KEYS[2], keep_ms)
  end
  n = n + 1
end

if ARGV[6] ~= '' then
  -- Engagement: the newer last engagement wins.
  local before = call('PTTL', KEYS[3])
  local b = call('HGET', KEYS[3], ARGV[2])
  if not b or select(2, struct.unpack('>I2I5', ARGV[6])) > select(2, struct.unpack('>I2I5', b)) then
    call('HSET', KEYS[3], ARGV[2], ARGV[6])
  end
  keep(KEYS[3], before, ARGV[9])
  n = n + 1
end

if ARGV[10] ~= '' then
  -- The consent history: per scope, the union of both by record id, in
  -- time order, the newest ARGV[12] kept -- doing it twice is doing it once.
  local per = tonumber(ARGV[12])
  local before = call('PTTL', KEYS[6])
  local a = cmsgpack.unpack(ARGV[10])
  for i = 1, #a, 2 do
    local scope, seen, list = a[i], {}, {}
    for _, p in ipairs({call('HGET', KEYS[6], scope) or '', a[i + 1]}) do
      if p ~= '' then
        for _, e in ipairs(cmsgpack.unpack(p)) do
          if not seen[e[1]] then
            seen[e[1]] = true
            list[#list + 1] = e
          end
        end
      end
    end
    table.sort(list, function(x, y)
      if x[2] ~= y[2] then return x[2] < y[2] end
      return x[1] < y[1]
    end)
    while #list > per do table.remove(list, 1) end
    call('HSET', KEYS[6], scope, cmsgpack.pack(list))
  end
  keep(KEYS[6], before, ARGV[11])
  -- As consent.lua: the proof of an opt-out in force does not expire.
  local packed = call('GET', KEYS[2])
  local rec = packed and cmsgpack.unpack(packed) or {}
  for scope, r in pairs(rec) do
    if r[1] == 'out' then
      local p = call('HGET', KEYS[6], scope)
      local list = p and cmsgpack.unpack(p) or {}
      if list[#list] and list[#list][3] == 'out' then call('PERSIST', KEYS[6]) end
    end
  end
  n = n + 1
end
return n
