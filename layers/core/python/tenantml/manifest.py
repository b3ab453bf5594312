"""manifest.json: what a model version is. Shared by the builder, the registry and the serving path.

A version folder (`models/<tenant>/<model>/<version>/`) holds the files listed in `files`, each with
its sha256; `manifest.json` itself sits beside them. Artifacts are verified against these hashes before
anything is loaded (`verify_file`).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tenantml.errors import IntegrityError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
TENANT_RE = re.compile(r"^(_shared|[a-z0-9][a-z0-9_-]{0,62})$")

Datatype = Literal["BOOL", "UINT8", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"]
Task = Literal["embedding", "text-classification", "tabular-classification"]
Backend = Literal["cpu", "gpu"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Model):
    """An OIP tensor description. -1 marks a variable dimension (the batch)."""

    name: str
    datatype: Datatype
    shape: list[int]


class FileEntry(_Model):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class BackboneRef(_Model):
    """A head sits on another model's embeddings (normally a `_shared` backbone)."""

    tenant: str = "_shared"
    model: str
    version: str


class TokenizerSpec(_Model):
    file: str = "tokenizer.json"
    max_length: int = Field(default=256, ge=1, le=512)


class Manifest(_Model):
    schema_version: Literal[1] = 1
    name: str
    task: Task
    backend: Backend = "cpu"
    platform: str = "onnxruntime_onnx"
    description: str = ""
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    # Labels per classification output name, e.g. {"category": ["bug", ...], "urgency": [...]}.
    labels: dict[str, list[str]] = Field(default_factory=dict)
    # Tabular feature names, in column order of the FP32 input.
    features: list[str] = Field(default_factory=list)
    tokenizer: TokenizerSpec | None = None
    backbone: BackboneRef | None = None
    # Share of requests whose features and predictions are captured for drift checks (default: the
    # inference function's TENANTML_CAPTURE_RATE, 100%).
    capture_rate: float | None = Field(default=None, ge=0, le=1)
    # Overrides of the drift thresholds for this model (tenantml.monitoring.stats.Thresholds fields, e.g.
    # {"psi": 0.25, "accuracy_drop": 0.05}); checked at registration.
    drift_thresholds: dict[str, float] = Field(default_factory=dict)
    # Every artifact file of the version except manifest.json itself.
    files: dict[str, FileEntry]
    # Free-form build facts (source package, quantization, metrics); never interpreted at serving time.
    build: dict[str, object] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.fullmatch(v):
            raise ValueError("model name must match " + NAME_RE.pattern)
        return v

    @field_validator("drift_thresholds")
    @classmethod
    def _thresholds(cls, v: dict[str, float]) -> dict[str, float]:
        if v:
            from tenantml.monitoring.stats import Thresholds  # noqa: PLC0415 - only when overrides are given

            Thresholds.model_validate(v)
        return v

    @field_validator("files")
    @classmethod
    def _file_names(cls, v: dict[str, FileEntry]) -> dict[str, FileEntry]:
        for name in v:
            if "/" in name or name.startswith(".") or name == "manifest.json":
                raise ValueError(f"invalid artifact file name: {name!r}")
        return v


def canonical_json(obj: object, *, indent: int | None = None) -> bytes:
    """Deterministic JSON bytes: sorted keys, no NaN, trailing newline (manifests, heads, baselines)."""
    text = json.dumps(obj, sort_keys=True, indent=indent, allow_nan=False, ensure_ascii=False,
                      separators=(",", ":") if indent is None else (",", ": "))
    return (text + "\n").encode("utf-8")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, read in chunks (model files are tens of MB)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def verify_file(manifest: Manifest, name: str, data: bytes) -> bytes:
    """Return `data` if it matches the manifest's sha256 and size for `name`; else raise IntegrityError."""
    entry = manifest.files.get(name)
    if entry is None:
        raise IntegrityError(detail=f"{name} is not listed in the manifest of {manifest.name}")
    if len(data) != entry.size or sha256_bytes(data) != entry.sha256:
        raise IntegrityError(detail=f"sha256 mismatch for {manifest.name}/{name}")
    return data
