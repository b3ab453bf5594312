"""Every declared trigger's intent, read from the declarations (tenantml.resources): in the app's own
template for the platform's functions, and in a small stack built with the same constructs
(PlatformQueues, EventTriggers) for test declarations covering each kind the platform does not use yet
(SQS, schedule, rules on both buses)."""

from __future__ import annotations

import json

import aws_cdk as cdk
import pytest
from aws_cdk import aws_events as events
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from infra_helpers import refs, resources_of
from tenantml_cdk.application import STATEFUL_STACK, STATELESS_STACK
from tenantml_cdk.config import FunctionSizing, load_config
from tenantml_cdk.constructs.functions import PlatformFunction, function_id
from tenantml_cdk.constructs.queues import PlatformQueues
from tenantml_cdk.constructs.storage import PlatformTables
from tenantml_cdk.constructs.triggers import EventTriggers

from tenantml import resources

JOBS = resources.QueueDef("jobs", "test jobs", max_receive_count=7)
TEST_FUNCTIONS = (
    resources.FunctionDef("worker", "test", timeout_s=40,  # type: ignore[arg-type]
                          triggers=(resources.SqsTrigger("jobs", batch_size=50, batching_window_s=5),)),
    resources.FunctionDef("ticker", "test", triggers=(  # type: ignore[arg-type]
        resources.ScheduleTrigger("tick", "rate(15 minutes)"),)),
    resources.FunctionDef("listener", "test", triggers=(  # type: ignore[arg-type]
        resources.RuleTrigger("registered",
                              {"source": ["tenantml"], "detail-type": ["ModelVersionRegistered"]}),
        resources.RuleTrigger("alarms", {"source": ["aws.cloudwatch"],
                                         "detail-type": ["CloudWatch Alarm State Change"]}, bus="default"))),
)
REQUIRED = {"jwks_url": "https://idp.example.org/.well-known/jwks.json", "issuer": "https://idp.example.org/",
            "audience": "tenantml"}


def esms(template: dict) -> list[dict]:
    return [r["Properties"] for r in resources_of(template, "AWS::Lambda::EventSourceMapping").values()]


# --- the platform's own declarations, in the app's template -------------------------------------------

