"""JWKS faults against a real local HTTP JWKS endpoint (stdlib http.server on 127.0.0.1, one thread per
request): down, slow, trickling, oversized, not JSON, erroring, and a key rotated mid-flight.

What must hold (tenantml/auth/jwks.py, tenantml/auth/policy.py):
* fail closed: no keys -> `JwksUnavailable` out of `authorize` (API Gateway answers 500 and caches
  nothing: our outage, not the caller's fault), never an Allow; a bad token is still a Deny, decided
  before any fetch;
* every fetch, whatever triggers it (cold start, TTL, unknown kid, retry after a failure), is throttled
  to one per `min_refresh_seconds`: the server counts the requests it gets under a flood of 1,000
  random-kid tokens;
* recovery: once the endpoint serves a good JWKS again, the next fetch the throttle allows restores
  Allow (at most `min_refresh_seconds` later).

The cache's clock is injected where the test needs minutes to pass; the HTTP traffic is real.
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tenantml.auth import DenyReason, InvalidToken, JwksUnavailable
from tenantml.auth.jwks import MAX_JWKS_BYTES, JwksCache, UrlJwksSource
from tenantml.auth.policy import authorize, deny_policy
from tenantml.auth.verifier import TokenVerifier
from tenantml.settings import reset_settings

ISS, AUD = "https://issuer.example.com/", "tenantml-api"
ARN = "arn:aws:execute-api:eu-west-1:123456789012:abcdef1234/prod/POST/v2/models/clf/infer"
TIMEOUT = 0.5          # the fetch timeout these tests give UrlJwksSource (the default is 2 s)
MIN_REFRESH = 60.0     # the default throttle: one fetch a minute
ENV_KEYS = ("TENANTML_JWKS_JSON", "TENANTML_JWKS_URL", "TENANTML_ISSUER", "TENANTML_AUDIENCE",
            "TENANTML_JWKS_MIN_REFRESH_SECONDS")


# -- keys and tokens -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keys() -> dict[str, object]:
    return {"old": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "new": ec.generate_private_key(ec.SECP256R1()),
            "evil": rsa.generate_private_key(public_exponent=65537, key_size=2048)}


def jwks_of(keys: dict, *kids: str) -> dict:
    out = []
    for kid in kids:
        pub = keys[kid].public_key()
        cls = RSAAlgorithm if isinstance(pub, rsa.RSAPublicKey) else ECAlgorithm
        out.append({**cls.to_jwk(pub, as_dict=True), "kid": kid, "use": "sig"})
    return {"keys": out}


def mint(keys: dict, kid: str, *, tenant: str = "acme", signer: str | None = None) -> str:
    key = keys[signer or kid]
    alg = "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256"
    now = int(time.time())
    return jwt.encode({"iss": ISS, "aud": AUD, "sub": "user-1", "tenant_id": tenant, "iat": now,
                       "exp": now + 600}, key, algorithm=alg, headers={"kid": kid})


def event(token: str) -> dict:
    headers = {"Authorization": f"Bearer {token}"}
    return {"type": "REQUEST", "methodArn": ARN, "httpMethod": "POST", "headers": headers,
            "multiValueHeaders": {k: [v] for k, v in headers.items()}}


def outcome(verifier: TokenVerifier, token: str) -> str:
    """'allow:<tenant>', 'deny', or 'unavailable' (the authorizer raised: API Gateway's 500)."""
    try:
        resp = authorize(event(token), verifier)
    except JwksUnavailable:
        return "unavailable"
    if resp == deny_policy():
        return "deny"
    assert resp["policyDocument"]["Statement"][0]["Effect"] == "Allow"
    return f"allow:{resp['context']['tenant_id']}"


def reason(verifier: TokenVerifier, token: str) -> DenyReason:
    with pytest.raises(InvalidToken) as info:
        verifier.verify(token)
    return info.value.reason


# -- the JWKS endpoint ---------------------------------------------------------------------------------

class JwksServer:
    """A JWKS endpoint whose behaviour the test switches: ok | slow | trickle | huge | endless | html |
    error | empty. `stop()` closes the port (connection refused); `start()` serves it again."""

    def __init__(self, doc: dict) -> None:
        self.doc = doc
        self.mode = "ok"
        self.hits = 0
        self._lock = threading.Lock()
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.url = f"http://127.0.0.1:{self.port}/.well-known/jwks.json"
        self.server: ThreadingHTTPServer | None = None

    def handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server API
                with outer._lock:
                    outer.hits += 1
                    mode, body = outer.mode, json.dumps(outer.doc).encode()
                try:
                    self.respond(mode, body)
                except OSError:  # the client gave up (timeout): expected in the slow modes
                    pass

            def respond(self, mode: str, body: bytes) -> None:
                if mode == "slow":  # nothing at all until well past the fetch timeout
                    time.sleep(TIMEOUT * 3)
                if mode == "html":
                    body = b"<html><body>502 Bad Gateway</body></html>"
                if mode == "huge":  # a syntactically valid JWKS, just too large
                    body = json.dumps({**outer.doc, "pad": "x" * MAX_JWKS_BYTES}).encode()
                if mode == "empty":
                    body = json.dumps({"keys": []}).encode()
                self.send_response(500 if mode == "error" else 200)
                self.send_header("Content-Type", "application/json")
                if mode != "endless":
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if mode == "trickle":  # headers at once, then one byte every 0.1 s
                    for i in range(len(body)):
                        self.wfile.write(body[i:i + 1])
                        self.wfile.flush()
                        time.sleep(0.1)
                elif mode == "endless":  # no Content-Length, a body that never ends
                    deadline = time.monotonic() + 10
                    while time.monotonic() < deadline:
                        self.wfile.write(b" " * 65536)
                else:
                    self.wfile.write(body)

            def log_message(self, *args):
                pass

        return Handler

    def start(self) -> JwksServer:
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self.handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.fixture
def server(keys):
    srv = JwksServer(jwks_of(keys, "old")).start()
    yield srv
    srv.stop()


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make_verifier(url: str, clock: Callable[[], float] = time.monotonic, *,
                  min_refresh: float = MIN_REFRESH) -> tuple[TokenVerifier, JwksCache]:
    cache = JwksCache(UrlJwksSource(url, timeout=TIMEOUT), ttl_seconds=300, min_refresh_seconds=min_refresh,
                      clock=clock)
    return TokenVerifier(cache, issuer=ISS, audience=AUD), cache


# -- fail closed ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["down", "slow", "trickle", "huge", "endless", "html", "error", "empty"])
def test_no_usable_jwks_fails_closed_and_fast(server, keys, mode):
    if mode == "down":
        server.stop()
    else:
        server.mode = mode
    verifier, cache = make_verifier(server.url)
    t0 = time.monotonic()
    assert outcome(verifier, mint(keys, "old")) == "unavailable"  # a genuine token: 500, never Allow
    elapsed = time.monotonic() - t0
    # One socket timeout for the first byte, the body deadline, one more socket timeout at most.
    assert elapsed < 3 * TIMEOUT + 0.5, f"{mode}: the fetch held the authorizer {elapsed:.2f}s"
    assert cache.fetch_count == 1
    assert server.hits == (0 if mode == "down" else 1)
    # A bad token is still the caller's fault: Deny, decided without touching the JWKS.
    assert outcome(verifier, "not-a-jwt") == "deny"
    assert outcome(verifier, mint(keys, "old")) == "unavailable"
    assert cache.fetch_count == 1  # the retry waits for the throttle


def test_outage_after_a_good_fetch_keeps_the_cached_keys(server, keys):
    clock = Clock()
    verifier, cache = make_verifier(server.url, clock)
    assert outcome(verifier, mint(keys, "old")) == "allow:acme"
    server.stop()
    clock.t += 301  # TTL passed: the refetch fails, the keys already trusted stay
    assert outcome(verifier, mint(keys, "old", tenant="globex")) == "allow:globex"
    assert cache.fetch_count == 2
    assert reason(verifier, mint(keys, "new")) is DenyReason.UNKNOWN_KID  # throttled: no new attempt
    assert cache.fetch_count == 2


# -- the rate limit under a flood of random kids --------------------------------------------------------

def random_kid_tokens(keys: dict, n: int) -> list[str]:
    now = int(time.time())
    payload = {"iss": ISS, "aud": AUD, "sub": "x", "tenant_id": "acme", "iat": now, "exp": now + 600}
    return [jwt.encode(payload, keys["evil"], algorithm="RS256", headers={"kid": secrets.token_hex(8)})
            for _ in range(n)]


def test_random_kid_flood_over_8_minutes_fetches_once_a_minute(server, keys):
    clock = Clock()
    verifier, cache = make_verifier(server.url, clock)
    tokens = random_kid_tokens(keys, 1000)
    start = clock.t
    answers = []
    for token in tokens:  # 1,000 tokens, one every 0.5 s: 500 s of flood
        answers.append(outcome(verifier, token))
        clock.t += 0.5
    elapsed = clock.t - start
    assert answers == ["deny"] * 1000
    limit = 1 + int(elapsed // MIN_REFRESH)  # the cold-start fetch, then one per reopened window
    assert server.hits == cache.fetch_count == limit == 9
    assert outcome(verifier, mint(keys, "old")) == "allow:acme"  # the real key still works
    assert server.hits == 9


def test_random_kid_flood_from_8_threads_costs_one_fetch(server, keys):
    verifier, cache = make_verifier(server.url)  # the real clock
    tokens = random_kid_tokens(keys, 1000)
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda t: outcome(verifier, t), tokens))
    elapsed = time.monotonic() - t0
    assert answers == ["deny"] * 1000
    assert elapsed < MIN_REFRESH
    assert server.hits == cache.fetch_count == 1


