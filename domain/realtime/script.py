"""The batch script domain.realtime.apply runs: what it is sent, what it reads and writes (see apply's docstring)."""

# KEYS: the tenant's watermark key, which routes the script to the tenant's hash slot in a Redis Cluster; every
# other key is built from the tenant prefix and shares that slot.
# ARGV: prefix, check markers ("1"/"0"), marker ttl, bucket ttl, request ttl, minute ttl, hour ttl, recent kept,
# yield to a rebuild ("1": do nothing and return -1 while the tenant's rebuild lock is held), the newest receive
# time of the batch (ms), the batch as one JSON array [strings, label sets, metric sets, pages, events] (see
# `encode`), then the user ttl (seconds: every user key written, profile, recent items and seen sets, expires after
# this long without another write), then what the script needs to know of experiment outcome components
# (domain.experiments.outcomes.SCRIPT_CONFIG). Returns the number of entries applied.
# Decoding is a large part of the script's cost, so the batch is flat: every repeated string (keys, users, items,
# field names) is sent once and referred to by its index, and the events are one array of EVENT_WIDTH values each.
# Entries are folded into Lua tables first and written once per key and field: a batch of 1,000 events costs
# about as many Redis calls as it has distinct users, not ten times its events.
SCRIPT = r"""
local p, check, live = ARGV[1], ARGV[2] == '1', ARGV[9] == '1'
local marker_ttl, bucket_ttl, request_ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local minute_ttl, hour_ttl, keep = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local user_ttl = tonumber(ARGV[12])
local X = cjson.decode(ARGV[13])
if live and redis.call('EXISTS', p .. 'rebuild') == 1 then return -1 end
local batch = cjson.decode(ARGV[11])
local S, L, M, pages, ev = batch[1], batch[2], batch[3], batch[4], batch[5]
local E = batch[6]  -- user -> the key of their erasure marker (a keyed hash of the id, never the id)
local W = 20
-- Lua's unpack refuses more than about 8,000 values (LUAI_MAXCSTACK): every list whose length the batch decides
-- is sent in slices of at most CHUNK values (even, so field/value and score/member pairs stay together).
local CHUNK = 1000
local function call_chunked(cmd, key, list)
  for s = 1, #list, CHUNK do redis.call(cmd, key, unpack(list, s, math.min(s + CHUNK - 1, #list))) end
end
local function read_chunked(cmd, key, list)
  if #list <= CHUNK then return redis.call(cmd, key, unpack(list)) end
  local out = {}
  for s = 1, #list, CHUNK do
    local part = redis.call(cmd, key, unpack(list, s, math.min(s + CHUNK - 1, #list)))
    for j = 1, #part do out[#out + 1] = part[j] end
  end
  return out
end
local expiring = {}
local erased = {}
local function erased_at(user)
  local t = erased[user]
  if t == nil then
    t = E[user] and tonumber(redis.call('GET', E[user])) or false
    erased[user] = t
  end
  return t
end
local function expire(key, ttl)
  if not expiring[key] then expiring[key] = ttl end
end
local function table_of(t, key)
  local v = t[key]
  if not v then v = {}; t[key] = v end
  return v
end

-- Everything is read and folded first and written last: a script that fails (Redis does not roll back what a
-- script wrote before an error) fails before its first write, and the markers, written at the very end, never
-- claim entries whose effects are missing. The consumer can then retry the entries one by one.
-- Which entries are new: one SMISMEMBER per receive day. Pages are numbered -1, -2, ..., events by the position
-- their row starts at.
local new, marking = {}, {}
if check then
  local days = {}
  for j, pg in ipairs(pages) do
    local d = table_of(days, pg[2]); d[#d + 1] = -j; d[#d + 1] = pg[3]
  end
  for b = 0, #ev - 1, W do
    local d = table_of(days, ev[b + 2]); d[#d + 1] = b; d[#d + 1] = ev[b + 3]
  end
  for day, idx in pairs(days) do
    local key = S[day]
    local markers = {}
    for j = 2, #idx, 2 do markers[#markers + 1] = idx[j] end
    local found = read_chunked('SMISMEMBER', key, markers)
    local fresh, taken = {}, {}
    for j, m in ipairs(markers) do
      if found[j] == 0 and not taken[m] then
        new[idx[2 * j - 1]] = true; taken[m] = true; fresh[#fresh + 1] = m
      end
    end
    if #fresh > 0 then marking[key] = fresh end
  end
else
  for j = 1, #pages do new[-j] = true end
  for b = 0, #ev - 1, W do new[b] = true end
end

local users, seen, pop, newest, counts, requests, written = {}, {}, {}, {}, {}, {}, {}
local applied = 0
local function bump(key, ttl, field, amount, float)
  local k = table_of(counts, key)
  local f = k[field]
  if f then f[1] = f[1] + amount else k[field] = {amount, float} end
  expire(key, ttl)
end
local function count_in(key, ttl, field, amount, float, sources, variant)
  bump(key, ttl, field, amount, float)
  for _, s in ipairs(sources) do bump(key, ttl, field .. '|src:' .. s, amount, float) end
  if variant ~= '' then bump(key, ttl, field .. '|var:' .. variant, amount, float) end
end
local function count(mk, hk, field, amount, float, sources, variant)
  count_in(mk, minute_ttl, field, amount, float, sources, variant)
  count_in(hk, hour_ttl, field, amount, float, sources, variant)
end
local function split(csv)
  local out = {}
  for s in string.gmatch(csv, '[^\31]+') do out[#out + 1] = s end
  return out
end
-- A served page's hash keeps each item under 'i:' .. item beside its scenario (_s), user (_u) and variant (_v),
-- so no item id can overwrite them. Pages written before items were prefixed hold items unprefixed: read both.
-- An experiment's page also keeps its experiment (_x) and, interleaved, the team that placed each item (k:).
-- Returns the item's sources, the page's variant, experiment, user and the item's team, or nil.
local function served(rq, item, scenario)
  local page = written[rq]
  if page then  -- served in this very batch, not written yet
    local srcs = page.items[item]
    if srcs and page.scenario == scenario then
      return split(srcs), page.variant, page.x, page.user, page.teams[item] or ''
    end
    return nil
  end
  local r = table_of(requests, rq)
  if r[item] == nil then
    r[item] = redis.call('HMGET', rq, 'i:' .. item, '_s', '_v', '_x', '_u', 'k:' .. item, item)
  end
  local v = r[item]
  local srcs = v[1]
  if not srcs and item ~= '_s' and item ~= '_u' and item ~= '_v' and item ~= '_x' then srcs = v[7] end
  if srcs and v[2] == scenario then return split(srcs), v[3] or '', v[4] or '', v[5] or '', v[6] or '' end
  return nil
end

-- Experiment outcomes (domain.experiments.outcomes): deltas of each exposed user's components, folded per batch.
local xusers = {}  -- experiment -> user -> {v = variant, d = {component -> delta}, exposed = served a page here}
local function xadd(x, user, variant, name, amount, exposed)
  local idx = X.c[name]
  if not idx then return end
  local u = table_of(table_of(xusers, x), user)
  if not u.d then u.v = variant; u.d = {} end
  if exposed then u.exposed = true end
  u.d[idx] = (u.d[idx] or 0) + amount
end

-- Pages first: an event citing a page of the same batch finds it.
-- page: aspects, day key, marker, scenario, user, request key, variant, [[item, sources(, team)]], [[source, n]],
-- minute key, hour key, experiment ('' outside one), latency ms, served ms
for j, pg in ipairs(pages) do
  if new[-j] then
    applied = applied + 1
    local rq = S[pg[6]]
    local x = pg[12] or ''
    local fields = {'_s', S[pg[4]], '_u', S[pg[5]], '_v', pg[7]}
    if x ~= '' then fields[#fields + 1] = '_x'; fields[#fields + 1] = x end
    local items, teams = {}, {}
    for _, it in ipairs(pg[8]) do
      fields[#fields + 1] = 'i:' .. it[1]; fields[#fields + 1] = it[2]; items[it[1]] = it[2]
      if it[3] then fields[#fields + 1] = 'k:' .. it[1]; fields[#fields + 1] = it[3]; teams[it[1]] = it[3] end
    end
    written[rq] = {fields = fields, items = items, scenario = S[pg[4]], variant = pg[7], x = x, user = S[pg[5]],
                   teams = teams}
    expire(rq, request_ttl)
    if string.find(S[pg[1]], 'm', 1, true) then
      local mk, hk = S[pg[10]], S[pg[11]]
      if x ~= '' then
        local user = S[pg[5]]
        local t = erased_at(user)
        if not (t and pg[14] <= t) then
          xadd(x, user, pg[7], 'impressions', #pg[8], true)
          xadd(x, user, pg[7], 'lists', 1, true)
          xadd(x, user, pg[7], 'latency_ms', pg[13], true)
          if #pg[8] == 0 then xadd(x, user, pg[7], 'empty_lists', 1, true) end
        end
      end
      count(mk, hk, 'impressions', #pg[8], false, {}, pg[7])
      for _, src in ipairs(pg[9]) do
        bump(mk, minute_ttl, 'impressions|src:' .. src[1], src[2], false)
        bump(hk, hour_ttl, 'impressions|src:' .. src[1], src[2], false)
      end
    end
  end
end

-- event (W values from b + 1): aspects, day key, marker, scenario, user, popularity key, item, ts ms, popularity
-- weight, type field, scenario field, hour field, recent member, seen key, request key (0: none), label set,
-- shifted amount, metric set, metric keys (a string index; the hour key is the next one), received ms
local has = {}
for b = 0, #ev - 1, W do
  if new[b] then
    applied = applied + 1
    local ai = ev[b + 1]
    local a = has[ai]
    if not a then
      local s = S[ai]
      a = {o = string.find(s, 'o', 1, true), p = string.find(s, 'p', 1, true), s = string.find(s, 's', 1, true),
           m = string.find(s, 'm', 1, true)}
      has[ai] = a
    end
    local scenario, ts = S[ev[b + 4]], ev[b + 8]
    local personal = true
    if a.p or a.s then
      local t = erased_at(S[ev[b + 5]])
      personal = not (t and ev[b + 20] <= t)
    end
    if a.o and ev[b + 9] > 0 then
      local item = S[ev[b + 7]]
      local bk = table_of(pop, S[ev[b + 6]])
      bk[item] = (bk[item] or 0) + ev[b + 9]
      if not newest[scenario] or ts > newest[scenario] then newest[scenario] = ts end
    end
    if a.p and personal then
      local user = S[ev[b + 5]]
      local u = users[user]
      if not u then u = {c = {}, labels = {}, recent = {}, f = ts, l = ts, n = 0}; users[user] = u end
      u.n = u.n + 1
      local c = u.c
      for k = b + 10, b + 12 do
        local fld = S[ev[k]]
        c[fld] = (c[fld] or 0) + 1
      end
      if ts < u.f then u.f = ts end
      if ts > u.l then u.l = ts end
      local amount, labels = ev[b + 17], u.labels
      for _, label in ipairs(L[ev[b + 16]]) do labels[label] = (labels[label] or 0) + amount end
      local r = u.recent
      r[#r + 1] = ts
      r[#r + 1] = ev[b + 13]
    end
    if a.s and personal then  -- ingest marks live events seen itself; replays do it here
      local s = table_of(seen, S[ev[b + 14]])
      s[#s + 1] = S[ev[b + 7]]
    end
    if a.m then
      local sources, variant = {}, ''
      local s, v, x, pu, team = nil, nil, nil, nil, nil
      if ev[b + 15] > 0 then s, v, x, pu, team = served(S[ev[b + 15]], S[ev[b + 7]], scenario) end
      if s then sources, variant = s, v end
      local mk, hk = S[ev[b + 19]], S[ev[b + 19] + 1]
      for _, m in ipairs(M[ev[b + 18]]) do count(mk, hk, m[1], m[2], m[3] == 1, sources, variant) end
      if s then count(mk, hk, 'attributed', 1, false, sources, variant) end
      -- An experiment counts the events its own user's pages led to.
      local user = S[ev[b + 5]]
      if s and x ~= '' and pu == user then
        local t = erased_at(user)
        if not (t and ev[b + 20] <= t) then
          for _, m in ipairs(M[ev[b + 18]]) do
            xadd(x, user, v, m[1], m[2], false)
            if m[1] == 'clicks' and team ~= '' then
              xadd(x, user, v, team == 'A' and 'team_a_clicks' or 'team_b_clicks', m[2], false)
            end
          end
        end
      end
    end
  end
end

-- Profiles: read every user's counters and labels (one HMGET per user and slice) before anything is written.
local dirty, profiles = {}, {}
for user, u in pairs(users) do
  dirty[#dirty + 1] = user
  -- counters and preference labels live in one hash: one read and one write per user and batch
  local fields, amounts = {'n', 'acc', 'f', 'l'}, {}
  for fld, amount in pairs(u.c) do fields[#fields + 1] = fld; amounts[#fields] = amount end
  for label, amount in pairs(u.labels) do fields[#fields + 1] = label; amounts[#fields] = amount end
  local pf = p .. 'pf:' .. user
  profiles[#profiles + 1] = {user, u, fields, amounts, read_chunked('HMGET', pf, fields)}
end

-- Experiments: read each touched user's components (and a newly exposed user's covariates) before any write.
local xrows = {}
for x, us in pairs(xusers) do
  local list = {}
  for user, _ in pairs(us) do list[#list + 1] = user end
  local recs = read_chunked('HMGET', p .. 'xu:' .. x, list)
  local fresh = {}
  for j, user in ipairs(list) do
    if not recs[j] and us[user].exposed then fresh[#fresh + 1] = user end
  end
  local pres = #fresh > 0 and read_chunked('HMGET', p .. 'xp:' .. x, fresh) or {}
  local pre_of = {}
  for j, user in ipairs(fresh) do pre_of[user] = pres[j] end
  xrows[#xrows + 1] = {x, us, list, recs, pre_of}
end

-- Writes.
for rq, page in pairs(written) do call_chunked('HSET', rq, page.fields) end
for _, row in ipairs(profiles) do
  local user, u, fields, amounts, cur = row[1], row[2], row[3], row[4], row[5]
  local applied_n = (tonumber(cur[1]) or 0) + u.n
  local acc = math.max(tonumber(cur[2]) or 0, applied_n)  -- accepted never trails applied (replays were not)
  local first, last = tonumber(cur[3]), tonumber(cur[4])
  if not first or u.f < first then first = u.f end
  if not last or u.l > last then last = u.l end
  local out = {'n', applied_n, 'acc', acc, 'f', first, 'l', last}
  for j = 5, #fields do
    out[#out + 1] = fields[j]
    local sum = (tonumber(cur[j]) or 0) + amounts[j]
    out[#out + 1] = sum  -- redis.call writes a number as %.17g
  end
  call_chunked('HSET', p .. 'pf:' .. user, out)
  local rc = p .. 'rc:' .. user
  call_chunked('ZADD', rc, u.recent)
  if applied_n > keep then redis.call('ZREMRANGEBYRANK', rc, 0, -(keep + 1)) end
  expire(p .. 'pf:' .. user, user_ttl)
  expire(rc, user_ttl)
end
for s = 1, #dirty, CHUNK do redis.call('SADD', p .. 'pdirty', unpack(dirty, s, math.min(s + CHUNK - 1, #dirty))) end
for key, items in pairs(seen) do
  call_chunked('SADD', key, items)
  expire(key, user_ttl)
end
for key, items in pairs(pop) do
  for item, amount in pairs(items) do redis.call('ZINCRBY', key, amount, item) end
  expire(key, bucket_ttl)
end
for scenario, ts in pairs(newest) do
  local key = p .. 'popnew:' .. scenario
  if ts > (tonumber(redis.call('GET', key)) or 0) then redis.call('SET', key, ts) end
end
for key, fields in pairs(counts) do
  for field, v in pairs(fields) do
    if v[2] then redis.call('HINCRBYFLOAT', key, field, v[1]) else redis.call('HINCRBY', key, field, v[1]) end
  end
end
-- Experiments: each touched user's new components, and the variant's sums moved by new - old.
local function derive(c)
  c[X.c.converted] = (c[X.c.conversions] > 0) and 1 or 0
  c[X.c.prefers_a] = (c[X.c.team_a_clicks] > c[X.c.team_b_clicks]) and 1 or 0
  c[X.c.prefers_b] = (c[X.c.team_b_clicks] > c[X.c.team_a_clicks]) and 1 or 0
end
for _, row in ipairs(xrows) do
  local x, us, list, recs, pre_of = row[1], row[2], row[3], row[4], row[5]
  local sums, out = {}, {}
  for j, user in ipairs(list) do
    local u, rec = us[user], recs[j]
    local old, base, variant, known = {}, {}, u.v, false
    if rec then
      local r = cjson.decode(rec)
      variant, known = r[1], true
      for i = 1, X.n do old[i] = tonumber(r[i + 1]) or 0; base[i] = old[i] end
    elseif u.exposed then  -- newly exposed: nothing counted yet; the covariates arrive with the user
      for i = 1, X.n do old[i] = 0; base[i] = 0 end
      local pre = pre_of[user] and cjson.decode(pre_of[user]) or {}
      for k, i in ipairs(X.pre) do base[i] = tonumber(pre[k]) or 0 end
    end
    if rec or u.exposed then
      local new = {}
      for i = 1, X.n do new[i] = base[i] + (u.d[i] or 0) end
      derive(new)
      local sv = table_of(sums, variant)
      if not known then sv['|n'] = (sv['|n'] or 0) + 1 end
      for i = 1, X.n do
        if new[i] ~= old[i] then sv['|s|' .. i] = (sv['|s|' .. i] or 0) + new[i] - old[i] end
      end
      for _, pr in ipairs(X.pairs) do
        local a, c = pr[1], pr[2]
        local d = new[a] * new[c] - old[a] * old[c]
        if d ~= 0 then
          local f = '|p|' .. a .. '|' .. c
          sv[f] = (sv[f] or 0) + d
        end
      end
      local enc = {variant}
      for i = 1, X.n do enc[i + 1] = new[i] end
      out[#out + 1] = user; out[#out + 1] = cjson.encode(enc)
    end
  end
  if #out > 0 then call_chunked('HSET', p .. 'xu:' .. x, out) end
  local sk = p .. 'xs:' .. x
  for variant, fields in pairs(sums) do
    for f, d in pairs(fields) do
      if f == '|n' then redis.call('HINCRBY', sk, variant .. f, d)
      else redis.call('HINCRBYFLOAT', sk, variant .. f, d) end
    end
  end
end
for key, fresh in pairs(marking) do
  call_chunked('SADD', key, fresh)
  expire(key, marker_ttl)
end
for key, ttl in pairs(expiring) do redis.call('EXPIRE', key, ttl) end
-- Entries already applied were applied by a batch that moved the watermark past them: the batch's newest is safe.
local wm = tonumber(ARGV[10])
if applied > 0 and wm > (tonumber(redis.call('GET', p .. 'wm')) or 0) then redis.call('SET', p .. 'wm', wm) end
return applied
"""
