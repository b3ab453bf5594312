"""API behaviour the mutation run (tools/mutation.sh, MUTATION_TARGET=api-serving) found unasserted: the
request body's decompression bounds and zlib detection, strict base64 in registrations, the admin API's
JSON shapes, and what a refused admin call leaves in the tenant's audit log."""

from __future__ import annotations

import base64
import copy
import gzip
import hashlib
import json
import struct
import tracemalloc
import zlib

import pytest

from tenantml.api.body import decompress
from tenantml.api.registry_routes import create_app
from tenantml.errors import PayloadTooLarge
from tenantml.registry.memory import MemoryArtifactStore, MemoryRegistry
from tenantml.registry.service import RegistrationService

# --- request bodies ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding, pack", [("gzip", gzip.compress), ("deflate", zlib.compress),
                                            ("deflate", lambda d: zlib.compress(d)[2:-4])])   # raw deflate
def test_a_compressed_body_may_inflate_to_exactly_the_limit_and_not_one_byte_more(encoding, pack):
    limit = 4096
    exact = b"{" + b" " * (limit - 2) + b"}"
    assert decompress(pack(exact), encoding, max_bytes=limit) == exact
    over = b"{" + b" " * (limit - 1) + b"}"
    with pytest.raises(PayloadTooLarge):
        decompress(pack(over), encoding, max_bytes=limit)


