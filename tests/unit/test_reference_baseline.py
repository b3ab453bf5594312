"""baseline.json of any model folder from reference data (tenantml.monitoring.reference): the model in the
folder run by the serving runtime, each batch turned into the capture's columns, checked against
build_baseline on columns computed independently (onnxruntime and numpy directly), and the commands
`tenantml models baseline` and `tenantml models register --reference`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from serving_models import (
    FEATURES,
    REFERENCE_TEXTS,
    RISK_LABELS,
    Version,
    classifier_version,
    embedding_version,
    register,
    tabular_version,
    tiny_embed,
    tiny_tokens,
    tokenizer_json,
)
from tokenizers import Tokenizer

from tenantml import cli
from tenantml.example_models.heads import write_manifest
from tenantml.manifest import Manifest, sha256_file
from tenantml.monitoring.baseline import Baseline, build_baseline, numeric_baseline, text_projection
from tenantml.monitoring.reference import (
    ReferenceDataError,
    baseline_for_folder,
    write_baseline,
)
from tenantml.registry import ModelVersion
from tenantml.registry import cli as registry_cli
from tenantml.registry.cli import register_folder
from tenantml.registry.memory import MemoryArtifactStore, MemoryRegistry
from tenantml.serving.capture import take_text, text_columns
from tenantml.serving.heads import apply_head, load_head
from tenantml.serving.oip import Tensor
from tenantml.serving.processing import configure_tokenizer, token_feeds, tokenize
from tenantml.serving.runtime import ModelRuntime

# Beyond the tiny encoder's 16 tokens (truncated, yet counted whole), and words outside its vocabulary.
TEXTS = [*REFERENCE_TEXTS, " ".join(["login page fails"] * 8), "zebra crossing login", ""]


def folder_of(v: Version, path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, data in v.artifacts.items():
        (path / name).write_bytes(data)
    write_manifest(path, v.manifest)
    return path


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def tabular_rows(n: int = 400, seed: int = 3) -> tuple[np.ndarray, list[str]]:
    """Features rounded to 3 decimals (exact in the CSV), and their true class by the tiny model's rule."""
    x = np.round(np.random.default_rng(seed).normal(size=(n, len(FEATURES))), 3)
    truth = np.digitize(x[:, 1] + 0.5 * x[:, 2] - 0.5 * x[:, 5], [-0.5, 0.5])
    return x, [RISK_LABELS[k] for k in truth]


def ort_labels(model: bytes, x: np.ndarray) -> list[str]:
    """The tiny risk model's labels from onnxruntime directly (its `label` output is a class index)."""
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    label = sess.run(["label"], {sess.get_inputs()[0].name: x.astype(np.float32)})[0]
    return [RISK_LABELS[int(k)] for k in label]


@pytest.fixture
def risk(tmp_path):
    v = tabular_version()
    x, truth = tabular_rows()
    ref = write_csv(tmp_path / "reference.csv", ["note", *FEATURES, "risk"],
                    [["n", *row, y] for row, y in zip(x.tolist(), truth, strict=True)])
    return folder_of(v, tmp_path / "project-risk"), ref, v, x, truth


# --- tabular ---------------------------------------------------------------------------------------------


def test_a_tabular_baseline_is_build_baseline_on_the_capture_columns_computed_independently(risk):
    folder, ref, v, x, truth = risk
    got = baseline_for_folder(folder, ref, label_column="risk")
    x32 = x.astype(np.float32)
    predicted = ort_labels(v.artifacts["model.onnx"], x32)
    expected = build_baseline({f: x32[:, i] for i, f in enumerate(FEATURES)}, predictions=predicted,
                              labels=truth)
    assert got.model_dump_json() == expected.model_dump_json()
    assert got.performance.accuracy == pytest.approx(np.mean(np.array(predicted) == np.array(truth)))
    assert got.performance.accuracy > 0.8                   # the tiny model learnt the rule
    # Batches change nothing; nor do bins/seed other than as build_baseline uses them.
    assert baseline_for_folder(folder, ref, label_column="risk", batch_size=7) == got
    coarse = baseline_for_folder(folder, ref, bins=10, seed=5)
    assert coarse == build_baseline({f: x32[:, i] for i, f in enumerate(FEATURES)}, predictions=predicted,
                                    bins=10, seed=5)


