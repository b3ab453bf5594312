"""A drift window, streamed over capture frames: one frame at a time into the accumulators, so memory
stays flat however many rows the window holds (each frame is released before the next is read).

Column conventions of a frame: a baseline feature by its name (a text model's derived features too:
`token_count`, `unknown_token_rate`, `embedding_pc1..K`, numeric features like any other); the model's
prediction as `prediction` (categorical labels or a numeric score). A frame of the right owner that lacks
a baseline feature, or holds it with the wrong kind, is a schema mismatch: its rows are counted per
feature and shown in the report, never silently dropped; a frame of another (tenant, model, version) is
refused (CorruptFrame).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tenantml.monitoring.baseline import Baseline, CategoricalBaseline, NumericBaseline
from tenantml.monitoring.capture import PREDICTION, CorruptFrame, Frame, decode_frame
from tenantml.monitoring.stats import (
    Accumulator,
    CategoricalAccumulator,
    DatasetDrift,
    NumericAccumulator,
    Thresholds,
    evaluate,
)

__all__ = ["PREDICTION", "Window", "WindowCounts"]


@dataclass
class WindowCounts:
    frames: int = 0
    rows: int = 0
    schema_mismatch: dict[str, int] = field(default_factory=dict)   # feature -> rows without it


def _accumulator(baseline: NumericBaseline | CategoricalBaseline, seed: int) -> Accumulator:
    if isinstance(baseline, NumericBaseline):
        return NumericAccumulator(baseline, seed=seed)
    return CategoricalAccumulator(baseline)


def _feed(acc: Accumulator, name: str, frame: Frame) -> bool:
    if isinstance(acc, NumericAccumulator):
        if name in frame.numeric:
            acc.update(frame.numeric[name])
            return True
        return False
    if name in frame.categorical:
        codes, categories = frame.categorical[name]
        acc.update_codes(codes, categories)
        return True
    return False


class Window:
    """Accumulates the frames of one (tenant, model, version) against its baseline."""

    def __init__(self, baseline: Baseline, owner: tuple[str, str, str] | None = None, *,
                 seed: int = 0) -> None:
        self.baseline = baseline
        self.owner = owner
        self.features = {name: _accumulator(fb, seed) for name, fb in baseline.features.items()}
        self.prediction = _accumulator(baseline.prediction, seed) if baseline.prediction else None
        self.counts = WindowCounts()

    def add(self, frame: Frame | bytes) -> None:
        if not isinstance(frame, Frame):
            frame = decode_frame(frame)
        if self.owner is not None and (frame.tenant, frame.model, frame.version) != self.owner:
            raise CorruptFrame("frame of another tenant, model or version in this window")
        self.counts.frames += 1
        self.counts.rows += frame.rows
        for name, acc in self.features.items():
            if not _feed(acc, name, frame):
                self.counts.schema_mismatch[name] = self.counts.schema_mismatch.get(name, 0) + frame.rows
        if self.prediction is not None and not _feed(self.prediction, PREDICTION, frame):
            missing = self.counts.schema_mismatch
            missing[PREDICTION] = missing.get(PREDICTION, 0) + frame.rows

    def add_all(self, frames: Iterable[Frame | bytes]) -> Window:
        for frame in frames:
            self.add(frame)
        return self

    def evaluate(self, thresholds: Thresholds | None = None) -> DatasetDrift:
        return evaluate(self.baseline, self.features, thresholds, prediction=self.prediction)

    @property
    def nbytes(self) -> int:
        """Memory the window holds, whatever its row count."""
        accs = [*self.features.values(), *([self.prediction] if self.prediction else [])]
        return sum(a.nbytes for a in accs)
