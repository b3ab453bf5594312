"""Drift statistics over a window of traffic, in memory that does not grow with the window's rows.

A window is fed to one accumulator per feature, in chunks of any size (one capture file at a time):
`NumericAccumulator` counts values per cell of the baseline's bins (each open interval between edges and
each edge value, see `tenantml.monitoring.baseline`), plus NaN/Inf separately as `invalid`, the moments
and a bounded uniform sample; `CategoricalAccumulator` counts per baseline category. Counting the same
rows in 1 or 1000 chunks gives the same counts and the same sample. The statistics are functions of those
counts:

- `psi`: population stability index, smoothed (empty bins get `eps`, then renormalised) so that a
  category the window never saw does not make it infinite.
- `js_distance`: Jensen-Shannon distance, base 2, in [0, 1].
- `ks_from_bins`: the two-sample KS statistic from the binned CDFs (at most the baseline's
  `ks_error_bound` <= 1/bins below the exact statistic) and its asymptotic p-value (Kolmogorov
  distribution, effective n = n_ref*n_cur/(n_ref+n_cur), Stephens' finite-n correction); `ks_exact` is
  the fallback on the two samples when a baseline's bins are too coarse for that bound to be useful.
- `chi_square`: the 2xK contingency chi-square of reference vs window counts, its dof and p-value
  (regularized upper incomplete gamma, implemented here: the library does not depend on scipy).

Why every verdict needs both an effect size and significance. On a window of 100k rows a KS or
chi-square test finds a "significant" difference in almost anything, so a p-value alone flags nearly
every feature: the KS test counts only with D >= `ks_statistic` (0.1 by default). Conversely, on a small
window, PSI and JS have a sampling bias of order (bins-1)/n: on 200 unchanged rows the JS distance over 10
bins averages about 0.09 (a third of such windows reach 0.1), and over a 51-category feature PSI averages
about 0.37 and JS about 0.23, so alone they would flag many or all unchanged windows; they count only when
the chi-square test on the same bins is significant. What remains is about the significance level: ~6%
of unchanged 200-row windows of a numeric feature drift (two tests), ~4.5% of a categorical one.
Below `min_samples` valid values a feature's verdict is `insufficient_data`, never `no_drift`; but a
window whose share of NaN/Inf/missing values reaches `invalid_share` (5%) drifts whatever its statistics:
a feature whose pipeline broke is not "insufficient data" (the reference holds no invalid values at all).

Pure: numpy and pydantic only (math for lgamma).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from tenantml.monitoring.baseline import (
    OTHER,
    Baseline,
    CategoricalBaseline,
    NumericBaseline,
    as_categories,
)

Verdict = Literal["drift", "no_drift", "insufficient_data"]

# ---------------------------------------------------------------------------------------------------
# Statistics over counts


def _distribution(x: np.ndarray | Sequence[float], what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{what}: expected a non-empty 1-D array")
    if not np.isfinite(a).all() or (a < 0).any():
        raise ValueError(f"{what}: values must be finite and >= 0")
    total = a.sum()
    if total <= 0:
        raise ValueError(f"{what}: all zero")
    return a / total


def psi(ref_props: np.ndarray | Sequence[float], cur_counts: np.ndarray | Sequence[float],
        eps: float = 1e-4) -> float:
    """Population stability index sum((q - p) * ln(q / p)), p the reference and q the window
    distribution over the same bins. Empty bins of either get `eps` before both are renormalised, so the
    result is finite (a bin the window never hit contributes about p * ln(p / eps), not infinity)."""
    if len(ref_props) != len(cur_counts):
        raise ValueError("ref_props and cur_counts must have the same bins")
    p = _distribution(ref_props, "ref_props")
    q = _distribution(cur_counts, "cur_counts")
    p = np.where(p > 0, p, eps)
    q = np.where(q > 0, q, eps)
    p /= p.sum()
    q /= q.sum()
    return float(np.sum((q - p) * np.log(q / p)))


def js_distance(p: np.ndarray | Sequence[float], q: np.ndarray | Sequence[float]) -> float:
    """Jensen-Shannon distance in base 2 (the square root of the divergence), in [0, 1]: 0 for identical
    distributions, 1 for disjoint ones. Inputs are counts or proportions; each is normalised."""
    if len(p) != len(q):
        raise ValueError("p and q must have the same bins")
    a = _distribution(p, "p")
    b = _distribution(q, "q")
    m = (a + b) / 2

    def kl(x: np.ndarray) -> float:
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / m[nz])))

    return float(min(1.0, math.sqrt(max(0.0, (kl(a) + kl(b)) / 2))))


def kolmogorov_sf(lam: float) -> float:
    """Q_KS(lam) = P(K > lam) of the Kolmogorov distribution, 2 * sum_{k>=1} (-1)^(k-1) exp(-2 k^2 lam^2).
    That series converges fast for lam >= 1.18 (the terms fall like exp(-2.8 k^2)); below, it alternates
    slowly and loses precision, and the equivalent Jacobi-theta form
    1 - sqrt(2 pi)/lam * sum_{k>=1} exp(-(2k-1)^2 pi^2 / (8 lam^2)) converges fast instead."""
    if lam <= 0:
        return 1.0
    if lam < 1.18:
        k = np.arange(1, 8, dtype=np.float64)
        cdf = math.sqrt(2 * math.pi) / lam * float(np.sum(np.exp(-((2 * k - 1) ** 2) * math.pi ** 2
                                                                 / (8 * lam * lam))))
        return float(min(1.0, max(0.0, 1.0 - cdf)))
    k = np.arange(1, 21, dtype=np.float64)
    signs = np.where(k % 2 == 1, 1.0, -1.0)
    return float(min(1.0, max(0.0, 2.0 * np.sum(signs * np.exp(-2.0 * k * k * lam * lam)))))


def ks_pvalue(d: float, n_eff: float) -> float:
    """Asymptotic two-sided p-value of a KS statistic `d` at effective sample size `n_eff`, with Stephens'
    correction lam = (sqrt(ne) + 0.12 + 0.11 / sqrt(ne)) * d, which makes the asymptotic distribution
    accurate at finite n. Against scipy's asymptotic two-sample p-value (ks_2samp(method="asymp"): the
    exact Kolmogorov distribution at n = round(ne)) it is within 0.15/sqrt(ne) everywhere (0.0115 at
    ne = 100; the worst is near p = 0.75), within 0.035/sqrt(ne) where p < 0.2 and within 0.0025/sqrt(ne)
    where p < 0.05, where verdicts are decided; without the correction the error is about twice that."""
    if n_eff <= 0:
        return 1.0
    s = math.sqrt(n_eff)
    return kolmogorov_sf((s + 0.12 + 0.11 / s) * d)


class KS(NamedTuple):
    statistic: float
    pvalue: float
    n_eff: float


def _effective_n(n_ref: float, n_cur: float) -> float:
    return n_ref * n_cur / (n_ref + n_cur) if n_ref > 0 and n_cur > 0 else 0.0


def ks_from_bins(ref_props: np.ndarray | Sequence[float], cur_counts: np.ndarray | Sequence[float],
                 n_ref: int) -> KS:
    """KS statistic from binned CDFs: the largest gap between the reference and window CDFs at the
    boundaries between consecutive cells (any partition of the line into ordered cells, the same for
    both), and its asymptotic p-value with effective n = n_ref*n_cur/(n_ref+n_cur). Pass the baseline's
    `cell_proportions()` and the accumulator's `cell_counts` for the bound D_b <= D <= D_b + w of
    `tenantml.monitoring.baseline`."""
    if len(ref_props) != len(cur_counts):
        raise ValueError("ref_props and cur_counts must have the same cells")
    p = _distribution(ref_props, "ref_props")
    counts = np.asarray(cur_counts, dtype=np.float64)
    n_cur = float(counts.sum())
    q = _distribution(counts, "cur_counts")
    d = float(np.max(np.abs(np.cumsum(p) - np.cumsum(q))))
    ne = _effective_n(float(n_ref), n_cur)
    return KS(d, ks_pvalue(d, ne), ne)


def ks_exact(a: np.ndarray | Sequence[float], b: np.ndarray | Sequence[float]) -> KS:
    """The exact two-sample KS statistic of two samples (sup over x of |F_a(x) - F_b(x)|, ties handled
    as scipy.stats.ks_2samp does) and its asymptotic p-value."""
    x = np.sort(np.asarray(a, dtype=np.float64))
    y = np.sort(np.asarray(b, dtype=np.float64))
    if x.size == 0 or y.size == 0:
        raise ValueError("ks_exact needs two non-empty samples")
    points = np.concatenate([x, y])
    fa = np.searchsorted(x, points, side="right") / x.size
    fb = np.searchsorted(y, points, side="right") / y.size
    d = float(np.max(np.abs(fa - fb)))
    ne = _effective_n(float(x.size), float(y.size))
    return KS(d, ks_pvalue(d, ne), ne)


_TINY = 1e-300


def gammaincc(a: float, x: float) -> float:
    """Regularized upper incomplete gamma Q(a, x) = Gamma(a, x) / Gamma(a): the series of P(a, x) for
    x < a + 1, else the continued fraction of Q (modified Lentz), the standard pairing in which each
    converges fast (Numerical Recipes, 6.2). Relative accuracy ~1e-14."""
    if a <= 0:
        raise ValueError("a must be > 0")
    if x <= 0:
        return 1.0
    log_prefix = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1:
        ap, term = a, 1.0 / a
        total = term
        for _ in range(100_000):
            ap += 1
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-17:
                break
        return float(min(1.0, max(0.0, 1.0 - total * math.exp(log_prefix))))
    b = x + 1 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, 100_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = _TINY if abs(d) < _TINY else d
        c = b + an / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-16:
            break
    return float(min(1.0, max(0.0, math.exp(log_prefix) * h)))


class ChiSquare(NamedTuple):
    statistic: float
    dof: int
    pvalue: float


def chi_square(ref_counts: np.ndarray | Sequence[float],
               cur_counts: np.ndarray | Sequence[float]) -> ChiSquare:
    """Pearson chi-square of the 2xK table [reference counts; window counts] (no continuity correction),
    its dof K'-1 and p-value, K' the bins where either row has a count (columns empty in both carry no
    information and would divide by zero). A degenerate table (one row empty, or fewer than 2 bins)
    gives (0, 0, 1): no evidence of a difference."""
    if len(ref_counts) != len(cur_counts):
        raise ValueError("ref_counts and cur_counts must have the same bins")
    table = np.vstack([np.asarray(ref_counts, dtype=np.float64), np.asarray(cur_counts, dtype=np.float64)])
    if not np.isfinite(table).all() or (table < 0).any():
        raise ValueError("counts must be finite and >= 0")
    table = table[:, table.sum(axis=0) > 0]
    rows = table.sum(axis=1)
    if table.shape[1] < 2 or (rows <= 0).any():
        return ChiSquare(0.0, 0, 1.0)
    expected = np.outer(rows, table.sum(axis=0)) / rows.sum()
    stat = float(np.sum((table - expected) ** 2 / expected))
    dof = table.shape[1] - 1
    return ChiSquare(stat, dof, gammaincc(dof / 2, stat / 2))


# ---------------------------------------------------------------------------------------------------
# Accumulators


def cell_counts(edges: np.ndarray, ordered: np.ndarray) -> np.ndarray:
    """Counts per cell of sorted finite values: cell 2i is the open interval after i edges, cell 2i+1 the
    value of edge i. Searching the ~100 edges in the sorted chunk (then differencing) is ~8x faster than
    searching every value among the edges, and gives the same counts."""
    m = edges.size
    counts = np.empty(2 * m + 1, dtype=np.int64)
    if m == 0:
        counts[0] = ordered.size
        return counts
    below = np.searchsorted(ordered, edges, side="left")       # values < edge
    upto = np.searchsorted(ordered, edges, side="right")       # values <= edge
    counts[0] = below[0]
    counts[1::2] = upto - below
    counts[2:-1:2] = below[1:] - upto[:-1]
    counts[-1] = ordered.size - upto[-1]
    return counts


class NumericAccumulator:
    """Streams a window of one numeric feature against its baseline. Memory: the cell counts (2m+1 for m
    interior edges), a few scalars and a sample of at most `sample_size` values, whatever the number of
    rows.

    - `cell_counts`: finite values per cell (-inf, e_1), {e_1}, (e_1, e_2), ..., {e_m}, (e_m, +inf), the
      partition the KS bound needs; `bin_counts` folds them into the baseline's bins [e_i, e_(i+1)).
    - `invalid`: NaN/Inf values, counted and excluded from everything else (never dropped silently).
    - moments: n, mean and M2 merged chunk by chunk (Chan et al.) rather than a running sum of squares,
      which cancels catastrophically when the mean is large against the spread.
    - `sample`: a bottom-k sample: every value draws a uniform key and the `sample_size` smallest keys
      are kept. The keys come from one generator in row order, so the sample is the same whatever the
      chunking; it is uniform without replacement over the window's finite values.
    """

    def __init__(self, baseline: NumericBaseline, *, sample_size: int | None = None, seed: int = 0) -> None:
        self.baseline = baseline
        self._edges = baseline.interior_edges
        self._cells = np.zeros(2 * self._edges.size + 1, dtype=np.int64)
        self._invalid = 0
        self._n = 0
        self._mean = 0.0
        self._m2 = 0.0
        self._min = math.inf
        self._max = -math.inf
        self._k = len(baseline.sample) if sample_size is None else int(sample_size)
        if self._k < 1:
            raise ValueError("sample_size must be >= 1")
        self._rng = np.random.default_rng(seed)
        self._sample = np.empty(0, dtype=np.float64)
        self._keys = np.empty(0, dtype=np.float64)

    def update(self, values: np.ndarray | Sequence[float]) -> None:
        x = np.asarray(values, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"expected a 1-D array, got shape {x.shape}")
        finite = np.isfinite(x)
        self._invalid += int(x.size - np.count_nonzero(finite))
        x = x[finite]
        if x.size == 0:
            return
        self._cells += cell_counts(self._edges, np.sort(x))
        nb = int(x.size)
        mean_b = float(x.mean())
        m2_b = float(np.sum((x - mean_b) ** 2))
        n = self._n + nb
        delta = mean_b - self._mean
        self._mean += delta * nb / n
        self._m2 += m2_b + delta * delta * self._n * nb / n
        self._n = n
        self._min = min(self._min, float(x.min()))
        self._max = max(self._max, float(x.max()))
        keys = self._rng.random(nb)
        if self._keys.size == self._k:             # full: only keys below the current largest can enter
            enter = keys < self._keys[-1]
            x, keys = x[enter], keys[enter]
        if x.size:
            all_keys = np.concatenate([self._keys, keys])
            all_values = np.concatenate([self._sample, x])
            keep = np.argsort(all_keys, kind="stable")[: self._k]
            self._keys, self._sample = all_keys[keep], all_values[keep]

    @property
    def n(self) -> int:
        """Finite values seen."""
        return self._n

    @property
    def invalid(self) -> int:
        """NaN/Inf values seen (excluded from every statistic)."""
        return self._invalid

    @property
    def cell_counts(self) -> np.ndarray:
        return self._cells.copy()

    @property
    def bin_counts(self) -> np.ndarray:
        c = self._cells
        return np.concatenate([c[:1], c[1::2] + c[2::2]])

    @property
    def mean(self) -> float:
        return self._mean if self._n else math.nan

    @property
    def std(self) -> float:
        """Population standard deviation (ddof=0), as in the baseline."""
        return math.sqrt(self._m2 / self._n) if self._n else math.nan

    @property
    def min(self) -> float:
        return self._min if self._n else math.nan

    @property
    def max(self) -> float:
        return self._max if self._n else math.nan

    @property
    def sample(self) -> np.ndarray:
        return self._sample.copy()

    @property
    def nbytes(self) -> int:
        """Bytes held in arrays: bounded by the baseline's bins and `sample_size`, not by rows."""
        return int(self._edges.nbytes + self._cells.nbytes + self._sample.nbytes + self._keys.nbytes)


