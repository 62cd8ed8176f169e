-- history.lua: a person's consent records and every change of them still
-- kept, for POST /v1/users/show (consent_history) and /v1/users/export.
-- Changes nothing.  See consent.lua for the history's layout and rules.
-- KEYS[1] the person's consent key  KEYS[2] their consent history
-- ARGV[1] retention ms
-- Returns {now, n, [scope, state, at ms, source] * n,
--          m, [scope, record id, at ms, state, method, legal basis, notice,
--              controller] * m}:
-- the records by scope, the changes oldest first.  A change older than the
-- retention that a write has not trimmed yet is left out, as consent.lua
-- would trim it -- but for the proof of an opt-out in force.
-- #include consent_record.lua

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local retention = tonumber(ARGV[1])

local packed = redis.call('GET', KEYS[1])
local rec = packed and cmsgpack.unpack(packed) or {}
local out = {now}
consent_list(out, rec)

local all = {}
local h = redis.call('HGETALL', KEYS[2])
for i = 1, #h, 2 do
  local list = cmsgpack.unpack(h[i + 1])
  local r = rec[h[i]]
  local in_force = r and r[1] == 'out' and list[#list] and list[#list][3] == 'out'
  for j, e in ipairs(list) do
    if e[2] > now - retention or (in_force and j == #list) then
      all[#all + 1] = {h[i], j, e}
    end
  end
end
-- Oldest first; at equal times by scope, and a scope's own order.
table.sort(all, function(x, y)
  if x[3][2] ~= y[3][2] then return x[3][2] < y[3][2] end
  if x[1] ~= y[1] then return x[1] < y[1] end
  return x[2] < y[2]
end)
out[#out + 1] = #all
for _, a in ipairs(all) do
  local e = a[3]
  out[#out + 1] = a[1]
  for k = 1, 7 do out[#out + 1] = e[k] end
end
return out
