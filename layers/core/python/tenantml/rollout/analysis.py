"""A/B analysis of a rollout: the candidate version against the stable one, from counters only.

Every input is a count (successes and trials of each arm, errors and requests, latency histogram buckets),
so a version's figures can be summed across Lambda invocations, windows and shards before they get here.

- `norm_ppf`: the standard normal quantile, Acklam's rational approximation (relative error < 1.15e-9)
  refined by one Halley step on Phi(x) = erfc(-x/sqrt 2)/2, which brings it to rounding level: within
  1e-12 relative of scipy.stats.norm.ppf on 1e-10..1-1e-10 and at 1e-300 (checked; the measured worst
  case on that grid is ~1e-15).
- `two_proportion_ztest`: rates p_s = x_s/n_s and p_c = x_c/n_c, difference d = p_c - p_s; pooled
  p = (x_s + x_c)/(n_s + n_c), z = d / sqrt(p (1-p) (1/n_s + 1/n_c)), two-sided p-value
  erfc(|z|/sqrt 2) (z^2 is Pearson's chi-square of the 2x2 table without continuity correction, and
  the p-values agree). The confidence interval for d is Wald's, unpooled:
  d +- z_{(1+level)/2} sqrt(p_s (1-p_s)/n_s + p_c (1-p_c)/n_c), clipped to [-1, 1]; it is the textbook
  interval, and like every Wald interval it covers less than `level` when an arm is small or its rate
  near 0 or 1 (the verdicts below rest on the p-value, not on the interval).
  An arm without trials, or a table where every trial has the same outcome (pooled p of 0 or 1), has no
  variance to test: z = 0, p-value 1, `testable` False; never NaN or a division by zero.
- `sample_size_per_arm` / `min_sample_size`: trials per arm for the two-sided pooled z-test at level
  alpha to reach power 1-beta against rates p1 and p2 (Fleiss, Levin & Paik, Statistical Methods for
  Rates and Proportions, 3rd ed., 2003, eq. 4.14, without the continuity correction of eq. 4.15):
      n = ( z_{1-alpha/2} sqrt(2 pbar qbar) + z_{1-beta} sqrt(p1 q1 + p2 q2) )^2 / (p2 - p1)^2,
  pbar = (p1 + p2)/2, q = 1 - p: the variance under H0 is the pooled one, under H1 the unpooled one,
  as in the test. It is the normal approximation and it neglects the far rejection tail; simulating the
  test at that n (200k experiments) gives the target power within 0.01 for rates away from 0 and 1
  (0.85 vs 0.88, 0.5 vs 0.55, 0.5 vs 0.7, 0.1 vs 0.2) and up to 0.03 above it (more power than asked)
  near the ends (0.99 vs 0.96); the tests check +-0.04 over 2000 seeded experiments.
  Power grows with either arm's size, so unequal arms (a 10% canary beside the stable version) that each
  hold at least n trials have at least the target power.
- `compare`: the verdict of the status report (`Comparison`), see its docstring.
- `LatencyHistogram`: latency counts in fixed log-spaced buckets (1 ms .. ~61 s, ratio 1.05), stored as
  a sparse {bucket index: count} map; its `percentile` returns the upper edge of the bucket holding the
  order statistic, so it never under-reports and over-reports by less than 5% (see the class).
- `error_rate_breached`, `p95_breached`: the guardrails a rollout checks at every step.

Pure: numpy, pydantic and math only (no scipy: the tests compare against it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple, SupportsFloat, overload

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

Verdict = Literal["candidate_better", "stable_better", "no_significant_difference", "insufficient_data"]

# ---------------------------------------------------------------------------------------------------
# The normal distribution

_SQRT2 = math.sqrt(2.0)
_SQRT2PI = math.sqrt(2.0 * math.pi)

# Acklam's coefficients (P. J. Acklam, "An algorithm for computing the inverse normal cumulative
# distribution function", 2003): central region |p - 0.5| <= 0.5 - P_LOW, and the tails.
_A = (-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
      1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00)
_B = (-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
      6.680131188771972e+01, -1.328068155288572e+01)
_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
      -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00)
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00)
_P_LOW = 0.02425


def _acklam_lower(p: float) -> float:
    """Acklam's approximation for 0 < p <= 0.5 (relative error < 1.15e-9)."""
    if p < _P_LOW:
        q = math.sqrt(-2.0 * math.log(p))
        return (((((_C[0] * q + _C[1]) * q + _C[2]) * q + _C[3]) * q + _C[4]) * q + _C[5]) / \
            ((((_D[0] * q + _D[1]) * q + _D[2]) * q + _D[3]) * q + 1.0)
    q = p - 0.5
    r = q * q
    return (((((_A[0] * r + _A[1]) * r + _A[2]) * r + _A[3]) * r + _A[4]) * r + _A[5]) * q / \
        (((((_B[0] * r + _B[1]) * r + _B[2]) * r + _B[3]) * r + _B[4]) * r + 1.0)


