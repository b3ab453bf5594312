"""The capture sink: rows buffered per (tenant, model, version), one frame per max_rows or max_age, a
failed write reported and dropped (never raised), sampling by rate; a text model's derived columns (token
count, unknown-token rate, the embedding on the baseline's principal directions) checked against numpy and
the tokenizer, handed from the prediction to the capture of the same request only, and remembered for the
requests the prediction cache answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import serving_models as sm

from tenantml.monitoring import build_baseline, build_text_baseline
from tenantml.monitoring.capture import decode_frame
from tenantml.serving.capture import (
    CaptureSink,
    TextSignals,
    capture_columns,
    note_text,
    projection_from_baseline,
    take_text,
    text_columns,
)
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
    tensors = {"text": Tensor("text", "BYTES", (2,), ["a b c", ""])}
    values = {"embedding": np.zeros((2, 8), np.float32)}
    derived = {"token_count": np.array([3, 0], np.float32), "unknown_token_rate": np.zeros(2, np.float32)}
    numeric, categorical = capture_columns(text, tensors, values, derived)
    assert numeric == derived and categorical == {}                  # an embedding is no prediction
    # Without its derived columns (nothing left by the prediction, nothing remembered) a text request is
    # not captured: a frame needs every column for every row.
    assert capture_columns(text, tensors, values) is None


def test_capture_does_not_load_the_drift_statistics():
    """The inference function's cold start must not pay for the statistics' pydantic models (~150 ms)."""
    import subprocess
    import sys

    code = ("import sys, tenantml.serving.capture; "
            "print(sorted(m for m in sys.modules if m.startswith('tenantml.monitoring')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['tenantml.monitoring', 'tenantml.monitoring.capture']"


# --- derived text features ----------------------------------------------------------------------------


def _reference_embeddings(n: int = 400, d: int = 16, seed: int = 0) -> np.ndarray:
    """Unit vectors with a few dominant directions (so the principal directions are well separated)."""
    rng = np.random.default_rng(seed)
    e = rng.normal(size=(n, d)) * np.linspace(3.0, 0.2, d) + 0.5
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def _text_baseline(emb: np.ndarray, components: int = 3) -> bytes:
    rng = np.random.default_rng(1)
    return build_text_baseline(rng.integers(1, 40, len(emb)), rng.integers(0, 2, len(emb)), emb,
                               embedding="output", components=components).model_dump_json().encode()


def test_projection_columns_match_numpy_svd_of_the_reference():
    ref = _reference_embeddings()
    projection = projection_from_baseline(_text_baseline(ref))
    assert projection is not None and projection.k == 3 and projection.dim == 16
    # Independently: the centred reference's right singular vectors (up to their sign).
    mean = ref.mean(axis=0)
    _, _, vt = np.linalg.svd(ref - mean, full_matrices=False)
    signs = np.sign(np.sum(projection.components * vt[:3], axis=1))
    np.testing.assert_allclose(projection.components, vt[:3] * signs[:, None], atol=2e-6)
    np.testing.assert_allclose(projection.mean, mean, atol=1e-6)

    batch = _reference_embeddings(5, seed=7).astype(np.float32)
    tokens, unknown = np.array([4, 0, 9, 1, 256]), np.array([1, 0, 0, 1, 3])
    cols = text_columns(TextSignals(["t"] * 5, tokens, unknown, batch, projection))
    assert list(cols) == ["token_count", "unknown_token_rate", *(f"embedding_pc{k}" for k in (1, 2, 3))]
    assert all(c.dtype == np.float32 and c.shape == (5,) for c in cols.values())
    expected = (batch - mean) @ (vt[:3] * signs[:, None]).T
    for k in range(3):
        np.testing.assert_allclose(cols[f"embedding_pc{k + 1}"], expected[:, k], atol=1e-5)
    assert cols["token_count"].tolist() == [4, 0, 9, 1, 256]
    np.testing.assert_allclose(cols["unknown_token_rate"], [0.25, 0.0, 0.0, 1.0, 3 / 256], rtol=1e-6)


def test_without_a_fitting_projection_only_the_counts_are_derived():
    emb = _reference_embeddings(3).astype(np.float32)
    counts = (np.array([2, 3, 4]), np.zeros(3, np.int64))
    assert list(text_columns(TextSignals(["t"] * 3, *counts, emb, None))) == ["token_count",
                                                                             "unknown_token_rate"]
    other = projection_from_baseline(_text_baseline(_reference_embeddings(d=8)))   # 8-d, embeddings 16-d
    assert list(text_columns(TextSignals(["t"] * 3, *counts, emb, other))) == ["token_count",
                                                                              "unknown_token_rate"]


def test_projection_from_baselines_without_one_and_malformed_ones():
    tabular = build_baseline({"x": np.arange(10.0)}).model_dump_json().encode()
    assert projection_from_baseline(tabular) is None                       # schema version 1: no text
    counts_only = build_text_baseline([1, 2, 3], [0, 0, 1], None, embedding="output")
    assert projection_from_baseline(counts_only.model_dump_json().encode()) is None
    bad = json.loads(_text_baseline(_reference_embeddings()))
    bad["text"]["projection"]["components"][0] = bad["text"]["projection"]["components"][0][:-1]
    with pytest.raises(ValueError):
        projection_from_baseline(json.dumps(bad).encode())
    with pytest.raises(ValueError):
        projection_from_baseline(b"not json")


def test_token_columns_agree_with_the_tokenizer_on_out_of_vocabulary_text():
    """Counts as the runtime takes them (processing.count_tokens on its own tokenization, truncating at 16
    tokens) against the tokenizer without truncation: words outside the tiny vocabulary, accents, CJK,
    emoji are [UNK]; a 40-word text keeps counting past the truncation."""
    from tokenizers import Tokenizer

    from tenantml.serving import processing

    texts = ["the login page fails", "zebra café 東京 🎉 login", "", " ".join(["app", "crash"] * 20)]
    tok = processing.configure_tokenizer(Tokenizer.from_str(sm.tokenizer_json().decode()), 16)
    encodings = processing.tokenize(tok, texts)
    feeds, mask = processing.token_feeds(encodings)
    counts = processing.count_tokens(encodings, feeds["input_ids"], mask, processing.token_facts(tok))
    tokens, unknown = sm.tiny_tokens(texts)
    assert counts.tokens.tolist() == tokens.tolist() == [4, 6, 0, 40]
    assert counts.unknown.tolist() == unknown.tolist() == [0, 5, 0, 0]   # zebra, cafe, 東, 京 (one each), 🎉
    cols = text_columns(TextSignals(texts, counts.tokens, counts.unknown, np.zeros((4, 8), np.float32), None))
    np.testing.assert_allclose(cols["unknown_token_rate"], [0.0, 5 / 6, 0.0, 0.0])


def test_the_hand_off_reaches_only_the_capture_of_its_own_request():
    texts, other = ["a", "b"], ["a", "b"]                      # equal, but another request's list
    signals = TextSignals(texts, np.array([1, 1]), np.array([0, 0]), np.zeros((2, 4), np.float32), None)
    note_text(signals)
    assert take_text(other) is None
    assert take_text(texts) is None                            # taken (and cleared) by the first look
    note_text(signals)
    assert take_text(texts) is signals


class _TextManifest:
    inputs = [_Spec("text", "BYTES")]
    outputs = [_Spec("category", "BYTES")]
    features: list[str] = []


def test_requests_answered_by_the_prediction_cache_are_captured_from_the_memo():
    sink = CaptureSink(lambda k, d: None, text_memo_size=10, text_memo_ttl_s=60)
    scope = ("acme", "_shared", "work-item-classifier", "1")
    texts = ["the login page fails"]
    tensors = {"text": Tensor("text", "BYTES", (1,), texts)}
    note_text(TextSignals(texts, np.array([4]), np.array([0]), np.zeros((1, 8), np.float32), None))
    first = sink.derived_text(_TextManifest, tensors, sampled=False, memo_scope=scope)
    assert first is not None and len(sink.text_memo) == 1          # remembered even when not sampled
    repeat = {"text": Tensor("text", "BYTES", (1,), list(texts))}   # a cache hit: the model did not run
    assert sink.derived_text(_TextManifest, repeat, sampled=True, memo_scope=scope) is first
    other_tenant = ("globex", *scope[1:])
    assert sink.derived_text(_TextManifest, repeat, sampled=True, memo_scope=other_tenant) is None
    other_texts = {"text": Tensor("text", "BYTES", (1,), ["the login page fails!"])}
    assert sink.derived_text(_TextManifest, other_texts, sampled=True, memo_scope=scope) is None
    assert sink.derived_text(_TextManifest, repeat, sampled=True, memo_scope=None) is None   # cache off
    tabular = _Manifest([_Spec("features", "FP32")], [_Spec("risk", "BYTES")])
    assert sink.derived_text(tabular, {}, sampled=True, memo_scope=scope) is None


def test_capture_path_cost_stays_in_tens_of_microseconds():
    """A loose guard (not the measurement: see README): the capture path of one request of a text model,
    derived columns + row extraction + buffering, well under a millisecond even on a loaded machine."""
    import timeit

    projection = projection_from_baseline(_text_baseline(_reference_embeddings(d=384)))
    sink = CaptureSink(lambda k, d: None, max_rows=10**9, max_age_s=1e9)
    texts = ["the login page fails"]
    tensors = {"text": Tensor("text", "BYTES", (1,), texts)}
    signals = TextSignals(texts, np.array([4]), np.array([0]), _reference_embeddings(1, d=384), projection)

    def capture() -> None:
        note_text(signals)
        text = sink.derived_text(_TextManifest, tensors, sampled=True, memo_scope=("acme", "s", "m", "1"))
        sink.add("acme", "m", "1", "r", *capture_columns(_TextManifest, tensors, {"category": ["bug"]}, text))

    per_call = min(timeit.repeat(capture, number=200, repeat=5)) / 200
    assert per_call < 500e-6
