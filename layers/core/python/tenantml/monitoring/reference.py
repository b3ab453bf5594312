"""baseline.json of ANY model version folder, computed once (before registration) from reference data
supplied with the version: `tenantml models baseline PATH --reference FILE.csv [--label COLUMN]`, or the
same inside `tenantml models register PATH ... --reference FILE.csv`.

The reference is a CSV file with a header row:

- a tabular model: one column per name in the manifest's `features` (extra columns are ignored); every
  value a finite number (an empty cell, NaN or Inf is refused: bins built over holes would describe
  another population than the one the model sees);
- a text model (an encoder, or a classification head): the column named like the manifest's BYTES input
  (`text` for the example models); an empty cell is an empty text;
- optionally `--label COLUMN`: the true class of each row (a classifier: compared with the model's first
  label output as strings) or its numeric outcome (a numeric prediction), for the baseline accuracy
  (MAE/RMSE) the drift worker compares feedback with. Give held-out rows for an honest figure: rows the
  model was trained on make the baseline accuracy too high.

How it is computed, and why so: the model IN THE FOLDER is loaded by the serving runtime itself
(`ModelRuntime`, over a store that reads the folder's files, every artifact verified against the
manifest's sha256) and predicts the reference in batches; each batch is turned into exactly the columns
the inference function captures for a request (`serving.capture.capture_columns`; a text model's derived
columns from the token counts and the embedding its prediction left for the capture, through
`serving.capture.text_columns`). So reference and traffic are computed by the same code: the same
tokenizer configuration, truncation, float32 projection, label mapping. A text model's projection (the
reference embeddings' mean and first K = 3 principal directions) is computed from all reference
embeddings first (`baseline.text_projection`, as `tenantml models build` does), then applied to every
batch the way the inference function applies the projection it reads from baseline.json. A head needs its
backbone: `backbone_folder` (the backbone's built folder, whose manifest must name the head's backbone
model), or, at registration, the registered backbone the head will be served with. A baseline.json the
folder already lists is ignored while computing (the new one replaces it).

Memory: the whole reference is held in memory (it is the reference, bounded by whoever supplies it): the
CSV's needed columns as Python strings (~60-100 bytes per cell) and their float32 arrays, plus for a text
model its embeddings, which the principal directions need all at once: about 36 bytes x rows x embedding
dimension at the peak of the SVD (100 000 texts of a 384-d encoder: ~1.4 GB). At most `max_rows` rows
(default 200 000) are accepted; the drift statistics gain nothing beyond a few tens of thousands of rows
(bins of 1/100, a KS sample of 2000), so sample a larger reference down.

Only the standard library, numpy, pydantic and the serving runtime; no AWS. The runtime's own log lines and
load metrics are silenced while the reference runs: they describe serving, not this offline computation.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import numpy as np
from pydantic import ValidationError

from tenantml import SHARED_TENANT
from tenantml.errors import BadRequest, ModelNotFound, ModelUnavailable, TenantMLError
from tenantml.manifest import FileEntry, Manifest, sha256_bytes
from tenantml.monitoring.baseline import (
    TEXT_COMPONENTS,
    Baseline,
    TextBaseline,
    build_baseline,
    text_projection,
)
from tenantml.monitoring.capture import PREDICTION, TOKEN_COUNT, UNKNOWN_TOKEN_RATE
from tenantml.observability import logger
from tenantml.registry import ArtifactStore, ModelVersion

BASELINE_FILE = "baseline.json"
MANIFEST_FILE = "manifest.json"
MAX_ROWS = 200_000
TEXT_BATCH = 64          # texts per prediction (as the example builders batch them)
TABULAR_BATCH = 1024
_LOCAL_OWNER = "local"   # the owner the folder's version is loaded under (never registered as such)


class ReferenceDataError(BadRequest):
    """Reference data or a model folder that cannot give a baseline. One line, for the CLI."""

    default_message = "cannot compute the baseline"


# --- the folder as an artifact store ---------------------------------------------------------------------


class FolderStore:
    """`ArtifactStore` over one version folder: `get`/`download` read `<folder>/<name>` (any owner, model
    and version: the store holds one version). The runtime verifies every file against the manifest."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _path(self, name: str) -> Path:
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise ModelUnavailable(detail=f"invalid artifact file name {name!r}")
        path = self.folder / name
        if not path.is_file():
            raise ModelUnavailable(detail=f"{name} is listed in the manifest but missing from {self.folder}")
        return path

    def get(self, owner: str, model: str, version: str, name: str) -> bytes:
        return self._path(name).read_bytes()

    def download(self, owner: str, model: str, version: str, name: str, out: BinaryIO) -> None:
        with self._path(name).open("rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)

    def put(self, owner: str, model: str, version: str, name: str, data: bytes) -> None:
        raise ModelUnavailable(detail="a model folder is read-only here")


@dataclass(frozen=True)
class Backbone:
    """Where a head's backbone comes from: a registered version and the store holding its artifacts."""

    version: ModelVersion
    store: ArtifactStore


def read_manifest(folder: Path) -> Manifest:
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise ReferenceDataError(f"{folder} holds no {MANIFEST_FILE}")
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in err["loc"]) or "manifest"
        raise ReferenceDataError(f"{path}: invalid manifest: {where}: {err['msg']}") from None


