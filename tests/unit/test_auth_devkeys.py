"""Local dev keys and `tenantml token`: persisted once (0600), public-only JWKS, tokens the verifier
accepts."""

from __future__ import annotations

import json
import stat
import time

import jwt
import pytest

from tenantml.auth.devkeys import DEV_AUDIENCE, DEV_ISSUER, EC_FILE, RSA_FILE, ensure_dev_keys, token_command
from tenantml.auth.jwks import JwksCache, StaticJwksSource
from tenantml.auth.verifier import TokenVerifier
from tenantml.cli import build_parser, main
from tenantml.local import state as platform_state
from tenantml.settings import AuthSettings

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("devkeys") / "keys"


@pytest.fixture(scope="module")
def keys(home):
    return ensure_dev_keys(home)


def verifier_for(keys) -> TokenVerifier:
    settings = AuthSettings(**{k.removeprefix("TENANTML_").lower(): v for k, v in keys.auth_env().items()})
    return TokenVerifier.from_settings(settings)


def test_keys_are_persisted_with_owner_only_permissions(keys, home):
    for name in (RSA_FILE, EC_FILE):
        mode = stat.S_IMODE((home / name).stat().st_mode)
        assert mode == 0o600, oct(mode)
        assert (home / name).read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert keys.rsa_private.key_size == 2048
    assert keys.ec_private.curve.name == "secp256r1"


def test_second_call_loads_the_same_keys(keys, home):
    before = {p.name: p.read_bytes() for p in home.iterdir()}
    again = ensure_dev_keys(home)
    assert again.kids == keys.kids
    assert {p.name: p.read_bytes() for p in home.iterdir()} == before
    assert sorted(before) == sorted([RSA_FILE, EC_FILE])  # no temp files left behind


def test_loose_permissions_are_tightened(tmp_path):
    ensure_dev_keys(tmp_path)
    (tmp_path / RSA_FILE).chmod(0o644)
    ensure_dev_keys(tmp_path)
    assert stat.S_IMODE((tmp_path / RSA_FILE).stat().st_mode) == 0o600


def test_a_key_file_of_the_wrong_type_is_refused(tmp_path, keys, home):
    tmp_path.joinpath(RSA_FILE).write_bytes((home / EC_FILE).read_bytes())
    with pytest.raises(ValueError):
        ensure_dev_keys(tmp_path)


def test_jwks_is_public_only_with_distinct_thumbprint_kids(keys):
    doc = keys.jwks()
    assert [(k["kty"], k["alg"], k["use"]) for k in doc["keys"]] == [("RSA", "RS256", "sig"),
                                                                     ("EC", "ES256", "sig")]
    assert all(not (PRIVATE_MEMBERS & set(k)) for k in doc["keys"])
    kids = [k["kid"] for k in doc["keys"]]
    assert len(set(kids)) == 2 and all(len(k) == 43 for k in kids)  # base64url sha256
    json.dumps(doc)


RFC7638_N = (
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJE"
    "CPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2Q"
    "vzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6"
    "WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
)


def test_kids_are_rfc7638_thumbprints(keys):
    from tenantml.auth.devkeys import _thumbprint
    # The worked example of RFC 7638 section 3.1.
    expected = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    assert _thumbprint({"e": "AQAB", "kty": "RSA", "n": RFC7638_N}) == expected
    rsa_jwk, ec_jwk = keys.jwks()["keys"]
    assert rsa_jwk["kid"] == _thumbprint({m: rsa_jwk[m] for m in ("e", "kty", "n")})
    assert ec_jwk["kid"] == _thumbprint({m: ec_jwk[m] for m in ("crv", "kty", "x", "y")})
    from jwt.algorithms import ECAlgorithm, RSAAlgorithm
    assert RSAAlgorithm.from_jwk(json.dumps(rsa_jwk)).public_numbers() == \
        keys.rsa_private.public_key().public_numbers()
    assert ECAlgorithm.from_jwk(json.dumps(ec_jwk)).public_numbers() == \
        keys.ec_private.public_key().public_numbers()


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_minted_tokens_verify_against_the_dev_jwks(keys, alg):
    token = keys.mint("acme", ["models:read", "models:write"], sub="alice", ttl=120, alg=alg)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == alg and header["kid"] == keys.kids[alg]
    claims = verifier_for(keys).verify(token)
    assert (claims.tenant_id, claims.sub) == ("acme", "alice")
    assert claims.scopes == frozenset({"models:read", "models:write"})
    assert claims.raw["iss"] == DEV_ISSUER and claims.raw["aud"] == DEV_AUDIENCE
    assert claims.raw["exp"] - claims.raw["iat"] == 120


