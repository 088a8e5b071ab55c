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

A user erased (domain.privacy) after an event was received and before it was applied keeps nothing of it: the
erasure leaves `erased:<user>` holding its time, and the script skips the personal parts (`p`, `s`) of that
user's events received up to then; popularity and metrics, which keep no user, still count them.
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

# KEYS: the tenant's watermark key, which routes the script to the tenant's hash slot in a Redis Cluster; every
# other key is built from the tenant prefix and shares that slot.
# ARGV: prefix, check markers ("1"/"0"), marker ttl, bucket ttl, request ttl, minute ttl, hour ttl, recent kept,
# yield to a rebuild ("1": do nothing and return -1 while the tenant's rebuild lock is held), the newest receive
# time of the batch (ms), then the batch as one JSON array [strings, label sets, metric sets, pages, events] (see
# `encode`). Returns the number of entries applied.
# Decoding is a large part of the script's cost, so the batch is flat: every repeated string (keys, users, items,
# field names) is sent once and referred to by its index, and the events are one array of EVENT_WIDTH values each.
# Entries are folded into Lua tables first and written once per key and field: a batch of 1,000 events costs
# about as many Redis calls as it has distinct users, not ten times its events.
SCRIPT = r"""
local p, check, live = ARGV[1], ARGV[2] == '1', ARGV[9] == '1'
local marker_ttl, bucket_ttl, request_ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local minute_ttl, hour_ttl, keep = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
if live and redis.call('EXISTS', p .. 'rebuild') == 1 then return -1 end
local batch = cjson.decode(ARGV[11])
local S, L, M, pages, ev = batch[1], batch[2], batch[3], batch[4], batch[5]
local W = 20
local expiring = {}
local erased = {}
local function erased_at(user)
  local t = erased[user]
  if t == nil then
    t = tonumber(redis.call('GET', p .. 'erased:' .. user)) or false
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

-- Which entries are new: one SMISMEMBER and one SADD per receive day. Pages are numbered -1, -2, ..., events by
-- the position their row starts at.
local new = {}
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
    local found = redis.call('SMISMEMBER', key, unpack(markers))
    local fresh, taken = {}, {}
    for j, m in ipairs(markers) do
      if found[j] == 0 and not taken[m] then
        new[idx[2 * j - 1]] = true; taken[m] = true; fresh[#fresh + 1] = m
      end
    end
    if #fresh > 0 then redis.call('SADD', key, unpack(fresh)) end
    expire(key, marker_ttl)
  end
else
  for j = 1, #pages do new[-j] = true end
  for b = 0, #ev - 1, W do new[b] = true end
end

local users, seen, pop, newest, counts, requests = {}, {}, {}, {}, {}, {}
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
-- The served page an event cites, if it showed this item in this scenario: (sources, variant) or nil.
local function served(rq, item, scenario)
  local r = table_of(requests, rq)
  if r[item] == nil then r[item] = redis.call('HMGET', rq, item, '_s', '_v') end
  local v = r[item]
  if v[1] and v[2] == scenario then return split(v[1]), v[3] or '' end
  return nil
end

-- Pages first: an event citing a page of the same batch finds it.
-- page: aspects, day key, marker, scenario, user, request key, variant, [[item, sources]], [[source, n]], minute
-- key, hour key
for j, pg in ipairs(pages) do
  if new[-j] then
    applied = applied + 1
    local rq = S[pg[6]]
    local fields = {'_s', S[pg[4]], '_u', S[pg[5]], '_v', pg[7]}
    for _, it in ipairs(pg[8]) do fields[#fields + 1] = it[1]; fields[#fields + 1] = it[2] end
    redis.call('HSET', rq, unpack(fields))
    requests[rq] = nil
    expire(rq, request_ttl)
    if string.find(S[pg[1]], 'm', 1, true) then
      local mk, hk = S[pg[10]], S[pg[11]]
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
      local s, v = nil, nil
      if ev[b + 15] > 0 then s, v = served(S[ev[b + 15]], S[ev[b + 7]], scenario) end
      if s then sources, variant = s, v end
      local mk, hk = S[ev[b + 19]], S[ev[b + 19] + 1]
      for _, m in ipairs(M[ev[b + 18]]) do count(mk, hk, m[1], m[2], m[3] == 1, sources, variant) end
      if s then count(mk, hk, 'attributed', 1, false, sources, variant) end
    end
  end
end

local dirty = {}
for user, u in pairs(users) do
  dirty[#dirty + 1] = user
  local pf = p .. 'pf:' .. user
  -- counters and preference labels live in one hash: one read and one write per user and batch
  local fields, amounts = {'n', 'acc', 'f', 'l'}, {}
  for fld, amount in pairs(u.c) do fields[#fields + 1] = fld; amounts[#fields] = amount end
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
    out[#out + 1] = sum  -- redis.call writes a number as %.17g
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
-- Entries already applied were applied by a batch that moved the watermark past them: the batch's newest is safe.
local wm = tonumber(ARGV[10])
if applied > 0 and wm > (tonumber(redis.call('GET', p .. 'wm')) or 0) then redis.call('SET', p .. 'wm', wm) end
return applied
"""
EVENT_WIDTH = 20  # values per event in the payload (W in the script)

