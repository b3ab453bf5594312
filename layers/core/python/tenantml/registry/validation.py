"""Content checks at registration: a version's files must load the way the serving path will load them.

The checks are the serving path's own (tenantml.serving.runtime.Loader and tenantml.serving.loading):
a CPU version is loaded exactly as the inference function would load it, from the staged files (inline
files not yet uploaded, overlaid on what is stored under the version's prefix), so a version that
registers is one that serves. On top of that, registration refuses what serving would only trip over
later:
- `model.onnx` with external data (an initializer or attribute tensor whose data lives in another file:
  never verified by the manifest's sha256, and a path the runtime would open) is refused before
  onnxruntime sees the file, by walking the protobuf (no `onnx` package: it is not in the Lambda layer);
- an embedding model whose graph produces another width than its manifest declares;
- a head whose `embedding_dim` differs from its backbone's.
A GPU version (served by the GPU endpoint) is not loaded on the CPU: its `model.onnx`, if it lists one,
is walked for external data and its tokenizer must load.

Every refusal is a BadRequest (400) naming the file and the problem; library exception text goes to the
log `detail` only.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, BinaryIO

from tenantml.errors import BadRequest, IntegrityError, ModelUnavailable, TenantMLError
from tenantml.manifest import Manifest
from tenantml.registry import ArtifactStore, ModelVersion

MODEL_FILE = "model.onnx"
HEAD_FILE = "head.json"

# --- external data in an ONNX protobuf --------------------------------------------------------------

# The length-delimited fields that can hold a TensorProto, per message (onnx.proto field numbers).
_MODEL, _GRAPH, _NODE, _ATTR, _TENSOR, _SPARSE, _FUNCTION = range(7)
_CHILDREN: dict[int, dict[int, int]] = {
    _MODEL: {7: _GRAPH, 25: _FUNCTION},                   # ModelProto.graph, .functions
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},          # GraphProto.node, .initializer, .sparse_initializer
    _FUNCTION: {7: _NODE},                                # FunctionProto.node
    _NODE: {5: _ATTR},                                    # NodeProto.attribute
    _ATTR: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},                    # SparseTensorProto.values, .indices
}
_EXTERNAL_DATA = 13     # TensorProto.external_data
_DATA_LOCATION = 14     # TensorProto.data_location (1 = EXTERNAL)
_MAX_DEPTH = 64


class NotOnnx(ValueError):
    """The bytes are not a protobuf message."""


class ExternalData(ValueError):
    """A tensor of the model keeps its data outside the file."""


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise NotOnnx("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _walk(buf: memoryview, pos: int, end: int, kind: int, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise NotOnnx("messages nested too deeply")
    children = _CHILDREN.get(kind, {})
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise NotOnnx("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            if kind == _TENSOR and field == _DATA_LOCATION and value == 1:
                raise ExternalData("data_location EXTERNAL")
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise NotOnnx("truncated field")
            if kind == _TENSOR and field == _EXTERNAL_DATA:
                raise ExternalData("external_data entries")
            if field in children:
                _walk(buf, pos, pos + length, children[field], depth + 1)
            pos += length
        else:
            raise NotOnnx(f"wire type {wire}")
        if pos > end:
            raise NotOnnx("truncated field")


def check_no_external_data(data: bytes | memoryview | mmap.mmap) -> None:
    """Raise ExternalData if any tensor of the model (initializers, node attributes, subgraphs, functions)
    has its data outside the file; NotOnnx if the bytes are not a protobuf message. Streams through the
    buffer without copying it: large fields (raw tensor data) are skipped by their length."""
    with memoryview(data) as buf:   # released on the way out, so an mmap under it can close
        if not len(buf):
            raise NotOnnx("empty file")
        _walk(buf, 0, len(buf), _MODEL, 0)


def check_onnx_file(path: str) -> None:
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if not size:
            raise NotOnnx("empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            check_no_external_data(mapped)


def _onnx_refusal(exc: Exception) -> BadRequest:
    if isinstance(exc, ExternalData):
        return BadRequest(f"file '{MODEL_FILE}' uses external data (tensor data stored outside the file); "
                          "save the model with all tensors inside model.onnx", detail=str(exc))
    return BadRequest(f"file '{MODEL_FILE}' is not a valid ONNX model", detail=str(exc))


# --- the staged version -------------------------------------------------------------------------------

class StagedFiles:
    """An ArtifactStore view of one version being registered: its inline files (not uploaded yet) over
    what is stored; any other version is read from the store as is (a head's backbone)."""

    def __init__(self, store: ArtifactStore, owner: str, model: str, version: str,
                 inline: Mapping[str, bytes]) -> None:
        self._store, self._where, self._inline = store, (owner, model, version), dict(inline)

    def get(self, owner: str, model: str, version: str, name: str) -> bytes:
        if (owner, model, version) == self._where and name in self._inline:
            return self._inline[name]
        return self._store.get(owner, model, version, name)

    def download(self, owner: str, model: str, version: str, name: str, out: BinaryIO) -> None:
        if (owner, model, version) == self._where and name in self._inline:
            out.write(self._inline[name])
            return
        self._store.download(owner, model, version, name, out)

    def put(self, owner: str, model: str, version: str, name: str, data: bytes) -> None:
        raise NotImplementedError("a staged version is read-only")


def _problem(name: str | None, exc: Exception) -> BadRequest:
    """A load failure as a client answer naming the file; library text only in the log detail."""
    detail = f"{type(exc).__name__}: {exc}"[:500]
    if name is None:
        return BadRequest("the version does not fit its manifest", detail=detail)
    if name == MODEL_FILE:
        return _onnx_refusal(exc)
    if name == HEAD_FILE:
        return BadRequest(f"file '{name}' is not a valid head", detail=detail)
    if name.endswith(".json") and "tokenizer" in name:
        return BadRequest(f"file '{name}' is not a valid tokenizer (tokenizers.Tokenizer.from_str failed)",
                          detail=detail)
    return BadRequest(f"file '{name}' could not be loaded", detail=detail)


class ContentValidator:
    """Loads a staged version the way serving does, and refuses (400) what would not serve."""

    def __init__(self, store: ArtifactStore) -> None:
        self._store = store

    def validate(self, owner: str, model: str, version: str, manifest: Manifest, inline: Mapping[str, bytes],
                 backbone: ModelVersion | None) -> None:
        staged = StagedFiles(self._store, owner, model, version, inline)
        mv = ModelVersion(owner=owner, model=model, version=version, manifest=manifest)
        if manifest.backend != "cpu":
            self._check_files_only(staged, mv)
            return
        loaded = self._load(staged, mv)
        if manifest.task == "embedding":
            declared = manifest.outputs[0].shape[-1] if manifest.outputs[0].shape else -1
            dim = getattr(loaded, "dim", None)
            if dim is not None and declared > 0 and dim != declared:
                raise BadRequest(f"file '{MODEL_FILE}' produces embeddings of dimension {dim}, the manifest "
                                 f"declares {declared} (outputs.{manifest.outputs[0].name}.shape)")
        if manifest.task == "text-classification" and backbone is not None:
            head_dim = loaded.head.embedding_dim
            backbone_dim = self._embedding_dim(backbone)
            if backbone_dim is not None and head_dim != backbone_dim:
                raise BadRequest(f"file '{HEAD_FILE}' has embedding_dim {head_dim}, but backbone model "
                                 f"'{backbone.model}' version '{backbone.version}' produces embeddings of "
                                 f"dimension {backbone_dim}")

    def _load(self, staged: ArtifactStore, mv: ModelVersion) -> Any:
        from tenantml.serving.loading import Misconfigured  # noqa: PLC0415 - onnxruntime: only when used

        artifacts = _TrackedArtifacts(staged, mv)
        try:
            return _checking_loader()().load(mv.manifest, artifacts)
        except (ExternalData, NotOnnx) as exc:
            raise _onnx_refusal(exc) from None
        except Misconfigured as exc:
            where = f"file '{artifacts.current}'" if artifacts.current else "the version"
            raise BadRequest(f"{where} does not fit the manifest: {str(exc)[:300]}") from None
        except IntegrityError:
            raise BadRequest(f"file '{artifacts.current}' does not match the sha256/size in the manifest "
                             "(it changed during registration)") from None
        except ModelUnavailable:
            raise BadRequest(f"file '{artifacts.current}' listed in the manifest could not be read") from None
        except TenantMLError:
            raise
        except Exception as exc:  # noqa: BLE001 - onnxruntime and tokenizers raise their own kinds
            raise _problem(artifacts.current, exc) from None

    def _embedding_dim(self, backbone: ModelVersion) -> int | None:
        """The width of the backbone's embeddings: what its manifest declares (checked against its graph
        when it registered), else what its graph says."""
        spec = backbone.manifest.outputs[0] if backbone.manifest.outputs else None
        if spec is not None and spec.shape and spec.shape[-1] > 0:
            return spec.shape[-1]
        try:
            return getattr(self._load(self._store, backbone), "dim", None)
        except BadRequest:
            return None

    def _check_files_only(self, staged: ArtifactStore, mv: ModelVersion) -> None:
        manifest = mv.manifest
        if MODEL_FILE in manifest.files:
            data = staged.get(mv.owner, mv.model, mv.version, MODEL_FILE)
            try:
                check_no_external_data(data)
            except (ExternalData, NotOnnx) as exc:
                raise _onnx_refusal(exc) from None
        if manifest.tokenizer is not None and manifest.tokenizer.file in manifest.files:
            from tokenizers import Tokenizer  # noqa: PLC0415

            name = manifest.tokenizer.file
            try:
                Tokenizer.from_str(staged.get(mv.owner, mv.model, mv.version, name).decode("utf-8"))
            except Exception as exc:  # noqa: BLE001 - tokenizers raises plain Exception
                raise _problem(name, exc) from None


def _tracked(cls: type) -> type:
    """Artifacts that remember the file being read, so a load failure names it."""

    class Tracked(cls):  # type: ignore[misc, valid-type]
        current: str | None = None

        def read(self, name: str) -> bytes:
            self.current = name
            return super().read(name)

        @contextmanager
        def file(self, name: str) -> Iterator[tuple[str, int]]:
            self.current = name
            with super().file(name) as opened:
                yield opened

    return Tracked


def _TrackedArtifacts(store: ArtifactStore, mv: ModelVersion) -> Any:  # noqa: N802 - a class factory
    from tenantml.serving.runtime import Artifacts  # noqa: PLC0415

    return _tracked(Artifacts)(store, mv)


def _checking_loader() -> Callable[[], Any]:
    """The serving Loader, with one step added before onnxruntime opens a model file: the external-data
    walk (a model that names another file is refused before any path in it is followed)."""
    from tenantml.serving.runtime import Loader  # noqa: PLC0415

    return lambda: Loader(inspect=check_onnx_file)
