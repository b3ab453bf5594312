"""functions/inference/handler.py in-process on moto, fed events/inference-*.json, configured through the
environment exactly as Lambda would be (tenantml.local.provision.local_environment). Models are small but real
ONNX graphs/heads (tests/serving_models.py) registered through the real DynamoDB and S3 adapters under the
names the sample events use."""

from __future__ import annotations

import base64
import copy
import io
import json

import pytest
import serving_models as sm
from moto_env import AWS, NAMES, lambda_account

from tenantml.observability import logger
from tenantml.registry.dynamo import DynamoRegistry
from tenantml.registry.s3 import S3ArtifactStore
from tenantml.settings import reset_settings

# Health and metadata requests publish no metrics; Powertools warns about that once per invocation.
pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")
EVENTS = ["health-live", "health-ready", "server-metadata", "list-models", "model-metadata", "model-ready",
          "infer-embed", "infer-classifier", "infer-risk", "infer-version"]


@pytest.fixture
def aws(monkeypatch):
    with lambda_account(monkeypatch, "inference"):
        registry = DynamoRegistry(NAMES.tables["registry"], AWS)
        store = S3ArtifactStore(NAMES.buckets["artifacts"], AWS)
        for v in (sm.embedding_version(), sm.tabular_version(), sm.classifier_version("acme")):
            sm.register(registry, store, v)
        yield registry, store


@pytest.fixture
def call(aws, load_handler, lambda_context):
    fn = load_handler("inference")   # a fresh module: a cold start

    def invoke(event: dict) -> tuple[int, dict, dict]:
        resp = fn.handler(event, lambda_context)
        headers = {**(resp.get("headers") or {}),
                   **{k: v[-1] for k, v in (resp.get("multiValueHeaders") or {}).items()}}
        return resp["statusCode"], json.loads(resp["body"]), headers
    return invoke


def as_tenant(event: dict, tenant: str) -> dict:
    event = copy.deepcopy(event)
    event["requestContext"]["authorizer"]["tenant_id"] = tenant
    return event


def with_body(event: dict, body: str | None) -> dict:
    event = copy.deepcopy(event)
    event["body"] = body
    return event


@pytest.mark.parametrize("name", EVENTS)
def test_every_sample_event_succeeds(call, load_event, name):
    status, body, headers = call(load_event(f"inference-{name}"))
    assert status == 200, body
    assert headers["Content-Type"] == "application/json"


def test_sample_event_answers(call, load_event):
    assert call(load_event("inference-health-live"))[1] == {"live": True}
    assert call(load_event("inference-health-ready"))[1] == {"ready": True}
    assert call(load_event("inference-server-metadata"))[1]["name"] == "tenantml"
    models = call(load_event("inference-list-models"))[1]["models"]
    assert [m["name"] for m in models] == ["minilm-embed", "project-risk", "work-item-classifier"]
    meta = call(load_event("inference-model-metadata"))[1]
    assert meta["name"] == "work-item-classifier" and meta["versions"] == ["1"]
    assert call(load_event("inference-model-ready"))[1] == {"name": "minilm-embed", "ready": True}

    embed = call(load_event("inference-infer-embed"))[1]
    assert embed["id"] == "req-embed-1" and embed["model_version"] == "1"
    assert embed["outputs"][0]["name"] == "embedding" and embed["outputs"][0]["shape"] == [2, sm.DIM]

    cls = call(load_event("inference-infer-classifier"))[1]
    assert [o["name"] for o in cls["outputs"]] == ["category", "category_probs"]   # the event selects two
    assert cls["outputs"][1]["shape"] == [2, 3]
    assert set(cls["outputs"][0]["data"]) <= {"bug", "feature", "question"}

    risk = call(load_event("inference-infer-risk"))[1]
    assert [o["shape"] for o in risk["outputs"]] == [[2], [2, 3]]
    assert set(risk["outputs"][0]["data"]) <= set(sm.RISK_LABELS)

    version = call(load_event("inference-infer-version"))[1]
    assert version["model_name"] == "minilm-embed" and version["model_version"] == "1"


def test_another_tenants_model_is_a_404_like_a_missing_one(call, load_event):
    event = load_event("inference-infer-classifier")
    foreign = call(as_tenant(event, "globex"))
    missing = event["path"].replace("work-item-classifier", "no-such-model")
    absent = copy.deepcopy(as_tenant(event, "globex"))
    absent["path"], absent["pathParameters"]["model"] = missing, "no-such-model"
    absent = call(absent)
    assert foreign[0] == absent[0] == 404
    assert foreign[1] == {"error": "model 'work-item-classifier' not found"}
    assert absent[1] == {"error": "model 'no-such-model' not found"}
    assert "globex" not in json.dumps(foreign[1]) and "acme" not in json.dumps(foreign[1])
    meta = call(as_tenant(load_event("inference-model-metadata"), "globex"))
    assert meta[:2] == (404, {"error": "model 'work-item-classifier' not found"})
    # shared models still answer for the other tenant
    assert call(as_tenant(load_event("inference-infer-embed"), "globex"))[0] == 200


