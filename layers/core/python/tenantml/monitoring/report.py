"""Drift reports: a JSON document for machines and a self-contained HTML page for people (inline CSS and
SVG charts: no scripts, fonts or CDNs, so it opens offline and from an S3 download).

Per feature: the verdict with its reasons, the statistics (PSI, JS, KS with p-value and its binning
error bound, chi-square), counts of valid and invalid values, schema mismatches, and a chart of the
reference against the current window (about ten equal-reference-frequency bins for a numeric feature,
the categories for a categorical one).
"""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np

from tenantml.events import event_time
from tenantml.monitoring.baseline import CategoricalBaseline, NumericBaseline
from tenantml.monitoring.stats import CategoricalAccumulator, NumericAccumulator, Thresholds

CHART_BINS = 10



def _finite(x: Any) -> Any:
    return None if isinstance(x, float) and not math.isfinite(x) else x


def _numeric_chart(base: NumericBaseline, acc: NumericAccumulator) -> dict[str, Any]:
    props = np.asarray(base.proportions)
    start = np.concatenate([[0.0], np.cumsum(props)[:-1]])
    group = np.minimum(np.floor(start * CHART_BINS + 1e-9).astype(int), CHART_BINS - 1)
    ref = np.bincount(group, weights=props, minlength=CHART_BINS)
    counts = acc.bin_counts.astype(float)
    cur = np.bincount(group, weights=counts, minlength=CHART_BINS)
    cur = cur / cur.sum() if cur.sum() else cur
    edges = np.asarray(base.edges)
    labels = []
    for g in range(CHART_BINS):
        members = np.flatnonzero(group == g)
        if members.size:
            lo, hi = edges[members[0]], edges[members[-1] + 1]
            labels.append(f"{lo:.3g}..{hi:.3g}" if math.isfinite(lo) and math.isfinite(hi)
                          else (f"< {hi:.3g}" if math.isfinite(hi) else f">= {lo:.3g}"))
        else:
            labels.append("")
    keep = [i for i, label in enumerate(labels) if label]
    return {"labels": [labels[i] for i in keep], "reference": [round(float(ref[i]), 6) for i in keep],
            "current": [round(float(cur[i]), 6) for i in keep]}


def _categorical_chart(base: CategoricalBaseline, acc: CategoricalAccumulator) -> dict[str, Any]:
    counts = acc.cell_counts.astype(float)
    cur = counts / counts.sum() if counts.sum() else counts
    return {"labels": base.categories, "reference": [round(v, 6) for v in base.proportions.values()],
            "current": [round(float(v), 6) for v in cur]}


def report_json(job: Any, window: Any | None, thresholds: Thresholds, *, reason: str | None = None,
                ) -> dict[str, Any]:
    """The report of one drift check (`job`: a DriftJob; `window`: the filled Window, or None when there
    was nothing to compare with, `reason` saying why)."""
    head = {"tenant": job.tenant, "model": job.model, "version": job.version,
            "window": {"start": event_time(job.window_start), "end": event_time(job.window_end)},
            "generated_for": event_time(job.window_end), "check_id": job.change_id}
    if window is None:
        return {**head, "verdict": "no_baseline", "summary": reason or "no baseline", "rows": 0, "frames": 0,
                "share": 0.0, "n_drifted": 0, "features": [], "prediction": None, "schema_mismatch": {},
                "drift": {"data": False, "prediction": False}, "thresholds": thresholds.model_dump()}
    result = window.evaluate(thresholds)
    accs = window.features
    features = []
    for f in result.features:
        base = window.baseline.features[f.name]
        acc = accs[f.name]
        chart = _numeric_chart(base, acc) if isinstance(base, NumericBaseline) \
            else _categorical_chart(base, acc)
        features.append({**{k: _finite(v) for k, v in f.model_dump().items()}, "chart": chart})
    prediction = None
    if result.prediction is not None and window.prediction is not None:
        base = window.baseline.prediction
        chart = _numeric_chart(base, window.prediction) if isinstance(base, NumericBaseline) \
            else _categorical_chart(base, window.prediction)
        prediction = {**{k: _finite(v) for k, v in result.prediction.model_dump().items()}, "chart": chart}
    prediction_drift = bool(prediction and prediction["verdict"] == "drift")
    drifted = [f["name"] for f in features if f["verdict"] == "drift"]
    if result.verdict == "drift":
        summary = f"{len(drifted)} of {result.n_features} features drifted: {', '.join(drifted)}"
    elif result.verdict == "insufficient_data":
        summary = f"not enough data to judge ({window.counts.rows} rows; at least {thresholds.min_samples} " \
                  "valid values per feature are needed)"
    else:
        summary = f"no drift in {result.n_features} features over {window.counts.rows} rows"
    if prediction_drift:
        summary += "; the prediction distribution drifted"
    return {**head, "verdict": result.verdict, "summary": summary, "rows": window.counts.rows,
            "frames": window.counts.frames, "share": result.share, "n_drifted": result.n_drifted,
            "features": features, "prediction": prediction,
            "schema_mismatch": dict(window.counts.schema_mismatch),
            "drift": {"data": result.verdict == "drift", "prediction": prediction_drift},
            "thresholds": thresholds.model_dump()}


