"""The authorizer decision: IAM policies for the REST API, simple responses for the HTTP API.

`authorize(event, verifier)` takes an API Gateway REQUEST authorizer event and answers:

* **Allow**: a valid token. principalId = `sub`; one statement allowing `execute-api:Invoke` on the WHOLE
  stage (`arn:<partition>:execute-api:<region>:<account>:<api>/<stage>/*/*`, derived from `methodArn`).
  API Gateway caches the policy per token (identity source) and evaluates that cached policy for the
  token's next requests on *other* routes; a policy for the current method only would make those 403.
  Route-level permissions (scopes, e.g. `models:write` for /admin) are enforced by the functions from
  the context, which carries `{tenant_id, sub, scopes, valid_until}` as strings (scopes space-joined,
  sorted; valid_until the epoch second from which the token is expired, exp + leeway: the functions
  refuse it from then on, so the authorizer cache never extends a token's life).
* **Deny** (explicit, principalId "anonymous", no context): a token was presented but fails
  verification (malformed, alg not allowed, unknown kid, bad signature, expired, wrong iss/aud, no or bad
  tenant claim, ...). The client gets 403, and API Gateway caches the Deny for that exact token, so
  replaying a bad token does not invoke (and bill) this function again.
* **raise MissingToken** (message exactly "Unauthorized"; API Gateway answers 401): no bearer token at
  all (no Authorization header, empty, or another scheme such as Basic). 401 tells the client to
  authenticate, which is the right answer when it did not try; nothing is cached for it.
* **raise JwksUnavailable**: the signing keys cannot be loaded. This is our outage, not a bad token, so
  we do not cache a Deny against a possibly valid token: API Gateway answers 500 and the client retries.

The token itself is never logged. Deny lines carry the reason, and the tenant when the token's signature
was valid (e.g. expired) or "-"; Allow lines carry the tenant and sub.

`policy_allows(policy, method_arn)` evaluates a (cached) authorizer policy against another request the
way API Gateway does: explicit Deny wins, then any Allow, otherwise denied; `*` and `?` wildcards in
Action (case-insensitive) and Resource (case-sensitive), where `*` also spans `/`. It is used by the
local API Gateway emulator. Statements with a Condition, NotAction or NotResource cannot be evaluated
here: such an Allow is ignored and such a Deny applies (fail closed).

This module imports neither PyJWT nor boto3.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tenantml.auth import Claims, DenyReason, InvalidToken, MissingToken

if TYPE_CHECKING:  # pragma: no cover
    from tenantml.auth.verifier import TokenVerifier

logger = logging.getLogger(__name__)

POLICY_VERSION = "2012-10-17"
INVOKE = "execute-api:Invoke"
DENY_PRINCIPAL = "anonymous"
UNKNOWN_TENANT = "-"  # in log lines where no verified tenant exists (cannot collide: not a TENANT_RE id)

# arn:aws:execute-api:us-east-1:123456789012:abcdef123/test/GET/v2/models
_METHOD_ARN_RE = re.compile(
    r"arn:(?P<partition>aws[a-z-]*):execute-api:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):"
    r"(?P<api>[A-Za-z0-9]+)/(?P<stage>[A-Za-z0-9_$-]+)/(?P<verb>[A-Z]+|\*)(?P<resource>/.*)?"
)
# `Bearer` in any ASCII casing, then one or more SP / HTAB, then the token (RFC 6750 2.1, RFC 9110 11.1).
_BEARER_RE = re.compile(r"bearer(?:[ \t]+(?P<rest>.*))?", re.IGNORECASE | re.DOTALL | re.ASCII)
_OWS = " \t"  # HTTP optional whitespace (RFC 9110 5.6.3): the only whitespace trimmed around values


def stage_arn(method_arn: str) -> str:
    """`arn:...:<api>/<stage>/<verb>/<path>` -> `arn:...:<api>/<stage>/*/*`. ValueError if malformed."""
    m = _METHOD_ARN_RE.fullmatch(method_arn) if isinstance(method_arn, str) else None
    if m is None:
        raise ValueError("not an execute-api method ARN")
    return (f"arn:{m['partition']}:execute-api:{m['region']}:{m['account']}:"
            f"{m['api']}/{m['stage']}/*/*")


def allow_policy(claims: Claims, method_arn: str) -> dict[str, Any]:
    """The Allow response for a verified caller (ValueError if method_arn is malformed)."""
    return {
        "principalId": claims.sub,
        "policyDocument": {
            "Version": POLICY_VERSION,
            "Statement": [{"Action": INVOKE, "Effect": "Allow", "Resource": [stage_arn(method_arn)]}],
        },
        "context": context_of(claims),
    }


def deny_policy() -> dict[str, Any]:
    """An explicit Deny on everything, with no context."""
    return {
        "principalId": DENY_PRINCIPAL,
        "policyDocument": {
            "Version": POLICY_VERSION,
            "Statement": [{"Action": INVOKE, "Effect": "Deny", "Resource": ["*"]}],
        },
    }


def bearer_token(event: Mapping[str, Any]) -> str:
    """The token of `Authorization: Bearer <token>` (header name and scheme case-insensitive).

    Raises MissingToken when there is no bearer credential at all, InvalidToken(MALFORMED_TOKEN) when
    the header is ambiguous (several Authorization values) or the bearer value is not one token.
    Only SP / HTAB count as the separator and are trimmed around the value: `Bearer` followed by CR, LF,
    a no-break space, `:` or nothing is not the Bearer scheme (401); any other whitespace left in the
    token (a second token, a trailing CR/LF) makes it malformed (Deny)."""
    headers = event.get("headers") or {}
    values = [v for k, v in headers.items() if isinstance(k, str) and k.lower() == "authorization"] \
        if isinstance(headers, Mapping) else []
    multi = event.get("multiValueHeaders") or {}
    if isinstance(multi, Mapping):
        for k, v in multi.items():
            if isinstance(k, str) and k.lower() == "authorization" and isinstance(v, list) and len(v) > 1:
                raise InvalidToken(DenyReason.MALFORMED_TOKEN, detail="several Authorization headers")
    if len(values) > 1:
        raise InvalidToken(DenyReason.MALFORMED_TOKEN, detail="several Authorization headers")
    value = values[0] if values else None
    if not isinstance(value, str) or not value.strip(_OWS):
        raise MissingToken(detail="no Authorization header")
    m = _BEARER_RE.fullmatch(value.strip(_OWS))
    if m is None:
        raise MissingToken(detail="Authorization scheme is not Bearer")
    rest = (m["rest"] or "").strip(_OWS)
    if not rest:
        raise MissingToken(detail="empty bearer token")
    if any(c.isspace() for c in rest):
        raise InvalidToken(DenyReason.MALFORMED_TOKEN, detail="bearer value is not one token")
    return rest


def authorize(event: Mapping[str, Any], verifier: TokenVerifier, *,
              now: float | None = None) -> dict[str, Any]:
    """Decide one authorizer event (see the module docstring for the outcomes): a REST API REQUEST event
    (or an HTTP API one with payload format 1.0), a REST TOKEN event (its `authorizationToken` read as
    the Authorization header), or an HTTP API payload format 2.0 event, answered in the simple format."""
    if not isinstance(event, Mapping):
        return _deny(InvalidToken(DenyReason.MALFORMED_TOKEN, detail="authorizer event is not an object"))
    if event.get("version") == "2.0":
        return _authorize_simple(event, verifier, now)
    if event.get("type") not in ("REQUEST", "TOKEN"):   # a queue message, a scheduled event, ...
        return _deny(InvalidToken(DenyReason.MALFORMED_TOKEN, detail="not an authorizer event"))
    if event.get("type") == "TOKEN":
        event = {"headers": {"Authorization": event.get("authorizationToken")},
                 "methodArn": event.get("methodArn")}
    try:
        token = bearer_token(event)
    except MissingToken as exc:
        logger.info("authorizer unauthorized", extra={"tenant": UNKNOWN_TENANT, "reason": "missing_token",
                                                       "detail": exc.detail})
        raise
    except InvalidToken as exc:
        return _deny(exc)
    method_arn = event.get("methodArn")
    try:
        claims = verifier.verify(token, now=now)
    except InvalidToken as exc:
        return _deny(exc)
    try:
        policy = allow_policy(claims, method_arn)  # type: ignore[arg-type]
    except ValueError:
        return _deny(InvalidToken(DenyReason.BAD_METHOD_ARN, tenant=claims.tenant_id))
    logger.info("authorizer allow", extra={"tenant": claims.tenant_id, "sub": claims.sub,
                                           "scopes": policy["context"]["scopes"]})
    return policy


def context_of(claims: Claims) -> dict[str, str]:
    """What the functions read (tenantml.api.context): tenant, sub, scopes (space-joined, sorted) and
    valid_until (exp + leeway, the epoch second from which the functions answer 401)."""
    return {"tenant_id": claims.tenant_id, "sub": claims.sub, "scopes": " ".join(sorted(claims.scopes)),
            **({"valid_until": str(claims.valid_until)} if claims.valid_until is not None else {})}


def _authorize_simple(event: Mapping[str, Any], verifier: TokenVerifier, now: float | None) -> dict[str, Any]:
    """HTTP API (payload format 2.0, simple responses): `{"isAuthorized": true, "context": {...}}` for a
    verified token, `{"isAuthorized": false}` (403) otherwise. There is no 401 answer in this format:
    API Gateway itself answers 401 when the Authorization header is missing or empty (the identity
    source), without invoking the authorizer; another scheme or a bad token is a 403. The JWKS being
    unreachable still raises (500, nothing cached), as for the REST API."""
    try:
        claims = verifier.verify(bearer_token(event), now=now)
    except MissingToken as exc:
        logger.info("authorizer unauthorized", extra={"tenant": UNKNOWN_TENANT, "reason": "missing_token",
                                                       "detail": exc.detail})
        return {"isAuthorized": False}
    except InvalidToken as exc:
        _deny(exc)
        return {"isAuthorized": False}
    logger.info("authorizer allow", extra={"tenant": claims.tenant_id, "sub": claims.sub,
                                           "scopes": " ".join(sorted(claims.scopes))})
    return {"isAuthorized": True, "context": context_of(claims)}


def _deny(exc: InvalidToken) -> dict[str, Any]:
    logger.warning("authorizer deny", extra={"tenant": exc.tenant or UNKNOWN_TENANT,
                                             "reason": exc.reason.value, "detail": exc.detail})
    return deny_policy()


# -- policy evaluation (the local API Gateway emulator) ------------------------------------------------

@functools.lru_cache(maxsize=512)
def _pattern(glob: str, ignore_case: bool) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob)
    return re.compile(body, re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def _matches(patterns: Any, value: str, *, ignore_case: bool) -> bool:
    items = [patterns] if isinstance(patterns, str) else patterns
    if not isinstance(items, list):
        return False
    return any(isinstance(p, str) and _pattern(p, ignore_case).fullmatch(value) for p in items)


def policy_allows(policy: Mapping[str, Any], method_arn: str) -> bool:
    """Does this authorizer response (or bare policy document) allow invoking `method_arn`?"""
    if not isinstance(policy, Mapping) or not isinstance(method_arn, str):
        return False
    doc = policy.get("policyDocument", policy)
    statements = doc.get("Statement") if isinstance(doc, Mapping) else None
    if isinstance(statements, Mapping):
        statements = [statements]
    if not isinstance(statements, list):
        return False
    allowed = False
    for st in statements:
        if not isinstance(st, Mapping):
            continue
        effect = st.get("Effect")
        unevaluable = any(k in st for k in ("Condition", "NotAction", "NotResource"))
        if effect == "Deny":
            if unevaluable or (_matches(st.get("Action"), INVOKE, ignore_case=True)
                               and _matches(st.get("Resource"), method_arn, ignore_case=False)):
                return False
        elif effect == "Allow" and not unevaluable:
            allowed = allowed or (_matches(st.get("Action"), INVOKE, ignore_case=True)
                                  and _matches(st.get("Resource"), method_arn, ignore_case=False))
    return allowed
