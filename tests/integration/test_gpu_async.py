"""The async (GPU) path through the real handlers on moto: submit (inference), gpu_dispatch, gpu_result and
the poll, fed the sample events in events/. SageMaker's runtime is botocore's Stubber on the dispatcher's
own client (moto's InvokeEndpointAsync answers a canned location and cannot fail on demand), and
SageMaker's side (the answer in S3, the SNS notification) is written as SageMaker writes it."""

from __future__ import annotations

import copy
import json
import os
import time

import boto3
import pytest
import serving_models as sm
from botocore.stub import Stubber
from moto import mock_aws
from moto_env import AWS, NAMES, use_function_environment

from tenantml.gpu import requests as rq
from tenantml.local.provision import create_resources
from tenantml.registry.dynamo import DynamoRegistry
from tenantml.registry.s3 import S3ArtifactStore
from tenantml.settings import reset_settings

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")
BUCKET = NAMES.buckets["artifacts"]
ENDPOINT = "tenantml-test-gpu"
TEXTS = ["The checkout page times out after the last deploy", "Add dark mode to the mobile app"]


def gpu_version(owner: str = "_shared", name: str = "mpnet-embed") -> sm.Version:
    v = sm.embedding_version(owner, name)
    return sm.Version(v.owner, v.manifest.model_copy(update={"backend": "gpu"}), v.artifacts, v.version)


class Account:
    """One moto account; `use(fn)` switches the process environment to that function's, as Lambda would
    run it, and `handler(fn)` loads its handler module fresh."""

    def __init__(self, monkeypatch, load_handler, lambda_context) -> None:
        self.monkeypatch, self._load, self.ctx = monkeypatch, load_handler, lambda_context
        self.s3 = boto3.client("s3", region_name=AWS.region)
        self.sqs = boto3.client("sqs", region_name=AWS.region)
        self.ddb = boto3.client("dynamodb", region_name=AWS.region)
        self._handlers: dict[str, object] = {}

    def handler(self, fn: str):
        if fn not in self._handlers:
            use_function_environment(self.monkeypatch, fn)
            if fn in ("inference", "gpu_dispatch"):
                self.monkeypatch.setenv("TENANTML_GPU_ENDPOINT_NAME", ENDPOINT)
                reset_settings()
            self._handlers[fn] = self._load(fn)
        else:
            use_function_environment(self.monkeypatch, fn)
            if fn in ("inference", "gpu_dispatch"):
                self.monkeypatch.setenv("TENANTML_GPU_ENDPOINT_NAME", ENDPOINT)
                reset_settings()
        return self._handlers[fn]

    def call(self, event: dict) -> tuple[int, dict, dict]:
        resp = self.handler("inference").handler(event, self.ctx)
        headers = {k: v[-1] for k, v in (resp.get("multiValueHeaders") or {}).items()}
        return resp["statusCode"], json.loads(resp["body"]), {**headers, **(resp.get("headers") or {})}

    def queued(self, queue: str = "gpu-requests") -> list[dict]:
        url = self.sqs.get_queue_url(QueueName=f"{NAMES.prefix}-{queue}")["QueueUrl"]
        out = []
        while True:
            got = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"],
                                           VisibilityTimeout=0).get("Messages") or []
            if not got:
                return out
            for m in got:
                self.sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
            out.extend(got)

    def request(self, tenant: str, rid: str) -> rq.AsyncRequest | None:
        return rq.RequestStore(self.ddb, NAMES.tables["requests"]).get(tenant, rid)


@pytest.fixture
def account(monkeypatch, load_handler, lambda_context):
    with mock_aws():
        create_resources(AWS, NAMES)
        registry = DynamoRegistry(NAMES.tables["registry"], AWS)
        store = S3ArtifactStore(BUCKET, AWS)
        for v in (gpu_version(), sm.tabular_version()):
            sm.register(registry, store, v)
        yield Account(monkeypatch, load_handler, lambda_context)
        reset_settings()