FLOAT_FIELDS = frozenset({c.WATCH_SECONDS, c.COMPLETION_SUM})  # added with HINCRBYFLOAT, the rest with HINCRBY


@dataclass(frozen=True, slots=True)
class Planned:
    """An entry with what the script needs that depends on metadata, and the parts of it to apply."""

    entry: Entry
    aspects: str = ALL_ASPECTS


@dataclass(frozen=True, slots=True)
class Payload:
    """A batch prepared for the script: its JSON and the newest receive time among its entries."""

    json: str
    newest_ms: int
    size: int


EMPTY = Payload("", 0, 0)


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
        payload = encode(planned, metas, weights, tenant_id=tenant_id)
        return await self.run(payload, tenant_id=tenant_id, check_markers=check_markers, live=live)

    async def run(self, payload: Payload, *, tenant_id: str, check_markers: bool = True, live: bool = True) -> int:
        """Run the script over entries `encode` prepared (see `apply`)."""
        if not payload.size:
            return 0
        args = [prefix(tenant_id), "1" if check_markers else "0", MARKER_TTL_S, BUCKET_TTL_S, REQUEST_TTL_S,
                c.METRICS_MINUTE_TTL_S, c.METRICS_HOUR_TTL_S, RECENT_KEPT, "1" if live else "0", payload.newest_ms,
                payload.json]
        # KEYS[1] routes the script: in a Redis Cluster it runs on the node of the tenant's slot, which every key it
        # builds shares (the {tenant} hash tag).
        return int(await self._script(keys=[prefix(tenant_id) + "wm"], args=args))


class _Index(dict[Any, int]):
    """Values sent once per batch, each referred to by its (1-based, as Lua counts) position."""

    def __init__(self) -> None:
        super().__init__()
        self.values: list[Any] = []

    def __missing__(self, value: Any) -> int:
        self.values.append(value)
        self[value] = n = len(self.values)
        return n

    def pair(self, first: Any, second: Any) -> int:
        """Return the position of `first` with `second` right after it (both sent, again if need be)."""
        key = (first, second)
        n = self.get(key)  # type: ignore[call-overload]
        if n is None:
            self.values += [first, second]
            self[key] = n = len(self.values) - 1
        return n


def encode(
    planned: Sequence[Planned], metas: Mapping[str, ItemMeta], weights: Mapping[str, Mapping[str, float]], *,
    tenant_id: str,
) -> Payload:
    """Return the script's payload: [strings, label sets, metric sets, pages, events] (see SCRIPT), with what
    depends on item metadata and weights computed here."""
    if not planned:
        return EMPTY
    batch = _Batch(prefix(tenant_id), metas, weights)
    for p in planned:
        batch.add(p)
    return batch.payload()


