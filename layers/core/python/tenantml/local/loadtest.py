"""`tenantml loadtest`: a bounded load test of the running local platform, over loopback.

`--clients` concurrent clients (asyncio, one keep-alive HTTP/1.1 connection each, no new dependency)
spread over `--tenants` tenants send `--requests` requests in all: OIP v2 inference on the tenant's own
model (`risk-<tenant>`, registered for it first, a copy of the example risk model) and on a shared one
(`minilm-embed`), plus now and then a request for another tenant's model, which must be a 404. Every
answer is checked: the status, the model it names, and the request id it echoes (each request carries
its own `id`), so an answer meant for another client or tenant is counted as a cross-tenant answer.

Printed: requests, wall time, throughput, latency p50/p95/p99, errors by kind (transport, 5xx, other
4xx), 429s, cross-tenant answers. With `--noisy N`, N more clients of one extra tenant send as fast as
they can for the duration of the run: the per-tenant rate limit (tenantml.serving.throttle) answers them
429, and the figures of the other tenants show whether they noticed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

RISK_ROW = [10, 0, 0, 10, 60.0, 180, -5.0, 0.05]
SHARED_MODEL = "minilm-embed"


@dataclass
class Result:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    cross_tenant: int = 0
    throttled: int = 0
    probes: int = 0                    # requests for another tenant's model (each must be a 404)

    def summary(self, wall_s: float) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)

        def pct(q: float) -> float:
            return lat[min(len(lat) - 1, round(q / 100 * (len(lat) - 1)))] if lat else 0.0

        n = sum(self.statuses.values()) + self.errors["transport"]
        return {"requests": n, "wall_s": round(wall_s, 3),
                "throughput_rps": round(n / wall_s, 1) if wall_s else 0,
                "p50_ms": round(pct(50), 2), "p95_ms": round(pct(95), 2), "p99_ms": round(pct(99), 2),
                "mean_ms": round(statistics.fmean(lat), 2) if lat else 0.0,
                "errors": sum(self.errors.values()), "errors_by_kind": dict(self.errors),
                "throttled_429": self.throttled, "cross_tenant_answers": self.cross_tenant,
                "foreign_probes": self.probes,
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())}}


class Connection:
    """One keep-alive HTTP/1.1 connection (what a client SDK pool holds)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, token: str, body: bytes | None) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                f"Authorization: Bearer {token}", "Accept: application/json", "Connection: keep-alive"]
        if body is not None:
            head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        self._writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + (body or b""))
        await self._writer.drain()
        status_line = await self._reader.readline()
        if not status_line:
            raise ConnectionError("connection closed")
        status = int(status_line.split()[1])
        length, close = 0, False
        while True:
            line = await self._reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
            elif name.strip().lower() == "connection" and value.strip().lower() == "close":
                close = True
        data = await self._reader.readexactly(length) if length else b""
        if close:
            await self.close()
        return status, data

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
        self._reader = self._writer = None


def _infer_body(model: str, request_id: str) -> bytes:
    if model == SHARED_MODEL:
        inputs = [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [f"load test {request_id}"]}]
    else:
        inputs = [{"name": "features", "datatype": "FP32", "shape": [1, 8], "data": [RISK_ROW]}]
    return json.dumps({"id": request_id, "inputs": inputs}).encode()


async def _client(n: int, base: str, tenant: str, tenants: list[str], tokens: dict[str, str],
                  quota: list[int], result: Result, *, stop: asyncio.Event | None = None,
                  pace_s: float = 0.0) -> None:
    parts = urlsplit(base)
    conn = Connection(parts.hostname or "127.0.0.1", parts.port or 80)
    i, t0 = 0, time.perf_counter()
    try:
        while True:
            if stop is not None:
                if stop.is_set():
                    return
            elif quota[0] <= 0:
                return
            else:
                quota[0] -= 1
            i += 1
            if pace_s and i > 1:
                await asyncio.sleep(max(0.0, pace_s - (time.perf_counter() - t0)))
            rid = f"{tenant}-{n}-{i}"
            kind = i % 10
            foreign = tenants[(tenants.index(tenant) + 1) % len(tenants)] if tenant in tenants else tenants[0]
            model = (f"risk-{foreign}" if kind == 9 and len(tenants) > 1 else
                     SHARED_MODEL if kind % 3 == 0 else f"risk-{tenant}")
            t0 = time.perf_counter()
            try:
                status, data = await conn.request("POST", f"/v2/models/{model}/infer", tokens[tenant],
                                                  _infer_body(model, rid))
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                result.errors["transport"] += 1
                result.errors[f"transport:{type(exc).__name__}"] += 0
                await conn.close()
                continue
            result.latencies_ms.append((time.perf_counter() - t0) * 1000)
            result.statuses[status] += 1
            expect_404 = model.startswith("risk-") and model != f"risk-{tenant}"
            result.probes += expect_404
            if status == 429:
                result.throttled += 1
            elif expect_404:
                if status != 404:
                    result.cross_tenant += 1
            elif status == 200:
                answer = json.loads(data)
                if answer.get("id") != rid or answer.get("model_name") != model:
                    result.cross_tenant += 1
            elif status >= 500:
                result.errors["5xx"] += 1
            else:
                result.errors[f"{status}"] += 1
    finally:
        await conn.close()


