"""Deployment configuration: CDK context -> one validated, frozen model.

Every value comes from CDK context (`cdk.json` "context", or `-c key=value` on the command line, which
wins). `load_config` validates once; a missing or invalid value fails synth with an error that names the
context key and shows how to pass it. Function sizing keys are derived from `tenantml.resources.FUNCTIONS`
(`<function>_memory_mb`, `<function>_timeout_seconds`), so a new function gets its keys for free.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from tenantml import resources

# CloudWatch Logs accepts only these retention periods (days).
RETENTION_DAYS: dict[int, str] = {
    1: "ONE_DAY", 3: "THREE_DAYS", 5: "FIVE_DAYS", 7: "ONE_WEEK", 14: "TWO_WEEKS", 30: "ONE_MONTH",
    60: "TWO_MONTHS", 90: "THREE_MONTHS", 120: "FOUR_MONTHS", 150: "FIVE_MONTHS", 180: "SIX_MONTHS",
    365: "ONE_YEAR", 400: "THIRTEEN_MONTHS", 545: "EIGHTEEN_MONTHS", 731: "TWO_YEARS",
    1096: "THREE_YEARS", 1827: "FIVE_YEARS", 2192: "SIX_YEARS", 2557: "SEVEN_YEARS",
    2922: "EIGHT_YEARS", 3288: "NINE_YEARS", 3653: "TEN_YEARS",
}

# Hosts reserved for documentation (RFC 2606 / RFC 6761): fine for synth, never a real identity provider.
_EXAMPLE_HOST = re.compile(r"(^|\.)(example\.(com|net|org)|example|invalid|test|localhost)$")
_PRELOAD_ITEM = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)?$")

# An image in Amazon ECR, pinned by tag or digest: <account>.dkr.ecr.<region>.amazonaws.com[.cn]/<repo>:<tag>
# (repository names as ECR allows them). The GPU endpoint's role may pull from exactly this repository.
ECR_IMAGE_URI = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z]{2}(-[a-z]+)+-\d)\.amazonaws\.com(\.cn)?/"
    r"(?P<repository>(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})|@(?P<digest>sha256:[a-f0-9]{64}))$")
# s3://<bucket>/<key>.tar.gz. The key becomes an IAM resource (the role may read exactly this object), so it
# may not hold IAM wildcards (* ?) or policy variables ($), nor whitespace.
S3_MODEL_DATA_URL = re.compile(
    r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(?P<key>[^*?$\s]+\.tar\.gz)$")


class ConfigError(ValueError):
    """Invalid deployment configuration; the message names the CDK context keys to fix."""


class FunctionSizing(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    memory_mb: int = Field(ge=128, le=10240)
    timeout_seconds: int = Field(ge=1, le=900)


class AppConfig(BaseModel):
    """What the CDK app needs to know; field names are the CDK context keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stage: str = Field(default=resources.DEFAULT_STAGE, pattern=r"^[A-Za-z0-9_]{1,64}$",
                       description="API Gateway stage name (also part of the API and dashboard names)")
    jwks_url: str = Field(description="https URL of the identity provider's JSON Web Key Set")
    issuer: str = Field(min_length=1, description="expected `iss` claim")
    audience: str = Field(min_length=1, description="expected `aud` claim")
    tenant_claim: str = Field(default="tenant_id", min_length=1, pattern=r"^[A-Za-z0-9_:./-]+$",
                              description="the JWT claim that carries the tenant id")
    architecture: Literal["x86_64", "arm64"] = "x86_64"
    functions: dict[str, FunctionSizing]
    authorizer_cache_ttl_seconds: int = Field(default=300, ge=0, le=3600)
    throttling_rate_limit: float = Field(default=100.0, gt=0, le=10_000)
    throttling_burst_limit: int = Field(default=200, ge=1, le=5_000)
    # Per tenant, across all environments (tenantml.serving.throttle): half the stage's rate by default, so
    # one tenant cannot take all of it. 0 turns it off.
    tenant_rate_limit: int = Field(default=50, ge=0, le=100_000,
                                   description="inference requests per second per tenant (0: no limit)")
    snapstart: bool = False
    api: Literal["rest", "http"] = Field(default="rest", description="the API Gateway flavour: a REST API or "
                                                                     "an HTTP API (payload format 2.0)")
    sdk_tracing: bool = Field(default=False, description="X-Ray subsegments through the Powertools Tracer "
                                                         "(TENANTML_TRACING); costs ~0.3-0.5 s of cold start")
    preload_models: str = Field(default="", description="comma-separated tenant/model[/version] "
                                                        "loaded at init (cold start, SnapStart)")
    log_retention_days: int = 30
    sam_local: bool = Field(default=False, description="declare empty, overridable TENANTML_ENDPOINT_URL / "
                                                       "TENANTML_JWKS_JSON so `sam local invoke --env-vars` "
                                                       "can point functions at local mode")
    alarm_email: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    account: str | None = Field(default=None, pattern=r"^\d{12}$")
    region: str | None = Field(default=None, pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")
    # --- GPU asynchronous inference endpoint (constructs/gpu_endpoint.py): created only when both the image
    # and the model data are given, so a synth without them deploys nothing billable.
    gpu_image_uri: str | None = Field(default=None, description="ECR image URI (tag or digest) of the GPU "
                                                                "inference container")
    gpu_model_data_url: str | None = Field(default=None, description="s3://bucket/key.tar.gz: the model "
                                                                     "artifact the endpoint loads")
    # ml.g5.xlarge: 1x NVIDIA A10G (24 GB GPU memory), 4 vCPU, 16 GiB, the smallest current-generation GPU
    # instance SageMaker hosts (g4dn's T4 is the previous generation). MPNet (~110M parameters, ~0.44 GB of
    # fp32 weights) with batches of 512-token sequences needs a few GB: ample headroom.
    gpu_instance_type: str = Field(default="ml.g5.xlarge", pattern=r"^ml\.[a-z0-9]+\.[a-z0-9]+$")
    # Upper bounds guard against a typo in a billable value; raise them deliberately.
    gpu_max_instances: int = Field(default=1, ge=1, le=10, description="autoscaling maximum (minimum is 0)")
    # 32: the container's dynamic batcher groups up to 32 rows (gpu_endpoint/batching.py), and it can only
    # group requests SageMaker sends it concurrently; SageMaker's default (4) would cap every batch at 4.
    gpu_max_concurrent_invocations: int = Field(default=32, ge=1, le=1000,
                                                description="MaxConcurrentInvocationsPerInstance")
    # ApproximateBacklogSize counts requests queued AND in flight: one more full batch per instance.
    gpu_backlog_per_instance_target: float = Field(default=32.0, gt=0, le=1000,
                                                   description="target ApproximateBacklogSizePerInstance")

    @field_validator("jwks_url")
    @classmethod
    def _https_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError("must be an https:// URL")
        return value

    @field_validator("log_retention_days")
    @classmethod
    def _retention(cls, value: int) -> int:
        if value not in RETENTION_DAYS:
            raise ValueError(f"must be one of {sorted(RETENTION_DAYS)}")
        return value

    @field_validator("preload_models")
    @classmethod
    def _preload(cls, value: str) -> str:
        items = [item.strip() for item in value.split(",") if item.strip()]
        bad = [item for item in items if not _PRELOAD_ITEM.match(item)]
        if bad:
            raise ValueError(f"items must look like tenant/model or tenant/model/version, got {bad}")
        return ",".join(items)

    @field_validator("functions")
    @classmethod
    def _every_function(cls, value: dict[str, FunctionSizing]) -> dict[str, FunctionSizing]:
        expected = {f.name for f in resources.FUNCTIONS}
        if set(value) != expected:
            raise ValueError(f"sizing must cover exactly {sorted(expected)}")
        return value

    @field_validator("gpu_image_uri")
    @classmethod
    def _ecr_image(cls, value: str | None) -> str | None:
        if value is not None and not ECR_IMAGE_URI.match(value):
            raise ValueError("must be an Amazon ECR image URI pinned by tag or digest: "
                             "<account>.dkr.ecr.<region>.amazonaws.com/<repository>:<tag>")
        return value

    @field_validator("gpu_model_data_url")
    @classmethod
    def _model_data(cls, value: str | None) -> str | None:
        if value is not None and not S3_MODEL_DATA_URL.match(value):
            raise ValueError("must be s3://<bucket>/<key>.tar.gz (no whitespace, *, ? or $ in the key)")
        return value

    @model_validator(mode="after")
    def _gpu_pair(self) -> AppConfig:
        """Both GPU keys or neither: one alone is a mistake, not a request for no endpoint."""
        if (self.gpu_image_uri is None) != (self.gpu_model_data_url is None):
            missing, given = (("gpu_image_uri", "gpu_model_data_url") if self.gpu_image_uri is None
                              else ("gpu_model_data_url", "gpu_image_uri"))
            # Raised as a ValidationError located at the missing key, so load_config names that key.
            raise ValidationError.from_exception_data(type(self).__name__, [InitErrorDetails(
                type=PydanticCustomError("gpu_pair", "is required when {given} is set (the GPU endpoint "
                                                     "needs both)", {"given": given}),
                loc=(missing,), input=None)])
        return self

    @property
    def gpu_enabled(self) -> bool:
        return self.gpu_image_uri is not None and self.gpu_model_data_url is not None

    def sizing(self, function: str) -> FunctionSizing:
        return self.functions[function]

    @property
    def uses_example_identity_provider(self) -> bool:
        host = urlsplit(self.jwks_url).hostname or ""
        return bool(_EXAMPLE_HOST.search(host))


def memory_key(function: str) -> str:
    return f"{function}_memory_mb"


def timeout_key(function: str) -> str:
    return f"{function}_timeout_seconds"


def context_keys() -> list[str]:
    """Every CDK context key the app reads."""
    plain = [name for name in AppConfig.model_fields if name != "functions"]
    sized = [key for f in resources.FUNCTIONS for key in (memory_key(f.name), timeout_key(f.name))]
    return plain + sized


def _context_key(loc: tuple[int | str, ...]) -> str:
    if loc and loc[0] == "functions" and len(loc) >= 3:
        return memory_key(str(loc[1])) if loc[2] == "memory_mb" else timeout_key(str(loc[1]))
    return str(loc[0]) if loc else "(context)"


def _hint(key: str) -> str:
    example = {"jwks_url": "https://YOUR_IDP/.well-known/jwks.json", "issuer": "https://YOUR_IDP/",
               "audience": "YOUR_API_AUDIENCE",
               "gpu_image_uri": "ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPOSITORY:TAG",
               "gpu_model_data_url": "s3://BUCKET/KEY/model.tar.gz"}.get(key, "...")
    return f"pass `-c {key}={example}` or set \"{key}\" in the \"context\" of cdk.json"


def load_config(context: Mapping[str, Any] | Callable[[str], Any]) -> AppConfig:
    """Validate the CDK context. `context` is a mapping or a lookup such as `node.try_get_context`."""
    lookup: Callable[[str], Any] = context.get if isinstance(context, Mapping) else context
    values: dict[str, Any] = {}
    for name in AppConfig.model_fields:
        if name == "functions":
            continue
        value = lookup(name)
        if value is not None and value != "":
            values[name] = value
    values["functions"] = {
        f.name: {"memory_mb": _or(lookup(memory_key(f.name)), f.memory_mb),
                 "timeout_seconds": _or(lookup(timeout_key(f.name)), f.timeout_s)}
        for f in resources.FUNCTIONS
    }
    try:
        return AppConfig.model_validate(values)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = _context_key(tuple(err["loc"]))
            lines.append(f"  - context key '{key}': {err['msg']} ({_hint(key)})")
        raise ConfigError("invalid CDK context for tenantml:\n" + "\n".join(lines)) from None


def _or(value: Any, default: Any) -> Any:
    return default if value is None or value == "" else value
