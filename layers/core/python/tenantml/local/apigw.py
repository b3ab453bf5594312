"""An API Gateway emulator on localhost: the REST API (Lambda proxy integration, payload format 1.0), or
with `ApiConfig(flavour="http")` the HTTP API (payload format 2.0, a Lambda authorizer with simple
responses), the two deployment choices of the CDK app (`-c api=rest|http`).

It serves `tenantml.resources.ROUTES` (the routes the CDK app deploys) and, for every request, does what
API Gateway does in front of the functions:

- route matching on resource paths with `{param}` placeholders (literal segments win); the stage prefix is
  optional (`/v2/models` and `/<stage>/v2/models` both work); an unknown resource or method answers
  API Gateway's MISSING_AUTHENTICATION_TOKEN, which the CDK app maps to 404 `route not found`;
- gateway errors carry the API's `{"error": ...}` shape, as the CDK app's gateway responses render them;
- a 10 MB body cap (413);
- the REQUEST authorizer on `auth=True` routes: identity source = the Authorization header (missing -> 401
  without calling the authorizer), a result cache keyed by the identity source with a TTL, the cached
  policy evaluated against each request's methodArn, Deny -> 403, `Exception('Unauthorized')` -> 401,
  any other authorizer failure -> 500; on Allow the authorizer's context (plus principalId) is copied to
  `requestContext.authorizer`;
- a real-shaped v1 proxy event (AWS's sample event is the template), the function run in-process in its
  warm environment (`tenantml.local.context.LocalFunction`), and the proxy response mapped back to HTTP;
  a handler that raises, times out or returns a malformed response gives 502/504 like API Gateway.

The HTTP API flavour differs where API Gateway does: v2 proxy events (`rawPath`, lowercase `headers`
with repeated values comma-joined, `cookies`, `requestContext.http`, the authorizer's context under
`requestContext.authorizer.lambda`); a v2 REQUEST authorizer event (`routeArn`, `identitySource`) whose
`{"isAuthorized", "context"}` answer is cached by identity source; no gateway response customization, so
its own errors are `{"message": "..."}` (404 Not Found, 401 Unauthorized, 403 Forbidden, 413, 500
Internal Server Error, 503 for an integration timeout); no payload compression; a body is base64-encoded
unless its Content-Type is text or JSON.

`ApiGatewayEmulator.handle()` is pure request -> response (unit-testable without sockets);
`ApiServer` puts it behind `http.server.ThreadingHTTPServer`.
"""

from __future__ import annotations

import base64
import fnmatch
import gzip
import hashlib
import json
import logging
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from tenantml.local.context import ACCOUNT_ID, REGION, FunctionError, FunctionTimeout, LocalFunction
from tenantml.resources import DEFAULT_STAGE, ROUTES, Route

# Outside the "tenantml" logger tree on purpose: the functions' Powertools logger owns that one and would
# stamp these lines with whichever function ran last.
access_log = logging.getLogger("tenantml-local.access")
log = logging.getLogger("tenantml-local.apigw")

MAX_BODY_BYTES = 10 * 1024 * 1024  # API Gateway's payload quota
DRAIN_LIMIT = 64 * 1024 * 1024     # oversized bodies up to this size are read (and dropped) before the 413
DEFAULT_AUTHORIZER_TTL_S = 300
AUTH_HEADER = "authorization"

PolicyCheck = Callable[[dict, str], bool]


# ---------------------------------------------------------------------------------------------- HTTP ----

@dataclass(frozen=True)
class HttpRequest:
    method: str
    target: str                                  # path + query string, as on the request line
    headers: tuple[tuple[str, str], ...] = ()    # in order, original case, repeated names kept
    body: bytes = b""
    source_ip: str = "127.0.0.1"
    server_port: int = 443

    def header(self, name: str) -> str | None:
        """The last value of a header (case-insensitive), like API Gateway's single-value map."""
        value = None
        for k, v in self.headers:
            if k.lower() == name.lower():
                value = v
        return value


@dataclass
class HttpResponse:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    # What the access log reports about the request (never sent to the client).
    tenant: str | None = None
    function: str | None = None
    authorizer: str = "-"                        # "invoked", "cached" or "-"

    def header(self, name: str) -> str | None:
        for k, v in reversed(self.headers):
            if k.lower() == name.lower():
                return v
        return None

    def json(self) -> Any:
        return json.loads(self.body)


