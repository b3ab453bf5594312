"""Regression tests for the tenancy and integrity protections ("defence in depth").

Each test here was checked by removing the protection it names (a deliberate mutation of the code) and
seeing it fail; the mutation it kills is in its docstring. The neighbouring suites (test_service.py,
test_registry_routes.py, test_auth_*.py, test_apigw_emulator.py) cover the ordinary paths; these cover
what those left unasserted.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import textwrap
from pathlib import Path

import jwt
import numpy as np
import pytest
import serving_models as sm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import RSAAlgorithm

from tenantml.api import inference_routes, registry_routes
from tenantml.api.context import caller_from_event
from tenantml.errors import IntegrityError, TenantMLError, Unauthorized
from tenantml.observability import metrics
from tenantml.registry import ModelSummary
from tenantml.registry.memory import MemoryArtifactStore, MemoryRegistry
from tenantml.registry.service import RegistrationService
from tenantml.serving.service import InferenceService
from tenantml.settings import ServingSettings

pytestmark = pytest.mark.filterwarnings("ignore:Dimension .* has already been added")

TEXTS = ["the login page fails", "add dark mode"]
FAR_FUTURE = "4102444800"
GENERIC_500 = json.dumps({"error": "internal error"})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def _fresh_metrics():
    metrics.clear_metrics()
    yield
    metrics.clear_metrics()


def settings(**kw) -> ServingSettings:
    return ServingSettings(artifact_bucket="bucket", registry_table="table", **kw)


def text_body(texts=TEXTS) -> str:
    return sm.infer_body("text", "BYTES", [len(texts)], list(texts))


def risk_body() -> str:
    return sm.infer_body("features", "FP32", [1, len(sm.FEATURES)], [[0.0] * len(sm.FEATURES)])


def authorizer(tenant: str | None = "acme", scopes: str = "models:read", **extra) -> dict:
    ctx = {"principalId": "user-1", "sub": "user-1", "scopes": scopes, "valid_until": FAR_FUTURE,
           "integrationLatency": 3, **extra}
    if tenant is not None:
        ctx["tenant_id"] = tenant
    return ctx


def api_event(method: str, path: str, *, auth: dict | None, body: str | None = None,
              headers: dict[str, str] | None = None, query: dict[str, str] | None = None) -> dict:
    """A REST API (v1) proxy event; `auth` is requestContext.authorizer (None: no authorizer at all)."""
    hdrs = {"Host": "api.example.com", "Content-Type": "application/json", **(headers or {})}
    rc = {"accountId": "123456789012", "apiId": "abc123", "stage": "v1", "httpMethod": method,
          "path": f"/v1{path}", "requestId": "req-1", "identity": {"sourceIp": "203.0.113.10"}}
    if auth is not None:
        rc["authorizer"] = auth
    return {"resource": path, "path": path, "httpMethod": method, "headers": hdrs,
            "multiValueHeaders": {k: [v] for k, v in hdrs.items()},
            "queryStringParameters": query, "multiValueQueryStringParameters":
                {k: [v] for k, v in query.items()} if query else None,
            "pathParameters": None, "stageVariables": None, "requestContext": rc,
            "body": body, "isBase64Encoded": False}


def resolve(app, event: dict, lambda_context) -> dict:
    return app.resolve(copy.deepcopy(event), lambda_context)


def service_over(registry, store, clock=None, **kw) -> InferenceService:
    return InferenceService(registry=registry, store=store, settings=settings(), timer=clock or Clock(), **kw)


def error_of(fn, *args) -> TenantMLError:
    with pytest.raises(TenantMLError) as exc:
        fn(*args)
    return exc.value


# --- 1. the tenant never comes from a header or a query parameter ------------------------------------

SPOOF_HEADERS = {"X-Tenant-Id": "acme", "tenant_id": "acme", "x-tenant-id": "acme", "Tenant": "acme"}
SPOOF_QUERY = {"tenant_id": "acme", "tenant": "acme", "X-Tenant-Id": "acme"}

NO_TENANT_AUTHORIZERS = [
    pytest.param(None, id="no-authorizer"),
    pytest.param({}, id="empty-authorizer"),
    pytest.param(authorizer(None), id="authorizer-without-tenant"),
    pytest.param({"lambda": authorizer(None)}, id="http-api-context-without-tenant"),
    pytest.param(authorizer(""), id="empty-tenant"),
]


@pytest.mark.parametrize("auth", NO_TENANT_AUTHORIZERS)
def test_caller_never_takes_the_tenant_from_headers_or_query(auth):
    """Kills: caller_from_event falling back to a header / query parameter (or the body) for the tenant."""
    event = api_event("GET", "/v2/models", auth=auth, headers=SPOOF_HEADERS, query=SPOOF_QUERY,
                      body=json.dumps({"tenant_id": "acme"}))
    event["pathParameters"] = {"tenant_id": "acme"}
    with pytest.raises(Unauthorized):
        caller_from_event(event, now=1000.0)


@pytest.fixture
def inference_app():
    registry, store = sm.populated()
    return inference_routes.create_app(service_over(registry, store))


@pytest.fixture
def registry_app():
    registry, store = sm.populated()
    return registry_routes.create_app(RegistrationService(registry, store))


@pytest.mark.parametrize("auth", NO_TENANT_AUTHORIZERS)
@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/v2/models", None),
    ("GET", "/v2/models/work-item-classifier", None),
    ("POST", "/v2/models/work-item-classifier/infer", text_body()),
])
def test_inference_app_answers_401_to_a_spoofed_tenant(inference_app, lambda_context, auth, method, path,
                                                       body):
    """Kills: the same fallback, seen through the inference function's routes."""
    event = api_event(method, path, auth=auth, body=body, headers=SPOOF_HEADERS, query=SPOOF_QUERY)
    resp = resolve(inference_app, event, lambda_context)
    assert resp["statusCode"] == 401, resp["body"]
    assert "work-item-classifier" not in resp["body"] and "minilm" not in resp["body"]
    # the control: the same request with the tenant in the authorizer context is served
    ok = api_event(method, path, auth=authorizer("acme"), body=body)
    assert resolve(inference_app, ok, lambda_context)["statusCode"] == 200


