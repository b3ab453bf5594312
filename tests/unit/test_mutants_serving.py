"""Serving behaviour the mutation run (tools/mutation.sh, MUTATION_TARGET=api-serving) found unasserted:
the rollout EMF document the candidate's alarms read, the failure counters, the lazy AWS adapters (one
client, made on first use, for the right service and resource), the caches' keys and TTLs, and the
runtime's cache accounting."""

from __future__ import annotations

import json

import numpy as np
import pytest
import serving_models as sm

from tenantml.observability import metrics
from tenantml.settings import AwsSettings

pytestmark = pytest.mark.filterwarnings("ignore:Dimension .* has already been added")

AWS = AwsSettings(region="eu-west-1")


@pytest.fixture(autouse=True)
def _fresh_metrics():
    metrics.clear_metrics()
    yield
    metrics.clear_metrics()


class FakeSts:
    """STS answering AssumeRole with credentials named after the session (so clients show whose they are)."""

    def assume_role(self, **kw):
        return {"Credentials": {"AccessKeyId": kw["RoleSessionName"], "SecretAccessKey": "s",
                                "SessionToken": "t", "Expiration": 4102444800.0}}


def recording_s3(puts: list[tuple]) -> type:
    """An S3 client class whose instances record (whose credentials, bucket, key) of each put_object."""

    class Client:
        def __init__(self, who):
            self.who = who

        def put_object(self, **kw):
            puts.append((self.who, kw["Bucket"], kw["Key"]))

    return Client


def emf_documents(text: str) -> list[dict]:
    return [json.loads(x) for x in text.splitlines() if x.startswith("{") and '"_aws"' in x]


# --- rollout metrics (what tenantml.rollout.alarms reads) ---------------------------------------------------


