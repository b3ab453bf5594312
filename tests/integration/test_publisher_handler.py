"""The publisher function in-process on moto, fed the sample stream event, with exactly its declared
environment: a new audit record becomes one event on the platform bus; a record the bus refuses is
reported as a batch item failure (and counted), never dropped."""

from __future__ import annotations

import json

import boto3
import pytest
from moto_env import NAMES, lambda_account

from tenantml.events import ModelVersionRegistered, parse_detail


@pytest.fixture
def fn(monkeypatch, load_handler):
    with lambda_account(monkeypatch, "publisher"):
        yield load_handler("publisher")


def bus_tap() -> str:
    """A queue receiving everything on the platform bus (a catch-all rule: moto's own rule delivery)."""
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="bus-tap")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events = boto3.client("events", region_name="us-east-1")
    events.put_rule(Name="tap", EventBusName=NAMES.event_bus,
                    EventPattern=json.dumps({"source": ["tenantml"]}))
    events.put_targets(Rule="tap", EventBusName=NAMES.event_bus, Targets=[{"Id": "q", "Arn": arn}])
    return url


def test_an_audit_record_becomes_one_event(fn, load_event, lambda_context):
    url = bus_tap()
    assert fn.handler(load_event("publisher-registry-stream"), lambda_context) == {"batchItemFailures": []}
    msgs = boto3.client("sqs", region_name="us-east-1").receive_message(QueueUrl=url, MaxNumberOfMessages=10)
    (msg,) = msgs["Messages"]
    event = json.loads(msg["Body"])
    assert event["detail-type"] == "ModelVersionRegistered" and event["source"] == "tenantml"
    detail = parse_detail(event["detail-type"], event["detail"])
    assert isinstance(detail, ModelVersionRegistered)
    assert (detail.tenant, detail.model, detail.version, detail.aliases) == ("acme", "project-risk", "2",
                                                                            ["production"])
    assert detail.change_id == "0b6f4f0e-8a53-4c3e-9d43-2d1a6f0e7c11"


def test_a_refused_event_is_a_batch_item_failure(fn, load_event, lambda_context, capsys):
    fn.publisher.bus._events.put_events = lambda **kw: {"FailedEntryCount": 1, "Entries": [
        {"ErrorCode": "ThrottlingException", "ErrorMessage": "Rate exceeded"}]}
    fn.publisher.bus._sleep = lambda s: None
    event = load_event("publisher-registry-stream")
    second = json.loads(json.dumps(event["Records"][0]))
    second["dynamodb"]["SequenceNumber"] = "111100000000017454423012"
    event["Records"].append(second)
    result = fn.handler(event, lambda_context)   # every record failed: each is delivered again
    assert result == {"batchItemFailures": [{"itemIdentifier": "111100000000017454423011"},
                                            {"itemIdentifier": "111100000000017454423012"}]}
    metrics = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert sum(sum(m.get("EventPublishFailures", [])) for m in metrics) == 2


def test_records_of_other_actions_publish_nothing(fn, load_event, lambda_context):
    event = load_event("publisher-registry-stream")
    event["Records"][0]["dynamodb"]["NewImage"]["action"] = {"S": "some_future_action"}
    calls = []
    fn.publisher.bus._events.put_events = lambda **kw: calls.append(kw)
    assert fn.handler(event, lambda_context) == {"batchItemFailures": []}
    assert calls == []
