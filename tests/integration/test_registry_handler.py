"""functions/registry/handler.py in-process on moto, fed events/registry-*.json, configured through the
environment exactly as Lambda would be (tenantml.local.provision.local_environment)."""

from __future__ import annotations

import base64
import copy
import json
import logging

import pytest
from moto_env import AWS, NAMES, lambda_account

from tenantml.manifest import Manifest
from tenantml.registry.dynamo import DynamoRegistry
from tenantml.registry.s3 import S3ArtifactStore


@pytest.fixture
def fn(monkeypatch, load_handler):
    with lambda_account(monkeypatch, "registry"):
        yield load_handler("registry")        # a fresh module: a cold start


@pytest.fixture
def call(fn, lambda_context):
    def invoke(event: dict) -> tuple[int, dict, dict]:
        resp = fn.handler(event, lambda_context)
        headers = {**(resp.get("headers") or {}),
                   **{k: v[-1] for k, v in (resp.get("multiValueHeaders") or {}).items()}}
        return resp["statusCode"], json.loads(resp["body"]), headers
    return invoke


def caller(event: dict, tenant: str = "acme", scopes: str = "models:write") -> dict:
    event = copy.deepcopy(event)
    event["requestContext"]["authorizer"].update(tenant_id=tenant, scopes=scopes)
    return event


def test_register_list_alias_and_audit_through_the_sample_events(call, load_event):
    status, body, headers = call(load_event("registry-register-version"))
    assert (status, body) == (201, {"model": "churn-risk", "version": "1", "aliases": ["production"]})
    assert headers["Location"] == "/v2/models/churn-risk/versions/1"
    assert headers["Content-Type"] == "application/json"

    registry = DynamoRegistry(NAMES.tables["registry"], AWS)
    store = S3ArtifactStore(NAMES.buckets["artifacts"], AWS)
    mv = registry.resolve("acme", "churn-risk")
    sent = json.loads(load_event("registry-register-version")["body"])
    assert store.get("acme", "churn-risk", "1", "model.onnx") == base64.b64decode(sent["files"]["model.onnx"])
    assert Manifest.model_validate_json(store.get("acme", "churn-risk", "1", "manifest.json")) == mv.manifest

    status, body, _ = call(load_event("registry-list-models"))
    assert status == 200
    assert body == {"models": [{"name": "churn-risk", "owner": "own", "task": "tabular-classification",
                                "backend": "cpu", "versions": ["1"], "latest": "1",
                                "aliases": {"production": "1"}}]}

    status, body, _ = call(load_event("registry-set-alias"))
    assert (status, body) == (200, {"model": "churn-risk", "alias": "production", "version": "1",
                                    "previous": "1"})

    status, body, _ = call(load_event("registry-list-versions"))
    assert status == 200 and body["model"] == "churn-risk" and body["owner"] == "own"
    [v] = body["versions"]
    assert (v["version"], v["aliases"], v["registered_by"], v["status"]) == ("1", ["production"],
                                                                            "ml-engineer-7", "active")

    status, body, _ = call(load_event("registry-audit"))
    assert status == 200 and body["next_token"] is None
    [record] = body["records"]
    assert (record["action"], record["actor"], record["model"], record["version"]) == (
        "register_version", "ml-engineer-7", "churn-risk", "1")
    assert set(record) == {"id", "timestamp", "action", "actor", "model", "version", "details"}


def test_registering_the_same_version_twice_is_409(call, load_event):
    assert call(load_event("registry-register-version"))[0] == 201
    status, body, _ = call(load_event("registry-register-version"))
    assert (status, body) == (409, {"error": "version '1' of model 'churn-risk' already exists"})


def test_without_models_write_every_route_is_403(call, load_event):
    for name in ("registry-register-version", "registry-list-models", "registry-list-versions",
                 "registry-set-alias", "registry-audit"):
        status, body, _ = call(caller(load_event(name), scopes="inference:invoke"))
        assert (status, body) == (403, {"error": "missing scope 'models:write'"}), name


def test_another_tenants_model_is_404_like_a_missing_one(call, load_event):
    status, missing, _ = call(caller(load_event("registry-list-versions"), tenant="globex"))
    assert status == 404
    assert call(load_event("registry-register-version"))[0] == 201
    status, foreign, _ = call(caller(load_event("registry-list-versions"), tenant="globex"))
    assert (status, foreign) == (404, missing)
    assert call(caller(load_event("registry-set-alias"), tenant="globex"))[:2] == (404, missing)
    assert call(caller(load_event("registry-list-models"), tenant="globex"))[1] == {"models": []}
    status, body, _ = call(caller(load_event("registry-audit"), tenant="globex"))
    assert body["records"] == []