def test_rollout_metrics_are_one_emf_document_per_rollout_and_version_without_the_tenant(capsys):
    from tenantml.serving.service import publish_rollout_metrics

    publish_rollout_metrics("r-42", "3", 7, 2, [1.23456, 20.0])
    (doc,) = emf_documents(capsys.readouterr().out)
    (directive,) = doc["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "tenantml"
    assert directive["Dimensions"] == [["rollout", "version"]]
    assert {m["Name"]: m["Unit"] for m in directive["Metrics"]} == {
        "RolloutRequests": "Count", "RolloutErrors": "Count", "RolloutLatency": "Milliseconds"}
    assert (doc["rollout"], doc["version"]) == ("r-42", "3")
    assert doc["RolloutRequests"] in (7, [7], 7.0, [7.0])
    assert doc["RolloutErrors"] in (2, [2], 2.0, [2.0])
    assert doc["RolloutLatency"] == [1.235, 20.0]          # each latency, to the microsecond
    assert set(doc) == {"_aws", "rollout", "version", "RolloutRequests", "RolloutErrors", "RolloutLatency"}


def test_signal_and_capture_failures_each_count_one_failure_metric():
    from tenantml.serving.service import capture_failed, signals_failed

    signals_failed(RuntimeError("ddb down"), 5)
    capture_failed(RuntimeError("s3 down"), 9)
    blob = metrics.serialize_metric_set()
    units = {m["Name"]: m["Unit"] for m in blob["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert units["SignalFailures"] == "Count" and units["CaptureFailures"] == "Count"
    assert blob["SignalFailures"] in (1, 1.0, [1.0]) and blob["CaptureFailures"] in (1, 1.0, [1.0])


# --- lazy AWS adapters --------------------------------------------------------------------------------------


class FakeClients:
    def __init__(self) -> None:
        self.made: list[tuple[str, AwsSettings]] = []

    def __call__(self, service, aws, **_kw):
        self.made.append((service, aws))
        return f"client:{service}"


def test_the_signal_sink_makes_one_dynamodb_client_on_first_write_and_forwards_every_write(monkeypatch):
    import tenantml.aws
    import tenantml.rollout.signals as signals
    from tenantml.serving.service import _LazySignalSink

    clients = FakeClients()
    made: list[tuple] = []
    writes: list[tuple] = []

    class FakeDynamoSignals:
        def __init__(self, client, table, **_kw):
            made.append((client, table))

        def add(self, *args):
            writes.append(args)

    monkeypatch.setattr(tenantml.aws, "botocore_client", clients)
    monkeypatch.setattr(signals, "DynamoSignals", FakeDynamoSignals)
    sink = _LazySignalSink("signals-table", AWS)
    assert clients.made == []                       # nothing at construction (init needs no SDK)
    sink.add("r-1", "2", "2026-12-01T00:00", {"requests": 3})
    sink.add("r-1", "3", "2026-12-01T00:01", {"errors": 1})
    assert clients.made == [("dynamodb", AWS)]
    assert made == [("client:dynamodb", "signals-table")]
    assert writes == [("r-1", "2", "2026-12-01T00:00", {"requests": 3}),
                      ("r-1", "3", "2026-12-01T00:01", {"errors": 1})]


def test_the_lazy_store_writes_through_to_the_artifact_bucket_in_the_owners_prefix(monkeypatch):
    import tenantml.aws
    import tenantml.registry.s3 as s3
    from tenantml.serving.service import _LazyStore

    clients = FakeClients()
    puts: list[tuple] = []
    made: list[tuple] = []

    class FakeS3Store:
        def __init__(self, bucket, aws, *, client=None, **_kw):
            made.append((bucket, aws, client))

        def put(self, *args):
            puts.append(args)

    monkeypatch.setattr(tenantml.aws, "botocore_client", clients)
    monkeypatch.setattr(s3, "S3ArtifactStore", FakeS3Store)
    store = _LazyStore("artifacts", AWS)
    store.put("acme", "risk", "2", "model.onnx", b"bytes")
    store.put("acme", "risk", "3", "head.json", b"{}")
    assert clients.made == [("s3", AWS)] and made == [("artifacts", AWS, "client:s3")]
    assert puts == [("acme", "risk", "2", "model.onnx", b"bytes"), ("acme", "risk", "3", "head.json", b"{}")]


# --- runtime ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedding_model():
    from tenantml.registry.memory import MemoryArtifactStore, MemoryRegistry
    from tenantml.serving.runtime import ModelRuntime

    v = sm.embedding_version()
    store, registry = MemoryArtifactStore(), MemoryRegistry()
    sm.register(registry, store, v)
    return ModelRuntime(store, budget_bytes=1 << 30).get(registry.resolve(v.owner, v.manifest.name))


def test_an_encoders_embed_is_the_embedding_its_predictions_answer(embedding_model):
    texts = ["the login page fails", "add dark mode"]
    emb = embedding_model.embed(texts)
    assert emb.shape == (2, sm.DIM)
    np.testing.assert_allclose(emb, embedding_model.encode(texts)[0], rtol=1e-6)
    np.testing.assert_allclose(emb, sm.tiny_embed(texts), rtol=1e-4, atol=1e-5)


# --- the registry cache's model lists -----------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ListingRegistry:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def list_models(self, tenant):
        self.calls.append(tenant)
        from tenantml.registry import ModelSummary

        return [ModelSummary(owner=tenant, model=f"{tenant}-model", versions=("1",), aliases={},
                             task="embedding", backend="cpu")]


def test_model_lists_are_cached_per_tenant_for_the_ttl_and_not_at_all_with_ttl_zero():
    from tenantml.serving.cache import CachingRegistry

    inner, clock = ListingRegistry(), Clock()
    cached = CachingRegistry(inner, ttl=10, timer=clock)
    assert [s.model for s in cached.list_models("acme")] == ["acme-model"]
    assert [s.model for s in cached.list_models("acme")] == ["acme-model"]
    assert [s.model for s in cached.list_models("globex")] == ["globex-model"]   # never another tenant's
    assert inner.calls == ["acme", "globex"]
    clock.now += 11
    cached.list_models("acme")
    assert inner.calls == ["acme", "globex", "acme"]

    inner = ListingRegistry()
    uncached = CachingRegistry(inner, ttl=0, timer=clock)
    assert [s.model for s in uncached.list_models("acme")] == ["acme-model"]
    uncached.list_models("acme")
    assert inner.calls == ["acme", "acme"]


# --- rollouts: routing, signals, shadows --------------------------------------------------------------------

MODEL = "risk"
ROW = [[0.1, -0.2, 0.3, 0.0, 1.2, -0.7, 0.5, 0.05]]


class Signals:
    """A SignalRecorder stand-in that keeps every call; `fail` makes its flush raise."""

    def __init__(self, fail: bool = False) -> None:
        self.requests: list[tuple] = []
        self.shadows: list[tuple] = []
        self.fail = fail

    def request(self, rollout_id, version, latency_ms, *, error=False):
        self.requests.append((rollout_id, version, latency_ms, error))

    def shadow(self, rollout_id, version, *, agreed):
        self.shadows.append((rollout_id, version, agreed))

    def flush_due(self):
        if self.fail:
            raise RuntimeError("signal table unavailable")


class CountingRegistry:
    def __init__(self, inner) -> None:
        self.inner = inner
        self.resolves: list[tuple] = []

    def resolve(self, tenant, model, version=None):
        self.resolves.append((tenant, model, version))
        return self.inner.resolve(tenant, model, version)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def rollout_service(mode: str = "canary", stages=(50, 100), *, signals=None, frames=None):
    from datetime import UTC, datetime

    from tenantml.manifest import FileEntry, sha256_bytes
    from tenantml.registry.memory import MemoryArtifactStore, MemoryRegistry
    from tenantml.rollout.machine import Transition, start
    from tenantml.serving.capture import CaptureSink
    from tenantml.serving.service import InferenceService
    from tenantml.settings import ServingSettings

    registry, store = MemoryRegistry(), MemoryArtifactStore()
    sm.register(registry, store, sm.tabular_version(owner="acme", name=MODEL, version="1"))
    v2 = sm.tabular_version(owner="acme", name=MODEL, version="2")
    data, _ = sm.tabular_onnx(seed=7)
    v2 = sm.Version("acme", v2.manifest.model_copy(update={"files": {"model.onnx": FileEntry(
        sha256=sha256_bytes(data), size=len(data))}}), {"model.onnx": data}, "2")
    sm.register(registry, store, v2, aliases=())
    r = start(owner="acme", model=MODEL, stable="1", candidate="2", now=datetime(2026, 11, 30, tzinfo=UTC),
              actor="t", reason="go", mode=mode, stages=stages)
    registry.apply_rollout("acme", MODEL, Transition(action="start", before=None, after=r, reason="go",
                                                     actor="t"))
    counting = CountingRegistry(registry)
    svc = InferenceService(registry=counting, store=store,
                           settings=ServingSettings(artifact_bucket="b", registry_table="t",
                                                    prediction_cache_size=0),
                           capture=None if frames is None else CaptureSink(frames.__setitem__, max_rows=1),
                           signals=signals)
    return svc, counting, registry.resolve("acme", MODEL).rollout


def infer(svc, subject: str, rid: str = "r1") -> dict:
    return json.loads(svc.infer("acme", MODEL, None, json.dumps({"inputs": [{
        "name": "features", "datatype": "FP32", "shape": [1, 8], "data": ROW}]}), subject=subject,
        request_id=rid).body)


def test_callers_are_routed_by_their_tenant_and_subject():
    from tenantml.rollout.machine import route

    svc, _, rollout = rollout_service()
    for i in range(24):
        expected, _ = route(rollout, "acme", f"u{i}")
        assert infer(svc, f"u{i}")["model_version"] == expected


def test_a_request_routed_to_stable_costs_one_registry_lookup_and_runs_no_shadow():
    from tenantml.rollout.machine import route

    signals = Signals()
    svc, counting, rollout = rollout_service(signals=signals)
    subject = next(f"u{i}" for i in range(100) if route(rollout, "acme", f"u{i}")[0] == "1")
    assert infer(svc, subject)["model_version"] == "1"
    svc.wait_for_shadows(timeout=30)
    assert counting.resolves == [("acme", MODEL, None)]
    assert signals.shadows == []


def test_a_routed_request_signals_its_rollout_version_latency_and_success():
    signals = Signals()
    svc, _, rollout = rollout_service(stages=(100,), signals=signals)
    assert infer(svc, "u1")["model_version"] == "2"
    ((rid, version, latency, error),) = signals.requests
    assert (rid, version, error) == (rollout.id, "2", False)
    assert isinstance(latency, float) and latency > 0


def test_a_failing_signal_recorder_never_fails_the_prediction_and_is_counted():
    svc, _, _ = rollout_service(stages=(100,), signals=Signals(fail=True))
    assert infer(svc, "u1")["model_version"] == "2"
    assert metrics.serialize_metric_set()["SignalFailures"] in (1, 1.0, [1.0])


def test_without_a_signal_recorder_a_routed_request_counts_no_signal_failure():
    svc, _, _ = rollout_service(stages=(100,))
    assert infer(svc, "u1")["model_version"] == "2"
    assert "SignalFailures" not in json.dumps(metrics.serialize_metric_set())


def shadow_frames(frames: dict) -> dict[str, list[str]]:
    from tenantml.monitoring.capture import decode_frame

    out: dict[str, list[str]] = {}
    for key, data in frames.items():
        frame = decode_frame(data)
        out.setdefault(frame.version, []).append(f"{frame.tenant}|{key}")
    return out


def test_a_shadowed_candidate_is_compared_and_captured_under_the_callers_tenant():
    signals, frames = Signals(), {}
    svc, _, rollout = rollout_service(mode="shadow", stages=(100,), signals=signals, frames=frames)
    assert infer(svc, "u1")["model_version"] == "1"
    svc.wait_for_shadows(timeout=30)
    svc.capture.flush()
    assert [(r, v) for r, v, _ in signals.shadows] == [(rollout.id, "2")]
    assert isinstance(signals.shadows[0][2], bool)
    captured = shadow_frames(frames)
    assert captured["2"] and all(x.startswith("acme|") and "tenant=acme/" in x for x in captured["2"])


def test_a_shadow_without_a_signal_recorder_is_still_captured():
    frames: dict = {}
    svc, _, _ = rollout_service(mode="shadow", stages=(100,), frames=frames)
    infer(svc, "u1")
    svc.wait_for_shadows(timeout=30)
    svc.capture.flush()
    assert "2" in shadow_frames(frames)


def test_a_failing_shadow_counts_one_error_for_the_candidate_and_the_answer_stands(monkeypatch):
    from tenantml.errors import ModelUnavailable

    signals = Signals()
    svc, _, rollout = rollout_service(mode="shadow", stages=(100,), signals=signals)
    real = svc.runtime.get

    def broken(mv):
        if mv.version == "2":
            raise ModelUnavailable(detail="corrupt")
        return real(mv)
    monkeypatch.setattr(svc.runtime, "get", broken)
    assert infer(svc, "u1")["model_version"] == "1"
    svc.wait_for_shadows(timeout=30)
    assert signals.shadows == []
    assert [r for r in signals.requests if r[1] == "2"] == [(rollout.id, "2", 0.0, True)]
    assert [(r[1], r[3]) for r in signals.requests if r[1] != "2"] == [("1", False)]


def test_a_failing_shadow_without_a_signal_recorder_fails_nothing(monkeypatch):
    from tenantml.errors import ModelUnavailable

    svc, _, _ = rollout_service(mode="shadow", stages=(100,))
    real = svc.runtime.get

    def broken(mv):
        if mv.version == "2":
            raise ModelUnavailable(detail="corrupt")
        return real(mv)
    monkeypatch.setattr(svc.runtime, "get", broken)
    assert infer(svc, "u1")["model_version"] == "1"
    svc.wait_for_shadows(timeout=30)            # the shadow's failure is swallowed, not raised here


def test_waiting_for_shadows_honours_its_timeout_and_finished_shadows_are_released(monkeypatch):
    import concurrent.futures
    import threading

    svc, _, _ = rollout_service(mode="shadow", stages=(100,))
    real, gate = svc.runtime.get, threading.Event()

    def slow(mv):
        if mv.version == "2":
            gate.wait(10)
        return real(mv)
    monkeypatch.setattr(svc.runtime, "get", slow)
    infer(svc, "u1")
    with pytest.raises(concurrent.futures.TimeoutError):
        svc.wait_for_shadows(timeout=0.05)
    gate.set()
    svc.wait_for_shadows(timeout=30)
    for i in range(5):
        infer(svc, f"u{i}", rid=f"r{i}")
        svc.wait_for_shadows(timeout=30)
    assert len(svc._shadow_pending) <= 1        # done shadows are not kept (no growth per request)


def test_shadows_run_one_at_a_time_on_their_own_thread(monkeypatch):
    """A shadow never takes more than one thread, whatever the request rate (the candidate's work must
    not compete with the answers for the function's CPU)."""
    import threading
    import time

    svc, _, _ = rollout_service(mode="shadow", stages=(100,))
    real, lock = svc.runtime.get, threading.Lock()
    running, most, names = [0], [0], set()

    def counted(mv):
        if mv.version == "2" and threading.current_thread() is not threading.main_thread():
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
                names.add(threading.current_thread().name)
            time.sleep(0.02)
            with lock:
                running[0] -= 1
        return real(mv)
    monkeypatch.setattr(svc.runtime, "get", counted)
    for i in range(4):
        infer(svc, f"u{i}", rid=f"r{i}")
    svc.wait_for_shadows(timeout=30)
    assert most[0] == 1
    assert names and all(n.startswith("shadow_") for n in names)


@pytest.mark.parametrize("stable, candidate, agree", [
    (np.array([[1.0, 2.0]]), np.array([[1.0005, 2.001]]), True),          # within 1e-3 relative
    (np.array([[1.0, 2.0]]), np.array([[1.0, 2.01]]), False),             # 5e-3 relative: no
    (np.array([[0.0]]), np.array([[5e-7]]), True),                        # around zero: 1e-6 absolute
    (np.array([[0.0]]), np.array([[0.5]]), False),
    (np.array([[1.0, 2.0]]), np.array([[1.0, 2.0, 3.0]]), False),         # other shapes never agree
    (np.array(["bug", "feature"]), np.array(["bug", "feature"]), True),   # labels: exactly equal
    (np.array(["bug", "feature"]), np.array(["bug", "question"]), False),
    (np.array([1.0, 2.0]), np.array(["1.0", "2.0"]), False),              # a number is not a label
    (np.array(["1.0", "2.0"]), np.array([1.0, 2.0]), False),
])
def test_shadow_agreement_is_numbers_within_a_thousandth_or_identical_labels(stable, candidate, agree):
    from tenantml.serving.service import _agree

    assert _agree(stable, candidate) is agree


# --- preload ------------------------------------------------------------------------------------------------


def test_preload_loads_each_valid_entry_as_its_tenant_and_skips_invalid_ones():
    from tenantml.registry.memory import MemoryArtifactStore, MemoryRegistry
    from tenantml.serving.service import InferenceService
    from tenantml.settings import ServingSettings
    from tenantml.tenancy import current_tenant

    class ActingStore(MemoryArtifactStore):
        acting: list[str] = []

        def download(self, owner, model, version, name, out):
            self.acting.append(current_tenant())
            super().download(owner, model, version, name, out)

    registry, store = MemoryRegistry(), ActingStore()
    for version in ("1", "1X", "2"):
        sm.register(registry, store, sm.tabular_version(owner="acme", name=MODEL, version=version))
    svc = InferenceService(registry=registry, store=store,
                           settings=ServingSettings(artifact_bucket="b", registry_table="t"))
    entries = ["Not A Tenant/risk", " /acme/risk/1X/ ", "acme/missing"]
    assert svc.preload(entries) == ["/acme/risk/1X/"]
    assert list(svc.runtime.loaded()) == [("acme", MODEL, "1X")]     # the pinned version, not the latest
    assert store.acting == ["acme"]


# --- loading: footprints, projections, backbones ------------------------------------------------------------

TEXTS = ["the login page fails", "add dark mode"]


def misfit_baseline(v: sm.Version, dim: int | None) -> sm.Version:
    """`v` with a text baseline.json whose projection is of `dim`-wide embeddings (None: no projection)."""
    from tenantml.monitoring.baseline import build_text_baseline

    tokens, unknown = sm.tiny_tokens(sm.REFERENCE_TEXTS)
    emb = None if dim is None else np.random.default_rng(0).normal(size=(len(sm.REFERENCE_TEXTS), dim))
    head = v.manifest.task == "text-classification"
    baseline = build_text_baseline(tokens, unknown, emb, embedding="backbone" if head else "output")
    artifacts = {**v.artifacts, "baseline.json": baseline.model_dump_json().encode()}
    return sm.Version(v.owner, v.manifest.model_copy(update={"files": sm._files(artifacts)}), artifacts,
                      v.version)


def loaded(*versions: sm.Version, registry=None):
    from tenantml.registry.memory import MemoryArtifactStore, MemoryRegistry
    from tenantml.serving.runtime import ModelRuntime

    registry, store = registry or MemoryRegistry(), MemoryArtifactStore()
    for v in versions:
        sm.register(registry, store, v)
    runtime = ModelRuntime(store, budget_bytes=1 << 30)
    return [runtime.get(registry.resolve(v.owner, v.manifest.name)) for v in versions], runtime


def test_an_encoders_cache_footprint_is_model_tokenizer_and_projection_and_it_knows_its_width():
    v = sm.with_text_baseline(sm.embedding_version())
    (model,), runtime = loaded(v)
    assert model.dim == sm.DIM and model.projection is not None
    expected = len(v.artifacts["model.onnx"]) + len(v.artifacts["tokenizer.json"]) + model.projection.nbytes
    assert model.nbytes == expected == runtime.used_bytes


def test_a_baseline_projection_that_does_not_fit_the_embedding_is_dropped_and_none_is_fine():
    (misfit, plain), _ = loaded(misfit_baseline(sm.embedding_version(name="enc-a"), sm.DIM + 2),
                                misfit_baseline(sm.embedding_version(name="enc-b"), None))
    assert misfit.projection is None and plain.projection is None
    (head,), _ = loaded(misfit_baseline(sm.classifier_version("acme"), sm.DIM + 2))
    assert head.projection is None


def test_a_heads_cache_footprint_is_its_head_json_plus_its_projection():
    plain_v = sm.classifier_version("acme", name="plain-head")
    with_v = sm.with_text_baseline(sm.classifier_version("acme", name="proj-head"))
    (plain, with_p), _ = loaded(plain_v, with_v)
    assert plain.nbytes == len(plain_v.artifacts["head.json"])
    assert with_p.projection is not None
    assert with_p.nbytes == len(with_v.artifacts["head.json"]) + with_p.projection.nbytes


def test_an_encoder_without_token_type_ids_is_fed_only_its_own_inputs():
    v = sm.embedding_version()
    data = sm.encoder_onnx(sm.embedding_table(), token_type_ids=False)
    artifacts = {**v.artifacts, "model.onnx": data}
    v = sm.Version(v.owner, v.manifest.model_copy(update={"files": sm._files(artifacts)}), artifacts,
                   v.version)
    (model,), _ = loaded(v)
    emb, counts = model.encode(TEXTS)
    np.testing.assert_allclose(emb, sm.tiny_embed(TEXTS), rtol=1e-4, atol=1e-5)


def test_a_failed_load_emits_model_load_failure_for_the_model_and_version(capsys):
    from tenantml.errors import ModelUnavailable
    from tenantml.registry.memory import MemoryArtifactStore, MemoryRegistry
    from tenantml.serving.runtime import ModelRuntime

    registry, store = MemoryRegistry(), MemoryArtifactStore()
    v = sm.tabular_version(owner="acme", name=MODEL, version="4")
    mv = registry.register_version("acme", MODEL, v.manifest, "t", version="4")   # no artifacts uploaded
    capsys.readouterr()
    with pytest.raises(ModelUnavailable):
        ModelRuntime(store, budget_bytes=1 << 20).get(mv)
    docs = emf_documents(capsys.readouterr().out)
    failures = [d for d in docs if "ModelLoadFailure" in d]
    assert len(failures) == 1
    assert (failures[0]["model"], failures[0]["version"]) == (MODEL, "4")


def serving(*versions: sm.Version, registry=None, **settings):
    from tenantml.registry.memory import MemoryArtifactStore, MemoryRegistry
    from tenantml.serving.service import InferenceService
    from tenantml.settings import ServingSettings

    registry, store = registry or MemoryRegistry(), MemoryArtifactStore()
    for v in versions:
        sm.register(registry, store, v)
    return InferenceService(registry=registry, store=store,
                            settings=ServingSettings(artifact_bucket="b", registry_table="t", **settings))


def classify(svc, tenant: str = "acme", model: str = "work-item-classifier") -> dict:
    return json.loads(svc.infer(tenant, model, None, sm.infer_body("text", "BYTES", [2], TEXTS)).body)


def test_a_head_may_sit_on_its_own_tenants_backbone():
    svc = serving(sm.embedding_version(owner="acme"), sm.classifier_version("acme", backbone_tenant="acme"))
    out = {o["name"]: o["data"] for o in classify(svc)["outputs"]}
    assert set(out["category"]) <= {"bug", "feature", "question"}


def test_a_head_that_does_not_fit_its_backbones_width_is_unavailable():
    from tenantml.errors import ModelUnavailable

    v = sm.classifier_version("acme")
    artifacts = {"head.json": sm.linear_head_json(dim=sm.DIM + 1)}
    v = sm.Version("acme", v.manifest.model_copy(update={"files": sm._files(artifacts)}), artifacts, "1")
    svc = serving(sm.embedding_version(), v)
    with pytest.raises(ModelUnavailable):
        classify(svc)


def test_a_gpu_embedding_model_is_never_a_cpu_heads_backbone():
    from tenantml.errors import ModelUnavailable

    enc = sm.embedding_version()
    enc = sm.Version(enc.owner, enc.manifest.model_copy(update={"backend": "gpu"}), enc.artifacts,
                     enc.version)
    svc = serving(enc, sm.classifier_version("acme"))
    with pytest.raises(ModelUnavailable):
        classify(svc)


def test_a_backbone_the_registry_returns_from_another_tenant_is_never_used():
    from tenantml.errors import ModelUnavailable
    from tenantml.registry.memory import MemoryRegistry

    class LeakyRegistry(MemoryRegistry):
        """Answers the shared backbone lookup with globex's own encoder (an adapter bug)."""

        def resolve(self, tenant, model, version=None):
            if model == "minilm-embed":
                return super().resolve("globex", model, version)
            return super().resolve(tenant, model, version)

    svc = serving(sm.embedding_version(owner="globex"), sm.classifier_version("acme"),
                  registry=LeakyRegistry())
    with pytest.raises(ModelUnavailable):
        classify(svc)


def test_a_models_own_capture_rate_overrides_the_functions():
    from tenantml.monitoring.capture import decode_frame
    from tenantml.serving.capture import CaptureSink

    v = sm.tabular_version(owner="acme", name=MODEL)
    v = sm.Version("acme", v.manifest.model_copy(update={"capture_rate": 1.0}), v.artifacts, v.version)
    svc = serving(v, capture_rate=0.0, prediction_cache_size=0)
    frames: dict = {}
    svc.capture = CaptureSink(frames.__setitem__, max_rows=1)
    svc.infer("acme", MODEL, None, json.dumps({"inputs": [{"name": "features", "datatype": "FP32",
                                                            "shape": [1, 8], "data": ROW}]}))
    svc.capture.flush()
    assert [decode_frame(d).version for d in frames.values()] == ["1"]


# --- lazy adapters with tenant sessions ---------------------------------------------------------------------


def test_the_lazy_registry_resolves_the_version_asked_for(monkeypatch):
    import tenantml.aws
    import tenantml.registry.dynamo as dynamo
    from tenantml.serving.service import _LazyRegistry

    asked: list[tuple] = []

    class FakeDynamo:
        def __init__(self, table, aws, *, client=None, **_kw):
            asked.append(("made", table, aws, client))

        def resolve(self, tenant, model, version=None):
            asked.append((tenant, model, version))
            return "mv"

    clients = FakeClients()
    monkeypatch.setattr(tenantml.aws, "botocore_client", clients)
    monkeypatch.setattr(dynamo, "DynamoRegistry", FakeDynamo)
    reg = _LazyRegistry("registry-table", AWS)
    assert reg.resolve("acme", "risk", "3") == "mv"
    assert asked == [("made", "registry-table", AWS, "client:dynamodb"), ("acme", "risk", "3")]
    assert clients.made == [("dynamodb", AWS)]


def test_feedback_written_with_tenant_sessions_goes_through_the_acting_tenants_client(monkeypatch):
    import tenantml.aws
    from tenantml.serving.service import _LazyCaptureWriter
    from tenantml.tenancy import TenantSessions, acting_for

    puts: list[tuple] = []
    Client = recording_s3(puts)

    monkeypatch.setattr(tenantml.aws, "botocore_client", lambda *a, **k: Client("function-role"))
    sessions = TenantSessions("arn:aws:iam::1:role/tenant-data", AWS, sts=FakeSts(),
                              make_client=lambda service, creds: Client(creds["AccessKeyId"]))
    writer = _LazyCaptureWriter("artifacts", AWS, sessions)
    with acting_for("acme"):
        writer("feedback/tenant=acme/x.json", b"{}")
    assert puts == [("tenantml-acme", "artifacts", "feedback/tenant=acme/x.json")]



def test_a_head_naming_another_tenants_backbone_is_unavailable_without_looking_it_up():
    from tenantml.errors import ModelUnavailable
    from tenantml.registry.memory import MemoryRegistry

    registry = CountingRegistry(MemoryRegistry())
    svc = serving(sm.embedding_version(owner="globex"),
                  sm.classifier_version("acme", backbone_tenant="globex"),
                  registry=registry)
    with pytest.raises(ModelUnavailable):
        classify(svc)
    assert [t for t, _, _ in registry.resolves] == ["acme"]     # never a lookup in globex's models


def test_an_encoder_answering_token_states_is_pooled_and_knows_its_width():
    v = sm.embedding_version(name="token-states", pooled=False)
    (model,), _ = loaded(v)
    assert model.dim == sm.DIM and model.onnx_output == "last_hidden_state"
    assert model.encode(TEXTS)[0].shape == (2, sm.DIM)


# --- request metrics and capture failures -------------------------------------------------------------------


def test_request_metrics_are_rows_cache_hits_and_latency_in_ms_by_model_and_version():
    svc = serving(sm.tabular_version(owner="acme", name=MODEL, version="3"))
    metrics.clear_metrics()
    svc.infer("acme", MODEL, None, json.dumps({"inputs": [{"name": "features", "datatype": "FP32",
                                                            "shape": [1, 8], "data": ROW}]}))
    blob = metrics.serialize_metric_set()
    units = {m["Name"]: m["Unit"] for m in blob["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert units == {"Rows": "Count", "PredictionCacheHit": "Count", "InferenceLatency": "Milliseconds"}
    assert (blob["model"], blob["version"]) == (MODEL, "3")
    latency = blob["InferenceLatency"]
    latency = latency[0] if isinstance(latency, list) else latency
    assert 0 < latency < 10_000


def test_a_failing_capture_never_fails_the_prediction_and_is_counted():
    class BrokenSink:
        def sampled(self, rate):
            raise RuntimeError("capture buffer broken")

    svc = serving(sm.tabular_version(owner="acme", name=MODEL))
    svc.capture = BrokenSink()
    metrics.clear_metrics()
    answer = json.loads(svc.infer("acme", MODEL, None, json.dumps({"inputs": [{
        "name": "features", "datatype": "FP32", "shape": [1, 8], "data": ROW}]})).body)
    assert answer["model_version"] == "1"
    assert metrics.serialize_metric_set()["CaptureFailures"] in (1, 1.0, [1.0])


def test_model_and_registry_reads_with_tenant_sessions_go_through_the_acting_tenants_client(monkeypatch):
    import tenantml.aws
    import tenantml.registry.dynamo as dynamo
    import tenantml.registry.s3 as s3
    from tenantml.serving.service import _LazyRegistry, _LazyStore
    from tenantml.tenancy import TenantSessions, acting_for

    class Client:
        def __init__(self, who):
            self.who = who

    class FakeS3Store:
        def __init__(self, bucket, aws, *, client=None, **_kw):
            self.client = client

        def get(self, owner, model, version, name):
            return self.client.who.encode()

    class FakeDynamo:
        def __init__(self, table, aws, *, client=None, **_kw):
            self.client = client

        def resolve(self, tenant, model, version=None):
            return self.client.who

    monkeypatch.setattr(tenantml.aws, "botocore_client", lambda *a, **k: Client("function-role"))
    monkeypatch.setattr(s3, "S3ArtifactStore", FakeS3Store)
    monkeypatch.setattr(dynamo, "DynamoRegistry", FakeDynamo)
    sessions = TenantSessions("arn:aws:iam::1:role/tenant-data", AWS, sts=FakeSts(),
                              make_client=lambda service, creds: Client(creds["AccessKeyId"]))
    store = _LazyStore("artifacts", AWS, sessions)
    registry = _LazyRegistry("registry-table", AWS, sessions)
    with acting_for("acme"):
        assert store.get("acme", "risk", "1", "model.onnx") == b"tenantml-acme"
        assert registry.resolve("acme", "risk") == "tenantml-acme"
    with acting_for("globex"):
        assert store.get("globex", "risk", "1", "model.onnx") == b"tenantml-globex"


def test_the_cost_record_gets_the_served_model_version_and_rows():
    from tenantml.monitoring import cost

    svc = serving(sm.tabular_version(owner="acme", name=MODEL, version="3"))
    meter = cost._Meter()
    token = cost._METER.set(meter)
    try:
        svc.infer("acme", MODEL, None, json.dumps({"inputs": [{"name": "features", "datatype": "FP32",
                                                                "shape": [2, 8], "data": ROW * 2}]}))
    finally:
        cost._METER.reset(token)
    assert (meter.model, meter.version, meter.rows) == (MODEL, "3", 2)


def test_inference_latency_is_milliseconds_to_the_microsecond(monkeypatch):
    import time

    svc = serving(sm.tabular_version(owner="acme", name=MODEL))
    body = json.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 8], "data": ROW}]})
    svc.infer("acme", MODEL, None, body)                   # loaded: the timed request only serves
    step, ticks = 0.0012345678, iter(range(1_000_000))
    monkeypatch.setattr(time, "perf_counter", lambda: 100.0 + next(ticks) * step)
    metrics.clear_metrics()
    svc.infer("acme", MODEL, None, body)
    latency = metrics.serialize_metric_set()["InferenceLatency"]
    latency = latency[0] if isinstance(latency, list) else latency
    k = round(latency / (step * 1000))
    assert k >= 1 and latency == round(k * step * 1000, 3)


