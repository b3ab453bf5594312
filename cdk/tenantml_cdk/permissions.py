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
"""

from __future__ import annotations

from collections.abc import Mapping

from tenantml import resources

Call = tuple[str, str]     # (IAM action, resource kind)

REGISTRY = f"table:{resources.REGISTRY_TABLE.id}"
SIGNALS = f"table:{resources.SIGNALS_TABLE.id}"
IDEMPOTENCY = f"table:{resources.IDEMPOTENCY_TABLE.id}"
REQUESTS = f"table:{resources.REQUESTS_TABLE.id}"
BUCKET = "bucket"
BUS = "bus:platform"
DRIFT_QUEUE = "queue:drift-jobs"
GPU_QUEUE = "queue:gpu-requests"
ROLLOUT_ALARMS = f"alarms:{resources.ROLLOUT_ALARM_PREFIX}*"
GPU_ENDPOINT = "endpoint:gpu"

MODELS = f"{resources.ARTIFACT_PREFIX}/*"    # model artifacts: models/<tenant>/<model>/<version>/<file>
CAPTURE = "capture/*"
FEEDBACK = "feedback/*"
REPORTS = "reports/*"
ASYNC_INPUT = "async/input/*"       # tenantml.gpu.requests: the OIP payloads the endpoint reads
ASYNC_RESULTS = "async/results/*"   # answers copied under their tenant
ASYNC_OUTPUT = "async/output/*"     # what SageMaker writes (S3OutputPath)
ASYNC_FAILURES = "async/failures/*"  # and its failures (S3FailurePath)


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

CALLS: Mapping[str, frozenset[Call]] = {
    # auth.verifier fetches the JWKS over HTTPS; no AWS call.
    "authorizer": frozenset(),
    "inference": frozenset({
        ("dynamodb:BatchGetItem", REGISTRY),   # registry.dynamo._read_models (resolve: own + shared)
        ("dynamodb:GetItem", REGISTRY),        # registry.dynamo._read_version (resolve)
        ("dynamodb:Query", REGISTRY),          # registry.dynamo.list_models (GET /v2/models)
        ("s3:GetObject", objects(MODELS)),     # registry.s3.S3ArtifactStore.get/download (model loading)
        ("s3:PutObject", objects(CAPTURE)),    # serving.service._LazyCaptureWriter: capture frames
        ("s3:PutObject", objects(FEEDBACK)),   # serving.service.InferenceService.feedback: ground truth
        ("dynamodb:UpdateItem", SIGNALS),      # rollout.signals.DynamoSignals.add (ADD to counters)
        ("s3:PutObject", objects(ASYNC_INPUT)),    # gpu.submit.AsyncSubmitter.submit: the payload
        ("s3:GetObject", objects(ASYNC_RESULTS)),  # gpu.submit.AsyncSubmitter.status: the answer
        ("dynamodb:PutItem", REQUESTS),        # gpu.requests.RequestStore.create
        ("dynamodb:GetItem", REQUESTS),        # gpu.requests.RequestStore.get (GET /v2/requests/{id})
        ("dynamodb:UpdateItem", REQUESTS),     # gpu.requests.RequestStore.failed (could not be queued)
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
    "drift_worker": frozenset({
        ("s3:ListBucket", listing(CAPTURE)),   # monitoring.jobs.CaptureIndex.frames
        ("s3:GetObject", objects(CAPTURE)),    # monitoring.jobs.CaptureIndex.read
        ("s3:ListBucket", listing(FEEDBACK)),  # monitoring.feedback.FeedbackIndex.load
        ("s3:GetObject", objects(FEEDBACK)),   # monitoring.feedback.FeedbackIndex.load
        ("s3:GetObject", objects(MODELS)),     # monitoring.jobs.DriftWorker._baseline (baseline.json)
        ("s3:ListBucket", listing(REPORTS)),   # monitoring.jobs.DriftWorker._accuracy_trend
        ("s3:GetObject", objects(REPORTS)),    # monitoring.jobs.DriftWorker._accuracy_trend
        ("s3:PutObject", objects(REPORTS)),    # monitoring.jobs.DriftWorker._put (JSON + HTML report)
        ("dynamodb:BatchGetItem", REGISTRY),   # registry.dynamo.resolve (_read_models)
        ("dynamodb:GetItem", REGISTRY),        # registry.dynamo.resolve (_read_version)
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
    "gpu_dispatch": frozenset({
        ("dynamodb:GetItem", REQUESTS),        # gpu.requests.RequestStore.get
        ("dynamodb:UpdateItem", REQUESTS),     # gpu.requests.RequestStore.dispatched/failed
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
