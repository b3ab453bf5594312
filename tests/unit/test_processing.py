"""Pre/post-processing shared by the Lambda path and the GPU container: tokenization (truncation, padding,
feeds, token counts before truncation), pooling, embedding wiring against a numpy reference, heads, and
skl2onnx tabular outputs."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import serving_models as sm
from tokenizers import Tokenizer

from tenantml.serving import processing
from tenantml.serving.heads import apply_head, load_head


@pytest.fixture
def tok():
    return processing.configure_tokenizer(Tokenizer.from_str(sm.tokenizer_json().decode()), max_length=8)


def session(data: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def reference_embedding(table: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """What sentence-transformers does: mean of token vectors over the mask, then L2 normalization."""
    vecs = table[ids] * mask[:, :, None]
    mean = vecs.sum(1) / mask.sum(1, keepdims=True)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


# --- tokenization -------------------------------------------------------------------------------


def test_truncation_at_max_length_keeps_special_tokens(tok):
    long = " ".join(sm.WORDS)  # 18 words
    feeds, mask = processing.encode_texts(tok, [long])
    ids = feeds["input_ids"][0].tolist()
    assert len(ids) == 8
    assert ids[0] == sm.VOCAB["[CLS]"] and ids[-1] == sm.VOCAB["[SEP]"]
    assert ids[1:7] == [sm.VOCAB[w] for w in sm.WORDS[:6]]
    assert mask.tolist() == [[1] * 8]


def test_padding_to_the_longest_text_of_the_batch(tok):
    feeds, mask = processing.encode_texts(tok, ["login", "the login page fails", "add dark"])
    ids = feeds["input_ids"]
    assert ids.shape == (3, 6) and ids.dtype == np.int64       # [CLS] + 4 words + [SEP]
    assert ids[0].tolist() == [2, sm.VOCAB["login"], 3, 0, 0, 0]  # padded with [PAD] = 0
    assert mask.tolist() == [[1, 1, 1, 0, 0, 0], [1] * 6, [1, 1, 1, 1, 0, 0]]
    assert feeds["attention_mask"] is mask
    assert feeds["token_type_ids"].tolist() == [[0] * 6] * 3


def test_unknown_words_and_case(tok):
    feeds, _ = processing.encode_texts(tok, ["LOGIN zebra"])
    assert feeds["input_ids"][0].tolist() == [2, sm.VOCAB["login"], sm.VOCAB["[UNK]"], 3]


def test_only_the_inputs_the_graph_declares_are_fed(tok):
    feeds, mask = processing.encode_texts(tok, ["login"], ("input_ids", "attention_mask"))
    assert set(feeds) == {"input_ids", "attention_mask"}
    feeds, mask = processing.encode_texts(tok, ["login"], ("input_ids",))
    assert set(feeds) == {"input_ids"} and mask.shape == (1, 3)


def test_single_text_path_matches_batch_path(tok):
    one, _ = processing.encode_texts(tok, ["the app crash"])
    many, _ = processing.encode_texts(tok, ["the app crash", "the app crash"])
    np.testing.assert_array_equal(one["input_ids"][0], many["input_ids"][0])


def test_token_counts_include_the_overflow_of_truncated_texts(tok):
    """count_tokens on the batch's own tokenization (max_length 8: six word pieces a text) against the
    tokenizer without truncation; [CLS], [SEP] and padding never count."""
    texts = ["login", "", "the zebra page fails in the dark mode of the app again zebra", "crash " * 13]
    encodings = processing.tokenize(tok, texts)
    feeds, mask = processing.token_feeds(encodings)
    facts = processing.token_facts(tok)
    assert facts == processing.TokenFacts(unk_id=1, specials=2, max_length=8, pad_id=0)
    counts = processing.count_tokens(encodings, feeds["input_ids"], mask, facts)
    full = Tokenizer.from_str(sm.tokenizer_json().decode())
    assert counts.tokens.tolist() == [len(full.encode(t).ids) - 2 for t in texts] == [1, 0, 13, 13]
    assert counts.unknown.tolist() == [full.encode(t).tokens.count("[UNK]") for t in texts] == [0, 0, 5, 0]
    one = processing.tokenize(tok, texts[2:3])                       # the single-text path: the same
    f1, m1 = processing.token_feeds(one)
    assert processing.count_tokens(one, f1["input_ids"], m1, facts).tokens.tolist() == [13]
    # A tokenizer without an unknown token counts none; one that pads with it ignores the padding.
    none = processing.count_tokens(encodings, feeds["input_ids"], mask,
                                   processing.TokenFacts(unk_id=None, specials=2, max_length=8))
    assert none.unknown.tolist() == [0, 0, 0, 0]
    pads = processing.count_tokens(encodings, feeds["input_ids"], mask,
                                   processing.TokenFacts(unk_id=0, specials=2, max_length=8, pad_id=0))
    assert pads.unknown.tolist() == [0, 0, 0, 0]


def test_configure_keeps_the_declared_pad_token():
    raw = Tokenizer.from_str(sm.tokenizer_json().decode())
    raw.enable_padding(pad_id=sm.VOCAB["[UNK]"], pad_token="[UNK]")
    tok = processing.configure_tokenizer(raw, max_length=4)
    feeds, mask = processing.encode_texts(tok, ["login", "login page"])
    assert feeds["input_ids"][0].tolist() == [2, sm.VOCAB["login"], 3, sm.VOCAB["[UNK]"]]
    assert mask[0].tolist() == [1, 1, 1, 0]


# --- embeddings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("pooled", [True, False])
def test_embed_texts_matches_numpy_reference(tok, pooled):
    table = sm.embedding_table()
    sess = session(sm.encoder_onnx(table, pooled=pooled))
    names = tuple(i.name for i in sess.get_inputs())
    out_name = sess.get_outputs()[0].name
    texts = ["the login page fails", "dark mode", "please export the invoice csv report"]
    emb = processing.embed_texts(sess, tok, texts, input_names=names, output_name=out_name)
    feeds, mask = processing.encode_texts(tok, texts)
    expected = reference_embedding(table, feeds["input_ids"], mask)
    assert emb.shape == (3, sm.DIM) and emb.dtype == np.float32
    np.testing.assert_allclose(emb, expected, rtol=1e-5, atol=1e-6)
    # padding must not change a text's embedding
    alone = processing.embed_texts(sess, tok, ["dark mode"], input_names=names, output_name=out_name)
    np.testing.assert_allclose(alone[0], emb[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pooled", [True, False])
def test_large_batches_run_in_length_sorted_chunks_with_the_same_result(tok, pooled):
    sess = session(sm.encoder_onnx(sm.embedding_table(), pooled=pooled))
    names = tuple(i.name for i in sess.get_inputs())
    out_name = sess.get_outputs()[0].name
    rng = np.random.default_rng(5)
    texts = [" ".join(rng.choice(sm.WORDS, size=int(k))) for k in rng.integers(1, 7, size=23)]
    runs = []

    class Counting:
        def run(self, names_, feeds):
            runs.append(feeds["input_ids"].shape)
            return sess.run(names_, feeds)

    whole = processing.embed_texts(sess, tok, texts, input_names=names, output_name=out_name)
    chunked = processing.embed_texts(Counting(), tok, texts, input_names=names, output_name=out_name,
                                     max_tokens_per_run=24)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)   # same rows, same order
    assert len(runs) > 1 and all(r * t <= 24 for r, t in runs)
    assert sum(r for r, _ in runs) == len(texts)


def test_mean_pool_ignores_padding_and_normalizes():
    hidden = np.array([[[1, 0], [3, 0], [100, 100]]], dtype=np.float32)
    mask = np.array([[1, 1, 0]])
    np.testing.assert_allclose(processing.mean_pool(hidden, mask, normalize=False), [[2, 0]])
    np.testing.assert_allclose(processing.mean_pool(hidden, mask), [[1, 0]])


# --- heads --------------------------------------------------------------------------------------


def test_head_outputs_wire_top_labels_and_probabilities():
    head = load_head(sm.linear_head_json())
    emb = np.random.default_rng(3).normal(size=(4, sm.DIM)).astype(np.float32)
    out = processing.head_outputs(head, emb)
    assert set(out) == {"category", "category_probs", "urgency", "urgency_probs"}
    for name, (labels, probs) in apply_head(head, emb).items():
        np.testing.assert_array_equal(out[name + "_probs"], probs)
        assert out[name] == [labels[i] for i in probs.argmax(1)]
        assert out[name + "_probs"].shape == (4, len(labels))
        np.testing.assert_allclose(out[name + "_probs"].sum(1), 1, rtol=1e-5)


# --- tabular ------------------------------------------------------------------------------------


def test_tabular_outputs_map_integer_labels():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], np.float32)
    raw = {"label": np.array([0, 2], np.int64), "probabilities": probs}
    out = processing.tabular_outputs(raw, output="risk", labels=sm.RISK_LABELS, label_key="label",
                                     prob_key="probabilities")
    assert out["risk"] == ["low", "high"]
    np.testing.assert_array_equal(out["risk_probs"], probs)


def test_tabular_outputs_string_labels_and_argmax_fallback():
    probs = np.array([[0.1, 0.6, 0.3]], np.float32)
    raw = {"label": np.array(["medium"], dtype=object), "p": probs}
    assert processing.tabular_outputs(raw, output="risk", labels=sm.RISK_LABELS, label_key="label",
                                      prob_key="p")["risk"] == ["medium"]
    assert processing.tabular_outputs({"p": probs}, output="risk", labels=sm.RISK_LABELS, label_key=None,
                                      prob_key="p")["risk"] == ["medium"]


def test_tabular_outputs_reject_a_probability_matrix_that_does_not_fit_the_labels():
    with pytest.raises(ValueError):
        processing.tabular_outputs({"p": np.ones((2, 2), np.float32)}, output="risk", labels=sm.RISK_LABELS,
                                   label_key=None, prob_key="p")


@pytest.mark.parametrize("zipmap", [False, True])
def test_predict_tabular_matches_sklearn(zipmap):
    data, clf = sm.tabular_onnx(zipmap=zipmap)
    sess = session(data)
    label_key, prob_key = (("output_label", "output_probability") if zipmap else ("label", "probabilities"))
    x = np.random.default_rng(7).normal(size=(5, len(sm.FEATURES))).astype(np.float32)
    out = processing.predict_tabular(sess, x, input_name=sess.get_inputs()[0].name, output="risk",
                                     labels=sm.RISK_LABELS, label_key=label_key, prob_key=prob_key)
    np.testing.assert_allclose(out["risk_probs"], clf.predict_proba(x), rtol=1e-4, atol=1e-5)
    assert out["risk"] == [sm.RISK_LABELS[i] for i in clf.predict(x)]