def test_minted_token_expires(keys):
    token = keys.mint("acme", now=time.time() - 7200, ttl=60)
    from tenantml.auth import DenyReason, InvalidToken
    with pytest.raises(InvalidToken) as info:
        verifier_for(keys).verify(token)
    assert info.value.reason is DenyReason.EXPIRED


def test_tokens_from_other_dev_keys_are_refused(keys, tmp_path):
    other = ensure_dev_keys(tmp_path)
    from tenantml.auth import DenyReason, InvalidToken
    with pytest.raises(InvalidToken) as info:
        verifier_for(keys).verify(other.mint("acme"))
    assert info.value.reason is DenyReason.UNKNOWN_KID


@pytest.mark.parametrize(("kwargs", "bad"), [
    ({"tenant": "_shared"}, True), ({"tenant": "ACME"}, True), ({"tenant": ""}, True),
    ({"tenant": "acme", "ttl": 0}, True), ({"tenant": "acme", "alg": "HS256"}, True),
    ({"tenant": "acme", "scopes": ["two words"]}, True), ({"tenant": "acme", "scopes": "a b"}, False),
])
def test_mint_validates(keys, kwargs, bad):
    if bad:
        with pytest.raises(ValueError):
            keys.mint(**kwargs)
    else:
        assert keys.mint(**kwargs).count(".") == 2


