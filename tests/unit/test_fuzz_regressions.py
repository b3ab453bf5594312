"""One test per class of 5xx the API fuzzer (tests/e2e/test_fuzz.py) found: each is now a 400 in the one
error shape, with its own message.

1. The admin API read bodies with Powertools' `decoded_body`: a body flagged base64 that is not base64
   (binascii.Error), one whose bytes are not UTF-8 (UnicodeDecodeError: any binary body, as API Gateway
   passes every body base64-encoded) and a non-string body flagged base64 (TypeError) answered 500.
2. A non-string body flagged base64 answered 500 on the inference routes too (read_body).
3. Text that is not valid Unicode: a lone surrogate escaped in JSON ("\\ud800") in a BYTES input reached
   the tokenizer, whose TypeError answered 500.
"""

from __future__ import annotations

import base64
import copy
import gzip
import json

import numpy as np
import pytest
import serving_models as sm

from tenantml.api.body import NOT_BASE64, read_body, read_text
from tenantml.api.errors import ErrorBody
from tenantml.api.inference_routes import create_app as inference_app
from tenantml.api.registry_routes import create_app as registry_app
from tenantml.errors import BadRequest
from tenantml.manifest import TensorSpec
from tenantml.observability import metrics
from tenantml.registry.memory import MemoryArtifactStore, MemoryRegistry
from tenantml.registry.service import RegistrationService
from tenantml.serving import oip
from tenantml.serving.service import InferenceService
from tenantml.settings import ServingSettings

pytestmark = pytest.mark.filterwarnings("ignore:Dimension .* has already been added",
                                        "ignore:No application metrics to publish")

ALL_SCOPES = "models:read models:write models:feedback"
REGISTRY_EVENTS = ("registry-register-version", "registry-set-alias", "registry-rollout-start",
                   "rollout-action")
INFERENCE_EVENTS = ("inference-infer-risk", "inference-infer-version", "inference-feedback")


@pytest.fixture(autouse=True)
def _fresh_metrics():
    metrics.clear_metrics()
    yield
    metrics.clear_metrics()


def event_named(load_event, name: str) -> dict:
    if name == "rollout-action":      # no sample event of its own: the start event, re-routed
        event = load_event("registry-rollout-start")
        event["resource"] = "/admin/models/{model}/rollout/{action}"
        event["path"] += "/promote"
        event["requestContext"]["resourcePath"] = event["resource"]
        event["pathParameters"] = {**event["pathParameters"], "action": "promote"}
    else:
        event = load_event(name)
    event["requestContext"]["authorizer"]["scopes"] = ALL_SCOPES
    return event


def with_body(event: dict, body, b64) -> dict:
    event = copy.deepcopy(event)
    event["body"], event["isBase64Encoded"] = body, b64
    return event


@pytest.fixture
def registry_call(lambda_context):
    app = registry_app(RegistrationService(MemoryRegistry(), MemoryArtifactStore()))

    def call(event: dict) -> tuple[int, str]:
        out = app.resolve(event, lambda_context)
        return out["statusCode"], ErrorBody.model_validate_json(out["body"]).error if \
            out["statusCode"] >= 400 else out["body"]
    return call


@pytest.fixture
def inference_call(lambda_context):
    registry, store = sm.populated(MemoryArtifactStore(), MemoryRegistry())
    service = InferenceService(registry=registry, store=store, put_object=lambda key, data: None,
                               settings=ServingSettings(artifact_bucket="bucket", registry_table="table"))
    app = inference_app(service)

    def call(event: dict) -> tuple[int, str]:
        out = app.resolve(event, lambda_context)
        return out["statusCode"], ErrorBody.model_validate_json(out["body"]).error if \
            out["statusCode"] >= 400 else out["body"]
    return call


# --- 1. the admin API's bodies ---------------------------------------------------------------------

@pytest.mark.parametrize("name", REGISTRY_EVENTS)
@pytest.mark.parametrize(("body", "b64", "message"), [
    ("@@@ not base64", True, NOT_BASE64),
    ("abc", True, NOT_BASE64),                                          # bad padding
    (12345, True, NOT_BASE64),                                          # not a string at all
    (base64.b64encode(b"\xff\xfe{").decode(), True, "request body is not valid UTF-8"),
    (base64.b64encode(b'{"version": "\xe9"}').decode(), True, "request body is not valid UTF-8"),
    ('{"version": "\ud800"}', False, "request body is not valid UTF-8"),  # a lone surrogate, unescaped
])
def test_admin_bodies_that_are_not_base64_or_not_utf8_are_400(registry_call, load_event, name, body, b64,
                                                              message):
    status, error = registry_call(with_body(event_named(load_event, name), body, b64))
    assert (status, error) == (400, message)


