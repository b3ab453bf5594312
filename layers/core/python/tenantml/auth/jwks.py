"""Signing keys: where they come from (a JWKS URL or inline JSON) and how long they are trusted.

Only public RSA (>= 2048 bits, RS256) and EC P-256 (ES256) keys with a `kid` are kept. Each key carries
the ONE algorithm it may verify, derived from its type (RSA -> RS256, EC P-256 -> ES256); a JWK whose own
`alg` disagrees, a symmetric (`oct`) key, or any other curve is dropped. Private members present in a
JWKS (`d`, `p`, ...) are ignored: only the public parameters are read.

`JwksCache` keeps the parsed keyset for `ttl_seconds`. A lookup for an unknown `kid` (key rotation)
refetches, but every fetch, whatever triggered it, is throttled to one per `min_refresh_seconds`, so a
flood of tokens with made-up kids costs at most one fetch a minute. A failed fetch keeps serving the
keys already cached; with nothing cached it raises `JwksUnavailable`. The clock is injected for tests.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tenantml.auth import JwksUnavailable

logger = logging.getLogger(__name__)

MIN_RSA_BITS = 2048
MAX_JWKS_BYTES = 256 * 1024
MAX_KEYS = 100
DEFAULT_TIMEOUT_SECONDS = 2.0
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


class JwksError(Exception):
    """A keyset could not be fetched or parsed. Internal: the cache turns it into a log line or
    `JwksUnavailable`."""


@dataclass(frozen=True)
class VerificationKey:
    kid: str
    alg: str  # "RS256" or "ES256": the only algorithm this key may verify
    key: Any  # a cryptography RSAPublicKey / EllipticCurvePublicKey


def _parse_key(jwk: Mapping[str, Any]) -> VerificationKey:
    """One JWK -> VerificationKey, or ValueError saying why it is not usable."""
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        raise ValueError("no kid")
    if jwk.get("use", "sig") != "sig":
        raise ValueError("not a signing key")
    kty, declared = jwk.get("kty"), jwk.get("alg")
    try:
        if kty == "RSA":
            if declared not in (None, "RS256"):
                raise ValueError(f"RSA key declares alg {declared!r}")
            key = RSAAlgorithm.from_jwk({"kty": "RSA", "n": jwk.get("n"), "e": jwk.get("e")})
            if key.key_size < MIN_RSA_BITS:
                raise ValueError(f"RSA key of {key.key_size} bits")
            return VerificationKey(kid, "RS256", key)
        if kty == "EC":
            if jwk.get("crv") != "P-256":
                raise ValueError(f"EC curve {jwk.get('crv')!r}")
            if declared not in (None, "ES256"):
                raise ValueError(f"EC P-256 key declares alg {declared!r}")
            key = ECAlgorithm.from_jwk({"kty": "EC", "crv": "P-256", "x": jwk.get("x"), "y": jwk.get("y")})
            return VerificationKey(kid, "ES256", key)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - PyJWT raises InvalidKeyError/TypeError/... on bad members
        raise ValueError(f"unreadable {kty} key ({type(exc).__name__})") from None
    raise ValueError(f"unsupported kty {kty!r}")


def parse_jwks(doc: Any) -> dict[str, VerificationKey]:
    """A JWKS document -> {kid: key}. Raises JwksError if it holds no usable key at all."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("keys"), list):
        raise JwksError("not a JWKS document")
    keys: dict[str, VerificationKey] = {}
    for jwk in doc["keys"][:MAX_KEYS]:
        if not isinstance(jwk, Mapping):
            continue
        try:
            key = _parse_key(jwk)
        except ValueError as exc:
            logger.warning("jwks key skipped", extra={"kid": str(jwk.get("kid"))[:64], "why": str(exc)})
            continue
        if key.kid in keys:
            logger.warning("jwks duplicate kid skipped", extra={"kid": key.kid[:64]})
            continue
        keys[key.kid] = key
    if not keys:
        raise JwksError("JWKS holds no usable RS256/ES256 key")
    return keys


class JwksSource(Protocol):
    def fetch(self) -> Any:
        """Return the JWKS document (parsed JSON) or raise JwksError."""
        ...


class StaticJwksSource:
    """Inline JWKS (settings.jwks_json). Parsed once; invalid JSON is a configuration error (ValueError)."""

    def __init__(self, doc: str | Mapping[str, Any]) -> None:
        self._doc = json.loads(doc) if isinstance(doc, str) else doc
        parse_jwks(self._doc)  # fail at start-up, not on the first request

    def fetch(self) -> Any:
        return self._doc


