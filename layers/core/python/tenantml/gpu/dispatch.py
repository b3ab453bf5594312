"""gpu_dispatch: one queued request -> InvokeEndpointAsync (its payload already in S3).

What a failure means decides where the message goes:

- transient (throttling, a 5xx, an endpoint that is updating or whose model is not ready, a connection
  or read timeout): the job is sent again to the same queue with a backoff delay (exponential, full
  jitter, at most SQS's 15 minutes) and the received message is deleted. Its receive count never grows,
  so however long the endpoint throttles, a good request never reaches the DLQ. It is given up only when
  the request outlives `request_timeout_s` (then it fails with a reason the client reads).
- the request's own fault (anything else: a validation error, an endpoint that does not exist): the
  message is failed as a batch item, so SQS delivers it again; at its `max_receive_count`-th receive the
  request is marked failed (the reason is the client's to read) and the message goes to the DLQ.
- already dispatched or finished (a redelivery): nothing is sent again.

The endpoint gets `InferenceId` = the request id and `CustomAttributes` `model_sha256=...`, so the
container refuses a request for another model version than the one it serves.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tenantml.gpu import requests as rq
from tenantml.gpu.submit import DispatchJob
from tenantml.observability import logger

TRANSIENT_CODES = frozenset({
    "ThrottlingException", "Throttling", "TooManyRequestsException", "ServiceUnavailable",
    "ServiceUnavailableException", "InternalFailure", "InternalServerError", "InternalDependencyException",
    "ModelNotReadyException", "RequestTimeout", "RequestTimeoutException", "SlowDown",
})
_UPDATING = ("is updating", "is being updated", "is in updating", "not in service", "is creating")
MAX_DELAY_S = 900          # SQS DelaySeconds maximum
BASE_DELAY_S = 2
MIN_REQUEST_TTL_S, MAX_REQUEST_TTL_S = 60, 21600   # InvokeEndpointAsync RequestTTLSeconds bounds


class Transient(Exception):
    """A fault that says nothing about the request: try again later."""


class Refused(Exception):
    """A fault of the request itself (or of the endpoint's configuration): counts against its budget."""


def classify(exc: Exception) -> Exception:
    """Transient or Refused, from a botocore error (or anything else, which is Refused)."""
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError  # noqa: PLC0415

    if isinstance(exc, ConnectionError | HTTPClientError):
        return Transient(type(exc).__name__)
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        message = str(error.get("Message", "")).lower()
        if code in TRANSIENT_CODES or status >= 500 or status == 429 or \
                (code == "ValidationError" and any(m in message for m in _UPDATING)):
            return Transient(code or str(status))
        return Refused(code or str(status))
    return Refused(type(exc).__name__)


def backoff_s(attempt: int, rng: Callable[[], float] = random.random) -> int:
    """Full-jitter exponential backoff (AWS Architecture Blog), at least 1 s, at most 15 minutes."""
    cap = min(MAX_DELAY_S, BASE_DELAY_S * 2 ** min(attempt, 16))
    return max(1, int(cap * rng()))


@dataclass(frozen=True)
class Outcome:
    verdict: str                 # dispatched | requeued | duplicate | missing | expired
    delay_s: int = 0


class Dispatcher:
    def __init__(self, *, store: rq.RequestStore, runtime: Any, requeue: Callable[[str, int], None],
                 bucket: str, endpoint_name: str, request_timeout_s: int, max_receive_count: int,
                 clock: Callable[[], float] = time.time, rng: Callable[[], float] = random.random) -> None:
        """`runtime`: a sagemaker-runtime client; `requeue(body, delay_s)` sends to the gpu-requests queue."""
        self.store, self.runtime, self._requeue = store, runtime, requeue
        self.bucket, self.endpoint_name = bucket, endpoint_name
        self.request_timeout_s, self.max_receive_count = request_timeout_s, max_receive_count
        self._clock, self._rng = clock, rng

    def handle(self, job: DispatchJob, receive_count: int) -> Outcome:
        """One job, acting for its tenant: with a scoped request store (wiring.dispatcher with tenant
        sessions) the request item is read and moved with that tenant's credentials only."""
        from tenantml.tenancy import acting_for  # noqa: PLC0415

        with acting_for(job.tenant):
            return self._handle(job, receive_count)

    def _handle(self, job: DispatchJob, receive_count: int) -> Outcome:
        try:
            request = self.store.get(job.tenant, job.request_id)
        except Exception as exc:  # noqa: BLE001 - the table, not the request: transient
            return self._again(job, Transient(type(exc).__name__))
        if request is None:
            logger.warning("async request not found (expired?)", extra={"request_id": job.request_id})
            return Outcome("missing")
        if request.status != rq.QUEUED:
            return Outcome("duplicate")
        age = self._clock() - request.created_at
        if age >= self.request_timeout_s:
            self.store.failed(job.tenant, job.request_id, "timed out waiting for GPU capacity")
            return Outcome("expired")
        if not self.endpoint_name:
            return self._refused(job, receive_count, Refused("no GPU endpoint is deployed"))
        try:
            answer = self.runtime.invoke_endpoint_async(
                EndpointName=self.endpoint_name,
                InputLocation=rq.s3_uri(self.bucket, rq.input_key(job.tenant, job.request_id)),
                ContentType="application/json", Accept="application/json",
                InferenceId=job.request_id,
                CustomAttributes=f"model_sha256={request.model_sha256};request_id={job.request_id}",
                RequestTTLSeconds=int(min(MAX_REQUEST_TTL_S,
                                          max(MIN_REQUEST_TTL_S, self.request_timeout_s - age))))
        except Exception as exc:  # noqa: BLE001 - classified below
            fault = classify(exc)
            if isinstance(fault, Transient):
                return self._again(job, fault)
            return self._refused(job, receive_count, fault)
        self.store.dispatched(job.tenant, job.request_id, str(answer.get("InferenceId") or job.request_id))
        logger.info("async request dispatched", extra={"request_id": job.request_id, "model": request.model,
                                                       "version": request.version})
        return Outcome("dispatched")

    def _again(self, job: DispatchJob, fault: Transient) -> Outcome:
        delay = backoff_s(job.attempt, self._rng)
        nxt = DispatchJob(tenant=job.tenant, request_id=job.request_id, attempt=job.attempt + 1)
        self._requeue(nxt.model_dump_json(), delay)   # raises if SQS refuses: then the item fails, retried
        logger.info("async dispatch deferred", extra={"request_id": job.request_id, "reason": str(fault),
                                                      "attempt": nxt.attempt, "delay_s": delay})
        return Outcome("requeued", delay)

    def _refused(self, job: DispatchJob, receive_count: int, fault: Exception) -> Outcome:
        if receive_count >= self.max_receive_count:
            self.store.failed(job.tenant, job.request_id,
                              f"the GPU endpoint refused the request ({fault})")
        raise fault