def test_labels_give_the_accuracy_of_the_predictions_against_them(risk, tmp_path):
    folder, _, v, x, _ = risk
    predicted = ort_labels(v.artifacts["model.onnx"], x)
    wrong = {"low": "high", "medium": "low", "high": "medium"}
    labels = [p if i % 4 else wrong[p] for i, p in enumerate(predicted)]         # 3 rows in 4 right
    ref = write_csv(tmp_path / "labelled.csv", [*FEATURES, "truth"],
                    [[*row, y] for row, y in zip(x.tolist(), labels, strict=True)])
    got = baseline_for_folder(folder, ref, label_column="truth")
    assert got.performance.count == len(x)
    assert got.performance.accuracy == pytest.approx(1 - len(range(0, len(x), 4)) / len(x))
    assert got.performance.mae is None
    nonsense = write_csv(tmp_path / "nonsense.csv", [*FEATURES, "truth"],
                         [[*row, "LOW"] for row in x.tolist()])
    with pytest.raises(ReferenceDataError, match="no value of the label column 'truth' is a label of output "
                                                 "'risk' \\(high, low, medium\\)"):
        baseline_for_folder(folder, nonsense, label_column="truth")


def test_write_baseline_lists_it_with_its_sha256_and_changes_nothing_else(risk):
    folder, ref, *_ = risk
    before = json.loads((folder / "manifest.json").read_bytes())
    baseline = baseline_for_folder(folder, ref, label_column="risk")
    entry = write_baseline(folder, baseline)
    raw = (folder / "manifest.json").read_bytes()
    after = json.loads(raw)
    assert after["files"]["baseline.json"] == {"sha256": sha256_file(folder / "baseline.json"),
                                               "size": (folder / "baseline.json").stat().st_size}
    assert entry.sha256 == after["files"]["baseline.json"]["sha256"]
    del after["files"]["baseline.json"]
    assert after == before
    manifest = Manifest.model_validate_json(raw)
    stable = folder.parent / "stable"
    write_manifest(stable, manifest)                         # the builders' bytes, exactly
    assert (stable / "manifest.json").read_bytes() == raw
    assert Baseline.model_validate_json((folder / "baseline.json").read_bytes()) == baseline
    assert sorted(p.name for p in folder.iterdir()) == ["baseline.json", "manifest.json", "model.onnx"]
    # Again, with the baseline now listed: the same bytes (the listed one is ignored while computing).
    write_baseline(folder, baseline_for_folder(folder, ref, label_column="risk"))
    assert (folder / "manifest.json").read_bytes() == raw
    # The registry's own verification accepts the folder as it is now.
    mv = register_folder(folder, "acme", MemoryRegistry(), MemoryArtifactStore())
    assert mv.manifest.files["baseline.json"] == entry


# --- text models ---------------------------------------------------------------------------------------