@pytest.mark.parametrize("auth", NO_TENANT_AUTHORIZERS)
@pytest.mark.parametrize(("method", "path"), [("GET", "/admin/models"),
                                              ("GET", "/admin/models/work-item-classifier/versions")])
def test_registry_app_answers_401_to_a_spoofed_tenant(registry_app, lambda_context, auth, method, path):
    """Kills: the same fallback, seen through the registry (admin) function's routes."""
    if auth:  # holding the route's scope: only the missing tenant is wrong
        auth = {"lambda": {**auth["lambda"], "scopes": "models:write"}} if "lambda" in auth else \
            {**auth, "scopes": "models:write"}
    event = api_event(method, path, auth=auth, headers=SPOOF_HEADERS, query=SPOOF_QUERY)
    resp = resolve(registry_app, event, lambda_context)
    assert resp["statusCode"] == 401, resp["body"]
    assert "work-item-classifier" not in resp["body"]
    ok = api_event(method, path, auth=authorizer("acme", scopes="models:write"))
    assert resolve(registry_app, ok, lambda_context)["statusCode"] == 200


# --- 2. a foreign model's 404 is byte-identical to a missing one's ------------------------------------

FOREIGN = "work-item-classifier"        # acme's model; globex asks for it
FOREIGN_ROUTES = [
    ("GET", f"/v2/models/{FOREIGN}", None),
    ("GET", f"/v2/models/{FOREIGN}/versions/1", None),
    ("GET", f"/v2/models/{FOREIGN}/ready", None),
    ("GET", f"/v2/models/{FOREIGN}/versions/1/ready", None),
    ("POST", f"/v2/models/{FOREIGN}/infer", text_body()),
    ("POST", f"/v2/models/{FOREIGN}/versions/1/infer", text_body()),
    ("POST", f"/v2/models/{FOREIGN}/feedback", json.dumps({"feedback": [{"id": "r1", "label": "bug"}]})),
]


class LeakyRegistry:
    """An adapter with a tenancy bug: answers every tenant with acme's models (resolve and list)."""

    def __init__(self, inner: MemoryRegistry) -> None:
        self.inner = inner

    def resolve(self, tenant, model, version=None):
        return self.inner.resolve("acme", model, version)

    def list_models(self, tenant):
        return self.inner.list_models("acme")


def _missing_world():
    """The same world without acme's classifier: the name exists nowhere."""
    registry, store = MemoryRegistry(), MemoryArtifactStore()
    for v in (sm.embedding_version(), sm.tabular_version()):
        sm.register(registry, store, v)
    return registry, store


def _comparable(resp: dict) -> dict:
    """The whole proxy response, less request ids (none are expected, but they would differ)."""
    out = copy.deepcopy(resp)
    for key in ("headers", "multiValueHeaders"):
        for name in list(out.get(key) or {}):
            if name.lower() in ("x-request-id", "x-amzn-requestid"):
                del out[key][name]
    return out


