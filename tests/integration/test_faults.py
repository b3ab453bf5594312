"""Fault injection at the AWS boundary (tests/integration/faults.py), through the real handlers on moto.

Each test is parametrized by (boundary, fault): throttling, 5xx, read/connect timeouts (before the call
reached AWS, or after it was applied and only the answer was lost), ConditionalCheckFailed where a
conditional write exists (with the race that makes it fail for real), and partial failures (PutEvents'
FailedEntryCount, SendMessageBatch's Failed). A fault is what botocore hands its caller once its own
retries are spent. Every case ends with an accounting check: what went in equals what came out
(completed, failed with a reason, or still retryable in a queue, DLQ or failure queue), never lost.

There is no Firehose in the platform (capture frames and feedback go to S3 directly), so no Firehose
boundary is tested; CloudWatch is reached through the rollout alarms (PutMetricAlarm, DescribeAlarms,
DeleteAlarms): metrics are EMF log lines, not API calls.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import numpy as np
import pytest
import serving_models as sm
from faults import CONNECT_TIMEOUT, PARTIAL, READ_TIMEOUT, Fault, inject
from moto import mock_aws
from moto_env import AWS, NAMES, lambda_account, local_functions, use_function_environment

from tenantml import resources
from tenantml.local.context import handler_path
from tenantml.local.events import EventRuntime
from tenantml.local.provision import create_resources
from tenantml.registry.dynamo import DynamoRegistry
from tenantml.registry.s3 import S3ArtifactStore
from tenantml.settings import reset_settings

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")
BUCKET = NAMES.buckets["artifacts"]
REGISTRY = NAMES.tables["registry"]
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "functions"


def case(boundary: str, *faults: Fault, **expect: object):
    """One parametrized case: readable id `<boundary>:<service.Operation-Fault>[+...]`."""
    ids = "+".join(f.id + ("(applied)" if f.applied else "") + ("xN" if f.times is None else
                                                                  f"x{f.times}" if f.times != 1 else "")
                   for f in faults)
    return pytest.param(list(faults), expect, id=f"{boundary}:{ids}")


def fresh(faults: list[Fault]) -> list[Fault]:
    """Parametrized Fault objects are shared between runs of a case: fresh counters for each run."""
    return [dataclasses.replace(f, seen=0, injected=0) for f in faults]


def table_is(name: str) -> Callable[[dict], bool]:
    return lambda params: params.get("TableName") == name


def key_starts(prefix: str) -> Callable[[dict], bool]:
    return lambda params: str(params.get("Key", "")).startswith(prefix)


def queue_is(queue_id: str) -> Callable[[dict], bool]:
    return lambda params: str(params.get("QueueUrl", "")).endswith(f"/{NAMES.prefix}-{queue_id}")


def drain(url: str) -> list[dict]:
    """Every message left in a queue (received and deleted: the accounting reads them once)."""
    sqs = boto3.client("sqs", region_name=AWS.region)
    out: list[dict] = []
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=30,
                                  AttributeNames=["All"]).get("Messages") or []
        if not got:
            return out
        for m in got:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        out.extend(got)


def http(resp: dict) -> tuple[int, dict, dict]:
    headers = {k: v[-1] for k, v in (resp.get("multiValueHeaders") or {}).items()}
    return resp["statusCode"], json.loads(resp["body"]), {**headers, **(resp.get("headers") or {})}


def assert_clear_503(status: int, body: dict, headers: dict) -> None:
    """A retryable refusal the client can act on: 503, Retry-After, one stable line, no internals."""
    assert status == 503, (status, body)
    assert int(headers["Retry-After"]) >= 1
    assert set(body) == {"error"} and "\n" not in body["error"]
    for leak in ("Traceback", "botocore", "injected", "s3://", "arn:aws", "Exception", "Error:"):
        assert leak not in body["error"], body


# =====================================================================================================
# publisher: registry stream (audit records) -> EventBridge
# =====================================================================================================

PUBLISHER_CASES = [   # expect: stream records reported failed (delivered again)
    case("publisher", Fault("eventbridge", "PutEvents", "ThrottlingException"), redelivered=0),
    case("publisher", Fault("eventbridge", "PutEvents", "InternalException", times=3), redelivered=1),
    case("publisher", Fault("eventbridge", "PutEvents", "ServiceUnavailable", times=4), redelivered=1),
    case("publisher", Fault("eventbridge", "PutEvents", READ_TIMEOUT, times=3), redelivered=1),
    case("publisher", Fault("eventbridge", "PutEvents", READ_TIMEOUT, times=3, applied=True), redelivered=1),
    case("publisher", Fault("eventbridge", "PutEvents", CONNECT_TIMEOUT, times=3), redelivered=1),
    case("publisher", Fault("eventbridge", "PutEvents", PARTIAL), redelivered=0),
    case("publisher", Fault("eventbridge", "PutEvents", PARTIAL, times=3, skip=1), redelivered=1),
    case("publisher", Fault("eventbridge", "PutEvents", PARTIAL, times=7), redelivered=2),
]


def bus_tap() -> str:
    sqs = boto3.client("sqs", region_name=AWS.region)
    url = sqs.create_queue(QueueName="bus-tap")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events = boto3.client("events", region_name=AWS.region)
    events.put_rule(Name="tap", EventBusName=NAMES.event_bus,
                    EventPattern=json.dumps({"source": ["tenantml"]}))
    events.put_targets(Rule="tap", EventBusName=NAMES.event_bus, Targets=[{"Id": "q", "Arn": arn}])
    return url


@pytest.mark.parametrize(("faults", "expect"), PUBLISHER_CASES)
def test_publisher_retries_every_refused_event(monkeypatch, faults, expect):
    """N committed changes (audit records) -> N distinct change_ids on the bus: a refused event is
    retried by the bus adapter, then by the stream (batch item failure), never dropped."""
    with lambda_account(monkeypatch, "publisher"):
        definitions = (resources.function("publisher"),)
        rt = EventRuntime(local_functions(definitions, lambda d: handler_path(d.name)), AWS, NAMES,
                          definitions=definitions, stream_retry_backoff_s=0.01).provision()
        rt.functions["publisher"].load().publisher.bus._sleep = lambda s: None
        tap = bus_tap()
        registry = DynamoRegistry(REGISTRY, AWS)
        v = sm.tabular_version(owner="acme", name="risk")
        for version in ("1", "2"):
            registry.register_version("acme", "risk", v.manifest, "tester", version=version)
        registry.set_alias("acme", "risk", "production", "2", "tester")
        armed = fresh(faults)
        with inject(monkeypatch, *armed):
            rt.run_until_idle()
        rt.stop()
        assert [f.injected for f in armed] == [f.times for f in armed]
        audit = registry.list_audit("acme").records
        assert len(audit) == 3
        events = [json.loads(m["Body"]) for m in drain(tap)]
        assert {e["detail"]["change_id"] for e in events} == {r.id for r in audit}     # in == out
        # at least once: a redelivered batch publishes the records after the failed one again
        assert len(events) >= len(audit)
        assert sum(d.failed for d in rt.deliveries) == expect["redelivered"]    # records failed, came again


# =====================================================================================================
# rollout / rollback: registry (DynamoDB transactions) and CloudWatch alarms, through the event runtime:
# registry stream -> publisher -> bus -> rollback function (DriftDetected, RolloutStarted/RolledBack)
# =====================================================================================================

MODEL = "acme-risk"
BEFORE, AFTER, ABORTED = "before", "after", "aborted"


def _abort_meanwhile(_params: dict) -> None:
    """An engineer aborts the rollout between the controller's read and its write."""
    from tenantml.rollout.service import RolloutService

    RolloutService(DynamoRegistry(REGISTRY, AWS)).act("acme", MODEL, "abort", "engineer", "manual abort")


