"""JWKS sources and the TTL cache with throttled refetch, driven by an injected clock (no network)."""

from __future__ import annotations

import io
import json
import urllib.error

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tenantml.auth import JwksUnavailable
from tenantml.auth.jwks import (
    MAX_JWKS_BYTES,
    JwksCache,
    JwksError,
    StaticJwksSource,
    UrlJwksSource,
    parse_jwks,
    source_from_settings,
)


@pytest.fixture(scope="module")
def rsa_pub():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()


@pytest.fixture(scope="module")
def ec_pub():
    return ec.generate_private_key(ec.SECP256R1()).public_key()


def jwk(pub, kid):
    cls = RSAAlgorithm if isinstance(pub, rsa.RSAPublicKey) else ECAlgorithm
    return {**cls.to_jwk(pub, as_dict=True), "kid": kid}


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class FakeSource:
    """Serves whatever `doc` is now; counts fetches; `fail` makes it raise like a network error."""

    def __init__(self, doc) -> None:
        self.doc = doc
        self.calls = 0
        self.fail = False

    def fetch(self):
        self.calls += 1
        if self.fail:
            raise JwksError("connection refused")
        return self.doc


@pytest.fixture
def setup(rsa_pub, ec_pub):
    clock = Clock()
    source = FakeSource({"keys": [jwk(rsa_pub, "k1")]})
    cache = JwksCache(source, ttl_seconds=300, min_refresh_seconds=60, clock=clock)
    return clock, source, cache


def test_parse_jwks_maps_key_types_to_one_algorithm(rsa_pub, ec_pub):
    keys = parse_jwks({"keys": [jwk(rsa_pub, "r"), jwk(ec_pub, "e")]})
    assert {k: v.alg for k, v in keys.items()} == {"r": "RS256", "e": "ES256"}
    assert isinstance(keys["r"].key, rsa.RSAPublicKey)
    assert isinstance(keys["e"].key, ec.EllipticCurvePublicKey)


@pytest.mark.parametrize("doc", [None, [], {"keys": "x"}, {"keys": []}, {"nokeys": 1},
                                 {"keys": [{"kty": "RSA", "kid": "bad", "n": "!!", "e": "AQAB"}]},
                                 {"keys": [{"kty": "EC", "crv": "P-256", "kid": "bad",
                                            "x": "AA", "y": "AA"}]}])
def test_parse_jwks_rejects_unusable_documents(doc):
    with pytest.raises(JwksError):
        parse_jwks(doc)


def test_parse_jwks_skips_bad_entries_keeps_good_ones(rsa_pub, ec_pub):
    doc = {"keys": [
        "garbage",
        {**jwk(rsa_pub, "enc"), "use": "enc"},
        {k: v for k, v in jwk(rsa_pub, "nokid").items() if k != "kid"},
        {"kty": "OKP", "crv": "Ed25519", "kid": "okp", "x": "AA"},
        jwk(ec_pub, "dup"),
        jwk(rsa_pub, "dup"),  # a second key under a kid already taken is dropped, the first kept
        jwk(rsa_pub, "good"),
    ]}
    keys = parse_jwks(doc)
    assert set(keys) == {"dup", "good"}
    assert keys["dup"].alg == "ES256"


def test_first_lookup_fetches_then_serves_from_cache(setup):
    clock, source, cache = setup
    assert cache.get("k1").alg == "RS256"
    clock.t += 299
    assert cache.get("k1") is not None
    assert source.calls == 1


def test_ttl_expiry_refetches(setup, ec_pub):
    clock, source, cache = setup
    cache.get("k1")
    source.doc = {"keys": [jwk(ec_pub, "k2")]}
    clock.t += 300
    # Asked for a kid the cached keyset HAS: only the TTL can make it refetch (an unknown kid would
    # refetch anyway), and the refetched keyset no longer has it.
    assert cache.get("k1") is None  # rotated out
    assert source.calls == 2
    assert cache.get("k2").alg == "ES256"
    assert source.calls == 2


def test_unknown_kid_flood_fetches_at_most_once_per_minute(setup):
    clock, source, cache = setup
    cache.get("k1")
    assert source.calls == 1
    clock.t += 61  # past the throttle window since the first fetch
    for i in range(1000):
        assert cache.get(f"made-up-{i}") is None
        clock.t += 0.05  # 1000 requests over 50 s
    assert source.calls == 2  # one refetch for the whole flood
    clock.t += 11  # now 61 s after that refetch
    for i in range(100):
        cache.get(f"again-{i}")
    assert source.calls == 3
    assert cache.get("k1") is not None  # the real key is still served meanwhile
    assert source.calls == 3