def _verify_with_home_keys(tmp_path, token):
    keys = ensure_dev_keys(tmp_path / ".tenantml" / "keys")
    cache = JwksCache(StaticJwksSource(keys.jwks()))
    return TokenVerifier(cache, issuer=DEV_ISSUER, audience=DEV_AUDIENCE).verify(token)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project whose platform has run once (its dev keys exist); the tests work from a subfolder."""
    ensure_dev_keys(tmp_path / ".tenantml" / "keys")
    (tmp_path / "src" / "deep").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "src" / "deep")
    monkeypatch.setattr(platform_state, "checkout_home", lambda: None)   # only this project counts
    return tmp_path


def test_token_command_prints_only_the_token_with_default_scope(project, capsys):
    assert main(["token", "--tenant", "acme"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.endswith("\n") and out.count("\n") == 1
    claims = _verify_with_home_keys(project, out.strip())   # the keys found from a subfolder
    assert (claims.tenant_id, claims.sub, claims.scopes) == ("acme", "dev-user", frozenset({"models:read"}))


def test_token_command_never_mints_from_new_keys(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(platform_state, "checkout_home", lambda: None)
    assert main(["token", "--tenant", "acme"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "no dev keys" in err and "make local" in err and err.count("\n") == 1
    assert not (tmp_path / ".tenantml").exists()
    assert main(["token", "--tenant", "acme", "--keys", str(tmp_path / "nope")]) == 1
    assert "no dev keys in" in capsys.readouterr().err


def test_token_command_with_an_explicit_key_folder(project, tmp_path, capsys):
    assert main(["token", "--tenant", "acme", "--keys", str(project / ".tenantml" / "keys")]) == 0
    _verify_with_home_keys(project, capsys.readouterr().out.strip())


def test_token_command_admin_scope_es256_custom_sub_and_ttl(project, capsys):
    args = build_parser().parse_args(["token", "--tenant", "globex", "--scope", "models:write",
                                      "--sub", "ops", "--ttl", "60", "--alg", "ES256"])
    assert token_command(args) == 0
    token = capsys.readouterr().out.strip()
    claims = _verify_with_home_keys(project, token)
    assert (claims.tenant_id, claims.sub, claims.scopes) == ("globex", "ops", frozenset({"models:write"}))
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    assert claims.raw["exp"] - claims.raw["iat"] == 60


def test_token_command_refuses_the_shared_tenant(project, capsys):
    assert main(["token", "--tenant", "_shared"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "_shared" in err


def test_write_once_creates_the_file_owner_only_and_keeps_an_existing_one(tmp_path):
    from tenantml.auth.devkeys import _write_once

    target = tmp_path / "k.pem"
    _write_once(target, b"first")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600      # from creation, not tightened afterwards
    _write_once(target, b"second")                             # a concurrent writer lost: no error
    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["k.pem"]   # its temporary file is gone


def _pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def test_a_short_rsa_key_or_another_curve_is_refused_by_name(tmp_path, keys, home):
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    weak = tmp_path / "weak"
    weak.mkdir()
    (weak / RSA_FILE).write_bytes(_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)))
    (weak / EC_FILE).write_bytes((home / EC_FILE).read_bytes())
    with pytest.raises(ValueError, match=rf"{RSA_FILE} is not an RSA-2048\+ private key"):
        ensure_dev_keys(weak)
    p384 = tmp_path / "p384"
    p384.mkdir()
    (p384 / RSA_FILE).write_bytes((home / RSA_FILE).read_bytes())
    (p384 / EC_FILE).write_bytes(_pem(ec.generate_private_key(ec.SECP384R1())))
    with pytest.raises(ValueError, match=rf"{EC_FILE} is not an EC P-256 private key"):
        ensure_dev_keys(p384)


@pytest.mark.parametrize("present", [RSA_FILE, EC_FILE])
def test_token_command_needs_both_key_files(project, capsys, present):
    folder = project / "half"
    folder.mkdir()
    (folder / present).write_bytes((project / ".tenantml" / "keys" / present).read_bytes())
    assert main(["token", "--tenant", "acme", "--keys", str(folder)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and f"no dev keys in {folder};" in err and "or pass --keys DIR" in err


def test_token_command_says_where_it_looked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(platform_state, "checkout_home", lambda: None)
    assert main(["token", "--tenant", "acme"]) == 1
    err = capsys.readouterr().err
    assert "no dev keys in .tenantml/keys here, above or in the tenantml checkout;" in err
    assert err.rstrip().endswith("or pass --keys DIR")


def test_base64url_integers_are_big_endian_unpadded_and_minimal_unless_sized():
    from tenantml.auth.devkeys import _b64

    assert _b64(0x010217) == "AQIX"          # a trailing X is data, not padding
    assert _b64(65537) == "AQAB"
    assert _b64(0) == "AA"                    # one byte at least
    assert _b64(1, 4) == "AAAAAQ"             # sized: left-padded with zero bytes


def test_thumbprints_sort_the_members():
    from tenantml.auth.devkeys import _thumbprint

    # RFC 7638 section 3.1, members given out of order
    assert _thumbprint({"n": RFC7638_N, "kty": "RSA", "e": "AQAB"}) == \
        "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize("short", ["x", "y"])
def test_ec_coordinates_are_always_32_bytes_in_the_jwks(keys, short):
    """RFC 7518 6.2.1.2: a P-256 coordinate is 32 bytes even when it starts with a zero byte."""
    import base64

    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    from tenantml.auth.devkeys import DevKeys

    for _ in range(5000):                     # a key whose `short` coordinate is short (about 1 in 256)
        key = ec.generate_private_key(ec.SECP256R1())
        nums = key.public_key().public_numbers()
        if getattr(nums, short) < 1 << 248:
            break
    else:
        pytest.fail(f"no short {short} found")
    ec_jwk = DevKeys(keys.rsa_private, key).jwks()["keys"][1]
    for m in ("x", "y"):
        assert len(base64.urlsafe_b64decode(ec_jwk[m] + "==")) == 32
    assert ECAlgorithm.from_jwk(json.dumps(ec_jwk)).public_numbers() == nums


def test_minted_tokens_say_they_are_jwts(keys):
    assert jwt.get_unverified_header(keys.mint("acme")) == {"alg": "RS256", "kid": keys.kids["RS256"],
                                                            "typ": "JWT"}
