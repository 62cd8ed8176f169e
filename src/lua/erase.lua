-- erase.lua: forget a person (POST /v1/users/erase).  Idempotent.
-- KEYS[1] sends bucket  KEYS[2] consent key  KEYS[3] engagement bucket  KEYS[4] audit stream
-- KEYS[5] the tag's deferred queue (proxy mode)  KEYS[6] consent history
-- ARGV[1] person field  ARGV[2] pseudonym
-- ARGV[3] audit: '' or "<max>|<retention ms>|<generation>|<pseudonym>"
--
-- Everything goes: sends (and with them the idempotency records), consent,
-- its history (the receipts: a person who asks to be forgotten is, and the
-- marker below is what still proves a suppression), engagement, and the
-- person's audit entries.  An opt-out, a complaint or a
-- hard bounce leaves only a minimal suppression marker in the consent key --
-- which scope, the fact, the day -- so that erasing never re-enables sends.
-- Returns {sends removed, consent records removed, audit entries removed,
--          markers kept, [scope, fact] * markers, deferred messages removed,
--          history entries removed}
-- #include audit_entries.lua

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now > tonumber(ARGV[#ARGV]) then return redis.error_reply('LATE ' .. now) end   -- see decide.lua
local day = now - now % 86400000

local sends = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])

local removed, kept, marker = 0, {}, {}
local packed = redis.call('GET', KEYS[2])
if packed then
  for scope, r in pairs(cmsgpack.unpack(packed)) do
    if r[1] == 'out' or r[1] == 'bounced' then
      local fact = 'opt_out'
      if r[3] == 'complaint' then fact = 'complaint'
      elseif r[1] == 'bounced' then fact = 'hard_bounce' end
      marker[scope] = {r[1], day, fact}
      kept[#kept + 1] = scope
      kept[#kept + 1] = fact
    else
      removed = removed + 1
    end
  end
  if #kept > 0 then
    redis.call('SET', KEYS[2], cmsgpack.pack(marker))   -- no TTL: a suppression
  else
    redis.call('DEL', KEYS[2])
  end
end

local receipts = 0
local h = redis.call('HVALS', KEYS[6])
for _, v in ipairs(h) do receipts = receipts + #cmsgpack.unpack(v) end
redis.call('DEL', KEYS[6])

local ids = {}
for _, e in ipairs(audit_entries_of(KEYS[4], ARGV[2])) do ids[#ids + 1] = e[1] end
for i = 1, #ids, 500 do
  redis.call('XDEL', KEYS[4], unpack(ids, i, math.min(i + 499, #ids)))
end

-- Messages waiting for the person go too (their payloads name them).
local prefix = ARGV[2] .. ':'
local data = string.sub(KEYS[5], 1, #KEYS[5] - 1) .. 'd:'
local dropped = 0
for _, member in ipairs(redis.call('ZRANGE', KEYS[5], 0, -1)) do
  if string.sub(member, 1, #prefix) == prefix then
    local ck = redis.call('HGET', data .. member, 'collapse')
    if ck and ck ~= '' then redis.call('DEL', ck) end
    redis.call('DEL', data .. member)
    redis.call('ZREM', KEYS[5], member)
    dropped = dropped + 1
  end
end

-- The erasure itself is on record, without saying whose.
if ARGV[3] ~= '' then
  local max, keep, gen = string.match(ARGV[3], '^(%d+)|(%d+)|(%d+)|')
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', max, '*', 't', 'erase', 'g', gen,
             'kept', tostring(#kept / 2))
  redis.call('PEXPIRE', KEYS[4], keep)
end

local out = {sends and #sends / 16 or 0, removed, #ids, #kept / 2}
for i = 1, #kept do out[#out + 1] = kept[i] end
out[#out + 1] = dropped
out[#out + 1] = receipts
return out
