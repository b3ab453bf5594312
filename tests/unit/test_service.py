"""InferenceService on the library's in-memory registry and artifact store (tenantml.registry.memory, the
same rules as the DynamoDB/S3 adapters): tenancy, shared fallback and shadowing, integrity failures, the
memory-bounded model cache, the prediction and registry caches."""

from __future__ import annotations

import json

import numpy as np
import pytest
import serving_models as sm

from tenantml.errors import ModelNotFound, ModelUnavailable, TenantMLError
from tenantml.manifest import BackboneRef
from tenantml.observability import metrics
from tenantml.registry.memory import MemoryArtifactStore, MemoryRegistry
from tenantml.serving.heads import apply_head, load_head
from tenantml.serving.runtime import ModelRuntime
from tenantml.serving.service import InferenceService, build_service
from tenantml.settings import AwsSettings, ServingSettings

TEXTS = ["the login page fails", "add dark mode"]
# Several requests per test share one (unflushed) metric set; the handler flushes once per invocation.
pytestmark = pytest.mark.filterwarnings("ignore:Dimension .* has already been added")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def _fresh_metrics():
    metrics.clear_metrics()
    yield
    metrics.clear_metrics()


def settings(**kw) -> ServingSettings:
    return ServingSettings(artifact_bucket="bucket", registry_table="table", **kw)


class CountingRegistry:
    """Delegates to a registry and counts `resolve` calls (what the service's registry cache saves)."""

    def __init__(self, inner: MemoryRegistry) -> None:
        self.inner = inner
        self.resolves = 0

    def resolve(self, tenant, model, version=None):
        self.resolves += 1
        return self.inner.resolve(tenant, model, version)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class CountingStore:
    """Delegates to a MemoryArtifactStore and records every artifact read, as (owner, model, version, name),
    so tests can see what was (re)loaded. `objects` and `key` are the store's own."""

    def __init__(self, inner: MemoryArtifactStore) -> None:
        self.inner = inner
        self.reads: list[tuple[str, str, str, str]] = []

    def get(self, owner, model, version, name):
        self.reads.append((owner, model, version, name))
        return self.inner.get(owner, model, version, name)

    def download(self, owner, model, version, name, out):
        self.reads.append((owner, model, version, name))
        self.inner.download(owner, model, version, name, out)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture
def world():
    return sm.populated(CountingStore(MemoryArtifactStore()), CountingRegistry(MemoryRegistry()))


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def service(world, clock):
    registry, store = world
    return InferenceService(registry=registry, store=store, settings=settings(), timer=clock)


def text_body(texts=TEXTS, **extra) -> str:
    return sm.infer_body("text", "BYTES", [len(texts)], list(texts), **extra)


def risk_body(rows) -> str:
    return sm.infer_body("features", "FP32", [len(rows), len(sm.FEATURES)], rows)


def outputs(reply) -> dict[str, dict]:
    return {o["name"]: o for o in json.loads(reply.body)["outputs"]}


def error_of(fn, *args) -> TenantMLError:
    with pytest.raises(TenantMLError) as exc:
        fn(*args)
    return exc.value


# --- tenancy ------------------------------------------------------------------------------------


def test_another_tenants_model_answers_exactly_like_a_missing_one(service):
    for op, args in [(service.infer, (None, text_body())), (service.model_metadata, ()),
                     (service.model_ready, ())]:
        foreign = error_of(op, "globex", "work-item-classifier", *args)
        missing = error_of(op, "globex", "no-such-model", *args)
        assert isinstance(foreign, ModelNotFound) and foreign.status == missing.status == 404
        assert foreign.public_message == "model 'work-item-classifier' not found"
        assert missing.public_message == "model 'no-such-model' not found"
        assert foreign.headers == missing.headers == {}
    versioned = error_of(service.infer, "globex", "work-item-classifier", "1", text_body())
    assert versioned.public_message == "model 'work-item-classifier' version '1' not found"
    assert "work-item-classifier" not in {m["name"] for m in service.list_models("globex")["models"]}


