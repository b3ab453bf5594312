"""Benchmark: the container's throughput and latency with dynamic batching on and off, in one run.

    python -m gpu_endpoint.bench --model-dir DIR [--clients 1,8,32] [--requests N]
                                 [--precision auto|fp32|fp16] [--device auto|cuda|cpu] [--fp16-accuracy]

For batching on, then off, it starts the server (`python -m gpu_endpoint.server`, a subprocess on a free
loopback port, configured through its environment) and drives `/invocations` with 1, 8 and 32 concurrent
closed-loop clients (each its own keep-alive connection; each request one text, drawn from the work items
in tenantml/example_models/data/work_items.csv: realistic lengths, ~18 tokens on average). Per
configuration it prints requests/s, p50 and p95 latency and the mean rows per model run (from the
server's /stats), then the batching on/off throughput ratio per client count.

The in-run baseline is raw onnxruntime on the same session options and texts, tokenized beforehand:
embeddings/s running one text per run vs 32 per run (the CPU path's feeds and `embed_feeds`). With
`--fp16-accuracy` it prints the cosine of fp16 to fp32 embeddings over all work items (min and mean).

The same command runs on CPU and on a CUDA machine (device auto: CUDA when onnxruntime-gpu finds a GPU).
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORK_ITEMS = Path("tenantml") / "example_models" / "data" / "work_items.csv"


def work_item_texts() -> list[str]:
    import tenantml  # noqa: PLC0415

    path = Path(tenantml.__file__).resolve().parent.parent / WORK_ITEMS
    with path.open(encoding="utf-8", newline="") as f:
        return [row["text"] for row in csv.DictReader(f) if row.get("text")]


# --- the server under test --------------------------------------------------------------------------


class ServerProcess:
    """`python -m gpu_endpoint.server` on 127.0.0.1 and a free port, its JSON log lines read as they come
    (`lines`, `events`); `ready` is the ready event, None if it exited first (`check`: raise then).
    Used by the benchmark and the container tests."""

    ENDED = ("ready", "load_failed", "config_invalid", "bind_failed")

    def __init__(self, model_dir: Path, env: dict[str, str] | None = None, *args: str,
                 timeout_s: float = 300.0, check: bool = True) -> None:
        pythonpath = os.pathsep.join([str(ROOT), *[p for p in sys.path if p]])
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "gpu_endpoint.server", "--model-dir", str(model_dir), "--port", "0",
             *args], cwd=ROOT, env={**os.environ, **(env or {}), "PYTHONPATH": pythonpath},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        started = threading.Event()

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                self.events.append(event)
                if event.get("event") in self.ENDED:
                    started.set()
            started.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        started.wait(timeout_s)
        self.ready = next((e for e in self.events if e.get("event") == "ready"), None)
        self.port = int(self.ready["port"]) if self.ready else 0
        if check and self.ready is None:
            self.stop()
            raise RuntimeError("the server did not start:\n" + "\n".join(self.lines[-20:]))

    def get(self, path: str) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", path)
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def stats(self) -> dict[str, Any]:
        return self.get("/stats").get("batcher", {})

    def stop(self) -> int:
        """SIGTERM (kill after 30 s); the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._reader.join(5)
        return self.proc.wait(10)


def infer_body(text: str) -> bytes:
    return json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]},
                      separators=(",", ":")).encode()


