"""The event side of `tenantml local`, over HTTP: a change committed through the admin API reaches the
platform bus as its event (registry -> audit record -> table stream -> local event runtime -> publisher
-> EventBridge on moto), exactly once, in the EventBridge envelope."""

from __future__ import annotations

import base64
import json
import time

import boto3

from tenantml.events import ModelVersionRegistered, parse_detail


def test_a_registration_through_the_api_publishes_one_event(client, platform, bus_tap):
    import serving_models as sm

    v = sm.tabular_version(owner="acme", name="e2e-events-risk")
    body = {"manifest": json.loads(v.manifest.model_dump_json()), "aliases": ["production"],
            "files": {n: base64.b64encode(d).decode() for n, d in v.artifacts.items()}}
    token = platform.token("acme", ["models:write"], sub="acme-engineer")
    created = client.post("/admin/models/e2e-events-risk/versions", token=token, body=body)
    assert created.status == 201, created.body
    (event,) = [e for e in bus_tap(1) if e["detail"].get("model") == "e2e-events-risk"]
    assert event["source"] == "tenantml" and event["detail-type"] == "ModelVersionRegistered"
    detail = parse_detail(event["detail-type"], event["detail"])
    assert isinstance(detail, ModelVersionRegistered)
    assert (detail.tenant, detail.version, detail.actor, detail.aliases) == (
        "acme", "1", "acme-engineer", ["production"])
    audit = client.get("/admin/audit", token=token).json()["records"]
    assert detail.change_id in {r["id"] for r in audit if r["model"] == "e2e-events-risk"}


def test_the_runtime_published_the_startup_registrations_too(platform):
    publisher = [d for d in platform.events.deliveries if d.function == "publisher"]
    assert sum(d.records for d in publisher) >= len(platform.registered)
    assert all(d.failed == 0 for d in publisher)


def test_shifted_traffic_through_the_api_raises_drift_detected_with_an_html_report(client, platform, bus_tap):
    """Traffic far from project-risk's reference, sent through the local API, is captured, and ground truth
    that contradicts its predictions is sent back; the drift schedule (fired here rather than waited for:
    locally it runs every 5 minutes) queues its check, and the worker reports data drift and an accuracy
    drop on the bus with a self-contained HTML report."""
    from datetime import UTC, datetime, timedelta

    import numpy as np

    token = platform.token("acme", ["models:read", "models:feedback"])
    rng = np.random.default_rng(7)
    feedback = []
    for _ in range(5):
        rows = rng.uniform([400, 200, 80, 40, 200, 500, 300, 3], [900, 400, 160, 80, 400, 900, 600, 6],
                           size=(60, 8)).round(2).tolist()
        reply = client.post("/v2/models/project-risk/infer", token=token, body={
            "inputs": [{"name": "features", "datatype": "FP32", "shape": [60, 8], "data": rows}]})
        assert reply.status == 200, reply.body
        answer = reply.json()
        predicted = next(o for o in answer["outputs"] if o["name"] == "risk")["data"]
        feedback += [{"id": answer["id"], "index": i, "label": "medium" if p != "medium" else "low"}
                     for i, p in enumerate(predicted)]                       # every prediction was wrong
    sent = client.post("/v2/models/project-risk/feedback", token=token, body={"feedback": feedback})
    assert (sent.status, sent.json()) == (202, {"model": "project-risk", "accepted": 300})
    # Write the buffered capture now instead of waiting for the next request after 10 s.
    platform.emulator.functions["inference"].load().service.capture.flush()
    now = datetime.now(UTC)
    scheduled = now.replace(second=0, microsecond=0) + timedelta(minutes=5)
    platform.events.fire("drift", scheduled)
    found: list[dict] = []
    deadline = time.monotonic() + 45
    while len(found) < 2 and time.monotonic() < deadline:   # other events may arrive first
        found += [e for e in bus_tap(2 - len(found), timeout_s=10) if e["detail-type"] == "DriftDetected"
                  and e["detail"]["model"] == "project-risk"]
    by_kind = {e["detail"]["kind"]: e["detail"] for e in found}
    assert set(by_kind) == {"data", "accuracy"}
    detail = by_kind["data"]
    assert detail["tenant"] == "acme" and detail["drifted_features"]
    accuracy = by_kind["accuracy"]
    assert accuracy["value"] == 0.0 and accuracy["metric"] == "accuracy" and accuracy["baseline"] > 0.5
    s3 = boto3.client("s3", endpoint_url=platform.aws.endpoint_url, region_name=platform.aws.region)
    page = s3.get_object(Bucket=platform.names.buckets["artifacts"],
                         Key=detail["report"].removesuffix(".json") + ".html")["Body"].read().decode()
    assert "<svg" in page and "drift" in page and "<script" not in page
