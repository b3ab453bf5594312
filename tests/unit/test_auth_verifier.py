"""TokenVerifier: every accept and deny path, with real RS256 / ES256 keys generated here."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tenantml.auth import Claims, DenyReason, InvalidToken, JwksUnavailable
from tenantml.auth.jwks import JwksCache, JwksError, StaticJwksSource
from tenantml.auth.verifier import TokenVerifier
from tenantml.settings import AuthSettings

ISS = "https://issuer.example.com/"
AUD = "tenantml-api"
NOW = 1_800_000_000.0
RSA_KID = "rsa-1"
EC_KID = "ec-1"


def _jwk(public_key, kid: str, alg: str | None) -> dict:
    cls = RSAAlgorithm if isinstance(public_key, rsa.RSAPublicKey) else ECAlgorithm
    jwk = cls.to_jwk(public_key, as_dict=True)
    jwk["kid"] = kid
    if alg:
        jwk["alg"] = alg
    jwk["use"] = "sig"
    return jwk


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key():
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def jwks(rsa_key, ec_key) -> dict:
    return {"keys": [_jwk(rsa_key.public_key(), RSA_KID, "RS256"), _jwk(ec_key.public_key(), EC_KID, None)]}


def make_verifier(jwks: dict, *, leeway: int = 60, tenant_claim: str = "tenant_id") -> TokenVerifier:
    cache = JwksCache(StaticJwksSource(json.dumps(jwks)), clock=lambda: 0.0)
    return TokenVerifier(cache, issuer=ISS, audience=AUD, tenant_claim=tenant_claim, leeway_seconds=leeway,
                         clock=lambda: NOW)


@pytest.fixture
def verifier(jwks) -> TokenVerifier:
    return make_verifier(jwks)


def claims(**over) -> dict:
    base = {"iss": ISS, "aud": AUD, "sub": "user-1", "tenant_id": "acme", "scope": "models:read",
            "iat": int(NOW) - 10, "nbf": int(NOW) - 10, "exp": int(NOW) + 600}
    base.update(over)
    return {k: v for k, v in base.items() if v is not ...}


def sign(key, payload: dict, *, alg: str = "RS256", kid: str | None = RSA_KID, headers: dict | None = None):
    hdrs = {} if kid is None else {"kid": kid}
    hdrs.update(headers or {})
    return jwt.encode(payload, key, algorithm=alg, headers=hdrs)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: dict, payload: dict, signature: bytes = b"") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}.{b64(signature)}"


def reason_of(verifier: TokenVerifier, token) -> DenyReason:
    with pytest.raises(InvalidToken) as info:
        verifier.verify(token, now=NOW)
    assert info.value.status == 401
    return info.value.reason


# -- accept -------------------------------------------------------------------------------------------

def test_accepts_rs256(verifier, rsa_key):
    got = verifier.verify(sign(rsa_key, claims()), now=NOW)
    assert isinstance(got, Claims)
    assert (got.tenant_id, got.sub, got.scopes) == ("acme", "user-1", frozenset({"models:read"}))
    assert got.raw["iss"] == ISS


def test_accepts_es256(verifier, ec_key):
    got = verifier.verify(sign(ec_key, claims(tenant_id="globex"), alg="ES256", kid=EC_KID), now=NOW)
    assert got.tenant_id == "globex"


def test_injected_clock_is_used_when_now_is_omitted(jwks, rsa_key):
    v = make_verifier(jwks)  # clock=lambda: NOW
    assert v.verify(sign(rsa_key, claims())).sub == "user-1"
    late = TokenVerifier(v._keys, issuer=ISS, audience=AUD, clock=lambda: NOW + 3600)
    with pytest.raises(InvalidToken) as info:
        late.verify(sign(rsa_key, claims()))
    assert info.value.reason is DenyReason.EXPIRED


@pytest.mark.parametrize(("extra", "expected"), [
    ({"scope": "models:read models:write"}, {"models:read", "models:write"}),
    ({"scope": "  models:read   "}, {"models:read"}),
    ({"scope": ..., "scp": ["models:read", "models:write"]}, {"models:read", "models:write"}),
    ({"scope": ..., "scp": "models:write"}, {"models:write"}),
    ({"scope": "a", "scp": ["b"]}, {"a", "b"}),
    ({"scope": ...}, set()),
    ({"scope": ""}, set()),
])
def test_scopes(verifier, rsa_key, extra, expected):
    assert verifier.verify(sign(rsa_key, claims(**extra)), now=NOW).scopes == frozenset(expected)


@pytest.mark.parametrize("bad", [["ok", 3], ["two words"], [""], 42, {"a": 1}])
def test_malformed_scopes_are_refused(verifier, rsa_key, bad):
    assert reason_of(verifier, sign(rsa_key, claims(scp=bad))) is DenyReason.INVALID_CLAIM


def test_audience_list_containing_ours_is_accepted(verifier, rsa_key):
    assert verifier.verify(sign(rsa_key, claims(aud=["other", AUD])), now=NOW).tenant_id == "acme"


def test_custom_tenant_claim(jwks, rsa_key):
    v = make_verifier(jwks, tenant_claim="https://tenantml.io/tenant")
    token = sign(rsa_key, claims(tenant_id=..., **{"https://tenantml.io/tenant": "initech"}))
    assert v.verify(token, now=NOW).tenant_id == "initech"
    assert reason_of(v, sign(rsa_key, claims())) is DenyReason.MISSING_TENANT


# -- time ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("leeway", "exp_offset", "ok"), [
    (60, -59, True), (60, -60, False), (60, -61, False),
    (0, 1, True), (0, 0, False),
    (30, -29, True), (30, -30, False),
])
def test_exp_with_leeway_boundaries(jwks, rsa_key, leeway, exp_offset, ok):
    v = make_verifier(jwks, leeway=leeway)
    token = sign(rsa_key, claims(exp=int(NOW) + exp_offset, iat=int(NOW) - 3600, nbf=...))
    if ok:
        assert v.verify(token, now=NOW).sub == "user-1"
    else:
        assert reason_of(v, token) is DenyReason.EXPIRED


@pytest.mark.parametrize("claim", ["nbf", "iat"])
@pytest.mark.parametrize(("leeway", "offset", "ok"), [
    (60, 60, True), (60, 61, False), (0, 0, True), (0, 1, False),
])
def test_nbf_and_iat_with_leeway_boundaries(jwks, rsa_key, claim, leeway, offset, ok):
    """nbf and iat in the future are allowed up to the leeway (the other claim left out)."""
    v = make_verifier(jwks, leeway=leeway)
    other = "iat" if claim == "nbf" else "nbf"
    token = sign(rsa_key, claims(**{claim: int(NOW) + offset, other: ...}))
    if ok:
        assert v.verify(token, now=NOW).sub == "user-1"
    else:
        assert reason_of(v, token) is DenyReason.NOT_YET_VALID


def test_iat_in_the_future_is_refused(verifier, rsa_key):
    assert reason_of(verifier, sign(rsa_key, claims(iat=int(NOW) + 120, nbf=...))) is DenyReason.NOT_YET_VALID


def test_exp_is_required(verifier, rsa_key):
    assert reason_of(verifier, sign(rsa_key, claims(exp=...))) is DenyReason.MISSING_CLAIM


@pytest.mark.parametrize("bad", ["2030-01-01", True, None, [1]])
def test_exp_must_be_a_number(verifier, rsa_key, bad):
    expected = DenyReason.MISSING_CLAIM if bad is None else DenyReason.INVALID_CLAIM
    assert reason_of(verifier, sign(rsa_key, claims(exp=bad))) is expected


def test_the_verifier_refuses_a_configuration_that_cannot_verify(jwks):
    cache = JwksCache(StaticJwksSource(json.dumps(jwks)), clock=lambda: 0.0)
    assert TokenVerifier(cache, issuer=ISS, audience=AUD, max_lifetime_seconds=1).max_lifetime == 1
    for bad in ({"max_lifetime_seconds": 0}, {"max_lifetime_seconds": -1}, {"issuer": ""}, {"audience": ""},
                {"tenant_claim": ""}):
        with pytest.raises(ValueError):
            TokenVerifier(cache, **{"issuer": ISS, "audience": AUD, **bad})


def test_leeway_over_60_is_rejected(jwks):
    with pytest.raises(ValueError):
        make_verifier(jwks, leeway=61)


# -- issuer / audience / subject ----------------------------------------------------------------------

@pytest.mark.parametrize(("over", "reason"), [
    ({"iss": "https://evil.example.com/"}, DenyReason.WRONG_ISSUER),
    ({"iss": ISS.rstrip("/")}, DenyReason.WRONG_ISSUER),
    ({"iss": ...}, DenyReason.MISSING_CLAIM),
    ({"aud": "other-api"}, DenyReason.WRONG_AUDIENCE),
    ({"aud": ["a", "b"]}, DenyReason.WRONG_AUDIENCE),
    ({"aud": ...}, DenyReason.MISSING_CLAIM),
    ({"sub": ...}, DenyReason.MISSING_CLAIM),
    ({"sub": 42}, DenyReason.INVALID_CLAIM),
    ({"sub": "   "}, DenyReason.INVALID_CLAIM),
    ({"sub": "x" * 300}, DenyReason.INVALID_CLAIM),
])
def test_iss_aud_sub(verifier, rsa_key, over, reason):
    assert reason_of(verifier, sign(rsa_key, claims(**over))) is reason


# -- tenant -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("tenant", "reason"), [
    (..., DenyReason.MISSING_TENANT),
    (None, DenyReason.INVALID_TENANT),
    (42, DenyReason.INVALID_TENANT),
    (["acme"], DenyReason.INVALID_TENANT),
    ({"id": "acme"}, DenyReason.INVALID_TENANT),
    ("", DenyReason.INVALID_TENANT),
    ("ACME", DenyReason.INVALID_TENANT),
    ("../globex", DenyReason.INVALID_TENANT),
    ("acme\n", DenyReason.INVALID_TENANT),
    ("acme/other", DenyReason.INVALID_TENANT),
    ("_shared", DenyReason.SHARED_TENANT),
])
def test_tenant_claim(verifier, rsa_key, tenant, reason):
    assert reason_of(verifier, sign(rsa_key, claims(tenant_id=tenant))) is reason


# -- algorithms and keys ------------------------------------------------------------------------------

def test_alg_none_is_refused(verifier):
    token = raw_token({"alg": "none", "typ": "JWT", "kid": RSA_KID}, claims())
    assert reason_of(verifier, token) is DenyReason.ALG_NOT_ALLOWED
    assert reason_of(verifier, "e30.e30.") is DenyReason.ALG_NOT_ALLOWED  # header {}: no alg at all
    no_alg = raw_token({"alg": None, "kid": RSA_KID}, claims())
    assert reason_of(verifier, no_alg) is DenyReason.ALG_NOT_ALLOWED


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_rsa_public_key_as_hmac_secret_is_refused(verifier, rsa_key, alg):
    """The classic confusion attack: sign HS* with the server's PUBLIC key (PEM and raw JWK bytes)."""
    pem = rsa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    header = {"alg": alg, "typ": "JWT", "kid": RSA_KID}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims()).encode())}"
    forged = f"{signing_input}.{b64(hmac.new(pem, signing_input.encode(), digest).digest())}"
    assert reason_of(verifier, forged) is DenyReason.ALG_NOT_ALLOWED


