"""`tenantml models register|list` (tenantml.registry.cli) on the in-memory fakes."""

from __future__ import annotations

import json

import pytest
from serving_models import tabular_with

from tenantml import cli
from tenantml.errors import BadRequest, Conflict
from tenantml.manifest import Manifest
from tenantml.registry import cli as registry_cli
from tenantml.registry.cli import format_models, register_folder
from tenantml.registry.memory import MemoryArtifactStore, MemoryRegistry, manifest_for
from tenantml.settings import reset_settings


def build(folder, name="project-risk", **replace: bytes):
    """A built model folder: the tiny tabular model (registration loads it) and a baseline, `replace`
    overriding file contents (the manifest lists them with their real sha256 and size)."""
    manifest, files = tabular_with(name, **{"baseline.json": b'{"features": {}}', **replace})
    folder.mkdir(parents=True, exist_ok=True)
    for n, data in files.items():
        (folder / n).write_bytes(data)
    (folder / "manifest.json").write_text(manifest.model_dump_json(indent=2))
    return folder


@pytest.fixture
def fakes(monkeypatch):
    registry, store = MemoryRegistry(), MemoryArtifactStore()
    monkeypatch.setattr(registry_cli, "_clients", lambda: (registry, store))
    monkeypatch.setenv("TENANTML_REGISTRY_TABLE", "a-deployed-table")   # as pointed at a deployed platform
    return registry, store


def test_register_folder_uploads_listed_files_and_points_production_at_the_version(tmp_path):
    folder = build(tmp_path / "project-risk")
    (folder / "notes.txt").write_text("not in the manifest")
    registry, store = MemoryRegistry(), MemoryArtifactStore()
    mv = register_folder(folder, "acme", registry, store)
    assert (mv.owner, mv.model, mv.version) == ("acme", "project-risk", "1")
    assert sorted(store.objects) == ["models/acme/project-risk/1/baseline.json",
                                     "models/acme/project-risk/1/manifest.json",
                                     "models/acme/project-risk/1/model.onnx"]
    stored = store.objects["models/acme/project-risk/1/manifest.json"]
    assert Manifest.model_validate_json(stored) == mv.manifest
    [summary] = registry.list_models("acme")
    assert summary.aliases == {"production": "1"}
    again = register_folder(folder, "acme", registry, store, aliases=("production", "canary"), actor="ops")
    assert again.version == "2" and registry.resolve("acme", "project-risk").version == "2"
    assert registry.audit("acme")[-1].actor == "ops"


def test_register_folder_with_model_and_version_for_the_shared_tenant(tmp_path):
    registry, store = MemoryRegistry(), MemoryArtifactStore()
    mv = register_folder(build(tmp_path / "x"), "_shared", registry, store, model="risk", version="2026-11")
    assert (mv.owner, mv.model, mv.version, mv.manifest.name) == ("_shared", "risk", "2026-11", "risk")
    assert registry.resolve("globex", "risk").owner == "_shared"
    with pytest.raises(Conflict):
        register_folder(tmp_path / "x", "_shared", registry, store, model="risk", version="2026-11")


def test_local_files_are_checked_before_anything_is_uploaded(tmp_path):
    folder = build(tmp_path / "m")
    model = (folder / "model.onnx").read_bytes()
    (folder / "model.onnx").write_bytes(model[:-1] + bytes([model[-1] ^ 1]))   # same size, other bytes
    store = MemoryArtifactStore()
    with pytest.raises(BadRequest, match="model.onnx"):
        register_folder(folder, "acme", MemoryRegistry(), store)
    (folder / "model.onnx").unlink()
    with pytest.raises(BadRequest, match="missing"):
        register_folder(folder, "acme", MemoryRegistry(), store)
    with pytest.raises(BadRequest, match="manifest.json"):
        register_folder(tmp_path / "nowhere", "acme", MemoryRegistry(), store)
    (folder / "manifest.json").write_text(json.dumps({"name": "m"}))
    with pytest.raises(BadRequest, match="manifest.task"):
        register_folder(folder, "acme", MemoryRegistry(), store)
    assert store.objects == {}


def test_cli_verbs_register_and_list(tmp_path, fakes, capsys):
    registry, _ = fakes
    registry.register_version("_shared", "minilm-embed", manifest_for("minilm-embed", {}, task="embedding"),
                              "op", aliases=["production"])
    folder = build(tmp_path / "project-risk")
    assert cli.main(["models", "register", str(folder), "--tenant", "acme", "--alias", "staging"]) == 0
    assert "registered acme/project-risk version 1 (aliases: staging)" in capsys.readouterr().out
    assert cli.main(["models", "list", "--tenant", "acme"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["MODEL", "OWNER", "TASK", "BACKEND", "PRODUCTION", "LATEST", "VERSIONS",
                                "ALIASES"]
    assert lines[1].split() == ["minilm-embed", "_shared", "embedding", "cpu", "1", "1", "1", "production=1"]
    assert lines[2].split() == ["project-risk", "own", "tabular-classification", "cpu", "-", "1", "1",
                                "staging=1"]


def test_cli_reports_errors_on_stderr_with_a_nonzero_exit(tmp_path, fakes, capsys):
    folder = build(tmp_path / "project-risk")
    assert cli.main(["models", "register", str(folder), "--tenant", "acme", "--version", "1"]) == 0
    assert cli.main(["models", "register", str(folder), "--tenant", "acme", "--version", "1"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert cli.main(["models", "list", "--tenant", "nobody"]) == 0
    assert "no models" in capsys.readouterr().out


def test_cli_refuses_a_model_that_is_not_onnx_with_one_line_and_uploads_nothing(tmp_path, fakes, capsys):
    registry, store = fakes
    folder = build(tmp_path / "project-risk", **{"model.onnx": b"not an onnx model at all"})
    assert cli.main(["models", "register", str(folder), "--tenant", "acme"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: ")
    assert "'model.onnx'" in captured.err and "not a valid ONNX model" in captured.err
    assert store.objects == {} and registry.list_models("acme") == []


def test_cli_without_settings_or_a_platform_says_how_to_start_one(tmp_path, monkeypatch, capsys):
    from tenantml.local import state as platform_state

    monkeypatch.delenv("TENANTML_ARTIFACT_BUCKET", raising=False)
    monkeypatch.delenv("TENANTML_REGISTRY_TABLE", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(platform_state, "checkout_home", lambda: None)
    reset_settings()
    try:
        assert cli.main(["models", "list", "--tenant", "acme"]) == 2
    finally:
        reset_settings()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "make local" in err and "TENANTML_REGISTRY_TABLE" in err


def test_format_models_aligns_columns():
    registry = MemoryRegistry()
    registry.register_version("acme", "a-long-model-name", manifest_for("a-long-model-name", {}), "u")
    text = format_models(registry.list_models("acme"), "acme")
    header, row = text.splitlines()
    assert header.index("OWNER") == row.index("own")