class CategoricalAccumulator:
    """Streams a window of one categorical feature (or predicted labels) against its baseline.

    Counts are kept per baseline category; a category outside them (never seen, or folded into
    `__other__` when the baseline was built) counts under `__other__`, so the statistics compare like
    with like. `unseen` additionally records the first `max_unseen` new category names with their
    counts (for the report; best effort, and which names make it in can depend on the chunking once the
    bound is reached). None and NaN are `invalid`.
    """

    def __init__(self, baseline: CategoricalBaseline, *, max_unseen: int = 50) -> None:
        self.baseline = baseline
        names = np.asarray(baseline.categories, dtype=str)
        self._order = np.argsort(names, kind="stable")
        self._sorted = names[self._order]
        self._counts = np.zeros(names.size, dtype=np.int64)
        self._other = baseline.categories.index(OTHER)
        self._max_unseen = max_unseen
        self._unseen: dict[str, int] = {}
        self._invalid = 0

    def update(self, values: np.ndarray | Sequence[object]) -> None:
        cats, bad = as_categories(values)
        self._invalid += bad
        if cats.size == 0:
            return
        uniq, counts = np.unique(cats, return_counts=True)
        self._add(uniq, counts)

    def update_codes(self, codes: np.ndarray, categories: Sequence[str]) -> None:
        """A chunk given as integer codes into `categories` (a capture frame's categorical column):
        one bincount instead of one string per row."""
        counts = np.bincount(np.asarray(codes, dtype=np.int64), minlength=len(categories))
        keep = counts > 0
        self._add(np.asarray(categories, dtype=str)[keep], counts[keep])

    def _add(self, uniq: np.ndarray, counts: np.ndarray) -> None:
        """Counts of distinct category names."""
        if uniq.size == 0:
            return
        order = np.argsort(uniq, kind="stable")
        uniq, counts = uniq[order], counts[order]
        pos = np.minimum(np.searchsorted(self._sorted, uniq), self._sorted.size - 1)
        hit = self._sorted[pos] == uniq
        self._counts[self._order[pos[hit]]] += counts[hit]     # uniq has no repeats: plain += is exact
        miss = ~hit
        self._counts[self._other] += int(counts[miss].sum())
        self._record_unseen(uniq[miss], counts[miss])

    def _record_unseen(self, names: np.ndarray, counts: np.ndarray) -> None:
        if names.size == 0:
            return
        known = np.isin(names, np.asarray(list(self._unseen), dtype=str)) if self._unseen else \
            np.zeros(names.size, dtype=bool)
        for name, c in zip(names[known].tolist(), counts[known].tolist(), strict=True):   # <= max_unseen
            self._unseen[name] += c
        room = self._max_unseen - len(self._unseen)
        if room > 0:
            fresh = np.flatnonzero(~known)[:room]
            for name, c in zip(names[fresh].tolist(), counts[fresh].tolist(), strict=True):
                self._unseen[name] = c

    @property
    def n(self) -> int:
        return int(self._counts.sum())

    @property
    def invalid(self) -> int:
        return self._invalid

    @property
    def cell_counts(self) -> np.ndarray:
        """Counts in the baseline's category order (`baseline.categories`)."""
        return self._counts.copy()

    @property
    def counts(self) -> dict[str, int]:
        return dict(zip(self.baseline.categories, self._counts.tolist(), strict=True))

    @property
    def unseen(self) -> dict[str, int]:
        return dict(self._unseen)

    @property
    def nbytes(self) -> int:
        return int(self._sorted.nbytes + self._order.nbytes + self._counts.nbytes)


