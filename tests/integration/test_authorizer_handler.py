"""The authorizer handler in-process, fed events/authorizer-request*.json, configured through environment
variables exactly as Lambda would be. Tokens are minted with the local dev keys."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import pytest

from tenantml.auth.devkeys import ensure_dev_keys
from tenantml.auth.policy import policy_allows
from tenantml.settings import reset_settings

ROOT = Path(__file__).resolve().parents[2]
PLACEHOLDER = "TOKEN_PLACEHOLDER"
STAGE = "arn:aws:execute-api:us-east-1:123456789012:abcdef1234/prod/*/*"
OTHER_ROUTE = "arn:aws:execute-api:us-east-1:123456789012:abcdef1234/prod/GET/v2/models"
ENV_KEYS = ("TENANTML_JWKS_JSON", "TENANTML_JWKS_URL", "TENANTML_ISSUER", "TENANTML_AUDIENCE")


@pytest.fixture(scope="module")
def dev_keys(tmp_path_factory):
    return ensure_dev_keys(tmp_path_factory.mktemp("authz") / "keys")


@pytest.fixture
def env(monkeypatch, dev_keys):
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    for key, value in dev_keys.auth_env().items():
        monkeypatch.setenv(key, value)
    reset_settings()
    yield monkeypatch
    reset_settings()


@pytest.fixture
def fn(env, load_handler):
    return load_handler("authorizer")  # fresh module: a cold start


class Records(logging.Handler):
    def __init__(self, formatter) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.fmt = formatter

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.fmt.format(record))


@pytest.fixture
def logs(fn):
    """Log lines as the function's Powertools Logger formats them (JSON)."""
    target = logging.getLogger("tenantml")
    rec = Records(fn.logger.registered_formatter)
    target.addHandler(rec)
    yield rec
    target.removeHandler(rec)


def with_token(event: dict, token: str) -> dict:
    assert PLACEHOLDER in event["headers"]["Authorization"]
    event["headers"]["Authorization"] = event["headers"]["Authorization"].replace(PLACEHOLDER, token)
    event["multiValueHeaders"]["Authorization"] = [event["headers"]["Authorization"]]
    return event


def test_valid_token_gets_a_stage_wide_allow(fn, dev_keys, load_event, lambda_context, logs):
    token = dev_keys.mint("acme", ["models:read"])
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    resp = fn.handler(with_token(load_event("authorizer-request"), token), lambda_context)
    assert resp == {
        "principalId": "dev-user",
        "policyDocument": {"Version": "2012-10-17", "Statement": [
            {"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": [STAGE]}]},
        "context": {"tenant_id": "acme", "sub": "dev-user", "scopes": "models:read",
                    "valid_until": str(exp + 60)},              # exp + leeway: the functions' deadline
    }
    # The cached policy lets the same token through on another route of the stage.
    assert policy_allows(resp, OTHER_ROUTE)
    lines = [json.loads(line) for line in logs.lines]
    allow = next(line for line in lines if line["message"] == "authorizer allow")
    assert allow["tenant"] == "acme" and allow["sub"] == "dev-user"
    assert allow["function_request_id"] == lambda_context.aws_request_id
    assert all(token not in line for line in logs.lines)


def test_es256_admin_token(fn, dev_keys, load_event, lambda_context):
    token = dev_keys.mint("globex", ["models:write", "models:read"], sub="ops", alg="ES256")
    resp = fn.handler(with_token(load_event("authorizer-request"), token), lambda_context)
    context = dict(resp["context"])
    assert context.pop("valid_until").isdigit()
    assert context == {"tenant_id": "globex", "sub": "ops", "scopes": "models:read models:write"}


def test_bad_token_event_gets_an_explicit_deny(fn, load_event, lambda_context, logs):
    event = load_event("authorizer-request-bad-token")
    token = event["headers"]["Authorization"].split()[1]
    resp = fn.handler(event, lambda_context)
    assert resp["principalId"] == "anonymous" and "context" not in resp
    assert resp["policyDocument"]["Statement"] == [
        {"Action": "execute-api:Invoke", "Effect": "Deny", "Resource": ["*"]}]
    assert not policy_allows(resp, event["methodArn"])
    deny = next(json.loads(line) for line in logs.lines if '"authorizer deny"' in line)
    assert deny["reason"] == "unknown_kid" and deny["tenant"] == "-"
    assert all(token not in line for line in logs.lines)


