"""gpu_result: SageMaker's success and error notifications -> the request's outcome, recorded once.

SageMaker publishes one JSON notification per finished invocation on the endpoint's success or error SNS
topic; both topics feed the gpu-results queue (so a failed recording is retried, then kept in a DLQ). The
notification names the request by `inferenceId` (the dispatcher sets it to the request id) and by its
`inputLocation`, whose key carries the tenant (`async/input/tenant=<t>/<id>.json`); both must agree.

- Completed: the answer (`responseParameters.outputLocation`) is read, its `model_name`/`model_version`
  set to what the client called, and written under the tenant (`async/results/tenant=<t>/<id>.json`)
  BEFORE the status moves to completed, so a completed request always has its answer.
- Failed: the reason is the container's own JSON error message when the failure object holds one (a 400
  for bad input says what was wrong), else a generic one; never an S3 URI or SageMaker's log hints.

The status moves only from queued/dispatched, so a notification delivered twice records nothing twice.
Each completed request logs a cost record with its GPU compute time (tenantml.monitoring.cost).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tenantml.gpu import requests as rq
from tenantml.observability import logger

GENERIC_FAILURE = "the model failed to answer"


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _RequestParameters(_Loose):
    inputLocation: str  # noqa: N815 - SageMaker's field names


class _ResponseParameters(_Loose):
    outputLocation: str | None = None   # noqa: N815
    failureLocation: str | None = None  # noqa: N815


class Notification(_Loose):
    invocationStatus: str                                   # noqa: N815 - "Completed" | "Failed"
    inferenceId: str = ""                                   # noqa: N815
    failureReason: str | None = None                        # noqa: N815
    requestParameters: _RequestParameters                   # noqa: N815
    responseParameters: _ResponseParameters = Field(default_factory=_ResponseParameters)  # noqa: N815


def parse_message(body: str) -> Notification:
    """The notification from an SQS body: an SNS envelope (`Type: Notification`, `Message` a JSON string)
    or the raw notification (raw message delivery)."""
    outer = json.loads(body)
    if isinstance(outer, dict) and outer.get("Type") == "Notification" \
            and isinstance(outer.get("Message"), str):
        outer = json.loads(outer["Message"])
    return Notification.model_validate(outer)


@dataclass(frozen=True)
class Recorded:
    verdict: str                # completed | failed | duplicate | unknown
    tenant: str = ""
    request_id: str = ""
    compute_ms: float | None = None


def _reason(failure: bytes | None) -> str:
    if failure:
        try:
            message = json.loads(failure).get("error")
        except (ValueError, AttributeError):
            message = None
        if isinstance(message, str) and message:
            return message[:rq.MAX_REASON]
    return GENERIC_FAILURE


class ResultRecorder:
    def __init__(self, *, store: rq.RequestStore, bucket: str, get_object: Callable[[str], bytes],
                 put_object: Callable[[str, bytes], None],
                 on_completed: Callable[[rq.AsyncRequest, float | None], None] | None = None) -> None:
        self.store, self.bucket, self._get, self._put = store, bucket, get_object, put_object
        self._on_completed = on_completed

    def _key(self, uri: str | None) -> str | None:
        """The key of an s3:// URI in our bucket; None otherwise (never read another bucket)."""
        if not uri:
            return None
        bucket, key = rq.split_s3_uri(uri)
        return key if bucket == self.bucket else None

    def handle(self, note: Notification) -> Recorded:
        input_key = self._key(note.requestParameters.inputLocation)
        named = rq.parse_input_key(input_key) if input_key else None
        if named is None or (note.inferenceId and note.inferenceId != named[1]):
            logger.warning("notification for no request of ours",
                           extra={"inference_id": note.inferenceId[:64]})
            return Recorded("unknown")
        tenant, rid = named
        request = self.store.get(tenant, rid)
        if request is None:
            return Recorded("unknown", tenant, rid)
        if not request.pending:
            return Recorded("duplicate", tenant, rid)
        if note.invocationStatus == "Completed":
            return self._completed(request, note)
        failure_key = self._key(note.responseParameters.failureLocation)
        failure = None
        if failure_key:
            try:
                failure = self._get(failure_key)
            except Exception as exc:
                code = (getattr(exc, "response", None) or {}).get("Error", {}).get("Code")
                if code not in ("NoSuchKey", "404"):
                    # a throttled or failed read says nothing about the failure: retried (then the DLQ),
                    # so the container's own reason is not replaced by the generic one
                    raise
                logger.warning("failure object missing; the reason is the generic one",
                               extra={"error": code})
        reason = _reason(failure)
        if note.failureReason and "expired" in note.failureReason.lower():
            reason = "the request expired before the GPU endpoint ran it"
        recorded = self.store.failed(tenant, rid, reason)
        logger.info("async request failed", extra={"request_id": rid, "reason": reason,
                                                   "sagemaker_reason": (note.failureReason or "")[:200]})
        return Recorded("failed" if recorded else "duplicate", tenant, rid)

    def _completed(self, request: rq.AsyncRequest, note: Notification) -> Recorded:
        output_key = self._key(note.responseParameters.outputLocation)
        if output_key is None:
            raise ValueError("completed notification without an output location in the artifact bucket")
        answer: dict[str, Any] = json.loads(self._get(output_key))
        answer["model_name"], answer["model_version"] = request.model, request.version
        params: Mapping[str, Any] = answer.get("parameters") or {}
        compute_ms = params.get("compute_ms")
        compute_ms = float(compute_ms) if isinstance(compute_ms, int | float) else None
        self._put(rq.result_key(request.tenant, request.id),
                  json.dumps(answer, separators=(",", ":")).encode())
        if not self.store.completed(request.tenant, request.id, compute_ms):
            return Recorded("duplicate", request.tenant, request.id)
        if self._on_completed is not None:
            self._on_completed(request, compute_ms)
        logger.info("async request completed", extra={"request_id": request.id, "compute_ms": compute_ms})
        return Recorded("completed", request.tenant, request.id, compute_ms)
