"""The API Gateway emulator's request pipeline (`ApiGatewayEmulator.handle`), without sockets.

The functions behind it are small handler modules written to tmp_path and run through the same warm
environment (`LocalFunction`) local mode uses; the policy check is the real `tenantml.auth.policy`.
"""

from __future__ import annotations

import base64
import logging
import textwrap
from pathlib import Path

import pytest

from tenantml.local.apigw import ApiConfig, ApiGatewayEmulator, HttpRequest, proxy_response
from tenantml.local.context import LocalFunction
from tenantml.resources import ROUTES, FunctionDef, Route

ECHO = """
import json, time
def handler(event, context):
    return {"statusCode": 200, "headers": {"Content-Type": "application/json", "X-Fn": context.function_name},
            "body": json.dumps({"event": event, "remaining_ms": context.get_remaining_time_in_millis()})}
"""

AUTHORIZER = """
def _stage(arn):
    head, api_stage = arn.split("/")[0], arn.split("/")[1]
    return f"{head}/{api_stage}/*/*"

def handler(event, context):
    value = event["headers"].get("Authorization") or ""
    token = value.removeprefix("Bearer ")
    if token == "unauth":
        raise Exception("Unauthorized")
    if token == "boom":
        raise RuntimeError("keys unavailable")
    if token == "garbage":
        return {"hello": "world"}
    if token == "nested":
        allow = {"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": _stage(event["methodArn"])}
        return {"principalId": "u", "context": {"x": {"y": 1}},
                "policyDocument": {"Version": "2012-10-17", "Statement": [allow]}}
    if token == "deny":
        return {"principalId": "anonymous", "policyDocument": {"Version": "2012-10-17", "Statement": [
            {"Action": "execute-api:Invoke", "Effect": "Deny", "Resource": ["*"]}]}}
    if token == "narrow":  # allows only the method it was asked about
        resource = event["methodArn"]
    else:
        resource = _stage(event["methodArn"])
    tenant = token.removeprefix("allow-")
    return {"principalId": "user-1",
            "policyDocument": {"Version": "2012-10-17", "Statement": [
                {"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": [resource]}]},
            "context": {"tenant_id": tenant, "sub": "user-1", "scopes": "models:read", "n": 3}}
"""

BOOM = """
def handler(event, context):
    raise ValueError("secret detail s3://bucket/models/acme")
"""

MALFORMED = """
def handler(event, context):
    return {"body": "no status code"}
"""

SLOW = """
import time
def handler(event, context):
    time.sleep(2)
    return {"statusCode": 200, "body": "late"}
"""

BINARY = """
import base64
def handler(event, context):
    return {"statusCode": 201, "isBase64Encoded": True, "body": base64.b64encode(b"\\x00\\xffpng").decode(),
            "headers": {"Content-Type": "image/png", "X-One": "single", "X-Both": "from-headers"},
            "multiValueHeaders": {"Set-Cookie": ["a=1", "b=2"], "X-Both": ["from-multi"]}}
"""

