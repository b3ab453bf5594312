"""Open Inference Protocol v2 (REST/JSON): strict request parsing, tensor validation and response shapes.

The request envelope (ids, names, shapes, datatypes) is validated with pydantic; tensor `data` is NOT
re-validated element by element by pydantic: it goes straight to numpy (numeric) or one type check per
string (BYTES), which is where the hot path's time would otherwise go. Every failure is a BadRequest
(400) or PayloadTooLarge (413) with a message that names the input and the rule, never library text.

JSON is parsed strictly: Python's json accepts NaN/Infinity/-Infinity by default; here they are a 400
anywhere in the body, and numbers that overflow a float (1e999) or the tensor's datatype are rejected by
the finiteness/range checks after conversion.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _json_str  # json.dumps' own (C) string quoting
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from tenantml.errors import BadRequest, PayloadTooLarge
from tenantml.manifest import Datatype, Manifest, TensorSpec

NUMPY_DTYPES: dict[str, Any] = {
    "BOOL": np.bool_, "UINT8": np.uint8, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}
_NAME_ECHO = 64  # client-supplied names are echoed in messages, truncated


# --- request envelope ---------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RequestInput(_Strict):
    name: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    shape: list[Annotated[StrictInt, Field(ge=0)]] = Field(min_length=1, max_length=8)
    datatype: Datatype
    parameters: dict[str, Any] | None = None
    data: Any  # converted by decode_inputs, not by pydantic (see module docstring)


class RequestOutput(_Strict):
    name: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    parameters: dict[str, Any] | None = None


class InferRequest(_Strict):
    id: Annotated[StrictStr, Field(max_length=256)] | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1, max_length=32)
    outputs: list[RequestOutput] | None = None


@dataclass(frozen=True)
class Tensor:
    """A validated input: numeric tensors as numpy arrays of `shape`; BYTES as a flat list of str."""

    name: str
    datatype: Datatype
    shape: tuple[int, ...]
    data: np.ndarray | list[str]

    @property
    def rows(self) -> int:
        return self.shape[0]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _q(name: str) -> str:
    return name if len(name) <= _NAME_ECHO else name[:_NAME_ECHO] + "..."


def _validation_message(exc: ValidationError) -> str:
    err = exc.errors(include_url=False, include_input=False)[0]
    loc = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p))
                  for i, p in enumerate(err["loc"]))
    return f"invalid request: {loc or 'body'}: {err['msg']}"


def body_size(body: str | bytes) -> int:
    if isinstance(body, bytes):
        return len(body)
    return len(body) if body.isascii() else len(body.encode("utf-8", "surrogatepass"))


def parse_json_strict(body: str | bytes | None, *, max_bytes: int) -> Any:
    """Parse a request body: 413 over `max_bytes`, 400 on malformed JSON or NaN/Infinity literals."""
    if body is None or body == "" or body == b"":
        raise BadRequest("request body is required")
    if body_size(body) > max_bytes:
        raise PayloadTooLarge(f"request body exceeds {max_bytes} bytes")
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and NaN/Infinity both land here
        raise BadRequest("malformed JSON body (NaN and Infinity are not allowed)",
                         detail=type(exc).__name__) from None


def parse_infer_request(body: str | bytes | None, *, max_bytes: int) -> InferRequest:
    obj = parse_json_strict(body, max_bytes=max_bytes)
    if not isinstance(obj, dict):
        raise BadRequest("request body must be a JSON object")
    try:
        return InferRequest.model_validate(obj)
    except ValidationError as exc:
        raise BadRequest(_validation_message(exc)) from None


# --- tensor validation --------------------------------------------------------------------------


def _shape_str(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _flatten_strings(data: Any, name: str) -> list[str]:
    if isinstance(data, str) or not isinstance(data, list):
        raise BadRequest(f"input '{name}' (BYTES) data must be a list of strings")
    if all(type(x) is str for x in data):  # the common, flat case: one pass, no copies
        return data
    out: list[str] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            if not isinstance(item, str):
                raise BadRequest(f"input '{name}' (BYTES) data must hold only strings")
            out.append(item)
        else:
            stack.pop()
    return out


def _numeric_array(data: Any, spec: TensorSpec, name: str) -> np.ndarray:
    if not isinstance(data, list):
        raise BadRequest(f"input '{name}' data must be a list")
    try:
        raw = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise BadRequest(f"input '{name}' data is not a regular array of numbers") from None
    dtype = np.dtype(NUMPY_DTYPES[spec.datatype])
    kind = raw.dtype.kind
    allowed = "b" if dtype.kind == "b" else ("iu" if dtype.kind in "iu" else "iuf")
    if raw.size and kind not in allowed:
        what = "booleans" if dtype.kind == "b" else ("integers" if dtype.kind in "iu" else "numbers")
        raise BadRequest(f"input '{name}' ({spec.datatype}) data must hold only {what}")
    if dtype.kind in "iu" and raw.size:
        info = np.iinfo(dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise BadRequest(f"input '{name}' ({spec.datatype}) holds values out of range")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow becomes inf, rejected just below
        arr = raw.astype(dtype, copy=False)
    if dtype.kind == "f" and arr.size and not np.isfinite(arr).all():
        raise BadRequest(f"input '{name}' ({spec.datatype}) holds NaN, Infinity or out-of-range values")
    return arr


def decode_input(inp: RequestInput, spec: TensorSpec, *, max_batch: int) -> Tensor:
    name = _q(inp.name)
    if inp.datatype != spec.datatype:
        raise BadRequest(f"input '{name}' has datatype {inp.datatype}, expected {spec.datatype}")
    shape = inp.shape
    if len(shape) != len(spec.shape) or any(s not in (-1, d) for s, d in zip(spec.shape, shape, strict=True)):
        raise BadRequest(f"input '{name}' has shape {_shape_str(shape)}, expected {_shape_str(spec.shape)}")
    n = math.prod(shape)
    if n == 0:
        raise BadRequest(f"input '{name}' is an empty batch")
    if shape[0] > max_batch:
        raise PayloadTooLarge(f"batch of {shape[0]} rows exceeds the limit of {max_batch}")
    if spec.datatype == "BYTES":
        strings = _flatten_strings(inp.data, name)
        if len(strings) != n:
            raise BadRequest(f"input '{name}' has {len(strings)} elements but shape {_shape_str(shape)} "
                             f"needs {n}")
        return Tensor(inp.name, "BYTES", tuple(shape), strings)
    arr = _numeric_array(inp.data, spec, name)
    if arr.size != n:
        raise BadRequest(f"input '{name}' has {arr.size} elements but shape {_shape_str(shape)} needs {n}")
    return Tensor(inp.name, spec.datatype, tuple(shape), np.ascontiguousarray(arr.reshape(shape)))


def decode_inputs(req: InferRequest, specs: Sequence[TensorSpec], *, max_batch: int) -> dict[str, Tensor]:
    """Validate the request's inputs against the model's input specs (all required)."""
    by_name = {s.name: s for s in specs}
    out: dict[str, Tensor] = {}
    for inp in req.inputs:
        spec = by_name.get(inp.name)
        if spec is None:
            raise BadRequest(f"unknown input '{_q(inp.name)}'; expected {sorted(by_name)}")
        if inp.name in out:
            raise BadRequest(f"input '{_q(inp.name)}' is given more than once")
        out[inp.name] = decode_input(inp, spec, max_batch=max_batch)
    missing = [s.name for s in specs if s.name not in out]
    if missing:
        raise BadRequest(f"missing input '{missing[0]}'")
    rows = {t.rows for t in out.values()}
    if len(rows) > 1:
        raise BadRequest("all inputs must have the same batch size")
    return out


def requested_outputs(req: InferRequest, specs: Sequence[TensorSpec]) -> tuple[str, ...] | None:
    """Names of the outputs the client asked for (None: all), validated against the model's outputs."""
    if not req.outputs:
        return None
    known = {s.name for s in specs}
    names: list[str] = []
    for o in req.outputs:
        if o.name not in known:
            raise BadRequest(f"unknown output '{_q(o.name)}'; expected {sorted(known)}")
        if o.name not in names:
            names.append(o.name)
    return tuple(names)


