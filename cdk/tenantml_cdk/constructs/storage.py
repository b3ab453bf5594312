"""Stateful storage: the artifact bucket (with its access-log bucket) and the DynamoDB tables.

Both are built from `tenantml.resources` definitions, the same ones local mode uses with moto, so the
key schema, TTL attribute and versioning cannot drift between a laptop and AWS.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_s3 as s3
from constructs import Construct

from tenantml import resources
from tenantml.gpu.requests import ASYNC_PREFIX
from tenantml.settings import AsyncSettings
from tenantml_cdk.nag import acknowledge

ASYNC_RETENTION_DAYS = int(AsyncSettings.model_fields["async_retention_days"].default)
_ATTRIBUTE_TYPES = {"S": dynamodb.AttributeType.STRING, "N": dynamodb.AttributeType.NUMBER,
                    "B": dynamodb.AttributeType.BINARY}


def _attribute(key: resources.KeyAttr) -> dynamodb.Attribute:
    return dynamodb.Attribute(name=key.name, type=_ATTRIBUTE_TYPES[key.type])


class ArtifactStore(Construct):
    """The model-artifact bucket: SSE-S3, versioned per the definition, TLS-only, never public, with
    server access logs in a dedicated bucket. Both buckets are RETAINed: `cdk destroy` keeps models
    and their audit trail.

    SSE-S3 rather than a customer KMS key: the readers (Lambda roles) need no key grants, and S3 server
    access logging can only deliver to an SSE-S3 bucket, so both buckets share one scheme.
    """

    def __init__(self, scope: Construct, construct_id: str, *, definition: resources.BucketDef,
                 access_log_retention_days: int = 365) -> None:
        super().__init__(scope, construct_id)
        self.access_logs = s3.Bucket(
            self, "AccessLogs",
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            minimum_tls_version=1.2,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[s3.LifecycleRule(id="expire-access-logs",
                                              expiration=Duration.days(access_log_retention_days))],
            removal_policy=RemovalPolicy.RETAIN,
        )
        acknowledge(self.access_logs, "AwsSolutions-S1",
                    "This bucket is the server-access-log destination of the artifact bucket; logging it "
                    "into itself would recurse, and a third bucket would only move the finding.")

        self.bucket = s3.Bucket(
            self, "Bucket",
            encryption=s3.BucketEncryption.S3_MANAGED,
            versioned=definition.versioned,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            minimum_tls_version=1.2,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=self.access_logs,
            server_access_logs_prefix=f"{definition.id}/",
            lifecycle_rules=[
                s3.LifecycleRule(id="abort-incomplete-uploads",
                                 abort_incomplete_multipart_upload_after=Duration.days(7)),
                # Versions are immutable folders; an overwritten object is only kept for recovery.
                s3.LifecycleRule(id="expire-noncurrent", noncurrent_version_expiration=Duration.days(90)),
                # Async (GPU) payloads, SageMaker's answers and failures, the copies under each tenant:
                # kept as long as their request can be polled (the requests table's TTL), then gone.
                s3.LifecycleRule(id="expire-async-requests", prefix=f"{ASYNC_PREFIX}/",
                                 expiration=Duration.days(ASYNC_RETENTION_DAYS),
                                 noncurrent_version_expiration=Duration.days(1)),
            ],
            removal_policy=RemovalPolicy.RETAIN,
        )


class PlatformTables(Construct):
    """One on-demand DynamoDB table per `resources.TableDef` (keys, TTL and PITR from the definition),
    encrypted with the AWS managed key, deletion-protected and RETAINed on stack deletion."""

    def __init__(self, scope: Construct, construct_id: str, *,
                 definitions: Sequence[resources.TableDef]) -> None:
        super().__init__(scope, construct_id)
        self.tables: dict[str, dynamodb.Table] = {}
        for definition in definitions:
            table = dynamodb.Table(
                self, pascal(definition.id),
                partition_key=_attribute(definition.partition_key),
                sort_key=_attribute(definition.sort_key) if definition.sort_key else None,
                billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
                encryption=dynamodb.TableEncryption.AWS_MANAGED,
                point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                    point_in_time_recovery_enabled=definition.point_in_time_recovery),
                time_to_live_attribute=definition.ttl_attribute,
                stream=dynamodb.StreamViewType[definition.stream] if definition.stream else None,
                deletion_protection=True,
                removal_policy=RemovalPolicy.RETAIN,
            )
            if not definition.point_in_time_recovery:
                acknowledge(table, "AwsSolutions-DDB3",
                            f"The {definition.id} table holds short-lived records ({definition.purpose}) "
                            f"that expire by TTL; restoring them to a past point in time has no value.")
            self.tables[definition.id] = table


def pascal(name: str) -> str:
    """A construct id from a resource id: model-registry -> ModelRegistry."""
    return "".join(part.capitalize() for part in name.replace("-", "_").split("_"))
