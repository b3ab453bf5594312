"""Both API Gateway flavours, one set of routes.

The platform deploys behind a REST API (payload format 1.0 events) or an HTTP API (payload format 2.0),
a CDK context choice (`-c api=http`). Each HTTP function builds its routes once per flavour (Powertools'
APIGatewayRestResolver and APIGatewayHttpResolver, the same route code, tenancy and error mapping) and
`BothFlavours.resolve` sends each event to the resolver of its shape, so a function serves either
deployment, and a Function URL event (payload 2.0 without an authorizer) gets the same 401 as any request
without a tenant.

Anything else (an SQS batch, a scheduler event, a malformed proxy event) is refused deliberately with a
400 in the proxy response shape, never an uncaught exception: a Lambda function can be invoked with any
payload, by a misconfigured trigger or by hand.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, APIGatewayRestResolver
from aws_lambda_powertools.event_handler.api_gateway import ApiGatewayResolver

from tenantml.api.errors import JSON
from tenantml.observability import logger

REST, HTTP = "rest", "http"
RESOLVERS: dict[str, type[ApiGatewayResolver]] = {REST: APIGatewayRestResolver, HTTP: APIGatewayHttpResolver}
UNSUPPORTED = "unsupported event: this function answers API Gateway (REST or HTTP API) proxy events"


def event_flavour(event: Any) -> str | None:
    """`rest` for a payload format 1.0 proxy event (REST API, or an HTTP API set to 1.0), `http` for 2.0
    (HTTP API, Function URL), None for anything else."""
    if not isinstance(event, Mapping) or not isinstance(event.get("requestContext"), Mapping):
        return None
    context = event["requestContext"]
    if event.get("version") == "2.0":
        http = context.get("http")
        if isinstance(http, Mapping) and isinstance(http.get("method"), str) \
                and isinstance(event.get("rawPath"), str):
            return HTTP
        return None
    if isinstance(event.get("httpMethod"), str) and isinstance(event.get("path"), str):
        return REST
    return None


def _proxy(status: int, message: str) -> dict[str, Any]:
    return {"statusCode": status, "headers": {"Content-Type": JSON},
            "body": json.dumps({"error": message}), "isBase64Encoded": False}


def full_path(raw_event: Mapping[str, Any]) -> str:
    """The path the client called, stage or base path included (REST: requestContext.path; HTTP API:
    rawPath)."""
    if raw_event.get("version") == "2.0":
        return str(raw_event.get("rawPath") or "")
    return str((raw_event.get("requestContext") or {}).get("path") or "")


class BothFlavours:
    """`make(resolver_class)` builds one function's resolver (routes, middlewares, error handlers) for a
    flavour; both are built at init, so neither costs anything per request."""

    def __init__(self, make: Callable[[type[ApiGatewayResolver]], ApiGatewayResolver]) -> None:
        self.resolvers = {name: make(cls) for name, cls in RESOLVERS.items()}

    def resolve(self, event: Any, context: Any) -> dict[str, Any]:
        flavour = event_flavour(event)
        if flavour is None:
            logger.warning("refused an event that is not an API Gateway proxy event",
                           extra={"event_type": type(event).__name__,
                                  "keys": sorted(map(str, event))[:12] if isinstance(event, Mapping) else []})
            return _proxy(400, UNSUPPORTED)
        try:
            return self.resolvers[flavour].resolve(dict(event), context)
        except Exception:  # noqa: BLE001 - a proxy event the resolver cannot even route: no stack trace out
            logger.exception("unroutable proxy event")
            return _proxy(400, "malformed API Gateway proxy event")