REST, HTTP = "rest", "http"
# Content types an HTTP API passes as text (anything else arrives base64-encoded, isBase64Encoded true).
_HTTP_TEXT_TYPES = ("text/*", "application/json", "application/*+json", "application/xml",
                    "application/javascript", "application/x-www-form-urlencoded")


@dataclass(frozen=True)
class ApiConfig:
    flavour: str = REST                          # "rest" (REST API) or "http" (HTTP API)
    api_id: str = "tmllocal01"
    stage: str = DEFAULT_STAGE
    region: str = REGION
    account_id: str = ACCOUNT_ID
    authorizer_ttl_s: float = DEFAULT_AUTHORIZER_TTL_S   # 0 disables the cache, as in API Gateway
    max_body_bytes: int = MAX_BODY_BYTES
    # As the CDK app configures the REST API: every body reaches the function base64-encoded (binary
    # tensor data and compressed bodies arrive intact, with or without a Content-Type) ...
    binary_media_types: tuple[str, ...] = ("*/*",)
    # ... and responses of at least this many bytes are compressed when the client accepts gzip/deflate.
    minimum_compression_size: int | None = 1024
    stage_variables: Mapping[str, str] | None = None


def _gateway_error(status: int, error_type: str, message: str | None,
                   headers: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
    """API Gateway's own error responses, rendered through the gateway responses the CDK app configures
    (cdk/tenantml_cdk/constructs/api.py): `{"error": <message>}` (the API's error shape) and
    x-amzn-ErrorType."""
    return HttpResponse(status, [("Content-Type", "application/json"), ("x-amzn-ErrorType", error_type),
                                 *headers], json.dumps({"error": message}).encode())


def missing_token() -> HttpResponse:
    # API Gateway's MISSING_AUTHENTICATION_TOKEN (an unknown resource or method) is configured as a 404.
    return _gateway_error(404, "MissingAuthenticationTokenException", "route not found")


def unauthorized() -> HttpResponse:
    return _gateway_error(401, "UnauthorizedException", "Unauthorized", (("WWW-Authenticate", "Bearer"),))


def access_denied(explicit: bool) -> HttpResponse:
    message = "User is not authorized to access this resource"
    message += " with an explicit deny" if explicit else ""
    return _gateway_error(403, "AccessDeniedException", message)


def authorizer_failure() -> HttpResponse:
    return _gateway_error(500, "AuthorizerConfigurationException", None)


def too_large() -> HttpResponse:
    return _gateway_error(413, "RequestTooLargeException", "Request Too Long")


def internal_error() -> HttpResponse:
    return _gateway_error(502, "InternalServerErrorException", "Internal server error")


def timed_out() -> HttpResponse:
    return _gateway_error(504, "IntegrationTimeoutException", "Endpoint request timed out")


# -------------------------------------------------------------------------------------------- routes ----

def http_api_error(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
    """An HTTP API's own error response: `{"message": ...}` (HTTP APIs have no gateway responses to
    reshape them)."""
    return HttpResponse(status, [("Content-Type", "application/json"), ("apigw-requestid", "-"), *headers],
                        json.dumps({"message": message}).encode())


# What each gateway error becomes behind an HTTP API.
_HTTP_ERRORS = {404: (404, "Not Found"), 401: (401, "Unauthorized"), 403: (403, "Forbidden"),
                413: (413, "Request Entity Too Large"), 500: (500, "Internal Server Error"),
                502: (500, "Internal Server Error"), 504: (503, "Service Unavailable")}


def _segments(path: str) -> list[str]:
    return [unquote(s) for s in path.strip("/").split("/")] if path.strip("/") else []


class RouteTable:
    """API Gateway resource matching: `{name}` matches one segment, `{name+}` the rest; among resources
    that match, literal segments win over parameters, left to right."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self._routes = [(r, _segments(r.path)) for r in routes]

    @staticmethod
    def _bind(template: list[str], parts: list[str]) -> dict[str, str] | None:
        params: dict[str, str] = {}
        for i, t in enumerate(template):
            if t.startswith("{") and t.endswith("+}"):
                if i >= len(parts):
                    return None
                params[t[1:-2]] = "/".join(parts[i:])
                return params
            if i >= len(parts):
                return None
            if t.startswith("{") and t.endswith("}"):
                params[t[1:-1]] = parts[i]
            elif t != parts[i]:
                return None
        return params if len(template) == len(parts) else None

    def match(self, method: str, parts: list[str]) -> tuple[Route, dict[str, str]] | None | bool:
        """(route, path parameters); False if the resource exists without this method; None if no resource."""
        found: list[tuple[tuple[int, ...], Route, dict[str, str]]] = []
        resource_exists = False
        for route, template in self._routes:
            params = self._bind(template, parts)
            if params is None:
                continue
            resource_exists = True
            if route.method == method or route.method == "ANY":
                found.append((tuple(1 if t.startswith("{") else 0 for t in template), route, params))
        if found:
            _, route, params = min(found, key=lambda f: f[0])
            return route, params
        return False if resource_exists else None


# --------------------------------------------------------------------------------------- authorizer ----

@dataclass(frozen=True)
class AuthorizerResult:
    principal_id: str
    policy: dict
    context: dict[str, str | int | float | bool]


class AuthorizerCache:
    """API Gateway's authorizer result cache: key = identity source value, value = the whole result
    (Allow and Deny policies alike), expiring after the TTL."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._items: dict[str, tuple[float, AuthorizerResult]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> AuthorizerResult | None:
        if self.ttl_s <= 0:
            return None
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            expires, result = item
            if self._clock() >= expires:
                del self._items[key]
                return None
            return result

    def put(self, key: str, result: AuthorizerResult) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            now = self._clock()
            self._items = {k: v for k, v in self._items.items() if v[0] > now}  # drop expired entries
            self._items[key] = (now + self.ttl_s, result)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class AuthorizerRejected(Exception):
    """Internal: the authorizer step ended the request with this gateway response."""

    def __init__(self, response: HttpResponse) -> None:
        super().__init__(response.status)
        self.response = response


def _parse_authorizer_output(out: Any) -> AuthorizerResult:
    """API Gateway's checks on a Lambda authorizer's output; anything off is a 500."""
    if not isinstance(out, dict):
        raise ValueError("authorizer output is not an object")
    principal, policy, context = out.get("principalId"), out.get("policyDocument"), out.get("context") or {}
    if not isinstance(principal, str) or not principal:
        raise ValueError("principalId missing")
    if not isinstance(policy, dict) or not isinstance(policy.get("Statement"), list | dict):
        raise ValueError("policyDocument missing")
    if not isinstance(context, dict) or not all(
            isinstance(v, str | int | float | bool) for v in context.values()):
        raise ValueError("context values must be strings, numbers or booleans")
    return AuthorizerResult(principal, policy, dict(context))


def _parse_simple_output(out: Any) -> AuthorizerResult:
    """An HTTP API simple response: `isAuthorized` (a boolean) and an optional `context` object; anything
    else is a 500, as API Gateway answers a malformed authorizer response."""
    if not isinstance(out, dict) or not isinstance(out.get("isAuthorized"), bool):
        raise ValueError("simple response needs a boolean isAuthorized")
    context = out.get("context") or {}
    if not isinstance(context, dict):
        raise ValueError("context must be an object")
    return AuthorizerResult("", {"isAuthorized": out["isAuthorized"]}, dict(context))


_ALLOW_ALL = {"Effect": "Allow", "Action": "*", "Resource": "*"}


def _explicit_deny(policy: dict, method_arn: str, allows: PolicyCheck) -> bool:
    """Is this ARN refused by a Deny statement (not just for want of an Allow)? Asked of the same matcher:
    the policy's Deny statements under an Allow of everything. So a Deny the matcher applies without
    matching it (one with a Condition, NotAction or NotResource: it fails closed) counts as explicit too."""
    statements = policy.get("Statement")
    statements = statements if isinstance(statements, list) else [statements]
    denies = [s for s in statements if isinstance(s, dict) and str(s.get("Effect", "")).lower() == "deny"]
    return bool(denies) and not allows({**policy, "Statement": [_ALLOW_ALL, *denies]}, method_arn)


def _default_policy_check() -> PolicyCheck:
    from tenantml.auth.policy import policy_allows  # noqa: PLC0415 - owned by the authorizer package

    return policy_allows


# ---------------------------------------------------------------------------------------- emulator ----

class ApiGatewayEmulator:
    """`functions` maps a function name (resources.FunctionName) to its warm environment; "authorizer"
    must be among them if any route has auth=True."""

    def __init__(self, functions: Mapping[str, LocalFunction], *, routes: Iterable[Route] = ROUTES,
                 config: ApiConfig | None = None, policy_check: PolicyCheck | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.functions = dict(functions)
        self.config = config or ApiConfig()
        self.routes = RouteTable(routes)
        self.cache = AuthorizerCache(self.config.authorizer_ttl_s, clock)
        self._policy_check = policy_check
        self._stats_lock = threading.Lock()
        self.requests = 0
        self.authorizer_invocations = 0      # times the authorizer function actually ran
        self.authorizer_cache_hits = 0

    @property
    def policy_check(self) -> PolicyCheck:
        if self._policy_check is None:
            self._policy_check = _default_policy_check()
        return self._policy_check

    def _count(self, name: str) -> None:
        with self._stats_lock:
            setattr(self, name, getattr(self, name) + 1)

    # -- the request pipeline -------------------------------------------------------------------

    def handle(self, req: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        self._count("requests")
        request_id = str(uuid.uuid4())
        try:
            resp = self._handle(req, request_id)
        except Exception:  # a bug in the emulator itself: say so in the log, answer like the gateway
            log.exception("emulator error on %s %s", req.method, req.target)
            resp = internal_error()
        if self.config.flavour == HTTP and resp.header("x-amzn-ErrorType") is not None:
            status, message = _HTTP_ERRORS[resp.status]
            error = http_api_error(status, message)
            error.tenant, error.function, error.authorizer = resp.tenant, resp.function, resp.authorizer
            resp = error
        resp.headers += [("x-amzn-RequestId", request_id),
                         ("x-amz-apigw-id", base64.b64encode(uuid.uuid4().bytes[:12]).decode()),
                         ("X-Amzn-Trace-Id", _trace_id())]
        if not any(k.lower() == "content-type" for k, _ in resp.headers):
            resp.headers.append(("Content-Type", "application/json"))
        self._compress(req, resp)
        latency_ms = (time.perf_counter() - started) * 1000
        access_log.info('%s "%s %s" %d %.1fms tenant=%s function=%s authorizer=%s requestId=%s',
                        req.source_ip, req.method, urlsplit(req.target).path, resp.status, latency_ms,
                        resp.tenant or "-", resp.function or "-", resp.authorizer, request_id)
        return resp

    def _compress(self, req: HttpRequest, resp: HttpResponse) -> None:
        """API Gateway's payload compression (minimumCompressionSize): gzip or deflate, as the client's
        Accept-Encoding allows (gzip preferred), for bodies of at least that size."""
        limit = self.config.minimum_compression_size
        if self.config.flavour == HTTP or limit is None or len(resp.body) < limit \
                or resp.header("Content-Encoding"):
            return
        accepted = _accepted_encodings(req.header("Accept-Encoding") or "")
        for coding in ("gzip", "deflate"):
            if coding in accepted:
                packed = gzip.compress(resp.body, mtime=0) if coding == "gzip" else zlib.compress(resp.body)
                resp.body = packed
                resp.headers.append(("Content-Encoding", coding))
                return

    def _handle(self, req: HttpRequest, request_id: str) -> HttpResponse:
        if len(req.body) > self.config.max_body_bytes:
            return too_large()
        split = urlsplit(req.target)
        parts = _segments(split.path)
        method = req.method.upper()
        matched = self.routes.match(method, parts)
        stage_prefixed = False
        if not matched and parts and parts[0] == self.config.stage:
            matched = self.routes.match(method, parts[1:])
            stage_prefixed = bool(matched)
        if not matched:
            return missing_token()
        route, path_params = matched
        path = unquote(split.path)
        if stage_prefixed:
            path = path[len(self.config.stage) + 1:] or "/"
        if len(path) > 1:
            path = path.rstrip("/")

        http = self.config.flavour == HTTP
        # A named stage is part of an HTTP API's rawPath (the emulator also routes paths without it).
        raw_path = split.path if stage_prefixed else f"/{self.config.stage}{split.path}"
        event = (self._v2_event(req, route, raw_path, path_params, split.query, request_id) if http
                 else self._proxy_event(req, route, path, path_params, split.query, request_id))
        auth_state = "-"
        tenant = None
        if route.auth:
            try:
                result, auth_state, latency_ms = self._authorize(req, event)
            except AuthorizerRejected as rejected:
                rejected.response.function = route.function
                return rejected.response
            event["requestContext"]["authorizer"] = {"lambda": dict(result.context)} if http else {
                **result.context, "principalId": result.principal_id, "integrationLatency": latency_ms}
            tenant_value = result.context.get("tenant_id")
            tenant = str(tenant_value) if tenant_value is not None else None
        resp = self._integrate(route, event)
        resp.tenant, resp.function, resp.authorizer = tenant, route.function, auth_state
        return resp

    # -- events ---------------------------------------------------------------------------------

    def _request_context(self, req: HttpRequest, route: Route, path: str, request_id: str) -> dict:
        now = time.time()
        host = req.header("Host") or f"{self.config.api_id}.execute-api.{self.config.region}.amazonaws.com"
        return {
            "accountId": self.config.account_id,
            "apiId": self.config.api_id,
            "domainName": host,
            "domainPrefix": host.split(".")[0].split(":")[0],
            "extendedRequestId": base64.b64encode(uuid.uuid4().bytes[:12]).decode(),
            "httpMethod": req.method.upper(),
            "identity": {
                "accessKey": None, "accountId": None, "apiKey": None, "apiKeyId": None, "caller": None,
                "cognitoAuthenticationProvider": None, "cognitoAuthenticationType": None,
                "cognitoIdentityId": None, "cognitoIdentityPoolId": None, "principalOrgId": None,
                "sourceIp": req.source_ip, "user": None, "userAgent": req.header("User-Agent"),
                "userArn": None,
            },
            "path": f"/{self.config.stage}{path}",
            "protocol": "HTTP/1.1",
            "requestId": request_id,
            "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "requestTimeEpoch": int(now * 1000),
            "resourceId": hashlib.sha256(route.path.encode()).hexdigest()[:6],
            "resourcePath": route.path,
            "stage": self.config.stage,
        }

    def _proxy_event(self, req: HttpRequest, route: Route, path: str, path_params: dict[str, str],
                     query: str, request_id: str) -> dict:
        headers: dict[str, str] = {}
        multi_headers: dict[str, list[str]] = {}
        gateway_headers = [("X-Forwarded-For", req.source_ip), ("X-Forwarded-Port", str(req.server_port)),
                           ("X-Forwarded-Proto", "http"), ("X-Amzn-Trace-Id", _trace_id())]
        sent = {k.lower() for k, _ in req.headers}
        for k, v in [*req.headers, *((k, v) for k, v in gateway_headers if k.lower() not in sent)]:
            headers[k] = v
            multi_headers.setdefault(k, []).append(v)
        qs: dict[str, str] = {}
        multi_qs: dict[str, list[str]] = {}
        for k, v in parse_qsl(query, keep_blank_values=True):
            qs[k] = v
            multi_qs.setdefault(k, []).append(v)
        body, is_b64 = self._event_body(req)
        return {
            "resource": route.path,
            "path": path,
            "httpMethod": req.method.upper(),
            "headers": headers or None,
            "multiValueHeaders": multi_headers or None,
            "queryStringParameters": qs or None,
            "multiValueQueryStringParameters": multi_qs or None,
            "pathParameters": path_params or None,
            "stageVariables": dict(self.config.stage_variables) if self.config.stage_variables else None,
            "requestContext": self._request_context(req, route, path, request_id),
            "body": body,
            "isBase64Encoded": is_b64,
        }

    def _event_body(self, req: HttpRequest) -> tuple[str | None, bool]:
        if not req.body:
            return None, False
        ctype = (req.header("Content-Type") or "").split(";")[0].strip().lower()
        binary = "*/*" in self.config.binary_media_types or \
            any(fnmatch.fnmatch(ctype, t.lower()) for t in self.config.binary_media_types)
        if not binary:
            try:
                return req.body.decode("utf-8"), False
            except UnicodeDecodeError:
                binary = True
        return base64.b64encode(req.body).decode("ascii"), True

    def _v2_event(self, req: HttpRequest, route: Route, raw_path: str, path_params: dict[str, str],
                  query: str, request_id: str) -> dict:
        """An HTTP API payload format 2.0 proxy event."""
        headers: dict[str, str] = {}
        cookies: list[str] = []
        for k, v in req.headers:
            name = k.lower()
            if name == "cookie":
                cookies += [c.strip() for c in v.split(";") if c.strip()]
                continue
            headers[name] = f"{headers[name]},{v}" if name in headers else v
        headers.setdefault("x-forwarded-for", req.source_ip)
        headers.setdefault("x-forwarded-port", str(req.server_port))
        headers.setdefault("x-forwarded-proto", "http")
        headers.setdefault("x-amzn-trace-id", _trace_id())
        qs: dict[str, str] = {}
        for k, v in parse_qsl(query, keep_blank_values=True):
            qs[k] = f"{qs[k]},{v}" if k in qs else v
        body, is_b64 = self._v2_body(req)
        now = time.time()
        host = headers.get("host") or f"{self.config.api_id}.execute-api.{self.config.region}.amazonaws.com"
        route_key = f"{route.method} {route.path}"
        event: dict[str, Any] = {
            "version": "2.0",
            "routeKey": route_key,
            "rawPath": raw_path,
            "rawQueryString": query,
            "headers": headers,
            "requestContext": {
                "accountId": self.config.account_id,
                "apiId": self.config.api_id,
                "domainName": host,
                "domainPrefix": host.split(".")[0].split(":")[0],
                "http": {"method": req.method.upper(), "path": raw_path, "protocol": "HTTP/1.1",
                         "sourceIp": req.source_ip, "userAgent": headers.get("user-agent", "")},
                "requestId": request_id,
                "routeKey": route_key,
                "stage": self.config.stage,
                "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
                "timeEpoch": int(now * 1000),
            },
            "isBase64Encoded": is_b64,
        }
        if cookies:
            event["cookies"] = cookies
        if qs:
            event["queryStringParameters"] = qs
        if path_params:
            event["pathParameters"] = path_params
        if self.config.stage_variables:
            event["stageVariables"] = dict(self.config.stage_variables)
        if body is not None:
            event["body"] = body
        return event

    @staticmethod
    def _v2_body(req: HttpRequest) -> tuple[str | None, bool]:
        if not req.body:
            return None, False
        ctype = (req.header("Content-Type") or "").split(";")[0].strip().lower()
        if any(fnmatch.fnmatch(ctype, t) for t in _HTTP_TEXT_TYPES):
            try:
                return req.body.decode("utf-8"), False
            except UnicodeDecodeError:
                pass
        return base64.b64encode(req.body).decode("ascii"), True

    def route_arn(self, method: str, route_path: str) -> str:
        c = self.config
        return f"arn:aws:execute-api:{c.region}:{c.account_id}:{c.api_id}/{c.stage}/{method}{route_path}"

    def simple_authorizer_event(self, proxy_event: dict, identity: str) -> dict:
        """An HTTP API REQUEST authorizer event, payload format 2.0, for the request behind `proxy_event`."""
        method, _, route_path = proxy_event["routeKey"].partition(" ")
        event = {"version": "2.0", "type": "REQUEST", "routeArn": self.route_arn(method, route_path),
                 "identitySource": [identity],
                 **{k: v for k, v in proxy_event.items() if k not in ("version", "body", "isBase64Encoded")}}
        context = proxy_event["requestContext"]
        event["requestContext"] = {k: v for k, v in context.items() if k != "authorizer"}
        return event

    def method_arn(self, method: str, path: str) -> str:
        c = self.config
        resource = path.lstrip("/")
        return f"arn:aws:execute-api:{c.region}:{c.account_id}:{c.api_id}/{c.stage}/{method}/{resource}"

    def authorizer_event(self, proxy_event: dict) -> dict:
        """A REST API REQUEST authorizer event for the request behind `proxy_event`."""
        rc = {k: v for k, v in proxy_event["requestContext"].items() if k != "authorizer"}
        return {
            "type": "REQUEST",
            "methodArn": self.method_arn(proxy_event["httpMethod"], proxy_event["path"]),
            "resource": proxy_event["resource"],
            "path": proxy_event["path"],
            "httpMethod": proxy_event["httpMethod"],
            "headers": proxy_event["headers"] or {},
            "multiValueHeaders": proxy_event["multiValueHeaders"] or {},
            "queryStringParameters": proxy_event["queryStringParameters"] or {},
            "multiValueQueryStringParameters": proxy_event["multiValueQueryStringParameters"] or {},
            "pathParameters": proxy_event["pathParameters"] or {},
            "stageVariables": proxy_event["stageVariables"] or {},
            "requestContext": rc,
        }

    # -- authorizer -----------------------------------------------------------------------------

    def _authorize(self, req: HttpRequest, event: dict) -> tuple[AuthorizerResult, str, int]:
        identity = req.header(AUTH_HEADER)
        if not identity:
            raise AuthorizerRejected(unauthorized())
        simple = self.config.flavour == HTTP
        auth_event = self.simple_authorizer_event(event, identity) if simple else self.authorizer_event(event)
        method_arn = auth_event.get("methodArn", "")
        result = self.cache.get(identity)
        state, latency_ms = "cached", 0
        if result is None:
            fn = self.functions.get("authorizer")
            if fn is None:
                log.error("route %s needs the authorizer, which is not loaded", event["resource"])
                raise AuthorizerRejected(authorizer_failure())
            self._count("authorizer_invocations")
            started = time.perf_counter()
            try:
                out = fn.invoke(auth_event)
            except FunctionError as err:
                # API Gateway answers 401 exactly when the authorizer fails with the message "Unauthorized".
                if str(err.__cause__) == "Unauthorized":
                    raise AuthorizerRejected(unauthorized()) from None
                log.error("authorizer failed: %s", err.error_type)
                raise AuthorizerRejected(authorizer_failure()) from None
            except FunctionTimeout:
                log.error("authorizer timed out")
                raise AuthorizerRejected(authorizer_failure()) from None
            latency_ms = int((time.perf_counter() - started) * 1000)
            try:
                result = _parse_simple_output(out) if simple else _parse_authorizer_output(out)
            except ValueError as exc:
                log.error("authorizer returned an invalid response: %s", exc)
                raise AuthorizerRejected(authorizer_failure()) from None
            self.cache.put(identity, result)
            state = "invoked"
        else:
            self._count("authorizer_cache_hits")
        if simple and not result.policy["isAuthorized"]:
            denied = access_denied(False)
            denied.authorizer = state
            raise AuthorizerRejected(denied)
        if not simple and not self.policy_check(result.policy, method_arn):
            explicit = _explicit_deny(result.policy, method_arn, self.policy_check)
            denied = access_denied(explicit)
            denied.authorizer = state
            tenant = result.context.get("tenant_id")
            denied.tenant = str(tenant) if tenant is not None else None
            raise AuthorizerRejected(denied)
        return result, state, latency_ms

    # -- integration ----------------------------------------------------------------------------

    def _integrate(self, route: Route, event: dict) -> HttpResponse:
        fn = self.functions.get(route.function)
        if fn is None:
            log.error("no function %s for %s %s", route.function, route.method, route.path)
            return internal_error()
        try:
            out = fn.invoke(event)
        except FunctionTimeout:
            log.error("%s timed out after %.0fs", route.function, fn.timeout_s)
            return timed_out()
        except FunctionError as err:
            log.error("%s raised %s", route.function, err.error_type, exc_info=err.__cause__)
            return internal_error()
        try:
            return proxy_response(out)
        except ValueError as exc:
            log.error("malformed Lambda proxy response from %s: %s", route.function, exc)
            return internal_error()


def proxy_response(out: Any) -> HttpResponse:
    """Map a Lambda proxy integration response to HTTP, with API Gateway's validation."""
    if not isinstance(out, dict):
        raise ValueError("response is not an object")
    status = out.get("statusCode")
    if isinstance(status, str) and status.isdigit():
        status = int(status)
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise ValueError("statusCode missing or invalid")
    body = out.get("body")
    if body is not None and not isinstance(body, str):
        raise ValueError("body must be a string")
    raw = body.encode() if body else b""
    if out.get("isBase64Encoded") and body:
        try:
            raw = base64.b64decode(body, validate=True)
        except ValueError as exc:
            raise ValueError("isBase64Encoded but body is not base64") from exc
    single = {} if out.get("headers") is None else out["headers"]
    multi = {} if out.get("multiValueHeaders") is None else out["multiValueHeaders"]
    if not isinstance(single, dict) or not isinstance(multi, dict):
        raise ValueError("headers must be objects")
    headers: list[tuple[str, str]] = []
    for k, values in multi.items():
        for v in values if isinstance(values, list) else [values]:
            headers.append((str(k), _header_value(v)))
    # When a name is in both maps, API Gateway keeps only the multi-value one.
    multi_names = {str(k).lower() for k in multi}
    for k, v in single.items():
        if str(k).lower() not in multi_names:
            headers.append((str(k), _header_value(v)))
    cookies = out.get("cookies") or []          # payload format 2.0
    if not isinstance(cookies, list):
        raise ValueError("cookies must be a list")
    headers += [("Set-Cookie", str(c)) for c in cookies]
    hop_by_hop = {"content-length", "transfer-encoding", "connection"}
    return HttpResponse(status, [(k, v) for k, v in headers if k.lower() not in hop_by_hop], raw)


def _accepted_encodings(header: str) -> set[str]:
    """Codings an Accept-Encoding header accepts (q > 0)."""
    out = set()
    for part in header.split(","):
        coding, _, params = part.strip().partition(";")
        q = params.strip().removeprefix("q=") if params.strip().startswith("q=") else "1"
        try:
            if float(q) > 0:
                out.add(coding.strip().lower())
        except ValueError:
            continue
    return out


def _header_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _trace_id() -> str:
    return f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}"


# ------------------------------------------------------------------------------------------ server ----

class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "tenantml-apigw"
    sys_version = ""
    server: _HttpServer

    def _dispatch(self) -> None:
        emulator = self.server.emulator
        cap = emulator.config.max_body_bytes
        try:
            body = self._read_body(cap)
        except ValueError:
            self._send(_gateway_error(400, "BadRequestException", "Bad Request"), close=True)
            return
        if body is None:  # over the cap: answered without reading it, and the connection closed
            access_log.info('%s "%s %s" 413 body over %d bytes', self.client_address[0], self.command,
                            urlsplit(self.path).path, cap)
            self._send(too_large(), close=True)
            return
        req = HttpRequest(method=self.command, target=self.path, headers=tuple(self.headers.items()),
                          body=body, source_ip=self.client_address[0], server_port=self.server.server_port)
        self._send(emulator.handle(req))

    def _read_body(self, cap: int) -> bytes | None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > cap:
                    return None
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError("negative Content-Length")
        if length > cap:
            if length <= DRAIN_LIMIT:  # read and drop it, so the client sees the 413 and not a reset
                while length > 0:
                    chunk = self.rfile.read(min(length, 1 << 20))
                    if not chunk:
                        break
                    length -= len(chunk)
            return None
        return self.rfile.read(length) if length else b""

    def _send(self, resp: HttpResponse, *, close: bool = False) -> None:
        """Status line, headers and body in ONE write (with Nagle off): two writes on a keep-alive
        connection meet the client's delayed ACK and stall each response by ~40 ms."""
        self.send_response_only(resp.status)
        self.send_header("Date", formatdate(usegmt=True))
        for k, v in resp.headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(resp.body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self._headers_buffer.append(b"\r\n")
        if self.command != "HEAD" and resp.body:
            self._headers_buffer.append(resp.body)
        self.wfile.write(b"".join(self._headers_buffer))
        self._headers_buffer = []

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _dispatch

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # the emulator writes its own access log


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    emulator: ApiGatewayEmulator


class ApiServer:
    """The emulator behind a ThreadingHTTPServer on `host:port` (port 0 picks a free one)."""

    def __init__(self, emulator: ApiGatewayEmulator, host: str = "127.0.0.1", port: int = 8080) -> None:
        self.emulator = emulator
        self.host = host
        self._httpd = _HttpServer((host, port), _RequestHandler)
        self._httpd.emulator = emulator
        self.port = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ApiServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="apigw", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