def _without_baseline(manifest: Manifest) -> Manifest:
    """The manifest minus baseline.json: the runtime would load (and verify) the old baseline's projection,
    which has nothing to do with the one being computed."""
    if BASELINE_FILE not in manifest.files:
        return manifest
    files = {n: e for n, e in manifest.files.items() if n != BASELINE_FILE}
    return manifest.model_copy(update={"files": files})


def folder_backbone(backbone_folder: Path, head: Manifest) -> Backbone:
    """A head's backbone from its built folder; its manifest must be an embedding model named like the head's
    backbone (a baseline from another encoder would describe embeddings the head never sees)."""
    manifest = read_manifest(backbone_folder)
    ref = head.backbone
    if ref is not None and manifest.name != ref.model:
        raise ReferenceDataError(f"--backbone-folder {backbone_folder} holds '{manifest.name}', but the "
                                 f"head's backbone is {ref.tenant}/{ref.model} version {ref.version}")
    mv = ModelVersion(owner=_LOCAL_OWNER, model=manifest.name, version="backbone",
                      manifest=_without_baseline(manifest))
    return Backbone(mv, FolderStore(backbone_folder))


def registered_backbone(head: Manifest, tenant: str, registry: Any, store: ArtifactStore) -> Backbone:
    """A head's backbone as the inference function will serve it: the registered version its manifest
    names, which must be the registering tenant's own or a shared one (`registry`: anything with
    `resolve(tenant, model, version)`)."""
    ref = head.backbone
    if ref is None:
        raise ReferenceDataError(f"'{head.name}' is a head without a backbone in its manifest")
    if ref.tenant not in (SHARED_TENANT, tenant):
        raise ReferenceDataError(f"the head's backbone {_backbone_name(head)} is neither {tenant}'s nor "
                                 "shared")
    try:
        mv = registry.resolve(ref.tenant, ref.model, ref.version)
    except ModelNotFound:
        raise ReferenceDataError(f"the head's backbone {_backbone_name(head)} is not registered: register it "
                                 "first, or give its built folder with --backbone-folder") from None
    return Backbone(replace(mv, manifest=_without_baseline(mv.manifest)), store)


# --- the reference CSV ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReferenceTable:
    """The needed columns of the reference CSV, as strings, in file order; `lines[i]`: the file line of row i
    (for messages)."""

    path: Path
    columns: dict[str, list[str]]
    lines: list[int]

    @property
    def rows(self) -> int:
        return len(self.lines)


def read_reference(path: Path, needed: Sequence[str], *, max_rows: int = MAX_ROWS) -> ReferenceTable:
    """The `needed` columns of a CSV with a header row (UTF-8, an optional BOM). Refuses a missing column, a
    row with another number of fields than the header, an empty file and more than `max_rows` rows."""
    path = Path(path)
    try:
        f = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise ReferenceDataError(f"cannot read the reference {path}: {exc.strerror or exc}") from None
    with f:
        try:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise ReferenceDataError(f"the reference {path} is empty (it needs a header row)")
            names = [h.strip() for h in header]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ReferenceDataError(f"the reference {path} repeats column(s) {', '.join(dup)}")
            missing = [n for n in needed if n not in names]
            if missing:
                raise ReferenceDataError(f"the reference {path} has no column "
                                         f"{', '.join(map(repr, missing))} (its columns: "
                                         f"{', '.join(names) or 'none'})")
            index = {n: names.index(n) for n in needed}
            columns: dict[str, list[str]] = {n: [] for n in needed}
            lines: list[int] = []
            for row in reader:
                if not row:            # a blank line
                    continue
                if len(row) != len(names):
                    raise ReferenceDataError(f"{path} line {reader.line_num}: {len(row)} fields, the header "
                                             f"has {len(names)}")
                if len(lines) == max_rows:
                    raise ReferenceDataError(f"the reference {path} holds more than {max_rows} rows; a "
                                             "sample of a few tens of thousands is plenty for the baseline")
                for n, i in index.items():
                    columns[n].append(row[i])
                lines.append(reader.line_num)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise ReferenceDataError(f"the reference {path} is not a readable UTF-8 CSV file: "
                                     f"{_first_line(exc)}") from None
    if not lines:
        raise ReferenceDataError(f"the reference {path} has a header but no rows")
    return ReferenceTable(path, columns, lines)


