"""The e2e suite: the local platform (moto + API Gateway emulator + the real function handlers and models)
started once for the package, driven over HTTP with real dev tokens.

Models come from the real builder, cached in .tenantml/models (the first run builds them; later runs
reuse the cache). Dev keys and the platform's state file go to a temporary home, so a `tenantml local`
running on this machine is left alone. Both servers bind to 127.0.0.1 on free ports; everything is
stopped, and the process environment restored, when the package's tests are done.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
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
    # the GPU container's instance heartbeat every second (10 s in `tenantml local`): `tenantml cost` sees
    # GPU instance time within the suite
    plat = start_platform(MODELS_DIR, host="127.0.0.1", port=0, moto_port=0, build=True, home=local_home,
                          functions_root=ROOT, say=lines.append, gpu_options={"heartbeat_seconds": 1})
    # The suite calls the API as fast as this machine answers, which on a fast machine is more than local
    # mode's 50 requests per second per tenant: no limit here; test_load.py sets one where it tests it.
    plat.emulator.functions["inference"].load().service.limiter = None
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


def run_tenantml(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The `tenantml` CLI as a user runs it in `folder`: no TENANTML_* or AWS_* variables, so it finds the
    running platform through the project's .tenantml/."""
    script = Path(sys.executable).with_name("tenantml")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "tenantml.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TENANTML_", "AWS_"))}
    return subprocess.run([*cmd, *args], cwd=folder, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


@pytest.fixture(scope="package")
def project(platform, local_home: Path) -> Path:
    """The folder holding the platform's .tenantml/, with the repository's functions/ and events/."""
    folder = local_home.parent
    for name in ("functions", "events"):
        link = folder / name
        if not link.exists():
            link.symlink_to(ROOT / name, target_is_directory=True)
    assert (local_home / "local.json").is_file()
    return folder


@pytest.fixture(scope="package")
def cli(project: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """`tenantml ARGS...` in the project folder."""
    return lambda *args: run_tenantml(project, *args)


@pytest.fixture(scope="package")
def cli_at() -> Callable[..., subprocess.CompletedProcess[str]]:
    """`tenantml ARGS...` in a given folder."""
    return run_tenantml


@pytest.fixture(scope="package")
def bus_tap(platform) -> Callable[..., list[dict]]:
    """A queue fed by a catch-all rule for tenantml events on the local bus: `bus_tap(n, timeout_s)`
    returns at least n events (or what arrived by the timeout), and whatever follows them within 1 s."""
    kw = {"endpoint_url": platform.aws.endpoint_url, "region_name": platform.aws.region}
    sqs, events = boto3.client("sqs", **kw), boto3.client("events", **kw)
    url = sqs.create_queue(QueueName="e2e-bus-tap")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="e2e-tap", EventBusName=platform.names.event_bus,
                    EventPattern=json.dumps({"source": ["tenantml"]}))
    events.put_targets(Rule="e2e-tap", EventBusName=platform.names.event_bus,
                       Targets=[{"Id": "q", "Arn": arn}])

    def received(wanted: int, timeout_s: float = 15.0) -> list[dict]:
        got: list[dict] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and len(got) < wanted:
            for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
                    "Messages", []):
                got.append(json.loads(m["Body"]))
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        time.sleep(1.0)   # and nothing more arrives after them
        for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
            got.append(json.loads(m["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        return got

    return received
