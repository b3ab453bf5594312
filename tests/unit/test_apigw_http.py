"""The emulator as an HTTP API (`ApiConfig(flavour="http")`): payload format 2.0 proxy events, the v2
REQUEST authorizer with simple responses and its cache, and the HTTP API's own `{"message"}` errors.
Small handler modules stand behind it, as in test_apigw_emulator.py; the real functions are driven over
both flavours in tests/e2e/test_http_api.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_apigw_emulator import BOOM, ECHO, SLOW, _fn

from tenantml.local.apigw import ApiConfig, ApiGatewayEmulator, HttpRequest
from tenantml.local.context import LocalFunction
from tenantml.resources import Route

SIMPLE_AUTHORIZER = """
import json
CALLS = []
def handler(event, context):
    CALLS.append(event)
    token = (event["headers"].get("authorization") or "").removeprefix("Bearer ")
    if token == "boom":
        raise RuntimeError("keys unavailable")
    if token == "garbage":
        return {"principalId": "x"}
    if not token.startswith("allow-"):
        return {"isAuthorized": False}
    return {"isAuthorized": True, "context": {"tenant_id": token.removeprefix("allow-"), "sub": "u1",
                                              "scopes": "models:read", "event": json.dumps(event)}}
"""

ROUTES = (
    Route("GET", "/v2/health/live", "echo", auth=False),
    Route("GET", "/v2/models", "echo"),
    Route("POST", "/v2/models/{model}/infer", "echo"),
    Route("GET", "/boom", "boom", auth=False),
    Route("GET", "/slow", "slow", auth=False),
    Route("GET", "/cookies", "cookies", auth=False),
)

COOKIES = """
def handler(event, context):
    return {"statusCode": 200, "body": "{}", "cookies": ["a=1; Path=/", "b=2"],
            "headers": {"Content-Type": "application/json"}}
