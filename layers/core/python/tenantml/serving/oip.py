"""Open Inference Protocol v2 (REST/JSON): strict request parsing, tensor validation and response shapes.

The request envelope (ids, names, shapes, datatypes) is validated with pydantic; tensor `data` is NOT
re-validated element by element by pydantic: it goes straight to numpy (numeric) or one type check per
string (BYTES), which is where the hot path's time would otherwise go. Every failure is a BadRequest
(400) or PayloadTooLarge (413) with a message that names the input and the rule, never library text.

JSON is parsed strictly: Python's json accepts NaN/Infinity/-Infinity by default; here they are a 400
anywhere in the body, and numbers that overflow a float (1e999) or the tensor's datatype are rejected by
the finiteness/range checks after conversion.

The binary tensor data extension (what Triton's and KServe's clients send by default) is supported both
ways. A request whose `Inference-Header-Content-Length` header says N carries N bytes of JSON followed by
the raw data of every input whose `parameters.binary_data_size` is set, in input order: numeric tensors
little-endian in row-major order, BOOL one byte per element, BYTES as a 4-byte little-endian length before
each element. The response carries an output in binary when the request's `binary_data_output` parameter
is true or the output's own `binary_data` parameter is (the latter wins), with the same layout and header.
Fields a real OIP client sends are accepted deliberately: `id`, `parameters` (request, input and output),
`model_name`/`model_version` (KServe's client sends the model name; a mismatch with the path is a 400).
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


BINARY_EXTENSION = "binary_tensor_data"
HEADER_LENGTH = "Inference-Header-Content-Length"
_MISSING = object()


class RequestInput(_Strict):
    name: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    shape: list[Annotated[StrictInt, Field(ge=0)]] = Field(min_length=1, max_length=8)
    datatype: Datatype
    parameters: dict[str, Any] | None = None
    data: Any = Field(default=_MISSING, description="the elements, row-major (flat or nested lists); or "
                      "parameters.binary_data_size with binary tensor data")  # converted by decode_inputs

    @property
    def binary_size(self) -> int | None:
        """`parameters.binary_data_size`: the input's data follows the JSON header, this many bytes."""
        size = (self.parameters or {}).get("binary_data_size")
        if size is None:
            return None
        if type(size) is not int or size < 0:
            raise BadRequest(f"input '{_q(self.name)}': binary_data_size must be a non-negative integer")
        return size


class RequestOutput(_Strict):
    name: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    parameters: dict[str, Any] | None = None


class InferRequest(_Strict):
    id: Annotated[StrictStr, Field(max_length=256)] | None = None
    model_name: Annotated[StrictStr, Field(max_length=256)] | None = None
    model_version: Annotated[StrictStr, Field(max_length=256)] | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1, max_length=32)
    outputs: list[RequestOutput] | None = None

    def binary_outputs(self, names: Sequence[str]) -> frozenset[str]:
        """The outputs (of `names`, the ones answered) the client wants in binary."""
        default = _flag((self.parameters or {}).get("binary_data_output"), "binary_data_output")
        per_output = {o.name: _flag((o.parameters or {}).get("binary_data"), f"outputs '{_q(o.name)}' "
                                    "binary_data") for o in self.outputs or ()}
        chosen = {n: per_output.get(n) for n in names}
        return frozenset(n for n, flag in chosen.items() if (default if flag is None else flag))


def _flag(value: Any, what: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise BadRequest(f"parameter {what} must be true or false")


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


class _NonFiniteLiteral(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NonFiniteLiteral(name)


def _q(name: str) -> str:
    return name if len(name) <= _NAME_ECHO else name[:_NAME_ECHO] + "..."


def validation_message(exc: ValidationError, what: str = "invalid request") -> str:
    """A pydantic error as one stable line: `<what>: <location>: <message>` (the first error only)."""
    err = exc.errors(include_url=False, include_input=False)[0]
    loc = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p))
                  for i, p in enumerate(err["loc"]))
    return f"{what}: {loc or 'body'}: {err['msg']}"


