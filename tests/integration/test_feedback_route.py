"""POST /v2/models/{model}/feedback through functions/inference/handler.py on moto, fed
events/inference-feedback.json: the scope, the stored object, tenancy and bad input."""

from __future__ import annotations

import copy
import json

import boto3
import pytest
import serving_models as sm
from moto_env import AWS, NAMES, lambda_account

from tenantml.monitoring.capture import decode_frame
from tenantml.registry.dynamo import DynamoRegistry
from tenantml.registry.s3 import S3ArtifactStore

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")


@pytest.fixture
def call(monkeypatch, load_handler, lambda_context):
    with lambda_account(monkeypatch, "inference"):
        registry = DynamoRegistry(NAMES.tables["registry"], AWS)
        store = S3ArtifactStore(NAMES.buckets["artifacts"], AWS)
        for v in (sm.embedding_version(), sm.tabular_version(), sm.classifier_version("acme")):
            sm.register(registry, store, v)
        fn = load_handler("inference")

        def invoke(event: dict) -> tuple[int, dict]:
            resp = fn.handler(event, lambda_context)
            return resp["statusCode"], json.loads(resp["body"])
        yield invoke


def feedback_objects() -> dict[str, bytes]:
    s3 = boto3.client("s3", region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=NAMES.buckets["artifacts"],
                                                 Prefix="feedback/").get("Contents") or []]
    return {k: s3.get_object(Bucket=NAMES.buckets["artifacts"], Key=k)["Body"].read() for k in keys}


def event(load_event, *, tenant: str = "acme", model: str = "project-risk", body=None,
          scopes: str = "models:read models:feedback") -> dict:
    e = copy.deepcopy(load_event("inference-feedback"))
    auth = e["requestContext"]["authorizer"]
    auth["tenant_id"], auth["scopes"] = tenant, scopes
    e["pathParameters"] = {"model": model}
    e["path"] = f"/v2/models/{model}/feedback"
    if body is not None:
        e["body"] = json.dumps(body)
    return e


def test_the_sample_event_stores_its_labels(call, load_event):
    assert call(event(load_event)) == (202, {"model": "project-risk", "accepted": 2})
    ((key, data),) = feedback_objects().items()
    assert key.startswith("feedback/tenant=acme/model=project-risk/date=")
    frame = decode_frame(data)
    codes, cats = frame.categorical["label"]
    assert frame.request_ids.tolist() == [b"req-risk-1", b"req-risk-1"]
    assert [cats[c] for c in codes] == ["low", "high"] and frame.numeric["__row"].tolist() == [0, 1]


def test_feedback_needs_its_scope(call, load_event):
    denied = call(event(load_event, scopes="models:read"))
    assert denied == (403, {"error": "missing scope 'models:feedback'"})
    assert feedback_objects() == {}


def test_another_tenants_model_answers_like_a_missing_one(call, load_event):
    foreign = call(event(load_event, tenant="globex", model="work-item-classifier"))
    missing = call(event(load_event, tenant="globex", model="no-such-model"))
    assert foreign == (404, {"error": "model 'work-item-classifier' not found"})
    assert missing == (404, {"error": "model 'no-such-model' not found"})
    assert feedback_objects() == {}


def test_a_foreign_request_id_is_answered_like_an_unknown_one(call, load_event):
    """globex sends labels for acme's request id and for an id nobody issued: the same answer, and both
    stored under globex, where no acme prediction can ever join them."""
    def labels(request_id: str) -> dict:
        return {"feedback": [{"id": request_id, "label": "x"}]}
    theirs = call(event(load_event, tenant="globex", body=labels("req-risk-1")))
    unknown = call(event(load_event, tenant="globex", body=labels("no-such-id")))
    assert theirs == unknown == (202, {"model": "project-risk", "accepted": 1})
    assert all(k.startswith("feedback/tenant=globex/") for k in feedback_objects())


@pytest.mark.parametrize(("body", "status", "message"), [
    ("not json", 400, "request body is not valid JSON"),
    ({"feedback": [{"id": "r1"}]}, 400, "invalid feedback: feedback[0]: Value error, give exactly one of "
                                        "label (classification) and value (regression)"),
    ({"labels": []}, 400, "invalid feedback: feedback: Field required"),
])
def test_bad_input_gets_a_stable_error(call, load_event, body, status, message):
    e = event(load_event)
    e["body"] = body if isinstance(body, str) else json.dumps(body)
    assert call(e) == (status, {"error": message})
