"""What each function may touch beyond its own logs: one construct per function that needs permissions of
its own, doing its grants (the stateless stack only composes). Triggers grant what they need themselves
(an event source mapping reads its queue or stream; a rule or schedule may invoke its function)."""

from __future__ import annotations

from aws_cdk import Stack
from constructs import Construct

from tenantml import resources
from tenantml_cdk.constructs.functions import PlatformFunction
from tenantml_cdk.nag import acknowledge, export_name
from tenantml_cdk.stateful_stack import PlatformData

ARTIFACT_OBJECTS = f"{resources.ARTIFACT_PREFIX}/*"
CAPTURE_OBJECTS = "capture/*"
REPORT_OBJECTS = "reports/*"

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
    """inference: reads the registry and the model artifacts; writes capture frames, nothing else."""

    def __init__(self, scope: Construct, construct_id: str, *, function: PlatformFunction,
                 data: PlatformData) -> None:
        super().__init__(scope, construct_id)
        bucket = _ArtifactBucket(data)
        data.registry_table.grant_read_data(function.function)
        bucket.read(function, ARTIFACT_OBJECTS, "model artifacts")
        bucket.put(function, CAPTURE_OBJECTS, "traffic capture frames")


class RegistryAccess(Construct):
    """registry: reads and writes the registry table, reads and puts model artifacts, reads reports."""

    def __init__(self, scope: Construct, construct_id: str, *, function: PlatformFunction,
                 data: PlatformData) -> None:
        super().__init__(scope, construct_id)
        bucket = _ArtifactBucket(data)
        data.registry_table.grant_read_write_data(function.function)
        bucket.read(function, ARTIFACT_OBJECTS, "model artifacts")
        bucket.put(function, ARTIFACT_OBJECTS, "model artifacts")
        bucket.read(function, REPORT_OBJECTS, "GET /admin/models/{model}/drift lists only the caller "
                                              "tenant's reports")


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
        bucket.read(worker, ARTIFACT_OBJECTS, "the version's baseline.json")
        bucket.put(worker, REPORT_OBJECTS, "drift reports")
        data.registry_table.grant_read_data(worker.function)
        data.event_bus.grant_put_events_to(worker.function)