def _numbers(table: ReferenceTable, name: str, dtype: Any = np.float64) -> np.ndarray:
    """A column as finite numbers of `dtype` (a value beyond float32 is not finite as FP32, as the
    inference function's request validation says too); the first bad cell is named by its line."""

    def finite(values: Any) -> np.ndarray | None:
        with np.errstate(over="ignore", invalid="ignore"):
            x = np.asarray(values, dtype=np.float64)
            return x.astype(dtype) if np.isfinite(x).all() and np.isfinite(x.astype(dtype)).all() else None

    values = table.columns[name]
    try:
        out = finite(values)
    except ValueError:
        out = None
    if out is not None:
        return out
    for line, cell in zip(table.lines, values, strict=True):
        try:
            ok = finite([cell]) is not None
        except ValueError:
            ok = False
        if not ok:
            within = f" as {np.dtype(dtype).name}" if np.dtype(dtype) != np.float64 else ""
            raise ReferenceDataError(f"{table.path} line {line}, column '{name}': {cell!r} is not a "
                                     f"finite number{within}")
    raise ReferenceDataError(f"{table.path}, column '{name}': not all values are finite numbers")


# --- running the model ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The runtime's log lines and EMF load metrics (printed to stdout) are about serving; while a reference
    runs offline they are noise, so they are dropped (process-wide for the duration: an offline tool)."""

    def drop(record: logging.LogRecord) -> bool:
        return False

    logger.addFilter(drop)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.removeFilter(drop)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _tensors(manifest: Manifest, table: ReferenceTable) -> tuple[dict[str, Any], str | None]:
    """The model's inputs over the whole reference ({name: Tensor}) and the text input's name (or None)."""
    from tenantml.serving.oip import NUMPY_DTYPES, Tensor  # noqa: PLC0415

    tensors: dict[str, Any] = {}
    text_input = None
    for spec in manifest.inputs:
        if spec.datatype == "BYTES":
            data = table.columns[spec.name]
            tensors[spec.name] = Tensor(spec.name, "BYTES", (len(data),), data)
            text_input = text_input or spec.name
        else:
            dtype = NUMPY_DTYPES[spec.datatype]
            x = np.column_stack([_numbers(table, f, dtype) for f in manifest.features]).astype(dtype)
            tensors[spec.name] = Tensor(spec.name, spec.datatype, tuple(x.shape), x)
    return tensors, text_input


def _needed_columns(manifest: Manifest, label_column: str | None) -> list[str]:
    needed: list[str] = []
    for spec in manifest.inputs:
        if spec.datatype == "BYTES":
            needed.append(spec.name)
        elif not manifest.features:
            raise ReferenceDataError(f"input '{spec.name}' ({spec.datatype}) has no feature names: the "
                                     "manifest's `features` must name its columns")
        elif len(spec.shape) != 2 or spec.shape[-1] not in (-1, len(manifest.features)):
            raise ReferenceDataError(f"input '{spec.name}' has shape {spec.shape}; a reference can feed "
                                     f"only [-1, {len(manifest.features)}] (one row per reference row)")
        else:
            needed.extend(manifest.features)
    if label_column is not None and label_column not in needed:
        needed.append(label_column)
    return list(dict.fromkeys(needed))


def _slice(tensors: dict[str, Any], start: int, stop: int) -> dict[str, Any]:
    from tenantml.serving.oip import Tensor  # noqa: PLC0415

    out = {}
    for name, t in tensors.items():
        data = t.data[start:stop]
        out[name] = Tensor(name, t.datatype, (len(data), *t.shape[1:]), data)
    return out


@dataclass
class _Batch:
    tensors: dict[str, Any]
    values: dict[str, Any]
    signals: Any = None           # serving.capture.TextSignals of a text model


def _load(version: ModelVersion, store: ArtifactStore, backbone: Backbone | None) -> tuple[Any, Any]:
    """(loaded model, loaded backbone or None) through ModelRuntime, as the inference function loads them."""
    from tenantml.serving.runtime import EmbeddingModel, HeadModel, ModelRuntime  # noqa: PLC0415

    where = "the model"
    try:
        with _quiet():
            model = ModelRuntime(store, budget_bytes=1 << 40).get(version)
            if not isinstance(model, HeadModel):
                return model, None
            if backbone is None:
                raise ReferenceDataError(
                    f"'{version.manifest.name}' is a head on {_backbone_name(version.manifest)}: give its "
                    "backbone's built folder with --backbone-folder")
            where = "the backbone"
            bb = backbone.version
            if bb.manifest.task != "embedding" or bb.manifest.backend != "cpu":
                raise ReferenceDataError(f"the backbone '{bb.manifest.name}' is not a CPU embedding model")
            loaded = ModelRuntime(backbone.store, budget_bytes=1 << 40).get(bb)
    except ModelUnavailable as exc:
        raise ReferenceDataError(f"{where} could not be loaded: {exc.detail or exc.public_message}") from None
    if not isinstance(loaded, EmbeddingModel) or (loaded.dim is not None
                                                  and loaded.dim != model.head.embedding_dim):
        raise ReferenceDataError(f"the head ({model.head.embedding_dim}-d) does not fit its backbone "
                                 f"'{backbone.version.manifest.name}' ({getattr(loaded, 'dim', None)}-d)")
    return model, loaded


def _backbone_name(manifest: Manifest) -> str:
    ref = manifest.backbone
    return "no backbone" if ref is None else f"{ref.tenant}/{ref.model} version {ref.version}"


def _predict(model: Any, backbone: Any, tensors: dict[str, Any], rows: int, batch: int,
             text_input: str | None) -> list[_Batch]:
    from tenantml.serving.capture import take_text  # noqa: PLC0415
    from tenantml.serving.runtime import HeadModel  # noqa: PLC0415

    batches = []
    with _quiet():
        for start in range(0, rows, batch):
            stop = min(start + batch, rows)
            part = _slice(tensors, start, stop)
            try:
                values = (model.predict(part, backbone) if isinstance(model, HeadModel)
                          else model.predict(part))
            except Exception as exc:  # noqa: BLE001 - onnxruntime/tokenizers errors: one line for the user
                raise ReferenceDataError(f"the model failed on reference rows {start + 1}-{stop}: "
                                         f"{type(exc).__name__}: {_first_line(exc)}") from None
            signals = take_text(part[text_input].data) if text_input is not None else None
            if text_input is not None and signals is None:
                raise ReferenceDataError("the text model left no token counts for the capture")
            batches.append(_Batch(part, dict(values), signals))
    return batches


def _text_section(manifest: Manifest, text_input: str, batches: list[_Batch],
                  components: int) -> tuple[TextBaseline, Any]:
    """The text section (with the projection of all reference embeddings) and the projection as the
    inference function holds it (`serving.capture.Projection`, read back from the section's JSON)."""
    from tenantml.serving.capture import projection_from_baseline  # noqa: PLC0415

    embeddings = np.concatenate([b.signals.embedding for b in batches])
    try:
        projection = text_projection(embeddings, components) if components else None
    except ValueError as exc:
        raise ReferenceDataError(f"text projection: {exc}") from None
    names = [TOKEN_COUNT, UNKNOWN_TOKEN_RATE]
    applied = None
    if projection is not None:
        applied = projection_from_baseline(json.dumps({"text": {"projection": projection.model_dump()}}))
        names += list(applied.names)
    embedding = "backbone" if manifest.task == "text-classification" else "output"
    return TextBaseline(input=text_input, embedding=embedding, features=names, projection=projection), applied


def _columns(manifest: Manifest, batches: list[_Batch], applied: Any,
             ) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Each batch's capture columns (`capture_columns`), concatenated."""
    from tenantml.serving.capture import capture_columns, text_columns  # noqa: PLC0415

    numeric: dict[str, list[np.ndarray]] = {}
    categorical: dict[str, list[str]] = {}
    for b in batches:
        text = text_columns(replace(b.signals, projection=applied)) if b.signals is not None else None
        got = capture_columns(manifest, b.tensors, b.values, text)
        if got is None:
            raise ReferenceDataError("the model's requests would not be captured: no feature or prediction "
                                     "column to build a baseline from")
        for name, col in got[0].items():
            numeric.setdefault(name, []).append(np.asarray(col))
        for name, cats in got[1].items():
            categorical.setdefault(name, []).extend(cats)
    return {n: np.concatenate(parts) for n, parts in numeric.items()}, categorical


def _labels(table: ReferenceTable, column: str, manifest: Manifest, *, numeric: bool) -> Any:
    if numeric:
        return _numbers(table, column)
    values = [v.strip() for v in table.columns[column]]
    for line, v in zip(table.lines, values, strict=True):
        if not v:
            raise ReferenceDataError(f"{table.path} line {line}: the label column '{column}' is empty")
    output = _first_label_output(manifest)
    known = set(manifest.labels.get(output, ())) if output else set()
    if known and not known.intersection(values):
        raise ReferenceDataError(f"no value of the label column '{column}' is a label of output '{output}' "
                                 f"({', '.join(sorted(known))})")
    return values


def _first_label_output(manifest: Manifest) -> str | None:
    """The output capture records as `prediction` (its first BYTES or floating output)."""
    for spec in manifest.outputs:
        if spec.datatype == "BYTES" or (spec.datatype.startswith("FP") and len(spec.shape) == 1):
            return spec.name
    return None


# --- the baseline ----------------------------------------------------------------------------------------


def baseline_for_folder(folder: Path, reference: Path, *, label_column: str | None = None,
                        bins: int = 100, seed: int = 0, backbone_folder: Path | None = None,
                        backbone: Backbone | None = None, batch_size: int | None = None,
                        max_rows: int = MAX_ROWS, components: int = TEXT_COMPONENTS) -> Baseline:
    """The drift baseline of the model version in `folder` from the reference CSV (see the module
    docstring for what the CSV holds, how the model is run and the memory it takes). A head needs its
    backbone: `backbone_folder` (a built folder) or `backbone` (a registered version and its store).
    Deterministic: the same folder, reference, bins and seed give the same baseline, byte for byte.
    Raises ReferenceDataError (a BadRequest; one line) for anything the user can fix."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest.backend != "cpu":
        raise ReferenceDataError(f"'{manifest.name}' has backend {manifest.backend}: only CPU models can be "
                                 "run for a reference here")
    if bins < 1:
        raise ReferenceDataError("bins must be >= 1")
    if backbone is None and backbone_folder is not None:
        if manifest.task != "text-classification":
            raise ReferenceDataError(f"--backbone-folder is for heads; '{manifest.name}' is a "
                                     f"{manifest.task} model")
        backbone = folder_backbone(backbone_folder, manifest)
    table = read_reference(Path(reference), _needed_columns(manifest, label_column), max_rows=max_rows)
    tensors, text_input = _tensors(manifest, table)
    version = ModelVersion(owner=_LOCAL_OWNER, model=manifest.name, version="reference",
                           manifest=_without_baseline(manifest))
    model, loaded_backbone = _load(version, FolderStore(folder), backbone)
    batch = batch_size or (TEXT_BATCH if text_input is not None else TABULAR_BATCH)
    batches = _predict(model, loaded_backbone, tensors, table.rows, batch, text_input)

    section = applied = None
    if text_input is not None:
        if table.rows < 2:
            raise ReferenceDataError("a text model's reference needs at least 2 texts (for its principal "
                                     "directions)")
        section, applied = _text_section(manifest, text_input, batches, components)
    numeric, categorical = _columns(manifest, batches, applied)
    predictions: Any = numeric.pop(PREDICTION, None)
    if predictions is None:
        predictions = categorical.pop(PREDICTION, None)
    labels = None
    if label_column is not None:
        if predictions is None:
            raise ReferenceDataError(f"--label {label_column}: '{manifest.name}' has no label or numeric "
                                     "prediction output to compare labels with")
        labels = _labels(table, label_column, manifest, numeric=isinstance(predictions, np.ndarray))
    try:
        return build_baseline(numeric, categorical, predictions=predictions, labels=labels, bins=bins,
                              seed=seed, text=section)
    except (ValueError, ValidationError) as exc:
        raise ReferenceDataError(f"the baseline could not be built: {_first_line(exc)}") from None


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_baseline(folder: Path, baseline: Baseline) -> FileEntry:
    """Write `baseline` as the folder's baseline.json (`model_dump_json()`, as the builders write it) and list
    it in manifest.json with its sha256 and size. The manifest is rewritten the way the builders write it
    (`example_models.heads.write_manifest`: the Manifest model, sorted keys, 2-space indent), so a built
    folder's manifest.json changes in the baseline.json entry only. Each file is replaced atomically."""
    from tenantml.manifest import canonical_json  # noqa: PLC0415

    folder = Path(folder)
    manifest = read_manifest(folder)
    data = baseline.model_dump_json().encode()
    entry = FileEntry(sha256=sha256_bytes(data), size=len(data))
    files = {**manifest.files, BASELINE_FILE: entry}
    updated = Manifest.model_validate({**manifest.model_dump(), "files": files})
    _atomic_write(folder / BASELINE_FILE, data)
    _atomic_write(folder / MANIFEST_FILE, canonical_json(updated.model_dump(mode="json"), indent=2))
    return entry


# --- the command -----------------------------------------------------------------------------------------


def summary(baseline: Baseline) -> list[str]:
    """A few lines about a baseline: rows, features, the prediction, the baseline accuracy/MAE."""
    feats = baseline.features
    first = next(iter(feats.values()), None) or baseline.prediction
    rows = first.count if first is not None else 0
    names = list(feats)
    shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
    lines = [f"rows: {rows}", f"features: {len(names)} ({shown or 'none'})"]
    if baseline.text is not None and baseline.text.projection is not None:
        p = baseline.text.projection
        lines.append(f"text: input '{baseline.text.input}', {p.k} principal directions of the "
                     f"{baseline.text.embedding} embedding ({sum(p.explained_variance_ratio):.1%} of its "
                     "variance)")
    pred = baseline.prediction
    if pred is None:
        lines.append("prediction: none captured")
    elif pred.kind == "categorical":
        top = sorted(((v, k) for k, v in pred.proportions.items() if v > 0), reverse=True)[:5]
        lines.append("prediction: categorical (" + ", ".join(f"{k} {v:.1%}" for v, k in top) + ")")
    else:
        lines.append(f"prediction: numeric (mean {pred.mean:.4g}, std {pred.std:.4g})")
    perf = baseline.performance
    if perf is not None and perf.accuracy is not None:
        lines.append(f"baseline accuracy: {perf.accuracy:.4f} over {perf.count} labelled rows")
    elif perf is not None and perf.mae is not None:
        lines.append(f"baseline MAE: {perf.mae:.4g} (RMSE {perf.rmse:.4g}) over {perf.count} labelled rows")
    else:
        lines.append("baseline accuracy: none (no --label)")
    return lines


def compute_and_write(folder: Path, reference: Path, *, label_column: str | None = None,
                      backbone_folder: Path | None = None, backbone: Backbone | None = None,
                      bins: int = 100, out: TextIO | None = None) -> Baseline:
    """`baseline_for_folder` then `write_baseline`, with the summary on `out`."""
    baseline = baseline_for_folder(folder, reference, label_column=label_column, bins=bins,
                                   backbone_folder=backbone_folder, backbone=backbone)
    try:
        entry = write_baseline(folder, baseline)
    except OSError as exc:
        raise ReferenceDataError(f"cannot write {BASELINE_FILE} into {folder}: "
                                 f"{exc.strerror or exc}") from None
    out = out or sys.stdout
    print(f"{Path(folder) / BASELINE_FILE}: {entry.size} bytes, sha256 {entry.sha256[:12]}..., listed in "
          f"{MANIFEST_FILE}", file=out)
    for line in summary(baseline):
        print(f"  {line}", file=out)
    return baseline


def baseline_command(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    try:
        compute_and_write(Path(args.path), Path(args.reference), label_column=args.label,
                          backbone_folder=Path(args.backbone_folder) if args.backbone_folder else None,
                          bins=args.bins, out=out)
    except (TenantMLError, OSError) as exc:
        msg = exc.public_message if isinstance(exc, TenantMLError) and exc.detail is None else str(exc)
        print(f"error: {msg}", file=err or sys.stderr)
        return 1
    return 0
