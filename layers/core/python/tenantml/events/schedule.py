"""Scheduled functions run once per scheduled time.

EventBridge Scheduler delivers at least once, and a retried invocation (or a schedule fired again by
hand for the same time) carries the same schedule ARN and scheduled `time`. A consumer that declares
itself idempotent wraps its handler with `once_per_scheduled_time`: Powertools idempotency on the
platform's idempotency table, keyed by (schedule ARN, scheduled time), so a repeated delivery returns the
first run's result without running again. An event without those fields is refused (it is not a
schedule's), never run twice by accident.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tenantml.settings import AwsSettings

SCHEDULE_KEY = "[resources[0], time]"
DEFAULT_EXPIRY_S = 7 * 86400   # longer than any retry or re-fire of the same scheduled time


def once_per_scheduled_time(table: str, aws: AwsSettings, *, expires_after_s: int = DEFAULT_EXPIRY_S,
                            client: Any | None = None) -> Callable:
    """A handler decorator: run at most once per (schedule, scheduled time)."""
    from aws_lambda_powertools.utilities.idempotency import (  # noqa: PLC0415 - scheduled functions only
        DynamoDBPersistenceLayer,
        IdempotencyConfig,
        idempotent,
    )

    if client is None:
        from tenantml.aws import client as aws_client  # noqa: PLC0415

        client = aws_client("dynamodb", aws)
    persistence = DynamoDBPersistenceLayer(table_name=table, boto3_client=client)
    config = IdempotencyConfig(event_key_jmespath=SCHEDULE_KEY, raise_on_no_idempotency_key=True,
                               expires_after_seconds=expires_after_s)
    return idempotent(persistence_store=persistence, config=config)
