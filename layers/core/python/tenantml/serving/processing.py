"""Pre- and post-processing for every model kind: the ONE module the Lambda path and the GPU container
share, so CPU and GPU cannot disagree on tokenization, pooling, heads or label mapping.

Pure functions over numpy arrays and already-created objects (a `tokenizers.Tokenizer`, anything with
onnxruntime's `run(output_names, feeds)`); nothing here loads files, talks to AWS or imports onnxruntime.
Output values are numpy arrays (numeric) or lists of str (BYTES), keyed by the manifest's output names.

Text models also count, from the tokenization they already did, each text's tokens before truncation and
its unknown tokens (`count_tokens`): derived features for drift monitoring, at the cost of two numpy
reductions over the mask (plus a walk over the overflow of the rare truncated text).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np

from tenantml.serving.heads import Head, apply_head

TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Padded tokens per onnxruntime run of a text encoder (see embed_texts): 32 texts of 128 tokens.
MAX_TOKENS_PER_RUN = 4096
PROBS_SUFFIX = "_probs"

Outputs = dict[str, "np.ndarray | list[str]"]


class Session(Protocol):
    """The part of onnxruntime.InferenceSession the processing code uses."""

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any]) -> list[Any]: ...


# --- text -------------------------------------------------------------------------------------------


def configure_tokenizer(tokenizer: Any, max_length: int) -> Any:
    """Truncate at `max_length` tokens (special tokens included) and pad to the longest text of a batch.

    Keeps the padding token/id the tokenizer.json declares (BERT: [PAD] = 0); returns the tokenizer.
    """
    pad = tokenizer.padding or {}
    pad_token = pad.get("pad_token") or "[PAD]"
    pad_id = pad.get("pad_id")
    if pad_id is None:
        pad_id = tokenizer.token_to_id(pad_token) or 0
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token, pad_type_id=pad.get("pad_type_id", 0),
                             direction=pad.get("direction", "right"), length=None)
    return tokenizer


def tokenize(tokenizer: Any, texts: Sequence[str]) -> list[Any]:
    """The tokenizer's encodings of a batch (`tokenizers.Encoding`: ids, mask, and the overflow of a text
    longer than the truncation length)."""
    if len(texts) == 1:  # one text: skip the batch machinery (thread pool hand-off)
        return [tokenizer.encode(texts[0])]
    return tokenizer.encode_batch_fast(list(texts))


def encode_texts(tokenizer: Any, texts: Sequence[str],
                 input_names: Sequence[str] = TOKEN_INPUTS) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Tokenize a batch into the int64 feeds the graph declares (among TOKEN_INPUTS) and the mask [n, t]."""
    return token_feeds(tokenize(tokenizer, texts), input_names)


