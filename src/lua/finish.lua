-- finish.lua: what became of a claimed message.
-- KEYS[1] queue   KEYS[2] the message
-- ARGV[1] 'ack' (delivered), 'drop' (denied on re-decision), 'retry', 'dead'
-- ARGV[2] member
-- Then what the action uses, and nothing else (an ack follows every
-- forward, and each key or argument costs Redis as much as a small command):
--   ack, with KEYS[3] (routes): ARGV[3] the upstream's first answer (sealed),
--        kept for ARGV[4] ms so that a client's retry gets it again (see
--        decide.lua)
--   retry: ARGV[3] next attempt at (ms from now)
--   dead: KEYS[3] dead letters; ARGV[3] a JSON summary for the dead-letter
--        list, ARGV[4] list length kept, ARGV[5] how long the message itself
--        is kept for inspection (ms)
-- Returns the attempts made so far.
local action, member = ARGV[1], ARGV[2]
-- (One call for all three; every message hash has 'prio', so it says
-- whether the message still exists.  A forward's own copy has neither
-- 'attempts' nor 'collapse'.)
local fields = redis.call('HMGET', KEYS[2], 'attempts', 'collapse', 'prio')
local attempts = tonumber(fields[1] or 0)
-- Gone meanwhile (erased, or expired): nothing is left to retry, and an
-- attempt counted on it would make it again -- a key of the person,
-- without an expiry -- and queue it again.
if not fields[3] then
  redis.call('ZREM', KEYS[1], member)
  return attempts
end
local function forget_collapse()
  local ck = fields[2]
  if ck and ck ~= '' and redis.call('GET', ck) == member then
    redis.call('DEL', ck)
  end
end
if action == 'ack' or action == 'drop' then
  redis.call('ZREM', KEYS[1], member)
  forget_collapse()
  redis.call('DEL', KEYS[2])
  if action == 'ack' and #KEYS >= 3 then
    redis.call('SET', KEYS[3], ARGV[3], 'PX', tonumber(ARGV[4]))
  end
elseif action == 'retry' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  attempts = redis.call('HINCRBY', KEYS[2], 'attempts', 1)
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), member)
elseif action == 'dead' then
  attempts = redis.call('HINCRBY', KEYS[2], 'attempts', 1)
  redis.call('ZREM', KEYS[1], member)
  forget_collapse()
  redis.call('LPUSH', KEYS[3], ARGV[3])
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[4]) - 1)
  redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[5]))
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[5]))
end
return attempts
