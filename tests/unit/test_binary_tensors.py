"""The binary tensor data extension, both ways, checked against tritonclient's own encoder and decoder
(`_get_inference_request`, `InferResult.from_response_body`: what its HTTP client sends and reads), and
request bodies as API Gateway delivers them (base64, gzip, deflate), with the size limit applied after
decompression."""

from __future__ import annotations

import base64
import gzip
import json
import zlib

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.http._utils import _get_inference_request

from tenantml.api.body import read_body
from tenantml.errors import BadRequest, PayloadTooLarge
from tenantml.manifest import TensorSpec
from tenantml.serving import oip

MAX = 1_000_000
TEXT = TensorSpec(name="text", datatype="BYTES", shape=[-1])
FEATURES = TensorSpec(name="features", datatype="FP32", shape=[-1, 3])
FLAGS = TensorSpec(name="flags", datatype="BOOL", shape=[-1])
IDS = TensorSpec(name="ids", datatype="INT64", shape=[-1, 2])


def triton_body(inputs, outputs=None) -> tuple[bytes, int | None]:
    body, json_size = _get_inference_request(inputs=inputs, request_id="r1", outputs=outputs, sequence_id=0,
                                             sequence_start=False, sequence_end=False, priority=0,
                                             timeout=None, custom_parameters=None)
    return (body if isinstance(body, bytes) else body.encode()), json_size


def triton_input(name, datatype, array, binary=True):
    t = triton.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array, binary_data=binary)
    return t


def decode(body: bytes, length: int | None, specs) -> dict[str, oip.Tensor]:
    parsed = oip.parse_request(body, max_bytes=MAX, json_length=length)
    return oip.decode_inputs(parsed.request, specs, max_batch=64, binary=parsed.binary)


def test_binary_inputs_of_every_kind_decode_like_their_json_form():
    texts = np.array(["héllo wörld", "", "a\x00b"], dtype=object)
    feats = np.array([[1.5, -2.0, 3.25], [0.0, 1e-7, 6.5e4]], np.float32)
    body, length = triton_body([triton_input("text", "BYTES", texts),
                                triton_input("features", "FP32", feats[:1].repeat(3, 0)),
                                triton_input("flags", "BOOL", np.array([True, False, True])),
                                triton_input("ids", "INT64", np.array([[1, -2], [2**40, 0], [7, 8]]))])
    assert length is not None and length < len(body)
    got = decode(body, length, [TEXT, FEATURES, FLAGS, IDS])
    assert got["text"].data == list(texts)
    np.testing.assert_array_equal(got["features"].data, feats[:1].repeat(3, 0))
    assert got["flags"].data.tolist() == [True, False, True]
    assert got["ids"].data.tolist() == [[1, -2], [2**40, 0], [7, 8]]
    assert got["ids"].data.dtype == np.int64


def test_json_and_binary_inputs_mix_in_one_request():
    body, length = triton_body([triton_input("text", "BYTES", np.array(["one", "two"], dtype=object), False),
                                triton_input("features", "FP32", np.ones((2, 3), np.float32))])
    got = decode(body, length, [TEXT, FEATURES])
    assert got["text"].data == ["one", "two"] and got["features"].data.shape == (2, 3)


def _tamper(inputs, patch) -> tuple[bytes, int]:
    body, length = triton_body(inputs)
    head = json.loads(body[:length])
    patch(head)
    new_head = json.dumps(head).encode()
    return new_head + body[length:], len(new_head)


@pytest.mark.parametrize(("patch", "message"), [
    (lambda h: h["inputs"][0]["parameters"].update(binary_data_size=13), "runs past the end of the body"),
    (lambda h: h["inputs"][0]["parameters"].update(binary_data_size=4), "no input claims"),
    (lambda h: h["inputs"][0]["parameters"].update(binary_data_size="12"), "non-negative integer"),
    (lambda h: h["inputs"][0].update(data=[1, 2, 3]), "both data and binary_data_size"),
    (lambda h: h["inputs"][0].update(shape=[2, 3]), "has 12 bytes of binary data, expected 24"),
])
def test_inconsistent_binary_requests_are_precise_400s(patch, message):
    body, length = _tamper([triton_input("features", "FP32", np.ones((1, 3), np.float32))], patch)
    with pytest.raises(BadRequest, match=message):
        decode(body, length, [FEATURES])


def test_bytes_elements_are_checked():
    head = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "parameters": {}}]}
    for raw, message in [(b"\x03\x00\x00\x00abc", "ends before element 1"),
                         (b"\x09\x00\x00\x00abc", "runs past its data"),
                         (b"\x01\x00\x00\x00a\x01\x00\x00\x00bX", "more than its 2 elements"),
                         (b"\x01\x00\x00\x00\xff\x01\x00\x00\x00b", "element 0 is not valid UTF-8")]:
        head["inputs"][0]["parameters"]["binary_data_size"] = len(raw)
        js = json.dumps(head).encode()
        with pytest.raises(BadRequest, match=message):
            decode(js + raw, len(js), [TEXT])