def test_each_declared_stream_trigger_is_a_filtered_retrying_mapping(synth):
    stateless, stateful = synth.templates[STATELESS_STACK], synth.templates[STATEFUL_STACK]
    for d in resources.FUNCTIONS:
        for t in d.triggers_of("stream"):
            (esm,) = [e for e in esms(stateless) if refs(e["FunctionName"]) == {function_id(d)}]
            assert esm["StartingPosition"] == "TRIM_HORIZON"
            assert esm["BatchSize"] == t.batch_size
            assert esm["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
            assert esm["BisectBatchOnFunctionError"] is True
            assert esm["MaximumRetryAttempts"] == -1          # until the records expire: nothing skipped
            assert [json.loads(f["Pattern"]) for f in esm["FilterCriteria"]["Filters"]] == [t.filter]
            assert "StreamArn" in json.dumps(esm["EventSourceArn"])
            assert "OnFailure" in esm["DestinationConfig"]
            table = next(r for r in resources_of(stateful, "AWS::DynamoDB::Table").values()
                         if t.table.capitalize() in json.dumps(esm["EventSourceArn"]))
            assert table["Properties"]["StreamSpecification"] == {"StreamViewType": "NEW_IMAGE"}


def test_every_failure_queue_has_a_depth_alarm(synth):
    stateless = synth.templates[STATELESS_STACK]
    alarms = [a["Properties"] for a in resources_of(stateless, "AWS::CloudWatch::Alarm").values()
              if a["Properties"].get("MetricName") == "ApproximateNumberOfMessagesVisible"]
    for queue in resources.failure_queues():
        (alarm,) = [a for a in alarms if queue.id in a["AlarmDescription"]]
        assert alarm["Threshold"] == 0 and alarm["AlarmActions"]


def test_the_publisher_may_put_events_on_the_platform_bus_only(synth):
    stateless = synth.templates[STATELESS_STACK]
    statements = [s for p in resources_of(stateless, "AWS::IAM::Policy").values()
                  for s in p["Properties"]["PolicyDocument"]["Statement"]
                  if "events:PutEvents" in json.dumps(s["Action"])]
    assert statements and all("EventBus" in json.dumps(s["Resource"]) for s in statements)


# --- every trigger kind, from test declarations, through the same constructs ---------------------------

@pytest.fixture(scope="module")
def template() -> dict:
    resources.validate(TEST_FUNCTIONS, (JOBS,))
    app = cdk.App()
    stack = cdk.Stack(app, "TriggersTest")
    config = load_config(REQUIRED)
    config = config.model_copy(update={"functions": {
        **config.functions,
        **{d.name: FunctionSizing(memory_mb=d.memory_mb, timeout_seconds=d.timeout_s)
           for d in TEST_FUNCTIONS}}})
    queues = PlatformQueues(stack, "Queues", config=config, functions=TEST_FUNCTIONS, queues=(JOBS,))
    tables = PlatformTables(stack, "Tables", definitions=resources.TABLES)
    bus = events.EventBus(stack, "Bus")
    functions = {}
    for d in TEST_FUNCTIONS:
        role = iam.Role(stack, f"{d.name}Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
        fn = lambda_.Function(stack, d.name, runtime=lambda_.Runtime.PYTHON_3_12, handler="index.handler",
                              code=lambda_.Code.from_inline("def handler(e, c): pass"), role=role,
                              timeout=cdk.Duration.seconds(d.timeout_s))
        functions[d.name] = PlatformFunction(d, fn, role, logs.LogGroup(stack, f"{d.name}Logs"))
    EventTriggers(stack, "Triggers", functions=functions, tables=tables.tables, queues=queues.queues,
                  dead_letter_queues=queues.dead_letter_queues, event_bus=bus, definitions=TEST_FUNCTIONS)
    return cdk.assertions.Template.from_stack(stack).to_json()


def _fn_id(template: dict, name: str) -> str:
    return next(k for k, v in resources_of(template, "AWS::Lambda::Function").items() if k.startswith(name))


def test_sqs_trigger_batches_reports_item_failures_and_redrives(template):
    (worker,) = TEST_FUNCTIONS[:1]
    trigger = worker.triggers[0]
    (esm,) = esms(template)
    assert refs(esm["FunctionName"]) == {_fn_id(template, "worker")}
    assert esm["BatchSize"] == trigger.batch_size
    assert esm["MaximumBatchingWindowInSeconds"] == trigger.batching_window_s
    assert esm["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    queues = resources_of(template, "AWS::SQS::Queue")
    (source,) = refs(esm["EventSourceArn"])
    props = queues[source]["Properties"]
    assert props["VisibilityTimeout"] >= resources.VISIBILITY_FACTOR * worker.timeout_s
    assert props["RedrivePolicy"]["maxReceiveCount"] == JOBS.max_receive_count
    assert JOBS.max_receive_count >= resources.MIN_RECEIVE_COUNT
    (dlq,) = refs(props["RedrivePolicy"]["deadLetterTargetArn"])
    assert queues[dlq]["Properties"]["MessageRetentionPeriod"] == 14 * 86400
    assert all(q["Properties"].get("SqsManagedSseEnabled") for q in queues.values())


def test_schedule_trigger_is_a_scheduler_schedule_with_the_local_envelope(template):
    (schedule,) = [s["Properties"] for s in resources_of(template, "AWS::Scheduler::Schedule").values()]
    assert schedule["ScheduleExpression"] == "rate(15 minutes)"
    assert schedule["FlexibleTimeWindow"] == {"Mode": "OFF"}
    target = schedule["Target"]
    assert _fn_id(template, "ticker") in refs(target["Arn"])
    assert target["RetryPolicy"]["MaximumRetryAttempts"] == resources.ASYNC_RETRY_ATTEMPTS
    assert "DeadLetterConfig" in target
    text = json.dumps(target["Input"])
    for needle in ('\\"detail-type\\":\\"Scheduled Event\\"', "<aws.scheduler.scheduled-time>",
                   "<aws.scheduler.schedule-arn>", '\\"detail\\":\\"{}\\"',
                   '\\"source\\":\\"aws.scheduler\\"'):
        assert needle in text


def test_rule_triggers_match_their_pattern_on_their_bus(template):
    rules = [r["Properties"] for r in resources_of(template, "AWS::Events::Rule").values()]
    by_source = {r["EventPattern"]["source"][0]: r for r in rules}
    listener = _fn_id(template, "listener")
    platform, default = by_source["tenantml"], by_source["aws.cloudwatch"]
    assert platform["EventPattern"] == TEST_FUNCTIONS[2].triggers[0].pattern
    assert default["EventPattern"] == TEST_FUNCTIONS[2].triggers[1].pattern
    assert refs(platform["EventBusName"]) == {next(iter(resources_of(template, "AWS::Events::EventBus")))}
    assert default["EventBusName"] == "default"
    for rule in (platform, default):
        (target,) = rule["Targets"]
        assert listener in refs(target["Arn"])
        assert target["RetryPolicy"]["MaximumRetryAttempts"] == resources.ASYNC_RETRY_ATTEMPTS


def test_async_functions_retry_twice_then_go_to_their_failure_queue(template):
    configs = [c["Properties"] for c in resources_of(template, "AWS::Lambda::EventInvokeConfig").values()]
    assert len(configs) == 2   # ticker and listener; the SQS worker is not invoked asynchronously
    for c in configs:
        assert c["MaximumRetryAttempts"] == resources.ASYNC_RETRY_ATTEMPTS
        assert "OnFailure" in c["DestinationConfig"]


def test_declarations_are_validated():
    with pytest.raises(ValueError, match="max_receive_count"):
        resources.QueueDef("q", "x", max_receive_count=2)
    with pytest.raises(ValueError, match="rate"):
        resources.ScheduleTrigger("s", "cron(0 * * * ? *)")
    with pytest.raises(ValueError, match="undeclared queue"):
        resources.validate(TEST_FUNCTIONS, ())
    with pytest.raises(ValueError, match="two consumers"):
        resources.validate((*TEST_FUNCTIONS, resources.FunctionDef(  # type: ignore[arg-type]
            "other", "x", triggers=(resources.SqsTrigger("jobs"),))), (JOBS,))
    with pytest.raises(ValueError, match="timeout must be <= 29"):
        resources.validate((resources.FunctionDef("inference", "x", timeout_s=60),), ())
