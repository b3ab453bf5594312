"""`-c api=http` on the real app: the platform behind an API Gateway HTTP API instead of the REST API.

The session synth (conftest.py) covers the default REST API; this module synthesizes the app once more
(same runtime-layer bundle cache) with the HTTP API, with cdk-nag, and checks what differs: every route
of tenantml.resources.ROUTES on its function with payload format 2.0, the JWT authorizer answering
simple responses with its cache, the named stage with throttling and access logs, the monitoring's deny
filter, and nothing of the REST API left."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from infra_helpers import CLI_CONTEXT, bundle_cache, cdk_json_context, refs, resources_of
from pytest_socket import disable_socket, enable_socket
from tenantml_cdk.application import STATELESS_STACK, build_app
from tenantml_cdk.constructs.functions import function_id

from tenantml import resources

CONTEXT = {**cdk_json_context(), **CLI_CONTEXT, "api": "http"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    outdir = tmp_path_factory.mktemp("cdk.out-http")
    app = build_app(context=CONTEXT, outdir=str(outdir), nag=True, bundle_cache=bundle_cache())
    assert app.config.api == "http"
    disable_socket(allow_unix_socket=True)   # hermetic, as the session synth
    try:
        app.app.synth()
    finally:
        enable_socket()
    return json.loads((outdir / f"{STATELESS_STACK}.template.json").read_text()), outdir


@pytest.fixture(scope="module")
def template(built) -> dict:
    return built[0]


def _function_of(template: dict, integration_id: str) -> str:
    uri = template["Resources"][integration_id]["Properties"]["IntegrationUri"]
    (target,) = refs(uri) or {uri["Fn::GetAtt"][0]}
    return target


def test_every_route_is_served_by_its_function_with_payload_format_2(template):
    routes = resources_of(template, "AWS::ApiGatewayV2::Route")
    integrations = resources_of(template, "AWS::ApiGatewayV2::Integration")
    by_key = {r["Properties"]["RouteKey"]: r["Properties"] for r in routes.values()}
    assert set(by_key) == {f"{r.method} {r.path}" for r in resources.ROUTES}
    for route in resources.ROUTES:
        props = by_key[f"{route.method} {route.path}"]
        (integration,) = refs(props["Target"])
        assert integrations[integration]["Properties"]["PayloadFormatVersion"] == "2.0"
        assert integrations[integration]["Properties"]["IntegrationType"] == "AWS_PROXY"
        target = _function_of(template, integration)
        assert target == function_id(resources.function(route.function)), route
        if route.auth:
            assert props["AuthorizationType"] == "CUSTOM" and refs(props["AuthorizerId"]), route
        else:
            assert props["AuthorizationType"] == "NONE", route


def test_the_authorizer_answers_simple_responses_cached_per_token(template):
    (authorizer,) = resources_of(template, "AWS::ApiGatewayV2::Authorizer").values()
    props = authorizer["Properties"]
    assert props["AuthorizerType"] == "REQUEST" and props["AuthorizerPayloadFormatVersion"] == "2.0"
    assert props["EnableSimpleResponses"] is True
    assert props["IdentitySource"] == ["$request.header.Authorization"]
    assert props["AuthorizerResultTtlInSeconds"] == CONTEXT.get("authorizer_cache_ttl_seconds", 300)
    assert "AuthorizerFunction" in json.dumps(props["AuthorizerUri"])


def test_a_named_stage_with_throttling_and_json_access_logs(template):
    (stage,) = resources_of(template, "AWS::ApiGatewayV2::Stage").values()
    props = stage["Properties"]
    assert props["StageName"] == CONTEXT.get("stage", resources.DEFAULT_STAGE) and props["AutoDeploy"] is True
    throttle = props["DefaultRouteSettings"]
    assert throttle["ThrottlingRateLimit"] > 0 and throttle["ThrottlingBurstLimit"] > 0
    fields = json.loads(props["AccessLogSettings"]["Format"])
    assert {"requestId", "tenant", "status", "integrationStatus", "routeKey", "stage"} <= set(fields)
    assert fields["tenant"] == "$context.authorizer.tenant_id"


def test_nothing_of_the_rest_api_is_left(template):
    assert not [t for t in (r["Type"] for r in template["Resources"].values()) if t.startswith(
        "AWS::ApiGateway::")]


def test_api_gateway_may_invoke_the_functions_and_the_authorizer(template):
    permissions = resources_of(template, "AWS::Lambda::Permission").values()
    invoked = {next(iter(refs(p["Properties"]["FunctionName"]))) for p in permissions
               if p["Properties"]["Principal"] == "apigateway.amazonaws.com"}
    assert {function_id(resources.function(r.function)) for r in resources.ROUTES} | {"AuthorizerFunction"} \
        <= invoked


def test_authorizer_denies_are_counted_from_the_access_log(template):
    (deny,) = [f["Properties"] for f in resources_of(template, "AWS::Logs::MetricFilter").values()
               if f["Properties"]["MetricTransformations"][0]["MetricName"] == "AuthorizerDenied"]
    assert '$.integrationStatus = "-"' in deny["FilterPattern"]
    assert '$.status = "401"' in deny["FilterPattern"] and '$.status = "403"' in deny["FilterPattern"]


def test_no_unacknowledged_nag_findings(built):
    report = json.loads((built[1] / "validation-report.json").read_text())
    failed = [f"{p['pluginName']}: {v['ruleName']}" for p in report["pluginReports"] for v in p["violations"]
              if v["severity"] in {"error", "fatal"}]
    assert not failed, failed
