"""The `work-item-classifier` example model: two linear heads (category, urgency) on the shared MiniLM
sentence embeddings, plus `build_prototype_head` for tenants who register a few examples per label.

A head is a kilobyte-sized `head.json` (format in `tenantml.serving.heads`) that the server applies to
the backbone's embeddings: a tenant-specific classifier costs no extra ONNX session.

Training (`build_classifier`), deterministic for identical inputs:

1. Read `data/work_items.csv` (text, category, urgency; see data/README.md) and embed every text once
   with the given embedder (L2-normalised float32 [n, d]).
2. Stratified (category x urgency) split, 25% held out. On the training part, pick the inverse
   regularisation C of a multinomial LogisticRegression (lbfgs, class_weight="balanced") per head by
   5-fold stratified cross-validated macro-F1.
3. Fit on the training part, write that head to JSON, load it back with `tenantml.serving.heads` and
   score the held-out part through `apply_head`: the metrics come from the same code path as serving,
   including the 6-decimal rounding of the weights.
4. Refit on all rows with the chosen C and write head.json + manifest.json.
5. With a token counter (the backbone's tokenizer; `tenantml models build` passes one), also write the
   drift baseline.json (`text_baseline`): the derived text features of all rows (token counts, unknown
   rate, the backbone embeddings on their first 3 principal directions), and as the prediction the first
   label output, `category` (what the capture writes as `prediction`): the held-out head's predictions on
   the held-out part, with their accuracy (the held-out accuracy above, not the training data's).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tenantml.errors import BadRequest
from tenantml.example_models import BuildError
from tenantml.example_models.heads import (
    DEFAULT_TEMPERATURE,
    canonical_json,
    linear_head,
    linear_output,
    prototype_head,
    prototype_output,
    write_artifact,
    write_manifest,
)
from tenantml.example_models.text_baseline import TokenCounter, summary
from tenantml.manifest import NAME_RE, BackboneRef, Manifest, TensorSpec, sha256_bytes
from tenantml.serving.heads import apply_head, load_head

Embedder = Callable[[list[str]], np.ndarray]

MODEL_NAME = "work-item-classifier"
DATA_FILE = Path(__file__).resolve().parent / "data" / "work_items.csv"
# Output name -> labels, in the order the head (and so the *_probs columns) uses.
LABELS: dict[str, tuple[str, ...]] = {
    "category": ("bug", "feature_request", "question", "task"),
    "urgency": ("low", "medium", "high"),
}
SEED = 0
TEST_SIZE = 0.25
CV_FOLDS = 5
C_GRID: tuple[float, ...] = (0.25, 1.0, 4.0, 16.0, 64.0)
NORM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class WorkItems:
    texts: list[str]
    labels: dict[str, np.ndarray]  # output name -> int64 indices into LABELS[name]
    sha256: str


def load_work_items(path: Path = DATA_FILE) -> WorkItems:
    """Read the labelled CSV; unknown labels or empty texts are errors, not silently dropped."""
    raw = path.read_bytes()
    reader = csv.DictReader(io.StringIO(raw.decode("utf-8")))
    expected = ["text", *LABELS]
    if reader.fieldnames != expected:
        raise BuildError(detail=f"{path.name}: columns must be {expected}, got {reader.fieldnames}")
    texts: list[str] = []
    idx: dict[str, list[int]] = {name: [] for name in LABELS}
    for line, row in enumerate(reader, start=2):
        text = (row["text"] or "").strip()
        if not text:
            raise BuildError(detail=f"{path.name}:{line}: empty text")
        texts.append(text)
        for name, labels in LABELS.items():
            if row[name] not in labels:
                raise BuildError(detail=f"{path.name}:{line}: {name}={row[name]!r} is not one of {labels}")
            idx[name].append(labels.index(row[name]))
    return WorkItems(texts, {k: np.asarray(v, dtype=np.int64) for k, v in idx.items()}, sha256_bytes(raw))


def embed_checked(embed: Embedder, texts: Sequence[str]) -> np.ndarray:
    """Call the embedder and check its contract: float32 [n, d], finite, rows of unit L2 norm."""
    e = np.asarray(embed(list(texts)))
    if e.ndim != 2 or e.shape[0] != len(texts) or e.shape[1] < 1:
        raise BuildError(detail=f"embedder returned shape {e.shape} for {len(texts)} texts")
    e = e.astype(np.float32, copy=False)
    if not np.isfinite(e).all():
        raise BuildError(detail="embedder returned non-finite values")
    norms = np.linalg.norm(e.astype(np.float64), axis=1)
    if np.max(np.abs(norms - 1.0)) > NORM_TOLERANCE:
        raise BuildError(detail="embedder must return L2-normalised rows (heads are applied to unit vectors)")
    return e


def _logreg(c: float):
    from sklearn.linear_model import LogisticRegression

    # lbfgs on a multiclass target is multinomial: predict_proba == softmax(X @ coef_.T + intercept_).
    return LogisticRegression(C=c, class_weight="balanced", max_iter=5000)


def _choose_c(X: np.ndarray, y: np.ndarray, grid: Sequence[float]) -> tuple[float, list[list[float]]]:
    """Cross-validated macro-F1 per C on the training part only; ties go to the smaller C."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    if len(grid) == 1:
        return float(grid[0]), []
    folds = StratifiedKFold(n_splits=CV_FOLDS, shuffle=True, random_state=SEED)
    scores = {float(c): float(np.mean(cross_val_score(_logreg(c), X, y, cv=folds, scoring="f1_macro")))
              for c in sorted(grid)}
    best = max(scores, key=lambda c: (round(scores[c], 6), -c))
    return best, [[c, round(s, 4)] for c, s in scores.items()]


