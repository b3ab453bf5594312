"""Loading models once per execution environment: verified artifacts -> onnxruntime sessions, tokenizers
and heads, kept in an LRU cache bounded by memory.

Every artifact is checked against the manifest's sha256 before anything is built from it; a missing or
corrupt artifact raises ModelUnavailable (503) and is NOT cached, so a later fixed upload loads. The cache
is keyed by (owner tenant, model, version) and sized by artifact bytes (`model_cache_mb`). A classification
head holds only its head.json arrays (kilobytes): its backbone is a separate cache entry, shared by every
tenant's head, and is looked up per request so that eviction accounting stays honest.

A text model (an encoder or a head) whose manifest lists baseline.json loads it too, verified like every
artifact, for the text projection its capture needs (`tenantml.serving.capture.Projection`: the reference
embeddings' mean and principal directions); a baseline without one, or one that does not fit the
embedding, is logged and the model is served without the `embedding_pc*` columns (monitoring never
makes a model unavailable, only a corrupt artifact does). Its predict leaves the request's token counts
and embedding for the capture (`note_text`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import onnxruntime as ort
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from cachetools import LRUCache
from tokenizers import Tokenizer

from tenantml.errors import IntegrityError, ModelUnavailable, TenantMLError
from tenantml.manifest import FileEntry, Manifest, verify_file
from tenantml.observability import NAMESPACE, logger
from tenantml.registry import ArtifactStore, ModelVersion
from tenantml.serving import processing
from tenantml.serving.capture import Projection, TextSignals, note_text, projection_from_baseline
from tenantml.serving.heads import Head, load_head
from tenantml.serving.loading import Misconfigured as _Misconfigured
from tenantml.serving.loading import require_outputs as _require_outputs
from tenantml.serving.loading import session_options, tabular_binding
from tenantml.serving.loading import text_input as _text_input
from tenantml.serving.oip import Tensor

ModelKey = tuple[str, str, str]  # (owner tenant, model, version)
MODEL_FILE = "model.onnx"
HEAD_FILE = "head.json"
BASELINE_FILE = "baseline.json"


def model_key(mv: ModelVersion) -> ModelKey:
    return (mv.owner, mv.model, mv.version)


# --- loaded models ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddingModel:
    """A sentence encoder: `text` BYTES [n] -> `embedding` FP32 [n, d]."""

    session: ort.InferenceSession
    tokenizer: Tokenizer
    input_names: tuple[str, ...]
    onnx_output: str
    text_input: str
    output: str
    dim: int | None
    nbytes: int
    token_facts: processing.TokenFacts = processing.TokenFacts(unk_id=None, specials=0, max_length=None)
    projection: Projection | None = None      # from baseline.json, for the capture's embedding_pc*

    def embed(self, texts: list[str]) -> np.ndarray:
        return processing.embed_texts(self.session, self.tokenizer, texts, input_names=self.input_names,
                                      output_name=self.onnx_output)

    def encode(self, texts: list[str]) -> tuple[np.ndarray, processing.TokenCounts]:
        """The embeddings and, from the same tokenization, the token counts of each text."""
        encodings = processing.tokenize(self.tokenizer, texts)
        feeds, mask = processing.token_feeds(encodings, self.input_names)
        emb = processing.embed_feeds(self.session, feeds, mask, output_name=self.onnx_output)
        return emb, processing.count_tokens(encodings, feeds["input_ids"], mask, self.token_facts)

    def predict(self, inputs: Mapping[str, Tensor]) -> processing.Outputs:
        texts = inputs[self.text_input].data
        emb, counts = self.encode(texts)  # type: ignore[arg-type]
        note_text(TextSignals(texts, counts.tokens, counts.unknown, emb, self.projection))  # type: ignore[arg-type]
        return {self.output: emb}


@dataclass(frozen=True)
class HeadModel:
    """A classification head on a backbone's embeddings. Holds no session of its own."""

    head: Head
    text_input: str
    nbytes: int
    projection: Projection | None = None      # of the backbone's embeddings, from this head's baseline.json

    def predict(self, inputs: Mapping[str, Tensor], backbone: EmbeddingModel) -> processing.Outputs:
        texts = inputs[self.text_input].data
        emb, counts = backbone.encode(texts)  # type: ignore[arg-type]
        note_text(TextSignals(texts, counts.tokens, counts.unknown, emb, self.projection))  # type: ignore[arg-type]
        return processing.head_outputs(self.head, emb)