async def run_load(base_url: str, tokens: dict[str, str], *, clients: int = 32, requests: int = 2000,
                   noisy: tuple[str, str, int] | None = None,
                   pace_s: float = 0.0) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the measured tenants' summary, the noisy tenant's or None). `tokens`: tenant -> token; `noisy`:
    (tenant, its token, its client count); `pace_s`: each measured client's least interval between its
    requests (0: as fast as it gets answers)."""
    tenants = sorted(tokens)
    result, quota = Result(), [requests]
    noisy_result, stop = Result(), asyncio.Event()
    started = time.perf_counter()
    noisy_tasks = [asyncio.create_task(_client(1000 + k, base_url, noisy[0], tenants, {noisy[0]: noisy[1]},
                                               quota, noisy_result, stop=stop))
                   for k in range(noisy[2])] if noisy else []
    await asyncio.gather(*(_client(k, base_url, tenants[k % len(tenants)], tenants, tokens, quota, result,
                                   pace_s=pace_s) for k in range(clients)))
    wall = time.perf_counter() - started
    stop.set()
    await asyncio.gather(*noisy_tasks)
    return result.summary(wall), noisy_result.summary(time.perf_counter() - started) if noisy else None


def prepare_tenants(models_dir: Path, tenants: list[str], registry: Any, store: Any) -> None:
    """Register `risk-<tenant>` for each tenant (a copy of the example risk model)."""
    from tenantml.errors import Conflict  # noqa: PLC0415
    from tenantml.registry.cli import register_folder  # noqa: PLC0415

    for tenant in tenants:
        try:
            register_folder(models_dir / "project-risk", tenant, registry, store, model=f"risk-{tenant}",
                            version="1")
        except Conflict:
            pass                                   # registered by an earlier run


def _prepare_running(models_dir: Path, tenants: list[str]) -> None:
    from tenantml.local.state import platform_target  # noqa: PLC0415
    from tenantml.registry.dynamo import DynamoRegistry  # noqa: PLC0415
    from tenantml.registry.s3 import S3ArtifactStore  # noqa: PLC0415
    from tenantml.settings import get_aws_settings, get_registry_settings  # noqa: PLC0415

    with platform_target("registry", needs="TENANTML_REGISTRY_TABLE"):
        aws, settings = get_aws_settings(), get_registry_settings()
        prepare_tenants(models_dir, tenants, DynamoRegistry(settings.registry_table, aws),
                        S3ArtifactStore(settings.artifact_bucket, aws))


def loadtest_command(args: argparse.Namespace) -> int:
    from tenantml.auth.devkeys import ensure_dev_keys  # noqa: PLC0415
    from tenantml.local.state import find_home, running_state  # noqa: PLC0415

    state, home = running_state(), find_home()
    if state is None or home is None:
        print("tenantml loadtest: no local platform is running (start `tenantml local`)", file=sys.stderr)
        return 1
    base = state["api"]["base_url"]
    if urlsplit(base).hostname not in ("127.0.0.1", "localhost"):
        print("tenantml loadtest: loopback only", file=sys.stderr)
        return 1
    tenants = [f"load{i}" for i in range(args.tenants)]
    _prepare_running(Path(args.models_dir), tenants + (["noisy"] if args.noisy else []))
    keys = ensure_dev_keys(home / "keys")
    tokens = {t: keys.mint(t, ["models:read"]) for t in tenants}
    noisy = ("noisy", keys.mint("noisy", ["models:read"]), args.noisy) if args.noisy else None
    measured, loud = asyncio.run(run_load(base, tokens, clients=args.clients, requests=args.requests,
                                          noisy=noisy))
    print(f"tenantml loadtest: {args.clients} clients over {args.tenants} tenants, "
          f"{measured['requests']} requests in {measured['wall_s']} s: {measured['throughput_rps']} req/s, "
          f"p50 {measured['p50_ms']} ms, p95 {measured['p95_ms']} ms, p99 {measured['p99_ms']} ms, "
          f"errors {measured['errors']}, 429s {measured['throttled_429']}, "
          f"cross-tenant answers {measured['cross_tenant_answers']}")
    if loud:
        print(f"noisy tenant ({args.noisy} clients, as fast as they can): {loud['requests']} requests, "
              f"{loud['throttled_429']} answered 429, errors {loud['errors']}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"measured": measured, "noisy": loud}, indent=2))
    return 0 if measured["errors"] == 0 and measured["cross_tenant_answers"] == 0 else 2
