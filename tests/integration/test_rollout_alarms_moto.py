"""AlarmManager against moto's CloudWatch (us-east-1): the PutMetricAlarm calls pass botocore's request
validation and moto stores the metric math alarms as given; delete finds them by prefix and leaves every
other alarm alone. moto evaluates no alarms and computes no metric math, and its DescribeAlarms neither
paginates nor filters by AlarmTypes (tests/unit/test_rollout_alarms.py covers pages and chunks with a
recording client)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from moto import mock_aws
from moto_env import AWS

from tenantml.aws import client
from tenantml.rollout.alarms import ALARM_PREFIX, AlarmManager, alarm_names
from tenantml.rollout.machine import Guardrails, start

T0 = datetime(2026, 11, 30, 17, 0, tzinfo=UTC)


@pytest.fixture
def cloudwatch():
    with mock_aws():
        yield client("cloudwatch", AWS)


def rollout(candidate: str = "2", at: datetime = T0):
    return start(owner="acme", model="work-item-classifier", stable="1", candidate=candidate, now=at,
                 actor="alice", reason="canary", guardrails=Guardrails(max_error_rate=0.02, p95_ratio=1.5))


def metric_alarms(cw, prefix: str = "") -> dict[str, dict]:
    kwargs = {"AlarmNamePrefix": prefix} if prefix else {}
    return {a["AlarmName"]: a for a in cw.describe_alarms(**kwargs)["MetricAlarms"]}


def put_unrelated(cw, name: str) -> None:
    cw.put_metric_alarm(AlarmName=name, Namespace="tenantml", MetricName="ModelLoadFailure",
                        Statistic="Sum", Period=300, EvaluationPeriods=1, Threshold=1,
                        ComparisonOperator="GreaterThanThreshold")


def test_create_puts_exactly_the_two_alarms_of_the_candidate(cloudwatch):
    r = rollout()
    names = AlarmManager(cloudwatch).create(r, r.guardrails)
    assert names == alarm_names(r.id)
    stored = metric_alarms(cloudwatch)
    assert sorted(stored) == sorted(names)
    assert "acme" not in json.dumps(stored, default=str)                 # never the tenant
    for alarm in stored.values():
        assert (alarm["ComparisonOperator"], alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"],
                alarm["TreatMissingData"]) == ("GreaterThanThreshold", 3, 2, "notBreaching")
        assert r.id in alarm["AlarmDescription"] and not alarm.get("AlarmActions")
        assert "MetricName" not in alarm                                  # metric math, not one metric
        queries = {q["Id"]: q for q in alarm["Metrics"]}
        (returned,) = [q for q in queries.values() if q["ReturnData"]]
        assert returned["Expression"].startswith("IF(")
        for q in queries.values():
            if "MetricStat" in q:
                metric = q["MetricStat"]["Metric"]
                assert metric["Namespace"] == "tenantml" and q["MetricStat"]["Period"] == 60
                assert {d["Name"]: d["Value"] for d in metric["Dimensions"]}["rollout"] == r.id
                assert {d["Name"] for d in metric["Dimensions"]} == {"rollout", "version"}

    errors = {q["Id"]: q for q in stored[f"{ALARM_PREFIX}{r.id}-errors"]["Metrics"]}
    assert stored[f"{ALARM_PREFIX}{r.id}-errors"]["Threshold"] == pytest.approx(0.04)   # 0.02 x 2
    assert {k: (q["MetricStat"]["Metric"]["MetricName"], q["MetricStat"]["Stat"],
                {d["Name"]: d["Value"] for d in q["MetricStat"]["Metric"]["Dimensions"]}["version"])
            for k, q in errors.items() if "MetricStat" in q} == {
        "errors": ("RolloutErrors", "Sum", "2"), "requests": ("RolloutRequests", "Sum", "2")}
    latency = {q["Id"]: q for q in stored[f"{ALARM_PREFIX}{r.id}-latency"]["Metrics"]}
    assert stored[f"{ALARM_PREFIX}{r.id}-latency"]["Threshold"] == 1.5
    assert {k: (q["MetricStat"]["Metric"]["MetricName"], q["MetricStat"]["Stat"],
                {d["Name"]: d["Value"] for d in q["MetricStat"]["Metric"]["Dimensions"]}["version"])
            for k, q in latency.items() if "MetricStat" in q} == {
        "candidate": ("RolloutLatency", "p95", "2"), "stable": ("RolloutLatency", "p95", "1"),
        "n": ("RolloutLatency", "SampleCount", "2")}


def test_create_twice_is_the_same_two_alarms(cloudwatch):
    r, manager = rollout(), AlarmManager(cloudwatch)
    manager.create(r, r.guardrails)
    first = metric_alarms(cloudwatch)
    manager.create(r, r.guardrails)
    second = metric_alarms(cloudwatch)
    assert sorted(second) == sorted(first) == sorted(alarm_names(r.id))
    assert {n: a["Metrics"] for n, a in second.items()} == {n: a["Metrics"] for n, a in first.items()}


def test_create_with_tags(cloudwatch):
    r = rollout()
    AlarmManager(cloudwatch).create(r, tags={"tenantml:rollout": r.id})
    for name in alarm_names(r.id):
        arn = metric_alarms(cloudwatch)[name]["AlarmArn"]
        assert cloudwatch.list_tags_for_resource(ResourceARN=arn)["Tags"] == [
            {"Key": "tenantml:rollout", "Value": r.id}]


def test_delete_removes_the_rollouts_alarms_only_and_twice_is_fine(cloudwatch):
    mine, theirs = rollout("2"), rollout("3", datetime(2026, 11, 30, 18, 0, tzinfo=UTC))
    assert mine.id != theirs.id
    manager = AlarmManager(cloudwatch)
    manager.create(mine, mine.guardrails)
    manager.create(theirs, theirs.guardrails)
    put_unrelated(cloudwatch, "other-alarm")
    put_unrelated(cloudwatch, f"{ALARM_PREFIX}{mine.id}")                # no "-": not under <id>-

    assert manager.delete(mine.id) == sorted(alarm_names(mine.id))
    assert sorted(metric_alarms(cloudwatch)) == sorted(
        [*alarm_names(theirs.id), "other-alarm", f"{ALARM_PREFIX}{mine.id}"])
    assert manager.delete(mine.id) == []
    assert len(metric_alarms(cloudwatch)) == 4
    assert manager.delete(theirs.id) == sorted(alarm_names(theirs.id))
    assert sorted(metric_alarms(cloudwatch)) == sorted(["other-alarm", f"{ALARM_PREFIX}{mine.id}"])
