"""The request body as the function receives it from API Gateway, made into the bytes the client sent.

API Gateway is configured with binary media types `*/*` (tenantml_cdk.constructs.api): every body reaches
the function base64-encoded (`isBase64Encoded`), so binary tensor data and compressed bodies pass intact
whatever Content-Type the client sends (Triton's client sends none). The cost: base64 decoding here
(~1 ms per MB) and bodies 4/3 larger inside Lambda's 6 MB request payload limit, far above the 1 MB
request limit the functions enforce.

Compressed bodies (`Content-Encoding: gzip` or `deflate`, raw or zlib-wrapped) are decompressed here,
bounded: the limit applies to the decompressed size too, so a small body that inflates past it is a 413
and never inflated further (no decompression bombs). A body that announces a compression but is already
plain (API Gateway may decompress method requests itself) is taken as it is: a JSON body never starts
with a gzip or zlib header.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tenantml.errors import BadRequest, PayloadTooLarge

GZIP_MAGIC = b"\x1f\x8b"
LENGTH_HEADER = "inference-header-content-length"
NOT_BASE64 = "request body is flagged base64 but is not valid base64"
# The admin API's bodies (JSON with base64 model files): nothing larger reaches a function (API Gateway's
# payload quota; Lambda's own request limit is 6 MB), so this bounds decompression only.
MAX_ADMIN_BODY_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class RequestBody:
    data: bytes
    json_length: int | None    # the Inference-Header-Content-Length header (binary tensor data)


def _header(headers: Mapping[str, Any] | None, name: str) -> str | None:
    if not isinstance(headers, Mapping):     # absent (None), or a hand-made event's junk
        return None
    for key, value in headers.items():
        if key.lower() == name:
            return str(value)
    return None


def _looks_zlib(data: bytes) -> bool:
    return len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0


def _inflate(data: bytes, wbits: int, max_bytes: int, what: str) -> bytes:
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(data, max_bytes + 1)
    except zlib.error:
        raise BadRequest(f"request body is not valid {what} data") from None
    if len(out) > max_bytes or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed request body exceeds {max_bytes} bytes")
    if not inflater.eof:
        raise BadRequest(f"request body is truncated {what} data")
    return out


def decompress(data: bytes, encoding: str | None, *, max_bytes: int) -> bytes:
    coding = (encoding or "identity").strip().lower()
    if coding in ("identity", ""):
        return data
    if coding not in ("gzip", "x-gzip", "deflate"):
        raise BadRequest(f"unsupported Content-Encoding '{coding[:32]}': use gzip or deflate")
    if data.startswith(GZIP_MAGIC):
        return _inflate(data, 16 + zlib.MAX_WBITS, max_bytes, "gzip")
    if coding == "deflate":
        if _looks_zlib(data):
            return _inflate(data, zlib.MAX_WBITS, max_bytes, "deflate")
        if not data.lstrip()[:1] == b"{":   # raw deflate, as some clients send
            return _inflate(data, -zlib.MAX_WBITS, max_bytes, "deflate")
    if data.lstrip()[:1] == b"{":           # already decompressed on the way (API Gateway)
        return data
    raise BadRequest(f"request body is not valid {coding} data")


def read_body(event: Mapping[str, Any], *, max_bytes: int) -> RequestBody:
    """The client's body from a proxy event: base64 undone, decompressed within `max_bytes`, with the
    binary header length. Every malformed case is a 400 with its own message; too large a 413."""
    data = _body_bytes(event, max_bytes=max_bytes)
    length = _header(event.get("headers"), LENGTH_HEADER)
    json_length = None
    if length is not None:
        if not (length.isascii() and length.isdigit()) or len(length) > 12:
            raise BadRequest("Inference-Header-Content-Length must be a number of bytes")
        json_length = int(length)
    return RequestBody(data, json_length)


def _body_bytes(event: Mapping[str, Any], *, max_bytes: int) -> bytes:
    raw = event.get("body")
    headers = event.get("headers") or {}
    if raw is None or raw == "":
        data = b""
    elif event.get("isBase64Encoded"):
        if not isinstance(raw, str | bytes):     # a hand-made event: b64decode would raise TypeError
            raise BadRequest(NOT_BASE64)
        try:
            data = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(NOT_BASE64) from None
    else:
        data = str(raw).encode("utf-8", "surrogatepass")
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"request body exceeds {max_bytes} bytes")
    return decompress(data, _header(headers, "content-encoding"), max_bytes=max_bytes)


def read_text(event: Mapping[str, Any], *, max_bytes: int) -> str | None:
    """The client's body as text (the admin API's JSON bodies): base64 undone and decompressed as by
    `read_body` (no binary extension header here), then strict UTF-8. A body that is not UTF-8 is a 400
    of its own, never a UnicodeDecodeError (Powertools' `decoded_body` raises on it, and on a body
    flagged base64 that is not base64). None for an empty body."""
    data = _body_bytes(event, max_bytes=max_bytes)
    if not data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("request body is not valid UTF-8") from None
