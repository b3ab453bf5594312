"""Drift jobs end to end on moto, driven by the local event runtime with the platform's own declarations:
the hourly schedule fires drift_scheduler, which queues one job per (tenant, model, version) with capture
frames in the window; drift_worker streams them against the version's baseline.json, writes a JSON and an
HTML report, and puts DriftDetected on the bus, where a rule delivers it to a listener."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import numpy as np
import pytest
from moto_env import AWS, NAMES, lambda_account, local_functions

from tenantml import resources
from tenantml.events import DriftDetected, parse_detail
from tenantml.local.context import handler_path
from tenantml.local.events import EventRuntime
from tenantml.monitoring import build_baseline
from tenantml.monitoring.capture import encode_frame, frame_key
from tenantml.registry.dynamo import DynamoRegistry
from tenantml.registry.memory import manifest_for
from tenantml.registry.s3 import S3ArtifactStore
from tenantml.registry.service import RegistrationService

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "functions"
ON_DRIFT = resources.FunctionDef("on_drift", "test", triggers=(  # type: ignore[arg-type]
    resources.RuleTrigger("drift", {"source": ["tenantml"], "detail-type": ["DriftDetected"]}),))
DEFINITIONS = (*(resources.function(n) for n in ("publisher", "drift_scheduler", "drift_worker")), ON_DRIFT)
SCHEDULED = datetime(2026, 11, 30, 18, 0, tzinfo=UTC)          # checks [17:00, 18:00)
IN_WINDOW = SCHEDULED - timedelta(minutes=30)
LEVELS = ["low", "medium", "high"]


def reference(rows: int = 5000, seed: int = 0):
    rng = np.random.default_rng(seed)
    return build_baseline({"velocity": rng.normal(20, 5, rows), "overdue": rng.poisson(3, rows)},
                          predictions=rng.choice(LEVELS, rows, p=[.5, .3, .2]))


def register(model: str, tenant: str = "acme", *, with_baseline: bool = True) -> None:
    files = {"model.onnx": b"onnx bytes of " + model.encode()}
    if with_baseline:
        files["baseline.json"] = reference().model_dump_json().encode()
    svc = RegistrationService(DynamoRegistry(NAMES.tables["registry"], AWS),
                              S3ArtifactStore(NAMES.buckets["artifacts"], AWS))
    svc.register(owner=tenant, model=model, manifest=manifest_for(model, files), actor="tester", files=files,
                 aliases=["production"])


def capture(model: str, tenant: str = "acme", *, shift: float = 0.0, rows: int = 2000, at=IN_WINDOW,
            seed: int = 1) -> str:
    rng = np.random.default_rng(seed)
    data = encode_frame(tenant, model, "1", numeric={"velocity": rng.normal(20 + shift, 5, rows),
                                                     "overdue": rng.poisson(3, rows)},
                        categorical={"prediction": rng.choice(LEVELS, rows, p=[.5, .3, .2])},
                        request_ids=[f"r{i}" for i in range(rows)])
    key = frame_key(tenant, model, "1", at)
    boto3.client("s3", region_name="us-east-1").put_object(Bucket=NAMES.buckets["artifacts"], Key=key,
                                                           Body=data)
    return key


@pytest.fixture
def runtime(monkeypatch):
    with lambda_account(monkeypatch, "drift_worker"):
        functions = local_functions(
            DEFINITIONS,
            lambda d: FIXTURES / "bus_listener" / "handler.py" if d is ON_DRIFT else handler_path(d.name),
            TENANTML_DRIFT_WINDOW_MINUTES="60")     # hourly, as deployed (locally: 5 minutes)
        rt = EventRuntime(functions, AWS, NAMES, definitions=DEFINITIONS, stream_retry_backoff_s=0.01)
        yield rt.provision()
        rt.stop()


def s3_json(key: str) -> dict:
    return json.loads(boto3.client("s3", region_name="us-east-1").get_object(
        Bucket=NAMES.buckets["artifacts"], Key=key)["Body"].read())


def reports() -> list[str]:
    resp = boto3.client("s3", region_name="us-east-1").list_objects_v2(Bucket=NAMES.buckets["artifacts"],
                                                                       Prefix="reports/")
    return sorted(o["Key"] for o in resp.get("Contents") or [])


def drift_events(rt) -> list[DriftDetected]:
    seen = rt.functions["on_drift"].load().SEEN
    return [parse_detail(e["detail-type"], e["detail"]) for e in seen]


def test_shifted_traffic_is_reported_and_announced(runtime):
    register("project-risk")
    capture("project-risk", shift=6.0)
    runtime.fire("drift", SCHEDULED)
    runtime.run_until_idle()
    key = "reports/tenant=acme/model=project-risk/version=1/2026-11-30T18-00Z"
    assert reports() == [f"{key}.html", f"{key}.json"]
    report = s3_json(f"{key}.json")
    assert report["verdict"] == "drift" and report["rows"] == 2000
    verdicts = {f["name"]: f["verdict"] for f in report["features"]}
    assert verdicts == {"velocity": "drift", "overdue": "no_drift"}
    (event,) = drift_events(runtime)
    assert (event.tenant, event.model, event.version, event.kind) == ("acme", "project-risk", "1", "data")
    assert event.report == f"{key}.json" and event.drifted_features == ["velocity"]
    assert event.window_start == "2026-11-30T17:00:00Z" and event.window_end == "2026-11-30T18:00:00Z"
    page = boto3.client("s3", region_name="us-east-1").get_object(
        Bucket=NAMES.buckets["artifacts"], Key=f"{key}.html")["Body"].read().decode()
    assert page.startswith("<!doctype html>") and "<svg" in page and "velocity" in page
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page                                     # opens offline: nothing to fetch


def test_unchanged_traffic_is_reported_without_an_event(runtime):
    register("project-risk")
    capture("project-risk")
    runtime.fire("drift", SCHEDULED)
    runtime.run_until_idle()
    (json_key,) = [k for k in reports() if k.endswith(".json")]
    assert s3_json(json_key)["verdict"] == "no_drift"
    assert drift_events(runtime) == []


def test_a_schedule_delivered_twice_queues_each_job_once(runtime, capfd):
    register("project-risk")
    register("churn")
    capture("project-risk", shift=6.0)
    capture("churn")
    capture("churn", at=SCHEDULED + timedelta(minutes=5))     # after the window: not this run's
    runtime.fire("drift", SCHEDULED)
    runtime.fire("drift", SCHEDULED)                          # a duplicate delivery of the same time
    runtime.run_until_idle()
    worker = [d for d in runtime.deliveries if d.function == "drift_worker"]
    assert sum(d.records for d in worker) == 2 and all(d.failed == 0 for d in worker)
    assert len(drift_events(runtime)) == 1
    emf = [json.loads(line) for line in capfd.readouterr().out.splitlines() if '"DriftShare"' in line]
    assert sorted((m["model"], m["DriftShare"]) for m in emf) == [("churn", [0.0]), ("project-risk", [50.0])]
    assert all("tenant" not in m for m in emf)          # metric dimensions never carry the tenant


def test_tenants_and_versions_are_checked_apart(runtime):
    register("project-risk")
    register("project-risk", tenant="globex")
    capture("project-risk", shift=6.0)
    capture("project-risk", tenant="globex")
    runtime.fire("drift", SCHEDULED)
    runtime.run_until_idle()
    verdicts = {k.split("/")[1]: s3_json(k)["verdict"] for k in reports() if k.endswith(".json")}
    assert verdicts == {"tenant=acme": "drift", "tenant=globex": "no_drift"}
    assert [e.tenant for e in drift_events(runtime)] == ["acme"]


def test_a_missing_baseline_is_a_report_not_a_failure(runtime):
    register("no-baseline", with_baseline=False)
    capture("no-baseline")
    runtime.fire("drift", SCHEDULED)
    runtime.run_until_idle()
    (json_key,) = [k for k in reports() if k.endswith(".json")]
    report = s3_json(json_key)
    assert report["verdict"] == "no_baseline" and "no baseline.json" in report["summary"]
    assert all(d.failed == 0 for d in runtime.deliveries if d.function == "drift_worker")


def test_a_corrupt_capture_object_fails_its_job_into_the_dlq_and_the_others_run_once(runtime):
    register("project-risk")
    register("churn")
    capture("project-risk", shift=6.0)
    bad = capture("churn")
    boto3.client("s3", region_name="us-east-1").put_object(Bucket=NAMES.buckets["artifacts"], Key=bad,
                                                           Body=b"TMLCAP1\ngarbage")
    runtime.fire("drift", SCHEDULED)
    runtime.run_until_idle()
    sqs = boto3.client("sqs", region_name="us-east-1")
    dlq = sqs.receive_message(QueueUrl=runtime.queue_urls["drift-jobs-dlq"], MaxNumberOfMessages=10)
    (msg,) = dlq["Messages"]
    assert json.loads(msg["Body"])["model"] == "churn"
    assert [k.split("/")[2] for k in reports() if k.endswith(".json")] == ["model=project-risk"]
    assert len(drift_events(runtime)) == 1


def _drift_route(load_handler, load_event, lambda_context, tenant: str, model: str, monkeypatch,
                 ) -> tuple[int, dict]:
    from moto_env import use_function_environment

    use_function_environment(monkeypatch, "registry")
    fn = load_handler("registry")
    event = load_event("registry-drift-reports")
    event["pathParameters"] = {"model": model}
    event["path"] = f"/admin/models/{model}/drift"
    event["requestContext"]["authorizer"]["tenant_id"] = tenant
    resp = fn.handler(event, lambda_context)
    return resp["statusCode"], json.loads(resp["body"])


def test_the_admin_api_lists_only_the_callers_reports(runtime, load_handler, load_event, lambda_context,
                                                      monkeypatch):
    register("project-risk")
    capture("project-risk", shift=6.0)
    runtime.fire("drift", SCHEDULED)
    runtime.run_until_idle()
    status, body = _drift_route(load_handler, load_event, lambda_context, "acme", "project-risk", monkeypatch)
    assert status == 200
    (summary,) = body["reports"]
    assert summary["verdict"] == "drift" and summary["drifted_features"] == ["velocity"]
    assert summary["html"].endswith("2026-11-30T18-00Z.html") and summary["version"] == "1"
    foreign = _drift_route(load_handler, load_event, lambda_context, "globex", "project-risk", monkeypatch)
    missing = _drift_route(load_handler, load_event, lambda_context, "globex", "no-such-model", monkeypatch)
    assert foreign[0] == missing[0] == 404
    assert foreign[1] == {"error": "model 'project-risk' not found"}
    assert missing[1] == {"error": "model 'no-such-model' not found"}
