"""The Open Inference Protocol clients people already use, with their default settings, against the local
API: Triton's `tritonclient.http` (binary tensor data on by default, request and response compression
on demand) and KServe's `InferenceRESTClient` (protocol v2; JSON data, or binary from numpy). Every
example model, batches, metadata and readiness calls; answers compared with the plain JSON path. These
clients are test dependencies only. Also: the local API answers a keep-alive request in about the
handler's own time (no Nagle/delayed-ACK stall)."""

from __future__ import annotations

import asyncio
import http.client
import statistics
import time

import numpy as np
import pytest
import tritonclient.http as triton
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

from tenantml.local.apigw import HttpRequest

TEXTS = ["App crashes when saving the settings page", "Please add a dark mode",
         "How do I export invoices to CSV?", "The nightly build is slow again", "naïve café ünïcode ✓"]
RISK_ROWS = np.array([[120, 30, 8, 5, 22.5, 14, 35, 0.4], [10, 0, 0, 6, 30, 90, 2, 0.05]], np.float32)
TEXT_MODELS = ["minilm-embed", "minilm-embed-fp32", "work-item-classifier"]


@pytest.fixture(scope="module")
def token(platform) -> str:
    return platform.token("acme", ["models:read"])


@pytest.fixture
def auth(token) -> dict[str, str]:
    """A fresh dict per test: tritonclient adds its own headers (Content-Encoding, the binary header
    length) to the dict it is given."""
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def tc(platform) -> triton.InferenceServerClient:
    client = triton.InferenceServerClient(url=f"127.0.0.1:{platform.api.port}", connection_timeout=30,
                                          network_timeout=60)
    yield client
    client.close()


def json_outputs(client, token, model: str, inputs: list[dict]) -> dict[str, np.ndarray]:
    """The same request through the plain JSON path."""
    reply = client.post(f"/v2/models/{model}/infer", token=token, body={"inputs": inputs})
    assert reply.status == 200, reply.body
    out = {}
    for o in reply.json()["outputs"]:
        data = np.array(o["data"], dtype=object if o["datatype"] == "BYTES" else np.float32)
        out[o["name"]] = data.reshape(o["shape"])
    return out


def triton_text_input(texts: list[str], binary: bool = True) -> triton.InferInput:
    inp = triton.InferInput("text", [len(texts)], "BYTES")
    inp.set_data_from_numpy(np.array(texts, dtype=object), binary_data=binary)
    return inp


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for name, value in want.items():
        if value.dtype == object:
            assert [v.decode() if isinstance(v, bytes) else v for v in got[name].reshape(-1)] == \
                list(value.reshape(-1)), name
        else:
            np.testing.assert_array_equal(got[name], value, err_msg=name)   # bit for bit: float32 both ways


# --- tritonclient ------------------------------------------------------------------------------------------

def test_triton_metadata_and_readiness(tc, auth):
    assert tc.is_server_live() and tc.is_server_ready()
    meta = tc.get_server_metadata(headers=auth)
    assert "binary_tensor_data" in meta["extensions"]
    assert tc.is_model_ready("minilm-embed", headers=auth)
    assert tc.is_model_ready("project-risk", model_version="1", headers=auth)
    model = tc.get_model_metadata("project-risk", headers=auth)
    assert model["inputs"][0]["name"] == "features" and model["inputs"][0]["shape"] == [-1, 8]
    with pytest.raises(triton.InferenceServerException) as info:
        tc.get_model_metadata("no-such-model", headers=auth)
    assert "not found" in info.value.message()


@pytest.mark.parametrize("model", TEXT_MODELS)
@pytest.mark.parametrize("compression", [None, "gzip", "deflate"])
def test_triton_defaults_on_text_models_match_the_json_path(tc, client, token, auth, model, compression):
    result = tc.infer(model, [triton_text_input(TEXTS)], headers=auth,
                      request_compression_algorithm=compression,
                      response_compression_algorithm="gzip" if compression else None)
    names = [o["name"] for o in result.get_response()["outputs"]]
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])
    want = json_outputs(client, token, model, [{"name": "text", "datatype": "BYTES", "shape": [5],
                                                "data": TEXTS}])
    assert_same({n: result.as_numpy(n) for n in names}, want)


def test_triton_on_the_tabular_model_with_a_version_and_json_outputs(tc, client, token, auth):
    feats = triton.InferInput("features", list(RISK_ROWS.shape), "FP32")
    feats.set_data_from_numpy(RISK_ROWS)                      # binary input (the default)
    outputs = [triton.InferRequestedOutput("risk", binary_data=False),
               triton.InferRequestedOutput("risk_probs")]     # binary output (the default)
    result = tc.infer("project-risk", [feats], model_version="1", outputs=outputs, headers=auth)
    response = result.get_response()
    assert response["model_version"] == "1"
    assert "data" in response["outputs"][0] and "binary_data_size" in response["outputs"][1]["parameters"]
    want = json_outputs(client, token, "project-risk", [{"name": "features", "datatype": "FP32",
                                                         "shape": [2, 8], "data": RISK_ROWS.tolist()}])
    assert_same({"risk": result.as_numpy("risk"), "risk_probs": result.as_numpy("risk_probs")}, want)


