"""Authentication: JWT verification against a JWKS and the API Gateway authorizer decision.

Modules:
    jwks      key sources (URL via urllib, or inline JSON) and a TTL cache with throttled refetch
    verifier  `TokenVerifier.verify(token) -> Claims` (RS256/ES256 only, key chosen by `kid`)
    policy    `authorize(event, verifier)` -> IAM policy; `policy_allows(policy, method_arn)`
    devkeys   local mode's own signing keys and `tenantml token`

This package module holds only the shared, dependency-free types (claims and errors) so that
`tenantml.auth.policy` (used by the local API Gateway emulator) does not pull in PyJWT/cryptography.
The heavier names are re-exported lazily (PEP 562).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tenantml.errors import TenantMLError, Unauthorized

__all__ = [
    "ALLOWED_ALGORITHMS",
    "DEFAULT_MAX_TOKEN_LIFETIME_SECONDS",
    "FORBIDDEN_HEADERS",
    "Claims",
    "DenyReason",
    "InvalidToken",
    "JwksUnavailable",
    "MissingToken",
    "TokenVerifier",
    "authorize",
    "policy_allows",
]

# The only signature algorithms ever accepted. The token's `alg` header never selects the algorithm:
# the key (found by `kid`) does, and the header must agree with it.
ALLOWED_ALGORITHMS: frozenset[str] = frozenset({"RS256", "ES256"})

# JOSE header parameters that point at, embed or extend key material or processing rules (RFC 7515
# 4.1.2-4.1.6, 4.1.11; RFC 7797). The verifier never uses them: a token that carries any is refused
# (FORBIDDEN_HEADER) rather than silently half-understood. `x5t`, `typ`, `cty` are ignored.
FORBIDDEN_HEADERS: frozenset[str] = frozenset({"jku", "x5u", "jwk", "x5c", "crit", "b64"})

# The longest a token may live: `exp - iat` (or `exp - now` without `iat`). AuthSettings'
# max_token_lifetime_seconds defaults to this; `tenantml token` refuses a longer --ttl.
DEFAULT_MAX_TOKEN_LIFETIME_SECONDS = 24 * 3600


@dataclass(frozen=True)
class Claims:
    """A verified caller. `raw` is the full verified payload (read-only)."""

    tenant_id: str
    sub: str
    scopes: frozenset[str]
    raw: Mapping[str, Any] = field(repr=False, compare=False)
    # Epoch seconds at which the verifier would refuse the token (exp + leeway): the functions refuse it
    # from then on too, however long API Gateway caches the Allow. None only for hand-made test claims.
    valid_until: int | None = None


class DenyReason(enum.StrEnum):
    """Why a token was refused. Logged (never sent to the client); tests match on these, not on text."""

    MALFORMED_TOKEN = "malformed_token"  # noqa: S105 - a reason code, not a secret
    ALG_NOT_ALLOWED = "alg_not_allowed"
    FORBIDDEN_HEADER = "forbidden_header"  # jku / x5u / jwk / x5c / crit / b64 in the JOSE header
    MISSING_KID = "missing_kid"
    UNKNOWN_KID = "unknown_kid"
    ALG_KEY_MISMATCH = "alg_key_mismatch"
    BAD_SIGNATURE = "bad_signature"
    MISSING_CLAIM = "missing_claim"
    INVALID_CLAIM = "invalid_claim"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    LIFETIME_TOO_LONG = "lifetime_too_long"  # exp - iat (or exp - now) above max_token_lifetime_seconds
    WRONG_ISSUER = "wrong_issuer"
    WRONG_AUDIENCE = "wrong_audience"
    MISSING_TENANT = "missing_tenant"
    INVALID_TENANT = "invalid_tenant"
    SHARED_TENANT = "shared_tenant"
    BAD_METHOD_ARN = "bad_method_arn"


class InvalidToken(Unauthorized):
    """A bearer token was presented but is not acceptable. The authorizer answers with a Deny policy."""

    def __init__(self, reason: DenyReason, detail: str | None = None, *, tenant: str | None = None) -> None:
        super().__init__(detail=detail)
        self.reason = reason
        # Set only once the signature has been verified (e.g. an expired but genuine token): for logs.
        self.tenant = tenant


class MissingToken(Unauthorized):
    """No bearer token at all. Its message is exactly "Unauthorized": raised out of a Lambda authorizer,
    that is the error message API Gateway turns into a 401 (and the local emulator catches the class)."""

    default_message = "Unauthorized"

    def __init__(self, *, detail: str | None = None) -> None:
        super().__init__(detail=detail)

    def __str__(self) -> str:  # the Lambda error message: exactly "Unauthorized", never the detail
        return self.public_message


class JwksUnavailable(TenantMLError):
    """No signing keys could be loaded (fetch failed and nothing cached). Not the caller's fault: the
    authorizer raises (API Gateway answers 500, and caches nothing) instead of caching a Deny."""

    status = 503
    default_message = "authorization keys unavailable"


_LAZY = {
    "TokenVerifier": "tenantml.auth.verifier",
    "authorize": "tenantml.auth.policy",
    "policy_allows": "tenantml.auth.policy",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
