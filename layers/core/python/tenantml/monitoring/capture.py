"""Capture frames: the format captured traffic is stored in, and what the drift worker streams.

Why not JSON lines: parsing 1M rows of JSON takes 11-33 s on a 2-core machine before any statistic runs,
and serialising a 384-float embedding as JSON costs ~400 us on the response path. A frame is columnar and
binary: a small JSON header, then one contiguous little-endian block per column, so writing a batch is a
few `tobytes()` calls and reading a column is one zero-copy `np.frombuffer`. Numeric features are
float32; categorical columns are int32 codes plus the frame's own category list; request ids are
fixed-width ASCII (for the ground-truth join); times are int64 epoch milliseconds.

    b"TMLCAP1\\n" | uint32 LE header length | header JSON (UTF-8) | column blocks, in header order

Keys carry the partitioning, the same locally and on AWS:
`capture/tenant=<t>/model=<m>/version=<v>/date=YYYY-MM-DD/hour=HH/<epoch ms>-<uuid>.tmlc`.

A frame that does not parse (bad magic, header, offsets or sizes) raises CorruptFrame: the drift job that
meets it fails, so its message is retried and then lands in the DLQ, never silently skipped.
"""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

MAGIC = b"TMLCAP1\n"
PREFIX = "capture"
SUFFIX = ".tmlc"
PREDICTION = "prediction"   # the column holding the model's prediction (labels or a numeric score)
# The derived features of a text input (tenantml.serving.capture writes them, baseline.json describes them):
TOKEN_COUNT = "token_count"  # noqa: S105 - tokens of the text before truncation, special tokens excluded
UNKNOWN_TOKEN_RATE = "unknown_token_rate"  # noqa: S105 - share of those tokens that are the unknown token
EMBEDDING_PC = "embedding_pc"               # + 1..K: the embedding on the reference's principal directions
ID_WIDTH = 36           # a uuid4 string; longer request ids are truncated for the join
_HEADER = struct.Struct("<I")
_MAX_HEADER = 1 << 20
_KINDS = {"numeric": "<f4", "categorical": "<i4", "id": f"S{ID_WIDTH}", "time": "<i8"}


class CorruptFrame(ValueError):
    """A capture object that is not a valid frame."""


@dataclass(frozen=True)
class Frame:
    """One decoded frame: `numeric` name -> float32 [rows], `categorical` name -> (codes int32 [rows],
    categories), plus request ids and times."""

    tenant: str
    model: str
    version: str
    rows: int
    numeric: Mapping[str, np.ndarray]
    categorical: Mapping[str, tuple[np.ndarray, tuple[str, ...]]]
    request_ids: np.ndarray
    times_ms: np.ndarray


def embedding_pc(k: int) -> str:
    """The column of the embedding's projection on the k-th principal direction (1-based)."""
    return f"{EMBEDDING_PC}{k}"


def unknown_rate(tokens: np.ndarray, unknown: np.ndarray) -> np.ndarray:
    """unknown / tokens per text as float32, 0 for a text without tokens: one definition for the capture and
    for the baseline."""
    t = np.asarray(tokens, dtype=np.float32)
    return np.asarray(unknown, dtype=np.float32) / np.maximum(t, np.float32(1))


def frame_key(tenant: str, model: str, version: str, at: datetime, token: str | None = None) -> str:
    at = at.astimezone(UTC)
    return (f"{partition_prefix(tenant, model, version)}date={at:%Y-%m-%d}/hour={at:%H}/"
            f"{int(at.timestamp() * 1000)}-{token or uuid.uuid4().hex}{SUFFIX}")


def partition_prefix(tenant: str, model: str, version: str) -> str:
    return f"{PREFIX}/tenant={tenant}/model={model}/version={version}/"


def encode_frame(tenant: str, model: str, version: str, *, numeric: Mapping[str, np.ndarray],
                 categorical: Mapping[str, Sequence[str] | np.ndarray] | None = None,
                 request_ids: Sequence[str] | None = None, times_ms: np.ndarray | None = None) -> bytes:
    """One frame from columns of equal length (numeric as any float array, categorical as strings)."""
    columns: list[tuple[dict[str, Any], bytes]] = []
    rows = None

    def add(name: str, kind: str, array: np.ndarray, **extra: Any) -> None:
        nonlocal rows
        if array.ndim != 1:
            raise ValueError(f"column {name}: expected one value per row, got shape {array.shape}")
        if rows is None:
            rows = len(array)
        elif len(array) != rows:
            raise ValueError(f"column {name} has {len(array)} rows, expected {rows}")
        data = np.ascontiguousarray(array, dtype=_KINDS[kind]).tobytes()
        columns.append(({"name": name, "kind": kind, **extra}, data))

    for name, values in numeric.items():
        add(name, "numeric", np.asarray(values, dtype=np.float32))
    for name, values in (categorical or {}).items():
        cats, codes = np.unique(np.asarray(values, dtype=object).astype(str), return_inverse=True)
        add(name, "categorical", codes.astype(np.int32), categories=[str(c) for c in cats])
    if request_ids is not None:
        ids = [str(r)[:ID_WIDTH].encode("ascii", "replace") for r in request_ids]
        add("__request_id", "id", np.array(ids, dtype=f"S{ID_WIDTH}"))
    if times_ms is not None:
        add("__time_ms", "time", np.asarray(times_ms, dtype=np.int64))
    offset, header_cols, blocks = 0, [], []
    for meta, data in columns:
        header_cols.append({**meta, "offset": offset, "nbytes": len(data)})
        blocks.append(data)
        offset += len(data)
    header = json.dumps({"tenant": tenant, "model": model, "version": version, "rows": rows or 0,
                         "columns": header_cols}, separators=(",", ":")).encode()
    return b"".join([MAGIC, _HEADER.pack(len(header)), header, *blocks])