def test_unknown_kid_triggers_refetch_that_finds_a_rotated_key(setup, ec_pub, rsa_pub):
    clock, source, cache = setup
    cache.get("k1")
    clock.t += 60
    source.doc = {"keys": [jwk(rsa_pub, "k1"), jwk(ec_pub, "new")]}
    assert cache.get("new").alg == "ES256"
    assert source.calls == 2


def test_refetch_right_after_cold_start_is_throttled(setup, ec_pub, rsa_pub):
    clock, source, cache = setup
    cache.get("k1")
    source.doc = {"keys": [jwk(rsa_pub, "k1"), jwk(ec_pub, "new")]}
    clock.t += 30
    assert cache.get("new") is None  # too soon after the first fetch
    clock.t += 30
    assert cache.get("new") is not None
    assert source.calls == 2


def test_fetch_failure_keeps_the_cached_keyset(setup):
    clock, source, cache = setup
    cache.get("k1")
    source.fail = True
    clock.t += 301  # TTL expired, refresh fails
    assert cache.get("k1") is not None
    assert source.calls == 2
    clock.t += 10  # failed attempt is throttled too: no hammering a broken endpoint
    assert cache.get("k1") is not None
    assert cache.get("unknown") is None
    assert source.calls == 2
    clock.t += 60
    source.fail = False
    assert cache.get("k1") is not None
    assert source.calls == 3


def test_nothing_cached_and_fetch_fails_raises(setup):
    clock, source, cache = setup
    source.fail = True
    with pytest.raises(JwksUnavailable) as info:
        cache.get("k1")
    assert info.value.status == 503
    clock.t += 5
    with pytest.raises(JwksUnavailable):
        cache.get("k1")
    assert source.calls == 1  # retries are throttled as well
    clock.t += 60
    source.fail = False
    assert cache.get("k1") is not None