Accumulator = NumericAccumulator | CategoricalAccumulator

# ---------------------------------------------------------------------------------------------------
# Verdicts


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Thresholds(_Model):
    """When a feature, and a dataset, count as drifted. A statistic counts only with both its effect size
    and significance (see the module docstring)."""

    psi: float = Field(default=0.2, gt=0, description="PSI at or above it is a shift")
    js: float = Field(default=0.1, gt=0, le=1, description="JS distance (base 2) at or above it is a shift")
    ks_statistic: float = Field(default=0.1, ge=0, le=1,
                                description="effect-size floor: a significant KS counts only with D >= this")
    pvalue: float = Field(default=0.05, gt=0, lt=1,
                          description="significance level of the KS and chi-square tests")
    min_samples: int = Field(default=200, ge=1, description="fewer valid values: insufficient_data")
    dataset_share: float = Field(default=0.5, gt=0, le=1,
                                 description="the dataset drifts when at least this share of features do")
    invalid_share: float = Field(default=0.05, gt=0, le=1,
                                 description="share of NaN/Inf/missing values in a window that is drift in "
                                             "itself (a broken feature pipeline is not 'insufficient data')")
    psi_bins: int = Field(default=10, ge=2,
                          description="PSI, JS and chi-square of a numeric feature are computed on about "
                                      "this many equal-frequency bins (the baseline's, merged); the "
                                      "thresholds above are calibrated for ~10 bins, finer bins inflate "
                                      "their noise")
    ks_max_bin_error: float = Field(default=0.02, gt=0, le=1,
                                    description="above this binning error bound, the KS is computed exactly "
                                                "on the baseline sample and the window's sample instead")
    psi_eps: float = Field(default=1e-4, gt=0, lt=1)
    accuracy_drop: float = Field(default=0.03, gt=0, le=1,
                                 description="a classifier's accuracy this far (absolute, 0.03 = 3 points) "
                                             "below its baseline accuracy is an accuracy drift")
    error_rise: float = Field(default=0.1, gt=0,
                              description="a regression's mean absolute error this much above its baseline "
                                          "MAE (relative, 0.1 = +10%) is an accuracy drift")
    min_feedback: int = Field(default=30, ge=1,
                              description="fewer predictions joined with feedback: the accuracy is "
                                          "insufficient_data")


