"""Dynamic batching: concurrent requests grouped into one model run, answered individually.

How a batch forms (one worker thread owns the model; HTTP threads only queue work and wait):

- Requests queue in arrival order, each already validated and tokenized by its own thread, so a bad
  request fails alone, before it can touch anyone else's batch.
- When the worker is free it takes queued requests, oldest first, while their rows fit `max_batch`. If
  fewer rows are queued AND other requests are on their way (announced with `expect()` when the server
  starts validating one, withdrawn when it is queued or fails), it waits for them, but only until
  the OLDEST queued request has waited `max_wait`; a batch that fills, or the last announced request
  arriving or failing, ends the wait at once. A lone request never waits for company that is not coming
  (at one client the wait would only add latency: measured on an H200, a 2 ms window doubled the p50 of
  a 2 ms request), and under load the worker does not wait either: requests pile up while it runs a
  batch, so the next batch is already full.
- One request is never split across batches (its rows can be split across length buckets, see
  `plan_buckets`); a request larger than `max_batch` rows runs alone.
- If a batch run raises, each of its requests is run again on its own: only the culprit fails.
- `max_queue` bounds the requests waiting (not running); beyond it `submit` raises QueueFull at once (the
  server answers 503 with Retry-After) instead of growing a backlog no one will wait for.
- `max_batch` 1 turns batching off: one request per run, in arrival order, no waiting (the benchmark's
  baseline, and what a model whose graph cannot take a batch needs).

Defaults, and how they compare with Triton's dynamic batcher and BentoML's adaptive batching:

- `max_batch` = 32 rows (TENANTML_GPU_MAX_BATCH). Triton's docs say to decide a maximum batch size per
  model first, and to avoid `preferred_batch_size` for most models (it only pays for TensorRT profiles
  tuned to particular sizes), so there is none here either: a batch is as large as the queue allows.
  BentoML caps a batch with `max_batch_size` and its own MiniLM sentence-embedding example uses 32. 32 is
  also what `tenantml.serving.processing.MAX_TOKENS_PER_RUN` is sized for (32 texts of 128 tokens), and
  the work items the platform embeds are ~18 tokens on average: 32 of them are ~600 padded tokens, a run
  that still leaves headroom under the token budget for longer texts. On CPU, raw onnxruntime throughput
  on all-MiniLM-L6-v2 flattens out well before 32 rows (bench: batch 32 vs 1), so larger batches would
  only add latency there; on a GPU the throughput keeps climbing past 32, and the asynchronous endpoint's
  concurrency (MaxConcurrentInvocationsPerInstance) is what bounds how many requests can be waiting
  anyway, so raise both together.
- `max_wait` = 2 ms (TENANTML_GPU_MAX_WAIT_MS). Triton's `max_queue_delay_microseconds` defaults to 0
  (no delay) and its docs show 100 us as an example; BentoML's `max_latency_ms` is a latency budget that
  its adaptive dispatcher spends only when waiting is predicted to pay (its example uses 1000 ms, and it
  answers 503 when the budget cannot be met). Here the delay is Triton's (a bound on how long the oldest
  request waits, measured from its arrival) spent BentoML's way (only when it can pay: while announced
  requests are still being read and tokenized). 2 ms is about one small run (MiniLM: ~1 ms for one text
  on an H200, ~4 ms on 2 CPU cores), so requests that arrive together (the async endpoint's concurrent
  invocations) share a run for at most that much added latency, and nothing is added at low load.
- `max_queue` = 256 requests (TENANTML_GPU_MAX_QUEUE), Triton's `max_queue_size` (which also counts
  requests and rejects beyond it). 256 is 8 full batches: a few hundred ms of backlog on a GPU, seconds
  on CPU; far more than the async endpoint sends at once (its default here is 32 concurrent invocations
  per instance, one full batch: cdk/tenantml_cdk/config.py), so it only trips when something upstream
  misbehaves, and then it fails fast instead of timing out.

Length buckets (`plan_buckets`, used by the model for text): a batch's rows are sorted by token count and
cut into runs that minimise `runs x overhead + padded tokens` (an exact dynamic programme over the
sorted rows), each run within `max_rows` rows and `max_tokens` padded tokens (the shared
MAX_TOKENS_PER_RUN). The per-run overhead, in tokens, is the device's: small on CPU (a run costs little
more than its tokens), large on a GPU (launch and copy costs dominate short runs), so a GPU splits a batch
only when padding would waste a lot, and a CPU whenever it saves work.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_BATCH = 32
DEFAULT_MAX_WAIT_MS = 2.0
DEFAULT_MAX_QUEUE = 256

ENV_BATCHING = "TENANTML_GPU_BATCHING"          # on | off
ENV_MAX_BATCH = "TENANTML_GPU_MAX_BATCH"
ENV_MAX_WAIT_MS = "TENANTML_GPU_MAX_WAIT_MS"
ENV_MAX_QUEUE = "TENANTML_GPU_MAX_QUEUE"


class QueueFull(Exception):
    """The batcher's queue holds `max_queue` requests: refuse this one now (503), don't queue it."""


class BatcherClosed(Exception):
    """The batcher is shutting down and takes no more work."""


def _env_number(env: Mapping[str, str], name: str, default: float, *, minimum: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw[:32]!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum:g}, got {raw[:32]!r}")
    return value


@dataclass(frozen=True)
class BatchConfig:
    max_batch: int = DEFAULT_MAX_BATCH           # rows per batch; 1 = batching off
    max_wait_s: float = DEFAULT_MAX_WAIT_MS / 1000
    max_queue: int = DEFAULT_MAX_QUEUE           # requests waiting (not running)

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_queue < 1 or self.max_wait_s < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait >= 0")

    @property
    def enabled(self) -> bool:
        return self.max_batch > 1

    @classmethod
    def off(cls, max_queue: int = DEFAULT_MAX_QUEUE) -> BatchConfig:
        return cls(max_batch=1, max_wait_s=0.0, max_queue=max_queue)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BatchConfig:
        """TENANTML_GPU_BATCHING=off, or TENANTML_GPU_MAX_BATCH / _MAX_WAIT_MS / _MAX_QUEUE."""
        env = os.environ if env is None else env
        max_queue = int(_env_number(env, ENV_MAX_QUEUE, DEFAULT_MAX_QUEUE, minimum=1))
        switch = (env.get(ENV_BATCHING) or "on").strip().lower()
        if switch not in ("on", "off", "true", "false", "1", "0"):
            raise ValueError(f"{ENV_BATCHING} must be on or off, got {switch[:32]!r}")
        if switch in ("off", "false", "0"):
            return cls.off(max_queue)
        return cls(max_batch=int(_env_number(env, ENV_MAX_BATCH, DEFAULT_MAX_BATCH, minimum=1)),
                   max_wait_s=_env_number(env, ENV_MAX_WAIT_MS, DEFAULT_MAX_WAIT_MS, minimum=0) / 1000,
                   max_queue=max_queue)

    def describe(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "max_batch": self.max_batch,
                "max_wait_ms": round(self.max_wait_s * 1000, 3), "max_queue": self.max_queue}


class Job:
    """One queued request: `item` is what the run function gets; `wait` returns its result or raises."""

    __slots__ = ("_error", "_event", "_result", "cancelled", "enqueued", "item", "rows")

    def __init__(self, item: Any, rows: int, enqueued: float) -> None:
        self.item, self.rows, self.enqueued = item, rows, enqueued
        self.cancelled = False
        self._event = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None

    def finish(self, result: Any) -> None:
        self._result = result
        self._event.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._event.set()

    @property
    def done(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> Any:
        """The result; re-raises the run's exception; TimeoutError after `timeout` seconds (the job is then
        dropped if it has not started)."""
        if not self._event.wait(timeout):
            self.cancelled = True
            raise TimeoutError("the request was not run in time")
        if self._error is not None:
            raise self._error
        return self._result


RunBatch = Callable[[list[Any]], Sequence[Any]]


class Batcher:
    """Groups submitted items into calls of `run(items) -> results` (same length, same order) on one
    worker thread. See the module docstring for the rules."""

    def __init__(self, run: RunBatch, config: BatchConfig | None = None, *,
                 clock: Callable[[], float] = time.monotonic, name: str = "batcher") -> None:
        self._run = run
        self.config = config or BatchConfig()
        self._clock = clock
        self._queue: deque[Job] = deque()
        self._queued_rows = 0
        self._expected = 0                  # requests announced (being read/validated), not yet queued
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._stats = {"batches": 0, "requests": 0, "rows": 0, "max_batch_rows": 0, "failed_batches": 0,
                       "retried_requests": 0, "failed_requests": 0, "rejected": 0, "timed_out": 0}

    def start(self) -> Batcher:
        self._thread.start()
        return self

    # --- producers ---------------------------------------------------------------------------------

    def expect(self) -> None:
        """A request is on its way (the server started reading it): the worker may wait for it. Every
        `expect()` is followed by `submit(..., expected=True)` or by `withdraw()`."""
        with self._cond:
            self._expected += 1

    def withdraw(self) -> None:
        """An announced request will not come (it failed before it was queued)."""
        with self._cond:
            self._expected = max(self._expected - 1, 0)
            self._cond.notify_all()

    def submit(self, item: Any, rows: int = 1, *, expected: bool = False) -> Job:
        """Queue `item` (`rows` rows); `expected`: it was announced with `expect()`."""
        with self._cond:
            if expected:
                self._expected = max(self._expected - 1, 0)
                self._cond.notify_all()
            if self._closing:
                raise BatcherClosed("the server is shutting down")
            if len(self._queue) >= self.config.max_queue:
                self._stats["rejected"] += 1
                raise QueueFull(f"the request queue is full ({self.config.max_queue} requests waiting)")
            job = Job(item, max(int(rows), 1), self._clock())
            self._queue.append(job)
            self._queued_rows += job.rows
            self._cond.notify_all()
        return job

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    def stats(self) -> dict[str, Any]:
        with self._cond:
            s: dict[str, Any] = dict(self._stats)
        s["mean_batch_rows"] = round(s["rows"] / s["batches"], 2) if s["batches"] else 0.0
        return s

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop taking work; what is queued still runs; returns when the worker is done (or `timeout`)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # --- the worker --------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return                                        # closing, nothing left
                deadline = self._queue[0].enqueued + self.config.max_wait_s
                while (self._queued_rows < self.config.max_batch and self._expected > 0
                       and not self._closing and (remaining := deadline - self._clock()) > 0):
                    self._cond.wait(remaining)
                batch = self._take()
            if batch:
                self._execute(batch)

    def _take(self) -> list[Job]:
        """Queued jobs, oldest first, while their rows fit max_batch (at least one); skips cancelled ones."""
        batch: list[Job] = []
        rows = 0
        while self._queue:
            job = self._queue[0]
            if job.cancelled:
                self._queue.popleft()
                self._queued_rows -= job.rows
                self._stats["timed_out"] += 1
                continue
            if batch and rows + job.rows > self.config.max_batch:
                break
            self._queue.popleft()
            self._queued_rows -= job.rows
            batch.append(job)
            rows += job.rows
        return batch

    def _call(self, jobs: list[Job]) -> Sequence[Any]:
        results = self._run([j.item for j in jobs])
        if len(results) != len(jobs):
            raise RuntimeError(f"run returned {len(results)} results for {len(jobs)} requests")
        return results

    def _execute(self, batch: list[Job]) -> None:
        rows = sum(j.rows for j in batch)
        with self._cond:
            self._stats["batches"] += 1
            self._stats["requests"] += len(batch)
            self._stats["rows"] += rows
            self._stats["max_batch_rows"] = max(self._stats["max_batch_rows"], rows)
        try:
            results = self._call(batch)
        except Exception as exc:  # noqa: BLE001 - isolated below: each request runs again on its own
            if len(batch) == 1:
                self._failed(batch[0], exc)
                return
            with self._cond:
                self._stats["failed_batches"] += 1
                self._stats["retried_requests"] += len(batch)
            for job in batch:
                try:
                    result = self._call([job])[0]
                except Exception as single:  # noqa: BLE001 - this request is the culprit: it alone fails
                    self._failed(job, single)
                else:
                    job.finish(result)
            return
        for job, result in zip(batch, results, strict=True):
            job.finish(result)

    def _failed(self, job: Job, exc: BaseException) -> None:
        with self._cond:
            self._stats["failed_requests"] += 1
        job.fail(exc)


# --- length buckets ------------------------------------------------------------------------------


def plan_buckets(lengths: Sequence[int], *, max_rows: int, max_tokens: int,
                 overhead_tokens: float) -> list[list[int]]:
    """Split rows (token counts `lengths`) into runs, each padded to its longest row: minimises
    `runs x overhead_tokens + sum of padded tokens` over the rows sorted by length, with each run at most
    `max_rows` rows and `max_tokens` padded tokens (a single row is always allowed).

    Returns the runs as lists of row indices, each list in the rows' original order (the order inside a
    run does not change the result; keeping it makes a lone request's run identical to the CPU path's),
    the runs from shortest rows to longest."""
    n = len(lengths)
    if n == 0:
        return []
    order = sorted(range(n), key=lambda i: lengths[i])
    width = [max(int(lengths[i]), 1) for i in order]
    best = [0.0] + [float("inf")] * n        # best[i]: cost of the first i sorted rows
    cut = [0] * (n + 1)
    for i in range(1, n + 1):
        w = width[i - 1]                     # the longest row of any run ending at i
        for j in range(i - 1, max(i - max(max_rows, 1), 0) - 1, -1):
            k = i - j
            if k > 1 and k * w > max_tokens:
                break                        # longer runs ending at i only get wider
            cost = best[j] + overhead_tokens + k * w
            if cost < best[i]:
                best[i], cut[i] = cost, j
    runs: list[list[int]] = []
    i = n
    while i > 0:
        j = cut[i]
        runs.append(sorted(order[j:i]))
        i = j
    runs.reverse()
    return runs


def padded_tokens(lengths: Sequence[int], runs: Sequence[Sequence[int]]) -> int:
    """The tokens a plan computes (each run's rows x its longest row)."""
    return sum(len(r) * max(max(int(lengths[i]) for i in r), 1) for r in runs if r)
