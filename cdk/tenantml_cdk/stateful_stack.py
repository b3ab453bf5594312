"""Stateful stack: what outlives a redeploy (artifact bucket, registry and idempotency tables, event bus,
the queues with their dead-letter and failure queues, the GPU endpoint's notification topics that feed
the gpu-results queue).

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
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from tenantml import resources
from tenantml_cdk.config import AppConfig
from tenantml_cdk.constructs.gpu_endpoint import GpuNotifications
from tenantml_cdk.constructs.queues import PlatformQueues
from tenantml_cdk.constructs.storage import ArtifactStore, PlatformTables


@dataclass(frozen=True)
class PlatformData:
    """What the stateless stack receives (cross-stack references by construct)."""

    artifact_bucket: s3.IBucket
    tables: Mapping[str, dynamodb.ITable]
    event_bus: events.IEventBus
    queues: Mapping[str, sqs.IQueue]              # QueueDef.id -> the queue a function consumes
    dead_letter_queues: Mapping[str, sqs.IQueue]  # QueueDef.id -> its DLQ; "<fn>-failures" -> failure queue
    gpu_notifications: Any = None                 # GpuNotifications: the GPU endpoint's topics -> gpu-results

    @property
    def registry_table(self) -> dynamodb.ITable:
        return self.tables[resources.REGISTRY_TABLE.id]


class StatefulStack(cdk.Stack):
    def __init__(self, scope: Construct, construct_id: str, *, config: AppConfig, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        store = ArtifactStore(self, "Artifacts", definition=resources.ARTIFACT_BUCKET)
        tables = PlatformTables(self, "Tables", definitions=resources.TABLES)
        bus = events.EventBus(self, "EventBus", event_bus_name=resources.EVENT_BUS_NAME,
                              description="tenantml rollout and drift events (source tenantml)")
        queues = PlatformQueues(self, "Queues", config=config)
        notifications = GpuNotifications(self, "GpuNotifications", results_queue=queues.queues["gpu-results"])
        self.data = PlatformData(artifact_bucket=store.bucket, tables=tables.tables, event_bus=bus,
                                 queues=queues.queues, dead_letter_queues=queues.dead_letter_queues,
                                 gpu_notifications=notifications)

        cdk.CfnOutput(self, "ArtifactBucketName", value=store.bucket.bucket_name,
                      description="TENANTML_ARTIFACT_BUCKET (model artifacts under models/)")
        for table_id, table in tables.tables.items():
            cdk.CfnOutput(self, f"{table_id.capitalize()}TableName", value=table.table_name,
                          description=f"DynamoDB table: {table_id}")
        cdk.CfnOutput(self, "EventBusName", value=bus.event_bus_name)
