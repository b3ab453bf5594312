"""authorize(): the three outcomes and both policy shapes; policy_allows(): API Gateway's evaluation."""

from __future__ import annotations

import json
import logging

import jwt
import pytest
from aws_lambda_powertools.utilities.data_classes.api_gateway_authorizer_event import (
    APIGatewayAuthorizerResponse,
)
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tenantml.auth import Claims, DenyReason, InvalidToken, JwksUnavailable, MissingToken
from tenantml.auth.jwks import JwksCache, JwksError, StaticJwksSource
from tenantml.auth.policy import (
    allow_policy,
    authorize,
    bearer_token,
    deny_policy,
    policy_allows,
    stage_arn,
)
from tenantml.auth.verifier import TokenVerifier
from tenantml.errors import Unauthorized

ISS, AUD, NOW = "https://issuer.example.com/", "tenantml", 1_800_000_000.0
ARN = "arn:aws:execute-api:eu-west-1:123456789012:abcdef1234/prod/POST/v2/models/clf/infer"
STAGE = "arn:aws:execute-api:eu-west-1:123456789012:abcdef1234/prod/*/*"


@pytest.fixture(scope="module")
def keys():
    return (rsa.generate_private_key(public_exponent=65537, key_size=2048),
            ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture(scope="module")
def verifier(keys):
    rsa_key, ec_key = keys
    jwks = {"keys": [{**RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True), "kid": "r"},
                     {**ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True), "kid": "e"}]}
    cache = JwksCache(StaticJwksSource(json.dumps(jwks)), clock=lambda: 0.0)
    return TokenVerifier(cache, issuer=ISS, audience=AUD, clock=lambda: NOW)


def token(keys, alg="RS256", **over):
    payload = {"iss": ISS, "aud": AUD, "sub": "user-7", "tenant_id": "acme",
               "scope": "models:write models:read", "iat": int(NOW), "exp": int(NOW) + 300, **over}
    key, kid = (keys[0], "r") if alg == "RS256" else (keys[1], "e")
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid})


def event(authorization: str | None = None, *, header: str = "Authorization", method_arn: str = ARN,
          multi: list[str] | None = None) -> dict:
    headers = {"Accept": "application/json"}
    if authorization is not None:
        headers[header] = authorization
    ev = {"type": "REQUEST", "methodArn": method_arn, "httpMethod": "POST", "headers": headers,
          "multiValueHeaders": {k: [v] for k, v in headers.items()}}
    if multi is not None:
        ev["multiValueHeaders"][header] = multi
    return ev


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(f"{r.getMessage()} {json.dumps(r.__dict__, default=str)}" for r in self.records)


@pytest.fixture
def logs():
    log = logging.getLogger("tenantml.auth.policy")
    handler, old_level = Records(), log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    yield handler
    log.removeHandler(handler)
    log.setLevel(old_level)


# -- allow ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_allow_is_stage_wide_with_string_context(keys, verifier, logs, alg):
    tok = token(keys, alg)
    resp = authorize(event(f"Bearer {tok}"), verifier)
    assert resp == {
        "principalId": "user-7",
        "policyDocument": {"Version": "2012-10-17", "Statement": [
            {"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": [STAGE]}]},
        "context": {"tenant_id": "acme", "sub": "user-7", "scopes": "models:read models:write",
                    "valid_until": str(int(NOW) + 300 + 60)},          # exp + the verifier's leeway
    }
    assert all(isinstance(v, str) for v in resp["context"].values())
    (rec,) = logs.records
    assert (rec.getMessage(), rec.tenant, rec.sub) == ("authorizer allow", "acme", "user-7")
    assert tok not in logs.text()


def test_allow_shape_equals_powertools_allow_all_routes(keys, verifier):
    ours = authorize(event(f"Bearer {token(keys)}"), verifier)
    pt = APIGatewayAuthorizerResponse.from_route_arn(ARN, principal_id="user-7", context=ours["context"])
    pt.allow_all_routes()
    assert ours == pt.asdict()


@pytest.mark.parametrize(("header", "value"), [
    ("authorization", "Bearer {t}"), ("AUTHORIZATION", "Bearer {t}"), ("Authorization", "bearer {t}"),
    ("Authorization", "BEARER {t}"), ("Authorization", "  Bearer   {t}  "), ("Authorization", "Bearer\t{t}"),
])
def test_header_name_and_scheme_are_case_insensitive(keys, verifier, header, value):
    resp = authorize(event(value.format(t=token(keys)), header=header), verifier)
    assert resp["policyDocument"]["Statement"][0]["Effect"] == "Allow"


