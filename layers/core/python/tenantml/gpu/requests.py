"""Async requests: their DynamoDB items and S3 objects, one layout for submit, dispatch, result and poll.

    table `requests`:  pk = "T#<tenant>"   sk = "R#<request id>"   (TTL attribute `expires_at`)
    S3 (artifact bucket):
        async/input/tenant=<tenant>/<id>.json     the OIP request the endpoint reads (InputLocation)
        async/output/...                          where SageMaker writes answers (S3OutputPath)
        async/failures/...                        and failures (S3FailurePath)
        async/results/tenant=<tenant>/<id>.json   the answer, copied under its tenant by gpu_result

Every key starts with the tenant, so a request of another tenant is simply not found: the poll answers
404, exactly as for an id that never existed. Status moves one way: queued -> dispatched -> completed |
failed (queued -> failed too), each move a conditional write, so a duplicate notification or a redelivered
message records nothing twice.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

QUEUED, DISPATCHED, COMPLETED, FAILED = "queued", "dispatched", "completed", "failed"
OPEN = (QUEUED, DISPATCHED)
ID_RE = re.compile(r"[0-9a-f]{32}")
ASYNC_PREFIX = "async"
_INPUT_RE = re.compile(r"async/input/tenant=(?P<tenant>[^/]+)/(?P<id>[0-9a-f]{32})\.json")
MAX_REASON = 300


def new_id() -> str:
    return uuid.uuid4().hex


def input_key(tenant: str, request_id: str) -> str:
    return f"{ASYNC_PREFIX}/input/tenant={tenant}/{request_id}.json"


def result_key(tenant: str, request_id: str) -> str:
    return f"{ASYNC_PREFIX}/results/tenant={tenant}/{request_id}.json"


def parse_input_key(key: str) -> tuple[str, str] | None:
    """(tenant, request id) of an input key; None for anything else."""
    match = _INPUT_RE.fullmatch(key)
    return (match["tenant"], match["id"]) if match else None


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def split_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise ValueError(f"not an s3:// URI: {uri[:80]!r}")
    bucket, key = uri[5:].split("/", 1)
    return bucket, key


@dataclass(frozen=True)
class AsyncRequest:
    tenant: str
    id: str
    owner: str                 # the model's owner (the tenant or _shared)
    model: str
    version: str
    model_sha256: str
    rows: int
    status: str = QUEUED
    created_at: float = 0.0
    updated_at: float = 0.0
    reason: str | None = None           # a failure the client may read
    compute_ms: float | None = None     # the endpoint's compute time for this request

    @property
    def pending(self) -> bool:
        return self.status in OPEN


def _key(tenant: str, request_id: str) -> dict[str, Any]:
    return {"pk": {"S": f"T#{tenant}"}, "sk": {"S": f"R#{request_id}"}}


def _item(r: AsyncRequest, expires_at: int) -> dict[str, Any]:
    item = {**_key(r.tenant, r.id), "owner": {"S": r.owner}, "model": {"S": r.model},
            "version": {"S": r.version}, "model_sha256": {"S": r.model_sha256}, "rows": {"N": str(r.rows)},
            "status": {"S": r.status}, "created_at": {"N": repr(r.created_at)},
            "updated_at": {"N": repr(r.updated_at)}, "expires_at": {"N": str(expires_at)}}
    return item


def _from_item(item: Mapping[str, Any]) -> AsyncRequest:
    def s(name: str) -> str | None:
        return item[name]["S"] if name in item else None

    def n(name: str) -> float | None:
        return float(item[name]["N"]) if name in item else None

    return AsyncRequest(tenant=item["pk"]["S"][2:], id=item["sk"]["S"][2:], owner=s("owner") or "",
                        model=s("model") or "", version=s("version") or "",
                        model_sha256=s("model_sha256") or "", rows=int(n("rows") or 0),
                        status=s("status") or QUEUED, created_at=n("created_at") or 0.0,
                        updated_at=n("updated_at") or 0.0, reason=s("reason"), compute_ms=n("compute_ms"))


class RequestStore:
    """The `requests` table through a botocore DynamoDB client."""

    def __init__(self, dynamodb: Any, table: str, *, retention_s: int = 7 * 86400,
                 clock: Any = time.time) -> None:
        self._ddb, self.table, self.retention_s, self._clock = dynamodb, table, retention_s, clock

    def create(self, request: AsyncRequest) -> AsyncRequest:
        now = self._clock()
        request = AsyncRequest(**{**request.__dict__, "created_at": now, "updated_at": now})
        self._ddb.put_item(TableName=self.table, Item=_item(request, int(now) + self.retention_s),
                           ConditionExpression="attribute_not_exists(pk)")
        return request

    def get(self, tenant: str, request_id: str) -> AsyncRequest | None:
        if not ID_RE.fullmatch(request_id):
            return None
        item = self._ddb.get_item(TableName=self.table, Key=_key(tenant, request_id),
                                  ConsistentRead=True).get("Item")
        return _from_item(item) if item else None

    def _move(self, tenant: str, request_id: str, to: str, came_from: tuple[str, ...],
              extra: Mapping[str, Any] | None = None) -> bool:
        """Move the status if it is one of `came_from`; False when it was not (already moved, or gone)."""
        names = {"#s": "status"}
        values: dict[str, Any] = {":to": {"S": to}, ":now": {"N": repr(self._clock())}}
        sets = ["#s = :to", "updated_at = :now"]
        for i, (name, value) in enumerate((extra or {}).items()):
            names[f"#x{i}"] = name
            values[f":x{i}"] = value
            sets.append(f"#x{i} = :x{i}")
        allowed = []
        for i, status in enumerate(came_from):
            values[f":from{i}"] = {"S": status}
            allowed.append(f":from{i}")
        try:
            self._ddb.update_item(TableName=self.table, Key=_key(tenant, request_id),
                                  UpdateExpression="SET " + ", ".join(sets),
                                  ConditionExpression="attribute_exists(pk) AND #s IN "
                                                      f"({', '.join(allowed)})",
                                  ExpressionAttributeNames=names, ExpressionAttributeValues=values)
        except self._ddb.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def dispatched(self, tenant: str, request_id: str, inference_id: str) -> bool:
        return self._move(tenant, request_id, DISPATCHED, (QUEUED,),
                          {"inference_id": {"S": inference_id[:128]}})

    def completed(self, tenant: str, request_id: str, compute_ms: float | None) -> bool:
        extra = {} if compute_ms is None else {"compute_ms": {"N": repr(round(float(compute_ms), 3))}}
        return self._move(tenant, request_id, COMPLETED, OPEN, extra)

    def failed(self, tenant: str, request_id: str, reason: str) -> bool:
        return self._move(tenant, request_id, FAILED, OPEN, {"reason": {"S": reason[:MAX_REASON]}})
