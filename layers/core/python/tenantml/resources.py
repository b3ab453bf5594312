"""One definition of the platform's resources, used by the CDK app AND by local mode.

Table keys, bucket settings, function names, routes and the environment each function receives are
declared here once, so the stack and the local emulator cannot drift apart. Pure data: no boto3, no CDK.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

AttrType = Literal["S", "N", "B"]


@dataclass(frozen=True)
class KeyAttr:
    name: str
    type: AttrType = "S"


@dataclass(frozen=True)
class TableDef:
    id: str                      # logical id stem (CDK) and local name suffix
    partition_key: KeyAttr
    sort_key: KeyAttr | None = None
    ttl_attribute: str | None = None
    point_in_time_recovery: bool = True
    purpose: str = ""

    def local_name(self, prefix: str) -> str:
        return f"{prefix}-{self.id}"


@dataclass(frozen=True)
class BucketDef:
    id: str
    versioned: bool = True
    purpose: str = ""

    def local_name(self, prefix: str) -> str:
        return f"{prefix}-{self.id}"


# Registry: models, versions, aliases, rollout state and the append-only audit log (single table).
#   pk = "T#<tenant>"           sk = "M#<model>"                 model item (aliases, task, backend)
#   pk = "T#<tenant>"           sk = "M#<model>#V#<version>"     version item (manifest, status)
#   pk = "T#<tenant>#AUDIT"     sk = "<iso8601>#<uuid>"          audit record (append-only)
REGISTRY_TABLE = TableDef(
    id="registry",
    partition_key=KeyAttr("pk"),
    sort_key=KeyAttr("sk"),
    purpose="model registry and audit log",
)

# Powertools idempotency records (Idempotency-Key on async submits, rollout transitions).
IDEMPOTENCY_TABLE = TableDef(
    id="idempotency",
    partition_key=KeyAttr("id"),
    ttl_attribute="expiration",
    point_in_time_recovery=False,
    purpose="Powertools idempotency records (short-lived)",
)

TABLES: tuple[TableDef, ...] = (REGISTRY_TABLE, IDEMPOTENCY_TABLE)

# Model artifacts: models/<tenant>/<model>/<version>/{model.onnx,tokenizer.json,manifest.json,baseline.json}
ARTIFACT_BUCKET = BucketDef(id="artifacts", versioned=True, purpose="model artifacts and reports")
BUCKETS: tuple[BucketDef, ...] = (ARTIFACT_BUCKET,)

ARTIFACT_PREFIX = "models"


def artifact_prefix(tenant: str, model: str, version: str) -> str:
    return f"{ARTIFACT_PREFIX}/{tenant}/{model}/{version}/"


# Functions and the settings each one receives (env var -> what it holds). The CDK app fills the values
# from resources; local mode from its own names.
FunctionName = Literal["authorizer", "inference", "registry"]


@dataclass(frozen=True)
class FunctionDef:
    name: FunctionName
    purpose: str
    memory_mb: int = 1024
    timeout_s: int = 29
    env: tuple[str, ...] = ()   # TENANTML_* variables the function needs (see tenantml.settings)


FUNCTIONS: tuple[FunctionDef, ...] = (
    FunctionDef("authorizer", "verify JWTs and bind the request to a tenant", memory_mb=256, timeout_s=5,
                env=("TENANTML_JWKS_URL", "TENANTML_ISSUER", "TENANTML_AUDIENCE", "TENANTML_TENANT_CLAIM")),
    FunctionDef("inference", "Open Inference Protocol v2 over REST, CPU ONNX models", memory_mb=2048,
                env=("TENANTML_ARTIFACT_BUCKET", "TENANTML_REGISTRY_TABLE")),
    FunctionDef("registry", "register versions, aliases, audit log (admin scope)", memory_mb=512,
                env=("TENANTML_ARTIFACT_BUCKET", "TENANTML_REGISTRY_TABLE")),
)

# HTTP routes (API Gateway REST API). `auth=False` routes skip the authorizer.
# `scope` is enforced by the function itself (the authorizer's policy covers the whole stage).


@dataclass(frozen=True)
class Route:
    method: str
    path: str                     # API Gateway resource path, with {param} placeholders
    function: FunctionName
    auth: bool = True
    scope: str | None = None


WRITE_SCOPE = "models:write"

ROUTES: tuple[Route, ...] = (
    Route("GET", "/v2/health/live", "inference", auth=False),
    Route("GET", "/v2/health/ready", "inference", auth=False),
    Route("GET", "/v2", "inference"),
    Route("GET", "/v2/models", "inference"),
    Route("GET", "/v2/models/{model}", "inference"),
    Route("GET", "/v2/models/{model}/ready", "inference"),
    Route("POST", "/v2/models/{model}/infer", "inference"),
    Route("GET", "/v2/models/{model}/versions/{version}", "inference"),
    Route("GET", "/v2/models/{model}/versions/{version}/ready", "inference"),
    Route("POST", "/v2/models/{model}/versions/{version}/infer", "inference"),
    Route("GET", "/admin/models", "registry", scope=WRITE_SCOPE),
    Route("GET", "/admin/models/{model}/versions", "registry", scope=WRITE_SCOPE),
    Route("POST", "/admin/models/{model}/versions", "registry", scope=WRITE_SCOPE),
    Route("PUT", "/admin/models/{model}/aliases/{alias}", "registry", scope=WRITE_SCOPE),
    Route("GET", "/admin/audit", "registry", scope=WRITE_SCOPE),
)

LOCAL_PREFIX = "tenantml-local"
DEFAULT_STAGE = "v1"

# The platform's EventBridge bus (rollout and drift events, source "tenantml"); created by the stateful stack.
EVENT_BUS_NAME = "tenantml"
EVENT_SOURCE = "tenantml"


@dataclass(frozen=True)
class LocalNames:
    """Resource names used by local mode and the tests."""

    prefix: str = LOCAL_PREFIX
    tables: dict[str, str] = field(default_factory=dict)
    buckets: dict[str, str] = field(default_factory=dict)

    @classmethod
    def make(cls, prefix: str = LOCAL_PREFIX) -> LocalNames:
        return cls(prefix=prefix,
                   tables={t.id: t.local_name(prefix) for t in TABLES},
                   buckets={b.id: b.local_name(prefix) for b in BUCKETS})
