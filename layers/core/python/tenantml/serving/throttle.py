"""Per-tenant request rate limits, shared by every execution environment: a noisy tenant gets 429s, the
others do not notice it.

API Gateway's stage throttling protects the platform as a whole, and usage plans (per API key) exist for
REST APIs only; behind an HTTP API there is nothing per tenant. So the inference function limits each
tenant itself, with its state in DynamoDB (the `throttle` table), because one Lambda environment sees only
a fraction of a tenant's traffic:

- fixed one-second windows per tenant: item `pk = T#<tenant>#<epoch second>`, attribute `used`, expiring
  a few minutes later (TTL);
- an environment does not write per request: it *leases* `lease` tokens at a time with one conditional
  UpdateItem (`ADD used :lease` if `used <= limit - lease`), spends them locally, and leases again when
  they are gone. DynamoDB sees one write per `lease` requests per environment; the limit is exact to
  within one lease per environment (an environment that cannot get a full lease gets none);
- a window that is used up answers 429 with `Retry-After: 1` until the next second;
- the table being unreachable (throttled, an outage) fails *open*: the request is served, a warning is
  logged and `ThrottleStoreErrors` counted. Rate limiting must not become the outage.

`TENANTML_TENANT_RATE_LIMIT` (requests per second per tenant; 0 turns it off) and
`TENANTML_TENANT_RATE_LEASE` set them; `TENANTML_THROTTLE_TABLE` names the table.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from tenantml.errors import Throttled
from tenantml.observability import logger, metrics

WINDOW_TTL_S = 300


class TenantThrottled(Throttled):
    def __init__(self, retry_after: int = 1) -> None:
        super().__init__("too many requests for this tenant; retry after the Retry-After delay",
                         detail="tenant rate limit")
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


@dataclass
class _Lease:
    window: int
    left: int


class TenantLimiter:
    """`admit(tenant)` or TenantThrottled. `ddb`: a botocore DynamoDB client (made on first use by
    `make_client` otherwise); `limit` per second per tenant; `lease` tokens per DynamoDB write."""

    def __init__(self, table: str, limit: int, *, lease: int | None = None, ddb: Any = None,
                 make_client: Callable[[], Any] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1 request per second")
        self.table, self.limit = table, limit
        self.lease = max(1, min(limit, lease if lease is not None else math.ceil(limit / 10)))
        self._ddb, self._make_client, self._clock = ddb, make_client, clock
        self._leases: dict[str, _Lease] = {}
        self._lock = threading.Lock()
        self.writes = 0                   # conditional UpdateItems made (tests, the load test)

    def _client(self) -> Any:
        if self._ddb is None:
            assert self._make_client is not None
            self._ddb = self._make_client()
        return self._ddb

    def admit(self, tenant: str) -> None:
        window = int(self._clock())
        with self._lock:
            held = self._leases.get(tenant)
            if held is not None and held.window == window and held.left > 0:
                held.left -= 1
                return
            if held is not None and held.window == window and held.left < 0:
                raise TenantThrottled()            # this window is used up: no write until the next one
            granted = self._take(tenant, window)
            if granted is None:                    # the store failed: serve (fail open)
                return
            self._leases[tenant] = _Lease(window, granted - 1 if granted else -1)
            if not granted:
                raise TenantThrottled()

    def _take(self, tenant: str, window: int) -> int | None:
        """Lease tokens of `window`: `lease`, or 0 when fewer are left; None if the store failed."""
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

        try:
            self._client().update_item(
                TableName=self.table, Key={"pk": {"S": f"T#{tenant}#{window}"}},
                UpdateExpression="ADD used :n SET expires_at = :ttl",
                ConditionExpression="attribute_not_exists(used) OR used <= :room",
                ExpressionAttributeValues={":n": {"N": str(self.lease)},
                                           ":room": {"N": str(self.limit - self.lease)},
                                           ":ttl": {"N": str(window + WINDOW_TTL_S)}})
            self.writes += 1
            return self.lease
        except ClientError as exc:
            self.writes += 1
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return 0
            return self._failed(exc)
        except BotoCoreError as exc:
            return self._failed(exc)

    @staticmethod
    def _failed(exc: Exception) -> None:
        logger.warning("tenant rate limit store unavailable; request admitted",
                       extra={"error": type(exc).__name__})
        metrics.add_metric(name="ThrottleStoreErrors", unit=MetricUnit.Count, value=1)
        return None
