"""The EventBridge adapter: put one platform event on the bus, retrying what EventBridge refused.

botocore already retries a throttled or failed *call*; a call that succeeds can still refuse entries
(`FailedEntryCount`, e.g. ThrottlingException or InternalFailure per entry), which nothing retries for
us. Both end, after `attempts`, in PublishFailed: the caller reports the record as failed, so Lambda's
event source mapping delivers it again. Nothing is swallowed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from tenantml.errors import ServiceUnavailable
from tenantml.events import SOURCE, EventDetail
from tenantml.settings import AwsSettings


class PublishFailed(ServiceUnavailable):
    """EventBridge did not accept the event after every attempt."""

    default_message = "event bus unavailable"


def entry(bus: str, detail_type: str, detail: EventDetail, resources: Sequence[str] = ()) -> dict[str, Any]:
    return {"Source": SOURCE, "DetailType": detail_type, "Detail": detail.model_dump_json(),
            "EventBusName": bus, "Resources": list(resources)}


class EventBridgeBus:
    def __init__(self, bus_name: str, aws: AwsSettings, *, client: Any | None = None, attempts: int = 3,
                 backoff_s: float = 0.1, sleep: Callable[[float], None] = time.sleep) -> None:
        if client is None:
            from tenantml.aws import botocore_client  # noqa: PLC0415 - no SDK import until needed

            client = botocore_client("events", aws)
        self.bus_name = bus_name
        self._events = client
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._sleep = sleep

    def put(self, detail_type: str, detail: EventDetail, resources: Sequence[str] = ()) -> str:
        """Put one event; returns its EventBridge id. Raises PublishFailed."""
        item = entry(self.bus_name, detail_type, detail, resources)
        why = "no attempt made"
        for attempt in range(self._attempts):
            if attempt:
                self._sleep(self._backoff_s * 2 ** (attempt - 1))
            try:
                resp = self._events.put_events(Entries=[item])
            except Exception as exc:  # noqa: BLE001 - botocore's own retries are spent; we try again
                # a timeout or connection error has `response` None: it is retried like the others
                code = (getattr(exc, "response", None) or {}).get("Error", {}).get("Code", exc)
                why = f"{type(exc).__name__}: {code}"
                continue
            result = (resp.get("Entries") or [{}])[0]
            if not resp.get("FailedEntryCount") and result.get("EventId"):
                return str(result["EventId"])
            why = f"entry refused: {result.get('ErrorCode', '?')} {result.get('ErrorMessage', '')}".strip()
        raise PublishFailed(detail=f"{detail_type} {detail.change_id} on {self.bus_name}: {why}")