def test_hmac_key_published_in_jwks_is_never_used(rsa_key):
    secret = b"s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t"
    jwks = {"keys": [{"kty": "oct", "kid": "hmac", "k": b64(secret)},
                     _jwk(rsa_key.public_key(), RSA_KID, "RS256")]}
    v = make_verifier(jwks)
    assert reason_of(v, jwt.encode(claims(), secret, algorithm="HS256", headers={"kid": "hmac"})) \
        is DenyReason.ALG_NOT_ALLOWED
    # Even a token claiming RS256 cannot reach the oct key: it was never loaded.
    assert reason_of(v, sign(rsa_key, claims(), kid="hmac")) is DenyReason.UNKNOWN_KID


@pytest.mark.parametrize("alg", ["RS384", "RS512", "PS256", "ES384", "EdDSA"])
def test_algorithms_outside_the_allow_list(verifier, rsa_key, alg):
    token = raw_token({"alg": alg, "kid": RSA_KID}, claims(), b"sig")
    assert reason_of(verifier, token) is DenyReason.ALG_NOT_ALLOWED


def test_real_rs512_token_is_refused(verifier, rsa_key):
    assert reason_of(verifier, sign(rsa_key, claims(), alg="RS512")) is DenyReason.ALG_NOT_ALLOWED