@dataclass(frozen=True)
class TabularModel:
    """An skl2onnx classifier: `features` FP32 [n, F] -> `<o>` BYTES [n] and `<o>_probs` FP32 [n, k]."""

    session: ort.InferenceSession
    onnx_input: str
    features_input: str
    output: str
    labels: tuple[str, ...]
    label_key: str | None
    prob_key: str
    nbytes: int

    def predict(self, inputs: Mapping[str, Tensor]) -> processing.Outputs:
        return processing.predict_tabular(self.session, inputs[self.features_input].data,  # type: ignore[arg-type]
                                          input_name=self.onnx_input, output=self.output, labels=self.labels,
                                          label_key=self.label_key, prob_key=self.prob_key)


LoadedModel = EmbeddingModel | HeadModel | TabularModel


# --- loading ------------------------------------------------------------------------------------------


def _projection(manifest: Manifest, artifacts: Artifacts, dim: int | None) -> Projection | None:
    """The text projection of the version's baseline.json, if it lists one that fits embeddings of `dim`.
    A corrupt baseline.json (sha256) raises like any artifact; one without a usable projection is logged."""
    if BASELINE_FILE not in manifest.files:
        return None
    data = artifacts.read(BASELINE_FILE)
    try:
        projection = projection_from_baseline(data)
    except (ValueError, KeyError, TypeError) as exc:
        logger.warning("baseline.json has no usable text projection; capture without embedding_pc*",
                       extra={"model_name": manifest.name, "error": f"{type(exc).__name__}: {exc}"[:200]})
        return None
    if projection is not None and dim is not None and projection.dim != dim:
        logger.warning("the baseline's text projection does not fit the embedding; capture without "
                       "embedding_pc*", extra={"model_name": manifest.name, "projection_dim": projection.dim,
                                               "embedding_dim": dim})
        return None
    return projection


class _VerifyingWriter:
    """Writes an artifact through to `out` while hashing it; refuses bytes beyond the manifest's size, so a
    wrong object can neither fill memory or /tmp nor reach onnxruntime."""

    def __init__(self, out: BinaryIO, entry: FileEntry, label: str) -> None:
        self._out, self._entry, self._label = out, entry, label
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> int:
        self.size += len(chunk)
        if self.size > self._entry.size:
            raise IntegrityError(detail=f"size mismatch for {self._label}")
        self._hash.update(chunk)  # releases the GIL on large chunks
        return self._out.write(chunk)

    def verify(self) -> None:
        if self.size != self._entry.size or self._hash.hexdigest() != self._entry.sha256:
            raise IntegrityError(detail=f"sha256 mismatch for {self._label}")


@contextmanager
def _scratch_file(label: str, name: str) -> Iterator[tuple[BinaryIO, str]]:
    """An empty file for one artifact and a path onnxruntime can open: an in-memory file (memfd, Linux and
    Lambda: no /tmp space used, gone on close), else a file in a fresh temporary directory named after the
    (owner, model, version). Removed when the block exits, on success or failure."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create(f"tenantml-{label}-{name}", os.MFD_CLOEXEC)
        with os.fdopen(fd, "w+b") as f:
            yield f, f"/proc/self/fd/{fd}"
        return
    with tempfile.TemporaryDirectory(prefix=f"tenantml-{label}-") as tmp:
        path = os.path.join(tmp, name)
        with open(path, "w+b") as f:
            yield f, path


class Artifacts:
    """One version's artifacts, each verified against the manifest's sha256 and size before anything is
    built from it. Small files are read whole (`read`); a model is streamed into a scratch file while it is
    hashed (`file`), so its bytes never sit in Python memory beside onnxruntime's copy."""

    def __init__(self, store: ArtifactStore, mv: ModelVersion) -> None:
        self._store, self._mv = store, mv
        self._label = f"{mv.owner}-{mv.model}-{mv.version}"

    def _entry(self, name: str) -> FileEntry:
        entry = self._mv.manifest.files.get(name)
        if entry is None:
            raise IntegrityError(detail=f"{name} is not listed in the manifest of {self._mv.manifest.name}")
        return entry

    def read(self, name: str) -> bytes:
        mv = self._mv
        return verify_file(mv.manifest, name, self._store.get(mv.owner, mv.model, mv.version, name))

    @contextmanager
    def file(self, name: str) -> Iterator[tuple[str, int]]:
        """(path, size) of the verified artifact, valid inside the block."""
        mv, entry = self._mv, self._entry(name)
        with _scratch_file(self._label, name) as (f, path):
            writer = _VerifyingWriter(f, entry, f"{mv.manifest.name}/{name}")
            self._store.download(mv.owner, mv.model, mv.version, name, writer)  # type: ignore[arg-type]
            writer.verify()
            f.flush()
            yield path, writer.size


