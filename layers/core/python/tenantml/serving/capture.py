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
derived features (below); the model's first label output (or numeric score) as `prediction` (the
work-item classifier's `category`; its `urgency` is not captured); the request id (for the ground-truth
join) and the time.

A text model's derived features, per text:

- `token_count`: its tokens from the model's own tokenizer before truncation (a text longer than the
  tokenizer's `max_length` counts its overflow too), special tokens and padding excluded;
- `unknown_token_rate`: the share of those tokens that are the unknown token ([UNK]), 0 for an empty text;
- `embedding_pc1..K` (K = 3 for the example models), when the version's baseline.json has a text
  projection: the embedding the model computed (an encoder's output; a head's backbone embedding, the one
  the head consumed) minus the reference embeddings' mean, projected on their K principal directions.

None of it is computed twice: the model counts the tokens of the tokenization it ran anyway
(`processing.count_tokens`) and leaves them with its embedding for this thread's capture (`note_text`,
`take_text`: the hand-off is matched to the request by the identity of its text list, so it never crosses
requests); the projection's directions come from baseline.json, read and verified with the model, never
from reference data. A request the prediction cache answered ran no tokenizer and no embedding: its
columns come from a memo of the derived columns of recent predictions, scoped like the prediction cache
(tenant, owner, model, version; same size and TTL) and keyed by the texts; when the memo misses too, the
request is not captured (a frame needs every column
for every row). Cost of the capture path, measured with timeit on the 2-core machine: see README.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from cachetools import TTLCache

from tenantml.monitoring.capture import (
    PREDICTION,
    TOKEN_COUNT,
    UNKNOWN_TOKEN_RATE,
    FrameBuilder,
    embedding_pc,
    frame_key,
)

TextColumns = dict[str, np.ndarray]


