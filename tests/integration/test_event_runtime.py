"""The local event runtime (tenantml.local.events) on moto, with test functions declared like the
platform's own (tests/fixtures/functions) next to the real publisher: SQS partial batch failures and DLQ
redrive, rules delivering bus events in the EventBridge envelope to exactly the matching functions, the
registry's outbox (stream -> publisher -> bus), publish failures retried and counted, and schedules fired
at their rate and idempotently per scheduled time."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from moto_env import AWS, NAMES, lambda_account, local_functions

from tenantml import resources
from tenantml.events import AliasChanged, ModelVersionRegistered, parse_detail
from tenantml.local.context import handler_path
from tenantml.local.events import EventRuntime
from tenantml.registry.dynamo import DynamoRegistry
from tenantml.registry.memory import manifest_for
from tenantml.settings import AwsSettings, IdempotencySettings

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "functions"
JOBS = resources.QueueDef("jobs", "test jobs", max_receive_count=5)
REGISTERED = {"source": ["tenantml"], "detail-type": ["ModelVersionRegistered"]}
DEFINITIONS = (
    resources.function("publisher"),
    resources.FunctionDef("sqs_worker", "test", timeout_s=10,  # type: ignore[arg-type]
                          triggers=(resources.SqsTrigger("jobs", batch_size=4),)),
    resources.FunctionDef("on_registered", "test", triggers=(  # type: ignore[arg-type]
        resources.RuleTrigger("registered", REGISTERED),)),
    resources.FunctionDef("on_alias", "test", triggers=(  # type: ignore[arg-type]
        resources.RuleTrigger("alias", {"source": ["tenantml"], "detail-type": ["AliasChanged"]}),)),
    resources.FunctionDef("on_alarm", "test", triggers=(  # type: ignore[arg-type]
        resources.RuleTrigger("alarms", {"source": ["aws.cloudwatch"],
                                         "detail-type": ["CloudWatch Alarm State Change"]}, bus="default"),)),
    resources.FunctionDef("ticker", "test", (IdempotencySettings, AwsSettings),  # type: ignore[arg-type]
                          triggers=(resources.ScheduleTrigger("tick", "rate(5 minutes)"),)),
)
SOURCES = {"sqs_worker": "sqs_worker", "on_registered": "bus_listener", "on_alias": "bus_listener",
           "on_alarm": "bus_listener", "ticker": "ticker"}


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def runtime(monkeypatch):
    resources.validate(DEFINITIONS, (JOBS,))
    with lambda_account(monkeypatch, "publisher"):
        functions = local_functions(DEFINITIONS, lambda d: handler_path(d.name) if d.name == "publisher"
                                    else FIXTURES / SOURCES[d.name] / "handler.py")
        clock = Clock()
        rt = EventRuntime(functions, AWS, NAMES, definitions=DEFINITIONS, queues=(JOBS,), clock=clock,
                          stream_retry_backoff_s=0.01).provision()
        rt.clock_ = clock
        yield rt
        rt.stop()


def module(rt: EventRuntime, name: str):
    return rt.functions[name].load()


def register(version: str | None = None, aliases=("production",)):
    registry = DynamoRegistry(NAMES.tables["registry"], AWS)
    return registry, registry.register_version(
        "acme", "risk", manifest_for("risk", {"model.onnx": b"onnx bytes"}), "alice", version=version,
        aliases=aliases)


# --- SQS ------------------------------------------------------------------------------------------------

def test_poison_message_reaches_the_dlq_and_the_good_ones_run_exactly_once(runtime):
    sqs = runtime.sqs
    url = runtime.queue_urls["jobs"]
    for i in range(9):
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"id": i}))
        if i == 4:
            sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"id": 99, "poison": True}))
    runtime.run_until_idle()
    assert sorted(module(runtime, "sqs_worker").PROCESSED) == list(range(9))   # each exactly once
    dlq = sqs.receive_message(QueueUrl=runtime.queue_urls["jobs-dlq"], MaxNumberOfMessages=10,
                              AttributeNames=["All"])["Messages"]
    assert [json.loads(m["Body"]) for m in dlq] == [{"id": 99, "poison": True}]
    assert int(dlq[0]["Attributes"]["ApproximateReceiveCount"]) >= JOBS.max_receive_count
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attrs["ApproximateNumberOfMessages"] == "0"
    assert attrs["ApproximateNumberOfMessagesNotVisible"] == "0"
    worker = [d for d in runtime.deliveries if d.function == "sqs_worker"]
    assert all(d.records <= 4 for d in worker)                        # the declared batch size
    assert sum(d.failed for d in worker) == JOBS.max_receive_count    # only the poison message failed
    # Batches with good messages failed partially; Powertools raises only when every record failed.
    assert all(d.error is None for d in worker if d.failed < d.records)


def test_queue_attributes_follow_the_declaration(runtime):
    attrs = runtime.sqs.get_queue_attributes(QueueUrl=runtime.queue_urls["jobs"],
                                             AttributeNames=["All"])["Attributes"]
    assert int(attrs["VisibilityTimeout"]) == resources.VISIBILITY_FACTOR * 10
    redrive = json.loads(attrs["RedrivePolicy"])
    assert redrive["maxReceiveCount"] == JOBS.max_receive_count
    assert redrive["deadLetterTargetArn"].endswith(JOBS.dlq_local_name(NAMES.prefix))


# --- the outbox and the bus -------------------------------------------------------------------------------

def test_a_committed_change_reaches_exactly_the_functions_whose_rules_match(runtime):
    registry, mv = register()
    registry.set_alias("acme", "risk", "canary", mv.version, "bob")
    runtime.run_until_idle()
    registered = module(runtime, "on_registered").SEEN
    aliased = module(runtime, "on_alias").SEEN
    assert len(registered) == 1 and len(aliased) == 1
    assert module(runtime, "on_alarm").SEEN == []
    event = registered[0]
    assert {"version", "id", "detail-type", "source", "account", "time", "region", "resources",
            "detail"} <= set(event)
    assert event["source"] == "tenantml" and event["detail-type"] == "ModelVersionRegistered"
    detail = parse_detail(event["detail-type"], event["detail"])
    assert isinstance(detail, ModelVersionRegistered)
    audit = {r.action: r for r in registry.list_audit("acme").records}
    assert (detail.tenant, detail.model, detail.version, detail.actor) == ("acme", "risk", "1", "alice")
    assert detail.change_id == audit["register_version"].id and detail.aliases == ["production"]
    alias = parse_detail(aliased[0]["detail-type"], aliased[0]["detail"])
    assert isinstance(alias, AliasChanged)
    assert (alias.alias, alias.version, alias.previous, alias.change_id) == (
        "canary", "1", None, audit["set_alias"].id)

    alarm = json.loads((FIXTURES.parent / "alarm-state-change.json").read_text())
    runtime.events.put_events(Entries=[{"Source": alarm["source"], "DetailType": alarm["detail-type"],
                                        "Detail": json.dumps(alarm["detail"])}])
    runtime.run_until_idle()
    assert len(module(runtime, "on_alarm").SEEN) == 1
    assert len(registered) == 1 and len(aliased) == 1


def test_an_unchanged_alias_publishes_nothing(runtime):
    registry, mv = register()
    registry.set_alias("acme", "risk", "production", mv.version, "bob")   # already there: no change
    runtime.run_until_idle()
    assert len(module(runtime, "on_registered").SEEN) == 1 and module(runtime, "on_alias").SEEN == []


def test_a_publish_failure_is_retried_counted_and_never_lost(runtime, capfd):
    publisher = module(runtime, "publisher")
    bus_client = publisher.publisher.bus._events
    real, calls = bus_client.put_events, []

    def flaky(**kwargs):
        calls.append(kwargs)
        if len(calls) <= 4:   # the first delivery's 3 attempts and the second's first one
            return {"FailedEntryCount": 1, "Entries": [{"ErrorCode": "InternalFailure", "ErrorMessage": "x"}]}
        return real(**kwargs)

    bus_client.put_events = flaky
    publisher.publisher.bus._sleep = lambda s: None
    register()
    runtime.run_until_idle()
    assert len(module(runtime, "on_registered").SEEN) == 1          # delivered once, late, not lost
    stream = [d for d in runtime.deliveries if d.function == "publisher"]
    assert [d.failed for d in stream] == [1, 0]
    metrics = [json.loads(line) for line in capfd.readouterr().out.splitlines() if '"_aws"' in line]
    assert sum(sum(m.get("EventPublishFailures", [])) for m in metrics) == 1
    assert sum(sum(m.get("EventsPublished", [])) for m in metrics) == 1


# --- schedules -------------------------------------------------------------------------------------------

def test_a_schedule_fired_twice_for_the_same_time_runs_once(runtime):
    at = datetime(2026, 11, 30, 18, 0, tzinfo=UTC)
    runtime.fire("tick", at)
    runtime.fire("tick", at)                      # a duplicate delivery of the same scheduled time
    runtime.fire("tick", at + timedelta(minutes=5))
    assert module(runtime, "ticker").FIRED == ["2026-11-30T18:00:00Z", "2026-11-30T18:05:00Z"]
    assert all(d.error is None for d in runtime.deliveries if d.function == "ticker")


def test_schedules_fire_at_their_rate_with_the_scheduler_envelope(runtime):
    ticker = module(runtime, "ticker")
    runtime.poll()
    assert ticker.FIRED == []                     # not before one period
    runtime.clock_.now += 300
    runtime.poll()
    runtime.clock_.now += 300
    runtime.poll()
    assert len(ticker.FIRED) == 2
    first, second = (datetime.fromisoformat(t.replace("Z", "+00:00")) for t in ticker.FIRED)
    assert second - first == timedelta(minutes=5)
    listed = runtime.scheduler.list_schedules()["Schedules"]
    assert [s["Name"] for s in listed] == [f"{NAMES.prefix}-tick"]


def test_an_unknown_schedule_is_a_clear_error(runtime):
    with pytest.raises(KeyError, match="declared: tick"):
        runtime.fire("nope")


def test_startup_lines_list_every_trigger(runtime):
    lines = "\n".join(runtime.describe())
    for needle in ("queue    jobs -> sqs_worker (batch 4, DLQ after 5 receives)",
                   "schedule tick rate(5 minutes)", "rule     alarms on the default bus",
                   "stream   registry table"):
        assert needle in lines
