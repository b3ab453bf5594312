"""The admin API's mapping (tenantml.api.registry_routes) on the in-memory fakes, fed from events/*.json:
scopes, tenancy from the authorizer context only, and client-safe 400s."""

from __future__ import annotations

import base64
import copy
import json
import re

import pytest

from tenantml import resources
from tenantml.api.registry_routes import create_app
from tenantml.registry.memory import MemoryArtifactStore, MemoryRegistry, manifest_for
from tenantml.registry.service import RegistrationService, parse_manifest


@pytest.fixture
def svc() -> RegistrationService:
    return RegistrationService(MemoryRegistry(), MemoryArtifactStore())


@pytest.fixture
def call(svc, lambda_context):
    app = create_app(svc)

    def invoke(event: dict) -> tuple[int, dict, dict]:
        resp = app.resolve(event, lambda_context)
        headers = {**(resp.get("headers") or {}),
                   **{k: v[-1] for k, v in (resp.get("multiValueHeaders") or {}).items()}}
        return resp["statusCode"], json.loads(resp["body"]), headers
    return invoke


def as_caller(event: dict, tenant: str | None = "acme", scopes: str = "models:write") -> dict:
    event = copy.deepcopy(event)
    auth = event["requestContext"]["authorizer"]
    auth["scopes"] = scopes
    if tenant is None:
        auth.pop("tenant_id")
    else:
        auth["tenant_id"] = tenant
    return event


def with_body(event: dict, body) -> dict:
    event = copy.deepcopy(event)
    event["body"] = body if isinstance(body, str) or body is None else json.dumps(body)
    return event


def test_register_answers_201_with_location(call, load_event, svc):
    status, body, headers = call(load_event("registry-register-version"))
    assert status == 201
    assert body == {"model": "churn-risk", "version": "1", "aliases": ["production"]}
    assert headers["Location"] == "/v2/models/churn-risk/versions/1"
    mv = svc.registry.resolve("acme", "churn-risk")
    assert mv.version == "1" and svc.registry.audit("acme")[0].actor == "ml-engineer-7"


@pytest.mark.parametrize("event", ["registry-register-version", "registry-list-models", "registry-audit",
                                   "registry-list-versions", "registry-set-alias"])
def test_every_route_needs_models_write_and_an_authorizer_tenant(call, load_event, event):
    status, body, _ = call(as_caller(load_event(event), scopes="inference:invoke models:read"))
    assert (status, body) == (403, {"error": "missing scope 'models:write'"})
    status, _, _ = call(as_caller(load_event(event), tenant=None))
    assert status == 401


def test_the_tenant_comes_only_from_the_authorizer(call, load_event, svc):
    event = load_event("registry-register-version")
    event["headers"]["X-Tenant-Id"] = "globex"
    event["queryStringParameters"] = {"tenant": "globex"}
    body = json.loads(event["body"])
    body["tenant"] = "globex"
    status, answer, _ = call(with_body(event, body))
    assert status == 400 and "tenant" in answer["error"]      # unknown body fields are refused
    event["body"] = load_event("registry-register-version")["body"]
    assert call(event)[0] == 201
    assert svc.registry.list_models("globex") == []


def with_owner(event: dict, *values: str) -> dict:
    """`?owner=...` as API Gateway puts it in a REST event (the last value wins the single-value map)."""
    event = copy.deepcopy(event)
    event["queryStringParameters"] = {"owner": values[-1]}
    event["multiValueQueryStringParameters"] = {"owner": list(values)}
    return event


OWNER_ERROR = ("query parameter 'owner' may only be '_shared' (to write a shared model); omit it to write "
               "your own tenant's models")
ADMIN = "models:write models:admin"


