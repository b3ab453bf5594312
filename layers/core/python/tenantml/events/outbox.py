"""The registry's outbox: every committed change writes an audit record in the same DynamoDB transaction
(tenantml.registry.dynamo), and the table's stream delivers each new audit record to the publisher
function, which puts the matching event on the bus.

Why this guarantees "no committed change loses its event, no event without its committed change": the
audit record exists if and only if the transaction committed, the stream holds every such record for
24 h in commit order, and the event source mapping retries a record until the publisher reports it
published (failed records come back through batch item failures; a batch that still fails when its
records expire goes to the publisher's failure queue, and the audit log still holds the change). Delivery
is at least once: the detail's `change_id` (the audit record id) lets consumers deduplicate.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tenantml.events import DETAIL_MODELS, ROLLOUT_EVENTS, AliasChanged, EventDetail, ModelVersionRegistered
from tenantml.registry import ACTION_REGISTER, ACTION_ROLLOUT, ACTION_SET_ALIAS

ROLLOUT_FIELDS = ("rollout_id", "mode", "stable", "candidate", "status", "from_weight", "to_weight")


def event_from_audit(record: Mapping[str, Any]) -> tuple[str, EventDetail] | None:
    """(detail-type, detail) for an audit record (its attributes as plain values), or None when the
    action publishes no event."""
    details = record.get("details") or "{}"
    details = json.loads(details) if isinstance(details, str) else dict(details)
    common = {"tenant": str(record["tenant"]), "model": str(record["model"]),
              "version": record.get("version"), "actor": str(record.get("actor") or ""),
              "change_id": str(record["id"]), "at": str(record["timestamp"])}
    action = record.get("action")
    if action == ACTION_REGISTER:
        aliases = [str(a) for a in details.get("aliases") or []]
        reason = f"version {common['version']} registered" + (f" as {', '.join(aliases)}" if aliases else "")
        return "ModelVersionRegistered", ModelVersionRegistered(
            **common, reason=reason, task=str(details.get("task", "")),
            backend=str(details.get("backend", "")), aliases=aliases)
    if action == ACTION_SET_ALIAS:
        alias, previous = str(details.get("alias", "")), details.get("previous")
        return "AliasChanged", AliasChanged(
            **common, alias=alias, previous=previous,
            reason=f"alias {alias} moved from {previous or 'nothing'} to {common['version']}")
    if isinstance(action, str) and action.startswith(f"{ACTION_ROLLOUT}_"):
        verb = action.removeprefix(f"{ACTION_ROLLOUT}_")
        detail_type = ROLLOUT_EVENTS.get(verb)
        if detail_type is None:
            return None
        fields = {k: details[k] for k in ROLLOUT_FIELDS}
        return detail_type, DETAIL_MODELS[detail_type](**common, **fields, action=verb,
                                                       reason=str(details.get("reason") or verb))
    return None


class AuditEventPublisher:
    """The publisher function's record handler: one stream record (an audit record) -> one event.
    Counts what it published and what failed (CloudWatch metrics EventsPublished/EventPublishFailures);
    a failure is raised, so the record is reported failed and delivered again."""

    def __init__(self, bus: Any) -> None:   # tenantml.events.bus.EventBridgeBus
        self.bus = bus

    def publish(self, image: Mapping[str, Any]) -> str | None:
        """Publish the event of one audit record (plain values); returns the event id, or None when the
        record's action publishes nothing."""
        from aws_lambda_powertools.metrics import MetricUnit  # noqa: PLC0415

        from tenantml.events.bus import PublishFailed  # noqa: PLC0415
        from tenantml.observability import logger, metrics  # noqa: PLC0415

        built = event_from_audit(image)
        keys = {"tenant": image.get("tenant"), "model": image.get("model"), "change_id": image.get("id")}
        if built is None:
            logger.info("audit record publishes no event", extra={**keys, "action": image.get("action")})
            return None
        detail_type, detail = built
        try:
            event_id = self.bus.put(detail_type, detail)
        except PublishFailed as exc:
            metrics.add_metric(name="EventPublishFailures", unit=MetricUnit.Count, value=1)
            logger.error("event not published; the record will be delivered again",
                         extra={**keys, "detail_type": detail_type, "reason": exc.detail})
            raise
        metrics.add_metric(name="EventsPublished", unit=MetricUnit.Count, value=1)
        logger.info("event published", extra={**keys, "detail_type": detail_type, "event_id": event_id})
        return event_id

    def handle_record(self, record: Any) -> str | None:
        """Powertools BatchProcessor record handler (DynamoDBRecord: NewImage already deserialized)."""
        return self.publish(record.dynamodb.new_image)
