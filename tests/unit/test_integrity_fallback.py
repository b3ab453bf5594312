"""A tampered artifact in the store is refused, counted (ModelLoadFailure alarms on it) and the previous
healthy version keeps serving requests that name no version; the registry's manifest, not the store's
manifest.json, is what artifacts are verified against."""

from __future__ import annotations

import json

import pytest
import serving_models as sm

from tenantml.errors import IntegrityError, ModelUnavailable
from tenantml.manifest import sha256_bytes
from tenantml.registry.memory import MemoryArtifactStore, MemoryRegistry
from tenantml.registry.service import MANIFEST_FILE
from tenantml.serving.service import InferenceService
from tenantml.settings import ServingSettings

MODEL = "project-risk"
ROWS = [[10, 0, 0, 10, 60.0, 180, -5.0, 0.05]]


class CountingStore(MemoryArtifactStore):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def download(self, owner, model, version, name, out):
        self.reads.append(f"{owner}/{model}/{version}/{name}")
        super().download(owner, model, version, name, out)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def body() -> str:
    return sm.infer_body("features", "FP32", [1, 8], ROWS)


@pytest.fixture
def world():
    registry, store = MemoryRegistry(), CountingStore()
    for version in ("1", "2"):
        sm.register(registry, store, sm.tabular_version(owner="acme", name=MODEL, version=version))
    clock = Clock()
    service = InferenceService(registry=registry, store=store, timer=clock, settings=ServingSettings(
        artifact_bucket="b", registry_table="t", prediction_cache_size=0, registry_cache_ttl_seconds=0))
    return registry, store, service, clock


def tamper(store: MemoryArtifactStore, version: str, name: str = "model.onnx") -> None:
    key = store.key("acme", MODEL, version, name)
    data = bytearray(store.objects[key])
    data[len(data) // 2] ^= 0xFF                       # the same size, one byte different
    store.objects[key] = bytes(data)


def served(service: InferenceService, version: str | None = None) -> str:
    return json.loads(service.infer("acme", MODEL, version, body()).body)["model_version"]


def test_a_tampered_production_version_is_refused_and_the_previous_one_answers(world, monkeypatch):
    from tenantml.serving import runtime as runtime_module
    from tenantml.serving import service as service_module

    counted: list[str] = []
    monkeypatch.setattr(service_module.metrics, "add_metric", lambda name, unit, value: counted.append(name))
    monkeypatch.setattr(runtime_module, "_model_metric",
                        lambda name, mv, *a: counted.append(f"{name}:{mv.version}"))
    _, store, service, _ = world
    tamper(store, "2")
    assert served(service) == "1"
    assert "ModelLoadFailure:2" in counted             # what the model-load-failure alarm sums
    assert "ModelIntegrityFallback" in counted and "ModelLoad:1" in counted


def test_the_tampered_files_are_not_downloaded_again_for_a_minute(world):
    _, store, service, clock = world
    tamper(store, "2")
    for _ in range(5):
        assert served(service) == "1"
    assert store.reads.count("acme/project-risk/2/model.onnx") == 1
    clock.now += 61                                    # then verified again: a fixed upload is served
    key = store.key("acme", MODEL, "2", "model.onnx")
    data = bytearray(store.objects[key])
    data[len(data) // 2] ^= 0xFF
    store.objects[key] = bytes(data)
    assert served(service) == "2"


def test_a_pinned_version_is_the_callers_choice_and_answers_503(world):
    _, store, service, _ = world
    tamper(store, "2")
    with pytest.raises(ModelUnavailable) as err:
        service.infer("acme", MODEL, "2", body())
    assert err.value.status == 503 and err.value.public_message == "model unavailable"
    assert served(service, "1") == "1"


def test_without_a_healthy_earlier_version_the_503_stands(world):
    _, store, service, _ = world
    tamper(store, "1")
    tamper(store, "2")
    with pytest.raises(IntegrityError):
        service.infer("acme", MODEL, None, body())


def test_a_consistent_forgery_of_model_and_manifest_json_in_the_store_is_still_refused(world):
    """An attacker who can write the bucket replaces model.onnx and rewrites manifest.json to match it:
    serving verifies against the manifest the registry recorded at registration, so it is refused."""
    _, store, service, _ = world
    forged, _ = sm.tabular_onnx(seed=99)
    store.put("acme", MODEL, "2", "model.onnx", forged)
    manifest = json.loads(store.objects[store.key("acme", MODEL, "2", MANIFEST_FILE)])
    manifest["files"]["model.onnx"] = {"sha256": sha256_bytes(forged), "size": len(forged)}
    store.put("acme", MODEL, "2", MANIFEST_FILE, json.dumps(manifest).encode())
    assert served(service) == "1"


def test_a_warm_environment_keeps_serving_the_version_it_verified_at_load(world):
    _, store, service, _ = world
    assert served(service) == "2"
    tamper(store, "2")                                 # after the load: the verified model stays cached
    assert served(service) == "2"
