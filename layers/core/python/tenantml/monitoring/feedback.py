"""Ground truth: labels or outcomes for earlier predictions, and the accuracy of a window of them.

    POST /v2/models/{model}/feedback   {"feedback": [{"id": "<request id>", "label": "high"},
                                                      {"id": "<request id>", "index": 3, "value": 0.42}]}

`id` is the id of the inference request (the `id` of its response: the client's own, or the one the
platform assigned), `index` the row of that request's batch (default 0); `label` is the true class of a
classification model, `value` the true outcome of a regression. A batch holds one kind (up to 1000 items).
The inference function writes each batch as one capture frame (the same TMLCAP1 format) under the
caller's tenant only:

    feedback/tenant=<t>/model=<m>/date=YYYY-MM-DD/hour=HH/<epoch ms>-<uuid>.tmlc

The join. The drift worker loads the model's feedback received since the window started (small next to
the traffic: ids and labels only) into sorted join keys (request id + row), and streams the window's
capture frames past it: each captured prediction is looked up with one vectorised binary search, so
memory grows with the feedback, never with the traffic. A repeated id (a retried feedback call, a
corrected label) counts once: the latest wins. An id the caller's tenant never captured (unknown, not
sampled, another tenant's: the join cannot tell them apart, and nor can the caller) simply matches nothing
and is counted as `unmatched` in the report; the API answers the same for all of them. Accuracy of
classification is the share of matched predictions equal to their label; a regression reports the mean
absolute error (and RMSE). Compared with the version's baseline (baseline.json `performance`), a drop of
`accuracy_drop` (default 3 points) or an error rise of `error_rise` (default 10%) with at least
`min_feedback` matched rows is an `accuracy` drift.

Feedback that arrives after a window's job ran is not in that window's figure; running the check again
(`tenantml drift run`) counts it.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tenantml.monitoring.capture import (
    ID_WIDTH,
    PREDICTION,
    SUFFIX,
    CorruptFrame,
    Frame,
    decode_frame,
    encode_frame,
)
from tenantml.monitoring.objects import stamped_keys

FEEDBACK_PREFIX = "feedback"
MAX_ITEMS = 1000
LABEL = "label"
VALUE = "value"
ROW = "__row"
KEY_DTYPE = np.dtype([("id", f"S{ID_WIDTH}"), ("row", ">u4")])   # big-endian: keys sort by (id, row)
_KEY_BYTES = f"S{KEY_DTYPE.itemsize}"


class FeedbackItem(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$",
                    description="the inference request's id (printable ASCII; its first 36 characters "
                                "join, as in the capture)")
    index: int = Field(default=0, ge=0, lt=2**31, description="the row of the request's batch")
    label: str | None = Field(default=None, min_length=1, max_length=256)
    value: float | None = None

    @field_validator("value")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("value must be a finite number")
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> FeedbackItem:
        if (self.label is None) == (self.value is None):
            raise ValueError("give exactly one of label (classification) and value (regression)")
        return self


class FeedbackBatch(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    feedback: list[FeedbackItem] = Field(min_length=1, max_length=MAX_ITEMS)

    @model_validator(mode="after")
    def _one_kind(self) -> FeedbackBatch:
        if len({item.label is None for item in self.feedback}) > 1:
            raise ValueError("a batch holds labels or values, not both")
        return self

    @property
    def kind(self) -> Literal["label", "value"]:
        return LABEL if self.feedback[0].label is not None else VALUE


class FeedbackAccepted(BaseModel):
    """The answer to POST /v2/models/{model}/feedback (202): documents the response (tenantml.api.openapi);
    tests validate the real one against it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    accepted: int = Field(ge=1, le=MAX_ITEMS, description="items stored (matched or not: never told apart)")


def parse_batch(payload: Any) -> FeedbackBatch:
    """The validated batch, or BadRequest naming the first problem."""
    from tenantml.errors import BadRequest  # noqa: PLC0415
    from tenantml.serving.oip import validation_message  # noqa: PLC0415

    try:
        return FeedbackBatch.model_validate(payload)
    except ValidationError as exc:
        raise BadRequest(validation_message(exc, "invalid feedback")) from None


def feedback_partition(tenant: str, model: str) -> str:
    return f"{FEEDBACK_PREFIX}/tenant={tenant}/model={model}/"


def feedback_key(tenant: str, model: str, at: datetime) -> str:
    at = at.astimezone(UTC)
    return (f"{feedback_partition(tenant, model)}date={at:%Y-%m-%d}/hour={at:%H}/"
            f"{int(at.timestamp() * 1000)}-{uuid.uuid4().hex}{SUFFIX}")


