-- release.lua: the sender could not deliver an allowed message, so it stops
-- counting against the person's caps (and is no longer replayed).
-- KEYS[1] sends hash (see decide.lua)   ARGV[1] person   ARGV[2] message hash
-- Returns 1 when a send was removed, 0 when there was none.
local REC = 16
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then
  return 0
end
local msg = tonumber(ARGV[2])
for off = 1, #raw - REC + 1, REC do
  local _, m = struct.unpack('>I5I4', raw, off)
  if m == msg then
    local rest = string.sub(raw, 1, off - 1) .. string.sub(raw, off + REC)
    if #rest == 0 then
      redis.call('HDEL', KEYS[1], ARGV[1])
    else
      redis.call('HSET', KEYS[1], ARGV[1], rest)
    end
    return 1
  end
end
return 0
