-- release.lua: the sender could not deliver an allowed message, so it stops
-- counting against the person's caps (and is no longer replayed).
-- KEYS[1] sends hash (see decide.lua)   ARGV[1] person   ARGV[2] message hash
-- Proxy mode (the upstream refused a message capgate was forwarding) adds
-- KEYS[2] the tag's queue, KEYS[3] the message, ARGV[3] its member: the
-- message leaves the queue too, where it waited in case its gateway died,
-- so that nothing delivers it later (the caller is told it did not go).
-- With ARGV[4] (ms) it stays queued instead, due then (decision_requeue_args).
-- ARGV[#ARGV] the gateway's deadline (see decide.lua).
-- Returns 1 when a send was removed, 0 when there was none.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now > tonumber(ARGV[#ARGV]) then return redis.error_reply('LATE ' .. now) end   -- see decide.lua
if #KEYS >= 3 and #ARGV >= 5 then
  -- Held back (the upstream's rate or pause, ARGV[4] ms): the message stays
  -- queued, due then; what it waits for is decided again.
  if redis.call('EXISTS', KEYS[3]) == 1 then
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[3])
  end
elseif #KEYS >= 3 then
  local ck = redis.call('HGET', KEYS[3], 'collapse')
  if ck and ck ~= '' and redis.call('GET', ck) == ARGV[3] then
    redis.call('DEL', ck)
  end
  redis.call('ZREM', KEYS[2], ARGV[3])
  redis.call('DEL', KEYS[3])
end
local REC = 16
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then
  return 0
end
local msg = tonumber(ARGV[2])
for off = 1, #raw - REC + 1, REC do
  local _, m = struct.unpack('>I5I4', raw, off)
  if m == msg then
    local rest = string.sub(raw, 1, off - 1) .. string.sub(raw, off + REC)
    if #rest == 0 then
      redis.call('HDEL', KEYS[1], ARGV[1])
    else
      redis.call('HSET', KEYS[1], ARGV[1], rest)
    end
    return 1
  end
end
return 0
