"""The e2e suite: the local platform (moto + API Gateway emulator + the real function handlers and models)
started once for the package, driven over HTTP with real dev tokens.

Models come from the real builder, cached in .tenantml/models (the first run builds them; later runs
reuse the cache). Dev keys and the platform's state file go to a temporary home, so a `tenantml local`
running on this machine is left alone. Both servers bind to 127.0.0.1 on free ports; everything is
stopped, and the process environment restored, when the package's tests are done.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = ROOT / ".tenantml" / "models"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """A tiny HTTP client (urllib): every call returns a Reply, error statuses included."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def request(self, method: str, path: str, *, token: str | None = None, body: Any = None,
                raw: bytes | None = None, headers: dict[str, str] | None = None) -> Reply:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        hdrs = {"Accept": "application/json", **(headers or {})}
        if data is not None:
            hdrs.setdefault("Content-Type", "application/json")
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - http://127.0.0.1 only
                return Reply(resp.status, dict(resp.headers.items()), resp.read())
        except urllib.error.HTTPError as err:
            with err:
                return Reply(err.code, dict(err.headers.items()), err.read())

    def get(self, path: str, **kw: Any) -> Reply:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Reply:
        return self.request("POST", path, **kw)


@pytest.fixture(scope="package")
def local_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e") / ".tenantml"


@pytest.fixture(scope="package")
def platform(local_home: Path) -> Iterator[Any]:
    from tenantml.local.platform import start_platform

    lines: list[str] = []
    plat = start_platform(MODELS_DIR, host="127.0.0.1", port=0, moto_port=0, build=True, home=local_home,
                          functions_root=ROOT, say=lines.append)
    try:
        yield plat
    finally:
        plat.stop()


@pytest.fixture(scope="package")
def client(platform) -> Client:
    return Client(platform.base_url)


@pytest.fixture(scope="package")
def acme(platform) -> str:
    return platform.token("acme", ["models:read"])


@pytest.fixture(scope="package")
def globex(platform) -> str:
    return platform.token("globex", ["models:read"])