def body_size(body: str | bytes) -> int:
    if isinstance(body, bytes):
        return len(body)
    return len(body) if body.isascii() else len(body.encode("utf-8", "surrogatepass"))


def parse_json_strict(body: str | bytes | None, *, max_bytes: int) -> Any:
    """Parse a request body: 413 over `max_bytes`, 400 on a body that is not UTF-8 JSON or that holds
    NaN/Infinity literals, each with its own message."""
    if body is None or body == "" or body == b"":
        raise BadRequest("request body is required")
    if body_size(body) > max_bytes:
        raise PayloadTooLarge(f"request body exceeds {max_bytes} bytes")
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("request body is not valid UTF-8 JSON (binary tensor data needs the "
                             "Inference-Header-Content-Length header)") from None
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except _NonFiniteLiteral:
        raise BadRequest("malformed JSON body: NaN and Infinity are not allowed") from None
    except (ValueError, RecursionError) as exc:
        raise BadRequest("request body is not valid JSON", detail=type(exc).__name__) from None


@dataclass(frozen=True)
class ParsedRequest:
    """An inference request: the validated envelope and the raw binary data of each binary input."""

    request: InferRequest
    binary: Mapping[str, bytes]


def parse_infer_request(body: str | bytes | None, *, max_bytes: int,
                        json_length: int | None = None) -> InferRequest:
    return parse_request(body, max_bytes=max_bytes, json_length=json_length).request


def parse_request(body: str | bytes | None, *, max_bytes: int,
                  json_length: int | None = None) -> ParsedRequest:
    """The request envelope, and with `json_length` (the Inference-Header-Content-Length header) the
    binary data after the JSON header, split per input by `binary_data_size`."""
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    if raw is not None and json_length is not None:
        if len(raw) > max_bytes:
            raise PayloadTooLarge(f"request body exceeds {max_bytes} bytes")
        if not 0 < json_length <= len(raw):
            raise BadRequest(f"Inference-Header-Content-Length {json_length} does not fit a body of "
                             f"{len(raw)} bytes")
        head, tail = raw[:json_length], raw[json_length:]
    else:
        head, tail = raw, b""
    obj = parse_json_strict(head, max_bytes=max_bytes)
    if not isinstance(obj, dict):
        raise BadRequest("request body must be a JSON object")
    try:
        req = InferRequest.model_validate(obj)
    except ValidationError as exc:
        raise BadRequest(validation_message(exc)) from None
    binary: dict[str, bytes] = {}
    offset = 0
    for inp in req.inputs:
        size = inp.binary_size
        if size is None:
            continue
        if inp.data is not _MISSING:
            raise BadRequest(f"input '{_q(inp.name)}' has both data and binary_data_size")
        if offset + size > len(tail):
            raise BadRequest(f"input '{_q(inp.name)}': binary_data_size {size} runs past the end of the body")
        binary[inp.name] = tail[offset:offset + size]
        offset += size
    if offset != len(tail):
        raise BadRequest(f"the body holds {len(tail) - offset} bytes of binary data no input claims")
    return ParsedRequest(req, binary)


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


def _check_unicode(strings: list[str], name: str) -> None:
    """JSON may escape a lone surrogate ("\\ud800"), which json.loads turns into a str no tokenizer (nor
    UTF-8) takes: a 400 here, not a TypeError deep in the model. One C-level pass over the batch."""
    try:
        "".join(strings).encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"input '{name}' (BYTES) holds text that is not valid Unicode (a lone surrogate "
                         "escape such as \\ud800)") from None


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