def test_shared_models_are_visible_to_every_tenant(service):
    for tenant in ("acme", "globex"):
        names = {m["name"] for m in service.list_models(tenant)["models"]}
        assert {"minilm-embed", "project-risk"} <= names
        out = outputs(service.infer(tenant, "minilm-embed", None, text_body()))
        assert out["embedding"]["shape"] == [2, sm.DIM]


def test_own_model_shadows_the_shared_one(world, service):
    registry, store = world
    own = sm.embedding_version("acme", seed=42)
    sm.register(registry, store, own)
    acme = np.array(outputs(service.infer("acme", "minilm-embed", None, text_body()))["embedding"]["data"])
    other = np.array(outputs(service.infer("globex", "minilm-embed", None, text_body()))["embedding"]["data"])
    assert not np.allclose(acme, other)
    [summary] = [m for m in service.list_models("acme")["models"] if m["name"] == "minilm-embed"]
    assert summary == {"name": "minilm-embed", "versions": ["1"], "aliases": {"production": "1"},
                       "task": "embedding", "backend": "cpu"}
    assert {k[0] for k in service.runtime.loaded()} == {"acme", "_shared"}


def test_responses_never_carry_the_owner(service):
    bodies = [json.dumps(service.list_models("acme")),
              json.dumps(service.model_metadata("acme", "minilm-embed")),
              json.dumps(service.model_metadata("acme", "work-item-classifier", "1")),
              service.infer("acme", "work-item-classifier", None, text_body()).body]
    for body in bodies:
        assert "_shared" not in body and '"acme"' not in body and "owner" not in body


def test_a_foreign_version_from_the_registry_is_refused(world, clock):
    registry, store = world

    class Leaky:
        def resolve(self, tenant, model, version=None):
            mv = registry.resolve("acme", model, version)
            return mv

        def list_models(self, tenant):
            return registry.list_models(tenant)

    svc = InferenceService(registry=Leaky(), store=store, settings=settings(), timer=clock)
    assert error_of(svc.infer, "globex", "work-item-classifier", None, text_body()).status == 404


# --- metadata and inference ---------------------------------------------------------------------


def test_model_metadata(service):
    meta = service.model_metadata("acme", "work-item-classifier")
    assert meta["name"] == "work-item-classifier" and meta["versions"] == ["1"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in meta["outputs"]] == ["category", "category_probs", "urgency", "urgency_probs"]


def test_classifier_applies_its_head_to_the_shared_backbone(world, service):
    registry, store = world
    reply = service.infer("acme", "work-item-classifier", None, text_body(id="req-7"))
    body = json.loads(reply.body)
    assert (body["model_name"], body["model_version"], body["id"]) == ("work-item-classifier", "1", "req-7")
    out = outputs(reply)
    emb = np.array(outputs(service.infer("acme", "minilm-embed", None, text_body()))["embedding"]["data"],
                   np.float32).reshape(2, sm.DIM)
    head = load_head(store.objects[store.key("acme", "work-item-classifier", "1", "head.json")])
    for name, (labels, probs) in apply_head(head, emb).items():
        got = np.array(out[name + "_probs"]["data"]).reshape(probs.shape)
        np.testing.assert_allclose(got, probs, atol=1e-6)
        assert out[name]["data"] == [labels[i] for i in probs.argmax(1)]
        assert out[name]["datatype"] == "BYTES" and out[name]["shape"] == [2]
    # one backbone session for every tenant's head: only the encoder holds an ONNX session
    assert sorted(service.runtime.loaded()) == [("_shared", "minilm-embed", "1"),
                                                ("acme", "work-item-classifier", "1")]
    assert service.runtime.peek(registry.resolve("acme", "work-item-classifier")).nbytes < 2_000


def test_tabular_risk_and_output_selection(service):
    rows = [[0, 3, 1, 0, 0, -2, 0, 0], [0, -3, -1, 0, 0, 2, 0, 0]]
    reply = service.infer("acme", "project-risk", None, sm.infer_body(
        "features", "FP32", [2, 8], rows, outputs=[{"name": "risk"}]))
    body = json.loads(reply.body)
    assert [o["name"] for o in body["outputs"]] == ["risk"]
    assert body["outputs"][0]["data"] == ["high", "low"] and "id" not in body


