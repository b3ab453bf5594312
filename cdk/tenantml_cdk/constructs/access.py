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
    """inference: reads the registry and the model artifacts; writes nothing."""

    def __init__(self, scope: Construct, construct_id: str, *, function: PlatformFunction,
                 data: PlatformData) -> None:
        super().__init__(scope, construct_id)
        data.registry_table.grant_read_data(function.function)
        data.artifact_bucket.grant_read(function.function, ARTIFACT_OBJECTS)
        _acknowledge_artifact_reads(function, data)


class RegistryAccess(Construct):
    """registry: reads and writes the registry table, reads and puts model artifacts."""

    def __init__(self, scope: Construct, construct_id: str, *, function: PlatformFunction,
                 data: PlatformData) -> None:
        super().__init__(scope, construct_id)
        data.registry_table.grant_read_write_data(function.function)
        data.artifact_bucket.grant_read(function.function, ARTIFACT_OBJECTS)
        data.artifact_bucket.grant_put(function.function, ARTIFACT_OBJECTS)
        _acknowledge_artifact_reads(function, data)
        acknowledge(function.role, "AwsSolutions-IAM5[Action::s3:Abort*]",
                    "grant_put: s3:AbortMultipartUpload (Abort*) on models/* lets an interrupted artifact "
                    "upload be cleaned up; it cannot touch other prefixes.")


class PublisherAccess(Construct):
    """publisher: puts events on the platform bus (its stream read comes with its event source)."""

    def __init__(self, scope: Construct, construct_id: str, *, function: PlatformFunction,
                 data: PlatformData) -> None:
        super().__init__(scope, construct_id)
        data.event_bus.grant_put_events_to(function.function)