def test_es256_header_on_an_rsa_key_is_a_mismatch(verifier, ec_key):
    token = sign(ec_key, claims(), alg="ES256", kid=RSA_KID)
    assert reason_of(verifier, token) is DenyReason.ALG_KEY_MISMATCH


def test_rs256_header_on_an_ec_key_is_a_mismatch(verifier, rsa_key):
    token = sign(rsa_key, claims(), alg="RS256", kid=EC_KID)
    assert reason_of(verifier, token) is DenyReason.ALG_KEY_MISMATCH


def test_jwk_declaring_another_alg_is_dropped(rsa_key, ec_key):
    jwks = {"keys": [_jwk(rsa_key.public_key(), "liar", "ES256"), _jwk(ec_key.public_key(), EC_KID, None)]}
    v = make_verifier(jwks)
    assert reason_of(v, sign(rsa_key, claims(), kid="liar")) is DenyReason.UNKNOWN_KID


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_small_rsa_keys_and_other_curves_are_dropped():
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    p384 = ec.generate_private_key(ec.SECP384R1())
    good = ec.generate_private_key(ec.SECP256R1())
    v = make_verifier({"keys": [_jwk(small.public_key(), "small", None),
                                _jwk(p384.public_key(), "p384", None),
                                _jwk(good.public_key(), "good", "ES256")]})
    assert reason_of(v, sign(small, claims(), kid="small")) is DenyReason.UNKNOWN_KID
    p384_token = raw_token({"alg": "ES256", "kid": "p384"}, claims(), b"x" * 64)
    assert reason_of(v, p384_token) is DenyReason.UNKNOWN_KID
    assert v.verify(sign(good, claims(), alg="ES256", kid="good"), now=NOW).sub == "user-1"


