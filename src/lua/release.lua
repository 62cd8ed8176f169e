-- release.lua: the sender could not deliver an allowed message, so it stops
-- counting against the person's caps (and is no longer replayed).
-- KEYS[1] sends (see decide.lua)   ARGV[1] message hash
-- Returns 1 when a send was removed, 0 when there was none.
local prefix = ARGV[1] .. '|'
local plen = #prefix
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
for i = 1, #members do
  if string.sub(members[i], 1, plen) == prefix then
    redis.call('ZREM', KEYS[1], members[i])
    return 1
  end
end
return 0
