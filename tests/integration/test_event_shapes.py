"""Every function, fed every real AWS event shape it may meet, its own trigger's and the others': REST v1
and HTTP API v2 proxy events, a Function URL event, base64 bodies that are not base64 or not UTF-8, SQS
with non-JSON bodies, an EventBridge Scheduler event whose `detail` is the string "{}", alarm events of
both shapes (metric and composite), DynamoDB stream records, TOKEN and REQUEST authorizer payloads of
both API flavours, and payloads that are not events at all.

Each must get a well-formed answer or a deliberate rejection, never an uncaught exception: an HTTP
function answers a proxy response with a JSON `{"error"}` body and no stack trace; a queue or stream
consumer answers its partial-batch report (a message it cannot read is a batch item failure: retried,
then its DLQ); the authorizer answers a policy or a simple response, and raises only the protocol's
`Unauthorized` (401) for a REST authorizer event without a bearer token; a scheduled or rule-triggered
function answers a summary. One moto account for the module; each handler loaded once, in its own
environment (cold start), and called with that environment, as Lambda does.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from moto import mock_aws
from moto_env import AWS, NAMES, use_function_environment
from proxy_events import v2_from_rest

from tenantml import resources
from tenantml.auth.devkeys import ensure_dev_keys
from tenantml.local.provision import create_resources
from tenantml.settings import reset_settings

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")
HTTP_FUNCTIONS = {r.function for r in resources.ROUTES}
ARN = "arn:aws:execute-api:us-east-1:123456789012:abcdef1234/prod"


def _function_url(rest: dict[str, Any]) -> dict[str, Any]:
    event = v2_from_rest(rest, authorizer=False)
    event["routeKey"] = event["requestContext"]["routeKey"] = "$default"
    event["requestContext"]["stage"] = "$default"
    event["requestContext"]["domainName"] = "abc.lambda-url.us-east-1.on.aws"
    event["rawPath"] = event["requestContext"]["http"]["path"] = rest["path"]
    return event


def _sqs(*bodies: str) -> dict[str, Any]:
    return {"Records": [{"messageId": f"m{i}", "receiptHandle": f"rh{i}", "body": body,
                         "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1796083200000",
                                        "SenderId": "AIDAEXAMPLE", "ApproximateFirstReceiveTimestamp": "1"},
                         "messageAttributes": {}, "md5OfBody": "0" * 32, "eventSource": "aws:sqs",
                         "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:q", "awsRegion": "us-east-1"}
                        for i, body in enumerate(bodies)]}


def _scheduler(detail: Any) -> dict[str, Any]:
    return {"version": "0", "id": "5a0c7e4b-1c0e-4c8e-9b1e-0a1b2c3d4e5f", "detail-type": "Scheduled Event",
            "source": "aws.scheduler", "account": "123456789012", "time": "2026-12-01T00:00:00Z",
            "region": "us-east-1",
            "resources": ["arn:aws:scheduler:us-east-1:123456789012:schedule/default/x"],
            "detail": detail}


def shapes(load_event) -> dict[str, Any]:
    rest = load_event("inference-list-models")
    infer = load_event("inference-infer-risk")
    bad_b64 = {**copy.deepcopy(infer), "body": "!!not base64!!", "isBase64Encoded": True}
    not_utf8 = {**copy.deepcopy(infer), "body": base64.b64encode(b"\xff\xfe{").decode(),
                "isBase64Encoded": True}
    authz = load_event("authorizer-request")
    return {
        "rest-v1": rest,
        "http-v2": v2_from_rest(rest),
        "http-v2-infer": v2_from_rest(infer),
        "function-url": _function_url(rest),
        "base64-not-base64": bad_b64,
        "base64-not-utf8": not_utf8,
        "sqs-non-json": _sqs("not json", "{\"tenant\": 1}"),
        "sqs-empty": {"Records": []},
        "scheduler-detail-string": _scheduler("{}"),
        "scheduler-detail-object": _scheduler({}),
        "alarm-metric": load_event("rollback-alarm-metric"),
        "alarm-composite": load_event("rollback-alarm-composite"),
        "dynamodb-stream": load_event("publisher-registry-stream"),
        "authorizer-rest-request": authz,
        "authorizer-rest-token": {"type": "TOKEN", "authorizationToken": "Bearer not.a.jwt",
                                  "methodArn": f"{ARN}/GET/v2/models"},
        "authorizer-http-v2": {"version": "2.0", "type": "REQUEST", "routeArn": f"{ARN}/GET/v2/models",
                               "identitySource": ["Bearer not.a.jwt"], "routeKey": "GET /v2/models",
                               "rawPath": "/prod/v2/models", "headers": {"authorization": "Bearer not.a.jwt"},
                               "requestContext": {"http": {"method": "GET"}, "stage": "prod"}},
        "empty-object": {},
        "not-an-object": ["a", "list"],
    }


@pytest.fixture(scope="module")
def account(tmp_path_factory) -> Iterator[dict[str, Any]]:
    keys = ensure_dev_keys(tmp_path_factory.mktemp("shapes") / "keys")
    with pytest.MonkeyPatch.context() as mp, mock_aws():
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        create_resources(AWS, NAMES)
        yield {"mp": mp, "auth": keys.auth_env(), "handlers": {}}
        reset_settings()


@pytest.fixture
def call(account, load_handler, lambda_context):
    def invoke(function: str, event: Any) -> Any:
        use_function_environment(account["mp"], function, account["auth"])
        handlers = account["handlers"]
        if function not in handlers:
            handlers[function] = load_handler(function)
        return handlers[function].handler(event, lambda_context)
    return invoke


def _is_rest_authorizer_event(event: Any) -> bool:
    return isinstance(event, dict) and event.get("type") in ("REQUEST", "TOKEN") \
        and event.get("version") != "2.0"


CASES = [(fn.name, shape) for fn in resources.FUNCTIONS for shape in (
    "rest-v1", "http-v2", "http-v2-infer", "function-url", "base64-not-base64", "base64-not-utf8",
    "sqs-non-json", "sqs-empty", "scheduler-detail-string", "scheduler-detail-object", "alarm-metric",
    "alarm-composite", "dynamodb-stream", "authorizer-rest-request", "authorizer-rest-token",
    "authorizer-http-v2", "empty-object", "not-an-object")]


@pytest.mark.parametrize(("function", "shape"), CASES, ids=[f"{f}-{s}" for f, s in CASES])
def test_every_function_answers_every_event_shape_deliberately(call, load_event, function, shape):
    event = shapes(load_event)[shape]
    try:
        out = call(function, copy.deepcopy(event))
    except Exception as exc:  # noqa: BLE001 - the assertion below says which, and why it is wrong
        allowed = function == "authorizer" and _is_rest_authorizer_event(event) and str(exc) == "Unauthorized"
        assert allowed, f"{function} raised {type(exc).__name__}: {exc} on a {shape} event"
        return
    json.dumps(out)                                  # a Lambda answer must serialize
    assert isinstance(out, dict), out
    if function in HTTP_FUNCTIONS:
        assert isinstance(out.get("statusCode"), int), out
        body = out.get("body") or ""
        assert "Traceback" not in body and "Error(" not in body, body
        if out["statusCode"] >= 400:
            assert set(json.loads(body)) == {"error"}, body
            assert out["statusCode"] < 500, out     # the client's event, not our fault
    elif function == "authorizer":
        assert "isAuthorized" in out or "policyDocument" in out, out
        if shape == "authorizer-http-v2":
            assert out == {"isAuthorized": False}
        elif "policyDocument" in out and shape not in ("authorizer-rest-request",):
            assert out["policyDocument"]["Statement"][0]["Effect"] == "Deny", out
    elif "batchItemFailures" in out:
        records = event.get("Records") if isinstance(event, dict) else None
        ids = {r.get("messageId") or r.get("eventID") for r in records or []}
        assert {f["itemIdentifier"] for f in out["batchItemFailures"]} <= ids, out


@pytest.mark.parametrize("function", ["drift_worker", "gpu_dispatch", "gpu_result"])
def test_a_message_that_cannot_be_read_is_a_batch_item_failure_not_a_lost_message(call, function):
    out = call(function, _sqs("not json", "{\"tenant\": 1}"))
    assert {f["itemIdentifier"] for f in out["batchItemFailures"]} == {"m0", "m1"}
