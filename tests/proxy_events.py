"""API Gateway proxy events for tests: the HTTP API (payload format 2.0) event of a REST (1.0) one, so that
one sample event drives a function through both flavours."""

from __future__ import annotations

from typing import Any


def v2_from_rest(rest: dict[str, Any], *, authorizer: bool = True) -> dict[str, Any]:
    """The HTTP API payload format 2.0 event for the same request as a REST v1 one."""
    headers = {k.lower(): v for k, v in (rest.get("headers") or {}).items()}
    event = {"version": "2.0", "routeKey": f"{rest['httpMethod']} {rest['resource']}",
             "rawPath": f"/prod{rest['path']}", "rawQueryString": "", "headers": headers,
             "requestContext": {"accountId": "123456789012", "apiId": "abcdef1234", "stage": "prod",
                                "domainName": "abcdef1234.execute-api.us-east-1.amazonaws.com",
                                "http": {"method": rest["httpMethod"], "path": f"/prod{rest['path']}",
                                         "protocol": "HTTP/1.1", "sourceIp": "198.51.100.7",
                                         "userAgent": "curl"},
                                "requestId": "v2-request-1",
                                "routeKey": f"{rest['httpMethod']} {rest['resource']}",
                                "time": "01/Dec/2026:00:00:00 +0000", "timeEpoch": 1796083200000},
             "pathParameters": rest.get("pathParameters") or {},
             "isBase64Encoded": bool(rest.get("isBase64Encoded")),
             **({"body": rest["body"]} if rest.get("body") is not None else {})}
    if authorizer:
        event["requestContext"]["authorizer"] = {"lambda": dict(rest["requestContext"]["authorizer"])}
    return event