# --- HTML --------------------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem;color:#1f2328;max-width:70rem}
h1{font-size:1.4rem;margin:0 0 .3rem} h2{font-size:1.1rem;margin:1.6rem 0 .4rem}
.verdict{display:inline-block;padding:.15rem .6rem;border-radius:1rem;font-weight:600}
.drift{background:#ffebe9;color:#a40e26}.no_drift{background:#dafbe1;color:#116329}
.insufficient_data,.no_baseline{background:#fff8c5;color:#7d4e00}
table{border-collapse:collapse;margin:.5rem 0} td,th{padding:.25rem .6rem;border-bottom:1px solid #d0d7de;
text-align:left} th{background:#f6f8fa} .num{text-align:right;font-variant-numeric:tabular-nums}
.feature{border:1px solid #d0d7de;border-radius:.5rem;padding:.8rem 1rem;margin:1rem 0}
.legend span{display:inline-block;width:.8rem;height:.8rem;margin:0 .3rem 0 1rem;vertical-align:middle}
.muted{color:#656d76}
"""


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _chart_svg(chart: dict[str, Any]) -> str:
    labels, ref, cur = chart["labels"], chart["reference"], chart["current"]
    n = max(len(labels), 1)
    width, height, pad = 640, 180, 30
    top = max([*ref, *cur, 1e-9])
    slot = (width - pad) / n
    bar = slot * 0.38
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 40}" '
             f'role="img" aria-label="reference (grey) and current (blue) distribution">',
             f'<line x1="{pad}" y1="{height}" x2="{width}" y2="{height}" stroke="#8c959f"/>']
    for i, (label, r, c) in enumerate(zip(labels, ref, cur, strict=True)):
        x = pad + i * slot + slot * 0.1
        for j, (value, color) in enumerate(((r, "#8c959f"), (c, "#0969da"))):
            h = (height - 10) * value / top
            parts.append(f'<rect x="{x + j * bar:.1f}" y="{height - h:.1f}" width="{bar:.1f}" '
                         f'height="{h:.1f}" fill="{color}"><title>{html.escape(str(label))}: '
                         f'{"reference" if j == 0 else "current"} {value:.3f}</title></rect>')
        parts.append(f'<text x="{x + bar:.1f}" y="{height + 14}" font-size="10" text-anchor="middle">'
                     f'{html.escape(str(label))[:14]}</text>')
    parts.append(f'<text x="2" y="12" font-size="10">{top:.2f}</text></svg>')
    return "".join(parts)


def _feature_html(f: dict[str, Any]) -> str:
    stats = [("valid values", f["n"]), ("invalid (NaN/Inf/missing)", f["invalid"]), ("PSI", f["psi"]),
             ("Jensen-Shannon distance", f["js"]), ("KS statistic", f["ks_statistic"]),
             ("KS p-value", f["ks_pvalue"]), ("KS binning error bound", f.get("ks_error_bound")),
             ("chi-square", f["chi2_statistic"]), ("chi-square p-value", f["chi2_pvalue"])]
    rows = "".join(f'<tr><td>{k}</td><td class="num">{_fmt(v)}</td></tr>' for k, v in stats if v is not None)
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in f.get("reasons") or [])
    return (f'<div class="feature"><h2>{html.escape(f["name"])} <span class="muted">({f["kind"]})</span> '
            f'<span class="verdict {f["verdict"]}">{f["verdict"].replace("_", " ")}</span></h2>'
            f'<div class="legend muted"><span style="background:#8c959f"></span>reference'
            f'<span style="background:#0969da"></span>current window</div>{_chart_svg(f["chart"])}'
            f'<table>{rows}</table>{f"<ul>{reasons}</ul>" if reasons else ""}</div>')


def _trend_svg(trend: list[dict[str, Any]], metric: str, baseline: float | None) -> str:
    """A line of the metric over the version's windows (oldest left), the baseline dashed."""
    points = [(t["window_end"], float(t["value"])) for t in trend if t.get("value") is not None]
    if not points:
        return ""
    width, height, pad = 640, 140, 34
    values = [v for _, v in points] + ([baseline] if baseline is not None else [])
    lo, hi = min(values), max(values)
    span = (hi - lo) or max(abs(hi), 1e-9) * 0.1
    lo, hi = lo - span * 0.15, hi + span * 0.15
    step = (width - 2 * pad) / max(len(points) - 1, 1)

    def y(v: float) -> float:
        return height - 10 - (height - 20) * (v - lo) / (hi - lo)
    fmt = (lambda v: f"{v:.1%}") if metric == "accuracy" else (lambda v: f"{v:.4g}")
    xy = [(pad + i * step, y(v)) for i, (_, v) in enumerate(points)]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 20}" role="img" '
             f'aria-label="{metric} per window">']
    if baseline is not None:
        yb = y(baseline)
        parts.append(f'<line x1="{pad}" y1="{yb:.1f}" x2="{width - pad}" y2="{yb:.1f}" stroke="#8c959f" '
                     f'stroke-dasharray="4 3"><title>baseline {fmt(baseline)}</title></line>')
    parts.append('<polyline fill="none" stroke="#0969da" stroke-width="2" points="'
                 + " ".join(f"{a:.1f},{b:.1f}" for a, b in xy) + '"/>')
    for (end, v), (a, b) in zip(points, xy, strict=True):
        parts.append(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="#0969da"><title>'
                     f'{html.escape(str(end))}: {fmt(v)}</title></circle>')
    parts.append(f'<text x="2" y="12" font-size="10">{fmt(hi)}</text>'
                 f'<text x="2" y="{height}" font-size="10">{fmt(lo)}</text></svg>')
    return "".join(parts)


def _accuracy_html(acc: dict[str, Any] | None) -> str:
    if not acc:
        return ""
    verdict = {"drop": "drift", "ok": "no_drift"}.get(acc["verdict"], "insufficient_data")
    stats = [(acc["metric"], acc["value"]), ("baseline", acc["baseline"]), ("change", acc["change"]),
             ("RMSE", acc.get("rmse")), ("predictions joined with feedback", acc["matched"]),
             ("feedback items", acc["feedback"]),
             ("feedback without a captured prediction", acc["unmatched"]),
             ("joined rows of the wrong kind", acc["kind_mismatch"])]
    rows = "".join(f'<tr><td>{k}</td><td class="num">{_fmt(v)}</td></tr>' for k, v in stats if v is not None)
    return (f'<div class="feature"><h2>Ground truth: {acc["metric"]} <span class="verdict {verdict}">'
            f'{html.escape(acc["verdict"].replace("_", " "))}</span></h2><p>{html.escape(acc["reason"])}</p>'
            f'<p class="muted">per window, this version (dashed: baseline)</p>'
            f'{_trend_svg(acc.get("trend") or [], acc["metric"], acc["baseline"])}'
            f'<table>{rows}</table></div>')


def render_html(report: dict[str, Any]) -> str:
    title = f'Drift report: {report["model"]} version {report["version"]}'
    mismatch = report.get("schema_mismatch") or {}
    mismatch_html = "" if not mismatch else (
        "<h2>Schema mismatches</h2><p>Rows whose capture lacked a baseline feature (counted, not dropped):"
        "</p><table>" + "".join(f'<tr><td>{html.escape(k)}</td><td class="num">{v}</td></tr>'
                                for k, v in sorted(mismatch.items())) + "</table>")
    features = "".join(_feature_html(f) for f in report["features"])
    prediction = _feature_html({**report["prediction"], "name": "prediction"}) \
        if report.get("prediction") else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_CSS}</style></head>'
            f'<body><h1>{html.escape(title)}</h1><p class="muted">tenant {html.escape(report["tenant"])} · '
            f'window {report["window"]["start"]} to {report["window"]["end"]} · {report["rows"]} rows in '
            f'{report["frames"]} capture objects</p><p><span class="verdict {report["verdict"]}">'
            f'{report["verdict"].replace("_", " ")}</span> {html.escape(report["summary"])}</p>'
            f'{mismatch_html}{_accuracy_html(report.get("accuracy"))}{prediction}{features}</body></html>')
