"""The rollout A/B statistics against scipy (the library itself never imports it) and simulation.

Documented tolerances checked here:
- norm_ppf vs scipy.stats.norm.ppf on 1e-10..1-1e-10: 1e-12 relative (measured ~1e-15);
- two-proportion z and p-value vs the same pooled test by hand with scipy.stats.norm.sf: 1e-12; the
  p-value vs scipy.stats.chi2_contingency(correction=False) on the 2x2 table: chi2 = z^2 (1e-9 relative),
  p-values within 1e-9;
- sample_size_per_arm vs the closed form computed here with norm.ppf: equal; the empirical power of the
  pooled z-test at that n over 2000 seeded experiments: within +-0.04 of the target;
- LatencyHistogram.percentile vs numpy.percentile(method="inverted_cdf") of the raw values:
  x < estimate < 1.05 x (1.05 x (1 + 1e-12) for rounding of the edges).
"""

from __future__ import annotations

import json
import math
from decimal import Decimal

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import stats

from tenantml.rollout.analysis import (
    LATENCY_BUCKETS,
    LATENCY_EDGES,
    LATENCY_RATIO,
    Arm,
    LatencyHistogram,
    bucket_of,
    compare,
    error_rate_breached,
    min_sample_size,
    norm_ppf,
    p95_breached,
    sample_size_per_arm,
    two_proportion_ztest,
)

# ---------------------------------------------------------------------------------------------------
# norm_ppf


def test_norm_ppf_matches_scipy_over_the_grid_and_tails():
    tails = np.logspace(-10, math.log10(0.5), 3000)
    ps = np.concatenate([tails, 1.0 - tails, np.linspace(1e-6, 1 - 1e-6, 5001), [0.5, 0.02425, 0.97575]])
    ours = np.array([norm_ppf(p) for p in ps])
    ref = stats.norm.ppf(ps)
    rel = np.abs(ours - ref) / np.maximum(1.0, np.abs(ref))
    assert rel.max() < 1e-12


def test_norm_ppf_symmetry_and_known_values():
    assert norm_ppf(0.5) == 0.0
    assert norm_ppf(0.975) == pytest.approx(1.959963984540054, abs=1e-14)
    for p in (0.5000001, 0.7, 0.99, 1 - 1e-10):     # 1-p is exact above 0.5, so the symmetry is too
        assert norm_ppf(p) == -norm_ppf(1.0 - p)


def test_norm_ppf_far_tail_is_finite():
    assert norm_ppf(1e-300) == pytest.approx(stats.norm.ppf(1e-300), rel=1e-12)
    x = norm_ppf(5e-324)                          # subnormal: no refinement, Acklam's approximation alone
    assert math.isfinite(x) and x == pytest.approx(stats.norm.ppf(5e-324), rel=3e-9)


