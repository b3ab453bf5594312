"""Stateless stack: layers, functions, the REST API and the serving dashboard/alarms. It composes the
constructs and grants least privilege; it owns no data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aws_cdk as cdk
from constructs import Construct

from tenantml import resources
from tenantml.settings import AuthSettings, AwsSettings, RegistrySettings, ServingSettings
from tenantml_cdk.bundling import repo_root
from tenantml_cdk.config import AppConfig
from tenantml_cdk.constructs.api import PlatformApi
from tenantml_cdk.constructs.functions import FunctionFactory, PlatformFunction, env_name
from tenantml_cdk.constructs.layers import PlatformLayers
from tenantml_cdk.constructs.monitoring import ServingMonitoring
from tenantml_cdk.nag import acknowledge, export_name
from tenantml_cdk.stateful_stack import PlatformData

ARTIFACT_OBJECTS = f"{resources.ARTIFACT_PREFIX}/*"


class StatelessStack(cdk.Stack):
    def __init__(self, scope: Construct, construct_id: str, *, config: AppConfig, data: PlatformData,
                 root: Path | None = None, bundle_cache: Path | None = None, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        root = root or repo_root()
        if config.uses_example_identity_provider:
            cdk.Annotations.of(self).add_warning_v2(
                "tenantml:exampleIdentityProvider",
                f"jwks_url {config.jwks_url} is a documentation placeholder: the authorizer will deny "
                "every token. Deploy with -c jwks_url=... -c issuer=... -c audience=... "
                "(docs/architecture.md).")

        layers = PlatformLayers(self, "Layers", root=root, architecture=config.architecture,
                                bundle_cache=bundle_cache)
        # Every TENANTML_* value the stack can provide; each function receives what its definition lists.
        settings = {
            env_name(AuthSettings, "jwks_url"): config.jwks_url,
            env_name(AuthSettings, "issuer"): config.issuer,
            env_name(AuthSettings, "audience"): config.audience,
            env_name(AuthSettings, "tenant_claim"): config.tenant_claim,
            env_name(RegistrySettings, "artifact_bucket"): data.artifact_bucket.bucket_name,
            env_name(RegistrySettings, "registry_table"): data.registry_table.table_name,
        }
        factory = FunctionFactory(self, "Functions", config=config, layers=layers.all,
                                  code_root=root / "functions", settings=settings)
        extra = extra_environment(config)
        self.functions: dict[str, PlatformFunction] = {
            d.name: factory.create(d, extra_environment=extra[d.name],
                                   snapstart=config.snapstart and d.name == "inference")
            for d in resources.FUNCTIONS
        }
        inference, registry = self.functions["inference"].function, self.functions["registry"].function

        # Least privilege. The authorizer gets nothing beyond its logs; inference only reads.
        data.registry_table.grant_read_data(inference)
        data.artifact_bucket.grant_read(inference, ARTIFACT_OBJECTS)
        data.registry_table.grant_read_write_data(registry)
        data.artifact_bucket.grant_read(registry, ARTIFACT_OBJECTS)
        data.artifact_bucket.grant_put(registry, ARTIFACT_OBJECTS)
        bucket_arn = export_name(cdk.Stack.of(data.artifact_bucket), data.artifact_bucket.bucket_arn)
        for fn in (self.functions["inference"], self.functions["registry"]):
            acknowledge(fn.role, f"AwsSolutions-IAM5[Resource::{bucket_arn}/{ARTIFACT_OBJECTS}]",
                        "Object access is scoped to the models/ prefix of the artifact bucket; keys are "
                        "models/<tenant>/<model>/<version>/<file>, so the prefix needs a trailing wildcard.")
            for finding, reason in _S3_READ_FINDINGS.items():
                acknowledge(fn.role, finding, reason)
        acknowledge(self.functions["registry"].role, "AwsSolutions-IAM5[Action::s3:Abort*]",
                    "grant_put: s3:AbortMultipartUpload (Abort*) on models/* lets an interrupted artifact "
                    "upload be cleaned up; it cannot touch other prefixes.")

        self.api = PlatformApi(self, "Api", config=config, routes=resources.ROUTES,
                               targets={n: f.invoke_target for n, f in self.functions.items()},
                               authorizer_function=self.functions["authorizer"].function)
        self.monitoring = ServingMonitoring(self, "Monitoring", stage=self.api.stage,
                                            access_logs=self.api.access_logs, functions=self.functions,
                                            alarm_email=config.alarm_email,
                                            dashboard_name=f"tenantml-{config.stage}")
        cdk.CfnOutput(self, "ApiUrl", value=self.api.url, description="base URL of the tenantml API")
        cdk.CfnOutput(self, "AlarmTopicArn", value=self.monitoring.topic.topic_arn)


def extra_environment(config: AppConfig) -> dict[str, dict[str, str]]:
    """Per-function variables beyond the definition's settings: models to preload (inference), and with
    `-c sam_local=true` empty placeholders SAM may override (it only overrides declared variables; an
    empty value means unset to tenantml.settings): TENANTML_JWKS_JSON for the authorizer,
    TENANTML_ENDPOINT_URL for functions that reach AWS."""
    extra: dict[str, dict[str, str]] = {d.name: {} for d in resources.FUNCTIONS}
    if config.preload_models:
        extra["inference"][env_name(ServingSettings, "preload_models")] = config.preload_models
    if config.sam_local:
        for d in resources.FUNCTIONS:
            if env_name(AuthSettings, "jwks_url") in d.env:
                extra[d.name][env_name(AuthSettings, "jwks_json")] = ""
            if env_name(RegistrySettings, "registry_table") in d.env:
                extra[d.name][env_name(AwsSettings, "endpoint_url")] = ""
    return extra


# The action wildcards grant_read writes; each is limited to the artifact bucket / its models/ prefix.
_S3_READ_FINDINGS = {
    "AwsSolutions-IAM5[Action::s3:GetObject*]":
        "grant_read: GetObject plus its version/ACL/tagging variants on models/* only.",
    "AwsSolutions-IAM5[Action::s3:GetBucket*]":
        "grant_read: bucket-level Get* (location, versioning) on the artifact bucket only.",
    "AwsSolutions-IAM5[Action::s3:List*]":
        "grant_read: ListBucket on the artifact bucket, needed to tell a missing artifact (404) from "
        "a denied one (403).",
}
