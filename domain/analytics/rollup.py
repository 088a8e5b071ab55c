"""Fold stored interactions and served pages into hour buckets, merge hours into days, and (de)serialise buckets.

A bucket counts by event time: an interaction in the hour its `ts` falls in, a served page in the hour it was
served. The counters mean what the live `metrics` mean (domain.realtime.contracts): impressions are the items of
each page served, clicks CLICK events, conversions PURCHASE events, watch seconds the sum of WATCH values,
interactions every event, and attributed the events citing a requestId of a page of the same scenario that showed
their item. Beside them a bucket keeps the maps the catalogue and audience statistics need: per item impressions and
clicks (every CLICK on it), per user events, per list position and per recall source impressions and attributed
clicks. Attributed clicks count for the item's position on the page they cite and for each of its sources.

A day's bucket also keeps each of its hours' figures (`hourly`), so hourly series read days. Stored (`to_documents`),
a bucket is a head (figures, positions, sources) and its item and user maps as documents apart, packed (`pack`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
COUNTERS = ("impressions", "clicks", "conversions", "watch_seconds", "watches", "interactions", "attributed")
MAP_CHUNK = 20_000  # map entries per stored part: a part stays far below MongoDB's 16 MB whatever the ids' length
ITEMS, USERS = "i", "u"  # the suffixes of a grain that name its map documents
HOURLY = (*COUNTERS, "active_users", "new_users")  # what a day keeps of each of its hours


@dataclass(frozen=True, slots=True)
class Slot:
    """Where a served page showed an item: its 1-based position and the recall sources that proposed it."""

    position: int
    sources: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Page:
    """A served page as attribution needs it."""

    scenario_id: str
    slots: Mapping[str, Slot]  # item -> its first slot on the page


def page_of(doc: Mapping[str, Any]) -> Page:
    """Return the attribution view of a stored impression document."""
    slots: dict[str, Slot] = {}
    for position, entry in enumerate(doc.get("items") or (), start=1):
        slots.setdefault(entry["i"], Slot(position, tuple(dict.fromkeys(entry.get("s") or ()))))
    return Page(doc["scenario_id"], slots)


@dataclass(slots=True)
class Bucket:
    """One hour's or day's analytics of a scenario."""

    start: datetime
    counts: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    new: set[str] = field(default_factory=set)  # users whose first event in the scenario falls in the bucket
    users: Counter[str] = field(default_factory=Counter)  # user -> events
    items: dict[str, list[int]] = field(default_factory=dict)  # item -> [impressions, clicks]
    positions: list[list[int]] = field(default_factory=list)  # position - 1 -> [impressions, attributed clicks]
    sources: dict[str, list[int]] = field(default_factory=dict)  # recall source -> [impressions, attributed clicks]
    hourly: dict[str, list[float]] | None = None  # a day's: each of HOURLY per hour of the day

    @property
    def active_users(self) -> int:
        """Return the distinct users with at least one event."""
        return len(self.users)

    @property
    def new_users(self) -> int:
        """Return how many users had their first event in the scenario in the bucket."""
        return len(self.new)

    def figures(self) -> dict[str, float]:
        """Return the counters with the users active and new, by name (the head's `c`, an hour of `hc`)."""
        return {**self.counts, "active_users": self.active_users, "new_users": self.new_users}

    @property
    def empty(self) -> bool:
        """Return whether nothing happened in the bucket."""
        return not self.users and not self.counts["impressions"] and not self.items

    def add_page(self, items: Sequence[Mapping[str, Any]]) -> None:
        """Count a served page: each item shown, at its position, for each of its sources."""
        self.counts["impressions"] += len(items)
        self._grow(len(items))
        for position, entry in enumerate(items):
            self._item(entry["i"])[0] += 1
            self.positions[position][0] += 1
            for source in dict.fromkeys(entry.get("s") or ()):
                self.sources.setdefault(source, [0, 0])[0] += 1

    def add_event(self, event: Mapping[str, Any], page: Page | None) -> None:
        """Count an interaction; `page` is the served page its requestId names, if stored."""
        counts, kind, item = self.counts, event["type"], event["item_id"]
        counts["interactions"] += 1
        self.users[event["user_id"]] += 1
        if kind == "CLICK":
            counts["clicks"] += 1
            self._item(item)[1] += 1
        elif kind == "PURCHASE":
            counts["conversions"] += 1
        elif kind == "WATCH" and event.get("value") is not None:
            counts["watches"] += 1
            counts["watch_seconds"] += float(event["value"])
        slot = page.slots.get(item) if page is not None and page.scenario_id == event["scenario_id"] else None
        if slot is None:
            return
        counts["attributed"] += 1
        if kind == "CLICK":
            self._grow(slot.position)
            self.positions[slot.position - 1][1] += 1
            for source in slot.sources:
                self.sources.setdefault(source, [0, 0])[1] += 1

    def absorb(self, other: Bucket) -> None:
        """Add another bucket's counts and maps to this one (its users' events add up; distinct users union)."""
        for name in COUNTERS:
            self.counts[name] += other.counts[name]
        self.new |= other.new
        self.users.update(other.users)
        for item, (shown, clicked) in other.items.items():
            mine = self._item(item)
            mine[0] += shown
            mine[1] += clicked
        self._grow(len(other.positions))
        for mine, (shown, clicked) in zip(self.positions, other.positions, strict=False):
            mine[0] += shown
            mine[1] += clicked
        for source, (shown, clicked) in other.sources.items():
            mine = self.sources.setdefault(source, [0, 0])
            mine[0] += shown
            mine[1] += clicked

    def _item(self, item: str) -> list[int]:
        found = self.items.get(item)
        if found is None:
            found = self.items[item] = [0, 0]
        return found

    def _grow(self, length: int) -> None:
        while len(self.positions) < length:
            self.positions.append([0, 0])


def hour_of(at: datetime) -> datetime:
    """Return the start of the UTC hour holding `at`."""
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def day_of(at: datetime) -> datetime:
    """Return the start of the UTC day holding `at`."""
    return at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def fold_hours(
    events: Iterable[Mapping[str, Any]], pages: Iterable[Mapping[str, Any]], served: Mapping[str, Page],
    first_seen: Mapping[str, datetime],
) -> dict[datetime, Bucket]:
    """Return the hour buckets of interactions and served pages (stored documents); `served`: request id -> page;
    `first_seen`: user -> their first event in the scenario (a user counts as new in the hour holding it)."""
    hours: dict[datetime, Bucket] = {}

    def bucket(at: datetime) -> Bucket:
        start = hour_of(at)
        found = hours.get(start)
        if found is None:
            found = hours[start] = Bucket(start)
        return found

    for page in pages:
        bucket(page["served_at"]).add_page(page.get("items") or ())
    for event in events:
        rid = event.get("request_id")
        bucket(event["ts"]).add_event(event, served.get(rid) if rid else None)
    for start, b in hours.items():
        b.new = {user for user in b.users if (first := first_seen.get(user)) is not None
                 and start <= first.astimezone(UTC) < start + HOUR}
    return hours


def merge(start: datetime, parts: Iterable[Bucket]) -> Bucket:
    """Return one bucket starting at `start` holding all of `parts`."""
    out = Bucket(start)
    for part in parts:
        out.absorb(part)
    return out


def day_from_hours(day: datetime, hours: Iterable[Bucket]) -> Bucket:
    """Return a day's bucket from its hour buckets, keeping each hour's figures (`hourly`) for hourly series."""
    hours = list(hours)
    out = merge(day, hours)
    out.hourly = {name: [0] * 24 for name in HOURLY}
    for hour in hours:
        k = int((hour.start - day) / HOUR)
        for name, value in hour.figures().items():
            out.hourly[name][k] = value
    return out


def to_documents(bucket: Bucket, *, tenant_id: str, scenario_id: str, grain: str, chunk: int = MAP_CHUNK
                 ) -> list[dict[str, Any]]:
    """Return the stored documents of a bucket: its head (figures, positions, sources, and a day's hourly figures)
    under `grain`; its item map under `grain + "i"` and its user map (with who was new) under `grain + "u"`, each
    sliced into parts of `chunk` entries and packed (`pack`). A read fetches only what it needs (a series the heads
    alone)."""
    epoch = int(bucket.start.timestamp())
    common = {"tenant_id": tenant_id, "scenario_id": scenario_id, "start": bucket.start}
    head = {**common, "_id": f"{tenant_id}/{scenario_id}/{grain}/{epoch}/0", "grain": grain, "part": 0,
            "c": bucket.figures(), "pn": [p[0] for p in bucket.positions], "pc": [p[1] for p in bucket.positions],
            "src": [{"s": s, "n": n, "c": c} for s, (n, c) in sorted(bucket.sources.items())]}
    if bucket.hourly is not None:
        head["hc"] = bucket.hourly
    docs = [head]
    items, users = list(bucket.items.items()), list(bucket.users.items())
    for part, at in enumerate(range(0, len(items), chunk)):
        piece = items[at:at + chunk]
        docs.append({**common, "_id": f"{tenant_id}/{scenario_id}/{grain}{ITEMS}/{epoch}/{part}",
                     "grain": grain + ITEMS, "part": part,
                     "m": pack([i for i, _ in piece], [v[0] for _, v in piece], [v[1] for _, v in piece])})
    for part, at in enumerate(range(0, len(users), chunk)):
        piece = users[at:at + chunk]
        docs.append({**common, "_id": f"{tenant_id}/{scenario_id}/{grain}{USERS}/{epoch}/{part}",
                     "grain": grain + USERS, "part": part,
                     "m": pack([u for u, _ in piece], [n for _, n in piece], [int(u in bucket.new) for u, _ in piece])})
    return docs


def pack(*columns: list[Any]) -> str:
    """Return a map's columns as one JSON string: the embedded MongoDB reads one string many times faster than
    arrays of thousands of values (a quarter's item maps: ~15 ms against ~70 ms)."""
    return json.dumps(columns, separators=(",", ":"), ensure_ascii=False)


def unpack(doc: Mapping[str, Any]) -> list[list[Any]]:
    """Return the columns of a stored map part: ids, impressions, clicks (items); ids, events, new flags (users)."""
    return json.loads(doc["m"])


def drop_users(doc: dict[str, Any], gone: Callable[[str], bool]) -> set[str]:
    """Take the users `gone` says out of a stored user-map part, in place; return those taken out."""
    users, events, new = unpack(doc)
    dropped = {u for u in users if gone(u)}
    if dropped:
        kept = [row for row in zip(users, events, new, strict=True) if row[0] not in dropped]
        doc["m"] = pack([u for u, _, _ in kept], [n for _, n, _ in kept], [f for _, _, f in kept])
    return dropped


def from_documents(docs: Iterable[Mapping[str, Any]]) -> dict[datetime, Bucket]:
    """Return the buckets that stored documents (heads and map parts, in any order) make up, by start."""
    out: dict[datetime, Bucket] = {}
    for doc in docs:
        start = doc["start"].astimezone(UTC)
        b = out.get(start)
        if b is None:
            b = out[start] = Bucket(start)
        if "c" in doc:
            read_head(b, doc)
        if doc["grain"].endswith(ITEMS):
            b.items.update((i, [n, c]) for i, n, c in zip(*unpack(doc), strict=True))
        elif doc["grain"].endswith(USERS):
            users, events, new = unpack(doc)
            b.users.update(dict(zip(users, events, strict=True)))
            b.new.update(u for u, flag in zip(users, new, strict=True) if flag)
    return out


def read_head(bucket: Bucket, doc: Mapping[str, Any]) -> None:
    """Fill a bucket's counters, positions, sources and hourly figures from its head (users come from the maps)."""
    counters = doc.get("c") or {}
    for name in COUNTERS:
        bucket.counts[name] = counters.get(name, 0)
    bucket.hourly = doc.get("hc")
    bucket.positions = [[n, c] for n, c in zip(doc.get("pn", ()), doc.get("pc", ()), strict=True)]
    bucket.sources = {s["s"]: [s["n"], s["c"]] for s in doc.get("src", ())}


def chunks(values: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Yield consecutive slices of at most `size` values."""
    it = iter(values)
    while batch := list(islice(it, size)):
        yield batch