@pytest.mark.parametrize("p", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_norm_ppf_rejects_non_probabilities(p):
    with pytest.raises(ValueError):
        norm_ppf(p)


# ---------------------------------------------------------------------------------------------------
# The two-proportion z-test


def _by_hand(xs, ns, xc, nc):
    ps, pc = xs / ns, xc / nc
    pool = (xs + xc) / (ns + nc)
    z = (pc - ps) / math.sqrt(pool * (1 - pool) * (1 / ns + 1 / nc))
    return z, 2 * stats.norm.sf(abs(z))


def _tables(rng, k):
    out = [(850, 1000, 880, 1000), (45, 50, 40, 50), (1, 30, 9, 30), (9000, 10000, 9050, 10000),
           (120, 1000, 60, 200), (500, 1000, 500, 1000)]
    while len(out) < k:
        ns, nc = rng.integers(5, 20_000, size=2)
        ps, pc = rng.uniform(0.01, 0.99, size=2)
        xs, xc = rng.binomial(ns, ps), rng.binomial(nc, pc)
        if 0 < xs + xc < ns + nc:
            out.append((int(xs), int(ns), int(xc), int(nc)))
    return out


def test_ztest_matches_scipy_by_hand_and_chi2_contingency():
    for xs, ns, xc, nc in _tables(np.random.default_rng(7), 300):
        t = two_proportion_ztest(xs, ns, xc, nc)
        z, p = _by_hand(xs, ns, xc, nc)
        assert t.testable
        assert t.z == pytest.approx(z, rel=1e-12, abs=1e-12)
        assert t.pvalue == pytest.approx(p, rel=1e-12, abs=1e-15)
        table = np.array([[xs, ns - xs], [xc, nc - xc]])
        chi2, p_chi, dof, _ = stats.chi2_contingency(table, correction=False)
        assert dof == 1
        assert t.z ** 2 == pytest.approx(chi2, rel=1e-9, abs=1e-12)
        assert abs(t.pvalue - p_chi) < 1e-9
        assert t.difference == pytest.approx(xc / nc - xs / ns, abs=1e-15)


@pytest.mark.parametrize("level", [0.8, 0.9, 0.95, 0.99, 0.999])
def test_wald_interval_matches_scipy(level):
    for xs, ns, xc, nc in _tables(np.random.default_rng(11), 50):
        t = two_proportion_ztest(xs, ns, xc, nc, level=level)
        ps, pc = xs / ns, xc / nc
        half = stats.norm.ppf(1 - (1 - level) / 2) * math.sqrt(ps * (1 - ps) / ns + pc * (1 - pc) / nc)
        assert t.ci_low == pytest.approx(max(-1.0, pc - ps - half), abs=1e-12)
        assert t.ci_high == pytest.approx(min(1.0, pc - ps + half), abs=1e-12)
        assert t.level == level


def _finite(t) -> bool:
    return all(v is None or isinstance(v, bool) or math.isfinite(v) for v in t)


@pytest.mark.parametrize(("args", "rates", "testable", "ci"), [
    ((0, 0, 5, 10), (None, 0.5), False, (-1.0, 1.0)),          # no stable trials
    ((5, 10, 0, 0), (0.5, None), False, (-1.0, 1.0)),          # no candidate trials
    ((0, 0, 0, 0), (None, None), False, (-1.0, 1.0)),
    ((10, 10, 20, 20), (1.0, 1.0), False, (0.0, 0.0)),         # pooled p = 1: no variance
    ((0, 10, 0, 20), (0.0, 0.0), False, (0.0, 0.0)),           # pooled p = 0
    ((0, 10, 10, 10), (0.0, 1.0), True, (1.0, 1.0)),           # pooled 0.5, but each arm has no variance
])
def test_ztest_degenerate_inputs_are_defined(args, rates, testable, ci):
    t = two_proportion_ztest(*args)
    assert _finite(t)
    assert (t.rate_stable, t.rate_candidate) == rates
    assert t.testable is testable
    assert (t.ci_low, t.ci_high) == pytest.approx(ci)
    if not testable:
        assert (t.z, t.pvalue) == (0.0, 1.0)


def test_ztest_counts_may_be_numpy_or_decimal():
    a = two_proportion_ztest(np.int64(85), Decimal(100), 90.0, np.uint32(100))
    assert a == two_proportion_ztest(85, 100, 90, 100)


@pytest.mark.parametrize("args", [(11, 10, 1, 10), (-1, 10, 1, 10), (1, 10, 1.5, 10), (1, 10, "1", 10),
                                  (1, 10, 1, math.nan), (1, 10, 1, math.inf)])
def test_ztest_rejects_bad_counts(args):
    with pytest.raises(ValueError):
        two_proportion_ztest(*args)


@pytest.mark.parametrize("level", [0.0, 1.0, 1.2])
def test_ztest_rejects_bad_level(level):
    with pytest.raises(ValueError):
        two_proportion_ztest(1, 10, 2, 10, level=level)


# ---------------------------------------------------------------------------------------------------
# Sample size


def _fleiss(p1, p2, alpha, power):
    pbar = (p1 + p2) / 2
    za, zb = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)
    return (za * math.sqrt(2 * pbar * (1 - pbar)) + zb * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))) ** 2 \
        / (p2 - p1) ** 2


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.1])
@pytest.mark.parametrize("power", [0.5, 0.8, 0.9, 0.95])
def test_sample_size_matches_the_closed_form(alpha, power):
    for p1, p2 in [(0.85, 0.88), (0.85, 0.82), (0.5, 0.53), (0.02, 0.01), (0.99, 0.96), (1.0, 0.97),
                   (0.0, 0.05), (0.3, 0.6)]:
        n = sample_size_per_arm(p1, p2, alpha=alpha, power=power)
        exact = _fleiss(p1, p2, alpha, power)
        assert n == math.ceil(exact - 1e-9)
        assert n == sample_size_per_arm(p2, p1, alpha=alpha, power=power)       # symmetric