"""


@pytest.fixture
def functions(tmp_path: Path) -> dict[str, LocalFunction]:
    return {"authorizer": _fn(tmp_path, "authorizer", SIMPLE_AUTHORIZER), "echo": _fn(tmp_path, "echo", ECHO),
            "boom": _fn(tmp_path, "boom", BOOM), "slow": _fn(tmp_path, "slow", SLOW, timeout_s=0.3),
            "cookies": _fn(tmp_path, "cookies", COOKIES)}


@pytest.fixture
def api(functions) -> ApiGatewayEmulator:
    return ApiGatewayEmulator(functions, routes=ROUTES, config=ApiConfig(
        flavour="http", api_id="abc123def4", stage="v1", authorizer_ttl_s=300, max_body_bytes=1024))


def request(method: str, target: str, token: str | None = None, body: bytes = b"",
            headers: tuple[tuple[str, str], ...] = ()) -> HttpRequest:
    hdrs = [("Host", "127.0.0.1:8080"), ("User-Agent", "pytest"), *headers]
    if token is not None:
        hdrs.append(("Authorization", f"Bearer {token}"))
    return HttpRequest(method, target, tuple(hdrs), body)


def event_of(resp) -> dict:
    assert resp.status == 200, resp.body
    return resp.json()["event"]


def test_a_v2_proxy_event_with_the_authorizer_context_under_lambda(api):
    resp = api.handle(request("POST", "/v1/v2/models/m%20x/infer?a=1&a=2&b=", "allow-acme", b'{"x":1}',
                              (("Content-Type", "application/json"), ("X-Dup", "1"), ("x-dup", "2"),
                               ("Cookie", "c1=v1; c2=v2"))))
    event = event_of(resp)
    assert event["version"] == "2.0" and event["routeKey"] == "POST /v2/models/{model}/infer"
    assert event["rawPath"] == "/v1/v2/models/m%20x/infer" and event["rawQueryString"] == "a=1&a=2&b="
    assert event["queryStringParameters"] == {"a": "1,2", "b": ""}
    assert event["pathParameters"] == {"model": "m x"}
    assert event["headers"]["x-dup"] == "1,2" and "cookie" not in event["headers"]
    assert event["cookies"] == ["c1=v1", "c2=v2"]
    assert event["body"] == '{"x":1}' and event["isBase64Encoded"] is False
    rc = event["requestContext"]
    assert rc["http"]["method"] == "POST" and rc["http"]["path"] == event["rawPath"] and rc["stage"] == "v1"
    assert rc["authorizer"]["lambda"]["tenant_id"] == "acme"
    assert "principalId" not in rc["authorizer"]


def test_the_stage_is_part_of_raw_path_even_when_the_client_omits_it(api):
    assert event_of(api.handle(request("GET", "/v2/models", "allow-acme")))["rawPath"] == "/v1/v2/models"


def test_a_binary_body_arrives_base64_encoded(api):
    event = event_of(api.handle(request("POST", "/v2/models/m/infer", "allow-acme", b"\x00\xff",
                                        (("Content-Type", "application/octet-stream"),))))
    assert event["isBase64Encoded"] is True and event["body"] == "AP8="


def test_the_authorizer_gets_a_v2_request_event_and_its_answer_is_cached_per_token(api, functions):
    api.handle(request("GET", "/v2/models", "allow-acme"))
    api.handle(request("POST", "/v2/models/m/infer", "allow-acme", b"{}",
                       (("Content-Type", "application/json"),)))
    assert api.authorizer_invocations == 1 and api.authorizer_cache_hits == 1
    auth_event = json.loads(event_of(api.handle(request("GET", "/v2/models", "allow-acme")))[
        "requestContext"]["authorizer"]["lambda"]["event"])
    assert auth_event["version"] == "2.0" and auth_event["type"] == "REQUEST"
    assert auth_event["routeArn"] == "arn:aws:execute-api:us-east-1:123456789012:abc123def4/v1/GET/v2/models"
    assert auth_event["identitySource"] == ["Bearer allow-acme"]
    assert "body" not in auth_event


@pytest.mark.parametrize(("token", "status", "message"), [
    (None, 401, "Unauthorized"),              # no identity source: the authorizer is not invoked
    ("deny-me", 403, "Forbidden"),            # isAuthorized false
    ("boom", 500, "Internal Server Error"),   # the authorizer failed
    ("garbage", 500, "Internal Server Error"),  # not a simple response
])
def test_gateway_errors_are_the_http_apis_own(api, token, status, message):
    resp = api.handle(request("GET", "/v2/models", token))
    assert (resp.status, resp.json()) == (status, {"message": message})
    assert resp.header("x-amzn-ErrorType") is None


def test_a_denied_token_is_cached_too(api):
    api.handle(request("GET", "/v2/models", "deny-me"))
    assert api.handle(request("GET", "/v2/models", "deny-me")).status == 403
    assert api.authorizer_invocations == 1


@pytest.mark.parametrize(("target", "method", "status", "message"), [
    ("/nope", "GET", 404, "Not Found"),
    ("/boom", "GET", 500, "Internal Server Error"),
    ("/slow", "GET", 503, "Service Unavailable"),
])
def test_integration_failures_and_unknown_routes(api, target, method, status, message):
    resp = api.handle(request(method, target))
    assert (resp.status, resp.json()) == (status, {"message": message})


def test_oversized_body_is_413(api):
    resp = api.handle(request("POST", "/v2/models/m/infer", "allow-acme", b"x" * 2048))
    assert (resp.status, resp.json()) == (413, {"message": "Request Entity Too Large"})


def test_cookies_of_a_v2_response_become_set_cookie_headers_and_nothing_is_compressed(api):
    resp = api.handle(request("GET", "/cookies", headers=(("Accept-Encoding", "gzip"),)))
    assert [v for k, v in resp.headers if k == "Set-Cookie"] == ["a=1; Path=/", "b=2"]
    assert resp.header("Content-Encoding") is None


@pytest.mark.parametrize("event", [
    {"version": "2.0", "requestContext": {}, "rawPath": "/v2/models"},                      # no http
    {"version": "2.0", "requestContext": {"http": {}}, "rawPath": "/v2/models"},            # no method
    {"version": "2.0", "requestContext": {"http": {"method": "GET"}}},                      # no rawPath
    {"requestContext": {}, "httpMethod": "GET"},                                            # no path
    {"requestContext": {}, "path": "/v2/models"},                                           # no method
])
def test_an_event_missing_half_of_its_flavour_is_neither(event):
    from tenantml.api.flavours import event_flavour

    assert event_flavour(event) is None
