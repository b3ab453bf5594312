"""Local mode's own signing keys and `tenantml token`.

`ensure_dev_keys()` creates, once, an RSA-2048 key and an EC P-256 key under `.tenantml/keys/`
(PKCS#8 PEM, mode 0600, folder 0700) and loads them on later calls. Each key's `kid` is its RFC 7638
JWK thumbprint, so it is stable without being stored. The local platform configures the authorizer
with `DevKeys.jwks()` (public keys only) plus DEV_ISSUER / DEV_AUDIENCE (see `DevKeys.auth_env()`), and
`tenantml token --tenant acme` mints a token it accepts.

These keys are for this machine only; nothing deployed trusts them.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tenantml import SHARED_TENANT
from tenantml.auth import DEFAULT_MAX_TOKEN_LIFETIME_SECONDS
from tenantml.manifest import TENANT_RE

DEV_ISSUER = "https://tenantml.local/dev"
DEV_AUDIENCE = "tenantml"
DEFAULT_HOME = Path(".tenantml/keys")
DEFAULT_SCOPES = ("models:read",)
RSA_FILE = "rsa-signing.pem"
EC_FILE = "ec-p256-signing.pem"


def _b64(n: int, length: int | None = None) -> str:
    raw = n.to_bytes(length or max(1, (n.bit_length() + 7) // 8), "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _thumbprint(required: dict[str, str]) -> str:
    """RFC 7638: sha256 over the required members, sorted, no whitespace."""
    canonical = json.dumps(required, sort_keys=True, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class DevKeys:
    rsa_private: Any  # cryptography RSAPrivateKey
    ec_private: Any   # cryptography EllipticCurvePrivateKey (P-256)
    issuer: str = DEV_ISSUER
    audience: str = DEV_AUDIENCE

    def _public_jwks(self) -> list[dict[str, str]]:
        rsa = self.rsa_private.public_key().public_numbers()
        ec = self.ec_private.public_key().public_numbers()
        rsa_req = {"e": _b64(rsa.e), "kty": "RSA", "n": _b64(rsa.n)}
        ec_req = {"crv": "P-256", "kty": "EC", "x": _b64(ec.x, 32), "y": _b64(ec.y, 32)}
        return [
            {**rsa_req, "kid": _thumbprint(rsa_req), "use": "sig", "alg": "RS256"},
            {**ec_req, "kid": _thumbprint(ec_req), "use": "sig", "alg": "ES256"},
        ]

    @property
    def kids(self) -> dict[str, str]:
        """{"RS256": kid, "ES256": kid}"""
        return {jwk["alg"]: jwk["kid"] for jwk in self._public_jwks()}

    def jwks(self) -> dict[str, Any]:
        """The public JWKS (no private members)."""
        return {"keys": self._public_jwks()}

    def auth_env(self) -> dict[str, str]:
        """Environment for an authorizer that trusts these keys (tenantml.settings.AuthSettings)."""
        return {"TENANTML_JWKS_JSON": json.dumps(self.jwks()), "TENANTML_ISSUER": self.issuer,
                "TENANTML_AUDIENCE": self.audience}

    def mint(self, tenant: str, scopes: Iterable[str] | str = DEFAULT_SCOPES, sub: str = "dev-user",
             ttl: int = 3600, alg: str = "RS256", *, tenant_claim: str = "tenant_id",
             now: float | None = None, extra: dict[str, Any] | None = None) -> str:
        """A signed JWT for `tenant` that the dev-configured authorizer accepts."""
        import jwt  # only when minting

        if not isinstance(tenant, str) or not TENANT_RE.fullmatch(tenant) or tenant == SHARED_TENANT:
            raise ValueError(f"not a callable tenant id: {tenant!r}")
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        if ttl > DEFAULT_MAX_TOKEN_LIFETIME_SECONDS:  # the authorizer would refuse it (LIFETIME_TOO_LONG)
            raise ValueError(f"ttl above the authorizer's maximum token lifetime "
                             f"({DEFAULT_MAX_TOKEN_LIFETIME_SECONDS} s)")
        key = {"RS256": self.rsa_private, "ES256": self.ec_private}.get(alg)
        if key is None:
            raise ValueError("alg must be RS256 or ES256")
        scope_list = scopes.split() if isinstance(scopes, str) else [s for s in scopes]
        if any(not s or any(c.isspace() for c in s) for s in scope_list):
            raise ValueError("scopes must be non-empty and contain no whitespace")
        issued = int(time.time() if now is None else now)
        claims: dict[str, Any] = {
            "iss": self.issuer, "aud": self.audience, "sub": sub, tenant_claim: tenant,
            "scope": " ".join(dict.fromkeys(scope_list)), "iat": issued, "nbf": issued,
            "exp": issued + ttl, "jti": uuid.uuid4().hex,
        }
        claims.update(extra or {})
        return jwt.encode(claims, key, algorithm=alg, headers={"kid": self.kids[alg], "typ": "JWT"})


def _write_once(path: Path, pem: bytes) -> None:
    """Write `pem` to `path` (0600) unless it already exists; atomic against a concurrent writer."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):  # someone else won: keep theirs
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _load_or_create(path: Path, generate) -> Any:
    from cryptography.hazmat.primitives import serialization

    if not path.exists():
        pem = generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())
        _write_once(path, pem)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)  # never leave a signing key readable by others
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


def ensure_dev_keys(home: Path = DEFAULT_HOME) -> DevKeys:
    """Load the dev keys under `home`, creating them (once) if needed."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    home = Path(home)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    rsa_key = _load_or_create(home / RSA_FILE,
                              lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048))
    ec_key = _load_or_create(home / EC_FILE, lambda: ec.generate_private_key(ec.SECP256R1()))
    if not isinstance(rsa_key, rsa.RSAPrivateKey) or rsa_key.key_size < 2048:
        raise ValueError(f"{home / RSA_FILE} is not an RSA-2048+ private key")
    if not isinstance(ec_key, ec.EllipticCurvePrivateKey) or ec_key.curve.name != "secp256r1":
        raise ValueError(f"{home / EC_FILE} is not an EC P-256 private key")
    return DevKeys(rsa_key, ec_key)


def token_command(args: argparse.Namespace) -> int:
    """`tenantml token --tenant acme [--scope S ...] [--sub] [--ttl] [--alg] [--keys DIR]`: print only
    the token, signed by the dev keys the local platform trusts: those of `--keys`, else of the project's
    home (`.tenantml/keys` from the working directory upwards, else the checkout's). Never new keys: a
    token from keys the running platform does not know would only be refused."""
    from tenantml.local import state as platform_state  # noqa: PLC0415

    if args.keys:
        home = Path(args.keys)
    else:
        found = platform_state.find_home()
        home = found / platform_state.KEYS_NAME if found else Path("<none>")
    if not ((home / RSA_FILE).is_file() and (home / EC_FILE).is_file()):
        where = f"in {home}" if args.keys else "in .tenantml/keys here, above or in the tenantml checkout"
        print(f"tenantml token: no dev keys {where}; {platform_state.START_HINT} once (it creates them), "
              "or pass --keys DIR", file=sys.stderr)
        return 1
    keys = ensure_dev_keys(home)
    scopes = args.scope or list(DEFAULT_SCOPES)
    try:
        token = keys.mint(args.tenant, scopes, sub=args.sub, ttl=args.ttl, alg=args.alg)
    except ValueError as exc:
        print(f"tenantml token: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0
