"""The container's HTTP server: SageMaker's inference contract, Open Inference Protocol v2 bodies.

    GET  /ping          200 {"ready":true} once the model is loaded and warmed up; 503 while loading
    POST /invocations   an OIP v2 infer request (JSON, or JSON + binary tensor data with the
                        Inference-Header-Content-Length header) -> the OIP v2 response
    GET  /stats         the model and the batcher's counters (not part of SageMaker's contract)

`/invocations` answers what the Lambda path (tenantml.serving.service.InferenceService.infer) answers for
the same request and model: the same parsing and validation (`tenantml.serving.oip`), the same
pre/post-processing (`tenantml.serving.processing`), the same encoding and, for errors, the same status
and `{"error": "<message>"}` body. The one addition is `"parameters":{"compute_ms":<float>}` at the end
of the response object: the request's share of model compute (gpu_endpoint.model), which the platform
uses to apportion GPU instance time to tenants. `model_name` is the served model's (an OIP `model_name`
in the body must match it: 400 otherwise), `model_version` the configured version.

`X-Amzn-SageMaker-Custom-Attributes` (what InvokeEndpointAsync's CustomAttributes become) may carry
`model_sha256=<sha256 of model.onnx>` and `request_id=<id>`, separated by `;` or `,`. A sha256 that is not
the served model's is a 400 (the endpoint serves another model version); the request id becomes the
response's `id` when the body has none (as the API Gateway request id does on the Lambda path).

Limits (the Lambda path's variables and defaults, so one setting governs both): TENANTML_MAX_BODY_BYTES
(1000000) and TENANTML_MAX_BATCH (64 rows per request). Batching: gpu_endpoint.batching (TENANTML_GPU_*);
device and precision: gpu_endpoint.model. A full queue answers 503 with Retry-After at once.

Run: `python -m gpu_endpoint.server --model-dir DIR [--port P] [--host H]` (local mode: 127.0.0.1, port
SAGEMAKER_BIND_TO_PORT or 8080, `--port 0` picks a free one), or `python -m gpu_endpoint.server serve`
(SageMaker's `docker run IMAGE serve`: all interfaces, model in TENANTML_MODEL_DIR or /opt/ml/model). It
logs JSON lines to stdout; the line with `"event":"ready"` carries the URL. A model folder that fails
verification or loading is logged (`"event":"load_failed"`) and the process exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from gpu_endpoint.batching import BatchConfig, Batcher, BatcherClosed, QueueFull
from gpu_endpoint.model import (
    DEFAULT_MODEL_DIR,
    ENV_MODEL_DIR,
    ModelOptions,
    ServedModel,
    load_model,
    rows_of,
)
from tenantml.api.body import decompress
from tenantml.errors import BadRequest, TenantMLError
from tenantml.serving import oip
from tenantml.serving.loading import Misconfigured

CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
ENV_PORT = "SAGEMAKER_BIND_TO_PORT"
ENV_MAX_BODY = "TENANTML_MAX_BODY_BYTES"
ENV_MAX_ROWS = "TENANTML_MAX_BATCH"
ENV_TIMEOUT = "TENANTML_GPU_REQUEST_TIMEOUT_S"
DEFAULT_PORT = 8080
DEFAULT_MAX_BODY = 1_000_000
DEFAULT_MAX_ROWS = 64
DEFAULT_TIMEOUT_S = 60.0
DRAIN_LIMIT = 64 * 1024 * 1024
SHA_RE = re.compile(r"^[0-9a-f]{64}$")
JSON = "application/json"

_log_lock = threading.Lock()


def log(event: str, **fields: Any) -> None:
    """One JSON line on stdout (CloudWatch in SageMaker)."""
    line = json.dumps({"ts": round(time.time(), 3), "event": event, **fields}, separators=(",", ":"),
                      default=str)
    with _log_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


# What an instance's time is counted by (tenantml.monitoring.cost: GPU instance time apportioned to
# tenants): one line per interval while the container serves, in the endpoint's CloudWatch log group.
HEARTBEAT = "instance_heartbeat"
ENV_HEARTBEAT = "TENANTML_GPU_HEARTBEAT_SECONDS"


def heartbeat_seconds(env: Mapping[str, str] | None = None) -> float:
    raw = ((os.environ if env is None else env).get(ENV_HEARTBEAT) or "").strip()
    try:
        value = float(raw) if raw else 60.0
    except ValueError:
        value = 60.0
    return min(max(value, 0.1), 3600.0)


# --- settings -------------------------------------------------------------------------------------


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{name} must be a positive integer, got {raw[:32]!r}")
    return int(raw)


@dataclass(frozen=True)
class Settings:
    model_dir: Path = Path(DEFAULT_MODEL_DIR)
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    max_body_bytes: int = DEFAULT_MAX_BODY
    max_request_rows: int = DEFAULT_MAX_ROWS
    request_timeout_s: float = DEFAULT_TIMEOUT_S
    batch: BatchConfig = field(default_factory=BatchConfig)
    model: ModelOptions = field(default_factory=ModelOptions)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if env is None else env
        batch = BatchConfig.from_env(env)
        values: dict[str, Any] = {
            "model_dir": Path(env.get(ENV_MODEL_DIR) or DEFAULT_MODEL_DIR),
            "port": _env_int(env, ENV_PORT, DEFAULT_PORT),
            "max_body_bytes": _env_int(env, ENV_MAX_BODY, DEFAULT_MAX_BODY),
            "max_request_rows": _env_int(env, ENV_MAX_ROWS, DEFAULT_MAX_ROWS),
            "request_timeout_s": float(env.get(ENV_TIMEOUT) or DEFAULT_TIMEOUT_S),
            "batch": batch,
        }
        model_overrides = overrides.pop("model_overrides", {}) or {}
        values["model"] = ModelOptions.from_env(env, max_batch_rows=batch.max_batch, **model_overrides)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


# --- the application --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = JSON


def error_reply(status: int, message: str, headers: Mapping[str, str] | None = None) -> Reply:
    """The Lambda path's error body (tenantml.api.errors.error_response): `{"error": "<message>"}`."""
    return Reply(status, json.dumps({"error": message}).encode(), dict(headers or {}))


