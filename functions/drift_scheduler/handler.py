"""Drift scheduler (EventBridge Scheduler, hourly): one drift job per (tenant, model, version) with
captured traffic in the last window, sent to the drift-jobs queue.

Init: settings parsed, clients and the queue URL resolved. The handler runs once per scheduled time
(Powertools idempotency keyed by schedule ARN and scheduled time): a repeated delivery enqueues nothing.
"""

from __future__ import annotations

from typing import Any

from tenantml.events.schedule import once_per_scheduled_time
from tenantml.events.shapes import refuse_unless, scheduled_event
from tenantml.monitoring.jobs import scheduler_from_settings
from tenantml.observability import logger
from tenantml.settings import get_aws_settings, get_drift_scheduler_settings, get_idempotency_settings

settings = get_drift_scheduler_settings()
aws = get_aws_settings()
scheduler = scheduler_from_settings(settings, aws)


@logger.inject_lambda_context(clear_state=True)
@refuse_unless(scheduled_event, "a scheduled event", {"refused": "not a scheduled event"})
@once_per_scheduled_time(get_idempotency_settings().idempotency_table, aws)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    planned = scheduler.run(event)
    logger.info("drift jobs queued", extra=planned)
    return planned
