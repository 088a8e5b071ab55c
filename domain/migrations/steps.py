"""The migrations this version knows, in order; the newest number is the schema version it writes."""

from __future__ import annotations

from domain.migrations import m0001_model_version_statuses, m0002_scenario_config_history
from domain.migrations.base import Migration

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "model version statuses of the registry", m0001_model_version_statuses.apply),
    Migration(2, "scenario config history", m0002_scenario_config_history.apply),
)
SCHEMA_VERSION = max((m.number for m in MIGRATIONS), default=0)
