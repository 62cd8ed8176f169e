-- audit_trim.lua: drops one tag's audit entries older than the retention.
-- Run in the background by every worker, a few tags per housekeeping tick
-- (see worker.c), so the decision script only appends: exact age trimming
-- costs a decision nothing, and an entry outlives the retention by at most
-- one sweep.  (MAXLEN on every append bounds the length meanwhile.)
-- KEYS[1] audit stream   ARGV[1] retention ms
-- Returns the number of entries removed.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('XTRIM', KEYS[1], 'MINID', tostring(now - tonumber(ARGV[1])))