# --- build_service wiring ----------------------------------------------------------------------------------


def built(**kw):
    from tenantml.registry.memory import MemoryArtifactStore, MemoryRegistry
    from tenantml.serving.service import build_service
    from tenantml.settings import ServingSettings

    registry, store = MemoryRegistry(), MemoryArtifactStore()
    sm.register(registry, store, sm.tabular_version())                    # shared project-risk
    return build_service(ServingSettings(artifact_bucket="artifacts", registry_table="registry"), AWS,
                         registry=registry, store=store, **kw)


def test_the_built_signal_recorder_flushes_to_the_signal_table_on_time_and_publishes_rollout_metrics(
        monkeypatch, capsys):
    import time

    import tenantml.aws
    import tenantml.rollout.signals as signals
    from tenantml.settings import SignalSettings

    made, writes = [], []

    class FakeDynamoSignals:
        def __init__(self, client, table, **_kw):
            made.append((client, table))

        def add(self, rollout_id, version, at_minute, numbers):
            writes.append((rollout_id, version, dict(numbers)))
            if rollout_id == "r-broken":
                raise RuntimeError("throttled")

    clients = FakeClients()
    monkeypatch.setattr(tenantml.aws, "botocore_client", clients)
    monkeypatch.setattr(signals, "DynamoSignals", FakeDynamoSignals)
    rec = built(signals=SignalSettings(signals_table="signal-table", signals_flush_seconds=0.05)).signals
    rec.request("r-1", "2", 12.5, error=False)
    time.sleep(0.1)
    capsys.readouterr()
    rec.flush_due()
    assert made == [("client:dynamodb", "signal-table")] and clients.made == [("dynamodb", AWS)]
    assert [(r, v, n.get("requests")) for r, v, n in writes] == [("r-1", "2", 1)]
    assert any(d.get("rollout") == "r-1" for d in emf_documents(capsys.readouterr().out))
    metrics.clear_metrics()
    rec.request("r-broken", "2", 3.0, error=True)
    rec.flush()
    assert metrics.serialize_metric_set()["SignalFailures"] in (1, 1.0, [1.0])


