"""What the sentence-encoder exports (`minilm`, `mpnet`) share: writing a post-LayerNorm transformer encoder
op by op with `onnx.helper`, reproducible serialisation, and running, measuring and describing a built
encoder folder.

- `GraphBuilder`     nodes and initializers with fixed, unique names (`scope/op`)
- `EncoderWriter`    Linear, LayerNorm, exact (erf) GELU feed-forward, multi-head self-attention with an
                     additive bias (the padding mask, plus a relative position bias for MPNet), one encoder
                     layer, mean pooling + L2 normalisation into the `embedding` output, and the model
                     itself (opset 17, IR 8, checked). The weight names of a layer come from `LayerNames`.
- tokenizers, an onnxruntime CPU embedder over a built folder (it feeds exactly the inputs the graph
  declares), cosine similarity to a reference fixture, and manifest.json of an embedding model.

Nothing here is specific to one model: the encoder variants (BERT's token-type and absolute position
embeddings, MPNet's relative attention bias) are written by their own modules around these pieces.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tenantml.example_models import BuildError
from tenantml.manifest import FileEntry, Manifest, TensorSpec, TokenizerSpec, sha256_bytes

if TYPE_CHECKING:
    import numpy as np
    import onnx

OPSET = 17  # LayerNormalization is an ONNX op from opset 17
IR_VERSION = 8  # opset 17's IR version; readable by every onnxruntime >= 1.13
MASK_NEGATIVE = -10000.0  # additive attention mask for padding: exp(-1e4) underflows to 0 in fp32
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "embedding"


# ------------------------------------------------------------------------------------------------
# graph construction


class GraphBuilder:
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


@dataclass(frozen=True)
class LayerNames:
    """Where one encoder layer's weights are, relative to its prefix (e.g. `encoder.layer.3`)."""

    query: str
    key: str
    value: str
    attention_output: str
    attention_norm: str
    intermediate: str = "intermediate.dense"
    output: str = "output.dense"
    output_norm: str = "output.LayerNorm"