def test_a_decompression_bomb_is_refused_without_being_inflated():
    bomb = gzip.compress(b"{" + b" " * 40_000_000 + b"}", compresslevel=9)     # ~40 KB -> 40 MB
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge):
            decompress(bomb, "gzip", max_bytes=100_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000            # bounded by the limit, never the inflated size


def stored_deflate(first: bytes, payload: bytes) -> bytes:
    """Raw deflate with stored blocks: `first` (a non-final header byte, or b"" for none) then a final one."""
    head = first + struct.pack("<HH", 0, 0xFFFF) if first else b""
    return head + b"\x01" + struct.pack("<HH", len(payload), 0xFFFF ^ len(payload)) + payload


@pytest.mark.parametrize("first", [
    b"",          # 0x01 0x17: (0x01 << 8 | 0x17) % 31 == 0 although 0x01 is no zlib CMF byte
    b"\x08",      # 0x08 0x00: a zlib CMF nibble, but (0x08 << 8 | 0x00) % 31 != 0: no zlib header
])
def test_raw_deflate_is_not_mistaken_for_zlib_by_half_of_the_header_check(first):
    payload = b'{"inputs": []}'.ljust(23)          # 23 = 0x17: the length byte that follows 0x01
    data = stored_deflate(first, payload)
    assert decompress(data, "deflate", max_bytes=1000) == payload


# --- the admin API -----------------------------------------------------------------------------------------


@pytest.fixture
def svc() -> RegistrationService:
    return RegistrationService(MemoryRegistry(), MemoryArtifactStore())


@pytest.fixture
def call(svc, lambda_context):
    app = create_app(svc)

    def invoke(event: dict) -> tuple[int, dict]:
        resp = app.resolve(event, lambda_context)
        return resp["statusCode"], json.loads(resp["body"])
    return invoke


def as_caller(event: dict, tenant: str = "acme", scopes: str = "models:write") -> dict:
    event = copy.deepcopy(event)
    event["requestContext"]["authorizer"].update(tenant_id=tenant, scopes=scopes)
    return event


def register_event(load_event, *, model: str = "churn-risk", files: dict[str, bytes] | None = None,
                   version: str = "1", shared: bool = False) -> dict:
    event = copy.deepcopy(load_event("registry-register-version"))
    body = json.loads(event["body"])
    body["version"] = version
    if files is not None:
        body["files"] = {k: base64.b64encode(v).decode() for k, v in files.items()}
        body["manifest"]["files"] = {k: {"sha256": hashlib.sha256(v).hexdigest(), "size": len(v)}
                                     for k, v in files.items()}
    event["body"] = json.dumps(body)
    event["pathParameters"] = {"model": model}
    event["path"] = f"/admin/models/{model}/versions"
    if shared:
        event["queryStringParameters"] = {"owner": "_shared"}
        event["multiValueQueryStringParameters"] = {"owner": ["_shared"]}
        event["requestContext"]["authorizer"]["scopes"] = "models:write models:admin"
    return event


def test_file_contents_must_be_strict_base64_or_the_registration_is_refused(call, load_event, svc):
    event = register_event(load_event)
    body = json.loads(event["body"])
    name, text = next(iter(body["files"].items()))
    body["files"][name] = text[:4] + "*" + text[4:]       # a stray character a lenient decoder would drop
    event["body"] = json.dumps(body)
    status, answer = call(event)
    assert status == 400 and name in answer["error"]
    assert svc.registry.list_models("acme") == []
    assert call(register_event(load_event))[0] == 201     # the same files, strictly encoded, register


def test_listed_models_say_whether_they_are_shared_or_the_tenants_own(call, load_event):
    assert call(register_event(load_event, model="churn-risk"))[0] == 201
    assert call(register_event(load_event, model="common-risk", shared=True))[0] == 201
    status, answer = call(as_caller(load_event("registry-list-models")))
    assert status == 200
    owners = {m["name"]: m["owner"] for m in answer["models"]}
    assert owners == {"churn-risk": "own", "common-risk": "shared"}
    assert {m["name"]: m["latest"] for m in answer["models"]} == {"churn-risk": "1", "common-risk": "1"}


def test_listed_versions_carry_registration_time_task_and_backend(call, load_event):
    assert call(register_event(load_event))[0] == 201
    event = as_caller(load_event("registry-list-versions"))
    event["pathParameters"] = {"model": "churn-risk"}
    status, answer = call(event)
    assert status == 200
    (v,) = answer["versions"]
    assert set(v) >= {"version", "status", "registered_at", "task", "backend", "aliases"}
    assert (v["task"], v["backend"]) == ("tabular-classification", "cpu") and v["registered_at"]


def rollout_action_event(load_event, model: str, action: str) -> dict:
    event = copy.deepcopy(load_event("registry-rollout-start"))
    event["resource"] = "/admin/models/{model}/rollout/{action}"
    event["path"] = f"/admin/models/{model}/rollout/{action}"
    event["pathParameters"] = {"model": model, "action": action}
    event["body"] = None
    return event


def test_a_refused_call_is_audited_with_model_and_action_bounded(call, load_event, svc):
    model, action = "m" * 200, "a" * 100
    status, _ = call(as_caller(rollout_action_event(load_event, model, action), scopes="models:read"))
    assert status == 403
    (record,) = svc.registry.audit("acme")
    assert record.model == "m" * 128
    assert record.action == "refused_" + ("post_rollout_" + action)[:64]


def test_a_refused_call_without_a_model_is_audited_under_star(call, load_event, svc):
    status, _ = call(as_caller(load_event("registry-list-models"), scopes="models:read"))
    assert status == 403
    (record,) = svc.registry.audit("acme")
    assert (record.model, record.action) == ("*", "refused_get")


# --- the inference API -------------------------------------------------------------------------------------


@pytest.mark.parametrize("request_path, path, base", [
    ("/v1/v2/models/m/infer", "/v2/models/m/infer", "/v1"),            # the stage
    ("/ml/prod/v2/models/m/infer", "/v2/models/m/infer", "/ml/prod"),  # a custom domain's base path
    ("/v2/models/m/infer", "/v2/models/m/infer", ""),
    ("/v1/other", "/v2/models/m/infer", ""),                           # not a suffix: no prefix
    ("/v1/v2/models/other-model/infer", "/v2/models/m/infer", ""),
    (None, "/v2/models/m/infer", ""),
    ("/v1/v2/models/m/infer", None, ""),
])
def test_the_location_base_path_is_what_the_client_url_has_before_the_route(request_path, path, base):
    from tenantml.api.inference_routes import base_path

    event = {"requestContext": {"path": request_path} if request_path else {}, "path": path}
    assert base_path(event) == base
    if request_path is None:
        assert base_path({"path": path}) == ""


@pytest.mark.parametrize("raw_path, route_path, base", [
    ("/v1/v2/models/m/infer", "/v2/models/m/infer", "/v1"),
    ("/v2/models/m/infer", "/v2/models/m/infer", ""),
    (None, "/v2/models/m/infer", ""),
])
def test_an_http_api_events_base_path_comes_from_its_raw_path(raw_path, route_path, base):
    """Payload 2.0 has no requestContext.path: the full path is rawPath, never a REST field."""
    from tenantml.api.flavours import full_path
    from tenantml.api.inference_routes import base_path

    event = {"version": "2.0", "requestContext": {"path": "/decoy/v2/models/m/infer"},
             **({"rawPath": raw_path} if raw_path else {})}
    assert full_path(event) == (raw_path or "")
    assert base_path(event, route_path) == base
    assert full_path({"requestContext": {"path": "/v1/x"}, "rawPath": "/decoy/x"}) == "/v1/x"   # REST
    assert full_path({}) == ""
    # the route's path is the resolver's when given, the event's `path` otherwise
    assert base_path({"requestContext": {"path": "/v1/v2/models/m/infer"}, "path": "/nope"},
                     "/v2/models/m/infer") == "/v1"


@pytest.fixture(scope="module")
def inference_app():
    import serving_models as sm

    from tenantml.api.inference_routes import create_app as create_inference_app
    from tenantml.serving.service import InferenceService
    from tenantml.settings import ServingSettings

    registry, store = sm.populated()
    svc = InferenceService(registry=registry, store=store,
                           settings=ServingSettings(artifact_bucket="b", registry_table="t"))
    return create_inference_app(svc)


def test_oip_json_answers_are_compact(inference_app, load_event, lambda_context):
    resp = inference_app.resolve(load_event("inference-health-live"), lambda_context)
    assert (resp["statusCode"], resp["body"]) == (200, '{"live":true}')


def test_a_binary_tensor_answer_carries_its_json_header_length(inference_app, load_event, lambda_context):
    event = copy.deepcopy(load_event("inference-infer-risk"))
    body = json.loads(event["body"])
    body["parameters"] = {"binary_data_output": True}
    event["body"], event["isBase64Encoded"] = base64.b64encode(json.dumps(body).encode()).decode(), True
    resp = inference_app.resolve(event, lambda_context)
    headers = {**(resp.get("headers") or {}),
               **{k: v[-1] for k, v in (resp.get("multiValueHeaders") or {}).items()}}
    assert resp["statusCode"] == 200
    length = int({k.lower(): v for k, v in headers.items()}["inference-header-content-length"])
    raw = base64.b64decode(resp["body"]) if resp.get("isBase64Encoded") else resp["body"].encode()
    assert json.loads(raw[:length])["model_name"]


def test_an_event_that_is_not_a_proxy_event_gets_a_complete_json_400(inference_app, lambda_context):
    from tenantml.api.flavours import UNSUPPORTED

    resp = inference_app.resolve({"Records": [{"body": "{}"}]}, lambda_context)
    assert resp == {"statusCode": 400, "headers": {"Content-Type": "application/json"},
                    "body": json.dumps({"error": UNSUPPORTED}), "isBase64Encoded": False}


def test_a_proxy_event_the_resolver_cannot_route_gets_a_complete_json_400(inference_app, load_event,
                                                                          lambda_context):
    event = copy.deepcopy(load_event("inference-health-live"))
    event["multiValueHeaders"] = "not a mapping"
    resp = inference_app.resolve(event, lambda_context)
    assert resp == {"statusCode": 400, "headers": {"Content-Type": "application/json"},
                    "body": json.dumps({"error": "malformed API Gateway proxy event"}),
                    "isBase64Encoded": False}


def test_a_model_whose_versions_are_all_deleted_is_listed_without_a_latest():
    from tenantml.api.registry_routes import _model_json
    from tenantml.registry import ModelSummary

    summary = ModelSummary(owner="acme", model="m", versions=(), aliases={}, task="embedding", backend="cpu")
    assert _model_json(summary)["latest"] is None and _model_json(summary)["versions"] == []
    two = ModelSummary(owner="_shared", model="m", versions=("1", "2"), aliases={"production": "1"},
                       task="embedding", backend="cpu")
    assert _model_json(two) == {"name": "m", "owner": "shared", "task": "embedding", "backend": "cpu",
                                "versions": ["1", "2"], "latest": "2", "aliases": {"production": "1"}}


def test_the_openapi_document_renders_without_warnings_and_other_schema_warnings_still_show():
    import warnings

    from pydantic.json_schema import PydanticJsonSchemaWarning

    from tenantml.api import openapi

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text = openapi.render()
    assert text.isascii() and text.endswith("}\n")
    with pytest.warns(PydanticJsonSchemaWarning, match=r"a detail \[skipped-discriminator\]"):
        openapi._Schema().emit_warning("skipped-discriminator", "a detail")


def test_drift_reports_are_read_from_the_index_for_the_callers_tenant(load_event, lambda_context):
    svc = RegistrationService(MemoryRegistry(), MemoryArtifactStore())
    asked = []

    class Reports:
        def latest(self, tenant, model, limit):
            asked.append((tenant, model, limit))
            return [{"report": "r-1"}]

    app = create_app(svc, Reports())
    assert app.resolve(load_event("registry-register-version"), lambda_context)["statusCode"] == 201
    event = copy.deepcopy(load_event("registry-list-models"))
    event["path"] = event["requestContext"]["path"] = "/admin/models/churn-risk/drift"
    event["resource"] = "/admin/models/{model}/drift"
    event["pathParameters"] = {"model": "churn-risk"}
    event["queryStringParameters"] = {"limit": "3"}
    event["multiValueQueryStringParameters"] = {"limit": ["3"]}
    resp = app.resolve(event, lambda_context)
    assert (resp["statusCode"], json.loads(resp["body"])) == (200, {"model": "churn-risk",
                                                                     "reports": [{"report": "r-1"}]})
    assert asked == [("acme", "churn-risk", 3)]


def _body(body, *, b64: bool = False, encoding: str | None = None) -> dict:
    headers = {"Content-Encoding": encoding} if encoding is not None else {}
    return {"body": body, "isBase64Encoded": b64, "headers": headers}


def test_a_body_flagged_base64_must_be_strict_base64():
    from tenantml.api.body import NOT_BASE64, read_body
    from tenantml.errors import BadRequest

    assert read_body(_body("e30=", b64=True), max_bytes=100).data == b"{}"
    for junk in ("e30=!", "e3 0=", "e30"):             # a stray character, a space, missing padding
        with pytest.raises(BadRequest) as info:
            read_body(_body(junk, b64=True), max_bytes=100)
        assert info.value.public_message == NOT_BASE64


def test_a_text_body_with_a_lone_surrogate_is_kept_for_the_utf8_check_not_a_crash():
    from tenantml.api.body import read_body, read_text
    from tenantml.errors import BadRequest

    event = _body('{"x": "\ud800"}')
    assert read_body(event, max_bytes=100).data == '{"x": "\ud800"}'.encode("utf-8", "surrogatepass")
    with pytest.raises(BadRequest, match="^request body is not valid UTF-8$"):
        read_text(event, max_bytes=100)
    assert read_text(_body(""), max_bytes=100) is None
    assert read_text(_body("é"), max_bytes=100) == "é"


def test_a_body_of_exactly_the_limit_is_read_and_one_byte_more_is_413():
    from tenantml.api.body import read_body

    assert len(read_body(_body("x" * 64), max_bytes=64).data) == 64
    with pytest.raises(PayloadTooLarge):
        read_body(_body("x" * 65), max_bytes=64)


@pytest.mark.parametrize("encoding", ["x-gzip", "X-Gzip", "gzip"])
def test_x_gzip_is_gzip(encoding):
    assert decompress(gzip.compress(b'{"a": 1}'), encoding, max_bytes=100) == b'{"a": 1}'


@pytest.mark.parametrize("encoding", ["deflate", "gzip"])
def test_a_json_body_already_decompressed_on_the_way_is_taken_as_is_even_after_whitespace(encoding):
    """API Gateway may inflate a body and keep the header: JSON (after any leading whitespace) is plain."""
    for plain in (b'{"a": 1}', b' \n {"a": 1} \n'):
        assert decompress(plain, encoding, max_bytes=100) == plain


def test_a_blank_content_encoding_is_identity():
    assert decompress(b"\x00\x01", "  ", max_bytes=100) == b"\x00\x01"


def test_error_answers_are_json_with_their_content_type(inference_app, load_event, lambda_context):
    event = copy.deepcopy(load_event("inference-infer-risk"))
    event["body"], event["isBase64Encoded"] = "not json", False
    resp = inference_app.resolve(event, lambda_context)
    headers = {**(resp.get("headers") or {}),
               **{k: v[-1] for k, v in (resp.get("multiValueHeaders") or {}).items()}}
    assert resp["statusCode"] == 400 and headers["Content-Type"] == "application/json"
    assert set(json.loads(resp["body"])) == {"error"}


# --- the caller ---------------------------------------------------------------------------------------------


def _event_with(ctx: dict) -> dict:
    return {"requestContext": {"authorizer": ctx}}


def test_a_caller_without_sub_or_scopes_has_none_of_either():
    from tenantml.api.context import caller_from_event

    who = caller_from_event(_event_with({"tenant_id": "acme", "valid_until": "2000"}), now=1000.0)
    assert (who.tenant, who.sub, who.scopes) == ("acme", "", frozenset())


@pytest.mark.parametrize("scopes", [["models:read", "models:write"], "models:read models:write"])
def test_scopes_arrive_as_a_list_or_a_space_separated_string(scopes):
    """A REST authorizer's context holds strings only; an HTTP API simple response may carry a list."""
    from tenantml.api.context import caller_from_event

    ctx = {"tenant_id": "acme", "valid_until": "2000", "sub": "u1", "scopes": scopes}
    assert caller_from_event({"requestContext": {"authorizer": {"lambda": ctx}}}, now=1000.0).scopes == \
        frozenset({"models:read", "models:write"})