def test_an_encoder_baseline_has_the_capture_text_features_and_projection(tmp_path):
    v = embedding_version()
    folder = folder_of(v, tmp_path / "minilm-embed")
    ref = write_csv(tmp_path / "texts.csv", ["id", "text"], [[i, t] for i, t in enumerate(TEXTS)])
    got = baseline_for_folder(folder, ref)
    assert got.schema_version == 2 and got.prediction is None and got.performance is None
    assert got.text.input == "text" and got.text.embedding == "output"
    assert got.text.features == ["token_count", "unknown_token_rate", "embedding_pc1", "embedding_pc2",
                                 "embedding_pc3"]
    tokens, unknown = tiny_tokens(TEXTS)
    assert tokens[-3] > 16 and unknown[-2] == 2 and tokens[-1] == 0
    assert got.numeric["token_count"] == numeric_baseline("token_count", tokens.astype(np.float32))
    rate = (unknown / np.maximum(tokens, 1)).astype(np.float32)
    assert got.numeric["unknown_token_rate"] == numeric_baseline("unknown_token_rate", rate)
    # The projection of the embeddings (numpy's twin of the encoder, float64: equal to the last rounding).
    embeddings = tiny_embed(TEXTS)
    expected = text_projection(embeddings)
    assert got.text.projection.count == len(TEXTS)
    np.testing.assert_allclose(got.text.projection.mean, expected.mean, atol=2e-6)
    np.testing.assert_allclose(got.text.projection.components, expected.components, atol=2e-6)
    coords = expected.project(embeddings)
    for k in range(3):
        feature = got.numeric[f"embedding_pc{k + 1}"]
        assert feature.count == len(TEXTS)
        assert feature.mean == pytest.approx(coords[:, k].mean(), abs=1e-5)
        assert feature.std == pytest.approx(coords[:, k].std(), rel=1e-4)


def test_the_reference_columns_are_what_the_runtime_captures_with_the_written_baseline(tmp_path):
    """Traffic of the same texts, served with the baseline.json just written, gives the same columns."""
    folder = folder_of(embedding_version(), tmp_path / "minilm-embed")
    ref = write_csv(tmp_path / "texts.csv", ["text"], [[t] for t in TEXTS])
    baseline = baseline_for_folder(folder, ref)
    write_baseline(folder, baseline)
    store = MemoryArtifactStore()
    manifest = Manifest.model_validate_json((folder / "manifest.json").read_bytes())
    for name in manifest.files:
        store.put("acme", "m", "1", name, (folder / name).read_bytes())
    model = ModelRuntime(store, budget_bytes=1 << 30).get(ModelVersion("acme", "m", "1", manifest))
    assert model.projection is not None
    texts = list(TEXTS)
    model.predict({"text": Tensor("text", "BYTES", (len(texts),), texts)})
    columns = text_columns(take_text(texts))
    for name in baseline.text.features:
        assert numeric_baseline(name, columns[name]) == baseline.numeric[name], name


def test_a_head_runs_on_its_backbone_folder_and_predicts_its_first_label_output(tmp_path):
    backbone = folder_of(embedding_version(), tmp_path / "minilm-embed")
    head = classifier_version("acme")
    folder = folder_of(head, tmp_path / "work-item-classifier")
    truth = ["bug"] * len(TEXTS)
    ref = write_csv(tmp_path / "texts.csv", ["text", "category"], [[t, y] for t, y in zip(TEXTS, truth,
                                                                                           strict=True)])
    got = baseline_for_folder(folder, ref, label_column="category", backbone_folder=backbone)
    assert got.text.embedding == "backbone"
    # The head's category on the encoder's embeddings, from onnxruntime and the head directly.
    tok = configure_tokenizer(Tokenizer.from_str(tokenizer_json().decode()), 16)
    feeds, _ = token_feeds(tokenize(tok, TEXTS))
    sess = ort.InferenceSession(embedding_version().artifacts["model.onnx"],
                                providers=["CPUExecutionProvider"])
    emb = sess.run(["embedding"], feeds)[0]
    labels, probs = apply_head(load_head(head.artifacts["head.json"]), emb)["category"]
    predicted = [labels[i] for i in probs.argmax(axis=1)]
    expected = build_baseline({}, predictions=predicted, labels=truth)
    assert got.prediction == expected.prediction and got.performance == expected.performance
    assert got.text.projection == baseline_for_folder(backbone, ref).text.projection

    with pytest.raises(ReferenceDataError, match="is a head on _shared/minilm-embed version 1: give its "
                                                 "backbone's built folder with --backbone-folder"):
        baseline_for_folder(folder, ref)
    other = folder_of(embedding_version(name="other-embed"), tmp_path / "other")
    with pytest.raises(ReferenceDataError, match="holds 'other-embed', but the head's backbone is "
                                                 "_shared/minilm-embed version 1"):
        baseline_for_folder(folder, ref, backbone_folder=other)