def _rolled_back_meanwhile(_params: dict) -> None:
    """Another trigger (an alarm) rolls the same candidate back between the read and the write."""
    from tenantml.rollout import machine

    registry = DynamoRegistry(REGISTRY, AWS)
    r = registry.get_rollout("acme", MODEL)
    registry.apply_rollout("acme", MODEL, machine.rollback(r, candidate="2", now=datetime.now(UTC),
                                                           actor="rollback", reason="alarm meanwhile"))


TX = ("dynamodb", "TransactWriteItems")
ROLLOUT_CASES = [   # phase: where the fault is armed; final: the registry state it must end in
    case("rollback", Fault(*TX, "ProvisionedThroughputExceededException"), phase="rollback", final=AFTER),
    case("rollback", Fault(*TX, "InternalServerError"), phase="rollback", final=AFTER),
    case("rollback", Fault(*TX, READ_TIMEOUT), phase="rollback", final=AFTER),
    case("rollback", Fault(*TX, READ_TIMEOUT, applied=True), phase="rollback", final=AFTER),
    case("rollback", Fault(*TX, CONNECT_TIMEOUT, times=None), phase="rollback", final=BEFORE),
    case("rollback", Fault(*TX, "TransactionCanceledException", reasons=("ThrottlingError", "None", "None")),
         phase="rollback", final=AFTER),
    case("rollback", Fault(*TX, "TransactionCanceledException", reasons=("TransactionConflict", "None",
                                                                          "None")),
         phase="rollback", final=AFTER),
    case("rollback", Fault(*TX, "TransactionCanceledException", reasons=("ConditionalCheckFailed", "None",
                                                                          "None"), race=_abort_meanwhile),
         phase="rollback", final=ABORTED),
    case("rollback", Fault(*TX, "TransactionCanceledException", reasons=("ConditionalCheckFailed", "None",
                                                                          "None"),
                           race=_rolled_back_meanwhile), phase="rollback", final=AFTER),
    case("rollback", Fault(*TX, "TransactionCanceledException", times=4,
                           reasons=("TransactionConflict", "None", "None")), phase="rollback", final=AFTER),
    case("rollback", Fault(*TX, "TransactionCanceledException", times=None,
                           reasons=("TransactionConflict", "None", "None")), phase="rollback", final=BEFORE),
    case("rollback", Fault("dynamodb", "GetItem", "ProvisionedThroughputExceededException", times=2),
         phase="rollback", final=AFTER),
    case("rollback", Fault("dynamodb", "GetItem", "InternalServerError", times=None), phase="rollback",
         final=BEFORE),
    case("alarms", Fault("cloudwatch", "PutMetricAlarm", "Throttling"), phase="start", final=AFTER),
    case("alarms", Fault("cloudwatch", "PutMetricAlarm", "InternalFailure", skip=1), phase="start",
         final=AFTER),
    case("alarms", Fault("cloudwatch", "PutMetricAlarm", READ_TIMEOUT, applied=True), phase="start",
         final=AFTER),
    case("alarms", Fault("cloudwatch", "DescribeAlarms", "ServiceUnavailable"), phase="rollback",
         final=AFTER),
    case("alarms", Fault("cloudwatch", "DeleteAlarms", "Throttling", times=2), phase="rollback", final=AFTER),
    case("alarms", Fault("cloudwatch", "DeleteAlarms", "InternalFailure", times=None), phase="rollback",
         final=AFTER),
]


def rollout_state(registry: DynamoRegistry) -> tuple[str, list[str], bool]:
    """(the model item's rollout status, the rollout audit actions, whether the live marker exists)."""
    r = registry.get_rollout("acme", MODEL)
    actions = sorted(a.action for a in registry.list_audit("acme").records if a.action.startswith("rollout_"))
    marker = boto3.client("dynamodb", region_name=AWS.region).get_item(
        TableName=REGISTRY, Key={"pk": {"S": "ROLLOUTS"}, "sk": {"S": f"acme#{MODEL}"}}, ConsistentRead=True)
    return r.status, actions, "Item" in marker