def test_with_a_tenant_role_feedback_is_written_with_the_callers_credentials(monkeypatch):
    import tenantml.aws
    from tenantml.settings import TenancySettings

    puts: list[tuple] = []
    Client = recording_s3(puts)

    sts_made: list = []

    def botocore_client(service, aws, *, credentials=None, **_kw):
        if service == "sts":
            sts_made.append(aws)
            return FakeSts()
        return Client(credentials["AccessKeyId"] if credentials else "function-role")

    monkeypatch.setattr(tenantml.aws, "botocore_client", botocore_client)
    svc = built(tenancy=TenancySettings(tenant_role_arn="arn:aws:iam::1:role/tenant-data"))
    reply = svc.feedback("acme", "project-risk", json.dumps({"feedback": [{"id": "r1", "label": "low"}]}))
    assert reply.status == 202
    assert [who for who, _, _ in puts] == ["tenantml-acme"]
    assert sts_made == [AWS]                     # STS in the function's region / endpoint


def test_an_explicit_gpu_backend_is_kept_even_where_an_endpoint_is_configured():
    from tenantml.settings import AsyncSettings

    class Gpu:
        def status(self, tenant, request_id):
            return 200, json.dumps({"id": request_id, "tenant": tenant}), {}

    svc = built(gpu=Gpu(), async_settings=AsyncSettings(requests_table="req", gpu_queue_name="q",
                                                        gpu_endpoint_name="endpoint"))
    assert json.loads(svc.request_status("acme", "req-1").body) == {"id": "req-1", "tenant": "acme"}