def test_shared_writes_need_owner_shared_and_models_admin(call, load_event, svc):
    register = with_owner(load_event("registry-register-version"), "_shared")
    status, body, _ = call(as_caller(register, scopes="models:write"))
    assert (status, body) == (403, {"error": "missing scope 'models:admin'"})
    assert svc.registry.list_models("globex") == [] and svc.store.objects == {}

    status, body, headers = call(as_caller(register, scopes=ADMIN))
    assert (status, body) == (201, {"model": "churn-risk", "version": "1", "aliases": ["production"]})
    assert headers["Location"] == "/v2/models/churn-risk/versions/1"
    for tenant in ("globex", "acme"):                 # every tenant now resolves the shared model
        mv = svc.registry.resolve(tenant, "churn-risk")
        assert (mv.owner, mv.version) == ("_shared", "1")
    assert svc.store.get("_shared", "churn-risk", "1", "model.onnx")
    # The audit record names the operator (the token's sub) and lands in the _shared log; acme's log holds
    # only the attempt it was refused (its own tenant's record of what its caller tried).
    [record] = svc.registry.audit("_shared")
    assert (record.action, record.actor, record.model) == ("register_version", "ml-engineer-7", "churn-risk")
    assert [r.action for r in svc.registry.audit("acme")] == ["refused_post_versions"]

    set_alias = with_owner(with_body(load_event("registry-set-alias"), {"version": "1"}), "_shared")
    assert call(as_caller(set_alias, scopes="models:write"))[:2] == (
        403, {"error": "missing scope 'models:admin'"})
    status, body, _ = call(as_caller(set_alias, scopes=ADMIN))
    assert (status, body) == (200, {"model": "churn-risk", "alias": "production", "version": "1",
                                    "previous": "1"})
    # Without ?owner a write is the caller's own: acme has no churn-risk of its own to alias.
    assert call(as_caller(load_event("registry-set-alias"), scopes=ADMIN))[0] == 404


@pytest.mark.parametrize("values", [("globex",), ("acme",), ("",), ("shared",), ("_SHARED",),
                                    ("_shared", "globex"), ("globex", "_shared")])
@pytest.mark.parametrize("event", ["registry-register-version", "registry-set-alias"])
def test_owner_may_only_be_shared(call, load_event, svc, event, values):
    status, body, _ = call(as_caller(with_owner(load_event(event), *values), scopes=ADMIN))
    assert (status, body) == (400, {"error": OWNER_ERROR})
    assert svc.registry.list_models("acme") == [] and svc.store.objects == {}


@pytest.mark.parametrize(("body", "expected"), [
    (None, "request body must be a JSON object"),
    ("{not json", "invalid request"),
    ({"manifest": {"name": "churn-risk"}}, "manifest.task: Field required"),
    ({"version": "../../etc", "manifest": {}}, "version: String should match pattern"),
])
def test_bad_bodies_are_400s_that_name_the_problem(call, load_event, body, expected):
    status, answer, _ = call(with_body(load_event("registry-register-version"), body))
    assert status == 400 and expected in answer["error"]
    assert "Traceback" not in answer["error"] and "pydantic" not in answer["error"]


def test_bad_base64_and_mismatching_files_register_nothing(call, load_event, svc):
    event = load_event("registry-register-version")
    body = json.loads(event["body"])
    body["files"]["model.onnx"] = "%%%not-base64"
    status, answer, _ = call(with_body(event, body))
    assert (status, answer) == (400, {"error": "files.model.onnx: not valid base64"})
    body["files"]["model.onnx"] = base64.b64encode(b"not the model the manifest describes").decode()
    status, answer, _ = call(with_body(event, body))
    assert status == 400 and "model.onnx" in answer["error"] and "sha256" in answer["error"]
    assert svc.registry.list_models("acme") == [] and svc.store.objects == {}


def test_aliases_and_versions(call, load_event, svc):
    register = load_event("registry-register-version")
    assert call(register)[0] == 201
    body = json.loads(register["body"])
    files = {n: base64.b64decode(d) for n, d in body["files"].items()}   # the event's real model again
    svc.register(owner="acme", model="churn-risk", manifest=parse_manifest(body["manifest"]), actor="u",
                 files=files)
    status, body, _ = call(with_body(load_event("registry-set-alias"), {"version": "2"}))
    assert (status, body) == (200, {"model": "churn-risk", "alias": "production", "version": "2",
                                    "previous": "1"})
    status, body, _ = call(load_event("registry-list-versions"))
    assert status == 200 and body["owner"] == "own"
    assert [(v["version"], v["aliases"]) for v in body["versions"]] == [("1", []), ("2", ["production"])]
    assert call(with_body(load_event("registry-set-alias"), {"version": "9"}))[0] == 404
    bad_alias = load_event("registry-set-alias")
    bad_alias["path"] = "/admin/models/churn-risk/aliases/Prod%20uction"
    assert call(bad_alias)[0] == 400


