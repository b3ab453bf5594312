"""Submit and poll: the inference function's side of the async (GPU) path.

`AsyncSubmitter.submit` runs after the request was validated against the model's manifest (so a bad
request is a 400 now, not a failure later): it stores the OIP payload under the tenant's input prefix,
creates the request item (status queued) and enqueues one dispatch job, then answers 202 with `Location:
<stage>/v2/requests/<id>`. The payload is always JSON: inputs sent with the binary tensor data extension
are decoded first, so the endpoint sees one format.

With an `Idempotency-Key` header the submit runs through Powertools idempotency (the platform's
idempotency table), keyed by (tenant, key): a retry with the same key and the same request answers the
first submit's id and enqueues nothing; the same key with a different request is a 422, and a retry while
the first is still being stored a 409 (the IETF Idempotency-Key draft's answers). Keys are per tenant: two
tenants can never collide on one. A submit that fails leaves no idempotency record, so its retry runs.

A submit that cannot store or queue the request answers 503 with Retry-After (the client retries); the
request item it may have created is marked failed with the reason, so no item is left queued with no job.
An idempotency table that fails before the submit ran is a 503 too; one that fails only to record the
success of a submit that ran answers the submit's 202 (the request is queued; losing its id would lose it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

from tenantml.errors import (
    BadRequest,
    Conflict,
    ModelUnavailable,
    NotFound,
    ServiceUnavailable,
    TenantMLError,
)
from tenantml.gpu import requests as rq
from tenantml.observability import logger
from tenantml.registry import ModelVersion
from tenantml.serving import oip

IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 255
POLL_AFTER_S = 1                     # Retry-After on 202 answers: what a poller waits
IDEMPOTENCY_EXPIRY_S = 24 * 3600     # as Stripe and the IETF draft suggest: a day of safe retries
RETRY_AFTER_S = 2                    # Retry-After on a 503: the store, queue or idempotency table refused


class NotStored(ServiceUnavailable):
    """The request could not be stored or queued (S3, DynamoDB, SQS or the idempotency table refused,
    after the SDK's retries): 503 with Retry-After; nothing was accepted, the client retries."""

    def __init__(self, public_message: str, *, detail: str | None = None) -> None:
        super().__init__(public_message, detail=detail)

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(RETRY_AFTER_S)}


class Unprocessable(TenantMLError):
    status = 422
    default_message = "unprocessable request"


