"""GPU dispatch (SQS gpu-requests, partial batch failures, DLQ after 5 receives): each message is one
queued async request; it is sent to the SageMaker async endpoint with its S3 payload. Transient faults
re-queue the job with backoff (the message's receive budget is untouched); a request's own fault is a
batch item failure, and at the last receive its request is marked failed (tenantml.gpu.dispatch).
"""

from __future__ import annotations

from typing import Any

from tenantml.events.shapes import batch_handler
from tenantml.gpu.submit import DispatchJob
from tenantml.gpu.wiring import dispatcher
from tenantml.observability import logger
from tenantml.settings import (
    get_async_settings,
    get_aws_settings,
    get_registry_settings,
    get_tenancy_settings,
)
from tenantml.tenancy import TenantSessions

dispatch = dispatcher(get_async_settings(), bucket=get_registry_settings().artifact_bucket,
                      aws=get_aws_settings(),
                      sessions=TenantSessions.from_settings(get_tenancy_settings(), get_aws_settings()))


def record_handler(record: Any) -> str:
    job = DispatchJob.model_validate_json(record.body)
    logger.append_keys(tenant=job.tenant, request_id=job.request_id)
    receives = int(record.attributes.approximate_receive_count or 1)
    return dispatch.handle(job, receives).verdict


handler = batch_handler(record_handler)