def test_without_an_authorizer_context_the_caller_is_unauthorized(call, load_event):
    event = load_event("inference-list-models")
    del event["requestContext"]["authorizer"]
    assert call(event)[:2] == (401, {"error": "unauthorized"})
    event = as_tenant(load_event("inference-infer-embed"), "Not A Tenant")
    assert call(event)[0] == 401


def test_unknown_route_and_method(call, load_event):
    event = load_event("inference-list-models")
    event["path"] = "/v2/nothing/here"
    assert call(event)[:2] == (404, {"error": "route not found"})
    event = load_event("inference-infer-embed")
    event["httpMethod"] = "DELETE"
    assert call(event)[0] == 404


@pytest.mark.parametrize("body,status,message", [
    ("{not json", 400, "request body is not valid JSON"),
    ('{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [NaN]}]}', 400,
     "malformed JSON body: NaN and Infinity are not allowed"),
    ('{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a"]}]}', 400,
     "input 'text' has 1 elements but shape [2] needs 2"),
    ('{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [1]}]}', 400,
     "input 'text' (BYTES) data must hold only strings"),
    ('{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [65], "data": []}]}', 413,
     "batch of 65 rows exceeds the limit of 64"),
    (None, 400, "request body is required"),
])
def test_bad_requests(call, load_event, body, status, message):
    assert call(with_body(load_event("inference-infer-embed"), body))[:2] == (status, {"error": message})


def test_base64_encoded_body_is_decoded(call, load_event):
    event = load_event("inference-infer-embed")
    event["body"] = base64.b64encode(event["body"].encode()).decode()
    event["isBase64Encoded"] = True
    assert call(event)[0] == 200


def test_corrupt_artifact_is_503_and_a_fixed_upload_is_served(aws, call, load_event):
    _, store = aws
    good = store.get("_shared", "project-risk", "1", "model.onnx")
    tampered = bytearray(good)
    tampered[-20] ^= 1   # a flipped bit in the weights: still a loadable graph, caught only by sha256
    store.put("_shared", "project-risk", "1", "model.onnx", bytes(tampered))
    status, body, headers = call(load_event("inference-infer-risk"))
    assert (status, body, headers["Retry-After"]) == (503, {"error": "model unavailable"}, "30")
    store.put("_shared", "project-risk", "1", "model.onnx", good)
    assert call(load_event("inference-infer-risk"))[0] == 200


def test_a_tampered_new_version_in_s3_is_refused_and_the_previous_version_keeps_serving(aws, call,
                                                                                      load_event):
    registry, store = aws
    sm.register(registry, store, sm.tabular_version(owner="_shared", version="2"))   # production -> 2
    tampered = bytearray(store.get("_shared", "project-risk", "2", "model.onnx"))
    tampered[-20] ^= 1
    store.put("_shared", "project-risk", "2", "model.onnx", bytes(tampered))
    status, body, _ = call(load_event("inference-infer-risk"))
    assert status == 200 and body["model_version"] == "1"
    pinned = copy.deepcopy(load_event("inference-infer-risk"))
    pinned["path"] = pinned["path"].replace("/infer", "/versions/2/infer")
    pinned["resource"] = "/v2/models/{model}/versions/{version}/infer"
    pinned["pathParameters"] = {"model": "project-risk", "version": "2"}
    assert call(pinned)[0] == 503                    # the tampered version itself is never served


@pytest.fixture
def log_lines(monkeypatch):
    """The JSON lines the Powertools logger writes (its handler keeps the stream it was created with)."""
    stream = io.StringIO()
    handler = logger.registered_handler
    previous = handler.setStream(stream)
    yield lambda: [json.loads(x) for x in stream.getvalue().splitlines() if x.startswith("{")]
    handler.setStream(previous)