STATES = {
    BEFORE: ("active", ["rollout_start"], True),
    AFTER: ("rolled_back", ["rollout_rollback", "rollout_start"], False),
    ABORTED: ("aborted", ["rollout_abort", "rollout_start"], False),
}


def rollout_alarms() -> list[str]:
    cw = boto3.client("cloudwatch", region_name=AWS.region)
    alarms = cw.describe_alarms(AlarmNamePrefix="tenantml-rollout-")["MetricAlarms"]
    return sorted(a["AlarmName"] for a in alarms)


def drift_on(version: str) -> dict:
    return {"Source": "tenantml", "DetailType": "DriftDetected", "EventBusName": NAMES.event_bus,
            "Detail": json.dumps({
                "tenant": "acme", "model": MODEL, "version": version, "reason": "velocity drifted",
                "actor": "drift_worker", "change_id": "d1", "at": "2026-11-30T18:00:00Z", "kind": "data",
                "window_start": "2026-11-30T17:00:00Z", "window_end": "2026-11-30T18:00:00Z",
                "report": "reports/x.json", "drifted_features": ["velocity"]})}


@pytest.mark.parametrize(("faults", "expect"), ROLLOUT_CASES)
def test_a_fault_mid_rollback_leaves_the_registry_fully_before_or_fully_after(monkeypatch, faults, expect):
    """The model item's rollout, its audit record and the live marker move together or not at all; a
    failed invocation is retried (Lambda's async retries), then its event waits in the failure queue; the
    candidate's alarms exist while the rollout is live and are gone after it ends."""
    from tenantml.rollout.service import RolloutService, StartRollout

    with lambda_account(monkeypatch, "rollback"):
        registry = DynamoRegistry(REGISTRY, AWS)
        store = S3ArtifactStore(BUCKET, AWS)
        for version in ("1", "2"):
            sm.register(registry, store, sm.tabular_version(owner="acme", name=MODEL, version=version),
                        aliases=("production",) if version == "1" else ())
        definitions = tuple(resources.function(n) for n in ("publisher", "rollback"))
        rt = EventRuntime(local_functions(definitions, lambda d: handler_path(d.name)), AWS, NAMES,
                          definitions=definitions, stream_retry_backoff_s=0.01).provision()
        RolloutService(registry).start("acme", MODEL, StartRollout(candidate="2"), "tester")
        armed = fresh(faults)
        with inject(monkeypatch, *(armed if expect["phase"] == "start" else ())):
            rt.run_until_idle()
        assert len(rollout_alarms()) == 2                              # RolloutStarted -> both alarms
        assert rollout_state(registry) == STATES[BEFORE]
        boto3.client("events", region_name=AWS.region).put_events(Entries=[drift_on("2")])
        with inject(monkeypatch, *(armed if expect["phase"] == "rollback" else ())):
            rt.run_until_idle()
        rt.stop()
        assert all(f.injected >= 1 for f in armed)
        state = rollout_state(registry)
        assert state == STATES[expect["final"]], state            # never half-applied
        failure_queue = rt.queue_urls[resources.function("rollback").failure_queue]
        left = drain(failure_queue)
        if expect["final"] == BEFORE:                             # retries spent: the event waits there
            (msg,) = left
            assert json.loads(msg["Body"])["requestPayload"]["detail-type"] == "DriftDetected"
            assert len(rollout_alarms()) == 2                      # still live, still watched
        elif any(f.service == "cloudwatch" and f.times is None for f in armed):
            (msg,) = left                                          # the alarms' removal waits for a retry
            assert json.loads(msg["Body"])["requestPayload"]["detail-type"] == "RolloutRolledBack"
            assert len(rollout_alarms()) == 2
        else:
            assert left == [] and rollout_alarms() == []


# =====================================================================================================
# drift: schedule -> drift_scheduler -> SQS drift-jobs -> drift_worker -> reports + DriftDetected
# =====================================================================================================

SCHEDULED = datetime(2026, 11, 30, 18, 0, tzinfo=UTC)          # checks [17:00, 18:00)
DRIFT_MODELS = ("m0", "m1", "m2")
LEVELS = ["low", "medium", "high"]
ON_DRIFT = resources.FunctionDef("on_drift", "test", triggers=(  # type: ignore[arg-type]
    resources.RuleTrigger("drift", {"source": ["tenantml"], "detail-type": ["DriftDetected"]}),))
IDEMPOTENCY = NAMES.tables["idempotency"]


def _baseline() -> bytes:
    from tenantml.monitoring import build_baseline

    rng = np.random.default_rng(0)
    rows = 3000
    return build_baseline({"velocity": rng.normal(20, 5, rows), "overdue": rng.poisson(3, rows)},
                          predictions=rng.choice(LEVELS, rows, p=[.5, .3, .2])).model_dump_json().encode()


def _drifted_frame(model: str) -> None:
    from tenantml.monitoring.capture import encode_frame, frame_key

    rng = np.random.default_rng(1)
    rows = 1000
    data = encode_frame("acme", model, "1", numeric={"velocity": rng.normal(26, 5, rows),
                                                     "overdue": rng.poisson(3, rows)},
                        categorical={"prediction": rng.choice(LEVELS, rows, p=[.5, .3, .2])},
                        request_ids=[f"r{i}" for i in range(rows)])
    boto3.client("s3", region_name=AWS.region).put_object(
        Bucket=BUCKET, Key=frame_key("acme", model, "1", SCHEDULED - timedelta(minutes=30)), Body=data)


def in_queue(params: dict, model: str) -> bool:
    return any(f'"model":"{model}"' in e["MessageBody"] for e in params.get("Entries", [])) or \
        f'"model":"{model}"' in str(params.get("MessageBody", ""))