def test_versioned_path_and_aliases(world, service):
    registry, store = world
    sm.register(registry, store, sm.embedding_version(version="2", seed=5), aliases=["canary"])
    v1 = service.infer("acme", "minilm-embed", "1", text_body())
    v2 = service.infer("acme", "minilm-embed", "2", text_body())
    canary = service.infer("acme", "minilm-embed", "canary", text_body())
    assert json.loads(v1.body)["model_version"] == "1"
    assert json.loads(v2.body)["model_version"] == json.loads(canary.body)["model_version"] == "2"
    assert error_of(service.infer, "acme", "minilm-embed", "9", text_body()).status == 404
    assert service.model_metadata("acme", "minilm-embed")["versions"] == ["1", "2"]


def test_request_errors_are_400_and_413_before_any_model_load(service):
    assert error_of(service.infer, "acme", "minilm-embed", None, "{nope").status == 400
    assert error_of(service.infer, "acme", "minilm-embed", None,
                    sm.infer_body("text", "FP32", [1], [1.0])).status == 400
    assert error_of(service.infer, "acme", "minilm-embed", None, text_body(["x"] * 65)).status == 413
    small = InferenceService(registry=service.registry, store=MemoryArtifactStore(),
                             settings=settings(max_body_bytes=100))
    assert error_of(small.infer, "acme", "minilm-embed", None, text_body(["x" * 200])).status == 413
    assert list(service.runtime.loaded()) == []


@pytest.mark.parametrize("model,version", [("../etc", None), ("UPPER", None), ("minilm-embed", "a/b"),
                                           ("x" * 100, None)])
def test_impossible_names_are_not_found_without_a_lookup(world, service, model, version):
    registry, _ = world
    assert error_of(service.infer, "acme", model, version, text_body()).status == 404
    assert registry.resolves == 0


# --- integrity and availability -----------------------------------------------------------------


def test_corrupt_artifact_is_503_not_cached_and_a_fixed_upload_loads(world, service):
    registry, store = world
    key = ("_shared", "minilm-embed", "1", "model.onnx")
    good = store.objects[store.key(*key)]
    store.objects[store.key(*key)] = good[:-1] + bytes([good[-1] ^ 1])
    for _ in range(2):
        err = error_of(service.infer, "acme", "minilm-embed", None, text_body())
        assert isinstance(err, ModelUnavailable) and err.status == 503
        assert err.public_message == "model unavailable" and err.headers == {"Retry-After": "30"}
        assert "sha256" in err.detail
    assert service.runtime.peek(registry.resolve("acme", "minilm-embed")) is None
    assert store.reads.count(key) == 2              # retried, never served from a cache
    store.objects[store.key(*key)] = good
    fixed = outputs(service.infer("acme", "minilm-embed", None, text_body()))
    assert fixed["embedding"]["shape"] == [2, sm.DIM]


def test_missing_artifact_and_a_missing_backbone_are_503(world, service, clock):
    _, store = world
    del store.objects[store.key("_shared", "project-risk", "1", "model.onnx")]
    assert error_of(service.infer, "acme", "project-risk", None, risk_body([[0] * 8])).status == 503
    # acme's classifier in a world where its shared backbone was never registered
    registry, store = MemoryRegistry(), MemoryArtifactStore()
    sm.register(registry, store, sm.classifier_version("acme"))
    svc = InferenceService(registry=registry, store=store, settings=settings(), timer=clock)
    err = error_of(svc.infer, "acme", "work-item-classifier", None, text_body())
    assert err.status == 503 and err.public_message == "model unavailable"


def test_an_unparseable_model_is_503(world, service):
    registry, store = world
    bogus = sm.embedding_version("acme", "broken")
    bogus.artifacts["model.onnx"] = b"not an onnx graph"
    bogus.manifest = bogus.manifest.model_copy(update={"files": sm._files(bogus.artifacts)})
    sm.register(registry, store, bogus)
    err = error_of(service.infer, "acme", "broken", None, text_body())
    assert err.status == 503 and "not an onnx" not in err.public_message


