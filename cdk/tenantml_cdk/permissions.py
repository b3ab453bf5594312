"""The AWS calls each function's code makes, declared once: `CALLS[function] = {(IAM action, resource kind)}`.

constructs/access.py grants each function exactly its row (nothing broader: no CDK `grant_*` bundles), and
tests/infrastructure/test_least_privilege.py compares every function role's Allow actions with its row, both
ways, so a new SDK call without its grant, or a grant no code calls, fails a test. Not in a row: the log
and X-Ray basics every function has (constructs/functions.py) and what a trigger grants by itself
(constructs/triggers.py: an SQS or stream event source reads its queue or stream; an asynchronous
trigger's failure destination sends to the function's failure queue).

IAM actions, not SDK methods: HeadObject is s3:GetObject; ListObjectsV2 is s3:ListBucket (conditioned on
s3:prefix where a prefix is enough); SendMessageBatch is sqs:SendMessage; TransactWriteItems is authorized
per item (PutItem / UpdateItem / DeleteItem / ConditionCheckItem of the items in it).

Resource kinds (access.py turns them into ARNs):
  table:<TableDef.id>      the table (never its indexes or stream)
  objects:<prefix>*        objects under one prefix of the artifact bucket
  listing:<prefix>*        s3:ListBucket on the artifact bucket, only for keys under the prefix (s3:prefix)
  bucket                   the artifact bucket itself, unconditioned
  queue:<QueueDef.id>      a platform queue
  bus:platform             the platform event bus
  alarms:<name prefix>*    CloudWatch alarms of this account and region whose names start with the prefix
  endpoint:gpu             the SageMaker async endpoint (only where the stack deploys one)
  role:tenant-data         the function's own tenant data role (AssumeRole + TagSession)

Tenant-scoped calls (`TENANT_CALLS`): what inference and the drift worker do on behalf of one tenant runs
with their tenant data role's credentials, assumed with the session tag tenant=<tenant>
(tenantml.tenancy). Those calls are declared separately, with `{tenant}` in the kind: IAM fills it in from
the session tag (`${aws:PrincipalTag/tenant}`), so the role reaches only the tenant's prefixes and
partitions, plus the shared ones where a kind names `_shared`. Extra kinds there:
  partition:<TableDef.id>:<key>   items whose partition key is <key> (dynamodb:LeadingKeys), e.g. T#{tenant}
"""

from __future__ import annotations

from collections.abc import Mapping

from tenantml import resources

Call = tuple[str, str]     # (IAM action, resource kind)

REGISTRY = f"table:{resources.REGISTRY_TABLE.id}"
SIGNALS = f"table:{resources.SIGNALS_TABLE.id}"
IDEMPOTENCY = f"table:{resources.IDEMPOTENCY_TABLE.id}"
THROTTLE = f"table:{resources.THROTTLE_TABLE.id}"
REQUESTS = f"table:{resources.REQUESTS_TABLE.id}"
BUCKET = "bucket"
BUS = "bus:platform"
DRIFT_QUEUE = "queue:drift-jobs"
GPU_QUEUE = "queue:gpu-requests"
ROLLOUT_ALARMS = f"alarms:{resources.ROLLOUT_ALARM_PREFIX}*"
GPU_ENDPOINT = "endpoint:gpu"

MODELS = f"{resources.ARTIFACT_PREFIX}/*"    # model artifacts: models/<tenant>/<model>/<version>/<file>
CAPTURE = "capture/*"
REPORTS = "reports/*"
ASYNC_RESULTS = "async/results/*"   # answers copied under their tenant
ASYNC_OUTPUT = "async/output/*"     # what SageMaker writes (S3OutputPath)
ASYNC_FAILURES = "async/failures/*"  # and its failures (S3FailurePath)


TENANT_DATA_ROLE = "role:tenant-data"
TENANT = "{tenant}"                      # the acting tenant: ${aws:PrincipalTag/tenant} in the policy


def partition(table: str, key: str) -> str:
    return f"partition:{table}:{key}"


def objects(prefix: str) -> str:
    return f"objects:{prefix}"


def listing(prefix: str) -> str:
    return f"listing:{prefix}"


# Powertools idempotency (DynamoDBPersistenceLayer): get_record, save_inprogress, update_record and
# delete_record (a failed run releases its record).
_IDEMPOTENCY_RECORDS = frozenset({
    ("dynamodb:GetItem", IDEMPOTENCY), ("dynamodb:PutItem", IDEMPOTENCY),
    ("dynamodb:UpdateItem", IDEMPOTENCY), ("dynamodb:DeleteItem", IDEMPOTENCY),
})

# The tenant data role's credentials (tenantml.tenancy.TenantSessions): AssumeRole with the tenant tag.
_ACT_FOR_TENANTS = frozenset({("sts:AssumeRole", TENANT_DATA_ROLE), ("sts:TagSession", TENANT_DATA_ROLE)})

