"""baseline.json: what the reference data of a model version looked like, kept small enough to read on
every drift run: its size depends on `bins` and `ks_sample`, not on the size of the reference (about
40 KB per numeric feature at the defaults, mostly the sample).

Numeric features are summarised by equal-frequency bins. `bins` = B asks for the reference quantiles at
k/B (k = 1..B-1, the "inverted CDF" definition: the smallest reference value v with F(v) >= k/B); equal
quantiles (ties, discrete data) are merged, and -inf/+inf close the outer bins, so a feature has at most
B bins `[edges[i], edges[i+1])`. Besides the proportion of the reference in each bin, the baseline keeps
the proportion exactly AT each interior edge (`edge_proportions`): with it the reference CDF is known on
both sides of every edge, F(e-) and F(e), and the only unknown is how the reference is spread inside
the open intervals between edges.

How fine the bins must be for the KS statistic. The drift monitor never keeps raw rows: it counts the
window's values per cell (each open interval and each edge value) and computes the KS statistic D_b as
the largest CDF gap over the cell boundaries. The exact two-sample statistic D (what
scipy.stats.ks_2samp would give on the full reference and the full window) then satisfies

    D_b <= D <= D_b + w,   w = the largest reference proportion inside one open interval <= 1/B.

D_b <= D because D_b is a maximum over a subset of the points D is a supremum over. For the upper
bound, take x inside an open interval (a, b): both CDFs are non-decreasing, so
F_cur(x) - F_ref(x) <= F_cur(b-) - F_ref(a) = [F_cur(b-) - F_ref(b-)] + [F_ref(b-) - F_ref(a)] and
F_ref(x) - F_cur(x) <= F_ref(b-) - F_cur(a) = [F_ref(a) - F_cur(a)] + [F_ref(b-) - F_ref(a)]; the first
bracket is at most D_b, the second is the reference mass w_i of the open interval (only the reference's,
whatever the window does). Why w_i <= 1/B: if a = q(k/B) (k the largest such) and b = q((k+1)/B) are
consecutive edges, F_ref(a) >= k/B and F_ref(b-) < (k+1)/B; the outer intervals hold less than 1/B
below q(1/B) and at most 1/B above q((B-1)/B). Without the edge proportions the bound would be the
largest BIN mass, which an atom (a value shared by 30% of the reference) makes arbitrarily large.
So B = 100 (the default) bounds the error of the binned KS statistic by 0.01; `NumericBaseline.ks_error_bound`
is the exact w of a feature. D_b is the conservative side: binning can hide up to w of a shift, never
invent one.

The bounded reference `sample` (at most `ks_sample` values) serves the exact-KS fallback when a baseline
was built with too few bins for the bound to be useful (see `tenantml.monitoring.stats`).

Text models. A text input is summarised by derived numeric features, named as the capture names them
(`tenantml.monitoring.capture`): `token_count` (tokens before truncation, special tokens excluded),
`unknown_token_rate` (share of [UNK] among them) and `embedding_pc1..K`, the embedding minus the reference
mean, projected on the first K principal directions of the reference embeddings (K = 3 by default: on the
work items they carry ~10% of the embedding's variance, yet a population of code snippets or of
non-English texts moves all three far past the thresholds). The `text` section (`TextBaseline`, schema
version 2) says which input and which embedding (the model's output, or a head's backbone) they come from,
and holds the projection itself (`TextProjection`: the mean and the K directions, rounded to 6 decimals so
rebuilds give the same bytes): the inference function reads it with the model to compute `embedding_pc*`
per request, without ever re-reading reference data. `build_text_baseline` builds it all from token
counts and embeddings. A version 1 file (no `text`) stays valid; a reader that knows only version 1
refuses a version 2 file by its version rather than by an unknown key.

Pure: numpy and pydantic only. Meant for the builder of a model version: `build_baseline` (or
`build_text_baseline`) on its reference data, `baseline.model_dump_json()` written beside the manifest and
listed with its sha256 in it (`tenantml models build` does so for the example models).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tenantml.monitoring.capture import TOKEN_COUNT, UNKNOWN_TOKEN_RATE, embedding_pc, unknown_rate

OTHER = "__other__"
MAX_CATEGORIES = 50
TEXT_COMPONENTS = 3         # K, the principal directions of a text baseline
PROJECTION_DECIMALS = 6


class _Model(BaseModel):
    # +-inf edges are written as the JSON strings "-Infinity"/"Infinity" (still standard JSON) and read
    # back as floats, so baseline.json round-trips exactly.
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="strings")


class NumericBaseline(_Model):
    """One numeric feature (or a numeric prediction) of the reference."""

    kind: Literal["numeric"] = "numeric"
    count: int = Field(ge=1)
    mean: float
    std: float = Field(ge=0, description="population standard deviation (ddof=0)")
    min: float
    max: float
    edges: list[float] = Field(description="[-inf, e_1, ..., e_m, +inf]; bin i is [edges[i], edges[i+1])")
    proportions: list[float] = Field(description="reference proportion per bin (len(edges) - 1 values)")
    edge_proportions: list[float] = Field(
        description="reference proportion exactly equal to each interior edge e_1..e_m")
    sample: list[float] = Field(description="sorted uniform sample of the reference, for the exact KS")

    @model_validator(mode="after")
    def _consistent(self) -> NumericBaseline:
        e = self.edges
        if len(e) < 2 or e[0] != -math.inf or e[-1] != math.inf:
            raise ValueError("edges must start at -inf and end at +inf")
        if any(not math.isfinite(v) for v in e[1:-1]) or any(b <= a for a, b in zip(e, e[1:], strict=False)):
            raise ValueError("interior edges must be finite and strictly increasing")
        if len(self.proportions) != len(e) - 1 or len(self.edge_proportions) != len(e) - 2:
            raise ValueError("proportions need one value per bin, edge_proportions one per interior edge")
        if not self.sample:
            raise ValueError("sample must not be empty")
        return self

    @property
    def interior_edges(self) -> np.ndarray:
        return np.asarray(self.edges[1:-1], dtype=np.float64)

    def cell_proportions(self) -> np.ndarray:
        """Reference proportion per cell, in order: (-inf, e_1), {e_1}, (e_1, e_2), {e_2}, ..., (e_m, +inf).
        Bin i >= 1 is cell 2i-1 (the edge value) plus cell 2i (the open interval after it)."""
        props = np.asarray(self.proportions, dtype=np.float64)
        atoms = np.asarray(self.edge_proportions, dtype=np.float64)
        cells = np.empty(2 * atoms.size + 1, dtype=np.float64)
        cells[0] = props[0]
        cells[1::2] = atoms
        cells[2::2] = np.clip(props[1:] - atoms, 0.0, None)
        return cells

    @property
    def ks_error_bound(self) -> float:
        """Largest reference proportion inside one open interval between edges: the binned KS statistic
        is at most this much below the exact one (see the module docstring); <= 1/bins."""
        return float(self.cell_proportions()[0::2].max())


class CategoricalBaseline(_Model):
    """One categorical feature (or the predicted labels) of the reference. `proportions` holds the most
    frequent categories (at most 50) and always `__other__`, the share of every other category."""

    kind: Literal["categorical"] = "categorical"
    count: int = Field(ge=1)
    proportions: dict[str, float]

    @model_validator(mode="after")
    def _has_other(self) -> CategoricalBaseline:
        if OTHER not in self.proportions:
            raise ValueError(f"proportions must include {OTHER!r}")
        return self

    @property
    def categories(self) -> list[str]:
        return list(self.proportions)

    def counts(self) -> np.ndarray:
        """Reference counts per category, in `categories` order (exact: proportions are count / total)."""
        return np.rint(np.asarray(list(self.proportions.values()), dtype=np.float64) * self.count)


FeatureBaseline = Annotated[NumericBaseline | CategoricalBaseline, Field(discriminator="kind")]


class Performance(_Model):
    """Quality of the reference predictions against their labels: `accuracy` for labels (classification),
    `mae` and `rmse` for numeric predictions (regression)."""

    count: int = Field(ge=1)
    accuracy: float | None = None
    mae: float | None = None
    rmse: float | None = None


class TextProjection(_Model):
    """The reference embeddings' mean and first K principal directions (unit rows, mutually orthogonal
    before rounding; each signed so that its largest coordinate is positive). A text's `embedding_pc{k}` is
    (e - mean) . components[k-1]."""

    dim: int = Field(ge=1, description="embedding dimension d")
    count: int = Field(ge=2, description="reference embeddings the directions were computed from")
    mean: list[float] = Field(description="[d]")
    components: list[list[float]] = Field(min_length=1, description="[K, d]")
    explained_variance_ratio: list[float] = Field(
        description="share of the reference embeddings' total variance along each direction")

    @model_validator(mode="after")
    def _shapes(self) -> TextProjection:
        if len(self.mean) != self.dim or any(len(c) != self.dim for c in self.components):
            raise ValueError(f"mean and every component need dim={self.dim} values")
        if len(self.explained_variance_ratio) != len(self.components):
            raise ValueError("one explained_variance_ratio per component")
        values = [*self.mean, *(v for c in self.components for v in c), *self.explained_variance_ratio]
        if not all(math.isfinite(v) for v in values):
            raise ValueError("the projection holds NaN/Inf values")
        return self

    @property
    def k(self) -> int:
        return len(self.components)

    def project(self, embeddings: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        """[n, K]: each embedding's coordinates on the directions (float64)."""
        e = np.asarray(embeddings, dtype=np.float64)
        if e.ndim != 2 or e.shape[1] != self.dim:
            raise ValueError(f"expected embeddings [n, {self.dim}], got shape {e.shape}")
        return (e - np.asarray(self.mean)) @ np.asarray(self.components).T