def test_binary_nan_and_bool_values_are_refused():
    nan = np.array([[1.0, np.nan, 2.0]], np.float32)
    body, length = triton_body([triton_input("features", "FP32", nan)])
    with pytest.raises(BadRequest, match="NaN"):
        decode(body, length, [FEATURES])
    head = {"inputs": [{"name": "flags", "datatype": "BOOL", "shape": [1],
                        "parameters": {"binary_data_size": 1}}]}
    js = json.dumps(head).encode()
    with pytest.raises(BadRequest, match="only 0 and 1"):
        decode(js + b"\x02", len(js), [FLAGS])


@pytest.mark.parametrize("length", [0, 10_000])
def test_a_header_length_outside_the_body_is_a_400(length):
    with pytest.raises(BadRequest, match="does not fit"):
        oip.parse_request(b'{"inputs": []}', max_bytes=MAX, json_length=length)


def test_binary_outputs_are_what_tritonclient_reads():
    outputs = [oip.encode_output("label", "BYTES", ["bug", "fëature"]),
               oip.encode_output("probs", "FP32", np.array([[0.25, 0.75], [1.0, 0.0]], np.float32)),
               oip.encode_output("flag", "BOOL", np.array([True, False]))]
    body, length = oip.infer_response_parts("m", "3", "r1", outputs, None,
                                            frozenset({"label", "probs", "flag"}))
    result = triton.InferResult.from_response_body(body, header_length=length)
    assert [b.decode() for b in result.as_numpy("label")] == ["bug", "fëature"]
    np.testing.assert_array_equal(result.as_numpy("probs"), np.array([[0.25, 0.75], [1.0, 0.0]], np.float32))
    assert result.as_numpy("flag").tolist() == [True, False]
    assert result.get_response()["model_version"] == "3"


def test_binary_output_choice_honours_request_and_per_output_parameters():
    def req(**kw) -> oip.InferRequest:
        return oip.InferRequest.model_validate({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1],
                                                            "data": [1]}], **kw})
    names = ["a", "b"]
    assert req().binary_outputs(names) == frozenset()
    assert req(parameters={"binary_data_output": True}).binary_outputs(names) == {"a", "b"}
    mixed = req(parameters={"binary_data_output": True},
                outputs=[{"name": "a", "parameters": {"binary_data": False}}, {"name": "b"}])
    assert mixed.binary_outputs(names) == {"b"}
    assert req(outputs=[{"name": "b", "parameters": {"binary_data": True}}]).binary_outputs(names) == {"b"}
    with pytest.raises(BadRequest, match="true or false"):
        req(parameters={"binary_data_output": "yes"}).binary_outputs(names)


def test_json_only_responses_stay_text():
    out = [oip.encode_output("probs", "FP32", np.array([[0.5, 0.5]], np.float32))]
    body, length = oip.infer_response_parts("m", "1", None, out)
    assert length is None and json.loads(body)["outputs"][0]["data"] == [0.5, 0.5]


# --- bodies as API Gateway delivers them ------------------------------------------------------------------

PLAIN = b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]}'


def event(body: bytes, **headers) -> dict:
    return {"body": base64.b64encode(body).decode(), "isBase64Encoded": True, "headers": headers}


@pytest.mark.parametrize(("encoding", "packed"), [
    ("gzip", gzip.compress(PLAIN)), ("deflate", zlib.compress(PLAIN)),
    ("deflate", zlib.compress(PLAIN)[2:-4]),     # raw deflate, as some clients send it
    ("gzip", PLAIN),                              # already decompressed on the way
    ("identity", PLAIN),
])
def test_compressed_bodies_are_decompressed(encoding, packed):
    assert read_body(event(packed, **{"Content-Encoding": encoding}), max_bytes=MAX).data == PLAIN


def test_the_limit_applies_after_decompression():
    bomb = gzip.compress(b"{" + b" " * 5_000_000 + b"}")
    assert len(bomb) < 10_000
    with pytest.raises(PayloadTooLarge, match="decompressed request body exceeds 1000000 bytes"):
        read_body(event(bomb, **{"content-encoding": "gzip"}), max_bytes=MAX)
    with pytest.raises(PayloadTooLarge, match="request body exceeds 100 bytes"):
        read_body(event(PLAIN * 2), max_bytes=100)


@pytest.mark.parametrize(("evt", "message"), [
    ({"body": "not base64!", "isBase64Encoded": True}, "flagged base64 but is not valid base64"),
    (event(gzip.compress(PLAIN)[:-10], **{"Content-Encoding": "gzip"}), "truncated gzip"),
    (event(b"\x1f\x8bgarbage", **{"Content-Encoding": "gzip"}), "not valid gzip"),
    (event(PLAIN, **{"Content-Encoding": "br"}), "unsupported Content-Encoding 'br'"),
    (event(PLAIN, **{"Inference-Header-Content-Length": "١٢"}), "must be a number of bytes"),
])
def test_malformed_bodies_are_precise_400s(evt, message):
    with pytest.raises(BadRequest, match=message):
        read_body(evt, max_bytes=MAX)


def test_the_binary_header_length_is_passed_on():
    got = read_body(event(PLAIN, **{"inference-header-content-length": "12"}), max_bytes=MAX)
    assert got.json_length == 12
