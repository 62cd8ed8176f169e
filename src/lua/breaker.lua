-- breaker.lua: the campaign circuit breaker, for every gateway together.
-- Its keys share one slot, {b} (campaign names are the sender's words, not
-- personal data):
--   KEYS[1] cg:{b}:state   hash campaign -> "<paused|would>|<ms>|<why>": the
--                          campaigns paused (mode enforce) or that would be
--                          (mode shadow); every gateway polls it
--   KEYS[2] cg:{b}:known   zset campaign -> ms of its last count
--   KEYS[3] cg:{b}:c:<campaign>  hash "s<bucket>" / "c<bucket>" / "u<bucket>"
--                          -> sends, complaints, unsubscribes in that bucket
-- A window is 24 buckets; a bucket older than the window is dropped when
-- the campaign is next counted.
--
-- ARGV[1] 'count': ARGV[2] campaign  ARGV[3] sends  ARGV[4] complaints
--   ARGV[5] unsubscribes (this gateway's since its last count)  ARGV[6] window
--   ms  ARGV[7] min sends  ARGV[8] complaint rate  ARGV[9] unsubscribe rate
--   ARGV[10] 'enforce' | 'shadow'
--   Returns {1 when this count paused it (or marked would-pause), sends,
--   complaints, unsubscribes, why}
-- ARGV[1] 'poll': returns the state hash, flat.
-- ARGV[1] 'list': ARGV[2] window ms, ARGV[3] most; returns, per campaign
--   counted within the window (newest first), {campaign, sends, complaints,
--   unsubscribes, state or ''}.
-- ARGV[1] 'resume': ARGV[2] campaign; its pause goes and its counts start
--   again.  Returns 1 when it was paused, 0 else.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local action = ARGV[1]
if action ~= 'poll' and action ~= 'list' and now > tonumber(ARGV[#ARGV]) then
  return redis.error_reply('LATE ' .. now)             -- see decide.lua
end

local function sums(key, window)
  local bucket_ms = math.max(math.floor(window / 24), 1000)
  local oldest = math.floor((now - window) / bucket_ms) + 1
  local raw = redis.call('HGETALL', key)
  local s, c, u, stale = 0, 0, 0, {}
  for i = 1, #raw, 2 do
    local kind, b = string.sub(raw[i], 1, 1), tonumber(string.sub(raw[i], 2))
    if b and b < oldest then
      stale[#stale + 1] = raw[i]
    else
      local n = tonumber(raw[i + 1])
      if kind == 's' then s = s + n elseif kind == 'c' then c = c + n else u = u + n end
    end
  end
  return s, c, u, stale, bucket_ms
end

if action == 'poll' then
  return redis.call('HGETALL', KEYS[1])
end

if action == 'resume' then
  local was = redis.call('HDEL', KEYS[1], ARGV[2])
  redis.call('DEL', KEYS[3])
  return was
end

if action == 'list' then
  local window, most = tonumber(ARGV[2]), tonumber(ARGV[3])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
  local names = redis.call('ZREVRANGE', KEYS[2], 0, most - 1)
  local prefix = string.sub(KEYS[2], 1, #KEYS[2] - 5) .. 'c:'    -- cg:{b}:known -> cg:{b}:c:
  local out = {}
  for _, name in ipairs(names) do
    local s, c, u = sums(prefix .. name, window)
    out[#out + 1] = name
    out[#out + 1] = s
    out[#out + 1] = c
    out[#out + 1] = u
    out[#out + 1] = redis.call('HGET', KEYS[1], name) or ''
  end
  -- A paused campaign stays listed after its counts have gone.
  local state = redis.call('HGETALL', KEYS[1])
  for i = 1, #state, 2 do
    if not redis.call('ZSCORE', KEYS[2], state[i]) then
      out[#out + 1] = state[i]
      out[#out + 1] = 0
      out[#out + 1] = 0
      out[#out + 1] = 0
      out[#out + 1] = state[i + 1]
    end
  end
  return out
end

-- count
local name, window = ARGV[2], tonumber(ARGV[6])
local s, c, u, stale, bucket_ms = sums(KEYS[3], window)
if #stale > 0 then redis.call('HDEL', KEYS[3], unpack(stale)) end
local b = math.floor(now / bucket_ms)
local ds, dc, du = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if ds > 0 then redis.call('HINCRBY', KEYS[3], 's' .. b, ds) end
if dc > 0 then redis.call('HINCRBY', KEYS[3], 'c' .. b, dc) end
if du > 0 then redis.call('HINCRBY', KEYS[3], 'u' .. b, du) end
redis.call('PEXPIRE', KEYS[3], window + bucket_ms)
redis.call('ZADD', KEYS[2], now, name)
redis.call('PEXPIRE', KEYS[2], window + bucket_ms)
s, c, u = s + ds, c + dc, u + du
local tripped, why = 0, ''
if s >= tonumber(ARGV[7]) and not redis.call('HGET', KEYS[1], name) then
  local cr, ur = c / s, u / s
  if cr >= tonumber(ARGV[8]) then
    why = string.format('complaint_rate=%.4f', cr)
  elseif ur >= tonumber(ARGV[9]) then
    why = string.format('unsubscribe_rate=%.4f', ur)
  end
  if why ~= '' then
    local mark = ARGV[10] == 'shadow' and 'would' or 'paused'
    redis.call('HSET', KEYS[1], name, mark .. '|' .. now .. '|' .. why)
    tripped = 1
  end
end
return {tripped, s, c, u, why}
