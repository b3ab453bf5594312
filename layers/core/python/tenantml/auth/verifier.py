"""JWT verification: `TokenVerifier.verify(token) -> Claims`.

Order of checks (the first failure wins and becomes the `DenyReason`). Steps 1-3 are purely syntactic
and run before any key lookup, so a junk token never triggers a JWKS fetch:
  1. shape (MALFORMED_TOKEN): a str of at most MAX_TOKEN_CHARS, exactly three segments of the base64url
     alphabet without padding, each the canonical encoding of its bytes (no `=`, no `+` / `/`, no
     stray trailing bits), so one token has exactly one spelling. Header and payload are UTF-8 JSON
     objects (json.loads(bytes) would also take UTF-16/32), parsed strictly: a member name that
     appears twice (a parser differential: another parser may keep the other value), NaN / Infinity,
     or nesting too deep for the parser is malformed;
  2. `alg` header in the allow-list {RS256, ES256}, case-sensitive (ALG_NOT_ALLOWED): `none` in any
     casing, HS*, PS*, RS384... are refused outright;
  3. no `jku` / `x5u` / `jwk` / `x5c` / `crit` / `b64` header (FORBIDDEN_HEADER): keys come only from
     the configured JWKS and no JWS extension is understood; `kid` present, not null, not empty
     (MISSING_KID), a string of at most MAX_KID_CHARS (MALFORMED_TOKEN); a non-empty signature segment
     (BAD_SIGNATURE);
  4. `kid` -> key from the JWKS (an unknown kid triggers a throttled refetch, see jwks.py);
  5. the key's own algorithm must equal the header's (RSA <-> RS256, EC P-256 <-> ES256), and PyJWT is
     told to accept ONLY that algorithm, so an RSA public key can never be used as an HMAC secret;
  6. signature, then `iss` and `aud` (PyJWT), with exp/iss/aud/sub required; `aud` may be a list that
     contains our audience (RFC 7519 4.1.3);
  7. exp / nbf / iat against the injected clock with the configured leeway (<= 60 s), PyJWT semantics:
     expired when exp <= now - leeway; not yet valid when nbf (or iat) > now + leeway; each a JSON
     number (a string, bool or out-of-range value is INVALID_CLAIM), exp after iat and nbf;
     lifetime (LIFETIME_TOO_LONG): exp - iat <= max_lifetime_seconds, or, without `iat`,
     exp - now <= max_lifetime_seconds + leeway;
  8. the tenant claim (name configurable): a string matching TENANT_RE that is not `_shared`;
     `sub`: a non-empty string; scopes from `scope` (space-separated) and/or `scp` (list or string).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import jwt
from jwt import exceptions as jwt_errors

from tenantml import SHARED_TENANT
from tenantml.auth import (
    ALLOWED_ALGORITHMS,
    DEFAULT_MAX_TOKEN_LIFETIME_SECONDS,
    FORBIDDEN_HEADERS,
    Claims,
    DenyReason,
    InvalidToken,
)
from tenantml.auth.jwks import JwksCache, source_from_settings
from tenantml.manifest import TENANT_RE

if TYPE_CHECKING:  # pragma: no cover
    from tenantml.settings import AuthSettings

MAX_TOKEN_CHARS = 8192
MAX_LEEWAY_SECONDS = 60
MAX_SUB_CHARS = 256
MAX_SCOPES = 64
MAX_KID_CHARS = 256
_REQUIRED = ["exp", "iss", "aud", "sub"]
# Three base64url segments, no padding; the signature may be empty here (step 3 refuses it).
_COMPACT_RE = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]*)", re.ASCII)


def _malformed(detail: str) -> InvalidToken:
    return InvalidToken(DenyReason.MALFORMED_TOKEN, detail=detail)


def _b64url(segment: str, what: str) -> bytes:
    """The bytes of a base64url segment, only if `segment` is their one canonical spelling."""
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise _malformed(f"{what} is not base64url") from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != segment:
        raise _malformed(f"{what} is not canonical base64url")
    return raw


class _DuplicateMember(ValueError):
    pass


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for name, value in pairs:
        if name in obj:
            raise _DuplicateMember(name)
        obj[name] = value
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_object(segment: str, what: str) -> dict[str, Any]:
    """A JOSE header / JWT claims set: strict UTF-8 JSON object, every member name at most once."""
    raw = _b64url(segment, what)
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_members, parse_constant=_no_constant)
    except _DuplicateMember as exc:
        raise _malformed(f"{what} has member {str(exc)[:32]!r} twice") from None
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise _malformed(f"{what} is not UTF-8 JSON") from None
    if not isinstance(doc, dict):
        raise _malformed(f"{what} is not a JSON object")
    return doc


def _number(payload: Mapping[str, Any], name: str) -> float | None:
    if name not in payload:
        return None
    value = payload[name]
    try:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise OverflowError
        return float(value)
    except OverflowError:  # also an int too large for a float (math.isfinite(10**400) raises)
        raise InvalidToken(DenyReason.INVALID_CLAIM, detail=f"{name} is not a NumericDate") from None


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
                 leeway_seconds: int = 60, clock: Callable[[], float] = time.time,
                 max_lifetime_seconds: int = DEFAULT_MAX_TOKEN_LIFETIME_SECONDS) -> None:
        if not 0 <= leeway_seconds <= MAX_LEEWAY_SECONDS:
            raise ValueError(f"leeway must be between 0 and {MAX_LEEWAY_SECONDS} seconds")
        if max_lifetime_seconds <= 0:
            raise ValueError("max_lifetime_seconds must be positive")
        if not issuer or not audience or not tenant_claim:
            raise ValueError("issuer, audience and tenant_claim are required")
        self._keys = keys
        self.issuer = issuer
        self.audience = audience
        self.tenant_claim = tenant_claim
        self.leeway = leeway_seconds
        self.max_lifetime = max_lifetime_seconds
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: AuthSettings, *, clock: Callable[[], float] = time.time,
                      cache_clock: Callable[[], float] = time.monotonic) -> TokenVerifier:
        """Build from the parsed settings (the only place a verifier is configured outside tests)."""
        cache = JwksCache(source_from_settings(settings.jwks_url, settings.jwks_json),
                          ttl_seconds=settings.jwks_ttl_seconds,
                          min_refresh_seconds=settings.jwks_min_refresh_seconds, clock=cache_clock)
        return cls(cache, issuer=settings.issuer, audience=settings.audience,
                   tenant_claim=settings.tenant_claim, leeway_seconds=settings.leeway_seconds, clock=clock,
                   max_lifetime_seconds=settings.max_token_lifetime_seconds)

    def verify(self, token: str, *, now: float | None = None) -> Claims:
        """Claims of a valid token; InvalidToken(reason) otherwise. JwksUnavailable propagates."""
        m = _COMPACT_RE.fullmatch(token) if isinstance(token, str) and len(token) <= MAX_TOKEN_CHARS else None
        if m is None:
            raise _malformed("not a compact JWS")
        header = _json_object(m[1], "header")
        _json_object(m[2], "payload")  # strict parse only: PyJWT reads the same bytes after the signature
        signature = _b64url(m[3], "signature")

        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
            raise InvalidToken(DenyReason.ALG_NOT_ALLOWED, detail=f"alg {str(alg)[:16]!r}")
        forbidden = sorted(FORBIDDEN_HEADERS.intersection(header))
        if forbidden:
            raise InvalidToken(DenyReason.FORBIDDEN_HEADER, detail=",".join(forbidden))
        kid = header.get("kid")
        if kid is None or kid == "":
            raise InvalidToken(DenyReason.MISSING_KID)
        if not isinstance(kid, str) or len(kid) > MAX_KID_CHARS:
            raise _malformed("kid is not a string of at most 256 characters")
        if not signature:
            raise InvalidToken(DenyReason.BAD_SIGNATURE, detail="no signature")
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
        if (iat is not None and exp <= iat) or (nbf is not None and exp <= nbf):
            raise InvalidToken(DenyReason.INVALID_CLAIM, detail="exp not after iat / nbf")
        # The issuer's lifetime (exp - iat: both from its clock, no leeway); without iat, what is left of
        # the token (exp - now, with the leeway for the issuer's clock running ahead of ours).
        lifetime, limit = (exp - iat, self.max_lifetime) if iat is not None else \
            (exp - now, self.max_lifetime + self.leeway)
        if lifetime > limit:
            raise InvalidToken(DenyReason.LIFETIME_TOO_LONG,
                               detail=f"lifetime {min(lifetime, 1e12):.0f}s > {self.max_lifetime}s")

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
