"""InferenceService: the Open Inference Protocol v2 operations for one execution environment.

Tenancy: every operation takes the caller's tenant (from the authorizer context, resolved by the API
layer). A model name resolves to the tenant's own model, then the `_shared` one; anything else is
ModelNotFound, with the same message as a model that does not exist. Responses never carry the owner.

The service holds the registry (behind a short TTL cache), the model runtime (memory-bounded LRU of loaded
models), the prediction cache, and the seam for models served by the GPU endpoint.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import numpy as np
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from cachetools import TTLCache

from tenantml import SHARED_TENANT, __version__
from tenantml.errors import (
    BadRequest,
    IntegrityError,
    ModelNotFound,
    ModelUnavailable,
    NotFound,
    TenantMLError,
)
from tenantml.manifest import NAME_RE, TENANT_RE, VERSION_RE
from tenantml.monitoring.cost import note_inference
from tenantml.observability import NAMESPACE, logger, metrics
from tenantml.registry import ArtifactStore, ModelSummary, ModelVersion, Registry
from tenantml.serving import oip
from tenantml.serving.cache import CachingRegistry, PredictionCache
from tenantml.serving.capture import CaptureSink, capture_columns
from tenantml.serving.runtime import EmbeddingModel, HeadModel, LoadedModel, ModelKey, ModelRuntime, model_key
from tenantml.settings import (
    AsyncSettings,
    AwsSettings,
    ServingSettings,
    SignalSettings,
    TenancySettings,
    ThrottleSettings,
)
from tenantml.tenancy import ScopedClient, TenantSessions, acting_for

if TYPE_CHECKING:
    from tenantml.rollout.signals import SignalRecorder
    from tenantml.serving.throttle import TenantLimiter

SERVER_NAME = "tenantml"


@contextmanager
def _registry_errors() -> Iterator[None]:
    """A registry that cannot answer (throttling, an outage) is a 503 with Retry-After, not a 500;
    domain errors (ModelNotFound, BadRequest) pass through unchanged."""
    try:
        yield
    except TenantMLError:
        raise
    except Exception as exc:  # noqa: BLE001 - adapter/SDK errors: logged as detail, never shown
        code = (getattr(exc, "response", None) or {}).get("Error", {}).get("Code")   # AccessDenied...
        raise ModelUnavailable(retry_after=5, detail=f"registry unavailable: {type(exc).__name__}"
                                                     + (f" ({code})" if code else "")) from None


def _for_tenant(operation: Callable[..., Any]) -> Callable[..., Any]:
    """An operation on behalf of its `tenant` argument (the first): its AWS calls run with that tenant's
    scoped credentials where the service has them (tenantml.tenancy), never another tenant's."""

    @functools.wraps(operation)
    def wrapper(self: InferenceService, tenant: str, *args: Any, **kwargs: Any) -> Any:
        with acting_for(tenant):
            return operation(self, tenant, *args, **kwargs)

    return wrapper


@dataclass(frozen=True)
class Reply:
    """What an operation answers: a serialized JSON body, a status and extra headers."""

    body: str | bytes              # bytes: a binary tensor data response
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


class GpuBackend(Protocol):
    """Models whose manifest says `backend: gpu` are served by the SageMaker async endpoint
    (tenantml.gpu.submit.AsyncSubmitter): submit answers (status, body, headers); `status` is the poll."""

    def submit(self, tenant: str, mv: ModelVersion, request: oip.InferRequest,
               tensors: Mapping[str, oip.Tensor], *, request_id: str | None = None,
               idempotency_key: str | None = None, base_path: str = "") -> tuple[int, dict[str, Any],
                                                                                  dict[str, str]]: ...

    def status(self, tenant: str, request_id: str) -> tuple[int, str, dict[str, str]]: ...


