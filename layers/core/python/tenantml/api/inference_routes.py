"""HTTP routes of the inference function (API Gateway REST API, proxy integration): OIP v2 over REST.

The tenant comes only from the authorizer context (`caller_from_event`); path parameters name the model
and version; everything else is the service's job. Routes are registered on a Powertools Router bound
to one InferenceService; `create_app` composes it with the shared error mapping.
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.router import APIGatewayRouter

from tenantml.api.body import read_body
from tenantml.api.context import Caller, caller_from_event
from tenantml.api.errors import JSON, register_error_handlers
from tenantml.observability import logger
from tenantml.resources import FEEDBACK_SCOPE, READ_SCOPE
from tenantml.serving.service import InferenceService, Reply


def _json(payload: Any, status: int = 200) -> Response:
    return Response(status_code=status, content_type=JSON, body=json.dumps(payload, separators=(",", ":")))


def _reply(reply: Reply) -> Response:
    """A bytes body (binary tensor data) goes back base64-encoded, which API Gateway turns into bytes."""
    return Response(status_code=reply.status, content_type=reply.content_type, body=reply.body,
                    headers=dict(reply.headers))


def build_router(service: InferenceService) -> APIGatewayRouter:
    router = APIGatewayRouter()

    def tenant(scope: str = READ_SCOPE) -> str:
        return caller(scope).tenant

    def caller(scope: str = READ_SCOPE) -> Caller:
        """The authorizer's caller, holding `scope` (403 otherwise): models:read for the OIP routes."""
        who = caller_from_event(router.current_event.raw_event)
        logger.append_keys(tenant=who.tenant)
        who.require(scope)
        return who

    # health: no authorizer on these two routes
    @router.get("/v2/health/live")
    def health_live() -> Response:
        return _json(service.live())

    @router.get("/v2/health/ready")
    def health_ready() -> Response:
        return _json(service.ready())

    @router.get("/v2")
    def server_metadata() -> Response:
        tenant()
        return _json(service.server_metadata())

    @router.get("/v2/models")
    def list_models() -> Response:
        return _json(service.list_models(tenant()))

    @router.get("/v2/models/<model>")
    def model_metadata(model: str) -> Response:
        return _json(service.model_metadata(tenant(), model))

    @router.get("/v2/models/<model>/versions/<version>")
    def version_metadata(model: str, version: str) -> Response:
        return _json(service.model_metadata(tenant(), model, version))

    @router.get("/v2/models/<model>/ready")
    def model_ready(model: str) -> Response:
        return _json(service.model_ready(tenant(), model))

    @router.get("/v2/models/<model>/versions/<version>/ready")
    def version_ready(model: str, version: str) -> Response:
        return _json(service.model_ready(tenant(), model, version))

    def run_infer(model: str, version: str | None) -> Response:
        who = caller()
        body = read_body(router.current_event.raw_event, max_bytes=service.settings.max_body_bytes)
        request_id = router.current_event.request_context.request_id
        return _reply(service.infer(who.tenant, model, version, body.data, json_length=body.json_length,
                                    request_id=request_id, subject=who.sub))

    @router.post("/v2/models/<model>/infer")
    def infer(model: str) -> Response:
        return run_infer(model, None)

    @router.post("/v2/models/<model>/versions/<version>/infer")
    def version_infer(model: str, version: str) -> Response:
        return run_infer(model, version)

    @router.post("/v2/models/<model>/feedback")
    def feedback(model: str) -> Response:
        who = tenant(FEEDBACK_SCOPE)
        body = read_body(router.current_event.raw_event, max_bytes=service.settings.max_body_bytes)
        return _reply(service.feedback(who, model, body.data))

    return router


def create_app(service: InferenceService) -> APIGatewayRestResolver:
    """The resolver for the inference function: OIP routes + the one error mapping."""
    app = APIGatewayRestResolver()
    app.include_router(build_router(service))
    register_error_handlers(app)
    return app
