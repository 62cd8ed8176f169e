-- claim.lua: the dispatcher takes the due messages of one tag's queue, with a
-- lease: each is pushed LEASE into the future, so no other gateway takes it
-- meanwhile; if this gateway dies, the lease runs out and another one will.
-- KEYS[1] the tag's queue (see decide.lua)   KEYS[2] the tag's dead letters
-- ARGV[1] lease ms   ARGV[2] most messages
-- Returns {queued, dead letters, n, ms until the next message left is due (-1:
-- none), [member, blob, priority, attempts] * n}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prefix = string.sub(KEYS[1], 1, #KEYS[1] - 1) .. 'd:'     -- cg:{T}:q -> cg:{T}:d:
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {0, 0, 0, -1}
local n = 0
for _, member in ipairs(due) do
  local m = redis.call('HMGET', prefix .. member, 'blob', 'prio', 'attempts')
  if not m[1] then
    redis.call('ZREM', KEYS[1], member)      -- its data expired: nothing to deliver
  else
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), member)
    -- The queue's from now on: a client's retry must not forward it too
    -- (decide.lua).
    redis.call('HSET', prefix .. member, 'by', 'q')
    out[#out + 1] = member
    out[#out + 1] = m[1]
    out[#out + 1] = tonumber(m[2] or 0)
    out[#out + 1] = tonumber(m[3] or 0)
    n = n + 1
  end
end
out[1] = redis.call('ZCARD', KEYS[1])
out[2] = redis.call('LLEN', KEYS[2])
out[3] = n
local next = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if next[2] then
  local due = tonumber(next[2]) - now
  out[4] = due > 0 and due or 0
end
return out