def test_known_sample_size():
    # 85% -> 88% at alpha 0.05, power 0.8: the closed form is 2035.6
    assert sample_size_per_arm(0.85, 0.88) == 2036


def test_min_sample_size_takes_the_larger_direction():
    assert min_sample_size(0.85, 0.03) == sample_size_per_arm(0.85, 0.82) > sample_size_per_arm(0.85, 0.88)
    assert min_sample_size(0.15, 0.03) == sample_size_per_arm(0.15, 0.18)
    assert min_sample_size(1.0, 0.03) == sample_size_per_arm(1.0, 0.97)      # only one direction is a rate
    assert min_sample_size(0.0, 0.03) == sample_size_per_arm(0.0, 0.03)
    sizes = [min_sample_size(0.85, e) for e in (0.01, 0.02, 0.03, 0.05, 0.1)]
    assert sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize(("call", "kw"), [
    (sample_size_per_arm, {"p1": 0.5, "p2": 0.5}),
    (sample_size_per_arm, {"p1": -0.1, "p2": 0.5}),
    (sample_size_per_arm, {"p1": 0.5, "p2": 0.6, "power": 0.3}),
    (sample_size_per_arm, {"p1": 0.5, "p2": 0.6, "power": 1.0}),
    (sample_size_per_arm, {"p1": 0.5, "p2": 0.6, "alpha": 0.0}),
    (min_sample_size, {"baseline": 0.5, "effect": 0.0}),
    (min_sample_size, {"baseline": 0.5, "effect": 0.6}),
    (min_sample_size, {"baseline": 1.1, "effect": 0.1}),
])
def test_sample_size_rejects_bad_arguments(call, kw):
    with pytest.raises(ValueError):
        call(**kw)


@pytest.mark.parametrize(("p1", "p2", "alpha", "power"), [
    (0.85, 0.88, 0.05, 0.8),
    (0.85, 0.82, 0.05, 0.8),
    (0.50, 0.55, 0.05, 0.9),
    (0.95, 0.90, 0.01, 0.8),
    (0.10, 0.20, 0.05, 0.8),
])
def test_empirical_power_at_the_computed_n(p1, p2, alpha, power):
    n = sample_size_per_arm(p1, p2, alpha=alpha, power=power)
    rng = np.random.default_rng(20240601)
    xs = rng.binomial(n, p1, size=2000)
    xc = rng.binomial(n, p2, size=2000)
    rejected = sum(two_proportion_ztest(int(a), n, int(b), n).pvalue < alpha
                   for a, b in zip(xs, xc, strict=True))
    assert abs(rejected / 2000 - power) <= 0.04, (n, rejected / 2000)


def test_size_of_the_test_under_h0():
    rng = np.random.default_rng(3)
    xs = rng.binomial(2000, 0.85, size=2000)
    xc = rng.binomial(2000, 0.85, size=2000)
    rejected = sum(two_proportion_ztest(int(a), 2000, int(b), 2000).pvalue < 0.05
                   for a, b in zip(xs, xc, strict=True))
    assert abs(rejected / 2000 - 0.05) <= 0.015


# ---------------------------------------------------------------------------------------------------
# compare


