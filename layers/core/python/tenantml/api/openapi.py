"""The HTTP API's OpenAPI 3.1 document, generated from the code that serves it (never written by hand).

- paths, methods, path parameters and each route's scope: `tenantml.resources.ROUTES` (what the CDK app
  deploys and the local emulator serves);
- request bodies: the pydantic models the handlers parse (`InferRequest`, `FeedbackBatch`,
  `RegisterVersionBody`, `SetAliasBody`, `StartRollout`, `RolloutAction`), via `model_json_schema`;
- responses: the documented response models (`InferResponse`, `ModelMetadataResponse`, `FeedbackAccepted`)
  and, for every error status a route can answer, the one error shape `{"error": string}` (`ErrorBody`).

`tenantml openapi [--out FILE]` prints or writes it; docs/openapi.json is its committed copy, and a test
fails when the two differ. No new dependency: pydantic's JSON Schema is OpenAPI 3.1's dialect.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaWarningKind, models_json_schema

from tenantml.resources import FEEDBACK_SCOPE, READ_SCOPE, ROUTES, WRITE_SCOPE, Route

OPENAPI_VERSION = "3.1.0"
REF = "#/components/schemas/{model}"
ADMIN_SCOPE = "models:admin"
JSON_TYPE = "application/json"

# Every status an error can have (docs/contracts.md, "Errors"), with when it is answered.
ERROR_STATUSES: dict[int, str] = {
    400: "bad input: a malformed body, parameter or header",
    401: "no token, a bad token, or one past its expiry",
    403: "the token lacks the route's scope, or the authorizer denied it",
    404: "unknown route, model, version or async request (another tenant's answers the same)",
    409: "conflict: the version exists, a quota is reached, a rollout's state refuses the action, or an "
         "Idempotency-Key is still in flight",
    413: "payload, decompressed payload or batch too large",
    422: "an Idempotency-Key reused for a different request",
    429: "throttled (retry later)",
    503: "the model or a dependency is unavailable (see Retry-After)",
    504: "the request ran past its deadline",
}
_AUTH_ERRORS = (400, 401, 403, 404, 429, 504)


def _models() -> dict[str, type[BaseModel]]:
    """The request and response models, by schema name (imported here: the document is built on demand,
    by the CLI and the tests, never on a function's request path)."""
    from tenantml.api.errors import ErrorBody  # noqa: PLC0415
    from tenantml.api.registry_routes import RegisterVersionBody, SetAliasBody  # noqa: PLC0415
    from tenantml.monitoring.feedback import FeedbackAccepted, FeedbackBatch  # noqa: PLC0415
    from tenantml.rollout.service import RolloutAction, StartRollout  # noqa: PLC0415
    from tenantml.serving.oip import InferRequest, InferResponse, ModelMetadataResponse  # noqa: PLC0415

    return {m.__name__: m for m in (ErrorBody, InferRequest, InferResponse, ModelMetadataResponse,
                                    FeedbackBatch, FeedbackAccepted, RegisterVersionBody, SetAliasBody,
                                    StartRollout, RolloutAction)}


def request_models() -> dict[tuple[str, str], tuple[str, bool]]:
    """(method, route path) -> (schema name of the body the handler parses, whether a body is required)."""
    return {
        ("POST", "/v2/models/{model}/infer"): ("InferRequest", True),
        ("POST", "/v2/models/{model}/versions/{version}/infer"): ("InferRequest", True),
        ("POST", "/v2/models/{model}/feedback"): ("FeedbackBatch", True),
        ("POST", "/admin/models/{model}/versions"): ("RegisterVersionBody", True),
        ("PUT", "/admin/models/{model}/aliases/{alias}"): ("SetAliasBody", True),
        ("POST", "/admin/models/{model}/rollout"): ("StartRollout", True),
        ("POST", "/admin/models/{model}/rollout/{action}"): ("RolloutAction", False),
    }


# Routes whose writes may go to the shared models with ?owner=_shared (registry_routes.write_owner).
_OWNER_ROUTES = frozenset({("POST", "/admin/models/{model}/versions"),
                           ("PUT", "/admin/models/{model}/aliases/{alias}"),
                           ("POST", "/admin/models/{model}/rollout"),
                           ("GET", "/admin/models/{model}/rollout"),
                           ("POST", "/admin/models/{model}/rollout/{action}")})


class _Schema(GenerateJsonSchema):
    """pydantic's generator, quiet about defaults that are sentinels (InferRequest's input `data`: absent
    means binary data follows); such a default is simply left out of the schema."""

    def emit_warning(self, kind: JsonSchemaWarningKind, detail: str) -> None:
        if kind != "non-serializable-default":
            super().emit_warning(kind, detail)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required or sorted(properties)}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {JSON_TYPE: {"schema": schema}}


