"""Offline, reproducible builders for the example models (`tenantml models build`).

- `minilm`     all-MiniLM-L6-v2 -> ONNX (fp32 and dynamic int8), built from the weights package, no torch
- `mpnet`      all-mpnet-base-v2 -> ONNX (fp32, the GPU endpoint's example large model), no torch
- `encoder`    what the two encoder exports share (graph writers, embedder, accuracy, manifests)
- `work_items` a text-classification head on the MiniLM embeddings
- `risk`       a tabular project-risk model
- `pipeline`   runs them in order, with a content-hash cache and progress on stderr
- `reference`  regenerates the reference-embedding fixtures with sentence-transformers (needs torch)

Only the standard library is imported here: the heavy imports (onnx, onnxruntime, numpy) stay in the
modules that need them.
"""

from __future__ import annotations

from pathlib import Path

from tenantml.errors import TenantMLError

# The committed reference embeddings (sentence-transformers on the same weights), relative to the repo root.
REFERENCE_FIXTURE = Path("tests/fixtures/minilm_reference.json")
MPNET_REFERENCE_FIXTURE = Path("tests/fixtures/mpnet_reference.json")


class BuildError(TenantMLError):
    """A model could not be built, or the built model failed its acceptance checks."""

    default_message = "model build failed"


def default_reference_path(fixture: Path = REFERENCE_FIXTURE) -> Path | None:
    """A reference fixture (default: MiniLM's), relative to the working directory or else in this source
    checkout (or None)."""
    candidates = [Path.cwd() / fixture]
    # layers/core/python/tenantml/example_models/__init__.py -> the repository root is five levels up.
    parents = Path(__file__).resolve().parents
    if len(parents) > 5:
        candidates.append(parents[5] / fixture)
    for path in candidates:
        if path.is_file():
            return path
    return None
