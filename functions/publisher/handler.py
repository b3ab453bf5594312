"""Publisher: the registry table's stream, filtered to new audit records (the registry's outbox), ->
one event per committed change on the platform's EventBridge bus (ModelVersionRegistered, AliasChanged).

Init (once per execution environment): settings parsed, the bus adapter built. A record that could not be
published is returned as a batch item failure, so the event source mapping delivers it (and those after
it) again; nothing is dropped. Why a stream and not a direct put after the write: tenantml.events.outbox.
"""

from __future__ import annotations

from tenantml.events.bus import EventBridgeBus
from tenantml.events.outbox import AuditEventPublisher
from tenantml.events.shapes import batch_handler
from tenantml.settings import get_aws_settings, get_publisher_settings

settings = get_publisher_settings()
publisher = AuditEventPublisher(EventBridgeBus(settings.event_bus_name, get_aws_settings()))


handler = batch_handler(publisher.handle_record, "DynamoDBStreams")