def test_now_is_passed_to_the_verifier(keys, verifier):
    resp = authorize(event(f"Bearer {token(keys)}"), verifier, now=NOW + 3600)
    assert resp == deny_policy()


# -- deny ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("make", "reason"), [
    (lambda k: token(k, exp=int(NOW) - 120), "expired"),
    (lambda k: token(k, aud="someone-else"), "wrong_audience"),
    (lambda k: token(k, iss="https://evil/"), "wrong_issuer"),
    (lambda k: token(k, tenant_id="_shared"), "shared_tenant"),
    (lambda k: jwt.encode({"tenant_id": "acme"}, "secret-secret-secret-secret-32b!", algorithm="HS256",
                          headers={"kid": "r"}), "alg_not_allowed"),
    (lambda k: "not-a-jwt", "malformed_token"),
    (lambda k: token(k)[:-4] + "AAAA", "bad_signature"),
])
def test_invalid_token_gets_an_explicit_deny_and_a_logged_reason(keys, verifier, logs, make, reason):
    tok = make(keys)
    resp = authorize(event(f"Bearer {tok}"), verifier)
    assert resp == {
        "principalId": "anonymous",
        "policyDocument": {"Version": "2012-10-17", "Statement": [
            {"Action": "execute-api:Invoke", "Effect": "Deny", "Resource": ["*"]}]},
    }
    assert "context" not in resp
    (rec,) = logs.records
    assert (rec.getMessage(), rec.reason) == ("authorizer deny", reason)
    assert rec.levelno == logging.WARNING
    assert tok not in logs.text()


def test_deny_log_names_the_tenant_only_when_the_signature_was_valid(keys, verifier, logs):
    authorize(event(f"Bearer {token(keys, exp=int(NOW) - 600)}"), verifier)  # genuine but expired
    forged = token(keys, tenant_id="globex")[:-4] + "AAAA"  # bad signature: its claims are not trusted
    authorize(event(f"Bearer {forged}"), verifier)
    assert [(r.reason, r.tenant) for r in logs.records] == [("expired", "acme"), ("bad_signature", "-")]


@pytest.mark.parametrize("bad_arn", [None, "", "arn:aws:lambda:us-east-1:123456789012:function:x",
                                     "arn:aws:execute-api:us-east-1:123:abc/prod/GET/x",
                                     "arn:aws:execute-api:us-east-1:123456789012:abc"])
def test_malformed_method_arn_denies(keys, verifier, logs, bad_arn):
    assert authorize(event(f"Bearer {token(keys)}", method_arn=bad_arn), verifier) == deny_policy()
    assert (logs.records[-1].reason, logs.records[-1].tenant) == ("bad_method_arn", "acme")  # verified token


@pytest.mark.parametrize("other", [{"Records": [{"body": "{}"}]}, {"detail-type": "Scheduled Event"},
                                   {"type": "COGNITO", "methodArn": ARN}])
def test_an_event_that_is_not_an_authorizer_event_is_denied_as_malformed(verifier, logs, other):
    assert authorize(other, verifier) == deny_policy()
    assert (logs.records[-1].reason, logs.records[-1].tenant) == ("malformed_token", "-")


@pytest.mark.parametrize("value", ["Bearer a.b.c d.e.f", "Bearer a b"])
def test_bearer_value_with_several_parts_is_denied(verifier, value):
    assert authorize(event(value), verifier) == deny_policy()


def test_several_authorization_headers_are_denied(keys, verifier):
    tok = token(keys)
    ev = event(f"Bearer {tok}", multi=[f"Bearer {tok}", "Bearer other"])
    assert authorize(ev, verifier) == deny_policy()
    ev = event(f"Bearer {tok}")
    ev["headers"]["authorization"] = "Bearer other"
    assert authorize(ev, verifier) == deny_policy()


# -- 401 -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [None, "", "   ", "Bearer", "Bearer   ", "Basic dXNlcjpwYXNz", "Token abc",
                                   "Bearerabc.def.ghi"])