class GpuNotConfigured:
    """No GPU endpoint is deployed (no image/model context given to the CDK app): a GPU model exists but
    cannot run, 503 with Retry-After; no request was ever accepted, so every poll is a 404."""

    retry_after = 60

    def submit(self, tenant: str, mv: ModelVersion, request: oip.InferRequest,
               tensors: Mapping[str, oip.Tensor], **_: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
        raise ModelUnavailable("no GPU endpoint is deployed for this model", retry_after=self.retry_after,
                               detail="gpu backend not configured")

    def status(self, tenant: str, request_id: str) -> tuple[int, str, dict[str, str]]:
        raise NotFound(f"request '{request_id[:64]}' not found")


class InferenceService:
    def __init__(self, *, registry: Registry, store: ArtifactStore, settings: ServingSettings,
                 runtime: ModelRuntime | None = None, gpu: GpuBackend | None = None,
                 timer: Any = time.monotonic, capture: CaptureSink | None = None,
                 put_object: Callable[[str, bytes], None] | None = None,
                 signals: SignalRecorder | None = None, limiter: TenantLimiter | None = None) -> None:
        """`put_object(key, data)` writes to the artifact bucket (ground-truth feedback); `signals` records
        what each version of a live rollout did (tenantml.rollout.signals)."""
        self.settings = settings
        self.limiter = limiter
        self.capture = capture
        self.signals = signals
        self._put_object = put_object
        self._shadow_pool: ThreadPoolExecutor | None = None
        self._shadow_pending: list[Future[None]] = []
        self.registry = CachingRegistry(registry, ttl=settings.registry_cache_ttl_seconds, timer=timer,
                                        rollout_ttl=settings.rollout_cache_ttl_seconds)
        self.runtime = runtime or ModelRuntime(store, budget_bytes=settings.model_cache_mb * 1024 * 1024)
        self.predictions = PredictionCache(size=settings.prediction_cache_size,
                                           ttl=settings.prediction_cache_ttl_seconds, timer=timer)
        self.gpu: GpuBackend = gpu or GpuNotConfigured()
        # Versions whose artifacts failed verification, not retried for a minute (see _healthy).
        self._unverifiable: TTLCache[ModelKey, IntegrityError] = TTLCache(maxsize=256, ttl=60, timer=timer)

    # --- server ----------------------------------------------------------------------------------

    def admit(self, tenant: str) -> None:
        """The tenant's request rate limit (tenantml.serving.throttle): 429 once its window is used up."""
        if self.limiter is not None:
            self.limiter.admit(tenant)

    @staticmethod
    def server_metadata() -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": [oip.BINARY_EXTENSION]}

    @staticmethod
    def live() -> dict[str, Any]:
        return {"live": True}

    @staticmethod
    def ready() -> dict[str, Any]:
        # Models load on demand (or at init via preload_models): a started environment can serve.
        return {"ready": True}

    # --- models ----------------------------------------------------------------------------------

    def resolve(self, tenant: str, model: str, version: str | None = None) -> ModelVersion:
        """The version the tenant may call, or ModelNotFound (identical for missing and foreign models)."""
        if not NAME_RE.fullmatch(model) or (version is not None and not VERSION_RE.fullmatch(version)):
            raise ModelNotFound(model[:64], None if version is None else version[:32])
        with _registry_errors():
            mv = self.registry.resolve(tenant, model, version)
        if mv.owner not in (tenant, SHARED_TENANT):  # defence in depth: never serve a foreign model
            logger.error("registry returned a foreign model", extra={"owner": mv.owner})
            raise ModelNotFound(model, version)
        return mv

    @_for_tenant
    def list_models(self, tenant: str) -> dict[str, Any]:
        models = [self._summary(s) for s in self._visible(tenant)]
        return {"models": sorted(models, key=lambda m: m["name"])}

    @_for_tenant
    def model_metadata(self, tenant: str, model: str, version: str | None = None) -> dict[str, Any]:
        mv = self.resolve(tenant, model, version)
        self._bind(mv)
        versions = next((list(s.versions) for s in self._visible(tenant)
                         if s.model == mv.model and s.owner == mv.owner), [mv.version])
        return oip.model_metadata(model, versions, mv.manifest)

    @_for_tenant
    def model_ready(self, tenant: str, model: str, version: str | None = None) -> dict[str, Any]:
        """Loads the model (a warm-up call); 503 if its artifacts cannot be loaded or it runs on the GPU."""
        mv = self.resolve(tenant, model, version)
        self._bind(mv)
        if mv.manifest.backend == "gpu":   # served by the endpoint, which scales out on demand
            if isinstance(self.gpu, GpuNotConfigured):
                raise ModelUnavailable("no GPU endpoint is deployed for this model",
                                       retry_after=GpuNotConfigured.retry_after, detail="gpu backend")
            return {"name": model, "ready": True}
        self._load(mv)
        return {"name": model, "ready": True}

    # --- inference -------------------------------------------------------------------------------

    @_for_tenant
    def infer(self, tenant: str, model: str, version: str | None, body: str | bytes | None, *,
              json_length: int | None = None, request_id: str | None = None, subject: str = "",
              idempotency_key: str | None = None, base_path: str = "") -> Reply:
        """`json_length`: the Inference-Header-Content-Length header (binary tensor data extension);
        `subject`: the caller within the tenant (the token's `sub`), what a rollout routes by;
        `idempotency_key`, `base_path` (the stage prefix of the Location header): GPU models' submits."""
        t0 = time.perf_counter()
        parsed = oip.parse_request(body, max_bytes=self.settings.max_body_bytes, json_length=json_length)
        request = parsed.request
        if request.model_name is not None and request.model_name != model:
            raise BadRequest(f"model_name in the body ('{request.model_name[:64]}') does not match the "
                             f"model in the path ('{model}')")
        mv = self.resolve(tenant, model, version)
        routed, shadow = (self._route(tenant, model, subject, mv)
                          if version is None and mv.rollout is not None and mv.rollout.live else (None, None))
        mv = routed or mv
        t_served = time.perf_counter()      # a version's latency: from here (lookups are the platform's)
        self._bind(mv)
        manifest = mv.manifest
        tensors = oip.decode_inputs(request, manifest.inputs, max_batch=self.settings.max_batch,
                                    binary=parsed.binary)
        if manifest.backend == "gpu":
            status, answer, headers = self.gpu.submit(tenant, mv, request, tensors, request_id=request_id,
                                                      idempotency_key=idempotency_key, base_path=base_path)
            note_inference(mv.model, mv.version, next(iter(tensors.values())).rows)  # the submit's own cost
            return Reply(json.dumps(answer, separators=(",", ":")), status=status, headers=headers)
        selected = oip.requested_outputs(request, manifest.outputs)
        binary = request.binary_outputs(selected or [s.name for s in manifest.outputs])
        rows = next(iter(tensors.values())).rows

        if routed is None and version is None:
            mv = self._healthy(tenant, mv)          # a tampered artifact: the previous healthy version
        outputs = None
        if self.predictions.enabled:
            key = self.predictions.key(tenant, mv, oip.input_digest(tensors))
            outputs = self.predictions.get(key)
        hit = outputs is not None
        loading_s = 0.0
        if outputs is None:
            try:
                if routed is not None:      # a model's first load is not the version's serving latency
                    t_load = time.perf_counter()
                    self._load(mv)
                    loading_s = time.perf_counter() - t_load
                values = self._predict(mv, tensors)
            except Exception:
                if routed is not None:
                    self._signal(mv, (time.perf_counter() - t_served) * 1000, error=True)
                raise
            outputs = [oip.encode_output(s.name, s.datatype, values[s.name]) for s in manifest.outputs]
            if self.predictions.enabled:
                self.predictions.put(key, outputs)
        # The response's id is the client's, else the one the platform assigned (the API Gateway request id):
        # what ground-truth feedback names the prediction by.
        rid = request.id or request_id
        body_out, header_length = oip.infer_response_parts(model, mv.version, rid, outputs, selected, binary)
        served_ms = (time.perf_counter() - t_served - loading_s) * 1000   # before capture's occasional write
        self._record(mv, rows, hit if self.predictions.enabled else None, t0)
        self._capture(tenant, mv, rid or "", tensors, outputs)
        if routed is not None:
            self._signal(mv, served_ms)
        if shadow is not None:
            self._run_shadow(tenant, mv, shadow, rid or "", tensors, outputs)
        if header_length is None:
            return Reply(body_out)
        return Reply(body_out, headers={oip.HEADER_LENGTH: str(header_length)},
                     content_type="application/octet-stream")

    @_for_tenant
    def request_status(self, tenant: str, request_id: str) -> Reply:
        """GET /v2/requests/{id}: an async (GPU) request of the caller's tenant; 404 for any other id."""
        status, body, headers = self.gpu.status(tenant, request_id)
        return Reply(body, status=status, headers=headers)

    # --- rollouts --------------------------------------------------------------------------------

    def _route(self, tenant: str, model: str, subject: str, production: ModelVersion,
               ) -> tuple[ModelVersion | None, ModelVersion | None]:
        """(the version that answers, the version to shadow) under the model's live rollout: a consistent
        hash of (model, tenant, subject) against the stage's weight (tenantml.rollout.machine.route).
        Resolutions are cached like any other, so routing adds no registry call per request."""
        from tenantml.rollout.machine import route  # noqa: PLC0415 - only models with a live rollout

        chosen, shadow = route(production.rollout, tenant, subject)
        if chosen is None:
            return None, None
        answer = production if chosen == production.version else self.resolve(tenant, model, chosen)
        return answer, (self.resolve(tenant, model, shadow) if shadow else None)

    def _signal(self, mv: ModelVersion, latency_ms: float, *, error: bool = False) -> None:
        """What a routed request did, for the rollout controller (signal table) and the candidate's alarms
        (EMF metrics with dimensions rollout and version, never the tenant, written with the signals:
        publish_rollout_metrics). Never fails a request. The
        latency is decoding the inputs, predicting and encoding the answer; it leaves out the registry
        lookups, loading the model into a cold environment (ModelLoadTime counts that) and capture's
        occasional frame write: a candidate is judged on serving, not on being new in every environment
        it reaches."""
        rollout = mv.rollout
        if self.signals is None or rollout is None:
            return
        try:
            self.signals.request(rollout.id, mv.version, latency_ms, error=error)
            self.signals.flush_due()
        except Exception as exc:  # noqa: BLE001 - signals never fail a prediction: logged and counted
            signals_failed(exc, 1)

    def _run_shadow(self, tenant: str, stable: ModelVersion, candidate: ModelVersion, request_id: str,
                    tensors: Mapping[str, oip.Tensor], answered: Any) -> None:
        """Shadow mode: the candidate runs on the same input on a background thread, after the answer is
        ready (the response never waits for it); its outputs are captured under its own version and
        whether its first output agrees with stable's is counted. In Lambda the thread runs while the
        environment is thawed: work left when a response returns finishes during the next invocation."""
        if self._shadow_pool is None:
            self._shadow_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadow")

        def run() -> None:
            try:
                with acting_for(tenant):     # a pool thread: the request's context does not follow it
                    values = self._predict(candidate, tensors)
                outputs = [oip.encode_output(s.name, s.datatype, values[s.name])
                           for s in candidate.manifest.outputs]
                agreed = _agree(answered[0].value, outputs[0].value)
                if self.signals is not None and candidate.rollout is not None:
                    self.signals.shadow(candidate.rollout.id, candidate.version, agreed=agreed)
                self._capture(tenant, candidate, request_id, tensors, outputs)
            except Exception as exc:  # noqa: BLE001 - the shadow never affects the answer: logged, counted
                logger.warning("shadow prediction failed", extra={"error": type(exc).__name__,
                                                                  "version": candidate.version})
                if self.signals is not None and candidate.rollout is not None:
                    self.signals.request(candidate.rollout.id, candidate.version, 0.0, error=True)
        self._shadow_pending = [f for f in self._shadow_pending if not f.done()]
        self._shadow_pending.append(self._shadow_pool.submit(run))

    def wait_for_shadows(self, timeout: float | None = None) -> None:
        """Block until the shadow predictions submitted so far are done (tests, local mode)."""
        for future in list(self._shadow_pending):
            future.result(timeout=timeout)

    @_for_tenant
    def feedback(self, tenant: str, model: str, body: str | bytes | None) -> Reply:
        """Ground truth for earlier predictions of `model` (tenantml.monitoring.feedback), stored under the
        caller's tenant. A failed write is a 503 (the client retries; nothing is stored half)."""
        from tenantml.monitoring.feedback import encode_batch, feedback_key, parse_batch  # noqa: PLC0415

        mv = self.resolve(tenant, model)
        batch = parse_batch(oip.parse_json_strict(body, max_bytes=self.settings.max_body_bytes))
        if self._put_object is None:
            raise ModelUnavailable(retry_after=60, detail="feedback store not configured")
        now = datetime.now(UTC)
        try:
            self._put_object(feedback_key(tenant, mv.model, now), encode_batch(tenant, mv.model, batch, now))
        except Exception as exc:  # noqa: BLE001 - reported to the caller as retryable, logged with detail
            logger.warning("feedback write failed", extra={"error": type(exc).__name__})
            raise ModelUnavailable("feedback could not be stored", retry_after=5,
                                   detail=f"feedback write: {type(exc).__name__}") from None
        return Reply(json.dumps({"model": model, "accepted": len(batch.feedback)}, separators=(",", ":")),
                     status=202)

    def _capture(self, tenant: str, mv: ModelVersion, request_id: str, tensors: Mapping[str, oip.Tensor],
                 outputs: Any) -> None:
        """A sample of the request for drift checks; never fails or delays the prediction beyond the
        occasional frame write (see tenantml.serving.capture)."""
        if self.capture is None:
            return
        rate = self.settings.capture_rate if mv.manifest.capture_rate is None else mv.manifest.capture_rate
        try:
            sampled = self.capture.sampled(rate)
            # A text model's derived features come from its prediction, or from a memo scoped like the
            # prediction cache when that cache answered the request.
            scope = (tenant, mv.owner, mv.model, mv.version) if self.predictions.enabled else None
            text = self.capture.derived_text(mv.manifest, tensors, sampled=sampled, memo_scope=scope)
            if sampled:
                columns = capture_columns(mv.manifest, tensors, {o.name: o.value for o in outputs}, text)
                if columns is not None:
                    self.capture.add(tenant, mv.model, mv.version, request_id, *columns)
            self.capture.flush_due()
        except Exception as exc:  # noqa: BLE001 - capture never fails a prediction: logged and counted
            capture_failed(exc, 0)

    @staticmethod
    def _record(mv: ModelVersion, rows: int, cache_hit: bool | None, t0: float) -> None:
        """Request metrics, flushed by the handler. Dimensions: model and version only (never the tenant:
        unbounded cardinality, and not something a metric should reveal). The rows also go to the cost
        record the handler logs (tenantml.monitoring.cost: tenant, model and version as log fields)."""
        note_inference(mv.model, mv.version, rows)
        metrics.add_dimension(name="model", value=mv.model)
        metrics.add_dimension(name="version", value=mv.version)
        metrics.add_metric(name="Rows", unit=MetricUnit.Count, value=rows)
        if cache_hit is not None:
            metrics.add_metric(name="PredictionCacheHit", unit=MetricUnit.Count, value=int(cache_hit))
        metrics.add_metric(name="InferenceLatency", unit=MetricUnit.Milliseconds,
                           value=round((time.perf_counter() - t0) * 1000, 3))

    def preload(self, entries: Iterable[str]) -> list[str]:
        """Load "tenant/model[/version]" entries now (init phase, SnapStart); failures are logged only."""
        loaded: list[str] = []
        for entry in entries:
            parts = entry.strip().strip("/").split("/")
            if len(parts) not in (2, 3) or not TENANT_RE.fullmatch(parts[0]):
                logger.warning("ignoring invalid preload entry", extra={"entry": entry})
                continue
            try:
                with acting_for(parts[0]):
                    self._load(self.resolve(parts[0], parts[1], parts[2] if len(parts) == 3 else None))
                loaded.append(entry.strip())
            except (ModelNotFound, ModelUnavailable) as exc:
                logger.warning("preload failed", extra={"entry": entry, "error": exc.public_message,
                                                        "detail": exc.detail})
        return loaded

    # --- internals -------------------------------------------------------------------------------

    @staticmethod
    def _bind(mv: ModelVersion) -> None:
        """Every later log line of this request names the model and version (the tenant is already bound)."""
        logger.append_keys(model=mv.model, version=mv.version)

    def _visible(self, tenant: str) -> list[ModelSummary]:
        with _registry_errors():
            summaries = self.registry.list_models(tenant)
        return [s for s in summaries if s.owner in (tenant, SHARED_TENANT)]

    @staticmethod
    def _summary(s: ModelSummary) -> dict[str, Any]:
        return {"name": s.model, "versions": list(s.versions), "aliases": dict(s.aliases),
                "task": s.task, "backend": s.backend}

    def _backbone(self, mv: ModelVersion) -> ModelVersion:
        ref = mv.manifest.backbone
        if ref is None or ref.tenant not in (SHARED_TENANT, mv.owner):
            raise ModelUnavailable(detail="head without an allowed backbone")
        try:
            with _registry_errors():
                backbone = self.registry.resolve(ref.tenant, ref.model, ref.version)
        except ModelNotFound:
            raise ModelUnavailable(detail="backbone not registered") from None
        if backbone.owner not in (SHARED_TENANT, mv.owner) or backbone.manifest.task != "embedding" \
                or backbone.manifest.backend != "cpu":
            raise ModelUnavailable(detail="backbone is not a CPU embedding model")
        return backbone

    def _healthy(self, tenant: str, mv: ModelVersion) -> ModelVersion:
        """`mv`, or, when its artifacts fail verification (a tampered or corrupted model.onnx, tokenizer
        or head: IntegrityError), the newest earlier version of the same model that verifies and loads.
        For requests that name no version (the alias decides): a pinned version is the caller's choice
        and answers 503. The failure is logged, counted (ModelLoadFailure, which alarms, and
        ModelIntegrityFallback) and remembered for a minute, so the tampered files are not downloaded
        again on every request; without a healthy earlier version the 503 stands."""
        if mv.manifest.backend != "cpu":
            return mv
        failure = self._unverifiable.get(model_key(mv))
        if failure is None:
            try:
                self._load(mv)
                return mv
            except IntegrityError as exc:
                failure = exc
        summary = next((s for s in self._visible(tenant) if s.model == mv.model and s.owner == mv.owner),
                       None)
        earlier = list(summary.versions) if summary is not None else []
        earlier = earlier[:earlier.index(mv.version)] if mv.version in earlier else []
        for candidate in reversed(earlier):
            try:
                previous = self.resolve(tenant, mv.model, candidate)
                if previous.owner != mv.owner:
                    continue
                self._load(previous)
            except TenantMLError:
                continue
            self._unverifiable[model_key(mv)] = failure
            logger.error("model version failed verification; serving the previous healthy version",
                         extra={"failed_version": mv.version, "served_version": previous.version,
                                "detail": failure.detail})
            metrics.add_metric(name="ModelIntegrityFallback", unit=MetricUnit.Count, value=1)
            return previous
        raise failure

    def _load(self, mv: ModelVersion) -> tuple[LoadedModel, EmbeddingModel | None]:
        loaded = self.runtime.get(mv)
        if not isinstance(loaded, HeadModel):
            return loaded, None
        backbone = self.runtime.get(self._backbone(mv))
        if not isinstance(backbone, EmbeddingModel) or (
                backbone.dim is not None and backbone.dim != loaded.head.embedding_dim):
            raise ModelUnavailable(detail="head does not fit its backbone")
        return loaded, backbone

    def _predict(self, mv: ModelVersion, tensors: Mapping[str, oip.Tensor]) -> dict[str, Any]:
        loaded, backbone = self._load(mv)
        if isinstance(loaded, HeadModel):
            assert backbone is not None
            return loaded.predict(tensors, backbone)
        return loaded.predict(tensors)


# --- construction ----------------------------------------------------------------------------------


# Creating SDK clients is serialized: a botocore session is not thread-safe (local mode runs requests on
# threads; Lambda does not, but the lock costs nothing).
_ADAPTER_LOCK = threading.Lock()


def _sdk_client(service: str, aws: AwsSettings, sessions: TenantSessions | None) -> Any:
    """The function's own client, or (with `sessions`) one that calls as the tenant acted for."""
    if sessions is not None:
        return ScopedClient(sessions, service)
    from tenantml.aws import botocore_client  # noqa: PLC0415 - deliberate lazy import

    return botocore_client(service, aws)


class _LazyRegistry:
    """Creates the DynamoDB adapter on first use, so importing/initializing needs no SDK (and never boto3).
    With `sessions`, every registry read runs as the tenant acted for (tenantml.tenancy)."""

    def __init__(self, table: str, aws: AwsSettings, sessions: TenantSessions | None = None) -> None:
        self._table, self._aws, self._sessions = table, aws, sessions
        self._impl: Registry | None = None

    def _get(self) -> Registry:
        if self._impl is None:
            with _ADAPTER_LOCK:
                if self._impl is None:
                    from tenantml.registry.dynamo import DynamoRegistry  # noqa: PLC0415 - lazy import

                    self._impl = DynamoRegistry(self._table, self._aws,
                                                client=_sdk_client("dynamodb", self._aws, self._sessions))
        return self._impl

    def resolve(self, tenant: str, model: str, version: str | None = None) -> ModelVersion:
        return self._get().resolve(tenant, model, version)

    def list_models(self, tenant: str) -> list[ModelSummary]:
        return self._get().list_models(tenant)


class _LazyStore:
    """The S3 artifact store, made on first use; with `sessions`, reads as the tenant acted for."""

    def __init__(self, bucket: str, aws: AwsSettings, sessions: TenantSessions | None = None) -> None:
        self._bucket, self._aws, self._sessions = bucket, aws, sessions
        self._impl: ArtifactStore | None = None

    def _get(self) -> ArtifactStore:
        if self._impl is None:
            with _ADAPTER_LOCK:
                if self._impl is None:
                    from tenantml.registry.s3 import S3ArtifactStore  # noqa: PLC0415 - lazy import

                    self._impl = S3ArtifactStore(self._bucket, self._aws,
                                                 client=_sdk_client("s3", self._aws, self._sessions))
        return self._impl

    def get(self, owner: str, model: str, version: str, name: str) -> bytes:
        return self._get().get(owner, model, version, name)

    def download(self, owner: str, model: str, version: str, name: str, out: BinaryIO) -> None:
        self._get().download(owner, model, version, name, out)

    def put(self, owner: str, model: str, version: str, name: str, data: bytes) -> None:
        self._get().put(owner, model, version, name, data)


def _agree(stable: Any, candidate: Any) -> bool:
    """Do two first outputs agree: equal labels, or numbers within 1e-3 relative (an embedding, a score)."""
    a, b = np.asarray(stable), np.asarray(candidate)
    if a.shape != b.shape:
        return False
    if a.dtype.kind in "fc" and b.dtype.kind in "fc":
        return bool(np.allclose(a, b, rtol=1e-3, atol=1e-6))
    return bool(np.array_equal(a, b))


def publish_rollout_metrics(rollout_id: str, version: str, requests: int, errors: int,
                            latencies_ms: list[float]) -> None:
    """One EMF document per (rollout, version) and signal flush: what the candidate's CloudWatch alarms
    read (tenantml.rollout.alarms). Dimensions: the opaque rollout id and the version, never the tenant."""
    emf = EphemeralMetrics(namespace=NAMESPACE)
    emf.add_dimension(name="rollout", value=rollout_id)
    emf.add_dimension(name="version", value=version)
    emf.add_metric(name="RolloutRequests", unit=MetricUnit.Count, value=requests)
    emf.add_metric(name="RolloutErrors", unit=MetricUnit.Count, value=errors)
    for ms in latencies_ms:             # Powertools writes a document per 100 values of one metric
        emf.add_metric(name="RolloutLatency", unit=MetricUnit.Milliseconds, value=round(ms, 3))
    emf.flush_metrics()


def signals_failed(exc: Exception, requests: int) -> None:
    logger.warning("rollout signals not recorded; the prediction is not affected",
                   extra={"error": type(exc).__name__, "requests": requests})
    metrics.add_metric(name="SignalFailures", unit=MetricUnit.Count, value=1)


def capture_failed(exc: Exception, rows: int) -> None:
    logger.warning("capture failed; the rows are dropped, the prediction is not affected",
                   extra={"error": type(exc).__name__, "rows": rows})
    metrics.add_metric(name="CaptureFailures", unit=MetricUnit.Count, value=1)


class _LazyCaptureWriter:
    """Writes capture frames (the function's own role: a frame buffer may hold several tenants' rows and
    is flushed from whichever request comes due) or ground-truth feedback (with `sessions`: as the tenant
    acted for) to the artifact bucket, with a client made on first use."""

    def __init__(self, bucket: str, aws: AwsSettings, sessions: TenantSessions | None = None) -> None:
        self._bucket, self._aws, self._sessions = bucket, aws, sessions
        self._s3: Any = None

    def __call__(self, key: str, data: bytes) -> None:
        if self._s3 is None:
            with _ADAPTER_LOCK:
                if self._s3 is None:
                    self._s3 = _sdk_client("s3", self._aws, self._sessions)
        self._s3.put_object(Bucket=self._bucket, Key=key, Body=data)


class _LazySignalSink:
    """tenantml.rollout.signals.DynamoSignals with a botocore client made on first write."""

    def __init__(self, table: str, aws: AwsSettings) -> None:
        self._table, self._aws = table, aws
        self._impl: Any = None

    def add(self, rollout_id: str, version: str, at_minute: str, numbers: Mapping[str, int]) -> None:
        if self._impl is None:
            with _ADAPTER_LOCK:
                if self._impl is None:
                    from tenantml.aws import botocore_client  # noqa: PLC0415 - deliberate lazy imports
                    from tenantml.rollout.signals import DynamoSignals  # noqa: PLC0415

                    self._impl = DynamoSignals(botocore_client("dynamodb", self._aws), self._table)
        self._impl.add(rollout_id, version, at_minute, numbers)


def _signal_recorder(settings: SignalSettings, aws: AwsSettings) -> SignalRecorder:
    from tenantml.rollout.signals import SignalRecorder  # noqa: PLC0415 - pulls the histogram code

    return SignalRecorder(_LazySignalSink(settings.signals_table, aws),
                          flush_seconds=settings.signals_flush_seconds, on_failure=signals_failed,
                          publish=publish_rollout_metrics)


def _limiter(settings: ThrottleSettings | None, aws: AwsSettings) -> TenantLimiter | None:
    if settings is None or not settings.tenant_rate_limit or not settings.throttle_table:
        return None
    from tenantml.serving.throttle import TenantLimiter  # noqa: PLC0415

    def make_client() -> Any:
        from tenantml.aws import botocore_client  # noqa: PLC0415 - deliberate lazy import

        return botocore_client("dynamodb", aws)

    return TenantLimiter(settings.throttle_table, settings.tenant_rate_limit,
                         lease=settings.tenant_rate_lease, make_client=make_client)


def preload_entries(settings: ServingSettings) -> list[str]:
    return [e.strip() for e in settings.preload_models.split(",") if e.strip()]


def build_service(settings: ServingSettings, aws: AwsSettings, *, registry: Registry | None = None,
                  store: ArtifactStore | None = None, gpu: GpuBackend | None = None,
                  signals: SignalSettings | None = None, async_settings: AsyncSettings | None = None,
                  idempotency_table: str | None = None,
                  tenancy: TenancySettings | None = None,
                  throttle: ThrottleSettings | None = None) -> InferenceService:
    """The service from settings: AWS adapters created lazily, `preload_models` loaded now (init: what
    SnapStart snapshots, so it must finish before init ends). With `async_settings` naming an endpoint,
    GPU models are submitted to it (tenantml.gpu); without, they answer 503. With `tenancy` naming a
    tenant data role, registry reads, model downloads, feedback and async requests run with the
    requesting tenant's credentials (tenantml.tenancy)."""
    sessions = TenantSessions.from_settings(tenancy, aws) if tenancy is not None else None
    if gpu is None and async_settings is not None and async_settings.gpu_endpoint_name:
        from tenantml.gpu import wiring  # noqa: PLC0415 - only where an endpoint is deployed

        a = async_settings
        gpu = wiring.LazySubmitter(lambda: wiring.submitter(a, bucket=settings.artifact_bucket,
                                                            idempotency_table=idempotency_table, aws=aws,
                                                            sessions=sessions))
    writer = _LazyCaptureWriter(settings.artifact_bucket, aws)
    capture = CaptureSink(writer, max_rows=settings.capture_max_rows, max_age_s=settings.capture_max_seconds,
                          on_failure=capture_failed, text_memo_size=settings.prediction_cache_size,
                          text_memo_ttl_s=settings.prediction_cache_ttl_seconds)
    feedback = _LazyCaptureWriter(settings.artifact_bucket, aws, sessions) if sessions else writer
    service = InferenceService(registry=registry or _LazyRegistry(settings.registry_table, aws, sessions),
                               store=store or _LazyStore(settings.artifact_bucket, aws, sessions),
                               settings=settings, gpu=gpu, capture=capture, put_object=feedback,
                               signals=_signal_recorder(signals, aws) if signals is not None else None,
                               limiter=_limiter(throttle, aws))
    entries = preload_entries(settings)
    if entries:
        service.preload(entries)
    return service
