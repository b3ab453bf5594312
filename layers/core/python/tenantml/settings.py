"""Settings: the only module that reads the environment.

Each function parses what it needs once, at the edge, through a cached getter; the domain receives the
resulting pydantic model. Tests call `reset_settings()` after changing the environment.
Every variable is prefixed `TENANTML_` (e.g. TENANTML_REGISTRY_TABLE); which variables a function gets is
derived from the settings models its definition lists (`tenantml.resources.FunctionDef.settings`).

Where the variables come from: on Lambda, the process environment. In local mode several functions share
one process, so each runs with its own mapping (`function_environ`, a context variable set for the
function's init and for each of its invocations): a function sees exactly its declared variables, and one
that parses a setting it was not given fails locally just as it would on AWS. The cached getters are keyed
by the variables they read, so two functions never share a parsed value by accident.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

PREFIX = "TENANTML_"
T = TypeVar("T", bound=BaseModel)


_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("tenantml_environ", default=None)


def current_environ() -> Mapping[str, str]:
    """The variables of the function running now: its own mapping in local mode, else os.environ."""
    env = _ENVIRON.get()
    return os.environ if env is None else env


@contextlib.contextmanager
def function_environ(env: Mapping[str, str]) -> Iterator[None]:
    """Run the block (and what it calls, in this thread) with `env` as the function's variables."""
    token = _ENVIRON.set(dict(env))
    try:
        yield
    finally:
        _ENVIRON.reset(token)


def use_function_environ(env: Mapping[str, str]) -> None:
    """For a thread that runs one function invocation: its variables for the rest of the thread."""
    _ENVIRON.set(dict(env))


def variable(field: str) -> str:
    """The environment variable a settings field is read from."""
    return PREFIX + field.upper()


class _Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    @classmethod
    def variables(cls) -> dict[str, bool]:
        """Every variable this model reads -> whether it is required (no default)."""
        return {variable(name): f.is_required() for name, f in cls.model_fields.items()}

    @classmethod
    def from_env(cls: type[T], environ: Mapping[str, str] | None = None) -> T:
        env = current_environ() if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            key = variable(name)
            if key in env and env[key] != "":
                values[name] = env[key]
        return cls.model_validate(values)


class AwsSettings(_Settings):
    """Where the AWS SDK points. `region` falls back to Lambda's AWS_REGION; `endpoint_url` is set only in
    local mode (moto server)."""

    region: str = "us-east-1"
    endpoint_url: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AwsSettings:
        env = current_environ() if environ is None else environ
        region = env.get(variable("region")) or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") \
            or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        return cls.model_validate({**({"region": region} if region else {}),
                                   **({"endpoint_url": env[variable("endpoint_url")]}
                                      if env.get(variable("endpoint_url")) else {})})


class TenancySettings(_Settings):
    """Tenant-scoped data access (tenantml.tenancy): the function's tenant data role, assumed with the
    session tag tenant=<tenant>. Unset, the function's own role is used (tests with in-memory adapters).
    Sessions last `tenant_session_seconds` (900..3600: a Lambda role assuming another role is role
    chaining, which STS caps at one hour) and at most `tenant_sessions_max` tenants' sessions (each with
    its clients) are kept per execution environment, least recently used dropped first."""

    tenant_role_arn: str | None = None
    tenant_session_seconds: int = Field(default=3600, ge=900, le=3600)
    tenant_sessions_max: int = Field(default=64, ge=1, le=4096)


class ThrottleSettings(_Settings):
    """Per-tenant request rate limits (tenantml.serving.throttle): requests per second per tenant across
    all execution environments (0: off), tokens leased per DynamoDB write (default: a tenth of the
    limit), and the table holding the windows."""

    throttle_table: str | None = None
    tenant_rate_limit: int = Field(default=0, ge=0, le=100_000)
    tenant_rate_lease: int | None = Field(default=None, ge=1)


class AuthSettings(_Settings):
    """The JWT authorizer. Exactly one of jwks_url / jwks_json."""

    jwks_url: str | None = None
    jwks_json: str | None = None
    issuer: str
    audience: str
    tenant_claim: str = "tenant_id"
    leeway_seconds: int = Field(default=60, ge=0, le=60)
    jwks_ttl_seconds: int = Field(default=300, ge=1)
    jwks_min_refresh_seconds: int = Field(default=60, ge=1)
    # Longest accepted token lifetime: exp - iat, or exp - now (plus the leeway) when iat is absent.
    max_token_lifetime_seconds: int = Field(default=86400, ge=60, le=31 * 86400)

    @model_validator(mode="after")
    def _one_key_source(self) -> AuthSettings:
        if bool(self.jwks_url) == bool(self.jwks_json):
            raise ValueError("set exactly one of TENANTML_JWKS_URL or TENANTML_JWKS_JSON")
        return self