class Loader:
    """Builds a LoadedModel from a version's verified artifacts."""

    def __init__(self, options: Callable[[], ort.SessionOptions] = session_options, *,
                 inspect: Callable[[str], None] | None = None) -> None:
        """`inspect(path)` runs on each verified model file before onnxruntime opens it (registration's
        external-data check); it raises to refuse the file."""
        self._options, self._inspect = options, inspect

    def _session(self, artifacts: Artifacts, name: str) -> tuple[ort.InferenceSession, int]:
        """A session created from a file rather than from bytes: onnxruntime copies a bytes buffer before
        parsing it (one extra model size of peak RSS), and the file is filled chunk by chunk."""
        with artifacts.file(name) as (path, size):
            if self._inspect is not None:
                self._inspect(path)
            session = ort.InferenceSession(path, sess_options=self._options(),
                                           providers=["CPUExecutionProvider"])
        return session, size

    def load(self, manifest: Manifest, artifacts: Artifacts) -> LoadedModel:
        if manifest.task == "embedding":
            return self._embedding(manifest, artifacts)
        if manifest.task == "text-classification":
            return self._head(manifest, artifacts)
        return self._tabular(manifest, artifacts)

    def _embedding(self, manifest: Manifest, artifacts: Artifacts) -> EmbeddingModel:
        if manifest.tokenizer is None:
            raise _Misconfigured("embedding model without a tokenizer")
        tok_bytes = artifacts.read(manifest.tokenizer.file)
        tokenizer = processing.configure_tokenizer(Tokenizer.from_str(tok_bytes.decode("utf-8")),
                                                   manifest.tokenizer.max_length)
        session, model_size = self._session(artifacts, MODEL_FILE)
        graph_inputs = [i.name for i in session.get_inputs()]
        feeds = tuple(n for n in processing.TOKEN_INPUTS if n in graph_inputs)
        if len(feeds) != len(graph_inputs) or "input_ids" not in feeds:
            raise _Misconfigured(f"unsupported graph inputs {graph_inputs}")
        outs = session.get_outputs()
        onnx_out = next((o for o in outs if o.name == "embedding"), outs[0])
        if len(manifest.outputs) != 1:
            raise _Misconfigured("an embedding model declares exactly one output")
        dim = onnx_out.shape[-1] if isinstance(onnx_out.shape[-1], int) else None
        projection = _projection(manifest, artifacts, dim)
        return EmbeddingModel(session=session, tokenizer=tokenizer, input_names=feeds,
                              onnx_output=onnx_out.name, text_input=_text_input(manifest),
                              output=manifest.outputs[0].name, dim=dim,
                              nbytes=model_size + len(tok_bytes) + (projection.nbytes if projection else 0),
                              token_facts=processing.token_facts(tokenizer), projection=projection)

    def _head(self, manifest: Manifest, artifacts: Artifacts) -> HeadModel:
        if manifest.backbone is None:
            raise _Misconfigured("text-classification model without a backbone")
        data = artifacts.read(HEAD_FILE)
        try:
            head = load_head(data)
        except TenantMLError as exc:  # load_head's BadRequest is a server-side fault here
            raise _Misconfigured(exc.detail or exc.public_message) from None
        produced = {o.name for o in head.outputs} | {o.name + processing.PROBS_SUFFIX for o in head.outputs}
        _require_outputs(manifest, produced)
        projection = _projection(manifest, artifacts, head.embedding_dim)
        return HeadModel(head=head, text_input=_text_input(manifest),
                         nbytes=len(data) + (projection.nbytes if projection else 0), projection=projection)

    def _tabular(self, manifest: Manifest, artifacts: Artifacts) -> TabularModel:
        session, model_size = self._session(artifacts, MODEL_FILE)
        b = tabular_binding(manifest, session)
        return TabularModel(session=session, onnx_input=b.onnx_input, features_input=manifest.inputs[0].name,
                            output=b.output, labels=b.labels, label_key=b.label_key, prob_key=b.prob_key,
                            nbytes=model_size)


