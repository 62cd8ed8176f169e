-- show.lua: everything held about one person, for POST /v1/users/show.
-- KEYS[1] sends bucket  KEYS[2] consent key  KEYS[3] engagement bucket  KEYS[4] audit stream
-- KEYS[5] the tag's deferred queue (proxy mode)
-- ARGV[1] person field  ARGV[2] pseudonym
-- Returns {now, sends (packed, or ''), ignored, n_consent, [scope, state, at, source] * n,
--          n_audit, [id, n_fields, field, value, ...] * n,
--          n_deferred, [message hash, deliver at ms, attempts, priority] * n}
-- #include consent_record.lua
-- #include audit_entries.lua

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {now, redis.call('HGET', KEYS[1], ARGV[1]) or ''}
local engaged = redis.call('HGET', KEYS[3], ARGV[1])
out[#out + 1] = engaged and struct.unpack('>I2', engaged) or 0

local packed = redis.call('GET', KEYS[2])
local rec = packed and cmsgpack.unpack(packed) or {}
consent_list(out, rec)

local mine = audit_entries_of(KEYS[4], ARGV[2])
out[#out + 1] = #mine
for _, e in ipairs(mine) do
  out[#out + 1] = e[1]
  out[#out + 1] = #e[2] / 2
  for i = 1, #e[2] do out[#out + 1] = e[2][i] end
end

-- Messages waiting for this person: members "<P>:<M>" of the tag's queue.
local prefix = ARGV[2] .. ':'
local data = string.sub(KEYS[5], 1, #KEYS[5] - 1) .. 'd:'
local waiting = {}
local q = redis.call('ZRANGE', KEYS[5], 0, -1, 'WITHSCORES')
for i = 1, #q, 2 do
  if string.sub(q[i], 1, #prefix) == prefix then
    local m = redis.call('HMGET', data .. q[i], 'attempts', 'prio')
    waiting[#waiting + 1] = {string.sub(q[i], #prefix + 1), tonumber(q[i + 1]),
                             tonumber(m[1] or 0), tonumber(m[2] or 0)}
  end
end
out[#out + 1] = #waiting
for _, w in ipairs(waiting) do
  for i = 1, 4 do out[#out + 1] = w[i] end
end
return out