@pytest.mark.parametrize("leaky", [False, True], ids=["memory-registry", "leaky-adapter"])
@pytest.mark.parametrize(("method", "path", "body"), FOREIGN_ROUTES)
def test_a_foreign_model_answers_byte_identically_to_a_missing_one(lambda_context, leaky, method, path, body):
    """Kills: removing InferenceService.resolve's owner check (leaky adapter: 200 with acme's model), and
    any foreign-specific answer (another status, message, header or a version-less message on the
    versions/{version} routes)."""
    registry, store = sm.populated()
    foreign_app = inference_routes.create_app(service_over(LeakyRegistry(registry) if leaky else registry,
                                                           store, put_object=lambda k, d: None))
    missing_registry, missing_store = _missing_world()
    missing_app = inference_routes.create_app(service_over(missing_registry, missing_store,
                                                           put_object=lambda k, d: None))
    auth = authorizer("globex", scopes="models:read models:feedback")
    event = api_event(method, path, auth=auth, body=body)
    foreign = _comparable(resolve(foreign_app, event, lambda_context))
    missing = _comparable(resolve(missing_app, event, lambda_context))
    assert missing["statusCode"] == 404
    assert foreign == missing
    assert foreign["body"].encode() == missing["body"].encode()
    # and acme itself is served through the same routes (the name is real)
    if method == "GET":
        assert resolve(foreign_app, api_event(method, path, auth=authorizer("acme")),
                       lambda_context)["statusCode"] == 200


def test_the_service_refuses_a_foreign_version_from_the_adapter_like_a_missing_one():
    """Kills: removing (or weakening to a log line) the defence-in-depth owner check in
    InferenceService.resolve, for every operation and with a version."""
    registry, store = sm.populated()
    leaky = service_over(LeakyRegistry(registry), store)
    missing = service_over(*_missing_world())
    for version in (None, "1"):
        for op, args in [(leaky.resolve, ()), (leaky.model_metadata, ()), (leaky.model_ready, ()),
                         (leaky.infer, (text_body(),))]:
            got = error_of(op, "globex", FOREIGN, version, *args)
            want = error_of(getattr(missing, op.__name__), "globex", FOREIGN, version, *args)
            assert (type(got), got.status, got.public_message, got.headers) == \
                (type(want), want.status, want.public_message, want.headers)
    assert leaky.runtime.loaded() == [] or all(k[0] != "acme" for k in leaky.runtime.loaded())


# --- 3. listings drop foreign owners even when the adapter returns them -------------------------------

class ForeignListing:
    """An adapter whose listing includes another tenant's model (and a shared one)."""

    def __init__(self, inner: MemoryRegistry) -> None:
        self.inner = inner

    def resolve(self, tenant, model, version=None):
        return self.inner.resolve(tenant, model, version)

    def list_models(self, tenant):
        foreign = ModelSummary(owner="acme", model="acme-secret", versions=("1",), aliases={},
                               task="text-classification", backend="cpu")
        shadow = ModelSummary(owner="acme", model="minilm-embed", versions=("1", "2", "3"),
                              aliases={"production": "3"}, task="embedding", backend="cpu")
        return [*self.inner.list_models(tenant), foreign, shadow]


def test_listings_drop_foreign_owners_returned_by_the_adapter():
    """Kills: removing the owner filter in InferenceService._visible (list_models, and the versions that
    model_metadata reports)."""
    registry, store = sm.populated()
    svc = service_over(ForeignListing(registry), store)
    listed = svc.list_models("globex")["models"]
    names = [m["name"] for m in listed]
    assert "acme-secret" not in names and "work-item-classifier" not in names
    assert names.count("minilm-embed") == 1
    [embed] = [m for m in listed if m["name"] == "minilm-embed"]
    assert embed["versions"] == ["1"] and embed["aliases"] == {"production": "1"}
    assert svc.model_metadata("globex", "minilm-embed")["versions"] == ["1"]


# --- 4. every artifact is refused when tampered with at the same size ---------------------------------

def _tamper_digit(data: bytes, after: bytes) -> bytes:
    """Change the first digit after `after` to another digit: same length, still parseable."""
    start = data.index(after) + len(after)
    i = next(j for j in range(start, len(data)) if chr(data[j]).isdigit())
    return data[:i] + bytes([ord("1") if data[i] != ord("1") else ord("2")]) + data[i + 1:]