def test_a_head_may_only_sit_on_a_shared_or_own_backbone(world, service):
    registry, store = world
    sm.register(registry, store, sm.embedding_version("globex", "globex-encoder"))
    sneaky = sm.classifier_version("acme", "sneaky", backbone="globex-encoder", backbone_tenant="globex")
    sm.register(registry, store, sneaky)
    assert error_of(service.infer, "acme", "sneaky", None, text_body()).status == 503
    assert ("globex", "globex-encoder", "1") not in set(service.runtime.loaded())


def test_a_registry_outage_is_503_not_500(world, clock):
    registry, store = world

    class Down:
        def resolve(self, tenant, model, version=None):
            raise ConnectionError("dynamodb endpoint unreachable")

        def list_models(self, tenant):
            raise ConnectionError("dynamodb endpoint unreachable")

    svc = InferenceService(registry=Down(), store=store, settings=settings(), timer=clock)
    for op, args in [(svc.infer, ("acme", "minilm-embed", None, text_body())),
                     (svc.model_metadata, ("acme", "minilm-embed")), (svc.list_models, ("acme",))]:
        err = error_of(op, *args)
        assert err.status == 503 and err.headers == {"Retry-After": "5"}
        assert "unreachable" not in err.public_message


def test_gpu_models_answer_503_with_retry_after(world, service):
    registry, store = world
    v = sm.embedding_version("acme", "big-llm")
    v.manifest = v.manifest.model_copy(update={"backend": "gpu"})
    sm.register(registry, store, v)
    for op, args in [(service.infer, (None, text_body())), (service.model_ready, ())]:
        err = error_of(op, "acme", "big-llm", *args)
        assert err.status == 503 and err.headers == {"Retry-After": "60"}
        assert err.public_message == "no GPU endpoint is deployed for this model"
        assert err.detail.startswith("gpu backend")
    assert service.model_metadata("acme", "big-llm")["name"] == "big-llm"
    assert list(service.runtime.loaded()) == []


def test_without_a_gpu_endpoint_every_request_id_is_a_404_naming_at_most_64_characters(service):
    err = error_of(service.request_status, "acme", "r" * 100)
    assert err.status == 404 and err.public_message == f"request '{'r' * 64}' not found"


def test_models_load_from_a_temporary_file_where_memfd_is_missing(service, monkeypatch):
    import os

    monkeypatch.delattr(os, "memfd_create", raising=False)
    assert outputs(service.infer("acme", "project-risk", None, risk_body([[0] * 8])))["risk"]["shape"] == [1]


def test_model_ready_loads_the_model_and_its_backbone(service):
    ready = service.model_ready("acme", "work-item-classifier")
    assert ready == {"name": "work-item-classifier", "ready": True}
    assert len(list(service.runtime.loaded())) == 2


# --- caches -------------------------------------------------------------------------------------


def test_model_cache_evicts_least_recently_used_by_artifact_bytes(world, clock):
    registry, store = world
    encoder = sum(len(b) for b in sm.embedding_version().artifacts.values())
    risk = len(sm.tabular_version().artifacts["model.onnx"])
    runtime = ModelRuntime(store, budget_bytes=encoder + risk - 1)   # never both at once
    svc = InferenceService(registry=registry, store=store, settings=settings(prediction_cache_size=0),
                           runtime=runtime, timer=clock)
    svc.infer("acme", "minilm-embed", None, text_body())
    assert runtime.used_bytes == encoder
    svc.infer("acme", "project-risk", None, risk_body([[0] * 8]))
    assert list(runtime.loaded()) == [("_shared", "project-risk", "1")]
    reads = len(store.reads)
    svc.infer("acme", "project-risk", None, risk_body([[1] * 8]))
    assert len(store.reads) == reads                       # still loaded: no artifact read
    svc.infer("acme", "minilm-embed", None, text_body())
    assert list(runtime.loaded()) == [("_shared", "minilm-embed", "1")]
    assert len(store.reads) == reads + 2                   # evicted earlier: loaded again