SEND_JOBS = ("sqs", "SendMessageBatch")
CAPTURE = key_starts("capture/")
DRIFT_CASES = [   # expect: outcome "reports" (all N), "dlq" (a job in the DLQ), "failure_queue" (the run)
    case("scheduler", Fault(*SEND_JOBS, "RequestThrottled"), outcome="reports"),
    case("scheduler", Fault(*SEND_JOBS, "InternalError"), outcome="reports"),
    case("scheduler", Fault(*SEND_JOBS, READ_TIMEOUT, applied=True), outcome="reports"),
    case("scheduler", Fault(*SEND_JOBS, PARTIAL), outcome="reports"),
    case("scheduler", Fault(*SEND_JOBS, CONNECT_TIMEOUT, times=None), outcome="failure_queue"),
    case("scheduler", Fault("sqs", "GetQueueUrl", "ServiceUnavailable"), outcome="reports"),
    case("scheduler", Fault("s3", "ListObjectsV2", "SlowDown", when=lambda p: p.get("Delimiter") == "/"),
         outcome="reports"),
    case("scheduler", Fault("dynamodb", "PutItem", "ProvisionedThroughputExceededException",
                            when=table_is(IDEMPOTENCY)), outcome="reports"),
    case("scheduler", Fault("dynamodb", "PutItem", READ_TIMEOUT, when=table_is(IDEMPOTENCY), applied=True),
         outcome="failure_queue"),
    case("worker", Fault("s3", "GetObject", "SlowDown", when=CAPTURE), outcome="reports"),
    case("worker", Fault("s3", "GetObject", "InternalError", when=CAPTURE), outcome="reports"),
    case("worker", Fault("s3", "GetObject", READ_TIMEOUT, when=CAPTURE), outcome="reports"),
    case("worker", Fault("s3", "GetObject", CONNECT_TIMEOUT, when=CAPTURE), outcome="reports"),
    case("worker", Fault("s3", "GetObject", "InternalError", times=None,
                         when=key_starts("capture/tenant=acme/model=m1/")), outcome="dlq"),
    case("worker", Fault("s3", "GetObject", READ_TIMEOUT, when=lambda p: p["Key"].endswith("baseline.json")),
         outcome="reports"),
    case("worker", Fault("s3", "ListObjectsV2", "SlowDown", when=lambda p: "Delimiter" not in p),
         outcome="reports"),
    case("worker", Fault("s3", "PutObject", "InternalError", when=key_starts("reports/")), outcome="reports"),
    case("worker", Fault("s3", "PutObject", READ_TIMEOUT, applied=True, when=key_starts("reports/")),
         outcome="reports"),
    case("worker", Fault("eventbridge", "PutEvents", PARTIAL, times=3), outcome="reports"),
    case("worker", Fault("eventbridge", "PutEvents", "ThrottlingException", times=3), outcome="reports"),
    case("worker", Fault("eventbridge", "PutEvents", READ_TIMEOUT, times=3), outcome="reports"),
    case("worker", Fault("dynamodb", "BatchGetItem", "ProvisionedThroughputExceededException"),
         outcome="reports"),
    case("worker", Fault("dynamodb", "BatchGetItem", PARTIAL, times=4), outcome="reports"),
    case("worker", Fault("dynamodb", "GetItem", "InternalServerError", when=table_is(REGISTRY)),
         outcome="reports"),
    case("worker", Fault("sts", "AssumeRole", "Throttling"), outcome="reports"),
]


@pytest.mark.parametrize(("faults", "expect"), DRIFT_CASES)
def test_every_scheduled_drift_job_ends_in_a_report_or_waits_for_a_retry(monkeypatch, faults, expect):
    """N targets with traffic -> N reports (and N DriftDetected, deduplicated on change_id), or the jobs
    not done waiting in the DLQ, or the scheduled run itself in the scheduler's failure queue."""
    from tenantml.events import parse_detail
    from tenantml.registry.service import RegistrationService

    with lambda_account(monkeypatch, "drift_worker"):
        definitions = (*(resources.function(n) for n in ("drift_scheduler", "drift_worker")), ON_DRIFT)
        functions = local_functions(
            definitions,
            lambda d: FIXTURES / "bus_listener" / "handler.py" if d is ON_DRIFT else handler_path(d.name),
            TENANTML_DRIFT_WINDOW_MINUTES="60")
        rt = EventRuntime(functions, AWS, NAMES, definitions=definitions).provision()
        rt.functions["drift_worker"].load().worker.bus._sleep = lambda s: None
        svc = RegistrationService(DynamoRegistry(REGISTRY, AWS), S3ArtifactStore(BUCKET, AWS))
        for model in DRIFT_MODELS:
            manifest, files = sm.tabular_with(model, **{"baseline.json": _baseline()})
            svc.register(owner="acme", model=model, manifest=manifest, actor="tester", files=files,
                         aliases=["production"])
            _drifted_frame(model)
        armed = fresh(faults)
        with inject(monkeypatch, *armed):
            rt.fire("drift", SCHEDULED)
            rt.run_until_idle(timeout_s=60)
        rt.stop()
        assert all(f.injected >= 1 for f in armed), [(f.id, f.seen) for f in armed]
        s3 = boto3.client("s3", region_name=AWS.region)
        reports = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="reports/")
                         .get("Contents") or [] if o["Key"].endswith(".json"))
        dlq = [json.loads(m["Body"])["model"] for m in drain(rt.queue_urls["drift-jobs-dlq"])]
        assert drain(rt.queue_urls["drift-jobs"]) == []
        failed_runs = drain(rt.queue_urls[resources.function("drift_scheduler").failure_queue])
        reported = [k.split("/")[2].removeprefix("model=") for k in reports]
        events = [parse_detail(e["detail-type"], e["detail"]) for e in rt.functions["on_drift"].load().SEEN]
        if expect["outcome"] == "failure_queue":          # the run waits for a retry; nothing half-queued
            (run,) = failed_runs
            assert json.loads(run["Body"])["requestPayload"]["time"] == "2026-11-30T18:00:00Z"
            assert len(reported) + len(dlq) <= len(DRIFT_MODELS)
            return
        assert failed_runs == []
        assert sorted(reported + dlq) == sorted(DRIFT_MODELS)        # in == out: N jobs, N ends
        assert dlq == (["m1"] if expect["outcome"] == "dlq" else [])
        assert sorted({e.model for e in events}) == sorted(reported)    # each report announced
        assert len({e.change_id for e in events}) == len(reported)      # at least once, one per check


