"""JWT attack suite: one table of hostile (and a few deliberately tolerated) credentials, each run through
`tenantml.auth.policy.authorize` as a REST REQUEST authorizer event, each with its exact outcome:
Allow (for which tenant), Deny (with which DenyReason, read from the deny log line), or MissingToken (401).

Every token is generated here, at test time, with this module's own keys: PyJWT for the well-formed ones,
hand-built JWS segments (and our own RS256 / ES256 / PS256 / HMAC signers) for the malformed ones, so a
refusal is proven to come from the rule under test and not from a broken signature. The policy each case
implements is the table in README.md ("Security"); the order of checks is in tenantml/auth/verifier.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from jwt.algorithms import ECAlgorithm, RSAAlgorithm, RSAPSSAlgorithm

from tenantml.auth import DenyReason, InvalidToken, MissingToken
from tenantml.auth.jwks import JwksCache, StaticJwksSource
from tenantml.auth.policy import authorize, deny_policy
from tenantml.auth.verifier import MAX_KID_CHARS, MAX_TOKEN_CHARS, TokenVerifier

ISS = "https://issuer.example.com/"
AUD = "tenantml-api"
NOW = 1_800_000_000
DAY = 86400
LEEWAY = 60
ARN = "arn:aws:execute-api:eu-west-1:123456789012:abcdef1234/prod/POST/v2/models/clf/infer"
RSA_KID, OLD_RSA_KID, EC_KID, OCT_KID = "rsa-2026", "rsa-2025", "ec-2026", "hmac-1"


# -- keys and signers ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Keys:
    rsa: Any         # ours, in the JWKS as RSA_KID (alg RS256 declared)
    rsa_old: Any     # ours, in the JWKS as OLD_RSA_KID (no alg declared)
    ec: Any          # ours, in the JWKS as EC_KID
    evil_rsa: Any    # the attacker's: in no JWKS
    evil_ec: Any

    def jwks(self) -> dict:
        def jwk(pub, kid, **extra):
            cls = RSAAlgorithm if isinstance(pub, rsa.RSAPublicKey) else ECAlgorithm
            return {**cls.to_jwk(pub, as_dict=True), "kid": kid, "use": "sig", **extra}
        return {"keys": [jwk(self.rsa.public_key(), RSA_KID, alg="RS256"),
                         jwk(self.rsa_old.public_key(), OLD_RSA_KID),
                         jwk(self.ec.public_key(), EC_KID, alg="ES256"),
                         # A symmetric key in the JWKS is dropped: it can never verify anything.
                         {"kty": "oct", "kid": OCT_KID, "k": b64(b"shared-secret-0123456789abcdef")}]}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def rs256(key) -> Callable[[bytes], bytes]:
    return lambda data: RSAAlgorithm(RSAAlgorithm.SHA256).sign(data, key)


def es256(key) -> Callable[[bytes], bytes]:
    return lambda data: ECAlgorithm(ECAlgorithm.SHA256).sign(data, key)  # raw r || s (JWS form)


def hs256(secret: bytes) -> Callable[[bytes], bytes]:
    return lambda data: hmac.new(secret, data, hashlib.sha256).digest()


def unsigned(_data: bytes) -> bytes:
    return b""


def claims(**over) -> dict:
    """A valid claims set; `name=...` (Ellipsis) removes a claim."""
    base = {"iss": ISS, "aud": AUD, "sub": "user-1", "tenant_id": "acme", "scope": "models:read",
            "iat": NOW - 10, "nbf": NOW - 10, "exp": NOW + 600, "jti": "j-1"}
    base.update(over)
    return {k: v for k, v in base.items() if v is not ...}


def _bytes(part: dict | str | bytes) -> bytes:
    if isinstance(part, dict):
        return json.dumps(part, separators=(",", ":")).encode()
    return part.encode() if isinstance(part, str) else part


def build(header: dict | str | bytes, payload: dict | str | bytes, signer: Callable[[bytes], bytes]) -> str:
    """A compact JWS from raw parts: header/payload as dicts (compact JSON), JSON text, or exact bytes."""
    signing_input = f"{b64(_bytes(header))}.{b64(_bytes(payload))}"
    return f"{signing_input}.{b64(signer(signing_input.encode('ascii')))}"


def rs(k: Keys, payload: dict | str | bytes | None = None, **header) -> str:
    """RS256 by our key, header {alg: RS256, kid: RSA_KID} plus `header` (`...` removes a member)."""
    hdr = {k_: v for k_, v in {"alg": "RS256", "kid": RSA_KID, **header}.items() if v is not ...}
    return build(hdr, claims() if payload is None else payload, rs256(k.rsa))


def es(k: Keys, payload: dict | None = None, **header) -> str:
    hdr = {k_: v for k_, v in {"alg": "ES256", "kid": EC_KID, **header}.items() if v is not ...}
    return build(hdr, claims() if payload is None else payload, es256(k.ec))


def parts(token: str) -> list[str]:
    return token.split(".")


# -- the table -----------------------------------------------------------------------------------------

ALLOW, DENY, UNAUTHORIZED = "allow", "deny", "401"


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[Keys], dict]          # -> the authorizer event
    outcome: str                          # ALLOW / DENY / UNAUTHORIZED
    expect: str | DenyReason | None       # the tenant (Allow) or the reason (Deny)
    verifier: dict = field(default_factory=dict)  # TokenVerifier overrides (max lifetime, leeway)


def event(authorization: str | None = None, *, header: str = "Authorization",
          multi: list[str] | None = None) -> dict:
    headers = {"Accept": "application/json"}
    if authorization is not None:
        headers[header] = authorization
    ev = {"type": "REQUEST", "methodArn": ARN, "httpMethod": "POST", "resource": "/v2/models/{name}/infer",
          "path": "/v2/models/clf/infer", "headers": headers,
          "multiValueHeaders": {k: [v] for k, v in headers.items()}}
    if multi is not None:
        ev["multiValueHeaders"][header] = multi
    return ev


CASES: list[Case] = []


def tok(case_id: str, make: Callable[[Keys], str], outcome: str, expect=None, **verifier) -> None:
    """A token case: `Authorization: Bearer <token>`."""
    CASES.append(Case(case_id, lambda k: event(f"Bearer {make(k)}"), outcome, expect, verifier))


def hdr(case_id: str, make: Callable[[Keys], str | None], outcome: str, expect=None) -> None:
    """A header case: the whole Authorization value (None: no header)."""
    CASES.append(Case(case_id, lambda k: event(make(k)), outcome, expect))


def allow(case_id, make, tenant="acme", **verifier):
    tok(case_id, make, ALLOW, tenant, **verifier)


def deny(case_id, make, reason: DenyReason, **verifier):
    tok(case_id, make, DENY, reason, **verifier)


R = DenyReason

# Baselines: what a good token looks like, so every other case differs from an Allow in one way only.
allow("baseline-rs256", lambda k: rs(k))
allow("baseline-es256", lambda k: es(k, claims(tenant_id="globex")), "globex")
allow("baseline-rotated-old-key", lambda k: build({"alg": "RS256", "kid": OLD_RSA_KID}, claims(),
                                                  rs256(k.rsa_old)))
allow("baseline-pyjwt-encode", lambda k: jwt.encode(claims(), k.rsa, algorithm="RS256",
                                                    headers={"kid": RSA_KID, "typ": "JWT"}))

# -- time: expired, not yet valid (leeway 60 s) --
deny("exp-past-beyond-leeway", lambda k: rs(k, claims(exp=NOW - LEEWAY - 1, iat=NOW - 600)), R.EXPIRED)
deny("exp-at-leeway-edge", lambda k: rs(k, claims(exp=NOW - LEEWAY, iat=NOW - 600)), R.EXPIRED)
allow("exp-within-leeway", lambda k: rs(k, claims(exp=NOW - LEEWAY + 1, iat=NOW - 600, nbf=...)))
deny("exp-long-ago", lambda k: rs(k, claims(exp=1, iat=0, nbf=...)), R.EXPIRED)
deny("exp-now-leeway-0", lambda k: rs(k, claims(exp=NOW)), R.EXPIRED, leeway_seconds=0)
deny("nbf-future-beyond-leeway", lambda k: rs(k, claims(nbf=NOW + LEEWAY + 1)), R.NOT_YET_VALID)
allow("nbf-future-within-leeway", lambda k: rs(k, claims(nbf=NOW + LEEWAY)))
deny("iat-future-beyond-leeway", lambda k: rs(k, claims(iat=NOW + LEEWAY + 1, nbf=...)), R.NOT_YET_VALID)
deny("exp-before-iat", lambda k: rs(k, claims(iat=NOW + 30, exp=NOW + 20, nbf=...)), R.INVALID_CLAIM)
deny("exp-equals-nbf", lambda k: rs(k, claims(nbf=NOW + 20, exp=NOW + 20)), R.INVALID_CLAIM)

# -- lifetime: exp - iat <= max (24 h default); without iat, exp - now <= max + leeway --
allow("lifetime-24h-exact", lambda k: rs(k, claims(iat=NOW, nbf=..., exp=NOW + DAY)))
deny("lifetime-24h-plus-1s", lambda k: rs(k, claims(iat=NOW, nbf=..., exp=NOW + DAY + 1)),
     R.LIFETIME_TOO_LONG)
deny("lifetime-backdated-iat", lambda k: rs(k, claims(iat=NOW - DAY + 200, nbf=..., exp=NOW + 201)),
     R.LIFETIME_TOO_LONG)
deny("lifetime-one-year", lambda k: rs(k, claims(iat=NOW, exp=NOW + 365 * DAY)), R.LIFETIME_TOO_LONG)
allow("lifetime-no-iat-within", lambda k: rs(k, claims(iat=..., nbf=..., exp=NOW + DAY + LEEWAY)))
deny("lifetime-no-iat-beyond", lambda k: rs(k, claims(iat=..., nbf=..., exp=NOW + DAY + LEEWAY + 1)),
     R.LIFETIME_TOO_LONG)
deny("lifetime-exp-1e308", lambda k: rs(k, claims(exp=1e308)), R.LIFETIME_TOO_LONG)
allow("lifetime-configured-1h-exact", lambda k: rs(k, claims(iat=NOW, nbf=..., exp=NOW + 3600)),
      max_lifetime_seconds=3600)
deny("lifetime-configured-1h-plus-1s", lambda k: rs(k, claims(iat=NOW, nbf=..., exp=NOW + 3601)),
     R.LIFETIME_TOO_LONG, max_lifetime_seconds=3600)

# -- numeric dates of the wrong type --
deny("exp-string", lambda k: rs(k, claims(exp=str(NOW + 600))), R.INVALID_CLAIM)
deny("exp-bool", lambda k: rs(k, claims(exp=True)), R.INVALID_CLAIM)
deny("exp-list", lambda k: rs(k, claims(exp=[NOW + 600])), R.INVALID_CLAIM)
deny("exp-object", lambda k: rs(k, claims(exp={"$date": NOW + 600})), R.INVALID_CLAIM)
deny("exp-null", lambda k: rs(k, claims(exp=None)), R.MISSING_CLAIM)
deny("exp-int-beyond-float", lambda k: rs(k, claims(exp=10 ** 400)), R.INVALID_CLAIM)
allow("exp-float", lambda k: rs(k, claims(exp=NOW + 600.5)))
deny("nbf-string", lambda k: rs(k, claims(nbf=str(NOW - 10))), R.INVALID_CLAIM)
deny("iat-string", lambda k: rs(k, claims(iat=str(NOW - 10))), R.INVALID_CLAIM)
deny("iat-null", lambda k: rs(k, claims(iat=None)), R.INVALID_CLAIM)

# -- issuer and audience --
deny("iss-other", lambda k: rs(k, claims(iss="https://evil.example.com/")), R.WRONG_ISSUER)
deny("iss-no-trailing-slash", lambda k: rs(k, claims(iss=ISS.rstrip("/"))), R.WRONG_ISSUER)
deny("iss-case", lambda k: rs(k, claims(iss=ISS.upper())), R.WRONG_ISSUER)
deny("iss-empty", lambda k: rs(k, claims(iss="")), R.WRONG_ISSUER)
deny("iss-list", lambda k: rs(k, claims(iss=[ISS])), R.WRONG_ISSUER)
deny("iss-number", lambda k: rs(k, claims(iss=42)), R.WRONG_ISSUER)
deny("aud-other", lambda k: rs(k, claims(aud="other-api")), R.WRONG_AUDIENCE)
deny("aud-list-without-ours", lambda k: rs(k, claims(aud=["other-api"])), R.WRONG_AUDIENCE)
allow("aud-list-with-ours", lambda k: rs(k, claims(aud=["other-api", AUD])))
deny("aud-prefix", lambda k: rs(k, claims(aud=AUD + "-admin")), R.WRONG_AUDIENCE)
deny("aud-number", lambda k: rs(k, claims(aud=42)), R.WRONG_AUDIENCE)
deny("aud-list-of-number", lambda k: rs(k, claims(aud=[42])), R.WRONG_AUDIENCE)
deny("aud-empty-string", lambda k: rs(k, claims(aud="")), R.MISSING_CLAIM)
deny("aud-empty-list", lambda k: rs(k, claims(aud=[])), R.MISSING_CLAIM)

# -- missing, empty, non-string claims --
for _name in ("exp", "iss", "aud", "sub"):
    deny(f"missing-{_name}", lambda k, n=_name: rs(k, claims(**{n: ...})), R.MISSING_CLAIM)
deny("missing-tenant", lambda k: rs(k, claims(tenant_id=...)), R.MISSING_TENANT)
deny("payload-empty-object", lambda k: rs(k, {}), R.MISSING_CLAIM)
allow("missing-nbf", lambda k: rs(k, claims(nbf=...)))
allow("missing-iat", lambda k: rs(k, claims(iat=...)))
allow("missing-scope", lambda k: rs(k, claims(scope=...)))
allow("empty-scope", lambda k: rs(k, claims(scope="")))
deny("sub-empty", lambda k: rs(k, claims(sub="")), R.INVALID_CLAIM)
deny("sub-blank", lambda k: rs(k, claims(sub="   ")), R.INVALID_CLAIM)
deny("sub-null", lambda k: rs(k, claims(sub=None)), R.MISSING_CLAIM)
deny("sub-number", lambda k: rs(k, claims(sub=42)), R.INVALID_CLAIM)
deny("sub-list", lambda k: rs(k, claims(sub=["user-1"])), R.INVALID_CLAIM)
deny("sub-too-long", lambda k: rs(k, claims(sub="u" * 257)), R.INVALID_CLAIM)
deny("tenant-empty", lambda k: rs(k, claims(tenant_id="")), R.INVALID_TENANT)
deny("tenant-null", lambda k: rs(k, claims(tenant_id=None)), R.INVALID_TENANT)
deny("tenant-number", lambda k: rs(k, claims(tenant_id=42)), R.INVALID_TENANT)
deny("tenant-list", lambda k: rs(k, claims(tenant_id=["acme"])), R.INVALID_TENANT)
deny("tenant-object", lambda k: rs(k, claims(tenant_id={"id": "acme"})), R.INVALID_TENANT)
deny("tenant-uppercase", lambda k: rs(k, claims(tenant_id="ACME")), R.INVALID_TENANT)
deny("tenant-path-traversal", lambda k: rs(k, claims(tenant_id="acme/../globex")), R.INVALID_TENANT)
deny("tenant-leading-space", lambda k: rs(k, claims(tenant_id=" acme")), R.INVALID_TENANT)
deny("tenant-trailing-newline", lambda k: rs(k, claims(tenant_id="acme\n")), R.INVALID_TENANT)
deny("tenant-nul", lambda k: rs(k, claims(tenant_id="acme\u0000")), R.INVALID_TENANT)
deny("tenant-shared", lambda k: rs(k, claims(tenant_id="_shared")), R.SHARED_TENANT)
deny("scope-number", lambda k: rs(k, claims(scope=42)), R.INVALID_CLAIM)
deny("scp-list-with-number", lambda k: rs(k, claims(scp=["models:read", 42])), R.INVALID_CLAIM)
deny("jti-number", lambda k: rs(k, claims(jti=42)), R.INVALID_CLAIM)


# -- duplicated JSON members: a parser differential (first-wins vs last-wins), so refused outright --
def _dup_payload(k: Keys, extra: str) -> str:
    return rs(k, json.dumps(claims())[:-1] + ", " + extra + "}")


deny("dup-claim-tenant", lambda k: _dup_payload(k, '"tenant_id": "globex"'), R.MALFORMED_TOKEN)
deny("dup-claim-same-value", lambda k: _dup_payload(k, '"tenant_id": "acme"'), R.MALFORMED_TOKEN)
deny("dup-claim-escaped-name", lambda k: _dup_payload(k, '"tenant\\u005fid": "globex"'), R.MALFORMED_TOKEN)
deny("dup-claim-exp", lambda k: _dup_payload(k, f'"exp": {NOW + 10 * DAY}'), R.MALFORMED_TOKEN)
deny("dup-claim-nested", lambda k: _dup_payload(k, '"ext": {"a": 1, "a": 2}'), R.MALFORMED_TOKEN)
deny("dup-header-alg", lambda k: build(f'{{"alg":"none","alg":"RS256","kid":"{RSA_KID}"}}', claims(),
                                       rs256(k.rsa)), R.MALFORMED_TOKEN)
deny("dup-header-kid", lambda k: build(f'{{"alg":"RS256","kid":"{OLD_RSA_KID}","kid":"{RSA_KID}"}}',
                                       claims(), rs256(k.rsa)), R.MALFORMED_TOKEN)

# -- alg: only RS256 / ES256, case-sensitive; `none` in any casing, with or without a signature --
for _alg in ("none", "None", "NONE", "nOnE", "none "):
    deny(f"alg-{_alg.strip()}{'-space' if _alg.endswith(' ') else ''}-unsigned",
         lambda k, a=_alg: build({"alg": a, "kid": RSA_KID}, claims(), unsigned), R.ALG_NOT_ALLOWED)
deny("alg-none-no-kid-unsigned", lambda k: build({"alg": "none"}, claims(), unsigned), R.ALG_NOT_ALLOWED)
deny("alg-none-with-rs256-signature", lambda k: build({"alg": "none", "kid": RSA_KID}, claims(),
                                                      rs256(k.rsa)), R.ALG_NOT_ALLOWED)
deny("alg-missing", lambda k: rs(k, alg=...), R.ALG_NOT_ALLOWED)
deny("alg-null", lambda k: rs(k, alg=None), R.ALG_NOT_ALLOWED)
deny("alg-list", lambda k: rs(k, alg=["RS256"]), R.ALG_NOT_ALLOWED)
deny("alg-lowercase-rs256", lambda k: rs(k, alg="rs256"), R.ALG_NOT_ALLOWED)
deny("alg-ps256-valid-pss-signature", lambda k: build(
    {"alg": "PS256", "kid": RSA_KID}, claims(),
    lambda d: RSAPSSAlgorithm(RSAPSSAlgorithm.SHA256).sign(d, k.rsa)), R.ALG_NOT_ALLOWED)
deny("alg-rs512-valid-signature", lambda k: build(
    {"alg": "RS512", "kid": RSA_KID}, claims(),
    lambda d: RSAAlgorithm(RSAAlgorithm.SHA512).sign(d, k.rsa)), R.ALG_NOT_ALLOWED)
for _alg in ("ES384", "ES512", "ES256K", "EdDSA", "HS384", "HS512", "RSA-OAEP"):
    deny(f"alg-{_alg}", lambda k, a=_alg: build({"alg": a, "kid": RSA_KID}, claims(), lambda d: b"\x01" * 64),
         R.ALG_NOT_ALLOWED)
# The key decides the algorithm: a token naming the other family for a kid is refused before verifying.
deny("alg-es256-with-rsa-kid", lambda k: build({"alg": "ES256", "kid": RSA_KID}, claims(), es256(k.ec)),
     R.ALG_KEY_MISMATCH)
deny("alg-rs256-with-ec-kid", lambda k: build({"alg": "RS256", "kid": EC_KID}, claims(), rs256(k.rsa)),
     R.ALG_KEY_MISMATCH)


# -- key confusion: HS256 with the RSA (or EC) public key as the HMAC secret, every encoding of it --
def _pub_bytes(key, encoding, fmt) -> bytes:
    return key.public_key().public_bytes(encoding, fmt)


_PEM, _DER = serialization.Encoding.PEM, serialization.Encoding.DER
_SPKI, _PKCS1 = serialization.PublicFormat.SubjectPublicKeyInfo, serialization.PublicFormat.PKCS1
_CONFUSION = {
    "pem-spki": lambda k: _pub_bytes(k.rsa, _PEM, _SPKI),
    "pem-spki-no-newline": lambda k: _pub_bytes(k.rsa, _PEM, _SPKI).rstrip(b"\n"),
    "pem-pkcs1": lambda k: _pub_bytes(k.rsa, _PEM, _PKCS1),
    "der-spki": lambda k: _pub_bytes(k.rsa, _DER, _SPKI),
    "der-pkcs1": lambda k: _pub_bytes(k.rsa, _DER, _PKCS1),
    "jwk-json": lambda k: json.dumps(k.jwks()["keys"][0]).encode(),
    "ec-pem-spki": lambda k: _pub_bytes(k.ec, _PEM, _SPKI),
}
for _form, _secret in _CONFUSION.items():
    _kid = EC_KID if _form.startswith("ec-") else RSA_KID
    deny(f"hs256-key-confusion-{_form}", lambda k, s=_secret, kid=_kid: build(
        {"alg": "HS256", "kid": kid}, claims(), hs256(s(k))), R.ALG_NOT_ALLOWED)
deny("hs256-key-confusion-no-kid", lambda k: build({"alg": "HS256"}, claims(),
                                                   hs256(_CONFUSION["pem-spki"](k))), R.ALG_NOT_ALLOWED)
deny("hs256-with-oct-kid-from-jwks", lambda k: build(
    {"alg": "HS256", "kid": OCT_KID}, claims(), hs256(b"shared-secret-0123456789abcdef")), R.ALG_NOT_ALLOWED)
deny("rs256-header-hmac-pem-signature", lambda k: build(
    {"alg": "RS256", "kid": RSA_KID}, claims(), hs256(_CONFUSION["pem-spki"](k))), R.BAD_SIGNATURE)
deny("rs256-with-oct-kid", lambda k: rs(k, kid=OCT_KID), R.UNKNOWN_KID)


# -- tampered header or payload, signatures from elsewhere --
def _swap(token: str, *, header: dict | None = None, payload: dict | None = None) -> str:
    h, p, s = parts(token)
    return ".".join([b64(_bytes(header)) if header else h, b64(_bytes(payload)) if payload else p, s])


deny("tampered-payload-tenant", lambda k: _swap(rs(k), payload=claims(tenant_id="globex")), R.BAD_SIGNATURE)
deny("tampered-payload-scope", lambda k: _swap(rs(k), payload=claims(scope="models:read models:admin")),
     R.BAD_SIGNATURE)
deny("tampered-payload-exp", lambda k: _swap(rs(k, claims(exp=NOW - 3600, iat=NOW - 7200, nbf=...)),
                                             payload=claims()), R.BAD_SIGNATURE)
deny("tampered-header-typ", lambda k: _swap(rs(k), header={"alg": "RS256", "kid": RSA_KID, "typ": "JWT"}),
     R.BAD_SIGNATURE)
deny("tampered-header-kid-to-other-rsa-key",
     lambda k: _swap(rs(k), header={"alg": "RS256", "kid": OLD_RSA_KID}), R.BAD_SIGNATURE)
deny("tampered-header-to-es256", lambda k: _swap(rs(k), header={"alg": "ES256", "kid": EC_KID}),
     R.BAD_SIGNATURE)
deny("signature-by-attacker-rsa-our-kid", lambda k: build({"alg": "RS256", "kid": RSA_KID}, claims(),
                                                          rs256(k.evil_rsa)), R.BAD_SIGNATURE)
deny("signature-by-attacker-ec-our-kid", lambda k: build({"alg": "ES256", "kid": EC_KID}, claims(),
                                                         es256(k.evil_ec)), R.BAD_SIGNATURE)
deny("signature-spliced-from-other-token", lambda k: ".".join(
    parts(rs(k))[:2] + parts(rs(k, claims(jti="other")))[2:]), R.BAD_SIGNATURE)
deny("signature-bit-flipped", lambda k: ".".join(
    parts(rs(k))[:2] + [b64(bytes([unb64(parts(rs(k))[2])[0] ^ 1]) + unb64(parts(rs(k))[2])[1:])]),
    R.BAD_SIGNATURE)

# -- stripped or truncated signatures --
deny("signature-stripped", lambda k: ".".join(parts(rs(k))[:2]) + ".", R.BAD_SIGNATURE)
deny("signature-segment-missing", lambda k: ".".join(parts(rs(k))[:2]), R.MALFORMED_TOKEN)
deny("signature-truncated-1-char", lambda k: rs(k)[:-1], R.MALFORMED_TOKEN)  # 341 chars: no byte string
deny("signature-truncated-2-chars", lambda k: rs(k)[:-2], R.BAD_SIGNATURE)   # 255 bytes
deny("signature-truncated-half", lambda k: rs(k)[:-170], R.BAD_SIGNATURE)    # 129 bytes
deny("signature-leading-zero-byte", lambda k: ".".join(
    parts(rs(k))[:2] + [b64(b"\x00" + unb64(parts(rs(k))[2]))]), R.BAD_SIGNATURE)
deny("signature-all-zero", lambda k: ".".join(parts(rs(k))[:2] + [b64(bytes(256))]), R.BAD_SIGNATURE)
deny("es256-signature-truncated-to-r", lambda k: ".".join(
    parts(es(k))[:2] + [b64(unb64(parts(es(k))[2])[:32])]), R.BAD_SIGNATURE)
deny("es256-signature-zero", lambda k: ".".join(parts(es(k))[:2] + [b64(bytes(64))]), R.BAD_SIGNATURE)


def _es_der(k: Keys) -> str:
    """ES256 with an ASN.1 DER signature (what OpenSSL emits) instead of JWS's raw r || s."""
    h, p, _ = parts(es(k))
    sig = k.ec.sign(f"{h}.{p}".encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(sig)
    assert encode_dss_signature(r, s) == sig
    return f"{h}.{p}.{b64(sig)}"


deny("es256-signature-der-encoded", _es_der, R.BAD_SIGNATURE)

# -- kid: unknown, injected, wrong type, oversized --
deny("kid-unknown", lambda k: build({"alg": "RS256", "kid": "rotated-away"}, claims(), rs256(k.evil_rsa)),
     R.UNKNOWN_KID)
for _name, _kid in {"path-traversal": "../../../../dev/null", "sql": "x' UNION SELECT 'secret' --",
                    "url": "https://evil.example.com/jwks.json#k", "trailing-space": RSA_KID + " ",
                    "case-changed": RSA_KID.upper(), "nul": RSA_KID + "\u0000",
                    "max-length": "k" * MAX_KID_CHARS}.items():
    deny(f"kid-injected-{_name}", lambda k, kid=_kid: rs(k, kid=kid), R.UNKNOWN_KID)
deny("kid-too-long", lambda k: rs(k, kid="k" * (MAX_KID_CHARS + 1)), R.MALFORMED_TOKEN)
deny("kid-missing", lambda k: rs(k, kid=...), R.MISSING_KID)
deny("kid-empty", lambda k: rs(k, kid=""), R.MISSING_KID)
deny("kid-null", lambda k: rs(k, kid=None), R.MISSING_KID)
deny("kid-number", lambda k: rs(k, kid=7), R.MALFORMED_TOKEN)
deny("kid-list", lambda k: rs(k, kid=[RSA_KID]), R.MALFORMED_TOKEN)


# -- key-bearing / extension headers: keys come only from our JWKS; no extension is understood --
def _evil_jwk(k: Keys) -> dict:
    return RSAAlgorithm.to_jwk(k.evil_rsa.public_key(), as_dict=True)


deny("jku-attacker-jwks", lambda k: build({"alg": "RS256", "kid": "evil", "jku": "https://evil.example.com/j"},
                                          claims(), rs256(k.evil_rsa)), R.FORBIDDEN_HEADER)
deny("jku-on-genuine-token", lambda k: rs(k, jku="https://issuer.example.com/jwks.json"), R.FORBIDDEN_HEADER)
deny("x5u-attacker-cert", lambda k: build({"alg": "RS256", "kid": "evil", "x5u": "https://evil.example.com/c"},
                                          claims(), rs256(k.evil_rsa)), R.FORBIDDEN_HEADER)
deny("jwk-embedded-attacker-key", lambda k: build({"alg": "RS256", "jwk": _evil_jwk(k)}, claims(),
                                                  rs256(k.evil_rsa)), R.FORBIDDEN_HEADER)
deny("jwk-embedded-with-our-kid", lambda k: build({"alg": "RS256", "kid": RSA_KID, "jwk": _evil_jwk(k)},
                                                  claims(), rs256(k.evil_rsa)), R.FORBIDDEN_HEADER)
deny("x5c-embedded-chain", lambda k: rs(k, x5c=[b64(b"not-really-a-cert")]), R.FORBIDDEN_HEADER)
deny("crit-unknown-extension", lambda k: rs(k, crit=["exp"], exp=NOW), R.FORBIDDEN_HEADER)
deny("crit-empty-list", lambda k: rs(k, crit=[]), R.FORBIDDEN_HEADER)
deny("crit-b64-false", lambda k: rs(k, crit=["b64"], b64=False), R.FORBIDDEN_HEADER)
deny("b64-true-without-crit", lambda k: rs(k, b64=True), R.FORBIDDEN_HEADER)
allow("typ-at-jwt", lambda k: rs(k, typ="at+jwt"))
allow("x5t-thumbprint-ignored", lambda k: rs(k, x5t=b64(b"t" * 20)))
allow("cty-ignored", lambda k: rs(k, cty="JWT"))
allow("unknown-header-member-ignored", lambda k: rs(k, foo="bar"))


# -- encodings: one canonical spelling per token --
def _pad(segment: str) -> str:
    assert len(segment) % 4, "already a multiple of 4: nothing to pad"
    return segment + "=" * (-len(segment) % 4)


def _std_alphabet_signature(k: Keys) -> str:
    for i in range(64):  # an RS256 signature (342 chars) practically always holds a '-' or '_'
        h, p, s = parts(rs(k, claims(jti=f"std-{i}")))
        if "-" in s or "_" in s:
            return f"{h}.{p}.{s.replace('-', '+').replace('_', '/')}"
    raise AssertionError("no signature with '-' or '_'")


def _std_alphabet_payload(k: Keys) -> str:
    """A payload spelled in the standard alphabet, genuinely signed in that spelling by our key."""
    for i in range(8):
        std = base64.b64encode(_bytes(claims(ext="?" * i + "~~~???"))).rstrip(b"=").decode()
        if "+" in std or "/" in std:
            return _signed_segments(k, b64(_bytes({"alg": "RS256", "kid": RSA_KID})), std)
    raise AssertionError("no payload with '+' or '/'")


def _signed_segments(k: Keys, header_seg: str, payload_seg: str) -> str:
    signing_input = f"{header_seg}.{payload_seg}"
    return f"{signing_input}.{b64(rs256(k.rsa)(signing_input.encode()))}"


def _stray_bits(segment: str) -> str:
    """The same bytes with the unused low bits of the last character set (a second spelling)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    assert len(segment) % 4 in (2, 3)
    changed = segment[:-1] + alphabet[alphabet.index(segment[-1]) ^ 1]
    assert changed != segment and unb64(changed) == unb64(segment)
    return changed


def _payload_with_spare_bits() -> dict:
    return next(c for i in range(8) if len(b64(_bytes(c := claims(jti="j" * (i + 1))))) % 4 in (2, 3))


def _header_needing_padding() -> dict:
    return next(h for i in range(8)
                if len(b64(_bytes(h := {"alg": "RS256", "kid": RSA_KID, "x": "x" * i}))) % 4)


deny("signature-padded", lambda k: ".".join(parts(rs(k))[:2] + [_pad(parts(rs(k))[2])]), R.MALFORMED_TOKEN)
deny("header-padded-genuinely-signed", lambda k: _signed_segments(
    k, _pad(b64(_bytes(_header_needing_padding()))), b64(_bytes(claims()))), R.MALFORMED_TOKEN)
deny("payload-padded-genuinely-signed", lambda k: _signed_segments(
    k, b64(_bytes({"alg": "RS256", "kid": RSA_KID})), _pad(b64(_bytes(_payload_with_spare_bits())))),
    R.MALFORMED_TOKEN)
deny("signature-standard-alphabet", _std_alphabet_signature, R.MALFORMED_TOKEN)
deny("payload-standard-alphabet-genuinely-signed", _std_alphabet_payload, R.MALFORMED_TOKEN)
deny("signature-stray-trailing-bits", lambda k: ".".join(parts(rs(k))[:2] + [_stray_bits(parts(rs(k))[2])]),
     R.MALFORMED_TOKEN)
deny("payload-stray-trailing-bits-genuinely-signed", lambda k: _signed_segments(
    k, b64(_bytes({"alg": "RS256", "kid": RSA_KID})), _stray_bits(b64(_bytes(_payload_with_spare_bits())))),
    R.MALFORMED_TOKEN)
deny("header-utf16-genuinely-signed", lambda k: build(
    json.dumps({"alg": "RS256", "kid": RSA_KID}).encode("utf-16"), claims(), rs256(k.rsa)), R.MALFORMED_TOKEN)
deny("payload-utf16le-genuinely-signed", lambda k: build(
    {"alg": "RS256", "kid": RSA_KID}, json.dumps(claims()).encode("utf-16-le"), rs256(k.rsa)),
    R.MALFORMED_TOKEN)
deny("payload-utf8-bom", lambda k: rs(k, b"\xef\xbb\xbf" + _bytes(claims())), R.MALFORMED_TOKEN)
deny("payload-latin1-bytes", lambda k: rs(k, _bytes(claims()).replace(b"user-1", b"us\xe9r-1")),
     R.MALFORMED_TOKEN)
deny("payload-nan-exp", lambda k: rs(k, json.dumps(claims(exp=float("nan")))), R.MALFORMED_TOKEN)
deny("payload-infinity-exp", lambda k: rs(k, json.dumps(claims(exp=float("inf")))), R.MALFORMED_TOKEN)
deny("payload-deeply-nested", lambda k: rs(k, json.dumps(claims())[:-1] + ',"x":' + "[" * 2500 + "]" * 2500
                                           + "}"), R.MALFORMED_TOKEN)
deny("payload-json-array", lambda k: rs(k, "[1,2]"), R.MALFORMED_TOKEN)
deny("payload-json-null", lambda k: rs(k, "null"), R.MALFORMED_TOKEN)
deny("payload-json-string", lambda k: rs(k, json.dumps(json.dumps(claims()))), R.MALFORMED_TOKEN)
deny("payload-not-json", lambda k: rs(k, b"tenant_id=acme"), R.MALFORMED_TOKEN)
deny("payload-trailing-garbage", lambda k: rs(k, json.dumps(claims()) + "x"), R.MALFORMED_TOKEN)
deny("header-json-array", lambda k: build(f'["RS256","{RSA_KID}"]', claims(), rs256(k.rsa)),
     R.MALFORMED_TOKEN)
deny("header-empty-segment", lambda k: "." + ".".join(parts(rs(k))[1:]), R.MALFORMED_TOKEN)
deny("payload-empty-segment", lambda k: parts(rs(k))[0] + ".." + parts(rs(k))[2], R.MALFORMED_TOKEN)
deny("four-segments", lambda k: rs(k) + ".e30", R.MALFORMED_TOKEN)
deny("jwe-five-segments", lambda k: "eyJhbGciOiJSU0EtT0FFUCIsImVuYyI6IkEyNTZHQ00ifQ.a.b.c.d",
     R.MALFORMED_TOKEN)
deny("non-ascii-in-token", lambda k: rs(k)[:-3] + "é" + rs(k)[-2:], R.MALFORMED_TOKEN)
deny("percent-encoded-dot", lambda k: rs(k).replace(".", "%2E", 1), R.MALFORMED_TOKEN)
deny("quoted-token", lambda k: f'"{rs(k)}"', R.MALFORMED_TOKEN)


# -- size: at most MAX_TOKEN_CHARS (8192) characters --
def _sized(k: Keys, length: int) -> str:
    """A genuine token of exactly `length` characters (a filler claim; header variants for the 4n+1 gap)."""
    for header in ({}, {"typ": "JWT"}, {"typ": "JWT", "x": ""}, {"typ": "JWT", "x": "xx"}):
        start = (length - len(rs(k, claims(pad=""), **header))) * 3 // 4 - 3
        for n in range(max(0, start), start + 8):
            t = rs(k, claims(pad="x" * n), **header)
            if len(t) == length:
                return t
    raise AssertionError(f"no token of {length} characters")


allow("size-exactly-max", lambda k: _sized(k, MAX_TOKEN_CHARS))
deny("size-max-plus-1", lambda k: _sized(k, MAX_TOKEN_CHARS + 1), R.MALFORMED_TOKEN)
deny("size-1-mib", lambda k: rs(k, claims(pad="x" * (1 << 20))), R.MALFORMED_TOKEN)

# -- the Authorization header: `Bearer` in any ASCII casing, 1+ SP/HTAB, one token; SP/HTAB trimmed --
for _name, _fmt in {"canonical": "Bearer {t}", "lowercase": "bearer {t}", "uppercase": "BEARER {t}",
                    "mixed-case": "bEaReR {t}", "two-spaces": "Bearer  {t}", "tab": "Bearer\t{t}",
                    "space-tab": "Bearer \t {t}", "leading-space": " Bearer {t}",
                    "trailing-space": "Bearer {t} ", "trailing-tab": "Bearer {t}\t",
                    "ows-both-sides": "\t Bearer   {t} \t"}.items():
    CASES.append(Case(f"bearer-{_name}", lambda k, f=_fmt: event(f.format(t=rs(k))), ALLOW, "acme"))
CASES.append(Case("bearer-header-name-lowercase", lambda k: event(f"Bearer {rs(k)}", header="authorization"),
                  ALLOW, "acme"))
CASES.append(Case("bearer-header-name-uppercase", lambda k: event(f"Bearer {rs(k)}", header="AUTHORIZATION"),
                  ALLOW, "acme"))
for _name, _fmt in {"two-tokens": "Bearer {t} {t}", "scheme-twice": "Bearer Bearer {t}",
                    "comma-second-credential": "Bearer {t}, Basic dXNlcjpwYXNz",
                    "trailing-crlf": "Bearer {t}\r\n", "trailing-lf": "Bearer {t}\n",
                    "trailing-nbsp": "Bearer {t}\u00a0", "semicolon": "Bearer {t};",
                    "space-inside-token": "Bearer {h} {r}"}.items():
    CASES.append(Case(f"bearer-{_name}", lambda k, f=_fmt: event(f.format(
        t=rs(k), h=rs(k)[:40], r=rs(k)[40:])), DENY, R.MALFORMED_TOKEN))
for _name, _value in {"absent": None, "empty": "", "blank": "  \t ", "scheme-only": "Bearer",
                      "scheme-and-space": "Bearer ", "scheme-and-tab": "Bearer\t"}.items():
    hdr(f"unauthorized-{_name}", lambda k, v=_value: v, UNAUTHORIZED)
for _name, _fmt in {"no-scheme": "{t}", "basic": "Basic {t}", "token-scheme": "Token {t}",
                    "jwt-scheme": "JWT {t}", "no-separator": "Bearer{t}", "colon": "Bearer:{t}",
                    "equals": "Bearer={t}", "comma": "Bearer,{t}", "newline-separator": "Bearer\n{t}",
                    "crlf-separator": "Bearer\r\n{t}",
                    "nbsp-separator": "Bearer\u00a0{t}", "leading-nbsp": "\u00a0Bearer {t}",
                    "leading-newline": "\nBearer {t}", "bearerx": "Bearerx {t}",
                    "homoglyph-small-capital-r": "Beare\u0280 {t}", "fullwidth": "\uff22earer {t}"}.items():
    hdr(f"unauthorized-{_name}", lambda k, f=_fmt: f.format(t=rs(k)), UNAUTHORIZED)
CASES.append(Case("bearer-two-authorization-headers", lambda k: {
    **event(f"Bearer {rs(k)}"), "headers": {"Authorization": f"Bearer {rs(k)}", "authorization": "Bearer x"}},
    DENY, R.MALFORMED_TOKEN))
CASES.append(Case("bearer-multi-value-authorization", lambda k: event(
    f"Bearer {rs(k)}", multi=[f"Bearer {rs(k)}", f"Bearer {rs(k, claims(tenant_id='globex'))}"]),
    DENY, R.MALFORMED_TOKEN))


# -- running the table ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keys() -> Keys:
    def r():
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return Keys(rsa=r(), rsa_old=r(), ec=ec.generate_private_key(ec.SECP256R1()), evil_rsa=r(),
                evil_ec=ec.generate_private_key(ec.SECP256R1()))


def make_verifier(keys: Keys, **overrides) -> TokenVerifier:
    cache = JwksCache(StaticJwksSource(json.dumps(keys.jwks())), clock=lambda: 0.0)
    options = {"leeway_seconds": LEEWAY, **overrides}
    return TokenVerifier(cache, issuer=ISS, audience=AUD, clock=lambda: float(NOW), **options)


@pytest.fixture(scope="module")
def verifier(keys) -> TokenVerifier:
    return make_verifier(keys)


class Reasons(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.denied: list[str] = []
        self.allowed = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "authorizer deny":
            self.denied.append(record.reason)  # type: ignore[attr-defined]
        elif record.getMessage() == "authorizer allow":
            self.allowed += 1


@pytest.fixture
def reasons():
    log = logging.getLogger("tenantml.auth.policy")
    handler, old_level = Reasons(), log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    yield handler
    log.removeHandler(handler)
    log.setLevel(old_level)


def test_case_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_attack(case: Case, keys, verifier, reasons):
    v = make_verifier(keys, **case.verifier) if case.verifier else verifier
    ev = case.make(keys)
    if case.outcome == UNAUTHORIZED:
        with pytest.raises(MissingToken) as info:
            authorize(ev, v, now=NOW)
        assert str(info.value) == "Unauthorized"  # the Lambda error message API Gateway maps to 401
        assert reasons.denied == [] and reasons.allowed == 0
        return
    resp = authorize(ev, v, now=NOW)
    if case.outcome == ALLOW:
        assert resp["policyDocument"]["Statement"][0]["Effect"] == "Allow", reasons.denied
        assert resp["context"]["tenant_id"] == case.expect
        assert reasons.denied == []
    else:
        assert resp == deny_policy()
        assert reasons.denied == [case.expect.value]


def test_every_deny_reason_has_an_attack():
    exercised = {c.expect for c in CASES if c.outcome == DENY}
    assert set(DenyReason) - exercised == {DenyReason.BAD_METHOD_ARN}  # a gateway fault, not a token


def test_rejection_happens_before_any_key_fetch(keys):
    """Syntactic refusals (steps 1-3) never reach the JWKS: a junk flood costs no fetch at all."""
    class Counting:
        calls = 0

        def fetch(self):
            Counting.calls += 1
            return keys.jwks()

    v = TokenVerifier(JwksCache(Counting(), clock=lambda: 0.0), issuer=ISS, audience=AUD,
                      clock=lambda: float(NOW))
    early = {R.MALFORMED_TOKEN, R.ALG_NOT_ALLOWED, R.FORBIDDEN_HEADER, R.MISSING_KID}
    for case in CASES:
        if case.outcome == DENY and case.expect in early and not case.verifier:
            authorize(case.make(keys), v, now=NOW)
    assert Counting.calls == 0


def test_max_lifetime_is_a_setting(keys):
    from tenantml.settings import AuthSettings

    jwks = json.dumps(keys.jwks())
    assert AuthSettings(jwks_json=jwks, issuer=ISS, audience=AUD).max_token_lifetime_seconds == DAY
    two_hours = TokenVerifier.from_settings(AuthSettings(jwks_json=jwks, issuer=ISS, audience=AUD,
                                                         max_token_lifetime_seconds=7200))
    assert two_hours.max_lifetime == 7200
    ok, long = (rs(keys, claims(iat=NOW, nbf=..., exp=NOW + s)) for s in (7200, 7201))
    assert two_hours.verify(ok, now=NOW).tenant_id == "acme"
    with pytest.raises(InvalidToken) as info:
        two_hours.verify(long, now=NOW)
    assert info.value.reason is DenyReason.LIFETIME_TOO_LONG
    for bad in (0, 59, 31 * DAY + 1):
        with pytest.raises(ValueError):
            AuthSettings(jwks_json=jwks, issuer=ISS, audience=AUD, max_token_lifetime_seconds=bad)


def test_dev_tokens_never_outlive_the_default_maximum(tmp_path):
    from tenantml.auth.devkeys import ensure_dev_keys

    dev = ensure_dev_keys(tmp_path / "keys")
    assert dev.mint("acme", ttl=DAY)
    with pytest.raises(ValueError, match="maximum token lifetime"):
        dev.mint("acme", ttl=DAY + 1)
