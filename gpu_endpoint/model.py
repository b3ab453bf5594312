"""The served model: a verified model version folder -> an onnxruntime session, and the code that turns
validated OIP tensors into outputs, one request or a dynamic batch of them at a time.

The folder is the CPU path's artifact format (`/opt/ml/model` in SageMaker, from model.tar.gz):
manifest.json plus every file it lists (model.onnx, tokenizer.json, ...). Every listed file is checked
against the manifest's size and sha256 before anything is built from it (`verify_folder`: small files
through `tenantml.manifest.verify_file` itself, model.onnx hashed as a stream so a large model is never
held twice in memory); a missing or different file, or a manifest this container cannot serve, is a
LoadError and the server refuses to start.

Served: `embedding` models (text -> sentence embedding: the main case) and `tabular-classification`
models. A `text-classification` head is a head.json on a shared CPU backbone: the Lambda path serves it.

Pre- and post-processing are `tenantml.serving.processing`'s, exactly as the Lambda path calls them
(`tenantml.serving.runtime`, which this module must not import: it pulls Powertools): a request that runs
alone is tokenized, fed, chunked, pooled and labelled by the same calls with the same arrays, so its
answer is the CPU path's answer bit for bit (on the same provider and precision). Requests batched
together are tokenized each on its own (`prepare`, in the request's thread), then their rows are re-padded
into length buckets (`gpu_endpoint.batching.plan_buckets`) and run through the same `embed_feeds`.

Device and precision:
- TENANTML_GPU_DEVICE = auto (CUDA when onnxruntime has the CUDA provider and it initialises, else CPU)
  | cuda (refuse to start without it) | cpu.
- TENANTML_GPU_PRECISION = auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16. fp16 converts the graph at load
  with onnxruntime's own `convert_float_to_float16(model, keep_io_types=True)`: inputs and outputs stay as
  declared (int64 token ids in, float32 embeddings out), weights and activations become float16 except
  the ops its default block list keeps in float32. Only text encoders are converted; tabular models (ML
  ops, tiny) stay fp32. With `auto`, a graph that fails to convert or to load in fp16 is served in fp32
  (logged); with an explicit `fp16` it is a LoadError. `fp16_agreement` measures what fp16 costs in
  accuracy (cosine to the fp32 embeddings of the same texts): the benchmark prints it.

Compute attribution: each request's result carries `compute_ms`, its share of the model runs it took
part in: a run's wall time split evenly over its rows (within a length bucket every row is padded to the
same width, so rows are also the share of padded tokens); a tabular batch's split by rows.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from gpu_endpoint.batching import plan_buckets
from tenantml.errors import IntegrityError
from tenantml.manifest import Manifest, sha256_file, verify_file
from tenantml.serving import oip, processing
from tenantml.serving.loading import (
    Misconfigured,
    session_options,
    tabular_binding,
    text_input,
)

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
DEFAULT_MODEL_DIR = "/opt/ml/model"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
STREAM_VERIFY_BYTES = 16 * 1024 * 1024     # larger artifacts are hashed from disk, not read into memory

ENV_MODEL_DIR = "TENANTML_MODEL_DIR"
ENV_MODEL_NAME = "TENANTML_MODEL_NAME"
ENV_MODEL_VERSION = "TENANTML_MODEL_VERSION"
ENV_DEVICE = "TENANTML_GPU_DEVICE"
ENV_PRECISION = "TENANTML_GPU_PRECISION"
ENV_MAX_TOKENS = "TENANTML_GPU_MAX_TOKENS_PER_RUN"
ENV_RUN_OVERHEAD = "TENANTML_GPU_RUN_OVERHEAD_TOKENS"

DEVICES = ("auto", "cuda", "cpu")
PRECISIONS = ("auto", "fp32", "fp16")
# The fixed cost of one onnxruntime run, in tokens' worth of compute (bucket planning). Measured on
# all-MiniLM-L6-v2: on 2 CPU cores a 1 x 16-token run costs ~4.3 ms where a token costs ~0.16 ms in a
# full batch, i.e. ~12-16 tokens; on an H200 a short run is launch-bound: one text ~1.05 ms per run, 32
# texts (~560 more tokens) ~1.45 ms, i.e. ~1400 tokens per ms and ~1500 tokens of overhead per run.
RUN_OVERHEAD_TOKENS = {CPU: 16.0, CUDA: 1536.0}


class LoadError(Misconfigured):
    """The model folder cannot be served: the server logs this message and exits non-zero (the shared
    manifest checks raise its base, Misconfigured)."""


class Result(NamedTuple):
    """One request's outputs (by manifest output name, the CPU path's values) and its compute share."""

    values: dict[str, Any]
    compute_ms: float


@dataclass(frozen=True)
class ModelOptions:
    device: str = "auto"
    precision: str = "auto"
    max_tokens_per_run: int = processing.MAX_TOKENS_PER_RUN
    run_overhead_tokens: float | None = None    # None: RUN_OVERHEAD_TOKENS of the provider
    max_batch_rows: int = 32                    # the batcher's max_batch: rows per length bucket
    name: str | None = None                     # the OIP model_name answered (default: the manifest's)
    version: str = "1"                          # the OIP model_version answered

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device[:32]!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision[:32]!r}")
        if self.max_tokens_per_run < 1:
            raise ValueError("max_tokens_per_run must be >= 1")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ModelOptions:
        env = os.environ if env is None else env
        values: dict[str, Any] = {
            "device": (env.get(ENV_DEVICE) or "auto").strip().lower(),
            "precision": (env.get(ENV_PRECISION) or "auto").strip().lower(),
        }
        if env.get(ENV_MAX_TOKENS):
            values["max_tokens_per_run"] = int(env[ENV_MAX_TOKENS])
        if env.get(ENV_RUN_OVERHEAD):
            values["run_overhead_tokens"] = float(env[ENV_RUN_OVERHEAD])
        if env.get(ENV_MODEL_NAME):
            values["name"] = env[ENV_MODEL_NAME]
        if env.get(ENV_MODEL_VERSION):
            values["version"] = env[ENV_MODEL_VERSION]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    task: str
    model_sha256: str
    provider: str
    precision: str
    load_ms: float
    notes: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        out = {"model": self.name, "version": self.version, "task": self.task,
               "model_sha256": self.model_sha256, "provider": self.provider, "precision": self.precision,
               "load_ms": round(self.load_ms, 1)}
        if self.notes:
            out["notes"] = list(self.notes)
        return out


# --- verification -------------------------------------------------------------------------------------


def read_manifest(model_dir: Path) -> Manifest:
    path = model_dir / MANIFEST_FILE
    if not path.is_file():
        raise LoadError(f"{MANIFEST_FILE} not found in {model_dir}")
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except ValueError as exc:   # pydantic's ValidationError is a ValueError
        raise LoadError(f"{MANIFEST_FILE} in {model_dir} is not a valid manifest: "
                        f"{str(exc).splitlines()[0][:200]}") from None


def verify_folder(model_dir: Path, manifest: Manifest) -> dict[str, bytes]:
    """Check every file the manifest lists (size and sha256); return the small ones' verified bytes."""
    small: dict[str, bytes] = {}
    for name, entry in sorted(manifest.files.items()):
        path = model_dir / name
        if not path.is_file():
            raise LoadError(f"{name} is listed in {MANIFEST_FILE} but missing from {model_dir}")
        size = path.stat().st_size
        mismatch = LoadError(f"{name} does not match {MANIFEST_FILE} (size or sha256): refusing to serve "
                             f"{manifest.name} from {model_dir}")
        if size != entry.size:
            raise mismatch
        if size > STREAM_VERIFY_BYTES:
            if sha256_file(path) != entry.sha256:
                raise mismatch
            continue
        try:
            small[name] = verify_file(manifest, name, path.read_bytes())
        except IntegrityError:
            raise mismatch from None
    return small


