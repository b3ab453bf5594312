"""A property-based fuzzer (hypothesis) against the local API, its strategies derived from the OpenAPI
document (tenantml.api.openapi, itself generated from the routes and the pydantic models the handlers
parse).

For every route, over HTTP through the API Gateway emulator (REST flavour, the default deployment):
bodies generated from the route's request schema, mutated (keys dropped, added, retyped; lone surrogates
escaped in JSON; huge numbers; deep nesting), random bytes and invalid UTF-8, gzip/deflate/unsupported
Content-Encoding (truncated, or a bomb), Content-Type variants, Inference-Header-Content-Length junk,
path parameters with odd characters (percent-encoded bytes, non-ASCII, very long), query parameters
(limit, next_token, owner: non-ASCII digits, huge, repeated), and tokens of two tenants with the right
scope, a wrong one, none, an expired or a garbage token. Then, straight into the functions' handlers
(functions/*/handler.py in their warm local environments, REST v1 and HTTP API v2 events): bodies flagged
base64 that are not base64 or not UTF-8, strings with lone surrogates, bodies and headers of the wrong
JSON type. Every answer must be:

- below 500, and a status the document lists for the operation;
- for an error, JSON of exactly `{"error": string}` (ErrorBody; the REST API's gateway errors too);
- free of stack traces, exception text and another tenant's name;
- for a 2xx with a documented model (InferResponse, ModelMetadataResponse, FeedbackAccepted), valid.

The fuzzing tenants own no models, so no write the fuzzer gets through can change what the other e2e
tests see (acme's token, of the tenant owning project-risk, only reads /v2: nothing captured or audited).
The budget is fixed (`max_examples` per route, derandomized: the same cases on every run); the number of
cases run per route class, and of answers per status, is printed at the end.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import http.client
import json
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenantml.api.errors import ErrorBody
from tenantml.api.openapi import _models, openapi_document
from tenantml.resources import ROUTES

pytestmark = pytest.mark.e2e

DOC = openapi_document()
SCHEMAS = DOC["components"]["schemas"]
MODELS = _models()
OPS: list[tuple[str, str, dict[str, Any]]] = [(method.upper(), path, op) for path, ops in DOC["paths"].items()
                                               for method, op in ops.items()]
FUZZ_TENANTS = ("fuzzco", "fuzzbiz")              # own nothing: the fuzzer's writes disturb no other test
OTHER_TENANTS = ("acme", "globex", *FUZZ_TENANTS)
ALL_SCOPES = ("models:read", "models:write", "models:feedback")
NAMES = ("minilm-embed", "work-item-classifier", "project-risk", "no-such-model", "1", "2", "production",
         "latest", "promote", "abort", "freeze", "resume", "_shared", "..", ".", "a" * 300)
# Stack traces and exception text: none may reach a client (unless the client sent the text itself).
LEAKS = ("traceback", 'file "', ".py\"", "exception", "keyerror", "valueerror", "typeerror", "attributeerror",
         "unicodedecodeerror", "unicodeencodeerror", "jsondecodeerror", "binascii", "botocore", "boto3",
         "s3://", "arn:aws", "object at 0x", "<class ", "errno", "recursionerror", "overflowerror")
BUDGET = {"body": 60, "get": 15}                  # hypothesis examples per route
DIRECT_EXAMPLES = 300

TALLY: Counter[str] = Counter()          # cases run per route class
STATUSES: Counter[str] = Counter()       # answers per route class and status


def route_class(method: str, path: str) -> str:
    if path.startswith("/admin"):
        return "admin-write" if method != "GET" else "admin-read"
    if path.endswith(("/infer", "/feedback")):
        return "oip-body"
    return "oip-read" if "health" not in path else "health"


# --- strategies from the document -----------------------------------------------------------------

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                      st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)


def from_schema(schema: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """A strategy for (mostly) valid instances of a JSON Schema, for the subset pydantic emits."""
    if depth > 8:
        return json_leaf
    if "$ref" in schema:
        return st.deferred(lambda: from_schema(SCHEMAS[schema["$ref"].rsplit("/", 1)[1]], depth + 1))
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return st.one_of([from_schema(s, depth + 1) for s in schema[key]])
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema({**schema, "type": k}, depth) for k in kind])
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        lo = schema.get("minimum", schema.get("exclusiveMinimum", -2**40 - 1) + 1)
        hi = schema.get("maximum", schema.get("exclusiveMaximum", 2**40 + 1) - 1)
        return st.integers(int(lo), int(hi))
    if kind == "number":
        return st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False, allow_infinity=False)
    if kind == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True).filter(lambda s: len(s) <= 300)
        lo = schema.get("minLength", 0)
        return st.text(min_size=lo, max_size=max(lo, min(schema.get("maxLength", 24), 24)))
    if kind == "array":
        lo = schema.get("minLength", schema.get("minItems", 0))
        items = from_schema(schema.get("items", {}), depth + 1)
        return st.lists(items, min_size=lo, max_size=max(lo, min(schema.get("maxItems", 3), 3)))
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        required = set(schema.get("required", ()))
        extra = schema.get("additionalProperties")
        sub = {k: from_schema(v, depth + 1) for k, v in props.items()}
        base = st.fixed_dictionaries({k: v for k, v in sub.items() if k in required},
                                     optional={k: v for k, v in sub.items() if k not in required})
        if isinstance(extra, dict) and not props:
            return st.dictionaries(st.text(min_size=1, max_size=12), from_schema(extra, depth + 1),
                                   max_size=3)
        return base
    return json_value


# OIP requests that often fit the example models (text BYTES inputs, FP32 features), to reach decoding.
oip_plausible = st.fixed_dictionaries(
    {"inputs": st.lists(st.fixed_dictionaries({
        "name": st.sampled_from(["text", "features", "input_ids", "x"]),
        "shape": st.lists(st.integers(-1, 4), min_size=1, max_size=3),
        "datatype": st.sampled_from(["BYTES", "FP32", "INT64", "BOOL", "FP16", "UINT8"]),
        "data": st.one_of(st.lists(st.text(max_size=30), max_size=4),
                          st.lists(st.floats(width=32, allow_nan=False), max_size=6),
                          st.lists(st.integers(-2**64, 2**64), max_size=4), json_value)}),
        min_size=1, max_size=2)},
    optional={"id": st.text(max_size=40), "parameters": st.dictionaries(
        st.sampled_from(["binary_data_output", "x"]), json_value, max_size=2),
        "outputs": st.lists(st.fixed_dictionaries({"name": st.text(min_size=1, max_size=12)}), max_size=2)})


# Requests the shared text models (input `text`, BYTES [-1]) accept, or nearly: texts with any code point,
# lone surrogates included (sent escaped, or as invalid UTF-8), empty texts, long ones.
surrogate = st.integers(0xD800, 0xDFFF).map(chr)       # hypothesis' text() never draws these
texts = st.lists(st.one_of(st.text(max_size=40), st.lists(st.one_of(surrogate, st.characters()), min_size=1,
                                                          max_size=6).map("".join),
                           st.integers(500, 5000).map(lambda n: "word " * n)), min_size=1, max_size=4)
oip_text = texts.flatmap(lambda data: st.fixed_dictionaries(
    {"inputs": st.just([{"name": "text", "shape": [len(data)], "datatype": "BYTES", "data": data}])},
    optional={"id": st.text(max_size=40), "outputs": st.lists(st.fixed_dictionaries(
        {"name": st.sampled_from(["embedding", "label", "x"])}, optional={"parameters": st.fixed_dictionaries(
            {"binary_data": st.one_of(st.booleans(), json_leaf)})}), max_size=2),
        "parameters": st.fixed_dictionaries({"binary_data_output": st.one_of(st.booleans(), json_leaf)})}))


feedback_plausible = st.fixed_dictionaries({"feedback": st.one_of(
    st.lists(st.fixed_dictionaries({"id": st.from_regex(r"[\x21-\x7e]{1,40}", fullmatch=True),
                                    "label": st.text(min_size=1, max_size=20)},
                                   optional={"index": st.integers(0, 10)}), min_size=1, max_size=5),
    st.lists(st.fixed_dictionaries({"id": st.just(str(uuid.uuid4())),
                                    "value": st.floats(allow_nan=False, allow_infinity=False)}),
             min_size=1, max_size=5))})


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[Any]) -> Any:
    """A valid-ish value with one defect: a key dropped, added or retyped, a lone surrogate, a huge number."""
    value = draw(base)
    if not isinstance(value, dict) or not value:
        return value
    key = draw(st.sampled_from(sorted(value)))
    how = draw(st.sampled_from(["drop", "retype", "add", "surrogate", "huge", "nest"]))
    value = dict(value)
    if how == "drop":
        value.pop(key)
    elif how == "retype":
        value[key] = draw(json_value)
    elif how == "add":
        value[draw(st.text(min_size=1, max_size=10))] = draw(json_value)
    elif how == "surrogate":
        value[key] = draw(st.sampled_from(["\ud800", "a\udfff", "\udc80x", "\ud83d"]))
    elif how == "huge":
        value[key] = draw(st.sampled_from([10 ** 400, -(10 ** 400), 2 ** 64, 1.7976931348623157e308]))
    else:
        value[key] = [[[[[[[[[[value.get(key)]]]]]]]]]]
    return value


def dump(value: Any, ascii_only: bool) -> bytes:
    text = json.dumps(value, ensure_ascii=ascii_only)
    return text.encode("utf-8", "surrogatepass")     # non-ASCII mode: lone surrogates as invalid UTF-8


raw_bodies = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"{\"a\": \"\xff\"}", b"\x00", b"NaN",
                     b"{\"inputs\": Infinity}", b"1e999", b"-1e999", b"1" * 5000, b"[]", b"null", b"\"s\"",
                     b"{\"feedback\": [{\"id\": \"x\", \"value\": 1e999}]}"]),
    st.integers(1, 60_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 5_000).map(lambda n: b"{\"a\":" * n + b"1" + b"}" * n),
    st.text(max_size=40).map(lambda s: s.encode("utf-8", "surrogatepass")),
)


def body_strategy(op: dict[str, Any], path: str) -> st.SearchStrategy[bytes | None]:
    ref = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    schema_based = from_schema(ref) if ref else json_value
    if path.endswith("/infer"):
        schema_based = st.one_of(oip_text, schema_based, oip_plausible)
    values = st.one_of(schema_based, mutated(schema_based), json_value)
    dumped = st.builds(dump, values, st.booleans())
    return st.one_of(dumped, dumped, raw_bodies, st.none())


@st.composite
def encoded(draw: st.DrawFn, body: bytes | None) -> tuple[bytes | None, dict[str, str]]:
    """The body as sent, with its Content-Encoding, Content-Type and binary-extension headers."""
    headers: dict[str, str] = {}
    ctype = draw(st.sampled_from([None, "application/json", "application/json; charset=utf-8", "text/plain",
                                  "application/octet-stream", "multipart/form-data; boundary=x", "x/\xe9"]))
    if ctype:
        headers["Content-Type"] = ctype
    coding = draw(st.sampled_from([None, None, "gzip", "deflate", "raw-deflate", "liar-gzip", "truncated",
                                   "bomb", "br", "identity", "GZIP , x", ""]))
    if coding is not None and body is not None:
        if coding == "gzip":
            body = gzip.compress(body)
        elif coding == "deflate":
            body = zlib.compress(body)
        elif coding == "raw-deflate":
            obj = zlib.compressobj(wbits=-15)
            body, coding = obj.compress(body) + obj.flush(), "deflate"
        elif coding == "truncated":
            body, coding = gzip.compress(body)[:-6], "gzip"
        elif coding == "bomb":
            body, coding = gzip.compress(b"{\"a\":\"" + b"0" * 3_000_000 + b"\"}"), "gzip"
        elif coding == "liar-gzip":
            coding = "gzip"
        headers["Content-Encoding"] = coding
    if draw(st.integers(0, 5)) == 0:
        headers["Inference-Header-Content-Length"] = draw(st.one_of(
            st.integers(0, len(body or b"") + 3).map(str),
            st.sampled_from(["-1", "١٢", "²", "1e3", "9" * 30, "", " 5", "0x10"])))
    if draw(st.integers(0, 7)) == 0:
        headers["Idempotency-Key"] = draw(st.sampled_from(["k", "x" * 300, "é", "a b", str(uuid.uuid4())]))
    return body, headers


segment = st.one_of(
    st.sampled_from(NAMES).map(lambda s: quote(s, safe="")),
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=30).map(lambda s: quote(s, safe="")),
    st.binary(min_size=1, max_size=6).map(lambda b: "".join(f"%{x:02X}" for x in b)),
    st.integers(300, 3000).map(lambda n: "b" * n),
)
PARAMS = {"model": st.sampled_from(["minilm-embed", "work-item-classifier", "project-risk"]),
          "version": st.sampled_from(["1", "production", "2"]),
          "action": st.sampled_from(["promote", "abort", "freeze", "resume"]),
          "alias": st.sampled_from(["production", "staging"])}
odd_numbers = st.one_of(st.integers(-5, 200).map(str), st.sampled_from(
    ["١", "١٢", "²", "٣٠", "1.5", "1e2", "", " 3", "99999999999999999999999", "0x10", "+5", "-0"]))


@st.composite
def query(draw: st.DrawFn, op: dict[str, Any]) -> str:
    pairs: list[tuple[str, str]] = []
    for param in op.get("parameters", ()):
        if param["in"] != "query" or not draw(st.booleans()):
            continue
        name = param["name"]
        if name == "limit":
            values = odd_numbers
        elif name == "owner":
            values = st.sampled_from(["_shared", "acme", "", "_SHARED", "globex", "_shared "])
        else:
            values = st.one_of(st.text(max_size=40), st.sampled_from(["abc", "=" * 5, "e30", "A" * 3000]))
        pairs += [(name, v) for v in draw(st.lists(values, min_size=1, max_size=2))]
    if draw(st.integers(0, 6)) == 0:
        pairs.append((draw(st.text(min_size=1, max_size=8)), draw(st.text(max_size=8))))
    text = urlencode(pairs, encoding="utf-8", errors="surrogatepass")
    if draw(st.integers(0, 8)) == 0:
        text += ("&" if text else "") + "limit=%FF%FE&next_token=%ED%A0%80"
    return text


# --- sending and checking --------------------------------------------------------------------------


class Sent:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body


def send(base_url: str, method: str, target: str, body: bytes | None, headers: dict[str, str]) -> Sent:
    """One request with exactly these headers (http.client adds Host and Content-Length only)."""
    url = urlsplit(base_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v.encode("latin-1", "replace"))
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        if (resp.getheader("Content-Encoding") or "").lower() == "gzip":
            data = gzip.decompress(data)
        elif (resp.getheader("Content-Encoding") or "").lower() == "deflate":
            data = zlib.decompress(data)
        return Sent(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def check(op: dict[str, Any] | None, status: int, content_type: str, body: bytes, request_text: str,
          caller: str | None, where: str) -> None:
    """The properties every answer has (see the module docstring)."""
    assert status < 500, f"{where}: {status} {body[:300]!r}"
    if op is not None:
        assert str(status) in op["responses"] or status == 404, \
            f"{where}: status {status} is not documented for {op['operationId']}: {body[:200]!r}"
    text = body.decode("utf-8", "replace").lower()
    sent = request_text.lower()
    for marker in LEAKS:
        assert marker not in text or marker in sent, f"{where}: {marker!r} in the answer: {body[:300]!r}"
    for tenant in OTHER_TENANTS:
        if tenant != caller:
            assert tenant not in text or tenant in sent, f"{where}: tenant {tenant} leaked: {body[:300]!r}"
    if status >= 400:
        assert content_type.split(";")[0].strip() == "application/json", f"{where}: {content_type}"
        ErrorBody.model_validate_json(body)     # exactly {"error": string}
    elif op is not None and 200 <= status < 300 and content_type.startswith("application/json"):
        schema = op["responses"].get(str(status), {}).get("content", {}).get("application/json", {}).get(
            "schema", {})
        if "$ref" in schema:
            MODELS[schema["$ref"].rsplit("/", 1)[1]].model_validate_json(body)
        else:
            json.loads(body)


@pytest.fixture(scope="module")
def tokens(platform) -> dict[str, tuple[str | None, str | None]]:
    """kind -> (token, tenant)."""
    a, b = FUZZ_TENANTS
    return {
        "none": (None, None),
        "garbage": ("not.a.jwt", None),
        f"{a}-all": (platform.token(a, ALL_SCOPES), a),
        f"{a}-read": (platform.token(a, ["models:read"]), a),
        f"{b}-all": (platform.token(b, ALL_SCOPES), b),
        f"{b}-feedback": (platform.token(b, ["models:feedback"]), b),
        f"{b}-admin": (platform.token(b, ["models:write", "models:admin"]), b),
        "expired": (platform.token(a, ALL_SCOPES, ttl=60, now=time.time() - 3600), a),
        "acme-read": (platform.token("acme", ["models:read"]), "acme"),
    }


@pytest.fixture(scope="module", autouse=True)
def report(request) -> Iterator[None]:
    started = time.monotonic()
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"fuzz: {sum(TALLY.values())} cases in {time.monotonic() - started:.1f} s: "
             + ", ".join(f"{k} {v}" for k, v in sorted(TALLY.items())),
             "fuzz: answers: " + ", ".join(f"{k} {v}" for k, v in sorted(STATUSES.items()))]
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        for line in lines:
            if reporter is not None:
                reporter.write_line(line)
            else:
                print(line)


def _op_id(op: tuple[str, str, dict[str, Any]]) -> str:
    return f"{op[0]} {op[1]}"


@pytest.mark.parametrize("case", OPS, ids=_op_id)
def test_every_route_answers_in_the_documented_shape(case, platform, tokens):
    method, route_path, op = case
    budget = BUDGET["body"] if "requestBody" in op else BUDGET["get"]
    # acme (who owns project-risk) only reads /v2: no capture, and no refusal in its audit log
    reads = method == "GET" and route_path.startswith("/v2")
    token_kinds = sorted(k for k in tokens if reads or k != "acme-read")
    scope = op.get("x-tenantml-scope")
    right = [k for k in token_kinds if k.endswith("-all") or (scope == "models:read" and k.endswith("-read"))
             or (scope == "models:feedback" and k.endswith("-feedback"))
             or (scope == "models:write" and k.endswith("-admin"))]
    tokens_drawn = st.one_of(st.sampled_from(right or token_kinds), st.sampled_from(token_kinds))
    params = [p["name"] for p in op.get("parameters", ()) if p["in"] == "path"]

    @settings(max_examples=budget, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        values = {p: data.draw(st.one_of(PARAMS.get(p, segment), segment), label=p) for p in params}
        path = route_path
        for name, value in values.items():
            path = path.replace("{" + name + "}", value)
        qs = data.draw(query(op), label="query")
        body, headers = (None, {})
        if "requestBody" in op:
            body, headers = data.draw(encoded(data.draw(body_strategy(op, route_path), label="body")),
                                      label="encoded")
        token, tenant = tokens[data.draw(tokens_drawn, label="token")]
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        target = path + (f"?{qs}" if qs else "")
        resp = send(platform.base_url, method, target, body, headers)
        TALLY[route_class(method, route_path)] += 1
        STATUSES[f"{route_class(method, route_path)}:{resp.status}"] += 1
        request_text = target + " " + (body or b"")[:100_000].decode("utf-8", "replace") + " " + \
            (body or b"")[:100_000].decode("latin-1")
        check(op, resp.status, resp.headers.get("content-type", ""), resp.body, request_text, tenant,
              f"{method} {target[:200]}")

    run()


# --- straight into the handlers: events API Gateway would never send, that a Lambda can still get ------

event_bodies = st.one_of(
    st.sampled_from(["@@@", "abc", "e30", "e30=\n", "%%%", "=" * 8, "\ud800", "é"]).map(lambda s: (s, True)),
    st.binary(max_size=40).map(lambda b: (base64.b64encode(b).decode(), True)),        # not UTF-8 inside
    st.sampled_from([b"\xff\xfe", b"\xed\xa0\x80", b'{"version": "\xff"}', b'{"reason":"\\ud800"}']).map(
        lambda b: (base64.b64encode(b).decode(), True)),
    st.text(max_size=30).map(lambda s: (s, False)),                                     # lone surrogates too
    st.sampled_from(['{"version":"\ud800"}', '{"inputs":"\udfff"}', '{"feedback":[{"id":"\ud800"}]}',
                     '{"reason":"\udc00"}']).map(lambda s: (s, False)),
    st.tuples(st.one_of(st.integers(), st.lists(st.integers(), max_size=2), st.dictionaries(
        st.text(max_size=3), st.integers(), max_size=2), st.booleans()),
        st.sampled_from([True, False, "true", 1])),
)
event_headers = st.one_of(
    st.none(), st.just({}),
    st.dictionaries(st.sampled_from(["Content-Encoding", "content-encoding", "Content-Type",
                                     "Idempotency-Key", "Inference-Header-Content-Length"]),
                    st.one_of(st.sampled_from(["gzip", "deflate", "br", "١٢", "-1", "12"]),
                              st.text(max_size=8)),
                    max_size=3))


def _event(flavour: str, route: Any, concrete: str, params: dict[str, str], tenant: str, scopes: str,
           body: Any, b64: Any, headers: Any, query: dict[str, str] | None) -> dict[str, Any]:
    ctx = {"tenant_id": tenant, "sub": "fuzz", "scopes": scopes, "valid_until": str(int(time.time()) + 600)}
    if flavour == "http":
        return {"version": "2.0", "routeKey": f"{route.method} {route.path}", "rawPath": f"/v1{concrete}",
                "rawQueryString": urlencode(query or {}, errors="surrogatepass"), "headers": headers,
                "queryStringParameters": query, "pathParameters": params or None,
                "requestContext": {"http": {"method": route.method, "path": f"/v1{concrete}",
                                            "sourceIp": "127.0.0.1", "protocol": "HTTP/1.1",
                                            "userAgent": "fuzz"},
                                   "routeKey": f"{route.method} {route.path}", "stage": "v1",
                                   "requestId": str(uuid.uuid4()), "authorizer": {"lambda": ctx},
                                   "accountId": "123456789012", "apiId": "fuzz", "domainName": "localhost"},
                "body": body, "isBase64Encoded": b64}
    multi = {k: [v] for k, v in headers.items()} if isinstance(headers, dict) else None
    return {"resource": route.path, "path": concrete, "httpMethod": route.method, "headers": headers,
            "multiValueHeaders": multi, "queryStringParameters": query,
            "multiValueQueryStringParameters": {k: [v] for k, v in (query or {}).items()} or None,
            "pathParameters": params or None, "stageVariables": None,
            "requestContext": {"resourcePath": route.path, "httpMethod": route.method,
                               "path": f"/v1{concrete}", "stage": "v1", "requestId": str(uuid.uuid4()),
                               "authorizer": ctx,
                               "identity": {"sourceIp": "127.0.0.1"}, "accountId": "123456789012"},
            "body": body, "isBase64Encoded": b64}


@settings(max_examples=DIRECT_EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(route=st.sampled_from([r for r in ROUTES if r.auth]), flavour=st.sampled_from(["rest", "http"]),
       body=event_bodies, headers=event_headers, tenant=st.sampled_from(FUZZ_TENANTS),
       scopes=st.sampled_from([" ".join(ALL_SCOPES), "models:read", "", "models:write models:admin"]),
       names=st.lists(st.sampled_from(NAMES[:8]) | st.text(min_size=1, max_size=12), min_size=2, max_size=2),
       query=st.one_of(st.none(), st.dictionaries(st.sampled_from(["limit", "owner", "next_token"]),
                                                  st.one_of(odd_numbers, st.text(max_size=10)), max_size=2)))
def test_handlers_answer_odd_events_with_client_errors(platform, route, flavour, body, headers, tenant,
                                                       scopes, names, query):
    placeholders = [p.strip("{}") for p in route.path.split("/") if p.startswith("{")]
    params = dict(zip(placeholders, names, strict=False))
    concrete = route.path
    for k, v in params.items():
        concrete = concrete.replace("{" + k + "}", v)
    event = _event(flavour, route, concrete, params, tenant, scopes, body[0], body[1], headers, query)
    out = platform.emulator.functions[route.function].invoke(event)   # FunctionError if the handler raised
    TALLY[f"direct-{flavour}"] += 1
    STATUSES[f"direct:{out.get('statusCode')}"] += 1
    assert isinstance(out, dict) and isinstance(out.get("statusCode"), int), out
    raw = out.get("body") or ""
    data = base64.b64decode(raw) if out.get("isBase64Encoded") else raw.encode("utf-8", "surrogatepass")
    headers_out = {k.lower(): v for k, v in (out.get("headers") or {}).items()}
    for k, v in (out.get("multiValueHeaders") or {}).items():
        headers_out[k.lower()] = v[-1]
    request_text = json.dumps(event)
    check(None, out["statusCode"], headers_out.get("content-type", ""), data, request_text, tenant,
          f"{flavour} {route.method} {route.path} body={body!r:.80}")


# --- valid-ish requests that reach the models (the per-route fuzzer rarely lines every part up) --------

OP_BY_KEY = {(m, p): op for m, p, op in OPS}


@settings(max_examples=80, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(data=st.data(), model=st.sampled_from(["minilm-embed", "work-item-classifier"]),
       route=st.sampled_from(["/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer",
                              "/v2/models/{model}/feedback"]),
       tenant=st.sampled_from(FUZZ_TENANTS), ascii_only=st.booleans(),
       coding=st.sampled_from([None, "gzip", "deflate"]),
       accept=st.sampled_from([None, "gzip", "deflate, br"]))
def test_text_models_answer_valid_ish_requests(platform, tokens, data, model, route, tenant, ascii_only,
                                               coding, accept):
    op = OP_BY_KEY[("POST", route)]
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    base = oip_text if route.endswith("/infer") else st.one_of(feedback_plausible, from_schema(schema))
    body = dump(data.draw(st.one_of(base, mutated(base)), label="body"), ascii_only)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {tokens[tenant + '-all'][0]}"}
    if coding:
        body = gzip.compress(body) if coding == "gzip" else zlib.compress(body)
        headers["Content-Encoding"] = coding
    if accept:
        headers["Accept-Encoding"] = accept
    path = route.replace("{model}", model).replace("{version}", data.draw(
        st.sampled_from(["1", "production"]), label="version"))
    resp = send(platform.base_url, "POST", path, body, headers)
    TALLY["valid-ish"] += 1
    STATUSES[f"valid-ish:{resp.status}"] += 1
    check(op, resp.status, resp.headers.get("content-type", ""), resp.body,
          path + " " + body.decode("utf-8", "replace"), tenant, f"POST {path} {body[:120]!r}")
