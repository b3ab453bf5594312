"""`tenantml models register PATH --reference FILE.csv` on moto: the version is registered with the
baseline.json computed from the reference (listed in its manifest, stored in S3 with that hash), and the
drift worker checks captured traffic against it."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta

import boto3
import numpy as np
import onnxruntime as ort
import pytest
from moto_env import AWS, NAMES, lambda_account, local_functions
from serving_models import FEATURES, RISK_LABELS, tabular_version

from tenantml import cli, resources
from tenantml.example_models.heads import write_manifest
from tenantml.local.context import handler_path
from tenantml.local.events import EventRuntime
from tenantml.manifest import sha256_bytes
from tenantml.monitoring.capture import encode_frame, frame_key
from tenantml.registry.dynamo import DynamoRegistry

DEFINITIONS = tuple(resources.function(n) for n in ("drift_scheduler", "drift_worker"))
SCHEDULED = datetime(2026, 11, 30, 18, 0, tzinfo=UTC)          # checks [17:00, 18:00)


@pytest.fixture
def runtime(monkeypatch):
    with lambda_account(monkeypatch, "drift_worker"):
        functions = local_functions(DEFINITIONS, lambda d: handler_path(d.name),
                                    TENANTML_DRIFT_WINDOW_MINUTES="60")
        rt = EventRuntime(functions, AWS, NAMES, definitions=DEFINITIONS)
        yield rt.provision()
        rt.stop()


def rows(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    x = np.round(np.random.default_rng(seed).normal(size=(n, len(FEATURES))), 3).astype(np.float32)
    truth = np.digitize(x[:, 1] + 0.5 * x[:, 2] - 0.5 * x[:, 5], [-0.5, 0.5])
    return x, [RISK_LABELS[k] for k in truth]


def test_register_with_a_reference_gives_the_drift_worker_its_baseline(runtime, tmp_path, capsys):
    v = tabular_version()
    folder = tmp_path / "project-risk"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(v.artifacts["model.onnx"])
    write_manifest(folder, v.manifest)
    x, truth = rows(1500, seed=1)
    with (tmp_path / "reference.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*FEATURES, "risk"])
        w.writerows([*r, y] for r, y in zip(x.tolist(), truth, strict=True))
    assert cli.main(["models", "register", str(folder), "--tenant", "acme", "--reference",
                     str(tmp_path / "reference.csv"), "--label", "risk"]) == 0
    assert "registered acme/project-risk version 1" in capsys.readouterr().out

    mv = DynamoRegistry(NAMES.tables["registry"], AWS).resolve("acme", "project-risk")
    entry = mv.manifest.files["baseline.json"]
    s3 = boto3.client("s3", region_name="us-east-1")
    stored = s3.get_object(Bucket=NAMES.buckets["artifacts"],
                           Key="models/acme/project-risk/1/baseline.json")["Body"].read()
    assert (sha256_bytes(stored), len(stored)) == (entry.sha256, entry.size)
    manifest = json.loads(s3.get_object(Bucket=NAMES.buckets["artifacts"],
                                        Key="models/acme/project-risk/1/manifest.json")["Body"].read())
    assert manifest["files"]["baseline.json"]["sha256"] == entry.sha256

    # Traffic from the same population, captured as the inference function captures it: no drift, and the
    # report covers the model's features and prediction (so it read the registered baseline).
    traffic, _ = rows(1000, seed=2)
    sess = ort.InferenceSession(v.artifacts["model.onnx"], providers=["CPUExecutionProvider"])
    predicted = [RISK_LABELS[int(k)] for k in sess.run(["label"], {sess.get_inputs()[0].name: traffic})[0]]
    frame = encode_frame("acme", "project-risk", "1",
                         numeric={f: traffic[:, i] for i, f in enumerate(FEATURES)},
                         categorical={"prediction": predicted},
                         request_ids=[f"r{i}" for i in range(len(traffic))])
    s3.put_object(Bucket=NAMES.buckets["artifacts"], Body=frame,
                  Key=frame_key("acme", "project-risk", "1", SCHEDULED - timedelta(minutes=30)))
    runtime.fire("drift", SCHEDULED)
    runtime.run_until_idle()
    report = json.loads(s3.get_object(
        Bucket=NAMES.buckets["artifacts"],
        Key="reports/tenant=acme/model=project-risk/version=1/2026-11-30T18-00Z.json")["Body"].read())
    assert report["verdict"] == "no_drift" and report["rows"] == 1000
    assert sorted(f["name"] for f in report["features"]) == sorted(FEATURES)
    assert report["prediction"]["verdict"] == "no_drift" and report["schema_mismatch"] == {}