def test_random_kid_flood_during_an_outage_then_recovery(server, keys):
    clock = Clock()
    server.mode = "error"
    verifier, cache = make_verifier(server.url, clock)
    tokens = random_kid_tokens(keys, 1000)
    for token in tokens:  # 1,000 tokens over 62.5 s with nothing cached: all 500, fetches throttled
        assert outcome(verifier, token) == "unavailable"
        clock.t += 0.0625  # exact in binary: the attempts fall at exactly t = 0 s and t = 60 s
    assert server.hits == cache.fetch_count == 1 + int(62.5 // MIN_REFRESH) == 2
    good = mint(keys, "old")
    server.mode = "ok"  # the JWKS is back at t = 62.5 s; the last attempt was at t = 60 s
    clock.t = 1000.0 + 119.9375
    assert outcome(verifier, good) == "unavailable"  # still inside the throttle window
    clock.t = 1000.0 + 120.0
    assert outcome(verifier, good) == "allow:acme"  # recovered on the first fetch the throttle allows
    assert server.hits == 3


# -- key rotation mid-flight ---------------------------------------------------------------------------

def test_key_rotated_mid_flight(server, keys):
    clock = Clock()
    verifier, cache = make_verifier(server.url, clock)
    old, new = mint(keys, "old"), mint(keys, "new", tenant="globex")
    assert outcome(verifier, old) == "allow:acme"
    server.doc = jwks_of(keys, "new")  # rotated: old kid removed, new kid added
    clock.t += 10
    assert outcome(verifier, old) == "allow:acme"  # the cached keyset still has it (until a fetch)
    assert reason(verifier, new) is DenyReason.UNKNOWN_KID  # within a minute of the last fetch
    assert server.hits == 1
    clock.t += 51  # 61 s after the first fetch: the unknown kid may refetch
    assert outcome(verifier, new) == "allow:globex"
    assert reason(verifier, old) is DenyReason.UNKNOWN_KID  # gone with the new keyset, no extra fetch
    assert reason(verifier, mint(keys, "new", signer="evil")) is DenyReason.ALG_KEY_MISMATCH
    assert server.hits == cache.fetch_count == 2


def test_key_rotated_while_8_threads_verify(server, keys):
    """The keyset swaps while requests are in flight: every answer is an Allow by a key the server
    published or a Deny, never an error, and fetches stay within the throttle (min refresh 0.2 s)."""
    verifier, cache = make_verifier(server.url, min_refresh=0.2)
    old, new = mint(keys, "old"), mint(keys, "new", tenant="globex")
    assert outcome(verifier, old) == "allow:acme"
    stop = threading.Event()

    def rotate() -> None:
        for i in range(10):
            server.doc = jwks_of(keys, "new" if i % 2 == 0 else "old")
            time.sleep(0.05)
        server.doc = jwks_of(keys, "new")
        time.sleep(0.25)
        stop.set()

    def work(token: str) -> set[str]:
        seen = set()
        while not stop.is_set():
            seen.add(outcome(verifier, token))
            time.sleep(0.002)   # requests arrive, they do not spin: the rotator keeps its schedule
        return seen

    t0 = time.monotonic()
    rotator = threading.Thread(target=rotate)
    rotator.start()
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(work, [old, new] * 4))
    rotator.join()
    elapsed = time.monotonic() - t0
    assert set().union(*results) <= {"allow:acme", "allow:globex", "deny"}
    assert server.hits <= 1 + int(elapsed / 0.2) + 1
    time.sleep(0.25)  # the final keyset (new only) is fetched on the next unknown kid
    assert outcome(verifier, new) == "allow:globex"
    assert outcome(verifier, old) in {"allow:acme", "deny"}


