"""Beanie documents: what recograph stores in MongoDB. Every index starts with tenant_id.

Ids: tenants, keys, scenarios, jobs and model versions get random prefixed ids; items, interactions and profiles
use `"{tenant_id}/{client id}"` as `_id`, so the client's own id is unique within a tenant and lookups by id hit
the primary key. Tenant ids never contain "/", so the composite id is unambiguous whatever the client id holds.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from beanie import Document
from pydantic import Field
from pymongo import ASCENDING, DESCENDING, IndexModel


def composite_id(tenant_id: str, client_id: str) -> str:
    """Return the `_id` of a tenant-scoped document named by the client."""
    return f"{tenant_id}/{client_id}"


class Tenant(Document):
    id: str = Field(alias="_id")
    name: str
    created_at: datetime
    # The key of the keyed hashes that stand for a user id where the id itself must not be kept (erasure markers,
    # vector payloads, logs); created on first use (domain.erasure).
    hash_key: str | None = None
    # Kept in clear, not hashed: verifying a user token's HMAC needs the secret itself. Shown once, on rotation.
    user_signing_secret: str | None = None
    # Rate limits set for this tenant by scope (`recograph tenants limits`): {"public": {"rate": 100.0, "burst": 200}}.
    rate_limits: dict[str, dict[str, float]] = Field(default_factory=dict)

    class Settings:
        name = "tenants"
        indexes = [IndexModel([("name", ASCENDING)])]


class ApiKey(Document):
    id: str = Field(alias="_id")
    tenant_id: str
    scope: str
    prefix: str
    key_hash: str
    created_at: datetime
    revoked_at: datetime | None = None
    rotated_from: str | None = None
    expires_at: datetime | None = None  # past it the key authenticates as nothing
    last_used_at: datetime | None = None  # refreshed at most once a minute per serving process
    require_user_token: bool = False  # a public key that serves only the user its `X-User-Token` names

    class Settings:
        name = "api_keys"
        indexes = [
            IndexModel([("key_hash", ASCENDING)], unique=True),
            IndexModel([("tenant_id", ASCENDING), ("created_at", ASCENDING)]),
        ]


class Scenario(Document):
    id: str = Field(alias="_id")
    tenant_id: str
    name: str
    template: str
    config: dict[str, Any]
    config_version: int = 1
    created_at: datetime
    updated_at: datetime

    class Settings:
        name = "scenarios"
        indexes = [IndexModel([("tenant_id", ASCENDING), ("name", ASCENDING)])]


class ScenarioConfigVersion(Document):
    """One version of a scenario's config as it was set: the full config, who set it, how, and what it changed."""

    id: str = Field(alias="_id")  # "{tenant}/{scenario}/{version}"
    tenant_id: str
    scenario_id: str
    version: int
    config: dict[str, Any]
    created_at: datetime
    key_id: str | None = None  # the API key that set it; None when recorded by a migration
    origin: str  # CREATED, UPDATED, SHIPPED (an experiment's variant), ROLLED_BACK, RECORDED (found in place)
    origin_ref: str | None = None  # the experiment shipped, or the version rolled back to
    changed: list[str] = Field(default_factory=list)  # the config paths that differ from the previous version

    class Settings:
        name = "scenario_config_versions"
        indexes = [IndexModel([("tenant_id", ASCENDING), ("scenario_id", ASCENDING), ("version", DESCENDING)])]


class Item(Document):
    id: str = Field(alias="_id")
    tenant_id: str
    item_id: str
    scenarios: list[str]
    title: str | None = None
    title_lc: str | None = None
    categories: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    attributes: dict[str, Any] = Field(default_factory=dict)
    published_at: datetime | None = None
    status: str = "ACTIVE"
    created_at: datetime
    updated_at: datetime

    class Settings:
        name = "items"
        # One index: every listing is scoped by tenant and scenario; filters then scan that scenario's items.
        # Each extra (multikey) index cut bulk upserts on the embedded server by about a third.
        indexes = [IndexModel([("tenant_id", ASCENDING), ("scenarios", ASCENDING), ("item_id", ASCENDING)])]


class Interaction(Document):
    id: str = Field(alias="_id")
    tenant_id: str
    scenario_id: str
    user_id: str
    item_id: str
    type: str
    value: float | None = None
    ts: datetime
    context: dict[str, Any] | None = None
    request_id: str | None = None
    event_id: str
    received_at: datetime

    class Settings:
        name = "interactions"
        # Reads by user (privacy erasure, profile rebuild) and by scenario (training, deletion); ids are the primary key.
        indexes = [
            IndexModel([("tenant_id", ASCENDING), ("user_id", ASCENDING), ("ts", DESCENDING)]),
            IndexModel([("tenant_id", ASCENDING), ("scenario_id", ASCENDING), ("ts", DESCENDING)]),
            # The event consumer replays what arrived since its watermark (after Redis was away).
            IndexModel([("tenant_id", ASCENDING), ("received_at", ASCENDING)]),
        ]