class RegistrySettings(_Settings):
    """Where models live: the artifact bucket and the registry table."""

    artifact_bucket: str
    registry_table: str
    # Registration quotas (tenantml.registry.service.Quotas), per owner tenant, checked before anything is
    # written. Models and versions are counted in the owner's own partition only. 100 models and 50
    # versions per model are far above what a tenant's rollouts use (two or three live versions) while
    # bounding the registry partition a tenant can grow; 16 files covers a version's model.onnx,
    # tokenizer.json, head.json and baseline.json with room to spare; 2 GiB per version is protobuf's limit
    # for a single-file ONNX model (external data is refused); 256 KiB of manifest JSON keeps the version
    # item (manifest plus ~1 KB of attributes) under DynamoDB's 400 KB item limit, hence the upper bound.
    max_models_per_tenant: int = Field(default=100, ge=1)
    max_versions_per_model: int = Field(default=50, ge=1)
    max_files_per_version: int = Field(default=16, ge=1)
    max_version_bytes: int = Field(default=2 * 1024 ** 3, ge=1)
    max_manifest_bytes: int = Field(default=256 * 1024, ge=1024, le=350_000)


class ServingSettings(RegistrySettings):
    """The inference function."""

    max_batch: int = Field(default=64, ge=1)
    max_body_bytes: int = Field(default=1_000_000, ge=1)
    model_cache_mb: int = Field(default=512, ge=16)
    prediction_cache_size: int = Field(default=2048, ge=0)
    prediction_cache_ttl_seconds: int = Field(default=300, ge=0)
    registry_cache_ttl_seconds: int = Field(default=30, ge=0)
    # Comma-separated "tenant/model[/version]" loaded at init (SnapStart, cold start).
    preload_models: str = ""
    # Traffic capture for drift checks (tenantml.serving.capture): the default share of requests captured
    # (a model's manifest may set its own), and when a buffered frame is written.
    capture_rate: float = Field(default=1.0, ge=0, le=1)
    capture_max_rows: int = Field(default=500, ge=1)
    capture_max_seconds: float = Field(default=60.0, gt=0)
    # How long a resolution whose model has a live rollout is cached: the bound on how late a warm
    # environment sees a rollback or a new stage (the registry_cache_ttl_seconds applies otherwise).
    rollout_cache_ttl_seconds: int = Field(default=5, ge=0)


class SignalSettings(_Settings):
    """Per-version rollout signals (tenantml.rollout.signals): their table, and how often the inference
    function writes what it buffered."""

    signals_table: str
    signals_flush_seconds: float = Field(default=10.0, gt=0)


class ObservabilitySettings(_Settings):
    """X-Ray through the Powertools Tracer. Off by default: the X-Ray SDK builds a botocore client when it
    is imported (~0.3-0.5 s of cold start on a 2-core machine). Lambda's own Active tracing still records
    each invocation without it; turn this on to get subsegments (boto3 calls, model load, predict)."""

    tracing: bool = False


class IdempotencySettings(_Settings):
    """Powertools idempotency records (scheduled jobs, async submits)."""

    idempotency_table: str


class AsyncSettings(_Settings):
    """The async (GPU) path (tenantml.gpu): the requests table, the dispatch queue and the SageMaker
    endpoint. An empty `gpu_endpoint_name` means none is deployed: GPU models then answer 503 at submit.
    `sagemaker_runtime_url` is local mode's only: its stand-in for the SageMaker runtime API."""

    requests_table: str
    gpu_queue_name: str
    gpu_endpoint_name: str = ""
    # How long a request may wait for the endpoint (SageMaker's own RequestTTLSeconds maximum: 6 h).
    gpu_request_timeout_seconds: int = Field(default=21600, ge=60, le=21600)
    # How long a request's status and answer can be polled.
    async_retention_days: int = Field(default=7, ge=1, le=365)
    sagemaker_runtime_url: str | None = None


class DriftSettings(_Settings):
    """The drift worker: where capture, baselines and reports live; the smallest window judged."""

    artifact_bucket: str
    drift_min_samples: int = Field(default=200, ge=1)


class DriftSchedulerSettings(_Settings):
    """The drift scheduler: where capture lives, the job queue, the window each run covers."""

    artifact_bucket: str
    drift_queue_name: str
    drift_window_minutes: int = Field(default=60, ge=5, le=7 * 24 * 60)


class PublisherSettings(_Settings):
    """The outbox publisher: the platform's EventBridge bus."""

    event_bus_name: str


