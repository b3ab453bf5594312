"""Rollouts through the functions on moto: the admin API (registry function, events/registry-rollout-start
.json) starts one; the inference function routes callers by a consistent hash and records per-version
signals in the signals table; the controller (rollback function's logic, on DynamoDB and the same table)
advances a healthy candidate to 100% (production moves) and rolls a failing one back."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta

import boto3
import pytest
import serving_models as sm
from moto_env import AWS, NAMES, use_function_environment

from tenantml.local.provision import create_resources
from tenantml.registry.dynamo import DynamoRegistry
from tenantml.registry.s3 import S3ArtifactStore
from tenantml.rollout.controller import RolloutController
from tenantml.rollout.signals import DynamoSignals

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")
MODEL = "acme-risk"
ROWS = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 8], "data": [[3] * 8]}]}


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def platform(monkeypatch, load_handler, lambda_context):
    from moto import mock_aws

    with mock_aws():
        create_resources(AWS, NAMES)
        registry = DynamoRegistry(NAMES.tables["registry"], AWS)
        store = S3ArtifactStore(NAMES.buckets["artifacts"], AWS)
        sm.register(registry, store, sm.tabular_version(owner="acme", name=MODEL, version="1"))
        sm.register(registry, store, sm.tabular_version(owner="acme", name=MODEL, version="2"), aliases=())
        use_function_environment(monkeypatch, "registry")
        admin = load_handler("registry")
        monkeypatch.setenv("TENANTML_ROLLOUT_CACHE_TTL_SECONDS", "0")
        use_function_environment(monkeypatch, "inference")
        monkeypatch.setenv("TENANTML_ROLLOUT_CACHE_TTL_SECONDS", "0")     # see every change at once
        monkeypatch.setenv("TENANTML_REGISTRY_CACHE_TTL_SECONDS", "0")
        from tenantml.settings import reset_settings
        reset_settings()
        inference = load_handler("inference")
        signals = DynamoSignals(boto3.client("dynamodb", region_name="us-east-1"), NAMES.tables["signals"])
        yield type("P", (), {"admin": admin, "inference": inference, "registry": registry, "signals": signals,
                             "context": lambda_context})


def admin_call(p, load_event, method: str, path: str, body=None, *, tenant: str = "acme") -> tuple[int, dict]:
    e = copy.deepcopy(load_event("registry-rollout-start"))
    e["httpMethod"] = e["requestContext"]["httpMethod"] = method
    e["path"] = path
    parts = path.strip("/").split("/")
    e["pathParameters"] = {"model": parts[2], **({"action": parts[4]} if len(parts) > 4 else {})}
    e["resource"] = "/admin/models/{model}/rollout" + ("/{action}" if len(parts) > 4 else "")
    e["body"] = None if body is None else json.dumps(body)
    e["requestContext"]["authorizer"]["tenant_id"] = tenant
    resp = p.admin.handler(e, p.context)
    return resp["statusCode"], json.loads(resp["body"])


def infer(p, load_event, subject: str, tenant: str = "acme") -> tuple[int, dict]:
    e = copy.deepcopy(load_event("inference-infer-risk"))
    e["path"] = f"/v2/models/{MODEL}/infer"
    e["pathParameters"] = {"model": MODEL}
    e["body"] = json.dumps(ROWS)
    e["requestContext"]["authorizer"].update(tenant_id=tenant, sub=subject)
    resp = p.inference.handler(e, p.context)
    return resp["statusCode"], json.loads(resp["body"])


def start(p, load_event, **body) -> tuple[int, dict]:
    return admin_call(p, load_event, "POST", f"/admin/models/{MODEL}/rollout", {"candidate": "2", **body})


def test_the_sample_event_starts_a_rollout_that_the_audit_log_shows(platform, load_event, lambda_context):
    e = load_event("registry-rollout-start")
    e["path"], e["pathParameters"] = f"/admin/models/{MODEL}/rollout", {"model": MODEL}
    resp = platform.admin.handler(e, lambda_context)
    assert resp["statusCode"] == 201, resp["body"]
    status = json.loads(resp["body"])
    assert (status["stable"], status["candidate"], status["weight"], status["status"]) == (
        "1", "2", 5, "active")
    assert status["signals"]["candidate"]["requests"] == 0
    audit = admin_call(platform, load_event, "GET", f"/admin/models/{MODEL}/rollout")
    assert audit[0] == 200 and audit[1]["reason"] == "retrained on November data"
    records = platform.registry.list_audit("acme").records
    assert records[0].action == "rollout_start" and records[0].actor == "ml-engineer-7"


def test_callers_are_split_by_a_sticky_hash_and_signals_are_recorded(platform, load_event):
    assert start(platform, load_event, stages=[50, 100])[0] == 201
    answered = {f"user-{i}": infer(platform, load_event, f"user-{i}")[1]["model_version"] for i in range(60)}
    assert set(answered.values()) == {"1", "2"}
    assert 15 <= sum(v == "2" for v in answered.values()) <= 45
    again = list(answered.items())[:10]
    assert all(infer(platform, load_event, u)[1]["model_version"] == v for u, v in again)
    platform.inference.service.signals.flush()
    r = platform.registry.get_rollout("acme", MODEL)
    since = r.started_at - timedelta(minutes=1)
    total = sum(platform.signals.read(r, v, since).requests for v in ("1", "2"))
    assert total == 70
    assert platform.signals.read(r, "2", since).p95_ms is not None
    # Another tenant calls nothing of acme's: the same 404 as a model that does not exist.
    missing = (404, {"error": f"model '{MODEL}' not found"})
    assert infer(platform, load_event, "user-1", tenant="globex") == missing
    status, body = admin_call(platform, load_event, "GET", f"/admin/models/{MODEL}/rollout", tenant="globex")
    assert (status, body) == (404, {"error": f"model '{MODEL}' not found"})


def test_a_healthy_candidate_is_advanced_and_completed_by_the_controller(platform, load_event):
    clock = Clock()
    # Both versions are the same graph: latency differences are noise (first loads), not the candidate.
    start(platform, load_event, stages=[50, 100], bake_seconds=60,
          guardrails={"min_requests": 5, "p95_ratio": 50})
    controller = RolloutController(platform.registry, platform.signals, clock=clock)
    platform.inference.service.signals.clock = lambda: clock.now.timestamp()    # one clock for both sides
    for i in range(40):
        infer(platform, load_event, f"user-{i}")
    platform.inference.service.signals.flush()
    (held,) = controller.tick()
    assert held["outcome"] == "none" and held["reason"].startswith("baking")
    clock.now += timedelta(seconds=61)
    (advanced,) = controller.tick()
    assert (advanced["outcome"], advanced["from_weight"], advanced["to_weight"]) == ("advance", 50, 100)
    assert {infer(platform, load_event, f"user-{i}")[1]["model_version"] for i in range(20)} == {"2"}
    platform.inference.service.signals.flush()
    clock.now += timedelta(seconds=61)
    (done,) = controller.tick()
    assert done["outcome"] == "complete"
    assert platform.registry.resolve("acme", MODEL).version == "2"             # production moved
    assert platform.registry.live_rollouts() == []
    actions = [r.action for r in platform.registry.list_audit("acme").records]
    assert actions[:3] == ["rollout_complete", "rollout_advance", "rollout_start"]


def test_a_failing_candidate_is_rolled_back_and_callers_return_to_stable(platform, load_event, monkeypatch):
    start(platform, load_event, stages=[50, 100], guardrails={"min_requests": 5})
    store = platform.inference.service.runtime
    real = store.get

    def broken(mv):                                     # the candidate cannot load: every request fails
        if mv.version == "2":
            from tenantml.errors import ModelUnavailable
            raise ModelUnavailable(detail="candidate artifacts corrupt")
        return real(mv)
    monkeypatch.setattr(store, "get", broken)
    codes = [infer(platform, load_event, f"user-{i}")[0] for i in range(40)]
    assert 503 in codes and 200 in codes
    platform.inference.service.signals.flush()
    (rolled,) = RolloutController(platform.registry, platform.signals).tick()
    assert rolled["outcome"] == "rollback" and "candidate error rate 100.0%" in rolled["reason"]
    assert {infer(platform, load_event, f"user-{i}")[1]["model_version"] for i in range(20)} == {"1"}
    status, body = admin_call(platform, load_event, "GET", f"/admin/models/{MODEL}/rollout")
    assert body["status"] == "rolled_back" and body["weight"] == 0
    assert admin_call(platform, load_event, "POST", f"/admin/models/{MODEL}/rollout/promote")[0] == 409


@pytest.mark.parametrize(("body", "message"), [
    ({"candidate": "1"}, "the candidate must differ from the stable version"),
    ({"candidate": "9"}, f"model '{MODEL}' version '9' not found"),
    ({"candidate": "2", "stages": [5, 50]}, "a canary's last stage must be 100"),
    ({"candidate": "2", "cohort": ["globex"]}, "a cohort applies to shared models only"),
    ({"candidate": "2", "weight": 5}, "invalid request: weight: Extra inputs are not permitted"),
])
def test_bad_starts_get_a_stable_error(platform, load_event, body, message):
    status, answer = admin_call(platform, load_event, "POST", f"/admin/models/{MODEL}/rollout", body)
    assert status in (400, 404) and message in answer["error"]
    assert platform.registry.get_rollout("acme", MODEL) is None


def test_the_verbs_follow_the_state_machine(platform, load_event):
    start(platform, load_event)
    path = f"/admin/models/{MODEL}/rollout"
    assert start(platform, load_event)[0] == 409                                # one live rollout at a time
    assert admin_call(platform, load_event, "POST", f"{path}/freeze", {"reason": "holiday"})[1]["status"] == \
        "frozen"
    assert admin_call(platform, load_event, "POST", f"{path}/freeze")[0] == 409
    assert admin_call(platform, load_event, "POST", f"{path}/resume")[1]["status"] == "active"
    assert admin_call(platform, load_event, "POST", f"{path}/explode")[0] == 400
    done = admin_call(platform, load_event, "POST", f"{path}/abort", {"reason": "wrong data"})
    assert done[1]["status"] == "aborted" and done[1]["reason"] == "wrong data"
    assert platform.registry.resolve("acme", MODEL).version == "1"
