"""Head math and validation (tenantml.serving.heads), head building (tenantml.example_models.heads) and the
work-item-classifier / prototype-head builders, with a stand-in embedder (hashed character n-grams).

The real build embeds with MiniLM; these tests only need an embedder with the same contract
(list[str] -> L2-normalised float32 [n, d]), so they stay fast and offline.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tenantml.errors import BadRequest, ModelUnavailable
from tenantml.example_models import BuildError
from tenantml.example_models.heads import canonical_json, linear_output, prototype_output
from tenantml.example_models.work_items import (
    DATA_FILE,
    LABELS,
    _choose_c,
    build_classifier,
    build_prototype_head,
    load_work_items,
)
from tenantml.manifest import BackboneRef, Manifest, verify_file
from tenantml.serving.heads import Head, apply_head, load_head, parse_head

BACKBONE = BackboneRef(model="minilm-embed", version="1")
DIM = 384


@pytest.fixture(scope="module")
def embed():
    from sklearn.feature_extraction.text import HashingVectorizer

    hv = HashingVectorizer(n_features=DIM, analyzer="char_wb", ngram_range=(2, 4), norm="l2")

    def stand_in(texts: list[str]) -> np.ndarray:
        return hv.transform(texts).toarray().astype(np.float32)

    return stand_in


def _softmax_ref(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    ez = np.exp(z - z.max(axis=1, keepdims=True))
    return ez / ez.sum(axis=1, keepdims=True)


# --- head math ------------------------------------------------------------------------------------


def test_linear_head_known_values():
    # logits for e=[1, 0, 0]: [0, ln 3] -> probs [1/4, 3/4]; for e=[0, 1, 0]: [2, 2] -> [1/2, 1/2]
    head = {"kind": "linear", "embedding_dim": 3, "outputs": [
        {"name": "urgency", "labels": ["low", "high"],
         "weight": [[0.0, 1.0, 0.0], [math.log(3.0), 1.0, 0.0]], "bias": [0.0, 0.0]},
        {"name": "category", "labels": ["a", "b", "c"],
         "weight": [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], "bias": [1.0, 1.0, 1.0]},
    ]}
    out = apply_head(head, np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=np.float32))
    labels, probs = out["urgency"]
    assert labels == ["low", "high"]
    assert probs.dtype == np.float32 and probs.shape == (2, 2)
    np.testing.assert_allclose(probs, [[0.25, 0.75], [0.5, 0.5]], atol=1e-6)
    np.testing.assert_allclose(out["category"][1], np.full((2, 3), 1 / 3), atol=1e-6)


def test_linear_head_matches_numpy_reference():
    rng = np.random.default_rng(7)
    w, b = rng.normal(size=(4, 16)), rng.normal(size=4)
    e = rng.normal(size=(5, 16))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    head = load_head(canonical_json({"kind": "linear", "embedding_dim": 16, "outputs": [
        {"name": "category", "labels": list("wxyz"), "weight": w.tolist(), "bias": b.tolist()}]}))
    _, probs = apply_head(head, e)["category"]
    np.testing.assert_allclose(probs, _softmax_ref(e @ w.T + b), atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)


def test_prototype_head_known_values_and_cosine():
    # cos(e, P) / T with e along the first prototype: logits [1/0.5, 0/0.5] = [2, 0]
    head = load_head(canonical_json({"kind": "prototypes", "embedding_dim": 2, "temperature": 0.5,
                                     "outputs": [{"name": "topic", "labels": ["billing", "login"],
                                                  "prototypes": [[3.0, 0.0], [0.0, 0.5]]}]}))
    expected = [math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)]
    # Neither the embedding's nor the prototypes' length matters: it is a cosine.
    _, probs = apply_head(head, np.array([[1.0, 0.0], [7.0, 0.0]], dtype=np.float32))["topic"]
    np.testing.assert_allclose(probs, [expected, expected], atol=1e-6)


def test_prototype_head_matches_numpy_reference():
    rng = np.random.default_rng(3)
    p, e, t = rng.normal(size=(3, 8)), rng.normal(size=(4, 8)), 0.05
    head = {"kind": "prototypes", "embedding_dim": 8, "temperature": t,
            "outputs": [{"name": "team", "labels": ["x", "y", "z"], "prototypes": p.tolist()}]}
    cos = (e / np.linalg.norm(e, axis=1, keepdims=True)) @ (p / np.linalg.norm(p, axis=1, keepdims=True)).T
    np.testing.assert_allclose(apply_head(head, e)["team"][1], _softmax_ref(cos / t), atol=1e-4)


def test_apply_head_single_vector_and_dimension_mismatch():
    head = parse_head({"kind": "linear", "embedding_dim": 2, "outputs": [
        {"name": "o", "labels": ["a", "b"], "weight": [[1, 0], [0, 1]], "bias": [0, 0]}]})
    assert apply_head(head, np.array([1.0, 0.0]))["o"][1].shape == (1, 2)
    with pytest.raises(ModelUnavailable):  # the backbone does not fit the head: a server-side fault
        apply_head(head, np.zeros((1, 3), dtype=np.float32))


def test_binary_logistic_regression_head_equals_predict_proba():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 6))
    y = (x[:, 0] + 0.3 * rng.normal(size=60) > 0).astype(int)
    lr = LogisticRegression().fit(x, y)
    assert lr.coef_.shape == (1, 6)  # binary: one logit, stored as two softmax rows
    head = {"kind": "linear", "embedding_dim": 6,
            "outputs": [linear_output("flag", ["no", "yes"], lr.coef_, lr.intercept_)]}
    np.testing.assert_allclose(apply_head(head, x)["flag"][1], lr.predict_proba(x), atol=1e-5)


# --- load_head validation -------------------------------------------------------------------------


def _linear(**override) -> dict:
    out = {"name": "category", "labels": ["a", "b"], "weight": [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]],
           "bias": [0.0, 1.0]}
    out.update(override)
    return {"kind": "linear", "embedding_dim": 3, "outputs": [out]}


def _proto(**override) -> dict:
    head = {"kind": "prototypes", "embedding_dim": 2, "temperature": 0.05,
            "outputs": [{"name": "t", "labels": ["a", "b"], "prototypes": [[1.0, 0.0], [0.0, 1.0]]}]}
    head.update(override)
    return head


def test_valid_heads_load_as_float32_readonly_arrays():
    head = load_head(json.dumps(_linear()).encode())
    assert isinstance(head, Head) and head.kind == "linear" and head.labels == {"category": ["a", "b"]}
    o = head.outputs[0]
    assert o.matrix.dtype == np.float32 and o.matrix.shape == (2, 3)
    assert o.bias is not None and o.bias.dtype == np.float32 and o.bias.shape == (2,)
    assert not o.matrix.flags.writeable
    proto = load_head(json.dumps(_proto()).encode())
    assert proto.kind == "prototypes" and proto.temperature == 0.05 and proto.outputs[0].bias is None


@pytest.mark.parametrize("doc", [
    _linear(weight=[[0.1, 0.2], [0.4, 0.5]]),                       # rows shorter than embedding_dim
    _linear(weight=[[0.1, 0.2, 0.3]]),                              # one row for two labels
    _linear(weight=[[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0, 0, 0]]),  # three rows for two labels
    _linear(bias=[0.0]),                                            # bias length
    _linear(labels=["a", "a"]),                                     # duplicate labels
    _linear(labels=["a"], weight=[[0.1, 0.2, 0.3]], bias=[0.0]),    # a single label
    _linear(name="Bad Name"),                                       # output name
    _linear(weight=[[0.1, 0.2, float("nan")], [0.4, 0.5, 0.6]]),    # non-finite
    _linear(weight="not a matrix"),
    {**_linear(), "outputs": _linear()["outputs"] * 2},             # duplicate output names
    {**_linear(), "outputs": []},
    {**_linear(), "embedding_dim": 0},
    {**_linear(), "kind": "mlp"},
    {**_linear(), "extra": 1},
    {k: v for k, v in _linear().items() if k != "kind"},
    _proto(temperature=0),
    {k: v for k, v in _proto().items() if k != "temperature"},
    _proto(outputs=[{"name": "t", "labels": ["a", "b"], "prototypes": [[1.0, 0.0], [0.0, 0.0]]}]),  # zero
    _proto(outputs=[{"name": "t", "labels": ["a", "b"], "prototypes": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]}]),
    _proto(outputs=[{"name": "t", "labels": ["a", "b"], "weight": [[1, 0], [0, 1]], "bias": [0, 0]}]),
])
def test_load_head_rejects_bad_documents(doc):
    with pytest.raises(BadRequest) as err:
        load_head(json.dumps(doc).encode())
    assert err.value.status == 400
    assert err.value.public_message == "invalid head.json"  # no validation internals for clients
    assert err.value.detail


@pytest.mark.parametrize("data", [b"", b"not json", b"[1, 2]", b"\xff\xfe"])
def test_load_head_rejects_non_objects(data):
    with pytest.raises(BadRequest):
        load_head(data)


# --- data -----------------------------------------------------------------------------------------


def test_data_set_is_large_varied_and_balanced():
    items = load_work_items()
    n = len(items.texts)
    assert n >= 400
    assert len(set(items.texts)) == n  # no duplicates
    for name, labels in LABELS.items():
        counts = np.bincount(items.labels[name], minlength=len(labels))
        assert counts.min() >= 0.15 * n, (name, counts)
    with DATA_FILE.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    lengths = [len(r["text"]) for r in rows]
    assert min(lengths) < 20 and max(lengths) > 250  # terse titles and long descriptions
    # Urgency is not a function of category: every category has items of every urgency.
    pairs = Counter((r["category"], r["urgency"]) for r in rows)
    assert all(pairs[(c, u)] >= 10 for c in LABELS["category"] for u in LABELS["urgency"])


def test_load_work_items_rejects_unknown_labels(tmp_path: Path):
    bad = tmp_path / "items.csv"
    bad.write_text("text,category,urgency\nsomething broke,bug,critical\n", encoding="utf-8")
    with pytest.raises(BuildError):
        load_work_items(bad)


# --- builders -------------------------------------------------------------------------------------


def test_build_classifier_end_to_end(tmp_path: Path, embed):
    metrics = build_classifier(tmp_path / "a", embed, BACKBONE, c_grid=(4.0,))
    out = tmp_path / "a"
    manifest = Manifest.model_validate_json((out / "manifest.json").read_bytes())
    head_bytes = verify_file(manifest, "head.json", (out / "head.json").read_bytes())
    head = load_head(head_bytes)

    assert manifest.name == "work-item-classifier" and manifest.task == "text-classification"
    assert manifest.backbone == BACKBONE
    assert [(i.name, i.datatype, i.shape) for i in manifest.inputs] == [("text", "BYTES", [-1])]
    assert [(o.name, o.datatype, o.shape) for o in manifest.outputs] == [
        ("category", "BYTES", [-1]), ("category_probs", "FP32", [-1, 4]),
        ("urgency", "BYTES", [-1]), ("urgency_probs", "FP32", [-1, 3])]
    assert manifest.labels == head.labels == {k: list(v) for k, v in LABELS.items()}
    assert head.kind == "linear" and head.embedding_dim == DIM
    assert manifest.build["data"]["sha256"] == load_work_items().sha256

    n = len(load_work_items().texts)
    assert metrics["n_train"] + metrics["n_test"] == n and abs(metrics["n_test"] - n / 4) <= 1
    assert metrics["head_bytes"] == len(head_bytes)
    for name in LABELS:
        assert set(metrics[name]) == {"accuracy", "macro_f1"}
        # Even hashed character n-grams beat always answering the majority class.
        assert metrics[name]["accuracy"] > metrics["majority_accuracy"][name] + 0.05, metrics
        assert manifest.build["metrics"][name]["accuracy"] == metrics[name]["accuracy"]

    # The shipped head is refit on every row: it mostly reproduces the training labels.
    items = load_work_items()
    probs = apply_head(head, embed(items.texts))
    assert np.mean(np.argmax(probs["category"][1], axis=1) == items.labels["category"]) > 0.8

    # Reproducible: identical inputs give identical bytes.
    build_classifier(tmp_path / "b", embed, BACKBONE, c_grid=(4.0,))
    for f in ("head.json", "manifest.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


def test_build_classifier_with_a_token_counter_writes_its_drift_baseline(tmp_path: Path, embed):
    """With the backbone's token counts (here a stand-in: whitespace words, '?' unknown) the build writes
    baseline.json, listed and hashed in the manifest: every row's derived text features, and as the
    prediction the first label output (category) of the held-out head on the held-out rows, whose accuracy
    is the held-out accuracy of the metrics."""
    from tenantml.example_models.text_baseline import reference_texts
    from tenantml.monitoring import Baseline
    from tenantml.serving.processing import TokenCounts

    def count(texts):
        words = [t.split() for t in texts]
        return TokenCounts(np.array([len(w) for w in words]), np.array([w.count("?") for w in words]))

    metrics = build_classifier(tmp_path, embed, BACKBONE, c_grid=(4.0,), count_tokens=count)
    manifest = Manifest.model_validate_json((tmp_path / "manifest.json").read_bytes())
    baseline = Baseline.model_validate_json(verify_file(manifest, "baseline.json",
                                                        (tmp_path / "baseline.json").read_bytes()))
    texts = load_work_items().texts
    assert reference_texts() == texts
    assert baseline.text.embedding == "backbone" and baseline.text.projection.dim == DIM
    assert baseline.numeric["token_count"].count == len(texts)
    assert baseline.numeric["token_count"].mean == pytest.approx(np.mean([len(t.split()) for t in texts]))
    assert set(baseline.prediction.proportions) <= {*LABELS["category"], "__other__"}
    assert baseline.performance.count == metrics["n_test"]
    assert round(baseline.performance.accuracy, 4) == metrics["category"]["accuracy"]
    assert manifest.build["baseline"]["prediction"] == "category"


def test_regularisation_is_chosen_by_cross_validation(embed):
    items = load_work_items()
    x, y = embed(items.texts[:160]), items.labels["category"][:160]
    best, scores = _choose_c(x, y, (16.0, 0.01))
    assert [c for c, _ in scores] == [0.01, 16.0]
    # A near-zero C cannot separate anything; cross-validation must prefer the usable one.
    assert best == 16.0 and scores[1][1] > scores[0][1]
    assert _choose_c(x, y, (2.0,)) == (2.0, [])


def test_build_classifier_rejects_unnormalised_embedder(tmp_path: Path, embed):
    with pytest.raises(BuildError):
        build_classifier(tmp_path, lambda texts: 3.0 * embed(texts), BACKBONE, c_grid=(1.0,))
    assert not (tmp_path / "head.json").exists()


EXAMPLES = {"topic": {
    "billing": ["refund my invoice", "invoice charged twice", "update the billing card",
                "invoice VAT number"],
    "access": ["password reset email missing", "cannot log in with password", "login loop after password"],
}}


def test_prototype_head_end_to_end(tmp_path: Path, embed):
    info = build_prototype_head(tmp_path, embed, BACKBONE, EXAMPLES, "acme-topics")
    manifest = Manifest.model_validate_json((tmp_path / "manifest.json").read_bytes())
    head = load_head(verify_file(manifest, "head.json", (tmp_path / "head.json").read_bytes()))
    assert head.kind == "prototypes" and head.temperature == 0.05
    assert info["n_examples"] == {"topic": {"billing": 4, "access": 3}}
    assert manifest.name == "acme-topics" and manifest.backbone == BACKBONE
    assert [o.name for o in manifest.outputs] == ["topic", "topic_probs"]
    assert manifest.labels == {"topic": ["billing", "access"]}

    # Prototypes are the re-normalised means of the examples' unit embeddings.
    emb = embed(EXAMPLES["topic"]["billing"])
    mean = emb.mean(axis=0)
    np.testing.assert_allclose(head.outputs[0].matrix[0], mean / np.linalg.norm(mean), atol=1e-5)

    queries = ["my invoice was charged twice", "password reset does not work"]
    labels, probs = apply_head(head, embed(queries))["topic"]
    assert [labels[i] for i in np.argmax(probs, axis=1)] == ["billing", "access"]


@pytest.mark.parametrize("examples,name", [
    ({"topic": {"billing": ["refund"]}}, "ok-name"),                          # one label
    ({"topic": {"billing": ["refund"], "access": ["  ", ""]}}, "ok-name"),    # no usable example
    ({"Topic!": {"billing": ["refund"], "access": ["login"]}}, "ok-name"),    # output name
    ({}, "ok-name"),
    (EXAMPLES, "Not A Name"),
])
def test_prototype_head_rejects_bad_examples(tmp_path: Path, embed, examples, name):
    with pytest.raises(BadRequest):
        build_prototype_head(tmp_path, embed, BACKBONE, examples, name)
    assert not (tmp_path / "head.json").exists()


def test_prototype_output_rejects_cancelling_examples():
    with pytest.raises(BadRequest):
        prototype_output("t", {"a": np.array([[1.0, 0.0], [-1.0, 0.0]]), "b": np.array([[0.0, 1.0]])})