def _model_metric(name: str, mv: ModelVersion, value: float = 1, unit: MetricUnit = MetricUnit.Count) -> None:
    # Its own EMF blob, so the dimensions are the loaded model's (a head request may load a backbone).
    with single_metric(name=name, unit=unit, value=value, namespace=NAMESPACE) as m:
        m.add_dimension("model", mv.model)
        m.add_dimension("version", mv.version)


class ModelRuntime:
    """The per-execution-environment model cache: (owner, model, version) -> LoadedModel."""

    def __init__(self, store: ArtifactStore, *, budget_bytes: int, loader: Loader | None = None) -> None:
        self._store = store
        self._loader = loader or Loader()
        self._cache: LRUCache[ModelKey, LoadedModel] = LRUCache(maxsize=budget_bytes,
                                                                   getsizeof=lambda m: max(1, m.nbytes))
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()

    @property
    def budget_bytes(self) -> int:
        return int(self._cache.maxsize)

    @property
    def used_bytes(self) -> int:
        return int(self._cache.currsize)

    def loaded(self) -> Iterator[ModelKey]:
        with self._lock:
            return iter(list(self._cache.keys()))

    def peek(self, mv: ModelVersion) -> LoadedModel | None:
        with self._lock:
            return self._cache.get(model_key(mv))

    def get(self, mv: ModelVersion) -> LoadedModel:
        """The loaded model, loading (and verifying) it on first use. Thread-safe: cache reads and writes
        hold a short lock; loads are serialized by another, so a load never blocks loaded models."""
        key = model_key(mv)
        with self._lock:
            model = self._cache.get(key)
        if model is not None:
            return model
        with self._load_lock:
            with self._lock:
                model = self._cache.get(key)
            if model is None:
                model = self._load(mv)
                try:
                    with self._lock:
                        self._cache[key] = model
                except ValueError:  # larger than the whole budget: serve it, do not cache it
                    logger.warning("model larger than the model cache; not cached",
                                   extra={"owner": mv.owner, "nbytes": model.nbytes,
                                          "budget_bytes": self.budget_bytes})
        return model

    def _load(self, mv: ModelVersion) -> LoadedModel:
        manifest = mv.manifest
        t0 = time.perf_counter()
        try:
            model = self._loader.load(manifest, Artifacts(self._store, mv))
        except TenantMLError as exc:
            self._failed(mv, type(exc).__name__, exc.detail)
            if isinstance(exc, ModelUnavailable):
                raise
            raise ModelUnavailable(detail=exc.detail) from None
        except _Misconfigured as exc:
            self._failed(mv, "Misconfigured", str(exc))
            raise ModelUnavailable(detail=str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - onnxruntime/tokenizers parse errors: never leak, never cache
            self._failed(mv, type(exc).__name__, "artifact could not be loaded")
            raise ModelUnavailable(detail=f"load failed: {type(exc).__name__}") from None
        ms = (time.perf_counter() - t0) * 1000
        logger.info("model loaded", extra={"owner": mv.owner, "load_model": mv.model,
                                           "load_version": mv.version, "task": manifest.task,
                                           "nbytes": model.nbytes, "load_ms": round(ms, 1)})
        _model_metric("ModelLoad", mv)
        _model_metric("ModelLoadTime", mv, ms, MetricUnit.Milliseconds)
        return model

    @staticmethod
    def _failed(mv: ModelVersion, reason: str, detail: str | None) -> None:
        logger.error("model load failed", extra={"owner": mv.owner, "load_model": mv.model,
                                                 "load_version": mv.version, "reason": reason,
                                                 "detail": detail})
        _model_metric("ModelLoadFailure", mv)

