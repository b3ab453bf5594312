"""The local platform over HTTP: API Gateway semantics (authorizer, cache, gateway errors), tenancy and
the real models behind the Open Inference Protocol."""

from __future__ import annotations

import base64
import json
import math
import time

import pytest

pytestmark = pytest.mark.e2e

BUG_REPORT = ("The app crashes with a NullPointerException when I click Save on the settings page; "
              "the stack trace is attached and it happens every time since the last release")
# Feature order of project-risk (manifest.features): open_items, overdue_items, blocked_items, team_size,
# velocity, days_to_deadline, scope_change_pct, bug_ratio.
RISKY_PROJECT = [500, 220, 160, 2, 6.0, 5, 70.0, 0.6]
CALM_PROJECT = [10, 0, 0, 10, 60.0, 180, -5.0, 0.05]


def text_request(texts: list[str]) -> dict:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}


def risk_request(rows: list[list[float]]) -> dict:
    return {"inputs": [{"name": "features", "datatype": "FP32", "shape": [len(rows), len(rows[0])],
                        "data": [v for row in rows for v in row]}]}


def output(reply, name: str) -> dict:
    assert reply.status == 200, reply.body
    outs = {o["name"]: o for o in reply.json()["outputs"]}
    return outs[name]


# -- gateway and authorizer ------------------------------------------------------------------------------

def test_health_needs_no_token(client):
    live = client.get("/v2/health/live")
    assert live.status == 200 and live.json() == {"live": True}
    assert client.get("/v2/health/ready").status == 200
    assert client.get("/v1/v2/health/live").status == 200  # with the stage prefix too


def test_no_token_is_401_from_the_gateway(client, platform):
    before = platform.emulator.authorizer_invocations
    reply = client.get("/v2/models")
    assert reply.status == 401 and reply.json() == {"error": "Unauthorized"}
    assert platform.emulator.authorizer_invocations == before  # the authorizer never ran


def test_token_signed_by_an_unknown_key_is_403(client, platform):
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    claims = {"iss": platform.keys.issuer, "aud": platform.keys.audience, "sub": "mallory",
              "tenant_id": "acme", "scope": "models:read models:write", "iat": now, "nbf": now,
              "exp": now + 600}
    forged = jwt.encode(claims, stranger, algorithm="RS256", headers={"kid": platform.keys.kids["RS256"]})
    reply = client.get("/v2/models", token=forged)
    assert reply.status == 403
    assert reply.json() == {"error": "User is not authorized to access this resource with an explicit deny"}


def test_expired_token_is_403(client, platform):
    expired = platform.token("acme", ["models:read"], ttl=60, now=time.time() - 3600)
    reply = client.get("/v2/models", token=expired)
    assert reply.status == 403 and "explicit deny" in reply.json()["error"]


def test_unknown_route_is_missing_authentication_token(client, acme):
    reply = client.get("/v2/nothing-here", token=acme)
    assert reply.status == 404 and reply.json() == {"error": "route not found"}


def test_authorizer_result_is_cached_per_token_and_covers_other_routes(client, platform):
    token = platform.token("acme", ["models:read"])  # a new token: a new cache key
    api = platform.emulator
    before = api.authorizer_invocations
    assert client.get("/v2/models", token=token).status == 200
    assert api.authorizer_invocations == before + 1
    assert client.get("/v2/models", token=token).status == 200
    assert api.authorizer_invocations == before + 1          # served from the cache
    reply = client.post("/v2/models/minilm-embed/infer", token=token, body=text_request(["cached allow"]))
    assert reply.status == 200, reply.body  # the cached stage-wide Allow also covers POST .../infer
    assert api.authorizer_invocations == before + 1


def test_admin_route_needs_models_write(client, platform, acme):
    denied = client.get("/admin/models", token=acme)
    assert denied.status == 403 and "error" in denied.json()
    writer = platform.token("acme", ["models:read", "models:write"])
    assert client.get("/admin/models", token=writer).status == 200


def test_gateway_body_cap_is_413(client, acme):
    reply = client.post("/v2/models/minilm-embed/infer", token=acme, raw=b"x" * (10 * 1024 * 1024 + 1))
    assert reply.status == 413 and reply.json() == {"error": "Request Too Long"}


# -- tenancy ---------------------------------------------------------------------------------------------

def _names(reply) -> set[str]:
    assert reply.status == 200, reply.body
    return {m["name"] for m in reply.json()["models"]}


def test_acme_lists_its_own_and_shared_models(client, acme):
    assert {"minilm-embed", "minilm-embed-fp32", "work-item-classifier", "project-risk"} <= _names(
        client.get("/v2/models", token=acme))


def test_globex_sees_shared_models_but_not_acmes(client, globex):
    names = _names(client.get("/v2/models", token=globex))
    assert {"minilm-embed", "work-item-classifier"} <= names
    assert "project-risk" not in names


def test_another_tenants_model_answers_exactly_like_a_missing_one(client, globex):
    foreign = client.post("/v2/models/project-risk/infer", token=globex, body=risk_request([CALM_PROJECT]))
    missing = client.post("/v2/models/no-such-model/infer", token=globex, body=risk_request([CALM_PROJECT]))
    assert foreign.status == missing.status == 404
    assert foreign.body == missing.body.replace(b"no-such-model", b"project-risk")
    assert b"acme" not in foreign.body
    meta = client.get("/v2/models/project-risk", token=globex)
    missing_meta = client.get("/v2/models/no-such-model", token=globex)
    assert meta.status == 404 and meta.body == missing_meta.body.replace(b"no-such-model", b"project-risk")


