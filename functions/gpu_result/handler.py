"""GPU result (SQS gpu-results, fed by the endpoint's success and error SNS topics; partial batch
failures, DLQ after 5 receives): each message is one SageMaker async notification; the request's outcome
is recorded once (tenantml.gpu.results) and a completed request logs its cost record (GPU compute time).
"""

from __future__ import annotations

from typing import Any

from tenantml.events.shapes import batch_handler
from tenantml.gpu.results import parse_message
from tenantml.gpu.wiring import recorder
from tenantml.monitoring.cost import gpu_cost_record
from tenantml.observability import logger
from tenantml.settings import get_async_settings, get_aws_settings, get_registry_settings

results = recorder(get_async_settings(), bucket=get_registry_settings().artifact_bucket,
                   aws=get_aws_settings(), on_completed=gpu_cost_record(logger))


def record_handler(record: Any) -> str:
    outcome = results.handle(parse_message(record.body))
    logger.info("async notification", extra={"verdict": outcome.verdict, "tenant": outcome.tenant,
                                             "request_id": outcome.request_id})
    return outcome.verdict


handler = batch_handler(record_handler)