def _success(route: Route) -> dict[str, Any]:
    """The route's success responses (schemas where the shape is a model or simple enough to state)."""
    key = (route.method, route.path)
    string, boolean = {"type": "string"}, {"type": "boolean"}
    async_headers = {"Location": {"schema": string, "description": "<stage>/v2/requests/{id}"},
                     "Retry-After": {"schema": {"type": "integer"}}}
    infer_200 = {"description": "the OIP inference response (binary outputs: application/octet-stream "
                                "with Inference-Header-Content-Length)",
                 "content": {**_json_content(_ref("InferResponse")),
                             "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
    accepted = _obj({"id": string, "status": {"const": "pending"}, "model_name": string,
                     "model_version": string})
    simple: dict[tuple[str, str], dict[str, Any]] = {
        ("GET", "/v2/health/live"): {"200": {"description": "live", "content": _json_content(
            _obj({"live": boolean}))}},
        ("GET", "/v2/health/ready"): {"200": {"description": "ready", "content": _json_content(
            _obj({"ready": boolean}))}},
        ("GET", "/v2"): {"200": {"description": "OIP server metadata", "content": _json_content(
            _obj({"name": string, "version": string, "extensions": {"type": "array", "items": string}}))}},
        ("GET", "/v2/models"): {"200": {"description": "the models the tenant may call (own and shared)",
                                        "content": _json_content(_obj({"models": {"type": "array"}}))}},
        ("GET", "/v2/models/{model}"): {"200": {"description": "OIP model metadata",
                                                "content": _json_content(_ref("ModelMetadataResponse"))}},
        ("GET", "/v2/models/{model}/versions/{version}"): {
            "200": {"description": "OIP model metadata",
                    "content": _json_content(_ref("ModelMetadataResponse"))}},
        ("POST", "/v2/models/{model}/feedback"): {
            "202": {"description": "stored under the caller's tenant",
                    "content": _json_content(_ref("FeedbackAccepted"))}},
        ("GET", "/v2/requests/{id}"): {
            "200": {"description": "done: the OIP response, or {status: failed, error: reason}",
                    "content": _json_content({"oneOf": [_ref("InferResponse"), _obj(
                        {"status": {"const": "failed"}, "error": string})]})},
            "202": {"description": "still pending", "headers": {"Retry-After": async_headers["Retry-After"]},
                    "content": _json_content(_obj({"status": {"const": "pending"}}, ["status"]))}},
        ("POST", "/admin/models/{model}/versions"): {
            "201": {"description": "registered", "headers": {"Location": {"schema": string}},
                    "content": _json_content(_obj({"model": string, "version": string,
                                                   "aliases": {"type": "array", "items": string}}))}},
        ("PUT", "/admin/models/{model}/aliases/{alias}"): {
            "200": {"description": "the alias moved", "content": _json_content(_obj(
                {"model": string, "alias": string, "version": string,
                 "previous": {"type": ["string", "null"]}}))}},
        ("GET", "/admin/audit"): {"200": {"description": "the tenant's audit log, newest first",
                                          "content": _json_content(_obj(
                                              {"records": {"type": "array"},
                                               "next_token": {"type": ["string", "null"]}}))}},
        ("GET", "/admin/models/{model}/drift"): {
            "200": {"description": "latest drift report summaries",
                    "content": _json_content(_obj({"model": string, "reports": {"type": "array"}}))}},
        ("POST", "/admin/models/{model}/rollout"): {
            "201": {"description": "started: the rollout's status",
                    "headers": {"Location": {"schema": string}},
                    "content": _json_content({"type": "object"})}},
    }
    if key in simple:
        return simple[key]
    if route.path.endswith("/infer"):
        return {"200": infer_200, "202": {"description": "a GPU model's request, queued",
                                          "headers": async_headers, "content": _json_content(accepted)}}
    if route.path.endswith("/ready"):
        return {"200": {"description": "loaded and ready", "content": _json_content(
            _obj({"name": string, "ready": boolean}))}}
    return {"200": {"description": "OK", "content": _json_content({"type": "object"})}}


def error_statuses(route: Route) -> tuple[int, ...]:
    """The error statuses the route can answer (each with the body `{"error": string}`)."""
    if not route.auth:
        return ()
    statuses = set(_AUTH_ERRORS)
    key = (route.method, route.path)
    if key in request_models():
        statuses.add(413)
    if route.function == "inference":
        statuses.add(503)                       # a model or its artifacts unavailable
    if route.path.endswith("/infer"):
        statuses |= {409, 422}                  # Idempotency-Key in flight / reused
    if route.function == "registry" and route.method != "GET":
        statuses.add(409)
    if route.function == "registry":
        statuses.add(503)                       # the registry table unavailable
    return tuple(sorted(statuses))


def _parameters(route: Route) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name in re.findall(r"{(\w+)}", route.path):
        schema: dict[str, Any] = {"type": "string", "minLength": 1}
        if name == "action":
            from tenantml.rollout.service import ACTIONS  # noqa: PLC0415
            schema = {"type": "string", "enum": list(ACTIONS)}
        out.append({"name": name, "in": "path", "required": True, "schema": schema})
    key = (route.method, route.path)
    if key in _OWNER_ROUTES:
        out.append({"name": "owner", "in": "query", "required": False,
                    "description": f"'_shared' writes the shared model (needs scope {ADMIN_SCOPE} too)",
                    "schema": {"type": "string", "enum": ["_shared"]}})
    if key == ("GET", "/admin/audit"):
        from tenantml.registry import MAX_AUDIT_PAGE  # noqa: PLC0415
        out += [{"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": MAX_AUDIT_PAGE, "default": 50}},
                {"name": "next_token", "in": "query", "required": False,
                 "description": "the previous page's next_token (opaque)", "schema": {"type": "string"}}]
    if key == ("GET", "/admin/models/{model}/drift"):
        out.append({"name": "limit", "in": "query", "required": False,
                    "schema": {"type": "integer", "minimum": 1, "maximum": 50, "default": 10}})
    if route.path.endswith("/infer"):
        out += [{"name": "Idempotency-Key", "in": "header", "required": False,
                 "description": "GPU models: a retry with the same key answers the first submit's id",
                 "schema": {"type": "string", "minLength": 1, "maxLength": 255,
                            "pattern": "^[\\x21-\\x7e]+$"}},
                {"name": "Inference-Header-Content-Length", "in": "header", "required": False,
                 "description": "binary tensor data extension: the length of the JSON header",
                 "schema": {"type": "integer", "minimum": 1}}]
    if key in request_models():
        out.append({"name": "Content-Encoding", "in": "header", "required": False,
                    "description": "a compressed body (bounded: the limit applies after decompression)",
                    "schema": {"type": "string", "enum": ["identity", "gzip", "x-gzip", "deflate"]}})
    return out


def _operation(route: Route) -> dict[str, Any]:
    key = (route.method, route.path)
    words = [w.strip("{}") for w in route.path.split("/") if w]
    op: dict[str, Any] = {
        "operationId": "_".join([route.method.lower(), *words]),
        "tags": [route.function],
        "x-tenantml-function": route.function,
    }
    if route.auth:
        op["security"] = [{"bearer": [route.scope] if route.scope else []}]
        op["x-tenantml-scope"] = route.scope
    else:
        op["security"] = []
    params = _parameters(route)
    if params:
        op["parameters"] = params
    if key in request_models():
        name, required = request_models()[key]
        content: dict[str, Any] = _json_content(_ref(name))
        if name == "InferRequest":   # the binary tensor data extension: JSON header + raw tensor bytes
            content["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"}}
        op["requestBody"] = {"required": required, "content": content}
    responses = dict(_success(route))
    for status in error_statuses(route):
        responses[str(status)] = {"$ref": f"#/components/responses/Error{status}"}
    op["responses"] = responses
    return op