# --- onnxruntime --------------------------------------------------------------------------------------


def cuda_available() -> bool:
    return CUDA in ort.get_available_providers()


def _providers(device: str) -> list[Any]:
    if device == "cpu" or (device == "auto" and not cuda_available()):
        return [CPU]
    if not cuda_available():
        raise LoadError(f"TENANTML_GPU_DEVICE=cuda but this onnxruntime has no {CUDA} "
                        f"(available: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu")
    if hasattr(ort, "preload_dlls"):   # CUDA/cuDNN from the nvidia-* wheels when installed (the cuda extras)
        try:
            ort.preload_dlls(cuda=True, cudnn=True, msvc=False)
        except Exception:  # noqa: BLE001, S110 - the system's libraries (the CUDA base image) are used then
            pass
    # Convolutions (if any) pick their algorithm by heuristics: exhaustive search would run again for
    # every new batch x sequence shape a dynamic batcher produces.
    return [(CUDA, {"device_id": 0, "cudnn_conv_algo_search": "HEURISTIC"}), CPU]


def _to_fp16(path: Path) -> bytes:
    import onnx  # noqa: PLC0415 - only for fp16
    from onnxruntime.transformers.float16 import convert_float_to_float16  # noqa: PLC0415

    model = onnx.load(str(path))
    return convert_float_to_float16(model, keep_io_types=True).SerializeToString()


