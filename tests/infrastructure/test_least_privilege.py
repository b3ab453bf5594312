"""Least privilege: every function role's Allow statements, read from the synthesized session template as
(action, resource kind) pairs, equal the calls its code makes (tenantml_cdk.permissions.CALLS), both ways,
plus only what every function has (its log group, X-Ray) and what its triggers add (constructs/triggers.py:
an SQS or stream event source reads its queue or stream; a failure destination sends to the failure queue).

Resource kinds are found from the templates alone (the stateful stack's exports and construct paths), not
from access.py, so a grant on the wrong table or prefix fails as surely as a grant of the wrong action."""

from __future__ import annotations

import re
from typing import Any

import pytest
from infra_helpers import as_list, function_role, role_statements
from tenantml_cdk.application import STATEFUL_STACK, STATELESS_STACK
from tenantml_cdk.constructs.functions import function_id
from tenantml_cdk.constructs.storage import pascal
from tenantml_cdk.permissions import CALLS, OPTIONAL_KINDS, TENANT, TENANT_CALLS

from tenantml import resources

# Every function: write its own log group (constructs/functions.py) and X-Ray (Active tracing).
BASICS = frozenset({("logs:CreateLogStream", "logs"), ("logs:PutLogEvents", "logs"),
                    ("xray:PutTraceSegments", "*"), ("xray:PutTelemetryRecords", "*")})
# What CDK's event sources and SQS failure destinations grant (aws_lambda_event_sources, SqsDestination).
SQS_CONSUMER = ("sqs:ReceiveMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueUrl", "sqs:DeleteMessage",
                "sqs:GetQueueAttributes")
STREAM_READER = ("dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator")
FAILURE_SENDER = ("sqs:SendMessage", "sqs:GetQueueAttributes", "sqs:GetQueueUrl")
ACTION = re.compile(r"^[a-z0-9-]+:[A-Z][A-Za-z]+$")     # one named action: no wildcard, no prefix match
KIND = re.compile(r"^(table|objects|listing|queue|alarms|bus|endpoint|role):[A-Za-z0-9/_*-]+$|^bucket$")
TENANT_KIND = re.compile(r"^(objects|listing):[A-Za-z0-9/_=*{}-]+$|^partition:[a-z-]+:T#[A-Za-z0-9_{}]+$")
PRINCIPAL_TENANT = "${aws:PrincipalTag/tenant}"


def trigger_grants(definition: resources.FunctionDef) -> frozenset[tuple[str, str]]:
    """What the function's triggers grant its role by themselves (constructs/triggers.py)."""
    out: set[tuple[str, str]] = set()
    for t in definition.triggers_of("sqs"):
        out |= {(a, f"queue:{t.queue}") for a in SQS_CONSUMER}
    for t in definition.triggers_of("stream"):
        out |= {(a, f"stream:{t.table}") for a in STREAM_READER} | {("dynamodb:ListStreams", "*")}
    if definition.failure_queue:
        out |= {(a, f"queue:{definition.failure_queue}") for a in FAILURE_SENDER}
    return frozenset(out)


class Kinds:
    """Template resource values -> resource kinds (the vocabulary of tenantml_cdk.permissions)."""

    def __init__(self, stateless: dict, stateful: dict) -> None:
        self.stateless = stateless
        self.exports: dict[str, tuple[str, str]] = {}      # export name -> (stateful logical id, attribute)
        for output in stateful.get("Outputs", {}).values():
            if "Export" in output:
                value = output["Value"]
                logical, attribute = value["Fn::GetAtt"] if "Fn::GetAtt" in value else (value["Ref"], "Ref")
                self.exports[output["Export"]["Name"]] = (logical, attribute)
        self.stateful = stateful
        self.tables = {pascal(t.id): t.id for t in resources.TABLES}
        self.queues = {pascal(q.id): q.id for q in (*resources.QUEUES, *resources.failure_queues())}

    def _imported(self, name: str) -> str:
        logical, attribute = self.exports[name]
        resource = self.stateful["Resources"][logical]
        construct = resource["Metadata"]["aws:cdk:path"].split("/")
        kind = resource["Type"]
        if kind == "AWS::DynamoDB::Table":
            table = self.tables[construct[-2]]
            return {"Arn": f"table:{table}", "StreamArn": f"stream:{table}"}[attribute]
        if kind == "AWS::SQS::Queue" and attribute == "Arn":
            return f"queue:{self.queues[construct[-2]]}"
        if kind == "AWS::S3::Bucket" and attribute == "Arn":
            return "bucket"
        if kind == "AWS::Events::EventBus" and attribute == "Arn":
            return "bus:platform"
        raise AssertionError(f"unexpected imported resource {name}")

    def of(self, value: Any) -> str:
        if value == "*":
            return "*"
        if isinstance(value, dict) and "Fn::ImportValue" in value:
            return self._imported(value["Fn::ImportValue"])
        if isinstance(value, dict) and "Fn::Join" in value:
            parts = value["Fn::Join"][1]
            if len(parts) == 2 and self.of(parts[0]) == "bucket" and parts[1].startswith("/"):
                return f"objects:{parts[1][1:]}"
            tail = parts[-1]
            if isinstance(tail, str) and tail.startswith(":alarm:"):
                return f"alarms:{tail.removeprefix(':alarm:')}"
        if isinstance(value, dict) and ("Fn::GetAtt" in value or "Ref" in value):
            logical = value["Fn::GetAtt"][0] if "Fn::GetAtt" in value else value["Ref"]
            kind = self.stateless["Resources"].get(logical, {}).get("Type")
            if kind == "AWS::Logs::LogGroup":
                return "logs"
            if kind == "AWS::SageMaker::Endpoint":
                return "endpoint:gpu"
            if kind == "AWS::IAM::Role" and "TenantDataRole" in logical:
                return "role:tenant-data"
        raise AssertionError(f"unexpected resource {value!r}")


