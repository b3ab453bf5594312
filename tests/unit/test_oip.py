"""OIP v2 request parsing and tensor validation: every malformed request is a 400 or 413 with a message
that names the problem; valid requests become typed tensors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tenantml.errors import BadRequest, PayloadTooLarge
from tenantml.manifest import TensorSpec
from tenantml.serving import oip

TEXT = [TensorSpec(name="text", datatype="BYTES", shape=[-1])]
FEATURES = [TensorSpec(name="features", datatype="FP32", shape=[-1, 3])]
IDS = [TensorSpec(name="ids", datatype="INT32", shape=[-1])]
MAX = 1_000_000


def body(*inputs: dict, **extra: object) -> str:
    return json.dumps({"inputs": list(inputs), **extra})


def inp(name: str = "features", datatype: str = "FP32", shape: list | None = None,
        data: object = None) -> dict:
    return {"name": name, "datatype": datatype, "shape": [1, 3] if shape is None else shape,
            "data": [[1.0, 2.0, 3.0]] if data is None else data}


def decode(raw: str, specs=FEATURES, max_batch: int = 64) -> dict[str, oip.Tensor]:
    return oip.decode_inputs(oip.parse_infer_request(raw, max_bytes=MAX), specs, max_batch=max_batch)


def bad(raw: str, specs=FEATURES, max_batch: int = 64) -> str:
    with pytest.raises(BadRequest) as exc:
        decode(raw, specs, max_batch)
    assert exc.value.status == 400
    return exc.value.public_message


# --- valid requests -----------------------------------------------------------------------------


def test_nested_and_flat_numeric_data_give_the_same_tensor():
    nested = decode(body(inp(shape=[2, 3], data=[[1, 2, 3], [4.5, 5, 6]])))["features"]
    flat = decode(body(inp(shape=[2, 3], data=[1, 2, 3, 4.5, 5, 6])))["features"]
    assert nested.data.dtype == np.float32 and nested.data.shape == (2, 3)
    np.testing.assert_array_equal(nested.data, flat.data)
    assert nested.rows == 2
    assert oip.input_digest({"features": nested}) == oip.input_digest({"features": flat})


def test_bytes_input_is_a_list_of_strings():
    t = decode(body(inp("text", "BYTES", [2], ["héllo", "world"])), TEXT)["text"]
    assert t.data == ["héllo", "world"] and t.shape == (2,) and t.datatype == "BYTES"


def test_request_id_and_output_selection_are_parsed():
    req = oip.parse_infer_request(body(inp(), id="r-1", outputs=[{"name": "risk"}, {"name": "risk"}]),
                                  max_bytes=MAX)
    specs = [TensorSpec(name="risk", datatype="BYTES", shape=[-1]),
             TensorSpec(name="risk_probs", datatype="FP32", shape=[-1, 3])]
    assert req.id == "r-1"
    assert oip.requested_outputs(req, specs) == ("risk",)
    assert oip.requested_outputs(oip.parse_infer_request(body(inp()), max_bytes=MAX), specs) is None


def test_digest_separates_values_names_and_shapes():
    a = decode(body(inp("text", "BYTES", [2], ["ab", "c"])), TEXT)
    b = decode(body(inp("text", "BYTES", [2], ["a", "bc"])), TEXT)
    c = decode(body(inp("text", "BYTES", [2], ["ab", "c"])), TEXT)
    assert oip.input_digest(a) != oip.input_digest(b)
    assert oip.input_digest(a) == oip.input_digest(c)
    wide = decode(body(inp(shape=[2, 3], data=[1, 2, 3, 4, 5, 6])))
    spec6 = [TensorSpec(name="features", datatype="FP32", shape=[-1, 6])]
    long = decode(body(inp(shape=[1, 6], data=[1, 2, 3, 4, 5, 6])), spec6)
    assert oip.input_digest(wide) != oip.input_digest(long)


def test_infer_response_shape_id_and_selection():
    outputs = [oip.encode_output("risk", "BYTES", ["low", "h\u00efgh \"q\""]),
               oip.encode_output("risk_probs", "FP32", np.array([[0.5, 0.25, 0.25], [0, 0, 1]], np.float32))]
    full = json.loads(oip.infer_response("project-risk", "3", 'r-"9', outputs))
    assert full == {"model_name": "project-risk", "model_version": "3", "id": 'r-"9', "outputs": [
        {"name": "risk", "datatype": "BYTES", "shape": [2], "data": ["low", "h\u00efgh \"q\""]},
        {"name": "risk_probs", "datatype": "FP32", "shape": [2, 3], "data": [0.5, 0.25, 0.25, 0, 0, 1]}]}
    picked = json.loads(oip.infer_response("project-risk", "3", None, outputs, ("risk_probs",)))
    assert "id" not in picked and [o["name"] for o in picked["outputs"]] == ["risk_probs"]


@pytest.mark.parametrize("dtype,exp", [(np.float16, 4), (np.float32, 30), (np.float64, 300)])
def test_float_outputs_round_trip_exactly(dtype, exp):
    rng = np.random.default_rng(0)
    values = (rng.normal(size=200) * 10.0 ** rng.integers(-exp, exp, size=200)).astype(dtype).reshape(4, 50)
    values[0, :3] = [0, -0.0, 1]
    got = json.loads(oip.encode_output("x", "FP32", values).json)
    assert got["shape"] == [4, 50]
    np.testing.assert_array_equal(np.array(got["data"], dtype=dtype), values.reshape(-1))


def test_integer_and_bool_outputs():
    assert json.loads(oip.encode_output("i", "INT64", np.array([[1, -2]], np.int64)).json)["data"] == [1, -2]
    assert json.loads(oip.encode_output("b", "BOOL", np.array([True, False])).json)["data"] == [True, False]


def test_non_finite_outputs_are_refused():
    with pytest.raises(ValueError):
        oip.encode_output("x", "FP32", np.array([1.0, np.nan], np.float32))


# --- 400: body ----------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["{", "{'inputs': []}", "[1, 2", "\x00"])
def test_malformed_json_says_so(raw):
    assert bad(raw) == "request body is not valid JSON"


def test_an_input_without_data_or_binary_data_says_so():
    assert bad(json.dumps({"inputs": [{**F, "shape": [1, 3]}]})).startswith("input 'features' has no data")


def test_a_body_that_is_not_utf8_says_so():
    assert "not valid UTF-8 JSON" in bad(b'{"inputs": "\xff"}')


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("where", ["data", "parameters"])
def test_nan_and_infinity_anywhere_are_rejected(literal, where):
    doc = body(inp(data=[1, "LITERAL", 3])) if where == "data" else body(inp(), parameters={"t": "LITERAL"})
    assert "NaN" in bad(doc.replace('"LITERAL"', literal))


def test_overflowing_number_is_rejected():
    raw = body(inp(data=[1, "BIG", 3]))
    assert "NaN, Infinity or out-of-range" in bad(raw.replace('"BIG"', "1e999"))
    assert "out-of-range" in bad(raw.replace('"BIG"', "1e39"))   # finite as a double, infinite as FP32


@pytest.mark.parametrize("raw", ["", None])
def test_empty_body(raw):
    assert bad(raw) == "request body is required"


@pytest.mark.parametrize("raw", ["[]", '"text"', "3", "null"])
def test_body_must_be_an_object(raw):
    assert bad(raw) == "request body must be a JSON object"


F = {"name": "features", "datatype": "FP32"}


@pytest.mark.parametrize("doc,where", [
    ({}, "inputs"),
    ({"inputs": []}, "inputs"),
    ({"inputs": [{**F, "data": [1]}]}, "inputs[0].shape"),
    ({"inputs": [{**F, "datatype": "FP33", "shape": [1], "data": [1]}]}, "inputs[0].datatype"),
    ({"inputs": [{**F, "shape": [-1, 3], "data": [1]}]}, "inputs[0].shape[0]"),
    ({"inputs": [{**F, "shape": ["1", 3], "data": [1]}]}, "inputs[0].shape[0]"),
    ({"inputs": [{**F, "shape": [True, 3], "data": [1]}]}, "inputs[0].shape[0]"),
    ({"inputs": [{**F, "name": 7, "shape": [1, 3], "data": [1, 2, 3]}]}, "inputs[0].name"),
    ({"inputs": [{**F, "shape": [1], "data": [1], "extra": 1}]}, "inputs[0].extra"),
    ({"id": 5, "inputs": [{**F, "shape": [1], "data": [1]}]}, "id"),
])
def test_envelope_errors_name_the_field(doc, where):
    msg = bad(json.dumps(doc))
    assert msg.startswith(f"invalid request: {where}:"), msg


# --- 400: tensors -------------------------------------------------------------------------------


def test_wrong_datatype():
    assert bad(body(inp(datatype="FP64"))) == "input 'features' has datatype FP64, expected FP32"


def test_shape_product_must_match_data_length():
    assert bad(body(inp(shape=[2, 3], data=[1, 2, 3, 4, 5]))) == \
        "input 'features' has 5 elements but shape [2,3] needs 6"
    assert "has 3 elements but shape [2]" in bad(body(inp("text", "BYTES", [2], ["a", "b", "c"])), TEXT)


@pytest.mark.parametrize("shape", [[3], [1, 4], [1, 3, 1]])
def test_shape_must_fit_the_spec(shape):
    assert bad(body(inp(shape=shape, data=[1, 2, 3]))).endswith("expected [-1,3]")


def test_missing_required_input():
    specs = [*FEATURES, TensorSpec(name="mask", datatype="INT64", shape=[-1, 3])]
    assert bad(body(inp()), specs) == "missing input 'mask'"


def test_unknown_input_name():
    assert bad(body(inp(), inp("extra"))).startswith("unknown input 'extra'")


def test_duplicate_input():
    assert bad(body(inp(), inp())) == "input 'features' is given more than once"


@pytest.mark.parametrize("data", [["a", 1], ["a", None], [["a"], [2]], ["a", True], [{"s": "a"}, "b"]])
def test_non_string_in_bytes(data):
    assert "must hold only strings" in bad(body(inp("text", "BYTES", [2], data)), TEXT)


@pytest.mark.parametrize("data", ["ab", {"a": 1}, 5])
def test_bytes_data_must_be_a_list(data):
    assert "must be a list of strings" in bad(body(inp("text", "BYTES", [1], data)), TEXT)


@pytest.mark.parametrize("data", [[["1", "2", "3"]], [[1, None, 3]], [[True, False, True]], [[1, "a", 3]]])
def test_numeric_data_must_hold_numbers(data):
    assert bad(body(inp(data=data))) == "input 'features' (FP32) data must hold only numbers"


def test_ragged_numeric_data():
    assert "not a regular array" in bad(body(inp(shape=[2, 3], data=[[1, 2, 3], [4, 5]])))


def test_integer_inputs_reject_floats_and_out_of_range():
    assert "must hold only integers" in bad(body(inp("ids", "INT32", [2], [1, 2.5])), IDS)
    assert "out of range" in bad(body(inp("ids", "INT32", [2], [1, 2**40])), IDS)
    assert decode(body(inp("ids", "INT32", [2], [1, -7])), IDS)["ids"].data.dtype == np.int32


def test_empty_batch():
    assert bad(body(inp(shape=[0, 3], data=[]))) == "input 'features' is an empty batch"
    assert bad(body(inp("text", "BYTES", [0], [])), TEXT) == "input 'text' is an empty batch"


def test_unknown_output_requested():
    req = oip.parse_infer_request(body(inp(), outputs=[{"name": "nope"}]), max_bytes=MAX)
    with pytest.raises(BadRequest) as exc:
        oip.requested_outputs(req, [TensorSpec(name="risk", datatype="BYTES", shape=[-1])])
    assert exc.value.public_message.startswith("unknown output 'nope'")


def test_long_client_names_are_truncated_in_messages():
    msg = bad(body(inp(), inp("x" * 200)))
    assert "x" * 64 + "..." in msg and "x" * 65 not in msg


# --- 413 ----------------------------------------------------------------------------------------


def test_body_over_the_limit():
    raw = json.dumps({"inputs": [inp("text", "BYTES", [1], ["é" * 600])]}, ensure_ascii=False)
    assert len(raw) < 1000 < len(raw.encode())   # the limit is in bytes, not characters
    with pytest.raises(PayloadTooLarge) as exc:
        oip.parse_infer_request(raw, max_bytes=1000)
    assert exc.value.status == 413 and exc.value.public_message == "request body exceeds 1000 bytes"
    oip.parse_infer_request(raw, max_bytes=2000)


def test_batch_over_the_limit():
    with pytest.raises(PayloadTooLarge) as exc:
        decode(body(inp("text", "BYTES", [65], ["a"] * 65)), TEXT, max_batch=64)
    assert exc.value.status == 413 and exc.value.public_message == "batch of 65 rows exceeds the limit of 64"
    assert decode(body(inp("text", "BYTES", [64], ["a"] * 64)), TEXT, max_batch=64)["text"].rows == 64


def test_metadata_lists_tensors_without_owner():
    from tenantml.manifest import FileEntry, Manifest

    m = Manifest(name="project-risk", task="tabular-classification", inputs=FEATURES,
                 outputs=[TensorSpec(name="risk", datatype="BYTES", shape=[-1])],
                 files={"model.onnx": FileEntry(sha256="0" * 64, size=1)})
    assert oip.model_metadata("project-risk", ["1", "2"], m) == {
        "name": "project-risk", "versions": ["1", "2"], "platform": "onnxruntime_onnx",
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 3]}],
        "outputs": [{"name": "risk", "datatype": "BYTES", "shape": [-1]}]}
