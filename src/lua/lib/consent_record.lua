-- consent_record.lua, included (tools/embed.sh) by the scripts that read or
-- change a person's consent record, so the record's one rule and its one
-- listing are written once.  A record maps a scope "<channel>|<category>"
-- ("*" for all), or "bounce|<channel>", to {state, at ms, source}.

-- The rule by which a word enters a record: consent.lua takes a new word
-- with it, rotate.lua replays two histories oldest first through it.  The
-- newest word wins inside its scope: an unsubscribe from email (or a
-- complaint, everything) overrides an older opt-in to email marketing; a new
-- opt-in lifts a bounce of its channel (or of all, for "*").
local function consent_apply(rec, scope, r)
  if string.sub(scope, 1, 7) ~= 'bounce|' then
    local sc, sg = string.match(scope, '^([^|]*)|(.*)$')
    for k, _ in pairs(rec) do
      local kc, kg = string.match(k, '^([^|]*)|(.*)$')
      if kc ~= 'bounce' and k ~= scope and (sc == '*' or kc == sc) and (sg == '*' or kg == sg) then
        rec[k] = nil
      end
    end
    if r[1] == 'in' then
      for k, _ in pairs(rec) do
        if string.sub(k, 1, 7) == 'bounce|' and (sc == '*' or k == 'bounce|' .. sc) then
          rec[k] = nil
        end
      end
    end
  end
  rec[scope] = r
end

-- A record holding an opt-out or a bounce is kept without a TTL: forgetting
-- it would message someone who said no.
local function consent_suppressed(rec)
  for _, r in pairs(rec) do
    if r[1] == 'out' or r[1] == 'bounced' then return true end
  end
  return false
end

-- Appends n, then [scope, state, at, source] * n in scope order.
local function consent_list(out, rec)
  local scopes = {}
  for k, _ in pairs(rec) do scopes[#scopes + 1] = k end
  table.sort(scopes)
  out[#out + 1] = #scopes
  for _, k in ipairs(scopes) do
    local r = rec[k]
    out[#out + 1] = k
    out[#out + 1] = r[1]
    out[#out + 1] = r[2]
    out[#out + 1] = r[3]
  end
end