def test_logs_carry_the_tenant_and_metrics_do_not(call, load_event, capsys, log_lines):
    capsys.readouterr()
    event = load_event("inference-infer-risk")
    call(event)
    logs = log_lines()
    loaded = [x for x in logs if x["message"] == "model loaded"]
    assert loaded
    assert all((x["tenant"], x["model"], x["version"]) == ("acme", "project-risk", "1") for x in loaded)
    assert all(x["correlation_id"] == event["requestContext"]["requestId"] for x in logs)
    emf = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith('{"_aws"')]
    request_emf = [x for x in emf if "InferenceLatency" in x]
    assert len(request_emf) == 1 and request_emf[0]["Rows"] == [2.0]
    assert any("ModelLoad" in x for x in emf)
    for blob in emf:
        assert "acme" not in json.dumps(blob) and "tenant" not in blob
        for dims in blob["_aws"]["CloudWatchMetrics"][0]["Dimensions"]:
            assert "tenant" not in dims and {"model", "version"} <= set(dims)
    # keys are cleared per request: a later health check logs no tenant/model
    n = len(logs)
    call(with_body(load_event("inference-infer-embed"), "{broken"))
    call(load_event("inference-health-live"))
    later = log_lines()[n:]
    failed = [x for x in later if x["message"] == "request failed"]
    assert failed and failed[0]["tenant"] == "acme" and failed[0]["status"] == 400
    logger.info("after")
    assert all("tenant" not in x and "model" not in x for x in log_lines()[-1:])


def test_preload_models_at_init(aws, monkeypatch, load_handler, log_lines):
    monkeypatch.setenv("TENANTML_PRELOAD_MODELS", "_shared/minilm-embed,acme/work-item-classifier")
    reset_settings()
    load_handler("inference")
    loaded = [x for x in log_lines() if x["message"] == "model loaded"]
    assert {x["load_model"] for x in loaded} == {"minilm-embed", "work-item-classifier"}


def test_requests_are_captured_as_frames_under_the_callers_tenant(aws, monkeypatch, load_handler, load_event,
                                                                   lambda_context):
    """With a frame per request (TENANTML_CAPTURE_MAX_ROWS=1) the tabular request lands in S3 as a frame
    under the calling tenant's partition, with the features by name and the predicted label."""
    import boto3

    from tenantml.monitoring.capture import decode_frame

    monkeypatch.setenv("TENANTML_CAPTURE_MAX_ROWS", "1")
    fn = load_handler("inference")
    event = as_tenant(load_event("inference-infer-risk"), "globex")
    resp = fn.handler(event, lambda_context)
    assert resp["statusCode"] == 200
    s3 = boto3.client("s3", region_name="us-east-1")
    (obj,) = s3.list_objects_v2(Bucket=NAMES.buckets["artifacts"], Prefix="capture/")["Contents"]
    assert obj["Key"].startswith("capture/tenant=globex/model=project-risk/version=1/date=")
    frame = decode_frame(s3.get_object(Bucket=NAMES.buckets["artifacts"], Key=obj["Key"])["Body"].read())
    answered = json.loads(resp["body"])["outputs"][0]["data"]
    assert set(frame.numeric) == set(sm.FEATURES) and frame.rows == len(answered)
    codes, labels = frame.categorical["prediction"]
    assert [labels[c] for c in codes] == answered
    # The id ground truth names the prediction by: the response's (here the client's own "req-risk-1";
    # without one, the API Gateway request id).
    assert frame.request_ids.tolist() == [json.loads(resp["body"])["id"].encode()] * len(answered)
    assert json.loads(resp["body"])["id"] == "req-risk-1"
    anonymous = as_tenant(load_event("inference-infer-risk"), "globex")
    anonymous["body"] = anonymous["body"].replace('"id": "req-risk-1", ', "")
    assigned = json.loads(fn.handler(anonymous, lambda_context)["body"])["id"]
    assert assigned == event["requestContext"]["requestId"]


def test_a_capture_failure_never_fails_the_prediction(aws, monkeypatch, load_handler, load_event,
                                                      lambda_context, capsys, caplog):
    monkeypatch.setenv("TENANTML_CAPTURE_MAX_ROWS", "1")
    fn = load_handler("inference")

    def broken(key, data):
        raise ConnectionError("S3 is down")

    fn.service.capture._put = broken
    resp = fn.handler(load_event("inference-infer-risk"), lambda_context)
    assert resp["statusCode"] == 200
    assert '"CaptureFailures":[1.0]' in capsys.readouterr().out
    assert "capture failed" in caplog.text


def test_capture_rate_zero_captures_nothing(aws, monkeypatch, load_handler, load_event, lambda_context):
    import boto3

    monkeypatch.setenv("TENANTML_CAPTURE_MAX_ROWS", "1")
    monkeypatch.setenv("TENANTML_CAPTURE_RATE", "0")
    fn = load_handler("inference")
    assert fn.handler(load_event("inference-infer-risk"), lambda_context)["statusCode"] == 200
    listed = boto3.client("s3", region_name="us-east-1").list_objects_v2(Bucket=NAMES.buckets["artifacts"],
                                                                         Prefix="capture/")
    assert "Contents" not in listed