def test_an_operator_registers_a_shared_model_that_another_tenant_lists_and_calls(client, platform):
    """POST /admin/models/{model}/versions?owner=_shared with a real dev token holding models:write and
    models:admin: the version goes to `_shared`, and a tenant that never registered anything sees it."""
    import serving_models as sm

    v = sm.tabular_version(name="e2e-shared-risk")   # owner _shared
    body = {"manifest": json.loads(v.manifest.model_dump_json()), "aliases": ["production"],
            "files": {n: base64.b64encode(d).decode() for n, d in v.artifacts.items()}}
    path = "/admin/models/e2e-shared-risk/versions"
    writer = platform.token("acme", ["models:write"], sub="acme-engineer")
    denied = client.post(path + "?owner=_shared", token=writer, body=body)
    assert denied.status == 403 and denied.json() == {"error": "missing scope 'models:admin'"}
    operator = platform.token("acme", ["models:write", "models:admin"], sub="platform-operator")
    assert client.post(path + "?owner=globex", token=operator, body=body).status == 400

    created = client.post(path + "?owner=_shared", token=operator, body=body)
    assert created.status == 201, created.body
    assert created.json() == {"model": "e2e-shared-risk", "version": "1", "aliases": ["production"]}
    # A tenant nobody has used yet (so no inference environment has its model list cached).
    initech = platform.token("initech", ["models:read"])
    assert "e2e-shared-risk" in _names(client.get("/v2/models", token=initech))
    reply = client.post("/v2/models/e2e-shared-risk/infer", token=initech,
                        body=risk_request([[0.0] * len(sm.FEATURES)]))
    assert output(reply, "risk")["data"][0] in sm.RISK_LABELS
    # The write is not acme's: its own audit log does not have it (it is in the _shared log), only the
    # attempt acme's engineer was refused.
    audit = client.get("/admin/audit", token=operator)
    mine = [r for r in audit.json()["records"] if r["model"] == "e2e-shared-risk"]
    assert audit.status == 200 and [(r["action"], r["actor"]) for r in mine] == [
        ("refused_post_versions", "acme-engineer")]


# -- models ----------------------------------------------------------------------------------------------

def test_embedding_is_a_384_dim_unit_vector(client, acme):
    emb = output(client.post("/v2/models/minilm-embed/infer", token=acme,
                             body=text_request(["Deploy the release on Friday"])), "embedding")
    assert emb["datatype"] == "FP32" and emb["shape"] == [1, 384]
    assert len(emb["data"]) == 384
    assert math.isclose(math.sqrt(sum(v * v for v in emb["data"])), 1.0, abs_tol=1e-3)


def test_classifier_labels_an_obvious_bug_report(client, acme):
    reply = client.post("/v2/models/work-item-classifier/infer", token=acme, body=text_request([BUG_REPORT]))
    category = output(reply, "category")
    assert category["data"] == ["bug"]
    probs = output(reply, "category_probs")
    assert probs["shape"] == [1, 4] and math.isclose(sum(probs["data"]), 1.0, abs_tol=1e-4)


def test_project_risk_for_acme(client, acme):
    reply = client.post("/v2/models/project-risk/infer", token=acme,
                        body=risk_request([RISKY_PROJECT, CALM_PROJECT]))
    assert output(reply, "risk")["data"] == ["high", "low"]
    probs = output(reply, "risk_probs")
    assert probs["shape"] == [2, 3]


# -- bad input -------------------------------------------------------------------------------------------

def test_bad_json_is_400(client, acme):
    reply = client.post("/v2/models/minilm-embed/infer", token=acme, raw=b'{"inputs": [')
    assert reply.status == 400 and "error" in reply.json()


def test_nan_is_400(client, acme):
    raw = (b'{"inputs":[{"name":"features","datatype":"FP32","shape":[1,8],'
           b'"data":[NaN,0,0,5,20,30,0,0.1]}]}')
    reply = client.post("/v2/models/project-risk/infer", token=acme, raw=raw)
    assert reply.status == 400 and "error" in reply.json()


def test_batch_of_65_is_413(client, acme):
    reply = client.post("/v2/models/minilm-embed/infer", token=acme,
                        body=text_request([f"item {i}" for i in range(65)]))
    assert reply.status == 413 and "error" in reply.json()


def test_concurrent_requests_each_get_their_own_answer(client, platform, acme, globex):
    """Parallel requests from two tenants (the server is threaded, each function serves one invocation at
    a time like a warm Lambda environment): every caller gets the answer to its own request."""
    from concurrent.futures import ThreadPoolExecutor

    texts = [f"work item number {i} about the login page" for i in range(8)]
    expected = {t: output(client.post("/v2/models/minilm-embed/infer", token=acme, body=text_request([t])),
                          "embedding")["data"] for t in texts}

    def call(i: int) -> tuple[str, object]:
        if i % 3 == 2:  # interleave another tenant on a route it may not see
            reply = client.get("/v2/models", token=globex)
            return "globex", "project-risk" in _names(reply)
        text = texts[i % len(texts)]
        reply = client.post("/v2/models/minilm-embed/infer", token=acme, body=text_request([text]))
        return text, output(reply, "embedding")["data"]

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(call, range(24)))
    for key, value in results:
        if key == "globex":
            assert value is False
        else:
            assert value == pytest.approx(expected[key], abs=1e-6)