def norm_ppf(p: float) -> float:
    """The standard normal quantile Phi^-1(p) for 0 < p < 1.

    Acklam's rational approximation (relative error < 1.15e-9), then one Halley step on
    f(x) = Phi(x) - p with Phi(x) = erfc(-x/sqrt 2)/2: e = Phi(x) - p, u = e sqrt(2 pi) exp(x^2/2),
    x <- x - u / (1 + x u / 2). Halley converges cubically, so one step takes 1e-9 to rounding level.
    It is computed on the lower half only (x(p) = -x(1-p) above 0.5; 1-p is exact there), where
    erfc of a positive argument keeps full relative precision in the tail. The step is skipped only
    where exp(x^2/2) would overflow (p below ~1e-306, where Phi itself is near the subnormal range and
    cannot be computed precisely), leaving Acklam's approximation (relative error ~2e-9 there)."""
    p = float(p)
    if not 0.0 < p < 1.0:
        raise ValueError(f"norm_ppf needs 0 < p < 1, got {p!r}")
    if p > 0.5:
        return -norm_ppf(1.0 - p)
    if p == 0.5:
        return 0.0
    x = _acklam_lower(p)
    if x * x / 2.0 < 700.0:
        e = 0.5 * math.erfc(-x / _SQRT2) - p
        u = e * _SQRT2PI * math.exp(x * x / 2.0)
        x = x - u / (1.0 + x * u / 2.0)
    return x


def _two_sided_p(z: float) -> float:
    return min(1.0, math.erfc(abs(z) / _SQRT2))


# ---------------------------------------------------------------------------------------------------
# Two proportions


def _count(x: SupportsFloat, what: str) -> int:
    """A count from an int, a numpy integer, an integral float or a Decimal (DynamoDB numbers)."""
    try:
        v = int(x)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"{what}: expected a count, got {x!r}") from e
    if v != x or v < 0:
        raise ValueError(f"{what}: expected an integer >= 0, got {x!r}")
    return v


def _pair(successes: SupportsFloat, trials: SupportsFloat, what: str) -> tuple[int, int]:
    s, n = _count(successes, f"{what} successes"), _count(trials, f"{what} trials")
    if s > n:
        raise ValueError(f"{what}: {s} successes > {n} trials")
    return s, n


def _level(level: float, what: str = "level") -> float:
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"{what} must be in (0, 1), got {level!r}")
    return level


class ZTest(NamedTuple):
    """A two-proportion z-test; `difference` is candidate - stable."""

    rate_stable: float | None          # None: the arm has no trials
    rate_candidate: float | None
    difference: float                  # 0.0 when an arm has no trials
    z: float                           # 0.0 when not testable
    pvalue: float                      # two-sided; 1.0 when not testable
    ci_low: float                      # Wald, unpooled, in [-1, 1]; all of [-1, 1] with an empty arm
    ci_high: float
    level: float
    testable: bool                     # False: an empty arm, or every trial with the same outcome


def two_proportion_ztest(stable_successes: SupportsFloat, stable_trials: SupportsFloat,
                         candidate_successes: SupportsFloat, candidate_trials: SupportsFloat, *,
                         level: float = 0.95) -> ZTest:
    """Pooled two-proportion z-test of candidate vs stable and the unpooled Wald interval of the
    difference at `level` (formulas in the module docstring). Counts must be integers >= 0 with
    successes <= trials; "success" is whatever outcome is counted (a correct prediction, an error).

    Degenerate inputs give a defined answer, never NaN: with an arm without trials the rates of empty
    arms are None, the difference 0, z 0, the p-value 1 and the interval [-1, 1] (nothing is known);
    when both arms are all successes or all failures (pooled rate 0 or 1) the rates are equal, z is 0
    and the p-value 1, and the interval is the single point 0."""
    xs, ns = _pair(stable_successes, stable_trials, "stable")
    xc, nc = _pair(candidate_successes, candidate_trials, "candidate")
    level = _level(level)
    rs = xs / ns if ns else None
    rc = xc / nc if nc else None
    if rs is None or rc is None:
        return ZTest(rs, rc, 0.0, 0.0, 1.0, -1.0, 1.0, level, False)
    d = rc - rs
    zq = norm_ppf(0.5 + level / 2.0)
    half = zq * math.sqrt(rs * (1.0 - rs) / ns + rc * (1.0 - rc) / nc)
    lo, hi = max(-1.0, d - half), min(1.0, d + half)
    pooled = (xs + xc) / (ns + nc)
    var0 = pooled * (1.0 - pooled) * (1.0 / ns + 1.0 / nc)
    if var0 <= 0.0:
        return ZTest(rs, rc, d, 0.0, 1.0, lo, hi, level, False)
    z = d / math.sqrt(var0)
    return ZTest(rs, rc, d, z, _two_sided_p(z), lo, hi, level, True)