def submit_event(load_event, *, tenant: str = "acme", key: str | None = "7c0e5a36-checkout-retry-1",
                 texts: list[str] = TEXTS, model: str = "mpnet-embed") -> dict:
    e = copy.deepcopy(load_event("inference-infer-gpu"))
    e["requestContext"]["authorizer"]["tenant_id"] = tenant
    e["pathParameters"] = {"model": model}
    e["path"] = f"/v2/models/{model}/infer"
    e["requestContext"]["path"] = f"/v1/v2/models/{model}/infer"
    e["body"] = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)],
                                        "data": texts}]})
    for headers in (e["headers"], e["multiValueHeaders"]):
        headers.pop("Idempotency-Key", None)
    if key is not None:
        e["headers"]["Idempotency-Key"] = key
        e["multiValueHeaders"]["Idempotency-Key"] = [key]
    return e


def status_event(load_event, rid: str, tenant: str = "acme") -> dict:
    e = copy.deepcopy(load_event("inference-request-status"))
    e["requestContext"]["authorizer"]["tenant_id"] = tenant
    e["pathParameters"] = {"id": rid}
    e["path"] = f"/v2/requests/{rid}"
    return e


def sqs_event(messages: list[dict], queue: str) -> dict:
    return {"Records": [{"messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
                         "attributes": m.get("Attributes") or {"ApproximateReceiveCount": "1"},
                         "messageAttributes": {}, "md5OfBody": m["MD5OfBody"], "eventSource": "aws:sqs",
                         "eventSourceARN": f"arn:aws:sqs:us-east-1:123456789012:{queue}",
                         "awsRegion": "us-east-1"} for m in messages]}


def with_receive_count(event: dict, count: int) -> dict:
    e = copy.deepcopy(event)
    for r in e["Records"]:
        r["attributes"]["ApproximateReceiveCount"] = str(count)
    return e


def stub_invoke(dispatch_module, *responses):
    """Stub the dispatcher's own sagemaker-runtime client: each response is an InferenceId (success) or
    (error code, HTTP status, message)."""
    stubber = Stubber(dispatch_module.dispatch.runtime)
    for r in responses:
        if isinstance(r, str):
            stubber.add_response("invoke_endpoint_async", {
                "InferenceId": r, "OutputLocation": f"s3://{BUCKET}/async/output/{r}.out",
                "FailureLocation": f"s3://{BUCKET}/async/failures/{r}-error.out"})
        else:
            code, status, message = r
            stubber.add_client_error("invoke_endpoint_async", service_error_code=code,
                                     service_message=message, http_status_code=status)
    stubber.activate()
    return stubber


def notification(rid: str, tenant: str, *, status: str = "Completed", output: bytes | None = None,
                 failure: bytes | None = None) -> str:
    note = {"awsRegion": "us-east-1", "eventTime": "2026-11-30T10:57:03.608Z", "invocationStatus": status,
            "requestParameters": {"contentType": "application/json", "endpointName": ENDPOINT,
                                  "inputLocation": f"s3://{BUCKET}/{rq.input_key(tenant, rid)}"},
            "responseParameters": {"contentType": "application/json"}, "inferenceId": rid,
            "eventVersion": "1.0", "eventSource": "aws:sagemaker", "eventName": "InferenceResult"}
    s3 = boto3.client("s3", region_name="us-east-1")
    if output is not None:
        s3.put_object(Bucket=BUCKET, Key=f"async/output/{rid}.out", Body=output)
        note["responseParameters"]["outputLocation"] = f"s3://{BUCKET}/async/output/{rid}.out"
    if failure is not None:
        s3.put_object(Bucket=BUCKET, Key=f"async/failures/{rid}-error.out", Body=failure)
        note["responseParameters"]["failureLocation"] = f"s3://{BUCKET}/async/failures/{rid}-error.out"
        note["failureReason"] = ("ClientError: Received client error (400) from model. See the SageMaker "
                                 "Endpoint logs in your account for more information.")
    return json.dumps({"Type": "Notification", "MessageId": "m-1",
                       "TopicArn": "arn:aws:sns:us-east-1:123456789012:gpu", "Message": json.dumps(note)})


def result_event(load_event, body: str) -> dict:
    e = copy.deepcopy(load_event("gpu_result-notification"))
    e["Records"][0]["body"] = body
    return e


OIP_ANSWER = {"id": "ignored-by-the-test", "model_name": "mpnet-embed", "model_version": "1",
              "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [2, 2],
                           "data": [0.6, 0.8, 1, 0]}],
              "parameters": {"compute_ms": 3.5}}