# --- refusals -----------------------------------------------------------------------------------------


def test_a_missing_column_nan_or_a_bad_cell_fail_with_their_message(risk, tmp_path):
    folder, _, _, x, _ = risk
    rows = x.tolist()
    no_velocity = write_csv(tmp_path / "a.csv", [f for f in FEATURES if f != "velocity"],
                            [[v for f, v in zip(FEATURES, r, strict=True) if f != "velocity"] for r in rows])
    with pytest.raises(ReferenceDataError, match=r"a.csv has no column 'velocity' \(its columns: "
                                                 r"open_items, overdue_items,"):
        baseline_for_folder(folder, no_velocity)
    for cell in ("nan", "", "inf", "fast", "1e39"):        # 1e39: beyond float32, the FP32 input's type
        what = repr(cell)
        bad = [list(r) for r in rows]
        bad[1][FEATURES.index("velocity")] = cell
        path = write_csv(tmp_path / "b.csv", FEATURES, bad)
        with pytest.raises(ReferenceDataError, match=f"b.csv line 3, column 'velocity': {what} is not a "
                                                     "finite number"):
            baseline_for_folder(folder, path)
    missing_label = write_csv(tmp_path / "c.csv", FEATURES, rows)
    with pytest.raises(ReferenceDataError, match="has no column 'truth'"):
        baseline_for_folder(folder, missing_label, label_column="truth")
    with pytest.raises(ReferenceDataError, match="cannot read the reference"):
        baseline_for_folder(folder, tmp_path / "nowhere.csv")
    texts = write_csv(tmp_path / "t.csv", ["sentence"], [[t] for t in TEXTS])
    encoder = folder_of(embedding_version(), tmp_path / "enc")
    with pytest.raises(ReferenceDataError, match=r"has no column 'text' \(its columns: sentence\)"):
        baseline_for_folder(encoder, texts)
    labelled = write_csv(tmp_path / "u.csv", ["text", "sentence"], [[t, "x"] for t in TEXTS])
    with pytest.raises(ReferenceDataError, match="--label sentence: 'minilm-embed' has no label or numeric "
                                                 "prediction output"):
        baseline_for_folder(encoder, labelled, label_column="sentence")


def test_a_model_that_fails_to_load_or_to_run_is_one_message(risk, tmp_path):
    folder, ref, v, x, _ = risk
    # A manifest that names a ninth feature: the graph refuses [n, 9].
    nine = [*FEATURES, "extra"]
    wide = v.manifest.model_copy(update={"features": nine, "inputs": [
        v.manifest.inputs[0].model_copy(update={"shape": [-1, 9]})]})
    write_manifest(folder, wide)
    ref9 = write_csv(tmp_path / "nine.csv", nine, [[*r, 0.0] for r in x.tolist()])
    with pytest.raises(ReferenceDataError, match=r"the model failed on reference rows 1-400: \w+: "):
        baseline_for_folder(folder, ref9)
    write_manifest(folder, v.manifest)
    (folder / "model.onnx").write_bytes(v.artifacts["model.onnx"][:-1] + b"\0")
    with pytest.raises(ReferenceDataError, match="the model could not be loaded: sha256 mismatch for "
                                                 "project-risk/model.onnx"):
        baseline_for_folder(folder, ref)


# --- the commands ---------------------------------------------------------------------------------------


