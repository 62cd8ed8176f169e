-- consent.lua: store one consent record, stamped with Redis's clock.
-- KEYS[1] the person's consent key (see decide.lua)
-- ARGV[1] "<channel|*>|<category|*>"   ARGV[2] "in" | "out"   ARGV[3] source
-- Consent is proof: it carries no TTL.
-- Returns the time stored, in ms.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local packed = redis.call('GET', KEYS[1])
local rec = {}
if packed then
  rec = cmsgpack.unpack(packed)
end
rec[ARGV[1]] = {ARGV[2], now, ARGV[3]}
redis.call('SET', KEYS[1], cmsgpack.pack(rec))
return now
