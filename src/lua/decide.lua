-- decide.lua: one atomic allow / defer / deny decision for one person.
--
-- Layout (see src/decision.c, which builds the arguments; keep both in step).
-- People are grouped into buckets; every key of a bucket carries the bucket's
-- hash tag, so a decision touches one Redis Cluster slot.  Many people share
-- one small hash, which Redis keeps as a compact listpack: a person costs a
-- field and a value instead of a key, an expiry and their overheads.
--
-- KEYS[1]  sends:   hash  person -> packed sends, 16 bytes each, oldest first:
--                   allowed-at (5: ms since 2024-01-01 UTC, good until 2058) |
--                   message hash (4) | channel (2; top bit: exempt from caps) |
--                   category (2) | campaign hash (3, 0 = none)
--                   16 bytes keep 4 sends within Redis's default listpack
--                   value limit (hash-max-listpack-value 64).
--                   Field '' holds the key's expiry as last set (6: same
--                   epoch).  The key lives the retention past its newest send
--                   (up to a minute more, see 6.); expired sends are trimmed
--                   when their person is written, and a stale person is removed
--                   by the decisions of others in the bucket (garbage collection).
-- KEYS[2]  consent: string (one per person who has any): cmsgpack map
--                   "<channel|*>|<category|*>" -> {state "in"|"out", at ms, source},
--                   and "bounce|<channel>" -> {"bounced", at ms, source} after a
--                   hard bounce; no TTL while it holds a suppression (see consent.lua).
--                   Its history, the receipts, is cg:{T}:h:<P> (consent.lua):
--                   a decision never reads it.
-- KEYS[3]  engagement: hash  person -> sends since the last open/click (2) |
--                   last engagement (5); TTL: retention (fatigue rules)
-- KEYS[4]  audit:   stream of this tag's audit entries (see audit in decision.c)
-- Time is Redis's own clock (TIME), so any number of gateways agree on it.
--
-- ARGV[1] person (8 bytes)
-- ARGV[2] numbers, packed (one struct.unpack: Lua's tonumber() of each, and
--         one Redis argument each, were a large share of the script's cost):
--         message hash (4) | channel hash (2) | category hash (2) |
--         campaign hash (3, 0 none) | retention ms (6) | idempotency ms (6) |
--         max_defer ms (6) | flags, one byte each (0/1): dry run, ignores
--         opt-out, requires opt-in, exempt from caps (recorded, never counted
--         by a cap), the dispatcher deciding a queued message (proxy mode) |
--         quiet intervals (1) | caps (1) | fatigue rule (1: 0/1) |
--         expiry slack ms (4: see 6.) | audit retention ms (6), and in
--         proxy mode (below) also: max queued per tag (4) | message TTL ms
--         (6) | priority (1) | collapse (1: 0/1) | lease ms (4)
-- ARGV[3] the rules, packed, in this order:
--         quiet intervals: n x (start ms (6) | end ms (6)), absolute
--         caps: n x (index (1) | channel (2, 0 any) | category (2, 0 any) |
--           per campaign (1) | deny (1) | limit (2) | window ms (6) | shadow (1));
--           index 255 is the fatigue cap
--         fatigue: unengaged_after (2) | limit (2) | window ms (6) | deny (1)
--         cap names in config order, '\n'-separated (for the audit entry only)
-- ARGV[4] "<channel>|<category>" by name (consent is kept by name)
-- ARGV[5] audit: '' (off) or the tag stream's max entries
-- ARGV[6] the audit entry's start: "<P>|<channel>|<category>|<generation>".
--          The entry is one field, "decide" = "<P>|<channel>|<category>|<generation>|
--          <decision>|<reason>|<rule>|<counted>|<replay>|<shadow>" (src/audit_entry.c
--          spells it out for readers): one field costs Redis a third of seven pairs.
--
-- Proxy mode (POST /v1/send, routes, the dispatcher) adds: a deferred message
-- is queued in the same atomic step, so an accepted message is never lost;
-- and so is an allowed one, which the gateway forwards at once: it waits in
-- the queue under a lease until the upstream's 2xx is acknowledged, so that
-- if its gateway dies meanwhile another one delivers it (the "outbox"):
-- KEYS[5] the tag's queue: sorted set, score = deliver-at ms (or, forwarding,
--         the lease's end), member = "<P>:<M>"
-- KEYS[6] the message: hash blob (what to deliver, sealed), prio; and when
--         deferred, attempts and collapse (its collapse index, or '')
-- KEYS[7] the collapse index "<P>:<collapse hash>" -> member (or any key of the
--         tag when there is no collapse_key)
-- KEYS[8] (routes) the first answer the upstream gave this message, sealed
--         (kept by finish.lua's ack): a replay returns it, so a client retry
--         gets the upstream's own answer again
-- ARGV[7] the blob   ARGV[8] the member
-- (The queue's numbers travel in ARGV[2]: as a string of their own, their
-- parsing was two string.match()es a send, each costing Redis as much as a
-- redis.call().)
-- A message that a newer one of its collapse key replaced leaves a marker,
-- cg:{T}:x:<member>, for as long as it could have waited: a client retry of
-- it is told so (reason superseded) and changes nothing.
-- ARGV[#ARGV] the gateway's deadline on Redis's clock (ms; added by store.c):
--         a call that runs after it changes nothing and answers LATE.
--
-- Returns the answer packed in one string (one reply object for the gateway
-- to parse instead of ten): outcome (1) | reason (1) | rule (2) |
--          retry ms (6, signed) | replay (1: 0 no, 1 yes, 2 yes but its
--          delivery was never acknowledged: forward it again, 3 yes and the
--          dispatcher has claimed it: due in retry ms, outcome allow when
--          it decided it already, defer when not yet) | count (4) |
--          queued (1: 0 no, 1 yes, 2 queue full) | superseded (1: 0/1) |
--          n_shadow (1), then n_shadow x (rule (2) | would (1))
--   outcome 0 allow, 1 defer, 2 deny
--   reason  0 ok, 1 opted_out, 2 consent_required, 3 quiet_hours, 4 cap, 5 suppressed,
--           6 superseded
-- With KEYS[8], a replay whose first answer is kept returns {packed, answer}.
--   rule    the deciding cap's index + 1 (256: fatigue), 0 when no cap decided
--   count   sends counted by the deciding cap
--   shadow  caps in shadow mode that would have decided: rule, 1 defer / 2 deny
--
-- It runs for every decision, so it is written for Redis's cost: few
-- redis.call()s (4 to 6 thousand instructions each), few Lua-to-C calls,
-- no tables or closures it can do without (each is garbage Redis's Lua
-- collects on the request path), numbers unpacked once, the answer packed
-- in one string.

-- The name of cap RULE (index + 1), for the audit entry.
local function cap_name(rules, names_at, rule)
  local k = 0
  for name in string.gmatch(string.sub(rules, names_at), '[^\n]+') do
    k = k + 1
    if k == rule then return name end
  end
  return tostring(rule)
end

-- Every answer goes through here: it appends the audit entry (when on).
-- (Functions of the chunk taking what they need, not closures inside
-- decide(): a closure and its upvalues were allocations on every decision.)
local function answer(ko, ao, nkeys, now, dry, shadow, rules, names_at, audit_keep,
                      outcome, reason, rule, retry, replay, count)
  local call = redis.call
  -- A dry run is a question, not a decision: it leaves no trace at all.
  local max = ARGV[ao + 5]
  if max ~= '' and not dry then
    local rname, counted, hits = '', '', ''
    if rule == 256 then
      rname = 'fatigue'
    elseif rule > 0 then
      rname = cap_name(rules, names_at, rule)
    end
    if rname ~= '' then counted = count end
    if shadow then
      local list = {}
      for i = 1, #shadow, 2 do
        list[#list + 1] = cap_name(rules, names_at, shadow[i]) .. ':' .. (shadow[i + 1] == 2 and 'deny' or 'defer')
      end
      hits = table.concat(list, ',')
    end
    local oname = outcome == 0 and 'allow' or outcome == 1 and 'defer' or 'deny'
    local rsn = reason == 0 and 'ok' or reason == 4 and 'cap' or reason == 3 and 'quiet_hours'
                or reason == 1 and 'opted_out' or reason == 2 and 'consent_required'
                or reason == 6 and 'superseded' or 'suppressed'
    local entry = ARGV[ao + 6] .. '|' .. oname .. '|' .. rsn .. '|' .. rname ..
                  '|' .. counted .. '|' .. (replay > 0 and '1' or '') .. '|' .. hits
    -- MAXLEN bounds the length; age is trimmed, and the expiry renewed, by
    -- the gateways' background sweep (audit_trim.lua).  Only a stream this
    -- call creates gets its expiry here.  One append in eight trims (those
    -- whose message hash ends in 0 mod 8: no client can aim at it): each
    -- trim drops all that is over, so the stream is longer than MAXLEN ~
    -- alone allows by about eight entries, and the three arguments cost
    -- Redis 4.8k instructions an append.
    local added
    if string.byte(ARGV[ao + 2], 4) % 8 == 0 then
      added = call('XADD', KEYS[ko + 4], 'NOMKSTREAM', 'MAXLEN', '~', max, '*', 'decide', entry)
    else
      added = call('XADD', KEYS[ko + 4], 'NOMKSTREAM', '*', 'decide', entry)
    end
    if not added then
      call('XADD', KEYS[ko + 4], 'MAXLEN', '~', max, '*', 'decide', entry)
      call('PEXPIRE', KEYS[ko + 4], audit_keep)
    end
  end
  -- A deferral in proxy mode queues the message, or refuses it when full.
  local queued, superseded = 0, 0
  if outcome == 1 and nkeys >= 7 and replay ~= 3 then
    local max, ttl, prio, collapse = struct.unpack('>I4I6I1I1', ARGV[ao + 2], 48)
    local member = ARGV[ao + 8]
    local replacing = collapse == 1 and call('EXISTS', KEYS[ko + 7]) == 1
    if not replacing and not call('ZSCORE', KEYS[ko + 5], member) and
       call('ZCARD', KEYS[ko + 5]) >= max then
      queued = 2
    else
      if collapse == 1 then
        local old = call('GET', KEYS[ko + 7])
        if old and old ~= member then
          -- The newer message replaces the older one of the same collapse key;
          -- a retry of the older one will be told so (the marker).
          call('ZREM', KEYS[ko + 5], old)
          call('DEL', string.sub(KEYS[ko + 6], 1, #KEYS[ko + 6] - #member) .. old)
          call('SET', string.sub(KEYS[ko + 5], 1, #KEYS[ko + 5] - 1) .. 'x:' .. old, '1', 'PX', ttl)
          superseded = 1
        end
        call('SET', KEYS[ko + 7], member, 'PX', ttl)
      end
      call('HSET', KEYS[ko + 6], 'blob', ARGV[ao + 7], 'prio', prio,
           'collapse', collapse == 1 and KEYS[ko + 7] or '')
      call('HSETNX', KEYS[ko + 6], 'attempts', 0)
      call('PEXPIRE', KEYS[ko + 6], ttl)
      call('ZADD', KEYS[ko + 5], now + retry, member)
      queued = 1
    end
  end
  local out = struct.pack('>I1I1I2i6I1I4I1I1I1', outcome, reason, rule, retry, replay, count,
                          queued, superseded, shadow and #shadow / 2 or 0)
  if shadow then
    for i = 1, #shadow, 2 do out = out .. struct.pack('>I2I1', shadow[i], shadow[i + 1]) end
  end
  return out
end

-- One decision: its keys are KEYS[ko + 1 ..], its arguments ARGV[ao + 1 ..];
-- NKEYS keys (7 in proxy mode); NOW in ms; S a table to hold the person's
-- sends (see below), reused by the decisions of a batch.  (It captures only
-- answer() from the chunk around it: every upvalue costs Redis's Lua an
-- allocation per call.)
local function decide(ko, ao, nkeys, now, s)
  local REC = 16
  local EPOCH = 1704067200000          -- 2024-01-01T00:00:00Z in ms
  local EXEMPT = 32768                 -- channel's top bit
  local MAX_SENDS = 1000   -- per person; the oldest beyond are forgotten
  local unpack, call = struct.unpack, redis.call

  local person, rules = ARGV[ao + 1], ARGV[ao + 3]
  local msg, channel, category, campaign, retention, idem, max_defer,
        dry, no_opt_out, needs_opt_in, exempt, from_queue, n_quiet, n_caps, has_fatigue,
        slack, audit_keep =
    unpack('>I4I2I2I3I6I6I6I1I1I1I1I1I1I1I1I4I6', ARGV[ao + 2])
  dry, exempt = dry == 1, exempt == 1
  local caps_at = n_quiet * 12 + 1                 -- where the caps start in the rules
  local fatigue_at = caps_at + n_caps * 16
  local names_at = fatigue_at + has_fatigue * 11  -- the cap names
  local shadow = nil            -- {rule, 1 defer / 2 deny, ...}, only when one fired

  -- The person's sends that still matter, oldest first, as the first N
  -- numbers of S, 5 a send (allowed-at, message, channel, category,
  -- campaign; what lies beyond N is another decision's).  Times stay in the
  -- records' own epoch.
  -- With them comes the bucket's expiry as last set (field '', see 6.).
  local n, skipped = 0, 0
  local got = call('HMGET', KEYS[ko + 1], person, '')
  local raw, expiry = got[1], got[2]
  local rnow = now - EPOCH
  if raw then
    local oldest = rnow - retention
    for off = 1, #raw - REC + 1, REC do
      local a, m, c, g, k = unpack('>I5I4I2I2I3', raw, off)
      if a > oldest then
        s[n + 1], s[n + 2], s[n + 3], s[n + 4], s[n + 5] = a, m, c, g, k
        n = n + 5
      elseif n == 0 then
        skipped = skipped + 1      -- (oldest first: only ever a prefix)
      end
    end
    -- 1. A message already allowed is allowed again, and not counted twice.
    local since = rnow - idem
    for i = 1, n, 5 do
      if s[i + 1] == msg and s[i] > since then
        local replay = 1
        -- Proxy mode: allowed before, but no upstream 2xx was acknowledged
        -- (its gateway died, or the answer is still on its way): the
        -- gateway forwards it again, under a new lease.  At least once; the
        -- upstream sees the same Idempotency-Key.
        -- But a message the dispatcher claimed (claim.lua marks it) is the
        -- queue's while its lease or next attempt runs: it is being
        -- delivered, or waits, and a forward now would be a second
        -- delivery.  The retry changes nothing and hears when it is due.
        -- (The same test as before a proxy allow, step 6.)
        local due_in = 0
        -- (Every message hash has 'prio': one call asks whether it exists
        -- and whose it is.)
        local held = nkeys >= 7 and from_queue == 0 and not dry and
                     call('HMGET', KEYS[ko + 6], 'prio', 'by')
        if held and held[1] then
          local due = held[2] == 'q' and
                      tonumber(call('ZSCORE', KEYS[ko + 5], ARGV[ao + 8]) or 0) or 0
          if due > now then
            replay = 3
            due_in = due - now
          else
            call('ZADD', KEYS[ko + 5], now + unpack('>I4', ARGV[ao + 2], 60), ARGV[ao + 8])
            replay = 2
          end
        end
        local packed = answer(ko, ao, nkeys, now, dry, shadow, rules, names_at, audit_keep, 0, 0, 0, due_in, replay, 0)
        if replay == 1 and nkeys >= 8 then
          local first = call('GET', KEYS[ko + 8])
          if first then return {packed, first} end
        end
        return packed
      end
    end
  end

  -- Proxy mode: a retry of a message that a newer one of its collapse key
  -- replaced changes nothing.
  if nkeys >= 7 and from_queue == 0 and string.byte(ARGV[ao + 2], 59) == 1 and
     call('EXISTS', string.sub(KEYS[ko + 5], 1, #KEYS[ko + 5] - 1) .. 'x:' .. ARGV[ao + 8]) == 1 then
    return answer(ko, ao, nkeys, now, dry, shadow, rules, names_at, audit_keep, 2, 6, 0, 0, 0, 0)
  end

  -- 2./3. Consent: the most specific record wins.
  -- A hard bounce suppresses the channel for every category, transactional
  -- too: the address does not take mail.  A later opt-in clears it.
  local state = nil
  local packed = call('GET', KEYS[ko + 2])
  if packed then
    local rec = cmsgpack.unpack(packed)
    local both = ARGV[ao + 4]
    local bar = string.find(both, '|', 1, true)
    local cn, gn = string.sub(both, 1, bar - 1), string.sub(both, bar + 1)
    if rec['bounce|' .. cn] then
      return answer(ko, ao, nkeys, now, dry, shadow, rules, names_at, audit_keep, 2, 5, 0, 0, 0, 0)
    end
    local r = rec[both] or rec[cn .. '|*'] or rec['*|' .. gn] or rec['*|*']
    if r then state = r[1] end
  end
  if state == 'out' and no_opt_out == 0 then
    return answer(ko, ao, nkeys, now, dry, shadow, rules, names_at, audit_keep, 2, 1, 0, 0, 0, 0)
  end
  if needs_opt_in == 1 and state ~= 'in' then
    return answer(ko, ao, nkeys, now, dry, shadow, rules, names_at, audit_keep, 2, 2, 0, 0, 0, 0)
  end

  -- 4. Quiet hours: absolute intervals the gateway computed in the zone.
  for off = 1, caps_at - 1, 12 do
    local qs, qe = unpack('>I6I6', rules, off)
    if now >= qs and now < qe then
      if qe - now > max_defer then
        return answer(ko, ao, nkeys, now, dry, shadow, rules, names_at, audit_keep, 2, 3, 0, qe - now, 0, 0)
      end
      return answer(ko, ao, nkeys, now, dry, shadow, rules, names_at, audit_keep, 1, 3, 0, qe - now, 0, 0)
    end
  end

  -- 5. Caps.  retry_after is exact: the (count - limit + 1)-th oldest matching
  -- send has to leave the window before one more fits.  A person who ignored
  -- their last messages (fatigue) gets one more, tighter cap over every channel.
  -- Every limit is at least 1: a person with no sends that count exceeds none
  -- (most decisions are about such people, so they skip all of this).
  local ignored, engaged = 0, nil
  if has_fatigue == 1 then
    -- Only with fatigue rules is engagement worth a lookup (and a record).
    engaged = call('HGET', KEYS[ko + 3], person)
    if engaged then ignored = unpack('>I2', engaged) end
  end
  if n > 0 then
    local caps, caps_end = rules, fatigue_at - 1
    if has_fatigue == 1 then
      local after, flimit, fwindow, fdeny = unpack('>I2I2I6I1', rules, fatigue_at)
      if ignored >= after then
        caps = string.sub(rules, caps_at, caps_end) ..
               struct.pack('>I1I2I2I1I1I2I6I1', 255, 0, 0, 0, fdeny, flimit, fwindow, 0)
        caps_at, caps_end = 1, #caps
      end
    end
    local defer_rule, defer_retry, defer_count, deny_rule = 0, -1, 0, 0
    for off = caps_at, caps_end - 15, 16 do
      local idx, cch, ccat, percamp, deny, limit, window, shadowed =
        unpack('>I1I2I2I1I1I2I6I1', caps, off)
      local since, count, first = rnow - window, 0, 0
      -- Counted: in the window, not exempt, of the cap's channel, category
      -- and campaign.  FIRST: the oldest counted send.
      for i = 1, n, 5 do
        local c = s[i + 2]
        if s[i] > since and c < EXEMPT and (cch == 0 or c == cch) and
           (ccat == 0 or s[i + 3] == ccat) and (percamp == 0 or s[i + 4] == campaign) then
          count = count + 1
        end
      end
      if count >= limit then
        -- retry_after: until the (count - limit + 1)-th oldest counted send leaves.
        local k, want = 0, count - limit + 1
        for i = 1, n, 5 do
          local c = s[i + 2]
          if s[i] > since and c < EXEMPT and (cch == 0 or c == cch) and
             (ccat == 0 or s[i + 3] == ccat) and (percamp == 0 or s[i + 4] == campaign) then
            k = k + 1
            if k == want then first = s[i] break end
          end
        end
        local retry = first + window - rnow
        if shadowed == 1 then
          -- Evaluated and reported, never enforced: ops trial a cap on live traffic.
          shadow = shadow or {}
          shadow[#shadow + 1] = idx + 1
          shadow[#shadow + 1] = deny + 1
        elseif deny == 1 then
          if deny_rule == 0 then
            deny_rule, defer_retry, defer_count = idx + 1, retry, count
          end
        elseif deny_rule == 0 and retry > defer_retry then
          defer_rule, defer_retry, defer_count = idx + 1, retry, count
        end
      end
    end
    if deny_rule > 0 then
      return answer(ko, ao, nkeys, now, dry, shadow, rules, names_at, audit_keep, 2, 4, deny_rule, defer_retry, 0, defer_count)
    end
    if defer_rule > 0 then
      if defer_retry > max_defer then
        return answer(ko, ao, nkeys, now, dry, shadow, rules, names_at, audit_keep, 2, 4, defer_rule, defer_retry, 0, defer_count)
      end
      return answer(ko, ao, nkeys, now, dry, shadow, rules, names_at, audit_keep, 1, 4, defer_rule, defer_retry, 0, defer_count)
    end
  end

  -- 6. Allowed: record the send (unless this was a dry run).
  if not dry then
    -- Proxy mode: the gateway forwards it now.  Until it acknowledges the
    -- upstream's 2xx the message waits in the queue under a lease, so that
    -- if the gateway dies another one takes it over, as it would a deferred
    -- one.  A copy already waiting there (a client retry of a deferred
    -- message) becomes this one: it does not go out a second time.  (The
    -- dispatcher deciding a queued copy holds its lease already.)
    if nkeys >= 7 and from_queue == 0 then
      local ttl, prio, collapse, lease = unpack('>I6I1I1I4', ARGV[ao + 2], 52)
      local member, lease_end = ARGV[ao + 8], now + lease
      -- Almost always the message is new to the queue, which NX both asks
      -- and, then, answers.  When a copy waits there already: unless the
      -- dispatcher has claimed it (claim.lua marks it) and still holds it
      -- -- then its forward may be on its way, and this one would be a
      -- second delivery: the retry records nothing, and the queue decides
      -- the message again and delivers it (as in step 1) -- it becomes this
      -- one, under the lease.
      if call('ZADD', KEYS[ko + 5], 'NX', lease_end, member) == 0 then
        local due = call('HGET', KEYS[ko + 6], 'by') == 'q' and
                    tonumber(call('ZSCORE', KEYS[ko + 5], member) or 0) or 0
        if due > now then
          return answer(ko, ao, nkeys, now, dry, shadow, rules, names_at, audit_keep, 1, 0, 0, due - now, 3, 0)
        end
        call('ZADD', KEYS[ko + 5], lease_end, member)
      end
      if collapse == 1 and call('GET', KEYS[ko + 7]) == member then
        call('DEL', KEYS[ko + 7])      -- no longer waiting: nothing to replace
      end
      -- (No 'collapse' field: this copy waits for no collapse key, and a
      -- copy it takes over lost its index just above; two arguments less
      -- are 2k instructions a send.)
      call('HSET', KEYS[ko + 6], 'blob', ARGV[ao + 7], 'prio', prio)
      call('PEXPIRE', KEYS[ko + 6], ttl)
    end
    -- Records are oldest first, so the ones that no longer matter (and those
    -- beyond MAX_SENDS) are a prefix: keep the rest as they are, append one.
    -- Keep the order even if Redis's clock stepped back (failover).
    local at = rnow
    local kept = ''
    if raw then
      local drop = skipped
      if n >= MAX_SENDS * 5 then drop = drop + n / 5 - MAX_SENDS + 1 end
      kept = string.sub(raw, drop * REC + 1)
      if n > 0 and s[n - 4] > at then at = s[n - 4] end
    end
    if exempt then channel = channel + EXEMPT end
    local record = kept .. struct.pack('>I5I4I2I2I3', at, msg, channel, category, campaign)
    -- The bucket must live RETENTION past its newest send.  Renewing the
    -- expiry on every write was a tenth of the script's cost, so the bucket
    -- keeps the expiry it was given (field '') and only a send that would
    -- outlive it renews it, SLACK further: once a minute for a busy bucket.
    -- SLACK is 0 when privacy.retention is what bounds the records (the
    -- expiry is then exact, renewed on every write).
    if slack == 0 then
      call('HSET', KEYS[ko + 1], person, record)
      call('PEXPIRE', KEYS[ko + 1], retention)
    elseif not expiry or unpack('>I6', expiry) < at + retention then
      local new = at + retention + slack
      call('HSET', KEYS[ko + 1], person, record, '', struct.pack('>I6', new))
      call('PEXPIREAT', KEYS[ko + 1], new + EPOCH)
    else
      call('HSET', KEYS[ko + 1], person, record)
    end

    -- Garbage collection: look at one other person of the bucket; if none of
    -- their sends still matter, they go.  Each write sweeps a little, so a
    -- bucket holds the people active within the retention, not all who ever were.
    local other = call('HRANDFIELD', KEYS[ko + 1])
    if other and other ~= person and other ~= '' then
      local v = call('HGET', KEYS[ko + 1], other)
      if v and #v >= REC and unpack('>I5', v, #v - REC + 1) <= rnow - retention then
        call('HDEL', KEYS[ko + 1], other)
      end
    end
    -- One more message the person has not (yet) engaged with.
    if has_fatigue == 1 and not exempt then
      local last = 0
      if engaged then
        local _
        _, last = unpack('>I2I5', engaged)
      end
      call('HSET', KEYS[ko + 3], person, struct.pack('>I2I5', math.min(ignored + 1, 65535), last))
      call('PEXPIRE', KEYS[ko + 3], retention)
    end
  end
  return answer(ko, ao, nkeys, now, dry, shadow, rules, names_at, audit_keep, 0, 0, 0, 0, 0, 0)
end

-- A call is one decision (KEYS and ARGV as above), a group ('#', below), or
-- a batch: ARGV[1] is '*' (a person is 8 bytes, never that), then the 6
-- arguments of each
-- decision in turn; KEYS the 4 keys of each (no proxy mode in a batch).
-- A gateway worker sends the decisions it read in one loop turn as one
-- batch (single-node Redis only: src/decide_batch.c), so they share the
-- call's fixed cost and the clock.  Each is decided as if alone, in order;
-- one that fails answers its error and the others go on.
-- Returns one decision's answer, or a batch's answers in order.
-- One clock reading for the whole call (a batch's decisions share it).
local t = redis.call('TIME')
local us = tonumber(t[2])
local now = tonumber(t[1]) * 1000 + (us - us % 1000) / 1000
-- The gateway's deadline (its last argument, on Redis's clock, see store.c):
-- past it the gateway has answered 503, so the call must change nothing.
-- The answer says Redis's time, which corrects a gateway whose view of this
-- clock was too far behind (store.c: it may then send the call again).
if now > tonumber(ARGV[#ARGV]) then return redis.error_reply('LATE ' .. now) end
-- S: room for 4 sends at once.
local sends = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
if ARGV[1] == '#' then
  -- A group of decisions of any shape (a route's recipients, proxy mode):
  -- ARGV[2] packs each one's key count and argument count, a byte each;
  -- the keys of each follow one another in KEYS, the arguments in ARGV[3..].
  local sizes, out, ko, ao = ARGV[2], {}, 0, 2
  for i = 1, #sizes - 1, 2 do
    local nk, na = string.byte(sizes, i, i + 1)
    local ok, res = pcall(decide, ko, ao, nk, now, sends)
    out[#out + 1] = ok and res or redis.error_reply(type(res) == 'table' and res.err or tostring(res))
    ko, ao = ko + nk, ao + na
  end
  return out
end
if ARGV[1] ~= '*' then
  return decide(0, 0, #KEYS, now, sends)
end
local out = {}
for i = 0, #KEYS / 4 - 1 do
  local ok, res = pcall(decide, 4 * i, 1 + 6 * i, 4, now, sends)
  if ok then
    out[i + 1] = res
  else
    out[i + 1] = redis.error_reply(type(res) == 'table' and res.err or tostring(res))
  end
end
return out
