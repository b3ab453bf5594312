"""Capture frames: what the inference function writes and the drift worker streams."""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime

import numpy as np
import pytest

from tenantml.monitoring.capture import (
    MAGIC,
    CorruptFrame,
    FrameBuilder,
    decode_frame,
    encode_frame,
    frame_key,
)


def sample(rows: int = 1000, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_frame("acme", "project-risk", "3",
                        numeric={"velocity": rng.normal(size=rows), "team_size": rng.integers(1, 9, rows)},
                        categorical={"risk": rng.choice(["low", "medium", "high"], rows)},
                        request_ids=[f"req-{i:08d}" for i in range(rows)],
                        times_ms=np.arange(rows, dtype=np.int64) + 1_796_000_000_000)


def test_round_trip_is_exact_and_zero_copy():
    rng = np.random.default_rng(0)
    data = sample()
    frame = decode_frame(data)
    assert (frame.tenant, frame.model, frame.version, frame.rows) == ("acme", "project-risk", "3", 1000)
    np.testing.assert_array_equal(frame.numeric["velocity"], rng.normal(size=1000).astype(np.float32))
    codes, cats = frame.categorical["risk"]
    assert set(cats) == {"low", "medium", "high"} and codes.dtype == np.int32
    assert frame.request_ids[7] == b"req-00000007" and frame.times_ms[0] == 1_796_000_000_000
    assert not frame.numeric["velocity"].flags.owndata        # a view of the object's bytes


def test_a_frame_is_compact():
    # 2 float32 + 1 int32 + 36-byte id + int64 per row, plus a small header.
    assert len(sample(10_000)) < 10_000 * (4 + 4 + 4 + 36 + 8) + 1024


def test_the_builder_appends_requests_and_encodes_one_frame():
    b = FrameBuilder("acme", "work-item-classifier", "1")
    b.add("r1", 1000, {"tokens": np.array([12, 40])}, {"category": ["bug", "task"]})
    b.add("r2", 2000, {"tokens": np.array([7])}, {"category": ["bug"]})
    frame = decode_frame(b.encode())
    assert frame.rows == 3 and frame.numeric["tokens"].tolist() == [12, 40, 7]
    codes, cats = frame.categorical["category"]
    assert [cats[c] for c in codes] == ["bug", "task", "bug"]
    assert frame.request_ids.tolist() == [b"r1", b"r1", b"r2"]
    assert frame.times_ms.tolist() == [1000, 1000, 2000]


def test_keys_are_partitioned_by_tenant_model_version_date_and_hour():
    key = frame_key("acme", "m", "2", datetime(2026, 11, 30, 17, 5, tzinfo=UTC), token="abc")
    assert key == "capture/tenant=acme/model=m/version=2/date=2026-11-30/hour=17/1796058300000-abc.tmlc"


def _with_header(data: bytes, patch) -> bytes:
    (size,) = struct.unpack("<I", data[len(MAGIC):len(MAGIC) + 4])
    start = len(MAGIC) + 4
    header = json.loads(data[start:start + size])
    patch(header)
    new = json.dumps(header).encode()
    return MAGIC + struct.pack("<I", len(new)) + new + data[start + size:]


@pytest.mark.parametrize(("corrupt", "message"), [
    (lambda d: b"JUNK" + d[4:], "bad magic"),
    (lambda d: d[:10], "truncated"),
    (lambda d: d[:len(MAGIC)] + struct.pack("<I", 1 << 30) + d[len(MAGIC) + 4:], "out of range"),
    (lambda d: _with_header(d, lambda h: h.update(rows=2000)), "does not match 2000 rows"),
    (lambda d: _with_header(d, lambda h: h["columns"][0].update(offset=10**9)), "does not match"),
    (lambda d: _with_header(d, lambda h: h["columns"][0].update(kind="float128")), "not valid"),
    (lambda d: _with_header(d, lambda h: h["columns"][2].update(categories=["low"])), "code out of range"),
    (lambda d: _with_header(d, lambda h: h.pop("rows")), "header is not valid"),
    (lambda d: d[:-5], "does not match"),
])
def test_corrupt_frames_are_refused(corrupt, message):
    with pytest.raises(CorruptFrame, match=message):
        decode_frame(corrupt(sample(100)))


def test_columns_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="has 2 rows, expected 3"):
        encode_frame("acme", "m", "1", numeric={"a": np.zeros(3), "b": np.zeros(2)})