def test_compare_insufficient_below_the_sample_size_even_when_significant():
    c = compare(Arm(successes=1700, trials=2000), Arm(successes=1790, trials=2000))
    assert c.pvalue < 1e-4
    assert c.min_sample_size == min_sample_size(0.85, 0.03) == 2402
    assert c.verdict == "insufficient_data"
    assert "2402 per arm" in c.reason and "\n" not in c.reason


def test_compare_candidate_better_and_stable_better():
    stable = Arm(successes=2550, trials=3000)                       # 85%
    better = compare(stable, Arm(successes=2670, trials=3000))      # 89%
    assert better.verdict == "candidate_better"
    assert better.difference == pytest.approx(0.04)
    assert better.ci_low > 0 and better.ci_level == 0.95
    worse = compare(stable, Arm(successes=2430, trials=3000))       # 81%
    assert worse.verdict == "stable_better"
    assert worse.ci_high < 0


def test_compare_no_significant_difference():
    c = compare(Arm(successes=2550, trials=3000), Arm(successes=2560, trials=3000))
    assert c.verdict == "no_significant_difference"
    assert c.pvalue >= 0.05 and c.ci_low < 0 < c.ci_high
    assert "2402 trials per arm" in c.reason and "probability >= 0.8" in c.reason


def test_compare_for_an_error_rate():
    stable = Arm(successes=300, trials=3000)                        # 10% errors
    c = compare(stable, Arm(successes=180, trials=3000), higher_is_better=False)
    assert c.verdict == "candidate_better" and c.difference < 0
    c = compare(stable, Arm(successes=420, trials=3000), higher_is_better=False)
    assert c.verdict == "stable_better"


def test_compare_floor_holds_when_the_sample_size_is_small():
    # 50% vs a 40-point effect: the formula asks for ~20 per arm, the floor for 100
    stable, cand = Arm(successes=25, trials=50), Arm(successes=45, trials=50)
    c = compare(stable, cand, effect=0.4)
    assert c.min_sample_size < 50 and c.verdict == "insufficient_data"
    assert "100 per arm" in c.reason
    assert compare(stable, cand, effect=0.4, min_trials=30).verdict == "candidate_better"


def test_compare_degenerate_arms():
    c = compare(Arm(successes=0, trials=0), Arm(successes=10, trials=10))
    assert c.verdict == "insufficient_data" and c.stable_rate is None
    assert c.min_sample_size == min_sample_size(0.5, 0.03)
    assert math.isfinite(c.z) and c.pvalue == 1.0
    perfect = compare(Arm(successes=5000, trials=5000), Arm(successes=5000, trials=5000))
    assert perfect.verdict == "no_significant_difference" and perfect.pvalue == 1.0
    assert json.loads(perfect.model_dump_json())["verdict"] == "no_significant_difference"


def test_compare_rejects_bad_arguments():
    a = Arm(successes=1, trials=2)
    for kw in ({"alpha": 0.0}, {"effect": 0.0}, {"effect": 0.6}, {"power": 1.0}, {"min_trials": 0}):
        with pytest.raises(ValueError):
            compare(a, a, **kw)


def test_arm_and_comparison_models():
    with pytest.raises(ValidationError):
        Arm(successes=3, trials=2)
    with pytest.raises(ValidationError):
        Arm(successes=-1, trials=2)
    with pytest.raises(ValidationError):
        Arm(successes=1, trials=2, name="x")
    a = Arm(successes=1, trials=4)
    assert a.rate == 0.25 and Arm(successes=0, trials=0).rate is None
    with pytest.raises(ValidationError):
        a.trials = 5
    c = compare(a, a)
    with pytest.raises(ValidationError):
        c.verdict = "candidate_better"


# ---------------------------------------------------------------------------------------------------
# Latency histograms