def _encoder_variant(edit) -> sm.Version:
    """The tiny shared encoder with its graph changed by `edit(graph)` (onnx's GraphProto)."""
    import onnx

    v = sm.embedding_version()
    graph_model = onnx.load_from_string(sm.encoder_onnx(sm.embedding_table()))
    edit(graph_model.graph)
    artifacts = {**v.artifacts, "model.onnx": graph_model.SerializeToString()}
    return sm.Version(v.owner, v.manifest.model_copy(update={"files": sm._files(artifacts)}), artifacts,
                      v.version)


def test_an_encoder_with_several_outputs_answers_its_embedding_output_wherever_it_is():
    """Another output listed first (here the unnormalized mean) is never what the model answers."""
    from onnx import TensorProto, helper

    def mean_first(graph) -> None:
        graph.output.insert(0, helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["b", sm.DIM]))

    (model,), _ = loaded(_encoder_variant(mean_first))
    emb, _counts = model.encode(TEXTS)
    np.testing.assert_allclose(emb, sm.tiny_embed(TEXTS), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


def test_an_encoder_with_an_input_the_tokenizer_cannot_feed_is_unavailable(capsys):
    from onnx import TensorProto, helper

    from tenantml.errors import ModelUnavailable

    def extra_input(graph) -> None:
        graph.input.append(helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["b", "t"]))

    with pytest.raises(ModelUnavailable, match="unsupported graph inputs"):
        loaded(_encoder_variant(extra_input))


