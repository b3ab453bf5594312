"""The drift baselines of the text example models (`minilm-embed`, `work-item-classifier`): baseline.json
from reference texts, with the derived features the inference function captures for a text model
(`tenantml.serving.capture`): token counts, unknown-token rate and the embedding on the first K principal
directions of the reference embeddings (`tenantml.monitoring.baseline.build_text_baseline`).

Reference texts: the 475 hand-written work items (`data/work_items.csv`, see data/README.md), never the
sentences of the reference fixture (tests/fixtures/minilm_reference.json, which measures the export
against sentence-transformers; a test checks the two do not overlap). Tokens are counted with the model's
own tokenizer configured exactly as serving configures it (`serving.processing.configure_tokenizer`), so a
reference text and the same text at inference count alike; the embeddings are the ones the builders
already compute (`minilm.onnx_embedder`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from tenantml.monitoring.baseline import Baseline

# Not `from tenantml.serving import processing`: the build cache key follows the modules named here, and the
# package's lazy re-export would pull the whole serving path (service, settings) into it.
from tenantml.serving.processing import (
    TokenCounts,
    configure_tokenizer,
    count_tokens,
    token_facts,
    token_feeds,
    tokenize,
)

DATA_FILE = Path(__file__).resolve().parent / "data" / "work_items.csv"
_BATCH = 64

TokenCounter = Callable[[Sequence[str]], TokenCounts]


def reference_texts(path: Path = DATA_FILE) -> list[str]:
    """The `text` column of the work items, stripped, in file order (the texts the classifier trains on)."""
    reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")))
    return [(row["text"] or "").strip() for row in reader]


def token_counter(tokenizer_file: Path, max_length: int) -> TokenCounter:
    """Counts tokens (before truncation) and unknown tokens per text, as the serving runtime does."""
    from tokenizers import Tokenizer

    tokenizer = configure_tokenizer(Tokenizer.from_file(str(tokenizer_file)), max_length)
    facts = token_facts(tokenizer)

    def count(texts: Sequence[str]) -> TokenCounts:
        tokens, unknown = [], []
        for start in range(0, len(texts), _BATCH):
            encodings = tokenize(tokenizer, list(texts[start:start + _BATCH]))
            feeds, mask = token_feeds(encodings, ("input_ids",))
            counts = count_tokens(encodings, feeds["input_ids"], mask, facts)
            tokens.append(counts.tokens)
            unknown.append(counts.unknown)
        empty = np.zeros(0, dtype=np.int64)
        return TokenCounts(np.concatenate(tokens) if tokens else empty,
                                      np.concatenate(unknown) if unknown else empty)

    return count


def summary(baseline: Baseline) -> dict:
    """Facts about a text baseline for the manifest's `build` section."""
    text = baseline.text
    if text is None:
        raise ValueError("not a text baseline")
    facts: dict = {"file": "baseline.json", "reference": DATA_FILE.name,
                   "rows": baseline.numeric[text.features[0]].count, "features": list(text.features),
                   "embedding": text.embedding}
    if text.projection is not None:
        facts["components"] = text.projection.k
        facts["explained_variance_ratio"] = text.projection.explained_variance_ratio
    perf = baseline.performance
    if perf is not None and perf.accuracy is not None:
        facts["accuracy"] = round(perf.accuracy, 4)
        facts["accuracy_rows"] = perf.count
    return facts
