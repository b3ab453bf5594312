"""InferenceService: the Open Inference Protocol v2 operations for one execution environment.

Tenancy: every operation takes the caller's tenant (from the authorizer context, resolved by the API
layer). A model name resolves to the tenant's own model, then the `_shared` one; anything else is
ModelNotFound, with the same message as a model that does not exist. Responses never carry the owner.

The service holds the registry (behind a short TTL cache), the model runtime (memory-bounded LRU of loaded
models), the prediction cache, and the seam for models served by the GPU endpoint.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from aws_lambda_powertools.metrics import MetricUnit

from tenantml import SHARED_TENANT, __version__
from tenantml.errors import BadRequest, ModelNotFound, ModelUnavailable, TenantMLError
from tenantml.manifest import NAME_RE, TENANT_RE, VERSION_RE
from tenantml.observability import logger, metrics
from tenantml.registry import ArtifactStore, ModelSummary, ModelVersion, Registry
from tenantml.serving import oip
from tenantml.serving.cache import CachingRegistry, PredictionCache
from tenantml.serving.capture import CaptureSink, capture_columns
from tenantml.serving.runtime import EmbeddingModel, HeadModel, LoadedModel, ModelRuntime
from tenantml.settings import AwsSettings, ServingSettings

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
        raise ModelUnavailable(retry_after=5, detail=f"registry unavailable: {type(exc).__name__}") from None


@dataclass(frozen=True)
class Reply:
    """What an operation answers: a serialized JSON body, a status and extra headers."""

    body: str | bytes              # bytes: a binary tensor data response
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


class GpuBackend(Protocol):
    """Models whose manifest says `backend: gpu` are served by the SageMaker async endpoint."""

    def submit(self, tenant: str, mv: ModelVersion, request: oip.InferRequest) -> Reply: ...


class GpuNotConfigured:
    """The seam until async GPU submit lands: 503 with Retry-After (the model exists, it cannot run here)."""

    retry_after = 60

    def submit(self, tenant: str, mv: ModelVersion, request: oip.InferRequest) -> Reply:
        raise ModelUnavailable(retry_after=self.retry_after,
                               detail="gpu backend: async submit is not enabled")


class InferenceService:
    def __init__(self, *, registry: Registry, store: ArtifactStore, settings: ServingSettings,
                 runtime: ModelRuntime | None = None, gpu: GpuBackend | None = None,
                 timer: Any = time.monotonic, capture: CaptureSink | None = None) -> None:
        self.settings = settings
        self.capture = capture
        self.registry = CachingRegistry(registry, ttl=settings.registry_cache_ttl_seconds, timer=timer)
        self.runtime = runtime or ModelRuntime(store, budget_bytes=settings.model_cache_mb * 1024 * 1024)
        self.predictions = PredictionCache(size=settings.prediction_cache_size,
                                           ttl=settings.prediction_cache_ttl_seconds, timer=timer)
        self.gpu: GpuBackend = gpu or GpuNotConfigured()

    # --- server ----------------------------------------------------------------------------------

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
        if not NAME_RE.match(model) or (version is not None and not VERSION_RE.match(version)):
            raise ModelNotFound(model[:64], None if version is None else version[:32])
        with _registry_errors():
            mv = self.registry.resolve(tenant, model, version)
        if mv.owner not in (tenant, SHARED_TENANT):  # defence in depth: never serve a foreign model
            logger.error("registry returned a foreign model", extra={"owner": mv.owner})
            raise ModelNotFound(model, version)
        return mv

    def list_models(self, tenant: str) -> dict[str, Any]:
        models = [self._summary(s) for s in self._visible(tenant)]
        return {"models": sorted(models, key=lambda m: m["name"])}

    def model_metadata(self, tenant: str, model: str, version: str | None = None) -> dict[str, Any]:
        mv = self.resolve(tenant, model, version)
        self._bind(mv)
        versions = next((list(s.versions) for s in self._visible(tenant)
                         if s.model == mv.model and s.owner == mv.owner), [mv.version])
        return oip.model_metadata(model, versions, mv.manifest)

    def model_ready(self, tenant: str, model: str, version: str | None = None) -> dict[str, Any]:
        """Loads the model (a warm-up call); 503 if its artifacts cannot be loaded or it runs on the GPU."""
        mv = self.resolve(tenant, model, version)
        self._bind(mv)
        if mv.manifest.backend == "gpu":
            raise ModelUnavailable(retry_after=GpuNotConfigured.retry_after, detail="gpu backend")
        self._load(mv)
        return {"name": model, "ready": True}

    # --- inference -------------------------------------------------------------------------------

    def infer(self, tenant: str, model: str, version: str | None, body: str | bytes | None, *,
              json_length: int | None = None, request_id: str | None = None) -> Reply:
        """`json_length`: the Inference-Header-Content-Length header (binary tensor data extension)."""
        t0 = time.perf_counter()
        parsed = oip.parse_request(body, max_bytes=self.settings.max_body_bytes, json_length=json_length)
        request = parsed.request
        if request.model_name is not None and request.model_name != model:
            raise BadRequest(f"model_name in the body ('{request.model_name[:64]}') does not match the "
                             f"model in the path ('{model}')")
        mv = self.resolve(tenant, model, version)
        self._bind(mv)
        manifest = mv.manifest
        if manifest.backend == "gpu":
            return self.gpu.submit(tenant, mv, request)
        tensors = oip.decode_inputs(request, manifest.inputs, max_batch=self.settings.max_batch,
                                    binary=parsed.binary)
        selected = oip.requested_outputs(request, manifest.outputs)
        binary = request.binary_outputs(selected or [s.name for s in manifest.outputs])
        rows = next(iter(tensors.values())).rows

        outputs = None
        if self.predictions.enabled:
            key = self.predictions.key(tenant, mv, oip.input_digest(tensors))
            outputs = self.predictions.get(key)
        hit = outputs is not None
        if outputs is None:
            values = self._predict(mv, tensors)
            outputs = [oip.encode_output(s.name, s.datatype, values[s.name]) for s in manifest.outputs]
            if self.predictions.enabled:
                self.predictions.put(key, outputs)
        body_out, header_length = oip.infer_response_parts(model, mv.version, request.id, outputs, selected,
                                                           binary)
        self._record(mv, rows, hit if self.predictions.enabled else None, t0)
        self._capture(tenant, mv, request_id or request.id or "", tensors, outputs)
        if header_length is None:
            return Reply(body_out)
        return Reply(body_out, headers={oip.HEADER_LENGTH: str(header_length)},
                     content_type="application/octet-stream")

    def _capture(self, tenant: str, mv: ModelVersion, request_id: str, tensors: Mapping[str, oip.Tensor],
                 outputs: Any) -> None:
        """A sample of the request for drift checks; never fails or delays the prediction beyond the
        occasional frame write (see tenantml.serving.capture)."""
        if self.capture is None:
            return
        rate = self.settings.capture_rate if mv.manifest.capture_rate is None else mv.manifest.capture_rate
        try:
            if self.capture.sampled(rate):
                columns = capture_columns(mv.manifest, tensors, {o.name: o.value for o in outputs})
                if columns is not None:
                    self.capture.add(tenant, mv.model, mv.version, request_id, *columns)
            self.capture.flush_due()
        except Exception as exc:  # noqa: BLE001 - capture never fails a prediction: logged and counted
            capture_failed(exc, 0)

    @staticmethod
    def _record(mv: ModelVersion, rows: int, cache_hit: bool | None, t0: float) -> None:
        """Request metrics, flushed by the handler. Dimensions: model and version only (never the tenant:
        unbounded cardinality, and not something a metric should reveal)."""
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
            if len(parts) not in (2, 3) or not TENANT_RE.match(parts[0]):
                logger.warning("ignoring invalid preload entry", extra={"entry": entry})
                continue
            try:
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


class _LazyRegistry:
    """Creates the DynamoDB adapter on first use, so importing/initializing needs no SDK (and never boto3)."""

    def __init__(self, table: str, aws: AwsSettings) -> None:
        self._table, self._aws = table, aws
        self._impl: Registry | None = None

    def _get(self) -> Registry:
        if self._impl is None:
            with _ADAPTER_LOCK:
                if self._impl is None:
                    from tenantml.aws import botocore_client  # noqa: PLC0415 - deliberate lazy imports
                    from tenantml.registry.dynamo import DynamoRegistry  # noqa: PLC0415

                    self._impl = DynamoRegistry(self._table, self._aws,
                                                client=botocore_client("dynamodb", self._aws))
        return self._impl

    def resolve(self, tenant: str, model: str, version: str | None = None) -> ModelVersion:
        return self._get().resolve(tenant, model, version)

    def list_models(self, tenant: str) -> list[ModelSummary]:
        return self._get().list_models(tenant)


class _LazyStore:
    def __init__(self, bucket: str, aws: AwsSettings) -> None:
        self._bucket, self._aws = bucket, aws
        self._impl: ArtifactStore | None = None

    def _get(self) -> ArtifactStore:
        if self._impl is None:
            with _ADAPTER_LOCK:
                if self._impl is None:
                    from tenantml.aws import botocore_client  # noqa: PLC0415 - deliberate lazy imports
                    from tenantml.registry.s3 import S3ArtifactStore  # noqa: PLC0415

                    self._impl = S3ArtifactStore(self._bucket, self._aws,
                                                 client=botocore_client("s3", self._aws))
        return self._impl

    def get(self, owner: str, model: str, version: str, name: str) -> bytes:
        return self._get().get(owner, model, version, name)

    def download(self, owner: str, model: str, version: str, name: str, out: BinaryIO) -> None:
        self._get().download(owner, model, version, name, out)

    def put(self, owner: str, model: str, version: str, name: str, data: bytes) -> None:
        self._get().put(owner, model, version, name, data)


def capture_failed(exc: Exception, rows: int) -> None:
    logger.warning("capture failed; the rows are dropped, the prediction is not affected",
                   extra={"error": type(exc).__name__, "rows": rows})
    metrics.add_metric(name="CaptureFailures", unit=MetricUnit.Count, value=1)


class _LazyCaptureWriter:
    """Writes capture frames to the artifact bucket with a botocore client made on first use."""

    def __init__(self, bucket: str, aws: AwsSettings) -> None:
        self._bucket, self._aws = bucket, aws
        self._s3: Any = None

    def __call__(self, key: str, data: bytes) -> None:
        if self._s3 is None:
            with _ADAPTER_LOCK:
                if self._s3 is None:
                    from tenantml.aws import botocore_client  # noqa: PLC0415 - deliberate lazy import

                    self._s3 = botocore_client("s3", self._aws)
        self._s3.put_object(Bucket=self._bucket, Key=key, Body=data)


def preload_entries(settings: ServingSettings) -> list[str]:
    return [e.strip() for e in settings.preload_models.split(",") if e.strip()]


def build_service(settings: ServingSettings, aws: AwsSettings, *, registry: Registry | None = None,
                  store: ArtifactStore | None = None, gpu: GpuBackend | None = None) -> InferenceService:
    """The service from settings: AWS adapters created lazily, `preload_models` loaded now (init: what
    SnapStart snapshots, so it must finish before init ends)."""
    capture = CaptureSink(_LazyCaptureWriter(settings.artifact_bucket, aws),
                          max_rows=settings.capture_max_rows, max_age_s=settings.capture_max_seconds,
                          on_failure=capture_failed)
    service = InferenceService(registry=registry or _LazyRegistry(settings.registry_table, aws),
                               store=store or _LazyStore(settings.artifact_bucket, aws),
                               settings=settings, gpu=gpu, capture=capture)
    entries = preload_entries(settings)
    if entries:
        service.preload(entries)
    return service
