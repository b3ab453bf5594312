"""A drift window streamed over capture frames: the same verdict as the accumulators fed directly,
memory flat in the row count, schema mismatches counted, foreign or corrupt frames refused; a text model's
derived columns, from the capture path into frames, flag a shifted text population and not a fresh sample
of the reference one."""

from __future__ import annotations

import numpy as np
import pytest

from tenantml.monitoring import build_baseline, build_text_baseline
from tenantml.monitoring.capture import CorruptFrame, decode_frame, encode_frame
from tenantml.monitoring.window import Window

OWNER = ("acme", "project-risk", "3")
LEVELS = ["low", "medium", "high"]


def reference(rows: int = 20_000, seed: int = 0):
    rng = np.random.default_rng(seed)
    plans = rng.choice(["free", "pro", "enterprise"], rows, p=[.6, .3, .1])
    return build_baseline({"velocity": rng.normal(20, 5, rows), "team_size": rng.integers(1, 9, rows)},
                          categorical={"plan": plans},
                          predictions=rng.choice(LEVELS, rows, p=[.5, .3, .2]))


def frames(n_frames: int, rows: int, *, shift: float = 0.0, seed: int = 1, owner=OWNER):
    rng = np.random.default_rng(seed)
    for _ in range(n_frames):
        yield encode_frame(*owner, numeric={"velocity": rng.normal(20 + shift, 5, rows),
                                            "team_size": rng.integers(1, 9, rows)},
                           categorical={"plan": rng.choice(["free", "pro", "enterprise"], rows,
                                                           p=[.6, .3, .1]),
                                        "prediction": rng.choice(LEVELS, rows, p=[.5, .3, .2])},
                           request_ids=[f"r{i}" for i in range(rows)])


def test_unchanged_traffic_is_no_drift_and_shifted_traffic_drifts():
    base = reference()
    same = Window(base, OWNER).add_all(frames(10, 2000)).evaluate()
    assert same.verdict == "no_drift" and same.n_drifted == 0
    moved = Window(base, OWNER).add_all(frames(10, 2000, shift=4.0)).evaluate()
    by_name = {f.name: f for f in moved.features}
    assert by_name["velocity"].verdict == "drift" and by_name["team_size"].verdict == "no_drift"


def test_the_window_equals_the_accumulators_fed_directly():
    base = reference()
    window = Window(base, OWNER).add_all(frames(5, 3000, shift=1.0))
    direct = Window(base, OWNER)
    for data in frames(5, 3000, shift=1.0):
        f = decode_frame(data)
        direct.features["velocity"].update(np.asarray(f.numeric["velocity"]))
        direct.features["team_size"].update(np.asarray(f.numeric["team_size"]))
        codes, cats = f.categorical["plan"]
        direct.features["plan"].update(np.asarray(cats)[codes])
        codes, cats = f.categorical["prediction"]
        direct.prediction.update(np.asarray(cats)[codes])
    assert window.evaluate().model_dump() == direct.evaluate().model_dump()


def test_memory_does_not_grow_with_the_window():
    base = reference()
    small = Window(base, OWNER).add_all(frames(2, 1000))
    large = Window(base, OWNER).add_all(frames(40, 5000))
    assert large.counts.rows == 100 * small.counts.rows
    assert large.nbytes == small.nbytes


def test_schema_mismatches_are_counted_not_dropped():
    base = reference()
    window = Window(base, OWNER).add_all(frames(2, 1000))
    window.add(encode_frame(*OWNER, numeric={"velocity": np.ones(500)}))   # no team_size, plan, prediction
    assert window.counts.schema_mismatch == {"team_size": 500, "plan": 500, "prediction": 500}
    assert window.counts.rows == 2500


def test_small_windows_are_insufficient_data():
    assert Window(reference(), OWNER).add_all(frames(1, 50)).evaluate().verdict == "insufficient_data"


