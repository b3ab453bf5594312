"""Inference function: Open Inference Protocol v2 over REST for CPU ONNX models; GPU models are submitted
to the SageMaker async endpoint (202 + Location) and polled at GET /v2/requests/{id}.

Init (once per execution environment, and what SnapStart snapshots): settings are parsed, the service is
built (registry/S3 adapters lazily) and `TENANTML_PRELOAD_MODELS` are loaded, so the first request of a
warm environment only runs the model.

The cyclic garbage collector is off during init and what init built is then frozen (`gc.freeze`): the
imports and the preload allocate a few hundred thousand objects that live as long as the environment, so
the collections that would run over them during init (~8% of its CPU) find nothing to free, and later
collections need not walk them again (nor touch their pages after a SnapStart restore).
"""

from __future__ import annotations

import gc

_GC_WAS_ENABLED = gc.isenabled()      # a host that loads several handlers in one process keeps its setting
gc.disable()

try:
    from aws_lambda_powertools.logging import correlation_paths

    from tenantml.api.inference_routes import create_app
    from tenantml.monitoring.cost import metered
    from tenantml.observability import logger, metrics, tracer
    from tenantml.serving.service import build_service
    from tenantml.settings import (
        get_async_settings,
        get_aws_settings,
        get_idempotency_settings,
        get_serving_settings,
        get_signal_settings,
        get_tenancy_settings,
        get_throttle_settings,
    )

    settings = get_serving_settings()
    service = build_service(settings, get_aws_settings(), signals=get_signal_settings(),
                            async_settings=get_async_settings(),
                            idempotency_table=get_idempotency_settings().idempotency_table,
                            tenancy=get_tenancy_settings(), throttle=get_throttle_settings())
    app = create_app(service)
finally:
    gc.freeze()
    if _GC_WAS_ENABLED:
        gc.enable()
# GPU submits are idempotent per Idempotency-Key: an in-progress record expires with the invocation.
gpu_context = getattr(service.gpu, "register_lambda_context", lambda context: None)


@metered(logger)  # outermost: times what Lambda bills; logs each inference's cost record
@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict, context: object) -> dict:
    gpu_context(context)
    return app.resolve(event, context)