def _check_alpha_power(alpha: float, power: float) -> tuple[float, float]:
    alpha = _level(alpha, "alpha")
    power = float(power)
    if not 0.5 <= power < 1.0:
        raise ValueError(f"power must be in [0.5, 1), got {power!r}")
    return alpha, power


def sample_size_per_arm(p1: float, p2: float, *, alpha: float = 0.05, power: float = 0.8) -> int:
    """Trials per arm (equal arms) for the two-sided pooled z-test at level `alpha` to detect rates p1 vs
    p2 with probability `power`: Fleiss, Levin & Paik (3rd ed., 2003) eq. 4.14, no continuity
    correction,
        n = ceil((z_{1-alpha/2} sqrt(2 pbar (1-pbar)) + z_{power} sqrt(p1 (1-p1) + p2 (1-p2)))^2 / (p2-p1)^2),
    pbar = (p1+p2)/2. It neglects the rejection region on the far side (probability roughly
    Phi(-2 z_{1-alpha/2} - z_{power}), ~1e-6 at the defaults) and rests on the normal approximation of
    the binomial: the simulated power at this n is within 0.01 of the target for rates away from 0 and 1,
    and up to 0.03 above it near the ends (module docstring). Power must be >= 0.5 (below, z_{power} < 0
    and the formula is not the test's)."""
    p1, p2 = float(p1), float(p2)
    if not (0.0 <= p1 <= 1.0 and 0.0 <= p2 <= 1.0):
        raise ValueError(f"rates must be in [0, 1], got {p1!r} and {p2!r}")
    if p1 == p2:
        raise ValueError("p1 == p2: no sample size detects a zero difference")
    alpha, power = _check_alpha_power(alpha, power)
    pbar = (p1 + p2) / 2.0
    za = norm_ppf(1.0 - alpha / 2.0)
    zb = norm_ppf(power)
    root = za * math.sqrt(2.0 * pbar * (1.0 - pbar)) + zb * math.sqrt(p1 * (1.0 - p1) + p2 * (1.0 - p2))
    n = root * root / ((p2 - p1) ** 2)
    return max(1, math.ceil(n * (1.0 - 1e-12)))   # 1e-12: a float a hair above an integer is that integer


def min_sample_size(baseline: float, effect: float, *, alpha: float = 0.05, power: float = 0.8) -> int:
    """Trials per arm to detect an absolute change of `effect` (> 0, e.g. 0.03 = 3 points) from a
    `baseline` rate in either direction: the larger `sample_size_per_arm` of baseline - effect and
    baseline + effect, among those in [0, 1] (the direction towards 0.5 has the larger variance)."""
    baseline, effect = float(baseline), float(effect)
    if not 0.0 <= baseline <= 1.0:
        raise ValueError(f"baseline must be in [0, 1], got {baseline!r}")
    if not 0.0 < effect <= 1.0:
        raise ValueError(f"effect must be in (0, 1], got {effect!r}")
    sizes = [sample_size_per_arm(baseline, p2, alpha=alpha, power=power)
             for p2 in (baseline - effect, baseline + effect) if 0.0 <= p2 <= 1.0]
    if not sizes:
        raise ValueError(f"neither {baseline} - {effect} nor {baseline} + {effect} is a rate")
    return max(sizes)


# ---------------------------------------------------------------------------------------------------
# The verdict


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Arm(_Model):
    """One version's outcome counts over the analysis window."""

    successes: int = Field(ge=0, description="trials with the counted outcome (e.g. correct predictions)")
    trials: int = Field(ge=0)

    @model_validator(mode="after")
    def _bounded(self) -> Arm:
        if self.successes > self.trials:
            raise ValueError(f"{self.successes} successes > {self.trials} trials")
        return self

    @property
    def rate(self) -> float | None:
        return self.successes / self.trials if self.trials else None


