"""Drift worker (SQS drift-jobs, partial batch failures, DLQ after 5 receives): each message is one
DriftJob; the window's capture frames are streamed against the version's baseline, a JSON and an HTML
report land in the artifact bucket, metrics go out per model and version, and drift puts DriftDetected
on the platform bus. A job that fails (a corrupt capture object, the bus refusing the event) is retried
on its own; the rest of the batch is processed once.
"""

from __future__ import annotations

from typing import Any

from tenantml.events.shapes import batch_handler
from tenantml.monitoring.jobs import DriftJob, worker_from_settings
from tenantml.observability import logger, metrics
from tenantml.settings import (
    get_aws_settings,
    get_drift_settings,
    get_publisher_settings,
    get_registry_settings,
    get_signal_settings,
    get_tenancy_settings,
)

settings = get_drift_settings()
worker = worker_from_settings(settings, get_registry_settings(), get_publisher_settings(), get_aws_settings(),
                              metrics=metrics, signals_table=get_signal_settings().signals_table,
                              tenancy=get_tenancy_settings())


def record_handler(record: Any) -> str:
    job = DriftJob.model_validate_json(record.body)
    logger.append_keys(tenant=job.tenant, model=job.model, version=job.version)
    outcome = worker.run(job)
    logger.info("drift checked", extra={"verdict": outcome.verdict, "report": outcome.report_key,
                                        "event_id": outcome.event_id})
    return outcome.verdict


handler = batch_handler(record_handler)