def test_audit_paging_parameters(call, load_event):
    event = load_event("registry-audit")
    for limit in ("0", "101", "ten", "-1"):
        event["queryStringParameters"] = {"limit": limit}
        assert call(event)[0] == 400
    event["queryStringParameters"] = {"next_token": "forged"}
    assert call(event)[:2] == (400, {"error": "invalid next_token"})


def test_unknown_model_is_404_for_listing_versions(call, load_event):
    status, body, _ = call(load_event("registry-list-versions"))
    assert (status, body) == (404, {"error": "model 'churn-risk' not found"})


def test_every_registry_route_of_the_stack_is_served(call, load_event):
    """Each (method, path) that resources.ROUTES sends to `registry` reaches a route of this app."""
    base = load_event("registry-list-models")
    for route in (r for r in resources.ROUTES if r.function == "registry"):
        event = as_caller(base, scopes="")
        event["httpMethod"] = route.method
        event["path"] = re.sub(r"\{[^}]+\}", "x", route.path)
        status, body, _ = call(event)
        assert (status, body) == (403, {"error": "missing scope 'models:write'"}), route


# --- names matched in full, digits in ASCII ---------------------------------------------------------


@pytest.mark.parametrize("alias", ["production\n", "canary\n"])
def test_an_alias_with_a_trailing_newline_is_refused(svc, alias):
    """(The API's router never hands one over: its path parameters exclude newlines; the CLI and the
    service must refuse it too.)"""
    from tenantml.errors import BadRequest

    manifest = manifest_for("risk", {"model.onnx": b"x"})
    with pytest.raises(BadRequest, match="alias must match"):
        svc.registry.register_version("acme", "risk", manifest, "t", aliases=[alias])
    svc.registry.register_version("acme", "risk", manifest, "t")
    with pytest.raises(BadRequest, match="alias must match"):
        svc.registry.set_alias("acme", "risk", alias, "1", "t")


def test_names_with_a_trailing_newline_never_resolve(svc):
    from tenantml.errors import BadRequest, ModelNotFound

    svc.registry.register_version("acme", "risk", manifest_for("risk", {"model.onnx": b"x"}), "t")
    with pytest.raises(ModelNotFound):
        svc.registry.resolve("acme", "risk\n")
    with pytest.raises(ModelNotFound):
        svc.registry.resolve("acme", "risk", "1\n")
    with pytest.raises(BadRequest):
        svc.registry.register_version("acme", "risk\n", manifest_for("risk", {"model.onnx": b"x"}), "t")


@pytest.mark.parametrize("limit", ["\u00b2", "\u0663", "1\u00b9", " 5"])
def test_a_paging_limit_in_other_digits_is_a_400(call, load_event, limit):
    event = load_event("registry-audit")
    event["queryStringParameters"] = {"limit": limit}
    event["multiValueQueryStringParameters"] = {"limit": [limit]}
    status, body, _ = call(event)
    assert (status, body["error"]) == (400, "limit must be an integer between 1 and 100")


# --- refused attempts are audited ---------------------------------------------------------------------------


def test_an_attempt_without_the_scope_is_refused_and_audited(call, load_event, svc):
    status, body, _ = call(as_caller(load_event("registry-register-version"), scopes="models:read"))
    assert (status, body) == (403, {"error": "missing scope 'models:write'"})
    (record,) = svc.registry.audit("acme")
    assert (record.action, record.actor, record.model) == (
        "refused_post_versions", "ml-engineer-7", "churn-risk")
    assert record.details == {"reason": "403 missing scope 'models:write'"}
    assert svc.registry.audit("globex") == []


