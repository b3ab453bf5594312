"""Cost per 1000 inferences, end to end on moto: functions/inference/handler.py logs one cost record per
inference (tenant, model, version as log fields; no metric dimension carries the tenant); in local mode the
function's log lines are shipped to CloudWatch Logs (tenantml.local.logs), and `tenantml cost` reads them
back with FilterLogEvents and prints figures equal to those computed by hand from the records."""

from __future__ import annotations

import copy
import io
import json

import pytest
import serving_models as sm
from moto_env import AWS, NAMES, lambda_account, local_functions

from tenantml import resources
from tenantml.aws import client
from tenantml.cli import main
from tenantml.local.context import handler_path
from tenantml.local.logs import LogShipper, ship_function_logs, unship
from tenantml.monitoring import cost
from tenantml.observability import logger
from tenantml.registry.dynamo import DynamoRegistry
from tenantml.registry.s3 import S3ArtifactStore

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")
GB_SECOND, REQUEST = 0.0000166667, 0.0000002       # the x86_64 list prices (CostSettings' defaults)


@pytest.fixture
def aws(monkeypatch):
    with lambda_account(monkeypatch, "inference") as env:
        registry = DynamoRegistry(NAMES.tables["registry"], AWS)
        store = S3ArtifactStore(NAMES.buckets["artifacts"], AWS)
        for v in (sm.embedding_version(), sm.tabular_version(), sm.classifier_version("acme")):
            sm.register(registry, store, v)
        yield env


@pytest.fixture
def log_lines():
    """The JSON lines the Powertools logger writes (its handler keeps the stream it was created with)."""
    stream = io.StringIO()
    previous = logger.registered_handler.setStream(stream)
    yield lambda: [json.loads(x) for x in stream.getvalue().splitlines() if x.startswith("{")]
    logger.registered_handler.setStream(previous)


def as_tenant(event: dict, tenant: str) -> dict:
    event = copy.deepcopy(event)
    event["requestContext"]["authorizer"]["tenant_id"] = tenant
    return event


def records(lines: list[dict]) -> list[dict]:
    return [x for x in lines if x.get("message") == cost.MESSAGE]


def test_each_inference_logs_a_cost_record_and_no_metric_carries_the_tenant(
        aws, load_handler, load_event, lambda_context, log_lines, capsys):
    fn = load_handler("inference")
    risk = load_event("inference-infer-risk")
    capsys.readouterr()
    assert fn.handler(risk, lambda_context)["statusCode"] == 200
    assert fn.handler(risk, lambda_context)["statusCode"] == 200                 # a prediction-cache hit
    embed = as_tenant(load_event("inference-infer-embed"), "globex")
    assert fn.handler(embed, lambda_context)["statusCode"] == 200
    # not inferences: health, metadata; not costed: a 400, another tenant's model (404)
    fn.handler(load_event("inference-health-live"), lambda_context)
    fn.handler(load_event("inference-model-metadata"), lambda_context)
    bad = copy.deepcopy(risk)
    bad["body"] = "{broken"
    assert fn.handler(bad, lambda_context)["statusCode"] == 400
    foreign = as_tenant(load_event("inference-infer-classifier"), "globex")
    assert fn.handler(foreign, lambda_context)["statusCode"] == 404

    got = records(log_lines())
    assert [(r["tenant"], r["model"], r["version"], r["rows"]) for r in got] == [
        ("acme", "project-risk", "1", 2), ("acme", "project-risk", "1", 2),
        ("globex", "minilm-embed", "1", 2)]
    for r in got:
        assert r["memory_mb"] == lambda_context.memory_limit_in_mb == 1024
        assert isinstance(r["billed_ms"], int) and r["billed_ms"] >= 1
        assert r["level"] == "INFO" and r["function_request_id"] == lambda_context.aws_request_id
        assert cost.parse_record(json.dumps(r)) == r

    emf = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith('{"_aws"')]
    hits = [x["PredictionCacheHit"] for x in emf if "PredictionCacheHit" in x]
    assert hits == [[0.0], [1.0], [0.0]]                   # the cache hit was costed like the others
    assert emf
    for blob in emf:
        assert "tenant" not in blob and "acme" not in json.dumps(blob) and "globex" not in json.dumps(blob)
        for dims in blob["_aws"]["CloudWatchMetrics"][0]["Dimensions"]:
            assert "tenant" not in dims
        assert not any(m["Name"] in ("billed_ms", "memory_mb") for m in
                       blob["_aws"]["CloudWatchMetrics"][0]["Metrics"])     # the cost is a log record only


