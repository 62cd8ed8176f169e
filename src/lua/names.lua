-- names.lua: the dictionary of campaign names (campaigns.c), so that what
-- is held about a person can name the campaigns of their sends, which the
-- send records keep as a 24-bit id only.  Campaign names are not personal
-- data.  KEYS[1] cg:{n}:names, a hash "<6 hex digits>" -> name.
-- The gateway's deadline is the last ARGV (see decide.lua): not an entry.
-- ARGV[1] 'put': ARGV[2] the most names kept, ARGV[3..] id, name, ...: each
--   added unless its id is there or the dictionary is full (first come:
--   an id two names share keeps the first).  Returns how many were added.
-- ARGV[1] 'get': ARGV[2..] ids.  Returns their names (false: unknown).
local key, last = KEYS[1], #ARGV - 1
if ARGV[1] == 'put' then
  local most, added = tonumber(ARGV[2]), 0
  local size = redis.call('HLEN', key)
  for k = 3, last - 1, 2 do
    if size >= most then break end
    if redis.call('HSETNX', key, ARGV[k], ARGV[k + 1]) == 1 then
      added = added + 1
      size = size + 1
    end
  end
  return added
end
local ids = {}
for k = 2, last do ids[#ids + 1] = ARGV[k] end
if #ids == 0 then return {} end
return redis.call('HMGET', key, unpack(ids))