def with_owner(event: dict, owner: str) -> dict:
    event = copy.deepcopy(event)
    event["queryStringParameters"] = {"owner": owner}
    event["multiValueQueryStringParameters"] = {"owner": [owner]}
    return event


def test_shared_models_need_owner_shared_and_models_admin_and_then_serve_every_tenant(fn, call, load_event):
    event = with_owner(load_event("registry-register-version"), "_shared")
    assert call(caller(event, scopes="models:write"))[:2] == (403, {"error": "missing scope 'models:admin'"})
    status, body, _ = call(caller(with_owner(load_event("registry-register-version"), "globex"),
                                  scopes="models:write models:admin"))
    assert status == 400 and "'owner' may only be '_shared'" in body["error"]
    assert call(load_event("registry-list-models"))[1] == {"models": []}     # nothing was written

    target = logging.getLogger("tenantml")
    rec = Records(fn.logger.registered_formatter)
    target.addHandler(rec)
    try:
        assert call(caller(event, scopes="models:write models:admin"))[0] == 201
    finally:
        target.removeHandler(rec)
    [line] = [line for line in rec.lines if line["message"] == "shared model write"]
    assert (line["tenant"], line["owner"], line["actor"]) == ("acme", "_shared", "ml-engineer-7")
    status, body, _ = call(caller(load_event("registry-list-versions"), tenant="globex"))
    assert status == 200 and body["owner"] == "shared"
    assert "registered_by" not in body["versions"][0]   # operators are not the tenant's business
    registry = DynamoRegistry(NAMES.tables["registry"], AWS)
    assert registry.resolve("globex", "churn-risk").owner == "_shared"
    # The audit record names the operator (the token's sub); it is in the _shared log. acme's log holds
    # only the refused attempt (without models:admin), audited on DynamoDB like every other record.
    [record] = registry.list_audit("_shared").records
    assert (record.action, record.actor, record.model) == ("register_version", "ml-engineer-7", "churn-risk")
    refused = call(load_event("registry-audit"))[1]["records"]
    assert [(r["action"], r["details"]) for r in refused] == [
        ("refused_post_versions", {"reason": "403 missing scope 'models:admin'"})]


def test_a_tampered_inline_file_registers_nothing(call, load_event):
    event = load_event("registry-register-version")
    body = json.loads(event["body"])
    body["files"]["model.onnx"] = base64.b64encode(b"evil").decode()
    event["body"] = json.dumps(body)
    status, answer, _ = call(event)
    assert (status, answer) == (
        400, {"error": "file 'model.onnx' does not match the sha256/size in the manifest"})
    assert call(load_event("registry-list-models"))[1] == {"models": []}
    assert call(load_event("registry-audit"))[1]["records"] == []


def test_audit_pages_through_the_api(call, load_event):
    base = json.loads(load_event("registry-register-version")["body"])
    for version in ("1", "2", "3"):
        event = load_event("registry-register-version")
        event["body"] = json.dumps({**base, "version": version, "aliases": []})
        assert call(event)[0] == 201
    event = load_event("registry-audit")
    event["queryStringParameters"] = {"limit": "2"}
    _, first, _ = call(event)
    assert [r["version"] for r in first["records"]] == ["3", "2"] and first["next_token"]
    event["queryStringParameters"] = {"limit": "2", "next_token": first["next_token"]}
    _, second, _ = call(event)
    assert [r["version"] for r in second["records"]] == ["1"] and second["next_token"] is None


class Records(logging.Handler):
    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[dict] = []
        self.fmt = formatter

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.fmt.format(record)))


def test_logs_carry_the_tenant_and_never_the_file_contents(fn, call, load_event):
    target = logging.getLogger("tenantml")
    rec = Records(fn.logger.registered_formatter)
    target.addHandler(rec)
    try:
        call(load_event("registry-register-version"))
        call(caller(load_event("registry-list-versions"), tenant="globex"))
    finally:
        target.removeHandler(rec)
    acme = [line for line in rec.lines if line.get("tenant") == "acme"]
    assert any(line["message"] == "registration complete" for line in acme)
    assert all(line.get("tenant") in ("acme", "globex") for line in rec.lines)
    [refusal] = [line for line in rec.lines if line.get("tenant") == "globex"]
    assert (refusal["status"], refusal["error"]) == (404, "model 'churn-risk' not found")
    sent = json.loads(load_event("registry-register-version")["body"])["files"]["model.onnx"]
    assert all(sent not in json.dumps(line) for line in rec.lines)