def test_jwks_without_any_usable_key_is_a_configuration_error():
    with pytest.raises(JwksError):
        StaticJwksSource(json.dumps({"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}))


def test_private_members_in_the_jwks_are_ignored(rsa_key):
    jwk = RSAAlgorithm.to_jwk(rsa_key, as_dict=True)  # includes d, p, q, ...
    jwk["kid"] = RSA_KID
    v = make_verifier({"keys": [jwk]})
    key = v._keys.get(RSA_KID)
    assert isinstance(key.key, rsa.RSAPublicKey)
    assert v.verify(sign(rsa_key, claims()), now=NOW).sub == "user-1"


def test_flood_of_unknown_kids_through_verify_fetches_once_per_minute(jwks, rsa_key):
    class Counting:
        calls = 0

        def fetch(self):
            Counting.calls += 1
            return jwks

    t = [0.0]
    cache = JwksCache(Counting(), ttl_seconds=300, min_refresh_seconds=60, clock=lambda: t[0])
    v = TokenVerifier(cache, issuer=ISS, audience=AUD, clock=lambda: NOW)
    assert v.verify(sign(rsa_key, claims()), now=NOW).sub == "user-1"
    for i in range(600):  # eight per second for 75 s (exact binary steps), each with a made-up kid
        t[0] += 0.125
        assert reason_of(v, sign(rsa_key, claims(), kid=f"bogus-{i}")) is DenyReason.UNKNOWN_KID
    # The cold-start fetch, then exactly one refetch when the 60 s window reopened (t=60).
    assert Counting.calls == 2
    assert v.verify(sign(rsa_key, claims()), now=NOW).sub == "user-1"
    assert Counting.calls == 2


def test_unknown_kid(verifier, rsa_key):
    assert reason_of(verifier, sign(rsa_key, claims(), kid="rotated-away")) is DenyReason.UNKNOWN_KID


@pytest.mark.parametrize(("kid", "reason"), [
    (None, DenyReason.MISSING_KID), ("", DenyReason.MISSING_KID),
    (7, DenyReason.MALFORMED_TOKEN),  # PyJWT refuses a non-string kid while reading the header
])
def test_missing_or_bad_kid(verifier, rsa_key, kid, reason):
    token = raw_token({"alg": "RS256"} if kid is None else {"alg": "RS256", "kid": kid}, claims(), b"s")
    assert reason_of(verifier, token) is reason


def test_signature_by_another_key_with_our_kid(verifier):
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert reason_of(verifier, sign(attacker, claims())) is DenyReason.BAD_SIGNATURE


def test_tampered_payload(verifier, rsa_key):
    header, _payload, sig = sign(rsa_key, claims()).split(".")
    forged = f"{header}.{b64(json.dumps(claims(tenant_id='globex')).encode())}.{sig}"
    assert reason_of(verifier, forged) is DenyReason.BAD_SIGNATURE


def test_ec_signature_by_another_key(verifier):
    attacker = ec.generate_private_key(ec.SECP256R1())
    assert reason_of(verifier, sign(attacker, claims(), alg="ES256", kid=EC_KID)) is DenyReason.BAD_SIGNATURE


# -- malformed ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("token", [
    "", "abc", "a.b", "a.b.c.d", "a.b.c", "....", None, 42, b"a.b.c",
    "x" * 9000 + ".a.b",
    f"{b64(b'[1,2]')}.{b64(b'{}')}.c",          # header is not an object
    f"{b64(b'not json')}.{b64(b'{}')}.c",
])
def test_malformed_tokens(verifier, token):
    assert reason_of(verifier, token) is DenyReason.MALFORMED_TOKEN


def test_payload_that_is_not_json(verifier, rsa_key):
    header = {"alg": "RS256", "kid": RSA_KID, "typ": "JWT"}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(b'not json')}"
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    sig = rsa_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    assert reason_of(verifier, f"{signing_input}.{b64(sig)}") is DenyReason.MALFORMED_TOKEN