# --- submit -----------------------------------------------------------------------------------------


def test_a_gpu_model_answers_202_with_a_location_and_queues_one_job(account, load_event):
    status, body, headers = account.call(submit_event(load_event))
    assert status == 202 and body["status"] == "pending"
    assert body["model_name"] == "mpnet-embed" and body["model_version"] == "1"
    rid = body["id"]
    assert rq.ID_RE.fullmatch(rid)
    assert headers["Location"] == f"/v1/v2/requests/{rid}"     # resolves against the stage the client called
    assert headers["Retry-After"] == "1"
    (msg,) = account.queued()
    assert json.loads(msg["Body"]) == {"tenant": "acme", "request_id": rid, "attempt": 0}
    stored = json.loads(account.s3.get_object(Bucket=BUCKET, Key=rq.input_key("acme", rid))["Body"].read())
    assert stored["id"] == rid and stored["inputs"][0]["data"] == TEXTS
    req = account.request("acme", rid)
    assert req.status == rq.QUEUED and req.owner == "_shared" and req.rows == 2


def test_an_idempotency_key_replays_the_first_answer_and_enqueues_once(account, load_event):
    first = account.call(submit_event(load_event))
    again = account.call(submit_event(load_event))
    assert again[0] == 202 and again[1]["id"] == first[1]["id"]
    assert len(account.queued()) == 1
    # the same key for a different request is refused; without a key every submit is new
    other = account.call(submit_event(load_event, texts=["something else"]))
    assert other[:2] == (422, {"error": "Idempotency-Key was already used for a different request"})
    a, b = (account.call(submit_event(load_event, key=None))[1]["id"] for _ in range(2))
    assert a != b


def test_idempotency_keys_are_per_tenant(account, load_event):
    acme = account.call(submit_event(load_event, tenant="acme"))[1]["id"]
    globex = account.call(submit_event(load_event, tenant="globex"))[1]["id"]
    assert acme != globex and len(account.queued()) == 2
    assert account.request("globex", acme) is None and account.request("globex", globex) is not None