def test_a_keyset_with_no_usable_keys_counts_as_a_failed_fetch(setup, rsa_pub):
    clock, source, cache = setup
    cache.get("k1")
    source.doc = {"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}
    clock.t += 300
    assert cache.get("k1") is not None  # the good cached keyset survives a bad publish


# -- sources -------------------------------------------------------------------------------------------

class FakeResponse(io.BytesIO):
    def __init__(self, body: bytes, status: int = 200) -> None:
        super().__init__(body)
        self.status = status


def test_url_source_fetches_with_timeout_and_headers(rsa_pub):
    seen = {}

    def opener(request, timeout):
        seen["url"], seen["timeout"] = request.full_url, timeout
        seen["accept"] = request.get_header("Accept")
        return FakeResponse(json.dumps({"keys": [jwk(rsa_pub, "k")]}).encode())

    src = UrlJwksSource("https://idp.example.com/.well-known/jwks.json", timeout=1.5, opener=opener)
    assert parse_jwks(src.fetch())["k"].alg == "RS256"
    assert seen == {"url": "https://idp.example.com/.well-known/jwks.json", "timeout": 1.5,
                    "accept": "application/json"}


@pytest.mark.parametrize("behaviour", ["timeout", "refused", "http500", "status503", "notjson", "huge"])
def test_url_source_failures_become_jwks_errors(behaviour):
    def opener(request, timeout):
        if behaviour == "timeout":
            raise TimeoutError("timed out")
        if behaviour == "refused":
            raise urllib.error.URLError(ConnectionRefusedError())
        if behaviour == "http500":
            raise urllib.error.HTTPError(request.full_url, 500, "boom", {}, None)
        if behaviour == "status503":
            return FakeResponse(b"{}", status=503)
        if behaviour == "notjson":
            return FakeResponse(b"<html>")
        return FakeResponse(b" " * (MAX_JWKS_BYTES + 10))

    with pytest.raises(JwksError):
        UrlJwksSource("https://idp.example.com/jwks", opener=opener).fetch()


def test_url_source_size_bound_is_exact(rsa_pub):
    """A document of exactly MAX_JWKS_BYTES is read whole; one byte more is refused as too large (not
    truncated and then refused as something else)."""
    doc = json.dumps({"keys": [jwk(rsa_pub, "k")]}).encode()

    def sized(n: int) -> bytes:
        return doc + b" " * (n - len(doc))

    src = UrlJwksSource("https://idp.example.com/jwks",
                        opener=lambda r, timeout: FakeResponse(sized(MAX_JWKS_BYTES)))
    assert parse_jwks(src.fetch())["k"].alg == "RS256"
    src = UrlJwksSource("https://idp.example.com/jwks",
                        opener=lambda r, timeout: FakeResponse(sized(MAX_JWKS_BYTES + 1)))
    with pytest.raises(JwksError, match="^JWKS document too large$"):
        src.fetch()


@pytest.mark.parametrize("url", ["http://idp.example.com/jwks", "file:///etc/passwd", "ftp://x/y",
                                 "jwks.json"])
def test_url_source_requires_https_except_localhost(url):
    with pytest.raises(ValueError):
        UrlJwksSource(url)


def test_url_source_allows_plain_http_on_localhost():
    assert UrlJwksSource("http://127.0.0.1:8080/jwks").url.startswith("http://127.0.0.1")


def test_static_source_rejects_bad_json():
    with pytest.raises(ValueError):
        StaticJwksSource("{not json")


def test_source_from_settings(rsa_pub):
    assert isinstance(source_from_settings(None, json.dumps({"keys": [jwk(rsa_pub, "k")]})), StaticJwksSource)
    assert isinstance(source_from_settings("https://idp.example.com/jwks", None), UrlJwksSource)
    with pytest.raises(ValueError, match="^set jwks_url or jwks_json$"):
        source_from_settings(None, None)


class CountingResponse:
    """A response as urllib's opener gives it, counting what is read; `status` and `headers` optional."""

    def __init__(self, body: bytes, *, headers: dict | None = None, status: int | None = 200) -> None:
        self._body, self.consumed = io.BytesIO(body), 0
        if headers is not None:
            self.headers = headers
        if status is not None:
            self.status = status

    def read1(self, n: int) -> bytes:
        chunk = self._body.read(n)
        self.consumed += len(chunk)
        return chunk

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def _fetch(resp: CountingResponse):
    return UrlJwksSource("https://idp.example.com/jwks", opener=lambda r, timeout: resp).fetch()


def test_a_declared_content_length_over_the_bound_is_refused_before_reading(rsa_pub):
    doc = json.dumps({"keys": [jwk(rsa_pub, "k")]}).encode()
    over = CountingResponse(doc, headers={"Content-Length": str(MAX_JWKS_BYTES + 1)})
    with pytest.raises(JwksError, match="^JWKS document too large$"):
        _fetch(over)
    assert over.consumed == 0
    at = CountingResponse(doc, headers={"Content-Length": str(MAX_JWKS_BYTES)})
    assert "k" in parse_jwks(_fetch(at))


def test_reading_stops_one_byte_past_the_bound_however_much_is_sent():
    flood = CountingResponse(b" " * (10 * MAX_JWKS_BYTES))
    with pytest.raises(JwksError, match="^JWKS document too large$"):
        _fetch(flood)
    assert flood.consumed == MAX_JWKS_BYTES + 1


def test_a_response_without_a_status_is_taken_as_200(rsa_pub):
    doc = json.dumps({"keys": [jwk(rsa_pub, "k")]}).encode()
    assert "k" in parse_jwks(_fetch(CountingResponse(doc, status=None)))


def test_the_fetch_says_who_it_is():
    seen = {}

    def opener(request, timeout):
        seen["ua"] = request.get_header("User-agent")
        return CountingResponse(b"{}")

    UrlJwksSource("https://idp.example.com/jwks", opener=opener).fetch()
    assert seen == {"ua": "tenantml-authorizer"}


@pytest.mark.parametrize("kid", [123, "", None, ["k"]])
def test_a_key_whose_kid_is_not_a_non_empty_string_is_skipped(rsa_pub, kid):
    good = jwk(rsa_pub, "k")
    assert set(parse_jwks({"keys": [good, {**good, "kid": kid}]})) == {"k"}


def test_the_default_throttle_is_one_fetch_a_minute(rsa_pub):
    now = [0.0]
    calls = []

    class Source:
        def fetch(self):
            calls.append(now[0])
            return {"keys": [jwk(rsa_pub, "k")]}

    cache = JwksCache(Source(), clock=lambda: now[0])
    assert cache.get("k") is not None and cache.get("unknown") is None
    now[0] = 59.9
    assert cache.get("unknown") is None
    now[0] = 60.0
    assert cache.get("unknown") is None
    assert calls == [0.0, 60.0]
