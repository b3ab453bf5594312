"""Registry admin API (API Gateway proxy; scope models:write): register versions, aliases, rollouts, drift
report summaries, audit log.
Routes live in tenantml.api.registry_routes; this file only wires settings, logging and the resolver.

Init (once per execution environment): settings parsed, the service and its AWS clients built."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from tenantml.api.registry_routes import create_app
from tenantml.aws import client
from tenantml.monitoring.jobs import ReportIndex
from tenantml.observability import logger
from tenantml.registry.service import RegistrationService
from tenantml.rollout.service import RolloutService
from tenantml.rollout.signals import DynamoSignals
from tenantml.settings import get_aws_settings, get_registry_settings, get_signal_settings

settings = get_registry_settings()
aws = get_aws_settings()
service = RegistrationService.from_settings(settings, aws)
rollouts = RolloutService(service.registry,
                          signals=DynamoSignals(client("dynamodb", aws), get_signal_settings().signals_table))
app = create_app(service, ReportIndex(client("s3", aws), settings.artifact_bucket), rollouts)


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
