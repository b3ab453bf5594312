"""The `project-risk` example model: a tabular classifier (low / medium / high delivery risk) trained on
documented synthetic project data, exported to ONNX with skl2onnx.

Synthetic data (`generate`)
---------------------------
Each row is a project snapshot. Observed features, in column order (`FEATURES`):

=================  ===========================================================================
open_items         items not done: round(LogNormal(ln 60, 0.6)) clipped to [5, 600]
overdue_items      Binomial(open_items, sigmoid(-2.5 + 0.8 h))
blocked_items      Binomial(open_items, sigmoid(-3.2 + 0.6 h))
team_size          integer, uniform in [2, 15]
velocity           story points per sprint: round(team_size * LogNormal(ln 5, 0.3), 1)
days_to_deadline   integer, uniform in [3, 180]
scope_change_pct   scope added since the plan was fixed: round(Gamma(2, 8) - 5, 1)  (about -5 .. 80)
bug_ratio          share of open items that are bugs: round(Beta(2, 6), 3)
=================  ===========================================================================

`h ~ N(0, 1)` is an unobserved "team health" factor: it drives overdue and blocked items and also
enters the risk directly, so the features explain the label only partly (as with real projects).

Latent risk (documented formula)::

    load  = 3 * open_items / max(velocity * days_to_deadline / 14, 1)   # work left / capacity left
    z     = 1.2 ln(load) + 4 overdue/open + 6 blocked/open + 0.025 scope_change_pct
            + 2 bug_ratio + 0.3 h + N(0, 0.3)
    risk  = low if z < 0.85, high if z >= 2.5, medium otherwise           # about 40% / 35% / 25%

Labels are class indices into `RISK_LABELS` ("low", "medium", "high"): the model's classes are then
[0, 1, 2], so the ONNX probability columns are in exactly that order.

Model
-----
GradientBoostingClassifier (depth-3 trees, stochastic subsampling with a fixed seed: deterministic),
exported with skl2onnx (`zipmap=False`, input "features" FP32 [None, F]). HistGradientBoosting would
train faster, but skl2onnx 1.20's converter for it fails against onnx 1.23 (it writes numpy booleans
into an INTS attribute).

The build checks onnxruntime's probabilities against sklearn's `predict_proba` (max abs diff < 1e-4,
identical labels) before it writes model.onnx + manifest.json. Features are integers or rounded to
1-3 decimals, so every split threshold lies far from any float32 input value and the float32 tree
thresholds in ONNX decide exactly as sklearn's float64 ones. The ONNX "label" output is INT64, an
index into `labels["risk"]`; "probabilities" is FP32 [n, 3] in the same order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tenantml.example_models import BuildError
from tenantml.example_models.heads import write_artifact, write_manifest
from tenantml.manifest import Manifest, TensorSpec
from tenantml.monitoring import build_baseline

MODEL_NAME = "project-risk"
FEATURES: tuple[str, ...] = (
    "open_items", "overdue_items", "blocked_items", "team_size", "velocity",
    "days_to_deadline", "scope_change_pct", "bug_ratio",
)
RISK_LABELS: tuple[str, ...] = ("low", "medium", "high")
# Latent-score cut points (see the module docstring).
LOW_BELOW = 0.85
HIGH_FROM = 2.5

N_SAMPLES = 8000
DATA_SEED = 20240607
MODEL_SEED = 0
TEST_SIZE = 0.25
MODEL_PARAMS: dict[str, float | int] = {
    "n_estimators": 200, "max_depth": 3, "learning_rate": 0.1, "subsample": 0.8, "random_state": MODEL_SEED,
}
# Upper bounds for the exporter, which uses the lowest opsets the graph needs (recorded in the manifest);
# onnxruntime 1.31 implements all of them.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
ONNX_INPUT = "features"
ONNX_OUTPUTS = {"label": "label", "probabilities": "probabilities"}
MAX_ORT_DIFF = 1e-4


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def generate(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` synthetic project snapshots: X float32 [n, len(FEATURES)], y int64 indices into RISK_LABELS.

    Deterministic for a given (n, seed) (numpy PCG64).
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    rng = np.random.default_rng(seed)
    team_size = rng.integers(2, 16, size=n).astype(np.float64)
    velocity = np.round(team_size * rng.lognormal(np.log(5.0), 0.3, size=n), 1)
    open_items = np.clip(np.round(rng.lognormal(np.log(60.0), 0.6, size=n)), 5, 600)
    days_to_deadline = rng.integers(3, 181, size=n).astype(np.float64)
    health = rng.normal(size=n)
    n_open = open_items.astype(np.int64)
    overdue_items = rng.binomial(n_open, _sigmoid(-2.5 + 0.8 * health)).astype(np.float64)
    blocked_items = rng.binomial(n_open, _sigmoid(-3.2 + 0.6 * health)).astype(np.float64)
    scope_change_pct = np.round(rng.gamma(2.0, 8.0, size=n) - 5.0, 1)
    bug_ratio = np.round(rng.beta(2.0, 6.0, size=n), 3)
    noise = rng.normal(0.0, 0.3, size=n)

    load = 3.0 * open_items / np.maximum(velocity * days_to_deadline / 14.0, 1.0)
    z = (1.2 * np.log(load) + 4.0 * overdue_items / open_items + 6.0 * blocked_items / open_items
         + 0.025 * scope_change_pct + 2.0 * bug_ratio + 0.3 * health + noise)
    y = np.where(z < LOW_BELOW, 0, np.where(z >= HIGH_FROM, 2, 1)).astype(np.int64)

    columns = {
        "open_items": open_items, "overdue_items": overdue_items, "blocked_items": blocked_items,
        "team_size": team_size, "velocity": velocity, "days_to_deadline": days_to_deadline,
        "scope_change_pct": scope_change_pct, "bug_ratio": bug_ratio,
    }
    X = np.column_stack([columns[f] for f in FEATURES]).astype(np.float32)
    return X, y


def _model():
    from sklearn.ensemble import GradientBoostingClassifier

    return GradientBoostingClassifier(**MODEL_PARAMS)


def _to_onnx(model, n_features: int) -> bytes:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onx = convert_sklearn(
        model, name=MODEL_NAME, initial_types=[(ONNX_INPUT, FloatTensorType([None, n_features]))],
        options={id(model): {"zipmap": False}}, target_opset=TARGET_OPSET,
    )
    return onx.SerializeToString()


def _ort_check(onnx_bytes: bytes, model, X: np.ndarray) -> float:
    """Max |ORT probabilities - sklearn predict_proba| and label agreement; raises if they disagree."""
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = {o.name for o in sess.get_outputs()}
    if got != set(ONNX_OUTPUTS.values()):
        raise BuildError(detail=f"unexpected ONNX outputs {sorted(got)}")
    labels, probs = sess.run([ONNX_OUTPUTS["label"], ONNX_OUTPUTS["probabilities"]], {ONNX_INPUT: X})
    ref = model.predict_proba(X)
    diff = float(np.max(np.abs(probs.astype(np.float64) - ref)))
    if diff >= MAX_ORT_DIFF:
        raise BuildError(detail=f"onnxruntime and sklearn probabilities differ by {diff:.2e}")
    if not np.array_equal(labels.astype(np.int64), model.predict(X).astype(np.int64)):
        raise BuildError(detail="onnxruntime and sklearn labels differ")
    return diff


def build_risk(out_dir: Path, *, n: int = N_SAMPLES, seed: int = DATA_SEED) -> dict:
    """Train, check and export `project-risk` into `out_dir` (model.onnx + manifest.json); return metrics.

    Held-out metrics come from a stratified 25% split; the exported model is refit on all rows.
    """
    import sklearn
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
    from sklearn.model_selection import train_test_split

    X, y = generate(n, seed)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=TEST_SIZE, stratify=y, random_state=MODEL_SEED)
    held_out = _model().fit(X_tr, y_tr)
    if list(held_out.classes_) != list(range(len(RISK_LABELS))):
        raise BuildError(detail=f"expected classes 0..{len(RISK_LABELS) - 1}, got {held_out.classes_}")
    pred = held_out.predict(X_te)
    majority = float(np.mean(y_te == np.bincount(y_tr).argmax()))
    metrics: dict = {
        "accuracy": round(float(accuracy_score(y_te, pred)), 4),
        "macro_f1": round(float(f1_score(y_te, pred, average="macro")), 4),
        "majority_baseline_accuracy": round(majority, 4),
        "confusion_matrix": confusion_matrix(y_te, pred, labels=[0, 1, 2]).tolist(),
        "n_train": int(len(y_tr)),
        "n_test": int(len(y_te)),
        "label_counts": dict(zip(RISK_LABELS, np.bincount(y, minlength=3).tolist(), strict=True)),
    }

    model = _model().fit(X, y)
    onnx_bytes = _to_onnx(model, X.shape[1])
    metrics["ort_max_abs_diff"] = _ort_check(onnx_bytes, model, X)
    entry = write_artifact(out_dir, "model.onnx", onnx_bytes)
    # The drift baseline: the held-out rows (what the model was judged on), its predictions on them and
    # the true labels (so the baseline accuracy is the held-out accuracy above).
    baseline = build_baseline({name: X_te[:, i] for i, name in enumerate(FEATURES)},
                              predictions=[RISK_LABELS[k] for k in pred],
                              labels=[RISK_LABELS[k] for k in y_te])
    baseline_entry = write_artifact(out_dir, "baseline.json", baseline.model_dump_json().encode())

    manifest = Manifest(
        name=MODEL_NAME,
        task="tabular-classification",
        description="Delivery risk of a project (low/medium/high) from 8 tracker features "
                    "(gradient-boosted trees trained on documented synthetic data).",
        inputs=[TensorSpec(name=ONNX_INPUT, datatype="FP32", shape=[-1, len(FEATURES)])],
        outputs=[TensorSpec(name="risk", datatype="BYTES", shape=[-1]),
                 TensorSpec(name="risk_probs", datatype="FP32", shape=[-1, len(RISK_LABELS)])],
        labels={"risk": list(RISK_LABELS)},
        features=list(FEATURES),
        files={"model.onnx": entry, "baseline.json": baseline_entry},
        build={
            "onnx_outputs": dict(ONNX_OUTPUTS),
            # "label" is INT64 [n]: an index into labels["risk"]; "probabilities" is FP32 [n, 3].
            "onnx_label_encoding": "index",
            "trainer": {"estimator": "sklearn.ensemble.GradientBoostingClassifier", "params": MODEL_PARAMS},
            "data": {"generator": "tenantml.example_models.risk.generate", "n": n, "seed": seed,
                     "formula": "see tenantml/example_models/risk.py docstring",
                     "cut_points": {"low_below": LOW_BELOW, "high_from": HIGH_FROM}},
            "split": {"test_size": TEST_SIZE, "stratify": "risk", "random_state": MODEL_SEED},
            "metrics": {k: metrics[k] for k in ("accuracy", "macro_f1", "majority_baseline_accuracy",
                                                "confusion_matrix", "n_train", "n_test", "label_counts")},
            "ort_max_abs_diff": round(metrics["ort_max_abs_diff"], 9),
            "opset_import": _opsets(onnx_bytes),
            "versions": {"scikit-learn": sklearn.__version__, "skl2onnx": _skl2onnx_version()},
        },
    )
    write_manifest(out_dir, manifest)
    metrics["model_bytes"] = entry.size
    metrics["sha256"] = entry.sha256
    return metrics


def _opsets(onnx_bytes: bytes) -> dict[str, int]:
    """The opsets the exported graph actually imports (skl2onnx lowers to the minimum it needs)."""
    import onnx

    return {op.domain or "ai.onnx": int(op.version) for op in onnx.load_from_string(onnx_bytes).opset_import}


def _skl2onnx_version() -> str:
    import skl2onnx

    return skl2onnx.__version__