class EncoderWriter:
    """Writes the pieces of a post-LayerNorm transformer encoder into a `GraphBuilder`.

    Graph names do not depend on the checkpoint's weight names: layer i's pieces are scoped `layer{i}.*`
    (`layer0.attention.query`, `layer0.attention.LayerNorm`, `layer0.gelu`, ...), shared constants
    `const.*`.

    `smoothing` maps a LayerNorm scope (e.g. `layer0.attention.LayerNorm`) to per-channel scales s: the
    Linear layers fed by that LayerNorm then compute (x / s) @ (diag(s) W), the same function with the
    outlier channels moved from the activations into the weights (MiniLM's int8 variant).
    """

    def __init__(self, weights: dict[str, np.ndarray], *, hidden_size: int, num_heads: int,
                 layer_norm_eps: float, smoothing: dict[str, np.ndarray] | None = None) -> None:
        self.g = GraphBuilder()
        self.weights = weights
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.head_size = hidden_size // num_heads
        self.layer_norm_eps = layer_norm_eps
        self.smoothing = smoothing or {}
        self._smooth_scale: dict[str, np.ndarray] = {}  # LayerNorm output name -> s
        self._smoothed_input: dict[str, str] = {}  # LayerNorm output name -> its x / s tensor

    def w(self, name: str) -> np.ndarray:
        """A checkpoint weight as contiguous float32 (BuildError if the checkpoint lacks it)."""
        import numpy as np

        try:
            return np.ascontiguousarray(self.weights[name], dtype=np.float32)
        except KeyError as exc:
            raise BuildError(detail=f"weight {name} missing from model.safetensors") from exc

    def smoothed(self, x: str, weight: np.ndarray) -> tuple[str, np.ndarray]:
        """`x` and its [in, out] consumer weight, or x / s and diag(s) W where x has smoothing scales."""
        import numpy as np

        if x in self._smooth_scale:
            s = self._smooth_scale[x]
            if x not in self._smoothed_input:
                inv = self.g.init(f"{x}.smooth_inv_scale", (1.0 / s).astype(np.float32))
                self._smoothed_input[x] = self.g.op("Mul", [x, inv], f"{x}/smooth")
            x = self._smoothed_input[x]
            weight = weight * s[:, None]
        return x, np.ascontiguousarray(weight, dtype=np.float32)

    def linear(self, x: str, prefix: str, scope: str) -> str:
        # torch Linear stores [out, in]; MatMul wants [in, out].
        g = self.g
        x, weight = self.smoothed(x, self.w(f"{prefix}.weight").T)
        wt = g.init(f"{scope}.weight", weight)
        b = g.init(f"{scope}.bias", self.w(f"{prefix}.bias"))
        return g.op("Add", [g.op("MatMul", [x, wt], f"{scope}/MatMul"), b], f"{scope}/Add")

    def layer_norm(self, x: str, prefix: str, scope: str) -> str:
        import numpy as np

        g = self.g
        gamma = g.init(f"{scope}.weight", self.w(f"{prefix}.weight"))
        beta = g.init(f"{scope}.bias", self.w(f"{prefix}.bias"))
        out = g.op("LayerNormalization", [x, gamma, beta], f"{scope}/LayerNormalization",
                   axis=-1, epsilon=self.layer_norm_eps)
        if scope in self.smoothing:
            self._smooth_scale[out] = np.asarray(self.smoothing[scope], dtype=np.float32)
        return out

    def constants(self) -> None:
        """The shared constants of the layers and the pooling (call once, after the embeddings)."""
        g = self.g
        self.axes_1 = g.const("const.axes_1", [1], "int64")
        self.axes_2 = g.const("const.axes_2", [2], "int64")
        self.one = g.const("const.one", 1.0, "float32")
        self.sqrt2 = g.const("const.sqrt2", math.sqrt(2.0), "float32")
        self.half = g.const("const.half", 0.5, "float32")

    def padding_mask(self) -> str:
        """The additive attention mask [B, 1, 1, S]: 0 where attended, MASK_NEGATIVE on padding, and the
        constants `self_attention` needs. (Two Unsqueezes, then Cast/Sub/Mul: the mask pattern
        onnxruntime's attention fusion matches.)"""
        from onnx import TensorProto

        g = self.g
        mask = g.op("Unsqueeze", ["attention_mask", self.axes_1], "mask/Unsqueeze_1")
        mask = g.op("Unsqueeze", [mask, self.axes_2], "mask/Unsqueeze_2")
        mask = g.op("Cast", [mask], "mask/Cast", to=TensorProto.FLOAT)
        mask = g.op("Sub", [self.one, mask], "mask/Sub")
        mask = g.op("Mul", [mask, g.const("const.mask_negative", MASK_NEGATIVE, "float32")], "mask/Mul")
        self.heads_shape = g.const("const.heads_shape", [0, 0, self.num_heads, self.head_size], "int64")
        self.hidden_shape = g.const("const.hidden_shape", [0, 0, self.hidden_size], "int64")
        self.scale = g.const("const.attention_scale", math.sqrt(self.head_size), "float32")
        return mask

    def self_attention(self, x: str, p: str, s: str, names: LayerNames, bias: str) -> str:
        """softmax(Q K^T / sqrt(d) + bias) V over the heads: [B, S, H] -> [B, S, H] (plain ONNX).
        `bias` broadcasts to [B, heads, S, S]: the padding mask, or mask + relative position bias."""
        g = self.g
        q = self.linear(x, f"{p}.{names.query}", f"{s}.attention.query")
        k = self.linear(x, f"{p}.{names.key}", f"{s}.attention.key")
        v = self.linear(x, f"{p}.{names.value}", f"{s}.attention.value")
        q = g.op("Transpose", [g.op("Reshape", [q, self.heads_shape], f"{s}.attention.query/Reshape")],
                 f"{s}.attention.query/Transpose", perm=[0, 2, 1, 3])
        k = g.op("Transpose", [g.op("Reshape", [k, self.heads_shape], f"{s}.attention.key/Reshape")],
                 f"{s}.attention.key/Transpose", perm=[0, 2, 3, 1])
        v = g.op("Transpose", [g.op("Reshape", [v, self.heads_shape], f"{s}.attention.value/Reshape")],
                 f"{s}.attention.value/Transpose", perm=[0, 2, 1, 3])
        scores = g.op("MatMul", [q, k], f"{s}.attention.scores/MatMul")
        scores = g.op("Div", [scores, self.scale], f"{s}.attention.scores/Div")
        scores = g.op("Add", [scores, bias], f"{s}.attention.scores/Add")
        probs = g.op("Softmax", [scores], f"{s}.attention/Softmax", axis=-1)
        ctx = g.op("MatMul", [probs, v], f"{s}.attention.context/MatMul")
        ctx = g.op("Transpose", [ctx], f"{s}.attention.context/Transpose", perm=[0, 2, 1, 3])
        return g.op("Reshape", [ctx, self.hidden_shape], f"{s}.attention.context/Reshape")

    def layer(self, x: str, index: int, names: LayerNames, *, prefix: str = "encoder.layer",
              bias: str | None = None, attend: Callable[[str, str, str], str] | None = None) -> str:
        """One encoder layer: self-attention (`attend(x, weight prefix, scope)` if given, else
        `self_attention` with `bias`), output projection + residual + LayerNorm, then the feed-forward
        with exact (erf) GELU, 0.5 * h * (1 + erf(h / sqrt(2))), + residual + LayerNorm."""
        g = self.g
        p, s = f"{prefix}.{index}", f"layer{index}"
        if attend is not None:
            ctx = attend(x, p, s)
        elif bias is not None:
            ctx = self.self_attention(x, p, s, names, bias)
        else:
            raise BuildError(detail="an encoder layer needs an attention bias or an attention writer")
        attn = self.linear(ctx, f"{p}.{names.attention_output}", f"{s}.attention.output")
        x = self.layer_norm(g.op("Add", [attn, x], f"{s}.attention.residual/Add"),
                            f"{p}.{names.attention_norm}", f"{s}.attention.LayerNorm")
        h = self.linear(x, f"{p}.{names.intermediate}", f"{s}.intermediate")
        erf = g.op("Erf", [g.op("Div", [h, self.sqrt2], f"{s}.gelu/Div")], f"{s}.gelu/Erf")
        gelu = g.op("Mul", [h, g.op("Add", [erf, self.one], f"{s}.gelu/Add")], f"{s}.gelu/Mul")
        gelu = g.op("Mul", [gelu, self.half], f"{s}.gelu/Mul_half")
        out = self.linear(gelu, f"{p}.{names.output}", f"{s}.output")
        return self.layer_norm(g.op("Add", [out, x], f"{s}.output.residual/Add"),
                               f"{p}.{names.output_norm}", f"{s}.output.LayerNorm")

    def pool_and_normalize(self, x: str) -> str:
        """Mean over the real tokens of [B, S, H], then L2 normalisation: the graph output `embedding`."""
        from onnx import TensorProto, helper

        g = self.g
        token_mask = g.op("Unsqueeze", ["attention_mask", self.axes_2], "pooling/Unsqueeze")
        token_mask = g.op("Cast", [token_mask], "pooling/Cast", to=TensorProto.FLOAT)
        summed = g.op("ReduceSum", [g.op("Mul", [x, token_mask], "pooling/Mul"), self.axes_1],
                      "pooling/ReduceSum", keepdims=0)
        counts = g.op("ReduceSum", [token_mask, self.axes_1], "pooling/count/ReduceSum", keepdims=0)
        counts = g.op("Max", [counts, g.const("const.count_floor", 1e-9, "float32")], "pooling/count/Max")
        mean = g.op("Div", [summed, counts], "pooling/Div")
        norm = g.op("ReduceL2", [mean], "normalize/ReduceL2", axes=[1], keepdims=1)
        norm = g.op("Max", [norm, g.const("const.norm_floor", 1e-12, "float32")], "normalize/Max")
        g.nodes.append(helper.make_node("Div", [mean, norm], [OUTPUT], name="normalize/Div"))
        return OUTPUT

    def model(self, graph_name: str, input_names: Sequence[str], *, producer: str, doc: str,
              value_info: Sequence[onnx.ValueInfoProto] = (),
              extra_opsets: Sequence[tuple[str, int]] = ()) -> onnx.ModelProto:
        """The checked model: int64 [batch, sequence] inputs, `embedding` [batch, hidden] float output."""
        import onnx
        from onnx import TensorProto, helper

        dims = ["batch", "sequence"]
        graph = helper.make_graph(
            self.g.nodes, graph_name,
            inputs=[helper.make_tensor_value_info(n, TensorProto.INT64, dims) for n in input_names],
            outputs=[helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", self.hidden_size])],
            initializer=self.g.initializers,
            value_info=list(value_info),
        )
        opsets = [helper.make_opsetid("", OPSET), *(helper.make_opsetid(d, v) for d, v in extra_opsets)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name=producer, producer_version="1")
        model.ir_version = IR_VERSION
        model.doc_string = doc
        onnx.checker.check_model(model, full_check=True)
        return model


def save_model(model: onnx.ModelProto, out_path: Path) -> None:
    """Deterministic bytes: the same graph always serialises the same (all weights inside the file)."""
    out_path.write_bytes(model.SerializeToString(deterministic=True))


def check_sentence_pipeline(modules_json: str | bytes, pooling_json: str | bytes) -> None:
    """The graphs hard-code Transformer -> mean Pooling -> Normalize: refuse any other sentence-transformers
    pipeline (modules.json and 1_Pooling/config.json)."""
    modules = [m["type"].rsplit(".", 1)[-1] for m in json.loads(modules_json)]
    if modules != ["Transformer", "Pooling", "Normalize"]:
        raise BuildError(detail=f"unsupported sentence-transformers modules {modules}")
    pooling = json.loads(pooling_json)
    if not pooling.get("pooling_mode_mean_tokens") or any(
            pooling.get(k) for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens",
                                     "pooling_mode_mean_sqrt_len_tokens")):
        raise BuildError(detail="only mean pooling is supported")