def tenant_role(stateless: dict, name: str) -> str | None:
    """The logical id of the function's tenant data role: the role its TENANTML_TENANT_ROLE_ARN names."""
    env = stateless["Resources"][function_id(resources.function(name))]["Properties"]["Environment"]
    value = env["Variables"].get("TENANTML_TENANT_ROLE_ARN")
    return None if value is None else value["Fn::GetAtt"][0]


def granted(stateless: dict, stateful: dict, name: str) -> set[tuple[str, str]]:
    """The (action, resource kind) pairs the function's role is allowed."""
    role = function_role(stateless, function_id(resources.function(name)))
    return _granted(stateless, stateful, role_statements(stateless, role), name)


def tenant_granted(stateless: dict, stateful: dict, name: str) -> set[tuple[str, str]]:
    """The (action, kind) pairs the function's tenant data role is allowed, in permissions' vocabulary:
    ${aws:PrincipalTag/tenant} read back as {tenant}, each LeadingKeys value as a partition kind."""
    role = tenant_role(stateless, name)
    kinds = Kinds(stateless, stateful)
    out: set[tuple[str, str]] = set()
    for s in role_statements(stateless, role):
        assert s["Effect"] == "Allow", s
        condition = s.get("Condition") or {}
        for action in as_list(s["Action"]):
            for resource in as_list(s["Resource"]):
                kind = kinds.of(resource).replace(PRINCIPAL_TENANT, TENANT)
                if kind.startswith("table:"):
                    assert list(condition) == ["ForAllValues:StringEquals"], f"{name}: unconditioned {s}"
                    keys = as_list(condition["ForAllValues:StringEquals"]["dynamodb:LeadingKeys"])
                    out |= {(action, f"partition:{kind.removeprefix('table:')}:"
                                     f"{k.replace(PRINCIPAL_TENANT, TENANT)}") for k in keys}
                elif condition:
                    assert action == "s3:ListBucket" and kind == "bucket", f"{name}: unexpected {s}"
                    out |= {(action, f"listing:{p.replace(PRINCIPAL_TENANT, TENANT)}")
                            for p in as_list(condition["StringLike"]["s3:prefix"])}
                else:
                    out.add((action, kind))
    return out


def _granted(stateless: dict, stateful: dict, statements: list[dict], name: str) -> set[tuple[str, str]]:
    kinds = Kinds(stateless, stateful)
    out: set[tuple[str, str]] = set()
    for s in statements:
        if s["Effect"] != "Allow":
            continue
        condition = s.get("Condition")
        for action in as_list(s["Action"]):
            for resource in as_list(s["Resource"]):
                kind = kinds.of(resource)
                if condition is None:
                    out.add((action, kind))
                    continue
                assert action == "s3:ListBucket" and kind == "bucket" and list(condition) == ["StringLike"] \
                    and list(condition["StringLike"]) == ["s3:prefix"], f"{name}: unexpected condition {s}"
                out |= {(action, f"listing:{p}") for p in as_list(condition["StringLike"]["s3:prefix"])}
    return out


@pytest.fixture(scope="module")
def templates(synth) -> tuple[dict, dict]:
    return synth.templates[STATELESS_STACK], synth.templates[STATEFUL_STACK]


def _fmt(pairs: set[tuple[str, str]]) -> list[str]:
    return [f"{a} on {k}" for a, k in sorted(pairs)]