class Impression(Document):
    """One page of recommendations served: written in batches by the event consumer, for offline attribution."""

    id: str = Field(alias="_id")  # composite of tenant and request id
    tenant_id: str
    scenario_id: str
    user_id: str
    request_id: str
    variant: str | None = None
    experiment_id: str | None = None
    items: list[dict[str, Any]] = Field(default_factory=list)  # {"i": item id, "s": [recall sources]}
    served_at: datetime

    class Settings:
        name = "impressions"
        indexes = [IndexModel([("tenant_id", ASCENDING), ("scenario_id", ASCENDING), ("served_at", DESCENDING)])]


class UserProfile(Document):
    """A snapshot of the profile hot state in Redis, written in batches by the event consumer (domain.profiles)."""

    id: str = Field(alias="_id")
    tenant_id: str
    user_id: str
    interaction_count: int = 0
    counts_by_type: dict[str, int] = Field(default_factory=dict)
    counts_by_scenario: dict[str, int] = Field(default_factory=dict)
    recent: list[dict[str, Any]] = Field(default_factory=list)
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    active_hours: dict[str, int] = Field(default_factory=dict)  # UTC hour of day -> events

    class Settings:
        name = "user_profiles"
        indexes = [IndexModel([("tenant_id", ASCENDING), ("last_seen", DESCENDING)])]


class ModelVersion(Document):
    """One trained model of a scenario, of one kind (domain.learning.versions has the life cycle)."""

    id: str = Field(alias="_id")
    tenant_id: str
    scenario_id: str
    kind: str
    version: int
    status: str = "TRAINING"  # TRAINING READY FAILED RETIRED
    aliases: list[str] = Field(default_factory=list)  # "champion" (serves), "challenger"; each held once per kind
    metrics: dict[str, float] = Field(default_factory=dict)
    artifact: str | None = None  # path relative to the models dir, so pods may mount it anywhere
    revision: int = 0  # bumped each time the artifact is rewritten in place (an erased user's history removed)
    spaces: dict[str, str] = Field(default_factory=dict)  # embedding kind -> the vector space of this version
    job_id: str | None = None
    error: str | None = None
    created_at: datetime
    activated_at: datetime | None = None  # when it last became champion
    trained_at: datetime | None = None  # when its artifact was complete
    applied_at: datetime | None = None  # when its training made it champion or challenger (None: unfinished)
    previous: str | None = None  # the champion it replaced when it last became champion: where rollback goes
    device: str | None = None  # where it was trained ("cpu", "cuda"), recorded once its training applied it
    config: dict[str, Any] = Field(default_factory=dict)  # what it was trained with (and any fitted values)

    class Settings:
        name = "model_versions"
        indexes = [
            IndexModel(
                [("tenant_id", ASCENDING), ("scenario_id", ASCENDING), ("kind", ASCENDING), ("version", DESCENDING)]
            ),
            IndexModel([("tenant_id", ASCENDING), ("status", ASCENDING)]),
        ]


class Experiment(Document):
    """An A/B test of scenario variants (domain.experiments): its design, locked at start, and its state."""

    id: str = Field(alias="_id")
    tenant_id: str
    scenario_id: str
    name: str
    hypothesis: str | None = None
    status: str = "DRAFT"  # DRAFT RUNNING PAUSED STOPPED
    # [{"name": str, "weight": float, "config": {...overrides merged over the scenario's config}}]; the first is the
    # control.
    variants: list[dict[str, Any]] = Field(default_factory=list)
    traffic_percent: float = 100.0
    traffic_offset: float = 0.0  # the experiment's traffic is the buckets [offset, offset + percent) of its layer
    layer: str = ""  # default: the scenario's own layer, "scenario:<id>"
    salt: str = ""  # the layer's salt (a keyed hash of the tenant's key and the layer): same layer, same buckets
    allocation: str = "USER_HASH"  # USER_HASH THOMPSON INTERLEAVE
    primary_metric: str = "CTR"
    secondary_metrics: list[str] = Field(default_factory=list)
    guardrails: list[dict[str, Any]] = Field(default_factory=list)  # [{"metric": str, "margin": float}]
    alpha: float = 0.05
    power: float = 0.8
    minimum_detectable_effect: float | None = None
    sequential: bool = True
    cuped: bool = True
    # THOMPSON: the arms' current weights by variant name, re-fitted every minute while running.
    arm_weights: dict[str, float] = Field(default_factory=dict)
    # What the statistics are computed with, fixed at start: {"alpha", "sequential", "cuped", "tuning", ...}.
    method: dict[str, Any] = Field(default_factory=dict)
    results: dict[str, Any] | None = None  # the last results computed (frozen at stop)
    created_at: datetime
    updated_at: datetime | None = None
    started_at: datetime | None = None
    paused_at: datetime | None = None
    ended_at: datetime | None = None
    shipped: str | None = None  # the variant whose config became the scenario's at stop

    class Settings:
        name = "experiments"
        indexes = [
            IndexModel([("tenant_id", ASCENDING), ("scenario_id", ASCENDING), ("status", ASCENDING)]),
            IndexModel([("tenant_id", ASCENDING), ("layer", ASCENDING), ("status", ASCENDING)]),
        ]


