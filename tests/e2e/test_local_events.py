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
