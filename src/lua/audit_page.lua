-- audit_page.lua: one tag's audit entries after a point, for GET /v1/audit
-- (the gateway asks every tag and merges by id).
-- KEYS[1] audit stream   ARGV[1] exclusive start id ("0-0" for all)   ARGV[2] count
-- Returns {n, [id, n_fields, field, value, ...] * n}
local entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
local out = {#entries}
for _, e in ipairs(entries) do
  out[#out + 1] = e[1]
  out[#out + 1] = #e[2] / 2
  for i = 1, #e[2] do out[#out + 1] = e[2][i] end
end
return out
