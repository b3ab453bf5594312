"""Traffic capture: a sample of each request's features and predictions, written as capture frames
(tenantml.monitoring.capture) straight to S3 under capture/tenant=/model=/version=/date=/hour=.

Transport, and why: the inference function buffers rows per (tenant, model, version) in memory and writes
one frame per `max_rows` rows or `max_age_s` seconds with a single PutObject, from the request that fills
the buffer. Only that request pays the write (one in hundreds: p50 is untouched); every other request
pays the row extraction (a few numpy slices). The key layout is the same locally and on AWS (Firehose would
have given dynamic partitioning on AWS but not on the local emulator, and JSON lines the worker cannot
parse fast enough); at ~500 rows a frame a PUT costs about $0.01 per million captured rows. What is lost:
rows still buffered when Lambda retires an execution environment (at most `max_rows` rows or
`max_age_s` seconds of one environment's sample); a failed write is logged and counted
(CaptureFailures), its rows dropped, and the prediction is never affected.

What a row holds: a tabular model's input features by name (manifest `features`); a text model's
derived features `text_chars` and `text_words`; the model's first label output (or numeric score) as
`prediction`; the request id (for the ground-truth join) and the time.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from tenantml.monitoring.capture import PREDICTION, FrameBuilder, frame_key


def capture_columns(manifest: Any, tensors: Mapping[str, Any], values: Mapping[str, Any],
                    ) -> tuple[dict[str, np.ndarray], dict[str, list[str]]] | None:
    """(numeric, categorical) columns of one request, or None when nothing of it is capturable."""
    numeric: dict[str, np.ndarray] = {}
    categorical: dict[str, list[str]] = {}
    for spec in manifest.inputs:
        t = tensors.get(spec.name)
        if t is None:
            continue
        if spec.datatype == "BYTES":
            texts = list(t.data)
            numeric["text_chars"] = np.fromiter((len(s) for s in texts), np.float32, len(texts))
            numeric["text_words"] = np.fromiter((len(s.split()) for s in texts), np.float32, len(texts))
        elif isinstance(t.data, np.ndarray) and t.data.ndim == 2 \
                and len(manifest.features) == t.data.shape[1]:
            for i, name in enumerate(manifest.features):
                numeric[name] = t.data[:, i]
    for spec in manifest.outputs:
        v = values.get(spec.name)
        if v is None:
            continue
        if spec.datatype == "BYTES":
            categorical[PREDICTION] = [str(x) for x in v]
            break
        if isinstance(v, np.ndarray) and v.ndim == 1 and spec.datatype.startswith("FP"):
            numeric[PREDICTION] = v
            break
    return (numeric, categorical) if numeric or categorical else None


@dataclass
class _Buffer:
    builder: FrameBuilder
    started: float


class CaptureSink:
    """Buffers capture rows and writes frames. `put(key, data)` writes one object (raises on failure);
    `on_failure(exc, rows)` is told about every failed write (logged and counted by the service)."""

    def __init__(self, put: Callable[[str, bytes], None], *, max_rows: int = 500, max_age_s: float = 60.0,
                 clock: Callable[[], float] = time.time,
                 on_failure: Callable[[Exception, int], None] | None = None) -> None:
        self._put = put
        self.max_rows, self.max_age_s = max_rows, max_age_s
        self._clock = clock
        self._on_failure = on_failure
        self._buffers: dict[tuple[str, str, str], _Buffer] = {}
        self._lock = threading.Lock()
        self.written_rows = 0
        self.failed_rows = 0

    def sampled(self, rate: float) -> bool:
        return rate >= 1.0 or (rate > 0.0 and random.random() < rate)  # noqa: S311 - sampling, not security

    def add(self, tenant: str, model: str, version: str, request_id: str,
            numeric: Mapping[str, np.ndarray], categorical: Mapping[str, list[str]]) -> None:
        key = (tenant, model, version)
        now = self._clock()
        with self._lock:
            buf = self._buffers.get(key)
            if buf is None:
                buf = self._buffers[key] = _Buffer(FrameBuilder(tenant, model, version), now)
            buf.builder.add(request_id, int(now * 1000), numeric, categorical)

    def due(self) -> list[tuple[str, str, str]]:
        now = self._clock()
        with self._lock:
            return [k for k, b in self._buffers.items()
                    if b.builder.rows >= self.max_rows or now - b.started >= self.max_age_s]

    def flush(self, keys: list[tuple[str, str, str]] | None = None) -> int:
        """Write the given buffers (default: every one); returns the rows written."""
        with self._lock:
            taken = [(k, self._buffers.pop(k)) for k in (keys if keys is not None else list(self._buffers))
                     if k in self._buffers]
        written = 0
        for (tenant, model, version), buf in taken:
            rows = buf.builder.rows
            try:
                data = buf.builder.encode()
                self._put(frame_key(tenant, model, version, datetime.fromtimestamp(buf.started, UTC)), data)
            except Exception as exc:  # noqa: BLE001 - capture never fails a prediction: reported, dropped
                self.failed_rows += rows
                if self._on_failure is not None:
                    self._on_failure(exc, rows)
                continue
            written += rows
        self.written_rows += written
        return written

    def flush_due(self) -> int:
        due = self.due()
        return self.flush(due) if due else 0

    @property
    def buffered_rows(self) -> int:
        with self._lock:
            return sum(b.builder.rows for b in self._buffers.values())