def _binary_strings(raw: bytes, n: int, name: str) -> list[str]:
    """BYTES elements from the binary layout: each a 4-byte little-endian length, then its bytes."""
    out, pos = [], 0
    for i in range(n):
        if pos + 4 > len(raw):
            raise BadRequest(f"input '{name}' binary data ends before element {i}")
        size = int.from_bytes(raw[pos:pos + 4], "little")
        pos += 4
        if pos + size > len(raw):
            raise BadRequest(f"input '{name}' binary element {i} runs past its data")
        try:
            out.append(raw[pos:pos + size].decode("utf-8"))
        except UnicodeDecodeError:
            raise BadRequest(f"input '{name}' element {i} is not valid UTF-8") from None
        pos += size
    if pos != len(raw):
        raise BadRequest(f"input '{name}' binary data holds more than its {n} elements")
    return out


def _binary_numbers(raw: bytes, spec: TensorSpec, n: int, name: str) -> np.ndarray:
    dtype = np.dtype(NUMPY_DTYPES[spec.datatype]).newbyteorder("<")
    if len(raw) != n * dtype.itemsize:
        raise BadRequest(f"input '{name}' ({spec.datatype}) has {len(raw)} bytes of binary data, "
                         f"expected {n * dtype.itemsize}")
    if dtype.kind == "b":
        flags = np.frombuffer(raw, np.uint8)
        if flags.size and flags.max() > 1:
            raise BadRequest(f"input '{name}' (BOOL) binary data must hold only 0 and 1")
        return flags.astype(np.bool_)
    arr = np.frombuffer(raw, dtype).astype(dtype.newbyteorder("="))
    if dtype.kind == "f" and arr.size and not np.isfinite(arr).all():
        raise BadRequest(f"input '{name}' ({spec.datatype}) holds NaN, Infinity or out-of-range values")
    return arr


def decode_input(inp: RequestInput, spec: TensorSpec, *, max_batch: int, binary: bytes | None = None,
                 ) -> Tensor:
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
    if binary is not None:
        if spec.datatype == "BYTES":
            return Tensor(inp.name, "BYTES", tuple(shape), _binary_strings(binary, n, name))
        arr = _binary_numbers(binary, spec, n, name)
        return Tensor(inp.name, spec.datatype, tuple(shape), np.ascontiguousarray(arr.reshape(shape)))
    if inp.data is _MISSING:
        raise BadRequest(f"input '{name}' has no data (give data, or binary_data_size with binary data)")
    if spec.datatype == "BYTES":
        strings = _flatten_strings(inp.data, name)
        _check_unicode(strings, name)
        if len(strings) != n:
            raise BadRequest(f"input '{name}' has {len(strings)} elements but shape {_shape_str(shape)} "
                             f"needs {n}")
        return Tensor(inp.name, "BYTES", tuple(shape), strings)
    arr = _numeric_array(inp.data, spec, name)
    if arr.size != n:
        raise BadRequest(f"input '{name}' has {arr.size} elements but shape {_shape_str(shape)} needs {n}")
    return Tensor(inp.name, spec.datatype, tuple(shape), np.ascontiguousarray(arr.reshape(shape)))


def decode_inputs(req: InferRequest, specs: Sequence[TensorSpec], *, max_batch: int,
                  binary: Mapping[str, bytes] | None = None) -> dict[str, Tensor]:
    """Validate the request's inputs against the model's input specs (all required); `binary`: the raw
    data of the binary inputs (ParsedRequest.binary)."""
    by_name = {s.name: s for s in specs}
    out: dict[str, Tensor] = {}
    for inp in req.inputs:
        spec = by_name.get(inp.name)
        if spec is None:
            raise BadRequest(f"unknown input '{_q(inp.name)}'; expected {sorted(by_name)}")
        if inp.name in out:
            raise BadRequest(f"input '{_q(inp.name)}' is given more than once")
        out[inp.name] = decode_input(inp, spec, max_batch=max_batch,
                                     binary=(binary or {}).get(inp.name))
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


# The response shapes, as pydantic models for the API's OpenAPI document (tenantml.api.openapi). The
# responses themselves are serialized by hand (below, for speed); tests validate real responses against
# these models, so the document and the code cannot drift apart.