def test_unreplaced_placeholder_is_denied(fn, load_event, lambda_context):
    resp = fn.handler(load_event("authorizer-request"), lambda_context)
    assert resp["policyDocument"]["Statement"][0]["Effect"] == "Deny"


def test_expired_token_is_denied(fn, dev_keys, load_event, lambda_context, logs):
    import time
    token = dev_keys.mint("acme", now=time.time() - 3600, ttl=600)
    resp = fn.handler(with_token(load_event("authorizer-request"), token), lambda_context)
    assert resp["principalId"] == "anonymous"
    deny = next(json.loads(line) for line in logs.lines if '"authorizer deny"' in line)
    assert (deny["reason"], deny["tenant"]) == ("expired", "acme")


def test_missing_header_raises_unauthorized_for_a_401(fn, load_event, lambda_context):
    event = load_event("authorizer-request")
    del event["headers"]["Authorization"]
    del event["multiValueHeaders"]["Authorization"]
    with pytest.raises(Exception) as info:
        fn.handler(event, lambda_context)
    assert str(info.value) == "Unauthorized"


def test_settings_and_verifier_are_built_once_per_environment(fn, dev_keys, load_event, lambda_context):
    token = dev_keys.mint("acme")
    fn.handler(with_token(load_event("authorizer-request"), token), lambda_context)
    first = fn.verifier
    fn.handler(with_token(load_event("authorizer-request"), token), lambda_context)
    assert fn.verifier is first


def test_missing_settings_fail_the_init(env, load_handler):
    env.delenv("TENANTML_JWKS_JSON")
    reset_settings()
    with pytest.raises(ValueError, match="TENANTML_JWKS_URL or TENANTML_JWKS_JSON"):
        load_handler("authorizer")  # settings are parsed at init, like every function's


class _JwksServer:
    def __init__(self, body: bytes) -> None:
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server API
                outer.hits += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_jwks_fetched_over_http_once_and_cached(env, dev_keys, load_handler, load_event, lambda_context,
                                                tmp_path):
    server = _JwksServer(json.dumps(dev_keys.jwks()).encode())
    try:
        env.delenv("TENANTML_JWKS_JSON")
        env.setenv("TENANTML_JWKS_URL", server.url)
        reset_settings()
        fn = load_handler("authorizer")
        for tenant in ("acme", "globex", "initech"):
            token = dev_keys.mint(tenant)
            resp = fn.handler(with_token(load_event("authorizer-request"), token), lambda_context)
            assert resp["context"]["tenant_id"] == tenant
        # Unknown kid right after the first fetch: throttled (min refresh 60 s), no second fetch.
        other = ensure_dev_keys(tmp_path / "other-keys")
        resp = fn.handler(with_token(load_event("authorizer-request"), other.mint("acme")), lambda_context)
        assert resp["principalId"] == "anonymous"
        assert server.hits == 1
    finally:
        server.close()


COLD_START = r"""
import importlib.util, json, sys, time
t0 = time.perf_counter()
spec = importlib.util.spec_from_file_location("authorizer_handler", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
import_s = time.perf_counter() - t0
event = json.loads(open(sys.argv[2]).read())
event["headers"]["Authorization"] = "Bearer " + sys.argv[3]
class Ctx:
    function_name = "authorizer"; function_version = "$LATEST"; memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:authorizer"
    aws_request_id = "req-1"
t1 = time.perf_counter()
resp = mod.handler(event, Ctx())
first_call_s = time.perf_counter() - t1
heavy = sorted(m for m in ("boto3", "botocore.client", "botocore.session", "numpy", "onnxruntime",
                           "aws_xray_sdk", "tokenizers") if m in sys.modules)
print(json.dumps({"import_s": import_s, "first_call_s": first_call_s, "heavy": heavy,
                  "effect": resp["policyDocument"]["Statement"][0]["Effect"]}))
"""


def test_cold_start_imports_nothing_heavy(dev_keys):
    """A fresh interpreter, like a Lambda cold start: import the handler, answer one request."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTML_")}
    env.update(dev_keys.auth_env())
    out = subprocess.run(
        [sys.executable, "-c", COLD_START, str(ROOT / "functions/authorizer/handler.py"),
         str(ROOT / "events/authorizer-request.json"), dev_keys.mint("acme")],
        env=env, capture_output=True, text=True, timeout=60, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["effect"] == "Allow"
    assert result["heavy"] == []
    print(f"authorizer cold start: import {result['import_s'] * 1000:.0f} ms, "
          f"first call {result['first_call_s'] * 1000:.0f} ms")
