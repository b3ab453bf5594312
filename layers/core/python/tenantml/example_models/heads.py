"""Build-time helpers for classification heads: turn fitted estimators or example embeddings into the
head.json documents that `tenantml.serving.heads` serves, and write JSON reproducibly.

Reproducibility: floats are rounded to `DECIMALS` places and keys are sorted, so identical inputs give
identical bytes (and so identical sha256 in the manifest).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from tenantml.errors import BadRequest
from tenantml.example_models import BuildError
from tenantml.manifest import FileEntry, Manifest, canonical_json, sha256_bytes

DECIMALS = 6
DEFAULT_TEMPERATURE = 0.05


def _round(a: np.ndarray) -> list:
    """Round to DECIMALS and turn -0.0 into 0.0 so the JSON text does not depend on the sign of zero."""
    r = np.round(np.asarray(a, dtype=np.float64), DECIMALS) + 0.0
    return r.tolist()


def linear_output(name: str, labels: Sequence[str], coef: np.ndarray, intercept: np.ndarray) -> dict:
    """One `linear` head output from a fitted LogisticRegression's `coef_`/`intercept_`.

    Multinomial models give `coef [k, d]`. A binary model gives `coef [1, d]` for the logit z of
    `labels[1]`; softmax([-z/2, z/2]) == [1 - sigmoid(z), sigmoid(z)], so it is stored as two rows.
    """
    coef = np.asarray(coef, dtype=np.float64)
    intercept = np.asarray(intercept, dtype=np.float64).reshape(-1)
    if coef.shape[0] == 1 and len(labels) == 2:
        coef = np.vstack([-coef[0] / 2.0, coef[0] / 2.0])
        intercept = np.array([-intercept[0] / 2.0, intercept[0] / 2.0])
    if coef.shape[0] != len(labels) or intercept.shape[0] != len(labels):
        raise BuildError(detail=f"{name}: coef {coef.shape} / intercept {intercept.shape} "
                                f"vs {len(labels)} labels")
    return {"name": name, "labels": [str(x) for x in labels], "weight": _round(coef),
            "bias": _round(intercept)}


def linear_head(outputs: Sequence[dict], embedding_dim: int) -> dict:
    return {"kind": "linear", "embedding_dim": int(embedding_dim), "outputs": list(outputs)}


def prototype_output(name: str, examples: Mapping[str, np.ndarray]) -> dict:
    """One `prototypes` output: per label, the re-normalised mean of its examples' unit embeddings."""
    labels = list(examples)
    rows = []
    for label in labels:
        e = np.asarray(examples[label], dtype=np.float64)
        if e.ndim != 2 or e.shape[0] == 0:
            raise BadRequest("invalid examples", detail=f"{name}/{label}: no example embeddings")
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        m = e.mean(axis=0)
        norm = np.linalg.norm(m)
        if norm <= 1e-9:
            raise BadRequest("invalid examples", detail=f"{name}/{label}: the example embeddings cancel out")
        rows.append(m / norm)
    return {"name": name, "labels": labels, "prototypes": _round(np.vstack(rows))}


def prototype_head(outputs: Sequence[dict], embedding_dim: int,
                   temperature: float = DEFAULT_TEMPERATURE) -> dict:
    return {"kind": "prototypes", "embedding_dim": int(embedding_dim), "temperature": float(temperature),
            "outputs": list(outputs)}


def write_artifact(out_dir: Path, name: str, data: bytes) -> FileEntry:
    """Write one artifact file and return its manifest entry (sha256 + size)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / name).write_bytes(data)
    return FileEntry(sha256=sha256_bytes(data), size=len(data))


def write_manifest(out_dir: Path, manifest: Manifest) -> bytes:
    """Write manifest.json (pretty, sorted keys: identical manifests give identical bytes)."""
    data = canonical_json(manifest.model_dump(mode="json"), indent=2)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "manifest.json").write_bytes(data)
    return data