def test_foreign_and_corrupt_frames_are_refused():
    window = Window(reference(), OWNER)
    with pytest.raises(CorruptFrame, match="another tenant"):
        window.add(next(frames(1, 10, owner=("globex", "project-risk", "3"))))
    with pytest.raises(CorruptFrame):
        window.add(b"garbage")


# --- text models -------------------------------------------------------------------------------------------

TEXT_OWNER = ("acme", "work-item-classifier", "1")
TEXT_FEATURES = ["token_count", "unknown_token_rate", "embedding_pc1", "embedding_pc2", "embedding_pc3"]


def texts(n: int, *, shifted: bool, seed: int):
    """A population of texts as a text model sees them: token counts, unknown tokens and unit embeddings
    (384-d) from a mixture of 6 topics. The shifted population (say, pasted code) is longer, has more
    unknown tokens, and its own topics."""
    rng = np.random.default_rng(seed)
    topics = np.random.default_rng(100 + shifted).normal(size=(6, 384))
    e = topics[rng.integers(0, 6, n)] + rng.normal(scale=1.5, size=(n, 384))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    tokens = rng.poisson(60 if shifted else 16, n) + 1
    unknown = rng.binomial(tokens, 0.05 if shifted else 0.002)
    return tokens, unknown, e.astype(np.float32)


def text_frames(n_frames: int, rows: int, base, *, shifted: bool, seed: int):
    """Frames as the inference function writes them: the derived columns computed by the capture path
    (serving.capture.text_columns, with the projection read back from baseline.json)."""
    from tenantml.serving.capture import TextSignals, projection_from_baseline, text_columns

    projection = projection_from_baseline(base.model_dump_json().encode())
    for i in range(n_frames):
        tokens, unknown, e = texts(rows, shifted=shifted, seed=seed + i)
        cols = text_columns(TextSignals(["t"] * rows, tokens, unknown, e, projection))
        yield encode_frame(*TEXT_OWNER, numeric=cols,
                           categorical={"prediction": np.random.default_rng(seed + i).choice(LEVELS, rows)})


def text_reference():
    tokens, unknown, e = texts(2000, shifted=False, seed=0)
    return build_text_baseline(tokens, unknown, e, embedding="backbone",
                               predictions=np.random.default_rng(1).choice(LEVELS, 500))


def test_text_features_flag_a_shifted_population_and_not_the_same_one():
    base = text_reference()
    same = Window(base, TEXT_OWNER).add_all(text_frames(3, 200, base, shifted=False, seed=10)).evaluate()
    assert [f.name for f in same.features] == TEXT_FEATURES
    assert same.verdict == "no_drift" and same.n_drifted == 0, [f.reasons for f in same.features]
    moved = Window(base, TEXT_OWNER).add_all(text_frames(3, 200, base, shifted=True, seed=10)).evaluate()
    assert moved.verdict == "drift"
    assert {f.name for f in moved.features if f.drifted} == set(TEXT_FEATURES)
    assert moved.prediction is not None and not moved.prediction.drifted       # only the inputs moved


def test_a_text_window_missing_its_projection_columns_counts_the_mismatch():
    """A baseline with a projection and frames without embedding_pc* (a model served without a usable
    projection): the rows are counted per missing feature, never read as 'no drift'."""
    base = text_reference()
    tokens, unknown, _ = texts(300, shifted=False, seed=5)
    frame = encode_frame(*TEXT_OWNER, numeric={"token_count": tokens, "unknown_token_rate": unknown / tokens},
                         categorical={"prediction": ["low"] * 300})
    window = Window(base, TEXT_OWNER).add_all([frame])
    assert window.counts.schema_mismatch == {f"embedding_pc{k}": 300 for k in (1, 2, 3)}
    verdicts = {f.name: f.verdict for f in window.evaluate().features}
    assert verdicts["embedding_pc1"] == "insufficient_data" and verdicts["token_count"] == "no_drift"
