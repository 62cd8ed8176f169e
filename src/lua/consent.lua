-- consent.lua: store one consent record, stamped with Redis's clock.
-- KEYS[1] consent hash (see decide.lua)
-- ARGV[1] field "<channel|*>|<category|*>"  ARGV[2] "in" | "out"  ARGV[3] source
-- Consent is proof: it carries no TTL.
-- Returns the time stored, in ms.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. now .. '|' .. ARGV[3])
return now
