"""The one function factory: every tenantml Lambda function is made here, from its
`tenantml.resources.FunctionDef`, with the same runtime, architecture, layers, tracing and logging.

A function gets its own role with nothing but write access to its own log group (and X-Ray, which
tracing adds); data access is granted per function by constructs/access.py, exactly the calls its code
makes (cdk/tenantml_cdk/permissions.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from aws_cdk import Annotations, Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from tenantml import resources
from tenantml.settings import variable
from tenantml.tenancy import TENANT_TAG
from tenantml_cdk.config import RETENTION_DAYS, AppConfig
from tenantml_cdk.constructs.layers import ARCHITECTURES, PYTHON_RUNTIME
from tenantml_cdk.nag import acknowledge

HANDLER = "handler.handler"
TENANT_ROLE_VARIABLE = variable("tenant_role_arn")
LIVE_ALIAS = "live"
CODE_EXCLUDES = ["**/__pycache__", "**/*.pyc"]


def function_id(definition: resources.FunctionDef) -> str:
    """Stable, readable id, also the CloudFormation logical id (what `sam local invoke` takes)."""
    return "".join(part.capitalize() for part in definition.name.split("_")) + "Function"


def retention(days: int) -> logs.RetentionDays:
    return logs.RetentionDays[RETENTION_DAYS[days]]


@dataclass(frozen=True)
class PlatformFunction:
    definition: resources.FunctionDef
    function: lambda_.Function
    role: iam.Role
    log_group: logs.LogGroup
    alias: lambda_.Alias | None = None
    tenant_role: iam.Role | None = None     # what it assumes to act for one tenant (tenantml.tenancy)

    @property
    def invoke_target(self) -> lambda_.IFunction:
        """What callers (API Gateway) invoke: the SnapStart alias when there is one."""
        return self.alias or self.function


class FunctionFactory(Construct):
    """`values` maps every TENANTML_* variable the stack can provide to its value; each function receives
    exactly the variables its settings read (`resources.function_environment`, the function local mode
    uses too): a required one that is missing fails synth."""

    def __init__(self, scope: Construct, construct_id: str, *, config: AppConfig,
                 layers: Sequence[lambda_.ILayerVersion], code_root: Path,
                 values: Mapping[str, str]) -> None:
        super().__init__(scope, construct_id)
        self._config = config
        self._layers = list(layers)
        self._code_root = code_root
        self._values = dict(values)

    def create(self, definition: resources.FunctionDef, *, snapstart: bool = False) -> PlatformFunction:
        name = function_id(definition)
        sizing = self._config.sizing(definition.name)
        log_group = logs.LogGroup(self, f"{name}Logs", retention=retention(self._config.log_retention_days),
                                  removal_policy=RemovalPolicy.DESTROY)
        role = iam.Role(self, f"{name}Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                        description=f"tenantml {definition.name}: {definition.purpose}")
        log_group.grant_write(role)
        values = self._values
        tenant_role = None
        if TENANT_ROLE_VARIABLE in definition.variables:
            tenant_role = self._tenant_role(name, definition, role)
            # `sam local invoke` runs with the developer's credentials, which the role does not trust:
            # an empty value there means the function's own (the developer's) credentials.
            values = {**values, TENANT_ROLE_VARIABLE: "" if self._config.sam_local else tenant_role.role_arn}
        function = lambda_.Function(
            self, name,
            description=f"tenantml {definition.name}: {definition.purpose}",
            runtime=PYTHON_RUNTIME,
            architecture=ARCHITECTURES[self._config.architecture],
            handler=HANDLER,
            code=lambda_.Code.from_asset(str(self._code_root / definition.name), exclude=CODE_EXCLUDES),
            layers=self._layers,
            memory_size=sizing.memory_mb,
            timeout=Duration.seconds(sizing.timeout_seconds),
            tracing=lambda_.Tracing.ACTIVE,
            log_group=log_group,
            role=role,
            environment=resources.function_environment(definition, values),
            snap_start=lambda_.SnapStartConf.ON_PUBLISHED_VERSIONS if snapstart else None,
        )
        function.node.default_child.override_logical_id(name)  # type: ignore[union-attr]
        acknowledge(role, "AwsSolutions-IAM5[Resource::*]",
                    "Active X-Ray tracing needs xray:PutTraceSegments and xray:PutTelemetryRecords, and "
                    "a DynamoDB stream event source needs dynamodb:ListStreams; none supports "
                    "resource-level permissions (the only Resource::* the role holds; "
                    "tests/infrastructure asserts that).")
        acknowledge(function, "AwsSolutions-L1",
                    f"{PYTHON_RUNTIME.name} is pinned on purpose: the runtime layer's wheels are built for "
                    "it (tenantml_cdk.bundling.LAMBDA_PYTHON_VERSION) and SnapStart supports it; moving to "
                    "a newer Python is a deliberate change of both, not a drive-by upgrade.")
        alias = None
        if snapstart:
            # SnapStart snapshots published versions only: callers must invoke a version or an alias.
            alias = lambda_.Alias(self, f"{name}Live", alias_name=LIVE_ALIAS,
                                  version=function.current_version)
            Annotations.of(function).acknowledge_warning(
                "@aws-cdk/aws-lambda:snapStartRequirePublish",
                "a version is published on every change (current_version) and the API invokes its alias")
        return PlatformFunction(definition=definition, function=function, role=role, log_group=log_group,
                                alias=alias, tenant_role=tenant_role)

    def _tenant_role(self, name: str, definition: resources.FunctionDef, role: iam.Role) -> iam.Role:
        """The role the function assumes to act for one tenant: only its own role may assume it, only
        with a `tenant` session tag (and no other tag), for at most an hour (role chaining's limit).
        Its permissions are the function's row of permissions.TENANT_CALLS (constructs/access.py)."""
        trusted = iam.ArnPrincipal(role.role_arn).with_conditions({
            "StringLike": {f"aws:RequestTag/{TENANT_TAG}": "?*"},
            "ForAllValues:StringEquals": {"aws:TagKeys": [TENANT_TAG]},
        })
        return iam.Role(self, f"{name}TenantDataRole", assumed_by=iam.SessionTagsPrincipal(trusted),
                        max_session_duration=Duration.hours(1),
                        description=f"tenantml {definition.name}, acting for one tenant (session tag "
                                    f"{TENANT_TAG})")
