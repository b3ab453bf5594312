"""Small but real model versions for the serving tests: ONNX graphs built with onnx.helper, a WordPiece
tokenizer built with `tokenizers`, a linear head, an skl2onnx tabular classifier, and `register` /
`populated` to put them into a registry and artifact store: the library's in-memory ones
(tenantml.registry.memory, contract-tested against DynamoDB and S3) or the AWS adapters on moto.

Importable from every suite (pytest puts tests/ on sys.path for tests/conftest.py).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tenantml import SHARED_TENANT
from tenantml.manifest import BackboneRef, FileEntry, Manifest, TensorSpec, TokenizerSpec, sha256_bytes
from tenantml.registry import PRODUCTION_ALIAS, ArtifactStore, ModelRegistry, ModelVersion
from tenantml.registry.memory import MemoryArtifactStore, MemoryRegistry
from tenantml.registry.service import MANIFEST_FILE

WORDS = ["the", "login", "page", "fails", "add", "dark", "mode", "invoice", "export", "csv", "crash",
         "app", "slow", "report", "please", "bug", "feature", "question"]
VOCAB = {tok: i for i, tok in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
DIM = 8
FEATURES = ["open_items", "overdue_items", "blocked_items", "team_size", "velocity", "days_to_deadline",
            "scope_change_pct", "bug_ratio"]  # the project-risk build's columns
RISK_LABELS = ["low", "medium", "high"]


# --- artifacts ----------------------------------------------------------------------------------


def tokenizer_json(vocab: dict[str, int] = VOCAB) -> bytes:
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return tok.to_str().encode()


def embedding_table(vocab_size: int = len(VOCAB), dim: int = DIM, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(vocab_size, dim)).astype(np.float32)


def encoder_onnx(table: np.ndarray, *, pooled: bool = True, token_type_ids: bool = True) -> bytes:
    """input_ids/attention_mask[/token_type_ids] int64 [b, t] -> `embedding` [b, d] (mean pooled over the
    mask, L2-normalized: the MiniLM build's contract) or, with pooled=False, `last_hidden_state` [b, t, d]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["tok"])]
    inits = [numpy_helper.from_array(table, "table")]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "t"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "t"])]
    if token_type_ids:  # accepted and ignored, like a BERT graph whose segment embedding is all-zero
        inputs.append(helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, ["b", "t"]))
        nodes.append(helper.make_node("Cast", ["token_type_ids"], ["tt_f"], to=TensorProto.FLOAT))
        nodes.append(helper.make_node("Mul", ["tt_f", "zero"], ["tt0"]))
        nodes.append(helper.make_node("Unsqueeze", ["tt0", "axis2"], ["tt0u"]))
        nodes.append(helper.make_node("Add", ["tok", "tt0u"], ["tok2"]))
        tok = "tok2"
        inits.append(numpy_helper.from_array(np.zeros((), np.float32), "zero"))
    else:
        tok = "tok"
    inits.append(numpy_helper.from_array(np.array([2], np.int64), "axis2"))
    if pooled:
        inits += [numpy_helper.from_array(np.array([1], np.int64), "axis1"),
                  numpy_helper.from_array(np.array(1e-9, np.float32), "eps")]
        nodes += [
            helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["m", "axis2"], ["mu"]),
            helper.make_node("Mul", [tok, "mu"], ["masked"]),
            helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),
            helper.make_node("ReduceSum", ["mu", "axis1"], ["count"], keepdims=0),
            helper.make_node("Max", ["count", "eps"], ["count1"]),
            helper.make_node("Div", ["summed", "count1"], ["mean"]),
            helper.make_node("ReduceL2", ["mean"], ["norm"], axes=[1], keepdims=1),
            helper.make_node("Max", ["norm", "eps"], ["norm1"]),
            helper.make_node("Div", ["mean", "norm1"], ["embedding"]),
        ]
        outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["b", table.shape[1]])]
    else:
        nodes.append(helper.make_node("Identity", [tok], ["last_hidden_state"]))
        outputs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT,
                                                 ["b", "t", table.shape[1]])]
    graph = helper.make_graph(nodes, "tiny-encoder", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def linear_head_json(dim: int = DIM, seed: int = 1) -> bytes:
    rng = np.random.default_rng(seed)
    outputs = [
        {"name": "category", "labels": ["bug", "feature", "question"],
         "weight": rng.normal(size=(3, dim)).round(4).tolist(), "bias": [0.1, 0.0, -0.1]},
        {"name": "urgency", "labels": ["low", "high"],
         "weight": rng.normal(size=(2, dim)).round(4).tolist(), "bias": [0.0, 0.0]},
    ]
    return json.dumps({"kind": "linear", "embedding_dim": dim, "outputs": outputs}).encode()


def tabular_onnx(*, zipmap: bool = False, seed: int = 0) -> tuple[bytes, object]:
    """A 3-class LogisticRegression over FEATURES exported by skl2onnx; returns (bytes, fitted model)."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, len(FEATURES))).astype(np.float32)
    score = x[:, 1] + 0.5 * x[:, 2] - 0.5 * x[:, 5]
    y = np.digitize(score, [-0.5, 0.5])  # 0, 1, 2 -> RISK_LABELS
    clf = LogisticRegression(max_iter=500).fit(x, y)
    onx = to_onnx(clf, x[:1], options={id(clf): {"zipmap": zipmap}}, target_opset=17)
    return onx.SerializeToString(), clf


# --- model versions -----------------------------------------------------------------------------


def _files(artifacts: dict[str, bytes]) -> dict[str, FileEntry]:
    return {n: FileEntry(sha256=sha256_bytes(b), size=len(b)) for n, b in artifacts.items()}


@dataclass
class Version:
    owner: str
    manifest: Manifest
    artifacts: dict[str, bytes]
    version: str = "1"


def embedding_version(owner: str = SHARED_TENANT, name: str = "minilm-embed", *, max_length: int = 16,
                      pooled: bool = True, version: str = "1", seed: int = 0) -> Version:
    artifacts = {"model.onnx": encoder_onnx(embedding_table(seed=seed), pooled=pooled),
                 "tokenizer.json": tokenizer_json()}
    manifest = Manifest(name=name, task="embedding",
                        inputs=[TensorSpec(name="text", datatype="BYTES", shape=[-1])],
                        outputs=[TensorSpec(name="embedding", datatype="FP32", shape=[-1, DIM])],
                        tokenizer=TokenizerSpec(max_length=max_length), files=_files(artifacts))
    return Version(owner, manifest, artifacts, version)


def classifier_version(owner: str, name: str = "work-item-classifier", *, backbone: str = "minilm-embed",
                       backbone_tenant: str = SHARED_TENANT, version: str = "1", seed: int = 1) -> Version:
    artifacts = {"head.json": linear_head_json(seed=seed)}
    manifest = Manifest(
        name=name, task="text-classification",
        inputs=[TensorSpec(name="text", datatype="BYTES", shape=[-1])],
        outputs=[TensorSpec(name="category", datatype="BYTES", shape=[-1]),
                 TensorSpec(name="category_probs", datatype="FP32", shape=[-1, 3]),
                 TensorSpec(name="urgency", datatype="BYTES", shape=[-1]),
                 TensorSpec(name="urgency_probs", datatype="FP32", shape=[-1, 2])],
        labels={"category": ["bug", "feature", "question"], "urgency": ["low", "high"]},
        backbone=BackboneRef(tenant=backbone_tenant, model=backbone, version="1"),
        files=_files(artifacts))
    return Version(owner, manifest, artifacts, version)


def tabular_version(owner: str = SHARED_TENANT, name: str = "project-risk", *, zipmap: bool = False,
                    version: str = "1") -> Version:
    data, _ = tabular_onnx(zipmap=zipmap)
    artifacts = {"model.onnx": data}
    onnx_outputs = ({"label": "output_label", "probabilities": "output_probability"} if zipmap
                    else {"label": "label", "probabilities": "probabilities"})
    manifest = Manifest(name=name, task="tabular-classification",
                        inputs=[TensorSpec(name="features", datatype="FP32", shape=[-1, len(FEATURES)])],
                        outputs=[TensorSpec(name="risk", datatype="BYTES", shape=[-1]),
                                 TensorSpec(name="risk_probs", datatype="FP32", shape=[-1, 3])],
                        labels={"risk": RISK_LABELS}, features=FEATURES, files=_files(artifacts),
                        build={"onnx_outputs": onnx_outputs})
    return Version(owner, manifest, artifacts, version)


@functools.cache
def _cached_tabular(name: str) -> Version:
    return tabular_version(name=name)


def tabular_with(name: str = "project-risk", **files: bytes) -> tuple[Manifest, dict[str, bytes]]:
    """The tiny tabular model (built once) named `name`, with `files` added or replaced: its manifest (every
    file with its real sha256 and size) and its files. For tests that register a version: registration
    loads the model as serving would, so placeholder bytes are refused."""
    v = _cached_tabular("project-risk")
    artifacts = {**v.artifacts, **files}
    return v.manifest.model_copy(update={"name": name, "files": _files(artifacts)}), artifacts


# --- text baselines -------------------------------------------------------------------------------

# Reference texts of the tiny text models' baselines: phrases over WORDS (the tokenizer's vocabulary).
REFERENCE_TEXTS = [" ".join(WORDS[(i * 7 + j * 5) % len(WORDS)] for j in range(2 + i % 5)) for i in range(60)]


def tiny_tokens(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(tokens before truncation without [CLS]/[SEP], of them [UNK]) per text, from the tokenizer without
    truncation: what the capture's token_count and unknown_token_rate must agree with."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json().decode())
    rows = [tok.encode(t).tokens[1:-1] for t in texts]
    return (np.array([len(r) for r in rows], dtype=np.int64),
            np.array([r.count("[UNK]") for r in rows], dtype=np.int64))


def tiny_embed(texts: Sequence[str], *, max_length: int = 16, seed: int = 0) -> np.ndarray:
    """numpy twin of encoder_onnx(pooled=True) with the tokenizer truncating at `max_length`: the mean of
    the embedding table's rows over the tokens, L2-normalised."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json().decode())
    tok.enable_truncation(max_length)
    table = embedding_table(seed=seed).astype(np.float64)
    out = []
    for text in texts:
        e = table[tok.encode(text).ids].mean(axis=0)
        out.append(e / max(float(np.linalg.norm(e)), 1e-9))
    return np.asarray(out)


def with_text_baseline(v: Version, texts: Sequence[str] = REFERENCE_TEXTS, *, components: int = 3,
                       seed: int = 0) -> Version:
    """`v` with a baseline.json of text features (listed and hashed in its manifest): token counts and
    `components` principal directions of the tiny encoder's embeddings of `texts` (the backbone's, for a
    head: the fixture's classifier sits on embedding_version(seed=0))."""
    from tenantml.monitoring.baseline import build_text_baseline

    tokens, unknown = tiny_tokens(texts)
    embeddings = tiny_embed(texts, seed=seed)
    head = v.manifest.task == "text-classification"
    predictions = labels = None
    if head:   # the head's first label output on the reference, and "true" labels for an accuracy
        from tenantml.serving.heads import apply_head, load_head

        labs, probs = apply_head(load_head(v.artifacts["head.json"]), embeddings)["category"]
        predictions = [labs[i] for i in probs.argmax(axis=1)]
        labels = [labs[0]] * len(texts)
    baseline = build_text_baseline(tokens, unknown, embeddings, components=components,
                                   embedding="backbone" if head else "output", predictions=predictions,
                                   labels=labels)
    artifacts = {**v.artifacts, "baseline.json": baseline.model_dump_json().encode()}
    return Version(v.owner, v.manifest.model_copy(update={"files": _files(artifacts)}), artifacts, v.version)


# --- registration -------------------------------------------------------------------------------


def register(registry: ModelRegistry, store: ArtifactStore, v: Version, *,
             aliases: Sequence[str] = (PRODUCTION_ALIAS,), actor: str = "test") -> ModelVersion:
    """Upload `v`'s artifacts and its manifest.json under the version's prefix, then register the version
    (pointing `aliases` at it: `production` unless told otherwise). Works with the in-memory registry and
    store (tenantml.registry.memory) as with the DynamoDB and S3 adapters."""
    model = v.manifest.name
    for name, data in v.artifacts.items():
        store.put(v.owner, model, v.version, name, data)
    store.put(v.owner, model, v.version, MANIFEST_FILE, v.manifest.model_dump_json().encode())
    return registry.register_version(v.owner, model, v.manifest, actor, version=v.version, aliases=aliases)


def populated(store: ArtifactStore | None = None, registry: ModelRegistry | None = None,
              ) -> tuple[ModelRegistry, ArtifactStore]:
    """Shared MiniLM-like encoder and risk model; tenant `acme` owns a classifier head on the encoder.
    Defaults to a fresh MemoryRegistry and MemoryArtifactStore."""
    store = store if store is not None else MemoryArtifactStore()
    registry = registry if registry is not None else MemoryRegistry()
    for v in (embedding_version(), tabular_version(), classifier_version("acme")):
        register(registry, store, v)
    return registry, store


def infer_body(name: str, datatype: str, shape: list[int], data: object, **extra: object) -> str:
    return json.dumps({"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}],
                       **extra})
