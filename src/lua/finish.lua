-- finish.lua: what became of a claimed message.
-- KEYS[1] queue   KEYS[2] the message   KEYS[3] dead letters
-- ARGV[1] 'ack' (delivered), 'drop' (denied on re-decision), 'retry', 'dead'
-- ARGV[2] member   ARGV[3] retry: next attempt at (ms from now)
-- ARGV[4] dead: a JSON summary for the dead-letter list   ARGV[5] dead: list length kept
-- ARGV[6] dead: how long the message itself is kept for inspection (ms)
-- ack, with KEYS[4]: ARGV[7] the upstream's first answer (sealed), kept for
-- ARGV[8] ms so that a client's retry gets it again (see decide.lua)
-- Returns the attempts made so far.
local action, member = ARGV[1], ARGV[2]
local attempts = tonumber(redis.call('HGET', KEYS[2], 'attempts') or 0)
local function forget_collapse()
  local ck = redis.call('HGET', KEYS[2], 'collapse')
  if ck and ck ~= '' and redis.call('GET', ck) == member then
    redis.call('DEL', ck)
  end
end
if action == 'ack' or action == 'drop' then
  redis.call('ZREM', KEYS[1], member)
  forget_collapse()
  redis.call('DEL', KEYS[2])
  if action == 'ack' and #KEYS >= 4 then
    redis.call('SET', KEYS[4], ARGV[7], 'PX', tonumber(ARGV[8]))
  end
elseif action == 'retry' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  attempts = redis.call('HINCRBY', KEYS[2], 'attempts', 1)
  if redis.call('EXISTS', KEYS[2]) == 1 then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), member)
  end
elseif action == 'dead' then
  attempts = redis.call('HINCRBY', KEYS[2], 'attempts', 1)
  redis.call('ZREM', KEYS[1], member)
  forget_collapse()
  redis.call('LPUSH', KEYS[3], ARGV[4])
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[5]) - 1)
  redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[6]))
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[6]))
end
return attempts