def built_with(settings_update: dict | None = None, **kw):
    from tenantml.registry.memory import MemoryArtifactStore, MemoryRegistry
    from tenantml.serving.service import build_service
    from tenantml.settings import ServingSettings

    settings = ServingSettings(artifact_bucket="artifacts", registry_table="registry",
                               **(settings_update or {}))
    return build_service(settings, AWS, registry=MemoryRegistry(), store=MemoryArtifactStore(), **kw)


def test_the_capture_sink_is_built_from_the_functions_settings():
    from tenantml.serving.service import capture_failed

    svc = built_with({"capture_max_rows": 7, "capture_max_seconds": 3.5, "prediction_cache_size": 11,
                      "prediction_cache_ttl_seconds": 13})
    cap = svc.capture
    assert (cap.max_rows, cap.max_age_s, cap._on_failure) == (7, 3.5, capture_failed)
    memo = cap.text_memo._cache
    assert (memo.maxsize, memo.ttl) == (11, 13)
    assert built_with({"prediction_cache_size": 0}).capture.text_memo._cache is None


def test_the_gpu_backend_is_wired_only_where_an_endpoint_is_named_and_built_on_first_use(monkeypatch):
    from tenantml.gpu import wiring
    from tenantml.serving.service import GpuNotConfigured
    from tenantml.settings import AsyncSettings, TenancySettings

    calls = []

    class Submitter:
        def register_lambda_context(self, context):
            calls.append(("context", context))

        def submit(self, *args, **kwargs):
            return 202, {"args": args}, {}

    def fake_submitter(settings, **kwargs):
        calls.append((settings, kwargs))
        return Submitter()

    monkeypatch.setattr(wiring, "submitter", fake_submitter)
    tenancy = TenancySettings(tenant_role_arn="arn:aws:iam::123456789012:role/data")
    a = AsyncSettings(requests_table="requests", gpu_queue_name="q", gpu_endpoint_name="ep")
    assert isinstance(built_with(async_settings=a.model_copy(update={"gpu_endpoint_name": ""})).gpu,
                      GpuNotConfigured)
    assert isinstance(built_with().gpu, GpuNotConfigured)
    svc = built_with(async_settings=a, idempotency_table="idem", tenancy=tenancy)
    assert isinstance(svc.gpu, wiring.LazySubmitter) and calls == []         # nothing built at init
    assert svc.gpu.submit("acme", None, None, {})[0] == 202
    (settings, kwargs), _context = calls
    assert settings is a
    assert kwargs["bucket"] == "artifacts" and kwargs["idempotency_table"] == "idem" and kwargs["aws"] is AWS
    assert kwargs["sessions"].role_arn == tenancy.tenant_role_arn
    assert built_with(async_settings=a, idempotency_table="idem").gpu.submit("acme", None, None, {})
    assert calls[-2][1]["sessions"] is None