def _flip_last(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


def _tamper_onnx_weight(data: bytes) -> bytes:
    """Flip a low mantissa bit of a float in the graph's largest initializer: a valid graph that answers
    slightly differently."""
    import onnx

    model = onnx.load_from_string(data)
    init = max(model.graph.initializer, key=lambda t: len(t.raw_data) + 4 * len(t.float_data))
    raw = init.raw_data
    if raw:
        offset = data.index(raw) + 4
    else:  # pragma: no cover - the test models store raw_data
        raise AssertionError("initializer without raw_data")
    return data[:offset] + bytes([data[offset] ^ 1]) + data[offset + 1:]


def _tamper_tokenizer(data: bytes) -> bytes:
    """Swap two vocabulary ids' digits in tokenizer.json: still valid JSON, a different tokenizer."""
    return data.replace(b'"login":5', b'"login":6', 1) if b'"login":5' in data else _flip_last(data)


TAMPERS = [
    pytest.param("_shared", "minilm-embed", "model.onnx", _tamper_onnx_weight, "embed", id="embedding-onnx"),
    pytest.param("_shared", "minilm-embed", "tokenizer.json", _tamper_tokenizer, "embed", id="tokenizer"),
    pytest.param("acme", "work-item-classifier", "head.json", lambda d: _tamper_digit(d, b'"weight"'),
                 "classifier", id="head"),
    pytest.param("_shared", "project-risk", "model.onnx", _flip_last, "risk", id="tabular-onnx"),
    pytest.param("_shared", "minilm-embed", "baseline.json", lambda d: _tamper_digit(d, b'"'), "embed",
                 id="baseline"),
]


def _world_with_baseline():
    registry, store = MemoryRegistry(), MemoryArtifactStore()
    for v in (sm.with_text_baseline(sm.embedding_version()), sm.tabular_version(),
              sm.classifier_version("acme")):
        sm.register(registry, store, v)
    return registry, store


@pytest.mark.parametrize(("owner", "model", "name", "tamper", "kind"), TAMPERS)
def test_a_same_size_tampered_artifact_is_refused_and_never_served(owner, model, name, tamper, kind,
                                                                   lambda_context):
    """Kills: verifying only an artifact's size (not its sha256) in runtime._VerifyingWriter.finish."""
    registry, store = _world_with_baseline()
    key = store.key(owner, model, "1", name)
    good = store.objects[key]
    bad = tamper(good)
    assert bad != good and len(bad) == len(good)
    store.objects[key] = bad
    svc = service_over(registry, store)
    body = risk_body() if kind == "risk" else text_body()
    err = error_of(svc.infer, "acme", model, None, body)
    assert isinstance(err, IntegrityError), err.detail
    assert err.status == 503 and "sha256" in err.detail
    assert error_of(svc.model_ready, "acme", model).status == 503
    assert svc.runtime.loaded() == [] or all(k[1] != model for k in svc.runtime.loaded())
    assert len(svc.predictions) == 0
    # through the app: a 503 with the generic message, nothing about the artifact
    app = inference_routes.create_app(svc)
    resp = resolve(app, api_event("POST", f"/v2/models/{model}/infer", auth=authorizer("acme"), body=body),
                   lambda_context)
    assert resp["statusCode"] == 503
    assert json.loads(resp["body"]) == {"error": "model unavailable"}


# --- 5. a tenant's own model is never answered from the shared model's cached predictions -------------

def test_own_model_registered_over_a_shared_one_is_not_answered_from_the_shared_cache():
    """Kills: a PredictionCache key without the owner (tenant, model, version and input only)."""
    clock = Clock()
    registry, store = sm.populated()
    svc = service_over(registry, store, clock)
    assert svc.predictions.enabled
    shared = np.array(json.loads(svc.infer("acme", "minilm-embed", None, text_body()).body)
                      ["outputs"][0]["data"]).reshape(len(TEXTS), sm.DIM)
    np.testing.assert_allclose(shared, sm.tiny_embed(TEXTS, seed=0), atol=1e-5)
    assert len(svc.predictions) == 1
    sm.register(registry, store, sm.embedding_version("acme", seed=42))      # same name, same version "1"
    clock.now += settings().registry_cache_ttl_seconds + 1
    assert clock.now - 1000.0 < settings().prediction_cache_ttl_seconds    # the shared answer is still cached
    own = np.array(json.loads(svc.infer("acme", "minilm-embed", None, text_body()).body)
                   ["outputs"][0]["data"]).reshape(len(TEXTS), sm.DIM)
    np.testing.assert_allclose(own, sm.tiny_embed(TEXTS, seed=42), atol=1e-5)
    assert not np.allclose(own, shared)
    # globex still gets the shared model, from the cache or not
    other = np.array(json.loads(svc.infer("globex", "minilm-embed", None, text_body()).body)
                     ["outputs"][0]["data"]).reshape(len(TEXTS), sm.DIM)
    np.testing.assert_allclose(other, shared, atol=1e-6)


# --- 6. a 500 never carries exception text ------------------------------------------------------------

SECRET_ERROR = "s3://secret-bucket/key boom"


def _assert_generic_500(resp: dict) -> None:
    assert resp["statusCode"] == 500
    assert resp["body"] == GENERIC_500
    for word in ("s3://", "boom", "secret", "Traceback", "RuntimeError"):
        assert word not in resp["body"]
        assert word not in json.dumps(resp.get("multiValueHeaders") or resp.get("headers") or {})


class BoomRuntime:
    def get(self, mv):
        raise RuntimeError(SECRET_ERROR)

    def peek(self, mv):
        return None

    def loaded(self):
        return []


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/v2/models/project-risk/infer", risk_body()),
    ("GET", "/v2/models/project-risk/ready", None),
])
def test_inference_500_is_the_generic_error(lambda_context, method, path, body):
    """Kills: register_error_handlers' catch-all putting str(exc) (or a traceback) in the body."""
    registry, store = sm.populated()
    app = inference_routes.create_app(service_over(registry, store, runtime=BoomRuntime()))
    _assert_generic_500(resolve(app, api_event(method, path, auth=authorizer("acme"), body=body),
                                lambda_context))