@pytest.mark.parametrize("error", [READ_TIMEOUT, CONNECT_TIMEOUT])
def test_a_timeout_reading_a_baseline_fails_the_job_with_the_timeout_itself(error):
    """botocore's timeouts carry `response = None`: the baseline read re-raises the timeout (the job is
    retried, then the DLQ), where it used to crash on the missing response with an AttributeError."""
    from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError

    from tenantml.monitoring.jobs import DriftWorker
    from tenantml.monitoring.stats import Thresholds
    from tenantml.registry import ModelVersion

    class S3:
        def get_object(self, **_kw):
            raise (ReadTimeoutError if error == READ_TIMEOUT else ConnectTimeoutError)(endpoint_url="https://s3")

    manifest, _ = sm.tabular_with("m0", **{"baseline.json": b"{}"})
    worker = DriftWorker(index=None, registry=None, bus=None, s3=S3(), bucket=BUCKET, thresholds=Thresholds())
    with pytest.raises(ReadTimeoutError if error == READ_TIMEOUT else ConnectTimeoutError):
        worker._baseline(ModelVersion(owner="acme", model="m0", version="1", manifest=manifest))


# =====================================================================================================
# async GPU path: submit (inference) -> gpu-requests -> gpu_dispatch -> SageMaker -> gpu-results
# -> gpu_result -> poll. SageMaker's runtime is moto's (InvokeEndpointAsync); its side (the answer in S3,
# the SNS notification) is played by the test, as SageMaker does it.
# =====================================================================================================