@dataclass
class Measured:
    mode: str
    clients: int
    requests: int
    seconds: float
    latencies_ms: list[float]
    errors: int
    mean_rows: float

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def drive(port: int, bodies: Sequence[bytes], clients: int, requests: int) -> tuple[float, list[float], int]:
    """`requests` POSTs by `clients` closed-loop threads (one keep-alive connection each)."""
    lock = threading.Lock()
    counter = iter(range(requests))
    latencies: list[float] = []
    errors = [0]
    start = threading.Barrier(clients + 1)

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        mine: list[float] = []
        start.wait()
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            t0 = time.perf_counter()
            conn.request("POST", "/invocations", body=bodies[i % len(bodies)],
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            mine.append((time.perf_counter() - t0) * 1000)
            if resp.status != 200:
                with lock:
                    errors[0] += 1
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, latencies, errors[0]


def measure_server(model_dir: Path, mode: str, env: dict[str, str], bodies: Sequence[bytes],
                   clients_list: Sequence[int], requests: int, say: Any) -> list[Measured]:
    server = ServerProcess(model_dir, env)
    out: list[Measured] = []
    try:
        info = server.get("/stats").get("model", {})
        say(f"server ({mode}): {info.get('provider')} {info.get('precision')}, "
            f"batching {server.get('/stats').get('batching')}")
        drive(server.port, bodies[: 4 * max(clients_list)], max(clients_list), 4 * max(clients_list))  # warm
        for clients in clients_list:
            before = server.stats()
            seconds, latencies, errors = drive(server.port, bodies, clients, requests)
            after = server.stats()
            batches = after["batches"] - before["batches"]
            mean_rows = (after["rows"] - before["rows"]) / batches if batches else 0.0
            m = Measured(mode, clients, requests, seconds, latencies, errors, mean_rows)
            say(f"  {mode:<4} clients {clients:>3}: {m.throughput:8.1f} req/s  "
                f"p50 {m.percentile(50):7.1f} ms  p95 {m.percentile(95):7.1f} ms  "
                f"rows/run {mean_rows:5.1f}  errors {errors}")
            out.append(m)
    finally:
        server.stop()
    return out


# --- raw onnxruntime baseline -------------------------------------------------------------------------


def raw_baseline(model_dir: Path, texts: Sequence[str], *, device: str, precision: str,
                 budget_s: float = 9.0) -> dict[str, float]:
    """Embeddings/s of the model's own session on texts tokenized beforehand: one text per run ("1"), 32
    texts per run padded to the longest ("32", the CPU path's way), and 32 one-text requests run as one
    dynamic batch ("32-bucketed": length buckets, as the server batches)."""
    from gpu_endpoint.model import EmbeddingModel, ModelOptions, load_model  # noqa: PLC0415
    from tenantml.serving import oip  # noqa: PLC0415

    model = load_model(model_dir, ModelOptions(device=device, precision=precision))
    if not isinstance(model, EmbeddingModel):
        raise SystemExit("the benchmark drives text embedding models")

    def work(chunk: Sequence[str]) -> Any:
        tensor = oip.Tensor(model.text_input, "BYTES", (len(chunk),), list(chunk))
        return model.prepare({model.text_input: tensor})

    singles = [work([t]) for t in texts]
    plans: dict[str, list[list[Any]]] = {
        "1": [[w] for w in singles],
        "32": [[work(texts[i:i + 32])] for i in range(0, len(texts) - 31, 32)],
        "32-bucketed": [singles[i:i + 32] for i in range(0, len(texts) - 31, 32)],
    }
    out: dict[str, float] = {}
    for name, batches in plans.items():
        model.run_batch(batches[0])                                   # warm this shape class
        done, t0 = 0, time.perf_counter()
        for batch in batches:
            model.run_batch(batch)
            done += sum(w.rows for w in batch)
            if time.perf_counter() - t0 > budget_s / len(plans):
                break
        out[name] = done / (time.perf_counter() - t0)
    return out


# --- main ---------------------------------------------------------------------------------------------


def _ints(value: str) -> list[int]:
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("a comma-separated list of integers") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError("client counts must be >= 1")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gpu_endpoint.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, required=True, help="an embedding model version folder")
    p.add_argument("--clients", type=_ints, default=[1, 8, 32], help="concurrent clients (default 1,8,32)")
    p.add_argument("--requests", type=int, default=400, help="requests per configuration (default 400)")
    p.add_argument("--precision", choices=["auto", "fp32", "fp16"], default="auto")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--max-batch", type=int,
                   help="TENANTML_GPU_MAX_BATCH for batching on (default: the server's)")
    p.add_argument("--max-wait-ms", type=float, help="TENANTML_GPU_MAX_WAIT_MS for batching on")
    p.add_argument("--fp16-accuracy", action="store_true", help="print fp16 vs fp32 cosine on the work items")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def say(line: str) -> None:
        print(line, flush=True)

    t_start = time.perf_counter()
    texts = work_item_texts()
    rng = random.Random(args.seed)
    order = [rng.randrange(len(texts)) for _ in range(max(args.requests, 1))]
    bodies = [infer_body(texts[i]) for i in order]
    say(f"model {args.model_dir} | {len(texts)} work items, {args.requests} requests per configuration, "
        f"clients {args.clients}, cpus {os.cpu_count()}")

    raw = raw_baseline(args.model_dir, texts, device=args.device, precision=args.precision)
    say("raw onnxruntime, tokenized beforehand (embeddings/s): "
        + "  ".join(f"batch {k}: {v:.1f}" for k, v in raw.items())
        + f"  -> batch 32 / batch 1 = {raw['32'] / raw['1']:.2f}x, "
          f"bucketed {raw['32-bucketed'] / raw['1']:.2f}x")

    common = {"TENANTML_GPU_DEVICE": args.device, "TENANTML_GPU_PRECISION": args.precision}
    on_env = {**common, "TENANTML_GPU_BATCHING": "on"}
    if args.max_batch:
        on_env["TENANTML_GPU_MAX_BATCH"] = str(args.max_batch)
    if args.max_wait_ms is not None:
        on_env["TENANTML_GPU_MAX_WAIT_MS"] = str(args.max_wait_ms)
    results = measure_server(args.model_dir, "on", on_env, bodies, args.clients, args.requests, say)
    results += measure_server(args.model_dir, "off", {**common, "TENANTML_GPU_BATCHING": "off"}, bodies,
                              args.clients, args.requests, say)

    say("")
    say(f"{'batching':<9}{'clients':>8}{'req/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'rows/run':>10}")
    for m in results:
        say(f"{m.mode:<9}{m.clients:>8}{m.throughput:>10.1f}{m.percentile(50):>9.1f}{m.percentile(95):>9.1f}"
            f"{m.mean_rows:>10.1f}")
    ratios: dict[int, float] = {}
    for clients in args.clients:
        on = next(m for m in results if m.mode == "on" and m.clients == clients)
        off = next(m for m in results if m.mode == "off" and m.clients == clients)
        ratios[clients] = on.throughput / off.throughput if off.throughput else float("nan")
    say("throughput batching on/off: " + "  ".join(f"{c} clients {r:.2f}x" for c, r in ratios.items()))

    accuracy = None
    if args.fp16_accuracy:
        from gpu_endpoint.model import fp16_agreement  # noqa: PLC0415

        accuracy = fp16_agreement(args.model_dir, texts, device=args.device)
        say(f"fp16 vs fp32 ({accuracy['provider']}): cosine min {accuracy['cosine_min']:.6f}  "
            f"mean {accuracy['cosine_mean']:.6f} over {accuracy['texts']} work items "
            f"(worst: item {accuracy['worst']})")
    say(f"total {time.perf_counter() - t_start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({
            "raw_emb_per_s": raw, "ratios": ratios, "fp16": accuracy,
            "runs": [{"batching": m.mode, "clients": m.clients, "req_per_s": round(m.throughput, 2),
                      "p50_ms": round(m.percentile(50), 2), "p95_ms": round(m.percentile(95), 2),
                      "rows_per_run": round(m.mean_rows, 2), "errors": m.errors} for m in results]},
            indent=2))
    return 0 if all(m.errors == 0 for m in results) else 1


if __name__ == "__main__":
    sys.exit(main())
