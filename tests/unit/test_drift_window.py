"""A drift window streamed over capture frames: the same verdict as the accumulators fed directly,
memory flat in the row count, schema mismatches counted, foreign or corrupt frames refused."""

from __future__ import annotations

import numpy as np
import pytest

from tenantml.monitoring import build_baseline
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