class BoomRegistry(MemoryRegistry):
    def list_models(self, tenant):
        raise RuntimeError(SECRET_ERROR)

    def list_versions(self, tenant, model):
        raise RuntimeError(SECRET_ERROR)


@pytest.mark.parametrize("path", ["/admin/models", "/admin/models/churn/versions"])
def test_registry_500_is_the_generic_error(lambda_context, path):
    """Kills: the same, for the registry function's app."""
    app = registry_routes.create_app(RegistrationService(BoomRegistry(), MemoryArtifactStore()))
    _assert_generic_500(resolve(app, api_event("GET", path, auth=authorizer("acme", scopes="models:write")),
                                lambda_context))


def test_an_inference_registry_outage_says_nothing_about_the_adapter(lambda_context):
    """Kills: the registry-outage 503 (service._registry_errors) carrying the adapter's message."""
    class Down:
        def resolve(self, *a, **k):
            raise RuntimeError(SECRET_ERROR)

        def list_models(self, tenant):
            raise RuntimeError(SECRET_ERROR)

    app = inference_routes.create_app(service_over(Down(), MemoryArtifactStore()))
    for path in ("/v2/models", "/v2/models/project-risk"):
        resp = resolve(app, api_event("GET", path, auth=authorizer("acme")), lambda_context)
        assert resp["statusCode"] == 503
        assert json.loads(resp["body"]) == {"error": "model unavailable"}
        assert "s3://" not in json.dumps(resp) and "boom" not in json.dumps(resp)


# --- 7. a conditional Deny in the API Gateway emulator fails closed -----------------------------------

POLICY_AUTHORIZER = """
import json
STAGE = "arn:aws:execute-api:us-east-1:000000000000:tmltest01/v1/*/*"
OTHER = "arn:aws:execute-api:us-east-1:000000000000:tmltest01/v1/GET/somewhere-else"
ALLOW = {"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": [STAGE]}
COND = {"Bool": {"aws:SecureTransport": "false"}}
POLICIES = {
    "allow": [ALLOW],
    "cond-deny": [ALLOW, {"Action": "execute-api:Invoke", "Effect": "Deny", "Resource": [STAGE],
                          "Condition": COND}],
    "cond-deny-elsewhere": [ALLOW, {"Action": "execute-api:Invoke", "Effect": "Deny", "Resource": [OTHER],
                                    "Condition": COND}],
    "notresource-deny": [ALLOW, {"Action": "execute-api:Invoke", "Effect": "Deny", "NotResource": [OTHER]}],
    "cond-allow": [{**ALLOW, "Condition": {"IpAddress": {"aws:SourceIp": "0.0.0.0/0"}}}],
    "notaction-allow": [{"NotAction": "s3:*", "Effect": "Allow", "Resource": [STAGE]}],
}

def handler(event, context):
    token = (event["headers"].get("Authorization") or "").removeprefix("Bearer ")
    doc = {"Version": "2012-10-17", "Statement": POLICIES[token]}
    return {"principalId": "user-1", "policyDocument": doc,
            "context": {"tenant_id": "acme", "sub": "user-1", "scopes": "models:read"}}
"""

ECHO = """
def handler(event, context):
    return {"statusCode": 200, "body": "served"}
"""


