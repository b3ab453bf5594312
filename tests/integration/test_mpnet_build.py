"""`tenantml models build --only mpnet-embed`: the real all-mpnet-base-v2 export (436 MB, fp32, for the
GPU endpoint) against sentence-transformers' own embeddings (tests/fixtures/mpnet_reference.json, made by
`tenantml models reference`), the version folder it writes, the cache, and a rebuild without torch that is
byte for byte the same. The build is the session's (tests/integration/conftest.py), made once."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tenantml.example_models import encoder, mpnet
from tenantml.example_models.pipeline import build_models
from tenantml.manifest import Manifest, verify_file

pytestmark = pytest.mark.slow

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "mpnet_reference.json"


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def built(mpnet_build):
    if mpnet_build is None:
        pytest.skip(f"the all-mpnet-base-v2 parts are not installed ({mpnet.INSTALL_COMMAND})")
    return mpnet_build


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fixture_is_small_and_covers_the_cases_that_break_exports(reference: dict):
    items = reference["items"]
    lengths = [len(it["token_ids"]) for it in items]
    assert len(items) == 12 and FIXTURE.stat().st_size < 160_000
    assert all(len(it["embedding"]) == 768 for it in items) and reference["significant_digits"] == 7
    assert reference["model"]["max_seq_length"] == 384 and reference["model"]["dimension"] == 768
    assert 384 in lengths  # truncated at max_seq_length
    assert any(128 < n < 384 for n in lengths)  # relative distances past the last bucket, untruncated
    assert min(lengths) <= 3  # (nearly) empty
    assert all(it["token_ids"][0] == 0 and it["token_ids"][-1] == 2 for it in items)  # <s> ... </s>
    assert set(reference["model"]["packages"]) == set(mpnet.PART_PACKAGES)


def test_build_reports_the_step_and_its_accuracy(built):
    assert len(built.lines) == 2
    assert built.lines[0].startswith("[1/1] mpnet-embed  built in ")
    assert "cosine to reference: min 1.0000" in built.lines[0] or "min 0.9999" in built.lines[0]
    print(f"\nmpnet-embed build: {built.seconds:.1f}s; {built.lines[0]}")


def test_folder_is_a_complete_gpu_model_version(built):
    folder = built.folder
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "model.onnx", "tokenizer.json"]
    manifest = Manifest.model_validate_json((folder / "manifest.json").read_text())
    assert manifest.name == "mpnet-embed" and manifest.task == "embedding" and manifest.backend == "gpu"
    assert [(t.name, t.datatype, t.shape) for t in manifest.inputs] == [("text", "BYTES", [-1])]
    assert [(t.name, t.datatype, t.shape) for t in manifest.outputs] == [("embedding", "FP32", [-1, 768])]
    assert manifest.tokenizer is not None and manifest.tokenizer.max_length == 384
    for name in manifest.files:
        verify_file(manifest, name, (folder / name).read_bytes())
    assert 400e6 < manifest.files["model.onnx"].size < 2**31  # weights inside: one protobuf, under 2 GB
    build = manifest.build
    assert build["graph_inputs"] == ["input_ids", "attention_mask"] and build["precision"] == "fp32"
    assert build["source"]["packages"] == {p: "0.0.1" for p in mpnet.PART_PACKAGES}
    assert build["reference"]["fixture"] == FIXTURE.name
    for regime in ("single", "batched"):
        assert build["accuracy"][regime]["cosine_min"] >= 0.9999


@pytest.fixture(scope="module")
def session(built):
    return encoder.onnx_session(built.folder / "model.onnx")


def test_graph_takes_ids_and_mask_and_gives_768_floats(session):
    assert [(i.name, i.type, i.shape) for i in session.get_inputs()] == [
        ("input_ids", "tensor(int64)", ["batch", "sequence"]),
        ("attention_mask", "tensor(int64)", ["batch", "sequence"])]
    assert [(o.name, o.shape) for o in session.get_outputs()] == [("embedding", ["batch", 768])]


def test_tokenizer_gives_sentence_transformers_token_ids(built, reference: dict):
    assert encoder.token_id_mismatches(built.folder, reference) == []


def test_padded_batches_match_sentence_transformers_on_every_sentence(built, session, reference: dict):
    embed = encoder.onnx_embedder(built.folder, batch_size=4, session=session)
    t0 = time.perf_counter()
    cos = encoder.cosine_to_reference(embed, reference)
    print(f"\nmpnet-embed: cosine min {cos.min():.7f} mean {cos.mean():.7f} "
          f"({len(cos)} sentences, {time.perf_counter() - t0:.1f}s on CPU)")
    assert cos.min() >= 0.9999, [reference["items"][i]["text"][:40] for i in np.where(cos < 0.9999)[0]]
    vectors = embed(["hello", "hello"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_second_run_is_up_to_date_and_touches_nothing(built):
    before = {p: p.stat().st_mtime_ns for p in built.folder.iterdir()}
    lines: list[str] = []
    t0 = time.perf_counter()
    paths = build_models(built.out, only={"mpnet-embed"}, mpnet_reference=FIXTURE, progress=lines.append)
    assert time.perf_counter() - t0 < 5
    assert "up to date" in lines[0] and paths == {"mpnet-embed": built.folder}
    assert {p: p.stat().st_mtime_ns for p in built.folder.iterdir()} == before


def test_rebuild_without_torch_is_byte_identical(built, tmp_path: Path):
    """A second build, in a process where torch cannot be imported, writes the same model.onnx and
    tokenizer.json (same sha256) and the same manifest but for the accuracy (not measured: no fixture)."""
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path

        class NoTorch:  # any import of these now raises ImportError, as if they were not installed
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "sentence_transformers", "transformers"):
                    raise ImportError(name)

        sys.meta_path.insert(0, NoTorch())
        from tenantml.example_models.mpnet import build_mpnet
        build_mpnet(Path({str(tmp_path)!r}))
        assert "torch" not in sys.modules
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=600)
    again = tmp_path / "mpnet-embed"
    for name in ("model.onnx", "tokenizer.json"):
        assert _sha256(again / name) == _sha256(built.folder / name), name

    def facts(folder: Path) -> dict:
        doc = json.loads((folder / "manifest.json").read_text())
        doc["build"] = {k: v for k, v in doc["build"].items() if k not in ("accuracy", "reference")}
        return doc

    assert facts(again) == facts(built.folder)
