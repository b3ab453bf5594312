"""RolloutAccess (constructs/access.py) in a small stack of its own, with a stand-in rollback function: the
CloudWatch actions are scoped to the rollout alarm prefix, the tables are granted, and cdk-nag finds
nothing unacknowledged on the function's role. (The app does not compose it yet: no rollback function.)"""

from __future__ import annotations

import json
from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk import aws_events as events
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from infra_helpers import actions, function_role, refs, resources_of, role_statements
from tenantml_cdk.constructs.access import RolloutAccess
from tenantml_cdk.constructs.functions import PlatformFunction
from tenantml_cdk.constructs.storage import PlatformTables
from tenantml_cdk.nag import add_nag_checks
from tenantml_cdk.stateful_stack import PlatformData

from tenantml import resources

STACK = "RolloutAccessTest"
ALARM_ACTIONS = {"cloudwatch:PutMetricAlarm", "cloudwatch:DeleteAlarms", "cloudwatch:DescribeAlarms"}


def synth(outdir: Path, *, signals: bool, env: cdk.Environment | None = None) -> tuple[dict, dict]:
    app = cdk.App(outdir=str(outdir), context={"@aws-cdk/core:failSynthOnValidationErrors": False})
    add_nag_checks(app)
    stack = cdk.Stack(app, STACK, env=env)
    tables = PlatformTables(stack, "Tables", definitions=[
        t for t in resources.TABLES if signals or t.id != resources.SIGNALS_TABLE.id])
    role = iam.Role(stack, "RollbackRole", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
    fn = lambda_.Function(stack, "RollbackFunction", runtime=lambda_.Runtime.PYTHON_3_12,
                          handler="index.handler", code=lambda_.Code.from_inline("def handler(e, c): pass"),
                          role=role)
    function = PlatformFunction(resources.function("rollback"), fn, role, logs.LogGroup(stack, "Logs"))
    data = PlatformData(artifact_bucket=s3.Bucket(stack, "Artifacts"), tables=tables.tables,
                        event_bus=events.EventBus(stack, "Bus"), queues={}, dead_letter_queues={})
    RolloutAccess(stack, "RolloutAccess", function=function, data=data)
    app.synth()
    template = json.loads((outdir / f"{STACK}.template.json").read_text())
    return template, json.loads((outdir / "validation-report.json").read_text())


@pytest.fixture(scope="module")
def with_signals(tmp_path_factory) -> tuple[dict, dict]:
    return synth(tmp_path_factory.mktemp("rollout-access"), signals=True)


def _role_statements(template: dict) -> list[dict]:
    (fn_id,) = resources_of(template, "AWS::Lambda::Function")
    return role_statements(template, function_role(template, fn_id))


def _table_id(template: dict, table: str) -> str:
    return next(k for k in resources_of(template, "AWS::DynamoDB::Table") if k.startswith(f"Tables{table}"))


def test_the_alarm_actions_cover_the_rollout_prefix_only(with_signals):
    template, _ = with_signals
    statements = [s for s in _role_statements(template) if "cloudwatch:" in json.dumps(s["Action"])]
    assert len(statements) == 1
    (statement,) = statements
    assert set(statement["Action"]) == ALARM_ACTIONS and statement["Effect"] == "Allow"
    assert "Condition" not in statement
    resource = statement["Resource"]
    assert resource == {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, ":cloudwatch:",
                                          {"Ref": "AWS::Region"}, ":", {"Ref": "AWS::AccountId"},
                                          f":alarm:{resources.ROLLOUT_ALARM_PREFIX}*"]]}
    assert all(s["Resource"] != "*" for s in _role_statements(template))


def test_the_registry_and_signals_tables_are_read_and_written(with_signals):
    template, _ = with_signals
    statements = _role_statements(template)
    # Exactly the rollback function's calls (tenantml_cdk.permissions.CALLS): rollout state is read and
    # written through transactions of Puts and the Delete of an ending rollout's marker; signals are queried.
    expected = {"Registry": {"dynamodb:GetItem", "dynamodb:Query", "dynamodb:PutItem", "dynamodb:DeleteItem"},
                "Signals": {"dynamodb:Query"}}
    for table, wanted in expected.items():
        granted = [s for s in statements if _table_id(template, table) in refs(s["Resource"])]
        assert actions(granted) == wanted, table
    idempotency = _table_id(template, "Idempotency")
    assert not [s for s in statements if idempotency in refs(s["Resource"])]


def test_nag_finds_nothing_unacknowledged_on_the_role(with_signals):
    _, report = with_signals
    assert not _unacknowledged_on_role(report)


def _unacknowledged_on_role(report: dict) -> list[tuple[str, str]]:
    failed = [v for p in report["pluginReports"] for v in p["violations"]
              if v["severity"] in {"error", "fatal"}]
    return [(v["ruleName"], c.get("constructPath")) for v in failed for c in v.get("violatingConstructs", [])
            if "RollbackRole" in (c.get("constructPath") or "")]


def test_without_a_signals_table_only_the_registry_is_granted_and_a_fixed_env_is_acknowledged(tmp_path):
    template, report = synth(tmp_path, signals=False,
                             env=cdk.Environment(account="123456789012", region="eu-west-1"))
    assert not _unacknowledged_on_role(report)
    (statement,) = [s for s in _role_statements(template) if "cloudwatch:" in json.dumps(s["Action"])]
    assert "eu-west-1:123456789012:alarm:tenantml-rollout-*" in json.dumps(statement["Resource"])
    statements = _role_statements(template)
    assert not [k for k in resources_of(template, "AWS::DynamoDB::Table") if k.startswith("TablesSignals")]
    tables = {t for s in statements for t in refs(s["Resource"])
              if template["Resources"].get(t, {}).get("Type") == "AWS::DynamoDB::Table"}
    assert tables == {_table_id(template, "Registry")}
    assert ALARM_ACTIONS <= actions(statements)
