"""The capture sink: rows buffered per (tenant, model, version), one frame per max_rows or max_age, a
failed write reported and dropped (never raised), sampling by rate."""

from __future__ import annotations

import numpy as np
import pytest

from tenantml.monitoring.capture import decode_frame
from tenantml.serving.capture import CaptureSink, capture_columns
from tenantml.serving.oip import Tensor


class Clock:
    def __init__(self) -> None:
        self.now = 1_796_058_000.0

    def __call__(self) -> float:
        return self.now


def rows(n: int) -> tuple[dict, dict]:
    return {"velocity": np.arange(n, dtype=np.float32)}, {"prediction": ["low"] * n}


def test_a_frame_is_written_per_max_rows_per_target():
    written: dict[str, bytes] = {}
    sink = CaptureSink(lambda k, d: written.__setitem__(k, d), max_rows=3, clock=Clock())
    sink.add("acme", "risk", "1", "r1", *rows(2))
    sink.add("globex", "risk", "1", "r2", *rows(2))
    assert sink.flush_due() == 0 and sink.buffered_rows == 4
    sink.add("acme", "risk", "1", "r3", *rows(1))
    assert sink.flush_due() == 3
    (key,) = written
    assert key.startswith("capture/tenant=acme/model=risk/version=1/date=2026-11-30/hour=17/")
    frame = decode_frame(written[key])
    assert frame.rows == 3 and frame.request_ids.tolist() == [b"r1", b"r1", b"r3"]
    assert sink.buffered_rows == 2                                     # globex's rows wait for their turn


def test_old_buffers_are_written_after_max_age():
    written = []
    clock = Clock()
    sink = CaptureSink(lambda k, d: written.append(k), max_rows=1000, max_age_s=60, clock=clock)
    sink.add("acme", "risk", "1", "r1", *rows(1))
    clock.now += 59
    assert sink.flush_due() == 0
    clock.now += 2
    assert sink.flush_due() == 1 and len(written) == 1


def test_a_failed_write_is_reported_and_dropped_never_raised():
    failures = []

    def broken(key: str, data: bytes) -> None:
        raise ConnectionError("S3 is down")

    sink = CaptureSink(broken, max_rows=1, on_failure=lambda exc, n: failures.append((type(exc), n)),
                       clock=Clock())
    sink.add("acme", "risk", "1", "r1", *rows(2))
    assert sink.flush_due() == 0
    assert failures == [(ConnectionError, 2)] and sink.failed_rows == 2 and sink.buffered_rows == 0


@pytest.mark.parametrize(("rate", "expected"), [(0.0, 0), (1.0, 1000)])
def test_sampling_rate_bounds(rate, expected):
    sink = CaptureSink(lambda k, d: None)
    assert sum(sink.sampled(rate) for _ in range(1000)) == expected


def test_sampling_rate_is_a_share():
    import random

    random.seed(1)   # deterministic; with 1000 draws at 0.2 the bounds are 4 standard deviations wide
    sink = CaptureSink(lambda k, d: None)
    assert 150 < sum(sink.sampled(0.2) for _ in range(1000)) < 250


class _Spec:
    def __init__(self, name: str, datatype: str) -> None:
        self.name, self.datatype = name, datatype


class _Manifest:
    def __init__(self, inputs, outputs, features=()) -> None:
        self.inputs, self.outputs, self.features = inputs, outputs, list(features)


def test_columns_of_a_tabular_and_a_text_model():
    tab = _Manifest([_Spec("features", "FP32")], [_Spec("risk", "BYTES"), _Spec("risk_probs", "FP32")],
                    features=["a", "b"])
    x = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    numeric, categorical = capture_columns(tab, {"features": Tensor("features", "FP32", (2, 2), x)},
                                           {"risk": ["low", "high"], "risk_probs": np.zeros((2, 3))})
    assert numeric["a"].tolist() == [1.0, 3.0] and numeric["b"].tolist() == [2.0, 4.0]
    assert categorical == {"prediction": ["low", "high"]}
    text = _Manifest([_Spec("text", "BYTES")], [_Spec("embedding", "FP32")])
    numeric, categorical = capture_columns(text, {"text": Tensor("text", "BYTES", (2,), ["a b c", ""])},
                                           {"embedding": np.zeros((2, 8), np.float32)})
    assert numeric["text_chars"].tolist() == [5, 0] and numeric["text_words"].tolist() == [3, 0]
    assert categorical == {}                                          # an embedding is no prediction


def test_capture_does_not_load_the_drift_statistics():
    """The inference function's cold start must not pay for the statistics' pydantic models (~150 ms)."""
    import subprocess
    import sys

    code = ("import sys, tenantml.serving.capture; "
            "print(sorted(m for m in sys.modules if m.startswith('tenantml.monitoring')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['tenantml.monitoring', 'tenantml.monitoring.capture']"