def test_text_models_capture_their_derived_features_into_frames(aws, monkeypatch, load_handler, load_event,
                                                                 lambda_context):
    """Both text models registered with a baseline.json (a text projection): each request lands in S3 as a
    frame holding token_count, unknown_token_rate and embedding_pc1..3, computed from the tokenization
    and the embedding the model ran (checked against the tokenizer and a numpy twin of the encoder), and
    the classifier's first label output as `prediction`."""
    import boto3
    import numpy as np

    from tenantml.monitoring import Baseline
    from tenantml.monitoring.capture import decode_frame

    registry, store = aws
    sm.register(registry, store, sm.with_text_baseline(sm.embedding_version(version="2")))
    sm.register(registry, store, sm.with_text_baseline(sm.classifier_version("acme", version="2")))
    monkeypatch.setenv("TENANTML_CAPTURE_MAX_ROWS", "1")
    fn = load_handler("inference")
    s3 = boto3.client("s3", region_name="us-east-1")
    bucket = NAMES.buckets["artifacts"]
    for name, owner, model in (("infer-embed", "_shared", "minilm-embed"),
                               ("infer-classifier", "acme", "work-item-classifier")):
        event = load_event(f"inference-{name}")
        texts = json.loads(event["body"])["inputs"][0]["data"]
        resp = fn.handler(event, lambda_context)
        assert resp["statusCode"] == 200 and json.loads(resp["body"])["model_version"] == "2"
        (obj,) = s3.list_objects_v2(Bucket=bucket, Prefix=f"capture/tenant=acme/model={model}/version=2/")[
            "Contents"]
        frame = decode_frame(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())
        baseline = Baseline.model_validate_json(store.get(owner, model, "2", "baseline.json"))
        tokens, unknown = sm.tiny_tokens(texts)
        coords = baseline.text.projection.project(sm.tiny_embed(texts))
        assert frame.rows == len(texts) and set(frame.numeric) == set(baseline.numeric)
        assert frame.numeric["token_count"].tolist() == tokens.tolist()
        np.testing.assert_allclose(frame.numeric["unknown_token_rate"], unknown / np.maximum(tokens, 1),
                                   atol=1e-7)
        for k in (1, 2, 3):
            np.testing.assert_allclose(frame.numeric[f"embedding_pc{k}"], coords[:, k - 1], atol=1e-5)
        if model == "work-item-classifier":
            codes, labels = frame.categorical["prediction"]
            answered = {o["name"]: o["data"] for o in json.loads(resp["body"])["outputs"]}
            assert [labels[c] for c in codes] == answered["category"]
        else:
            assert frame.categorical == {}


def test_the_function_reads_the_registry_and_models_as_the_requesting_tenant(call, load_event):
    """Its environment names its tenant data role; each tenant's first request assumes it once, tagged
    with that tenant (moto's STS records the sessions; the policies are proven in
    tests/infrastructure/test_tenant_boundary.py)."""
    from moto.sts.models import sts_backends

    assert call(load_event("inference-infer-classifier"))[0] == 200          # acme
    assert call(as_tenant(load_event("inference-infer-embed"), "globex"))[0] == 200
    assert call(load_event("inference-infer-risk"))[0] == 200                # acme again: cached session
    sessions = [(r.role_arn, r.session_name) for r in sts_backends["123456789012"]["aws"].assumed_roles]
    role = NAMES.tenant_role_arn("inference")
    assert sessions == [(role, "tenantml-acme"), (role, "tenantml-globex")]


def test_a_tenant_over_its_rate_limit_gets_429_and_another_tenant_does_not(aws, monkeypatch, load_handler,
                                                                         load_event, lambda_context):
    monkeypatch.setenv("TENANTML_TENANT_RATE_LIMIT", "3")
    monkeypatch.setenv("TENANTML_TENANT_RATE_LEASE", "1")
    reset_settings()
    fn = load_handler("inference")
    event = load_event("inference-list-models")
    noisy = [fn.handler(copy.deepcopy(event), lambda_context) for _ in range(10)]
    statuses = [r["statusCode"] for r in noisy]
    # 3 per second: at most two windows in these few milliseconds, so at most 6 admitted
    assert statuses.count(200) <= 6 and statuses.count(429) >= 4 and set(statuses) == {200, 429}
    refused = next(r for r in noisy if r["statusCode"] == 429)
    multi = refused.get("multiValueHeaders") or {}
    headers = {**(refused.get("headers") or {}), **{k: v[-1] for k, v in multi.items()}}
    assert headers["Retry-After"] == "1"
    assert json.loads(refused["body"]) == {
        "error": "too many requests for this tenant; retry after the Retry-After delay"}
    quiet = fn.handler(as_tenant(event, "globex"), lambda_context)
    assert quiet["statusCode"] == 200
    assert fn.handler(load_event("inference-health-live"), lambda_context)["statusCode"] == 200  # no limit
