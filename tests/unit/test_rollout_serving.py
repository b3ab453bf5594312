"""The inference service under a live rollout (InferenceService on the in-memory registry): routing by
caller, pinned versions untouched, per-version signals with errors, and shadow mode (stable answers, the
candidate runs off the response path: its outputs captured under its own version, agreement counted)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest
import serving_models as sm

from tenantml.errors import ModelUnavailable
from tenantml.manifest import FileEntry, sha256_bytes
from tenantml.monitoring.capture import decode_frame
from tenantml.registry.memory import MemoryArtifactStore, MemoryRegistry
from tenantml.rollout.machine import Transition, start
from tenantml.rollout.signals import SignalRecorder
from tenantml.serving.capture import CaptureSink
from tenantml.serving.service import InferenceService
from tenantml.settings import ServingSettings

pytestmark = pytest.mark.filterwarnings("ignore:Dimension .* has already been added")
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
MODEL = "risk"


class Counts:
    """A signal sink that keeps what the recorder writes."""

    def __init__(self) -> None:
        self.totals: dict[tuple[str, str], dict[str, int]] = {}

    def add(self, rollout_id, version, at_minute, numbers):
        t = self.totals.setdefault((rollout_id, version), {})
        for k, v in numbers.items():
            t[k] = t.get(k, 0) + v

    def of(self, version: str) -> dict[str, int]:
        return next((t for (_, v), t in self.totals.items() if v == version), {})


def candidate_version(seed: int) -> sm.Version:
    """Version 2: the same schema, a model fitted on other data (it disagrees with version 1 sometimes)."""
    v = sm.tabular_version(owner="acme", name=MODEL, version="2")
    data, _ = sm.tabular_onnx(seed=seed)
    files = {"model.onnx": FileEntry(sha256=sha256_bytes(data), size=len(data))}
    return sm.Version("acme", v.manifest.model_copy(update={"files": files}), {"model.onnx": data}, "2")


def service(mode: str = "canary", stages=(50, 100), seed: int = 7):
    registry, store = MemoryRegistry(), MemoryArtifactStore()
    sm.register(registry, store, sm.tabular_version(owner="acme", name=MODEL, version="1"))
    sm.register(registry, store, candidate_version(seed), aliases=())
    r = start(owner="acme", model=MODEL, stable="1", candidate="2", now=T0, actor="t", reason="go", mode=mode,
              stages=stages)
    registry.apply_rollout("acme", MODEL, Transition(action="start", before=None, after=r, reason="go",
                                                     actor="t"))
    frames: dict[str, bytes] = {}
    counts = Counts()
    svc = InferenceService(registry=registry, store=store,
                           settings=ServingSettings(artifact_bucket="b", registry_table="t",
                                                    prediction_cache_size=0),
                           capture=CaptureSink(frames.__setitem__, max_rows=1),
                           signals=SignalRecorder(counts, flush_seconds=3600))
    return svc, frames, counts


def body(rows) -> str:
    return json.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [len(rows), 8],
                                   "data": rows}]})


ROWS = np.random.default_rng(3).normal(size=(40, 8)).round(3).tolist()


def test_callers_are_routed_and_pinned_versions_are_not():
    svc, _, counts = service()
    answered = {u: json.loads(svc.infer("acme", MODEL, None, body(ROWS[:1]), subject=u).body)["model_version"]
                for u in (f"u{i}" for i in range(40))}
    assert set(answered.values()) == {"1", "2"}
    pinned = json.loads(svc.infer("acme", MODEL, "1", body(ROWS[:1]), subject="u0").body)
    assert pinned["model_version"] == "1"
    svc.signals.flush()
    assert counts.of("1")["requests"] + counts.of("2")["requests"] == 40      # the pinned call is not routed


def test_a_failing_candidate_counts_errors_for_its_version_only(monkeypatch):
    svc, _, counts = service(stages=(100,), mode="ab")
    real = svc.runtime.get

    def broken(mv):
        if mv.version == "2":
            raise ModelUnavailable(detail="corrupt")
        return real(mv)
    monkeypatch.setattr(svc.runtime, "get", broken)
    for i in range(5):
        with pytest.raises(ModelUnavailable):
            svc.infer("acme", MODEL, None, body(ROWS[:1]), subject=f"u{i}")
    svc.signals.flush()
    assert counts.of("2") == {"requests": 5, "errors": 5}
    assert counts.of("1") == {}


def test_shadow_answers_with_stable_and_records_the_candidate_off_the_response_path():
    svc, frames, counts = service(mode="shadow", stages=(100,))
    answers = [json.loads(svc.infer("acme", MODEL, None, body([row]), subject=f"u{i}",
                                    request_id=f"r{i}").body) for i, row in enumerate(ROWS)]
    svc.wait_for_shadows(timeout=30)
    assert {a["model_version"] for a in answers} == {"1"}
    svc.capture.flush()
    by_version: dict[str, list] = {}
    for data in frames.values():
        frame = decode_frame(data)
        codes, cats = frame.categorical["prediction"]
        by_version.setdefault(frame.version, []).extend(
            zip(frame.request_ids.tolist(), (cats[c] for c in codes), strict=True))
    stable, shadow = dict(by_version["1"]), dict(by_version["2"])
    assert set(stable) == set(shadow) == {f"r{i}".encode() for i in range(len(ROWS))}
    agreed = sum(stable[k] == shadow[k] for k in stable)
    svc.signals.flush()
    assert counts.of("2") == {"shadow_compared": len(ROWS), "shadow_agreed": agreed}
    assert 0 < agreed < len(ROWS)                       # two different fits: they agree on most rows only