# -- settings and key availability --------------------------------------------------------------------

def test_from_settings(jwks, rsa_key):
    settings = AuthSettings(jwks_json=json.dumps(jwks), issuer=ISS, audience=AUD, leeway_seconds=0)
    v = TokenVerifier.from_settings(settings)
    assert v.leeway == 0
    assert v.verify(sign(rsa_key, claims()), now=NOW).tenant_id == "acme"


def test_from_settings_wires_every_setting_and_both_clocks(jwks, rsa_key):
    settings = AuthSettings(jwks_json=json.dumps(jwks), issuer=ISS, audience=AUD, tenant_claim="org",
                            leeway_seconds=5, jwks_ttl_seconds=7, jwks_min_refresh_seconds=3,
                            max_token_lifetime_seconds=600)
    v = TokenVerifier.from_settings(settings, clock=lambda: NOW, cache_clock=lambda: 42.0)
    assert (v.tenant_claim, v.leeway, v.max_lifetime) == ("org", 5, 600)
    assert (v._keys._ttl, v._keys._min_refresh, v._keys._clock()) == (7, 3, 42.0)
    # The verifier's clock decides validity when no `now` is given (NOW is in 2027: by the wall clock,
    # this token would not be valid yet).
    assert v.verify(sign(rsa_key, claims(org="globex", exp=int(NOW) + 590))).tenant_id == "globex"
    with pytest.raises(InvalidToken) as info:                      # 610 s > the 600 s set
        v.verify(sign(rsa_key, claims(org="globex", exp=int(NOW) + 600)))
    assert info.value.reason is DenyReason.LIFETIME_TOO_LONG


