"""Stateless stack: layers, functions (with their access constructs), the REST API, the event triggers,
the serving dashboard/alarms and the saved cost query. It only composes constructs; it owns no data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aws_cdk as cdk
from constructs import Construct

from tenantml import resources
from tenantml.settings import variable
from tenantml_cdk.bundling import repo_root
from tenantml_cdk.config import AppConfig
from tenantml_cdk.constructs.access import (
    AsyncAccess,
    DriftAccess,
    PublisherAccess,
    RegistryAccess,
    RolloutAccess,
    ServingAccess,
)
from tenantml_cdk.constructs.api import PlatformApi
from tenantml_cdk.constructs.cost import CostQuery
from tenantml_cdk.constructs.functions import FunctionFactory, PlatformFunction
from tenantml_cdk.constructs.gpu_endpoint import GpuEndpoint, endpoint_name_for
from tenantml_cdk.constructs.http_api import PlatformHttpApi
from tenantml_cdk.constructs.layers import PlatformLayers
from tenantml_cdk.constructs.monitoring import ServingMonitoring
from tenantml_cdk.constructs.triggers import EventTriggers
from tenantml_cdk.stateful_stack import PlatformData


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
        factory = FunctionFactory(self, "Functions", config=config, layers=layers.all,
                                  code_root=root / "functions", values=platform_values(config, data))
        self.functions: dict[str, PlatformFunction] = {
            d.name: factory.create(d, snapstart=config.snapstart and d.name == "inference")
            for d in resources.FUNCTIONS
        }
        ServingAccess(self, "ServingAccess", function=self.functions["inference"], data=data)
        RegistryAccess(self, "RegistryAccess", function=self.functions["registry"], data=data)
        PublisherAccess(self, "PublisherAccess", function=self.functions["publisher"], data=data)
        DriftAccess(self, "DriftAccess", scheduler=self.functions["drift_scheduler"],
                    worker=self.functions["drift_worker"], data=data)
        RolloutAccess(self, "RolloutAccess", function=self.functions["rollback"], data=data)

        api = PlatformHttpApi if config.api == "http" else PlatformApi
        self.api = api(self, "Api", config=config, routes=resources.ROUTES,
                       targets={n: f.invoke_target for n, f in self.functions.items()},
                       authorizer_function=self.functions["authorizer"].function)
        self.monitoring = ServingMonitoring(self, "Monitoring", stage=self.api.stage,
                                            access_logs=self.api.access_logs, functions=self.functions,
                                            denied_pattern=self.api.authorizer_denied_pattern,
                                            alarm_email=config.alarm_email,
                                            dashboard_name=f"tenantml-{config.stage}")
        self.monitoring.alert_on(data.event_bus, ["DriftDetected", "RolloutRolledBack"])
        # The scale-to-zero GPU endpoint, only with -c gpu_image_uri=... -c gpu_model_data_url=...
        self.gpu = GpuEndpoint(self, "Gpu", config=config, bucket=data.artifact_bucket,
                               notifications=data.gpu_notifications,
                               alarm_topic=self.monitoring.topic) if config.gpu_enabled else None
        AsyncAccess(self, "AsyncAccess", inference=self.functions["inference"],
                    dispatch=self.functions["gpu_dispatch"], result=self.functions["gpu_result"], data=data,
                    endpoint=self.gpu)
        if self.gpu is not None:
            cdk.CfnOutput(self, "GpuEndpointName", value=self.gpu.endpoint_name,
                          description="SageMaker asynchronous inference endpoint (scales to zero)")
        self.triggers = EventTriggers(self, "Triggers", functions=self.functions, tables=data.tables,
                                      queues=data.queues, dead_letter_queues=data.dead_letter_queues,
                                      event_bus=data.event_bus, alarm_topic=self.monitoring.topic)
        cdk.CfnOutput(self, "ApiUrl", value=self.api.url, description="base URL of the tenantml API")
        cdk.CfnOutput(self, "AlarmTopicArn", value=self.monitoring.topic.topic_arn)
        self.cost = CostQuery(self, "Cost", function=self.functions["inference"],
                              architecture=config.architecture, stage=config.stage)
        cdk.CfnOutput(self, "InferenceLogGroupName",
                      value=self.functions["inference"].log_group.log_group_name,
                      description="TENANTML_COST_LOG_GROUP for tenantml cost")


def _drift_period_s() -> int:
    (schedule,) = resources.function("drift_scheduler").triggers_of("schedule")
    return schedule.period_s


def platform_values(config: AppConfig, data: PlatformData) -> dict[str, str]:
    """Every TENANTML_* value the stack provides; each function receives those its settings read
    (resources.function_environment). With `-c sam_local=true`, empty placeholders SAM may override (it
    only overrides declared variables; an empty value means unset to tenantml.settings):
    TENANTML_JWKS_JSON and TENANTML_ENDPOINT_URL."""
    values = {
        variable("jwks_url"): config.jwks_url,
        variable("issuer"): config.issuer,
        variable("audience"): config.audience,
        variable("tenant_claim"): config.tenant_claim,
        variable("artifact_bucket"): data.artifact_bucket.bucket_name,
        variable("registry_table"): data.registry_table.table_name,
        variable("idempotency_table"): data.tables[resources.IDEMPOTENCY_TABLE.id].table_name,
        variable("signals_table"): data.tables[resources.SIGNALS_TABLE.id].table_name,
        variable("requests_table"): data.tables[resources.REQUESTS_TABLE.id].table_name,
        variable("throttle_table"): data.tables[resources.THROTTLE_TABLE.id].table_name,
        variable("tenant_rate_limit"): str(config.tenant_rate_limit),
        variable("event_bus_name"): data.event_bus.event_bus_name,
        **{variable(q.setting): data.queues[q.id].queue_name for q in resources.QUEUES if q.setting},
        # The drift window is the drift schedule's period; capture frames are written at least once a minute.
        variable("drift_window_minutes"): str(_drift_period_s() // 60),
        variable("capture_max_seconds"): "60",
        # Rollouts: signals written every 10 s, a rollout's change seen by warm environments within 5 s.
        variable("signals_flush_seconds"): "10",
        variable("rollout_cache_ttl_seconds"): "5",
        # Lambda's Active tracing records every invocation; SDK subsegments are opt-in (cold start cost).
        variable("tracing"): "true" if config.sdk_tracing else "false",
    }
    if config.gpu_enabled:   # without an endpoint, GPU models answer 503 at submit
        values[variable("gpu_endpoint_name")] = endpoint_name_for(config.stage)
    if config.preload_models:
        values[variable("preload_models")] = config.preload_models
    if config.sam_local:
        values[variable("jwks_json")] = ""
        values[variable("endpoint_url")] = ""
    return values