def test_feedback_is_written_as_the_tenant_only_with_tenant_sessions():
    from tenantml.settings import TenancySettings

    plain = built_with()
    assert plain._put_object is not None and plain._put_object._sessions is None
    scoped = built_with(tenancy=TenancySettings(tenant_role_arn="arn:aws:iam::123456789012:role/data"))
    assert scoped._put_object._sessions is not None
    assert scoped._put_object._bucket == "artifacts"
    assert scoped.capture._put._sessions is None       # capture frames: the function's own role


def test_a_tabular_models_own_label_output_answers_even_where_it_disagrees_with_the_argmax():
    """The top label is the graph's `label` output when it has one (a classifier may apply thresholds or
    class weights the probabilities do not show), not recomputed from the probabilities."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.zeros((len(sm.FEATURES), 3), np.float32)
    w[1] = [0.0, 1.0, 2.0]                        # class 2 most probable when feature 1 is positive
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
         helper.make_node("ArgMin", ["probabilities"], ["label"], axis=1, keepdims=0)],   # the least
        "disagreeing", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", len(sm.FEATURES)])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, ["n"]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", 3])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    v = sm.tabular_version(owner="acme", name="risk")
    artifacts = {"model.onnx": model.SerializeToString()}
    v = sm.Version("acme", v.manifest.model_copy(update={"files": sm._files(artifacts)}), artifacts, "1")
    (loaded_model,), _ = loaded(v)
    row = np.zeros((1, len(sm.FEATURES)), np.float32)
    row[0, 1] = 3.0
    from tenantml.serving.oip import Tensor

    out = loaded_model.predict({"features": Tensor(name="features", datatype="FP32", shape=[1, 8],
                                                   data=row)})
    assert int(np.argmax(out["risk_probs"][0])) == 2
    assert out["risk"] == [sm.RISK_LABELS[0]]


def test_a_load_emits_one_model_load_count_and_its_time_in_ms(capsys):
    capsys.readouterr()
    loaded(sm.tabular_version(owner="acme", name=MODEL, version="3"))
    docs = emf_documents(capsys.readouterr().out)
    load = [d for d in docs if "ModelLoad" in d]
    took = [d for d in docs if "ModelLoadTime" in d]
    assert [(d["ModelLoad"], d["model"], d["version"]) for d in load] == [([1.0], MODEL, "3")]
    units = {m["Name"]: m.get("Unit")
             for d in load + took for m in d["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert units == {"ModelLoad": "Count", "ModelLoadTime": "Milliseconds"}
