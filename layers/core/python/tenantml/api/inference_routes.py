"""HTTP routes of the inference function (API Gateway proxy integration, REST API or HTTP API): OIP v2.

The tenant comes only from the authorizer context (`caller_from_event`); path parameters name the model
and version; everything else is the service's job. Routes are registered on a Powertools Router bound
to one InferenceService; `create_app` composes it with the shared error mapping.
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import ApiGatewayResolver, Router

from tenantml.api.body import read_body
from tenantml.api.context import Caller, caller_from_event
from tenantml.api.errors import JSON, register_error_handlers
from tenantml.api.flavours import BothFlavours, full_path
from tenantml.gpu.submit import IDEMPOTENCY_KEY_HEADER
from tenantml.observability import logger
from tenantml.resources import FEEDBACK_SCOPE, READ_SCOPE
from tenantml.serving.service import InferenceService, Reply


def _json(payload: Any, status: int = 200) -> Response:
    return Response(status_code=status, content_type=JSON, body=json.dumps(payload, separators=(",", ":")))


def _reply(reply: Reply) -> Response:
    """A bytes body (binary tensor data) goes back base64-encoded, which API Gateway turns into bytes."""
    return Response(status_code=reply.status, content_type=reply.content_type, body=reply.body,
                    headers=dict(reply.headers))


def base_path(event: dict[str, Any], path: str | None = None) -> str:
    """What the client's URL has before the route's path (the stage, or a custom domain's base path), so
    a Location header resolves against the URL the client called: the full path (REST:
    `requestContext.path`, HTTP API: `rawPath`, e.g. `/v1/v2/models/m/infer`) less the route's
    (`/v2/models/m/infer`: the event's `path`, or what the resolver routed on)."""
    full = full_path(event)
    path = str(event.get("path") or "") if path is None else path
    return full[:-len(path)] if path and full.endswith(path) else ""


def build_router(service: InferenceService) -> Router:
    router = Router()

    def tenant(scope: str = READ_SCOPE) -> str:
        return caller(scope).tenant

    def caller(scope: str = READ_SCOPE) -> Caller:
        """The authorizer's caller, holding `scope` (403 otherwise): models:read for the OIP routes."""
        who = caller_from_event(router.current_event.raw_event)
        logger.append_keys(tenant=who.tenant)
        who.require(scope)
        service.admit(who.tenant)        # the tenant's rate limit (429), after its scope is known good
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
        event = router.current_event
        body = read_body(event.raw_event, max_bytes=service.settings.max_body_bytes)
        return _reply(service.infer(who.tenant, model, version, body.data, json_length=body.json_length,
                                    request_id=event.request_context.request_id, subject=who.sub,
                                    idempotency_key=event.headers.get(IDEMPOTENCY_KEY_HEADER),
                                    base_path=base_path(event.raw_event, event.path)))

    @router.post("/v2/models/<model>/infer")
    def infer(model: str) -> Response:
        return run_infer(model, None)

    @router.post("/v2/models/<model>/versions/<version>/infer")
    def version_infer(model: str, version: str) -> Response:
        return run_infer(model, version)

    @router.get("/v2/requests/<request_id>")
    def request_status(request_id: str) -> Response:
        return _reply(service.request_status(tenant(), request_id))

    @router.post("/v2/models/<model>/feedback")
    def feedback(model: str) -> Response:
        who = tenant(FEEDBACK_SCOPE)
        body = read_body(router.current_event.raw_event, max_bytes=service.settings.max_body_bytes)
        return _reply(service.feedback(who, model, body.data))

    return router


def create_app(service: InferenceService) -> BothFlavours:
    """The inference function's resolvers, one per API Gateway flavour: OIP routes + the one error
    mapping."""

    def make(resolver: type[ApiGatewayResolver]) -> ApiGatewayResolver:
        app = resolver()
        app.include_router(build_router(service))
        register_error_handlers(app)
        return app

    return BothFlavours(make)