_OWN = f"T#{TENANT}"                     # the acting tenant's registry / requests partition
_SHARED = "T#_shared"                    # the shared models' registry partition


def _registry_reads(*actions: str) -> frozenset[Call]:
    """Registry reads of a resolution: the tenant's own partition and the shared one."""
    table = resources.REGISTRY_TABLE.id
    return frozenset((a, partition(table, key)) for a in actions for key in (_OWN, _SHARED))


def _model_reads() -> frozenset[Call]:
    return frozenset({("s3:GetObject", objects(f"{resources.ARTIFACT_PREFIX}/{TENANT}/*")),
                      ("s3:GetObject", objects(f"{resources.ARTIFACT_PREFIX}/_shared/*"))})


TENANT_CALLS: Mapping[str, frozenset[Call]] = {
    "inference": _registry_reads(
        "dynamodb:BatchGetItem",               # registry.dynamo._read_models (resolve: own + shared)
        "dynamodb:GetItem",                    # registry.dynamo._read_version (resolve)
        "dynamodb:Query",                      # registry.dynamo.list_models (GET /v2/models)
    ) | _model_reads() | frozenset({           # registry.s3.S3ArtifactStore.get/download (model loading)
        ("s3:PutObject", objects(f"feedback/tenant={TENANT}/*")),   # InferenceService.feedback
        ("s3:PutObject", objects(f"async/input/tenant={TENANT}/*")),     # gpu.submit: the payload
        ("s3:GetObject", objects(f"async/results/tenant={TENANT}/*")),   # gpu.submit: the answer
        ("dynamodb:PutItem", partition(resources.REQUESTS_TABLE.id, _OWN)),    # RequestStore.create
        ("dynamodb:GetItem", partition(resources.REQUESTS_TABLE.id, _OWN)),    # RequestStore.get
        ("dynamodb:UpdateItem", partition(resources.REQUESTS_TABLE.id, _OWN)),  # RequestStore.failed
    }),
    "drift_worker": _registry_reads(
        "dynamodb:BatchGetItem", "dynamodb:GetItem",     # registry.dynamo.resolve
    ) | _model_reads() | frozenset({           # monitoring.jobs.DriftWorker._baseline (baseline.json)
        ("s3:ListBucket", listing(f"capture/tenant={TENANT}/*")),   # monitoring.jobs.CaptureIndex.frames
        ("s3:GetObject", objects(f"capture/tenant={TENANT}/*")),    # monitoring.jobs.CaptureIndex.read
        ("s3:ListBucket", listing(f"feedback/tenant={TENANT}/*")),  # monitoring.feedback.FeedbackIndex
        ("s3:GetObject", objects(f"feedback/tenant={TENANT}/*")),
        ("s3:ListBucket", listing(f"reports/tenant={TENANT}/*")),   # DriftWorker._accuracy_trend
        ("s3:GetObject", objects(f"reports/tenant={TENANT}/*")),
        ("s3:PutObject", objects(f"reports/tenant={TENANT}/*")),    # DriftWorker._put (JSON + HTML)
    }),
    "gpu_dispatch": frozenset({
        ("dynamodb:GetItem", partition(resources.REQUESTS_TABLE.id, _OWN)),     # RequestStore.get
        ("dynamodb:UpdateItem", partition(resources.REQUESTS_TABLE.id, _OWN)),  # .dispatched/.failed
    }),
}

