"""The AWS emulator of local mode: moto in server mode, in this process, on 127.0.0.1.

Every AWS call of the platform (boto3 in the functions, the registry CLI) goes over HTTP to this server
through `TENANTML_ENDPOINT_URL`, so the code paths are the ones that run on AWS. moto keeps its state in
module globals, so a server started twice in one process would see the first one's data: `start()` resets
it, and local mode always begins empty.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import urllib.error
import urllib.request

from moto.server import ThreadedMotoServer

# Credentials that can only ever reach the emulator. Set for the process in local mode only (never
# anywhere else): a stray call without the endpoint override then fails instead of touching an account.
DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_EC2_METADATA_DISABLED": "true",
}
# A named profile beats the environment in botocore's credential chain: local mode drops these.
PROFILE_VARIABLES = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE")


class MotoServerError(RuntimeError):
    pass


class _Server(ThreadedMotoServer):
    """moto's threaded server, but a failure to bind (port in use) is reported instead of leaving
    `start()` waiting forever (moto 5.2.1 only sets its ready event after a successful bind)."""

    error: BaseException | None = None

    def _server_entry(self) -> None:
        try:
            super()._server_entry()
        except BaseException as exc:  # noqa: BLE001 - werkzeug exits (SystemExit) when the port is taken
            self.error = exc
            self._server_ready_event.set()


class MotoServer:
    """`with MotoServer(port=0) as moto: moto.endpoint_url` (port 0 picks a free port)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 5005) -> None:
        self.host = host
        self.port = port
        self._server: _Server | None = None

    @property
    def endpoint_url(self) -> str:
        if self._server is None:
            raise MotoServerError("moto server is not running")
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> MotoServer:
        if self._server is not None:
            return self
        # The werkzeug request log would print a line per AWS call; keep warnings and errors.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        server = _Server(ip_address=self.host, port=self.port, verbose=False)
        starter = threading.Thread(target=server.start, name="moto-start", daemon=True)
        starter.start()
        starter.join(timeout_s)
        if server.error is not None or starter.is_alive() or server._server is None:
            reason = f"{type(server.error).__name__}: {server.error}" if server.error else "timed out"
            raise MotoServerError(f"moto server could not start on {self.host}:{self.port} ({reason})")
        self.port = server.get_host_and_port()[1]
        self._server = server
        try:
            self._wait_ready(time.monotonic() + timeout_s)
            self.reset()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, deadline: float) -> None:
        url = f"http://{self.host}:{self.port}/moto-api/data.json"
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - fixed http URL
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise MotoServerError(f"moto server on {self.host}:{self.port} did not become ready")
            time.sleep(0.05)

    def reset(self) -> None:
        """Drop every emulated resource (moto's own reset API)."""
        req = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST",  # noqa: S310
                                     data=b"")
        with urllib.request.urlopen(req, timeout=10):  # noqa: S310 - fixed http URL
            pass

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True