def test_a_conflict_is_refused_and_audited(call, load_event, svc):
    assert call(load_event("registry-register-version"))[0] == 201
    event = with_body(load_event("registry-register-version"), {
        **json.loads(load_event("registry-register-version")["body"]), "version": "1"})
    assert call(event)[0] == 409
    assert [r.action for r in svc.registry.audit("acme")] == ["register_version", "refused_post_versions"]


def test_a_refused_rollout_verb_is_audited_with_its_action(call, load_event, svc):
    call(load_event("registry-register-version"))
    event = load_event("registry-rollout-start")
    event["path"] = "/admin/models/churn-risk/rollout/promote"
    event["resource"] = "/admin/models/{model}/rollout/{action}"
    event["pathParameters"] = {"model": "churn-risk", "action": "promote"}
    event["body"] = None
    status, _, _ = call(event)
    assert status == 404                                        # no rollout: not found, not a refusal
    assert [r.action for r in svc.registry.audit("acme")] == ["register_version"]
    status, _, _ = call(as_caller(event, scopes="models:read"))
    assert status == 403
    assert svc.registry.audit("acme")[-1].action == "refused_post_rollout_promote"


def test_refused_attempts_over_the_http_api_are_audited_with_their_routes(call, load_event, svc):
    """Payload format 2.0 has no `resource`: the action comes from the route key's template."""
    from proxy_events import v2_from_rest

    status, body, _ = call(v2_from_rest(as_caller(load_event("registry-register-version"),
                                                  scopes="models:read")))
    assert (status, body) == (403, {"error": "missing scope 'models:write'"})
    event = load_event("registry-rollout-start")
    event["path"] = "/admin/models/churn-risk/rollout/promote"
    event["resource"] = "/admin/models/{model}/rollout/{action}"
    event["pathParameters"] = {"model": "churn-risk", "action": "promote"}
    event["body"] = None
    assert call(v2_from_rest(as_caller(event, scopes="models:read")))[0] == 403
    assert [(r.action, r.model) for r in svc.registry.audit("acme")] == [
        ("refused_post_versions", "churn-risk"), ("refused_post_rollout_promote", "churn-risk")]


def test_quota_and_content_refusals_are_stable_json_with_their_statuses(load_event, lambda_context):
    import serving_models as sm

    from tenantml.registry.service import Quotas

    svc = RegistrationService(MemoryRegistry(), MemoryArtifactStore(),
                              quotas=Quotas(max_models_per_tenant=1, max_manifest_bytes=4096))
    app = create_app(svc)

    def post(model: str, manifest: dict, files: dict[str, bytes]) -> tuple[int, dict]:
        event = load_event("registry-register-version")
        event["path"] = f"/admin/models/{model}/versions"
        event["pathParameters"] = {**(event.get("pathParameters") or {}), "model": model}
        body = {"manifest": manifest, "files": {n: base64.b64encode(d).decode() for n, d in files.items()}}
        resp = app.resolve(with_body(as_caller(event), body), lambda_context)
        return resp["statusCode"], json.loads(resp["body"])

    v = sm.tabular_version(owner="acme", name="risk")
    manifest = json.loads(v.manifest.model_dump_json())
    too_big = {**manifest, "build": {**manifest["build"], "notes": "x" * 5000}}
    status, body = post("risk", too_big, v.artifacts)
    assert status == 413 and list(body) == ["error"] and "TENANTML_MAX_MANIFEST_BYTES" in body["error"]
    garbage = {"model.onnx": b"\x08\x07garbage"}
    status, body = post("risk", json.loads(manifest_for("risk", garbage).model_dump_json()), garbage)
    assert (status, body) == (400, {"error": "file 'model.onnx' is not a valid ONNX model"})
    assert svc.store.objects == {}
    assert post("risk", manifest, v.artifacts)[0] == 201
    status, body = post("other", {**manifest, "name": "other"}, v.artifacts)
    assert status == 409 and "TENANTML_MAX_MODELS_PER_TENANT" in body["error"]
    assert not any(k.startswith("models/acme/other/") for k in svc.store.objects)