def input_digest(tensors: Mapping[str, Tensor]) -> str:
    """sha256 of the canonical form of validated inputs (name, datatype, shape, values), for cache keys."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{len(name)}:{name}|{t.datatype}|{_shape_str(t.shape)}|".encode())
        if isinstance(t.data, np.ndarray):
            h.update(t.data.tobytes())
        else:
            for s in t.data:
                b = s.encode("utf-8", "surrogatepass")
                h.update(len(b).to_bytes(8, "little"))
                h.update(b)
    return h.hexdigest()


# --- responses ----------------------------------------------------------------------------------


def tensor_metadata(specs: Sequence[TensorSpec]) -> list[dict[str, Any]]:
    return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs]


def model_metadata(name: str, versions: Sequence[str], manifest: Manifest) -> dict[str, Any]:
    """OIP model metadata: name, versions, platform, inputs, outputs. Never the owner tenant."""
    return {"name": name, "versions": list(versions), "platform": manifest.platform,
            "inputs": tensor_metadata(manifest.inputs), "outputs": tensor_metadata(manifest.outputs)}


# Shortest %-format that round-trips each float type exactly (float32 needs 9 significant digits).
_FLOAT_FORMAT = {2: "%.5g", 4: "%.9g", 8: "%.17g"}


@functools.lru_cache(maxsize=64)
def _float_template(itemsize: int, n: int) -> str:
    return ",".join([_FLOAT_FORMAT[itemsize]] * n)


@dataclass(frozen=True)
class EncodedOutput:
    """One OIP response output, already serialized: `json` is the complete {"name",...,"data"} object."""

    name: str
    json: str


def _json_numbers(values: np.ndarray) -> str:
    """Comma-separated JSON numbers, flattened row-major. Floats use one %-format call over the whole
    array (~4x faster than json.dumps of tolist(), and exact for the dtype); NaN/Infinity are refused."""
    flat = values.reshape(-1)
    items = flat.tolist()
    if flat.dtype.kind == "f":
        if not np.isfinite(flat).all():
            raise ValueError("model output holds NaN or Infinity")
        return _float_template(flat.dtype.itemsize, len(items)) % tuple(items)
    if flat.dtype.kind == "b":
        return ",".join("true" if x else "false" for x in items)
    return ",".join(map(str, items))


def encode_output(name: str, datatype: str, value: np.ndarray | list[str]) -> EncodedOutput:
    """Serialize one output tensor: numeric data from numpy, BYTES as JSON strings; shape from the value."""
    if isinstance(value, np.ndarray):
        shape, data = ",".join(map(str, value.shape)), _json_numbers(value)
    else:
        shape, data = str(len(value)), ",".join(map(_json_str, value))
    return EncodedOutput(name, f'{{"name":{_json_str(name)},"datatype":{_json_str(datatype)},'
                               f'"shape":[{shape}],"data":[{data}]}}')


def infer_response(model_name: str, model_version: str, request_id: str | None,
                   outputs: Sequence[EncodedOutput], selected: tuple[str, ...] | None = None) -> str:
    """The serialized OIP inference response, honouring the client's `outputs` selection."""
    if selected is not None:
        by_name = {o.name: o for o in outputs}
        outputs = [by_name[n] for n in selected]
    rid = "" if request_id is None else f',"id":{_json_str(request_id)}'
    return (f'{{"model_name":{_json_str(model_name)},"model_version":{_json_str(model_version)}{rid},'
            f'"outputs":[{",".join(o.json for o in outputs)}]}}')