# ------------------------------------------------------------------------------------------------
# running a built model


def configure_tokenizer(tok, *, max_length: int):
    """`tok` truncating at `max_length` (as sentence-transformers) and not padding; returns it."""
    tok.no_padding()
    tok.enable_truncation(max_length)
    return tok


def load_tokenizer(model_dir: Path, *, pad: bool = True):
    """A built folder's tokenizer.json; with `pad`, batches are padded to their longest text with the
    padding the file declares, else with [PAD] (id 0 where the vocabulary has none)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    if not pad:
        tok.no_padding()
    elif tok.padding is None:
        pad_id = tok.token_to_id("[PAD]")
        tok.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")  # noqa: S106
    return tok


def encode_batch(tok, texts: Sequence[str], input_names: Sequence[str] = TOKEN_INPUTS,
                 ) -> dict[str, np.ndarray]:
    """Tokenize (padded to the longest, if `tok` pads) into the int64 inputs named (among TOKEN_INPUTS)."""
    import numpy as np

    encodings = tok.encode_batch(list(texts))
    columns = {"input_ids": lambda e: e.ids, "attention_mask": lambda e: e.attention_mask,
               "token_type_ids": lambda e: e.type_ids}
    return {n: np.asarray([columns[n](e) for e in encodings], dtype=np.int64) for n in input_names}


def onnx_session(model_path: Path):
    """An onnxruntime CPU session with full graph optimisation.

    `session.x64quantprecision` makes int8 MatMuls exact on x86 CPUs without VNNI as well (belt and braces
    with MiniLM's 7-bit weights); it is ignored elsewhere.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.x64quantprecision", "1")
    return ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])


