"""`tenantml invoke` as a user runs it: a subprocess in a project folder, next to a running local platform
whose state file (.tenantml/local.json) gives the functions their environment."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def test_invoke_health_live(project, cli):
    done = cli("invoke", "inference", "events/inference-health-live.json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)  # stdout holds the result and nothing else
    assert result["statusCode"] == 200 and json.loads(result["body"]) == {"live": True}


def _captured_event(platform, client, token: str, path: str, body: dict) -> dict:
    """The proxy event the emulator hands the inference function for a real request."""
    fn = platform.emulator.functions["inference"]
    seen: list[dict] = []
    original = fn.invoke

    def spy(event):
        seen.append(event)
        return original(event)

    fn.invoke = spy
    try:
        reply = client.post(path, token=token, body=body)
    finally:
        del fn.invoke
    assert reply.status == 200, reply.body
    return seen[-1]


def test_invoke_reaches_the_local_platform(project, platform, client, acme, tmp_path, cli):
    """A real infer event for tenant acme, replayed through `tenantml invoke`: the handler finds the
    registered model through the state file's environment (moto endpoint, table and bucket names)."""
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hello"]}]}
    event = _captured_event(platform, client, acme, "/v2/models/minilm-embed/infer", body)
    assert event["requestContext"]["authorizer"]["tenant_id"] == "acme"
    path = tmp_path / "embed.json"
    path.write_text(json.dumps(event))
    done = cli("invoke", "inference", str(path))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["statusCode"] == 200, result
    emb = {o["name"]: o for o in json.loads(result["body"])["outputs"]}["embedding"]
    assert emb["shape"] == [1, 384]


def test_invoke_reports_a_failing_handler(project, tmp_path):
    broken = tmp_path / "functions" / "broken" / "handler.py"
    broken.parent.mkdir(parents=True)
    broken.write_text("def handler(event, context):\n    raise RuntimeError('nope')\n")
    (tmp_path / "event.json").write_text("{}")
    script = Path(sys.executable).with_name("tenantml")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "tenantml.cli"]
    done = subprocess.run([*cmd, "invoke", "broken", "event.json"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 1 and done.stdout == ""
    assert "broken raised RuntimeError" in done.stderr


def test_models_list_and_token_work_from_any_folder_of_the_project_with_no_variables(project, client,
                                                                                     cli_at):
    """No TENANTML_* or AWS_* variables (tenantml() strips them): the CLI finds the running platform
    through the project's .tenantml/, from a subfolder too."""
    sub = project / "some" / "subfolder"
    sub.mkdir(parents=True, exist_ok=True)
    listed = cli_at(sub, "models", "list", "--tenant", "acme")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split()[0] for line in listed.stdout.splitlines()[1:]]
    assert {"minilm-embed", "work-item-classifier", "project-risk"} <= set(rows)
    minted = cli_at(sub, "token", "--tenant", "acme")
    assert minted.returncode == 0, minted.stderr
    assert client.get("/v2/models", token=minted.stdout.strip()).status == 200   # the platform trusts it


def test_drift_run_and_report_against_the_running_platform(project, platform, client, cli):
    """A model registered with a baseline through the admin API, shifted capture frames in its window,
    then `tenantml drift run` (the worker, here) and `tenantml drift report`, with no variables set."""
    import base64
    from datetime import UTC, datetime, timedelta

    import boto3
    import numpy as np
    import serving_models as sm

    from tenantml.monitoring import build_baseline
    from tenantml.monitoring.capture import encode_frame, frame_key

    rng = np.random.default_rng(0)
    v = sm.tabular_version(owner="acme", name="e2e-drift-risk")
    baseline = build_baseline({"velocity": rng.normal(20, 5, 5000)}).model_dump_json().encode()
    artifacts = {**v.artifacts, "baseline.json": baseline}
    manifest = json.loads(v.manifest.model_dump_json())
    manifest["files"]["baseline.json"] = {"sha256": __import__("hashlib").sha256(baseline).hexdigest(),
                                          "size": len(baseline)}
    body = {"manifest": manifest, "aliases": ["production"],
            "files": {n: base64.b64encode(d).decode() for n, d in artifacts.items()}}
    token = platform.token("acme", ["models:write"])
    created = client.post("/admin/models/e2e-drift-risk/versions", token=token, body=body)
    assert created.status == 201, created.body
    frame = encode_frame("acme", "e2e-drift-risk", "1", numeric={"velocity": rng.normal(30, 5, 3000)})
    boto3.client("s3", endpoint_url=platform.aws.endpoint_url, region_name=platform.aws.region).put_object(
        Bucket=platform.names.buckets["artifacts"], Body=frame,
        Key=frame_key("acme", "e2e-drift-risk", "1", datetime.now(UTC) - timedelta(minutes=5)))

    ran = cli("drift", "run", "--tenant", "acme", "--model", "e2e-drift-risk")
    assert ran.returncode == 0, ran.stderr
    assert "version 1: drift (1 DriftDetected published)" in ran.stdout
    html = Path(ran.stdout.split("report: ")[1].splitlines()[0].strip())
    assert html.is_file() and "<svg" in html.read_text() and "velocity" in html.read_text()
    listed = cli("drift", "report", "--tenant", "acme", "--model", "e2e-drift-risk")
    assert listed.returncode == 0 and "drift" in listed.stdout and "1 of 1 features drifted" in listed.stdout
    latest = client.get("/admin/models/e2e-drift-risk/drift", token=token).json()["reports"][0]
    assert latest["verdict"] == "drift"
