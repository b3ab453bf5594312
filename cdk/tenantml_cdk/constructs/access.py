"""What each function may touch beyond its own logs: one construct per function that needs permissions of
its own, doing its grants (the stateless stack only composes). Triggers grant what they need themselves
(an event source mapping reads its queue or stream; a rule or schedule may invoke its function)."""

from __future__ import annotations

from typing import Any

from aws_cdk import ArnFormat, Stack
from aws_cdk import aws_iam as iam
from constructs import Construct

from tenantml import resources
from tenantml_cdk.constructs.functions import PlatformFunction
from tenantml_cdk.nag import acknowledge, export_name
from tenantml_cdk.stateful_stack import PlatformData

ARTIFACT_OBJECTS = f"{resources.ARTIFACT_PREFIX}/*"
CAPTURE_OBJECTS = "capture/*"
REPORT_OBJECTS = "reports/*"
FEEDBACK_OBJECTS = "feedback/*"
ASYNC_INPUT_OBJECTS = "async/input/*"        # tenantml.gpu.requests: the OIP payloads the endpoint reads
ASYNC_RESULT_OBJECTS = "async/results/*"     # answers copied under their tenant
ASYNC_OUTPUT_OBJECTS = "async/output/*"      # what SageMaker writes (S3OutputPath)
ASYNC_FAILURE_OBJECTS = "async/failures/*"   # and its failures (S3FailurePath)

# The action wildcards grant_read writes; each is limited to the artifact bucket / the granted prefix.
_S3_READ_FINDINGS = {
    "AwsSolutions-IAM5[Action::s3:GetObject*]":
        "grant_read: GetObject plus its version/ACL/tagging variants on the granted prefix only.",
    "AwsSolutions-IAM5[Action::s3:GetBucket*]":
        "grant_read: bucket-level Get* (location, versioning) on the artifact bucket only.",
    "AwsSolutions-IAM5[Action::s3:List*]":
        "grant_read: ListBucket on the artifact bucket, needed to tell a missing object (404) from a "
        "denied one (403) and to list partitions.",
}


class _ArtifactBucket:
    """Grants on prefixes of the artifact bucket, each with its cdk-nag acknowledgments (once per role).
    Every prefix's keys are partitioned by tenant, model and version, so it needs a trailing wildcard."""

    def __init__(self, data: PlatformData) -> None:
        self.bucket = data.artifact_bucket
        self.arn = export_name(Stack.of(self.bucket), self.bucket.bucket_arn)
        self._done: set[tuple[int, str]] = set()

    def _ack(self, fn: PlatformFunction, finding: str, reason: str) -> None:
        if (id(fn.role), finding) not in self._done:
            self._done.add((id(fn.role), finding))
            acknowledge(fn.role, finding, reason)

    def _scoped(self, fn: PlatformFunction, prefix: str, why: str) -> None:
        self._ack(fn, f"AwsSolutions-IAM5[Resource::{self.arn}/{prefix}]",
                  f"Object access is scoped to the {prefix[:-1]} prefix of the artifact bucket ({why}); its "
                  "keys are partitioned by tenant, model and version, so it needs a trailing wildcard.")

    def read(self, fn: PlatformFunction, prefix: str, why: str) -> None:
        self.bucket.grant_read(fn.function, prefix)
        self._scoped(fn, prefix, why)
        for finding, reason in _S3_READ_FINDINGS.items():
            self._ack(fn, finding, reason)

    def put(self, fn: PlatformFunction, prefix: str, why: str) -> None:
        self.bucket.grant_put(fn.function, prefix)
        self._scoped(fn, prefix, why)
        self._ack(fn, "AwsSolutions-IAM5[Action::s3:Abort*]",
                  f"grant_put: s3:AbortMultipartUpload (Abort*) on {prefix} lets an interrupted upload be "
                  "cleaned up; it cannot touch other prefixes.")


class ServingAccess(Construct):
    """inference: reads the registry and the model artifacts; writes capture frames, ground-truth
    feedback and rollout signals (UpdateItem ADD on the signals table), nothing else."""

    def __init__(self, scope: Construct, construct_id: str, *, function: PlatformFunction,
                 data: PlatformData) -> None:
        super().__init__(scope, construct_id)
        bucket = _ArtifactBucket(data)
        data.registry_table.grant_read_data(function.function)
        bucket.read(function, ARTIFACT_OBJECTS, "model artifacts")
        bucket.put(function, CAPTURE_OBJECTS, "traffic capture frames")
        bucket.put(function, FEEDBACK_OBJECTS, "ground-truth feedback (POST /v2/models/{model}/feedback)")
        _add_signals(function, data)


class RegistryAccess(Construct):
    """registry: reads and writes the registry table (versions, aliases, rollouts), reads and puts model
    artifacts, reads reports and rollout signals (the rollout status)."""

    def __init__(self, scope: Construct, construct_id: str, *, function: PlatformFunction,
                 data: PlatformData) -> None:
        super().__init__(scope, construct_id)
        bucket = _ArtifactBucket(data)
        data.registry_table.grant_read_write_data(function.function)
        deny_audit_rewrites(function, data)
        bucket.read(function, ARTIFACT_OBJECTS, "model artifacts")
        bucket.put(function, ARTIFACT_OBJECTS, "model artifacts")
        bucket.read(function, REPORT_OBJECTS, "GET /admin/models/{model}/drift lists only the caller "
                                              "tenant's reports")
        data.tables[resources.SIGNALS_TABLE.id].grant_read_data(function.function)


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


class PublisherAccess(Construct):
    """publisher: puts events on the platform bus (its stream read comes with its event source)."""

    def __init__(self, scope: Construct, construct_id: str, *, function: PlatformFunction,
                 data: PlatformData) -> None:
        super().__init__(scope, construct_id)
        data.event_bus.grant_put_events_to(function.function)


