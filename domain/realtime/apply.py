"""Apply a batch of stream entries to the hot state in Redis: one Lua script per batch, idempotent per entry.

For each entry the script checks its id in the marker set of its receive day and applies it only if the id was
new, adding the id last, so a batch delivered twice (a consumer that died before acknowledging, a replay from
MongoDB) counts once. The script reads everything before it writes anything: one that fails on a batch's data
fails before its first write (Redis keeps what a failing script wrote), and the consumer can retry the batch's
entries alone (domain.realtime.consumer). No batch shape fails it: lists whose length the batch decides (a user's
profile fields, markers, recent items, a page's items) go to Redis in slices Lua's `unpack` accepts. What an
entry changes, each part named by a letter in its `aspects`:
- `o` popularity: the item's weight into its scenario's 15-minute event-time bucket (and the newest event time);
- `p` profile: counters by type, scenario and active hour, first/last seen, decayed category/tag preferences (all
  in the user's profile hash), the recent sequence, and the user flagged for the next MongoDB snapshot;
- `s` the seen set (ingest adds live events to it at once; replays of events stored while Redis was away need it);
- `m` metrics: the minute and hour counters of domain.realtime.contracts by receive time, attributed to the
  served page's sources and variant when the event cites a requestId recorded by an impression;
- `i` an impression: the page's hash for attribution (items under `i:<item>`, beside the page's own fields) and
  its impression counters.
Python computes what depends on item metadata and scenario weights; the script only adds.

A user erased (domain.privacy) after an event was received and before it was applied keeps nothing of it: the
erasure leaves `erased:<keyed hash of the user>` holding its time, and the script skips the personal parts (`p`,
`s`) of that user's events received up to then; popularity and metrics, which keep no user, still count them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from redis import asyncio as aioredis

from domain.erasure import digest
from domain.experiments.outcomes import SCRIPT_CONFIG
from domain.profiles import CATEGORY, TAG, shifted_at, weight_of
from domain.realtime import contracts as c
from domain.realtime.keys import RECENT_KEPT, SEP, prefix, recent_member
from domain.realtime.script import SCRIPT
from domain.realtime.stream import Entry, StreamEvent, StreamImpression
from models.cache import USER_STATE_TTL_S, ItemMeta

BUCKET_S = 15 * 60
BUCKET_TTL_S = 3 * 3600  # two 1 h windows (current and previous) and a margin
MARKER_TTL_S = 3 * 86400  # replays reach back at most this far through the markers
REQUEST_TTL_S = 86400  # a served page can be cited this long (the default attribution window)
ALL_ASPECTS = "opm"  # what a live entry changes (see the module docstring)
REPLAY_ASPECTS = "opms"

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

    def __init__(
        self, client: aioredis.Redis, *, user_ttl_s: int = USER_STATE_TTL_S, attribution_s: int = REQUEST_TTL_S
    ) -> None:
        self._script = client.register_script(SCRIPT)
        self._user_ttl_s = user_ttl_s
        self._request_ttl_s = attribution_s  # a served page's hash lives as long as events citing it are attributed

    async def run(self, payload: Payload, *, tenant_id: str, check_markers: bool = True, live: bool = True) -> int:
        """Run the script over entries `encode` prepared; return how many were new (when check_markers), or -1
        (nothing applied) when live and a rebuild holds the tenant."""
        if not payload.size:
            return 0
        args = [prefix(tenant_id), "1" if check_markers else "0", MARKER_TTL_S, BUCKET_TTL_S, self._request_ttl_s,
                c.METRICS_MINUTE_TTL_S, c.METRICS_HOUR_TTL_S, RECENT_KEPT, "1" if live else "0", payload.newest_ms,
                payload.json, self._user_ttl_s, SCRIPT_CONFIG]
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
    tenant_id: str, hash_key: bytes = b"",
) -> Payload:
    """Return the script's payload: [strings, label sets, metric sets, pages, events, erasure marker keys] (see
    SCRIPT), with what depends on item metadata and weights computed here; `hash_key` is the tenant's key of the
    keyed hashes that name erasure markers (domain.erasure)."""
    if not planned:
        return EMPTY
    batch = _Batch(prefix(tenant_id), metas, weights, hash_key)
    for p in planned:
        batch.add(p)
    return batch.payload()


_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class _Batch:
    """The payload being built: what repeats within a batch (an item's labels, a type's metrics) is worked out
    once."""

    def __init__(
        self, pre: str, metas: Mapping[str, ItemMeta], weights: Mapping[str, Mapping[str, float]], hash_key: bytes
    ) -> None:
        self.pre, self.metas, self.weights, self.hash_key = pre, metas, weights, hash_key
        self.erased: dict[str, str] = {}  # user -> the key of their erasure marker
        self.strings, self.label_sets, self.metric_sets = _Index(), _Index(), _Index()
        self.pages: list[list[Any]] = []
        self.events: list[Any] = []
        self.newest = 0
        self._items: dict[tuple[str, str], tuple[ItemMeta, int, int]] = {}
        self._metrics: dict[tuple[str, float | None, float | None], int] = {}

    def payload(self) -> Payload:
        batch = [self.strings.values, self.label_sets.values, self.metric_sets.values, self.pages, self.events,
                 self.erased]
        return Payload(_JSON(batch), self.newest, len(self.pages) + len(self.events) // EVENT_WIDTH)

    def add(self, p: Planned) -> None:
        e, pre, strings = p.entry, self.pre, self.strings
        self.newest = max(self.newest, e.received_ms)
        received_s = e.received_ms // 1000
        head = [strings[p.aspects], strings[f"{pre}done:{received_s // 86400}"], e.marker]
        metric_keys = strings.pair(f"{pre}m:{e.scenario_id}:{received_s // 60}",
                                   f"{pre}h:{e.scenario_id}:{received_s // 3600}")
        if isinstance(e, StreamEvent):
            if ("p" in p.aspects or "s" in p.aspects) and e.user_id not in self.erased:
                self.erased[e.user_id] = f"{pre}erased:{digest(self.hash_key, e.user_id)}"
            self.events += head
            self.events += self._event_values(e, seen="s" in p.aspects)
            self.events += (metric_keys, e.received_ms)
        else:
            if e.experiment and "m" in p.aspects and e.user_id not in self.erased:
                self.erased[e.user_id] = f"{pre}erased:{digest(self.hash_key, e.user_id)}"
            self.pages.append([*head, *_page_values(e, pre, strings), metric_keys, metric_keys + 1,
                               e.experiment or "", e.latency_ms, e.served_ms])

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
        member = recent_member(e.ts_ms, e.item_id, scenario, e.type, e.event_id, e.value)
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
    if page.teams:  # interleaved: each item with the team that placed it
        items = [[item, SEP.join(srcs), team] for (item, srcs), team in zip(page.items, page.teams, strict=False)]
    else:
        items = [[item, SEP.join(srcs)] for item, srcs in page.items]
    return [strings[page.scenario_id], strings[page.user_id], strings[f"{pre}rq:{page.request_id}"],
            page.variant or "", items, [[source, n] for source, n in sources.items()]]


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