def expected_by_hand(cost_lines: list[dict]) -> dict[tuple[str, str, str], dict]:
    out: dict[tuple[str, str, str], dict] = {}
    for r in cost_lines:
        g = out.setdefault((r["tenant"], r["model"], r["version"]), {"n": 0, "rows": 0, "ms": 0, "mbms": 0})
        g["n"] += 1
        g["rows"] += r["rows"]
        g["ms"] += r["billed_ms"]
        g["mbms"] += r["billed_ms"] * r["memory_mb"]
    for g in out.values():
        g["gb_s"] = g["mbms"] / 1024 / 1000
        g["cost"] = g["gb_s"] * GB_SECOND + g["n"] * REQUEST
        g["per_1000"] = g["cost"] / g["n"] * 1000
    return out


def test_local_mode_ships_the_records_and_tenantml_cost_summarizes_them(aws, load_event, capsys):
    (fn,) = local_functions([resources.function("inference")], lambda d: handler_path(d.name)).values()
    group = NAMES.log_group("inference")
    shipper = LogShipper(AWS, interval_s=0.1).start()
    shipper.prepare([group])
    handler = ship_function_logs(shipper)
    try:
        risk, embed = load_event("inference-infer-risk"), load_event("inference-infer-embed")
        calls = [risk, risk, load_event("inference-infer-classifier"), as_tenant(embed, "globex"),
                 as_tenant(risk, "globex"), load_event("inference-health-live")]
        assert [fn.invoke(e)["statusCode"] for e in calls] == [200] * len(calls)
        bad = copy.deepcopy(embed)
        bad["body"] = '{"inputs": []}'
        assert fn.invoke(bad)["statusCode"] == 400
        assert shipper.flush()
    finally:
        unship(handler)
        shipper.stop()
    assert shipper.failed == shipper.dropped == 0

    # what the log group holds: the function's lines, one stream (one execution environment)
    raw = client("logs", AWS).filter_log_events(logGroupName=group)["events"]
    assert len({e["logStreamName"] for e in raw}) == 1
    cost_lines = records([json.loads(e["message"]) for e in raw])
    assert len(cost_lines) == 5 and {r["memory_mb"] for r in cost_lines} == {2048}   # the function's memory
    want = expected_by_hand(cost_lines)
    assert set(want) == {("acme", "project-risk", "1"), ("acme", "work-item-classifier", "1"),
                         ("globex", "minilm-embed", "1"), ("globex", "project-risk", "1")}

    capsys.readouterr()
    assert main(["cost", "--log-group", group, "--hours", "1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["log_group"] == group and summary["records"] == 5
    assert summary["ignored"]["malformed"] == summary["ignored"]["outside_period"] == 0
    assert summary["prices"] == {"architecture": "x86_64", "gb_second_usd": GB_SECOND, "request_usd": REQUEST}
    got = {(g["tenant"], g["model"], g["version"]): g for g in summary["groups"]}
    assert set(got) == set(want)
    for key, w in want.items():
        g = got[key]
        assert (g["inferences"], g["total_rows"], g["total_billed_ms"]) == (w["n"], w["rows"], w["ms"]), key
        assert g["total_gb_seconds"] == pytest.approx(w["gb_s"], rel=1e-9)
        assert g["total_cost_usd"] == pytest.approx(w["cost"], rel=1e-9)
        assert g["cost_per_1000_usd"] == pytest.approx(w["per_1000"], rel=1e-9)
    assert got[("acme", "project-risk", "1")]["inferences"] == 2           # the cache hit counts
    assert got[("acme", "project-risk", "1")]["total_rows"] == 4

    assert main(["cost", "--log-group", group, "--tenant", "globex", "--architecture", "arm64"]) == 0
    text = capsys.readouterr().out
    table = [x.split() for x in text.splitlines() if x.startswith(("acme", "globex"))]
    assert sorted(row[:3] for row in table) == [["globex", "minilm-embed", "1"],
                                                ["globex", "project-risk", "1"]]
    assert "prices (arm64): 0.0000133334 USD per GB-second" in text

    assert main(["cost", "--log-group", group, "--since", "2020-01-01T00:00", "--until", "2020-01-02T00:00",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["groups"] == []
    assert main(["cost", "--log-group", "/aws/lambda/no-such-function"]) == 1
    assert "cannot read log group" in capsys.readouterr().err