def _create_session(path: Path, providers: list[Any], fp16: bool) -> ort.InferenceSession:
    source: str | bytes = _to_fp16(path) if fp16 else str(path)
    return ort.InferenceSession(source, sess_options=session_options(), providers=providers)


def open_session(path: Path, options: ModelOptions, *, convertible: bool,
                 ) -> tuple[ort.InferenceSession, str, str, list[str]]:
    """(session, active provider, precision, notes) for the model file at `path`."""
    notes: list[str] = []
    providers = _providers(options.device)
    wants_cuda = providers[0] != CPU
    if not convertible:
        precision = "fp32"
        if options.precision == "fp16":
            notes.append("fp16 requested: this model kind is served in fp32")
    elif options.precision == "auto":
        precision = "fp16" if wants_cuda else "fp32"
    else:
        precision = options.precision
    try:
        session = _create_session(path, providers, precision == "fp16")
    except Exception as exc:  # noqa: BLE001 - fp16 conversion/loading: fall back (auto) or refuse (fp16)
        if precision != "fp16" or options.precision == "fp16":
            raise LoadError(f"{MODEL_FILE} could not be loaded ({precision}): {type(exc).__name__}: "
                            f"{str(exc)[:200]}") from None
        notes.append(f"fp16 failed ({type(exc).__name__}); serving fp32")
        precision = "fp32"
        session = _create_session(path, providers, False)
    provider = session.get_providers()[0]
    if wants_cuda and provider != CUDA:
        if options.device == "cuda":
            raise LoadError(f"{CUDA} did not initialise (no GPU or CUDA/cuDNN libraries missing)")
        notes.append(f"{CUDA} did not initialise; serving on CPU")
        if precision == "fp16" and options.precision == "auto":
            precision = "fp32"
            session = _create_session(path, [CPU], False)
    return session, provider, precision, notes


# --- served models --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextWork:
    """One request's tokenized rows: the CPU path's feeds for it alone, and each row's token count."""

    feeds: dict[str, np.ndarray]
    mask: np.ndarray
    lengths: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])


