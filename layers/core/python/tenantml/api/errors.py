"""Domain errors -> HTTP, in exactly one place. Clients get `{"error": "<public message>"}` with a stable
status; the detail (and any unexpected exception) goes to the log only."""

from __future__ import annotations

import json

from aws_lambda_powertools.event_handler import Response
from pydantic import BaseModel, ConfigDict, Field

from tenantml.errors import TenantMLError
from tenantml.observability import logger

JSON = "application/json"


class ErrorBody(BaseModel):
    """Every error the API answers, the functions' and the gateway's own (REST API gateway responses):
    exactly this object. Documented in the OpenAPI document (tenantml.api.openapi)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    error: str = Field(description="a public message: never a stack trace, an exception's text, an S3 URI "
                                   "or another tenant's id")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(status_code=status, content_type=JSON, body=json.dumps({"error": message}),
                    headers=headers or {})


def register_error_handlers(app) -> None:
    """Attach the mapping to a Powertools resolver (APIGatewayRestResolver or a Router's app)."""

    @app.exception_handler(TenantMLError)
    def _domain(exc: TenantMLError) -> Response:
        log = logger.warning if exc.status < 500 else logger.error
        log("request failed", extra={"status": exc.status, "error": exc.public_message, "detail": exc.detail})
        return error_response(exc.status, exc.public_message, exc.headers)

    @app.exception_handler(Exception)
    def _unexpected(exc: Exception) -> Response:  # never a stack trace or exception text to the client
        logger.exception("unhandled error")
        return error_response(500, "internal error")

    @app.not_found
    def _not_found(_exc: Exception) -> Response:
        return error_response(404, "route not found")