class CostSettings(_Settings):
    """`tenantml cost` (tenantml.monitoring.cost): the price table and where the inference function's cost
    records are. No function reads these; the CDK app bakes the defaults, for its `architecture`, into the
    saved Logs Insights query.

    Defaults: AWS Lambda list prices for US East (N. Virginia), https://aws.amazon.com/lambda/pricing/
    (checked 2026-11-30; unchanged since Arm pricing, 2021): duration in the first monthly tier (x86_64: the
    first 6 billion GB-seconds, arm64: the first 7.5 billion), requests $0.20 per million on both. The free
    tier, later tiers and Savings Plans are not applied: set the prices you pay to override.
    `cost_log_group`: the inference function's log group (the stack output InferenceLogGroupName); unset,
    `tenantml cost` reads the running local platform's."""

    cost_architecture: str = Field(default="x86_64", pattern=r"^(x86_64|arm64)$")
    cost_gb_second_usd_x86_64: float = Field(default=0.0000166667, ge=0)
    cost_gb_second_usd_arm64: float = Field(default=0.0000133334, ge=0)
    cost_request_usd: float = Field(default=0.0000002, ge=0)
    cost_log_group: str | None = None
    # The GPU endpoint (tenantml.monitoring.cost.gpu_summary): its instance price (default: ml.g5.xlarge
    # on-demand hosting, about 1.41 USD/h in us-east-1 in late 2025: set what you pay), gpu_result's log
    # group (stack output GpuResultLogGroupName) and the endpoint's (/aws/sagemaker/Endpoints/<name>).
    cost_gpu_instance_usd_per_hour: float = Field(default=1.41, ge=0)
    cost_gpu_result_log_group: str | None = None
    cost_gpu_endpoint_log_group: str | None = None


_cache: dict[tuple[type, tuple[tuple[str, str], ...]], Any] = {}
_cache_lock = threading.Lock()
_REGION_VARIABLES = ("AWS_REGION", "AWS_DEFAULT_REGION")


def get_settings(cls: type[T]) -> T:
    """`cls` parsed from the current function's variables, once per distinct set of values."""
    env = current_environ()
    key = (cls, tuple(sorted((k, v) for k, v in env.items()
                             if k.startswith(PREFIX) or k in _REGION_VARIABLES)))
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    parsed = cls.from_env()  # type: ignore[attr-defined]
    with _cache_lock:
        return _cache.setdefault(key, parsed)


def get_observability_settings() -> ObservabilitySettings:
    return get_settings(ObservabilitySettings)


def get_aws_settings() -> AwsSettings:
    return get_settings(AwsSettings)


def get_tenancy_settings() -> TenancySettings:
    return get_settings(TenancySettings)


def get_throttle_settings() -> ThrottleSettings:
    return get_settings(ThrottleSettings)


def get_auth_settings() -> AuthSettings:
    return get_settings(AuthSettings)


def get_registry_settings() -> RegistrySettings:
    return get_settings(RegistrySettings)


def get_serving_settings() -> ServingSettings:
    return get_settings(ServingSettings)


def get_idempotency_settings() -> IdempotencySettings:
    return get_settings(IdempotencySettings)


def get_async_settings() -> AsyncSettings:
    return get_settings(AsyncSettings)


def get_drift_settings() -> DriftSettings:
    return get_settings(DriftSettings)


def get_drift_scheduler_settings() -> DriftSchedulerSettings:
    return get_settings(DriftSchedulerSettings)


def get_signal_settings() -> SignalSettings:
    return get_settings(SignalSettings)


def get_publisher_settings() -> PublisherSettings:
    return get_settings(PublisherSettings)


def get_cost_settings() -> CostSettings:
    return get_settings(CostSettings)


def reset_settings() -> None:
    with _cache_lock:
        _cache.clear()


def environment(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of the process environment with `overrides` applied (for child processes)."""
    return {**os.environ, **(overrides or {})}


class EnvPatch:
    """Set (and remove) process environment variables, and put everything back on `restore()`; the
    settings caches are reset both ways. Local mode and the benchmark use it to give in-process functions
    the environment Lambda would (they read it through this module, exactly as on Lambda)."""

    def __init__(self, values: Mapping[str, str], remove: Iterable[str] = (),
                 remove_prefix: str | None = None) -> None:
        self.values = dict(values)
        self.remove = tuple(remove)
        self.remove_prefix = remove_prefix    # also remove every variable starting with this
        self._saved: dict[str, str | None] | None = None

    def apply(self) -> EnvPatch:
        if self._saved is None:
            if self.remove_prefix:
                self.remove += tuple(k for k in os.environ if k.startswith(self.remove_prefix))
            self._saved = {k: os.environ.get(k) for k in (*self.values, *self.remove)}
            for k in self.remove:
                os.environ.pop(k, None)
            os.environ.update(self.values)
            reset_settings()
        return self

    def restore(self) -> None:
        saved, self._saved = self._saved, None
        if saved is None:
            return
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        reset_settings()

    def __enter__(self) -> EnvPatch:
        return self.apply()

    def __exit__(self, *exc: object) -> None:
        self.restore()