def decode_frame(data: bytes | memoryview) -> Frame:
    """The frame's columns, zero-copy views of `data`. CorruptFrame for anything malformed."""
    view = memoryview(data)
    if bytes(view[:len(MAGIC)]) != MAGIC:
        raise CorruptFrame("not a capture frame (bad magic)")
    start = len(MAGIC) + _HEADER.size
    if len(view) < start:
        raise CorruptFrame("truncated frame header")
    (size,) = _HEADER.unpack(view[len(MAGIC):start])
    if size > _MAX_HEADER or start + size > len(view):
        raise CorruptFrame("frame header length out of range")
    try:
        header = json.loads(bytes(view[start:start + size]))
        rows = int(header["rows"])
        columns = list(header["columns"])
        owner = (str(header["tenant"]), str(header["model"]), str(header["version"]))
    except (ValueError, KeyError, TypeError):
        raise CorruptFrame("frame header is not valid") from None
    body = view[start + size:]
    numeric: dict[str, np.ndarray] = {}
    categorical: dict[str, tuple[np.ndarray, tuple[str, ...]]] = {}
    ids = np.empty(0, f"S{ID_WIDTH}")
    times = np.empty(0, np.int64)
    for col in columns:
        try:
            kind, name, offset, nbytes = col["kind"], str(col["name"]), int(col["offset"]), int(col["nbytes"])
            dtype = np.dtype(_KINDS[kind])
        except (KeyError, TypeError, ValueError):
            raise CorruptFrame("frame column description is not valid") from None
        if offset < 0 or offset + nbytes > len(body) or nbytes != rows * dtype.itemsize:
            raise CorruptFrame(f"column {name[:64]}: size or offset does not match {rows} rows")
        array = np.frombuffer(body, dtype=dtype, count=rows, offset=offset)
        if kind == "numeric":
            numeric[name] = array
        elif kind == "categorical":
            cats = tuple(str(c) for c in col.get("categories") or ())
            if rows and (array.min() < 0 or array.max() >= len(cats)):
                raise CorruptFrame(f"column {name[:64]}: category code out of range")
            categorical[name] = (array, cats)
        elif kind == "id":
            ids = array
        else:
            times = array
    return Frame(*owner, rows=rows, numeric=numeric, categorical=categorical, request_ids=ids,
                 times_ms=times)


@dataclass
class FrameBuilder:
    """Rows of one (tenant, model, version), appended per request and encoded as one frame: what the
    inference function buffers between flushes."""

    tenant: str
    model: str
    version: str
    numeric: dict[str, list[np.ndarray]] = field(default_factory=dict)
    categorical: dict[str, list[str]] = field(default_factory=dict)
    request_ids: list[str] = field(default_factory=list)
    times_ms: list[int] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.request_ids)

    def add(self, request_id: str, time_ms: int, numeric: Mapping[str, np.ndarray],
            categorical: Mapping[str, Sequence[str]] | None = None) -> None:
        """One request's rows: every numeric column of the same length n, categorical too."""
        n = len(next(iter(numeric.values()))) if numeric else len(next(iter((categorical or {}).values())))
        for name, values in numeric.items():
            self.numeric.setdefault(name, []).append(np.asarray(values, np.float32).reshape(-1))
        for name, labels in (categorical or {}).items():
            self.categorical.setdefault(name, []).extend(str(v) for v in labels)
        self.request_ids.extend([request_id] * n)
        self.times_ms.extend([time_ms] * n)

    def encode(self) -> bytes:
        return encode_frame(self.tenant, self.model, self.version,
                            numeric={k: np.concatenate(v) for k, v in self.numeric.items()},
                            categorical=self.categorical, request_ids=self.request_ids,
                            times_ms=np.asarray(self.times_ms, np.int64))
