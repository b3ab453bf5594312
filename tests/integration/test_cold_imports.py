"""What the inference function imports at init, in a fresh interpreter: a deterministic guard for its cold
start (what `tenantml bench` times against a bare onnxruntime script), not a timing test.

- Init imports none of the modules kept off it: boto3 and s3transfer (clients are botocore's), the X-Ray
  SDK (tracing is off unless configured), Powertools' idempotency utility (GPU submits only), the GPU
  worker functions' modules (tenantml.gpu.dispatch/results: the inference function only builds the
  submitter, lazily), the rollout state machine (tenantml.rollout.machine: routing imports it for models
  with a live rollout), local mode, the operator-side modules and the data-science stacks.
- Without a preload, importing the handler creates no AWS client (botocore.client is not even imported).
- With a preload, the first request imports nothing new (init did it all: what SnapStart snapshots).
- The handler leaves the cyclic GC enabled, with what init built frozen (`gc.freeze`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HANDLER = ROOT / "functions" / "inference" / "handler.py"

# Moved off the inference init path (import-line changes) and kept off it.
MOVED_OFF_INIT = ["tenantml.gpu.dispatch", "tenantml.gpu.results", "tenantml.rollout.machine"]
# Never needed by the inference function's init or first prediction.
NEVER_AT_INIT = [
    "boto3", "s3transfer", "aws_xray_sdk", "aws_lambda_powertools.utilities.idempotency",
    "tenantml.local", "tenantml.example_models", "tenantml.rollout.service", "tenantml.rollout.controller",
    "tenantml.rollout.alarms", "tenantml.monitoring.report", "tenantml.monitoring.stats",
    "tenantml.monitoring.jobs", "tenantml.monitoring.baseline", "tenantml.registry.service",
    "tenantml.events.bus", "tenantml.events.outbox", "tenantml.cli", "tenantml.bench",
    "pandas", "pyarrow", "scipy", "sklearn", "skl2onnx", "onnx", "torch", "transformers", "requests",
]

_IMPORT_ONLY = r"""
import gc, importlib.util, json, sys
spec = importlib.util.spec_from_file_location("inference_handler", sys.argv[1])
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
print(json.dumps({"modules": sorted(sys.modules), "gc_enabled": gc.isenabled(),
                  "frozen": gc.get_freeze_count()}))
"""

# In-process moto: imported (with boto3, the model builders...) before the handler, so only what the
# handler adds to sys.modules is compared.
_PRELOAD_AND_FIRST_REQUEST = r"""
import importlib.util, json, sys
sys.path.insert(0, sys.argv[2])
import pytest
from moto_env import AWS, NAMES, lambda_account
import serving_models as sm
from tenantml.registry.dynamo import DynamoRegistry
from tenantml.registry.s3 import S3ArtifactStore
from tenantml.settings import reset_settings

class Context:
    function_name = "tenantml-test-inference"; memory_limit_in_mb = 2048; function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:tenantml-test-inference"
    aws_request_id = "cold-imports"; log_group_name = "/aws/lambda/x"; log_stream_name = "s"
    def get_remaining_time_in_millis(self): return 30000

with pytest.MonkeyPatch.context() as mp, lambda_account(mp, "inference"):
    sm.register(DynamoRegistry(NAMES.tables["registry"], AWS),
                S3ArtifactStore(NAMES.buckets["artifacts"], AWS), sm.embedding_version())
    mp.setenv("TENANTML_PRELOAD_MODELS", "_shared/minilm-embed")
    mp.setenv("TENANTML_GPU_ENDPOINT_NAME", "tenantml-test-gpu")      # as where the GPU endpoint is deployed
    reset_settings()
    before = set(sys.modules)
    spec = importlib.util.spec_from_file_location("inference_handler", sys.argv[1])
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    at_init = set(sys.modules)
    preloaded = len(list(mod.service.runtime.loaded()))
    event = json.load(open(sys.argv[3]))
    resp = mod.handler(event, Context())
    print(json.dumps({"before": sorted(before), "init": sorted(at_init - before),
                      "first_request": sorted(set(sys.modules) - at_init), "status": resp["statusCode"],
                      "preloaded": preloaded}))
"""


def _run(script: str, *args: str, env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", script, str(HANDLER), *args], env=env,  # noqa: S603
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _loaded(modules: set[str], name: str) -> bool:
    return name in modules or any(m.startswith(name + ".") for m in modules)


def _function_env() -> dict[str, str]:
    """The inference function's variables (as local mode and the other integration tests give them, plus
    the GPU endpoint's name, as where one is deployed), no preload, no endpoint URL: importing the handler
    must not need AWS at all."""
    from tenantml import resources
    from tenantml.local.provision import local_environment, process_env
    from tenantml.settings import PREFIX, AwsSettings

    aws = AwsSettings(region="us-east-1")
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    env.update(process_env(aws))
    env.update(local_environment(resources.function("inference"), resources.LocalNames.make("tenantml-test"),
                                 aws))
    env.pop("TENANTML_ENDPOINT_URL", None)
    env["TENANTML_PRELOAD_MODELS"] = ""
    env["TENANTML_GPU_ENDPOINT_NAME"] = "tenantml-test-gpu"
    env.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_EC2_METADATA_DISABLED": "true"})
    return env


def test_handler_import_keeps_heavy_and_unneeded_modules_off_init():
    out = _run(_IMPORT_ONLY, env=_function_env())
    modules = set(out["modules"])
    assert _loaded(modules, "tenantml.serving.service") and _loaded(modules, "onnxruntime")  # it did import
    loaded = [name for name in MOVED_OFF_INIT + NEVER_AT_INIT if _loaded(modules, name)]
    assert loaded == [], f"imported at the inference function's init: {loaded}"
    # AWS clients are made on first use: without a preload, no botocore client machinery at all.
    assert not {"botocore.session", "botocore.client", "botocore.config"} & modules
    assert out["gc_enabled"] and out["frozen"] > 0


def test_preload_does_it_all_at_init_and_first_request_imports_nothing():
    pytest.importorskip("moto")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTML_")}
    event = ROOT / "events" / "inference-infer-embed.json"
    out = _run(_PRELOAD_AND_FIRST_REQUEST, str(ROOT / "tests"), str(event), env=env)
    assert out["status"] == 200 and out["preloaded"] == 1
    assert out["first_request"] == [], f"imported by the first request, not at init: {out['first_request']}"
    before, init = set(out["before"]), set(out["init"])
    assert _loaded(init, "tenantml.serving.service")
    for name in MOVED_OFF_INIT:
        assert not _loaded(before, name), f"{name} was imported by the test's own set-up"
        assert not _loaded(init, name), f"{name} imported by the handler's init (preload included)"