def test_an_admin_body_is_decompressed_like_an_inference_body(registry_call, load_event):
    event = load_event("registry-set-alias")
    event["requestContext"]["authorizer"]["scopes"] = ALL_SCOPES
    plain = with_body(event, json.dumps({"nope": 1}), False)
    packed = with_body(event, base64.b64encode(gzip.compress(b'{"nope": 1}')).decode(), True)
    packed["headers"] = {**packed["headers"], "Content-Encoding": "gzip"}
    assert registry_call(packed) == registry_call(plain)
    assert registry_call(plain)[0] == 400 and "nope" in registry_call(plain)[1]


def test_an_empty_rollout_action_body_is_still_optional(registry_call, load_event):
    # past the body (no 400): the sample's model does not exist in the empty registry
    assert registry_call(with_body(event_named(load_event, "rollout-action"), None, False)) == \
        (404, "model 'churn-risk' not found")


def test_read_text():
    assert read_text({"body": base64.b64encode(b'{"a": 1}').decode(), "isBase64Encoded": True},
                     max_bytes=100) == '{"a": 1}'
    assert read_text({"body": "", "isBase64Encoded": False}, max_bytes=100) is None
    assert read_text({"body": None}, max_bytes=100) is None
    with pytest.raises(BadRequest, match="not valid UTF-8"):
        read_text({"body": base64.b64encode(b"\xc3\x28").decode(), "isBase64Encoded": True}, max_bytes=100)


# --- 2. a non-string body flagged base64 -----------------------------------------------------------

@pytest.mark.parametrize("body", [12345, ["e30="], {"a": "e30="}, True])
def test_a_body_flagged_base64_that_is_not_a_string_is_400(body):
    with pytest.raises(BadRequest, match="not valid base64"):
        read_body({"body": body, "isBase64Encoded": True}, max_bytes=1000)


@pytest.mark.parametrize("name", INFERENCE_EVENTS)
def test_inference_routes_answer_400_for_a_non_string_base64_body(inference_call, load_event, name):
    event = load_event(name)
    event["requestContext"]["authorizer"]["scopes"] = ALL_SCOPES
    assert inference_call(with_body(event, 12345, True)) == (400, NOT_BASE64)


def test_headers_that_are_not_an_object_are_ignored():
    assert read_body({"body": "{}", "headers": ["Content-Encoding", "br"]}, max_bytes=100).data == b"{}"


# --- 3. text that is not valid Unicode --------------------------------------------------------------

TEXT_SPEC = TensorSpec(name="text", datatype="BYTES", shape=[-1])


@pytest.mark.parametrize("texts", [["\ud800"], ["fine", "a\udfffb"], [["nested", "\udc80"]]])
def test_a_lone_surrogate_in_a_bytes_input_is_400(texts):
    flat = len(texts) if not isinstance(texts[0], list) else len(texts[0])
    shape = [flat] if not isinstance(texts[0], list) else [1, flat]
    body = json.dumps({"inputs": [{"name": "text", "shape": shape, "datatype": "BYTES", "data": texts}]})
    assert "\\ud" in body                    # json.dumps escapes it, as a client's encoder would
    req = oip.parse_infer_request(body, max_bytes=10_000)
    spec = TEXT_SPEC if len(shape) == 1 else TensorSpec(name="text", datatype="BYTES", shape=[-1, -1])
    with pytest.raises(BadRequest, match="not valid Unicode"):
        oip.decode_inputs(req, [spec], max_batch=8)


def test_surrogate_pairs_and_other_code_points_still_decode():
    texts = ["😀", "\ue000", "\x00", "é"]
    body = json.dumps({"inputs": [{"name": "text", "shape": [4], "datatype": "BYTES", "data": texts}]})
    req = oip.parse_infer_request(body, max_bytes=10_000)
    assert oip.decode_inputs(req, [TEXT_SPEC], max_batch=8)["text"].data == texts


def test_the_handler_answers_400_not_500_for_a_lone_surrogate(inference_call, load_event):
    event = load_event("inference-infer-embed")
    event["requestContext"]["authorizer"]["scopes"] = ALL_SCOPES
    body = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["\ud800"]}]})
    status, error = inference_call(with_body(event, body, False))
    assert status == 400 and "not valid Unicode" in error
    ok = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["😀 fine"]}]})
    status, answer = inference_call(with_body(event, ok, False))
    assert status == 200
    oip.InferResponse.model_validate_json(answer)
    assert np.isfinite(json.loads(answer)["outputs"][0]["data"]).all()
