-- prefs.lua: a person's consent records, for the preference page (public.c):
-- what show.lua returns of them, without the sends and the audit trail.
-- KEYS[1] the person's consent key
-- Returns {n, [scope, state, at ms, source] * n}, scopes sorted.
local packed = redis.call('GET', KEYS[1])
local rec = packed and cmsgpack.unpack(packed) or {}
local scopes = {}
for k, _ in pairs(rec) do scopes[#scopes + 1] = k end
table.sort(scopes)
local out = {#scopes}
for _, k in ipairs(scopes) do
  local r = rec[k]
  out[#out + 1] = k
  out[#out + 1] = r[1]
  out[#out + 1] = r[2]
  out[#out + 1] = r[3]
end
return out
