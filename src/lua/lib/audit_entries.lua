-- audit_entries.lua, included (tools/embed.sh) by show.lua and erase.lua:
-- one person's entries in their tag's audit stream, which holds everyone of
-- the tag.  An entry is theirs when its field p is their pseudonym, or when
-- it is a decision whose one compact field starts "<P>|" (see decide.lua).
local function audit_entries_of(stream, pseudonym)
  local mine = {}
  local mark = pseudonym .. '|'
  for _, e in ipairs(redis.call('XRANGE', stream, '-', '+')) do
    local f = e[2]
    for i = 1, #f, 2 do
      if (f[i] == 'p' and f[i + 1] == pseudonym) or
         (f[i] == 'decide' and string.sub(f[i + 1], 1, #mark) == mark) then
        mine[#mine + 1] = e
        break
      end
    end
  end
  return mine
end
