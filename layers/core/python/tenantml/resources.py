"""One definition of the platform's resources, used by the CDK app AND by local mode.

Table keys, bucket settings, queues, functions with their triggers (routes, SQS, schedules, rules,
streams), the events the platform publishes and the environment each function receives are declared here
once, so the stack and local mode cannot drift apart. Pure data: no boto3, no CDK.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel

from tenantml import events
from tenantml.settings import (
    AsyncSettings,
    AuthSettings,
    AwsSettings,
    DriftSchedulerSettings,
    DriftSettings,
    IdempotencySettings,
    ObservabilitySettings,
    PublisherSettings,
    RegistrySettings,
    ServingSettings,
    SignalSettings,
    TenancySettings,
    ThrottleSettings,
    variable,
)

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
    stream: Literal["NEW_IMAGE"] | None = None   # a DynamoDB stream (the registry's outbox)
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
    stream="NEW_IMAGE",
    purpose="model registry and audit log (its stream feeds the event bus)",
)

# Powertools idempotency records (Idempotency-Key on async submits, rollout transitions).
IDEMPOTENCY_TABLE = TableDef(
    id="idempotency",
    partition_key=KeyAttr("id"),
    ttl_attribute="expiration",
    point_in_time_recovery=False,
    purpose="Powertools idempotency records (short-lived)",
)

# Per-version rollout signals (tenantml.rollout.signals), keyed by the opaque rollout id, never the tenant:
#   pk = "R#<rollout id>#V#<version>"   sk = "<YYYY-MM-DDTHH:MM>"   counters, latency buckets, TTL
SIGNALS_TABLE = TableDef(
    id="signals",
    partition_key=KeyAttr("pk"),
    sort_key=KeyAttr("sk"),
    ttl_attribute="expires_at",
    point_in_time_recovery=False,
    purpose="per-version rollout signals (requests, errors, latency, accuracy), 14-day TTL",
)

# Async (GPU) requests (tenantml.gpu.requests), under their tenant's partition:
#   pk = "T#<tenant>"   sk = "R#<request id>"   status, model, version, reason; TTL (async_retention_days)
REQUESTS_TABLE = TableDef(
    id="requests",
    partition_key=KeyAttr("pk"),
    sort_key=KeyAttr("sk"),
    ttl_attribute="expires_at",
    point_in_time_recovery=False,
    purpose="async (GPU) requests: status, failure reason; answers live in S3 (short-lived, TTL)",
)

# Per-tenant request rate limits (tenantml.serving.throttle), one item per tenant and second:
#   pk = "T#<tenant>#<epoch second>"   used (tokens leased by the execution environments), TTL 5 minutes
THROTTLE_TABLE = TableDef(
    id="throttle",
    partition_key=KeyAttr("pk"),
    ttl_attribute="expires_at",
    point_in_time_recovery=False,
    purpose="per-tenant request rate limit windows (one second each), short-lived",
)

TABLES: tuple[TableDef, ...] = (REGISTRY_TABLE, IDEMPOTENCY_TABLE, SIGNALS_TABLE, REQUESTS_TABLE,
                                THROTTLE_TABLE)

# Model artifacts: models/<tenant>/<model>/<version>/{model.onnx,tokenizer.json,manifest.json,baseline.json}
ARTIFACT_BUCKET = BucketDef(id="artifacts", versioned=True, purpose="model artifacts and reports")
BUCKETS: tuple[BucketDef, ...] = (ARTIFACT_BUCKET,)

ARTIFACT_PREFIX = "models"


def artifact_prefix(tenant: str, model: str, version: str) -> str:
    return f"{ARTIFACT_PREFIX}/{tenant}/{model}/{version}/"


# --- triggers -------------------------------------------------------------------------------------
# Every way a function is invoked, declared once as data: the CDK app (tenantml_cdk.constructs.triggers)
# and local mode (tenantml.local.events) are both driven by these declarations.

VISIBILITY_FACTOR = 6          # SQS visibility timeout >= 6 x the consumer's timeout (AWS's guidance)
MIN_RECEIVE_COUNT = 5          # a message is tried at least this often before it goes to its DLQ
ASYNC_RETRY_ATTEMPTS = 2       # Lambda's retries of a failed asynchronous (rule, schedule) invocation


@dataclass(frozen=True)
class QueueDef:
    """An SQS queue a function consumes, with its dead-letter queue."""

    id: str
    purpose: str
    max_receive_count: int = MIN_RECEIVE_COUNT
    setting: str | None = None      # the settings field producers read the queue's name from

    def __post_init__(self) -> None:
        if self.max_receive_count < MIN_RECEIVE_COUNT:
            raise ValueError(f"queue {self.id}: max_receive_count must be >= {MIN_RECEIVE_COUNT}")

    def local_name(self, prefix: str) -> str:
        return f"{prefix}-{self.id}"

    def dlq_local_name(self, prefix: str) -> str:
        return f"{prefix}-{self.id}-dlq"


@dataclass(frozen=True)
class SqsTrigger:
    """Lambda's SQS event source mapping. ReportBatchItemFailures is always on: a failed message is
    retried on its own, never with the good messages of its batch."""

    queue: str                       # QueueDef.id
    batch_size: int = 10
    batching_window_s: int = 0
    kind: ClassVar[str] = "sqs"

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= 10_000 or not 0 <= self.batching_window_s <= 300:
            raise ValueError(f"sqs trigger on {self.queue}: batch size 1..10000, window 0..300 s")
        if self.batch_size > 10 and self.batching_window_s < 1:
            raise ValueError(f"sqs trigger on {self.queue}: a batch over 10 needs a batching window")


_RATE_RE = re.compile(r"^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$")
_RATE_UNITS = {"minute": 60, "hour": 3600, "day": 86400}


@dataclass(frozen=True)
class ScheduleTrigger:
    """An EventBridge Scheduler schedule (the successor of scheduled rules). The function receives the
    envelope Scheduler is told to send (`schedule_event`): detail-type "Scheduled Event", source
    aws.scheduler, `time` the scheduled time, `resources` the schedule ARN and `detail` the string "{}"."""

    id: str
    expression: str                  # rate(N minutes|hours|days)
    description: str = ""
    local_expression: str | None = None   # local mode's rate, when the deployed one is too slow to watch
    kind: ClassVar[str] = "schedule"

    def __post_init__(self) -> None:
        for expression in (self.expression, self.local_expression or self.expression):
            match = _RATE_RE.match(expression)
            if not match or int(match.group(1)) < 1 or \
                    (int(match.group(1)) == 1) != (not match.group(2).endswith("s")):
                raise ValueError(f"schedule {self.id}: expression must be rate(N unit[s]), "
                                 f"got {expression!r}")

    @property
    def period_s(self) -> int:
        return _period(self.expression)

    @property
    def local_period_s(self) -> int:
        return _period(self.local_expression or self.expression)


def _period(expression: str) -> int:
    match = _RATE_RE.match(expression)
    assert match is not None
    return int(match.group(1)) * _RATE_UNITS[match.group(2).rstrip("s")]


@dataclass(frozen=True)
class RuleTrigger:
    """An EventBridge rule: an event pattern on the platform bus (the platform's own events) or on the
    default bus (AWS service events such as "CloudWatch Alarm State Change"). Failed invocations are
    retried ASYNC_RETRY_ATTEMPTS times, then land in the function's failure queue."""

    id: str
    pattern: Mapping[str, Any]
    bus: Literal["platform", "default"] = "platform"
    kind: ClassVar[str] = "rule"

    def __post_init__(self) -> None:
        if not self.pattern or not set(self.pattern) & {"source", "detail-type"}:
            raise ValueError(f"rule {self.id}: the pattern must name a source or a detail-type")

    def pattern_json(self) -> str:
        return json.dumps(self.pattern, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class StreamTrigger:
    """A DynamoDB stream event source mapping (from the oldest record, batch item failures, bisect on
    error, failed batches to the function's failure queue after the records expire: see STREAM_*). The
    filter uses Lambda's filter-criteria syntax (EventBridge patterns over the stream record)."""

    table: str                       # TableDef.id (the table must declare a stream)
    filter: Mapping[str, Any]
    batch_size: int = 25
    kind: ClassVar[str] = "stream"


Trigger = SqsTrigger | ScheduleTrigger | RuleTrigger | StreamTrigger
ASYNC_KINDS = frozenset({"schedule", "rule", "stream"})   # these get a failure queue


# --- functions ----------------------------------------------------------------------------------------
# Each function's environment is derived from the settings models it parses (`settings`): every
# variable they read is declared, the required ones must be given. `function_environment` computes it,
# for the CDK app and for local mode alike.

FunctionName = Literal["authorizer", "inference", "registry", "publisher", "drift_scheduler",
                       "drift_worker", "rollback", "gpu_dispatch", "gpu_result"]
API_TIMEOUT_S = 29      # API Gateway's integration timeout: an HTTP function never needs longer


@dataclass(frozen=True)
class FunctionDef:
    name: FunctionName
    purpose: str
    settings: tuple[type[BaseModel], ...] = ()
    memory_mb: int = 1024
    timeout_s: int = 60
    triggers: tuple[Trigger, ...] = ()

    @property
    def variables(self) -> dict[str, bool]:
        """Every variable the function's settings read -> required."""
        out: dict[str, bool] = {}
        for model in self.settings:
            for key, required in model.variables().items():  # type: ignore[attr-defined]
                out[key] = out.get(key, False) or required
        return out

    def triggers_of(self, kind: str) -> tuple[Any, ...]:
        return tuple(t for t in self.triggers if t.kind == kind)

    @property
    def failure_queue(self) -> str | None:
        """Id of the queue that receives this function's failed asynchronous work, if it has any."""
        return f"{self.name}-failures" if any(t.kind in ASYNC_KINDS for t in self.triggers) else None


# Audit records are the registry's outbox: each committed change writes one in the same transaction.
AUDIT_RECORDS = {"eventName": ["INSERT"], "dynamodb": {"NewImage": {"kind": {"S": ["audit"]}}}}

# CloudWatch alarms the rollback function creates for a rollout's candidate (tenantml.rollout.alarms).
ROLLOUT_ALARM_PREFIX = "tenantml-rollout-"
ROLLOUT_ALARMS = {"source": ["aws.cloudwatch"], "detail-type": ["CloudWatch Alarm State Change"],
                  "detail": {"alarmName": [{"prefix": ROLLOUT_ALARM_PREFIX}]}}

FUNCTIONS: tuple[FunctionDef, ...] = (
    FunctionDef("authorizer", "verify JWTs and bind the request to a tenant", (AuthSettings,),
                memory_mb=256, timeout_s=5),
    FunctionDef("inference", "Open Inference Protocol v2 over REST, CPU ONNX models; async submit and "
                "poll for GPU models",
                (ServingSettings, SignalSettings, AsyncSettings, IdempotencySettings, TenancySettings,
                 ThrottleSettings, AwsSettings, ObservabilitySettings), memory_mb=2048,
                timeout_s=API_TIMEOUT_S),
    FunctionDef("registry", "register versions, aliases, rollouts, audit log (admin scope)",
                (RegistrySettings, SignalSettings, AwsSettings), memory_mb=512, timeout_s=API_TIMEOUT_S),
    FunctionDef("publisher", "publish each committed registry change (audit record) on the event bus",
                (PublisherSettings, AwsSettings), memory_mb=256, timeout_s=60,
                triggers=(StreamTrigger(table="registry", filter=AUDIT_RECORDS),)),
    FunctionDef("drift_scheduler", "enumerate the (tenant, model, version) targets with captured traffic in "
                "the last window; one drift job each",
                (DriftSchedulerSettings, IdempotencySettings, AwsSettings),
                memory_mb=256, timeout_s=120,
                triggers=(ScheduleTrigger("drift", "rate(1 hour)", "hourly drift checks",
                                          local_expression="rate(5 minutes)"),)),
    FunctionDef("drift_worker", "stream a window's capture against the version's baseline; JSON + HTML "
                "report, metrics, DriftDetected",
                (DriftSettings, RegistrySettings, PublisherSettings, SignalSettings, TenancySettings,
                 AwsSettings),
                memory_mb=1024, timeout_s=300, triggers=(SqsTrigger("drift-jobs", batch_size=5),)),
    FunctionDef("rollback", "advance canary stages or roll back to the last-known-good version; manage "
                "the candidate's alarms", (RegistrySettings, SignalSettings, AwsSettings),
                memory_mb=512, timeout_s=60,
                triggers=(ScheduleTrigger("rollout", "rate(1 minute)", "advance or roll back live rollouts"),
                          RuleTrigger("alarm", ROLLOUT_ALARMS, bus="default"),
                          RuleTrigger("drift-detected", {"source": ["tenantml"],
                                                         "detail-type": ["DriftDetected"]}),
                          RuleTrigger("rollout-changed", {"source": ["tenantml"], "detail-type": [
                              "RolloutStarted", "RolloutCompleted", "RolloutRolledBack"]}))),
    FunctionDef("gpu_dispatch", "send queued GPU requests to the SageMaker async endpoint (S3 input); "
                "transient faults re-queued with backoff",
                (AsyncSettings, RegistrySettings, TenancySettings, AwsSettings),
                memory_mb=256, timeout_s=30, triggers=(SqsTrigger("gpu-requests", batch_size=10),)),
    FunctionDef("gpu_result", "record each SageMaker async success or error notification once",
                (AsyncSettings, RegistrySettings, AwsSettings), memory_mb=256, timeout_s=30,
                triggers=(SqsTrigger("gpu-results", batch_size=10),)),
)

QUEUES: tuple[QueueDef, ...] = (
    QueueDef("drift-jobs", "one drift check per (tenant, model, version) and window",
             setting="drift_queue_name"),
    QueueDef("gpu-requests", "one async (GPU) request to send to the SageMaker endpoint",
             setting="gpu_queue_name"),
    QueueDef("gpu-results", "SageMaker's success and error notifications (SNS topics subscribed)"),
)

# Deployment differences, the only ones: on AWS the authorizer fetches the JWKS from a URL and Lambda
# sets AWS_REGION; locally the JWKS is inline (the dev keys) and every SDK call goes to the emulator.
AWS_ONLY_VARIABLES = frozenset({"TENANTML_JWKS_URL"})
LOCAL_ONLY_VARIABLES = frozenset({"TENANTML_JWKS_JSON", "TENANTML_ENDPOINT_URL", "TENANTML_REGION",
                                  "TENANTML_SAGEMAKER_RUNTIME_URL"})
POWERTOOLS_SERVICE = "tenantml"


class EnvironmentContractError(ValueError):
    """A function's environment cannot be built: a required variable is missing or a value is invalid."""


def function_environment(fn: FunctionDef, values: Mapping[str, str]) -> dict[str, str]:
    """The variables `fn` receives, from `values` (every TENANTML_* value a deployment provides): exactly
    those its settings read, the required ones present, and each settings model parses them. Also the
    Powertools service/namespace, the same for every function."""
    declared = fn.variables
    env = {k: str(v) for k, v in values.items() if k in declared}
    missing = sorted(k for k, required in declared.items() if required and not env.get(k))
    if missing:
        raise EnvironmentContractError(f"function {fn.name} needs {', '.join(missing)}, "
                                       "which is not provided")
    for model in fn.settings:
        try:
            model.from_env(env)  # type: ignore[attr-defined]
        except ValueError as exc:
            raise EnvironmentContractError(f"function {fn.name}: {model.__name__}: {exc}") from None
    env["POWERTOOLS_SERVICE_NAME"] = POWERTOOLS_SERVICE
    env["POWERTOOLS_METRICS_NAMESPACE"] = POWERTOOLS_SERVICE
    return env


def function(name: str) -> FunctionDef:
    for fn in FUNCTIONS:
        if fn.name == name:
            return fn
    raise KeyError(f"no function {name!r}")


def failure_queues(functions: Sequence[FunctionDef] = FUNCTIONS) -> tuple[QueueDef, ...]:
    """The failure queue of every function with asynchronous triggers (rule, schedule, stream)."""
    return tuple(QueueDef(fn.failure_queue, f"failed asynchronous work of {fn.name}")
                 for fn in functions if fn.failure_queue)


def validate(functions: Sequence[FunctionDef] = FUNCTIONS, queues: Sequence[QueueDef] = QUEUES,
             tables: Sequence[TableDef] | None = None) -> None:
    """Cross-checks of the declarations (run at import and by the CDK app for test declarations)."""
    tables = TABLES if tables is None else tables
    queue_ids = {q.id for q in queues}
    consumers: dict[str, str] = {}
    for fn in functions:
        routes = [r for r in ROUTES if r.function == fn.name]
        if routes and fn.timeout_s > API_TIMEOUT_S:
            raise ValueError(f"{fn.name} serves HTTP routes: timeout must be <= {API_TIMEOUT_S} s")
        for t in fn.triggers_of("sqs"):
            if t.queue not in queue_ids:
                raise ValueError(f"{fn.name}: sqs trigger on undeclared queue {t.queue}")
            if t.queue in consumers:
                raise ValueError(f"queue {t.queue} has two consumers: {consumers[t.queue]}, {fn.name}")
            consumers[t.queue] = fn.name
        for t in fn.triggers_of("stream"):
            table = next((d for d in tables if d.id == t.table), None)
            if table is None or table.stream is None:
                raise ValueError(f"{fn.name}: stream trigger on {t.table}, which declares no stream")


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
READ_SCOPE = "models:read"             # call models: list, metadata, readiness, inference
FEEDBACK_SCOPE = "models:feedback"     # ground truth for the caller's own earlier predictions

ROUTES: tuple[Route, ...] = (
    Route("GET", "/v2/health/live", "inference", auth=False),
    Route("GET", "/v2/health/ready", "inference", auth=False),
    Route("GET", "/v2", "inference", scope=READ_SCOPE),
    Route("GET", "/v2/models", "inference", scope=READ_SCOPE),
    Route("GET", "/v2/models/{model}", "inference", scope=READ_SCOPE),
    Route("GET", "/v2/models/{model}/ready", "inference", scope=READ_SCOPE),
    Route("POST", "/v2/models/{model}/infer", "inference", scope=READ_SCOPE),
    Route("GET", "/v2/models/{model}/versions/{version}", "inference", scope=READ_SCOPE),
    Route("GET", "/v2/models/{model}/versions/{version}/ready", "inference", scope=READ_SCOPE),
    Route("POST", "/v2/models/{model}/versions/{version}/infer", "inference", scope=READ_SCOPE),
    Route("POST", "/v2/models/{model}/feedback", "inference", scope=FEEDBACK_SCOPE),
    Route("GET", "/v2/requests/{id}", "inference", scope=READ_SCOPE),
    Route("GET", "/admin/models", "registry", scope=WRITE_SCOPE),
    Route("GET", "/admin/models/{model}/versions", "registry", scope=WRITE_SCOPE),
    Route("POST", "/admin/models/{model}/versions", "registry", scope=WRITE_SCOPE),
    Route("PUT", "/admin/models/{model}/aliases/{alias}", "registry", scope=WRITE_SCOPE),
    Route("GET", "/admin/audit", "registry", scope=WRITE_SCOPE),
    Route("GET", "/admin/models/{model}/drift", "registry", scope=WRITE_SCOPE),
    Route("POST", "/admin/models/{model}/rollout", "registry", scope=WRITE_SCOPE),
    Route("GET", "/admin/models/{model}/rollout", "registry", scope=WRITE_SCOPE),
    Route("POST", "/admin/models/{model}/rollout/{action}", "registry", scope=WRITE_SCOPE),
)

LOCAL_PREFIX = "tenantml-local"
DEFAULT_STAGE = "v1"

# The platform's EventBridge bus (rollout and drift events, source "tenantml"); created by the stateful stack.
EVENT_BUS_NAME = "tenantml"
EVENT_SOURCE = events.SOURCE


@dataclass(frozen=True)
class EventDef:
    """An event the platform publishes (source `tenantml`, on the platform bus)."""

    detail_type: str
    detail: type[events.EventDetail]
    publisher: FunctionName
    purpose: str


EVENTS: tuple[EventDef, ...] = (
    EventDef("ModelVersionRegistered", events.ModelVersionRegistered, "publisher",
             "a model version was registered"),
    EventDef("AliasChanged", events.AliasChanged, "publisher", "an alias was pointed at another version"),
    EventDef("DriftDetected", events.DriftDetected, "drift_worker",
             "a drift check found data, prediction or accuracy drift"),
    EventDef("RolloutStarted", events.RolloutStarted, "publisher", "a rollout started"),
    EventDef("RolloutAdvanced", events.RolloutAdvanced, "publisher",
             "a canary moved to its next stage, or a frozen rollout resumed"),
    EventDef("RolloutCompleted", events.RolloutCompleted, "publisher",
             "the candidate serves everyone (completed or promoted)"),
    EventDef("RolloutRolledBack", events.RolloutRolledBack, "publisher",
             "back to the stable version (guardrail, alarm, drift or abort)"),
    EventDef("RolloutFrozen", events.RolloutFrozen, "publisher", "a rollout holds its stage"),
)

validate()


LOCAL_ACCOUNT_ID = "123456789012"     # moto's default account


@dataclass(frozen=True)
class LocalNames:
    """Resource names used by local mode and the tests."""

    prefix: str = LOCAL_PREFIX
    tables: dict[str, str] = field(default_factory=dict)
    buckets: dict[str, str] = field(default_factory=dict)
    event_bus: str = EVENT_BUS_NAME

    @classmethod
    def make(cls, prefix: str = LOCAL_PREFIX) -> LocalNames:
        return cls(prefix=prefix,
                   tables={t.id: t.local_name(prefix) for t in TABLES},
                   buckets={b.id: b.local_name(prefix) for b in BUCKETS},
                   event_bus=f"{prefix}-{EVENT_BUS_NAME}")

    def function_name(self, function: str) -> str:
        return f"{self.prefix}-{function}"

    def tenant_role_arn(self, function: str) -> str:
        """The function's tenant data role (tenantml.tenancy) in the emulator's account."""
        return f"arn:aws:iam::{LOCAL_ACCOUNT_ID}:role/{self.prefix}-{function}-tenant-data"

    def log_group(self, function: str) -> str:
        """The function's CloudWatch Logs group, named as Lambda names it (local mode ships logs there)."""
        return f"/aws/lambda/{self.function_name(function)}"

    def platform_values(self) -> dict[str, str]:
        """The TENANTML_* values of these resources (what a deployment provides to its functions)."""
        return {
            "TENANTML_ARTIFACT_BUCKET": self.buckets[ARTIFACT_BUCKET.id],
            "TENANTML_REGISTRY_TABLE": self.tables[REGISTRY_TABLE.id],
            "TENANTML_EVENT_BUS_NAME": self.event_bus,
            "TENANTML_IDEMPOTENCY_TABLE": self.tables[IDEMPOTENCY_TABLE.id],
            "TENANTML_SIGNALS_TABLE": self.tables[SIGNALS_TABLE.id],
            "TENANTML_REQUESTS_TABLE": self.tables[REQUESTS_TABLE.id],
            "TENANTML_THROTTLE_TABLE": self.tables[THROTTLE_TABLE.id],
            **{variable(q.setting): q.local_name(self.prefix) for q in QUEUES if q.setting},
        }
