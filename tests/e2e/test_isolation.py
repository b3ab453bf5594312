"""Tenant isolation (OWASP API1, broken object level authorization) over HTTP, on every route that takes
an id: model, version, async request, drift report, rollout and feedback. Tenant globex, with a valid
token holding every scope, asks for tenant acme's object and for an id that does not exist: the two
answers must be the same status and the same body (the id aside), and acme itself must get its object,
so the comparison is about something real.

Also the authorizer-cache case: API Gateway caches the authorizer's Allow per token for every route, so
a globex token allowed once is replayed, within the cache TTL, on acme's resources: the function refuses
it like a missing object."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tenantml import resources

from .test_local_platform import CALM_PROJECT, risk_request

ALL_SCOPES = ["models:read", "models:feedback", "models:write"]
OWNED = "project-risk"                # acme's own model in the local platform (test_local_platform)
MISSING = "no-such-model-x9"


@pytest.fixture(scope="module")
def tokens(platform) -> dict[str, str]:
    return {t: platform.token(t, ALL_SCOPES) for t in ("acme", "globex")}


@pytest.fixture(scope="module")
def gpu_request(client, tokens) -> str:
    """An async request of acme's (its id), submitted to the shared GPU model."""
    reply = client.post("/v2/models/mpnet-embed/infer", token=tokens["acme"],
                        body={"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["x"]}]})
    assert reply.status == 202, reply.body
    return reply.headers["Location"].rsplit("/", 1)[-1]


def _feedback() -> dict[str, Any]:
    return {"feedback": [{"id": "r-1", "index": 0, "label": "low"}]}


# (method, path with {id}, body, the status acme gets for its own object)
CASES = [
    ("GET", "/v2/models/{id}", None, 200),
    ("GET", "/v2/models/{id}/ready", None, 200),
    ("GET", "/v2/models/{id}/versions/1", None, 200),
    ("GET", "/v2/models/{id}/versions/1/ready", None, 200),
    ("POST", "/v2/models/{id}/infer", risk_request([CALM_PROJECT]), 200),
    ("POST", "/v2/models/{id}/versions/1/infer", risk_request([CALM_PROJECT]), 200),
    ("POST", "/v2/models/{id}/feedback", _feedback(), 202),
    ("GET", "/admin/models/{id}/versions", None, 200),
    ("GET", "/admin/models/{id}/drift", None, 200),
    ("GET", "/admin/models/{id}/rollout", None, None),           # acme: 200 or 404 (no rollout yet)
    ("POST", "/admin/models/{id}/rollout/promote", {"reason": "x"}, None),
    ("PUT", "/admin/models/{id}/aliases/staging", {"version": "1"}, 200),
]


def _call(client, method: str, path: str, token: str, body: Any) -> Any:
    return client.request(method, path, token=token, body=body)


@pytest.mark.parametrize(("method", "template", "body", "owner_status"), CASES,
                         ids=[f"{m} {t}" for m, t, _, _ in CASES])
def test_another_tenants_object_answers_exactly_like_a_missing_one(client, tokens, method, template, body,
                                                                   owner_status):
    if owner_status is not None:
        own = _call(client, method, template.format(id=OWNED), tokens["acme"], body)
        assert own.status == owner_status, own.body
    foreign = _call(client, method, template.format(id=OWNED), tokens["globex"], body)
    missing = _call(client, method, template.format(id=MISSING), tokens["globex"], body)
    assert foreign.status == missing.status and foreign.status in (404, 400, 409), foreign.body
    assert foreign.body == missing.body.replace(MISSING.encode(), OWNED.encode())
    assert b"acme" not in foreign.body


def test_an_async_request_of_another_tenant_answers_like_one_that_never_existed(client, tokens, gpu_request):
    own = client.get(f"/v2/requests/{gpu_request}", token=tokens["acme"])
    assert own.status in (200, 202), own.body
    other = "0" * 32
    foreign = client.get(f"/v2/requests/{gpu_request}", token=tokens["globex"])
    missing = client.get(f"/v2/requests/{other}", token=tokens["globex"])
    assert foreign.status == missing.status == 404
    assert foreign.body == missing.body.replace(other.encode(), gpu_request.encode())


def test_every_route_with_an_id_is_covered_here():
    """A new route taking an id must be added to this module."""
    covered = {("GET", "/v2/requests/{id}")} | {
        (m, t.replace("{id}", "{model}").replace("/versions/1", "/versions/{version}")
         .replace("/rollout/promote", "/rollout/{action}").replace("/aliases/staging", "/aliases/{alias}"))
        for m, t, _, _ in CASES}
    with_ids = {(r.method, r.path) for r in resources.ROUTES if "{" in r.path}
    creates = {("POST", "/admin/models/{model}/versions"), ("POST", "/admin/models/{model}/rollout")}
    assert with_ids - creates <= covered, sorted(with_ids - creates - covered)


def test_creating_under_another_tenants_model_name_creates_the_callers_own(client, tokens, platform):
    """The two routes that create by name do not reach acme's object: a rollout of 'acme's model' by
    globex is a rollout of globex's model of that name, which does not exist (404 like a missing one)."""
    body = {"candidate": "2", "mode": "canary"}
    foreign = client.post(f"/admin/models/{OWNED}/rollout", token=tokens["globex"], body=body)
    missing = client.post(f"/admin/models/{MISSING}/rollout", token=tokens["globex"], body=body)
    assert foreign.status == missing.status and foreign.body == missing.body.replace(
        MISSING.encode(), OWNED.encode())


def test_a_token_allowed_and_cached_is_refused_by_the_function_on_another_tenants_resource(client, platform):
    token = platform.token("globex", ["models:read"])            # a new token: a new cache entry
    api = platform.emulator
    before = api.authorizer_invocations
    assert client.get("/v2/models", token=token).status == 200      # Allow cached for the whole stage
    replay = client.post(f"/v2/models/{OWNED}/infer", token=token, body=risk_request([CALM_PROJECT]))
    assert api.authorizer_invocations == before + 1                 # the replay was not re-authorized
    assert replay.status == 404 and json.loads(replay.body) == {"error": f"model '{OWNED}' not found"}