def parse_custom_attributes(value: str | None) -> dict[str, str]:
    """`key=value` pairs separated by `;` or `,` (keys lower-cased; anything else ignored)."""
    out: dict[str, str] = {}
    for part in re.split(r"[;,]", value or ""):
        key, sep, val = part.partition("=")
        if sep and key.strip():
            out[key.strip().lower()] = val.strip()
    return out


def with_parameters(body: str | bytes, header_length: int | None, parameters: Mapping[str, Any],
                    ) -> tuple[bytes, int | None]:
    """The OIP response with `"parameters":{...}` appended to its top-level object (the JSON header of a
    binary response), the binary header length adjusted."""
    params = ',"parameters":' + json.dumps(parameters, separators=(",", ":"))
    raw = body.encode() if isinstance(body, str) else body
    if header_length is None:
        return raw[:-1] + params.encode() + b"}", None
    head = raw[:header_length - 1] + params.encode() + b"}"
    return head + raw[header_length:], len(head)


class App:
    """The state the handlers share: the model once loaded, its batcher, the settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model: ServedModel | None = None
        self.batcher: Batcher | None = None

    @property
    def ready(self) -> bool:
        return self.model is not None and self.batcher is not None

    def attach(self, model: ServedModel) -> None:
        self.batcher = Batcher(model.run_batch, self.settings.batch, name="gpu-batcher").start()
        self.model = model

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()

    # --- routes -------------------------------------------------------------------------------------

    def ping(self) -> Reply:
        if not self.ready:
            return error_reply(503, "model is loading", {"Retry-After": "5"})
        return Reply(200, b'{"ready":true}')

    def stats(self) -> Reply:
        body: dict[str, Any] = {"ready": self.ready, "batching": self.settings.batch.describe()}
        if self.model is not None:
            body["model"] = self.model.info.describe()
        if self.batcher is not None:
            body["batcher"] = self.batcher.stats()
        return Reply(200, json.dumps(body, separators=(",", ":")).encode())

    def invocations(self, body: bytes, headers: Mapping[str, str]) -> Reply:
        batcher = self.batcher
        if batcher is not None:
            batcher.expect()                  # the batcher may hold a batch for this one while it is parsed
        announced = [batcher is not None]
        try:
            return self._invoke(body, headers, announced)
        except TenantMLError as exc:
            if exc.status >= 500:
                log("request_failed", status=exc.status, error=exc.public_message, detail=exc.detail)
            return error_reply(exc.status, exc.public_message, exc.headers)
        except QueueFull as exc:
            return error_reply(503, f"server overloaded: {exc}; retry later", {"Retry-After": "1"})
        except BatcherClosed:
            return error_reply(503, "server is shutting down", {"Retry-After": "5"})
        except TimeoutError:
            log("request_failed", status=504, error="not run in time")
            return error_reply(504, f"deadline exceeded: the request was not run within "
                                    f"{self.settings.request_timeout_s:g} s")
        except Exception as exc:  # noqa: BLE001 - never a stack trace or exception text to the client
            log("request_failed", status=500, error=type(exc).__name__, detail=str(exc)[:200])
            return error_reply(500, "internal error")
        finally:
            if announced[0] and batcher is not None:
                batcher.withdraw()            # failed before it was queued

    def _invoke(self, body: bytes, headers: Mapping[str, str], announced: list[bool]) -> Reply:
        model, batcher = self.model, self.batcher
        if model is None or batcher is None:
            return error_reply(503, "model is loading", {"Retry-After": "5"})
        info, manifest = model.info, model.manifest
        attributes = parse_custom_attributes(headers.get(CUSTOM_ATTRIBUTES))
        sha = attributes.get("model_sha256")
        if sha is not None:
            if not SHA_RE.fullmatch(sha.lower()):
                raise BadRequest(f"model_sha256 in {CUSTOM_ATTRIBUTES} must be 64 hex digits")
            if sha.lower() != info.model_sha256:
                raise BadRequest(f"model_sha256 {sha.lower()[:12]}... does not match the served model "
                                 f"({info.name} version {info.version}, model_sha256 {info.model_sha256[:12]}"
                                 "...): this endpoint serves another model version")
        request_id = attributes.get("request_id") or None
        if request_id is not None and len(request_id) > 256:
            raise BadRequest(f"request_id in {CUSTOM_ATTRIBUTES} must be at most 256 characters")
        max_bytes = self.settings.max_body_bytes
        data = decompress(body, headers.get("Content-Encoding"), max_bytes=max_bytes)
        length = headers.get(oip.HEADER_LENGTH)
        json_length = None
        if length is not None:
            if not (length.isascii() and length.isdigit()) or len(length) > 12:
                raise BadRequest("Inference-Header-Content-Length must be a number of bytes")
            json_length = int(length)
        parsed = oip.parse_request(data, max_bytes=max_bytes, json_length=json_length)
        request = parsed.request
        if request.model_name is not None and request.model_name != info.name:
            raise BadRequest(f"model_name in the body ('{request.model_name[:64]}') does not match the "
                             f"served model ('{info.name}')")
        tensors = oip.decode_inputs(request, manifest.inputs, max_batch=self.settings.max_request_rows,
                                    binary=parsed.binary)
        selected = oip.requested_outputs(request, manifest.outputs)
        binary = request.binary_outputs(selected or [s.name for s in manifest.outputs])
        work = model.prepare(tensors)
        expected, announced[0] = announced[0], False
        result = batcher.submit(work, rows_of(work), expected=expected).wait(self.settings.request_timeout_s)
        outputs = [oip.encode_output(s.name, s.datatype, result.values[s.name]) for s in manifest.outputs]
        out, header_length = oip.infer_response_parts(info.name, info.version, request.id or request_id,
                                                      outputs, selected, binary)
        raw, header_length = with_parameters(out, header_length, {"compute_ms": round(result.compute_ms, 3)})
        if header_length is None:
            return Reply(200, raw)
        return Reply(200, raw, {oip.HEADER_LENGTH: str(header_length)}, "application/octet-stream")


# --- HTTP -------------------------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"       # keep-alive: every answer has a Content-Length
    server_version = "tenantml-gpu-endpoint"
    sys_version = ""
    # The status line, headers and body leave in one write (http.server flushes after each request), and
    # Nagle is off: written separately, a small body waits for the ACK of the headers, which a client
    # delays by up to 40 ms (seen as a flat ~48 ms p50 whatever the load, before this).
    wbufsize = 64 * 1024

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @property
    def app(self) -> App:
        return self.server.app  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        pass                              # no access log: failures are logged as JSON by the app

    def _send(self, reply: Reply, *, close: bool = False) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for key, value in reply.headers.items():
            self.send_header(key, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    def _path(self) -> str:
        return self.path.split("?", 1)[0]

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self._path()
        if path == "/ping":
            self._send(self.app.ping())
        elif path == "/stats":
            self._send(self.app.stats())
        elif path == "/invocations":
            self._send(error_reply(405, "method not allowed: POST an OIP v2 infer request"), close=False)
        else:
            self._send(error_reply(404, "route not found"))

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        if self._path() != "/invocations":
            self._drain()
            self._send(error_reply(404, "route not found") if self._path() != "/ping"
                       else error_reply(405, "method not allowed: GET /ping"))
            return
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self._send(error_reply(411, "Content-Length is required"), close=True)
            return
        raw_length = self.headers.get("Content-Length")
        try:
            length = int(raw_length) if raw_length is not None else 0
        except ValueError:
            self._send(error_reply(400, "Content-Length must be a number of bytes"), close=True)
            return
        limit = self.app.settings.max_body_bytes
        if length > limit:
            self._drain(length, DRAIN_LIMIT)      # read what the client sends, so it gets the answer
            self._send(error_reply(413, f"request body exceeds {limit} bytes"), close=True)
            return
        body = self.rfile.read(length) if length > 0 else b""
        headers = {k: v for k, v in self.headers.items()}
        self._send(self.app.invocations(body, _Caseless(headers)))

    def _drain(self, length: int | None = None, limit: int | None = None) -> None:
        """Read and drop a body we will not use (at most `limit` bytes; beyond it the connection closes)."""
        if length is None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = 0
        limit = self.app.settings.max_body_bytes if limit is None else limit
        if length > limit:
            self.close_connection = True
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 16))
            if not chunk:
                break
            length -= len(chunk)


class _Caseless(dict):  # type: ignore[type-arg]
    """HTTP headers, looked up without regard to case."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        super().__init__({k.lower(): v for k, v in headers.items()})

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256              # listen backlog: a burst of connections is queued, not refused
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: App) -> None:
        self.app = app
        super().__init__(address, Handler)