def openapi_document() -> dict[str, Any]:
    """The whole document, deterministic (same code, same JSON)."""
    from tenantml import __version__  # noqa: PLC0415

    models = _models()
    _, defs = models_json_schema([(m, "validation") for m in models.values()], ref_template=REF,
                                 schema_generator=_Schema)
    schemas = dict(sorted(defs.get("$defs", {}).items()))
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    retry_after = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
    responses = {f"Error{status}": {"description": what, "content": _json_content(_ref("ErrorBody")),
                                    **({"headers": retry_after} if status in (429, 503) else {})}
                 for status, what in ERROR_STATUSES.items()}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "tenantml", "version": __version__,
                 "description": "Open Inference Protocol v2 (REST) and the registry's admin API. Every "
                                "error is {\"error\": string}. Scopes: " + ", ".join(
                                    (READ_SCOPE, FEEDBACK_SCOPE, WRITE_SCOPE, ADMIN_SCOPE)) + "."},
        "servers": [{"url": "/v1", "description": "the API Gateway stage"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": responses,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                                           "description": "a JWT whose tenant_id claim names the tenant; "
                                                          "the operation's list is the scope it needs"}},
        },
    }


def render() -> str:
    return json.dumps(openapi_document(), indent=2, sort_keys=False, ensure_ascii=True) + "\n"


def openapi_command(args: argparse.Namespace) -> int:
    """`tenantml openapi [--out FILE]`."""
    text = render()
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
