"""JWT verification: `TokenVerifier.verify(token) -> Claims`.

Order of checks (the first failure wins and becomes the `DenyReason`):
  1. shape: a str of at most MAX_TOKEN_CHARS, three base64url segments, a JSON-object header;
  2. `alg` header in the allow-list {RS256, ES256}: `none`, HS*, PS*, RS384... are refused outright;
  3. `kid` header -> key from the JWKS (an unknown kid triggers a throttled refetch, see jwks.py);
  4. the key's own algorithm must equal the header's (RSA <-> RS256, EC P-256 <-> ES256), and PyJWT is
     told to accept ONLY that algorithm, so an RSA public key can never be used as an HMAC secret;
  5. signature, then `iss` and `aud` (PyJWT), with exp/iss/aud/sub required;
  6. exp / nbf / iat against the injected clock with the configured leeway (<= 60 s), PyJWT semantics:
     expired when exp <= now - leeway; not yet valid when nbf (or iat) > now + leeway;
  7. the tenant claim (name configurable): a string matching TENANT_RE that is not `_shared`;
     `sub`: a non-empty string; scopes from `scope` (space-separated) and/or `scp` (list or string).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import jwt
from jwt import exceptions as jwt_errors

from tenantml import SHARED_TENANT
from tenantml.auth import ALLOWED_ALGORITHMS, Claims, DenyReason, InvalidToken
from tenantml.auth.jwks import JwksCache, source_from_settings
from tenantml.manifest import TENANT_RE

if TYPE_CHECKING:  # pragma: no cover
    from tenantml.settings import AuthSettings

MAX_TOKEN_CHARS = 8192
MAX_LEEWAY_SECONDS = 60
MAX_SUB_CHARS = 256
MAX_SCOPES = 64
_REQUIRED = ["exp", "iss", "aud", "sub"]


def _number(payload: Mapping[str, Any], name: str) -> float | None:
    if name not in payload:
        return None
    value = payload[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidToken(DenyReason.INVALID_CLAIM, detail=f"{name} is not a NumericDate")
    return float(value)


def _scopes(payload: Mapping[str, Any]) -> frozenset[str]:
    found: list[str] = []
    for name in ("scope", "scp"):
        value = payload.get(name)
        if value is None:
            continue
        if isinstance(value, str):
            found.extend(value.split())
        elif isinstance(value, list) and all(isinstance(s, str) and s and not any(c.isspace() for c in s)
                                             for s in value):
            found.extend(value)
        else:
            raise InvalidToken(DenyReason.INVALID_CLAIM, detail=f"{name} is not a string or list of strings")
    if len(found) > MAX_SCOPES:
        raise InvalidToken(DenyReason.INVALID_CLAIM, detail="too many scopes")
    return frozenset(found)


class TokenVerifier:
    """Verifies bearer JWTs for one issuer/audience against one JWKS. Reusable and thread-safe."""

    def __init__(self, keys: JwksCache, *, issuer: str, audience: str, tenant_claim: str = "tenant_id",
                 leeway_seconds: int = 60, clock: Callable[[], float] = time.time) -> None:
        if not 0 <= leeway_seconds <= MAX_LEEWAY_SECONDS:
            raise ValueError(f"leeway must be between 0 and {MAX_LEEWAY_SECONDS} seconds")
        if not issuer or not audience or not tenant_claim:
            raise ValueError("issuer, audience and tenant_claim are required")
        self._keys = keys
        self.issuer = issuer
        self.audience = audience
        self.tenant_claim = tenant_claim
        self.leeway = leeway_seconds
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: AuthSettings, *, clock: Callable[[], float] = time.time,
                      cache_clock: Callable[[], float] = time.monotonic) -> TokenVerifier:
        """Build from the parsed settings (the only place a verifier is configured outside tests)."""
        cache = JwksCache(source_from_settings(settings.jwks_url, settings.jwks_json),
                          ttl_seconds=settings.jwks_ttl_seconds,
                          min_refresh_seconds=settings.jwks_min_refresh_seconds, clock=cache_clock)
        return cls(cache, issuer=settings.issuer, audience=settings.audience,
                   tenant_claim=settings.tenant_claim, leeway_seconds=settings.leeway_seconds, clock=clock)

    def verify(self, token: str, *, now: float | None = None) -> Claims:
        """Claims of a valid token; InvalidToken(reason) otherwise. JwksUnavailable propagates."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
            raise InvalidToken(DenyReason.MALFORMED_TOKEN, detail="not a compact JWS")
        try:
            header = jwt.get_unverified_header(token)
        except jwt_errors.PyJWTError:
            raise InvalidToken(DenyReason.MALFORMED_TOKEN, detail="unreadable header") from None

        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
            raise InvalidToken(DenyReason.ALG_NOT_ALLOWED, detail=f"alg {str(alg)[:16]!r}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken(DenyReason.MISSING_KID)
        key = self._keys.get(kid)
        if key is None:
            raise InvalidToken(DenyReason.UNKNOWN_KID, detail=f"kid {kid[:64]!r}")
        if key.alg != alg:
            raise InvalidToken(DenyReason.ALG_KEY_MISMATCH, detail=f"{alg} token, {key.alg} key")

        payload = self._decode(token, key.key, key.alg)
        try:
            self._check_times(payload, self._clock() if now is None else now)
            return Claims(tenant_id=self._tenant(payload), sub=self._sub(payload), scopes=_scopes(payload),
                          raw=payload, valid_until=int(math.ceil(float(payload["exp"]) + self.leeway)))
        except InvalidToken as exc:  # signed by a trusted key: its tenant may go to the deny log line
            tenant = payload.get(self.tenant_claim)
            if isinstance(tenant, str) and TENANT_RE.fullmatch(tenant):
                exc.tenant = tenant
            raise

    def _decode(self, token: str, key: Any, alg: str) -> dict[str, Any]:
        try:
            return jwt.decode(
                token, key, algorithms=[alg], audience=self.audience, issuer=self.issuer,
                # Times are checked in _check_times against the injected clock.
                options={"require": _REQUIRED, "verify_exp": False, "verify_nbf": False,
                         "verify_iat": False, "enforce_minimum_key_length": True},
            )
        except jwt_errors.InvalidSignatureError:
            raise InvalidToken(DenyReason.BAD_SIGNATURE) from None
        except jwt_errors.InvalidAudienceError:
            raise InvalidToken(DenyReason.WRONG_AUDIENCE) from None
        except jwt_errors.InvalidIssuerError:
            raise InvalidToken(DenyReason.WRONG_ISSUER) from None
        except jwt_errors.MissingRequiredClaimError as exc:
            raise InvalidToken(DenyReason.MISSING_CLAIM, detail=exc.claim) from None
        except jwt_errors.InvalidAlgorithmError:
            raise InvalidToken(DenyReason.ALG_NOT_ALLOWED) from None
        except (jwt_errors.InvalidSubjectError, jwt_errors.InvalidJTIError) as exc:
            raise InvalidToken(DenyReason.INVALID_CLAIM, detail=type(exc).__name__) from None
        except jwt_errors.PyJWTError as exc:  # DecodeError (payload not JSON, bad base64, ...), others
            raise InvalidToken(DenyReason.MALFORMED_TOKEN, detail=type(exc).__name__) from None

    def _check_times(self, payload: Mapping[str, Any], now: float) -> None:
        exp, nbf, iat = (_number(payload, name) for name in ("exp", "nbf", "iat"))
        if exp is None:  # required above; kept explicit so the rule cannot silently disappear
            raise InvalidToken(DenyReason.MISSING_CLAIM, detail="exp")
        if exp <= now - self.leeway:
            raise InvalidToken(DenyReason.EXPIRED, detail=f"expired {int(now - exp)}s ago")
        if nbf is not None and nbf > now + self.leeway:
            raise InvalidToken(DenyReason.NOT_YET_VALID, detail="nbf in the future")
        if iat is not None and iat > now + self.leeway:
            raise InvalidToken(DenyReason.NOT_YET_VALID, detail="iat in the future")

    def _tenant(self, payload: Mapping[str, Any]) -> str:
        if self.tenant_claim not in payload:
            raise InvalidToken(DenyReason.MISSING_TENANT, detail=self.tenant_claim)
        tenant = payload[self.tenant_claim]
        if not isinstance(tenant, str) or not TENANT_RE.fullmatch(tenant):
            raise InvalidToken(DenyReason.INVALID_TENANT, detail=f"{self.tenant_claim} is not a tenant id")
        if tenant == SHARED_TENANT:
            raise InvalidToken(DenyReason.SHARED_TENANT)
        return tenant

    @staticmethod
    def _sub(payload: Mapping[str, Any]) -> str:
        sub = payload.get("sub")
        if not isinstance(sub, str) or not sub.strip() or len(sub) > MAX_SUB_CHARS:
            raise InvalidToken(DenyReason.INVALID_CLAIM, detail="sub")
        return sub
