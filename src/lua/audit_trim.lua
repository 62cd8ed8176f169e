-- audit_trim.lua: drops one tag's audit entries older than the retention,
-- and renews the stream's expiry.  Run in the background by every worker, a
-- few tags per housekeeping tick (see worker.c), so a decision only appends:
-- exact age trimming costs a decision nothing, and an entry outlives the
-- retention by at most one sweep.  (MAXLEN on every append bounds the length.)
-- The expiry is what removes a stream once no gateway runs any more: renewed
-- here, it ends at most one sweep before the last entry's retention would.
-- KEYS[1] audit stream   ARGV[1] retention ms
-- Returns the number of entries removed.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local removed = redis.call('XTRIM', KEYS[1], 'MINID', tostring(now - tonumber(ARGV[1])))
if redis.call('XLEN', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return removed