def test_a_model_larger_than_the_budget_is_served_uncached(world, clock):
    registry, store = world
    runtime = ModelRuntime(store, budget_bytes=100)
    svc = InferenceService(registry=registry, store=store, settings=settings(), runtime=runtime, timer=clock)
    assert outputs(svc.infer("acme", "project-risk", None, risk_body([[0] * 8])))["risk"]["shape"] == [1]
    assert list(runtime.loaded()) == []


def test_prediction_cache_hits_misses_and_tenant_separated_keys(service, clock, monkeypatch):
    runs: list[str] = []
    predict = service._predict
    monkeypatch.setattr(service, "_predict", lambda mv, t: runs.append(mv.model) or predict(mv, t))
    first = service.infer("acme", "minilm-embed", None, text_body(id="a"))
    again = service.infer("acme", "minilm-embed", None, text_body(id="b"))
    assert len(runs) == 1 and len(service.predictions) == 1
    assert outputs(again) == outputs(first) and json.loads(again.body)["id"] == "b"
    service.infer("acme", "minilm-embed", None, text_body(["other text"]))
    assert len(runs) == 2
    service.infer("globex", "minilm-embed", None, text_body())   # same input, another tenant: own entry
    assert len(runs) == 3 and len(service.predictions) == 3
    assert {k[0] for k in service.predictions._cache} == {"acme", "globex"}
    clock.now += settings().prediction_cache_ttl_seconds + 1
    service.infer("acme", "minilm-embed", None, text_body())
    assert len(runs) == 4


def test_prediction_cache_can_be_disabled(world, clock):
    registry, store = world
    svc = InferenceService(registry=registry, store=store, settings=settings(prediction_cache_size=0),
                           timer=clock)
    svc.infer("acme", "project-risk", None, risk_body([[0] * 8]))
    svc.infer("acme", "project-risk", None, risk_body([[0] * 8]))
    assert not svc.predictions.enabled and len(svc.predictions) == 0


def test_registry_answers_are_cached_for_the_ttl(world, service, clock):
    registry, _ = world
    for _ in range(3):
        service.infer("acme", "project-risk", None, risk_body([[0] * 8]))
    assert registry.resolves == 1
    for _ in range(2):
        error_of(service.infer, "acme", "nope", None, risk_body([[0] * 8]))
    assert registry.resolves == 2                 # "not found" is cached too
    clock.now += settings().registry_cache_ttl_seconds + 1
    service.infer("acme", "project-risk", None, risk_body([[0] * 8]))
    assert registry.resolves == 3