def test_no_bearer_token_raises_unauthorized_for_a_401(verifier, logs, value):
    with pytest.raises(MissingToken) as info:
        authorize(event(value), verifier)
    assert str(info.value) == "Unauthorized"  # the exact message API Gateway maps to 401
    assert isinstance(info.value, Unauthorized) and info.value.status == 401
    assert logs.records[-1].reason == "missing_token"


def test_event_without_headers_raises_unauthorized(verifier):
    with pytest.raises(MissingToken):
        authorize({"type": "REQUEST", "methodArn": ARN, "headers": None}, verifier)
    with pytest.raises(MissingToken):
        authorize({"type": "REQUEST", "methodArn": ARN}, verifier)


def keys_down() -> TokenVerifier:
    """A verifier whose JWKS cannot be fetched."""
    class Down:
        def fetch(self):
            raise JwksError("down")

    return TokenVerifier(JwksCache(Down(), clock=lambda: 0.0), issuer=ISS, audience=AUD, clock=lambda: NOW)


def test_keys_unavailable_is_raised_not_denied(keys):
    with pytest.raises(JwksUnavailable):
        authorize(event(f"Bearer {token(keys)}"), keys_down())


def test_bearer_token_extracts_exactly_the_token():
    assert bearer_token(event("Bearer abc.def.ghi")) == "abc.def.ghi"
    with pytest.raises(InvalidToken) as info:
        bearer_token(event("Bearer a b"))
    assert info.value.reason is DenyReason.MALFORMED_TOKEN


# -- policy shapes and evaluation ----------------------------------------------------------------------

def test_stage_arn():
    assert stage_arn(ARN) == STAGE
    assert stage_arn("arn:aws:execute-api:us-east-1:123456789012:abc123/test/GET/") == \
        "arn:aws:execute-api:us-east-1:123456789012:abc123/test/*/*"
    assert stage_arn("arn:aws-cn:execute-api:cn-north-1:123456789012:abc/v1/*/x") == \
        "arn:aws-cn:execute-api:cn-north-1:123456789012:abc/v1/*/*"
    with pytest.raises(ValueError, match="^not an execute-api method ARN$"):
        stage_arn("arn:aws:lambda:us-east-1:123456789012:function:x")


def test_allow_policy_context_scopes_are_sorted_and_space_joined():
    claims = Claims("acme", "u", frozenset({"b", "a", "c"}), raw={})
    assert allow_policy(claims, ARN)["context"] == {"tenant_id": "acme", "sub": "u", "scopes": "a b c"}
    assert allow_policy(Claims("acme", "u", frozenset(), raw={}), ARN)["context"]["scopes"] == ""


def route(verb: str, path: str, *, stage="prod", api="abcdef1234", region="eu-west-1",
          account="123456789012") -> str:
    return f"arn:aws:execute-api:{region}:{account}:{api}/{stage}/{verb}{path}"


@pytest.fixture
def allow():
    return allow_policy(Claims("acme", "u", frozenset(), raw={}), ARN)


@pytest.mark.parametrize("target", [
    route("POST", "/v2/models/clf/infer"), route("GET", "/v2/models"), route("GET", "/"),
    route("POST", "/admin/models/x/rollout/promote"), route("DELETE", "/v2/models/a/versions/3"),
])
def test_cached_allow_covers_every_route_of_the_stage(allow, target):
    assert policy_allows(allow, target)


@pytest.mark.parametrize("target", [
    route("GET", "/v2/models", stage="dev"), route("GET", "/v2/models", api="zzzzzz9999"),
    route("GET", "/v2/models", region="us-east-1"), route("GET", "/v2/models", account="210987654321"),
    "arn:aws:execute-api:eu-west-1:123456789012:abcdef1234/prod", "", "*",
])
def test_cached_allow_does_not_leave_the_stage(allow, target):
    assert not policy_allows(allow, target)


def test_deny_policy_denies_everything():
    assert not policy_allows(deny_policy(), ARN)
    assert not policy_allows(deny_policy(), route("GET", "/v2/health/live"))


def test_explicit_deny_beats_allow():
    pol = {"policyDocument": {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "execute-api:Invoke", "Resource": STAGE},
        {"Effect": "Deny", "Action": "execute-api:*", "Resource": [route("*", "/admin/*")]},
    ]}}
    assert policy_allows(pol, route("GET", "/v2/models"))
    assert not policy_allows(pol, route("POST", "/admin/models/m/versions"))


