"""What each function may touch beyond its own logs: exactly the calls its code makes, as declared in
tenantml_cdk.permissions.CALLS, one statement per resource, built by one helper (`grant_calls`). No CDK
`grant_*` bundle is used: those add actions no code calls (Scan, stream reads, DescribeTable, GetObject*
on old versions, List* on the whole bucket, BatchWriteItem, object legal hold and retention, ...).
One construct per function (or pair) keeps the stack composing them; each grants its functions' rows,
every row once. Triggers grant what they need themselves (an event source mapping reads its queue or
stream; a rule or schedule may invoke its function; a failure destination sends to its queue)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from aws_cdk import ArnFormat, Stack
from aws_cdk import aws_iam as iam
from constructs import Construct

from tenantml import resources
from tenantml.tenancy import TENANT_TAG
from tenantml_cdk import permissions
from tenantml_cdk.constructs.functions import PlatformFunction
from tenantml_cdk.nag import acknowledge, export_name
from tenantml_cdk.stateful_stack import PlatformData

_GRANTED = "DeclaredCalls"     # marker child of a role whose row has been granted


def grant_calls(fn: PlatformFunction, data: PlatformData, *, endpoint: Any = None) -> None:
    """Grant `fn` exactly its row of permissions.CALLS (once per role): one Allow statement per resource
    kind; s3:ListBucket under prefixes as one statement conditioned on s3:prefix. A kind whose resource
    this stack lacks (no GPU endpoint, a test stack without the signals table) is skipped."""
    if fn.role.node.try_find_child(_GRANTED) is not None:
        return
    Construct(fn.role, _GRANTED)
    by_kind: dict[str, set[str]] = defaultdict(set)
    for action, kind in permissions.CALLS[fn.definition.name]:
        by_kind[kind].add(action)
    stack = Stack.of(fn.function)
    bucket_arn = data.artifact_bucket.bucket_arn
    listed: set[str] = set()
    for kind, actions in sorted(by_kind.items()):
        family, _, name = kind.partition(":")
        if family == "listing":
            listed.add(name)
            continue
        arn = _resource_arn(stack, fn, data, family, name, endpoint)
        if arn is None:
            continue
        fn.function.add_to_role_policy(iam.PolicyStatement(actions=sorted(actions), resources=[arn]))
    if listed:
        fn.function.add_to_role_policy(iam.PolicyStatement(
            actions=["s3:ListBucket"], resources=[bucket_arn],
            conditions={"StringLike": {"s3:prefix": sorted(listed)}}))


def _resource_arn(stack: Stack, fn: PlatformFunction, data: PlatformData, family: str, name: str,
                  endpoint: Any) -> str | None:
    if family == "table":
        registry = data.registry_table if name == resources.REGISTRY_TABLE.id else None
        table = data.tables.get(name) or registry
        return table.table_arn if table is not None else None
    if family == "objects":
        _ack_prefix(fn, data, name)
        return f"{data.artifact_bucket.bucket_arn}/{name}"
    if family == "bucket":
        return data.artifact_bucket.bucket_arn
    if family == "queue":
        queue = data.queues.get(name)
        return queue.queue_arn if queue is not None else None
    if family == "bus":
        return data.event_bus.event_bus_arn
    if family == "alarms":
        arn = stack.format_arn(service="cloudwatch", resource="alarm", resource_name=name,
                               arn_format=ArnFormat.COLON_RESOURCE_NAME)
        acknowledge(fn.role, f"AwsSolutions-IAM5[Resource::{_nag_text(stack, arn)}]",
                    f"The {fn.definition.name} function creates and deletes one rollout's alarms at a time, "
                    f"named {name[:-1]}<rollout id>-<signal>; rollouts are created at run time, so the ARN "
                    "needs the trailing wildcard. It covers the rollout alarm prefix of this account and "
                    "region only.")
        return arn
    if family == "endpoint":
        return endpoint.endpoint_arn if endpoint is not None else None
    if family == "role" and name == "tenant-data" and fn.tenant_role is not None:
        return fn.tenant_role.role_arn
    raise ValueError(f"{fn.definition.name}: unknown resource kind {family}:{name}")


PRINCIPAL_TENANT = "${aws:PrincipalTag/" + TENANT_TAG + "}"


def _render(kind_name: str) -> str:
    """`{tenant}` of a permissions.TENANT_CALLS kind -> the policy variable IAM fills from the session tag."""
    return kind_name.replace(permissions.TENANT, PRINCIPAL_TENANT)


def grant_tenant_calls(fn: PlatformFunction, data: PlatformData) -> None:
    """The function's tenant data role gets exactly its row of permissions.TENANT_CALLS: objects under
    the tenant's prefixes (`${aws:PrincipalTag/tenant}` in the resource), listings conditioned on
    s3:prefix, and items of the tenant's (and the shared) partitions only: every DynamoDB statement is
    conditioned on ForAllValues:StringEquals dynamodb:LeadingKeys, one statement per table and action set."""
    role = fn.tenant_role
    if role is None or role.node.try_find_child(_GRANTED) is not None:
        return
    Construct(role, _GRANTED)
    bucket_arn = data.artifact_bucket.bucket_arn
    objects: dict[str, set[str]] = defaultdict(set)           # action -> object ARNs
    listed: set[str] = set()
    partitions: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))  # table -> key -> acts
    for action, kind in permissions.TENANT_CALLS[fn.definition.name]:
        family, _, name = kind.partition(":")
        if family == "objects":
            objects[action].add(f"{bucket_arn}/{_render(name)}")
        elif family == "listing":
            listed.add(_render(name))
        elif family == "partition":
            table, _, key = name.partition(":")
            partitions[table][_render(key)].add(action)
        else:
            raise ValueError(f"{fn.definition.name}: unknown tenant-scoped kind {kind}")
    for action, arns in sorted(objects.items()):
        role.add_to_policy(iam.PolicyStatement(actions=[action], resources=sorted(arns)))
    if listed:
        role.add_to_policy(iam.PolicyStatement(actions=["s3:ListBucket"], resources=[bucket_arn],
                                               conditions={"StringLike": {"s3:prefix": sorted(listed)}}))
    for table_id, keys in sorted(partitions.items()):
        table = data.registry_table if table_id == resources.REGISTRY_TABLE.id else data.tables[table_id]
        by_actions: dict[tuple[str, ...], list[str]] = defaultdict(list)
        for key, acts in keys.items():
            by_actions[tuple(sorted(acts))].append(key)
        # Keys with the same actions share a statement; a BatchGetItem of own + shared items passes
        # because every key it names is in the set (ForAllValues), and fails if any key is another's.
        for acts, allowed in sorted(by_actions.items()):
            role.add_to_policy(iam.PolicyStatement(
                actions=list(acts), resources=[table.table_arn],
                conditions={"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": sorted(allowed)}}))
    export = export_name(Stack.of(data.artifact_bucket), bucket_arn)
    for arns in objects.values():
        for arn in arns:
            prefix = arn.removeprefix(f"{bucket_arn}/").replace(PRINCIPAL_TENANT, "<aws:PrincipalTag/tenant>")
            acknowledge(role, f"AwsSolutions-IAM5[Resource::{export}/{prefix}]",
                        f"The tenant data role reaches objects under {prefix[:-1]} only: the acting "
                        "tenant's own prefix (from its session tag) or the shared models', keyed by model "
                        "and version below.")


def _ack_prefix(fn: PlatformFunction, data: PlatformData, prefix: str) -> None:
    arn = export_name(Stack.of(data.artifact_bucket), data.artifact_bucket.bucket_arn)
    acknowledge(fn.role, f"AwsSolutions-IAM5[Resource::{arn}/{prefix}]",
                f"Object access is scoped to the {prefix[:-1]} prefix of the artifact bucket; its keys are "
                "partitioned by tenant, model and version (or request), so it needs a trailing wildcard.")


def _nag_text(stack: Stack, value: str) -> str:
    """How cdk-nag prints a resource: pseudo parameters and references as <AWS::Region>, <Id.Attr>."""
    resolved: Any = stack.resolve(value)
    if isinstance(resolved, str):
        return resolved

    def text(part: Any) -> str:
        if isinstance(part, str):
            return part
        if "Ref" in part:
            return f"<{part['Ref']}>"
        return "<{}.{}>".format(*part["Fn::GetAtt"])

    return "".join(text(p) for p in resolved["Fn::Join"][1])


def deny_audit_rewrites(fn: PlatformFunction, data: PlatformData) -> None:
    """The audit log is append-only for every role that writes the registry: an explicit Deny of
    UpdateItem and DeleteItem (alone, in a batch or in a transaction) on the audit partitions
    (`T#<tenant>#AUDIT`, dynamodb:LeadingKeys). A PutItem cannot be stopped from overwriting by any
    condition key, so the code writes audit items only with attribute_not_exists(pk)."""
    fn.function.add_to_role_policy(iam.PolicyStatement(
        sid="AuditLogIsAppendOnly", effect=iam.Effect.DENY,
        actions=["dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:BatchWriteItem"],
        resources=[data.registry_table.table_arn],
        conditions={"ForAnyValue:StringLike": {"dynamodb:LeadingKeys": ["T#*#AUDIT"]}}))


class ServingAccess(Construct):
    """inference: reads the registry (GetItem, BatchGetItem, Query) and the model artifacts; writes
    capture frames, ground-truth feedback and rollout signals (UpdateItem ADD on the signals table); and
    its async (GPU) calls (see AsyncAccess). Its whole row of permissions.CALLS."""

    def __init__(self, scope: Construct, construct_id: str, *, function: PlatformFunction,
                 data: PlatformData) -> None:
        super().__init__(scope, construct_id)
        grant_calls(function, data)
        grant_tenant_calls(function, data)


class RegistryAccess(Construct):
    """registry: reads and writes the registry table (versions, aliases, rollouts; Put, ConditionCheck
    and, for an ending rollout's marker, Delete; never Update or BatchWrite), reads and puts model
    artifacts, reads reports and queries rollout signals (the rollout status)."""

    def __init__(self, scope: Construct, construct_id: str, *, function: PlatformFunction,
                 data: PlatformData) -> None:
        super().__init__(scope, construct_id)
        grant_calls(function, data)
        deny_audit_rewrites(function, data)


class PublisherAccess(Construct):
    """publisher: puts events on the platform bus (its stream read comes with its event source)."""

    def __init__(self, scope: Construct, construct_id: str, *, function: PlatformFunction,
                 data: PlatformData) -> None:
        super().__init__(scope, construct_id)
        grant_calls(function, data)


class DriftAccess(Construct):
    """drift_scheduler: lists capture, sends jobs, keeps its idempotency records. drift_worker: lists and
    reads capture, feedback and earlier reports, reads the baseline (model artifacts) and the registry,
    writes reports, puts DriftDetected and a rollout's accuracy signal (PutItem on the signals table)."""

    def __init__(self, scope: Construct, construct_id: str, *, scheduler: PlatformFunction,
                 worker: PlatformFunction, data: PlatformData) -> None:
        super().__init__(scope, construct_id)
        grant_calls(scheduler, data)
        grant_calls(worker, data)
        grant_tenant_calls(worker, data)


class RolloutAccess(Construct):
    """rollback: reads and writes the registry table (rollout state: GetItem, Query, PutItem, DeleteItem)
    and queries the signals table where the stack has it; manages the candidate's alarms
    (tenantml.rollout.alarms): PutMetricAlarm, DeleteAlarms and DescribeAlarms on
    `alarm:tenantml-rollout-*` of this account and region only. DescribeAlarms needs `*` only to see
    composite alarms (CloudWatch permissions reference); AlarmManager lists metric alarms, so the prefix
    is enough there too, and the role holds no Resource::* for CloudWatch."""

    ALARM_NAMES = f"{resources.ROLLOUT_ALARM_PREFIX}*"
    ALARM_ACTIONS = tuple(sorted(a for a, kind in permissions.CALLS["rollback"]
                                 if kind == permissions.ROLLOUT_ALARMS))

    def __init__(self, scope: Construct, construct_id: str, *, function: PlatformFunction,
                 data: PlatformData) -> None:
        super().__init__(scope, construct_id)
        grant_calls(function, data)
        deny_audit_rewrites(function, data)


class AsyncAccess(Construct):
    """The async (GPU) path. inference (its row, granted once with ServingAccess): stores payloads
    (async/input/) and request items, keeps its Idempotency-Key records, enqueues dispatch jobs, reads
    answers (async/results/). gpu_dispatch: reads and moves request items, re-queues deferred jobs,
    invokes the endpoint (when one is deployed). gpu_result: reads SageMaker's answers and failures,
    writes answers under their tenant, moves request items. Request items: GetItem, PutItem (inference
    only), UpdateItem; never Scan, Query or Delete."""

    def __init__(self, scope: Construct, construct_id: str, *, inference: PlatformFunction,
                 dispatch: PlatformFunction, result: PlatformFunction, data: PlatformData,
                 endpoint: Any = None) -> None:
        super().__init__(scope, construct_id)
        grant_calls(inference, data)
        grant_calls(dispatch, data, endpoint=endpoint)
        grant_tenant_calls(dispatch, data)
        grant_calls(result, data)