class FeatureDrift(_Model):
    name: str
    kind: Literal["numeric", "categorical"]
    verdict: Verdict
    drifted: bool
    n: int = Field(description="valid values in the window")
    invalid: int = Field(description="NaN/Inf/missing values in the window, excluded from the statistics")
    psi: float | None = None
    js: float | None = None
    ks_statistic: float | None = None
    ks_pvalue: float | None = None
    ks_method: Literal["binned", "sample"] | None = None
    ks_error_bound: float | None = Field(default=None, description="binned KS: the exact statistic lies "
                                         "in [ks_statistic, ks_statistic + ks_error_bound]")
    chi2_statistic: float | None = None
    chi2_dof: int | None = None
    chi2_pvalue: float | None = None
    reasons: list[str] = Field(default_factory=list)


class DatasetDrift(_Model):
    verdict: Verdict
    drifted: bool
    n_features: int
    n_drifted: int
    n_insufficient: int
    share: float = Field(description="drifted features / features")
    features: list[FeatureDrift]
    prediction: FeatureDrift | None = None
    thresholds: Thresholds


def _coarse_groups(props: np.ndarray, groups: int) -> np.ndarray:
    """Bin -> group, merging consecutive equal-frequency bins into about `groups` groups by the reference
    CDF at each bin's start (bins are never split, so a group is a union of whole bins)."""
    start = np.concatenate([[0.0], np.cumsum(props)[:-1]])
    g = np.minimum(np.floor(start * groups + 1e-9).astype(np.int64), groups - 1)
    return np.unique(g, return_inverse=True)[1]


