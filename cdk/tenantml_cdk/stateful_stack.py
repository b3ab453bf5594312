"""Stateful stack: what outlives a redeploy (artifact bucket, registry and idempotency tables, event bus).

Deployed apart from the stateless stack so functions, API and alarms can be replaced freely; the bucket
and tables are RETAINed by `cdk destroy` as well.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_s3 as s3
from constructs import Construct

from tenantml import resources
from tenantml_cdk.constructs.storage import ArtifactStore, PlatformTables


@dataclass(frozen=True)
class PlatformData:
    """What the stateless stack receives (cross-stack references by construct)."""

    artifact_bucket: s3.IBucket
    tables: Mapping[str, dynamodb.ITable]
    event_bus: events.IEventBus

    @property
    def registry_table(self) -> dynamodb.ITable:
        return self.tables[resources.REGISTRY_TABLE.id]


class StatefulStack(cdk.Stack):
    def __init__(self, scope: Construct, construct_id: str, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        store = ArtifactStore(self, "Artifacts", definition=resources.ARTIFACT_BUCKET)
        tables = PlatformTables(self, "Tables", definitions=resources.TABLES)
        bus = events.EventBus(self, "EventBus", event_bus_name=resources.EVENT_BUS_NAME,
                              description="tenantml rollout and drift events (source tenantml)")
        self.data = PlatformData(artifact_bucket=store.bucket, tables=tables.tables, event_bus=bus)

        cdk.CfnOutput(self, "ArtifactBucketName", value=store.bucket.bucket_name,
                      description="TENANTML_ARTIFACT_BUCKET (model artifacts under models/)")
        for table_id, table in tables.tables.items():
            cdk.CfnOutput(self, f"{table_id.capitalize()}TableName", value=table.table_name,
                          description=f"DynamoDB table: {table_id}")
        cdk.CfnOutput(self, "EventBusName", value=bus.event_bus_name)
