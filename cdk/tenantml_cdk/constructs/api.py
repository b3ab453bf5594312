"""The REST API: one method per `tenantml.resources.ROUTES` entry, Lambda proxy integrations, the JWT
REQUEST authorizer on every `auth=True` route, a throttled, traced and access-logged stage, and gateway
responses shaped like the API's own errors (`{"error": "..."}`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from aws_cdk import Duration, RemovalPolicy, Size
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from tenantml import resources
from tenantml_cdk.config import AppConfig
from tenantml_cdk.constructs.functions import retention
from tenantml_cdk.nag import acknowledge

AUTH_HEADER = "Authorization"
CUSTOM, NONE = apigw.AuthorizationType.CUSTOM, apigw.AuthorizationType.NONE
# The authorizer context key that carries the tenant (docs/design: {tenant_id, sub, scopes}).
TENANT_CONTEXT_KEY = "tenant_id"

# Every body reaches the functions base64-encoded, whatever its Content-Type (Triton's client sends
# binary tensor data and compressed bodies without one): tenantml.api.body undoes it. Costs ~1 ms/MB of
# decoding and makes a body 4/3 larger inside Lambda's 6 MB payload limit (the functions cap bodies at 1 MB).
BINARY_MEDIA_TYPES = ["*/*"]
# API Gateway compresses responses of at least this size for clients that accept gzip/deflate: below
# ~1 KB the gzip header and CPU cost more than the bytes saved (an OIP answer for one row is ~200 B).
MINIMUM_COMPRESSION_SIZE = 1024


def access_log_format() -> apigw.AccessLogFormat:
    """One JSON object per request. Values are strings (API Gateway writes `-` for empty values, which
    would break unquoted JSON); the metric filters compare strings."""
    f = apigw.AccessLogField
    fields = {
        "requestId": f.context_request_id(),
        "ip": f.context_identity_source_ip(),
        "caller": f.context_identity_caller(),
        "user": f.context_authorizer_principal_id(),
        "tenant": f.context_authorizer(TENANT_CONTEXT_KEY),
        "requestTime": f.context_request_time(),
        "httpMethod": f.context_http_method(),
        "resourcePath": f.context_resource_path(),
        "stage": f.context_stage(),
        "status": f.context_status(),
        "protocol": f.context_protocol(),
        "responseLength": f.context_response_length(),
        "responseLatency": f.context_response_latency(),
        "integrationLatency": f.context_integration_latency(),
        "authorizeStatus": f.context_authorize_status(),
        "authorizeError": f.context_authorize_error(),
        "authorizerError": f.context_authorizer_error(),
        "authorizerLatency": f.context_authorizer_latency(),
        "errorResponseType": f.context_error_response_type(),
        "xrayTraceId": f.context_xray_trace_id(),
    }
    return apigw.AccessLogFormat.custom(json.dumps(fields, separators=(",", ":")))


def _error_template() -> dict[str, str]:
    # $context.error.messageString is already a quoted, escaped JSON string.
    return {"application/json": '{"error":$context.error.messageString}'}


def checked_access_logs(scope: Construct, config: AppConfig, routes: Sequence[resources.Route],
                        targets: Mapping[str, lambda_.IFunction]) -> logs.LogGroup:
    """Both API flavours' first steps: every route's function has a target; the access log group."""
    unknown = sorted({r.function for r in routes} - targets.keys())
    if unknown:
        raise KeyError(f"routes name functions without a target: {unknown}")
    return logs.LogGroup(scope, "AccessLogs", retention=retention(config.log_retention_days),
                         removal_policy=RemovalPolicy.DESTROY)


class PlatformApi(Construct):
    """`targets` maps a function name used in `routes` to what API Gateway invokes (function or alias)."""

    def __init__(self, scope: Construct, construct_id: str, *, config: AppConfig,
                 routes: Sequence[resources.Route], targets: Mapping[str, lambda_.IFunction],
                 authorizer_function: lambda_.IFunction) -> None:
        super().__init__(scope, construct_id)
        self.access_logs = checked_access_logs(self, config, routes, targets)
        self.rest_api = apigw.RestApi(
            self, "RestApi",
            rest_api_name=f"tenantml-{config.stage}",
            description="tenantml: Open Inference Protocol v2 (REST) and the model registry admin API",
            endpoint_types=[apigw.EndpointType.REGIONAL],
            binary_media_types=BINARY_MEDIA_TYPES,
            min_compression_size=Size.bytes(MINIMUM_COMPRESSION_SIZE),
            # API Gateway writes access and execution logs through an account-level role.
            cloud_watch_role=True,
            deploy_options=apigw.StageOptions(
                stage_name=config.stage,
                throttling_rate_limit=config.throttling_rate_limit,
                throttling_burst_limit=config.throttling_burst_limit,
                access_log_destination=apigw.LogGroupLogDestination(self.access_logs),
                access_log_format=access_log_format(),
                tracing_enabled=True,
                metrics_enabled=True,
                logging_level=apigw.MethodLoggingLevel.ERROR,
                data_trace_enabled=False,   # never log request/response bodies (tenant data)
            ),
        )
        acknowledge(self.rest_api, "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/"
                                   "service-role/AmazonAPIGatewayPushToCloudWatchLogs]",
                    "The account-level API Gateway logging role uses the AWS managed policy that API Gateway "
                    "documents for it; it only allows writing to CloudWatch Logs.")
        acknowledge(self.rest_api, "AwsSolutions-COG4",
                    "Tokens come from any OIDC identity provider (Cognito, Auth0, Okta, ...): the Lambda "
                    "REQUEST authorizer verifies signature (JWKS), iss, aud, exp/nbf and the tenant claim, "
                    "which a Cognito user-pool authorizer cannot do; health probes are public by design.")
        acknowledge(self.rest_api, "AwsSolutions-APIG3",
                    "WAF is an account/edge decision and a cost the deployer opts into; the stage is "
                    "throttled, every data route requires a verified JWT, and the functions validate every "
                    "body.")
        acknowledge(self.rest_api, "AwsSolutions-APIG2",
                    "Request bodies are validated by the functions, not by a gateway model: inference "
                    "bodies may be binary tensor data or compressed (binary media types */*), which a "
                    "JSON-schema model refuses; the functions answer a precise 400 per cause. Path "
                    "parameters are validated at the gateway.")

        self.authorizer = apigw.RequestAuthorizer(
            self, "JwtAuthorizer",
            authorizer_name=f"tenantml-jwt-{config.stage}",
            handler=authorizer_function,
            identity_sources=[apigw.IdentitySource.header(AUTH_HEADER)],
            # Deliberate: the policy covers the whole stage and is keyed by the token, so a cached
            # Allow is valid for every route; a revoked token stays usable for at most this long.
            results_cache_ttl=Duration.seconds(config.authorizer_cache_ttl_seconds),
        )

        # Path parameters are validated here; bodies by the functions, which know binary tensor data and
        # compressed bodies (a JSON-schema model would refuse both) and answer precise 400s.
        validator = self.rest_api.add_request_validator(
            "ParameterValidator", request_validator_name="parameters", validate_request_body=False,
            validate_request_parameters=True)

        integrations = {name: apigw.LambdaIntegration(target, allow_test_invoke=False)
                        for name, target in targets.items()}
        self.methods: dict[tuple[str, str], apigw.Method] = {}
        for route in routes:
            resource = self.rest_api.root.resource_for_path(route.path)
            method = resource.add_method(
                route.method, integrations[route.function],
                authorization_type=CUSTOM if route.auth else NONE,
                authorizer=self.authorizer if route.auth else None,
                request_validator=validator,
                request_parameters={f"method.request.path.{p}": True for p in _path_params(route.path)},
            )
            if not route.auth:
                acknowledge(method, "AwsSolutions-APIG4",
                            f"{route.method} {route.path} is a liveness/readiness probe for load balancers "
                            "and uptime checks; it reveals no tenant data and must work without a token.")
            self.methods[(route.method, route.path)] = method

        for rid, rtype in (("Default4xx", apigw.ResponseType.DEFAULT_4_XX),
                           ("Default5xx", apigw.ResponseType.DEFAULT_5_XX)):
            self.rest_api.add_gateway_response(rid, type=rtype, templates=_error_template())
        self.rest_api.add_gateway_response(
            "Unauthorized", type=apigw.ResponseType.UNAUTHORIZED, templates=_error_template(),
            response_headers={"WWW-Authenticate": "'Bearer'"})
        # REST APIs answer an unknown resource or method with MISSING_AUTHENTICATION_TOKEN (403); the API
        # contract is 404 for an unknown route (local mode's emulator does the same).
        # What the monitoring's "authorizer denies" metric counts: the authorizer refused (401 or 403).
        self.authorizer_denied_pattern = logs.FilterPattern.any(
            logs.FilterPattern.string_value("$.authorizeStatus", "=", "401"),
            logs.FilterPattern.string_value("$.authorizeStatus", "=", "403"))
        self.rest_api.add_gateway_response(
            "UnknownRoute", type=apigw.ResponseType.MISSING_AUTHENTICATION_TOKEN, status_code="404",
            templates={"application/json": '{"error":"route not found"}'})

    @property
    def stage(self) -> apigw.Stage:
        return self.rest_api.deployment_stage

    @property
    def url(self) -> str:
        return self.rest_api.url


def _path_params(path: str) -> list[str]:
    return [seg[1:-1] for seg in path.split("/") if seg.startswith("{") and seg.endswith("}")]