def _g(x: float) -> str:
    return f"{x:.3g}"


def _judge(name: str, kind: Literal["numeric", "categorical"], acc: Accumulator, th: Thresholds,
           stats: dict[str, object], chi: ChiSquare | None, psi_v: float, js_v: float,
           ks: KS | None) -> FeatureDrift:
    n, invalid = acc.n, acc.invalid
    total = n + invalid
    reasons: list[str] = []
    if total >= th.min_samples and invalid / total >= th.invalid_share:
        reasons.append(f"{invalid} of {total} values invalid (NaN/Inf/missing), "
                       f"share >= {_g(th.invalid_share)}")
    if n >= th.min_samples and chi is not None:
        test = f"(chi-square p {_g(chi.pvalue)} < {_g(th.pvalue)})"
        if psi_v >= th.psi and chi.pvalue < th.pvalue:
            reasons.append(f"psi {_g(psi_v)} >= {_g(th.psi)} {test}")
        if js_v >= th.js and chi.pvalue < th.pvalue:
            reasons.append(f"js {_g(js_v)} >= {_g(th.js)} {test}")
        if ks is not None and ks.pvalue < th.pvalue and ks.statistic >= th.ks_statistic:
            reasons.append(f"ks {_g(ks.statistic)} >= {_g(th.ks_statistic)} "
                           f"(p {_g(ks.pvalue)} < {_g(th.pvalue)})")
    if reasons:
        verdict: Verdict = "drift"
    elif n >= th.min_samples:
        verdict = "no_drift"
    else:
        verdict = "insufficient_data"
        reasons.append(f"{n} valid values < min_samples {th.min_samples}")
    return FeatureDrift(name=name, kind=kind, verdict=verdict, drifted=verdict == "drift", n=n,
                        invalid=invalid, reasons=reasons, **stats)  # type: ignore[arg-type]


