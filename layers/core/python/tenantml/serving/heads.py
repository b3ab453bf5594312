"""Classification heads on a shared sentence-embedding backbone: the pure math, used at serving time.

A head is a small JSON file (`head.json`, kilobytes) that turns L2-normalised embeddings `e [n, d]`
into class probabilities, so a tenant-specific classifier costs no extra ONNX session. Two kinds:

- ``linear``: per output, ``probs = softmax(e @ W.T + b)`` with ``W [n_labels, d]``, ``b [n_labels]``
  (a multinomial logistic regression trained by ``tenantml.example_models.work_items``)::

      {"kind": "linear", "embedding_dim": 384,
       "outputs": [{"name": "category", "labels": [...], "weight": [[...d floats] per label],
                    "bias": [...per label]}, ...]}

- ``prototypes``: per output, ``probs = softmax(cos(e, P) / temperature)`` with ``P [n_labels, d]``,
  one prototype per label (the mean normalised embedding of a few examples a tenant registered)::

      {"kind": "prototypes", "embedding_dim": 384, "temperature": 0.05,
       "outputs": [{"name": "category", "labels": [...], "prototypes": [[...d floats] per label]}]}

`load_head` validates the JSON once (pydantic, shape and finiteness checks) into a `Head` holding
float32 arrays; `apply_head` is pure and is the one code path for both the server and the builders'
held-out evaluation. Only numpy and pydantic are imported: this module sits on the inference cold path.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tenantml.errors import BadRequest, ModelUnavailable

HeadKind = Literal["linear", "prototypes"]
MAX_LABELS = 1000
MAX_OUTPUTS = 16
MAX_EMBEDDING_DIM = 4096


# ------------------------------------------------------------------------------------------------
# JSON schema (validation only)
# ------------------------------------------------------------------------------------------------


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


OutputName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")]
Label = Annotated[str, Field(min_length=1, max_length=128)]


class _OutputSpec(_Spec):
    name: OutputName
    labels: list[Label] = Field(min_length=2, max_length=MAX_LABELS)

    @model_validator(mode="after")
    def _unique_labels(self) -> _OutputSpec:
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"output {self.name!r}: labels must be unique")
        return self


class _LinearOutputSpec(_OutputSpec):
    weight: list[list[float]]
    bias: list[float]


class _PrototypeOutputSpec(_OutputSpec):
    prototypes: list[list[float]]


class _HeadSpec(_Spec):
    embedding_dim: int = Field(ge=1, le=MAX_EMBEDDING_DIM)

    def _check_names(self, outputs: Sequence[_OutputSpec]) -> None:
        names = [o.name for o in outputs]
        if len(set(names)) != len(names):
            raise ValueError("output names must be unique")


class _LinearHeadSpec(_HeadSpec):
    kind: Literal["linear"]
    outputs: list[_LinearOutputSpec] = Field(min_length=1, max_length=MAX_OUTPUTS)

    @model_validator(mode="after")
    def _names(self) -> _LinearHeadSpec:
        self._check_names(self.outputs)
        return self


class _PrototypeHeadSpec(_HeadSpec):
    kind: Literal["prototypes"]
    temperature: float = Field(gt=0.0, le=10.0)
    outputs: list[_PrototypeOutputSpec] = Field(min_length=1, max_length=MAX_OUTPUTS)

    @model_validator(mode="after")
    def _names(self) -> _PrototypeHeadSpec:
        self._check_names(self.outputs)
        return self


class _Envelope(BaseModel):
    head: Annotated[_LinearHeadSpec | _PrototypeHeadSpec, Field(discriminator="kind")]


# ------------------------------------------------------------------------------------------------
# Validated, array-backed head
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeadOutput:
    """One classification output. `matrix` is W (linear) or the unit-norm prototypes P, float32 [k, d]."""

    name: str
    labels: tuple[str, ...]
    matrix: np.ndarray
    bias: np.ndarray | None = None  # float32 [k] for linear heads, None for prototypes


@dataclass(frozen=True)
class Head:
    kind: HeadKind
    embedding_dim: int
    outputs: tuple[HeadOutput, ...]
    temperature: float | None = None  # prototypes only

    @property
    def labels(self) -> dict[str, list[str]]:
        return {o.name: list(o.labels) for o in self.outputs}


def _invalid(detail: str) -> BadRequest:
    # The public message never echoes validation internals; `detail` goes to logs.
    return BadRequest("invalid head.json", detail=detail)


def _matrix(rows: list[list[float]], *, what: str, k: int, d: int) -> np.ndarray:
    if len(rows) != k:
        raise _invalid(f"{what}: {len(rows)} rows for {k} labels")
    if any(len(r) != d for r in rows):
        raise _invalid(f"{what}: every row must have embedding_dim={d} values")
    m = np.asarray(rows, dtype=np.float32).reshape(k, d)
    if not np.isfinite(m).all():
        raise _invalid(f"{what}: non-finite values")
    return m


def parse_head(obj: Mapping[str, object]) -> Head:
    """Validate a decoded head.json document into a `Head`. Raises BadRequest("invalid head.json")."""
    try:
        spec = _Envelope.model_validate({"head": obj}).head
    except ValidationError as exc:
        raise _invalid(f"schema: {exc.error_count()} error(s): "
                       + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
                       ) from None
    d = spec.embedding_dim
    outputs: list[HeadOutput] = []
    if isinstance(spec, _LinearHeadSpec):
        for o in spec.outputs:
            k = len(o.labels)
            w = _matrix(o.weight, what=f"{o.name}.weight", k=k, d=d)
            if len(o.bias) != k:
                raise _invalid(f"{o.name}.bias: {len(o.bias)} values for {k} labels")
            b = np.asarray(o.bias, dtype=np.float32)
            if not np.isfinite(b).all():
                raise _invalid(f"{o.name}.bias: non-finite values")
            outputs.append(HeadOutput(o.name, tuple(o.labels), _readonly(w), _readonly(b)))
        return Head("linear", d, tuple(outputs))
    for o in spec.outputs:
        k = len(o.labels)
        p = _matrix(o.prototypes, what=f"{o.name}.prototypes", k=k, d=d)
        norms = np.linalg.norm(p, axis=1, keepdims=True)
        if (norms <= 1e-12).any():
            raise _invalid(f"{o.name}.prototypes: zero vector")
        outputs.append(HeadOutput(o.name, tuple(o.labels), _readonly((p / norms).astype(np.float32))))
    return Head("prototypes", d, tuple(outputs), temperature=float(spec.temperature))


def load_head(data: bytes) -> Head:
    """Parse and validate head.json bytes (already sha256-verified against the manifest)."""
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _invalid(f"not JSON: {type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise _invalid("top level must be an object")
    return parse_head(obj)


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


# ------------------------------------------------------------------------------------------------
# Math
# ------------------------------------------------------------------------------------------------


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise, numerically stable softmax in float32."""
    z = z.astype(np.float32, copy=False)
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def apply_head(head: Head | Mapping[str, object], emb: np.ndarray) -> dict[str, tuple[list[str], np.ndarray]]:
    """Class probabilities per output: {name: (labels, probs float32 [n, n_labels])}.

    `emb` is [n, embedding_dim] (a single vector [embedding_dim] is treated as n=1). A raw mapping is
    validated first; serving passes the `Head` it loaded once. Embeddings of another width raise
    ModelUnavailable (the backbone does not fit the head).
    """
    if not isinstance(head, Head):
        head = parse_head(head)
    e = np.asarray(emb, dtype=np.float32)
    if e.ndim == 1:
        e = e[None, :]
    if e.ndim != 2 or e.shape[1] != head.embedding_dim:
        # The backbone and the head disagree: a deployment fault, not the caller's.
        raise ModelUnavailable(detail=f"embeddings {e.shape} do not fit a head of dim {head.embedding_dim}")
    if head.kind == "prototypes":
        norms = np.linalg.norm(e, axis=1, keepdims=True)
        e = e / np.maximum(norms, np.float32(1e-12))
    result: dict[str, tuple[list[str], np.ndarray]] = {}
    for o in head.outputs:
        if head.kind == "linear":
            assert o.bias is not None
            logits = e @ o.matrix.T + o.bias
        else:
            assert head.temperature is not None
            logits = (e @ o.matrix.T) / np.float32(head.temperature)
        result[o.name] = (list(o.labels), softmax(logits))
    return result


def top_labels(labels: list[str], probs: np.ndarray) -> list[str]:
    """The most probable label per row (ties go to the first label, like numpy argmax)."""
    return [labels[i] for i in np.argmax(probs, axis=1)]
