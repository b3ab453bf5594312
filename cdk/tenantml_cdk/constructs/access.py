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

# The action wildcards grant_read writes; each is limited to the artifact bucket / its models/ prefix.
_S3_READ_FINDINGS = {
    "AwsSolutions-IAM5[Action::s3:GetObject*]":
        "grant_read: GetObject plus its version/ACL/tagging variants on models/* only.",
    "AwsSolutions-IAM5[Action::s3:GetBucket*]":
        "grant_read: bucket-level Get* (location, versioning) on the artifact bucket only.",
    "AwsSolutions-IAM5[Action::s3:List*]":
        "grant_read: ListBucket on the artifact bucket, needed to tell a missing artifact (404) from "
        "a denied one (403).",
}


def _acknowledge_artifact_reads(fn: PlatformFunction, data: PlatformData) -> None:
    bucket_arn = export_name(Stack.of(data.artifact_bucket), data.artifact_bucket.bucket_arn)
    acknowledge(fn.role, f"AwsSolutions-IAM5[Resource::{bucket_arn}/{ARTIFACT_OBJECTS}]",
                "Object access is scoped to the models/ prefix of the artifact bucket; keys are "
                "models/<tenant>/<model>/<version>/<file>, so the prefix needs a trailing wildcard.")
    for finding, reason in _S3_READ_FINDINGS.items():
        acknowledge(fn.role, finding, reason)


class ServingAccess(Construct):
    """inference: reads the registry and the model artifacts; writes capture frames, nothing else."""

    def __init__(self, scope: Construct, construct_id: str, *, function: PlatformFunction,
                 data: PlatformData) -> None:
        super().__init__(scope, construct_id)
        data.registry_table.grant_read_data(function.function)
        data.artifact_bucket.grant_read(function.function, ARTIFACT_OBJECTS)
        data.artifact_bucket.grant_put(function.function, "capture/*")
        _acknowledge_artifact_reads(function, data)
        bucket_arn = export_name(Stack.of(data.artifact_bucket), data.artifact_bucket.bucket_arn)
        acknowledge(function.role, f"AwsSolutions-IAM5[Resource::{bucket_arn}/capture/*]",
                    "Traffic capture writes frames under capture/, partitioned by tenant, model, version, "
                    "date and hour, so the prefix needs a trailing wildcard.")
        acknowledge(function.role, "AwsSolutions-IAM5[Action::s3:Abort*]",
                    "grant_put: s3:AbortMultipartUpload on capture/* only.")


class RegistryAccess(Construct):
    """registry: reads and writes the registry table, reads and puts model artifacts."""

    def __init__(self, scope: Construct, construct_id: str, *, function: PlatformFunction,
                 data: PlatformData) -> None:
        super().__init__(scope, construct_id)
        data.registry_table.grant_read_write_data(function.function)
        data.artifact_bucket.grant_read(function.function, ARTIFACT_OBJECTS)
        data.artifact_bucket.grant_put(function.function, ARTIFACT_OBJECTS)
        data.artifact_bucket.grant_read(function.function, "reports/*")     # GET /admin/models/{m}/drift
        _acknowledge_artifact_reads(function, data)
        bucket_arn = export_name(Stack.of(data.artifact_bucket), data.artifact_bucket.bucket_arn)
        acknowledge(function.role, f"AwsSolutions-IAM5[Resource::{bucket_arn}/reports/*]",
                    "The drift admin route reads reports/, partitioned by tenant, model and version (the "
                    "code lists only the caller tenant's prefix).")
        acknowledge(function.role, "AwsSolutions-IAM5[Action::s3:Abort*]",
                    "grant_put: s3:AbortMultipartUpload (Abort*) on models/* lets an interrupted artifact "
                    "upload be cleaned up; it cannot touch other prefixes.")


class PublisherAccess(Construct):
    """publisher: puts events on the platform bus (its stream read comes with its event source)."""

    def __init__(self, scope: Construct, construct_id: str, *, function: PlatformFunction,
                 data: PlatformData) -> None:
        super().__init__(scope, construct_id)
        data.event_bus.grant_put_events_to(function.function)


CAPTURE_OBJECTS = "capture/*"
REPORT_OBJECTS = "reports/*"


class DriftAccess(Construct):
    """drift_scheduler: lists capture, sends jobs, keeps its idempotency records. drift_worker: reads
    capture and model artifacts (the baseline), the registry, writes reports, puts DriftDetected."""

    def __init__(self, scope: Construct, construct_id: str, *, scheduler: PlatformFunction,
                 worker: PlatformFunction, data: PlatformData) -> None:
        super().__init__(scope, construct_id)
        data.artifact_bucket.grant_read(scheduler.function, CAPTURE_OBJECTS)
        data.queues["drift-jobs"].grant_send_messages(scheduler.function)
        data.tables[resources.IDEMPOTENCY_TABLE.id].grant_read_write_data(scheduler.function)
        data.artifact_bucket.grant_read(worker.function, CAPTURE_OBJECTS)
        data.artifact_bucket.grant_read(worker.function, ARTIFACT_OBJECTS)
        data.artifact_bucket.grant_put(worker.function, REPORT_OBJECTS)
        data.registry_table.grant_read_data(worker.function)
        data.event_bus.grant_put_events_to(worker.function)
        bucket_arn = export_name(Stack.of(data.artifact_bucket), data.artifact_bucket.bucket_arn)
        for fn, prefixes in ((scheduler, (CAPTURE_OBJECTS,)),
                             (worker, (CAPTURE_OBJECTS, ARTIFACT_OBJECTS, REPORT_OBJECTS))):
            for prefix in prefixes:
                acknowledge(fn.role, f"AwsSolutions-IAM5[Resource::{bucket_arn}/{prefix}]",
                            f"Object access is scoped to the {prefix[:-2]}/ prefix of the artifact bucket; "
                            "its keys are partitioned by tenant, model and version, so it needs a trailing "
                            "wildcard.")
            for finding, reason in _S3_READ_FINDINGS.items():
                acknowledge(fn.role, finding, reason)
        acknowledge(worker.role, "AwsSolutions-IAM5[Action::s3:Abort*]",
                    "grant_put: s3:AbortMultipartUpload on reports/* lets an interrupted report upload be "
                    "cleaned up; it cannot touch other prefixes.")