@dataclass
class EmbeddingModel:
    """`text` BYTES [n] -> `embedding` FP32 [n, d], like tenantml.serving.runtime.EmbeddingModel."""

    manifest: Manifest
    info: ModelInfo
    session: ort.InferenceSession
    tokenizer: Tokenizer
    input_names: tuple[str, ...]
    onnx_output: str
    text_input: str
    output: str
    max_tokens_per_run: int
    run_overhead_tokens: float
    max_batch_rows: int
    pad_values: dict[str, int] = field(default_factory=dict)
    pad_left: bool = False

    @property
    def inputs(self) -> list[Any]:
        return list(self.manifest.inputs)

    def prepare(self, tensors: Mapping[str, oip.Tensor]) -> TextWork:
        """Tokenize one validated request (in its own thread, before it joins a batch)."""
        texts = tensors[self.text_input].data
        encodings = processing.tokenize(self.tokenizer, texts)  # type: ignore[arg-type]
        feeds, mask = processing.token_feeds(encodings, self.input_names)
        return TextWork(feeds, mask, mask.sum(axis=1))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of a list of texts, as the CPU path computes them (the benchmark's accuracy check)."""
        return processing.embed_texts(self.session, self.tokenizer, list(texts),
                                      input_names=self.input_names, output_name=self.onnx_output,
                                      max_tokens_per_run=self.max_tokens_per_run)

    def _embed(self, feeds: Mapping[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
        return processing.embed_feeds(self.session, feeds, mask, output_name=self.onnx_output,
                                      max_tokens_per_run=self.max_tokens_per_run)

    def run_batch(self, works: Sequence[TextWork]) -> list[Result]:
        if len(works) == 1:     # alone: exactly the CPU path's arrays and calls
            w = works[0]
            t0 = time.perf_counter()
            emb = self._embed(w.feeds, w.mask)
            return [Result({self.output: emb}, (time.perf_counter() - t0) * 1000)]
        owners = [(j, r) for j, w in enumerate(works) for r in range(w.rows)]
        lengths = [int(works[j].lengths[r]) for j, r in owners]
        max_rows = max(self.max_batch_rows, max(w.rows for w in works))
        runs = plan_buckets(lengths, max_rows=max_rows, max_tokens=self.max_tokens_per_run,
                            overhead_tokens=self.run_overhead_tokens)
        outs: list[np.ndarray | None] = [None] * len(works)
        compute = [0.0] * len(works)
        for run in runs:
            rows = [owners[i] for i in run]
            feeds, mask = self._pad([(works[j], r) for j, r in rows])
            t0 = time.perf_counter()
            emb = self._embed(feeds, mask)
            share = (time.perf_counter() - t0) * 1000 / len(rows)
            for k, (j, r) in enumerate(rows):
                out = outs[j]
                if out is None:
                    out = outs[j] = np.empty((works[j].rows, emb.shape[1]), dtype=np.float32)
                out[r] = emb[k]
                compute[j] += share
        return [Result({self.output: out}, ms) for out, ms in zip(outs, compute, strict=True)]

    def _pad(self, rows: Sequence[tuple[TextWork, int]]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Rows of different requests re-padded to the longest of them, the tokenizer's way (its pad id and
        pad type id, on its side): each row's real tokens are those its own request's mask marks."""
        width = max(int(w.lengths[r]) for w, r in rows)
        feeds = {name: np.full((len(rows), width), self.pad_values.get(name, 0), dtype=np.int64)
                 for name in self.input_names}
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for k, (w, r) in enumerate(rows):
            real = w.mask[r] != 0
            n = int(w.lengths[r])
            cols = slice(width - n, width) if self.pad_left else slice(0, n)
            mask[k, cols] = 1
            for name in self.input_names:
                feeds[name][k, cols] = w.feeds[name][r][real]
        if "attention_mask" in feeds:
            feeds["attention_mask"] = mask
        return feeds, mask

    def warm_up(self) -> None:
        texts = ["warm up", "the first run of a shape sets up kernels and workspaces " * 4]
        for batch in ([texts[0]], texts * 4):
            work = self.prepare({self.text_input: oip.Tensor(self.text_input, "BYTES", (len(batch),), batch)})
            self.run_batch([work])
            self.run_batch([work, work])


@dataclass
class TabularModel:
    """An skl2onnx classifier: `features` FP32 [n, F] -> `<o>` BYTES [n] and `<o>_probs` FP32 [n, k]."""

    manifest: Manifest
    info: ModelInfo
    session: ort.InferenceSession
    onnx_input: str
    features_input: str
    output: str
    labels: tuple[str, ...]
    label_key: str | None
    prob_key: str

    def prepare(self, tensors: Mapping[str, oip.Tensor]) -> np.ndarray:
        return tensors[self.features_input].data  # type: ignore[return-value]

    def _predict(self, features: np.ndarray) -> dict[str, Any]:
        return processing.predict_tabular(self.session, features, input_name=self.onnx_input,
                                          output=self.output, labels=self.labels, label_key=self.label_key,
                                          prob_key=self.prob_key)

    def run_batch(self, works: Sequence[np.ndarray]) -> list[Result]:
        if len(works) == 1:
            t0 = time.perf_counter()
            values = self._predict(works[0])
            return [Result(values, (time.perf_counter() - t0) * 1000)]
        t0 = time.perf_counter()
        values = self._predict(np.concatenate(works, axis=0))
        per_row = (time.perf_counter() - t0) * 1000 / sum(len(w) for w in works)
        results, start = [], 0
        for w in works:
            stop = start + len(w)
            results.append(Result({k: v[start:stop] for k, v in values.items()}, per_row * len(w)))
            start = stop
        return results

    def warm_up(self) -> None:
        width = self.manifest.inputs[0].shape[-1]
        self.run_batch([np.zeros((1, max(width, 1)), dtype=np.float32)])


ServedModel = EmbeddingModel | TabularModel


def rows_of(work: Any) -> int:
    return work.rows if isinstance(work, TextWork) else len(work)


# --- loading -------------------------------------------------------------------------------------------


def load_model(model_dir: str | Path, options: ModelOptions | None = None, *, warm: bool = True,
               log: Callable[[str], None] | None = None) -> ServedModel:
    """Verify the folder, build the session and everything around it, and (`warm`) run it once per
    shape class so the first request does not pay for CUDA's lazy initialisation."""
    options = options or ModelOptions()
    t0 = time.perf_counter()
    folder = Path(model_dir)
    if not folder.is_dir():
        raise LoadError(f"model directory {folder} does not exist")
    manifest = read_manifest(folder)
    if manifest.task == "text-classification":
        raise LoadError("text-classification heads are served by the CPU path (a head.json on a shared "
                        "backbone); this container serves embedding and tabular-classification models")
    if MODEL_FILE not in manifest.files:
        raise LoadError(f"{MODEL_FILE} is not listed in {MANIFEST_FILE}")
    small = verify_folder(folder, manifest)
    model: ServedModel
    if manifest.task == "embedding":
        model = _embedding(folder, manifest, small, options, t0)
    else:
        model = _tabular(folder, manifest, options, t0)
    if warm:
        model.warm_up()
    if log is not None:
        for note in model.info.notes:
            log(note)
    return model


def _info(manifest: Manifest, options: ModelOptions, provider: str, precision: str, notes: list[str],
          t0: float) -> ModelInfo:
    return ModelInfo(name=options.name or manifest.name, version=options.version, task=manifest.task,
                     model_sha256=manifest.files[MODEL_FILE].sha256, provider=provider, precision=precision,
                     load_ms=(time.perf_counter() - t0) * 1000, notes=tuple(notes))


def _embedding(folder: Path, manifest: Manifest, small: Mapping[str, bytes], options: ModelOptions,
               t0: float) -> EmbeddingModel:
    if manifest.tokenizer is None:
        raise LoadError("an embedding model needs a tokenizer in its manifest")
    if len(manifest.outputs) != 1:
        raise LoadError("an embedding model declares exactly one output")
    tok_bytes = small.get(manifest.tokenizer.file)
    if tok_bytes is None:
        raise LoadError(f"{manifest.tokenizer.file} is not listed in {MANIFEST_FILE} (or is over "
                        f"{STREAM_VERIFY_BYTES} bytes)")
    try:
        tokenizer = processing.configure_tokenizer(Tokenizer.from_str(tok_bytes.decode("utf-8")),
                                                   manifest.tokenizer.max_length)
    except Exception as exc:  # noqa: BLE001 - a tokenizer.json tokenizers cannot read
        raise LoadError(f"{manifest.tokenizer.file} could not be loaded: {type(exc).__name__}") from None
    session, provider, precision, notes = open_session(folder / MODEL_FILE, options, convertible=True)
    graph_inputs = [i.name for i in session.get_inputs()]
    feeds = tuple(n for n in processing.TOKEN_INPUTS if n in graph_inputs)
    if len(feeds) != len(graph_inputs) or "input_ids" not in feeds:
        raise LoadError(f"unsupported graph inputs {graph_inputs}")
    outs = session.get_outputs()
    onnx_out = next((o for o in outs if o.name == "embedding"), outs[0])
    pad = tokenizer.padding or {}
    overhead = options.run_overhead_tokens
    if overhead is None:
        overhead = RUN_OVERHEAD_TOKENS.get(provider, RUN_OVERHEAD_TOKENS[CPU])
    return EmbeddingModel(
        manifest=manifest, info=_info(manifest, options, provider, precision, notes, t0), session=session,
        tokenizer=tokenizer, input_names=feeds, onnx_output=onnx_out.name, text_input=text_input(manifest),
        output=manifest.outputs[0].name, max_tokens_per_run=options.max_tokens_per_run,
        run_overhead_tokens=overhead, max_batch_rows=options.max_batch_rows,
        pad_values={"input_ids": int(pad.get("pad_id") or 0),
                    "token_type_ids": int(pad.get("pad_type_id") or 0)},
        pad_left=pad.get("direction") == "left")


def _tabular(folder: Path, manifest: Manifest, options: ModelOptions, t0: float) -> TabularModel:
    if len(manifest.labels) != 1 or len(manifest.inputs) != 1:   # before building a session for nothing
        raise LoadError("a tabular classifier has one input and one labelled output")
    session, provider, precision, notes = open_session(folder / MODEL_FILE, options, convertible=False)
    b = tabular_binding(manifest, session)
    return TabularModel(manifest=manifest, info=_info(manifest, options, provider, precision, notes, t0),
                        session=session, onnx_input=b.onnx_input, features_input=manifest.inputs[0].name,
                        output=b.output, labels=b.labels, label_key=b.label_key, prob_key=b.prob_key)


# --- fp16 accuracy ----------------------------------------------------------------------------------------


def fp16_agreement(model_dir: str | Path, texts: Sequence[str], *, device: str = "auto") -> dict[str, Any]:
    """Cosine between fp32 and fp16 embeddings of `texts` on `device` (min, mean, the worst text's index):
    what serving in fp16 costs in accuracy. Raises LoadError when the model is not an embedding model."""
    m32 = load_model(model_dir, ModelOptions(device=device, precision="fp32"), warm=False)
    m16 = load_model(model_dir, ModelOptions(device=device, precision="fp16"), warm=False)
    if not isinstance(m32, EmbeddingModel) or not isinstance(m16, EmbeddingModel):
        raise LoadError("fp16 accuracy is measured on embedding models")
    a, b = m32.embed(texts).astype(np.float64), m16.embed(texts).astype(np.float64)
    cos = (a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return {"texts": len(texts), "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
            "worst": int(cos.argmin()), "provider": m16.info.provider, "precision": m16.info.precision}