class Comparison(_Model):
    """The candidate against the stable version, for the rollout's status report."""

    verdict: Verdict
    reason: str = Field(description="one line for a human")
    stable_rate: float | None = Field(description="None: no trials")
    candidate_rate: float | None
    stable_trials: int
    candidate_trials: int
    difference: float = Field(description="candidate - stable (0 when an arm has no trials)")
    ci_low: float = Field(description="Wald interval of the difference, unpooled, at ci_level")
    ci_high: float
    ci_level: float = Field(description="1 - alpha")
    z: float
    pvalue: float = Field(description="two-sided, pooled z-test; 1 when there is no variance to test")
    alpha: float
    effect: float = Field(description="the absolute difference the test must detect")
    power: float
    higher_is_better: bool
    min_sample_size: int = Field(description="trials per arm for `power` at `effect` (Fleiss eq. 4.14) "
                                             "from the stable rate")
    min_trials: int = Field(description="the floor: fewer trials in an arm is insufficient_data "
                                        "whatever min_sample_size says")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _pts(x: float) -> str:
    return f"{100 * x:+.2f} pts"


def compare(stable: Arm, candidate: Arm, *, alpha: float = 0.05, effect: float = 0.03, power: float = 0.8,
            min_trials: int = 100, higher_is_better: bool = True) -> Comparison:
    """The verdict on a candidate's rate (accuracy, by default: `higher_is_better`; for an error rate,
    count errors as successes and pass higher_is_better=False) against the stable version's.

    - `insufficient_data` while either arm has fewer trials than `required` = max(min_sample_size,
      min_trials). min_sample_size is the per-arm n at which the two-sided test at `alpha` detects an
      absolute change of `effect` from the stable rate (or 0.5, the largest-variance rate, while the
      stable arm is empty) with probability `power`; before then "no significant difference" would
      only mean "not enough data", and stopping at the first p < alpha of a growing window inflates
      false positives. The floor `min_trials` (100) holds where that n is small (a large effect, or a
      stable rate near 0 or 1): z, the p-value and the interval are normal approximations that need
      tens of trials per arm, and the stable rate that sizes n is itself estimated from its arm, which
      must not be a handful of trials (5/5 correct would size n for a rate of exactly 1).
    - otherwise `candidate_better` / `stable_better` when p < alpha (in the better direction by
      `higher_is_better`), else `no_significant_difference`: with at least `required` trials per arm the
      test had at least `power` to see a change of `effect`, so none that large is likely.
    """
    alpha, power = _check_alpha_power(alpha, power)
    effect = float(effect)
    if not 0.0 < effect <= 0.5:
        raise ValueError(f"effect must be in (0, 0.5], got {effect!r}")
    if min_trials < 1:
        raise ValueError("min_trials must be >= 1")
    t = two_proportion_ztest(stable.successes, stable.trials, candidate.successes, candidate.trials,
                             level=1.0 - alpha)
    baseline = t.rate_stable if t.rate_stable is not None else 0.5
    n_min = min_sample_size(baseline, effect, alpha=alpha, power=power)
    required = max(n_min, min_trials)
    summary = (f"candidate {_pct(t.rate_candidate)} vs stable {_pct(t.rate_stable)} "
               f"({_pts(t.difference)}, {100 * (1 - alpha):g}% CI [{_pts(t.ci_low)}, {_pts(t.ci_high)}]), "
               f"p={t.pvalue:.3g}")
    verdict: Verdict
    if min(stable.trials, candidate.trials) < required:
        verdict = "insufficient_data"
        reason = (f"{candidate.trials} candidate / {stable.trials} stable trials, {required} per arm needed "
                  f"to detect {_pts(effect).lstrip('+')} at alpha={alpha:g} with power {power:g}; so far "
                  f"{summary}")
    elif t.pvalue < alpha:
        up = t.difference > 0
        verdict = "candidate_better" if up == higher_is_better else "stable_better"
        reason = f"{summary} < alpha={alpha:g}"
    else:
        verdict = "no_significant_difference"
        reason = (f"{summary} >= alpha={alpha:g}; at >= {required} trials per arm a change of "
                  f"{_pts(effect).lstrip('+')} would be detected with probability >= {power:g}")
    return Comparison(verdict=verdict, reason=reason, stable_rate=t.rate_stable,
                      candidate_rate=t.rate_candidate, stable_trials=stable.trials,
                      candidate_trials=candidate.trials, difference=t.difference, ci_low=t.ci_low,
                      ci_high=t.ci_high, ci_level=t.level, z=t.z, pvalue=t.pvalue, alpha=alpha,
                      effect=effect, power=power, higher_is_better=higher_is_better,
                      min_sample_size=n_min, min_trials=min_trials)