CALLS: Mapping[str, frozenset[Call]] = {
    # auth.verifier fetches the JWKS over HTTPS; no AWS call.
    "authorizer": frozenset(),
    "inference": _ACT_FOR_TENANTS | frozenset({   # registry, models, feedback, requests: TENANT_CALLS
        ("s3:PutObject", objects(CAPTURE)),    # serving.service._LazyCaptureWriter: capture frames
        ("dynamodb:UpdateItem", SIGNALS),      # rollout.signals.DynamoSignals.add (ADD to counters)
        ("dynamodb:UpdateItem", THROTTLE),     # serving.throttle.TenantLimiter._take (lease tokens)
        ("sqs:GetQueueUrl", GPU_QUEUE),        # gpu.wiring._queue_sender (first send)
        ("sqs:SendMessage", GPU_QUEUE),        # gpu.wiring._queue_sender: the dispatch job
    }) | _IDEMPOTENCY_RECORDS,                 # gpu.submit.powertools_idempotency (Idempotency-Key)
    "registry": frozenset({
        ("dynamodb:GetItem", REGISTRY),        # registry.dynamo._read_model/_read_version
        ("dynamodb:BatchGetItem", REGISTRY),   # registry.dynamo._read_models (resolve, list_versions)
        ("dynamodb:Query", REGISTRY),          # registry.dynamo.list_models/list_versions/list_audit
        ("dynamodb:PutItem", REGISTRY),        # transactions' Puts (register/alias/rollout), record_refusal
        ("dynamodb:ConditionCheckItem", REGISTRY),  # set_alias; apply_rollout("start") checks the candidate
        ("dynamodb:DeleteItem", REGISTRY),     # apply_rollout: a rollout that ends drops its live marker
        ("s3:GetObject", objects(MODELS)),     # registry.s3.S3ArtifactStore.digest (verify stored files)
        ("s3:PutObject", objects(MODELS)),     # registry.s3.S3ArtifactStore.put_if_absent/put
        ("s3:DeleteObject", objects(MODELS)),  # registry.s3.S3ArtifactStore.delete (failed registration)
        # A GetObject of a missing key answers NoSuchKey (S3ArtifactStore.digest -> None: "file was not
        # uploaded", 400) only to a caller allowed s3:ListBucket on the bucket, which S3 checks without an
        # s3:prefix; it also covers monitoring.jobs.ReportIndex.latest listing reports/tenant=<t>/.
        ("s3:ListBucket", BUCKET),
        ("s3:GetObject", objects(REPORTS)),    # monitoring.jobs.ReportIndex.latest (GET .../drift)
        ("dynamodb:Query", SIGNALS),           # rollout.signals.DynamoSignals.observe (rollout status)
    }),
    "publisher": frozenset({
        ("events:PutEvents", BUS),             # events.bus.EventBridgeBus.put (events.outbox)
    }),
    "drift_scheduler": frozenset({
        ("s3:ListBucket", listing(CAPTURE)),   # monitoring.jobs.CaptureIndex.targets/frames
        ("sqs:GetQueueUrl", DRIFT_QUEUE),      # monitoring.jobs.DriftScheduler.queue_url
        ("sqs:SendMessage", DRIFT_QUEUE),      # monitoring.jobs.DriftScheduler.run (SendMessageBatch)
    }) | _IDEMPOTENCY_RECORDS,                 # events.schedule.once_per_scheduled_time
    "drift_worker": _ACT_FOR_TENANTS | frozenset({   # capture, feedback, reports, registry: TENANT_CALLS
        ("events:PutEvents", BUS),             # monitoring.jobs.DriftWorker._detected: DriftDetected
        ("dynamodb:PutItem", SIGNALS),         # rollout.signals.DynamoSignals.put_accuracy
    }),
    "rollback": frozenset({
        ("dynamodb:GetItem", REGISTRY),        # registry.dynamo.get_rollout (_read_model)
        ("dynamodb:Query", REGISTRY),          # registry.dynamo.live_rollouts
        ("dynamodb:PutItem", REGISTRY),        # registry.dynamo.apply_rollout: model item, audit, marker
        ("dynamodb:DeleteItem", REGISTRY),     # registry.dynamo.apply_rollout: a rollout that ends
        ("dynamodb:Query", SIGNALS),           # rollout.signals.DynamoSignals.read
        ("cloudwatch:PutMetricAlarm", ROLLOUT_ALARMS),   # rollout.alarms.AlarmManager.create
        ("cloudwatch:DescribeAlarms", ROLLOUT_ALARMS),   # rollout.alarms.AlarmManager (AlarmNamePrefix)
        ("cloudwatch:DeleteAlarms", ROLLOUT_ALARMS),     # rollout.alarms.AlarmManager.delete
    }),
    "gpu_dispatch": _ACT_FOR_TENANTS | frozenset({   # request items: TENANT_CALLS
        ("sqs:GetQueueUrl", GPU_QUEUE),        # gpu.wiring._queue_sender (re-queue)
        ("sqs:SendMessage", GPU_QUEUE),        # gpu.dispatch.Dispatcher: a deferred job, with backoff
        ("sagemaker:InvokeEndpointAsync", GPU_ENDPOINT),  # gpu.dispatch.Dispatcher.handle
    }),
    "gpu_result": frozenset({
        ("dynamodb:GetItem", REQUESTS),        # gpu.requests.RequestStore.get
        ("dynamodb:UpdateItem", REQUESTS),     # gpu.requests.RequestStore.completed/failed
        ("s3:GetObject", objects(ASYNC_OUTPUT)),    # gpu.results.ResultRecorder: SageMaker's answer
        ("s3:GetObject", objects(ASYNC_FAILURES)),  # gpu.results.ResultRecorder: the container's reason
        ("s3:PutObject", objects(ASYNC_RESULTS)),   # gpu.results.ResultRecorder: the answer, under its tenant
    }),
}

# Kinds that exist only in some deployments: the endpoint only with -c gpu_image_uri=... (config.gpu_enabled).
OPTIONAL_KINDS = frozenset({GPU_ENDPOINT})