def onnx_embedder(model_dir: Path, *, batch_size: int = 16, sort_by_length: bool = True,
                  session: Any = None) -> Callable[[list[str]], np.ndarray]:
    """An embedding function over a built encoder folder: texts -> [n, dim] float32, L2-normalised. It
    feeds the graph the token inputs it declares (MPNet has no token_type_ids).

    Texts are batched in order of token length (as sentence-transformers does): less padding is faster,
    and with dynamic int8 quantization a batch's activation range is shared by all its rows, so mixing a
    two-token text with a 256-token one costs the short text precision. `session`: an `onnx_session` of
    the folder's model.onnx already made (else one is).
    """
    import numpy as np

    model_dir = Path(model_dir)
    padded = load_tokenizer(model_dir)
    plain = load_tokenizer(model_dir, pad=False)
    session = session or onnx_session(model_dir / "model.onnx")
    dim = int(session.get_outputs()[0].shape[-1])
    names = [i.name for i in session.get_inputs()]

    def embed(texts: list[str]) -> np.ndarray:
        texts = list(texts)
        out = np.empty((len(texts), dim), dtype=np.float32)
        order = list(range(len(texts)))
        if sort_by_length:
            lengths = [len(e.ids) for e in plain.encode_batch(texts)]
            order.sort(key=lambda i: lengths[i])
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            out[idx] = session.run([OUTPUT], encode_batch(padded, [texts[i] for i in idx], names))[0]
        return out

    return embed