class DispatchJob(BaseModel):
    """One queued request (the gpu-requests queue's message body)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tenant: str
    request_id: str
    attempt: int = 0                 # transient failures so far (re-queued with backoff)


def payload(request: oip.InferRequest, tensors: Mapping[str, oip.Tensor], response_id: str) -> bytes:
    """The JSON OIP request the endpoint runs: the validated tensors (binary inputs decoded), the outputs
    asked for, and the id the answer carries (the client's, else the request id)."""
    inputs = []
    for t in tensors.values():
        data = t.data if isinstance(t.data, list) else t.data.reshape(-1).tolist()
        inputs.append({"name": t.name, "shape": list(t.shape), "datatype": t.datatype, "data": data})
    body: dict[str, Any] = {"id": response_id, "inputs": inputs}
    if request.outputs:
        body["outputs"] = [{"name": o.name} for o in request.outputs]
    if request.parameters:
        kept = {k: v for k, v in request.parameters.items() if k != "binary_data_output"}
        if kept:
            body["parameters"] = kept
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def check_idempotency_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isascii() or not key.isprintable():
        raise BadRequest(f"{IDEMPOTENCY_KEY_HEADER} must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII "
                         "characters")
    return key


def accepted(request_id: str, model: str, version: str) -> dict[str, Any]:
    return {"id": request_id, "status": "pending", "model_name": model, "model_version": version}


def location(base_path: str, request_id: str) -> str:
    return f"{base_path}/v2/requests/{request_id}"


class AsyncSubmitter:
    """The GpuBackend of the inference service (tenantml.serving.service.GpuBackend)."""

    def __init__(self, *, store: rq.RequestStore, put_object: Callable[[str, bytes], None],
                 enqueue: Callable[[str], None], get_object: Callable[[str], bytes],
                 idempotency: Callable[[Callable[..., dict[str, Any]]], Callable[..., dict[str, Any]]]
                 | None = None) -> None:
        """`enqueue(body)` sends one message to the gpu-requests queue; `idempotency` wraps a function
        taking the keyword argument `submission` (Powertools `idempotent_function`), None to disable."""
        self.store, self._put, self._enqueue, self._get = store, put_object, enqueue, get_object
        self._submit_once = idempotency(self._submit) if idempotency else None
        self._idempotency_config = getattr(idempotency, "config", None)

    def register_lambda_context(self, context: Any) -> None:
        """The invocation's context: an in-progress idempotency record then expires with the invocation
        (a submit cut short by a timeout does not block its retry for the key's whole lifetime)."""
        if self._idempotency_config is not None and context is not None:
            self._idempotency_config.register_lambda_context(context)

    # --- submit ------------------------------------------------------------------------------------

    def submit(self, tenant: str, mv: ModelVersion, request: oip.InferRequest,
               tensors: Mapping[str, oip.Tensor], *, request_id: str | None = None,
               idempotency_key: str | None = None, base_path: str = "") -> tuple[int, dict[str, Any],
                                                                                  dict[str, str]]:
        rows = next(iter(tensors.values())).rows
        key = check_idempotency_key(idempotency_key)
        rid = rq.new_id()
        body = payload(request, tensors, request.id or rid)
        submission = {"tenant": tenant, "key": key, "owner": mv.owner, "model": mv.model,
                      "version": mv.version, "rows": rows, "request_id": rid,
                      "model_sha256": mv.manifest.files["model.onnx"].sha256 if "model.onnx" in
                      mv.manifest.files else "",
                      # what makes two submits "the same request" for the key (the id the answer carries
                      # is the client's, or the first submit's)
                      "digest": hashlib.sha256(payload(request, tensors, request.id or "")).hexdigest()}
        if key is not None and self._submit_once is not None:
            from aws_lambda_powertools.utilities.idempotency.exceptions import (  # noqa: PLC0415
                IdempotencyAlreadyInProgressError,
                IdempotencyPersistenceLayerError,
                IdempotencyValidationError,
            )

            done: list[dict[str, Any]] = []
            try:
                answer = self._submit_once(submission=submission, body=body, done=done)
            except IdempotencyPersistenceLayerError as exc:
                cause = type(exc.__cause__ or exc).__name__
                if not done:      # the table failed before the submit ran, or after it failed: retry
                    logger.warning("async submit: idempotency table unavailable", extra={"error": cause})
                    raise NotStored("the request could not be stored; retry",
                                    detail=f"idempotency: {cause}") from None
                # the request is stored and queued: its id is the answer, though the key's record is not
                logger.warning("async submit: idempotency record not completed",
                               extra={"error": cause, "request_id": done[0]["id"]})
                answer = done[0]
            except IdempotencyValidationError:
                raise Unprocessable(f"{IDEMPOTENCY_KEY_HEADER} was already used for a different "
                                    "request") from None
            except IdempotencyAlreadyInProgressError:
                raise Conflict(f"a request with this {IDEMPOTENCY_KEY_HEADER} is still being "
                               "submitted") from None
        else:
            answer = self._submit(submission=submission, body=body)
        headers = {"Location": location(base_path, answer["id"]), "Retry-After": str(POLL_AFTER_S)}
        return 202, answer, headers

    def _submit(self, *, submission: dict[str, Any], body: bytes,
                done: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Store and queue one request; `done` receives the answer once the request is queued."""
        s = submission
        tenant, rid = s["tenant"], s["request_id"]
        try:
            self._put(rq.input_key(tenant, rid), body)
            self.store.create(rq.AsyncRequest(tenant=tenant, id=rid, owner=s["owner"], model=s["model"],
                                              version=s["version"], model_sha256=s["model_sha256"],
                                              rows=s["rows"]))
        except TenantMLError:
            raise
        except Exception as exc:  # noqa: BLE001 - SDK errors: reported as 503, logged with their type
            logger.warning("async submit not stored", extra={"error": type(exc).__name__})
            # a write that timed out may have been applied: never leave that item queued with no job
            self._give_up(tenant, rid, "the request could not be stored")
            raise NotStored("the request could not be stored; retry", detail=type(exc).__name__) from None
        try:
            self._enqueue(DispatchJob(tenant=tenant, request_id=rid).model_dump_json())
        except Exception as exc:  # noqa: BLE001
            logger.warning("async submit not queued", extra={"error": type(exc).__name__})
            self._give_up(tenant, rid, "the request could not be queued")
            raise NotStored("the request could not be queued; retry", detail=type(exc).__name__) from None
        logger.info("async request queued", extra={"request_id": rid, "model": s["model"],
                                                   "version": s["version"], "rows": s["rows"]})
        answer = accepted(rid, s["model"], s["version"])
        if done is not None:
            done.append(answer)
        return answer

    def _give_up(self, tenant: str, rid: str, reason: str) -> None:
        """Mark a request the client was refused as failed (nothing happens when it was never created);
        best effort: the client's 503 does not depend on it."""
        try:
            self.store.failed(tenant, rid, reason)
        except Exception as exc:  # noqa: BLE001 - the table itself is failing; the item's TTL ends it
            logger.warning("async submit: refused request not marked failed",
                           extra={"request_id": rid, "error": type(exc).__name__})

    # --- poll --------------------------------------------------------------------------------------

    def status(self, tenant: str, request_id: str) -> tuple[int, str, dict[str, str]]:
        """(status, JSON body, headers) of GET /v2/requests/{id}: 202 pending, 200 the OIP answer, 200
        `{"status": "failed", "error": ...}`. Another tenant's id is not found, like an unknown one."""
        try:
            found = self.store.get(tenant, request_id)
        except Exception as exc:  # noqa: BLE001
            raise ModelUnavailable("request status unavailable", retry_after=POLL_AFTER_S,
                                   detail=type(exc).__name__) from None
        if found is None:
            raise NotFound(f"request '{request_id[:64]}' not found")
        if found.pending:
            return 202, json.dumps(accepted(found.id, found.model, found.version)), \
                {"Retry-After": str(POLL_AFTER_S)}
        if found.status == rq.FAILED:
            return 200, json.dumps({"id": found.id, "status": "failed", "model_name": found.model,
                                    "model_version": found.version,
                                    "error": found.reason or "the request failed"}), {}
        try:
            return 200, self._get(rq.result_key(tenant, found.id)).decode(), {}
        except Exception as exc:  # noqa: BLE001
            raise ModelUnavailable("the result is not readable yet", retry_after=POLL_AFTER_S,
                                   detail=type(exc).__name__) from None


def powertools_idempotency(table: str, dynamodb: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Powertools `idempotent_function` on the idempotency table, keyed by (tenant, Idempotency-Key),
    validating that a replay is the same request (its digest)."""
    from aws_lambda_powertools.utilities.idempotency import (  # noqa: PLC0415 - GPU submits only
        DynamoDBPersistenceLayer,
        IdempotencyConfig,
        idempotent_function,
    )

    persistence = DynamoDBPersistenceLayer(table_name=table, boto3_client=dynamodb)
    config = IdempotencyConfig(event_key_jmespath="[tenant, key]", payload_validation_jmespath="digest",
                               raise_on_no_idempotency_key=True, expires_after_seconds=IDEMPOTENCY_EXPIRY_S)

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        return idempotent_function(data_keyword_argument="submission", persistence_store=persistence,
                                   config=config)(fn)

    wrap.config = config  # type: ignore[attr-defined] - AsyncSubmitter.register_lambda_context
    return wrap