def test_edges_layout():
    assert LATENCY_EDGES[0] == 1.0
    assert LATENCY_EDGES[-2] < 60_000 <= LATENCY_EDGES[-1] < 60_000 * LATENCY_RATIO
    assert LATENCY_BUCKETS == LATENCY_EDGES.size + 1 == 228
    ratios = LATENCY_EDGES[1:] / LATENCY_EDGES[:-1]
    assert np.allclose(ratios, LATENCY_RATIO, rtol=1e-12, atol=0)


def test_bucket_of_edges_scalars_and_arrays():
    idx = np.arange(1, LATENCY_EDGES.size + 1)
    assert np.array_equal(bucket_of(LATENCY_EDGES), idx)                       # an edge opens its bucket
    assert np.array_equal(bucket_of(np.nextafter(LATENCY_EDGES, 0)), idx - 1)  # just below: the one before
    assert bucket_of(0.0) == 0 and bucket_of(0.999) == 0
    assert bucket_of(1.0) == 1 and bucket_of(1.04) == 1 and bucket_of(1.05) == 2
    assert bucket_of(1e9) == bucket_of(math.inf) == LATENCY_BUCKETS - 1
    assert isinstance(bucket_of(12.5), int)
    arr = bucket_of([0.5, 12.5, 400.0])
    assert arr.dtype == np.int64 and arr.tolist() == [0, bucket_of(12.5), bucket_of(400.0)]
    x = np.random.default_rng(1).lognormal(4, 2, size=10_000)
    b = bucket_of(x)
    inside = (b >= 1) & (b <= LATENCY_EDGES.size - 1)
    assert np.all(LATENCY_EDGES[b[inside] - 1] <= x[inside]) and np.all(x[inside] < LATENCY_EDGES[b[inside]])
    assert LatencyHistogram.bucket_of(3.0) == bucket_of(3.0)


@pytest.mark.parametrize("bad", [-1.0, math.nan, [1.0, math.nan]])
def test_bucket_of_rejects_bad_latencies(bad):
    with pytest.raises(ValueError):
        bucket_of(bad)


@pytest.mark.parametrize(("median", "sigma", "n"), [(80.0, 0.8, 200_000), (15.0, 1.5, 50_000),
                                                    (600.0, 0.4, 20_000), (40.0, 1.0, 37)])
def test_percentiles_of_lognormal_latencies_within_the_bound(median, sigma, n):
    rng = np.random.default_rng(int(median * 1000) + n)
    x = rng.lognormal(math.log(median), sigma, size=n)
    h = LatencyHistogram.of(x)
    assert h.count == n
    for q in (50, 90, 95, 99, 99.9, 0, 100):
        est = h.percentile(q)
        ref = float(np.percentile(x, q, method="inverted_cdf"))
        if not 1.0 <= ref < LATENCY_EDGES[-1]:
            continue
        assert ref < est <= LATENCY_RATIO * ref * (1 + 1e-12), (q, ref, est)
        if n >= 10_000 and 0 < q < 100:     # numpy's default (linear) method: dense order statistics
            lin = float(np.percentile(x, q))
            assert abs(est / lin - 1) <= (LATENCY_RATIO - 1) + 1e-3


def test_percentile_edge_cases():
    h = LatencyHistogram()
    assert h.percentile(95) is None and h.count == 0 and h.to_counts() == {}
    h.add(0.3)
    assert h.percentile(50) == 1.0                   # below 1 ms: the 1 ms edge
    h = LatencyHistogram.of([120_000.0] * 3)
    assert h.percentile(99) == LATENCY_EDGES[-1]     # above the last edge: a lower bound
    h = LatencyHistogram.of([10.0] * 95 + [500.0] * 5)
    assert h.percentile(95) == LATENCY_EDGES[bucket_of(10.0)]      # j = 95 exactly, not 96
    assert h.percentile(95.01) == LATENCY_EDGES[bucket_of(500.0)]
    for q in (-1, 100.5, math.nan):
        with pytest.raises(ValueError):
            h.percentile(q)


