"""Drift monitoring: the pure statistics core.

`baseline` summarises a model version's reference data into baseline.json (bins, proportions, a bounded
sample); `stats` accumulates a window of captured traffic in memory that does not grow with its rows and
compares it with the baseline (PSI, Jensen-Shannon, KS, chi-square) into a drift verdict. Neither reads
files, queues or the environment: the drift function wires them to capture files and reports.
"""

from tenantml.monitoring.baseline import (
    OTHER,
    Baseline,
    CategoricalBaseline,
    NumericBaseline,
    Performance,
    build_baseline,
)
from tenantml.monitoring.stats import (
    CategoricalAccumulator,
    DatasetDrift,
    FeatureDrift,
    NumericAccumulator,
    Thresholds,
    chi_square,
    evaluate,
    js_distance,
    ks_from_bins,
    psi,
)

__all__ = [
    "OTHER",
    "Baseline",
    "CategoricalAccumulator",
    "CategoricalBaseline",
    "DatasetDrift",
    "FeatureDrift",
    "NumericAccumulator",
    "NumericBaseline",
    "Performance",
    "Thresholds",
    "build_baseline",
    "chi_square",
    "evaluate",
    "js_distance",
    "ks_from_bins",
    "psi",
]
