"""Who is calling. The tenant comes ONLY from the authorizer context that API Gateway attached to the
event, never from a header, path or body."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tenantml.errors import Forbidden, Unauthorized
from tenantml.manifest import TENANT_RE


@dataclass(frozen=True)
class Caller:
    tenant: str
    sub: str
    scopes: frozenset[str]

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise Forbidden(f"missing scope '{scope}'")


def _authorizer_context(event: Mapping[str, Any]) -> Mapping[str, Any]:
    rc = event.get("requestContext") or {}
    auth = rc.get("authorizer") or {}
    # HTTP API (v2) nests a Lambda authorizer's context under "lambda"; REST API (v1) does not.
    if isinstance(auth.get("lambda"), Mapping):
        return auth["lambda"]
    return auth


def caller_from_event(event: Mapping[str, Any], *, now: float | None = None) -> Caller:
    """The caller, from the authorizer's context. 401 without a tenant, and once the token is past
    `valid_until` (its exp plus the verifier's leeway): API Gateway may keep serving a cached Allow for
    the authorizer's TTL, but a token never outlives its expiry here."""
    ctx = _authorizer_context(event)
    tenant = ctx.get("tenant_id")
    if not isinstance(tenant, str) or not TENANT_RE.fullmatch(tenant):
        raise Unauthorized()
    valid_until = str(ctx.get("valid_until") or "")
    if not (valid_until.isascii() and valid_until.isdigit()):
        raise Unauthorized()
    if (time.time() if now is None else now) >= int(valid_until):
        raise Unauthorized("token expired")
    scopes_raw = ctx.get("scopes") or ""
    scopes = frozenset(str(scopes_raw).split()) if not isinstance(scopes_raw, list) else frozenset(scopes_raw)
    return Caller(tenant=tenant, sub=str(ctx.get("sub") or ""), scopes=scopes)