def _fit_head(X: np.ndarray, y: Mapping[str, np.ndarray], cs: Mapping[str, float]) -> dict:
    outputs = []
    for name, labels in LABELS.items():
        model = _logreg(cs[name]).fit(X, y[name])
        if list(model.classes_) != list(range(len(labels))):
            raise BuildError(detail=f"{name}: every label needs training rows, got classes {model.classes_}")
        outputs.append(linear_output(name, labels, model.coef_, model.intercept_))
    return linear_head(outputs, X.shape[1])


def _output_specs(labels: Mapping[str, Sequence[str]]) -> list[TensorSpec]:
    specs = []
    for name, labs in labels.items():
        specs.append(TensorSpec(name=name, datatype="BYTES", shape=[-1]))
        specs.append(TensorSpec(name=f"{name}_probs", datatype="FP32", shape=[-1, len(labs)]))
    return specs


TEXT_INPUT = [TensorSpec(name="text", datatype="BYTES", shape=[-1])]


def build_classifier(out_dir: Path, embed: Embedder, backbone: BackboneRef, *,
                     data: Path = DATA_FILE, c_grid: Sequence[float] = C_GRID,
                     count_tokens: TokenCounter | None = None) -> dict:
    """Train, evaluate and write `work-item-classifier` (head.json + manifest.json) into `out_dir`.

    Returns {"category": {"accuracy", "macro_f1"}, "urgency": {...}, "n_train", "n_test", "head_bytes"}
    with held-out figures, plus "C" (chosen per head) and "majority_accuracy" for context. With
    `count_tokens` (the backbone tokenizer's counts, `text_baseline.token_counter`) it also writes
    baseline.json (step 5 of the module docstring).
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
    from sklearn.model_selection import train_test_split

    items = load_work_items(data)
    X = embed_checked(embed, items.texts)
    n = len(items.texts)
    joint = items.labels["category"] * len(LABELS["urgency"]) + items.labels["urgency"]
    tr, te = train_test_split(np.arange(n), test_size=TEST_SIZE, stratify=joint, random_state=SEED)

    cs: dict[str, float] = {}
    cv: dict[str, list[list[float]]] = {}
    for name in LABELS:
        cs[name], cv[name] = _choose_c(X[tr], items.labels[name][tr], c_grid)

    train_labels = {k: v[tr] for k, v in items.labels.items()}
    held_out_head = load_head(canonical_json(_fit_head(X[tr], train_labels, cs)))
    predicted = apply_head(held_out_head, X[te])
    metrics: dict = {}
    facts: dict = {}
    for name, labels in LABELS.items():
        y_true = items.labels[name][te]
        y_pred = np.argmax(predicted[name][1], axis=1)
        majority = int(np.bincount(items.labels[name][tr], minlength=len(labels)).argmax())
        metrics[name] = {
            "accuracy": round(float(accuracy_score(y_true, y_pred)), 4),
            "macro_f1": round(float(f1_score(y_true, y_pred, average="macro")), 4),
        }
        facts[name] = {
            **metrics[name],
            "majority_accuracy": round(float(np.mean(y_true == majority)), 4),
            "C": cs[name],
            "cv_macro_f1": cv[name],  # [[C, mean macro-F1], ...] on the training split
            "confusion_matrix": confusion_matrix(y_true, y_pred, labels=list(range(len(labels)))).tolist(),
            "label_counts": dict(zip(labels, np.bincount(items.labels[name], minlength=len(labels)).tolist(),
                                     strict=True)),
        }
    metrics["n_train"] = int(len(tr))
    metrics["n_test"] = int(len(te))

    head_bytes = canonical_json(_fit_head(X, items.labels, cs))
    load_head(head_bytes)  # the artifact we ship must pass the server's validation
    entry = write_artifact(out_dir, "head.json", head_bytes)
    files = {"head.json": entry}
    baseline_facts = None
    if count_tokens is not None:
        from tenantml.monitoring.baseline import build_text_baseline

        first = next(iter(LABELS))        # the capture's `prediction`: the first label output
        counts = count_tokens(items.texts)
        baseline = build_text_baseline(
            counts.tokens, counts.unknown, X, embedding="backbone",
            predictions=[LABELS[first][i] for i in np.argmax(predicted[first][1], axis=1)],
            labels=[LABELS[first][i] for i in items.labels[first][te]])
        files["baseline.json"] = write_artifact(out_dir, "baseline.json", baseline.model_dump_json().encode())
        baseline_facts = {**summary(baseline), "prediction": first,
                          "prediction_rows": "the held-out split, predicted by the held-out head"}
    manifest = Manifest(
        name=MODEL_NAME,
        task="text-classification",
        description="Work item category (bug/feature_request/question/task) and urgency (low/medium/high): "
                    "linear heads on the shared sentence-embedding backbone.",
        inputs=TEXT_INPUT,
        outputs=_output_specs(LABELS),
        labels={k: list(v) for k, v in LABELS.items()},
        backbone=backbone,
        files=files,
        build={
            "head": "linear",
            "embedding_dim": int(X.shape[1]),
            "trainer": "sklearn LogisticRegression(lbfgs multinomial, class_weight=balanced); "
                       f"C by {CV_FOLDS}-fold CV macro-F1 on the training split; refit on all rows",
            "data": {"file": data.name, "sha256": items.sha256, "rows": n},
            "split": {"test_size": TEST_SIZE, "stratify": "category x urgency", "random_state": SEED},
            "metrics": {**facts, "n_train": metrics["n_train"], "n_test": metrics["n_test"]},
            "sklearn": _sklearn_version(),
            **({"baseline": baseline_facts} if baseline_facts is not None else {}),
        },
    )
    write_manifest(out_dir, manifest)
    metrics["head_bytes"] = entry.size
    metrics["C"] = cs
    metrics["majority_accuracy"] = {k: facts[k]["majority_accuracy"] for k in LABELS}
    return metrics


def build_prototype_head(out_dir: Path, embed: Embedder, backbone: BackboneRef,
                         examples: Mapping[str, Mapping[str, Sequence[str]]], name: str, *,
                         temperature: float = DEFAULT_TEMPERATURE) -> dict:
    """A tenant's few-shot classifier: one prototype per label (mean unit embedding of its examples).

    `examples` is {output name: {label: [example texts]}}; `name` is the model name for the manifest.
    Writes head.json + manifest.json into `out_dir`; returns {"head_bytes", "labels", "n_examples"}.
    """
    if not NAME_RE.fullmatch(name):
        raise BadRequest("invalid model name", detail=f"must match {NAME_RE.pattern}")
    if not examples:
        raise BadRequest("invalid examples", detail="examples: at least one output is required")
    outputs = []
    counts: dict[str, dict[str, int]] = {}
    dim = 0
    for output, per_label in examples.items():
        if len(per_label) < 2:
            raise BadRequest("invalid examples", detail=f"{output}: at least two labels are required")
        embedded = {}
        for label, texts in per_label.items():
            cleaned = [t.strip() for t in texts if t and t.strip()]
            if not cleaned:
                raise BadRequest("invalid examples",
                                 detail=f"{output}/{label}: at least one non-empty example is required")
            embedded[label] = embed_checked(embed, cleaned)
            dim = embedded[label].shape[1]
        outputs.append(prototype_output(output, embedded))
        counts[output] = {label: int(e.shape[0]) for label, e in embedded.items()}
    head_bytes = canonical_json(prototype_head(outputs, dim, temperature))
    try:
        head = load_head(head_bytes)  # validates names, labels and shapes exactly as serving will
    except BadRequest as exc:
        raise BadRequest("invalid examples", detail=exc.detail) from None
    entry = write_artifact(out_dir, "head.json", head_bytes)
    manifest = Manifest(
        name=name,
        task="text-classification",
        description="Prototype head (few-shot labels) on the shared sentence-embedding backbone.",
        inputs=TEXT_INPUT,
        outputs=_output_specs(head.labels),
        labels=head.labels,
        backbone=backbone,
        files={"head.json": entry},
        build={"head": "prototypes", "embedding_dim": dim, "temperature": temperature, "n_examples": counts},
    )
    write_manifest(out_dir, manifest)
    return {"head_bytes": entry.size, "labels": head.labels, "n_examples": counts}


def _sklearn_version() -> str:
    import sklearn

    return sklearn.__version__
