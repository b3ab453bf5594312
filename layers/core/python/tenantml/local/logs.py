"""Local mode's CloudWatch Logs: each function's log lines are shipped to the AWS emulator, into the log
group Lambda would write them to (/aws/lambda/<function name>, one stream per execution environment), so
what reads function logs on AWS with the CloudWatch Logs API (`tenantml cost`: FilterLogEvents) reads them
locally too.

What is shipped: every record of the functions' Powertools logger written while a local invocation runs
(tenantml.local.context.current_context()), as the same JSON line the logger writes to stdout (which it
still does). Not shipped: EMF metric lines (printed, not logged), lines logged during a cold start or on
threads a handler starts itself, and anything `tenantml invoke` runs.

Never blocking and never failing a request: the logging handler only formats the line and puts it in a
bounded queue (a full queue drops the line and counts it); one background thread sends batches with
PutLogEvents (every `interval_s`, or `max_batch` lines); a failed put drops its lines, is counted, and is
reported once on the `tenantml-local.logs` logger (outside the "tenantml" tree, so never shipped itself).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tenantml.local.context import current_context
from tenantml.settings import AwsSettings

log = logging.getLogger("tenantml-local.logs")
MAX_EVENTS_PER_PUT = 10_000            # PutLogEvents' limits: 10,000 events, 1,048,576 bytes (26 per event)
MAX_BYTES_PER_PUT = 1_048_576
EVENT_OVERHEAD_BYTES = 26


@dataclass
class _Flush:
    done: threading.Event = field(default_factory=threading.Event)


_STOP = object()


def _error_code(exc: Exception) -> str:
    return str((getattr(exc, "response", None) or {}).get("Error", {}).get("Code", ""))  # a timeout: None


class LogShipper:
    """Batches (group, stream, timestamp ms, line) and sends them with PutLogEvents on its own thread.
    `client`: a CloudWatch Logs client (default: one for `aws`, made on first use)."""

    def __init__(self, aws: AwsSettings | None = None, *, client: Any = None, interval_s: float = 1.0,
                 max_batch: int = 1000, max_queue: int = 10_000) -> None:
        self._aws = aws
        self._client = client
        self._client_lock = threading.Lock()
        self.interval_s = interval_s
        self.max_batch = max_batch
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._created: set[tuple[str, str]] = set()   # (group, "") for groups, (group, stream) for streams
        self.shipped = 0
        self.dropped = 0          # the queue was full
        self.failed = 0           # PutLogEvents (or creating the group/stream) failed
        self._warned = False

    # --- callers' side: never blocks -------------------------------------------------------------------

    def put(self, group: str, stream: str, timestamp_ms: int, message: str) -> None:
        try:
            self._queue.put_nowait((group, stream, int(timestamp_ms), message))
        except queue.Full:
            self.dropped += 1

    def start(self) -> LogShipper:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="tenantml-log-shipper", daemon=True)
            self._thread.start()
        return self

    def prepare(self, groups: Iterable[str]) -> None:
        """Create these log groups now (as the CDK app creates each function's), so reading one that has no
        lines yet finds it empty rather than missing."""
        for group in groups:
            try:
                self._ensure(group, "")
            except Exception as exc:  # noqa: BLE001 - shipping is never why the platform fails to start
                log.warning("cannot create log group %s (%s)", group, type(exc).__name__)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Send everything queued so far; True once it is sent (or dropped as failed)."""
        if self._thread is None or not self._thread.is_alive():
            return False
        marker = _Flush()
        try:
            self._queue.put(marker, timeout=timeout_s)
        except queue.Full:
            return False
        return marker.done.wait(timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Send what is queued, then stop the thread."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            return
        thread.join(timeout_s)

    # --- the shipping thread ---------------------------------------------------------------------------

    def _logs(self) -> Any:
        with self._client_lock:      # creating a boto3 client is not thread-safe; using one is
            if self._client is None:
                from tenantml.aws import client  # noqa: PLC0415 - boto3 only where shipping runs

                self._client = client("logs", self._aws or AwsSettings())
            return self._client

    def _loop(self) -> None:
        pending: list[tuple[str, str, int, str]] = []
        deadline = time.monotonic() + self.interval_s
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                item = None
            if isinstance(item, tuple):
                pending.append(item)
                if len(pending) < self.max_batch:
                    continue
            if pending:
                self._send(pending)
                pending = []
            deadline = time.monotonic() + self.interval_s
            if isinstance(item, _Flush):
                item.done.set()
            elif item is _STOP:
                return

    def _send(self, items: list[tuple[str, str, int, str]]) -> None:
        by_stream: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for group, stream, ts, message in items:
            by_stream.setdefault((group, stream), []).append({"timestamp": ts, "message": message})
        for (group, stream), events in by_stream.items():
            events.sort(key=lambda e: e["timestamp"])   # PutLogEvents wants them in order
            for batch in _batches(events):
                try:
                    self._ensure(group, stream)
                    self._logs().put_log_events(logGroupName=group, logStreamName=stream, logEvents=batch)
                    self.shipped += len(batch)
                except Exception as exc:  # noqa: BLE001 - shipping never fails the platform: counted, dropped
                    self.failed += len(batch)
                    if not self._warned:
                        self._warned = True
                        log.warning("shipping function logs to %s failed (%s); lines are dropped and counted",
                                    group, type(exc).__name__)

    def _ensure(self, group: str, stream: str) -> None:
        if (group, "") not in self._created:
            _create(lambda: self._logs().create_log_group(logGroupName=group))
            self._created.add((group, ""))
        if stream and (group, stream) not in self._created:
            _create(lambda: self._logs().create_log_stream(logGroupName=group, logStreamName=stream))
            self._created.add((group, stream))


def _create(call: Any) -> None:
    try:
        call()
    except Exception as exc:
        if _error_code(exc) != "ResourceAlreadyExistsException":
            raise


def _batches(events: list[dict[str, Any]]) -> Iterable[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    size = 0
    for event in events:
        n = len(event["message"].encode()) + EVENT_OVERHEAD_BYTES
        if batch and (len(batch) >= MAX_EVENTS_PER_PUT or size + n > MAX_BYTES_PER_PUT):
            yield batch
            batch, size = [], 0
        batch.append(event)
        size += n
    if batch:
        yield batch


class FunctionLogHandler(logging.Handler):
    """A logging handler for the functions' logger: ships each record logged during a local invocation to
    that invocation's log group and stream, formatted as the logger's own handler formats it."""

    def __init__(self, shipper: LogShipper, formatter: logging.Formatter) -> None:
        super().__init__()
        self.shipper = shipper
        self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        context = current_context()
        if context is None:
            return
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - a line that cannot be formatted is not shipped, and counted
            self.shipper.dropped += 1
            return
        self.shipper.put(context.log_group_name, context.log_stream_name, int(record.created * 1000), line)


def ship_function_logs(shipper: LogShipper) -> FunctionLogHandler:
    """Attach a FunctionLogHandler to the functions' Powertools logger (after its own handler, which stays
    first); `unship(handler)` removes it."""
    from tenantml.observability import logger  # noqa: PLC0415 - the functions' logger

    handler = FunctionLogHandler(shipper, logger.registered_formatter)
    logging.getLogger(logger.name).addHandler(handler)
    return handler


def unship(handler: FunctionLogHandler) -> None:
    from tenantml.observability import logger  # noqa: PLC0415

    logging.getLogger(logger.name).removeHandler(handler)