def test_bad_input_is_refused_now_not_later(account, load_event):
    e = submit_event(load_event)
    e["body"] = json.dumps({"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]})
    status, body, _ = account.call(e)
    assert status == 400 and "datatype" in body["error"]
    e = submit_event(load_event)
    e["headers"]["Idempotency-Key"] = e["multiValueHeaders"]["Idempotency-Key"][0] = "x" * 300
    assert account.call(e)[:2] == (400, {"error": "Idempotency-Key must be 1 to 255 printable ASCII "
                                                  "characters"})
    assert account.queued() == []


# --- poll -------------------------------------------------------------------------------------------


def test_a_pending_request_is_202_and_another_tenant_gets_404_like_an_unknown_id(account, load_event):
    rid = account.call(submit_event(load_event))[1]["id"]
    status, body, headers = account.call(status_event(load_event, rid))
    assert (status, body["status"], headers["Retry-After"]) == (202, "pending", "1")
    foreign = account.call(status_event(load_event, rid, tenant="globex"))
    unknown = account.call(status_event(load_event, "0" * 32, tenant="globex"))
    garbage = account.call(status_event(load_event, "not-an-id", tenant="globex"))
    assert foreign[:2] == (404, {"error": f"request '{rid}' not found"})
    assert unknown[:2] == (404, {"error": f"request '{'0' * 32}' not found"})
    assert garbage[:2] == (404, {"error": "request 'not-an-id' not found"})


def test_polling_needs_the_read_scope(account, load_event):
    e = status_event(load_event, "0" * 32)
    e["requestContext"]["authorizer"]["scopes"] = "models:feedback"
    assert account.call(e)[:2] == (403, {"error": "missing scope 'models:read'"})


# --- the whole path ---------------------------------------------------------------------------------


def test_submit_dispatch_result_poll(account, load_event):
    rid = account.call(submit_event(load_event))[1]["id"]
    dispatch = account.handler("gpu_dispatch")
    stubber = stub_invoke(dispatch, rid)
    event = sqs_event(account.queued(), "gpu-requests")
    assert dispatch.handler(event, account.ctx) == {"batchItemFailures": []}
    stubber.assert_no_pending_responses()
    assert account.request("acme", rid).status == rq.DISPATCHED
    # a redelivery of the same job sends nothing again (the stubber has no response left to give)
    assert dispatch.handler(event, account.ctx) == {"batchItemFailures": []}

    result = account.handler("gpu_result")
    note = notification(rid, "acme", output=json.dumps(OIP_ANSWER).encode())
    assert result.handler(result_event(load_event, note), account.ctx) == {"batchItemFailures": []}
    req = account.request("acme", rid)
    assert req.status == rq.COMPLETED and req.compute_ms == 3.5
    status, body, _ = account.call(status_event(load_event, rid))
    assert status == 200 and body["outputs"] == OIP_ANSWER["outputs"]
    assert body["model_name"] == "mpnet-embed" and body["model_version"] == "1"
    # the same notification again records nothing twice
    before = account.s3.head_object(Bucket=BUCKET, Key=rq.result_key("acme", rid))["ETag"]
    assert result.handler(result_event(load_event, note), account.ctx) == {"batchItemFailures": []}
    assert account.request("acme", rid).updated_at == req.updated_at
    assert account.s3.head_object(Bucket=BUCKET, Key=rq.result_key("acme", rid))["ETag"] == before
    assert account.call(status_event(load_event, rid, tenant="globex"))[0] == 404


def test_a_failed_invocation_shows_the_containers_reason(account, load_event):
    rid = account.call(submit_event(load_event))[1]["id"]
    account.queued()
    result = account.handler("gpu_result")
    note = notification(rid, "acme", status="Failed",
                        failure=json.dumps({"error": "input 'text': expected BYTES"}).encode())
    assert result.handler(result_event(load_event, note), account.ctx) == {"batchItemFailures": []}
    status, body, _ = account.call(status_event(load_event, rid))
    assert status == 200
    assert body == {"id": rid, "status": "failed", "model_name": "mpnet-embed", "model_version": "1",
                    "error": "input 'text': expected BYTES"}


def test_a_notification_for_another_bucket_or_a_mismatched_id_is_ignored(account, load_event):
    rid = account.call(submit_event(load_event))[1]["id"]
    result = account.handler("gpu_result")
    note = json.loads(json.loads(notification(rid, "acme", output=b"{}"))["Message"])
    note["inferenceId"] = "f" * 32
    ok = {"batchItemFailures": []}
    assert result.handler(result_event(load_event, json.dumps(note)), account.ctx) == ok
    note["inferenceId"] = rid
    note["requestParameters"]["inputLocation"] = f"s3://someone-elses-bucket/{rq.input_key('acme', rid)}"
    assert result.handler(result_event(load_event, json.dumps(note)), account.ctx) == ok
    assert account.request("acme", rid).status == rq.QUEUED


# --- dispatch faults --------------------------------------------------------------------------------


def test_throttling_requeues_with_backoff_without_spending_the_receive_budget(account, load_event,
                                                                             monkeypatch):
    rid = account.call(submit_event(load_event))[1]["id"]
    dispatch = account.handler("gpu_dispatch")
    event = with_receive_count(sqs_event(account.queued(), "gpu-requests"), 4)
    stub_invoke(dispatch, ("ThrottlingException", 400, "Rate exceeded"),
                ("ServiceUnavailable", 503, "unavailable"),
                ("ValidationError", 400, f"Endpoint {ENDPOINT} is in Updating state, Endpoint is updating"))
    monkeypatch.setattr(dispatch.dispatch, "_rng", lambda: 0.0)    # the shortest backoff: 1 s
    url = account.sqs.get_queue_url(QueueName=f"{NAMES.prefix}-gpu-requests")["QueueUrl"]
    for attempt in range(3):
        # the message succeeds as a batch item (deleted), and a new job with attempt+1 is queued, delayed
        assert dispatch.handler(event, account.ctx) == {"batchItemFailures": []}
        counts = account.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        assert counts["ApproximateNumberOfMessagesDelayed"] == "1"
        assert counts["ApproximateNumberOfMessages"] == "0"
        time.sleep(1.1)
        (msg,) = account.queued()
        assert json.loads(msg["Body"])["attempt"] == attempt + 1
        assert msg["Attributes"]["ApproximateReceiveCount"] == "1"
        event = with_receive_count(sqs_event([msg], "gpu-requests"), 4)
    assert account.request("acme", rid).status == rq.QUEUED


def test_a_request_refused_for_itself_fails_at_its_last_receive(account, load_event):
    rid = account.call(submit_event(load_event))[1]["id"]
    dispatch = account.handler("gpu_dispatch")
    event = sqs_event(account.queued(), "gpu-requests")
    message_id = event["Records"][0]["messageId"]
    stub_invoke(dispatch, *[("ValidationError", 400, "Could not find endpoint")] * 2)
    failed = {"batchItemFailures": [{"itemIdentifier": message_id}]}
    assert dispatch.handler(with_receive_count(event, 1), account.ctx) == failed
    assert account.request("acme", rid).status == rq.QUEUED          # retried: not failed yet
    assert dispatch.handler(with_receive_count(event, 5), account.ctx) == failed   # -> the DLQ
    req = account.request("acme", rid)
    assert req.status == rq.FAILED and req.reason == "the GPU endpoint refused the request (ValidationError)"
    body = account.call(status_event(load_event, rid))[1]
    assert body["status"] == "failed" and "s3://" not in body["error"] and "arn:" not in body["error"]


def test_a_request_that_outlives_its_timeout_fails_instead_of_waiting_forever(account, load_event,
                                                                               monkeypatch):
    rid = account.call(submit_event(load_event))[1]["id"]
    dispatch = account.handler("gpu_dispatch")
    event = sqs_event(account.queued(), "gpu-requests")
    created = account.request("acme", rid).created_at
    monkeypatch.setattr(dispatch.dispatch, "_clock", lambda: created + 6 * 3600 + 1)
    assert dispatch.handler(event, account.ctx) == {"batchItemFailures": []}
    req = account.request("acme", rid)
    assert (req.status, req.reason) == (rq.FAILED, "timed out waiting for GPU capacity")


def test_without_an_endpoint_gpu_models_answer_503(monkeypatch, load_handler, lambda_context, load_event):
    with mock_aws():
        create_resources(AWS, NAMES)
        sm.register(DynamoRegistry(NAMES.tables["registry"], AWS), S3ArtifactStore(BUCKET, AWS),
                    gpu_version())
        use_function_environment(monkeypatch, "inference")
        assert "TENANTML_GPU_ENDPOINT_NAME" not in os.environ
        fn = load_handler("inference")
        resp = fn.handler(submit_event(load_event), lambda_context)
        headers = {**{k: v[-1] for k, v in (resp.get("multiValueHeaders") or {}).items()},
                   **(resp.get("headers") or {})}
        assert resp["statusCode"] == 503 and headers["Retry-After"] == "60"
        assert json.loads(resp["body"]) == {"error": "no GPU endpoint is deployed for this model"}
        reset_settings()


def test_backoff_grows_exponentially_with_full_jitter_up_to_sqs_maximum():
    from tenantml.gpu.dispatch import MAX_DELAY_S, backoff_s, classify

    assert [backoff_s(a, lambda: 1.0) for a in range(12)] == [2, 4, 8, 16, 32, 64, 128, 256, 512, 900,
                                                              900, 900]
    assert backoff_s(50, lambda: 0.0) == 1 and backoff_s(50, lambda: 0.5) == MAX_DELAY_S // 2
    from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

    def err(code: str, status: int, message: str = "") -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": message},
                            "ResponseMetadata": {"HTTPStatusCode": status}}, "InvokeEndpointAsync")

    transient = [err("ThrottlingException", 400), err("InternalFailure", 500), err("Whatever", 502),
                 err("ModelNotReadyException", 429), err("ValidationError", 400, "Endpoint x is updating"),
                 EndpointConnectionError(endpoint_url="https://runtime.sagemaker"),
                 ReadTimeoutError(endpoint_url="https://runtime.sagemaker")]
    refused = [err("ValidationError", 400, "Could not find endpoint x"), err("AccessDeniedException", 403),
               ValueError("boom")]
    assert [type(classify(e)).__name__ for e in transient] == ["Transient"] * len(transient)
    assert [type(classify(e)).__name__ for e in refused] == ["Refused"] * len(refused)
