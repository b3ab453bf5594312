"""The drift statistics against scipy (the library itself never imports it), the streaming accumulators
and the verdict rules.

Documented tolerances checked here:
- binned KS statistic D_b vs the exact ks_2samp statistic D on the full samples:
  D_b <= D <= D_b + ks_error_bound, and ks_error_bound <= 1/bins (0.01 at the default 100 bins);
- KS p-value vs ks_2samp(method="asymp") (= kstwo.sf(D, round(ne))) at the same statistic and effective
  n: |diff| <= 0.15/sqrt(ne) everywhere, <= 0.035/sqrt(ne) where p < 0.2 and <= 0.0025/sqrt(ne) where
  p < 0.05 (measured: 0.14, 0.032 and 0.002 as ne grows);
- js_distance vs scipy.spatial.distance.jensenshannon(base=2): 1e-9;
- chi_square vs scipy.stats.chi2_contingency(correction=False): 1e-6 (relative) for statistic and p.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special, stats
from scipy.spatial.distance import jensenshannon

from tenantml.monitoring import (
    OTHER,
    CategoricalAccumulator,
    NumericAccumulator,
    Thresholds,
    build_baseline,
    chi_square,
    evaluate,
    js_distance,
    ks_from_bins,
    psi,
)
from tenantml.monitoring.baseline import categorical_baseline, numeric_baseline
from tenantml.monitoring.stats import gammaincc, kolmogorov_sf, ks_exact, ks_pvalue


def _accumulate(f, values, chunks: int = 1, **kw) -> NumericAccumulator:
    acc = NumericAccumulator(f, **kw)
    for part in np.array_split(np.asarray(values), chunks):
        acc.update(part)
    return acc


# --- KS -------------------------------------------------------------------------------------------

def _cases():
    rng = np.random.default_rng(42)
    n_ref, n_cur = 20_000, 5_000
    atom = lambda n, w: np.where(rng.random(n) < w, 0.0, rng.normal(size=n))  # noqa: E731
    return {
        "normal-shift": (rng.normal(size=n_ref), rng.normal(0.15, 1, n_cur)),
        "normal-unchanged": (rng.normal(size=n_ref), rng.normal(size=n_cur)),
        "scale-change": (rng.normal(size=n_ref), rng.normal(0, 1.4, n_cur)),
        "uniform": (rng.uniform(size=n_ref), rng.uniform(0.05, 1.0, n_cur)),
        "cauchy": (rng.standard_cauchy(n_ref), rng.standard_cauchy(n_cur) + 0.2),
        "lognormal": (rng.lognormal(0, 2, n_ref), rng.lognormal(0.1, 2, n_cur)),
        "poisson-ties": (rng.poisson(4, n_ref).astype(float), rng.poisson(4.3, n_cur).astype(float)),
        "rounded-ties": (np.round(rng.normal(size=n_ref), 1), np.round(rng.normal(0.05, 1, n_cur), 1)),
        # A 40% atom in the reference that moves out of it in the window: the case where the largest
        # bin holds far more than 1/B and only the edge proportions keep the bound.
        "atom-moves": (atom(n_ref, 0.4), np.where(rng.random(n_cur) < 0.4, rng.uniform(0, 0.005, n_cur),
                                                  rng.normal(size=n_cur))),
        # The window packed around one edge of a tie-free reference.
        "packed": (np.arange(n_ref, dtype=float), rng.uniform(10_000.1, 10_299.9, n_cur)),
    }


CASES = _cases()


@pytest.mark.parametrize("bins", [100, 20])
@pytest.mark.parametrize("case", sorted(CASES))
def test_binned_ks_is_within_the_documented_bound_of_scipy(case, bins):
    ref, cur = CASES[case]
    f = numeric_baseline(case, ref, bins=bins)
    acc = _accumulate(f, cur)
    ks = ks_from_bins(f.cell_proportions(), acc.cell_counts, f.count)
    exact = stats.ks_2samp(ref, cur).statistic
    assert f.ks_error_bound <= 1 / bins + 1e-12
    assert ks.statistic <= exact + 1e-12
    assert exact <= ks.statistic + f.ks_error_bound + 1e-12, (ks.statistic, exact, f.ks_error_bound)
    assert ks.n_eff == pytest.approx(ref.size * cur.size / (ref.size + cur.size))


def test_the_bound_is_attained():
    """The window is the reference except that the values of one open interval all moved to its top:
    every CDF agrees at the edges (binned D = 0) while the exact statistic is that interval's whole mass,
    so the bound cannot be tightened, and the test above is sharp."""
    ref = np.arange(20_000, dtype=float)
    f = numeric_baseline("x", ref, bins=100)
    edges = f.edges[1:-1]
    lo, hi = edges[49], edges[50]
    cur = ref.copy()
    cur[(cur > lo) & (cur < hi)] = hi - 0.5
    ks = ks_from_bins(f.cell_proportions(), _accumulate(f, cur).cell_counts, f.count)
    exact = stats.ks_2samp(ref, cur).statistic
    assert ks.statistic == pytest.approx(0.0, abs=1e-12)
    assert exact == pytest.approx(f.ks_error_bound, abs=1e-4) and exact > 0.99 / 100


def test_the_atom_case_would_break_a_bound_on_bin_mass_without_edge_cells():
    ref, cur = CASES["atom-moves"]
    f = numeric_baseline("x", ref, bins=100)
    acc = _accumulate(f, cur)
    exact = stats.ks_2samp(ref, cur).statistic
    # KS from the half-open bins alone (edge cells merged into their bins) misses almost all of it.
    bins_only = ks_from_bins(f.proportions, acc.bin_counts, f.count).statistic
    assert exact - bins_only > 0.3
    assert exact - ks_from_bins(f.cell_proportions(), acc.cell_counts, f.count).statistic <= 0.01


@pytest.mark.parametrize("case", sorted(CASES))
def test_ks_pvalue_is_close_to_scipy_asymptotic(case):
    ref, cur = CASES[case]
    res = stats.ks_2samp(ref, cur, method="asymp")
    ne = ref.size * cur.size / (ref.size + cur.size)
    ours = ks_pvalue(float(res.statistic), ne)
    assert abs(ours - res.pvalue) <= 0.15 / math.sqrt(ne)
    if res.pvalue < 0.2:
        assert abs(ours - res.pvalue) <= 0.035 / math.sqrt(ne)
    if res.pvalue < 0.05:
        assert abs(ours - res.pvalue) <= 0.0025 / math.sqrt(ne)


@pytest.mark.parametrize("ne", [100, 200, 1000, 5000, 20_000])
def test_ks_pvalue_tolerance_over_the_whole_range(ne):
    d = np.linspace(0.01, 2.5, 150) / math.sqrt(ne)       # p from ~1 down to ~1e-5
    ours = np.array([ks_pvalue(x, ne) for x in d])
    ref = stats.kstwo.sf(d, round(ne))
    err = np.abs(ours - ref)
    assert err.max() <= 0.15 / math.sqrt(ne)
    assert err[ref < 0.2].max() <= 0.035 / math.sqrt(ne)
    assert err[ref < 0.05].max() <= 0.0025 / math.sqrt(ne)


def test_kolmogorov_series_matches_scipy():
    lam = np.concatenate([np.linspace(1e-3, 6, 3000), [1.18 - 1e-12, 1.18]])
    ours = np.array([kolmogorov_sf(x) for x in lam])
    np.testing.assert_allclose(ours, special.kolmogorov(lam), atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("case", ["normal-shift", "poisson-ties", "cauchy"])
def test_exact_ks_on_samples_matches_scipy(case):
    ref, cur = CASES[case]
    assert ks_exact(ref[:3000], cur[:1000]).statistic == pytest.approx(
        stats.ks_2samp(ref[:3000], cur[:1000]).statistic, abs=1e-12)


# --- JS, chi-square, PSI --------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(20))
def test_js_distance_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 60))
    p = rng.random(k) * (rng.random(k) > 0.2)      # some empty bins
    q = rng.integers(0, 1000, k).astype(float)
    p[0] += 0.1
    q[-1] += 1
    assert js_distance(p, q) == pytest.approx(jensenshannon(p, q, base=2), abs=1e-9)


def test_js_distance_extremes():
    assert js_distance([1, 2, 3], [2, 4, 6]) == pytest.approx(0.0, abs=1e-9)
    assert js_distance([1, 0], [0, 1]) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_chi_square_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 52))
    scale = [5, 100, 100_000][seed % 3]
    ref = rng.integers(0, scale, k) + 1
    cur = rng.integers(0, scale, k) + (rng.random(k) < 0.5)
    ours = chi_square(ref, cur)
    stat, p, dof, _ = stats.chi2_contingency(np.vstack([ref, cur]), correction=False)
    assert ours.dof == dof
    assert ours.statistic == pytest.approx(stat, rel=1e-6)
    assert ours.pvalue == pytest.approx(p, rel=1e-6, abs=1e-300)


def test_chi_square_drops_columns_empty_in_both_rows_and_degenerate_tables():
    ours = chi_square([10, 0, 20, 5], [12, 0, 9, 0])
    stat, p, dof, _ = stats.chi2_contingency(np.array([[10, 20, 5], [12, 9, 0]]), correction=False)
    assert (ours.statistic, ours.dof) == (pytest.approx(stat, rel=1e-6), dof)
    assert ours.pvalue == pytest.approx(p, rel=1e-6)
    assert chi_square([5, 0], [7, 0]) == (0.0, 0, 1.0)
    assert chi_square([5, 3], [0, 0]) == (0.0, 0, 1.0)


@pytest.mark.parametrize("seed", range(10))
def test_incomplete_gamma_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    for a, x in zip(rng.uniform(0.5, 400, 200), rng.uniform(0, 3, 200), strict=True):
        x *= a
        expected = special.gammaincc(a, x)
        assert gammaincc(a, x) == pytest.approx(expected, rel=1e-10, abs=1e-300)


def test_psi_identical_is_zero_and_a_clear_shift_is_above_02():
    rng = np.random.default_rng(0)
    f = numeric_baseline("x", rng.normal(size=50_000), bins=10)
    same = _accumulate(f, rng.normal(size=50_000)).bin_counts
    shifted = _accumulate(f, rng.normal(1.0, 1, 50_000)).bin_counts
    assert psi(f.proportions, np.asarray(f.proportions) * 1234) == pytest.approx(0.0, abs=1e-12)
    assert psi(f.proportions, same) < 0.01
    assert psi(f.proportions, shifted) >= 0.2


def test_psi_smoothing_keeps_empty_bins_finite():
    value = psi([0.5, 0.5, 0.0], [0, 10, 10])
    assert math.isfinite(value) and value > 1
    # eps is what an empty bin is worth: a smaller eps means a larger PSI.
    assert psi([0.5, 0.5, 0.0], [0, 10, 10], eps=1e-6) > value


# --- streaming ------------------------------------------------------------------------------------

def test_numeric_chunks_give_identical_counts_and_sample():
    rng = np.random.default_rng(1)
    f = numeric_baseline("x", rng.normal(size=10_000), ks_sample=500)
    window = rng.normal(0.2, 1.1, 20_000)
    window[rng.integers(0, window.size, 300)] = np.nan
    window[rng.integers(0, window.size, 30)] = np.inf
    accs = [_accumulate(f, window, chunks=c) for c in (1, 10, 1000)]
    for acc in accs[1:]:
        np.testing.assert_array_equal(acc.cell_counts, accs[0].cell_counts)
        np.testing.assert_array_equal(acc.sample, accs[0].sample)
        assert (acc.n, acc.invalid) == (accs[0].n, accs[0].invalid)
        assert (acc.min, acc.max) == (accs[0].min, accs[0].max)
        assert acc.mean == pytest.approx(accs[0].mean, rel=1e-12)
        assert acc.std == pytest.approx(accs[0].std, rel=1e-12)
    finite = window[np.isfinite(window)]
    assert accs[0].mean == pytest.approx(finite.mean(), rel=1e-12)
    assert accs[0].std == pytest.approx(finite.std(), rel=1e-12)
    assert accs[0].invalid == np.count_nonzero(~np.isfinite(window))
    assert len(accs[0].sample) == 500 and np.isin(accs[0].sample, finite).all()


def test_moments_do_not_cancel_with_a_large_mean():
    f = numeric_baseline("x", np.arange(1000.0))
    values = 1e9 + np.random.default_rng(0).normal(0, 1, 100_000)
    acc = _accumulate(f, values, chunks=100)
    assert acc.std == pytest.approx(values.std(), rel=1e-6)


def test_sample_is_uniform_over_the_window():
    f = numeric_baseline("x", np.arange(1000.0))
    acc = _accumulate(f, np.arange(100_000.0), chunks=37, sample_size=2000)
    # A uniform sample of 0..99999: its KS distance to the uniform distribution is small.
    assert stats.kstest(acc.sample, stats.uniform(0, 100_000).cdf).pvalue > 0.01


def test_accumulator_memory_does_not_grow_with_rows():
    rng = np.random.default_rng(2)
    f = numeric_baseline("x", rng.normal(size=5_000))
    acc = NumericAccumulator(f)
    acc.update(rng.normal(size=5_000))
    size = acc.nbytes
    for _ in range(50):
        acc.update(rng.normal(size=20_000))
    assert acc.n == 1_005_000
    assert acc.nbytes == size
    cats = CategoricalAccumulator(categorical_baseline("c", ["a", "b", "c"] * 10), max_unseen=5)
    cats.update(np.array(["a", "x0"]))
    size = cats.nbytes
    for i in range(20):
        cats.update(np.array([f"x{j}" for j in range(i * 100, i * 100 + 100)] + ["a"] * 100))
    assert cats.nbytes == size and len(cats.unseen) == 5


def test_categorical_chunks_unseen_and_invalid():
    f = categorical_baseline("c", ["a"] * 50 + ["b"] * 30 + ["c"] * 20)
    rng = np.random.default_rng(3)
    window = rng.choice(["a", "b", "c", "new1", "new2"], 10_000).astype(object)
    window[:7] = None
    window[7:10] = math.nan
    counts = []
    for chunks in (1, 10, 1000):
        acc = CategoricalAccumulator(f)
        for part in np.array_split(window, chunks):
            acc.update(part)
        counts.append(acc.counts)
        assert acc.invalid == 10
        assert set(acc.unseen) == {"new1", "new2"}
        assert acc.counts[OTHER] == sum(acc.unseen.values())
    assert counts[0] == counts[1] == counts[2]
    assert sum(counts[0].values()) == 9_990
    # Plain lists work the same way (None is not the category "None").
    acc = CategoricalAccumulator(f)
    acc.update(["a", None, "b", math.nan])
    assert acc.invalid == 2 and acc.counts["a"] == 1 and acc.counts["b"] == 1


# --- verdicts -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference():
    rng = np.random.default_rng(10)
    n = 20_000
    return {f"x{i}": rng.normal(size=n) for i in range(4)}


@pytest.fixture(scope="module")
def baseline(reference):
    return build_baseline(reference)


def _window(baseline, columns, chunks: int = 4):
    accs = {}
    for name, values in columns.items():
        accs[name] = _accumulate(baseline.numeric[name], values, chunks=chunks)
    return accs


def test_an_unchanged_window_of_100k_rows_does_not_drift(baseline):
    rng = np.random.default_rng(11)
    result = evaluate(baseline, _window(baseline, {n: rng.normal(size=100_000) for n in baseline.numeric}))
    assert result.verdict == "no_drift" and not result.drifted
    assert all(f.verdict == "no_drift" for f in result.features)


def test_a_significant_but_tiny_shift_does_not_drift_thanks_to_the_effect_floor(baseline):
    rng = np.random.default_rng(12)
    window = {n: rng.normal(0.04, 1, 100_000) for n in baseline.numeric}
    result = evaluate(baseline, _window(baseline, window))
    for f in result.features:
        assert f.ks_pvalue is not None and f.ks_pvalue < 0.05      # the test alone would flag it
        assert f.ks_statistic is not None and f.ks_statistic < 0.1
        assert f.verdict == "no_drift", f.reasons
    assert result.verdict == "no_drift"
    # Without the floor, the same window drifts: the floor is what holds it.
    assert evaluate(baseline, _window(baseline, window), Thresholds(ks_statistic=0)).verdict == "drift"


def test_a_shifted_window_drifts(baseline):
    rng = np.random.default_rng(13)
    window = {n: rng.normal(0.5, 1, 100_000) for n in baseline.numeric}
    result = evaluate(baseline, _window(baseline, window))
    assert result.verdict == "drift" and result.n_drifted == 4
    f = result.features[0]
    assert f.ks_method == "binned" and f.ks_error_bound is not None and f.ks_error_bound <= 0.01
    assert f.psi is not None and f.psi >= 0.2
    assert any(r.startswith("ks ") for r in f.reasons) and any(r.startswith("psi ") for r in f.reasons)


def test_under_min_samples_is_insufficient_data_never_no_drift(baseline):
    rng = np.random.default_rng(14)
    small = {n: rng.normal(3.0, 1, 150) for n in baseline.numeric}    # even a huge shift
    result = evaluate(baseline, _window(baseline, small))
    assert result.verdict == "insufficient_data" and not result.drifted
    assert all(f.verdict == "insufficient_data" and not f.drifted for f in result.features)
    assert result.features[0].ks_statistic is not None        # still reported, for the record
    missing = evaluate(baseline, {})
    assert missing.verdict == "insufficient_data"
    assert missing.features[0].reasons == ["no values in the window"]


def test_small_unchanged_windows_rarely_drift():
    """At min_samples, PSI and JS carry a sampling bias of order bins/n (JS over 10 bins averages ~0.09
    on 200 unchanged rows, PSI over 51 categories ~0.37): without the significance gate a large share
    of these windows would drift."""
    rng = np.random.default_rng(15)
    cats = [f"c{i}" for i in range(60)]
    b = build_baseline({"x": rng.normal(size=20_000)}, {"c": rng.choice(cats, 20_000).tolist()})
    drifted = 0
    ungated = 0
    for _ in range(100):
        accs = {"x": _accumulate(b.numeric["x"], rng.normal(size=200)),
                "c": CategoricalAccumulator(b.categorical["c"])}
        accs["c"].update(rng.choice(cats, 200))
        result = evaluate(b, accs)
        drifted += sum(f.drifted for f in result.features)
        ungated += sum((f.js or 0) >= 0.1 or (f.psi or 0) >= 0.2 for f in result.features)
    # Of 200 feature-windows: about the 5% significance level (a numeric feature has two tests, KS and
    # chi-square, so a little more: ~6% over 1000 windows, ~4.5% for the categorical one).
    assert drifted <= 20
    assert ungated >= 60          # what the thresholds alone would have flagged


def test_nan_and_inf_are_counted_and_excluded(baseline):
    rng = np.random.default_rng(16)
    clean = rng.normal(size=50_000)
    dirty = np.concatenate([clean, [np.nan] * 500, [np.inf] * 100, [-np.inf] * 100])
    rng.shuffle(dirty)
    f = baseline.numeric["x0"]
    a, b = _accumulate(f, clean), _accumulate(f, dirty)
    assert b.invalid == 700 and b.n == clean.size
    np.testing.assert_array_equal(a.cell_counts, b.cell_counts)
    ra = evaluate(baseline, {"x0": a}).features[0]
    rb = evaluate(baseline, {"x0": b}).features[0]
    for field in ("psi", "js", "ks_statistic", "ks_pvalue", "chi2_statistic", "chi2_pvalue"):
        assert getattr(ra, field) == getattr(rb, field), field
    assert rb.invalid == 700 and rb.verdict == "no_drift"      # 1.4% invalid: under invalid_share


def test_a_mostly_invalid_window_is_drift_not_insufficient_data(baseline):
    values = np.full(1000, np.nan)
    values[:100] = 0.0
    f = evaluate(baseline, {"x0": _accumulate(baseline.numeric["x0"], values)}).features[0]
    assert f.verdict == "drift" and "invalid" in f.reasons[0]


@pytest.mark.parametrize(("shifted", "missing", "share", "expected"), [
    (2, 0, 0.5, "drift"),                 # half the features
    (1, 0, 0.5, "no_drift"),
    (1, 1, 0.5, "insufficient_data"),     # the missing feature could make it half
    (1, 2, 0.5, "insufficient_data"),
    (2, 0, 0.75, "no_drift"),             # configurable share
    (3, 0, 0.75, "drift"),
    (0, 4, 0.5, "insufficient_data"),
])
def test_dataset_verdict(baseline, shifted, missing, share, expected):
    rng = np.random.default_rng(17)
    names = list(baseline.numeric)
    columns = {}
    for i, name in enumerate(names):
        if i < shifted:
            columns[name] = rng.normal(1.0, 1, 5_000)
        elif i < shifted + missing:
            continue
        else:
            columns[name] = rng.normal(size=5_000)
    result = evaluate(baseline, _window(baseline, columns), Thresholds(dataset_share=share))
    assert result.n_drifted == shifted
    assert result.verdict == expected
    assert result.drifted == (expected == "drift")


def test_coarse_bins_fall_back_to_the_exact_ks_on_samples():
    rng = np.random.default_rng(18)
    b = build_baseline({"x": rng.normal(size=20_000)}, bins=10, ks_sample=1000)
    acc = _accumulate(b.numeric["x"], rng.normal(0.3, 1, 30_000), chunks=7)
    f = evaluate(b, {"x": acc}).features[0]
    assert f.ks_method == "sample" and f.ks_error_bound is None
    expected = stats.ks_2samp(b.numeric["x"].sample, acc.sample)
    assert f.ks_statistic == pytest.approx(expected.statistic, abs=1e-12)
    assert f.verdict == "drift"


def test_categorical_drift_and_prediction_drift():
    rng = np.random.default_rng(19)
    b = build_baseline({}, {"color": rng.choice(["r", "g", "b"], 10_000, p=[0.5, 0.3, 0.2]).tolist()},
                       predictions=rng.choice(["yes", "no"], 10_000, p=[0.7, 0.3]))
    same = CategoricalAccumulator(b.categorical["color"])
    same.update(rng.choice(["r", "g", "b"], 50_000, p=[0.5, 0.3, 0.2]))
    moved = CategoricalAccumulator(b.categorical["color"])
    moved.update(rng.choice(["r", "g", "b", "z"], 50_000, p=[0.2, 0.3, 0.2, 0.3]))
    assert b.prediction is not None and b.prediction.kind == "categorical"
    pred = CategoricalAccumulator(b.prediction)
    pred.update(rng.choice(["yes", "no"], 5_000, p=[0.3, 0.7]))
    ok = evaluate(b, {"color": same})
    assert ok.verdict == "no_drift" and ok.features[0].ks_statistic is None
    result = evaluate(b, {"color": moved}, prediction=pred)
    f = result.features[0]
    assert f.verdict == "drift" and f.psi is not None and f.psi >= 0.2 and f.chi2_dof == 3
    assert result.prediction is not None and result.prediction.verdict == "drift"
    assert result.n_features == 1      # predictions are reported beside the features


def test_mismatched_accumulators_are_refused(baseline):
    other = numeric_baseline("x0", np.arange(100.0))
    with pytest.raises(ValueError, match="different baseline"):
        evaluate(baseline, {"x0": NumericAccumulator(other)})
    with pytest.raises(ValueError, match="does not have"):
        evaluate(baseline, {"nope": NumericAccumulator(baseline.numeric["x0"])})
    with pytest.raises(ValueError, match="no prediction"):
        evaluate(baseline, {}, prediction=NumericAccumulator(baseline.numeric["x0"]))


def test_results_serialise(baseline):
    rng = np.random.default_rng(20)
    result = evaluate(baseline, _window(baseline, {"x0": rng.normal(size=1000)}))
    assert type(result).model_validate_json(result.model_dump_json()) == result


def test_the_library_imports_neither_scipy_nor_boto3():
    import subprocess
    import sys

    code = ("import sys, tenantml.monitoring; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('scipy', 'boto3', 'botocore')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("seed", range(5))
def test_cell_counts_from_the_sorted_chunk_equal_searching_every_value(seed):
    from tenantml.monitoring.stats import cell_counts

    rng = np.random.default_rng(seed)
    edges = np.unique(np.round(rng.normal(size=40), 1))
    x = np.concatenate([np.round(rng.normal(size=5000), 1), edges[:5], [-9.0, 9.0]])  # atoms on edges too
    expected = np.bincount(np.searchsorted(edges, x, side="left") + np.searchsorted(edges, x, side="right"),
                           minlength=2 * edges.size + 1)
    np.testing.assert_array_equal(cell_counts(edges, np.sort(x)), expected)
    assert cell_counts(np.empty(0), np.sort(x)).tolist() == [x.size]