def test_metrics_carry_model_and_version_never_the_tenant(service):
    service.infer("acme", "project-risk", None, risk_body([[0] * 8, [1] * 8]))
    blob = metrics.serialize_metric_set()
    names = {m["Name"] for m in blob["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert {"InferenceLatency", "Rows", "PredictionCacheHit"} <= names
    dims = set(blob["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0])
    assert {"model", "version"} <= dims and "tenant" not in dims
    assert blob["Rows"] == [2.0] and blob["model"] == "project-risk" and "acme" not in json.dumps(blob)


# --- construction -------------------------------------------------------------------------------


def test_build_service_preloads_models(world):
    registry, store = world
    svc = build_service(settings(preload_models=" _shared/minilm-embed , acme/work-item-classifier/1,bad, "
                                                "_shared/missing"),
                        AwsSettings(region="us-east-1"), registry=registry, store=store)
    assert sorted(svc.runtime.loaded()) == [("_shared", "minilm-embed", "1"),
                                            ("acme", "work-item-classifier", "1")]
    reads = len(store.reads)
    svc.infer("acme", "work-item-classifier", None, text_body())
    assert len(store.reads) == reads


def test_an_oversized_artifact_is_refused_while_streaming_and_leaves_no_file(world, service, monkeypatch,
                                                                             tmp_path):
    import os
    import tempfile

    registry, store = world
    monkeypatch.delattr(os, "memfd_create", raising=False)   # the /tmp path, to check its cleanup
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    key = ("_shared", "project-risk", "1", "model.onnx")
    good = store.objects[store.key(*key)]
    written: list[int] = []

    def endless(owner, model, version, name, out):
        for _ in range(1000):   # far more than the manifest's size: stops at the first byte too many
            written.append(out.write(good))

    monkeypatch.setattr(store, "download", endless)
    err = error_of(service.infer, "acme", "project-risk", None, risk_body([[0] * 8]))
    assert err.status == 503 and "size mismatch" in err.detail
    assert len(written) == 1 and list(tmp_path.iterdir()) == []
    assert service.runtime.peek(registry.resolve("acme", "project-risk")) is None


def test_build_service_creates_no_aws_client_until_used():
    svc = build_service(settings(), AwsSettings(region="us-east-1"))
    assert svc.server_metadata() == {"name": "tenantml", "version": "0.1.0",
                                     "extensions": ["binary_tensor_data"]}
    assert svc.ready() == {"ready": True} and svc.live() == {"live": True}


def test_manifest_backbone_ref_is_used(world, service):
    registry, store = world
    sm.register(registry, store, sm.embedding_version(version="2", seed=9), aliases=())
    v = sm.classifier_version("acme", "on-v2")
    v.manifest = v.manifest.model_copy(update={"backbone": BackboneRef(model="minilm-embed", version="2")})
    sm.register(registry, store, v)
    service.infer("acme", "on-v2", None, text_body())
    assert ("_shared", "minilm-embed", "2") in set(service.runtime.loaded())


# --- capture of text models: derived features -------------------------------------------------------


def _text_world(clock, *, prediction_cache_size: int = 2048):
    """Both text models with a baseline.json (tests/serving_models.with_text_baseline), a service that
    captures every request into frames kept in memory."""
    from tenantml.serving.capture import CaptureSink

    registry, store = MemoryRegistry(), MemoryArtifactStore()
    sm.register(registry, store, sm.with_text_baseline(sm.embedding_version()))
    sm.register(registry, store, sm.with_text_baseline(sm.classifier_version("acme")))
    written: dict[str, bytes] = {}
    sink = CaptureSink(written.__setitem__, max_rows=10**6)
    svc = InferenceService(registry=registry, store=store, timer=clock, capture=sink,
                           settings=settings(prediction_cache_size=prediction_cache_size))
    return svc, store, written


def _frames(svc, written) -> dict[str, object]:
    from tenantml.monitoring.capture import decode_frame

    svc.capture.flush()
    return {decode_frame(d).model: decode_frame(d) for d in written.values()}


def _expected(texts, store, owner, model):
    """The derived columns computed independently: tokens from the tokenizer without truncation, the
    embedding from the numpy twin of the tiny encoder, the projection from the stored baseline.json."""
    from tenantml.monitoring import Baseline

    baseline = Baseline.model_validate_json(store.get(owner, model, "1", "baseline.json"))
    tokens, unknown = sm.tiny_tokens(texts)
    coords = baseline.text.projection.project(sm.tiny_embed(texts))
    return tokens, unknown / np.maximum(tokens, 1), coords


TEXT_CAPTURE = ["the login page fails", "zebra stripes on the app", "add dark mode please " * 6]


def test_text_models_capture_token_counts_and_embedding_projections(clock):
    svc, store, written = _text_world(clock)
    embedded = outputs(svc.infer("acme", "minilm-embed", None, text_body(TEXT_CAPTURE), request_id="r1"))
    labelled = outputs(svc.infer("acme", "work-item-classifier", None, text_body(TEXT_CAPTURE),
                                 request_id="r2"))
    frames = _frames(svc, written)
    for model, owner in (("minilm-embed", "_shared"), ("work-item-classifier", "acme")):
        frame = frames[model]
        tokens, rate, coords = _expected(TEXT_CAPTURE, store, owner, model)
        assert set(frame.numeric) == {"token_count", "unknown_token_rate", "embedding_pc1", "embedding_pc2",
                                      "embedding_pc3"}
        assert frame.numeric["token_count"].tolist() == tokens.tolist() == [4, 5, 24]   # 24 > max_length 16
        np.testing.assert_allclose(frame.numeric["unknown_token_rate"], rate, atol=1e-7)
        assert rate[1] == pytest.approx(3 / 5)                                   # zebra, stripes, on
        for k in range(3):
            np.testing.assert_allclose(frame.numeric[f"embedding_pc{k + 1}"], coords[:, k], atol=1e-5)
    # The encoder's projection is of its output; the head's of the backbone embedding it consumed (the same
    # encoder here): the same coordinates for the same texts.
    assert np.allclose(np.asarray(embedded["embedding"]["data"]).reshape(3, sm.DIM),
                       sm.tiny_embed(TEXT_CAPTURE), atol=1e-5)
    assert "embedding" not in frames["minilm-embed"].categorical                    # no prediction column
    codes, labels = frames["work-item-classifier"].categorical["prediction"]
    assert [labels[c] for c in codes] == labelled["category"]["data"]               # the first label output


@pytest.mark.parametrize("cache_size", [2048, 0])
def test_a_prediction_cache_hit_is_captured_with_the_columns_of_the_prediction_it_repeats(clock, cache_size):
    svc, _, written = _text_world(clock, prediction_cache_size=cache_size)
    for rid in ("r1", "r2"):
        svc.infer("acme", "work-item-classifier", None, text_body(TEXT_CAPTURE), request_id=rid)
    frame = _frames(svc, written)["work-item-classifier"]
    if cache_size:        # the hit ran no model: its columns come from the memo, equal to the first's
        assert frame.request_ids.tolist() == [b"r1"] * 3 + [b"r2"] * 3
        for values in frame.numeric.values():
            assert values[:3].tolist() == values[3:].tolist()
    else:                 # no cache: both requests ran the model
        assert frame.rows == 6 and len(svc.capture.text_memo) == 0


def test_a_text_model_without_a_usable_projection_is_served_and_captures_only_counts(clock):
    from tenantml.serving.capture import CaptureSink

    registry, store = MemoryRegistry(), MemoryArtifactStore()
    narrow = sm.with_text_baseline(sm.embedding_version())
    wide = sm.with_text_baseline(sm.embedding_version(name="wide"))   # projection of 8-d, model of 8-d
    sm.register(registry, store, narrow)
    doc = json.loads(wide.artifacts["baseline.json"])
    doc["text"]["projection"]["mean"] = doc["text"]["projection"]["mean"] + [0.0]   # 9-d: does not fit
    doc["text"]["projection"]["components"] = [c + [0.0] for c in doc["text"]["projection"]["components"]]
    doc["text"]["projection"]["dim"] = 9
    wide.artifacts["baseline.json"] = json.dumps(doc).encode()
    wide.manifest = wide.manifest.model_copy(update={"files": sm._files(wide.artifacts)})
    sm.register(registry, store, wide)
    written: dict[str, bytes] = {}
    svc = InferenceService(registry=registry, store=store, settings=settings(), timer=clock,
                           capture=CaptureSink(written.__setitem__))
    assert outputs(svc.infer("acme", "wide", None, text_body()))["embedding"]["shape"] == [2, sm.DIM]
    assert set(_frames(svc, written)["wide"].numeric) == {"token_count", "unknown_token_rate"}


def test_a_corrupt_baseline_json_makes_a_text_model_unavailable_like_any_artifact(clock):
    svc, store, _ = _text_world(clock)
    key = store.key("_shared", "minilm-embed", "1", "baseline.json")
    store.objects[key] = store.objects[key].replace(b'"count"', b'"cOunt"', 1)
    err = error_of(svc.infer, "acme", "minilm-embed", None, text_body())
    assert err.status == 503 and "sha256" in err.detail


def test_an_invalid_name_is_a_404_that_echoes_at_most_64_and_32_characters(service):
    """A name or version no model can have answers like a missing model, echoing a bounded prefix only."""
    from tenantml.errors import ModelNotFound

    with pytest.raises(ModelNotFound) as info:
        service.resolve("acme", "m" * 99 + "!")
    assert info.value.public_message == f"model '{'m' * 64}' not found"
    with pytest.raises(ModelNotFound) as info:
        service.resolve("acme", "n" * 99 + "!", "v" * 40 + "!")
    assert info.value.public_message == f"model '{'n' * 64}' version '{'v' * 32}' not found"