# --- derived text features ------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Projection:
    """The text projection of a version's baseline.json, as float32 arrays: the reference embeddings' mean
    [d] and K unit principal directions [K, d]. `apply` gives the K coordinates of each embedding."""

    mean: np.ndarray
    components: np.ndarray
    # (e - mean) . v = e . v - mean . v: the offsets [K, 1] once, so a request costs one [K, d] x [d, n]
    # product; and the K column names.
    offset: np.ndarray = field(init=False, repr=False)
    names: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "offset", (self.components @ self.mean)[:, None])
        object.__setattr__(self, "names", tuple(embedding_pc(k) for k in range(1, self.k + 1)))

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def k(self) -> int:
        return int(self.components.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.mean.nbytes + self.components.nbytes)

    def apply(self, embeddings: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """[K, n]: row k holds every embedding's coordinate on direction k, (e - mean) . v_k."""
        coords = np.matmul(self.components, np.asarray(embeddings, dtype=np.float32).T, out=out)
        coords -= self.offset
        return coords


def projection_from_baseline(data: bytes) -> Projection | None:
    """The text projection of baseline.json bytes (None when it has none). Plain json and numpy, not the
    pydantic Baseline model: the inference function does not load the drift statistics (~150 ms of cold
    start); the shape is `tenantml.monitoring.baseline.TextProjection`. ValueError when malformed."""
    doc = json.loads(data)
    text = doc.get("text") if isinstance(doc, dict) else None
    proj = text.get("projection") if isinstance(text, dict) else None
    if proj is None:
        return None
    mean = np.asarray(proj["mean"], dtype=np.float32)
    components = np.asarray(proj["components"], dtype=np.float32)
    if mean.ndim != 1 or components.ndim != 2 or components.shape[0] < 1 \
            or components.shape[1] != mean.shape[0]:
        raise ValueError(f"projection shapes do not fit: mean {mean.shape}, components {components.shape}")
    if not (np.isfinite(mean).all() and np.isfinite(components).all()):
        raise ValueError("projection holds non-finite values")
    mean.setflags(write=False)
    components.setflags(write=False)
    return Projection(mean, components)


@dataclass(frozen=True)
class TextSignals:
    """What a text model's prediction leaves for the capture of its request: the request's texts (the list
    object itself: its identity matches the hand-off to the request), the token counts, the embedding the
    model computed and the projection of the version's baseline (None: no embedding_pc columns)."""

    texts: Sequence[str]
    tokens: np.ndarray
    unknown: np.ndarray
    embedding: np.ndarray
    projection: Projection | None


_local = threading.local()


def note_text(signals: TextSignals) -> None:
    """Called by a text model's predict: the signals of the request this thread is serving."""
    _local.signals = signals


def take_text(texts: object) -> TextSignals | None:
    """The signals the prediction of `texts` left on this thread, or None (a prediction-cache hit, or
    another request's); clears them either way, so nothing outlives its request's capture."""
    signals = getattr(_local, "signals", None)
    _local.signals = None
    return signals if signals is not None and signals.texts is texts else None


def text_columns(signals: TextSignals) -> TextColumns:
    """The derived columns of one request (float32 [n] each: rows of one [2 + K, n] block)."""
    proj = signals.projection
    emb = signals.embedding
    if proj is None or emb.ndim != 2 or emb.shape[1] != proj.dim:
        proj = None
    n = signals.tokens.shape[0]
    block = np.empty((2 + (proj.k if proj is not None else 0), n), dtype=np.float32)
    block[0] = signals.tokens
    if signals.unknown.any():
        block[1] = signals.unknown / np.maximum(signals.tokens, 1)
    else:
        block[1] = 0.0
    if proj is None:
        return {TOKEN_COUNT: block[0], UNKNOWN_TOKEN_RATE: block[1]}
    proj.apply(emb, out=block[2:])
    return dict(zip((TOKEN_COUNT, UNKNOWN_TOKEN_RATE, *proj.names), block, strict=True))


def text_data(manifest: Any, tensors: Mapping[str, Any]) -> Sequence[str] | None:
    """The data of the request's first BYTES input (a text model's texts), or None."""
    for spec in manifest.inputs:
        if spec.datatype == "BYTES":
            t = tensors.get(spec.name)
            return None if t is None else t.data
    return None


class TextMemo:
    """The derived columns of recent predictions, by (tenant, owner, model, version, hash of the texts): what
    a request that the prediction cache answers is captured with. Bounded like the prediction cache
    (entries of K+2 floats per row)."""

    def __init__(self, size: int, ttl: float, timer: Callable[[], float] = time.monotonic) -> None:
        self._cache: TTLCache[Hashable, TextColumns] | None = (
            TTLCache(size, ttl, timer=timer) if size > 0 and ttl > 0 else None)
        self._lock = threading.Lock()

    def put(self, key: Hashable, columns: TextColumns) -> None:
        if self._cache is not None:
            with self._lock:
                self._cache[key] = columns

    def get(self, key: Hashable) -> TextColumns | None:
        if self._cache is None:
            return None
        with self._lock:
            return self._cache.get(key)

    def __len__(self) -> int:
        return 0 if self._cache is None else len(self._cache)


# --- rows -----------------------------------------------------------------------------------------------


def capture_columns(manifest: Any, tensors: Mapping[str, Any], values: Mapping[str, Any],
                    text: Mapping[str, np.ndarray] | None = None,
                    ) -> tuple[dict[str, np.ndarray], dict[str, list[str]]] | None:
    """(numeric, categorical) columns of one request, or None when nothing of it is capturable. `text`: a
    text model's derived columns (`text_columns`); without them a text model's request is not captured
    (every row of a frame needs the same columns)."""
    numeric: dict[str, np.ndarray] = {}
    categorical: dict[str, list[str]] = {}
    for spec in manifest.inputs:
        t = tensors.get(spec.name)
        if t is None:
            continue
        if spec.datatype == "BYTES":
            if text is None:
                return None
            numeric.update(text)
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
                 on_failure: Callable[[Exception, int], None] | None = None,
                 text_memo_size: int = 2048, text_memo_ttl_s: float = 300.0) -> None:
        """`text_memo_size`/`text_memo_ttl_s`: the prediction cache's size and TTL (see `TextMemo`)."""
        self._put = put
        self.max_rows, self.max_age_s = max_rows, max_age_s
        self._clock = clock
        self._on_failure = on_failure
        self._buffers: dict[tuple[str, str, str], _Buffer] = {}
        self._lock = threading.Lock()
        self.text_memo = TextMemo(text_memo_size, text_memo_ttl_s)
        self.written_rows = 0
        self.failed_rows = 0

    def sampled(self, rate: float) -> bool:
        return rate >= 1.0 or (rate > 0.0 and random.random() < rate)  # noqa: S311 - sampling, not security

    def derived_text(self, manifest: Any, tensors: Mapping[str, Any], *, sampled: bool,
                     memo_scope: tuple[str, ...] | None) -> TextColumns | None:
        """A text model's derived columns of this request (None for other models): from what its prediction
        left on this thread, else (the prediction cache answered it) from the memo. `memo_scope`: the
        (tenant, owner, model, version) the prediction cache keys by, None when that cache is off (nothing
        to remember then). Columns are computed when the request is sampled, or to remember them for a later
        cache hit that may be."""
        texts = text_data(manifest, tensors)
        if texts is None:
            return None
        signals = take_text(texts)
        if memo_scope is None:
            return text_columns(signals) if signals is not None and sampled else None
        if signals is None and not sampled:
            return None
        # The texts' own hash, not the prediction cache's sha256 digest: ~10x cheaper, and a 64-bit
        # collision among a few thousand entries (~1e-13) would only mislabel a monitoring row.
        key = (*memo_scope, hash(tuple(texts)))
        if signals is None:
            return self.text_memo.get(key)
        columns = text_columns(signals)
        self.text_memo.put(key, columns)
        return columns

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