ENDPOINT = "tenantml-test-gpu"
REQUESTS = NAMES.tables["requests"]
N_SUBMITS = 3
TEXTS = ["The checkout page times out after the last deploy", "Add dark mode to the mobile app"]
ANSWER = {"id": "x", "model_name": "mpnet-embed", "model_version": "1", "parameters": {"compute_ms": 3.5},
          "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [2, 2], "data": [0.6, 0.8, 1, 0]}]}


def gpu_event(load_event, key: str) -> dict:
    e = copy.deepcopy(load_event("inference-infer-gpu"))
    e["requestContext"]["authorizer"]["tenant_id"] = "acme"
    e["pathParameters"] = {"model": "mpnet-embed"}
    e["path"] = "/v2/models/mpnet-embed/infer"
    e["body"] = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": TEXTS}]})
    e["headers"]["Idempotency-Key"] = key
    e["multiValueHeaders"]["Idempotency-Key"] = [key]
    return e


def poll_event(load_event, rid: str) -> dict:
    e = copy.deepcopy(load_event("inference-request-status"))
    e["requestContext"]["authorizer"]["tenant_id"] = "acme"
    e["pathParameters"] = {"id": rid}
    e["path"] = f"/v2/requests/{rid}"
    return e


def status_is(status: str) -> Callable[[dict], bool]:
    """An UpdateItem of the requests table moving a request to `status`."""
    return lambda p: p.get("TableName") == REQUESTS and \
        p.get("ExpressionAttributeValues", {}).get(":to") == {"S": status}


def first_key(prefix: str) -> Callable[[dict], bool]:
    """Calls on the first object key under `prefix` this predicate sees (one request's, say)."""
    chosen: list[str] = []

    def when(p: dict) -> bool:
        key = str(p.get("Key", ""))
        if not key.startswith(prefix):
            return False
        chosen[:] = chosen or [key]
        return key == chosen[0]
    return when


def _timed_out_meanwhile(params: dict) -> None:
    """The request times out (the dispatcher fails it) between a read and this conditional write."""
    from tenantml.gpu import requests as rq

    tenant, rid = params["Key"]["pk"]["S"][2:], params["Key"]["sk"]["S"][2:]
    store = rq.RequestStore(boto3.client("dynamodb", region_name=AWS.region), REQUESTS)
    assert store.failed(tenant, rid, "timed out waiting for GPU capacity")


INVOKE = ("sagemaker-runtime", "InvokeEndpointAsync")
INPUT, OUTPUT, RESULT = key_starts("async/input/"), key_starts("async/output/"), key_starts("async/results/")
GPU_CASES = [   # expect: how many of the N submits end failed (with a reason) and how many wait in a DLQ
    case("submit", Fault("s3", "PutObject", "SlowDown", when=INPUT)),
    case("submit", Fault("s3", "PutObject", "InternalError", when=INPUT)),
    case("submit", Fault("s3", "PutObject", READ_TIMEOUT, applied=True, when=INPUT)),
    case("submit", Fault("dynamodb", "PutItem", "ProvisionedThroughputExceededException",
                         when=table_is(REQUESTS))),
    case("submit", Fault("dynamodb", "PutItem", READ_TIMEOUT, applied=True, when=table_is(REQUESTS)),
         orphans_failed=1),
    case("submit", Fault("sqs", "SendMessage", "RequestThrottled"), orphans_failed=1),
    case("submit", Fault("sqs", "SendMessage", READ_TIMEOUT, applied=True), orphans_failed=1),
    case("submit", Fault("dynamodb", "PutItem", "ProvisionedThroughputExceededException",
                         when=table_is(NAMES.tables["idempotency"]))),
    case("submit", Fault("dynamodb", "PutItem", CONNECT_TIMEOUT, when=table_is(NAMES.tables["idempotency"]))),
    case("submit", Fault("dynamodb", "UpdateItem", "InternalServerError",
                         when=table_is(NAMES.tables["idempotency"]))),
    case("submit", Fault("sts", "AssumeRole", "Throttling")),
    case("dispatch", Fault(*INVOKE, "ThrottlingException", times=2)),
    case("dispatch", Fault(*INVOKE, "ServiceUnavailable")),
    case("dispatch", Fault(*INVOKE, "InternalFailure")),
    case("dispatch", Fault(*INVOKE, "ModelNotReadyException")),
    case("dispatch", Fault(*INVOKE, READ_TIMEOUT)),
    case("dispatch", Fault(*INVOKE, READ_TIMEOUT, applied=True)),
    case("dispatch", Fault(*INVOKE, CONNECT_TIMEOUT)),
    case("dispatch", Fault(*INVOKE, "ValidationError", times=None), failed=N_SUBMITS, requests_dlq=N_SUBMITS),
    case("dispatch", Fault("dynamodb", "GetItem", "ProvisionedThroughputExceededException",
                           when=table_is(REQUESTS))),
    case("dispatch", Fault("dynamodb", "UpdateItem", "InternalServerError", when=status_is("dispatched"))),
    case("dispatch", Fault("dynamodb", "UpdateItem", READ_TIMEOUT, applied=True,
                           when=status_is("dispatched"))),
    case("dispatch", Fault("dynamodb", "UpdateItem", "ConditionalCheckFailedException",
                           when=status_is("dispatched"), race=_timed_out_meanwhile), failed=1),
    case("dispatch", Fault(*INVOKE, "ThrottlingException"), Fault("sqs", "SendMessage", "InternalError",
                                                                          skip=N_SUBMITS)),
    case("dispatch", Fault("sts", "AssumeRole", "Throttling", skip=1)),
    case("result", Fault("s3", "GetObject", "SlowDown", when=OUTPUT)),
    case("result", Fault("s3", "PutObject", "InternalError", when=RESULT)),
    case("result", Fault("dynamodb", "UpdateItem", "ProvisionedThroughputExceededException",
                         when=status_is("completed"))),
    case("result", Fault("dynamodb", "UpdateItem", READ_TIMEOUT, applied=True, when=status_is("completed"))),
    case("result", Fault("dynamodb", "UpdateItem", "ConditionalCheckFailedException",
                         when=status_is("completed"), race=_timed_out_meanwhile), failed=1),
    case("result", Fault("dynamodb", "GetItem", CONNECT_TIMEOUT, when=table_is(REQUESTS), skip=N_SUBMITS)),
    case("result", Fault("s3", "GetObject", "InternalError", times=None, when=first_key("async/output/")),
         results_dlq=1),
]


@pytest.mark.parametrize(("faults", "expect"), GPU_CASES)
def test_no_async_prediction_is_lost(monkeypatch, load_handler, lambda_context, load_event, faults, expect):
    """N submits accepted (a refused submit is a clear 503 with Retry-After, and the client retries) ->
    every request ends completed (its answer readable), failed with a reason, or waiting in a DLQ; no
    request item is left pending with nothing that will move it."""
    from tenantml.gpu import requests as rq

    monkeypatch.setattr("tenantml.gpu.dispatch.backoff_s", lambda attempt, rng=None: 0)   # no waiting
    with mock_aws():
        create_resources(AWS, NAMES)
        v = sm.embedding_version("_shared", "mpnet-embed")
        gpu = sm.Version(v.owner, v.manifest.model_copy(update={"backend": "gpu"}), v.artifacts, v.version)
        sm.register(DynamoRegistry(REGISTRY, AWS), S3ArtifactStore(BUCKET, AWS), gpu)
        use_function_environment(monkeypatch, "inference")
        monkeypatch.setenv("TENANTML_GPU_ENDPOINT_NAME", ENDPOINT)
        reset_settings()
        inference = load_handler("inference")
        definitions = tuple(resources.function(n) for n in ("gpu_dispatch", "gpu_result"))
        functions = local_functions(definitions, lambda d: handler_path(d.name))
        for fn in functions.values():                          # the endpoint, as deployed with one
            fn.env["TENANTML_GPU_ENDPOINT_NAME"] = ENDPOINT
        rt = EventRuntime(functions, AWS, NAMES, definitions=definitions).provision()
        s3 = boto3.client("s3", region_name=AWS.region)
        sqs = boto3.client("sqs", region_name=AWS.region)
        ddb = boto3.client("dynamodb", region_name=AWS.region)
        accepted, refused = [], 0
        armed = fresh(faults)
        with inject(monkeypatch, *armed) as injector:
            for i in range(N_SUBMITS):
                for _attempt in range(3):                    # the client retries a 503
                    status, body, headers = http(inference.handler(gpu_event(load_event, f"k-{i}"),
                                                                   lambda_context))
                    if status == 202:
                        accepted.append(body["id"])
                        break
                    assert_clear_503(status, body, headers)
                    refused += 1
            rt.run_until_idle(timeout_s=60)                  # dispatch (retries, backoff 0, DLQ)
            with injector.disarmed():                         # SageMaker answers what was dispatched
                for item in ddb.scan(TableName=REQUESTS)["Items"]:
                    if item["status"]["S"] != rq.DISPATCHED:
                        continue
                    tenant, rid = item["pk"]["S"][2:], item["sk"]["S"][2:]
                    s3.put_object(Bucket=BUCKET, Key=f"async/output/{rid}.out", Body=json.dumps(ANSWER))
                    sqs.send_message(QueueUrl=rt.queue_urls["gpu-results"], MessageBody=json.dumps({
                        "invocationStatus": "Completed", "inferenceId": rid,
                        "requestParameters": {"inputLocation": f"s3://{BUCKET}/{rq.input_key(tenant, rid)}"},
                        "responseParameters": {"outputLocation": f"s3://{BUCKET}/async/output/{rid}.out"}}))
            rt.run_until_idle(timeout_s=60)                  # results
        rt.stop()
        assert all(f.injected >= 1 for f in armed), [(f.id, f.seen) for f in armed]
        assert len(accepted) == N_SUBMITS                      # every client got its 202, maybe after a 503

        # --- accounting ---------------------------------------------------------------------------
        waiting: set[str] = set()
        for q in ("gpu-requests", "gpu-requests-dlq", "gpu-results", "gpu-results-dlq"):
            for m in drain(rt.queue_urls[q]):
                body = json.loads(m["Body"])
                waiting.add(body.get("request_id") or body.get("inferenceId"))
                expect.setdefault(f"_{q}", 0)
                expect[f"_{q}"] += 1
        items = {i["sk"]["S"][2:]: i for i in ddb.scan(TableName=REQUESTS)["Items"]}
        by_status: dict[str, list[str]] = {}
        for rid, item in items.items():
            by_status.setdefault(item["status"]["S"], []).append(rid)
        lost = [rid for rid in by_status.get(rq.QUEUED, []) + by_status.get(rq.DISPATCHED, [])
                if rid not in waiting]
        assert lost == [], f"pending with nothing to move them: {lost}"
        assert set(accepted) <= set(items)
        orphans = set(items) - set(accepted)                  # created by a submit that answered 503
        assert all(items[r]["status"]["S"] == rq.FAILED and items[r]["reason"]["S"] for r in orphans)
        assert len(orphans) == expect.get("orphans_failed", 0)
        failed = [r for r in accepted if items[r]["status"]["S"] == rq.FAILED]
        in_dlq = [r for r in accepted if items[r]["status"]["S"] in rq.OPEN]
        completed = [r for r in accepted if items[r]["status"]["S"] == rq.COMPLETED]
        assert (len(completed), len(failed), len(in_dlq)) == (
            N_SUBMITS - expect.get("failed", 0) - expect.get("results_dlq", 0), expect.get("failed", 0),
            expect.get("results_dlq", 0))                     # in == out
        assert expect.get("_gpu-requests-dlq", 0) == expect.get("requests_dlq", 0)
        assert expect.get("_gpu-results-dlq", 0) == expect.get("results_dlq", 0)
        assert expect.get("_gpu-requests", 0) == expect.get("_gpu-results", 0) == 0
        for rid in accepted:                                   # and the client reads each outcome
            status, body, _ = http(inference.handler(poll_event(load_event, rid), lambda_context))
            if rid in completed:
                assert status == 200 and body["outputs"] == ANSWER["outputs"]
            elif rid in failed:
                assert status == 200 and body["status"] == "failed" and body["error"]
            else:
                assert status == 202 and body["status"] == "pending"
        reset_settings()


FAILURES = key_starts("async/failures/")
CONTAINER_REASON = "input 'text': expected BYTES"
REASON_CASES = [   # expect: the reason the client reads, or the notification left in the DLQ
    case("result", Fault("s3", "GetObject", "SlowDown", when=FAILURES), reason=CONTAINER_REASON),
    case("result", Fault("s3", "GetObject", "InternalError", when=FAILURES), reason=CONTAINER_REASON),
    case("result", Fault("s3", "GetObject", READ_TIMEOUT, when=FAILURES), reason=CONTAINER_REASON),
    case("result", Fault("s3", "GetObject", "NoSuchKey", times=None, when=FAILURES),
         reason="the model failed to answer"),
    case("result", Fault("s3", "GetObject", "InternalError", times=None, when=FAILURES), reason=None),
]


@pytest.mark.parametrize(("faults", "expect"), REASON_CASES)
def test_a_failed_invocations_reason_is_not_lost_to_a_fault_reading_it(monkeypatch, faults, expect):
    """SageMaker's error notification: the container's reason is read from the failure object. A fault
    reading it retries the notification (then the DLQ, the request still pending); only a missing object
    gives the generic reason."""
    from tenantml.gpu import requests as rq

    with lambda_account(monkeypatch, "gpu_result"):
        definitions = (resources.function("gpu_result"),)
        rt = EventRuntime(local_functions(definitions, lambda d: handler_path(d.name)), AWS, NAMES,
                          definitions=definitions).provision()
        store = rq.RequestStore(boto3.client("dynamodb", region_name=AWS.region), REQUESTS)
        rid = rq.new_id()
        store.create(rq.AsyncRequest(tenant="acme", id=rid, owner="_shared", model="mpnet-embed", version="1",
                                     model_sha256="0" * 64, rows=2))
        assert store.dispatched("acme", rid, rid)
        failure = f"async/failures/{rid}-error.out"
        boto3.client("s3", region_name=AWS.region).put_object(
            Bucket=BUCKET, Key=failure, Body=json.dumps({"error": CONTAINER_REASON}))
        boto3.client("sqs", region_name=AWS.region).send_message(
            QueueUrl=rt.queue_urls["gpu-results"], MessageBody=json.dumps({
                "invocationStatus": "Failed", "inferenceId": rid,
                "failureReason": "ClientError: Received client error (400) from model.",
                "requestParameters": {"inputLocation": f"s3://{BUCKET}/{rq.input_key('acme', rid)}"},
                "responseParameters": {"failureLocation": f"s3://{BUCKET}/{failure}"}}))
        armed = fresh(faults)
        with inject(monkeypatch, *armed):
            rt.run_until_idle()
        rt.stop()
        assert all(f.injected >= 1 for f in armed)
        request = store.get("acme", rid)
        dlq = drain(rt.queue_urls["gpu-results-dlq"])
        if expect["reason"] is None:                       # retries spent: waits in the DLQ, still pending
            assert request.status == rq.DISPATCHED and len(dlq) == 1
            assert json.loads(dlq[0]["Body"])["inferenceId"] == rid
        else:
            assert (request.status, request.reason) == (rq.FAILED, expect["reason"]) and dlq == []


# =====================================================================================================
# feedback and inference: the inference function's own boundaries (registry, artifacts, feedback store,
# tenant credentials)
# =====================================================================================================

FEEDBACK = key_starts("feedback/")
NOT_STORED, UNAVAILABLE = "feedback could not be stored", "model unavailable"
FEEDBACK_CASES = [   # expect: the 503's message; objects stored beyond the accepted ones (an applied write
    #                  whose answer was lost)
    case("feedback", Fault("s3", "PutObject", "SlowDown", when=FEEDBACK), message=NOT_STORED),
    case("feedback", Fault("s3", "PutObject", "SlowDown", times=2, when=FEEDBACK), message=NOT_STORED),
    case("feedback", Fault("s3", "PutObject", "InternalError", when=FEEDBACK), message=NOT_STORED),
    case("feedback", Fault("s3", "PutObject", "ServiceUnavailable", when=FEEDBACK), message=NOT_STORED),
    case("feedback", Fault("s3", "PutObject", READ_TIMEOUT, when=FEEDBACK), message=NOT_STORED),
    case("feedback", Fault("s3", "PutObject", READ_TIMEOUT, applied=True, when=FEEDBACK), message=NOT_STORED,
         extra_objects=1),
    case("feedback", Fault("s3", "PutObject", CONNECT_TIMEOUT, when=FEEDBACK), message=NOT_STORED),
    case("feedback", Fault("dynamodb", "BatchGetItem", "ProvisionedThroughputExceededException"),
         message=UNAVAILABLE),
    case("feedback", Fault("sts", "AssumeRole", "Throttling"), message=UNAVAILABLE),
]


@pytest.mark.parametrize(("faults", "expect"), FEEDBACK_CASES)
def test_feedback_is_stored_or_refused_with_retry_after(monkeypatch, load_handler, lambda_context, load_event,
                                                        faults, expect):
    """N feedback posts -> each stored (202) or a clear 503 with Retry-After the client retries; the labels
    stored are exactly the labels accepted (a write applied whose answer was lost is a duplicate object,
    which the drift worker's join counts once: the latest label per (id, row) wins)."""
    from tenantml.monitoring.capture import decode_frame

    with lambda_account(monkeypatch, "inference"):
        sm.register(DynamoRegistry(REGISTRY, AWS), S3ArtifactStore(BUCKET, AWS), sm.tabular_version())
        fn = load_handler("inference")
        sent: set[tuple[str, int]] = set()
        accepted: set[tuple[str, int]] = set()
        armed = fresh(faults)
        with inject(monkeypatch, *armed):
            for i in range(N_POSTS := 3):
                e = copy.deepcopy(load_event("inference-feedback"))
                e["requestContext"]["authorizer"].update(tenant_id="acme",
                                                         scopes="models:read models:feedback")
                e["pathParameters"] = {"model": "project-risk"}
                e["path"] = "/v2/models/project-risk/feedback"
                items = [{"id": f"req-{i}", "index": row, "label": "high"} for row in range(2)]
                e["body"] = json.dumps({"feedback": items})
                sent |= {(f"req-{i}", row) for row in range(2)}
                for _attempt in range(3):
                    status, body, headers = http(fn.handler(e, lambda_context))
                    if status == 202:
                        assert body == {"model": "project-risk", "accepted": 2}
                        accepted |= {(f"req-{i}", row) for row in range(2)}
                        break
                    assert_clear_503(status, body, headers)
                    assert body["error"] == expect["message"]
        assert all(f.injected >= 1 for f in armed)
        assert accepted == sent                                    # every post accepted, after retries
        s3 = boto3.client("s3", region_name=AWS.region)
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="feedback/").get("Contents") or []]
        stored = set()
        for key in keys:
            frame = decode_frame(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
            stored |= {(r.decode(), int(row)) for r, row in zip(frame.request_ids, frame.numeric["__row"],
                                                                  strict=True)}
        assert stored == accepted                                  # stored = accepted, nothing lost
        assert len(keys) == N_POSTS + expect.get("extra_objects", 0)


MODEL_OBJECTS = key_starts("models/_shared/project-risk/")
INFERENCE_CASES = [
    case("inference", Fault("dynamodb", "BatchGetItem", "ProvisionedThroughputExceededException")),
    case("inference", Fault("dynamodb", "BatchGetItem", "InternalServerError")),
    case("inference", Fault("dynamodb", "BatchGetItem", READ_TIMEOUT)),
    case("inference", Fault("dynamodb", "BatchGetItem", CONNECT_TIMEOUT)),
    case("inference", Fault("dynamodb", "BatchGetItem", PARTIAL, times=None)),
    case("inference", Fault("dynamodb", "GetItem", "ProvisionedThroughputExceededException",
                            when=table_is(REGISTRY))),
    case("inference", Fault("s3", "GetObject", "SlowDown", when=MODEL_OBJECTS)),
    case("inference", Fault("s3", "GetObject", "InternalError", when=MODEL_OBJECTS)),
    case("inference", Fault("s3", "GetObject", READ_TIMEOUT, when=MODEL_OBJECTS)),
    case("inference", Fault("s3", "GetObject", CONNECT_TIMEOUT, when=MODEL_OBJECTS)),
    case("inference", Fault("sts", "AssumeRole", "Throttling")),
]


@pytest.mark.parametrize(("faults", "expect"), INFERENCE_CASES)
def test_inference_answers_503_with_retry_after_never_a_500(monkeypatch, load_handler, lambda_context,
                                                            load_event, faults, expect):
    """A registry, artifact or credentials fault is a 503 with Retry-After and one stable message, never
    a 500 or a stack trace; the failure is not cached: the client's retry is answered."""
    with lambda_account(monkeypatch, "inference"):
        sm.register(DynamoRegistry(REGISTRY, AWS), S3ArtifactStore(BUCKET, AWS), sm.tabular_version())
        fn = load_handler("inference")
        e = copy.deepcopy(load_event("inference-infer-risk"))
        e["requestContext"]["authorizer"]["tenant_id"] = "acme"
        armed = fresh(faults)
        with inject(monkeypatch, *armed):
            status, body, headers = http(fn.handler(e, lambda_context))
        assert all(f.injected >= 1 for f in armed)
        assert_clear_503(status, body, headers)
        assert body == {"error": "model unavailable"}              # one stable message, whatever the fault
        status, body, _ = http(fn.handler(e, lambda_context))      # the client's retry
        assert status == 200 and body["model_name"] == "project-risk", body

