"""Drift worker (SQS drift-jobs, partial batch failures, DLQ after 5 receives): each message is one
DriftJob; the window's capture frames are streamed against the version's baseline, a JSON and an HTML
report land in the artifact bucket, metrics go out per model and version, and drift puts DriftDetected
on the platform bus. A job that fails (a corrupt capture object, the bus refusing the event) is retried
on its own; the rest of the batch is processed once.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response

from tenantml.events.shapes import refuse_unless, sqs_batch
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
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


def record_handler(record: Any) -> str:
    job = DriftJob.model_validate_json(record.body)
    logger.append_keys(tenant=job.tenant, model=job.model, version=job.version)
    outcome = worker.run(job)
    logger.info("drift checked", extra={"verdict": outcome.verdict, "report": outcome.report_key,
                                        "event_id": outcome.event_id})
    return outcome.verdict


@logger.inject_lambda_context(clear_state=True)
@refuse_unless(sqs_batch, "an SQS batch")
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor,
                                    context=context)