@pytest.fixture
def emulator(tmp_path: Path):
    from tenantml.local.apigw import ApiConfig, ApiGatewayEmulator
    from tenantml.local.context import LocalFunction
    from tenantml.resources import FunctionDef, Route

    def fn(name: str, source: str) -> LocalFunction:
        path = tmp_path / name / "handler.py"
        path.parent.mkdir(parents=True)
        path.write_text(textwrap.dedent(source))
        return LocalFunction(FunctionDef(name, purpose="test", memory_mb=128, timeout_s=5), path,  # type: ignore[arg-type]
                             timeout_s=5)

    functions = {"authorizer": fn("authorizer", POLICY_AUTHORIZER), "echo": fn("echo", ECHO)}
    api = ApiGatewayEmulator(functions, routes=(Route("GET", "/v2/models", "echo"),),
                             config=ApiConfig(api_id="tmltest01", stage="v1", account_id="000000000000",
                                              region="us-east-1", authorizer_ttl_s=0))
    return api, functions


def _get(api, token: str):
    from tenantml.local.apigw import HttpRequest

    return api.handle(HttpRequest("GET", "/v2/models", headers=(("Authorization", f"Bearer {token}"),)))


def test_emulator_control_an_unconditional_allow_is_served(emulator):
    api, functions = emulator
    resp = _get(api, "allow")
    assert (resp.status, resp.body) == (200, b"served")


@pytest.mark.parametrize("token", ["cond-deny", "cond-deny-elsewhere", "notresource-deny"])
def test_emulator_a_deny_it_cannot_evaluate_denies(emulator, token):
    """Kills: skipping Deny statements with a Condition/NotResource (policy_allows: `if unevaluable:
    continue`), and evaluating a conditional Deny as if unconditional (dropping `unevaluable or`: the
    Deny naming another resource, and the NotResource Deny, would then allow). The 403 says explicit
    deny: the emulator's own explicit-deny check treats the statement the same way."""
    api, functions = emulator
    resp = _get(api, token)
    assert resp.status == 403
    assert resp.json() == {"error": "User is not authorized to access this resource with an explicit deny"}
    assert functions["echo"].invocations == 0


@pytest.mark.parametrize("token", ["cond-allow", "notaction-allow"])
def test_emulator_an_allow_it_cannot_evaluate_does_not_allow(emulator, token):
    """Kills: honouring an Allow with a Condition / NotAction (`elif effect == "Allow"` without
    `not unevaluable`)."""
    api, functions = emulator
    resp = _get(api, token)
    assert resp.status == 403
    assert resp.json() == {"error": "User is not authorized to access this resource"}
    assert functions["echo"].invocations == 0


# --- 8. scope, token, subject and JWKS size bounds -----------------------------------------------------

@pytest.fixture(scope="module")
def keys():
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key, {**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "k1", "use": "sig"}


NOW = 1_800_000_000.0


def _verifier(jwk):
    from tenantml.auth.jwks import JwksCache, StaticJwksSource
    from tenantml.auth.verifier import TokenVerifier

    return TokenVerifier(JwksCache(StaticJwksSource({"keys": [jwk]}), clock=lambda: 0.0),
                         issuer="https://issuer.example.com/", audience="tenantml-api",
                         tenant_claim="tenant_id", leeway_seconds=0, clock=lambda: NOW)


def _token(key, **over) -> str:
    import jwt

    payload = {"iss": "https://issuer.example.com/", "aud": "tenantml-api", "sub": "user-1",
               "tenant_id": "acme", "exp": int(NOW) + 600, **over}
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": "k1"})


def _reason(verifier, token):
    from tenantml.auth import InvalidToken

    with pytest.raises(InvalidToken) as info:
        verifier.verify(token, now=NOW)
    return info.value.reason


def test_scope_count_bound(keys):
    """Kills: removing the MAX_SCOPES check, or moving its boundary (> to >=, or counting only one of
    `scope`/`scp`). Over the bound the token is refused outright, never truncated."""
    from tenantml.auth import DenyReason
    from tenantml.auth.verifier import MAX_SCOPES

    key, jwk = keys
    v = _verifier(jwk)
    at_bound = [f"s{i}" for i in range(MAX_SCOPES)]
    assert v.verify(_token(key, scope=" ".join(at_bound)), now=NOW).scopes == frozenset(at_bound)
    assert _reason(v, _token(key, scope=" ".join(at_bound + ["one-more"]))) is DenyReason.INVALID_CLAIM
    assert _reason(v, _token(key, scp=[*at_bound, "one-more"])) is DenyReason.INVALID_CLAIM
    half = MAX_SCOPES // 2
    assert _reason(v, _token(key, scope=" ".join(at_bound[:half + 1]), scp=at_bound[half:])) \
        is DenyReason.INVALID_CLAIM