class TextBaseline(_Model):
    """Where a text model's derived features come from (their distributions are in `numeric`)."""

    input: str = Field(default="text", description="the BYTES input the features are derived from")
    embedding: Literal["output", "backbone"] = Field(
        description="the embedding projected: the model's own output (an encoder) or the backbone's "
                    "embedding a head consumes")
    features: list[str] = Field(description="the derived features, each a numeric feature of the baseline")
    projection: TextProjection | None = None


class Baseline(_Model):
    """baseline.json of a model version. schema_version 2 adds the optional `text` section."""

    schema_version: Literal[1, 2] = 1
    bins: int = Field(ge=1)
    ks_sample: int = Field(ge=1)
    seed: int
    numeric: dict[str, NumericBaseline] = Field(default_factory=dict)
    categorical: dict[str, CategoricalBaseline] = Field(default_factory=dict)
    prediction: FeatureBaseline | None = None
    performance: Performance | None = None
    text: TextBaseline | None = None

    @model_validator(mode="before")
    @classmethod
    def _text_is_version_2(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("text") is not None and "schema_version" not in data:
            return {**data, "schema_version": 2}
        return data

    @model_validator(mode="after")
    def _distinct_names(self) -> Baseline:
        both = set(self.numeric) & set(self.categorical)
        if both:
            raise ValueError(f"features both numeric and categorical: {sorted(both)}")
        if self.text is not None:
            if self.schema_version < 2:
                raise ValueError("a text section needs schema_version 2")
            missing = [f for f in self.text.features if f not in self.numeric]
            if self.text.projection is not None:
                missing += [embedding_pc(k) for k in range(1, self.text.projection.k + 1)
                            if embedding_pc(k) not in self.text.features]
            if missing:
                raise ValueError(f"text features without a numeric baseline: {missing}")
        return self

    @property
    def features(self) -> dict[str, NumericBaseline | CategoricalBaseline]:
        return {**self.numeric, **self.categorical}


def _rng(seed: int, name: str) -> np.random.Generator:
    """One generator per feature, from the seed and the feature's name: a feature's sample does not
    change when other features are added, removed or reordered."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def numeric_baseline(name: str, values: np.ndarray | Sequence[float], *, bins: int = 100,
                     ks_sample: int = 2000, seed: int = 0) -> NumericBaseline:
    """Summarise one numeric reference column. Refuses NaN/Inf: a reference with holes would make the
    bins describe a different population than the one the model was trained on, silently."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"feature {name!r}: expected a 1-D array, got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"feature {name!r}: the reference is empty")
    bad = ~np.isfinite(x)
    if bad.any():
        raise ValueError(f"feature {name!r}: the reference holds {int(bad.sum())} NaN/Inf value(s)")
    if bins < 1:
        raise ValueError("bins must be >= 1")
    if ks_sample < 1:
        raise ValueError("ks_sample must be >= 1")
    xs = np.sort(x)
    n = xs.size
    # Quantile k/B, inverted-CDF definition, in integer arithmetic: the ceil(n*k/B)-th smallest value.
    k = np.arange(1, bins, dtype=np.int64)
    edges = np.unique(xs[(n * k + bins - 1) // bins - 1])
    below = np.searchsorted(xs, edges, side="left")      # n * F(e-)
    upto = np.searchsorted(xs, edges, side="right")      # n * F(e)
    cum = np.concatenate(([0], below, [n]))              # n * F at the start of each bin, then n
    bin_counts = np.diff(cum)
    sample = _rng(seed, name).choice(xs, size=min(ks_sample, n), replace=False)
    return NumericBaseline(
        count=n, mean=float(xs.mean()), std=float(xs.std()), min=float(xs[0]), max=float(xs[-1]),
        edges=[-math.inf, *edges.tolist(), math.inf],
        proportions=(bin_counts / n).tolist(),
        edge_proportions=((upto - below) / n).tolist(),
        sample=np.sort(sample).tolist(),
    )


def as_categories(values: np.ndarray | Sequence[object]) -> tuple[np.ndarray, int]:
    """(valid values as a numpy str array, number of invalid ones). Invalid: None and float NaN/Inf.
    Everything else is compared by its str(), so 1 and "1" are the same category everywhere. A Python
    sequence is read as objects (numpy would turn ["a", None] into the string "None"); a numpy string
    array is taken as it is."""
    arr = values if isinstance(values, np.ndarray) else np.asarray(values, dtype=object)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-D sequence of categories, got shape {arr.shape}")
    if arr.dtype.kind in "US":
        return arr.astype(str), 0
    if arr.dtype.kind == "f":
        ok = np.isfinite(arr)
    elif arr.dtype.kind == "O":
        # Elementwise Python comparisons: None, NaN (the one value != itself) and +-inf are invalid.
        ok = ~(np.equal(arr, None) | np.not_equal(arr, arr)
               | np.equal(arr, math.inf) | np.equal(arr, -math.inf))
    else:
        ok = np.ones(arr.shape, dtype=bool)
    valid = arr[ok]
    return valid.astype(str) if valid.size else np.empty(0, dtype=str), int(arr.size - ok.sum())


def categorical_baseline(name: str, values: np.ndarray | Sequence[object], *,
                         max_categories: int = MAX_CATEGORIES) -> CategoricalBaseline:
    """Summarise one categorical reference column: the `max_categories` most frequent categories (ties
    broken by name, so the choice is reproducible) and `__other__` for the rest."""
    cats, invalid = as_categories(values)
    if invalid:
        raise ValueError(f"feature {name!r}: the reference holds {invalid} missing/NaN value(s)")
    if cats.size == 0:
        raise ValueError(f"feature {name!r}: the reference is empty")
    uniq, counts = np.unique(cats, return_counts=True)     # uniq sorted by name
    order = np.argsort(-counts, kind="stable")             # by count, then by name
    top = order[:max_categories]
    n = int(counts.sum())
    props = {str(uniq[i]): int(counts[i]) / n for i in top if str(uniq[i]) != OTHER}
    props[OTHER] = (n - sum(int(counts[i]) for i in top if str(uniq[i]) != OTHER)) / n
    return CategoricalBaseline(count=n, proportions=props)


def _is_numeric(values: np.ndarray | Sequence[object]) -> bool:
    return np.asarray(values).dtype.kind in "iuf"


def build_baseline(reference: Mapping[str, np.ndarray],
                   categorical: Mapping[str, Sequence[str]] | None = None,
                   predictions: np.ndarray | Sequence[str] | None = None,
                   labels: np.ndarray | Sequence[str] | None = None, *,
                   bins: int = 100, ks_sample: int = 2000, seed: int = 0,
                   text: TextBaseline | None = None) -> Baseline:
    """The baseline of a model version from its reference data.

    `reference`: numeric features; `categorical`: categorical features; `predictions`: the model's
    outputs on the reference (a numeric array: summarised like a numeric feature; strings or labels:
    like a categorical one); `labels`: the true values, for the baseline performance; `text`: the text
    section (see `build_text_baseline`). Deterministic: the same data and seed give the same baseline,
    byte for byte.
    """
    categorical = categorical or {}
    both = set(reference) & set(categorical)
    if both:
        raise ValueError(f"features given both as numeric and categorical: {sorted(both)}")
    numeric = {name: numeric_baseline(name, values, bins=bins, ks_sample=ks_sample, seed=seed)
               for name, values in reference.items()}
    cats = {name: categorical_baseline(name, values) for name, values in categorical.items()}
    prediction: NumericBaseline | CategoricalBaseline | None = None
    performance = None
    if predictions is not None:
        if _is_numeric(predictions):
            prediction = numeric_baseline("prediction", predictions, bins=bins, ks_sample=ks_sample,
                                          seed=seed)
        else:
            prediction = categorical_baseline("prediction", predictions)
        if labels is not None:
            performance = _performance(predictions, labels, numeric=prediction.kind == "numeric")
    elif labels is not None:
        raise ValueError("labels need predictions")
    return Baseline(schema_version=2 if text is not None else 1, bins=bins, ks_sample=ks_sample, seed=seed,
                    numeric=numeric, categorical=cats, prediction=prediction, performance=performance,
                    text=text)


def text_projection(embeddings: np.ndarray, components: int = TEXT_COMPONENTS, *,
                    decimals: int = PROJECTION_DECIMALS) -> TextProjection:
    """The mean and the first `components` principal directions (right singular vectors of the centred
    embeddings) of reference embeddings [n, d]; fewer when n - 1 or d is smaller. Each direction is signed
    so that its largest coordinate is positive (an SVD's signs are arbitrary), then everything is rounded
    to `decimals` places, so the same embeddings give the same bytes."""
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 2 or e.shape[0] < 2 or e.shape[1] < 1:
        raise ValueError(f"text projection: expected at least 2 embeddings [n, d], got shape {e.shape}")
    if not np.isfinite(e).all():
        raise ValueError("text projection: the reference embeddings hold NaN/Inf values")
    if components < 1:
        raise ValueError("components must be >= 1")
    k = min(components, e.shape[0] - 1, e.shape[1])
    mean = e.mean(axis=0)
    _, s, vt = np.linalg.svd(e - mean, full_matrices=False)
    v = vt[:k]
    v = v * np.sign(v[np.arange(k), np.argmax(np.abs(v), axis=1)])[:, None]
    total = float(np.sum(s * s))
    ratio = s[:k] ** 2 / total if total > 0 else np.zeros(k)
    return TextProjection(dim=int(e.shape[1]), count=int(e.shape[0]),
                          mean=(np.round(mean, decimals) + 0.0).tolist(),
                          components=(np.round(v, decimals) + 0.0).tolist(),
                          explained_variance_ratio=(np.round(ratio, decimals) + 0.0).tolist())


def text_features(tokens: np.ndarray | Sequence[int], unknown: np.ndarray | Sequence[int],
                  embeddings: np.ndarray | None = None,
                  projection: TextProjection | None = None) -> dict[str, np.ndarray]:
    """The derived features of texts, as the capture computes them: `token_count`, `unknown_token_rate`
    and, with a projection, `embedding_pc1..K` of `embeddings`."""
    t = np.asarray(tokens, dtype=np.float64)
    features = {TOKEN_COUNT: t, UNKNOWN_TOKEN_RATE: unknown_rate(t, np.asarray(unknown)).astype(np.float64)}
    if projection is not None:
        if embeddings is None:
            raise ValueError("a projection needs the embeddings")
        coords = projection.project(embeddings)
        if coords.shape[0] != t.size:
            raise ValueError(f"{coords.shape[0]} embeddings for {t.size} token counts")
        for k in range(projection.k):
            features[embedding_pc(k + 1)] = coords[:, k]
    return features


def build_text_baseline(tokens: np.ndarray | Sequence[int], unknown: np.ndarray | Sequence[int],
                        embeddings: np.ndarray | None, *, embedding: Literal["output", "backbone"],
                        input: str = "text", components: int = TEXT_COMPONENTS,  # noqa: A002
                        predictions: np.ndarray | Sequence[str] | None = None,
                        labels: np.ndarray | Sequence[str] | None = None,
                        bins: int = 100, ks_sample: int = 2000, seed: int = 0) -> Baseline:
    """The baseline of a text model from its reference texts' token counts (tokens before truncation and
    unknown tokens per text, from the model's tokenizer) and embeddings [n, d] (None, or components=0:
    no projection). `predictions`/`labels` may come from other rows than the texts (e.g. a held-out split
    for an honest baseline accuracy)."""
    projection = text_projection(embeddings, components) if embeddings is not None and components else None
    features = text_features(tokens, unknown, embeddings, projection)
    section = TextBaseline(input=input, embedding=embedding, features=list(features), projection=projection)
    return build_baseline(features, predictions=predictions, labels=labels, bins=bins, ks_sample=ks_sample,
                          seed=seed, text=section)


def _performance(predictions: np.ndarray | Sequence[object], labels: np.ndarray | Sequence[object], *,
                 numeric: bool) -> Performance:
    if len(predictions) != len(labels):
        raise ValueError(f"predictions ({len(predictions)}) and labels ({len(labels)}) differ in length")
    if numeric:
        p = np.asarray(predictions, dtype=np.float64)
        y = np.asarray(labels, dtype=np.float64)
        if not np.isfinite(y).all():
            raise ValueError("labels hold NaN/Inf values")
        err = p - y
        return Performance(count=int(p.size), mae=float(np.abs(err).mean()),
                           rmse=float(np.sqrt(np.mean(err * err))))
    p_cats, _ = as_categories(predictions)
    y_cats, bad = as_categories(labels)
    if bad:
        raise ValueError(f"labels hold {bad} missing/NaN value(s)")
    return Performance(count=int(p_cats.size), accuracy=float(np.mean(p_cats == y_cats)))
