"""Per-version rollout signals: what the rollout controller compares candidate with stable on, the same
locally and on AWS. CloudWatch alone cannot drive the controller: moto evaluates no alarms and computes no
percentiles or metric math, and per-version error counts were never recorded. So the signals are
counters in a DynamoDB table (`signals`), keyed by the rollout's opaque id, never by the tenant:

    pk = "R#<rollout id>#V#<version>"   sk = "<YYYY-MM-DDTHH:MM>" (one item per minute)
    requests, errors                   requests answered and failed (5xx: the version's fault, not the
                                       client's 4xx) while routed under the rollout
    h<i>                               latency of the answered requests, counted per bucket i of
                                       tenantml.rollout.analysis's fixed log-spaced histogram (p95
                                       within +5%)
    shadow_compared, shadow_agreed     shadow mode: candidate runs on stable's input, and how often their
                                       first outputs agree
    labelled, correct                  ground truth joined with the version's predictions: the drift
                                       worker writes one item per (window, tenant) with sk
                                       "<window end minute>#accuracy#<tenant hash>" (PutItem: a retried
                                       job writes the same item, never counts twice)
    expires_at                         TTL: 14 days

Writers add with UpdateItem ADD (commutative: concurrent environments never lose a count). The inference
function buffers its counts in memory and writes them at most every `flush_seconds` (default 10 s), from
the request that finds them due, one UpdateItem per (rollout, version, minute) touched: the controller
sees a version's traffic at most ~10 s late, and an environment Lambda retires takes at most its last
10 s of counts with it. A failed write is logged and counted (`SignalFailures`), never fails a
prediction. The controller reads a version's items since its stage started with one Query.
"""

from __future__ import annotations

import bisect
import hashlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from tenantml.rollout.analysis import LATENCY_EDGES, LatencyHistogram

if TYPE_CHECKING:
    from tenantml.rollout.machine import Rollout, VersionSignals

TTL = timedelta(days=14)
_EDGES = LATENCY_EDGES.tolist()        # bisect on a list: ~1 us a request, where numpy takes ~16 us
MAX_LATENCIES = 1000                   # latency values kept per (rollout, version) between two publishes
COUNTERS = ("requests", "errors", "shadow_compared", "shadow_agreed", "labelled", "correct")


def signal_pk(rollout_id: str, version: str) -> str:
    return f"R#{rollout_id}#V#{version}"


def minute(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M")


@dataclass
class _Counts:
    numbers: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, n: int = 1) -> None:
        self.numbers[name] = self.numbers.get(name, 0) + n


class DynamoSignals:
    """The signal table through a DynamoDB client (boto3's or botocore's low-level client)."""

    def __init__(self, client: Any, table: str, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 ) -> None:
        self._ddb, self._table, self._clock = client, table, clock

    def add(self, rollout_id: str, version: str, at_minute: str, numbers: Mapping[str, int]) -> None:
        """ADD `numbers` (counter name or h<bucket> -> count) to one minute's item."""
        items = [(k, int(v)) for k, v in numbers.items() if v]
        if not items:
            return
        names = {f"#a{i}": k for i, (k, _) in enumerate(items)}
        values = {f":v{i}": {"N": str(v)} for i, (_, v) in enumerate(items)}
        expires = int((self._clock() + TTL).timestamp())
        self._ddb.update_item(
            TableName=self._table,
            Key={"pk": {"S": signal_pk(rollout_id, version)}, "sk": {"S": at_minute}},
            UpdateExpression="ADD " + ", ".join(f"#a{i} :v{i}" for i in range(len(items)))
                             + " SET expires_at = :exp",
            ExpressionAttributeNames=names,
            ExpressionAttributeValues={**values, ":exp": {"N": str(expires)}})

    def put_accuracy(self, rollout_id: str, version: str, window_end: datetime, tenant: str, *,
                     labelled: int, correct: int) -> None:
        """One drift window's labelled predictions of `version` under the rollout (idempotent)."""
        tenant_hash = hashlib.sha256(tenant.encode()).hexdigest()[:12]
        at = minute(window_end - timedelta(minutes=1))
        self._ddb.put_item(TableName=self._table, Item={
            "pk": {"S": signal_pk(rollout_id, version)}, "sk": {"S": f"{at}#accuracy#{tenant_hash}"},
            "labelled": {"N": str(int(labelled))}, "correct": {"N": str(int(correct))},
            "expires_at": {"N": str(int((self._clock() + TTL).timestamp()))}})

    def totals(self, rollout_id: str, version: str, since: datetime,
               ) -> tuple[dict[str, int], LatencyHistogram]:
        """Counters and latency histogram of the version under the rollout since `since` (whole minutes:
        the minute `since` falls in counts)."""
        numbers: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        latency: dict[int, int] = {}
        kwargs: dict[str, Any] = {
            "TableName": self._table, "ConsistentRead": True,
            "KeyConditionExpression": "pk = :pk AND sk >= :since",
            "ExpressionAttributeValues": {":pk": {"S": signal_pk(rollout_id, version)},
                                          ":since": {"S": minute(since)}}}
        while True:
            resp = self._ddb.query(**kwargs)
            for item in resp.get("Items", []):
                for name, value in item.items():
                    if "N" not in value or name == "expires_at":
                        continue
                    if name in numbers:
                        numbers[name] += int(value["N"])
                    elif name.startswith("h") and name[1:].isdigit():
                        latency[int(name[1:])] = latency.get(int(name[1:]), 0) + int(value["N"])
            if not resp.get("LastEvaluatedKey"):
                break
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]
        return numbers, LatencyHistogram.from_counts(latency)

    # --- what the rollout service and the controller read ---------------------------------------------

    def read(self, rollout: Rollout, version: str, since: datetime) -> VersionSignals:
        """What the controller judges on."""
        return self.observe(rollout, version, since)[0]

    def summary(self, rollout: Rollout, version: str, since: datetime) -> dict[str, Any]:
        """What the status shows."""
        return self.observe(rollout, version, since)[1]

    def observe(self, rollout: Rollout, version: str, since: datetime,
                ) -> tuple[VersionSignals, dict[str, Any]]:
        """Both `read` and `summary` from one Query."""
        from tenantml.rollout.machine import VersionSignals  # noqa: PLC0415 - off the inference init path

        numbers, hist = self.totals(rollout.id, version, since)
        requests, labelled = numbers["requests"], numbers["labelled"]
        signals = VersionSignals(requests=requests, errors=numbers["errors"], p95_ms=hist.percentile(95),
                                 labelled=labelled,
                                 accuracy=numbers["correct"] / labelled if labelled else None)
        return signals, {
            "version": version, "requests": requests, "errors": numbers["errors"],
            "error_rate": numbers["errors"] / requests if requests else None,
            "latency_ms": {f"p{q}": hist.percentile(q) for q in (50, 95, 99)},
            "labelled": labelled, "accuracy": numbers["correct"] / labelled if labelled else None,
            **({"shadow_compared": numbers["shadow_compared"],
                "shadow_agreement": numbers["shadow_agreed"] / numbers["shadow_compared"]}
               if numbers["shadow_compared"] else {}),
        }