def _sized_token(key, length: int) -> str:
    """A valid token as close to `length` characters as base64 allows (never longer)."""
    base = _token(key, pad="")
    # Each pad character adds 4/3 base64 characters: start a few short of the bound, then step (an RSA
    # signature per step; stepping from zero took thousands).
    pad = max(0, (length - len(base)) * 3 // 4 - 8)
    token = _token(key, pad="x" * pad)
    assert len(token) <= length
    while True:
        bigger = _token(key, pad="x" * (pad + 1))
        if len(bigger) > length:
            return token
        pad, token = pad + 1, bigger


def test_token_length_bound(keys):
    """Kills: removing the MAX_TOKEN_CHARS check (a valid but oversized token would be verified)."""
    from tenantml.auth import DenyReason
    from tenantml.auth.verifier import MAX_TOKEN_CHARS

    key, jwk = keys
    v = _verifier(jwk)
    fits = _sized_token(key, MAX_TOKEN_CHARS)
    assert MAX_TOKEN_CHARS - 3 <= len(fits) <= MAX_TOKEN_CHARS
    assert v.verify(fits, now=NOW).tenant_id == "acme"
    over = _token(key, pad="x" * (MAX_TOKEN_CHARS * 3 // 4))
    assert len(over) > MAX_TOKEN_CHARS
    assert _reason(v, over) is DenyReason.MALFORMED_TOKEN


def test_sub_length_bound(keys):
    """Kills: removing MAX_SUB_CHARS or moving its boundary."""
    from tenantml.auth import DenyReason
    from tenantml.auth.verifier import MAX_SUB_CHARS

    key, jwk = keys
    v = _verifier(jwk)
    assert v.verify(_token(key, sub="u" * MAX_SUB_CHARS), now=NOW).sub == "u" * MAX_SUB_CHARS
    assert _reason(v, _token(key, sub="u" * (MAX_SUB_CHARS + 1))) is DenyReason.INVALID_CLAIM


class _Resp:
    """An HTTP response body read as a stream (each read consumes what it returns)."""

    def __init__(self, body: bytes) -> None:
        self._body, self.status = io.BytesIO(body), 200

    def read(self, n: int = -1) -> bytes:
        return self._body.read(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _jwks_of_size(jwk: dict, size: int) -> bytes:
    """A valid JWKS document of exactly `size` bytes (padded inside a JSON string member)."""
    base = json.dumps({"keys": [jwk], "pad": ""}).encode()
    return json.dumps({"keys": [jwk], "pad": "x" * (size - len(base))}).encode()


def test_jwks_size_bound_refuses_a_valid_but_oversized_document(keys):
    """Kills: removing UrlJwksSource's MAX_JWKS_BYTES check (the existing "huge" test is whitespace,
    which fails as "not JSON" even without the bound). Fails closed: no keyset, JwksUnavailable."""
    from tenantml.auth import JwksUnavailable
    from tenantml.auth.jwks import MAX_JWKS_BYTES, JwksCache, JwksError, UrlJwksSource

    _, jwk = keys
    exact = _jwks_of_size(jwk, MAX_JWKS_BYTES)
    over = _jwks_of_size(jwk, MAX_JWKS_BYTES + 1)
    assert (len(exact), len(over)) == (MAX_JWKS_BYTES, MAX_JWKS_BYTES + 1)
    ok = UrlJwksSource("https://idp.example.com/jwks", opener=lambda req, timeout: _Resp(exact))
    assert ok.fetch()["keys"][0]["kid"] == "k1"
    big = UrlJwksSource("https://idp.example.com/jwks", opener=lambda req, timeout: _Resp(over))
    with pytest.raises(JwksError):
        big.fetch()
    with pytest.raises(JwksUnavailable):
        JwksCache(big, clock=lambda: 0.0).get("k1")


def test_jwks_key_count_bound(keys):
    """Kills: removing parse_jwks' MAX_KEYS slice (a key past the first MAX_KEYS entries would load)."""
    from tenantml.auth.jwks import MAX_KEYS, JwksError, parse_jwks

    _, jwk = keys
    filler = [{"kty": "oct", "kid": f"junk-{i}", "k": "c2VjcmV0"} for i in range(MAX_KEYS)]
    assert set(parse_jwks({"keys": [*filler[:-1], jwk]})) == {"k1"}
    with pytest.raises(JwksError):
        parse_jwks({"keys": [*filler, jwk]})
    many = [{**jwk, "kid": f"k{i}"} for i in range(MAX_KEYS + 5)]
    assert len(parse_jwks({"keys": many})) == MAX_KEYS



# --- survivors of the auth/ mutation run (make mutation), one test each ------------------------------------


def test_policy_action_matches_case_insensitively_but_resources_do_not():
    from tenantml.auth.policy import policy_allows

    arn = "arn:aws:execute-api:eu-west-1:123456789012:abcdef1234/prod/POST/v2/models/clf/infer"
    lower = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "execute-api:invoke",
                                                     "Resource": arn}]}
    other_case = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "execute-api:Invoke",
                                                          "Resource": arn.replace("/clf/", "/CLF/")}]}
    assert policy_allows(lower, arn)              # IAM action names are case-insensitive
    assert not policy_allows(other_case, arn)     # resource ARNs are not