def test_merge_and_sparse_counts_round_trip():
    rng = np.random.default_rng(5)
    x = rng.lognormal(4, 1, size=30_000)
    parts = [LatencyHistogram.of(chunk) for chunk in np.array_split(x, 7)]
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.merge(p)
    whole = LatencyHistogram.of(x)
    assert merged == whole and parts[0].count == len(np.array_split(x, 7)[0])   # merge leaves inputs alone
    for q in (50, 95, 99):
        assert merged.percentile(q) == whole.percentile(q)
    stored = json.loads(json.dumps(whole.to_counts()))
    assert all(isinstance(k, str) for k in stored) and 0 not in stored.values()
    assert LatencyHistogram.from_counts(stored) == whole
    as_dynamo = {k: Decimal(v) for k, v in stored.items()}
    assert LatencyHistogram.from_counts(as_dynamo) == whole
    assert LatencyHistogram.from_counts({int(k): v for k, v in stored.items()}) == whole
    h = LatencyHistogram()
    h.add(x[:100])
    h.add(float(x[100]))
    h.add([])
    assert h == LatencyHistogram.of(x[:101])


@pytest.mark.parametrize("bad", [{"228": 1}, {"-1": 1}, {"a": 1}, {"1.5": 1}, {"3": -1}, {"3": 1.5},
                                 {3.0: 1}, {True: 1}])
def test_from_counts_rejects_bad_maps(bad):
    with pytest.raises(ValueError):
        LatencyHistogram.from_counts(bad)


# ---------------------------------------------------------------------------------------------------
# Guardrails


def test_error_rate_breached():
    assert not error_rate_breached(10, 1000, 15, 1000)            # 1.5% <= max(1%, 2%)
    assert error_rate_breached(10, 1000, 21, 1000)                # 2.1% > 2%
    assert not error_rate_breached(10, 1000, 20, 1000)            # equal is not a breach
    assert not error_rate_breached(0, 1000, 10, 1000)             # 1% = floor
    assert error_rate_breached(0, 1000, 11, 1000)                 # 1.1% > floor
    assert not error_rate_breached(0, 0, 1, 100)                  # no stable traffic: the floor alone
    assert error_rate_breached(0, 0, 2, 100)
    assert not error_rate_breached(5, 100, 0, 0)                  # no candidate traffic: nothing to judge
    assert not error_rate_breached(100, 1000, 250, 1000, ratio=3.0)
    assert error_rate_breached(100, 1000, 250, 1000, ratio=2.0)
    assert not error_rate_breached(0, 1000, 40, 1000, floor=0.05)
    assert error_rate_breached(Decimal(1), Decimal(100), Decimal(5), Decimal(100))


@pytest.mark.parametrize("args", [(11, 10, 1, 10), (1, 10, 11, 10), (-1, 10, 1, 10), (1.5, 10, 1, 10)])
def test_error_rate_breached_rejects_bad_counts(args):
    with pytest.raises(ValueError):
        error_rate_breached(*args)
    with pytest.raises(ValueError):
        error_rate_breached(1, 10, 1, 10, ratio=0)


def test_p95_breached_bands():
    rng = np.random.default_rng(9)
    base = rng.lognormal(math.log(80), 0.7, size=5000)
    stable = LatencyHistogram.of(base)
    for t in rng.uniform(1.5 * LATENCY_RATIO * 1.0001, 4.0, size=100):     # always a breach
        assert p95_breached(stable, LatencyHistogram.of(base * t))
    for t in rng.uniform(0.2, 1.5 / LATENCY_RATIO, size=100):               # never a breach
        assert not p95_breached(stable, LatencyHistogram.of(base * t))
    assert p95_breached(stable, LatencyHistogram.of(base * 2.0), ratio=1.5)
    assert not p95_breached(stable, LatencyHistogram.of(base * 2.0), ratio=2.5)


def test_p95_breached_empty_histograms():
    h = LatencyHistogram.of([10.0, 20.0])
    assert not p95_breached(LatencyHistogram(), h)        # no stable reference
    assert not p95_breached(h, LatencyHistogram())        # no candidate evidence
    with pytest.raises(ValueError):
        p95_breached(h, h, ratio=0)
