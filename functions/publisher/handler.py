"""Publisher: the registry table's stream, filtered to new audit records (the registry's outbox), ->
one event per committed change on the platform's EventBridge bus (ModelVersionRegistered, AliasChanged).

Init (once per execution environment): settings parsed, the bus adapter built. A record that could not be
published is returned as a batch item failure, so the event source mapping delivers it (and those after
it) again; nothing is dropped. Why a stream and not a direct put after the write: tenantml.events.outbox.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response

from tenantml.events.bus import EventBridgeBus
from tenantml.events.outbox import AuditEventPublisher
from tenantml.events.shapes import refuse_unless, stream_batch
from tenantml.observability import logger, metrics
from tenantml.settings import get_aws_settings, get_publisher_settings

settings = get_publisher_settings()
publisher = AuditEventPublisher(EventBridgeBus(settings.event_bus_name, get_aws_settings()))
# A batch whose every record failed is reported record by record too (no exception), so the failure
# metrics of that invocation are still flushed.
processor = BatchProcessor(event_type=EventType.DynamoDBStreams, raise_on_entire_batch_failure=False)


@logger.inject_lambda_context(clear_state=True)
@refuse_unless(stream_batch, "a DynamoDB stream batch")
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return process_partial_response(event=event, record_handler=publisher.handle_record, processor=processor,
                                    context=context)
