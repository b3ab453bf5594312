"""The runtime-layer strip rules and bundle cache, on a fabricated site-packages (no pip, no network)."""

from __future__ import annotations

import json
from pathlib import Path

from tenantml_cdk.bundling import MARKER, _intact, pip_platforms, strip


def _dist(site: Path, name: str, files: dict[str, str], requires: tuple[str, ...] | list[str] = ()) -> None:
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("\n".join([f"Name: {name}", *[f"Requires-Dist: {r}" for r in requires]]))
    for rel, text in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
    record = [*files, f"{info.name}/METADATA", f"{info.name}/RECORD"]
    (info / "RECORD").write_text("\n".join(f"{r},," for r in record))


def test_strip_walks_the_dependency_graph_and_removes_by_record(tmp_path):
    site = tmp_path / "python"
    _dist(site, "tokenizers", {"tokenizers/__init__.py": "x"}, ["huggingface-hub>=0.16"])
    _dist(site, "huggingface-hub", {"huggingface_hub/__init__.py": "x"}, ["filelock", "packaging"])
    _dist(site, "filelock", {"filelock/__init__.py": "x"})
    _dist(site, "aws-xray-sdk", {"aws_xray_sdk/__init__.py": "x"}, ["wrapt", "botocore>=1.11"])
    _dist(site, "wrapt", {"wrapt/__init__.py": "x"})
    _dist(site, "botocore", {"botocore/__init__.py": "x"}, ["urllib3", "jmespath"])
    _dist(site, "urllib3", {"urllib3/__init__.py": "x"})
    _dist(site, "aws-lambda-powertools", {"aws_lambda_powertools/__init__.py": "x"}, ["jmespath"])
    _dist(site, "jmespath", {"jmespath/__init__.py": "x"})
    _dist(site, "numpy", {"numpy/__init__.py": "x", "numpy/_core/tests/test_a.py": "x",
                          "numpy/testing/__init__.py": "x"},
          ['pytest; extra == "test"', 'colorama; platform_system == "Windows"'])
    _dist(site, "packaging", {"packaging/__init__.py": "x"})
    (site / "bin").mkdir()
    (site / "bin" / "f2py").write_text("#!/build/python")

    removed = strip(site, roots={"tokenizers": frozenset(), "aws-xray-sdk": frozenset(),
                                 "aws-lambda-powertools": frozenset(), "numpy": frozenset()},
                    machine="x86_64")

    present = {p.name for p in site.iterdir()}
    for kept in ("tokenizers", "aws_xray_sdk", "wrapt", "aws_lambda_powertools", "jmespath", "numpy"):
        assert kept in present, kept
    # the SDK (runtime-provided), what only it or a cut edge needs, and what nothing needs
    for gone in ("botocore", "urllib3", "huggingface_hub", "filelock", "packaging", "bin"):
        assert gone not in present, gone
    assert not list(site.glob("botocore-*.dist-info"))
    assert not (site / "numpy" / "_core" / "tests").exists()
    assert (site / "numpy" / "testing" / "__init__.py").is_file()   # numpy.testing is not a test suite
    assert {"botocore", "huggingface-hub", "filelock", "urllib3", "packaging", "bin/"} <= set(removed)


def test_a_cached_bundle_is_reused_only_while_intact(tmp_path):
    bundle = tmp_path / "x86_64-abc"
    (bundle / "python" / "pkg").mkdir(parents=True)
    (bundle / "python" / "pkg" / "__init__.py").write_text("print('hi')")
    assert not _intact(bundle)                                  # no marker: never finished
    (bundle / MARKER).write_text(json.dumps({"files": 1, "bytes": len("print('hi')")}))
    assert _intact(bundle)
    (bundle / "python" / "pkg" / "__init__.py").write_text("tampered with")
    assert not _intact(bundle)


def test_platform_tags_cover_amazon_linux_2023_glibc():
    tags = pip_platforms("arm64")
    assert tags[0] == "manylinux_2_34_aarch64" and "manylinux_2_28_aarch64" in tags
    assert tags[-1] == "manylinux2014_aarch64" and all("aarch64" in t for t in tags)
