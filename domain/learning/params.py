"""A learned model's settings from a scenario config's params (camelCase keys over snake_case dataclass fields)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


class FromParams:
    """Base of a learned model's settings dataclass, read from its stage's params: `Settings.from_params(params)`."""

    @classmethod
    def from_params(cls: type[T], params: Mapping[str, Any]) -> T:
        """Return the settings with the params that are set (None: the field's default) applied."""
        values = {f.name: params.get(camel(f.name)) for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in values.items() if v is not None})


def camel(name: str) -> str:
    """Return a snake_case name in camelCase: `time_budget_seconds` -> `timeBudgetSeconds`."""
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)