TEST_ROUTES = (
    Route("GET", "/v2/health/live", "echo", auth=False),
    Route("GET", "/v2/models", "echo"),
    Route("GET", "/v2/models/{model}", "echo"),
    Route("GET", "/v2/models/special", "echo"),
    Route("POST", "/v2/models/{model}/infer", "echo"),
    Route("GET", "/files/{path+}", "echo", auth=False),
    Route("GET", "/boom", "boom", auth=False),
    Route("GET", "/malformed", "malformed", auth=False),
    Route("GET", "/slow", "slow", auth=False),
    Route("GET", "/binary", "binary", auth=False),
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _fn(tmp_path: Path, name: str, source: str, timeout_s: float = 5) -> LocalFunction:
    path = tmp_path / "functions" / name / "handler.py"
    path.parent.mkdir(parents=True)
    path.write_text(textwrap.dedent(source))
    return LocalFunction(FunctionDef(name, purpose="test", memory_mb=128, timeout_s=5), path,  # type: ignore[arg-type]
                         timeout_s=timeout_s)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def functions(tmp_path: Path) -> dict[str, LocalFunction]:
    return {
        "authorizer": _fn(tmp_path, "authorizer", AUTHORIZER),
        "echo": _fn(tmp_path, "echo", ECHO),
        "boom": _fn(tmp_path, "boom", BOOM),
        "malformed": _fn(tmp_path, "malformed", MALFORMED),
        "slow": _fn(tmp_path, "slow", SLOW, timeout_s=0.3),
        "binary": _fn(tmp_path, "binary", BINARY),
    }


@pytest.fixture
def api(functions, clock) -> ApiGatewayEmulator:
    return ApiGatewayEmulator(functions, routes=TEST_ROUTES, clock=clock,
                              config=ApiConfig(api_id="abc123def4", stage="v1", authorizer_ttl_s=300,
                                               max_body_bytes=1024))


def get(path: str, token: str | None = None, **kw) -> HttpRequest:
    headers = [("Host", "127.0.0.1:8080"), ("User-Agent", "pytest")]
    if token is not None:
        headers.append(("Authorization", f"Bearer {token}"))
    return HttpRequest("GET", path, headers=tuple(headers + list(kw.pop("headers", []))), **kw)


def event_of(resp) -> dict:
    assert resp.status == 200, resp.body
    return resp.json()["event"]


# -- routing ---------------------------------------------------------------------------------------------

def test_unknown_resource_and_method_answer_missing_authentication_token(api):
    for req in (get("/nope"), get("/v2/models/a/b/c"), HttpRequest("DELETE", "/v2/models")):
        resp = api.handle(req)
        assert resp.status == 404
        assert resp.json() == {"error": "route not found"}
        assert resp.header("x-amzn-ErrorType") == "MissingAuthenticationTokenException"
    assert api.authorizer_invocations == 0


def test_literal_segment_beats_parameter_and_greedy_parameter(api):
    special = event_of(api.handle(get("/v2/models/special", "allow-acme")))
    assert special["resource"] == "/v2/models/special" and special["pathParameters"] is None
    other = event_of(api.handle(get("/v2/models/minilm-embed", "allow-acme")))
    assert other["resource"] == "/v2/models/{model}"
    assert other["pathParameters"] == {"model": "minilm-embed"}
    greedy = event_of(api.handle(get("/files/a/b%20c.txt")))
    assert greedy["pathParameters"] == {"path": "a/b c.txt"}


def test_stage_prefix_is_optional(api):
    bare = event_of(api.handle(get("/v2/health/live")))
    staged = event_of(api.handle(get("/v1/v2/health/live")))
    for ev in (bare, staged):
        assert ev["path"] == "/v2/health/live"
        assert ev["requestContext"]["path"] == "/v1/v2/health/live"
        assert ev["requestContext"]["stage"] == "v1"


def test_project_routes_are_unambiguous():
    """Every route of the real API resolves to itself (no shadowing between templates)."""
    from tenantml.local.apigw import RouteTable, _segments

    table = RouteTable(ROUTES)
    for route in ROUTES:
        concrete = route.path.replace("{model}", "m1").replace("{version}", "3").replace("{alias}", "prod")
        matched = table.match(route.method, _segments(concrete))
        assert matched and matched[0] == route


# -- the proxy event -------------------------------------------------------------------------------------

def test_proxy_event_is_real_shaped(api):
    req = HttpRequest("POST", "/v2/models/minilm-embed/infer?a=1&a=2&b=x",
                      headers=(("Host", "127.0.0.1:8080"), ("Authorization", "Bearer allow-acme"),
                               ("Content-Type", "application/json"), ("X-Multi", "1"), ("X-Multi", "2")),
                      body=b'{"inputs": []}', source_ip="10.1.2.3", server_port=8080)
    ev = event_of(api.handle(req))
    assert ev["resource"] == "/v2/models/{model}/infer"
    assert ev["path"] == "/v2/models/minilm-embed/infer"
    assert ev["httpMethod"] == "POST"
    assert ev["headers"]["X-Multi"] == "2" and ev["multiValueHeaders"]["X-Multi"] == ["1", "2"]
    assert ev["headers"]["X-Forwarded-For"] == "10.1.2.3" and ev["headers"]["X-Forwarded-Port"] == "8080"
    assert ev["queryStringParameters"] == {"a": "2", "b": "x"}
    assert ev["multiValueQueryStringParameters"] == {"a": ["1", "2"], "b": ["x"]}
    assert ev["pathParameters"] == {"model": "minilm-embed"}
    assert ev["stageVariables"] is None
    # Binary media types */* (the CDK app's setting): every body arrives base64-encoded.
    assert base64.b64decode(ev["body"]) == b'{"inputs": []}' and ev["isBase64Encoded"] is True
    rc = ev["requestContext"]
    assert rc["accountId"] == "123456789012" and rc["apiId"] == "abc123def4" and rc["stage"] == "v1"
    assert rc["resourcePath"] == "/v2/models/{model}/infer" and rc["httpMethod"] == "POST"
    assert rc["identity"]["sourceIp"] == "10.1.2.3"
    assert isinstance(rc["requestTimeEpoch"], int) and rc["requestTimeEpoch"] > 1_600_000_000_000
    assert rc["requestId"] and rc["path"] == "/v1/v2/models/minilm-embed/infer"
    latency = rc["authorizer"]["integrationLatency"]
    assert isinstance(latency, int)
    assert rc["authorizer"] == {"tenant_id": "acme", "sub": "user-1", "scopes": "models:read", "n": 3,
                                "principalId": "user-1", "integrationLatency": latency}


def test_no_auth_route_has_no_authorizer_context_and_nulls(api):
    ev = event_of(api.handle(get("/v2/health/live")))
    assert "authorizer" not in ev["requestContext"]
    assert ev["queryStringParameters"] is None and ev["multiValueQueryStringParameters"] is None
    assert ev["pathParameters"] is None and ev["body"] is None and ev["isBase64Encoded"] is False


def test_binary_body_is_base64(api, functions):
    api.config = ApiConfig(api_id="abc123def4", stage="v1", max_body_bytes=1024,
                           binary_media_types=("application/octet-stream",))
    raw = b"\x00\x01\xfe\xff"
    for ctype in ("application/octet-stream", "text/plain"):  # declared binary, or not UTF-8 at all
        ev = event_of(api.handle(HttpRequest("POST", "/v2/models/m/infer", body=raw, headers=(
            ("Authorization", "Bearer allow-acme"), ("Content-Type", ctype)))))
        assert ev["isBase64Encoded"] is True and base64.b64decode(ev["body"]) == raw


def test_text_bodies_stay_text_without_a_catch_all_binary_type(api):
    api.config = ApiConfig(api_id="abc123def4", stage="v1", binary_media_types=("image/*",))
    ev = event_of(api.handle(HttpRequest("POST", "/v2/models/m/infer", body=b'{"a": 1}', headers=(
        ("Authorization", "Bearer allow-acme"), ("Content-Type", "application/json")))))
    assert ev["isBase64Encoded"] is False and ev["body"] == '{"a": 1}'


@pytest.mark.parametrize(("accept", "coding"), [
    ("gzip, deflate", "gzip"), ("deflate", "deflate"), ("gzip;q=0, deflate;q=0.5", "deflate"),
    ("br", None), ("", None)])
def test_responses_are_compressed_like_api_gateway(api, accept, coding):
    import gzip
    import zlib

    api.config = ApiConfig(api_id="abc123def4", stage="v1", minimum_compression_size=16)
    resp = api.handle(HttpRequest("GET", "/v2/health/live", headers=(("Accept-Encoding", accept),)))
    assert resp.header("Content-Encoding") == coding
    plain = {"gzip": gzip.decompress, "deflate": zlib.decompress, None: bytes}[coding](resp.body)
    assert resp.status == 200 and plain


def test_small_responses_are_not_compressed(api):
    api.config = ApiConfig(api_id="abc123def4", stage="v1", minimum_compression_size=1 << 20)
    resp = api.handle(HttpRequest("GET", "/v2/health/live", headers=(("Accept-Encoding", "gzip"),)))
    assert resp.header("Content-Encoding") is None


def test_handler_gets_a_lambda_context(api):
    resp = api.handle(get("/v2/health/live"))
    assert resp.header("X-Fn") == "tenantml-local-echo"
    assert 0 < resp.json()["remaining_ms"] <= 5000


# -- authorizer ------------------------------------------------------------------------------------------

def test_missing_authorization_is_401_without_calling_the_authorizer(api):
    resp = api.handle(get("/v2/models"))
    assert resp.status == 401 and resp.json() == {"error": "Unauthorized"}
    assert api.authorizer_invocations == 0


def test_allow_is_cached_per_token_and_applies_to_other_routes(api, functions):
    assert api.handle(get("/v2/models", "allow-acme")).status == 200
    assert api.authorizer_invocations == 1
    second = api.handle(HttpRequest("POST", "/v2/models/x/infer", body=b"{}",
                                    headers=(("Authorization", "Bearer allow-acme"),)))
    assert second.status == 200 and second.authorizer == "cached"
    assert event_of(second)["requestContext"]["authorizer"]["tenant_id"] == "acme"
    assert api.authorizer_invocations == 1 and api.authorizer_cache_hits == 1
    assert functions["authorizer"].invocations == 1
    # another token is another cache entry
    assert event_of(api.handle(get("/v2/models", "allow-globex")))["requestContext"]["authorizer"][
        "tenant_id"] == "globex"
    assert api.authorizer_invocations == 2


def test_cache_expires_after_ttl(api, clock):
    api.handle(get("/v2/models", "allow-acme"))
    clock.now += 299
    api.handle(get("/v2/models", "allow-acme"))
    assert api.authorizer_invocations == 1
    clock.now += 2
    api.handle(get("/v2/models", "allow-acme"))
    assert api.authorizer_invocations == 2


def test_ttl_zero_disables_the_cache(functions, clock):
    api = ApiGatewayEmulator(functions, routes=TEST_ROUTES, clock=clock,
                             config=ApiConfig(authorizer_ttl_s=0))
    api.handle(get("/v2/models", "allow-acme"))
    api.handle(get("/v2/models", "allow-acme"))
    assert api.authorizer_invocations == 2


def test_explicit_deny_is_403_and_cached(api, functions):
    for _ in range(2):
        resp = api.handle(get("/v2/models", "deny"))
        assert resp.status == 403
        assert resp.json() == {
            "error": "User is not authorized to access this resource with an explicit deny"}
    assert api.authorizer_invocations == 1
    assert functions["echo"].invocations == 0


def test_cached_policy_is_evaluated_against_the_new_method_arn(api):
    assert api.handle(get("/v2/models", "narrow")).status == 200
    resp = api.handle(get("/v2/models/special", "narrow"))  # cached policy names only GET /v2/models
    assert resp.status == 403
    assert resp.json() == {"error": "User is not authorized to access this resource"}
    assert api.authorizer_invocations == 1


def test_authorizer_unauthorized_is_401_and_not_cached(api):
    for _ in range(2):
        resp = api.handle(get("/v2/models", "unauth"))
        assert resp.status == 401 and resp.json() == {"error": "Unauthorized"}
    assert api.authorizer_invocations == 2


@pytest.mark.parametrize("token", ["boom", "garbage", "nested"])
def test_authorizer_failure_or_invalid_output_is_500(api, functions, token):
    resp = api.handle(get("/v2/models", token))
    assert resp.status == 500 and resp.json() == {"error": None}
    assert resp.header("x-amzn-ErrorType") == "AuthorizerConfigurationException"
    assert functions["echo"].invocations == 0


def test_method_arn_and_authorizer_event(api, functions):
    captured = {}
    original = functions["authorizer"].invoke

    def spy(event):
        captured.update(event)
        return original(event)

    functions["authorizer"].invoke = spy  # type: ignore[method-assign]
    api.handle(HttpRequest("POST", "/v1/v2/models/m1/infer?x=1", body=b"{}", headers=(
        ("Authorization", "Bearer allow-acme"),)))
    assert captured["type"] == "REQUEST"
    assert captured["methodArn"] == (
        "arn:aws:execute-api:us-east-1:123456789012:abc123def4/v1/POST/v2/models/m1/infer")
    assert captured["resource"] == "/v2/models/{model}/infer" and captured["path"] == "/v2/models/m1/infer"
    assert captured["headers"]["Authorization"] == "Bearer allow-acme"
    assert captured["queryStringParameters"] == {"x": "1"} and captured["pathParameters"] == {"model": "m1"}
    assert "authorizer" not in captured["requestContext"] and captured["requestContext"]["stage"] == "v1"
    assert "body" not in captured


# -- integration responses -------------------------------------------------------------------------------

def test_handler_exception_is_502_without_the_exception_text(api):
    resp = api.handle(get("/boom"))
    assert resp.status == 502 and resp.json() == {"error": "Internal server error"}
    assert b"s3://" not in resp.body and b"secret" not in resp.body


def test_malformed_proxy_response_is_502(api):
    resp = api.handle(get("/malformed"))
    assert resp.status == 502 and resp.json() == {"error": "Internal server error"}


def test_timeout_is_504_and_the_environment_is_replaced(api, functions):
    resp = api.handle(get("/slow"))
    assert resp.status == 504 and resp.json() == {"error": "Endpoint request timed out"}
    assert functions["slow"]._module is None


def test_binary_response_and_header_merge(api):
    resp = api.handle(get("/binary"))
    assert resp.status == 201 and resp.body == b"\x00\xffpng"
    assert resp.header("Content-Type") == "image/png"
    assert [v for k, v in resp.headers if k == "Set-Cookie"] == ["a=1", "b=2"]
    assert [v for k, v in resp.headers if k == "X-Both"] == ["from-multi"]
    assert resp.header("X-One") == "single" and resp.header("x-amzn-RequestId")


def test_body_over_the_cap_is_413(api, functions):
    resp = api.handle(HttpRequest("POST", "/v2/models/m/infer", body=b"x" * 1025,
                                  headers=(("Authorization", "Bearer allow-acme"),)))
    assert resp.status == 413 and resp.json() == {"error": "Request Too Long"}
    assert api.authorizer_invocations == 0 and functions["echo"].invocations == 0


@pytest.mark.parametrize("out", [
    None, [], {"statusCode": "abc"}, {"statusCode": 700}, {"statusCode": 200, "body": {"a": 1}},
    {"statusCode": 200, "body": "***", "isBase64Encoded": True}, {"statusCode": 200, "headers": []},
])
def test_proxy_response_validation(out):
    with pytest.raises(ValueError):
        proxy_response(out)


def test_access_log_line_carries_method_path_status_latency_and_tenant(api):
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    access = logging.getLogger("tenantml-local.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        api.handle(get("/v2/models?q=1", "allow-acme"))
    finally:
        access.removeHandler(handler)
    line = records[-1].getMessage()
    assert '"GET /v2/models"' in line and " 200 " in line and "ms " in line and "tenant=acme" in line
    assert "q=1" not in line and "allow-acme" not in line  # no query string, never the token