class UrlJwksSource:
    """JWKS over HTTPS with urllib (no boto3, no requests): short timeout, bounded size.
    Plain http is accepted only for localhost (the local platform).

    `timeout` bounds each socket operation (connect, each read) and the body as a whole: the body is
    read in pieces against a deadline of `timeout` seconds from the start of the fetch, so a server
    that trickles bytes cannot hold the authorizer (and the cache lock) for longer than about twice
    the timeout. A declared Content-Length above MAX_JWKS_BYTES is refused before reading anything."""

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT_SECONDS,
                 opener: Callable[..., Any] = urllib.request.urlopen) -> None:
        parts = urllib.parse.urlsplit(url)
        if not (parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOCAL_HOSTS)):
            raise ValueError("JWKS URL must be https (http only for localhost)")
        self.url = url
        self._timeout = timeout
        self._open = opener

    def fetch(self) -> Any:
        request = urllib.request.Request(  # noqa: S310 - scheme checked in __init__
            self.url, headers={"Accept": "application/json", "User-Agent": "tenantml-authorizer"})
        deadline = time.monotonic() + self._timeout
        try:
            with self._open(request, timeout=self._timeout) as resp:
                status = getattr(resp, "status", 200)
                if status != 200:
                    raise JwksError(f"JWKS fetch answered HTTP {status}")
                declared = (getattr(resp, "headers", None) or {}).get("Content-Length")
                if declared is not None and declared.strip().isdigit() and int(declared) > MAX_JWKS_BYTES:
                    raise JwksError("JWKS document too large")
                body = _read_bounded(resp, deadline)
        except JwksError:
            raise
        except (OSError, ValueError) as exc:  # URLError/HTTPError/timeouts are OSError
            raise JwksError(f"JWKS fetch failed ({type(exc).__name__})") from None
        if len(body) > MAX_JWKS_BYTES:
            raise JwksError("JWKS document too large")
        try:
            return json.loads(body)
        except ValueError:
            raise JwksError("JWKS document is not JSON") from None


def _read_bounded(resp: Any, deadline: float) -> bytes:
    """At most MAX_JWKS_BYTES + 1 bytes of `resp`, read piece by piece until `deadline` (monotonic)."""
    read = getattr(resp, "read1", None) or resp.read  # read1: at most one socket read per call
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_JWKS_BYTES:
        if time.monotonic() > deadline:
            raise JwksError("JWKS fetch too slow")
        chunk = read(min(64 * 1024, MAX_JWKS_BYTES + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class JwksCache:
    """Keys by kid, cached for `ttl_seconds`; at most one fetch per `min_refresh_seconds`."""

    def __init__(self, source: JwksSource, *, ttl_seconds: float = 300, min_refresh_seconds: float = 60,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._source = source
        self._ttl = ttl_seconds
        self._min_refresh = min_refresh_seconds
        self._clock = clock
        self._keys: dict[str, VerificationKey] | None = None
        self._fetched_at = 0.0
        self._last_attempt: float | None = None
        self._lock = threading.Lock()  # the local emulator serves requests from several threads
        self.fetch_count = 0  # attempts, successful or not (observability and tests)

    def get(self, kid: str) -> VerificationKey | None:
        """The key for `kid`, or None if the (possibly refreshed) keyset does not have it.
        Raises JwksUnavailable when no keyset has ever been loaded."""
        with self._lock:
            now = self._clock()
            if self._keys is None or now - self._fetched_at >= self._ttl:
                self._refresh(now)
            if self._keys is None:
                raise JwksUnavailable(detail="no JWKS loaded")
            key = self._keys.get(kid)
            if key is None and self._refresh(now):
                key = self._keys.get(kid)
            return key

    def _refresh(self, now: float) -> bool:
        if self._last_attempt is not None and now - self._last_attempt < self._min_refresh:
            return False
        self._last_attempt = now
        self.fetch_count += 1
        try:
            keys = parse_jwks(self._source.fetch())
        except JwksError as exc:
            logger.warning("jwks refresh failed", extra={"why": str(exc), "cached": self._keys is not None})
            return False
        self._keys, self._fetched_at = keys, now
        return True


def source_from_settings(jwks_url: str | None, jwks_json: str | None) -> JwksSource:
    if jwks_json:
        return StaticJwksSource(jwks_json)
    if jwks_url:
        return UrlJwksSource(jwks_url)
    raise ValueError("set jwks_url or jwks_json")
