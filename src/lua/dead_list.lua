-- dead_list.lua: one tag's dead letters, newest first, for
-- GET /v1/admin/dead-letters (the gateway asks every tag and merges).
-- KEYS[1] the tag's dead-letter list   ARGV[1] most
return redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