def feature_drift(name: str, baseline: NumericBaseline | CategoricalBaseline, acc: Accumulator | None,
                  thresholds: Thresholds | None = None) -> FeatureDrift:
    """The verdict on one feature: its window (`acc`, None when the window had no such column) against its
    baseline."""
    th = thresholds or Thresholds()
    kind = baseline.kind
    if acc is None:
        return FeatureDrift(name=name, kind=kind, verdict="insufficient_data", drifted=False, n=0, invalid=0,
                            reasons=["no values in the window"])
    if acc.baseline is not baseline and acc.baseline != baseline:
        raise ValueError(f"feature {name!r}: the accumulator was built on a different baseline")
    stats: dict[str, object] = {}
    chi: ChiSquare | None = None
    ks: KS | None = None
    psi_v = js_v = 0.0
    if acc.n > 0:
        if isinstance(acc, NumericAccumulator):
            assert isinstance(baseline, NumericBaseline)
            bound = baseline.ks_error_bound
            if bound <= th.ks_max_bin_error:
                ks = ks_from_bins(baseline.cell_proportions(), acc.cell_counts, baseline.count)
                stats.update(ks_method="binned", ks_error_bound=bound)
            else:
                ks = ks_exact(np.asarray(baseline.sample), acc.sample)
                stats.update(ks_method="sample")
            stats.update(ks_statistic=ks.statistic, ks_pvalue=ks.pvalue)
            props = np.asarray(baseline.proportions, dtype=np.float64)
            groups = _coarse_groups(props, th.psi_bins)
            ref = np.bincount(groups, weights=props)
            cur = np.bincount(groups, weights=acc.bin_counts.astype(np.float64))
        else:
            assert isinstance(baseline, CategoricalBaseline)
            ref = np.asarray(list(baseline.proportions.values()), dtype=np.float64)
            cur = acc.cell_counts.astype(np.float64)
        chi = chi_square(np.rint(ref * baseline.count), cur)
        psi_v, js_v = psi(ref, cur, th.psi_eps), js_distance(ref, cur)
        stats.update(psi=psi_v, js=js_v, chi2_statistic=chi.statistic, chi2_dof=chi.dof,
                     chi2_pvalue=chi.pvalue)
    return _judge(name, kind, acc, th, stats, chi, psi_v, js_v, ks)