_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class _Batch:
    """The payload being built: what repeats within a batch (an item's labels, a type's metrics) is worked out
    once."""

    def __init__(self, pre: str, metas: Mapping[str, ItemMeta], weights: Mapping[str, Mapping[str, float]]) -> None:
        self.pre, self.metas, self.weights = pre, metas, weights
        self.strings, self.label_sets, self.metric_sets = _Index(), _Index(), _Index()
        self.pages: list[list[Any]] = []
        self.events: list[Any] = []
        self.newest = 0
        self._items: dict[tuple[str, str], tuple[ItemMeta, int, int]] = {}
        self._metrics: dict[tuple[str, float | None, float | None], int] = {}

    def payload(self) -> Payload:
        batch = [self.strings.values, self.label_sets.values, self.metric_sets.values, self.pages, self.events]
        return Payload(_JSON(batch), self.newest, len(self.pages) + len(self.events) // EVENT_WIDTH)

    def add(self, p: Planned) -> None:
        e, pre, strings = p.entry, self.pre, self.strings
        self.newest = max(self.newest, e.received_ms)
        received_s = e.received_ms // 1000
        head = [strings[p.aspects], strings[f"{pre}done:{received_s // 86400}"], e.marker]
        metric_keys = strings.pair(f"{pre}m:{e.scenario_id}:{received_s // 60}",
                                   f"{pre}h:{e.scenario_id}:{received_s // 3600}")
        if isinstance(e, StreamEvent):
            self.events += head
            self.events += self._event_values(e, seen="s" in p.aspects)
            self.events += (metric_keys, e.received_ms)
        else:
            self.pages.append([*head, *_page_values(e, pre, strings), metric_keys, metric_keys + 1])

    def _item(self, e: StreamEvent) -> tuple[ItemMeta, int, int]:
        """Return the item's metadata, its string and its label set."""
        found = self._items.get((e.item_id, e.scenario_id))
        if found is None:
            meta = self.metas.get(e.item_id) or ItemMeta(scenarios=(e.scenario_id,))
            found = (meta, self.strings[e.item_id], self.label_sets[_labels(meta)])
            self._items[(e.item_id, e.scenario_id)] = found
        return found

    def _metric_set(self, e: StreamEvent, meta: ItemMeta) -> int:
        key = (e.type, e.value if e.type == "WATCH" else None, meta.duration_seconds)
        n = self._metrics.get(key)
        if n is None:
            n = self._metrics[key] = self.metric_sets[_metric_rows(e, meta)]
        return n

    def _event_values(self, e: StreamEvent, *, seen: bool) -> list[Any]:
        """Return an event's values after its head: scenario, user, popularity key, item, ts ms, popularity
        weight, type, scenario and hour fields, recent member, seen key (0: not sent without the aspect), request
        key (0: none), label set, shifted amount, metric set."""
        pre, strings, scenario = self.pre, self.strings, e.scenario_id
        meta, item, labels = self._item(e)
        ts_s = e.ts_ms // 1000
        weight = weight_of(e.type, e.value, meta.duration_seconds, self.weights.get(scenario, {}))
        member = f"{e.ts_ms}{SEP}{e.item_id}{SEP}{scenario}{SEP}{e.type}{SEP}{e.event_id}"
        return [
            strings[scenario], strings[e.user_id], strings[f"{pre}pop:{scenario}:{ts_s // BUCKET_S}"], item, e.ts_ms,
            max(weight, 0.0), strings["ty:" + e.type], strings["sc:" + scenario], strings[f"h:{ts_s // 3600 % 24}"],
            member, strings[f"{pre}seen:{scenario}:{e.user_id}"] if seen else 0,
            strings[f"{pre}rq:{e.request_id}"] if e.request_id else 0, labels, shifted_at(weight, e.ts_ms / 1000),
            self._metric_set(e, meta),
        ]


def _metric_rows(e: StreamEvent, meta: ItemMeta) -> tuple[tuple[str, float | int, int], ...]:
    return tuple((name, amount, 1 if name in FLOAT_FIELDS else 0) for name, amount in metric_amounts(e, meta).items())


@lru_cache(maxsize=65536)
def _labels(meta: ItemMeta) -> tuple[str, ...]:
    """Return the item's preference labels (as domain.profiles.label_deltas prefixes them), each once."""
    return tuple(dict.fromkeys([*(CATEGORY + c for c in meta.categories), *(TAG + t for t in meta.tags)]))


def _page_values(page: StreamImpression, pre: str, strings: _Index) -> list[Any]:
    """Return a served page's values after its head: scenario, user, request key, variant, [[item, sources]],
    [[source, items]]."""
    sources: Counter[str] = Counter()
    for _, srcs in page.items:
        sources.update(set(srcs))
    return [strings[page.scenario_id], strings[page.user_id], strings[f"{pre}rq:{page.request_id}"],
            page.variant or "", [[item, SEP.join(srcs)] for item, srcs in page.items],
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
