"""The rollout signal table (tenantml.rollout.signals) on moto: what the inference function's recorder
writes is what the controller reads; ADD never loses a count across writers; a drift window's accuracy is
written idempotently; a failed write is reported and never raised."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import boto3
import numpy as np
import pytest
from moto import mock_aws
from moto_env import AWS, NAMES

from tenantml.local.provision import create_resources
from tenantml.rollout.machine import start
from tenantml.rollout.signals import DynamoSignals, SignalRecorder

T0 = datetime(2026, 11, 30, 12, 0, 30, tzinfo=UTC)


@pytest.fixture
def table():
    with mock_aws():
        create_resources(AWS, NAMES)
        yield DynamoSignals(boto3.client("dynamodb", region_name="us-east-1"), NAMES.tables["signals"],
                            clock=lambda: T0)


def rollout():
    return start(owner="acme", model="risk", stable="1", candidate="2", now=T0, actor="a", reason="r")


def test_two_recorders_add_up_and_the_reader_sees_both(table):
    r = rollout()
    now = [T0.timestamp()]
    recorders = [SignalRecorder(table, clock=lambda: now[0]) for _ in range(2)]
    rng = np.random.default_rng(0)
    latencies = rng.lognormal(3, 0.4, 400)
    for i, ms in enumerate(latencies):
        recorders[i % 2].request(r.id, "2", float(ms), error=i % 50 == 0)
        if i == 200:
            now[0] += 61                          # the next minute: a second item per recorder
    for rec in recorders:
        assert rec.flush() == 2
    got = table.read(r, "2", T0)
    assert (got.requests, got.errors) == (400, 8)
    answered = np.sort(latencies[np.arange(400) % 50 != 0])
    exact = answered[int(np.ceil(0.95 * answered.size)) - 1]
    assert exact < got.p95_ms < exact * 1.05
    assert table.read(r, "2", T0 + timedelta(minutes=1)).requests == 199      # only the later minute
    assert table.read(r, "1", T0).requests == 0


def test_flush_is_due_every_flush_seconds_and_failures_are_reported(table):
    r = rollout()
    now = [T0.timestamp()]
    failures = []
    broken = DynamoSignals(boto3.client("dynamodb", region_name="us-east-1"), "no-such-table")
    rec = SignalRecorder(broken, flush_seconds=10, clock=lambda: now[0],
                         on_failure=lambda exc, n: failures.append((type(exc).__name__, n)))
    rec.request(r.id, "2", 5.0)
    assert rec.flush_due() == 0                   # not due yet
    now[0] += 10
    assert rec.flush_due() == 0 and failures == [("ResourceNotFoundException", 1)]


def test_a_windows_accuracy_is_written_once_however_often_the_job_runs(table):
    r = rollout()
    end = T0.replace(second=0) + timedelta(hours=1)
    for _ in range(3):                                                    # retried drift jobs
        table.put_accuracy(r.id, "2", end, "acme", labelled=100, correct=81)
    table.put_accuracy(r.id, "2", end, "globex", labelled=50, correct=40)
    got = table.read(r, "2", T0)
    assert got.labelled == 150 and got.accuracy == pytest.approx(121 / 150)
    summary = table.summary(r, "2", T0)
    assert summary["labelled"] == 150 and "acme" not in str(summary)


def test_each_flush_publishes_one_metric_document_per_version_without_the_tenant(table, capsys):
    import json

    from tenantml.serving.service import publish_rollout_metrics

    r = rollout()
    rec = SignalRecorder(table, clock=lambda: T0.timestamp(), publish=publish_rollout_metrics)
    for i in range(150):
        rec.request(r.id, "2" if i % 3 else "1", 2.0 + i / 100, error=i == 7)
    capsys.readouterr()
    rec.flush()
    docs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]

    def total(version: str, metric: str) -> float:
        return sum(sum(d.get(metric, [])) if isinstance(d.get(metric), list) else d.get(metric, 0)
                   for d in docs if d["version"] == version)

    def values(version: str, metric: str) -> int:
        return sum(len(d[metric]) if isinstance(d.get(metric), list) else int(metric in d)
                   for d in docs if d["version"] == version)
    assert {d["version"] for d in docs} == {"1", "2"} and all(d["rollout"] == r.id for d in docs)
    assert (total("2", "RolloutRequests"), total("2", "RolloutErrors")) == (100, 1)
    assert (total("1", "RolloutRequests"), total("1", "RolloutErrors")) == (50, 0)
    assert (values("2", "RolloutLatency"), values("1", "RolloutLatency")) == (99, 50)     # one per answer
    assert all("tenant" not in d and "acme" not in json.dumps(d) for d in docs)
    dimensions = {tuple(d["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0]) for d in docs}
    assert dimensions == {("rollout", "version")}