# ---------------------------------------------------------------------------------------------------
# Latency histograms

LATENCY_MIN_MS = 1.0
LATENCY_MAX_MS = 60_000.0
LATENCY_RATIO = 1.05
_K = math.ceil(math.log(LATENCY_MAX_MS / LATENCY_MIN_MS) / math.log(LATENCY_RATIO))    # 226
#: e_0 = 1 ms, e_i = 1.05^i ms, ..., e_226 ~ 61.5 s. Bucket 0 is [0, e_0), bucket i (1..226) is
#: [e_(i-1), e_i), bucket 227 is [e_226, inf). Fixed forever: stored counts depend on them.
LATENCY_EDGES: np.ndarray = LATENCY_MIN_MS * LATENCY_RATIO ** np.arange(_K + 1, dtype=np.float64)
LATENCY_EDGES.setflags(write=False)
LATENCY_BUCKETS = _K + 2


@overload
def bucket_of(ms: float) -> int: ...
@overload
def bucket_of(ms: np.ndarray | Sequence[float]) -> np.ndarray: ...


def bucket_of(ms: float | np.ndarray | Sequence[float]) -> int | np.ndarray:
    """The bucket index of a latency in ms (an int), or of each of an array of them (an int64 array):
    the number of edges <= ms, by binary search in `LATENCY_EDGES`, so a value on an edge belongs to
    the bucket it opens, exactly (no log rounding). NaN and negative latencies are errors."""
    a = np.asarray(ms, dtype=np.float64)
    if np.isnan(a).any() or (a < 0).any():
        raise ValueError("latencies must be >= 0 and not NaN")
    idx = np.searchsorted(LATENCY_EDGES, a, side="right")
    return int(idx) if a.ndim == 0 else idx.astype(np.int64)


