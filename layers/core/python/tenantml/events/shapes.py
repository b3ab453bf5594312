"""What a queue, stream or schedule consumer does with an event that is not its trigger's.

A Lambda function can be invoked with any payload: a misconfigured trigger, a test event pasted into the
console, a replay to the wrong function. Powertools' batch utilities raise on a payload that is not a
batch of their type (UnexpectedBatchTypeError, KeyError), and the idempotency wrapper of a scheduled job
raises on an event without its key. `refuse_unless` answers such an event deliberately instead: it logs a
warning naming what arrived and returns the function's "nothing done" answer, so nothing is retried for a
payload no retry can fix and no stack trace is the answer. A real batch, even one whose messages are
unreadable, goes through: each unreadable message is a batch item failure, retried and then kept in the
queue's DLQ, never dropped.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from tenantml.observability import logger

NOTHING_TO_RETRY: dict[str, Any] = {"batchItemFailures": []}


def _records(event: Any, source: str, id_key: str) -> list[Any] | None:
    if not isinstance(event, Mapping) or not isinstance(event.get("Records"), list):
        return None
    records = event["Records"]
    if not all(isinstance(r, Mapping) and r.get("eventSource") == source and isinstance(r.get(id_key), str)
               for r in records):
        return None
    return records


def sqs_batch(event: Any) -> bool:
    """An SQS event source mapping's batch (possibly empty)."""
    return _records(event, "aws:sqs", "messageId") is not None


def stream_batch(event: Any) -> bool:
    """A DynamoDB stream event source mapping's batch (possibly empty)."""
    return _records(event, "aws:dynamodb", "eventID") is not None


def scheduled_event(event: Any) -> bool:
    """An EventBridge (Scheduler or rule) event: source, detail-type and time."""
    return isinstance(event, Mapping) and all(isinstance(event.get(k), str) for k in ("source", "detail-type",
                                                                                        "time"))


def _describe(event: Any) -> dict[str, Any]:
    if isinstance(event, Mapping):
        return {"event_keys": sorted(str(k) for k in event)[:12], "source": str(event.get("source", ""))[:64]}
    return {"event_type": type(event).__name__}


def refuse_unless(accepts: Callable[[Any], bool], expected: str,
                  answer: Mapping[str, Any] = NOTHING_TO_RETRY) -> Callable:
    """Decorator for a handler: events `accepts` rejects get `answer` (and a warning); an empty batch gets
    it too (Powertools refuses to process one)."""
    def decorate(handler: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(handler)
        def wrapper(event: Any, context: Any) -> Any:
            if not accepts(event):
                logger.warning(f"refused an event that is not {expected}", extra=_describe(event))
                return dict(answer)
            if isinstance(event, Mapping) and event.get("Records") == []:
                return dict(answer)
            return handler(event, context)
        return wrapper
    return decorate


def batch_handler(record_handler: Callable[[Any], Any], kind: str = "SQS") -> Callable[[Any, Any], Any]:
    """The Lambda handler of a queue (kind "SQS") or stream ("DynamoDBStreams") consumer: Powertools'
    partial batch responses (a failed record is retried alone; every record of a wholly failed batch is
    reported too, so the invocation's metrics are still flushed), the logger's context, metrics, and
    `refuse_unless` for a payload that is not such a batch."""
    from aws_lambda_powertools.utilities.batch import (  # noqa: PLC0415 - only the consumers need it
        BatchProcessor,
        EventType,
        process_partial_response,
    )

    from tenantml.observability import metrics  # noqa: PLC0415

    event_type = EventType[kind]
    processor = BatchProcessor(event_type=event_type, raise_on_entire_batch_failure=False)
    accepts, expected = ((sqs_batch, "an SQS batch") if event_type is EventType.SQS
                         else (stream_batch, "a DynamoDB stream batch"))

    @logger.inject_lambda_context(clear_state=True)
    @refuse_unless(accepts, expected)
    @metrics.log_metrics
    def handler(event: Any, context: Any) -> dict[str, Any]:
        return process_partial_response(event=event, record_handler=record_handler, processor=processor,
                                        context=context)

    return handler