class _Documented(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorMetadata(_Documented):
    name: str
    datatype: Datatype
    shape: list[int] = Field(description="-1 marks a variable dimension (the batch)")


class ModelMetadataResponse(_Documented):
    """GET /v2/models/{model}[/versions/{version}]."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ResponseOutput(_Documented):
    name: str
    datatype: Datatype
    shape: list[int]
    data: list[Any] | None = Field(default=None, description="row-major; absent when the output is binary")
    parameters: dict[str, Any] | None = Field(
        default=None, description="binary_data_size: the output's bytes after the JSON header")


class InferResponse(_Documented):
    """POST /v2/models/{model}[/versions/{version}]/infer, 200 (also GET /v2/requests/{id} once done)."""

    model_name: str
    model_version: str
    id: str | None = Field(default=None, description="the request's id, or the one the platform assigned")
    outputs: list[ResponseOutput]


# Shortest %-format that round-trips each float type exactly (float32 needs 9 significant digits).
_FLOAT_FORMAT = {2: "%.5g", 4: "%.9g", 8: "%.17g"}


@functools.lru_cache(maxsize=64)
def _float_template(itemsize: int, n: int) -> str:
    return ",".join([_FLOAT_FORMAT[itemsize]] * n)


@dataclass(frozen=True)
class EncodedOutput:
    """One OIP response output, already serialized: `json` is the complete {"name",...,"data"} object;
    `value` is kept for the binary form (`binary()`), made only when a client asks for it."""

    name: str
    json: str
    datatype: str = ""
    value: Any = None

    def binary(self) -> tuple[str, bytes]:
        """(the output's JSON without data, with parameters.binary_data_size; its raw data)."""
        if isinstance(self.value, np.ndarray):
            dtype = self.value.dtype
            raw = self.value.astype(dtype.newbyteorder("<"), copy=False).tobytes() if dtype.kind != "b" \
                else self.value.astype(np.uint8).tobytes()
            shape = ",".join(map(str, self.value.shape))
        else:
            encoded = [s.encode("utf-8", "surrogatepass") for s in self.value]
            raw = b"".join(len(b).to_bytes(4, "little") + b for b in encoded)
            shape = str(len(self.value))
        return (f'{{"name":{_json_str(self.name)},"datatype":{_json_str(self.datatype)},"shape":[{shape}],'
                f'"parameters":{{"binary_data_size":{len(raw)}}}}}', raw)


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
                               f'"shape":[{shape}],"data":[{data}]}}', datatype, value)


def infer_response(model_name: str, model_version: str, request_id: str | None,
                   outputs: Sequence[EncodedOutput], selected: tuple[str, ...] | None = None) -> str:
    """The serialized OIP inference response, honouring the client's `outputs` selection."""
    body, _ = infer_response_parts(model_name, model_version, request_id, outputs, selected)
    return body.decode() if isinstance(body, bytes) else body


def infer_response_parts(model_name: str, model_version: str, request_id: str | None,
                         outputs: Sequence[EncodedOutput], selected: tuple[str, ...] | None = None,
                         binary: frozenset[str] = frozenset()) -> tuple[str | bytes, int | None]:
    """The response body and, when any output is binary, the length of its JSON header (the value of
    Inference-Header-Content-Length); the body is then bytes: JSON header + the binary outputs' data."""
    if selected is not None:
        by_name = {o.name: o for o in outputs}
        outputs = [by_name[n] for n in selected]
    rid = "" if request_id is None else f',"id":{_json_str(request_id)}'
    parts, raws = [], []
    for o in outputs:
        if o.name in binary:
            head, raw = o.binary()
            parts.append(head)
            raws.append(raw)
        else:
            parts.append(o.json)
    body = (f'{{"model_name":{_json_str(model_name)},"model_version":{_json_str(model_version)}{rid},'
            f'"outputs":[{",".join(parts)}]}}')
    if not raws:
        return body, None
    head = body.encode()
    return head + b"".join(raws), len(head)
