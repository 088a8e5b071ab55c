"""Apply a batch of stream entries to the hot state in Redis: one Lua script per batch, idempotent per entry.

For each entry the script adds its id to the marker set of its receive day and applies it only if the id was new,
so a batch delivered twice (a consumer that died before acknowledging, a replay from MongoDB) counts once. What an
entry changes, each part named by a letter in its `aspects`:
- `o` popularity: the item's weight into its scenario's 15-minute event-time bucket (and the newest event time);
- `p` profile: counters by type, scenario and active hour, first/last seen, decayed category/tag preferences (all
  in the user's profile hash), the recent sequence, and the user flagged for the next MongoDB snapshot;
- `s` the seen set (ingest adds live events to it at once; replays of events stored while Redis was away need it);
- `m` metrics: the minute and hour counters of domain.realtime.contracts by receive time, attributed to the
  served page's sources and variant when the event cites a requestId recorded by an impression;
- `i` an impression: the page's hash for attribution and its impression counters.
Python computes what depends on item metadata and scenario weights; the script only adds.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from redis import asyncio as aioredis

from domain.profiles import CATEGORY, TAG, shifted_at, weight_of
from domain.realtime import contracts as c
from domain.realtime.keys import SEP, prefix
from domain.realtime.stream import Entry, StreamEvent, StreamImpression
from models.cache import ItemMeta

BUCKET_S = 15 * 60
BUCKET_TTL_S = 3 * 3600  # two 1 h windows (current and previous) and a margin
MARKER_TTL_S = 3 * 86400  # replays reach back at most this far through the markers
REQUEST_TTL_S = 86400  # a served page can be cited this long
RECENT_KEPT = 50
ALL_ASPECTS = "opm"  # what a live entry changes (see the module docstring)
REPLAY_ASPECTS = "opms"

# KEYS: none (every key is built from the tenant prefix, so all of them share the tenant's hash slot).
# ARGV: prefix, check markers ("1"/"0"), marker ttl, bucket ttl, request ttl, minute ttl, hour ttl, recent kept,
# yield to a rebuild ("1": do nothing and return -1 while the tenant's rebuild lock is held), then the entries as
# one JSON array (see _event_row and _page_row for their layout). Returns the number of entries applied.
# Entries are folded into Lua tables first and written once per key and field: a batch of 1,000 events costs
# about as many Redis calls as it has distinct users, not ten times its events.
SCRIPT = r"""
local p, check, live = ARGV[1], ARGV[2] == '1', ARGV[9] == '1'
local marker_ttl, bucket_ttl, request_ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local minute_ttl, hour_ttl, keep = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
if live and redis.call('EXISTS', p .. 'rebuild') == 1 then return -1 end
local entries = cjson.decode(ARGV[10])
local expiring = {}
local function expire(key, ttl)
  if not expiring[key] then expiring[key] = ttl end
end
local function table_of(t, key)
  local v = t[key]
  if not v then v = {}; t[key] = v end
  return v
end