# ------------------------------------------------------------------------------------------------
# accuracy against a reference fixture (`tenantml models reference`)


def load_reference(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def cosine_to_reference(embed: Callable[[list[str]], np.ndarray], reference: dict) -> np.ndarray:
    """Cosine similarity of `embed(text)` to the reference embedding, per fixture item."""
    import numpy as np

    items = reference["items"]
    ref = np.asarray([it["embedding"] for it in items], dtype=np.float64)
    got = np.asarray(embed([it["text"] for it in items]), dtype=np.float64)
    return (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))


def accuracy(model_dir: Path, reference: dict, *, batch_size: int = 16) -> dict[str, Any]:
    """Cosine to the reference in the two ways a model is called: one text per run, and length-sorted
    padded batches of `batch_size` (int8 results depend on the batch, see `onnx_embedder`)."""
    session = onnx_session(Path(model_dir) / "model.onnx")
    out: dict[str, Any] = {}
    for regime, size in (("single", 1), ("batched", batch_size)):
        cos = cosine_to_reference(onnx_embedder(model_dir, batch_size=size, session=session), reference)
        out[regime] = {"cosine_mean": round(float(cos.mean()), 5), "cosine_min": round(float(cos.min()), 5),
                       "worst_item": int(cos.argmin())}
    out["sentences"] = len(reference["items"])
    return out


def token_id_mismatches(model_dir: Path, reference: dict) -> list[int]:
    """The fixture items whose token ids (sentence-transformers') the folder's tokenizer does not give."""
    tok = load_tokenizer(model_dir, pad=False)
    items = reference["items"]
    encodings = tok.encode_batch([it["text"] for it in items])
    return [i for i, (it, e) in enumerate(zip(items, encodings, strict=True)) if e.ids != it["token_ids"]]


# ------------------------------------------------------------------------------------------------
# version folders


def file_entry(path: Path) -> FileEntry:
    data = path.read_bytes()
    return FileEntry(sha256=sha256_bytes(data), size=len(data))


def write_manifest(folder: Path, *, name: str, description: str, build: dict[str, Any], max_length: int,
                   dim: int, extra_files: Sequence[str] = (), backend: str = "cpu") -> Manifest:
    """manifest.json of an embedding model: text in (BYTES), `embedding` [n, dim] FP32 out."""
    manifest = Manifest(
        name=name,
        task="embedding",
        backend=backend,
        description=description,
        inputs=[TensorSpec(name="text", datatype="BYTES", shape=[-1])],
        outputs=[TensorSpec(name=OUTPUT, datatype="FP32", shape=[-1, dim])],
        tokenizer=TokenizerSpec(file="tokenizer.json", max_length=max_length),
        files={n: file_entry(folder / n) for n in ("model.onnx", "tokenizer.json", *extra_files)},
        build=build,
    )
    (folder / "manifest.json").write_text(
        json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True, ensure_ascii=False) + "\n",
        encoding="utf-8")
    return manifest


def replace_dir(staging: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)


def library_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"