def test_triton_json_inputs_and_errors(tc, auth):
    result = tc.infer("minilm-embed", [triton_text_input(TEXTS[:1], binary=False)], headers=dict(auth))
    assert result.as_numpy("embedding").shape == (1, 384)
    bad = triton.InferInput("features", [1, 3], "FP32")
    bad.set_data_from_numpy(np.ones((1, 3), np.float32))
    with pytest.raises(triton.InferenceServerException) as info:
        tc.infer("project-risk", [bad], headers=dict(auth))
    assert "input 'features' has shape [1,3], expected [-1,8]" in info.value.message()


# --- KServe ------------------------------------------------------------------------------------------------

def kserve(coro_fn):
    async def run():
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
        try:
            return await coro_fn(client)
        finally:
            await client.close()
    return asyncio.run(run())


def test_kserve_readiness(platform, auth):
    base = platform.base_url

    async def calls(client):
        return (await client.is_server_live(base), await client.is_server_ready(base),
                await client.is_model_ready(base, "work-item-classifier", headers=auth))
    assert kserve(calls) == (True, True, True)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("model", TEXT_MODELS)
def test_kserve_defaults_on_text_models_match_the_json_path(platform, client, token, auth, model, binary):
    inp = InferInput(name="text", shape=[len(TEXTS)], datatype="BYTES", data=None if binary else TEXTS)
    if binary:
        inp.set_data_from_numpy(np.array(TEXTS, dtype=object))   # binary_data=True: KServe's default
    request = InferRequest(model_name=model, infer_inputs=[inp])

    async def call(c):
        return await c.infer(platform.base_url, request, model_name=request.model_name, headers=auth)
    response = kserve(call)
    got = {o.name: o.as_numpy() for o in response.outputs}
    want = json_outputs(client, token, model, [{"name": "text", "datatype": "BYTES", "shape": [5],
                                                "data": TEXTS}])
    assert response.model_name == model
    assert_same(got, want)


def test_kserve_tabular_model(platform, client, token, auth):
    inp = InferInput(name="features", shape=list(RISK_ROWS.shape), datatype="FP32", data=RISK_ROWS.tolist())
    request = InferRequest(model_name="project-risk", infer_inputs=[inp])

    async def call(c):
        return await c.infer(platform.base_url, request, model_name=request.model_name, headers=auth)
    response = kserve(call)
    want = json_outputs(client, token, "project-risk", [{"name": "features", "datatype": "FP32",
                                                         "shape": [2, 8], "data": RISK_ROWS.tolist()}])
    assert_same({o.name: o.as_numpy() for o in response.outputs}, want)


def test_a_model_name_in_the_body_that_contradicts_the_path_is_a_400(client, token):
    reply = client.post("/v2/models/minilm-embed/infer", token=token, body={
        "model_name": "project-risk", "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                                  "data": ["x"]}]})
    assert reply.status == 400
    assert reply.json() == {"error": "model_name in the body ('project-risk') does not match the model in "
                                     "the path ('minilm-embed')"}


# --- the local dev loop ------------------------------------------------------------------------------------

def test_keep_alive_requests_take_about_the_handlers_time(platform, token):
    """Over one keep-alive connection a request must cost about what the emulator spends on it in-process;
    before the fix each waited ~40 ms for a delayed ACK (two writes per response with Nagle on)."""
    body = b'{"inputs":[{"name":"features","datatype":"FP32","shape":[1,8],"data":[1,2,3,4,5,6,7,8]}]}'
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def in_process() -> float:
        req = HttpRequest("POST", "/v2/models/project-risk/infer", tuple(headers.items()), body)
        t0 = time.perf_counter()
        assert platform.emulator.handle(req).status == 200
        return time.perf_counter() - t0

    conn = http.client.HTTPConnection("127.0.0.1", platform.api.port, timeout=30)

    def over_http() -> float:
        t0 = time.perf_counter()
        conn.request("POST", "/v2/models/project-risk/infer", body=body, headers=headers)
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read()
        return time.perf_counter() - t0

    try:
        for f in (in_process, over_http):
            for _ in range(5):
                f()
        ratios = []
        for _ in range(3):   # interleaved rounds: a noisy moment hits both sides alike
            handler = statistics.median(in_process() for _ in range(15))
            http_time = statistics.median(over_http() for _ in range(15))
            ratios.append(http_time / handler)
    finally:
        conn.close()
    assert statistics.median(ratios) < 3.0, ratios
