"""The CPU serving path: Open Inference Protocol v2 over REST for ONNX models.

- `oip`: strict request parsing, tensor validation, response shapes
- `processing`: pre/post-processing shared with the GPU container (tokenize, pool, heads, tabular labels)
- `runtime`: verified artifacts -> onnxruntime sessions/tokenizers/heads, memory-bounded LRU
- `cache`: registry-resolution and prediction caches
- `service`: `InferenceService` and `build_service(settings, aws)`
- `heads`: classification-head math (owned by the heads module)

This package init imports nothing heavy: `tenantml.serving.heads` is used by the model builders too.
`build_service` and `InferenceService` are re-exported lazily.
"""

from __future__ import annotations

from typing import Any

__all__ = ["InferenceService", "build_service"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from tenantml.serving import service  # noqa: PLC0415 - keeps `import tenantml.serving.heads` light

        return getattr(service, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