# --- the process ------------------------------------------------------------------------------------


def start(settings: Settings, *, load: bool = True) -> tuple[Server, App, threading.Thread]:
    """Bind and serve (503 on /ping) now; with `load`, load the model and attach it (raises LoadError)."""
    app = App(settings)
    server = Server((settings.host, settings.port), app)
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    if load:
        try:
            app.attach(load_model(settings.model_dir, settings.model,
                                  log=lambda note: log("model_note", note=note)))
        except BaseException:
            server.shutdown()
            server.server_close()
            raise
    return server, app, thread


def stop(server: Server, app: App) -> None:
    server.shutdown()
    server.server_close()
    app.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gpu_endpoint.server", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", nargs="?", choices=["serve"],
                   help="SageMaker's `docker run IMAGE serve`: listen on all interfaces")
    p.add_argument("--model-dir", type=Path, help=f"model version folder (default ${ENV_MODEL_DIR} or "
                   f"{DEFAULT_MODEL_DIR})")
    p.add_argument("--port", type=int, help=f"port (default ${ENV_PORT} or {DEFAULT_PORT}; 0: a free one)")
    p.add_argument("--host", help="interface (default 127.0.0.1; 0.0.0.0 with `serve`)")
    p.add_argument("--model-version",
                   help="the model_version answered (default $TENANTML_MODEL_VERSION or 1)")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], help="default $TENANTML_GPU_DEVICE or auto")
    p.add_argument("--precision", choices=["auto", "fp32", "fp16"],
                   help="default $TENANTML_GPU_PRECISION or auto (fp16 on CUDA, fp32 on CPU)")
    p.add_argument("--no-batching", action="store_true",
                   help="one request per run (TENANTML_GPU_BATCHING=off)")
    return p.parse_args(argv)


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    if args.no_batching:
        env["TENANTML_GPU_BATCHING"] = "off"
    host = args.host or ("0.0.0.0" if args.mode == "serve" else "127.0.0.1")  # noqa: S104 - in the container
    return Settings.from_env(env, model_dir=args.model_dir, port=args.port, host=host,
                             model_overrides={"version": args.model_version, "device": args.device,
                                              "precision": args.precision})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        log("config_invalid", error=str(exc))
        return 2
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    log("starting", model_dir=str(settings.model_dir), host=settings.host, port=settings.port,
        batching=settings.batch.describe(), device=settings.model.device, precision=settings.model.precision)
    try:
        server, app, _ = start(settings)
    except Misconfigured as exc:   # LoadError and the shared manifest checks
        log("load_failed", error=str(exc))
        return 1
    except OSError as exc:
        log("bind_failed", error=f"{type(exc).__name__}: {exc}")
        return 1
    assert app.model is not None
    host, port = server.server_address[:2]
    log("ready", message="tenantml gpu endpoint ready", url=f"http://{host}:{port}", port=port,
        batching=settings.batch.describe(), **app.model.info.describe())
    beat = heartbeat_seconds()
    while not stopping.wait(beat):
        log(HEARTBEAT, interval_s=beat)
    stop(server, app)
    log("stopped", **(app.batcher.stats() if app.batcher else {}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