def encode_batch(tenant: str, model: str, batch: FeedbackBatch, at: datetime) -> bytes:
    """One feedback frame (version "-": feedback names a model, the join finds the version)."""
    items = batch.feedback
    numeric: dict[str, Any] = {ROW: np.fromiter((i.index for i in items), np.float64, len(items))}
    categorical: dict[str, Any] = {}
    if batch.kind == LABEL:
        categorical[LABEL] = [i.label for i in items]
    else:
        numeric[VALUE] = np.fromiter((i.value for i in items), np.float64, len(items))
    now_ms = int(at.timestamp() * 1000)
    return encode_frame(tenant, model, "-", numeric=numeric, categorical=categorical,
                        request_ids=[i.id for i in items], times_ms=np.full(len(items), now_ms, np.int64))


def join_keys(request_ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(request id, row) as fixed-width byte strings that sort and compare like the pair."""
    keys = np.empty(len(request_ids), KEY_DTYPE)
    keys["id"] = request_ids
    keys["row"] = rows
    return keys.view(_KEY_BYTES)


def batch_rows(request_ids: np.ndarray) -> np.ndarray:
    """The row of each captured row within its request: a request's rows are contiguous in a frame."""
    n = len(request_ids)
    positions = np.arange(n)
    starts = np.ones(n, bool)
    starts[1:] = request_ids[1:] != request_ids[:-1]
    return positions - np.maximum.accumulate(np.where(starts, positions, 0))


@dataclass(frozen=True)
class Feedback:
    """A model's ground truth, deduplicated (latest wins), sorted by join key."""

    kind: Literal["label", "value"] | None
    keys: np.ndarray
    labels: np.ndarray           # str, for kind "label"
    values: np.ndarray           # float64, for kind "value"
    items: int                   # distinct (id, row) pairs
    received: int                # items received, repeats included
    mixed: int = 0               # items of the other kind than the model's majority (ignored, reported)

    @classmethod
    def from_frames(cls, frames: Iterable[Frame]) -> Feedback:
        keys, labels, values, times = [], [], [], []
        n_label = n_value = 0
        for frame in frames:
            if ROW not in frame.numeric:
                raise CorruptFrame("feedback frame without its row column")
            k = join_keys(frame.request_ids, frame.numeric[ROW].astype(np.uint32))
            if LABEL in frame.categorical:
                codes, cats = frame.categorical[LABEL]
                labels.append(np.asarray(cats, dtype=object)[codes].astype(str))
                values.append(np.full(frame.rows, np.nan))
                n_label += frame.rows
            elif VALUE in frame.numeric:
                labels.append(np.full(frame.rows, "", dtype=object).astype(str))
                values.append(frame.numeric[VALUE].astype(np.float64))
                n_value += frame.rows
            else:
                raise CorruptFrame("feedback frame with neither labels nor values")
            keys.append(k)
            times.append(frame.times_ms)
        if not keys:
            empty = np.empty(0, _KEY_BYTES)
            return cls(None, empty, np.empty(0, str), np.empty(0), 0, 0)
        kind: Literal["label", "value"] = LABEL if n_label >= n_value else VALUE
        k, lab, val, t = (np.concatenate(keys), np.concatenate(labels), np.concatenate(values),
                          np.concatenate(times))
        keep = ~np.isnan(val) if kind == VALUE else lab != ""
        mixed = int((~keep).sum())
        k, lab, val, t = k[keep], lab[keep], val[keep], t[keep]
        # Latest wins: order by (key, time, arrival), keep the last of each key.
        order = np.lexsort((np.arange(k.size), t, k))
        k, lab, val = k[order], lab[order], val[order]
        last = np.ones(k.size, bool)
        last[:-1] = k[1:] != k[:-1]
        return cls(kind, k[last], lab[last], val[last], int(last.sum()), int(k.size) + mixed, mixed)


class FeedbackIndex:
    """The feedback objects of the artifact bucket (an S3 client: boto3's or botocore's)."""

    def __init__(self, s3: Any, bucket: str) -> None:
        self._s3, self._bucket = s3, bucket

    def load(self, tenant: str, model: str, start: datetime, end: datetime) -> Feedback:
        """The feedback the tenant sent for `model` in [start, end). A corrupt object raises CorruptFrame."""
        keys = stamped_keys(self._s3, self._bucket, feedback_partition(tenant, model), SUFFIX, start, end)

        def frames() -> Iterable[Frame]:
            for key in keys:
                frame = decode_frame(self._s3.get_object(Bucket=self._bucket, Key=key)["Body"].read())
                if (frame.tenant, frame.model) != (tenant, model):
                    raise CorruptFrame("feedback frame of another tenant or model")
                yield frame
        return Feedback.from_frames(frames())


class AccuracyAccumulator:
    """Joins the window's captured predictions with the feedback, frame by frame."""

    def __init__(self, feedback: Feedback) -> None:
        self.feedback = feedback
        self.matched = 0
        self.correct = 0
        self.abs_error = 0.0
        self.sq_error = 0.0
        self.kind_mismatch = 0            # matched rows whose prediction is not of the feedback's kind
        self._seen = np.zeros(feedback.keys.size, bool)

    def add(self, frame: Frame) -> None:
        fb = self.feedback
        if fb.keys.size == 0 or frame.rows == 0:
            return
        keys = join_keys(frame.request_ids, batch_rows(frame.request_ids))
        pos = np.minimum(np.searchsorted(fb.keys, keys), fb.keys.size - 1)
        hit = fb.keys[pos] == keys
        if not hit.any():
            return
        at = pos[hit]
        if fb.kind == LABEL and PREDICTION in frame.categorical:
            codes, cats = frame.categorical[PREDICTION]
            predicted = np.asarray(cats, dtype=object)[codes[hit]].astype(str)
            self.correct += int((predicted == fb.labels[at]).sum())
            self.matched += int(hit.sum())
        elif fb.kind == VALUE and PREDICTION in frame.numeric:
            err = frame.numeric[PREDICTION][hit].astype(np.float64) - fb.values[at]
            finite = np.isfinite(err)        # a NaN prediction is counted by the drift statistics
            self.abs_error += float(np.abs(err[finite]).sum())
            self.sq_error += float((err[finite] ** 2).sum())
            self.matched += int(finite.sum())
        else:
            self.kind_mismatch += int(hit.sum())
            return
        self._seen[at] = True

    @property
    def unmatched(self) -> int:
        """Feedback items no captured prediction of the window matched."""
        return int(self.feedback.items - self._seen.sum())

    def value(self) -> float | None:
        if not self.matched:
            return None
        if self.feedback.kind == LABEL:
            return self.correct / self.matched
        return self.abs_error / self.matched

    def rmse(self) -> float | None:
        if not self.matched or self.feedback.kind != VALUE:
            return None
        return math.sqrt(self.sq_error / self.matched)


def accuracy_report(acc: AccuracyAccumulator, performance: Any | None, thresholds: Any,
                    trend: list[dict[str, Any]], window_end: str) -> dict[str, Any]:
    """The report's `accuracy` section. `performance`: the baseline's (baseline.json), or None;
    `thresholds`: stats.Thresholds; `trend`: earlier windows' {window_end, value, matched}, oldest first."""
    classification = acc.feedback.kind == LABEL
    metric = "accuracy" if classification else "mae"
    value = acc.value()
    base = None if performance is None else (performance.accuracy if classification else performance.mae)
    section: dict[str, Any] = {
        "metric": metric, "value": value, "baseline": base, "rmse": acc.rmse(),
        "matched": acc.matched, "feedback": acc.feedback.items, "unmatched": acc.unmatched,
        "kind_mismatch": acc.kind_mismatch, "ignored_other_kind": acc.feedback.mixed,
        "change": None if value is None or base is None else value - base,
    }
    if acc.matched < thresholds.min_feedback:
        verdict = "insufficient_data"
        reason = (f"{acc.matched} predictions joined with feedback; at least {thresholds.min_feedback} "
                  "are needed")
    elif base is None:
        verdict, reason = "no_baseline", f"{metric} {value:.4g}: the baseline has no {metric} to compare with"
    elif classification:
        drop = base - value
        verdict = "drop" if drop >= thresholds.accuracy_drop else "ok"
        reason = (f"accuracy {value:.1%} vs baseline {base:.1%} ({-drop * 100:+.1f} points; a drop of "
                  f"{thresholds.accuracy_drop * 100:.1f} points or more is drift) over {acc.matched} "
                  "labelled predictions")
    else:
        rise = (value - base) / base if base > 0 else (math.inf if value > 0 else 0.0)
        verdict = "drop" if rise >= thresholds.error_rise else "ok"
        reason = (f"MAE {value:.4g} vs baseline {base:.4g} ({rise:+.1%}; +{thresholds.error_rise:.0%} or "
                  f"more is drift) over {acc.matched} predictions with outcomes")
    section["verdict"], section["reason"] = verdict, reason
    section["trend"] = [*trend, {"window_end": window_end, "value": value, "matched": acc.matched}]
    return section