def token_feeds(encodings: Sequence[Any], input_names: Sequence[str] = TOKEN_INPUTS,
                ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The int64 feeds the graph declares (among TOKEN_INPUTS) and the mask [n, t] of encodings."""
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    feeds: dict[str, np.ndarray] = {}
    for name in input_names:
        if name == "input_ids":
            feeds[name] = np.array([e.ids for e in encodings], dtype=np.int64)
        elif name == "attention_mask":
            feeds[name] = mask
        elif name == "token_type_ids":
            feeds[name] = np.array([e.type_ids for e in encodings], dtype=np.int64)
    return feeds, mask


@dataclass(frozen=True)
class TokenFacts:
    """What counting a tokenizer's tokens needs, read once when the model loads (`token_facts`)."""

    unk_id: int | None        # the unknown token's id; None: the tokenizer has none (byte-level BPE)
    specials: int             # special tokens added to one text ([CLS] and [SEP]: 2)
    max_length: int | None    # truncation length (special tokens included); None: no truncation
    pad_id: int | None = None


def token_facts(tokenizer: Any) -> TokenFacts:
    unk = getattr(tokenizer.model, "unk_token", None)
    unk_id = tokenizer.token_to_id(unk) if isinstance(unk, str) else None
    post = tokenizer.post_processor
    specials = int(post.num_special_tokens_to_add(False)) if post is not None else 0
    trunc = tokenizer.truncation or {}
    pad = tokenizer.padding or {}
    return TokenFacts(unk_id=unk_id, specials=specials, max_length=trunc.get("max_length"),
                      pad_id=pad.get("pad_id"))


class TokenCounts(NamedTuple):
    """Per text (int64 [n]): its tokens before truncation, special tokens and padding excluded, and how many
    of them are the unknown token."""

    tokens: np.ndarray
    unknown: np.ndarray


def count_tokens(encodings: Sequence[Any], ids: np.ndarray, mask: np.ndarray,
                 facts: TokenFacts) -> TokenCounts:
    """Token counts from a batch's tokenization (`tokenize`; `ids` and `mask` [n, t] its padded feeds): two
    reductions over arrays the model builds anyway. A batch narrower than `max_length` truncated nothing;
    else a text cut at `max_length` keeps the rest in its encoding's `overflowing` pieces (each again with
    its special tokens and padding), and only those texts are walked in Python."""
    real = np.add.reduce(mask, axis=1)
    tokens = real - facts.specials
    if facts.unk_id is None:
        unknown = np.zeros(real.shape, dtype=np.int64)
    elif facts.unk_id == facts.pad_id:   # padding would count as unknown
        unknown = np.add.reduce((ids == facts.unk_id) & (mask != 0), axis=1, dtype=np.int64)
    else:
        unknown = np.add.reduce(ids == facts.unk_id, axis=1, dtype=np.int64)
    if facts.max_length is not None and mask.shape[1] >= facts.max_length:
        for i in np.flatnonzero(real >= facts.max_length).tolist():
            for piece in encodings[i].overflowing:
                m = np.asarray(piece.attention_mask, dtype=np.int64)
                tokens[i] += max(int(m.sum()) - facts.specials, 0)
                if facts.unk_id is not None:
                    unknown[i] += int(np.count_nonzero((np.asarray(piece.ids) == facts.unk_id) & (m != 0)))
    return TokenCounts(tokens, unknown)


def mean_pool(hidden: np.ndarray, mask: np.ndarray, *, normalize: bool = True) -> np.ndarray:
    """Mean over real tokens of token embeddings [n, t, d] (sentence-transformers), then L2-normalize."""
    m = mask.astype(np.float32)[:, :, None]
    emb = (hidden.astype(np.float32, copy=False) * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    if normalize:
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return emb.astype(np.float32, copy=False)


def _run_embedding(session: Session, feeds: Mapping[str, np.ndarray], mask: np.ndarray,
                   output_name: str) -> np.ndarray:
    out = np.asarray(session.run([output_name], feeds)[0])
    if out.ndim == 3:
        return mean_pool(out, mask)
    return out.astype(np.float32, copy=False)


def embed_texts(session: Session, tokenizer: Any, texts: Sequence[str], *, input_names: Sequence[str],
                output_name: str, max_tokens_per_run: int = MAX_TOKENS_PER_RUN) -> np.ndarray:
    """Sentence embeddings [n, d] float32. A graph that already pools (output [n, d], the MiniLM build)
    is used as is; a token-level output [n, t, d] is mean-pooled and normalized here.

    A batch whose padded size (rows x longest text) exceeds `max_tokens_per_run` is run in chunks of
    texts of similar length (sorted by token count; each chunk cut to its own longest text): activation
    memory stays bounded (attention alone is rows x heads x t^2 floats: ~200 MB for 64 texts of 256
    tokens) and less padding is computed. Rows come back in the caller's order."""
    feeds, mask = encode_texts(tokenizer, texts, input_names)
    return embed_feeds(session, feeds, mask, output_name=output_name, max_tokens_per_run=max_tokens_per_run)


def embed_feeds(session: Session, feeds: Mapping[str, np.ndarray], mask: np.ndarray, *, output_name: str,
                max_tokens_per_run: int = MAX_TOKENS_PER_RUN) -> np.ndarray:
    """`embed_texts` on an already tokenized batch (`encode_texts` / `token_feeds`)."""
    n, width = mask.shape
    if n * width <= max_tokens_per_run or n == 1:
        return _run_embedding(session, feeds, mask, output_name)
    lengths = mask.sum(axis=1)
    order = np.argsort(lengths, kind="stable")
    out: np.ndarray | None = None
    start = 0
    while start < n:
        # grow the chunk while its padded size (rows x its longest text) stays within the budget
        stop = start + 1
        while stop < n and (stop + 1 - start) * int(lengths[order[stop]]) <= max_tokens_per_run:
            stop += 1
        idx = order[start:stop]
        t = int(lengths[idx].max())
        chunk = {k: v[idx, :t] for k, v in feeds.items()}
        emb = _run_embedding(session, chunk, mask[idx, :t], output_name)
        if out is None:
            out = np.empty((n, emb.shape[1]), dtype=np.float32)
        out[idx] = emb
        start = stop
    assert out is not None
    return out


# --- classification heads on embeddings -------------------------------------------------------------


def head_outputs(head: Head, embeddings: np.ndarray) -> Outputs:
    """`<o>` (top label per row, BYTES [n]) and `<o>_probs` (FP32 [n, k]) for each output of the head."""
    out: Outputs = {}
    for name, (labels, probs) in apply_head(head, embeddings).items():
        out[name] = [labels[i] for i in np.argmax(probs, axis=1).tolist()]
        out[name + PROBS_SUFFIX] = probs
    return out


# --- tabular classifiers (skl2onnx) -----------------------------------------------------------------


def _probability_matrix(raw: Any, labels: Sequence[str]) -> np.ndarray:
    """skl2onnx gives probabilities either as a tensor [n, k] (zipmap=False) or as a list of
    {label: prob} maps (ZipMap); both become float32 [n, k] in `labels` order."""
    if isinstance(raw, list) and raw and isinstance(raw[0], dict):
        keys = list(raw[0])
        if set(map(str, keys)) == set(labels):  # string class labels
            order = [next(k for k in keys if str(k) == lab) for lab in labels]
        else:  # integer class indices 0..k-1
            order = sorted(keys)
        return np.array([[row[k] for k in order] for row in raw], dtype=np.float32)
    return np.asarray(raw, dtype=np.float32)


def tabular_outputs(raw: Mapping[str, Any], *, output: str, labels: Sequence[str],
                    label_key: str | None, prob_key: str) -> Outputs:
    """Map skl2onnx outputs (by ONNX output name) to `<output>` BYTES [n] and `<output>_probs` FP32 [n, k].

    The top label is the model's own label output when present (strings as is, integers as indices into
    `labels`), else the argmax of the probabilities; probability columns follow `labels` (the builder
    trains with classes in that order).
    """
    probs = _probability_matrix(raw[prob_key], labels)
    if probs.ndim != 2 or probs.shape[1] != len(labels):
        raise ValueError(f"probabilities shape {probs.shape} does not match {len(labels)} labels")
    predicted = np.asarray(raw[label_key]).reshape(-1) if label_key is not None else None
    if predicted is None:
        top = [labels[i] for i in np.argmax(probs, axis=1).tolist()]
    elif predicted.dtype.kind in "iu":
        top = [labels[i] for i in predicted.tolist()]
    else:
        top = [x.decode() if isinstance(x, bytes) else str(x) for x in predicted.tolist()]
    return {output: top, output + PROBS_SUFFIX: probs}


def predict_tabular(session: Session, features: np.ndarray, *, input_name: str, output: str,
                    labels: Sequence[str], label_key: str | None, prob_key: str) -> Outputs:
    names = [prob_key] if label_key is None else [label_key, prob_key]
    results = session.run(names, {input_name: np.ascontiguousarray(features, dtype=np.float32)})
    return tabular_outputs(dict(zip(names, results, strict=True)), output=output, labels=labels,
                           label_key=label_key, prob_key=prob_key)
