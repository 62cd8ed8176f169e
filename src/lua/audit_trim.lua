-- audit_trim.lua: drops one tag's audit entries older than the retention,
-- and renews the stream's expiry.  Run in the background by every worker
-- (see worker.c), so a decision only appends: exact age trimming costs a
-- decision nothing.  (MAXLEN on every append bounds the length.)  It says
-- when the tag needs it next: when its oldest entry comes of age, so an idle
-- gateway asks nearly never (entries appended later are younger still).
-- The expiry is what removes a stream once no gateway runs any more: renewed
-- here, and the caller comes back within half the retention.
-- KEYS[1] audit stream   ARGV[1] retention ms
-- Returns {entries removed, ms until the oldest entry left is due (-1: none)}.
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, -1} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local keep = tonumber(ARGV[1])
local removed = redis.call('XTRIM', KEYS[1], 'MINID', tostring(now - keep))
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
if not first then
  redis.call('DEL', KEYS[1])
  return {removed, -1}
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
local ms = tonumber(string.match(first[1], '^(%d+)'))
local due = ms + keep - now
return {removed, due > 0 and due or 0}