def test_policy_not_action_allow_is_ignored_and_a_malformed_statement_skips_only_itself():
    from tenantml.auth.policy import policy_allows

    arn = "arn:aws:execute-api:eu-west-1:123456789012:abcdef1234/prod/GET/v2/models"
    allow = {"Effect": "Allow", "Action": "execute-api:Invoke", "Resource": arn}
    not_action = {"Effect": "Allow", "NotAction": "s3:*", "Resource": arn}
    assert not policy_allows({"Statement": [not_action]}, arn)
    assert policy_allows({"Statement": ["not a statement", allow]}, arn)


def test_bearer_token_with_headers_that_are_not_a_mapping_is_missing():
    from tenantml.auth import MissingToken
    from tenantml.auth.policy import bearer_token

    with pytest.raises(MissingToken):
        bearer_token({"headers": [("Authorization", "Bearer abc.def.ghi")]})


def test_jwks_cache_defaults_are_five_minutes_and_one_minute():
    from tenantml.auth.jwks import JwksCache, StaticJwksSource

    calls: list[float] = []
    now = [0.0]

    class Counting(StaticJwksSource):
        def fetch(self):
            calls.append(now[0])
            return super().fetch()

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    cache = JwksCache(Counting({"keys": [{**jwk, "kid": "k1", "alg": "RS256", "use": "sig"}]}),
                      clock=lambda: now[0])
    cache.get("k1")
    now[0] = 299.0
    cache.get("k1")
    assert len(calls) == 1                        # fresh for 300 s
    now[0] = 300.5
    cache.get("k1")
    assert len(calls) == 2                        # refetched after the TTL
    now[0] = 330.0
    with contextlib.suppress(Exception):
        cache.get("unknown-kid")                  # an unknown kid refetches at most once a minute
    assert len(calls) == 2


def test_dev_jwks_members_are_unpadded_fixed_width_base64url_with_rfc7638_kids():
    import base64
    import hashlib

    from tenantml.auth.devkeys import DevKeys

    keys = DevKeys(rsa_private=rsa.generate_private_key(public_exponent=65537, key_size=2048),
                   ec_private=ec.generate_private_key(ec.SECP256R1()))

    def unb64(value: str) -> bytes:
        assert "=" not in value and "+" not in value and "/" not in value
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))

    rsa_jwk, ec_jwk = keys.jwks()["keys"]
    assert len(unb64(rsa_jwk["n"])) == 256 and unb64(rsa_jwk["e"]) == b"\x01\x00\x01"
    assert len(unb64(ec_jwk["x"])) == 32 and len(unb64(ec_jwk["y"])) == 32
    for jwk, members in ((rsa_jwk, ("e", "kty", "n")), (ec_jwk, ("crv", "kty", "x", "y"))):
        canonical = "{" + ",".join(f'"{m}":"{jwk[m]}"' for m in members) + "}"   # RFC 7638 section 3
        digest = base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=")
        assert jwk["kid"] == digest.decode()


def test_dev_tokens_carry_the_defaults_and_the_registered_claims():
    from tenantml.auth.devkeys import DevKeys

    keys = DevKeys(rsa_private=rsa.generate_private_key(public_exponent=65537, key_size=2048),
                   ec_private=ec.generate_private_key(ec.SECP256R1()))
    token = keys.mint("acme", now=1_000_000)
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert header["typ"] == "JWT" and header["kid"] == keys.kids["RS256"]
    assert claims["sub"] == "dev-user" and claims["exp"] - claims["iat"] == 3600
    assert claims["nbf"] == claims["iat"] == 1_000_000 and len(claims["jti"]) == 32
    assert jwt.decode(keys.mint("acme", ttl=1, now=1_000_000), options={"verify_signature": False})["exp"] \
        == 1_000_001