def evaluate(baseline: Baseline, accumulators: Mapping[str, Accumulator],
             thresholds: Thresholds | None = None, *, prediction: Accumulator | None = None) -> DatasetDrift:
    """The drift verdict of a window: one `FeatureDrift` per baseline feature (a feature missing from
    `accumulators` is `insufficient_data`), then the dataset's. The dataset drifts when at least
    `dataset_share` of its features drift; it is `insufficient_data` (not `no_drift`) when the features
    without enough data could still make that share. Prediction drift is reported beside the features,
    not counted among them."""
    th = thresholds or Thresholds()
    features = baseline.features
    unknown = set(accumulators) - set(features)
    if unknown:
        raise ValueError(f"accumulators for features the baseline does not have: {sorted(unknown)}")
    results = [feature_drift(name, fb, accumulators.get(name), th) for name, fb in features.items()]
    pred = None
    if prediction is not None:
        if baseline.prediction is None:
            raise ValueError("the baseline has no prediction distribution")
        pred = feature_drift("prediction", baseline.prediction, prediction, th)
    total = len(results)
    drifted = sum(r.verdict == "drift" for r in results)
    insufficient = sum(r.verdict == "insufficient_data" for r in results)
    needed = max(1, math.ceil(th.dataset_share * total - 1e-9))
    if total and drifted >= needed:
        verdict: Verdict = "drift"
    elif not total or drifted + insufficient >= needed:
        verdict = "insufficient_data"
    else:
        verdict = "no_drift"
    return DatasetDrift(verdict=verdict, drifted=verdict == "drift", n_features=total, n_drifted=drifted,
                        n_insufficient=insufficient, share=drifted / total if total else 0.0,
                        features=results, prediction=pred, thresholds=th)
