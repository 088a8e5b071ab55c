"""A served list: the ranked items one answer computed, kept under its request id so that `after` continues it.

It remembers what is needed to extend it past its end (scenario, user, excludeSeen, context) and whether the
engine had nothing more to give (`complete`). It is stored as one compact JSON object: ids, scores and an index
into a small table of distinct source tuples, so that encoding and decoding stay a few C-level calls and only the
served page becomes `Recommendation` objects.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from domain.recommend.base import Recommendation

FORMAT = 1  # bump when the encoding changes: older blobs then decode as missing
_ENCODER = msgspec.json.Encoder(enc_hook=str)  # compact JSON, several times faster than json's encoder


def _encode(value: Any) -> str:
    return _ENCODER.encode(value).decode()


@dataclass(slots=True)
class ServedList:
    """Ranked item ids with their scores and sources, and how to compute more of the same list."""

    request_id: str
    scenario_id: str
    user_id: str
    exclude_seen: bool
    context: Mapping[str, Any]
    item_ids: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    sources: list[tuple[str, ...]] = field(default_factory=list)
    complete: bool = False  # True when the engine had no more items: no page past the end
    arm: str = ""  # the experiment arm it was computed for (`Arm.key`; "" outside experiments)
    variant: str | None = None  # that arm's variant name, or "interleaved"
    experiment_id: str | None = None
    teams: list[str] = field(default_factory=list)  # INTERLEAVE: per item, "A" or "B", the team that placed it

    def __len__(self) -> int:
        return len(self.item_ids)

    def extend(self, items: Sequence[Recommendation], *, complete: bool) -> None:
        """Append computed items (best first) and note whether the list is now complete."""
        self.item_ids.extend(r.item_id for r in items)
        self.scores.extend(round(float(r.score), 6) for r in items)
        self.sources.extend(r.sources for r in items)
        self.complete = complete

    def page(self, offset: int, limit: int) -> list[Recommendation]:
        """Return the items from offset, at most limit of them."""
        end = offset + limit
        return [
            Recommendation(item_id=i, score=s, sources=src)
            for i, s, src in zip(self.item_ids[offset:end], self.scores[offset:end], self.sources[offset:end],
                                 strict=True)
        ]

    def teams_of(self, offset: int, limit: int) -> tuple[str, ...]:
        """Return the teams of the items from offset (empty outside interleaving)."""
        return tuple(self.teams[offset:offset + limit])

    def has_more(self, end: int) -> bool:
        """Return whether a page starting at end could hold items (listed already, or computable)."""
        return end < len(self.item_ids) or not self.complete

    def encode(self) -> str:
        """Return the list as compact JSON."""
        table: dict[tuple[str, ...], int] = {}
        keys = [table.setdefault(src, len(table)) for src in self.sources]
        data = {"f": FORMAT, "r": self.request_id, "s": self.scenario_id, "u": self.user_id, "x": self.exclude_seen,
                "c": self.context, "d": self.complete, "i": self.item_ids, "p": self.scores, "k": keys,
                "t": list(table)}
        if self.arm:  # lists outside experiments stay as short as before
            data.update(a=self.arm, v=self.variant, e=self.experiment_id, m=self.teams)
        return _encode(data)

    @classmethod
    def decode(cls, raw: str | bytes | None) -> ServedList | None:
        """Return the list encoded in raw, or None when raw is empty, malformed or of another format."""
        if not raw:
            return None
        try:
            data = json.loads(raw)
            if data.get("f") != FORMAT:
                return None
            table = [tuple(src) for src in data["t"]]
            return cls(
                request_id=data["r"], scenario_id=data["s"], user_id=data["u"], exclude_seen=bool(data["x"]),
                context=data["c"], item_ids=data["i"], scores=data["p"], sources=[table[k] for k in data["k"]],
                complete=bool(data["d"]), arm=data.get("a", ""), variant=data.get("v"),
                experiment_id=data.get("e"), teams=list(data.get("m") or ()),
            )
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return None