def test_models_baseline_writes_the_file_and_prints_a_summary(risk, capsys):
    folder, ref, *_ = risk
    assert cli.main(["models", "baseline", str(folder), "--reference", str(ref), "--label", "risk"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{folder / 'baseline.json'}: ") and out[0].endswith("listed in manifest.json")
    assert out[1:3] == ["  rows: 400", "  features: 8 (open_items, overdue_items, blocked_items, team_size, "
                                       "velocity, days_to_deadline, scope_change_pct, bug_ratio)"]
    assert out[3].startswith("  prediction: categorical (") and out[4].startswith("  baseline accuracy: 0.")
    assert "baseline.json" in json.loads((folder / "manifest.json").read_text())["files"]


def test_models_baseline_errors_are_one_line_and_nonzero(risk, tmp_path, capsys):
    folder, _, _, x, _ = risk
    bad = write_csv(tmp_path / "bad.csv", FEATURES, [["nan", *r[1:]] for r in x.tolist()])
    assert cli.main(["models", "baseline", str(folder), "--reference", str(bad)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: ")
    assert "line 2, column 'open_items': 'nan' is not a finite number" in captured.err
    assert "baseline.json" not in json.loads((folder / "manifest.json").read_text())["files"]
    head = folder_of(classifier_version("acme"), tmp_path / "head")
    texts = write_csv(tmp_path / "texts.csv", ["text"], [[t] for t in TEXTS])
    assert cli.main(["models", "baseline", str(head), "--reference", str(texts)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--backbone-folder" in err


@pytest.fixture
def fakes(monkeypatch):
    registry, store = MemoryRegistry(), MemoryArtifactStore()
    monkeypatch.setattr(registry_cli, "_clients", lambda: (registry, store))
    monkeypatch.setenv("TENANTML_REGISTRY_TABLE", "a-deployed-table")
    return registry, store


def test_register_with_a_reference_registers_the_version_with_its_baseline(risk, fakes, capsys):
    registry, store = fakes
    folder, ref, *_ = risk
    assert cli.main(["models", "register", str(folder), "--tenant", "acme", "--reference", str(ref),
                     "--label", "risk"]) == 0
    out = capsys.readouterr().out
    assert "baseline accuracy: 0." in out and "registered acme/project-risk version 1" in out
    mv = registry.resolve("acme", "project-risk")
    entry = mv.manifest.files["baseline.json"]
    assert entry.sha256 == sha256_file(folder / "baseline.json")
    assert store.get("acme", "project-risk", "1", "baseline.json") == (folder / "baseline.json").read_bytes()


def test_register_a_head_with_a_reference_runs_it_on_the_registered_backbone(tmp_path, fakes, capsys):
    registry, store = fakes
    register(registry, store, embedding_version())            # _shared/minilm-embed 1
    folder = folder_of(classifier_version("acme"), tmp_path / "head")
    texts = write_csv(tmp_path / "texts.csv", ["text"], [[t] for t in TEXTS])
    assert cli.main(["models", "register", str(folder), "--tenant", "acme", "--reference", str(texts)]) == 0
    assert "registered acme/work-item-classifier version 1" in capsys.readouterr().out
    local = folder_of(embedding_version(), tmp_path / "minilm-embed")
    assert Baseline.model_validate_json((folder / "baseline.json").read_bytes()) == \
        baseline_for_folder(folder, texts, backbone_folder=local)
    assert "baseline.json" in registry.resolve("acme", "work-item-classifier").manifest.files


def test_register_refuses_before_uploading_when_the_reference_does_not_fit(risk, tmp_path, fakes, capsys):
    registry, store = fakes
    folder, *_ = risk
    texts = write_csv(tmp_path / "texts.csv", ["text"], [["hello"]])
    assert cli.main(["models", "register", str(folder), "--tenant", "acme", "--reference", str(texts)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no column 'open_items'" in err
    assert registry.list_models("acme") == [] and store.objects == {}
    assert cli.main(["models", "register", str(folder), "--tenant", "acme", "--label", "risk"]) == 2
    assert "--reference" in capsys.readouterr().err