-- Which entries are new: one SMISMEMBER and one SADD per receive day.
local new = {}
if check then
  local days = {}
  for n, e in ipairs(entries) do
    local d = table_of(days, e[3])
    d[#d + 1] = n
  end
  for day, idx in pairs(days) do
    local key = p .. 'done:' .. day
    local markers = {}
    for j, n in ipairs(idx) do markers[j] = entries[n][4] end
    local found = redis.call('SMISMEMBER', key, unpack(markers))
    local fresh, taken = {}, {}
    for j, n in ipairs(idx) do
      if found[j] == 0 and not taken[markers[j]] then
        new[n] = true; taken[markers[j]] = true; fresh[#fresh + 1] = markers[j]
      end
    end
    if #fresh > 0 then redis.call('SADD', key, unpack(fresh)) end
    expire(key, marker_ttl)
  end
else
  for n = 1, #entries do new[n] = true end
end

local users, seen, pop, newest, counts, requests = {}, {}, {}, {}, {}, {}
local applied, wm = 0, nil
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
-- The served page an event cites, if it showed this item in this scenario: (sources, variant) or nil.
local function served(e)
  local rq = p .. 'rq:' .. e[17]
  local r = table_of(requests, rq)
  if r[e[10]] == nil then r[e[10]] = redis.call('HMGET', rq, e[10], '_s', '_v') end
  local v = r[e[10]]
  if v[1] and v[2] == e[5] then return split(v[1]), v[3] or '' end
  return nil
end

for n, e in ipairs(entries) do
  if new[n] then
    applied = applied + 1
    local aspects = e[2]
    if e[1] == 'e' then
      if string.find(aspects, 'o', 1, true) and e[14] > 0 then
        local b = table_of(pop, p .. 'pop:' .. e[5] .. ':' .. e[13])
        b[e[10]] = (b[e[10]] or 0) + e[14]
        if not newest[e[5]] or e[12] > newest[e[5]] then newest[e[5]] = e[12] end
      end
      if string.find(aspects, 'p', 1, true) then
        local u = users[e[6]]
        if not u then u = {c = {}, labels = {}, recent = {}, f = e[12], l = e[12], n = 0}; users[e[6]] = u end
        u.n = u.n + 1
        local c, ty, sc, hr = u.c, 'ty:' .. e[11], 'sc:' .. e[5], 'h:' .. e[15]
        c[ty] = (c[ty] or 0) + 1
        c[sc] = (c[sc] or 0) + 1
        c[hr] = (c[hr] or 0) + 1
        if e[12] < u.f then u.f = e[12] end
        if e[12] > u.l then u.l = e[12] end
        for _, label in ipairs(e[18]) do u.labels[label] = (u.labels[label] or 0) + e[19] end
        u.recent[#u.recent + 1] = e[12]
        u.recent[#u.recent + 1] = e[16]
      end
      if string.find(aspects, 's', 1, true) then  -- ingest marks live events seen itself; replays do it here
        local s = table_of(seen, p .. 'seen:' .. e[5] .. ':' .. e[6])
        s[#s + 1] = e[10]
      end
      if string.find(aspects, 'm', 1, true) then
        local sources, variant = {}, ''
        local s, v = nil, nil
        if e[17] ~= '' then s, v = served(e) end
        if s then sources, variant = s, v end
        local mk, hk = p .. 'm:' .. e[5] .. ':' .. e[8], p .. 'h:' .. e[5] .. ':' .. e[9]
        for _, m in ipairs(e[20]) do count(mk, hk, m[1], m[2], m[3] == 1, sources, variant) end
        if s then count(mk, hk, 'attributed', 1, false, sources, variant) end
      end
    else
      local rq = p .. 'rq:' .. e[10]
      local fields = {'_s', e[5], '_u', e[6], '_v', e[11]}
      for _, it in ipairs(e[12]) do fields[#fields + 1] = it[1]; fields[#fields + 1] = it[2] end
      redis.call('HSET', rq, unpack(fields))
      requests[rq] = nil
      expire(rq, request_ttl)
      if string.find(aspects, 'm', 1, true) then
        local mk, hk = p .. 'm:' .. e[5] .. ':' .. e[8], p .. 'h:' .. e[5] .. ':' .. e[9]
        count(mk, hk, 'impressions', #e[12], false, {}, e[11])
        for _, src in ipairs(e[13]) do
          bump(mk, minute_ttl, 'impressions|src:' .. src[1], src[2], false)
          bump(hk, hour_ttl, 'impressions|src:' .. src[1], src[2], false)
        end
      end
    end
    if not wm or e[7] > wm then wm = e[7] end
  end
end

local dirty = {}
for user, u in pairs(users) do
  dirty[#dirty + 1] = user
  local pf = p .. 'pf:' .. user
  -- counters and preference labels live in one hash: one read and one write per user and batch
  local fields, amounts = {'n', 'acc', 'f', 'l'}, {}
  for fld, amount in pairs(u.c) do fields[#fields + 1] = fld; amounts[#fields] = amount end
  local counted = #fields
  for label, amount in pairs(u.labels) do fields[#fields + 1] = label; amounts[#fields] = amount end
  local cur = redis.call('HMGET', pf, unpack(fields))
  local applied_n = (tonumber(cur[1]) or 0) + u.n
  local acc = math.max(tonumber(cur[2]) or 0, applied_n)  -- accepted never trails applied (replays were not)
  local first, last = tonumber(cur[3]), tonumber(cur[4])
  if not first or u.f < first then first = u.f end
  if not last or u.l > last then last = u.l end
  local out = {'n', applied_n, 'acc', acc, 'f', first, 'l', last}
  for j = 5, #fields do
    out[#out + 1] = fields[j]
    local sum = (tonumber(cur[j]) or 0) + amounts[j]
    out[#out + 1] = j > counted and string.format('%.17g', sum) or sum
  end
  redis.call('HSET', pf, unpack(out))
  local rc = p .. 'rc:' .. user
  redis.call('ZADD', rc, unpack(u.recent))
  if applied_n > keep then redis.call('ZREMRANGEBYRANK', rc, 0, -(keep + 1)) end
end
for s = 1, #dirty, 1000 do redis.call('SADD', p .. 'pdirty', unpack(dirty, s, math.min(s + 999, #dirty))) end
for key, items in pairs(seen) do redis.call('SADD', key, unpack(items)) end
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
for key, ttl in pairs(expiring) do redis.call('EXPIRE', key, ttl) end
if wm and wm > (tonumber(redis.call('GET', p .. 'wm')) or 0) then redis.call('SET', p .. 'wm', wm) end
return applied
"""

FLOAT_FIELDS = frozenset({c.WATCH_SECONDS, c.COMPLETION_SUM})  # added with HINCRBYFLOAT, the rest with HINCRBY


@dataclass(frozen=True, slots=True)
class Planned:
    """An entry with what the script needs that depends on metadata, and the parts of it to apply."""

    entry: Entry
    aspects: str = ALL_ASPECTS


class Applier:
    """Run the batch script over planned entries of one tenant."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._script = client.register_script(SCRIPT)

    async def apply(
        self, planned: Sequence[Planned], *, tenant_id: str, metas: Mapping[str, ItemMeta],
        weights: Mapping[str, Mapping[str, float]], check_markers: bool = True, live: bool = True,
    ) -> int:
        """Apply entries once each (when check_markers) and return how many were new; -1 (nothing applied) when
        live and a rebuild holds the tenant."""
        return await self.run(encode(planned, metas, weights), tenant_id=tenant_id, check_markers=check_markers,
                              live=live)

    async def run(self, payload: str, *, tenant_id: str, check_markers: bool = True, live: bool = True) -> int:
        """Run the script over entries `encode` prepared (see `apply`)."""
        if payload == "[]":
            return 0
        args = [prefix(tenant_id), "1" if check_markers else "0", MARKER_TTL_S, BUCKET_TTL_S, REQUEST_TTL_S,
                c.METRICS_MINUTE_TTL_S, c.METRICS_HOUR_TTL_S, RECENT_KEPT, "1" if live else "0", payload]
        return int(await self._script(keys=[], args=args))


def encode(
    planned: Sequence[Planned], metas: Mapping[str, ItemMeta], weights: Mapping[str, Mapping[str, float]]
) -> str:
    """Return the script's payload: one JSON row per entry, with what depends on item metadata and weights."""
    rows = [
        _event_row(p, metas.get(p.entry.item_id), weights.get(p.entry.scenario_id, {}))
        if isinstance(p.entry, StreamEvent) else _page_row(p)
        for p in planned
    ]
    return json.dumps(rows, separators=(",", ":"), ensure_ascii=False)


def _head(p: Planned) -> list[Any]:
    """Return what every row starts with: kind, aspects, receive day, marker, scenario, user, received ms,
    receive minute and hour."""
    e = p.entry
    received_s = e.received_ms // 1000
    kind = "e" if isinstance(e, StreamEvent) else "i"
    return [kind, p.aspects, str(received_s // 86400), e.marker, e.scenario_id, e.user_id, e.received_ms,
            str(received_s // 60), str(received_s // 3600)]


def _event_row(p: Planned, meta: ItemMeta | None, weights: Mapping[str, float]) -> list[Any]:
    """Return an event's row: the head, then item, type, ts ms, bucket, popularity weight, hour of day, recent
    member, requestId, preference labels, their time-shifted amount, and [[metric, amount, is float]]."""
    e = p.entry
    assert isinstance(e, StreamEvent)
    meta = meta or ItemMeta(scenarios=(e.scenario_id,))
    ts_s = e.ts_ms // 1000
    weight = weight_of(e.type, e.value, meta.duration_seconds, weights)
    member = f"{e.ts_ms}{SEP}{e.item_id}{SEP}{e.scenario_id}{SEP}{e.type}{SEP}{e.event_id}"
    return [*_head(p), e.item_id, e.type, e.ts_ms, str(ts_s // BUCKET_S), max(weight, 0.0), str(ts_s // 3600 % 24),
            member, e.request_id or "", _labels(meta), shifted_at(weight, e.ts_ms / 1000), _metric_rows(e, meta)]


def _metric_rows(e: StreamEvent, meta: ItemMeta) -> list[list[Any]]:
    return [[name, amount, 1 if name in FLOAT_FIELDS else 0] for name, amount in metric_amounts(e, meta).items()]


@lru_cache(maxsize=65536)
def _labels(meta: ItemMeta) -> list[str]:
    """Return the item's preference labels (as domain.profiles.label_deltas prefixes them), each once."""
    return list(dict.fromkeys([*(CATEGORY + c for c in meta.categories), *(TAG + t for t in meta.tags)]))


def _page_row(p: Planned) -> list[Any]:
    """Return a served page's row: the head, then requestId, variant, [[item, sources]], [[source, items]]."""
    page = p.entry
    assert isinstance(page, StreamImpression)
    sources: Counter[str] = Counter()
    for _, srcs in page.items:
        sources.update(set(srcs))
    return [*_head(p), page.request_id, page.variant or "", [[item, SEP.join(srcs)] for item, srcs in page.items],
            [[source, n] for source, n in sources.items()]]


def metric_amounts(e: StreamEvent, meta: ItemMeta) -> dict[str, float | int]:
    """Return the live-metric counters one event adds (contracts field -> amount)."""
    out: dict[str, float | int] = {c.INTERACTIONS: 1}
    if e.type == "CLICK":
        out[c.CLICKS] = 1
    elif e.type == "PURCHASE":
        out[c.CONVERSIONS] = 1
    elif e.type == "WATCH" and e.value is not None:
        out[c.WATCHES] = 1
        out[c.WATCH_SECONDS] = float(e.value)
        if meta.duration_seconds:
            out[c.COMPLETIONS] = 1
            out[c.COMPLETION_SUM] = min(float(e.value) / meta.duration_seconds, 1.0)
    return out
