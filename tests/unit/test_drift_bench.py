"""The drift benchmark's pieces at a small size: the synthetic data (shapes, dtypes, reproducible, the
shifted features really shift) and the tenantml methods run in-process with the right verdicts. No timing
assertions and no Evidently: `tenantml bench drift` is run by hand."""

from __future__ import annotations

import numpy as np
import pytest

from tenantml.monitoring import bench
from tenantml.monitoring.capture import decode_frame
from tenantml.monitoring.stats import js_distance, ks_exact

ROWS = 20_000


def test_reference_and_window_shapes_and_dtypes():
    ref = bench.reference(1_000, seed=3)
    assert len(bench.NUMERIC) == 20 and len(bench.CATEGORICAL) == 5
    assert ref.rows == 1_000
    assert all(x.dtype == np.float32 and x.shape == (1_000,) for x in ref.numeric.values())
    for name, codes in ref.categorical.items():
        assert codes.dtype == np.int32 and codes.shape == (1_000,)
        assert 3 <= len(bench.categories(name)) <= 20
        assert codes.min() >= 0 and codes.max() < len(bench.categories(name))
    chunks = list(bench.window_chunks(bench.CHUNK_ROWS + 10, seed=3))
    assert [c.rows for c in chunks] == [bench.CHUNK_ROWS, 10]
    assert len(bench.SHIFTED) == 6 and bench.SHIFTED <= set(bench.NUMERIC) | set(bench.CATEGORICAL)


def test_generation_is_deterministic_and_chunked_like_the_whole_window():
    a, b = bench.reference(2_000, seed=7), bench.reference(2_000, seed=7)
    assert all(np.array_equal(a.numeric[n], b.numeric[n]) for n in bench.NUMERIC)
    assert all(np.array_equal(a.categorical[n], b.categorical[n]) for n in bench.CATEGORICAL)
    assert not np.array_equal(a.numeric["n00_normal"], bench.reference(2_000, seed=8).numeric["n00_normal"])
    rows = bench.CHUNK_ROWS + 1_000
    whole = bench.window(rows, seed=7)
    chunks = list(bench.window_chunks(rows, seed=7))
    for n in bench.NUMERIC:
        assert np.array_equal(whole.numeric[n], np.concatenate([c.numeric[n] for c in chunks]))
    for n in bench.CATEGORICAL:
        assert np.array_equal(whole.categorical[n], np.concatenate([c.categorical[n] for c in chunks]))


def test_shifted_features_shift_and_the_others_do_not():
    ref, cur = bench.reference(ROWS, seed=1), bench.window(ROWS, seed=1)
    for n in bench.NUMERIC:
        d = ks_exact(ref.numeric[n], cur.numeric[n]).statistic
        assert (d >= 0.12) if n in bench.SHIFTED else (d < 0.03), (n, d)
    assert np.count_nonzero(np.diff(np.sort(ref.numeric["n11_poisson"]))) < 20      # integer-valued: ties
    for n in bench.CATEGORICAL:
        k = len(bench.categories(n))
        js = js_distance(np.bincount(ref.categorical[n], minlength=k),
                         np.bincount(cur.categorical[n], minlength=k))
        assert (js >= 0.15) if n in bench.SHIFTED else (js < 0.03), (n, js)


def test_tenantml_arrays_flags_exactly_the_shifted_features():
    out = bench.run_method("tenantml-arrays", ROWS, ROWS, seed=2)
    assert out["sane"] and out["drifted"] == sorted(bench.SHIFTED)
    assert out["seconds"] > 0 and out["baseline_seconds"] > 0 and out["peak_rss_mb"] > 0


def test_tenantml_frames_reads_what_the_capture_writes_and_agrees(tmp_path):
    rows = 3 * bench.FRAME_ROWS // 2 + 7
    setup = bench.write_frames(tmp_path, rows, ROWS, seed=2)
    assert setup["frames"] == 2
    first = decode_frame((tmp_path / bench.FRAMES_DIR / "000000.tmlc").read_bytes())
    assert first.rows == bench.FRAME_ROWS and (first.tenant, first.model, first.version) == bench.OWNER
    assert set(first.numeric) == set(bench.NUMERIC) and set(first.categorical) == set(bench.CATEGORICAL)
    assert first.request_ids.size == first.times_ms.size == bench.FRAME_ROWS
    out = bench.run_method("tenantml-frames", rows, ROWS, seed=2, directory=tmp_path)
    assert out["window_rows"] == rows and out["frames"] == 2
    assert out["sane"] and out["drifted"] == sorted(bench.SHIFTED)
    arrays = bench.run_method("tenantml-arrays", rows, ROWS, seed=2)
    assert arrays["drifted"] == out["drifted"] and arrays["verdict"] == out["verdict"]


def test_parse_rows_and_render():
    assert bench.parse_rows("100000, 1M,10m,250k,2_000") == [100_000, 1_000_000, 10_000_000, 250_000, 2_000]
    with pytest.raises(ValueError):
        bench.parse_rows("0")
    shifted = sorted(bench.SHIFTED)
    results = [
        {"method": "tenantml-frames", "rows": 1_000_000, "reference_rows": 100_000, "seconds": 2.0,
         "peak_rss_mb": 100.0, "drifted": shifted, "sane": True},
        {"method": "evidently", "rows": 1_000_000, "reference_rows": 100_000, "seconds": 80.0,
         "peak_rss_mb": 1400.0, "drifted": shifted, "sane": True,
         "evidently": "0.7.x", "picked": {"n00_normal": ["Wasserstein distance (normed)"],
                                          "c0_3": ["Jensen-Shannon distance"]}},
        {"method": "scipy", "rows": 1_000_000, "error": "exit 1: boom"},
    ]
    text = bench.render(results, {})
    assert "40.0x throughput (met" in text and "peak 0.071 of Evidently's (met" in text
    assert "Wasserstein distance (normed)" in text and "ERROR exit 1: boom" in text
