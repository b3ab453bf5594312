"""The platform behind an HTTP API (`-c api=http`, `tenantml local --api http`): the same functions, in
the same warm environments, behind a second emulator playing the HTTP API (payload format 2.0, simple
authorizer responses). The answers must be the REST API's: same routes, tenancy, statuses and bodies,
except the gateway's own errors, which an HTTP API cannot reshape (`{"message": ...}`)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tenantml.local.apigw import ApiConfig, ApiGatewayEmulator, ApiServer

from .conftest import Client
from .test_local_platform import CALM_PROJECT, output, risk_request, text_request


@pytest.fixture(scope="module")
def http_api(platform) -> Iterator[ApiGatewayEmulator]:
    emulator = ApiGatewayEmulator(platform.emulator.functions, config=ApiConfig(flavour="http"))
    server = ApiServer(emulator, host="127.0.0.1", port=0).start()
    emulator.base_url = server.base_url  # type: ignore[attr-defined]
    try:
        yield emulator
    finally:
        server.stop()


@pytest.fixture(scope="module")
def http(http_api) -> Client:
    return Client(http_api.base_url)


def test_health_and_the_gateways_own_errors(http, platform):
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v1/v2/health/ready").status == 200
    no_token = http.get("/v2/models")
    assert (no_token.status, no_token.json()) == (401, {"message": "Unauthorized"})
    expired = platform.token("acme", ["models:read"], ttl=60, now=time.time() - 3600)
    denied = http.get("/v2/models", token=expired)
    assert (denied.status, denied.json()) == (403, {"message": "Forbidden"})
    unknown = http.get("/v2/nothing-here", token=platform.token("acme", ["models:read"]))
    assert (unknown.status, unknown.json()) == (404, {"message": "Not Found"})


def test_the_same_answers_as_the_rest_api(http, client, acme, globex):
    for path in ("/v2/models", "/v2/models/minilm-embed", "/v2/models/project-risk", "/v2"):
        rest, v2 = client.get(path, token=acme), http.get(f"/v1{path}", token=acme)
        assert (v2.status, v2.json()) == (rest.status, rest.json()), path
    body = risk_request([CALM_PROJECT])
    rest = client.post("/v2/models/project-risk/infer", token=acme, body={**body, "id": "same"})
    v2 = http.post("/v2/models/project-risk/infer", token=acme, body={**body, "id": "same"})
    assert v2.status == rest.status == 200 and v2.json() == rest.json()
    embed = http.post("/v2/models/minilm-embed/infer", token=globex, body=text_request(["hello"]))
    assert embed.status == 200 and output(embed, "embedding")["shape"] == [1, 384]


def test_another_tenants_model_answers_exactly_like_a_missing_one(http, client, globex):
    body = risk_request([CALM_PROJECT])
    foreign = http.post("/v2/models/project-risk/infer", token=globex, body=body)
    missing = http.post("/v2/models/no-such-model/infer", token=globex, body=body)
    assert foreign.status == missing.status == 404
    assert foreign.body == missing.body.replace(b"no-such-model", b"project-risk")
    assert foreign.body == client.post("/v2/models/project-risk/infer", token=globex, body=body).body


def test_scopes_are_the_functions_and_a_cached_allow_covers_other_routes(http, http_api, platform):
    reader = platform.token("acme", ["models:read"])
    before = http_api.authorizer_invocations
    assert http.get("/v2/models", token=reader).status == 200
    admin = http.get("/admin/models", token=reader)      # allowed by the authorizer, refused by the function
    assert (admin.status, admin.json()) == (403, {"error": "missing scope 'models:write'"})
    assert http_api.authorizer_invocations == before + 1
    writer = platform.token("acme", ["models:read", "models:write"])
    assert http.get("/admin/models", token=writer).status == 200


def test_a_binary_body_reaches_the_function_base64_encoded_and_decoded(http, acme):
    import json

    raw = json.dumps(text_request(["binary path"])).encode()
    reply = http.request("POST", "/v2/models/minilm-embed/infer", token=acme, raw=raw,
                         headers={"Content-Type": "application/octet-stream"})
    assert reply.status == 200, reply.body
    bad = http.request("POST", "/v2/models/minilm-embed/infer", token=acme, raw=b"\xff\xfe not json",
                       headers={"Content-Type": "application/octet-stream"})
    assert bad.status == 400 and "error" in bad.json()
