"""docs/contracts.md carries what users need of the contracts; it must name what the code declares."""

from __future__ import annotations

from pathlib import Path

import pytest

from tenantml import resources

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = (ROOT / "docs" / "contracts.md").read_text()


def test_every_function_is_in_the_functions_table():
    for fn in resources.FUNCTIONS:
        assert f"| {fn.name} |" in CONTRACTS, fn.name


def test_every_published_event_and_its_fields_are_documented():
    for e in resources.EVENTS:
        assert f"`{e.detail_type}`" in CONTRACTS, e.detail_type
        for field in e.detail.model_fields:
            assert f"`{field}`" in CONTRACTS, (e.detail_type, field)


def test_every_route_path_is_documented():
    text = CONTRACTS.replace("[/versions/{version}]", "").replace("[/ready]", "")
    for route in resources.ROUTES:
        stem = route.path.replace("/versions/{version}", "").removesuffix("/ready")
        assert stem in text, route.path


def test_the_readme_points_nowhere_outside_the_repository():
    for doc in (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))):
        assert "../shared" not in doc.read_text(), doc.name


def test_every_sample_event_the_docs_and_help_texts_name_exists():
    import re

    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
             ROOT / "layers" / "core" / "python" / "tenantml" / "cli.py"]
    named = {m for t in texts for m in re.findall(r"events/[a-z0-9-]+\.json", t.read_text())}
    assert named, "the docs show how to invoke with a sample event"
    missing = sorted(n for n in named if not (ROOT / n).is_file())
    assert not missing, missing


def test_the_readme_quotes_the_classifier_figures_the_build_records():
    import json

    manifest = ROOT / ".tenantml" / "models" / "work-item-classifier" / "manifest.json"
    if not manifest.is_file():
        pytest.skip("models not built in this checkout")
    metrics = json.loads(manifest.read_text())["build"]["metrics"]
    readme = (ROOT / "README.md").read_text()
    for head in ("category", "urgency"):
        value = metrics[head]["accuracy"]
        assert f"{head} accuracy {value:.3f}" in readme or f"{head} {value:.3f}" in readme, (head, value)
