"""Configuration, read once from the environment (and a `.env` file)."""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_PACKAGE_PARENT = Path(__file__).resolve().parent.parent

#: Where relative paths in settings resolve. In a source checkout it is the repository root, so
#: the working directory never changes which data directory is used. Installed as a wheel
#: (the Docker image), the package sits in site-packages, which is no place for data: there the
#: root is the working directory (the image's WORKDIR).
PROJECT_ROOT = _PACKAGE_PARENT if (_PACKAGE_PARENT / "pyproject.toml").is_file() else Path.cwd()


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class AuthMode(StrEnum):
    API_KEY = "api_key"
    TRUSTED = "trusted"


class Settings(BaseSettings):
    # An empty variable means "not set": compose files and shells write `VAR=` for "use the default",
    # and `EMBEDDED_POSTGRES_PORT=` must not be an error while `DATABASE_URL=` must not be a URL.
    model_config = SettingsConfigDict(
        env_file=(".env", str(PROJECT_ROOT / ".env")), extra="ignore", case_sensitive=False, env_ignore_empty=True
    )

    database_url: str | None = Field(default=None, description="Postgres URL; unset: embedded server")
    redis_url: str | None = Field(default=None, description="Redis URL; unset: embedded server")
    host: str = "127.0.0.1"
    port: int = 8000
    environment: Environment = Environment.DEVELOPMENT
    auth_mode: AuthMode = AuthMode.API_KEY
    data_dir: Path = Path(".data")
    log_level: str = "INFO"

    # Pools and timeouts.
    db_pool_min: int = 2
    db_pool_max: int = 20
    db_statement_timeout_ms: int = 15_000
    # A Postgres that hangs instead of refusing: requests get SERVICE_UNAVAILABLE after these,
    # not after asyncpg's 60 s connect default or never (a full pool had no bound).
    db_connect_timeout_s: float = Field(default=10.0, gt=0)
    db_acquire_timeout_s: float = Field(default=10.0, gt=0)
    readiness_timeout_s: float = 2.0

    # Input limits (DESIGN.md "Default limits").
    max_content_bytes: int = 256 * 1024
    max_metadata_bytes: int = 64 * 1024
    max_tags: int = 50
    max_tag_length: int = 100
    max_id_length: int = 200
    max_state_key_length: int = 200
    max_state_value_bytes: int = 256 * 1024
    max_sources: int = 50
    max_batch_messages: int = 100
    max_page_size: int = 100
    default_model: str = "gpt-4o"

    # GraphQL request limits.
    max_query_depth: int = 12
    max_query_aliases: int = 30
    max_query_tokens: int = 2000
    max_batch_operations: int = 10
    max_request_bytes: int = 4 * 1024 * 1024
    trusted_documents_only: bool = False

    # Subscriptions (WebSocket).
    ws_keepalive_s: float = 15.0
    ws_init_timeout_s: float = 10.0
    max_subscriptions_per_connection: int = 100
    subscriber_queue_size: int = 1000

    # arq (jobs/worker.py, docs/jobs.md).
    arq_queue: str = "conversation-service"
    arq_max_jobs: int = Field(default=50, ge=1)
    arq_poll_delay_s: float = Field(default=0.01, gt=0)
    arq_job_timeout_s: float = Field(default=60.0, gt=0)
    #: A job whose worker died is run again this long after its timeout (arq's in-progress lock).
    arq_in_progress_grace_s: float = Field(default=10.0, ge=0)
    arq_max_tries: int = Field(default=5, ge=1)
    arq_retry_base_s: float = Field(default=1.0, gt=0)
    arq_retry_max_s: float = Field(default=60.0, gt=0)
    arq_keep_result_s: int = Field(default=3600, ge=0)
    callback_ttl_s: int = Field(default=3600, ge=1)
    dead_letter_max: int = Field(default=10_000, ge=1)
    cron_enabled: bool = True

    # Tenant defaults (a tenant's `settings` jsonb overrides them; docs/jobs.md).
    default_idle_timeout_s: int = Field(default=86_400, ge=0)
    default_retention_days: int = Field(default=0, ge=0)
    action_log_retention_days: int = Field(default=7, ge=1)
    outbox_retention_days: int = Field(default=30, ge=1)

    # CRM webhooks and customer lookups.
    crm_timeout_s: float = Field(default=10.0, gt=0)
    crm_max_attempts: int = Field(default=8, ge=1)
    crm_retry_base_s: float = Field(default=30.0, gt=0)
    crm_retry_max_s: float = Field(default=3600.0, gt=0)
    crm_last_messages: int = Field(default=10, ge=0, le=100)
    crm_profile_ttl_s: int = Field(default=300, ge=1)

    # Hot cache (app/cache/, docs/decisions.md "Hot cache").
    cache_enabled: bool = True
    cache_recent_messages: int = Field(default=200, ge=1, le=10_000)
    cache_ttl_s: float = Field(default=1800.0, gt=0)
    cache_closed_grace_s: float = Field(default=300.0, gt=0)
    cache_timeout_s: float = Field(default=0.5, gt=0)
    cache_retry_s: float = Field(default=1.0, gt=0)

    # Browsers (CORS): origins whose pages may call the API, comma-separated; none by default.
    cors_allowed_origins: str = ""

    # Error codes and JSON depth (issue 9: app/services/limits.py, app/api/errors.py).
    #: JSON values (metadata, toolCalls, state values) nested deeper are refused at write.
    max_json_depth: int = Field(default=32, ge=1, le=200)

    # Jobs hardening (issue 9: worker liveness, queue trust; jobs/worker.py, docs/jobs.md).
    #: Longest pause between the worker's reconnect attempts while Redis is unreachable.
    worker_reconnect_max_s: float = Field(default=2.0, gt=0)
    #: How often the worker records its heartbeat (and arq's health-check key).
    worker_heartbeat_s: float = Field(default=5.0, gt=0)
    #: /readyz is "degraded" when no worker heartbeat is younger than this (0: no worker check).
    worker_stale_s: float = Field(default=30.0, ge=0)
    #: Producer id -> secret (`p1:s1,p2:s2` or a JSON object); set: unsigned actions are refused.
    action_signing_keys: str | None = Field(default=None, repr=False)
    # Idempotency and in-process caches (issue 9, "idem"): decoded hot-cache messages, in bytes.
    decoded_cache_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    # HTTP gate (issue 9, area http): documents, cost, metrics, slow bodies.
    #: Bytes the parsed-document cache may hold (an estimate: ~64 bytes per character of text).
    document_cache_bytes: int = Field(default=8 * 1024 * 1024, ge=0)
    #: Documents longer than this are parsed every time and never cached (trusted ones are < 2 KiB).
    max_cached_document_bytes: int = Field(default=16 * 1024, ge=0)
    #: Query texts longer than this are BAD_USER_INPUT before parsing (comments escape the token limit).
    max_query_bytes: int = Field(default=64 * 1024, ge=1)
    #: Objects a response may hold (app/api/cost.py); every trusted document fits at full page sizes.
    max_query_cost: int = Field(default=150_000, ge=1)
    #: Seconds a request body may take to arrive; slower ones get 408.
    body_read_timeout_s: float = Field(default=10.0, gt=0)
    #: When set, /metrics needs `Authorization: Bearer <token>`.
    metrics_token: str | None = None
    #: When set, /metrics is served on this port (HOST) by `serve`/`run`, and not on the API port.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # WebSocket hardening (issue 9, area "ws"): credential re-checks and per-process caps.
    #: Live connections re-check their credentials this often, whatever the keepalive (pub/sub down).
    ws_auth_recheck_s: float = Field(default=3.0, gt=0)
    max_ws_connections: int = Field(default=10_000, ge=1)
    max_ws_connections_per_tenant: int = Field(default=1_000, ge=1)
    max_ws_connections_per_key: int = Field(default=1_000, ge=1)
    max_subscriptions_per_tenant: int = Field(default=10_000, ge=1)
    # Apollo conventions (issue 12, item 7): automatic persisted queries (app/api/documents.py).
    #: Bytes of query text the APQ cache holds per process (0: hash + query runs, nothing is kept).
    apq_cache_bytes: int = Field(default=1024 * 1024, ge=0)
    # Worker metrics (issue 12, item 6: jobs/metrics.py).
    #: When set, the worker serves its own /metrics on this port (HOST); unset: no worker metrics server.
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    #: Seconds between the worker's samples of queue depth and CRM deliveries (not per job).
    worker_metrics_interval_s: float = Field(default=5.0, gt=0)
    # CLI and start-up (issue 12, item 8: app/runtime.py, app/cli.py).
    #: Fixed loopback ports for the embedded servers (unset: a free port at every start).
    embedded_postgres_port: int | None = Field(default=None, ge=1, le=65535)
    embedded_redis_port: int | None = Field(default=None, ge=1, le=65535)
    # Automatic summaries (issue 14, item 1: app/services/summaries.py, jobs/summaries.py).
    #: An OpenAI-compatible endpoint: the base URL (`.../v1`; `/chat/completions` is appended) or the
    #: full chat-completions URL. Summaries are off unless both URL and model are set.
    summarizer_url: str | None = None
    summarizer_model: str | None = None
    #: Sent as `Authorization: Bearer …` when set.
    summarizer_api_key: str | None = None
    #: Seconds per summarizer call (below ARQ_JOB_TIMEOUT_S).
    summarizer_timeout_s: float = Field(default=30.0, gt=0)
    #: Unsummarized tokens (stored counts) that trigger a summary, unless the tenant sets
    #: `summary_threshold_tokens`.
    summary_threshold_tokens: int = Field(default=4000, ge=1)
    #: Most tokens of new messages sent in one call; a longer backlog is summarized in several calls.
    summarizer_max_input_tokens: int = Field(default=8000, ge=100)
    #: The summary's length limit asked of the model (`max_tokens` of the call).
    summarizer_reply_tokens: int = Field(default=600, ge=16)
    #: Tries of one summarization before it stays FAILED (until the next trigger), and their backoff.
    summarizer_max_attempts: int = Field(default=5, ge=1)
    summarizer_retry_base_s: float = Field(default=5.0, gt=0)
    summarizer_retry_max_s: float = Field(default=300.0, gt=0)
    # OpenTelemetry tracing (issue 12, item 6: app/tracing.py); off unless one of the first two is set.
    #: On: spans are exported over OTLP/HTTP (to the endpoint below, else the SDK's OTEL_* environment).
    otel_tracing: bool = False
    #: OTLP/HTTP collector base URL (`http://collector:4318`; traces go to `/v1/traces`); setting it turns tracing on.
    otel_exporter_otlp_endpoint: str | None = None
    #: `service.name` of the spans (the API and the worker differ by `conversation_service.role`).
    otel_service_name: str = "conversation-service"
    # Scale-out (issue 13: app/embedded/citus.py, db/distribute.py, docs/scaling.md).
    #: `citus`: with no DATABASE_URL, `run` starts a local Citus cluster (coordinator + 2 workers) in
    #: DATA_DIR/citus instead of one embedded Postgres; `none`: the single embedded Postgres.
    cluster: Literal["none", "citus"] = "none"
    #: Seed nodes (`host:port,host:port`) of a Redis Cluster for the hot store; unset: REDIS_URL's node.
    redis_cluster_nodes: str = ""

    #: totalCount caps (issue 11): counting stops here so a huge result costs no more than this many rows;
    #: beyond it totalCount is the cap and totalCountCapped is true.
    list_count_cap: int = Field(default=100_000, ge=1)
    search_count_cap: int = Field(default=100, ge=1)
    # GraphQL execution engine (issue 11, item 1: app/api/engine/).
    #: Operations planned once and run by their plans; false: every operation through graphql-core's executor.
    graphql_engine: bool = True

    # Embeddings for SEMANTIC and HYBRID search (issue 14.2). With EMBEDDINGS_URL set, vectors come
    # from that OpenAI-compatible endpoint; otherwise from the model shipped inside the wordllama wheel
    # (offline, no download); EMBEDDER=none turns both off (SEMANTIC/HYBRID are then BAD_USER_INPUT).
    embedder: Literal["local", "none"] = "local"
    #: Base URL (`https://host/v1`; `/embeddings` is appended) or the full embeddings URL.
    embeddings_url: str | None = None
    #: The `model` sent to the endpoint (required with EMBEDDINGS_URL); it is stored with every vector.
    embeddings_model: str | None = None
    embeddings_api_key: str | None = None
    #: The endpoint's vector length (required with EMBEDDINGS_URL; at most 2000, pgvector's HNSW limit).
    embeddings_dimensions: int | None = Field(default=None, ge=1, le=2000)
    embeddings_timeout_s: float = Field(default=10.0, gt=0)
    #: Messages embedded per call (worker and backfill).
    embeddings_batch: int = Field(default=64, ge=1, le=2048)
    #: How long a query's vector is reused by the same process (repeated and paged searches).
    embeddings_query_cache_s: float = Field(default=300.0, ge=0)
    # Subscriptions' net for an event lost with nothing after it (app/api/subscriptions.py): a
    # messageAdded stream silent this long reads its conversation's lastSeq (one single-row read)
    # and catches up. The longest a lost last message can be late; 0 turns the check off.
    subscription_idle_check_s: float = Field(default=15.0, ge=0)

    @model_validator(mode="after")
    def _refuse_dev_defaults_in_production(self) -> Settings:
        if self.environment is Environment.PRODUCTION:
            missing = [n for n in ("database_url", "redis_url") if not getattr(self, n)]
            if missing:
                raise ValueError(
                    "production mode needs real servers: set "
                    + ", ".join(m.upper() for m in missing)
                    + " (embedded servers are a development default)"
                )
            for name in ("database_url", "redis_url"):
                value = str(getattr(self, name))
                if ":postgres@" in value or ":password@" in value or ":changeme@" in value:
                    raise ValueError(f"production mode refuses the development password in {name.upper()}")
        return self

    @model_validator(mode="after")
    def _crm_calls_fit_in_a_job(self) -> Settings:
        if self.crm_timeout_s >= self.arq_job_timeout_s:
            raise ValueError("CRM_TIMEOUT_S must be shorter than ARQ_JOB_TIMEOUT_S (a CRM call runs inside a job)")
        return self

    @model_validator(mode="after")
    def _summarizer_calls_fit_in_a_job(self) -> Settings:
        enabled = bool(self.summarizer_url and self.summarizer_model)
        if enabled and self.summarizer_timeout_s >= self.arq_job_timeout_s:
            raise ValueError("SUMMARIZER_TIMEOUT_S must be shorter than ARQ_JOB_TIMEOUT_S (the call runs inside a job)")
        return self

    @model_validator(mode="after")
    def _embeddings_endpoint_is_complete(self) -> Settings:
        if (
            self.embeddings_url
            and self.embedder != "none"
            and not (self.embeddings_model and self.embeddings_dimensions)
        ):
            raise ValueError("EMBEDDINGS_URL needs EMBEDDINGS_MODEL and EMBEDDINGS_DIMENSIONS too")
        return self

    @property
    def resolved_data_dir(self) -> Path:
        path = self.data_dir.expanduser()
        return path if path.is_absolute() else PROJECT_ROOT / path

    @property
    def cors_origins(self) -> list[str]:
        return [o.strip() for o in self.cors_allowed_origins.split(",") if o.strip()]

    @property
    def tracing_enabled(self) -> bool:
        return self.otel_tracing or bool(self.otel_exporter_otlp_endpoint)

    @property
    def is_production(self) -> bool:
        return self.environment is Environment.PRODUCTION


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