def test_method_scoped_policy_with_powertools_builder():
    pt = APIGatewayAuthorizerResponse.from_route_arn(ARN, principal_id="u")
    pt.allow_route("GET", "/v2/models")
    pt.allow_route("POST", "/v2/models/*/infer")
    pol = pt.asdict()
    assert policy_allows(pol, route("GET", "/v2/models"))
    assert policy_allows(pol, route("POST", "/v2/models/clf/infer"))
    assert not policy_allows(pol, route("POST", "/v2/models"))
    assert not policy_allows(pol, route("GET", "/v2/models/clf"))


@pytest.mark.parametrize(("statement", "expected"), [
    ({"Effect": "Allow", "Action": "execute-api:*", "Resource": "*"}, True),
    ({"Effect": "Allow", "Action": "*", "Resource": ["x", STAGE]}, True),
    ({"Effect": "Allow", "Action": "EXECUTE-API:invoke", "Resource": STAGE}, True),   # actions: any case
    ({"Effect": "Allow", "Action": "execute-api:Invoke", "Resource": STAGE.upper()}, False),  # ARNs: exact
    ({"Effect": "Allow", "Action": "execute-api:ManageConnections", "Resource": STAGE}, False),
    ({"Effect": "Allow", "Action": "execute-api:Invoke",
      "Resource": "arn:aws:execute-api:eu-west-1:123456789012:abcdef1234/pro?/POST/*"}, True),
    ({"Effect": "Allow", "Action": "execute-api:Invoke",
      "Resource": "arn:aws:execute-api:eu-west-1:123456789012:abcdef1234/prod/GET/*"}, False),
    ({"Effect": "Allow", "Action": "execute-api:Invoke", "Resource": STAGE,
      "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}}, False),  # cannot evaluate: ignored
    ({"Effect": "Allow", "NotAction": "s3:*", "Resource": STAGE}, False),
    ({"Effect": "allow", "Action": "execute-api:Invoke", "Resource": STAGE}, False),  # Effect is exact
    ({"Effect": "Allow", "Action": "execute-api:Invoke"}, False),
    ({"Effect": "Allow", "Action": "execute-api:Invoke", "Resource": 42}, False),
])
def test_statement_evaluation(statement, expected):
    assert policy_allows({"policyDocument": {"Statement": [statement]}}, ARN) is expected


@pytest.mark.parametrize("deny", [
    # names another method only: it is the Condition (which cannot be evaluated) that makes it apply
    {"Effect": "Deny", "Action": "execute-api:Invoke", "Resource": STAGE.replace("/*/*", "/GET/other"),
     "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
    # names this request too: a Deny statement with a Condition is never skipped
    {"Effect": "Deny", "Action": "execute-api:Invoke", "Resource": STAGE,
     "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
])
def test_conditional_deny_applies(deny):
    allow = {"Effect": "Allow", "Action": "execute-api:Invoke", "Resource": STAGE}
    assert policy_allows({"Statement": [allow]}, ARN)
    assert policy_allows({"Statement": [allow, {k: v for k, v in deny.items() if k != "Condition"}]},
                         ARN) is (deny["Resource"] != STAGE)
    assert not policy_allows({"Statement": [allow, deny]}, ARN)


def test_bare_policy_document_and_single_statement_object():
    statement = {"Effect": "Allow", "Action": "execute-api:Invoke", "Resource": STAGE}
    assert policy_allows({"Version": "2012-10-17", "Statement": statement}, ARN)


@pytest.mark.parametrize("policy", [None, {}, {"policyDocument": None},
                                    {"policyDocument": {"Statement": "x"}},
                                    {"policyDocument": {"Statement": [None, 3]}}, []])
def test_malformed_policies_allow_nothing(policy):
    assert policy_allows(policy, ARN) is False


# --- the other event shapes: HTTP API payload format 2.0 (simple responses), REST TOKEN events ------

ROUTE_ARN = "arn:aws:execute-api:eu-west-1:123456789012:abcdef1234/prod/POST/v2/models/{model}/infer"


def v2_event(authorization: str | None) -> dict:
    headers = {"accept": "application/json", **({"authorization": authorization} if authorization else {})}
    return {"version": "2.0", "type": "REQUEST", "routeArn": ROUTE_ARN,
            "identitySource": [authorization] if authorization else [],
            "routeKey": "POST /v2/models/{model}/infer", "rawPath": "/prod/v2/models/clf/infer",
            "rawQueryString": "", "headers": headers,
            "requestContext": {"http": {"method": "POST", "path": "/prod/v2/models/clf/infer"},
                               "stage": "prod"}}


def test_http_api_a_valid_token_is_authorized_with_the_functions_context(keys, verifier):
    out = authorize(v2_event(f"Bearer {token(keys)}"), verifier)
    assert out == {"isAuthorized": True, "context": {"tenant_id": "acme", "sub": "user-7",
                                                     "scopes": "models:read models:write",
                                                     "valid_until": str(int(NOW) + 300 + 60)}}


@pytest.mark.parametrize("authorization", [None, "Basic dXNlcjpwYXNz", "Bearer not-a-jwt"])
def test_http_api_anything_else_is_not_authorized_and_carries_no_context(keys, verifier, authorization):
    assert authorize(v2_event(authorization), verifier) == {"isAuthorized": False}


def test_http_api_an_expired_or_foreign_token_is_not_authorized(keys, verifier):
    no = {"isAuthorized": False}
    assert authorize(v2_event(f"Bearer {token(keys, exp=int(NOW) - 120)}"), verifier) == no
    assert authorize(v2_event(f"Bearer {token(keys, iss='https://evil/')}"), verifier) == no


def test_http_api_unreachable_keys_still_raise(keys):
    with pytest.raises(JwksUnavailable):
        authorize(v2_event(f"Bearer {token(keys)}"), keys_down())


def test_rest_token_event_reads_authorization_token(keys, verifier):
    out = authorize({"type": "TOKEN", "authorizationToken": f"Bearer {token(keys)}", "methodArn": ARN},
                    verifier)
    assert out["policyDocument"]["Statement"][0]["Effect"] == "Allow"
    assert out["context"]["tenant_id"] == "acme"
    with pytest.raises(MissingToken):
        authorize({"type": "TOKEN", "authorizationToken": "", "methodArn": ARN}, verifier)
    denied = authorize({"type": "TOKEN", "authorizationToken": "Bearer x.y.z", "methodArn": ARN}, verifier)
    assert denied["policyDocument"]["Statement"][0]["Effect"] == "Deny"


@pytest.mark.parametrize("event", [None, [], "Bearer x", 42])
def test_an_event_that_is_not_an_object_is_denied(verifier, event):
    out = authorize(event, verifier)  # type: ignore[arg-type]
    assert out["policyDocument"]["Statement"][0]["Effect"] == "Deny" and "context" not in out


def test_http_api_now_is_passed_to_the_verifier(keys, verifier):
    """As for the REST API: a token valid by the verifier's clock is refused at a later `now`."""
    assert authorize(v2_event(f"Bearer {token(keys)}"), verifier)["isAuthorized"] is True
    assert authorize(v2_event(f"Bearer {token(keys)}"), verifier, now=NOW + 3600) == {"isAuthorized": False}


ALLOW_STAGE = {"Effect": "Allow", "Action": "execute-api:Invoke", "Resource": STAGE}


@pytest.mark.parametrize(("deny", "allowed"), [
    # actions match in any case, in a Deny as in an Allow
    ({"Effect": "Deny", "Action": "EXECUTE-API:INVOKE", "Resource": ARN}, False),
    # ARNs match exactly, in a Deny as in an Allow: this Deny names another resource
    ({"Effect": "Deny", "Action": "execute-api:Invoke", "Resource": ARN.upper()}, True),
    # NotAction / NotResource cannot be evaluated here: such a Deny applies (fails closed)
    ({"Effect": "Deny", "NotAction": "s3:*", "Resource": "*"}, False),
    ({"Effect": "Deny", "Action": "execute-api:Invoke", "NotResource": ARN}, False),
])
def test_deny_statements_match_like_allows_and_fail_closed(deny, allowed):
    assert policy_allows({"Statement": [ALLOW_STAGE]}, ARN)
    assert policy_allows({"Statement": [ALLOW_STAGE, deny]}, ARN) is allowed


@pytest.mark.parametrize("extra", [{"NotAction": "s3:*"}, {"NotResource": "arn:aws:s3:::x"}])
def test_an_allow_with_not_action_or_not_resource_is_ignored_even_beside_action_and_resource(extra):
    assert policy_allows({"Statement": [{**ALLOW_STAGE, **extra}]}, ARN) is False