class LatencyHistogram:
    """Latency counts per fixed log-spaced bucket (`LATENCY_EDGES`: 1 ms .. ~61.5 s, each bucket 5%
    wider than the one before, plus one bucket below 1 ms and one above), so per-version latency
    percentiles come from counters summed across invocations and windows instead of raw samples.

    `to_counts()` is the sparse map {str(bucket index): count} of non-empty buckets (at most 228
    entries; string keys, as DynamoDB map attributes need) and `from_counts` reads it back (int or str
    keys, int or Decimal counts).

    `percentile(q)` returns the upper edge of the bucket holding the order statistic x_(j),
    j = max(1, ceil(q n / 100)) (numpy.percentile's method="inverted_cdf": the smallest value with at
    least q% of the values at or below it). Since that bucket is [a, 1.05 a) and x_(j) lies in it, the
    estimate is > x_(j) and < 1.05 x_(j): it never under-reports, and over-reports by less than 5%
    (relative). Below 1 ms it returns 1 ms (an absolute error < 1 ms); above the last edge it returns
    that edge (~61.5 s), a lower bound. The geometric midpoint sqrt(1.05) a or DDSketch's
    2 * 1.05 a / 2.05 would halve the worst case to ~2.4% either way, but could under-report, and
    guardrails prefer an estimate that does not.
    """

    __slots__ = ("_counts",)

    def __init__(self, counts: np.ndarray | None = None) -> None:
        if counts is None:
            self._counts = np.zeros(LATENCY_BUCKETS, dtype=np.int64)
        else:
            c = np.asarray(counts)
            if c.shape != (LATENCY_BUCKETS,) or (c < 0).any():
                raise ValueError(f"expected {LATENCY_BUCKETS} counts >= 0")
            self._counts = c.astype(np.int64, copy=True)

    bucket_of = staticmethod(bucket_of)

    @classmethod
    def of(cls, ms: float | np.ndarray | Sequence[float]) -> LatencyHistogram:
        h = cls()
        h.add(ms)
        return h

    @classmethod
    def from_counts(cls, counts: Mapping[Any, Any]) -> LatencyHistogram:
        """From a sparse {bucket index: count} map, keys int or str, counts int or integral Decimal."""
        dense = np.zeros(LATENCY_BUCKETS, dtype=np.int64)
        for key, value in counts.items():
            if isinstance(key, str) and key.strip().lstrip("-").isdigit():
                i = int(key)
            elif isinstance(key, int | np.integer) and not isinstance(key, bool):
                i = int(key)
            else:
                raise ValueError(f"bucket index {key!r} is not an integer")
            if not 0 <= i < LATENCY_BUCKETS:
                raise ValueError(f"bucket index {i} outside 0..{LATENCY_BUCKETS - 1}")
            dense[i] += _count(value, f"bucket {i}")
        return cls(dense)

    def to_counts(self) -> dict[str, int]:
        """The non-empty buckets as {str(index): count}, ready for a DynamoDB map attribute or JSON."""
        nz = np.flatnonzero(self._counts)
        return {str(i): int(self._counts[i]) for i in nz.tolist()}

    def add(self, ms: float | np.ndarray | Sequence[float]) -> None:
        """Count one latency, or each of an array of them (ms), in place."""
        idx = np.atleast_1d(bucket_of(ms))
        if idx.size:
            self._counts += np.bincount(idx, minlength=LATENCY_BUCKETS)

    def merge(self, other: LatencyHistogram) -> LatencyHistogram:
        """A new histogram with the counts of both (neither is changed): the histogram of the union."""
        return LatencyHistogram(self._counts + other._counts)

    @property
    def counts(self) -> np.ndarray:
        """Dense counts, one per bucket (a copy)."""
        return self._counts.copy()

    @property
    def count(self) -> int:
        return int(self._counts.sum())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LatencyHistogram) and bool(np.array_equal(self._counts, other._counts))

    __hash__ = None  # type: ignore[assignment]   # mutable

    def __repr__(self) -> str:
        return f"LatencyHistogram(count={self.count}, buckets={len(self.to_counts())})"

    def percentile(self, q: float) -> float | None:
        """The q-th percentile (0 <= q <= 100) in ms: the upper edge of the bucket holding x_(j),
        j = max(1, ceil(q n / 100)); in (x_(j), 1.05 x_(j)) (see the class). None when empty."""
        q = float(q)
        if not 0.0 <= q <= 100.0:
            raise ValueError(f"q must be in [0, 100], got {q!r}")
        n = self.count
        if n == 0:
            return None
        rank = q * n / 100.0
        near = round(rank)
        j = near if abs(rank - near) <= 1e-9 * max(1.0, rank) else math.ceil(rank)
        j = min(n, max(1, j))
        b = int(np.searchsorted(np.cumsum(self._counts), j, side="left"))
        return float(LATENCY_EDGES[min(b, _K)])


# ---------------------------------------------------------------------------------------------------
# Guardrails


def error_rate_breached(stable_errors: SupportsFloat, stable_requests: SupportsFloat,
                        cand_errors: SupportsFloat, cand_requests: SupportsFloat, *,
                        floor: float = 0.01, ratio: float = 2.0) -> bool:
    """True when the candidate's error rate exceeds max(floor, ratio * the stable error rate), strictly.
    The floor keeps a near-zero stable rate from making a single candidate error a breach (0 errors in
    stable: the threshold is the floor, not 0). Without stable traffic the stable rate is unknown and
    the threshold is the floor alone; without candidate traffic there is nothing to judge: False.
    A pure comparison of rates: on a handful of candidate requests one error is a large rate, so a
    caller that wants evidence first gates on a minimum request count (or uses `compare`)."""
    se, sn = _pair(stable_errors, stable_requests, "stable")
    ce, cn = _pair(cand_errors, cand_requests, "candidate")
    if floor < 0 or ratio <= 0:
        raise ValueError("floor must be >= 0 and ratio > 0")
    if cn == 0:
        return False
    threshold = max(float(floor), ratio * se / sn) if sn else float(floor)
    return ce / cn > threshold


def p95_breached(stable_hist: LatencyHistogram, cand_hist: LatencyHistogram, ratio: float = 1.5) -> bool:
    """True when the candidate's p95 latency exceeds `ratio` times the stable version's, both estimated
    by `LatencyHistogram.percentile` (upper bucket edges). Each estimate is in (x, 1.05 x) of its true
    value, so a true ratio above 1.05 * ratio always breaches and one at or below ratio / 1.05 never
    does; in between it depends on where the two values fall in their buckets. An empty candidate
    histogram is no evidence, and an empty stable one no reference: False."""
    if ratio <= 0:
        raise ValueError("ratio must be > 0")
    cand = cand_hist.percentile(95)
    stable = stable_hist.percentile(95)
    if cand is None or stable is None:
        return False
    return cand > ratio * stable
