"""The synthesized Lambda bundles: size within Lambda's limit, the right content at the right place, and
(where a CPython 3.12 is installed) every handler importing from exactly what Lambda would mount."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
from infra_helpers import refs
from tenantml_cdk.application import STATELESS_STACK
from tenantml_cdk.bundling import unzipped_size
from tenantml_cdk.constructs.functions import function_id

from tenantml import resources

MiB = 1024 * 1024
BUDGET = 200 * MiB          # ours; Lambda's hard limit for function + layers unzipped is 250 MB


def _asset_dir(synth, resource: dict) -> Path:
    path = synth.outdir / resource["Metadata"]["aws:asset:path"]
    assert path.is_dir(), path
    return path


def _function_bundle(synth, name: str) -> dict[str, Path]:
    """The function's code asset and the asset of each of its layers, from the cloud assembly."""
    template = synth.templates[STATELESS_STACK]
    definition = next(d for d in resources.FUNCTIONS if d.name == name)
    fn = template["Resources"][function_id(definition)]
    out = {"function": _asset_dir(synth, fn)}
    for layer_id in refs(fn["Properties"]["Layers"]):
        layer = template["Resources"][layer_id]
        out[layer["Metadata"]["aws:cdk:path"].split("/")[-2]] = _asset_dir(synth, layer)
    return out


@pytest.mark.parametrize("name", [d.name for d in resources.FUNCTIONS])
def test_function_plus_layers_fit_the_budget(synth, name):
    bundle = _function_bundle(synth, name)
    sizes = {part: unzipped_size([path]) for part, path in bundle.items()}
    total = sum(sizes.values())
    print(f"\n[bundle] {name}: " + ", ".join(f"{k} {v / MiB:.1f} MiB" for k, v in sizes.items())
          + f" -> {total / MiB:.1f} MiB unzipped (budget {BUDGET / MiB:.0f} MiB, Lambda limit 250 MB)")
    assert set(bundle) == {"function", "CoreLayer", "RuntimeLayer"}
    assert total < BUDGET


def test_layer_and_function_content(synth):
    bundle = _function_bundle(synth, "inference")
    core, runtime, function = bundle["CoreLayer"], bundle["RuntimeLayer"], bundle["function"]
    assert (function / "handler.py").is_file()
    # A layer zip must have python/ at its root.
    assert [p.name for p in core.iterdir()] == ["python"]
    assert [p.name for p in runtime.iterdir()] == ["python"]
    assert (core / "python" / "tenantml" / "resources.py").is_file()
    assert not (core / "python" / "tenantml" / "local").exists()
    # The example-model builders (and their training data) only run on a laptop: not in the layer.
    assert not (core / "python" / "tenantml" / "example_models").exists()
    assert not list(core.rglob("work_items.csv"))
    assert not list(core.glob("python/*.egg-info")) and not list(core.rglob("__pycache__"))
    for needed in ("onnxruntime", "numpy", "tokenizers", "pydantic", "jwt", "cryptography",
                   "aws_lambda_powertools", "aws_xray_sdk", "cachetools", "jmespath"):
        assert (runtime / "python" / needed).is_dir(), needed
    for provided_by_lambda in ("boto3", "botocore", "s3transfer"):
        assert not (runtime / "python" / provided_by_lambda).exists(), provided_by_lambda
    assert not (runtime / "python" / "huggingface_hub").exists()
    assert not list((runtime / "python" / "numpy").rglob("tests"))


def _python312() -> str | None:
    candidates = [shutil.which("python3.12"), *sorted(glob.glob(os.path.expanduser(
        "~/.pyenv/versions/3.12*/bin/python3.12")))]
    for exe in filter(None, candidates):
        proc = subprocess.run([exe, "-c", "import sys; print(sys.version_info[:2])"],
                              capture_output=True, text=True, check=False)
        if proc.returncode == 0 and proc.stdout.strip() == "(3, 12)":
            return exe
    return None


def _lambda_runtime_sdk(tmp_path: Path) -> Path:
    """Stand-in for /var/runtime: the pure-Python AWS SDK the python3.12 runtime ships (from this venv)."""
    site = Path(sysconfig.get_paths()["purelib"])
    sdk = tmp_path / "var-runtime"
    sdk.mkdir()
    for name in ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six.py"):
        if (site / name).exists():
            (sdk / name).symlink_to(site / name)
    return sdk


@pytest.mark.parametrize("name", [d.name for d in resources.FUNCTIONS])
def test_handler_imports_on_python312_from_the_bundles_alone(synth, tmp_path, name):
    """sys.path as on Lambda: the function, the layers (/opt/python), the runtime's SDK; no site-packages."""
    python = _python312()
    if python is None:
        pytest.skip("no CPython 3.12 interpreter on this machine")
    bundle = _function_bundle(synth, name)
    definition = next(d for d in resources.FUNCTIONS if d.name == name)
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1",
           "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
           "PYTHONPATH": os.pathsep.join(str(p) for p in (
               bundle["function"], bundle["RuntimeLayer"] / "python", bundle["CoreLayer"] / "python",
               _lambda_runtime_sdk(tmp_path)))}
    fn_env = synth.templates[STATELESS_STACK]["Resources"][function_id(definition)]["Properties"][
        "Environment"]["Variables"]
    env.update({k: v if isinstance(v, str) else f"test-{k.lower()}" for k, v in fn_env.items()})
    code = ("import importlib.util, json, sys; "
            "spec = importlib.util.spec_from_file_location('handler', sys.argv[1]); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            "assert callable(m.handler); "
            "print(json.dumps(sorted(k for k in sys.modules if '.' not in k)))")
    proc = subprocess.run([python, "-S", "-c", code, str(bundle["function"] / "handler.py")],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    if name == "authorizer":   # the authorizer's cold start stays light (design rule: no boto3)
        # (Powertools itself imports the top-level botocore package to tag its user agent.)
        heavy = loaded & {"boto3", "numpy", "onnxruntime"}
        assert not heavy, sorted(heavy)