@pytest.mark.parametrize("definition", resources.FUNCTIONS, ids=lambda d: d.name)
def test_each_role_holds_exactly_the_calls_its_code_makes(synth, templates, definition):
    name = definition.name
    held = granted(*templates, name)
    declared = set(CALLS[name])
    if not synth.config.gpu_enabled:       # no endpoint in this stack: nothing to grant on it
        declared = {(a, k) for a, k in declared if k not in OPTIONAL_KINDS}
    extra = held - declared - BASICS - trigger_grants(definition)
    missing = declared - held
    problems = [f"{name} is granted {a} on {k} but its code never calls it" for a, k in sorted(extra)]
    problems += [f"{name} calls {a} on {k} but has no grant" for a, k in sorted(missing)]
    assert not problems, "\n".join(problems) + "\n(declared in cdk/tenantml_cdk/permissions.py: CALLS)"


@pytest.mark.parametrize("definition", resources.FUNCTIONS, ids=lambda d: d.name)
def test_what_is_set_aside_as_basics_and_triggers_is_really_there(templates, definition):
    """The exclusions above are exact: each function has its basics and its triggers' grants, so what
    the first test sets aside is what CDK adds, not a place for a stray grant to hide."""
    held = granted(*templates, definition.name)
    expected = BASICS | trigger_grants(definition)
    assert expected <= held, _fmt(expected - held)


def test_every_function_has_a_row_and_every_row_a_function():
    assert set(CALLS) == {d.name for d in resources.FUNCTIONS}


def test_exactly_the_functions_that_act_for_tenants_have_a_tenant_data_role(templates):
    with_role = {d.name for d in resources.FUNCTIONS if tenant_role(templates[0], d.name) is not None}
    assert with_role == set(TENANT_CALLS) == {"inference", "drift_worker", "gpu_dispatch"}


@pytest.mark.parametrize("name", sorted(TENANT_CALLS))
def test_each_tenant_data_role_holds_exactly_its_tenant_scoped_calls(templates, name):
    held = tenant_granted(*templates, name)
    assert held == set(TENANT_CALLS[name]), (
        f"granted, not declared: {_fmt(held - TENANT_CALLS[name])}; "
        f"declared, not granted: {_fmt(TENANT_CALLS[name] - held)}")


@pytest.mark.parametrize("name", sorted(TENANT_CALLS))
def test_a_tenant_data_role_reaches_only_the_acting_tenant_and_shared_data(templates, name):
    """Every object, listing and partition it names is the session tag's tenant's, or the shared
    models'; nothing is reachable by a fixed tenant id or a bare prefix."""
    for _action, kind in tenant_granted(*templates, name):
        assert TENANT_KIND.match(kind), kind
        assert TENANT in kind or kind in {"objects:models/_shared/*", "partition:registry:T#_shared"}, kind


@pytest.mark.parametrize("name", sorted(TENANT_CALLS))
def test_only_the_functions_own_role_may_assume_its_tenant_data_role_and_only_with_a_tenant_tag(
        templates, name):
    stateless = templates[0]
    role = stateless["Resources"][tenant_role(stateless, name)]["Properties"]
    (statement,) = role["AssumeRolePolicyDocument"]["Statement"]
    own = function_role(stateless, function_id(resources.function(name)))
    assert statement["Principal"] == {"AWS": {"Fn::GetAtt": [own, "Arn"]}}
    assert sorted(as_list(statement["Action"])) == ["sts:AssumeRole", "sts:TagSession"]
    assert statement["Condition"] == {"StringLike": {"aws:RequestTag/tenant": "?*"},
                                      "ForAllValues:StringEquals": {"aws:TagKeys": ["tenant"]}}
    assert role["MaxSessionDuration"] == 3600


def test_the_tenant_table_names_only_tenant_kinds():
    for name, calls in TENANT_CALLS.items():
        for action, kind in calls:
            assert ACTION.match(action), f"{name}: {action} is not one named action"
            assert TENANT_KIND.match(kind), f"{name}: unknown tenant-scoped kind {kind}"


def test_the_table_names_no_wildcard_action_and_only_known_resource_kinds():
    for name, calls in CALLS.items():
        for action, kind in calls:
            assert "*" not in action and ACTION.match(action), f"{name}: {action} is not one named action"
            assert KIND.match(kind), f"{name}: unknown resource kind {kind}"
            if kind.startswith(("objects:", "listing:")):
                assert kind.endswith("/*") and not kind.startswith(("objects:/", "listing:/")), (name, kind)



@pytest.mark.parametrize("name", sorted(TENANT_CALLS))
def test_a_function_may_assume_its_own_tenant_data_role_only(templates, name):
    stateless = templates[0]
    role = function_role(stateless, function_id(resources.function(name)))
    sts = [s for s in role_statements(stateless, role)
           if any(a.startswith("sts:") for a in as_list(s["Action"]))]
    assert [s["Resource"] for s in sts] == [{"Fn::GetAtt": [tenant_role(stateless, name), "Arn"]}]
    assert sorted(as_list(sts[0]["Action"])) == ["sts:AssumeRole", "sts:TagSession"]