class DriftAccess(Construct):
    """drift_scheduler: lists capture, sends jobs, keeps its idempotency records. drift_worker: reads
    capture and model artifacts (the baseline), the registry, writes reports, puts DriftDetected."""

    def __init__(self, scope: Construct, construct_id: str, *, scheduler: PlatformFunction,
                 worker: PlatformFunction, data: PlatformData) -> None:
        super().__init__(scope, construct_id)
        bucket = _ArtifactBucket(data)
        bucket.read(scheduler, CAPTURE_OBJECTS, "lists the capture partitions")
        data.queues["drift-jobs"].grant_send_messages(scheduler.function)
        data.tables[resources.IDEMPOTENCY_TABLE.id].grant_read_write_data(scheduler.function)
        bucket.read(worker, CAPTURE_OBJECTS, "streams a window's frames")
        bucket.read(worker, FEEDBACK_OBJECTS, "joins ground truth with the window's predictions")
        bucket.read(worker, ARTIFACT_OBJECTS, "the version's baseline.json")
        bucket.put(worker, REPORT_OBJECTS, "drift reports")
        data.registry_table.grant_read_data(worker.function)
        data.event_bus.grant_put_events_to(worker.function)
        _add_signals(worker, data)


def _add_signals(fn: PlatformFunction, data: PlatformData) -> None:
    """Adds to the rollout signal counters (tenantml.rollout.signals): UpdateItem only, no reads."""
    data.tables[resources.SIGNALS_TABLE.id].grant(fn.function, "dynamodb:UpdateItem")



class RolloutAccess(Construct):
    """rollback: reads and writes the registry table (rollout state) and, where the stack has it, the
    signals table; manages the candidate's alarms (tenantml.rollout.alarms): PutMetricAlarm, DeleteAlarms
    and DescribeAlarms on `alarm:tenantml-rollout-*` of this account and region only. DescribeAlarms needs
    `*` only to see composite alarms (CloudWatch permissions reference); AlarmManager lists metric alarms,
    so the prefix is enough there too, and the role holds no Resource::* for CloudWatch."""

    ALARM_NAMES = f"{resources.ROLLOUT_ALARM_PREFIX}*"
    ALARM_ACTIONS = ("cloudwatch:PutMetricAlarm", "cloudwatch:DeleteAlarms", "cloudwatch:DescribeAlarms")

    def __init__(self, scope: Construct, construct_id: str, *, function: PlatformFunction,
                 data: PlatformData) -> None:
        super().__init__(scope, construct_id)
        data.registry_table.grant_read_write_data(function.function)
        deny_audit_rewrites(function, data)
        if resources.SIGNALS_TABLE.id in data.tables:
            data.tables[resources.SIGNALS_TABLE.id].grant_read_write_data(function.function)
        stack = Stack.of(self)
        alarms = stack.format_arn(service="cloudwatch", resource="alarm", resource_name=self.ALARM_NAMES,
                                  arn_format=ArnFormat.COLON_RESOURCE_NAME)
        function.function.add_to_role_policy(iam.PolicyStatement(
            sid="RolloutAlarms", actions=list(self.ALARM_ACTIONS), resources=[alarms]))
        acknowledge(function.role, f"AwsSolutions-IAM5[Resource::{self._nag_text(stack, alarms)}]",
                    "The rollback function creates and deletes one rollout's alarms at a time, named "
                    f"{resources.ROLLOUT_ALARM_PREFIX}<rollout id>-<signal>; rollouts are created at run "
                    "time, so the ARN needs the trailing wildcard. It covers the rollout alarm prefix of "
                    "this account and region only.")

    @staticmethod
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


class AsyncAccess(Construct):
    """The async (GPU) path. inference: stores payloads (async/input/) and request items, keeps its
    Idempotency-Key records, enqueues dispatch jobs, reads answers (async/results/). gpu_dispatch: reads
    and moves request items, re-queues deferred jobs, invokes the endpoint (when one is deployed).
    gpu_result: reads SageMaker's answers and failures, writes answers under their tenant, moves request
    items. Request items: GetItem, PutItem (inference only), UpdateItem; never Scan, Query or Delete."""

    def __init__(self, scope: Construct, construct_id: str, *, inference: PlatformFunction,
                 dispatch: PlatformFunction, result: PlatformFunction, data: PlatformData,
                 endpoint: Any = None) -> None:
        super().__init__(scope, construct_id)
        bucket = _ArtifactBucket(data)
        requests = data.tables[resources.REQUESTS_TABLE.id]
        requests.grant(inference.function, "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem")
        data.tables[resources.IDEMPOTENCY_TABLE.id].grant_read_write_data(inference.function)
        data.queues["gpu-requests"].grant_send_messages(inference.function)
        bucket.put(inference, ASYNC_INPUT_OBJECTS, "async request payloads, under their tenant")
        bucket.read(inference, ASYNC_RESULT_OBJECTS, "GET /v2/requests/{id}: the caller tenant's answers")

        requests.grant(dispatch.function, "dynamodb:GetItem", "dynamodb:UpdateItem")
        data.queues["gpu-requests"].grant_send_messages(dispatch.function)
        if endpoint is not None:
            endpoint.grant_invoke(dispatch.function)

        requests.grant(result.function, "dynamodb:GetItem", "dynamodb:UpdateItem")
        bucket.read(result, ASYNC_OUTPUT_OBJECTS, "SageMaker's async answers")
        bucket.read(result, ASYNC_FAILURE_OBJECTS, "SageMaker's async failures (the container's reason)")
        bucket.put(result, ASYNC_RESULT_OBJECTS, "answers copied under their tenant")

