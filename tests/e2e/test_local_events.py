"""The event side of `tenantml local`, over HTTP: a change committed through the admin API reaches the
platform bus as its event (registry -> audit record -> table stream -> local event runtime -> publisher
-> EventBridge on moto), exactly once, in the EventBridge envelope."""

from __future__ import annotations

import base64
import json
import time

import boto3
import pytest

from tenantml.events import ModelVersionRegistered, parse_detail


@pytest.fixture(scope="module")
def bus_tap(platform):
    """A queue fed by a catch-all rule for tenantml events on the local bus."""
    kw = {"endpoint_url": platform.aws.endpoint_url, "region_name": platform.aws.region}
    sqs, events = boto3.client("sqs", **kw), boto3.client("events", **kw)
    url = sqs.create_queue(QueueName="e2e-bus-tap")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="e2e-tap", EventBusName=platform.names.event_bus,
                    EventPattern=json.dumps({"source": ["tenantml"]}))
    events.put_targets(Rule="e2e-tap", EventBusName=platform.names.event_bus,
                       Targets=[{"Id": "q", "Arn": arn}])

    def received(wanted: int, timeout_s: float = 15.0) -> list[dict]:
        got: list[dict] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and len(got) < wanted:
            for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
                    "Messages", []):
                got.append(json.loads(m["Body"]))
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        time.sleep(1.0)   # and nothing more arrives after them
        for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
            got.append(json.loads(m["Body"]))
        return got

    return received


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
    """Traffic far from project-risk's reference, sent through the local API, is captured; the drift
    schedule (fired here rather than waited for: locally it runs every 5 minutes) queues its check, and
    the worker reports drift on the bus with a self-contained HTML report."""
    from datetime import UTC, datetime, timedelta

    import numpy as np

    token = platform.token("acme", ["models:read"])
    rng = np.random.default_rng(7)
    for _ in range(5):
        rows = rng.uniform([400, 200, 80, 40, 200, 500, 300, 3], [900, 400, 160, 80, 400, 900, 600, 6],
                           size=(60, 8)).round(2).tolist()
        reply = client.post("/v2/models/project-risk/infer", token=token, body={
            "inputs": [{"name": "features", "datatype": "FP32", "shape": [60, 8], "data": rows}]})
        assert reply.status == 200, reply.body
    # Write the buffered capture now instead of waiting for the next request after 10 s.
    platform.emulator.functions["inference"].load().service.capture.flush()
    now = datetime.now(UTC)
    scheduled = now.replace(second=0, microsecond=0) + timedelta(minutes=5)
    platform.events.fire("drift", scheduled)
    found: list[dict] = []
    deadline = time.monotonic() + 45
    while not found and time.monotonic() < deadline:   # other events may arrive first
        found = [e for e in bus_tap(1, timeout_s=10) if e["detail-type"] == "DriftDetected"
                 and e["detail"]["model"] == "project-risk"]
    (event,) = found
    detail = event["detail"]
    assert detail["tenant"] == "acme" and detail["kind"] == "data" and detail["drifted_features"]
    s3 = boto3.client("s3", endpoint_url=platform.aws.endpoint_url, region_name=platform.aws.region)
    page = s3.get_object(Bucket=platform.names.buckets["artifacts"],
                         Key=detail["report"].removesuffix(".json") + ".html")["Body"].read().decode()
    assert "<svg" in page and "drift" in page and "<script" not in page