class SignalRecorder:
    """The inference function's side: counts in memory, written every `flush_seconds`. `sink` is
    DynamoSignals (or anything with its `add`); `on_failure(exc, keys)` is told about a failed write;
    `publish(rollout_id, version, requests, errors, latencies_ms)` is called once per (rollout, version) at
    each flush (the inference function turns it into one EMF document for the candidate's alarms, instead
    of one per request; at most MAX_LATENCIES latency values are kept between two flushes)."""

    def __init__(self, sink: Any, *, flush_seconds: float = 10.0, clock: Callable[[], float] = time.time,
                 on_failure: Callable[[Exception, int], None] | None = None,
                 publish: Callable[[str, str, int, int, list[float]], None] | None = None) -> None:
        self._sink = sink
        self._publish = publish
        self._latencies: dict[tuple[str, str], list[float]] = {}
        self.flush_seconds = flush_seconds
        self.clock = clock              # epoch seconds (tests move it)
        self._on_failure = on_failure
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str, str], _Counts] = {}
        self._last_flush = clock()

    def _counts(self, rollout_id: str, version: str) -> _Counts:
        key = (rollout_id, version, minute(datetime.fromtimestamp(self.clock(), UTC)))
        found = self._pending.get(key)
        if found is None:
            found = self._pending[key] = _Counts()
        return found

    def request(self, rollout_id: str, version: str, latency_ms: float, *, error: bool = False) -> None:
        with self._lock:
            c = self._counts(rollout_id, version)
            c.add("requests")
            if error:
                c.add("errors")
            else:
                c.add(f"h{bisect.bisect_right(_EDGES, max(latency_ms, 0.0))}")
                kept = self._latencies.setdefault((rollout_id, version), [])
                if len(kept) < MAX_LATENCIES:
                    kept.append(latency_ms)

    def shadow(self, rollout_id: str, version: str, *, agreed: bool) -> None:
        with self._lock:
            c = self._counts(rollout_id, version)
            c.add("shadow_compared")
            if agreed:
                c.add("shadow_agreed")

    def flush(self) -> int:
        """Write everything pending; returns the items written. A failed item is reported and dropped."""
        with self._lock:
            pending, self._pending = self._pending, {}
            latencies, self._latencies = self._latencies, {}
            self._last_flush = self.clock()
        self._emit(pending, latencies)
        written = 0
        for (rollout_id, version, at), counts in pending.items():
            try:
                self._sink.add(rollout_id, version, at, counts.numbers)
                written += 1
            except Exception as exc:  # noqa: BLE001 - signals never fail a prediction: reported, dropped
                if self._on_failure is not None:
                    self._on_failure(exc, counts.numbers.get("requests", 0))
        return written

    def _emit(self, pending: Mapping[tuple[str, str, str], _Counts],
              latencies: Mapping[tuple[str, str], list[float]]) -> None:
        if self._publish is None:
            return
        totals: dict[tuple[str, str], list[int]] = {}
        for (rollout_id, version, _), counts in pending.items():
            t = totals.setdefault((rollout_id, version), [0, 0])
            t[0] += counts.numbers.get("requests", 0)
            t[1] += counts.numbers.get("errors", 0)
        for (rollout_id, version), (requests, errors) in totals.items():
            if requests:
                try:
                    self._publish(rollout_id, version, requests, errors,
                                  latencies.get((rollout_id, version), []))
                except Exception as exc:  # noqa: BLE001 - metrics never fail a prediction: reported
                    if self._on_failure is not None:
                        self._on_failure(exc, requests)

    def flush_due(self) -> int:
        if not self._pending or self.clock() - self._last_flush < self.flush_seconds:
            return 0
        return self.flush()
