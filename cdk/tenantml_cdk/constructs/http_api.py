"""The HTTP API flavour (`-c api=http`): the same routes, functions, tenancy and errors as the REST API
(constructs/api.py), behind an API Gateway HTTP API, which costs less per request and adds less latency.

- Routes: one per `tenantml.resources.ROUTES` entry, Lambda proxy integrations with payload format 2.0
  (the functions serve both formats: tenantml.api.flavours).
- Authorizer: the same JWT authorizer function, answering the simple response format
  (`{"isAuthorized", "context"}`), identity source the Authorization header, results cached for
  `authorizer_cache_ttl_seconds` per token. A missing header is API Gateway's own 401; a bad token 403.
  Scopes are enforced by the functions (as behind the REST API, whose cached policy covers the stage).
- A named stage (`stage`, auto-deployed), so URLs keep the REST API's shape
  (`https://<id>.execute-api.<region>.amazonaws.com/<stage>/v2/...`); stage throttling, JSON access logs.
- Differences an operator sees: HTTP APIs have no gateway responses, so the gateway's own errors are
  `{"message": "..."}` (the functions' are still `{"error": "..."}`), no payload compression, no usage
  plans (per-tenant throttling is the platform's own), no X-Ray tracing of the gateway itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import jsii
from aws_cdk import Duration
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_apigatewayv2 as apigwv2
from aws_cdk import aws_apigatewayv2_authorizers as authorizers
from aws_cdk import aws_apigatewayv2_integrations as integrations
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from tenantml import resources
from tenantml_cdk.config import AppConfig
from tenantml_cdk.constructs.api import AUTH_HEADER, TENANT_CONTEXT_KEY, checked_access_logs
from tenantml_cdk.nag import acknowledge


def http_access_log_format() -> apigw.AccessLogFormat:
    """One JSON object per request, with the HTTP API's context variables (strings, as for the REST API;
    `integrationStatus` is "-" when no function ran, e.g. the authorizer refused the request)."""
    fields = {
        "requestId": "$context.requestId",
        "ip": "$context.identity.sourceIp",
        "tenant": f"$context.authorizer.{TENANT_CONTEXT_KEY}",
        "requestTime": "$context.requestTime",
        "httpMethod": "$context.httpMethod",
        "routeKey": "$context.routeKey",
        "path": "$context.path",
        "stage": "$context.stage",
        "status": "$context.status",
        "protocol": "$context.protocol",
        "responseLength": "$context.responseLength",
        "responseLatency": "$context.responseLatency",
        "integrationLatency": "$context.integrationLatency",
        "integrationStatus": "$context.integrationStatus",
        "authorizerError": "$context.authorizer.error",
        "errorMessage": "$context.error.message",
    }
    return apigw.AccessLogFormat.custom(json.dumps(fields, separators=(",", ":")))


class PlatformHttpApi(Construct):
    """The HTTP API; the same interface as PlatformApi (`stage`, `url`, `access_logs`,
    `authorizer_denied_pattern`) so the stack composes either."""

    def __init__(self, scope: Construct, construct_id: str, *, config: AppConfig,
                 routes: Sequence[resources.Route], targets: Mapping[str, lambda_.IFunction],
                 authorizer_function: lambda_.IFunction) -> None:
        super().__init__(scope, construct_id)
        self.access_logs = checked_access_logs(self, config, routes, targets)
        self.http_api = apigwv2.HttpApi(
            self, "HttpApi", api_name=f"tenantml-{config.stage}", create_default_stage=False,
            description="tenantml: Open Inference Protocol v2 and the model registry admin API (HTTP API)")
        self._stage = apigwv2.HttpStage(
            self, "Stage", http_api=self.http_api, stage_name=config.stage, auto_deploy=True,
            throttle=apigwv2.ThrottleSettings(rate_limit=config.throttling_rate_limit,
                                              burst_limit=config.throttling_burst_limit),
            access_log_settings=_AccessLogSettings(apigwv2.LogGroupLogDestination(self.access_logs),
                                                   http_access_log_format()),
            detailed_metrics_enabled=False)
        self.authorizer = authorizers.HttpLambdaAuthorizer(
            "JwtAuthorizer", authorizer_function, authorizer_name=f"tenantml-jwt-{config.stage}",
            identity_source=[f"$request.header.{AUTH_HEADER}"],
            response_types=[authorizers.HttpLambdaResponseType.SIMPLE],
            # As behind the REST API: keyed by the token; a revoked token stays usable at most this long,
            # an expired one never (the functions check valid_until).
            results_cache_ttl=Duration.seconds(config.authorizer_cache_ttl_seconds))
        bound = {name: integrations.HttpLambdaIntegration(
            f"{name}Integration", target, payload_format_version=apigwv2.PayloadFormatVersion.VERSION_2_0)
            for name, target in targets.items()}
        self.routes: dict[tuple[str, str], apigwv2.HttpRoute] = {}
        for route in routes:
            (made,) = self.http_api.add_routes(
                path=route.path, methods=[apigwv2.HttpMethod[route.method]],
                integration=bound[route.function],
                authorizer=self.authorizer if route.auth else apigwv2.HttpNoneAuthorizer())
            if not route.auth:
                acknowledge(made, "AwsSolutions-APIG4",
                            f"{route.method} {route.path} is a liveness/readiness probe for load balancers "
                            "and uptime checks; it reveals no tenant data and must work without a token.")
            self.routes[(route.method, route.path)] = made
        # What the monitoring's "authorizer denies" metric counts: a 401/403 that no function answered.
        self.authorizer_denied_pattern = logs.FilterPattern.all(
            logs.FilterPattern.any(logs.FilterPattern.string_value("$.status", "=", "401"),
                                   logs.FilterPattern.string_value("$.status", "=", "403")),
            logs.FilterPattern.string_value("$.integrationStatus", "=", "-"))

    @property
    def stage(self) -> apigwv2.HttpStage:
        return self._stage

    @property
    def url(self) -> str:
        return self._stage.url


@jsii.implements(apigwv2.IAccessLogSettings)
class _AccessLogSettings:
    """apigwv2.IAccessLogSettings: where and how the stage writes its access log."""

    def __init__(self, destination: apigwv2.IAccessLogDestination, fmt: apigw.AccessLogFormat) -> None:
        self._destination, self._format = destination, fmt

    @property
    def destination(self) -> apigwv2.IAccessLogDestination:
        return self._destination

    @property
    def format(self) -> apigw.AccessLogFormat:
        return self._format