class Job(Document):
    id: str = Field(alias="_id")
    tenant_id: str
    kind: str
    scenario_id: str | None = None
    status: str = "QUEUED"
    progress: float = 0.0
    attempts: int = 0
    error: str | None = None
    result: dict[str, Any] | None = None
    stage: str | None = None
    # The same work on the same target (`kind:scenario`) is queued or running at most once: `active` is true while
    # QUEUED or RUNNING, and a unique index over active jobs' keys refuses a second one.
    key: str | None = None
    active: bool = False
    time_limit_s: float | None = None
    duration_s: float | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None

    class Settings:
        name = "jobs"
        indexes = [
            IndexModel([("tenant_id", ASCENDING), ("created_at", DESCENDING)]),
            IndexModel([("tenant_id", ASCENDING), ("scenario_id", ASCENDING), ("kind", ASCENDING)]),
            IndexModel(
                [("tenant_id", ASCENDING), ("key", ASCENDING)], name="one_active_job_per_key", unique=True,
                partialFilterExpression={"active": True},
            ),
        ]


class Erasure(Document):
    """That a user was erased, kept after the erasure: a keyed hash of the id (never the id), and when."""

    id: str = Field(alias="_id")
    tenant_id: str
    digest: str
    at: datetime

    class Settings:
        name = "erasures"
        indexes = [IndexModel([("tenant_id", ASCENDING), ("at", ASCENDING)])]


class AuditEntry(Document):
    """One admin mutation: who, what, when and how it ended; the arguments only as a digest (they may name users)."""

    id: str = Field(alias="_id")
    tenant_id: str
    key_id: str
    operation: str  # the Mutation root field, e.g. createApiKey
    arguments_sha256: str
    outcome: str  # "ok" or the error code
    at: datetime

    class Settings:
        name = "audit_log"
        indexes = [IndexModel([("tenant_id", ASCENDING), ("_id", DESCENDING)])]  # ids sort by creation time


class AnalyticsRollup(Document):
    """One hour's, day's or week's analytics of a scenario, by event time (domain.analytics.rollup): a head with the
    figures (a day's with each hour's too), and the item and user maps apart, packed and sliced into parts, so that a
    read fetches only what it needs and no document nears MongoDB's size limit."""

    id: str = Field(alias="_id")  # "{tenant}/{scenario}/{grain}/{start epoch s}/{part}"
    tenant_id: str
    scenario_id: str
    grain: str  # heads "h", "d", "w"; item maps "hi", "di", "wi"; user maps "hu", "du", "wu"
    start: datetime
    part: int = 0
    c: dict[str, float] = Field(default_factory=dict)  # head: counters, active and new users
    hc: dict[str, list[float]] = Field(default_factory=dict)  # day head: the same per hour of the day
    pn: list[int] = Field(default_factory=list)  # head: impressions by list position (index 0: position 1)
    pc: list[int] = Field(default_factory=list)  # head: attributed clicks by list position
    src: list[dict[str, Any]] = Field(default_factory=list)  # head: [{"s": source, "n": impressions, "c": clicks}]
    m: str | None = None  # map: JSON columns, [items, impressions, clicks] or [users, events, new (0/1)]

    class Settings:
        name = "analytics_rollups"
        indexes = [IndexModel([("tenant_id", ASCENDING), ("scenario_id", ASCENDING), ("grain", ASCENDING),
                               ("start", ASCENDING)])]


class AnalyticsUser(Document):
    """When a user's first event in a scenario happened (event time): what new users and retention cohorts count."""

    id: str = Field(alias="_id")  # "{tenant}/{scenario}/{user}"
    tenant_id: str
    scenario_id: str
    user_id: str
    first: datetime

    class Settings:
        name = "analytics_users"
        indexes = [IndexModel([("tenant_id", ASCENDING), ("user_id", ASCENDING)])]  # erasure; else by `_id`


class AnalyticsState(Document):
    """A tenant's rollup progress: watermarks, the hours still to recompute, and the lease of the pass running."""

    id: str = Field(alias="_id")  # the tenant id
    tenant_id: str
    events_wm: datetime | None = None  # interactions received before this were scanned
    pages_wm: datetime | None = None  # served pages before this were scanned
    dirty: list[str] = Field(default_factory=list)  # "{scenario}|{hour epoch}" to recompute
    requested: list[str] = Field(default_factory=list)  # the same, asked for since the last pass began
    rolled_up_to: datetime | None = None  # the events_wm of the last pass that left nothing to recompute
    hours_dropped: datetime | None = None  # the first recent day when the aged-out hour buckets were last dropped
    lease_until: datetime | None = None
    lease_owner: str | None = None

    class Settings:
        name = "analytics_state"


DOCUMENTS: list[type[Document]] = [
    Erasure, Tenant, ApiKey, Scenario, ScenarioConfigVersion, Item, Interaction, UserProfile, ModelVersion, Experiment, Job, Impression,
    AuditEntry, AnalyticsRollup, AnalyticsUser, AnalyticsState,
]
