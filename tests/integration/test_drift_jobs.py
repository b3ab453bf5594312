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
from serving_models import tabular_with

from tenantml import resources
from tenantml.events import DriftDetected, parse_detail
from tenantml.local.context import handler_path
from tenantml.local.events import EventRuntime
from tenantml.monitoring import build_baseline
from tenantml.monitoring.capture import encode_frame, frame_key
from tenantml.monitoring.feedback import FeedbackBatch, encode_batch, feedback_key
from tenantml.registry.dynamo import DynamoRegistry
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
    """Predictions right 80% of the time against their labels: a baseline accuracy of 0.8."""
    rng = np.random.default_rng(seed)
    predictions = rng.choice(LEVELS, rows, p=[.5, .3, .2])
    truth = np.where(np.arange(rows) % 5 == 0, np.roll(predictions, 1), predictions)
    truth[(np.arange(rows) % 5 == 0) & (truth == predictions)] = "unknowable"
    return build_baseline({"velocity": rng.normal(20, 5, rows), "overdue": rng.poisson(3, rows)},
                          predictions=predictions, labels=truth)


def register(model: str, tenant: str = "acme", *, with_baseline: bool = True) -> None:
    extra = {"baseline.json": reference().model_dump_json().encode()} if with_baseline else {}
    manifest, files = tabular_with(model, **extra)   # a real model: registration loads it
    svc = RegistrationService(DynamoRegistry(NAMES.tables["registry"], AWS),
                              S3ArtifactStore(NAMES.buckets["artifacts"], AWS))
    svc.register(owner=tenant, model=model, manifest=manifest, actor="tester", files=files,
                 aliases=["production"])


def capture(model: str, tenant: str = "acme", *, shift: float = 0.0, rows: int = 2000, at=IN_WINDOW,
            seed: int = 1, ids: str = "r") -> str:
    rng = np.random.default_rng(seed)
    data = encode_frame(tenant, model, "1", numeric={"velocity": rng.normal(20 + shift, 5, rows),
                                                     "overdue": rng.poisson(3, rows)},
                        categorical={"prediction": predicted(rows, seed)},
                        request_ids=[f"{ids}{i}" for i in range(rows)])
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


def predicted(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 7]).choice(LEVELS, rows, p=[.5, .3, .2])


def send_feedback(model: str, tenant: str, ids: list[str], labels: list[str], at=IN_WINDOW) -> None:
    """What POST /v2/models/{model}/feedback stores (tenantml.monitoring.feedback)."""
    for i in range(0, len(ids), 1000):
        batch = FeedbackBatch.model_validate({"feedback": [
            {"id": r, "label": y} for r, y in zip(ids[i:i + 1000], labels[i:i + 1000], strict=True)]})
        boto3.client("s3", region_name="us-east-1").put_object(
            Bucket=NAMES.buckets["artifacts"], Key=feedback_key(tenant, model, at),
            Body=encode_batch(tenant, model, batch, at))


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


def labelled(rows: int, seed: int, right: float) -> list[str]:
    """Labels for the first `rows` captured predictions: the prediction for a share `right` of them."""
    pred = predicted(2000, seed)[:rows]
    wrong = np.arange(rows) >= int(right * rows)
    return np.where(wrong, "none of them", pred).tolist()


def test_an_accuracy_drop_is_reported_and_announced_with_its_trend(runtime):
    register("project-risk")
    capture("project-risk", at=IN_WINDOW - timedelta(hours=1), seed=2)           # the window before
    send_feedback("project-risk", "acme", [f"r{i}" for i in range(300)], labelled(300, 2, 0.80),
                  at=IN_WINDOW - timedelta(hours=1))
    runtime.fire("drift", SCHEDULED - timedelta(hours=1))
    runtime.run_until_idle()
    capture("project-risk", seed=1)
    send_feedback("project-risk", "acme", [f"r{i}" for i in range(300)], labelled(300, 1, 0.70))
    runtime.fire("drift", SCHEDULED)
    runtime.run_until_idle()
    report = s3_json("reports/tenant=acme/model=project-risk/version=1/2026-11-30T18-00Z.json")
    acc = report["accuracy"]
    assert acc["metric"] == "accuracy" and acc["verdict"] == "drop" and acc["matched"] == 300
    assert acc["value"] == pytest.approx(0.70) and acc["baseline"] == pytest.approx(0.8)
    assert [round(t["value"], 2) for t in acc["trend"]] == [0.8, 0.7]
    assert report["verdict"] == "no_drift" and report["drift"]["accuracy"] is True
    (event,) = drift_events(runtime)
    assert (event.kind, event.metric, event.tenant) == ("accuracy", "accuracy", "acme")
    assert event.value == pytest.approx(0.70) and event.baseline == pytest.approx(0.8)
    page = boto3.client("s3", region_name="us-east-1").get_object(
        Bucket=NAMES.buckets["artifacts"], Key=event.report.replace(".json", ".html"))["Body"].read().decode()
    assert "Ground truth: accuracy" in page and "<polyline" in page


def test_feedback_for_another_tenants_requests_joins_nothing(runtime):
    """globex labels acme's request ids (it saw them somehow) on the shared model both call: the feedback
    is stored under globex, matches none of globex's predictions and never touches acme's accuracy."""
    register("project-risk", tenant="_shared")
    capture("project-risk", tenant="acme", seed=1, ids="acme-")
    capture("project-risk", tenant="globex", seed=2, ids="globex-")
    acme_ids = [f"acme-{i}" for i in range(300)]
    send_feedback("project-risk", "acme", acme_ids, labelled(300, 1, 0.80))
    send_feedback("project-risk", "globex", acme_ids, ["none of them"] * 300)     # foreign ids
    send_feedback("project-risk", "globex", [f"nope-{i}" for i in range(300)], ["low"] * 300)   # unknown
    runtime.fire("drift", SCHEDULED)
    runtime.run_until_idle()
    acme = s3_json("reports/tenant=acme/model=project-risk/version=1/2026-11-30T18-00Z.json")["accuracy"]
    globex = s3_json("reports/tenant=globex/model=project-risk/version=1/2026-11-30T18-00Z.json")["accuracy"]
    assert (acme["matched"], acme["unmatched"], acme["verdict"]) == (300, 0, "ok")
    assert acme["value"] == pytest.approx(0.80)
    assert (globex["matched"], globex["unmatched"], globex["feedback"]) == (0, 600, 600)
    assert globex["verdict"] == "insufficient_data"
    assert drift_events(runtime) == []
