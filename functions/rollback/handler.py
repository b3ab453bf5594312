"""Rollback function: the rollout controller (tenantml.rollout.controller). Triggers (tenantml.resources):
a schedule every minute (advance or roll back each live rollout on its per-version signals), CloudWatch
Alarm State Change events of the candidates' alarms (default bus, name prefix tenantml-rollout-),
DriftDetected, and RolloutStarted/Completed/RolledBack (create and remove the candidate's alarms).

An event of an unexpected shape is a logged no-op; an error (the registry unreachable) is raised, so
Lambda retries the event and then sends it to the function's failure queue.
"""

from __future__ import annotations

from typing import Any

from tenantml.aws import client
from tenantml.observability import logger
from tenantml.registry.dynamo import DynamoRegistry
from tenantml.rollout.alarms import AlarmManager
from tenantml.rollout.controller import RolloutController
from tenantml.rollout.signals import DynamoSignals
from tenantml.settings import get_aws_settings, get_registry_settings, get_signal_settings

aws = get_aws_settings()
controller = RolloutController(
    DynamoRegistry(get_registry_settings().registry_table, aws),
    DynamoSignals(client("dynamodb", aws), get_signal_settings().signals_table),
    alarms=AlarmManager(client("cloudwatch", aws)))


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return {"outcomes": controller.handle(event)}
