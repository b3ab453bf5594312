"""Drift monitoring: the pure statistics core.

`baseline` summarises a model version's reference data into baseline.json (bins, proportions, a bounded
sample); `stats` accumulates a window of captured traffic in memory that does not grow with its rows and
compares it with the baseline (PSI, Jensen-Shannon, KS, chi-square) into a drift verdict. Neither reads
files, queues or the environment: the drift function wires them to capture files and reports.
"""

import importlib
from typing import Any

# Names re-exported lazily (PEP 562): the inference function imports only monitoring.capture, and must not
# pay ~150 ms of cold start for the statistics' pydantic models it never uses.
_EXPORTS = {
    **dict.fromkeys(("OTHER", "Baseline", "CategoricalBaseline", "NumericBaseline", "Performance",
                     "TextBaseline", "TextProjection", "build_baseline", "build_text_baseline"),
                    "tenantml.monitoring.baseline"),
    **dict.fromkeys(("CategoricalAccumulator", "DatasetDrift", "FeatureDrift", "NumericAccumulator",
                     "Thresholds", "chi_square", "evaluate", "js_distance", "ks_from_bins", "psi"),
                    "tenantml.monitoring.stats"),
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tenantml.monitoring' has no attribute {name!r}")


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
    "TextBaseline",
    "TextProjection",
    "Thresholds",
    "build_baseline",
    "build_text_baseline",
    "chi_square",
    "evaluate",
    "js_distance",
    "ks_from_bins",
    "psi",
]
