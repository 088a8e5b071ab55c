"""What a migration is, and the error of data newer than this code."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pymongo.asynchronous.database import AsyncDatabase

from domain.errors import DomainError


@dataclass(frozen=True)
class Migration:
    """One numbered step: `apply(db)` changes the stored data and returns how many documents it changed."""

    number: int
    name: str
    apply: Callable[[AsyncDatabase], Awaitable[int]]


class SchemaTooNew(DomainError):
    """The stored data (or a backup) has a schema version newer than this code knows."""

    code = "SCHEMA_TOO_NEW"