# -- the deployed handler, end to end ------------------------------------------------------------------

def test_handler_fails_closed_then_recovers(monkeypatch, keys, load_handler, lambda_context):
    """functions/authorizer configured by environment as on Lambda (TENANTML_JWKS_URL), the real clock,
    a 1 s throttle: 500 while the endpoint is down, Deny for a bad token, Allow once it is back."""
    srv = JwksServer(jwks_of(keys, "old"))  # not started: connection refused
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TENANTML_JWKS_URL", srv.url)
    monkeypatch.setenv("TENANTML_ISSUER", ISS)
    monkeypatch.setenv("TENANTML_AUDIENCE", AUD)
    monkeypatch.setenv("TENANTML_JWKS_MIN_REFRESH_SECONDS", "1")
    reset_settings()
    try:
        fn = load_handler("authorizer")
        good = mint(keys, "old")
        with pytest.raises(JwksUnavailable):  # raised out of the Lambda: API Gateway answers 500
            fn.handler(event(good), lambda_context)
        assert fn.handler(event("not-a-jwt"), lambda_context) == deny_policy()  # bad token: Deny
        srv.start()
        time.sleep(1.1)
        resp = fn.handler(event(good), lambda_context)
        assert resp["policyDocument"]["Statement"][0]["Effect"] == "Allow"
        assert resp["context"]["tenant_id"] == "acme"
        assert srv.hits == 1
    finally:
        srv.stop()
        reset_settings()