@pytest.mark.parametrize("token", ["not-a-jwt", "a.b", "a.b.c.d", "x" * 20_000])
def test_a_malformed_token_says_why_in_its_detail(verifier, token):
    with pytest.raises(InvalidToken) as info:
        verifier.verify(token, now=NOW)
    assert info.value.reason is DenyReason.MALFORMED_TOKEN and info.value.detail == "not a compact JWS"


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_a_short_rsa_key_is_refused_by_the_decoder_too(verifier):
    """Second layer: parse_jwks never admits an RSA key under 2048 bits; should one reach the decoder,
    PyJWT refuses it (enforce_minimum_key_length) and the token is malformed, not verified."""
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    token = jwt.encode(claims(), weak, algorithm="RS256", headers={"kid": RSA_KID})
    with pytest.raises(InvalidToken) as info:
        verifier._decode(token, weak.public_key(), "RS256")
    assert (info.value.reason, info.value.detail) == (DenyReason.MALFORMED_TOKEN, "InvalidKeyError")


def test_a_header_alg_other_than_the_keys_is_not_allowed_by_the_decoder_either(verifier, ec_key, rsa_key):
    """Second layer: the verifier matches the header's alg to the key before decoding; PyJWT, given only
    the key's alg, refuses any other."""
    token = sign(ec_key, claims(), alg="ES256", kid=RSA_KID)
    with pytest.raises(InvalidToken) as info:
        verifier._decode(token, rsa_key.public_key(), "RS256")
    assert info.value.reason is DenyReason.ALG_NOT_ALLOWED


def test_exp_equal_to_iat_is_refused(verifier, rsa_key):
    """A token that expires the second it is issued is invalid, even inside the leeway."""
    token = sign(rsa_key, claims(iat=int(NOW) - 10, nbf=..., exp=int(NOW) - 10))
    assert reason_of(verifier, token) is DenyReason.INVALID_CLAIM


def test_keys_unavailable_propagates(rsa_key):
    class Down:
        def fetch(self):
            raise JwksError("down")

    v = TokenVerifier(JwksCache(Down(), clock=lambda: 0.0), issuer=ISS, audience=AUD)
    with pytest.raises(JwksUnavailable):
        v.verify(sign(rsa_key, claims()), now=NOW)


def _detail_of(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(InvalidToken) as info:
        verifier.verify(token, now=NOW)
    assert info.value.reason is DenyReason.MALFORMED_TOKEN
    return info.value.detail


def test_a_malformed_segment_is_named_in_the_detail(verifier):
    """The detail (logged for operators, never sent to the client) says which segment was refused and
    why: a duplicated member is named."""
    good = raw_token({"alg": "RS256", "kid": RSA_KID}, claims()).split(".")
    assert _detail_of(verifier, f"AAAAA.{good[1]}.{good[2]}") == "header is not base64url"
    assert _detail_of(verifier, f"{good[0]}.{b64(b'[1]')}.{good[2]}") == "payload is not a JSON object"
    assert _detail_of(verifier, f"{good[0]}.{b64(b'{')}.{good[2]}") == "payload is not UTF-8 JSON"
    assert _detail_of(verifier, f"{good[0]}.{good[1]}.AB") == "signature is not canonical base64url"
    twice = b64(b'{"alg": "RS256", "alg": "ES256"}')
    assert _detail_of(verifier, f"{twice}.{good[1]}.{good[2]}") == "header has member 'alg' twice"


@pytest.mark.parametrize("segment", ["AAAX", "AAAAAX8", "_-_X"])
def test_a_canonical_segment_ending_in_any_letter_is_accepted(segment):
    """Only padding is stripped from the re-encoding it is compared with, never a data character."""
    from tenantml.auth.verifier import _b64url

    assert b64(_b64url(segment, "header")) == segment
